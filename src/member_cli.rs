//! `quorumd member list|add|remove|promote|replace`: membership from the
//! shell, over the admin API of the first node that answers (any node
//! forwards a change to the leader).

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
    /// List the members: id, addresses, role, alive.
    List {
        #[command(flatten)]
        target: Target,
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
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
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
        MemberCommand::List { target } => {
            let r = target.ask(Method::GET, "/admin/cluster/members", Vec::new())?;
            let members = ok_json(&r)?;
            println!(
                "{:<6} {:<22} {:<22} {:<8} ALIVE",
                "ID", "ADDRESS", "ADMIN", "ROLE"
            );
            for m in members.as_array().into_iter().flatten() {
                println!(
                    "{:<6} {:<22} {:<22} {:<8} {}",
                    m["id"],
                    m["addr"].as_str().unwrap_or("-"),
                    m["admin"].as_str().unwrap_or("-"),
                    m["role"].as_str().unwrap_or("-"),
                    if m["alive"] == true { "yes" } else { "no" }
                );
            }
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
    add(target, new, false)?;
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
        let behind = r.status == 409 && r.text().contains("still behind");
        if !behind && r.status != 503 {
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

impl Target {
    /// Sends the request to the first node of the file that answers.
    fn ask(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response> {
        let config = ClusterConfig::load(&self.cluster)?;
        AdminClient::for_cli(&config)?
            .first_answer(&config.name, &config.nodes, method, path, body, TIMEOUT)
            .map_err(Error::Request)
    }
}

fn refused(r: &Response) -> Error {
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
