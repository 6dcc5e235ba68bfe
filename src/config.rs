//! The cluster file: every node reads the same TOML file listing all members.
//!
//! Parsing happens in two steps. serde reads the raw file (unknown keys are
//! rejected there), then [`ClusterConfig::parse`] checks the file as a whole
//! and turns it into a [`ClusterConfig`]. Every error names the field and the
//! reason, so an operator can fix the file without reading code.
//!
//! Every duration has a sane range ([`DurationRange`]): a tick of `1ns` would
//! make a node spin a core so hard it never handles SIGTERM, and a timeout of
//! `100000000000000s` overflows the clock arithmetic. Values outside the range
//! are refused, naming the field.
//!
//! The optional `[tls]` table turns on mutual TLS between peers (see
//! [`TlsFiles`]); its paths are relative to the cluster file.
//!
//! This is a bottom layer: it imports nothing of the crate but the error type.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default time a node waits for a quorum before it gives up.
pub const DEFAULT_QUORUM_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between two health probes of one peer.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default silence after which a peer counts as dead.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// Default Raft tick. With 3 election ticks an election starts after 300–600 ms
/// of silence from the leader (raft randomizes in `[1x, 2x)`), and the leader
/// sends a heartbeat every tick. Ticks are an idle node's most frequent
/// wakeup: 100 ms keeps idle CPU near 0.2 % of a core, where 25 ms ticks cost
/// twice that, while failover stays well under the 500 ms median target
/// (measured by `make bench`). Nodes tick on unrelated phases, so two
/// followers rarely time out within one round trip of each other.
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Default election timeout, in ticks.
pub const DEFAULT_ELECTION_TICKS: usize = 3;
/// Default leader heartbeat, in ticks.
pub const DEFAULT_HEARTBEAT_TICKS: usize = 1;
/// Default data directory when the file names none (relative to the file).
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default largest value of one key: Consul's own limit, 512 KiB.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 512 * 1024;
/// The largest `max_value_bytes` allowed. An entry must fit one peer frame
/// (4 MiB) with room to spare, and a snapshot is assembled in memory.
pub const MAX_VALUE_BYTES_LIMIT: u64 = 2 * 1024 * 1024;
/// Default cap on the store's total size (keys and values).
pub const DEFAULT_MAX_STORE_BYTES: u64 = 64 * 1024 * 1024;
/// The largest `max_store_bytes` allowed: snapshots are built and received
/// in memory, and quorumd runs on boxes with little of it.
pub const MAX_STORE_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// Default time a KV request waits for its commit (or its read index).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default entries applied since the last snapshot that trigger the next one.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 10_000;
/// Default log bytes applied since the last snapshot that trigger the next one.
/// The log keeps entries the state machine holds already, for followers that
/// lag: 4 MiB keeps the data dir within about 2.5 times the data it holds,
/// and still lets a follower that was away for a few thousand small writes
/// catch up from the log.
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 4 * 1024 * 1024;
/// The longest cluster name: it travels in every handshake, which is read
/// with a 1 KiB limit.
pub const MAX_CLUSTER_NAME_BYTES: usize = 255;
/// The most election ticks a file may ask for.
pub const MAX_ELECTION_TICKS: usize = 10_000;

/// Default most bytes one answer may carry (a listing, a transaction's
/// reads), as the node estimates it before building it.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Default most entries the reads of one transaction may return.
pub const DEFAULT_MAX_TXN_READS: u64 = 10_000;
/// Default bytes of request bodies and built answers that all requests
/// together may hold at once.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 64 * 1024 * 1024;
/// Default admin connections served at once, from every client.
pub const DEFAULT_MAX_CONNS: usize = 512;
/// Default admin connections one client address may hold (Consul's
/// `http_max_conns_per_client` is 200; a node on a small box takes less).
pub const DEFAULT_MAX_CONNS_PER_CLIENT: usize = 64;
/// Default blocking queries held at once.
pub const DEFAULT_MAX_BLOCKING_QUERIES: usize = 256;
/// Default sessions the cluster holds at most, in all.
pub const DEFAULT_MAX_SESSIONS: u64 = 10_000;
/// Default sessions bound to one node at most.
pub const DEFAULT_MAX_SESSIONS_PER_NODE: u64 = 2_000;
/// Default idle limit of an HTTPS connection without a client certificate.
pub const DEFAULT_ANONYMOUS_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default peer-port connections one source address may have in their
/// handshake at once.
pub const DEFAULT_PEER_HANDSHAKES_PER_ADDRESS: usize = 4;
/// `limits.anonymous_idle_timeout`: between 100 ms and a minute.
pub const ANONYMOUS_IDLE_TIMEOUT_RANGE: DurationRange = ms(100)..=secs(60);

/// The range a duration field must fall in.
pub type DurationRange = RangeInclusive<Duration>;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const ONE_DAY: Duration = secs(24 * 3600);

/// `cluster.quorum_wait_timeout`: a wait of at most a day.
pub const QUORUM_WAIT_TIMEOUT_RANGE: DurationRange = ms(10)..=ONE_DAY;
/// `cluster.heartbeat_interval`: probes at most 100 times a second, at least hourly.
pub const HEARTBEAT_INTERVAL_RANGE: DurationRange = ms(10)..=secs(3600);
/// `cluster.peer_timeout`: at most a day.
pub const PEER_TIMEOUT_RANGE: DurationRange = ms(10)..=ONE_DAY;
/// `raft.tick_interval`: between 1 ms and 10 s.
pub const TICK_INTERVAL_RANGE: DurationRange = ms(1)..=secs(10);
/// `store.request_timeout`: a client waits at most 10 minutes.
pub const REQUEST_TIMEOUT_RANGE: DurationRange = ms(10)..=secs(600);

