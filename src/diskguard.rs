//! The full-disk guard: etcd's NOSPACE alarm, for the data dir's
//! filesystem.
//!
//! A thread looks at the filesystem's free space every [`CHECK_INTERVAL`]
//! (every [`FAR_CHECK_INTERVAL`] while there is plenty, every
//! [`CLOSE_CHECK_INTERVAL`] near the reserve).
//! Below the reserve (a quarter of the filesystem, from
//! [`MIN_RESERVE_BYTES`] to [`RESERVE_BYTES`]) the alarm goes up; it goes
//! down once the free space is back to one and a half times that. While it
//! is up:
//!
//! - client writes through this node fail at once with 507 and a sentence
//!   naming the full filesystem (nothing is proposed);
//! - the replica accepts no appends, snapshots or forwarded proposals from
//!   its peers: a follower stops acknowledging (the leader retries it once
//!   the alarm is down, as for a slow follower), and still answers
//!   heartbeats, so no election starts;
//! - a leader hands its leadership to a peer, so the others keep taking
//!   writes;
//! - reads keep working (`?stale` on this node; consistent reads wherever
//!   the leader is).
//!
//! The reserve is room for what is already under way: a new 1 MiB log
//! segment and the store's growth between two checkpoints. A write that
//! still meets ENOSPC on the log (the disk filled faster than the check)
//! is retried by the log writer until space returns, never dropped
//! (`src/raft/log/writer.rs`).
//!
//! The alarm is process-wide state (one data dir per process), read by the
//! replica, the KV service and the HTTP API without a handle through every
//! layer: it imports nothing of the crate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Free space below which the alarm goes up, on a filesystem of 64 MiB
/// or more; a quarter of a smaller one, and at least [`MIN_RESERVE_BYTES`].
pub const RESERVE_BYTES: u64 = 16 * 1024 * 1024;
/// The smallest reserve.
pub const MIN_RESERVE_BYTES: u64 = 4 * 1024 * 1024;
/// How often the free space is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How often, once the free space is under four times the reserve.
pub const CLOSE_CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// How often while more than sixteen times the reserve is free: filling
/// that much within a second takes more than this node can write (and a
/// client write looks at the free space itself once the writes since the
/// last look could). An idle node's wakeups are what its idle CPU is made
/// of.
pub const FAR_CHECK_INTERVAL: Duration = Duration::from_secs(1);

static FULL: AtomicBool = AtomicBool::new(false);
static FREE: AtomicU64 = AtomicU64::new(u64::MAX);
static RESERVE: AtomicU64 = AtomicU64::new(RESERVE_BYTES);
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// True while the alarm is up.
pub fn is_full() -> bool {
    FULL.load(Ordering::Relaxed)
}

/// The sentence that says why writes are refused, while the alarm is up.
pub fn full_reason() -> Option<String> {
    if !is_full() {
        return None;
    }
    let dir = DIR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    let free = FREE.load(Ordering::Relaxed);
    Some(format!(
        "the disk is full: the filesystem of the data dir {} has {} free, below the {} the node \
         keeps in reserve; writes through this node are refused until space returns",
        dir.display(),
        human(free),
        human(RESERVE.load(Ordering::Relaxed))
    ))
}

