//! The Raft log on disk: an append-only write-ahead log of segments, beside
//! the state machine's redb file.
//!
//! It holds what Raft must never forget: the entries and the hard state
//! (term, vote, commit). One [`LogWrite`] per Ready goes in as records
//! appended to the active segment, and one `fdatasync` makes a whole batch
//! of them durable, however many Readies it holds.
//!
//! ```text
//! <node dir>/wal/0000000000000001.wal   Header Base HardState Entries… Synced Entries HardState Synced …
//!               /0000000000000002.wal   Header Base HardState …
//! ```
//!
//! Rules kept here:
//! - **Segments are zero-filled when made** (under a temporary name, synced,
//!   then renamed), so appending never changes a file's size or extents: an
//!   `fdatasync` writes data blocks and no metadata. Writes are whole pages
//!   (the tail page is kept in memory), so the kernel never reads a page
//!   back before writing it, and the file is dropped from the page cache
//!   after it is zero-filled or read, so its pages are small ones (a large
//!   folio would count, and may write, megabytes for a 4 KiB append).
//! - **Promises only move forward:** a hard state that lowers the term, or
//!   changes the vote within a term, is refused as a fatal error naming both
//!   values, before anything is written.
//! - **After every `fdatasync`, a `Synced` record says how far the segment
//!   is durable.** It tells, on recovery, a write torn by a crash (nothing
//!   after it was ever confirmed durable: it was never acknowledged, and it
//!   is cut off) from damage to data that was durable (a confirmation
//!   follows it: the node refuses to start, naming the file and offset).
//!   Only a power cut that also damages the last durable record defeats
//!   this, two faults at once.
//! - **Each segment starts with the log's last index and term and the hard
//!   state** (`Base`, `HardState`), so the oldest segment kept is enough to
//!   replay from: older segments are deleted once every entry in them is
//!   applied and checkpointed by the state machine ([`RaftLog::release`]).

pub mod record;
pub mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use log::{info, warn};
use raft::prelude::{Entry, HardState};

use crate::error::{Error, Result};
use record::{Found, Record};

/// The name of the log's directory inside a node's data dir.
pub const DIR: &str = "wal";
/// The size a new segment is made with (a batch larger than this gets a
/// segment of its own size). Small, so that a compacted log takes little
/// room on a small disk; each byte of a segment is written once as a zero,
/// whatever its size.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
/// The unit of every write.
const PAGE_BYTES: usize = 4096;
/// Room kept at the end of a segment for the last `Synced` record.
const SYNCED_RECORD_BYTES: u64 = (record::HEADER_BYTES + 8) as u64;

/// What one Ready, or one snapshot, adds to the log.
#[derive(Debug, Default, Clone)]
pub struct LogWrite {
    /// A snapshot was installed in the state machine at (index, term): the
    /// log restarts after it. Written before the entries.
    pub snapshot: Option<(u64, u64)>,
    /// Entries to append; an entry at or below the last index replaces the
    /// tail from there (a conflict).
    pub entries: Vec<Entry>,
    /// A new hard state.
    pub hard_state: Option<HardState>,
    /// Make it durable before returning.
    pub sync: bool,
}

impl LogWrite {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// What the log held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The newest hard state.
    pub hard_state: HardState,
    /// The log starts after this (index, term): a snapshot, or where the
    /// oldest segment kept started.
    pub start: (u64, u64),
    /// The entries after `start`, in order, without gaps.
    pub entries: Vec<Entry>,
}

/// A segment that is no longer written.
#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The log's last (index, term) when the segment was started.
    base: (u64, u64),
    /// The highest index written into it (its base, if none).
    max_index: u64,
    /// It holds an append that replaced entries at or below its base (a
    /// conflict reaching into an older segment): replaying from it alone
    /// would not give the log, so the segment before it is kept too.
    back_truncated: bool,
}

/// The segment being written.
#[derive(Debug)]
struct Active {
    segment: Segment,
    file: File,
    capacity: u64,
    /// The page-aligned offset where `page` starts.
    page_start: u64,
    /// The bytes from `page_start` to the end of what was written.
    page: Vec<u8>,
    /// Every byte before this offset is durable.
    synced: u64,
    /// The offset the last `Synced` record confirms.
    marked: u64,
}

