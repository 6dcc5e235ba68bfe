//! The peer wire format: length-prefixed frames.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! payload, at most [`MAX_FRAME_BYTES`]. The first payload byte is the kind:
//!
//! | kind | frame | body |
//! |---|---|---|
//! | 1 | `Hello` | magic `QRMD`, version u8, purpose u8, from u64, to u64, cluster name (u16 length + UTF-8) |
//! | 2 | `Ack` | node id u64, cluster name |
//! | 3 | `Reject` | reason (u16 length + UTF-8) |
//! | 4 | `Raft` | topic (u16 length + UTF-8), partition u32, encoded `eraftpb::Message` |
//! | 5 | `SnapshotBegin` | topic, partition, total data length u64, encoded `MsgSnapshot` without its data |
//! | 6 | `SnapshotChunk` | the next at most [`SNAPSHOT_CHUNK_BYTES`] of the snapshot's data |
//! | 7 | `Keepalive` | nothing: an idle Raft stream says it is still there |
//!
//! A snapshot can be far larger than a frame, so a `MsgSnapshot` travels as
//! one `SnapshotBegin` followed by `SnapshotChunk`s on the same stream, and
//! is reassembled ([`SnapshotAssembly`]) before Raft sees it.
//!
//! A connection opens with `Hello` from the dialer, answered by `Ack` or
//! `Reject`. Handshake frames are read with a limit of [`HANDSHAKE_MAX_BYTES`],
//! not the frame limit, so a stray client cannot make a node allocate much
//! before it has said who it is. Anything malformed is a [`WireError`]; the
//! caller closes that one connection and nothing else.
//!
//! On a cluster with `[tls]` the same frames travel inside TLS. A valid length
//! prefix is at most 4 MiB, so its first byte is always 0; a TLS record starts
//! with 0x14..=0x17 followed by 0x03. [`read_handshake_frame`] tells the two
//! apart, so that a TLS peer of a plaintext node (or the other way round) is
//! refused with a sentence that says so.

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use protobuf::Message as _;
use raft::prelude::Message;

/// The hard limit on one frame's payload. A metadata group's messages are
/// small; 4 MiB leaves room for snapshots of a small state machine while
/// bounding what a bad peer can make us allocate.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Magic bytes that open every `Hello`, so that a stray client is refused at once.
pub const MAGIC: &[u8; 4] = b"QRMD";
/// The wire version; bumped on incompatible changes (2: `Keepalive`).
pub const VERSION: u8 = 3;
/// The limit on a `Hello`, `Ack` or `Reject` payload. A `Hello` is 29 bytes
/// plus the cluster name (at most [`crate::config::MAX_CLUSTER_NAME_BYTES`]).
pub const HANDSHAKE_MAX_BYTES: usize = 1024;
/// A `Reject` reason is clipped to this many bytes, so it fits a handshake frame.
pub const MAX_REASON_BYTES: usize = 512;
/// The largest piece of snapshot data in one frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest snapshot a node accepts. The store is capped at 1 GiB; this
/// leaves room for per-key overhead. Memory grows with what arrives, never
/// with what a peer announces.
pub const MAX_SNAPSHOT_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_REJECT: u8 = 3;
const KIND_RAFT: u8 = 4;
const KIND_SNAPSHOT_BEGIN: u8 = 5;
const KIND_SNAPSHOT_CHUNK: u8 = 6;
const KIND_KEEPALIVE: u8 = 7;

/// Why a connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A health probe: the handshake itself is the answer; then close.
    Probe = 1,
    /// A stream of Raft frames from the dialer.
    Raft = 2,
}

/// A Raft group's name: a topic and a partition, such as `__meta/0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    /// The topic.
    pub topic: String,
    /// The partition within the topic.
    pub partition: u32,
}