/// The cluster file as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default)]
    raft: RawRaft,
    tls: Option<RawTls>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    limits: RawLimits,
    backup: Option<RawBackup>,
    #[serde(default)]
    acl: RawAcl,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    dir: PathBuf,
    interval: Option<toml::Value>,
    keep: Option<usize>,
}

/// `backup.interval`: between 100 ms and 7 days.
pub const BACKUP_INTERVAL_RANGE: DurationRange = ms(100)..=secs(7 * 24 * 3600);
/// Default time between two scheduled backups.
pub const DEFAULT_BACKUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Default number of scheduled backups kept.
pub const DEFAULT_BACKUP_KEEP: usize = 24;

/// The `[backup]` table: the leader writes a backup every `interval` into
/// `dir` on its own box, keeping the newest `keep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSchedule {
    /// Where the backups go; relative to the cluster file's directory.
    pub dir: PathBuf,
    /// Time between two backups.
    pub interval: Duration,
    /// How many backups are kept (at least 1).
    pub keep: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcl {
    enabled: Option<bool>,
    default_policy: Option<String>,
    metrics_need_token: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_response_bytes: Option<toml::Value>,
    max_txn_reads: Option<u64>,
    max_buffered_bytes: Option<toml::Value>,
    max_conns: Option<usize>,
    max_conns_per_client: Option<usize>,
    max_blocking_queries: Option<usize>,
    anonymous_idle_timeout: Option<toml::Value>,
    peer_handshakes_per_address: Option<usize>,
    max_sessions: Option<usize>,
    max_sessions_per_node: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: String,
    key: String,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    quorum_wait_timeout: Option<toml::Value>,
    heartbeat_interval: Option<toml::Value>,
    peer_timeout: Option<toml::Value>,
    data_dir: Option<PathBuf>,
    auto_promote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    tick_interval: Option<toml::Value>,
    election_ticks: Option<usize>,
    heartbeat_ticks: Option<usize>,
    snapshot_entries: Option<u64>,
    snapshot_bytes: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    max_value_bytes: Option<toml::Value>,
    max_store_bytes: Option<toml::Value>,
    request_timeout: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: u64,
    addr: String,
    admin: String,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Raft id; unique and non-zero.
    pub id: u64,
    /// Peer (Raft) address.
    pub addr: SocketAddr,
    /// HTTP admin address.
    pub admin: SocketAddr,
}

/// Raft timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTiming {
    /// One logical Raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks; randomized in `[1x, 2x)` by raft.
    pub election_ticks: usize,
    /// Leader heartbeat in ticks.
    pub heartbeat_ticks: usize,
    /// Entries applied since the last snapshot that trigger the next one.
    pub snapshot_entries: u64,
    /// Log bytes applied since the last snapshot that trigger the next one.
    pub snapshot_bytes: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            tick_interval: DEFAULT_TICK_INTERVAL,
            election_ticks: DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
        }
    }
}

/// The `[store]` table: limits of the key-value store on `__meta/0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The largest value one key may hold.
    pub max_value_bytes: u64,
    /// The cap on the store's total size, keys and values.
    pub max_store_bytes: u64,
    /// How long a request waits for its commit or read index.
    pub request_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The `[limits]` table: what one request, client or stranger may cost a
/// node. Each bounds memory or a slot; docs/limits.md gives the worst case
/// each allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes one answer may carry, estimated before it is built:
    /// a `?recurse` listing, `?keys`, or the reads of a transaction.
    pub max_response_bytes: u64,
    /// The most entries the reads of one transaction may return.
    pub max_txn_reads: u64,
    /// Bytes of request bodies and built answers that every request
    /// together may hold at once; a request waits for its share.
    pub max_buffered_bytes: u64,
    /// Admin connections served at once.
    pub max_conns: usize,
    /// Admin connections one client address may hold at once.
    pub max_conns_per_client: usize,
    /// Blocking queries (`?index=`) held at once.
    pub max_blocking_queries: usize,
    /// An HTTPS connection without a client certificate is closed after
    /// this long without a request.
    pub anonymous_idle_timeout: Duration,
    /// Peer-port connections one source address may have in their
    /// handshake at once.
    pub peer_handshakes_per_address: usize,
    /// Sessions the cluster holds at most, in all.
    pub max_sessions: u64,
    /// Sessions bound to one node at most.
    pub max_sessions_per_node: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_txn_reads: DEFAULT_MAX_TXN_READS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_conns: DEFAULT_MAX_CONNS,
            max_conns_per_client: DEFAULT_MAX_CONNS_PER_CLIENT,
            max_blocking_queries: DEFAULT_MAX_BLOCKING_QUERIES,
            anonymous_idle_timeout: DEFAULT_ANONYMOUS_IDLE_TIMEOUT,
            peer_handshakes_per_address: DEFAULT_PEER_HANDSHAKES_PER_ADDRESS,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_node: DEFAULT_MAX_SESSIONS_PER_NODE,
        }
    }
}

