//! Membership: who belongs to the cluster, kept in `__meta/0` itself.
//!
//! The cluster file names the initial members. From the first boot on, the
//! membership lives in Raft: the conf state (voters, learners) and, under the
//! reserved prefix of the store, one record per member and one per removed
//! id:
//!
//! | key | value |
//! |---|---|
//! | `__quorumd/cluster_id` | a random id, committed once by the first leader |
//! | `__quorumd/members/<id>` | [`Member`] as JSON: addresses, role, whether it joined |
//! | `__quorumd/removed/<id>` | the index of its removal: ids are never reused |
//!
//! A membership change is one `ConfChangeV2` entry whose context carries the
//! record changes, applied with it in one transaction (and only if raft
//! accepts the change), so the records and the conf state never disagree.
//! Every node dials members by these records, so a node added later is
//! reached although older nodes' files do not list it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

use crate::store::machine::{self, ReadTables};
use crate::store::{Command, KvOp};

/// The cluster id's key.
pub const CLUSTER_ID_KEY: &str = "__quorumd/cluster_id";
/// Member records live under this prefix.
pub const MEMBERS_PREFIX: &str = "__quorumd/members/";
/// Removed ids live under this prefix.
pub const REMOVED_PREFIX: &str = "__quorumd/removed/";

/// A member's role in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes and counts toward the quorum.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

/// One member's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// Its peer (Raft) address.
    pub addr: SocketAddr,
    /// Its HTTP address.
    pub admin: SocketAddr,
    /// Voter or learner.
    pub role: Role,
    /// True once the leader saw it hold the log: from then on it has state,
    /// and starting it on an empty data dir is refused.
    #[serde(default)]
    pub joined: bool,
    /// A learner that the leader promotes by itself once it caught up.
    #[serde(default = "yes")]
    pub auto_promote: bool,
}

fn yes() -> bool {
    true
}

/// The membership as the store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The cluster id, once the cluster formed.
    pub cluster_id: Option<String>,
    /// Members by id, with the index that last wrote each record.
    pub members: BTreeMap<u64, (Member, u64)>,
    /// Ids that were removed and may not come back.
    pub removed: BTreeSet<u64>,
}

impl Membership {
    /// The membership records as this node has applied them.
    pub async fn applied(kv: &crate::kv::KvService) -> Result<Membership, crate::kv::KvError> {
        kv.read(crate::kv::Consistency::Stale, Membership::read)
            .await
    }

    /// Reads the records from the store.
    pub fn read(t: &ReadTables) -> machine::Result<Membership> {
        let cluster_id = t
            .get(CLUSTER_ID_KEY)?
            .value
            .and_then(|e| e.value)
            .and_then(|v| String::from_utf8(v).ok());
        let mut members = BTreeMap::new();
        for e in t
            .list(MEMBERS_PREFIX, u64::MAX)?
            .map_or_else(|_| Vec::new(), |l| l.value)
        {
            let Some(value) = e.value else { continue };
            if let Ok(m) = serde_json::from_slice::<Member>(&value) {
                members.insert(m.id, (m, e.modify_index));
            }
        }
        let removed = t
            .keys(REMOVED_PREFIX, None, u64::MAX)?
            .map_or_else(|_| Vec::new(), |l| l.value)
            .iter()
            .filter_map(|k| k[REMOVED_PREFIX.len()..].parse().ok())
            .collect();
        Ok(Membership {
            cluster_id,
            members,
            removed,
        })
    }

    /// The member with this id.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id).map(|(m, _)| m)
    }

    /// True if the id is in use or was ever used.
    pub fn id_taken(&self, id: u64) -> bool {
        self.members.contains_key(&id) || self.removed.contains(&id)
    }

    /// Every member's id and peer address, but `me`.
    pub fn peers(&self, me: u64) -> Vec<(u64, SocketAddr)> {
        self.members
            .values()
            .filter(|(m, _)| m.id != me)
            .map(|(m, _)| (m.id, m.addr))
            .collect()
    }
}

