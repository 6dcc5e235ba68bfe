//! What a replica hands its durable store, and what the store gives back.
//!
//! raft-rs reads its log through [`raft::Storage`], served by the in-memory
//! [`LogView`](crate::raft::log_view::LogView). Every Ready is made durable
//! first, as one [`PersistBatch`] written by the redb store in one
//! transaction; only then does the replica update the view, answer clients
//! and send the messages that depend on the write (DESIGN.md rules 4 and 5).
//!
//! On start, the store returns a [`RecoveredState`] and the view is built
//! from it.

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::store::{Outcome, Touched};

/// The index of the static bootstrap snapshot that every node starts from.
///
/// Using a snapshot at index 1, term 1 (instead of an empty log) means a node
/// added later can catch up by snapshot, and every node agrees on the voter set
/// before the first message is exchanged (DESIGN.md rule 2).
pub const BOOTSTRAP_INDEX: u64 = 1;
/// The term of the static bootstrap snapshot.
pub const BOOTSTRAP_TERM: u64 = 1;

/// What one Ready asks to be made durable. It is written in one transaction.
#[derive(Debug, Default, Clone)]
pub struct PersistBatch {
    /// A snapshot received from the leader; it replaces the log and the
    /// whole store.
    pub snapshot: Option<Snapshot>,
    /// Entries to append. If the first index is at or below the stored last
    /// index, the stored tail from that index on is replaced (conflict).
    pub entries: Vec<Entry>,
    /// The new hard state (term, vote, commit), if it changed.
    pub hard_state: Option<HardState>,
    /// Committed entries to apply, in order, right after the applied index.
    pub apply: Vec<Entry>,
    /// The conf state after the membership changes among `apply`.
    pub conf_state: Option<ConfState>,
    /// The membership changes among `apply` that raft accepted: their
    /// context's records are applied to the store with them.
    pub accepted_conf: Vec<u64>,
    /// Compact the log up to this `(index, term)`: drop the entries up to it
    /// and reap the store's tombstones up to it.
    pub compact: Option<(u64, u64)>,
    /// Wait for the disk (fsync). Needed for a snapshot, entries, and a new
    /// term or vote. Applying and a new commit index can wait: after a crash
    /// they are redone from the durable log.
    pub durable: bool,
}

impl PersistBatch {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.apply.is_empty()
            && self.conf_state.is_none()
            && self.compact.is_none()
    }
}

/// The result of applying one normal entry that carried a command.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The entry's index.
    pub index: u64,
    /// The entry's context: who proposed it, to match the waiting client.
    pub context: Vec<u8>,
    /// What the command came to.
    pub outcome: Outcome,
    /// What it changed, for blocking queries.
    pub touched: Vec<Touched>,
}

/// Everything a store recovered on open.
#[derive(Debug, Clone, Default)]
pub struct RecoveredState {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Metadata of the newest snapshot or compaction (index, term).
    pub snapshot_meta: SnapshotMetadata,
    /// The membership as of the applied index.
    pub conf_state: ConfState,
    /// Entries after the snapshot, in order and without gaps.
    pub entries: Vec<Entry>,
    /// The highest applied index.
    pub applied: u64,
}

impl RecoveredState {
    /// The static initial state of a fresh node: a snapshot at index 1, term 1
    /// with every configured node as a voter.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let mut meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
            ..Default::default()
        };
        meta.mut_conf_state().voters = voters.to_vec();
        let conf_state = meta.get_conf_state().clone();
        let hard_state = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        RecoveredState {
            hard_state,
            snapshot_meta: meta,
            conf_state,
            entries: Vec::new(),
            applied: BOOTSTRAP_INDEX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_state_has_every_voter_at_index_one() {
        let state = RecoveredState::bootstrap(&[1, 2, 3]);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(state.snapshot_meta.get_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(
            (state.snapshot_meta.index, state.snapshot_meta.term),
            (1, 1)
        );
        assert_eq!((state.hard_state.term, state.hard_state.commit), (1, 1));
        assert_eq!(state.applied, 1);
    }
}
