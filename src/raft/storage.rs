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
    /// The new hard state (term, vote, commit) of a Ready, if it changed.
    /// Only the batch that persists a Ready's own hard state carries one:
    /// term and vote are promises that may only move forward, and the store
    /// refuses a batch that would lower the term or change the vote within
    /// a term.
    pub hard_state: Option<HardState>,
    /// A new commit index alone, for a batch that applies entries: it never
    /// carries a term or vote (a copy of an older view would put an older
    /// promise back).
    pub commit: Option<u64>,
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
            && self.commit.is_none()
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

/// What one written batch came to.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The results of the commands applied, in order.
    pub applied: Vec<Applied>,
    /// The applied index after the batch.
    pub applied_index: u64,
    /// The running hash of every entry applied up to `applied_index`
    /// ([`chain_hash`]); `None` where it is not known (a store written by
    /// an older build, until it installs a snapshot).
    pub applied_hash: Option<u64>,
}

/// The running hash at the bootstrap index, before any entry is applied.
pub const BOOTSTRAP_HASH: u64 = 0xcbf2_9ce4_8422_2325;

/// Extends the running hash of applied entries by `entry` (FNV-1a, 64 bits,
/// over its index, term, type, context and data). Every node that applied
/// the same entries holds the same hash, whether it replayed the log or
/// installed a snapshot (which carries it), so comparing the hashes of two
/// nodes at one applied index checks that they applied the same log.
pub fn chain_hash(prev: u64, entry: &Entry) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = prev;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(&entry.index.to_le_bytes());
    feed(&entry.term.to_le_bytes());
    feed(&[entry.get_entry_type() as u8]);
    feed(&(entry.context.len() as u64).to_le_bytes());
    feed(&entry.context);
    feed(&(entry.data.len() as u64).to_le_bytes());
    feed(&entry.data);
    h
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
    /// The running hash of the applied entries, if known.
    pub applied_hash: Option<u64>,
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
            applied_hash: Some(BOOTSTRAP_HASH),
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