impl Active {
    fn pos(&self) -> u64 {
        self.page_start + self.page.len() as u64
    }
}

/// See the module documentation. Written by the replica's log writer
/// thread, or by the replica itself under the writer's lock
/// (`writer::LogWriter::write_inline`).
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    segment_bytes: u64,
    closed: VecDeque<Segment>,
    active: Active,
    last: (u64, u64),
    hard_state: HardState,
    #[cfg(test)]
    faults: Option<faults::Recorder>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn io_err(dir: &Path, what: String, e: std::io::Error) -> Error {
    Error::Storage {
        dir: dir.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

fn damaged(path: &Path, offset: u64, why: &str) -> Error {
    Error::StorageCorrupt {
        file: path.to_path_buf(),
        reason: format!("damaged at offset {offset}: {why}"),
    }
}

/// Drops a file's pages from the page cache (see the module documentation:
/// large folios). Advice only: a failure changes nothing but the cost.
fn drop_cached_pages(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot sync the log directory".to_string(), e))
}

impl RaftLog {
    /// Makes a new, empty log in `dir` (which must not hold one) that starts
    /// after `start`, with `hard_state`. Everything is durable on return.
    pub fn create(dir: &Path, start: (u64, u64), hard_state: &HardState) -> Result<RaftLog> {
        RaftLog::create_sized(dir, start, hard_state, SEGMENT_BYTES)
    }

    fn create_sized(
        dir: &Path,
        start: (u64, u64),
        hard_state: &HardState,
        segment_bytes: u64,
    ) -> Result<RaftLog> {
        fs::create_dir_all(dir)
            .map_err(|e| io_err(dir, "cannot create the log directory".to_string(), e))?;
        let active = make_segment(dir, 1, start, hard_state, segment_bytes)?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(RaftLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            closed: VecDeque::new(),
            active,
            last: start,
            hard_state: hard_state.clone(),
            #[cfg(test)]
            faults: None,
        })
    }

    /// True if `dir` holds a log.
    pub fn exists(dir: &Path) -> bool {
        list_segments(dir).is_ok_and(|s| !s.is_empty())
    }

    /// Opens the log in `dir` and replays it. A write torn by a crash at the
    /// end is cut off (it was never durable); damage to anything that was
    /// durable is refused with [`Error::StorageCorrupt`] naming the file and
    /// offset.
    pub fn open(dir: &Path) -> Result<(RaftLog, Recovered)> {
        let mut seqs = list_segments(dir)?;
        if seqs.is_empty() {
            return Err(Error::StorageCorrupt {
                file: dir.to_path_buf(),
                reason: "the Raft log has no segment".to_string(),
            });
        }
        // Deleting old segments removes a prefix; if a crash let an older
        // one survive a newer one's deletion, only the unbroken run that
        // ends at the newest counts.
        let mut from = seqs.len() - 1;
        while from > 0 && seqs[from - 1] + 1 == seqs[from] {
            from -= 1;
        }
        for stale in seqs.drain(..from) {
            let path = segment_path(dir, stale);
            warn!(
                "removing {}: an older segment left behind by an interrupted cleanup",
                path.display()
            );
            fs::remove_file(&path)
                .map_err(|e| io_err(dir, format!("cannot remove {}", path.display()), e))?;
        }

        let mut replay = Replay::default();
        let mut closed = VecDeque::new();
        let mut active = None;
        let count = seqs.len();
        for (i, seq) in seqs.into_iter().enumerate() {
            let path = segment_path(dir, seq);
            let last_segment = i + 1 == count;
            let (segment, end, file, bytes) = replay.segment(&path, seq, i == 0, last_segment)?;
            if last_segment {
                active = Some((segment, end, file, bytes));
            } else {
                closed.push_back(segment);
            }
        }
        let (segment, end, file, bytes) = active.expect("at least one segment");
        let capacity = bytes.len() as u64;
        let page_start = end / PAGE_BYTES as u64 * PAGE_BYTES as u64;
        let page = bytes[page_start as usize..end as usize].to_vec();
        let log = RaftLog {
            dir: dir.to_path_buf(),
            segment_bytes: SEGMENT_BYTES,
            closed,
            active: Active {
                segment,
                file,
                capacity,
                page_start,
                page,
                synced: end,
                marked: end,
            },
            last: replay.last(),
            hard_state: replay.hard_state.clone(),
            #[cfg(test)]
            faults: None,
        };
        let recovered = Recovered {
            hard_state: replay.hard_state,
            start: replay.start,
            entries: replay.entries.into(),
        };
        Ok((log, recovered))
    }

    /// The log's last index and term.
    pub fn last(&self) -> (u64, u64) {
        self.last
    }

    /// The newest hard state written.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The segment files, oldest first, and their total size in bytes.
    pub fn footprint(&self) -> (usize, u64) {
        let closed: u64 = self
            .closed
            .iter()
            .map(|s| fs::metadata(&s.path).map_or(0, |m| m.len()))
            .sum();
        (self.closed.len() + 1, closed + self.active.capacity)
    }

    /// Appends one write. It is durable once [`RaftLog::sync`] returns (or
    /// on return, if `write.sync`). Refused, with nothing written: a hard
    /// state that lowers the term or the commit, or changes the vote within
    /// a term; entries that leave a gap.
    pub fn write(&mut self, write: &LogWrite) -> Result<()> {
        self.write_within(write, None).map(|_| ())
    }

    /// [`RaftLog::write`], but only if its records take at most `max_bytes`
    /// and fit in the active segment: `Ok(false)`, with nothing written,
    /// if not. A write that fits needs no new segment (no zero-fill, no
    /// directory sync).
    pub fn write_small(&mut self, write: &LogWrite, max_bytes: u64) -> Result<bool> {
        self.write_within(write, Some(max_bytes))
    }

    fn write_within(&mut self, write: &LogWrite, max_bytes: Option<u64>) -> Result<bool> {
        if write.is_empty() {
            return Ok(true);
        }
        if let Some(hs) = &write.hard_state {
            self.check_promises(hs)?;
        }
        let mut last = write.snapshot.unwrap_or(self.last);
        if let Some(first) = write.entries.first() {
            if first.index == 0 || first.index > last.0 + 1 {
                return Err(self.refuse(format!(
                    "refusing to append entry {}: the log ends at {}, that leaves a gap",
                    first.index, last.0
                )));
            }
            let tail = write.entries.last().expect("not empty");
            last = (tail.index, tail.term);
        }
        let mut buf = Vec::new();
        if let Some((index, term)) = write.snapshot {
            Record::Snapshot { index, term }.encode_into(&mut buf);
        }
        if !write.entries.is_empty() {
            Record::Entries(write.entries.clone()).encode_into(&mut buf);
        }
        if let Some(hs) = &write.hard_state {
            Record::HardState(hs.clone()).encode_into(&mut buf);
        }
        let fits =
            self.active.pos() + buf.len() as u64 + SYNCED_RECORD_BYTES <= self.active.capacity;
        if let Some(max) = max_bytes {
            if !fits || buf.len() as u64 > max {
                return Ok(false);
            }
        }
        if !fits {
            self.rotate(buf.len() as u64)?;
        }
        let segment = &mut self.active.segment;
        if let Some(first) = write.entries.first() {
            if first.index <= segment.base.0 && write.snapshot.is_none() {
                segment.back_truncated = true;
            }
        }
        segment.max_index = segment.max_index.max(last.0);
        self.append(&buf)?;
        self.last = last;
        if let Some(hs) = &write.hard_state {
            self.hard_state = hs.clone();
        }
        if write.sync {
            self.sync()?;
        }
        Ok(true)
    }

    /// Makes everything written durable (one `fdatasync`), then records
    /// that it is.
    pub fn sync(&mut self) -> Result<()> {
        self.sync_data()?;
        self.mark_synced()
    }

    /// The `fdatasync` of [`RaftLog::sync`] alone: once it returns,
    /// everything written is durable and may be acknowledged. The writer
    /// thread reports that first, and calls [`RaftLog::mark_synced`] after,
    /// so that the mark's write is not on a put's critical path. The order
    /// changes nothing on recovery: every intact record is replayed, and the
    /// mark only tells damage inside durable data from a torn tail (the mark
    /// of this sync was never durable before the next one either).
    pub fn sync_data(&mut self) -> Result<()> {
        let pos = self.active.pos();
        if self.active.synced >= pos {
            return Ok(());
        }
        crate::diskguard::inject_fsync_delay();
        self.active.file.sync_data().map_err(|e| {
            io_err(
                &self.dir,
                format!("cannot sync {}", self.active.segment.path.display()),
                e,
            )
        })?;
        #[cfg(test)]
        if let Some(f) = &self.faults {
            f.synced();
        }
        self.active.synced = pos;
        Ok(())
    }

    /// Appends the `Synced` record for the last [`RaftLog::sync_data`], if
    /// it is not there yet. Not synced itself: it goes to the disk with the
    /// next sync, or with the kernel's writeback; a crash of the process
    /// keeps it.
    pub fn mark_synced(&mut self) -> Result<()> {
        let synced = self.active.synced;
        if self.active.marked >= synced {
            return Ok(());
        }
        self.active.marked = synced;
        self.append(&Record::Synced { offset: synced }.encode())
    }

    /// Deletes the segments no longer needed once every entry up to `upto`
    /// is applied and checkpointed. Returns how many were deleted.
    pub fn release(&mut self, upto: u64) -> Result<usize> {
        let mut count = 0;
        while let Some(oldest) = self.closed.front() {
            let next_back_truncated = self
                .closed
                .get(1)
                .map_or(self.active.segment.back_truncated, |s| s.back_truncated);
            if oldest.max_index > upto || next_back_truncated {
                break;
            }
            let oldest = self.closed.pop_front().expect("checked");
            fs::remove_file(&oldest.path).map_err(|e| {
                io_err(
                    &self.dir,
                    format!("cannot remove {}", oldest.path.display()),
                    e,
                )
            })?;
            count += 1;
        }
        if count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    /// The chaos runner's negative control, never for real use: durably
    /// rewrites the hard state one term back with no vote, past the checks
    /// that refuse it, as the bug that let an apply batch write an older
    /// view's term and vote did. Returns the rewound state (`None` at term
    /// 0, where there is nothing to forget).
    pub fn rewind_promises_unsafely(&mut self) -> Result<Option<HardState>> {
        if self.hard_state.term == 0 {
            return Ok(None);
        }
        let mut hs = self.hard_state.clone();
        hs.term -= 1;
        hs.vote = 0;
        self.hard_state = hs.clone();
        self.write(&LogWrite {
            hard_state: Some(hs.clone()),
            sync: true,
            ..Default::default()
        })?;
        self.sync()?;
        Ok(Some(hs))
    }

    fn check_promises(&self, new: &HardState) -> Result<()> {
        let old = &self.hard_state;
        let broken = if new.term < old.term {
            format!(
                "refusing to lower the stored term from {} to {} (vote {} to {})",
                old.term, new.term, old.vote, new.vote
            )
        } else if new.term == old.term && old.vote != 0 && new.vote != old.vote {
            format!(
                "refusing to change the stored vote within term {} from node {} to node {}",
                old.term, old.vote, new.vote
            )
        } else if new.commit < old.commit {
            format!(
                "refusing to lower the stored commit index from {} to {}",
                old.commit, new.commit
            )
        } else {
            return Ok(());
        };
        Err(self.refuse(broken))
    }

    fn refuse(&self, reason: String) -> Error {
        Error::Storage {
            dir: self.dir.clone(),
            reason,
        }
    }

    /// Writes `bytes` after what was written, as whole pages.
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let a = &mut self.active;
        let len = a.page.len() + bytes.len();
        let padded = len.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        a.page.extend_from_slice(bytes);
        a.page.resize(padded, 0);
        #[cfg(test)]
        if let Some(f) = &self.faults {
            f.before_write(&a.file, &a.segment.path, a.page_start, a.page.len());
        }
        let written = a.file.write_all_at(&a.page, a.page_start);
        a.page.truncate(len);
        written.map_err(|e| {
            io_err(
                &self.dir,
                format!("cannot write {}", a.segment.path.display()),
                e,
            )
        })?;
        let full = len / PAGE_BYTES * PAGE_BYTES;
        if full > 0 {
            a.page.drain(..full);
            a.page_start += full as u64;
        }
        Ok(())
    }

    /// Closes the active segment and starts the next, big enough for
    /// `payload` bytes.
    fn rotate(&mut self, payload: u64) -> Result<()> {
        self.sync()?;
        let seq = self.active.segment.seq + 1;
        // The opening records take well under 512 bytes.
        let need = payload + 512 + SYNCED_RECORD_BYTES;
        let capacity = self
            .segment_bytes
            .max(need.div_ceil(PAGE_BYTES as u64) * PAGE_BYTES as u64);
        let next = make_segment(&self.dir, seq, self.last, &self.hard_state, capacity)?;
        sync_dir(&self.dir)?;
        let done = std::mem::replace(&mut self.active, next);
        self.closed.push_back(done.segment);
        Ok(())
    }
}

/// Makes segment `seq`: zero-filled to `capacity`, with its `Header`,
/// `Base` and `HardState` records, synced, then renamed into place.
fn make_segment(
    dir: &Path,
    seq: u64,
    base: (u64, u64),
    hard_state: &HardState,
    capacity: u64,
) -> Result<Active> {
    let path = segment_path(dir, seq);
    let tmp = path.with_extension("tmp");
    // A failed segment leaves no half-made file behind to hold the space
    // (on a full disk, the write is tried again once space returns).
    let err = |what: &str, e| {
        let _ = fs::remove_file(&tmp);
        io_err(dir, format!("cannot {what} {}", tmp.display()), e)
    };
    let mut head = Vec::new();
    Record::Header { seq }.encode_into(&mut head);
    Record::Base {
        index: base.0,
        term: base.1,
    }
    .encode_into(&mut head);
    Record::HardState(hard_state.clone()).encode_into(&mut head);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| err("create", e))?;
    let mut chunk = vec![0u8; 64 * 1024];
    chunk[..head.len()].copy_from_slice(&head);
    let mut at = 0;
    while at < capacity {
        let n = (capacity - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at)
            .map_err(|e| err("zero-fill", e))?;
        if at == 0 {
            chunk[..head.len()].fill(0);
        }
        at += n as u64;
    }
    file.sync_all().map_err(|e| err("sync", e))?;
    drop_cached_pages(&file);
    fs::rename(&tmp, &path).map_err(|e| err("rename", e))?;
    let end = head.len() as u64;
    Ok(Active {
        segment: Segment {
            seq,
            path,
            base,
            max_index: base.0,
            back_truncated: false,
        },
        file,
        capacity,
        page_start: 0,
        page: head,
        synced: end,
        marked: end,
    })
}

