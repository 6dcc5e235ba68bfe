//! Backups and restore on real processes: `quorumd snapshot save`,
//! `inspect` and `restore` against a 3-node cluster; a restore removes
//! later writes and reaches every node; damaged, truncated and foreign
//! files are refused before anything changes; the lose-every-box drill;
//! scheduled backups rotate.
//!
//! Time limits are sanity bounds for a busy 2-core CI machine, never
//! performance assertions.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{run_bin, Finished, Spec, TestCluster};

const IDS: [u64; 3] = [1, 2, 3];
const CLI_BOUND: Duration = Duration::from_secs(120);

fn cli(c: &TestCluster, args: &[&str]) -> Finished {
    let cluster = c.config.to_str().expect("utf-8").to_string();
    let mut all: Vec<&str> = vec!["snapshot"];
    let sub = args[0];
    all.push(sub);
    if sub != "inspect" {
        all.push("--cluster");
        all.push(&cluster);
    }
    all.extend_from_slice(&args[1..]);
    run_bin(&all, CLI_BOUND)
}

/// Every client key node `id` holds, read without asking the leader.
fn keys_on(c: &TestCluster, id: u64) -> BTreeSet<String> {
    let r = c.call(id, "GET", "/v1/kv/?keys&stale", b"");
    match r.status {
        200 => serde_json::from_str::<Vec<String>>(&r.body)
            .unwrap_or_else(|e| panic!("keys on node {id} ({e}): {}", r.body))
            .into_iter()
            .collect(),
        404 => BTreeSet::new(),
        s => panic!("keys on node {id}: {s} {}", r.body),
    }
}

fn wait_every_node_holds(c: &TestCluster, want: &BTreeSet<String>) {
    c.wait_for("every node to hold exactly the backup's keys", || {
        IDS.iter().all(|&id| keys_on(c, id) == *want)
    });
}

fn put(c: &TestCluster, id: u64, key: &str, value: &str) {
    let r = c.kv_put(id, key, value.as_bytes());
    assert_eq!(r.status, 200, "PUT {key}: {}", r.body);
}

fn formed() -> (TestCluster, u64) {
    let mut c = TestCluster::new(Spec::new("backup", 3));
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&IDS);
    (c, leader)
}

fn file(c: &TestCluster, name: &str) -> String {
    c.dir.path().join(name).to_str().expect("utf-8").to_string()
}

#[test]
fn save_inspect_and_restore_through_a_follower_replaces_later_writes_on_every_node() {
    let (c, leader) = formed();
    let follower = IDS.into_iter().find(|&i| i != leader).unwrap();
    let mut want = BTreeSet::new();
    for i in 0..40 {
        let key = format!("app/{i:02}");
        put(&c, leader, &key, &format!("v{i}"));
        want.insert(key);
    }
    let backup = file(&c, "b1.qbak");
    let saved = cli(&c, &["save", &backup]);
    assert_eq!(saved.code, 0, "save: {}{}", saved.stdout, saved.stderr);
    assert!(saved.stdout.contains("40 keys"), "{}", saved.stdout);

    let inspect = cli(&c, &["inspect", &backup]);
    assert_eq!(inspect.code, 0, "inspect: {}", inspect.stderr);
    for field in [
        "index",
        "term",
        "cluster     backup",
        "cluster id",
        "keys        40",
        "size",
        "version     1",
        "checksum    crc32:",
    ] {
        assert!(
            inspect.stdout.contains(field),
            "inspect lacks {field:?}:\n{}",
            inspect.stdout
        );
    }

    // Later writes: new keys, a changed one, a deleted one.
    put(&c, leader, "later/x", "1");
    put(&c, follower, "app/00", "changed");
    let r = c.call(leader, "DELETE", "/v1/kv/app/01", b"");
    assert_eq!(r.status, 200);

    let restored = cli(&c, &["restore", "--node", &follower.to_string(), &backup]);
    assert_eq!(
        restored.code, 0,
        "restore: {}{}",
        restored.stdout, restored.stderr
    );
    assert!(restored.stdout.contains("40 keys"), "{}", restored.stdout);
    // The answer comes once applied on the node that took it.
    assert_eq!(keys_on(&c, follower), want);
    wait_every_node_holds(&c, &want);
    for id in IDS {
        assert_eq!(c.kv_get(id, "app/00", "&stale").as_deref(), Some("v0"));
        assert_eq!(c.kv_get(id, "app/01", "&stale").as_deref(), Some("v1"));
        assert_eq!(c.kv_get(id, "later/x", "&stale"), None);
    }
    // Membership was kept: the cluster still has its three members and
    // takes writes.
    put(&c, leader, "after", "ok");
    let members = c.call(leader, "GET", "/admin/cluster/members", b"");
    assert_eq!(members.status, 200, "{}", members.body);
    for id in IDS {
        assert!(
            members.body.contains(&format!("\"id\":{id}"))
                || members.body.contains(&format!("\"node_id\":{id}")),
            "member {id} missing: {}",
            members.body
        );
    }
}

