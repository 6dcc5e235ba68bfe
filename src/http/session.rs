//! Consul's `/v1/session/*` and `/v1/status/*` routes.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /v1/session/create` | `{"ID"}`; the body's field names in any case |
//! | `PUT /v1/session/destroy/<id>` | `true` |
//! | `PUT /v1/session/renew/<id>` | `[session]`, 404 once the session is gone |
//! | `GET /v1/session/info/<id>` | `[session]` or `[]` |
//! | `GET /v1/session/list`, `/v1/session/node/<node>` | `[session...]` |
//! | `GET /v1/status/leader` | the leader's peer address, `""` when none |
//! | `GET /v1/status/peers` | the voters' peer addresses |
//!
//! The reads take `?index`/`?wait` (blocking queries) and `?stale` as
//! `/v1/kv` does, and answer `X-Consul-Index`.
//!
//! With `[acl] enabled`, the token's `session`/`session_prefix` rules on the
//! session's node decide, as in Consul: `write` to create, renew or destroy
//! a session, `read` to see one (lists show only what the token may read).

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::acl::{Access, Authorizer};
use crate::http::kv::{consistency, leader_headers, parse_go_duration, DEFAULT_WAIT, MAX_WAIT};
use crate::http::{
    kv_error, method_not_allowed, param, query_pairs, read_body, reply, text, AdminState, ApiError,
};
use crate::kv::KvService;
use crate::session::{
    self, Behavior, SessionSpec, DEFAULT_LOCK_DELAY, MAX_LOCK_DELAY, MAX_TTL, MIN_TTL,
    SESSIONS_PREFIX,
};
use crate::store::machine::Listing;
use crate::store::{KvOp, Outcome};

type Resp = Response<Full<Bytes>>;

/// The largest create body read.
const MAX_BODY: u64 = 64 * 1024;

/// Looks a field up without regard to case, as Go's `encoding/json` does.
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// Serves `/v1/session/<rest>`.
pub async fn handle(state: &AdminState, req: Request<Incoming>, rest: &str) -> Resp {
    let mut resp = serve(state, req, rest).await;
    leader_headers(&mut resp, &state.kv);
    resp
}

async fn serve(state: &AdminState, req: Request<Incoming>, rest: &str) -> Resp {
    let (verb, arg) = rest.split_once('/').unwrap_or((rest, ""));
    let method = req.method().clone();
    let put = method == Method::PUT;
    let get = method == Method::GET || method == Method::HEAD;
    let known = matches!(
        verb,
        "create" | "destroy" | "renew" | "info" | "list" | "node"
    );
    let authz = if known && (put || get) {
        match crate::http::acl::authorize(state, &req).await {
            Ok(a) => a,
            Err(e) => return e.response(),
        }
    } else {
        Authorizer::allow_all()
    };
    match (verb, put, get) {
        ("create", true, _) => create(state, req, &authz).await,
        ("destroy" | "renew", true, _) => {
            if let Some(denied) = may_change(&state.kv, arg, &authz).await {
                return denied;
            }
            if verb == "destroy" {
                destroy(&state.kv, arg).await
            } else {
                renew(&state.kv, arg).await
            }
        }
        ("info" | "list" | "node", _, true) => {
            let pairs = query_pairs(&req);
            read(state, verb, arg, &pairs, &authz).await
        }
        ("create" | "destroy" | "renew", ..) => {
            method_not_allowed(&format!("/v1/session/{verb}"), &method, "PUT", false)
        }
        ("info" | "list" | "node", ..) => {
            method_not_allowed(&format!("/v1/session/{verb}"), &method, "GET", false)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route /v1/session/{rest}"),
        ),
    }
}

fn duration_field(obj: &Map<String, Value>, name: &str) -> Result<Option<Duration>, ApiError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("Invalid {name}: {s:?} is not a duration"))),
        // Go's time.Duration as a number: nanoseconds.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ns| Some(Duration::from_nanos(ns)))
            .ok_or_else(|| ApiError::bad(format!("Invalid {name}: {n}"))),
        Some(other) => Err(ApiError::bad(format!("Invalid {name}: {other}"))),
    }
}