/// The segment numbers in `dir`, ascending. Leftover temporary files of a
/// segment being made are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, "cannot read the log directory".to_string(), e)),
    };
    let mut seqs = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| io_err(dir, "cannot read the log directory".into(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".tmp") {
            if stem.len() == 16 && u64::from_str_radix(stem, 16).is_ok() {
                // A segment being made when the node stopped: nothing in it
                // was ever written to.
                fs::remove_file(entry.path())
                    .map_err(|e| io_err(dir, format!("cannot remove {name}"), e))?;
            }
            continue;
        }
        if let Some(stem) = name.strip_suffix(".wal") {
            if let (16, Ok(seq)) = (stem.len(), u64::from_str_radix(stem, 16)) {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The state of a replay, segment after segment.
#[derive(Default)]
struct Replay {
    start: (u64, u64),
    entries: VecDeque<Entry>,
    hard_state: HardState,
}

impl Replay {
    fn last(&self) -> (u64, u64) {
        self.entries
            .back()
            .map_or(self.start, |e| (e.index, e.term))
    }

    /// Replays one segment. Returns its description, where its valid data
    /// ends, the open file and its bytes.
    fn segment(
        &mut self,
        path: &Path,
        seq: u64,
        first: bool,
        last: bool,
    ) -> Result<(Segment, u64, File, Vec<u8>)> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(dir, format!("cannot open {}", path.display()), e))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes)
            .map_err(|e| io_err(dir, format!("cannot read {}", path.display()), e))?;
        drop_cached_pages(&file);
        let mut segment = Segment {
            seq,
            path: path.to_path_buf(),
            base: (0, 0),
            max_index: 0,
            back_truncated: false,
        };
        let mut at = 0usize;
        let mut n = 0usize;
        let end = loop {
            let found = record::read_at(&bytes, at);
            let record =
                match found {
                    Found::Record(r, next) => {
                        let r_at = at;
                        at = next;
                        (r, r_at)
                    }
                    Found::End | Found::Bad(_) => {
                        let why = match found {
                            Found::Bad(why) => why,
                            _ => String::new(),
                        };
                        if n < 3 {
                            // Header, base and hard state were synced before
                            // the segment got its name.
                            return Err(damaged(
                                path,
                                at as u64,
                                &format!("the segment's opening records are missing ({why})"),
                            ));
                        }
                        let trailing = bytes[at..].iter().any(|b| *b != 0);
                        if !trailing {
                            break at;
                        }
                        if let Some(confirmed) = synced_after(&bytes, at) {
                            return Err(damaged(
                                path,
                                at as u64,
                                &format!(
                                "{}; data up to offset {confirmed} after it was made durable, so \
                                 this is not a write cut short by a crash",
                                if why.is_empty() { "a record is missing" } else { &why }
                            ),
                            ));
                        }
                        if !last {
                            return Err(damaged(
                                path,
                                at as u64,
                                &format!("unreadable data in a segment that was complete ({why})"),
                            ));
                        }
                        warn!(
                        "{}: discarding an incomplete write at offset {at} ({} bytes): it was cut \
                         short by a crash before it was durable, and was never acknowledged",
                        path.display(),
                        bytes[at..].iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
                    );
                        bytes[at..].fill(0);
                        file.write_all_at(&bytes[at..], at as u64)
                            .and_then(|()| file.sync_data())
                            .map_err(|e| {
                                io_err(dir, format!("cannot repair {}", path.display()), e)
                            })?;
                        drop_cached_pages(&file);
                        break at;
                    }
                };
            let (record, r_at) = record;
            let bad = |why: String| damaged(path, r_at as u64, &why);
            match (n, record) {
                (0, Record::Header { seq: s }) if s == seq => {}
                (0, other) => {
                    return Err(bad(format!(
                        "expected the header of segment {seq}, found {}",
                        describe(&other)
                    )))
                }
                (1, Record::Base { index, term }) => {
                    segment.base = (index, term);
                    segment.max_index = index;
                    if first {
                        self.start = (index, term);
                        self.entries.clear();
                    } else if self.last() != (index, term) {
                        return Err(bad(format!(
                            "the segment continues the log from entry {index} (term {term}), but \
                             the previous segment ends at {:?}",
                            self.last()
                        )));
                    }
                }
                (1, other) => {
                    return Err(bad(format!(
                        "expected the segment's base, found {}",
                        describe(&other)
                    )))
                }
                (_, Record::Header { .. } | Record::Base { .. }) => {
                    return Err(bad("a segment header inside a segment".to_string()))
                }
                (_, Record::HardState(hs)) => self.hard_state = hs,
                (_, Record::Synced { .. }) => {}
                (_, Record::Snapshot { index, term }) => {
                    self.start = (index, term);
                    self.entries.clear();
                    segment.max_index = segment.max_index.max(index);
                }
                (_, Record::Entries(entries)) => {
                    let f = entries[0].index;
                    let (last_index, _) = self.last();
                    if f <= self.start.0 || f > last_index + 1 {
                        return Err(bad(format!(
                            "entries from {f} do not fit a log of ({}, {last_index}]",
                            self.start.0
                        )));
                    }
                    if f <= segment.base.0 {
                        segment.back_truncated = true;
                    }
                    let keep = (f - self.start.0 - 1) as usize;
                    self.entries.truncate(keep);
                    segment.max_index = segment
                        .max_index
                        .max(entries.last().expect("not empty").index);
                    self.entries.extend(entries);
                }
            }
            n += 1;
        };
        Ok((segment, end as u64, file, bytes))
    }
}

