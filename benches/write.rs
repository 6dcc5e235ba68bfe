//! Write-path benchmarks: `cargo bench --bench write`, run by `make bench`.
//!
//! quorumd and, when `etcd` is on `PATH` (Debian's `etcd-server`), etcd 3.4
//! in the same run: two 3-node clusters on loopback, started together, each
//! measured while the other idles. Requests go to each system's leader:
//! quorumd's Consul KV API, etcd's v3 JSON gateway. What it measures, in
//! order (docs/benchmarks-write.md says more):
//!
//! 1. **Idle** CPU (time on a CPU from `/proc/PID/task/*/schedstat`, % of one core),
//!    wakeups (the times a thread was put on a CPU, from the same files) and
//!    RSS (`VmRSS`) of every node over one window, both clusters fresh and
//!    idle at once, nobody polling them.
//! 2. **Disk bytes written per put**: `QUORUMD_BENCH_DISK_PUTS` (2,000)
//!    sequential puts of 100-byte values over one keep-alive connection; the
//!    sum of the `write_bytes` deltas of `/proc/PID/io` over the 3 nodes,
//!    divided by the puts. The window ends once what the puts wrote is at
//!    rest (quorumd: a state machine checkpoint on every node after the last
//!    put; etcd: 1 s, ten of its backend's commit intervals). Counted on each
//!    node over the same window, from its `/metrics`: WAL fsyncs and state
//!    machine write transactions (quorumd's redb, etcd's bbolt commits).
//! 3. **Data dir size** (allocated blocks, as `du`) of every node against the
//!    bytes the store holds (keys plus values): after 2,048 values of 1 KiB,
//!    then after 10,240 values of 1 KiB written and rewritten once, each
//!    time once it settled as above.
//! 4. **`wrk`** (when on `PATH`; Debian's `wrk`) with `benches/wrk/kv.lua`:
//!    puts with a new key per request and 64-byte values over 1 and 16
//!    connections, then linearizable gets over 1 connection, each for
//!    `QUORUMD_BENCH_SECONDS` (5): median, p99, requests/s. Without wrk the
//!    bench times 2,000 puts and gets of one keep-alive client instead.
//!    Then, after 10 s at rest, the RSS of every node again.
//! 5. **Failover**: `kill -9` of the leader, timed until both survivors
//!    report the same new leader (each polled every millisecond over a
//!    keep-alive connection); the node is started again and the cluster let
//!    settle before the next kill. `QUORUMD_BENCH_KILLS` (20) times on
//!    quorumd, `QUORUMD_BENCH_ETCD_KILLS` (5) on etcd, whose election
//!    timeout makes each one take seconds.
//! 6. **Binary size** of the quorumd binary cargo built for the bench.
//!
//! `QUORUMD_BENCH_IDLE_SECONDS` (10) sets the idle window. Stdout gets one
//! table, quorumd beside etcd with the ratio and the target, and a verdict
//! per target. Every process is killed by its handle when the run ends.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{bin_under_test, KeepAlive, Spec, TestCluster};
use serde_json::{json, Value};
use shared::etcd::{b64, Etcd};
use shared::{env_num, on_cpu, percentile, proc_rss_mib, which};

/// Value size of the wrk runs.
const WRK_VALUE_BYTES: usize = 64;
/// Value size of the disk-bytes measure.
const DISK_VALUE_BYTES: usize = 100;
/// The data dir measure: keys of 1 KiB values, first 2,048 (2 MiB), then
/// 10,240 (10 MiB) written twice.
const DIR_VALUE_BYTES: usize = 1024;
const DIR_SMALL_KEYS: u64 = 2048;
const DIR_LARGE_KEYS: u64 = 10_240;
/// Concurrent clients that load the data dir measure.
const LOADERS: u64 = 16;
/// Ops of the keep-alive fallback when wrk is missing.
const FALLBACK_OPS: usize = 2000;
/// How often the survivors are asked for their leader during a failover.
const FAILOVER_POLL: Duration = Duration::from_millis(1);
/// Rest after a restarted node rejoined, before the next kill: its peers
/// hold connections to it again.
const REJOIN_REST: Duration = Duration::from_secs(1);
/// Rest after the latency runs before the RSS after work is read: past
/// quorumd's checkpoint interval (5 s) and its second at rest, after which
/// it gives freed memory back.
const WORK_REST: Duration = Duration::from_secs(10);
/// Longest wait for anything in this bench.
const WAIT: Duration = Duration::from_secs(60);
/// A `kill -9` failover slower than this prints what every node logged
/// meanwhile: the fast path failed, and the log tells how.
const SLOW_KILL: Duration = Duration::from_millis(50);
const MIB: f64 = 1024.0 * 1024.0;

