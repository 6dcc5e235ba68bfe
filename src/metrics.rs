//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Every metric is an atomic owned by the registry; the tasks that observe an
//! event (replica, transport, health monitor, coordinator) update it in place,
//! and the admin API encodes the registry on request. Nothing here locks.
//!
//! This is a bottom layer: it imports nothing else of the crate.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use raft::StateRole;

/// The API spelling of a role, as the admin API and the role gauge write it.
pub fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre_candidate",
    }
}

/// Labels of a per-peer metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id.
    pub peer: String,
}

/// Labels of the role gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: String,
}

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    role: Family<RoleLabels, Gauge>,
    term: Gauge,
    leader_id: Gauge,
    leader_changes: Counter,
    peers_alive: Gauge,
    bootstrap_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    sent: Family<PeerLabels, Counter>,
    received: Family<PeerLabels, Counter>,
    dropped: Family<PeerLabels, Counter>,
    ready_seconds: Histogram,
    snapshots_installed: Counter,
    snapshots_built: Counter,
    compactions: Counter,
    log_entries: Gauge,
    applied_index: Gauge,
    disk: DiskMetrics,
    backup: BackupMetrics,
}

/// The scheduled backups' metrics.
#[derive(Debug)]
struct BackupMetrics {
    disk_full: Gauge,
    disk_free: Gauge,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_bytes: Gauge,
    last_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    runs: Counter,
    failures: Counter,
}

impl BackupMetrics {
    fn register(registry: &mut Registry) -> BackupMetrics {
        let b = BackupMetrics {
            disk_full: Gauge::default(),
            disk_free: Gauge::default(),
            last_success: Gauge::default(),
            last_bytes: Gauge::default(),
            last_seconds: Gauge::default(),
            runs: Counter::default(),
            failures: Counter::default(),
        };
        registry.register(
            "disk_full",
            "1 while the data dir's filesystem has less free space than the node keeps in \
             reserve (NOSPACE): writes through this node are refused",
            b.disk_full.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes on the data dir's filesystem at the last look",
            b.disk_free.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last scheduled backup written by this node (0: none yet)",
            b.last_success.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Size of the last scheduled backup written by this node",
            b.last_bytes.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "Time to take and write the last scheduled backup",
            b.last_seconds.clone(),
        );
        registry.register(
            "backup_runs",
            "Scheduled backups written by this node",
            b.runs.clone(),
        );
        registry.register(
            "backup_failures",
            "Scheduled backups of this node that failed",
            b.failures.clone(),
        );
        b
    }
}

/// The write path's stages, named as an operator of etcd expects them.
#[derive(Debug)]
struct DiskMetrics {
    wal_fsync_seconds: Histogram,
    wal_writes_per_fsync: Histogram,
    apply_seconds: Histogram,
    checkpoint_seconds: Histogram,
    checkpoints: Counter,
    store_transactions: Counter,
    proposal_seconds: Histogram,
    proposals_applied: Counter,
    proposals_failed: Counter,
}

