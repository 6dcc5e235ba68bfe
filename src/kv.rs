//! The KV service: what the HTTP API asks of the store and of `__meta/0`.
//!
//! - A write becomes one [`Command`], proposed through the replica (raft-rs
//!   forwards it to the leader from a follower) and answered once it is
//!   applied on this node.
//! - A read is linearizable unless the client asks for `stale`: it waits for
//!   raft's ReadIndex (never a log write), then reads the store as this node
//!   has applied it. A stale read skips the wait.
//! - A watch fires once a later write touches a key or prefix; blocking
//!   queries are built from it.
//!
//! Listings of the redb file run on worker threads (`runtime::unblock`):
//! they may cover many keys, and their pages may be cold. A read of one key
//! (a client's, a session's row) runs on the executor while that is quick
//! ([`KvService::read_point`]).

use std::sync::Arc;

use crate::budget::Budget;
use crate::config::{Limits, StoreSettings};
use crate::raft::replica::Gauge;
use crate::raft::{Committed, ReplicaHandle, RequestError};
use crate::store::command::ReadLimits;
use crate::store::disk::StateStore;
use crate::store::machine::{self, ReadTables};
use crate::store::{Command, KvOp};

/// A point read, timed for [`StateStore::reads_inline`].
fn timed_point_read<T>(
    store: &StateStore,
    query: impl FnOnce(&ReadTables) -> machine::Result<T>,
) -> crate::error::Result<T> {
    // A read that started while a write ran on another thread may have
    // waited for it: its time says nothing of the disk's.
    let contended = store.writing_elsewhere();
    let started = std::time::Instant::now();
    let out = store.read(query);
    if !contended {
        store.note_point_read(started.elapsed());
    }
    out
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Linearizable: reflects every write acknowledged before the read
    /// started, on whichever node it lands (the default, and `?consistent`).
    #[default]
    Linearizable,
    /// From this node's replica as it is, without asking the leader
    /// (`?stale`).
    Stale,
}

/// Why a KV request failed. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// No leader was known within the request timeout. A write was not
    /// applied.
    #[error("no cluster leader")]
    NoLeader,
    /// The request reached the cluster but got no answer within the request
    /// timeout. A write may or may not have been applied.
    #[error("timed out waiting for the cluster")]
    TimedOut,
    /// The node is shutting down; a write was not applied.
    #[error("the node is shutting down")]
    Stopped,
    /// The node stopped (shutting down, or removed from the cluster) after
    /// a write left it. It may or may not have been applied.
    #[error("the node stopped before the write's outcome was known")]
    Abandoned,
    /// The leader the write went to lost its leadership before the write
    /// was seen to commit. It may or may not have been applied.
    #[error("the leader lost its leadership before the write's outcome was known")]
    LeaderLost,
    /// The store failed; the node stops.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The data dir's filesystem is full ([`crate::diskguard`]); the write
    /// was not proposed.
    #[error("{0}")]
    DiskFull(String),
}

impl From<RequestError> for KvError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NoLeader => KvError::NoLeader,
            RequestError::TimedOut => KvError::TimedOut,
            RequestError::Abandoned => KvError::Abandoned,
            RequestError::LeaderLost => KvError::LeaderLost,
            RequestError::Stopped | RequestError::NotLeader | RequestError::Busy => {
                KvError::Stopped
            }
        }
    }
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct KvService {
    replica: ReplicaHandle,
    store: Arc<StateStore>,
    settings: StoreSettings,
    limits: Arc<Limits>,
    budget: Budget,
    blocking: Arc<std::sync::atomic::AtomicUsize>,
}

impl KvService {
    /// The service of the `__meta/0` replica and its store.
    pub fn new(
        replica: ReplicaHandle,
        store: Arc<StateStore>,
        settings: StoreSettings,
        limits: Limits,
    ) -> Self {
        KvService {
            replica,
            store,
            settings,
            budget: Budget::new(limits.max_buffered_bytes),
            limits: Arc::new(limits),
            blocking: Arc::default(),
        }
    }

