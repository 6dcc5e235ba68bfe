//! Watching the cluster: every node's `/admin/cluster/status`, polled
//! throughout the run, for the one-leader-per-term check, the leader changes
//! drawn on the timeline, and finding the leader when a fault targets it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http;
pub use crate::invariants::Applied;
use crate::model::Violation;
use crate::netns;

/// How often each node is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// A poll that takes longer than this counts as no answer (a paused node).
pub const POLL_TIMEOUT: Duration = Duration::from_millis(300);

/// One node's answer, kept when it differs from that node's previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Microseconds since the run started.
    pub t_us: u64,
    /// The node polled.
    pub node: u32,
    /// Its term.
    pub term: u64,
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The node process's pid: terms may only restart with the process.
    #[serde(default)]
    pub pid: Option<u64>,
}

/// A node's view from the status JSON, or `None` if it does not parse.
pub fn parse_status(node: u32, t_us: u64, body: &[u8]) -> Option<Sample> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Sample {
        t_us,
        node,
        term: v.get("term")?.as_u64()?,
        role: v.get("role")?.as_str()?.to_string(),
        leader: v.get("leader_id").and_then(|l| l.as_u64()),
        pid: v.get("pid").and_then(|p| p.as_u64()),
    })
}

/// A node's `applied_index` and `applied_hash`, from its status JSON.
pub fn parse_applied(node: u32, t_us: u64, body: &[u8]) -> Option<Applied> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Applied {
        t_us,
        node,
        index: v.get("applied_index")?.as_u64()?,
        hash: v.get("applied_hash")?.as_str()?.to_string(),
    })
}

/// A node's `applied_index` and `commit_index`, from its status JSON.
pub fn parse_indices(body: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((
        v.get("applied_index")?.as_u64()?,
        v.get("commit_index")?.as_u64()?,
    ))
}

/// Polls `addr` once.
pub fn poll(node: u32, addr: SocketAddr, start: Instant) -> Option<Sample> {
    poll_both(node, addr, start).map(|(s, _)| s)
}

/// Polls `addr` once, for its view and its applied state.
fn poll_both(node: u32, addr: SocketAddr, start: Instant) -> Option<(Sample, Option<Applied>)> {
    let r = http::request(addr, "GET", "/admin/cluster/status", b"", POLL_TIMEOUT).ok()?;
    if r.status != 200 {
        return None;
    }
    let t_us = start.elapsed().as_micros() as u64;
    let sample = parse_status(node, t_us, &r.body)?;
    Some((sample, parse_applied(node, t_us, &r.body)))
}

/// Background pollers, one thread per node, living in the hub namespace.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    applied: Arc<Mutex<Vec<Applied>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Starts polling `nodes` (id, admin address) from namespace `hub`.
    pub fn start(
        hub: &str,
        nodes: &[(u32, SocketAddr)],
        start: Instant,
    ) -> crate::error::Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let applied = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for &(id, addr) in nodes {
            let ns = netns::open(hub)?;
            let (stop, samples, applied) = (stop.clone(), samples.clone(), applied.clone());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = netns::enter(&ns) {
                    eprintln!(
                        "chaos: status poller for node {id} cannot enter the hub namespace: {e}"
                    );
                    return;
                }
                let mut last: Option<(u64, String, Option<u64>, Option<u64>)> = None;
                let mut last_applied: Option<Applied> = None;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    if let Some((s, a)) = poll_both(id, addr, start) {
                        let now = (s.term, s.role.clone(), s.leader, s.pid);
                        if last.as_ref() != Some(&now) {
                            last = Some(now);
                            samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                        }
                        if let Some(a) = a {
                            if last_applied.as_ref().is_none_or(|l| l.index != a.index) {
                                last_applied = Some(a.clone());
                                applied.lock().unwrap_or_else(|e| e.into_inner()).push(a);
                            }
                        }
                    }
                    std::thread::sleep(POLL_EVERY.saturating_sub(began.elapsed()));
                }
            }));
        }
        Ok(Monitor {
            stop,
            samples,
            applied,
            threads,
        })
    }

    /// Stops polling and returns every sample and every applied state
    /// seen, in time order.
    pub fn finish(self) -> (Vec<Sample>, Vec<Applied>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut s = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        s.sort_by_key(|s| (s.t_us, s.node));
        let mut a = std::mem::take(&mut *self.applied.lock().unwrap_or_else(|e| e.into_inner()));
        a.sort_by_key(|a| (a.t_us, a.node));
        (s, a)
    }
}

/// Two different leaders in one term, by any node's account: a node that
/// says it leads, or names the leader it follows.
pub fn two_leaders(samples: &[Sample]) -> Vec<Violation> {
    let mut by_term: BTreeMap<u64, BTreeMap<u64, &Sample>> = BTreeMap::new();
    for s in samples {
        let claimed = if s.role == "leader" {
            Some(u64::from(s.node))
        } else {
            s.leader
        };
        if let Some(l) = claimed {
            by_term.entry(s.term).or_default().entry(l).or_insert(s);
        }
    }
    by_term
        .into_iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| {
            let mut detail = format!(
                "term {term} had leaders {:?}; first seen:\n",
                leaders.keys().collect::<Vec<_>>()
            );
            for (l, s) in &leaders {
                detail.push_str(&format!(
                    "  leader {l}: node {} at {:.3}s said role={} leader={:?}\n",
                    s.node,
                    s.t_us as f64 / 1e6,
                    s.role,
                    s.leader
                ));
            }
            Violation {
                kind: "two leaders",
                key: None,
                detail,
                ops: Vec::new(),
            }
        })
        .collect()
}

