//! Input that cannot hurt a node, on plaintext clusters: forged
//! Raft frames, a replica that fails, idle handshaken connections, and
//! shutdown beside a paused peer.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::peer::FakePeer;
use common::{assert_no_panic, wait_until, TestCluster};
use quorumd::transport::wire::{Frame, Purpose};
use raft::prelude::{Entry, Message, MessageType};
use serde_json::Value;

/// Generous bound for anything that should happen at once on a busy machine.
const BOUND: Duration = Duration::from_secs(15);

fn others(ids: &[u64], except: &[u64]) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|i| !except.contains(i))
        .collect()
}

fn field(status: &Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
}

fn raft_msg(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

#[test]
fn forged_heartbeat_and_append_leave_every_node_serving() {
    let mut c = TestCluster::of("forged", 3);
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = others(&[1, 2, 3], &[leader])[0];
    let commit = field(&c.status(victim), "commit_index");

    // The attack: claim to be the leader, then send a heartbeat whose
    // commit lies far beyond the log, and an append whose entries do not
    // follow the index they claim. Unchecked, either kills the replica.
    let mut forger = FakePeer::plain(c.addr(victim)).expect("connect");
    let answer = forger
        .hello(&c.spec.name, leader, victim, Purpose::Raft)
        .expect("hello");
    assert!(matches!(answer, Frame::Ack { .. }), "{answer:?}");
    let mut heartbeat = raft_msg(MessageType::MsgHeartbeat, leader, victim, term);
    heartbeat.commit = 1_000_000;
    let mut append = raft_msg(MessageType::MsgAppend, leader, victim, term);
    append.index = commit;
    append.log_term = term;
    let entry = |index| Entry {
        index,
        term,
        ..Default::default()
    };
    append.set_entries(vec![entry(commit + 1), entry(commit + 50)].into());
    for _ in 0..3 {
        forger.raft(heartbeat.clone()).expect("send heartbeat");
        forger.raft(append.clone()).expect("send append");
        forger
            .raft(raft_msg(MessageType::MsgHup, leader, victim, term))
            .expect("send hup");
    }
    drop(forger);

    c.wait_for("the victim logs the dropped frames", || {
        c.stderr(victim)
            .contains(&format!("dropped a message from node {leader}"))
    });
    // Every node keeps serving with a role; the victim is no zombie.
    let (l, _) = c.wait_agreed_leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        assert!(c.is_running(id), "node {id} exited\n{}", c.diagnostics());
        let s = c.status(id);
        assert!(s["role"].is_string(), "node {id} has no role: {s}");
        assert_eq!(c.get(id, "/health").expect("health").status, 200);
    }
    // Drops are logged at warn once per 10 s (the rest at debug): the
    // first says why.
    let victim_log = c.stderr(victim);
    assert!(
        victim_log.contains("MsgHeartbeat names commit 1000000 beyond the local log"),
        "the drop must say why:\n{victim_log}"
    );
    assert_eq!(
        victim_log.matches("dropped a message").count(),
        1,
        "drops must be rate-limited:\n{victim_log}"
    );

    // The victim still votes: kill -9 the leader, and the two survivors (a
    // quorum only with the victim's vote) elect a new one.
    c.signal(l, libc::SIGKILL);
    c.wait_exit(l, BOUND);
    let survivors = others(&[1, 2, 3], &[l]);
    let (new_leader, new_term) =
        c.wait_agreed_leader_where(&survivors, |nl, t| nl != l && t > term);
    assert!(survivors.contains(&new_leader));
    assert!(new_term > term);
    for id in survivors {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn a_replica_whose_storage_fails_exits_the_process() {
    // A full disk is not a failure (the node waits for space: see
    // tests/diskfull.rs); a log directory that vanished under the node is.
    let mut c = TestCluster::of("zombie", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = if leader == 3 { 2 } else { 3 };
    std::fs::remove_dir_all(c.data_dir(victim).join("wal")).expect("remove the log dir");

    // Write more than the log's segment holds (segments are zero-filled
    // when made, so appends into one never touch the directory): the next
    // segment cannot be made.
    let value = vec![b'x'; 400 * 1024];
    for i in 0..4 {
        if !c.is_running(victim) {
            break;
        }
        c.kv_put(leader, &format!("big/{i}"), &value);
    }

    let code = c.wait_exit(victim, BOUND);
    let err = c.stderr(victim);
    assert_eq!(code, 1, "node {victim} exit code\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("quorumd: error: storage failure in")
            && last.contains("No such file or directory"),
        "the last line must be one sentence naming the cause: {last}\n{err}"
    );
    // It exits right after the failed write: no line after the replica
    // stopped but the final sentence (no zombie answering handshakes).
    let stop = err
        .find("stopping replica")
        .expect("the replica says it stops");
    assert_eq!(err[stop..].lines().count(), 2, "{err}");
    assert_no_panic(&format!("node {victim}"), &err);
}

#[test]
fn two_hundred_idle_handshaken_connections_leave_the_cluster_serving() {
    let mut c = TestCluster::of("idle-conns", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let target = leader;
    let peers = others(&[1, 2, 3], &[target]);

    // 200 connections that complete a handshake as one of the target's
    // peers (the cluster name is no secret on a plaintext cluster) and then
    // say nothing. Half open Raft streams, half probes.
    let mut held = Vec::new();
    let mut acked = 0;
    for i in 0..200 {
        let purpose = if i % 2 == 0 {
            Purpose::Raft
        } else {
            Purpose::Probe
        };
        let Ok(mut p) = FakePeer::plain(c.addr(target)) else {
            continue;
        };
        if let Ok(Frame::Ack { .. }) = p.hello(&c.spec.name, peers[i % 2], target, purpose) {
            acked += 1;
        }
        held.push(p);
    }
    assert!(acked >= 100, "only {acked} of 200 handshakes were answered");
    // One inbound Raft stream and one probe connection per peer: each newer
    // one replaced the one before. The streams all claimed one peer and the
    // probes the other, so one of each is left at most.
    let open = held.iter().filter(|p| p.is_open()).count();
    assert!(open <= 2, "{open} handshaken connections still open");
    // And 200 that connect and never say a word.
    let silent: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(c.addr(target)).ok())
        .collect();

    // The cluster keeps a leader, every node answers, the target stays up.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for id in [1, 2, 3] {
            let r = c.get(id, "/health").expect("GET /health");
            assert_eq!(r.status, 200, "/health on node {id}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_agreed_leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        c.wait_for(&format!("node {id} sees both peers alive"), || {
            others(&[1, 2, 3], &[id])
                .iter()
                .all(|&p| c.sees_peer_alive(id, p, true))
        });
        assert!(c.is_running(id));
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
    drop(held);
    drop(silent);
}

#[test]
fn sigterm_with_a_sigstopped_peer_exits_0_within_2s() {
    let mut c = TestCluster::of("stopped-peer", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let followers = others(&[1, 2, 3], &[leader]);
    let paused = followers[0];
    c.signal(paused, libc::SIGSTOP);
    // Let the leader keep writing to the paused peer for a while.
    std::thread::sleep(Duration::from_millis(500));

    for id in [leader, followers[1]] {
        let sent = Instant::now();
        c.signal(id, libc::SIGTERM);
        let code = c.wait_exit(id, BOUND);
        let took = sent.elapsed();
        assert_eq!(code, 0, "node {id} exit code\n{}", c.diagnostics());
        assert!(
            took < Duration::from_secs(2),
            "node {id} took {took:?} to exit beside a paused peer\n{}",
            c.stderr(id)
        );
    }
    c.signal(paused, libc::SIGCONT);
    c.signal(paused, libc::SIGTERM);
    assert_eq!(c.wait_exit(paused, BOUND), 0);
}

#[test]
fn sixty_four_stalled_admin_clients_leave_health_answering() {
    let mut c = TestCluster::of("stalled-admin", 1);
    c.start_all();
    c.wait_agreed_leader(&[1]);
    // 64 clients that send half a request and stall.
    let stalled: Vec<TcpStream> = (0..64)
        .filter_map(|_| {
            let mut s = TcpStream::connect(c.admin(1)).ok()?;
            let _ = s.write_all(b"GET /admin/cluster/status HTTP/1.1\r\nHost: x\r\n");
            Some(s)
        })
        .collect();
    assert_eq!(stalled.len(), 64);
    let ok = wait_until(Duration::from_secs(2), || {
        c.get(1, "/health").is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "/health must answer beside 64 stalled clients");
    assert!(c.is_running(1));
}
