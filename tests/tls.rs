//! Mutual TLS between peers: a TLS cluster bootstraps, fails over
//! and hands off; a plaintext hello, a certificate of another CA and another
//! node's certificate are refused; plaintext and TLS nodes refuse each other;
//! `quorumd check` verifies the files; the admin API speaks HTTPS and answers
//! 401 to a client without a certificate (but `/health`, `/ready` and
//! `/metrics`), refuses a certificate of another CA, and frees the slots of
//! stalled handshakes; `quorumd kv`, `status` and `member` present
//! `client_cert`, and a follower forwards a membership change to the leader
//! with its own certificate.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::peer::FakePeer;
use common::{
    assert_no_panic, http, https_within, run_bin, tls_client, wait_until, Https, Response, Spec,
    TestCluster, CERTS_SUBDIR,
};
use quorumd::http::TLS_HANDSHAKE_TIMEOUT;
use quorumd::transport::wire::{Frame, Purpose};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(15);

fn others(ids: &[u64], except: &[u64]) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|i| !except.contains(i))
        .collect()
}

fn tls_cluster(name: &str) -> TestCluster {
    TestCluster::new(Spec::new(name, 3).with_tls())
}

fn certs(c: &TestCluster) -> std::path::PathBuf {
    c.dir.path().join(CERTS_SUBDIR)
}