/// Reads a create body into a session; pure, for tests.
pub fn parse_create(body: &[u8], this_node: u64) -> Result<SessionSpec, ApiError> {
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("Request decode failed: {e}")))?
    };
    let Value::Object(obj) = doc else {
        return Err(ApiError::bad(
            "Request decode failed: expected a JSON object",
        ));
    };
    let string = |name: &str| -> Result<String, ApiError> {
        match field(&obj, name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(ApiError::bad(format!(
                "{name} must be a string, not {other}"
            ))),
        }
    };
    let name = string("Name")?;
    let node = match string("Node")?.as_str() {
        "" => this_node,
        n => session::parse_node(n).ok_or_else(|| {
            ApiError::bad(format!(
                "Invalid Node {n:?}: nodes are named node-<id> (or by their id)"
            ))
        })?,
    };
    let ttl = duration_field(&obj, "TTL")?.unwrap_or(Duration::ZERO);
    if ttl != Duration::ZERO && !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::bad(format!(
            "Invalid Session TTL '{}', must be between [{}-{}]",
            humantime::format_duration(ttl),
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL)
        )));
    }
    let lock_delay = duration_field(&obj, "LockDelay")?.unwrap_or(DEFAULT_LOCK_DELAY);
    if lock_delay > MAX_LOCK_DELAY {
        return Err(ApiError::bad(format!(
            "Invalid LockDelay '{}', must be at most {}",
            humantime::format_duration(lock_delay),
            humantime::format_duration(MAX_LOCK_DELAY)
        )));
    }
    let behavior = match string("Behavior")?.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(ApiError::bad(format!(
                "Invalid Behavior setting {other:?}: use \"release\" or \"delete\""
            )))
        }
    };
    // Checks (or NodeChecks): absent means the node's health; a list may
    // name only that ("serfHealth"); [] makes a TTL-only session.
    let mut node_check = true;
    let mut named = false;
    for name in ["Checks", "NodeChecks"] {
        match field(&obj, name) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if !named {
                    node_check = false;
                    named = true;
                }
                for item in items {
                    match item.as_str() {
                        Some("serfHealth") => node_check = true,
                        _ => {
                            return Err(ApiError::bad(format!(
                                "{name}: check {item} is not supported; quorumd knows only \
                                 \"serfHealth\", the node's health"
                            )))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::bad(format!("{name} must be a list, not {other}")))
            }
        }
    }
    if let Some(Value::Array(items)) = field(&obj, "ServiceChecks") {
        if !items.is_empty() {
            return Err(ApiError::bad(
                "ServiceChecks are not supported: quorumd has no services",
            ));
        }
    }
    // `"Checks": []` with no TTL is allowed, as in Consul: such a session
    // lives until it is destroyed.
    Ok(SessionSpec {
        name,
        node,
        ttl_ms: ttl.as_millis() as u64,
        lock_delay_ms: lock_delay.as_millis() as u64,
        behavior,
        node_check,
    })
}

/// `Some(403)` unless `authz` may write sessions of the node session `id`
/// is bound to. An unknown id passes: the route answers it as Consul does.
/// The row is read linearizably (skipped for a management token, and with
/// ACLs off, which may do anything): a follower that has not applied the
/// session yet would otherwise let any token end it.
async fn may_change(kv: &KvService, id: &str, authz: &Authorizer) -> Option<Resp> {
    if !authz.is_management() && session::valid_id(id) {
        let row = session::row_key(id);
        let found = kv
            .read_point(crate::kv::Consistency::Linearizable, true, move |t| {
                t.get(&row)
            })
            .await;
        if let Err(e) = &found {
            return Some(kv_error(e, false, kv.settings().request_timeout));
        }
        if let Ok(l) = found {
            let node = l
                .value
                .as_ref()
                .and_then(|e| SessionSpec::decode(e.value.as_deref()?).ok())
                .map(|spec| session::node_name(spec.node));
            if node.is_some_and(|n| !authz.session(&n, Access::Write)) {
                return Some(crate::http::acl::denied().response());
            }
        }
    }
    None
}

async fn create(state: &AdminState, req: Request<Incoming>, authz: &Authorizer) -> Resp {
    let kv = &state.kv;
    let body = match read_body(req, MAX_BODY, "the session", kv.budget()).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let spec = match parse_create(&body, state.node_id) {
        Ok(s) => s,
        Err(e) => return e.response(),
    };
    if !authz.session(&session::node_name(spec.node), Access::Write) {
        return crate::http::acl::denied().response();
    }
    let id = session::new_id();
    let limits = kv.limits();
    let op = KvOp::SessionCreate {
        id: id.clone(),
        session: spec,
        max_sessions: limits.max_sessions,
        max_per_node: limits.max_sessions_per_node,
    };
    match kv.write(vec![op]).await {
        Err(e) => kv_error(&e, true, kv.settings().request_timeout),
        Ok(c) => match c.outcome {
            Outcome::Committed(_) => with_index(reply(StatusCode::OK, json!({"ID": id})), c.index),
            Outcome::RolledBack(errors) => {
                let what = errors.first().map_or(String::new(), |e| e.what.clone());
                let status = if what.starts_with("too many sessions") {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                text(status, what)
            }
            other => outcome_error(other),
        },
    }
}

fn outcome_error(outcome: Outcome) -> Resp {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the session change could not be applied: {outcome:?}"),
    )
}

