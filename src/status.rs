//! `quorumd status`: one table of every member's view.
//!
//! It follows the live membership, not only the cluster file: it asks the
//! file's nodes for `/admin/cluster/status`, then asks the leader (or, with
//! no leader answering, the first node that answers) for
//! `/admin/cluster/members`, and shows one row per member, a node added
//! since the file was written included. A line above the table says whose
//! view of the membership it shows. It succeeds only if every member
//! answers and all agree on one leader; otherwise it says what is wrong in
//! one sentence.
//!
//! On a cluster with `[tls]` it speaks HTTPS: it checks that each node's
//! certificate is signed by the CA and names that node (`node-N.cluster`),
//! and presents the file's `client_cert`, which the admin API requires for
//! everything but `/health`, `/ready` and `/metrics`.
//!
//! With `--json` it prints one JSON object instead of the table (see
//! [`to_json`]), with the same exit code.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use crate::client::AdminClient;
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::{Error, Result};

/// How long one node may take to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a node gave no status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No answer at all (refused, timed out, TLS failed): the reason.
    Unreachable(String),
    /// It answered with this status code and sentence.
    Answered(u16, String),
}

impl Problem {
    /// The sentence for a user.
    pub fn sentence(&self) -> String {
        match self {
            Problem::Unreachable(e) => e.clone(),
            Problem::Answered(401, _) => NEEDS_CLIENT_CERT.to_string(),
            Problem::Answered(code, e) => format!("answered {code}: {e}"),
        }
    }

    /// The table's cell.
    fn cell(&self) -> String {
        match self {
            Problem::Unreachable(_) => "unreachable".to_string(),
            Problem::Answered(401, _) => "401: needs client_cert".to_string(),
            Problem::Answered(code, _) => format!("answered {code}"),
        }
    }
}

/// What a 401 of the admin API means to a user of the command line.
pub const NEEDS_CLIENT_CERT: &str = "401: this command needs `client_cert`";

/// One member (or node of the file), and its answer.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node: its id and addresses.
    pub node: NodeConfig,
    /// `voter` or `learner` in the membership shown; `None` when the
    /// membership is the cluster file's (no node reported the live one).
    pub member_role: Option<String>,
    /// Its status JSON, or why there is none.
    pub status: std::result::Result<Value, Problem>,
}

/// Whose view of the membership the table shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The live membership, as this node reported it; `true` if that node
    /// leads.
    Node(u64, bool),
    /// The cluster file's nodes: no node reported the live membership.
    File(String),
}

impl Source {
    /// One line saying whose view it is.
    pub fn sentence(&self, file: &str) -> String {
        match self {
            Source::Node(id, true) => {
                format!("members: the live membership, as node {id} (the leader) reports it")
            }
            Source::Node(id, false) => format!(
                "members: node {id}'s view of the live membership (no leader answered; it may be behind)"
            ),
            Source::File(why) => {
                format!("members: the nodes listed in {file}, not the live membership ({why})")
            }
        }
    }
}

/// The members and their answers.
#[derive(Debug, Clone)]
pub struct Report {
    /// Whose membership it is.
    pub source: Source,
    /// One view per member, by id.
    pub views: Vec<NodeView>,
    /// Nodes of the cluster file that are not members (removed).
    pub not_members: Vec<u64>,
}

