//! Raft's own invariants, checked beside the histories' linearizability:
//!
//! - **Durable promises only move forward** (from each node's log). A node
//!   logs `durable hard state: term T vote V` once its log has synced a new
//!   term or vote, and `replica recovered: term=T vote=V` at every start.
//!   Across the whole log of a node, restarts included, the durable term
//!   never goes back, a start never recovers an older term (or, in the same
//!   term, another vote) than the last one made durable, and no node votes
//!   for two candidates in one term.
//! - **Reported terms never go back** (from the polled status): within one
//!   process (its `pid`), the term a node reports never decreases.
//! - **One leader per term** ([`crate::monitor::two_leaders`]).
//! - **One entry per index** (from the polled status): two nodes that report
//!   the same `applied_index` report the same `applied_hash`, a running hash
//!   of every entry applied up to it.

use std::collections::BTreeMap;

use crate::model::Violation;
use crate::monitor::Sample;

/// What a node's log says about one durable change or start.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    /// A term or vote made durable.
    Durable { term: u64, vote: u64 },
    /// A start, with the state recovered.
    Recovered { term: u64, vote: u64 },
}

/// The value after `key` in `line`, up to the next space.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn parse(line: &str) -> Option<Event> {
    if line.contains("__meta/0: durable hard state: ") {
        Some(Event::Durable {
            term: number_after(line, "durable hard state: term ")?,
            vote: number_after(line, " vote ")?,
        })
    } else if line.contains("__meta/0: replica recovered: ") {
        Some(Event::Recovered {
            term: number_after(line, "recovered: term=")?,
            vote: number_after(line, " vote=")?,
        })
    } else {
        None
    }
}

/// Checks node `node`'s whole log (every start appended to one file).
pub fn check_node_log(node: u32, log: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    // The last durable (term, vote), and the line that said so.
    let mut last: Option<(u64, u64, usize)> = None;
    // term -> (vote, line) of the first vote made durable in it.
    let mut votes: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let violation = |kind: &'static str, detail: String| Violation {
        kind,
        key: None,
        detail: format!("{detail} (node-{node}.log)"),
        ops: Vec::new(),
    };
    for (i, line) in log.lines().enumerate() {
        let n = i + 1;
        let Some(event) = parse(line) else {
            continue;
        };
        let (term, vote, recovered) = match event {
            Event::Durable { term, vote } => (term, vote, false),
            Event::Recovered { term, vote } => (term, vote, true),
        };
        if let Some((t0, v0, n0)) = last {
            if term < t0 {
                let what = if recovered {
                    "recovered"
                } else {
                    "made durable"
                };
                out.push(violation(
                    "term went back",
                    format!(
                        "node {node} {what} term {term} at line {n}, after term {t0} was durable at line {n0}"
                    ),
                ));
            } else if term == t0 && v0 != 0 && vote != v0 {
                out.push(violation(
                    "vote forgotten",
                    format!(
                        "node {node} had voted for node {v0} in term {term} (durable at line {n0}), and at line {n} its vote in that term was {vote}{}",
                        if recovered { " after a restart" } else { "" }
                    ),
                ));
            }
        }
        if vote != 0 {
            match votes.get(&term) {
                Some(&(v0, n0)) if v0 != vote => out.push(violation(
                    "two votes in a term",
                    format!(
                        "node {node} voted for node {v0} in term {term} (line {n0}) and for node {vote} (line {n})"
                    ),
                )),
                Some(_) => {}
                None => {
                    votes.insert(term, (vote, n));
                }
            }
        }
        // A state behind the durable one is reported above; the durable
        // promise stays the one to keep.
        if last.is_none_or(|(t0, v0, _)| term > t0 || (term == t0 && v0 == 0)) {
            last = Some((term, vote, n));
        }
    }
    out
}

/// Terms that went back within one process, by the nodes' own reports.
pub fn reported_terms_go_forward(samples: &[Sample]) -> Vec<Violation> {
    let mut last: BTreeMap<(u32, u64), &Sample> = BTreeMap::new();
    let mut out = Vec::new();
    for s in samples {
        let Some(pid) = s.pid else {
            continue;
        };
        if let Some(prev) = last.get(&(s.node, pid)) {
            if s.term < prev.term {
                out.push(Violation {
                    kind: "term went back",
                    key: None,
                    detail: format!(
                        "node {} (pid {pid}) reported term {} at {:.3}s and term {} at {:.3}s",
                        s.node,
                        prev.term,
                        prev.t_us as f64 / 1e6,
                        s.term,
                        s.t_us as f64 / 1e6
                    ),
                    ops: Vec::new(),
                });
            }
        }
        last.insert((s.node, pid), s);
    }
    out
}

