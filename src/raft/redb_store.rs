//! The durable store of a node: one redb file per node, in `<data_dir>/node-<id>`.
//!
//! What lives in the node's data dir:
//!
//! - `LOCK`: held with an exclusive file lock for as long as the store is
//!   open, and holds the pid of the holder, so that a second process on the
//!   same dir is refused with a sentence naming it.
//! - `raft.redb`: the identity (cluster name, node id, voter set it was
//!   bootstrapped with), the hard state, the snapshot metadata (index and term
//!   of the last compaction or received snapshot), the conf state as of the
//!   applied index, the entries after the snapshot, the applied index, and the
//!   key-value store itself (see [`crate::store::machine`]).
//!
//! Safety rules kept here:
//!
//! - The lock is taken before anything else is touched.
//! - The first boot builds `raft.redb` under a temporary name and renames it
//!   into place only once the identity and the bootstrap state are durable.
//!   So an existing `raft.redb` is always a complete store, and an empty,
//!   truncated or foreign file is reported as damaged: the node never starts
//!   empty over lost state.
//! - Each [`PersistBatch`] is one redb write transaction. Committed entries
//!   are applied to the store in the transaction that records the applied
//!   index, so a crash never applies one twice or skips one. A batch that
//!   holds entries, a snapshot or a new term or vote is written with
//!   [`Durability::Immediate`] (one fsync); a batch that only applies and
//!   moves the commit index is not, since after a crash it is redone from the
//!   durable log.
//! - `persist` refuses, before writing anything, a batch after which raft-rs
//!   could not load the stored state (a gap in the log, a commit index outside
//!   it, an applied index past the commit), so that a bug fails one write
//!   instead of every later start.
//! - The file's page checksums are verified on every open: redb trusts a
//!   cleanly closed file by default, and then returns damaged values as data.
//! - A data dir of another cluster, another node id or another voter set is
//!   refused, because reusing Raft state under a different identity can elect
//!   two leaders in one term.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use protobuf::Message;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::raft::storage::{chain_hash, Applied, PersistBatch, RecoveredState, Written};
use crate::store::machine::{self, ReadTables, Tables};
use crate::store::{Command, Outcome};

/// Name of the lock file inside the node's data dir.
const LOCK_FILE: &str = "LOCK";
/// Name of the redb file inside the node's data dir.
const DB_FILE: &str = "raft.redb";
/// Where the first boot builds the store before renaming it to [`DB_FILE`].
const DB_INIT_FILE: &str = "raft.redb.init";
/// redb's page cache. Small on purpose: the node targets a few MiB of RSS and
/// its working set is the tail of one log.
const CACHE_BYTES: usize = 512 * 1024;
/// Version of the layout below; bumped if the tables change meaning.
/// Version 1 (before the key-value store) is upgraded in place on open.
const FORMAT_VERSION: u64 = 2;

/// Single values: identity, hard state, snapshot metadata, applied index.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Raft entries after the snapshot, keyed by index, protobuf-encoded.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

const KEY_FORMAT: &str = "format_version";
const KEY_CLUSTER: &str = "cluster";
const KEY_NODE_ID: &str = "node_id";
const KEY_VOTERS: &str = "voters";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
const KEY_APPLIED: &str = "applied";
/// The running hash of the applied entries (`chain_hash`); absent in a
/// store written by an older build until it installs a snapshot.
const KEY_APPLIED_HASH: &str = "applied_hash";
const KEY_CONF_STATE: &str = "conf_state";
/// The cluster id a joining node learned from its handshake (empty before);
/// once the store holds `__quorumd/cluster_id`, that one counts.
const KEY_CLUSTER_ID: &str = "cluster_id";
/// The proposal id at the start of an entry's context (node, incarnation,
/// request: three u64).
pub const PROPOSAL_ID_BYTES: usize = 24;

/// Who a data dir belongs to. Stored on first boot and checked on every later
/// boot, so that a node never runs on another node's or cluster's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The `[cluster] name` of the cluster file.
    pub cluster: String,
    /// This node's id (`--node-id`).
    pub node_id: u64,
    /// Every configured node id; the bootstrap voter set. Order does not matter.
    pub voters: Vec<u64>,
}

/// The node's Raft state and key-value store, in one redb file, locked against other processes.
///
/// It exists so that term, vote and log survive restarts and crashes
/// (DESIGN.md rule 5). Dropping it releases the data dir lock.
pub struct RedbLogStore {
    dir: PathBuf,
    file: PathBuf,
    db: Database,
    /// Holds the exclusive lock on `LOCK`; the lock ends when this is dropped.
    _lock: DirLock,
}

/// The exclusive lock on a data dir (its `LOCK` file); released on drop.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

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

impl std::fmt::Debug for RedbLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLogStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl RedbLogStore {
    /// Opens (or on first boot creates) the store in `dir`, the node's own
    /// data dir (`<data_dir>/node-<id>`), and checks that it belongs to
    /// `identity`.
    ///
    /// Errors: [`Error::DataDirLocked`] if another store holds the dir,
    /// [`Error::DataDirMismatch`] if the dir belongs to another cluster, node
    /// or voter set, [`Error::StorageCorrupt`] if `raft.redb` is damaged, and
    /// [`Error::Storage`] for any other failure.
    pub fn open(dir: &Path, identity: &StoreIdentity) -> Result<RedbLogStore> {
        let lock = RedbLogStore::lock(dir)?;
        if !RedbLogStore::has_state(dir)? {
            return RedbLogStore::create(dir, lock, identity, &Creation::Bootstrap);
        }
        RedbLogStore::open_locked(dir, lock, identity)
    }

    /// Takes the data dir's lock (creating the dir), before anything else.
    pub fn lock(dir: &Path) -> Result<DirLock> {
        fs::create_dir_all(dir).map_err(|e| storage_err(dir, "cannot create the data dir", e))?;
        Ok(DirLock(lock_dir(dir)?))
    }

    /// True if the dir holds a store (a `raft.redb`).
    pub fn has_state(dir: &Path) -> Result<bool> {
        let file = dir.join(DB_FILE);
        file.try_exists()
            .map_err(|e| storage_err(dir, format!("cannot look for {}", file.display()), e))
    }

    /// Gives a locked dir without state its first state, then opens it.
    pub fn create(
        dir: &Path,
        lock: DirLock,
        identity: &StoreIdentity,
        creation: &Creation,
    ) -> Result<RedbLogStore> {
        create_initial(dir, identity, creation)?;
        RedbLogStore::open_locked(dir, lock, identity)
    }

