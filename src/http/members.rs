//! `/admin/cluster/members`: the membership, and changing it at runtime.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/cluster/members` | `[{"id","addr","admin","role","alive","joined","sessions"}]` |
//! | `POST /admin/cluster/members` with `{"id","addr","admin"}` | adds a learner; 200 with its record |
//! | `POST /admin/cluster/members/<id>/promote[?replace=<old>]` | a caught-up learner becomes a voter (and `old` leaves, in the same joint-consensus change); 409 while it is behind |
//! | `DELETE /admin/cluster/members/<id>` | removes a voter or learner |
//!
//! Changes are made by the leader; another node forwards the request to it.
//! One change runs at a time (409 meanwhile), and ids in use or ever used
//! are refused with 409.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{method_not_allowed, param, read_body, reply, AdminState};
use crate::kv::KvError;
use crate::membership::{self, Member, Membership, Role};
use crate::raft::replica::RequestError;
use crate::store::Outcome;

type Resp = Response<Full<Bytes>>;

/// The largest request body of a membership change.
const MAX_BODY_BYTES: u64 = 4096;

fn error(status: StatusCode, sentence: impl Into<String>) -> Resp {
    reply(status, json!({ "error": sentence.into() }))
}

/// Serves `/admin/cluster/members[/...]`; `rest` is the path after
/// `/admin/cluster/members`.
pub async fn handle(state: &AdminState, req: Request<Incoming>, rest: &str) -> Resp {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let method = req.method().clone();
    match (parts.as_slice(), &method) {
        ([], &Method::GET) => list(state).await,
        ([], &Method::POST) => on_leader(state, req, add).await,
        ([id, "promote"], &Method::POST) => match id.parse::<u64>() {
            Ok(_) => on_leader(state, req, promote).await,
            Err(_) => error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id")),
        },
        ([id], &Method::DELETE) => match id.parse::<u64>() {
            Ok(_) => on_leader(state, req, remove).await,
            Err(_) => error(StatusCode::BAD_REQUEST, format!("{id:?} is not a node id")),
        },
        ([], _) => method_not_allowed("/admin/cluster/members", &method, "GET, POST", true),
        ([_, "promote"], _) => {
            method_not_allowed("/admin/cluster/members/<id>/promote", &method, "POST", true)
        }
        ([_], _) => method_not_allowed("/admin/cluster/members/<id>", &method, "DELETE", true),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route /admin/cluster/members{rest}"),
        ),
    }
}

async fn membership(state: &AdminState) -> Result<Membership, Resp> {
    Membership::applied(&state.kv)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The members, from the records; before the cluster formed, from the file.
async fn list(state: &AdminState) -> Resp {
    let m = match membership(state).await {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let live = state.health.live_peers().await;
    let alive = |id: u64| id == state.node_id || live.contains(&id);
    let sessions = session_counts(state).await;
    let mut members: Vec<Value> = if m.members.is_empty() {
        state
            .config
            .nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "addr": n.addr.to_string(), "admin": n.admin.to_string(),
                       "role": "voter", "alive": alive(n.id), "joined": false})
            })
            .collect()
    } else {
        m.members
            .values()
            .map(|(r, _)| record_json(r, alive(r.id)))
            .collect()
    };
    for member in &mut members {
        let id = member["id"].as_u64().unwrap_or(0);
        member["sessions"] = json!(sessions.get(&id).copied().unwrap_or(0));
    }
    reply(StatusCode::OK, Value::Array(members))
}

