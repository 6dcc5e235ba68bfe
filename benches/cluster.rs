//! Cluster benchmarks: `cargo bench --bench cluster`,
//! which `make bench` runs through `cargo bench`.
//!
//! Every measure launches real `quorumd` processes with the harness of the
//! process-level tests (`tests/common`, as `benches/kv.rs` does): the binary
//! `make build` made when `make bench` runs it (`QUORUMD_BENCH_BIN`), else
//! the one cargo built for this bench run (`CARGO_BIN_EXE_quorumd`, built
//! with the bench profile, which inherits the release profile), copied once
//! at start into a temp dir (`BinCopy`) so that a rebuild by other work
//! during the bench cannot swap binaries between runs. Each run gets a fresh
//! `TestCluster`: a temporary directory with its own cluster file and
//! `data_dir`, and fresh loopback ports. The cluster file is `Spec::shipped`: no `[raft]` settings (the
//! shipped timing, `DEFAULT_TICK_INTERVAL` and `DEFAULT_ELECTION_TICKS` of
//! `src/config.rs`), and `heartbeat_interval = "1s"`, `peer_timeout = "3s"`,
//! `quorum_wait_timeout = "30s"` as in `clusters/cluster3.toml`. Nodes log at
//! `RUST_LOG=info` (the shipped default) into `<tempdir>/node-N.stderr`. Every
//! child is killed by its handle when its cluster is dropped.
//!
//! Measures (each timed measure runs `QUORUMD_BENCH_RUNS` times, default 10):
//!
//! 1. **Bootstrap** of 1, 3 and 5 nodes. The clock starts just before the first
//!    process is spawned; the others are spawned back to back in id order. It
//!    stops at the end of the first poll round in which every node's
//!    `/admin/cluster/status` says `bootstrap_complete: true` with one and the
//!    same `leader_id`. Every node is polled every 5 ms, each over its own
//!    keep-alive HTTP/1.1 connection (`KeepAlive`, reconnected when it drops,
//!    e.g. before the node listens).
//! 2. **`kill -9` failover.** A 3-node cluster bootstraps and idles for 1 s;
//!    the leader gets SIGKILL; the clock runs until both survivors report the
//!    same leader, other than the old one (polled every 5 ms).
//! 3. **Graceful handoff.** Same, with SIGTERM. Two clocks, both from the
//!    signal: until both survivors report the same new leader, and until the
//!    old leader's process has exited (a run whose old leader exits with a code
//!    other than 0 counts as failed). Survivors and `try_wait` are polled every
//!    1 ms here, because the target (10 ms) is close to the 5 ms poll step.
//!    **Full restart** (no target): a settled 3-node
//!    cluster gets SIGTERM on every node; once all have exited 0 they are
//!    started again on the same data dirs, and the clock runs from the first
//!    launch until all agree on a leader (polled every 5 ms). A term that did
//!    not grow across the restart fails the run.
//! 4. **Idle footprint**, once, of a 3-node cluster (min / median / max over its
//!    3 nodes), with no admin polling after bootstrap: VmRSS from
//!    `/proc/PID/status` 10 s and 60 s after bootstrap, and CPU % of one core
//!    (utime + stime from `/proc/PID/stat`) from 30 s to 60 s after bootstrap.
//!    With `QUORUMD_BENCH_QUICK=1`: RSS at 10 s and CPU over 0..10 s only.
//! 5. **Binary size** of the binary the nodes run: `QUORUMD_BENCH_BIN`, which
//!    `make bench` sets to the one `make build` made, else
//!    `CARGO_BIN_EXE_quorumd` (build.rs strips either when it links), with a
//!    check that it has no ELF symbol table.
//!
//! Stdout gets one markdown table (min / median / max, the target
//! and etcd 3.4's median), the machine it ran on, which targets were
//! met, and every raw sample. A measure with a failed run prints `FAILED:` and
//! the reason instead of numbers. A run is repeated once, on new ports, only if
//! a node could not bind its port (os error 98), which is a harness port
//! collision, not a node fault; such retries are listed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{bin_under_test, BinCopy, KeepAlive, Pacer, Spec, TestCluster};
use quorumd::config::{DEFAULT_ELECTION_TICKS, DEFAULT_TICK_INTERVAL};
use serde_json::Value;
use shared::{clock_ticks, cpu_ticks, stat_ticks};

/// The private copy of `BIN` that this bench run launches (see `main`).
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// The binary every node runs: the private copy, or [`bin_under_test`]
/// before it exists.
fn exe() -> PathBuf {
    EXE.get().cloned().unwrap_or_else(bin_under_test)
}

