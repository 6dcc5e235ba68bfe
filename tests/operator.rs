//! The operator's view through real processes: `/metrics` in Prometheus text,
//! and `quorumd status --cluster FILE` with its table and exit code.

mod common;

use std::time::Duration;

use common::{run_bin, TestCluster};
use serde_json::{json, Value};

const EXIT_BOUND: Duration = Duration::from_secs(15);

/// The value of the first sample line that starts with `name` (labels
/// included in `name` when given).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_report_role_term_leader_and_peer_traffic() {
    let mut c = TestCluster::of("metrics", 3);
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let follower = if leader == 1 { 2 } else { 1 };

    // Counters move with traffic; wait until the leader has sent a few
    // heartbeats to every peer.
    c.wait_for(
        "leader's /metrics shows messages sent to every peer",
        || {
            let Ok(r) = c.get(leader, "/metrics") else {
                return false;
            };
            [1u64, 2, 3].iter().filter(|&&p| p != leader).all(|p| {
                sample(
                    &r.body,
                    &format!("quorumd_peer_messages_sent_total{{peer=\"{p}\"}}"),
                )
                .is_some_and(|n| n > 0.0)
            })
        },
    );

    for (id, role) in [(leader, "leader"), (follower, "follower")] {
        let r = c.get(id, "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        let body = &r.body;
        assert_eq!(
            sample(body, &format!("quorumd_raft_role{{role=\"{role}\"}}")),
            Some(1.0),
            "node {id} is {role}:\n{body}"
        );
        assert_eq!(
            sample(body, "quorumd_raft_term"),
            Some(term as f64),
            "{body}"
        );
        assert_eq!(
            sample(body, "quorumd_raft_leader_id"),
            Some(leader as f64),
            "{body}"
        );
        assert!(
            sample(body, "quorumd_raft_leader_changes_total").is_some_and(|n| n >= 1.0),
            "{body}"
        );
        assert_eq!(sample(body, "quorumd_peers_alive"), Some(2.0), "{body}");
        let boot = sample(body, "quorumd_bootstrap_duration_seconds").expect("bootstrap");
        assert!(boot > 0.0 && boot < 20.0, "bootstrap duration {boot}");
        assert!(
            sample(body, "quorumd_raft_ready_duration_seconds_count").is_some_and(|n| n >= 1.0),
            "{body}"
        );
        for kind in ["sent", "received", "dropped"] {
            assert!(
                body.contains(&format!("quorumd_peer_messages_{kind}_total{{peer=")),
                "no per-peer {kind} counter on node {id}:\n{body}"
            );
        }
    }
}

#[test]
fn status_command_agrees_then_names_an_unreachable_node() {
    let mut c = TestCluster::of("status-cmd", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let config = c.config.to_str().expect("utf-8 path").to_string();

    let f = run_bin(&["status", "--cluster", &config], EXIT_BOUND);
    assert_eq!(f.code, 0, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    let lines: Vec<&str> = f.stdout.lines().collect();
    // First whose view of the membership it is, then the table.
    assert!(
        lines[0].starts_with("members: the live membership, as node"),
        "{}",
        f.stdout
    );
    let lines = &lines[1..];
    assert!(lines[0].starts_with("ID"), "{}", f.stdout);
    for col in ["ADDRESS", "ROLE", "TERM", "LEADER", "ALIVE PEERS", "READY"] {
        assert!(lines[0].contains(col), "header lacks {col}: {}", lines[0]);
    }
    // One row per node, every column aligned under its header.
    let role_col = lines[0].find("ROLE").unwrap();
    for id in [1u64, 2, 3] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id}:\n{}", f.stdout));
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(&row[role_col..role_col + role.len()], role, "{row}");
        assert!(
            row.trim_end().ends_with("yes"),
            "node {id} not ready: {row}"
        );
    }
    assert!(
        f.stdout
            .contains(&format!("every member agrees node {leader} leads")),
        "{}",
        f.stdout
    );

    // Stop a follower: the command now fails with one sentence naming it.
    let gone = if leader == 3 { 2 } else { 3 };
    c.signal(gone, libc::SIGTERM);
    assert_eq!(c.wait_exit(gone, EXIT_BOUND), 0);
    let f = run_bin(&["status", "--cluster", &config], EXIT_BOUND);
    assert_eq!(f.code, 1, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("is not healthy: unreachable")
            && f.stderr
                .contains(&format!("node {gone} ({})", c.admin(gone))),
        "stderr must name the unreachable node:\n{}",
        f.stderr
    );
    assert!(
        f.stdout.contains("unreachable"),
        "table must mark it:\n{}",
        f.stdout
    );
}

