//! `PUT /v1/txn`: Consul's transaction endpoint, restricted to KV verbs.
//!
//! The body is a JSON array of up to 64 `{"KV": {"Verb", "Key", "Value",
//! "Flags", "Index"}}` operations, applied atomically as one Raft entry. A
//! transaction of reads only is served like a read (linearizable unless
//! `?stale`), without a log entry. 200 answers `{"Results", "Errors": null}`;
//! when a check fails nothing is written and 409 answers `{"Results": null,
//! "Errors": [{"OpIndex", "What"}]}`.

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::kv::{budget_busy, consistency, entry_json, leader_headers, quota_error};
use crate::http::{
    kv_error, method_not_allowed, query_pairs, read_body, reply, text, AdminState, ApiError,
};
use crate::store::{check_key, is_reserved, Command, KvOp, Outcome, MAX_TXN_OPS, RESERVED_PREFIX};

type Resp = Response<Full<Bytes>>;

/// Serves `/v1/txn`.
pub async fn handle(state: &AdminState, req: Request<Incoming>) -> Resp {
    let mut resp = serve(state, req).await;
    leader_headers(&mut resp, &state.kv);
    resp
}

async fn serve(state: &AdminState, req: Request<Incoming>) -> Resp {
    if req.method() != Method::PUT {
        return method_not_allowed("/v1/txn", req.method(), "PUT", false);
    }
    let kv = &state.kv;
    let pairs = query_pairs(&req);
    let acl = crate::http::acl::AclCheck::of(state, &req);
    let parsed = async {
        let consistency = consistency(&pairs)?;
        // Consul caps the whole request at the value limit (txn_max_req_len).
        let limit = kv.settings().max_value_bytes;
        let body = read_body(req, limit, "the transaction", kv.budget()).await?;
        Ok::<_, ApiError>((consistency, parse(&body, limit)?))
    };
    let (consistency, ops) = match parsed.await {
        Ok(ok) => ok,
        Err(e) => return e.response(),
    };
    // With ACLs on, one op the token may not run refuses the whole
    // transaction, before anything is proposed.
    if let Some(check) = acl {
        match check.fresh(state).await {
            Ok(a) if crate::http::acl::txn_allowed(&a, &ops) => {}
            Ok(_) => return crate::http::acl::denied().response(),
            Err(e) => return e.response(),
        }
    }
    let budget = kv.budget().clone();
    let timeout = kv.settings().request_timeout;
    let reads = ops.iter().any(|op| {
        matches!(
            op,
            KvOp::Get { .. } | KvOp::GetOrEmpty { .. } | KvOp::GetTree { .. }
        )
    });
    if ops.iter().any(KvOp::is_write) {
        // This node builds the reads' results as the entry applies, up to
        // max_response_bytes, and renders them: room for both first.
        let share = if reads {
            match budget
                .reserve(kv.limits().max_response_bytes.saturating_mul(2), timeout)
                .await
            {
                Some(share) => Some(share),
                None => return budget_busy(budget.capacity()),
            }
        } else {
            None
        };
        match kv.write(ops).await {
            Err(e) => kv_error(&e, true, timeout),
            Ok(committed) if reads => {
                let resp =
                    crate::runtime::unblock(move || answer(committed.outcome, committed.index))
                        .await;
                drop(share);
                resp
            }
            Ok(committed) => answer(committed.outcome, committed.index),
        }
    } else {
        let cmd = Command {
            max_store_bytes: kv.settings().max_store_bytes,
            from_client: true,
            ops,
            reads: kv.read_limits(),
        };
        // Counted first, without copying a value; built and rendered only
        // if it fits, with its share of the buffer budget, off the executor.
        let read = kv
            .read(consistency, move |t| {
                let index = t.state().index;
                let (counted, estimate) = t.evaluate(&cmd, false)?;
                if !matches!(counted, Outcome::Committed(_)) {
                    return Ok(answer(counted, index));
                }
                let Some(share) = budget.reserve_blocking(estimate.saturating_mul(2), timeout)
                else {
                    return Ok(budget_busy(budget.capacity()));
                };
                let (outcome, _) = t.evaluate(&cmd, true)?;
                let resp = answer(outcome, index);
                drop(share);
                Ok(resp)
            })
            .await;
        match read {
            Err(e) => kv_error(&e, false, timeout),
            Ok(resp) => resp,
        }
    }
}