/// Poll step for bootstrap and failover.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Poll step for the graceful handoff (status of survivors and `try_wait`).
const HANDOFF_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// A bootstrap slower than this counts as failed.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(15);
/// A new leader later than this counts as failed.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A SIGTERMed leader still running after this counts as failed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time between bootstrap and the kill in the failover/handoff runs.
const SETTLE: Duration = Duration::from_secs(1);
/// Connect/read/write timeout of one admin HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    // cargo passes `--bench` to harness = false benches under `cargo bench`;
    // anything else (`cargo test --benches`, `--all-targets`) must not start
    // clusters for minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/cluster: not run by `cargo bench` (no --bench flag); skipping");
        return;
    }
    let runs = match std::env::var("QUORUMD_BENCH_RUNS") {
        Ok(s) => match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("QUORUMD_BENCH_RUNS={s:?} is not a positive integer");
                std::process::exit(2);
            }
        },
        Err(_) => 10,
    };
    let quick = std::env::var("QUORUMD_BENCH_QUICK").is_ok_and(|v| v.trim() == "1");
    let started = Instant::now();
    // Other work in this tree may rebuild target/release/quorumd while the bench
    // runs: launch a private copy taken now, so every run measures one binary.
    let bin_copy = BinCopy::new().unwrap_or_else(|e| {
        eprintln!(
            "cannot copy {} for the bench: {e}",
            bin_under_test().display()
        );
        std::process::exit(1);
    });
    let _ = EXE.set(bin_copy.path().to_path_buf());
    eprintln!(
        "[bench] binary: {} (run from the copy {}); {runs} runs per timed measure; quick={quick}",
        bin_under_test().display(),
        exe().display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // 1. Bootstrap.
    for (size, target, check, etcd) in [
        (
            1u64,
            "median ≤ 15 ms",
            Check::MedianMs(15.0, None),
            "617 ms",
        ),
        (
            3,
            "median ≤ 50 ms, max ≤ 150 ms",
            Check::MedianMs(50.0, Some(150.0)),
            "360 ms",
        ),
        (5, "median ≤ 80 ms", Check::MedianMs(80.0, None), "1303 ms"),
    ] {
        let name = format!("{size}-node bootstrap");
        let mut samples = Samples::new(&name, Unit::Ms);
        let mut logged = Vec::new();
        for run in 1..=runs {
            let r = with_retry(&mut samples, || bootstrap_run(size));
            let r = r.map(|b| {
                logged.push(b.logged_ms);
                b.elapsed
            });
            samples.record(run, runs, r.map(ms));
        }
        notes.push(format!(
            "{name}: node-logged `elapsed` (slowest node, ms from its own start): {}",
            logged
                .iter()
                .map(|l| l.map_or("?".to_string(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        rows.push(Row::new(samples, target, etcd, check));
    }

    // 2. kill -9 failover.
    {
        let (samples, note) = timed_term_change(
            "`kill -9` failover (3 nodes)",
            "failover: (old term -> new term)",
            runs,
            failover_run,
        );
        notes.push(note);
        rows.push(Row::new(
            samples,
            "median ≤ 500 ms, max ≤ 1 s",
            "1488 ms",
            Check::MedianMs(500.0, Some(1000.0)),
        ));
    }

    // 3. Graceful handoff.
    {
        let mut leader = Samples::new("graceful handoff: new leader", Unit::Ms);
        let mut exit = Samples::new("graceful handoff: old leader exits", Unit::Ms);
        for run in 1..=runs {
            match with_retry(&mut leader, handoff_run) {
                Ok(h) => {
                    leader.record(run, runs, h.new_leader.map(ms));
                    exit.record(run, runs, h.exit.map(ms));
                }
                Err(e) => {
                    leader.record(run, runs, Err(e.clone()));
                    exit.record(run, runs, Err(e));
                }
            }
        }
        rows.push(Row::new(
            leader,
            "median ≤ 10 ms",
            "8 ms",
            Check::MedianMs(10.0, None),
        ));
        rows.push(Row::new(
            exit,
            "≤ 100 ms after SIGTERM",
            "110 ms",
            Check::MaxMs(100.0),
        ));
    }

    // 3b. Full restart (no target).
    {
        let (samples, note) = timed_term_change(
            "full 3-node restart to leader",
            "restart: (term before -> term after)",
            runs,
            restart_run,
        );
        notes.push(note);
        rows.push(Row::new(samples, "—", "—", Check::Report));
    }

    // 4. Idle footprint.
    rows.extend(footprint(quick, &mut notes));

    // 5. Binary size.
    rows.push(binary_size(&mut notes));

    // Report.
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", machine());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| measure | min | median | max | target | etcd median |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for row in &rows {
        let _ = writeln!(out, "{}", row.markdown());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Targets:");
    for row in &rows {
        let _ = writeln!(out, "- {}: {}", row.samples.name, row.verdict());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Samples (in run order):");
    for row in &rows {
        let _ = writeln!(out, "- {}", row.samples.raw());
    }
    for n in &notes {
        let _ = writeln!(out, "- {n}");
    }
    let _ = writeln!(
        out,
        "\nbench wall time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    print!("{out}");
    drop(bin_copy);
}

// ---------------------------------------------------------------------------
// Samples, rows and targets
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    MiB,
    Pct,
}

impl Unit {
    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Ms => format!("{v:.1} ms"),
            Unit::MiB => format!("{v:.2} MiB"),
            Unit::Pct => format!("{v:.3} %"),
        }
    }
}

/// The results of one measure: numbers of the runs that worked, reasons of the
/// runs that did not.
struct Samples {
    name: String,
    unit: Unit,
    ok: Vec<f64>,
    failed: Vec<String>,
    retries: Vec<String>,
}

impl Samples {
    fn new(name: &str, unit: Unit) -> Samples {
        Samples {
            name: name.to_string(),
            unit,
            ok: Vec::new(),
            failed: Vec::new(),
            retries: Vec::new(),
        }
    }

    fn record(&mut self, run: usize, runs: usize, r: Result<f64, String>) {
        match r {
            Ok(v) => {
                eprintln!(
                    "[bench] {} run {run}/{runs}: {}",
                    self.name,
                    self.unit.fmt(v)
                );
                self.ok.push(v);
            }
            Err(e) => {
                eprintln!("[bench] {} run {run}/{runs}: FAILED: {e}", self.name);
                self.failed.push(format!("run {run}: {e}"));
            }
        }
    }

    /// (min, median, max) of the successful runs.
    fn stats(&self) -> Option<(f64, f64, f64)> {
        let mut v = self.ok.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((v[0], median, v[n - 1]))
    }

    fn raw(&self) -> String {
        let mut s = format!(
            "{}: {}",
            self.name,
            self.ok
                .iter()
                .map(|&v| self.unit.fmt(v))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for f in &self.failed {
            let _ = write!(s, "; FAILED {f}");
        }
        for r in &self.retries {
            let _ = write!(s, "; retried after a port collision: {r}");
        }
        s
    }
}

enum Check {
    /// Median at most .0 ms, and max at most .1 ms if given.
    MedianMs(f64, Option<f64>),
    /// Every run at most this many ms.
    MaxMs(f64),
    /// Every sample at most this (in the row's unit).
    Max(f64),
    /// No target: the figure is reported, not judged.
    Report,
}

struct Row {
    samples: Samples,
    target: &'static str,
    etcd: &'static str,
    check: Check,
}

impl Row {
    fn new(samples: Samples, target: &'static str, etcd: &'static str, check: Check) -> Row {
        Row {
            samples,
            target,
            etcd,
            check,
        }
    }

    fn markdown(&self) -> String {
        let s = &self.samples;
        let cells = match (s.failed.first(), s.stats()) {
            (None, Some((min, med, max))) => [s.unit.fmt(min), s.unit.fmt(med), s.unit.fmt(max)],
            (Some(first), stats) => {
                let mut reason = format!(
                    "FAILED: {} of {} runs; first: {first}",
                    s.failed.len(),
                    s.failed.len() + s.ok.len()
                );
                if let Some((min, med, max)) = stats {
                    let _ = write!(
                        reason,
                        " (the {} good runs: {} / {} / {})",
                        s.ok.len(),
                        s.unit.fmt(min),
                        s.unit.fmt(med),
                        s.unit.fmt(max)
                    );
                }
                [cell(&reason), "—".into(), "—".into()]
            }
            (None, None) => ["FAILED: no sample".into(), "—".into(), "—".into()],
        };
        format!(
            "| {} | {} | {} | {} | {} | {} |",
            s.name, cells[0], cells[1], cells[2], self.target, self.etcd
        )
    }

    fn verdict(&self) -> String {
        let s = &self.samples;
        let Some((_, med, max)) = s.stats().filter(|_| s.failed.is_empty()) else {
            return "not measured (failed runs)".into();
        };
        let f = |v| s.unit.fmt(v);
        let misses: Vec<String> = match self.check {
            Check::MedianMs(m, x) => {
                let mut v = Vec::new();
                if med > m {
                    v.push(format!("median {} > {}", f(med), f(m)));
                }
                if let Some(x) = x.filter(|&x| max > x) {
                    v.push(format!("max {} > {}", f(max), f(x)));
                }
                v
            }
            Check::MaxMs(x) | Check::Max(x) => {
                if max > x {
                    vec![format!("max {} > {}", f(max), f(x))]
                } else {
                    vec![]
                }
            }
            Check::Report => return "measured (no target)".into(),
        };
        if misses.is_empty() {
            format!("met ({})", self.target)
        } else {
            format!("MISSED: {}", misses.join(", "))
        }
    }
}

/// Text made safe for one markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "/").replace(['\n', '\r'], " ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a measure that returns a time and a (before, after) term `runs`
/// times; returns the samples and a note listing the term changes.
fn timed_term_change(
    name: &str,
    note: &str,
    runs: usize,
    mut f: impl FnMut() -> Result<(Duration, (u64, u64)), String>,
) -> (Samples, String) {
    let mut samples = Samples::new(name, Unit::Ms);
    let mut terms = Vec::new();
    for run in 1..=runs {
        let r = with_retry(&mut samples, &mut f).map(|(d, t)| {
            terms.push(t);
            d
        });
        samples.record(run, runs, r.map(ms));
    }
    let terms: Vec<String> = terms.iter().map(|(a, b)| format!("{a}->{b}")).collect();
    (samples, format!("{note} per run: {}", terms.join(" ")))
}

/// Runs `f`; if it failed because a node could not bind its port (a port
/// picked by this harness got taken in between), runs it once more.
fn with_retry<T>(
    samples: &mut Samples,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    match f() {
        Err(e) if e.contains("os error 98") => {
            eprintln!(
                "[bench] {}: port collision, retrying on new ports: {e}",
                samples.name
            );
            samples.retries.push(e);
            f()
        }
        r => r,
    }
}

// ---------------------------------------------------------------------------
// Measures
// ---------------------------------------------------------------------------

struct Booted {
    cluster: TestCluster,
    clients: Vec<(u64, KeepAlive)>,
    elapsed: Duration,
    leader: u64,
    /// The largest `elapsed=Xms` any node logged with `bootstrap complete`.
    logged_ms: Option<u64>,
}

/// Launches a `size`-node cluster and times it until every node agrees on a
/// leader with bootstrap complete.
fn bootstrap_run(size: u64) -> Result<Booted, String> {
    let mut cluster = new_cluster(size);
    let ids = cluster.ids();
    let mut clients = pollers(&cluster, &ids);
    let (elapsed, leader, _) = launch_until_leader(&mut cluster, &mut clients, &ids)?;
    let logged_ms = ids
        .iter()
        .map(|&id| {
            cluster
                .bootstrap_line(id)
                .map(|(_, _, elapsed_ms)| elapsed_ms)
        })
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().max());
    Ok(Booted {
        cluster,
        clients,
        elapsed,
        leader,
        logged_ms,
    })
}

/// Launches nodes `ids` back to back and times from the first launch until
/// every node agrees on a leader with bootstrap complete. Returns the time,
/// the leader and its term.
fn launch_until_leader(
    cluster: &mut TestCluster,
    clients: &mut [(u64, KeepAlive)],
    ids: &[u64],
) -> Result<(Duration, u64, u64), String> {
    let start = Instant::now();
    for &id in ids {
        cluster.start_node(id);
    }
    wait_for_leader(
        cluster,
        clients,
        start,
        POLL_INTERVAL,
        BOOTSTRAP_TIMEOUT,
        None,
    )
}

/// A bootstrapped 3-node cluster after `SETTLE`, with its current leader.
fn settled_cluster() -> Result<Booted, String> {
    let mut b = bootstrap_run(3)?;
    sleep(SETTLE);
    let now = Instant::now();
    let (_, leader, _) = wait_for_leader(
        &mut b.cluster,
        &mut b.clients,
        now,
        POLL_INTERVAL,
        Duration::from_millis(500),
        None,
    )
    .map_err(|e| format!("the cluster lost its leader while idling after bootstrap: {e}"))?;
    b.leader = leader;
    Ok(b)
}

/// Kills the leader with SIGKILL; returns the time until both survivors agree
/// on a new leader, and the (old, new) term.
fn failover_run() -> Result<(Duration, (u64, u64)), String> {
    let Booted {
        mut cluster,
        mut clients,
        leader,
        ..
    } = settled_cluster()?;
    let old_term = term_of(&mut clients, leader)?;
    clients.retain(|(id, _)| *id != leader);
    let start = Instant::now();
    cluster.signal(leader, libc::SIGKILL);
    let (elapsed, _, new_term) = wait_for_leader(
        &mut cluster,
        &mut clients,
        start,
        POLL_INTERVAL,
        ELECTION_TIMEOUT,
        Some(leader),
    )?;
    Ok((elapsed, (old_term, new_term)))
}

/// SIGTERMs every node of a settled 3-node cluster, waits until all exited 0,
/// then starts them again on the same data dirs and times from the first
/// launch until all agree on a leader. Returns that time and the (before,
/// after) term; a term that did not grow means state was lost.
fn restart_run() -> Result<(Duration, (u64, u64)), String> {
    let Booted {
        mut cluster,
        mut clients,
        leader,
        ..
    } = settled_cluster()?;
    let old_term = term_of(&mut clients, leader)?;
    let ids: Vec<u64> = clients.iter().map(|(id, _)| *id).collect();
    for &id in &ids {
        cluster.signal(id, libc::SIGTERM);
    }
    let deadline = Instant::now() + EXIT_TIMEOUT;
    for &id in &ids {
        loop {
            if let Some(code) = cluster.poll_exit(id) {
                if code != 0 {
                    return Err(format!(
                        "node {id} exited with code {code} after SIGTERM: {}",
                        stderr_tail(&cluster, id)
                    ));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {id} did not exit within {} ms of SIGTERM",
                    EXIT_TIMEOUT.as_millis()
                ));
            }
            sleep(Duration::from_millis(1));
        }
    }
    let (elapsed, _, new_term) = launch_until_leader(&mut cluster, &mut clients, &ids)?;
    if new_term <= old_term {
        return Err(format!(
            "the term went from {old_term} to {new_term} across the restart: state was lost"
        ));
    }
    Ok((elapsed, (old_term, new_term)))
}

struct Handoff {
    new_leader: Result<Duration, String>,
    exit: Result<Duration, String>,
}

/// SIGTERMs the leader; times the new leader and the old leader's exit.
fn handoff_run() -> Result<Handoff, String> {
    let Booted {
        mut cluster,
        mut clients,
        leader,
        ..
    } = settled_cluster()?;
    clients.retain(|(id, _)| *id != leader);
    let survivors: Vec<u64> = clients.iter().map(|(id, _)| *id).collect();
    let start = Instant::now();
    cluster.signal(leader, libc::SIGTERM);
    let mut new_leader: Option<Result<Duration, String>> = None;
    let mut exit: Option<(Duration, i32)> = None;
    let mut last_view = String::new();
    let mut pacer = Pacer::new(start, HANDOFF_POLL_INTERVAL);
    loop {
        if exit.is_none() {
            if let Some(code) = cluster.poll_exit(leader) {
                exit = Some((start.elapsed(), code));
            }
        }
        if new_leader.is_none() {
            if let Err(e) = check_running(&mut cluster, &survivors) {
                new_leader = Some(Err(e));
            } else {
                let round = poll_round(&mut clients);
                if agreed_leader(&round, Some(leader)).is_some() {
                    new_leader = Some(Ok(start.elapsed()));
                } else {
                    last_view = describe(&round);
                }
            }
        }
        let waited = start.elapsed();
        if new_leader.is_some() && exit.is_some() {
            break;
        }
        if waited >= ELECTION_TIMEOUT.max(EXIT_TIMEOUT) {
            break;
        }
        pacer.wait();
    }
    let new_leader = new_leader.unwrap_or_else(|| {
        Err(format!(
            "no new leader {} ms after SIGTERM; survivors: {last_view}",
            ELECTION_TIMEOUT.as_millis()
        ))
    });
    let exit = match exit {
        Some((d, 0)) => Ok(d),
        Some((d, code)) => Err(format!(
            "old leader exited with code {code} (not 0) after {:.1} ms: {}",
            ms(d),
            stderr_tail(&cluster, leader)
        )),
        None => Err(format!(
            "old leader still running {} ms after SIGTERM: {}",
            EXIT_TIMEOUT.as_millis(),
            stderr_tail(&cluster, leader)
        )),
    };
    Ok(Handoff { new_leader, exit })
}

/// Idle RSS and CPU of a 3-node cluster.
fn footprint(quick: bool, notes: &mut Vec<String>) -> Vec<Row> {
    let rss_target = "≤ 4 MiB per node";
    let cpu_target = "≤ 0.2 % of a core per node";
    let mut rss10 = Samples::new("idle RSS per node, 10 s after bootstrap", Unit::MiB);
    let mut rss60 = Samples::new("idle RSS per node, 60 s after bootstrap", Unit::MiB);
    let cpu_name = if quick {
        "idle CPU per node, 0–10 s after bootstrap (quick)"
    } else {
        "idle CPU per node, 30–60 s after bootstrap"
    };
    let mut cpu = Samples::new(cpu_name, Unit::Pct);
    let result = (|| -> Result<(), String> {
        let mut b = with_retry(&mut rss10, || bootstrap_run(3))?;
        let leader_before = b.leader;
        let term_before = term_of(&mut b.clients, b.leader)?;
        // No admin traffic while idling: close the poll connections.
        b.clients.clear();
        let t0 = Instant::now();
        let ids = b.cluster.ids();
        let pids: Vec<(u64, u32)> = ids
            .iter()
            .map(|&id| {
                let pid = b.cluster.pid(id);
                pid.map(|p| (id, p))
                    .ok_or_else(|| format!("node {id} is not running"))
            })
            .collect::<Result<_, _>>()?;
        let hz = clock_ticks()?;
        let sleep_until = |t: Duration| {
            let e = t0.elapsed();
            if t > e {
                sleep(t - e);
            }
        };
        let cpu_window = |from: Duration,
                          to: Duration,
                          cluster: &mut TestCluster,
                          cpu: &mut Samples,
                          notes: &mut Vec<String>|
         -> Result<(), String> {
            sleep_until(from);
            let before: Vec<(u64, Instant, BTreeMap<u64, ThreadStat>)> = pids
                .iter()
                .map(|&(_, p)| {
                    let ticks = cpu_ticks(p)?;
                    let threads = thread_stats(p)?;
                    Ok::<_, String>((ticks, Instant::now(), threads))
                })
                .collect::<Result<_, _>>()?;
            sleep_until(to);
            check_running(cluster, &ids)?;
            for (&(id, p), (t0, at, threads0)) in pids.iter().zip(&before) {
                let t = cpu_ticks(p)?;
                let threads = thread_stats(p)?;
                let secs = at.elapsed().as_secs_f64();
                cpu.ok.push((t - t0) as f64 / hz / secs * 100.0);
                // Where the time went, and how often the node woke up.
                let mut per_thread = Vec::new();
                let mut switches = 0;
                let mut run_ns = 0;
                for (tid, th) in &threads {
                    let (ticks0, sw0, ns0) = threads0
                        .get(tid)
                        .map_or((0, 0, 0), |o| (o.ticks, o.switches, o.run_ns));
                    switches += th.switches.saturating_sub(sw0);
                    run_ns += th.run_ns.saturating_sub(ns0);
                    per_thread.push(format!("{} {}", th.name, th.ticks.saturating_sub(ticks0)));
                }
                notes.push(format!(
                    "CPU window, node {id}: {} ticks of 1/{hz} s in {secs:.1} s; by thread: {}; \
                     {:.0} context switches/s; schedstat cross-check: {:.1} ms on CPU = {:.3} % \
                     (all threads)",
                    t - t0,
                    per_thread.join(", "),
                    switches as f64 / secs,
                    run_ns as f64 / 1e6,
                    run_ns as f64 / 1e9 / secs * 100.0
                ));
            }
            Ok(())
        };
        let rss_at = |at: Duration,
                      cluster: &mut TestCluster,
                      s: &mut Samples,
                      notes: &mut Vec<String>|
         -> Result<(), String> {
            sleep_until(at);
            check_running(cluster, &ids)?;
            let mut threads = Vec::new();
            for &(id, p) in &pids {
                let st = proc_status(p)?;
                s.ok.push(st.rss_kib as f64 / 1024.0);
                threads.push(format!("node {id}: {} threads", st.threads));
            }
            notes.push(format!("at {} s: {}", at.as_secs(), threads.join(", ")));
            Ok(())
        };
        if quick {
            cpu_window(
                Duration::ZERO,
                Duration::from_secs(10),
                &mut b.cluster,
                &mut cpu,
                notes,
            )?;
            rss_at(Duration::from_secs(10), &mut b.cluster, &mut rss10, notes)?;
        } else {
            rss_at(Duration::from_secs(10), &mut b.cluster, &mut rss10, notes)?;
            cpu_window(
                Duration::from_secs(30),
                Duration::from_secs(60),
                &mut b.cluster,
                &mut cpu,
                notes,
            )?;
            rss_at(Duration::from_secs(60), &mut b.cluster, &mut rss60, notes)?;
        }
        // Did the cluster stay quiet (no election) while idle?
        let mut clients = pollers(&b.cluster, &ids);
        let round = poll_round(&mut clients);
        notes.push(format!(
            "idle cluster: leader {leader_before} term {term_before} at bootstrap; after idling: {}",
            describe(&round)
        ));
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("[bench] idle footprint: FAILED: {e}");
        for s in [&mut rss10, &mut rss60, &mut cpu] {
            if s.ok.len() < 3 {
                s.failed.push(e.clone());
            }
        }
    }
    let mut rows = vec![Row::new(
        rss10,
        rss_target,
        "26–29 MiB (range)",
        Check::Max(4.0),
    )];
    if !quick {
        rows.push(Row::new(
            rss60,
            rss_target,
            "26–29 MiB (range)",
            Check::Max(4.0),
        ));
    }
    rows.push(Row::new(cpu, cpu_target, "0.8 %", Check::Max(0.2)));
    rows
}

fn binary_size(notes: &mut Vec<String>) -> Row {
    let mut s = Samples::new("binary (stripped release)", Unit::MiB);
    match std::fs::metadata(exe()) {
        Ok(m) => {
            s.ok.push(m.len() as f64 / MIB);
            let stripped = match elf_has_symtab(&exe()) {
                Ok(false) => "no ELF symbol table (stripped)".to_string(),
                Ok(true) => "HAS an ELF symbol table (not stripped)".to_string(),
                Err(e) => format!("could not inspect ELF: {e}"),
            };
            notes.push(format!(
                "binary: {} (copied at start), {} bytes, {stripped}",
                bin_under_test().display(),
                m.len()
            ));
        }
        Err(e) => s.failed.push(format!("{}: {e}", exe().display())),
    }
    Row::new(s, "≤ 4 MiB stripped", "20.5 MiB", Check::Max(4.0))
}

// ---------------------------------------------------------------------------
// Polling for agreement
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct NodeStatus {
    role: String,
    term: u64,
    leader_id: Option<u64>,
    bootstrap_complete: bool,
}

impl NodeStatus {
    fn parse(body: &str) -> Result<NodeStatus, String> {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("bad JSON ({e}): {body}"))?;
        Ok(NodeStatus {
            role: v["role"].as_str().unwrap_or("?").to_string(),
            term: v["term"].as_u64().unwrap_or(0),
            leader_id: v["leader_id"].as_u64(),
            bootstrap_complete: v["bootstrap_complete"] == Value::Bool(true),
        })
    }
}

type Round = Vec<(u64, Result<NodeStatus, String>)>;

/// One keep-alive connection per node of `ids`, each to the node's admin API
/// (HTTPS with the client certificate on a TLS cluster).
fn pollers(cluster: &TestCluster, ids: &[u64]) -> Vec<(u64, KeepAlive)> {
    ids.iter()
        .map(|&id| (id, cluster.keep_alive_within(id, HTTP_TIMEOUT)))
        .collect()
}

/// `/admin/cluster/status` over `client`'s connection.
fn status(client: &mut KeepAlive) -> Result<NodeStatus, String> {
    NodeStatus::parse(&client.get("/admin/cluster/status")?)
}

/// Queries every node once.
fn poll_round(clients: &mut [(u64, KeepAlive)]) -> Round {
    clients.iter_mut().map(|(id, c)| (*id, status(c))).collect()
}

/// If every node answered with bootstrap complete and one and the same known
/// leader (other than `not`), returns it and the highest term seen.
fn agreed_leader(round: &Round, not: Option<u64>) -> Option<(u64, u64)> {
    let mut leader = None;
    let mut term = 0;
    for (_, r) in round {
        let s = r.as_ref().ok()?;
        if !s.bootstrap_complete {
            return None;
        }
        let l = s.leader_id?;
        if leader.is_some_and(|x| x != l) || not == Some(l) {
            return None;
        }
        leader = Some(l);
        term = term.max(s.term);
    }
    leader.map(|l| (l, term))
}

fn describe(round: &Round) -> String {
    round
        .iter()
        .map(|(id, r)| match r {
            Ok(s) => format!(
                "node {id}: {} term {} leader {} bootstrap_complete {}",
                s.role,
                s.term,
                s.leader_id.map_or("none".into(), |l| l.to_string()),
                s.bootstrap_complete
            ),
            Err(e) => format!("node {id}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls `clients` every `interval` until they agree on a leader (not `not`).
/// Returns the time since `start`, the leader and the term.
fn wait_for_leader(
    cluster: &mut TestCluster,
    clients: &mut [(u64, KeepAlive)],
    start: Instant,
    interval: Duration,
    timeout: Duration,
    not: Option<u64>,
) -> Result<(Duration, u64, u64), String> {
    let ids: Vec<u64> = clients.iter().map(|(id, _)| *id).collect();
    let mut pacer = Pacer::new(start, interval);
    loop {
        check_running(cluster, &ids)?;
        let round = poll_round(clients);
        let elapsed = start.elapsed();
        if let Some((leader, term)) = agreed_leader(&round, not) {
            return Ok((elapsed, leader, term));
        }
        if elapsed >= timeout {
            return Err(format!(
                "no agreed leader after {} ms; last view: {}",
                timeout.as_millis(),
                describe(&round)
            ));
        }
        pacer.wait();
    }
}

fn term_of(clients: &mut [(u64, KeepAlive)], id: u64) -> Result<u64, String> {
    let (_, client) = clients
        .iter_mut()
        .find(|(i, _)| *i == id)
        .ok_or_else(|| format!("no client for node {id}"))?;
    status(client).map(|s| s.term)
}

// ---------------------------------------------------------------------------
// Clusters of real processes: tests/common's harness
// ---------------------------------------------------------------------------

/// The cluster file of nodes `1..=size` as users run it, launched from the
/// private copy of the binary; starts nothing.
fn new_cluster(size: u64) -> TestCluster {
    TestCluster::new(Spec::shipped(&format!("bench{size}"), size)).with_bin(&exe())
}

/// An error naming the first of `ids` that is no longer running.
fn check_running(cluster: &mut TestCluster, ids: &[u64]) -> Result<(), String> {
    for &id in ids {
        if let Some(code) = cluster.poll_exit(id) {
            return Err(format!(
                "node {id} exited unexpectedly (exit code {code}): {}",
                stderr_tail(cluster, id)
            ));
        }
    }
    Ok(())
}

/// The last few lines node `id` wrote to stderr, on one line.
fn stderr_tail(cluster: &TestCluster, id: u64) -> String {
    let text = cluster.stderr(id);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        "(no stderr)".into()
    } else {
        tail
    }
}

// ---------------------------------------------------------------------------
// /proc, ELF and the machine
// ---------------------------------------------------------------------------

struct ProcStatus {
    rss_kib: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> Result<ProcStatus, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: no {name}"))
    };
    Ok(ProcStatus {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
    })
}

struct ThreadStat {
    name: String,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Voluntary plus involuntary context switches.
    switches: u64,
    /// Time on a CPU in ns, from `schedstat` (exact, unlike the ticks).
    run_ns: u64,
}

/// Every thread of `pid`, by thread id.
fn thread_stats(pid: u32) -> Result<BTreeMap<u64, ThreadStat>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let entry = entry.map_err(|e| format!("{dir}: {e}"))?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let stat_path = format!("{dir}/{tid}/stat");
        let Ok(stat) = std::fs::read_to_string(&stat_path) else {
            continue; // the thread ended meanwhile
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_string(),
            _ => "?".into(),
        };
        let ticks = stat_ticks(&stat_path, &stat)?;
        let status = std::fs::read_to_string(format!("{dir}/{tid}/status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let run_ns = std::fs::read_to_string(format!("{dir}/{tid}/schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(
            tid,
            ThreadStat {
                name,
                ticks,
                switches,
                run_ns,
            },
        );
    }
    Ok(out)
}

/// Whether the ELF file at `path` has a symbol table section (SHT_SYMTAB).
fn elf_has_symtab(path: &Path) -> io::Result<bool> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let bad_header = || bad("truncated ELF header");
    let shoff = u64_at(0x28).ok_or_else(bad_header)? as usize;
    let shentsize = u16_at(0x3A).ok_or_else(bad_header)? as usize;
    let shnum = u16_at(0x3C).ok_or_else(bad_header)? as usize;
    for i in 0..shnum {
        const SHT_SYMTAB: u32 = 2;
        if u32_at(shoff + i * shentsize + 4).ok_or_else(bad_header)? == SHT_SYMTAB {
            return Ok(true);
        }
    }
    Ok(false)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    // The timing the nodes run with, read from the crate so that it cannot go stale.
    let tick_ms = DEFAULT_TICK_INTERVAL.as_millis();
    format!(
        "Machine: {cpus} CPUs (nproc), {model}, Linux {kernel}; loopback; shipped defaults (tick {tick_ms} ms x {DEFAULT_ELECTION_TICKS} election ticks, heartbeat 1 s, peer timeout 3 s)."
    )
}
