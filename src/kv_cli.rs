//! `quorumd kv get|put|delete|list|watch`: the store from the shell, like
//! `consul kv`.
//!
//! Each command talks to the first node of the cluster file that answers, or
//! to `--node`. A missing key and a failed CAS exit 1 with one sentence.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Subcommand};
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::client::{AdminClient, Response};
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::{Error, Result};

/// What a key may contain unescaped in a URL path.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The `kv` subcommands.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        #[command(flatten)]
        target: Target,
        /// Read from the node asked, without asking the leader: fast, and
        /// possibly behind.
        #[arg(long, conflicts_with = "consistent")]
        stale: bool,
        /// Read through the leader (the default; Consul's `-consistent`).
        #[arg(long)]
        consistent: bool,
        /// Print the key's indexes and flags too, as `consul kv get -detailed`.
        #[arg(long, conflicts_with = "json")]
        detailed: bool,
        /// Print a JSON object: `{"key", "value", "value_base64", "flags",
        /// "create_index", "modify_index", "lock_index", "session"}`
        /// (`value` is null unless the value is UTF-8).
        #[arg(long)]
        json: bool,
        /// The key.
        key: String,
    },
    /// Write a value ("-" reads it from stdin, "@FILE" from a file).
    Put {
        #[command(flatten)]
        target: Target,
        /// Write only if the key's ModifyIndex is INDEX (0: only if absent).
        #[arg(long, value_name = "INDEX")]
        cas: Option<u64>,
        /// Consul's opaque flags.
        #[arg(long)]
        flags: Option<u64>,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Delete a key, or every key under a prefix.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Delete every key that starts with KEY.
        #[arg(long)]
        recurse: bool,
        /// Delete only if the key's ModifyIndex is INDEX.
        #[arg(long, value_name = "INDEX")]
        cas: Option<u64>,
        /// The key or prefix.
        key: String,
    },
    /// Print `key = value` for every key under a prefix.
    List {
        #[command(flatten)]
        target: Target,
        /// The prefix (default: every key).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Print a key (or with --recurse, a prefix) now and on every change,
    /// until Ctrl-C.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Watch every key under KEY.
        #[arg(long)]
        recurse: bool,
        /// The key or prefix.
        key: String,
    },
}

/// Which cluster, and optionally which node.
#[derive(Debug, Args)]
pub struct Target {
    /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Ask this node instead of the first one that answers.
    #[arg(long, value_name = "ID")]
    node: Option<u64>,
    #[command(flatten)]
    token: crate::client::TokenArg,
}

/// The time a request may take (a blocking query waits up to [`WATCH_WAIT`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The `wait` of each blocking query of `watch`.
const WATCH_WAIT: &str = "60s";

/// Runs a `kv` command.
pub fn run(command: KvCommand) -> Result<()> {
    match command {
        KvCommand::Get {
            target,
            stale,
            consistent,
            detailed,
            json,
            key,
        } => {
            let mut query = Vec::new();
            if !(detailed || json) {
                query.push("raw".to_string());
            }
            if stale {
                query.push("stale".to_string());
            }
            if consistent {
                query.push("consistent".to_string());
            }
            let r = target.ask(Method::GET, &with_query(&key, &query), Vec::new())?;
            let text = match r.status {
                200 if detailed || json => {
                    let entry = parse_entry(&r)?;
                    if json {
                        format!("{:#}", entry_json(&entry))
                    } else {
                        detailed_text(&entry)
                    }
                }
                200 => {
                    let mut out = std::io::stdout().lock();
                    return out
                        .write_all(&r.body)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| Error::io("cannot write the value", e));
                }
                404 => return Err(Error::Request(format!("key {key:?} does not exist"))),
                _ => return Err(refused(&r)),
            };
            println!("{}", text.trim_end());
            Ok(())
        }
        KvCommand::Put {
            target,
            cas,
            flags,
            key,
            value,
        } => {
            let mut query = Vec::new();
            if let Some(c) = cas {
                query.push(format!("cas={c}"));
            }
            if let Some(f) = flags {
                query.push(format!("flags={f}"));
            }
            let body = read_value(&value)?;
            let r = target.ask(Method::PUT, &with_query(&key, &query), body)?;
            match (r.status, r.text().as_str()) {
                (200, "true") => {
                    println!("Success! Data written to: {key}");
                    Ok(())
                }
                (200, "false") => Err(Error::Request(format!(
                    "CAS failed: {key:?} {}; nothing was written",
                    match cas {
                        Some(0) => "exists already".to_string(),
                        Some(i) => format!("was modified since index {i}"),
                        None => "was not written".to_string(),
                    }
                ))),
                _ => Err(refused(&r)),
            }
        }
        KvCommand::Delete {
            target,
            recurse,
            cas,
            key,
        } => {
            let mut query = Vec::new();
            if recurse {
                query.push("recurse".to_string());
            }
            if let Some(c) = cas {
                query.push(format!("cas={c}"));
            }
            let r = target.ask(Method::DELETE, &with_query(&key, &query), Vec::new())?;
            match (r.status, r.text().as_str()) {
                (200, "true") if recurse => {
                    println!("Success! Deleted keys with prefix: {key}");
                    Ok(())
                }
                (200, "true") => {
                    println!("Success! Deleted key: {key}");
                    Ok(())
                }
                (200, "false") => Err(Error::Request(format!(
                    "CAS failed: {key:?} was modified since index {}; nothing was deleted",
                    cas.unwrap_or(0)
                ))),
                _ => Err(refused(&r)),
            }
        }
        KvCommand::List { target, prefix } => {
            let r = target.ask(
                Method::GET,
                &format!("{}?recurse", path(&prefix)),
                Vec::new(),
            )?;
            match r.status {
                200 => {
                    print!("{}", listing(&parse_entries(&r)?));
                    Ok(())
                }
                404 => Ok(()),
                _ => Err(refused(&r)),
            }
        }
        KvCommand::Watch {
            target,
            recurse,
            key,
        } => watch(&target, &key, recurse),
    }
}

