//! The replica driver: one task per Raft group that alone owns its `RawNode`.
//!
//! Everything reaches the driver through one flume inbox ([`ReplicaMsg`]):
//! ticks, peer messages, transport reports, and queries. After each batch of
//! inbox messages it handles the Ready, in exactly one place and in the order
//! raft-rs documents (DESIGN.md rule 4):
//!
//! 1. send `messages`;
//! 2. take the snapshot, 3. apply committed entries;
//! 4. persist snapshot, entries and hard state in one durable write;
//! 5. only then send `persisted_messages`;
//! 6. `advance`, then the light ready (commit index, messages, entries);
//! 7. `advance_apply`.
//!
//! Network sends never wait: they go into the transport's bounded queues. The
//! only await inside a Ready is the durable write, which runs off the executor.

use std::sync::Arc;

use log::{debug, error, info, warn};
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{RawNode, SnapshotStatus, StateRole};
use slog::Drain as _;

use crate::config::RaftTiming;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::raft::storage::{load_into, LogStore, PersistBatch};
use crate::runtime::or_shutdown;
use crate::transport::wire::GroupId;
use crate::transport::PeerSenders;

/// Capacity of a replica's inbox. Peer messages and ticks that find it full
/// are dropped; Raft tolerates both.
pub const INBOX_CAPACITY: usize = 1024;
/// Inbox messages handled before the next Ready.
pub const MAX_INBOX_BATCH: usize = 256;
/// Largest append a leader sends in one message.
pub const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Appends in flight to one follower.
pub const MAX_INFLIGHT_MSGS: usize = 256;

/// What a replica's inbox carries.
#[derive(Debug)]
pub enum ReplicaMsg {
    /// One logical clock tick, from the tick driver.
    Tick,
    /// A message from a peer.
    Raft(Box<Message>),
    /// A send to this peer failed.
    Unreachable(u64),
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
}

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
    /// The known leader, if any.
    pub leader_id: Option<u64>,
    /// The highest index known committed.
    pub commit_index: u64,
    /// The highest index applied.
    pub applied_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The peer a leader is handing leadership to, while it does.
    pub transferring_to: Option<u64>,
}

impl ReplicaStatus {
    /// The role as the admin API spells it.
    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }
}

/// The API spelling of a role.
pub fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre_candidate",
    }
}

/// A cloneable handle to a running replica.
#[derive(Clone)]
pub struct ReplicaHandle {
    tx: flume::Sender<ReplicaMsg>,
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

    pub(crate) fn sender(&self) -> flume::Sender<ReplicaMsg> {
        self.tx.clone()
    }
}

/// One Raft group's driver. Built by the group manager and run as a task.
pub struct PartitionReplica {
    group: GroupId,
    node: RawNode<MemStorage>,
    store: Arc<dyn LogStore>,
    peers: PeerSenders,
    inbox: flume::Receiver<ReplicaMsg>,
    subscribers: Vec<flume::Sender<ReplicaStatus>>,
    published: Option<(StateRole, u64, u64, Option<u64>)>,
    metrics: Arc<Metrics>,
}