fn bad_id(id: &str) -> Option<Resp> {
    (!session::valid_id(id)).then(|| {
        text(
            StatusCode::BAD_REQUEST,
            format!("Invalid session ID {id:?}: it must be a UUID"),
        )
    })
}

async fn destroy(kv: &KvService, id: &str) -> Resp {
    if let Some(resp) = bad_id(id) {
        return resp;
    }
    let op = KvOp::SessionDestroy {
        id: id.to_string(),
        now_ms: session::now_ms(),
        if_index: None,
    };
    match kv.write(vec![op]).await {
        Err(e) => kv_error(&e, true, kv.settings().request_timeout),
        Ok(c) => match c.outcome {
            Outcome::Committed(_) => with_index(reply(StatusCode::OK, json!(true)), c.index),
            other => outcome_error(other),
        },
    }
}

async fn renew(kv: &KvService, id: &str) -> Resp {
    if let Some(resp) = bad_id(id) {
        return resp;
    }
    let op = KvOp::SessionRenew { id: id.to_string() };
    match kv.write(vec![op]).await {
        Err(e) => kv_error(&e, true, kv.settings().request_timeout),
        Ok(c) => match c.outcome {
            Outcome::Committed(_) => {
                let row = session::row_key(id);
                let found = kv
                    .read_point(crate::kv::Consistency::Stale, true, move |t| t.get(&row))
                    .await;
                match found {
                    Ok(l) => match l.value {
                        Some(e) => with_index(
                            reply(
                                StatusCode::OK,
                                Value::Array(session_json(id, &e).into_iter().collect()),
                            ),
                            c.index,
                        ),
                        None => not_found(id),
                    },
                    Err(e) => kv_error(&e, false, kv.settings().request_timeout),
                }
            }
            Outcome::RolledBack(_) => not_found(id),
            other => outcome_error(other),
        },
    }
}

fn not_found(id: &str) -> Resp {
    text(
        StatusCode::NOT_FOUND,
        format!("Session id '{id}' not found"),
    )
}

/// A session row as Consul's `/v1/session` shows it.
pub fn session_json(id: &str, e: &crate::store::KvEntry) -> Option<Value> {
    let spec = SessionSpec::decode(e.value.as_deref()?).ok()?;
    let checks: Vec<&str> = if spec.node_check {
        vec!["serfHealth"]
    } else {
        Vec::new()
    };
    Some(json!({
        "ID": id,
        "Name": spec.name,
        "Node": session::node_name(spec.node),
        "Checks": checks,
        "NodeChecks": checks,
        "ServiceChecks": null,
        "LockDelay": spec.lock_delay_ms.saturating_mul(1_000_000),
        "Behavior": spec.behavior.name(),
        "TTL": if spec.ttl_ms == 0 { String::new() } else { format!("{}s", spec.ttl_ms / 1000) },
        "Namespace": "default",
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    }))
}

fn with_index(mut resp: Resp, index: u64) -> Resp {
    resp.headers_mut().insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index.max(1)),
    );
    resp
}

/// Every session, with the index a blocking query waits on.
pub async fn all_sessions(
    kv: &KvService,
    consistency: crate::kv::Consistency,
) -> Result<Listing<Vec<Value>>, crate::kv::KvError> {
    kv.read(consistency, |t| {
        let mut out = Vec::new();
        let listing = t.list_each(SESSIONS_PREFIX, |e| {
            let id = &e.key[SESSIONS_PREFIX.len()..];
            if let Some(v) = session_json(id, &e) {
                out.push(v);
            }
        })?;
        Ok(Listing {
            value: out,
            index: listing.index,
            floor: listing.floor,
        })
    })
    .await
}

