//! Entry points of the fuzz targets in `fuzz/`, shared with
//! `tests/fuzz_regressions.rs`, which replays every input kept in
//! `fuzz/regressions/<target>/` on stable Rust. Each takes arbitrary bytes
//! and must return without panicking; a panic is a bug found.
//!
//! | target | what it drives |
//! |---|---|
//! | [`frames`] | the frame decoder (and an encode round trip), and a connection's bytes as the listener reads them: the 1 KiB handshake frame, the hello checks, then frames, each Raft message through the validator |
//! | [`cluster_file`] | the cluster-file parser and validator, and what `quorumd check` prints |
//! | [`raft_step`] | a real raft-rs node (follower, candidate or leader) stepping every message the validator admits, with Ready handled as the replica does |
//! | [`http`] | the KV routes' request decoding: the URI as hyper parses it, the path routed as the admin API does, the key, the query (`recurse`, `keys`, `index`, `wait`, `cas`, `flags`, consistency, session parameters) and a `/v1/txn` body; every decoded write goes through the Raft entry codec and back |

use std::path::Path;

use futures_lite::future::block_on;
use protobuf::ProtobufEnum as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};

use crate::config::ClusterConfig;
use crate::raft::validate::{self, LogFacts};
use crate::transport::wire::{read_frame, read_handshake_frame, Frame};
use crate::transport::{check_hello, Identity};

/// The names of the targets, as directories under `fuzz/regressions/`.
pub const TARGETS: &[&str] = &["frames", "cluster_file", "raft_step", "http"];

/// Runs the entry point named `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frames" => frames(data),
        "cluster_file" => cluster_file(data),
        "raft_step" => raft_step(data),
        "http" => http(data),
        other => panic!("no fuzz target {other}"),
    }
}

struct FakeLog;

impl LogFacts for FakeLog {
    fn id(&self) -> u64 {
        1
    }
    fn is_leader(&self) -> bool {
        false
    }
    fn term(&self) -> u64 {
        5
    }
    fn last_index(&self) -> u64 {
        10
    }
    fn committed(&self) -> u64 {
        8
    }
    fn log_term(&self, index: u64) -> Option<u64> {
        (index <= 10).then_some(5)
    }
}

/// The frame decoder and the listener's side of a connection.
pub fn frames(data: &[u8]) {
    // The payload decoder alone, and what it decoded encodes into a frame
    // that decodes again. (Byte-for-byte stability is not asked: protobuf
    // may reorder unknown fields on each round, as the first `make fuzz`
    // run showed with fuzz/regressions/frames/crash-2b9c969d...)
    if let Ok(frame) = Frame::decode(data) {
        let bytes = frame.encode();
        Frame::decode(&bytes[4..]).expect("an encoded frame decodes");
    }
    // A connection's bytes as the listener reads them.
    let entry = |port: u16| crate::transport::PeerEntry {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        joined: false,
    };
    let me = Identity {
        node_id: 1,
        cluster: "fuzz".to_string(),
        directory: std::sync::Arc::new(std::sync::RwLock::new(crate::transport::Directory {
            peers: [(2, entry(2)), (3, entry(3))].into(),
            has_state: true,
            ..Default::default()
        })),
        tls: None,
    };
    let mut r = data;
    block_on(async {
        let Ok(hello) = read_handshake_frame(&mut r).await else {
            return;
        };
        if check_hello(&me, &hello).is_err() {
            return;
        }
        while let Ok(frame) = read_frame(&mut r).await {
            if let Frame::Raft { message, .. } = frame {
                let _ = validate::check(&message, &FakeLog);
            }
        }
    });
}

