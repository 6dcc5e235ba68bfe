//! The command line: `quorumd run`, `check`, `status`, `kv`, `member`
//! and `certs`.
//!
//! Each command returns a [`Result`]; `main` turns an error into its exit code
//! and one sentence on stderr.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use async_signal::{Signal, Signals};
use clap::{Parser, Subcommand};
use futures_lite::{future, StreamExt};
use log::{error, info};

use crate::config::ClusterConfig;
use crate::coordinator::{ClusterCoordinator, NodeOptions};
use crate::error::{Error, Result};

/// A small, fast Raft cluster for edge boxes, with Consul's KV API.
#[derive(Debug, Parser)]
#[command(name = "quorumd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of the cluster in the foreground.
    Run {
        /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// This node's id in the cluster file.
        #[arg(long, value_name = "ID")]
        node_id: u64,
        /// Keep state here instead of `<data_dir>/node-<id>`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Show every member's view of the cluster; exit 1 unless all agree on one leader.
    Status {
        /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// See and change the membership: list, add, remove, promote, replace.
    Member {
        #[command(subcommand)]
        command: crate::member_cli::MemberCommand,
    },
    /// Read and write the key-value store, like `consul kv`.
    Kv {
        #[command(subcommand)]
        command: crate::kv_cli::KvCommand,
    },
    /// Run CMD while holding a lock (or, with -n N, one of N slots), like
    /// `consul lock`; CMD is stopped if the lock is lost. Exits with CMD's code.
    Lock(crate::lock_cli::LockArgs),
    /// List, show and destroy sessions.
    Session {
        #[command(subcommand)]
        command: crate::lock_cli::SessionCommand,
    },
    /// Manage ACL tokens and policies: bootstrap, policy, token.
    Acl {
        #[command(subcommand)]
        command: crate::acl_cli::AclCommand,
    },
    /// Save, restore and inspect backups of the whole store.
    Snapshot {
        #[command(subcommand)]
        command: crate::snapshot_cli::SnapshotCommand,
    },
    /// Validate a cluster file (and its `[tls]` files) and print a summary;
    /// with --data, verify a node's data dir offline instead.
    Check {
        /// The cluster file.
        #[arg(value_name = "FILE", required_unless_present = "data")]
        file: Option<PathBuf>,
        /// Verify this data dir of a stopped node (every page and record
        /// checksum, every row), on a copy: the data is never changed.
        #[arg(long, value_name = "DIR", conflicts_with = "file")]
        data: Option<PathBuf>,
    },
    /// Write a CA, a certificate and key per node, and a client pair, for the
    /// cluster's `[tls]` table.
    Certs {
        /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Where to write them.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files (every certificate is new, CA included).
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script: `quorumd completions bash > /etc/bash_completion.d/quorumd`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The environment variable that names the cluster file when `--cluster`
/// is not given.
pub const CLUSTER_ENV: &str = "QUORUMD_CLUSTER";
/// The cluster file the package installs, used when neither `--cluster`
/// nor [`CLUSTER_ENV`] names one and it exists.
pub const SYSTEM_CLUSTER_FILE: &str = "/etc/quorumd/cluster.toml";

/// The cluster file: `--cluster`, else `$QUORUMD_CLUSTER`, else
/// `/etc/quorumd/cluster.toml` when present; a usage error (exit 2) if none.
pub fn cluster_file(given: Option<PathBuf>) -> Result<PathBuf> {
    resolve_cluster_file(
        given,
        std::env::var_os(CLUSTER_ENV).map(PathBuf::from),
        |p| p.exists(),
    )
}

fn resolve_cluster_file(
    given: Option<PathBuf>,
    env: Option<PathBuf>,
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<PathBuf> {
    if let Some(file) = given {
        return Ok(file);
    }
    if let Some(file) = env.filter(|f| !f.as_os_str().is_empty()) {
        return Ok(file);
    }
    let system = PathBuf::from(SYSTEM_CLUSTER_FILE);
    if exists(&system) {
        return Ok(system);
    }
    Err(Error::Usage(format!(
        "no cluster file: pass --cluster FILE, or set {CLUSTER_ENV}, or install {SYSTEM_CLUSTER_FILE}"
    )))
}

/// Runs the parsed command line.
pub fn run(cli: Cli, started: Instant) -> Result<()> {
    match cli.command {
        Command::Status { cluster, json } => {
            let file = cluster_file(cluster)?;
            crate::status::run(
                &ClusterConfig::load(&file)?,
                &file.display().to_string(),
                json,
            )
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "quorumd",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Kv { command } => crate::kv_cli::run(command),
        Command::Lock(args) => {
            let code = crate::lock_cli::run_lock(args)?;
            std::process::exit(code)
        }
        Command::Session { command } => crate::lock_cli::run_session(command),
        Command::Member { command } => crate::member_cli::run(command),
        Command::Acl { command } => crate::acl_cli::run(command),
        Command::Snapshot { command } => crate::snapshot_cli::run(command),
        Command::Check {
            data: Some(dir), ..
        } => {
            print!("{}", crate::datacheck::check(&dir)?);
            Ok(())
        }
        Command::Check { file, .. } => {
            let file =
                file.ok_or_else(|| Error::Usage("quorumd check needs FILE or --data DIR".into()))?;
            let config = ClusterConfig::load(&file)?;
            let tls = crate::tls::check(&config)?;
            print!("{}", summary(&config));
            for line in tls {
                println!("{line}");
            }
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Certs {
            cluster,
            out,
            force,
        } => {
            let cluster = cluster_file(cluster)?;
            let config = ClusterConfig::load(&cluster)?;
            let generated = crate::tls::generate(&config, &cluster, &out, force)?;
            for f in &generated.files {
                println!("wrote {}", f.display());
            }
            println!(
                "\nThe CA's private key is in {}, apart from the files for the nodes: \
                 copy {} to the nodes, never {}; keep the key offline, it is needed only \
                 to sign new certificates.",
                generated.ca_key.display(),
                out.display(),
                generated
                    .ca_key
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .display()
            );
            println!(
                "\nAdd this table to {} (the same file on every node):\n\n{}",
                cluster.display(),
                generated.table
            );
            Ok(())
        }
        Command::Run {
            cluster,
            node_id,
            data_dir,
        } => {
            let config = ClusterConfig::load(&cluster_file(cluster)?)?;
            config.require_node(node_id)?;
            let options = NodeOptions { data_dir, started };
            crate::memory::configure();
            // As a task, the node is polled when something it waits for
            // wakes it. As block_on's own future, it would be polled on every
            // wake of the thread, and the signal socket read with it: one
            // more system call per request.
            crate::runtime::block_on(crate::runtime::spawn(run_node(config, node_id, options)))
        }
    }
}

/// The summary `quorumd check` prints.
pub fn summary(config: &ClusterConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cluster '{}': {} nodes, quorum {}",
        config.name,
        config.cluster_size(),
        crate::quorum::quorum_size(config.cluster_size())
    );
    let _ = writeln!(
        s,
        "  quorum_wait_timeout={} heartbeat_interval={} peer_timeout={}",
        humantime::format_duration(config.quorum_wait_timeout),
        humantime::format_duration(config.heartbeat_interval),
        humantime::format_duration(config.peer_timeout)
    );
    let raft = &config.raft;
    let _ = writeln!(
        s,
        "  raft: tick_interval={} election_ticks={} heartbeat_ticks={} (election timeout {}..{})",
        humantime::format_duration(raft.tick_interval),
        raft.election_ticks,
        raft.heartbeat_ticks,
        humantime::format_duration(raft.election_timeout()),
        humantime::format_duration(raft.election_timeout() * 2)
    );
    let _ = writeln!(
        s,
        "  snapshots: every {} entries or {} bytes of log",
        raft.snapshot_entries, raft.snapshot_bytes
    );
    let _ = writeln!(
        s,
        "  store: max_value_bytes={} max_store_bytes={} request_timeout={}",
        config.store.max_value_bytes,
        config.store.max_store_bytes,
        humantime::format_duration(config.store.request_timeout)
    );
    let l = &config.limits;
    let _ = writeln!(
        s,
        "  limits: max_response_bytes={} max_txn_reads={} max_buffered_bytes={} max_conns={} \
         max_conns_per_client={} max_blocking_queries={} anonymous_idle_timeout={} \
         peer_handshakes_per_address={}",
        l.max_response_bytes,
        l.max_txn_reads,
        l.max_buffered_bytes,
        l.max_conns,
        l.max_conns_per_client,
        l.max_blocking_queries,
        humantime::format_duration(l.anonymous_idle_timeout),
        l.peer_handshakes_per_address
    );
    let _ = writeln!(
        s,
        "  sessions: max_sessions={} max_sessions_per_node={}",
        l.max_sessions, l.max_sessions_per_node
    );
    if config.acl.enabled {
        let _ = writeln!(
            s,
            "  acl: enabled default_policy={} metrics_need_token={}",
            if config.acl.default_allow {
                "allow"
            } else {
                "deny"
            },
            config.acl.metrics_need_token
        );
    }
    let _ = writeln!(s, "  data_dir={}", config.data_dir.display());
    if let Some(b) = &config.backup {
        let _ = writeln!(
            s,
            "  backup: every {} into {} (keep {})",
            humantime::format_duration(b.interval),
            b.dir.display(),
            b.keep
        );
    }
    for n in &config.nodes {
        let _ = writeln!(s, "  node {}: addr={} admin={}", n.id, n.addr, n.admin);
    }
    s
}

enum Event {
    Signal(Signal),
    Fatal(Error),
    Bootstrapped(Result<()>),
}

async fn run_node(config: ClusterConfig, node_id: u64, options: NodeOptions) -> Result<()> {
    // Register before binding anything, so an early SIGTERM is a clean stop.
    let mut signals = Signals::new([Signal::Term, Signal::Int])
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
    // Starting can wait (a node without state asks the cluster what to do,
    // bounded by quorum_wait_timeout); a signal meanwhile stops it cleanly.
    let started = future::or(
        async { Some(ClusterCoordinator::new(config, node_id, options).await) },
        async {
            match next_signal(&mut signals).await {
                Event::Signal(s) => {
                    info!("received {s:?} while starting: stopping");
                    None
                }
                _ => None,
            }
        },
    )
    .await;
    let Some(node) = started else {
        return Ok(());
    };
    let node = node?;
    let systemd = systemd_notifier(node.metadata_replica()).await;

    let event = future::or(next_signal(&mut signals), async {
        future::or(async { Event::Fatal(node.fatal_error().await) }, async {
            Event::Bootstrapped(node.bootstrap().await.map(|_| ()))
        })
        .await
    })
    .await;
    let event = match event {
        Event::Bootstrapped(Ok(())) => {
            systemd.ready().await;
            future::or(next_signal(&mut signals), async {
                Event::Fatal(node.fatal_error().await)
            })
            .await
        }
        other => other,
    };
    match event {
        Event::Bootstrapped(Err(e)) | Event::Fatal(e) => Err(e),
        Event::Bootstrapped(Ok(())) => unreachable!("handled above"),
        Event::Signal(s) => {
            info!("received {s:?}: shutting down (send it again to exit at once)");
            systemd.stopping().await;
            crate::runtime::spawn(async move {
                if let Some(Ok(s)) = signals.next().await {
                    error!("received {s:?} again: exiting at once, without a clean shutdown");
                    std::process::exit(1);
                }
            })
            .detach();
            node.shutdown().await
        }
    }
}

async fn next_signal(signals: &mut Signals) -> Event {
    match signals.next().await {
        Some(Ok(s)) => Event::Signal(s),
        _ => future::pending().await,
    }
}

/// The systemd notifier, fed with `replica`'s status as `STATUS=` lines and
/// probing it for the watchdog (the notifier knows nothing of Raft).
async fn systemd_notifier(replica: &crate::raft::ReplicaHandle) -> crate::notify::Notifier {
    let lines = replica.subscribe().await.map(|statuses| {
        let (tx, rx) = flume::bounded(16);
        crate::runtime::spawn(async move {
            while let Ok(s) = statuses.recv_async().await {
                let line = crate::notify::status_line(s.role_name(), s.term, s.leader_id);
                if tx.send_async(line).await.is_err() {
                    break;
                }
            }
        })
        .detach();
        rx
    });
    let replica = replica.clone();
    crate::notify::Notifier::start(lines, move || {
        let replica = replica.clone();
        async move { replica.status().await.map(|_| ()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_file_comes_from_the_flag_then_the_env_then_etc() {
        let p = |s: &str| Some(PathBuf::from(s));
        let yes = |_: &std::path::Path| true;
        let no = |_: &std::path::Path| false;
        assert_eq!(
            resolve_cluster_file(p("a"), p("b"), yes).unwrap(),
            PathBuf::from("a")
        );
        assert_eq!(
            resolve_cluster_file(None, p("b"), yes).unwrap(),
            PathBuf::from("b")
        );
        assert_eq!(
            resolve_cluster_file(None, None, yes).unwrap(),
            PathBuf::from(SYSTEM_CLUSTER_FILE)
        );
        let e = resolve_cluster_file(None, p(""), no).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("QUORUMD_CLUSTER"), "{e}");
    }
}