/// Free bytes at the last look (`u64::MAX` before the first).
pub fn free_bytes() -> u64 {
    FREE.load(Ordering::Relaxed)
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// Free bytes for an unprivileged writer on `dir`'s filesystem, and its
/// size.
pub fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// The reserve on a filesystem of `size` bytes.
pub fn reserve_for(size: u64) -> u64 {
    (size / 4).clamp(MIN_RESERVE_BYTES, RESERVE_BYTES)
}

/// Whether the alarm is up after a look that found `free` bytes, given
/// whether it `was` and the `reserve`: up below the reserve, down from one
/// and a half times it.
pub fn next_state(was: bool, free: u64, reserve: u64) -> bool {
    if was {
        free < reserve.saturating_add(reserve / 2)
    } else {
        free < reserve
    }
}

/// Records a look at the free space; returns true if the alarm changed.
pub fn observe(free: u64, size: u64) -> bool {
    let reserve = reserve_for(size);
    RESERVE.store(reserve, Ordering::Relaxed);
    FREE.store(free, Ordering::Relaxed);
    PROPOSED.store(0, Ordering::Relaxed);
    let was = is_full();
    let now = next_state(was, free, reserve);
    FULL.store(now, Ordering::Relaxed);
    was != now
}

/// How many times over a proposed byte may reach the disk (the log, the
/// store's pages, a checkpoint, a snapshot): [`check_now`] looks again once
/// the writes proposed since the last look, this many times over, could
/// reach the reserve.
const WRITE_AMPLIFICATION: u64 = 16;

/// What [`check_now`] counts for a write smaller than this.
const MIN_WRITE_BYTES: u64 = 4096;

/// Bytes proposed through [`check_now`] since the last look.
static PROPOSED: AtomicU64 = AtomicU64::new(0);

/// Called before a client write of `bytes` is proposed: looks at the free
/// space now (one `statvfs`, which reads no disk) when the writes proposed
/// since the last look could have filled the room above the reserve, so
/// that a burst of writes between two looks of the thread cannot run past
/// it. Far from the reserve this is an atomic add: a `statvfs` per write
/// cost a busy leader 2 % of its CPU.
pub fn check_now(bytes: u64) {
    // A write takes at least a page of the log and of the store.
    let bytes = bytes.max(MIN_WRITE_BYTES);
    let since = PROPOSED
        .fetch_add(bytes, Ordering::Relaxed)
        .saturating_add(bytes);
    let (free, reserve) = (
        FREE.load(Ordering::Relaxed),
        RESERVE.load(Ordering::Relaxed),
    );
    if !needs_look(since, free, reserve, is_full()) {
        return;
    }
    let dir = DIR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(dir) = dir {
        if let Ok((free, size)) = free_space(&dir) {
            observe(free, size);
        }
    }
}

/// Whether a write must look at the free space: `since` bytes were proposed
/// since the last look, which found `free` (`u64::MAX`: none yet).
fn needs_look(since: u64, free: u64, reserve: u64, full: bool) -> bool {
    full || free == u64::MAX
        || since.saturating_mul(WRITE_AMPLIFICATION) >= free.saturating_sub(reserve)
}

/// Raises the alarm at once: a write met ENOSPC.
pub fn raise() {
    FREE.store(0, Ordering::Relaxed);
    FULL.store(true, Ordering::Relaxed);
}

/// True if `e`'s text is the kernel's ENOSPC ("No space left on device",
/// os error 28): the storage layers report I/O errors as sentences.
pub fn is_enospc_text(text: &str) -> bool {
    text.contains("(os error 28)")
}

/// Watches `dir`'s filesystem until `stop` closes; logs each change of the
/// alarm and calls `changed(full, free)`.
pub fn watch(
    dir: PathBuf,
    stop: flume::Receiver<()>,
    changed: impl Fn(bool, u64) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    *DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
    // A thread of its own: statvfs is a syscall that a stalled disk can
    // hold up, and it must never stall the executor.
    std::thread::Builder::new()
        .name("disk-guard".into())
        .spawn(move || loop {
            match free_space(&dir) {
                Ok((free, size)) => {
                    if observe(free, size) {
                        if is_full() {
                            log::warn!("NOSPACE: {}", full_reason().unwrap_or_default());
                        } else {
                            log::info!(
                                "disk space is back on the filesystem of {} ({} free): writes \
                                 are accepted again",
                                dir.display(),
                                human(free)
                            );
                        }
                    }
                    changed(is_full(), free);
                }
                Err(e) => log::debug!("cannot stat the filesystem of {}: {e}", dir.display()),
            }
            let (free, reserve) = (
                FREE.load(Ordering::Relaxed),
                RESERVE.load(Ordering::Relaxed),
            );
            let interval = if free < reserve.saturating_mul(4) {
                CLOSE_CHECK_INTERVAL
            } else if free < reserve.saturating_mul(16) {
                CHECK_INTERVAL
            } else {
                FAR_CHECK_INTERVAL
            };
            match stop.recv_timeout(interval) {
                Err(flume::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })
}

/// When the log's current fsync began, in microseconds after [`epoch`]
/// (0: none under way).
static SYNC_STARTED_US: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An fsync of the log begins (on the writer thread, or inline on a
/// follower's replica).
pub fn sync_begins() {
    let us = epoch().elapsed().as_micros().max(1) as u64;
    SYNC_STARTED_US.store(us, Ordering::Relaxed);
}

/// That fsync of the log returned.
pub fn sync_ends() {
    SYNC_STARTED_US.store(0, Ordering::Relaxed);
}

/// How long the log's current fsync has been under way (zero when none
/// is): the stall detector of a leader reads it.
pub fn sync_stalled_for() -> Duration {
    match SYNC_STARTED_US.load(Ordering::Relaxed) {
        0 => Duration::ZERO,
        started => epoch()
            .elapsed()
            .saturating_sub(Duration::from_micros(started)),
    }
}

/// The test-only slow-disk fault: in debug builds, with
/// `QUORUMD_FAULT_FSYNC_DELAY` set (a duration such as `300ms`), every
/// fsync of the log first sleeps that long; with
/// `QUORUMD_FAULT_FSYNC_DELAY_FILE` set too, only while that file exists,
/// so a test can start and stop the stalls. Release builds have no such
/// hook.
pub fn inject_fsync_delay() {
    #[cfg(debug_assertions)]
    {
        static FAULT: OnceLock<Option<(Duration, Option<PathBuf>)>> = OnceLock::new();
        let fault = FAULT.get_or_init(|| {
            let delay = std::env::var("QUORUMD_FAULT_FSYNC_DELAY").ok()?;
            let delay = humantime::parse_duration(&delay).ok()?;
            let file = std::env::var_os("QUORUMD_FAULT_FSYNC_DELAY_FILE").map(PathBuf::from);
            log::warn!(
                "test fault: every fsync of the log sleeps {}{}",
                humantime::format_duration(delay),
                file.as_ref()
                    .map(|f| format!(" while {} exists", f.display()))
                    .unwrap_or_default()
            );
            Some((delay, file))
        });
        if let Some((delay, file)) = fault {
            if file.as_ref().is_none_or(|f| f.exists()) {
                std::thread::sleep(*delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pure functions only: the alarm itself is process-wide, and other
    // tests of the crate run beside these.

    #[test]
    fn a_write_looks_when_what_was_proposed_could_reach_the_reserve() {
        let mib = 1 << 20;
        // Before the first look, and while the alarm is up: always.
        assert!(needs_look(0, u64::MAX, 16 * mib, false));
        assert!(needs_look(0, 100 * mib, 16 * mib, true));
        // Far from the reserve: no look until 16 times the proposed bytes
        // reach the room above it.
        assert!(!needs_look(mib, 100 * mib, 16 * mib, false));
        assert!(!needs_look(5 * mib, 100 * mib, 16 * mib, false));
        assert!(needs_look(6 * mib, 100 * mib, 16 * mib, false));
        // At or under the reserve: every write.
        assert!(needs_look(1, 16 * mib, 16 * mib, false));
        assert!(needs_look(0, 8 * mib, 16 * mib, false));
    }

    #[test]
    fn the_alarm_has_hysteresis_and_a_reserve_that_fits_the_disk() {
        let r = RESERVE_BYTES;
        assert!(next_state(false, r - 1, r));
        assert!(!next_state(false, r, r));
        assert!(
            next_state(true, r + r / 4, r),
            "still within one and a half times the reserve"
        );
        assert!(!next_state(true, r + r / 2, r));
        assert_eq!(reserve_for(64 << 30), RESERVE_BYTES);
        assert_eq!(reserve_for(48 << 20), 12 << 20);
        assert_eq!(reserve_for(24 << 20), 6 << 20);
        assert_eq!(reserve_for(4 << 20), MIN_RESERVE_BYTES);
        assert!(is_enospc_text(
            "cannot write x: No space left on device (os error 28)"
        ));
        assert!(!is_enospc_text(
            "cannot write x: Input/output error (os error 5)"
        ));
    }
}
