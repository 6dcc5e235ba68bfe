//! The test network: one network namespace per node, each with a veth pair
//! into a bridge that lives in a hub namespace of its own.
//!
//! ```text
//!   <prefix>-n1: eth0 10.77.0.1 ──┐
//!   <prefix>-n2: eth0 10.77.0.2 ──┼── vnK ── br0 10.77.0.254 : <prefix>-hub
//!   <prefix>-n3: eth0 10.77.0.3 ──┘          (the tool's clients)
//! ```
//!
//! Nothing is added to the host's own namespace: the private addresses exist
//! only inside these namespaces, and deleting them removes every link. The
//! tool's client threads join the hub namespace with `setns`, so their
//! traffic crosses the same veths as the nodes'. The prefix is
//! `qchaos<pid>`, so that concurrent runs never collide and a later run can
//! tell leftovers of a dead one from a live one's.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::cleanup;
use crate::error::{Error, Result};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The first three octets of every address in the test network.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The namespace name prefix shared by every run.
const PREFIX: &str = "qchaos";

/// The address of node `id` inside its namespace.
pub fn node_ip(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], id as u8)
}

/// The hub's address on the bridge, where the tool's clients live.
pub fn hub_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 254)
}

/// The namespaces of one run. Dropping it deletes them.
pub struct Network {
    prefix: String,
    nodes: u32,
    created: Vec<String>,
}

/// Runs `ip ARGS`, naming the command and its stderr on failure.
fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::Setup(format!("cannot run `{cmd}`: {e} (is iproute2 installed?)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Network {
    /// Creates the hub with its bridge and one namespace per node, `1..=nodes`.
    /// On any failure, what was created is deleted again.
    pub fn create(nodes: u32) -> Result<Network> {
        let mut net = Network {
            prefix: format!("{PREFIX}{}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        net.build()?;
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        cleanup::add_namespace(name);
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let hub = self.hub();
        self.add_ns(&hub)?;
        let hub_addr = format!("{}/24", hub_ip());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &hub_addr, "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for id in 1..=self.nodes {
            let ns = self.node(id);
            self.add_ns(&ns)?;
            let port = format!("vn{id}");
            let addr = format!("{}/24", node_ip(id));
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Node `id`'s namespace name.
    pub fn node(&self, id: u32) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// Deletes every namespace this run made; safe to call twice.
    pub fn teardown(&mut self) {
        for ns in self.created.drain(..).rev() {
            // Best effort: a namespace already gone is what we want.
            let _ = ip(&["netns", "del", &ns]);
            cleanup::remove_namespace(&ns);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Opens a namespace by name, for `setns`.
pub fn open(ns: &str) -> Result<File> {
    File::open(format!("{NETNS_DIR}/{ns}"))
        .map_err(|e| Error::Setup(format!("cannot open network namespace {ns}: {e}")))
}

/// Moves the calling thread into the namespace `ns` (a thread's network
/// namespace is its own; sockets it opens afterwards live there).
pub fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The output of `ss -tnpi` (TCP sockets with their state, queues, timers
/// and owners) inside namespace `ns`, for diagnosing a node that hangs.
pub fn sockets(ns: &str) -> String {
    let handle = match open(ns) {
        Ok(h) => h,
        Err(e) => return e.to_string(),
    };
    let fd = handle.as_raw_fd();
    let mut cmd = Command::new("ss");
    cmd.args(["-tnpio"]);
    // SAFETY: setns(2) is async-signal-safe; `handle` keeps `fd` open until
    // the child has been spawned.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("cannot run ss: {e}"),
    }
}

/// Deletes namespaces left by runs whose process is gone (a run killed with
/// SIGKILL cannot clean up; its nodes died with it, by `PR_SET_PDEATHSIG`).
/// Returns the names removed.
pub fn remove_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The pid in a name this tool made (`qchaos<pid>-hub`, `qchaos<pid>-n3`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, suffix) = rest.split_once('-')?;
    let valid = suffix == "hub"
        || suffix
            .strip_prefix('n')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_private_and_distinct() {
        assert_eq!(node_ip(1).to_string(), "10.77.0.1");
        assert_eq!(node_ip(5).to_string(), "10.77.0.5");
        assert_eq!(hub_ip().to_string(), "10.77.0.254");
        assert!(node_ip(3).is_private() && hub_ip().is_private());
    }

    #[test]
    fn only_our_names_are_recognised_as_leftovers() {
        assert_eq!(owner_pid("qchaos123-hub"), Some(123));
        assert_eq!(owner_pid("qchaos123-n7"), Some(123));
        assert_eq!(owner_pid("qchaos123-n"), None);
        assert_eq!(owner_pid("qchaos123-x1"), None);
        assert_eq!(owner_pid("qchaosabc-hub"), None);
        assert_eq!(owner_pid("other-hub"), None);
    }
}
