//! The HTTP API on every node's `admin` address: hyper 1 on async-std's
//! sockets, through smol-hyper.
//!
//! | routes | module |
//! |---|---|
//! | `/admin/cluster/*`, `/health`, `/ready`, `/metrics` | [`cluster`] |
//! | `/v1/kv/<key>` | [`kv`]: Consul's KV API |
//! | `/v1/txn` | [`txn`]: Consul's transaction API, KV verbs only |
//! | `/v1/session/*`, `/v1/status/*` | [`session`]: Consul's sessions and status |
//! | `/admin/cluster/members` | [`members`]: the membership, changed at runtime |
//! | `/v1/snapshot` | [`snapshot`]: backup and restore |
//! | `/ui/` | [`ui`]: the dashboard, one embedded page |
//! | `/v1/acl/*` | [`acl`]: Consul's ACL API, tokens and policies |
//!
//! **ACLs.** With `[acl] enabled`, a request's token (see [`acl`]) decides
//! its rights: KV and txn by key, the members API by `operator = "write"`,
//! the status routes by `operator = "read"`, `/metrics` too if
//! `metrics_need_token`. `/health`, `/ready` and the dashboard's page stay
//! open. With `[tls]`, the client certificate is checked first: it admits
//! the connection, the token then decides.
//!
//! Unknown routes get 404 and other methods 405. The cluster routes answer
//! errors as JSON `{"error": ...}`; the Consul routes answer a short sentence
//! as text, as Consul does.
//!
//! **HTTPS.** With `[tls]` in the cluster file the API speaks HTTPS only
//! ([`Https`]): the node's own certificate, and a client certificate asked
//! for but not required. A client certificate that is sent must be signed by
//! the cluster's CA, or the handshake fails. `/health`, `/ready` and
//! `/metrics` answer any client, so probes and Prometheus need no
//! certificate; every other route answers 401 with a JSON `error` to a
//! client that sent none. Without `[tls]` the API is plain HTTP, open to
//! anyone who can reach it.
//!
//! **Bounds.** At most `[limits] max_conns` connections at once, and
//! `max_conns_per_client` from one address; a connection over either is
//! served one request, and only [`OPEN_ROUTES`] (429 otherwise), from
//! [`PRIORITY_CONNECTIONS`] kept for them. A TLS handshake
//! must finish within [`TLS_HANDSHAKE_TIMEOUT`], request headers arrive
//! within [`HEADER_READ_TIMEOUT`], a body within [`BODY_READ_TIMEOUT`], and
//! a write that makes no progress for [`WRITE_STALL_TIMEOUT`] closes the
//! connection.

pub mod acl;
pub mod cluster;
pub mod kv;
pub mod members;
pub mod session;
pub mod snapshot;
pub mod txn;
pub mod ui;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::net::{TcpListener, TcpStream};
use futures_rustls::TlsAcceptor;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use log::{debug, warn};
use serde_json::{json, Value};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::client::AdminClient;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::health::HealthHandle;
use crate::kv::{KvError, KvService};
use crate::metrics::Metrics;
use crate::raft::ReplicaHandle;
use crate::runtime::or_shutdown;

/// A client must send its request headers within this time (hyper also
/// applies it to an idle keep-alive connection waiting for its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send its request body within this time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that makes no progress for this long (a client that does not read
/// its answer) closes the connection.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// With `[tls]`, a client must complete its TLS handshake within this time,
/// so a stalled client cannot hold a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The routes that answer a client without a certificate on an HTTPS API:
/// liveness, readiness and Prometheus.
pub const OPEN_ROUTES: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The admin API's HTTPS, with `[tls]` in the cluster file. Cheap to clone.
#[derive(Clone)]
pub struct Https {
    /// The node's certificate; client certificates asked for, not required
    /// ([`crate::tls::admin_server_config`]).
    acceptor: TlsAcceptor,
    /// This node's client towards other nodes' admin APIs, presenting its
    /// own certificate.
    client: AdminClient,
}

