use super::*;
use crate::raft::log_view::LogView;
use crate::store::disk::{write_format_2, LegacyLog, DB_FILE, DB_INIT_FILE};
use crate::store::{Command, KvOp};
use raft::{Storage, StorageError};

/// A snapshot at `index`/`term` of an empty store, voters 1, 2, 3.
fn snapshot(index: u64, term: u64) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.set_data(crate::store::snapshot::empty().into());
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snapshot
}

fn identity() -> StoreIdentity {
    StoreIdentity {
        cluster: "cluster3".to_string(),
        node_id: 1,
        voters: vec![1, 2, 3],
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("{index}@{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn open(dir: &Path) -> NodeStorage {
    NodeStorage::open(dir, &identity()).unwrap()
}

fn reopen_err(dir: &Path, id: &StoreIdentity) -> Error {
    NodeStorage::open(dir, id).expect_err("open should be refused")
}

fn index_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index, e.term)).collect()
}

fn command_entry(index: u64, ops: Vec<KvOp>) -> Entry {
    let cmd = Command {
        max_store_bytes: 1 << 20,
        from_client: true,
        ops,
        reads: crate::store::command::ReadLimits::UNLIMITED,
    };
    Entry {
        index,
        term: 2,
        data: cmd.encode().into(),
        context: b"ctx".to_vec().into(),
        ..Default::default()
    }
}

fn set(key: &str, value: &str) -> KvOp {
    KvOp::Set {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
    }
}

#[test]
fn first_boot_writes_the_bootstrap_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node-1");
    let s = open(&dir);
    let boot = RecoveredState::bootstrap(&[1, 2, 3]);
    assert_eq!(s.recovered.hard_state, boot.hard_state);
    assert_eq!(s.recovered.snapshot_meta, boot.snapshot_meta);
    assert!(s.recovered.entries.is_empty());
    assert_eq!(s.recovered.applied, 1);
    assert_eq!(s.recovered.applied_hash, Some(BOOTSTRAP_HASH));
    assert!(dir.join(DB_FILE).exists());
    assert!(dir.join("wal").is_dir());
    assert!(!dir.join(DB_INIT_FILE).exists());
    let pid: u32 = fs::read_to_string(dir.join(LOCK_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, std::process::id());
}

