//! Raft groups: one driver task per group, and the storage seam beneath it.
//!
//! - [`storage`] defines what a replica hands its durable store.
//! - [`redb_store`] is that store, one redb file per node, holding the Raft
//!   log and the key-value state machine together.
//! - [`log_view`] is the in-memory view of the log that raft-rs reads.
//! - [`replica`] is the driver task that owns one group's `RawNode`.
//! - [`manager`] creates groups, routes messages to them and ticks them.
//! - [`validate`] checks every message from the wire before `step()`, so
//!   that no frame can crash a replica.
//!
//! Invariants kept here (DESIGN.md, "Raft rules"):
//! - every node starts from the same static bootstrap snapshot, with all
//!   configured ids as voters, and never bootstraps again;
//! - a Ready is handled in exactly one place, in the documented order, and
//!   nothing is acknowledged before it is durable;
//! - one tick source drives every group.

pub mod log;
pub mod log_view;
pub mod manager;
pub mod redb_store;
pub mod replica;
pub mod storage;
pub mod validate;

pub use manager::{spawn_tick_driver, RaftGroupManager, Router};
pub use replica::{
    Committed, PartitionReplica, ReplicaHandle, ReplicaMsg, ReplicaStatus, RequestError,
};
