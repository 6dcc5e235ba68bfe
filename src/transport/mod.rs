//! Peer connections: TCP, or mutual TLS when the cluster file has `[tls]`.
//!
//! - One accept loop ([`spawn_listener`]). Each inbound connection gets its own
//!   reader task, which checks the handshake and then hands Raft frames to a
//!   [`RaftSink`]. The transport knows nothing of replicas: the Raft layer
//!   implements the sink, and the health monitor implements [`PeerAnswers`].
//! - One outbound task per peer ([`spawn_peer_senders`]), fed by a bounded flume
//!   queue. A replica never waits on the network: when a queue is full the
//!   message is dropped (Raft retransmits). The task reconnects with backoff and
//!   reports every failed send to the sink as unreachable.
//! - [`probe`] sends a peer a `Hello` and checks its answer, on a connection it
//!   keeps from one probe to the next (dialled again when it ends, and after
//!   [`PROBE_LINK_MAX_AGE`]). It proves that the expected node of this cluster
//!   is there, not merely that a port is open.
//!
//! What a stray or hostile client can cost a node is bounded:
//! - at most [`MAX_PENDING_HANDSHAKES`] connections from members' addresses
//!   may be in their handshake, and as many again from other addresses, at
//!   most `[limits] peer_handshakes_per_address` from any one of them; more
//!   are told "busy" in a plaintext `Reject` and closed. A stranger cannot
//!   take a member's slot, and an established, authenticated link holds
//!   none;
//! - the whole handshake (TLS, `Hello`, answer) must finish within
//!   [`HANDSHAKE_TIMEOUT`], and a `Hello` is read with a 1 KiB limit;
//! - a peer keeps at most one inbound Raft stream and one probe connection: a
//!   new one replaces the old;
//! - an inbound stream silent for [`INBOUND_IDLE_TIMEOUT`] is closed (senders
//!   send a keepalive every [`KEEPALIVE_INTERVAL`] of idleness), and so is a
//!   probe connection whose next `Hello` does not arrive whole within it;
//! - a write that makes no progress for [`WRITE_TIMEOUT`] drops the
//!   connection, and every wait ends when the node shuts down, so a paused
//!   or black-holed peer never holds up SIGTERM;
//! - refusals are logged at most once per [`REFUSAL_LOG_INTERVAL`] per kind,
//!   from a table of fixed size.
//!
//! A malformed or oversized frame closes that connection and nothing else.

pub mod directory;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_std::io::BufReader;
use async_std::net::{TcpListener, TcpStream};
use futures_lite::{future, AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use log::{debug, info, warn};
use raft::prelude::{Message, MessageType};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::runtime::or_shutdown;
use crate::tls::PeerTls;
pub use directory::{Caller, Directory, PeerEntry, SharedDirectory};
use wire::{
    read_frame, read_handshake_frame, write_frame, Frame, GroupId, Purpose, RejectCode,
    SnapshotAssembly, WireError,
};

/// Capacity of each peer's outbound queue, in messages. Raft retransmits what
/// is dropped, so a small queue bounds memory without losing safety.
pub const PEER_QUEUE_CAPACITY: usize = 256;
/// How many queued messages one write may coalesce.
pub const MAX_BATCH_MESSAGES: usize = 64;
/// Time allowed for a TCP connect to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Time allowed for the whole handshake once connected: TLS, `Hello` and
/// the answer, each read and write included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// A write to a peer that makes no progress for this long drops the
/// connection (the peer is paused, black-holed or not reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest piece handed to one write call, so progress is seen often.
const WRITE_PIECE_BYTES: usize = 64 * 1024;
/// An outbound Raft stream idle this long sends a keepalive frame.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// An inbound Raft stream that delivers no frame for this long is closed.
/// Three keepalive intervals: a live sender is never cut off.
pub const INBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// First reconnect delay after a failed dial; doubles up to the maximum.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Inbound connections that may be in their handshake at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Raft traffic from a peer is reported to the health monitor at most this
/// often per connection.
pub const ANSWER_REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// Each kind of refusal is logged at most once per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where the transport hands what arrives, and reports what it could not
/// send. The Raft layer implements it; the transport never sees a replica.
pub trait RaftSink: Send + Sync + 'static {
    /// A Raft message for `group` from a handshaken peer stream (its `from`
    /// is the peer the handshake proved, its `to` is this node).
    fn deliver(&self, group: &GroupId, message: Message);
    /// A message of `group` to `peer` could not be sent.
    fn unreachable(&self, group: &GroupId, peer: u64);
    /// `peer` closed its Raft stream to us (it is stopping or restarting).
    fn peer_closed(&self, peer: u64);
    /// A snapshot of `group` was written to `peer`'s socket (`true`) or could
    /// not be (`false`).
    fn snapshot_sent(&self, group: &GroupId, peer: u64, delivered: bool);
}

/// Told whenever a peer proves it is up: a completed handshake, or traffic
/// on a handshaken stream. The health monitor implements it.
pub trait PeerAnswers: Send + Sync + 'static {
    /// `peer` answered, now.
    fn answered(&self, peer: u64);
}

/// Who this node is, as the transport needs to know it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our node id.
    pub node_id: u64,
    /// The cluster name every handshake must carry.
    pub cluster: String,
    /// The peers, cluster id and removed ids, kept current by the
    /// membership.
    pub directory: SharedDirectory,
    /// Mutual TLS, when the cluster file has `[tls]`.
    pub tls: Option<PeerTls>,
}

impl Identity {
    /// A copy of the directory as it is now.
    pub fn directory(&self) -> Directory {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every peer and its address, now.
    pub fn peers(&self) -> Vec<(u64, SocketAddr)> {
        let dir = self.directory.read().unwrap_or_else(|e| e.into_inner());
        dir.peers.iter().map(|(&id, p)| (id, p.addr)).collect()
    }
}

/// Why a dial or probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    /// The peer's refusal code, if it refused our `Hello`.
    pub code: Option<RejectCode>,
    /// What happened, for logs.
    pub reason: String,
}

