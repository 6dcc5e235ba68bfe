//! The coordinator: brings a node from a cluster file to an elected leader,
//! and takes it down cleanly.
//!
//! Bootstrap runs in a fixed order:
//! 1. open the peer and admin listeners ([`ClusterCoordinator::new`]);
//! 2. create `__meta/0` from storage, with every configured node a voter;
//! 3. wait for a quorum of live nodes ([`ClusterCoordinator::bootstrap`]);
//! 4. the lowest id among the live quorum campaigns at once, the others wait
//!    for a leader (and fall back on Raft's randomized election);
//! 5. mark bootstrap complete and log one line with leader, term and time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_lite::future;
use log::{info, warn};
use raft::StateRole;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::health::{self, HealthEvent, HealthHandle};
use crate::http::{self, AdminState, Api, StartingState};
use crate::kv::KvService;
use crate::membership::{Membership, Start};
use crate::metrics::Metrics;
use crate::quorum;
use crate::raft::storage::{self as node_storage, Creation, DirLock, NodeStorage};
use crate::raft::{spawn_tick_driver, RaftGroupManager, ReplicaHandle, Router};
use crate::runtime::{or_shutdown, supervise};
use crate::store::disk::StoreIdentity;
use crate::tls::PeerTls;
use crate::transport::wire::{GroupId, RejectCode};
use crate::transport::{self, Directory, Identity, RaftSink, SharedDirectory};

/// Longest time a leader waits, on shutdown, for a peer to take over.
pub const HANDOFF_TIMEOUT_MAX: Duration = Duration::from_millis(500);
/// How often the first campaigner of a bootstrap asks again while no
/// leader is known (see `bootstrap`): the quorum waiter's probe interval.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(10);

/// Options of one node beyond the cluster file.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Overrides `<data_dir>/node-<id>`.
    pub data_dir: Option<PathBuf>,
    /// When the process started; bootstrap time is measured from here.
    pub started: Instant,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            data_dir: None,
            started: Instant::now(),
        }
    }
}

/// The outcome of a bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapReport {
    /// The elected leader.
    pub leader_id: u64,
    /// Its term.
    pub term: u64,
    /// Time since the process started.
    pub elapsed: Duration,
}

/// Runs one node: its listeners, health monitor, transport and `__meta/0`.
///
/// ```no_run
/// use quorumd::config::ClusterConfig;
/// use quorumd::coordinator::{ClusterCoordinator, NodeOptions};
///
/// # fn main() -> quorumd::Result<()> {
/// quorumd::runtime::block_on(async {
///     let config = ClusterConfig::load("clusters/cluster3.toml".as_ref())?;
///     let node = ClusterCoordinator::new(config, 1, NodeOptions::default()).await?;
///     println!("waiting for {} of {} nodes", node.quorum_size(), node.cluster_size());
///     let report = node.bootstrap().await?;
///     assert!(node.is_bootstrap_complete());
///     println!("leader {} at term {}", report.leader_id, report.term);
///     println!("live peers: {:?}", node.live_peers().await);
///     let _status = node.metadata_replica().status().await;
///     node.shutdown().await
/// })
/// # }
/// ```
pub struct ClusterCoordinator {
    config: Arc<ClusterConfig>,
    node_id: u64,
    started: Instant,
    health: HealthHandle,
    manager: RaftGroupManager,
    meta: ReplicaHandle,
    bootstrap_complete: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    directory: SharedDirectory,
    shutdown: Option<flume::Sender<()>>,
    fatal: flume::Receiver<Error>,
    /// Opens the tick driver (raft's clocks) once a quorum is live.
    start_ticks: flume::Sender<()>,
    tasks: Vec<crate::runtime::Task<()>>,
}

