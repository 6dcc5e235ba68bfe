//! Consul's sessions and locks, process-level: sessions created, renewed
//! and destroyed through followers and the leader, `?acquire=`/`?release=`,
//! TTL expiry, `delete` behavior, lock-delay, the node a session is bound
//! to dying, a leader kill while locks are held, and `/v1/status/*`.

mod common;

use std::time::{Duration, Instant};

use common::{Spec, TestCluster};
use serde_json::Value;

fn cluster(name: &str) -> TestCluster {
    let mut c = TestCluster::new(Spec::new(name, 3));
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    c
}

/// Creates a session on node `id` with `body`; its id.
fn create(c: &TestCluster, id: u64, body: &str) -> String {
    let r = c.call(id, "PUT", "/v1/session/create", body.as_bytes());
    assert_eq!(r.status, 200, "create on node {id}: {}", r.body);
    r.json().unwrap()["ID"].as_str().unwrap().to_string()
}

/// `PUT /v1/kv/<key>?<verb>=<session>`: Consul's `true`/`false`.
fn lock(c: &TestCluster, id: u64, key: &str, verb: &str, session: &str) -> bool {
    let r = c.call(id, "PUT", &format!("/v1/kv/{key}?{verb}={session}"), b"v");
    assert_eq!(r.status, 200, "{verb} {key} on node {id}: {}", r.body);
    match r.body.trim() {
        "true" => true,
        "false" => false,
        other => panic!("{verb} answered {other}"),
    }
}

fn entry(c: &TestCluster, id: u64, key: &str) -> Option<Value> {
    let r = c.call(id, "GET", &format!("/v1/kv/{key}"), b"");
    match r.status {
        200 => Some(r.json().unwrap()[0].clone()),
        404 => None,
        s => panic!("GET {key}: {s} {}", r.body),
    }
}