/// The `[acl]` table. Off by default: every client has every right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AclSettings {
    /// Requests must present a token whose policies allow them.
    pub enabled: bool,
    /// What a request may do that no rule of its token speaks of:
    /// `true` for `default_policy = "allow"`.
    pub default_allow: bool,
    /// `/metrics` needs a token with `operator = "read"` (otherwise it is
    /// open, as `/health` and `/ready` are).
    pub metrics_need_token: bool,
}

impl RaftTiming {
    /// The shortest election timeout raft may pick.
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_ticks as u32
    }
}

/// The `[tls]` table: where the certificates are. Paths are resolved against
/// the cluster file's directory; `cert` and `key` keep `{id}`, which
/// [`TlsFiles::cert`] and [`TlsFiles::key`] replace with a node's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA certificate (PEM). Peers and clients must be signed by it.
    pub ca: PathBuf,
    /// Each node's certificate chain (PEM), with `{id}` in the path.
    pub cert_template: PathBuf,
    /// Each node's private key (PEM), with `{id}` in the path.
    pub key_template: PathBuf,
    /// The CLI's client certificate and key (PEM), if the file names them.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Node `id`'s certificate file.
    pub fn cert(&self, id: u64) -> PathBuf {
        substitute_id(&self.cert_template, id)
    }

    /// Node `id`'s private key file.
    pub fn key(&self, id: u64) -> PathBuf {
        substitute_id(&self.key_template, id)
    }
}

fn substitute_id(template: &Path, id: u64) -> PathBuf {
    PathBuf::from(template.to_string_lossy().replace("{id}", &id.to_string()))
}

/// A validated cluster file. Every node of a cluster holds an identical one.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster's identity; peers of another name are refused.
    pub name: String,
    /// How long bootstrap waits for a quorum.
    pub quorum_wait_timeout: Duration,
    /// Interval between two probes of one peer, once bootstrapped.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer counts as dead.
    pub peer_timeout: Duration,
    /// Node N keeps its state in `<data_dir>/node-N`. A relative
    /// `data_dir` in the file is relative to the file's directory.
    pub data_dir: PathBuf,
    /// The leader promotes a learner to voter once it has caught up.
    pub auto_promote: bool,
    /// Raft timing and log compaction, shared by every group.
    pub raft: RaftTiming,
    /// Limits of the key-value store.
    pub store: StoreSettings,
    /// The `[limits]` table.
    pub limits: Limits,
    /// Mutual TLS between peers, if the file has a `[tls]` table.
    pub tls: Option<TlsFiles>,
    /// The `[acl]` table: tokens and policies.
    pub acl: AclSettings,
    /// Scheduled backups, if the file has a `[backup]` table.
    pub backup: Option<BackupSchedule>,
    /// Every member, sorted by id.
    pub nodes: Vec<NodeConfig>,
}

