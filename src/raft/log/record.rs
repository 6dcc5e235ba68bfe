//! The records of a log segment, and how they are framed.
//!
//! ```text
//! record  = len:u32 crc:u32 kind:u8 payload[len]    crc32 of kind and payload
//! ```
//!
//! Numbers are little-endian. A zero `len` with a zero `crc` is never a
//! record: segments are zero-filled when they are made, so it marks the end
//! of what was written.
//!
//! | kind | payload | meaning on replay |
//! |---|---|---|
//! | `Header` | magic `QWAL`, version:u8, seq:u64 | first record of every segment |
//! | `Base` | index:u64 term:u64 | the log as this segment found it ends at (index, term) |
//! | `Entries` | count:u32 { len:u32 protobuf Entry } | append; an entry at or below the last index replaces the tail from there |
//! | `HardState` | term:u64 vote:u64 commit:u64 | the newest term, vote and commit |
//! | `Snapshot` | index:u64 term:u64 | a snapshot was installed: the log is empty after (index, term) |
//! | `Synced` | offset:u64 | every byte of this segment before `offset` reached the disk |

use protobuf::Message as _;
use raft::prelude::{Entry, HardState};

/// The bytes in front of every payload.
pub const HEADER_BYTES: usize = 9;
/// The largest payload a record may declare: a Ready's entries are bounded
/// far below this (raft's `max_committed_size_per_ready` and message
/// limits), so a larger length is damage, not data.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;
/// The segment magic.
pub const MAGIC: &[u8; 4] = b"QWAL";
/// The segment format written today.
pub const VERSION: u8 = 1;

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// First record of a segment: its sequence number.
    Header { seq: u64 },
    /// The last index and term of the log when this segment was started.
    Base { index: u64, term: u64 },
    /// Entries to append (replacing any tail from the first one's index).
    Entries(Vec<Entry>),
    /// The newest hard state.
    HardState(HardState),
    /// A snapshot was installed at (index, term): the log restarts after it.
    Snapshot { index: u64, term: u64 },
    /// Everything before `offset` in this segment was made durable.
    Synced { offset: u64 },
}

const KIND_HEADER: u8 = 1;
const KIND_BASE: u8 = 2;
const KIND_ENTRIES: u8 = 3;
const KIND_HARD_STATE: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_SYNCED: u8 = 6;

impl Record {
    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        let kind = match self {
            Record::Header { seq } => {
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.extend_from_slice(&seq.to_le_bytes());
                KIND_HEADER
            }
            Record::Base { index, term } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
                KIND_BASE
            }
            Record::Entries(entries) => {
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    let size = e.compute_size();
                    out.extend_from_slice(&size.to_le_bytes());
                    let at = out.len();
                    out.resize(at + size as usize, 0);
                    // Writing into a slice of the computed size cannot fail.
                    let mut os = protobuf::CodedOutputStream::bytes(&mut out[at..]);
                    e.write_to_with_cached_sizes(&mut os)
                        .expect("an entry encodes into its computed size");
                }
                KIND_ENTRIES
            }
            Record::HardState(hs) => {
                for n in [hs.term, hs.vote, hs.commit] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                KIND_HARD_STATE
            }
            Record::Snapshot { index, term } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
                KIND_SNAPSHOT
            }
            Record::Synced { offset } => {
                out.extend_from_slice(&offset.to_le_bytes());
                KIND_SYNCED
            }
        };
        let len = (out.len() - start - HEADER_BYTES) as u32;
        out[start + 8] = kind;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The framed record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// What is found at an offset of a segment.
#[derive(Debug, PartialEq)]
pub enum Found {
    /// A record, and the offset just after it.
    Record(Record, usize),
    /// Zeros: nothing was written here.
    End,
    /// Bytes that are not a record: `why`.
    Bad(String),
}

