//! The state machine on disk: one redb file per node, `raft.redb` in its
//! data dir.
//!
//! It holds the identity (cluster name, node id, the voter set it was
//! bootstrapped with), the applied state (applied index and term, the
//! running hash of the applied entries, the conf state as of the applied
//! index) and the key-value store itself (see [`crate::store::machine`]).
//! The Raft log and hard state live in the write-ahead log beside it
//! ([`crate::raft::log`]).
//!
//! Rules kept here:
//! - **An entry is applied in the transaction that records it as applied**,
//!   so the state and the applied index never disagree.
//! - **Applying needs no fsync.** An apply transaction commits without one
//!   (redb keeps it in memory, visible to readers); a periodic
//!   [`StateStore::checkpoint`] makes everything applied so far durable in
//!   one write. After a crash the store is as of the last checkpoint, and the
//!   log, which keeps every entry after it, replays the rest. So a put
//!   rewrites the B-tree pages it touched once per checkpoint, not once per
//!   put.
//! - The first boot builds `raft.redb` under a temporary name and renames it
//!   into place only once the identity and the initial state are durable: an
//!   existing `raft.redb` is always complete, and an empty, truncated or
//!   foreign file is reported as damaged, never started over.
//! - The file's page checksums are verified on every open.
//! - A data dir of another cluster or node id is refused: reusing Raft state
//!   under a different identity can elect two leaders in one term.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;
use protobuf::Message;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::raft::storage::{chain_hash, Applied, Written};
use crate::store::machine::{self, ReadTables, Tables};
use crate::store::{Command, Outcome};

/// Name of the redb file inside the node's data dir.
pub const DB_FILE: &str = "raft.redb";
/// Where the first boot builds the store before renaming it to [`DB_FILE`].
pub const DB_INIT_FILE: &str = "raft.redb.init";
/// redb's page cache, which also holds what applies wrote since the last
/// checkpoint. Small on purpose: the node targets a few MiB of RSS.
const CACHE_BYTES: usize = 1024 * 1024;
/// Version of the layout below. Version 2 kept the Raft log and hard state
/// in this file; version 1 had no key-value store. Both are upgraded in
/// place on open.
const FORMAT_VERSION: u64 = 3;

/// Single values: identity and applied state.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Format 2's Raft entries, keyed by index (read once, to upgrade).
const LEGACY_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

const KEY_FORMAT: &str = "format_version";
const KEY_CLUSTER: &str = "cluster";
const KEY_NODE_ID: &str = "node_id";
const KEY_VOTERS: &str = "voters";
/// Where the state machine stands: the applied index, its term and the
/// running hash of the applied entries (`chain_hash`), which a store
/// written by an older build lacks until it installs a snapshot. One record,
/// so that an apply writes one row beside its keys.
const KEY_APPLIED_STATE: &str = "applied_state";
/// Format 2: the applied index alone, and the hash beside it.
const LEGACY_APPLIED: &str = "applied";
const LEGACY_APPLIED_HASH: &str = "applied_hash";
const KEY_CONF_STATE: &str = "conf_state";
/// The cluster id a joining node learned from its handshake (empty before);
/// once the store holds the cluster's own record, that one counts.
const KEY_CLUSTER_ID: &str = "cluster_id";
/// Format 2: the hard state and the log's snapshot point.
const LEGACY_HARD_STATE: &str = "hard_state";
const LEGACY_SNAPSHOT_META: &str = "snapshot_meta";
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

/// Where the state machine stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedState {
    /// The highest applied index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The running hash of the applied entries, if known.
    pub hash: Option<u64>,
    /// The membership as of the applied index.
    pub conf_state: ConfState,
}

/// What a format-2 store held of the Raft log, to move into the log.
#[derive(Debug, Clone, Default)]
pub struct LegacyLog {
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// The log starts after this (index, term).
    pub start: (u64, u64),
    /// The entries after it.
    pub entries: Vec<Entry>,
}