/// The cluster id: the store's record, or what a joining node learned from
/// its handshake.
pub fn cluster_id(store: &crate::store::disk::StateStore) -> crate::error::Result<Option<String>> {
    let from_store = store.read(|t| {
        Ok(t.get(CLUSTER_ID_KEY)?
            .value
            .and_then(|e| e.value)
            .and_then(|v| String::from_utf8(v).ok()))
    })?;
    if from_store.is_some() {
        return Ok(from_store);
    }
    store.learned_cluster_id()
}

/// The key of a member's record.
pub fn member_key(id: u64) -> String {
    format!("{MEMBERS_PREFIX}{id}")
}

/// The key of a removed id.
pub fn removed_key(id: u64) -> String {
    format!("{REMOVED_PREFIX}{id}")
}

fn set_member(m: &Member) -> KvOp {
    KvOp::Set {
        key: member_key(m.id),
        // A record always serializes.
        value: serde_json::to_vec(m).expect("a member record serializes"),
        flags: 0,
    }
}

/// A cluster command: not a client's, so it may write the reserved prefix.
fn command(ops: Vec<KvOp>) -> Command {
    Command {
        max_store_bytes: u64::MAX,
        from_client: false,
        ops,
        reads: crate::store::command::ReadLimits::UNLIMITED,
    }
}

/// The first leader's command: the cluster id (only if none exists yet) and
/// a record for every initial member.
pub fn formation(cluster_id: &str, members: &[Member]) -> Command {
    let mut ops = vec![KvOp::Cas {
        key: CLUSTER_ID_KEY.to_string(),
        value: cluster_id.as_bytes().to_vec(),
        flags: 0,
        index: 0,
    }];
    ops.extend(members.iter().map(set_member));
    command(ops)
}

/// Marks a member as joined, if its record is still the one at `index`.
pub fn mark_joined(member: &Member, index: u64) -> Command {
    let joined = Member {
        joined: true,
        ..member.clone()
    };
    let mut cas = set_member(&joined);
    if let KvOp::Set { key, value, flags } = cas {
        cas = KvOp::Cas {
            key,
            value,
            flags,
            index,
        };
    }
    command(vec![cas])
}

/// A membership change: the raft change and the records that go with it
/// (the consensus layer's [`ConfProposal`](crate::raft::replica::ConfProposal),
/// which knows nothing of members).
pub use crate::raft::replica::ConfProposal as Change;

fn single(id: u64, ty: ConfChangeType) -> ConfChangeSingle {
    let mut s = ConfChangeSingle {
        node_id: id,
        ..Default::default()
    };
    s.set_change_type(ty);
    s
}

fn conf(changes: Vec<ConfChangeSingle>) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    if changes.len() > 1 {
        // Joint consensus, left automatically once it is applied.
        cc.set_transition(ConfChangeTransition::Auto);
    }
    cc.set_changes(changes.into());
    cc
}

/// Adds a new node as a learner.
pub fn add_learner(member: &Member) -> Change {
    let record = Member {
        role: Role::Learner,
        joined: false,
        ..member.clone()
    };
    Change {
        conf: conf(vec![single(member.id, ConfChangeType::AddLearnerNode)]),
        records: command(vec![set_member(&record)]),
        removes: None,
    }
}

/// Makes a learner a voter; with `replacing`, removes that member in the
/// same joint-consensus change.
pub fn promote(member: &Member, replacing: Option<u64>) -> Change {
    // A voter is marked joined in the entry that makes it a voter: from the
    // moment it can vote, starting it on an empty data dir is refused, with
    // no window in which the mark has not committed yet.
    let record = Member {
        role: Role::Voter,
        joined: true,
        ..member.clone()
    };
    let mut changes = vec![single(member.id, ConfChangeType::AddNode)];
    let mut ops = vec![set_member(&record)];
    if let Some(old) = replacing {
        changes.push(single(old, ConfChangeType::RemoveNode));
        ops.extend(removal_ops(old));
    }
    Change {
        conf: conf(changes),
        records: command(ops),
        removes: replacing,
    }
}

fn removal_ops(id: u64) -> Vec<KvOp> {
    vec![
        KvOp::Delete {
            key: member_key(id),
        },
        KvOp::Set {
            key: removed_key(id),
            value: b"removed".to_vec(),
            flags: 0,
        },
    ]
}