#[test]
fn state_survives_reopen_and_applies_are_redone_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = hard_state(7, 3, 5);
    let entries: Vec<Entry> = (2..=5)
        .map(|i| command_entry(i, vec![set(&format!("k{i}"), "v")]))
        .map(|mut e| {
            e.term = 7;
            e
        })
        .collect();
    {
        let mut s = open(tmp.path());
        s.persist(&PersistBatch {
            entries: entries.clone(),
            hard_state: Some(hs.clone()),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        // Applied without a checkpoint: not durable by itself.
        s.persist(&PersistBatch {
            apply: entries[..3].to_vec(),
            ..Default::default()
        })
        .unwrap();
    }
    let s = open(tmp.path());
    assert_eq!(s.recovered.hard_state, hs);
    assert_eq!(s.recovered.entries, entries);
    // Closing redb cleanly made the applies durable (a crash leaves the
    // state machine at its last checkpoint: see the child-process test);
    // either way the log holds every entry to replay.
    assert_eq!(s.recovered.applied, 4);
    let view = LogView::new(&s.recovered);
    assert_eq!(view.last_index().unwrap(), 5);
}

#[test]
fn snapshot_replaces_the_log_and_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        s.persist(&PersistBatch {
            entries: (2..=8).map(|i| entry(i, 2)).collect(),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        s.persist(&PersistBatch {
            snapshot: Some(snapshot(5, 2)),
            entries: vec![entry(6, 3)],
            hard_state: Some(hard_state(3, 0, 6)),
            durable: true,
            ..Default::default()
        })
        .unwrap();
    }
    let s = open(tmp.path());
    let r = &s.recovered;
    assert_eq!(r.snapshot_meta.index, 5);
    assert_eq!(r.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(index_terms(&r.entries), vec![(6, 3)]);
    assert_eq!(r.applied, 5);
    assert_eq!(
        r.applied_hash,
        Some(BOOTSTRAP_HASH),
        "the hash travels in the snapshot"
    );
}

#[test]
fn the_log_view_matches_raft_at_the_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    // Fresh node: only the bootstrap snapshot.
    let view = LogView::new(&s.recovered);
    assert_eq!(view.first_index().unwrap(), 2);
    assert_eq!(view.last_index().unwrap(), 1);
    assert_eq!(view.term(1).unwrap(), 1);
    assert_eq!(
        view.term(0),
        Err(raft::Error::Store(StorageError::Compacted))
    );
    assert_eq!(
        view.term(2),
        Err(raft::Error::Store(StorageError::Unavailable))
    );
    let mut s = s;
    let hs = hard_state(3, 0, 7);
    s.persist(&PersistBatch {
        snapshot: Some(snapshot(5, 2)),
        entries: (6..=8).map(|i| entry(i, 3)).collect(),
        hard_state: Some(hs.clone()),
        durable: true,
        ..Default::default()
    })
    .unwrap();
    drop(s);
    let s = open(tmp.path());
    let view = LogView::new(&s.recovered);
    assert_eq!(view.first_index().unwrap(), 6);
    assert_eq!(view.last_index().unwrap(), 8);
    assert_eq!(view.term(5).unwrap(), 2);
    assert_eq!(view.term(8).unwrap(), 3);
    assert_eq!(
        view.term(4),
        Err(raft::Error::Store(StorageError::Compacted))
    );
    let got = view.entries(6, 9, None, raft::GetEntriesContext::empty(false));
    assert_eq!(index_terms(&got.unwrap()), vec![(6, 3), (7, 3), (8, 3)]);
    let initial = view.initial_state().unwrap();
    assert_eq!(initial.hard_state, hs);
    assert_eq!(initial.conf_state.voters, vec![1, 2, 3]);
}

#[test]
fn committed_commands_are_applied_with_the_applied_index_and_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = vec![
        command_entry(2, vec![set("a", "1")]),
        Entry {
            index: 3,
            term: 2,
            ..Default::default()
        },
        command_entry(4, vec![set("b", "2"), KvOp::Delete { key: "a".into() }]),
    ];
    let mut s = open(tmp.path());
    let written = s
        .persist(&PersistBatch {
            entries: entries.clone(),
            hard_state: Some(hard_state(2, 1, 4)),
            apply: entries.clone(),
            durable: true,
            ..Default::default()
        })
        .unwrap();
    let want = entries.iter().fold(BOOTSTRAP_HASH, chain_hash);
    assert_eq!(
        (written.applied_index, written.applied_hash),
        (4, Some(want))
    );
    // The no-op at 3 has no result; the commands do.
    let results = written.applied;
    assert_eq!(
        results.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![2, 4]
    );
    assert_eq!(results[1].context, b"ctx");
    assert!(matches!(results[1].outcome, Outcome::Committed(_)));
    let (a, b) = s.state.read(|t| Ok((t.get("a")?, t.get("b")?))).unwrap();
    assert!(a.value.is_none());
    assert_eq!(b.value.unwrap().modify_index, 4);
    // Applying the same entry again is refused, never done twice.
    let e = s
        .state
        .apply(&ApplyBatch {
            apply: vec![command_entry(4, vec![set("b", "3")])],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("refusing to apply entry 4"), "{e}");
}

#[test]
fn term_and_vote_never_go_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let mut write = |hs: HardState| {
        s.persist(&PersistBatch {
            hard_state: Some(hs),
            durable: true,
            ..Default::default()
        })
    };
    write(hard_state(4, 2, 1)).unwrap();
    let e = write(hard_state(3, 2, 1)).unwrap_err();
    assert!(matches!(e, Error::Storage { .. }), "{e:?}");
    assert!(
        e.to_string().contains("lower the stored term from 4 to 3"),
        "{e}"
    );
    let e = write(hard_state(4, 3, 1)).unwrap_err();
    assert!(
        e.to_string()
            .contains("change the stored vote within term 4 from node 2 to node 3"),
        "{e}"
    );
    write(hard_state(5, 1, 1)).unwrap();
    drop(s);
    let s = open(tmp.path());
    let hs = &s.recovered.hard_state;
    assert_eq!((hs.term, hs.vote), (5, 1));
}

