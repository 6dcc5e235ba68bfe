//! `TestCluster`: the harness every process-level test uses.
//!
//! It writes a cluster file into a temporary directory, spawns the real
//! `quorumd` binary once per node on free loopback ports, captures each node's
//! stderr into `<tempdir>/node-N.stderr`, and kills every child it started when
//! it is dropped (by its `Child` handle, never by name).
//!
//! It also carries a tiny blocking HTTP/1.1 client over `std::net::TcpStream`,
//! so the tests talk to the admin API the way a user's `curl` would.
//!
//! Time limits in here are sanity bounds for a busy 2-core CI machine, never
//! performance assertions.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod http;
mod keep_alive;
pub mod peer;
// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use http::{
    http, http_body, http_within, https_within, request_with_headers, tls_client, Https, Response,
};
pub use keep_alive::KeepAlive;

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_quorumd");

/// The binary clusters run: `QUORUMD_BENCH_BIN` when set, else [`BIN`].
/// `make bench` sets it to the binary `make build` made, the one that
/// ships: the functions of the [`BIN`] cargo builds for benches have other
/// names (Rust's symbol hashes cover how cargo built it), so the code layout
/// of `scripts/text-order.ld`, which names them, applies to it only in part.
pub fn bin_under_test() -> PathBuf {
    std::env::var_os("QUORUMD_BENCH_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// How long any single wait in a test may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(20);

/// HTTP timeout when collecting diagnostics (a node may be paused).
const DIAG_TIMEOUT: Duration = Duration::from_millis(500);

/// Timeout of one admin GET of the harness.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// How often `wait_until` re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(15);

// ---------------------------------------------------------------------------
// Free ports
// ---------------------------------------------------------------------------

/// Ports handed out by this test process, so that parallel tests in the same
/// binary never get the same one.
static TAKEN_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Ports are picked below the kernel's ephemeral range (32768-60999 on Linux):
/// the nodes' own outbound connections take their local ports from that range,
/// so a port picked there could be grabbed by some node's client socket between
/// the pick and the bind.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A loopback port that nothing listens on right now and that this process has
/// not handed out before.
pub fn free_port() -> u16 {
    let mut taken = TAKEN_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    // Fall back to letting the kernel choose.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port();
    taken.insert(port);
    port
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ---------------------------------------------------------------------------
// Cluster files
// ---------------------------------------------------------------------------

/// The addresses of one `[[node]]` entry.
#[derive(Clone, Copy, Debug)]
pub struct NodeAddrs {
    /// Peer (Raft) address, the `addr` key.
    pub addr: SocketAddr,
    /// HTTP admin address, the `admin` key.
    pub admin: SocketAddr,
}

/// Everything that goes into a test cluster file.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub quorum_wait_timeout: String,
    pub heartbeat_interval: String,
    pub peer_timeout: String,
    /// `[raft]` settings; `None` leaves the shipped default, so that the
    /// tests exercise the timing users run.
    pub tick_interval: Option<String>,
    pub election_ticks: Option<u32>,
    pub heartbeat_ticks: Option<u32>,
    /// More `key = value` lines for the `[raft]` table.
    pub raft_lines: Vec<String>,
    /// Lines of the `[store]` table (none: the table is left out).
    pub store_lines: Vec<String>,
    /// Lines of the `[limits]` table (none: the table is left out).
    pub limits_lines: Vec<String>,
    /// Mutual TLS between peers: `quorumd certs` writes the certificates
    /// into `<tempdir>/certs` and the file gets a `[tls]` table.
    pub tls: bool,
    pub nodes: BTreeMap<u64, NodeAddrs>,
}

impl Spec {
    /// A cluster of nodes `1..=size` on free ports, tuned for fast tests:
    /// heartbeat 100 ms, peer timeout 500 ms, quorum wait 20 s, and the
    /// shipped Raft timing.
    pub fn new(name: &str, size: u64) -> Spec {
        let nodes = (1..=size)
            .map(|id| {
                (
                    id,
                    NodeAddrs {
                        addr: free_addr(),
                        admin: free_addr(),
                    },
                )
            })
            .collect();
        Spec {
            name: name.to_string(),
            quorum_wait_timeout: "20s".into(),
            heartbeat_interval: "100ms".into(),
            peer_timeout: "500ms".into(),
            tick_interval: None,
            election_ticks: None,
            heartbeat_ticks: None,
            raft_lines: Vec::new(),
            store_lines: Vec::new(),
            limits_lines: Vec::new(),
            tls: false,
            nodes,
        }
    }

    /// A cluster of nodes `1..=size` on free ports as users run it: the
    /// shipped Raft timing, and the health settings of `clusters/*.toml`
    /// (heartbeat 1 s, peer timeout 3 s, quorum wait 30 s). The benches
    /// measure this.
    pub fn shipped(name: &str, size: u64) -> Spec {
        Spec::new(name, size)
            .heartbeat("1s", "3s")
            .quorum_wait("30s")
    }

    /// Adds a `key = value` line to the `[raft]` table.
    pub fn raft(mut self, line: &str) -> Spec {
        self.raft_lines.push(line.to_string());
        self
    }

    /// Adds a `key = value` line to the `[store]` table.
    pub fn store(mut self, line: &str) -> Spec {
        self.store_lines.push(line.to_string());
        self
    }

    /// Adds a `key = value` line to the `[limits]` table.
    pub fn limits(mut self, line: &str) -> Spec {
        self.limits_lines.push(line.to_string());
        self
    }

    /// With mutual TLS between peers (see [`Spec::tls`]).
    pub fn with_tls(mut self) -> Spec {
        self.tls = true;
        self
    }

    pub fn quorum_wait(mut self, d: &str) -> Spec {
        self.quorum_wait_timeout = d.into();
        self
    }

    /// Sets `heartbeat_interval` and `peer_timeout`.
    pub fn heartbeat(mut self, interval: &str, peer_timeout: &str) -> Spec {
        self.heartbeat_interval = interval.into();
        self.peer_timeout = peer_timeout.into();
        self
    }

    /// Puts node `id` at a given peer address (to collide with another cluster).
    pub fn node_addr(mut self, id: u64, addr: SocketAddr) -> Spec {
        self.nodes.get_mut(&id).expect("node id in spec").addr = addr;
        self
    }

    /// The cluster file text, with `data_dir` set to `data_dir`.
    pub fn to_toml(&self, data_dir: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[cluster]");
        let _ = writeln!(s, "name = \"{}\"", self.name);
        let _ = writeln!(s, "quorum_wait_timeout = \"{}\"", self.quorum_wait_timeout);
        let _ = writeln!(s, "heartbeat_interval = \"{}\"", self.heartbeat_interval);
        let _ = writeln!(s, "peer_timeout = \"{}\"", self.peer_timeout);
        let _ = writeln!(s, "data_dir = \"{}\"", data_dir.display());
        let _ = writeln!(s);
        let _ = writeln!(s, "[raft]");
        if let Some(t) = &self.tick_interval {
            let _ = writeln!(s, "tick_interval = \"{t}\"");
        }
        if let Some(n) = self.election_ticks {
            let _ = writeln!(s, "election_ticks = {n}");
        }
        if let Some(n) = self.heartbeat_ticks {
            let _ = writeln!(s, "heartbeat_ticks = {n}");
        }
        for line in &self.raft_lines {
            let _ = writeln!(s, "{line}");
        }
        if !self.store_lines.is_empty() {
            let _ = writeln!(s, "\n[store]");
            for line in &self.store_lines {
                let _ = writeln!(s, "{line}");
            }
        }
        if !self.limits_lines.is_empty() {
            let _ = writeln!(s, "\n[limits]");
            for line in &self.limits_lines {
                let _ = writeln!(s, "{line}");
            }
        }
        for (id, n) in &self.nodes {
            let _ = writeln!(s);
            let _ = writeln!(s, "[[node]]");
            let _ = writeln!(s, "id = {id}");
            let _ = writeln!(s, "addr = \"{}\"", n.addr);
            let _ = writeln!(s, "admin = \"{}\"", n.admin);
        }
        s
    }
}

// ---------------------------------------------------------------------------
// TestCluster
// ---------------------------------------------------------------------------

/// The cluster file's `data_dir`, relative to the test cluster's temp dir.
const DATA_SUBDIR: &str = "data";
/// Where a TLS test cluster's certificates live, relative to its temp dir.
pub const CERTS_SUBDIR: &str = "certs";

/// The `[tls]` table for certificates that `quorumd certs` wrote into `dir`
/// (relative to the cluster file).
pub fn tls_table(dir: &str) -> String {
    format!(
        "\n[tls]\nca = \"{dir}/ca.pem\"\ncert = \"{dir}/node-{{id}}.pem\"\nkey = \"{dir}/node-{{id}}.key\"\n\
         client_cert = \"{dir}/client.pem\"\nclient_key = \"{dir}/client.key\"\n"
    )
}

/// A cluster file in a temp dir plus the node processes started from it.
pub struct TestCluster {
    pub spec: Spec,
    pub dir: TempDir,
    pub config: PathBuf,
    /// The binary the nodes run: [`BIN`] unless [`TestCluster::with_bin`].
    bin: PathBuf,
    children: BTreeMap<u64, Child>,
    /// Exit codes of children already reaped (128 + signal when killed).
    exited: BTreeMap<u64, i32>,
    /// Nodes that run with a cluster file of their own (see
    /// [`TestCluster::use_file`]).
    node_configs: BTreeMap<u64, PathBuf>,
    /// With TLS: the client configuration the harness talks to the admin
    /// API with (the CA, and the `client.pem` of `quorumd certs`).
    admin_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl TestCluster {
    /// Writes the cluster file for `spec`; starts nothing.
    pub fn new(spec: Spec) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("quorumd-test-")
            .tempdir()
            .expect("create temp dir");
        let config = dir.path().join("cluster.toml");
        let data = dir.path().join(DATA_SUBDIR);
        std::fs::write(&config, spec.to_toml(&data)).expect("write cluster file");
        if spec.tls {
            let path = config.to_str().expect("utf-8 path");
            let out = dir.path().join(CERTS_SUBDIR);
            let f = run_bin(
                &[
                    "certs",
                    "--cluster",
                    path,
                    "--out",
                    out.to_str().expect("utf-8"),
                ],
                Duration::from_secs(30),
            );
            assert_eq!(
                f.code, 0,
                "quorumd certs failed:\n{}\n{}",
                f.stdout, f.stderr
            );
            let mut text = std::fs::read_to_string(&config).expect("read cluster file");
            text.push_str(&tls_table(CERTS_SUBDIR));
            std::fs::write(&config, text).expect("write cluster file");
        }
        let admin_tls = spec.tls.then(|| {
            let certs = dir.path().join(CERTS_SUBDIR);
            tls_client(
                &certs.join("ca.pem"),
                Some((&certs.join("client.pem"), &certs.join("client.key"))),
            )
        });
        TestCluster {
            spec,
            dir,
            config,
            bin: bin_under_test(),
            children: BTreeMap::new(),
            exited: BTreeMap::new(),
            node_configs: BTreeMap::new(),
            admin_tls,
        }
    }

    /// Runs the nodes from `bin` instead of [`BIN`], e.g. a [`BinCopy`].
    /// The binary this cluster runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn with_bin(mut self, bin: &Path) -> TestCluster {
        self.bin = bin.to_path_buf();
        self
    }

    /// Writes a cluster file that lists only `members` (of the spec's
    /// nodes), and makes the nodes `ids` run with it: how a cluster that
    /// grows later starts, and how a node added later gets its own entry.
    /// Returns the file's path.
    pub fn use_file(&mut self, ids: &[u64], members: &[u64]) -> PathBuf {
        let mut spec = self.spec.clone();
        spec.nodes.retain(|id, _| members.contains(id));
        let name: Vec<String> = members.iter().map(u64::to_string).collect();
        let path = self
            .dir
            .path()
            .join(format!("cluster-{}.toml", name.join("-")));
        let data = self.dir.path().join(DATA_SUBDIR);
        let mut text = spec.to_toml(&data);
        if spec.tls {
            text.push_str(&tls_table(CERTS_SUBDIR));
        }
        std::fs::write(&path, text).expect("write cluster file");
        for &id in ids {
            self.node_configs.insert(id, path.clone());
        }
        path
    }

    /// The cluster file node `id` runs with.
    pub fn config_of(&self, id: u64) -> &Path {
        self.node_configs.get(&id).unwrap_or(&self.config)
    }

    /// A cluster named `name` of nodes `1..=size` with the test defaults.
    pub fn of(name: &str, size: u64) -> TestCluster {
        TestCluster::new(Spec::new(name, size))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.spec.nodes.keys().copied().collect()
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.spec.nodes[&id].addr
    }

    pub fn admin(&self, id: u64) -> SocketAddr {
        self.spec.nodes[&id].admin
    }

    pub fn stderr_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.stderr"))
    }

    /// Everything node `id` has written to stderr so far (across restarts:
    /// each start appends to the same file).
    pub fn stderr(&self, id: u64) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
    }

    /// What node `id` has written to stderr after the first `from` bytes; pass
    /// `stderr(id).len()` taken before a restart to get only the new run's.
    pub fn stderr_since(&self, id: u64, from: usize) -> String {
        let all = self.stderr(id);
        all.get(from..).unwrap_or_default().to_string()
    }

    /// Node `id`'s own data dir, `<data_dir>/node-<id>` of the cluster file.
    /// It outlives the node, so starting the node again reuses it.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(DATA_SUBDIR).join(format!("node-{id}"))
    }

    /// The pid of node `id` while this cluster has it running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Starts the given nodes, in the order given.
    pub fn start(&mut self, ids: &[u64]) {
        for &id in ids {
            self.start_node(id);
        }
    }

    /// Starts every node of the file, in id order.
    pub fn start_all(&mut self) {
        for id in self.ids() {
            self.start_node(id);
        }
    }

    /// Spawns `quorumd run --cluster FILE --node-id ID` with `RUST_LOG=info`,
    /// stderr appended to `node-ID.stderr`.
    pub fn start_node(&mut self, id: u64) {
        self.start_node_with(id, &[]);
    }

    /// Like [`TestCluster::start_node`], with extra command-line arguments.
    pub fn start_node_with(&mut self, id: u64, extra: &[&str]) {
        self.start_node_env(id, extra, &[]);
    }

    /// Like [`TestCluster::start_node_with`], with extra environment
    /// variables (`NOTIFY_SOCKET`, `JOURNAL_STREAM`, ...).
    pub fn start_node_env(&mut self, id: u64, extra: &[&str], env: &[(&str, &str)]) {
        self.start_node_via(id, &[], extra, env);
    }

    /// Like [`TestCluster::start_node_env`], with the command run through
    /// `launcher` (e.g. `unshare ... sh -c '...; exec "$@"' ...`), which must
    /// exec the node so that the child handle is the node.
    pub fn start_node_via(
        &mut self,
        id: u64,
        launcher: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        assert!(
            !self.is_running(id),
            "node {id} is already running in this test cluster"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path(id))
            .expect("open stderr log");
        let mut command = match launcher.split_first() {
            None => Command::new(&self.bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
        };
        let child = command
            .arg("run")
            .arg("--cluster")
            .arg(self.config_of(id))
            .arg("--node-id")
            .arg(id.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("RUST_LOG_STYLE")
            // Never talk to a service manager the test run itself is under.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn quorumd");
        self.exited.remove(&id);
        self.children.insert(id, child);
    }

    /// Whether node `id` has been started and has not exited yet.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.poll_exit(id);
        self.children.contains_key(&id)
    }

    /// Reaps node `id` if it has exited; returns its exit code if so.
    pub fn poll_exit(&mut self, id: u64) -> Option<i32> {
        if let Some(child) = self.children.get_mut(&id) {
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(&id);
                self.exited.insert(id, exit_code(status));
            }
        }
        self.exited.get(&id).copied()
    }

    /// Sends a signal to node `id` (via its pid; the child must still be ours).
    pub fn signal(&mut self, id: u64, sig: i32) {
        let child = self
            .children
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not running; cannot signal it"));
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for node `id` to exit and returns its exit code (128 + signal if
    /// a signal killed it). Panics with the node's stderr after `timeout`.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> i32 {
        let ok = wait_until(timeout, || self.poll_exit(id).is_some());
        if !ok {
            panic!(
                "node {id} did not exit within {timeout:?}\n{}",
                self.diagnostics()
            );
        }
        self.exited[&id]
    }

    /// How the harness speaks HTTPS to node `id` (`None` without TLS):
    /// the CA, the client certificate, and the node's name.
    pub fn https(&self, id: u64) -> Option<Https> {
        self.admin_tls.as_ref().map(|config| Https {
            config: config.clone(),
            server_name: format!("node-{id}.{}", self.spec.name),
        })
    }

    /// `METHOD path` with `body` on node `id`'s admin address, over HTTPS
    /// with the client certificate on a TLS cluster, each step within
    /// `timeout`.
    pub fn request(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        https_within(
            self.admin(id),
            self.https(id).as_ref(),
            method,
            path,
            body,
            timeout,
        )
    }

    /// GET `path` on node `id`'s admin address.
    pub fn get(&self, id: u64, path: &str) -> std::io::Result<Response> {
        self.request(id, "GET", path, b"", HTTP_TIMEOUT)
    }

    /// `METHOD path` with `body` on node `id`'s admin address; panics if the
    /// node does not answer at all.
    pub fn call(&self, id: u64, method: &str, path: &str, body: &[u8]) -> Response {
        self.request(id, method, path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method} {path} on node {id}: {e}"))
    }

    /// A keep-alive connection to node `id`'s admin API (HTTPS on a TLS
    /// cluster), each step within `timeout`.
    pub fn keep_alive_within(&self, id: u64, timeout: Duration) -> KeepAlive {
        KeepAlive::within(self.admin(id), timeout).https(self.https(id))
    }

    /// A keep-alive connection to node `id`'s admin API (HTTPS on a TLS
    /// cluster), with `KeepAlive`'s default timeouts.
    pub fn keep_alive(&self, id: u64) -> KeepAlive {
        KeepAlive::new(self.admin(id)).https(self.https(id))
    }

    /// `PUT /v1/kv/<key>` with `value`; the answer.
    pub fn kv_put(&self, id: u64, key: &str, value: &[u8]) -> Response {
        self.call(id, "PUT", &format!("/v1/kv/{key}"), value)
    }

    /// `GET /v1/kv/<key>?raw` (plus `extra` parameters); the value, or `None` on 404.
    pub fn kv_get(&self, id: u64, key: &str, extra: &str) -> Option<String> {
        let r = self.call(id, "GET", &format!("/v1/kv/{key}?raw{extra}"), b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            other => panic!("GET {key} on node {id}: {other} {}", r.body),
        }
    }

    /// `/admin/cluster/status` of node `id`, or `None` if it does not answer
    /// with 200 and a JSON body (yet).
    pub fn try_status(&self, id: u64) -> Option<Value> {
        match self.get(id, "/admin/cluster/status") {
            Ok(r) if r.status == 200 => r.json().ok(),
            _ => None,
        }
    }

    /// `/admin/cluster/status` of node `id`; panics if it does not answer.
    pub fn status(&self, id: u64) -> Value {
        let r = self
            .get(id, "/admin/cluster/status")
            .unwrap_or_else(|e| panic!("GET status on node {id}: {e}"));
        assert_eq!(r.status, 200, "status on node {id}: {}", r.body);
        r.json()
            .unwrap_or_else(|e| panic!("status on node {id} is not JSON ({e}): {}", r.body))
    }

    /// `/admin/cluster/peers` of node `id`, or `None` if it does not answer.
    pub fn try_peers(&self, id: u64) -> Option<Vec<Value>> {
        match self.get(id, "/admin/cluster/peers") {
            Ok(r) if r.status == 200 => r.json().ok().and_then(|v: Value| v.as_array().cloned()),
            _ => None,
        }
    }

    /// Whether node `viewer` reports peer `peer` with `alive == alive`.
    pub fn sees_peer_alive(&self, viewer: u64, peer: u64, alive: bool) -> bool {
        self.try_peers(viewer)
            .and_then(|ps| {
                ps.into_iter()
                    .find(|p| p["node_id"].as_u64() == Some(peer))
                    .map(|p| p["alive"].as_bool() == Some(alive))
            })
            .unwrap_or(false)
    }

    /// If every node in `ids` reports bootstrap complete with one and the same
    /// known leader and term, returns `(leader_id, term)`.
    pub fn agreed_leader(&self, ids: &[u64]) -> Option<(u64, u64)> {
        let mut agreed: Option<(u64, u64)> = None;
        for &id in ids {
            let s = self.try_status(id)?;
            if s["bootstrap_complete"] != Value::Bool(true) {
                return None;
            }
            let leader = s["leader_id"].as_u64()?;
            let term = s["term"].as_u64()?;
            match agreed {
                None => agreed = Some((leader, term)),
                Some(a) if a == (leader, term) => {}
                Some(_) => return None,
            }
        }
        // The leader itself must be among the reporters and say it leads, or be
        // outside `ids` (then we cannot check its role here).
        let (leader, _) = agreed?;
        if ids.contains(&leader) {
            let s = self.try_status(leader)?;
            if s["role"] != "leader" {
                return None;
            }
        }
        agreed
    }

    /// Waits until every node in `ids` agrees on a leader and a term.
    pub fn wait_agreed_leader(&self, ids: &[u64]) -> (u64, u64) {
        self.wait_agreed_leader_where(ids, |_, _| true)
    }

    /// Waits until every node in `ids` agrees on a leader and a term that
    /// satisfy `accept(leader, term)`.
    pub fn wait_agreed_leader_where(
        &self,
        ids: &[u64],
        accept: impl Fn(u64, u64) -> bool,
    ) -> (u64, u64) {
        let mut found = None;
        let ok = wait_until(WAIT, || {
            found = self.agreed_leader(ids).filter(|&(l, t)| accept(l, t));
            found.is_some()
        });
        if !ok {
            panic!(
                "nodes {ids:?} did not agree on an acceptable leader within {WAIT:?}\n{}",
                self.diagnostics()
            );
        }
        found.expect("set when ok")
    }

    /// Waits for `what` to hold, else panics with `what` and the diagnostics.
    pub fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        if !wait_until(WAIT, cond) {
            panic!(
                "timed out after {WAIT:?} waiting for: {what}\n{}",
                self.diagnostics()
            );
        }
    }

    /// The `bootstrap complete` line of node `id`, parsed as
    /// `(leader, term, elapsed_ms)`, if it has logged one.
    pub fn bootstrap_line(&self, id: u64) -> Option<(u64, u64, u64)> {
        self.stderr(id).lines().find_map(parse_bootstrap_line)
    }

    /// Every node's status, peers and the tail of its stderr, for failure
    /// messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let _ = writeln!(
                out,
                "---- node {id} ({}, admin {})",
                self.addr(id),
                self.admin(id)
            );
            match self.exited.get(&id) {
                Some(code) => {
                    let _ = writeln!(out, "exited with code {code}");
                }
                None if self.children.contains_key(&id) => {
                    let quick = |path| self.request(id, "GET", path, b"", DIAG_TIMEOUT);
                    let st = quick("/admin/cluster/status")
                        .map(|r| format!("{} {}", r.status, r.body.trim()))
                        .unwrap_or_else(|e| format!("error: {e}"));
                    let _ = writeln!(out, "status: {st}");
                    let peers = quick("/admin/cluster/peers")
                        .map(|r| format!("{} {}", r.status, r.body.trim()))
                        .unwrap_or_else(|e| format!("error: {e}"));
                    let _ = writeln!(out, "peers:  {peers}");
                }
                None => {
                    let _ = writeln!(out, "not started");
                }
            }
            let log = self.stderr(id);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(40);
            let _ = writeln!(out, "stderr (last {} lines):", lines.len() - from);
            for l in &lines[from..] {
                let _ = writeln!(out, "  {l}");
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "TestCluster `{}` at failure:\n{}",
                self.spec.name,
                self.diagnostics()
            );
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            // SIGKILL also ends a SIGSTOPped child.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The process exit code, or 128 + signal number when a signal ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Parses `... bootstrap complete: leader=L term=T elapsed=Xms ...`.
pub fn parse_bootstrap_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.find("bootstrap complete:")? + "bootstrap complete:".len()..];
    let field = |key: &str| -> Option<u64> {
        let start = rest.find(key)? + key.len();
        let digits: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let elapsed_at = rest.find("elapsed=")? + "elapsed=".len();
    let after_digits = rest[elapsed_at..].trim_start_matches(|c: char| c.is_ascii_digit());
    if !after_digits.starts_with("ms") {
        return None;
    }
    Some((field("leader=")?, field("term=")?, field("elapsed=")?))
}

