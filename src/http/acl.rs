//! `/v1/acl/*`: Consul's ACL API, and the check every other route makes.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /v1/acl/bootstrap` | the first management token, once; 403 after |
//! | `PUT /v1/acl/policy` | creates a policy (`Name`, `Description`, `Rules`) |
//! | `GET/PUT/DELETE /v1/acl/policy/<id>` | reads, updates, deletes one |
//! | `GET /v1/acl/policy/name/<name>` | reads one by name |
//! | `GET /v1/acl/policies` | every policy |
//! | `PUT /v1/acl/token` | creates a token (`Description`, `Policies`, `ExpirationTime` or `ExpirationTTL`) |
//! | `GET/PUT/DELETE /v1/acl/token/<accessor>` | reads, updates, deletes one |
//! | `GET /v1/acl/token/self` | the token presented |
//! | `GET /v1/acl/tokens` | every token |
//!
//! Every route but `bootstrap` and `token/self` needs a management token.
//! A secret is shown once, in the answer that creates it: the store keeps
//! only its hash. A token is checked against the node's applied state
//! (after a ReadIndex on a follower), through a cache that empties as soon
//! as an ACL write applies ([`AclCache`]), so a revocation holds on every
//! node once it commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::acl::{
    self, Authorizer, PolicyRecord, ResolveError, TokenRecord, ANONYMOUS_ACCESSOR, BOOTSTRAP_KEY,
    MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME, POLICY_NAME_PREFIX, POLICY_PREFIX, SECRET_PREFIX,
    TOKEN_PREFIX,
};
use crate::http::{kv_error, param, read_body, reply, text, AdminState, ApiError};
use crate::kv::Consistency;
use crate::store::machine::{KvEntry, ReadTables};
use crate::store::{KvOp, Outcome};

type Resp = Response<Full<Bytes>>;

/// The file whose content, the reset index, allows one more bootstrap.
pub const RESET_FILE: &str = "acl-bootstrap-reset";
/// The largest body an ACL route reads.
const MAX_BODY: u64 = 128 * 1024;

/// Consul's answer to a request its token does not allow.
pub fn denied() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Permission denied")
}

fn resolve_error(e: ResolveError) -> ApiError {
    match e {
        ResolveError::NotFound => ApiError::new(StatusCode::FORBIDDEN, "ACL not found"),
        ResolveError::Corrupt(what) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the ACL store cannot be read: {what}"),
        ),
    }
}

/// The token a request presented, to check once ACLs are on.
#[derive(Debug, Clone)]
pub struct AclCheck {
    token: Option<String>,
    /// The cache's key: the secret's hash (empty: the anonymous token).
    key: String,
    default_allow: bool,
    cache: AclCache,
    /// A watch on the ACL rows, registered before any read this check
    /// makes ([`AclCheck::prepare`]).
    watch: Option<flume::Receiver<()>>,
}

/// The token of a request: `X-Consul-Token`, `Authorization: Bearer`, or
/// `?token=`.
pub fn token_of(req: &Request<Incoming>) -> Option<String> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let pairs = crate::http::query_pairs(req);
    acl::presented_token(
        header("x-consul-token"),
        header("authorization"),
        param(&pairs, "token"),
    )
    .map(str::to_string)
}

/// Tokens resolved on this node, kept only until the next write under
/// [`acl::ACL_PREFIX`] is applied here. Each generation of the cache holds
/// a watch on that prefix, registered before any read that filled it; the
/// replica fires the watch as it applies the write, before it answers the
/// write's client and before a ReadIndex past it returns, so no entry is
/// used after a revocation is visible on this node. An expired token is
/// never served from it. Cheap to clone.
#[derive(Clone, Default)]
pub struct AclCache(Arc<Mutex<CacheState>>);

impl std::fmt::Debug for AclCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclCache").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct CacheState {
    watch: Option<flume::Receiver<()>>,
    tokens: HashMap<String, Authorizer>,
}

/// The most tokens cached at once; past it the cache starts over.
const MAX_CACHED: usize = 4096;

/// True while no ACL write was applied since the watch was registered.
fn unfired(rx: &flume::Receiver<()>) -> bool {
    rx.is_empty() && !rx.is_disconnected()
}

impl AclCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation's watch if it has not fired, else a new one
    /// (which starts a new, empty generation). `None` if the node stops.
    async fn watch(&self, kv: &crate::kv::KvService) -> Option<flume::Receiver<()>> {
        if let Some(rx) = self.lock().watch.as_ref().filter(|rx| unfired(rx)) {
            return Some(rx.clone());
        }
        let rx = kv.watch(acl::ACL_PREFIX, true).await.ok()?;
        let mut s = self.lock();
        if !s.watch.as_ref().is_some_and(unfired) {
            s.watch = Some(rx.clone());
            s.tokens.clear();
        }
        Some(rx)
    }

    /// The cached rights of `key`, if `rx` is the current, unfired
    /// generation and the token has not expired.
    fn get(&self, key: &str, rx: &flume::Receiver<()>) -> Option<Authorizer> {
        let s = self.lock();
        let current = s.watch.as_ref()?;
        if !current.same_channel(rx) || !unfired(current) {
            return None;
        }
        let authz = s.tokens.get(key)?;
        (!authz.expired(std::time::SystemTime::now())).then(|| authz.clone())
    }

    /// Keeps rights read after `rx` was registered.
    fn put(&self, key: &str, rx: &flume::Receiver<()>, authz: &Authorizer) {
        let mut s = self.lock();
        let current = s.watch.as_ref();
        if !current.is_some_and(|c| c.same_channel(rx) && unfired(c)) {
            return;
        }
        if s.tokens.len() >= MAX_CACHED {
            s.tokens.clear();
        }
        s.tokens.insert(key.to_string(), authz.clone());
    }
}

