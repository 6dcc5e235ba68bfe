//! Plain TCP between nodes.
//!
//! - One accept loop ([`spawn_listener`]). Each inbound connection gets its own
//!   reader task, which checks the handshake and then routes Raft frames to the
//!   replica of the group each frame names.
//! - One outbound task per peer ([`spawn_peer_senders`]), fed by a bounded flume
//!   queue. A replica never waits on the network: when a queue is full the
//!   message is dropped (Raft retransmits). The task reconnects with backoff and
//!   reports every failed send to the replica as `report_unreachable`.
//! - [`probe`] dials a peer, does the handshake and hangs up. It proves that the
//!   expected node of this cluster is there, not merely that a port is open.
//!
//! A malformed or oversized frame closes that connection and nothing else.

pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::io::BufReader;
use async_std::net::{TcpListener, TcpStream};
use futures_lite::future;
use futures_lite::AsyncWriteExt;
use log::{debug, info, warn};
use raft::prelude::{Message, MessageType};

use crate::error::{Error, Result};
use crate::health::HealthHandle;
use crate::metrics::Metrics;
use crate::raft::{ReplicaMsg, Router};
use crate::runtime::or_shutdown;
use wire::{read_frame, write_frame, Frame, GroupId, Purpose, SnapshotAssembly, WireError};

/// Capacity of each peer's outbound queue, in messages. Raft retransmits what
/// is dropped, so a small queue bounds memory without losing safety.
pub const PEER_QUEUE_CAPACITY: usize = 256;
/// How many queued messages one write may coalesce.
pub const MAX_BATCH_MESSAGES: usize = 64;
/// Time allowed for a TCP connect to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Time allowed for the handshake once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnect delay after a failed dial; doubles up to the maximum.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Inbound connections served at once; more are closed on accept.
pub const MAX_INBOUND_CONNECTIONS: usize = 128;
/// Raft traffic from a peer is reported to the health monitor at most this
/// often per connection.
pub const ANSWER_REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// The same refusal is logged at most once per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Who this node is, as the transport needs to know it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our node id.
    pub node_id: u64,
    /// The cluster name every handshake must carry.
    pub cluster: String,
    /// Every peer (not us): id and peer address.
    pub peers: Vec<(u64, SocketAddr)>,
}

/// Opens the peer listener. Done before anything else so that a port in use
/// fails at once with a clear sentence.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        what: "peer traffic",
        addr,
        source,
    })
}

struct Inbound {
    me: Identity,
    router: Router,
    health: HealthHandle,
    peers: PeerSenders,
    metrics: Arc<Metrics>,
    open: AtomicUsize,
    /// Last time each refusal reason was logged. Touched only by reader tasks,
    /// briefly, never across an await; a lock is simpler than a task here.
    refusals: Mutex<HashMap<String, Instant>>,
}

