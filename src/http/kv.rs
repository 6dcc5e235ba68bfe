//! `/v1/kv/<key>`: Consul's KV API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/kv/<key>` | 200 `[entry]`, or 404 with an empty body |
//! | `GET ...?raw` | 200 with the value's bytes |
//! | `GET /v1/kv/<prefix>?recurse` | 200 `[entry, ...]` sorted by key, or 404 |
//! | `GET /v1/kv/<prefix>?keys[&separator=/]` | 200 `["key", ...]`, or 404 |
//! | `PUT /v1/kv/<key>[?flags=N][&cas=I]` | 200 `true`, or `false` when the cas check fails |
//! | `DELETE /v1/kv/<key>[?recurse][&cas=I]` | 200 `true`, or `false` when the cas check fails |
//!
//! Reads are linearizable by default (and with `?consistent`); `?stale`
//! answers from this node's replica. `?index=N&wait=D` blocks until the
//! result's index passes `N` or `wait` runs out (default 5m, at most 10m,
//! plus up to a sixteenth of jitter, as Consul does). Every answer carries
//! `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact`.
//!
//! With ACLs on, a read needs `read` on the key, `?keys` lists only what
//! the token may `list`, `?recurse` returns only what it may `read`, a
//! write needs `write`, and a recursive delete `write` on everything under
//! the prefix; see [`crate::http::acl`]. A blocking query checks the token
//! again each time it wakes.
//!
//! `dc`, `ns` and `partition` are accepted and ignored; the session
//! parameters `acquire` and `release` answer 400.

use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::acl::AclCheck;
use crate::http::{
    kv_error, method_not_allowed, param, parse_query, read_body, reply, text, AdminState, ApiError,
};
use crate::kv::{Consistency, KvService};
use crate::store::machine::{KvEntry, Listing};
use crate::store::{check_key, is_reserved, KvOp, Outcome, RESERVED_PREFIX};

/// Default `wait` of a blocking query (Consul's).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest `wait` of a blocking query (Consul's).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

const X_CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
const X_CONSUL_KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
const X_CONSUL_LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");

type Resp = Response<Full<Bytes>>;

/// Serves `/v1/kv/<key>`; `raw_key` is the path after `/v1/kv/`.
pub async fn handle(state: &AdminState, req: Request<Incoming>, raw_key: &str) -> Resp {
    let method = req.method();
    if ![Method::GET, Method::HEAD, Method::PUT, Method::DELETE].contains(method) {
        let mut resp = method_not_allowed("/v1/kv", method, "GET, PUT, DELETE", false);
        leader_headers(&mut resp, &state.kv);
        return resp;
    }
    let decoded = decode(method, raw_key, req.uri().query().unwrap_or(""));
    let acl = AclCheck::of(state, &req);
    if let (Some(check), Ok(request)) = (&acl, &decoded) {
        if !matches!(request, KvRequest::Get(_)) {
            match check.fresh(state).await {
                Ok(a) if may_write(&a, request) => {}
                Ok(_) => return with_leader(crate::http::acl::denied().response(), &state.kv),
                Err(e) => return with_leader(e.response(), &state.kv),
            }
        }
    }
    let mut resp = match decoded {
        Err(e) => e.response(),
        Ok(KvRequest::Get(get)) => {
            let mut acl = acl;
            if let Some(check) = acl.as_mut() {
                check.prepare(&state.kv).await;
            }
            serve_get(&state.kv, get, acl).await
        }
        Ok(KvRequest::Put {
            key,
            flags,
            cas,
            lock,
        }) => {
            let limit = state.kv.settings().max_value_bytes;
            match read_body(req, limit, "the value", state.kv.budget()).await {
                Ok(value) => {
                    let value = value.to_vec();
                    let op = match lock {
                        None => put_op(key, value, flags, cas),
                        Some(LockRequest::Acquire(session)) => KvOp::Lock {
                            key,
                            value,
                            flags,
                            session,
                            now_ms: crate::session::now_ms(),
                        },
                        Some(LockRequest::Release(session)) => KvOp::Unlock {
                            key,
                            value,
                            flags,
                            session,
                        },
                    };
                    write(&state.kv, vec![op]).await
                }
                Err(e) => e.response(),
            }
        }
        Ok(KvRequest::Delete(op)) => write(&state.kv, vec![op]).await,
    };
    leader_headers(&mut resp, &state.kv);
    resp
}