impl GroupId {
    /// The metadata group every cluster runs.
    pub fn meta() -> Self {
        GroupId {
            topic: "__meta".to_string(),
            partition: 0,
        }
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Why a `Hello` was refused, so that a dialer can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// Any other reason (the sentence says which).
    Refused = 0,
    /// The dialer is not a member of this cluster (yet).
    NotMember = 1,
    /// The dialer's id was removed from this cluster.
    Removed = 2,
    /// The dialer is a member that held state, and starts without it.
    StateLost = 3,
    /// The dialer belongs to another cluster id.
    OtherCluster = 4,
}

impl RejectCode {
    fn from_u8(b: u8) -> RejectCode {
        match b {
            1 => RejectCode::NotMember,
            2 => RejectCode::Removed,
            3 => RejectCode::StateLost,
            4 => RejectCode::OtherCluster,
            _ => RejectCode::Refused,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Opens a connection.
    Hello {
        purpose: Purpose,
        from: u64,
        to: u64,
        cluster: String,
        /// The dialer's cluster id; empty before its cluster formed (or
        /// before it joined one).
        cluster_id: String,
        /// True if the dialer has Raft state (it is not a fresh data dir).
        has_state: bool,
    },
    /// Accepts a `Hello`.
    Ack {
        node_id: u64,
        cluster: String,
        /// The listener's cluster id; empty before its cluster formed.
        cluster_id: String,
    },
    /// Refuses a `Hello`; the connection closes after it.
    Reject { code: RejectCode, reason: String },
    /// A Raft message for one group.
    Raft { group: GroupId, message: Message },
    /// Opens a snapshot of `total` data bytes; chunks follow.
    SnapshotBegin {
        group: GroupId,
        total: u64,
        message: Message,
    },
    /// The next piece of the snapshot's data.
    SnapshotChunk { data: Vec<u8> },
    /// Sent on an idle Raft stream, so the receiver can close streams that
    /// went silent without closing healthy ones.
    Keepalive,
}

/// A frame that could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The length prefix is over the limit (the frame limit, or the smaller
    /// one for handshake frames).
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The payload does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The bytes are a TLS record, not a frame: the other side speaks TLS
    /// and this side does not.
    #[error("the peer speaks TLS, and this node has no [tls] section")]
    TlsRecord,
}

impl Frame {
    /// Encodes the frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Frame::Hello {
                purpose,
                from,
                to,
                cluster,
                cluster_id,
                has_state,
            } => {
                out.push(KIND_HELLO);
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.push(*purpose as u8);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&to.to_be_bytes());
                put_str(&mut out, cluster);
                put_str(&mut out, cluster_id);
                out.push(u8::from(*has_state));
            }
            Frame::Ack {
                node_id,
                cluster,
                cluster_id,
            } => {
                out.push(KIND_ACK);
                out.extend_from_slice(&node_id.to_be_bytes());
                put_str(&mut out, cluster);
                put_str(&mut out, cluster_id);
            }
            Frame::Reject { code, reason } => {
                out.push(KIND_REJECT);
                out.push(*code as u8);
                put_str(&mut out, clip(reason, MAX_REASON_BYTES));
            }
            Frame::Raft { group, message } => {
                out.push(KIND_RAFT);
                put_str(&mut out, &group.topic);
                out.extend_from_slice(&group.partition.to_be_bytes());
                // Encoding an in-memory protobuf message into a Vec cannot fail.
                message
                    .write_to_vec(&mut out)
                    .expect("protobuf encoding into a Vec");
            }
            Frame::SnapshotBegin {
                group,
                total,
                message,
            } => {
                out.push(KIND_SNAPSHOT_BEGIN);
                put_str(&mut out, &group.topic);
                out.extend_from_slice(&group.partition.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                message
                    .write_to_vec(&mut out)
                    .expect("protobuf encoding into a Vec");
            }
            Frame::SnapshotChunk { data } => {
                out.push(KIND_SNAPSHOT_CHUNK);
                out.extend_from_slice(data);
            }
            Frame::Keepalive => out.push(KIND_KEEPALIVE),
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes one payload (without its length prefix).
    pub fn decode(payload: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader { buf: payload };
        let frame = match r.u8()? {
            KIND_HELLO => {
                if r.take(4)? != MAGIC {
                    return Err(WireError::Malformed("bad magic in hello".into()));
                }
                let version = r.u8()?;
                if version != VERSION {
                    return Err(WireError::Malformed(format!(
                        "unsupported wire version {version} (this node speaks {VERSION})"
                    )));
                }
                let purpose = match r.u8()? {
                    1 => Purpose::Probe,
                    2 => Purpose::Raft,
                    p => return Err(WireError::Malformed(format!("unknown purpose {p}"))),
                };
                Frame::Hello {
                    purpose,
                    from: r.u64()?,
                    to: r.u64()?,
                    cluster: r.string()?,
                    cluster_id: r.string()?,
                    has_state: match r.u8()? {
                        0 => false,
                        1 => true,
                        b => return Err(WireError::Malformed(format!("bad state flag {b}"))),
                    },
                }
            }
            KIND_ACK => Frame::Ack {
                node_id: r.u64()?,
                cluster: r.string()?,
                cluster_id: r.string()?,
            },
            KIND_REJECT => Frame::Reject {
                code: RejectCode::from_u8(r.u8()?),
                reason: r.string()?,
            },
            KIND_RAFT => {
                let topic = r.string()?;
                let partition = r.u32()?;
                let mut message = Message::default();
                message
                    .merge_from_bytes(r.buf)
                    .map_err(|e| WireError::Malformed(format!("bad raft message: {e}")))?;
                r.buf = &[];
                Frame::Raft {
                    group: GroupId { topic, partition },
                    message,
                }
            }
            KIND_SNAPSHOT_BEGIN => {
                let topic = r.string()?;
                let partition = r.u32()?;
                let total = r.u64()?;
                let mut message = Message::default();
                message
                    .merge_from_bytes(r.buf)
                    .map_err(|e| WireError::Malformed(format!("bad raft message: {e}")))?;
                r.buf = &[];
                Frame::SnapshotBegin {
                    group: GroupId { topic, partition },
                    total,
                    message,
                }
            }
            KIND_SNAPSHOT_CHUNK => {
                let data = r.buf.to_vec();
                r.buf = &[];
                Frame::SnapshotChunk { data }
            }
            KIND_KEEPALIVE => Frame::Keepalive,
            k => return Err(WireError::Malformed(format!("unknown frame kind {k}"))),
        };
        if !r.buf.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes after frame",
                r.buf.len()
            )));
        }
        Ok(frame)
    }
}