/// Runs the accept loop until `shutdown` closes.
pub fn spawn_listener(
    listener: TcpListener,
    me: Identity,
    router: Router,
    health: HealthHandle,
    peers: PeerSenders,
    metrics: Arc<Metrics>,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    let ctx = Arc::new(Inbound {
        me,
        router,
        health,
        peers,
        metrics,
        open: AtomicUsize::new(0),
        refusals: Mutex::new(HashMap::new()),
    });
    crate::runtime::spawn(async move {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            let accepted = or_shutdown(&shutdown, listener.accept()).await;
            let (stream, remote) = match accepted {
                None => break,
                Some(Ok(pair)) => {
                    backoff = RECONNECT_BACKOFF_MIN;
                    pair
                }
                Some(Err(e)) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!("peer listener accept failed: {e}; retrying in {backoff:?}");
                    async_io::Timer::after(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    continue;
                }
            };
            if ctx.open.load(Ordering::Relaxed) >= MAX_INBOUND_CONNECTIONS {
                warn!(
                    "closing peer connection from {remote}: {MAX_INBOUND_CONNECTIONS} already open"
                );
                continue;
            }
            ctx.open.fetch_add(1, Ordering::Relaxed);
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            crate::runtime::spawn(async move {
                or_shutdown(&shutdown, serve_inbound(&ctx, stream, remote)).await;
                ctx.open.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
        }
        debug!("peer listener closed");
    })
}

async fn serve_inbound(ctx: &Inbound, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.clone());
    let mut writer = stream;
    let hello = match async_io::Timer::after(HANDSHAKE_TIMEOUT)
        .map_or(read_frame(&mut reader))
        .await
    {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => {
            ctx.refuse(remote, &format!("bad handshake: {e}"));
            return;
        }
        None => {
            ctx.refuse(remote, "no handshake within the timeout");
            return;
        }
    };
    let (purpose, from) = match check_hello(&ctx.me, &hello) {
        Ok(ok) => ok,
        Err(reason) => {
            let _ = write_frame(
                &mut writer,
                &Frame::Reject {
                    reason: reason.clone(),
                },
            )
            .await;
            ctx.refuse(remote, &reason);
            return;
        }
    };
    let ack = Frame::Ack {
        node_id: ctx.me.node_id,
        cluster: ctx.me.cluster.clone(),
    };
    if write_frame(&mut writer, &ack).await.is_err() {
        return;
    }
    // A completed handshake is an answer from that peer, whichever side dialed.
    ctx.health.answered(from);
    ctx.peers.peer_up(from);
    if purpose == Purpose::Probe {
        return;
    }
    debug!("raft stream from peer {from} ({remote}) open");
    let mut reported = Instant::now();
    let mut snapshot = SnapshotAssembly::default();
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(frame @ (Frame::SnapshotBegin { .. } | Frame::SnapshotChunk { .. })) => {
                match snapshot.push(frame) {
                    Ok(None) => continue,
                    Ok(Some((group, message))) => Ok(Frame::Raft { group, message }),
                    Err(e) => Err(e),
                }
            }
            Ok(_) if snapshot.is_open() => Err(WireError::Malformed(
                "a message inside a snapshot's chunks".into(),
            )),
            other => other,
        };
        match frame {
            Ok(Frame::Raft { group, message }) => {
                if message.from != from || message.to != ctx.me.node_id {
                    warn!(
                        "closing connection from peer {from} ({remote}): message addressed {}->{} on a {from}->{} stream",
                        message.from, message.to, ctx.me.node_id
                    );
                    return;
                }
                ctx.metrics.received(from);
                if reported.elapsed() >= ANSWER_REPORT_INTERVAL {
                    // Messages on this handshaken stream prove the peer is
                    // up; tell the health monitor, at a bounded rate.
                    ctx.health.answered(from);
                    reported = Instant::now();
                }
                ctx.router
                    .deliver(&group, ReplicaMsg::Raft(Box::new(message)));
            }
            Ok(other) => {
                warn!("closing connection from peer {from} ({remote}): unexpected frame {other:?}");
                return;
            }
            Err(WireError::Io(e)) => {
                // The peer closed its stream: it is stopping or restarting.
                // Telling raft at once lets a leader that is handing over to
                // it give up now instead of at the transfer timeout.
                debug!("raft stream from peer {from} ({remote}) closed: {e}");
                ctx.router.broadcast(|| ReplicaMsg::Unreachable(from));
                return;
            }
            Err(e) => {
                warn!("closing connection from peer {from} ({remote}): {e}");
                return;
            }
        }
    }
}

impl Inbound {
    fn refuse(&self, remote: SocketAddr, reason: &str) {
        let now = Instant::now();
        let mut seen = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let due = seen
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_INTERVAL);
        if due {
            seen.insert(reason.to_string(), now);
            warn!("refused peer connection from {remote}: {reason}");
        } else {
            debug!("refused peer connection from {remote}: {reason}");
        }
    }
}

/// Checks a `Hello` against our identity; returns its purpose and sender.
fn check_hello(me: &Identity, hello: &Frame) -> std::result::Result<(Purpose, u64), String> {
    let Frame::Hello {
        purpose,
        from,
        to,
        cluster,
    } = hello
    else {
        return Err("first frame is not a hello".to_string());
    };
    if *cluster != me.cluster {
        return Err(format!(
            "node {from} belongs to cluster '{cluster}', this is cluster '{}'",
            me.cluster
        ));
    }
    if *to != me.node_id {
        return Err(format!(
            "node {from} expected node {to} at this address, this is node {}",
            me.node_id
        ));
    }
    if !me.peers.iter().any(|(id, _)| id == from) {
        return Err(format!(
            "node id {from} is not a peer in cluster '{}'",
            me.cluster
        ));
    }
    Ok((*purpose, *from))
}

/// Dials `addr`, sends a `Hello` and waits for the `Ack`. On success the
/// stream is ready for frames.
async fn dial(
    me: &Identity,
    to: u64,
    addr: SocketAddr,
    purpose: Purpose,
    wait: Duration,
) -> std::result::Result<TcpStream, String> {
    let connect =
        async_io::Timer::after(wait.min(CONNECT_TIMEOUT)).map_or(TcpStream::connect(addr));
    let mut stream = match connect.await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(format!("connect failed: {e}")),
        None => return Err("connect timed out".to_string()),
    };
    let _ = stream.set_nodelay(true);
    let hello = Frame::Hello {
        purpose,
        from: me.node_id,
        to,
        cluster: me.cluster.clone(),
    };
    let exchange = async {
        write_frame(&mut stream, &hello)
            .await
            .map_err(|e| format!("handshake send failed: {e}"))?;
        read_frame(&mut stream)
            .await
            .map_err(|e| format!("no handshake answer: {e}"))
    };
    match async_io::Timer::after(wait.min(HANDSHAKE_TIMEOUT))
        .map_or(exchange)
        .await
    {
        None => Err("no handshake answer within the timeout".to_string()),
        Some(Err(e)) => Err(e),
        Some(Ok(Frame::Ack { node_id, cluster })) => {
            if node_id != to || cluster != me.cluster {
                Err(format!(
                    "answered as node {node_id} of cluster '{cluster}', expected node {to} of '{}'",
                    me.cluster
                ))
            } else {
                Ok(stream)
            }
        }
        Some(Ok(Frame::Reject { reason })) => Err(format!("refused: {reason}")),
        Some(Ok(other)) => Err(format!("unexpected handshake answer {other:?}")),
    }
}