fn answer(outcome: Outcome, index: u64) -> Resp {
    let mut resp = match outcome {
        Outcome::Committed(results) => reply(
            StatusCode::OK,
            json!({
                "Results": results.iter().map(|e| json!({"KV": entry_json(e)})).collect::<Vec<_>>(),
                "Errors": null,
            }),
        ),
        Outcome::RolledBack(errors) => reply(
            StatusCode::CONFLICT,
            json!({
                "Results": null,
                "Errors": errors
                    .iter()
                    .map(|e| json!({"OpIndex": e.op_index, "What": e.what}))
                    .collect::<Vec<_>>(),
            }),
        ),
        Outcome::QuotaExceeded { size, limit } => return quota_error(size, limit),
        Outcome::Invalid(reason) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the transaction could not be applied: {reason}"),
            )
        }
    };
    resp.headers_mut().insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index.max(1)),
    );
    resp
}

fn bad(sentence: String) -> ApiError {
    ApiError::bad(sentence)
}

/// Reads the JSON body into ops; `Err` is the answer to send. Pure: the
/// fuzz target `http` drives it with arbitrary bodies.
pub fn parse(body: &[u8], max_value_bytes: u64) -> Result<Vec<KvOp>, ApiError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("Failed to parse body: {e}")))?;
    let Value::Array(items) = doc else {
        return Err(bad(
            "Failed to parse body: expected a JSON array of operations".into(),
        ));
    };
    if items.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                items.len()
            ),
        ));
    }
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let op = parse_op(i, item, max_value_bytes)?;
        if op.is_write() && is_reserved(op.key()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission denied: operation {i} writes {:?}; keys under {RESERVED_PREFIX} \
                     are reserved for the cluster and read-only",
                    op.key()
                ),
            ));
        }
        ops.push(op);
    }
    Ok(ops)
}

