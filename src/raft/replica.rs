//! The replica driver: one task per Raft group that alone owns its `RawNode`.
//!
//! Everything reaches the driver through one flume inbox ([`ReplicaMsg`]):
//! ticks, peer messages, transport reports, client proposals, read-index
//! requests, watches and queries. After each batch of inbox messages it
//! handles the Ready, in exactly one place and in the order raft-rs documents
//! (the Ready order below):
//!
//! 1. send `messages`;
//! 2. take the snapshot, 3. apply the committed entries, in a transaction of
//!    their own that needs no fsync (they are durable in the log already);
//! 4. persist snapshot, entries and hard state in one transaction (one
//!    fsync, only when raft needs it);
//! 5. only then send `persisted_messages` (a follower sends them before it
//!    applies, a leader applies and answers clients before its fsync);
//! 6. `advance`, then the light ready (commit index, messages, entries),
//!    applied in a second transaction that needs no fsync;
//! 7. `advance_apply`.
//!
//! Clients are answered once their entry is applied here, or once the applied
//! index passes their read index. Requests carry a deadline
//! (`request_timeout`): a proposal that never left this node (no leader)
//! fails as "not applied"; one that was handed to a leader but never came
//! back is "unknown" (it may still commit).
//!
//! The log held in memory is bounded: once `snapshot_entries` entries or
//! `snapshot_bytes` bytes were applied since the last snapshot, the log is
//! compacted, keeping a tail of a tenth of each for followers that lag a
//! little. Behind that tail a follower gets a snapshot, built off the
//! executor.
//!
//! Network sends never wait: they go into the transport's bounded queues. The
//! only awaits inside a Ready are the storage writes, which run off the
//! executor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use slog::Drain as _;

use crate::config::{RaftTiming, StoreSettings};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::raft::log::writer::{self, LogWriter};
use crate::raft::log::LogWrite;
use crate::raft::log_view::LogView;
use crate::raft::manager::TickClock;
use crate::raft::storage::{Applied, NodeStorage, Written};
use crate::runtime::or_shutdown;
use crate::store::disk::{ApplyBatch, StateStore};
use crate::store::{Outcome, Touched};
use crate::transport::wire::GroupId;
use crate::transport::PeerSenders;

/// Capacity of a replica's inbox. Peer messages and ticks that find it full
/// are dropped; Raft tolerates both. Client requests wait for room.
pub const INBOX_CAPACITY: usize = 1024;
/// Inbox messages handled before the next Ready.
pub const MAX_INBOX_BATCH: usize = 256;
/// Largest append a leader sends in one message.
pub const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Appends in flight to one follower.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Proposed but uncommitted bytes a leader accepts before it refuses more.
pub const MAX_UNCOMMITTED_BYTES: u64 = 32 * 1024 * 1024;
/// Committed entries handed to one Ready, in bytes.
pub const MAX_APPLY_BYTES_PER_READY: u64 = 16 * 1024 * 1024;
/// How long a follower waits for the kernel's answer when it asks whether
/// a leader whose stream closed still listens.
pub const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// When a dead leader's voters campaign at once, the second in id order
/// waits this long before it does, the third twice as long, and so on: long
/// enough for the first's election to finish on a loaded box.
pub const FAST_ELECTION_STAGGER: Duration = Duration::from_millis(30);
/// An apply batch with more entry data than this runs off the executor.
pub const INLINE_APPLY_BYTES: usize = 256 * 1024;
/// The state machine is checkpointed (made durable) at least this often
/// while it changes. The log keeps every entry since the last checkpoint,
/// so this bounds what a restart replays, and it is how often a page of the
/// store is rewritten on disk, however many puts changed it.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// A full disk's refusals are logged at most once per this interval.
pub const DISK_FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A leader hands off for a full disk at most once per this interval.
pub const DISK_FULL_HANDOFF_INTERVAL: Duration = Duration::from_secs(30);
/// ... or once this many bytes of entries were applied since the last one.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;
/// ... or once this many apply transactions were committed since the last
/// one. redb reuses the pages a transaction frees only after a durable
/// commit, so every apply until the next checkpoint takes fresh pages (a
/// leaf and the branches above it): this bounds how far the file grows
/// past the data it holds.
pub const CHECKPOINT_TRANSACTIONS: u64 = 1024;
/// ... or once the store's file took this many more bytes of disk since the
/// last one. Puts that land in one leaf of the tree (new keys in order)
/// free the pages they take within the same interval, so the transaction
/// bound alone is plenty for them; puts spread over the tree each take a
/// leaf and its branches afresh, and this bound catches them long before.
pub const CHECKPOINT_GROWTH: u64 = 256 * 1024;
/// The file's size is looked at (a `stat`) once per this many apply
/// transactions, not on each.
pub const GROWTH_CHECK_APPLIES: u64 = 16;
/// A node that applied nothing for this long, with everything it applied
/// checkpointed, is at rest: it compacts its log down to the tail it keeps
/// for lagging followers, so that a quiet node's log (on disk and in
/// memory) is small whatever the last burst of writes left.
pub const AT_REST: Duration = Duration::from_secs(1);
/// Entry bytes applied since the allocator's last trim before a node at
/// rest trims it again (see `PartitionReplica::maybe_trim`): a few writes
/// leave little behind, and a write every few seconds would otherwise
/// trim after each checkpoint.
pub const TRIM_AFTER_BYTES: u64 = 64 * 1024;
/// Ticks a read-index request may wait for its answer before it is asked
/// again (a leader drops it until it has committed an entry of its term).
pub const READ_INDEX_RETRY_TICKS: u64 = 2;

/// What a replica's inbox carries.
#[derive(Debug)]
pub enum ReplicaMsg {
    /// One logical clock tick, from the tick driver.
    Tick,
    /// A message from a peer.
    Raft(Box<Message>),
    /// A send to this peer failed.
    Unreachable(u64),
    /// This peer closed its stream to us: it stops, restarts, or died.
    PeerClosed(u64),
    /// The leader of `term`, `peer`, is gone: its stream closed and its port
    /// refuses connections (no process listens there).
    LeaderGone { peer: u64, term: u64 },
    /// Time for this node's turn to campaign after the leader of `term`
    /// went away (see [`ReplicaMsg::LeaderGone`]).
    FastCampaign { peer: u64, term: u64 },
    /// A snapshot send to `peer` finished or failed.
    SnapshotStatus { peer: u64, delivered: bool },
    /// Start an election now (the bootstrap shortcut).
    Campaign,
    /// A peer came up; a leader tells it at once instead of at the next
    /// heartbeat.
    PeerUp(u64),
    /// Reply with the current status.
    Status(flume::Sender<ReplicaStatus>),
    /// Send the status now and on every change of role, term, leader or
    /// leadership transfer.
    Subscribe(flume::Sender<ReplicaStatus>),
    /// If leader, hand leadership to the most up-to-date of `candidates`;
    /// replies with the chosen peer, or `None` if not leader or no candidate.
    TransferLeadership {
        candidates: Vec<u64>,
        reply: flume::Sender<Option<u64>>,
    },
    /// Propose a command (entry data); the reply comes once it is applied
    /// here, or when it fails or times out.
    Propose {
        data: Vec<u8>,
        reply: flume::Sender<WriteResult>,
    },
    /// Ask for a read index; the reply comes once this node has applied up
    /// to it, so a read that starts then is linearizable.
    ReadIndex { reply: flume::Sender<ReadResult> },
    /// Fire `fired` once a write touches `key` (or the prefix `key`); reply
    /// on `registered` once the watch is in place.
    Watch {
        key: String,
        prefix: bool,
        fired: flume::Sender<()>,
        registered: flume::Sender<()>,
    },
    /// A snapshot for followers was built off the executor.
    SnapshotBuilt(Result<raft::prelude::Snapshot>),
    /// A received snapshot whose data was checked; step it now.
    SnapshotChecked(Box<Message>),
    /// A received snapshot from this peer failed its check.
    SnapshotRejected(u64),
    /// On the leader: propose a membership change and reply once it is
    /// applied here. Removing the leader itself hands leadership over first.
    ChangeMembership {
        change: Box<ConfProposal>,
        reply: flume::Sender<WriteResult>,
    },
    /// Reply with the leader's view of replication, for membership upkeep.
    Progress(flume::Sender<Progress>),
    /// From the log writer: the writes of every Ready up to this number are
    /// durable.
    Persisted(u64),
    /// From the log writer: a write failed. Fatal.
    LogFailed(crate::error::Error),
    /// An apply batch run off the executor finished.
    Applied(Result<Written>),
    /// A checkpoint of the state machine finished: the applied index it made
    /// durable.
    Checkpointed(Result<u64>),
}

/// The leader's view of replication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// True if this node leads.
    pub leader: bool,
    /// The last index of the log.
    pub last_index: u64,
    /// The highest index each member is known to hold (leader only).
    pub matched: std::collections::BTreeMap<u64, u64>,
    /// Voters (both halves of a joint configuration).
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// A membership change is still in flight (or the group is in joint
    /// consensus): another one must wait.
    pub changing: bool,
}

/// A committed write: its index and what applying it came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The entry's Raft index: the `ModifyIndex` of what it wrote.
    pub index: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// Why a request got no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No leader was known for the whole request timeout; a write never left
    /// this node, so it was not applied.
    #[error("no cluster leader")]
    NoLeader,
    /// The request was handed to a leader but no answer came in time; a
    /// write may or may not have been applied.
    #[error("timed out waiting for the cluster")]
    TimedOut,
    /// The replica stopped (the node is shutting down) before the request
    /// left this node: a write was not applied.
    #[error("the node is shutting down")]
    Stopped,
    /// The replica stopped (shutting down, or removed) after a write was
    /// handed to raft: it may or may not have been applied.
    #[error("the node stopped before the write's outcome was known")]
    Abandoned,
    /// The leader a write was handed to lost its leadership, and the new
    /// leader's first entries applied without it: it was most likely lost,
    /// but a delayed copy may still commit.
    #[error("the leader lost its leadership before the write's outcome was known")]
    LeaderLost,
    /// Only the leader does this, and this node does not lead.
    #[error("this node is not the leader")]
    NotLeader,
    /// Another membership change is in flight.
    #[error("another membership change is in progress")]
    Busy,
}

/// The answer to a proposal.
pub type WriteResult = std::result::Result<Committed, RequestError>;
/// The answer to a read-index request: the index now applied here.
pub type ReadResult = std::result::Result<u64, RequestError>;

/// A replica's view of its group, as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The group.
    pub group: GroupId,
    /// This node's id.
    pub node_id: u64,
    /// This node's role in the group.
    pub role: StateRole,
    /// The current term.
    pub term: u64,
    /// The node this one voted for in the current term (0: none).
    pub vote: u64,
    /// The known leader, if any.
    pub leader_id: Option<u64>,
    /// The highest index known committed.
    pub commit_index: u64,
    /// The highest index applied.
    pub applied_index: u64,
    /// The running hash of the entries applied up to `applied_index`, if
    /// known: two nodes at one applied index hold the same hash unless
    /// they applied different logs.
    pub applied_hash: Option<u64>,
    /// The last index in the log.
    pub last_index: u64,
    /// The peer a leader is handing leadership to, while it does.
    pub transferring_to: Option<u64>,
    /// The index of the last compaction or installed snapshot: the log
    /// starts after it.
    pub snapshot_index: u64,
    /// The voters of the group's configuration as this replica has applied
    /// it (during a joint change, the incoming half), sorted.
    pub voters: Vec<u64>,
}

impl ReplicaStatus {
    /// The role as the admin API spells it.
    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }
}

pub use crate::metrics::role_name;

/// What HTTP handlers read on every request without asking the driver:
/// whether a leader is known and when it was last heard from.
#[derive(Debug)]
pub struct Gauge {
    epoch: Instant,
    leader: AtomicU64,
    role: AtomicU8,
    /// Milliseconds after `epoch` of the last message from the leader.
    contact_ms: AtomicU64,
    /// What [`Gauge::tick_due`] needs, in one word so that the tick driver
    /// and the replica agree on it. While the replica is a quiet follower
    /// waiting for its next message: [`QUIET`], the ticks until its
    /// election would fire (bits 32 to 62), and the instant it went quiet
    /// (bits 0 to 31, the low bits of the instant's number). Otherwise: the
    /// ticks the driver found owed when it ticked a quiet follower's
    /// election (bits 0 to 31). The replica takes the whole word (and so
    /// stops being quiet) as soon as it wakes.
    ticks: AtomicU64,
    /// The tick instants ([`Router`](super::manager::Router) sets it).
    clock: std::sync::OnceLock<Arc<TickClock>>,
}

