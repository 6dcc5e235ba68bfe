//! The group manager, the router and the tick driver.
//!
//! [`RaftGroupManager`] creates replicas keyed by (topic, partition) and starts
//! each one's driver task. The [`Router`] maps a group to its replica's inbox;
//! it is the transport's [`RaftSink`] (peer messages and failure reports), and
//! the tick driver reaches every replica through it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
    /// Raft's tick instants, shared with every replica's gauge.
    clock: Arc<TickClock>,
}

/// Raft's tick instants, numbered from 1 after the ticks start (every
/// moment before is instant 0): instant `k` is `k - 1` tick intervals after
/// the first, which falls a random part of an interval after the start. The
/// tick driver and the replicas read the same numbers, so a quiet follower
/// can tell how many ticks passed while nobody ticked it
/// ([`Gauge::tick_due`]).
#[derive(Debug)]
pub struct TickClock {
    base: Instant,
    /// Nanoseconds from `base` to instant 1.
    first_ns: AtomicU64,
    /// The tick interval in nanoseconds; 0 until the ticks start.
    interval_ns: AtomicU64,
    /// The last instant the tick driver handled (ticked, or passed over
    /// for a quiet follower). Replicas count owed ticks up to it, not up
    /// to the wall clock's instant, so that each instant the driver handles
    /// is counted once, by the driver or by the replica. (After a stall the
    /// driver handles only the current instant: a replica it ticks gets one
    /// tick for the instants missed, and a quiet follower counts them all,
    /// so its election fires on resuming if its time passed meanwhile.)
    handled: AtomicU64,
}

impl Default for TickClock {
    fn default() -> Self {
        TickClock {
            base: Instant::now(),
            first_ns: AtomicU64::new(0),
            interval_ns: AtomicU64::new(0),
            handled: AtomicU64::new(0),
        }
    }
}

impl TickClock {
    /// Starts the instants: instant 1 comes `phase` (0 to 1) of an
    /// interval after now.
    fn start(&self, interval: Duration, phase: f64) {
        let now = self.base.elapsed() + interval.mul_f64(phase.clamp(0.0, 1.0));
        self.first_ns
            .store(now.as_nanos() as u64, Ordering::Release);
        let interval = (interval.as_nanos() as u64).max(1);
        self.interval_ns.store(interval, Ordering::Release);
    }

    /// The number of the last instant at or before `now`.
    pub fn index(&self, now: Instant) -> u64 {
        let interval = self.interval_ns.load(Ordering::Acquire);
        if interval == 0 {
            return 0;
        }
        let since = now.saturating_duration_since(self.base).as_nanos() as u64;
        match since.checked_sub(self.first_ns.load(Ordering::Acquire)) {
            Some(after_first) => 1 + after_first / interval,
            None => 0,
        }
    }

    /// The last instant the tick driver handled (0 before the start).
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// When instant `k` (at least 1) comes; `None` before the start.
    fn at(&self, k: u64) -> Option<Instant> {
        let interval = self.interval_ns.load(Ordering::Acquire);
        if interval == 0 {
            return None;
        }
        let first = self.first_ns.load(Ordering::Acquire);
        let ns = first.saturating_add(k.saturating_sub(1).saturating_mul(interval));
        self.base.checked_add(Duration::from_nanos(ns))
    }
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

    /// Ticks every replica for instant `k`, except a quiet follower whose
    /// election is not due yet: it counts the ticks it missed when its
    /// next message wakes it ([`Gauge::tick_due`]). A full inbox skips this
    /// tick. Returns the next instant some replica needs ticked.
    fn tick_at(&self, k: u64) -> Option<u64> {
        let inboxes = self.inboxes.read().unwrap_or_else(|e| e.into_inner());
        let mut next = None::<u64>;
        for inbox in inboxes.values() {
            let (deliver, wanted) = inbox.gauge.tick_due(k);
            if deliver {
                let _ = inbox.tx.try_send(ReplicaMsg::Tick);
            }
            next = Some(next.map_or(wanted, |n| n.min(wanted)));
        }
        next
    }