#[test]
fn a_state_machine_ahead_of_the_log_restarts_the_log_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        s.persist(&PersistBatch {
            entries: (2..=4).map(|i| entry(i, 2)).collect(),
            hard_state: Some(hard_state(2, 1, 3)),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        // A snapshot installed in the state machine, then a crash before
        // the log heard of it.
        s.state
            .apply(&ApplyBatch {
                snapshot: Some(snapshot(9, 3)),
                ..Default::default()
            })
            .unwrap();
    }
    let s = open(tmp.path());
    let r = &s.recovered;
    assert_eq!((r.snapshot_meta.index, r.snapshot_meta.term), (9, 3));
    assert!(r.entries.is_empty());
    assert_eq!(r.applied, 9);
    assert_eq!((r.hard_state.term, r.hard_state.commit), (3, 9));
    drop(s);
    // It stays consistent on the next open.
    let s = open(tmp.path());
    assert_eq!(s.recovered.snapshot_meta.index, 9);
}

#[test]
fn a_log_that_lost_applied_entries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        s.persist(&PersistBatch {
            entries: (2..=4).map(|i| entry(i, 2)).collect(),
            durable: true,
            ..Default::default()
        })
        .unwrap();
    }
    // Replace the log by one that starts after entry 6, beyond what the
    // state machine applied (1).
    let wal = tmp.path().join("wal");
    fs::remove_dir_all(&wal).unwrap();
    drop(RaftLog::create(&wal, (6, 2), &hard_state(2, 0, 6)).unwrap());
    let e = reopen_err(tmp.path(), &identity());
    assert!(matches!(e, Error::StorageCorrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("entries 2 to 6 are missing"), "{e}");
    // A missing log is refused too, never started over.
    fs::remove_dir_all(&wal).unwrap();
    let e = reopen_err(tmp.path(), &identity());
    assert!(e.to_string().contains("the Raft log is missing"), "{e}");
}

#[test]
fn a_format_2_store_is_upgraded_and_its_log_moved_out() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = LegacyLog {
        hard_state: hard_state(3, 2, 6),
        start: (1, 1),
        entries: (2..=7)
            .map(|i| entry(i, if i < 5 { 2 } else { 3 }))
            .collect(),
    };
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    write_format_2(tmp.path(), &identity(), &legacy, 4, &cs);
    let s = open(tmp.path());
    let r = &s.recovered;
    assert_eq!(r.hard_state, legacy.hard_state);
    assert_eq!(r.entries, legacy.entries);
    assert_eq!(r.applied, 4);
    assert_eq!(r.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(s.state.applied_state().unwrap().term, 2);
    drop(s);
    // And it opens again as the new format.
    let s = open(tmp.path());
    assert_eq!(s.recovered.entries, legacy.entries);
}

