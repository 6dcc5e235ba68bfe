//! `quorumd lock` and `quorumd session`, process-level: mutual exclusion
//! from every node with the fencing token rising across holders, a
//! semaphore of 2, CMD stopped when its lock is lost (its node paused),
//! SIGTERM to `quorumd lock`, and CMD's exit code passed through.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Spec, TestCluster};

/// A `quorumd lock` run, killed on drop if still running.
struct Locker(Child);

impl Drop for Locker {
    /// SIGTERM first: `quorumd lock` then stops its CMD (a SIGKILL would
    /// leave CMD running); SIGKILL only if it has not exited in 10 s.
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Locker {
    fn wait(&mut self, timeout: Duration) -> (i32, String) {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (common::exit_code(status), err);
            }
            assert!(
                Instant::now() < until,
                "quorumd lock did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn locker(c: &TestCluster, node: u64, args: &[&str], script: &str) -> Locker {
    let child = Command::new(c.bin())
        .arg("lock")
        .arg("--cluster")
        .arg(&c.config)
        .args(["--node", &node.to_string()])
        .args(args)
        .args(["job", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quorumd lock");
    Locker(child)
}

fn cluster(name: &str) -> TestCluster {
    let mut c = TestCluster::new(Spec::new(name, 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    c
}

/// `start <ns> <token>` / `end <ns>` lines per holder, as (start, end, token).
fn spans(log: &Path) -> Vec<(u128, u128, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut open: std::collections::HashMap<String, (u128, u64)> = Default::default();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", who, t, token] => {
                open.insert(
                    who.to_string(),
                    (t.parse().unwrap(), token.parse().unwrap()),
                );
            }
            ["end", who, t] => {
                let (s, token) = open.remove(*who).expect("end without start");
                out.push((s, t.parse().unwrap(), token));
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    assert!(open.is_empty(), "holders that never ended: {open:?}");
    out.sort();
    out
}

fn holder_script(log: &Path, who: &str, hold: &str) -> String {
    format!(
        "echo start {who} $(date +%s%N) $QUORUMD_LOCK_INDEX >> {log}; sleep {hold}; \
         echo end {who} $(date +%s%N) >> {log}",
        log = log.display()
    )
}

fn max_overlap(spans: &[(u128, u128, u64)]) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for (s, e, _) in spans {
        events.push((*s, 1));
        events.push((*e, -1));
    }
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[test]
fn lock_excludes_holders_from_every_node_and_the_fencing_token_rises() {
    let c = cluster("lock-mutex");
    let log = c.dir.path().join("holders.log");
    let mut lockers: Vec<Locker> = (0..6)
        .map(|i| {
            let node = 1 + i % 3;
            let who = format!("h{i}");
            locker(
                &c,
                node,
                &["--lock-delay", "0s", "--ttl", "10s"],
                &holder_script(&log, &who, "0.3"),
            )
        })
        .collect();
    for l in &mut lockers {
        let (code, err) = l.wait(Duration::from_secs(120));
        assert_eq!(code, 0, "{err}");
    }
    let spans = spans(&log);
    assert_eq!(spans.len(), 6, "every contender ran once");
    assert_eq!(max_overlap(&spans), 1, "two holders overlapped: {spans:?}");
    let tokens: Vec<u64> = spans.iter().map(|s| s.2).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "the fencing token must rise across holders: {tokens:?}"
    );
    // Every session was destroyed on the way out.
    let list = c.call(1, "GET", "/v1/session/list", b"").json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn a_semaphore_of_two_admits_two_holders_at_a_time() {
    let c = cluster("lock-sem");
    let log = c.dir.path().join("holders.log");
    let mut lockers: Vec<Locker> = (0..5)
        .map(|i| {
            locker(
                &c,
                1 + i % 3,
                &["-n", "2", "--lock-delay", "0s", "--ttl", "10s"],
                &holder_script(&log, &format!("s{i}"), "3"),
            )
        })
        .collect();
    for l in &mut lockers {
        let (code, err) = l.wait(Duration::from_secs(120));
        assert_eq!(code, 0, "{err}");
    }
    let spans = spans(&log);
    assert_eq!(spans.len(), 5);
    assert_eq!(
        max_overlap(&spans),
        2,
        "never more than 2 at once, and 2 did share: {spans:?}"
    );
}

#[test]
fn cmd_is_stopped_when_its_lock_is_lost_and_exit_codes_pass_through() {
    let mut c = cluster("lock-lost");
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = if leader == 3 { 2 } else { 3 };
    let mark = c.dir.path().join("running");
    // CMD runs until stopped; `exec` so that SIGTERM reaches sleep.
    let script = format!("touch {}; exec sleep 1000", mark.display());
    let mut l = locker(&c, victim, &["--ttl", "10s", "--lock-delay", "0s"], &script);
    c.wait_for("CMD to start", || mark.exists());
    c.signal(victim, libc::SIGSTOP);
    let paused = Instant::now();
    let (code, err) = l.wait(Duration::from_secs(90));
    let took = paused.elapsed();
    c.signal(victim, libc::SIGCONT);
    assert_eq!(
        code,
        128 + libc::SIGTERM,
        "CMD's code (killed by SIGTERM): {err}"
    );
    assert!(err.contains("lost the lock"), "{err}");
    eprintln!("node paused to CMD stopped: {took:?}");

    // CMD's exit code passes through, and the lock is free again afterwards.
    let mut l = locker(&c, leader, &["--lock-delay", "0s"], "exit 7");
    assert_eq!(l.wait(Duration::from_secs(60)).0, 7);

    // SIGTERM to quorumd lock stops CMD, releases the lock and destroys the session.
    std::fs::remove_file(&mark).unwrap();
    let mut l = locker(&c, leader, &["--lock-delay", "0s"], &script);
    c.wait_for("CMD to start again", || mark.exists());
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(l.0.id() as i32, libc::SIGTERM) }, 0);
    let (code, err) = l.wait(Duration::from_secs(30));
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    c.wait_for("the session to be destroyed", || {
        let list = c
            .call(leader, "GET", "/v1/session/list", b"")
            .json()
            .unwrap();
        list.as_array().unwrap().is_empty()
    });
    let e = c
        .call(leader, "GET", "/v1/kv/job/.lock", b"")
        .json()
        .unwrap();
    assert_eq!(e[0]["Session"], "", "released: {e}");
}

#[test]
fn session_list_info_and_destroy_for_operators() {
    let c = cluster("lock-session-cli");
    let r = c.call(
        2,
        "PUT",
        "/v1/session/create",
        br#"{"Name": "ops", "TTL": "30s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json().unwrap()["ID"].as_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(c.bin())
            .arg("session")
            .args(args)
            .arg("--cluster")
            .arg(&c.config)
            .output()
            .expect("run quorumd session");
        (
            common::exit_code(out.status),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with(&id)).expect("listed");
    assert!(
        row.contains("node-2") && row.contains("30s") && row.contains("ops"),
        "{out}"
    );
    let (code, out, _) = run(&["info", &id]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Name"], "ops");
    let (code, _, _) = run(&["destroy", &id]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["info", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = run(&["destroy", "not-a-uuid"]);
    assert_eq!(code, 1);
    assert!(err.contains("UUID"), "{err}");
}