impl Target {
    /// The nodes to try, in order.
    fn nodes(&self) -> Result<(ClusterConfig, Vec<NodeConfig>)> {
        let config = ClusterConfig::load(&crate::cli::cluster_file(self.cluster.clone())?)?;
        let nodes = match self.node {
            Some(id) => vec![config.require_node(id)?.clone()],
            None => config.nodes.clone(),
        };
        Ok((config, nodes))
    }

    /// Sends the request to the first node that answers.
    fn ask(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response> {
        self.ask_within(method, path, body, REQUEST_TIMEOUT)
    }

    fn ask_within(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Response> {
        let (config, nodes) = self.nodes()?;
        AdminClient::for_cli(&config)?
            .with_token(self.token.secret())
            .first_answer(&config.name, &nodes, method, path, body, timeout)
            .map_err(Error::Request)
    }
}

fn path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, KEY_ESCAPE))
}

fn with_query(key: &str, query: &[String]) -> String {
    if query.is_empty() {
        path(key)
    } else {
        format!("{}?{}", path(key), query.join("&"))
    }
}

fn read_value(value: &str) -> Result<Vec<u8>> {
    if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("cannot read the value from stdin", e))?;
        return Ok(buf);
    }
    if let Some(file) = value.strip_prefix('@') {
        return std::fs::read(file).map_err(|e| Error::io(format!("cannot read {file}"), e));
    }
    Ok(value.as_bytes().to_vec())
}

/// The node's own sentence, for an answer that is not a success.
fn refused(r: &Response) -> Error {
    if r.status == 401 {
        return Error::Request(format!(
            "{}: {}",
            crate::status::NEEDS_CLIENT_CERT,
            r.error_text()
        ));
    }
    if r.status == 403 {
        return crate::acl_cli::refused(r);
    }
    Error::Request(format!(
        "the node answered {}: {}",
        r.status,
        r.error_text()
    ))
}

/// `(key, value)` pairs of a JSON listing.
fn parse_entries(r: &Response) -> Result<Vec<(String, Vec<u8>)>> {
    let doc: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Error::Request(format!("the node answered malformed JSON: {e}")))?;
    let bad = || Error::Request("the node answered an unexpected listing".to_string());
    doc.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|e| {
            let key = e["Key"].as_str().ok_or_else(bad)?.to_string();
            let value = match e["Value"].as_str() {
                None => Vec::new(),
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|_| bad())?,
            };
            Ok((key, value))
        })
        .collect()
}

/// One key's entry, with its indexes, as a GET (without `raw`) answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    session: String,
}

fn parse_entry(r: &Response) -> Result<Entry> {
    let doc: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Error::Request(format!("the node answered malformed JSON: {e}")))?;
    let bad = || Error::Request("the node answered an unexpected entry".to_string());
    let e = doc.as_array().and_then(|a| a.first()).ok_or_else(bad)?;
    let value = match e["Value"].as_str() {
        None => Vec::new(),
        Some(v) => base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| bad())?,
    };
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    Ok(Entry {
        key: e["Key"].as_str().ok_or_else(bad)?.to_string(),
        value,
        flags: n("Flags"),
        create_index: n("CreateIndex"),
        modify_index: n("ModifyIndex"),
        lock_index: n("LockIndex"),
        session: e["Session"].as_str().unwrap_or("").to_string(),
    })
}