/// May the token make this write? Every kind of request is named, so that
/// a new one cannot pass unchecked; a read is checked in its own read.
fn may_write(a: &crate::acl::Authorizer, request: &KvRequest) -> bool {
    match request {
        KvRequest::Get(_) => true,
        KvRequest::Put { key, .. } => a.key_write(key),
        KvRequest::Delete(op) => crate::http::acl::txn_allowed(a, std::slice::from_ref(op)),
    }
}

fn with_leader(mut resp: Resp, kv: &KvService) -> Resp {
    leader_headers(&mut resp, kv);
    resp
}

/// A `/v1/kv` request, decoded from its method, key and query string
/// before anything is read or written. A PUT's value (the body) is opaque
/// bytes, read afterwards.
#[derive(Debug)]
pub enum KvRequest {
    /// A read, possibly blocking.
    Get(GetRequest),
    /// A write of the body's bytes.
    Put {
        /// The key.
        key: String,
        /// Consul's `Flags`.
        flags: u64,
        /// `?cas=`: the `ModifyIndex` the key must have (0: absent).
        cas: Option<u64>,
        /// `?acquire=` or `?release=`.
        lock: Option<LockRequest>,
    },
    /// A delete: one key, a tree, or a cas delete.
    Delete(KvOp),
}

/// What a GET asks for, and how.
#[derive(Debug)]
pub struct GetRequest {
    query: Query,
    consistency: Consistency,
    /// `?index=`: block until the result's index passes it (0: at once).
    min_index: u64,
    wait: Duration,
    raw: bool,
}

/// Decodes a `/v1/kv` request (`raw_key`: the path after `/v1/kv/`, still
/// percent-encoded; `query`: the query string). `Err` is the answer to send:
/// 400 for a bad key, parameter or duration, 403 for a write under the
/// reserved prefix, 405 for another method. Pure: the fuzz target `http`
/// drives it with arbitrary paths and queries.
pub fn decode(method: &Method, raw_key: &str, query: &str) -> Result<KvRequest, ApiError> {
    let Ok(key) = percent_encoding::percent_decode_str(raw_key).decode_utf8() else {
        return Err(bad("the key is not valid UTF-8"));
    };
    let key = key.into_owned();
    let pairs = parse_query(query);
    match *method {
        Method::GET | Method::HEAD => decode_get(key, &pairs).map(KvRequest::Get),
        Method::PUT => decode_put(key, &pairs),
        Method::DELETE => decode_delete(key, &pairs),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed on /v1/kv"),
        )),
    }
}

/// `X-Consul-KnownLeader` and `X-Consul-LastContact`.
pub fn leader_headers(resp: &mut Resp, kv: &KvService) {
    let gauge = kv.gauge();
    let known = if gauge.leader().is_some() {
        "true"
    } else {
        "false"
    };
    let headers = resp.headers_mut();
    headers.insert(X_CONSUL_KNOWN_LEADER, HeaderValue::from_static(known));
    headers.insert(
        X_CONSUL_LAST_CONTACT,
        HeaderValue::from(gauge.last_contact().as_millis() as u64),
    );
}

fn with_index(mut resp: Resp, index: u64) -> Resp {
    resp.headers_mut()
        .insert(X_CONSUL_INDEX, HeaderValue::from(index.max(1)));
    resp
}

/// An entry as Consul writes it (`Value` in base64, or null).
pub fn entry_json(e: &KvEntry) -> Value {
    json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": e.value.as_ref().map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
        "Session": e.session,
    })
}

