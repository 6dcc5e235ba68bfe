//! The replica's in-memory view of its durable log: what raft-rs reads
//! through [`raft::Storage`].
//!
//! It holds the hard state, the conf state as of the applied index, the
//! compaction point (the newest snapshot's index and term) and the entries
//! after it. The replica changes it only after the same change is durable in
//! the redb store, so the two always agree.
//!
//! Its size is bounded: the replica compacts the log once `snapshot_entries`
//! entries or `snapshot_bytes` bytes pile up, keeping a short tail for
//! followers that lag a little. A follower behind the tail gets a snapshot.
//! Building one reads the whole store, so `LogView::snapshot` (raft's `Storage::snapshot`) answers
//! `SnapshotTemporarilyUnavailable` and raises a flag; the replica builds it
//! off the executor and hands it back with [`LogView::set_outgoing`], and
//! raft asks again at its next heartbeat.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::raft::storage::RecoveredState;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LogView {
    hard_state: HardState,
    conf_state: ConfState,
    snap_index: u64,
    snap_term: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    /// A snapshot built for followers, kept until it is sent.
    outgoing: Option<Snapshot>,
    /// raft asked for a snapshot that was not ready.
    wanted: AtomicBool,
}

fn entry_size(e: &Entry) -> u64 {
    u64::from(e.compute_size())
}

impl LogView {
    /// The view of what a store recovered.
    pub fn new(state: &RecoveredState) -> LogView {
        let entries: VecDeque<Entry> = state.entries.iter().cloned().collect();
        LogView {
            hard_state: state.hard_state.clone(),
            conf_state: state.conf_state.clone(),
            snap_index: state.snapshot_meta.index,
            snap_term: state.snapshot_meta.term,
            bytes: entries.iter().map(entry_size).sum(),
            entries,
            outgoing: None,
            wanted: AtomicBool::new(false),
        }
    }

    /// The index of the last compaction (or received snapshot).
    pub fn snapshot_index(&self) -> u64 {
        self.snap_index
    }

    /// The last index in the log.
    pub fn last(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    /// Entries held, and their encoded size.
    pub fn held(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.bytes)
    }

    /// The term of an index still held (the compaction point included).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        if index < self.snap_index || index > self.last() {
            return None;
        }
        Some(self.entries[(index - self.snap_index - 1) as usize].term)
    }

    /// The encoded size of the entries after `index`.
    pub fn bytes_after(&self, index: u64) -> u64 {
        if index < self.snap_index {
            return self.bytes;
        }
        let skip = (index - self.snap_index) as usize;
        self.entries.iter().skip(skip).map(entry_size).sum()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Appends entries made durable; a conflicting append replaces the tail.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.snap_index && first.index <= self.last() + 1,
            "append of entry {} to a log of [{}, {}]",
            first.index,
            self.snap_index,
            self.last()
        );
        let keep = (first.index - self.snap_index - 1) as usize;
        for dropped in self.entries.drain(keep..) {
            self.bytes -= entry_size(&dropped);
        }
        for e in entries {
            self.bytes += entry_size(e);
            self.entries.push_back(e.clone());
        }
    }

    /// Records a durable hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records a durable commit index.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Records the conf state after an applied membership change.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// A snapshot was installed: the log starts over after it.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.bytes = 0;
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.outgoing = None;
    }

    /// Drops the entries up to `index`, which is now the compaction point.
    pub fn compact(&mut self, index: u64) {
        if index <= self.snap_index {
            return;
        }
        let term = self.term_of(index).expect("compaction within the log");
        let n = (index - self.snap_index) as usize;
        for dropped in self.entries.drain(..n) {
            self.bytes -= entry_size(&dropped);
        }
        // A run of writes grows the queue past `snapshot_entries` slots
        // (16,384 for 10,000: 1.6 MiB), which it would keep at rest holding
        // a short tail.
        if self.entries.capacity() > 4 * self.entries.len().max(256) {
            self.entries.shrink_to(2 * self.entries.len().max(256));
        }
        self.snap_index = index;
        self.snap_term = term;
        if self
            .outgoing
            .as_ref()
            .is_some_and(|s| s.get_metadata().index < index)
        {
            self.outgoing = None;
        }
    }

    /// True once if raft asked for a snapshot that was not ready.
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// Offers a built snapshot to raft.
    pub fn set_outgoing(&mut self, snapshot: Snapshot) {
        if snapshot.get_metadata().index >= self.snap_index {
            self.outgoing = Some(snapshot);
        }
    }

    /// Forgets the built snapshot (it was sent, or failed).
    pub fn clear_outgoing(&mut self) {
        self.outgoing = None;
    }
}

