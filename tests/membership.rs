//! Membership at runtime, on real clusters: grow and shrink, replace a dead
//! box, refuse a wiped or removed node, keep the membership across restarts,
//! and hand leadership over before the leader leaves.

mod common;

use std::time::{Duration, Instant};

use common::{http_body, run_bin, Finished, Spec, TestCluster, WAIT};
use serde_json::{json, Value};

/// A cluster of nodes 1..=3 whose spec also holds addresses for nodes 4 and
/// 5; nodes 1-3 run with a file that lists only 1-3.
fn three_of_five(name: &str) -> TestCluster {
    let mut c = TestCluster::new(Spec::new(name, 5));
    c.use_file(&[1, 2, 3], &[1, 2, 3]);
    c.start(&[1, 2, 3]);
    c.wait_agreed_leader(&[1, 2, 3]);
    c
}

fn member(c: &TestCluster, args: &[&str]) -> Finished {
    let config = c.config_of(1).to_str().unwrap().to_string();
    let mut all = vec!["member", args[0], "--cluster", config.as_str()];
    all.extend_from_slice(&args[1..]);
    run_bin(&all, Duration::from_secs(60))
}

fn add_args(c: &TestCluster, id: u64) -> Vec<String> {
    vec![
        "--id".into(),
        id.to_string(),
        "--addr".into(),
        c.addr(id).to_string(),
        "--admin".into(),
        c.admin(id).to_string(),
    ]
}

/// `(id, role)` of every member, as node `via` reports them (empty if it
/// does not answer yet).
fn members(c: &TestCluster, via: u64) -> Vec<(u64, String)> {
    let Ok(r) = http_body(c.admin(via), "GET", "/admin/cluster/members", b"") else {
        return Vec::new();
    };
    let v: Value = r.json().unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn voters(c: &TestCluster, via: u64) -> Vec<u64> {
    members(c, via)
        .into_iter()
        .filter(|(_, r)| r == "voter")
        .map(|(id, _)| id)
        .collect()
}

fn write_keys(c: &TestCluster, via: u64, n: usize) {
    for i in 0..n {
        let r = c.kv_put(via, &format!("m/{i:03}"), format!("v{i}").as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
    }
}

fn assert_keys(c: &TestCluster, id: u64, n: usize) {
    c.wait_for(&format!("node {id} holds all {n} keys"), || {
        http_body(c.admin(id), "GET", "/v1/kv/m/?keys&stale", b"").is_ok_and(|r| {
            r.status == 200
                && r.json()
                    .ok()
                    .and_then(|v: Value| v.as_array().map(Vec::len))
                    == Some(n)
        })
    });
}

#[test]
fn grow_to_four_then_shrink_back_to_three() {
    let mut c = three_of_five("m-grow");
    write_keys(&c, 1, 50);
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["add"];
    a.extend(args.iter().map(String::as_str));
    let out = member(&c, &a);
    assert_eq!(out.code, 0, "{out:?}");
    // The new node runs with its own entry in its file, and nothing else.
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    assert_keys(&c, 4, 50);
    c.wait_for("node 4 is promoted to voter", || voters(&c, 1).contains(&4));
    assert_eq!(voters(&c, 4), vec![1, 2, 3, 4]);
    c.wait_agreed_leader(&[1, 2, 3, 4]);

    let out = member(&c, &["remove", "4"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_for("node 4 leaves", || voters(&c, 2) == vec![1, 2, 3]);
    assert_eq!(c.wait_exit(4, WAIT), 2, "a removed node stops with exit 2");
    // It learns it either by applying its removal or from a peer that
    // refuses it first; either way one sentence says so.
    let err = c.stderr(4);
    assert!(
        err.contains("node 4 was removed from") && err.contains("this id may not rejoin"),
        "{err}"
    );
    write_keys(&c, 2, 60);
    assert_keys(&c, 3, 60);
}

#[test]
fn replace_a_dead_node_and_survive_a_leader_crash() {
    let mut c = three_of_five("m-replace");
    write_keys(&c, 1, 40);
    c.signal(3, libc::SIGKILL);
    c.wait_exit(3, WAIT);
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();

    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["replace", "3"];
    a.extend(args.iter().map(String::as_str));
    let out = member(&c, &a);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("node 4 votes and node 3 is removed"),
        "{}",
        out.stdout
    );
    assert_eq!(voters(&c, 1), vec![1, 2, 4]);
    assert_keys(&c, 4, 40);

    let (leader, term) = c.wait_agreed_leader(&[1, 2, 4]);
    c.signal(leader, libc::SIGKILL);
    c.wait_exit(leader, WAIT);
    let rest: Vec<u64> = [1, 2, 4].into_iter().filter(|&i| i != leader).collect();
    c.wait_agreed_leader_where(&rest, |l, t| l != leader && t > term);
    write_keys(&c, rest[0], 45);
    assert_keys(&c, rest[1], 45);
}

#[test]
fn a_wiped_member_is_refused_and_the_cluster_keeps_its_leader() {
    let mut c = three_of_five("m-wiped");
    write_keys(&c, 1, 5);
    c.wait_for("node 3 is marked joined", || {
        let r = c.call(1, "GET", "/admin/cluster/members", b"");
        let v: Value = r.json().unwrap_or_default();
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m["id"] == 3 && m["joined"] == true))
    });
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    c.signal(victim, libc::SIGKILL);
    c.wait_exit(victim, WAIT);
    std::fs::remove_dir_all(c.data_dir(victim)).unwrap();
    c.start_node(victim);
    assert_eq!(c.wait_exit(victim, WAIT), 2);
    let err = c.stderr(victim);
    assert!(err.contains("state is lost"), "{err}");
    assert!(err.contains("quorumd member replace"), "{err}");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != victim).collect();
    assert_eq!(c.agreed_leader(&rest), Some((leader, term)));
}

