//! The log writer: a thread of its own that writes the [`RaftLog`].
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
//!
//! A follower on a fast disk makes small writes on its own thread instead
//! ([`LogWriter::write_inline`]): its acks are on every write's critical
//! path, and the hand-off here and back cost two thread wakeups (36-49 µs
//! and 30-40 µs on average in a 1-connection put run of a 3-node cluster on
//! one 2-core machine, beside an `fdatasync` of about 150 µs). The replica
//! writes inline only while nothing is queued here, and only while each of
//! the last [`FAST_SYNCS`] syncs took under [`FAST_SYNC`], the last within
//! [`FAST_FOR`]. That thread is the executor's only one, so the whole node
//! waits for an inline fsync. One slower sync sends the writes back to this
//! thread: a disk that turns slow, or one slow fsync, holds the node for
//! that one sync, then not again until eight syncs in a row were fast, and
//! an SD card whose fsyncs take milliseconds never writes inline. A leader
//! always hands its writes over.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A sync at least this long makes the disk slow: the follower's writes
/// go to the writer thread again.
pub const FAST_SYNC: Duration = Duration::from_millis(1);

/// How many fast syncs in a row make the disk fast enough for a follower
/// to write inline.
pub const FAST_SYNCS: u32 = 8;

/// How long the measure of the disk holds: after a second without a sync,
/// the next write goes to the writer thread, which measures again.
pub const FAST_FOR: Duration = Duration::from_secs(1);

/// The largest write made inline (its records' bytes): a put's or a small
/// batch's. A catch-up's megabytes go to the writer thread.
pub const INLINE_MAX_BYTES: u64 = 64 * 1024;

/// What the writer thread and an inline write share: the log itself, the
/// measure of the disk, and whether a write failed.
struct Shared {
    log: Mutex<RaftLog>,
    /// How many of the last syncs in a row were fast (at most
    /// [`FAST_SYNCS`]).
    fast: AtomicU32,
    /// Until when the measure holds ([`FAST_FOR`] after the last sync
    /// ended), in µs after `epoch`.
    fresh_until_us: AtomicU64,
    epoch: Instant,
    /// A write or sync failed (on the writer thread or inline): nothing
    /// more may be written or synced. Set while the log is held.
    failed: AtomicBool,
    observer: Arc<dyn SyncObserver>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, RaftLog> {
        // A panic while the log was held is fatal to the replica anyway
        // (its task is supervised); what the log holds is still whole, as
        // every write checks its own invariants first.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Syncs `log` (one `fdatasync`) and records how long it took.
    fn sync(&self, log: &mut RaftLog, writes: usize) -> Result<()> {
        let started = Instant::now();
        crate::diskguard::sync_begins();
        let synced = log.sync_data();
        crate::diskguard::sync_ends();
        synced?;
        let took = started.elapsed();
        self.observer.synced(took, writes);
        self.note_sync(took);
        Ok(())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether the disk measured fast, recently enough.
    fn fast_now(&self) -> bool {
        self.fast.load(Ordering::Relaxed) >= FAST_SYNCS
            && self.now_us() < self.fresh_until_us.load(Ordering::Relaxed)
    }

    /// Counts a sync that took `took`: fast ones up to [`FAST_SYNCS`], and
    /// a slow one starts the count again.
    fn note_sync(&self, took: Duration) {
        self.fresh_until_us.store(
            self.now_us() + FAST_FOR.as_micros() as u64,
            Ordering::Relaxed,
        );
        if took < FAST_SYNC {
            let _ = self
                .fast
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n + 1).min(FAST_SYNCS))
                });
        } else {
            self.fast.store(0, Ordering::Relaxed);
        }
    }
}