#[test]
fn damaged_truncated_and_foreign_files_are_refused_before_anything_changes() {
    let (c, leader) = formed();
    put(&c, leader, "k", "v");
    let good = file(&c, "good.qbak");
    assert_eq!(cli(&c, &["save", &good]).code, 0);
    put(&c, leader, "k2", "after");
    let bytes = std::fs::read(&good).unwrap();

    let damaged = file(&c, "damaged.qbak");
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&damaged, &bad).unwrap();
    let truncated = file(&c, "truncated.qbak");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    let foreign = file(&c, "foreign.qbak");
    std::fs::write(&foreign, b"{\"this\": \"is not a backup\"}\n").unwrap();

    for (f, why) in [
        (&damaged, "damaged"),
        (&truncated, "truncated"),
        (&foreign, "not a quorumd backup"),
    ] {
        for cmd in ["inspect", "restore"] {
            let out = cli(&c, &[cmd, f]);
            assert_eq!(out.code, 1, "{cmd} {f}: {}{}", out.stdout, out.stderr);
            assert!(
                out.stderr.contains(why) && out.stderr.contains(f.as_str()),
                "{cmd} {f}: {}",
                out.stderr
            );
        }
        // The node refuses it too, when sent without the CLI's check.
        let r = c.call(leader, "PUT", "/v1/snapshot", &std::fs::read(f).unwrap());
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
    }
    assert_eq!(
        c.kv_get(leader, "k2", "").as_deref(),
        Some("after"),
        "nothing changed"
    );
}

#[test]
fn lose_every_box_then_restore_into_a_new_cluster() {
    let (mut c, leader) = formed();
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let key = format!("site/{i}");
        put(&c, leader, &key, "x");
        want.insert(key);
    }
    // The backup lives off the boxes.
    let backup = file(&c, "offsite.qbak");
    assert_eq!(cli(&c, &["save", &backup]).code, 0);

    for id in IDS {
        c.signal(id, 9);
        c.wait_exit(id, Duration::from_secs(15));
        std::fs::remove_dir_all(c.data_dir(id)).unwrap();
    }
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&IDS);
    assert!(keys_on(&c, leader).is_empty());
    // A new cluster has a new id: without --force the restore is refused.
    let mut refused = None;
    c.wait_for("a refusal naming the new cluster's id", || {
        let out = cli(&c, &["restore", &backup]);
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("--force"), "{}", out.stderr);
        let named = !out.stderr.contains("id unknown");
        refused = Some(out);
        named
    });
    let refused = refused.unwrap();
    assert!(
        refused.stderr.contains("this is cluster 'backup' (id "),
        "{}",
        refused.stderr
    );
    assert!(
        keys_on(&c, leader).is_empty(),
        "a refused restore changes nothing"
    );

    let restored = cli(&c, &["restore", "--force", &backup]);
    assert_eq!(restored.code, 0, "{}{}", restored.stdout, restored.stderr);
    wait_every_node_holds(&c, &want);
    put(&c, leader, "new", "write");
}