impl AclCheck {
    /// `None` when the cluster has ACLs off: then every request may do
    /// everything.
    pub fn of(state: &AdminState, req: &Request<Incoming>) -> Option<AclCheck> {
        state.config.acl.enabled.then(|| {
            let token = token_of(req).filter(|t| t != acl::ANONYMOUS_SECRET);
            AclCheck {
                key: token.as_deref().map(acl::hash_secret).unwrap_or_default(),
                token,
                default_allow: state.config.acl.default_allow,
                cache: state.acl_cache.clone(),
                watch: None,
            }
        })
    }

    /// Registers (or reuses) the cache's watch, before the read that will
    /// check the token: then [`AclCheck::resolve`] may use the cache.
    pub async fn prepare(&mut self, kv: &crate::kv::KvService) {
        self.watch = self.cache.watch(kv).await;
    }

    /// True if [`AclCheck::resolve`] would answer from the cache, without
    /// reading the token's rows and parsing its policies.
    pub fn is_cached(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|rx| self.cache.get(&self.key, rx).is_some())
    }

    /// The token's rights, as `t` has them (or as cached since): for a
    /// check in the same read as the data it guards.
    pub fn resolve(&self, t: &ReadTables) -> Result<Authorizer, ApiError> {
        if let Some(authz) = self
            .watch
            .as_ref()
            .and_then(|rx| self.cache.get(&self.key, rx))
        {
            return Ok(authz);
        }
        let authz = acl::resolve(
            self.token.as_deref(),
            std::time::SystemTime::now(),
            self.default_allow,
            |key| row(t, key).map(|e| e.value.unwrap_or_default()),
        )
        .map_err(resolve_error)?;
        if let Some(rx) = &self.watch {
            self.cache.put(&self.key, rx, &authz);
        }
        Ok(authz)
    }

    /// The token's rights, read afresh: from the leader's applied state, or
    /// after a ReadIndex on a follower, so a revocation that committed
    /// before this request began holds.
    pub async fn fresh(&self, state: &AdminState) -> Result<Authorizer, ApiError> {
        let failed = |e: crate::kv::KvError| {
            let timeout = state.kv.settings().request_timeout;
            let resp = kv_error(&e, false, timeout);
            ApiError::new(resp.status(), format!("cannot check the token: {e}"))
        };
        if state.meta.gauge().leader() != Some(state.node_id) {
            state
                .kv
                .replica()
                .read_index()
                .await
                .map_err(|e| failed(e.into()))?;
        }
        let mut check = self.clone();
        check.prepare(&state.kv).await;
        if let Some(authz) = check
            .watch
            .as_ref()
            .and_then(|rx| check.cache.get(&check.key, rx))
        {
            return Ok(authz);
        }
        state
            .kv
            .read(Consistency::Stale, move |t| Ok(check.resolve(t)))
            .await
            .map_err(failed)?
    }
}

/// The rights of a request's token; every right with ACLs off.
pub async fn authorize(
    state: &AdminState,
    req: &Request<Incoming>,
) -> Result<Authorizer, ApiError> {
    match AclCheck::of(state, req) {
        None => Ok(Authorizer::allow_all()),
        Some(check) => check.fresh(state).await,
    }
}

/// Checks a route that needs `operator` rights; `Err` is the answer.
pub async fn require_operator(
    state: &AdminState,
    req: &Request<Incoming>,
    want: acl::Access,
) -> Result<(), Resp> {
    match authorize(state, req).await {
        Ok(a) if a.operator(want) => Ok(()),
        Ok(_) => Err(denied().response()),
        Err(e) => Err(e.response()),
    }
}

/// May `a` run these transaction ops? Reads need `read`, writes `write`,
/// tree ops the right on everything under their prefix.
pub fn txn_allowed(a: &Authorizer, ops: &[KvOp]) -> bool {
    // Every verb named, so that a new one cannot slip through as a read.
    ops.iter().all(|op| match op {
        KvOp::DeleteTree { prefix } => a.key_write_prefix(prefix),
        KvOp::GetTree { prefix } => a.key_read_prefix(prefix),
        KvOp::Set { key, .. }
        | KvOp::Cas { key, .. }
        | KvOp::Delete { key }
        | KvOp::DeleteCas { key, .. } => a.key_write(key),
        KvOp::Get { key }
        | KvOp::GetOrEmpty { key }
        | KvOp::CheckIndex { key, .. }
        | KvOp::CheckNotExists { key } => a.key_read(key),
        // Consul: taking or freeing a lock is a write of its key, checking
        // the holder a read.
        KvOp::Lock { key, .. } | KvOp::Unlock { key, .. } => a.key_write(key),
        KvOp::CheckSession { key, .. } => a.key_read(key),
        // The session and snapshot routes build these, never a client's txn;
        // should one come through here, only an operator may run it.
        KvOp::SessionCreate { .. }
        | KvOp::SessionRenew { .. }
        | KvOp::SessionDestroy { .. }
        | KvOp::Restore { .. } => a.operator(crate::acl::Access::Write),
    })
}

