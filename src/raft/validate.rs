//! Checks every Raft message from the wire before it reaches `step()`.
//!
//! raft-rs trusts its peers: a heartbeat whose commit lies beyond the local
//! log hits `fatal!` in `commit_to`, an append whose entries do not follow the
//! index it claims panics in a slice, an empty proposal is `fatal!`, and a
//! snapshot with a malformed voter set is `fatal!` on restore. Any of these
//! would kill the replica task. [`check`] is a pure function of the message
//! and a few facts about the local log ([`LogFacts`]) that refuses every
//! message raft-rs could not take, so that a forged or broken frame can at
//! most disturb a term (which any peer may do), never crash the replica or
//! leave its log in a state raft-rs considers impossible.
//!
//! It does not authenticate: a well-formed forged append is indistinguishable
//! from a real one. That is what `[tls]` is for.
//!
//! What is refused:
//! - types only a node makes for itself: `MsgHup`, `MsgBeat`,
//!   `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`; and any message
//!   claiming to come from node 0 or from this node;
//! - `MsgPropose` and `MsgReadIndex` unless they look like what raft-rs
//!   forwards from a follower to its leader: term 0, and bounded
//!   ([`MAX_PROPOSE_ENTRIES`], [`MAX_PROPOSE_BYTES`], one read context of at
//!   most [`MAX_CONTEXT_BYTES`]);
//! - any other message with term 0 (raft-rs would take it as local and skip
//!   every term check), or a term more than [`MAX_TERM_AHEAD`] beyond ours;
//! - indexes above [`MAX_INDEX`] (raft-rs adds to them unchecked);
//! - at our term or later: heartbeats whose commit lies beyond the local log;
//!   appends whose entries are not contiguous from the index they claim, whose
//!   terms go backwards or past the message's term, or whose previous term is
//!   0 (raft-rs reads past its log as term 0, so that would match any index
//!   and splice entries after a gap; found by `make fuzz`); snapshots whose
//!   voter set raft-rs could not restore, or does not hold their sender;
//! - at our term: answers (append and heartbeat responses) that name an index
//!   beyond the local log, which would corrupt a leader's view of a follower;
//!   and a leadership-transfer request unless this node leads (a follower
//!   would forward it with its term set, which raft-rs is fatal on).
//!
//! A message of an older term passes: raft-rs only answers or ignores it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use log::{debug, warn};
use raft::prelude::{ConfState, EntryType, Message, MessageType};

/// Entries one forwarded proposal may carry. raft-rs forwards each
/// `propose` call as one message of one entry.
pub const MAX_PROPOSE_ENTRIES: usize = 64;
/// Bytes (data and context) one forwarded proposal may carry: a frame's
/// worth. The store caps a value at 2 MiB (`store.max_value_bytes`), and a
/// transaction carries several.
pub const MAX_PROPOSE_BYTES: usize = crate::transport::wire::MAX_FRAME_BYTES;
/// The longest message context or read-index context.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// How far beyond our term a message's term may be. Terms only grow by
/// elections; 2^32 of them is centuries at one a millisecond, and it keeps a
/// forged term far from overflowing `term + 1`.
pub const MAX_TERM_AHEAD: u64 = 1 << 32;
/// The largest index any message may name, so that `index + 1` and
/// `index + entries` never overflow.
pub const MAX_INDEX: u64 = 1 << 62;
/// Dropped messages are logged at warn at most once per this interval.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What [`check`] needs to know about the local replica.
pub trait LogFacts {
    /// This node's id.
    fn id(&self) -> u64;
    /// Whether this node leads now.
    fn is_leader(&self) -> bool;
    /// The current term.
    fn term(&self) -> u64;
    /// The last index of the log, unstable entries included.
    fn last_index(&self) -> u64;
    /// The commit index.
    fn committed(&self) -> u64;
    /// The term of the entry at `index`, if the log still holds it.
    fn log_term(&self, index: u64) -> Option<u64>;
}