/// The frames that carry one Raft message: one `Raft` frame, or for a
/// snapshot a `SnapshotBegin` and its chunks. Frames are encoded one at a
/// time, as the caller writes them, so a large snapshot is never copied whole.
pub fn message_frames(group: &GroupId, message: &Message) -> impl Iterator<Item = Vec<u8>> {
    let is_snapshot = message.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
    let data: bytes::Bytes = if is_snapshot {
        message.get_snapshot().data.clone()
    } else {
        Default::default()
    };
    let head = if is_snapshot {
        let mut bare = message.clone();
        bare.mut_snapshot().clear_data();
        Frame::SnapshotBegin {
            group: group.clone(),
            total: data.len() as u64,
            message: bare,
        }
    } else {
        Frame::Raft {
            group: group.clone(),
            message: message.clone(),
        }
    };
    let chunks = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
    std::iter::once(head.encode()).chain((0..chunks).map(move |i| {
        let end = ((i + 1) * SNAPSHOT_CHUNK_BYTES).min(data.len());
        Frame::SnapshotChunk {
            data: data[i * SNAPSHOT_CHUNK_BYTES..end].to_vec(),
        }
        .encode()
    }))
}

/// Reassembles a snapshot from its frames, on one inbound stream.
#[derive(Debug)]
pub struct SnapshotAssembly {
    open: Option<(GroupId, u64, Message, Vec<u8>)>,
    limit: u64,
}

impl Default for SnapshotAssembly {
    fn default() -> Self {
        SnapshotAssembly::with_limit(MAX_SNAPSHOT_BYTES)
    }
}

/// The largest snapshot accepted from a store capped at `max_store_bytes`:
/// its keys and values, plus framing (40 bytes of record header and lengths
/// per key, the reserved keys, the tombstones): four times the cap and
/// 16 MiB, which holds while keys and values average 14 bytes or more,
/// within [`MAX_SNAPSHOT_BYTES`].
pub fn snapshot_limit(max_store_bytes: u64) -> u64 {
    max_store_bytes
        .saturating_mul(4)
        .saturating_add(16 * 1024 * 1024)
        .min(MAX_SNAPSHOT_BYTES)
}

impl SnapshotAssembly {
    /// Refuses a snapshot that announces more than `limit` bytes, before
    /// buffering any of it.
    pub fn with_limit(limit: u64) -> Self {
        SnapshotAssembly { open: None, limit }
    }