fn row(t: &ReadTables, key: &str) -> Option<KvEntry> {
    t.get(key).ok().and_then(|l| l.value)
}

fn rows(t: &ReadTables, prefix: &str) -> Vec<KvEntry> {
    let mut out = Vec::new();
    let _ = t.list_each(prefix, |e| out.push(e));
    out
}

/// An ACL request, decoded from its method and path (after `/v1/acl/`)
/// before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRoute {
    /// `PUT /v1/acl/bootstrap`.
    Bootstrap,
    /// `GET /v1/acl/token/self`.
    TokenSelf,
    /// `GET /v1/acl/policies`.
    ListPolicies,
    /// `GET /v1/acl/tokens`.
    ListTokens,
    /// `PUT /v1/acl/policy`.
    CreatePolicy,
    /// `GET /v1/acl/policy/name/<name>`.
    PolicyByName(String),
    /// `GET /v1/acl/policy/<id>`.
    ReadPolicy(String),
    /// `PUT /v1/acl/policy/<id>`.
    UpdatePolicy(String),
    /// `DELETE /v1/acl/policy/<id>`.
    DeletePolicy(String),
    /// `PUT /v1/acl/token`.
    CreateToken,
    /// `GET /v1/acl/token/<accessor>`.
    ReadToken(String),
    /// `PUT /v1/acl/token/<accessor>`.
    UpdateToken(String),
    /// `DELETE /v1/acl/token/<accessor>`.
    DeleteToken(String),
}

impl AclRoute {
    /// True if the request carries a JSON body.
    pub fn has_body(&self) -> bool {
        matches!(
            self,
            AclRoute::CreatePolicy
                | AclRoute::UpdatePolicy(_)
                | AclRoute::CreateToken
                | AclRoute::UpdateToken(_)
        )
    }
}

/// Decodes an ACL route. `Err` is the answer: 404 for an unknown path,
/// 405 for another method. Pure: the fuzz target `http` drives it.
pub fn decode_route(method: &Method, rest: &str) -> Result<AclRoute, ApiError> {
    let decoded: Vec<String> = rest.split('/').map(decode).collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let put = *method == Method::PUT || *method == Method::POST;
    let get = *method == Method::GET || *method == Method::HEAD;
    let del = *method == Method::DELETE;
    let not_allowed = |allow: &str| {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on /v1/acl/{rest}; use {allow}"),
        )
    };
    let named = |s: &str| {
        if s.is_empty() {
            Err(ApiError::bad("missing an id in the path"))
        } else {
            Ok(s.to_string())
        }
    };
    Ok(match parts.as_slice() {
        ["bootstrap"] if put => AclRoute::Bootstrap,
        ["bootstrap"] => return Err(not_allowed("PUT")),
        ["token", "self"] if get => AclRoute::TokenSelf,
        ["token", "self"] => return Err(not_allowed("GET")),
        ["policies"] if get => AclRoute::ListPolicies,
        ["tokens"] if get => AclRoute::ListTokens,
        ["policies" | "tokens"] => return Err(not_allowed("GET")),
        ["policy"] if put => AclRoute::CreatePolicy,
        ["token"] if put => AclRoute::CreateToken,
        ["policy" | "token"] => return Err(not_allowed("PUT")),
        ["policy", "name", name] if get => AclRoute::PolicyByName(named(name)?),
        ["policy", "name", _] => return Err(not_allowed("GET")),
        ["policy", id] if get => AclRoute::ReadPolicy(named(id)?),
        ["policy", id] if put => AclRoute::UpdatePolicy(named(id)?),
        ["policy", id] if del => AclRoute::DeletePolicy(named(id)?),
        ["token", a] if get => AclRoute::ReadToken(named(a)?),
        ["token", a] if put => AclRoute::UpdateToken(named(a)?),
        ["token", a] if del => AclRoute::DeleteToken(named(a)?),
        ["policy" | "token", _] => return Err(not_allowed("GET, PUT, DELETE")),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route /v1/acl/{rest}"),
            ))
        }
    })
}

/// An ACL route's body: a JSON object.
pub fn decode_body(bytes: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the body is not JSON: {e}"))),
    }
}

