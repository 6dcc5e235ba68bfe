//! A node's durable state, and what a replica hands it.
//!
//! Two files hold it, in the node's data dir:
//! - `wal/`: the Raft log and hard state ([`RaftLog`]), one durable write
//!   per Ready;
//! - `raft.redb`: the state machine and its applied state
//!   ([`StateStore`]), applied without an fsync and checkpointed from time to
//!   time.
//!
//! and `LOCK`, held with an exclusive file lock for as long as the node runs
//! and holding its pid, so that a second process on the same dir is refused
//! with a sentence naming it. The lock is taken before anything else.
//!
//! [`NodeStorage::open`] reads both and makes them agree before raft-rs sees
//! them ([`RecoveredState`]): the log keeps every entry after the state
//! machine's last checkpoint, so entries applied but not checkpointed are
//! applied again, in order, from the log. A state machine ahead of the log
//! (a snapshot installed just before a crash) restarts the log after it.
//! What raft-rs could not load (a commit outside the log, an applied index
//! past it) is refused, naming the file, instead of left to panic.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::error::{Error, Result};
use crate::raft::log::{LogWrite, RaftLog};
use crate::store::disk::{storage_err, AppliedState, ApplyBatch, StateStore, StoreIdentity};
use crate::store::{Outcome, Touched};

/// Name of the lock file inside the node's data dir.
pub const LOCK_FILE: &str = "LOCK";

/// The index of the static bootstrap snapshot that every node starts from.
///
/// Using a snapshot at index 1, term 1 (instead of an empty log) means a node
/// added later can catch up by snapshot, and every node agrees on the voter set
/// before the first message is exchanged.
pub const BOOTSTRAP_INDEX: u64 = 1;
/// The term of the static bootstrap snapshot.
pub const BOOTSTRAP_TERM: u64 = 1;

/// What one Ready asks to be made durable, for [`NodeStorage::persist`]:
/// the log's part and the state machine's part, written in that order (a
/// snapshot first, then the log).
#[derive(Debug, Default, Clone)]
pub struct PersistBatch {
    /// A snapshot received from the leader; it replaces the log and the
    /// whole store.
    pub snapshot: Option<Snapshot>,
    /// Entries to append. If the first index is at or below the stored last
    /// index, the stored tail from that index on is replaced (conflict).
    pub entries: Vec<Entry>,
    /// The new hard state (term, vote, commit) of a Ready, if it changed.
    /// Term and vote are promises that may only move forward: the log
    /// refuses a write that would lower the term or change the vote within
    /// a term.
    pub hard_state: Option<HardState>,
    /// Committed entries to apply, in order, right after the applied index.
    pub apply: Vec<Entry>,
    /// The conf state after the membership changes among `apply`.
    pub conf_state: Option<ConfState>,
    /// The membership changes among `apply` that raft accepted.
    pub accepted_conf: Vec<u64>,
    /// Make the log's part durable before returning.
    pub durable: bool,
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

/// The exclusive lock on a data dir (its `LOCK` file); released on drop.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

/// Takes the data dir's lock (creating the dir), before anything else.
///
/// The dir holds every stored value: it is made 0700 and what it holds 0600
/// (directories 0700), whatever the umask, and the process umask becomes
/// 0077 so that every file the node creates later (redb, log segments) is
/// private too.
pub fn lock(dir: &Path) -> Result<DirLock> {
    use std::os::unix::fs::DirBuilderExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| storage_err(dir, "cannot create the data dir", e))?;
    make_private(dir).map_err(|e| storage_err(dir, "cannot make the data dir private", e))?;
    Ok(DirLock(lock_dir(dir)?))
}

/// Sets `dir` and the directories under it to 0700 and their files to 0600.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// True if the dir holds a node's state (a `raft.redb`).
pub fn has_state(dir: &Path) -> Result<bool> {
    StateStore::exists(dir)
}

/// How a data dir without state gets its first state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// A new cluster: the static bootstrap snapshot, every node of the
    /// cluster file a voter.
    Bootstrap,
    /// A node joining a cluster that formed already: an empty log and no
    /// voters; the leader sends a snapshot. The cluster id is known from the
    /// handshake.
    Join { cluster_id: String },
}

/// A node's durable state, opened: the state machine (shared with the
/// readers), the log (owned by the replica's log writer), and what they held
/// together, reconciled.
pub struct NodeStorage {
    /// The state machine.
    pub state: Arc<StateStore>,
    /// The Raft log.
    pub log: RaftLog,
    /// What raft-rs starts from.
    pub recovered: RecoveredState,
    /// Holds the data dir's lock.
    pub lock: DirLock,
}

