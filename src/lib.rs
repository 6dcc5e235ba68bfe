//! quorumd: a small, fast Raft node for edge clusters.

pub mod error;
pub mod raft;

pub use error::{Error, Result};
