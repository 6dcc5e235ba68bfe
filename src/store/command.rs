//! What a Raft entry of `__meta/0` carries.
//!
//! A [`Command`] is a list of [`KvOp`]s applied atomically, as Consul's
//! `/v1/txn` does; a single `PUT` or `DELETE` on `/v1/kv` is a command of one
//! op. Entries are encoded as a version byte followed by postcard (a compact,
//! stable serde format), so a node can refuse an entry of a future version
//! instead of misreading it.

use serde::{Deserialize, Serialize};

/// The encoding version of [`Command`] written today: the version byte, a
/// byte of [`hints`](Command::hints), then postcard. Version 1 (no hints, no
/// read limits) is still read.
pub const COMMAND_VERSION: u8 = 3;
/// The version of a command whose ops a node of the release before sessions,
/// ACLs and restores knows: plain KV commands are still written as version
/// 2, so that such a node keeps applying them during a rolling upgrade.
/// A command with a newer op is version 3, which that node cannot mistake
/// for one it knows.
const COMMAND_VERSION_2: u8 = 2;

/// The command has a `get-tree` or `delete-tree`: applying it may scan.
pub const HINT_TREE: u8 = 1;
/// The command has a read op (`get`, `get-or-empty`, `get-tree`).
pub const HINT_READS: u8 = 2;

/// What a transaction's reads may return, carried in the entry so that every
/// replica decides the same way, whatever its own cluster file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLimits {
    /// The most entries the reads may return, all ops together.
    pub max_reads: u64,
    /// The most bytes the answer may take, as
    /// [`answer_bytes`](crate::store::machine::answer_bytes) estimates it.
    pub max_response_bytes: u64,
}

impl ReadLimits {
    /// No limit: the cluster's own commands, and entries of version 1.
    pub const UNLIMITED: ReadLimits = ReadLimits {
        max_reads: u64::MAX,
        max_response_bytes: u64::MAX,
    };
}

/// One KV operation, with Consul's transaction verbs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// `set`: writes the value.
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    /// `cas`: writes only if the key's `ModifyIndex` is `index` (0: only if
    /// the key is absent).
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    /// `get`: reads the key; fails if it is absent.
    Get { key: String },
    /// `get-or-empty`: reads the key if present.
    GetOrEmpty { key: String },
    /// `get-tree`: reads every key under the prefix.
    GetTree { prefix: String },
    /// `check-index`: fails unless the key's `ModifyIndex` is `index`.
    CheckIndex { key: String, index: u64 },
    /// `check-not-exists`: fails if the key is present.
    CheckNotExists { key: String },
    /// `delete`: deletes the key if present.
    Delete { key: String },
    /// `delete-cas`: deletes only if the key's `ModifyIndex` is `index`.
    DeleteCas { key: String, index: u64 },
    /// `delete-tree`: deletes every key under the prefix (reserved keys
    /// excepted, when the command comes from a client).
    DeleteTree { prefix: String },
    // The variants below were added with sessions; postcard numbers
    // variants by position, so they go after the older ones and entries
    // written before them still decode.
    /// `lock` (`?acquire=`): writes the value and takes the key for the
    /// session, if the key is free or already held by it and no lock-delay
    /// holds it. `now_ms` is the proposer's wall clock (Unix ms), compared
    /// with the lock-delay recorded when a holder's session ended: the
    /// state machine never reads a clock.
    Lock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
        now_ms: u64,
    },
    /// `unlock` (`?release=`): writes the value and frees the key, if the
    /// session holds it.
    Unlock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// `check-session`: fails unless the session holds the key.
    CheckSession { key: String, session: String },
    /// Creates a session (`PUT /v1/session/create`); the id is chosen by
    /// the proposer. Fails past either bound, which travel in the entry.
    SessionCreate {
        id: String,
        session: crate::session::SessionSpec,
        max_sessions: u64,
        max_per_node: u64,
    },
    /// Renews a session: moves its `ModifyIndex`, which restarts the
    /// leader's TTL timer. Fails if the session is gone.
    SessionRenew { id: String },
    /// Ends a session: its locks are released (or its keys deleted, with
    /// behavior `delete`), and a lock-delay of `now_ms` plus the session's
    /// lock-delay is recorded on each. With `if_index`, only if the
    /// session's `ModifyIndex` is still that (an expiry that a renew
    /// overtook does nothing).
    SessionDestroy {
        id: String,
        now_ms: u64,
        if_index: Option<u64>,
    },
    /// A backup's restore, once its keys are staged under `staging` by
    /// earlier entries: every key outside `keep` and `staging` goes, and
    /// each staged key moves to its own name (written at this entry's
    /// index), unless it falls under `keep`; then `marker` is written, so
    /// the proposer can tell the swap happened. It fails, changing
    /// nothing, unless exactly `keys` keys are staged. Never sent by a
    /// client.
    Restore {
        staging: String,
        keep: Vec<String>,
        keys: u64,
        marker: String,
        /// The proposer's wall clock (Unix ms): the lock-delay of the locks
        /// the restore frees starts here (the state machine reads no clock).
        now_ms: u64,
    },
}