/// Serves `/v1/acl/<rest>`.
pub async fn handle(state: &AdminState, req: Request<Incoming>, rest: &str) -> Resp {
    if !state.config.acl.enabled {
        return text(StatusCode::UNAUTHORIZED, "ACL support disabled");
    }
    let route = match decode_route(req.method(), rest) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    if route == AclRoute::Bootstrap {
        return bootstrap(state).await;
    }
    let check = AclCheck::of(state, &req).expect("ACLs are on");
    let authz = match check.fresh(state).await {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    if route == AclRoute::TokenSelf {
        return read_token(state, authz.accessor.clone()).await;
    }
    if !authz.is_management() {
        return denied().response();
    }
    let body = if route.has_body() {
        match read_body(req, MAX_BODY, "the request", state.kv.budget()).await {
            Ok(b) => match decode_body(&b) {
                Ok(v) => v,
                Err(e) => return e.response(),
            },
            Err(e) => return e.response(),
        }
    } else {
        Value::Null
    };
    match route {
        AclRoute::Bootstrap | AclRoute::TokenSelf => unreachable!("answered above"),
        AclRoute::ListPolicies => list_policies(state).await,
        AclRoute::ListTokens => list_tokens(state).await,
        AclRoute::CreatePolicy => write_policy(state, None, body).await,
        AclRoute::PolicyByName(name) => match id_of_name(state, &name).await {
            Some(id) => read_policy(state, id).await,
            None => not_found("policy"),
        },
        AclRoute::ReadPolicy(id) => read_policy(state, id).await,
        AclRoute::UpdatePolicy(id) => write_policy(state, Some(id), body).await,
        AclRoute::DeletePolicy(id) => delete_policy(state, &id).await,
        AclRoute::CreateToken => write_token(state, None, body).await,
        AclRoute::ReadToken(a) => read_token(state, a).await,
        AclRoute::UpdateToken(a) => write_token(state, Some(a), body).await,
        AclRoute::DeleteToken(a) => delete_token(state, &a).await,
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn not_found(what: &str) -> Resp {
    text(StatusCode::NOT_FOUND, format!("ACL {what} not found"))
}

/// Reads ACL rows, linearizably.
async fn read<T: Send + 'static>(
    state: &AdminState,
    f: impl FnOnce(&ReadTables) -> T + Send + 'static,
) -> Result<T, Resp> {
    state
        .kv
        .read(Consistency::Linearizable, move |t| Ok(f(t)))
        .await
        .map_err(|e| kv_error(&e, false, state.kv.settings().request_timeout))
}

/// Writes ACL rows in one command; `Ok(false)` when a check rolled it back.
async fn write(state: &AdminState, ops: Vec<KvOp>) -> Result<bool, Resp> {
    let timeout = state.kv.settings().request_timeout;
    match state.kv.write_cluster(ops).await {
        Err(e) => Err(kv_error(&e, true, timeout)),
        Ok(c) => match c.outcome {
            Outcome::Committed(_) => Ok(true),
            Outcome::RolledBack(_) => Ok(false),
            Outcome::QuotaExceeded { size, limit } => {
                Err(crate::http::kv::quota_error(size, limit))
            }
            Outcome::Invalid(reason) => Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the change could not be applied: {reason}"),
            )),
        },
    }
}

fn create(key: String, value: Vec<u8>) -> KvOp {
    KvOp::Cas {
        key,
        value,
        flags: 0,
        index: 0,
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

async fn bootstrap(state: &AdminState) -> Resp {
    let marker = match read(state, |t| row(t, BOOTSTRAP_KEY)).await {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let reset_file = state.data_dir.join(RESET_FILE);
    let refused = |index: u64| {
        text(
            StatusCode::FORBIDDEN,
            format!("Permission denied: ACL bootstrap no longer allowed (reset index: {index})"),
        )
    };
    let index = match &marker {
        None => 0,
        Some(m) => {
            let written = std::fs::read_to_string(&reset_file).unwrap_or_default();
            if written.trim() != m.modify_index.to_string() {
                return refused(m.modify_index);
            }
            m.modify_index
        }
    };
    let accessor = acl::new_uuid();
    let secret = acl::new_uuid();
    let token = TokenRecord {
        accessor: accessor.clone(),
        secret_hash: acl::hash_secret(&secret),
        description: "Bootstrap Token (Global Management)".to_string(),
        policies: vec![MANAGEMENT_POLICY_ID.to_string()],
        create_time: now_rfc3339(),
        expiration_time: None,
    };
    let ops = vec![
        KvOp::Cas {
            key: BOOTSTRAP_KEY.to_string(),
            value: accessor.clone().into_bytes(),
            flags: 0,
            index,
        },
        create(
            format!("{TOKEN_PREFIX}{accessor}"),
            serde_json::to_vec(&token).expect("a token serializes"),
        ),
        create(
            format!("{SECRET_PREFIX}{}", token.secret_hash),
            accessor.clone().into_bytes(),
        ),
    ];
    match write(state, ops).await {
        Err(resp) => resp,
        Ok(false) => {
            let index = read(state, |t| row(t, BOOTSTRAP_KEY).map(|m| m.modify_index))
                .await
                .ok()
                .flatten()
                .unwrap_or(index);
            refused(index)
        }
        Ok(true) => {
            if marker.is_some() {
                let _ = std::fs::remove_file(&reset_file);
                log::warn!("the ACL system was bootstrapped again through {RESET_FILE}");
            }
            read_token_with_secret(state, accessor, Some(secret)).await
        }
    }
}

fn policy_json(p: &PolicyRecord, e: Option<&KvEntry>) -> Value {
    json!({
        "ID": p.id,
        "Name": p.name,
        "Description": p.description,
        "Rules": p.rules,
        "Datacenters": null,
        "Hash": "",
        "CreateIndex": e.map_or(0, |e| e.create_index),
        "ModifyIndex": e.map_or(0, |e| e.modify_index),
    })
}

fn management_policy() -> PolicyRecord {
    PolicyRecord {
        id: MANAGEMENT_POLICY_ID.to_string(),
        name: MANAGEMENT_POLICY_NAME.to_string(),
        description: "Builtin Policy that grants unlimited access".to_string(),
        rules: String::new(),
    }
}

fn parse_row<T: serde::de::DeserializeOwned>(e: &KvEntry) -> Option<T> {
    serde_json::from_slice(e.value.as_deref().unwrap_or_default()).ok()
}

async fn list_policies(state: &AdminState) -> Resp {
    let all = read(state, |t| rows(t, POLICY_PREFIX)).await;
    match all {
        Err(resp) => resp,
        Ok(rows) => {
            let mut out = vec![policy_json(&management_policy(), None)];
            out.extend(
                rows.iter()
                    .filter_map(|e| parse_row::<PolicyRecord>(e).map(|p| policy_json(&p, Some(e)))),
            );
            reply(StatusCode::OK, Value::Array(out))
        }
    }
}

async fn read_policy(state: &AdminState, id: String) -> Resp {
    if id == MANAGEMENT_POLICY_ID {
        return reply(StatusCode::OK, policy_json(&management_policy(), None));
    }
    let key = format!("{POLICY_PREFIX}{id}");
    match read(state, move |t| row(t, &key)).await {
        Err(resp) => resp,
        Ok(Some(e)) => match parse_row::<PolicyRecord>(&e) {
            Some(p) => reply(StatusCode::OK, policy_json(&p, Some(&e))),
            None => not_found("policy"),
        },
        Ok(None) => not_found("policy"),
    }
}

async fn id_of_name(state: &AdminState, name: &str) -> Option<String> {
    if name == MANAGEMENT_POLICY_NAME {
        return Some(MANAGEMENT_POLICY_ID.to_string());
    }
    let key = format!("{POLICY_NAME_PREFIX}{name}");
    read(state, move |t| row(t, &key))
        .await
        .ok()
        .flatten()
        .and_then(|e| String::from_utf8(e.value.unwrap_or_default()).ok())
}

/// A field of a JSON object, its name matched regardless of case, as Go's
/// JSON decoder (and so Consul) matches it: py-consul sends `name`.
fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    let map = body.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn str_field(body: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match field(body, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

/// A policy name as Consul allows it.
fn check_policy_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "Invalid Policy: invalid Name {name:?}: 1 to 128 letters, digits, '-' or '_'"
        )))
    }
}

