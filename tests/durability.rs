//! Durable Raft state, driven through real processes: a restart
//! keeps term, vote and log; `kill -9` loses nothing; a data dir of another
//! cluster, node or voter set, a locked one and a damaged one are refused with
//! the documented exit code and sentence.
//!
//! Time limits are sanity bounds for a busy 2-core CI machine, never
//! performance assertions.

mod common;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_no_panic, http_within, run_bin, Finished, Spec, TestCluster};
use serde_json::Value;

/// Generous bound for a graceful exit after SIGTERM, or for reaping a
/// `kill -9`ed node, on a busy machine.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// Generous bound for a node that must refuse its data dir at startup.
const REFUSAL_BOUND: Duration = Duration::from_secs(10);

const IDS: [u64; 3] = [1, 2, 3];

/// The phrase of every refusal that warns against wiping a data dir and
/// reusing the node id, and the safe alternative it offers.
const WIPE_WARNING: &str = "do not wipe the data dir to reuse a node id";
const WIPE_ALTERNATIVE: &str = "give the new box a new id: `quorumd member replace`";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Starts a 3-node cluster and waits until it agrees on a leader.
fn formed_cluster(spec: Spec) -> (TestCluster, u64, u64) {
    let mut c = TestCluster::new(spec);
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&IDS);
    (c, leader, term)
}

fn others(ids: &[u64], except: u64) -> Vec<u64> {
    ids.iter().copied().filter(|&i| i != except).collect()
}

/// A `u64` field of a status body; panics with the body if it is missing.
fn field(status: &Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no integer `{key}`: {status}"))
}

/// `kill -9` of node `id`, and reaps it.
fn kill_9(c: &mut TestCluster, id: u64) {
    c.signal(id, libc::SIGKILL);
    let code = c.wait_exit(id, EXIT_BOUND);
    assert_eq!(code, 128 + libc::SIGKILL, "node {id} after kill -9");
}

/// SIGTERM to every node in `ids` at once, then expects exit 0 from each.
fn stop_all(c: &mut TestCluster, ids: &[u64]) {
    for &id in ids {
        c.signal(id, libc::SIGTERM);
    }
    for &id in ids {
        let code = c.wait_exit(id, EXIT_BOUND);
        assert_eq!(code, 0, "node {id} exit code after SIGTERM");
    }
}

/// Starts node `id` again on its own data dir; returns where its new stderr
/// starts in the (appended) stderr file.
fn restart(c: &mut TestCluster, id: u64) -> usize {
    let from = c.stderr(id).len();
    c.start_node(id);
    from
}

/// A `key=N` value of a log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// What a node recovered at start, from its
/// `replica recovered: term=T ... commit=C ... log=[S, L] ...` line.
#[derive(Debug, Clone, Copy)]
struct Recovered {
    term: u64,
    vote: u64,
    commit: u64,
    /// The last index of the recovered log.
    last: u64,
}

fn recovered_line(log: &str) -> Option<Recovered> {
    let line = log.lines().find(|l| l.contains("replica recovered:"))?;
    let rest = &line[line.find("replica recovered:")?..];
    let log_range = &rest[rest.find("log=[")?..];
    Some(Recovered {
        term: log_field(rest, "term=")?,
        vote: log_field(rest, "vote=")?,
        commit: log_field(rest, "commit=")?,
        last: log_field(log_range, ", ")?,
    })
}

/// What node `id`'s run whose stderr starts at `from` recovered; waits for
/// the line to appear.
fn wait_recovered(c: &TestCluster, id: u64, from: usize) -> Recovered {
    let mut found = None;
    c.wait_for(&format!("node {id} logs `replica recovered`"), || {
        found = recovered_line(&c.stderr_since(id, from));
        found.is_some()
    });
    found.expect("set when found")
}

/// Waits until every node in `ids` reports the same, known commit index, and
/// returns each node's value.
fn wait_commit_agreed(c: &TestCluster, ids: &[u64]) -> BTreeMap<u64, u64> {
    let mut commits = BTreeMap::new();
    c.wait_for(&format!("nodes {ids:?} report one commit index"), || {
        commits.clear();
        for &id in ids {
            match c.try_status(id).and_then(|s| s["commit_index"].as_u64()) {
                Some(ci) => commits.insert(id, ci),
                None => return false,
            };
        }
        let first = commits.values().next().copied();
        commits.values().all(|&ci| Some(ci) == first)
    });
    commits
}

