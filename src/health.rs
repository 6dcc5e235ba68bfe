//! Peer health: who is up, and since when.
//!
//! One monitor task owns the [`PeerHealth`] table. Answers reach it over a flume
//! channel from two sources:
//! - a prober task per peer, which does a full handshake ([`transport::probe`])
//!   every `heartbeat_interval`, or every [`FAST_PROBE_INTERVAL`] while the peer
//!   has not answered and the node is still bootstrapping, on one connection
//!   that it keeps from probe to probe while the peer answers;
//! - the transport (through [`PeerAnswers`], which [`HealthHandle`]
//!   implements), whenever a peer completes a handshake with us (so a peer
//!   that starts later is seen the moment it dials in), and while Raft
//!   messages keep arriving from it on a handshaken stream. A prober skips a
//!   peer heard from within the last `heartbeat_interval`.
//!
//! A peer is alive as soon as it answers, and dead once `peer_timeout` passes
//! without an answer. Each change is logged at info and published to
//! subscribers (the quorum waiter).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use log::{debug, info, warn};

use crate::metrics::Metrics;
use crate::runtime::or_shutdown;
use crate::transport::wire::RejectCode;
use crate::transport::{self, Identity, PeerAnswers};

/// Probe interval for a peer that has not answered yet, while bootstrapping.
/// Bootstrap must not wait on `heartbeat_interval`.
pub const FAST_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Fast probes that must fail before a peer counts as absent at startup.
/// Nodes started together come up a few milliseconds apart (each opens its
/// data dir first, with fsyncs on a first boot); one failed probe only means
/// "not listening yet". Three probes (20 ms of fast probing) let a lower id
/// that is starting at the same moment be seen even on a busy machine, so
/// that the node with the lowest id campaigns and the others do not race it.
/// It delays bootstrap only when a lower id is really down.
pub const PROBES_BEFORE_ABSENT: u32 = 3;

/// What the node knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    /// The peer's id.
    pub node_id: u64,
    /// The peer's Raft address.
    pub addr: SocketAddr,
    /// True from its first answer until `peer_timeout` passes without one.
    pub alive: bool,
    /// When it last answered, if ever.
    pub last_heartbeat: Option<Instant>,
}

/// An up/down change of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// The peer answered after being dead or unknown.
    Up(u64),
    /// The peer was silent for `peer_timeout`.
    Down(u64),
    /// The peer answered its first probes, or failed [`PROBES_BEFORE_ABSENT`]
    /// of them. Until then, "not alive" only means "not asked yet".
    Probed(u64),
    /// The peer refused this node's handshake for a reason this node must
    /// act on (it was removed, say).
    Refused(u64, RejectCode),
}

enum Command {
    Answered(u64, Instant),
    SetPeers(Vec<(u64, SocketAddr)>),
    LastAnswer(u64, flume::Sender<Option<Instant>>),
    Probed(u64),
    Refused(u64, RejectCode),
    Peers(flume::Sender<Vec<PeerHealth>>),
    Subscribe {
        events: flume::Sender<HealthEvent>,
        now: flume::Sender<Snapshot>,
    },
}

enum Wake {
    Command(Command),
    Deadline,
    Stop,
}

/// The state a subscriber starts from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Peers alive now.
    pub alive: Vec<u64>,
    /// Peers whose startup probes have finished (see [`HealthEvent::Probed`]).
    pub probed: Vec<u64>,
}

/// A cheap, cloneable handle to the health monitor.
#[derive(Clone)]
pub struct HealthHandle {
    tx: flume::Sender<Command>,
    bootstrapping: Arc<AtomicBool>,
}

/// The transport reports handshakes and traffic here.
impl PeerAnswers for HealthHandle {
    fn answered(&self, peer: u64) {
        HealthHandle::answered(self, peer);
    }
}

impl HealthHandle {
    /// Records an answer from `peer`, now.
    pub fn answered(&self, peer: u64) {
        let _ = self.tx.send(Command::Answered(peer, Instant::now()));
    }

    /// When `peer` last answered, if ever.
    pub async fn last_answer(&self, peer: u64) -> Option<Instant> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send(Command::LastAnswer(peer, tx)).ok()?;
        rx.recv_async().await.ok().flatten()
    }

    /// A copy of the table, sorted by id. Empty if the monitor has stopped.
    pub async fn peers(&self) -> Vec<PeerHealth> {
        let (tx, rx) = flume::bounded(1);
        if self.tx.send(Command::Peers(tx)).is_err() {
            return Vec::new();
        }
        rx.recv_async().await.unwrap_or_default()
    }

    /// Ids of the peers alive now, sorted.
    pub async fn live_peers(&self) -> Vec<u64> {
        self.peers()
            .await
            .into_iter()
            .filter(|p| p.alive)
            .map(|p| p.node_id)
            .collect()
    }

    /// The state now, and every later change. `None` if stopped.
    pub async fn subscribe(&self) -> Option<(Snapshot, flume::Receiver<HealthEvent>)> {
        let (events, events_rx) = flume::unbounded();
        let (now, now_rx) = flume::bounded(1);
        self.tx.send(Command::Subscribe { events, now }).ok()?;
        let snapshot = now_rx.recv_async().await.ok()?;
        Some((snapshot, events_rx))
    }

    /// Makes the set of watched peers `peers` (the membership changed): new
    /// ones get a prober, gone ones lose theirs and their row.
    pub fn set_peers(&self, peers: Vec<(u64, SocketAddr)>) {
        let _ = self.tx.send(Command::SetPeers(peers));
    }

    /// Ends fast probing: from now on every peer is probed each
    /// `heartbeat_interval`.
    pub fn bootstrap_done(&self) {
        self.bootstrapping.store(false, Ordering::Relaxed);
    }
}