impl PartitionReplica {
    /// Recovers the group's state from `store` and builds its `RawNode`.
    pub fn new(
        node_id: u64,
        group: GroupId,
        timing: &RaftTiming,
        store: Arc<dyn LogStore>,
        peers: PeerSenders,
        metrics: Arc<Metrics>,
    ) -> Result<(PartitionReplica, ReplicaHandle)> {
        let recovered = store.recover()?;
        let view = MemStorage::new();
        load_into(&view, &recovered)?;
        let config = raft::Config {
            id: node_id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            applied: recovered.applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            ..Default::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(
            slog_stdlog::StdLog.fuse(),
            slog::o!("group" => group.to_string()),
        );
        let node = RawNode::new(&config, view, &logger)?;
        let (tx, inbox) = flume::bounded(INBOX_CAPACITY);
        let handle = ReplicaHandle { tx };
        info!(
            "{group}: replica recovered: term={} vote={} commit={} applied={} last_index={} voters={:?}",
            recovered.hard_state.term,
            recovered.hard_state.vote,
            recovered.hard_state.commit,
            recovered.applied,
            node.raft.raft_log.last_index(),
            recovered.conf_state().voters
        );
        Ok((
            PartitionReplica {
                group,
                node,
                store,
                peers,
                inbox,
                subscribers: Vec::new(),
                published: None,
                metrics,
            },
            handle,
        ))
    }

    /// Runs until `shutdown` closes (`Ok`) or storage fails (`Err`, fatal).
    pub async fn run(mut self, shutdown: flume::Receiver<()>) -> Result<()> {
        loop {
            let first = or_shutdown(&shutdown, self.inbox.recv_async())
                .await
                .and_then(Result::ok);
            let Some(first) = first else { break };
            self.handle(first);
            for _ in 1..MAX_INBOX_BATCH {
                match self.inbox.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let had_ready = self.node.has_ready();
            let handled = self.on_ready().await;
            if had_ready {
                self.metrics.observe_ready(started.elapsed());
            }
            if let Err(e) = handled {
                error!("{}: stopping replica: {e}", self.group);
                return Err(e);
            }
            self.publish();
        }
        debug!("{}: replica stopped", self.group);
        Ok(())
    }

    fn handle(&mut self, msg: ReplicaMsg) {
        match msg {
            ReplicaMsg::Tick => {
                self.node.tick();
            }
            ReplicaMsg::Raft(m) => {
                let (from, kind) = (m.from, m.get_msg_type());
                if let Err(e) = self.node.step(*m) {
                    debug!("{}: ignored {kind:?} from {from}: {e}", self.group);
                }
            }
            ReplicaMsg::Unreachable(peer) => {
                if self.node.raft.lead_transferee == Some(peer) {
                    // The peer went away (it may be stopping too): keep
                    // leading rather than wait out the transfer timeout.
                    info!(
                        "{}: leadership transfer to node {peer} aborted: unreachable",
                        self.group
                    );
                    self.node.raft.abort_leader_transfer();
                }
                self.node.report_unreachable(peer);
            }
            ReplicaMsg::SnapshotStatus { peer, delivered } => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(peer, status);
            }
            ReplicaMsg::Campaign => {
                if self.node.raft.state != StateRole::Leader {
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
            leader_id: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            transferring_to: raft.lead_transferee,
        }
    }

    /// Logs and publishes a change of role, term or leader.
    fn publish(&mut self) {
        let raft = &self.node.raft;
        let now = (raft.state, raft.term, raft.leader_id, raft.lead_transferee);
        if self.published == Some(now) {
            return;
        }
        let leader_changed = self.published.is_none_or(|(_, _, l, _)| l != now.2);
        let role_changed = self.published.is_none_or(|(r, _, _, _)| r != now.0);
        self.published = Some(now);
        self.metrics.set_raft_state(now.0, now.1, now.2);
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
        }
        let status = self.status();
        self.subscribers.retain(|s| s.send(status.clone()).is_ok());
    }

    async fn on_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();

        // 1. Messages that may go out before persisting (a leader's appends).
        self.send(ready.take_messages());

        // 2. + 4. Collect what must become durable.
        let mut batch = PersistBatch::default();
        if !ready.snapshot().is_empty() {
            batch.snapshot = Some(ready.snapshot().clone());
        }
        // 3. Apply committed entries. They were persisted by earlier Readies.
        let committed = ready.take_committed_entries();
        batch.applied = self.apply(committed);
        batch.entries = ready.take_entries();
        batch.hard_state = ready.hs().cloned();

        // 4. Make it durable, then show it to raft's storage view.
        self.persist(&batch).await?;
        {
            let mut view = self.node.mut_store().wl();
            if let Some(snapshot) = batch.snapshot.take() {
                view.apply_snapshot(snapshot)?;
            }
            if !batch.entries.is_empty() {
                view.append(&batch.entries)?;
            }
            if let Some(hs) = batch.hard_state.take() {
                view.set_hardstate(hs);
            }
        }

        // 5. Messages that must wait for the write (votes, append acks).
        self.send(ready.take_persisted_messages());

        // 6. Advance, then the light ready.
        let mut light = self.node.advance(ready);
        let mut after = PersistBatch::default();
        if let Some(commit) = light.commit_index() {
            // Persist the commit index too, so that it never goes backwards
            // across a restart.
            let mut view = self.node.mut_store().wl();
            view.mut_hard_state().commit = commit;
            after.hard_state = Some(view.hard_state().clone());
        }
        self.send(light.take_messages());
        after.applied = self.apply(light.take_committed_entries());
        self.persist(&after).await?;

        // 7.
        self.node.advance_apply();
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            self.peers.send(&self.group, m);
        }
    }

    /// Applies committed entries; returns the new applied index, if any.
    ///
    /// `__meta/0` has no state machine yet: normal entries are only counted.
    /// Conf changes are applied to the in-memory configuration; quorumd's
    /// membership is static, so none are ever proposed.
    fn apply(&mut self, entries: Vec<Entry>) -> Option<u64> {
        let mut applied = None;
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_ok() {
                        let result = self.node.apply_conf_change(&cc);
                        self.conf_changed(result);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_ok() {
                        let result = self.node.apply_conf_change(&cc);
                        self.conf_changed(result);
                    }
                }
            }
            applied = Some(entry.index);
        }
        applied
    }

    fn conf_changed(&mut self, result: raft::Result<raft::prelude::ConfState>) {
        match result {
            Ok(cs) => {
                warn!(
                    "{}: applied a membership change to voters {:?}; quorumd's membership is static",
                    self.group, cs.voters
                );
                self.node.mut_store().wl().set_conf_state(cs);
            }
            Err(e) => warn!("{}: membership change refused: {e}", self.group),
        }
    }

    async fn persist(&self, batch: &PersistBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if !self.store.is_blocking() {
            return self.store.persist(batch);
        }
        let store = self.store.clone();
        let batch = batch.clone();
        blocking::unblock(move || store.persist(&batch)).await
    }
}