impl ClusterConfig {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates the text of a cluster file. `path` names the file
    /// in error messages, and relative `[tls]` paths are resolved against its
    /// directory. Nothing is read from disk here.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig> {
        let err = |field: &str, reason: String| Error::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line.
            let reason = e.message().to_string();
            let field = match e.span() {
                Some(span) => {
                    let before = text.as_bytes().get(..span.start).unwrap_or(text.as_bytes());
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    format!("line {line}")
                }
                None => "file".to_string(),
            };
            err(&field, reason)
        })?;

        let name = raw.cluster.name.trim().to_string();
        if name.is_empty() {
            return Err(err("cluster.name", "must not be empty".into()));
        }
        if name.len() > MAX_CLUSTER_NAME_BYTES {
            return Err(err(
                "cluster.name",
                format!(
                    "is {} bytes long; at most {MAX_CLUSTER_NAME_BYTES} are allowed",
                    name.len()
                ),
            ));
        }
        // Durations are read as any TOML value so that a bare number gets an
        // error naming its field, not just a line.
        let duration =
            |field: &str, value: &Option<toml::Value>, default: Duration, range: DurationRange| {
                duration_field(value, default, range).map_err(|reason| err(field, reason))
            };
        let quorum_wait_timeout = duration(
            "cluster.quorum_wait_timeout",
            &raw.cluster.quorum_wait_timeout,
            DEFAULT_QUORUM_WAIT_TIMEOUT,
            QUORUM_WAIT_TIMEOUT_RANGE,
        )?;
        let heartbeat_interval = duration(
            "cluster.heartbeat_interval",
            &raw.cluster.heartbeat_interval,
            DEFAULT_HEARTBEAT_INTERVAL,
            HEARTBEAT_INTERVAL_RANGE,
        )?;
        let peer_timeout = duration(
            "cluster.peer_timeout",
            &raw.cluster.peer_timeout,
            DEFAULT_PEER_TIMEOUT,
            PEER_TIMEOUT_RANGE,
        )?;
        if peer_timeout <= heartbeat_interval {
            return Err(err(
                "cluster.peer_timeout",
                format!(
                    "must be greater than cluster.heartbeat_interval ({} <= {})",
                    humantime::format_duration(peer_timeout),
                    humantime::format_duration(heartbeat_interval)
                ),
            ));
        }
        let data_dir = raw
            .cluster
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(err("cluster.data_dir", "must not be empty".into()));
        }
        // Relative to the cluster file, as the [tls] paths are: the same
        // file means the same directories from wherever a node starts.
        let data_dir = path.parent().unwrap_or(Path::new("")).join(data_dir);

        let defaults = RaftTiming::default();
        let raft = RaftTiming {
            tick_interval: duration(
                "raft.tick_interval",
                &raw.raft.tick_interval,
                defaults.tick_interval,
                TICK_INTERVAL_RANGE,
            )?,
            election_ticks: raw.raft.election_ticks.unwrap_or(defaults.election_ticks),
            heartbeat_ticks: raw.raft.heartbeat_ticks.unwrap_or(defaults.heartbeat_ticks),
            snapshot_entries: raw
                .raft
                .snapshot_entries
                .unwrap_or(defaults.snapshot_entries),
            snapshot_bytes: byte_size(
                "raft.snapshot_bytes",
                &raw.raft.snapshot_bytes,
                defaults.snapshot_bytes,
            )
            .map_err(|(f, r)| err(f, r))?,
        };
        if !(10..=10_000_000).contains(&raft.snapshot_entries) {
            return Err(err(
                "raft.snapshot_entries",
                format!(
                    "must be between 10 and 10000000, not {}",
                    raft.snapshot_entries
                ),
            ));
        }
        check_bytes(
            "raft.snapshot_bytes",
            raft.snapshot_bytes,
            64 * 1024,
            MAX_STORE_BYTES_LIMIT,
        )
        .map_err(|(f, r)| err(f, r))?;

        let store_defaults = StoreSettings::default();
        let store = StoreSettings {
            max_value_bytes: byte_size(
                "store.max_value_bytes",
                &raw.store.max_value_bytes,
                store_defaults.max_value_bytes,
            )
            .map_err(|(f, r)| err(f, r))?,
            max_store_bytes: byte_size(
                "store.max_store_bytes",
                &raw.store.max_store_bytes,
                store_defaults.max_store_bytes,
            )
            .map_err(|(f, r)| err(f, r))?,
            request_timeout: duration(
                "store.request_timeout",
                &raw.store.request_timeout,
                store_defaults.request_timeout,
                REQUEST_TIMEOUT_RANGE,
            )?,
        };
        check_bytes(
            "store.max_value_bytes",
            store.max_value_bytes,
            1,
            MAX_VALUE_BYTES_LIMIT,
        )
        .map_err(|(f, r)| err(f, r))?;
        check_bytes(
            "store.max_store_bytes",
            store.max_store_bytes,
            1024,
            MAX_STORE_BYTES_LIMIT,
        )
        .map_err(|(f, r)| err(f, r))?;
        if store.max_store_bytes < store.max_value_bytes {
            return Err(err(
                "store.max_store_bytes",
                format!(
                    "must be at least store.max_value_bytes ({} < {})",
                    store.max_store_bytes, store.max_value_bytes
                ),
            ));
        }
        let limits = parse_limits(&raw.limits, &store).map_err(|(f, r)| err(f, r))?;
        if raft.heartbeat_ticks == 0 {
            return Err(err("raft.heartbeat_ticks", "must be at least 1".into()));
        }
        if raft.election_ticks > MAX_ELECTION_TICKS {
            return Err(err(
                "raft.election_ticks",
                format!(
                    "{} is out of range: at most {MAX_ELECTION_TICKS}",
                    raft.election_ticks
                ),
            ));
        }
        if raft.election_ticks <= raft.heartbeat_ticks {
            return Err(err(
                "raft.election_ticks",
                format!(
                    "must be greater than raft.heartbeat_ticks ({} <= {})",
                    raft.election_ticks, raft.heartbeat_ticks
                ),
            ));
        }

        if raw.node.is_empty() {
            return Err(err("node", "the file lists no [[node]] entries".into()));
        }
        let mut nodes = Vec::with_capacity(raw.node.len());
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, node) in raw.node.iter().enumerate() {
            let field = |f: &str| format!("node[{i}].{f}");
            if node.id == 0 {
                return Err(err(&field("id"), "must be greater than 0".into()));
            }
            if !ids.insert(node.id) {
                return Err(err(
                    &field("id"),
                    format!("duplicate id {} (ids must be unique)", node.id),
                ));
            }
            let addr = parse_addr(&node.addr).map_err(|reason| err(&field("addr"), reason))?;
            let admin = parse_addr(&node.admin).map_err(|reason| err(&field("admin"), reason))?;
            for (what, a) in [("addr", addr), ("admin", admin)] {
                if !addrs.insert(a) {
                    return Err(err(
                        &field(what),
                        format!("duplicate address {a} (every addr and admin must be unique)"),
                    ));
                }
            }
            nodes.push(NodeConfig {
                id: node.id,
                addr,
                admin,
            });
        }
        nodes.sort_by_key(|n| n.id);

        let tls = match raw.tls {
            None => None,
            Some(t) => Some(parse_tls(t, &name, nodes.len(), path).map_err(|(f, r)| err(&f, r))?),
        };

        let acl = AclSettings {
            enabled: raw.acl.enabled.unwrap_or(false),
            default_allow: match raw.acl.default_policy.as_deref() {
                None | Some("allow") => true,
                Some("deny") => false,
                Some(other) => {
                    return Err(err(
                        "acl.default_policy",
                        format!("must be \"allow\" or \"deny\", not {other:?}"),
                    ))
                }
            },
            metrics_need_token: raw.acl.metrics_need_token.unwrap_or(false),
        };
        let backup = match raw.backup {
            None => None,
            Some(b) => {
                if b.dir.as_os_str().is_empty() {
                    return Err(err("backup.dir", "must not be empty".into()));
                }
                let keep = b.keep.unwrap_or(DEFAULT_BACKUP_KEEP);
                if keep == 0 {
                    return Err(err("backup.keep", "must be at least 1".into()));
                }
                Some(BackupSchedule {
                    dir: path.parent().unwrap_or(Path::new("")).join(b.dir),
                    interval: duration(
                        "backup.interval",
                        &b.interval,
                        DEFAULT_BACKUP_INTERVAL,
                        BACKUP_INTERVAL_RANGE,
                    )?,
                    keep,
                })
            }
        };

        Ok(ClusterConfig {
            name,
            quorum_wait_timeout,
            heartbeat_interval,
            peer_timeout,
            data_dir,
            auto_promote: raw.cluster.auto_promote.unwrap_or(true),
            raft,
            store,
            limits,
            tls,
            acl,
            backup,
            nodes,
        })
    }

    /// The number of voters, counting every node once.
    pub fn cluster_size(&self) -> usize {
        self.nodes.len()
    }

    /// The member with this id, if any.
    pub fn node(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The member with this id, or a usage error listing the known ids.
    pub fn require_node(&self, id: u64) -> Result<&NodeConfig> {
        self.node(id).ok_or_else(|| {
            Error::Usage(format!(
                "unknown --node-id {id}: cluster '{}' has nodes {}",
                self.name,
                self.ids_text()
            ))
        })
    }

    /// Every id, sorted.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn ids_text(&self) -> String {
        self.ids()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The directory where node `id` keeps its state.
    pub fn node_data_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }
}