/// One apply batch: committed entries, a received snapshot, a compaction.
#[derive(Debug, Default, Clone)]
pub struct ApplyBatch {
    /// A snapshot received from the leader: it replaces the whole store.
    /// Written durably, before the log restarts after it.
    pub snapshot: Option<Snapshot>,
    /// Committed entries, in order, right after the applied index.
    pub apply: Vec<Entry>,
    /// The conf state after the membership changes among `apply`.
    pub conf_state: Option<ConfState>,
    /// The membership changes among `apply` that raft accepted: their
    /// context's records are applied to the store with them.
    pub accepted_conf: Vec<u64>,
    /// The log was compacted to this index: reap tombstones up to it.
    pub reap: Option<u64>,
    /// The entries among `apply` whose client this node answers: only their
    /// reads are built (every other replica only counts them).
    pub answer: Vec<u64>,
}

impl ApplyBatch {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.apply.is_empty()
            && self.conf_state.is_none()
            && self.reap.is_none()
    }

    /// Bytes of entry data it carries: large batches are applied off the
    /// executor.
    pub fn data_bytes(&self) -> usize {
        self.apply
            .iter()
            .map(|e| e.data.len() + e.context.len())
            .sum::<usize>()
            + self.snapshot.as_ref().map_or(0, |s| s.get_data().len())
    }

    /// True if applying may scan a prefix or build a read's answer, work
    /// that grows with the store rather than with the entry: such a batch
    /// is applied off the executor, whatever its size.
    pub fn may_scan(&self) -> bool {
        use crate::store::command::{HINT_READS, HINT_TREE};
        self.apply.iter().any(|e| {
            let hints = Command::hints_of(&e.data);
            hints & HINT_TREE != 0 || (hints & HINT_READS != 0 && self.answer.contains(&e.index))
        })
    }
}

/// See the module documentation.
pub struct StateStore {
    dir: PathBuf,
    file: PathBuf,
    db: Database,
    /// The applied state as the last apply committed it: applies run one at
    /// a time (redb has one writer), and reading it back from the file each
    /// time costs more than the rest of a small apply.
    applied: std::sync::Mutex<Option<AppliedState>>,
    /// Where committed write transactions are counted, once the node's
    /// metrics are known (see [`StateStore::count_transactions`]).
    transactions: std::sync::OnceLock<Counter>,
    /// Whether a read of one key may run on the executor's thread
    /// ([`StateStore::reads_inline`]).
    point_reads: PointReads,
}

/// A point read that took this long or more sends the next ones to worker
/// threads (see [`StateStore::reads_inline`]).
const SLOW_POINT_READ: std::time::Duration = std::time::Duration::from_millis(1);
/// Point reads in a row under [`SLOW_POINT_READ`] before they run on the
/// executor's thread again.
const FAST_POINT_READS: u32 = 8;

/// See [`StateStore::reads_inline`].
#[derive(Debug, Default)]
struct PointReads {
    /// A write transaction runs off the executor (a checkpoint, a large
    /// apply, a snapshot's install).
    writing_elsewhere: std::sync::atomic::AtomicBool,
    /// Point reads in a row that took less than [`SLOW_POINT_READ`], up
    /// to [`FAST_POINT_READS`].
    fast: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// True if `dir` holds a store (a `raft.redb`).
    pub fn exists(dir: &Path) -> Result<bool> {
        let file = dir.join(DB_FILE);
        file.try_exists()
            .map_err(|e| storage_err(dir, format!("cannot look for {}", file.display()), e))
    }

