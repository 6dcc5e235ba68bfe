//! The HTTP admin API (JSON), served by hyper on async-std via smol-hyper.
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/cluster/status` | this node's view: role, term, leader, bootstrap, quorum, live peers |
//! | `GET /admin/cluster/peers` | every peer's health |
//! | `GET /admin/cluster/leader` | 200 with the leader, or 503 when none is known |
//! | `GET /health` | 200 while the process serves |
//! | `GET /ready` | 200 once bootstrapped with a known leader, else 503 |
//! | `GET /metrics` | Prometheus text |
//!
//! Unknown routes get 404 and other methods 405, each with a JSON error body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::net::{TcpListener, TcpStream};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use log::{debug, warn};
use serde_json::{json, Value};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::health::HealthHandle;
use crate::metrics::Metrics;
use crate::quorum::quorum_size;
use crate::raft::ReplicaHandle;
use crate::runtime::or_shutdown;

/// Admin connections served at once; more wait in the listen backlog.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin API reads from. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    /// The validated cluster file.
    pub config: Arc<ClusterConfig>,
    /// This node's id.
    pub node_id: u64,
    /// Peer health.
    pub health: HealthHandle,
    /// The `__meta/0` replica.
    pub meta: ReplicaHandle,
    /// Set once bootstrap completes.
    pub bootstrap_complete: Arc<AtomicBool>,
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Opens the admin listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        what: "the admin API",
        addr,
        source,
    })
}

/// Serves the API until `shutdown` closes.
pub fn spawn(
    listener: TcpListener,
    state: AdminState,
    shutdown: flume::Receiver<()>,
) -> crate::runtime::Task<()> {
    crate::runtime::spawn(async move {
        let open = Arc::new(AtomicUsize::new(0));
        loop {
            let accepted = or_shutdown(&shutdown, listener.accept()).await;
            let stream = match accepted {
                None => break,
                Some(Ok((stream, _))) => stream,
                Some(Err(e)) => {
                    warn!("admin listener accept failed: {e}");
                    async_io::Timer::after(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= MAX_ADMIN_CONNECTIONS {
                debug!("admin: too many connections, closing one");
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (state, open, shutdown) = (state.clone(), open.clone(), shutdown.clone());
            crate::runtime::spawn(async move {
                or_shutdown(&shutdown, serve(stream, state)).await;
                open.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
        }
        debug!("admin listener closed");
    })
}

async fn serve(stream: TcpStream, state: AdminState) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&state, &req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder
        .serve_connection(FuturesIo::new(stream), service)
        .await
    {
        debug!("admin connection ended: {e}");
    }
}

async fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/admin/cluster/status"
            | "/admin/cluster/peers"
            | "/admin/cluster/leader"
            | "/health"
            | "/ready"
            | "/metrics"
    );
    if !known {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route {path}")}),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("method {} not allowed on {path}; use GET", req.method())}),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/health" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/admin/cluster/status" => reply(StatusCode::OK, status_json(state).await),
        "/admin/cluster/peers" => reply(StatusCode::OK, peers_json(state).await),
        "/admin/cluster/leader" => {
            let status = state.meta.status().await;
            match status
                .as_ref()
                .and_then(|s| s.leader_id.map(|l| (l, s.term)))
            {
                Some((leader, term)) => {
                    let addr = state.config.node(leader).map(|n| n.addr.to_string());
                    reply(
                        StatusCode::OK,
                        json!({"leader_id": leader, "term": term, "addr": addr}),
                    )
                }
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "no leader is known"}),
                ),
            }
        }
        _ => {
            // "/ready"
            let bootstrapped = state.bootstrap_complete.load(Ordering::Relaxed);
            let leader = state.meta.status().await.and_then(|s| s.leader_id);
            match (bootstrapped, leader) {
                (true, Some(leader)) => {
                    reply(StatusCode::OK, json!({"ready": true, "leader_id": leader}))
                }
                (false, _) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "error": "bootstrap is not complete"}),
                ),
                (true, None) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "error": "no leader is known"}),
                ),
            }
        }
    }
}

/// The body of `/admin/cluster/status`.
pub async fn status_json(state: &AdminState) -> Value {
    let status = state.meta.status().await;
    let live = state.health.live_peers().await;
    let n = state.config.cluster_size();
    json!({
        "node_id": state.node_id,
        "cluster": state.config.name,
        "role": status.as_ref().map(|s| s.role_name()),
        "term": status.as_ref().map(|s| s.term),
        "leader_id": status.as_ref().and_then(|s| s.leader_id),
        "bootstrap_complete": state.bootstrap_complete.load(Ordering::Relaxed),
        "cluster_size": n,
        "quorum_size": quorum_size(n),
        "live_peers": live,
        "commit_index": status.as_ref().map(|s| s.commit_index),
        "applied_index": status.as_ref().map(|s| s.applied_index),
    })
}

async fn peers_json(state: &AdminState) -> Value {
    let now = Instant::now();
    let peers: Vec<Value> = state
        .health
        .peers()
        .await
        .into_iter()
        .map(|p| {
            json!({
                "node_id": p.node_id,
                "addr": p.addr.to_string(),
                "alive": p.alive,
                "last_heartbeat_ms_ago": p.last_heartbeat.map(|t| now.duration_since(t).as_millis() as u64),
            })
        })
        .collect();
    Value::Array(peers)
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
