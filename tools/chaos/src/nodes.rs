//! The quorumd processes: one per node namespace, started, killed, paused and
//! restarted by pid, their output appended to `node-<id>.log`.
//!
//! Every node is started from the main thread with `PR_SET_PDEATHSIG`, so if
//! the runner itself is killed (SIGKILL leaves no chance to clean up), its
//! nodes die with it instead of running on in an orphaned namespace.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::cleanup;
use crate::error::{Error, Result};
use crate::netns;

/// The Raft (peer) port of every node, on its own address.
pub const PEER_PORT: u16 = 7000;
/// The admin (HTTP) port of every node.
pub const ADMIN_PORT: u16 = 8000;

/// Node `id`'s admin address.
pub fn admin_addr(id: u32) -> SocketAddr {
    SocketAddr::from((netns::node_ip(id), ADMIN_PORT))
}

/// The cluster file for `nodes` nodes, their state under `data_dir`, a
/// `[raft] snapshot_entries` if given (a small one makes lagging followers
/// catch up by snapshot under faults), and any extra TOML tables (such as
/// `[store]`) appended verbatim.
pub fn cluster_file(
    nodes: u32,
    data_dir: &Path,
    snapshot_entries: Option<u64>,
    extra: &str,
) -> String {
    let mut s = format!(
        "# Written by quorumd-chaos: one node per network namespace.\n\
         [cluster]\n\
         name = \"chaos\"\n\
         quorum_wait_timeout = \"120s\"\n\
         heartbeat_interval = \"1s\"\n\
         peer_timeout = \"3s\"\n\
         data_dir = \"{}\"\n",
        data_dir.display()
    );
    if let Some(n) = snapshot_entries {
        s.push_str(&format!("\n[raft]\nsnapshot_entries = {n}\n"));
    }
    if !extra.trim().is_empty() {
        s.push('\n');
        s.push_str(extra.trim_end());
        s.push('\n');
    }
    for id in 1..=nodes {
        let ip = netns::node_ip(id);
        s.push_str(&format!(
            "\n[[node]]\nid = {id}\naddr = \"{ip}:{PEER_PORT}\"\nadmin = \"{ip}:{ADMIN_PORT}\"\n"
        ));
    }
    s
}

/// What became of a node process the runner did not stop itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    /// The node.
    pub id: u32,
    /// How it ended.
    pub status: String,
    /// Seconds since the run started.
    pub at_s: f64,
}

struct Node {
    id: u32,
    ns: String,
    child: Option<Child>,
    paused: bool,
    /// Sent SIGTERM by the runner: its exit is expected.
    stopping: bool,
}

