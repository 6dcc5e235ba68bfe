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

/// The cluster file as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default)]
    raft: RawRaft,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    tick_interval: Option<toml::Value>,
    election_ticks: Option<usize>,
    heartbeat_ticks: Option<usize>,
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
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            tick_interval: DEFAULT_TICK_INTERVAL,
            election_ticks: DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
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
    /// Raft timing, shared by every group.
    pub raft: RaftTiming,
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
        };
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
            raft,
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
    fn unknown_node_id_lists_known_ids() {
        let c = parse(GOOD).unwrap();
        let e = c.require_node(9).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("unknown --node-id 9"));
        assert!(e.to_string().contains("1, 2"));
    }
}
