//! Consul's sessions: what a session is, where its rows live, and the
//! leader's reaper that ends sessions whose TTL lapsed or whose node failed.
//!
//! A session is a row under [`SESSIONS_PREFIX`] in the replicated store; its
//! `CreateIndex` is the create and its `ModifyIndex` the last renew. A held
//! key's record names its session, and a row under [`HELD_PREFIX`] indexes
//! the keys a session took, so ending a session touches only those. A
//! lock-delay is a row under [`DELAY_PREFIX`] holding the Unix time (ms)
//! until which the key may not be taken again. Every change is a Raft
//! entry; the state machine never reads a clock (times travel in entries).
//!
//! The reaper runs on every node and acts only on the leader. It keeps, in
//! memory, when it first saw each session at its current `ModifyIndex`; a
//! session not renewed for its TTL is ended by a `SessionDestroy` entry that
//! only applies if the session was not renewed meanwhile. A new leader
//! starts with an empty table, so every timer restarts. A session bound to
//! a node (the default) ends once the health view has said that node is
//! down for [`NODE_GRACE`], or once the node is no longer a member.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where session rows live.
pub const SESSIONS_PREFIX: &str = "__quorumd/sessions/";
/// `<HELD_PREFIX><session>/<key>`: a key the session took.
pub const HELD_PREFIX: &str = "__quorumd/held/";
/// `<DELAY_PREFIX><key>`: the lock-delay on a key, as Unix ms (8 bytes LE).
pub const DELAY_PREFIX: &str = "__quorumd/lockdelay/";

/// The shortest and longest TTL a session may ask for (Consul's bounds).
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(86400);
/// The longest lock-delay, and the default one.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// How long the health view must say a node is down before the sessions
/// bound to it end.
pub const NODE_GRACE: Duration = Duration::from_secs(5);
/// A node whose process is gone on its kernel's word (silent for
/// [`GONE_QUIET`], and its peer port refuses connections) ends its sessions
/// once that has lasted this long, without waiting for `peer_timeout` and
/// [`NODE_GRACE`]. A node restarted within it keeps them.
pub const GONE_GRACE: Duration = Duration::from_secs(1);
/// How long a node must have been silent before the reaper asks its port.
/// The leader hears every live member each Raft tick.
pub const GONE_QUIET: Duration = Duration::from_millis(300);
/// How long the reaper's connect to a silent node's port may take.
const GONE_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the leader's reaper looks at the sessions.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// What a session ends with on its held keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    /// Frees them (the default).
    Release,
    /// Deletes them.
    Delete,
}

impl Behavior {
    pub fn name(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A session as created: what the create entry carries and the row holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub name: String,
    /// The node it is bound to, by id.
    pub node: u64,
    /// 0: no TTL.
    pub ttl_ms: u64,
    pub lock_delay_ms: u64,
    pub behavior: Behavior,
    /// True when the session ends with its node (Consul's `serfHealth`
    /// check); `"Checks": []` makes it false.
    pub node_check: bool,
}

impl SessionSpec {
    /// The row's value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a session always encodes")
    }

    /// Reads a row's value.
    pub fn decode(bytes: &[u8]) -> Result<SessionSpec, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed session row: {e}"))
    }
}

/// The row key of session `id`.
pub fn row_key(id: &str) -> String {
    format!("{SESSIONS_PREFIX}{id}")
}

/// The index row of `key` held by session `id`.
pub fn held_key(id: &str, key: &str) -> String {
    format!("{HELD_PREFIX}{id}/{key}")
}

/// The lock-delay row of `key`.
pub fn delay_key(key: &str) -> String {
    format!("{DELAY_PREFIX}{key}")
}

/// Consul's node name for node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Reads a node name (`node-3`, or `3`).
pub fn parse_node(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("node-").unwrap_or(name);
    digits.parse().ok().filter(|&n| n > 0)
}

/// A new session id: a random version-4 UUID.
pub fn new_id() -> String {
    let mut b: [u8; 16] = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// True if `id` looks like a session id (a UUID), so it may name a row.
pub fn valid_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Now, as Unix milliseconds: what a proposer puts in an entry.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One session as the reaper sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub modify_index: u64,
    pub spec: SessionSpec,
}

