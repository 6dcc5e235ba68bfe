//! One error type for the runner, with the exit code each kind maps to.

use std::path::PathBuf;

/// What can stop a run before it reaches its verdict.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad command line or argument value (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The machine cannot host the run: not root, no `ip`/`iptables`, a
    /// namespace that cannot be made (exit 1).
    #[error("{0}")]
    Setup(String),
    /// The cluster never came up, or a step of the run failed (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// A file of the results folder could not be written (exit 1).
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error (the project's convention: 2 for
    /// usage, 1 for a runtime failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// The runner's result type.
pub type Result<T> = std::result::Result<T, Error>;