#[test]
fn the_reserved_prefix_is_invisible_to_clients() {
    let mut c = TestCluster::of("reserved", 3);
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    let via = 2;
    assert_eq!(c.kv_put(via, "app/a", b"1").status, 200);
    let body = |path: &str| {
        let r = c.call(via, "GET", path, b"");
        (
            r.status,
            r.body.clone(),
            r.header("x-consul-index").map(str::to_string),
        )
    };
    // Keys at the root, folded at '/': `app/` only.
    let (code, keys, _) = body("/v1/kv/?keys&separator=/");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&keys).unwrap(),
        json!(["app/"])
    );
    for path in [
        "/v1/kv/?keys",
        "/v1/kv/?recurse",
        "/v1/kv/_?recurse",
        "/v1/kv/__quorumd/?recurse",
    ] {
        let (_, text, _) = body(path);
        assert!(!text.contains("__quorumd"), "{path}: {text}");
    }
    assert_eq!(body("/v1/kv/__quorumd/cluster_id").0, 404);
    assert_eq!(body("/v1/kv/__quorumd/?keys").0, 404);
    // Transactions read it as absent too.
    let txn = |ops: &str| c.call(via, "PUT", "/v1/txn", ops.as_bytes());
    let r = txn(r#"[{"KV": {"Verb": "get", "Key": "__quorumd/cluster_id"}}]"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("doesn't exist"), "{}", r.body);
    let r = txn(r#"[{"KV": {"Verb": "get-tree", "Key": ""}}]"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("__quorumd") && r.body.contains("app/a"),
        "{}",
        r.body
    );

    // A blocking query on the root is not woken by the cluster's own
    // writes: adding a learner writes its record under the prefix.
    let (_, _, index) = body("/v1/kv/?recurse");
    let index = index.expect("an index");
    let admin = c.admin(via);
    let path = format!("/v1/kv/?recurse&index={index}&wait=3s");
    let waiting = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = common::http_within(admin, "GET", &path, Duration::from_secs(30)).unwrap();
        (
            started.elapsed(),
            r.header("x-consul-index").map(str::to_string),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let new = format!(
        r#"{{"id": 9, "addr": "{}", "admin": "{}", "auto_promote": false}}"#,
        common::free_addr(),
        common::free_addr()
    );
    let r = c.call(via, "POST", "/admin/cluster/members", new.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let (took, after) = waiting.join().unwrap();
    assert!(took >= Duration::from_millis(2500), "woken after {took:?}");
    assert_eq!(after.as_deref(), Some(index.as_str()));
}

/// `quorumd ARGS` with extra environment variables.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(args).env_remove("QUORUMD_CLUSTER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run quorumd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_fits_into_scripts() {
    let mut c = TestCluster::of("cli-scripts", 3);
    let file = c.config.to_str().unwrap().to_string();

    // Nothing runs yet: one sentence.
    let (code, _, err) = run_env(&["kv", "get", "--cluster", &file, "k"], &[]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no node of cluster 'cli-scripts' answered at ")
            && err.contains(": is it running? `make cluster3` starts a local one"),
        "{err}"
    );
    let (code, _, err) = run_env(&["status", "--cluster", &file], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("is it running?"), "{err}");

    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    // The cluster file from QUORUMD_CLUSTER.
    let env = [("QUORUMD_CLUSTER", file.as_str())];
    let (code, out, err) = run_env(&["kv", "put", "greeting", "hello"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run_env(&["kv", "get", "greeting"], &env);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, out, _) = run_env(&["kv", "get", "--stale", "--node", "3", "greeting"], &env);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, out, _) = run_env(&["kv", "get", "--consistent", "greeting"], &env);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, _, err) = run_env(&["kv", "get", "--stale", "--consistent", "greeting"], &env);
    assert_eq!(code, 2, "{err}");
    // --detailed, as consul kv get -detailed.
    let (code, out, _) = run_env(&["kv", "get", "--detailed", "greeting"], &env);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "CreateIndex",
            "Flags",
            "Key",
            "LockIndex",
            "ModifyIndex",
            "Session",
            "Value"
        ]
    );
    assert!(out.contains("Value            hello"), "{out}");
    // --json, with stable names and the same indexes.
    let (code, out, _) = run_env(&["kv", "get", "--json", "greeting"], &env);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key"], "greeting");
    assert_eq!(v["value"], "hello");
    assert!(v["modify_index"].as_u64().unwrap() >= v["create_index"].as_u64().unwrap());
    let (code, out, _) = run_env(&["status", "--json"], &env);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);

    // No file anywhere: a usage error that says where one may come from.
    if !std::path::Path::new("/etc/quorumd/cluster.toml").exists() {
        let (code, _, err) = run_env(&["status"], &[]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("--cluster") && err.contains("QUORUMD_CLUSTER"),
            "{err}"
        );
    }

    // Completions for three shells.
    for (shell, marker) in [
        ("bash", "_quorumd()"),
        ("zsh", "#compdef quorumd"),
        ("fish", "complete -c quorumd"),
    ] {
        let (code, out, err) = run_env(&["completions", shell], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("member"), "{shell}");
    }
}