async fn read(
    state: &AdminState,
    verb: &str,
    arg: &str,
    pairs: &[(String, String)],
    authz: &Authorizer,
) -> Resp {
    let kv = &state.kv;
    let consistency = match consistency(pairs) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let min_index = match param(pairs, "index").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
    };
    let wait = match param(pairs, "wait") {
        None => DEFAULT_WAIT,
        Some(w) => match parse_go_duration(w) {
            Some(d) => d.min(MAX_WAIT),
            None => return text(StatusCode::BAD_REQUEST, format!("Invalid wait time: {w:?}")),
        },
    };
    let node = match verb {
        "node" => match session::parse_node(arg) {
            Some(n) => Some(session::node_name(n)),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid node {arg:?}: nodes are named node-<id>"),
                )
            }
        },
        _ => None,
    };
    let deadline = Instant::now() + wait;
    let _slot = if min_index > 0 {
        match kv.blocking_slot() {
            Some(s) => Some(s),
            None => {
                return text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many blocking queries on this node; retry later",
                )
            }
        }
    } else {
        None
    };
    loop {
        let watch = if min_index > 0 {
            match kv.watch(SESSIONS_PREFIX, true).await {
                Ok(w) => Some(w),
                Err(e) => return kv_error(&e, false, kv.settings().request_timeout),
            }
        } else {
            None
        };
        let listing = match all_sessions(kv, consistency).await {
            Ok(l) => l,
            Err(e) => return kv_error(&e, false, kv.settings().request_timeout),
        };
        let done = min_index == 0 || listing.index > min_index || Instant::now() >= deadline;
        match (done, watch) {
            (false, Some(watch)) => {
                let fired =
                    futures_lite::future::or(async { watch.recv_async().await.is_ok() }, async {
                        async_io::Timer::at(deadline).await;
                        true
                    })
                    .await;
                if !fired {
                    return kv_error(&crate::kv::KvError::Stopped, false, Duration::ZERO);
                }
            }
            _ => {
                let chosen: Vec<Value> = listing
                    .value
                    .into_iter()
                    .filter(|s| match verb {
                        "info" => s["ID"] == arg,
                        "node" => Some(s["Node"].as_str().unwrap_or("")) == node.as_deref(),
                        _ => true,
                    })
                    .filter(|s| authz.session(s["Node"].as_str().unwrap_or(""), Access::Read))
                    .collect();
                return with_index(reply(StatusCode::OK, Value::Array(chosen)), listing.index);
            }
        }
    }
}

/// Serves `/v1/status/leader` and `/v1/status/peers`.
pub async fn status(state: &AdminState, req: &Request<Incoming>, rest: &str) -> Resp {
    if !(req.method() == Method::GET || req.method() == Method::HEAD) {
        return method_not_allowed(&format!("/v1/status/{rest}"), req.method(), "GET", false);
    }
    let addrs = match crate::membership::Membership::applied(&state.kv).await {
        Ok(m) if !m.members.is_empty() => m
            .members
            .values()
            .filter(|(r, _)| r.role == crate::membership::Role::Voter)
            .map(|(r, _)| (r.id, r.addr.to_string()))
            .collect::<Vec<_>>(),
        _ => state
            .config
            .nodes
            .iter()
            .map(|n| (n.id, n.addr.to_string()))
            .collect(),
    };
    match rest {
        "leader" => {
            let leader = state.kv.gauge().leader();
            let addr = leader
                .and_then(|id| addrs.iter().find(|(n, _)| *n == id))
                .map_or(String::new(), |(_, a)| a.clone());
            reply(StatusCode::OK, json!(addr))
        }
        "peers" => reply(
            StatusCode::OK,
            json!(addrs.into_iter().map(|(_, a)| a).collect::<Vec<_>>()),
        ),
        _ => text(StatusCode::NOT_FOUND, format!("no route /v1/status/{rest}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies_parse_in_any_case_and_bad_ones_name_the_problem() {
        let s = parse_create(
            br#"{"name": "x", "ttl": "15s", "lockdelay": "1s", "behavior": "delete", "checks": []}"#,
            2,
        )
        .unwrap();
        assert_eq!(s.name, "x");
        assert_eq!((s.ttl_ms, s.lock_delay_ms, s.node), (15_000, 1_000, 2));
        assert_eq!(s.behavior, Behavior::Delete);
        assert!(!s.node_check);
        let d = parse_create(b"", 1).unwrap();
        assert!(d.node_check && d.ttl_ms == 0 && d.lock_delay_ms == 15_000);
        let n = parse_create(br#"{"Node": "node-3", "LockDelay": 0}"#, 1).unwrap();
        assert_eq!((n.node, n.lock_delay_ms), (3, 0));
        let e = |b: &[u8]| parse_create(b, 1).unwrap_err().sentence;
        assert!(e(br#"{"TTL": "5s"}"#).contains("between"));
        assert!(e(br#"{"LockDelay": "61s"}"#).contains("at most"));
        assert!(e(br#"{"Behavior": "keep"}"#).contains("release"));
        assert!(e(br#"{"Checks": ["service:web"]}"#).contains("serfHealth"));
        assert!(e(br#"{"Node": "box"}"#).contains("node-<id>"));
        assert!(e(b"[1]").contains("object"));
    }
}