#[test]
fn scheduled_backups_rotate_to_keep_the_newest() {
    let spec = Spec::new("sched", 3);
    let mut c = TestCluster::new(spec);
    let dir = c.dir.path().join("backups");
    let mut text = std::fs::read_to_string(&c.config).unwrap();
    text.push_str(&format!(
        "\n[backup]\ndir = \"{}\"\ninterval = \"300ms\"\nkeep = 2\n",
        dir.display()
    ));
    std::fs::write(&c.config, text).unwrap();
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&IDS);
    put(&c, leader, "k", "v");
    let list = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    c.wait_for("at least three scheduled backups to have run", || {
        c.stderr(leader).matches("scheduled backup written").count() >= 3
    });
    // A backup runs every 300 ms: the dir is listed with every node paused,
    // between two runs (never mid-write, with its temp file, or between
    // the rename and the rotation). A pause that lands mid-run is undone
    // and tried again after the next run.
    let mut files = Vec::new();
    for _ in 0..20 {
        let runs = c.stderr(leader).matches("scheduled backup written").count();
        c.wait_for("the next scheduled backup", || {
            c.stderr(leader).matches("scheduled backup written").count() > runs
        });
        for id in IDS {
            c.signal(id, libc::SIGSTOP);
        }
        files = list(&dir);
        if files.len() == 2 && files.iter().all(|f| !f.starts_with('.')) {
            break;
        }
        for id in IDS {
            c.signal(id, libc::SIGCONT);
        }
    }
    assert_eq!(files.len(), 2, "keep = 2: {files:?}");
    for f in &files {
        assert!(f.ends_with(".qbak") && !f.starts_with('.'), "{files:?}");
        let out = run_bin(
            &["snapshot", "inspect", dir.join(f).to_str().unwrap()],
            CLI_BOUND,
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("keys        1"), "{}", out.stdout);
    }
    for id in IDS {
        c.signal(id, libc::SIGCONT);
    }
    let metrics = c.call(leader, "GET", "/metrics", b"");
    assert!(
        metrics.body.lines().any(|l| l
            .starts_with("quorumd_backup_last_success_timestamp_seconds ")
            && !l.ends_with(" 0")),
        "{}",
        metrics.body
    );
}

/// Every offset of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_flipped_byte_in_each_file_kind_is_refused_naming_the_file_and_what_to_do() {
    let (mut c, leader) = formed();
    let canary = "ROTTEN-BYTE-CANARY-0123456789";
    for i in 0..20 {
        put(&c, leader, &format!("rot/{i}"), &format!("{canary}-{i}"));
    }
    let victim = IDS.into_iter().find(|&i| i != leader).unwrap();
    c.wait_for("the victim to hold every key", || {
        keys_on(&c, victim).len() == 20
    });
    let dir = c.data_dir(victim);
    let dir_s = dir.to_str().unwrap().to_string();
    let running = run_bin(&["check", "--data", &dir_s], CLI_BOUND);
    assert_eq!(running.code, 1, "{}{}", running.stdout, running.stderr);
    assert!(running.stderr.contains("locked"), "{}", running.stderr);
    c.signal(victim, 15);
    assert_eq!(c.wait_exit(victim, Duration::from_secs(15)), 0);

    let ok = run_bin(&["check", "--data", &dir_s], CLI_BOUND);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("20 keys") && ok.stdout.contains(": ok"),
        "{}",
        ok.stdout
    );

    let mut files = vec![dir.join("raft.redb")];
    let mut wal: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wal.sort();
    files.extend(wal);
    let mut flipped_kinds = BTreeSet::new();
    for f in files {
        let original = std::fs::read(&f).unwrap();
        let at = find_all(&original, canary.as_bytes());
        if at.is_empty() {
            continue;
        }
        let mut bad = original.clone();
        for a in &at {
            bad[a + 3] ^= 0x20;
        }
        std::fs::write(&f, &bad).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let kind = if name.ends_with(".wal") {
            "wal"
        } else {
            "redb"
        };
        flipped_kinds.insert(kind);

        let out = run_bin(&["check", "--data", &dir_s], CLI_BOUND);
        assert_eq!(
            out.code, 1,
            "check missed a flipped byte in {name}: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains(&name),
            "check does not name {name}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("quorumd member replace"),
            "{}",
            out.stderr
        );

        let before = c.stderr(victim).len();
        c.start_node(victim);
        let code = c.wait_exit(victim, Duration::from_secs(20));
        let said = c.stderr_since(victim, before);
        assert_eq!(
            code, 1,
            "the node started on a flipped byte in {name}: {said}"
        );
        assert!(
            said.contains(&name) && said.contains("quorumd member replace"),
            "{said}"
        );
        assert!(!said.contains("panicked"), "{said}");

        std::fs::write(&f, &original).unwrap();
    }
    assert!(
        flipped_kinds.contains("wal") && flipped_kinds.contains("redb"),
        "{flipped_kinds:?}"
    );
    // Whole again, the node starts and serves.
    c.start_node(victim);
    c.wait_for("the victim to serve again", || {
        c.get(victim, "/v1/kv/?keys&stale")
            .is_ok_and(|r| r.status == 200 && r.body.matches("rot/").count() == 20)
    });
}