fn session_info(c: &TestCluster, id: u64, session: &str) -> Vec<Value> {
    let r = c.call(id, "GET", &format!("/v1/session/info/{session}"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().unwrap().as_array().unwrap().clone()
}

#[test]
fn locks_exclude_across_nodes_and_sessions_answer_as_consul_does() {
    let c = cluster("sess-basic");
    // py-consul sends lower-case field names.
    let a = create(&c, 2, r#"{"name": "a", "lockdelay": "0s", "checks": []}"#);
    let b = create(&c, 3, r#"{"Name": "b", "LockDelay": "0s"}"#);
    assert_ne!(a, b);
    // Every node sees both sessions, with Consul's fields.
    for id in [1, 2, 3] {
        let info = session_info(&c, id, &a);
        assert_eq!(info.len(), 1);
        assert_eq!(info[0]["Name"], "a");
        assert_eq!(info[0]["Node"], "node-2");
        assert_eq!(info[0]["Checks"], serde_json::json!([]));
        assert_eq!(info[0]["LockDelay"], 0);
    }
    let list = c.call(1, "GET", "/v1/session/list", b"").json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // The members view counts each node's sessions.
    let members = c
        .call(3, "GET", "/admin/cluster/members", b"")
        .json()
        .unwrap();
    let counts: Vec<(u64, u64)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["sessions"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, vec![(1, 0), (2, 1), (3, 1)]);
    let on3 = c
        .call(1, "GET", "/v1/session/node/node-3", b"")
        .json()
        .unwrap();
    assert_eq!(on3.as_array().unwrap().len(), 1);
    assert_eq!(on3[0]["ID"], b.as_str());

    // Mutual exclusion: a takes the key through node 1; b, from any node, cannot.
    assert!(lock(&c, 1, "job/leader", "acquire", &a));
    assert!(
        lock(&c, 2, "job/leader", "acquire", &a),
        "re-acquire by the holder"
    );
    for id in [1, 2, 3] {
        assert!(!lock(&c, id, "job/leader", "acquire", &b));
        let e = entry(&c, id, "job/leader").unwrap();
        assert_eq!(e["Session"], a.as_str());
        assert_eq!(e["LockIndex"], 1);
    }
    // b cannot release a's lock; a can.
    assert!(!lock(&c, 3, "job/leader", "release", &b));
    assert!(lock(&c, 3, "job/leader", "release", &a));
    assert_eq!(entry(&c, 1, "job/leader").unwrap()["Session"], "");
    // The next holder's LockIndex is higher: a fencing token.
    assert!(lock(&c, 2, "job/leader", "acquire", &b));
    let e = entry(&c, 1, "job/leader").unwrap();
    assert_eq!(
        (e["Session"].as_str(), e["LockIndex"].as_u64()),
        (Some(b.as_str()), Some(2))
    );

    // A plain PUT keeps the holder.
    assert_eq!(c.kv_put(1, "job/leader", b"x").status, 200);
    assert_eq!(entry(&c, 2, "job/leader").unwrap()["Session"], b.as_str());

    // Transactions: check-session and lock.
    let txn = format!(
        r#"[{{"kv": {{"verb": "check-session", "key": "job/leader", "session": "{b}"}}}},
            {{"KV": {{"Verb": "lock", "Key": "job/other", "Value": "eA==", "Session": "{b}"}}}}]"#
    );
    let r = c.call(3, "PUT", "/v1/txn", txn.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let txn = format!(
        r#"[{{"KV": {{"Verb": "check-session", "Key": "job/leader", "Session": "{a}"}}}}]"#
    );
    let r = c.call(3, "PUT", "/v1/txn", txn.as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);

    // Unknown or malformed session ids: Consul's 500, naming the session.
    let unknown = "0b5e3e42-1d8a-4c4e-9a53-2d5f0c8e7a11";
    let r = c.call(1, "PUT", &format!("/v1/kv/x?acquire={unknown}"), b"");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("invalid session"), "{}", r.body);
    let r = c.call(1, "PUT", "/v1/kv/x?acquire=nope", b"");
    assert_eq!(r.status, 500, "{}", r.body);

    // Destroy through a follower frees b's keys; a renew of it is then 404.
    let r = c.call(1, "PUT", &format!("/v1/session/destroy/{b}"), b"");
    assert_eq!((r.status, r.body.trim()), (200, "true"));
    assert_eq!(entry(&c, 3, "job/leader").unwrap()["Session"], "");
    assert_eq!(entry(&c, 3, "job/other").unwrap()["Session"], "");
    let r = c.call(2, "PUT", &format!("/v1/session/renew/{b}"), b"");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.call(2, "PUT", &format!("/v1/session/renew/{a}"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()[0]["ID"], a.as_str());
    assert!(session_info(&c, 1, &b).is_empty());

    // Bad input names the problem.
    let r = c.call(1, "PUT", "/v1/session/create", br#"{"TTL": "5s"}"#);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("TTL"), "{}", r.body);
    let r = c.call(1, "PUT", "/v1/session/create", br#"{"Behavior": "keep"}"#);
    assert_eq!(r.status, 400);

    // /v1/status: the leader's peer address on every node, and the voters.
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        let l = c.call(id, "GET", "/v1/status/leader", b"").json().unwrap();
        assert_eq!(l, Value::String(c.addr(leader).to_string()));
        let p = c.call(id, "GET", "/v1/status/peers", b"").json().unwrap();
        assert_eq!(p.as_array().unwrap().len(), 3);
    }
}

#[test]
fn a_ttl_session_expires_within_its_bounds_and_a_late_renew_is_404() {
    let c = cluster("sess-ttl");
    let started = Instant::now();
    let s = create(&c, 2, r#"{"TTL": "10s", "LockDelay": "0s"}"#);
    assert!(lock(&c, 3, "ttl/key", "acquire", &s));
    let mut gone = None;
    while started.elapsed() < Duration::from_secs(40) {
        if session_info(&c, 1, &s).is_empty() {
            gone = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone = gone.expect("the session never expired");
    // Never before its TTL, and within twice the TTL (plus slack for a busy machine).
    assert!(gone >= Duration::from_secs(10), "expired after {gone:?}");
    assert!(gone <= Duration::from_secs(22), "expired after {gone:?}");
    assert_eq!(entry(&c, 1, "ttl/key").unwrap()["Session"], "");
    let r = c.call(2, "PUT", &format!("/v1/session/renew/{s}"), b"");
    assert_eq!(r.status, 404, "{}", r.body);
    // A renewed session outlives its TTL.
    let t = create(&c, 1, r#"{"TTL": "10s"}"#);
    let until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < until {
        let r = c.call(3, "PUT", &format!("/v1/session/renew/{t}"), b"");
        assert_eq!(r.status, 200, "renewing: {}", r.body);
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn behavior_delete_deletes_the_held_keys() {
    let c = cluster("sess-delete");
    let s = create(&c, 1, r#"{"Behavior": "delete", "LockDelay": "0s"}"#);
    assert!(lock(&c, 2, "svc/a", "acquire", &s));
    assert!(lock(&c, 2, "svc/b", "acquire", &s));
    assert_eq!(c.kv_put(1, "svc/c", b"free").status, 200);
    let r = c.call(3, "PUT", &format!("/v1/session/destroy/{s}"), b"");
    assert_eq!(r.status, 200);
    for id in [1, 2, 3] {
        assert!(entry(&c, id, "svc/a").is_none());
        assert!(entry(&c, id, "svc/b").is_none());
        assert!(entry(&c, id, "svc/c").is_some());
    }
}

#[test]
fn lock_delay_refuses_a_reacquire_for_that_long() {
    let c = cluster("sess-delay");
    let a = create(&c, 1, r#"{"LockDelay": "4s"}"#);
    let b = create(&c, 2, r#"{"LockDelay": "0s"}"#);
    assert!(lock(&c, 1, "d/key", "acquire", &a));
    // The lock-delay starts when the node takes the destroy, after this
    // instant: the key cannot be taken again within 4 s of it, however
    // slowly the answer comes back.
    let asked = Instant::now();
    let r = c.call(1, "PUT", &format!("/v1/session/destroy/{a}"), b"");
    assert_eq!(r.status, 200);
    let destroyed = Instant::now();
    assert!(
        !lock(&c, 3, "d/key", "acquire", &b),
        "taken during the lock-delay"
    );
    let mut took = None;
    while destroyed.elapsed() < Duration::from_secs(20) {
        if lock(&c, 3, "d/key", "acquire", &b) {
            took = Some(asked.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = took.expect("never taken after the lock-delay");
    assert!(
        took >= Duration::from_millis(3950),
        "taken {took:?} after the destroy was asked, within the 4 s lock-delay"
    );
}

#[test]
fn kill_9_of_the_bound_node_releases_its_locks_for_a_waiter_elsewhere() {
    let mut c = cluster("sess-kill");
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let victim = if leader == 3 { 2 } else { 3 };
    let waiter = 6 - leader - victim;
    let held = create(&c, victim, r#"{"LockDelay": "0s"}"#);
    let other = create(&c, waiter, r#"{"LockDelay": "0s"}"#);
    assert!(lock(&c, victim, "k9/key", "acquire", &held));
    assert!(!lock(&c, waiter, "k9/key", "acquire", &other));
    c.signal(victim, 9);
    let killed = Instant::now();
    let mut took = None;
    while killed.elapsed() < Duration::from_secs(40) {
        if lock(&c, waiter, "k9/key", "acquire", &other) {
            took = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = took.unwrap_or_else(|| panic!("never released\n{}", c.diagnostics()));
    eprintln!("kill -9 of the holder's node to the next holder: {took:?}");
    assert!(session_info(&c, leader, &held).is_empty());
}

#[test]
fn a_leader_kill_keeps_every_lock_and_restarts_the_ttls() {
    let mut c = cluster("sess-leader");
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let mut held = Vec::new();
    for (n, &id) in others.iter().enumerate() {
        let s = create(&c, id, r#"{"TTL": "10s", "LockDelay": "0s"}"#);
        assert!(lock(&c, id, &format!("lk/{n}"), "acquire", &s));
        held.push(s);
    }
    // Most of a TTL passes before the leader dies.
    std::thread::sleep(Duration::from_secs(7));
    c.signal(leader, 9);
    let killed = Instant::now();
    c.wait_agreed_leader(&others);
    // The new leader restarts the timers: nothing expires at the old
    // deadline (10 s after the create).
    std::thread::sleep(Duration::from_secs(6).saturating_sub(killed.elapsed()));
    for (n, s) in held.iter().enumerate() {
        for &id in &others {
            let e = entry(&c, id, &format!("lk/{n}")).unwrap();
            assert_eq!(e["Session"], s.as_str(), "lock {n} on node {id}");
            assert_eq!(e["LockIndex"], 1);
        }
    }
    // The restarted timers do run out.
    c.wait_for("the sessions to expire under the new leader", || {
        held.iter()
            .all(|s| session_info(&c, others[0], s).is_empty())
    });
    assert!(killed.elapsed() >= Duration::from_secs(10));
    // Expired sessions freed their locks on every survivor.
    for n in 0..held.len() {
        assert_eq!(
            entry(&c, others[1], &format!("lk/{n}")).unwrap()["Session"],
            ""
        );
    }
}

#[test]
fn sessions_and_locks_travel_in_snapshots_and_survive_restarts() {
    let mut c = TestCluster::new(Spec::new("sess-snap", 3).raft("snapshot_entries = 50"));
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let down = if leader == 3 { 2 } else { 3 };
    let s = create(&c, leader, r#"{"Checks": [], "LockDelay": "0s"}"#);
    assert!(lock(&c, leader, "snap/held", "acquire", &s));
    c.signal(down, libc::SIGTERM);
    assert_eq!(c.wait_exit(down, Duration::from_secs(30)), 0);
    let up = 6 - leader - down;
    for i in 0..150 {
        let id = if i % 2 == 0 { leader } else { up };
        assert_eq!(c.kv_put(id, &format!("fill/{i}"), b"v").status, 200);
    }
    let from = c.stderr(down).len();
    c.start_node(down);
    c.wait_for("the restarted node to install a snapshot", || {
        c.stderr_since(down, from)
            .contains("installed a snapshot at index")
    });
    c.wait_for("the session on the restarted node", || {
        let r = c.call(down, "GET", &format!("/v1/session/info/{s}?stale"), b"");
        r.status == 200 && r.json().unwrap().as_array().is_some_and(|a| a.len() == 1)
    });
    let r = c.call(down, "GET", "/v1/kv/snap/held?stale", b"");
    assert_eq!(r.json().unwrap()[0]["Session"], s.as_str(), "{}", r.body);

    // A restart of the whole cluster keeps them too.
    for id in [1, 2, 3] {
        c.signal(id, libc::SIGTERM);
    }
    for id in [1, 2, 3] {
        assert_eq!(c.wait_exit(id, Duration::from_secs(30)), 0);
    }
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        assert_eq!(session_info(&c, id, &s).len(), 1);
        assert_eq!(entry(&c, id, "snap/held").unwrap()["Session"], s.as_str());
    }
    // And the lock still excludes.
    let other = create(&c, 1, r#"{"Checks": [], "LockDelay": "0s"}"#);
    assert!(!lock(&c, 2, "snap/held", "acquire", &other));
}