/// Parses a duration string such as `"50ms"` or `"30s"`. Zero is refused:
/// every duration in the file is a timeout or an interval.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("cannot parse duration {text:?} ({e}); write e.g. \"500ms\" or \"30s\"")
    })?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

/// Reads a size in bytes: a TOML integer, or a string with a unit such as
/// `"512KiB"`, `"64MiB"` or `"16MB"`.
/// The `[limits]` table, checked against `[store]`.
fn parse_limits(
    raw: &RawLimits,
    store: &StoreSettings,
) -> std::result::Result<Limits, (&'static str, String)> {
    let d = Limits::default();
    let count = |field: &'static str, value: Option<usize>, default: usize, max: usize| {
        let n = value.unwrap_or(default);
        if n == 0 || n > max {
            return Err((field, format!("must be between 1 and {max}, not {n}")));
        }
        Ok(n)
    };
    let limits = Limits {
        max_response_bytes: byte_size(
            "limits.max_response_bytes",
            &raw.max_response_bytes,
            d.max_response_bytes,
        )?,
        max_txn_reads: count(
            "limits.max_txn_reads",
            raw.max_txn_reads.map(|n| n.min(usize::MAX as u64) as usize),
            d.max_txn_reads as usize,
            10_000_000,
        )? as u64,
        max_buffered_bytes: byte_size(
            "limits.max_buffered_bytes",
            &raw.max_buffered_bytes,
            d.max_buffered_bytes,
        )?,
        max_conns: count("limits.max_conns", raw.max_conns, d.max_conns, 65_536)?,
        max_conns_per_client: count(
            "limits.max_conns_per_client",
            raw.max_conns_per_client,
            d.max_conns_per_client,
            65_536,
        )?,
        max_blocking_queries: count(
            "limits.max_blocking_queries",
            raw.max_blocking_queries,
            d.max_blocking_queries,
            65_536,
        )?,
        anonymous_idle_timeout: duration_field(
            &raw.anonymous_idle_timeout,
            d.anonymous_idle_timeout,
            ANONYMOUS_IDLE_TIMEOUT_RANGE,
        )
        .map_err(|r| ("limits.anonymous_idle_timeout", r))?,
        peer_handshakes_per_address: count(
            "limits.peer_handshakes_per_address",
            raw.peer_handshakes_per_address,
            d.peer_handshakes_per_address,
            1024,
        )?,
        max_sessions: count(
            "limits.max_sessions",
            raw.max_sessions,
            d.max_sessions as usize,
            1_000_000,
        )? as u64,
        max_sessions_per_node: count(
            "limits.max_sessions_per_node",
            raw.max_sessions_per_node,
            d.max_sessions_per_node as usize,
            1_000_000,
        )? as u64,
    };
    check_bytes(
        "limits.max_response_bytes",
        limits.max_response_bytes,
        64 * 1024,
        MAX_STORE_BYTES_LIMIT * 2,
    )?;
    check_bytes(
        "limits.max_buffered_bytes",
        limits.max_buffered_bytes,
        1024 * 1024,
        16 * 1024 * 1024 * 1024,
    )?;
    // One request must always fit: the largest body (a transaction is capped
    // at the value limit), or the largest answer.
    let need = store.max_value_bytes.max(limits.max_response_bytes);
    if limits.max_buffered_bytes < need {
        return Err((
            "limits.max_buffered_bytes",
            format!(
                "must be at least limits.max_response_bytes and store.max_value_bytes ({} < {need})",
                limits.max_buffered_bytes
            ),
        ));
    }
    Ok(limits)
}