/// `kv get --json`: stable, snake_case field names.
fn entry_json(e: &Entry) -> Value {
    serde_json::json!({
        "key": e.key,
        "value": std::str::from_utf8(&e.value).ok(),
        "value_base64": base64::engine::general_purpose::STANDARD.encode(&e.value),
        "flags": e.flags,
        "create_index": e.create_index,
        "modify_index": e.modify_index,
        "lock_index": e.lock_index,
        "session": if e.session.is_empty() { None } else { Some(e.session.as_str()) },
    })
}

/// `kv get --detailed`, laid out as `consul kv get -detailed` does.
fn detailed_text(e: &Entry) -> String {
    let value = match std::str::from_utf8(&e.value) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&e.value)
        ),
    };
    let session = if e.session.is_empty() {
        "-"
    } else {
        e.session.as_str()
    };
    let rows = [
        ("CreateIndex", e.create_index.to_string()),
        ("Flags", e.flags.to_string()),
        ("Key", e.key.clone()),
        ("LockIndex", e.lock_index.to_string()),
        ("ModifyIndex", e.modify_index.to_string()),
        ("Session", session.to_string()),
        ("Value", value),
    ];
    rows.iter().map(|(k, v)| format!("{k:<17}{v}\n")).collect()
}

/// `key = value` lines; a value that is not UTF-8 prints as base64.
fn listing(entries: &[(String, Vec<u8>)]) -> String {
    let mut out = String::new();
    for (key, value) in entries {
        let shown = match std::str::from_utf8(value) {
            Ok(text) => text.to_string(),
            Err(_) => format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(value)
            ),
        };
        out.push_str(&format!("{key} = {shown}\n"));
    }
    out
}

fn watch(target: &Target, key: &str, recurse: bool) -> Result<()> {
    let mut index = 0u64;
    let base = if recurse {
        format!("{}?recurse", path(key))
    } else {
        path(key)
    };
    let wait = crate::http::kv::parse_go_duration(WATCH_WAIT).unwrap_or_default();
    loop {
        let url = if index == 0 {
            base.clone()
        } else {
            let sep = if recurse { '&' } else { '?' };
            format!("{base}{sep}index={index}&wait={WATCH_WAIT}")
        };
        let r = match target.ask_within(Method::GET, &url, Vec::new(), wait * 2) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("quorumd: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let new_index: u64 = r
            .header("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !(r.status == 200 || r.status == 404) {
            eprintln!("quorumd: {}; retrying", refused(&r));
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if new_index != index {
            let entries = if r.status == 200 {
                parse_entries(&r)?
            } else {
                Vec::new()
            };
            let mut out = format!("# index {new_index}\n");
            if entries.is_empty() {
                out.push_str(&format!("# {key} has no keys\n"));
            }
            out.push_str(&listing(&entries));
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.flush())
                .map_err(|e| Error::io("cannot write", e))?;
        }
        // An index that went backwards (another node, a restore): re-read.
        index = if new_index < index { 0 } else { new_index };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_but_slashes_kept() {
        assert_eq!(path("a/b c?d"), "/v1/kv/a/b%20c%3Fd");
        assert_eq!(
            with_query("k", &["cas=0".into(), "flags=2".into()]),
            "/v1/kv/k?cas=0&flags=2"
        );
    }

    #[test]
    fn detailed_is_laid_out_like_consul() {
        let e = Entry {
            key: "foo".into(),
            value: b"bar".to_vec(),
            flags: 0,
            create_index: 5,
            modify_index: 7,
            lock_index: 0,
            session: String::new(),
        };
        assert_eq!(
            detailed_text(&e),
            "CreateIndex      5\nFlags            0\nKey              foo\nLockIndex        0\n\
             ModifyIndex      7\nSession          -\nValue            bar\n"
        );
        let j = entry_json(&e);
        assert_eq!(j["value"], "bar");
        assert_eq!(j["modify_index"], 7);
        assert!(j["session"].is_null());
    }

    #[test]
    fn listings_show_text_or_base64() {
        let out = listing(&[("a".into(), b"x".to_vec()), ("b".into(), vec![0xff, 0])]);
        assert_eq!(out, "a = x\nb = base64:/wA=\n");
    }
}