/// The quiet bit of [`Gauge::ticks`].
const QUIET: u64 = 1 << 63;
/// The low field of [`Gauge::ticks`]: an instant or owed ticks.
const LOW: u64 = (1 << 32) - 1;

/// A quiet word's election budget (at least 1) and the instants passed from
/// the one it went quiet at to `k` (negative if `k` is older).
fn quiet_fields(word: u64, k: u64) -> (i64, i64) {
    let budget = (((word & !QUIET) >> 32) as i64).max(1);
    let passed = ((k & LOW) as u32).wrapping_sub((word & LOW) as u32) as i32;
    (budget, passed as i64)
}

impl Default for Gauge {
    fn default() -> Self {
        Gauge {
            epoch: Instant::now(),
            leader: AtomicU64::new(0),
            role: AtomicU8::new(0),
            contact_ms: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            clock: std::sync::OnceLock::new(),
        }
    }
}

impl Gauge {
    /// The known leader, if any.
    pub fn leader(&self) -> Option<u64> {
        match self.leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Time since this node last heard from the leader (zero on the leader).
    pub fn last_contact(&self) -> Duration {
        if self.role.load(Ordering::Relaxed) == 1 {
            return Duration::ZERO;
        }
        let at = Duration::from_millis(self.contact_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(at)
    }

    /// Ties the gauge to the node's tick instants.
    pub(crate) fn use_clock(&self, clock: Arc<TickClock>) {
        let _ = self.clock.set(clock);
    }

    /// The last tick instant the driver handled (0 before the ticks start).
    fn instant(&self) -> u64 {
        self.clock.get().map_or(0, |c| c.handled())
    }

    /// Called by the tick driver at instant `k`: whether to deliver the
    /// tick, and the next instant this replica needs ticked.
    ///
    /// Every replica is ticked at every instant except a quiet follower,
    /// which is ticked only on the instant its election would fire. The
    /// ticks before that are owed: when a message wakes the replica, it
    /// first runs one tick for each instant the driver passed over since it
    /// went quiet (never the one its election fires on); on its election's
    /// instant, the driver delivers them with the tick. Each instant is one
    /// tick, counted by the driver or by the replica. The executor's thread
    /// runs the driver before any task when it wakes, so the owed ticks run
    /// before the message that woke the replica, as a delivered tick would
    /// have; only an instant that comes while the thread is busy is handled
    /// after the tasks it is running, and may so count after a message
    /// rather than before. A silent leader is noticed as soon as before, and
    /// an idle follower is woken by its leader's heartbeats alone.
    pub fn tick_due(&self, k: u64) -> (bool, u64) {
        let mut word = self.ticks.load(Ordering::Acquire);
        loop {
            if word & QUIET == 0 {
                return (true, k + 1);
            }
            let (budget, passed) = quiet_fields(word, k);
            if passed < budget {
                return (false, k + (budget - passed) as u64);
            }
            // The election's tick: the ticks before it are owed.
            let owed = (budget - 1) as u64;
            match self
                .ticks
                .compare_exchange(word, owed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (true, k + 1),
                Err(now) => word = now,
            }
        }
    }

    /// The next instant after `k` this replica needs ticked.
    pub fn next_tick(&self, k: u64) -> u64 {
        let word = self.ticks.load(Ordering::Acquire);
        if word & QUIET == 0 {
            return k + 1;
        }
        let (budget, passed) = quiet_fields(word, k);
        k + (budget - passed).max(1) as u64
    }

    /// The replica woke: it is no longer quiet, and runs the ticks owed to
    /// it ([`Gauge::tick_due`]).
    pub(crate) fn wake(&self) -> u64 {
        self.wake_at(self.instant())
    }

    pub(crate) fn wake_at(&self, k: u64) -> u64 {
        let word = self.ticks.swap(0, Ordering::AcqRel);
        if word & QUIET == 0 {
            return word & LOW;
        }
        let (budget, passed) = quiet_fields(word, k);
        passed.clamp(0, budget - 1) as u64
    }

    /// The replica waits for its next message; `budget` is `Some(n)` if it
    /// is a quiet follower whose election fires on the `n`th tick from now.
    pub(crate) fn sleep(&self, budget: Option<u64>) {
        self.sleep_at(budget, self.instant());
    }

    pub(crate) fn sleep_at(&self, budget: Option<u64>, k: u64) {
        let word = budget.map_or(0, |n| {
            let n = n.clamp(1, i32::MAX as u64);
            QUIET | (n << 32) | (k & LOW)
        });
        self.ticks.store(word, Ordering::Release);
    }

    fn set(&self, role: StateRole, leader: u64) {
        self.leader.store(leader, Ordering::Relaxed);
        let role = u8::from(role == StateRole::Leader);
        self.role.store(role, Ordering::Relaxed);
    }

    fn contact(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.contact_ms.store(now, Ordering::Relaxed);
    }
}

/// A cloneable handle to a running replica.
#[derive(Clone)]
pub struct ReplicaHandle {
    tx: flume::Sender<ReplicaMsg>,
    gauge: Arc<Gauge>,
}

impl ReplicaHandle {
    /// The current status; `None` once the replica has stopped.
    pub async fn status(&self) -> Option<ReplicaStatus> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send_async(ReplicaMsg::Status(tx)).await.ok()?;
        rx.recv_async().await.ok()
    }

    /// A stream of statuses: the current one, then one per change.
    pub async fn subscribe(&self) -> Option<flume::Receiver<ReplicaStatus>> {
        let (tx, rx) = flume::unbounded();
        self.tx.send_async(ReplicaMsg::Subscribe(tx)).await.ok()?;
        Some(rx)
    }

    /// Asks the replica to start an election now.
    pub async fn campaign(&self) {
        let _ = self.tx.send_async(ReplicaMsg::Campaign).await;
    }

    /// See [`ReplicaMsg::PeerUp`].
    pub async fn peer_up(&self, peer: u64) {
        let _ = self.tx.send_async(ReplicaMsg::PeerUp(peer)).await;
    }

    /// See [`ReplicaMsg::TransferLeadership`].
    pub async fn transfer_leadership(&self, candidates: Vec<u64>) -> Option<u64> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(ReplicaMsg::TransferLeadership { candidates, reply })
            .await
            .ok()?;
        rx.recv_async().await.ok().flatten()
    }

    /// Proposes a command and waits until it is applied on this node.
    pub async fn propose(&self, data: Vec<u8>) -> WriteResult {
        let (reply, rx) = flume::bounded(1);
        self.ask(ReplicaMsg::Propose { data, reply }, rx).await?
    }

    /// Waits until this node has applied everything committed before the
    /// call (raft's ReadIndex): a read that starts afterwards is
    /// linearizable. Returns the read index.
    pub async fn read_index(&self) -> ReadResult {
        let (reply, rx) = flume::bounded(1);
        self.ask(ReplicaMsg::ReadIndex { reply }, rx).await?
    }

    /// Registers a watch on `key` (or the prefix `key`). The receiver gets a
    /// message once a later write may have changed what a query of it sees.
    pub async fn watch(&self, key: String, prefix: bool) -> Option<flume::Receiver<()>> {
        let (fired, watch) = flume::bounded(1);
        let (registered, ack) = flume::bounded(1);
        self.tx
            .send_async(ReplicaMsg::Watch {
                key,
                prefix,
                fired,
                registered,
            })
            .await
            .ok()?;
        ack.recv_async().await.ok()?;
        Some(watch)
    }

    /// Proposes a membership change (this node must lead); the answer comes
    /// once it is applied here.
    pub async fn change_membership(&self, change: ConfProposal) -> WriteResult {
        let (reply, rx) = flume::bounded(1);
        let msg = ReplicaMsg::ChangeMembership {
            change: Box::new(change),
            reply,
        };
        self.ask(msg, rx).await?
    }

    /// The leader's view of replication; `None` once stopped.
    pub async fn progress(&self) -> Option<Progress> {
        let (reply, rx) = flume::bounded(1);
        self.tx.send_async(ReplicaMsg::Progress(reply)).await.ok()?;
        rx.recv_async().await.ok()
    }

    /// Leader and contact, read without a round trip to the driver.
    pub fn gauge(&self) -> &Gauge {
        &self.gauge
    }

    async fn ask<T>(
        &self,
        msg: ReplicaMsg,
        rx: flume::Receiver<T>,
    ) -> std::result::Result<T, RequestError> {
        // The driver answers by the request's deadline, or drops the
        // sender when it stops; a driver that fails ends the process. So no
        // timer of our own (arming one costs a reactor wakeup per request).
        self.tx
            .send_async(msg)
            .await
            .map_err(|_| RequestError::Stopped)?;
        rx.recv_async().await.map_err(|_| RequestError::Stopped)
    }

    pub(crate) fn sender(&self) -> flume::Sender<ReplicaMsg> {
        self.tx.clone()
    }

    pub(crate) fn shared_gauge(&self) -> Arc<Gauge> {
        self.gauge.clone()
    }
}

/// Keeps one append acknowledgement per peer and term, the highest: raft
/// reads an ack as "I hold everything up to this index", so the others say
/// nothing more, and a follower that took several appends in one Ready
/// sends one ack, not one per append.
fn coalesce_acks(messages: Vec<Message>) -> Vec<Message> {
    let is_ack = |m: &Message| m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject;
    if messages.iter().filter(|m| is_ack(m)).count() < 2 {
        return messages;
    }
    let mut best: HashMap<(u64, u64), u64> = HashMap::new();
    for m in messages.iter().filter(|m| is_ack(m)) {
        let top = best.entry((m.to, m.term)).or_insert(m.index);
        *top = (*top).max(m.index);
    }
    messages
        .into_iter()
        .filter(|m| {
            if !is_ack(m) {
                return true;
            }
            // Keep the first ack that carries the highest index.
            match best.get(&(m.to, m.term)) {
                Some(&top) if top == m.index => {
                    best.remove(&(m.to, m.term));
                    true
                }
                _ => false,
            }
        })
        .collect()
}

/// The hard state a Ready's log write carries, given the one the Ready
/// brought (`from_ready`), the store's after it (`current`), whether it
/// changes the term or vote (`promises`), whether the Ready writes entries,
/// and whether it commits a membership change.
///
/// A commit index alone is not written (`commit_unwritten` is set): after a
/// write's acks, neither the leader nor a follower wakes its log thread, and
/// the next write of entries carries it. Except when the Ready commits a
/// membership change: then the hard state is written (and the caller syncs
/// it). A node restarted with a commit index below the change would replay
/// up to it only, run on the configuration before it (the state machine's
/// last checkpoint), and raft's guard against campaigning with a committed
/// change not yet applied would not see it. With a joint change (replacing
/// a voter), two nodes restarted so could elect a leader of the old voter
/// set while the others lead the new one.
fn hard_state_to_write(
    from_ready: Option<HardState>,
    current: &HardState,
    promises: bool,
    writes_entries: bool,
    commits_conf: bool,
    commit_unwritten: &mut bool,
) -> Option<HardState> {
    let write = if commits_conf {
        Some(current.clone())
    } else if !promises && !writes_entries && from_ready.is_some() {
        *commit_unwritten = true;
        None
    } else if writes_entries && *commit_unwritten && from_ready.is_none() {
        Some(current.clone())
    } else {
        from_ready
    };
    if write.is_some() {
        *commit_unwritten = false;
    }
    write
}

/// Identifies a proposal in its entry's context, so that the node that
/// proposed it can answer its client once it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProposalId {
    node: u64,
    /// Random per process: a request id of an earlier run of this node never
    /// matches one of this run.
    incarnation: u64,
    request: u64,
}

impl ProposalId {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        for n in [self.node, self.incarnation, self.request] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    fn decode(context: &[u8]) -> Option<ProposalId> {
        let context = context.get(..24)?;
        let n = |i: usize| u64::from_be_bytes(context[i * 8..i * 8 + 8].try_into().expect("8"));
        Some(ProposalId {
            node: n(0),
            incarnation: n(1),
            request: n(2),
        })
    }
}