    /// True while a snapshot's chunks are expected.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Takes a `SnapshotBegin` or `SnapshotChunk`; returns the whole
    /// message once its last chunk arrived.
    pub fn push(&mut self, frame: Frame) -> Result<Option<(GroupId, Message)>, WireError> {
        match frame {
            Frame::SnapshotBegin {
                group,
                total,
                message,
            } => {
                if self.open.is_some() {
                    return Err(WireError::Malformed(
                        "a snapshot began before the previous one ended".into(),
                    ));
                }
                if total > self.limit {
                    return Err(WireError::Malformed(format!(
                        "a snapshot of {total} bytes exceeds the {}-byte limit \
                         (max_store_bytes plus framing)",
                        self.limit
                    )));
                }
                if message.get_msg_type() != raft::prelude::MessageType::MsgSnapshot {
                    return Err(WireError::Malformed(format!(
                        "a snapshot frame carries a {:?}",
                        message.get_msg_type()
                    )));
                }
                self.open = Some((group, total, message, Vec::new()));
            }
            Frame::SnapshotChunk { data } => {
                let Some((_, total, _, buf)) = self.open.as_mut() else {
                    return Err(WireError::Malformed(
                        "a snapshot chunk without a snapshot".into(),
                    ));
                };
                if buf.len() as u64 + data.len() as u64 > *total {
                    return Err(WireError::Malformed(
                        "snapshot chunks exceed the announced length".into(),
                    ));
                }
                buf.extend_from_slice(&data);
            }
            other => {
                return Err(WireError::Malformed(format!(
                    "unexpected frame {} inside a snapshot",
                    other.kind_name()
                )))
            }
        }
        match &self.open {
            Some((_, total, _, buf)) if buf.len() as u64 == *total => {
                let (group, _, mut message, buf) = self.open.take().expect("open");
                message.mut_snapshot().set_data(buf.into());
                Ok(Some((group, message)))
            }
            _ => Ok(None),
        }
    }
}

impl Frame {
    /// The frame's kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Ack { .. } => "Ack",
            Frame::Reject { .. } => "Reject",
            Frame::Raft { .. } => "Raft",
            Frame::SnapshotBegin { .. } => "SnapshotBegin",
            Frame::SnapshotChunk { .. } => "SnapshotChunk",
            Frame::Keepalive => "Keepalive",
        }
    }
}

/// Reads one frame. The length is checked before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    read_frame_within(r, MAX_FRAME_BYTES).await
}

/// Reads one handshake frame (`Hello`, `Ack` or `Reject`): at most
/// [`HANDSHAKE_MAX_BYTES`], and a TLS record is reported as such.
pub async fn read_handshake_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    read_frame_within(r, HANDSHAKE_MAX_BYTES).await
}

/// True if `prefix` starts a TLS record (handshake, alert, change cipher
/// spec or application data, version 3.x) rather than a frame length.
pub fn is_tls_record(prefix: &[u8]) -> bool {
    matches!(prefix, [0x14..=0x17, 0x03, ..])
}