/// The reaper's memory: when each session was first seen at its current
/// `ModifyIndex`, and since when each node is down.
#[derive(Debug, Default)]
pub struct Reaper {
    timers: HashMap<String, (u64, Instant)>,
    down_since: HashMap<u64, Instant>,
    refused_since: HashMap<u64, Instant>,
}

/// Why the reaper ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Expired,
    NodeFailed,
}

impl Reaper {
    /// Forgets every timer: the node is not (or no longer) the leader.
    pub fn reset(&mut self) {
        self.timers.clear();
        self.down_since.clear();
        self.refused_since.clear();
    }

    /// Records which nodes' ports refuse connections now (see
    /// [`GONE_GRACE`]); call it before [`Reaper::due`].
    pub fn refusing(&mut self, now: Instant, refusing: &std::collections::HashSet<u64>) {
        self.refused_since.retain(|id, _| refusing.contains(id));
        for &id in refusing {
            self.refused_since.entry(id).or_insert(now);
        }
    }

    /// The sessions to end now. `nodes` maps each member id to whether the
    /// health view says it is alive (this node counts as alive).
    pub fn due(
        &mut self,
        now: Instant,
        sessions: &[Seen],
        nodes: &HashMap<u64, bool>,
    ) -> Vec<(Seen, Verdict)> {
        for (&id, &alive) in nodes {
            if alive {
                self.down_since.remove(&id);
            } else {
                self.down_since.entry(id).or_insert(now);
            }
        }
        self.down_since.retain(|id, _| nodes.contains_key(id));
        let live: std::collections::HashSet<&str> =
            sessions.iter().map(|s| s.id.as_str()).collect();
        self.timers.retain(|id, _| live.contains(id.as_str()));
        let mut out = Vec::new();
        for s in sessions {
            let timer = self
                .timers
                .entry(s.id.clone())
                .or_insert((s.modify_index, now));
            if timer.0 != s.modify_index {
                *timer = (s.modify_index, now);
            }
            if s.spec.ttl_ms > 0 && now.duration_since(timer.1) >= ttl_deadline(s.spec.ttl_ms) {
                out.push((s.clone(), Verdict::Expired));
                continue;
            }
            if s.spec.node_check {
                let past = |since: Option<&Instant>, grace| {
                    since.is_some_and(|since| now.duration_since(*since) >= grace)
                };
                let failed = match nodes.get(&s.spec.node) {
                    None => true,
                    Some(_) => {
                        past(self.down_since.get(&s.spec.node), NODE_GRACE)
                            || past(self.refused_since.get(&s.spec.node), GONE_GRACE)
                    }
                };
                if failed {
                    out.push((s.clone(), Verdict::NodeFailed));
                }
            }
        }
        out
    }
}

/// How long after its last renew (as the leader saw it applied) a session
/// expires: its TTL plus a tenth, so it never expires before the TTL a
/// client counts from its renew, and well within twice the TTL.
pub fn ttl_deadline(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms.saturating_add(ttl_ms / 10))
}

/// Every session, as the leader's store holds it.
async fn read_sessions(kv: &crate::kv::KvService) -> Result<Vec<Seen>, crate::kv::KvError> {
    kv.read(crate::kv::Consistency::Stale, |t| {
        let mut out = Vec::new();
        t.list_each(SESSIONS_PREFIX, |e| {
            if let Some(spec) = e.value.as_deref().and_then(|v| SessionSpec::decode(v).ok()) {
                out.push(Seen {
                    id: e.key[SESSIONS_PREFIX.len()..].to_string(),
                    modify_index: e.modify_index,
                    spec,
                });
            }
        })?;
        Ok(out)
    })
    .await
}

