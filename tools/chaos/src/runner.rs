//! One chaos run from start to verdict:
//!
//! 1. check the machine (root, `ip`, `iptables`, the quorumd binary) and
//!    delete namespaces left by dead runs;
//! 2. make the namespaces, start the nodes, wait for a leader;
//! 3. start the status pollers, the history recorder and the clients;
//! 4. run the fault schedule: for each fault, a quiet gap, the fault, the
//!    heal, and the time until a write is acknowledged again;
//! 5. heal everything, stop the clients, read every key once more;
//! 6. check the history key by key, Raft's invariants (one leader per
//!    term, one vote per node per term, terms that never go back, the same
//!    entries at the same applied index), the node exits and the
//!    recoveries; draw the timeline; write the results folder.
//!
//! Everything it made is torn down on the way out, on success, on error and
//! on panic (the owners' `Drop`), and on a second Ctrl-C (the cleanup
//! registry).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::checker::DEFAULT_STEP_BUDGET;
use crate::error::{Error, Result};
use crate::faults::{self, Applied, Injector, RECOVERY_DEADLINE};
use crate::firewall;
use crate::history::{self, Counts, Func, Record, Status};
use crate::invariants;
use crate::model::{self, Violation};
use crate::monitor::{self, Monitor};
use crate::netns::{self, Network};
use crate::nodes::{self, Cluster, Exit};
use crate::schedule::{self, FaultKind, ELECTION_TIMEOUT};
use crate::timeline;
use crate::workload::{self, Settings, Shared, Workload};

/// How long the cluster may take to elect its first leader.
const FIRST_LEADER_WITHIN: Duration = Duration::from_secs(30);
/// How long the final read of one key may keep failing after healing.
const FINAL_READ_WITHIN: Duration = Duration::from_secs(30);
/// How long every node may take to apply what the cluster committed, once
/// the faults are healed and the workload has stopped.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);
/// Threads for the final reads.
const FINAL_READERS: usize = 4;
/// The nodes' negative-control switch (`--unsafe-forget-votes`).
const FORGET_VOTE_ENV: &str = "QUORUMD_UNSAFE_FORGET_VOTE";

/// Everything a run is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in the cluster.
    pub nodes: u32,
    /// How long to keep injecting faults (at least one of each kind runs).
    pub duration: Duration,
    /// The seed of the schedule and the clients.
    pub seed: u64,
    /// The workload.
    pub workload: Settings,
    /// Fault kinds to use (all when empty).
    pub kinds: Vec<FaultKind>,
    /// The quorumd binary.
    pub quorumd: PathBuf,
    /// The results folder.
    pub out: PathBuf,
    /// `[raft] snapshot_entries` for the nodes (`None`: the node's default).
    pub snapshot_entries: Option<u64>,
    /// TOML appended to the cluster file (e.g. `[store]` settings).
    pub extra_toml: String,
    /// Keep the nodes' data dirs even when the run passes.
    pub keep_data: bool,
    /// Print each fault as it happens.
    pub verbose: bool,
    /// Negative control: every node rewinds its term and forgets its vote
    /// at each start; the Raft invariant checks must report it.
    pub forget_votes: bool,
    /// The lock workload (none with 0 clients).
    pub locks: crate::locks::LockSettings,
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// Operation counts.
    pub counts: Counts,
    /// Faults injected.
    pub faults: usize,
    /// Every failed check.
    pub violations: Vec<Violation>,
    /// Faults whose recovery took longer than twice the election timeout
    /// once healed (reported, not violations).
    pub slow: Vec<Applied>,
    /// The slowest recovery.
    pub max_recovery_ms: u64,
    /// The seed.
    pub seed: u64,
    /// The results folder.
    pub out: PathBuf,
    /// The run ended early on Ctrl-C.
    pub interrupted: bool,
}

impl Outcome {
    /// The final `chaos:` line.
    pub fn final_line(&self) -> String {
        final_line(
            &self.counts,
            self.faults,
            self.violations.len(),
            self.max_recovery_ms,
            self.seed,
        )
    }
}