fn byte_size(
    field: &'static str,
    value: &Option<toml::Value>,
    default: u64,
) -> std::result::Result<u64, (&'static str, String)> {
    match value {
        None => Ok(default),
        Some(toml::Value::Integer(n)) => {
            u64::try_from(*n).map_err(|_| (field, format!("must not be negative, not {n}")))
        }
        Some(toml::Value::String(text)) => parse_byte_size(text).map_err(|r| (field, r)),
        Some(other) => Err((
            field,
            format!(
                "must be a number of bytes or a string such as \"64MiB\", not the {} {}",
                other.type_str(),
                show_value(other)
            ),
        )),
    }
}

/// Parses `"512KiB"`, `"64MiB"`, `"1GiB"`, `"16MB"`, `"100kB"` or `"4096"`.
pub fn parse_byte_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("cannot parse size {text:?}; write e.g. \"512KiB\" or \"64MiB\""))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, kB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

fn check_bytes(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> std::result::Result<(), (&'static str, String)> {
    if value < min || value > max {
        return Err((
            field,
            format!("must be between {min} and {max} bytes, not {value}"),
        ));
    }
    Ok(())
}

/// Reads one duration field: absent gives `default`; a string is parsed
/// and must fall in `range`; any other TOML value is refused.
pub fn duration_field(
    value: &Option<toml::Value>,
    default: Duration,
    range: DurationRange,
) -> std::result::Result<Duration, String> {
    let d = match value {
        None => return Ok(default),
        Some(toml::Value::String(text)) => parse_duration(text)?,
        Some(other) => {
            return Err(format!(
                "must be a duration string such as \"500ms\" or \"30s\", not the {} {}",
                other.type_str(),
                show_value(other)
            ))
        }
    };
    if !range.contains(&d) {
        return Err(format!(
            "{} is out of range: must be between {} and {}",
            humantime::format_duration(d),
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        ));
    }
    Ok(d)
}

/// True if `name` can be one label of a DNS name (certificates name a node
/// as `node-<id>.<cluster>`).
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn parse_tls(
    raw: RawTls,
    cluster: &str,
    nodes: usize,
    path: &Path,
) -> std::result::Result<TlsFiles, (String, String)> {
    let field = |f: &str, r: String| (format!("tls.{f}"), r);
    if !is_dns_label(cluster) {
        return Err((
            "cluster.name".to_string(),
            format!(
                "{cluster:?} cannot name certificates: with [tls], a cluster name is one DNS label \
                 (letters, digits and '-', at most 63)"
            ),
        ));
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let resolve = |p: &Path| base.join(p);
    for (name, value) in [("cert", &raw.cert), ("key", &raw.key)] {
        if value.is_empty() {
            return Err(field(name, "must not be empty".into()));
        }
        if nodes > 1 && !value.contains("{id}") {
            return Err(field(
                name,
                format!(
                    "{value:?} must contain {{id}}: every node needs its own certificate, \
                     or one node could pose as another"
                ),
            ));
        }
    }
    if raw.ca.as_os_str().is_empty() {
        return Err(field("ca", "must not be empty".into()));
    }
    let client = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((resolve(&c), resolve(&k))),
        (Some(_), None) => {
            return Err(field(
                "client_key",
                "is missing: client_cert needs it".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(field(
                "client_cert",
                "is missing: client_key needs it".into(),
            ))
        }
    };
    Ok(TlsFiles {
        ca: resolve(&raw.ca),
        cert_template: resolve(Path::new(&raw.cert)),
        key_template: resolve(Path::new(&raw.key)),
        client,
    })
}

fn parse_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not an ip:port socket address (e.g. \"127.0.0.1:7101\")"))
}

/// A TOML value as an error message shows it, as the file would spell it
/// (toml's own `Display` is a serializer this binary does without).
fn show_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show_value).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{k} = {}", show_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "c3"
heartbeat_interval = "1s"
peer_timeout = "3s"
data_dir = "target/x"

[raft]
tick_interval = "25ms"

[[node]]
id = 2
addr = "127.0.0.1:7102"
admin = "127.0.0.1:8102"