fn bad(sentence: impl Into<String>) -> ApiError {
    ApiError::bad(sentence)
}

fn u64_param(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    match param(pairs, name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad(format!("Invalid {name}: {v:?} is not an unsigned integer"))
        }),
    }
}

/// The consistency a read asked for.
pub fn consistency(pairs: &[(String, String)]) -> Result<Consistency, ApiError> {
    let stale = param(pairs, "stale").is_some();
    if stale && param(pairs, "consistent").is_some() {
        return Err(ApiError::bad(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    Ok(if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    })
}

fn sessions_refused(pairs: &[(String, String)]) -> Option<ApiError> {
    ["acquire", "release"]
        .into_iter()
        .find(|p| param(pairs, p).is_some())
        .map(|p| bad(format!("?{p} is for PUT, not DELETE")))
}

/// `?acquire=<session>` or `?release=<session>` on a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRequest {
    Acquire(String),
    Release(String),
}

/// What a GET asks for.
#[derive(Debug, Clone)]
enum Query {
    One(String),
    Tree(String),
    Keys(String, Option<String>),
}

/// What it found.
enum Found {
    One(Option<KvEntry>),
    /// A listing's answer, rendered off the executor, holding its share of
    /// the buffer budget; `None` when nothing matched.
    Rendered(Option<Bytes>),
    /// The answer would pass `max_response_bytes`.
    TooLarge(u64),
    /// The buffer budget had no room for the answer in time.
    Busy(u64),
    /// The token may not read this (or cannot be used).
    Denied(ApiError),
}
fn decode_get(key: String, pairs: &[(String, String)]) -> Result<GetRequest, ApiError> {
    let recurse = param(pairs, "recurse").is_some();
    let keys = param(pairs, "keys").is_some();
    let raw = param(pairs, "raw").is_some();
    if let Err(reason) = check_key(&key, recurse || keys) {
        return Err(bad(capitalize(&reason)));
    }
    let consistency = consistency(pairs)?;
    let min_index = u64_param(pairs, "index")?.unwrap_or(0);
    let wait = match param(pairs, "wait") {
        None => DEFAULT_WAIT,
        Some(w) => match parse_go_duration(w) {
            Some(d) => d.min(MAX_WAIT),
            None => return Err(bad(format!("Invalid wait time: {w:?}"))),
        },
    };
    let query = if keys {
        Query::Keys(key, param(pairs, "separator").map(str::to_string))
    } else if recurse {
        Query::Tree(key)
    } else {
        Query::One(key)
    };
    Ok(GetRequest {
        query,
        consistency,
        min_index,
        wait,
        raw,
    })
}

async fn serve_get(kv: &KvService, get: GetRequest, acl: Option<AclCheck>) -> Resp {
    let GetRequest {
        query,
        consistency,
        min_index,
        wait,
        raw,
    } = get;
    let key = match &query {
        Query::One(k) | Query::Tree(k) | Query::Keys(k, _) => k.clone(),
    };
    let key = key.as_str();
    let prefix = !matches!(query, Query::One(_));
    // Consul adds up to wait/16 of jitter, so that many watchers woken by
    // one write do not all come back at once.
    let jitter = wait.mul_f64(fastrand::f64() / 16.0);
    let deadline = Instant::now() + wait + jitter;
    // A blocking query holds a slot of its own kind for its whole wait, so
    // that watchers cannot take every connection's worth of work.
    let _slot = if min_index > 0 {
        match kv.blocking_slot() {
            Some(slot) => Some(slot),
            None => return too_many_blocking(kv.limits().max_blocking_queries),
        }
    } else {
        None
    };
    loop {
        // Register before reading: a write that lands after the read is
        // then sure to fire the watch.
        let watch = if min_index > 0 {
            match kv.watch(key, prefix).await {
                Ok(w) => Some(w),
                Err(e) => return kv_error(&e, false, kv.settings().request_timeout),
            }
        } else {
            None
        };
        let listing = match &query {
            // One key: on the executor while that is quick, unless the
            // token's policies are to be read and parsed (not cached).
            Query::One(k) => {
                let inline = acl.as_ref().is_none_or(AclCheck::is_cached);
                let (k, acl) = (k.clone(), acl.clone());
                kv.read_point(consistency, inline, move |t| {
                    match authorize_read(t, acl.as_ref()) {
                        Err(denial) => Ok(denial),
                        Ok(authz) => read_one(t, &k, authz.as_ref()),
                    }
                })
                .await
            }
            listing => {
                let (q, acl) = (listing.clone(), acl.clone());
                let (budget, max_bytes, timeout) = (
                    kv.budget().clone(),
                    kv.limits().max_response_bytes,
                    kv.settings().request_timeout,
                );
                kv.read(consistency, move |t| {
                    let authz = match authorize_read(t, acl.as_ref()) {
                        Ok(a) => a,
                        Err(denial) => return Ok(denial),
                    };
                    let may = |want: crate::acl::Access, key: &str| {
                        authz.as_ref().is_none_or(|a| a.key(key, want))
                    };
                    Ok(match q {
                        Query::One(k) => read_one(t, &k, authz.as_ref())?,
                        Query::Tree(p) => {
                            let Some(estimate) = t.client_estimate(&p, max_bytes)? else {
                                return Ok(too_large(t, max_bytes));
                            };
                            let Some(share) = budget.reserve_blocking(estimate, timeout) else {
                                return Ok(busy(t, budget.capacity()));
                            };
                            let mut out = Vec::with_capacity(estimate as usize);
                            out.push(b'[');
                            let mut shown = 0usize;
                            let listing = t.client_list_each(&p, |e| {
                                // As Consul: a listing leaves out what the
                                // token may not read.
                                if !may(crate::acl::Access::Read, &e.key) {
                                    return;
                                }
                                if out.len() > 1 {
                                    out.push(b',');
                                }
                                shown += 1;
                                // Writing JSON into a Vec cannot fail.
                                let _ = serde_json::to_writer(&mut out, &entry_json(&e));
                            })?;
                            out.push(b']');
                            let found = (listing.value > 0 && shown > 0)
                                .then(|| crate::budget::reserved_bytes(out, share));
                            map_listing(listing, |_| Found::Rendered(found))
                        }
                        Query::Keys(p, sep) => {
                            match t.client_keys(&p, sep.as_deref(), max_bytes)? {
                                Err(_) => too_large(t, max_bytes),
                                Ok(mut listing) => {
                                    listing.value.retain(|k| may(crate::acl::Access::List, k));
                                    let rendered = (!listing.value.is_empty())
                                        .then(|| Bytes::from(json!(listing.value).to_string()));
                                    map_listing(listing, |_| Found::Rendered(rendered))
                                }
                            }
                        }
                    })
                })
                .await
            }
        };
        let listing = match listing {
            Ok(l) => l,
            Err(e) => return kv_error(&e, false, kv.settings().request_timeout),
        };
        // The tombstone floor matters to a listing only: a delete under a
        // prefix may have left no tombstone, but a single key's index is its
        // own (or the store's, when it is absent), which only grows.
        let done = min_index == 0
            || matches!(listing.value, Found::Denied(_))
            || listing.index > min_index
            || (prefix && min_index < listing.floor)
            || Instant::now() >= deadline;
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
            _ => return render(listing, raw),
        }
    }
}