/// One node's applied index and hash at a moment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// Microseconds since the run started.
    pub t_us: u64,
    /// The node.
    pub node: u32,
    /// Its `applied_index`.
    pub index: u64,
    /// Its `applied_hash`.
    pub hash: String,
}

/// Indexes at which two nodes applied different entries.
pub fn one_entry_per_index(applied: &[Applied]) -> Vec<Violation> {
    let mut first: BTreeMap<u64, &Applied> = BTreeMap::new();
    let mut reported: BTreeMap<u64, ()> = BTreeMap::new();
    let mut out = Vec::new();
    for a in applied {
        match first.get(&a.index) {
            None => {
                first.insert(a.index, a);
            }
            Some(f) if f.hash != a.hash && !reported.contains_key(&a.index) => {
                reported.insert(a.index, ());
                out.push(Violation {
                    kind: "diverged log",
                    key: None,
                    detail: format!(
                        "at applied index {}: node {} had hash {} at {:.3}s, node {} had hash {} at {:.3}s",
                        a.index,
                        f.node,
                        f.hash,
                        f.t_us as f64 / 1e6,
                        a.node,
                        a.hash,
                        a.t_us as f64 / 1e6
                    ),
                    ops: Vec::new(),
                });
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "=== quorumd-chaos: node 2 started at t=0.000s ===";

    fn recovered(term: u64, vote: u64) -> String {
        format!("[2026-12-06T18:00:00Z INFO  quorumd::raft::replica] __meta/0: replica recovered: term={term} vote={vote} commit=9 applied=9 log=[0, 9] voters=[1, 2, 3]")
    }

    fn durable(term: u64, vote: u64) -> String {
        format!("[2026-12-06T18:00:01Z INFO  quorumd::raft::replica] __meta/0: durable hard state: term {term} vote {vote}")
    }

    fn log(lines: &[String]) -> String {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    #[test]
    fn a_log_whose_promises_move_forward_passes() {
        let l = log(&[
            START.into(),
            recovered(0, 0),
            durable(2, 1),
            durable(3, 0),
            durable(4, 2),
            "some other line".into(),
            START.into(),
            recovered(4, 2),
            durable(5, 3),
        ]);
        assert!(check_node_log(2, &l).is_empty());
    }

    #[test]
    fn a_start_that_recovers_an_older_term_is_caught() {
        // The bug: a clean restart recovered term 3 after term 4 was durable.
        let l = log(&[
            recovered(0, 0),
            durable(3, 1),
            durable(4, 0),
            recovered(3, 1),
        ]);
        let v = check_node_log(2, &l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "term went back");
        assert!(
            v[0].detail
                .contains("node 2 recovered term 3 at line 4, after term 4 was durable at line 3"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn a_forgotten_vote_and_a_second_vote_are_caught() {
        let l = log(&[
            recovered(0, 0),
            durable(5, 1),
            recovered(5, 0),
            durable(5, 3),
        ]);
        let kinds: Vec<&str> = check_node_log(2, &l).iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            ["vote forgotten", "vote forgotten", "two votes in a term"]
        );
    }

    #[test]
    fn reported_terms_may_restart_only_with_the_process() {
        let s = |t, node, term, pid| Sample {
            t_us: t,
            node,
            term,
            role: "follower".into(),
            leader: None,
            pid: Some(pid),
        };
        // A new process may report a lower term (kill -9 lost a bump that
        // promised nothing); the same process may not.
        assert!(
            reported_terms_go_forward(&[s(1, 1, 5, 10), s(2, 1, 4, 11), s(3, 1, 6, 11)]).is_empty()
        );
        let v = reported_terms_go_forward(&[s(1, 1, 5, 10), s(2, 1, 4, 10)]);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].detail.contains("node 1 (pid 10) reported term 5"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn two_hashes_at_one_index_are_caught_once() {
        let a = |t, node, index, hash: &str| Applied {
            t_us: t,
            node,
            index,
            hash: hash.into(),
        };
        let same = [a(1, 1, 10, "aa"), a(2, 2, 10, "aa"), a(3, 3, 11, "bb")];
        assert!(one_entry_per_index(&same).is_empty());
        let diverged = [a(1, 1, 10, "aa"), a(2, 2, 10, "ab"), a(3, 3, 10, "ac")];
        let v = one_entry_per_index(&diverged);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].detail
                .contains("at applied index 10: node 1 had hash aa"),
            "{}",
            v[0].detail
        );
    }
}