/// SIGTERM to the process group of `make cluster3` (as `timeout` or a
/// supervisor sends it): one clean shutdown, every node exits 0.
#[test]
fn one_sigterm_to_the_make_process_group_is_one_clean_shutdown() {
    use std::os::unix::process::CommandExt;
    let c = TestCluster::of("make-term", 3);
    let repo = env!("CARGO_MANIFEST_DIR");
    // A Makefile shaped like the repository's: the recipe execs the script.
    let makefile = c.dir.path().join("Makefile");
    std::fs::write(
        &makefile,
        format!(
            "cluster:\n\texec {repo}/scripts/cluster.sh {}\n",
            c.config.display()
        ),
    )
    .unwrap();
    let log = c.dir.path().join("make.log");
    let mut make = std::process::Command::new("make")
        .args(["-s", "-f"])
        .arg(&makefile)
        .arg("cluster")
        .env("QUORUMD", common::BIN)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(c.dir.path().join("make.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("run make");
    let pgid = make.id() as i32;
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the group this test created.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
    let _group = Group(pgid);
    c.wait_agreed_leader(&[1, 2, 3]);
    // The script is make's child (the recipe execs it).
    let children = std::fs::read_to_string(format!("/proc/{pgid}/task/{pgid}/children"))
        .expect("make's children");
    let script: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    // GNU make passes the SIGTERM it got on to its child: the script gets
    // a second copy a moment later, while it is already stopping. (Two
    // copies sent at the same instant merge into one pending signal; this
    // is the case that does not.)
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) of a process of the group this test created.
    unsafe { libc::kill(script, libc::SIGTERM) };
    let mut status = None;
    common::wait_until(common::WAIT, || {
        status = make.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(status.is_some(), "make still runs");
    let err = std::fs::read_to_string(c.dir.path().join("make.err")).unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("[cluster] all nodes exited cleanly"),
        "{err}\n{out}"
    );
    assert!(
        !err.contains("exit at once") && !err.contains("exited with code"),
        "{err}"
    );
    assert!(!out.contains("without a clean shutdown"), "{out}");
    for id in 1..=3 {
        assert!(
            out.contains(&format!("[node-{id}] ")) && out.contains("stopped"),
            "{out}"
        );
    }
}