/// The moments a new (term, leader) pair was first reported by the leader
/// itself, for the timeline.
pub fn leader_changes(samples: &[Sample]) -> Vec<(u64, u32, u64)> {
    let mut seen: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut out = Vec::new();
    for s in samples {
        if s.role == "leader" && seen.insert((s.term, s.node)) {
            out.push((s.t_us, s.node, s.term));
        }
    }
    out
}

/// Waits until every node has applied everything any node had committed,
/// for at most `within`. With `moving`, the target is the highest
/// `commit_index` reported in each round (for the end of the run, with the
/// workload stopped); without, it is the one of the first round (after a
/// fault heals, while the workload goes on). Returns the nodes still behind,
/// with their last (applied, target) indices; empty when all caught up.
pub fn wait_caught_up(
    hub: &str,
    nodes: &[(u32, SocketAddr)],
    within: Duration,
    moving: bool,
) -> Vec<(u32, Option<u64>, u64)> {
    let Ok(ns) = netns::open(hub) else {
        return Vec::new();
    };
    let until = Instant::now() + within;
    let mut fixed: Option<u64> = None;
    loop {
        let answers: Vec<(u32, Option<(u64, u64)>)> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|&(_, addr)| {
                    let ns = &ns;
                    s.spawn(move || {
                        netns::enter(ns).ok()?;
                        let r =
                            http::request(addr, "GET", "/admin/cluster/status", b"", POLL_TIMEOUT)
                                .ok()?;
                        (r.status == 200).then(|| parse_indices(&r.body)).flatten()
                    })
                })
                .collect();
            nodes
                .iter()
                .zip(handles)
                .map(|(&(id, _), h)| (id, h.join().ok().flatten()))
                .collect()
        });
        let highest = answers
            .iter()
            .filter_map(|(_, a)| a.map(|(_, c)| c))
            .max()
            .unwrap_or(0);
        let target = if moving {
            highest
        } else {
            *fixed.get_or_insert(highest)
        };
        let behind: Vec<(u32, Option<u64>, u64)> = answers
            .iter()
            .filter(|(_, a)| a.is_none_or(|(applied, _)| applied < target))
            .map(|&(id, a)| (id, a.map(|(applied, _)| applied), target))
            .collect();
        if behind.is_empty() || Instant::now() >= until {
            return behind;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks every node at once; the one that says it leads, with the highest
/// term, if any.
pub fn find_leader(hub: &str, nodes: &[(u32, SocketAddr)], start: Instant) -> Option<u32> {
    let ns = netns::open(hub).ok()?;
    let ns = &ns;
    let answers: Vec<Sample> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&(id, addr)| {
                s.spawn(move || {
                    netns::enter(ns).ok()?;
                    poll(id, addr, start)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    answers
        .iter()
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .map(|s| s.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: u64, node: u32, term: u64, role: &str, leader: Option<u64>) -> Sample {
        Sample {
            t_us: t,
            node,
            term,
            role: role.into(),
            leader,
            pid: None,
        }
    }

    #[test]
    fn parses_the_status_route() {
        let body = br#"{"node_id":2,"cluster":"chaos","role":"follower","term":7,"leader_id":1,"bootstrap_complete":true}"#;
        assert_eq!(
            parse_status(2, 5, body),
            Some(s(5, 2, 7, "follower", Some(1)))
        );
        let body = br#"{"node_id":2,"role":"candidate","term":8,"leader_id":null}"#;
        assert_eq!(
            parse_status(2, 5, body),
            Some(s(5, 2, 8, "candidate", None))
        );
        assert_eq!(parse_status(2, 5, b"not json"), None);
    }

    #[test]
    fn parses_the_applied_and_commit_indexes() {
        let body = br#"{"applied_index":232233,"commit_index":232240,"role":"follower","term":48}"#;
        assert_eq!(parse_indices(body), Some((232233, 232240)));
        assert_eq!(parse_indices(br#"{"role":"follower"}"#), None);
    }

    #[test]
    fn one_leader_per_term_passes() {
        let h = [
            s(1, 1, 2, "leader", Some(1)),
            s(2, 2, 2, "follower", Some(1)),
            s(3, 2, 3, "leader", Some(2)),
            s(4, 1, 3, "follower", Some(2)),
        ];
        assert!(two_leaders(&h).is_empty());
        assert_eq!(leader_changes(&h), vec![(1, 1, 2), (3, 2, 3)]);
    }

    #[test]
    fn two_leaders_in_a_term_are_caught() {
        // Node 3 claims term 4 while node 1 follows node 2 in term 4.
        let h = [
            s(1, 2, 4, "leader", Some(2)),
            s(2, 1, 4, "follower", Some(2)),
            s(3, 3, 4, "leader", Some(3)),
        ];
        let v = two_leaders(&h);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].detail.contains("term 4 had leaders [2, 3]"),
            "{}",
            v[0].detail
        );
    }
}
