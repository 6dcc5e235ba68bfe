use super::faults::Crash;
use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("value of entry {index} at term {term}")
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn append(log: &mut RaftLog, from: u64, to: u64, term: u64) {
    log.write(&LogWrite {
        entries: (from..=to).map(|i| entry(i, term)).collect(),
        hard_state: Some(hs(
            term,
            1,
            from.saturating_sub(1).max(log.hard_state().commit),
        )),
        sync: true,
        ..Default::default()
    })
    .unwrap();
}

fn indexes(r: &Recovered) -> Vec<(u64, u64)> {
    r.entries.iter().map(|e| (e.index, e.term)).collect()
}

fn new_log(dir: &Path) -> RaftLog {
    RaftLog::create_small(&dir.join(DIR), 8192)
}

fn reopen(dir: &Path) -> Result<(RaftLog, Recovered)> {
    RaftLog::open(&dir.join(DIR))
}

#[test]
fn entries_hard_state_conflicts_and_snapshots_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = new_log(tmp.path());
        append(&mut log, 2, 10, 2);
        // A conflict replaces the tail from 8.
        append(&mut log, 8, 9, 3);
        assert_eq!(log.last(), (9, 3));
    }
    let (mut log, r) = reopen(tmp.path()).unwrap();
    assert_eq!(r.start, (1, 1));
    let mut want: Vec<(u64, u64)> = (2..=7).map(|i| (i, 2)).collect();
    want.extend([(8, 3), (9, 3)]);
    assert_eq!(indexes(&r), want);
    assert_eq!(r.hard_state.term, 3);
    assert_eq!(r.entries[0], entry(2, 2), "entries come back whole");
    // A snapshot restarts the log.
    log.write(&LogWrite {
        snapshot: Some((20, 4)),
        hard_state: Some(hs(4, 0, 20)),
        sync: true,
        ..Default::default()
    })
    .unwrap();
    append(&mut log, 21, 22, 4);
    drop(log);
    let (_, r) = reopen(tmp.path()).unwrap();
    assert_eq!(r.start, (20, 4));
    assert_eq!(indexes(&r), vec![(21, 4), (22, 4)]);
    assert_eq!((r.hard_state.term, r.hard_state.commit), (4, 20));
}

#[test]
fn promises_and_gaps_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = new_log(tmp.path());
    append(&mut log, 2, 3, 4);
    let write = |log: &mut RaftLog, h: HardState| {
        log.write(&LogWrite {
            hard_state: Some(h),
            sync: true,
            ..Default::default()
        })
    };
    write(&mut log, hs(4, 2, 3)).unwrap_err();
    let e = write(&mut log, hs(3, 1, 3)).unwrap_err();
    assert!(
        e.to_string().contains("lower the stored term from 4 to 3"),
        "{e}"
    );
    let e = write(&mut log, hs(4, 2, 3)).unwrap_err();
    assert!(
        e.to_string()
            .contains("change the stored vote within term 4 from node 1 to node 2"),
        "{e}"
    );
    let e = write(&mut log, hs(4, 1, 0)).unwrap_err();
    assert!(e.to_string().contains("lower the stored commit"), "{e}");
    let e = log
        .write(&LogWrite {
            entries: vec![entry(5, 4)],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("leaves a gap"), "{e}");
    drop(log);
    let (_, r) = reopen(tmp.path()).unwrap();
    assert_eq!(indexes(&r), vec![(2, 4), (3, 4)]);
    assert_eq!((r.hard_state.term, r.hard_state.vote), (4, 1));
}

#[test]
fn segments_rotate_and_old_ones_go_once_released() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = new_log(tmp.path());
    for i in 2..=400 {
        append(&mut log, i, i, 2);
    }
    let (segments, _) = log.footprint();
    assert!(segments > 3, "{segments} segments");
    // Nothing is released below what is applied.
    assert_eq!(log.release(1).unwrap(), 0);
    let deleted = log.release(300).unwrap();
    assert!(deleted > 0);
    let (left, _) = log.footprint();
    drop(log);
    let (_, r) = reopen(tmp.path()).unwrap();
    // The oldest segment kept starts at or below 301: nothing needed is lost.
    assert!(r.start.0 <= 300, "{:?}", r.start);
    assert!(r.start.0 > 1, "old segments were deleted");
    assert_eq!(r.entries.last().map(|e| e.index), Some(400));
    assert_eq!(r.entries.len() as u64, 400 - r.start.0);
    assert_eq!(
        list_segments(&tmp.path().join(DIR)).unwrap().len(),
        left,
        "deleted files stay deleted"
    );
}

#[test]
fn a_conflict_reaching_into_an_older_segment_keeps_that_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = new_log(tmp.path());
    let mut i = 2;
    while log.footprint().0 < 3 {
        append(&mut log, i, i, 2);
        i += 1;
    }
    let base = log.active.segment.base.0;
    // Replace entries from below the active segment's base.
    append(&mut log, base - 2, base + 1, 3);
    log.release(u64::MAX).unwrap();
    drop(log);
    let (_, r) = reopen(tmp.path()).unwrap();
    assert!(r.start.0 < base - 2, "{:?} vs {base}", r.start);
    assert_eq!(
        r.entries.last().map(|e| (e.index, e.term)),
        Some((base + 1, 3))
    );
}