/// Every node of the run. Dropping it kills them.
pub struct Cluster {
    bin: PathBuf,
    cluster_file: PathBuf,
    log_dir: PathBuf,
    start: Instant,
    nodes: Vec<Node>,
    env: Vec<(String, String)>,
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

impl Cluster {
    /// A cluster of the namespaces `ns[i]` (node `i + 1`), not started yet.
    pub fn new(
        bin: PathBuf,
        cluster_file: PathBuf,
        log_dir: PathBuf,
        start: Instant,
        ns: Vec<String>,
    ) -> Self {
        let nodes = ns
            .into_iter()
            .enumerate()
            .map(|(i, ns)| Node {
                id: i as u32 + 1,
                ns,
                child: None,
                paused: false,
                stopping: false,
            })
            .collect();
        Cluster {
            bin,
            cluster_file,
            log_dir,
            start,
            nodes,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every node started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Node ids, `1..=N`.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: u32) -> PathBuf {
        self.log_dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` in its namespace (a no-op if it runs).
    pub fn start(&mut self, id: u32) -> Result<()> {
        if self.node(id).child.is_some() {
            return Ok(());
        }
        let log_path = self.log_path(id);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(&log_path))?;
        let t = self.start.elapsed().as_secs_f64();
        writeln!(log, "=== quorumd-chaos: node {id} started at t={t:.3}s ===")
            .map_err(Error::io(&log_path))?;
        let err = log.try_clone().map_err(Error::io(&log_path))?;
        let ns_name = self.node(id).ns.clone();
        let ns = netns::open(&ns_name)?;
        let child =
            spawn_in(&self.bin, &self.cluster_file, id, &ns, &self.env, log, err).map_err(|e| {
                Error::Runtime(format!(
                    "cannot start node {id} ({}): {e}",
                    self.bin.display()
                ))
            })?;
        drop(ns);
        cleanup::add_pid(child.id());
        let node = self.node(id);
        node.child = Some(child);
        node.paused = false;
        node.stopping = false;
        Ok(())
    }

    /// `kill -9` of node `id`, and waits for it to be gone.
    pub fn kill(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            let pid = child.id();
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = cleanup::reap(pid, || child.wait());
        }
        node.paused = false;
        node.stopping = false;
    }

    /// SIGTERM of node `id` (a clean shutdown: a leader hands off first),
    /// then [`Cluster::wait_exit`].
    pub fn terminate(&mut self, id: u32, within: std::time::Duration) -> Option<String> {
        self.sigterm(id);
        self.wait_exit(id, within)
    }

    /// Sends SIGTERM to node `id` (and SIGCONT, so that a paused node sees
    /// it) without waiting; false if it is not running.
    pub fn sigterm(&mut self, id: u32) -> bool {
        let node = self.node(id);
        let Some(child) = &node.child else {
            return false;
        };
        let pid = child.id() as i32;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
            libc::kill(pid, libc::SIGCONT);
        }
        node.paused = false;
        node.stopping = true;
        true
    }

    /// Waits up to `within` for node `id` to exit, then `kill -9`. Returns
    /// how it ended, or `None` if it was not running.
    pub fn wait_exit(&mut self, id: u32, within: std::time::Duration) -> Option<String> {
        let node = self.node(id);
        let mut child = node.child.take()?;
        node.paused = false;
        node.stopping = false;
        let pid = child.id();
        let until = Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    cleanup::reap(pid, || ());
                    return Some(describe(status));
                }
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    let _ = cleanup::reap(pid, || child.wait());
                    return Some(format!(
                        "no exit within {} ms of SIGTERM: killed",
                        within.as_millis()
                    ));
                }
            }
        }
    }

    /// SIGSTOP (`stop = true`) or SIGCONT of node `id`; false if it is not
    /// running.
    pub fn pause(&mut self, id: u32, stop: bool) -> bool {
        let node = self.node(id);
        let Some(child) = &node.child else {
            return false;
        };
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, sig) };
        node.paused = stop;
        true
    }

    /// Nodes that exited without the runner stopping them; they are reaped
    /// and left stopped (the caller decides whether to restart them).
    pub fn unexpected_exits(&mut self) -> Vec<Exit> {
        let at_s = self.start.elapsed().as_secs_f64();
        let mut out = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = &mut node.child else {
                continue;
            };
            if node.stopping {
                // Reaped by `wait_exit`.
                continue;
            }
            let pid = child.id();
            if let Ok(Some(status)) = cleanup::reap(pid, || child.try_wait()) {
                out.push(Exit {
                    id: node.id,
                    status: describe(status),
                    at_s,
                });
                node.child = None;
            }
        }
        out
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Spawns `bin run --cluster FILE --node-id ID` inside namespace `ns`.
fn spawn_in(
    bin: &Path,
    cluster: &Path,
    id: u32,
    ns: &File,
    env: &[(String, String)],
    out: File,
    err: File,
) -> std::io::Result<Child> {
    let fd = ns.as_raw_fd();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--cluster")
        .arg(cluster)
        .arg("--node-id")
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (setns, prctl, getppid, _exit)
    // run between fork and exec; `fd` is kept open by `ns` until spawn
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_file_lists_every_node_on_its_own_address() {
        let f = cluster_file(
            3,
            Path::new("/tmp/x/data"),
            Some(500),
            "[store]\nmax_value_bytes = 1024\n",
        );
        assert!(f.contains("[raft]\nsnapshot_entries = 500\n"), "{f}");
        assert!(f.contains("data_dir = \"/tmp/x/data\""), "{f}");
        assert!(f.contains("addr = \"10.77.0.3:7000\""), "{f}");
        assert!(f.contains("admin = \"10.77.0.1:8000\""), "{f}");
        assert!(f.contains("[store]\nmax_value_bytes = 1024\n"), "{f}");
        assert_eq!(f.matches("[[node]]").count(), 3);
        assert_eq!(admin_addr(2).to_string(), "10.77.0.2:8000");
    }
}
