//! `quorumd-chaos`: see the crate docs and the README's chaos section.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use quorumd_chaos::checker::DEFAULT_STEP_BUDGET;
use quorumd_chaos::error::Error;
use quorumd_chaos::history::{self, Counts};
use quorumd_chaos::runner::{self, Options};
use quorumd_chaos::schedule::{self, FaultKind};
use quorumd_chaos::workload::Settings;
use quorumd_chaos::{cleanup, model};

#[derive(Parser)]
#[command(
    name = "quorumd-chaos",
    about = "Chaos runner and linearizability checker for quorumd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster in network namespaces, run the workload under faults, check it.
    Run(RunArgs),
    /// Check a recorded history.jsonl again (exit 1 on a violation).
    Check {
        /// The history file of a run.
        history: PathBuf,
    },
    /// Print the fault schedule a seed gives, as JSON.
    Schedule {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// How long the run injects faults.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Only these fault kinds (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
        faults: Vec<FaultKind>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes in the cluster (3 to 9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(3..=9))]
    nodes: u32,
    /// How long to inject faults; one of each kind always runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients (1 to 64).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Keys in play at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    keys: u32,
    /// Operations on one key before its slot moves to a fresh key.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    ops_per_key: u32,
    /// Client-side timeout of one operation.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Longest pause between two operations of one client.
    #[arg(long, default_value = "10ms", value_parser = parse_duration_or_zero)]
    think: Duration,
    /// Only these fault kinds (comma-separated): kill-leader, kill-follower,
    /// pause, partition-leader, partition-split, one-way, loss, restart-cluster,
    /// pause-handoff, pause-transfer, member-restart, kill-leader-pause.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    faults: Vec<FaultKind>,
    /// Negative control: gets use `?stale`, an unsafe read path; the checker
    /// must then report violations.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Negative control: every node rewinds its durable term by one and
    /// forgets its vote at each start (QUORUMD_UNSAFE_FORGET_VOTE=1); the
    /// Raft invariant checks must then report violations.
    #[arg(long)]
    unsafe_forget_votes: bool,
    /// Lock clients beside the KV clients: they contend for one lock through
    /// sessions, and the checker proves no two holders overlapped (0: none).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=32))]
    lock_clients: u32,
    /// The lock clients' session TTL (10s at least, as the node requires).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lock_ttl: Duration,
    /// The lock clients' session lock-delay.
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_zero)]
    lock_delay: Duration,
    /// One lock hold in this many is abandoned (no renew, no release), so
    /// that the node must end its session by TTL (0: never).
    #[arg(long, default_value_t = 8)]
    lock_abandon: u32,
    /// Negative control: lock holders count on a lease of three TTLs instead
    /// of one; the lock checker must then report overlaps.
    #[arg(long)]
    unsafe_lock_lease: bool,
    /// The quorumd binary.
    #[arg(long, default_value = "target/release/quorumd")]
    quorumd: PathBuf,
    /// The results folder (default target/chaos/<time>-seed<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The nodes' `[raft] snapshot_entries`: small, so that a follower that
    /// was down catches up by snapshot (0: the node's own default).
    #[arg(long, default_value_t = 500)]
    snapshot_entries: u64,
    /// A TOML file appended to the cluster file (e.g. `[store]` settings).
    #[arg(long)]
    extra_toml: Option<PathBuf>,
    /// Keep the nodes' data dirs even when the run passes.
    #[arg(long)]
    keep_data: bool,
    /// Print only the final line and the violations, not each fault.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

fn parse_kind(s: &str) -> Result<FaultKind, String> {
    FaultKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown fault kind {s:?} (one of: {})", all.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check { history } => check(&history),
        Command::Schedule {
            seed,
            duration,
            faults,
        } => {
            let s = schedule::generate(seed, duration, &faults);
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let records = match history::read(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let v = model::check_history(&records, 2, DEFAULT_STEP_BUDGET);
    for x in &v {
        eprint!("chaos: {x}");
    }
    let c = Counts::of(&records);
    println!(
        "chaos: {} ops ({} ok, {} failed, {} unknown), {} violations",
        c.ops,
        c.ok,
        c.failed,
        c.unknown,
        v.len()
    );
    if v.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Ctrl-C (or SIGTERM) once: stop injecting, heal, check. Twice: tear down
/// at once and exit 130.
fn watch_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    if f.swap(true, Ordering::SeqCst) {
                        eprintln!("chaos: interrupted again: killing the nodes and deleting the namespaces");
                        cleanup::emergency();
                        std::process::exit(130);
                    }
                    eprintln!("chaos: interrupted: healing, then checking what was recorded (Ctrl-C again to abort)");
                }
            });
        }
        Err(e) => {
            eprintln!("chaos: cannot watch for Ctrl-C ({e}); it will kill the run without cleanup")
        }
    }
    flag
}

fn run(args: RunArgs) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..1_000_000_000));
    let extra_toml = match &args.extra_toml {
        None => String::new(),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("chaos: cannot read --extra-toml {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    if args.snapshot_entries != 0 && extra_toml.contains("[raft]") {
        eprintln!("chaos: --extra-toml has a [raft] table: put snapshot_entries there and pass --snapshot-entries 0");
        return ExitCode::from(2);
    }
    let opts = Options {
        nodes: args.nodes,
        duration: args.duration,
        seed,
        workload: Settings {
            clients: args.clients,
            keys: args.keys,
            ops_per_key: args.ops_per_key,
            timeout: args.timeout,
            think: args.think,
            stale_reads: args.unsafe_stale_reads,
            seed,
        },
        kinds: args.faults,
        quorumd: args.quorumd,
        out: args.out.unwrap_or_else(|| runner::default_out(seed)),
        snapshot_entries: (args.snapshot_entries != 0).then_some(args.snapshot_entries),
        extra_toml,
        keep_data: args.keep_data,
        verbose: !args.quiet,
        forget_votes: args.unsafe_forget_votes,
        locks: quorumd_chaos::locks::LockSettings {
            clients: args.lock_clients,
            ttl: args.lock_ttl,
            lock_delay: args.lock_delay,
            hold_max: Duration::from_millis(300),
            abandon_every: args.lock_abandon,
            unsafe_lease: args.unsafe_lock_lease,
            timeout: args.timeout.max(Duration::from_secs(1)),
            seed,
        },
    };
    let interrupt = watch_signals();
    match runner::run(&opts, &interrupt) {
        Ok(outcome) => {
            runner::print(&outcome);
            if outcome.interrupted {
                ExitCode::from(130)
            } else if outcome.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => ExitCode::from(exit_code(&e)),
    }
}

fn exit_code(e: &Error) -> u8 {
    e.exit_code() as u8
}
