//! `quorumd lock` (like `consul lock`) and `quorumd session`.
//!
//! `quorumd lock PREFIX -- CMD...` creates a session (TTL, lock-delay,
//! behavior `release`, bound to the node that answered), waits for the lock
//! `PREFIX/.lock` (or, with `-n N`, for one of N slots of a semaphore, as
//! Consul's semaphore keeps them: a contender key `PREFIX/<session>` held by
//! each contender and the holders in `PREFIX/.lock`, changed by CAS), then
//! runs CMD while a thread renews the session every third of its TTL.
//!
//! - CMD gets the fencing token in `QUORUMD_LOCK_INDEX`: the Raft index of
//!   the write that gave it the lock, which rises from holder to holder.
//!   It also gets `QUORUMD_LOCK_SESSION` and `QUORUMD_LOCK_KEY`.
//! - The lock is lost when a renew answers 404 (the session was
//!   invalidated) or when no node answered a renew for a whole TTL. CMD then
//!   gets SIGTERM, and SIGKILL after `--kill-grace`; the reason goes to
//!   stderr.
//! - On SIGTERM or SIGINT, CMD gets SIGTERM (then SIGKILL after the grace),
//!   and the lock is released and the session destroyed.
//! - The exit code is CMD's (128 + the signal if a signal ended it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::client::{AdminClient, Response};
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::{Error, Result};

/// The fencing token's environment variable.
pub const LOCK_INDEX_ENV: &str = "QUORUMD_LOCK_INDEX";
/// The session's environment variable.
pub const LOCK_SESSION_ENV: &str = "QUORUMD_LOCK_SESSION";
/// The lock key's environment variable.
pub const LOCK_KEY_ENV: &str = "QUORUMD_LOCK_KEY";

const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Which cluster, and which node to ask first.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The cluster file [default: $QUORUMD_CLUSTER, else /etc/quorumd/cluster.toml].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Ask this node first (the session is bound to the node that answers).
    #[arg(long, value_name = "ID")]
    node: Option<u64>,
    #[command(flatten)]
    token: crate::client::TokenArg,
}

/// `quorumd lock`'s arguments.
#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    target: Target,
    /// Hold one of N slots of a semaphore instead of a lock.
    #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 1)]
    limit: u64,
    /// The session's TTL (10s to 24h); renewed every third of it.
    #[arg(long, value_name = "D", default_value = "15s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long the lock stays refused after this session ends uncleanly
    /// (0 to 60s).
    #[arg(long, value_name = "D", default_value = "15s", value_parser = humantime::parse_duration)]
    lock_delay: Duration,
    /// How long CMD has to exit after SIGTERM before it gets SIGKILL.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// The session's name.
    #[arg(long, default_value = "quorumd lock")]
    name: String,
    /// The key prefix of the lock.
    #[arg(value_name = "PREFIX")]
    prefix: String,
    /// The command to run while holding the lock.
    #[arg(value_name = "CMD", last = true, required = true)]
    cmd: Vec<String>,
}

/// `quorumd session` subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List every session: ID, node, TTL, behavior, name.
    List {
        #[command(flatten)]
        target: Target,
        /// Print the JSON the API answers.
        #[arg(long)]
        json: bool,
    },
    /// Print one session as JSON.
    Info {
        #[command(flatten)]
        target: Target,
        /// The session's ID.
        id: String,
    },
    /// Destroy a session: its locks are released (or its keys deleted).
    Destroy {
        #[command(flatten)]
        target: Target,
        /// The session's ID.
        id: String,
    },
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before asking again after a transient failure.
const RETRY: Duration = Duration::from_millis(500);

impl Target {
    fn connect(&self) -> Result<Api> {
        let config = ClusterConfig::load(&crate::cli::cluster_file(self.cluster.clone())?)?;
        let mut nodes = config.nodes.clone();
        if let Some(id) = self.node {
            let first = config.require_node(id)?.clone();
            nodes.retain(|n| n.id != id);
            nodes.insert(0, first);
        }
        Ok(Api {
            client: AdminClient::for_cli(&config)?.with_token(self.token.secret()),
            cluster: config.name.clone(),
            nodes,
        })
    }
}

/// The nodes of a cluster, asked in order.
#[derive(Clone)]
struct Api {
    client: AdminClient,
    cluster: String,
    nodes: Vec<NodeConfig>,
}

impl Api {
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
        self.client
            .first_answer(&self.cluster, &self.nodes, method, path, body, timeout)
            .map_err(Error::Request)
    }

    fn json(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Value> {
        let r = self.ask(method, path, body)?;
        if r.status != 200 {
            return Err(refused(&r));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| Error::Request(format!("the node answered malformed JSON: {e}")))
    }
}

fn refused(r: &Response) -> Error {
    Error::Request(format!(
        "the node answered {}: {}",
        r.status,
        r.error_text()
    ))
}