    /// First boot: writes the identity and `applied` durably under a
    /// temporary name, then renames the file into place and syncs the dir.
    pub fn create(
        dir: &Path,
        identity: &StoreIdentity,
        applied: &AppliedState,
        cluster_id: &str,
    ) -> Result<()> {
        let init = dir.join(DB_INIT_FILE);
        let file = dir.join(DB_FILE);
        // A leftover from a crash during an earlier first boot: nothing in
        // it was ever acknowledged, so it is safe to start over.
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
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let voters: Vec<u8> = sorted(&identity.voters)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let rows: [(&str, Vec<u8>); 7] = [
                (KEY_FORMAT, FORMAT_VERSION.to_le_bytes().to_vec()),
                (KEY_CLUSTER, identity.cluster.as_bytes().to_vec()),
                (KEY_NODE_ID, identity.node_id.to_le_bytes().to_vec()),
                (KEY_VOTERS, voters),
                (KEY_APPLIED_STATE, encode_applied(applied)),
                (KEY_CONF_STATE, encode(&applied.conf_state)),
                (KEY_CLUSTER_ID, cluster_id.as_bytes().to_vec()),
            ];
            for (key, value) in &rows {
                put(&mut meta, key, value).map_err(|e| err(e.into()))?;
            }
        }
        machine::create_tables(&txn).map_err(err)?;
        txn.commit().map_err(|e| err(e.into()))?;
        db.close().map_err(|e| err(e.into()))?;
        fs::rename(&init, &file)
            .map_err(|e| storage_err(dir, format!("cannot rename {}", init.display()), e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| storage_err(dir, "cannot sync the data dir", e))?;
        // Make the dir's own entry durable too, or a power cut could lose
        // the whole dir after the node voted. Best effort: the parent may be
        // searchable but not readable.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Opens the store in `dir` (the caller holds the dir's lock) and checks
    /// that it belongs to `identity`. A store of format 2, which held the
    /// Raft log too, comes back with that log: the caller moves it into the
    /// write-ahead log, then calls [`StateStore::finish_upgrade`].
    ///
    /// Errors: [`Error::DataDirMismatch`] for another cluster or node,
    /// [`Error::StorageCorrupt`] if `raft.redb` is damaged, and
    /// [`Error::Storage`] for any other failure.
    pub fn open(dir: &Path, identity: &StoreIdentity) -> Result<(StateStore, Option<LegacyLog>)> {
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
        let store = StateStore {
            dir: dir.to_path_buf(),
            file,
            db,
            applied: std::sync::Mutex::new(None),
            transactions: std::sync::OnceLock::new(),
            point_reads: PointReads::default(),
        };
        guarded(&store.file, || store.upgrade_from_1())??;
        store.check_identity(identity)?;
        let legacy = guarded(&store.file, || store.legacy_log())??;
        Ok((store, legacy))
    }

    /// The identity stored in `dir`'s store, read with every page checksum
    /// verified (for `quorumd check --data`, on a copy of the dir).
    pub fn stored_identity(dir: &Path) -> Result<StoreIdentity> {
        let file = dir.join(DB_FILE);
        let db = guarded(&file, || {
            Database::builder()
                .set_check_integrity_on_open(true)
                .open(&file)
        })?
        .map_err(|e| redb_err(dir, &file, "cannot open", e))?;
        let store = StateStore {
            dir: dir.to_path_buf(),
            file,
            db,
            applied: std::sync::Mutex::new(None),
            transactions: std::sync::OnceLock::new(),
            point_reads: PointReads::default(),
        };
        guarded(&store.file, || store.read_identity())?
    }

    /// Counts every write transaction this store commits from now on in
    /// `counter`, so that an operator can see what a write costs the file
    /// (an apply, a checkpoint). The first counter given is kept.
    pub fn count_transactions(&self, counter: Counter) {
        let _ = self.transactions.set(counter);
    }

    fn committed(&self) {
        if let Some(c) = self.transactions.get() {
            c.inc();
        }
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
        // from the first boot on, the membership lives in Raft.
        Ok(())
    }

    fn read_identity(&self) -> Result<StoreIdentity> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = txn.open_table(META).map_err(|e| match e {
            redb::TableError::TableDoesNotExist(_) => self.corrupt("it has no identity record"),
            e => self.err("read", e),
        })?;
        let get = |key: &str| self.get(&meta, key);
        let format = self.decode_u64(KEY_FORMAT, &get(KEY_FORMAT)?)?;
        if format != FORMAT_VERSION && format != 2 {
            return Err(Error::Storage {
                dir: self.dir.clone(),
                reason: format!(
                    "{} has format version {format}, this build reads versions 1 to \
                     {FORMAT_VERSION}",
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

    fn get(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Vec<u8>> {
        meta.get(key)
            .map_err(|e| self.err("read", e))?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| self.corrupt(format!("the \"{key}\" record is missing")))
    }

    /// Where the state machine stands, as made durable or applied since.
    pub fn applied_state(&self) -> Result<AppliedState> {
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
            self.read_applied(&meta)
        })?
    }

    fn read_applied(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<AppliedState> {
        let raw = self.get(meta, KEY_APPLIED_STATE)?;
        let (index, term, hash) = decode_applied(&raw).ok_or_else(|| {
            self.corrupt(format!(
                "the \"{KEY_APPLIED_STATE}\" record has a bad length"
            ))
        })?;
        Ok(AppliedState {
            index,
            term,
            hash,
            conf_state: self.decode(KEY_CONF_STATE, &self.get(meta, KEY_CONF_STATE)?)?,
        })
    }

    /// Applies one batch in one transaction: installs a snapshot, applies
    /// committed entries, reaps tombstones. Without a snapshot it is not
    /// synced (see the module documentation); with one, it is durable on
    /// return. An `Err` is fatal: nothing that was not written may be
    /// acknowledged.
    pub fn apply(&self, batch: &ApplyBatch) -> Result<Written> {
        guarded(&self.file, || self.write_batch(batch))?
    }

    fn write_batch(&self, batch: &ApplyBatch) -> Result<Written> {
        let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        let durability = if batch.snapshot.is_some() {
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
            let mut kv = Tables::open(&txn).map_err(|e| self.err("write", e))?;
            let cached = self
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let stored = match cached {
                Some(a) => a,
                None => self.read_applied(&meta)?,
            };
            let mut applied = stored.clone();

            if let Some(snapshot) = &batch.snapshot {
                // The snapshot replaces the whole store.
                let m = snapshot.get_metadata();
                let header = crate::store::snapshot::install(&mut kv, snapshot.get_data())
                    .map_err(|e| self.err("install a snapshot into", e))?;
                applied = AppliedState {
                    index: m.index,
                    term: m.term,
                    hash: header.applied_hash,
                    conf_state: m.get_conf_state().clone(),
                };
            }

            for entry in &batch.apply {
                if entry.index != applied.index + 1 {
                    return Err(Error::Storage {
                        dir: self.dir.clone(),
                        reason: format!(
                            "refusing to apply entry {} when the applied index is {}",
                            entry.index, applied.index
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
                    if let Some(v) = Command::newer_version(data) {
                        return Err(Error::Storage {
                            dir: self.dir.clone(),
                            reason: format!(
                                "entry {} was written by a newer release of quorumd (command \
                                 version {v}; this one reads up to {}): upgrade this node",
                                entry.index,
                                crate::store::command::COMMAND_VERSION
                            ),
                        });
                    }
                    let (outcome, touched) = match Command::decode(data) {
                        Ok(cmd) => kv
                            .apply(entry.index, &cmd, batch.answer.contains(&entry.index))
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
                applied.index = entry.index;
                applied.term = entry.term;
                applied.hash = applied.hash.map(|h| chain_hash(h, entry));
            }
            if let Some(cs) = &batch.conf_state {
                applied.conf_state = cs.clone();
            }
            if let Some(index) = batch.reap {
                if index > applied.index {
                    return Err(Error::Storage {
                        dir: self.dir.clone(),
                        reason: format!(
                            "refusing to reap tombstones up to {index}: applied is only {}",
                            applied.index
                        ),
                    });
                }
                kv.reap_tombstones(index)
                    .map_err(|e| self.err("write", e))?;
            }

            let w = |e| self.err("write", e);
            if (applied.index, applied.term, applied.hash)
                != (stored.index, stored.term, stored.hash)
            {
                put(&mut meta, KEY_APPLIED_STATE, &encode_applied(&applied)).map_err(w)?;
            }
            if applied.conf_state != stored.conf_state {
                put(&mut meta, KEY_CONF_STATE, &encode(&applied.conf_state)).map_err(w)?;
            }
            written = (
                Written {
                    applied: results,
                    applied_index: applied.index,
                    applied_hash: applied.hash,
                },
                applied,
            );
        }
        txn.commit().map_err(|e| self.err("commit", e))?;
        self.committed();
        let (written, applied) = written;
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(applied);
        Ok(written)
    }

    /// The bytes the store's file occupies on disk (its allocated blocks,
    /// as `du` counts them); 0 if it cannot be read.
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.file).map_or(0, |m| m.blocks() * 512)
    }

    /// Makes everything applied so far durable (one fsync); returns the
    /// applied index that is now durable.
    pub fn checkpoint(&self) -> Result<u64> {
        guarded(&self.file, || {
            let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err("write", e))?;
            let applied = {
                let meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
                self.read_applied(&meta)?.index
            };
            txn.commit().map_err(|e| self.err("commit", e))?;
            self.committed();
            Ok(applied)
        })?
    }

    /// Upgrades a store written by the first build (format 1: no key-value
    /// store yet) to format 2, in place. Nothing of it is lost.
    fn upgrade_from_1(&self) -> Result<()> {
        if self.format()? != Some(1) {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err("write", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
            let raw = self.get(&meta, LEGACY_SNAPSHOT_META)?;
            let snapshot_meta: SnapshotMetadata = self.decode(LEGACY_SNAPSHOT_META, &raw)?;
            put(
                &mut meta,
                KEY_CONF_STATE,
                &encode(snapshot_meta.get_conf_state()),
            )
            .map_err(|e| self.err("write", e))?;
            put(&mut meta, KEY_FORMAT, &2u64.to_le_bytes()).map_err(|e| self.err("write", e))?;
        }
        machine::create_tables(&txn).map_err(|e| self.err("write", e))?;
        txn.commit().map_err(|e| self.err("commit", e))?;
        self.committed();
        log::info!("upgraded {} from format 1 to format 2", self.file.display());
        Ok(())
    }

    fn format(&self) -> Result<Option<u64>> {
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let Ok(meta) = txn.open_table(META) else {
            return Ok(None); // reported by the identity check
        };
        match meta.get(KEY_FORMAT).map_err(|e| self.err("read", e))? {
            Some(v) => Ok(Some(self.decode_u64(KEY_FORMAT, v.value())?)),
            None => Ok(None),
        }
    }

    /// A format-2 store's Raft log, hard state and snapshot point.
    fn legacy_log(&self) -> Result<Option<LegacyLog>> {
        if self.format()? != Some(2) {
            return Ok(None);
        }
        let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
        let hard_state: HardState =
            self.decode(LEGACY_HARD_STATE, &self.get(&meta, LEGACY_HARD_STATE)?)?;
        let snap: SnapshotMetadata = self.decode(
            LEGACY_SNAPSHOT_META,
            &self.get(&meta, LEGACY_SNAPSHOT_META)?,
        )?;
        let mut entries = Vec::new();
        if let Ok(table) = txn.open_table(LEGACY_ENTRIES) {
            let rows = table
                .range(snap.index + 1..)
                .map_err(|e| self.err("read", e))?;
            for (expect, row) in (snap.index + 1..).zip(rows) {
                let (key, value) = row.map_err(|e| self.err("read", e))?;
                let entry: Entry = self.decode("entry", value.value())?;
                if key.value() != expect || entry.index != expect {
                    return Err(self.corrupt(format!(
                        "the log has a gap or a bad record: expected entry {expect}, found key \
                         {} holding entry {}",
                        key.value(),
                        entry.index
                    )));
                }
                entries.push(entry);
            }
        }
        Ok(Some(LegacyLog {
            hard_state,
            start: (snap.index, snap.term),
            entries,
        }))
    }

    /// Finishes the upgrade from format 2 once the log was moved out: the
    /// term of the applied entry is recorded, the old log dropped.
    pub fn finish_upgrade(&self, legacy: &LegacyLog) -> Result<()> {
        guarded(&self.file, || {
            let mut txn = self.db.begin_write().map_err(|e| self.err("write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err("write", e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| self.err("write", e))?;
                let applied = self.decode_u64(LEGACY_APPLIED, &self.get(&meta, LEGACY_APPLIED)?)?;
                let hash = meta
                    .get(LEGACY_APPLIED_HASH)
                    .map_err(|e| self.err("read", e))?
                    .map(|v| self.decode_u64(LEGACY_APPLIED_HASH, v.value()))
                    .transpose()?;
                let term = if applied == legacy.start.0 {
                    legacy.start.1
                } else {
                    legacy
                        .entries
                        .iter()
                        .find(|e| e.index == applied)
                        .map(|e| e.term)
                        .ok_or_else(|| {
                            self.corrupt(format!("applied entry {applied} is not in the log"))
                        })?
                };
                let w = |e| self.err("write", e);
                let state = AppliedState {
                    index: applied,
                    term,
                    hash,
                    conf_state: ConfState::default(),
                };
                put(&mut meta, KEY_APPLIED_STATE, &encode_applied(&state)).map_err(w)?;
                meta.remove(LEGACY_APPLIED).map_err(w)?;
                meta.remove(LEGACY_APPLIED_HASH).map_err(w)?;
                put(&mut meta, KEY_FORMAT, &FORMAT_VERSION.to_le_bytes()).map_err(w)?;
                meta.remove(LEGACY_HARD_STATE).map_err(w)?;
                meta.remove(LEGACY_SNAPSHOT_META).map_err(w)?;
            }
            match txn.delete_table(LEGACY_ENTRIES) {
                Ok(_) => {}
                Err(e) => return Err(self.err("write", e)),
            }
            txn.commit().map_err(|e| self.err("commit", e))?;
            self.committed();
            log::info!(
                "upgraded {} to format {FORMAT_VERSION}: the Raft log moved to the write-ahead log",
                self.file.display()
            );
            Ok(())
        })?
    }

    /// The cluster id a joining node learned from its handshake, if any.
    pub fn learned_cluster_id(&self) -> Result<Option<String>> {
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

    /// Runs a query on the store as it is now. Blocking: call it off the
    /// executor.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTables) -> machine::Result<T>) -> Result<T> {
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let tables = ReadTables::open(&txn).map_err(|e| self.err("read", e))?;
            f(&tables).map_err(|e| self.err("read", e))
        })?
    }

    /// True if a read of one key may run on the executor's thread: no
    /// write transaction runs on another thread, and each of the last
    /// 8 point reads (`FAST_POINT_READS`) took less than 1 ms
    /// (`SLOW_POINT_READ`).
    /// Such a read is one walk down a B-tree, cheaper than the hop to a
    /// worker thread and back. But redb's reads wait for a write that grows
    /// the file (its fsync), and for a checkpoint writing out pages; and a
    /// cold page (after a restart, on an SD card) or a large value takes
    /// longer. Then the executor's thread, which runs Raft, would wait too.
    pub fn reads_inline(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.writing_elsewhere() && self.point_reads.fast.load(Relaxed) >= FAST_POINT_READS
    }

    /// True while a write transaction runs off the executor (see
    /// [`StateStore::set_writing_elsewhere`]).
    pub fn writing_elsewhere(&self) -> bool {
        self.point_reads
            .writing_elsewhere
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes how long a point read took, wherever it ran.
    pub fn note_point_read(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let fast = &self.point_reads.fast;
        if took >= SLOW_POINT_READ {
            fast.store(0, Relaxed);
        } else if fast.load(Relaxed) < FAST_POINT_READS {
            fast.fetch_add(1, Relaxed);
        }
    }

    /// Set while a write transaction runs off the executor: point reads
    /// then go to worker threads. Set and cleared on the executor's thread,
    /// where inline reads run, so none is under way when it changes.
    pub fn set_writing_elsewhere(&self, on: bool) {
        self.point_reads
            .writing_elsewhere
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Builds a snapshot of the store at the applied index, for a follower
    /// that is behind the compacted log. Blocking: call it off the executor.
    pub fn build_snapshot(&self) -> Result<Snapshot> {
        guarded(&self.file, || {
            let txn = self.db.begin_read().map_err(|e| self.err("read", e))?;
            let meta = txn.open_table(META).map_err(|e| self.err("read", e))?;
            let applied = self.read_applied(&meta)?;
            let tables = ReadTables::open(&txn).map_err(|e| self.err("read", e))?;
            let data = crate::store::snapshot::build(&tables, applied.hash)
                .map_err(|e| self.err("read", e))?;
            let mut snapshot = Snapshot::default();
            snapshot.set_data(data.into());
            let m = snapshot.mut_metadata();
            m.index = applied.index;
            m.term = applied.term;
            m.set_conf_state(applied.conf_state);
            Ok(snapshot)
        })?
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

// The replica moves the store into `runtime::unblock`.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<StateStore>();
};

/// Said with every identity mismatch that a wrong flag can cause.
const WRONG_DIR_ADVICE: &str = "Point --data-dir at this node's own data dir, \
    or use the cluster file this data dir was created with.";
/// Said with every identity mismatch: the tempting fix is the unsafe one.
const WIPE_WARNING: &str = "Do not wipe the data dir to reuse a node id; that is unsafe in \
    Raft: a node that forgets its vote and log can help elect two leaders in one term and lose committed \
    entries. To replace a lost node, give the new box a new id: `quorumd member replace`.";

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

pub(crate) fn storage_err(dir: &Path, what: impl std::fmt::Display, e: std::io::Error) -> Error {
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

/// The applied-state record: index, term, then a flag and the hash.
fn encode_applied(a: &AppliedState) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.extend_from_slice(&a.index.to_le_bytes());
    out.extend_from_slice(&a.term.to_le_bytes());
    out.push(u8::from(a.hash.is_some()));
    out.extend_from_slice(&a.hash.unwrap_or(0).to_le_bytes());
    out
}

fn decode_applied(raw: &[u8]) -> Option<(u64, u64, Option<u64>)> {
    if raw.len() != 25 || raw[16] > 1 {
        return None;
    }
    let n = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8"));
    Some((n(0), n(8), (raw[16] == 1).then(|| n(17))))
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Writes a format-2 store (the previous layout), for the upgrade tests.
#[cfg(test)]
pub(crate) fn write_format_2(
    dir: &Path,
    identity: &StoreIdentity,
    log: &LegacyLog,
    applied: u64,
    conf_state: &ConfState,
) {
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        let mut snap = SnapshotMetadata {
            index: log.start.0,
            term: log.start.1,
            ..Default::default()
        };
        snap.set_conf_state(conf_state.clone());
        let voters: Vec<u8> = identity
            .voters
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let rows: [(&str, Vec<u8>); 9] = [
            (KEY_FORMAT, 2u64.to_le_bytes().to_vec()),
            (KEY_CLUSTER, identity.cluster.as_bytes().to_vec()),
            (KEY_NODE_ID, identity.node_id.to_le_bytes().to_vec()),
            (KEY_VOTERS, voters),
            (LEGACY_HARD_STATE, encode(&log.hard_state)),
            (LEGACY_SNAPSHOT_META, encode(&snap)),
            (LEGACY_APPLIED, applied.to_le_bytes().to_vec()),
            (KEY_CONF_STATE, encode(conf_state)),
            (KEY_CLUSTER_ID, Vec::new()),
        ];
        for (k, v) in &rows {
            meta.insert(*k, v.as_slice()).unwrap();
        }
        let mut entries = txn.open_table(LEGACY_ENTRIES).unwrap();
        for e in &log.entries {
            entries.insert(e.index, encode(e).as_slice()).unwrap();
        }
    }
    machine::create_tables(&txn).unwrap();
    txn.commit().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::NodeStorage;

    fn identity() -> StoreIdentity {
        StoreIdentity {
            cluster: "cluster3".to_string(),
            node_id: 1,
            voters: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_format_1_store_is_upgraded_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = |i| Entry {
            index: i,
            term: 2,
            ..Default::default()
        };
        let legacy = LegacyLog {
            hard_state: HardState {
                term: 2,
                commit: 3,
                ..Default::default()
            },
            start: (1, 1),
            entries: (2..=4).map(entry).collect(),
        };
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        write_format_2(tmp.path(), &identity(), &legacy, 1, &cs);
        {
            // Turn it back into what the first build wrote.
            let db = Database::open(tmp.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.remove(KEY_CONF_STATE).unwrap();
                meta.insert(KEY_FORMAT, 1u64.to_le_bytes().as_slice())
                    .unwrap();
            }
            for t in ["kv", "kv_tombstones", "kv_state"] {
                txn.delete_table(TableDefinition::<&str, &[u8]>::new(t))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let s = NodeStorage::open(tmp.path(), &identity()).unwrap();
        assert_eq!(s.recovered.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.recovered.entries.len(), 3);
        assert!(s
            .state
            .read(|t| t.list("", u64::MAX))
            .unwrap()
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn every_committed_write_transaction_is_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let s = NodeStorage::open(tmp.path(), &identity()).unwrap();
        let counter = Counter::default();
        s.state.count_transactions(counter.clone());
        let applied = s.state.applied_state().unwrap().index;
        let entry = Entry {
            index: applied + 1,
            term: 1,
            ..Default::default()
        };
        s.state
            .apply(&ApplyBatch {
                apply: vec![entry],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(counter.get(), 1, "one apply, one transaction");
        assert_eq!(s.state.checkpoint().unwrap(), applied + 1);
        assert_eq!(counter.get(), 2, "a checkpoint is one more");
        // A refused batch commits nothing.
        s.state
            .apply(&ApplyBatch {
                apply: vec![Entry {
                    index: applied + 5,
                    term: 1,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(counter.get(), 2);
    }

    #[test]
    fn point_reads_run_inline_only_while_quick_and_no_write_runs_elsewhere() {
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let s = NodeStorage::open(tmp.path(), &identity()).unwrap();
        let store = &s.state;
        // Inline only from the last of FAST_POINT_READS quick reads on.
        let quick_reads_bring_it_back = || {
            for _ in 0..FAST_POINT_READS - 1 {
                store.note_point_read(Duration::from_micros(20));
                assert!(!store.reads_inline());
            }
            store.note_point_read(Duration::from_micros(20));
            assert!(store.reads_inline());
        };
        // Not before it has seen quick reads.
        assert!(!store.reads_inline());
        quick_reads_bring_it_back();
        // Not while a checkpoint or a large apply runs on a worker.
        store.set_writing_elsewhere(true);
        assert!(!store.reads_inline());
        store.set_writing_elsewhere(false);
        assert!(store.reads_inline());
        // One slow read sends the next ones away until enough are quick.
        store.note_point_read(SLOW_POINT_READ);
        assert!(!store.reads_inline());
        quick_reads_bring_it_back();
    }
}
