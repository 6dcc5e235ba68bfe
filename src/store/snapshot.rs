//! The state machine as one byte string, for a follower that is behind the
//! compacted log.
//!
//! ```text
//! "QSNP" version:u8
//! index:u64 bytes:u64 floor:u64                       the store's counters
//! hashed:u8 hash:u64                                  the running hash of the
//!                                                     applied entries (version 2)
//! rows:u64      { key_len:u32 key record_len:u32 record }   live keys, sorted
//! tombs:u64     { key_len:u32 key index:u64 }             tombstones
//! crc32:u32                                           of everything before
//! ```
//!
//! Numbers are little-endian. A receiver checks the whole string (checksum,
//! lengths, UTF-8, record sizes) before Raft sees the snapshot, and installs
//! it in one write transaction: a crash leaves the old state whole.

use crate::store::machine::{ReadTables, Record, Result, StoreState, Tables};

const MAGIC: &[u8; 4] = b"QSNP";
const VERSION: u8 = 2;
/// The version before the applied hash; still read.
const VERSION_1: u8 = 1;

/// What a snapshot's header says, besides its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The store's counters.
    pub state: StoreState,
    /// The running hash of the entries applied up to the snapshot's index,
    /// if the sender knew it.
    pub applied_hash: Option<u64>,
}

