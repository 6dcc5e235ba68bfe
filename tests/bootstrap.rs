//! Bootstrap: clusters of 1, 3 and 5 real processes form and elect a leader,
//! a cluster without node 1 still elects one, and a node that cannot reach a
//! quorum gives up with exit code 3 and says who was missing.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_panic, Spec, TestCluster};
use serde_json::Value;

/// The full "cluster is up" check, from every node's view.
fn assert_formed(c: &TestCluster, expected_leader: u64) {
    let ids = c.ids();
    let n = ids.len() as u64;
    let (leader, term) = c.wait_agreed_leader(&ids);
    assert_eq!(leader, expected_leader, "leader\n{}", c.diagnostics());

    for &id in &ids {
        let s = c.status(id);
        assert_eq!(s["node_id"], id, "node_id of node {id}: {s}");
        assert_eq!(
            s["cluster"],
            c.spec.name.as_str(),
            "cluster of node {id}: {s}"
        );
        assert_eq!(s["bootstrap_complete"], true, "node {id}: {s}");
        assert_eq!(s["leader_id"], leader, "node {id}: {s}");
        assert_eq!(s["term"], term, "node {id}: {s}");
        assert_eq!(s["cluster_size"], n, "node {id}: {s}");
        assert_eq!(s["quorum_size"], n / 2 + 1, "node {id}: {s}");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(s["role"], role, "node {id}: {s}");

        let ready = c.get(id, "/ready").expect("GET /ready");
        assert_eq!(ready.status, 200, "/ready on node {id}: {}", ready.body);
        let health = c.get(id, "/health").expect("GET /health");
        assert_eq!(health.status, 200, "/health on node {id}: {}", health.body);

        let l = c.get(id, "/admin/cluster/leader").expect("GET leader");
        assert_eq!(
            l.status, 200,
            "/admin/cluster/leader on node {id}: {}",
            l.body
        );
        let l = l.json().expect("leader JSON");
        assert_eq!(l["leader_id"], leader, "leader view of node {id}: {l}");
        assert_eq!(l["term"], term, "leader view of node {id}: {l}");
        assert_eq!(
            l["addr"],
            c.addr(leader).to_string(),
            "leader addr on node {id} must be the leader's `addr` from the file: {l}"
        );
    }

    // Every node sees every other node alive, in both peer views.
    for &id in &ids {
        c.wait_for(
            &format!("node {id} lists every other node in live_peers"),
            || {
                c.try_status(id).is_some_and(|s| {
                    let live: Vec<u64> = s["live_peers"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default();
                    ids.iter().filter(|&&p| p != id).all(|p| live.contains(p))
                })
            },
        );
        c.wait_for(&format!("node {id} shows every peer alive"), || {
            c.try_peers(id).is_some_and(|peers| {
                ids.iter().filter(|&&p| p != id).all(|&p| {
                    peers.iter().any(|e| {
                        e["node_id"] == p
                            && e["alive"] == true
                            && e["addr"] == c.addr(p).to_string()
                            && e["last_heartbeat_ms_ago"].is_u64()
                    })
                })
            })
        });
        let peers = c.try_peers(id).expect("peers");
        assert!(
            peers.iter().all(|e| e["node_id"] != id),
            "node {id} lists itself among its peers: {peers:?}"
        );
    }

    // The one bootstrap line, on every node, naming the same leader and term.
    for &id in &ids {
        c.wait_for(&format!("node {id} logs `bootstrap complete`"), || {
            c.bootstrap_line(id).is_some()
        });
        let (l, t, elapsed) = c.bootstrap_line(id).expect("line");
        assert_eq!((l, t), (leader, term), "bootstrap line of node {id}");
        eprintln!("node {id}: bootstrap complete leader={l} term={t} elapsed={elapsed}ms");
        let lines = c
            .stderr(id)
            .lines()
            .filter(|l| l.contains("bootstrap complete:"))
            .count();
        assert_eq!(
            lines, 1,
            "node {id} logged the bootstrap line {lines} times"
        );
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn single_node_becomes_leader_of_itself() {
    let mut c = TestCluster::of("solo", 1);
    c.start_all();
    assert_formed(&c, 1);
    let s = c.status(1);
    assert_eq!(s["role"], "leader", "{s}");
    assert_eq!(s["quorum_size"], 1, "{s}");
    assert_eq!(
        s["live_peers"].as_array().map(|a| a.iter().any(|p| p != 1)),
        Some(false),
        "a single node has no live peers other than maybe itself: {s}"
    );
}

#[test]
fn data_dir_flag_is_accepted() {
    let mut c = TestCluster::of("datadir", 1);
    let dir = c.dir.path().join("elsewhere");
    c.start_node_with(1, &["--data-dir", dir.to_str().expect("utf-8")]);
    let (leader, _) = c.wait_agreed_leader(&[1]);
    assert_eq!(leader, 1);
    assert_no_panic("node 1", &c.stderr(1));
}

#[test]
fn three_nodes_started_together_elect_node_1() {
    let mut c = TestCluster::of("t3", 3);
    c.start_all();
    assert_formed(&c, 1);
}

#[test]
fn five_nodes_started_together_elect_node_1() {
    let mut c = TestCluster::of("t5", 5);
    c.start_all();
    assert_formed(&c, 1);
}

/// Until quorum the nodes must probe fast (or react to a peer connecting):
/// with a 10 s heartbeat, nodes started a little apart still form the cluster
/// well before one heartbeat interval.
#[test]
fn bootstrap_does_not_wait_for_the_heartbeat_interval() {
    let mut c = TestCluster::new(Spec::new("slow-hb", 3).heartbeat("10s", "30s"));
    c.start_node(1);
    std::thread::sleep(Duration::from_millis(300));
    c.start_node(2);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    c.start_node(3);
    let formed = common::wait_until(Duration::from_secs(8), || {
        c.agreed_leader(&[1, 2, 3]).is_some()
    });
    assert!(
        formed,
        "no agreed leader {:?} after the last node started, with a 10 s heartbeat\n{}",
        started.elapsed(),
        c.diagnostics()
    );
}

#[test]
fn without_node_1_nodes_2_and_3_elect_a_leader() {
    let mut c = TestCluster::of("no1", 3);
    c.start(&[2, 3]);
    let (leader, term) = c.wait_agreed_leader(&[2, 3]);
    assert!(leader == 2 || leader == 3, "leader {leader}");
    for id in [2, 3] {
        let ready = c.get(id, "/ready").expect("GET /ready");
        assert_eq!(ready.status, 200, "/ready on node {id}: {}", ready.body);
        let s = c.status(id);
        assert_eq!(s["term"], term, "{s}");
        c.wait_for(&format!("node {id} shows node 1 never answered"), || {
            c.try_peers(id).is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["node_id"] == 1 && p["alive"] == false && p["last_heartbeat_ms_ago"].is_null()
                })
            })
        });
        c.wait_for(&format!("node {id} logs `bootstrap complete`"), || {
            c.bootstrap_line(id).is_some()
        });
    }
}

