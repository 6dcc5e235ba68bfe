//! The checkers must be able to fail: the same workload with an unsafe read
//! path (`?stale` reads, served from a node's local replica) under
//! partitions must be reported, and so must nodes that forget their votes
//! across restarts. And an interrupted run still cleans up.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn stale_reads_from_an_isolated_node_are_caught() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "--nodes",
            "3",
            "--duration",
            "8s",
            "--seed",
            "7",
            "--faults",
            "partition-leader,partition-split",
            "--unsafe-stale-reads",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let f = final_of(&o);
    assert!(
        f.violations > 0,
        "the negative control went unnoticed: {f:?}\n{stderr}"
    );
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(
        report.contains("linearizability on key chaos/k"),
        "{report}"
    );
    assert!(
        report.contains("stale get"),
        "the excerpt names the stale read:\n{report}"
    );
    assert!(
        stderr.contains(&format!("results in {}", out.display())),
        "{stderr}"
    );
    // A failed run keeps everything for the post-mortem.
    for file in [
        "history.jsonl",
        "schedule.json",
        "faults.jsonl",
        "node-2.log",
        "timeline.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(out.join("data").is_dir());
}

#[test]
fn a_node_that_forgets_its_vote_is_caught() {
    // Every node rewinds its durable term and forgets its vote at each
    // start, as the apply-batch bug made a follower do: the Raft invariant
    // checks must report it, from the nodes' own logs.
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "--nodes",
            "3",
            "--duration",
            "3s",
            "--seed",
            "11",
            "--faults",
            "pause-handoff,kill-follower",
            "--unsafe-forget-votes",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let f = final_of(&o);
    assert!(
        f.violations > 0,
        "the forgotten votes went unnoticed: {f:?}\n{stderr}"
    );
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(report.contains("term went back"), "{report}");
    assert!(
        report.contains("recovered term") && report.contains("was durable at line"),
        "the violation names the lines of the node's log:\n{report}"
    );
    assert!(report.contains("--unsafe-forget-votes"), "{report}");
}

#[test]
fn lock_holders_that_outlive_their_lease_are_caught() {
    // Holders that count on three TTLs instead of one: an abandoned hold
    // then still "holds" when the node has rightly ended its session and
    // another client took the lock. The lock checker must report it.
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "--nodes",
            "3",
            "--duration",
            "30s",
            "--seed",
            "5",
            // Faults that keep the leader: a new leader restarts the TTL
            // timers, and the abandoned session must expire within the run.
            "--faults",
            "kill-follower",
            "--clients",
            "2",
            "--lock-clients",
            "3",
            "--lock-abandon",
            "2",
            "--unsafe-lock-lease",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let f = final_of(&o);
    assert!(
        f.violations > 0,
        "the overlap went unnoticed: {f:?}\n{stderr}"
    );
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(
        report.contains("lock overlap on key chaos/lock"),
        "{report}"
    );
    assert!(out.join("holds.jsonl").is_file());
}

#[test]
fn a_lock_workload_under_faults_has_no_overlap() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "--nodes",
            "3",
            "--duration",
            "20s",
            "--seed",
            "5",
            "--faults",
            "pause,kill-leader,partition-leader",
            "--clients",
            "2",
            "--lock-clients",
            "3",
            "--lock-abandon",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let f = final_of(&o);
    assert_eq!(f.violations, 0, "{stderr}");
    // "lock workload: N holds (R released, A abandoned, E expired), 0 overlaps":
    // the run must have taken the lock, and abandoned some holds, or the
    // check of no overlap proved nothing.
    let line = stderr
        .lines()
        .find(|l| l.contains("lock workload:"))
        .unwrap_or_else(|| panic!("no lock workload line:\n{stderr}"));
    let number_before = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} in {line:?}"));
        line[..at]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {word:?} in {line:?}"))
    };
    assert!(number_before(" holds") >= 1, "no hold was taken: {line}");
    assert!(
        number_before(" abandoned") >= 1,
        "no hold was abandoned: {line}"
    );
    assert!(line.contains(" 0 overlaps"), "{line}");
}

#[test]
fn ctrl_c_heals_checks_and_tears_down() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = command(
        &out,
        &[
            "--duration",
            "10m",
            "--seed",
            "3",
            "--faults",
            "partition-leader",
        ],
    )
    .spawn()
    .unwrap();
    let mut guard = Guard(child);
    let pid = guard.0.id();
    // Wait for the cluster to come up (its namespaces exist), then a bit.
    let until = Instant::now() + Duration::from_secs(60);
    while namespaces_of(pid).len() < 4 {
        assert!(Instant::now() < until, "the runner made no namespaces");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let until = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "the runner did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    guard
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let last = stdout.lines().last().unwrap_or("");
    let f = parse_final(last)
        .unwrap_or_else(|| panic!("no final line after Ctrl-C: {stdout:?}\n{stderr}"));
    assert_eq!(f.seed, 3);
    assert!(
        namespaces_of(pid).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(pid)
    );
}