    /// Opens the store of a locked dir that has one.
    pub fn open_locked(
        dir: &Path,
        lock: DirLock,
        identity: &StoreIdentity,
    ) -> Result<RedbLogStore> {
        let file = dir.join(DB_FILE);

        let db = guarded(&file, || {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                // Verify every page checksum on open: a damaged file is then
                // an error, where a plain open may trust it or panic.
                .set_check_integrity_on_open(true)
                .open(&file)
        })?
        .map_err(|e| redb_err(dir, &file, "cannot open", e))?;

        let store = RedbLogStore {
            dir: dir.to_path_buf(),
            file,
            db,
            _lock: lock,
        };
        guarded(&store.file, || store.upgrade())??;
        store.check_identity(identity)?;
        Ok(store)
    }

    /// The path of the redb file, for messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn check_identity(&self, want: &StoreIdentity) -> Result<()> {
        let stored = guarded(&self.file, || self.read_identity())??;
        let mismatch = |reason: String| Error::DataDirMismatch {
            dir: self.dir.clone(),
            reason,
        };
        if stored.cluster != want.cluster {
            return Err(mismatch(format!(
                "it belongs to cluster \"{}\", not to cluster \"{}\" of the cluster file. \
                 {WRONG_DIR_ADVICE} {WIPE_WARNING}",
                stored.cluster, want.cluster
            )));
        }
        if stored.node_id != want.node_id {
            return Err(mismatch(format!(
                "it belongs to node {}, not to node {}. {WRONG_DIR_ADVICE} {WIPE_WARNING}",
                stored.node_id, want.node_id
            )));
        }
        // The voter set it was bootstrapped with may differ from the file's:
        // from the first boot on, the membership lives in Raft (the
        // coordinator logs a file that differs from it).
        Ok(())
    }

    fn read_identity(&self) -> Result<StoreIdentity> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = txn.open_table(META).map_err(|e| match e {
            redb::TableError::TableDoesNotExist(_) => self.corrupt("it has no identity record"),
            e => self.err("read", e),
        })?;
        let get = |key: &str| -> Result<Vec<u8>> {
            meta.get(key)
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| self.corrupt(format!("the \"{key}\" record is missing")))
        };
        let format = self.decode_u64(KEY_FORMAT, &get(KEY_FORMAT)?)?;
        if format != FORMAT_VERSION {
            return Err(Error::Storage {
                dir: self.dir.clone(),
                reason: format!(
                    "{} has format version {format}, this build reads version {FORMAT_VERSION}",
                    self.file.display()
                ),
            });
        }
        let cluster = String::from_utf8(get(KEY_CLUSTER)?)
            .map_err(|_| self.corrupt("the cluster name is not UTF-8"))?;
        let node_id = self.decode_u64(KEY_NODE_ID, &get(KEY_NODE_ID)?)?;
        let raw = get(KEY_VOTERS)?;
        if raw.len() % 8 != 0 {
            return Err(self.corrupt("the voter list has a bad length"));
        }
        let voters = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(StoreIdentity {
            cluster,
            node_id,
            voters,
        })
    }

    fn read_state(&self) -> Result<RecoveredState> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
        let get = |key: &str| -> Result<Vec<u8>> {
            meta.get(key)
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| self.corrupt(format!("the \"{key}\" record is missing")))
        };
        let hard_state: HardState = self.decode(KEY_HARD_STATE, &get(KEY_HARD_STATE)?)?;
        let snapshot_meta: SnapshotMetadata =
            self.decode(KEY_SNAPSHOT_META, &get(KEY_SNAPSHOT_META)?)?;
        let conf_state: ConfState = self.decode(KEY_CONF_STATE, &get(KEY_CONF_STATE)?)?;
        let applied = self.decode_u64(KEY_APPLIED, &get(KEY_APPLIED)?)?;
        let applied_hash = self.applied_hash(&meta)?;

        let table = txn.open_table(ENTRIES).map_err(|e| self.err("read", e))?;
        let mut entries = Vec::new();
        let mut expect = snapshot_meta.index + 1;
        for row in table
            .range(snapshot_meta.index + 1..)
            .map_err(|e| self.err("read", e))?
        {
            let (key, value) = row.map_err(|e| self.err("read", e))?;
            let entry: Entry = self.decode("entry", value.value())?;
            if key.value() != expect || entry.index != expect {
                return Err(self.corrupt(format!(
                    "the log has a gap or a bad record: expected entry {expect}, found key {} \
                     holding entry {}",
                    key.value(),
                    entry.index
                )));
            }
            expect += 1;
            entries.push(entry);
        }
        // raft-rs would panic on these, so name the file instead.
        check_loadable(snapshot_meta.index, expect - 1, hard_state.commit, applied)
            .map_err(|reason| self.corrupt(reason))?;
        Ok(RecoveredState {
            hard_state,
            snapshot_meta,
            conf_state,
            entries,
            applied,
            applied_hash,
        })
    }

    /// The stored running hash of the applied entries, if there is one.
    fn applied_hash(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<u64>> {
        meta.get(KEY_APPLIED_HASH)
            .map_err(|e| self.err("read", e))?
            .map(|v| self.decode_u64(KEY_APPLIED_HASH, v.value()))
            .transpose()
    }

    fn write_batch(&self, batch: &PersistBatch) -> Result<Written> {
        let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        let durability = if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| self.err("write", e))?;
        let mut results = Vec::new();
        let written;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            let mut table = txn.open_table(ENTRIES).map_err(|e| self.err("write", e))?;
            let mut kv = Tables::open(&txn).map_err(|e| self.err("write", e))?;
            let stored = |meta: &redb::Table<&str, &[u8]>, key: &str| -> Result<Vec<u8>> {
                meta.get(key)
                    .map_err(|e| self.err("write", e))?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| self.corrupt(format!("the \"{key}\" record is missing")))
            };
            let mut snapshot_meta: SnapshotMetadata =
                self.decode(KEY_SNAPSHOT_META, &stored(&meta, KEY_SNAPSHOT_META)?)?;
            let stored_applied = self.decode_u64(KEY_APPLIED, &stored(&meta, KEY_APPLIED)?)?;
            let mut applied = stored_applied;
            let stored_hash = self.applied_hash(&meta)?;
            let mut hash = stored_hash;
            let stored_hs: HardState =
                self.decode(KEY_HARD_STATE, &stored(&meta, KEY_HARD_STATE)?)?;
            // Term and vote only move forward (checked before anything is
            // written); a commit-only batch keeps them as stored.
            let mut hs = stored_hs.clone();
            if let Some(new) = &batch.hard_state {
                self.check_promises(&stored_hs, new)?;
                hs = new.clone();
            }
            if let Some(commit) = batch.commit {
                if commit < hs.commit {
                    return Err(Error::Storage {
                        dir: self.dir.clone(),
                        reason: format!(
                            "refusing to lower the stored commit index from {} to {commit}",
                            hs.commit
                        ),
                    });
                }
                hs.commit = commit;
            }

            if let Some(snapshot) = &batch.snapshot {
                // The snapshot replaces the whole log and the whole store.
                let m = snapshot.get_metadata();
                let header = crate::store::snapshot::install(&mut kv, snapshot.get_data())
                    .map_err(|e| self.err("install a snapshot into", e))?;
                hash = header.applied_hash;
                table
                    .retain(|_, _| false)
                    .map_err(|e| self.err("write", e))?;
                snapshot_meta = m.clone();
                put(&mut meta, KEY_SNAPSHOT_META, &encode(m)).map_err(|e| self.err("write", e))?;
                put(&mut meta, KEY_CONF_STATE, &encode(m.get_conf_state()))
                    .map_err(|e| self.err("write", e))?;
                applied = m.index;
            }
            let snapshot_index = snapshot_meta.index;

            if let Some(first) = batch.entries.first() {
                let last_stored = table
                    .last()
                    .map_err(|e| self.err("write", e))?
                    .map(|(k, _)| k.value())
                    .unwrap_or(snapshot_index);
                self.check_append(snapshot_index, last_stored, &batch.entries)?;
                // A conflicting append replaces the stored tail.
                table
                    .retain_in(first.index.., |_, _| false)
                    .map_err(|e| self.err("write", e))?;
                for entry in &batch.entries {
                    table
                        .insert(entry.index, encode(entry).as_slice())
                        .map_err(|e| self.err("write", e))?;
                }
            }

            // Apply committed entries, in order, in this same transaction.
            for entry in &batch.apply {
                if entry.index != applied + 1 {
                    return Err(Error::Storage {
                        dir: self.dir.clone(),
                        reason: format!(
                            "refusing to apply entry {} when the applied index is {applied}",
                            entry.index
                        ),
                    });
                }
                // A normal entry carries its command as data; a membership
                // change carries the records that go with it after the
                // 24-byte proposal id of its context, applied only if raft
                // accepted the change.
                let carried = match entry.get_entry_type() {
                    EntryType::EntryNormal if !entry.data.is_empty() => {
                        Some((&entry.data[..], entry.context.to_vec()))
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2
                        if entry.context.len() > PROPOSAL_ID_BYTES
                            && batch.accepted_conf.contains(&entry.index) =>
                    {
                        Some((
                            &entry.context[PROPOSAL_ID_BYTES..],
                            entry.context[..PROPOSAL_ID_BYTES].to_vec(),
                        ))
                    }
                    _ => None,
                };
                if let Some((data, context)) = carried {
                    let (outcome, touched) = match Command::decode(data) {
                        Ok(cmd) => kv
                            .apply(entry.index, &cmd)
                            .map_err(|e| self.err("apply entry to", e))?,
                        // Every node skips the same bad entry the same way.
                        Err(e) => (Outcome::Invalid(e), Vec::new()),
                    };
                    results.push(Applied {
                        index: entry.index,
                        context,
                        outcome,
                        touched,
                    });
                }
                applied = entry.index;
                hash = hash.map(|h| chain_hash(h, entry));
            }
            if let Some(cs) = &batch.conf_state {
                put(&mut meta, KEY_CONF_STATE, &encode(cs)).map_err(|e| self.err("write", e))?;
            }

            // Compaction: the store holds everything up to `applied`, so
            // the log up to `index` is no longer needed.
            if let Some((index, term)) = batch.compact {
                if index > snapshot_meta.index {
                    let held = table
                        .get(index)
                        .map_err(|e| self.err("write", e))?
                        .map(|v| self.decode::<Entry>("entry", v.value()))
                        .transpose()?;
                    if index > applied || held.as_ref().map(|e| e.term) != Some(term) {
                        return Err(Error::Storage {
                            dir: self.dir.clone(),
                            reason: format!(
                                "refusing to compact to entry {index} (term {term}): applied is \
                                 {applied}, the stored entry has term {:?}",
                                held.map(|e| e.term)
                            ),
                        });
                    }
                    snapshot_meta.index = index;
                    snapshot_meta.term = term;
                    put(&mut meta, KEY_SNAPSHOT_META, &encode(&snapshot_meta))
                        .map_err(|e| self.err("write", e))?;
                    table
                        .retain_in(..=index, |_, _| false)
                        .map_err(|e| self.err("write", e))?;
                    kv.reap_tombstones(index)
                        .map_err(|e| self.err("write", e))?;
                }
            }

            // Refuse, while nothing is committed yet, a batch after which
            // raft-rs could not load the stored state on the next start.
            let last = table
                .last()
                .map_err(|e| self.err("write", e))?
                .map(|(k, _)| k.value())
                .unwrap_or(snapshot_meta.index);
            check_loadable(snapshot_meta.index, last, hs.commit, applied).map_err(|reason| {
                Error::Storage {
                    dir: self.dir.clone(),
                    reason: format!("refusing a write that raft could not load back: {reason}"),
                }
            })?;

            if hs != stored_hs {
                put(&mut meta, KEY_HARD_STATE, &encode(&hs)).map_err(|e| self.err("write", e))?;
            }
            if applied != stored_applied {
                put(&mut meta, KEY_APPLIED, &applied.to_le_bytes())
                    .map_err(|e| self.err("write", e))?;
            }
            if hash != stored_hash {
                match hash {
                    Some(h) => put(&mut meta, KEY_APPLIED_HASH, &h.to_le_bytes()),
                    None => meta.remove(KEY_APPLIED_HASH).map(|_| ()),
                }
                .map_err(|e| self.err("write", e))?;
            }
            written = Written {
                applied: results,
                applied_index: applied,
                applied_hash: hash,
            };
        }
        txn.commit().map_err(|e| self.err("commit", e))?;
        Ok(written)
    }

    /// Refuses a hard state that breaks a promise already made durable: a
    /// lower term, or another vote within the same term. Either would let
    /// this node vote twice in one term after a restart.
    fn check_promises(&self, stored: &HardState, new: &HardState) -> Result<()> {
        let broken = if new.term < stored.term {
            Some(format!(
                "refusing to lower the stored term from {} to {} (vote {} to {})",
                stored.term, new.term, stored.vote, new.vote
            ))
        } else if new.term == stored.term && stored.vote != 0 && new.vote != stored.vote {
            Some(format!(
                "refusing to change the stored vote within term {} from node {} to node {}",
                stored.term, stored.vote, new.vote
            ))
        } else {
            None
        };
        match broken {
            Some(reason) => Err(Error::Storage {
                dir: self.dir.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Upgrades a store written by an older build (format 1: no key-value
    /// store yet) in place. Nothing of it is lost.
    fn upgrade(&self) -> Result<()> {
        let format = {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let Ok(meta) = txn.open_table(META) else {
                return Ok(()); // reported by the identity check
            };
            match meta.get(KEY_FORMAT).map_err(|e| self.err("read", e))? {
                Some(v) => self.decode_u64(KEY_FORMAT, v.value())?,
                None => return Ok(()),
            }
        };
        if format != 1 {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err("write", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            let raw = meta
                .get(KEY_SNAPSHOT_META)
                .map_err(|e| self.err("write", e))?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| self.corrupt("the \"snapshot_meta\" record is missing"))?;
            let snapshot_meta: SnapshotMetadata = self.decode(KEY_SNAPSHOT_META, &raw)?;
            put(
                &mut meta,
                KEY_CONF_STATE,
                &encode(snapshot_meta.get_conf_state()),
            )
            .map_err(|e| self.err("write", e))?;
            put(&mut meta, KEY_FORMAT, &FORMAT_VERSION.to_le_bytes())
                .map_err(|e| self.err("write", e))?;
        }
        machine::create_tables(&txn).map_err(|e| self.err("write", e))?;
        txn.commit().map_err(|e| self.err("commit", e))?;
        log::info!(
            "upgraded {} from format 1 to format {FORMAT_VERSION}",
            self.file.display()
        );
        Ok(())
    }

    /// Refuses an append that would leave a gap or overwrite the snapshot:
    /// storage must agree exactly with raft's view (DESIGN.md rule 5).
    fn check_append(&self, snapshot_index: u64, last_stored: u64, entries: &[Entry]) -> Result<()> {
        let first = entries[0].index;
        let bad = |reason: String| Error::Storage {
            dir: self.dir.clone(),
            reason,
        };
        if first <= snapshot_index {
            return Err(bad(format!(
                "refusing to append entry {first} at or below the snapshot index {snapshot_index}"
            )));
        }
        if first > last_stored + 1 {
            return Err(bad(format!(
                "refusing to append entry {first}: the log ends at {last_stored}, that leaves a gap"
            )));
        }
        if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
            return Err(bad(format!(
                "refusing a non-contiguous append: entry {} follows entry {}",
                w[1].index, w[0].index
            )));
        }
        Ok(())
    }

    fn decode<M: Message>(&self, what: &str, bytes: &[u8]) -> Result<M> {
        let mut m = M::new();
        m.merge_from_bytes(bytes)
            .map_err(|e| self.corrupt(format!("the \"{what}\" record does not decode: {e}")))?;
        Ok(m)
    }

    fn decode_u64(&self, what: &str, bytes: &[u8]) -> Result<u64> {
        let raw: [u8; 8] = bytes
            .try_into()
            .map_err(|_| self.corrupt(format!("the \"{what}\" record has a bad length")))?;
        Ok(u64::from_le_bytes(raw))
    }

    fn err(&self, what: &str, e: impl Into<redb::Error>) -> Error {
        redb_err(&self.dir, &self.file, what, e)
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::StorageCorrupt {
            file: self.file.clone(),
            reason: reason.into(),
        }
    }
}

impl RedbLogStore {
    /// Returns what was made durable before. Called once, at start.
    pub fn recover(&self) -> Result<RecoveredState> {
        guarded(&self.file, || self.read_state())?
    }

    /// Writes one Ready's batch in one transaction: appends, installs a
    /// snapshot, applies committed entries, compacts. Blocks until it is on
    /// disk when `batch.durable`. An `Err` is fatal: nothing that was not
    /// written may be acknowledged.
    pub fn persist(&self, batch: &PersistBatch) -> Result<Written> {
        if batch.is_empty() {
            return Ok(Written::default());
        }
        guarded(&self.file, || self.write_batch(batch))?
    }

    /// The cluster id: the store's record, or what a joining node learned.
    pub fn cluster_id(&self) -> Result<Option<String>> {
        let from_store = self.read(|t| {
            Ok(t.get(crate::membership::CLUSTER_ID_KEY)?
                .value
                .and_then(|e| e.value)
                .and_then(|v| String::from_utf8(v).ok()))
        })?;
        if from_store.is_some() {
            return Ok(from_store);
        }
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
            let raw = meta
                .get(KEY_CLUSTER_ID)
                .map_err(|e| self.err("read", e))?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            Ok((!raw.is_empty()).then(|| String::from_utf8_lossy(&raw).into_owned()))
        })?
    }

    /// Makes every earlier write durable (the ones written without an fsync
    /// of their own). Called when the replica stops.
    pub fn flush(&self) -> Result<()> {
        guarded(&self.file, || {
            let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err("write", e))?;
            txn.commit().map_err(|e| self.err("commit", e))
        })?
    }

    /// Runs a query on the store as it is now. Blocking: call it off the
    /// executor.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTables) -> machine::Result<T>) -> Result<T> {
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let tables = ReadTables::open(&txn).map_err(|e| self.err("read", e))?;
            f(&tables).map_err(|e| self.err("read", e))
        })?
    }

    /// Builds a snapshot of the store at the applied index, for a follower
    /// that is behind the compacted log. Blocking: call it off the executor.
    pub fn build_snapshot(&self) -> Result<Snapshot> {
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
            let get = |key: &str| -> Result<Vec<u8>> {
                meta.get(key)
                    .map_err(|e| self.err("read", e))?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| self.corrupt(format!("the \"{key}\" record is missing")))
            };
            let applied = self.decode_u64(KEY_APPLIED, &get(KEY_APPLIED)?)?;
            let compacted: SnapshotMetadata =
                self.decode(KEY_SNAPSHOT_META, &get(KEY_SNAPSHOT_META)?)?;
            let conf_state: ConfState = self.decode(KEY_CONF_STATE, &get(KEY_CONF_STATE)?)?;
            let term = if applied == compacted.index {
                compacted.term
            } else {
                let entries = txn.open_table(ENTRIES).map_err(|e| self.err("read", e))?;
                let raw = entries
                    .get(applied)
                    .map_err(|e| self.err("read", e))?
                    .ok_or_else(|| self.corrupt(format!("applied entry {applied} is missing")))?;
                self.decode::<Entry>("entry", raw.value())?.term
            };
            let tables = ReadTables::open(&txn).map_err(|e| self.err("read", e))?;
            let hash = self.applied_hash(&meta)?;
            let data =
                crate::store::snapshot::build(&tables, hash).map_err(|e| self.err("read", e))?;
            let mut snapshot = Snapshot::default();
            snapshot.set_data(data.into());
            let m = snapshot.mut_metadata();
            m.index = applied;
            m.term = term;
            m.set_conf_state(conf_state);
            Ok(snapshot)
        })?
    }
}