/// Runs the reaper until `shutdown`: on the leader, while sessions exist,
/// every [`REAP_INTERVAL`], ends the sessions that are due. Without
/// sessions, or on a follower, it sleeps until a write under the sessions'
/// prefix or a change of role wakes it.
pub fn spawn_reaper(
    config: std::sync::Arc<crate::config::ClusterConfig>,
    node_id: u64,
    kv: crate::kv::KvService,
    health: crate::health::HealthHandle,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    crate::runtime::spawn(async move {
        use crate::runtime::or_shutdown;
        let Some(statuses) = kv.replica().subscribe().await else {
            return;
        };
        let is_leader = |s: &crate::raft::replica::ReplicaStatus| s.role == raft::StateRole::Leader;
        let mut reaper = Reaper::default();
        let mut leading = false;
        loop {
            while let Ok(s) = statuses.try_recv() {
                leading = is_leader(&s);
            }
            if !leading {
                // A follower reaps nothing: it waits for a change of role
                // instead of polling (an idle node stays asleep).
                reaper.reset();
                match or_shutdown(&shutdown, statuses.recv_async()).await {
                    Some(Ok(s)) => leading = is_leader(&s),
                    _ => return,
                }
                continue;
            }
            let Ok(sessions) = read_sessions(&kv).await else {
                let pause = async_io::Timer::after(REAP_INTERVAL);
                if or_shutdown(&shutdown, pause).await.is_none() {
                    return;
                }
                continue;
            };
            if sessions.is_empty() {
                // Nothing to time: wait for a write under the sessions'
                // prefix or a change of role, not for a timer. The second
                // read catches a session created before the watch was in.
                reaper.reset();
                let watch = kv.watch(SESSIONS_PREFIX, true).await.ok();
                if read_sessions(&kv).await.is_ok_and(|s| !s.is_empty()) {
                    continue;
                }
                let woke = futures_lite::future::or(
                    async {
                        if let Some(w) = &watch {
                            let _ = w.recv_async().await;
                        } else {
                            async_io::Timer::after(REAP_INTERVAL).await;
                        }
                        true
                    },
                    async {
                        match statuses.recv_async().await {
                            Ok(s) => {
                                leading = is_leader(&s);
                                true
                            }
                            Err(_) => false,
                        }
                    },
                );
                match or_shutdown(&shutdown, woke).await {
                    Some(true) => continue,
                    _ => return,
                }
            }
            let members: Vec<(u64, std::net::SocketAddr)> =
                match crate::membership::Membership::applied(&kv).await {
                    Ok(m) if !m.members.is_empty() => {
                        m.members.values().map(|(m, _)| (m.id, m.addr)).collect()
                    }
                    _ => config.nodes.iter().map(|n| (n.id, n.addr)).collect(),
                };
            // Nodes with sessions bound that have gone quiet: is their
            // process gone, on their kernel's word?
            let mut refusing = std::collections::HashSet::new();
            for &(id, addr) in &members {
                let bound = sessions
                    .iter()
                    .any(|s| s.spec.node_check && s.spec.node == id);
                if id == node_id || !bound {
                    continue;
                }
                let quiet = health
                    .last_answer(id)
                    .await
                    .is_none_or(|t| t.elapsed() >= GONE_QUIET);
                if quiet && crate::transport::refuses(addr, GONE_PROBE_TIMEOUT).await {
                    refusing.insert(id);
                }
            }
            reaper.refusing(Instant::now(), &refusing);
            let members: Vec<u64> = members.into_iter().map(|(id, _)| id).collect();
            let live = health.live_peers().await;
            let nodes: HashMap<u64, bool> = members
                .into_iter()
                .map(|id| (id, id == node_id || live.contains(&id)))
                .collect();
            let mut ops = Vec::new();
            for (seen, why) in reaper.due(Instant::now(), &sessions, &nodes) {
                let reason = match why {
                    Verdict::Expired => "its TTL lapsed without a renew".to_string(),
                    Verdict::NodeFailed => format!(
                        "its node {} is down past the {} grace, its process is gone (its \
                         port refused connections for {}), or it is no longer a member",
                        seen.spec.node,
                        humantime::format_duration(NODE_GRACE),
                        humantime::format_duration(GONE_GRACE)
                    ),
                };
                log::info!("ending session {}: {reason}", seen.id);
                ops.push(crate::store::KvOp::SessionDestroy {
                    id: seen.id.clone(),
                    now_ms: now_ms(),
                    if_index: Some(seen.modify_index),
                });
            }
            // Many at once (a node with many sessions failed): a few entries,
            // not one each. An end that a renew overtook does nothing, so
            // the batch never fails as a whole.
            for batch in ops.chunks(crate::store::MAX_TXN_OPS) {
                if let Err(e) = kv.write(batch.to_vec()).await {
                    log::warn!("could not end {} session(s): {e}", batch.len());
                }
            }
            let tick = async_io::Timer::after(REAP_INTERVAL);
            if or_shutdown(&shutdown, tick).await.is_none() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, index: u64, ttl_ms: u64, node: u64, node_check: bool) -> Seen {
        Seen {
            id: id.into(),
            modify_index: index,
            spec: SessionSpec {
                name: String::new(),
                node,
                ttl_ms,
                lock_delay_ms: 0,
                behavior: Behavior::Release,
                node_check,
            },
        }
    }

    #[test]
    fn ids_are_uuids_and_nodes_parse() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(id, new_id());
        assert!(!valid_id("x"));
        assert!(!valid_id("../../../../../../../../../../../../.."));
        assert_eq!(parse_node("node-3"), Some(3));
        assert_eq!(parse_node("3"), Some(3));
        assert_eq!(parse_node("node-0"), None);
        assert_eq!(parse_node("box"), None);
    }

    #[test]
    fn the_reaper_expires_after_the_ttl_and_a_renew_restarts_it() {
        let mut r = Reaper::default();
        let t0 = Instant::now();
        let nodes: HashMap<u64, bool> = [(1, true)].into();
        let s = vec![seen("a", 5, 10_000, 1, true)];
        assert!(r.due(t0, &s, &nodes).is_empty());
        assert!(r.due(t0 + Duration::from_secs(10), &s, &nodes).is_empty());
        let renewed = vec![seen("a", 9, 10_000, 1, true)];
        assert!(r
            .due(t0 + Duration::from_millis(10_500), &renewed, &nodes)
            .is_empty());
        assert!(r
            .due(t0 + Duration::from_secs(21), &renewed, &nodes)
            .is_empty());
        let due = r.due(t0 + Duration::from_secs(22), &renewed, &nodes);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, Verdict::Expired);
        r.reset();
        assert!(r
            .due(t0 + Duration::from_secs(30), &renewed, &nodes)
            .is_empty());
    }

    #[test]
    fn a_node_down_past_the_grace_or_removed_ends_its_sessions() {
        let mut r = Reaper::default();
        let t0 = Instant::now();
        let s = vec![seen("a", 5, 0, 2, true), seen("b", 5, 0, 2, false)];
        let down: HashMap<u64, bool> = [(1, true), (2, false)].into();
        assert!(r.due(t0, &s, &down).is_empty());
        let due = r.due(t0 + NODE_GRACE, &s, &down);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].0.id.as_str(), &due[0].1),
            ("a", &Verdict::NodeFailed)
        );
        let removed: HashMap<u64, bool> = [(1, true)].into();
        assert_eq!(r.due(t0, &s, &removed).len(), 1);
    }

    #[test]
    fn a_node_whose_port_refuses_past_the_short_grace_ends_its_sessions() {
        let mut r = Reaper::default();
        let t0 = Instant::now();
        let s = vec![seen("a", 5, 0, 2, true)];
        // The health view still says alive: only the refusals count.
        let alive: HashMap<u64, bool> = [(1, true), (2, true)].into();
        r.refusing(t0, &[2].into());
        assert!(r.due(t0, &s, &alive).is_empty());
        // Back within the grace (a restart): the clock starts again.
        r.refusing(t0 + GONE_GRACE / 2, &Default::default());
        r.refusing(t0 + GONE_GRACE, &[2].into());
        assert!(r.due(t0 + GONE_GRACE, &s, &alive).is_empty());
        assert!(r
            .due(t0 + GONE_GRACE + GONE_GRACE / 2, &s, &alive)
            .is_empty());
        let due = r.due(t0 + 2 * GONE_GRACE, &s, &alive);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, Verdict::NodeFailed);
    }
}
