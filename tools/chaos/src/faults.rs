//! Injecting and healing the faults of the schedule, and measuring how long
//! the cluster takes to serve writes again after each heals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::firewall::{self, Rule};
use crate::http;
use crate::monitor;
use crate::netns::{self, Network};
use crate::nodes::Cluster;
use crate::schedule::{self, Fault, FaultKind};

/// How long to look for the leader before a leader-targeted fault falls back
/// on a node drawn from the fault's pick.
const FIND_LEADER_FOR: Duration = Duration::from_secs(3);
/// How long a recovery may take before it counts as "never".
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// The timeout of one recovery probe write.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A fault as it happened, one line of `faults.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Its number in the schedule.
    pub n: u32,
    /// What it was.
    pub kind: FaultKind,
    /// The nodes it hit.
    pub targets: Vec<u32>,
    /// What was done, in words.
    pub detail: String,
    /// When it started, microseconds since the run started.
    pub start_us: u64,
    /// When it healed.
    pub end_us: u64,
    /// From healing to the first acknowledged write; `None`: not within
    /// [`RECOVERY_DEADLINE`].
    pub recovery_ms: Option<u64>,
}

/// A fault in force, and what healing it takes.
pub struct Active {
    fault: Fault,
    targets: Vec<u32>,
    detail: String,
    start_us: u64,
    heal: Heal,
}

enum Heal {
    Restart(Vec<u32>),
    Resume(u32),
    Flush,
}

/// What faults act on.
pub struct Injector<'a> {
    /// The node processes.
    pub cluster: &'a mut Cluster,
    /// The namespaces.
    pub net: &'a Network,
    /// Every node's admin address.
    pub nodes: Vec<(u32, SocketAddr)>,
    /// The run's clock.
    pub start: Instant,
}