impl From<String> for DialError {
    fn from(reason: String) -> Self {
        DialError { code: None, reason }
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
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

/// A dialer's TCP stream that keeps a copy of the first bytes it reads,
/// so that when its TLS handshake fails, a plaintext `Reject` the peer sent
/// before closing (out of handshake slots, say) can still be read out.
struct Recorded {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Bytes recorded so far; past [`Recorded::KEEP`], reads pass through.
    kept: usize,
}

impl Recorded {
    const KEEP: usize = 4 + wire::HANDSHAKE_MAX_BYTES;

    /// The `Reject` the peer sent in plaintext, if what was read is one.
    fn reject(seen: &[u8]) -> Option<String> {
        let len = u32::from_be_bytes(seen.get(..4)?.try_into().ok()?) as usize;
        match Frame::decode(seen.get(4..4 + len)?) {
            Ok(Frame::Reject { reason, .. }) => Some(reason),
            _ => None,
        }
    }
}

impl AsyncRead for Recorded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &read {
            if this.kept < Self::KEEP && *n > 0 {
                let take = (*n).min(Self::KEEP - this.kept);
                this.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..take]);
                this.kept += take;
            }
        }
        read
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// A connection to a peer: plain TCP, or TLS as either side.
enum PeerStream {
    Plain(TcpStream),
    Client(Box<futures_rustls::client::TlsStream<Recorded>>),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_close(cx),
            PeerStream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            PeerStream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Runs `f` until it completes (`Some`) or `limit` passes (`None`).
async fn within<F: std::future::Future>(limit: Duration, f: F) -> Option<F::Output> {
    future::or(async { Some(f.await) }, async {
        async_io::Timer::after(limit).await;
        None
    })
    .await
}

/// Writes `bytes` and flushes, failing when a step makes no progress for
/// [`WRITE_TIMEOUT`] (a paused or black-holed peer); a slow link that keeps
/// moving is fine. A step that completes at once (the common case) arms no
/// timer, which would cost the reactor a wakeup per message.
async fn write_bounded<W: AsyncWrite + Unpin>(w: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let piece = bytes.len().min(WRITE_PIECE_BYTES);
        let n = with_progress(w.write(&bytes[..piece])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    with_progress(w.flush()).await
}

/// Runs one I/O step; fails if it is not done within [`WRITE_TIMEOUT`].
async fn with_progress<T>(step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    let mut step = std::pin::pin!(step);
    if let Some(done) = future::poll_once(&mut step).await {
        return done;
    }
    within(WRITE_TIMEOUT, step).await.unwrap_or_else(|| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no write progress for {WRITE_TIMEOUT:?}"),
        ))
    })
}

/// The kinds of refusal, each logged at most once per [`REFUSAL_LOG_INTERVAL`].
/// A fixed set, so the table cannot grow with what clients send.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Busy = 0,
    Handshake,
    Timeout,
    Identity,
    Tls,
    Plaintext,
}

const REFUSAL_KINDS: usize = 6;

/// Rate-limited refusal logging: one line per kind per interval, with a count
/// of what was not logged in between.
struct RefusalLog {
    last: Mutex<[Option<Instant>; REFUSAL_KINDS]>,
    suppressed: [AtomicU64; REFUSAL_KINDS],
}

impl RefusalLog {
    fn new() -> Self {
        RefusalLog {
            last: Mutex::new([None; REFUSAL_KINDS]),
            suppressed: Default::default(),
        }
    }

    fn refuse(&self, kind: Refusal, remote: SocketAddr, reason: &str) {
        let now = Instant::now();
        let due = {
            // Held for a look and a store, never across an await.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let slot = &mut last[kind as usize];
            let due = slot.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL);
            if due {
                *slot = Some(now);
            }
            due
        };
        if due {
            let skipped = self.suppressed[kind as usize].swap(0, Ordering::Relaxed);
            let more = if skipped > 0 {
                format!(" ({skipped} more refusals of this kind not logged)")
            } else {
                String::new()
            };
            warn!("refused peer connection from {remote}: {reason}{more}");
        } else {
            self.suppressed[kind as usize].fetch_add(1, Ordering::Relaxed);
            debug!("refused peer connection from {remote}: {reason}");
        }
    }
}

struct Inbound {
    me: Identity,
    sink: Arc<dyn RaftSink>,
    answers: Arc<dyn PeerAnswers>,
    peers: PeerSenders,
    metrics: Arc<Metrics>,
    /// Connections in their handshake, by whom: members' addresses have
    /// slots of their own that strangers cannot take.
    pending: Mutex<PendingSlots>,
    /// `[limits] peer_handshakes_per_address`, for strangers.
    per_address: usize,
    /// The largest snapshot accepted ([`wire::snapshot_limit`]).
    snapshot_limit: u64,
    refusals: RefusalLog,
    /// The current inbound Raft stream of each peer: a generation number and
    /// a sender whose drop tells that stream's reader it was replaced. Held
    /// briefly, never across an await.
    streams: Mutex<HashMap<u64, (u64, flume::Sender<()>)>>,
    /// The current probe connection of each peer, the same way: a prober
    /// keeps one, and a newer one replaces it.
    probes: Mutex<HashMap<u64, (u64, flume::Sender<()>)>>,
    generation: AtomicU64,
}

/// What the peer listener admits.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    /// `[limits] peer_handshakes_per_address`.
    pub handshakes_per_address: usize,
    /// `[store] max_store_bytes`: bounds the snapshots accepted.
    pub max_store_bytes: u64,
}