/// `chaos: <ops> ops (<ok> ok, <failed> failed, <unknown> unknown), <faults>
/// faults, <violations> violations, max recovery <ms> ms, seed <seed>`
pub fn final_line(
    c: &Counts,
    faults: usize,
    violations: usize,
    max_recovery_ms: u64,
    seed: u64,
) -> String {
    format!(
        "chaos: {} ops ({} ok, {} failed, {} unknown), {faults} faults, {violations} violations, max recovery {max_recovery_ms} ms, seed {seed}",
        c.ops, c.ok, c.failed, c.unknown
    )
}

/// Fails unless this machine can host a run.
pub fn preflight(quorumd: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Setup(
            "quorumd-chaos needs root: it creates network namespaces and iptables rules (CI runs as root)".into(),
        ));
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(Error::Setup(
                "`ip` (iproute2) is not installed: it makes the network namespaces".into(),
            ))
        }
    }
    firewall::require_iptables()?;
    if !quorumd.is_file() {
        return Err(Error::Setup(format!(
            "no quorumd binary at {} (build it first: `cargo build` or `make build`)",
            quorumd.display()
        )));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(Error::io(path))
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut s = String::new();
    for i in items {
        s.push_str(&serde_json::to_string(i).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?);
        s.push('\n');
    }
    write_file(path, &s)
}

/// The node processes and what became of them, between faults.
struct Watch<'a> {
    interrupt: &'a AtomicBool,
    exits: Vec<Exit>,
}

impl Watch<'_> {
    /// Sleeps for `d`, restarting any node that died on its own (each such
    /// exit is a violation). Returns early on Ctrl-C.
    fn idle(&mut self, cluster: &mut Cluster, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            for exit in cluster.unexpected_exits() {
                eprintln!(
                    "chaos: node {} exited on its own ({}) at {:.3}s; restarting it",
                    exit.id, exit.status, exit.at_s
                );
                cluster.start(exit.id)?;
                self.exits.push(exit);
            }
            let now = Instant::now();
            if now >= until || self.interrupt.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

/// Runs the whole thing. `interrupt` is set by the first Ctrl-C: the run
/// stops injecting faults, heals, and still checks what it recorded.
pub fn run(opts: &Options, interrupt: &AtomicBool) -> Result<Outcome> {
    preflight(&opts.quorumd)?;
    for ns in netns::remove_stale() {
        eprintln!("chaos: deleted namespace {ns}, left by a run that is gone");
    }
    fs::create_dir_all(&opts.out).map_err(Error::io(&opts.out))?;
    let out = fs::canonicalize(&opts.out).map_err(Error::io(&opts.out))?;
    clear_earlier_run(&out)?;
    let result = run_in(opts, &out, interrupt);
    if let Err(e) = &result {
        eprintln!("chaos: {e}");
        eprintln!("chaos: results so far in {}", out.display());
    }
    result
}

/// Removes what an earlier run left in `out`: its data dir and its node
/// logs. The logs are appended to across a node's restarts, and the
/// invariant checks read each one whole, so an earlier run's lines would
/// look like this run's node going back in time.
fn clear_earlier_run(out: &Path) -> Result<()> {
    let entries = fs::read_dir(out).map_err(Error::io(out))?;
    let mut cleared = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == "data" {
            fs::remove_dir_all(&path).map_err(Error::io(&path))?;
            cleared = true;
        } else if name.starts_with("node-") && name.ends_with(".log") {
            fs::remove_file(&path).map_err(Error::io(&path))?;
            cleared = true;
        }
    }
    if cleared {
        eprintln!(
            "chaos: removed the data and node logs of an earlier run in {}",
            out.display()
        );
    }
    Ok(())
}