fn parse_op(i: usize, item: &Value, max_value_bytes: u64) -> Result<KvOp, ApiError> {
    let Some(obj) = item.as_object() else {
        return Err(bad(format!("operation {i} is not a JSON object")));
    };
    let field = crate::http::session::field;
    let Some(kv) = field(obj, "KV") else {
        let kinds: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(bad(format!(
            "operation {i} is a {kinds:?} operation; quorumd supports only KV operations"
        )));
    };
    let Some(kv) = kv.as_object() else {
        return Err(bad(format!("operation {i}: \"KV\" is not a JSON object")));
    };
    let field_str = |name: &str| -> Result<String, ApiError> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!(
                "operation {i}: {name} must be a string, not {other}"
            ))),
        }
    };
    let field_u64 = |name: &str| -> Result<u64, ApiError> {
        match field(kv, name) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                bad(format!(
                    "operation {i}: {name} must be an unsigned integer, not {v}"
                ))
            }),
        }
    };
    let verb = field_str("Verb")?;
    let key = field_str("Key")?;
    let tree = matches!(verb.as_str(), "get-tree" | "delete-tree");
    check_key(&key, tree).map_err(|reason| bad(format!("operation {i}: {reason}")))?;
    let value = || -> Result<Vec<u8>, ApiError> {
        let encoded = field_str("Value")?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| bad(format!("operation {i}: Value is not base64: {e}")))?;
        if value.len() as u64 > max_value_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "operation {i}: the value of {} bytes exceeds the {max_value_bytes}-byte limit",
                    value.len()
                ),
            ));
        }
        Ok(value)
    };
    let flags = field_u64("Flags")?;
    let index = field_u64("Index")?;
    Ok(match verb.as_str() {
        "set" => KvOp::Set {
            key,
            value: value()?,
            flags,
        },
        "cas" => KvOp::Cas {
            key,
            value: value()?,
            flags,
            index,
        },
        "get" => KvOp::Get { key },
        "get-or-empty" => KvOp::GetOrEmpty { key },
        "get-tree" => KvOp::GetTree { prefix: key },
        "check-index" => KvOp::CheckIndex { key, index },
        "check-not-exists" => KvOp::CheckNotExists { key },
        "delete" => KvOp::Delete { key },
        "delete-tree" => KvOp::DeleteTree { prefix: key },
        "delete-cas" => KvOp::DeleteCas { key, index },
        "lock" | "unlock" | "check-session" => {
            let session = field_str("Session")?;
            if !crate::session::valid_id(&session) {
                return Err(bad(format!(
                    "operation {i}: verb {verb:?} needs a Session, a UUID; got {session:?}"
                )));
            }
            match verb.as_str() {
                "lock" => KvOp::Lock {
                    key,
                    value: value()?,
                    flags,
                    session,
                    now_ms: crate::session::now_ms(),
                },
                "unlock" => KvOp::Unlock {
                    key,
                    value: value()?,
                    flags,
                    session,
                },
                _ => KvOp::CheckSession { key, session },
            }
        }
        "" => return Err(bad(format!("operation {i}: missing Verb"))),
        other => return Err(bad(format!("operation {i}: unknown verb {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_with_consul_field_names() {
        let body = br#"[
            {"KV": {"Verb": "set", "Key": "a", "Value": "dGVzdA==", "Flags": 7}},
            {"KV": {"Verb": "cas", "Key": "a", "Value": null, "Index": 3}},
            {"KV": {"Verb": "get-tree", "Key": ""}},
            {"KV": {"Verb": "delete-cas", "Key": "b", "Index": 9, "Namespace": "default"}}
        ]"#;
        let ops = parse(body, 1024).unwrap();
        assert_eq!(
            ops[0],
            KvOp::Set {
                key: "a".into(),
                value: b"test".to_vec(),
                flags: 7
            }
        );
        assert!(matches!(&ops[1], KvOp::Cas { index: 3, value, .. } if value.is_empty()));
        assert_eq!(ops[2], KvOp::GetTree { prefix: "".into() });
        assert_eq!(
            ops[3],
            KvOp::DeleteCas {
                key: "b".into(),
                index: 9
            }
        );
    }

    #[test]
    fn bad_transactions_name_the_problem() {
        let status_and_body = |body: &[u8]| {
            let e = parse(body, 4).unwrap_err();
            (e.status.as_u16(), e.sentence)
        };
        let (code, text) = status_and_body(b"{}");
        assert_eq!(code, 400);
        assert!(text.contains("JSON array"), "{text}");
        let (code, text) = status_and_body(br#"[{"Node": {"Verb": "set"}}]"#);
        assert_eq!(code, 400);
        assert!(text.contains("only KV"), "{text}");
        let (code, text) = status_and_body(br#"[{"KV": {"Verb": "lock", "Key": "a"}}]"#);
        assert_eq!(code, 400);
        assert!(text.contains("Session"), "{text}");
        let ops = parse(
            br#"[{"kv": {"verb": "check-session", "key": "a", "session": "0b5e3e42-1d8a-4c4e-9a53-2d5f0c8e7a11"}}]"#,
            4,
        )
        .unwrap();
        assert!(matches!(&ops[0], KvOp::CheckSession { key, .. } if key == "a"));
        let (code, text) =
            status_and_body(br#"[{"KV": {"Verb": "set", "Key": "a", "Value": "dGVzdGluZw=="}}]"#);
        assert_eq!(code, 413);
        assert!(text.contains("4-byte limit"), "{text}");
        let (code, _) = status_and_body(br#"[{"KV": {"Verb": "set", "Key": "__quorumd/x"}}]"#);
        assert_eq!(code, 403);
        let (code, text) = status_and_body(br#"[{"KV": {"Verb": "get", "Key": ""}}]"#);
        assert_eq!(code, 400);
        assert!(text.contains("missing key"), "{text}");
        let many = format!(
            "[{}]",
            vec![r#"{"KV": {"Verb": "get", "Key": "a"}}"#; 65].join(",")
        );
        let (code, text) = status_and_body(many.as_bytes());
        assert_eq!(code, 413);
        assert!(text.contains("65 > 64"), "{text}");
    }
}