impl Https {
    /// Loads node `node_id`'s certificate, its key and the CA; `Ok(None)`
    /// without `[tls]`. Blocking file reads: call it off the executor.
    pub fn load(config: &ClusterConfig, node_id: u64) -> Result<Option<Https>> {
        let Some(server) = crate::tls::admin_server_config(config, node_id)? else {
            return Ok(None);
        };
        Ok(Some(Https {
            acceptor: TlsAcceptor::from(server),
            client: AdminClient::for_node(config, node_id)?,
        }))
    }
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https").finish_non_exhaustive()
    }
}

/// What a connection's client may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Plain HTTP (no `[tls]`), or HTTPS with a client certificate of the
    /// CA: every route.
    Full,
    /// HTTPS without a client certificate: only [`OPEN_ROUTES`].
    Anonymous,
}

/// What the HTTP API reads from. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    /// The validated cluster file.
    pub config: Arc<ClusterConfig>,
    /// This node's id.
    pub node_id: u64,
    /// This node's state directory (`<data_dir>/node-N`, or `--data-dir`).
    pub data_dir: std::path::PathBuf,
    /// Tokens resolved here, until the next ACL write applies.
    pub acl_cache: acl::AclCache,
    /// Peer health.
    pub health: HealthHandle,
    /// The `__meta/0` replica.
    pub meta: ReplicaHandle,
    /// The key-value store on `__meta/0`.
    pub kv: KvService,
    /// Set once bootstrap completes.
    pub bootstrap_complete: Arc<AtomicBool>,
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// HTTPS, with `[tls]`; plain HTTP when `None`.
    pub https: Option<Https>,
}

impl AdminState {
    /// How this node reaches another node's admin API (to forward a
    /// membership change to the leader): HTTPS with its own certificate
    /// when the cluster has `[tls]`.
    pub fn peer_client(&self) -> AdminClient {
        self.https
            .as_ref()
            .map_or_else(AdminClient::plain, |h| h.client.clone())
    }
}

/// Opens the admin listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        what: "the admin API",
        addr,
        source,
    })
}

/// What answers requests: the whole API, or, while a node without state asks
/// the cluster whether to bootstrap or join, the few routes that make sense
/// then.
#[derive(Clone)]
pub enum Api {
    /// The node runs: every route.
    Serving(AdminState),
    /// The node has no state yet.
    Starting(StartingState),
}

impl Api {
    /// The `[limits]` table.
    fn limits(&self) -> &crate::config::Limits {
        match self {
            Api::Serving(s) => &s.config.limits,
            Api::Starting(s) => &s.config.limits,
        }
    }

    /// HTTPS, with `[tls]`; plain HTTP when `None`.
    fn https(&self) -> Option<&Https> {
        match self {
            Api::Serving(s) => s.https.as_ref(),
            Api::Starting(s) => s.https.as_ref(),
        }
    }
}

/// What the API answers from while the node has no state yet.
#[derive(Clone)]
pub struct StartingState {
    /// The validated cluster file.
    pub config: Arc<ClusterConfig>,
    /// This node's id.
    pub node_id: u64,
    /// Peer health.
    pub health: HealthHandle,
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// HTTPS, with `[tls]`; plain HTTP when `None`.
    pub https: Option<Https>,
}

/// Connections kept, beyond `[limits] max_conns`, for `/health`, `/ready`
/// and `/metrics` only: a connection over a limit is served one request
/// with a short timeout, so probes answer while the API is full.
pub const PRIORITY_CONNECTIONS: usize = 32;
/// How long a connection over a limit has to send its one request.
pub const PRIORITY_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Admin connections open, in all and per client address.
#[derive(Default)]
struct Slots {
    open: usize,
    per_client: std::collections::HashMap<std::net::IpAddr, usize>,
    priority: usize,
}

/// How a connection was admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Admission {
    /// Within every limit: any route.
    Full,
    /// Over a limit (the sentence says which): one request, and only
    /// [`OPEN_ROUTES`] are served.
    OpenRoutesOnly(String),
}

/// Gives a connection's slots back when it ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    ip: std::net::IpAddr,
    full: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if self.full {
            slots.open -= 1;
            if let Some(n) = slots.per_client.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    slots.per_client.remove(&self.ip);
                }
            }
        } else {
            slots.priority -= 1;
        }
    }
}