/// Queries every node of the file, then every member of the live
/// membership that the file does not list.
pub fn collect(config: &ClusterConfig, client: &AdminClient) -> Report {
    let mut views: Vec<NodeView> = config
        .nodes
        .iter()
        .map(|n| NodeView {
            node: n.clone(),
            member_role: None,
            status: get_json(client, n.id, n.admin, "/admin/cluster/status"),
        })
        .collect();
    // The leader the answers name, then every node that answered: the
    // first to report the membership is the one whose view is shown.
    let answered: Vec<&NodeView> = views.iter().filter(|v| v.status.is_ok()).collect();
    let leader = answered
        .iter()
        .find_map(|v| v.status.as_ref().ok().and_then(|s| s["leader_id"].as_u64()));
    let mut askable: Vec<(u64, SocketAddr)> = Vec::new();
    if let Some(l) = leader {
        if let Some(v) = answered.iter().find(|v| v.node.id == l) {
            askable.push((l, v.node.admin));
        }
    }
    askable.extend(answered.iter().map(|v| (v.node.id, v.node.admin)));
    let mut members: Option<(u64, Vec<Value>)> = None;
    let mut why = "no node answered".to_string();
    for (id, admin) in askable {
        match get_json(client, id, admin, "/admin/cluster/members") {
            Ok(Value::Array(list)) => {
                members = Some((id, list));
                break;
            }
            Ok(_) => why = format!("node {id} answered an unexpected member list"),
            Err(p) => why = format!("node {id}: {}", p.sentence()),
        }
    }
    if views.iter().all(|v| v.status.is_err()) {
        why = "no node answered".to_string();
    }
    let Some((from, list)) = members else {
        return Report {
            source: Source::File(why),
            views,
            not_members: Vec::new(),
        };
    };
    let mut rows = Vec::new();
    for m in &list {
        let parse = |k: &str| m[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
        let (Some(id), Some(addr), Some(admin)) = (m["id"].as_u64(), parse("addr"), parse("admin"))
        else {
            continue;
        };
        let role = m["role"].as_str().map(str::to_string);
        // A node of the file at the same admin address was asked already.
        let known = views
            .iter()
            .position(|v| v.node.id == id && v.node.admin == admin);
        let status = match known {
            Some(i) => views[i].status.clone(),
            None => get_json(client, id, admin, "/admin/cluster/status"),
        };
        rows.push(NodeView {
            node: NodeConfig { id, addr, admin },
            member_role: role,
            status,
        });
    }
    rows.sort_by_key(|v| v.node.id);
    let not_members = views
        .drain(..)
        .map(|v| v.node.id)
        .filter(|id| !rows.iter().any(|r| r.node.id == *id))
        .collect();
    let leads = leader == Some(from);
    Report {
        source: Source::Node(from, leads),
        views: rows,
        not_members,
    }
}

/// The table, one row per member.
pub fn render(views: &[NodeView]) -> String {
    let ids: Vec<u64> = views.iter().map(|v| v.node.id).collect();
    let mut rows = vec![[
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "ALIVE PEERS",
        "READY",
    ]
    .map(String::from)];
    for v in views {
        let row = match &v.status {
            Ok(s) => {
                let text = |k: &str| match &s[k] {
                    Value::Null => "-".to_string(),
                    Value::String(x) => x.clone(),
                    other => other.to_string(),
                };
                // Peers among the members shown, over the other members.
                let alive = s["live_peers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_u64)
                            .filter(|p| *p != v.node.id && ids.contains(p))
                            .count()
                            .to_string()
                    })
                    .unwrap_or_else(|| "-".into());
                let role = match (text("role"), v.member_role.as_deref()) {
                    (r, Some("learner")) => format!("{r} (learner)"),
                    (r, _) => r,
                };
                [
                    v.node.id.to_string(),
                    v.node.addr.to_string(),
                    role,
                    text("term"),
                    text("leader_id"),
                    format!("{alive}/{}", ids.len().saturating_sub(1)),
                    if is_ready(s) { "yes" } else { "no" }.to_string(),
                ]
            }
            Err(p) => [
                v.node.id.to_string(),
                v.node.addr.to_string(),
                p.cell(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no".into(),
            ],
        };
        rows.push(row);
    }
    table(&rows)
}

/// Aligned columns, two spaces apart; every column as wide as its widest
/// cell, header included.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn is_ready(s: &Value) -> bool {
    s["bootstrap_complete"].as_bool() == Some(true) && s["leader_id"].is_u64()
}

