//! `quorumd acl bootstrap|policy|token`: the ACL system from the shell,
//! over Consul's ACL API. Each command prints the answer's JSON; a token's
//! `SecretID` is printed only by the command that creates it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{AdminClient, Response, TokenArg};
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The `acl` subcommands.
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the first management token (once; see docs/acl.md to reset).
    Bootstrap {
        #[command(flatten)]
        target: Target,
    },
    /// Create, list, read and delete policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create, list, read and delete tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `acl policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy.
    Create {
        #[command(flatten)]
        target: Target,
        /// Its unique name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// The rules in Consul's JSON form, or @FILE to read them from a file.
        #[arg(long)]
        rules: String,
    },
    /// List every policy.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one policy, by id or name.
    Read {
        #[command(flatten)]
        target: Target,
        /// The policy's ID or Name.
        policy: String,
    },
    /// Delete a policy, by id.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The policy's ID.
        id: String,
    },
}

/// `acl token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its SecretID, which is shown only this once.
    Create {
        #[command(flatten)]
        target: Target,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// A policy to link, by name (repeat for several).
        #[arg(long = "policy-name", value_name = "NAME")]
        policy_names: Vec<String>,
        /// A policy to link, by id (repeat for several).
        #[arg(long = "policy-id", value_name = "ID")]
        policy_ids: Vec<String>,
        /// The token stops working after this long (e.g. 1h, 30m).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// List every token.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one token, by accessor ("self": the token presented).
    Read {
        #[command(flatten)]
        target: Target,
        /// The token's AccessorID, or `self`.
        accessor: String,
    },
    /// Delete (revoke) a token, by accessor.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The token's AccessorID.
        accessor: String,
    },
}

/// The cluster to talk to, and the token to present.
#[derive(Debug, Args)]
pub struct Target {
    /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    token: TokenArg,
}

impl Target {
    fn ask(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let config = ClusterConfig::load(&crate::cli::cluster_file(self.cluster.clone())?)?;
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let r = AdminClient::for_cli(&config)?
            .with_token(self.token.secret())
            .first_answer(&config.name, &config.nodes, method, path, body, TIMEOUT)
            .map_err(Error::Request)?;
        if r.status != 200 {
            return Err(refused(&r));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| Error::Request(format!("the cluster answered malformed JSON: {e}")))
    }
}

/// The cluster's sentence for a refusal, with a hint for a missing token.
pub fn refused(r: &Response) -> Error {
    let hint = if r.status == 403 {
        " (present a token with --token or $QUORUMD_TOKEN)"
    } else {
        ""
    };
    Error::Request(format!(
        "the cluster answered {}: {}{hint}",
        r.status,
        r.error_text()
    ))
}

fn print(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs an `acl` command.
pub fn run(command: AclCommand) -> Result<()> {
    let v = match command {
        AclCommand::Bootstrap { target } => target.ask(Method::PUT, "/v1/acl/bootstrap", None)?,
        AclCommand::Policy { command } => match command {
            PolicyCommand::Create {
                target,
                name,
                description,
                rules,
            } => {
                let rules = match rules.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .map_err(|e| Error::io(format!("cannot read {file}"), e))?,
                    None => rules,
                };
                let body = json!({"Name": name, "Description": description, "Rules": rules});
                target.ask(Method::PUT, "/v1/acl/policy", Some(body))?
            }
            PolicyCommand::List { target } => target.ask(Method::GET, "/v1/acl/policies", None)?,
            PolicyCommand::Read { target, policy } => {
                let path = if crate::acl::is_uuid(&policy) {
                    format!("/v1/acl/policy/{policy}")
                } else {
                    format!("/v1/acl/policy/name/{}", segment(&policy))
                };
                target.ask(Method::GET, &path, None)?
            }
            PolicyCommand::Delete { target, id } => target.ask(
                Method::DELETE,
                &format!("/v1/acl/policy/{}", segment(&id)),
                None,
            )?,
        },
        AclCommand::Token { command } => match command {
            TokenCommand::Create {
                target,
                description,
                policy_names,
                policy_ids,
                ttl,
            } => {
                let mut links: Vec<Value> =
                    policy_names.iter().map(|n| json!({"Name": n})).collect();
                links.extend(policy_ids.iter().map(|i| json!({"ID": i})));
                let mut body = json!({"Description": description, "Policies": links});
                if let Some(ttl) = ttl {
                    body["ExpirationTTL"] = json!(ttl);
                }
                target.ask(Method::PUT, "/v1/acl/token", Some(body))?
            }
            TokenCommand::List { target } => target.ask(Method::GET, "/v1/acl/tokens", None)?,
            TokenCommand::Read { target, accessor } => target.ask(
                Method::GET,
                &format!("/v1/acl/token/{}", segment(&accessor)),
                None,
            )?,
            TokenCommand::Delete { target, accessor } => target.ask(
                Method::DELETE,
                &format!("/v1/acl/token/{}", segment(&accessor)),
                None,
            )?,
        },
    };
    print(&v);
    Ok(())
}