/// A cluster file for a process that must be refused at startup: a quorum
/// wait of 1 s, so that a node that wrongly starts fails fast with exit 3
/// instead of hanging the test.
fn refusing(spec: Spec) -> TestCluster {
    TestCluster::new(spec.quorum_wait("1s"))
}

/// Runs `quorumd run --cluster FILE --node-id ID --data-dir DIR` to
/// completion.
fn run_on_dir(config: &Path, id: u64, data_dir: &Path) -> (Finished, Duration) {
    let started = Instant::now();
    let config = config.to_str().expect("utf-8 path");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let id = id.to_string();
    let f = run_bin(
        &[
            "run",
            "--cluster",
            config,
            "--node-id",
            &id,
            "--data-dir",
            data_dir,
        ],
        REFUSAL_BOUND,
    );
    (f, started.elapsed())
}

/// Asserts a refusal at startup: exit code `want`, every phrase of `phrases`
/// in stderr (case-insensitive), no panic, and no sign that the node got as
/// far as serving or waiting for a quorum (so no quorum timeout was involved).
fn assert_refused(who: &str, (code, want): (i32, i32), stderr: &str, phrases: &[&str]) {
    assert_eq!(code, want, "{who}: exit code; stderr:\n{stderr}");
    let lower = stderr.to_lowercase();
    for p in phrases {
        assert!(
            lower.contains(&p.to_lowercase()),
            "{who}: stderr lacks {p:?}:\n{stderr}"
        );
    }
    assert_no_panic(who, stderr);
    for late in [
        "listening: peers on",
        "quorum not reached",
        "quorum reached",
    ] {
        assert!(
            !stderr.contains(late),
            "{who}: the refusal came late (stderr has {late:?}):\n{stderr}"
        );
    }
}

/// Forms a fresh cluster (the first boot writes every data dir once the
/// members agreed to bootstrap), then stops every node with SIGTERM.
fn first_boot_of_node_1(spec: Spec) -> TestCluster {
    let mut c = TestCluster::new(spec);
    let ids = c.ids();
    c.start(&ids);
    c.wait_agreed_leader(&ids);
    assert!(
        c.data_dir(1).join("raft.redb").is_file(),
        "first boot did not create {}",
        c.data_dir(1).join("raft.redb").display()
    );
    stop_all(&mut c, &ids);
    c
}

// ---------------------------------------------------------------------------
// Restarts and crashes
// ---------------------------------------------------------------------------

