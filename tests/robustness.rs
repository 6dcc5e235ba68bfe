//! Hostile or unlucky surroundings: ports already taken, garbage on the peer
//! port, a node of another cluster (or with another id) at a peer's address,
//! and HTTP requests the admin API does not serve.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{assert_no_panic, http, Spec, TestCluster};

const EXIT_BOUND: Duration = Duration::from_secs(15);

fn port_in_use_exits_1(which: &str) {
    let mut c = TestCluster::of(&format!("busy-{which}"), 1);
    let addr = if which == "admin" {
        c.admin(1)
    } else {
        c.addr(1)
    };
    let _holder = TcpListener::bind(addr).expect("test binds the port first");
    c.start_node(1);
    let code = c.wait_exit(1, EXIT_BOUND);
    let err = c.stderr(1);
    assert_eq!(
        code, 1,
        "exit code with the {which} port taken; stderr:\n{err}"
    );
    assert!(
        err.contains(&addr.to_string()),
        "stderr must name the {which} address {addr}:\n{err}"
    );
    assert_no_panic("node 1", &err);
}

#[test]
fn admin_port_in_use_exits_1() {
    port_in_use_exits_1("admin");
}

#[test]
fn peer_port_in_use_exits_1() {
    port_in_use_exits_1("peer");
}

/// xorshift64: deterministic junk without a crate.
fn junk(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Connects to `addr`, writes `bytes` (the node may close early, so write
/// errors are fine), and returns whether the node closed the connection
/// within a few seconds.
fn send_and_see_closed(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    let _ = s.write_all(bytes);
    let _ = s.flush();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // whatever the node says (a refusal), keep reading
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true, // reset
        }
    }
    false
}

#[test]
fn garbage_and_oversized_frames_on_peer_port_leave_the_cluster_serving() {
    let mut c = TestCluster::of("garbage", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);

    let mut oversized = vec![0xff, 0xff, 0xff, 0xf0];
    oversized.extend(junk(1024, 7));
    let mut small_bad_frame = vec![0, 0, 0, 8];
    small_bad_frame.extend([0xff; 8]);
    let mut http_text = b"GET /admin/cluster/status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    http_text.extend(junk(4096, 11));

    for id in [1, 2, 3] {
        let addr = c.addr(id);
        for (what, bytes) in [
            ("an oversized length prefix", &oversized),
            ("a small frame of junk", &small_bad_frame),
            ("an HTTP request", &http_text),
        ] {
            assert!(
                send_and_see_closed(addr, bytes),
                "node {id} must close a connection that sends {what}\n{}",
                c.diagnostics()
            );
        }
        // Random bytes and truncated prefixes: the frame length is whatever the
        // junk says, so only the cluster's health is checked afterwards.
        for seed in 1..=3u64 {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(&junk(64 * 1024, seed * 0x9e37_79b9));
            }
        }
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(&[0, 0]);
        }
        drop(TcpStream::connect(addr));
    }

    for id in [1, 2, 3] {
        assert!(
            c.is_running(id),
            "node {id} exited after garbage\n{}",
            c.diagnostics()
        );
    }
    let (l, _) = c.wait_agreed_leader(&[1, 2, 3]);
    assert_eq!(
        l,
        leader,
        "leader changed after garbage\n{}",
        c.diagnostics()
    );
    for id in [1, 2, 3] {
        let r = c.get(id, "/ready").expect("GET /ready");
        assert_eq!(r.status, 200, "/ready on node {id}: {}", r.body);
        for peer in [1, 2, 3].into_iter().filter(|&p| p != id) {
            c.wait_for(&format!("node {id} still sees node {peer} alive"), || {
                c.sees_peer_alive(id, peer, true)
            });
        }
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

/// Starts `impostor` at the address of node 2 of `a` (1 s quorum wait), then
/// node 1 of `a`: node 1 must not count the impostor and must exit 3 naming
/// node 2 as missing.
fn impostor_at_node_2_is_not_counted(mut a: TestCluster, mut impostor: TestCluster, id: u64) {
    impostor.start_node(id);
    impostor.wait_for("the impostor serves /health", || {
        impostor.get(id, "/health").is_ok_and(|r| r.status == 200)
    });
    a.start_node(1);
    let code = a.wait_exit(1, EXIT_BOUND);
    let err = a.stderr(1);
    assert_eq!(
        code,
        3,
        "node 1 must not reach quorum through the impostor; stderr:\n{err}\nimpostor:\n{}",
        impostor.diagnostics()
    );
    let missing = format!("2@{}", a.addr(2));
    assert!(
        err.contains(&missing),
        "stderr must still list {missing}:\n{err}"
    );
    assert_no_panic("node 1", &err);
    assert!(
        impostor.is_running(id),
        "the impostor must keep running\n{}",
        impostor.diagnostics()
    );
    assert_no_panic("impostor", &impostor.stderr(id));
}

#[test]
fn node_of_another_cluster_at_a_peer_address_is_not_counted() {
    let a = TestCluster::new(Spec::new("a", 3).quorum_wait("1s"));
    // Cluster "b": its node 2 sits at "a"'s node 2 address; its node 1 is at
    // an unused port, so it just waits for a quorum it never gets.
    let b = TestCluster::new(Spec::new("b", 3).node_addr(2, a.addr(2)));
    impostor_at_node_2_is_not_counted(a, b, 2);
}

#[test]
fn node_with_another_id_at_a_peer_address_is_not_counted() {
    let a = TestCluster::new(Spec::new("same", 3).quorum_wait("1s"));
    // Same cluster name, but this file puts node 3 at "a"'s node 2 address.
    let other = TestCluster::new(Spec::new("same", 3).node_addr(3, a.addr(2)));
    impostor_at_node_2_is_not_counted(a, other, 3);
}

#[test]
fn unknown_routes_and_bad_methods_get_json_errors() {
    let mut c = TestCluster::of("http", 1);
    c.start_all();
    c.wait_agreed_leader(&[1]);
    let admin = c.admin(1);

    let ok = http(admin, "GET", "/admin/cluster/status").expect("GET status");
    assert_eq!(ok.status, 200);
    let ct = ok.header("content-type").unwrap_or_default();
    assert!(
        ct.contains("application/json"),
        "status content-type {ct:?}"
    );

    for (method, path, want) in [
        ("GET", "/nope", 404),
        ("GET", "/admin/cluster/nope", 404),
        ("GET", "/admin", 404),
        ("POST", "/admin/cluster/status", 405),
        ("DELETE", "/admin/cluster/peers", 405),
        ("PUT", "/admin/cluster/leader", 405),
        ("POST", "/health", 405),
        ("POST", "/ready", 405),
    ] {
        let r = http(admin, method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        let body = r
            .json()
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {}", r.body));
        assert!(
            body["error"].is_string(),
            "{method} {path}: no error field: {body}"
        );
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            ct.contains("application/json"),
            "{method} {path}: content-type {ct:?}"
        );
    }
    assert!(c.is_running(1));
    assert_no_panic("node 1", &c.stderr(1));
}
