//! The state machine: KV tables in the node's redb file, the apply step, and
//! the queries.
//!
//! Three tables hold the store, beside the Raft tables of the redb store:
//!
//! | table | key | value |
//! |---|---|---|
//! | `kv` | the key | a [`Record`]: flags, create/modify/lock index, value |
//! | `kv_tombstones` | a deleted key | the index of the delete |
//! | `kv_state` | `index`, `bytes`, `floor` | the last index that wrote the store, its size, and the index up to which tombstones were reaped |
//!
//! [`Tables::apply`] runs inside the redb store's write transaction, so the effect of
//! an entry and the applied index that records it commit together.

use std::collections::BTreeMap;

use redb::{AccessGuard, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::store::command::{Command, KvOp, ReadLimits};
use crate::store::is_reserved;

/// Live keys and their records.
pub const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Deleted keys and the index of their delete.
pub const TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("kv_tombstones");
/// The store's counters.
pub const STATE: TableDefinition<&str, u64> = TableDefinition::new("kv_state");

const STATE_INDEX: &str = "index";
const STATE_BYTES: &str = "bytes";
const STATE_FLOOR: &str = "floor";

/// A storage failure while applying or reading. Fatal to the replica.
pub type Result<T> = std::result::Result<T, redb::Error>;

/// One key's stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Consul's opaque flags.
    pub flags: u64,
    /// The index of the entry that created the key.
    pub create_index: u64,
    /// The index of the entry that last wrote it.
    pub modify_index: u64,
    /// Times a session acquired it.
    pub lock_index: u64,
    /// The session that holds it; empty when free.
    pub session: String,
    /// The value.
    pub value: Vec<u8>,
}

const RECORD_HEADER: usize = 32;

/// Set in the stored `lock_index` when a session holds the key: a u16
/// length and the session id follow the header. Records written before
/// sessions never have it, so they read as free.
const HELD_BIT: u64 = 1 << 63;

/// Splits a stored record: the four numbers (lock index without
/// [`HELD_BIT`]), the session, and where the value starts.
fn split_record(bytes: &[u8]) -> std::result::Result<([u64; 4], &str, usize), String> {
    if bytes.len() < RECORD_HEADER {
        return Err(format!("a record of {} bytes is too short", bytes.len()));
    }
    let n = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
    let mut nums = [n(0), n(1), n(2), n(3)];
    if nums[3] & HELD_BIT == 0 {
        return Ok((nums, "", RECORD_HEADER));
    }
    nums[3] &= !HELD_BIT;
    let Some(len) = bytes.get(RECORD_HEADER..RECORD_HEADER + 2) else {
        return Err("a held record has no session length".into());
    };
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let start = RECORD_HEADER + 2;
    let Some(session) = bytes.get(start..start + len) else {
        return Err("a held record's session is cut short".into());
    };
    let session =
        std::str::from_utf8(session).map_err(|_| "a held record's session is not UTF-8")?;
    Ok((nums, session, start + len))
}

impl Record {
    /// The stored form: four little-endian u64s, then the value.
    pub fn encode(&self) -> Vec<u8> {
        let held = !self.session.is_empty();
        let mut out = Vec::with_capacity(RECORD_HEADER + 2 + self.session.len() + self.value.len());
        let lock = if held {
            self.lock_index | HELD_BIT
        } else {
            self.lock_index
        };
        for n in [self.flags, self.create_index, self.modify_index, lock] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        if held {
            out.extend_from_slice(&(self.session.len() as u16).to_le_bytes());
            out.extend_from_slice(self.session.as_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Record, String> {
        let ([flags, create_index, modify_index, lock_index], session, at) = split_record(bytes)?;
        Ok(Record {
            flags,
            create_index,
            modify_index,
            lock_index,
            session: session.to_string(),
            value: bytes[at..].to_vec(),
        })
    }

    fn entry(&self, key: &str, with_value: bool) -> KvEntry {
        KvEntry {
            key: key.to_string(),
            value: with_value.then(|| self.value.clone()),
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.clone(),
        }
    }
}

/// The size a key counts against `max_store_bytes`: its key and value. The
/// cluster's own records (under the reserved prefix) do not count, so a full
/// store never blocks a membership change.
pub(crate) fn size_of(key: &str, record: &Record) -> u64 {
    if is_reserved(key) {
        return 0;
    }
    (key.len() + record.value.len()) as u64
}

/// A key's entry as the API shows it (Consul's `DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    /// `None` where Consul answers `null`: in write results.
    pub value: Option<Vec<u8>>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding the key; empty when free.
    pub session: String,
}

/// Why one operation of a transaction failed (Consul's `TxnError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    /// The position of the op in the transaction.
    pub op_index: usize,
    /// What went wrong, in Consul's words.
    pub what: String,
}

/// What applying (or evaluating) a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every op succeeded; the results of the ops that have one, in order.
    Committed(Vec<KvEntry>),
    /// A check failed: nothing was written.
    RolledBack(Vec<TxnError>),
    /// The store would grow past the cap: nothing was written.
    QuotaExceeded { size: u64, limit: u64 },
    /// The entry's data could not be read: nothing was written.
    Invalid(String),
}

/// What a write changed, for blocking queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// One key was written or deleted.
    Key(String),
    /// Keys under this prefix may have been deleted.
    Prefix(String),
}

impl Touched {
    /// True if a query of `key` (or of the prefix `key`, if `prefix`) may see
    /// this change.
    pub fn affects(&self, key: &str, prefix: bool) -> bool {
        match (self, prefix) {
            (Touched::Key(k), false) => k == key,
            (Touched::Key(k), true) => k.starts_with(key),
            (Touched::Prefix(p), false) => key.starts_with(p.as_str()),
            (Touched::Prefix(p), true) => key.starts_with(p.as_str()) || p.starts_with(key),
        }
    }
}

/// The store's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreState {
    /// The last index that wrote the store (Consul's table index).
    pub index: u64,
    /// The size of every key and value.
    pub bytes: u64,
    /// Tombstones at or below this index were reaped.
    pub floor: u64,
}