[[node]]
id = 1
addr = "127.0.0.1:7101"
admin = "127.0.0.1:8101"
"#;

    fn parse(text: &str) -> Result<ClusterConfig> {
        ClusterConfig::parse(text, Path::new("test.toml"))
    }

    fn config_error(text: &str) -> (String, String) {
        match parse(text) {
            Err(Error::Config { field, reason, .. }) => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn good_file_gets_defaults_and_sorted_nodes() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "c3");
        assert_eq!(c.quorum_wait_timeout, DEFAULT_QUORUM_WAIT_TIMEOUT);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.ids(), vec![1, 2]);
        assert_eq!(c.raft.election_ticks, DEFAULT_ELECTION_TICKS);
        assert_eq!(c.node_data_dir(2), PathBuf::from("target/x/node-2"));
    }

    #[test]
    fn the_acl_table_is_validated() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.acl,
            AclSettings {
                enabled: false,
                default_allow: true,
                metrics_need_token: false
            }
        );
        let on = format!("{GOOD}\n[acl]\nenabled = true\ndefault_policy = \"deny\"\n");
        let c = parse(&on).unwrap();
        assert!(c.acl.enabled && !c.acl.default_allow);
        let (field, reason) = config_error(&format!("{GOOD}\n[acl]\ndefault_policy = \"maybe\"\n"));
        assert_eq!(field, "acl.default_policy");
        assert!(reason.contains("\"allow\" or \"deny\""), "{reason}");
        let (_, reason) = config_error(&format!("{GOOD}\n[acl]\nenabled = \"yes\"\n"));
        assert!(reason.contains("bool"), "{reason}");
        let (_, reason) = config_error(&format!("{GOOD}\n[acl]\ntokens = 1\n"));
        assert!(reason.contains("tokens"), "{reason}");
    }

    #[test]
    fn the_backup_table_is_optional_and_checked() {
        let c = ClusterConfig::parse(GOOD, Path::new("/etc/q/c.toml")).unwrap();
        assert_eq!(c.backup, None);
        let with = |table: &str| format!("{GOOD}\n[backup]\n{table}\n");
        let c = ClusterConfig::parse(&with("dir = \"b\""), Path::new("/etc/q/c.toml")).unwrap();
        assert_eq!(
            c.backup,
            Some(BackupSchedule {
                dir: PathBuf::from("/etc/q/b"),
                interval: DEFAULT_BACKUP_INTERVAL,
                keep: DEFAULT_BACKUP_KEEP,
            })
        );
        let c = parse(&with("dir = \"/b\"\ninterval = \"10m\"\nkeep = 3")).unwrap();
        let b = c.backup.unwrap();
        assert_eq!((b.interval, b.keep), (Duration::from_secs(600), 3));
        assert_eq!(
            config_error(&with("dir = \"b\"\nkeep = 0")).0,
            "backup.keep"
        );
        assert_eq!(
            config_error(&with("dir = \"b\"\ninterval = \"1ms\"")).0,
            "backup.interval"
        );
        assert_eq!(config_error(&with("dir = \"\"")).0, "backup.dir");
        assert!(config_error(&with("interval = \"1h\"")).1.contains("dir"));
        assert!(config_error(&with("dir = \"b\"\nevery = \"1h\""))
            .1
            .contains("every"));
    }

    #[test]
    fn a_relative_data_dir_is_relative_to_the_file() {
        let c = ClusterConfig::parse(GOOD, Path::new("/etc/q/c.toml")).unwrap();
        assert_eq!(c.node_data_dir(1), PathBuf::from("/etc/q/target/x/node-1"));
        let abs = GOOD.replace("\"target/x\"", "\"/var/lib/q\"");
        let c = ClusterConfig::parse(&abs, Path::new("/etc/q/c.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/q"));
        let c = ClusterConfig::parse(GOOD, Path::new("clusters/c.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("clusters/target/x"));
    }

    #[test]
    fn absent_durations_use_documented_defaults() {
        let text = "[cluster]\nname = \"a\"\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.quorum_wait_timeout, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.peer_timeout, Duration::from_secs(15));
    }

    #[test]
    fn unknown_key_is_named() {
        let (_, reason) = config_error(&GOOD.replace("name = \"c3\"", "name = \"c3\"\nbogus = 1"));
        assert!(reason.contains("bogus"), "{reason}");
    }

    #[test]
    fn duplicate_id_and_address_are_refused() {
        let (field, reason) = config_error(&GOOD.replace("id = 2", "id = 1"));
        assert_eq!(field, "node[1].id");
        assert!(reason.contains("duplicate id 1"));
        let (field, reason) = config_error(&GOOD.replace("127.0.0.1:7102", "127.0.0.1:7101"));
        assert_eq!(field, "node[1].addr");
        assert!(reason.contains("duplicate address"));
        // An admin address may not reuse a peer address either.
        let (field, _) = config_error(&GOOD.replace("127.0.0.1:8101", "127.0.0.1:7102"));
        assert_eq!(field, "node[1].admin");
    }

    #[test]
    fn zero_and_garbage_durations_are_refused() {
        let (field, reason) = config_error(&GOOD.replace("\"1s\"", "\"0s\""));
        assert_eq!(field, "cluster.heartbeat_interval");
        assert!(reason.contains("greater than zero"));
        let (field, reason) = config_error(&GOOD.replace("\"25ms\"", "\"soon\""));
        assert_eq!(field, "raft.tick_interval");
        assert!(reason.contains("cannot parse duration"));
    }

    #[test]
    fn bare_number_duration_names_its_field() {
        let (field, reason) = config_error(&GOOD.replace("\"3s\"", "3"));
        assert_eq!(field, "cluster.peer_timeout");
        assert!(reason.contains("duration string"), "{reason}");
    }

    #[test]
    fn peer_timeout_must_exceed_heartbeat() {
        let (field, _) = config_error(&GOOD.replace("\"3s\"", "\"1s\""));
        assert_eq!(field, "cluster.peer_timeout");
    }

    #[test]
    fn bad_address_and_zero_id_are_refused() {
        let (field, _) = config_error(&GOOD.replace("127.0.0.1:8102", "localhost"));
        assert_eq!(field, "node[0].admin");
        let (field, _) = config_error(&GOOD.replace("id = 2", "id = 0"));
        assert_eq!(field, "node[0].id");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let (field, _) = config_error("[cluster\nname = 1");
        assert!(field.starts_with("line "), "{field}");
    }

    #[test]
    fn store_and_snapshot_settings_parse_with_units_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store, StoreSettings::default());
        assert_eq!(c.raft.snapshot_entries, 10_000);
        assert_eq!(c.raft.snapshot_bytes, 4 << 20);
        let text = GOOD.replace(
            "[raft]\n",
            "[store]\nmax_value_bytes = \"1MiB\"\nmax_store_bytes = 2000000\nrequest_timeout = \"2s\"\n[raft]\nsnapshot_entries = 100\nsnapshot_bytes = \"1MB\"\n",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.store.max_value_bytes, 1 << 20);
        assert_eq!(c.store.max_store_bytes, 2_000_000);
        assert_eq!(c.store.request_timeout, Duration::from_secs(2));
        assert_eq!(c.raft.snapshot_entries, 100);
        assert_eq!(c.raft.snapshot_bytes, 1_000_000);
    }

    #[test]
    fn bad_store_settings_name_their_field() {
        let with = |store: &str| GOOD.replace("[raft]\n", &format!("[store]\n{store}\n[raft]\n"));
        let (field, reason) = config_error(&with("max_value_bytes = \"3MiB\""));
        assert_eq!(field, "store.max_value_bytes");
        assert!(reason.contains("between 1 and 2097152"), "{reason}");
        let (field, reason) = config_error(&with("max_store_bytes = \"12 parsecs\""));
        assert_eq!(field, "store.max_store_bytes");
        assert!(reason.contains("unknown size unit"), "{reason}");
        let (field, _) = config_error(&with("max_store_bytes = -5"));
        assert_eq!(field, "store.max_store_bytes");
        let (field, _) = config_error(&with("max_store_bytes = 2048\nmax_value_bytes = 4096"));
        assert_eq!(field, "store.max_store_bytes");
        let (field, _) = config_error(&with("request_timeout = 5"));
        assert_eq!(field, "store.request_timeout");
        let (field, _) = config_error(&GOOD.replace(
            "tick_interval = \"25ms\"",
            "tick_interval = \"25ms\"\nsnapshot_entries = 5",
        ));
        assert_eq!(field, "raft.snapshot_entries");
        let (field, reason) = config_error(&with("bogus = 1"));
        assert!(field.starts_with("line "), "{field}");
        assert!(reason.contains("bogus"), "{reason}");
    }

    #[test]
    fn unknown_node_id_lists_known_ids() {
        let c = parse(GOOD).unwrap();
        let e = c.require_node(9).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("unknown --node-id 9"));
        assert!(e.to_string().contains("1, 2"));
    }

    #[test]
    fn durations_out_of_range_are_refused_naming_the_field() {
        for (from, to, field) in [
            ("\"25ms\"", "\"1ns\"", "raft.tick_interval"),
            ("\"25ms\"", "\"11s\"", "raft.tick_interval"),
            ("\"3s\"", "\"100000000000000s\"", "cluster.peer_timeout"),
            ("\"1s\"", "\"2h\"", "cluster.heartbeat_interval"),
        ] {
            let (f, reason) = config_error(&GOOD.replacen(from, to, 1));
            assert_eq!(f, field, "{to}: {reason}");
            assert!(reason.contains("out of range"), "{reason}");
        }
        let (f, _) = config_error(&GOOD.replace(
            "heartbeat_interval",
            "quorum_wait_timeout = \"25h\"\nheartbeat_interval",
        ));
        assert_eq!(f, "cluster.quorum_wait_timeout");
        let (f, _) = config_error(&GOOD.replace("[raft]", "[raft]\nelection_ticks = 10001"));
        assert_eq!(f, "raft.election_ticks");
        // The edges are allowed.
        parse(&GOOD.replace("\"25ms\"", "\"1ms\"")).unwrap();
        parse(&GOOD.replace("\"25ms\"", "\"10s\"")).unwrap();
    }

    #[test]
    fn long_cluster_name_is_refused() {
        let (f, _) = config_error(&GOOD.replace("\"c3\"", &format!("\"{}\"", "n".repeat(256))));
        assert_eq!(f, "cluster.name");
    }

    const TLS: &str = "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n";

    #[test]
    fn tls_paths_are_relative_to_the_file_and_take_the_id() {
        let text = format!(
            "{GOOD}\n{TLS}client_cert = \"certs/client.pem\"\nclient_key = \"/abs/client.key\"\n"
        );
        let c = ClusterConfig::parse(&text, Path::new("/etc/q/c.toml")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/etc/q/certs/ca.pem"));
        assert_eq!(tls.cert(2), PathBuf::from("/etc/q/certs/node-2.pem"));
        assert_eq!(tls.key(12), PathBuf::from("/etc/q/certs/node-12.key"));
        assert_eq!(
            tls.client,
            Some((
                PathBuf::from("/etc/q/certs/client.pem"),
                PathBuf::from("/abs/client.key")
            ))
        );
        assert!(parse(GOOD).unwrap().tls.is_none());
    }

    #[test]
    fn tls_mistakes_are_named() {
        let (f, reason) = config_error(&format!(
            "{GOOD}\n{}",
            TLS.replace("node-{id}.pem", "node.pem")
        ));
        assert_eq!(f, "tls.cert");
        assert!(reason.contains("{id}"), "{reason}");
        let (f, _) = config_error(&format!("{GOOD}\n{TLS}client_cert = \"c.pem\"\n"));
        assert_eq!(f, "tls.client_key");
        let (f, _) = config_error(&format!(
            "{}\n{TLS}",
            GOOD.replace("\"c3\"", "\"my_cluster\"")
        ));
        assert_eq!(f, "cluster.name");
        let (_, reason) = config_error(&format!("{GOOD}\n{TLS}bogus = 1\n"));
        assert!(reason.contains("bogus"), "{reason}");
    }
}