struct Proposal {
    reply: flume::Sender<WriteResult>,
    started: Instant,
    deadline: Instant,
    /// The entry data, while it waits for a leader; `None` once handed to
    /// raft.
    unsent: Option<Vec<u8>>,
    /// The leader it was handed to (this node, or the one raft forwarded
    /// it to).
    handed_to: u64,
}

struct ReadWaiter {
    reply: flume::Sender<ReadResult>,
    deadline: Instant,
}

struct Watcher {
    key: String,
    prefix: bool,
    fired: flume::Sender<()>,
}

/// One Raft group's driver. Built by the group manager and run as a task.
pub struct PartitionReplica {
    group: GroupId,
    node: RawNode<LogView>,
    store: Arc<StateStore>,
    log: LogWriter,
    peers: PeerSenders,
    inbox: flume::Receiver<ReplicaMsg>,
    /// Our own inbox, for work finished off the executor.
    own: flume::Sender<ReplicaMsg>,
    subscribers: Vec<flume::Sender<ReplicaStatus>>,
    published: Option<(StateRole, u64, u64, Option<u64>)>,
    metrics: Arc<Metrics>,
    gauge: Arc<Gauge>,
    timing: RaftTiming,
    request_timeout: Duration,
    ticks: u64,
    /// The term of a leader whose process is gone, while this node stands
    /// in the election that replaces it: its vote requests count the
    /// kernel's word past the dead leader's lease (see `fast_campaign`).
    gone_leader_term: Option<u64>,
    /// The latest term for which this node granted another voter's
    /// pre-vote, to whom, and when: after a gone leader, a voter that did so
    /// within an election timeout leaves that election to the other instead
    /// of standing too (see `fast_campaign`).
    pre_vote_granted: Option<(u64, u64, Instant)>,
    /// When a refusal for a full disk was last logged.
    disk_full_logged: Option<Instant>,
    /// When this node last handed off its leadership for a full disk.
    disk_full_handoff: Option<Instant>,
    incarnation: u64,
    next_request: u64,
    proposals: HashMap<u64, Proposal>,
    next_read: u64,
    reads_queued: Vec<ReadWaiter>,
    /// Read-index requests asked of raft: request number of their context
    /// -> (tick asked, waiters).
    reads_asked: HashMap<u64, (u64, Vec<ReadWaiter>)>,
    /// Answered read indexes waiting for the applied index to reach them.
    reads_ready: Vec<(u64, Vec<ReadWaiter>)>,
    watchers: Vec<Watcher>,
    building_snapshot: bool,
    /// Peers whose snapshot is being checked: one check in flight per peer
    /// (another snapshot from it meanwhile is dropped; raft resends).
    checking_snapshots: std::collections::HashSet<u64>,
    /// The index of an applied change that removed this node.
    removed_at: Option<u64>,
    /// A change that removes this leader, waiting for the new leader.
    handoff: Option<(ConfProposal, flume::Sender<WriteResult>, Instant)>,
    /// The highest index applied to the store (raft learns it a step later,
    /// at `advance_apply`).
    applied: u64,
    /// The running hash of the entries applied up to `applied`.
    applied_hash: Option<u64>,
    /// Messages that wait for their Ready's log write (votes, append acks),
    /// by Ready number, oldest first, with the (term, vote) that write
    /// promises when it changes them (logged once durable).
    unpersisted: std::collections::VecDeque<Unpersisted>,
    /// A new commit index that no log write carried yet: a Ready that only
    /// moves the commit index writes nothing, and the next write of entries
    /// carries it. Raft keeps the commit index in memory; on disk it only
    /// saves a restart some replay, and recovery never starts below the
    /// applied index the state machine made durable.
    commit_unwritten: bool,
    /// Apply batches not yet applied: they wait while a checkpoint or a
    /// large batch runs off the executor, so that batches apply in order.
    pending_apply: std::collections::VecDeque<ApplyBatch>,
    /// A checkpoint or a large apply batch runs off the executor.
    store_busy: bool,
    /// The applied index the last checkpoint made durable: the log keeps
    /// every entry after it.
    checkpointed: u64,
    /// When the last checkpoint started.
    last_checkpoint: Instant,
    /// Entry bytes applied since the last checkpoint.
    applied_bytes: u64,
    /// Apply transactions since the last checkpoint.
    applies: u64,
    /// The store file's size on disk when the last checkpoint started.
    checkpoint_disk: u64,
    /// When the last entry was applied (see [`AT_REST`]).
    last_apply: Instant,
    /// The applied index when the allocator was last trimmed
    /// ([`PartitionReplica::maybe_trim`]).
    trimmed_at: u64,
    /// Entry bytes applied since then.
    applied_since_trim: u64,
}

/// A configuration change as data: the consensus layer proposes it and
/// applies its store command with it, without knowing what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfProposal {
    /// What raft does.
    pub conf: ConfChangeV2,
    /// What the store does, in the same transaction.
    pub records: crate::store::Command,
    /// The id leaving the cluster, if one does (removing the leader hands
    /// leadership over first).
    pub removes: Option<u64>,
}

/// A Ready's number, the messages that wait for its log write, and the
/// (term, vote) it makes durable if it changes them.
type Unpersisted = (u64, Vec<Message>, Option<(u64, u64)>);

/// The environment variable of the chaos runner's negative control
/// (`quorumd-chaos run --unsafe-forget-votes`): set to `1`, a node rewinds
/// its durable term and forgets its vote at start, as a node did when an
/// apply batch rewrote an older term and vote. Never set it for real use.
pub const UNSAFE_FORGET_VOTE: &str = "QUORUMD_UNSAFE_FORGET_VOTE";

