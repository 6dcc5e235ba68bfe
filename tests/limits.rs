//! Bounded work per request, as a hostile or careless client (or a stranger
//! on the peer port) would try it: a transaction whose reads would copy the
//! store many times, recursive readers, hundreds of long polls, floods of
//! silent peer connections, many large bodies at once, a watch past the
//! compaction floor, and the modes of a node's files.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{assert_no_panic, run_bin, wait_until, Spec, TestCluster};

/// Peak resident memory (`VmHWM`) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Fills the store with `n` keys `<prefix>NNNN` of `size` bytes, as many
/// per transaction as fit its body limit.
fn fill(c: &TestCluster, id: u64, prefix: &str, n: usize, size: usize) {
    let value = b64(&vec![b'x'; size]);
    let per_txn = (300_000 / (value.len() + 100)).clamp(1, 64);
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_txn) {
        let ops: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(r#"{{"KV":{{"Verb":"set","Key":"{prefix}{i:04}","Value":"{value}"}}}}"#)
            })
            .collect();
        let r = c.call(
            id,
            "PUT",
            "/v1/txn",
            format!("[{}]", ops.join(",")).as_bytes(),
        );
        assert_eq!(r.status, 200, "fill: {}", r.body);
    }
}

fn leader_and_term(c: &TestCluster, ids: &[u64]) -> (u64, u64) {
    c.wait_agreed_leader(ids)
}