/// The furthest offset a valid `Synced` record after `at` confirms durable,
/// if it lies beyond `at`.
fn synced_after(bytes: &[u8], at: usize) -> Option<u64> {
    let mut best = None;
    for i in at + 1..bytes.len().saturating_sub(record::HEADER_BYTES) {
        if bytes[i..i + 4] == [0; 4] {
            continue;
        }
        if let Found::Record(Record::Synced { offset }, _) = record::read_at(bytes, i) {
            if offset > at as u64 {
                best = Some(best.map_or(offset, |b: u64| b.max(offset)));
            }
        }
    }
    best
}

fn describe(r: &Record) -> &'static str {
    match r {
        Record::Header { .. } => "a header",
        Record::Base { .. } => "a base",
        Record::Entries(_) => "entries",
        Record::HardState(_) => "a hard state",
        Record::Snapshot { .. } => "a snapshot mark",
        Record::Synced { .. } => "a sync mark",
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        if self.active.synced < self.active.pos() {
            if let Err(e) = self.sync() {
                warn!("cannot sync the Raft log while closing it: {e}");
            }
        }
    }
}

/// Logs where the Raft log lives, for the node's start-up lines.
pub fn describe_dir(dir: &Path, log: &RaftLog) {
    let (segments, bytes) = log.footprint();
    info!(
        "raft log in {} ({segments} segment(s), {} KiB)",
        dir.display(),
        bytes / 1024
    );
}