/// Decodes a policy's body (`path_id`: the id in the path of an update).
/// Pure: the fuzz target `http` drives it.
pub fn decode_policy(path_id: Option<&str>, body: &Value) -> Result<PolicyRecord, ApiError> {
    let name = str_field(body, "Name")?.unwrap_or_default();
    check_policy_name(&name)?;
    if name == MANAGEMENT_POLICY_NAME {
        return Err(ApiError::bad(
            "Invalid Policy: the name global-management is taken",
        ));
    }
    let rules = str_field(body, "Rules")?.unwrap_or_default();
    acl::Rules::parse(&rules).map_err(|e| ApiError::bad(format!("Invalid Policy: {e}")))?;
    let description = str_field(body, "Description")?.unwrap_or_default();
    let body_id = str_field(body, "ID")?.filter(|s| !s.is_empty());
    let id = match (path_id, body_id) {
        (Some(p), Some(b)) if p != b => {
            return Err(ApiError::bad(format!(
                "Policy ID in URL and payload do not match ({p} and {b})"
            )))
        }
        (Some(p), _) => p.to_string(),
        (None, Some(_)) => {
            return Err(ApiError::bad(
                "Cannot specify an ID when creating a policy: the cluster assigns it",
            ))
        }
        (None, None) => acl::new_uuid(),
    };
    if id == MANAGEMENT_POLICY_ID {
        return Err(ApiError::bad(
            "the global-management policy cannot be changed",
        ));
    }
    Ok(PolicyRecord {
        id,
        name,
        description,
        rules,
    })
}

