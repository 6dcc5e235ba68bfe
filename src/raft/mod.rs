//! Raft groups: one driver task per group, and the storage seam beneath it.
//!
//! - [`storage`] defines how a replica's log is made durable.
//! - [`redb_store`] is the durable store behind it, one redb file per node.
//! - [`replica`] is the driver task that owns one group's `RawNode`.
//! - [`manager`] creates groups, routes messages to them and ticks them.
//!
//! Invariants kept here (DESIGN.md, "Raft rules"):
//! - every node starts from the same static bootstrap snapshot, with all
//!   configured ids as voters, and never bootstraps again;
//! - a Ready is handled in exactly one place, in the documented order, and
//!   nothing is acknowledged before it is durable;
//! - one tick source drives every group.

pub mod manager;
pub mod redb_store;
pub mod replica;
pub mod storage;

pub use manager::{spawn_tick_driver, RaftGroupManager, Router};
pub use replica::{PartitionReplica, ReplicaHandle, ReplicaMsg, ReplicaStatus};
