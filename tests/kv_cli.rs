//! `quorumd kv get|put|delete|list|watch` against a real cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{run_bin, Spec, TestCluster, BIN, WAIT};

fn kv(c: &TestCluster, args: &[&str]) -> common::Finished {
    let config = c.config.to_str().unwrap().to_string();
    let mut all = vec!["kv", args[0], "--cluster", config.as_str()];
    all.extend_from_slice(&args[1..]);
    run_bin(&all, WAIT)
}

#[test]
fn the_kv_commands_work_like_consul_kv() {
    let mut c = TestCluster::new(Spec::new("kv-cli", 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);

    let out = kv(&c, &["put", "app/name", "quorumd"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "Success! Data written to: app/name");
    let out = kv(&c, &["get", "--node", "3", "app/name"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "quorumd\n"), "{out:?}");

    // A missing key and a failed CAS exit 1 with one sentence.
    let out = kv(&c, &["get", "no/such"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("key \"no/such\" does not exist"),
        "{}",
        out.stderr
    );
    let out = kv(&c, &["put", "--cas", "0", "app/name", "other"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("CAS failed"), "{}", out.stderr);
    assert_eq!(c.kv_get(1, "app/name", "").as_deref(), Some("quorumd"));

    // list prints `key = value`, base64 for a value that is not UTF-8.
    c.kv_put(2, "app/bin", &[0xff, 0x00]);
    let out = kv(&c, &["list", "app/"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "app/bin = base64:/wA=\napp/name = quorumd\n");

    let out = kv(&c, &["delete", "--recurse", "app/"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.kv_get(1, "app/name", ""), None);

    // The first node is down: the next one answers.
    c.signal(1, libc::SIGKILL);
    c.wait_exit(1, WAIT);
    c.wait_agreed_leader_where(&[2, 3], |leader, _| leader != 1);
    let out = kv(&c, &["put", "after", "x"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = kv(&c, &["get", "--node", "1", "after"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no node of cluster"), "{}", out.stderr);
}

#[test]
fn watch_prints_each_change_until_stopped() {
    let mut c = TestCluster::new(Spec::new("kv-watch", 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    /// Kills the watcher even when an assertion fails.
    struct Watcher(Child);
    impl Drop for Watcher {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(BIN)
        .args(["kv", "watch", "--cluster"])
        .arg(&c.config)
        .args(["--node", "2", "--recurse", "cfg/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().unwrap();
    let _watcher = Watcher(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut next = || lines.next().expect("a line").expect("read");
    assert!(next().starts_with("# index "));
    assert_eq!(next(), "# cfg/ has no keys");
    c.kv_put(3, "cfg/a", b"1");
    assert!(next().starts_with("# index "));
    assert_eq!(next(), "cfg/a = 1");
    c.kv_put(1, "cfg/b", b"2");
    assert!(next().starts_with("# index "));
    assert_eq!(next(), "cfg/a = 1");
    assert_eq!(next(), "cfg/b = 2");
}
