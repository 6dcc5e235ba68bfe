//! The operator's view through real processes: `/metrics` in Prometheus text,
//! and `quorumd status --cluster FILE` with its table and exit code.

mod common;

use std::time::Duration;

use common::{run_bin, TestCluster};

const EXIT_BOUND: Duration = Duration::from_secs(15);

/// The value of the first sample line that starts with `name` (labels
/// included in `name` when given).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_report_role_term_leader_and_peer_traffic() {
    let mut c = TestCluster::of("metrics", 3);
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);
    let follower = if leader == 1 { 2 } else { 1 };

    // Counters move with traffic; wait until the leader has sent a few
    // heartbeats to every peer.
    c.wait_for(
        "leader's /metrics shows messages sent to every peer",
        || {
            let Ok(r) = c.get(leader, "/metrics") else {
                return false;
            };
            [1u64, 2, 3].iter().filter(|&&p| p != leader).all(|p| {
                sample(
                    &r.body,
                    &format!("quorumd_peer_messages_sent_total{{peer=\"{p}\"}}"),
                )
                .is_some_and(|n| n > 0.0)
            })
        },
    );

    for (id, role) in [(leader, "leader"), (follower, "follower")] {
        let r = c.get(id, "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        let body = &r.body;
        assert_eq!(
            sample(body, &format!("quorumd_raft_role{{role=\"{role}\"}}")),
            Some(1.0),
            "node {id} is {role}:\n{body}"
        );
        assert_eq!(
            sample(body, "quorumd_raft_term"),
            Some(term as f64),
            "{body}"
        );
        assert_eq!(
            sample(body, "quorumd_raft_leader_id"),
            Some(leader as f64),
            "{body}"
        );
        assert!(
            sample(body, "quorumd_raft_leader_changes_total").is_some_and(|n| n >= 1.0),
            "{body}"
        );
        assert_eq!(sample(body, "quorumd_peers_alive"), Some(2.0), "{body}");
        let boot = sample(body, "quorumd_bootstrap_duration_seconds").expect("bootstrap");
        assert!(boot > 0.0 && boot < 20.0, "bootstrap duration {boot}");
        assert!(
            sample(body, "quorumd_raft_ready_duration_seconds_count").is_some_and(|n| n >= 1.0),
            "{body}"
        );
        for kind in ["sent", "received", "dropped"] {
            assert!(
                body.contains(&format!("quorumd_peer_messages_{kind}_total{{peer=")),
                "no per-peer {kind} counter on node {id}:\n{body}"
            );
        }
    }
}

#[test]
fn status_command_agrees_then_names_an_unreachable_node() {
    let mut c = TestCluster::of("status-cmd", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    let config = c.config.to_str().expect("utf-8 path").to_string();

    let f = run_bin(&["status", "--cluster", &config], EXIT_BOUND);
    assert_eq!(f.code, 0, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    let lines: Vec<&str> = f.stdout.lines().collect();
    // First whose view of the membership it is, then the table.
    assert!(
        lines[0].starts_with("members: the live membership, as node"),
        "{}",
        f.stdout
    );
    let lines = &lines[1..];
    assert!(lines[0].starts_with("ID"), "{}", f.stdout);
    for col in ["ADDRESS", "ROLE", "TERM", "LEADER", "ALIVE PEERS", "READY"] {
        assert!(lines[0].contains(col), "header lacks {col}: {}", lines[0]);
    }
    // One row per node, every column aligned under its header.
    let role_col = lines[0].find("ROLE").unwrap();
    for id in [1u64, 2, 3] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id}:\n{}", f.stdout));
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(&row[role_col..role_col + role.len()], role, "{row}");
        assert!(
            row.trim_end().ends_with("yes"),
            "node {id} not ready: {row}"
        );
    }
    assert!(
        f.stdout
            .contains(&format!("every member agrees node {leader} leads")),
        "{}",
        f.stdout
    );

    // Stop a follower: the command now fails with one sentence naming it.
    let gone = if leader == 3 { 2 } else { 3 };
    c.signal(gone, libc::SIGTERM);
    assert_eq!(c.wait_exit(gone, EXIT_BOUND), 0);
    let f = run_bin(&["status", "--cluster", &config], EXIT_BOUND);
    assert_eq!(f.code, 1, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    assert!(
        f.stderr.contains("is not healthy: unreachable")
            && f.stderr
                .contains(&format!("node {gone} ({})", c.admin(gone))),
        "stderr must name the unreachable node:\n{}",
        f.stderr
    );
    assert!(
        f.stdout.contains("unreachable"),
        "table must mark it:\n{}",
        f.stdout
    );
}
