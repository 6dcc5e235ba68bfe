//! The lock workload: clients that take one lock through Consul's session
//! API (`?acquire=`/`?release=`), and a checker that no two holders ever
//! overlapped in real time.
//!
//! Each client creates a TTL-only session (`"Checks": []`, so only its TTL
//! or a destroy ends it), waits for `chaos/lock`, holds it a little while
//! renewing, then releases it. One hold in `abandon_every` is abandoned
//! instead: the client stops renewing and never releases, as a holder that
//! hangs would; the server must then end the session by its TTL.
//!
//! What each holder may count on, as Consul promises it: its hold starts
//! when its acquire answers `true`, and ends at its release (the moment it
//! asks) or at its **lease**, whichever comes first. The lease is the moment
//! it last asked for a renew that succeeded (or for the create), plus the
//! TTL (a session never expires before it) plus the lock-delay (nobody else
//! may take the key for that long after). A holder whose lease runs out
//! while it holds stops there. The checker sorts the holds by start and
//! reports every hold that starts before an earlier one ended.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http;
use crate::model::Violation;
use crate::netns;

/// The key every lock client contends for.
pub const LOCK_KEY: &str = "chaos/lock";

/// The lock workload's settings.
#[derive(Clone, Debug)]
pub struct LockSettings {
    /// Lock clients (0: no lock workload).
    pub clients: u32,
    /// The sessions' TTL.
    pub ttl: Duration,
    /// The sessions' lock-delay.
    pub lock_delay: Duration,
    /// Longest hold.
    pub hold_max: Duration,
    /// One hold in this many is abandoned.
    pub abandon_every: u32,
    /// Negative control: holders count on a lease of three TTLs.
    pub unsafe_lease: bool,
    /// Client-side timeout of one request.
    pub timeout: Duration,
    /// The seed of the clients' choices.
    pub seed: u64,
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// The holder asked to release.
    Released,
    /// The holder hung: its lease ran out.
    Abandoned,
    /// The lease ran out while the holder held (renews failed).
    Expired,
}

/// One hold, as its holder saw it (microseconds since the run's start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub client: u32,
    pub node: u32,
    pub session: String,
    pub start_us: u64,
    pub end_us: u64,
    pub end: End,
}

/// The running lock clients.
pub struct LockWorkload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    holds: Arc<Mutex<Vec<Hold>>>,
}

impl LockWorkload {
    /// Starts the lock clients in namespace `hub`; client `c` asks node
    /// `c mod N + 1` first, and the others when it does not answer.
    pub fn start(
        hub: &str,
        nodes: &[(u32, SocketAddr)],
        settings: &LockSettings,
        start: Instant,
    ) -> crate::error::Result<LockWorkload> {
        let stop = Arc::new(AtomicBool::new(false));
        let holds = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for c in 0..settings.clients {
            let ns = netns::open(hub)?;
            let mut order = nodes.to_vec();
            order.rotate_left(c as usize % nodes.len());
            let (stop, holds, settings) = (stop.clone(), holds.clone(), settings.clone());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = netns::enter(&ns) {
                    eprintln!("chaos: lock client {c} cannot enter the hub namespace: {e}");
                    return;
                }
                let mut client = Client {
                    id: c,
                    nodes: order,
                    settings,
                    start,
                    rng: fastrand::Rng::new(),
                };
                client.rng.seed(client.settings.seed ^ (u64::from(c) + 101));
                client.run(&stop, &holds);
            }));
        }
        Ok(LockWorkload {
            stop,
            threads,
            holds,
        })
    }

    /// Stops the clients (a holder releases) and returns every hold.
    pub fn stop(self) -> Vec<Hold> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner()).clone();
        holds.sort_by_key(|h| (h.start_us, h.end_us));
        holds
    }
}

/// An answer: its status and body, or `None` when there was none.
type Answer = Option<(u16, String)>;

struct Client {
    id: u32,
    nodes: Vec<(u32, SocketAddr)>,
    settings: LockSettings,
    start: Instant,
    rng: fastrand::Rng,
}

/// A session as its client tracks it.
struct Session {
    id: String,
    /// When the client last asked for a renew that succeeded (or the create).
    renewed: Instant,
    next_renew: Instant,
}