impl DiskMetrics {
    fn register(registry: &mut Registry) -> DiskMetrics {
        // 10 µs .. ~10 s, doubling.
        let seconds = || Histogram::new(exponential_buckets(0.00001, 2.0, 21));
        let d = DiskMetrics {
            wal_fsync_seconds: seconds(),
            wal_writes_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            apply_seconds: seconds(),
            checkpoint_seconds: seconds(),
            checkpoints: Counter::default(),
            store_transactions: Counter::default(),
            proposal_seconds: seconds(),
            proposals_applied: Counter::default(),
            proposals_failed: Counter::default(),
        };
        registry.register(
            "disk_wal_fsync_duration_seconds",
            "Time of one fdatasync of the Raft log (one per batch of Readies)",
            d.wal_fsync_seconds.clone(),
        );
        registry.register(
            "disk_wal_writes_per_fsync",
            "Ready writes one fdatasync of the Raft log made durable",
            d.wal_writes_per_fsync.clone(),
        );
        registry.register(
            "disk_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine (no fsync)",
            d.apply_seconds.clone(),
        );
        registry.register(
            "disk_checkpoint_duration_seconds",
            "Time of one checkpoint of the state machine (its one fsync)",
            d.checkpoint_seconds.clone(),
        );
        registry.register(
            "disk_checkpoints",
            "Checkpoints of the state machine",
            d.checkpoints.clone(),
        );
        registry.register(
            "disk_store_transactions",
            "Write transactions committed to the state machine's file (applies, checkpoints, snapshot installs)",
            d.store_transactions.clone(),
        );
        registry.register(
            "proposal_duration_seconds",
            "Time from a write's proposal on this node until it is applied here",
            d.proposal_seconds.clone(),
        );
        registry.register(
            "proposals_applied",
            "Writes proposed on this node and applied",
            d.proposals_applied.clone(),
        );
        registry.register(
            "proposals_failed",
            "Writes proposed on this node that failed or whose outcome is unknown (no leader, timeout, node stopping)",
            d.proposals_failed.clone(),
        );
        d
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quorumd");
        let role = Family::<RoleLabels, Gauge>::default();
        let term = Gauge::default();
        let leader_id = Gauge::default();
        let leader_changes = Counter::default();
        let peers_alive = Gauge::default();
        let bootstrap_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let sent = Family::<PeerLabels, Counter>::default();
        let received = Family::<PeerLabels, Counter>::default();
        let dropped = Family::<PeerLabels, Counter>::default();
        // 10 µs .. ~10 s: a Ready with an fsync takes around a millisecond.
        let ready_seconds = Histogram::new(exponential_buckets(0.00001, 4.0, 11));
        registry.register(
            "raft_role",
            "1 for this node's current role in __meta/0, 0 for the others",
            role.clone(),
        );
        registry.register("raft_term", "Current Raft term of __meta/0", term.clone());
        registry.register(
            "raft_leader_id",
            "Known leader of __meta/0 (0 when none)",
            leader_id.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times the known leader of __meta/0 changed",
            leader_changes.clone(),
        );
        registry.register("peers_alive", "Peers currently alive", peers_alive.clone());
        registry.register(
            "bootstrap_duration_seconds",
            "Time from process start to bootstrap complete (0 until then)",
            bootstrap_seconds.clone(),
        );
        registry.register(
            "peer_messages_sent",
            "Raft messages written to a peer",
            sent.clone(),
        );
        registry.register(
            "peer_messages_received",
            "Raft messages received from a peer",
            received.clone(),
        );
        registry.register(
            "peer_messages_dropped",
            "Raft messages to a peer dropped (queue full or peer unreachable)",
            dropped.clone(),
        );
        registry.register(
            "raft_ready_duration_seconds",
            "Time to handle one Raft Ready, durable write included",
            ready_seconds.clone(),
        );
        let snapshots_installed = Counter::default();
        let snapshots_built = Counter::default();
        let compactions = Counter::default();
        let log_entries = Gauge::default();
        let applied_index = Gauge::default();
        registry.register(
            "raft_snapshots_installed",
            "Snapshots received from the leader and installed (this node was behind the compacted log)",
            snapshots_installed.clone(),
        );
        registry.register(
            "raft_snapshots_built",
            "Snapshots built for followers behind the compacted log",
            snapshots_built.clone(),
        );
        registry.register(
            "raft_log_compactions",
            "Times the log was compacted after a snapshot point",
            compactions.clone(),
        );
        registry.register(
            "raft_log_entries",
            "Log entries held in memory",
            log_entries.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest index applied to the store",
            applied_index.clone(),
        );
        let disk = DiskMetrics::register(&mut registry);
        let backup = BackupMetrics::register(&mut registry);
        Metrics {
            disk,
            backup,
            snapshots_installed,
            snapshots_built,
            compactions,
            log_entries,
            applied_index,
            registry,
            role,
            term,
            leader_id,
            leader_changes,
            peers_alive,
            bootstrap_seconds,
            sent,
            received,
            dropped,
            ready_seconds,
        }
    }

    /// Records the replica's role, term and leader.
    pub fn set_raft_state(&self, role: StateRole, term: u64, leader_id: u64) {
        for r in [
            StateRole::Leader,
            StateRole::Follower,
            StateRole::Candidate,
            StateRole::PreCandidate,
        ] {
            let labels = RoleLabels {
                role: role_name(r).to_string(),
            };
            self.role.get_or_create(&labels).set(i64::from(r == role));
        }
        self.term.set(term as i64);
        let previous = self.leader_id.set(leader_id as i64);
        if previous != leader_id as i64 && leader_id != 0 {
            self.leader_changes.inc();
        }
    }

    /// Records the number of live peers.
    pub fn set_peers_alive(&self, n: usize) {
        self.peers_alive.set(n as i64);
    }

    /// Records a scheduled backup written at `unix_seconds`.
    pub fn backup_written(&self, unix_seconds: f64, bytes: u64, took: Duration) {
        self.backup.last_success.set(unix_seconds);
        self.backup.last_bytes.set(bytes as i64);
        self.backup.last_seconds.set(took.as_secs_f64());
        self.backup.runs.inc();
    }