/// Removes a voter or learner; its id is never used again.
pub fn remove(id: u64) -> Change {
    Change {
        conf: conf(vec![single(id, ConfChangeType::RemoveNode)]),
        records: command(removal_ops(id)),
        removes: Some(id),
    }
}

/// True if a learner that holds the log up to `matched` has caught up: it
/// holds the entry that added it (so it received the state before it), and
/// it is within `tail` entries (`snapshot_entries / 10`) of the leader's
/// `last` index.
pub fn caught_up(matched: u64, added_at: u64, last: u64, tail: u64) -> bool {
    matched >= added_at && matched + tail >= last
}

/// How often the leader looks again while upkeep has work left (a learner
/// to promote, a member not yet seen to hold the log).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The leader's upkeep of the membership, as one task on every node (it
/// works only while the node leads):
/// - the first leader commits the cluster id and the initial member records;
/// - a member is marked joined once it holds the log from its record on;
/// - a learner is promoted once it is within `snapshot_entries / 10` of the
///   leader's log, unless `auto_promote = false` (in the file, or in its
///   record).
///
/// With nothing left to do it sleeps until the leadership or the records
/// change, so an idle cluster pays nothing for it.
pub fn spawn_upkeep(
    config: std::sync::Arc<crate::config::ClusterConfig>,
    replica: crate::raft::ReplicaHandle,
    store: std::sync::Arc<crate::store::disk::StateStore>,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    crate::runtime::spawn(async move {
        let Some(statuses) = replica.subscribe().await else {
            return;
        };
        loop {
            let watch = replica.watch("__quorumd/".to_string(), true).await;
            let busy = match upkeep(&config, &replica, &store).await {
                Ok(busy) => busy,
                Err(e) => {
                    log::warn!("membership upkeep: {e}");
                    true
                }
            };
            let wait = async {
                if busy {
                    async_io::Timer::after(UPKEEP_INTERVAL).await;
                    return;
                }
                let watch = async {
                    match &watch {
                        Some(w) => {
                            let _ = w.recv_async().await;
                        }
                        None => futures_lite::future::pending::<()>().await,
                    }
                };
                let leadership = async {
                    // Any change of role or leader may give this node work.
                    if statuses.recv_async().await.is_err() {
                        // The replica stopped: so does upkeep.
                        futures_lite::future::pending::<()>().await;
                    }
                };
                futures_lite::future::or(watch, leadership).await;
            };
            if crate::runtime::or_shutdown(&shutdown, wait).await.is_none()
                || statuses.is_disconnected()
            {
                break;
            }
            while statuses.try_recv().is_ok() {}
        }
    })
}

/// One round of upkeep; returns true if work is left for a later round.
async fn upkeep(
    config: &crate::config::ClusterConfig,
    replica: &crate::raft::ReplicaHandle,
    store: &std::sync::Arc<crate::store::disk::StateStore>,
) -> Result<bool, String> {
    let Some(progress) = replica.progress().await else {
        return Ok(false);
    };
    if !progress.leader {
        return Ok(false);
    }
    let s = store.clone();
    let membership = crate::runtime::unblock(move || s.read(Membership::read))
        .await
        .map_err(|e| e.to_string())?;
    if membership.cluster_id.is_none() {
        // First leader of a new cluster: one id, and a record for every
        // initial voter, at its address in the cluster file.
        let members: Vec<Member> = progress
            .voters
            .iter()
            .filter_map(|&id| config.node(id))
            .map(|n| Member {
                id: n.id,
                addr: n.addr,
                admin: n.admin,
                role: Role::Voter,
                joined: false,
                auto_promote: true,
            })
            .collect();
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        replica
            .propose(formation(&id, &members).encode())
            .await
            .map_err(|e| format!("cannot commit the cluster id: {e}"))?;
        log::info!("cluster '{}' formed with cluster id {id}", config.name);
        return Ok(true);
    }
    let mut busy = false;
    for (member, at) in membership.members.values() {
        if member.joined {
            continue;
        }
        busy = true;
        if progress.matched.get(&member.id).is_some_and(|&m| m >= *at) {
            let _ = replica.propose(mark_joined(member, *at).encode()).await;
        }
    }
    let tail = (config.raft.snapshot_entries / 10).max(1);
    for &id in &progress.learners {
        let Some((member, at)) = membership.members.get(&id) else {
            continue;
        };
        if !(config.auto_promote && member.auto_promote) {
            continue;
        }
        busy = true;
        let matched = progress.matched.get(&id).copied().unwrap_or(0);
        if !progress.changing && caught_up(matched, *at, progress.last_index, tail) {
            log::info!(
                "node {id} caught up (index {matched} of {}): promoting it to voter",
                progress.last_index
            );
            let _ = replica.change_membership(promote(member, None)).await;
        }
    }
    Ok(busy)
}