/// Starts the monitor, which runs one prober per peer of the directory
/// (and of every later [`HealthHandle::set_peers`]). Everything stops when
/// `shutdown` closes.
pub fn spawn(
    me: Identity,
    heartbeat_interval: Duration,
    peer_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: flume::Receiver<()>,
) -> (HealthHandle, Vec<crate::runtime::Task<()>>) {
    let (tx, rx) = flume::unbounded();
    let handle = HealthHandle {
        tx,
        bootstrapping: Arc::new(AtomicBool::new(true)),
    };
    let probers = Probers {
        me: Arc::new(me),
        heartbeat_interval,
        handle: handle.clone(),
        running: BTreeMap::new(),
    };
    let tasks = vec![crate::runtime::spawn(monitor(
        probers,
        peer_timeout,
        metrics,
        rx,
        shutdown,
    ))];
    (handle, tasks)
}

/// The monitor's probers: one task per peer, each ended by dropping its
/// stop sender (when the peer leaves, or when the monitor stops).
struct Probers {
    me: Arc<Identity>,
    heartbeat_interval: Duration,
    handle: HealthHandle,
    running: BTreeMap<u64, (SocketAddr, flume::Sender<()>)>,
}

impl Probers {
    /// Makes the probed peers `peers`, and the table rows with them.
    fn set(&mut self, peers: &[(u64, SocketAddr)], table: &mut BTreeMap<u64, PeerHealth>) {
        self.running
            .retain(|id, (addr, _)| peers.iter().any(|(p, a)| p == id && a == addr));
        table.retain(|id, _| self.running.contains_key(id));
        for &(id, addr) in peers {
            if self.running.contains_key(&id) {
                continue;
            }
            let (stop, stopped) = flume::bounded(1);
            crate::runtime::spawn(prober(
                self.me.clone(),
                id,
                addr,
                self.heartbeat_interval,
                self.handle.clone(),
                stopped,
            ))
            .detach();
            self.running.insert(id, (addr, stop));
            table.insert(
                id,
                PeerHealth {
                    node_id: id,
                    addr,
                    alive: false,
                    last_heartbeat: None,
                },
            );
        }
    }
}

