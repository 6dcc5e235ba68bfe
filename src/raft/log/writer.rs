//! The log writer: a thread of its own that owns the [`RaftLog`].
//!
//! The replica hands it each Ready's [`LogWrite`] and goes on: a leader
//! replicates and answers while its own `fdatasync` runs (writing the log in
//! parallel with replication), and a follower reads its next messages. The
//! writer takes every write waiting in its queue, appends them all, syncs
//! once, and reports the highest Ready number made durable; the replica then
//! calls raft-rs's `on_persist_ready` and sends the messages that waited for
//! the write (votes, append acks). So under load one `fdatasync` covers many
//! Readies, and a slow disk (an SD card whose fsync takes 10 ms) slows the
//! writes that wait for it, not the replica's loop.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::error;

use crate::error::{Error, Result};
use crate::raft::log::{LogWrite, RaftLog};

/// What the writer is asked to do.
enum Request {
    /// Append this Ready's write.
    Write { number: u64, write: LogWrite },
    /// Append, sync, and answer (a snapshot: the caller waits).
    WriteNow {
        write: LogWrite,
        reply: flume::Sender<Result<()>>,
    },
    /// Delete the segments no longer needed once `upto` is checkpointed.
    Release(u64),
}

/// What the writer reports, through the callback it was given.
#[derive(Debug)]
pub enum Event {
    /// Every write up to this Ready number is durable.
    Persisted(u64),
    /// A write or sync failed: fatal, nothing after it may be acknowledged.
    Failed(Error),
}

/// How long each `fdatasync` took, and how many writes it covered: the
/// replica's metrics implement it.
pub trait SyncObserver: Send + Sync + 'static {
    /// One sync of `writes` writes took `took`.
    fn synced(&self, took: Duration, writes: usize);
}

impl SyncObserver for crate::metrics::Metrics {
    fn synced(&self, took: Duration, writes: usize) {
        self.observe_wal_fsync(took, writes);
    }
}

/// The handle the replica keeps. Dropping it stops the writer, after it
/// wrote and synced everything it was given.
pub struct LogWriter {
    tx: Option<flume::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Starts the writer thread on `log`; it reports through `report`.
    pub fn spawn(
        mut log: RaftLog,
        report: impl Fn(Event) -> bool + Send + 'static,
        observer: std::sync::Arc<dyn SyncObserver>,
    ) -> Result<LogWriter> {
        // Unbounded: the replica never waits to hand over a write, and raft
        // bounds what is in flight (max_inflight_msgs, uncommitted bytes).
        let (tx, rx) = flume::unbounded::<Request>();
        let thread = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let stopped = || rx.is_disconnected();
                    if let Err(e) = run_batch(&mut log, batch, &report, &*observer, &stopped) {
                        error!("the Raft log failed: {e}");
                        report(Event::Failed(e));
                        return;
                    }
                }
                // The replica is gone: make what was written durable.
                if let Err(e) = log.sync() {
                    error!("cannot sync the Raft log on the way out: {e}");
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the log writer thread: {e}")))?;
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues Ready `number`'s write; [`Event::Persisted`] follows once it
    /// is durable.
    pub fn write(&self, number: u64, write: LogWrite) {
        if let Some(tx) = &self.tx {
            // The writer only ends when it failed, and then it reported.
            let _ = tx.send(Request::Write { number, write });
        }
    }

    /// Writes and syncs `write` after everything queued, and waits for it.
    pub async fn write_now(&self, write: LogWrite) -> Result<()> {
        let (reply, rx) = flume::bounded(1);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::WriteNow { write, reply });
        }
        rx.recv_async()
            .await
            .map_err(|_| Error::Internal("the log writer stopped".into()))?
    }

    /// Deletes the segments no longer needed once every entry up to `upto`
    /// is checkpointed.
    pub fn release(&self, upto: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Release(upto));
        }
    }

    /// Stops the writer after everything queued was written and synced.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long the writer waits before it tries again a write that met a full
/// disk.
pub const DISK_FULL_RETRY: Duration = Duration::from_millis(500);

/// Writes `write`; a write that meets a full disk (ENOSPC, which only a new
/// segment can meet: a segment is zero-filled when made) is tried again
/// until space returns, raising the full-disk alarm meanwhile. Nothing of
/// it was written, so nothing is acknowledged until it succeeds. Gives up
/// only when the replica is gone.
fn write_retrying(log: &mut RaftLog, write: &LogWrite, stopped: &dyn Fn() -> bool) -> Result<()> {
    let mut warned = false;
    loop {
        match log.write(write) {
            Err(e) if crate::diskguard::is_enospc_text(&e.to_string()) && !stopped() => {
                crate::diskguard::raise();
                if !warned {
                    log::warn!("{e}: the log waits for space, then writes again");
                    warned = true;
                }
                std::thread::sleep(DISK_FULL_RETRY);
            }
            other => {
                if warned && other.is_ok() {
                    log::info!("the Raft log is written again: disk space is back");
                }
                return other;
            }
        }
    }
}

fn run_batch(
    log: &mut RaftLog,
    batch: Vec<Request>,
    report: &impl Fn(Event) -> bool,
    observer: &dyn SyncObserver,
    stopped: &dyn Fn() -> bool,
) -> Result<()> {
    let mut persisted = None;
    let mut sync = false;
    let mut writes = 0;
    let mut replies = Vec::new();
    let mut release = None;
    for req in batch {
        match req {
            Request::Write { number, mut write } => {
                sync |= std::mem::take(&mut write.sync);
                write_retrying(log, &write, stopped)?;
                writes += 1;
                persisted = Some(number);
            }
            Request::WriteNow { mut write, reply } => {
                write.sync = false;
                write_retrying(log, &write, stopped)?;
                sync = true;
                writes += 1;
                replies.push(reply);
            }
            Request::Release(upto) => release = Some(upto),
        }
    }
    if sync {
        let started = Instant::now();
        crate::diskguard::sync_begins();
        let synced = log.sync_data();
        crate::diskguard::sync_ends();
        synced?;
        observer.synced(started.elapsed(), writes);
    }
    for reply in replies {
        let _ = reply.send(Ok(()));
    }
    if let Some(n) = persisted {
        report(Event::Persisted(n));
    }
    // After the report: the mark is not part of what the report promises.
    log.mark_synced()?;
    if let Some(upto) = release {
        log.release(upto)?;
    }
    Ok(())
}