impl PartitionReplica {
    /// Builds the group's `RawNode` from the node's recovered storage, and
    /// starts the log writer thread.
    pub fn new(
        node_id: u64,
        group: GroupId,
        timing: &RaftTiming,
        settings: &StoreSettings,
        storage: NodeStorage,
        peers: PeerSenders,
        metrics: Arc<Metrics>,
    ) -> Result<(PartitionReplica, ReplicaHandle)> {
        let NodeStorage {
            state: store,
            mut log,
            mut recovered,
            lock,
        } = storage;
        if std::env::var_os(UNSAFE_FORGET_VOTE).is_some_and(|v| v == "1") {
            warn!(
                "{group}: {UNSAFE_FORGET_VOTE}=1: this node rewinds its stored term by one and \
                 forgets its vote at every start, which breaks Raft's safety; it exists only \
                 so that the chaos runner's checks can be shown to fail"
            );
            if let Some(hs) = log.rewind_promises_unsafely()? {
                recovered.hard_state = hs;
            }
        }
        store.count_transactions(metrics.store_transactions());
        let view = LogView::new(&recovered);
        let config = raft::Config {
            id: node_id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            applied: recovered.applied,
            pre_vote: true,
            check_quorum: true,
            batch_append: true,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            max_committed_size_per_ready: MAX_APPLY_BYTES_PER_READY,
            ..Default::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(
            slog_stdlog::StdLog.fuse(),
            slog::o!("group" => group.to_string()),
        );
        let node = RawNode::new(&config, view, &logger)?;
        let (tx, inbox) = flume::bounded(INBOX_CAPACITY);
        let gauge = Arc::new(Gauge::default());
        let handle = ReplicaHandle {
            tx: tx.clone(),
            gauge: gauge.clone(),
        };
        // The writer holds the data dir's lock for as long as it owns the
        // log: the dir stays locked until the last write is synced.
        let report = {
            let tx = tx.clone();
            move |event| {
                let _keep_locked = &lock;
                let msg = match event {
                    writer::Event::Persisted(n) => ReplicaMsg::Persisted(n),
                    writer::Event::Failed(e) => ReplicaMsg::LogFailed(e),
                };
                tx.send(msg).is_ok()
            }
        };
        let log = LogWriter::spawn(log, report, metrics.clone())?;
        info!(
            "{group}: replica recovered: term={} vote={} commit={} applied={} log=[{}, {}] voters={:?}",
            recovered.hard_state.term,
            recovered.hard_state.vote,
            recovered.hard_state.commit,
            recovered.applied,
            recovered.snapshot_meta.index,
            node.raft.raft_log.last_index(),
            recovered.conf_state.voters
        );
        let checkpoint_disk = store.disk_bytes();
        Ok((
            PartitionReplica {
                group,
                node,
                store,
                log,
                peers,
                inbox,
                own: tx,
                subscribers: Vec::new(),
                published: None,
                metrics,
                gauge,
                timing: timing.clone(),
                request_timeout: settings.request_timeout,
                ticks: 0,
                gone_leader_term: None,
                pre_vote_granted: None,
                disk_full_logged: None,
                disk_full_handoff: None,
                incarnation: fastrand::u64(..),
                next_request: 1,
                proposals: HashMap::new(),
                next_read: 1,
                reads_queued: Vec::new(),
                reads_asked: HashMap::new(),
                reads_ready: Vec::new(),
                watchers: Vec::new(),
                building_snapshot: false,
                checking_snapshots: Default::default(),
                removed_at: None,
                handoff: None,
                applied: recovered.applied,
                applied_hash: recovered.applied_hash,
                unpersisted: Default::default(),
                commit_unwritten: false,
                pending_apply: Default::default(),
                store_busy: false,
                checkpointed: recovered.applied,
                last_checkpoint: Instant::now(),
                applied_bytes: 0,
                applies: 0,
                checkpoint_disk,
                last_apply: Instant::now(),
                trimmed_at: recovered.applied,
                applied_since_trim: 0,
            },
            handle,
        ))
    }

    /// Runs until `shutdown` closes (`Ok`) or storage fails (`Err`, fatal).
    pub async fn run(mut self, shutdown: flume::Receiver<()>) -> Result<()> {
        let outcome = self.drive(&shutdown).await;
        self.fail_all(RequestError::Stopped);
        self.drain_inbox();
        let group = self.group.clone();
        if let Err(e) = &outcome {
            if !matches!(e, crate::error::Error::Removed(_)) {
                error!("{group}: stopping replica: {e}");
            }
        }
        // Let the log writer sync what it holds, and (unless the storage
        // failed) make what was applied durable: a restart then replays
        // little.
        let healthy = matches!(&outcome, Ok(()) | Err(crate::error::Error::Removed(_)));
        self.close(healthy).await;
        if outcome.is_ok() {
            debug!("{group}: replica stopped");
        }
        outcome
    }

    async fn drive(&mut self, shutdown: &flume::Receiver<()>) -> Result<()> {
        loop {
            let first = or_shutdown(shutdown, self.inbox.recv_async())
                .await
                .and_then(std::result::Result::ok);
            let Some(first) = first else {
                return Ok(());
            };
            self.run_owed_ticks()?;
            self.handle(first)?;
            for _ in 1..MAX_INBOX_BATCH {
                match self.inbox.try_recv() {
                    Ok(msg) => self.handle(msg)?,
                    Err(_) => break,
                }
            }
            self.ask_read_index();
            let started = Instant::now();
            let had_ready = self.node.has_ready();
            self.on_ready().await?;
            if had_ready {
                self.metrics.observe_ready(started.elapsed());
            }
            if let Some(index) = self.removed_at {
                let me = self.node.raft.id;
                return Err(crate::error::Error::Removed(format!(
                    "node {me} was removed from the cluster by the membership change at index \
                     {index}; it stops, and this id may not rejoin"
                )));
            }
            self.publish();
            self.maybe_build_snapshot();
            self.gauge.sleep(self.tick_budget());
        }
    }

    /// Runs the ticks owed since the replica went quiet (see
    /// [`Gauge::tick_due`]).
    fn run_owed_ticks(&mut self) -> Result<()> {
        let owed = self.gauge.wake();
        if owed == 0 {
            return Ok(());
        }
        for _ in 0..owed {
            self.ticks += 1;
            self.node.tick();
        }
        self.on_tick()
    }

    /// For a quiet follower, the ticks until its election would fire (see
    /// [`Gauge::tick_due`]); `None` for any other replica. A quiet
    /// follower has a leader and nothing of its own that a tick would move:
    /// no proposal or read waiting, no apply or checkpoint under way, no
    /// snapshot being checked.
    fn tick_budget(&self) -> Option<u64> {
        let raft = &self.node.raft;
        let quiet = raft.state == StateRole::Follower
            && raft.leader_id != raft::INVALID_ID
            && self.proposals.is_empty()
            && self.reads_queued.is_empty()
            && self.reads_asked.is_empty()
            && self.reads_ready.is_empty()
            && self.pending_apply.is_empty()
            && !self.store_busy
            && self.checking_snapshots.is_empty();
        // raft campaigns on the tick that brings the elapsed count to the
        // randomized timeout.
        quiet.then(|| {
            raft.randomized_election_timeout()
                .saturating_sub(raft.election_elapsed) as u64
        })
    }

    /// Stops the log writer (it syncs what it holds) and checkpoints the
    /// state machine.
    async fn close(self, checkpoint: bool) {
        let PartitionReplica {
            log, store, inbox, ..
        } = self;
        let group = self.group;
        // Point reads go to workers while the last checkpoint runs.
        store.set_writing_elsewhere(true);
        let mut done = crate::runtime::spawn(crate::runtime::unblock(move || {
            log.close();
            // A batch still running off the executor finishes first (redb
            // has one writer); then one checkpoint.
            if !checkpoint {
                return;
            }
            if let Err(e) = store.checkpoint() {
                warn!("{group}: cannot checkpoint the state machine while stopping: {e}");
            }
        }));
        // The writer reports into the inbox: keep emptying it, so that it
        // never waits for room while it finishes. (The inbox stays open until
        // the driver returns: tasks that watch the replica see it stop then.)
        // Once every sender is gone the inbox answers at once, forever: then
        // only `done` is awaited. (Polling both again would never yield, and
        // the one executor thread could not run the task `done` waits on: a
        // node that hung on SIGTERM when the whole cluster stopped at once.)
        loop {
            let step = futures_lite::future::or(
                async {
                    (&mut done).await;
                    None
                },
                async { Some(inbox.recv_async().await.is_ok()) },
            )
            .await;
            match step {
                None => break,
                Some(true) => {}
                Some(false) => {
                    done.await;
                    break;
                }
            }
        }
        // What came in since the last receive goes now, before the inbox
        // does: flume keeps a message queued in a channel whose receiver is
        // gone for as long as a sender lives (the router's, a handle's), and
        // with it the reply channel its requester awaits. A task that asked
        // for a watch just as the replica stopped waited forever, and the
        // node never exited on SIGTERM. Nothing else runs on the executor
        // between this drain and the drop; later sends fail at once.
        while inbox.try_recv().is_ok() {}
    }

    fn handle(&mut self, msg: ReplicaMsg) -> Result<()> {
        match msg {
            ReplicaMsg::Tick => {
                self.ticks += 1;
                self.node.tick();
                self.on_tick()?;
            }
            ReplicaMsg::Raft(m) if self.refused_for_full_disk(&m) => {}
            ReplicaMsg::Raft(m) => {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.check_snapshot(m);
                } else {
                    self.step(*m);
                }
            }
            ReplicaMsg::SnapshotChecked(m) => {
                self.checking_snapshots.remove(&m.from);
                self.step(*m);
            }
            ReplicaMsg::SnapshotRejected(from) => {
                self.checking_snapshots.remove(&from);
            }
            ReplicaMsg::PeerClosed(peer) => {
                self.unreachable(peer);
                self.check_leader_gone(peer);
            }
            ReplicaMsg::LeaderGone { peer, term } => self.leader_gone(peer, term),
            ReplicaMsg::FastCampaign { peer, term } => self.fast_campaign(peer, term),
            ReplicaMsg::Unreachable(peer) => self.unreachable(peer),
            ReplicaMsg::SnapshotStatus { peer, delivered } => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(peer, status);
                // Free its memory; another follower that needs one gets a
                // fresh one.
                self.node.mut_store().clear_outgoing();
            }
            ReplicaMsg::Campaign => {
                // Only from a pre-vote or from no leader at all: a leader
                // stays, and a real vote in progress is not restarted (it
                // would cost a term).
                let leaderless = self.node.raft.leader_id == raft::INVALID_ID;
                let campaign = match self.node.raft.state {
                    StateRole::Leader | StateRole::Candidate => false,
                    StateRole::PreCandidate => true,
                    StateRole::Follower => leaderless,
                };
                if campaign {
                    if let Err(e) = self.node.campaign() {
                        warn!("{}: campaign failed: {e}", self.group);
                    }
                }
            }
            ReplicaMsg::PeerUp(_) => {
                if self.node.raft.state == StateRole::Leader {
                    self.node.ping();
                }
            }
            ReplicaMsg::Status(reply) => {
                let _ = reply.try_send(self.status());
            }
            ReplicaMsg::Subscribe(tx) => {
                if tx.send(self.status()).is_ok() {
                    self.subscribers.push(tx);
                }
            }
            ReplicaMsg::TransferLeadership { candidates, reply } => {
                let _ = reply.try_send(self.transfer_leadership(&candidates));
            }
            ReplicaMsg::Propose { data, reply } => self.propose(data, reply),
            ReplicaMsg::ReadIndex { reply } => self.reads_queued.push(ReadWaiter {
                reply,
                deadline: Instant::now() + self.request_timeout,
            }),
            ReplicaMsg::Watch {
                key,
                prefix,
                fired,
                registered,
            } => {
                // Registered between Readies: everything applied so far is
                // visible to a read that starts after this reply.
                if registered.try_send(()).is_ok() {
                    self.watchers.push(Watcher { key, prefix, fired });
                }
            }
            ReplicaMsg::ChangeMembership { change, reply } => {
                self.change_membership(*change, reply)
            }
            ReplicaMsg::Progress(reply) => {
                let _ = reply.try_send(self.progress());
            }
            ReplicaMsg::SnapshotBuilt(result) => {
                self.building_snapshot = false;
                match result {
                    Ok(snapshot) => {
                        self.metrics.snapshot_built();
                        let index = snapshot.get_metadata().index;
                        info!(
                            "{}: built a snapshot at index {index} ({} bytes) for followers",
                            self.group,
                            snapshot.get_data().len()
                        );
                        self.node.mut_store().set_outgoing(snapshot);
                        self.send_to_lagging_followers();
                    }
                    Err(e) => warn!("{}: cannot build a snapshot: {e}", self.group),
                }
            }
            ReplicaMsg::Persisted(number) => {
                self.node.on_persist_ready(number);
                while self
                    .unpersisted
                    .front()
                    .is_some_and(|(n, _, _)| *n <= number)
                {
                    let (_, messages, promise) = self.unpersisted.pop_front().expect("checked");
                    if let Some((term, vote)) = promise {
                        self.log_durable_promise(term, vote);
                    }
                    self.send(messages);
                }
            }
            ReplicaMsg::LogFailed(e) => return Err(e),
            ReplicaMsg::Applied(written) => {
                self.set_store_busy(false);
                self.applied_to(written?);
                self.drain_applies()?;
            }
            ReplicaMsg::Checkpointed(done) => {
                self.set_store_busy(false);
                self.checkpointed = done?;
                self.metrics.checkpointed();
                self.maybe_compact();
                self.drain_applies()?;
            }
        }
        Ok(())
    }

    fn unreachable(&mut self, peer: u64) {
        if self.node.raft.lead_transferee == Some(peer) {
            // The peer went away (it may be stopping too): keep leading
            // rather than wait out the transfer timeout.
            info!(
                "{}: leadership transfer to node {peer} aborted: unreachable",
                self.group
            );
            self.node.raft.abort_leader_transfer();
        }
        self.node.report_unreachable(peer);
    }

    /// The leader's stream closed: asks the kernel whether the leader's
    /// process is still there (see [`ReplicaMsg::LeaderGone`]). Off the
    /// driver: a connect never waits inside it.
    fn check_leader_gone(&mut self, peer: u64) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Follower || raft.leader_id != peer {
            return;
        }
        let Some(addr) = self.peers.addr(peer) else {
            return;
        };
        let (term, own, group) = (raft.term, self.own.clone(), self.group.clone());
        crate::runtime::spawn(async move {
            if crate::transport::refuses(addr, LEADER_PROBE_TIMEOUT).await {
                let _ = own.send_async(ReplicaMsg::LeaderGone { peer, term }).await;
            } else {
                info!(
                    "{group}: the stream from leader {peer} of term {term} closed, but its port \
                     {addr} did not refuse a connection: this node takes the leader to be alive"
                );
            }
        })
        .detach();
    }

    /// The leader's process is gone, on the kernel's word: its connections
    /// reset and its port refuses new ones. Waiting out an election timeout
    /// would only add time, so the voters stand at once, one after the
    /// other by id ([`FAST_ELECTION_STAGGER`] apart), which makes a split
    /// vote unlikely (see [`Self::fast_campaign`]). A leader that is alive
    /// (a reset connection, its listener up) is never contested this way:
    /// its port would not refuse.
    fn leader_gone(&mut self, peer: u64, term: u64) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Follower || raft.leader_id != peer || raft.term != term {
            return;
        }
        let me = raft.id;
        let voters = self.voters_except(peer);
        let Some(rank) = voters.iter().position(|&id| id == me) else {
            return;
        };
        info!(
            "{}: leader {peer} of term {term} is gone (its connection closed and its port refuses \
             connections): electing a new one now",
            self.group
        );
        if rank == 0 {
            self.fast_campaign(peer, term);
            return;
        }
        // The others wait their turn (see `fast_campaign`).
        let own = self.own.clone();
        let wait = FAST_ELECTION_STAGGER * rank as u32;
        crate::runtime::spawn(async move {
            async_io::Timer::after(wait).await;
            let _ = own
                .send_async(ReplicaMsg::FastCampaign { peer, term })
                .await;
        })
        .detach();
    }

    /// Stands for election through a pre-vote, as after an election timeout,
    /// except that its requests carry raft's leader-transfer mark, so the
    /// voters that still count the dead leader's lease answer anyway (see
    /// [`Self::mark_gone_leader_votes`]). A pre-vote raises no one's term: a
    /// voter that cannot win (its log is behind) is refused and leaves the
    /// field to one that can. Only if no new leader or vote request reached
    /// this node meanwhile, and it granted no other voter's pre-vote for the
    /// next term: that one stands already. The first voter in id order
    /// stands at once, the others after their turn: they stand when the
    /// first missed the leader's death (its stream had not closed, or its
    /// probe found the port still open) or cannot win. Two can still split
    /// the vote when the first's pre-vote takes longer than a turn to reach
    /// the next; the election timeout then settles it, as without this path.
    fn fast_campaign(&mut self, peer: u64, term: u64) {
        let raft = &self.node.raft;
        let leaderless = raft.leader_id == peer || raft.leader_id == raft::INVALID_ID;
        if raft.state != StateRole::Follower
            || raft.term != term
            || !leaderless
            || !raft.promotable()
        {
            return;
        }
        self.note_pre_vote_grants();
        let election_timeout = self.timing.election_timeout();
        if let Some((granted, to, at)) = self.pre_vote_granted {
            if granted > term && at.elapsed() < election_timeout {
                info!(
                    "{}: leader {peer} of term {term} went away; this node granted node {to}'s \
                     pre-vote for term {granted}: leaving the election to it",
                    self.group
                );
                return;
            }
        }
        if self.voters_except(peer).first() != Some(&self.node.raft.id) {
            info!(
                "{}: no new leader within this node's turn after leader {peer} of term {term} \
                 went away: standing for election now",
                self.group
            );
        }
        // raft-rs also declines (without an error) while a committed
        // membership change waits to be applied; the mark is then dropped
        // at the next Ready.
        if let Err(e) = self.node.campaign() {
            debug!("{}: fast campaign not started: {e}", self.group);
            return;
        }
        self.gone_leader_term = Some(term);
        self.mark_gone_leader_votes();
    }

    /// Notes a grant of another voter's pre-vote for the next term waiting in
    /// raft's outbox (see [`Self::fast_campaign`]). A grant older than an
    /// election timeout is not heeded: that pre-vote failed (the leader it
    /// would have replaced kept leading), or its voter stalled.
    fn note_pre_vote_grants(&mut self) {
        let next = self.node.raft.term + 1;
        let granted = self.node.raft.msgs.iter().find(|m| {
            m.get_msg_type() == MessageType::MsgRequestPreVoteResponse
                && !m.reject
                && m.term == next
        });
        if let Some(m) = granted {
            self.pre_vote_granted = Some((next, m.to, Instant::now()));
        }
    }

    /// Marks this node's pre-vote and vote requests of the election after a
    /// gone leader (term `gone_leader_term + 1`) as a leader transfer's:
    /// raft-rs then lets them past a voter's lease of the old leader. raft-rs
    /// sets the mark only on the vote requests of a transfer, which skips the
    /// pre-vote; here the pre-vote stays. Called before each Ready is taken,
    /// while the requests wait in raft's outbox, where it also notes a
    /// pre-vote this node grants; the mark is dropped (at the next Ready)
    /// once this node leads, follows, or sees a later term.
    fn mark_gone_leader_votes(&mut self) {
        self.note_pre_vote_grants();
        let raft = &mut self.node.raft;
        let Some(gone) = self.gone_leader_term else {
            return;
        };
        let standing = matches!(raft.state, StateRole::PreCandidate | StateRole::Candidate);
        if !standing || raft.term > gone + 1 {
            self.gone_leader_term = None;
            return;
        }
        for m in raft.msgs.iter_mut() {
            let request = matches!(
                m.get_msg_type(),
                MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
            );
            if request && m.term == gone + 1 {
                m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
            }
        }
    }

    fn step(&mut self, m: Message) {
        if !crate::raft::validate::admit(&self.group, &self.node.raft, &m) {
            return;
        }
        let (from, kind, term) = (m.from, m.get_msg_type(), m.term);
        if self.applied == 0
            && matches!(
                kind,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            // A node that joined with an empty data dir has applied nothing
            // until a leader sends it the state. It may be a voter whose
            // earlier disk was lost with a vote on it, and its empty log
            // would let it vote for anyone in any term: it votes only once
            // a leader has brought it up to date.
            debug!(
                "{}: not voting for node {from} at term {term}: this node has no state from a                  leader yet",
                self.group
            );
            return;
        }
        if let Err(e) = self.node.step(m) {
            debug!("{}: ignored {kind:?} from {from}: {e}", self.group);
            return;
        }
        let raft = &self.node.raft;
        if from == raft.leader_id && term == raft.term {
            self.gauge.contact();
        }
    }

    /// Checks a received snapshot's data off the executor, then steps it.
    /// raft accepts a snapshot in `step`; by then it must be known good.
    fn check_snapshot(&mut self, m: Box<Message>) {
        if !self.checking_snapshots.insert(m.from) {
            debug!(
                "{}: dropped a snapshot from node {}: its previous one is still being checked",
                self.group, m.from
            );
            return;
        }
        let own = self.own.clone();
        let group = self.group.clone();
        crate::runtime::spawn(async move {
            let (m, verdict) = crate::runtime::unblock(move || {
                let verdict = crate::store::snapshot::validate(m.get_snapshot().get_data());
                (m, verdict)
            })
            .await;
            match verdict {
                Ok(_) => {
                    let _ = own.send_async(ReplicaMsg::SnapshotChecked(m)).await;
                }
                Err(e) => {
                    warn!(
                        "{group}: dropped a snapshot from node {} at index {}: {e}",
                        m.from,
                        m.get_snapshot().get_metadata().index
                    );
                    let _ = own.send_async(ReplicaMsg::SnapshotRejected(m.from)).await;
                }
            }
        })
        .detach();
    }

    /// While the disk is full ([`crate::diskguard`]), what would make this
    /// node write its log from a peer is dropped: appends, snapshots and
    /// forwarded proposals. A follower so stops acknowledging; heartbeats
    /// still answer, so no election starts.
    fn refused_for_full_disk(&mut self, m: &Message) -> bool {
        let refused = crate::diskguard::is_full()
            && matches!(
                m.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgSnapshot | MessageType::MsgPropose
            );
        if refused
            && self
                .disk_full_logged
                .is_none_or(|t| t.elapsed() >= DISK_FULL_LOG_INTERVAL)
        {
            self.disk_full_logged = Some(Instant::now());
            warn!(
                "{}: not accepting {:?} from node {}: {}",
                self.group,
                m.get_msg_type(),
                m.from,
                crate::diskguard::full_reason().unwrap_or_default()
            );
        }
        refused
    }

    /// A leader whose disk is full hands its leadership to a peer, so the
    /// cluster keeps taking writes; at most once per
    /// [`DISK_FULL_HANDOFF_INTERVAL`], so that nodes whose disks are all
    /// full (one filesystem for every data dir) do not pass leadership
    /// round and round.
    fn hand_off_if_disk_full(&mut self) {
        let raft = &self.node.raft;
        if !crate::diskguard::is_full()
            || raft.state != StateRole::Leader
            || raft.lead_transferee.is_some()
            || self
                .disk_full_handoff
                .is_some_and(|t| t.elapsed() < DISK_FULL_HANDOFF_INTERVAL)
        {
            return;
        }
        self.disk_full_handoff = Some(Instant::now());
        let others = self.voters_except(raft.id);
        if let Some(to) = self.transfer_leadership(&others) {
            warn!(
                "{}: this node's disk is full: leadership goes to node {to}",
                self.group
            );
        }
    }

    /// The voters of the applied configuration other than `skip`, sorted.
    fn voters_except(&self, skip: u64) -> Vec<u64> {
        let mut voters: Vec<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&id| id != skip)
            .collect();
        voters.sort_unstable();
        voters
    }

    /// A leader whose log fsync has not returned for twice the election
    /// timeout (the longest a follower waits before it campaigns) hands
    /// its leadership to its most up-to-date peer: the others commit
    /// without it, but its own clients wait on its disk. Shorter stalls
    /// only slow the writes that wait for this disk.
    fn hand_off_if_disk_stalled(&mut self) {
        let stalled = crate::diskguard::sync_stalled_for();
        let raft = &self.node.raft;
        if stalled <= self.timing.election_timeout() * 2
            || raft.state != StateRole::Leader
            || raft.lead_transferee.is_some()
        {
            return;
        }
        let others = self.voters_except(raft.id);
        if let Some(to) = self.transfer_leadership(&others) {
            warn!(
                "{}: the log's fsync has stalled for {} ms, longer than twice the election \
                 timeout: leadership goes to node {to}",
                self.group,
                stalled.as_millis()
            );
        }
    }

    fn on_tick(&mut self) -> Result<()> {
        self.hand_off_if_disk_full();
        self.hand_off_if_disk_stalled();
        self.maybe_checkpoint();
        if self.compact_at_rest() {
            // Its tombstone reap: nothing else would apply it at rest.
            self.drain_applies()?;
        }
        self.maybe_trim();
        self.finish_handoff();
        self.leave_joint();
        let now = Instant::now();
        let has_leader = self.node.raft.leader_id != raft::INVALID_ID;
        // Proposals that waited for a leader: try again.
        if has_leader {
            self.retry_unsent();
        }
        // Deadlines.
        let metrics = &self.metrics;
        self.proposals.retain(|_, p| {
            if p.reply.is_disconnected() {
                return false;
            }
            if now < p.deadline {
                return true;
            }
            let e = if p.unsent.is_some() {
                RequestError::NoLeader
            } else {
                RequestError::TimedOut
            };
            let _ = p.reply.try_send(Err(e));
            metrics.proposal_failed();
            false
        });
        let read_err = if has_leader {
            RequestError::TimedOut
        } else {
            RequestError::NoLeader
        };
        let expire = |w: &ReadWaiter| {
            if w.reply.is_disconnected() {
                return false;
            }
            if now >= w.deadline {
                let _ = w.reply.try_send(Err(read_err));
                return false;
            }
            true
        };
        self.reads_queued.retain(expire);
        for (_, waiters) in self.reads_ready.iter_mut() {
            waiters.retain(expire);
        }
        self.reads_ready.retain(|(_, w)| !w.is_empty());
        // Read-index requests raft dropped (no leader yet, or a new leader
        // that has not committed in its term): ask again.
        let stale: Vec<u64> = self
            .reads_asked
            .iter()
            .filter(|(_, (at, _))| self.ticks >= at + READ_INDEX_RETRY_TICKS)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, mut waiters)) = self.reads_asked.remove(&ctx) {
                waiters.retain(expire);
                self.reads_queued.extend(waiters);
            }
        }
        self.watchers.retain(|w| !w.fired.is_disconnected());
        Ok(())
    }

    fn propose(&mut self, data: Vec<u8>, reply: flume::Sender<WriteResult>) {
        let request = self.next_request;
        self.next_request += 1;
        let mut proposal = Proposal {
            reply,
            started: Instant::now(),
            deadline: Instant::now() + self.request_timeout,
            unsent: Some(data),
            handed_to: 0,
        };
        self.try_propose(request, &mut proposal);
        self.proposals.insert(request, proposal);
    }

    /// Hands a proposal to raft. raft refuses it at once when no leader is
    /// known (or leadership is moving); it then waits here for a leader.
    fn try_propose(&mut self, request: u64, p: &mut Proposal) {
        let Some(data) = p.unsent.take() else { return };
        let id = ProposalId {
            node: self.node.raft.id,
            incarnation: self.incarnation,
            request,
        };
        let leader = self.node.raft.leader_id;
        match self.node.propose(id.encode(), data.clone()) {
            Ok(()) => p.handed_to = leader,
            Err(raft::Error::ProposalDropped) => p.unsent = Some(data),
            Err(e) => {
                warn!("{}: proposal refused: {e}", self.group);
                p.unsent = Some(data);
            }
        }
    }

    fn retry_unsent(&mut self) {
        let waiting: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.unsent.is_some())
            .map(|(id, _)| *id)
            .collect();
        for request in waiting {
            if let Some(mut p) = self.proposals.remove(&request) {
                self.try_propose(request, &mut p);
                self.proposals.insert(request, p);
            }
        }
    }

    /// Asks raft for one read index covering every read queued since the
    /// last one.
    fn ask_read_index(&mut self) {
        if self.reads_queued.is_empty() {
            return;
        }
        // The context is unique across nodes and restarts, as a proposal's
        // is: a late heartbeat ack of another node's read, or of an earlier
        // run's, must never confirm this one, and raft-rs drops a read
        // whose context is already pending.
        let request = self.next_read;
        self.next_read += 1;
        let ctx = ProposalId {
            node: self.node.raft.id,
            incarnation: self.incarnation,
            request,
        };
        let waiters = std::mem::take(&mut self.reads_queued);
        self.node.read_index(ctx.encode());
        self.reads_asked.insert(request, (self.ticks, waiters));
    }

    fn progress(&self) -> Progress {
        let raft = &self.node.raft;
        let cs = raft.prs().conf().to_conf_state();
        let mut voters: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        voters.sort_unstable();
        voters.dedup();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        let leader = raft.state == StateRole::Leader;
        Progress {
            leader,
            last_index: raft.raft_log.last_index(),
            matched: if leader {
                raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
            } else {
                Default::default()
            },
            voters,
            learners,
            changing: raft.has_pending_conf() || !cs.voters_outgoing.is_empty(),
        }
    }

    fn change_membership(&mut self, change: ConfProposal, reply: flume::Sender<WriteResult>) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            let _ = reply.try_send(Err(RequestError::NotLeader));
            return;
        }
        if self.progress().changing || self.handoff.is_some() {
            let _ = reply.try_send(Err(RequestError::Busy));
            return;
        }
        let me = raft.id;
        if change.removes == Some(me) {
            // Hand leadership to another voter first, so that the cluster
            // does not wait out an election timeout; the change goes to the
            // new leader once it leads.
            let others: Vec<u64> = raft
                .prs()
                .conf()
                .voters()
                .ids()
                .iter()
                .filter(|&id| id != me)
                .collect();
            if self.transfer_leadership(&others).is_none() {
                let _ = reply.try_send(Err(RequestError::Busy));
                return;
            }
            let deadline = Instant::now() + self.request_timeout;
            self.handoff = Some((change, reply, deadline));
            return;
        }
        self.propose_change(change, reply);
    }

    fn propose_change(&mut self, change: ConfProposal, reply: flume::Sender<WriteResult>) {
        let request = self.next_request;
        self.next_request += 1;
        let id = ProposalId {
            node: self.node.raft.id,
            incarnation: self.incarnation,
            request,
        };
        let mut context = id.encode();
        context.extend_from_slice(&change.records.encode());
        match self.node.propose_conf_change(context, change.conf) {
            Ok(()) => {
                self.proposals.insert(
                    request,
                    Proposal {
                        reply,
                        started: Instant::now(),
                        deadline: Instant::now() + self.request_timeout,
                        unsent: None,
                        // The leader: this node, or after a handoff the new
                        // one raft forwards the change to.
                        handed_to: self.node.raft.leader_id,
                    },
                );
            }
            Err(e) => {
                warn!("{}: membership change not proposed: {e}", self.group);
                let _ = reply.try_send(Err(RequestError::NoLeader));
            }
        }
    }

    /// After a leader change: a change that removes the old leader goes to
    /// the new one.
    fn finish_handoff(&mut self) {
        let Some((_, _, deadline)) = &self.handoff else {
            return;
        };
        let raft = &self.node.raft;
        let new_leader = raft.leader_id != raft::INVALID_ID && raft.leader_id != raft.id;
        let gave_up = raft.state == StateRole::Leader && raft.lead_transferee.is_none();
        if new_leader {
            let (change, reply, _) = self.handoff.take().expect("checked");
            self.propose_change(change, reply);
        } else if gave_up || Instant::now() >= *deadline {
            let (_, reply, _) = self.handoff.take().expect("checked");
            let _ = reply.try_send(Err(RequestError::Busy));
        }
    }

    /// A leader in a joint configuration whose leave entry is not in the
    /// log proposes it. raft-rs proposes it only when the leader that
    /// entered the joint state applies that entry; a new leader elected in
    /// between would otherwise keep the cluster joint, needing majorities of
    /// both the old and the new voters, for good.
    fn leave_joint(&mut self) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let cs = raft.prs().conf().to_conf_state();
        if !cs.auto_leave || cs.voters_outgoing.is_empty() {
            return;
        }
        info!(
            "{}: leading a joint configuration: proposing to leave it",
            self.group
        );
        if let Err(e) = self
            .node
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            warn!(
                "{}: cannot propose to leave the joint configuration: {e}",
                self.group
            );
        }
    }

    fn transfer_leadership(&mut self, candidates: &[u64]) -> Option<u64> {
        if self.node.raft.state != StateRole::Leader {
            return None;
        }
        // The most up-to-date candidate takes over fastest: raft sends it
        // MsgTimeoutNow at once if its log matches ours.
        let prs = self.node.raft.prs();
        let target = candidates
            .iter()
            .filter(|&&id| id != self.node.raft.id)
            .filter_map(|&id| prs.get(id).map(|p| (p.matched, id)))
            .max()
            .map(|(_, id)| id)?;
        info!(
            "{}: handing leadership to node {target} at term {}",
            self.group, self.node.raft.term
        );
        self.node.transfer_leader(target);
        Some(target)
    }

    fn status(&self) -> ReplicaStatus {
        let raft = &self.node.raft;
        ReplicaStatus {
            group: self.group.clone(),
            node_id: raft.id,
            role: raft.state,
            term: raft.term,
            vote: raft.vote,
            leader_id: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            applied_hash: self.applied_hash,
            last_index: raft.raft_log.last_index(),
            transferring_to: raft.lead_transferee,
            snapshot_index: self.node.store().snapshot_index(),
            voters: {
                let mut v = raft.prs().conf().to_conf_state().voters;
                v.sort_unstable();
                v
            },
        }
    }

    /// Logs and publishes a change of role, term or leader.
    fn publish(&mut self) {
        self.finish_handoff();
        let raft = &self.node.raft;
        let now = (raft.state, raft.term, raft.leader_id, raft.lead_transferee);
        if self.published == Some(now) {
            return;
        }
        let leader_changed = self.published.is_none_or(|(_, _, l, _)| l != now.2);
        let role_changed = self.published.is_none_or(|(r, _, _, _)| r != now.0);
        self.published = Some(now);
        self.metrics.set_raft_state(now.0, now.1, now.2);
        self.gauge.set(now.0, now.2);
        if leader_changed && now.2 != raft::INVALID_ID {
            self.gauge.contact();
        }
        if role_changed || leader_changed {
            let leader = if now.2 == raft::INVALID_ID {
                "none".to_string()
            } else {
                now.2.to_string()
            };
            info!(
                "{}: node {} is {} at term {}, leader {leader}",
                self.group,
                raft.id,
                role_name(now.0),
                now.1
            );
            // A new leader: reads asked of the old one will not be
            // answered, and waiting proposals can go now.
            let asked: Vec<u64> = self.reads_asked.keys().copied().collect();
            for ctx in asked {
                if let Some((_, waiters)) = self.reads_asked.remove(&ctx) {
                    self.reads_queued.extend(waiters);
                }
            }
            if now.2 != raft::INVALID_ID {
                self.retry_unsent();
            }
        }
        let status = self.status();
        self.subscribers.retain(|s| s.send(status.clone()).is_ok());
    }

    /// Handles one Ready, in raft-rs's order, with the log written
    /// asynchronously:
    ///
    /// 1. send `messages` (a leader's appends go out before its own write);
    /// 2. a snapshot is installed in the state machine, durably, before
    ///    anything else (see [`PartitionReplica::install_snapshot`]);
    /// 3. the new entries and hard state go to the log writer, and raft
    ///    reads them from the view at once (`advance_append_async`); the
    ///    messages that must wait for the write (votes, append acks) wait in
    ///    `unpersisted` until the writer reports the Ready durable
    ///    ([`ReplicaMsg::Persisted`], then `on_persist_ready`). A follower
    ///    on a fast disk with no write in flight writes a small one itself
    ///    (`LogWriter::write_inline`): the Ready is durable at once, and its
    ///    acks go before the apply;
    /// 4. committed entries are applied to the state machine (raft only
    ///    hands over entries that are committed and durable here), then
    ///    `advance_apply_to`.
    async fn on_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        self.mark_gone_leader_votes();
        let mut ready = self.node.ready();
        // A leader's Ready with entries to commit and none to replicate (in
        // a quiet cluster, the Ready after a write's acks) applies first and
        // sends after: its messages only carry the new commit index, and a
        // write's client then waits for the apply alone, not for the sends
        // to every follower as well. Entries to replicate go out first: they
        // are on the next writes' critical path.
        let answer_first = self.node.raft.state == StateRole::Leader
            && ready.entries().is_empty()
            && !ready.committed_entries().is_empty();
        let mut messages = ready.take_messages();
        if !answer_first {
            self.send(std::mem::take(&mut messages));
        }
        if !ready.snapshot().is_empty() {
            self.send(std::mem::take(&mut messages));
            self.install_snapshot(ready).await?;
            // What the installed snapshot's Ready released (acks, entries
            // committed meanwhile) is one more Ready, handled now.
            return Box::pin(self.on_ready()).await;
        }

        // Each write carries only what it owns. The log's write carries this
        // Ready's hard state (term, vote, commit): promises that only move
        // forward, and the log refuses one that would not. An apply batch
        // carries the applied state, never a term or vote.
        let entries = ready.take_entries();
        let mut hard_state = ready.hs().cloned();
        // Committing a membership change makes the commit index durable
        // before the next write (see `hard_state_to_write`).
        let commits_conf = ready
            .committed_entries()
            .iter()
            .any(|e| e.get_entry_type() != EntryType::EntryNormal);
        let sync = ready.must_sync() || !entries.is_empty() || commits_conf;
        let number = ready.number();
        let mut promise = None;
        {
            let view = self.node.mut_store();
            view.append(&entries);
            if let Some(hs) = &hard_state {
                let before = view.hard_state();
                if (hs.term, hs.vote) != (before.term, before.vote) {
                    promise = Some((hs.term, hs.vote));
                }
                view.set_hard_state(hs.clone());
            }
            hard_state = hard_state_to_write(
                hard_state,
                view.hard_state(),
                promise.is_some(),
                !entries.is_empty(),
                commits_conf,
                &mut self.commit_unwritten,
            );
        }
        let persisted = coalesce_acks(ready.take_persisted_messages());
        let nothing_to_write = entries.is_empty() && hard_state.is_none();
        let mut write = LogWrite {
            entries,
            hard_state,
            sync,
            snapshot: None,
        };
        // A follower (or a candidate, writing its vote) on a fast disk
        // writes a small write right here when no write is in flight
        // (`LogWriter::write_inline`): its acks are on every write's
        // critical path, and the hand-off to the log thread
        // and back cost two thread wakeups. The executor's one thread waits
        // for that fsync. A leader always hands its write over: it
        // replicates while its own fsync runs (writing inline after a yield
        // that let its appends out made 16-connection puts 16 and 30 %
        // slower in two paired runs).
        let durable_now = self.unpersisted.is_empty()
            && (nothing_to_write
                || (self.node.raft.state != StateRole::Leader
                    && self.log.write_inline(&mut write)?));
        if durable_now {
            // Nothing to wait for: this Ready's write is durable (or there
            // is none), and none before it is in flight.
            if let Some((term, vote)) = promise {
                self.log_durable_promise(term, vote);
            }
            let committed = ready.take_committed_entries();
            let read_states = ready.take_read_states();
            self.node.advance_append_async(ready);
            self.node.on_persist_ready(number);
            self.read_states(read_states);
            if !nothing_to_write && !persisted.is_empty() && !committed.is_empty() {
                // A follower's acks of the entries it just wrote, and older
                // entries this append committed (the leader's next append
                // carries the commit of the last): the acks leave before
                // the apply.
                // Sending only queues them, so the task yields to let the
                // peers' senders write them first. That took about 30 µs
                // off a 1-connection put's median in paired runs.
                self.send(persisted);
                futures_lite::future::yield_now().await;
                self.apply(committed)?;
                self.send(messages);
            } else {
                // A follower's answers (its persisted messages) go after the
                // apply here. Sending them first, so that a heartbeat's
                // response to a ReadIndex does not wait for the apply, made
                // no difference to linearizable gets under concurrent puts
                // in paired runs.
                self.apply(committed)?;
                self.send(messages);
                self.send(persisted);
            }
        } else {
            if nothing_to_write {
                // Still in order behind the writes in flight.
                write = LogWrite::default();
            }
            self.log.write(number, write);
            self.unpersisted.push_back((number, persisted, promise));
            let committed = ready.take_committed_entries();
            let read_states = ready.take_read_states();
            self.node.advance_append_async(ready);
            self.read_states(read_states);
            self.apply(committed)?;
            self.send(messages);
        }
        self.release_reads();
        if durable_now && !nothing_to_write && self.node.has_ready() {
            // What the inline write released at once (entries this very
            // append committed, which raft hands over only once they are
            // durable here): no `Persisted` will come to wake the loop.
            return Box::pin(self.on_ready()).await;
        }
        Ok(())
    }

    /// A Ready that carries a snapshot from the leader. It is rare, so it
    /// waits for each step: the state machine installs the snapshot durably,
    /// then the log restarts after it, durably too (in that order: a log
    /// that started after the snapshot while the state machine lacked it
    /// would miss entries; the reverse is repaired on open). Only then does
    /// raft hear the Ready was persisted.
    async fn install_snapshot(&mut self, mut ready: raft::Ready) -> Result<()> {
        let snapshot = ready.snapshot().clone();
        let meta = snapshot.get_metadata().clone();
        // Batches waiting to apply hold entries the snapshot covers. Only
        // what frees the store is handled meanwhile; the rest waits until the
        // install is done. A Raft message stepped now could make raft restore
        // a newer snapshot than this Ready's, and persisting this one would
        // then abort raft-rs ("unstable.snap has different index"; seen in a
        // chaos run, two snapshots 3 entries apart).
        let mut deferred = Vec::new();
        while self.store_busy {
            match self.inbox.recv_async().await {
                Ok(
                    msg @ (ReplicaMsg::Applied(_)
                    | ReplicaMsg::Checkpointed(_)
                    | ReplicaMsg::SnapshotBuilt(_)
                    | ReplicaMsg::Persisted(_)
                    | ReplicaMsg::LogFailed(_)),
                ) => self.handle(msg)?,
                Ok(msg) => deferred.push(msg),
                Err(_) => break,
            }
        }
        self.pending_apply.clear();
        let store = self.store.clone();
        let batch = ApplyBatch {
            snapshot: Some(snapshot),
            ..Default::default()
        };
        self.store.set_writing_elsewhere(true);
        let written = crate::runtime::unblock(move || store.apply(&batch)).await;
        self.store.set_writing_elsewhere(false);
        let written = written?;
        // The install's buffers count as a run of writes for the trim.
        self.applied_since_trim = self.applied_since_trim.saturating_add(TRIM_AFTER_BYTES);
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        self.log
            .write_now(LogWrite {
                snapshot: Some((meta.index, meta.term)),
                entries: entries.clone(),
                hard_state: hard_state.clone(),
                sync: true,
            })
            .await?;
        self.checkpointed = meta.index;
        self.checkpoint_disk = self.store.disk_bytes();
        let mut hard_state_written = None;
        {
            let view = self.node.mut_store();
            view.apply_snapshot(&meta);
            view.append(&entries);
            if let Some(hs) = hard_state {
                let before = view.hard_state();
                if (hs.term, hs.vote) != (before.term, before.vote) {
                    hard_state_written = Some(hs.clone());
                }
                view.set_hard_state(hs);
            }
        }
        self.metrics.snapshot_installed();
        info!(
            "{}: installed a snapshot at index {} (term {})",
            self.group, meta.index, meta.term
        );
        // Installed: tombstones may be gone, so every blocking query
        // re-reads.
        for w in self.watchers.drain(..) {
            let _ = w.fired.try_send(());
        }
        // Every write before this one is durable too (the writer keeps
        // order): what waited for them can go.
        for (_, messages, promise) in std::mem::take(&mut self.unpersisted) {
            if let Some((term, vote)) = promise {
                self.log_durable_promise(term, vote);
            }
            self.send(messages);
        }
        if let Some(hs) = &hard_state_written {
            self.log_durable_promise(hs.term, hs.vote);
        }
        self.applied = written.applied_index;
        self.applied_hash = written.applied_hash;
        self.send(ready.take_persisted_messages());
        let read_states = ready.take_read_states();
        let committed: Vec<Entry> = ready
            .take_committed_entries()
            .into_iter()
            .filter(|e| e.index > meta.index)
            .collect();
        // Everything this Ready asked for is durable. Not through the sync
        // `advance_append`: messages stepped while the snapshot was written
        // (the inbox is drained meanwhile) would make raft-rs abort a
        // follower ("not leader but has new msg after advance"). What the
        // persisted Ready releases comes with the next Ready instead.
        let number = ready.number();
        self.node.advance_append_async(ready);
        self.node.on_persist_ready(number);
        self.node.advance_apply_to(self.applied);
        self.read_states(read_states);
        self.apply(committed)?;
        self.release_reads();
        for msg in deferred {
            self.handle(msg)?;
        }
        Ok(())
    }

    fn read_states(&mut self, read_states: Vec<raft::ReadState>) {
        for rs in read_states {
            let Some(ctx) = ProposalId::decode(&rs.request_ctx).filter(|id| self.is_mine(id))
            else {
                continue;
            };
            if let Some((_, waiters)) = self.reads_asked.remove(&ctx.request) {
                self.reads_ready.push((rs.index, waiters));
            }
        }
    }

    /// Queues committed entries for the state machine and applies what can
    /// be applied now.
    fn apply(&mut self, committed: Vec<Entry>) -> Result<()> {
        if committed.is_empty() {
            return Ok(());
        }
        // raft-rs applies a membership change when the application applies
        // its entry; the conf state goes into the same batch.
        let (conf_state, accepted_conf) = self.apply_conf_changes(&committed);
        // Only the node that answers a client builds its reads.
        let answer = committed
            .iter()
            .filter(|e| {
                ProposalId::decode(&e.context)
                    .is_some_and(|id| self.is_mine(&id) && self.proposals.contains_key(&id.request))
            })
            .map(|e| e.index)
            .collect();
        self.pending_apply.push_back(ApplyBatch {
            apply: committed,
            conf_state,
            accepted_conf,
            answer,
            ..Default::default()
        });
        self.drain_applies()
    }

    /// Marks a write transaction running off the executor, or its end:
    /// until then applies wait, and point reads go to worker threads too
    /// (see `StateStore::reads_inline`).
    fn set_store_busy(&mut self, busy: bool) {
        self.store_busy = busy;
        self.store.set_writing_elsewhere(busy);
    }

    /// Applies waiting batches in order. A small batch is applied right
    /// here: without an fsync it costs microseconds, less than handing it to
    /// another thread. A large one runs off the executor, and so does a
    /// checkpoint; meanwhile later batches wait, in order.
    fn drain_applies(&mut self) -> Result<()> {
        while !self.store_busy {
            let Some(batch) = self.pending_apply.pop_front() else {
                break;
            };
            self.applied_bytes += batch.data_bytes() as u64;
            self.applied_since_trim += batch.data_bytes() as u64;
            self.applies += 1;
            if batch.data_bytes() > INLINE_APPLY_BYTES || batch.may_scan() {
                self.set_store_busy(true);
                let (store, own) = (self.store.clone(), self.own.clone());
                crate::runtime::spawn(async move {
                    let written = crate::runtime::unblock(move || store.apply(&batch)).await;
                    let _ = own.send_async(ReplicaMsg::Applied(written)).await;
                })
                .detach();
                break;
            }
            let started = Instant::now();
            let written = self.store.apply(&batch)?;
            self.metrics.observe_apply(started.elapsed());
            self.applied_to(written);
        }
        if !self.store_busy {
            self.maybe_checkpoint();
        }
        Ok(())
    }

    /// A batch was applied: answers its clients, fires watches, and tells
    /// raft.
    fn applied_to(&mut self, written: Written) {
        if written.applied_index > self.applied {
            self.last_apply = Instant::now();
            self.applied = written.applied_index;
            self.applied_hash = written.applied_hash;
            self.node.advance_apply_to(self.applied);
        }
        self.answer(written.applied);
        self.orphans();
        self.maybe_compact();
        self.release_reads();
        let view = self.node.store();
        self.metrics.set_log(view.held().0, self.applied);
    }

    /// Writes handed to a leader that is no longer the leader, once this
    /// node applied an entry of the new leader's term: any entry of the old
    /// leader that survived was committed before that one, and so applied
    /// already. They are answered now, as of unknown outcome, instead of at
    /// their deadline (a dead leader's clients learn it in tens of
    /// milliseconds, not seconds).
    fn orphans(&mut self) {
        let raft = &self.node.raft;
        let (leader, term) = (raft.leader_id, raft.term);
        if leader == raft::INVALID_ID || self.node.store().term_of(self.applied) != Some(term) {
            return;
        }
        let metrics = &self.metrics;
        self.proposals.retain(|_, p| {
            if p.unsent.is_some() || p.handed_to == leader || p.handed_to == raft::INVALID_ID {
                return true;
            }
            metrics.proposal_failed();
            let _ = p.reply.try_send(Err(RequestError::LeaderLost));
            false
        });
    }

    /// Checkpoints the state machine off the executor when it is time: every
    /// [`CHECKPOINT_INTERVAL`], or once [`CHECKPOINT_BYTES`] were applied,
    /// or when compaction waits for it.
    fn maybe_checkpoint(&mut self) {
        // On a full disk the store's file could not grow: the log keeps
        // every entry since the last checkpoint until space returns.
        if self.store_busy || self.applied <= self.checkpointed || crate::diskguard::is_full() {
            return;
        }
        let due = self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
            || self.applied_bytes >= CHECKPOINT_BYTES
            || self.applies >= CHECKPOINT_TRANSACTIONS
            || self.compaction_waits()
            || (self.applies.is_multiple_of(GROWTH_CHECK_APPLIES)
                && self.store.disk_bytes() >= self.checkpoint_disk + CHECKPOINT_GROWTH);
        if !due {
            return;
        }
        self.set_store_busy(true);
        self.last_checkpoint = Instant::now();
        self.applied_bytes = 0;
        self.applies = 0;
        self.checkpoint_disk = self.store.disk_bytes();
        let (store, own, metrics) = (self.store.clone(), self.own.clone(), self.metrics.clone());
        crate::runtime::spawn(async move {
            let done = crate::runtime::unblock(move || {
                let started = Instant::now();
                let done = store.checkpoint();
                metrics.observe_checkpoint(started.elapsed());
                done
            })
            .await;
            let _ = own.send_async(ReplicaMsg::Checkpointed(done)).await;
        })
        .detach();
    }

    /// True if the log is due for compaction but the checkpoint is too old
    /// to allow it.
    fn compaction_waits(&self) -> bool {
        self.compaction(self.applied)
            .is_some_and(|(index, _)| index > self.checkpointed)
    }

    /// Compacts the log in memory and lets the writer delete old segments,
    /// up to what the last checkpoint made durable.
    fn maybe_compact(&mut self) {
        if let Some((index, _)) = self.compaction(self.applied.min(self.checkpointed)) {
            self.compact_to(index);
        }
    }

    /// At rest (see [`AT_REST`]) after a run of writes ([`TRIM_AFTER_BYTES`]
    /// of entries or more), with every applied entry checkpointed, gives the
    /// memory the writes freed back to the kernel (`memory::trim`, off the
    /// executor): once per run of writes, never while they go on.
    fn maybe_trim(&mut self) {
        if self.store_busy
            || self.applied == self.trimmed_at
            || self.applied_since_trim < TRIM_AFTER_BYTES
            || self.applied != self.checkpointed
            || self.last_apply.elapsed() < AT_REST
        {
            return;
        }
        self.trimmed_at = self.applied;
        self.applied_since_trim = 0;
        crate::runtime::spawn(crate::runtime::unblock(crate::memory::trim)).detach();
    }

    /// At rest (see [`AT_REST`]), compacts the log down to its tail. A
    /// leader keeps what a follower it still replicates to has not matched,
    /// so that a follower that was down a short while catches up from the
    /// log, not from a snapshot (the size rule of [`Self::compaction`] still
    /// bounds that log).
    /// Returns true if it compacted.
    fn compact_at_rest(&mut self) -> bool {
        if self.store_busy
            || self.applied != self.checkpointed
            || self.last_apply.elapsed() < AT_REST
        {
            return false;
        }
        let Some(mut index) = self.tail_start(self.applied) else {
            return false;
        };
        if self.node.raft.state == StateRole::Leader {
            let own = self.node.raft.id;
            let lagging = self
                .node
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != own)
                .map(|(_, pr)| pr.matched)
                .min();
            if let Some(matched) = lagging {
                index = index.min(matched);
            }
        }
        // In steps of a tenth of the tail at least: a leader whose
        // slowest follower catches up would otherwise compact (and wake
        // every blocking query) on each tick.
        let step = (self.timing.snapshot_entries / 100).max(1);
        if index < self.node.store().snapshot_index() + step {
            return false;
        }
        self.compact_to(index);
        true
    }

    fn compact_to(&mut self, index: u64) {
        let view = self.node.mut_store();
        view.compact(index);
        debug!("{}: log compacted up to {index}", self.group);
        self.metrics.compacted();
        self.metrics.set_log(view.held().0, self.applied);
        self.log.release(index);
        self.pending_apply.push_back(ApplyBatch {
            reap: Some(index),
            ..Default::default()
        });
        // Tombstones may be gone: every blocking query re-reads.
        for w in self.watchers.drain(..) {
            let _ = w.fired.try_send(());
        }
    }

    /// Where to compact after applying up to `applied`, if it is time.
    fn compaction(&self, applied: u64) -> Option<(u64, u64)> {
        let view = self.node.store();
        let since = applied.saturating_sub(view.snapshot_index());
        let (_, bytes) = view.held();
        let tail_entries = (self.timing.snapshot_entries / 10).max(1);
        let tail_bytes = self.timing.snapshot_bytes / 10;
        if since < self.timing.snapshot_entries + tail_entries
            && bytes < self.timing.snapshot_bytes + tail_bytes
        {
            return None;
        }
        let to = self.tail_start(applied)?;
        Some((to, view.term_of(to)?))
    }

    /// The first index of the tail kept after compacting at `applied`: up to
    /// a tenth of `snapshot_entries` entries, and no more than a tenth of
    /// `snapshot_bytes`. `None` if the log holds no more than that.
    fn tail_start(&self, applied: u64) -> Option<u64> {
        let view = self.node.store();
        let tail_entries = (self.timing.snapshot_entries / 10).max(1);
        let tail_bytes = self.timing.snapshot_bytes / 10;
        let mut to = applied
            .saturating_sub(tail_entries)
            .max(view.snapshot_index());
        while to < applied && view.bytes_after(to) > tail_bytes + view.bytes_after(applied) {
            to += (applied - to).div_ceil(2);
        }
        (to > view.snapshot_index()).then_some(to)
    }

    /// True if this run of this node made the proposal or read.
    fn is_mine(&self, id: &ProposalId) -> bool {
        id.node == self.node.raft.id && id.incarnation == self.incarnation
    }

    /// Answers the clients of applied entries and fires watches.
    fn answer(&mut self, results: Vec<Applied>) {
        for applied in results {
            if !applied.touched.is_empty() {
                self.watchers.retain(|w| {
                    let hit = applied
                        .touched
                        .iter()
                        .any(|t: &Touched| t.affects(&w.key, w.prefix));
                    if hit {
                        let _ = w.fired.try_send(());
                    }
                    !hit
                });
            }
            let Some(id) = ProposalId::decode(&applied.context).filter(|id| self.is_mine(id))
            else {
                continue;
            };
            if let Some(p) = self.proposals.remove(&id.request) {
                self.metrics.proposal_applied(p.started.elapsed());
                let _ = p.reply.try_send(Ok(Committed {
                    index: applied.index,
                    outcome: applied.outcome,
                }));
            }
        }
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        self.reads_ready.retain(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters {
                let _ = w.reply.try_send(Ok(*index));
            }
            false
        });
    }

    /// Drops what is left in the inbox. flume keeps queued messages while
    /// any sender lives, so a request queued as the driver stopped would
    /// otherwise wait forever for its reply; dropping it closes its reply
    /// channel. Nothing can be queued after this: there is no await between
    /// here and the end of the driver, when the inbox goes.
    fn drain_inbox(&mut self) {
        while self.inbox.try_recv().is_ok() {}
    }

    /// Fails every waiting request as the driver stops. A proposal already
    /// handed to raft may still commit (it may be in a leader's log): its
    /// client is told the outcome is unknown, never that it failed.
    fn fail_all(&mut self, e: RequestError) {
        for (_, p) in self.proposals.drain() {
            let e = match (e, &p.unsent) {
                (RequestError::Stopped, None) => RequestError::Abandoned,
                (e, _) => e,
            };
            self.metrics.proposal_failed();
            let _ = p.reply.try_send(Err(e));
        }
        let waiters = self
            .reads_queued
            .drain(..)
            .chain(self.reads_asked.drain().flat_map(|(_, (_, w))| w))
            .chain(self.reads_ready.drain(..).flat_map(|(_, w)| w));
        for w in waiters {
            let _ = w.reply.try_send(Err(e));
        }
    }

    /// A follower behind the compacted log needs the snapshot raft asked for.
    fn maybe_build_snapshot(&mut self) {
        if !self.node.store().take_wanted() || self.building_snapshot {
            return;
        }
        self.building_snapshot = true;
        let (store, own) = (self.store.clone(), self.own.clone());
        crate::runtime::spawn(async move {
            let built = crate::runtime::unblock(move || store.build_snapshot()).await;
            let _ = own.send_async(ReplicaMsg::SnapshotBuilt(built)).await;
        })
        .detach();
    }

    /// Sends the new snapshot at once instead of at the next heartbeat.
    fn send_to_lagging_followers(&mut self) {
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        let first = self.node.store().snapshot_index() + 1;
        let me = self.node.raft.id;
        let lagging: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| **id != me && p.next_idx < first)
            .map(|(id, _)| *id)
            .collect();
        for id in lagging {
            self.node.raft.send_append(id);
        }
    }

    /// One line per durable change of term or vote, written once the log
    /// has synced it: the chaos runner reads these to check that no node
    /// votes twice in a term and that none recovers an older term.
    fn log_durable_promise(&self, term: u64, vote: u64) {
        info!(
            "{}: durable hard state: term {term} vote {vote}",
            self.group
        );
    }

    fn send(&mut self, messages: Vec<Message>) {
        for m in messages.into_iter().flat_map(split_append) {
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            if !self.peers.send(&self.group, m) && snapshot {
                // raft holds a follower it sent a snapshot to until it hears
                // how the send went: a snapshot that never left must be
                // reported, or that follower gets heartbeats only, forever.
                self.node.report_snapshot(to, SnapshotStatus::Failure);
                self.node.mut_store().clear_outgoing();
            }
        }
    }

    /// Applies the membership changes among `entries` to raft; returns the
    /// conf state to persist with them, if any changed, and the indexes of
    /// the changes raft accepted. A proposer of a refused change is answered
    /// here.
    fn apply_conf_changes(&mut self, entries: &[Entry]) -> (Option<ConfState>, Vec<u64>) {
        let mut changed = None;
        let mut accepted = Vec::new();
        for entry in entries {
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_err() {
                        continue;
                    }
                    self.node.apply_conf_change(&cc)
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_err() {
                        continue;
                    }
                    self.node.apply_conf_change(&cc)
                }
            };
            match result {
                Ok(cs) => {
                    info!(
                        "{}: membership is now voters {:?} learners {:?}{}",
                        self.group,
                        cs.voters,
                        cs.learners,
                        if cs.voters_outgoing.is_empty() {
                            String::new()
                        } else {
                            format!(" (joint with outgoing voters {:?})", cs.voters_outgoing)
                        }
                    );
                    let me = self.node.raft.id;
                    let member = cs
                        .voters
                        .iter()
                        .chain(&cs.learners)
                        .chain(&cs.voters_outgoing)
                        .any(|&id| id == me);
                    if !member {
                        self.removed_at = Some(entry.index);
                    }
                    changed = Some(cs);
                    accepted.push(entry.index);
                }
                Err(e) => {
                    warn!("{}: membership change refused: {e}", self.group);
                    if let Some(p) =
                        ProposalId::decode(&entry.context[..entry.context.len().min(24)])
                            .filter(|id| self.is_mine(id))
                            .and_then(|id| self.proposals.remove(&id.request))
                    {
                        let _ = p.reply.try_send(Ok(Committed {
                            index: entry.index,
                            outcome: Outcome::Invalid(format!("raft refused the change: {e}")),
                        }));
                    }
                }
            }
        }
        (changed, accepted)
    }
}