async fn write_policy(state: &AdminState, path_id: Option<String>, body: Value) -> Resp {
    let parsed = decode_policy(path_id.as_deref(), &body);
    let policy = match parsed {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let key = format!("{POLICY_PREFIX}{}", policy.id);
    let old = if path_id.is_some() {
        let key = key.clone();
        match read(state, move |t| row(t, &key)).await {
            Err(resp) => return resp,
            Ok(None) => return not_found("policy"),
            Ok(Some(e)) => match parse_row::<PolicyRecord>(&e) {
                Some(p) => Some((p, e.modify_index)),
                None => return not_found("policy"),
            },
        }
    } else {
        None
    };
    let value = serde_json::to_vec(&policy).expect("a policy serializes");
    let mut ops = Vec::new();
    match &old {
        None => ops.push(create(key.clone(), value)),
        Some((old, index)) => {
            ops.push(KvOp::Cas {
                key: key.clone(),
                value,
                flags: 0,
                index: *index,
            });
            if old.name != policy.name {
                ops.push(KvOp::Delete {
                    key: format!("{POLICY_NAME_PREFIX}{}", old.name),
                });
            }
        }
    }
    if old.as_ref().is_none_or(|(o, _)| o.name != policy.name) {
        ops.push(create(
            format!("{POLICY_NAME_PREFIX}{}", policy.name),
            policy.id.clone().into_bytes(),
        ));
    }
    match write(state, ops).await {
        Err(resp) => resp,
        Ok(false) => ApiError::bad(format!(
            "Invalid Policy: A Policy with Name {:?} already exists, or the policy changed meanwhile",
            policy.name
        ))
        .response(),
        Ok(true) => read_policy(state, policy.id).await,
    }
}

async fn delete_policy(state: &AdminState, id: &str) -> Resp {
    if id == MANAGEMENT_POLICY_ID {
        return ApiError::bad("the global-management policy cannot be deleted").response();
    }
    let key = format!("{POLICY_PREFIX}{id}");
    let found = {
        let key = key.clone();
        read(state, move |t| row(t, &key)).await
    };
    let policy = match found {
        Err(resp) => return resp,
        Ok(None) => return not_found("policy"),
        Ok(Some(e)) => parse_row::<PolicyRecord>(&e),
    };
    let mut ops = vec![KvOp::Delete { key }];
    if let Some(p) = policy {
        ops.push(KvOp::Delete {
            key: format!("{POLICY_NAME_PREFIX}{}", p.name),
        });
    }
    match write(state, ops).await {
        Err(resp) => resp,
        Ok(_) => reply(StatusCode::OK, json!(true)),
    }
}

/// A token's JSON, with its policies' names (as the store has them).
fn token_json(
    t: &ReadTables,
    token: &TokenRecord,
    e: Option<&KvEntry>,
    secret: Option<&str>,
) -> Value {
    let policies: Vec<Value> = token
        .policies
        .iter()
        .map(|id| {
            let name = if id == MANAGEMENT_POLICY_ID {
                Some(MANAGEMENT_POLICY_NAME.to_string())
            } else {
                row(t, &format!("{POLICY_PREFIX}{id}"))
                    .and_then(|e| parse_row::<PolicyRecord>(&e))
                    .map(|p| p.name)
            };
            json!({"ID": id, "Name": name.unwrap_or_default()})
        })
        .collect();
    let mut v = json!({
        "AccessorID": token.accessor,
        "Description": token.description,
        "Policies": policies,
        "Local": false,
        "CreateTime": token.create_time,
        "Hash": "",
        "CreateIndex": e.map_or(0, |e| e.create_index),
        "ModifyIndex": e.map_or(0, |e| e.modify_index),
    });
    if let Some(s) = secret {
        v["SecretID"] = json!(s);
    } else if token.accessor == ANONYMOUS_ACCESSOR {
        v["SecretID"] = json!(acl::ANONYMOUS_SECRET);
    }
    if let Some(x) = &token.expiration_time {
        v["ExpirationTime"] = json!(x);
    }
    v
}

fn anonymous_token() -> TokenRecord {
    TokenRecord {
        accessor: ANONYMOUS_ACCESSOR.to_string(),
        secret_hash: String::new(),
        description: "Anonymous Token".to_string(),
        policies: Vec::new(),
        create_time: String::new(),
        expiration_time: None,
    }
}

async fn read_token(state: &AdminState, accessor: String) -> Resp {
    read_token_with_secret(state, accessor, None).await
}

async fn read_token_with_secret(
    state: &AdminState,
    accessor: String,
    secret: Option<String>,
) -> Resp {
    let key = format!("{TOKEN_PREFIX}{accessor}");
    let found = read(state, move |t| {
        let e = row(t, &key);
        let token = match &e {
            Some(e) => parse_row::<TokenRecord>(e),
            None if accessor == ANONYMOUS_ACCESSOR => Some(anonymous_token()),
            None => None,
        };
        token.map(|tok| token_json(t, &tok, e.as_ref(), secret.as_deref()))
    })
    .await;
    match found {
        Err(resp) => resp,
        Ok(Some(v)) => reply(StatusCode::OK, v),
        Ok(None) => not_found("token"),
    }
}

async fn list_tokens(state: &AdminState) -> Resp {
    let found = read(state, |t| {
        let mut out: Vec<Value> = rows(t, TOKEN_PREFIX)
            .iter()
            .filter_map(|e| {
                parse_row::<TokenRecord>(e).map(|tok| token_json(t, &tok, Some(e), None))
            })
            .collect();
        if !out.iter().any(|v| v["AccessorID"] == ANONYMOUS_ACCESSOR) {
            out.push(token_json(t, &anonymous_token(), None, None));
        }
        out
    })
    .await;
    match found {
        Err(resp) => resp,
        Ok(out) => reply(StatusCode::OK, Value::Array(out)),
    }
}

/// How a token names a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyLink {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
}

/// A token's body, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFields {
    /// `Description`.
    pub description: String,
    /// `Policies`.
    pub links: Vec<PolicyLink>,
    /// `AccessorID`, if given.
    pub accessor: Option<String>,
    /// `SecretID`, if given.
    pub secret: Option<String>,
    /// `ExpirationTime` (or now plus `ExpirationTTL`), RFC 3339.
    pub expiration_time: Option<String>,
}

