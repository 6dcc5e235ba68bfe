//! Packet loss and partitions, as iptables rules inside the nodes' namespaces.
//!
//! The kernel here has netfilter (iptables through nf_tables) but no `netem`
//! qdisc, so every network fault is a DROP rule. Each node namespace gets two
//! chains of its own, `CHAOS_IN` (jumped to from `INPUT`) and `CHAOS_OUT`
//! (from `OUTPUT`); a fault appends rules to them and healing flushes them.
//! Rules only ever name other nodes' addresses, so the tool's clients (on the
//! hub's address) keep reaching every node: a partition cuts the nodes from
//! each other, not from their clients, as in Jepsen.
//!
//! Each change is one `iptables-restore --noflush` run with `-w` (wait for the
//! xtables lock), executed inside the namespace with `setns`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::netns;

/// One DROP rule in a node's namespace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Drop everything arriving from this peer.
    DropFrom(Ipv4Addr),
    /// Drop everything sent to this peer.
    DropTo(Ipv4Addr),
    /// Drop packets arriving from this peer with this probability
    /// (iptables' `statistic` match, random mode).
    LossFrom(Ipv4Addr, f64),
}

impl Rule {
    /// The rule as an `iptables-restore` line.
    pub fn line(&self) -> String {
        match self {
            Rule::DropFrom(ip) => format!("-A CHAOS_IN -s {ip}/32 -j DROP"),
            Rule::DropTo(ip) => format!("-A CHAOS_OUT -d {ip}/32 -j DROP"),
            Rule::LossFrom(ip, p) => format!(
                "-A CHAOS_IN -s {ip}/32 -m statistic --mode random --probability {p:.4} -j DROP"
            ),
        }
    }
}

/// The script that creates the two chains and hooks them in.
pub fn setup_script() -> String {
    "*filter\n:CHAOS_IN - [0:0]\n:CHAOS_OUT - [0:0]\n-A INPUT -j CHAOS_IN\n-A OUTPUT -j CHAOS_OUT\nCOMMIT\n"
        .to_string()
}

/// The script that appends `rules`.
pub fn apply_script(rules: &[Rule]) -> String {
    let mut s = String::from("*filter\n");
    for r in rules {
        s.push_str(&r.line());
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// The script that removes every fault rule.
pub fn heal_script() -> String {
    "*filter\n-F CHAOS_IN\n-F CHAOS_OUT\nCOMMIT\n".to_string()
}

/// Fails with a clear sentence when `iptables` is missing.
pub fn require_iptables() -> Result<()> {
    match Command::new("iptables-restore").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(Error::Setup(
            "iptables is not installed: partitions and packet loss need it \
             (`apt-get install -y iptables`; `make chaos` and `make test` install it)"
                .into(),
        )),
    }
}

/// Runs `iptables-restore --noflush -w` with `script` inside namespace `ns`.
pub fn restore(ns: &str, script: &str) -> Result<()> {
    let handle = netns::open(ns)?;
    let fd = handle.as_raw_fd();
    let mut cmd = Command::new("iptables-restore");
    cmd.args(["--noflush", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setns(2) is async-signal-safe; `fd` stays open (owned by
    // `handle`) until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot run iptables-restore in {ns}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Setup(format!("cannot feed iptables-restore in {ns}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Setup(format!("iptables-restore in {ns}: {e}")))?;
    drop(handle);
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "iptables-restore in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_one_peer_each() {
        let ip = Ipv4Addr::new(10, 77, 0, 2);
        assert_eq!(
            Rule::DropFrom(ip).line(),
            "-A CHAOS_IN -s 10.77.0.2/32 -j DROP"
        );
        assert_eq!(
            Rule::DropTo(ip).line(),
            "-A CHAOS_OUT -d 10.77.0.2/32 -j DROP"
        );
        assert_eq!(
            Rule::LossFrom(ip, 0.25).line(),
            "-A CHAOS_IN -s 10.77.0.2/32 -m statistic --mode random --probability 0.2500 -j DROP"
        );
    }

    #[test]
    fn scripts_are_one_filter_table_transaction() {
        let s = apply_script(&[Rule::DropFrom(Ipv4Addr::new(10, 77, 0, 3))]);
        assert!(s.starts_with("*filter\n") && s.ends_with("COMMIT\n"), "{s}");
        assert!(setup_script().contains("-A INPUT -j CHAOS_IN"));
        assert!(setup_script().contains("-A OUTPUT -j CHAOS_OUT"));
        assert!(heal_script().contains("-F CHAOS_IN") && heal_script().contains("-F CHAOS_OUT"));
    }
}
