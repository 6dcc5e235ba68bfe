//! The short chaos run of `make test`: about a minute on 3 nodes, every
//! fault kind at least once, and nothing found. It spawns the real runner,
//! which spawns real nodes in network namespaces.

mod common;

use std::collections::BTreeSet;

use common::*;

#[test]
fn a_short_run_with_every_fault_kind_finds_no_violation() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "--nodes",
            "3",
            "--duration",
            "50s",
            "--seed",
            "1",
            "--clients",
            "10",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let f = final_of(&o);
    assert_eq!(
        f.violations,
        0,
        "violations in the short run:\n{stderr}\n{}",
        std::fs::read_to_string(out.join("report.txt")).unwrap_or_default()
    );
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(f.seed, 1);
    assert_eq!(f.ops, f.ok + f.failed + f.unknown);
    // The store served the workload: most operations succeeded.
    assert!(
        f.ok >= 500 && f.ok * 2 > f.ops,
        "too few ok operations: {f:?}\n{stderr}"
    );

    // Every kind ran, each is in faults.jsonl, and the count agrees.
    let faults = std::fs::read_to_string(out.join("faults.jsonl")).unwrap();
    let kinds: BTreeSet<String> = faults
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    for k in [
        "kill-leader",
        "kill-follower",
        "pause",
        "partition-leader",
        "partition-split",
        "one-way",
        "loss",
        "restart-cluster",
        "pause-handoff",
        "pause-transfer",
        "member-restart",
        "kill-leader-pause",
    ] {
        assert!(kinds.contains(k), "fault kind {k} never ran: {kinds:?}");
    }
    assert_eq!(f.faults as usize, faults.lines().count());

    // The results folder: history, schedule, logs, the picture; and the
    // namespaces are gone.
    for file in [
        "history.jsonl",
        "schedule.json",
        "node-1.log",
        "node-3.log",
        "timeline.svg",
        "report.txt",
    ] {
        assert!(
            out.join(file).is_file(),
            "{file} missing from the results folder"
        );
    }
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count() as u64, f.ops);
    assert!(
        stderr.contains(&format!("results in {}", out.display())),
        "{stderr}"
    );
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("restart-cluster"));
    assert!(
        !out.join("data").exists(),
        "a passing run removes the nodes' data"
    );
}
