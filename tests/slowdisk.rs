//! A slow disk on real processes: one node's log fsyncs stall (the
//! test-only fault of debug builds, `QUORUMD_FAULT_FSYNC_DELAY`) under a
//! write load. Stalls of 300 ms, on a follower or on the leader, cause no
//! election storm and lose no write; a leader whose fsync stalls longer than
//! twice the election timeout hands its leadership to a peer.
//!
//! Time limits are sanity bounds for a busy 2-core CI machine, never
//! performance assertions.

mod common;

use std::time::{Duration, Instant};

use common::{Spec, TestCluster};

const IDS: [u64; 3] = [1, 2, 3];

/// Starts the cluster with node `victim`'s fsyncs stalling `delay` while the
/// returned file exists (it does not yet).
fn cluster(victim: u64, delay: &str) -> (TestCluster, std::path::PathBuf) {
    let mut c = TestCluster::new(Spec::new("slowdisk", 3));
    let switch = c.dir.path().join("stall-now");
    for id in IDS {
        if id == victim {
            c.start_node_env(
                id,
                &[],
                &[
                    ("QUORUMD_FAULT_FSYNC_DELAY", delay),
                    ("QUORUMD_FAULT_FSYNC_DELAY_FILE", switch.to_str().unwrap()),
                ],
            );
        } else {
            c.start_node(id);
        }
    }
    c.wait_for("node 1 to lead", || {
        c.agreed_leader(&IDS).map(|(l, _)| l) == Some(1)
    });
    (c, switch)
}

fn term(c: &TestCluster) -> u64 {
    c.wait_agreed_leader(&IDS).1
}

/// Writes for `run` through `via` (each write goes on until it succeeds or
/// its bound passes); returns the keys acknowledged.
fn load(c: &TestCluster, via: &[u64], run: Duration) -> Vec<String> {
    let mut acked = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < run {
        let node = via[i % via.len()];
        let key = format!("load/{i:05}");
        let r = c.kv_put(node, &key, key.as_bytes());
        if r.status == 200 {
            acked.push(key);
        }
        i += 1;
    }
    acked
}

fn assert_every_ack_kept(c: &TestCluster, acked: &[String]) {
    assert!(!acked.is_empty(), "no write succeeded");
    for id in IDS {
        c.wait_for("every node to hold every acknowledged write", || {
            let r = c.call(id, "GET", "/v1/kv/load/?keys&stale", b"");
            r.status == 200 && acked.iter().all(|k| r.body.contains(&format!("\"{k}\"")))
        });
    }
}

#[test]
fn fsync_stalls_of_300ms_on_a_follower_cause_no_election_and_lose_nothing() {
    let (c, switch) = cluster(3, "300ms");
    let before = term(&c);
    std::fs::write(&switch, b"").unwrap();
    let acked = load(&c, &[1, 2, 3], Duration::from_secs(6));
    std::fs::remove_file(&switch).unwrap();
    let after = term(&c);
    // The stalls are on another thread than heartbeats, so no election is
    // expected; one is tolerated, so that a starved 2-core CI machine does
    // not fail the test, but a storm is not.
    assert!(
        after <= before + 1,
        "a slow follower disk started elections: term {before} -> {after}"
    );
    assert!(c.agreed_leader(&IDS).is_some());
    assert_every_ack_kept(&c, &acked);
    assert!(c
        .stderr(3)
        .contains("test fault: every fsync of the log sleeps 300ms"));
}

#[test]
fn fsync_stalls_of_300ms_on_the_leader_cause_no_election_and_lose_nothing() {
    let (c, switch) = cluster(1, "300ms");
    let before = term(&c);
    std::fs::write(&switch, b"").unwrap();
    let acked = load(&c, &[1, 2, 3], Duration::from_secs(6));
    std::fs::remove_file(&switch).unwrap();
    let after = term(&c);
    assert!(
        after <= before + 1,
        "300 ms stalls on the leader started elections: term {before} -> {after}"
    );
    assert!(c.agreed_leader(&IDS).is_some());
    assert_every_ack_kept(&c, &acked);
}

#[test]
fn a_leader_whose_fsync_stalls_past_twice_the_election_timeout_hands_over() {
    // The test spec's election timeout is at most a few hundred ms; a
    // stall of 3 s is past twice it.
    let (c, switch) = cluster(1, "3s");
    let before = term(&c);
    std::fs::write(&switch, b"").unwrap();
    // A write through the leader starts the stall.
    let _ = c.request(1, "PUT", "/v1/kv/trigger", b"x", Duration::from_secs(30));
    c.wait_for("another node to lead", || {
        c.agreed_leader(&[2, 3]).is_some_and(|(l, _)| l != 1)
    });
    let acked = load(&c, &[2, 3], Duration::from_secs(2));
    std::fs::remove_file(&switch).unwrap();
    let after = term(&c);
    assert!(
        after - before <= 2,
        "terms went from {before} to {after}: an election storm"
    );
    assert_every_ack_kept(&c, &acked);
    assert!(
        c.stderr(1).contains("the log's fsync has stalled for"),
        "{}",
        c.stderr(1)
    );
}