/// What a node without state does, once it asked the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No member holds a cluster id: a new cluster, bootstrapped from the
    /// cluster file.
    Bootstrap,
    /// The cluster formed and admits this node as a member that never held
    /// the log (a node added by `quorumd member add`, or an initial member
    /// that never started): it joins and receives a snapshot.
    Join {
        /// The cluster id the members answered with.
        cluster_id: String,
    },
}

/// How often a node without state asks the file's members again: as often
/// as the quorum waiter probes a silent peer, so nodes started together
/// form in milliseconds (at 50 ms, a peer that was not listening at the
/// first round cost a 3-node bootstrap 50-150 ms).
pub const DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Asks the members of the cluster file what a node without state should do:
/// bootstrap a new cluster, join a formed one, wait to be added, or refuse
/// (its state was lost, or it was removed). Bounded by
/// `quorum_wait_timeout`.
pub async fn discover(
    me: &crate::transport::Identity,
    config: &crate::config::ClusterConfig,
) -> crate::error::Result<Start> {
    use crate::transport::wire::RejectCode;
    let node_id = me.node_id;
    let peers: Vec<_> = config.nodes.iter().filter(|n| n.id != node_id).collect();
    let needed = crate::quorum::quorum_size(config.cluster_size());
    let deadline = std::time::Instant::now() + config.quorum_wait_timeout;
    let mut told_to_add = false;
    loop {
        let mut unformed = Vec::new();
        let mut not_member = false;
        // All peers at once: one that is not listening yet answers at once
        // (refused), one that is slow must not delay the others.
        let probes: Vec<_> = peers
            .iter()
            .map(|n| {
                let (me, id, addr) = (me.clone(), n.id, n.addr);
                crate::runtime::spawn(async move {
                    // One probe: its connection closes when the link drops.
                    let mut link = crate::transport::ProbeLink::default();
                    let wait = std::time::Duration::from_millis(300);
                    crate::transport::probe(&me, id, addr, wait, &mut link).await
                })
            })
            .collect();
        for (n, probe) in peers.iter().zip(probes) {
            let answer = probe.await;
            match answer {
                Ok(Some(cluster_id)) => {
                    log::info!(
                        "node {} answers for cluster id {cluster_id}, which admits this node as \
                         a new member: joining it",
                        n.id
                    );
                    return Ok(Start::Join { cluster_id });
                }
                Ok(None) => unformed.push(n.id),
                Err(e) => match e.code {
                    Some(RejectCode::StateLost) => {
                        return Err(crate::error::Error::StateLost(format!(
                            "node {node_id} has no state in its data dir, but it is a member of \
                             cluster '{}' that held the log (node {} says so): its state is lost. \
                             The cluster runs on the other members. Restore this node's data dir, \
                             or replace the node: `quorumd member replace --cluster FILE {node_id} \
                             --id NEW_ID --addr ADDR --admin ADDR`. Starting it empty could elect \
                             two leaders in one term",
                            config.name, n.id
                        )));
                    }
                    Some(RejectCode::Removed) => {
                        return Err(crate::error::Error::Removed(format!(
                            "node {node_id} was removed from cluster '{}' (node {} says so); its \
                             id may not rejoin. Add the box back with a new id: `quorumd member \
                             add --cluster FILE --id NEW_ID --addr ADDR --admin ADDR`",
                            config.name, n.id
                        )));
                    }
                    Some(RejectCode::NotMember) => not_member = true,
                    _ => {}
                },
            }
        }
        if unformed.len() + 1 >= needed && !not_member {
            return Ok(Start::Bootstrap);
        }
        if not_member && !told_to_add {
            told_to_add = true;
            let me_in_file = config.node(node_id);
            log::warn!(
                "node {node_id} is not a member of cluster '{}' yet; waiting up to {} to be \
                 added. Run: quorumd member add --cluster FILE --id {node_id} --addr {} \
                 --admin {}",
                config.name,
                humantime::format_duration(config.quorum_wait_timeout),
                me_in_file.map_or("ADDR".to_string(), |n| n.addr.to_string()),
                me_in_file.map_or("ADDR".to_string(), |n| n.admin.to_string()),
            );
        }
        if std::time::Instant::now() >= deadline {
            return Err(if not_member {
                crate::error::Error::QuorumTimeout {
                    timeout: humantime::format_duration(config.quorum_wait_timeout).to_string(),
                    reachable: unformed.len() + 1,
                    needed,
                    cluster_size: config.cluster_size(),
                    missing: format!(
                        "node {node_id} was not added to the formed cluster (run `quorumd \
                         member add`)"
                    ),
                }
            } else {
                let missing: Vec<String> = peers
                    .iter()
                    .filter(|n| !unformed.contains(&n.id))
                    .map(|n| format!("{}@{}", n.id, n.addr))
                    .collect();
                crate::error::Error::QuorumTimeout {
                    timeout: humantime::format_duration(config.quorum_wait_timeout).to_string(),
                    reachable: unformed.len() + 1,
                    needed,
                    cluster_size: config.cluster_size(),
                    missing: missing.join(", "),
                }
            });
        }
        async_io::Timer::after(DISCOVERY_INTERVAL).await;
    }
}