impl Injector<'_> {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn leader(&self) -> Option<u32> {
        let until = Instant::now() + FIND_LEADER_FOR;
        loop {
            if let Some(l) = monitor::find_leader(&self.net.hub(), &self.nodes, self.start) {
                return Some(l);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ids(&self) -> Vec<u32> {
        self.cluster.ids()
    }

    /// The leader, or a node drawn by `pick` when none is known (said in
    /// the detail).
    fn leader_or_any(&self, pick: u64, note: &mut String) -> u32 {
        match self.leader() {
            Some(l) => l,
            None => {
                let id = schedule::choose(&self.ids(), pick, 1).unwrap_or(1);
                note.push_str(" (no leader known: a node drawn at random)");
                id
            }
        }
    }

    /// A follower drawn by `pick` (any node when no leader is known).
    fn follower(&self, pick: u64) -> u32 {
        let leader = self.leader();
        let others: Vec<u32> = self
            .ids()
            .into_iter()
            .filter(|&i| Some(i) != leader)
            .collect();
        schedule::choose(&others, pick, 2).unwrap_or(1)
    }

    fn apply(&self, id: u32, rules: &[Rule]) -> Result<()> {
        firewall::restore(&self.net.node(id), &firewall::apply_script(rules))
    }

    fn cut(&self, side: &[u32], rest: &[u32]) -> Result<()> {
        for &a in side {
            let rules: Vec<Rule> = rest
                .iter()
                .flat_map(|&b| {
                    [
                        Rule::DropFrom(netns::node_ip(b)),
                        Rule::DropTo(netns::node_ip(b)),
                    ]
                })
                .collect();
            self.apply(a, &rules)?;
        }
        Ok(())
    }

    /// Starts `fault`.
    pub fn inject(&mut self, fault: &Fault) -> Result<Active> {
        let start_us = self.now_us();
        let pick = fault.pick;
        let ids = self.ids();
        let mut note = String::new();
        let (targets, detail, heal) = match fault.kind {
            FaultKind::KillLeader => {
                let id = self.leader_or_any(pick, &mut note);
                self.cluster.kill(id);
                (
                    vec![id],
                    format!("kill -9 of leader node {id}{note}"),
                    Heal::Restart(vec![id]),
                )
            }
            FaultKind::KillFollower => {
                let id = self.follower(pick);
                self.cluster.kill(id);
                (
                    vec![id],
                    format!("kill -9 of follower node {id}"),
                    Heal::Restart(vec![id]),
                )
            }
            FaultKind::Pause => {
                let (id, what) = if pick.is_multiple_of(2) {
                    (self.leader_or_any(pick, &mut note), "leader ")
                } else {
                    (self.follower(pick), "follower ")
                };
                self.cluster.pause(id, true);
                (
                    vec![id],
                    format!("SIGSTOP of {what}node {id}{note}"),
                    Heal::Resume(id),
                )
            }
            FaultKind::PartitionLeader => {
                let id = self.leader_or_any(pick, &mut note);
                let rest: Vec<u32> = ids.iter().copied().filter(|&i| i != id).collect();
                self.cut(&[id], &rest)?;
                (
                    vec![id],
                    format!("leader node {id} isolated from {rest:?}{note}"),
                    Heal::Flush,
                )
            }
            FaultKind::PartitionSplit => {
                let minority = schedule::minority(ids.len() as u32, pick);
                let majority: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|i| !minority.contains(i))
                    .collect();
                self.cut(&minority, &majority)?;
                (
                    minority.clone(),
                    format!("split {minority:?} | {majority:?}"),
                    Heal::Flush,
                )
            }
            FaultKind::OneWay => {
                let id = if pick.is_multiple_of(2) {
                    self.leader_or_any(pick, &mut note)
                } else {
                    self.follower(pick)
                };
                let inbound = (pick >> 1).is_multiple_of(2);
                let rules: Vec<Rule> = ids
                    .iter()
                    .filter(|&&i| i != id)
                    .map(|&b| {
                        if inbound {
                            Rule::DropFrom(netns::node_ip(b))
                        } else {
                            Rule::DropTo(netns::node_ip(b))
                        }
                    })
                    .collect();
                self.apply(id, &rules)?;
                let what = if inbound {
                    "hears no other node, but reaches them"
                } else {
                    "reaches no other node, but hears them"
                };
                (vec![id], format!("node {id} {what}{note}"), Heal::Flush)
            }
            FaultKind::Loss => {
                let p = schedule::fraction(pick, 3, 0.10, 0.40);
                for &a in &ids {
                    let rules: Vec<Rule> = ids
                        .iter()
                        .filter(|&&b| b != a)
                        .map(|&b| Rule::LossFrom(netns::node_ip(b), p))
                        .collect();
                    self.apply(a, &rules)?;
                }
                (
                    ids.clone(),
                    format!("{:.0}% packet loss between all nodes", p * 100.0),
                    Heal::Flush,
                )
            }
            FaultKind::RestartCluster => {
                self.cluster.kill_all();
                (
                    ids.clone(),
                    "kill -9 of every node, then all restart".to_string(),
                    Heal::Restart(ids.clone()),
                )
            }
        };
        Ok(Active {
            fault: fault.clone(),
            targets,
            detail,
            start_us,
            heal,
        })
    }

    /// Ends `active`, and returns it as it happened (recovery not measured).
    pub fn heal(&mut self, active: Active) -> Result<Applied> {
        match &active.heal {
            Heal::Restart(ids) => {
                for &id in ids {
                    self.cluster.start(id)?;
                }
            }
            Heal::Resume(id) => {
                self.cluster.pause(*id, false);
            }
            Heal::Flush => self.flush_all()?,
        }
        Ok(Applied {
            n: active.fault.n,
            kind: active.fault.kind,
            targets: active.targets,
            detail: active.detail,
            start_us: active.start_us,
            end_us: self.now_us(),
            recovery_ms: None,
        })
    }

    /// Removes every fault rule from every node.
    pub fn flush_all(&self) -> Result<()> {
        for id in self.ids() {
            firewall::restore(&self.net.node(id), &firewall::heal_script())?;
        }
        Ok(())
    }
}

/// Time from now until some node acknowledges a write (to its own probe key,
/// outside the checked history), or `None` after `deadline`. Probes every
/// node at once from the hub namespace.
pub fn measure_recovery(
    hub: &str,
    nodes: &[(u32, SocketAddr)],
    deadline: Duration,
    seq: &AtomicU64,
) -> Option<Duration> {
    let t0 = Instant::now();
    let done = AtomicBool::new(false);
    let first: Mutex<Option<Duration>> = Mutex::new(None);
    let ns = netns::open(hub).ok()?;
    std::thread::scope(|s| {
        for &(id, addr) in nodes {
            let (done, first, ns) = (&done, &first, &ns);
            s.spawn(move || {
                if netns::enter(ns).is_err() {
                    return;
                }
                let path = format!("/v1/kv/chaos-recovery/n{id}");
                while !done.load(Ordering::Relaxed) && t0.elapsed() < deadline {
                    let body = seq.fetch_add(1, Ordering::Relaxed).to_string();
                    let began = Instant::now();
                    match http::request(addr, "PUT", &path, body.as_bytes(), PROBE_TIMEOUT) {
                        Ok(r) if r.status == 200 && r.text() == "true" => {
                            let mut f = first.lock().unwrap_or_else(|e| e.into_inner());
                            if f.is_none() {
                                *f = Some(t0.elapsed());
                            }
                            done.store(true, Ordering::Relaxed);
                        }
                        _ => {
                            // Refusals and 500s come back at once: pace them.
                            let spent = began.elapsed();
                            std::thread::sleep(Duration::from_millis(10).saturating_sub(spent));
                        }
                    }
                }
            });
        }
    });
    first.into_inner().unwrap_or_else(|e| e.into_inner())
}