#[test]
fn full_restart_keeps_terms_and_elects_a_leader() {
    let (mut c, _, agreed_term) = formed_cluster(Spec::new("dur-restart", 3));
    let before: BTreeMap<u64, (u64, u64)> = IDS
        .iter()
        .map(|&id| {
            let s = c.status(id);
            (id, (field(&s, "term"), field(&s, "commit_index")))
        })
        .collect();

    stop_all(&mut c, &IDS);

    let restarted = Instant::now();
    let from: BTreeMap<u64, usize> = IDS.iter().map(|&id| (id, restart(&mut c, id))).collect();
    let (leader, term) = c.wait_agreed_leader(&IDS);
    eprintln!(
        "full restart: leader {leader} term {term} agreed {}ms after the restart",
        restarted.elapsed().as_millis()
    );

    // Every node recovered the term (and with it the vote) it had, and its log.
    for &id in &IDS {
        let (term_before, commit_before) = before[&id];
        let Recovered {
            term: rec_term,
            commit: rec_commit,
            ..
        } = wait_recovered(&c, id, from[&id]);
        assert!(
            rec_term >= term_before,
            "node {id} recovered term {rec_term}, but had term {term_before} before the restart"
        );
        assert!(
            rec_commit >= commit_before,
            "node {id} recovered commit {rec_commit}, but had commit {commit_before} before"
        );
        let now = field(&c.status(id), "term");
        assert!(
            now >= term_before,
            "node {id} is at term {now} after the restart, below its term {term_before} before"
        );
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
    // Winning an election after the restart takes a term above every term a
    // node recovered; with amnesia the cluster would start over at a low term.
    assert!(
        term > agreed_term,
        "leader {leader} was elected in term {term} after the restart, \
         not above the term {agreed_term} the cluster had before it"
    );
    // And the log goes on after the entries it had.
    let commits = before.iter().map(|(&id, &(_, ci))| (id, ci)).collect();
    wait_commits_pass(&c, &commits);
}

#[test]
fn killed_follower_rejoins_and_catches_up() {
    let (mut c, leader, term) = formed_cluster(Spec::new("dur-follower", 3));
    let follower = others(&IDS, leader)[0];
    let other = others(&IDS, leader)[1];
    let commit_before = wait_commit_agreed(&c, &IDS)[&follower];
    let term_before = field(&c.status(follower), "term");

    kill_9(&mut c, follower);

    // While it is down, the other two move on: a crash of the leader makes
    // them elect a leader in a new term, whose first entry the follower lacks.
    kill_9(&mut c, leader);
    restart(&mut c, leader);
    let (new_leader, _) = c.wait_agreed_leader_where(&[leader, other], |_, t| t > term);
    let mut ahead = 0;
    c.wait_for(
        &format!("the commit index passes {commit_before} without node {follower}"),
        || {
            ahead = c
                .try_status(new_leader)
                .and_then(|s| s["commit_index"].as_u64())
                .unwrap_or(0);
            ahead > commit_before
        },
    );

    let from = restart(&mut c, follower);
    // The log and the term are durable; the commit index is learned again
    // from the leader (a Ready that only moves it writes nothing, and the
    // next write of entries carries it unsynced).
    let rec = wait_recovered(&c, follower, from);
    assert!(
        rec.term >= term_before && rec.last >= commit_before,
        "node {follower} recovered term {} and a log up to {}, \
         but had term {term_before} commit {commit_before} before kill -9",
        rec.term,
        rec.last
    );
    assert!(
        rec.commit < ahead,
        "node {follower} recovered commit {}, yet the cluster committed {ahead} \
         only after it was killed",
        rec.commit
    );

    // It rejoins and its commit index catches up with the leader's.
    let (now_leader, _) = c.wait_agreed_leader(&IDS);
    c.wait_for(
        &format!("node {follower}'s commit index equals leader {now_leader}'s"),
        || {
            let l = c
                .try_status(now_leader)
                .and_then(|s| s["commit_index"].as_u64());
            let f = c
                .try_status(follower)
                .and_then(|s| s["commit_index"].as_u64());
            matches!((l, f), (Some(l), Some(f)) if l == f && f >= ahead)
        },
    );
    for id in IDS {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

/// What the observer saw: for each term, each leader reported in it, with the
/// nodes that reported it.
type Sightings = BTreeMap<u64, BTreeMap<u64, Vec<u64>>>;

/// Polls every node's status every ~15 ms until `stop`; records every
/// `(term, leader_id)` any node reports.
fn observe(
    admins: Vec<(u64, SocketAddr)>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Sightings>>,
    answers: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        for &(id, admin) in &admins {
            let Ok(r) = http_within(
                admin,
                "GET",
                "/admin/cluster/status",
                Duration::from_millis(300),
            ) else {
                continue;
            };
            let Ok(s) = r.json() else { continue };
            answers.fetch_add(1, Ordering::Relaxed);
            if let (Some(term), Some(leader)) = (s["term"].as_u64(), s["leader_id"].as_u64()) {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let by = seen.entry(term).or_default().entry(leader).or_default();
                if !by.contains(&id) {
                    by.push(id);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Stops the observer when the test ends, also when it fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn leader_crash_loop_never_two_leaders_in_a_term() {
    const CYCLES: usize = 10;
    let (mut c, mut leader, mut term) = formed_cluster(Spec::new("dur-crashloop", 3));

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Sightings::new()));
    let answers = Arc::new(AtomicU64::new(0));
    let observer = {
        let admins = IDS.iter().map(|&id| (id, c.admin(id))).collect();
        let (stop, seen, answers) = (stop.clone(), seen.clone(), answers.clone());
        std::thread::spawn(move || observe(admins, stop, seen, answers))
    };
    let stop_observer = StopOnDrop(stop);

    let started = Instant::now();
    let (mut failover_ms, mut cycle_ms) = (Vec::new(), Vec::new());
    for cycle in 1..=CYCLES {
        let t0 = Instant::now();
        let killed = leader;
        kill_9(&mut c, killed);
        let survivors = others(&IDS, killed);
        let (_, t) = c.wait_agreed_leader_where(&survivors, |l, t| l != killed && t > term);
        failover_ms.push(t0.elapsed().as_millis());
        let from = restart(&mut c, killed);
        let rec_term = wait_recovered(&c, killed, from).term;
        assert!(
            rec_term >= term,
            "cycle {cycle}: node {killed} was leader in term {term}, but recovered term {rec_term}"
        );
        // The cluster has a leader again, agreed by all three.
        (leader, term) = c.wait_agreed_leader_where(&IDS, |_, at| at >= t);
        cycle_ms.push(t0.elapsed().as_millis());
        // The observer has seen it too, so it watched every cycle.
        c.wait_for(
            &format!("the observer sees leader {leader} in term {term}"),
            || {
                let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.get(&term).is_some_and(|ls| ls.contains_key(&leader))
            },
        );
    }

    drop(stop_observer);
    observer.join().expect("observer thread");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "leader crash loop: {CYCLES} cycles in {}ms; kill -9 to new leader {failover_ms:?} ms; \
         whole cycle {cycle_ms:?} ms; {} status answers, leaders seen in {} terms",
        started.elapsed().as_millis(),
        answers.load(Ordering::Relaxed),
        seen.len()
    );

    let doubles: Vec<_> = seen.iter().filter(|(_, ls)| ls.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "terms with two different leaders (term -> leader -> reporting nodes): {doubles:?}\n{}",
        c.diagnostics()
    );
    for id in IDS {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

#[test]
fn whole_cluster_kill_9_loses_no_committed_index() {
    let (mut c, _, _) = formed_cluster(Spec::new("dur-crashall", 3));
    // In an idle cluster the commit index settles once the leader's entry is
    // committed everywhere; that is the value just before the crash.
    let before = wait_commit_agreed(&c, &IDS);

    for id in IDS {
        c.signal(id, libc::SIGKILL);
    }
    for id in IDS {
        let code = c.wait_exit(id, EXIT_BOUND);
        assert_eq!(code, 128 + libc::SIGKILL, "node {id} after kill -9");
    }

    let from: BTreeMap<u64, usize> = IDS.iter().map(|&id| (id, restart(&mut c, id))).collect();
    c.wait_agreed_leader(&IDS);
    for id in IDS {
        // Every committed entry is still in the log, and the commit index
        // comes back to where it was.
        let rec = wait_recovered(&c, id, from[&id]);
        assert!(
            rec.last >= before[&id],
            "node {id}: commit index {} before kill -9, but recovered a log up to {}",
            before[&id],
            rec.last
        );
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
    // The new leader's first entry goes after the surviving log, so every
    // commit index ends up above its value before the crash; a node that lost
    // its log would reuse the old indexes.
    wait_commits_pass(&c, &before);
}

/// Writes unique keys through every node, in a loop, until `stop`; records
/// each write the cluster acknowledged (200 `true`).
fn write_load(
    admins: Vec<SocketAddr>,
    writer: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("crash/w{writer}-{n}");
        let admin = admins[(n as usize + writer) % admins.len()];
        let Ok(r) = common::https_within(
            admin,
            None,
            "PUT",
            &format!("/v1/kv/{key}"),
            key.as_bytes(),
            Duration::from_secs(3),
        ) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if r.status == 200 && r.body.trim() == "true" {
            acked.lock().unwrap_or_else(|e| e.into_inner()).push(key);
        }
    }
}

/// `kill -9` of the leader, then of a follower, in turn, while three clients
/// write through every node: every write the cluster acknowledged is on every
/// node afterwards, and the nodes applied the same log (equal applied hash
/// at equal applied index).
#[test]
fn kill_9_loops_under_write_load_lose_no_acknowledged_write() {
    const ROUNDS: usize = 6;
    let (mut c, _, _) = formed_cluster(Spec::new("dur-killload", 3));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let admins: Vec<SocketAddr> = IDS.iter().map(|&id| c.admin(id)).collect();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (admins, stop, acked) = (admins.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || write_load(admins, w, stop, acked))
        })
        .collect();
    let stop_writers = StopOnDrop(stop);
    let count = || acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    for round in 0..ROUNDS {
        let before = count();
        c.wait_for("writes are acknowledged", || count() >= before + 20);
        let (leader, _) = c.wait_agreed_leader(&IDS);
        let victim = if round % 2 == 0 {
            leader
        } else {
            others(&IDS, leader)[round % 2]
        };
        kill_9(&mut c, victim);
        std::thread::sleep(Duration::from_millis(100));
        restart(&mut c, victim);
    }
    let before = count();
    c.wait_for("writes are acknowledged after the last restart", || {
        count() >= before + 20
    });
    drop(stop_writers);
    for w in writers {
        w.join().expect("writer thread");
    }
    c.wait_agreed_leader(&IDS);
    let mut applied = BTreeMap::new();
    c.wait_for("every node applied the same log", || {
        applied.clear();
        for id in IDS {
            let Some(s) = c.try_status(id) else {
                return false;
            };
            applied.insert(id, (s["applied_index"].clone(), s["applied_hash"].clone()));
        }
        let first = applied.values().next().cloned();
        applied.values().all(|v| Some(v) == first.as_ref())
    });
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        acked.len() > ROUNDS * 20,
        "{} writes acknowledged",
        acked.len()
    );
    for id in IDS {
        let listed = c.call(id, "GET", "/v1/kv/crash/?keys&stale", b"");
        assert_eq!(listed.status, 200, "{}", listed.body);
        let keys: Vec<String> = serde_json::from_str(&listed.body).expect("a key list");
        let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "node {id} lacks {} of {} acknowledged writes: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
    eprintln!(
        "kill -9 loop: {} acknowledged writes survived {ROUNDS} kills on every node; applied {:?}",
        acked.len(),
        applied
    );
}

/// The sequence that made a follower forget its term and vote: 3 nodes,
/// writes flowing; SIGSTOP of a follower F; 100 ms later SIGTERM of the
/// leader (it hands off to the third node, in an election F misses); 150 to
/// 250 ms later SIGCONT of F, so that one Ready brings F a new term and
/// committed entries to apply; 300 ms later F's term and vote, then a clean
/// restart of F. The term F recovers is never older than the one it
/// reported, nor its vote in that term another. `QUORUMD_HANDOFF_ROUNDS`
/// sets the rounds (default 5); `QUORUMD_HANDOFF_BIN` runs another build
/// (an older one, to see the test fail).
#[test]
fn a_paused_follower_restarted_after_a_handoff_keeps_its_term_and_vote() {
    let rounds: usize = std::env::var("QUORUMD_HANDOFF_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut c = TestCluster::new(Spec::new("dur-handoff", 3));
    if let Some(bin) = std::env::var_os("QUORUMD_HANDOFF_BIN") {
        c = c.with_bin(Path::new(&bin));
    }
    c.start_all();
    c.wait_agreed_leader(&IDS);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let admins: Vec<SocketAddr> = IDS.iter().map(|&id| c.admin(id)).collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (admins, stop, acked) = (admins.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || write_load(admins, w, stop, acked))
        })
        .collect();
    let stop_writers = StopOnDrop(stop);
    for round in 0..rounds {
        let (leader, _) = c.wait_agreed_leader(&IDS);
        let f = others(&IDS, leader)[round % 2];
        c.signal(f, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(100));
        c.signal(leader, libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(150 + 25 * (round as u64 % 5)));
        c.signal(f, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(300));
        let before = c.status(f);
        let (term, vote) = (field(&before, "term"), before["vote"].as_u64().unwrap_or(0));
        c.signal(f, libc::SIGTERM);
        assert_eq!(c.wait_exit(f, EXIT_BOUND), 0, "node {f} exits cleanly");
        assert_eq!(
            c.wait_exit(leader, EXIT_BOUND),
            0,
            "leader {leader} exits cleanly"
        );
        let from = restart(&mut c, f);
        let got = wait_recovered(&c, f, from);
        assert!(
            got.term > term || (got.term == term && (vote == 0 || got.vote == vote)),
            "round {round}: node {f} reported term {term} (vote {vote}) before its clean \
             restart, and recovered term {} vote {}\n{}",
            got.term,
            got.vote,
            c.stderr_since(f, from)
        );
        restart(&mut c, leader);
    }
    c.wait_agreed_leader(&IDS);
    drop(stop_writers);
    for w in writers {
        w.join().expect("writer thread");
    }
    for id in IDS {
        assert_no_panic(&format!("node {id}"), &c.stderr(id));
    }
}

/// Waits until every node's commit index is above its value in `before`.
fn wait_commits_pass(c: &TestCluster, before: &BTreeMap<u64, u64>) {
    c.wait_for(
        &format!("every commit index passes its value before ({before:?})"),
        || {
            before.iter().all(|(&id, &ci)| {
                c.try_status(id)
                    .and_then(|s| s["commit_index"].as_u64())
                    .is_some_and(|now| now > ci)
            })
        },
    );
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[test]
fn data_dir_of_another_cluster_is_refused_with_exit_2() {
    let a = first_boot_of_node_1(Spec::new("dur-cluster-a", 3));
    // Same ids, voters and ports; only the name differs.
    let mut spec_b = a.spec.clone();
    spec_b.name = "dur-cluster-b".into();
    let b = refusing(spec_b);

    let (f, took) = run_on_dir(&b.config, 1, &a.data_dir(1));
    eprintln!("another cluster: refused in {}ms", took.as_millis());
    assert_refused(
        "node 1 of cluster b on cluster a's dir",
        (f.code, 2),
        &f.stderr,
        &[
            "refusing data dir",
            &a.data_dir(1).display().to_string(),
            "cluster \"dur-cluster-a\"",
            WIPE_WARNING,
            WIPE_ALTERNATIVE,
        ],
    );

    // The refusal left the dir as it was: its own node still starts on it.
    let mut a = a;
    a.start_node(1);
    a.wait_for("node 1 of cluster a serves again", || {
        a.try_status(1).is_some()
    });
}

#[test]
fn data_dir_of_another_node_id_is_refused_with_exit_2() {
    let c = first_boot_of_node_1(Spec::new("dur-node-id", 3).quorum_wait("1s"));
    let (f, took) = run_on_dir(&c.config, 2, &c.data_dir(1));
    eprintln!("another node id: refused in {}ms", took.as_millis());
    assert_refused(
        "node 2 on node 1's dir",
        (f.code, 2),
        &f.stderr,
        &[
            "refusing data dir",
            &c.data_dir(1).display().to_string(),
            "belongs to node 1, not to node 2",
            WIPE_WARNING,
            WIPE_ALTERNATIVE,
        ],
    );
}

#[test]
fn a_changed_voter_set_in_the_file_is_logged_not_refused() {
    let mut c = first_boot_of_node_1(Spec::new("dur-voters", 3));
    // The operator adds a fourth node to the cluster file in place: same name,
    // same data_dir, so node 1 finds its own dir by default.
    let mut grown = Spec::new("dur-voters", 4).quorum_wait("1s");
    for id in IDS {
        grown.nodes.insert(id, c.spec.nodes[&id]);
    }
    let data_root = c.data_dir(1).parent().expect("data root").to_path_buf();
    std::fs::write(&c.config, grown.to_toml(&data_root)).expect("rewrite cluster file");

    // From the first boot on, the membership lives in Raft: node 1 starts,
    // and says once that the file differs from it.
    let from = restart(&mut c, 1);
    c.wait_for("node 1 logs the difference", || {
        let err = c.stderr_since(1, from);
        err.contains("node 1's view of the membership of cluster 'dur-voters', as applied up to index")
            && err.contains("is [1, 2, 3] (a restarted node may still be catching up); the cluster file lists [1, 2, 3, 4]")
    });
    assert!(
        c.is_running(1),
        "node 1 exited:\n{}",
        c.stderr_since(1, from)
    );
}

/// Node 1 of a 3-node cluster, running alone (it waits for a quorum) with its
/// data dir open and locked; returns the cluster and node 1's pid.
fn lock_holder(name: &str) -> (TestCluster, u32) {
    let mut holder = TestCluster::new(Spec::new(name, 3).quorum_wait("60s"));
    holder.start_node(1);
    // A node without state locks its dir first, then asks its peers (none
    // answer here) while its API serves the status.
    holder.wait_for("node 1 has locked its data dir and serves", || {
        holder.data_dir(1).join("LOCK").is_file() && holder.try_status(1).is_some()
    });
    let pid = holder.pid(1).expect("node 1 runs");
    (holder, pid)
}

/// Asserts that `f` is the refusal of node 1's locked data dir.
fn assert_locked_refusal(what: &str, f: &Finished, holder: &TestCluster, pid: u32) {
    assert_refused(
        what,
        (f.code, 1),
        &f.stderr,
        &[
            "is locked by another quorumd process",
            &holder.data_dir(1).display().to_string(),
            &format!("(pid {pid})"),
        ],
    );
}

#[test]
fn locked_data_dir_is_refused_with_exit_1() {
    let (mut holder, pid) = lock_holder("dur-locked");

    // Same name, ids and voters, other ports, so only the data dir collides.
    let other = refusing(Spec::new("dur-locked", 3));
    let (f, took) = run_on_dir(&other.config, 1, &holder.data_dir(1));
    eprintln!("locked: refused in {}ms", took.as_millis());
    assert_locked_refusal("a second process on node 1's dir", &f, &holder, pid);

    // The holder is untouched: still running, still serving, still named in LOCK.
    assert!(holder.is_running(1), "node 1 stopped after the refusal");
    assert!(
        holder.try_status(1).is_some(),
        "node 1 no longer serves\n{}",
        holder.diagnostics()
    );
    let lock = std::fs::read_to_string(holder.data_dir(1).join("LOCK")).expect("read LOCK");
    assert_eq!(lock.trim(), pid.to_string(), "LOCK no longer names node 1");
}

/// The everyday mistake: the same node started twice, same file, same ports.
/// The data dir is locked before the ports are bound, so the refusal names
/// the dir and the running process rather than a busy port.
#[test]
fn same_node_started_twice_names_the_lock_holder() {
    let (mut holder, pid) = lock_holder("dur-twice");
    let config = holder.config.to_str().expect("utf-8 path").to_string();
    let f = run_bin(
        &["run", "--cluster", &config, "--node-id", "1"],
        Duration::from_secs(20),
    );
    assert_locked_refusal("a second start of node 1", &f, &holder, pid);
    assert!(holder.is_running(1), "node 1 stopped after the refusal");
}

/// Overwrites `len` bytes of `file` at `at` with a pattern that is no valid
/// redb page.
fn scribble(file: &Path, at: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open storage file");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let garbage: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0xa5)
        .collect();
    f.write_all(&garbage).expect("write garbage");
    f.sync_all().expect("sync");
}

#[test]
fn damaged_storage_file_is_refused_with_exit_1() {
    let (mut c, _, _) = formed_cluster(Spec::new("dur-damaged", 3).quorum_wait("3s"));
    stop_all(&mut c, &IDS);

    // Node 1: truncated to half. Node 2: its middle overwritten with garbage.
    // Node 3: its header overwritten with garbage.
    let files: BTreeMap<u64, PathBuf> = IDS
        .iter()
        .map(|&id| (id, c.data_dir(id).join("raft.redb")))
        .collect();
    let file = |id: u64| files[&id].clone();
    let size = |id: u64| {
        std::fs::metadata(&files[&id])
            .expect("stat raft.redb")
            .len()
    };
    let len1 = size(1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(file(1))
        .and_then(|f| f.set_len(len1 / 2))
        .expect("truncate raft.redb");
    let len2 = size(2);
    scribble(&file(2), len2 / 4, (len2 / 2) as usize);
    scribble(&file(3), 0, 4096.min(size(3) as usize));

    let damaged: BTreeMap<u64, u64> = IDS.iter().map(|&id| (id, size(id))).collect();
    for id in IDS {
        let from = restart(&mut c, id);
        let code = c.wait_exit(id, REFUSAL_BOUND);
        let stderr = c.stderr_since(id, from);
        assert_refused(
            &format!("node {id} on a damaged raft.redb"),
            (code, 1),
            &stderr,
            &[&format!("storage file {} is damaged", file(id).display())],
        );
        // Never replaced by a fresh, empty store.
        assert_eq!(
            size(id),
            damaged[&id],
            "node {id}'s damaged raft.redb was rewritten"
        );
    }
}