/// `Ok` if every member answered and all name the same leader; otherwise
/// one sentence saying what is wrong.
pub fn verdict(views: &[NodeView]) -> std::result::Result<u64, String> {
    let unauthorized: Vec<String> = views
        .iter()
        .filter(|v| matches!(v.status, Err(Problem::Answered(401, _))))
        .map(|v| v.node.id.to_string())
        .collect();
    if !unauthorized.is_empty() {
        return Err(format!(
            "{NEEDS_CLIENT_CERT} (node {} answered 401: set client_cert and client_key in the \
             [tls] table of the cluster file; `quorumd certs` writes a client pair)",
            unauthorized.join(", ")
        ));
    }
    let down: Vec<String> = views
        .iter()
        .filter_map(|v| {
            v.status
                .as_ref()
                .err()
                .map(|e| format!("node {} ({}): {}", v.node.id, v.node.admin, e.sentence()))
        })
        .collect();
    if !down.is_empty() {
        return Err(format!("unreachable: {}", down.join("; ")));
    }
    let leaders: Vec<(u64, Option<u64>)> = views
        .iter()
        .filter_map(|v| {
            let s = v.status.as_ref().ok()?;
            Some((v.node.id, s["leader_id"].as_u64()))
        })
        .collect();
    if leaders.is_empty() {
        return Err("no member answered".to_string());
    }
    if leaders.iter().all(|(_, l)| l.is_none()) {
        return Err("no leader: no node knows a leader".to_string());
    }
    let first = leaders[0].1;
    if leaders.iter().any(|(_, l)| *l != first) {
        let said: Vec<String> = leaders
            .iter()
            .map(|(id, l)| match l {
                Some(l) => format!("node {id} says {l}"),
                None => format!("node {id} knows none"),
            })
            .collect();
        return Err(format!("nodes disagree on the leader: {}", said.join(", ")));
    }
    Ok(first.expect("not all none"))
}

/// The report as JSON, with stable field names:
/// `{"cluster", "healthy", "leader_id", "problem", "membership": {"source":
/// "leader"|"node"|"file", "node_id"}, "not_members": [ids], "nodes":
/// [{"id", "addr", "admin", "member_role", "reachable", "error", "status"}]}`.
pub fn to_json(config: &ClusterConfig, report: &Report) -> Value {
    let verdict = verdict(&report.views);
    let (source, from) = match &report.source {
        Source::Node(id, true) => ("leader", Some(*id)),
        Source::Node(id, false) => ("node", Some(*id)),
        Source::File(_) => ("file", None),
    };
    let nodes: Vec<Value> = report
        .views
        .iter()
        .map(|v| {
            json!({
                "id": v.node.id,
                "addr": v.node.addr.to_string(),
                "admin": v.node.admin.to_string(),
                "member_role": v.member_role,
                "reachable": !matches!(v.status, Err(Problem::Unreachable(_))),
                "error": v.status.as_ref().err().map(Problem::sentence),
                "status": v.status.as_ref().ok(),
            })
        })
        .collect();
    json!({
        "cluster": config.name,
        "healthy": verdict.is_ok(),
        "leader_id": verdict.as_ref().ok(),
        "problem": verdict.as_ref().err(),
        "membership": {"source": source, "node_id": from},
        "not_members": report.not_members,
        "nodes": nodes,
    })
}

