//! `/v1/snapshot`: Consul's backup routes, with quorumd's own file format
//! ([`crate::backup`]).
//!
//! - `GET /v1/snapshot` answers a backup of the whole store. Without
//!   `?stale` it first waits for a ReadIndex round, as a consistent read
//!   does, so it holds every write acknowledged before the request, on
//!   whichever node it lands; with `?stale` it is this node's store as it
//!   is. `X-Consul-Index` is the backup's Raft index.
//! - `PUT /v1/snapshot` restores a backup through Raft (`?force` accepts
//!   one of another cluster). The file is checked whole first; the answer
//!   comes once the restore is applied on this node: 200 with
//!   `{"Index","Keys","Rows","Entries"}`. A damaged file is a 400, another
//!   cluster's a 409, both before anything changes.

use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use log::{info, warn};
use serde_json::json;

use crate::backup::{self, RestoreError};
use crate::http::kv::{consistency, leader_headers};
use crate::http::{
    kv_error, method_not_allowed, param, query_pairs, read_body, reply, text, AdminState,
};
use crate::kv::{Consistency, KvError};
use crate::membership::CLUSTER_ID_KEY;

type Resp = Response<Full<Bytes>>;

const X_CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");

/// One restore at a time on a node.
static RESTORING: AtomicBool = AtomicBool::new(false);

/// Serves `/v1/snapshot`.
pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
    // A backup holds every key and the ACL system's rows, and a restore
    // replaces them all: with `[acl] enabled`, only a management token may
    // do either, as in Consul.
    if matches!(*req.method(), Method::GET | Method::PUT) {
        match crate::http::acl::authorize(state, &req).await {
            Ok(a) if a.is_management() => {}
            Ok(_) => {
                let mut resp = crate::http::acl::denied().response();
                leader_headers(&mut resp, &state.kv);
                return resp;
            }
            Err(e) => return e.response(),
        }
    }
    let mut resp = match *req.method() {
        Method::GET => save(state, &req).await,
        Method::PUT => restore(state, req).await,
        _ => method_not_allowed("/v1/snapshot", req.method(), "GET, PUT", false),
    };
    leader_headers(&mut resp, &state.kv);
    resp
}

async fn save(state: &AdminState, req: &Request<Incoming>) -> Resp {
    let pairs = query_pairs(req);
    let consistency = match consistency(&pairs) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let kv = &state.kv;
    if consistency == Consistency::Linearizable {
        if let Err(e) = kv.replica().read_index().await {
            return kv_error(&KvError::from(e), false, kv.settings().request_timeout);
        }
    }
    // The snapshot and the file are built in memory: their room comes out
    // of the buffer budget first (about twice the store's bytes, with the
    // rows' framing).
    let store = kv.store().clone();
    let bytes = crate::runtime::unblock(move || store.read(|t| Ok(t.state().bytes))).await;
    let need = bytes.unwrap_or(0).saturating_mul(3).saturating_add(1 << 20);
    let timeout = kv.settings().request_timeout;
    let Some(_share) = kv.budget().reserve(need, timeout).await else {
        return crate::http::kv::budget_busy(kv.budget().capacity());
    };
    let store = kv.store().clone();
    let cluster = state.config.name.clone();
    let node_id = state.node_id;
    let started = std::time::Instant::now();
    let taken =
        crate::runtime::unblock(move || backup::take_backup(&store, &cluster, node_id)).await;
    match taken {
        Ok(bytes) => {
            let meta = backup::decode(&bytes).map(|b| b.meta);
            let index = meta.as_ref().map_or(0, |m| m.index);
            info!(
                "backup served: index {index}, {} bytes, in {} ms",
                bytes.len(),
                started.elapsed().as_millis()
            );
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(X_CONSUL_INDEX, HeaderValue::from(index));
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot take a backup: {e}"),
        ),
    }
}

/// The largest backup a restore takes: the store's cap, with room for the
/// file's own structure (about 40 bytes a key) and the reserved rows.
fn max_backup_bytes(max_store_bytes: u64) -> u64 {
    max_store_bytes.saturating_mul(2).saturating_add(16 << 20)
}

async fn restore(state: &AdminState, req: Request<Incoming>) -> Resp {
    let pairs = query_pairs(&req);
    let force = param(&pairs, "force").is_some_and(|v| v.is_empty() || v == "true");
    let kv = &state.kv;
    if RESTORING.swap(true, Ordering::AcqRel) {
        return text(StatusCode::CONFLICT, RestoreError::Busy.to_string());
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RESTORING.store(false, Ordering::Release);
        }
    }
    let _done = Done;
    let limit = max_backup_bytes(kv.settings().max_store_bytes);
    let body = match read_body(req, limit, "the backup", kv.budget()).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let decoded = crate::runtime::unblock(move || backup::decode(&body)).await;
    let backup = match decoded {
        Ok(b) => b,
        Err(why) => {
            return text(
                StatusCode::BAD_REQUEST,
                RestoreError::BadFile(why).to_string(),
            )
        }
    };
    let store = kv.store().clone();
    let id = crate::runtime::unblock(move || {
        store.read(|t| Ok(t.get(CLUSTER_ID_KEY)?.value.and_then(|e| e.value)))
    })
    .await;
    let id = match id {
        Ok(id) => id.map(|v| String::from_utf8_lossy(&v).into_owned()),
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the cluster id: {e}"),
            )
        }
    };
    let started = std::time::Instant::now();
    match backup::restore(kv, &backup, (&state.config.name, id.as_deref()), force).await {
        Ok(done) => {
            info!(
                "backup restored: {} keys ({} rows) of index {} of cluster '{}', as index {} in \
                 {} entries, in {} ms",
                done.keys,
                done.rows,
                backup.meta.index,
                backup.meta.cluster,
                done.index,
                done.entries,
                started.elapsed().as_millis()
            );
            let mut resp = reply(
                StatusCode::OK,
                json!({
                    "Index": done.index,
                    "Keys": done.keys,
                    "Rows": done.rows,
                    "Entries": done.entries,
                }),
            );
            resp.headers_mut()
                .insert(X_CONSUL_INDEX, HeaderValue::from(done.index));
            resp
        }
        Err(RestoreError::Cluster(e)) => {
            warn!("restore failed: {e}");
            kv_error(&e, true, kv.settings().request_timeout)
        }
        Err(e) => {
            warn!("restore refused: {e}");
            let status = match e {
                RestoreError::OtherCluster(_) | RestoreError::Busy => StatusCode::CONFLICT,
                RestoreError::BadFile(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(status, e.to_string())
        }
    }
}
