//! Raft groups: one driver task per group, and the storage seam beneath it.
//!
//! - [`log`] is the Raft log on disk: a write-ahead log of segments, and
//!   the thread that writes it.
//! - [`storage`] opens a node's durable state (the log and the state
//!   machine's redb file, [`crate::store::disk`]) and makes them agree.
//! - [`log_view`] is the in-memory view of the log that raft-rs reads.
//! - [`replica`] is the driver task that owns one group's `RawNode`.
//! - [`manager`] creates groups, routes messages to them and ticks them.
//! - [`validate`] checks every message from the wire before `step()`, so
//!   that no frame can crash a replica.
//!
//! Invariants kept here:
//! - every node starts from the same static bootstrap snapshot, with all
//!   configured ids as voters, and never bootstraps again;
//! - a Ready is handled in exactly one place, in the documented order, and
//!   nothing is acknowledged before it is durable;
//! - persisted promises only move forward: the stored term never
//!   decreases and the vote never changes within a term;
//! - one tick source drives every group.

pub mod log;
pub mod log_view;
pub mod manager;
pub mod replica;
pub mod storage;
pub mod validate;

pub use manager::{spawn_tick_driver, RaftGroupManager, Router};
pub use replica::{
    Committed, PartitionReplica, ReplicaHandle, ReplicaMsg, ReplicaStatus, RequestError,
};
