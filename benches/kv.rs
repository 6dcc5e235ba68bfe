//! Store benchmarks: `cargo bench --bench kv`, run by `make bench`.
//!
//! One load generator measures quorumd and, when `etcd` is on `PATH`
//! (Debian's `etcd-server`), etcd in the same run: 3-node clusters on
//! loopback, 64-byte values, keep-alive HTTP/1.1 clients (one TCP connection
//! per client, `KeepAlive` of `tests/common`) talking to the leader. quorumd speaks Consul's KV API, etcd its
//! v3 JSON gateway (`POST /v3/kv/put`, `POST /v3/kv/range`).
//!
//! 1. put latency, one sequential client: median and p99;
//! 2. get latency, linearizable and stale (`?stale`; etcd: serializable);
//! 3. throughput of puts, then of linearizable gets, with 16 concurrent
//!    clients for `QUORUMD_BENCH_SECONDS` (default 5);
//! 4. RSS (VmRSS) of each running node after loading 100,000 keys of 100
//!    bytes (16 clients) while one follower is stopped;
//! 5. the time for that follower, started again, to apply everything the
//!    leader had committed (it is behind the compacted log, so quorumd sends a
//!    snapshot; etcd catches up from its log or its own snapshot).
//!
//! With `QUORUMD_BENCH_TLS=1` quorumd is measured a second time in the same
//! run, on a cluster with `[tls]` (`Spec::with_tls`): peers over mutual TLS,
//! and the clients speaking HTTPS to the admin API with the client
//! certificate (`KeepAlive` over rustls, one TLS session per client, kept
//! alive like the plaintext ones). Its figures get a column of their own.
//!
//! `QUORUMD_BENCH_KEYS` changes the 100,000. Absolute times vary between
//! machines; the targets are ratios against etcd in the same run. The nodes
//! are the binary cargo built for the bench (the release profile); etcd is
//! started with its defaults and a data dir in a temp dir. Every process is
//! killed by its handle when the run ends.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{KeepAlive, Spec, TestCluster};
use serde_json::{json, Value};
use shared::etcd::{b64, Etcd};
use shared::{env_num, percentile, proc_rss_mib, which};

