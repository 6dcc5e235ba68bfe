//! Mutual TLS between peers (issue 8): a TLS cluster bootstraps, fails over
//! and hands off; a plaintext hello, a certificate of another CA and another
//! node's certificate are refused; plaintext and TLS nodes refuse each other;
//! `quorumd check` verifies the files; `quorumd status` speaks HTTPS with the
//! client certificate.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::peer::FakePeer;
use common::{assert_no_panic, run_bin, Spec, TestCluster, CERTS_SUBDIR};
use quorumd::config::ClusterConfig;
use quorumd::transport::wire::{Frame, Purpose};

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

/// Serves `/admin/cluster/status` over HTTPS with the admin configuration of
/// `quorumd::tls` on a 1-node TLS cluster's admin address: 200 to a client
/// that presented a certificate, 401 otherwise. Returns what it saw.
fn fake_https_admin(
    config: &ClusterConfig,
    listener: TcpListener,
    requests: usize,
) -> std::thread::JoinHandle<Vec<bool>> {
    let tls = quorumd::tls::admin_server_config(config, 1)
        .expect("admin config")
        .expect("tls");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&tls)).expect("conn");
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            let mut reader = BufReader::new(&mut stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            drop(reader);
            let authenticated = quorumd::tls::has_client_cert(&stream.conn);
            seen.push(authenticated);
            let (status, body) = if authenticated {
                (
                    "200 OK",
                    r#"{"node_id":1,"role":"leader","term":2,"leader_id":1,"bootstrap_complete":true,"cluster_size":1,"live_peers":[]}"#,
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"error":"a client certificate is required"}"#,
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
        seen
    })
}

#[test]
fn status_speaks_https_and_presents_the_client_certificate() {
    let c = TestCluster::new(Spec::new("tls-status", 1).with_tls());
    let file = c.config.to_str().expect("utf-8").to_string();
    let config = ClusterConfig::load(Path::new(&file)).expect("config");
    let listener = TcpListener::bind(c.admin(1)).expect("bind admin");
    let server = fake_https_admin(&config, listener, 2);

    let f = run_bin(&["status", "--cluster", &file], BOUND);
    assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
    assert!(
        f.stdout.contains("every node agrees node 1 leads"),
        "{}",
        f.stdout
    );

    // Without client_cert in the file, the admin API answers 401.
    let text = std::fs::read_to_string(&c.config).expect("read");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("client_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&c.config, text).expect("write");
    let f = run_bin(&["status", "--cluster", &file], BOUND);
    assert_eq!(f.code, 1, "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("401"), "{}", f.stderr);

    assert_eq!(server.join().expect("server"), vec![true, false]);
}