impl KvOp {
    /// True for the ops of command version 2 (before sessions, ACLs and
    /// restores).
    fn known_to_version_2(&self) -> bool {
        matches!(
            self,
            KvOp::Set { .. }
                | KvOp::Cas { .. }
                | KvOp::Get { .. }
                | KvOp::GetOrEmpty { .. }
                | KvOp::GetTree { .. }
                | KvOp::CheckIndex { .. }
                | KvOp::CheckNotExists { .. }
                | KvOp::Delete { .. }
                | KvOp::DeleteCas { .. }
                | KvOp::DeleteTree { .. }
        )
    }

    /// True if the op changes the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            KvOp::Set { .. }
                | KvOp::Cas { .. }
                | KvOp::Delete { .. }
                | KvOp::DeleteCas { .. }
                | KvOp::DeleteTree { .. }
                | KvOp::Lock { .. }
                | KvOp::Unlock { .. }
                | KvOp::SessionCreate { .. }
                | KvOp::SessionRenew { .. }
                | KvOp::SessionDestroy { .. }
                | KvOp::Restore { .. }
        )
    }

    /// True for the session verbs, which write the cluster's own rows.
    pub fn is_session_op(&self) -> bool {
        matches!(
            self,
            KvOp::SessionCreate { .. } | KvOp::SessionRenew { .. } | KvOp::SessionDestroy { .. }
        )
    }

    /// The key or prefix the op names.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Get { key }
            | KvOp::GetOrEmpty { key }
            | KvOp::CheckIndex { key, .. }
            | KvOp::CheckNotExists { key }
            | KvOp::Delete { key }
            | KvOp::DeleteCas { key, .. }
            | KvOp::Lock { key, .. }
            | KvOp::Unlock { key, .. }
            | KvOp::CheckSession { key, .. } => key,
            KvOp::SessionCreate { id, .. }
            | KvOp::SessionRenew { id }
            | KvOp::SessionDestroy { id, .. } => id,
            KvOp::GetTree { prefix } | KvOp::DeleteTree { prefix } => prefix,
            KvOp::Restore { staging, .. } => staging,
        }
    }

    /// True if the op names a prefix rather than one key.
    pub fn is_tree(&self) -> bool {
        matches!(
            self,
            KvOp::GetTree { .. } | KvOp::DeleteTree { .. } | KvOp::Restore { .. }
        )
    }
}

/// One Raft entry's worth of work, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The store's size cap as the proposing node knew it. Carried in the
    /// entry so that every node applies the same rule, even if their cluster
    /// files disagree.
    pub max_store_bytes: u64,
    /// True for a client's command: a `delete-tree` then leaves the
    /// reserved prefix alone.
    pub from_client: bool,
    /// The operations, in order.
    pub ops: Vec<KvOp>,
    /// The limits on what the reads may return.
    pub reads: ReadLimits,
}

/// Version 1 of [`Command`], as older nodes wrote it.
#[derive(Deserialize)]
struct CommandV1 {
    max_store_bytes: u64,
    from_client: bool,
    ops: Vec<KvOp>,
}

impl Command {
    /// Encodes the command as entry data.
    pub fn encode(&self) -> Vec<u8> {
        let version = if self.ops.iter().all(KvOp::known_to_version_2) {
            COMMAND_VERSION_2
        } else {
            COMMAND_VERSION
        };
        let out = vec![version, self.hints()];
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(self, out).expect("a command always encodes")
    }

    /// [`HINT_TREE`] and [`HINT_READS`], as they apply.
    pub fn hints(&self) -> u8 {
        let mut hints = 0;
        for op in &self.ops {
            if op.is_tree() {
                hints |= HINT_TREE;
            }
            if matches!(
                op,
                KvOp::Get { .. } | KvOp::GetOrEmpty { .. } | KvOp::GetTree { .. }
            ) {
                hints |= HINT_READS;
            }
        }
        hints
    }

