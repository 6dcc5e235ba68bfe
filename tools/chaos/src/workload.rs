//! The workload: concurrent clients doing puts, linearizable gets and CAS
//! writes through Consul's KV API, every operation recorded.
//!
//! Client `c` talks to node `c mod N + 1`, so every node serves clients. The
//! clients share a small set of key slots so that operations contend; each
//! slot moves on to a fresh key after `ops_per_key` operations, which keeps
//! every key's history short enough for the checker (Jepsen's "independent"
//! keys), while the number of keys in play at once stays small.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::history::{Func, Record, Status, GARBAGE};
use crate::http::{self, Failure};
use crate::netns;

/// The workload's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Concurrent clients.
    pub clients: u32,
    /// Keys in play at once.
    pub keys: u32,
    /// Operations on one key before its slot moves to a fresh key.
    pub ops_per_key: u32,
    /// Client-side timeout of one operation.
    pub timeout: Duration,
    /// Longest pause between two operations of one client (uniform from 0).
    pub think: Duration,
    /// Gets ask `?stale` (the negative control's unsafe read path).
    pub stale_reads: bool,
    /// The seed of the clients' choices.
    pub seed: u64,
}

/// The key slots and every key ever used.
pub struct Keys {
    slots: Mutex<Vec<(String, u32)>>,
    generation: AtomicU64,
    used: Mutex<Vec<String>>,
    ops_per_key: u32,
}

impl Keys {
    /// `n` slots, each on its first key.
    pub fn new(n: u32, ops_per_key: u32) -> Self {
        let k = Keys {
            slots: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            used: Mutex::new(Vec::new()),
            ops_per_key: ops_per_key.max(1),
        };
        let fresh: Vec<(String, u32)> = (0..n.max(1)).map(|_| (k.fresh(), 0)).collect();
        *k.slots.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        k
    }