// The replica moves the store into `blocking::unblock`.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RedbLogStore>();
};

/// Said with every identity mismatch that a wrong flag can cause.
const WRONG_DIR_ADVICE: &str = "Point --data-dir at this node's own data dir, \
    or use the cluster file this data dir was created with.";
/// Said with every identity mismatch: the tempting fix is the unsafe one.
const WIPE_WARNING: &str = "Do not wipe the data dir to reuse a node id; that is unsafe in \
    Raft: a node that forgets its vote and log can help elect two leaders in one term and lose committed \
    entries. To replace a lost node, give the new box a new id: `quorumd member replace`.";

/// The conditions under which raft-rs loads a stored state without a fatal
/// panic (`Raft::load_state` and `RaftLog::applied_to`): the commit index lies
/// in the stored log, and the applied index between the snapshot and it.
fn check_loadable(
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

/// First boot: writes identity and bootstrap state durably under a temporary
/// name, then renames the file into place and syncs the dir.
fn create_initial(dir: &Path, identity: &StoreIdentity, creation: &Creation) -> Result<()> {
    let init = dir.join(DB_INIT_FILE);
    let file = dir.join(DB_FILE);
    // A leftover from a crash during an earlier first boot: nothing in it was
    // ever acknowledged, so it is safe to start over.
    if init.exists() {
        fs::remove_file(&init)
            .map_err(|e| storage_err(dir, format!("cannot remove {}", init.display()), e))?;
    }
    let db = guarded(&init, || {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&init)
    })?
    .map_err(|e| redb_err(dir, &init, "cannot create", e))?;
    let err = |e: redb::Error| redb_err(dir, &init, "cannot initialise", e);

    let (state, cluster_id) = match creation {
        Creation::Bootstrap => (RecoveredState::bootstrap(&identity.voters), ""),
        Creation::Join { cluster_id } => (RecoveredState::default(), cluster_id.as_str()),
    };
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let voters: Vec<u8> = sorted(&identity.voters)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let rows: [(&str, Vec<u8>); 9] = [
            (KEY_FORMAT, FORMAT_VERSION.to_le_bytes().to_vec()),
            (KEY_CLUSTER, identity.cluster.as_bytes().to_vec()),
            (KEY_NODE_ID, identity.node_id.to_le_bytes().to_vec()),
            (KEY_VOTERS, voters),
            (KEY_HARD_STATE, encode(&state.hard_state)),
            (KEY_SNAPSHOT_META, encode(&state.snapshot_meta)),
            (KEY_APPLIED, state.applied.to_le_bytes().to_vec()),
            (KEY_CONF_STATE, encode(&state.conf_state)),
            (KEY_CLUSTER_ID, cluster_id.as_bytes().to_vec()),
        ];
        if let Some(hash) = state.applied_hash {
            put(&mut meta, KEY_APPLIED_HASH, &hash.to_le_bytes()).map_err(|e| err(e.into()))?;
        }
        for (key, value) in &rows {
            put(&mut meta, key, value).map_err(|e| err(e.into()))?;
        }
        txn.open_table(ENTRIES).map_err(|e| err(e.into()))?;
    }
    machine::create_tables(&txn).map_err(err)?;
    txn.commit().map_err(|e| err(e.into()))?;
    db.close().map_err(|e| err(e.into()))?;

    fs::rename(&init, &file)
        .map_err(|e| storage_err(dir, format!("cannot rename {}", init.display()), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_err(dir, "cannot sync the data dir", e))?;
    // Make the dir's own entry durable too, or a power cut could lose the
    // whole dir after the node voted. Best effort: the parent may be
    // searchable but not readable, and `create_dir_all` just worked.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Runs `f`, turning a panic inside redb into [`Error::StorageCorrupt`]:
/// redb may panic on a file damaged outside of it.
/// In the binary the panic hook reports it the same way and exits (release
/// builds do not unwind); elsewhere the panic is caught here.
fn guarded<T>(file: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let damaged = {
        let file = file.to_path_buf();
        move |msg: &str| Error::StorageCorrupt {
            file: file.clone(),
            reason: format!("the storage engine panicked reading it: {msg}"),
        }
    };
    let caught = crate::runtime::with_panic_context(Box::new(damaged.clone()), || {
        panic::catch_unwind(AssertUnwindSafe(f))
    });
    caught.map_err(|payload| damaged(crate::runtime::panic_message(&*payload)))
}

/// Maps a redb error: damage becomes [`Error::StorageCorrupt`] naming the
/// file, a second opener [`Error::DataDirLocked`], the rest [`Error::Storage`].
fn redb_err(dir: &Path, file: &Path, what: &str, e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Corrupted(reason) => Error::StorageCorrupt {
            file: file.to_path_buf(),
            reason: reason.clone(),
        },
        // redb reports "not a redb file" and "empty file" as InvalidData.
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Error::StorageCorrupt {
                file: file.to_path_buf(),
                reason: io.to_string(),
            }
        }
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::StorageCorrupt {
                file: file.to_path_buf(),
                reason: format!("it is truncated ({io})"),
            }
        }
        redb::Error::DatabaseAlreadyOpen => Error::DataDirLocked {
            dir: dir.to_path_buf(),
            holder: String::new(),
        },
        _ => Error::Storage {
            dir: dir.to_path_buf(),
            reason: format!("{what} {}: {e}", file.display()),
        },
    }
}