#[test]
fn identity_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let mut other = identity();
    other.cluster = "cluster5".to_string();
    let e = reopen_err(tmp.path(), &other);
    assert!(matches!(e, Error::DataDirMismatch { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    assert!(text.contains("belongs to cluster \"cluster3\""), "{text}");
    assert!(text.contains("two leaders"), "{text}");
    assert!(text.contains("new id"), "{text}");
    let mut other = identity();
    other.node_id = 2;
    let e = reopen_err(tmp.path(), &other);
    assert!(
        e.to_string().contains("belongs to node 1, not to node 2"),
        "{e}"
    );
    // Another voter set in the file is no reason to refuse: from the first
    // boot on, the membership lives in Raft.
    let mut grown = identity();
    grown.voters = vec![1, 2, 3, 4];
    NodeStorage::open(tmp.path(), &grown).unwrap();
}

#[test]
fn second_open_is_refused_while_the_first_is_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let first = open(tmp.path());
    let e = reopen_err(tmp.path(), &identity());
    assert!(matches!(e, Error::DataDirLocked { .. }), "{e}");
    assert_eq!(e.exit_code(), 1);
    assert!(e
        .to_string()
        .contains(&format!("(pid {})", std::process::id())));
    drop(first);
    open(tmp.path());
}

fn assert_corrupt(dir: &Path) {
    let e = reopen_err(dir, &identity());
    match &e {
        Error::StorageCorrupt { file, .. } => assert_eq!(file, &dir.join(DB_FILE)),
        other => panic!("expected StorageCorrupt, got {other:?}"),
    }
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("raft.redb"), "{e}");
    // Refusing must not have replaced the damaged file with a fresh one.
    assert!(matches!(
        NodeStorage::open(dir, &identity()),
        Err(Error::StorageCorrupt { .. })
    ));
}

#[test]
fn garbage_empty_or_truncated_state_files_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(DB_FILE), vec![0x5a; 64 * 1024]).unwrap();
    assert_corrupt(tmp.path());
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(DB_FILE), b"").unwrap();
    assert_corrupt(tmp.path());

    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        let entries: Vec<Entry> = (2..=50)
            .map(|i| command_entry(i, vec![set(&format!("k{i}"), "v")]))
            .collect();
        s.persist(&PersistBatch {
            entries: entries.clone(),
            hard_state: Some(hard_state(2, 1, 50)),
            apply: entries,
            durable: true,
            ..Default::default()
        })
        .unwrap();
    }
    let path = tmp.path().join(DB_FILE);
    let bytes = fs::read(&path).unwrap();
    for cut in [bytes.len() / 2, 4096, 100, 5] {
        let copy = tempfile::tempdir().unwrap();
        fs::write(copy.path().join(DB_FILE), &bytes[..cut]).unwrap();
        assert_corrupt(copy.path());
    }
}

#[test]
fn flipped_bytes_in_the_state_file_are_corrupt_or_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        let entries: Vec<Entry> = (2..=30)
            .map(|i| command_entry(i, vec![set(&format!("k{i}"), "v")]))
            .collect();
        s.persist(&PersistBatch {
            entries: entries.clone(),
            hard_state: Some(hard_state(2, 1, 30)),
            apply: entries,
            durable: true,
            ..Default::default()
        })
        .unwrap();
    }
    let path = tmp.path().join(DB_FILE);
    let bytes = fs::read(&path).unwrap();
    let step = (bytes.len() / 61).max(1);
    for at in (0..bytes.len()).step_by(step) {
        let copy = tempfile::tempdir().unwrap();
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xff;
        fs::write(copy.path().join(DB_FILE), &damaged).unwrap();
        copy_dir(&tmp.path().join("wal"), &copy.path().join("wal"));
        match NodeStorage::open(copy.path(), &identity()) {
            Err(Error::StorageCorrupt { .. }) => {}
            // The byte was unused: the state must then be intact.
            Ok(s) => {
                assert_eq!(s.recovered.applied, 30, "byte {at}");
                let n = s
                    .state
                    .read(|t| t.keys("", None, u64::MAX))
                    .unwrap()
                    .unwrap()
                    .value
                    .len();
                assert_eq!(n, 29, "byte {at}");
            }
            Err(e) => panic!("byte {at}: unexpected {e:?}"),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_redb_file_without_identity_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    drop(redb::Database::create(tmp.path().join(DB_FILE)).unwrap());
    assert_corrupt(tmp.path());
}

#[test]
fn leftovers_of_an_interrupted_first_boot_are_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(DB_INIT_FILE), b"half written").unwrap();
    fs::create_dir_all(tmp.path().join("wal")).unwrap();
    fs::write(tmp.path().join("wal/0000000000000001.wal"), b"junk").unwrap();
    let s = open(tmp.path());
    assert_eq!(s.recovered.applied, 1);
    assert!(!tmp.path().join(DB_INIT_FILE).exists());
}