/// The KV and ACL routes' request decoding. The first byte picks the method, the
/// bytes up to the first newline are the request target (path and query),
/// the rest is the body. What decodes must be a request the store accepts:
/// a valid, unreserved key for a write, and a Raft entry that decodes to
/// the same command; what does not is a 4xx answer. The body also goes
/// through the entry decoder as it is (entries arrive from peers).
pub fn http(data: &[u8]) {
    use crate::http::{kv, parse_query, txn};
    use crate::store::{check_key, is_reserved, Command, KvOp};
    use hyper::Method;

    const MAX_VALUE: u64 = crate::config::DEFAULT_MAX_VALUE_BYTES;
    let _ = Command::decode(data);
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 6 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        3 => Method::DELETE,
        4 => Method::POST,
        _ => Method::PATCH,
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    // hyper answers 400 itself to a target it cannot parse.
    let Ok(uri) = hyper::Uri::try_from(target) else {
        return;
    };
    let query = uri.query().unwrap_or("");
    let roundtrip = |ops: Vec<KvOp>| {
        let cmd = Command {
            max_store_bytes: 1 << 26,
            from_client: true,
            ops,
            reads: crate::store::command::ReadLimits {
                max_reads: 1 << 12,
                max_response_bytes: 1 << 24,
            },
        };
        let back = Command::decode(&cmd.encode()).expect("an encoded command decodes");
        assert_eq!(back, cmd, "a command survives the entry codec");
    };
    let path = uri.path();
    let raw_key = match path.strip_prefix("/v1/kv/") {
        Some(key) => Some(key),
        None => (path == "/v1/kv").then_some(""),
    };
    if let Some(raw_key) = raw_key {
        match kv::decode(&method, raw_key, query) {
            Err(resp) => assert!(
                resp.status.is_client_error(),
                "a refused request is a 4xx, not {}",
                resp.status
            ),
            Ok(kv::KvRequest::Get(_)) => {}
            Ok(kv::KvRequest::Put {
                key, flags, cas, ..
            }) => {
                assert!(
                    check_key(&key, false).is_ok() && !is_reserved(&key),
                    "{key:?}"
                );
                roundtrip(vec![kv::put_op(key, body.to_vec(), flags, cas)]);
            }
            Ok(kv::KvRequest::Delete(op)) => {
                assert!(!is_reserved(op.key()), "{op:?}");
                roundtrip(vec![op]);
            }
        }
    } else if let Some(rest) = path.strip_prefix("/v1/acl/") {
        acl_route(&method, rest, query, body);
    } else if path == "/v1/txn" {
        let _ = kv::consistency(&parse_query(query));
        match txn::parse(body, MAX_VALUE) {
            Err(e) => assert!(e.status.is_client_error(), "{}", e.status),
            Ok(ops) => {
                assert!(ops.len() <= crate::store::MAX_TXN_OPS);
                for op in &ops {
                    assert!(
                        check_key(op.key(), op.is_tree()).is_ok(),
                        "a txn op with a bad key: {op:?}"
                    );
                    assert!(!(op.is_write() && is_reserved(op.key())), "{op:?}");
                }
                roundtrip(ops);
            }
        }
    }
}

/// The ACL routes: the route, the token's presentation, the body of a
/// policy or a token, and the rules. What decodes must make sense: a
/// policy's rules parse, and a refusal is a 4xx.
fn acl_route(method: &hyper::Method, rest: &str, query: &str, body: &[u8]) {
    use crate::http::acl::{decode_body, decode_policy, decode_route, decode_token, AclRoute};
    let pairs = crate::http::parse_query(query);
    let text = std::str::from_utf8(body).ok();
    let _ = crate::acl::presented_token(text, text, crate::http::param(&pairs, "token"));
    if let Some(t) = text {
        let _ = crate::acl::Rules::parse(t);
    }
    let route = match decode_route(method, rest) {
        Ok(r) => r,
        Err(e) => {
            assert!(e.status.is_client_error(), "{}", e.status);
            return;
        }
    };
    if !route.has_body() {
        return;
    }
    let value = match decode_body(body) {
        Ok(v) => v,
        Err(e) => {
            assert!(e.status.is_client_error(), "{}", e.status);
            return;
        }
    };
    let refused = |e: crate::http::ApiError| assert!(e.status.is_client_error(), "{}", e.status);
    match route {
        AclRoute::CreatePolicy | AclRoute::UpdatePolicy(_) => {
            let id = match &route {
                AclRoute::UpdatePolicy(id) => Some(id.as_str()),
                _ => None,
            };
            match decode_policy(id, &value) {
                Ok(p) => assert!(crate::acl::Rules::parse(&p.rules).is_ok(), "{p:?}"),
                Err(e) => refused(e),
            }
        }
        AclRoute::CreateToken | AclRoute::UpdateToken(_) => {
            let create = route == AclRoute::CreateToken;
            match decode_token(&value, create) {
                Ok(t) if create => {
                    for id in [&t.accessor, &t.secret].into_iter().flatten() {
                        assert!(crate::acl::is_uuid(id), "{id:?}");
                    }
                }
                Ok(_) => {}
                Err(e) => refused(e),
            }
        }
        _ => {}
    }
}

/// The cluster-file parser and validator.
pub fn cluster_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ClusterConfig::parse(text, Path::new("/etc/quorumd/fuzz.toml")) {
        let _ = crate::cli::summary(&config);
        for n in &config.nodes {
            let _ = config.node_data_dir(n.id);
            if let Some(tls) = &config.tls {
                let _ = (tls.cert(n.id), tls.key(n.id));
            }
        }
        let _ = config.require_node(0);
    }
}

/// Reads the fuzz input a byte at a time; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }

    /// An index or term near `base`, now and then an extreme one.
    fn near(&mut self, base: u64) -> u64 {
        match self.u8() {
            0xff => u64::MAX,
            0xfe => 1 << 40,
            0xfd => 0,
            b => base.saturating_add(b as u64 % 16).saturating_sub(8),
        }
    }

    fn ids(&mut self) -> Vec<u64> {
        let n = self.u8() % 4;
        (0..n).map(|_| self.u8() as u64 % 5).collect()
    }
}