/// The token's rights, checked in the same read as the data: a
/// linearizable read sees every revocation committed before. `Err` is the
/// denial to answer with.
fn authorize_read(
    t: &crate::store::machine::ReadTables,
    acl: Option<&AclCheck>,
) -> Result<Option<crate::acl::Authorizer>, Listing<Found>> {
    acl.map(|c| c.resolve(t))
        .transpose()
        .map_err(|e| denied(t, e))
}

/// One key, if `authz` (none: ACLs are off) may read it.
fn read_one(
    t: &crate::store::machine::ReadTables,
    key: &str,
    authz: Option<&crate::acl::Authorizer>,
) -> crate::store::machine::Result<Listing<Found>> {
    if !authz.is_none_or(|a| a.key(key, crate::acl::Access::Read)) {
        return Ok(denied(t, crate::http::acl::denied()));
    }
    // The reserved prefix is the cluster's: invisible here.
    Ok(map_listing(t.client_get(key)?, Found::One))
}

fn too_large(t: &crate::store::machine::ReadTables, limit: u64) -> Listing<Found> {
    Listing {
        value: Found::TooLarge(limit),
        index: t.state().index.max(1),
        floor: 0,
    }
}

fn denied(t: &crate::store::machine::ReadTables, e: ApiError) -> Listing<Found> {
    Listing {
        value: Found::Denied(e),
        index: t.state().index.max(1),
        floor: 0,
    }
}