async fn monitor(
    mut probers: Probers,
    peer_timeout: Duration,
    metrics: Arc<Metrics>,
    rx: flume::Receiver<Command>,
    shutdown: flume::Receiver<()>,
) {
    let mut subscribers: Vec<flume::Sender<HealthEvent>> = Vec::new();
    let mut probed: Vec<u64> = Vec::new();
    let mut table = BTreeMap::new();
    let initial = probers.me.peers();
    probers.set(&initial, &mut table);
    // Wakes the monitor when the first live peer would time out. It is re-armed
    // only when that moment moves earlier: answers arrive several times a
    // second, and a timer that fires early costs one look at the table. It is
    // the executor's own (`runtime::sleep`), as is the probers': an async-io
    // timer would wake the reactor thread to arm it and again to fire.
    let mut timer: Option<(Instant, crate::runtime::Sleep)> = None;
    loop {
        let deadline = table
            .values()
            .filter(|p| p.alive)
            .filter_map(|p| p.last_heartbeat)
            .min()
            .map(|t| t + peer_timeout);
        match (deadline, &timer) {
            (None, _) => timer = None,
            (Some(at), Some((armed, _))) if *armed <= at => {}
            (Some(at), _) => timer = Some((at, crate::runtime::sleep_until(at))),
        }
        let wake = future::or(
            async {
                match rx.recv_async().await {
                    Ok(command) => Wake::Command(command),
                    Err(_) => Wake::Stop,
                }
            },
            future::or(
                async {
                    let _ = shutdown.recv_async().await;
                    Wake::Stop
                },
                async {
                    match timer.as_mut() {
                        Some((_, t)) => {
                            t.await;
                        }
                        None => future::pending::<()>().await,
                    }
                    Wake::Deadline
                },
            ),
        )
        .await;
        let command = match wake {
            Wake::Stop => break,
            Wake::Deadline => {
                timer = None;
                None
            }
            Wake::Command(command) => Some(command),
        };
        let mut changes = Vec::new();
        match command {
            None => {}
            Some(Command::Answered(id, at)) => {
                if let Some(peer) = table.get_mut(&id) {
                    peer.last_heartbeat = Some(peer.last_heartbeat.map_or(at, |t| t.max(at)));
                    if !peer.alive {
                        peer.alive = true;
                        info!("peer {} ({}) is up", id, peer.addr);
                        changes.push(HealthEvent::Up(id));
                    }
                }
            }
            Some(Command::Probed(id)) if !probed.contains(&id) => {
                probed.push(id);
                changes.push(HealthEvent::Probed(id));
            }
            Some(Command::Probed(_)) => {}
            Some(Command::Refused(id, code)) => changes.push(HealthEvent::Refused(id, code)),
            Some(Command::SetPeers(peers)) => {
                // A peer that leaves the membership before its first probes
                // finished will never be probed: nothing is left to learn
                // of it, so a waiter must not wait for it.
                for &id in probers.running.keys() {
                    if !peers.iter().any(|(p, _)| *p == id) && !probed.contains(&id) {
                        probed.push(id);
                        changes.push(HealthEvent::Probed(id));
                    }
                }
                probers.set(&peers, &mut table);
                metrics.set_peers_alive(table.values().filter(|p| p.alive).count());
            }
            Some(Command::LastAnswer(id, reply)) => {
                let _ = reply.try_send(table.get(&id).and_then(|p| p.last_heartbeat));
            }
            Some(Command::Peers(reply)) => {
                let _ = reply.try_send(table.values().cloned().collect());
            }
            Some(Command::Subscribe { events, now }) => {
                let alive = table.values().filter(|p| p.alive).map(|p| p.node_id);
                let _ = now.try_send(Snapshot {
                    alive: alive.collect(),
                    probed: probed.clone(),
                });
                subscribers.push(events);
            }
        }
        let now = Instant::now();
        for peer in table.values_mut() {
            let expired = peer
                .last_heartbeat
                .is_some_and(|t| now.duration_since(t) >= peer_timeout);
            if peer.alive && expired {
                peer.alive = false;
                info!(
                    "peer {} ({}) is down: no answer for {}",
                    peer.node_id,
                    peer.addr,
                    humantime::format_duration(peer_timeout)
                );
                changes.push(HealthEvent::Down(peer.node_id));
            }
        }
        if !changes.is_empty() {
            metrics.set_peers_alive(table.values().filter(|p| p.alive).count());
            subscribers.retain(|s| changes.iter().all(|c| s.send(*c).is_ok()));
        }
    }
    debug!("health monitor stopped");
}

async fn prober(
    me: Arc<Identity>,
    id: u64,
    addr: SocketAddr,
    heartbeat_interval: Duration,
    health: HealthHandle,
    shutdown: flume::Receiver<()>,
) {
    // `shutdown` here is this prober's own stop channel: it closes when the
    // peer leaves the membership or the monitor stops.
    let timeout = heartbeat_interval.min(transport::HANDSHAKE_TIMEOUT);
    let mut last_error: Option<String> = None;
    let mut attempts = 0;
    let mut link = transport::ProbeLink::default();
    loop {
        // Raft traffic on a handshaken stream is an answer too (the
        // transport reports it). A peer heard from within the interval needs
        // no extra connection; this spares the leader and its followers
        // most probes.
        let heard_lately = attempts > 0
            && health
                .last_answer(id)
                .await
                .is_some_and(|t| t.elapsed() < heartbeat_interval);
        let answered = if heard_lately {
            true
        } else {
            let probed = or_shutdown(
                &shutdown,
                transport::probe(&me, id, addr, timeout, &mut link),
            )
            .await;
            let Some(probed) = probed else { break };
            match probed {
                Ok(_) => {
                    health.answered(id);
                    last_error = None;
                    true
                }
                Err(transport::DialError { reason, code }) => {
                    if let Some(code) = code.filter(|c| *c != RejectCode::Refused) {
                        let _ = health.tx.send(Command::Refused(id, code));
                    }
                    if last_error.as_deref() != Some(reason.as_str()) {
                        // A wrong node at a peer's address is a misconfiguration an
                        // operator must see; a peer that is not up yet is routine.
                        if reason.starts_with("refused")
                            || reason.starts_with("answered as")
                            || reason.starts_with("TLS")
                        {
                            warn!("probe of peer {id} ({addr}) failed: {reason}");
                        } else {
                            debug!("probe of peer {id} ({addr}) failed: {reason}");
                        }
                        last_error = Some(reason);
                    }
                    false
                }
            }
        };
        attempts += 1;
        if answered || attempts == PROBES_BEFORE_ABSENT {
            let _ = health.tx.send(Command::Probed(id));
        }
        let wait = if !answered && health.bootstrapping.load(Ordering::Relaxed) {
            FAST_PROBE_INTERVAL
        } else {
            heartbeat_interval
        };
        let stopped = or_shutdown(&shutdown, crate::runtime::sleep(wait))
            .await
            .is_none();
        if stopped {
            break;
        }
    }
}