impl std::fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStorage")
            .field("file", &self.state.file())
            .finish_non_exhaustive()
    }
}

fn wal_dir(dir: &Path) -> PathBuf {
    dir.join(crate::raft::log::DIR)
}

impl NodeStorage {
    /// Opens the state in `dir` (on first boot, creates the bootstrap
    /// state). For tests and tools; a node opens through
    /// [`NodeStorage::open_locked`] or [`NodeStorage::create`].
    pub fn open(dir: &Path, identity: &StoreIdentity) -> Result<NodeStorage> {
        let lock = lock(dir)?;
        if !has_state(dir)? {
            return NodeStorage::create(dir, lock, identity, &Creation::Bootstrap);
        }
        NodeStorage::open_locked(dir, lock, identity)
    }

    /// Gives a locked dir without state its first state, then opens it.
    /// The log is made first and the state machine's file renamed into
    /// place last, so a dir holds state only once both are whole.
    pub fn create(
        dir: &Path,
        lock: DirLock,
        identity: &StoreIdentity,
        creation: &Creation,
    ) -> Result<NodeStorage> {
        let (state, cluster_id) = match creation {
            Creation::Bootstrap => (RecoveredState::bootstrap(&identity.voters), ""),
            Creation::Join { cluster_id } => (RecoveredState::default(), cluster_id.as_str()),
        };
        let wal = wal_dir(dir);
        // A leftover of a first boot that crashed before its state file was
        // in place: nothing in it was ever acknowledged.
        if wal.exists() {
            fs::remove_dir_all(&wal)
                .map_err(|e| storage_err(dir, format!("cannot remove {}", wal.display()), e))?;
        }
        let start = (state.snapshot_meta.index, state.snapshot_meta.term);
        drop(RaftLog::create(&wal, start, &state.hard_state)?);
        let applied = AppliedState {
            index: state.applied,
            term: state.snapshot_meta.term,
            hash: state.applied_hash,
            conf_state: state.conf_state.clone(),
        };
        StateStore::create(dir, identity, &applied, cluster_id)?;
        NodeStorage::open_locked(dir, lock, identity)
    }

    /// Opens the state of a locked dir that has one, and reconciles the
    /// log with the state machine.
    pub fn open_locked(dir: &Path, lock: DirLock, identity: &StoreIdentity) -> Result<NodeStorage> {
        let (state, legacy) = StateStore::open(dir, identity)?;
        let wal = wal_dir(dir);
        if let Some(legacy) = legacy {
            // Format 2 kept the log in raft.redb: move it out. A log left by
            // an upgrade that did not finish is made again from the same
            // records.
            if wal.exists() {
                fs::remove_dir_all(&wal)
                    .map_err(|e| storage_err(dir, format!("cannot remove {}", wal.display()), e))?;
            }
            let mut log = RaftLog::create(&wal, legacy.start, &legacy.hard_state)?;
            log.write(&LogWrite {
                entries: legacy.entries.clone(),
                sync: true,
                ..Default::default()
            })?;
            drop(log);
            state.finish_upgrade(&legacy)?;
        }
        if !RaftLog::exists(&wal) {
            return Err(Error::StorageCorrupt {
                file: wal,
                reason: format!(
                    "the Raft log is missing beside {}: the data dir is incomplete",
                    state.file().display()
                ),
            });
        }
        let (mut log, replayed) = RaftLog::open(&wal)?;
        let applied = state.applied_state()?;
        let recovered = reconcile(&wal, &mut log, replayed, &applied)?;
        Ok(NodeStorage {
            state: Arc::new(state),
            log,
            recovered,
            lock,
        })
    }

    /// Writes one batch: a snapshot into the state machine (durably), then
    /// the log's part, then the entries to apply. For tests and tools; the
    /// replica drives the two halves itself.
    pub fn persist(&mut self, batch: &PersistBatch) -> Result<Written> {
        if let Some(snapshot) = &batch.snapshot {
            self.state.apply(&ApplyBatch {
                snapshot: Some(snapshot.clone()),
                ..Default::default()
            })?;
        }
        let m = batch.snapshot.as_ref().map(|s| s.get_metadata());
        self.log.write(&LogWrite {
            snapshot: m.map(|m| (m.index, m.term)),
            entries: batch.entries.clone(),
            hard_state: batch.hard_state.clone(),
            sync: batch.durable || batch.snapshot.is_some(),
        })?;
        let written = self.state.apply(&ApplyBatch {
            apply: batch.apply.clone(),
            conf_state: batch.conf_state.clone(),
            accepted_conf: batch.accepted_conf.clone(),
            ..Default::default()
        })?;
        if batch.apply.is_empty() && batch.snapshot.is_some() {
            let a = self.state.applied_state()?;
            return Ok(Written {
                applied: Vec::new(),
                applied_index: a.index,
                applied_hash: a.hash,
            });
        }
        Ok(written)
    }
}