    /// Records the full-disk guard's last look.
    pub fn set_disk(&self, full: bool, free: u64) {
        self.backup.disk_full.set(i64::from(full));
        self.backup.disk_free.set(free.min(i64::MAX as u64) as i64);
    }

    /// Records a scheduled backup that failed.
    pub fn backup_failed(&self) {
        self.backup.failures.inc();
    }

    /// Records how long bootstrap took.
    pub fn set_bootstrap_duration(&self, d: Duration) {
        self.bootstrap_seconds.set(d.as_secs_f64());
    }

    /// Shows `peer`'s counters at zero before its first message.
    pub fn add_peer(&self, peer: u64) {
        self.sent(peer, 0);
        self.received_n(peer, 0);
        self.dropped(peer, 0);
    }

    fn received_n(&self, peer: u64, n: u64) {
        self.peer(&self.received, peer).inc_by(n);
    }

    /// Counts messages written to `peer`.
    pub fn sent(&self, peer: u64, n: usize) {
        self.peer(&self.sent, peer).inc_by(n as u64);
    }

    /// Counts one message received from `peer`.
    pub fn received(&self, peer: u64) {
        self.received_n(peer, 1);
    }

    /// Counts messages to `peer` that were dropped.
    pub fn dropped(&self, peer: u64, n: usize) {
        self.peer(&self.dropped, peer).inc_by(n as u64);
    }

    /// Records the time one Ready took.
    pub fn observe_ready(&self, d: Duration) {
        self.ready_seconds.observe(d.as_secs_f64());
    }

    /// One fdatasync of the Raft log, covering `writes` Ready writes.
    pub fn observe_wal_fsync(&self, d: Duration, writes: usize) {
        self.disk.wal_fsync_seconds.observe(d.as_secs_f64());
        self.disk.wal_writes_per_fsync.observe(writes as f64);
    }

    /// One apply batch.
    pub fn observe_apply(&self, d: Duration) {
        self.disk.apply_seconds.observe(d.as_secs_f64());
    }

    /// One checkpoint of the state machine.
    pub fn observe_checkpoint(&self, d: Duration) {
        self.disk.checkpoint_seconds.observe(d.as_secs_f64());
    }

    /// A checkpoint finished.
    pub fn checkpointed(&self) {
        self.disk.checkpoints.inc();
    }

    /// The counter of the state machine's write transactions, for the store
    /// to count its own commits.
    pub fn store_transactions(&self) -> Counter {
        self.disk.store_transactions.clone()
    }

    /// A proposal of this node was applied, `d` after it was proposed.
    pub fn proposal_applied(&self, d: Duration) {
        self.disk.proposal_seconds.observe(d.as_secs_f64());
        self.disk.proposals_applied.inc();
    }

    /// A proposal of this node failed or ended unknown.
    pub fn proposal_failed(&self) {
        self.disk.proposals_failed.inc();
    }

    /// A snapshot from the leader was installed.
    pub fn snapshot_installed(&self) {
        self.snapshots_installed.inc();
    }

    /// A snapshot was built for a follower.
    pub fn snapshot_built(&self) {
        self.snapshots_built.inc();
    }

    /// The log was compacted.
    pub fn compacted(&self) {
        self.compactions.inc();
    }

    /// The log held in memory and the applied index.
    pub fn set_log(&self, entries: u64, applied: u64) {
        self.log_entries.set(entries as i64);
        self.applied_index.set(applied as i64);
    }

    fn peer(&self, family: &Family<PeerLabels, Counter>, peer: u64) -> Counter {
        family.get_or_create_owned(&PeerLabels {
            peer: peer.to_string(),
        })
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_metric_with_its_value() {
        let m = Metrics::new();
        m.set_raft_state(StateRole::Leader, 4, 2);
        m.sent(3, 5);
        m.dropped(3, 1);
        m.observe_ready(Duration::from_micros(300));
        m.store_transactions().inc_by(3);
        let text = m.encode();
        assert!(text.contains("quorumd_raft_term 4"), "{text}");
        assert!(text.contains("quorumd_raft_leader_id 2"), "{text}");
        assert!(
            text.contains("quorumd_raft_role{role=\"leader\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quorumd_raft_leader_changes_total 1"),
            "{text}"
        );
        assert!(
            text.contains("quorumd_peer_messages_sent_total{peer=\"3\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("quorumd_raft_ready_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("quorumd_disk_store_transactions_total 3"),
            "{text}"
        );
    }
}