    /// The hints of encoded entry data, without decoding it; a version 1
    /// entry may have any op, so it has every hint.
    pub fn hints_of(data: &[u8]) -> u8 {
        match data {
            [COMMAND_VERSION | COMMAND_VERSION_2, hints, ..] => *hints,
            [1, ..] => HINT_TREE | HINT_READS,
            _ => 0,
        }
    }

    /// The version of entry data written by a newer release than this one,
    /// if it is: such an entry must stop the node, never be skipped (the
    /// nodes that understand it apply it, and a node that skipped it would
    /// hold other data than they do).
    pub fn newer_version(data: &[u8]) -> Option<u8> {
        data.first().copied().filter(|&v| v > COMMAND_VERSION)
    }

    /// Decodes entry data written by [`Command::encode`] (or by a node of
    /// version 1).
    pub fn decode(data: &[u8]) -> Result<Command, String> {
        let malformed = |e: postcard::Error| format!("malformed command: {e}");
        match data.split_first() {
            None => Err("empty command".to_string()),
            Some((&(COMMAND_VERSION | COMMAND_VERSION_2), rest)) => match rest.split_first() {
                Some((_, body)) => postcard::from_bytes(body).map_err(malformed),
                None => Err("malformed command: no hints byte".to_string()),
            },
            Some((1, body)) => {
                let v1: CommandV1 = postcard::from_bytes(body).map_err(malformed)?;
                Ok(Command {
                    max_store_bytes: v1.max_store_bytes,
                    from_client: v1.from_client,
                    ops: v1.ops,
                    reads: ReadLimits::UNLIMITED,
                })
            }
            Some((v, _)) => Err(format!(
                "command version {v} is newer than this node understands ({COMMAND_VERSION})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ops_are_version_3_and_plain_kv_stays_version_2() {
        let command = |ops| Command {
            max_store_bytes: 1 << 20,
            from_client: true,
            ops,
            reads: ReadLimits::UNLIMITED,
        };
        let set = KvOp::Set {
            key: "a".into(),
            value: b"v".to_vec(),
            flags: 0,
        };
        let plain = command(vec![set.clone()]);
        assert_eq!(
            plain.encode()[0],
            2,
            "an older node still reads a plain KV command"
        );
        let lock = command(vec![
            set,
            KvOp::CheckSession {
                key: "a".into(),
                session: "s".into(),
            },
        ]);
        let bytes = lock.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(Command::decode(&bytes).unwrap(), lock);
        assert_eq!(Command::decode(&plain.encode()).unwrap(), plain);
        assert_eq!(Command::newer_version(&bytes), None);
        assert_eq!(Command::newer_version(&[4, 0]), Some(4));
    }

    #[test]
    fn commands_roundtrip_and_bad_data_is_an_error() {
        let cmd = Command {
            max_store_bytes: 64 << 20,
            from_client: true,
            ops: vec![
                KvOp::Set {
                    key: "a".into(),
                    value: vec![0, 1, 255],
                    flags: 42,
                },
                KvOp::DeleteTree {
                    prefix: "b/".into(),
                },
                KvOp::CheckIndex {
                    key: "c".into(),
                    index: 7,
                },
            ],
            reads: ReadLimits {
                max_reads: 10,
                max_response_bytes: 1000,
            },
        };
        let bytes = cmd.encode();
        assert_eq!(Command::hints_of(&bytes), HINT_TREE);
        assert_eq!(Command::decode(&bytes).unwrap(), cmd);
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 1, 2]).unwrap_err().contains("newer"));
        assert!(Command::decode(&bytes[..bytes.len() - 2]).is_err());
        assert!(cmd.ops[0].is_write() && !cmd.ops[2].is_write());
        assert!(cmd.ops[1].is_tree());
    }

    #[test]
    fn version_1_entries_are_still_read_without_read_limits() {
        #[derive(Serialize)]
        struct V1<'a> {
            max_store_bytes: u64,
            from_client: bool,
            ops: &'a [KvOp],
        }
        let ops = vec![KvOp::GetTree { prefix: "".into() }];
        let data = postcard::to_extend(
            &V1 {
                max_store_bytes: 5,
                from_client: true,
                ops: &ops,
            },
            vec![1],
        )
        .unwrap();
        let cmd = Command::decode(&data).unwrap();
        assert_eq!(cmd.ops, ops);
        assert_eq!(cmd.reads, ReadLimits::UNLIMITED);
        assert_eq!(Command::hints_of(&data), HINT_TREE | HINT_READS);
    }
}