async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    if is_tls_record(&len) {
        return Err(WireError::TlsRecord);
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(WireError::TooLarge(len));
    }
    if len == 0 {
        return Err(WireError::Malformed("empty frame".into()));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Frame::decode(&payload)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names and reasons are short; clip rather than fail on absurd input.
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed("frame ends early".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().unwrap()) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| WireError::Malformed("string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::MessageType;

    fn roundtrip(frame: Frame) {
        let bytes = frame.encode();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), frame);
    }

    #[test]
    fn every_frame_kind_roundtrips() {
        roundtrip(Frame::Hello {
            purpose: Purpose::Raft,
            from: 1,
            to: 2,
            cluster: "c3".into(),
            cluster_id: "4f2a".into(),
            has_state: true,
        });
        roundtrip(Frame::Hello {
            purpose: Purpose::Probe,
            from: 1,
            to: 2,
            cluster: "c3".into(),
            cluster_id: String::new(),
            has_state: false,
        });
        roundtrip(Frame::Ack {
            node_id: 7,
            cluster: "c3".into(),
            cluster_id: "4f2a".into(),
        });
        for code in [
            RejectCode::Refused,
            RejectCode::NotMember,
            RejectCode::Removed,
            RejectCode::StateLost,
            RejectCode::OtherCluster,
        ] {
            roundtrip(Frame::Reject {
                code,
                reason: "wrong cluster".into(),
            });
        }
        roundtrip(Frame::Keepalive);
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 1;
        message.to = 3;
        message.term = 9;
        roundtrip(Frame::Raft {
            group: GroupId::meta(),
            message,
        });
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for junk in [
            &b"\x01QRMX"[..],
            b"\x09",
            b"\x01QRMD\x01\x05",
            b"\x04\xff\xff",
        ] {
            assert!(matches!(Frame::decode(junk), Err(WireError::Malformed(_))));
        }
    }

    #[test]
    fn a_snapshot_travels_in_chunks_and_is_reassembled() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = 1;
        message.to = 2;
        let data: Vec<u8> = (0..(2 * SNAPSHOT_CHUNK_BYTES + 17))
            .map(|i| i as u8)
            .collect();
        message.mut_snapshot().set_data(data.clone().into());
        message.mut_snapshot().mut_metadata().index = 42;
        let frames: Vec<Vec<u8>> = message_frames(&GroupId::meta(), &message).collect();
        assert_eq!(frames.len(), 4, "a begin frame and three chunks");
        assert!(frames.iter().all(|f| f.len() <= SNAPSHOT_CHUNK_BYTES + 64));
        let mut assembly = SnapshotAssembly::default();
        let mut whole = None;
        for f in &frames {
            assert!(whole.is_none(), "complete before the last chunk");
            whole = assembly.push(Frame::decode(&f[4..]).unwrap()).unwrap();
        }
        let (group, got) = whole.expect("complete after the last chunk");
        assert_eq!(group, GroupId::meta());
        assert_eq!(got, message);
        assert!(!assembly.is_open());
        // A plain message is one frame.
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(message_frames(&GroupId::meta(), &hb).count(), 1);
    }

    #[test]
    fn bad_snapshot_sequences_are_malformed() {
        let mut a = SnapshotAssembly::default();
        assert!(a.push(Frame::SnapshotChunk { data: vec![1] }).is_err());
        let mut snap = Message::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        let begin = |total| Frame::SnapshotBegin {
            group: GroupId::meta(),
            total,
            message: snap.clone(),
        };
        assert!(a.push(begin(MAX_SNAPSHOT_BYTES + 1)).is_err());
        let mut small = SnapshotAssembly::with_limit(snapshot_limit(1024));
        assert!(small.push(begin(snapshot_limit(1024) + 1)).is_err());
        let mut a = SnapshotAssembly::default();
        assert!(a.push(begin(2)).unwrap().is_none());
        assert!(a
            .push(Frame::SnapshotChunk {
                data: vec![1, 2, 3]
            })
            .is_err());
        let mut a = SnapshotAssembly::default();
        a.push(begin(2)).unwrap();
        assert!(a.push(begin(2)).is_err());
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        let mut a = SnapshotAssembly::default();
        assert!(a
            .push(Frame::SnapshotBegin {
                group: GroupId::meta(),
                total: 0,
                message: hb
            })
            .is_err());
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3];
        let err = futures_lite::future::block_on(read_frame(&mut bytes)).unwrap_err();
        assert!(matches!(err, WireError::TooLarge(_)));
    }

    #[test]
    fn handshake_frames_have_a_small_limit() {
        let big = Frame::Hello {
            purpose: Purpose::Raft,
            from: 1,
            to: 2,
            cluster: "x".repeat(2000),
            cluster_id: String::new(),
            has_state: true,
        }
        .encode();
        let err = futures_lite::future::block_on(read_handshake_frame(&mut &big[..])).unwrap_err();
        assert!(matches!(err, WireError::TooLarge(n) if n == big.len() - 4));
        // The same frame is fine where the frame limit applies.
        assert!(futures_lite::future::block_on(read_frame(&mut &big[..])).is_ok());
    }

    #[test]
    fn a_tls_record_is_named_as_such() {
        // The first bytes of a TLS 1.3 ClientHello and of an alert.
        for record in [
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..],
            &[0x15, 0x03, 0x03, 0, 2, 2, 40],
        ] {
            let err =
                futures_lite::future::block_on(read_handshake_frame(&mut &record[..])).unwrap_err();
            assert!(matches!(err, WireError::TlsRecord), "{err}");
        }
    }

    #[test]
    fn a_long_reject_reason_is_clipped_on_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_BYTES);
        let bytes = Frame::Reject {
            code: RejectCode::Refused,
            reason,
        }
        .encode();
        assert!(bytes.len() - 4 <= HANDSHAKE_MAX_BYTES);
        match Frame::decode(&bytes[4..]).unwrap() {
            Frame::Reject { reason, .. } => assert_eq!(reason.len(), MAX_REASON_BYTES),
            other => panic!("{other:?}"),
        }
    }
}