#[test]
fn a_tls_cluster_bootstraps_fails_over_and_hands_off() {
    let mut c = tls_cluster("tls-life");
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    for id in [1, 2, 3] {
        let log = c.stderr(id);
        assert!(log.contains("bootstrap complete"), "node {id}:\n{log}");
        assert!(
            !log.contains("not authenticated"),
            "a TLS node must not warn about plaintext:\n{log}"
        );
    }

    // kill -9 of the leader: the survivors elect a new one over TLS.
    c.signal(leader, libc::SIGKILL);
    c.wait_exit(leader, BOUND);
    let survivors = others(&[1, 2, 3], &[leader]);
    let (second, _) = c.wait_agreed_leader_where(&survivors, |l, t| l != leader && t > term);
    // The killed node rejoins.
    c.start_node(leader);
    c.wait_agreed_leader_where(&[1, 2, 3], |l, _| l == second);

    // SIGTERM of the leader hands leadership to a peer before it exits.
    c.signal(second, libc::SIGTERM);
    assert_eq!(c.wait_exit(second, BOUND), 0);
    let rest = others(&[1, 2, 3], &[second]);
    let (third, _) = c.wait_agreed_leader(&rest);
    assert_ne!(third, second);
    assert!(
        c.stderr(second).contains("leadership handed to node"),
        "{}",
        c.stderr(second)
    );
    for id in [1, 2, 3] {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn peers_without_the_right_certificate_are_refused() {
    let mut c = tls_cluster("tls-refuse");
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let target = others(&[1, 2, 3], &[leader])[0];
    let claimed = others(&[1, 2, 3], &[target])[0];
    let wrong = others(&[1, 2, 3], &[target, claimed])[0];
    let dir = certs(&c);
    let name = |id: u64| format!("node-{id}.{}", c.spec.name);
    let ca = dir.join("ca.pem");
    let cert = |id: u64| dir.join(format!("node-{id}.pem"));
    let key = |id: u64| dir.join(format!("node-{id}.key"));

    // A plaintext hello: the node answers in plaintext why it refuses.
    let mut plain = FakePeer::plain(c.addr(target)).expect("connect");
    match plain.hello(&c.spec.name, claimed, target, Purpose::Probe) {
        Ok(Frame::Reject { reason, .. }) => assert!(reason.contains("requires TLS"), "{reason}"),
        other => panic!("plaintext hello to a TLS node: {other:?}"),
    }

    // A certificate signed by another CA: the TLS handshake fails.
    let other_dir = c.dir.path().join("other-ca");
    let f = run_bin(
        &[
            "certs",
            "--cluster",
            c.config.to_str().expect("utf-8"),
            "--out",
            other_dir.to_str().expect("utf-8"),
        ],
        BOUND,
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let outcome = FakePeer::tls(
        c.addr(target),
        &ca,
        &other_dir.join(format!("node-{claimed}.pem")),
        &other_dir.join(format!("node-{claimed}.key")),
        &name(target),
    )
    .and_then(|mut p| p.hello(&c.spec.name, claimed, target, Purpose::Probe));
    assert!(
        outcome.is_err(),
        "a certificate of another CA must fail the handshake: {outcome:?}"
    );

    // Another node's certificate (signed by the CA) with a hello that claims
    // a different id: refused, naming the name the certificate lacks.
    let mut impostor = FakePeer::tls(
        c.addr(target),
        &ca,
        &cert(wrong),
        &key(wrong),
        &name(target),
    )
    .expect("connect");
    match impostor.hello(&c.spec.name, claimed, target, Purpose::Probe) {
        Ok(Frame::Reject { reason, .. }) => {
            assert!(reason.contains(&name(claimed)), "{reason}")
        }
        other => panic!("node {wrong}'s certificate posing as node {claimed}: {other:?}"),
    }

    // The right certificate for the claimed id is accepted (the harness
    // itself is sound).
    let mut honest = FakePeer::tls(
        c.addr(target),
        &ca,
        &cert(claimed),
        &key(claimed),
        &name(target),
    )
    .expect("connect");
    let answer = honest
        .hello(&c.spec.name, claimed, target, Purpose::Probe)
        .expect("hello");
    assert!(matches!(answer, Frame::Ack { .. }), "{answer:?}");

    // The cluster kept its leader and term throughout.
    let (l, t) = c.wait_agreed_leader(&[1, 2, 3]);
    assert_eq!((l, t), (leader, term), "{}", c.diagnostics());
    let log = c.stderr(target);
    for phrase in ["plaintext dialer", "TLS handshake failed", "does not name"] {
        assert!(
            log.contains(phrase),
            "node {target} must log {phrase:?}:\n{log}"
        );
    }
}

/// A plaintext copy of a TLS cluster's file: same nodes, no `[tls]`.
fn plaintext_copy(c: &TestCluster, quorum_wait: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&c.config).expect("read");
    let text = text[..text.find("\n[tls]").expect("[tls] table")].to_string();
    let text = text.replace(
        &format!("quorum_wait_timeout = \"{}\"", c.spec.quorum_wait_timeout),
        &format!("quorum_wait_timeout = \"{quorum_wait}\""),
    );
    let path = c.dir.path().join("plaintext.toml");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn a_plaintext_node_and_tls_nodes_refuse_each_other() {
    let mut c = tls_cluster("tls-mixed");
    c.start(&[1, 2]);
    c.wait_agreed_leader(&[1, 2]);

    // Node 3 without [tls]: nodes 1 and 2 refuse its probes (with a reason
    // it can read), and it never reaches a quorum.
    let plain = plaintext_copy(&c, "1s");
    let f = run_bin(
        &[
            "run",
            "--cluster",
            plain.to_str().expect("utf-8"),
            "--node-id",
            "3",
        ],
        BOUND,
    );
    assert_eq!(
        f.code, 3,
        "the plaintext node must not count TLS peers:\n{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("requires TLS"),
        "the plaintext node must say why it is refused:\n{}",
        f.stderr
    );
    assert_no_panic("plaintext node 3", &f.stderr);

    // And the other way: the TLS nodes never count a plaintext node 3.
    let stderr = c.dir.path().join("plain-3.stderr");
    let mut plain_node = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--cluster",
            plain.to_str().expect("utf-8"),
            "--node-id",
            "3",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let seen = common::wait_until(BOUND, || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("a TLS dialer reached this node")
    });
    std::thread::sleep(Duration::from_millis(500));
    let alive = [1, 2].iter().any(|&id| c.sees_peer_alive(id, 3, true));
    let _ = plain_node.kill();
    let _ = plain_node.wait();
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        seen,
        "the plaintext node must log the TLS dialers it refuses:\n{log}"
    );
    assert!(!alive, "a TLS node counted the plaintext node 3 alive");
    c.wait_agreed_leader(&[1, 2]);
}

#[test]
fn check_verifies_every_tls_file_and_run_refuses_a_wrong_one() {
    let c = tls_cluster("tls-check");
    let file = c.config.to_str().expect("utf-8").to_string();
    let f = run_bin(&["check", &file], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    for id in [1, 2, 3] {
        assert!(
            f.stdout
                .contains(&format!("names node-{id}.tls-check, signed by the CA")),
            "{}",
            f.stdout
        );
    }

    // Node 2's files hold node 3's pair: check and run both exit 2 naming it.
    let dir = certs(&c);
    for ext in ["pem", "key"] {
        std::fs::copy(
            dir.join(format!("node-3.{ext}")),
            dir.join(format!("node-2.{ext}")),
        )
        .expect("copy");
    }
    let f = run_bin(&["check", &file], BOUND);
    assert_eq!(f.code, 2, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("node-2.pem") && f.stderr.contains("node-2.tls-check"),
        "{}",
        f.stderr
    );
    let f = run_bin(&["run", "--cluster", &file, "--node-id", "2"], BOUND);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(f.stderr.contains("node-2.pem"), "{}", f.stderr);

    // A missing CA.
    std::fs::remove_file(dir.join("ca.pem")).expect("remove");
    let f = run_bin(&["check", &file], BOUND);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(f.stderr.contains("ca.pem"), "{}", f.stderr);
}

fn json_error(r: &Response) -> String {
    let v: Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {}", r.body))
        .to_string()
}

/// A copy of the cluster file whose `client_cert`/`client_key` lines are
/// replaced by `client` (paths relative to the cluster file), or left out.
fn with_client(c: &TestCluster, file: &str, client: Option<(&str, &str)>) -> String {
    let text = std::fs::read_to_string(&c.config).expect("read");
    let mut text: String = text
        .lines()
        .filter(|l| !l.starts_with("client_"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some((cert, key)) = client {
        text.push_str(&format!("client_cert = {cert:?}\nclient_key = {key:?}\n"));
    }
    let path = c.dir.path().join(file);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8").to_string()
}

#[test]
fn the_https_admin_api_needs_a_client_certificate_of_the_ca() {
    let mut c = tls_cluster("tls-admin");
    c.start_all();
    // The harness itself speaks HTTPS with the client certificate.
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let follower = others(&[1, 2, 3], &[leader])[0];
    let dir = certs(&c);
    let ca = dir.join("ca.pem");
    let anonymous = |id: u64| Https {
        config: tls_client(&ca, None),
        server_name: format!("node-{id}.{}", c.spec.name),
    };
    let ask = |tls: &Https, id: u64, method: &str, path: &str, body: &[u8]| {
        https_within(c.admin(id), Some(tls), method, path, body, BOUND)
    };
    let log = c.stderr(follower);
    assert!(
        log.contains(&format!("admin on https://{}", c.admin(follower))),
        "{log}"
    );

    // No client certificate: liveness, readiness and metrics answer; every
    // other route is 401 with a JSON error that says what is missing.
    let none = anonymous(follower);
    for path in ["/health", "/ready", "/metrics"] {
        let r = ask(&none, follower, "GET", path, b"").expect(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    for (method, path, body) in [
        ("GET", "/admin/cluster/status", &b""[..]),
        ("GET", "/admin/cluster/peers", b""),
        ("GET", "/admin/cluster/leader", b""),
        ("GET", "/admin/cluster/members", b""),
        ("GET", "/v1/kv/k", b""),
        ("PUT", "/v1/kv/k", b"stolen"),
        ("PUT", "/v1/txn", b"[]"),
        ("GET", "/no/such/route", b""),
    ] {
        let r = ask(&none, follower, method, path, body).expect(path);
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let e = json_error(&r);
        assert!(
            e.contains(path) && e.contains("client certificate signed by the cluster's CA"),
            "{e}"
        );
    }

    // A client certificate of another CA fails the handshake, even for
    // /health: the node never answers it.
    let other = c.dir.path().join("other-ca");
    let f = run_bin(
        &[
            "certs",
            "--cluster",
            c.config.to_str().expect("utf-8"),
            "--out",
            other.to_str().expect("utf-8"),
        ],
        BOUND,
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let stranger = Https {
        config: tls_client(
            &ca,
            Some((&other.join("client.pem"), &other.join("client.key"))),
        ),
        server_name: format!("node-{follower}.{}", c.spec.name),
    };
    let r = ask(&stranger, follower, "GET", "/health", b"");
    assert!(
        r.is_err(),
        "a certificate of another CA was answered: {r:?}"
    );
    let r = ask(&stranger, follower, "GET", "/v1/kv/k", b"");
    assert!(
        r.is_err(),
        "a certificate of another CA was answered: {r:?}"
    );
    let logged = wait_until(BOUND, || {
        c.stderr(follower)
            .contains("admin API: refused a connection from 127.0.0.1")
    });
    assert!(
        logged,
        "the refusal must be logged:\n{}",
        c.stderr(follower)
    );

    // Plain HTTP to the HTTPS port: one plain answer saying so.
    let r = http(c.admin(follower), "GET", "/health").expect("plain HTTP");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(json_error(&r).contains("HTTPS only"), "{}", r.body);

    // The CLI with client_cert: kv put/get (through every node), status.
    let file = c.config.to_str().expect("utf-8").to_string();
    let node = follower.to_string();
    let f = run_bin(
        &[
            "kv",
            "put",
            "--cluster",
            &file,
            "--node",
            &node,
            "tls/key",
            "sealed",
        ],
        BOUND,
    );
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    let f = run_bin(&["kv", "get", "--cluster", &file, "tls/key"], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    assert_eq!(f.stdout, "sealed\n");
    let f = run_bin(&["status", "--cluster", &file], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .contains(&format!("every member agrees node {leader} leads")),
        "{}",
        f.stdout
    );

    // A membership change sent to a follower is forwarded to the leader
    // over HTTPS, the follower presenting its own node certificate.
    let (addr4, admin4) = (common::free_addr(), common::free_addr());
    let body = format!(r#"{{"id":4,"addr":"{addr4}","admin":"{admin4}"}}"#);
    let r = c.call(follower, "POST", "/admin/cluster/members", body.as_bytes());
    assert_eq!(r.status, 200, "forwarded add: {}", r.body);
    let f = run_bin(&["member", "list", "--cluster", &file], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .lines()
            .any(|l| l.starts_with("4 ") && l.contains("learner")),
        "{}",
        f.stdout
    );
    let r = c.call(follower, "DELETE", "/admin/cluster/members/4", b"");
    assert_eq!(r.status, 200, "forwarded remove: {}", r.body);
    let f = run_bin(&["member", "list", "--cluster", &file], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    assert!(
        !f.stdout.lines().any(|l| l.starts_with("4 ")),
        "{}",
        f.stdout
    );

    // The CLI without client_cert: 401, said in one sentence.
    let bare = with_client(&c, "no-client.toml", None);
    let f = run_bin(&["kv", "get", "--cluster", &bare, "tls/key"], BOUND);
    assert_eq!(f.code, 1, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("401: this command needs `client_cert`")
            && f.stderr.contains("client certificate"),
        "{}",
        f.stderr
    );
    // `status` says the same, rather than calling the nodes unreachable:
    // each answered.
    let f = run_bin(&["status", "--cluster", &bare], BOUND);
    assert_eq!(f.code, 1, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("401: this command needs `client_cert`"),
        "{}",
        f.stderr
    );
    assert!(!f.stdout.contains("unreachable"), "{}", f.stdout);
    assert_eq!(
        f.stdout.matches("401: needs client_cert").count(),
        3,
        "{}",
        f.stdout
    );

    // The CLI with a client certificate of another CA: refused.
    let foreign = with_client(
        &c,
        "foreign-client.toml",
        Some(("other-ca/client.pem", "other-ca/client.key")),
    );
    let f = run_bin(&["kv", "get", "--cluster", &foreign, "tls/key"], BOUND);
    assert_eq!(f.code, 1, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("no node of cluster") && f.stderr.contains("refused"),
        "{}",
        f.stderr
    );
    assert!(!f.stdout.contains("sealed"), "{}", f.stdout);

    // Nothing of this disturbed the cluster.
    assert_eq!(c.wait_agreed_leader(&[1, 2, 3]), (leader, term));
    for id in [1, 2, 3] {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn stalled_tls_handshakes_cannot_hold_the_admin_connection_slots() {
    let mut c = TestCluster::new(Spec::new("tls-stall", 1).with_tls());
    c.start_all();
    c.wait_agreed_leader(&[1]);
    // Every slot of one client address (and the few kept for probes) taken
    // by a client that never finishes its handshake: half send nothing,
    // half the first byte of a ClientHello.
    const STALLED: usize = 256;
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut s = TcpStream::connect(c.admin(1)).expect("connect");
            if i % 2 == 1 {
                s.write_all(&[0x16]).expect("write");
            }
            s
        })
        .collect();
    // Meanwhile a new client is turned away...
    let refused = wait_until(Duration::from_secs(2), || c.get(1, "/health").is_err());
    assert!(refused, "the stalled clients did not fill the slots");
    // ... until the handshake timeout frees the slots.
    let served = wait_until(TLS_HANDSHAKE_TIMEOUT + BOUND, || {
        c.get(1, "/health").is_ok_and(|r| r.status == 200)
    });
    let waited = started.elapsed();
    assert!(
        served,
        "/health never answered again beside stalled TLS clients"
    );
    assert!(
        waited >= TLS_HANDSHAKE_TIMEOUT - Duration::from_millis(500),
        "served after {waited:?}, before the handshake timeout: the slots were not full"
    );
    // The stalled connections were closed by the node.
    let mut closed = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, STALLED, "every stalled client must be closed");
    assert!(c.is_running(1));
    assert_no_panic("node 1", &c.stderr(1));
}
