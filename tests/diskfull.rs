//! A full disk on real processes: one node's data dir lives on a small
//! tmpfs the test mounts (root only) and fills to the last byte. The node
//! does not crash and loses nothing; writes through it get 507 naming the
//! full disk; stale reads on it work; a follower stops acknowledging and a
//! leader hands its leadership over, so the others keep taking writes;
//! `/metrics` and `quorumd status` show the alarm; once the space returns
//! the node catches up by itself.
//!
//! Time limits are sanity bounds for a busy 2-core CI machine, never
//! performance assertions.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{run_bin, Spec, TestCluster};

const IDS: [u64; 3] = [1, 2, 3];

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (the test is skipped, and
    /// says so) when not root.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if rustix_uid() != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount -t tmpfs failed as root");
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn rustix_uid() -> u32 {
    // `id -u`, to need no extra crate in the tests.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1)
}

/// Fills the filesystem of `dir` to the last byte with `dir/ballast`.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last partial chunk, byte by byte in smaller steps.
    for size in [4096, 512, 1] {
        while f.write_all(&chunk[..size]).is_ok() {}
    }
    path
}

fn status_of(c: &TestCluster, id: u64) -> Option<serde_json::Value> {
    c.try_status(id)
}

fn disk_full(c: &TestCluster, id: u64) -> Option<String> {
    status_of(c, id).and_then(|s| s["disk_full"].as_str().map(str::to_string))
}

/// Starts the cluster with node `victim`'s data dir on a fresh 48 MiB tmpfs.
fn cluster_with_victim(victim: u64) -> Option<(TestCluster, Tmpfs)> {
    let mut c = TestCluster::new(Spec::new("diskfull", 3));
    let fs = Tmpfs::mount(&c.dir.path().join("small-disk"), "48m")?;
    for id in IDS {
        if id == victim {
            let dir = fs.dir.join(format!("node-{id}"));
            c.start_node_with(id, &["--data-dir", dir.to_str().unwrap()]);
        } else {
            c.start_node(id);
        }
    }
    c.wait_agreed_leader(&IDS);
    Some((c, fs))
}