impl<T: raft::Storage> LogFacts for raft::Raft<T> {
    fn id(&self) -> u64 {
        self.id
    }

    fn is_leader(&self) -> bool {
        self.state == raft::StateRole::Leader
    }

    fn term(&self) -> u64 {
        self.term
    }

    fn last_index(&self) -> u64 {
        self.raft_log.last_index()
    }

    fn committed(&self) -> u64 {
        self.raft_log.committed
    }

    fn log_term(&self, index: u64) -> Option<u64> {
        if index > self.raft_log.last_index() {
            return None;
        }
        self.raft_log.term(index).ok()
    }
}

/// Why a message was refused; its `Display` is one sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A type raft-rs only makes for itself.
    #[error("{0:?} is made only by a node for itself")]
    LocalOnly(MessageType),
    /// A leadership-transfer request reached a node that does not lead.
    #[error("MsgTransferLeader reached a node that does not lead")]
    NotLeader,
    /// A sender of id 0, or this node's own id.
    #[error("{kind:?} from node {from}, which cannot send it")]
    BadSender { kind: MessageType, from: u64 },
    /// Term 0 on a type that must carry one, or a term on a forwarded type.
    #[error("{kind:?} with term {term}: {why}")]
    BadTerm {
        kind: MessageType,
        term: u64,
        why: &'static str,
    },
    /// A term implausibly far ahead of ours.
    #[error("{kind:?} with term {term}, more than 2^32 beyond our term {ours}")]
    TermTooFar {
        kind: MessageType,
        term: u64,
        ours: u64,
    },
    /// An index (or a term) that would overflow raft-rs's arithmetic.
    #[error("{kind:?} names {what} {value}, beyond any real log")]
    Overflow {
        kind: MessageType,
        what: &'static str,
        value: u64,
    },
    /// A size limit was exceeded.
    #[error("{kind:?} carries {what}: {size}, limit {limit}")]
    TooBig {
        kind: MessageType,
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// A proposal or read request with no entry (raft-rs panics on it).
    #[error("{0:?} carries no entry")]
    Empty(MessageType),
    /// A heartbeat (or answer) naming an index past the local log.
    #[error("{kind:?} names {what} {value} beyond the local log's last index {last}")]
    BeyondLog {
        kind: MessageType,
        what: &'static str,
        value: u64,
        last: u64,
    },
    /// Append entries that do not follow the index the message claims.
    #[error("MsgAppend at index {index}: entry {position} has index {got}, expected {want}")]
    NotContiguous {
        index: u64,
        position: usize,
        got: u64,
        want: u64,
    },
    /// Append entries whose terms go backwards or past the message's term.
    #[error("MsgAppend of term {term}: entry {index} has term {entry_term}, {why}")]
    BadEntryTerm {
        term: u64,
        index: u64,
        entry_term: u64,
        why: &'static str,
    },
    /// A snapshot raft-rs could not restore.
    #[error("MsgSnapshot: {0}")]
    BadSnapshot(String),
}