struct Knobs {
    wrk_seconds: u64,
    disk_puts: u64,
    kills: u64,
    etcd_kills: u64,
    pauses: u64,
    idle_seconds: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches`
    }
    let knobs = Knobs {
        wrk_seconds: env_num("QUORUMD_BENCH_SECONDS", 5).max(1),
        disk_puts: env_num("QUORUMD_BENCH_DISK_PUTS", 2000).max(1),
        kills: env_num("QUORUMD_BENCH_KILLS", 20),
        etcd_kills: env_num("QUORUMD_BENCH_ETCD_KILLS", 5),
        pauses: env_num("QUORUMD_BENCH_PAUSES", 5),
        idle_seconds: env_num("QUORUMD_BENCH_IDLE_SECONDS", 10).max(1),
    };
    let started = Instant::now();
    // Other work on the machine moves latency tails and failover races.
    let load_at_start = load_average();
    println!("## Write path: 3 nodes on loopback, requests to the leader\n");
    let wrk = which("wrk");
    if wrk.is_none() {
        println!("wrk is not on PATH (apt-get install wrk): latency from a keep-alive client, no 16-connection run.\n");
    }
    let etcd_bin = which("etcd");
    if etcd_bin.is_none() {
        println!("etcd is not on PATH (apt-get install etcd-server): quorumd alone.\n");
    }

    let mut q = Quorumd::start();
    let mut e = etcd_bin.as_deref().map(EtcdSystem::start);
    let mut fq = Figures::default();
    let mut fe = Figures::default();
    {
        let mut both: Vec<(&dyn System, &mut Figures)> = vec![(&q, &mut fq)];
        if let Some(e) = &e {
            both.push((e, &mut fe));
        }
        idle(&mut both, Duration::from_secs(knobs.idle_seconds));
    }
    measure(&mut q, &mut fq, &knobs, wrk.as_deref(), knobs.kills);
    if let Some(e) = &mut e {
        measure(e, &mut fe, &knobs, wrk.as_deref(), knobs.etcd_kills);
    }
    fq.binary_bytes = std::fs::metadata(bin_under_test()).ok().map(|m| m.len());
    fe.binary_bytes = etcd_bin
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    drop(q);
    drop(e);
    report(&fq, etcd_bin.is_some().then_some(&fe), &knobs);
    println!(
        "\nbinary: {}; total run time {:.0} s; load average {load_at_start} at the start, {} at the end",
        bin_under_test().display(),
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

/// The 1, 5 and 15-minute load averages of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------
// What is measured
// ---------------------------------------------------------------------------

/// One wrk run, as `benches/wrk/kv.lua` reports it.
#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests: u64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// The disk-bytes measure.
#[derive(Debug, Default)]
struct Disk {
    puts: u64,
    /// `write_bytes` delta of each node, leader first.
    bytes: Vec<u64>,
    /// Counter deltas of each node, leader first.
    fsyncs: Vec<f64>,
    transactions: Vec<f64>,
    checkpoints: Vec<f64>,
}

/// Data dir sizes of each node, leader first, and the bytes the store holds.
#[derive(Debug, Default)]
struct Dirs {
    small: Vec<u64>,
    small_live: u64,
    large: Vec<u64>,
    large_live: u64,
}

#[derive(Debug, Default)]
struct Figures {
    idle_cpu_pct: Vec<f64>,
    /// Times a thread of the node was put on a CPU, per second.
    idle_wakeups_per_s: Vec<f64>,
    idle_rss_mib: Vec<f64>,
    /// RSS of every node after the latency runs and [`WORK_REST`].
    rest_rss_mib: Vec<f64>,
    put1: Option<WrkRun>,
    put16: Option<WrkRun>,
    get1: Option<WrkRun>,
    /// Keep-alive client latencies (ms), when wrk is missing.
    put_ka: Vec<f64>,
    get_ka: Vec<f64>,
    disk: Option<Disk>,
    dirs: Option<Dirs>,
    failover_ms: Vec<f64>,
    kills: u64,
    /// SIGSTOP of the leader until the survivors agree (ms).
    pause_ms: Vec<f64>,
    /// The system's least election timeout (ms).
    election_timeout_ms: f64,
    binary_bytes: Option<u64>,
    notes: Vec<String>,
}

impl Figures {
    fn put_median(&self) -> Option<f64> {
        self.put1
            .map(|r| r.p50_ms)
            .or_else(|| median_of(&self.put_ka))
    }

    fn put_p99(&self) -> Option<f64> {
        self.put1
            .map(|r| r.p99_ms)
            .or_else(|| (!self.put_ka.is_empty()).then(|| percentile(&self.put_ka, 0.99)))
    }

    fn get_median(&self) -> Option<f64> {
        self.get1
            .map(|r| r.p50_ms)
            .or_else(|| median_of(&self.get_ka))
    }

    fn disk_per_put(&self) -> Option<f64> {
        let d = self.disk.as_ref()?;
        Some(d.bytes.iter().sum::<u64>() as f64 / d.puts as f64)
    }
}

fn median_of(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| percentile(samples, 0.5))
}

// ---------------------------------------------------------------------------
// The systems
// ---------------------------------------------------------------------------

/// What the measures need of a 3-node cluster. Nodes are named by the
/// system's own numbers (quorumd 1..=3, etcd 0..3).
trait System: Sync {
    fn name(&self) -> &'static str;
    /// The first argument of `benches/wrk/kv.lua`.
    fn wrk_name(&self) -> &'static str;
    fn nodes(&self) -> Vec<u64>;
    /// The leader, once every node agrees on it.
    fn leader(&self) -> Result<u64, String>;
    /// The node's KV API.
    fn kv_addr(&self, node: u64) -> SocketAddr;
    fn pid(&self, node: u64) -> Option<u32>;
    fn data_dir(&self, node: u64) -> PathBuf;
    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String>;
    fn get(&self, c: &mut KeepAlive, key: &str) -> Result<(), String>;
    /// (WAL fsyncs, state machine write transactions, checkpoints) so far,
    /// from the node's `/metrics`.
    fn counters(&self, node: u64) -> Result<[f64; 3], String>;
    /// Waits until what was written is at rest on disk.
    fn settle(&self) -> Result<(), String>;
    /// A connection the failover clock polls `node` over, and the leader
    /// that `node` reports through it (`None` if it knows none or does not
    /// answer).
    fn poller(&self, node: u64) -> KeepAlive;
    fn leader_seen(&self, c: &mut KeepAlive) -> Option<String>;
    /// How `node` is named in [`System::leader_seen`]'s answers.
    fn id_of(&self, node: u64) -> Result<String, String>;
    /// Sends SIGKILL to `node`, and returns at once.
    fn kill9(&mut self, node: u64);
    /// Reaps `node`, killed by [`System::kill9`], and starts it again.
    fn restart(&mut self, node: u64);
    /// Sends `signal` to `node`.
    fn signal(&mut self, node: u64, signal: i32);
    /// The election timeout of this system's configuration (the least one,
    /// before randomization).
    fn election_timeout(&self) -> Duration;
    /// How much each node has logged so far (empty if the bench keeps no
    /// logs of this system).
    fn log_marks(&self) -> Vec<usize> {
        Vec::new()
    }
    /// What each node logged since `marks`, each line prefixed with its
    /// node.
    fn log_since(&self, _marks: &[usize]) -> String {
        String::new()
    }
}

/// The Prometheus sample `name` (no labels) in `text`.
fn sample(text: &str, name: &str) -> Result<f64, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

struct Quorumd {
    c: TestCluster,
}

impl Quorumd {
    fn start() -> Quorumd {
        // The shipped timing, and the health settings of clusters/.
        let mut c = TestCluster::new(Spec::shipped("bench-write", 3));
        c.start(&[1, 2, 3]);
        c.wait_agreed_leader(&[1, 2, 3]);
        Quorumd { c }
    }

    fn checkpoints(&self) -> Result<Vec<f64>, String> {
        self.nodes()
            .into_iter()
            .map(|n| self.counters(n).map(|c| c[2]))
            .collect()
    }
}

impl System for Quorumd {
    fn name(&self) -> &'static str {
        "quorumd"
    }

    fn wrk_name(&self) -> &'static str {
        "quorumd"
    }

    fn nodes(&self) -> Vec<u64> {
        vec![1, 2, 3]
    }

    fn leader(&self) -> Result<u64, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((leader, _)) = self.c.agreed_leader(&[1, 2, 3]) {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(format!("no agreed leader within {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kv_addr(&self, node: u64) -> SocketAddr {
        self.c.admin(node)
    }

    fn pid(&self, node: u64) -> Option<u32> {
        self.c.pid(node)
    }

    fn data_dir(&self, node: u64) -> PathBuf {
        self.c.data_dir(node)
    }

    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String> {
        let (status, body) = c.call("PUT", &format!("/v1/kv/{key}"), value)?;
        (status == 200 && body == b"true")
            .then_some(())
            .ok_or_else(|| format!("put answered {status}"))
    }

    fn get(&self, c: &mut KeepAlive, key: &str) -> Result<(), String> {
        let (status, _) = c.call("GET", &format!("/v1/kv/{key}"), b"")?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("get answered {status}"))
    }

    fn counters(&self, node: u64) -> Result<[f64; 3], String> {
        let text = self.c.keep_alive(node).get("/metrics")?;
        Ok([
            sample(&text, "quorumd_disk_wal_fsync_duration_seconds_count")?,
            sample(&text, "quorumd_disk_store_transactions_total")?,
            sample(&text, "quorumd_disk_checkpoints_total")?,
        ])
    }

    /// One checkpoint on every node that started after the writes: a
    /// checkpoint still running now is let finish first (they take
    /// milliseconds), then the next one is awaited. A node whose last
    /// checkpoint already held all it applied would never make another, so
    /// one more small put follows the count: each node then checkpoints it,
    /// at once or at rest, after the count was taken. Then the nodes are let
    /// rest: a node that applied nothing for a second compacts its log down
    /// to its tail, and the log writer deletes what that released.
    fn settle(&self) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(300));
        let before = self.checkpoints()?;
        let leader = self.leader()?;
        self.put(&mut KeepAlive::new(self.kv_addr(leader)), "settle", b"s")?;
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.checkpoints()?;
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no checkpoint on every node within {WAIT:?} (checkpoints per node, \
                     leader first: {before:?} before, {now:?} now)"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        Ok(())
    }

    fn poller(&self, node: u64) -> KeepAlive {
        self.c.keep_alive_within(node, Duration::from_secs(1))
    }

    fn leader_seen(&self, c: &mut KeepAlive) -> Option<String> {
        let s: Value = serde_json::from_str(&c.get("/admin/cluster/status").ok()?).ok()?;
        Some(s["leader_id"].as_u64()?.to_string())
    }

    fn id_of(&self, node: u64) -> Result<String, String> {
        Ok(node.to_string())
    }

    fn kill9(&mut self, node: u64) {
        self.c.signal(node, libc::SIGKILL);
    }

    fn restart(&mut self, node: u64) {
        self.c.wait_exit(node, Duration::from_secs(20));
        self.c.start_node(node);
    }

    fn signal(&mut self, node: u64, signal: i32) {
        self.c.signal(node, signal);
    }

    fn election_timeout(&self) -> Duration {
        // The shipped timing: 3 ticks of 100 ms.
        Duration::from_millis(300)
    }

    fn log_marks(&self) -> Vec<usize> {
        self.nodes()
            .into_iter()
            .map(|n| self.c.stderr(n).len())
            .collect()
    }

    fn log_since(&self, marks: &[usize]) -> String {
        let mut out = String::new();
        for (n, &mark) in self.nodes().into_iter().zip(marks) {
            for line in self.c.stderr_since(n, mark).lines() {
                out.push_str(&format!("  node {n}: {line}\n"));
            }
        }
        out
    }
}

struct EtcdSystem {
    e: Etcd,
}

impl EtcdSystem {
    fn start(bin: &str) -> EtcdSystem {
        EtcdSystem {
            e: Etcd::start(bin),
        }
    }

    fn status(&self, node: u64) -> Result<Value, String> {
        self.e
            .status(node as usize)
            .ok_or_else(|| format!("etcd member {node} gave no status"))
    }
}

impl System for EtcdSystem {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn wrk_name(&self) -> &'static str {
        "etcd"
    }

    fn nodes(&self) -> Vec<u64> {
        vec![0, 1, 2]
    }

    fn leader(&self) -> Result<u64, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.e.leader() {
                return Ok(i as u64);
            }
            if Instant::now() > deadline {
                return Err(format!("no agreed etcd leader within {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kv_addr(&self, node: u64) -> SocketAddr {
        self.e.client[node as usize]
    }

    fn pid(&self, node: u64) -> Option<u32> {
        self.e.pid(node as usize)
    }

    fn data_dir(&self, node: u64) -> PathBuf {
        self.e.data_dir(node as usize)
    }

    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String> {
        let body = json!({"key": b64(key.as_bytes()), "value": b64(value)}).to_string();
        let (status, _) = c.call("POST", "/v3/kv/put", body.as_bytes())?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("put answered {status}"))
    }

    fn get(&self, c: &mut KeepAlive, key: &str) -> Result<(), String> {
        let body = json!({"key": b64(key.as_bytes())}).to_string();
        let (status, _) = c.call("POST", "/v3/kv/range", body.as_bytes())?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("range answered {status}"))
    }

    fn counters(&self, node: u64) -> Result<[f64; 3], String> {
        let text = KeepAlive::new(self.kv_addr(node)).get("/metrics")?;
        Ok([
            sample(&text, "etcd_disk_wal_fsync_duration_seconds_count")?,
            sample(&text, "etcd_disk_backend_commit_duration_seconds_count")?,
            sample(
                &text,
                "etcd_debugging_snap_save_total_duration_seconds_count",
            )
            .unwrap_or(0.0),
        ])
    }

    /// etcd's backend commits every 100 ms: ten of them.
    fn settle(&self) -> Result<(), String> {
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    fn poller(&self, node: u64) -> KeepAlive {
        KeepAlive::within(self.kv_addr(node), Duration::from_secs(1))
    }

    fn leader_seen(&self, c: &mut KeepAlive) -> Option<String> {
        let (_, leader) = self.e.view(c)?;
        (leader != "0").then_some(leader)
    }

    fn id_of(&self, node: u64) -> Result<String, String> {
        self.status(node)?["header"]["member_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("etcd member {node}: no member id"))
    }

    fn kill9(&mut self, node: u64) {
        // Reaped before the restart: waiting here would hold up the clock.
        self.e.signal(node as usize, libc::SIGKILL);
    }

    fn restart(&mut self, node: u64) {
        self.e.signal_and_reap(node as usize, libc::SIGKILL);
        self.e.spawn(node as usize, "existing");
    }

    fn signal(&mut self, node: u64, signal: i32) {
        self.e.signal(node as usize, signal);
    }

    fn election_timeout(&self) -> Duration {
        // etcd's default --election-timeout.
        Duration::from_millis(1000)
    }
}

// ---------------------------------------------------------------------------
// Measures
// ---------------------------------------------------------------------------

fn measure(sys: &mut dyn System, f: &mut Figures, knobs: &Knobs, wrk: Option<&str>, kills: u64) {
    let name = sys.name();
    let failed = |f: &mut Figures, what: &str, e: String| {
        eprintln!("{name}: {what} failed: {e}");
        f.notes.push(format!("{what} failed: {e}"));
    };
    eprintln!("{name}: {} sequential puts, disk bytes", knobs.disk_puts);
    match disk_per_put(sys, knobs.disk_puts) {
        Ok(d) => f.disk = Some(d),
        Err(e) => failed(f, "disk bytes per put", e),
    }
    eprintln!("{name}: data dir size");
    match data_dirs(sys, knobs.disk_puts) {
        Ok(d) => f.dirs = Some(d),
        Err(e) => failed(f, "data dir size", e),
    }
    let latency = match wrk {
        Some(wrk) => {
            eprintln!("{name}: wrk, {} s a run", knobs.wrk_seconds);
            wrk_runs(sys, f, wrk, knobs.wrk_seconds, knobs.disk_puts)
        }
        None => {
            eprintln!("{name}: keep-alive client latency");
            keep_alive_latency(sys, f)
        }
    };
    if let Err(e) = latency {
        failed(f, "latency", e);
    }
    eprintln!(
        "{name}: RSS after the runs, {} s at rest",
        WORK_REST.as_secs()
    );
    std::thread::sleep(WORK_REST);
    for n in sys.nodes() {
        match sys.pid(n).and_then(proc_rss_mib) {
            Some(rss) => f.rest_rss_mib.push(rss),
            None => f
                .notes
                .push(format!("RSS after work: no /proc figure for node {n}")),
        }
    }
    eprintln!("{name}: {kills} kills of the leader");
    f.kills = kills;
    for i in 0..kills {
        match failover(sys, Fault::Kill) {
            Ok(d) => f.failover_ms.push(d.as_secs_f64() * 1e3),
            Err(e) => {
                failed(f, &format!("failover {}", i + 1), e);
                // The killed node may still be down: a pause now would
                // measure a 1-node cluster's lack of quorum.
                return;
            }
        }
    }
    eprintln!("{name}: {} pauses (SIGSTOP) of the leader", knobs.pauses);
    f.election_timeout_ms = sys.election_timeout().as_secs_f64() * 1e3;
    for i in 0..knobs.pauses {
        match failover(sys, Fault::Pause) {
            Ok(d) => f.pause_ms.push(d.as_secs_f64() * 1e3),
            Err(e) => {
                failed(f, &format!("pause {}", i + 1), e);
                break;
            }
        }
    }
}

/// How [`failover`] takes the leader away.
#[derive(Clone, Copy)]
enum Fault {
    /// `kill -9`: its peers' connections reset at once.
    Kill,
    /// SIGSTOP: the host looks silent; only the election timeout tells.
    Pause,
}

/// Both clusters idle at once: CPU and RSS of every node over `window`.
fn idle(systems: &mut [(&dyn System, &mut Figures)], window: Duration) {
    eprintln!("idle window of {} s", window.as_secs());
    for (sys, f) in systems.iter_mut() {
        if let Err(e) = sys.leader() {
            f.notes.push(format!("idle: {e}"));
        }
    }
    // Past bootstrap and the first heartbeats.
    std::thread::sleep(Duration::from_secs(2));
    let ticks = |sys: &dyn System| -> Vec<Option<(u64, u64)>> {
        sys.nodes()
            .into_iter()
            .map(|n| on_cpu(sys.pid(n)?).ok())
            .collect()
    };
    let before: Vec<_> = systems.iter().map(|(s, _)| ticks(*s)).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    for ((sys, f), before) in systems.iter_mut().zip(before) {
        for ((n, b), a) in sys.nodes().into_iter().zip(before).zip(ticks(*sys)) {
            match (b, a, sys.pid(n).and_then(proc_rss_mib)) {
                (Some(b), Some(a), Some(rss)) => {
                    f.idle_cpu_pct
                        .push(a.0.saturating_sub(b.0) as f64 / 1e9 / secs * 100.0);
                    f.idle_wakeups_per_s
                        .push(a.1.saturating_sub(b.1) as f64 / secs);
                    f.idle_rss_mib.push(rss);
                }
                _ => f.notes.push(format!("idle: no /proc figures for node {n}")),
            }
        }
    }
}

/// The leader first, then the others.
fn leader_first(sys: &dyn System) -> Result<Vec<u64>, String> {
    let leader = sys.leader()?;
    let mut nodes = vec![leader];
    nodes.extend(sys.nodes().into_iter().filter(|&n| n != leader));
    Ok(nodes)
}

/// `write_bytes` of `/proc/PID/io`.
fn write_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{path}: no write_bytes"))
}

fn disk_per_put(sys: &dyn System, puts: u64) -> Result<Disk, String> {
    let nodes = leader_first(sys)?;
    let pids = nodes
        .iter()
        .map(|&n| sys.pid(n).ok_or_else(|| format!("node {n} is not running")))
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = || -> Result<Vec<(u64, [f64; 3])>, String> {
        nodes
            .iter()
            .zip(&pids)
            .map(|(&n, &pid)| Ok((write_bytes(pid)?, sys.counters(n)?)))
            .collect()
    };
    let before = snapshot()?;
    let value = vec![b'd'; DISK_VALUE_BYTES];
    let mut c = KeepAlive::new(sys.kv_addr(nodes[0]));
    for i in 0..puts {
        // Six digits: benches/wrk/kv.lua reads them back.
        sys.put(&mut c, &format!("disk/{i:06}"), &value)?;
    }
    sys.settle()?;
    let after = snapshot()?;
    let mut d = Disk {
        puts,
        ..Disk::default()
    };
    for ((b_bytes, b), (a_bytes, a)) in before.into_iter().zip(after) {
        d.bytes.push(a_bytes - b_bytes);
        d.fsyncs.push((a[0] - b[0]) / puts as f64);
        d.transactions.push((a[1] - b[1]) / puts as f64);
        d.checkpoints.push(a[2] - b[2]);
    }
    Ok(d)
}

/// `count` puts of `key(i)` with `value` from [`LOADERS`] clients to `node`.
fn load(
    sys: &dyn System,
    node: u64,
    count: u64,
    key: &(dyn Fn(u64) -> String + Sync),
    value: &[u8],
) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..LOADERS {
            s.spawn(|| {
                let mut c = KeepAlive::new(sys.kv_addr(node));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let k = key(i);
                    while sys.put(&mut c, &k, value).is_err() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
    });
}

/// Allocated bytes of every file under `dir`, as `du` counts them.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `disk_keys`: the keys of 100-byte values the disk measure left.
fn data_dirs(sys: &dyn System, disk_keys: u64) -> Result<Dirs, String> {
    let nodes = leader_first(sys)?;
    let value = vec![b'x'; DIR_VALUE_BYTES];
    let key = |i: u64| format!("live/{i:06}");
    let held = |keys: u64| {
        disk_keys * ("disk/000000".len() + DISK_VALUE_BYTES) as u64
            + keys * (key(0).len() + DIR_VALUE_BYTES) as u64
    };
    let sizes = || nodes.iter().map(|&n| du(&sys.data_dir(n))).collect();
    let mut d = Dirs::default();
    load(sys, nodes[0], DIR_SMALL_KEYS, &key, &value);
    sys.settle()?;
    d.small = sizes();
    d.small_live = held(DIR_SMALL_KEYS);
    for _ in 0..2 {
        load(sys, nodes[0], DIR_LARGE_KEYS, &key, &value);
    }
    sys.settle()?;
    d.large = sizes();
    d.large_live = held(DIR_LARGE_KEYS);
    Ok(d)
}

fn run_wrk(
    wrk: &str,
    sys: &dyn System,
    node: u64,
    connections: u64,
    seconds: u64,
    args: &[&str],
) -> Result<WrkRun, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wrk/kv.lua");
    let out = Command::new(wrk)
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{}", sys.kv_addr(node)))
        .arg("--")
        .arg(sys.wrk_name())
        .args(args)
        .output()
        .map_err(|e| format!("{wrk}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrk-result "))
        .ok_or_else(|| {
            format!(
                "wrk printed no result: {} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let field = |name: &str| -> Result<u64, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    let requests = field("requests")?;
    Ok(WrkRun {
        requests,
        per_s: requests as f64 / (field("duration_us")? as f64 / 1e6),
        p50_ms: field("p50_us")? as f64 / 1e3,
        p99_ms: field("p99_us")? as f64 / 1e3,
        errors: field("errors")?,
    })
}

/// `disk_keys`: how many `disk/NNNNNN` keys the disk measure wrote.
fn wrk_runs(
    sys: &dyn System,
    f: &mut Figures,
    wrk: &str,
    seconds: u64,
    disk_keys: u64,
) -> Result<(), String> {
    let leader = sys.leader()?;
    let bytes = WRK_VALUE_BYTES.to_string();
    f.put1 = Some(run_wrk(
        wrk,
        sys,
        leader,
        1,
        seconds,
        &["put", "w1", &bytes],
    )?);
    f.put16 = Some(run_wrk(
        wrk,
        sys,
        leader,
        16,
        seconds,
        &["put", "w16", &bytes],
    )?);
    // The keys of the disk measure, there on every system.
    let keys = disk_keys.to_string();
    f.get1 = Some(run_wrk(
        wrk,
        sys,
        leader,
        1,
        seconds,
        &["get", "disk", &keys],
    )?);
    for (what, r) in [
        ("put, 1 connection", f.put1),
        ("put, 16 connections", f.put16),
        ("get, 1 connection", f.get1),
    ] {
        if let Some(r) = r.filter(|r| r.errors > 0) {
            f.notes.push(format!(
                "wrk {what}: {} of {} requests failed",
                r.errors, r.requests
            ));
        }
    }
    Ok(())
}

fn keep_alive_latency(sys: &dyn System, f: &mut Figures) -> Result<(), String> {
    let leader = sys.leader()?;
    let mut c = KeepAlive::new(sys.kv_addr(leader));
    let value = vec![b'v'; WRK_VALUE_BYTES];
    for i in 0..FALLBACK_OPS {
        let t = Instant::now();
        sys.put(&mut c, &format!("ka/{i}"), &value)?;
        f.put_ka.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..FALLBACK_OPS {
        let t = Instant::now();
        sys.get(&mut c, &format!("ka/{i}"))?;
        f.get_ka.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

/// `kill -9` (or SIGSTOP) of the leader until both survivors report one and
/// the same new leader; then the node is started again (or continued) and
/// the cluster let settle.
fn failover(sys: &mut dyn System, fault: Fault) -> Result<Duration, String> {
    let old = sys.leader()?;
    let old_id = sys.id_of(old)?;
    let survivors: Vec<u64> = sys.nodes().into_iter().filter(|&n| n != old).collect();
    let mut pollers: Vec<KeepAlive> = survivors.iter().map(|&n| sys.poller(n)).collect();
    // Connected before the clock starts.
    for p in &mut pollers {
        sys.leader_seen(p);
    }
    let marks = sys.log_marks();
    let started = Instant::now();
    match fault {
        Fault::Kill => sys.kill9(old),
        Fault::Pause => sys.signal(old, libc::SIGSTOP),
    }
    let took = loop {
        let seen: Vec<Option<String>> = pollers.iter_mut().map(|p| sys.leader_seen(p)).collect();
        let elapsed = started.elapsed();
        if let Some(Some(new)) = seen.first() {
            if *new != old_id && seen.iter().all(|s| s.as_ref() == Some(new)) {
                break elapsed;
            }
        }
        if elapsed > WAIT {
            if let Fault::Pause = fault {
                sys.signal(old, libc::SIGCONT);
            }
            return Err(format!(
                "no new leader within {WAIT:?}: survivors report {seen:?}"
            ));
        }
        std::thread::sleep(FAILOVER_POLL);
    };
    if matches!(fault, Fault::Kill) && took > SLOW_KILL && !marks.is_empty() {
        eprintln!(
            "{}: kill -9 of node {old} took {} ms; what the nodes logged since:\n{}",
            sys.name(),
            took.as_millis(),
            sys.log_since(&marks)
        );
    }
    match fault {
        Fault::Kill => sys.restart(old),
        Fault::Pause => sys.signal(old, libc::SIGCONT),
    }
    sys.leader()?;
    std::thread::sleep(REJOIN_REST);
    Ok(took)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// The percentiles `at` of `samples`, as "a / b / c" in whole units; `None`
/// if there are none.
fn spread(samples: &[f64], at: &[f64]) -> Option<String> {
    (!samples.is_empty()).then(|| {
        let parts: Vec<String> = at
            .iter()
            .map(|&p| format!("{:.0}", percentile(samples, p)))
            .collect();
        parts.join(" / ")
    })
}

/// How a row shows one system's figures (`None`: not measured).
type Cell = Box<dyn Fn(&Figures) -> Option<String>>;

/// A row: its name, a system's cell, the (quorumd, etcd) pair whose ratio
/// is shown, the target, and whether quorumd meets it (`None`: no check
/// possible in this run).
struct Row {
    name: String,
    cell: Cell,
    ratio: Option<(f64, f64)>,
    target: &'static str,
    met: Option<bool>,
}

fn row(
    name: impl Into<String>,
    cell: impl Fn(&Figures) -> Option<String> + 'static,
    ratio: Option<(f64, f64)>,
    target: &'static str,
    met: Option<bool>,
) -> Row {
    Row {
        name: name.into(),
        cell: Box::new(cell),
        ratio,
        target,
        met,
    }
}

fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

fn kib(v: f64) -> String {
    format!("{:.1} KiB", v / 1024.0)
}

/// Per node, leader first: "a / b / c".
fn per_node(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn both<T>(q: Option<T>, e: Option<T>) -> Option<(T, T)> {
    Some((q?, e?))
}

fn report(q: &Figures, e: Option<&Figures>, knobs: &Knobs) {
    let e_ = |pick: &dyn Fn(&Figures) -> Option<f64>| e.and_then(pick);
    let put_med = both(q.put_median(), e_(&|f| f.put_median()));
    let put_p99 = both(q.put_p99(), e_(&|f| f.put_median()));
    let puts16 = both(q.put16.map(|r| r.per_s), e_(&|f| f.put16.map(|r| r.per_s)));
    let get_med = both(q.get_median(), e_(&|f| f.get_median()));
    let cpu = both(
        (!q.idle_cpu_pct.is_empty()).then(|| mean(&q.idle_cpu_pct)),
        e_(&|f| (!f.idle_cpu_pct.is_empty()).then(|| mean(&f.idle_cpu_pct))),
    );
    let wakeups = both(
        (!q.idle_wakeups_per_s.is_empty()).then(|| mean(&q.idle_wakeups_per_s)),
        e_(&|f| (!f.idle_wakeups_per_s.is_empty()).then(|| mean(&f.idle_wakeups_per_s))),
    );
    let rss = both(
        (!q.idle_rss_mib.is_empty()).then(|| max(&q.idle_rss_mib)),
        e_(&|f| (!f.idle_rss_mib.is_empty()).then(|| max(&f.idle_rss_mib))),
    );
    let rest_rss = both(
        (!q.rest_rss_mib.is_empty()).then(|| max(&q.rest_rss_mib)),
        e_(&|f| (!f.rest_rss_mib.is_empty()).then(|| max(&f.rest_rss_mib))),
    );
    let disk = both(q.disk_per_put(), e_(&|f| f.disk_per_put()));
    let failover_median = median_of(&q.failover_ms);
    let pause_median = median_of(&q.pause_ms);
    let binary = q.binary_bytes.map(|b| b as f64 / MIB);
    let dir_ratio = |f: &Figures| {
        let d = f.dirs.as_ref()?;
        Some(max(&d.large.iter().map(|&b| b as f64).collect::<Vec<_>>()) / d.large_live as f64)
    };
    let latency = if q.put1.is_some() {
        "wrk"
    } else {
        "keep-alive client"
    };
    let rows = vec![
        row(
            format!("put, 1 connection, median ({latency})"),
            |f| f.put_median().map(ms),
            put_med,
            "≤ ⅓ of etcd's",
            put_med.map(|(q, e)| q <= e / 3.0),
        ),
        row(
            format!("put, 1 connection, p99 ({latency})"),
            |f| f.put_p99().map(ms),
            put_p99,
            "≤ etcd's median (ratio: p99 / etcd's median)",
            put_p99.map(|(q, e)| q <= e),
        ),
        row(
            "puts/s, 16 connections (wrk)",
            |f| f.put16.map(|r| format!("{:.0}", r.per_s)),
            puts16,
            "≥ 3× etcd's",
            puts16.map(|(q, e)| q >= 3.0 * e),
        ),
        row(
            "put, 16 connections, median / p99 (wrk)",
            |f| {
                f.put16
                    .map(|r| format!("{} / {}", ms(r.p50_ms), ms(r.p99_ms)))
            },
            None,
            "",
            None,
        ),
        row(
            format!("linearizable get, 1 connection, median ({latency})"),
            |f| f.get_median().map(ms),
            get_med,
            "≤ ⅓ of etcd's",
            get_med.map(|(q, e)| q <= e / 3.0),
        ),
        row(
            "kill -9 of the leader until the survivors agree: min / median / p90 / max",
            |f| {
                spread(&f.failover_ms, &[0.0, 0.5, 0.9, 1.0])
                    .map(|s| format!("{s} ms ({} kills)", f.failover_ms.len()))
            },
            both(failover_median, e_(&|f| median_of(&f.failover_ms))),
            "median ≤ 50 ms",
            failover_median.map(|m| m <= 50.0),
        ),
        row(
            "SIGSTOP of the leader until the survivors agree: min / median / max",
            |f| {
                spread(&f.pause_ms, &[0.0, 0.5, 1.0]).map(|s| {
                    format!(
                        "{s} ms ({} pauses; median {:.1}× its {:.0} ms election timeout)",
                        f.pause_ms.len(),
                        percentile(&f.pause_ms, 0.5) / f.election_timeout_ms,
                        f.election_timeout_ms
                    )
                })
            },
            both(pause_median, e_(&|f| median_of(&f.pause_ms))),
            "median ≤ 2 election timeouts",
            pause_median.map(|m| m <= 2.0 * q.election_timeout_ms),
        ),
        row(
            format!(
                "idle CPU per node, mean of 3, % of one core ({} s)",
                knobs.idle_seconds
            ),
            |f| (!f.idle_cpu_pct.is_empty()).then(|| format!("{:.2} %", mean(&f.idle_cpu_pct))),
            cpu,
            "≤ ¼ of etcd's",
            cpu.map(|(q, e)| q <= e / 4.0),
        ),
        row(
            "… idle wakeups per node, mean of 3, per second (times a thread was put on a CPU)",
            |f| {
                (!f.idle_wakeups_per_s.is_empty())
                    .then(|| format!("{:.0}", mean(&f.idle_wakeups_per_s)))
            },
            wakeups,
            "",
            None,
        ),
        row(
            "idle RSS per node, max of 3",
            |f| (!f.idle_rss_mib.is_empty()).then(|| format!("{:.1} MiB", max(&f.idle_rss_mib))),
            rss,
            "no higher than before",
            None,
        ),
        row(
            format!(
                "… RSS per node after the latency runs and {} s at rest, max of 3",
                WORK_REST.as_secs()
            ),
            |f| (!f.rest_rss_mib.is_empty()).then(|| format!("{:.1} MiB", max(&f.rest_rss_mib))),
            rest_rss,
            "",
            None,
        ),
        row(
            "binary",
            |f| f.binary_bytes.map(|b| format!("{:.2} MiB", b as f64 / MIB)),
            both(binary, e_(&|f| f.binary_bytes.map(|b| b as f64 / MIB))),
            "≤ 5.5 MiB",
            binary.map(|b| b <= 5.5),
        ),
        row(
            format!(
                "disk bytes written per {DISK_VALUE_BYTES}-byte put, whole cluster ({} sequential)",
                knobs.disk_puts
            ),
            |f| f.disk_per_put().map(kib),
            disk,
            "≤ etcd's",
            disk.map(|(q, e)| q <= e),
        ),
        row(
            "… per node, leader first",
            |f| {
                let d = f.disk.as_ref()?;
                Some(
                    d.bytes
                        .iter()
                        .map(|&b| kib(b as f64 / d.puts as f64))
                        .collect::<Vec<_>>()
                        .join(" / "),
                )
            },
            None,
            "",
            None,
        ),
        row(
            "WAL fsyncs per put, per node, leader first (counted)",
            |f| f.disk.as_ref().map(|d| per_node(&d.fsyncs, 3)),
            None,
            "",
            None,
        ),
        row(
            "state machine write transactions per put, per node (counted; etcd: bbolt commits)",
            |f| f.disk.as_ref().map(|d| per_node(&d.transactions, 3)),
            None,
            "",
            None,
        ),
        row(
            "checkpoints in that window, per node (etcd: snapshots)",
            |f| f.disk.as_ref().map(|d| per_node(&d.checkpoints, 0)),
            None,
            "",
            None,
        ),
        row(
            format!(
                "data dir per node after {DIR_SMALL_KEYS} × 1 KiB, leader first (× bytes held)"
            ),
            |f| {
                let d = f.dirs.as_ref()?;
                Some(dir_cell(&d.small, d.small_live))
            },
            None,
            "",
            None,
        ),
        row(
            format!(
                "data dir per node after {DIR_LARGE_KEYS} × 1 KiB written twice (× bytes held)"
            ),
            |f| {
                let d = f.dirs.as_ref()?;
                Some(dir_cell(&d.large, d.large_live))
            },
            both(dir_ratio(q), e.and_then(dir_ratio)),
            "≤ 2.5× the bytes held",
            dir_ratio(q).map(|r| r <= 2.5),
        ),
    ];
    println!("| measure | quorumd | etcd 3.4 | quorumd / etcd | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let cell = |f: Option<&Figures>| {
            f.and_then(|f| (r.cell)(f))
                .unwrap_or_else(|| "—".to_string())
        };
        let ratio = r
            .ratio
            .map(|(a, b)| format!("{:.2}", a / b))
            .unwrap_or_default();
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "| {} | {} | {} | {ratio} | {} | {met} |",
            r.name,
            cell(Some(q)),
            cell(e),
            r.target
        );
    }
    if let Some(d) = &q.dirs {
        println!(
            "\nbytes held (keys + values): {:.2} MiB, then {:.2} MiB",
            d.small_live as f64 / MIB,
            d.large_live as f64 / MIB
        );
    }
    let w = q.put1.map_or(0, |_| knobs.wrk_seconds);
    if w > 0 {
        println!("wrk: one thread, {w} s a run, {WRK_VALUE_BYTES}-byte values, a new key per put");
    }
    for (who, f) in [("quorumd", Some(q)), ("etcd", e)] {
        for n in f.map(|f| f.notes.as_slice()).unwrap_or_default() {
            println!("{who}: {n}");
        }
    }
}

/// "a / b / c MiB (r×)", the ratio of the largest to `held`.
fn dir_cell(sizes: &[u64], held: u64) -> String {
    let mib: Vec<f64> = sizes.iter().map(|&b| b as f64 / MIB).collect();
    format!(
        "{} MiB ({:.1}×)",
        per_node(&mib, 1),
        max(&mib) * MIB / held as f64
    )
}