impl raft::Storage for LogView {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.snap_index - 1) as usize;
        let to = (high - self.snap_index - 1) as usize;
        let mut out: Vec<Entry> = self.entries.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.outgoing {
            Some(s) if s.get_metadata().index >= request_index.max(self.snap_index) => {
                Ok(s.clone())
            }
            _ => {
                self.wanted.store(true, Ordering::Relaxed);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn view() -> LogView {
        let mut state = RecoveredState::bootstrap(&[1, 2, 3]);
        state.entries = (2..=10).map(|i| entry(i, 2)).collect();
        LogView::new(&state)
    }

    #[test]
    fn boundaries_match_raft_expectations() {
        let v = view();
        assert_eq!(v.first_index().unwrap(), 2);
        assert_eq!(v.last_index().unwrap(), 10);
        assert_eq!(v.term(1).unwrap(), 1);
        assert_eq!(v.term(10).unwrap(), 2);
        assert_eq!(v.term(0), Err(raft::Error::Store(StorageError::Compacted)));
        assert_eq!(
            v.term(11),
            Err(raft::Error::Store(StorageError::Unavailable))
        );
        let got = v
            .entries(3, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(v
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
    }

    #[test]
    fn conflicting_append_and_compaction_keep_the_view_consistent() {
        let mut v = view();
        v.append(&[entry(8, 3)]);
        assert_eq!(v.last(), 8);
        assert_eq!(v.term(8).unwrap(), 3);
        let before = v.held().1;
        v.compact(5);
        assert_eq!(v.first_index().unwrap(), 6);
        assert_eq!(v.term(5).unwrap(), 2);
        assert!(v.held().1 < before);
        assert_eq!(v.held().0, 3);
        assert_eq!(v.bytes_after(5), v.held().1);
    }

    #[test]
    fn compaction_to_a_short_tail_gives_the_queue_back() {
        let mut v = view();
        let entries: Vec<Entry> = (11..=10_010).map(|i| entry(i, 2)).collect();
        v.append(&entries);
        let grown = v.entries.capacity();
        assert!(grown >= 10_000);
        v.compact(9_010);
        assert_eq!(v.held().0, 1_000);
        assert!(
            v.entries.capacity() <= 2_000,
            "{} slots",
            v.entries.capacity()
        );
        assert_eq!(v.term(10_010).unwrap(), 2);
        // A compaction that keeps most of the queue leaves it as it is.
        v.append(&[entry(10_011, 2)]);
        let kept = v.entries.capacity();
        v.compact(9_011);
        assert_eq!(v.entries.capacity(), kept);
    }

    #[test]
    fn snapshot_is_unavailable_until_built_then_offered() {
        let mut v = view();
        assert_eq!(
            v.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        assert!(v.take_wanted());
        assert!(!v.take_wanted());
        let mut s = Snapshot::default();
        s.mut_metadata().index = 9;
        s.mut_metadata().term = 2;
        v.set_outgoing(s.clone());
        assert_eq!(v.snapshot(0, 2).unwrap(), s);
        // A compaction past the built snapshot makes it useless.
        v.compact(10);
        assert!(v.snapshot(0, 2).is_err());
    }
}