/// Checks one message from the wire against the local log. `Ok` means
/// raft-rs can step it safely.
pub fn check(m: &Message, log: &impl LogFacts) -> Result<(), Rejection> {
    let kind = m.get_msg_type();
    use MessageType::*;
    match kind {
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
            return Err(Rejection::LocalOnly(kind))
        }
        _ => {}
    }
    if m.from == 0 || m.from == log.id() {
        return Err(Rejection::BadSender { kind, from: m.from });
    }
    if matches!(kind, MsgPropose | MsgReadIndex) {
        return check_forwarded(m, kind);
    }
    if m.term == 0 {
        return Err(Rejection::BadTerm {
            kind,
            term: 0,
            why: "only a local message may omit its term",
        });
    }
    if m.term > log.term().saturating_add(MAX_TERM_AHEAD) {
        return Err(Rejection::TermTooFar {
            kind,
            term: m.term,
            ours: log.term(),
        });
    }
    if m.get_context().len() > MAX_CONTEXT_BYTES {
        return Err(Rejection::TooBig {
            kind,
            what: "a context",
            size: m.get_context().len(),
            limit: MAX_CONTEXT_BYTES,
        });
    }
    for (what, value) in [
        ("index", m.index),
        ("log term", m.log_term),
        ("commit", m.commit),
        ("commit term", m.commit_term),
        ("reject hint", m.reject_hint),
        ("snapshot request", m.request_snapshot),
    ] {
        if value > MAX_INDEX {
            return Err(Rejection::Overflow { kind, what, value });
        }
    }
    if m.term < log.term() {
        // raft-rs answers a stale leader or candidate and steps nothing.
        return Ok(());
    }
    let last = log.last_index();
    let beyond = |what, value: u64| {
        if value > last {
            Err(Rejection::BeyondLog {
                kind,
                what,
                value,
                last,
            })
        } else {
            Ok(())
        }
    };
    match kind {
        // A follower forwards it to its leader with the term still set,
        // which raft-rs's send() is fatal on (found by `make fuzz`).
        MsgTransferLeader if !log.is_leader() => Err(Rejection::NotLeader),
        MsgHeartbeat => beyond("commit", m.commit),
        MsgAppend => check_append(m),
        MsgSnapshot => check_snapshot(m, log),
        MsgReadIndexResp => {
            if m.get_entries().len() != 1 {
                return Err(Rejection::Empty(kind));
            }
            let ctx = m.get_entries()[0].get_data().len();
            if ctx > MAX_CONTEXT_BYTES {
                return Err(Rejection::TooBig {
                    kind,
                    what: "a read context",
                    size: ctx,
                    limit: MAX_CONTEXT_BYTES,
                });
            }
            Ok(())
        }
        // An answer of a newer term only makes us step down; raft-rs reads
        // its indexes only at our term, as leader.
        MsgAppendResponse if m.term == log.term() => {
            beyond("index", m.index)?;
            beyond("reject hint", m.reject_hint)?;
            beyond("snapshot request", m.request_snapshot)
        }
        MsgHeartbeatResponse if m.term == log.term() => beyond("commit", m.commit),
        _ => Ok(()),
    }
}

/// `MsgPropose` and `MsgReadIndex`, as raft-rs forwards them from a follower.
fn check_forwarded(m: &Message, kind: MessageType) -> Result<(), Rejection> {
    if m.term != 0 {
        return Err(Rejection::BadTerm {
            kind,
            term: m.term,
            why: "raft-rs forwards it without a term",
        });
    }
    let entries = m.get_entries();
    if entries.is_empty() {
        return Err(Rejection::Empty(kind));
    }
    let (limit_entries, limit_bytes) = match kind {
        MessageType::MsgReadIndex => (1, MAX_CONTEXT_BYTES),
        _ => (MAX_PROPOSE_ENTRIES, MAX_PROPOSE_BYTES),
    };
    if entries.len() > limit_entries {
        return Err(Rejection::TooBig {
            kind,
            what: "entries",
            size: entries.len(),
            limit: limit_entries,
        });
    }
    let bytes: usize = entries
        .iter()
        .map(|e| e.get_data().len() + e.get_context().len())
        .sum::<usize>()
        + m.get_context().len();
    if bytes > limit_bytes {
        return Err(Rejection::TooBig {
            kind,
            what: "bytes",
            size: bytes,
            limit: limit_bytes,
        });
    }
    Ok(())
}