#[test]
fn a_poison_pill_transaction_fails_whole_on_every_replica_in_bounded_memory() {
    let mut c = TestCluster::new(
        Spec::new("pill", 3)
            .limits("max_response_bytes = \"8MiB\"")
            .limits("max_txn_reads = 2000"),
    );
    c.start_all();
    let (leader, term) = leader_and_term(&c, &[1, 2, 3]);
    // A 2 MiB store: 512 keys of 4 KiB, and 1200 keys of one byte.
    fill(&c, leader, "fill/", 512, 4096);
    fill(&c, leader, "tiny/", 1200, 1);
    let before: Vec<u64> = [1, 2, 3]
        .iter()
        .map(|&id| vm_hwm_kib(c.pid(id).expect("pid")))
        .collect();

    // A set and 63 reads of the big keys: an answer of 63 x 2.9 MB, over
    // max_response_bytes at the third read, before any copy is made.
    let mut ops = vec![format!(
        r#"{{"KV":{{"Verb":"set","Key":"pill","Value":"{}"}}}}"#,
        b64(b"1")
    )];
    ops.extend((0..63).map(|_| r#"{"KV":{"Verb":"get-tree","Key":"fill/"}}"#.to_string()));
    let body = format!("[{}]", ops.join(","));
    let started = Instant::now();
    for id in [leader, leader % 3 + 1] {
        let r = c.call(id, "PUT", "/v1/txn", body.as_bytes());
        assert_eq!(r.status, 409, "through node {id}: {}", r.body);
        let errors = r.json().expect("json")["Errors"].to_string();
        assert!(
            errors.contains("max_response_bytes") && errors.contains("\"OpIndex\":3"),
            "{errors}"
        );
    }
    // Two reads of the tiny keys: 2400 entries of a small answer, over
    // max_txn_reads.
    let tiny = r#"{"KV":{"Verb":"get-tree","Key":"tiny/"}}"#;
    let two = format!("[{},{tiny},{tiny}]", ops[0]);
    let r = c.call(leader, "PUT", "/v1/txn", two.as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("max_txn_reads"), "{}", r.body);
    let latency = started.elapsed();

    // Nothing was written, on any node, and the leader kept its term.
    for id in [1, 2, 3] {
        assert_eq!(c.kv_get(id, "pill", "&stale"), None, "node {id}");
    }
    assert_eq!(leader_and_term(&c, &[1, 2, 3]), (leader, term));
    // Within the limits, the reads are answered with their values.
    let small = format!(
        "[{},{}]",
        ops[0], r#"{"KV":{"Verb":"get-tree","Key":"fill/000"}}"#
    );
    let r = c.call(leader, "PUT", "/v1/txn", small.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json().expect("json")["Results"]
        .as_array()
        .expect("results")
        .len();
    assert_eq!(results, 1 + 10, "the set and fill/0000..fill/0009");

    for (i, id) in [1u64, 2, 3].into_iter().enumerate() {
        let after = vm_hwm_kib(c.pid(id).expect("pid"));
        let grew = after.saturating_sub(before[i]);
        eprintln!("node {id}: VmHWM {} -> {after} KiB (+{grew})", before[i]);
        assert!(grew < 48 * 1024, "node {id}'s peak grew by {grew} KiB");
    }
    eprintln!("three refused transactions answered in {latency:?}");

    // A replica that replays the log (the refused entries included) comes
    // back and agrees.
    let follower = leader % 3 + 1;
    c.signal(follower, libc::SIGKILL);
    c.wait_exit(follower, Duration::from_secs(10));
    c.start_node(follower);
    c.wait_for("the restarted follower to apply the log", || {
        let hash = |id| {
            c.try_status(id)
                .and_then(|s| s["applied_hash"].as_str().map(str::to_string))
        };
        hash(follower).is_some_and(|h| Some(h) == hash(leader))
    });
    // Only the transaction within the limits wrote it.
    assert_eq!(c.kv_get(follower, "pill", "&stale").as_deref(), Some("1"));
    for id in [1, 2, 3] {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn recursive_readers_are_bounded_and_the_leader_keeps_its_term() {
    let mut c = TestCluster::new(
        Spec::new("recurse", 3)
            .limits("max_response_bytes = \"3MiB\"")
            .limits("max_buffered_bytes = \"6MiB\""),
    );
    c.start_all();
    let (leader, term) = leader_and_term(&c, &[1, 2, 3]);
    // 4 MiB: 256 keys of 16 KiB.
    fill(&c, leader, "fill/", 256, 16 * 1024);
    let r = c.call(leader, "GET", "/v1/kv/?recurse", b"");
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_response_bytes"), "{}", r.body);
    let keys = c.call(leader, "GET", "/v1/kv/fill/?keys", b"");
    assert_eq!(keys.status, 200);
    assert_eq!(
        keys.json().expect("json").as_array().expect("keys").len(),
        256
    );

    // Eight readers, five times each, of a 2.2 MB answer (100 keys): two
    // fit the buffer budget at once.
    let before = vm_hwm_kib(c.pid(leader).expect("pid"));
    let started = Instant::now();
    let admin = c.admin(leader);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        common::http_within(
                            admin,
                            "GET",
                            "/v1/kv/fill/00?recurse",
                            Duration::from_secs(30),
                        )
                        .map(|r| r.status)
                        .unwrap_or(0)
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = readers
        .into_iter()
        .flat_map(|t| t.join().expect("reader"))
        .collect();
    let took = started.elapsed();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let grew = vm_hwm_kib(c.pid(leader).expect("pid")).saturating_sub(before);
    eprintln!("40 recursive reads in {took:?}; leader's peak grew by {grew} KiB");
    assert!(grew < 32 * 1024, "the leader's peak grew by {grew} KiB");
    assert_eq!(leader_and_term(&c, &[1, 2, 3]), (leader, term));
}

/// Sends a long poll on `key` and returns the connection, or the status if
/// the node answered within `quick`.
fn long_poll(admin: SocketAddr, key: &str, index: u64, quick: Duration) -> Result<TcpStream, u16> {
    let mut s = TcpStream::connect(admin).expect("connect");
    write!(
        s,
        "GET /v1/kv/{key}?index={index}&wait=30s HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("send");
    s.set_read_timeout(Some(quick)).expect("timeout");
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if n > 12 => Err(std::str::from_utf8(&buf[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)),
        _ => Ok(s),
    }
}

#[test]
fn three_hundred_long_polls_leave_health_and_writes_answering() {
    let mut c = TestCluster::new(
        Spec::new("polls", 1)
            .limits("max_conns_per_client = 400")
            .limits("max_blocking_queries = 250"),
    );
    c.start_all();
    c.wait_agreed_leader(&[1]);
    let r = c.kv_put(1, "w", b"0");
    assert_eq!(r.status, 200);
    let index: u64 = r
        .header("x-consul-index")
        .expect("index")
        .parse()
        .expect("n");
    let admin = c.admin(1);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..300 {
        match long_poll(admin, "w", index, Duration::from_millis(30)) {
            Ok(s) => held.push(s),
            Err(status) => refused.push(status),
        }
    }
    assert!(held.len() >= 250, "{} held", held.len());
    assert!(
        refused.iter().all(|&s| s == 429) && refused.len() == 300 - held.len(),
        "{refused:?}"
    );
    // Beside them, /health answers and a write commits.
    let started = Instant::now();
    let health = c.get(1, "/health").expect("health");
    assert_eq!(health.status, 200);
    assert_eq!(c.kv_put(1, "other", b"1").status, 200);
    eprintln!(
        "{} long polls held, {} refused; /health and a write in {:?}",
        held.len(),
        refused.len(),
        started.elapsed()
    );
    // A write of the key wakes the watchers, with a higher index.
    assert_eq!(c.kv_put(1, "w", b"1").status, 200);
    let mut woke = 0;
    for mut s in held.into_iter().take(20) {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; 2048];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        let got: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("x-consul-index: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if text.starts_with("http/1.1 200") && got > index {
            woke += 1;
        }
    }
    assert_eq!(woke, 20);
}

#[test]
fn a_client_over_its_connection_cap_still_gets_health_but_not_the_api() {
    let mut c = TestCluster::new(Spec::new("percap", 1).limits("max_conns_per_client = 8"));
    c.start_all();
    c.wait_agreed_leader(&[1]);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(c.admin(1)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.get(1, "/health").expect("health").status, 200);
    assert_eq!(c.get(1, "/metrics").expect("metrics").status, 200);
    let r = c.call(1, "PUT", "/v1/kv/k", b"v");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("max_conns_per_client"), "{}", r.body);
    drop(idle);
    assert!(wait_until(Duration::from_secs(5), || c
        .call(1, "PUT", "/v1/kv/k", b"v")
        .status
        == 200));
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // handed to TcpStream, which closes it, or closed here on failure.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let SocketAddr::V4(to) = to else {
            libc::close(fd);
            return Err(std::io::Error::other("IPv4 only"));
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = addr(from, 0);
        let remote = addr(to.ip().octets(), to.port());
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

#[test]
fn silent_strangers_on_the_peer_ports_do_not_slow_a_failover() {
    stranger_flood(Spec::new("strangers", 3));
}

#[test]
fn silent_strangers_on_tls_peer_ports_do_not_slow_a_failover() {
    stranger_flood(Spec::new("tls-strangers", 3).with_tls());
}

fn stranger_flood(spec: Spec) {
    let mut c = TestCluster::new(spec);
    c.start_all();
    let (leader, _) = leader_and_term(&c, &[1, 2, 3]);
    // 64 silent connections per peer port from a stranger's address, each
    // reopened as soon as the node closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = [1u64, 2, 3]
        .iter()
        .map(|&id| {
            let (addr, stop) = (c.addr(id), stop.clone());
            std::thread::spawn(move || {
                let mut socks: Vec<Option<TcpStream>> = (0..64).map(|_| None).collect();
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for s in socks.iter_mut() {
                        let closed = match s {
                            None => true,
                            Some(t) => {
                                t.set_nonblocking(true).ok();
                                let mut b = [0u8; 64];
                                !matches!(t.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                            }
                        };
                        if closed {
                            *s = connect_from([127, 0, 0, 2], addr).ok();
                            opened += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                opened
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    c.signal(leader, libc::SIGKILL);
    c.wait_exit(leader, Duration::from_secs(10));
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (new_leader, _) = c.wait_agreed_leader(&rest);
    let failover = killed.elapsed();
    // The killed node comes back beside the flood and joins.
    c.start_node(leader);
    c.wait_agreed_leader(&[1, 2, 3]);
    let rejoined = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let opened: u64 = floods.into_iter().map(|t| t.join().expect("flood")).sum();
    eprintln!(
        "under a flood of {opened} stranger connections: node {new_leader} led {failover:?} \
         after the kill; the killed node rejoined after {rejoined:?}"
    );
    assert!(
        failover < Duration::from_secs(3),
        "a new leader took {failover:?}"
    );
    assert!(
        rejoined < Duration::from_secs(8),
        "the killed node took {rejoined:?} to rejoin beside the flood"
    );
    assert!(
        !c.stderr(leader).contains("does the peer run without [tls]"),
        "{}",
        c.stderr(leader)
    );
}

#[test]
fn many_large_bodies_at_once_stay_within_the_buffer_budget() {
    let mut c = TestCluster::new(
        Spec::new("bodies", 3)
            .limits("max_buffered_bytes = \"4MiB\"")
            .limits("max_response_bytes = \"2MiB\"")
            .limits("max_conns_per_client = 200")
            .store("request_timeout = \"60s\""),
    );
    c.start_all();
    let (leader, term) = leader_and_term(&c, &[1, 2, 3]);
    let before = vm_hwm_kib(c.pid(leader).expect("pid"));
    let admin = c.admin(leader);
    let started = Instant::now();
    let writers: Vec<_> = (0..150)
        .map(|i| {
            std::thread::spawn(move || {
                common::http_body(
                    admin,
                    "PUT",
                    &format!("/v1/kv/big/{i:03}"),
                    &vec![b'b'; 512 * 1024],
                )
                .map(|r| (r.status, r.body))
                .unwrap_or_else(|e| (0, e.to_string()))
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = writers
        .into_iter()
        .map(|t| t.join().expect("writer"))
        .collect();
    let took = started.elapsed();
    let mut kinds: Vec<String> = answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .map(|(s, b)| format!("{s} {}", b.trim()))
        .collect();
    kinds.sort();
    kinds.dedup();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    let grew = vm_hwm_kib(c.pid(leader).expect("pid")).saturating_sub(before);
    let (_, term_after) = leader_and_term(&c, &[1, 2, 3]);
    eprintln!(
        "150 bodies of 512 KiB in {took:?}: {ok} stored, {busy} busy, terms {term} -> \
         {term_after}; leader's peak +{grew} KiB; other answers: {kinds:#?}"
    );
    // Memory is what the budget bounds: 4 MiB of bodies at once, and the
    // Raft log and messages of the writes admitted.
    assert!(grew < 96 * 1024, "the leader's peak grew by {grew} KiB");
    // Every answer is a success, a refusal that says the node is busy, or
    // an honest "unknown outcome"; nothing claims a failure that happened.
    for (status, body) in &answers {
        assert!(
            matches!(status, 200 | 503 | 0)
                || (*status == 500 && body.contains("may or may not have been applied")),
            "{status} {body}"
        );
    }
    assert!(ok > 0, "{kinds:#?}");
    // And the nodes agree on what was stored.
    c.wait_for("every node to apply the same log", || {
        let hashes: Vec<Option<String>> = [1, 2, 3]
            .iter()
            .map(|&id| {
                c.try_status(id)
                    .and_then(|s| s["applied_hash"].as_str().map(str::to_string))
            })
            .collect();
        hashes[0].is_some() && hashes.iter().all(|h| *h == hashes[0])
    });
}

#[test]
fn a_watch_on_one_key_blocks_past_the_compaction_floor() {
    let mut c = TestCluster::new(Spec::new("floor", 1).raft("snapshot_entries = 20"));
    c.start_all();
    c.wait_agreed_leader(&[1]);
    let r = c.kv_put(1, "watched", b"v");
    let index: u64 = r
        .header("x-consul-index")
        .expect("index")
        .parse()
        .expect("n");
    // Deletes and writes until the log is compacted past the key's index.
    for i in 0..60 {
        assert_eq!(c.kv_put(1, &format!("churn/{i}"), b"x").status, 200);
        assert_eq!(
            c.call(1, "DELETE", &format!("/v1/kv/churn/{i}"), b"")
                .status,
            200
        );
    }
    c.wait_for("a snapshot past the watched key", || {
        c.try_status(1)
            .and_then(|s| s["snapshot_index"].as_u64())
            .is_some_and(|s| s > index)
    });
    let started = Instant::now();
    let r = c.call(
        1,
        "GET",
        &format!("/v1/kv/watched?index={index}&wait=2s"),
        b"",
    );
    let waited = started.elapsed();
    let got: u64 = r
        .header("x-consul-index")
        .expect("index")
        .parse()
        .expect("n");
    assert_eq!(r.status, 200);
    assert!(
        waited >= Duration::from_millis(1900) || got > index,
        "answered after {waited:?} with index {got} <= {index}: a watch loop would spin"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[test]
fn a_node_started_under_umask_022_keeps_its_files_private_and_certs_keep_the_ca_key_apart() {
    // SAFETY: umask(2) only sets this process's file mode mask; children
    // (the node) inherit it.
    unsafe { libc::umask(0o022) };
    let mut c = TestCluster::new(Spec::new("modes", 1));
    c.start_all();
    c.wait_agreed_leader(&[1]);
    assert_eq!(c.kv_put(1, "secret", b"s3cr3t").status, 200);
    assert_private(&c.data_dir(1));
    assert!(
        c.stderr(1)
            .contains("open to anyone who can reach the admin port"),
        "a node without [tls] must warn:\n{}",
        c.stderr(1)
    );

    let out = c.dir.path().join("mycerts");
    let f = run_bin(
        &[
            "certs",
            "--cluster",
            c.config.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    assert!(!out.join("ca.key").exists(), "ca.key beside the node files");
    let ca_dir = c.dir.path().join("mycerts-ca");
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert!(
        f.stdout
            .contains(&ca_dir.join("ca.key").display().to_string())
            && f.stdout.contains("never"),
        "{}",
        f.stdout
    );
}
