//! One error type for the whole crate.
//!
//! Every variant is something an operator can act on. The binary maps each to
//! an exit code (see [`Error::exit_code`]) and prints its `Display` text as one
//! sentence on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a node or a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster file could not be read at all.
    #[error("cannot read cluster file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The cluster file was read but is not valid. `field` names the offending
    /// field (`cluster.peer_timeout`, `node[2].addr`, ...).
    #[error("invalid cluster file {path}: {field}: {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },

    /// A file of the `[tls]` table is missing, does not parse, or does not
    /// fit (a key of another certificate, a certificate of another node or
    /// CA).
    #[error("TLS file {file}: {reason}")]
    Tls { file: PathBuf, reason: String },

    /// A command-line argument does not fit the cluster file.
    #[error("{0}")]
    Usage(String),

    /// A listener could not be opened (port in use, address not local, ...).
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// Quorum was not reached within `quorum_wait_timeout`.
    #[error(
        "quorum not reached within {timeout}: {reachable} of {cluster_size} nodes reachable, {needed} needed; missing peers: {missing}"
    )]
    QuorumTimeout {
        /// The configured wait, as written for people (`30s`).
        timeout: String,
        reachable: usize,
        needed: usize,
        cluster_size: usize,
        /// `id@addr` of every peer that never answered, comma separated.
        missing: String,
    },

    /// The data directory belongs to another cluster or node, or its stored
    /// voter set disagrees with the cluster file. Starting would be unsafe.
    #[error("refusing data dir {dir}: {reason}")]
    DataDirMismatch { dir: PathBuf, reason: String },

    /// Another process holds the data directory.
    #[error("data dir {dir} is locked by another quorumd process{holder}")]
    DataDirLocked { dir: PathBuf, holder: String },

    /// The storage file exists but is damaged; the node never starts empty.
    #[error(
        "storage file {file} is damaged: {reason}; {advice}",
        advice = crate::datacheck::DAMAGE_ADVICE
    )]
    StorageCorrupt { file: PathBuf, reason: String },

    /// Any other storage failure (I/O, fsync). Fatal: never acknowledged.
    #[error("storage failure in {dir}: {reason}")]
    Storage { dir: PathBuf, reason: String },

    /// `quorumd status` found the cluster unwell (no leader, disagreement,
    /// a node unreachable).
    #[error("{0}")]
    Unhealthy(String),

    /// This node was removed from the cluster; it may not run with this id
    /// again.
    #[error("{0}")]
    Removed(String),

    /// This node starts without state, but the cluster knows it held the
    /// log: its data dir was lost or is not mounted.
    #[error("{0}")]
    StateLost(String),

    /// A command's request failed: no node answered, a key is missing, a
    /// CAS check failed, or the node refused it.
    #[error("{0}")]
    Request(String),

    /// A Raft invariant failed. Fatal.
    #[error("raft error: {0}")]
    Raft(#[from] raft::Error),

    /// An internal task went away before the node finished (a bug or a
    /// fatal error reported elsewhere).
    #[error("internal: {0}")]
    Internal(String),

    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code of this error (0 is a clean stop; 1 runtime, 2 usage
    /// or configuration, 3 no quorum).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::ConfigRead { .. }
            | Error::Config { .. }
            | Error::Usage(_)
            | Error::DataDirMismatch { .. }
            | Error::Removed(_)
            | Error::StateLost(_)
            | Error::Tls { .. } => 2,
            Error::QuorumTimeout { .. } => 3,
            Error::Bind { .. }
            | Error::DataDirLocked { .. }
            | Error::StorageCorrupt { .. }
            | Error::Storage { .. }
            | Error::Unhealthy(_)
            | Error::Request(_)
            | Error::Raft(_)
            | Error::Internal(_)
            | Error::Io { .. } => 1,
        }
    }

    /// Builds an [`Error::Io`] with a short description of what failed.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