/// Admits a connection from `ip`, or `None` to close it at once.
fn admit(
    slots: &Arc<Mutex<Slots>>,
    ip: std::net::IpAddr,
    limits: &crate::config::Limits,
) -> Option<(Admission, SlotGuard)> {
    let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
    let mine = s.per_client.get(&ip).copied().unwrap_or(0);
    let over = if s.open >= limits.max_conns {
        Some(format!(
            "the node serves at most {} connections at once (max_conns)",
            limits.max_conns
        ))
    } else if mine >= limits.max_conns_per_client {
        Some(format!(
            "too many connections from {ip}: at most {} per client address \
             (max_conns_per_client)",
            limits.max_conns_per_client
        ))
    } else {
        None
    };
    let guard = |full| SlotGuard {
        slots: slots.clone(),
        ip,
        full,
    };
    match over {
        None => {
            s.open += 1;
            *s.per_client.entry(ip).or_insert(0) += 1;
            Some((Admission::Full, guard(true)))
        }
        Some(_) if s.priority >= PRIORITY_CONNECTIONS => None,
        Some(why) => {
            s.priority += 1;
            Some((Admission::OpenRoutesOnly(why), guard(false)))
        }
    }
}

/// Serves the API until `shutdown` closes (every connection ends with it).
pub fn spawn(
    listener: Arc<TcpListener>,
    api: Api,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    crate::runtime::spawn(async move {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let limits = api.limits().clone();
        loop {
            let accepted = or_shutdown(&shutdown, listener.accept()).await;
            let (stream, peer) = match accepted {
                None => break,
                Some(Ok(accepted)) => accepted,
                Some(Err(e)) => {
                    warn!("admin listener accept failed: {e}");
                    async_io::Timer::after(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((admission, guard)) = admit(&slots, peer.ip(), &limits) else {
                REFUSALS.log(&format!(
                    "admin API: closed a connection from {peer}: every slot is taken, the \
                     {PRIORITY_CONNECTIONS} kept for /health, /ready and /metrics included"
                ));
                continue;
            };
            let (api, shutdown) = (api.clone(), shutdown.clone());
            crate::runtime::spawn(async move {
                or_shutdown(&shutdown, connection(stream, api, admission)).await;
                drop(guard);
            })
            .detach();
        }
        debug!("admin listener closed");
    })
}

/// A connection to serve, plain or TLS: one type for both, so that hyper's
/// server is compiled once.
trait Io: futures_lite::AsyncRead + futures_lite::AsyncWrite + Send + Unpin {}
impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Send + Unpin> Io for T {}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn connection(stream: TcpStream, api: Api, admission: Admission) {
    let _ = stream.set_nodelay(true);
    let Some(https) = api.https().cloned() else {
        return serve(
            Box::new(TimedWrites::new(stream)),
            api,
            Access::Full,
            admission,
        )
        .await;
    };
    // `Err(None)`: the client left before sending anything (a port probe),
    // which is not worth a line at warn.
    let handshake = async {
        // A plain HTTP request to the HTTPS port gets one plain answer that
        // says so, rather than a TLS error the client cannot show.
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                refuse_plain_http(&stream).await;
                return Err(Some("a plain HTTP request to the HTTPS port".to_string()));
            }
            Ok(_) => {}
        }
        https
            .acceptor
            .accept(TimedWrites::new(stream.clone()))
            .await
            .map_err(|e| Some(format!("TLS handshake failed: {e}")))
    };
    let timed_out = async {
        async_io::Timer::after(TLS_HANDSHAKE_TIMEOUT).await;
        Err(Some(format!(
            "no TLS handshake within {}",
            humantime::format_duration(TLS_HANDSHAKE_TIMEOUT)
        )))
    };
    match futures_lite::future::or(handshake, timed_out).await {
        Ok(tls) => {
            let access = if crate::tls::has_client_cert(tls.get_ref().1) {
                Access::Full
            } else {
                Access::Anonymous
            };
            serve(Box::new(tls), api, access, admission).await
        }
        Err(None) => debug!("admin API: a client left before its TLS handshake"),
        Err(Some(e)) => {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            REFUSALS.log(&format!("admin API: refused a connection from {peer}: {e}"));
        }
    }
}

/// How often a refused admin connection is logged at warn; the others in
/// between are counted, and logged at debug.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Refused HTTPS connections (failed or stalled handshakes, plain HTTP on
/// the HTTPS port), logged at most once per [`REFUSAL_LOG_INTERVAL`], so a
/// client that retries cannot flood the log.
static REFUSALS: RefusalLog = RefusalLog {
    last: Mutex::new(None),
    suppressed: AtomicU64::new(0),
};

struct RefusalLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RefusalLog {
    fn log(&self, line: &str) {
        let now = Instant::now();
        let due = {
            // Held for a look and a store, never across an await.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            match self.suppressed.swap(0, Ordering::Relaxed) {
                0 => warn!("{line}"),
                n => warn!("{line} ({n} more refusals not logged)"),
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            debug!("{line}");
        }
    }
}

/// Answers a plain HTTP request on the HTTPS port with 400 and closes. The
/// request is read (up to 16 KiB, within the handshake timeout) after the
/// answer is sent: closing on unread data would reset the connection, and
/// the client would lose the answer.
async fn refuse_plain_http(stream: &TcpStream) {
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = json!({
        "error": "this admin API speaks HTTPS only (the cluster file has [tls]): use https:// with the cluster's CA"
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut writer = TimedWrites::new(stream.clone());
    if writer.write_all(answer.as_bytes()).await.is_err()
        || stream.shutdown(std::net::Shutdown::Write).is_err()
    {
        return;
    }
    let (mut reader, mut sink, mut read) = (stream.clone(), [0u8; 1024], 0);
    while read < 16 * 1024 {
        match reader.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
}

async fn serve(stream: Box<dyn Io>, api: Api, access: Access, admission: Admission) {
    // A connection over a limit gets one request, soon; one without a
    // client certificate on HTTPS may idle only briefly.
    let header_timeout = match (&admission, access) {
        (Admission::OpenRoutesOnly(_), _) => PRIORITY_HEADER_TIMEOUT,
        (Admission::Full, Access::Anonymous) => api.limits().anonymous_idle_timeout,
        (Admission::Full, Access::Full) => HEADER_READ_TIMEOUT,
    };
    let keep_alive = admission == Admission::Full;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (api, admission) = (api.clone(), admission.clone());
        async move {
            let path = req.uri().path();
            let resp = if let (Admission::OpenRoutesOnly(why), false) =
                (&admission, OPEN_ROUTES.contains(&path))
            {
                over_limit(why)
            } else if access == Access::Anonymous && !OPEN_ROUTES.contains(&path) {
                unauthorized(path)
            } else {
                match &api {
                    Api::Serving(state) => route(state, req).await,
                    Api::Starting(state) => starting(state, &req).await,
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .keep_alive(keep_alive)
        .header_read_timeout(header_timeout);
    if let Err(e) = builder
        .serve_connection(FuturesIo::new(stream), service)
        .await
    {
        debug!("admin connection ended: {e}");
    }
}

/// 429: the connection is over a limit, and the route is not one of
/// [`OPEN_ROUTES`].
fn over_limit(why: &str) -> Response<Full<Bytes>> {
    let mut resp = reply(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "error": format!(
                "{why}; only {} answer until a connection closes",
                OPEN_ROUTES.join(", ")
            )
        }),
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/v1/acl/") {
        let rest = rest.to_string();
        return acl::handle(state, req, &rest).await;
    }
    if state.config.acl.enabled {
        if let Err(resp) = operator_check(state, &req, &path).await {
            return resp;
        }
    }
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        let key = key.to_string();
        return kv::handle(state, req, &key).await;
    }
    if path == "/v1/kv" {
        return kv::handle(state, req, "").await;
    }
    if path == "/v1/txn" {
        return txn::handle(state, req).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        let rest = rest.to_string();
        return session::handle(state, req, &rest).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/status/") {
        return session::status(state, &req, rest).await;
    }
    if path == "/v1/snapshot" {
        return snapshot::handle(state, req).await;
    }
    if let Some(rest) = path.strip_prefix("/ui") {
        if rest.is_empty() || rest.starts_with('/') {
            return ui::handle(state, &req, rest).await;
        }
    }
    if let Some(rest) = path.strip_prefix("/admin/cluster/members") {
        if rest.is_empty() || rest.starts_with('/') {
            let rest = rest.to_string();
            return members::handle(state, req, &rest).await;
        }
    }
    cluster::handle(state, &req, &path).await
}

/// With ACLs on: the members API needs `operator = "write"`, the status
/// routes and the dashboard's `/ui/nodes` `operator = "read"`, and
/// `/metrics` too when the file says so.
async fn operator_check(
    state: &AdminState,
    req: &Request<Incoming>,
    path: &str,
) -> std::result::Result<(), Response<Full<Bytes>>> {
    let want = if path.starts_with("/admin/cluster/members") {
        crate::acl::Access::Write
    } else if path.starts_with("/admin/cluster/")
        || path == "/ui/nodes"
        || (path == "/metrics" && state.config.acl.metrics_need_token)
    {
        crate::acl::Access::Read
    } else {
        return Ok(());
    };
    acl::require_operator(state, req, want).await
}

/// The routes of a node without state: `/health`, `/ready` (503),
/// `/metrics`, and the status; anything else is 503.
async fn starting(state: &StartingState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const WHY: &str = "the node has no state yet: it is asking the cluster whether to bootstrap a \
                       new cluster or join the formed one";
    match req.uri().path() {
        "/health" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/metrics" => cluster::metrics(&state.metrics),
        "/admin/cluster/status" => {
            let n = state.config.cluster_size();
            reply(
                StatusCode::OK,
                json!({
                    "node_id": state.node_id,
                    "pid": std::process::id(),
                    "cluster": state.config.name,
                    "role": null,
                    "term": null,
                    "vote": null,
                    "leader_id": null,
                    "bootstrap_complete": false,
                    "cluster_size": n,
                    "quorum_size": crate::quorum::quorum_size(n),
                    "voters": state.config.ids(),
                    "live_peers": state.health.live_peers().await,
                    "commit_index": null,
                    "applied_index": null,
                    "applied_hash": null,
                    "snapshot_index": null,
                }),
            )
        }
        "/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "error": WHY}),
        ),
        _ => reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": WHY })),
    }
}

/// 401: a route that needs a client certificate, asked without one.
fn unauthorized(path: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({
            "error": format!(
                "{path} needs a client certificate signed by the cluster's CA, and none was presented (only {} answer without one; the CLI presents [tls] client_cert)",
                OPEN_ROUTES.join(", ")
            )
        }),
    )
}

/// A JSON answer.
pub fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A short sentence, as Consul answers its errors.
pub fn text(status: StatusCode, sentence: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = sentence.into();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// 405 with the methods the route takes, in the style of the route.
pub fn method_not_allowed(
    path: &str,
    method: &Method,
    allow: &'static str,
    json_body: bool,
) -> Response<Full<Bytes>> {
    let sentence = format!("method {method} not allowed on {path}; use {allow}");
    let mut resp = if json_body {
        reply(StatusCode::METHOD_NOT_ALLOWED, json!({ "error": sentence }))
    } else {
        text(StatusCode::METHOD_NOT_ALLOWED, sentence)
    };
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The answer to a request the cluster could not serve.
pub fn kv_error(e: &KvError, write: bool, timeout: Duration) -> Response<Full<Bytes>> {
    let t = humantime::format_duration(timeout);
    let sentence = match (e, write) {
        (KvError::NoLeader, true) => {
            format!("No cluster leader within {t}: the write was not applied")
        }
        (KvError::NoLeader, false) => format!("No cluster leader within {t}"),
        (KvError::TimedOut, true) => format!(
            "timed out after {t} waiting for the write to commit: it may or may not have been applied"
        ),
        (KvError::TimedOut, false) => format!("timed out after {t} waiting for the read index"),
        (KvError::Stopped, _) => "the node is shutting down".to_string(),
        (KvError::LeaderLost, _) => "the leader this write went to lost its leadership before \
            the write's outcome was known: it may or may not have been applied"
            .to_string(),
        (KvError::Abandoned, _) => "the node stopped (it is shutting down, or was removed) before \
            the write's outcome was known: it may or may not have been applied"
            .to_string(),
        (KvError::Storage(reason), _) => format!("storage failure: {reason}"),
        (KvError::DiskFull(why), _) => why.clone(),
    };
    let status = match e {
        KvError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        KvError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, sentence)
}

/// A refused request: its status and the sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// One sentence, sent as the body.
    pub sentence: String,
}

impl ApiError {
    /// Any status.
    pub fn new(status: StatusCode, sentence: impl Into<String>) -> Self {
        ApiError {
            status,
            sentence: sentence.into(),
        }
    }

    /// 400.
    pub fn bad(sentence: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, sentence)
    }

    /// The answer, as text.
    pub fn response(self) -> Response<Full<Bytes>> {
        text(self.status, self.sentence)
    }
}

/// A request body, holding its share of the buffer budget until dropped.
pub struct Body {
    bytes: Bytes,
    _share: crate::budget::Reservation,
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a request body of at most `limit` bytes; larger is a 413. Its size
/// (the announced length, or `limit` when none is announced) is reserved
/// from `budget` first: a body waits up to [`BODY_READ_TIMEOUT`] for room,
/// then gets a 503.
pub async fn read_body(
    req: Request<Incoming>,
    limit: u64,
    what: &str,
    budget: &crate::budget::Budget,
) -> std::result::Result<Body, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} exceeds the {limit}-byte limit"),
        )
    };
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let Some(share) = budget
        .reserve(announced.unwrap_or(limit), BODY_READ_TIMEOUT)
        .await
    else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the node is busy: other requests hold its buffer budget (max_buffered_bytes = \
                 {}); retry later",
                budget.capacity()
            ),
        ));
    };
    let mut collect = std::pin::pin!(Limited::new(req.into_body(), limit as usize).collect());
    // Most bodies came with the headers: only a body still on its way
    // needs a timer.
    let collected = match futures_lite::future::poll_once(&mut collect).await {
        Some(done) => Some(done),
        None => {
            futures_lite::future::or(async { Some(collect.await) }, async {
                async_io::Timer::after(BODY_READ_TIMEOUT).await;
                None
            })
            .await
        }
    };
    let Some(collected) = collected else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(BODY_READ_TIMEOUT)
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(Body {
            bytes: collected.to_bytes(),
            _share: share,
        }),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::bad(format!("cannot read the request body: {e}"))),
    }
}