/// The heart of the log's promise: whatever a crash does to writes that
/// were not synced, every synced entry comes back.
#[test]
fn crashes_never_lose_a_synced_entry() {
    for (round, how) in [Crash::LoseUnsynced, Crash::TearLast, Crash::KeepAll]
        .into_iter()
        .cycle()
        .take(30)
        .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = new_log(tmp.path());
        let faults = log.record_faults();
        let mut synced = 1;
        let mut next = 2;
        fastrand::seed(round as u64);
        for _ in 0..fastrand::usize(5..80) {
            let n = fastrand::u64(1..6);
            let sync = fastrand::bool();
            log.write(&LogWrite {
                entries: (next..next + n).map(|i| entry(i, 2)).collect(),
                sync,
                ..Default::default()
            })
            .unwrap();
            next += n;
            if sync {
                synced = next - 1;
            }
        }
        log.abandon();
        faults.crash(how);
        let (_, r) = reopen(tmp.path())
            .unwrap_or_else(|e| panic!("round {round} ({how:?}): recovery refused: {e}"));
        let last = r.entries.last().map_or(1, |e| e.index);
        assert!(
            last >= synced,
            "round {round} ({how:?}): synced up to {synced}, recovered up to {last}"
        );
        for (k, e) in r.entries.iter().enumerate() {
            assert_eq!(e, &entry(k as u64 + 2, 2), "round {round}");
        }
        if matches!(how, Crash::KeepAll) {
            assert_eq!(last, next - 1, "a process crash keeps every write");
        }
        // The repaired log takes new writes and replays them.
        let (mut log, _) = reopen(tmp.path()).unwrap();
        append(&mut log, last + 1, last + 3, 2);
        drop(log);
        let (_, r) = reopen(tmp.path()).unwrap();
        assert_eq!(r.entries.last().map(|e| e.index), Some(last + 3));
    }
}

/// A flipped bit in durable data is never read as data and never silently
/// cut off: recovery either restores every synced entry or refuses with a
/// sentence naming the file and the offset.
#[test]
fn a_flipped_bit_is_refused_or_harmless_never_a_silent_loss() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = new_log(tmp.path());
        for i in 2..=30 {
            append(&mut log, i, i, 2);
        }
    }
    let path = segment_path(&tmp.path().join(DIR), 1);
    let clean = fs::read(&path).unwrap();
    let used = clean.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mut refused = 0;
    for at in (0..used + 64).step_by(7) {
        fs::write(&path, &clean).unwrap();
        let mut damaged = clean.clone();
        damaged[at] ^= 1 << (at % 8);
        fs::write(&path, &damaged).unwrap();
        match reopen(tmp.path()) {
            Ok((_, r)) => {
                assert_eq!(
                    r.entries.last().map(|e| e.index),
                    Some(30),
                    "byte {at}: recovered without every synced entry"
                );
            }
            Err(Error::StorageCorrupt { file, reason }) => {
                refused += 1;
                assert_eq!(file, path);
                assert!(reason.contains("offset"), "{reason}");
            }
            Err(e) => panic!("byte {at}: {e:?}"),
        }
    }
    assert!(refused > 0);
}

#[test]
fn a_stale_segment_left_by_an_interrupted_cleanup_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(DIR);
    {
        let mut log = new_log(tmp.path());
        for i in 2..=400 {
            append(&mut log, i, i, 2);
        }
    }
    let seqs = list_segments(&dir).unwrap();
    assert!(seqs.len() >= 4);
    // Segment 2 was deleted, segment 1 survived the crash.
    fs::remove_file(segment_path(&dir, 2)).unwrap();
    let (_, r) = reopen(tmp.path()).unwrap();
    assert_eq!(r.entries.last().map(|e| e.index), Some(400));
    assert!(!segment_path(&dir, 1).exists());
    fs::write(dir.join("0000000000000099.tmp"), b"half made").unwrap();
    reopen(tmp.path()).unwrap();
    assert!(!dir.join("0000000000000099.tmp").exists());
}

#[test]
fn a_missing_or_foreign_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = reopen(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("no segment"), "{e}");
    let dir = tmp.path().join(DIR);
    fs::create_dir_all(&dir).unwrap();
    fs::write(segment_path(&dir, 1), vec![0x5a; 8192]).unwrap();
    let e = reopen(tmp.path()).unwrap_err();
    assert!(matches!(e, Error::StorageCorrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("offset 0"), "{e}");
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = new_log(tmp.path());
    let big = Entry {
        index: 2,
        term: 2,
        data: vec![7; 100_000].into(),
        ..Default::default()
    };
    log.write(&LogWrite {
        entries: vec![big.clone()],
        sync: true,
        ..Default::default()
    })
    .unwrap();
    append(&mut log, 3, 3, 2);
    drop(log);
    let (_, r) = reopen(tmp.path()).unwrap();
    assert_eq!(r.entries[0], big);
    assert_eq!(r.entries.len(), 2);
}