    fn fresh(&self) -> String {
        let g = self.generation.fetch_add(1, Ordering::Relaxed);
        let key = format!("chaos/k{g}");
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.clone());
        key
    }

    /// The key of slot `i` for one more operation.
    pub fn take(&self, i: usize) -> String {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = i % slots.len();
        if slots[i].1 >= self.ops_per_key {
            slots[i] = (self.fresh(), 0);
        }
        slots[i].1 += 1;
        slots[i].0.clone()
    }

    /// Slots in play.
    pub fn slots(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Every key used so far.
    pub fn used(&self) -> Vec<String> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Shared by every client: ids, values, the clock and the recorder.
#[derive(Clone)]
pub struct Shared {
    /// The run's clock.
    pub start: Instant,
    /// The next operation id.
    pub ids: Arc<AtomicU64>,
    /// The next value to write (every write's value is unique).
    pub values: Arc<AtomicU64>,
    /// Where finished records go.
    pub record: Sender<Record>,
}

impl Shared {
    /// A fresh recorder state with the given sink.
    pub fn new(start: Instant, record: Sender<Record>) -> Self {
        Shared {
            start,
            ids: Arc::new(AtomicU64::new(1)),
            values: Arc::new(AtomicU64::new(1)),
            record,
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// The path of a key's KV route.
fn kv_path(key: &str) -> String {
    format!("/v1/kv/{key}")
}

/// What a get returned: the value (`None`: absent) and its `ModifyIndex`.
pub fn parse_get(body: &[u8]) -> Result<(Option<u64>, Option<u64>), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("200 with a body that is not JSON: {e}"))?;
    let obj = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or("200 with a body that is not a non-empty JSON array")?;
    let index = obj.get("ModifyIndex").and_then(|i| i.as_u64());
    let value = match obj.get("Value") {
        None | Some(serde_json::Value::Null) => return Ok((Some(GARBAGE), index)),
        Some(serde_json::Value::String(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("Value is not base64: {e}"))?;
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(GARBAGE)
        }
        Some(_) => return Err("Value is neither a string nor null".into()),
    };
    Ok((Some(value), index))
}

/// One operation against `addr`, recorded. `seen` is this client's last read
/// of each key (value, index), which a CAS uses as its expectation.
#[allow(clippy::too_many_arguments)]
pub fn run_op(
    sh: &Shared,
    client: u32,
    node: u32,
    addr: SocketAddr,
    key: &str,
    f: Func,
    settings: &Settings,
    seen: &mut HashMap<String, (Option<u64>, u64)>,
    fin: bool,
) -> Record {
    let id = sh.ids.fetch_add(1, Ordering::Relaxed);
    let mut r = Record {
        id,
        client,
        node,
        key: key.to_string(),
        f,
        stale: false,
        fin,
        value: None,
        expect: None,
        expect_index: None,
        index: None,
        result: None,
        call_us: 0,
        ret_us: 0,
        status: Status::Unknown,
        error: None,
    };
    let (method, path, body) = match f {
        Func::Get => {
            r.stale = settings.stale_reads && !fin;
            let q = if r.stale { "?stale" } else { "" };
            ("GET", format!("{}{q}", kv_path(key)), Vec::new())
        }
        Func::Put => {
            let v = sh.values.fetch_add(1, Ordering::Relaxed);
            r.value = Some(v);
            ("PUT", kv_path(key), v.to_string().into_bytes())
        }
        Func::Cas => {
            let v = sh.values.fetch_add(1, Ordering::Relaxed);
            let (expect, index) = seen.get(key).copied().unwrap_or((None, 0));
            r.value = Some(v);
            r.expect = expect;
            r.expect_index = Some(index);
            (
                "PUT",
                format!("{}?cas={index}", kv_path(key)),
                v.to_string().into_bytes(),
            )
        }
    };
    r.call_us = sh.now_us();
    let answer = http::request(addr, method, &path, &body, settings.timeout);
    r.ret_us = sh.now_us();
    match answer {
        Err(Failure::NotSent(e)) => {
            r.status = Status::Failed;
            r.error = Some(Failure::NotSent(e).to_string());
        }
        Err(e @ Failure::NoAnswer(_)) => {
            r.status = Status::Unknown;
            r.error = Some(e.to_string());
        }
        Ok(resp) if resp.status >= 500 => {
            r.status = Status::Unknown;
            r.error = Some(format!("{}: {}", resp.status, clip(&resp.text())));
        }
        Ok(resp) => classify(&mut r, resp.status, &resp.text(), &resp.body, seen),
    }
    r
}

fn clip(s: &str) -> String {
    s.chars().take(160).collect()
}

/// Sorts out a non-5xx answer.
fn classify(
    r: &mut Record,
    status: u16,
    text: &str,
    body: &[u8],
    seen: &mut HashMap<String, (Option<u64>, u64)>,
) {
    match (r.f, status) {
        (Func::Get, 200) => match parse_get(body) {
            Ok((value, index)) => {
                r.status = Status::Ok;
                r.value = value;
                r.index = index;
                if let (Some(v), Some(i)) = (value, index) {
                    seen.insert(r.key.clone(), (Some(v), i));
                }
            }
            Err(e) => {
                r.status = Status::Ok;
                r.value = Some(GARBAGE);
                r.error = Some(e);
            }
        },
        (Func::Get, 404) => {
            r.status = Status::Ok;
            r.value = None;
            seen.insert(r.key.clone(), (None, 0));
        }
        (Func::Put, 200) if text == "true" => r.status = Status::Ok,
        (Func::Cas, 200) if text == "true" => {
            r.status = Status::Ok;
            r.result = Some(true);
        }
        (Func::Cas, 200) if text == "false" => {
            r.status = Status::Failed;
            r.result = Some(false);
        }
        _ => {
            // A 4xx, or a 200 that is not the store's answer: refused.
            r.status = Status::Failed;
            r.error = Some(format!("{status}: {}", clip(text)));
        }
    }
}

/// The running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The keys they use.
    pub keys: Arc<Keys>,
}

impl Workload {
    /// Starts `settings.clients` client threads in namespace `hub`.
    pub fn start(
        hub: &str,
        nodes: &[(u32, SocketAddr)],
        settings: &Settings,
        sh: &Shared,
    ) -> crate::error::Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(Keys::new(settings.keys, settings.ops_per_key));
        let mut threads = Vec::new();
        for c in 0..settings.clients {
            let ns = netns::open(hub)?;
            let (node, addr) = nodes[c as usize % nodes.len()];
            let (stop, keys, sh, settings) =
                (stop.clone(), keys.clone(), sh.clone(), settings.clone());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = netns::enter(&ns) {
                    eprintln!("chaos: client {c} cannot enter the hub namespace: {e}");
                    return;
                }
                client_loop(c, node, addr, &keys, &settings, &sh, &stop);
            }));
        }
        Ok(Workload {
            stop,
            threads,
            keys,
        })
    }

    /// Stops the clients and waits for their last operations.
    pub fn stop(self) -> Arc<Keys> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.keys
    }
}