/// Decodes a token's body; `create`: the accessor and secret, if given,
/// must be UUIDs, and the expiration is read. Pure: the fuzz target
/// `http` drives it.
pub fn decode_token(body: &Value, create: bool) -> Result<TokenFields, ApiError> {
    let description = str_field(body, "Description")?.unwrap_or_default();
    let items = match field(body, "Policies") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ApiError::bad("Policies must be a list")),
    };
    let mut links = Vec::new();
    for link in &items {
        if !link.is_object() {
            return Err(ApiError::bad("a policy link must be an object"));
        }
        let id = str_field(link, "ID")?.filter(|s| !s.is_empty());
        let name = str_field(link, "Name")?.filter(|s| !s.is_empty());
        links.push(match (id, name) {
            (Some(id), _) => PolicyLink::Id(id),
            (None, Some(name)) => PolicyLink::Name(name),
            (None, None) => return Err(ApiError::bad("a policy link needs an ID or a Name")),
        });
    }
    let accessor = str_field(body, "AccessorID")?.filter(|s| !s.is_empty());
    let secret = str_field(body, "SecretID")?.filter(|s| !s.is_empty());
    let expiration_time = if create {
        for (what, id) in [("AccessorID", &accessor), ("SecretID", &secret)] {
            if id.as_ref().is_some_and(|s| !acl::is_uuid(s)) {
                return Err(ApiError::bad(format!("Invalid {what}: it must be a UUID")));
            }
        }
        expiration(body)?
    } else {
        None
    };
    Ok(TokenFields {
        description,
        links,
        accessor,
        secret,
        expiration_time,
    })
}

/// The ids of a token's policy links; each must exist.
async fn policy_ids(state: &AdminState, links: &[PolicyLink]) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for link in links {
        let id = match link {
            PolicyLink::Id(id) => {
                let exists = id == MANAGEMENT_POLICY_ID || {
                    let key = format!("{POLICY_PREFIX}{id}");
                    read(state, move |t| row(t, &key).is_some())
                        .await
                        .unwrap_or(false)
                };
                if !exists {
                    return Err(ApiError::bad(format!("No such ACL policy with ID {id:?}")));
                }
                id.clone()
            }
            PolicyLink::Name(name) => id_of_name(state, name)
                .await
                .ok_or_else(|| ApiError::bad(format!("No such ACL policy with name {name:?}")))?,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn expiration(body: &Value) -> Result<Option<String>, ApiError> {
    let at = str_field(body, "ExpirationTime")?.filter(|s| !s.is_empty());
    let ttl = str_field(body, "ExpirationTTL")?.filter(|s| !s.is_empty() && s != "0s");
    match (at, ttl) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "Expiration TTL and Expiration Time cannot both be set",
        )),
        (Some(at), None) => {
            let when = humantime::parse_rfc3339_weak(&at).map_err(|e| {
                ApiError::bad(format!(
                    "ExpirationTime {at:?} is not an RFC 3339 time: {e}"
                ))
            })?;
            if when <= std::time::SystemTime::now() {
                return Err(ApiError::bad("ExpirationTime cannot be in the past"));
            }
            Ok(Some(at))
        }
        (None, Some(ttl)) => {
            let d = crate::http::kv::parse_go_duration(&ttl)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ApiError::bad(format!("Invalid ExpirationTTL {ttl:?}")))?;
            let when = std::time::SystemTime::now()
                .checked_add(d)
                .ok_or_else(|| ApiError::bad(format!("Invalid ExpirationTTL {ttl:?}")))?;
            Ok(Some(humantime::format_rfc3339_seconds(when).to_string()))
        }
        (None, None) => Ok(None),
    }
}

