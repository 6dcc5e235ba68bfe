//! The metadata store through Consul's KV API, on real 3-node clusters: every
//! route and status, reads and writes across nodes, blocking queries, limits,
//! crashes, restarts and catch-up by snapshot.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_body, Spec, TestCluster, WAIT};
use serde_json::Value;

const IDS: [u64; 3] = [1, 2, 3];

fn formed(spec: Spec) -> (TestCluster, u64) {
    let mut c = TestCluster::new(spec);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&IDS);
    (c, leader)
}

fn others(leader: u64) -> Vec<u64> {
    IDS.iter().copied().filter(|&id| id != leader).collect()
}

fn json(r: &common::Response) -> Value {
    r.json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.body))
}

fn index_of(r: &common::Response) -> u64 {
    r.header("x-consul-index")
        .unwrap_or_else(|| panic!("no X-Consul-Index on {} {}", r.status, r.body))
        .parse()
        .expect("a number")
}

#[test]
fn every_route_answers_as_consul_does() {
    let (c, leader) = formed(Spec::new("kv-routes", 3));
    let f = others(leader);
    let (a, b) = (f[0], f[1]);

    // A follower answers a write itself (no redirect), once it is applied.
    let r = c.kv_put(a, "app/config", b"v1");
    assert_eq!((r.status, r.body.trim()), (200, "true"), "{r:?}");
    let put_index = index_of(&r);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert!(r.header("x-consul-lastcontact").is_some());

    // Read on the other follower: one entry with Consul's fields.
    let r = c.call(b, "GET", "/v1/kv/app/config", b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = &json(&r)[0];
    assert_eq!(e["Key"], "app/config");
    assert_eq!(e["Value"], "djE="); // base64 of "v1"
    assert_eq!(e["Flags"], 0);
    assert_eq!(e["CreateIndex"].as_u64(), Some(put_index));
    assert_eq!(e["ModifyIndex"].as_u64(), Some(put_index));
    assert_eq!(e["LockIndex"], 0);
    assert!(e.get("Session").is_some());
    assert_eq!(index_of(&r), put_index);
    assert_eq!(c.kv_get(b, "app/config", "").as_deref(), Some("v1"));

    // Flags, and a key that needs escaping in the URL.
    let r = c.call(
        leader,
        "PUT",
        "/v1/kv/app/with%20space?flags=42&dc=dc1&token=x",
        b"sp",
    );
    assert_eq!(r.body.trim(), "true");
    let r = c.call(a, "GET", "/v1/kv/app/with%20space", b"");
    assert_eq!(json(&r)[0]["Flags"], 42);
    assert_eq!(json(&r)[0]["Key"], "app/with space");

    // CAS: 0 means "only if absent"; otherwise the ModifyIndex must match.
    let r = c.call(a, "PUT", "/v1/kv/lock?cas=0", b"mine");
    assert_eq!(r.body.trim(), "true");
    let lock_index = index_of(&r);
    assert_eq!(
        c.call(b, "PUT", "/v1/kv/lock?cas=0", b"theirs").body.trim(),
        "false"
    );
    let stale = format!("/v1/kv/lock?cas={}", lock_index - 1);
    assert_eq!(c.call(b, "PUT", &stale, b"theirs").body.trim(), "false");
    let fresh = format!("/v1/kv/lock?cas={lock_index}");
    assert_eq!(c.call(b, "PUT", &fresh, b"theirs").body.trim(), "true");
    assert_eq!(c.kv_get(a, "lock", "").as_deref(), Some("theirs"));

    // Listings: recurse sorted by key, keys folded at the separator.
    for k in ["app/z", "app/sub/one", "app/sub/two", "other"] {
        assert_eq!(c.kv_put(leader, k, b"x").body.trim(), "true");
    }
    let r = c.call(b, "GET", "/v1/kv/app/?recurse", b"");
    let keys: Vec<String> = json(&r)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "app/config",
            "app/sub/one",
            "app/sub/two",
            "app/with space",
            "app/z"
        ]
    );
    let r = c.call(a, "GET", "/v1/kv/app/?keys&separator=/", b"");
    assert_eq!(
        json(&r),
        serde_json::json!(["app/config", "app/sub/", "app/with space", "app/z"])
    );
    // Every key, the cluster's own records under __quorumd/ aside.
    let r = c.call(a, "GET", "/v1/kv/?keys=true", b"");
    let all: Vec<String> = json(&r)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|k| !k.starts_with("__quorumd/"))
        .map(str::to_string)
        .collect();
    assert_eq!(all.len(), 7, "{all:?}");

    // 404s carry an index too, with an empty body.
    for path in [
        "/v1/kv/missing",
        "/v1/kv/nothing/?recurse",
        "/v1/kv/nothing/?keys",
    ] {
        let r = c.call(a, "GET", path, b"");
        assert_eq!((r.status, r.body.as_str()), (404, ""), "{path}");
        assert!(index_of(&r) >= 1);
    }

    // Deletes: plain, cas (0 deletes nothing), recurse.
    assert_eq!(c.call(a, "DELETE", "/v1/kv/other", b"").body.trim(), "true");
    assert_eq!(c.kv_get(b, "other", ""), None);
    assert_eq!(
        c.call(a, "DELETE", "/v1/kv/lock?cas=0", b"").body.trim(),
        "false"
    );
    let r = c.call(a, "GET", "/v1/kv/lock", b"");
    let idx = json(&r)[0]["ModifyIndex"].as_u64().unwrap();
    let del = format!("/v1/kv/lock?cas={idx}");
    assert_eq!(c.call(b, "DELETE", &del, b"").body.trim(), "true");
    assert_eq!(c.kv_get(leader, "lock", ""), None);
    assert_eq!(
        c.call(b, "DELETE", "/v1/kv/app/sub/?recurse", b"")
            .body
            .trim(),
        "true"
    );
    let r = c.call(a, "GET", "/v1/kv/app/?keys", b"");
    assert_eq!(
        json(&r),
        serde_json::json!(["app/config", "app/with space", "app/z"])
    );

    // Stale reads answer from the local replica.
    assert_eq!(c.kv_get(b, "app/z", "&stale").as_deref(), Some("x"));
    assert_eq!(c.kv_get(b, "app/z", "&consistent").as_deref(), Some("x"));

    // Transactions: atomic writes with results, 409 with errors and nothing
    // written, and reads only.
    let txn = r#"[
        {"KV": {"Verb": "set", "Key": "t/a", "Value": "MQ==", "Flags": 5}},
        {"KV": {"Verb": "cas", "Key": "t/b", "Value": "Mg==", "Index": 0}},
        {"KV": {"Verb": "get", "Key": "app/z"}}
    ]"#;
    let r = c.call(a, "PUT", "/v1/txn", txn.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let body = json(&r);
    assert!(body["Errors"].is_null());
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["KV"]["Key"], "t/a");
    assert!(results[0]["KV"]["Value"].is_null(), "writes carry no value");
    assert_eq!(results[0]["KV"]["Flags"], 5);
    assert_eq!(results[2]["KV"]["Value"], "eA==");
    let txn_index = index_of(&r);
    assert_eq!(results[1]["KV"]["ModifyIndex"].as_u64(), Some(txn_index));

    let failing = r#"[
        {"KV": {"Verb": "set", "Key": "t/c", "Value": "Mw=="}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/a"}},
        {"KV": {"Verb": "check-index", "Key": "t/b", "Index": 1}}
    ]"#;
    let r = c.call(b, "PUT", "/v1/txn", failing.as_bytes());
    assert_eq!(r.status, 409, "{r:?}");
    let body = json(&r);
    assert!(body["Results"].is_null());
    let errors = body["Errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["OpIndex"], 1);
    assert!(errors[0]["What"].as_str().unwrap().contains("exists"));
    assert_eq!(errors[1]["OpIndex"], 2);
    assert_eq!(
        c.kv_get(leader, "t/c", ""),
        None,
        "a rolled back txn wrote t/c"
    );

    let reads = r#"[{"KV": {"Verb": "get-tree", "Key": "t/"}}, {"KV": {"Verb": "get-or-empty", "Key": "nope"}}]"#;
    let r = c.call(b, "PUT", "/v1/txn", reads.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json(&r)["Results"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
}

#[test]
fn bad_requests_get_their_status_and_a_sentence() {
    let (c, leader) = formed(Spec::new("kv-errors", 3).store("max_value_bytes = 1000"));
    let f = others(leader)[0];
    let check = |method: &str, path: &str, body: &[u8], status: u16, words: &str| {
        let r = c.call(f, method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(
            r.body.to_lowercase().contains(&words.to_lowercase()),
            "{method} {path}: {:?} does not say {words:?}",
            r.body
        );
    };
    let long = format!("/v1/kv/{}", "k".repeat(1025));
    check("PUT", &long, b"v", 400, "1025 bytes");
    check("PUT", "/v1/kv/a%00b", b"v", 400, "NUL");
    check("PUT", "/v1/kv/", b"v", 400, "missing key");
    check("GET", "/v1/kv/", b"", 400, "missing key");
    check("PUT", "/v1/kv/a?cas=x", b"v", 400, "invalid cas");
    check("PUT", "/v1/kv/a?flags=-1", b"v", 400, "invalid flags");
    check(
        "GET",
        "/v1/kv/a?index=1&wait=soon",
        b"",
        400,
        "invalid wait",
    );
    check("GET", "/v1/kv/a?index=abc", b"", 400, "invalid index");
    check("GET", "/v1/kv/a?stale&consistent", b"", 400, "conflicting");
    check("PUT", "/v1/kv/a?acquire=abc", b"v", 500, "invalid session");
    check("PUT", "/v1/kv/a", &[b'x'; 1001], 413, "1000-byte limit");
    check("PUT", "/v1/kv/__quorumd/cluster_id", b"v", 403, "reserved");
    check(
        "DELETE",
        "/v1/kv/__quorumd/x?recurse",
        b"",
        403,
        "__quorumd/",
    );
    check(
        "PUT",
        "/v1/txn",
        br#"[{"KV": {"Verb": "delete", "Key": "__quorumd/a"}}]"#,
        403,
        "read-only",
    );
    check("PUT", "/v1/txn", b"not json", 400, "parse");
    check("POST", "/v1/kv/a", b"v", 405, "PUT");
    check("GET", "/v1/txn", b"", 405, "PUT");
    // Nothing of it reached the store; a good write still works.
    assert_eq!(c.kv_get(leader, "a", ""), None);
    assert_eq!(c.kv_put(f, "a", &[b'x'; 1000]).status, 200);
    // The reserved prefix is invisible to clients: the cluster id is
    // there, but reads as absent.
    assert_eq!(
        c.call(f, "GET", "/v1/kv/__quorumd/cluster_id", b"").status,
        404
    );
}

#[test]
fn the_quota_refuses_growth_with_507_and_deletes_still_work() {
    let spec = Spec::new("kv-quota", 3)
        .store("max_value_bytes = 1024")
        .store("max_store_bytes = 4096");
    let (c, leader) = formed(spec);
    let f = others(leader)[0];
    let value = [b'v'; 1000];
    for i in 0..4 {
        let r = c.kv_put(f, &format!("k{i}"), &value);
        assert_eq!(r.status, 200, "k{i}: {}", r.body);
    }
    let r = c.kv_put(f, "k4", &value);
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.contains("max_store_bytes = 4096"), "{}", r.body);
    assert_eq!(c.kv_get(leader, "k4", ""), None);
    // Shrinking a key and deleting keys work while full.
    assert_eq!(c.kv_put(f, "k0", b"small").status, 200);
    assert_eq!(c.call(f, "DELETE", "/v1/kv/k1", b"").status, 200);
    assert_eq!(c.kv_put(f, "k4", &value).status, 200);
}

#[test]
fn a_write_acknowledged_by_one_node_is_read_at_once_on_another() {
    let (c, leader) = formed(Spec::new("kv-ryw", 3));
    let f = others(leader);
    for i in 0..40 {
        let value = format!("value-{i}");
        let (writer, reader) = if i % 2 == 0 {
            (f[0], f[1])
        } else {
            (f[1], leader)
        };
        assert_eq!(
            c.kv_put(writer, "ryw", value.as_bytes()).body.trim(),
            "true"
        );
        assert_eq!(
            c.kv_get(reader, "ryw", "").as_deref(),
            Some(value.as_str()),
            "write {i} on node {writer}, read on node {reader}"
        );
    }
}

/// Runs a GET in a thread; returns its handle.
fn spawn_get(
    c: &TestCluster,
    id: u64,
    path: String,
) -> std::thread::JoinHandle<(common::Response, Duration)> {
    let addr = c.admin(id);
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = http_body(addr, "GET", &path, b"").expect("blocking GET");
        (r, started.elapsed())
    })
}

