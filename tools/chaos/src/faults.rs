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
use crate::nodes::{self, Cluster};
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
    /// What went wrong on the way that is the node's fault: a clean
    /// shutdown that did not exit 0 in time (reported as violations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
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
    /// Nodes sent SIGTERM: wait for each to exit, then start it; resume a
    /// paused node first if any.
    Stopped {
        stopped: Vec<u32>,
        paused: Option<u32>,
    },
    /// Remove the learner added (by id), the request's answer arriving on
    /// the channel.
    RemoveLearner(u32, std::sync::mpsc::Receiver<String>),
    /// Resume the paused node, then start the killed one.
    ResumeRestart {
        paused: u32,
        killed: u32,
    },
}

/// How long a clean shutdown may take before the node is killed.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);
/// How long removing the learner of a member-restart fault may take.
const REMOVE_LEARNER_WITHIN: Duration = Duration::from_secs(15);

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
    /// Problems of the fault in progress.
    pub problems: Vec<String>,
}

/// Learners of member-restart faults get ids from here up (plus the fault's
/// number): ids are never reused.
const LEARNER_IDS: u32 = 1000;
/// The last byte of the learners' address, which no namespace has.
const LEARNER_ADDR: u32 = 200;

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
        self.problems.clear();
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
            FaultKind::PauseHandoff => {
                let leader = self.leader_or_any(pick, &mut note);
                let others: Vec<u32> = ids.iter().copied().filter(|&i| i != leader).collect();
                let f = schedule::choose(&others, pick, 4).unwrap_or(leader);
                let resume_ms = 150 + pick % 101;
                self.cluster.pause(f, true);
                std::thread::sleep(Duration::from_millis(100));
                self.cluster.sigterm(leader);
                std::thread::sleep(Duration::from_millis(resume_ms));
                self.cluster.pause(f, false);
                std::thread::sleep(Duration::from_millis(300));
                let how = self.cluster.terminate(f, SHUTDOWN_WITHIN);
                self.check_clean(f, how);
                self.cluster.start(f)?;
                (
                    vec![f, leader],
                    format!(
                        "SIGSTOP of follower node {f}, SIGTERM of leader node {leader} 100 ms later, SIGCONT {resume_ms} ms later, then a clean restart of node {f}{note}"
                    ),
                    Heal::Stopped {
                        stopped: vec![leader],
                        paused: None,
                    },
                )
            }
            FaultKind::PauseTransfer => {
                let leader = self.leader_or_any(pick, &mut note);
                let others: Vec<u32> = ids.iter().copied().filter(|&i| i != leader).collect();
                let f = schedule::choose(&others, pick, 5).unwrap_or(leader);
                self.cluster.sigterm(leader);
                self.cluster.pause(f, true);
                (
                    vec![leader, f],
                    format!(
                        "SIGTERM of leader node {leader} (it hands off) and at once SIGSTOP of node {f}{note}"
                    ),
                    Heal::Stopped {
                        stopped: vec![leader],
                        paused: Some(f),
                    },
                )
            }
            FaultKind::MemberRestart => {
                let target = if pick.is_multiple_of(2) {
                    self.leader_or_any(pick, &mut note)
                } else {
                    self.follower(pick)
                };
                let via = schedule::choose(&ids, pick, 6).unwrap_or(1);
                // A fresh id each time (ids are never reused), on an address
                // no namespace has: the learner never answers.
                let learner = LEARNER_IDS + fault.n;
                let rx = self.add_learner(via, learner)?;
                let how = self.cluster.terminate(target, SHUTDOWN_WITHIN);
                self.check_clean(target, how);
                self.cluster.start(target)?;
                (
                    vec![target],
                    format!(
                        "learner {learner} added through node {via} while node {target} restarts cleanly{note}"
                    ),
                    Heal::RemoveLearner(learner, rx),
                )
            }
            FaultKind::KillLeaderPause => {
                let leader = self.leader_or_any(pick, &mut note);
                let others: Vec<u32> = ids.iter().copied().filter(|&i| i != leader).collect();
                let (f, which) = match others.split_first() {
                    Some((&first, _)) if pick.is_multiple_of(2) => (first, "the first"),
                    Some((&first, rest)) => {
                        (schedule::choose(rest, pick, 7).unwrap_or(first), "a later")
                    }
                    None => (leader, "the first"),
                };
                // Paused first: it must not see the death before it stops.
                self.cluster.pause(f, true);
                self.cluster.kill(leader);
                (
                    vec![leader, f],
                    format!(
                        "SIGSTOP of {which} follower, node {f}, and at once kill -9 of leader node {leader}{note}"
                    ),
                    Heal::ResumeRestart {
                        paused: f,
                        killed: leader,
                    },
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
        let mut detail_suffix = String::new();
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
            Heal::Stopped { stopped, paused } => {
                if let Some(id) = paused {
                    self.cluster.pause(*id, false);
                }
                for &id in stopped {
                    let how = self.cluster.wait_exit(id, SHUTDOWN_WITHIN);
                    self.check_clean(id, how);
                    self.cluster.start(id)?;
                }
            }
            Heal::RemoveLearner(learner, rx) => {
                let added = rx
                    .recv_timeout(REMOVE_LEARNER_WITHIN)
                    .unwrap_or_else(|_| "no answer".into());
                let removed = self.remove_learner(*learner);
                detail_suffix = format!("; the add answered {added}; the removal {removed}");
            }
            Heal::ResumeRestart { paused, killed } => {
                self.cluster.pause(*paused, false);
                self.cluster.start(*killed)?;
            }
        }
        Ok(Applied {
            n: active.fault.n,
            kind: active.fault.kind,
            targets: active.targets,
            detail: active.detail + &detail_suffix,
            start_us: active.start_us,
            end_us: self.now_us(),
            recovery_ms: None,
            problems: std::mem::take(&mut self.problems),
        })
    }

    /// Notes a clean shutdown that was not one.
    fn check_clean(&mut self, id: u32, how: Option<String>) {
        if let Some(how) = how {
            if how != "exit code 0" {
                self.problems.push(format!(
                    "node {id} did not shut down cleanly on SIGTERM: {how}"
                ));
            }
        }
    }

    /// Sends the add of learner `learner` through node `via` from a thread
    /// of its own; its answer arrives on the channel.
    fn add_learner(&self, via: u32, learner: u32) -> Result<std::sync::mpsc::Receiver<String>> {
        let ns = netns::open(&self.net.hub())?;
        let addr = nodes::admin_addr(via);
        let ip = netns::node_ip(LEARNER_ADDR);
        let body = format!(
            r#"{{"id":{learner},"addr":"{ip}:{}","admin":"{ip}:{}"}}"#,
            nodes::PEER_PORT,
            nodes::ADMIN_PORT
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let answer = match netns::enter(&ns) {
                Err(e) => format!("not sent ({e})"),
                Ok(()) => match http::request(
                    addr,
                    "POST",
                    "/admin/cluster/members",
                    body.as_bytes(),
                    REMOVE_LEARNER_WITHIN,
                ) {
                    Ok(r) => r.status.to_string(),
                    Err(e) => format!("no answer ({e})"),
                },
            };
            let _ = tx.send(answer);
        });
        Ok(rx)
    }

    /// Removes learner `learner` through any node, retrying until one
    /// answers 200 (removed) or 404 (never added); says how it went.
    fn remove_learner(&self, learner: u32) -> String {
        let Ok(ns) = netns::open(&self.net.hub()) else {
            return "could not enter the hub namespace".into();
        };
        let nodes = self.nodes.clone();
        let path = format!("/admin/cluster/members/{learner}");
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = netns::enter(&ns) {
                    return format!("could not enter the hub namespace: {e}");
                }
                let until = Instant::now() + REMOVE_LEARNER_WITHIN;
                let mut last = String::from("not tried");
                for (_, addr) in nodes.iter().cycle() {
                    match http::request(*addr, "DELETE", &path, b"", PROBE_TIMEOUT * 4) {
                        Ok(r) if r.status == 200 || r.status == 404 => {
                            return format!("answered {}", r.status)
                        }
                        Ok(r) => last = format!("{} {}", r.status, r.text()),
                        Err(e) => last = e.to_string(),
                    }
                    if Instant::now() >= until {
                        return format!("failed: {last}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                last
            })
            .join()
            .unwrap_or_else(|_| "panicked".into())
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