/// The handle the replica keeps. Dropping it stops the writer, after it
/// wrote and synced everything it was given.
pub struct LogWriter {
    tx: Option<flume::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Starts the writer thread on `log`; it reports through `report`.
    pub fn spawn(
        log: RaftLog,
        report: impl Fn(Event) -> bool + Send + 'static,
        observer: Arc<dyn SyncObserver>,
    ) -> Result<LogWriter> {
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            fast: AtomicU32::new(0),
            fresh_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
            failed: AtomicBool::new(false),
            observer,
        });
        // Unbounded: the replica never waits to hand over a write, and raft
        // bounds what is in flight (max_inflight_msgs, uncommitted bytes).
        let (tx, rx) = flume::unbounded::<Request>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let mut batch = vec![first];
                        batch.extend(rx.try_iter());
                        let stopped = || rx.is_disconnected();
                        if let Err(e) = run_batch(&shared, batch, &report, &stopped) {
                            error!("the Raft log failed: {e}");
                            report(Event::Failed(e));
                            return;
                        }
                    }
                    // The replica is gone: make what was written durable,
                    // unless a write failed (a second fsync after a failed
                    // one may succeed without the data, and a `Synced` mark
                    // would then confirm what never reached the disk).
                    let mut log = shared.lock();
                    if shared.failed.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = log.sync() {
                        error!("cannot sync the Raft log on the way out: {e}");
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start the log writer thread: {e}")))?
        };
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// Writes and syncs `write` on the caller's thread, if the disk is
    /// fast (each of the last [`FAST_SYNCS`] syncs took under
    /// [`FAST_SYNC`], the last within [`FAST_FOR`]), the write is small
    /// (at most [`INLINE_MAX_BYTES`], and it fits in the active segment, so
    /// no new segment is made) and the writer thread neither holds the log
    /// nor failed. `Ok(true)`: it is written, and durable if it asked for a
    /// sync. `Ok(false)`: nothing of it was written, queue it. The caller
    /// must have nothing queued that is not written yet: the log keeps the
    /// order of its writes.
    ///
    /// The caller's thread waits for one `fdatasync`, so this is only for
    /// a thread that may wait that long; a full disk is never waited out
    /// here (the write is handed back, and the writer thread retries it).
    pub fn write_inline(&self, write: &mut LogWrite) -> Result<bool> {
        if self.tx.is_none()
            || self.shared.failed.load(Ordering::Relaxed)
            || !self.shared.fast_now()
        {
            return Ok(false);
        }
        let Ok(mut log) = self.shared.log.try_lock() else {
            return Ok(false);
        };
        // Again under the lock, which a failing writer thread holds while
        // it sets the flag.
        if self.shared.failed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let written = (|| -> Result<bool> {
            // The mark of the last inline sync, if it is not written yet
            // (see below). It goes in the active segment, which keeps room
            // for it.
            log.mark_synced()?;
            // The sync is done (and timed) here, not by `RaftLog::write`.
            let sync = std::mem::take(&mut write.sync);
            let wrote = match log.write_small(write, INLINE_MAX_BYTES) {
                Err(e) if crate::diskguard::is_enospc_text(&e.to_string()) => false,
                other => other?,
            };
            if !wrote {
                write.sync = sync;
                return Ok(false);
            }
            if sync {
                self.shared.sync(&mut log, 1)?;
            }
            Ok(true)
        })();
        if written.is_err() {
            self.shared.failed.store(true, Ordering::Relaxed);
        }
        if !written? {
            return Ok(false);
        }
        // The `Synced` mark is written before the next write (or by the
        // writer thread's next sync, or on the way out), not now: it is
        // not part of what the caller is told, and its write would delay
        // the acks the caller sends next. As with the writer thread's, a
        // crash before it loses nothing: every intact record is replayed.
        Ok(true)
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
    shared: &Shared,
    batch: Vec<Request>,
    report: &impl Fn(Event) -> bool,
    stopped: &dyn Fn() -> bool,
) -> Result<()> {
    let mut log = shared.lock();
    if shared.failed.load(Ordering::Relaxed) {
        return Err(Error::Internal(
            "the Raft log is not written after a failed write".into(),
        ));
    }
    let result = write_batch(shared, &mut log, batch, report, stopped);
    if result.is_err() {
        // Set while the log is held: an inline write checks it under the
        // lock.
        shared.failed.store(true, Ordering::Relaxed);
    }
    result
}

