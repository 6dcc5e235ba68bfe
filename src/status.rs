//! `quorumd status --cluster FILE`: one table of every node's view.
//!
//! It asks each node's admin API for `/admin/cluster/status`, prints one
//! aligned row per node, and succeeds only if every node answers and all agree
//! on one leader. Otherwise it says what is wrong in one sentence.
//!
//! On a cluster with `[tls]` it speaks HTTPS: it checks that each node's
//! certificate is signed by the CA and names that node (`node-N.cluster`),
//! and presents the file's `client_cert`, which the admin API requires for
//! everything but `/health`, `/ready` and `/metrics`.

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::client::AdminClient;
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::{Error, Result};

/// How long one node may take to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's answer, or why there was none.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node as the cluster file lists it.
    pub node: NodeConfig,
    /// Its status JSON, or the error that stopped the query.
    pub status: std::result::Result<Value, String>,
}

/// Queries every node of the file.
pub fn collect(config: &ClusterConfig, client: &AdminClient) -> Vec<NodeView> {
    config
        .nodes
        .iter()
        .map(|n| NodeView {
            node: n.clone(),
            status: get_json(client, n, "/admin/cluster/status"),
        })
        .collect()
}

/// The table, one row per node.
pub fn render(views: &[NodeView]) -> String {
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
                let alive = s["live_peers"]
                    .as_array()
                    .map(|a| a.len().to_string())
                    .unwrap_or_else(|| "-".into());
                let total = s["cluster_size"]
                    .as_u64()
                    .map_or(0, |n| n.saturating_sub(1));
                [
                    v.node.id.to_string(),
                    v.node.addr.to_string(),
                    text("role"),
                    text("term"),
                    text("leader_id"),
                    format!("{alive}/{total}"),
                    if is_ready(s) { "yes" } else { "no" }.to_string(),
                ]
            }
            Err(_) => [
                v.node.id.to_string(),
                v.node.addr.to_string(),
                "unreachable".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no".into(),
            ],
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
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

/// `Ok` if every node answered and all name the same leader; otherwise one
/// sentence saying what is wrong.
pub fn verdict(views: &[NodeView]) -> std::result::Result<u64, String> {
    let down: Vec<String> = views
        .iter()
        .filter_map(|v| {
            v.status
                .as_ref()
                .err()
                .map(|e| format!("node {} ({}): {e}", v.node.id, v.node.admin))
        })
        .collect();
    if !down.is_empty() {
        return Err(format!("unreachable: {}", down.join("; ")));
    }
    let leaders: Vec<(u64, Option<u64>)> = views
        .iter()
        .map(|v| {
            let s = v.status.as_ref().expect("checked above");
            (v.node.id, s["leader_id"].as_u64())
        })
        .collect();
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

/// Runs the command: prints the table, then fails if the cluster is unwell.
pub fn run(config: &ClusterConfig) -> Result<()> {
    let client = AdminClient::for_cli(config)?;
    let views = collect(config, &client);
    print!("{}", render(&views));
    match verdict(&views) {
        Ok(leader) => {
            println!(
                "cluster '{}' is healthy: every node agrees node {leader} leads",
                config.name
            );
            Ok(())
        }
        Err(sentence) => Err(Error::Unhealthy(format!(
            "cluster '{}' is not healthy: {sentence}",
            config.name
        ))),
    }
}

/// GET `path` of `node`; the JSON of a 200 answer, else what went wrong.
pub fn get_json(
    client: &AdminClient,
    node: &NodeConfig,
    path: &str,
) -> std::result::Result<Value, String> {
    let r = client.request(
        node.id,
        node.admin,
        Method::GET,
        path,
        Vec::new(),
        QUERY_TIMEOUT,
    )?;
    if r.status != 200 {
        return Err(format!("answered {}: {}", r.status, r.error_text()));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("bad JSON from {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(id: u64, status: std::result::Result<Value, String>) -> NodeView {
        NodeView {
            node: NodeConfig {
                id,
                addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
                admin: format!("127.0.0.1:{}", 8100 + id).parse().unwrap(),
            },
            status,
        }
    }

    fn up(leader: Option<u64>) -> std::result::Result<Value, String> {
        Ok(json!({"role": "follower", "term": 2, "leader_id": leader,
                  "bootstrap_complete": true, "cluster_size": 3, "live_peers": [1, 2]}))
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
        let e = verdict(&[view(1, up(Some(1))), view(2, Err("refused".into()))]).unwrap_err();
        assert!(e.contains("node 2 (127.0.0.1:8102): refused"), "{e}");
        let e = verdict(&[view(1, up(None)), view(2, up(None))]).unwrap_err();
        assert!(e.starts_with("no leader"), "{e}");
        let e = verdict(&[view(1, up(Some(1))), view(2, up(Some(2)))]).unwrap_err();
        assert!(e.contains("node 1 says 1, node 2 says 2"), "{e}");
    }

    #[test]
    fn table_is_aligned() {
        let t = render(&[view(1, up(Some(1))), view(12, Err("x".into()))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("ROLE").unwrap();
        assert_eq!(&lines[1][col..col + 8], "follower");
        assert_eq!(&lines[2][col..col + 11], "unreachable");
    }
}
