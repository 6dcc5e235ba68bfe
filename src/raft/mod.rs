//! Raft groups: one driver task per group, and the storage seam beneath it.
//!
//! - [`storage`] defines how a replica's log is made durable.
//!
//! Invariants kept here (DESIGN.md, "Raft rules"):
//! - every node starts from the same static bootstrap snapshot, with all
//!   configured ids as voters, and never bootstraps again;
//! - a Ready is handled in exactly one place, in the documented order, and
//!   nothing is acknowledged before it is durable;
//! - one tick source drives every group.

pub mod storage;