fn storage_err(dir: &Path, what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Storage {
        dir: dir.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

fn put(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &[u8],
) -> std::result::Result<(), redb::StorageError> {
    meta.insert(key, value).map(|_| ())
}

fn encode(m: &impl Message) -> Vec<u8> {
    // Only fails for messages with unset required fields; raft's have none.
    m.write_to_bytes()
        .expect("raft protobuf messages always encode")
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_view::LogView;
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

    fn append(store: &RedbLogStore, entries: Vec<Entry>) {
        store
            .persist(&PersistBatch {
                entries,
                ..Default::default()
            })
            .unwrap();
    }

    fn index_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn first_boot_writes_the_bootstrap_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node-1");
        let store = RedbLogStore::open(&dir, &identity()).unwrap();
        let state = store.recover().unwrap();
        let boot = RecoveredState::bootstrap(&[1, 2, 3]);
        assert_eq!(state.hard_state, boot.hard_state);
        assert_eq!(state.snapshot_meta, boot.snapshot_meta);
        assert!(state.entries.is_empty());
        assert_eq!(state.applied, 1);
        assert!(dir.join(DB_FILE).exists());
        assert!(!dir.join(DB_INIT_FILE).exists());
        let pid: u32 = fs::read_to_string(dir.join(LOCK_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn conflicting_append_truncates_the_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        append(&store, (2..=6).map(|i| entry(i, 2)).collect());
        // A new leader overwrites from index 4 with a shorter log.
        append(&store, vec![entry(4, 3)]);
        let state = store.recover().unwrap();
        assert_eq!(index_terms(&state.entries), vec![(2, 2), (3, 2), (4, 3)]);
        assert_eq!(state.entries[2].data, b"4@3".to_vec());
        // Appending right after the end still works.
        append(&store, vec![entry(5, 3)]);
        assert_eq!(store.recover().unwrap().entries.len(), 4);
    }

    #[test]
    fn appends_that_break_the_log_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        append(&store, vec![entry(2, 1), entry(3, 1)]);
        let refuse = |entries: Vec<Entry>| {
            let batch = PersistBatch {
                entries,
                ..Default::default()
            };
            assert!(matches!(store.persist(&batch), Err(Error::Storage { .. })));
        };
        refuse(vec![entry(5, 1)]); // gap after 3
        refuse(vec![entry(1, 1)]); // at the snapshot index
        refuse(vec![entry(4, 1), entry(6, 1)]); // not contiguous
        let state = store.recover().unwrap();
        assert_eq!(index_terms(&state.entries), vec![(2, 1), (3, 1)]);
    }

    #[test]
    fn state_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let hs = hard_state(7, 3, 4);
        let before = {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            store
                .persist(&PersistBatch {
                    entries: (2..=5).map(|i| entry(i, 7)).collect(),
                    hard_state: Some(hs.clone()),
                    apply: (2..=3).map(|i| entry(i, 7)).collect(),
                    ..Default::default()
                })
                .unwrap();
            store.recover().unwrap()
        };
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let after = store.recover().unwrap();
        assert_eq!(after.hard_state, hs);
        assert_eq!(after.applied, 3);
        assert_eq!(after.entries, before.entries);
        assert_eq!(after.snapshot_meta, before.snapshot_meta);
        assert_eq!(
            index_terms(&after.entries),
            (2..=5).map(|i| (i, 7)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn snapshot_replaces_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            append(&store, (2..=8).map(|i| entry(i, 2)).collect());
            let hs = hard_state(3, 0, 6);
            store
                .persist(&PersistBatch {
                    snapshot: Some(snapshot(5, 2)),
                    entries: vec![entry(6, 3)],
                    hard_state: Some(hs),
                    durable: true,
                    ..Default::default()
                })
                .unwrap();
        }
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let state = store.recover().unwrap();
        assert_eq!(state.snapshot_meta.index, 5);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(index_terms(&state.entries), vec![(6, 3)]);
        assert_eq!(state.applied, 5);
    }

    #[test]
    fn the_log_view_matches_raft_at_the_boundaries() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();

        // Fresh node: only the bootstrap snapshot.
        let view = LogView::new(&store.recover().unwrap());
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

        // Snapshot at 5 (term 2) and entries 6..=8 (term 3), read after reopen.
        let hs = hard_state(3, 0, 7);
        store
            .persist(&PersistBatch {
                snapshot: Some(snapshot(5, 2)),
                entries: (6..=8).map(|i| entry(i, 3)).collect(),
                hard_state: Some(hs.clone()),
                durable: true,
                ..Default::default()
            })
            .unwrap();
        drop(store);
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let view = LogView::new(&store.recover().unwrap());
        assert_eq!(view.first_index().unwrap(), 6);
        assert_eq!(view.last_index().unwrap(), 8);
        assert_eq!(view.term(5).unwrap(), 2);
        assert_eq!(view.term(6).unwrap(), 3);
        assert_eq!(view.term(8).unwrap(), 3);
        assert_eq!(
            view.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(
            view.term(9),
            Err(raft::Error::Store(StorageError::Unavailable))
        );
        let got = view.entries(6, 9, None, raft::GetEntriesContext::empty(false));
        assert_eq!(index_terms(&got.unwrap()), vec![(6, 3), (7, 3), (8, 3)]);
        let initial = view.initial_state().unwrap();
        assert_eq!(initial.hard_state, hs);
        assert_eq!(initial.conf_state.voters, vec![1, 2, 3]);
    }

    fn command_entry(index: u64, ops: Vec<KvOp>) -> Entry {
        let cmd = Command {
            max_store_bytes: 1 << 20,
            from_client: true,
            ops,
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
    fn committed_commands_are_applied_with_the_applied_index() {
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
        {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            let written = store
                .persist(&PersistBatch {
                    entries: entries.clone(),
                    hard_state: Some(hard_state(2, 1, 4)),
                    apply: entries.clone(),
                    durable: true,
                    ..Default::default()
                })
                .unwrap();
            let want = entries
                .iter()
                .fold(crate::raft::storage::BOOTSTRAP_HASH, chain_hash);
            assert_eq!(
                (written.applied_index, written.applied_hash),
                (4, Some(want))
            );
            let results = written.applied;
            // The no-op at 3 has no result; the commands do.
            assert_eq!(
                results.iter().map(|r| r.index).collect::<Vec<_>>(),
                vec![2, 4]
            );
            assert_eq!(results[1].context, b"ctx");
            assert!(matches!(results[1].outcome, Outcome::Committed(_)));
        }
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        assert_eq!(store.recover().unwrap().applied, 4);
        let (a, b) = store.read(|t| Ok((t.get("a")?, t.get("b")?))).unwrap();
        assert!(a.value.is_none());
        assert_eq!(b.value.unwrap().modify_index, 4);
        // Applying the same entry again is refused, never done twice.
        let again = PersistBatch {
            apply: vec![command_entry(4, vec![set("b", "3")])],
            ..Default::default()
        };
        assert!(store.persist(&again).is_err());
    }

    #[test]
    fn compaction_drops_the_log_and_reaps_tombstones() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let entries: Vec<Entry> = (2..=20)
            .map(|i| {
                if i % 2 == 0 {
                    command_entry(i, vec![set(&format!("k{i}"), "v")])
                } else {
                    command_entry(
                        i,
                        vec![KvOp::Delete {
                            key: format!("k{}", i - 1),
                        }],
                    )
                }
            })
            .collect();
        store
            .persist(&PersistBatch {
                entries: entries.clone(),
                hard_state: Some(hard_state(2, 1, 20)),
                apply: entries,
                durable: true,
                ..Default::default()
            })
            .unwrap();
        // A compaction whose term does not match the log is refused.
        let bad = PersistBatch {
            compact: Some((15, 9)),
            ..Default::default()
        };
        assert!(store.persist(&bad).is_err());
        store
            .persist(&PersistBatch {
                compact: Some((15, 2)),
                ..Default::default()
            })
            .unwrap();
        let state = store.recover().unwrap();
        assert_eq!(
            (state.snapshot_meta.index, state.snapshot_meta.term),
            (15, 2)
        );
        assert_eq!(state.entries.first().map(|e| e.index), Some(16));
        let (floor, tombs) = store
            .read(|t| Ok((t.state().floor, t.tombstones()?)))
            .unwrap();
        assert_eq!(floor, 15);
        let kept: Vec<u64> = tombs.iter().map(|(_, i)| *i).collect();
        assert_eq!(kept, vec![17, 19]);
    }

    #[test]
    fn a_built_snapshot_installs_the_same_store_elsewhere() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = RedbLogStore::open(src_dir.path(), &identity()).unwrap();
        let entries: Vec<Entry> = (2..=6)
            .map(|i| command_entry(i, vec![set(&format!("key/{i}"), "value")]))
            .collect();
        src.persist(&PersistBatch {
            entries: entries.clone(),
            hard_state: Some(hard_state(2, 1, 6)),
            apply: entries[..4].to_vec(),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        let snap = src.build_snapshot().unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (5, 2)
        );
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);

        let dst_dir = tempfile::tempdir().unwrap();
        let mut other = identity();
        other.node_id = 2;
        let dst = RedbLogStore::open(dst_dir.path(), &other).unwrap();
        dst.persist(&PersistBatch {
            snapshot: Some(snap),
            hard_state: Some(hard_state(2, 0, 5)),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        let keys = |s: &RedbLogStore| s.read(|t| t.keys("", None)).unwrap();
        assert_eq!(keys(&src).value, keys(&dst).value);
        assert_eq!(keys(&dst).value.len(), 4);
        assert_eq!(dst.recover().unwrap().applied, 5);
    }

    #[test]
    fn a_format_1_store_is_upgraded_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            append(&store, (2..=4).map(|i| entry(i, 2)).collect());
        }
        {
            // Turn it back into what the previous build wrote.
            let db = Database::open(tmp.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.remove(KEY_CONF_STATE).unwrap();
                meta.insert(KEY_FORMAT, 1u64.to_le_bytes().as_slice())
                    .unwrap();
            }
            for t in ["kv", "kv_tombstones", "kv_state"] {
                txn.delete_table(redb::TableDefinition::<&str, &[u8]>::new(t))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let state = store.recover().unwrap();
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(state.entries.len(), 3);
        assert!(store.read(|t| t.list("")).unwrap().value.is_empty());
    }

    fn reopen_err(dir: &Path, id: &StoreIdentity) -> Error {
        RedbLogStore::open(dir, id).expect_err("open should be refused")
    }

    #[test]
    fn identity_mismatches_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop(RedbLogStore::open(tmp.path(), &identity()).unwrap());

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
        assert!(matches!(e, Error::DataDirMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains("belongs to node 1, not to node 2"),
            "{e}"
        );

        // Another voter set in the file is no reason to refuse: from the
        // first boot on, the membership lives in Raft.
        let mut grown = identity();
        grown.voters = vec![1, 2, 3, 4];
        RedbLogStore::open(tmp.path(), &grown).unwrap();
    }

    #[test]
    fn second_open_is_refused_while_the_first_is_alive() {
        let tmp = tempfile::tempdir().unwrap();
        let first = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let e = reopen_err(tmp.path(), &identity());
        assert!(matches!(e, Error::DataDirLocked { .. }), "{e}");
        assert_eq!(e.exit_code(), 1);
        let pid = format!("(pid {})", std::process::id());
        assert!(e.to_string().contains(&pid), "{e}");
        assert!(
            e.to_string().contains(&tmp.path().display().to_string()),
            "{e}"
        );
        drop(first);
        RedbLogStore::open(tmp.path(), &identity()).unwrap();
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
            RedbLogStore::open(dir, &identity()),
            Err(Error::StorageCorrupt { .. })
        ));
    }

    #[test]
    fn garbage_file_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(DB_FILE), vec![0x5a; 64 * 1024]).unwrap();
        assert_corrupt(tmp.path());
    }

    #[test]
    fn empty_file_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(DB_FILE), b"").unwrap();
        assert_corrupt(tmp.path());
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            append(&store, (2..=50).map(|i| entry(i, 2)).collect());
        }
        let path = tmp.path().join(DB_FILE);
        let len = fs::metadata(&path).unwrap().len();
        for cut in [len / 2, 4096, 100, 5] {
            let copy = tempfile::tempdir().unwrap();
            let bytes = fs::read(&path).unwrap();
            fs::write(copy.path().join(DB_FILE), &bytes[..cut as usize]).unwrap();
            assert_corrupt(copy.path());
        }
    }

    #[test]
    fn flipped_bytes_are_corrupt_or_refused_never_empty() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
            append(&store, (2..=50).map(|i| entry(i, 2)).collect());
        }
        let path = tmp.path().join(DB_FILE);
        let bytes = fs::read(&path).unwrap();
        let step = (bytes.len() / 97).max(1);
        for at in (0..bytes.len()).step_by(step) {
            let copy = tempfile::tempdir().unwrap();
            let mut damaged = bytes.clone();
            damaged[at] ^= 0xff;
            fs::write(copy.path().join(DB_FILE), &damaged).unwrap();
            match RedbLogStore::open(copy.path(), &identity()) {
                Err(Error::StorageCorrupt { .. }) => {}
                // The byte was unused: the state must then be intact.
                Ok(store) => {
                    let state = store.recover().unwrap();
                    let want: Vec<Entry> = (2..=50).map(|i| entry(i, 2)).collect();
                    assert_eq!(state.entries, want, "byte {at}");
                }
                Err(e) => panic!("byte {at}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn a_redb_file_without_identity_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Database::create(tmp.path().join(DB_FILE)).unwrap());
        assert_corrupt(tmp.path());
    }

    #[test]
    fn commit_outside_the_log_is_refused_not_left_to_raft() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        append(&store, vec![entry(2, 1), entry(3, 1)]);
        for commit in [0, 4] {
            let batch = PersistBatch {
                hard_state: Some(hard_state(1, 0, commit)),
                ..Default::default()
            };
            let e = store.persist(&batch).unwrap_err();
            assert!(matches!(e, Error::Storage { .. }), "{e:?}");
            assert!(
                e.to_string().contains("outside the stored log [1, 3]"),
                "{e}"
            );
        }
        // Nothing of a refused batch is written.
        let batch = PersistBatch {
            entries: vec![entry(4, 1)],
            hard_state: Some(hard_state(1, 0, 9)),
            ..Default::default()
        };
        assert!(store.persist(&batch).is_err());
        let state = store.recover().unwrap();
        assert_eq!(state.entries.len(), 2);
        assert_eq!(state.hard_state.commit, 1);
        // Entries and a commit that covers them, in one batch, are fine.
        let batch = PersistBatch {
            entries: vec![entry(4, 1)],
            hard_state: Some(hard_state(1, 0, 4)),
            ..Default::default()
        };
        store.persist(&batch).unwrap();
        assert_eq!(store.recover().unwrap().hard_state.commit, 4);
        // Applied may not pass the commit index, nor skip an entry.
        let batch = PersistBatch {
            apply: (2..=5).map(|i| entry(i, 1)).collect(),
            ..Default::default()
        };
        let e = store.persist(&batch).unwrap_err();
        assert!(e.to_string().contains("applied index 5"), "{e}");
        let batch = PersistBatch {
            apply: vec![entry(3, 1)],
            ..Default::default()
        };
        let e = store.persist(&batch).unwrap_err();
        assert!(e.to_string().contains("refusing to apply entry 3"), "{e}");
        // A conflicting append may not cut below the commit index.
        let batch = PersistBatch {
            entries: vec![entry(3, 2)],
            ..Default::default()
        };
        assert!(store.persist(&batch).is_err());
        assert_eq!(store.recover().unwrap().entries.len(), 3);
    }

    #[test]
    fn term_and_vote_never_go_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        append(&store, vec![entry(2, 1), entry(3, 1)]);
        let write = |hs: HardState| {
            store.persist(&PersistBatch {
                hard_state: Some(hs),
                durable: true,
                ..Default::default()
            })
        };
        write(hard_state(4, 2, 1)).unwrap();
        // A lower term, or another vote in the same term, is refused as a
        // storage error naming both values; nothing is written.
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
        let e = write(hard_state(4, 0, 1)).unwrap_err();
        assert!(e.to_string().contains("from node 2 to node 0"), "{e}");
        // The same vote again, a first vote in a term, and a new term are fine.
        write(hard_state(4, 2, 2)).unwrap();
        write(hard_state(5, 0, 2)).unwrap();
        write(hard_state(5, 1, 2)).unwrap();
        // An apply batch carries a commit index only: term and vote stay.
        store
            .persist(&PersistBatch {
                commit: Some(3),
                apply: vec![entry(2, 1), entry(3, 1)],
                ..Default::default()
            })
            .unwrap();
        let hs = store.recover().unwrap().hard_state;
        assert_eq!((hs.term, hs.vote, hs.commit), (5, 1, 3));
        let e = store
            .persist(&PersistBatch {
                commit: Some(2),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("lower the stored commit"), "{e}");
    }

    #[test]
    fn a_snapshot_counts_as_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        store
            .persist(&PersistBatch {
                snapshot: Some(snapshot(10, 4)),
                hard_state: Some(hard_state(4, 0, 10)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.recover().unwrap().applied, 10);
    }

    #[test]
    fn leftover_init_file_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(DB_INIT_FILE), b"half written").unwrap();
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        assert_eq!(store.recover().unwrap().applied, 1);
        assert!(!tmp.path().join(DB_INIT_FILE).exists());
    }

    const CHILD_DIR: &str = "QUORUMD_TEST_STORE_CHILD_DIR";
    const CHILD_MODE: &str = "QUORUMD_TEST_STORE_CHILD_MODE";

    /// Runs [`child_process_helper`] in a new process of this test binary.
    fn spawn_child(dir: &Path, mode: &str) -> std::process::Child {
        use std::process::{Command, Stdio};
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "raft::redb_store::tests::child_process_helper",
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
        let store = RedbLogStore::open(Path::new(&dir), &identity()).unwrap();
        match mode.as_str() {
            "hold" => {
                println!("locked");
                // Hold the lock until the parent closes our stdin.
                let _ = std::io::stdin().read_to_string(&mut String::new());
            }
            "crash" => {
                for i in 2..=100 {
                    let hs = hard_state(5, 2, i - 1);
                    store
                        .persist(&PersistBatch {
                            entries: vec![entry(i, 5)],
                            hard_state: Some(hs),
                            durable: true,
                            ..Default::default()
                        })
                        .unwrap();
                }
                println!("persisted");
                // Like kill -9: no destructor runs, redb is not closed.
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
        assert!(
            e.to_string().contains(&format!("(pid {})", child.id())),
            "{e}"
        );
        // The lock died with the process.
        RedbLogStore::open(tmp.path(), &identity()).unwrap();
    }

    #[test]
    fn a_crash_loses_nothing_that_was_persisted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = spawn_child(tmp.path(), "crash");
        wait_for_line(&mut child, "persisted");
        assert!(!child.wait().unwrap().success());
        let store = RedbLogStore::open(tmp.path(), &identity()).unwrap();
        let state = store.recover().unwrap();
        assert_eq!(state.hard_state.term, 5);
        assert_eq!(state.hard_state.vote, 2);
        assert_eq!(state.hard_state.commit, 99);
        assert_eq!(
            index_terms(&state.entries),
            (2..=100).map(|i| (i, 5)).collect::<Vec<_>>()
        );
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
}