/// Reads the record at `at` of `buf`.
pub fn read_at(buf: &[u8], at: usize) -> Found {
    let rest = &buf[at.min(buf.len())..];
    if rest.len() < HEADER_BYTES {
        return if rest.iter().all(|b| *b == 0) {
            Found::End
        } else {
            Found::Bad(format!("{} bytes too few for a record", rest.len()))
        };
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4"));
    if len == 0 && crc == 0 && rest[8] == 0 {
        return Found::End;
    }
    if len > MAX_PAYLOAD_BYTES || HEADER_BYTES + len > rest.len() {
        return Found::Bad(format!(
            "a record of {len} bytes does not fit in what is left of the segment"
        ));
    }
    let body = &rest[8..HEADER_BYTES + len];
    if crc32fast::hash(body) != crc {
        return Found::Bad("the record's checksum does not match".to_string());
    }
    match decode(body[0], &body[1..]) {
        Ok(r) => Found::Record(r, at + HEADER_BYTES + len),
        Err(why) => Found::Bad(why),
    }
}

fn decode(kind: u8, p: &[u8]) -> Result<Record, String> {
    let mut c = Cursor(p);
    let record = match kind {
        KIND_HEADER => {
            if c.take(4)? != MAGIC {
                return Err("not a quorumd log segment (bad magic)".to_string());
            }
            let version = c.take(1)?[0];
            if version != VERSION {
                return Err(format!(
                    "segment format version {version}, this build reads version {VERSION}"
                ));
            }
            Record::Header { seq: c.u64()? }
        }
        KIND_BASE => Record::Base {
            index: c.u64()?,
            term: c.u64()?,
        },
        KIND_ENTRIES => {
            let n = c.u32()? as usize;
            let mut entries = Vec::with_capacity(n.min(p.len() / 4));
            for _ in 0..n {
                let len = c.u32()? as usize;
                let mut e = Entry::default();
                e.merge_from_bytes(c.take(len)?)
                    .map_err(|e| format!("an entry does not decode: {e}"))?;
                entries.push(e);
            }
            if entries.is_empty() {
                return Err("an entries record without entries".to_string());
            }
            if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
                return Err(format!(
                    "entry {} follows entry {} in one record",
                    w[1].index, w[0].index
                ));
            }
            Record::Entries(entries)
        }
        KIND_HARD_STATE => Record::HardState(HardState {
            term: c.u64()?,
            vote: c.u64()?,
            commit: c.u64()?,
            ..Default::default()
        }),
        KIND_SNAPSHOT => Record::Snapshot {
            index: c.u64()?,
            term: c.u64()?,
        },
        KIND_SYNCED => Record::Synced { offset: c.u64()? },
        other => return Err(format!("unknown record kind {other}")),
    };
    if !c.0.is_empty() {
        return Err(format!("{} bytes after the end of a record", c.0.len()));
    }
    Ok(record)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a record ends early".to_string());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            context: b"ctx".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_record_round_trips() {
        let records = [
            Record::Header { seq: 7 },
            Record::Base { index: 10, term: 2 },
            Record::Entries(vec![entry(11, 2, b"a"), entry(12, 3, &[0; 300])]),
            Record::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 12,
                ..Default::default()
            }),
            Record::Snapshot { index: 40, term: 5 },
            Record::Synced { offset: 4096 },
        ];
        let mut buf = Vec::new();
        for r in &records {
            r.encode_into(&mut buf);
        }
        buf.extend_from_slice(&[0; 64]);
        let mut at = 0;
        for want in &records {
            match read_at(&buf, at) {
                Found::Record(got, next) => {
                    assert_eq!(&got, want);
                    at = next;
                }
                other => panic!("at {at}: {other:?}"),
            }
        }
        assert_eq!(read_at(&buf, at), Found::End);
        assert_eq!(read_at(&buf, buf.len()), Found::End);
    }

    #[test]
    fn damage_is_named_never_read_as_a_record() {
        let good = Record::Entries(vec![entry(1, 1, b"value")]).encode();
        for at in 0..good.len() {
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= bit;
                bad.extend_from_slice(&[0; 16]);
                assert!(
                    matches!(read_at(&bad, 0), Found::Bad(_) | Found::End),
                    "byte {at} bit {bit}"
                );
            }
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_at(&huge, 0), Found::Bad(w) if w.contains("does not fit")));
        assert!(matches!(read_at(&good[..5], 0), Found::Bad(_)));
    }
}
