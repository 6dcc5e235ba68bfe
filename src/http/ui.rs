//! `/ui/`: the dashboard, one static page that every node serves.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ui` | 301 to `/ui/` |
//! | `GET /ui/` | the page ([`PAGE`]): HTML, CSS and script in one file, no build step |
//! | `GET /ui/nodes` | every member as this node sees it, with each one's own status |
//!
//! The page reads only from the node that served it: `/ui/nodes` for the
//! members, Consul's `/v1/kv` (blocking queries) for the key browser. It
//! passes the same checks as every other route: with `[tls]` it needs a
//! client certificate of the cluster's CA, like `/v1/kv` (a browser
//! presents one imported into it).
//!
//! `/ui/nodes` asks each member's `/admin/cluster/status` in parallel, each
//! within [`MEMBER_STATUS_TIMEOUT`], so one frozen node costs the page one
//! empty row, never a hung request.

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{cluster, method_not_allowed, reply, AdminState};
use crate::membership::Role;

/// The dashboard: one page, embedded in the binary.
pub const PAGE: &str = include_str!("ui.html");

/// The most the page may weigh, so that it stays one small file.
pub const MAX_PAGE_BYTES: usize = 64 * 1024;

const _: () = assert!(PAGE.len() <= MAX_PAGE_BYTES);

/// How long `/ui/nodes` waits for each member's status.
pub const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

type Resp = Response<Full<Bytes>>;

/// Serves `/ui[...]`; `rest` is the path after `/ui`.
pub async fn handle(state: &AdminState, req: &Request<Incoming>, rest: &str) -> Resp {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed(&format!("/ui{rest}"), method, "GET, HEAD", true);
    }
    match rest {
        "" => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            resp.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/ui/"));
            resp
        }
        "/" | "/index.html" => page(),
        "/nodes" => {
            let token = crate::http::acl::token_of(req);
            let mut resp = reply(StatusCode::OK, nodes(state, token).await);
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route /ui{rest}; the dashboard is at /ui/")}),
        ),
    }
}

fn page() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page loads nothing from elsewhere and may not be framed.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// One member to show: from the membership records, or from the cluster
/// file before the cluster formed.
struct Row {
    id: u64,
    addr: String,
    admin: std::net::SocketAddr,
    voter: bool,
}

/// The body of `/ui/nodes`.
async fn nodes(state: &AdminState, token: Option<String>) -> Value {
    let rows: Vec<Row> = match crate::membership::Membership::applied(&state.kv).await {
        Ok(m) if !m.members.is_empty() => m
            .members
            .values()
            .map(|(r, _)| Row {
                id: r.id,
                addr: r.addr.to_string(),
                admin: r.admin,
                voter: r.role == Role::Voter,
            })
            .collect(),
        _ => state
            .config
            .nodes
            .iter()
            .map(|n| Row {
                id: n.id,
                addr: n.addr.to_string(),
                admin: n.admin,
                voter: true,
            })
            .collect(),
    };
    let now = Instant::now();
    let peers = state.health.peers().await;
    // Every other member's status, asked at once, with the request's token.
    let client = state.peer_client().with_token(token);
    let asks: Vec<_> = rows
        .iter()
        .filter(|r| r.id != state.node_id)
        .map(|r| {
            let (client, id, admin) = (client.clone(), r.id, r.admin);
            let task = crate::runtime::spawn(async move {
                let ask = client.exchange(id, admin, Method::GET, "/admin/cluster/status", vec![]);
                let answer = futures_lite::future::or(async { Some(ask.await) }, async {
                    async_io::Timer::after(MEMBER_STATUS_TIMEOUT).await;
                    None
                })
                .await;
                match answer {
                    None => Err(format!(
                        "no answer within {}",
                        humantime::format_duration(MEMBER_STATUS_TIMEOUT)
                    )),
                    Some(Err(e)) => Err(e),
                    Some(Ok(r)) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
                        .map_err(|e| format!("its status is not JSON: {e}")),
                    Some(Ok(r)) => Err(format!("{}: {}", r.status, r.error_text())),
                }
            });
            (id, task)
        })
        .collect();
    let own = cluster::status_json(state).await;
    let mut statuses = std::collections::BTreeMap::new();
    statuses.insert(state.node_id, Ok(own.clone()));
    for (id, task) in asks {
        statuses.insert(id, task.await);
    }
    // The leader's commit index is what every member's applied index lags.
    let leader = own["leader_id"].as_u64();
    let commit = leader
        .and_then(|l| statuses.get(&l))
        .and_then(|s| s.as_ref().ok())
        .and_then(|s| s["commit_index"].as_u64())
        .or_else(|| {
            statuses
                .values()
                .filter_map(|s| s.as_ref().ok()?["commit_index"].as_u64())
                .max()
        });
    let members: Vec<Value> = rows
        .iter()
        .map(|r| {
            let peer = peers.iter().find(|p| p.node_id == r.id);
            let me = r.id == state.node_id;
            let (status, error) = match statuses.remove(&r.id) {
                Some(Ok(s)) => (s, Value::Null),
                Some(Err(e)) => (Value::Null, Value::from(e)),
                None => (Value::Null, Value::Null),
            };
            let applied = status["applied_index"].as_u64();
            json!({
                "id": r.id,
                "addr": r.addr,
                "admin": r.admin.to_string(),
                "voter": r.voter,
                "alive": me || peer.is_some_and(|p| p.alive),
                "last_contact_ms": if me { Some(0) } else {
                    peer.and_then(|p| p.last_heartbeat).map(|t| now.duration_since(t).as_millis() as u64)
                },
                "role": status["role"],
                "term": status["term"],
                "leader_id": status["leader_id"],
                "ready": status["bootstrap_complete"].as_bool().unwrap_or(false)
                    && status["leader_id"].is_u64(),
                "commit_index": status["commit_index"],
                "applied_index": status["applied_index"],
                "lag": match (commit, applied) {
                    (Some(c), Some(a)) => Some(c.saturating_sub(a)),
                    _ => None,
                },
                "error": error,
            })
        })
        .collect();
    json!({
        "node_id": state.node_id,
        "cluster": state.config.name,
        "leader_id": leader,
        "term": own["term"],
        "commit_index": commit,
        "members": members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_one_small_self_contained_file() {
        assert!(PAGE.len() <= MAX_PAGE_BYTES, "{} bytes", PAGE.len());
        assert!(PAGE.starts_with("<!doctype html>"));
        // Nothing is fetched from elsewhere at run time.
        for needle in ["http://", "https://", "src=\"//", "@import"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
    }
}