    /// The `[store]` limits.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The `[limits]` table.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The budget that request bodies and built answers share.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What a transaction's reads may return, as this node proposes it.
    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            max_reads: self.limits.max_txn_reads,
            max_response_bytes: self.limits.max_response_bytes,
        }
    }

    /// Takes a blocking-query slot, if one of `max_blocking_queries` is free;
    /// it is given back when the guard drops.
    pub fn blocking_slot(&self) -> Option<BlockingSlot> {
        use std::sync::atomic::Ordering;
        let max = self.limits.max_blocking_queries;
        self.blocking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| BlockingSlot(self.blocking.clone()))
    }

    /// Leader and last contact, for response headers.
    pub fn gauge(&self) -> &Gauge {
        self.replica.gauge()
    }

    /// Runs a query with the given consistency, on a worker thread.
    pub async fn read<T: Send + 'static>(
        &self,
        consistency: Consistency,
        query: impl FnOnce(&ReadTables) -> machine::Result<T> + Send + 'static,
    ) -> Result<T, KvError> {
        if consistency == Consistency::Linearizable {
            self.replica.read_index().await?;
        }
        let store = self.store.clone();
        crate::runtime::unblock(move || store.read(query))
            .await
            .map_err(|e| KvError::Storage(e.to_string()))
    }

    /// Runs a query of one key (a point lookup, and the token's rows when
    /// the ACL cache does not hold them; the caller passes `inline` false
    /// when a read must parse more) with the given consistency: right
    /// on the executor, as a small apply runs, when `inline` and the store
    /// allows it ([`StateStore::reads_inline`]), else on a worker thread.
    /// The hop to a worker and back costs two thread wakeups, more than
    /// the read: a linearizable get took 0.12-0.14 ms instead of 0.15-0.19, a stale
    /// one 0.06 ms instead of 0.09 (wrk, one connection, 3 local nodes).
    /// Every point read is timed, wherever it runs, for the next one's
    /// choice.
    pub async fn read_point<T: Send + 'static>(
        &self,
        consistency: Consistency,
        inline: bool,
        query: impl FnOnce(&ReadTables) -> machine::Result<T> + Send + 'static,
    ) -> Result<T, KvError> {
        if consistency == Consistency::Linearizable {
            self.replica.read_index().await?;
        }
        let out = if inline && self.store.reads_inline() {
            timed_point_read(&self.store, query)
        } else {
            let store = self.store.clone();
            crate::runtime::unblock(move || timed_point_read(&store, query)).await
        };
        out.map_err(|e| KvError::Storage(e.to_string()))
    }

    /// Proposes `ops` as one client command and waits until it is applied
    /// on this node.
    pub async fn write(&self, ops: Vec<KvOp>) -> Result<Committed, KvError> {
        let cmd = Command {
            max_store_bytes: self.settings.max_store_bytes,
            from_client: true,
            ops,
            reads: self.read_limits(),
        };
        let data = cmd.encode();
        crate::diskguard::check_now(data.len() as u64);
        if let Some(why) = crate::diskguard::full_reason() {
            return Err(KvError::DiskFull(why));
        }
        Ok(self.replica.propose(data).await?)
    }

    /// Proposes `ops` as one cluster command, which may write the reserved
    /// prefix (the ACL system's rows), and waits until it is applied here.
    pub async fn write_cluster(&self, ops: Vec<KvOp>) -> Result<Committed, KvError> {
        let cmd = Command {
            max_store_bytes: self.settings.max_store_bytes,
            from_client: false,
            ops,
            reads: self.read_limits(),
        };
        Ok(self.replica.propose(cmd.encode()).await?)
    }

    /// The state machine's store, for backups.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// The replica, for membership changes.
    pub fn replica(&self) -> &ReplicaHandle {
        &self.replica
    }

    /// Registers a watch on `key` (or the prefix `key`); see
    /// [`ReplicaHandle::watch`].
    pub async fn watch(&self, key: &str, prefix: bool) -> Result<flume::Receiver<()>, KvError> {
        self.replica
            .watch(key.to_string(), prefix)
            .await
            .ok_or(KvError::Stopped)
    }
}

/// A blocking query's slot ([`KvService::blocking_slot`]).
pub struct BlockingSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for BlockingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
