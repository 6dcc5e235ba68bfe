//! `quorumd member list|add|remove|promote|replace`: membership from the
//! shell, over the admin API of the first node that answers (any node
//! forwards a change to the leader).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{AdminClient, Response};
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

/// The `member` subcommands.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members: id, addresses, role, alive, sessions held.
    List {
        #[command(flatten)]
        target: Target,
        /// Print a JSON array: `[{"id", "addr", "admin", "role", "alive", "joined", "sessions"}]`.
        #[arg(long)]
        json: bool,
    },
    /// Add a new node as a learner.
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        new: NewNode,
    },
    /// Remove a voter or learner; its id is never used again.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The node to remove.
        id: u64,
    },
    /// Make a caught-up learner a voter.
    Promote {
        #[command(flatten)]
        target: Target,
        /// The learner.
        id: u64,
    },
    /// Replace OLD_ID by a new node: add it as a learner, wait until it has
    /// caught up, then promote it and remove OLD_ID in one joint-consensus
    /// change.
    Replace {
        #[command(flatten)]
        target: Target,
        /// The member to replace.
        old_id: u64,
        #[command(flatten)]
        new: NewNode,
    },
}

/// The cluster to talk to.
#[derive(Debug, Args)]
pub struct Target {
    /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    token: crate::client::TokenArg,
}

/// A node to add.
#[derive(Debug, Args)]
pub struct NewNode {
    /// Its node id: new, never used in this cluster.
    #[arg(long)]
    id: u64,
    /// Its peer (Raft) address, ip:port.
    #[arg(long, value_name = "ADDR")]
    addr: String,
    /// Its HTTP admin address, ip:port.
    #[arg(long, value_name = "ADDR")]
    admin: String,
}

const TIMEOUT: Duration = Duration::from_secs(15);
/// How long `replace` waits for the new node to catch up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// Runs a `member` command.
pub fn run(command: MemberCommand) -> Result<()> {
    match command {
        MemberCommand::List { target, json } => {
            let r = target.ask(Method::GET, "/admin/cluster/members", Vec::new())?;
            let members = ok_json(&r)?;
            if json {
                let list: Vec<Value> = members
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        json!({"id": m["id"], "addr": m["addr"], "admin": m["admin"],
                               "role": m["role"], "alive": m["alive"], "joined": m["joined"],
                               "sessions": m["sessions"]})
                    })
                    .collect();
                println!("{:#}", Value::Array(list));
                return Ok(());
            }
            let mut rows =
                vec![["ID", "ADDRESS", "ADMIN", "ROLE", "ALIVE", "SESSIONS"].map(String::from)];
            for m in members.as_array().into_iter().flatten() {
                rows.push([
                    m["id"].to_string(),
                    m["addr"].as_str().unwrap_or("-").to_string(),
                    m["admin"].as_str().unwrap_or("-").to_string(),
                    m["role"].as_str().unwrap_or("-").to_string(),
                    if m["alive"] == true { "yes" } else { "no" }.to_string(),
                    m["sessions"].as_u64().unwrap_or(0).to_string(),
                ]);
            }
            print!("{}", crate::status::table(&rows));
            Ok(())
        }
        MemberCommand::Add { target, new } => {
            add(&target, &new, true)?;
            println!(
                "added node {} as a learner; start it with its [[node]] entry in its cluster file",
                new.id
            );
            Ok(())
        }
        MemberCommand::Remove { target, id } => {
            let r = target.ask(
                Method::DELETE,
                &format!("/admin/cluster/members/{id}"),
                Vec::new(),
            )?;
            ok_json(&r)?;
            println!("removed node {id}");
            Ok(())
        }
        MemberCommand::Promote { target, id } => {
            let r = target.ask(
                Method::POST,
                &format!("/admin/cluster/members/{id}/promote"),
                Vec::new(),
            )?;
            ok_json(&r)?;
            println!("node {id} is a voter");
            Ok(())
        }
        MemberCommand::Replace {
            target,
            old_id,
            new,
        } => replace(&target, old_id, &new),
    }
}