/// Node 1 of voters {1, 2, 3} with entries 2..=5 (terms 2, 2, 3, 3) and
/// commit 4, as a follower, candidate or leader at term 3 or later.
fn node(role: u8) -> RawNode<MemStorage> {
    let storage = MemStorage::new();
    {
        let mut core = storage.wl();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        core.apply_snapshot(snap).expect("bootstrap snapshot");
        let entries: Vec<Entry> = [(2, 2), (3, 2), (4, 3), (5, 3)]
            .into_iter()
            .map(|(index, term)| Entry {
                index,
                term,
                ..Default::default()
            })
            .collect();
        core.append(&entries).expect("entries");
        core.set_hardstate(HardState {
            term: 3,
            vote: 0,
            commit: 4,
            ..Default::default()
        });
    }
    let config = raft::Config {
        id: 1,
        applied: 1,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut node = RawNode::new(&config, storage, &logger).expect("node");
    if !role.is_multiple_of(3) {
        // Candidate: campaign (pre-vote off the table for a real vote).
        node.raft.become_candidate();
        if role % 3 == 2 {
            node.raft.become_leader();
        }
    }
    handle_ready(&mut node);
    node
}

/// What the replica does with a Ready, against the in-memory storage. A
/// storage error here is one the real replica would treat as fatal, so it
/// panics: an admitted message must never cause one.
fn handle_ready(node: &mut RawNode<MemStorage>) {
    if !node.has_ready() {
        return;
    }
    let mut ready = node.ready();
    let _ = ready.take_messages();
    if !ready.snapshot().is_empty() {
        let snap = ready.snapshot().clone();
        node.mut_store()
            .wl()
            .apply_snapshot(snap)
            .expect("apply an admitted snapshot");
    }
    let _ = ready.take_committed_entries();
    if !ready.entries().is_empty() {
        let entries = ready.entries().clone();
        node.mut_store()
            .wl()
            .append(&entries)
            .expect("append admitted entries");
    }
    if let Some(hs) = ready.hs() {
        node.mut_store().wl().set_hardstate(hs.clone());
    }
    let _ = ready.take_persisted_messages();
    let mut light = node.advance(ready);
    if let Some(commit) = light.commit_index() {
        node.mut_store().wl().mut_hard_state().commit = commit;
    }
    let _ = light.take_messages();
    let _ = light.take_committed_entries();
    node.advance_apply();
}

/// Messages built from the bytes, each stepped if the validator admits it.
pub fn raft_step(data: &[u8]) {
    let mut b = Bytes(data);
    let mut node = node(b.u8());
    let mut steps = 0;
    while !b.done() && steps < 64 {
        steps += 1;
        let mut m = Message::default();
        let kind = b.u8() % 19;
        m.set_msg_type(MessageType::from_i32(kind as i32).unwrap_or(MessageType::MsgHeartbeat));
        m.from = 1 + b.u8() as u64 % 4;
        m.to = 1;
        let term = node.raft.term;
        m.term = b.near(term + 4);
        m.index = b.near(5);
        m.log_term = b.near(term);
        m.commit = b.near(5);
        m.commit_term = b.near(term);
        m.reject = b.u8() % 2 == 1;
        m.reject_hint = b.near(5);
        m.request_snapshot = b.near(2);
        let n = b.u8() % 5;
        let mut entries = Vec::new();
        for i in 0..n {
            let contiguous = b.u8() % 4 != 0;
            let index = if contiguous {
                m.index.saturating_add(1 + i as u64)
            } else {
                b.near(6)
            };
            let mut e = Entry {
                index,
                term: b.near(m.term.min(term + 4)),
                ..Default::default()
            };
            if b.u8() % 8 == 0 {
                e.set_entry_type(EntryType::EntryConfChange);
                e.data = vec![b.u8(), b.u8()].into();
            } else {
                e.data = vec![b.u8()].into();
            }
            entries.push(e);
        }
        m.set_entries(entries.into());
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let meta = m.mut_snapshot().mut_metadata();
            meta.index = b.near(8);
            meta.term = b.near(term);
            let mut cs = ConfState {
                voters: b.ids(),
                learners: b.ids(),
                ..Default::default()
            };
            if b.u8() % 4 == 0 {
                cs.voters_outgoing = b.ids();
                cs.learners_next = b.ids();
                cs.auto_leave = b.u8() % 2 == 1;
            }
            meta.set_conf_state(cs);
        }
        if validate::check(&m, &node.raft).is_ok() {
            let _ = node.step(m);
        }
        match b.u8() % 8 {
            0 => {
                node.tick();
            }
            1 if node.raft.state != StateRole::Leader => {
                let _ = node.campaign();
            }
            _ => {}
        }
        handle_ready(&mut node);
    }
}