/// Runs the command: prints the table (or JSON), then fails if the cluster
/// is unwell.
pub fn run(config: &ClusterConfig, file: &str, as_json: bool) -> Result<()> {
    let client =
        AdminClient::for_cli(config)?.with_token(crate::client::TokenArg::default().secret());
    let report = collect(config, &client);
    let none_answered = report
        .views
        .iter()
        .all(|v| matches!(v.status, Err(Problem::Unreachable(_))));
    if as_json {
        println!("{:#}", to_json(config, &report));
    } else if !none_answered {
        println!("{}", report.source.sentence(file));
        print!("{}", render(&report.views));
        if !report.not_members.is_empty() {
            let ids: Vec<String> = report.not_members.iter().map(u64::to_string).collect();
            println!(
                "not members (listed in {file} but removed): node {}",
                ids.join(", ")
            );
        }
    }
    if none_answered {
        let failures: Vec<(u64, SocketAddr, String)> = report
            .views
            .iter()
            .map(|v| {
                let why = v.status.as_ref().err().map(Problem::sentence);
                (v.node.id, v.node.admin, why.unwrap_or_default())
            })
            .collect();
        return Err(Error::Unhealthy(crate::client::no_answer(
            &config.name,
            &failures,
        )));
    }
    let full: Vec<String> = report
        .views
        .iter()
        .filter_map(|v| {
            let s = v.status.as_ref().ok()?;
            let why = s["disk_full"].as_str()?;
            Some(format!("node {}: NOSPACE: {why}", v.node.id))
        })
        .collect();
    if !as_json {
        for line in &full {
            println!("{line}");
        }
    }
    if !full.is_empty() {
        return Err(Error::Unhealthy(format!(
            "{} of the members has a full disk (NOSPACE)",
            full.len()
        )));
    }
    match verdict(&report.views) {
        Ok(leader) => {
            if !as_json {
                println!(
                    "cluster '{}' is healthy: every member agrees node {leader} leads",
                    config.name
                );
            }
            Ok(())
        }
        Err(sentence) => Err(Error::Unhealthy(format!(
            "cluster '{}' is not healthy: {sentence}",
            config.name
        ))),
    }
}

/// GET `path` of node `id` at `admin`; the JSON of a 200 answer, else what
/// went wrong.
pub fn get_json(
    client: &AdminClient,
    id: u64,
    admin: SocketAddr,
    path: &str,
) -> std::result::Result<Value, Problem> {
    let r = client
        .request(id, admin, Method::GET, path, Vec::new(), QUERY_TIMEOUT)
        .map_err(Problem::Unreachable)?;
    if r.status != 200 {
        return Err(Problem::Answered(r.status, r.error_text()));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| Problem::Answered(r.status, format!("bad JSON from {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(id: u64, status: std::result::Result<Value, Problem>) -> NodeView {
        NodeView {
            node: NodeConfig {
                id,
                addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
                admin: format!("127.0.0.1:{}", 8100 + id).parse().unwrap(),
            },
            member_role: Some("voter".into()),
            status,
        }
    }

    fn up(leader: Option<u64>) -> std::result::Result<Value, Problem> {
        Ok(json!({"role": "follower", "term": 2, "leader_id": leader,
                  "bootstrap_complete": true, "cluster_size": 3, "live_peers": [1, 2]}))
    }

    fn down() -> std::result::Result<Value, Problem> {
        Err(Problem::Unreachable("refused".into()))
    }

    #[test]
    fn agreement_on_one_leader_is_healthy() {
        assert_eq!(
            verdict(&[view(1, up(Some(1))), view(2, up(Some(1)))]),
            Ok(1)
        );
    }

    #[test]
    fn each_problem_gets_its_sentence() {
        let e = verdict(&[view(1, up(Some(1))), view(2, down())]).unwrap_err();
        assert!(e.contains("node 2 (127.0.0.1:8102): refused"), "{e}");
        let e = verdict(&[view(1, up(None)), view(2, up(None))]).unwrap_err();
        assert!(e.starts_with("no leader"), "{e}");
        let e = verdict(&[view(1, up(Some(1))), view(2, up(Some(2)))]).unwrap_err();
        assert!(e.contains("node 1 says 1, node 2 says 2"), "{e}");
        let e = verdict(&[
            view(1, Err(Problem::Answered(401, "x".into()))),
            view(2, up(Some(1))),
        ])
        .unwrap_err();
        assert!(e.starts_with(NEEDS_CLIENT_CERT), "{e}");
    }

    #[test]
    fn table_is_aligned() {
        let t = render(&[view(1, up(Some(1))), view(12, down())]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("ROLE").unwrap();
        assert_eq!(&lines[1][col..col + 8], "follower");
        assert_eq!(&lines[2][col..col + 11], "unreachable");
        // Alive peers count the members shown (node 2 is not), over the others.
        assert!(lines[1].contains("0/1"), "{t}");
    }
}