/// How many sessions each node holds, as this node has applied them.
async fn session_counts(state: &AdminState) -> std::collections::HashMap<u64, u64> {
    let mut counts = std::collections::HashMap::new();
    if let Ok(listing) =
        crate::http::session::all_sessions(&state.kv, crate::kv::Consistency::Stale).await
    {
        for s in listing.value {
            if let Some(n) = s["Node"].as_str().and_then(crate::session::parse_node) {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn record_json(m: &Member, alive: bool) -> Value {
    json!({
        "id": m.id,
        "addr": m.addr.to_string(),
        "admin": m.admin.to_string(),
        "role": match m.role { Role::Voter => "voter", Role::Learner => "learner" },
        "alive": alive,
        "joined": m.joined,
    })
}

/// A change request, read whole before it runs or is forwarded.
pub struct ChangeRequest {
    method: Method,
    /// The ACL token it came with, passed on to the leader.
    token: Option<String>,
    /// The path and query, as asked.
    path: String,
    body: Bytes,
}

impl ChangeRequest {
    fn pairs(&self) -> Vec<(String, String)> {
        crate::http::parse_query(self.path.split_once('?').map_or("", |(_, q)| q))
    }

    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }
}

/// A change to run on the leader.
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Resp> + Send + 'a>>;

/// How often a forward looks whether the leader it waits for is still the
/// leader.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `change` here if this node leads, else forwards the request to the
/// leader and passes its answer back. A forward has a deadline (the
/// store's `request_timeout`) and follows the leader: if another node
/// becomes leader while the one asked has not answered (it is frozen, or
/// its link accepts but never answers), the request goes to the new one.
async fn on_leader<'a>(
    state: &'a AdminState,
    req: Request<Incoming>,
    change: impl Fn(&'a AdminState, ChangeRequest) -> Pending<'a>,
) -> Resp {
    let method = req.method().clone();
    let token = crate::http::acl::token_of(&req);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body = match read_body(req, MAX_BODY_BYTES, "the request", state.kv.budget()).await {
        Ok(b) => Bytes::copy_from_slice(&b),
        Err(e) => return error(e.status, e.sentence),
    };
    let request = ChangeRequest {
        method,
        token,
        path,
        body,
    };
    let deadline = std::time::Instant::now() + state.config.store.request_timeout;
    let mut asked: Vec<u64> = Vec::new();
    loop {
        let leader = state.meta.gauge().leader();
        match leader {
            Some(l) if l == state.node_id => return change(state, request).await,
            Some(l) => match forward(state, l, &request, deadline, &asked).await {
                Forwarded::Answer(resp) => return resp,
                Forwarded::LeaderMoved => asked.push(l),
            },
            None if std::time::Instant::now() < deadline && !asked.is_empty() => {
                // Between leaders: wait for the next one.
                async_io::Timer::after(FOLLOW_INTERVAL).await;
            }
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    if asked.is_empty() {
                        "no leader is known: a membership change needs one".to_string()
                    } else {
                        format!(
                            "no leader is known since node {} stopped leading: the change may \
                             or may not have been applied; see GET /admin/cluster/members",
                            asked[asked.len() - 1]
                        )
                    },
                )
            }
        }
    }
}

/// How a forward ended.
enum Forwarded {
    /// The leader's answer, or why there was none.
    Answer(Resp),
    /// Another node leads now (or none does) and the one asked had not
    /// answered.
    LeaderMoved,
}

async fn forward(
    state: &AdminState,
    leader: u64,
    request: &ChangeRequest,
    deadline: std::time::Instant,
    asked_before: &[u64],
) -> Forwarded {
    let admin = match membership(state).await {
        Ok(m) => m.member(leader).map(|r| r.admin),
        Err(resp) => return Forwarded::Answer(resp),
    }
    .or_else(|| state.config.node(leader).map(|n| n.admin));
    let Some(admin) = admin else {
        return Forwarded::Answer(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader, node {leader}, has no known admin address"),
        ));
    };
    let may_have = if asked_before.is_empty() {
        String::new()
    } else {
        format!(
            " (it was sent to node {} before: the change may or may not have been applied)",
            asked_before[asked_before.len() - 1]
        )
    };
    let client = state.peer_client().with_token(request.token.clone());
    let exchange = async {
        Some(
            client
                .exchange(
                    leader,
                    admin,
                    request.method.clone(),
                    &request.path,
                    request.body.to_vec(),
                )
                .await,
        )
    };
    let moved = async {
        loop {
            async_io::Timer::after(FOLLOW_INTERVAL).await;
            if state.meta.gauge().leader() != Some(leader) {
                return None;
            }
        }
    };
    let timeout = async {
        async_io::Timer::at(deadline).await;
        Some(Err("timed out".to_string()))
    };
    let outcome =
        futures_lite::future::or(exchange, futures_lite::future::or(moved, timeout)).await;
    match outcome {
        None => {
            log::info!(
                "node {leader} stopped leading before it answered a forwarded {} {}: following \
                 the new leader",
                request.method,
                request.path_only()
            );
            Forwarded::LeaderMoved
        }
        Some(Ok(r)) => {
            let mut resp = Response::new(Full::new(r.body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Forwarded::Answer(resp)
        }
        Some(Err(e)) if e == "timed out" => Forwarded::Answer(error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the leader, node {leader} at {}://{admin}, did not answer within {}: the change \
                 may or may not have been applied; see GET /admin/cluster/members{may_have}",
                client.scheme(),
                humantime::format_duration(state.config.store.request_timeout)
            ),
        )),
        Some(Err(e)) => Forwarded::Answer(error(
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot reach the leader, node {leader} at {}://{admin}: {e}; if the request got \
                 there, the change may or may not have been applied (see GET \
                 /admin/cluster/members){may_have}",
                client.scheme()
            ),
        )),
    }
}

/// The answer to a proposed change.
fn changed(
    result: crate::raft::replica::WriteResult,
    ok: Value,
    timeout: std::time::Duration,
) -> Resp {
    match result {
        Ok(c) => match c.outcome {
            Outcome::Committed(_) => reply(StatusCode::OK, ok),
            Outcome::Invalid(reason) => error(StatusCode::CONFLICT, reason),
            other => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the change was applied with an unexpected outcome: {other:?}"),
            ),
        },
        Err(RequestError::Busy) => error(
            StatusCode::CONFLICT,
            "another membership change is in progress; try again once it completes",
        ),
        Err(RequestError::NotLeader) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "leadership moved during the request: the change may or may not have been applied; \
             see GET /admin/cluster/members before trying again",
        ),
        Err(e) => {
            let e = KvError::from(e);
            crate::http::kv_error(&e, true, timeout)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: u64,
    addr: String,
    admin: String,
    #[serde(default = "yes")]
    auto_promote: bool,
}