/// Polls `cond` every `POLL_INTERVAL` until it holds (true) or `timeout`
/// passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A fixed-rate schedule for polling loops that time something: each
/// [`Pacer::wait`] sleeps until the next multiple of `interval` after the
/// start, so the time a round takes does not stretch the step (a round that
/// overran starts the next one at once).
pub struct Pacer {
    next: Instant,
    interval: Duration,
}

impl Pacer {
    pub fn new(start: Instant, interval: Duration) -> Pacer {
        Pacer {
            next: start,
            interval,
        }
    }

    pub fn wait(&mut self) {
        self.next += self.interval;
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else {
            self.next = now;
        }
    }
}

// ---------------------------------------------------------------------------
// A private copy of the binary
// ---------------------------------------------------------------------------

/// A copy of [`BIN`] in a temp dir of its own, removed on drop. Runs that
/// must all measure one binary launch it (via [`TestCluster::with_bin`]):
/// other work in the tree may rebuild `BIN` in place meanwhile.
pub struct BinCopy {
    _dir: TempDir,
    path: PathBuf,
}

impl BinCopy {
    pub fn new() -> std::io::Result<BinCopy> {
        let dir = tempfile::Builder::new().prefix("quorumd-bin-").tempdir()?;
        let path = dir.path().join("quorumd");
        std::fs::copy(bin_under_test(), &path)?;
        Ok(BinCopy { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------
// One-shot commands (`check`, `run` expected to fail fast)
// ---------------------------------------------------------------------------

/// The result of running the binary to completion.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `quorumd ARGS...` to completion with `RUST_LOG=info`. A process still
/// running after `timeout` is killed and reported as such in the panic.
pub fn run_bin(args: &[&str], timeout: Duration) -> Finished {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "info");
    run_within(&mut cmd, &format!("quorumd {}", args.join(" ")), timeout)
}

/// Runs `cmd` (stdin closed) and waits up to `timeout` for it to exit; past
/// that it is killed and the test fails with what it printed. `what` names
/// it in that message.
pub fn run_within(cmd: &mut Command, what: &str, timeout: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    match status {
        Some(st) => Finished {
            code: exit_code(st),
            stdout: read(&out_path),
            stderr: read(&err_path),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{what}` still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                read(&out_path),
                read(&err_path)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Assertions on text
// ---------------------------------------------------------------------------

/// Asserts that nothing in `stderr` looks like a Rust panic.
pub fn assert_no_panic(who: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{who} panicked; stderr:\n{stderr}"
    );
}
