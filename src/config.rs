//! The cluster file: every node reads the same TOML file listing all members.
//!
//! Parsing happens in two steps. serde reads the raw file (unknown keys are
//! rejected there), then [`ClusterConfig::parse`] checks the file as a whole
//! and turns it into a [`ClusterConfig`]. Every error names the field and the
//! reason, so an operator can fix the file without reading code.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
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
/// Default data directory when the file names none.
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
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024;

/// The cluster file as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default)]
    raft: RawRaft,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    node: Vec<RawNode>,
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

impl RaftTiming {
    /// The shortest election timeout raft may pick.
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_ticks as u32
    }
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
    /// Node N keeps its state in `<data_dir>/node-N`.
    pub data_dir: PathBuf,
    /// The leader promotes a learner to voter once it has caught up.
    pub auto_promote: bool,
    /// Raft timing and log compaction, shared by every group.
    pub raft: RaftTiming,
    /// Limits of the key-value store.
    pub store: StoreSettings,
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

    /// Parses and validates the text of a cluster file. `path` is only used
    /// in error messages.
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
                    let line = text[..span.start].matches('\n').count() + 1;
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
        // Durations are read as any TOML value so that a bare number gets an
        // error naming its field, not just a line.
        let duration = |field: &str, value: &Option<toml::Value>, default: Duration| match value {
            None => Ok(default),
            Some(toml::Value::String(text)) => {
                parse_duration(text).map_err(|reason| err(field, reason))
            }
            Some(other) => Err(err(
                field,
                format!(
                    "must be a duration string such as \"500ms\" or \"30s\", not the {} {other}",
                    other.type_str()
                ),
            )),
        };
        let quorum_wait_timeout = duration(
            "cluster.quorum_wait_timeout",
            &raw.cluster.quorum_wait_timeout,
            DEFAULT_QUORUM_WAIT_TIMEOUT,
        )?;
        let heartbeat_interval = duration(
            "cluster.heartbeat_interval",
            &raw.cluster.heartbeat_interval,
            DEFAULT_HEARTBEAT_INTERVAL,
        )?;
        let peer_timeout = duration(
            "cluster.peer_timeout",
            &raw.cluster.peer_timeout,
            DEFAULT_PEER_TIMEOUT,
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

        let defaults = RaftTiming::default();
        let raft = RaftTiming {
            tick_interval: duration(
                "raft.tick_interval",
                &raw.raft.tick_interval,
                defaults.tick_interval,
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
        if store.request_timeout > Duration::from_secs(600) {
            return Err(err(
                "store.request_timeout",
                format!(
                    "must be at most 10m, not {}",
                    humantime::format_duration(store.request_timeout)
                ),
            ));
        }
        if raft.heartbeat_ticks == 0 {
            return Err(err("raft.heartbeat_ticks", "must be at least 1".into()));
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

        Ok(ClusterConfig {
            name,
            quorum_wait_timeout,
            heartbeat_interval,
            peer_timeout,
            data_dir,
            auto_promote: raw.cluster.auto_promote.unwrap_or(true),
            raft,
            store,
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

    /// A human summary, printed by `quorumd check`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let q = crate::quorum::quorum_size(self.cluster_size());
        let _ = writeln!(
            s,
            "cluster '{}': {} nodes, quorum {}",
            self.name,
            self.cluster_size(),
            q
        );
        let _ = writeln!(
            s,
            "  quorum_wait_timeout={} heartbeat_interval={} peer_timeout={}",
            humantime::format_duration(self.quorum_wait_timeout),
            humantime::format_duration(self.heartbeat_interval),
            humantime::format_duration(self.peer_timeout)
        );
        let _ = writeln!(
            s,
            "  raft: tick_interval={} election_ticks={} heartbeat_ticks={} (election timeout {}..{})",
            humantime::format_duration(self.raft.tick_interval),
            self.raft.election_ticks,
            self.raft.heartbeat_ticks,
            humantime::format_duration(self.raft.election_timeout()),
            humantime::format_duration(self.raft.election_timeout() * 2)
        );
        let _ = writeln!(
            s,
            "  snapshots: every {} entries or {} bytes of log",
            self.raft.snapshot_entries, self.raft.snapshot_bytes
        );
        let _ = writeln!(
            s,
            "  store: max_value_bytes={} max_store_bytes={} request_timeout={}",
            self.store.max_value_bytes,
            self.store.max_store_bytes,
            humantime::format_duration(self.store.request_timeout)
        );
        let _ = writeln!(s, "  data_dir={}", self.data_dir.display());
        for n in &self.nodes {
            let _ = writeln!(s, "  node {}: addr={} admin={}", n.id, n.addr, n.admin);
        }
        s
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
                "must be a number of bytes or a string such as \"64MiB\", not the {} {other}",
                other.type_str()
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

fn parse_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not an ip:port socket address (e.g. \"127.0.0.1:7101\")"))
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
        assert_eq!(c.raft.snapshot_bytes, 16 << 20);
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
}