fn client_loop(
    c: u32,
    node: u32,
    addr: SocketAddr,
    keys: &Keys,
    settings: &Settings,
    sh: &Shared,
    stop: &AtomicBool,
) {
    let mut rng = fastrand::Rng::with_seed(
        settings.seed ^ (u64::from(c) + 1).wrapping_mul(0xA24B_AED4_963E_E407),
    );
    let mut seen = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = keys.take(rng.usize(..keys.slots()));
        let f = match rng.u8(..4) {
            0 | 1 => Func::Get,
            2 => Func::Put,
            _ => Func::Cas,
        };
        let r = run_op(sh, c, node, addr, &key, f, settings, &mut seen, false);
        let failed_fast = r.status == Status::Failed
            && r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("not sent"));
        if sh.record.send(r).is_err() {
            return;
        }
        let think = settings.think.as_micros() as u64;
        let mut pause = if think > 0 { rng.u64(..=think) } else { 0 };
        if failed_fast {
            // The node is down: do not spin on refused connections.
            pause = pause.max(50_000);
        }
        if pause > 0 {
            std::thread::sleep(Duration::from_micros(pause));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consul_get_answers() {
        let body = br#"[{"LockIndex":0,"Key":"chaos/k1","Flags":0,"Value":"NDI=","CreateIndex":5,"ModifyIndex":9}]"#;
        assert_eq!(parse_get(body), Ok((Some(42), Some(9))));
        let body = br#"[{"Key":"chaos/k1","Value":null,"ModifyIndex":9}]"#;
        assert_eq!(parse_get(body), Ok((Some(GARBAGE), Some(9))));
        let body = br#"[{"Key":"chaos/k1","Value":"aGk=","ModifyIndex":9}]"#;
        assert_eq!(
            parse_get(body),
            Ok((Some(GARBAGE), Some(9))),
            "'hi' is not ours"
        );
        assert!(parse_get(b"{}").is_err());
        assert!(parse_get(b"nope").is_err());
    }

    #[test]
    fn slots_move_to_fresh_keys() {
        let k = Keys::new(2, 3);
        let a: Vec<String> = (0..4).map(|_| k.take(0)).collect();
        assert_eq!(a[..3], ["chaos/k0", "chaos/k0", "chaos/k0"]);
        assert_eq!(a[3], "chaos/k2");
        assert_eq!(k.take(1), "chaos/k1");
        assert_eq!(k.used(), ["chaos/k0", "chaos/k1", "chaos/k2"]);
    }

    fn rec(f: Func) -> Record {
        Record {
            id: 1,
            client: 0,
            node: 1,
            key: "k".into(),
            f,
            stale: false,
            fin: false,
            value: Some(5),
            expect: None,
            expect_index: Some(0),
            index: None,
            result: None,
            call_us: 0,
            ret_us: 1,
            status: Status::Unknown,
            error: None,
        }
    }

    #[test]
    fn answers_are_classified_as_the_issue_defines() {
        let mut seen = HashMap::new();
        let mut r = rec(Func::Cas);
        classify(&mut r, 200, "false", b"false", &mut seen);
        assert_eq!((r.status, r.result), (Status::Failed, Some(false)));
        let mut r = rec(Func::Cas);
        classify(&mut r, 200, "true", b"true", &mut seen);
        assert_eq!((r.status, r.result), (Status::Ok, Some(true)));
        let mut r = rec(Func::Put);
        classify(&mut r, 403, "reserved", b"reserved", &mut seen);
        assert_eq!(r.status, Status::Failed);
        let mut r = rec(Func::Get);
        classify(&mut r, 404, "", b"", &mut seen);
        assert_eq!((r.status, r.value), (Status::Ok, None));
        assert_eq!(seen.get("k"), Some(&(None, 0)));
    }
}