impl Client {
    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }

    /// Asks the nodes in turn until one answers; the node and the answer.
    fn ask(&self, method: &str, path: &str, body: &[u8]) -> (u32, Answer) {
        for &(node, addr) in &self.nodes {
            match http::request(addr, method, path, body, self.settings.timeout) {
                Ok(r) => return (node, Some((r.status, r.text()))),
                Err(http::Failure::NotSent(_)) => continue,
                Err(http::Failure::NoAnswer(_)) => return (node, None),
            }
        }
        (0, None)
    }

    fn lease(&self, s: &Session) -> Instant {
        let ttl = if self.settings.unsafe_lease {
            self.settings.ttl * 3
        } else {
            self.settings.ttl
        };
        s.renewed + ttl + self.settings.lock_delay
    }

    fn create(&self) -> Option<Session> {
        let body = format!(
            r#"{{"Name": "chaos-{}", "TTL": "{}s", "LockDelay": "{}ms", "Checks": []}}"#,
            self.id,
            self.settings.ttl.as_secs(),
            self.settings.lock_delay.as_millis()
        );
        let asked = Instant::now();
        match self.ask("PUT", "/v1/session/create", body.as_bytes()).1 {
            Some((200, text)) => {
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                Some(Session {
                    id: v["ID"].as_str()?.to_string(),
                    renewed: asked,
                    next_renew: asked + self.settings.ttl / 4,
                })
            }
            _ => None,
        }
    }

    /// Renews when due; false once the session is known gone.
    fn renew(&self, s: &mut Session) -> bool {
        if Instant::now() < s.next_renew {
            return true;
        }
        let asked = Instant::now();
        match self
            .ask("PUT", &format!("/v1/session/renew/{}", s.id), b"")
            .1
        {
            Some((200, _)) => {
                s.renewed = asked;
                s.next_renew = asked + self.settings.ttl / 4;
                true
            }
            Some((404, _)) => false,
            _ => {
                s.next_renew = Instant::now() + Duration::from_millis(200);
                true
            }
        }
    }

    fn run(&mut self, stop: &AtomicBool, holds: &Mutex<Vec<Hold>>) {
        let key_path = format!("/v1/kv/{LOCK_KEY}");
        'sessions: while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = self.create() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                if !self.renew(&mut s) {
                    continue 'sessions;
                }
                let (node, answer) =
                    self.ask("PUT", &format!("{key_path}?acquire={}", s.id), b"held");
                match answer {
                    Some((200, t)) if t == "true" => {}
                    Some((200, _)) => {
                        std::thread::sleep(Duration::from_millis(20 + self.rng.u64(..50)));
                        continue;
                    }
                    // Unknown: the lock may be ours. A linearizable read
                    // says; the hold starts when the client learns it.
                    _ => match self.holder(&key_path) {
                        Some(holder) if holder == s.id => {}
                        Some(_) => continue,
                        // Still unknown: give the session up (its TTL ends it).
                        None => continue 'sessions,
                    },
                }
                let started = Instant::now();
                let hold_for = Duration::from_micros(
                    self.rng.u64(..=self.settings.hold_max.as_micros() as u64),
                );
                let abandon = self.settings.abandon_every > 0
                    && self.rng.u32(..self.settings.abandon_every) == 0;
                if abandon {
                    // Hung: no renew, no release; it counts on its lease.
                    let end = self.lease(&s);
                    self.record(holds, node, &s, started, end, End::Abandoned);
                    let left = end.saturating_duration_since(Instant::now());
                    let until = Instant::now() + left;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    continue 'sessions;
                }
                let until = started + hold_for;
                let mut ended = None;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= self.lease(&s) || !self.renew(&mut s) {
                        ended = Some((self.lease(&s).min(Instant::now()), End::Expired));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if let Some((end, how)) = ended {
                    self.record(holds, node, &s, started, end, how);
                    continue 'sessions;
                }
                let (now, lease) = (Instant::now(), self.lease(&s));
                if lease <= now {
                    self.record(holds, node, &s, started, lease, End::Expired);
                    continue 'sessions;
                }
                self.record(holds, node, &s, started, now, End::Released);
                let _ = self.ask("PUT", &format!("{key_path}?release={}", s.id), b"free");
                std::thread::sleep(Duration::from_millis(self.rng.u64(..30)));
            }
            let _ = self.ask("PUT", &format!("/v1/session/destroy/{}", s.id), b"");
        }
    }

    /// The session holding the lock (`""`: none), by a linearizable read,
    /// or `None` if no node answered.
    fn holder(&self, key_path: &str) -> Option<String> {
        for _ in 0..5 {
            match self.ask("GET", key_path, b"").1 {
                Some((200, text)) => {
                    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                    return Some(v[0]["Session"].as_str().unwrap_or("").to_string());
                }
                Some((404, _)) => return Some(String::new()),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        None
    }

    fn record(
        &self,
        holds: &Mutex<Vec<Hold>>,
        node: u32,
        s: &Session,
        start: Instant,
        end: Instant,
        how: End,
    ) {
        holds.lock().unwrap_or_else(|e| e.into_inner()).push(Hold {
            client: self.id,
            node,
            session: s.id.clone(),
            start_us: self.us(start),
            end_us: self.us(end).max(self.us(start)),
            end: how,
        });
    }
}

/// Every hold that started before an earlier one (by start) had ended.
pub fn check(holds: &[Hold]) -> Vec<Violation> {
    let mut sorted: Vec<&Hold> = holds.iter().collect();
    sorted.sort_by_key(|h| (h.start_us, h.end_us));
    let mut out = Vec::new();
    let mut latest: Option<&Hold> = None;
    for h in sorted {
        if let Some(prev) = latest {
            if h.start_us < prev.end_us {
                out.push(Violation {
                    kind: "lock overlap",
                    key: Some(LOCK_KEY.to_string()),
                    detail: format!(
                        "client {} (session {}, via node {}) held the lock from {:.3}s while client {} \
                         (session {}) held it until {:.3}s ({:?})",
                        h.client,
                        h.session,
                        h.node,
                        h.start_us as f64 / 1e6,
                        prev.client,
                        prev.session,
                        prev.end_us as f64 / 1e6,
                        prev.end
                    ),
                    ops: Vec::new(),
                });
            }
        }
        if latest.is_none_or(|p| h.end_us > p.end_us) {
            latest = Some(h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(client: u32, start_us: u64, end_us: u64) -> Hold {
        Hold {
            client,
            node: 1,
            session: format!("s{client}"),
            start_us,
            end_us,
            end: End::Released,
        }
    }

    #[test]
    fn overlapping_holds_are_reported_and_back_to_back_ones_are_not() {
        assert!(check(&[hold(1, 0, 10), hold(2, 10, 20), hold(3, 25, 30)]).is_empty());
        let v = check(&[hold(1, 0, 10), hold(2, 9, 20)]);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("client 2"), "{}", v[0].detail);
        // A long hold overlaps every later one that starts before it ends.
        assert_eq!(
            check(&[hold(1, 0, 100), hold(2, 10, 20), hold(3, 30, 40)]).len(),
            2
        );
    }
}
