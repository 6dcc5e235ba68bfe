//! quorumd-chaos: a Jepsen-style chaos runner for quorumd.
//!
//! It starts a real cluster with every node in its own network namespace,
//! runs a concurrent workload of puts, linearizable gets and CAS writes
//! through Consul's KV API on every node, injects faults on a schedule drawn
//! from a seed (crashes, pauses, partitions, one-way and random packet loss,
//! whole-cluster restarts), and then checks what it recorded:
//!
//! - every key's history is linearizable ([`checker`], [`model`]);
//! - after healing, a final linearizable read of every key agrees with it;
//! - no term ever had two leaders, no node voted twice in a term or went
//!   back to an older term (restarts included), and nodes that applied the
//!   same index applied the same entries ([`invariants`]);
//! - after each fault heals, the cluster serves writes again, and how fast.
//!
//! The tool links nothing of the node: it talks to it over HTTP, as a user's
//! client would, and keeps its namespaces and iptables rules to itself.

pub mod checker;
pub mod cleanup;
pub mod error;
pub mod faults;
pub mod firewall;
pub mod history;
pub mod http;
pub mod invariants;
pub mod locks;
pub mod model;
pub mod monitor;
pub mod netns;
pub mod nodes;
pub mod runner;
pub mod schedule;
pub mod timeline;
pub mod workload;
