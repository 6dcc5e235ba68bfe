//! `quorumd snapshot save|restore|inspect FILE`, like `consul snapshot`.
//!
//! `save` asks the first node that answers for `GET /v1/snapshot`, checks
//! the backup whole and writes it atomically (temporary file, fsync, rename,
//! fsync of the directory). `restore` checks the file first, then sends it
//! with `PUT /v1/snapshot` and waits until the cluster applied it.
//! `inspect` reads a file offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;

use crate::backup::{self, Backup};
use crate::client::AdminClient;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

/// A `snapshot` subcommand.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the whole store to FILE.
    Save {
        #[command(flatten)]
        target: Target,
        /// Take it from the node's store as it is, without a ReadIndex round.
        #[arg(long)]
        stale: bool,
        /// Where to write it.
        file: PathBuf,
    },
    /// Restore the backup in FILE into the running cluster: every node ends
    /// with exactly its keys; the membership stays as the cluster has it.
    Restore {
        #[command(flatten)]
        target: Target,
        /// Restore a backup of another cluster (name or id), as after losing every box.
        #[arg(long)]
        force: bool,
        /// The backup.
        file: PathBuf,
    },
    /// Check FILE and print what it holds: index, term, cluster, keys, size,
    /// format version, checksum.
    Inspect {
        /// The backup.
        file: PathBuf,
    },
}

/// Which cluster, and optionally which node.
#[derive(Debug, Args)]
pub struct Target {
    /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Ask this node instead of the first one that answers.
    #[arg(long, value_name = "ID")]
    node: Option<u64>,
    #[command(flatten)]
    token: crate::client::TokenArg,
}

/// A save or a restore may take this long (a restore of 100,000 keys is a
/// few seconds on a loaded box).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Target {
    fn ask(&self, method: Method, path: &str, body: Vec<u8>) -> Result<crate::client::Response> {
        let config = ClusterConfig::load(&crate::cli::cluster_file(self.cluster.clone())?)?;
        let nodes = match self.node {
            Some(id) => vec![config.require_node(id)?.clone()],
            None => config.nodes.clone(),
        };
        AdminClient::for_cli(&config)?
            .with_token(self.token.secret())
            .first_answer(&config.name, &nodes, method, path, body, REQUEST_TIMEOUT)
            .map_err(Error::Request)
    }
}

/// Reads and checks a backup file; the error names the file and what is
/// wrong with it.
pub fn read_backup(file: &Path) -> Result<Backup> {
    read_checked(file).map(|(b, _)| b)
}

/// The checked backup and the file's bytes.
fn read_checked(file: &Path) -> Result<(Backup, Vec<u8>)> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
    let b = backup::decode(&bytes).map_err(|why| {
        Error::Request(format!(
            "{} is refused: {why}; nothing was changed",
            file.display()
        ))
    })?;
    Ok((b, bytes))
}

/// What `inspect` prints.
pub fn describe(b: &Backup) -> String {
    let m = &b.meta;
    format!(
        "index       {}\nterm        {}\ncluster     {}\ncluster id  {}\nkeys        {}\nrows        {}\nsize        {} bytes\nversion     {}\nchecksum    crc32:{:08x}\ntaken by    node {}\ntaken at    {}\n",
        m.index,
        m.term,
        m.cluster,
        m.cluster_id.as_deref().unwrap_or("(none yet)"),
        m.keys,
        m.rows,
        b.size,
        b.version,
        b.checksum,
        m.node_id,
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(m.created_unix_ms)
        ),
    )
}

/// Runs a `snapshot` command.
pub fn run(command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Inspect { file } => {
            print!("{}", describe(&read_backup(&file)?));
            Ok(())
        }
        SnapshotCommand::Save {
            target,
            stale,
            file,
        } => {
            let path = if stale {
                "/v1/snapshot?stale"
            } else {
                "/v1/snapshot"
            };
            let r = target.ask(Method::GET, path, Vec::new())?;
            if r.status != 200 {
                return Err(Error::Request(format!(
                    "the node answered {}: {}",
                    r.status,
                    r.error_text()
                )));
            }
            let b = backup::decode(&r.body).map_err(|why| {
                Error::Request(format!("the node sent a backup that is refused: {why}"))
            })?;
            backup::write_atomic(&file, &r.body)
                .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
            println!(
                "Saved and verified backup to {}: index {}, {} keys, {} bytes",
                file.display(),
                b.meta.index,
                b.meta.keys,
                b.size
            );
            Ok(())
        }
        SnapshotCommand::Restore {
            target,
            force,
            file,
        } => {
            let (b, bytes) = read_checked(&file)?;
            let path = if force {
                "/v1/snapshot?force"
            } else {
                "/v1/snapshot"
            };
            let r = target.ask(Method::PUT, path, bytes)?;
            if r.status != 200 {
                return Err(Error::Request(format!(
                    "the node answered {}: {}",
                    r.status,
                    r.error_text()
                )));
            }
            let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            println!(
                "Restored backup {} (index {} of cluster '{}'): {} keys, applied at index {}",
                file.display(),
                b.meta.index,
                b.meta.cluster,
                b.meta.keys,
                doc["Index"]
            );
            Ok(())
        }
    }
}
