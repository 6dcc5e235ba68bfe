//! The cluster routes of the HTTP API (JSON).
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

use std::sync::atomic::Ordering;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{method_not_allowed, reply, AdminState};
use crate::metrics::Metrics;
use crate::quorum::quorum_size;

/// Serves a cluster route (or 404 for any unknown path).
pub async fn handle(
    state: &AdminState,
    req: &Request<Incoming>,
    path: &str,
) -> Response<Full<Bytes>> {
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
        return method_not_allowed(path, req.method(), "GET, HEAD", true);
    }
    match path {
        "/health" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/metrics" => metrics(&state.metrics),
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
    // The replicated membership, as this node applied it; before the
    // replica answers (it is stopping), the cluster file's.
    let voters: Vec<u64> = status
        .as_ref()
        .map(|s| s.voters.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| state.config.ids());
    let n = voters.len();
    json!({
        "node_id": state.node_id,
        "pid": std::process::id(),
        "cluster": state.config.name,
        "role": status.as_ref().map(|s| s.role_name()),
        "term": status.as_ref().map(|s| s.term),
        "vote": status.as_ref().map(|s| s.vote),
        "leader_id": status.as_ref().and_then(|s| s.leader_id),
        "bootstrap_complete": state.bootstrap_complete.load(Ordering::Relaxed),
        "cluster_size": n,
        "quorum_size": quorum_size(n),
        "voters": voters,
        "live_peers": live,
        "commit_index": status.as_ref().map(|s| s.commit_index),
        "applied_index": status.as_ref().map(|s| s.applied_index),
        "applied_hash": status.as_ref().and_then(|s| s.applied_hash).map(|h| format!("{h:016x}")),
        "snapshot_index": status.as_ref().map(|s| s.snapshot_index),
        "disk_full": crate::diskguard::full_reason(),
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

/// `/metrics`: the registry in OpenMetrics text.
pub fn metrics(metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