fn yes() -> bool {
    true
}

fn add(state: &AdminState, req: ChangeRequest) -> Pending<'_> {
    Box::pin(async move {
        let new: NewMember = match serde_json::from_slice(&req.body) {
            Ok(n) => n,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be {{\"id\", \"addr\", \"admin\"}}: {e}"),
                )
            }
        };
        let parse = |what: &str, text: &str| -> Result<SocketAddr, String> {
            text.parse()
                .map_err(|_| format!("{what} {text:?} is not an ip:port socket address"))
        };
        let (addr, admin) = match (parse("addr", &new.addr), parse("admin", &new.admin)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        };
        if new.id == 0 {
            return error(StatusCode::BAD_REQUEST, "id must be greater than 0");
        }
        let m = match membership(state).await {
            Ok(m) => m,
            Err(resp) => return resp,
        };
        if m.members.contains_key(&new.id) {
            return error(
                StatusCode::CONFLICT,
                format!("node id {} is already a member", new.id),
            );
        }
        if m.removed.contains(&new.id) {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "node id {} was removed before; ids are never reused, pick a new one",
                    new.id
                ),
            );
        }
        if let Some((other, _)) = m
            .members
            .values()
            .find(|(r, _)| [r.addr, r.admin].iter().any(|a| *a == addr || *a == admin))
        {
            return error(
                StatusCode::CONFLICT,
                format!("node {} already uses one of these addresses", other.id),
            );
        }
        let member = Member {
            id: new.id,
            addr,
            admin,
            role: Role::Learner,
            joined: false,
            auto_promote: new.auto_promote,
        };
        let result = state
            .meta
            .change_membership(membership::add_learner(&member))
            .await;
        changed(
            result,
            record_json(&member, false),
            state.config.store.request_timeout,
        )
    })
}

fn promote(state: &AdminState, req: ChangeRequest) -> Pending<'_> {
    Box::pin(async move {
        let id: u64 = req
            .path_only()
            .trim_end_matches("/promote")
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let pairs = req.pairs();
        let replacing = match param(&pairs, "replace").map(str::parse::<u64>) {
            None => None,
            Some(Ok(old)) => Some(old),
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "replace must be a node id"),
        };
        let m = match membership(state).await {
            Ok(m) => m,
            Err(resp) => return resp,
        };
        let Some(member) = m.member(id) else {
            return error(StatusCode::NOT_FOUND, format!("node {id} is not a member"));
        };
        if member.role == Role::Voter {
            return error(
                StatusCode::CONFLICT,
                format!("node {id} is a voter already"),
            );
        }
        if let Some(old) = replacing {
            if old == id || m.member(old).is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("node {old} is not a member to replace"),
                );
            }
        }
        let Some(progress) = state.meta.progress().await else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
        };
        let tail = (state.config.raft.snapshot_entries / 10).max(1);
        let matched = progress.matched.get(&id).copied().unwrap_or(0);
        let added_at = m.members.get(&id).map_or(0, |(_, at)| *at);
        if !membership::caught_up(matched, added_at, progress.last_index, tail) {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "node {id} is still behind: it holds the log up to index {matched} of {}; \
                     it may be promoted within {tail} entries of the leader",
                    progress.last_index
                ),
            );
        }
        let result = state
            .meta
            .change_membership(membership::promote(member, replacing))
            .await;
        if result
            .as_ref()
            .is_ok_and(|c| matches!(c.outcome, Outcome::Committed(_)))
        {
            // A replacement is a joint-consensus change: answer once the
            // cluster has left the joint configuration, so that the new
            // membership is final when the caller hears of it.
            let deadline = std::time::Instant::now() + state.config.store.request_timeout;
            while std::time::Instant::now() < deadline {
                match state.meta.progress().await {
                    Some(p) if p.changing => {
                        async_io::Timer::after(std::time::Duration::from_millis(10)).await;
                    }
                    _ => break,
                }
            }
        }
        let promoted = Member {
            role: Role::Voter,
            ..member.clone()
        };
        changed(
            result,
            record_json(&promoted, true),
            state.config.store.request_timeout,
        )
    })
}

fn remove(state: &AdminState, req: ChangeRequest) -> Pending<'_> {
    Box::pin(async move {
        let id: u64 = req
            .path_only()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let m = match membership(state).await {
            Ok(m) => m,
            Err(resp) => return resp,
        };
        let Some(member) = m.member(id) else {
            return error(StatusCode::NOT_FOUND, format!("node {id} is not a member"));
        };
        let voters = m
            .members
            .values()
            .filter(|(r, _)| r.role == Role::Voter)
            .count();
        if member.role == Role::Voter && voters <= 1 {
            return error(StatusCode::CONFLICT, format!("node {id} is the last voter"));
        }
        let result = state.meta.change_membership(membership::remove(id)).await;
        changed(
            result,
            json!({"removed": id}),
            state.config.store.request_timeout,
        )
    })
}