/// Runs the accept loop until `shutdown` closes.
// Each argument is a separate collaborator the coordinator wires in.
#[allow(clippy::too_many_arguments)]
pub fn spawn_listener(
    listener: TcpListener,
    me: Identity,
    sink: Arc<dyn RaftSink>,
    answers: Arc<dyn PeerAnswers>,
    peers: PeerSenders,
    metrics: Arc<Metrics>,
    limits: InboundLimits,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    let ctx = Arc::new(Inbound {
        me,
        sink,
        answers,
        peers,
        metrics,
        pending: Mutex::new(PendingSlots::default()),
        per_address: limits.handshakes_per_address,
        snapshot_limit: wire::snapshot_limit(limits.max_store_bytes),
        refusals: RefusalLog::new(),
        streams: Mutex::new(HashMap::new()),
        probes: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(0),
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
            let Some(slot) = PendingGuard::take(&ctx, remote) else {
                let reason = format!(
                    "busy: every handshake slot for {} is taken ({} per address, {} for \
                     addresses that are not members)",
                    remote.ip(),
                    ctx.per_address,
                    MAX_PENDING_HANDSHAKES
                );
                ctx.refusals.refuse(Refusal::Busy, remote, &reason);
                // Said in plaintext before closing: a dialer learns it is
                // out of slots, not that its TLS failed.
                crate::runtime::spawn(async move {
                    let mut tcp = stream;
                    let reject = Frame::Reject {
                        code: RejectCode::Refused,
                        reason,
                    };
                    let _ =
                        within(Duration::from_millis(200), write_frame(&mut tcp, &reject)).await;
                })
                .detach();
                continue;
            };
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            crate::runtime::spawn(async move {
                or_shutdown(&shutdown, serve_inbound(&ctx, stream, remote, slot)).await;
            })
            .detach();
        }
        debug!("peer listener closed");
    })
}

/// Connections in their handshake: those from members' addresses, those
/// from other addresses, and each other address's count.
#[derive(Default)]
struct PendingSlots {
    members: usize,
    strangers: usize,
    per_ip: HashMap<std::net::IpAddr, usize>,
}

/// A handshake slot, given back when the handshake phase ends, however it
/// ends. An established, authenticated link holds none.
struct PendingGuard {
    ctx: Arc<Inbound>,
    ip: std::net::IpAddr,
    member: bool,
}