fn run_in(opts: &Options, out: &Path, interrupt: &AtomicBool) -> Result<Outcome> {
    let start = Instant::now();
    let schedule = schedule::generate(opts.seed, opts.duration, &opts.kinds);
    let schedule_json = serde_json::to_string_pretty(&schedule).unwrap_or_default();
    write_file(&out.join("schedule.json"), &(schedule_json + "\n"))?;
    let data_dir = out.join("data");
    let cluster_path = out.join("cluster.toml");
    write_file(
        &cluster_path,
        &nodes::cluster_file(
            opts.nodes,
            &data_dir,
            opts.snapshot_entries,
            &opts.extra_toml,
        ),
    )?;

    let net = Network::create(opts.nodes)?;
    let hub = net.hub();
    let ids: Vec<u32> = (1..=opts.nodes).collect();
    for &id in &ids {
        firewall::restore(&net.node(id), &firewall::setup_script())?;
    }
    let addrs: Vec<(u32, SocketAddr)> = ids.iter().map(|&id| (id, nodes::admin_addr(id))).collect();
    let mut cluster = Cluster::new(
        opts.quorumd.clone(),
        cluster_path,
        out.to_path_buf(),
        start,
        ids.iter().map(|&id| net.node(id)).collect(),
    );
    if opts.forget_votes {
        cluster.set_env(FORGET_VOTE_ENV, "1");
    }
    for &id in &ids {
        cluster.start(id)?;
    }
    let first_leader = Instant::now() + FIRST_LEADER_WITHIN;
    loop {
        if monitor::find_leader(&hub, &addrs, start).is_some() {
            break;
        }
        if Instant::now() >= first_leader || interrupt.load(Ordering::Relaxed) {
            return Err(Error::Runtime(format!(
                "the cluster elected no leader within {}s of starting (see the node logs)",
                FIRST_LEADER_WITHIN.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "chaos: {} nodes up with a leader after {} ms; seed {}",
        opts.nodes,
        start.elapsed().as_millis(),
        opts.seed
    );

    let monitor = Monitor::start(&hub, &addrs, start)?;
    let (tx, rx) = mpsc::channel::<Record>();
    let history_path = out.join("history.jsonl");
    let mut writer = history::Writer::create(&history_path).map_err(Error::io(&history_path))?;
    let recorder = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut write_error = None;
        for r in rx {
            if let Err(e) = writer.write(&r) {
                write_error.get_or_insert(e);
            }
            all.push(r);
        }
        if let Err(e) = writer.flush() {
            write_error.get_or_insert(e);
        }
        (all, write_error)
    });
    let shared = Shared::new(start, tx);
    let work = Workload::start(&hub, &addrs, &opts.workload, &shared)?;
    let lock_work = if opts.locks.clients > 0 {
        Some(crate::locks::LockWorkload::start(
            &hub,
            &addrs,
            &opts.locks,
            start,
        )?)
    } else {
        None
    };

    let mut watch = Watch {
        interrupt,
        exits: Vec::new(),
    };
    let mut applied: Vec<Applied> = Vec::new();
    let probe_seq = AtomicU64::new(1);
    let wanted: BTreeSet<FaultKind> = if opts.kinds.is_empty() {
        FaultKind::ALL.into_iter().collect()
    } else {
        opts.kinds.iter().copied().collect()
    };
    let mut done: BTreeSet<FaultKind> = BTreeSet::new();
    let mut lagging: Vec<Violation> = Vec::new();
    let mut stuck_nodes: BTreeSet<u32> = BTreeSet::new();
    let faults_began = Instant::now();
    watch.idle(&mut cluster, Duration::from_secs(1))?;
    {
        let mut inj = Injector {
            cluster: &mut cluster,
            net: &net,
            nodes: addrs.clone(),
            start,
            problems: Vec::new(),
        };
        for fault in &schedule {
            if interrupt.load(Ordering::Relaxed) {
                break;
            }
            if done.is_superset(&wanted) && faults_began.elapsed() >= opts.duration {
                break;
            }
            watch.idle(inj.cluster, Duration::from_millis(fault.gap_ms))?;
            if interrupt.load(Ordering::Relaxed) {
                break;
            }
            let active = inj.inject(fault)?;
            watch.idle(inj.cluster, Duration::from_millis(fault.duration_ms))?;
            let mut a = inj.heal(active)?;
            a.recovery_ms = faults::measure_recovery(&hub, &addrs, RECOVERY_DEADLINE, &probe_seq)
                .map(|d| d.as_millis() as u64);
            if opts.verbose {
                eprintln!(
                    "chaos: fault {:>3} at {:>7.3}s {:<16} {:>5} ms: {}; {}",
                    a.n,
                    a.start_us as f64 / 1e6,
                    a.kind.name(),
                    (a.end_us - a.start_us) / 1000,
                    a.detail,
                    match a.recovery_ms {
                        Some(ms) => format!("writes again after {ms} ms"),
                        None => "no write acknowledged within 30 s".into(),
                    }
                );
            }
            // Every node applies what was committed when the writes came back.
            // (A node already reported stuck is not waited for again.)
            let watched: Vec<(u32, SocketAddr)> = addrs
                .iter()
                .copied()
                .filter(|(id, _)| !stuck_nodes.contains(id))
                .collect();
            for (id, got, target) in monitor::wait_caught_up(&hub, &watched, CATCH_UP_WITHIN, false)
            {
                stuck_nodes.insert(id);
                let got = got.map_or("no status".to_string(), |g| format!("applied index {g}"));
                eprintln!(
                    "chaos: after fault {} node {id} did not catch up: {got}, committed {target}",
                    a.n
                );
                lagging.push(Violation {
                    kind: "stuck node",
                    key: None,
                    detail: format!(
                        "after fault {} ({}: {}) healed at {:.3}s, node {id} had {got} {}s later, while {target} was committed when writes came back; see node-{id}.log",
                        a.n,
                        a.kind.name(),
                        a.detail,
                        a.end_us as f64 / 1e6,
                        CATCH_UP_WITHIN.as_secs()
                    ),
                    ops: Vec::new(),
                });
            }
            done.insert(a.kind);
            applied.push(a);
            write_jsonl(&out.join("faults.jsonl"), &applied)?;
        }
        inj.flush_all()?;
    }
    watch.idle(&mut cluster, Duration::from_secs(1))?;
    let keys = work.stop();
    let holds = lock_work.map(crate::locks::LockWorkload::stop);

    // Every node catches up once healed and quiet.
    let behind = monitor::wait_caught_up(&hub, &addrs, CATCH_UP_WITHIN, true);
    let mut stuck = Vec::new();
    for &(id, applied, target) in behind.iter().filter(|b| !stuck_nodes.contains(&b.0)) {
        let applied = applied.map_or("no status".to_string(), |a| format!("applied index {a}"));
        eprintln!("chaos: node {id} did not catch up: {applied}, committed {target}");
        stuck.push(Violation {
            kind: "stuck node",
            key: None,
            detail: format!(
                "{}s after the last fault healed (and the workload stopped), node {id} still had {applied} while the cluster had committed {target}; see node-{id}.log and sockets.txt",
                CATCH_UP_WITHIN.as_secs()
            ),
            ops: Vec::new(),
        });
    }
    if !behind.is_empty() {
        // The sockets of every node, while the stuck node is still stuck.
        let mut dump = String::new();
        for &id in &ids {
            let _ = writeln!(
                dump,
                "=== node {id} ({}) ===\n{}",
                net.node(id),
                netns::sockets(&net.node(id))
            );
        }
        write_file(&out.join("sockets.txt"), &dump)?;
    }
    // The final reads: every key, linearizable, after healing, through the
    // nodes that caught up (all of them, if none did).
    let readers: Vec<(u32, SocketAddr)> = addrs
        .iter()
        .copied()
        .filter(|(id, _)| !behind.iter().any(|b| b.0 == *id))
        .collect();
    let readers = if readers.is_empty() {
        addrs.clone()
    } else {
        readers
    };
    let final_failures = final_reads(&hub, &readers, &keys.used(), &opts.workload, &shared)?;
    drop(shared);
    let (samples, applied_states) = monitor.finish();
    let (records, write_error) = recorder
        .join()
        .map_err(|_| Error::Runtime("the history recorder panicked".into()))?;
    if let Some(e) = write_error {
        return Err(Error::Io {
            path: history_path,
            source: e,
        });
    }
    write_jsonl(&out.join("status.jsonl"), &samples)?;
    write_jsonl(&out.join("applied.jsonl"), &applied_states)?;
    write_jsonl(&out.join("faults.jsonl"), &applied)?;
    cluster.kill_all();
    drop(cluster);
    drop(net);

    // The verdict.
    eprintln!("chaos: checking {} operations", records.len());
    let mut violations = model::check_history(&records, 2, DEFAULT_STEP_BUDGET);
    violations.extend(monitor::two_leaders(&samples));
    violations.extend(invariants::reported_terms_go_forward(&samples));
    violations.extend(invariants::one_entry_per_index(&applied_states));
    for &id in &ids {
        let path = out.join(format!("node-{id}.log"));
        let log = fs::read(&path).map_err(Error::io(&path))?;
        violations.extend(invariants::check_node_log(
            id,
            &String::from_utf8_lossy(&log),
        ));
    }
    for e in &watch.exits {
        violations.push(Violation {
            kind: "node exit",
            key: None,
            detail: format!(
                "node {} exited on its own ({}) at {:.3}s; see node-{}.log",
                e.id, e.status, e.at_s, e.id
            ),
            ops: Vec::new(),
        });
    }
    for a in &applied {
        for p in &a.problems {
            violations.push(Violation {
                kind: "unclean shutdown",
                key: None,
                detail: format!("during fault {} ({}): {p}", a.n, a.kind.name()),
                ops: Vec::new(),
            });
        }
    }
    for a in applied.iter().filter(|a| a.recovery_ms.is_none()) {
        violations.push(Violation {
            kind: "no recovery",
            key: None,
            detail: format!(
                "after fault {} ({}: {}) healed at {:.3}s, no write was acknowledged within {}s",
                a.n,
                a.kind.name(),
                a.detail,
                a.end_us as f64 / 1e6,
                RECOVERY_DEADLINE.as_secs()
            ),
            ops: Vec::new(),
        });
    }
    violations.extend(lagging);
    violations.extend(stuck);
    violations.extend(final_failures);
    if let Some(holds) = &holds {
        write_jsonl(&out.join("holds.jsonl"), holds)?;
        let overlaps = crate::locks::check(holds);
        let count = |e: crate::locks::End| holds.iter().filter(|h| h.end == e).count();
        eprintln!(
            "chaos: lock workload: {} holds ({} released, {} abandoned, {} expired), {} overlaps",
            holds.len(),
            count(crate::locks::End::Released),
            count(crate::locks::End::Abandoned),
            count(crate::locks::End::Expired),
            overlaps.len()
        );
        violations.extend(overlaps);
    }
    let slow_ms = 2 * ELECTION_TIMEOUT.as_millis() as u64;
    let slow: Vec<Applied> = applied
        .iter()
        .filter(|a| a.recovery_ms.is_some_and(|ms| ms > slow_ms))
        .cloned()
        .collect();
    let outcome = Outcome {
        counts: Counts::of(&records),
        faults: applied.len(),
        max_recovery_ms: applied
            .iter()
            .filter_map(|a| a.recovery_ms)
            .max()
            .unwrap_or(0),
        violations,
        slow,
        seed: opts.seed,
        out: out.to_path_buf(),
        interrupted: interrupt.load(Ordering::Relaxed),
    };

    let line = outcome.final_line();
    let marked: Vec<u64> = outcome
        .violations
        .iter()
        .flat_map(|v| v.ops.iter().copied())
        .collect();
    timeline::write(
        &out.join("timeline.svg"),
        &timeline::Picture {
            title: &line,
            records: &records,
            faults: &applied,
            leaders: &monitor::leader_changes(&samples),
            marked: &marked,
            run_s: start.elapsed().as_secs_f64(),
        },
    )?;
    write_file(&out.join("report.txt"), &report(opts, &outcome, &applied))?;
    if outcome.violations.is_empty() && !opts.keep_data {
        let _ = fs::remove_dir_all(&data_dir);
    }
    Ok(outcome)
}

/// Reads every key once, linearizably, through the nodes in turn, retrying
/// for up to [`FINAL_READ_WITHIN`]; each attempt goes into the history.
fn final_reads(
    hub: &str,
    addrs: &[(u32, SocketAddr)],
    keys: &[String],
    settings: &Settings,
    shared: &Shared,
) -> Result<Vec<Violation>> {
    let next = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let ns = netns::open(hub)?;
    let settings = Settings {
        stale_reads: false,
        timeout: settings.timeout.max(Duration::from_secs(2)),
        ..settings.clone()
    };
    let client = settings.clients;
    std::thread::scope(|s| {
        for _ in 0..FINAL_READERS {
            let (ns, next, failures, settings, shared) =
                (&ns, &next, &failures, &settings, shared.clone());
            s.spawn(move || {
                if let Err(e) = netns::enter(ns) {
                    eprintln!("chaos: a final reader cannot enter the hub namespace: {e}");
                    return;
                }
                let mut seen = std::collections::HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(key) = keys.get(i) else { break };
                    let until = Instant::now() + FINAL_READ_WITHIN;
                    let mut attempt = 0usize;
                    loop {
                        let (node, addr) = addrs[(i + attempt) % addrs.len()];
                        let r = workload::run_op(&shared, client, node, addr, key, Func::Get, settings, &mut seen, true);
                        let ok = r.status == Status::Ok;
                        let _ = shared.record.send(r);
                        if ok {
                            break;
                        }
                        attempt += 1;
                        if Instant::now() >= until {
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(Violation {
                                kind: "final read",
                                key: Some(key.clone()),
                                detail: format!(
                                    "no linearizable read succeeded within {}s after healing ({attempt} attempts)",
                                    FINAL_READ_WITHIN.as_secs()
                                ),
                                ops: Vec::new(),
                            });
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
    });
    Ok(failures.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// `report.txt`: the final line, how to replay, every fault, and every
/// violation in detail.
fn report(opts: &Options, o: &Outcome, applied: &[Applied]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", o.final_line());
    if o.interrupted {
        let _ = writeln!(s, "(interrupted by Ctrl-C before the schedule ended)");
    }
    let kinds = if opts.kinds.is_empty() {
        String::new()
    } else {
        format!(
            " --faults {}",
            opts.kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let _ = writeln!(
        s,
        "\nreplay: quorumd-chaos run --nodes {} --duration {} --seed {} --clients {} --keys {} --ops-per-key {}{}{}",
        opts.nodes,
        humantime::format_duration(opts.duration),
        opts.seed,
        opts.workload.clients,
        opts.workload.keys,
        opts.workload.ops_per_key,
        kinds,
        if opts.workload.stale_reads { " --unsafe-stale-reads" } else { "" },
    );
    if opts.forget_votes {
        s.pop();
        let _ = writeln!(s, " --unsafe-forget-votes");
    }
    let _ = writeln!(s, "\nfaults (start s, healed s, recovery ms):");
    for a in applied {
        let _ = writeln!(
            s,
            "  {:>3} {:>9.3} {:>9.3} {:>6}  {:<16} {}",
            a.n,
            a.start_us as f64 / 1e6,
            a.end_us as f64 / 1e6,
            a.recovery_ms.map_or("never".to_string(), |m| m.to_string()),
            a.kind.name(),
            a.detail
        );
    }
    if !o.slow.is_empty() {
        let _ = writeln!(
            s,
            "\nrecoveries over twice the election timeout ({} ms):",
            2 * ELECTION_TIMEOUT.as_millis()
        );
        for a in &o.slow {
            let _ = writeln!(
                s,
                "  fault {} ({}): {} ms",
                a.n,
                a.kind.name(),
                a.recovery_ms.unwrap_or(0)
            );
        }
    }
    let _ = writeln!(s, "\n{} violations", o.violations.len());
    for v in &o.violations {
        let _ = write!(s, "\n{v}");
    }
    s
}

/// Prints the verdict: violations and slow recoveries on stderr, then the
/// results folder, then the final line on stdout.
pub fn print(o: &Outcome) {
    for v in o.violations.iter().take(20) {
        eprint!("chaos: {v}");
    }
    if o.violations.len() > 20 {
        eprintln!(
            "chaos: ... and {} more in report.txt",
            o.violations.len() - 20
        );
    }
    for a in &o.slow {
        eprintln!(
            "chaos: slow recovery: fault {} ({}) took {} ms (over {} ms)",
            a.n,
            a.kind.name(),
            a.recovery_ms.unwrap_or(0),
            2 * ELECTION_TIMEOUT.as_millis()
        );
    }
    eprintln!("chaos: results in {}", o.out.display());
    println!("{}", o.final_line());
    let _ = std::io::stdout().flush();
}

/// A results folder name that does not exist yet: `target/chaos/<unix secs>-seed<seed>`.
pub fn default_out(seed: u64) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("target/chaos").join(format!("{secs}-seed{seed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_line_reads_as_the_issue_gives_it() {
        let c = Counts {
            ops: 1200,
            ok: 1000,
            failed: 150,
            unknown: 50,
        };
        assert_eq!(
            final_line(&c, 9, 0, 412, 42),
            "chaos: 1200 ops (1000 ok, 150 failed, 50 unknown), 9 faults, 0 violations, max recovery 412 ms, seed 42"
        );
    }
}