fn check_append(m: &Message) -> Result<(), Rejection> {
    // raft-rs reads the term of an index past its log as 0, so a previous
    // term of 0 would "match" any index and splice entries after a gap.
    // Every real entry has a term of at least 1 (the bootstrap snapshot's).
    if m.log_term == 0 {
        return Err(Rejection::BadEntryTerm {
            term: m.term,
            index: m.index,
            entry_term: 0,
            why: "a previous entry always has a term",
        });
    }
    if m.log_term > m.term {
        return Err(Rejection::BadEntryTerm {
            term: m.term,
            index: m.index,
            entry_term: m.log_term,
            why: "a previous entry cannot be newer than its leader",
        });
    }
    let mut prev_term = m.log_term;
    for (position, e) in m.get_entries().iter().enumerate() {
        let want = m.index + 1 + position as u64;
        if e.index != want {
            return Err(Rejection::NotContiguous {
                index: m.index,
                position,
                got: e.index,
                want,
            });
        }
        if e.term > m.term || e.term < prev_term || e.term == 0 {
            return Err(Rejection::BadEntryTerm {
                term: m.term,
                index: e.index,
                entry_term: e.term,
                why: if e.term > m.term {
                    "newer than its leader"
                } else {
                    "older than the entry before it"
                },
            });
        }
        prev_term = e.term;
        if e.get_entry_type() == EntryType::EntryConfChange
            || e.get_entry_type() == EntryType::EntryConfChangeV2
        {
            // Applied through raft-rs's own checks, which refuse (not panic
            // on) a malformed change; nothing more to do here.
        }
    }
    Ok(())
}

fn check_snapshot(m: &Message, log: &impl LogFacts) -> Result<(), Rejection> {
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 {
        return Err(Rejection::BadSnapshot(format!(
            "index {} term {}: a snapshot is never empty",
            meta.index, meta.term
        )));
    }
    if meta.index > MAX_INDEX || meta.term > m.term {
        return Err(Rejection::BadSnapshot(format!(
            "index {} term {} does not fit a message of term {}",
            meta.index, meta.term, m.term
        )));
    }
    // A snapshot at our commit index must agree with the committed entry
    // there; one of another term would make raft-rs restore a snapshot older
    // than the storage's own, which the storage refuses (a fatal storage
    // error; found by `make fuzz`). Below the commit index raft-rs ignores
    // a snapshot; above it, it replaces uncommitted entries only.
    let committed = log.committed();
    if meta.index == committed && log.log_term(committed) != Some(meta.term) {
        return Err(Rejection::BadSnapshot(format!(
            "index {} term {} contradicts the committed entry there (term {:?})",
            meta.index,
            meta.term,
            log.log_term(committed)
        )));
    }
    let cs = meta.get_conf_state();
    check_conf_state(cs).map_err(Rejection::BadSnapshot)?;
    // Only a leader sends a snapshot, and it is a voter of the configuration
    // it sends. Without this a forged snapshot could make this node the only
    // voter: it would lead alone (split brain), and an election in the same
    // inbox batch trips raft-rs's assertion that a new leader's log is
    // persisted (found by `make fuzz`).
    if !cs.get_voters().contains(&m.from) && !cs.get_voters_outgoing().contains(&m.from) {
        return Err(Rejection::BadSnapshot(format!(
            "the sender, node {}, is not a voter of its voter set {:?}",
            m.from,
            cs.get_voters()
        )));
    }
    Ok(())
}