impl PendingGuard {
    /// Takes a slot for a connection from `remote`: a member's address
    /// draws on [`MAX_PENDING_HANDSHAKES`] slots of its own; any other on as
    /// many again, and at most `per_address` at once from one address.
    fn take(ctx: &Arc<Inbound>, remote: SocketAddr) -> Option<PendingGuard> {
        let ip = remote.ip();
        let member = ctx
            .me
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .values()
            .any(|p| p.addr.ip() == ip);
        let mut slots = ctx.pending.lock().unwrap_or_else(|e| e.into_inner());
        if member {
            if slots.members >= MAX_PENDING_HANDSHAKES {
                return None;
            }
            slots.members += 1;
        } else {
            let mine = slots.per_ip.get(&ip).copied().unwrap_or(0);
            if mine >= ctx.per_address || slots.strangers >= MAX_PENDING_HANDSHAKES {
                return None;
            }
            slots.strangers += 1;
            slots.per_ip.insert(ip, mine + 1);
        }
        Some(PendingGuard {
            ctx: ctx.clone(),
            ip,
            member,
        })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut slots = self.ctx.pending.lock().unwrap_or_else(|e| e.into_inner());
        if self.member {
            slots.members -= 1;
        } else {
            slots.strangers -= 1;
            if let Some(n) = slots.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    slots.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

async fn serve_inbound(ctx: &Inbound, tcp: TcpStream, remote: SocketAddr, pending: PendingGuard) {
    let _ = tcp.set_nodelay(true);
    let handshake = within(HANDSHAKE_TIMEOUT, accept_handshake(ctx, tcp)).await;
    drop(pending);
    let (mut reader, purpose, from) = match handshake {
        Some(Ok(accepted)) => accepted,
        Some(Err((kind, _, reason))) => {
            ctx.refusals.refuse(kind, remote, &reason);
            return;
        }
        None => {
            ctx.refusals.refuse(
                Refusal::Timeout,
                remote,
                &format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            );
            return;
        }
    };
    // A completed handshake is an answer from that peer, whichever side dialed.
    ctx.answers.answered(from);
    ctx.peers.peer_up(from);
    if purpose == Purpose::Probe {
        serve_probes(ctx, reader, from, remote).await;
        return;
    }

    // One inbound Raft stream per peer: this one replaces any older one
    // (dropping its sender tells its reader to stop).
    let generation = ctx.generation.fetch_add(1, Ordering::Relaxed);
    let (replaced_tx, replaced) = flume::bounded::<()>(1);
    {
        let mut streams = ctx.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.insert(from, (generation, replaced_tx)).is_some() {
            debug!("raft stream from peer {from} ({remote}) replaces an older one");
        }
    }
    debug!("raft stream from peer {from} ({remote}) open");
    let closed_by_peer = read_raft_stream(ctx, &mut reader, &replaced, from, remote).await;
    let current = {
        let mut streams = ctx.streams.lock().unwrap_or_else(|e| e.into_inner());
        let current = streams.get(&from).is_some_and(|(g, _)| *g == generation);
        if current {
            streams.remove(&from);
        }
        current
    };
    if closed_by_peer && current {
        // The peer closed its stream: it is stopping or restarting. Telling
        // raft at once lets a leader that is handing over to it give up now
        // instead of at the transfer timeout.
        ctx.sink.peer_closed(from);
    }
}

// Lives on the stack for one loop turn; boxing would allocate per frame.
#[allow(clippy::large_enum_variant)]
enum StreamEvent {
    Frame(std::result::Result<Frame, WireError>),
    Replaced,
    Idle,
}

/// Answers the later probes on a prober's connection: each `Hello` is
/// checked and answered like the first, and counts as an answer from the
/// peer. Ends when the prober hangs up, sends anything but a probe from the
/// same node, is silent for [`INBOUND_IDLE_TIMEOUT`], or opens a newer probe
/// connection (one per peer is kept, as for Raft streams).
async fn serve_probes(
    ctx: &Inbound,
    mut reader: BufReader<PeerStream>,
    from: u64,
    remote: SocketAddr,
) {
    let generation = ctx.generation.fetch_add(1, Ordering::Relaxed);
    let (replaced_tx, replaced) = flume::bounded::<()>(1);
    ctx.probes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(from, (generation, replaced_tx));
    loop {
        // The read may be cancelled only when the connection ends anyway.
        let hello = future::or(
            async { within(INBOUND_IDLE_TIMEOUT, read_handshake_frame(&mut reader)).await },
            async {
                let _ = replaced.recv_async().await;
                None
            },
        )
        .await;
        let Some(Ok(hello)) = hello else { break };
        let answer = match check_hello(&ctx.me, &hello) {
            Ok((Purpose::Probe, f)) if f == from => ack(&ctx.me),
            Ok(_) => Frame::Reject {
                code: RejectCode::Refused,
                reason: format!("a probe connection of node {from} carries only its probes"),
            },
            Err((code, reason)) => {
                ctx.refusals.refuse(Refusal::Identity, remote, &reason);
                Frame::Reject { code, reason }
            }
        };
        let refused = matches!(answer, Frame::Reject { .. });
        let sent = within(HANDSHAKE_TIMEOUT, write_frame(reader.get_mut(), &answer)).await;
        if refused || !matches!(sent, Some(Ok(()))) {
            break;
        }
        ctx.answers.answered(from);
    }
    let mut probes = ctx.probes.lock().unwrap_or_else(|e| e.into_inner());
    if probes.get(&from).is_some_and(|(g, _)| *g == generation) {
        probes.remove(&from);
    }
    debug!("probe connection from peer {from} ({remote}) closed");
}

/// Reads Raft frames until the stream ends. Returns true if the peer closed
/// it (as opposed to a bad frame, silence, or a newer stream).
async fn read_raft_stream(
    ctx: &Inbound,
    reader: &mut BufReader<PeerStream>,
    replaced: &flume::Receiver<()>,
    from: u64,
    remote: SocketAddr,
) -> bool {
    let mut reported = Instant::now();
    let mut last_frame = Instant::now();
    // One interval timer for the stream's life: arming a timer per frame
    // would wake the reactor thread on every message.
    let mut idle_check = async_io::Timer::interval(INBOUND_IDLE_TIMEOUT / 3);
    let mut snapshot = SnapshotAssembly::with_limit(ctx.snapshot_limit);
    loop {
        // Only branches that end the stream may win over a read in progress:
        // a cancelled read would lose the bytes it has taken.
        let event = future::or(
            async { StreamEvent::Frame(read_frame(reader).await) },
            future::or(
                async {
                    let _ = replaced.recv_async().await;
                    StreamEvent::Replaced
                },
                async {
                    loop {
                        idle_check.next().await;
                        if last_frame.elapsed() >= INBOUND_IDLE_TIMEOUT {
                            return StreamEvent::Idle;
                        }
                    }
                },
            ),
        )
        .await;
        let frame = match event {
            StreamEvent::Replaced => {
                debug!("raft stream from peer {from} ({remote}) closed: a newer one replaced it");
                return false;
            }
            StreamEvent::Idle => {
                info!(
                    "closing raft stream from peer {from} ({remote}): silent for {INBOUND_IDLE_TIMEOUT:?}"
                );
                return false;
            }
            StreamEvent::Frame(frame) => frame,
        };
        last_frame = Instant::now();
        // A snapshot arrives as a begin frame and chunks; it is reassembled
        // here, so the replica only ever sees whole messages.
        let frame = match frame {
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
                    return false;
                }
                ctx.metrics.received(from);
                if reported.elapsed() >= ANSWER_REPORT_INTERVAL {
                    // Messages on this handshaken stream prove the peer is
                    // up; tell the health monitor, at a bounded rate.
                    ctx.answers.answered(from);
                    reported = Instant::now();
                }
                ctx.sink.deliver(&group, message);
            }
            Ok(Frame::Keepalive) => {}
            Ok(other) => {
                warn!(
                    "closing connection from peer {from} ({remote}): unexpected {} frame",
                    other.kind_name()
                );
                return false;
            }
            Err(WireError::Io(e)) => {
                debug!("raft stream from peer {from} ({remote}) closed: {e}");
                return true;
            }
            Err(e) => {
                warn!("closing connection from peer {from} ({remote}): {e}");
                return false;
            }
        }
    }
}

type Refused = (Refusal, RejectCode, String);

/// The listener's side of the handshake: TLS (if configured), the `Hello`,
/// the identity checks, and the answer.
async fn accept_handshake(
    ctx: &Inbound,
    tcp: TcpStream,
) -> std::result::Result<(BufReader<PeerStream>, Purpose, u64), Refused> {
    let stream = match &ctx.me.tls {
        None => PeerStream::Plain(tcp),
        Some(tls) => {
            // A plaintext dialer opens with a frame length, whose first byte
            // is 0; a TLS ClientHello opens with 0x16. Tell the dialer in its
            // own language why it is refused.
            let mut first = [0u8; 1];
            let n = tcp.peek(&mut first).await.map_err(|e| {
                (
                    Refusal::Handshake,
                    RejectCode::Refused,
                    format!("connection failed: {e}"),
                )
            })?;
            if n == 1 && !wire::is_tls_record(&[first[0], 0x03]) {
                let reason = "this node requires TLS between peers ([tls] in the cluster file), and the dialer has none";
                let mut tcp = tcp;
                let _ = write_frame(
                    &mut tcp,
                    &Frame::Reject {
                        code: RejectCode::Refused,
                        reason: reason.into(),
                    },
                )
                .await;
                return Err((
                    Refusal::Plaintext,
                    RejectCode::Refused,
                    format!("plaintext dialer: {reason}"),
                ));
            }
            let accepted = tls.acceptor().accept(tcp).await.map_err(|e| {
                (
                    Refusal::Tls,
                    RejectCode::Refused,
                    format!("TLS handshake failed: {e}"),
                )
            })?;
            PeerStream::Server(Box::new(accepted))
        }
    };
    let mut reader = BufReader::new(stream);
    let hello = match read_handshake_frame(&mut reader).await {
        Ok(frame) => frame,
        Err(WireError::TlsRecord) => {
            return Err((
                Refusal::Plaintext,
                RejectCode::Refused,
                "a TLS dialer reached this node, which has no [tls] section".to_string(),
            ))
        }
        Err(e) => {
            return Err((
                Refusal::Handshake,
                RejectCode::Refused,
                format!("bad handshake: {e}"),
            ))
        }
    };
    let checked = check_hello(&ctx.me, &hello).map_err(|(code, r)| (Refusal::Identity, code, r));
    let checked = checked.and_then(|(purpose, from)| {
        let (Some(tls), PeerStream::Server(s)) = (&ctx.me.tls, reader.get_ref()) else {
            return Ok((purpose, from));
        };
        if tls.names_node(s.get_ref().1.peer_certificates(), from) {
            Ok((purpose, from))
        } else {
            Err((
                Refusal::Identity,
                RejectCode::Refused,
                format!(
                    "the hello claims node {from}, and the TLS certificate does not name {}",
                    crate::tls::node_name(&ctx.me.cluster, from)
                ),
            ))
        }
    });
    let (purpose, from) = match checked {
        Ok(ok) => ok,
        Err((kind, code, reason)) => {
            let reject = Frame::Reject {
                code,
                reason: reason.clone(),
            };
            let _ = write_frame(reader.get_mut(), &reject).await;
            return Err((kind, code, reason));
        }
    };
    write_frame(reader.get_mut(), &ack(&ctx.me))
        .await
        .map_err(|e| {
            (
                Refusal::Handshake,
                RejectCode::Refused,
                format!("cannot answer the hello: {e}"),
            )
        })?;
    Ok((reader, purpose, from))
}

/// The answer to an admitted `Hello`.
fn ack(me: &Identity) -> Frame {
    Frame::Ack {
        node_id: me.node_id,
        cluster: me.cluster.clone(),
        cluster_id: me.directory().cluster_id.unwrap_or_default(),
    }
}

/// Checks a `Hello` against our identity; returns its purpose and sender.
/// The names in a refusal come from the client: they are quoted, never
/// written raw into a log line.
pub(crate) fn check_hello(
    me: &Identity,
    hello: &Frame,
) -> std::result::Result<(Purpose, u64), (RejectCode, String)> {
    let refused = |reason: String| (RejectCode::Refused, reason);
    let Frame::Hello {
        purpose,
        from,
        to,
        cluster,
        cluster_id,
        has_state,
    } = hello
    else {
        return Err(refused(format!(
            "first frame is a {}, not a hello",
            hello.kind_name()
        )));
    };
    if *cluster != me.cluster {
        return Err(refused(format!(
            "node {from} belongs to cluster {cluster:?}, this is cluster {:?}",
            me.cluster
        )));
    }
    if *to != me.node_id {
        return Err(refused(format!(
            "node {from} expected node {to} at this address, this is node {}",
            me.node_id
        )));
    }
    let caller = Caller {
        from: *from,
        cluster_id: (!cluster_id.is_empty()).then_some(cluster_id.as_str()),
        has_state: *has_state,
    };
    me.directory
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .admit(&me.cluster, caller)?;
    Ok((*purpose, *from))
}

/// Dials `addr`, sets up TLS if configured, sends a `Hello` and waits for the
/// `Ack`, all within `wait`. On success the stream is ready for frames; the
/// peer's cluster id comes with it.
async fn dial(
    me: &Identity,
    to: u64,
    addr: SocketAddr,
    purpose: Purpose,
    wait: Duration,
) -> std::result::Result<(PeerStream, Option<String>), DialError> {
    let tcp = match within(wait.min(CONNECT_TIMEOUT), TcpStream::connect(addr)).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(format!("connect failed: {e}").into()),
        None => return Err("connect timed out".to_string().into()),
    };
    let _ = tcp.set_nodelay(true);
    let hello = hello(me, to, purpose);
    let exchange = async {
        let mut stream = match &me.tls {
            None => PeerStream::Plain(tcp),
            Some(tls) => {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let recorded = Recorded {
                    inner: tcp,
                    seen: seen.clone(),
                    kept: 0,
                };
                let connected = tls
                    .connector()
                    .connect(tls.server_name(to), recorded)
                    .await
                    .map_err(|e| {
                        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(reason) = Recorded::reject(&seen) {
                            format!("the peer refused the connection before TLS: {reason}")
                        } else if e.kind() == io::ErrorKind::UnexpectedEof {
                            format!("TLS handshake failed: {e} (does the peer run without [tls]?)")
                        } else {
                            format!("TLS handshake failed: {e}")
                        }
                    })?;
                PeerStream::Client(Box::new(connected))
            }
        };
        write_frame(&mut stream, &hello)
            .await
            .map_err(|e| format!("handshake send failed: {e}"))?;
        let answer = read_handshake_frame(&mut stream)
            .await
            .map_err(|e| format!("no handshake answer: {e}"))?;
        Ok::<_, String>((stream, answer))
    };
    let (stream, answer) = match within(wait.min(HANDSHAKE_TIMEOUT), exchange).await {
        None => return Err("no handshake answer within the timeout".to_string().into()),
        Some(result) => result?,
    };
    Ok((stream, check_answer(me, to, answer)?))
}

