//! Replays every kept fuzz input on stable Rust, through the same entry
//! points the cargo-fuzz targets call (`quorumd::fuzzing`): the seeds in
//! `fuzz/seeds/<target>/` and every crash `make fuzz` ever found, kept in
//! `fuzz/regressions/<target>/`. Each must run without a panic.

use std::path::Path;

fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for kind in ["seeds", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files.iter().filter(|f| f.is_file()) {
            let data = std::fs::read(file).expect("read fuzz input");
            let outcome = std::panic::catch_unwind(|| quorumd::fuzzing::run(target, &data));
            assert!(outcome.is_ok(), "{target}: {} panics", file.display());
            if kind == "seeds" {
                seeds += 1;
            }
        }
    }
    assert!(seeds > 0, "{target}: no seeds in fuzz/seeds/{target}");
}

#[test]
fn frames_inputs_replay_without_a_panic() {
    replay("frames");
}

#[test]
fn cluster_file_inputs_replay_without_a_panic() {
    replay("cluster_file");
}

#[test]
fn raft_step_inputs_replay_without_a_panic() {
    replay("raft_step");
}

#[test]
fn http_inputs_replay_without_a_panic() {
    replay("http");
}

#[test]
fn every_target_is_replayed() {
    assert_eq!(
        quorumd::fuzzing::TARGETS,
        &["frames", "cluster_file", "raft_step", "http"],
        "a new fuzz target needs its replay test here"
    );
}