/// Splits an append whose entries pass [`MAX_SIZE_PER_MSG`] into appends
/// that each carry at most that much (one entry at least), chained by
/// index and term as raft would have sent them. raft-rs's batching of
/// appends (`batch_append`) merges messages past its own size limit, and a
/// message past the peer frame limit would never arrive: the link would
/// drop, again and again, while the leader lost its followers.
fn split_append(m: Message) -> Vec<Message> {
    let size: u64 = m
        .entries
        .iter()
        .map(|e| e.data.len() as u64 + e.context.len() as u64)
        .sum();
    if m.get_msg_type() != MessageType::MsgAppend || size <= MAX_SIZE_PER_MSG {
        return vec![m];
    }
    let mut m = m;
    let entries = std::mem::take(&mut m.entries).into_vec();
    let (mut index, mut log_term) = (m.index, m.log_term);
    let mut out = Vec::new();
    let mut part: Vec<raft::prelude::Entry> = Vec::new();
    let mut bytes = 0u64;
    let flush = |part: &mut Vec<raft::prelude::Entry>,
                 index: &mut u64,
                 log_term: &mut u64,
                 out: &mut Vec<Message>| {
        if part.is_empty() {
            return;
        }
        let mut piece = m.clone();
        piece.index = *index;
        piece.log_term = *log_term;
        let last = part.last().expect("non-empty");
        (*index, *log_term) = (last.index, last.term);
        piece.entries = std::mem::take(part).into();
        out.push(piece);
    };
    for e in entries {
        let len = e.data.len() as u64 + e.context.len() as u64;
        if !part.is_empty() && bytes + len > MAX_SIZE_PER_MSG {
            flush(&mut part, &mut index, &mut log_term, &mut out);
            bytes = 0;
        }
        bytes += len;
        part.push(e);
    }
    flush(&mut part, &mut index, &mut log_term, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    #[test]
    fn an_append_past_the_message_limit_is_split_in_a_chain() {
        let entry = |index: u64| Entry {
            index,
            term: 7,
            data: vec![0u8; 400 * 1024].into(),
            ..Default::default()
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.index, m.log_term, m.commit, m.to) = (10, 6, 12, 2);
        m.entries = (11..=16).map(entry).collect::<Vec<_>>().into();
        let parts = split_append(m);
        // Two entries of 400 KiB fit 1 MiB; the third does not.
        assert_eq!(parts.len(), 3);
        let chain: Vec<(u64, u64, Vec<u64>)> = parts
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.log_term,
                    p.entries.iter().map(|e| e.index).collect(),
                )
            })
            .collect();
        assert_eq!(
            chain,
            vec![
                (10, 6, vec![11, 12]),
                (12, 7, vec![13, 14]),
                (14, 7, vec![15, 16])
            ]
        );
        assert!(parts.iter().all(|p| p.commit == 12 && p.to == 2));
        let mut small = Message::default();
        small.set_msg_type(MessageType::MsgAppend);
        small.entries = vec![entry(1)].into();
        assert_eq!(split_append(small).len(), 1);
    }

    #[test]
    fn a_commit_index_alone_waits_for_the_next_write_but_a_membership_change_does_not() {
        let hs = |commit: u64| HardState {
            term: 3,
            vote: 2,
            commit,
            ..Default::default()
        };
        let mut unwritten = false;
        // One Ready: (what it brought, the store's hard state after it,
        // promises a term or vote, writes entries, commits a membership
        // change) -> (what its write carries, a commit index still owed).
        let mut ready = |from: Option<HardState>, current: u64, promises, entries, conf| {
            let write =
                hard_state_to_write(from, &hs(current), promises, entries, conf, &mut unwritten);
            (write, unwritten)
        };
        // A new term or vote is always written.
        assert_eq!(
            ready(Some(hs(10)), 10, true, false, false),
            (Some(hs(10)), false)
        );
        // A Ready that only moves the commit index writes nothing...
        assert_eq!(ready(Some(hs(11)), 11, false, false, false), (None, true));
        // ...and the next write of entries carries it.
        assert_eq!(ready(None, 11, false, true, false), (Some(hs(11)), false));
        // Entries with nothing owed carry no hard state.
        assert_eq!(ready(None, 11, false, true, false), (None, false));
        // A Ready that commits a membership change writes its commit index,
        // even when it moves nothing else.
        assert_eq!(
            ready(Some(hs(12)), 12, false, false, true),
            (Some(hs(12)), false)
        );
        // Also when an earlier commit index was owed and this Ready brought
        // no hard state of its own.
        assert_eq!(ready(Some(hs(13)), 13, false, false, false), (None, true));
        assert_eq!(ready(None, 14, false, false, true), (Some(hs(14)), false));
    }

    #[test]
    fn a_quiet_follower_is_ticked_only_on_its_election_and_owes_the_ticks_before() {
        let g = Gauge::default();
        // Not quiet (a leader, a candidate, a busy follower): ticked at
        // every instant.
        assert_eq!(g.tick_due(7), (true, 8));
        assert_eq!(g.next_tick(7), 8);
        // Quiet at instant 10, its election 3 ticks away: instants 11 and 12
        // are not ticked, 13 is, with the two before it owed.
        g.sleep_at(Some(3), 10);
        assert_eq!(g.next_tick(10), 13);
        assert_eq!(g.tick_due(11), (false, 13));
        assert_eq!(g.tick_due(12), (false, 13));
        assert_eq!(g.tick_due(13), (true, 14));
        assert_eq!(g.wake_at(13), 2);
        // Awake again: every instant.
        assert_eq!(g.tick_due(14), (true, 15));
        // A message wakes it first: it runs the instants passed, never the
        // one its election fires on, however late it wakes.
        for (woke_at, owed) in [(10, 0), (11, 1), (12, 2), (13, 2), (40, 2)] {
            g.sleep_at(Some(3), 10);
            assert_eq!(g.wake_at(woke_at), owed, "woke at instant {woke_at}");
        }
        // An instant older than the quiet one (the driver not caught up).
        g.sleep_at(Some(3), 10);
        assert_eq!(g.tick_due(9), (false, 13));
        assert_eq!(g.wake_at(9), 0);
        // One tick from its election, or past it (a learner's count runs
        // on): ticked at the next instant, nothing owed.
        for budget in [1, 0] {
            g.sleep_at(Some(budget), 10);
            assert_eq!(g.next_tick(10), 11);
            assert_eq!(g.tick_due(11), (true, 12));
            assert_eq!(g.wake_at(11), 0);
        }
        // The instant's low 32 bits wrap.
        let k = u64::from(u32::MAX);
        g.sleep_at(Some(3), k);
        assert_eq!(g.tick_due(k + 2), (false, k + 3));
        assert_eq!(g.tick_due(k + 3), (true, k + 4));
        assert_eq!(g.wake_at(k + 3), 2);
    }
}
