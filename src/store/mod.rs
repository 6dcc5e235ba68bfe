//! The metadata store: a key-value state machine replicated by `__meta/0`.
//!
//! It speaks Consul's KV model: a key is a UTF-8 string, its entry holds a
//! value, Consul's 64-bit `Flags`, and the Raft indexes that created and last
//! modified it. Every write is one Raft entry whose index becomes the
//! `ModifyIndex` of what it wrote.
//!
//! - [`command`]: what a Raft entry carries: a [`Command`] of [`KvOp`]s,
//!   applied atomically.
//! - [`machine`]: applies a command inside the node's redb write transaction,
//!   the same one that records the applied index, and answers queries from
//!   a read transaction. No sockets, no Raft: it only sees tables.
//! - [`snapshot`]: the state machine as one byte string, built from a read
//!   transaction and installed in one write transaction.
//!
//! Invariants kept here:
//! - applying is deterministic: everything it depends on (even the size cap)
//!   travels in the command, so every node computes the same state from the
//!   same log;
//! - an entry is applied in the transaction that records it as applied, so a
//!   crash never applies one twice or skips one (the redb store does this);
//! - a delete leaves a tombstone carrying its index, so that a blocking query
//!   on a prefix sees it. Tombstones at or below the compacted log's index are
//!   reaped with it; a query that asks about an older index is answered at
//!   once.

pub mod command;
pub mod disk;
pub mod machine;
pub mod snapshot;

pub use command::{Command, KvOp};
pub use machine::{KvEntry, Listing, Outcome, Touched, TxnError};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Keys under this prefix belong to the cluster itself: clients may read
/// them, never write them.
pub const RESERVED_PREFIX: &str = "__quorumd/";
/// The most operations one transaction may hold (Consul's limit).
pub const MAX_TXN_OPS: usize = 64;

/// Checks a key as a client wrote it: 1 to 1024 bytes of UTF-8 without NUL.
/// `allow_empty` admits the empty prefix of a listing.
pub fn check_key(key: &str, allow_empty: bool) -> Result<(), String> {
    if key.is_empty() && !allow_empty {
        return Err("missing key name".to_string());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.contains('\0') {
        return Err("key contains a NUL byte".to_string());
    }
    Ok(())
}

/// True if a client may not write `key` (it lies under [`RESERVED_PREFIX`]).
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("a/b", false).is_ok());
        assert!(check_key("", true).is_ok());
        assert_eq!(check_key("", false).unwrap_err(), "missing key name");
        assert!(check_key(&"k".repeat(1024), false).is_ok());
        assert!(check_key(&"k".repeat(1025), false)
            .unwrap_err()
            .contains("1025 bytes"));
        assert!(check_key("a\0b", false).unwrap_err().contains("NUL"));
        assert!(is_reserved("__quorumd/cluster_id"));
        assert!(!is_reserved("__quorumd"));
    }
}
