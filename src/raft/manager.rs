//! The group manager, the router and the tick driver.
//!
//! [`RaftGroupManager`] creates replicas keyed by (topic, partition) and starts
//! each one's driver task. The [`Router`] maps a group to its replica's inbox;
//! it is the transport's [`RaftSink`] (peer messages and failure reports), and
//! the tick driver reaches every replica through it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use log::debug;

use crate::config::{RaftTiming, StoreSettings};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::raft::replica::{Gauge, PartitionReplica, ReplicaHandle, ReplicaMsg};
use crate::raft::storage::NodeStorage;
use crate::transport::wire::GroupId;
use crate::transport::{PeerSenders, RaftSink};

/// Maps each group to its replica's inbox.
///
/// Written only when a group is created and read on every inbound frame. The
/// lock is held for a map lookup and a `try_send`, never across an await,
/// which is simpler than routing every frame through one more task.
#[derive(Clone, Default)]
pub struct Router {
    inboxes: Arc<RwLock<HashMap<GroupId, Inbox>>>,
    /// Raft messages that arrived before their group was created, at most
    /// [`EARLY_MESSAGES`]: a node without state answers its peers while it
    /// is still creating `__meta/0`, and a vote request or a heartbeat
    /// dropped then would cost the cluster an election timeout or a
    /// heartbeat interval (seen as 3-node bootstraps of 60-270 ms instead
    /// of 15).
    early: Arc<std::sync::Mutex<Vec<(GroupId, ReplicaMsg)>>>,
}

/// A replica's inbox, and its gauge (which tells the tick driver whether a
/// tick may wait).
struct Inbox {
    tx: flume::Sender<ReplicaMsg>,
    gauge: Arc<Gauge>,
}

/// How many Raft messages the router holds for groups not created yet.
const EARLY_MESSAGES: usize = 64;

impl Router {
    /// Delivers `msg` to the group's replica without waiting. Returns false if
    /// the group is unknown or its inbox is full (the message is dropped).
    pub fn deliver(&self, group: &GroupId, msg: ReplicaMsg) -> bool {
        let inboxes = self.inboxes.read().unwrap_or_else(|e| e.into_inner());
        match inboxes.get(group) {
            Some(inbox) => inbox.tx.try_send(msg).is_ok(),
            None => {
                // Snapshots are large and only sent to a group that exists.
                let small = matches!(&msg, ReplicaMsg::Raft(m)
                    if m.get_msg_type() != raft::prelude::MessageType::MsgSnapshot);
                let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
                if small && early.len() < EARLY_MESSAGES {
                    early.push((group.clone(), msg));
                    true
                } else {
                    debug!("dropping message for unknown group {group}");
                    false
                }
            }
        }
    }

    /// Sends a tick to every replica, except a quiet follower with an
    /// empty inbox whose leader reset its election clock within the last
    /// `window`: it runs the tick when the leader's next message wakes it
    /// (see [`Gauge::defer_tick`]). A message already waiting in the inbox
    /// gets the tick queued behind it, as it would without deferral. A full
    /// inbox skips this tick; a stalled replica never receives a burst of
    /// catch-up ticks.
    pub fn tick_all(&self, window: Duration) {
        let inboxes = self.inboxes.read().unwrap_or_else(|e| e.into_inner());
        for inbox in inboxes.values() {
            if !(inbox.tx.is_empty() && inbox.gauge.defer_tick(window)) {
                let _ = inbox.tx.try_send(ReplicaMsg::Tick);
            }
        }
    }

    /// Delivers a message made by `msg` to every replica, without waiting.
    pub fn broadcast(&self, msg: impl Fn() -> ReplicaMsg) {
        let inboxes = self.inboxes.read().unwrap_or_else(|e| e.into_inner());
        for inbox in inboxes.values() {
            let _ = inbox.tx.try_send(msg());
        }
    }

    fn register(&self, group: GroupId, tx: flume::Sender<ReplicaMsg>, gauge: Arc<Gauge>) {
        let mut inboxes = self.inboxes.write().unwrap_or_else(|e| e.into_inner());
        // Under the write lock, so that no early message slips in between.
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        for (_, msg) in early.extract_if(.., |(g, _)| *g == group) {
            let _ = tx.try_send(msg);
        }
        drop(early);
        inboxes.insert(group, Inbox { tx, gauge });
    }
}

/// The transport delivers into the replicas through the router.
impl RaftSink for Router {
    fn deliver(&self, group: &GroupId, message: raft::prelude::Message) {
        Router::deliver(self, group, ReplicaMsg::Raft(Box::new(message)));
    }

    fn unreachable(&self, group: &GroupId, peer: u64) {
        Router::deliver(self, group, ReplicaMsg::Unreachable(peer));
    }

    fn peer_closed(&self, peer: u64) {
        self.broadcast(|| ReplicaMsg::PeerClosed(peer));
    }

    fn snapshot_sent(&self, group: &GroupId, peer: u64, delivered: bool) {
        Router::deliver(self, group, ReplicaMsg::SnapshotStatus { peer, delivered });
    }
}