/// The shapes of voter set that raft-rs restores without a fatal error:
/// distinct non-zero ids, some voters, learners that are not voters, and
/// joint-consensus fields only in a joint configuration.
pub fn check_conf_state(cs: &ConfState) -> Result<(), String> {
    let distinct = |name: &str, ids: &[u64]| -> Result<HashSet<u64>, String> {
        let set: HashSet<u64> = ids.iter().copied().collect();
        if set.len() != ids.len() || set.contains(&0) {
            return Err(format!("{name} {ids:?} must be distinct non-zero ids"));
        }
        Ok(set)
    };
    let voters = distinct("voters", cs.get_voters())?;
    let learners = distinct("learners", cs.get_learners())?;
    let outgoing = distinct("outgoing voters", cs.get_voters_outgoing())?;
    let next = distinct("next learners", cs.get_learners_next())?;
    if voters.is_empty() {
        return Err("the voter set is empty".into());
    }
    if !learners.is_disjoint(&voters) || !learners.is_disjoint(&outgoing) {
        return Err("a learner is also a voter".into());
    }
    if outgoing.is_empty() {
        if !next.is_empty() || cs.auto_leave {
            return Err("joint-consensus fields outside a joint configuration".into());
        }
    } else if !next.is_subset(&outgoing)
        || !next.is_disjoint(&voters)
        || !next.is_disjoint(&learners)
    {
        return Err("next learners must be outgoing voters only".into());
    }
    Ok(())
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When (ms since START, plus one) a drop was last logged at warn; 0 = never.
static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
/// Drops not logged at warn since the last line that was.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// The replica's one call: checks `m` against `raft` and logs a refusal,
/// at warn at most once per [`DROP_LOG_INTERVAL`] (with a count of those in
/// between) and at debug otherwise. Returns whether to step it.
pub fn admit<T: raft::Storage>(
    group: &impl std::fmt::Display,
    raft: &raft::Raft<T>,
    m: &Message,
) -> bool {
    let Err(why) = check(m, raft) else {
        return true;
    };
    let now_ms = START.elapsed().as_millis() as u64 + 1;
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    let due = last == 0 || now_ms.saturating_sub(last) >= DROP_LOG_INTERVAL.as_millis() as u64;
    if due
        && LAST_WARN_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let skipped = SUPPRESSED.swap(0, Ordering::Relaxed);
        let more = if skipped > 0 {
            format!(" ({skipped} more dropped since the last report)")
        } else {
            String::new()
        };
        warn!(
            "{group}: dropped a message from node {}: {why}{more}",
            m.from
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        debug!("{group}: dropped a message from node {}: {why}", m.from);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{Entry, HardState, Snapshot};
    use raft::storage::MemStorage;
    use raft::RawNode;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// A plain log of node 1: current term and last index.
    struct Log(u64, u64);

    impl LogFacts for Log {
        fn id(&self) -> u64 {
            1
        }
        fn is_leader(&self) -> bool {
            false
        }
        fn term(&self) -> u64 {
            self.0
        }
        fn last_index(&self) -> u64 {
            self.1
        }
        fn committed(&self) -> u64 {
            self.1 - 1
        }
        fn log_term(&self, index: u64) -> Option<u64> {
            (index <= self.1).then_some(self.0)
        }
    }

    fn msg(kind: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 2;
        m.to = 1;
        m.term = term;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    /// Node 1 of voters {1, 2, 3}, a follower at term 3 with entries 2..=5
    /// and commit 4: a real raft-rs node to step messages into.
    fn follower() -> RawNode<MemStorage> {
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 1;
            snap.mut_metadata().term = 1;
            snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            core.apply_snapshot(snap).unwrap();
            core.append(&[entry(2, 2), entry(3, 2), entry(4, 3), entry(5, 3)])
                .unwrap();
            core.set_hardstate(HardState {
                term: 3,
                vote: 2,
                commit: 4,
                ..Default::default()
            });
        }
        let config = raft::Config {
            id: 1,
            applied: 1,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).unwrap()
    }

    /// Steps `m` into a fresh follower without the check; true if raft-rs
    /// panicked.
    fn panics_unchecked(m: &Message) -> bool {
        panics_unchecked_with(follower(), m)
    }

    fn panics_unchecked_with(mut node: RawNode<MemStorage>, m: &Message) -> bool {
        let m = m.clone();
        catch_unwind(AssertUnwindSafe(move || {
            let _ = node.step(m);
        }))
        .is_err()
    }

    /// A forged heartbeat: current term, commit 1,000,000.
    fn forged_heartbeat() -> Message {
        let mut m = msg(MessageType::MsgHeartbeat, 3);
        m.commit = 1_000_000;
        m
    }

    /// A forged append: entries that do not follow the index.
    /// Entry 5 matches the local log, entry 50 conflicts, and raft-rs slices
    /// the entries from `50 - (4 + 1)`, past their end.
    fn non_contiguous_append() -> Message {
        let mut m = msg(MessageType::MsgAppend, 3);
        m.index = 4;
        m.log_term = 3;
        m.set_entries(vec![entry(5, 3), entry(50, 3)].into());
        m
    }

    /// An append whose entry lies at or below the commit index with another
    /// term: raft-rs is fatal on a conflict with a committed entry.
    fn append_over_committed() -> Message {
        let mut m = msg(MessageType::MsgAppend, 3);
        m.index = 4;
        m.log_term = 3;
        m.set_entries(vec![entry(3, 3)].into());
        m
    }

    #[test]
    fn the_attack_frames_of_issue_8_crash_raft_rs_and_are_refused() {
        let node = follower();
        for (what, m) in [
            ("forged heartbeat", forged_heartbeat()),
            ("non-contiguous append", non_contiguous_append()),
            ("append over a committed entry", append_over_committed()),
        ] {
            // Without the check raft-rs dies; that is the attack.
            assert!(
                panics_unchecked(&m),
                "{what}: raft-rs no longer panics; revisit this check"
            );
            let err = check(&m, &node.raft).unwrap_err();
            assert!(!admit(&"g", &node.raft, &m), "{what}: {err}");
        }
        assert!(matches!(
            check(&forged_heartbeat(), &node.raft),
            Err(Rejection::BeyondLog {
                value: 1_000_000,
                last: 5,
                ..
            })
        ));
        assert!(matches!(
            check(&non_contiguous_append(), &node.raft),
            Err(Rejection::NotContiguous {
                got: 50,
                want: 6,
                ..
            })
        ));
    }

    #[test]
    fn an_append_whose_first_entry_does_not_follow_its_index_is_refused() {
        // Entries starting before the claimed index: raft-rs's conflict
        // search would slice from a negative offset.
        let mut m = msg(MessageType::MsgAppend, 3);
        m.index = 5;
        m.log_term = 3;
        m.set_entries(vec![entry(3, 3)].into());
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::NotContiguous {
                got: 3,
                want: 6,
                ..
            })
        ));
    }

    #[test]
    fn real_traffic_passes_and_steps() {
        let mut node = follower();
        let mut heartbeat = msg(MessageType::MsgHeartbeat, 3);
        heartbeat.commit = 5;
        let mut append = msg(MessageType::MsgAppend, 3);
        append.index = 5;
        append.log_term = 3;
        append.commit = 6;
        append.set_entries(vec![entry(6, 3), entry(7, 3)].into());
        let mut vote = msg(MessageType::MsgRequestPreVote, 4);
        vote.index = 5;
        vote.log_term = 3;
        for m in [heartbeat, append, vote] {
            assert_eq!(check(&m, &node.raft), Ok(()), "{m:?}");
            node.step(m).unwrap();
        }
        assert_eq!(node.raft.raft_log.committed, 6);
        assert_eq!(node.raft.raft_log.last_index(), 7);
    }

    #[test]
    fn local_only_types_are_refused() {
        for kind in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            assert_eq!(
                check(&msg(kind, 3), &Log(3, 5)),
                Err(Rejection::LocalOnly(kind))
            );
        }
    }

    #[test]
    fn forwarded_proposals_and_reads_pass_when_bounded() {
        let mut propose = msg(MessageType::MsgPropose, 0);
        propose.set_entries(
            vec![Entry {
                data: b"put k v".to_vec().into(),
                ..Default::default()
            }]
            .into(),
        );
        assert_eq!(check(&propose, &Log(3, 5)), Ok(()));
        let mut read = msg(MessageType::MsgReadIndex, 0);
        read.set_entries(
            vec![Entry {
                data: b"ctx-1".to_vec().into(),
                ..Default::default()
            }]
            .into(),
        );
        assert_eq!(check(&read, &Log(3, 5)), Ok(()));

        // Empty: raft-rs is fatal on an empty proposal and indexes entries[0]
        // of a read.
        for kind in [MessageType::MsgPropose, MessageType::MsgReadIndex] {
            assert_eq!(
                check(&msg(kind, 0), &Log(3, 5)),
                Err(Rejection::Empty(kind))
            );
        }
        // A term would make raft-rs treat it as a peer's message of that term.
        let mut termed = propose.clone();
        termed.term = 9;
        assert!(matches!(
            check(&termed, &Log(3, 5)),
            Err(Rejection::BadTerm { .. })
        ));
        // Too many entries, too many bytes.
        let mut many = propose.clone();
        many.set_entries(vec![entry(0, 0); MAX_PROPOSE_ENTRIES + 1].into());
        assert!(matches!(
            check(&many, &Log(3, 5)),
            Err(Rejection::TooBig { .. })
        ));
        let mut big = propose.clone();
        big.mut_entries()[0].data = vec![0u8; MAX_PROPOSE_BYTES + 1].into();
        assert!(matches!(
            check(&big, &Log(3, 5)),
            Err(Rejection::TooBig { .. })
        ));
        let mut two_reads = read.clone();
        two_reads.mut_entries().push(Entry::default());
        assert!(matches!(
            check(&two_reads, &Log(3, 5)),
            Err(Rejection::TooBig { .. })
        ));
    }

    #[test]
    fn terms_must_be_set_and_near() {
        let hb = msg(MessageType::MsgHeartbeat, 0);
        assert!(matches!(
            check(&hb, &Log(3, 5)),
            Err(Rejection::BadTerm { .. })
        ));
        let hb = msg(MessageType::MsgHeartbeat, 3 + MAX_TERM_AHEAD + 1);
        assert!(matches!(
            check(&hb, &Log(3, 5)),
            Err(Rejection::TermTooFar { .. })
        ));
        let hb = msg(MessageType::MsgRequestVote, 3 + MAX_TERM_AHEAD);
        assert_eq!(check(&hb, &Log(3, 5)), Ok(()));
    }

    #[test]
    fn stale_messages_pass_for_raft_to_answer() {
        // A heartbeat of an old term is answered (so a stale leader learns
        // the new term), whatever its commit says.
        let mut hb = msg(MessageType::MsgHeartbeat, 2);
        hb.commit = 1_000_000;
        assert_eq!(check(&hb, &Log(3, 5)), Ok(()));
    }

    #[test]
    fn entry_terms_must_not_go_backwards_or_past_the_leader() {
        let mut m = msg(MessageType::MsgAppend, 3);
        m.index = 5;
        m.log_term = 3;
        m.set_entries(vec![entry(6, 4)].into());
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::BadEntryTerm { .. })
        ));
        m.set_entries(vec![entry(6, 3), entry(7, 2)].into());
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::BadEntryTerm { .. })
        ));
        m.log_term = 4;
        m.set_entries(vec![].into());
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::BadEntryTerm { .. })
        ));
    }

    #[test]
    fn answers_beyond_the_leaders_log_are_refused_at_our_term_only() {
        let mut m = msg(MessageType::MsgAppendResponse, 3);
        m.index = 1_000;
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::BeyondLog { .. })
        ));
        // Of a newer term it only makes us step down.
        m.term = 4;
        assert_eq!(check(&m, &Log(3, 5)), Ok(()));
        let mut m = msg(MessageType::MsgHeartbeatResponse, 3);
        m.commit = 6;
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::BeyondLog { .. })
        ));
    }

    /// Found by `make fuzz` (fuzz/regressions/raft_step/crash-992d4e26...):
    /// an append at an index past the log with previous term 0 matched, and
    /// raft-rs sliced its unstable log out of bounds.
    #[test]
    fn an_append_with_previous_term_0_is_refused() {
        let mut m = msg(MessageType::MsgAppend, 11);
        m.index = 12;
        m.log_term = 0;
        m.set_entries(vec![entry(13, 7), entry(14, 7)].into());
        assert!(panics_unchecked(&m));
        assert!(matches!(
            check(&m, &follower().raft),
            Err(Rejection::BadEntryTerm { entry_term: 0, .. })
        ));
    }

    /// Found by `make fuzz` (fuzz/regressions/raft_step/crash-4bc5da72...):
    /// two snapshots at the same index of different terms.
    #[test]
    fn a_snapshot_that_contradicts_the_commit_index_is_refused() {
        let mut node = follower();
        let mut first = snapshot(vec![1, 2], vec![]);
        first.term = 4;
        first.mut_snapshot().mut_metadata().index = 12;
        first.mut_snapshot().mut_metadata().term = 4;
        assert_eq!(check(&first, &node.raft), Ok(()));
        node.step(first).unwrap();
        let mut rd = node.ready();
        node.mut_store()
            .wl()
            .apply_snapshot(rd.snapshot().clone())
            .unwrap();
        let _ = rd.take_messages();
        node.advance(rd);
        let mut second = snapshot(vec![1, 2], vec![]);
        second.term = 5;
        second.mut_snapshot().mut_metadata().index = 12;
        second.mut_snapshot().mut_metadata().term = 5;
        assert!(matches!(
            check(&second, &node.raft),
            Err(Rejection::BadSnapshot(_))
        ));
        // Unchecked, raft-rs restores it and the storage refuses it.
        node.step(second).unwrap();
        let rd = node.ready();
        assert!(node
            .mut_store()
            .wl()
            .apply_snapshot(rd.snapshot().clone())
            .is_err());
    }

    /// Found by `make fuzz` (fuzz/regressions/raft_step/crash-e3235fed...).
    #[test]
    fn a_transfer_request_to_a_follower_is_refused() {
        let m = msg(MessageType::MsgTransferLeader, 3);
        let mut node = follower();
        node.raft.leader_id = 3;
        assert!(panics_unchecked_with(node, &m));
        assert_eq!(check(&m, &follower().raft), Err(Rejection::NotLeader));
    }

    #[test]
    fn messages_from_node_0_or_from_ourselves_are_refused() {
        for from in [0, 1] {
            let mut m = msg(MessageType::MsgHeartbeat, 3);
            m.from = from;
            assert!(matches!(
                check(&m, &Log(3, 5)),
                Err(Rejection::BadSender { .. })
            ));
        }
    }

    #[test]
    fn huge_indexes_are_refused() {
        let mut m = msg(MessageType::MsgRequestVote, 3);
        m.index = u64::MAX;
        assert!(matches!(
            check(&m, &Log(3, 5)),
            Err(Rejection::Overflow { .. })
        ));
    }

    fn snapshot(voters: Vec<u64>, learners: Vec<u64>) -> Message {
        let mut m = msg(MessageType::MsgSnapshot, 3);
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = 10;
        meta.term = 3;
        meta.mut_conf_state().voters = voters;
        meta.mut_conf_state().learners = learners;
        m
    }

    #[test]
    fn snapshots_with_a_voter_set_raft_cannot_restore_are_refused() {
        for (voters, learners) in [
            (vec![1, 1, 2], vec![]),
            (vec![], vec![1]),
            (vec![1, 2], vec![1]),
            (vec![1, 2], vec![2]),
            (vec![0, 1], vec![]),
        ] {
            let m = snapshot(voters.clone(), learners.clone());
            assert!(
                matches!(check(&m, &Log(3, 5)), Err(Rejection::BadSnapshot(_))),
                "{voters:?} {learners:?}"
            );
        }
        let good = snapshot(vec![1, 2, 3], vec![4]);
        assert_eq!(check(&good, &Log(3, 5)), Ok(()));
        // A voter set without its sender (node 2): it could make us the
        // only voter.
        let alone = snapshot(vec![1], vec![]);
        assert!(matches!(
            check(&alone, &Log(3, 5)),
            Err(Rejection::BadSnapshot(_))
        ));
        // A learner that is also a voter crashes raft-rs on restore.
        assert!(panics_unchecked(&snapshot(vec![1, 2], vec![2])));
        let mut node = follower();
        node.step(good).unwrap();
    }
}
