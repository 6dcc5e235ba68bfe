//! quorumd: a small, fast Raft cluster for edge boxes, with Consul's KV API.
//!
//! Every node reads the same cluster file ([`config`]), opens its peer and admin
//! listeners, waits until a quorum of members can reach each other
//! ([`health`], [`quorum`]), and then forms the metadata Raft group `__meta/0`
//! and elects a leader ([`coordinator`], [`raft`]). `__meta/0` replicates a
//! key-value store ([`store`], [`kv`]) that speaks Consul's KV API. Peers talk
//! TCP, with mutual TLS when the file has `[tls]` ([`transport`], [`tls`]);
//! operators and clients use the HTTP API ([`http`]).
//!
//! Dependencies point down. At the bottom, `error`, `config`, `metrics`,
//! `runtime` and `transport::wire` import nothing above them; `tls` sits on
//! `config`; `transport` on those (it hands inbound frames to a
//! [`transport::RaftSink`] and reports answers to a [`transport::PeerAnswers`],
//! without knowing who implements them); `health` and `raft` on the transport;
//! `quorum` on `health`; and `coordinator`, `http`, `status` and `cli` on top.
//!
//! Each long-lived task owns its state and talks to the others over flume
//! channels: the replica driver, the tick driver, the transport's accept loop
//! and per-peer senders, the health monitor and its probers, and the admin
//! server.

pub mod acl;
pub mod acl_cli;
pub mod backup;
pub mod budget;
pub mod cli;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod datacheck;
pub mod diskguard;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod kv;
pub mod kv_cli;
pub mod lock_cli;
pub mod logging;
pub mod member_cli;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod quorum;
pub mod raft;
pub mod runtime;
pub mod session;
pub mod snapshot_cli;
pub mod status;
pub mod store;
pub mod tls;
pub mod transport;

pub use coordinator::ClusterCoordinator;
pub use error::{Error, Result};