#[test]
fn unwritable_dir_is_a_storage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    fs::write(&blocker, b"").unwrap();
    let e = reopen_err(&blocker.join("node-1"), &identity());
    assert!(matches!(e, Error::Storage { .. }), "{e:?}");
    assert!(e.to_string().contains("not-a-dir"), "{e}");
}

const CHILD_DIR: &str = "QUORUMD_TEST_STORE_CHILD_DIR";
const CHILD_MODE: &str = "QUORUMD_TEST_STORE_CHILD_MODE";

/// Runs [`child_process_helper`] in a new process of this test binary.
fn spawn_child(dir: &Path, mode: &str) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "raft::storage::node_tests::child_process_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the child prints `line` on stdout (libtest may put its
/// own text before it on the same line).
fn wait_for_line(child: &mut std::process::Child, line: &str) {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().unwrap();
    for got in std::io::BufReader::new(stdout).lines() {
        if got.unwrap().trim_end().ends_with(line) {
            return;
        }
    }
    panic!("child exited before printing {line:?}");
}

/// Not a test on its own: the body of the child process of the
/// cross-process tests below. Does nothing unless they started it.
#[test]
fn child_process_helper() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let mut s = NodeStorage::open(Path::new(&dir), &identity()).unwrap();
    match mode.as_str() {
        "hold" => {
            println!("locked");
            // Hold the lock until the parent closes our stdin.
            let _ = std::io::stdin().read_to_string(&mut String::new());
        }
        "crash" => {
            for i in 2..=100 {
                let e = command_entry(i, vec![set(&format!("k{i}"), "v")]);
                let mut e = e;
                e.term = 5;
                s.persist(&PersistBatch {
                    entries: vec![e.clone()],
                    hard_state: Some(hard_state(5, 2, i)),
                    durable: true,
                    ..Default::default()
                })
                .unwrap();
                // Applied, never checkpointed.
                s.persist(&PersistBatch {
                    apply: vec![e],
                    ..Default::default()
                })
                .unwrap();
            }
            println!("persisted");
            // Like kill -9: no destructor runs, nothing is closed.
            std::process::abort();
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn another_process_holding_the_dir_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_child(tmp.path(), "hold");
    wait_for_line(&mut child, "locked");
    let e = reopen_err(tmp.path(), &identity());
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(matches!(e, Error::DataDirLocked { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("(pid {})", child.id())));
    open(tmp.path());
}

#[test]
fn a_crash_loses_nothing_that_was_persisted_and_replays_the_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_child(tmp.path(), "crash");
    wait_for_line(&mut child, "persisted");
    assert!(!child.wait().unwrap().success());
    let s = open(tmp.path());
    let r = &s.recovered;
    assert_eq!((r.hard_state.term, r.hard_state.vote), (5, 2));
    assert_eq!(r.hard_state.commit, 100);
    assert_eq!(
        index_terms(&r.entries),
        (2..=100).map(|i| (i, 5)).collect::<Vec<_>>()
    );
    // The applies were never checkpointed: the state machine is back at
    // the bootstrap, and raft applies the log again from there.
    assert_eq!(r.applied, 1);
    assert_eq!(
        s.state
            .read(|t| t.keys("", None, u64::MAX))
            .unwrap()
            .unwrap()
            .value
            .len(),
        0
    );
}

/// Not a check: prints what one small apply costs (`cargo test --release
/// --lib apply_speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn apply_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let n = 5000u64;
    let started = std::time::Instant::now();
    for i in 2..n + 2 {
        let e = command_entry(
            i,
            vec![set(&format!("bench/k{}", i % 1000), &"v".repeat(64))],
        );
        s.state
            .apply(&ApplyBatch {
                apply: vec![e],
                ..Default::default()
            })
            .unwrap();
    }
    println!("apply: {:?} per entry", started.elapsed() / n as u32);
}
