//! The storage seam between a replica and its durable log.
//!
//! raft-rs reads its log through [`raft::Storage`]. A replica serves those reads
//! from an in-memory [`MemStorage`] view and makes every Ready durable through a
//! [`LogStore`] before it acknowledges anything (DESIGN.md rule 4 and 5):
//!
//! 1. On start, [`LogStore::recover`] returns everything that was made durable;
//!    the replica loads it into the `MemStorage` view with [`load_into`].
//! 2. For each Ready, the replica builds one [`PersistBatch`] and calls
//!    [`LogStore::persist`], off the executor, and waits for it. Only then does it
//!    update the view, send `persisted_messages` and call `advance`.
//!
//! [`MemLogStore`] keeps nothing: it is for unit tests and for nodes run without
//! durability. The redb-backed store lives in `redb_store.rs`.

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;

use crate::error::Result;

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
    /// A snapshot received from the leader; it replaces the whole log.
    pub snapshot: Option<Snapshot>,
    /// Entries to append. If the first index is at or below the stored last
    /// index, the stored tail from that index on is replaced (conflict).
    pub entries: Vec<Entry>,
    /// The new hard state (term, vote, commit), if it changed.
    pub hard_state: Option<HardState>,
    /// The highest index applied to the state machine, if it advanced.
    pub applied: Option<u64>,
}

impl PersistBatch {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.applied.is_none()
    }
}

/// Everything a store recovered on open.
#[derive(Debug, Clone, Default)]
pub struct RecoveredState {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Metadata of the newest snapshot (index, term, conf state).
    pub snapshot_meta: SnapshotMetadata,
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
        let hard_state = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        RecoveredState {
            hard_state,
            snapshot_meta: meta,
            entries: Vec::new(),
            applied: BOOTSTRAP_INDEX,
        }
    }

    /// The conf state stored with the snapshot.
    pub fn conf_state(&self) -> &ConfState {
        self.snapshot_meta.get_conf_state()
    }
}

/// Durable storage behind one replica.
///
/// `persist` blocks until the batch is durable (fsync). The replica calls it
/// through `blocking::unblock`, so it must be `Send + Sync`. An `Err` is fatal:
/// the replica stops and the node exits, because nothing may be acknowledged
/// that was not written.
pub trait LogStore: Send + Sync + 'static {
    /// Returns what was made durable before. Called once, at start.
    fn recover(&self) -> Result<RecoveredState>;
    /// Writes one Ready's batch durably, in one transaction.
    fn persist(&self, batch: &PersistBatch) -> Result<()>;
    /// True if `persist` is slow enough to be moved off the executor.
    fn is_blocking(&self) -> bool {
        true
    }
}

/// A store that keeps nothing: every start is a first boot.
#[derive(Debug, Clone)]
pub struct MemLogStore {
    voters: Vec<u64>,
}

impl MemLogStore {
    /// A memory-only store whose initial state has `voters` as the voter set.
    pub fn new(voters: Vec<u64>) -> Self {
        MemLogStore { voters }
    }
}

impl LogStore for MemLogStore {
    fn recover(&self) -> Result<RecoveredState> {
        Ok(RecoveredState::bootstrap(&self.voters))
    }

    fn persist(&self, _batch: &PersistBatch) -> Result<()> {
        Ok(())
    }

    fn is_blocking(&self) -> bool {
        false
    }
}

/// Builds the in-memory raft view from a recovered state.
pub fn load_into(view: &MemStorage, state: &RecoveredState) -> Result<()> {
    let mut core = view.wl();
    let mut snapshot = Snapshot::default();
    snapshot.set_metadata(state.snapshot_meta.clone());
    core.apply_snapshot(snapshot)?;
    core.append(&state.entries)?;
    core.set_hardstate(state.hard_state.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    #[test]
    fn bootstrap_state_has_every_voter_at_index_one() {
        let state = RecoveredState::bootstrap(&[1, 2, 3]);
        let view = MemStorage::new();
        load_into(&view, &state).unwrap();
        let initial = view.initial_state().unwrap();
        assert_eq!(initial.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(initial.hard_state.term, 1);
        assert_eq!(initial.hard_state.commit, 1);
        assert_eq!(view.first_index().unwrap(), 2);
        assert_eq!(view.last_index().unwrap(), 1);
        assert_eq!(view.term(1).unwrap(), 1);
    }
}
