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
//!
//! A connection opens with `Hello` from the dialer, answered by `Ack` or
//! `Reject`. Anything malformed is a [`WireError`]; the caller closes that one
//! connection and nothing else.

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
/// The wire version; bumped on incompatible changes.
pub const VERSION: u8 = 1;

const KIND_HELLO: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_REJECT: u8 = 3;
const KIND_RAFT: u8 = 4;

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

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Opens a connection.
    Hello {
        purpose: Purpose,
        from: u64,
        to: u64,
        cluster: String,
    },
    /// Accepts a `Hello`.
    Ack { node_id: u64, cluster: String },
    /// Refuses a `Hello`; the connection closes after it.
    Reject { reason: String },
    /// A Raft message for one group.
    Raft { group: GroupId, message: Message },
}

/// A frame that could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The length prefix is over the limit.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The payload does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
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
            } => {
                out.push(KIND_HELLO);
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.push(*purpose as u8);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&to.to_be_bytes());
                put_str(&mut out, cluster);
            }
            Frame::Ack { node_id, cluster } => {
                out.push(KIND_ACK);
                out.extend_from_slice(&node_id.to_be_bytes());
                put_str(&mut out, cluster);
            }
            Frame::Reject { reason } => {
                out.push(KIND_REJECT);
                put_str(&mut out, reason);
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
                }
            }
            KIND_ACK => Frame::Ack {
                node_id: r.u64()?,
                cluster: r.string()?,
            },
            KIND_REJECT => Frame::Reject {
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

/// Reads one frame. The length is checked before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
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
        });
        roundtrip(Frame::Ack {
            node_id: 7,
            cluster: "c3".into(),
        });
        roundtrip(Frame::Reject {
            reason: "wrong cluster".into(),
        });
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
    fn oversized_prefix_is_refused_before_allocating() {
        let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3];
        let err = futures_lite::future::block_on(read_frame(&mut bytes)).unwrap_err();
        assert!(matches!(err, WireError::TooLarge(_)));
    }
}