#[test]
fn a_removed_node_that_comes_back_is_refused() {
    let mut c = three_of_five("m-removed");
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    c.signal(victim, libc::SIGTERM);
    c.wait_exit(victim, WAIT);
    let out = member(&c, &["remove", &victim.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    c.start_node(victim);
    assert_eq!(c.wait_exit(victim, WAIT), 2);
    assert!(c.stderr(victim).contains("removed"), "{}", c.stderr(victim));
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != victim).collect();
    let (l, t) = c.wait_agreed_leader(&rest);
    assert_eq!(
        (l, t),
        (leader, term),
        "the removed node disturbed the term"
    );
    // Its id is never used again.
    let out = member(
        &c,
        &[
            "add",
            "--id",
            &victim.to_string(),
            "--addr",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:2",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("never reused"), "{}", out.stderr);
}

#[test]
fn a_full_restart_keeps_the_new_membership() {
    let mut c = three_of_five("m-restart");
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["add"];
    a.extend(args.iter().map(String::as_str));
    assert_eq!(member(&c, &a).code, 0);
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    c.wait_for("node 4 votes", || voters(&c, 1).contains(&4));
    assert_eq!(member(&c, &["remove", "3"]).code, 0);
    c.wait_for("node 3 is gone", || voters(&c, 1) == vec![1, 2, 4]);
    for id in [1, 2, 4] {
        c.signal(id, libc::SIGTERM);
    }
    for id in [1, 2, 4] {
        assert_eq!(c.wait_exit(id, WAIT), 0);
    }
    c.start(&[1, 2, 4]);
    c.wait_agreed_leader(&[1, 2, 4]);
    for id in [1, 2, 4] {
        assert_eq!(voters(&c, id), vec![1, 2, 4], "node {id}");
    }
}

#[test]
fn removing_the_leader_hands_leadership_over_first() {
    let c = three_of_five("m-leader");
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let started = Instant::now();
    let out = member(&c, &["remove", &leader.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let (new_leader, new_term) = c.wait_agreed_leader_where(&rest, |l, _| l != leader);
    // A handoff takes one round trip: the term moves by one, with no
    // election timeout between.
    assert_eq!(
        new_term,
        term + 1,
        "an election happened instead of a handoff"
    );
    assert!(rest.contains(&new_leader));
    assert!(started.elapsed() < WAIT);
}

#[test]
fn a_change_cut_by_a_leader_crash_is_whole_or_absent() {
    let mut c = three_of_five("m-cut");
    write_keys(&c, 1, 20);
    // Grow to four first, so the fifth node joins a cluster of four.
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["add"];
    a.extend(args.iter().map(String::as_str));
    assert_eq!(member(&c, &a).code, 0);
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    c.wait_for("node 4 votes", || voters(&c, 1).contains(&4));
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3, 4]);

    // Add node 5 and kill the leader while the change is on its way.
    let follower = [1, 2, 3, 4].into_iter().find(|&i| i != leader).unwrap();
    let body = format!(
        r#"{{"id": 5, "addr": "{}", "admin": "{}"}}"#,
        c.addr(5),
        c.admin(5)
    );
    let admin = c.admin(follower);
    let adding = std::thread::spawn(move || {
        http_body(admin, "POST", "/admin/cluster/members", body.as_bytes())
    });
    std::thread::sleep(Duration::from_millis(2));
    c.signal(leader, libc::SIGKILL);
    c.wait_exit(leader, WAIT);
    let answer = adding.join().unwrap();
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != leader).collect();
    c.wait_agreed_leader_where(&rest, |l, _| l != leader);

    // Every survivor agrees, and the change is whole or absent.
    let mut views = Vec::new();
    c.wait_for("the survivors agree on the membership", || {
        views = rest.iter().map(|&id| members(&c, id)).collect();
        views.iter().all(|v| !v.is_empty() && *v == views[0])
    });
    let five = views[0].iter().find(|(id, _)| *id == 5).cloned();
    eprintln!("add answered {answer:?}; node 5 afterwards: {five:?}");
    match five {
        None => {
            // Absent: adding it again works.
            let add = || {
                http_body(
                    c.admin(rest[0]),
                    "POST",
                    "/admin/cluster/members",
                    format!(
                        r#"{{"id": 5, "addr": "{}", "admin": "{}"}}"#,
                        c.addr(5),
                        c.admin(5)
                    )
                    .as_bytes(),
                )
            };
            let mut again = add();
            for _ in 0..50 {
                if again.as_ref().is_ok_and(|r| r.status == 200) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                again = add();
            }
            assert_eq!(again.unwrap().status, 200);
        }
        Some((_, role)) => assert_eq!(role, "learner"),
    }
    // Either way node 5 can now join and catch up.
    c.use_file(&[5], &[1, 2, 3, 4, 5]);
    c.start_node(5);
    assert_keys(&c, 5, 20);
    write_keys(&c, rest[0], 25);
    assert_keys(&c, rest[1], 25);
}

/// Node 4 added to a cluster that started as nodes 1-3, and a voter.
fn grown_to_four(name: &str) -> TestCluster {
    let mut c = three_of_five(name);
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["add"];
    a.extend(args.iter().map(String::as_str));
    let out = member(&c, &a);
    assert_eq!(out.code, 0, "{out:?}");
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    c.wait_for("node 4 is promoted to voter", || {
        (1..=4).all(|id| voters(&c, id) == vec![1, 2, 3, 4])
    });
    c.wait_agreed_leader(&[1, 2, 3, 4]);
    c
}

#[test]
fn after_growing_every_node_reports_the_replicated_membership_and_status_follows_it() {
    let mut c = grown_to_four("m-sizes");
    // Every node, the three whose file lists three nodes included.
    c.wait_for("every node reports 4 voters", || {
        (1..=4).all(|id| {
            c.try_status(id).is_some_and(|s| {
                s["cluster_size"] == 4
                    && s["quorum_size"] == 3
                    && s["voters"] == json!([1, 2, 3, 4])
            })
        })
    });

    // `quorumd status` with the file of nodes 1-3 shows node 4 too.
    let file = c.config_of(1).to_str().unwrap().to_string();
    let out = run_bin(&["status", "--cluster", &file], Duration::from_secs(30));
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("members: the live membership, as node ")
            && lines[0].ends_with("(the leader) reports it"),
        "{}",
        out.stdout
    );
    for id in 1..=4 {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id}:\n{}", out.stdout));
        assert!(
            row.contains("3/3"),
            "node {id} must see 3 of 3 peers: {row}"
        );
    }
    assert!(out.stdout.contains("every member agrees"), "{}", out.stdout);

    // --json: stable names, every member.
    let out = run_bin(
        &["status", "--json", "--cluster", &file],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["membership"]["source"], "leader");
    let ids: Vec<u64> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(v["nodes"][3]["status"]["cluster_size"], 4);

    // `member list`: the header is as wide as the columns under it.
    let out = member(&c, &["list"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header = lines[0];
    for (col, name) in ["ADDRESS", "ADMIN", "ROLE", "ALIVE"].iter().enumerate() {
        let at = header.find(name).unwrap();
        for row in &lines[1..] {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(
                row[at..].split_whitespace().next(),
                Some(cells[col + 1]),
                "column {name} misaligned:\n{}",
                out.stdout
            );
        }
    }
    // And no wider: each column ends two spaces before the next one starts.
    let names = ["ID", "ADDRESS", "ADMIN", "ROLE", "ALIVE"];
    for pair in names.windows(2) {
        let (start, next) = (header.find(pair[0]).unwrap(), header.find(pair[1]).unwrap());
        let widest = lines
            .iter()
            .map(|l| l[start..].split_whitespace().next().unwrap().len())
            .max()
            .unwrap();
        assert_eq!(
            start + widest + 2,
            next,
            "column {} too wide:\n{}",
            pair[0],
            out.stdout
        );
    }
    let out = member(&c, &["list", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("member list --json is JSON");
    assert_eq!(v.as_array().unwrap().len(), 4);
    for m in v.as_array().unwrap() {
        for k in ["id", "addr", "admin", "role", "alive", "joined"] {
            assert!(!m[k].is_null(), "{k} missing: {m}");
        }
    }

    // Node 4 stops: status, still given the file of 1-3, names it.
    c.signal(4, libc::SIGTERM);
    assert_eq!(c.wait_exit(4, WAIT), 0);
    let out = run_bin(&["status", "--cluster", &file], Duration::from_secs(30));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "is not healthy: unreachable: node 4 ({})",
            c.admin(4)
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn replacing_the_leader_succeeds_and_a_retry_recognises_it() {
    let mut c = three_of_five("m-replace-leader");
    write_keys(&c, 1, 10);
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    let args = add_args(&c, 4);
    let old = leader.to_string();
    let mut a: Vec<&str> = vec!["replace", &old];
    a.extend(args.iter().map(String::as_str));
    let out = member(&c, &a);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("node 4 votes and node {leader} is removed")),
        "{}",
        out.stdout
    );
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != leader).collect();
    c.wait_for("the replacement is in every member's view", || {
        rest.iter().all(|&id| {
            let mut v = voters(&c, id);
            v.sort();
            v == rest
        })
    });
    // The same command again, as an operator retries after an error: the
    // change took effect already, and it says so rather than failing.
    let out = member(&c, &a);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("taken effect already"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("node 4 votes and node {leader} is removed")),
        "{}",
        out.stdout
    );
}

#[test]
fn a_change_sent_while_the_leader_is_frozen_follows_the_new_leader() {
    let c = three_of_five("m-frozen");
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    let pid = c.pid(leader).expect("leader runs") as i32;
    // SAFETY: a plain kill(2) of a child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    struct Thaw(i32);
    impl Drop for Thaw {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let _thaw = Thaw(pid);
    // At once, before the follower knows of a new leader: it forwards to
    // the frozen one, whose kernel accepts the connection but which never
    // answers.
    let started = Instant::now();
    let body = format!(
        r#"{{"id": 4, "addr": "{}", "admin": "{}", "auto_promote": false}}"#,
        c.addr(4),
        c.admin(4)
    );
    let r = http_body(
        c.admin(follower),
        "POST",
        "/admin/cluster/members",
        body.as_bytes(),
    )
    .expect("the follower answers");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    // Sanity bound only: the old behaviour waited for as long as the
    // leader stayed frozen (this test's whole run).
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let (new_leader, _) = c.wait_agreed_leader_where(&rest, |l, t| l != leader && t > term);
    assert!(members(&c, new_leader)
        .iter()
        .any(|(id, role)| *id == 4 && role == "learner"));
}

#[test]
fn a_restarted_member_of_a_changed_membership_becomes_ready() {
    // A long quorum wait: a node stuck waiting for a removed voter would
    // stay unready for all of it.
    let mut c = TestCluster::new(Spec::new("m-ready", 5).quorum_wait("120s"));
    c.use_file(&[1, 2, 3], &[1, 2, 3]);
    c.start(&[1, 2, 3]);
    c.wait_agreed_leader(&[1, 2, 3]);
    let args = add_args(&c, 4);
    let mut a: Vec<&str> = vec!["add"];
    a.extend(args.iter().map(String::as_str));
    assert_eq!(member(&c, &a).code, 0);
    c.use_file(&[4], &[1, 2, 3, 4]);
    c.start_node(4);
    c.wait_for("node 4 votes", || voters(&c, 4) == vec![1, 2, 3, 4]);
    // Remove node 1 (the lowest id, which node 4 would wait to probe), then
    // kill node 4 before its state machine is checkpointed: it restarts
    // from a configuration that still lists node 1, and replays the
    // removal.
    assert_eq!(member(&c, &["remove", "1"]).code, 0);
    c.wait_for("node 4 applied the removal", || {
        voters(&c, 4) == vec![2, 3, 4]
    });
    c.signal(4, libc::SIGKILL);
    c.wait_exit(4, WAIT);
    // Node 1 has stopped (it was removed); something at its peer address
    // accepts connections and never answers, so that each probe of it
    // takes its whole timeout and node 4 has not finished probing it when
    // it learns that node 1 is gone.
    c.wait_exit(1, WAIT);
    let _silent = std::net::TcpListener::bind(c.addr(1)).expect("bind node 1's address");
    let started = Instant::now();
    c.start_node(4);
    c.wait_for("node 4 is ready again", || {
        common::http(c.admin(4), "GET", "/ready").is_ok_and(|r| r.status == 200)
    });
    assert!(started.elapsed() < WAIT);
    let s = c.status(4);
    assert_eq!(s["bootstrap_complete"], true, "{s}");
    assert_eq!(s["cluster_size"], 3, "{s}");
}