fn write_batch(
    shared: &Shared,
    log: &mut RaftLog,
    batch: Vec<Request>,
    report: &impl Fn(Event) -> bool,
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
        shared.sync(log, writes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log::faults::Crash;
    use raft::eraftpb::{Entry, HardState};

    struct Quiet;
    impl SyncObserver for Quiet {
        fn synced(&self, _: Duration, _: usize) {}
    }

    fn entries(from: u64, to: u64) -> LogWrite {
        LogWrite {
            entries: (from..=to)
                .map(|index| Entry {
                    index,
                    term: 2,
                    data: format!("entry {index}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
            hard_state: Some(HardState {
                term: 2,
                vote: 1,
                commit: 1,
                ..Default::default()
            }),
            sync: true,
            ..Default::default()
        }
    }

    fn last_on_disk(dir: &std::path::Path) -> u64 {
        let (_, recovered) = RaftLog::open(dir).unwrap();
        recovered.entries.last().map_or(1, |e| e.index)
    }

    fn fast_disk(w: &LogWriter) {
        for _ in 0..FAST_SYNCS {
            w.shared.note_sync(Duration::from_micros(200));
        }
    }

    /// A write is inline only once the disk proved fast, recently, never
    /// while the log is held (by the writer thread, in the binary), never
    /// after a slow sync or a failure of the writer; what it wrote is
    /// durable when it returns (it survives a crash that loses every write
    /// not synced), and it keeps the log's order with the writes the thread
    /// made.
    #[test]
    fn a_write_is_inline_only_on_a_fast_disk_and_durable_when_it_returns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut log = RaftLog::create_small(&dir, 160 * 1024);
        let faults = log.record_faults();
        let (tx, events) = flume::unbounded();
        let w = LogWriter::spawn(log, move |e| tx.send(e).is_ok(), Arc::new(Quiet)).unwrap();

        // A fresh writer has no measure of the disk yet: nothing is written.
        assert!(!w.write_inline(&mut entries(2, 3)).unwrap());
        assert_eq!(w.shared.lock().last().0, 1);
        w.write(1, entries(2, 3));
        assert!(matches!(events.recv().unwrap(), Event::Persisted(1)));

        // The thread's sync counted, fast or slow (the test's disk decides);
        // a slow one starts the count again. Then seven fast syncs are not
        // enough, and the eighth is.
        w.shared.note_sync(FAST_SYNC);
        for _ in 1..FAST_SYNCS {
            w.shared.note_sync(Duration::from_micros(200));
        }
        assert!(!w.write_inline(&mut entries(4, 4)).unwrap());
        w.shared.note_sync(Duration::from_micros(200));

        // Never while the log is held.
        {
            let _held = w.shared.lock();
            assert!(!w.write_inline(&mut entries(4, 4)).unwrap());
        }
        // Never a measure older than FAST_FOR.
        w.shared.fresh_until_us.store(0, Ordering::Relaxed);
        assert!(!w.write_inline(&mut entries(4, 4)).unwrap());
        fast_disk(&w);
        // Never a write larger than INLINE_MAX_BYTES; it keeps its sync.
        let mut large = entries(4, 4);
        large.entries[0].data = vec![7; INLINE_MAX_BYTES as usize].into();
        assert!(!w.write_inline(&mut large).unwrap());
        assert!(large.sync, "a write handed back keeps its sync");
        assert_eq!(w.shared.lock().last().0, 3);

        fast_disk(&w);
        assert!(w.write_inline(&mut entries(4, 6)).unwrap());
        // The crash comes while the log is held, so the thread writes
        // nothing after it: what an inline write wrote is already synced.
        // Its `Synced` mark was never written (it would go before the next
        // write): the write after it, not synced, is lost, then torn, and
        // recovery keeps what the inline write synced either way.
        {
            let mut log = w.shared.lock();
            let mut unsynced = entries(7, 9);
            unsynced.sync = false;
            log.write(&unsynced).unwrap();
            faults.crash(Crash::LoseUnsynced);
            assert_eq!(last_on_disk(&dir), 6);
            log.write(&unsynced).unwrap();
            faults.crash(Crash::TearLast);
            let last = last_on_disk(&dir);
            assert!((6..=9).contains(&last), "recovered up to {last}");
        }
        assert!(
            events.try_recv().is_err(),
            "an inline write is not reported"
        );

        // One slow sync sends the writes back to the thread; so does a
        // failure of the writer.
        w.shared.note_sync(FAST_SYNC);
        assert!(!w.write_inline(&mut entries(7, 7)).unwrap());
        fast_disk(&w);
        w.shared.failed.store(true, Ordering::Relaxed);
        assert!(!w.write_inline(&mut entries(7, 7)).unwrap());
        w.shared.failed.store(false, Ordering::Relaxed);
        w.write(2, entries(7, 8));
        assert!(matches!(events.recv().unwrap(), Event::Persisted(2)));

        // Never a write that needs a new segment (160 KiB here): two of
        // 60 KiB fit, the third does not. (The thread reports before it
        // writes the sync's mark: wait until it lets go of the log.)
        drop(w.shared.lock());
        fast_disk(&w);
        let sized = |index| {
            let mut e = entries(index, index);
            e.entries[0].data = vec![7; 60 * 1024].into();
            w.write_inline(&mut e).unwrap()
        };
        assert_eq!((sized(9), sized(10), sized(11)), (true, true, false));

        // A write the thread refuses (a gap) fails the writer: nothing is
        // written inline after it, and the way out syncs nothing more.
        w.write(3, entries(20, 20));
        assert!(matches!(events.recv().unwrap(), Event::Failed(_)));
        fast_disk(&w);
        assert!(!w.write_inline(&mut entries(11, 11)).unwrap());
        drop(w);
        let (_, recovered) = RaftLog::open(&dir).unwrap();
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (2..=10).collect::<Vec<_>>());
    }
}