impl ClusterCoordinator {
    /// Locks and checks the data dir, opens the listeners, then creates
    /// `__meta/0` and starts every task. Fails at once on a port in use or
    /// unusable storage.
    pub async fn new(config: ClusterConfig, node_id: u64, options: NodeOptions) -> Result<Self> {
        let me = config.require_node(node_id)?.clone();
        let config = Arc::new(config);

        // The data dir is locked and checked before anything listens, so that
        // a second start of the same node names the dir and the process that
        // holds it (rather than a port in use). Opening is blocking I/O, so
        // it runs off the executor. A dir without state stays locked and
        // empty until the cluster says what to do (see below).
        let opening = {
            let (config, options) = (config.clone(), options.clone());
            crate::runtime::unblock(move || open_store(&config, node_id, &options)).await?
        };
        // Where an existing store says the membership is (the cluster file
        // only names the initial members).
        let initial_directory = match &opening {
            Opening::Existing(storage) => {
                let (store, config) = (storage.state.clone(), config.clone());
                crate::runtime::unblock(move || -> Result<Directory> {
                    let membership = store.read(Membership::read)?;
                    let cluster_id = crate::membership::cluster_id(&store)?;
                    Ok(crate::membership::directory_of(
                        &membership,
                        &config,
                        node_id,
                        cluster_id,
                    ))
                })
                .await?
            }
            Opening::Fresh { .. } => {
                let mut dir =
                    crate::membership::directory_of(&Membership::default(), &config, node_id, None);
                dir.has_state = false;
                dir
            }
        };
        let directory: SharedDirectory = Arc::new(RwLock::new(initial_directory));
        let directory_handle = directory.clone();

        // Certificates are read before anything listens: a missing or wrong
        // file is a config error (exit 2), not a node that cannot talk.
        let tls = {
            let config = config.clone();
            crate::runtime::unblock(move || PeerTls::load(&config, node_id)).await?
        };
        let https = {
            let config = config.clone();
            crate::runtime::unblock(move || http::Https::load(&config, node_id)).await?
        };
        let scheme = if https.is_some() { "https" } else { "http" };
        if tls.is_none() {
            warn!(
                "cluster '{}' has no [tls] section: peers are not authenticated, and anyone who can reach the peer port can join the cluster's Raft traffic; the admin API and the KV store are open to anyone who can reach the admin port",
                config.name
            );
        }

        // 1. Listeners, before __meta/0 exists: a port in use fails at once.
        let peer_listener = transport::bind(me.addr).await?;
        let admin_listener = Arc::new(http::bind(me.admin).await?);
        let peer_addr = peer_listener.local_addr().unwrap_or(me.addr);
        let admin_addr = admin_listener.local_addr().unwrap_or(me.admin);

        let (shutdown_tx, shutdown) = flume::bounded::<()>(1);
        let (fatal_tx, fatal) = flume::unbounded();
        let (start_ticks_tx, start_ticks) = flume::bounded(1);
        let identity = Identity {
            node_id,
            cluster: config.name.clone(),
            directory: directory.clone(),
            tls,
        };
        let router = Router::default();
        let sink: Arc<dyn RaftSink> = Arc::new(router.clone());
        let metrics = Arc::new(Metrics::new());
        {
            let dir = options
                .data_dir
                .clone()
                .unwrap_or_else(|| config.node_data_dir(node_id));
            let m = metrics.clone();
            if let Err(e) = crate::diskguard::watch(dir, shutdown.clone(), move |full, free| {
                m.set_disk(full, free)
            }) {
                warn!("cannot start the full-disk guard: {e}");
            }
        }
        // Every task below is one the node cannot run without: `supervise`
        // turns a panic or an early end into a fatal error (exit 1).
        let essential = |what: &str, task| supervise(what, task, &shutdown, &fatal_tx);
        // A peer's outbound task ends when the peer leaves the membership, so
        // it is not supervised as essential; each ends at shutdown, and a
        // panic in one ends the process anyway (release builds abort).
        let (peers, sender_tasks) =
            transport::spawn_peer_senders(&identity, &sink, &metrics, &shutdown);
        for task in sender_tasks {
            task.detach();
        }
        let mut tasks: Vec<crate::runtime::Task<()>> = Vec::new();

        let (health, health_tasks) = health::spawn(
            identity.clone(),
            config.heartbeat_interval,
            config.peer_timeout,
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.extend(
            health_tasks
                .into_iter()
                .map(|t| essential("the health monitor", t)),
        );
        tasks.push(essential(
            "the peer listener",
            transport::spawn_listener(
                peer_listener,
                identity.clone(),
                sink,
                Arc::new(health.clone()),
                peers.clone(),
                metrics.clone(),
                transport::InboundLimits {
                    handshakes_per_address: config.limits.peer_handshakes_per_address,
                    max_store_bytes: config.store.max_store_bytes,
                },
                shutdown.clone(),
            ),
        ));

        // 2. A node without state asks the cluster before it has any: a new
        // cluster bootstraps from the file, a formed one is joined (the
        // leader sends a snapshot), a lost or removed node is refused.
        let storage = match opening {
            Opening::Existing(storage) => *storage,
            Opening::Fresh {
                dir,
                lock,
                identity: store_identity,
            } => {
                // The API answers health and status meanwhile; its
                // connections end when the node has state.
                crate::notify::asking().await;
                let (asking, asked) = flume::bounded::<()>(1);
                let starting = http::spawn(
                    admin_listener.clone(),
                    Api::Starting(StartingState {
                        config: config.clone(),
                        node_id,
                        health: health.clone(),
                        metrics: metrics.clone(),
                        https: https.clone(),
                    }),
                    asked,
                );
                let start = crate::membership::discover(&identity, &config).await;
                drop(asking);
                starting.await;
                let start = start?;
                let creation = match &start {
                    Start::Bootstrap => Creation::Bootstrap,
                    Start::Join { cluster_id } => Creation::Join {
                        cluster_id: cluster_id.clone(),
                    },
                };
                let storage = crate::runtime::unblock(move || {
                    NodeStorage::create(&dir, lock, &store_identity, &creation)
                })
                .await?;
                info!("raft state in {}", storage.state.file().display());
                let mut dir = directory.write().unwrap_or_else(|e| e.into_inner());
                dir.has_state = true;
                if let Start::Join { cluster_id } = start {
                    dir.cluster_id = Some(cluster_id);
                }
                storage
            }
        };
        let store = storage.state.clone();

        // 2. __meta/0, from the store.
        let mut manager = RaftGroupManager::new(
            node_id,
            config.raft.clone(),
            config.store.clone(),
            router.clone(),
            peers.clone(),
            metrics.clone(),
        );
        let meta =
            manager.create_group(GroupId::meta(), storage, shutdown.clone(), fatal_tx.clone())?;
        let kv = KvService::new(
            meta.clone(),
            store.clone(),
            config.store.clone(),
            config.limits.clone(),
        );
        if let Some(schedule) = config.backup.clone() {
            crate::backup::spawn_schedule(
                schedule,
                config.name.clone(),
                node_id,
                kv.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .detach();
        }
        let upkeep =
            crate::membership::spawn_upkeep(config.clone(), meta.clone(), store, shutdown.clone());

        // Peer-up events reset the peer's reconnect backoff and let a leader
        // reach the peer at once.
        let (_, events) = health
            .subscribe()
            .await
            .ok_or_else(|| Error::Internal("health monitor stopped at start".into()))?;
        tasks.push(essential(
            "the peer-up forwarder",
            crate::runtime::spawn({
                let (peers, meta, shutdown) = (peers.clone(), meta.clone(), shutdown.clone());
                let fatal = fatal_tx.clone();
                let cluster = config.name.clone();
                async move {
                    loop {
                        let event = or_shutdown(&shutdown, events.recv_async())
                            .await
                            .and_then(Result::ok);
                        match event {
                            None => break,
                            Some(HealthEvent::Up(id)) => {
                                peers.peer_up(id);
                                meta.peer_up(id).await;
                            }
                            Some(HealthEvent::Refused(by, RejectCode::Removed)) => {
                                let _ = fatal.send(Error::Removed(format!(
                                    "node {node_id} was removed from cluster '{cluster}' (node \
                                     {by} refuses it as such); it stops, and this id may not \
                                     rejoin"
                                )));
                                break;
                            }
                            Some(_) => {}
                        }
                    }
                }
            }),
        ));
        tasks.push(essential("the membership upkeep", upkeep));
        tasks.push(essential(
            "the session reaper",
            crate::session::spawn_reaper(
                config.clone(),
                node_id,
                kv.clone(),
                health.clone(),
                shutdown.clone(),
            ),
        ));
        tasks.push(essential(
            "the membership sync",
            crate::membership::spawn_directory_sync(
                config.clone(),
                node_id,
                kv.clone(),
                directory,
                peers.clone(),
                health.clone(),
                shutdown.clone(),
            ),
        ));
        tasks.push(essential(
            "the tick driver",
            spawn_tick_driver(router, &config.raft, start_ticks, shutdown.clone()),
        ));
        let bootstrap_complete = Arc::new(AtomicBool::new(false));
        tasks.push(essential(
            "the HTTP server",
            http::spawn(
                admin_listener,
                Api::Serving(AdminState {
                    acl_cache: Default::default(),
                    data_dir: options
                        .data_dir
                        .clone()
                        .unwrap_or_else(|| config.node_data_dir(node_id)),
                    config: config.clone(),
                    node_id,
                    health: health.clone(),
                    meta: meta.clone(),
                    kv,
                    bootstrap_complete: bootstrap_complete.clone(),
                    metrics: metrics.clone(),
                    https: https.clone(),
                }),
                shutdown.clone(),
            ),
        ));
        info!(
            "node {node_id} of cluster '{}' listening: peers on {peer_addr}, admin on {scheme}://{admin_addr}",
            config.name
        );
        Ok(ClusterCoordinator {
            config,
            node_id,
            started: options.started,
            health,
            manager,
            meta,
            bootstrap_complete,
            metrics,
            directory: directory_handle,
            shutdown: Some(shutdown_tx),
            fatal,
            start_ticks: start_ticks_tx,
            tasks,
        })
    }

    /// Waits for a quorum, then for a leader of `__meta/0`. Fails with
    /// [`Error::QuorumTimeout`] (exit 3) if no quorum forms in time.
    pub async fn bootstrap(&self) -> Result<BootstrapReport> {
        // The voters are Raft's (from the store), not the file's: the
        // membership may have changed since the file was written.
        let progress = self
            .meta
            .progress()
            .await
            .ok_or_else(|| Error::Internal("__meta/0 stopped during bootstrap".into()))?;
        // A leader heard from meanwhile ends the wait: a node that follows
        // a leader is bootstrapped, whatever its quorum waiter still waits
        // for (a restarted member of a changed membership may start from a
        // stored configuration that still lists a removed voter, which
        // nobody probes any more).
        let statuses = self
            .meta
            .subscribe()
            .await
            .ok_or_else(|| Error::Internal("__meta/0 stopped during bootstrap".into()))?;
        let leader_heard = async {
            loop {
                match statuses.recv_async().await {
                    Ok(s) => {
                        if let Some(l) = s.leader_id {
                            return Ok(Waited::Leader(l, s.term));
                        }
                    }
                    Err(_) => {
                        return Err(Error::Internal("__meta/0 stopped during bootstrap".into()))
                    }
                }
            }
        };
        let waited = future::or(
            async {
                self.wait_for_quorum(&progress.voters)
                    .await
                    .map(Waited::Quorum)
            },
            leader_heard,
        )
        .await?;
        let live = match waited {
            Waited::Quorum(live) => live,
            Waited::Leader(leader_id, term) => {
                info!("node {leader_id} leads (term {term}): no quorum wait needed");
                self.health.bootstrap_done();
                let _ = self.start_ticks.try_send(());
                return Ok(self.complete(leader_id, term));
            }
        };
        self.health.bootstrap_done();
        // Raft's clocks start now: a voter's election timer counts from the
        // moment a quorum is live (see spawn_tick_driver).
        let _ = self.start_ticks.try_send(());
        let campaigns = live
            .as_ref()
            .is_some_and(|live| quorum::campaigns_first(self.node_id, live));
        if campaigns {
            self.meta.campaign().await;
        }
        // A peer counts as live once it answers, which a node without state
        // does while it is still creating its Raft group: a pre-vote that
        // reaches it then is dropped, and the campaign would wait for a
        // whole election timeout. So the first campaigner asks again every
        // CAMPAIGN_RETRY until a leader is known (the replica only restarts
        // a pre-vote; a real vote in progress is left alone), for at most
        // one election timeout, after which raft's own timer has taken over.
        let retry_until =
            Instant::now()
                + self.config.raft.tick_interval.saturating_mul(
                    u32::try_from(self.config.raft.election_ticks).unwrap_or(u32::MAX),
                );
        let (leader_id, term) = loop {
            let retry = campaigns && Instant::now() < retry_until;
            let status = if retry {
                future::or(async { Some(statuses.recv_async().await) }, async {
                    async_io::Timer::after(CAMPAIGN_RETRY).await;
                    None
                })
                .await
            } else {
                Some(statuses.recv_async().await)
            };
            match status {
                None => self.meta.campaign().await,
                Some(status) => {
                    let status = status
                        .map_err(|_| Error::Internal("__meta/0 stopped during bootstrap".into()))?;
                    if let Some(leader) = status.leader_id {
                        break (leader, status.term);
                    }
                }
            }
        };
        Ok(self.complete(leader_id, term))
    }

    /// Marks bootstrap complete, and logs and measures it.
    fn complete(&self, leader_id: u64, term: u64) -> BootstrapReport {
        self.bootstrap_complete.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        self.metrics.set_bootstrap_duration(elapsed);
        info!(
            "bootstrap complete: leader={leader_id} term={term} elapsed={}ms",
            elapsed.as_millis()
        );
        BootstrapReport {
            leader_id,
            term,
            elapsed,
        }
    }

    /// Waits for a quorum of `voters` to be live, if this node is one of
    /// them; the live peers then, or `None` for a learner or joining node.
    async fn wait_for_quorum(&self, voters_now: &[u64]) -> Result<Option<Vec<u64>>> {
        let live = if voters_now.contains(&self.node_id) {
            let directory = self
                .directory
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let voters: BTreeMap<u64, SocketAddr> = voters_now
                .iter()
                .map(|&id| {
                    let addr = directory
                        .addr(id)
                        .or_else(|| self.config.node(id).map(|n| n.addr))
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    (id, addr)
                })
                .collect();
            let live = quorum::wait_for_quorum(
                &voters,
                self.node_id,
                &self.health,
                self.config.quorum_wait_timeout,
            )
            .await?;
            info!(
                "quorum reached: nodes {:?} live of {}",
                {
                    let mut all = live.clone();
                    all.push(self.node_id);
                    all.sort();
                    all
                },
                voters.len()
            );
            Some(live)
        } else {
            // A learner, or a node joining: no vote to wait for; it is
            // bootstrapped once it follows a leader.
            info!(
                "node {} is not a voter yet: waiting for a leader",
                self.node_id
            );
            None
        };
        Ok(live)
    }

    /// The number of voters, this node included.
    pub fn cluster_size(&self) -> usize {
        self.config.cluster_size()
    }

    /// The number of voters that make a majority.
    pub fn quorum_size(&self) -> usize {
        quorum::quorum_size(self.cluster_size())
    }

    /// The peers alive now (this node not included), sorted.
    pub async fn live_peers(&self) -> Vec<u64> {
        self.health.live_peers().await
    }

    /// True once a leader was known after quorum formed.
    pub fn is_bootstrap_complete(&self) -> bool {
        self.bootstrap_complete.load(Ordering::Relaxed)
    }

    /// The `__meta/0` replica.
    pub fn metadata_replica(&self) -> &ReplicaHandle {
        &self.meta
    }

    /// Resolves with the first fatal error of a background task (a storage
    /// failure). Pending while all is well.
    pub async fn fatal_error(&self) -> Error {
        match self.fatal.recv_async().await {
            Ok(e) => e,
            Err(_) => future::pending().await,
        }
    }

    /// Stops the node. A leader first hands leadership to an up-to-date live
    /// peer and waits for it (bounded), so the cluster gets a new leader in
    /// milliseconds. Then every task stops and the listeners close.
    pub async fn shutdown(mut self) -> Result<()> {
        self.hand_off_leadership().await;
        drop(self.shutdown.take());
        for task in self.tasks.drain(..) {
            task.await;
        }
        self.manager.join().await;
        info!("node {} stopped", self.node_id);
        Ok(())
    }

    async fn hand_off_leadership(&self) {
        let Some(statuses) = self.meta.subscribe().await else {
            return;
        };
        let live = self.health.live_peers().await;
        let Some(target) = self.meta.transfer_leadership(live).await else {
            return;
        };
        let limit = self.config.raft.election_timeout().min(HANDOFF_TIMEOUT_MAX);
        let started = Instant::now();
        let outcome = future::or(
            async {
                let mut transferring = false;
                while let Ok(s) = statuses.recv_async().await {
                    match s.leader_id {
                        Some(l) if l != self.node_id => return Handoff::Done(l),
                        _ => {}
                    }
                    if s.transferring_to == Some(target) {
                        transferring = true;
                    } else if transferring && s.role == StateRole::Leader {
                        return Handoff::Aborted;
                    }
                }
                Handoff::TimedOut
            },
            async {
                async_io::Timer::after(limit).await;
                Handoff::TimedOut
            },
        )
        .await;
        let ms = started.elapsed().as_millis();
        match outcome {
            Handoff::Done(leader) => info!("leadership handed to node {leader} in {ms}ms"),
            Handoff::Aborted => {
                info!("node {target} went away before taking leadership; stopping anyway")
            }
            Handoff::TimedOut => warn!(
                "node {target} did not take leadership within {}ms; stopping anyway",
                limit.as_millis()
            ),
        }
    }
}

/// How the wait before the first campaign ended.
#[derive(Clone)]
enum Waited {
    /// A quorum is live: these peers (`None`: this node does not vote).
    Quorum(Option<Vec<u64>>),
    /// A leader is known already: this one, at this term.
    Leader(u64, u64),
}

/// How a leadership handoff on shutdown ended.
enum Handoff {
    Done(u64),
    Aborted,
    TimedOut,
}

/// A data dir, locked: with its store, or fresh (no state yet).
enum Opening {
    Existing(Box<NodeStorage>),
    Fresh {
        dir: PathBuf,
        lock: DirLock,
        identity: StoreIdentity,
    },
}

fn open_store(config: &ClusterConfig, node_id: u64, options: &NodeOptions) -> Result<Opening> {
    let dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| config.node_data_dir(node_id));
    let identity = StoreIdentity {
        cluster: config.name.clone(),
        node_id,
        voters: config.ids(),
    };
    let lock = node_storage::lock(&dir)?;
    if !node_storage::has_state(&dir)? {
        return Ok(Opening::Fresh {
            dir,
            lock,
            identity,
        });
    }
    let storage = NodeStorage::open_locked(&dir, lock, &identity)?;
    info!("raft state in {}", storage.state.file().display());
    Ok(Opening::Existing(Box::new(storage)))
}