fn kv_path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, KEY_ESCAPE))
}

fn index_of(r: &Response) -> u64 {
    r.header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs a `session` command.
pub fn run_session(command: SessionCommand) -> Result<()> {
    match command {
        SessionCommand::List { target, json } => {
            let list = target
                .connect()?
                .json(Method::GET, "/v1/session/list", Vec::new())?;
            if json {
                println!("{list:#}");
                return Ok(());
            }
            println!(
                "{:<36}  {:<8}  {:<6}  {:<8}  NAME",
                "ID", "NODE", "TTL", "BEHAVIOR"
            );
            for s in list.as_array().into_iter().flatten() {
                let ttl = s["TTL"].as_str().unwrap_or("");
                println!(
                    "{:<36}  {:<8}  {:<6}  {:<8}  {}",
                    s["ID"].as_str().unwrap_or(""),
                    s["Node"].as_str().unwrap_or(""),
                    if ttl.is_empty() { "-" } else { ttl },
                    s["Behavior"].as_str().unwrap_or(""),
                    s["Name"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        SessionCommand::Info { target, id } => {
            let info = target.connect()?.json(
                Method::GET,
                &format!("/v1/session/info/{id}"),
                Vec::new(),
            )?;
            match info.as_array().and_then(|a| a.first()) {
                Some(s) => {
                    println!("{s:#}");
                    Ok(())
                }
                None => Err(Error::Request(format!("session {id:?} does not exist"))),
            }
        }
        SessionCommand::Destroy { target, id } => {
            let r = target.connect()?.ask(
                Method::PUT,
                &format!("/v1/session/destroy/{id}"),
                Vec::new(),
            )?;
            if r.status != 200 {
                return Err(refused(&r));
            }
            println!("Destroyed session {id}");
            Ok(())
        }
    }
}

/// What ends the wait for CMD.
#[derive(Default)]
struct Flags {
    /// SIGTERM or SIGINT arrived.
    stop: AtomicBool,
    /// Why the lock was lost, once it was.
    lost: Mutex<Option<String>>,
    /// The lock is released: the renewer stops.
    done: AtomicBool,
}

impl Flags {
    fn lost(&self) -> Option<String> {
        self.lost.lock().map(|l| l.clone()).unwrap_or(None)
    }
}

/// Runs `quorumd lock`; returns the exit code (CMD's).
pub fn run_lock(args: LockArgs) -> Result<i32> {
    if args.limit == 0 {
        return Err(Error::Usage("-n must be at least 1".into()));
    }
    let prefix = args.prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() {
        return Err(Error::Usage("the lock PREFIX must not be empty".into()));
    }
    let api = args.target.connect()?;
    let flags = Arc::new(Flags::default());
    watch_signals(flags.clone());

    let body = json!({
        "Name": args.name,
        "TTL": format!("{}s", args.ttl.as_secs()),
        "LockDelay": format!("{}ms", args.lock_delay.as_millis()),
        "Behavior": "release",
    });
    let id = api.json(
        Method::PUT,
        "/v1/session/create",
        body.to_string().into_bytes(),
    )?["ID"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Request("the session create answered no ID".into()))?;
    let renewer = spawn_renewer(api.clone(), id.clone(), args.ttl, flags.clone());

    let acquired = if args.limit == 1 {
        acquire_lock(&api, &prefix, &id, &flags)
    } else {
        acquire_slot(&api, &prefix, &id, args.limit, &flags)
    };
    let (key, token) = match acquired {
        Ok(Some(got)) => got,
        Ok(None) => {
            let why = flags
                .lost()
                .unwrap_or_else(|| "interrupted before the lock was acquired".to_string());
            eprintln!("quorumd lock: {why}");
            cleanup(&api, &prefix, &id, args.limit, &flags);
            let _ = renewer.join();
            return Ok(1);
        }
        Err(e) => {
            cleanup(&api, &prefix, &id, args.limit, &flags);
            let _ = renewer.join();
            return Err(e);
        }
    };

    let mut child = Process::new(&args.cmd[0])
        .args(&args.cmd[1..])
        .env(LOCK_INDEX_ENV, token.to_string())
        .env(LOCK_SESSION_ENV, &id)
        .env(LOCK_KEY_ENV, &key)
        .spawn()
        .map_err(|e| {
            cleanup(&api, &prefix, &id, args.limit, &flags);
            Error::io(format!("cannot run {:?}", args.cmd[0]), e)
        })?;

    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for CMD", e))?
        {
            break status;
        }
        if let Some(why) = flags.lost() {
            eprintln!("quorumd lock: lost the lock on {key}: {why}; stopping CMD");
            break stop_child(&mut child, args.kill_grace)?;
        }
        if flags.stop.load(Ordering::Relaxed) {
            break stop_child(&mut child, args.kill_grace)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cleanup(&api, &prefix, &id, args.limit, &flags);
    let _ = renewer.join();
    Ok(code_of(status))
}

fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// SIGTERM, then SIGKILL after `grace`; CMD's exit status.
fn stop_child(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = Pid::from_raw(child.id() as i32);
    if let Some(pid) = pid {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for CMD", e))?
        {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "quorumd lock: CMD did not exit within {} of SIGTERM; sending SIGKILL",
        humantime::format_duration(grace)
    );
    let _ = child.kill();
    child.wait().map_err(|e| Error::io("waiting for CMD", e))
}

/// Sets `flags.stop` on SIGTERM or SIGINT.
fn watch_signals(flags: Arc<Flags>) {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    let Ok(mut signals) = Signals::new([Signal::Term, Signal::Int]) else {
        return;
    };
    std::thread::spawn(move || {
        crate::runtime::block_on(async {
            while let Some(Ok(_)) = signals.next().await {
                flags.stop.store(true, Ordering::Relaxed);
            }
        })
    });
}

/// Renews the session every third of its TTL until `flags.done`; marks
/// the lock lost on a 404, or when no node answered for a whole TTL.
fn spawn_renewer(
    api: Api,
    id: String,
    ttl: Duration,
    flags: Arc<Flags>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last_ok = Instant::now();
        let mut next = Instant::now() + ttl / 3;
        while !flags.done.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let budget = ttl
                .saturating_sub(last_ok.elapsed())
                .max(Duration::from_millis(100));
            let answer = api.ask_within(
                Method::PUT,
                &format!("/v1/session/renew/{id}"),
                Vec::new(),
                budget.min(REQUEST_TIMEOUT),
            );
            let lost = match answer {
                Ok(r) if r.status == 200 => {
                    last_ok = Instant::now();
                    next = last_ok + ttl / 3;
                    None
                }
                Ok(r) if r.status == 404 => Some("the session was invalidated".to_string()),
                _ if last_ok.elapsed() >= ttl => Some(format!(
                    "no node renewed the session for its whole TTL of {}",
                    humantime::format_duration(ttl)
                )),
                _ => {
                    next = Instant::now() + Duration::from_millis(500);
                    None
                }
            };
            if let Some(why) = lost {
                if let Ok(mut l) = flags.lost.lock() {
                    l.get_or_insert(why);
                }
                return;
            }
        }
    })
}

fn interrupted(flags: &Flags) -> bool {
    flags.stop.load(Ordering::Relaxed) || flags.lost().is_some()
}

/// Waits (a blocking query of up to a few seconds) for `path` to change
/// past `index`.
fn wait_change(api: &Api, path: &str, index: u64) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let _ = api.ask_within(
        Method::GET,
        &format!("{path}{sep}index={index}&wait=2s"),
        Vec::new(),
        Duration::from_secs(5),
    );
}

/// Waits for `PREFIX/.lock`; the key and the fencing token, or `None` if
/// interrupted.
fn acquire_lock(api: &Api, prefix: &str, id: &str, flags: &Flags) -> Result<Option<(String, u64)>> {
    let key = format!("{prefix}/.lock");
    let path = kv_path(&key);
    while !interrupted(flags) {
        // No answer, or no leader for now: the renewer decides when the
        // session is lost; until then, try again.
        let Ok(r) = api.ask(Method::PUT, &format!("{path}?acquire={id}"), Vec::new()) else {
            std::thread::sleep(RETRY);
            continue;
        };
        match (r.status, r.text().as_str()) {
            (200, "true") => return Ok(Some((key, index_of(&r)))),
            (200, "false") => {
                let index = api
                    .ask(Method::GET, &path, Vec::new())
                    .map_or(0, |r| index_of(&r));
                if index == 0 {
                    std::thread::sleep(RETRY);
                } else {
                    wait_change(api, &path, index);
                }
            }
            (500, text) if text.starts_with("invalid session") => {
                if let Ok(mut l) = flags.lost.lock() {
                    l.get_or_insert(
                        "the session was invalidated before the lock was acquired".into(),
                    );
                }
            }
            (status, _) if status >= 500 => std::thread::sleep(RETRY),
            _ => return Err(refused(&r)),
        }
    }
    Ok(None)
}

/// Waits for a slot of the semaphore at `PREFIX`; the key and the token.
fn acquire_slot(
    api: &Api,
    prefix: &str,
    id: &str,
    limit: u64,
    flags: &Flags,
) -> Result<Option<(String, u64)>> {
    let contender = format!("{prefix}/{id}");
    let r = api.ask(
        Method::PUT,
        &format!("{}?acquire={id}", kv_path(&contender)),
        Vec::new(),
    )?;
    if (r.status, r.text().as_str()) != (200, "true") {
        return Err(refused(&r));
    }
    let lock_key = format!("{prefix}/.lock");
    let tree = format!("{}/?recurse", kv_path(prefix));
    while !interrupted(flags) {
        let Ok(r) = api.ask(Method::GET, &tree, Vec::new()) else {
            std::thread::sleep(RETRY);
            continue;
        };
        let index = index_of(&r);
        let entries: Vec<Value> = match r.status {
            200 => serde_json::from_slice(&r.body).unwrap_or_default(),
            404 => Vec::new(),
            s if s >= 500 => {
                std::thread::sleep(RETRY);
                continue;
            }
            _ => return Err(refused(&r)),
        };
        let (holders, cas) = semaphore_state(&entries, &lock_key, limit)?;
        if holders.contains_key(id) {
            // A CAS whose answer was lost did apply.
            return Ok(Some((lock_key, cas)));
        }
        if holders.len() as u64 >= limit {
            wait_change(api, &tree, index);
            continue;
        }
        let mut next = holders;
        next.insert(id.to_string(), true);
        let body = json!({"Limit": limit, "Holders": next}).to_string();
        let Ok(r) = api.ask(
            Method::PUT,
            &format!("{}?cas={cas}", kv_path(&lock_key)),
            body.into_bytes(),
        ) else {
            // Unknown outcome: the next read of the holders says.
            std::thread::sleep(RETRY);
            continue;
        };
        match (r.status, r.text().as_str()) {
            (200, "true") => return Ok(Some((lock_key, index_of(&r)))),
            (200, "false") => continue,
            (s, _) if s >= 500 => std::thread::sleep(RETRY),
            _ => return Err(refused(&r)),
        }
    }
    Ok(None)
}

/// The live holders of the semaphore (those whose contender key still has
/// its session) and the `ModifyIndex` to CAS `.lock` on.
fn semaphore_state(
    entries: &[Value],
    lock_key: &str,
    limit: u64,
) -> Result<(BTreeMap<String, bool>, u64)> {
    let mut live = std::collections::HashSet::new();
    let mut lock = None;
    for e in entries {
        let key = e["Key"].as_str().unwrap_or("");
        if key == lock_key {
            lock = Some(e);
        } else if let Some(s) = e["Session"].as_str().filter(|s| !s.is_empty()) {
            live.insert(s.to_string());
        }
    }
    let Some(lock) = lock else {
        return Ok((BTreeMap::new(), 0));
    };
    let value = lock["Value"]
        .as_str()
        .and_then(|v| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        })
        .unwrap_or_default();
    let doc: Value = serde_json::from_slice(&value).unwrap_or(json!({}));
    if let Some(other) = doc["Limit"].as_u64().filter(|&l| l != limit) {
        return Err(Error::Usage(format!(
            "the semaphore at {lock_key} has a limit of {other}, not {limit}"
        )));
    }
    let holders = doc["Holders"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(s, _)| live.contains(s.as_str()))
        .map(|(s, _)| (s.clone(), true))
        .collect();
    Ok((holders, lock["ModifyIndex"].as_u64().unwrap_or(0)))
}

/// Releases what the session holds and destroys it, as far as the cluster
/// answers.
fn cleanup(api: &Api, prefix: &str, id: &str, limit: u64, flags: &Flags) {
    flags.done.store(true, Ordering::Relaxed);
    if flags.lost().is_none() {
        if limit == 1 {
            let path = kv_path(&format!("{prefix}/.lock"));
            let _ = api.ask(Method::PUT, &format!("{path}?release={id}"), Vec::new());
        } else {
            release_slot(api, prefix, id, limit);
        }
    }
    let _ = api.ask(
        Method::PUT,
        &format!("/v1/session/destroy/{id}"),
        Vec::new(),
    );
}

fn release_slot(api: &Api, prefix: &str, id: &str, limit: u64) {
    let lock_key = format!("{prefix}/.lock");
    let tree = format!("{}/?recurse", kv_path(prefix));
    for _ in 0..10 {
        let Ok(r) = api.ask(Method::GET, &tree, Vec::new()) else {
            break;
        };
        let entries: Vec<Value> = serde_json::from_slice(&r.body).unwrap_or_default();
        let Ok((mut holders, cas)) = semaphore_state(&entries, &lock_key, limit) else {
            break;
        };
        if holders.remove(id).is_none() {
            break;
        }
        let body = json!({"Limit": limit, "Holders": holders}).to_string();
        match api.ask(
            Method::PUT,
            &format!("{}?cas={cas}", kv_path(&lock_key)),
            body.into_bytes(),
        ) {
            Ok(r) if r.text() == "true" => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let _ = api.ask(
        Method::DELETE,
        &kv_path(&format!("{prefix}/{id}")),
        Vec::new(),
    );
}