/// Owns the node's Raft groups.
pub struct RaftGroupManager {
    node_id: u64,
    timing: RaftTiming,
    settings: StoreSettings,
    router: Router,
    peers: PeerSenders,
    groups: HashMap<GroupId, ReplicaHandle>,
    metrics: Arc<Metrics>,
    tasks: Vec<crate::runtime::Task<()>>,
}

impl RaftGroupManager {
    /// A manager with no groups yet.
    pub fn new(
        node_id: u64,
        timing: RaftTiming,
        settings: StoreSettings,
        router: Router,
        peers: PeerSenders,
        metrics: Arc<Metrics>,
    ) -> Self {
        RaftGroupManager {
            node_id,
            timing,
            settings,
            router,
            peers,
            groups: HashMap::new(),
            metrics,
            tasks: Vec::new(),
        }
    }

    /// Creates `group` from its store and starts its driver. `fatal` receives
    /// the error if the driver stops on a storage failure or panics.
    pub fn create_group(
        &mut self,
        group: GroupId,
        storage: NodeStorage,
        shutdown: flume::Receiver<()>,
        fatal: flume::Sender<Error>,
    ) -> Result<ReplicaHandle> {
        if self.groups.contains_key(&group) {
            return Err(Error::Internal(format!("group {group} exists already")));
        }
        let (replica, handle) = PartitionReplica::new(
            self.node_id,
            group.clone(),
            &self.timing,
            &self.settings,
            storage,
            self.peers.clone(),
            self.metrics.clone(),
        )?;
        self.router
            .register(group.clone(), handle.sender(), handle.shared_gauge());
        // The replica is a task the node cannot run without: if it fails or
        // panics, `fatal` hears of it and the node exits.
        let task = crate::runtime::spawn(replica.run(shutdown.clone()));
        self.tasks.push(crate::runtime::supervise(
            format!("the replica of {group}"),
            task,
            &shutdown,
            &fatal,
        ));
        self.groups.insert(group, handle.clone());
        Ok(handle)
    }

    /// The replica of `group`, if it exists.
    pub fn group(&self, group: &GroupId) -> Option<&ReplicaHandle> {
        self.groups.get(group)
    }

    /// Waits for every driver to stop (after shutdown closed).
    pub async fn join(&mut self) {
        for task in self.tasks.drain(..) {
            task.await;
        }
    }
}

/// Ticks every replica each tick interval until `shutdown` closes, from the
/// moment `start` receives a message (or its sender is gone). Each wait
/// starts after the previous tick, so a stall never causes a burst. A quiet
/// follower's tick waits for its leader's next heartbeat
/// ([`Router::tick_all`]), so an idle follower is woken once per heartbeat,
/// not twice.
///
/// The coordinator opens `start` once a quorum is live: before that no
/// election can succeed, and a follower whose election timer ran during a
/// slow quorum wait would campaign the moment its peers answer, racing the
/// lowest id's campaign (seen on a loaded machine: node 2 elected in a
/// 3-node bootstrap that node 1 should have won, after a 330 ms wait).
pub fn spawn_tick_driver(
    router: Router,
    timing: &RaftTiming,
    start: flume::Receiver<()>,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    // A thread of its own, not a timer on the reactor: each of async-io's
    // timers is one more wakeup of the reactor thread (to re-arm its
    // timerfd) on top of the one that fires it, and the tick is most of
    // what an idle node does. Here a tick is one wakeup of this thread and
    // one of the executor's.
    let (interval, window) = (timing.tick_interval, defer_window(timing));
    let (done_tx, done) = flume::bounded::<()>(1);
    let ticker = std::thread::Builder::new()
        .name("raft-tick".into())
        .spawn(move || {
            let _done = done_tx; // closes when this thread ends
            let started = flume::Selector::new()
                .recv(&start, |_| true)
                .recv(&shutdown, |_| false)
                .wait();
            if !started {
                return;
            }
            // A random phase: nodes started together would otherwise tick in
            // step, their followers would time out on the same tick after a
            // leader dies, and split the vote (seen as failovers of 600 ms
            // and more). With independent phases two followers rarely fire
            // within a round trip of each other.
            let mut wait = interval.mul_f64(fastrand::f64());
            while let Err(flume::RecvTimeoutError::Timeout) = shutdown.recv_timeout(wait) {
                wait = interval;
                router.tick_all(window);
            }
        });
    if let Err(e) = ticker {
        log::error!("cannot start the raft tick thread: {e}");
    }
    crate::runtime::spawn(async move {
        let _ = done.recv_async().await;
    })
}

/// How long after its leader's last heartbeat a quiet follower's tick may
/// wait for the next one ([`Gauge::defer_tick`]): a little over one tick, so
/// that heartbeats that come a few milliseconds late (both nodes' tick
/// threads wake with some jitter) still carry the tick. It bounds how late
/// a held-back tick runs; the tick on which an election would fire is never
/// held back at all.
fn defer_window(timing: &RaftTiming) -> Duration {
    timing.tick_interval + timing.tick_interval / 4
}