fn add(target: &Target, new: &NewNode, auto_promote: bool) -> Result<()> {
    let body =
        json!({"id": new.id, "addr": new.addr, "admin": new.admin, "auto_promote": auto_promote});
    let r = target.ask(
        Method::POST,
        "/admin/cluster/members",
        body.to_string().into_bytes(),
    )?;
    ok_json(&r).map(|_| ())
}

fn replace(target: &Target, old: u64, new: &NewNode) -> Result<()> {
    let started = Instant::now();
    println!("1/3 adding node {} ({}) as a learner", new.id, new.addr);
    if let Err(e) = add(target, new, false) {
        // A retry of a replacement that got this far already: the node is
        // a member at these addresses.
        let same = roles(target).ok().and_then(|m| m.get(&new.id).cloned());
        match same {
            Some((_, addr, admin)) if addr == new.addr && admin == new.admin => {
                println!("    node {} is a member already", new.id)
            }
            _ => return Err(e),
        }
    }
    println!(
        "2/3 waiting for node {} to catch up (start it now if it is not running)",
        new.id
    );
    let path = format!("/admin/cluster/members/{}/promote?replace={old}", new.id);
    loop {
        let r = target.ask(Method::POST, &path, Vec::new())?;
        if r.status == 200 {
            break;
        }
        // An answer that is not a success may come after the change took
        // effect (a 503 when leadership moved as it committed, then a 409
        // "a voter already" to the retry): the membership says.
        if replaced(target, old, new.id) {
            println!(
                "    the replacement had taken effect already (the cluster answered {}: {})",
                r.status,
                r.error_text()
            );
            break;
        }
        let behind = r.status == 409 && r.text().contains("still behind");
        let unsure = matches!(r.status, 502..=504);
        if !behind && !unsure {
            return Err(refused(&r));
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(Error::Request(format!(
                "node {} did not catch up within {}: {}; it stays a learner (remove it with \
                 `quorumd member remove {}`, or run the promotion again later)",
                new.id,
                humantime::format_duration(CATCH_UP_LIMIT),
                r.error_text(),
                new.id
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "3/3 node {} votes and node {old} is removed ({} ms)",
        new.id,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Every member's `(role, addr, admin)`, as the first node that answers
/// reports them.
fn roles(target: &Target) -> Result<BTreeMap<u64, (String, String, String)>> {
    let r = target.ask(Method::GET, "/admin/cluster/members", Vec::new())?;
    let members = ok_json(&r)?;
    Ok(members
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            Some((
                m["id"].as_u64()?,
                (text("role"), text("addr"), text("admin")),
            ))
        })
        .collect())
}

/// True if `new` votes and `old` is no member: the replacement is done.
fn replaced(target: &Target, old: u64, new: u64) -> bool {
    roles(target).is_ok_and(|m| {
        m.get(&new).is_some_and(|(role, _, _)| role == "voter") && !m.contains_key(&old)
    })
}

impl Target {
    /// Sends the request to the first node of the file that answers.
    fn ask(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response> {
        let config = ClusterConfig::load(&crate::cli::cluster_file(self.cluster.clone())?)?;
        AdminClient::for_cli(&config)?
            .with_token(self.token.secret())
            .first_answer(&config.name, &config.nodes, method, path, body, TIMEOUT)
            .map_err(Error::Request)
    }
}

fn refused(r: &Response) -> Error {
    if r.status == 401 {
        return Error::Request(format!(
            "{}: {}",
            crate::status::NEEDS_CLIENT_CERT,
            r.error_text()
        ));
    }
    Error::Request(format!(
        "the cluster answered {}: {}",
        r.status,
        r.error_text()
    ))
}

fn ok_json(r: &Response) -> Result<Value> {
    if r.status != 200 {
        return Err(refused(r));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| Error::Request(format!("the cluster answered malformed JSON: {e}")))
}