/// Query parameters in order; a flag without a value has an empty one.
pub fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    parse_query(req.uri().query().unwrap_or(""))
}

/// [`query_pairs`] of a query string.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The value of a parameter, if present (a flag: `Some("")`).
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A stream whose writes fail once one makes no progress for
/// [`WRITE_STALL_TIMEOUT`], so a client that never reads cannot hold a
/// connection (and its task) forever.
struct TimedWrites<S> {
    inner: S,
    limit: Duration,
    stalled_since: Option<async_io::Timer>,
}

impl<S> TimedWrites<S> {
    fn new(inner: S) -> Self {
        TimedWrites {
            inner,
            limit: WRITE_STALL_TIMEOUT,
            stalled_since: None,
        }
    }

    /// Called when a write is pending: arms the timer, or fails once it
    /// fired.
    fn stalled(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| async_io::Timer::after(self.limit));
        match std::pin::Pin::new(timer).poll(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for TimedWrites<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for TimedWrites<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.stalled(cx),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Pending => self.stalled(cx).map(|r| r.map(|_| ())),
            done => {
                self.stalled_since = None;
                done
            }
        }
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncWriteExt;

    /// A writer whose reader never reads.
    struct Stuck;

    impl futures_lite::AsyncWrite for Stuck {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_stalled_write_fails_after_the_limit() {
        let mut w = TimedWrites {
            inner: Stuck,
            limit: Duration::from_millis(50),
            stalled_since: None,
        };
        let started = std::time::Instant::now();
        let e = futures_lite::future::block_on(w.write_all(b"hello")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