const VALUE_BYTES: usize = 64;
const LOAD_VALUE_BYTES: usize = 100;
const CLIENTS: usize = 16;
const LATENCY_OPS: usize = 2000;
const WARMUP_OPS: usize = 200;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches`
    }
    let keys = env_num("QUORUMD_BENCH_KEYS", 100_000);
    let seconds = env_num("QUORUMD_BENCH_SECONDS", 5);
    println!("## Store benchmark: 3 nodes on loopback, {VALUE_BYTES}-byte values, keep-alive HTTP/1.1 clients\n");
    let tls = std::env::var("QUORUMD_BENCH_TLS").is_ok_and(|v| v.trim() == "1");
    let q = run(&mut Quorumd::start(false), keys, seconds);
    let qt = tls.then(|| run(&mut Quorumd::start(true), keys, seconds));
    let e = match which("etcd") {
        Some(etcd) => Some(run(&mut Etcd::start(&etcd), keys, seconds)),
        None => {
            println!("etcd is not on PATH (apt-get install etcd-server): quorumd alone.\n");
            None
        }
    };
    report(&q, qt.as_ref(), e.as_ref(), keys, seconds);
}

/// What one system measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    put: Vec<f64>,
    get: Vec<f64>,
    stale: Vec<f64>,
    puts_per_s: f64,
    gets_per_s: f64,
    rss_mib: Vec<f64>,
    catch_up: Option<Duration>,
    grow: Option<Duration>,
    replace: Option<Duration>,
    note: String,
}

/// The system under test, as the load generator sees it.
trait Kv: Sync {
    fn name(&self) -> &'static str;
    /// The client addresses of every node, leader first.
    fn leader_and_followers(&mut self) -> (u64, Vec<u64>);
    /// A keep-alive client of a node.
    fn client(&self, node: u64) -> KeepAlive;
    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String>;
    fn get(&self, c: &mut KeepAlive, key: &str, stale: bool) -> Result<(), String>;
    fn pid(&self, node: u64) -> u32;
    fn stop(&mut self, node: u64);
    fn start_again(&mut self, node: u64);
    /// (applied, commit) of a node.
    fn progress(&self, node: u64) -> Option<(u64, u64)>;
    /// Adds a new member as a learner, starts it, and returns the time from
    /// the add until it votes.
    fn grow(&mut self) -> Result<Duration, String>;
    /// Kills member `old` and replaces it by a new one: the time from the
    /// first command until the new member votes and `old` is gone.
    fn replace(&mut self, old: u64) -> Result<Duration, String>;
}

fn run(kv: &mut dyn Kv, keys: u64, seconds: u64) -> Figures {
    let mut f = Figures::default();
    let (leader, followers) = kv.leader_and_followers();
    let value = vec![b'v'; VALUE_BYTES];
    let mut c = kv.client(leader);
    eprintln!("{}: latency, one client on node {leader}", kv.name());
    for i in 0..WARMUP_OPS {
        kv.put(&mut c, &format!("lat/{i}"), &value)
            .expect("warm-up put");
    }
    let timed = |c: &mut KeepAlive,
                 op: &mut dyn FnMut(&mut KeepAlive, usize) -> Result<(), String>| {
        (0..LATENCY_OPS)
            .map(|i| {
                let t = Instant::now();
                op(c, i).expect("op");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<_>>()
    };
    f.put = timed(&mut c, &mut |c, i| {
        kv.put(c, &format!("lat/{}", i % 1000), &value)
    });
    f.get = timed(&mut c, &mut |c, i| {
        kv.get(c, &format!("lat/{}", i % 1000), false)
    });
    f.stale = timed(&mut c, &mut |c, i| {
        kv.get(c, &format!("lat/{}", i % 1000), true)
    });

    eprintln!(
        "{}: throughput, {CLIENTS} clients, {seconds}s each",
        kv.name()
    );
    let window = Duration::from_secs(seconds);
    let kv_ref: &dyn Kv = kv;
    f.puts_per_s = throughput(kv_ref, leader, window, |kv, c, n| {
        kv.put(c, &format!("tp/{}", n % 10_000), &value)
    });
    f.gets_per_s = throughput(kv_ref, leader, window, |kv, c, n| {
        kv.get(c, &format!("tp/{}", n % 10_000), false)
    });

    eprintln!(
        "{}: loading {keys} keys of {LOAD_VALUE_BYTES} bytes with node {} stopped",
        kv.name(),
        followers[0]
    );
    let lagging = followers[0];
    kv.stop(lagging);
    let kv_ref: &dyn Kv = kv;
    let load_value = vec![b'l'; LOAD_VALUE_BYTES];
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let mut c = kv_ref.client(leader);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= keys {
                        break;
                    }
                    let key = format!("load/{n:08}");
                    while kv_ref.put(&mut c, &key, &load_value).is_err() {
                        std::thread::sleep(Duration::from_millis(10));
                        c = kv_ref.client(leader);
                    }
                }
            });
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    for node in std::iter::once(leader).chain(followers[1..].iter().copied()) {
        match proc_rss_mib(kv.pid(node)) {
            Some(mib) => f.rss_mib.push(mib),
            None => f.note.push_str(&format!("no RSS for node {node}; ")),
        }
    }

    eprintln!("{}: catch-up of node {lagging}", kv.name());
    let target = kv.progress(leader).map(|(_, commit)| commit).unwrap_or(0);
    let started = Instant::now();
    kv.start_again(lagging);
    let deadline = started + Duration::from_secs(300);
    while Instant::now() < deadline {
        if kv
            .progress(lagging)
            .is_some_and(|(applied, _)| applied >= target)
        {
            f.catch_up = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    eprintln!(
        "{}: adding a learner to the loaded cluster until it votes",
        kv.name()
    );
    match kv.grow() {
        Ok(d) => f.grow = Some(d),
        Err(e) => f.note.push_str(&format!("grow failed: {e}; ")),
    }
    let old = followers[1];
    eprintln!("{}: replacing node {old} (killed) by a new one", kv.name());
    match kv.replace(old) {
        Ok(d) => f.replace = Some(d),
        Err(e) => f.note.push_str(&format!("replace failed: {e}; ")),
    }
    f
}

fn throughput(
    kv: &dyn Kv,
    node: u64,
    window: Duration,
    op: impl Fn(&dyn Kv, &mut KeepAlive, u64) -> Result<(), String> + Sync,
) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..CLIENTS as u64 {
            let (done, stop, op) = (&done, &stop, &op);
            s.spawn(move || {
                let mut c = kv.client(node);
                let mut n = t * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    if op(kv, &mut c, n).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c = kv.client(node);
                    }
                    n += 1;
                }
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// quorumd
// ---------------------------------------------------------------------------

struct Quorumd {
    c: TestCluster,
}

impl Quorumd {
    /// With `tls`, the cluster file has `[tls]` and the clients speak HTTPS.
    fn start(tls: bool) -> Quorumd {
        // The shipped timing, and the health settings of clusters/. Nodes 4
        // and 5 are the boxes that join later, each with its own entry in
        // its file.
        let spec = Spec::shipped("bench-kv", 5);
        let mut c = TestCluster::new(if tls { spec.with_tls() } else { spec });
        c.use_file(&[1, 2, 3], &[1, 2, 3]);
        c.start(&[1, 2, 3]);
        c.wait_agreed_leader(&[1, 2, 3]);
        Quorumd { c }
    }

    /// True once node `id` is a voter, as node 1 or 2 reports it.
    fn votes(&self, id: u64) -> bool {
        [1, 2].into_iter().any(|via| {
            // Over HTTPS with the client certificate on a TLS cluster.
            let Ok(r) = self.c.get(via, "/admin/cluster/members") else {
                return false;
            };
            let v: Value = r.json().unwrap_or_default();
            v.as_array()
                .into_iter()
                .flatten()
                .any(|m| m["id"] == id && m["role"] == "voter")
        })
    }

    fn wait_votes(&self, id: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.votes(id) {
            if Instant::now() > deadline {
                return Err(format!("node {id} did not vote within 300 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Kv for Quorumd {
    fn name(&self) -> &'static str {
        if self.c.spec.tls {
            "quorumd TLS"
        } else {
            "quorumd"
        }
    }

    fn leader_and_followers(&mut self) -> (u64, Vec<u64>) {
        let (leader, _) = self.c.wait_agreed_leader(&[1, 2, 3]);
        (
            leader,
            [1, 2, 3].into_iter().filter(|&i| i != leader).collect(),
        )
    }

    fn client(&self, node: u64) -> KeepAlive {
        self.c.keep_alive(node)
    }

    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String> {
        let (status, body) = c.call("PUT", &format!("/v1/kv/{key}"), value)?;
        (status == 200 && body == b"true")
            .then_some(())
            .ok_or_else(|| format!("put answered {status}"))
    }

    fn get(&self, c: &mut KeepAlive, key: &str, stale: bool) -> Result<(), String> {
        let q = if stale { "?stale" } else { "" };
        let (status, _) = c.call("GET", &format!("/v1/kv/{key}{q}"), b"")?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("get answered {status}"))
    }

    fn pid(&self, node: u64) -> u32 {
        self.c.pid(node).expect("running")
    }

    fn stop(&mut self, node: u64) {
        self.c.signal(node, libc::SIGTERM);
        self.c.wait_exit(node, Duration::from_secs(20));
    }

    fn start_again(&mut self, node: u64) {
        self.c.start_node(node);
    }

    fn progress(&self, node: u64) -> Option<(u64, u64)> {
        let s = self.c.try_status(node)?;
        Some((s["applied_index"].as_u64()?, s["commit_index"].as_u64()?))
    }

    fn grow(&mut self) -> Result<Duration, String> {
        let body = format!(
            r#"{{"id": 4, "addr": "{}", "admin": "{}"}}"#,
            self.c.addr(4),
            self.c.admin(4)
        );
        let started = Instant::now();
        // Over HTTPS with the client certificate on a TLS cluster.
        let r = self
            .c
            .request(
                1,
                "POST",
                "/admin/cluster/members",
                body.as_bytes(),
                Duration::from_secs(30),
            )
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("add answered {}: {}", r.status, r.body));
        }
        self.c.use_file(&[4], &[1, 2, 3, 4]);
        self.c.start_node(4);
        self.wait_votes(4)?;
        Ok(started.elapsed())
    }

    fn replace(&mut self, old: u64) -> Result<Duration, String> {
        self.c.signal(old, libc::SIGKILL);
        self.c.wait_exit(old, Duration::from_secs(20));
        self.c.use_file(&[5], &[1, 2, 3, 4, 5]);
        let started = Instant::now();
        self.c.start_node(5);
        let config = self.c.config_of(1).to_path_buf();
        let out = Command::new(self.c.bin())
            .args(["member", "replace", "--cluster"])
            .arg(&config)
            .args([
                old.to_string(),
                "--id".into(),
                "5".into(),
                "--addr".into(),
                self.c.addr(5).to_string(),
                "--admin".into(),
                self.c.admin(5).to_string(),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------
// etcd (shared/etcd.rs)
// ---------------------------------------------------------------------------

impl Kv for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn leader_and_followers(&mut self) -> (u64, Vec<u64>) {
        let leader = self.leader().expect("an etcd leader") as u64;
        (leader, (0..3).filter(|&i| i != leader).collect())
    }

    fn client(&self, node: u64) -> KeepAlive {
        KeepAlive::new(self.client[node as usize])
    }

    fn put(&self, c: &mut KeepAlive, key: &str, value: &[u8]) -> Result<(), String> {
        let body = json!({"key": b64(key.as_bytes()), "value": b64(value)}).to_string();
        let (status, _) = c.call("POST", "/v3/kv/put", body.as_bytes())?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("put answered {status}"))
    }

    fn get(&self, c: &mut KeepAlive, key: &str, stale: bool) -> Result<(), String> {
        let body = json!({"key": b64(key.as_bytes()), "serializable": stale}).to_string();
        let (status, _) = c.call("POST", "/v3/kv/range", body.as_bytes())?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("range answered {status}"))
    }

    fn pid(&self, node: u64) -> u32 {
        self.children[node as usize].as_ref().expect("running").id()
    }

    fn stop(&mut self, node: u64) {
        if let Some(mut child) = self.children[node as usize].take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn start_again(&mut self, node: u64) {
        self.spawn(node as usize, "existing");
    }

    fn progress(&self, node: u64) -> Option<(u64, u64)> {
        let s = self.status(node as usize)?;
        let num = |k: &str| s[k].as_str().and_then(|v| v.parse::<u64>().ok());
        Some((num("raftAppliedIndex")?, num("raftIndex")?))
    }

    fn grow(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        self.add_and_promote(3)?;
        Ok(started.elapsed())
    }

    fn replace(&mut self, old: u64) -> Result<Duration, String> {
        let old = old as usize;
        let old_id = self.member_id(old)?;
        if let Some(mut child) = self.children[old].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // etcd's documented way to replace a failed member: remove it
        // first (it refuses to add one while a member is down), then add
        // the new one.
        let started = Instant::now();
        self.ctl(&["member", "remove", &old_id])?;
        self.add_and_promote(4)?;
        Ok(started.elapsed())
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// One row of the table: its name, how a system's figure is shown, the
/// (quorumd, etcd) values whose ratio is printed, and the target.
type ReportRow = (
    String,
    Box<dyn Fn(&Figures) -> String>,
    Option<(f64, f64)>,
    &'static str,
);

fn report(q: &Figures, qt: Option<&Figures>, e: Option<&Figures>, keys: u64, seconds: u64) {
    let cell = |f: Option<&Figures>, pick: &dyn Fn(&Figures) -> String| {
        f.map(pick).unwrap_or_else(|| "—".to_string())
    };
    let ms = |v: f64| format!("{v:.3} ms");
    let rows: Vec<ReportRow> = vec![
        (
            "put latency, 1 client, median".into(),
            Box::new(move |f: &Figures| ms(percentile(&f.put, 0.5))),
            e.map(|e| (percentile(&q.put, 0.5), percentile(&e.put, 0.5))),
            "≤ 1/3 of etcd",
        ),
        (
            "put latency, 1 client, p99".into(),
            Box::new(move |f: &Figures| ms(percentile(&f.put, 0.99))),
            None,
            "",
        ),
        (
            "linearizable get, 1 client, median".into(),
            Box::new(move |f: &Figures| ms(percentile(&f.get, 0.5))),
            e.map(|e| (percentile(&q.get, 0.5), percentile(&e.get, 0.5))),
            "≤ 1/2 of etcd",
        ),
        (
            "linearizable get, 1 client, p99".into(),
            Box::new(move |f: &Figures| ms(percentile(&f.get, 0.99))),
            None,
            "",
        ),
        (
            "stale get, 1 client, median".into(),
            Box::new(move |f: &Figures| ms(percentile(&f.stale, 0.5))),
            None,
            "",
        ),
        (
            format!("puts/s, {CLIENTS} clients"),
            Box::new(|f: &Figures| format!("{:.0}", f.puts_per_s)),
            e.map(|e| (q.puts_per_s, e.puts_per_s)),
            "≥ 2× etcd",
        ),
        (
            format!("linearizable gets/s, {CLIENTS} clients"),
            Box::new(|f: &Figures| format!("{:.0}", f.gets_per_s)),
            e.map(|e| (q.gets_per_s, e.gets_per_s)),
            "",
        ),
        (
            format!("RSS per node with {keys} keys (max of running nodes)"),
            Box::new(|f: &Figures| {
                format!("{:.1} MiB", f.rss_mib.iter().copied().fold(0.0, f64::max))
            }),
            e.map(|e| {
                let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
                (max(&q.rss_mib), max(&e.rss_mib))
            }),
            "≤ 1/4 of etcd",
        ),
        (
            format!("follower catch-up of {keys} keys"),
            Box::new(|f: &Figures| match f.catch_up {
                Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
                None => "did not catch up in 300 s".to_string(),
            }),
            None,
            "",
        ),
        (
            format!("add a learner to {keys} keys until it votes"),
            Box::new(|f: &Figures| match f.grow {
                Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
                None => "failed".to_string(),
            }),
            e.and_then(|e| Some((q.grow?.as_secs_f64(), e.grow?.as_secs_f64()))),
            "",
        ),
        (
            "replace a dead member until the new one votes".to_string(),
            Box::new(|f: &Figures| match f.replace {
                Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
                None => "failed".to_string(),
            }),
            e.and_then(|e| Some((q.replace?.as_secs_f64(), e.replace?.as_secs_f64()))),
            "",
        ),
    ];
    // The TLS column only when it was measured.
    let (tls_head, tls_rule) = match qt {
        Some(_) => (" quorumd TLS |", "---|"),
        None => ("", ""),
    };
    println!("| measure | quorumd |{tls_head} etcd 3.4 | quorumd / etcd | target |");
    println!("|---|---|{tls_rule}---|---|---|");
    for (name, show, ratio, target) in &rows {
        let r = ratio
            .map(|(a, b)| format!("{:.2}", a / b))
            .unwrap_or_else(|| "".to_string());
        let tls = match qt {
            Some(t) => format!(" {} |", show(t)),
            None => String::new(),
        };
        println!(
            "| {name} | {} |{tls} {} | {r} | {target} |",
            show(q),
            cell(e, show.as_ref())
        );
    }
    println!("\nthroughput windows: {seconds} s each; latency: {LATENCY_OPS} ops after {WARMUP_OPS} warm-up puts");
    if let Some(e) = e {
        let verdicts = [
            (
                "put median ≤ 1/3",
                percentile(&q.put, 0.5) <= percentile(&e.put, 0.5) / 3.0,
            ),
            (
                "get median ≤ 1/2",
                percentile(&q.get, 0.5) <= percentile(&e.get, 0.5) / 2.0,
            ),
            ("puts/s ≥ 2×", q.puts_per_s >= 2.0 * e.puts_per_s),
            (
                "RSS ≤ 1/4",
                q.rss_mib.iter().copied().fold(0.0, f64::max)
                    <= e.rss_mib.iter().copied().fold(0.0, f64::max) / 4.0,
            ),
        ];
        for (what, met) in verdicts {
            println!("target {what}: {}", if met { "met" } else { "MISSED" });
        }
    }
    for (who, f) in [("quorumd", Some(q)), ("quorumd TLS", qt), ("etcd", e)] {
        if let Some(f) = f.filter(|f| !f.note.is_empty()) {
            println!("{who}: {}", f.note);
        }
    }
}