/// Our `Hello` to node `to`.
fn hello(me: &Identity, to: u64, purpose: Purpose) -> Frame {
    let dir = me.directory();
    Frame::Hello {
        purpose,
        from: me.node_id,
        to,
        cluster: me.cluster.clone(),
        cluster_id: dir.cluster_id.unwrap_or_default(),
        has_state: dir.has_state,
    }
}

/// Checks node `to`'s answer to our `Hello`; returns its cluster id
/// (`None` before its cluster formed).
fn check_answer(
    me: &Identity,
    to: u64,
    answer: Frame,
) -> std::result::Result<Option<String>, DialError> {
    match answer {
        Frame::Ack {
            node_id,
            cluster,
            cluster_id,
        } => {
            if node_id != to || cluster != me.cluster {
                return Err(format!(
                    "answered as node {node_id} of cluster {cluster:?}, expected node {to} of {:?}",
                    me.cluster
                )
                .into());
            }
            let theirs = (!cluster_id.is_empty()).then_some(cluster_id);
            if let (Some(t), Some(o)) = (&theirs, &me.directory().cluster_id) {
                if t != o {
                    return Err(DialError {
                        code: Some(RejectCode::OtherCluster),
                        reason: format!(
                            "node {to} answered with cluster id {t:?}, this node's is {o:?}"
                        ),
                    });
                }
            }
            Ok(theirs)
        }
        Frame::Reject { code, reason } => Err(DialError {
            code: Some(code),
            reason: format!("refused: {reason}"),
        }),
        other => Err(format!("unexpected {} frame as handshake answer", other.kind_name()).into()),
    }
}