/// Makes the replayed log and the state machine agree (see the module
/// documentation).
fn reconcile(
    wal: &Path,
    log: &mut RaftLog,
    replayed: crate::raft::log::Recovered,
    applied: &AppliedState,
) -> Result<RecoveredState> {
    let corrupt = |reason: String| Error::StorageCorrupt {
        file: wal.to_path_buf(),
        reason,
    };
    let mut start = replayed.start;
    let mut entries = replayed.entries;
    let mut hard_state = replayed.hard_state;
    if start.0 > applied.index {
        return Err(corrupt(format!(
            "the log starts after entry {}, but the state machine has applied only up to {}: \
             entries {} to {} are missing",
            start.0,
            applied.index,
            applied.index + 1,
            start.0
        )));
    }
    let last = entries.last().map_or(start, |e| (e.index, e.term));
    let term_at_applied = if applied.index == start.0 {
        Some(start.1)
    } else {
        entries
            .get((applied.index - start.0 - 1) as usize)
            .map(|e| e.term)
    };
    if term_at_applied != Some(applied.term) {
        // The state machine is ahead of the log, or the log's entry there
        // is of another term: a snapshot was installed and the node stopped
        // before the log restarted after it. The log's tail is superseded.
        warn!(
            "the state machine is at entry {} (term {}), the log ends at {:?}: restarting the log \
             after the state machine's snapshot",
            applied.index, applied.term, last
        );
        start = (applied.index, applied.term);
        entries.clear();
        if hard_state.term < applied.term {
            hard_state.term = applied.term;
            hard_state.vote = 0;
        }
        hard_state.commit = hard_state.commit.max(applied.index);
        log.write(&LogWrite {
            snapshot: Some(start),
            hard_state: Some(hard_state.clone()),
            sync: true,
            ..Default::default()
        })?;
    }
    // Applied entries were committed: the commit index is at least that.
    hard_state.commit = hard_state.commit.max(applied.index);
    let last = entries.last().map_or(start.0, |e| e.index);
    check_loadable(start.0, last, hard_state.commit, applied.index).map_err(corrupt)?;
    let mut snapshot_meta = SnapshotMetadata {
        index: start.0,
        term: start.1,
        ..Default::default()
    };
    snapshot_meta.set_conf_state(applied.conf_state.clone());
    info!(
        "recovered: applied {} (term {}), log ({}, {last}], term {} vote {} commit {}",
        applied.index, applied.term, start.0, hard_state.term, hard_state.vote, hard_state.commit
    );
    Ok(RecoveredState {
        hard_state,
        snapshot_meta,
        conf_state: applied.conf_state.clone(),
        entries,
        applied: applied.index,
        applied_hash: applied.hash,
    })
}

/// The conditions under which raft-rs loads a stored state without a fatal
/// panic (`Raft::load_state` and `RaftLog::applied_to`): the commit index lies
/// in the stored log, and the applied index between the snapshot and it.
pub fn check_loadable(
    snapshot: u64,
    last: u64,
    commit: u64,
    applied: u64,
) -> std::result::Result<(), String> {
    if commit < snapshot || commit > last {
        return Err(format!(
            "the commit index {commit} is outside the stored log [{snapshot}, {last}]"
        ));
    }
    if applied < snapshot || applied > commit {
        return Err(format!(
            "the applied index {applied} is outside [{snapshot}, commit {commit}]"
        ));
    }
    Ok(())
}

/// Takes the exclusive lock on `<dir>/LOCK` and writes our pid into it.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| storage_err(dir, format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = match file.read_to_string(&mut text) {
                Ok(_) => match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                },
                Err(_) => String::new(),
            };
            return Err(Error::DataDirLocked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(storage_err(
                dir,
                format!("cannot lock {}", path.display()),
                e,
            ));
        }
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| storage_err(dir, format!("cannot write {}", path.display()), e))?;
    Ok(file)
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod node_tests;

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