/// A file layer for tests that can lose what was not synced, tear the last
/// write, or flip bits, on real files.
#[cfg(test)]
pub mod faults {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    /// One write's undo: what the range held before it.
    struct Undo {
        path: PathBuf,
        offset: u64,
        before: Vec<u8>,
    }

    /// Records every write since the last sync.
    #[derive(Clone, Default)]
    pub struct Recorder(Arc<Mutex<Vec<Undo>>>);

    /// What a simulated crash does to the writes that were not synced.
    #[derive(Debug, Clone, Copy)]
    pub enum Crash {
        /// They are all lost.
        LoseUnsynced,
        /// The earlier ones reach the disk; of the last one, only the 512-byte
        /// sectors whose number is even do.
        TearLast,
        /// Everything reaches the disk (a process crash: the page cache
        /// survives).
        KeepAll,
    }

    impl std::fmt::Debug for Recorder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Recorder")
        }
    }

    impl Recorder {
        pub(super) fn before_write(&self, file: &File, path: &Path, offset: u64, len: usize) {
            let mut before = vec![0; len];
            let n = file.read_at(&mut before, offset).unwrap_or(0);
            before.truncate(n);
            self.0.lock().unwrap().push(Undo {
                path: path.to_path_buf(),
                offset,
                before,
            });
        }

        pub(super) fn synced(&self) {
            self.0.lock().unwrap().clear();
        }

        /// Puts the files back as the crash leaves them.
        pub fn crash(&self, how: Crash) {
            let mut undos = self.0.lock().unwrap();
            let restore = |u: &Undo, keep: &dyn Fn(usize) -> bool| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&u.path)
                    .unwrap();
                for (i, sector) in u.before.chunks(512).enumerate() {
                    if !keep(i) {
                        f.write_all_at(sector, u.offset + (i * 512) as u64).unwrap();
                    }
                }
            };
            match how {
                Crash::KeepAll => {}
                Crash::LoseUnsynced => {
                    for u in undos.iter().rev() {
                        restore(u, &|_| false);
                    }
                }
                Crash::TearLast => {
                    if let Some(u) = undos.last() {
                        restore(u, &|i| i % 2 == 0);
                    }
                }
            }
            undos.clear();
        }
    }

    impl super::RaftLog {
        /// Records writes from now on.
        pub fn record_faults(&mut self) -> Recorder {
            let r = Recorder::default();
            self.faults = Some(r.clone());
            r
        }

        /// A new log with small segments, to test rotation without
        /// megabytes.
        pub fn create_small(dir: &std::path::Path, segment_bytes: u64) -> super::RaftLog {
            let hs = super::HardState {
                term: 1,
                commit: 1,
                ..Default::default()
            };
            super::RaftLog::create_sized(dir, (1, 1), &hs, segment_bytes).unwrap()
        }

        /// Closes the log as a crash would: nothing more is synced.
        pub fn abandon(mut self) {
            self.active.synced = self.active.pos();
            drop(self);
        }
    }
}

#[cfg(test)]
mod tests;
