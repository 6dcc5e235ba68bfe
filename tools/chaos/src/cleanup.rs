//! What must be undone if the run is interrupted: the node processes it
//! started and the namespaces it made.
//!
//! The owners ([`crate::nodes::Cluster`], [`crate::netns::Network`]) clean up
//! on `Drop`, which covers a normal end, an error and a panic. This registry
//! covers the rest: a second Ctrl-C while the main thread is busy, handled on
//! the signal thread by [`emergency`]. A pid leaves the registry under the
//! same lock that reaps it, so `emergency` never signals a reused pid.

use std::collections::BTreeSet;
use std::sync::Mutex;

#[derive(Default)]
struct Registry {
    pids: BTreeSet<i32>,
    namespaces: Vec<String>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

/// Records a namespace this run made.
pub fn add_namespace(ns: &str) {
    with(|r| r.namespaces.push(ns.to_string()));
}

/// Forgets a namespace that was deleted.
pub fn remove_namespace(ns: &str) {
    with(|r| r.namespaces.retain(|n| n != ns));
}

/// Records a child process this run started.
pub fn add_pid(pid: u32) {
    with(|r| r.pids.insert(pid as i32));
}

/// Runs `reap` (which waits for the child `pid`) and forgets the pid, both
/// under the registry's lock.
pub fn reap<T>(pid: u32, reap: impl FnOnce() -> T) -> T {
    with(|r| {
        let out = reap();
        r.pids.remove(&(pid as i32));
        out
    })
}

/// Kills every recorded child and deletes every recorded namespace, at once.
/// For the signal thread, when the user insists on stopping.
pub fn emergency() {
    with(|r| {
        for &pid in &r.pids {
            // SAFETY: kill(2) on a pid we started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for ns in r.namespaces.drain(..) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .output();
        }
    });
}