/// A prober's connection to one peer, kept from one probe to the next, and
/// when it was dialled.
#[derive(Default)]
pub struct ProbeLink {
    stream: Option<(PeerStream, Instant)>,
}

/// A probe connection older than this is closed and dialled again, so that
/// probes go on checking the peer's TLS certificate (its expiry, a new CA)
/// from time to time, as they did when each dialled anew.
pub const PROBE_LINK_MAX_AGE: Duration = Duration::from_secs(60);

/// Probes peer `to` at `addr`: a `Hello` and its answer within `wait`, on
/// the connection `link` kept from the last probe, or else on a new one
/// (connect, TLS if configured, handshake), which `link` then keeps. A probe
/// is a full handshake either way: the answer names the node and its
/// cluster. A kept connection spares both nodes a connect and a TLS
/// handshake per probe. Returns the peer's cluster id (`None` before its
/// cluster formed); `Err` says why not, with the peer's refusal code if it
/// refused.
pub async fn probe(
    me: &Identity,
    to: u64,
    addr: SocketAddr,
    wait: Duration,
    link: &mut ProbeLink,
) -> std::result::Result<Option<String>, DialError> {
    let started = Instant::now();
    let kept = link
        .stream
        .take()
        .filter(|(_, dialled)| dialled.elapsed() < PROBE_LINK_MAX_AGE);
    if let Some((mut stream, dialled)) = kept {
        let exchange = async {
            write_frame(&mut stream, &hello(me, to, Purpose::Probe))
                .await
                .map_err(|e| e.to_string())?;
            read_handshake_frame(&mut stream)
                .await
                .map_err(|e| e.to_string())
        };
        match within(wait.min(HANDSHAKE_TIMEOUT), exchange).await {
            // A live connection and no answer: the peer does not answer.
            None => return Err("no handshake answer within the timeout".to_string().into()),
            Some(Ok(answer)) => {
                let cluster_id = check_answer(me, to, answer)?;
                link.stream = Some((stream, dialled));
                return Ok(cluster_id);
            }
            // The connection ended (the peer restarted, replaced it, or
            // closes a probe after its first answer): dial again, within
            // what is left of `wait`.
            Some(Err(_)) => {}
        }
    }
    let left = wait.saturating_sub(started.elapsed());
    let (stream, cluster_id) = dial(me, to, addr, Purpose::Probe, left).await?;
    link.stream = Some((stream, Instant::now()));
    Ok(cluster_id)
}