/// Probes peer `to` at `addr`: a full handshake within `wait`, then hang up.
/// `Err` carries the reason, for logs.
pub async fn probe(
    me: &Identity,
    to: u64,
    addr: SocketAddr,
    wait: Duration,
) -> std::result::Result<(), String> {
    let stream = dial(me, to, addr, Purpose::Probe, wait).await?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// What a replica hands to the transport.
#[derive(Debug)]
pub struct Outbound {
    /// The group that sent it; failures are reported back to this group.
    pub group: GroupId,
    /// The message; `to` names the peer.
    pub message: Message,
}

/// The replicas' side of the transport: one bounded queue per peer.
#[derive(Clone)]
pub struct PeerSenders {
    queues: Arc<HashMap<u64, flume::Sender<Outbound>>>,
    /// Tells a peer's outbound task that the peer is up: retry at once.
    up: Arc<HashMap<u64, flume::Sender<()>>>,
    metrics: Arc<Metrics>,
}

impl PeerSenders {
    /// The peer answered (a handshake succeeded): its outbound task drops any
    /// reconnect backoff, so the next message is not thrown away. Without
    /// this, a peer that starts a moment after the leader's first messages
    /// would learn of the leader only from a later heartbeat.
    pub fn peer_up(&self, id: u64) {
        if let Some(up) = self.up.get(&id) {
            let _ = up.try_send(());
        }
    }

    /// Queues `message` for its peer without waiting. A full queue drops it
    /// (Raft retransmits); the return value says whether it was queued.
    pub fn send(&self, group: &GroupId, message: Message) -> bool {
        let to = message.to;
        let Some(queue) = self.queues.get(&to) else {
            warn!("{group}: dropping message to unknown peer {to}");
            return false;
        };
        match queue.try_send(Outbound {
            group: group.clone(),
            message,
        }) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.dropped(to, 1);
                debug!("{group}: queue to peer {to} full, message dropped");
                false
            }
        }
    }
}

