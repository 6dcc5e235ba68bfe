//! A 3-member etcd cluster on loopback for the benches that measure
//! quorumd beside etcd (`etcd` from Debian's `etcd-server` on `PATH`).
//!
//! Members are `n0`, `n1`, `n2`, each with its data dir `n<i>` and its log
//! `etcd-<i>.log` in a temp dir, started with etcd's defaults. Every
//! process is killed by its handle when the cluster is dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::common::{free_addr, KeepAlive};

pub struct Etcd {
    pub bin: String,
    /// Every member's data dir (`n<i>`) and log (`etcd-<i>.log`).
    pub dir: tempfile::TempDir,
    /// Client URL (`--listen-client-urls`) of member `i`.
    pub client: Vec<SocketAddr>,
    /// Peer URL of member `i`.
    pub peer: Vec<SocketAddr>,
    /// Member `i`'s process while it runs.
    pub children: Vec<Option<Child>>,
}

impl Etcd {
    pub fn start(bin: &str) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let client: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let peer: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let mut e = Etcd {
            bin: bin.to_string(),
            dir,
            client,
            peer,
            children: (0..3).map(|_| None).collect(),
        };
        for i in 0..3 {
            e.spawn(i, "new");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while e.leader().is_none() {
            assert!(Instant::now() < deadline, "etcd did not elect a leader");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    pub fn spawn(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("n{j}=http://{}", self.peer[j]))
            .collect();
        self.spawn_with(i, state, &cluster.join(","));
    }

    /// Starts member `i` with its own `--initial-cluster` list.
    pub fn spawn_with(&mut self, i: usize, state: &str, cluster: &str) {
        while self.children.len() <= i {
            self.children.push(None);
            self.client.push(free_addr());
            self.peer.push(free_addr());
        }
        let log = std::fs::File::create(self.dir.path().join(format!("etcd-{i}.log"))).unwrap();
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(format!("n{i}"))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{i}")))
            .arg("--listen-client-urls")
            .arg(format!("http://{}", self.client[i]))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", self.client[i]))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer[i]))
            .arg("--initial-cluster")
            .arg(cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg("quorumd-bench")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.children[i] = Some(child);
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        let mut c = KeepAlive::new(self.client[i]);
        let (status, body) = c.call("POST", "/v3/maintenance/status", b"{}").ok()?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// Runs `etcdctl` against the running members; its stdout, or why not.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let endpoints: Vec<String> = self
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| format!("http://{}", self.client[i]))
            .collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .output()
            .map_err(|e| format!("etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Adds member `i` as a learner, starts it, and promotes it once it is
    /// in sync (etcd refuses until then).
    pub fn add_and_promote(&mut self, i: usize) -> Result<(), String> {
        while self.children.len() <= i {
            self.children.push(None);
            self.client.push(free_addr());
            self.peer.push(free_addr());
        }
        let name = format!("n{i}");
        let peer_url = format!("--peer-urls=http://{}", self.peer[i]);
        // etcd refuses a reconfiguration until every member has been
        // connected for a while ("unhealthy cluster"): ask again.
        let deadline = Instant::now() + Duration::from_secs(60);
        let added = loop {
            match self.ctl(&["member", "add", &name, "--learner", &peer_url]) {
                Ok(out) => break out,
                Err(e) if e.contains("unhealthy cluster") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        let id = added
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("no member id in {added:?}"))?
            .to_string();
        let cluster = added
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .ok_or_else(|| format!("no ETCD_INITIAL_CLUSTER in {added:?}"))?
            .to_string();
        self.spawn_with(i, "existing", &cluster);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match self.ctl(&["member", "promote", &id]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// The member id (hex) of member `i`, by its name.
    pub fn member_id(&self, i: usize) -> Result<String, String> {
        let list = self.ctl(&["member", "list"])?;
        let name = format!(", n{i}, ");
        list.lines()
            .find(|l| l.contains(&name))
            .and_then(|l| l.split(',').next())
            .map(str::to_string)
            .ok_or_else(|| format!("no member n{i} in {list:?}"))
    }

    /// The leader's index (0..3), if the members agree on one.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..3 {
            let s = self.status(i)?;
            ids.push(s["header"]["member_id"].as_str()?.to_string());
            leader = Some(s["leader"].as_str()?.to_string());
        }
        ids.iter().position(|id| Some(id) == leader.as_ref())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Etcd {
    /// The data dir of member `i`.
    pub fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// The pid of member `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Sends `signal` to member `i`, if it runs; it stays ours to reap.
    pub fn signal(&self, i: usize, signal: i32) {
        if let Some(child) = &self.children[i] {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Kills member `i` with `signal` and reaps it.
    pub fn signal_and_reap(&mut self, i: usize, signal: i32) {
        if let Some(mut child) = self.children[i].take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    /// (its own member id, the leader's member id) as member `i` reports
    /// them, if it answers.
    pub fn view(&self, c: &mut KeepAlive) -> Option<(String, String)> {
        let (status, body) = c.call("POST", "/v3/maintenance/status", b"{}").ok()?;
        if status != 200 {
            return None;
        }
        let s: Value = serde_json::from_slice(&body).ok()?;
        Some((
            s["header"]["member_id"].as_str()?.to_string(),
            s["leader"].as_str()?.to_string(),
        ))
    }
}