#[test]
fn blocking_queries_return_when_a_write_lands_through_another_node() {
    let (c, leader) = formed(Spec::new("kv-block", 3));
    let f = others(leader);
    let r = c.kv_put(leader, "cfg/a", b"1");
    let index = index_of(&r);

    // A blocking query that times out answers the same result after `wait`.
    let started = Instant::now();
    let r = c.call(
        f[0],
        "GET",
        &format!("/v1/kv/cfg/a?index={index}&wait=300ms"),
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(index_of(&r), index);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < WAIT,
        "a 300ms wait took {waited:?}"
    );

    // One key: a write through the leader wakes a query on a follower.
    let waiter = spawn_get(&c, f[1], format!("/v1/kv/cfg/a?index={index}&wait=30s"));
    std::thread::sleep(Duration::from_millis(300));
    let r = c.kv_put(f[0], "cfg/a", b"2");
    let new_index = index_of(&r);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(index_of(&r), new_index);
    assert!(new_index > index);
    assert_eq!(json(&r)[0]["Value"], "Mg==");
    assert!(took < Duration::from_secs(20), "woke after {took:?}");

    // A prefix: a delete under it wakes the query too (its tombstone
    // carries the index).
    c.kv_put(leader, "cfg/b", b"x");
    let r = c.call(f[1], "GET", "/v1/kv/cfg/?recurse", b"");
    let prefix_index = index_of(&r);
    let waiter = spawn_get(
        &c,
        f[0],
        format!("/v1/kv/cfg/?recurse&index={prefix_index}"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = c.call(leader, "DELETE", "/v1/kv/cfg/b", b"");
    let delete_index = index_of(&r);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(index_of(&r), delete_index, "the delete's index");
    assert_eq!(json(&r).as_array().unwrap().len(), 1);
    assert!(took < Duration::from_secs(20));

    // A write elsewhere does not wake a query on this key.
    let r = c.call(f[0], "GET", "/v1/kv/cfg/a", b"");
    let key_index = index_of(&r);
    let waiter = spawn_get(
        &c,
        f[0],
        format!("/v1/kv/cfg/a?index={key_index}&wait=1500ms"),
    );
    std::thread::sleep(Duration::from_millis(200));
    c.kv_put(leader, "elsewhere", b"x");
    let (r, took) = waiter.join().unwrap();
    assert_eq!(index_of(&r), key_index);
    assert!(
        took >= Duration::from_millis(1500),
        "woken early after {took:?}"
    );
}

#[test]
fn without_a_quorum_writes_fail_with_500_and_stale_reads_still_answer() {
    let spec = Spec::new("kv-noquorum", 3).store("request_timeout = \"1s\"");
    let (mut c, leader) = formed(spec);
    let f = others(leader);
    assert_eq!(c.kv_put(f[0], "k", b"before").status, 200);
    // Keep node f[0]; kill the other two.
    for id in [leader, f[1]] {
        c.signal(id, libc::SIGKILL);
        c.wait_exit(id, WAIT);
    }
    let started = Instant::now();
    let r = c.kv_put(f[0], "k", b"after");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("applied"), "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = c.call(f[0], "GET", "/v1/kv/k", b"");
    assert_eq!(
        r.status, 500,
        "a linearizable read without a leader: {}",
        r.body
    );
    assert_eq!(c.kv_get(f[0], "k", "&stale").as_deref(), Some("before"));
    let r = c.call(f[0], "GET", "/v1/kv/k?stale", b"");
    assert_eq!(r.header("x-consul-knownleader"), Some("false"));
}

#[test]
fn kill_9_of_the_leader_mid_stream_loses_no_acknowledged_write() {
    let (mut c, leader) = formed(Spec::new("kv-crash", 3));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // One writer per node, each writing its own keys in order.
    let writers: Vec<_> = IDS
        .iter()
        .map(|&id| {
            let (addr, acked, stop) = (c.admin(id), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{id}/{i:05}");
                    if let Ok(r) = http_body(addr, "PUT", &format!("/v1/kv/{key}"), key.as_bytes())
                    {
                        if r.status == 200 && r.body.trim() == "true" {
                            acked.lock().unwrap().push(key);
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    c.wait_for("some writes acknowledged", || {
        acked.lock().unwrap().len() >= 60
    });
    c.signal(leader, libc::SIGKILL);
    c.wait_exit(leader, WAIT);
    let at_kill = acked.lock().unwrap().len();
    c.wait_for("writes acknowledged after the kill", || {
        acked.lock().unwrap().len() >= at_kill + 60
    });
    c.start_node(leader);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.wait_agreed_leader(&IDS);
    let acked = acked.lock().unwrap().clone();
    for id in IDS {
        let r = c.call(id, "GET", "/v1/kv/?recurse", b"");
        assert_eq!(r.status, 200, "{r:?}");
        let stored: BTreeMap<String, String> = json(&r)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["Key"].as_str().unwrap().to_string(),
                    e["Value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|k| !stored.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "node {id} lacks {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[test]
fn a_full_restart_keeps_every_key() {
    let (mut c, leader) = formed(Spec::new("kv-restart", 3));
    for i in 0..100 {
        let id = IDS[i % 3];
        assert_eq!(
            c.kv_put(id, &format!("r/{i:03}"), format!("v{i}").as_bytes())
                .status,
            200
        );
    }
    c.call(leader, "DELETE", "/v1/kv/r/050", b"");
    for id in IDS {
        c.signal(id, libc::SIGTERM);
    }
    for id in IDS {
        assert_eq!(c.wait_exit(id, WAIT), 0);
    }
    c.start_all();
    c.wait_agreed_leader(&IDS);
    for id in IDS {
        let r = c.call(id, "GET", "/v1/kv/r/?recurse", b"");
        let entries = json(&r);
        let entries = entries.as_array().unwrap();
        assert_eq!(entries.len(), 99, "node {id}");
        assert!(entries.iter().all(|e| e["Key"] != "r/050"));
        assert_eq!(c.kv_get(id, "r/099", "").as_deref(), Some("v99"));
    }
}

fn metric(c: &TestCluster, id: u64, name: &str) -> u64 {
    let r = c.call(id, "GET", "/metrics", b"");
    r.body
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no metric {name} on node {id}")) as u64
}

#[test]
fn a_node_at_rest_compacts_its_log_to_the_tail_but_a_leader_keeps_what_a_follower_lacks() {
    // A tail of 100 entries; the size rule would compact only past 1,100.
    let spec = Spec::new("kv-rest", 3).raft("snapshot_entries = 1000");
    let (mut c, leader) = formed(spec);
    let f = others(leader);
    let (down, up) = (f[0], f[1]);
    for i in 0..300 {
        assert_eq!(c.kv_put(leader, &format!("r/{i:04}"), b"v").status, 200);
    }
    // At rest (checkpointed, nothing applied for a second), every node
    // keeps only the tail.
    c.wait_for("every node to compact its log down to the tail", || {
        IDS.iter().all(|&id| {
            let s = c.status(id);
            let (applied, compacted) = (
                s["applied_index"].as_u64().unwrap_or(0),
                s["snapshot_index"].as_u64().unwrap_or(0),
            );
            applied >= 300 && compacted + 100 >= applied
        })
    });
    assert!(metric(&c, leader, "quorumd_raft_log_entries ") <= 100);

    // A stopped follower: the leader keeps what it has not matched, the
    // other follower compacts as before.
    let down_last = c.status(down)["commit_index"].as_u64().unwrap();
    c.signal(down, libc::SIGTERM);
    assert_eq!(c.wait_exit(down, WAIT), 0);
    for i in 300..600 {
        assert_eq!(c.kv_put(leader, &format!("r/{i:04}"), b"v").status, 200);
    }
    let last = c.status(leader)["commit_index"].as_u64().unwrap();
    c.wait_for("the running follower to compact at rest", || {
        c.status(up)["snapshot_index"].as_u64().unwrap_or(0) + 100 >= last
    });
    // The leader rested as long as the follower did.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kept = c.status(leader)["snapshot_index"].as_u64().unwrap();
    assert!(
        kept <= down_last,
        "the leader compacted to {kept}, past what node {down} holds ({down_last})"
    );

    // So the stopped node catches up from the log, with no snapshot, and
    // then the leader compacts too.
    c.start_node(down);
    c.wait_agreed_leader(&IDS);
    c.wait_for("the restarted node reports every key", || {
        let r = c.call(down, "GET", "/v1/kv/r/?keys&stale", b"");
        r.status == 200 && json(&r).as_array().map(Vec::len) == Some(600)
    });
    assert_eq!(
        metric(&c, down, "quorumd_raft_snapshots_installed_total "),
        0
    );
    assert_eq!(metric(&c, leader, "quorumd_raft_snapshots_built_total "), 0);
    c.wait_for("the leader to compact once every follower matched", || {
        c.status(leader)["snapshot_index"].as_u64().unwrap_or(0) + 100 >= last
    });
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let spec = Spec::new("kv-snapshot", 3).raft("snapshot_entries = 100");
    let (mut c, leader) = formed(spec);
    let f = others(leader);
    let (down, up) = (f[0], f[1]);
    c.kv_put(leader, "before", b"1");
    let down_last = c.status(down)["commit_index"].as_u64().unwrap();
    c.signal(down, libc::SIGTERM);
    assert_eq!(c.wait_exit(down, WAIT), 0);

    for i in 0..350 {
        let id = if i % 2 == 0 { leader } else { up };
        assert_eq!(c.kv_put(id, &format!("s/{i:04}"), b"v").status, 200);
    }
    c.call(leader, "DELETE", "/v1/kv/s/0000", b"");
    // The leader compacted past what the stopped node holds, so the log
    // alone cannot catch it up.
    let compacted = c.status(leader)["snapshot_index"].as_u64().unwrap();
    assert!(
        compacted > down_last,
        "leader compacted only to {compacted}, node {down} has {down_last}"
    );
    // The log held in memory stays bounded.
    let held = metric(&c, leader, "quorumd_raft_log_entries ");
    assert!(held <= 100 + 10 + 100, "leader holds {held} entries");

    let from = c.stderr(down).len();
    c.start_node(down);
    c.wait_agreed_leader(&IDS);
    c.wait_for("the restarted node reports every key", || {
        let r = c.call(down, "GET", "/v1/kv/s/?keys&stale", b"");
        r.status == 200 && json(&r).as_array().map(Vec::len) == Some(349)
    });
    assert_eq!(c.kv_get(down, "before", "").as_deref(), Some("1"));
    assert_eq!(
        c.kv_get(down, "s/0000", "&stale"),
        None,
        "the delete came with it"
    );
    // How the test knows it came by snapshot: the node counts and logs it.
    assert!(metric(&c, down, "quorumd_raft_snapshots_installed_total ") >= 1);
    assert!(metric(&c, leader, "quorumd_raft_snapshots_built_total ") >= 1);
    assert!(
        c.stderr_since(down, from)
            .contains("installed a snapshot at index"),
        "{}",
        c.stderr_since(down, from)
    );
    // And it keeps following: a new write reaches it.
    c.kv_put(leader, "after", b"2");
    assert_eq!(c.kv_get(down, "after", "").as_deref(), Some("2"));
}