fn run_full_disk(victim_leads: bool) {
    let victim = if victim_leads { 1 } else { 3 };
    let Some((mut c, fs)) = cluster_with_victim(victim) else {
        return;
    };
    c.wait_for("node 1 to lead", || {
        c.agreed_leader(&IDS).map(|(l, _)| l) == Some(1)
    });
    let r = c.kv_put(1, "before", b"v");
    assert_eq!(r.status, 200, "{}", r.body);
    c.wait_for("the victim to hold the first key", || {
        c.kv_get(victim, "before", "&stale").as_deref() == Some("v")
    });

    let ballast = fill(&fs.dir);
    c.wait_for("the victim to raise its NOSPACE alarm", || {
        disk_full(&c, victim).is_some()
    });
    let why = disk_full(&c, victim).unwrap();
    assert!(
        why.contains("disk is full") && why.contains("small-disk"),
        "{why}"
    );

    // Writes through the victim: 507, saying why.
    let r = c.kv_put(victim, "through-victim", b"x");
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(r.body.contains("the disk is full"), "{}", r.body);
    // The others keep taking writes (a full leader hands over first).
    let healthy = if victim == 1 { 2 } else { 1 };
    c.wait_for("a write through a healthy node to succeed", || {
        c.kv_put(healthy, "during", b"d").status == 200
    });
    if victim_leads {
        let (leader, _) = c.wait_agreed_leader(&IDS);
        assert_ne!(leader, victim, "a leader with a full disk hands over");
    }
    // Reads on the victim work.
    assert_eq!(c.kv_get(victim, "before", "&stale").as_deref(), Some("v"));
    // It says so in /metrics and in `quorumd status`.
    let metrics = c.call(victim, "GET", "/metrics", b"");
    assert!(
        metrics.body.contains("quorumd_disk_full 1"),
        "{}",
        metrics.body
    );
    let st = run_bin(
        &["status", "--cluster", c.config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(st.code, 1, "{}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.contains(&format!("node {victim}: NOSPACE")),
        "{}",
        st.stdout
    );
    assert!(
        c.is_running(victim),
        "the victim must not crash:\n{}",
        c.stderr(victim)
    );

    // Space returns: the victim catches up and takes writes again.
    std::fs::remove_file(&ballast).unwrap();
    c.wait_for("the victim to lower its alarm", || {
        status_of(&c, victim).is_some_and(|s| s["disk_full"].is_null())
    });
    c.wait_for("the victim to catch up", || {
        c.kv_get(victim, "during", "&stale").as_deref() == Some("d")
    });
    let r = c.kv_put(victim, "after", b"a");
    assert_eq!(r.status, 200, "{}", r.body);
    for id in IDS {
        c.wait_for("every node to hold every write", || {
            c.kv_get(id, "after", "&stale").as_deref() == Some("a")
                && c.kv_get(id, "before", "&stale").as_deref() == Some("v")
        });
    }
    assert!(c.is_running(victim));
    let log = c.stderr(victim);
    assert!(
        log.contains("NOSPACE") && !log.contains("panicked"),
        "{log}"
    );
}

#[test]
fn a_follower_with_a_full_disk_stops_acknowledging_and_recovers() {
    run_full_disk(false);
}

#[test]
fn a_leader_with_a_full_disk_hands_over_and_recovers() {
    run_full_disk(true);
}

/// Values of this size fill the disk in a few dozen writes.
const BIG_VALUE: usize = 256 * 1024;

#[test]
fn three_nodes_on_one_filling_disk_refuse_writes_keep_reads_and_recover() {
    // Every node's data dir on one 32 MiB tmpfs, filled by the writes
    // themselves, as an SD card fills (before, on 24 MiB, all three nodes
    // exited after 8 writes); 12 MiB of it held by a file an operator can
    // delete to make room.
    let mut c = TestCluster::new(Spec::new("onedisk", 3));
    let Some(fs) = Tmpfs::mount(&c.dir.path().join("sd-card"), "32m") else {
        return;
    };
    let junk = fs.dir.join("old-logs");
    std::fs::write(&junk, vec![0x5Au8; 12 << 20]).unwrap();
    for id in IDS {
        let dir = fs.dir.join(format!("node-{id}"));
        c.start_node_with(id, &["--data-dir", dir.to_str().unwrap()]);
    }
    let (_, term_before) = c.wait_agreed_leader(&IDS);
    let value = vec![b'v'; BIG_VALUE];
    let mut written = 0;
    let mut refused = None;
    for i in 0..400 {
        let r = c.kv_put(1 + (i % 3), &format!("big/{i:03}"), &value);
        match r.status {
            200 => written += 1,
            507 => {
                refused = Some(r.body);
                break;
            }
            // A write racing a leadership hand-off may time out; it is
            // retried by the next iteration's key.
            _ => {}
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(
        refused.contains("the disk is full") && refused.contains("sd-card"),
        "{refused}"
    );
    assert!(written > 0);
    for id in IDS {
        assert!(c.is_running(id), "node {id} exited:\n{}", c.stderr(id));
        assert_eq!(
            c.kv_get(id, "big/000", "&stale").map(|v| v.len()),
            Some(BIG_VALUE),
            "node {id} lost a write"
        );
    }
    // No election storm: the nodes may pass leadership once each.
    std::thread::sleep(Duration::from_secs(2));
    let terms: Vec<u64> = IDS
        .iter()
        .filter_map(|&id| status_of(&c, id).and_then(|s| s["term"].as_u64()))
        .collect();
    let max_term = terms.iter().copied().max().unwrap_or(term_before);
    assert!(
        max_term <= term_before + 4,
        "terms went from {term_before} to {max_term}"
    );

    // The operator makes room: every node lowers its alarm and takes writes.
    std::fs::remove_file(&junk).unwrap();
    c.wait_for("every node to lower its alarm", || {
        IDS.iter()
            .all(|&id| status_of(&c, id).is_some_and(|s| s["disk_full"].is_null()))
    });
    c.wait_for("a write to succeed again", || {
        c.kv_put(2, "after", b"ok").status == 200
    });
    for id in IDS {
        c.wait_for("every node to hold the new write", || {
            c.kv_get(id, "after", "&stale").as_deref() == Some("ok")
        });
        assert!(c.is_running(id));
    }
}