fn read_state(t: &impl ReadableTable<&'static str, u64>) -> Result<StoreState> {
    let get = |k: &str| -> Result<u64> { Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    Ok(StoreState {
        index: get(STATE_INDEX)?,
        bytes: get(STATE_BYTES)?,
        floor: get(STATE_FLOOR)?,
    })
}

fn write_state(t: &mut Table<&'static str, u64>, s: StoreState) -> Result<()> {
    t.insert(STATE_INDEX, s.index)?;
    t.insert(STATE_BYTES, s.bytes)?;
    t.insert(STATE_FLOOR, s.floor)?;
    Ok(())
}

fn corrupt(what: impl std::fmt::Display) -> redb::Error {
    redb::Error::Corrupted(format!("kv table: {what}"))
}

fn get_record(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>> {
    match kv.get(key)? {
        None => Ok(None),
        Some(v) => Record::decode(v.value())
            .map(Some)
            .map_err(|e| corrupt(format!("key {key:?}: {e}"))),
    }
}

/// The next stored row under `prefix`, if any.
#[allow(clippy::type_complexity)]
fn next_row<'r>(
    range: &mut redb::Range<'r, &'static str, &'static [u8]>,
    prefix: &str,
) -> Result<
    Option<(
        AccessGuard<'r, &'static str>,
        AccessGuard<'r, &'static [u8]>,
    )>,
> {
    match range.next() {
        None => Ok(None),
        Some(row) => {
            let (k, v) = row?;
            Ok(k.value().starts_with(prefix).then_some((k, v)))
        }
    }
}

/// Calls `f` with every stored key under `prefix` and its stored bytes, in
/// order, without copying a value; `f` returns false to stop.
fn scan(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    mut f: impl FnMut(&str, &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut range = kv.range::<&str>(prefix..)?;
    while let Some((k, v)) = next_row(&mut range, prefix)? {
        if !f(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

/// A record's header and the length of its value: what deciding whether a
/// command applies needs, read without copying the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: String,
    pub value_len: u64,
}

impl Meta {
    fn decode(key: &str, bytes: &[u8]) -> Result<Meta> {
        let ([flags, create_index, modify_index, lock_index], session, at) =
            split_record(bytes).map_err(|e| corrupt(format!("key {key:?}: {e}")))?;
        Ok(Meta {
            flags,
            create_index,
            modify_index,
            lock_index,
            session: session.to_string(),
            value_len: (bytes.len() - at) as u64,
        })
    }

    fn of(r: &Record) -> Meta {
        Meta {
            flags: r.flags,
            create_index: r.create_index,
            modify_index: r.modify_index,
            lock_index: r.lock_index,
            session: r.session.clone(),
            value_len: r.value.len() as u64,
        }
    }

    /// The entry without its value.
    fn entry(&self, key: &str) -> KvEntry {
        KvEntry {
            key: key.to_string(),
            value: None,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.clone(),
        }
    }

    /// The size the key counts against `max_store_bytes`, as [`size_of`].
    fn size(&self, key: &str) -> u64 {
        if is_reserved(key) {
            0
        } else {
            key.len() as u64 + self.value_len
        }
    }
}

/// What one entry of an answer may take, in bytes, at most: the key as JSON
/// escapes it, the value in base64, and an allowance for the field names,
/// the five numbers and the punctuation (a transaction's `{"KV": ...}`
/// wrapper included). It depends on lengths only, so every node computes
/// the same figure without reading a value.
pub fn answer_bytes(key: &str, value_len: u64) -> u64 {
    ENTRY_JSON_ALLOWANCE + json_string_bytes(key) + value_len.div_ceil(3) * 4
}

/// The bytes of everything in a JSON entry but its key and value.
pub const ENTRY_JSON_ALLOWANCE: u64 = 200;

/// The length of `s` as a JSON string, quotes included.
pub fn json_string_bytes(s: &str) -> u64 {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<u64>()
}

/// The running count of what a transaction's reads return, against its
/// [`ReadLimits`].
struct ReadBudget {
    limits: ReadLimits,
    entries: u64,
    bytes: u64,
}

impl ReadBudget {
    fn new(limits: ReadLimits) -> Self {
        ReadBudget {
            limits,
            entries: 0,
            bytes: 0,
        }
    }

    /// Counts one entry; `Err` names the limit it passes.
    fn charge(&mut self, key: &str, value_len: u64) -> std::result::Result<(), String> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(answer_bytes(key, value_len));
        if self.entries > self.limits.max_reads {
            return Err(format!(
                "the transaction's reads return more than {} entries, over the limit \
                 max_txn_reads; read a narrower prefix or split the transaction",
                self.limits.max_reads
            ));
        }
        if self.bytes > self.limits.max_response_bytes {
            return Err(format!(
                "the transaction's answer would take more than {} bytes, over the limit \
                 max_response_bytes; read a narrower prefix or split the transaction",
                self.limits.max_response_bytes
            ));
        }
        Ok(())
    }
}

/// The highest tombstone index under `prefix`.
fn max_tombstone(t: &impl ReadableTable<&'static str, u64>, prefix: &str) -> Result<u64> {
    let mut max = 0;
    for row in t.range::<&str>(prefix..)? {
        let (k, v) = row?;
        if !k.value().starts_with(prefix) {
            break;
        }
        max = max.max(v.value());
    }
    Ok(max)
}

/// True if keys under `prefix` may lie under the reserved prefix.
fn may_hold_reserved(prefix: &str) -> bool {
    crate::store::RESERVED_PREFIX.starts_with(prefix) || is_reserved(prefix)
}

/// Creates the store's tables if they do not exist yet.
pub fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(KV)?;
    txn.open_table(TOMBSTONES)?;
    txn.open_table(STATE)?;
    Ok(())
}

/// The store's tables inside a write transaction.
pub struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    tombstones: Table<'t, &'static str, u64>,
    state: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    /// Opens the tables in `txn`.
    pub fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            kv: txn.open_table(KV)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            state: txn.open_table(STATE)?,
        })
    }

    /// The store's counters.
    pub fn state(&self) -> Result<StoreState> {
        read_state(&self.state)
    }

    /// Applies `cmd` as the entry at `index`. Either every op takes effect or
    /// none does. Returns the outcome and what changed.
    ///
    /// `answer` is true on the node that answers the command's client: it
    /// alone builds what the reads return. Every node decides the outcome
    /// the same way either way.
    pub fn apply(
        &mut self,
        index: u64,
        cmd: &Command,
        answer: bool,
    ) -> Result<(Outcome, Vec<Touched>)> {
        let state = self.state()?;
        let mut txn = Overlay::new(&self.kv, index, state.bytes, answer);
        let outcome = txn.run(cmd)?;
        if !matches!(outcome, Outcome::Committed(_)) {
            return Ok((outcome, Vec::new()));
        }
        if txn.bytes > cmd.max_store_bytes && txn.bytes > state.bytes {
            return Ok((
                Outcome::QuotaExceeded {
                    size: txn.bytes,
                    limit: cmd.max_store_bytes,
                },
                Vec::new(),
            ));
        }
        let Overlay {
            writes,
            bytes,
            prefixes,
            ..
        } = txn;
        let mut touched = Vec::with_capacity(writes.len() + prefixes.len());
        for (key, record) in &writes {
            match record {
                Some(record) => {
                    self.kv.insert(key.as_str(), record.encode().as_slice())?;
                    self.tombstones.remove(key.as_str())?;
                }
                None => {
                    self.kv.remove(key.as_str())?;
                    self.tombstones.insert(key.as_str(), index)?;
                }
            }
            touched.push(Touched::Key(key.clone()));
        }
        touched.extend(prefixes.into_iter().map(Touched::Prefix));
        let wrote = !writes.is_empty();
        write_state(
            &mut self.state,
            StoreState {
                index: if wrote { index } else { state.index },
                bytes,
                floor: state.floor,
            },
        )?;
        Ok((outcome, touched))
    }

    /// Forgets tombstones at or below `index` (the log was compacted to it).
    pub fn reap_tombstones(&mut self, index: u64) -> Result<()> {
        let mut state = self.state()?;
        if index <= state.floor {
            return Ok(());
        }
        self.tombstones.retain(|_, at| at > index)?;
        state.floor = index;
        write_state(&mut self.state, state)
    }

    /// Empties the store, before a snapshot's rows go in one at a time.
    pub(crate) fn clear(&mut self) -> Result<()> {
        self.kv.retain(|_, _| false)?;
        self.tombstones.retain(|_, _| false)?;
        Ok(())
    }

    /// One row of a snapshot being installed.
    pub(crate) fn insert_row(&mut self, key: &str, record: &Record) -> Result<()> {
        self.kv.insert(key, record.encode().as_slice())?;
        Ok(())
    }

    /// One tombstone of a snapshot being installed.
    pub(crate) fn insert_tombstone(&mut self, key: &str, index: u64) -> Result<()> {
        self.tombstones.insert(key, index)?;
        Ok(())
    }

    /// The store's counters, once a snapshot's rows are in.
    pub(crate) fn set_state(&mut self, state: StoreState) -> Result<()> {
        write_state(&mut self.state, state)
    }
}

/// A row under a prefix, as a command sees it.
enum Row<'r> {
    /// As stored.
    Stored(&'r [u8]),
    /// As an earlier op of the same command wrote it.
    Written(&'r Record),
}

impl Row<'_> {
    fn meta(&self, key: &str) -> Result<Meta> {
        match self {
            Row::Stored(bytes) => Meta::decode(key, bytes),
            Row::Written(r) => Ok(Meta::of(r)),
        }
    }

    fn entry(&self, key: &str) -> Result<KvEntry> {
        match self {
            Row::Stored(bytes) => Record::decode(bytes)
                .map(|r| r.entry(key, true))
                .map_err(|e| corrupt(format!("key {key:?}: {e}"))),
            Row::Written(r) => Ok(r.entry(key, true)),
        }
    }
}

/// A command evaluated against the stored keys plus its own earlier writes.
///
/// Only the node that answers the client builds what the reads return
/// (`build`); every other replica only counts it, from the lengths of the
/// rows, so that they all decide the same way whether the reads fit the
/// command's [`ReadLimits`], and none copies a value it will not send.
struct Overlay<'a, T> {
    kv: &'a T,
    index: u64,
    bytes: u64,
    /// Keys written (`Some`) or deleted (`None`) so far.
    writes: BTreeMap<String, Option<Record>>,
    /// Prefixes of `delete-tree` ops.
    prefixes: Vec<String>,
    /// Build the reads' results, or only count them.
    build: bool,
    /// The estimated bytes of what the reads return, once run.
    answer_bytes: u64,
}

impl<'a, T: ReadableTable<&'static str, &'static [u8]>> Overlay<'a, T> {
    fn new(kv: &'a T, index: u64, bytes: u64, build: bool) -> Self {
        Overlay {
            kv,
            index,
            bytes,
            writes: BTreeMap::new(),
            prefixes: Vec::new(),
            build,
            answer_bytes: 0,
        }
    }

    fn meta(&self, key: &str) -> Result<Option<Meta>> {
        match self.writes.get(key) {
            Some(written) => Ok(written.as_ref().map(Meta::of)),
            None => match self.kv.get(key)? {
                None => Ok(None),
                Some(v) => Meta::decode(key, v.value()).map(Some),
            },
        }
    }