/// Starts one outbound task per peer. They end when `shutdown` closes.
pub fn spawn_peer_senders(
    me: &Identity,
    router: &Router,
    metrics: &Arc<Metrics>,
    shutdown: &flume::Receiver<()>,
) -> (PeerSenders, Vec<crate::runtime::Task<()>>) {
    let mut queues = HashMap::new();
    let mut ups = HashMap::new();
    let mut tasks = Vec::new();
    for &(id, addr) in &me.peers {
        let (tx, rx) = flume::bounded(PEER_QUEUE_CAPACITY);
        queues.insert(id, tx);
        let (up_tx, up) = flume::bounded(1);
        ups.insert(id, up_tx);
        metrics.add_peer(id);
        let peer = PeerLink {
            me: me.clone(),
            id,
            addr,
            router: router.clone(),
            metrics: metrics.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.push(crate::runtime::spawn(peer.run(rx, up, shutdown)));
    }
    (
        PeerSenders {
            queues: Arc::new(queues),
            up: Arc::new(ups),
            metrics: metrics.clone(),
        },
        tasks,
    )
}

struct PeerLink {
    me: Identity,
    id: u64,
    addr: SocketAddr,
    router: Router,
    metrics: Arc<Metrics>,
}

impl PeerLink {
    async fn run(
        self,
        rx: flume::Receiver<Outbound>,
        up: flume::Receiver<()>,
        shutdown: flume::Receiver<()>,
    ) {
        let mut conn: Option<TcpStream> = None;
        let mut backoff = RECONNECT_BACKOFF_MIN;
        let mut retry_at = Instant::now();
        let mut last_error: Option<String> = None;
        let mut ever_connected = false;
        let mut buf = Vec::new();
        loop {
            let first = or_shutdown(&shutdown, rx.recv_async())
                .await
                .and_then(Result::ok);
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_MESSAGES {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }

            if conn.is_none() {
                if up.try_recv().is_ok() {
                    retry_at = Instant::now();
                    backoff = RECONNECT_BACKOFF_MIN;
                }
                // While backing off, fail fast instead of sleeping: the replica
                // learns the peer is unreachable and keeps running.
                if Instant::now() < retry_at {
                    self.fail(&batch);
                    continue;
                }
                match dial(
                    &self.me,
                    self.id,
                    self.addr,
                    Purpose::Raft,
                    HANDSHAKE_TIMEOUT,
                )
                .await
                {
                    Ok(stream) => {
                        if last_error.take().is_some() && ever_connected {
                            info!(
                                "raft connection to peer {} ({}) restored",
                                self.id, self.addr
                            );
                        } else {
                            debug!("raft connection to peer {} ({}) open", self.id, self.addr);
                        }
                        backoff = RECONNECT_BACKOFF_MIN;
                        ever_connected = true;
                        conn = Some(stream);
                    }
                    Err(reason) => {
                        if last_error.as_deref() != Some(reason.as_str()) {
                            debug!("cannot reach peer {} ({}): {reason}", self.id, self.addr);
                            last_error = Some(reason);
                        }
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                        self.fail(&batch);
                        continue;
                    }
                }
            }

            let stream = conn.as_mut().expect("connected above");
            let written = async {
                // Small messages are coalesced into one write; a snapshot
                // goes out frame by frame, never copied whole.
                buf.clear();
                for out in &batch {
                    for frame in wire::message_frames(&out.group, &out.message) {
                        buf.extend_from_slice(&frame);
                        if buf.len() >= wire::SNAPSHOT_CHUNK_BYTES {
                            stream.write_all(&buf).await?;
                            buf.clear();
                        }
                    }
                }
                stream.write_all(&buf).await?;
                stream.flush().await
            };
            match written.await {
                Ok(()) => {
                    self.metrics.sent(self.id, batch.len());
                    for out in &batch {
                        if out.message.get_msg_type() == MessageType::MsgSnapshot {
                            self.router.deliver(
                                &out.group,
                                ReplicaMsg::SnapshotStatus {
                                    peer: self.id,
                                    delivered: true,
                                },
                            );
                        }
                    }
                }
                Err(e) => {
                    // Routine when a peer stops; the health monitor reports
                    // it down if it stays away.
                    info!(
                        "lost raft connection to peer {} ({}): {e}",
                        self.id, self.addr
                    );
                    last_error = Some(e.to_string());
                    conn = None;
                    retry_at = Instant::now();
                    self.fail(&batch);
                }
            }
        }
        debug!("outbound task for peer {} stopped", self.id);
    }

    /// Reports a batch that could not be sent to the groups that sent it.
    fn fail(&self, batch: &[Outbound]) {
        self.metrics.dropped(self.id, batch.len());
        for out in batch {
            if out.message.get_msg_type() == MessageType::MsgSnapshot {
                self.router.deliver(
                    &out.group,
                    ReplicaMsg::SnapshotStatus {
                        peer: self.id,
                        delivered: false,
                    },
                );
            }
        }
        let mut groups: Vec<&GroupId> = batch.iter().map(|o| &o.group).collect();
        groups.sort();
        groups.dedup();
        for group in groups {
            self.router.deliver(group, ReplicaMsg::Unreachable(self.id));
        }
    }
}

/// Bridges `FutureExt::or`-style timeouts: resolves to `None` when the timer
/// fires first.
trait TimeoutExt {
    fn map_or<F: std::future::Future>(
        self,
        f: F,
    ) -> impl std::future::Future<Output = Option<F::Output>>;
}

impl TimeoutExt for async_io::Timer {
    fn map_or<F: std::future::Future>(
        self,
        f: F,
    ) -> impl std::future::Future<Output = Option<F::Output>> {
        future::or(async move { Some(f.await) }, async move {
            self.await;
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            node_id: 1,
            cluster: "c".into(),
            peers: vec![(2, "127.0.0.1:1".parse().unwrap())],
        }
    }

    fn hello(cluster: &str, from: u64, to: u64) -> Frame {
        Frame::Hello {
            purpose: Purpose::Probe,
            from,
            to,
            cluster: cluster.into(),
        }
    }

    #[test]
    fn hello_from_a_known_peer_of_this_cluster_is_accepted() {
        assert_eq!(
            check_hello(&me(), &hello("c", 2, 1)),
            Ok((Purpose::Probe, 2))
        );
    }

    #[test]
    fn hello_of_another_cluster_or_id_is_refused() {
        let err = check_hello(&me(), &hello("other", 2, 1)).unwrap_err();
        assert!(err.contains("cluster 'other'"), "{err}");
        let err = check_hello(&me(), &hello("c", 2, 3)).unwrap_err();
        assert!(err.contains("expected node 3"), "{err}");
        let err = check_hello(&me(), &hello("c", 9, 1)).unwrap_err();
        assert!(err.contains("not a peer"), "{err}");
    }
}