fn busy(t: &crate::store::machine::ReadTables, capacity: u64) -> Listing<Found> {
    Listing {
        value: Found::Busy(capacity),
        index: t.state().index.max(1),
        floor: 0,
    }
}

/// 413: the answer would pass `max_response_bytes`.
pub fn answer_too_large(limit: u64) -> Resp {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the answer would take more than {limit} bytes, over the node's limit \
             max_response_bytes; list a narrower prefix, or ask for ?keys first"
        ),
    )
}

/// 429: every blocking-query slot is taken.
fn too_many_blocking(max: usize) -> Resp {
    let mut resp = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many blocking queries on this node (max_blocking_queries = {max}); retry \
             later, or read without ?index"
        ),
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// 503: the buffer budget had no room in time.
pub fn budget_busy(capacity: u64) -> Resp {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the node is busy: other requests hold its buffer budget (max_buffered_bytes = \
             {capacity}); retry later"
        ),
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn map_listing<T>(l: Listing<T>, f: impl FnOnce(T) -> Found) -> Listing<Found> {
    Listing {
        value: f(l.value),
        index: l.index,
        floor: l.floor,
    }
}

fn render(listing: Listing<Found>, raw: bool) -> Resp {
    let index = listing.index;
    let not_found = || with_index(text_empty(StatusCode::NOT_FOUND), index);
    let resp = match listing.value {
        Found::One(None) => return not_found(),
        Found::One(Some(entry)) if raw => {
            let mut resp = Response::new(Full::new(Bytes::from(entry.value.unwrap_or_default())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut().insert(
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
        Found::One(Some(entry)) => reply(StatusCode::OK, Value::Array(vec![entry_json(&entry)])),
        Found::Rendered(None) => return not_found(),
        Found::Rendered(Some(body)) => {
            let mut resp = Response::new(Full::new(body));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Found::TooLarge(limit) => return answer_too_large(limit),
        Found::Busy(capacity) => return budget_busy(capacity),
        Found::Denied(e) => return e.response(),
    };
    with_index(resp, index)
}

fn text_empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// Refuses a client write under the reserved prefix.
fn reserved(key: &str) -> Option<ApiError> {
    is_reserved(key).then(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Permission denied: keys under {RESERVED_PREFIX} are reserved for the cluster and read-only"),
        )
    })
}

fn decode_put(key: String, pairs: &[(String, String)]) -> Result<KvRequest, ApiError> {
    let lock = match (param(pairs, "acquire"), param(pairs, "release")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "Conflicting flags: ?acquire and ?release in one request",
            ))
        }
        (Some(id), None) => Some(LockRequest::Acquire(id.to_string())),
        (None, Some(id)) => Some(LockRequest::Release(id.to_string())),
        (None, None) => None,
    };
    // A session id that names no session (malformed or not) gets Consul's
    // answer when the write applies: 500, "invalid session".
    if let Err(reason) = check_key(&key, false) {
        return Err(bad(capitalize(&reason)));
    }
    if let Some(resp) = reserved(&key) {
        return Err(resp);
    }
    let flags = u64_param(pairs, "flags")?.unwrap_or(0);
    let cas = u64_param(pairs, "cas")?;
    Ok(KvRequest::Put {
        key,
        flags,
        cas,
        lock,
    })
}