    /// The next instant after `k` some replica needs ticked, ticking none.
    fn next_tick(&self, k: u64) -> Option<u64> {
        let inboxes = self.inboxes.read().unwrap_or_else(|e| e.into_inner());
        inboxes.values().map(|i| i.gauge.next_tick(k)).min()
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
        gauge.use_clock(self.clock.clone());
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

/// Ticks the replicas from the moment `start` receives a message (or its
/// sender is gone) until `shutdown` closes. The ticks are a
/// [`crate::runtime::Clock`]: the executor's thread runs them when its park
/// times out, so a tick costs one wakeup, not a timer thread's and then the
/// executor's. Instant `k` is ticked once, however late the thread gets to
/// it, so a stall never causes a burst of catch-up ticks. A quiet follower is
/// not ticked until its election would fire ([`Gauge::tick_due`]): while its
/// leader's heartbeats come, nothing but them wakes it.
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
    let interval = timing.tick_interval;
    crate::runtime::spawn(async move {
        let started = futures_lite::future::or(
            async {
                let _ = start.recv_async().await;
                true
            },
            async {
                let _ = shutdown.recv_async().await;
                false
            },
        )
        .await;
        if !started {
            return;
        }
        // A random phase: nodes started together would otherwise tick in
        // step, their followers would time out on the same tick after a
        // leader dies, and split the vote (seen as failovers of 600 ms and
        // more). With independent phases two followers rarely fire within a
        // round trip of each other.
        router.clock.start(interval, fastrand::f64());
        let driver: Arc<dyn crate::runtime::Clock> = Arc::new(TickDriver {
            router,
            turn: Mutex::new(()),
        });
        // Removed when this task ends or is dropped.
        let _added = crate::runtime::add_clock(driver);
        let _ = shutdown.recv_async().await;
    })
}

/// The ticks, as a clock of the executor's thread. The last instant it
/// ticked is the clock's `handled`.
struct TickDriver {
    router: Router,
    /// One run at a time, where several threads run the executor (tests).
    turn: Mutex<()>,
}

impl crate::runtime::Clock for TickDriver {
    fn run_due(&self, now: Instant) -> Option<Instant> {
        let clock = &self.router.clock;
        let k = clock.index(now);
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let last = clock.handled();
        let next = if k > last {
            let next = self.router.tick_at(k);
            clock.handled.store(k, Ordering::Release);
            next
        } else {
            self.router.next_tick(last)
        };
        clock.at(next?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_instants_count_intervals_from_a_random_first_one() {
        let clock = TickClock::default();
        let before = Instant::now();
        // Before the start, every moment is instant 0 and none is due.
        assert_eq!(clock.index(before + Duration::from_secs(5)), 0);
        assert_eq!(clock.at(1), None);
        clock.start(Duration::from_millis(100), 0.5);
        let after = Instant::now();
        let first = clock.at(1).expect("started");
        let half = Duration::from_millis(50);
        assert!(
            first >= before + half && first <= after + half,
            "instant 1 is not half an interval after the start"
        );
        assert_eq!(clock.index(first - Duration::from_nanos(1)), 0);
        assert_eq!(clock.index(first), 1);
        assert_eq!(clock.at(4), Some(first + Duration::from_millis(300)));
        assert_eq!(clock.index(first + Duration::from_millis(299)), 3);
        assert_eq!(clock.index(first + Duration::from_millis(300)), 4);
    }

    #[test]
    fn the_driver_ticks_each_instant_once_and_a_quiet_follower_only_on_its_election() {
        let router = Router::default();
        let (tx, inbox) = flume::bounded(8);
        let gauge = Arc::new(Gauge::default());
        router.register(GroupId::meta(), tx, gauge.clone());
        let driver = TickDriver {
            router: router.clone(),
            turn: Mutex::new(()),
        };
        use crate::runtime::Clock as _;
        // Not started: nothing due, no deadline.
        assert_eq!(driver.run_due(Instant::now()), None);
        router.clock.start(Duration::from_millis(100), 0.0);
        let at = |k| router.clock.at(k).expect("started");
        // A leader: one tick per instant, however late the driver runs.
        assert_eq!(driver.run_due(at(1)), Some(at(2)));
        assert_eq!(driver.run_due(at(1)), Some(at(2)));
        assert_eq!(driver.run_due(at(5)), Some(at(6)));
        assert_eq!(inbox.drain().count(), 2);
        // Quiet at instant 5 with its election 4 ticks away: the next
        // deadline is instant 9, and nothing is delivered before.
        gauge.sleep_at(Some(4), 5);
        assert_eq!(driver.run_due(at(5)), Some(at(9)));
        assert_eq!(driver.run_due(at(7)), Some(at(9)));
        assert!(inbox.is_empty());
        assert_eq!(driver.run_due(at(9)), Some(at(10)));
        assert!(matches!(inbox.try_recv(), Ok(ReplicaMsg::Tick)));
        assert_eq!(gauge.wake_at(9), 3);
        // The replica counts in the instants the driver handled: quiet now
        // (instant 9), woken after the driver passed over 10 and 11, it owes
        // two ticks, and the driver delivers none of them.
        assert_eq!(router.clock.handled(), 9);
        gauge.sleep(Some(4));
        assert_eq!(driver.run_due(at(10)), Some(at(13)));
        assert_eq!(driver.run_due(at(11)), Some(at(13)));
        assert_eq!(gauge.wake(), 2);
        assert!(inbox.is_empty());
        // Awake from here: instant 12 is delivered, not owed.
        assert_eq!(driver.run_due(at(12)), Some(at(13)));
        assert!(matches!(inbox.try_recv(), Ok(ReplicaMsg::Tick)));
        assert_eq!(gauge.wake(), 0);
    }
}