/// The directory the membership gives: the members' records (all but this
/// node), or before the cluster formed the cluster file's nodes.
pub fn directory_of(
    membership: &Membership,
    config: &crate::config::ClusterConfig,
    me: u64,
    cluster_id: Option<String>,
) -> crate::transport::Directory {
    use crate::transport::PeerEntry;
    let peers = if membership.members.is_empty() {
        config
            .nodes
            .iter()
            .filter(|n| n.id != me)
            .map(|n| {
                (
                    n.id,
                    PeerEntry {
                        addr: n.addr,
                        joined: false,
                    },
                )
            })
            .collect()
    } else {
        membership
            .members
            .values()
            .filter(|(m, _)| m.id != me)
            .map(|(m, _)| {
                (
                    m.id,
                    PeerEntry {
                        addr: m.addr,
                        joined: m.joined,
                    },
                )
            })
            .collect()
    };
    crate::transport::Directory {
        cluster_id: membership.cluster_id.clone().or(cluster_id),
        peers,
        removed: membership.removed.clone(),
        has_state: true,
    }
}

/// Keeps the transport's directory, the peer senders and the health
/// monitor's probers in step with the replicated member records, so that a
/// node added later is dialed although older nodes' files do not list it.
/// Logs once if the cluster file differs from the live membership.
pub fn spawn_directory_sync(
    config: std::sync::Arc<crate::config::ClusterConfig>,
    me: u64,
    kv: crate::kv::KvService,
    directory: crate::transport::SharedDirectory,
    peers: crate::transport::PeerSenders,
    health: crate::health::HealthHandle,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    crate::runtime::spawn(async move {
        let replica = kv.replica().clone();
        let mut told: Option<Vec<u64>> = None;
        loop {
            let watch = replica.watch(MEMBERS_PREFIX.to_string(), true).await;
            let watch_removed = replica.watch(REMOVED_PREFIX.to_string(), true).await;
            let watch_id = replica.watch(CLUSTER_ID_KEY.to_string(), false).await;
            let (Some(watch), Some(watch_removed), Some(watch_id)) =
                (watch, watch_removed, watch_id)
            else {
                // The replica stopped: its own outcome (shutdown, removal, a
                // storage failure) is what the node reports, not this task's.
                crate::runtime::or_shutdown(&shutdown, futures_lite::future::pending::<()>()).await;
                break;
            };
            if let Ok(membership) = Membership::applied(&kv).await {
                let known_id = directory
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .cluster_id
                    .clone();
                let new = directory_of(&membership, &config, me, known_id);
                let changed = {
                    let mut dir = directory.write().unwrap_or_else(|e| e.into_inner());
                    let changed = *dir != new;
                    *dir = new.clone();
                    changed
                };
                if changed {
                    let list: Vec<_> = new.peers.iter().map(|(&id, p)| (id, p.addr)).collect();
                    for task in peers.set_peers(&list) {
                        task.detach();
                    }
                    health.set_peers(list);
                }
                if !membership.members.is_empty() {
                    let live: Vec<u64> = membership.members.keys().copied().collect();
                    let file = config.ids();
                    // Logged whenever this node's view changes while it
                    // differs from the file: a restarted node first logs
                    // its stored view, then the one it catches up to.
                    if told.as_ref() != Some(&live) && (live != file || told.is_some()) {
                        let applied = replica.status().await.map_or(0, |s| s.applied_index);
                        log::info!(
                            "node {me}'s view of the membership of cluster '{}', as applied up \
                             to index {applied}, is {live:?} (a restarted node may still be \
                             catching up); the cluster file lists {file:?}. The membership in \
                             Raft counts; the file only names the initial members and where to \
                             find them",
                            config.name
                        );
                        told = Some(live);
                    }
                }
            }
            let changed = async {
                futures_lite::future::or(
                    async {
                        let _ = watch.recv_async().await;
                    },
                    futures_lite::future::or(
                        async {
                            let _ = watch_removed.recv_async().await;
                        },
                        async {
                            let _ = watch_id.recv_async().await;
                        },
                    ),
                )
                .await
            };
            if crate::runtime::or_shutdown(&shutdown, changed)
                .await
                .is_none()
            {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::machine::{create_tables, Tables};
    use redb::{backends::InMemoryBackend, Database, ReadableDatabase};

    fn member(id: u64) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            admin: format!("127.0.0.1:{}", 8100 + id).parse().unwrap(),
            role: Role::Voter,
            joined: false,
            auto_promote: true,
        }
    }

    fn apply(db: &Database, index: u64, cmd: &Command) -> machine::Outcome {
        let txn = db.begin_write().unwrap();
        let out = Tables::open(&txn)
            .unwrap()
            .apply(index, cmd, true)
            .unwrap()
            .0;
        txn.commit().unwrap();
        out
    }

    #[test]
    fn records_follow_formation_and_changes() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        txn.commit().unwrap();
        let read =
            || Membership::read(&ReadTables::open(&db.begin_read().unwrap()).unwrap()).unwrap();

        let initial: Vec<Member> = (1..=3).map(member).collect();
        assert!(matches!(
            apply(&db, 2, &formation("abc", &initial)),
            machine::Outcome::Committed(_)
        ));
        // A second formation (another leader) changes nothing.
        assert!(matches!(
            apply(&db, 3, &formation("zzz", &[member(9)])),
            machine::Outcome::RolledBack(_)
        ));
        let m = read();
        assert_eq!(m.cluster_id.as_deref(), Some("abc"));
        assert_eq!(m.members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(m.peers(1).len(), 2);

        let (rec, at) = m.members[&2].clone();
        apply(&db, 4, &mark_joined(&rec, at));
        assert!(read().member(2).unwrap().joined);
        // A stale mark (the record moved on) is refused.
        assert!(matches!(
            apply(&db, 5, &mark_joined(&rec, at)),
            machine::Outcome::RolledBack(_)
        ));

        apply(&db, 6, &add_learner(&member(4)).records);
        assert_eq!(read().member(4).unwrap().role, Role::Learner);
        let change = promote(read().member(4).unwrap(), Some(3));
        assert_eq!(change.conf.changes.len(), 2);
        assert_eq!(change.conf.get_transition(), ConfChangeTransition::Auto);
        apply(&db, 7, &change.records);
        let m = read();
        assert_eq!(m.member(4).unwrap().role, Role::Voter);
        assert!(m.member(3).is_none());
        assert!(m.removed.contains(&3));
        assert!(m.id_taken(3) && m.id_taken(4) && !m.id_taken(5));
    }
}