/// The write a PUT of `value` makes.
pub fn put_op(key: String, value: Vec<u8>, flags: u64, cas: Option<u64>) -> KvOp {
    match cas {
        Some(index) => KvOp::Cas {
            key,
            value,
            flags,
            index,
        },
        None => KvOp::Set { key, value, flags },
    }
}

fn decode_delete(key: String, pairs: &[(String, String)]) -> Result<KvRequest, ApiError> {
    if let Some(resp) = sessions_refused(pairs) {
        return Err(resp);
    }
    let recurse = param(pairs, "recurse").is_some();
    if let Err(reason) = check_key(&key, recurse) {
        return Err(bad(capitalize(&reason)));
    }
    if let Some(resp) = reserved(&key) {
        return Err(resp);
    }
    let cas = u64_param(pairs, "cas")?;
    // As Consul: `recurse` wins over `cas`.
    Ok(KvRequest::Delete(match (recurse, cas) {
        (true, _) => KvOp::DeleteTree { prefix: key },
        (false, Some(index)) => KvOp::DeleteCas { key, index },
        (false, None) => KvOp::Delete { key },
    }))
}

/// Proposes a single-op write and answers `true`/`false` as Consul does.
async fn write(kv: &KvService, ops: Vec<KvOp>) -> Resp {
    match kv.write(ops).await {
        Err(e) => kv_error(&e, true, kv.settings().request_timeout),
        Ok(committed) => match committed.outcome {
            Outcome::Committed(_) => {
                with_index(reply(StatusCode::OK, json!(true)), committed.index)
            }
            // Consul answers 500 to a lock by a session it does not know.
            Outcome::RolledBack(errors)
                if errors.iter().any(|e| e.what.starts_with("invalid session")) =>
            {
                let why = errors
                    .iter()
                    .find(|e| e.what.starts_with("invalid session"))
                    .map_or_else(String::new, |e| e.what.clone());
                text(StatusCode::INTERNAL_SERVER_ERROR, why)
            }
            Outcome::RolledBack(_) => {
                with_index(reply(StatusCode::OK, json!(false)), committed.index)
            }
            Outcome::QuotaExceeded { size, limit } => quota_error(size, limit),
            Outcome::Invalid(reason) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the write could not be applied: {reason}"),
            ),
        },
    }
}

/// 507: the write would pass `max_store_bytes`.
pub fn quota_error(size: u64, limit: u64) -> Resp {
    text(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "the store is full: this write would make it {size} bytes, over max_store_bytes = \
             {limit}; delete keys to make room"
        ),
    )
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Parses a Go duration (`"10s"`, `"1m30s"`, `"1.5h"`, `"250ms"`, `"0"`), as
/// Consul's `wait` parameter takes it.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_consul_reads_them() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("10s"), Some(Duration::from_secs(10)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "-1s", "1x", "1s2", "1e400h"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_render_as_consul_does() {
        let e = KvEntry {
            key: "a/b".into(),
            value: Some(b"test".to_vec()),
            flags: 42,
            create_index: 3,
            modify_index: 9,
            lock_index: 0,
            session: String::new(),
        };
        let v = entry_json(&e);
        assert_eq!(v["Value"], "dGVzdA==");
        assert_eq!(v["Key"], "a/b");
        assert_eq!(v["Flags"], 42);
        assert_eq!(
            (v["CreateIndex"].as_u64(), v["ModifyIndex"].as_u64()),
            (Some(3), Some(9))
        );
        let v = entry_json(&KvEntry { value: None, ..e });
        assert!(v["Value"].is_null());
    }
}
