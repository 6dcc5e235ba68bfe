//! The cost of ACLs: `cargo bench --bench acl`.
//!
//! Two 3-node clusters on loopback in the same run, one without `[acl]`
//! and one with `[acl] enabled` and `default_policy = "deny"`, whose client
//! presents a token (not a management one: its policy's rules are
//! evaluated on each request) with `?token=`. For each, talking to the
//! leader over keep-alive HTTP/1.1 with 64-byte values:
//!
//! 1. the median and p99 of a linearizable get, one sequential client;
//! 2. the throughput of puts with 16 concurrent clients for
//!    `QUORUMD_BENCH_SECONDS` (default 5).
//!
//! The two clusters are measured in turns, `QUORUMD_BENCH_ROUNDS` times
//! (default 3), and each figure is the median over the rounds, so that a
//! busy machine weighs on both alike.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{KeepAlive, Spec, TestCluster};
use serde_json::{json, Value};
use shared::{env_num, percentile};

const VALUE: &[u8] = &[b'v'; 64];
const CLIENTS: u64 = 16;
const GETS: usize = 1000;

struct Side {
    name: &'static str,
    c: TestCluster,
    leader: u64,
    /// `?token=...` or empty.
    token: String,
}

impl Side {
    fn start(name: &'static str, acl: bool) -> Side {
        let mut c = TestCluster::new(Spec::shipped(name, 3));
        if acl {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&c.config)
                .expect("open the cluster file");
            writeln!(f, "\n[acl]\nenabled = true\ndefault_policy = \"deny\"").unwrap();
        }
        c.start_all();
        let mut side = Side {
            name,
            c,
            leader: 0,
            token: String::new(),
        };
        side.c.wait_for("a leader every node knows", || {
            let leaders: Vec<Option<u64>> = [1, 2, 3]
                .iter()
                .map(|&id| {
                    side.c
                        .get(id, "/ready")
                        .ok()
                        .filter(|r| r.status == 200)
                        .and_then(|r| r.json().ok())
                        .and_then(|v: Value| v["leader_id"].as_u64())
                })
                .collect();
            leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
        });
        side.leader = side.c.get(1, "/ready").unwrap().json().unwrap()["leader_id"]
            .as_u64()
            .unwrap();
        if acl {
            let l = side.leader;
            let root = side
                .c
                .call(l, "PUT", "/v1/acl/bootstrap", b"")
                .json()
                .unwrap()["SecretID"]
                .as_str()
                .unwrap()
                .to_string();
            let rules = json!({"key_prefix": {"bench/": {"policy": "write"},
                                              "config/": {"policy": "read"}}});
            let body = json!({"Name": "bench", "Rules": rules.to_string()}).to_string();
            let r = side.c.call(
                l,
                "PUT",
                &format!("/v1/acl/policy?token={root}"),
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let body = json!({"Policies": [{"Name": "bench"}]}).to_string();
            let r = side.c.call(
                l,
                "PUT",
                &format!("/v1/acl/token?token={root}"),
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let secret = r.json().unwrap()["SecretID"].as_str().unwrap().to_string();
            side.token = format!("?token={secret}");
        }
        let mut k = side.client();
        side.put(&mut k, "bench/get").expect("the first put");
        side
    }

    fn client(&self) -> KeepAlive {
        self.c.keep_alive(self.leader)
    }

    fn put(&self, k: &mut KeepAlive, key: &str) -> Result<(), String> {
        let (status, body) = k.call("PUT", &format!("/v1/kv/{key}{}", self.token), VALUE)?;
        (status == 200 && body == b"true")
            .then_some(())
            .ok_or_else(|| format!("put answered {status}"))
    }

    fn get(&self, k: &mut KeepAlive) -> Result<(), String> {
        let (status, _) = k.call("GET", &format!("/v1/kv/bench/get{}", self.token), b"")?;
        (status == 200)
            .then_some(())
            .ok_or_else(|| format!("get answered {status}"))
    }

    /// Median and p99 of a linearizable get, in microseconds.
    fn get_latency(&self) -> (f64, f64) {
        let mut k = self.client();
        for _ in 0..100 {
            self.get(&mut k).expect("warm-up get");
        }
        let mut us: Vec<f64> = (0..GETS)
            .map(|_| {
                let t = Instant::now();
                self.get(&mut k).expect("get");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(|a, b| a.total_cmp(b));
        (percentile(&us, 0.50), percentile(&us, 0.99))
    }

    /// Puts per second, 16 clients.
    fn put_throughput(&self, window: Duration) -> f64 {
        let done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..CLIENTS {
                let (done, stop) = (&done, &stop);
                s.spawn(move || {
                    let mut k = self.client();
                    let mut n = t * 1_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        if self.put(&mut k, &format!("bench/{n}")).is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            k = self.client();
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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches`
    }
    let seconds = env_num("QUORUMD_BENCH_SECONDS", 5);
    let rounds = env_num("QUORUMD_BENCH_ROUNDS", 3) as usize;
    let sides = [
        Side::start("bench-acl-off", false),
        Side::start("bench-acl-on", true),
    ];
    let mut figures: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); 2];
    for round in 0..rounds {
        // Alternate which side goes first.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (p50, p99) = sides[i].get_latency();
            let puts = sides[i].put_throughput(Duration::from_secs(seconds));
            eprintln!(
                "round {round}: {}: get p50 {p50:.0} us, p99 {p99:.0} us; puts {puts:.0}/s",
                sides[i].name
            );
            figures[i].0.push(p50);
            figures[i].1.push(p99);
            figures[i].2.push(puts);
        }
    }
    println!("## ACL cost: 3 nodes on loopback, 64-byte values, to the leader, {rounds} rounds\n");
    println!("| | ACLs off | ACLs on (token with rules) | on / off |");
    println!("|---|---|---|---|");
    let row = |what: &str, off: f64, on: f64, unit: &str| {
        println!(
            "| {what} | {off:.0} {unit} | {on:.0} {unit} | {:+.1} % |",
            (on / off - 1.0) * 100.0
        );
    };
    let [off, on] = [&figures[0], &figures[1]];
    row(
        "linearizable get, median",
        median(off.0.clone()),
        median(on.0.clone()),
        "us",
    );
    row(
        "linearizable get, p99",
        median(off.1.clone()),
        median(on.1.clone()),
        "us",
    );
    row(
        &format!("puts/s, {CLIENTS} connections"),
        median(off.2.clone()),
        median(on.2.clone()),
        "/s",
    );
}