#[test]
fn a_backup_of_100000_keys_restores_through_raft_on_every_node() {
    // 100,000 keys of 100 B: about 15 MB of backup, far past one 4 MiB
    // peer frame, so the restore must travel in many entries.
    let (c, leader) = formed();
    let value = base64_100();
    for start in (0..100_000).step_by(64) {
        let ops: Vec<String> = (start..(start + 64).min(100_000))
            .map(|i| format!(r#"{{"KV":{{"Verb":"set","Key":"many/{i:06}","Value":"{value}"}}}}"#))
            .collect();
        let body = format!("[{}]", ops.join(","));
        // Sets are idempotent: a batch whose outcome is unknown (a busy
        // machine can cost a leadership) is sent again.
        let mut last = String::new();
        let ok = (0..10).any(|_| {
            let r = c.call(leader, "PUT", "/v1/txn", body.as_bytes());
            last = r.body;
            r.status == 200
        });
        assert!(ok, "batch at {start}: {last}");
    }
    let backup = file(&c, "many.qbak");
    let saved = cli(&c, &["save", &backup]);
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    assert!(saved.stdout.contains("100000 keys"), "{}", saved.stdout);
    assert!(std::fs::metadata(&backup).unwrap().len() > 4 << 20);
    // Later writes the restore must undo.
    for i in 0..10 {
        let r = c.call(leader, "DELETE", &format!("/v1/kv/many/{i:06}"), b"");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    put(&c, leader, "many/000010", "changed");
    put(&c, leader, "later", "x");

    let restored = cli(&c, &["restore", &backup]);
    assert_eq!(restored.code, 0, "{}{}", restored.stdout, restored.stderr);
    c.wait_agreed_leader(&IDS);
    for id in IDS {
        c.wait_for(
            "every node to hold the 100,000 keys and nothing else",
            || {
                let keys = keys_on(&c, id);
                keys.len() == 100_000 && keys.contains("many/000000") && !keys.contains("later")
            },
        );
        assert_eq!(
            c.kv_get(id, "many/000010", "&stale").map(|v| v.len()),
            Some(100)
        );
    }
    let entries = c.stderr(leader).contains("backup restored")
        || IDS
            .iter()
            .any(|&id| c.stderr(id).contains("backup restored"));
    assert!(entries, "the node that restored logs it");
}

/// 100 bytes, base64-encoded.
fn base64_100() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 100 bytes of 'A' (0x41): base64 of 99 bytes is 132 chars, plus the
    // last byte's 4 chars with padding.
    let bytes = [0x41u8; 100];
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k > chunk.len() {
                out.push('=');
            } else {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            }
        }
    }
    out
}