#[test]
fn lone_node_serves_health_but_is_not_ready() {
    let mut c = TestCluster::of("lonely", 3);
    c.start_node(2);
    c.wait_for("node 2 answers /health", || {
        c.get(2, "/health").is_ok_and(|r| r.status == 200)
    });
    let s = c.status(2);
    assert_eq!(s["bootstrap_complete"], false, "{s}");
    assert_eq!(s["leader_id"], Value::Null, "{s}");
    assert_eq!(s["cluster_size"], 3, "{s}");
    assert_eq!(s["quorum_size"], 2, "{s}");

    let ready = c.get(2, "/ready").expect("GET /ready");
    assert_eq!(ready.status, 503, "/ready before quorum: {}", ready.body);

    let l = c.get(2, "/admin/cluster/leader").expect("GET leader");
    assert_eq!(
        l.status, 503,
        "/admin/cluster/leader before quorum: {}",
        l.body
    );
    let body = l.json().expect("503 body is JSON");
    assert!(body["error"].is_string(), "503 body has an error: {body}");
}

#[test]
fn alone_past_quorum_wait_exits_3_naming_missing_peers() {
    let mut c = TestCluster::new(Spec::new("timeout", 3).quorum_wait("1s"));
    let started = Instant::now();
    c.start_node(1);
    let code = c.wait_exit(1, Duration::from_secs(15));
    let waited = started.elapsed();
    let err = c.stderr(1);
    assert_eq!(code, 3, "exit code; stderr:\n{err}");
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}, before the 1s quorum wait"
    );
    for peer in [2, 3] {
        let want = format!("{peer}@{}", c.addr(peer));
        assert!(err.contains(&want), "stderr must name `{want}`:\n{err}");
    }
    assert!(
        !err.contains(&format!("1@{}", c.addr(1))),
        "node 1 must not list itself as missing:\n{err}"
    );
    // One sentence with the counts: 1 node reachable (itself), 2 needed.
    let line = err
        .lines()
        .find(|l| l.contains(&format!("2@{}", c.addr(2))))
        .expect("line naming the missing peers");
    let reachable_1 = ["1 of 3", "1 reachable", "reachable: 1", "reachable=1"]
        .iter()
        .any(|p| line.contains(p));
    let needed_2 = ["2 needed", "needed: 2", "needed=2", "need 2"]
        .iter()
        .any(|p| line.contains(p));
    assert!(
        reachable_1 && needed_2,
        "line must give 1 reachable and 2 needed:\n{line}"
    );
    assert_no_panic("node 1", &err);
}