async fn write_token(state: &AdminState, path_accessor: Option<String>, body: Value) -> Resp {
    let prepared = async {
        let fields = decode_token(&body, path_accessor.is_none())?;
        let policies = policy_ids(state, &fields.links).await?;
        Ok::<_, ApiError>((fields, policies))
    };
    let (fields, policies) = match prepared.await {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let TokenFields {
        description,
        accessor: body_accessor,
        secret,
        expiration_time,
        ..
    } = fields;
    match path_accessor {
        Some(accessor) => {
            if body_accessor.as_ref().is_some_and(|b| *b != accessor) {
                return ApiError::bad("Token AccessorID in URL and payload do not match")
                    .response();
            }
            let key = format!("{TOKEN_PREFIX}{accessor}");
            let found = {
                let key = key.clone();
                read(state, move |t| row(t, &key)).await
            };
            let (old, index) = match found {
                Err(resp) => return resp,
                Ok(Some(e)) => match parse_row::<TokenRecord>(&e) {
                    Some(t) => (t, e.modify_index),
                    None => return not_found("token"),
                },
                Ok(None) if accessor == ANONYMOUS_ACCESSOR => (anonymous_token(), 0),
                Ok(None) => return not_found("token"),
            };
            if secret.is_some_and(|s| acl::hash_secret(&s) != old.secret_hash) {
                return ApiError::bad("Cannot change a token's SecretID").response();
            }
            let token = TokenRecord {
                description,
                policies,
                ..old
            };
            let ops = vec![KvOp::Cas {
                key,
                value: serde_json::to_vec(&token).expect("a token serializes"),
                flags: 0,
                index,
            }];
            match write(state, ops).await {
                Err(resp) => resp,
                Ok(false) => text(
                    StatusCode::CONFLICT,
                    "the token changed meanwhile; read it and try again",
                ),
                Ok(true) => read_token(state, accessor).await,
            }
        }
        None => {
            let accessor = body_accessor.unwrap_or_else(acl::new_uuid);
            let secret = secret.unwrap_or_else(acl::new_uuid);
            let token = TokenRecord {
                accessor: accessor.clone(),
                secret_hash: acl::hash_secret(&secret),
                description,
                policies,
                create_time: now_rfc3339(),
                expiration_time,
            };
            let ops = vec![
                create(
                    format!("{TOKEN_PREFIX}{accessor}"),
                    serde_json::to_vec(&token).expect("a token serializes"),
                ),
                create(
                    format!("{SECRET_PREFIX}{}", token.secret_hash),
                    accessor.clone().into_bytes(),
                ),
            ];
            match write(state, ops).await {
                Err(resp) => resp,
                Ok(false) => {
                    ApiError::bad("Invalid Token: AccessorID or SecretID already in use").response()
                }
                Ok(true) => read_token_with_secret(state, accessor, Some(secret)).await,
            }
        }
    }
}

async fn delete_token(state: &AdminState, accessor: &str) -> Resp {
    if accessor == ANONYMOUS_ACCESSOR {
        return ApiError::bad("Delete of the anonymous token is not allowed").response();
    }
    let key = format!("{TOKEN_PREFIX}{accessor}");
    let found = {
        let key = key.clone();
        read(state, move |t| row(t, &key)).await
    };
    let token = match found {
        Err(resp) => return resp,
        Ok(None) => return not_found("token"),
        Ok(Some(e)) => parse_row::<TokenRecord>(&e),
    };
    let mut ops = vec![KvOp::Delete { key }];
    if let Some(t) = token {
        ops.push(KvOp::Delete {
            key: format!("{SECRET_PREFIX}{}", t.secret_hash),
        });
    }
    match write(state, ops).await {
        Err(resp) => resp,
        Ok(_) => reply(StatusCode::OK, json!(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_cache_empties_when_its_watch_fires_and_never_serves_an_expired_token() {
        let cache = AclCache::default();
        let (tx, rx) = flume::bounded(1);
        cache.lock().watch = Some(rx.clone());
        let a = Authorizer::with_rules("t", acl::Rules::default(), true);
        cache.put("k", &rx, &a);
        assert_eq!(cache.get("k", &rx), Some(a.clone()));
        // A watch of another generation neither reads nor fills it.
        let (_other_tx, other) = flume::bounded::<()>(1);
        assert_eq!(cache.get("k", &other), None);
        cache.put("j", &other, &a);
        assert_eq!(cache.get("j", &rx), None);
        // An expired token is never served.
        let mut old = a.clone();
        old.expires = Some(SystemTime::now() - Duration::from_secs(1));
        cache.put("old", &rx, &old);
        assert_eq!(cache.get("old", &rx), None);
        // Once an ACL write applies (the watch fires), nothing is served
        // or kept until a new generation starts.
        tx.try_send(()).unwrap();
        assert_eq!(cache.get("k", &rx), None);
        cache.put("k2", &rx, &a);
        assert_eq!(cache.lock().tokens.get("k2"), None);
        // A watch whose replica stopped counts as fired.
        let (tx3, rx3) = flume::bounded::<()>(1);
        cache.lock().watch = Some(rx3.clone());
        cache.put("k", &rx3, &a);
        drop(tx3);
        assert_eq!(cache.get("k", &rx3), None);
    }

    #[test]
    fn routes_decode_as_consul_names_them() {
        let r = |m: Method, p: &str| decode_route(&m, p);
        assert_eq!(r(Method::PUT, "bootstrap"), Ok(AclRoute::Bootstrap));
        assert_eq!(r(Method::GET, "token/self"), Ok(AclRoute::TokenSelf));
        assert_eq!(
            r(Method::GET, "policy/name/gw%2Da"),
            Ok(AclRoute::PolicyByName("gw-a".into()))
        );
        assert_eq!(
            r(Method::DELETE, "token/abc"),
            Ok(AclRoute::DeleteToken("abc".into()))
        );
        assert_eq!(
            r(Method::GET, "bootstrap").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            r(Method::GET, "nope").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            r(Method::GET, "token/").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let body = decode_body(
            br#"{"name": "gw", "rules": "{\"key\": {\"a\": {\"policy\": \"read\"}}}"}"#,
        )
        .unwrap();
        let p = decode_policy(None, &body).unwrap();
        assert_eq!((p.name.as_str(), acl::is_uuid(&p.id)), ("gw", true));
        let bad =
            decode_body(br#"{"Name": "gw", "Rules": "key \"a\" { policy = \"read\" }"}"#).unwrap();
        assert!(decode_policy(None, &bad)
            .unwrap_err()
            .sentence
            .contains("JSON form"));
        let t =
            decode_body(br#"{"Policies": [{"Name": "gw"}, {"ID": "x"}], "ExpirationTTL": "1h"}"#)
                .unwrap();
        let t = decode_token(&t, true).unwrap();
        assert_eq!(
            t.links,
            vec![PolicyLink::Name("gw".into()), PolicyLink::Id("x".into())]
        );
        assert!(t.expiration_time.is_some());
        let t = decode_body(br#"{"SecretID": "not-a-uuid"}"#).unwrap();
        assert!(decode_token(&t, true).is_err());
    }
}