/// Builds the snapshot of the store as `tables` sees it, with the running
/// hash of the entries applied up to it.
pub fn build(tables: &ReadTables, applied_hash: Option<u64>) -> Result<Vec<u8>> {
    let state = tables.state();
    let rows = tables.rows()?;
    let tombstones = tables.tombstones()?;
    let size: usize = rows
        .iter()
        .map(|(k, r)| k.len() + r.value.len() + 40)
        .sum::<usize>()
        + tombstones.iter().map(|(k, _)| k.len() + 12).sum::<usize>()
        + 64;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for n in [state.index, state.bytes, state.floor] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(u8::from(applied_hash.is_some()));
    out.extend_from_slice(&applied_hash.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for (key, record) in &rows {
        let record = record.encode();
        put_bytes(&mut out, key.as_bytes());
        put_bytes(&mut out, &record);
    }
    out.extend_from_slice(&(tombstones.len() as u64).to_le_bytes());
    for (key, index) in &tombstones {
        put_bytes(&mut out, key.as_bytes());
        out.extend_from_slice(&index.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The snapshot of an empty store, for tests of the layers above.
#[cfg(test)]
pub(crate) fn empty() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&[0; 24]);
    out.push(1);
    out.extend_from_slice(&crate::raft::storage::BOOTSTRAP_HASH.to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Checks a snapshot without installing it.
pub fn validate(data: &[u8]) -> std::result::Result<Header, String> {
    walk(data, |_, _| Ok(()), |_, _| Ok(()))
}

/// Checks a snapshot and calls `row` with each of its live keys, in order
/// (a backup's restore stages them); tombstones are skipped.
pub fn each_row<'a>(
    data: &'a [u8],
    row: impl FnMut(&'a str, Record) -> std::result::Result<(), String>,
) -> std::result::Result<Header, String> {
    walk(data, row, |_, _| Ok(()))
}

/// Replaces the store with the snapshot. The caller checked it with
/// [`validate`]; a bad snapshot here is reported as damage. Returns its
/// header.
pub fn install(tables: &mut Tables, data: &[u8]) -> Result<Header> {
    let header = validate(data).map_err(|e| redb::Error::Corrupted(format!("snapshot: {e}")))?;
    // Row by row into the transaction: the snapshot's bytes are the only
    // copy of the store held in memory, never a list of its rows as well.
    tables.clear()?;
    let tables = std::cell::RefCell::new(tables);
    let failed = std::cell::RefCell::new(None);
    let keep = |r: Result<()>| match r {
        Ok(()) => Ok(()),
        Err(e) => {
            failed.borrow_mut().get_or_insert(e);
            Err("the store refused a row".to_string())
        }
    };
    let walked = walk(
        data,
        |key, record| keep(tables.borrow_mut().insert_row(key, &record)),
        |key, index| keep(tables.borrow_mut().insert_tombstone(key, index)),
    );
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    walked.map_err(|e| redb::Error::Corrupted(format!("snapshot: {e}")))?;
    tables.into_inner().set_state(header.state)?;
    Ok(header)
}

/// Reads the snapshot, calling `row` for each live key and `tomb` for each
/// tombstone. Returns the header.
fn walk<'a>(
    data: &'a [u8],
    mut row: impl FnMut(&'a str, Record) -> std::result::Result<(), String>,
    mut tomb: impl FnMut(&'a str, u64) -> std::result::Result<(), String>,
) -> std::result::Result<Header, String> {
    if data.len() < MAGIC.len() + 1 + 4 {
        return Err(format!("{} bytes is too short for a snapshot", data.len()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4"));
    if crc32fast::hash(body) != want {
        return Err("checksum mismatch".to_string());
    }
    let mut r = Cursor { buf: body };
    if r.take(4)? != MAGIC {
        return Err("not a quorumd snapshot".to_string());
    }
    let version = r.take(1)?[0];
    if version != VERSION && version != VERSION_1 {
        return Err(format!(
            "snapshot version {version} is not one this build reads ({VERSION_1} or {VERSION})"
        ));
    }
    let state = StoreState {
        index: r.u64()?,
        bytes: r.u64()?,
        floor: r.u64()?,
    };
    let applied_hash = if version == VERSION_1 {
        None
    } else {
        let hashed = r.take(1)?[0];
        let hash = r.u64()?;
        match hashed {
            0 => None,
            1 => Some(hash),
            other => return Err(format!("bad applied-hash flag {other}")),
        }
    };
    let mut bytes = 0u64;
    let mut last: Option<&str> = None;
    for _ in 0..r.u64()? {
        let key = r.str()?;
        if last.is_some_and(|l| l >= key) {
            return Err(format!("keys out of order at {key:?}"));
        }
        last = Some(key);
        let len = r.u32()? as usize;
        let record = Record::decode(r.take(len)?)?;
        bytes += crate::store::machine::size_of(key, &record);
        row(key, record)?;
    }
    if bytes != state.bytes {
        return Err(format!(
            "the keys add up to {bytes} bytes, the header says {}",
            state.bytes
        ));
    }
    for _ in 0..r.u64()? {
        let key = r.str()?;
        let index = r.u64()?;
        tomb(key, index)?;
    }
    if !r.buf.is_empty() {
        return Err(format!("{} bytes after the end", r.buf.len()));
    }
    Ok(Header {
        state,
        applied_hash,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("it ends early".to_string());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn str(&mut self) -> std::result::Result<&'a str, String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a key is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::{Command, KvOp};
    use crate::store::machine::create_tables;
    use redb::{backends::InMemoryBackend, Database, ReadableDatabase};

    fn db() -> Database {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        txn.commit().unwrap();
        db
    }

    fn apply(db: &Database, index: u64, ops: Vec<KvOp>) {
        let txn = db.begin_write().unwrap();
        Tables::open(&txn)
            .unwrap()
            .apply(
                index,
                &Command {
                    max_store_bytes: 1 << 30,
                    from_client: true,
                    ops,
                    reads: crate::store::command::ReadLimits::UNLIMITED,
                },
                true,
            )
            .unwrap();
        txn.commit().unwrap();
    }

    fn snapshot_of(db: &Database) -> Vec<u8> {
        build(
            &ReadTables::open(&db.begin_read().unwrap()).unwrap(),
            Some(42),
        )
        .unwrap()
    }

    #[test]
    fn a_snapshot_replaces_the_whole_store() {
        let src = db();
        for i in 0..50u64 {
            apply(
                &src,
                i + 2,
                vec![KvOp::Set {
                    key: format!("k/{i:03}"),
                    value: vec![i as u8; i as usize],
                    flags: i,
                }],
            );
        }
        apply(
            &src,
            60,
            vec![KvOp::Delete {
                key: "k/007".into(),
            }],
        );
        let data = snapshot_of(&src);
        let header = validate(&data).unwrap();
        assert_eq!(header.state.index, 60);
        assert_eq!(header.applied_hash, Some(42), "the applied hash travels");

        let dst = db();
        apply(
            &dst,
            2,
            vec![KvOp::Set {
                key: "stale".into(),
                value: b"x".to_vec(),
                flags: 0,
            }],
        );
        let txn = dst.begin_write().unwrap();
        let installed = install(&mut Tables::open(&txn).unwrap(), &data).unwrap();
        assert_eq!(installed, header);
        txn.commit().unwrap();

        let a = ReadTables::open(&src.begin_read().unwrap()).unwrap();
        let b = ReadTables::open(&dst.begin_read().unwrap()).unwrap();
        assert_eq!(
            a.list("", u64::MAX).unwrap().unwrap(),
            b.list("", u64::MAX).unwrap().unwrap()
        );
        assert_eq!(a.state(), b.state());
        assert_eq!(
            b.list("k/", u64::MAX).unwrap().unwrap().index,
            60,
            "tombstones travel too"
        );
        assert!(b.get("stale").unwrap().value.is_none());
        assert_eq!(snapshot_of(&dst), data);
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let src = db();
        apply(
            &src,
            2,
            vec![KvOp::Set {
                key: "a".into(),
                value: b"1".to_vec(),
                flags: 0,
            }],
        );
        let data = snapshot_of(&src);
        assert!(validate(&data[..data.len() - 1]).is_err());
        for at in [0, 5, 20, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            assert!(validate(&bad).is_err(), "flipped byte {at}");
        }
        assert!(validate(b"").unwrap_err().contains("too short"));
    }

    #[test]
    fn a_version_1_snapshot_is_read_without_a_hash() {
        let src = db();
        apply(
            &src,
            2,
            vec![KvOp::Set {
                key: "a".into(),
                value: b"1".to_vec(),
                flags: 0,
            }],
        );
        let v2 = snapshot_of(&src);
        // Version 1 had no hash fields: drop them and sign it again.
        let mut v1 = v2[..v2.len() - 4].to_vec();
        v1[4] = VERSION_1;
        v1.drain(29..38);
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let header = validate(&v1).unwrap();
        assert_eq!(header.applied_hash, None);
        assert_eq!(header.state, validate(&v2).unwrap().state);
    }
}