/// True if a TCP connect to `addr` is refused within `limit`: the kernel
/// of a live host says that no process listens there. A connect that works,
/// times out or fails otherwise says nothing of the kind (the peer may be
/// alive, paused or cut off), and gives `false`.
///
/// A process that is being killed closes its sockets one by one: its peers
/// see their streams reset while its listener may still accept for a moment.
/// A connect that is accepted and then reset at once, before the other side
/// could even read our hello, is that moment; the probe then waits 2 ms
/// and asks again (four connects at most). The reset may even come before
/// the connect itself is reported done, and then the connect fails with
/// "connection reset": that too is the moment, not an answer. A live node
/// leaves an accepted connection open, waiting for the hello, and the probe
/// answers `false`.
pub async fn refuses(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for probe in 0..REFUSAL_PROBES {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut stream = match within(left, TcpStream::connect(addr)).await {
            Some(Err(e)) if is_reset(&e) => {
                if probe + 1 < REFUSAL_PROBES {
                    reset_pause(deadline).await;
                }
                continue;
            }
            Some(Err(e)) => return e.kind() == io::ErrorKind::ConnectionRefused,
            None => return false,
            Some(Ok(stream)) => stream,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(ACCEPTED_RESET_WAIT);
        let mut byte = [0u8; 1];
        let closed = match within(
            left,
            futures_lite::AsyncReadExt::read(&mut stream, &mut byte),
        )
        .await
        {
            Some(Ok(0)) => true,
            Some(Err(e)) => is_reset(&e),
            // Open (a live node waits for our hello), or it spoke: alive.
            Some(Ok(_)) | None => false,
        };
        if !closed {
            return false;
        }
        if probe + 1 < REFUSAL_PROBES {
            reset_pause(deadline).await;
        }
    }
    false
}

/// Gives a dying process a moment to close its listener before [`refuses`]
/// connects again (no longer than what is left until `deadline`).
async fn reset_pause(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    async_io::Timer::after(RESET_PAUSE.min(left)).await;
}

/// An accepted connection was reset by the other side (its process closed
/// the listener it waited in, or the socket itself).
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// How many connects [`refuses`] makes when each is accepted and reset (or
/// fails with a reset).
const REFUSAL_PROBES: usize = 4;
/// How long [`refuses`] waits before it connects again after a connect that
/// failed with a reset.
const RESET_PAUSE: Duration = Duration::from_millis(2);
/// How long [`refuses`] waits for an accepted connection to be reset.
const ACCEPTED_RESET_WAIT: Duration = Duration::from_millis(20);

/// What a replica hands to the transport.
#[derive(Debug)]
pub struct Outbound {
    /// The group that sent it; failures are reported back to this group.
    pub group: GroupId,
    /// The message; `to` names the peer.
    pub message: Message,
}

/// One peer's queue and the task that drains it.
struct PeerQueue {
    addr: SocketAddr,
    queue: flume::Sender<Outbound>,
    /// Tells the outbound task that the peer is up: retry at once.
    up: flume::Sender<()>,
}

/// What it takes to start a peer's outbound task.
struct LinkFactory {
    me: Identity,
    sink: Arc<dyn RaftSink>,
    metrics: Arc<Metrics>,
    shutdown: flume::Receiver<()>,
}

/// The replicas' side of the transport: one bounded queue per peer. Peers
/// come and go with the membership ([`PeerSenders::set_peers`]); a removed
/// peer's task ends when its queue closes.
#[derive(Clone)]
pub struct PeerSenders {
    /// Looked up on every message, changed only with the membership. Held
    /// for a lookup and a `try_send`, never across an await.
    queues: Arc<RwLock<HashMap<u64, PeerQueue>>>,
    factory: Arc<LinkFactory>,
    metrics: Arc<Metrics>,
}

impl PeerSenders {
    /// The peer answered (a handshake succeeded): its outbound task drops any
    /// reconnect backoff, so the next message is not thrown away. Without
    /// this, a peer that starts a moment after the leader's first messages
    /// would learn of the leader only from a later heartbeat.
    pub fn peer_up(&self, id: u64) {
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.get(&id) {
            let _ = q.up.try_send(());
        }
    }

    /// The peer address of `id`, if it is a peer.
    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        queues.get(&id).map(|q| q.addr)
    }

    /// Queues `message` for its peer without waiting. A full queue drops it
    /// (Raft retransmits); the return value says whether it was queued.
    pub fn send(&self, group: &GroupId, message: Message) -> bool {
        let to = message.to;
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        let Some(q) = queues.get(&to) else {
            debug!("{group}: dropping message to unknown peer {to}");
            return false;
        };
        match q.queue.try_send(Outbound {
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

    /// Makes the set of peers `peers`: starts a task for each new one, and
    /// closes the queue of each that is gone (its task ends). Returns the
    /// tasks started.
    pub fn set_peers(&self, peers: &[(u64, SocketAddr)]) -> Vec<crate::runtime::Task<()>> {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        queues.retain(|id, q| peers.iter().any(|(p, a)| p == id && *a == q.addr));
        let mut tasks = Vec::new();
        for &(id, addr) in peers {
            if queues.contains_key(&id) {
                continue;
            }
            let (queue, rx) = flume::bounded(PEER_QUEUE_CAPACITY);
            let (up, up_rx) = flume::bounded(1);
            self.metrics.add_peer(id);
            let f = &self.factory;
            let link = PeerLink {
                me: f.me.clone(),
                id,
                addr,
                sink: f.sink.clone(),
                metrics: f.metrics.clone(),
            };
            tasks.push(crate::runtime::spawn(link.run(
                rx,
                up_rx,
                f.shutdown.clone(),
            )));
            queues.insert(id, PeerQueue { addr, queue, up });
        }
        tasks
    }
}

/// Starts one outbound task per peer of the directory. They end when
/// `shutdown` closes, or when their peer leaves ([`PeerSenders::set_peers`]).
pub fn spawn_peer_senders(
    me: &Identity,
    sink: &Arc<dyn RaftSink>,
    metrics: &Arc<Metrics>,
    shutdown: &flume::Receiver<()>,
) -> (PeerSenders, Vec<crate::runtime::Task<()>>) {
    let senders = PeerSenders {
        queues: Arc::new(RwLock::new(HashMap::new())),
        factory: Arc::new(LinkFactory {
            me: me.clone(),
            sink: sink.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        }),
        metrics: metrics.clone(),
    };
    let tasks = senders.set_peers(&me.peers());
    (senders, tasks)
}

struct PeerLink {
    me: Identity,
    id: u64,
    addr: SocketAddr,
    sink: Arc<dyn RaftSink>,
    metrics: Arc<Metrics>,
}

/// The state of one peer's outbound connection.
struct Link {
    conn: Option<PeerStream>,
    backoff: Duration,
    retry_at: Instant,
    last_error: Option<String>,
    ever_connected: bool,
    last_write: Instant,
    buf: Vec<u8>,
}

// Lives on the stack for one loop turn; boxing would allocate per message.
#[allow(clippy::large_enum_variant)]
enum Next {
    Batch(Outbound),
    Keepalive,
    Closed,
    /// The peer closed our outbound stream (it never sends on it, so
    /// anything readable is its end): it stopped or restarted.
    Hangup,
}

impl PeerLink {
    async fn run(
        self,
        rx: flume::Receiver<Outbound>,
        up: flume::Receiver<()>,
        shutdown: flume::Receiver<()>,
    ) {
        let mut link = Link {
            conn: None,
            backoff: RECONNECT_BACKOFF_MIN,
            retry_at: Instant::now(),
            last_error: None,
            ever_connected: false,
            last_write: Instant::now(),
            buf: Vec::new(),
        };
        // One interval timer for the task's life (see read_raft_stream).
        let mut keepalive = async_io::Timer::interval(KEEPALIVE_INTERVAL);
        loop {
            let next = or_shutdown(
                &shutdown,
                future::or(
                    async {
                        match rx.recv_async().await {
                            Ok(first) => Next::Batch(first),
                            Err(_) => Next::Closed,
                        }
                    },
                    future::or(
                        async {
                            keepalive.next().await;
                            Next::Keepalive
                        },
                        async {
                            // A write to a stream whose peer died is taken
                            // by our kernel and lost: the first message to a
                            // restarted peer (a vote, an ack) would vanish.
                            // Watching for its end drops it at once instead.
                            match link.conn.as_mut() {
                                Some(conn) => {
                                    let mut byte = [0u8; 1];
                                    let _ = futures_lite::AsyncReadExt::read(conn, &mut byte).await;
                                    Next::Hangup
                                }
                                None => future::pending().await,
                            }
                        },
                    ),
                ),
            )
            .await;
            // Everything below, dialing and writing included, also ends the
            // moment shutdown closes: a paused peer never holds up SIGTERM.
            let done = match next {
                None | Some(Next::Closed) => break,
                Some(Next::Hangup) => {
                    debug!(
                        "peer {} ({}) closed the raft connection; reconnecting on the next message",
                        self.id, self.addr
                    );
                    link.conn = None;
                    link.retry_at = Instant::now();
                    Some(())
                }
                Some(Next::Keepalive) => or_shutdown(&shutdown, self.keepalive(&mut link)).await,
                Some(Next::Batch(first)) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH_MESSAGES {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    or_shutdown(&shutdown, self.send_batch(&mut link, &up, batch)).await
                }
            };
            if done.is_none() {
                break;
            }
        }
        debug!("outbound task for peer {} stopped", self.id);
    }

    /// The connection failed: drop it and reconnect at once.
    fn lost(&self, link: &mut Link, e: &impl std::fmt::Display) {
        info!(
            "lost raft connection to peer {} ({}): {e}",
            self.id, self.addr
        );
        link.last_error = Some(e.to_string());
        link.conn = None;
        link.retry_at = Instant::now();
    }

    async fn keepalive(&self, link: &mut Link) {
        let Some(stream) = link.conn.as_mut() else {
            return;
        };
        if link.last_write.elapsed() < KEEPALIVE_INTERVAL {
            return;
        }
        if let Err(e) = write_bounded(stream, &Frame::Keepalive.encode()).await {
            self.lost(link, &e);
        }
        link.last_write = Instant::now();
    }

    async fn send_batch(&self, link: &mut Link, up: &flume::Receiver<()>, batch: Vec<Outbound>) {
        if link.conn.is_none() {
            if up.try_recv().is_ok() {
                link.retry_at = Instant::now();
                link.backoff = RECONNECT_BACKOFF_MIN;
            }
            // While backing off, fail fast instead of sleeping: the replica
            // learns the peer is unreachable and keeps running.
            if Instant::now() < link.retry_at {
                self.fail(&batch);
                return;
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
                Ok((stream, _)) => {
                    if link.last_error.take().is_some() && link.ever_connected {
                        info!(
                            "raft connection to peer {} ({}) restored",
                            self.id, self.addr
                        );
                    } else {
                        debug!("raft connection to peer {} ({}) open", self.id, self.addr);
                    }
                    link.backoff = RECONNECT_BACKOFF_MIN;
                    link.ever_connected = true;
                    link.conn = Some(stream);
                }
                Err(DialError { reason, .. }) => {
                    if link.last_error.as_deref() != Some(reason.as_str()) {
                        // A refusal (wrong certificate, plaintext against TLS)
                        // is a misconfiguration an operator must see.
                        if reason.starts_with("refused") || reason.starts_with("TLS") {
                            warn!("cannot reach peer {} ({}): {reason}", self.id, self.addr);
                        } else {
                            debug!("cannot reach peer {} ({}): {reason}", self.id, self.addr);
                        }
                        link.last_error = Some(reason);
                    }
                    link.retry_at = Instant::now() + link.backoff;
                    link.backoff = (link.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    self.fail(&batch);
                    return;
                }
            }
        }

        let Some(stream) = link.conn.as_mut() else {
            return;
        };
        link.last_write = Instant::now();
        // Small messages are coalesced into one write; a snapshot goes out
        // frame by frame, never copied whole.
        let buf = &mut link.buf;
        let written = async {
            buf.clear();
            for out in &batch {
                for frame in wire::message_frames(&out.group, &out.message) {
                    buf.extend_from_slice(&frame);
                    if buf.len() >= wire::SNAPSHOT_CHUNK_BYTES {
                        write_bounded(stream, buf).await?;
                        buf.clear();
                    }
                }
            }
            write_bounded(stream, buf).await
        };
        match written.await {
            Ok(()) => {
                self.metrics.sent(self.id, batch.len());
                for out in &batch {
                    if out.message.get_msg_type() == MessageType::MsgSnapshot {
                        self.sink.snapshot_sent(&out.group, self.id, true);
                    }
                }
            }
            Err(e) => {
                // Routine when a peer stops; the health monitor reports
                // it down if it stays away.
                self.lost(link, &e);
                self.fail(&batch);
            }
        }
    }

    /// Reports a batch that could not be sent to the groups that sent it.
    fn fail(&self, batch: &[Outbound]) {
        self.metrics.dropped(self.id, batch.len());
        for out in batch {
            if out.message.get_msg_type() == MessageType::MsgSnapshot {
                self.sink.snapshot_sent(&out.group, self.id, false);
            }
        }
        let mut groups: Vec<&GroupId> = batch.iter().map(|o| &o.group).collect();
        groups.sort();
        groups.dedup();
        for group in groups {
            self.sink.unreachable(group, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        let peer = PeerEntry {
            addr: "127.0.0.1:1".parse().unwrap(),
            joined: false,
        };
        Identity {
            node_id: 1,
            cluster: "c".into(),
            directory: Arc::new(RwLock::new(Directory {
                peers: [(2, peer)].into(),
                has_state: true,
                ..Default::default()
            })),
            tls: None,
        }
    }

    fn hello(cluster: &str, from: u64, to: u64) -> Frame {
        Frame::Hello {
            purpose: Purpose::Probe,
            from,
            to,
            cluster: cluster.into(),
            cluster_id: String::new(),
            has_state: true,
        }
    }

    #[test]
    fn a_port_refuses_only_when_no_process_listens_there() {
        crate::runtime::block_on(async {
            let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let open = held.local_addr().unwrap();
            let closed = {
                let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                gone.local_addr().unwrap()
            };
            let limit = Duration::from_secs(5);
            assert!(refuses(closed, limit).await, "nothing listens on {closed}");
            // The kernel completes the handshake for a listener that has not
            // accepted yet; the connection stays open: alive.
            assert!(!refuses(open, limit).await, "{open} listens");
            drop(held);
        });
    }

    #[test]
    fn a_reset_connection_is_not_an_answer() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert!(is_reset(&io::Error::from(kind)));
        }
        for kind in [io::ErrorKind::ConnectionRefused, io::ErrorKind::TimedOut] {
            assert!(!is_reset(&io::Error::from(kind)));
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
        let err = check_hello(&me(), &hello("other", 2, 1)).unwrap_err().1;
        assert!(err.contains("cluster \"other\""), "{err}");
        let err = check_hello(&me(), &hello("c", 2, 3)).unwrap_err().1;
        assert!(err.contains("expected node 3"), "{err}");
        let (code, err) = check_hello(&me(), &hello("c", 9, 1)).unwrap_err();
        assert!(err.contains("not a member"), "{err}");
        assert_eq!(code, RejectCode::NotMember);
        // A name that would forge a log line is quoted.
        let err = check_hello(&me(), &hello("x\nWARN forged", 2, 1))
            .unwrap_err()
            .1;
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn refusal_table_is_fixed_and_counts_what_it_does_not_log() {
        let log = RefusalLog::new();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..1000 {
            log.refuse(Refusal::Identity, remote, &format!("reason {i}"));
        }
        // The first was logged; the other 999 were counted, in one slot.
        assert_eq!(
            log.suppressed[Refusal::Identity as usize].load(Ordering::Relaxed),
            999
        );
        assert_eq!(
            log.suppressed[Refusal::Busy as usize].load(Ordering::Relaxed),
            0
        );
    }
}