    /// [`Overlay::meta`] as a client's transaction sees it: the reserved
    /// prefix is invisible to clients, so a key under it reads as absent.
    fn visible(&self, key: &str, client: bool) -> Result<Option<Meta>> {
        if client && is_reserved(key) {
            return Ok(None);
        }
        self.meta(key)
    }

    fn entry(&self, key: &str) -> Result<Option<KvEntry>> {
        match self.writes.get(key) {
            Some(written) => Ok(written.as_ref().map(|r| r.entry(key, true))),
            None => Ok(get_record(self.kv, key)?.map(|r| r.entry(key, true))),
        }
    }

    /// Calls `f` with every live key under `prefix`, in order, as the stored
    /// rows and this command's earlier writes together have it; `f` returns
    /// false to stop. Nothing is copied but what `f` copies.
    fn scan(&self, prefix: &str, mut f: impl FnMut(&str, Row<'_>) -> Result<bool>) -> Result<()> {
        let mut stored = self.kv.range::<&str>(prefix..)?;
        let mut pending = next_row(&mut stored, prefix)?;
        let mut written = self
            .writes
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        loop {
            let stored_first = match (&pending, written.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((k, _)), Some((wk, _))) => k.value() < wk.as_str(),
            };
            if stored_first {
                if let Some((k, v)) = pending.take() {
                    if !f(k.value(), Row::Stored(v.value()))? {
                        return Ok(());
                    }
                }
                pending = next_row(&mut stored, prefix)?;
            } else if let Some((wk, wr)) = written.next() {
                if pending.as_ref().is_some_and(|(k, _)| k.value() == wk) {
                    pending = next_row(&mut stored, prefix)?;
                }
                if let Some(r) = wr {
                    if !f(wk, Row::Written(r))? {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn set(&mut self, key: &str, value: &[u8], flags: u64, old: Option<Meta>) -> KvEntry {
        // As Consul: a plain write keeps the key's lock and its session.
        let record = Record {
            flags,
            create_index: old.as_ref().map_or(self.index, |r| r.create_index),
            modify_index: self.index,
            lock_index: old.as_ref().map_or(0, |r| r.lock_index),
            session: old.as_ref().map_or(String::new(), |r| r.session.clone()),
            value: value.to_vec(),
        };
        self.put(key, record, old.as_ref())
    }

    /// Writes `record` over `old`.
    fn put(&mut self, key: &str, record: Record, old: Option<&Meta>) -> KvEntry {
        if let Some(old) = old {
            self.bytes -= old.size(key);
        }
        self.bytes += size_of(key, &record);
        let entry = record.entry(key, false);
        self.writes.insert(key.to_string(), Some(record));
        entry
    }

    /// Writes one of the cluster's own rows (under the reserved prefix).
    fn put_row(&mut self, key: &str, value: Vec<u8>) -> Result<()> {
        let old = self.meta(key)?;
        let record = Record {
            flags: 0,
            create_index: old.as_ref().map_or(self.index, |r| r.create_index),
            modify_index: self.index,
            lock_index: 0,
            session: String::new(),
            value,
        };
        self.put(key, record, old.as_ref());
        Ok(())
    }

    /// Deletes a row if present.
    fn delete_row(&mut self, key: &str) -> Result<()> {
        if let Some(old) = self.meta(key)? {
            self.delete(key, old.size(key));
        }
        Ok(())
    }

    /// The lock-delay on `key`: Unix ms until which it may not be taken.
    fn lock_delay(&self, key: &str) -> Result<u64> {
        Ok(self
            .entry(&crate::session::delay_key(key))?
            .and_then(|e| e.value)
            .and_then(|v| {
                v.get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
            })
            .unwrap_or(0))
    }

    /// Counts the sessions, in all and on `node`.
    fn count_sessions(&self, node: u64) -> Result<(u64, u64)> {
        let (mut all, mut on_node) = (0, 0);
        self.scan(crate::session::SESSIONS_PREFIX, |key, row| {
            all += 1;
            if let Some(v) = row.entry(key)?.value {
                if crate::session::SessionSpec::decode(&v).is_ok_and(|s| s.node == node) {
                    on_node += 1;
                }
            }
            Ok(true)
        })?;
        Ok((all, on_node))
    }

    /// Ends session `id` (its row is `entry`): releases or deletes the keys
    /// it holds, with their lock-delay.
    fn end_session(&mut self, id: &str, entry: KvEntry, now_ms: u64) -> Result<()> {
        use crate::session::{delay_key, Behavior, SessionSpec, HELD_PREFIX};
        let spec = entry
            .value
            .as_deref()
            .and_then(|v| SessionSpec::decode(v).ok());
        let (behavior, delay) =
            spec.map_or((Behavior::Release, 0), |s| (s.behavior, s.lock_delay_ms));
        self.delete_row(&entry.key)?;
        let held_prefix = format!("{HELD_PREFIX}{id}/");
        let mut held = Vec::new();
        self.scan(&held_prefix, |key, _| {
            held.push(key.to_string());
            Ok(true)
        })?;
        for row in held {
            self.delete_row(&row)?;
            let key = &row[held_prefix.len()..];
            let Some(meta) = self.meta(key)? else {
                continue;
            };
            if meta.session != id {
                continue;
            }
            match behavior {
                Behavior::Delete => self.delete(key, meta.size(key)),
                Behavior::Release => {
                    let value = self.entry(key)?.and_then(|e| e.value).unwrap_or_default();
                    let record = Record {
                        flags: meta.flags,
                        create_index: meta.create_index,
                        modify_index: self.index,
                        lock_index: meta.lock_index,
                        session: String::new(),
                        value,
                    };
                    self.put(key, record, Some(&meta));
                }
            }
            if delay > 0 {
                let until = now_ms.saturating_add(delay);
                self.put_row(&delay_key(key), until.to_le_bytes().to_vec())?;
            }
        }
        Ok(())
    }

    fn delete(&mut self, key: &str, size: u64) {
        self.bytes -= size;
        self.writes.insert(key.to_string(), None);
    }

    /// Counts (and, when building, reads) one key's entry for a read op.
    fn read_one(
        &self,
        key: &str,
        meta: Meta,
        budget: &mut ReadBudget,
        results: &mut Vec<KvEntry>,
    ) -> Result<std::result::Result<(), String>> {
        if let Err(over) = budget.charge(key, meta.value_len) {
            return Ok(Err(over));
        }
        if self.build {
            if let Some(entry) = self.entry(key)? {
                results.push(entry);
            }
        }
        Ok(Ok(()))
    }

    /// [`KvOp::Restore`]: `Ok(Err(why))` when the staged keys are not the
    /// ones announced, before anything is written.
    ///
    /// Besides `keep`, two rules:
    /// - **Sessions end.** Every session, the running cluster's and the
    ///   backup's, is gone after a restore, and the restored keys are held
    ///   by none: a holder learns it at its next renew (404), and each key a
    ///   running session held stays refused for that session's lock-delay
    ///   from `now_ms`, so that no new holder overlaps the old one. (Bringing
    ///   the backup's holders back would hand locks to processes that may be
    ///   long gone, or to two at once.)
    /// - **ACLs never open by restore.** When the running cluster was
    ///   bootstrapped and the backup was not, the running cluster's ACL
    ///   rows stay; otherwise the backup's replace them.
    fn restore(
        &mut self,
        staging: &str,
        keep: &[String],
        keys: u64,
        marker: &str,
        now_ms: u64,
    ) -> Result<std::result::Result<(), String>> {
        use crate::session::{delay_key, SessionSpec, DELAY_PREFIX, HELD_PREFIX, SESSIONS_PREFIX};
        let acl_kept = self.meta(crate::acl::BOOTSTRAP_KEY)?.is_some()
            && self
                .meta(&format!("{staging}{}", crate::acl::BOOTSTRAP_KEY))?
                .is_none();
        let kept = |key: &str| {
            keep.iter().any(|p| key.starts_with(p.as_str()))
                || (acl_kept && key.starts_with(crate::acl::ACL_PREFIX))
        };
        let session_row = |key: &str| {
            key.starts_with(SESSIONS_PREFIX)
                || key.starts_with(HELD_PREFIX)
                || key.starts_with(DELAY_PREFIX)
        };
        let mut doomed = Vec::new();
        let mut staged = Vec::new();
        let mut lock_delays = std::collections::BTreeMap::new();
        self.scan("", |key, row| {
            if key.starts_with(staging) {
                let entry = row.entry(key)?;
                staged.push((key.to_string(), row.meta(key)?.size(key), entry));
            } else if !kept(key) {
                doomed.push((key.to_string(), row.meta(key)?.size(key)));
            }
            if let Some(id) = key.strip_prefix(SESSIONS_PREFIX) {
                let delay = row
                    .entry(key)?
                    .value
                    .as_deref()
                    .and_then(|v| SessionSpec::decode(v).ok())
                    .map_or(0, |s| s.lock_delay_ms);
                if delay > 0 {
                    lock_delays.insert(format!("{HELD_PREFIX}{id}/"), delay);
                }
            }
            Ok(true)
        })?;
        // The keys the running sessions hold, each with its holder's
        // lock-delay.
        let mut delayed = Vec::new();
        for (held_prefix, delay) in &lock_delays {
            self.scan(held_prefix, |key, _| {
                delayed.push((
                    key[held_prefix.len()..].to_string(),
                    now_ms.saturating_add(*delay),
                ));
                Ok(true)
            })?;
        }
        if staged.len() as u64 != keys {
            return Ok(Err(format!(
                "the restore staged {} keys, its backup holds {keys} (another restore ran \
                 meanwhile); nothing was changed",
                staged.len()
            )));
        }
        for (key, size) in doomed {
            self.delete(&key, size);
        }
        for (staged_key, size, entry) in staged {
            self.delete(&staged_key, size);
            let key = &staged_key[staging.len()..];
            if !kept(key) && !session_row(key) {
                let old = self.meta(key)?;
                self.set(
                    key,
                    entry.value.as_deref().unwrap_or_default(),
                    entry.flags,
                    old,
                );
            }
        }
        for (key, until) in delayed {
            self.put_row(&delay_key(&key), until.to_le_bytes().to_vec())?;
        }
        let old = self.meta(marker)?;
        self.set(marker, b"", 0, old);
        self.prefixes.push(String::new());
        Ok(Ok(()))
    }

    /// Runs every op; collects the results, or every failure. Reads past
    /// the command's [`ReadLimits`] fail the whole command at once.
    fn run(&mut self, cmd: &Command) -> Result<Outcome> {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        let client = cmd.from_client;
        let mut budget = ReadBudget::new(cmd.reads);
        for (op_index, op) in cmd.ops.iter().enumerate() {
            let over = |what: String| Outcome::RolledBack(vec![TxnError { op_index, what }]);
            let mut fail = |what: String| errors.push(TxnError { op_index, what });
            match op {
                KvOp::Set { key, value, flags } => {
                    let old = self.meta(key)?;
                    results.push(self.set(key, value, *flags, old));
                }
                KvOp::Cas {
                    key,
                    value,
                    flags,
                    index,
                } => {
                    let old = self.meta(key)?;
                    let matches = match &old {
                        None => *index == 0,
                        Some(r) => r.modify_index == *index,
                    };
                    if matches {
                        results.push(self.set(key, value, *flags, old));
                    } else {
                        fail(format!("failed to set key {key:?}, index is stale"));
                    }
                }
                KvOp::Get { key } => match self.visible(key, client)? {
                    Some(meta) => {
                        if let Err(e) = self.read_one(key, meta, &mut budget, &mut results)? {
                            return Ok(over(e));
                        }
                    }
                    None => fail(format!("key {key:?} doesn't exist")),
                },
                KvOp::GetOrEmpty { key } => {
                    if let Some(meta) = self.visible(key, client)? {
                        if let Err(e) = self.read_one(key, meta, &mut budget, &mut results)? {
                            return Ok(over(e));
                        }
                    }
                }
                KvOp::GetTree { prefix } => {
                    let mut exceeded = None;
                    let build = self.build;
                    self.scan(prefix, |key, row| {
                        if client && is_reserved(key) {
                            return Ok(true);
                        }
                        let meta = row.meta(key)?;
                        if let Err(e) = budget.charge(key, meta.value_len) {
                            exceeded = Some(e);
                            return Ok(false);
                        }
                        if build {
                            results.push(row.entry(key)?);
                        }
                        Ok(true)
                    })?;
                    if let Some(e) = exceeded {
                        return Ok(over(e));
                    }
                }
                KvOp::CheckIndex { key, index } => match self.visible(key, client)? {
                    None => fail(format!(
                        "failed to check index of key {key:?}: key doesn't exist"
                    )),
                    Some(r) if r.modify_index != *index => fail(format!(
                        "current modify index {} != {index}",
                        r.modify_index
                    )),
                    Some(r) => results.push(r.entry(key)),
                },
                KvOp::CheckNotExists { key } => {
                    if self.visible(key, client)?.is_some() {
                        fail(format!("key {key:?} exists"));
                    }
                }
                KvOp::Delete { key } => {
                    if let Some(old) = self.meta(key)? {
                        self.delete(key, old.size(key));
                    }
                }
                KvOp::DeleteCas { key, index } => match self.meta(key)? {
                    // Consul: deleting an absent key succeeds, whatever the index.
                    None => {}
                    Some(old) if old.modify_index == *index => self.delete(key, old.size(key)),
                    Some(_) => fail(format!("failed to delete key {key:?}, index is stale")),
                },
                KvOp::DeleteTree { prefix } => {
                    // The keys and their sizes, never the values.
                    let mut doomed = Vec::new();
                    self.scan(prefix, |key, row| {
                        if !(cmd.from_client && is_reserved(key)) {
                            doomed.push((key.to_string(), row.meta(key)?.size(key)));
                        }
                        Ok(true)
                    })?;
                    for (key, size) in doomed {
                        self.delete(&key, size);
                    }
                    self.prefixes.push(prefix.clone());
                }
                KvOp::Lock {
                    key,
                    value,
                    flags,
                    session,
                    now_ms,
                } => {
                    if self.meta(&crate::session::row_key(session))?.is_none() {
                        fail(format!("invalid session {session:?}"));
                        continue;
                    }
                    let old = self.meta(key)?;
                    let held_by = old.as_ref().map_or("", |m| m.session.as_str());
                    if !held_by.is_empty() && held_by != session {
                        fail(format!(
                            "failed to lock key {key:?}: lock is already held by session {held_by:?}"
                        ));
                        continue;
                    }
                    let again = held_by == session;
                    if !again && *now_ms < self.lock_delay(key)? {
                        fail(format!(
                            "failed to lock key {key:?}: a lock-delay of its last holder's \
                             session holds it"
                        ));
                        continue;
                    }
                    let record = Record {
                        flags: *flags,
                        create_index: old.as_ref().map_or(self.index, |r| r.create_index),
                        modify_index: self.index,
                        lock_index: old.as_ref().map_or(0, |r| r.lock_index) + u64::from(!again),
                        session: session.clone(),
                        value: value.clone(),
                    };
                    results.push(self.put(key, record, old.as_ref()));
                    if !again {
                        self.put_row(&crate::session::held_key(session, key), Vec::new())?;
                        self.delete_row(&crate::session::delay_key(key))?;
                    }
                }
                KvOp::Unlock {
                    key,
                    value,
                    flags,
                    session,
                } => match self.meta(key)? {
                    Some(old) if old.session == *session => {
                        let record = Record {
                            flags: *flags,
                            create_index: old.create_index,
                            modify_index: self.index,
                            lock_index: old.lock_index,
                            session: String::new(),
                            value: value.clone(),
                        };
                        results.push(self.put(key, record, Some(&old)));
                        self.delete_row(&crate::session::held_key(session, key))?;
                    }
                    _ => fail(format!(
                        "failed to unlock key {key:?}: lock isn't held, or is held by another \
                         session"
                    )),
                },
                KvOp::CheckSession { key, session } => match self.visible(key, client)? {
                    Some(m) if m.session == *session => results.push(m.entry(key)),
                    Some(m) => fail(format!(
                        "failed to check session: current session {:?} != {session:?}",
                        m.session
                    )),
                    None => fail(format!(
                        "failed to check session of key {key:?}: key doesn't exist"
                    )),
                },
                KvOp::SessionCreate {
                    id,
                    session,
                    max_sessions,
                    max_per_node,
                } => {
                    let row = crate::session::row_key(id);
                    if self.meta(&row)?.is_some() {
                        fail(format!("session {id:?} already exists"));
                        continue;
                    }
                    let (all, on_node) = self.count_sessions(session.node)?;
                    if all >= *max_sessions {
                        fail(format!(
                            "too many sessions: the cluster holds {all}, the limit \
                             max_sessions"
                        ));
                    } else if on_node >= *max_per_node {
                        fail(format!(
                            "too many sessions: node {} holds {on_node}, the limit \
                             max_sessions_per_node",
                            session.node
                        ));
                    } else {
                        self.put_row(&row, session.encode())?;
                    }
                }
                KvOp::SessionRenew { id } => {
                    let row = crate::session::row_key(id);
                    match self.entry(&row)? {
                        Some(e) => self.put_row(&row, e.value.unwrap_or_default())?,
                        None => fail(format!("session {id:?} not found")),
                    }
                }
                KvOp::SessionDestroy {
                    id,
                    now_ms,
                    if_index,
                } => {
                    let row = crate::session::row_key(id);
                    if let Some(e) = self.entry(&row)? {
                        if if_index.is_none_or(|i| i == e.modify_index) {
                            self.end_session(id, e, *now_ms)?;
                        }
                    }
                }
                KvOp::Restore {
                    staging,
                    keep,
                    keys,
                    marker,
                    now_ms,
                } => {
                    if let Err(e) = self.restore(staging, keep, *keys, marker, *now_ms)? {
                        fail(e);
                    }
                }
            }
        }
        self.answer_bytes = budget.bytes;
        Ok(if errors.is_empty() {
            Outcome::Committed(results)
        } else {
            Outcome::RolledBack(errors)
        })
    }
}

/// The answer to a query, with the index a client blocks on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The result.
    pub value: T,
    /// Consul's `X-Consul-Index`: the highest `ModifyIndex` of the result
    /// (tombstones under a prefix included), or the store's index when
    /// nothing matches. Never 0.
    pub index: u64,
    /// Tombstones at or below this index were reaped: a blocking query on an
    /// older index cannot tell whether it missed a delete.
    pub floor: u64,
}

/// An answer that was too large to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTooLarge {
    /// The limit it would pass.
    pub limit: u64,
}

/// A listing, or why it was not built.
pub type Bounded<T> = std::result::Result<Listing<T>, AnswerTooLarge>;

/// The store's tables inside a read transaction.
pub struct ReadTables {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    tombstones: redb::ReadOnlyTable<&'static str, u64>,
    state: StoreState,
}

impl ReadTables {
    /// Opens the tables in `txn`; the view is fixed at that transaction.
    pub fn open(txn: &ReadTransaction) -> Result<ReadTables> {
        let state = read_state(&txn.open_table(STATE)?)?;
        Ok(ReadTables {
            kv: txn.open_table(KV)?,
            tombstones: txn.open_table(TOMBSTONES)?,
            state,
        })
    }

    /// The store's counters.
    pub fn state(&self) -> StoreState {
        self.state
    }

    fn listing<T>(&self, value: T, index: u64) -> Listing<T> {
        let index = if index == 0 { self.state.index } else { index };
        Listing {
            value,
            index: index.max(1),
            floor: self.state.floor,
        }
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Listing<Option<KvEntry>>> {
        let entry = get_record(&self.kv, key)?.map(|r| r.entry(key, true));
        let index = entry.as_ref().map_or(0, |e| e.modify_index);
        Ok(self.listing(entry, index))
    }

    /// The bytes the answer of a listing of `prefix` may take, as
    /// [`answer_bytes`] counts them (with the brackets and commas of a JSON
    /// array), read without copying a value; `None` once past `max_bytes`.
    pub fn estimate(&self, prefix: &str, max_bytes: u64) -> Result<Option<u64>> {
        self.estimate_of(prefix, max_bytes, false)
    }

    /// [`ReadTables::estimate`] as a client sees it: the reserved prefix is
    /// left out.
    pub fn client_estimate(&self, prefix: &str, max_bytes: u64) -> Result<Option<u64>> {
        self.estimate_of(prefix, max_bytes, may_hold_reserved(prefix))
    }

    fn estimate_of(&self, prefix: &str, max_bytes: u64, hide: bool) -> Result<Option<u64>> {
        let mut bytes = 2u64;
        let mut over = false;
        scan(&self.kv, prefix, |key, raw| {
            if hide && is_reserved(key) {
                return Ok(true);
            }
            let meta = Meta::decode(key, raw)?;
            bytes = bytes.saturating_add(answer_bytes(key, meta.value_len) + 1);
            over = bytes > max_bytes;
            Ok(!over)
        })?;
        Ok((!over).then_some(bytes))
    }

    /// Calls `f` with every entry under `prefix`, sorted; the listing
    /// carries how many there were.
    pub fn list_each(&self, prefix: &str, f: impl FnMut(KvEntry)) -> Result<Listing<usize>> {
        self.list_each_of(prefix, false, f)
    }

    /// [`ReadTables::list_each`] as a client sees it: the reserved prefix is
    /// left out, and its writes do not move the index.
    pub fn client_list_each(&self, prefix: &str, f: impl FnMut(KvEntry)) -> Result<Listing<usize>> {
        self.list_each_of(prefix, may_hold_reserved(prefix), f)
    }

    fn list_each_of(
        &self,
        prefix: &str,
        hide: bool,
        mut f: impl FnMut(KvEntry),
    ) -> Result<Listing<usize>> {
        let mut count = 0;
        let mut modified = 0;
        scan(&self.kv, prefix, |key, raw| {
            if hide && is_reserved(key) {
                return Ok(true);
            }
            let record = Record::decode(raw).map_err(|e| corrupt(format!("key {key:?}: {e}")))?;
            modified = modified.max(record.modify_index);
            count += 1;
            f(record.entry(key, true));
            Ok(true)
        })?;
        if hide {
            let index = self.client_index(prefix, modified)?;
            return Ok(self.client_listing(count, index));
        }
        let index = self.prefix_index(prefix, std::iter::once(modified))?;
        Ok(self.listing(count, index))
    }

    /// Every key under `prefix`, sorted, if its answer fits `max_bytes` as
    /// [`ReadTables::estimate`] counts it.
    pub fn list(&self, prefix: &str, max_bytes: u64) -> Result<Bounded<Vec<KvEntry>>> {
        if self.estimate(prefix, max_bytes)?.is_none() {
            return Ok(Err(AnswerTooLarge { limit: max_bytes }));
        }
        let mut entries = Vec::new();
        let listing = self.list_each(prefix, |e| entries.push(e))?;
        Ok(Ok(self.listing(entries, listing.index)))
    }

    /// The names of the keys under `prefix`, folded after the first
    /// `separator` that follows the prefix, as Consul does, if the answer
    /// fits `max_bytes`.
    pub fn keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        max_bytes: u64,
    ) -> Result<Bounded<Vec<String>>> {
        self.keys_of(prefix, separator, max_bytes, false)
    }

    /// [`ReadTables::keys`] as a client sees it: the reserved prefix is
    /// left out (so `__quorumd/` never shows at the root), and its writes
    /// do not move the index.
    pub fn client_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        max_bytes: u64,
    ) -> Result<Bounded<Vec<String>>> {
        self.keys_of(prefix, separator, max_bytes, may_hold_reserved(prefix))
    }

    fn keys_of(
        &self,
        prefix: &str,
        separator: Option<&str>,
        max_bytes: u64,
        hide: bool,
    ) -> Result<Bounded<Vec<String>>> {
        let mut keys: Vec<String> = Vec::new();
        let mut modified = 0;
        let mut bytes = 2u64;
        let mut over = false;
        scan(&self.kv, prefix, |key, raw| {
            if hide && is_reserved(key) {
                return Ok(true);
            }
            modified = modified.max(Meta::decode(key, raw)?.modify_index);
            let folded = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match key[prefix.len()..].find(sep) {
                    Some(at) => &key[..prefix.len() + at + sep.len()],
                    None => key,
                },
                None => key,
            };
            if keys.last().map(String::as_str) != Some(folded) {
                bytes = bytes.saturating_add(json_string_bytes(folded) + 1);
                if bytes > max_bytes {
                    over = true;
                    return Ok(false);
                }
                keys.push(folded.to_string());
            }
            Ok(true)
        })?;
        if over {
            return Ok(Err(AnswerTooLarge { limit: max_bytes }));
        }
        if hide {
            let index = self.client_index(prefix, modified)?;
            return Ok(Ok(self.client_listing(keys, index)));
        }
        let index = self.prefix_index(prefix, std::iter::once(modified))?;
        Ok(Ok(self.listing(keys, index)))
    }

    /// [`ReadTables::get`] as a client sees it: a key under the reserved
    /// prefix is absent.
    pub fn client_get(&self, key: &str) -> Result<Listing<Option<KvEntry>>> {
        if is_reserved(key) {
            return Ok(self.listing(None, 0));
        }
        self.get(key)
    }

    /// The highest index of the visible rows (`live`) and tombstones under
    /// `prefix`.
    fn client_index(&self, prefix: &str, live: u64) -> Result<u64> {
        let mut tomb = 0;
        for row in self.tombstones.range::<&str>(prefix..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if !is_reserved(k.value()) {
                tomb = tomb.max(v.value());
            }
        }
        Ok(live.max(tomb))
    }

    /// A listing of client-visible rows: with nothing visible, the index is
    /// the reap floor (not the store's index, which the cluster's own
    /// writes move).
    fn client_listing<T>(&self, value: T, index: u64) -> Listing<T> {
        Listing {
            value,
            index: index.max(self.state.floor).max(1),
            floor: self.state.floor,
        }
    }

    fn prefix_index(&self, prefix: &str, modified: impl Iterator<Item = u64>) -> Result<u64> {
        if prefix.is_empty() {
            return Ok(self.state.index);
        }
        let live = modified.max().unwrap_or(0);
        Ok(live.max(max_tombstone(&self.tombstones, prefix)?))
    }

    /// Evaluates a command that only reads (a read-only transaction):
    /// builds what its reads return if `build`, or only counts it. The
    /// answer's estimated size comes with the outcome.
    pub fn evaluate(&self, cmd: &Command, build: bool) -> Result<(Outcome, u64)> {
        debug_assert!(cmd.ops.iter().all(|op| !op.is_write()));
        let mut overlay = Overlay::new(&self.kv, 0, self.state.bytes, build);
        let outcome = overlay.run(cmd)?;
        Ok((outcome, overlay.answer_bytes))
    }

    /// Every row, for a snapshot.
    pub(crate) fn rows(&self) -> Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        scan(&self.kv, "", |key, raw| {
            let record = Record::decode(raw).map_err(|e| corrupt(format!("key {key:?}: {e}")))?;
            out.push((key.to_string(), record));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every tombstone, for a snapshot.
    pub(crate) fn tombstones(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for row in self.tombstones.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{backends::InMemoryBackend, Database, ReadableDatabase};

    const BIG: u64 = 1 << 30;

    fn db() -> Database {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        txn.commit().unwrap();
        db
    }

    fn apply(db: &Database, index: u64, ops: Vec<KvOp>) -> (Outcome, Vec<Touched>) {
        apply_with(db, index, ops, BIG)
    }

    fn apply_with(db: &Database, index: u64, ops: Vec<KvOp>, cap: u64) -> (Outcome, Vec<Touched>) {
        let txn = db.begin_write().unwrap();
        let out = {
            let mut t = Tables::open(&txn).unwrap();
            t.apply(
                index,
                &Command {
                    max_store_bytes: cap,
                    from_client: true,
                    ops,
                    reads: ReadLimits::UNLIMITED,
                },
                true,
            )
            .unwrap()
        };
        txn.commit().unwrap();
        out
    }

    fn read(db: &Database) -> ReadTables {
        ReadTables::open(&db.begin_read().unwrap()).unwrap()
    }

    fn set(key: &str, value: &str) -> KvOp {
        KvOp::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
        }
    }

    fn errors(outcome: Outcome) -> Vec<String> {
        match outcome {
            Outcome::RolledBack(e) => e
                .into_iter()
                .map(|e| format!("{}: {}", e.op_index, e.what))
                .collect(),
            other => panic!("expected a rollback, got {other:?}"),
        }
    }

    #[test]
    fn set_keeps_create_index_and_moves_modify_index() {
        let db = db();
        let (out, touched) = apply(&db, 5, vec![set("a", "1")]);
        assert!(
            matches!(&out, Outcome::Committed(r) if r[0].create_index == 5 && r[0].value.is_none())
        );
        assert_eq!(touched, vec![Touched::Key("a".into())]);
        apply(&db, 9, vec![set("a", "22")]);
        let got = read(&db).get("a").unwrap();
        let e = got.value.unwrap();
        assert_eq!((e.create_index, e.modify_index), (5, 9));
        assert_eq!(e.value.as_deref(), Some(&b"22"[..]));
        assert_eq!(got.index, 9);
        assert_eq!(read(&db).state().bytes, 3);
    }

    #[test]
    fn cas_checks_the_modify_index_and_zero_means_absent() {
        let db = db();
        let cas = |index| KvOp::Cas {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 3,
            index,
        };
        assert!(matches!(
            apply(&db, 2, vec![cas(0)]).0,
            Outcome::Committed(_)
        ));
        assert_eq!(
            errors(apply(&db, 3, vec![cas(0)]).0),
            vec!["0: failed to set key \"k\", index is stale"]
        );
        assert_eq!(errors(apply(&db, 4, vec![cas(7)]).0).len(), 1);
        assert!(matches!(
            apply(&db, 5, vec![cas(2)]).0,
            Outcome::Committed(_)
        ));
        let e = read(&db).get("k").unwrap().value.unwrap();
        assert_eq!((e.modify_index, e.flags), (5, 3));
    }

    #[test]
    fn a_failed_check_rolls_back_every_op() {
        let db = db();
        apply(&db, 2, vec![set("x", "1")]);
        let (out, touched) = apply(
            &db,
            3,
            vec![
                set("y", "2"),
                KvOp::CheckIndex {
                    key: "x".into(),
                    index: 99,
                },
                KvOp::CheckNotExists { key: "x".into() },
                KvOp::Get { key: "nope".into() },
            ],
        );
        assert_eq!(
            errors(out),
            vec![
                "1: current modify index 2 != 99",
                "2: key \"x\" exists",
                "3: key \"nope\" doesn't exist"
            ]
        );
        assert!(touched.is_empty());
        let r = read(&db);
        assert!(r.get("y").unwrap().value.is_none());
        assert_eq!(r.state().index, 2);
    }

    #[test]
    fn ops_see_earlier_ops_of_the_same_transaction() {
        let db = db();
        let (out, _) = apply(
            &db,
            4,
            vec![
                set("t/a", "1"),
                KvOp::Get { key: "t/a".into() },
                set("t/b", "2"),
                KvOp::Delete { key: "t/a".into() },
                KvOp::GetTree {
                    prefix: "t/".into(),
                },
            ],
        );
        let Outcome::Committed(results) = out else {
            panic!("{out:?}")
        };
        let keys: Vec<(&str, Option<&[u8]>)> = results
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("t/a", None),
                ("t/a", Some(&b"1"[..])),
                ("t/b", None),
                ("t/b", Some(&b"2"[..]))
            ]
        );
        assert_eq!(
            read(&db).keys("t/", None, u64::MAX).unwrap().unwrap().value,
            vec!["t/b"]
        );
    }

    #[test]
    fn deletes_leave_tombstones_that_prefix_queries_count() {
        let db = db();
        apply(
            &db,
            2,
            vec![set("p/a", "1"), set("p/b", "1"), set("q", "1")],
        );
        apply(&db, 3, vec![KvOp::Delete { key: "p/a".into() }]);
        let r = read(&db);
        let listing = r.list("p/", u64::MAX).unwrap().unwrap();
        assert_eq!(listing.value.len(), 1);
        assert_eq!(listing.index, 3, "the tombstone of p/a counts");
        // Deleting an absent key writes nothing and leaves the index alone.
        apply(&db, 4, vec![KvOp::Delete { key: "zz".into() }]);
        assert_eq!(read(&db).state().index, 3);
        // A missing key answers the store's index.
        assert_eq!(read(&db).get("zz").unwrap().index, 3);
        let (_, touched) = apply(
            &db,
            5,
            vec![KvOp::DeleteTree {
                prefix: "p/".into(),
            }],
        );
        assert!(touched.contains(&Touched::Prefix("p/".into())));
        let listing = read(&db).list("p/", u64::MAX).unwrap().unwrap();
        assert!(listing.value.is_empty());
        assert_eq!(listing.index, 5);
        assert_eq!(read(&db).state().bytes, 2, "only q is left");
        // Reaping forgets tombstones up to the compaction index.
        let txn = db.begin_write().unwrap();
        Tables::open(&txn).unwrap().reap_tombstones(4).unwrap();
        txn.commit().unwrap();
        let r = read(&db);
        assert_eq!(r.state().floor, 4);
        assert_eq!(r.tombstones().unwrap(), vec![("p/b".to_string(), 5)]);
    }

    #[test]
    fn delete_cas_follows_consul() {
        let db = db();
        apply(&db, 2, vec![set("k", "v")]);
        let del = |index| KvOp::DeleteCas {
            key: "k".into(),
            index,
        };
        assert_eq!(
            errors(apply(&db, 3, vec![del(0)]).0).len(),
            1,
            "cas=0 deletes nothing"
        );
        assert!(matches!(
            apply(&db, 4, vec![del(2)]).0,
            Outcome::Committed(_)
        ));
        assert!(read(&db).get("k").unwrap().value.is_none());
        assert!(
            matches!(apply(&db, 5, vec![del(9)]).0, Outcome::Committed(_)),
            "absent: ok"
        );
    }

    #[test]
    fn the_quota_refuses_growth_but_not_deletes() {
        let db = db();
        assert!(matches!(
            apply_with(&db, 2, vec![set("a", "12345")], 10).0,
            Outcome::Committed(_)
        ));
        let (out, _) = apply_with(&db, 3, vec![set("b", "123456")], 10);
        assert_eq!(
            out,
            Outcome::QuotaExceeded {
                size: 13,
                limit: 10
            }
        );
        assert!(read(&db).get("b").unwrap().value.is_none());
        // Already over the cap (it was lowered): shrinking still works.
        assert!(matches!(
            apply_with(&db, 4, vec![set("a", "1")], 1).0,
            Outcome::Committed(_)
        ));
        assert!(matches!(
            apply_with(&db, 5, vec![KvOp::Delete { key: "a".into() }], 1).0,
            Outcome::Committed(_)
        ));
        assert_eq!(read(&db).state().bytes, 0);
    }

    #[test]
    fn client_delete_tree_spares_the_reserved_prefix() {
        let db = db();
        let txn = db.begin_write().unwrap();
        Tables::open(&txn)
            .unwrap()
            .apply(
                2,
                &Command {
                    max_store_bytes: BIG,
                    from_client: false,
                    ops: vec![set("__quorumd/cluster_id", "x"), set("app", "y")],
                    reads: ReadLimits::UNLIMITED,
                },
                true,
            )
            .unwrap();
        txn.commit().unwrap();
        apply(&db, 3, vec![KvOp::DeleteTree { prefix: "".into() }]);
        assert_eq!(
            read(&db).keys("", None, u64::MAX).unwrap().unwrap().value,
            vec!["__quorumd/cluster_id"]
        );
    }

    fn apply_limited(
        db: &Database,
        index: u64,
        ops: Vec<KvOp>,
        reads: ReadLimits,
        answer: bool,
    ) -> Outcome {
        let txn = db.begin_write().unwrap();
        let out = Tables::open(&txn)
            .unwrap()
            .apply(
                index,
                &Command {
                    max_store_bytes: BIG,
                    from_client: true,
                    ops,
                    reads,
                },
                answer,
            )
            .unwrap()
            .0;
        txn.commit().unwrap();
        out
    }

    #[test]
    fn reads_past_the_limits_fail_the_whole_transaction_on_every_replica() {
        let db = db();
        let keys: Vec<KvOp> = (0..20)
            .map(|i| set(&format!("k/{i:02}"), &"v".repeat(100)))
            .collect();
        apply(&db, 2, keys);
        let pill = |n: usize| -> Vec<KvOp> {
            let mut ops = vec![set("x", "1")];
            ops.extend((0..n).map(|_| KvOp::GetTree { prefix: "".into() }));
            ops
        };
        // 3 trees of 20 keys: 60 reads, over a limit of 50, on the answering
        // node and on the others alike; nothing is written.
        let limits = ReadLimits {
            max_reads: 50,
            max_response_bytes: BIG,
        };
        for answer in [true, false] {
            let errs = errors(apply_limited(&db, 3, pill(3), limits, answer));
            assert_eq!(errs.len(), 1);
            assert!(
                errs[0].starts_with("3: ") && errs[0].contains("max_txn_reads"),
                "{errs:?}"
            );
            assert!(read(&db).get("x").unwrap().value.is_none());
        }
        // The estimate of the answer: each entry counts its key, its value in
        // base64 and the allowance, the same whether it is built or not.
        let one = answer_bytes("k/00", 100);
        assert_eq!(one, ENTRY_JSON_ALLOWANCE + 6 + 136);
        let limits = ReadLimits {
            max_reads: BIG,
            max_response_bytes: one * 30,
        };
        for answer in [true, false] {
            let errs = errors(apply_limited(&db, 4, pill(2), limits, answer));
            assert!(
                errs[0].starts_with("2: ") && errs[0].contains("max_response_bytes"),
                "{errs:?}"
            );
        }
        // Within the limits (two trees of 21 keys, x included): only the
        // answering node builds the values.
        let limits = ReadLimits {
            max_reads: 42,
            max_response_bytes: one * 42,
        };
        let Outcome::Committed(built) = apply_limited(&db, 5, pill(2), limits, true) else {
            panic!()
        };
        assert_eq!(built.len(), 1 + 42);
        assert!(built[1..].iter().all(|e| e.value.is_some()));
        let Outcome::Committed(counted) = apply_limited(&db, 6, pill(2), limits, false) else {
            panic!()
        };
        assert_eq!(counted.len(), 1, "only the set's result");
    }

    #[test]
    fn reads_see_the_writes_before_them_without_copying_on_other_replicas() {
        let db = db();
        apply(&db, 2, vec![set("t/a", "1"), set("t/c", "3")]);
        let ops = vec![
            set("t/b", "2"),
            KvOp::Delete { key: "t/a".into() },
            KvOp::GetTree {
                prefix: "t/".into(),
            },
            KvOp::DeleteTree {
                prefix: "t/".into(),
            },
        ];
        let Outcome::Committed(results) = apply_limited(&db, 3, ops, ReadLimits::UNLIMITED, true)
        else {
            panic!()
        };
        let keys: Vec<&str> = results[1..].iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["t/b", "t/c"]);
        assert_eq!(read(&db).state().bytes, 0);
        assert!(read(&db)
            .keys("t/", None, BIG)
            .unwrap()
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn listings_past_the_limit_are_refused_before_they_are_built() {
        let db = db();
        apply(&db, 2, vec![set("a", "12345"), set("b", "12345")]);
        let r = read(&db);
        let both = 2 + 2 * (answer_bytes("a", 5) + 1);
        assert_eq!(r.estimate("", both).unwrap(), Some(both));
        assert_eq!(r.estimate("", both - 1).unwrap(), None);
        assert_eq!(r.list("", both).unwrap().unwrap().value.len(), 2);
        assert_eq!(
            r.list("", both - 1).unwrap().unwrap_err(),
            AnswerTooLarge { limit: both - 1 }
        );
        assert!(r.keys("", None, 4).unwrap().is_err());
        assert_eq!(r.keys("", None, 10).unwrap().unwrap().value, vec!["a", "b"]);
        assert_eq!(json_string_bytes("a\"\n\u{1}"), 2 + 1 + 2 + 2 + 6);
    }

    #[test]
    fn keys_fold_at_the_separator_like_consul() {
        let db = db();
        apply(
            &db,
            2,
            ["web/bar", "web/foo", "web/subdir/a", "web/subdir/b", "webx"]
                .iter()
                .map(|k| set(k, "v"))
                .collect(),
        );
        let r = read(&db);
        assert_eq!(
            r.keys("web/", Some("/"), u64::MAX).unwrap().unwrap().value,
            vec!["web/bar", "web/foo", "web/subdir/"]
        );
        assert_eq!(
            r.keys("web", Some("/"), u64::MAX).unwrap().unwrap().value,
            vec!["web/", "webx"]
        );
        assert_eq!(
            r.keys("web/", None, u64::MAX).unwrap().unwrap().value.len(),
            4
        );
        assert!(r
            .keys("nothing", None, u64::MAX)
            .unwrap()
            .unwrap()
            .value
            .is_empty());
    }

    #[test]
    fn touched_matches_keys_and_prefixes() {
        assert!(Touched::Key("a/b".into()).affects("a/", true));
        assert!(!Touched::Key("a/b".into()).affects("a/", false));
        assert!(Touched::Prefix("a/".into()).affects("a/b", false));
        assert!(Touched::Prefix("a/".into()).affects("a/b/", true));
        assert!(Touched::Prefix("a/b/c".into()).affects("a/", true));
        assert!(!Touched::Prefix("b/".into()).affects("a/", true));
    }

    #[test]
    fn records_roundtrip_and_short_ones_are_refused() {
        let r = Record {
            flags: 1,
            create_index: 2,
            modify_index: 3,
            lock_index: 0,
            session: String::new(),
            value: b"hello".to_vec(),
        };
        assert_eq!(
            r.encode().len(),
            32 + 5,
            "a free key's record is as before sessions"
        );
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(&[0; 31]).is_err());
        let held = Record {
            lock_index: 4,
            session: "0b5e3e42-1d8a-4c4e-9a53-2d5f0c8e7a11".into(),
            ..r
        };
        assert_eq!(Record::decode(&held.encode()).unwrap(), held);
        let mut cut = held.encode();
        cut.truncate(40);
        assert!(Record::decode(&cut).is_err());
    }

    fn session_op(id: &str, delay_ms: u64, behavior: crate::session::Behavior) -> KvOp {
        KvOp::SessionCreate {
            id: id.into(),
            session: crate::session::SessionSpec {
                name: String::new(),
                node: 1,
                ttl_ms: 0,
                lock_delay_ms: delay_ms,
                behavior,
                node_check: true,
            },
            max_sessions: 2,
            max_per_node: 2,
        }
    }

    fn lock(key: &str, session: &str, now_ms: u64) -> KvOp {
        KvOp::Lock {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            session: session.into(),
            now_ms,
        }
    }

    #[test]
    fn locks_follow_sessions_with_their_lock_delay_and_bounds() {
        use crate::session::Behavior;
        let db = db();
        let committed = |o: &Outcome| matches!(o, Outcome::Committed(_));
        assert!(committed(
            &apply(&db, 2, vec![session_op("a", 1000, Behavior::Release)]).0
        ));
        assert!(committed(
            &apply(&db, 3, vec![session_op("b", 0, Behavior::Delete)]).0
        ));
        // The bound travels in the entry.
        let (o, _) = apply(&db, 4, vec![session_op("c", 0, Behavior::Release)]);
        assert!(
            matches!(&o, Outcome::RolledBack(e) if e[0].what.contains("too many")),
            "{o:?}"
        );
        assert!(committed(&apply(&db, 5, vec![lock("k", "a", 100)]).0));
        let (o, _) = apply(&db, 6, vec![lock("k", "b", 100)]);
        assert!(!committed(&o));
        let (o, _) = apply(&db, 7, vec![lock("k", "nope", 100)]);
        assert!(matches!(&o, Outcome::RolledBack(e) if e[0].what.starts_with("invalid session")));
        assert!(committed(&apply(&db, 8, vec![lock("j", "b", 100)]).0));
        let k = read(&db).get("k").unwrap().value.unwrap();
        assert_eq!((k.session.as_str(), k.lock_index), ("a", 1));
        // Ending a: k is released, with a lock-delay until 5000 + 1000.
        let end = |id: &str, now_ms| KvOp::SessionDestroy {
            id: id.into(),
            now_ms,
            if_index: None,
        };
        assert!(committed(&apply(&db, 9, vec![end("a", 5000)]).0));
        let k = read(&db).get("k").unwrap().value.unwrap();
        assert_eq!((k.session.as_str(), k.lock_index), ("", 1));
        let (o, _) = apply(&db, 10, vec![lock("k", "b", 5999)]);
        assert!(matches!(&o, Outcome::RolledBack(e) if e[0].what.contains("lock-delay")));
        assert!(committed(&apply(&db, 11, vec![lock("k", "b", 6000)]).0));
        assert_eq!(read(&db).get("k").unwrap().value.unwrap().lock_index, 2);
        // An expiry a renew overtook does nothing.
        assert!(committed(
            &apply(&db, 12, vec![KvOp::SessionRenew { id: "b".into() }]).0
        ));
        let stale = KvOp::SessionDestroy {
            id: "b".into(),
            now_ms: 0,
            if_index: Some(3),
        };
        apply(&db, 13, vec![stale]);
        assert!(read(&db).get("j").unwrap().value.is_some());
        // Ending b (behavior delete) deletes the keys it holds.
        assert!(committed(&apply(&db, 14, vec![end("b", 0)]).0));
        assert!(read(&db).get("j").unwrap().value.is_none());
        assert!(read(&db).get("k").unwrap().value.is_none());
        let (o, _) = apply(&db, 15, vec![KvOp::SessionRenew { id: "b".into() }]);
        assert!(!committed(&o));
    }

    #[test]
    fn a_restore_swaps_the_staged_keys_in_whole_and_keeps_the_membership() {
        let db = db();
        apply(
            &db,
            2,
            vec![
                set("__quorumd/members/1", "me"),
                set("__quorumd/sessions/s", "kept-out"),
                set("old", "gone"),
                set("both", "old"),
            ],
        );
        let staging = "__quorumd/restore/00ff/";
        apply(
            &db,
            3,
            vec![
                set(&format!("{staging}both"), "new"),
                set(&format!("{staging}fresh"), "f"),
                set(&format!("{staging}__quorumd/members/9"), "theirs"),
                set(&format!("{staging}__quorumd/sessions/t"), "restored"),
            ],
        );
        let restore = |keys| KvOp::Restore {
            staging: staging.into(),
            keep: vec!["__quorumd/members/".into()],
            keys,
            marker: "__quorumd/restored/00ff".into(),
            now_ms: 0,
        };
        // The wrong count changes nothing.
        let (out, _) = apply(&db, 4, vec![restore(3)]);
        assert!(errors(out)[0].contains("staged 4 keys"));
        assert_eq!(
            read(&db).get("old").unwrap().value.unwrap().value.unwrap(),
            b"gone"
        );

        let (out, touched) = apply(&db, 5, vec![restore(4)]);
        assert!(matches!(out, Outcome::Committed(_)), "{out:?}");
        assert!(touched.contains(&Touched::Prefix(String::new())));
        let all = read(&db).keys("", None, BIG).unwrap().unwrap().value;
        assert_eq!(
            all,
            vec![
                "__quorumd/members/1",
                "__quorumd/restored/00ff",
                "both",
                "fresh"
            ],
            "the membership is kept, and no session survives a restore"
        );
        let both = read(&db).get("both").unwrap().value.unwrap();
        assert_eq!(both.value.as_deref(), Some(&b"new"[..]));
        assert_eq!((both.create_index, both.modify_index), (5, 5));
        assert_eq!(
            read(&db).state().bytes,
            ("both".len() + 3 + "fresh".len() + 1) as u64
        );
    }

    #[test]
    fn a_restore_ends_every_session_with_its_lock_delay_and_never_opens_the_acls() {
        use crate::session::{Behavior, SessionSpec};
        let db = db();
        let session = |id: &str| KvOp::SessionCreate {
            id: id.into(),
            session: SessionSpec {
                name: "job".into(),
                node: 1,
                ttl_ms: 10_000,
                lock_delay_ms: 15_000,
                behavior: Behavior::Release,
                node_check: false,
            },
            max_sessions: 100,
            max_per_node: 100,
        };
        let lock = |id: &str, now_ms| KvOp::Lock {
            key: "job".into(),
            value: b"mine".to_vec(),
            flags: 0,
            session: id.into(),
            now_ms,
        };
        apply(&db, 2, vec![session("s1")]);
        let (out, _) = apply(&db, 3, vec![lock("s1", 1_000)]);
        assert!(matches!(out, Outcome::Committed(_)), "{out:?}");
        apply(
            &db,
            4,
            vec![
                set(crate::acl::BOOTSTRAP_KEY, "yes"),
                set("__quorumd/acl/token/now", "current"),
            ],
        );
        // A backup taken before the ACL bootstrap, with a session of its own.
        let staging = "__quorumd/restore/01/";
        apply(
            &db,
            5,
            vec![
                set(&format!("{staging}job"), "theirs"),
                set(&format!("{staging}__quorumd/acl/token/old"), "revoked"),
                set(&format!("{staging}__quorumd/sessions/s0"), "{}"),
            ],
        );
        let (out, _) = apply(
            &db,
            6,
            vec![KvOp::Restore {
                staging: staging.into(),
                keep: vec![],
                keys: 3,
                marker: "__quorumd/restored/01".into(),
                now_ms: 5_000,
            }],
        );
        assert!(matches!(out, Outcome::Committed(_)), "{out:?}");
        let all = read(&db).keys("", None, BIG).unwrap().unwrap().value;
        assert_eq!(
            all,
            vec![
                "__quorumd/acl/bootstrap",
                "__quorumd/acl/token/now",
                "__quorumd/lockdelay/job",
                "__quorumd/restored/01",
                "job"
            ],
            "the running ACLs stay, no session survives, the freed lock is delayed"
        );
        let job = read(&db).get("job").unwrap().value.unwrap();
        assert_eq!(
            (job.value.as_deref(), job.session.as_str()),
            (Some(&b"theirs"[..]), "")
        );
        // The old holder's lock-delay runs from the restore: 5 s + 15 s.
        apply(&db, 7, vec![session("s2")]);
        let (out, _) = apply(&db, 8, vec![lock("s2", 19_999)]);
        assert!(errors(out)[0].contains("lock-delay"));
        let (out, _) = apply(&db, 9, vec![lock("s2", 20_000)]);
        assert!(matches!(out, Outcome::Committed(_)), "{out:?}");
    }
}
