//! The model of one key: a register with compare-and-set, and the checks of a
//! whole history, key by key.
//!
//! Consul's CAS compares `ModifyIndex`. Every value in a run is unique and
//! the workload never deletes, so "the key's `ModifyIndex` is m" holds exactly
//! when "the key holds the value that the write at index m wrote". The model
//! therefore compares values: a CAS carries the value its client read along
//! with that value's index. A separate check makes sure the premise holds:
//! one value is always seen with one index, and no two values share one.
//!
//! Values that no operation ever observed (read, or expected by a CAS) are
//! all mapped to one token, [`UNSEEN`]: the model cannot tell them apart, and
//! the checker can then treat unknown writes of them as interchangeable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checker::{self, Model, Operation, Verdict};
use crate::history::{Func, Record, Status};

/// Stands for every value that no operation observed.
pub const UNSEEN: u64 = u64::MAX;

/// What an operation on one key asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvIn {
    /// A read.
    Get,
    /// An unconditional write.
    Put(u64),
    /// Write `new` only if the key holds `expect` (`None`: only if absent).
    Cas {
        /// The value the client read (with its index).
        expect: Option<u64>,
        /// The value to write.
        new: u64,
    },
}

/// What it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOut {
    /// A read's value (`None`: 404, absent).
    Get(Option<u64>),
    /// A put's `true`.
    Put,
    /// A CAS's `true` or `false`.
    Cas(bool),
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One key of the store: absent, or holding one value.
pub struct KvRegister;

impl Model for KvRegister {
    type State = Option<u64>;
    type Input = KvIn;
    type Output = KvOut;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(&self, s: &Option<u64>, input: &KvIn, out: &KvOut) -> Option<Option<u64>> {
        match (input, out) {
            (KvIn::Get, KvOut::Get(v)) => (v == s).then_some(*s),
            (KvIn::Get, KvOut::Unknown) => Some(*s),
            (KvIn::Put(v), KvOut::Put | KvOut::Unknown) => Some(Some(*v)),
            (KvIn::Cas { expect, new }, KvOut::Cas(true)) => (expect == s).then_some(Some(*new)),
            (KvIn::Cas { expect, .. }, KvOut::Cas(false)) => (expect != s).then_some(*s),
            (KvIn::Cas { expect, new }, KvOut::Unknown) => {
                Some(if expect == s { Some(*new) } else { *s })
            }
            _ => None,
        }
    }
}

/// A failed check, with what a person needs to reproduce and read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// `linearizability`, `lost write`, `index`, `inconclusive`, or one of the
    /// run's own checks (`two leaders`, `no recovery`, `node exit`).
    pub kind: &'static str,
    /// The key, for the store's checks.
    pub key: Option<String>,
    /// What happened, with a history excerpt; several lines.
    pub detail: String,
    /// Ids of the operations at fault, marked on the timeline.
    pub ops: Vec<u64>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => writeln!(f, "{} on key {k}:", self.kind)?,
            None => writeln!(f, "{}:", self.kind)?,
        }
        for line in self.detail.lines() {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// The operations of one key that the checker sees, and the record behind each.
fn to_ops<'a>(records: &[&'a Record]) -> (Vec<Operation<KvIn, KvOut>>, Vec<&'a Record>) {
    let mut observed: HashSet<u64> = HashSet::new();
    for r in records {
        match r.f {
            Func::Get if r.status == Status::Ok => observed.extend(r.value),
            Func::Cas => observed.extend(r.expect),
            _ => {}
        }
    }
    let seen = |v: u64| if observed.contains(&v) { v } else { UNSEEN };
    let mut ops = Vec::new();
    let mut behind = Vec::new();
    for r in records {
        let unknown = r.status == Status::Unknown;
        let (input, output) = match (r.f, r.status) {
            // A read that got no answer changed nothing.
            (Func::Get, Status::Ok) => (KvIn::Get, KvOut::Get(r.value)),
            (Func::Get, _) => continue,
            (Func::Put, Status::Ok | Status::Unknown) => {
                let Some(v) = r.value else { continue };
                let out = if unknown { KvOut::Unknown } else { KvOut::Put };
                (KvIn::Put(seen(v)), out)
            }
            (Func::Cas, _) => {
                let Some(v) = r.value else { continue };
                let out = match (r.status, r.result) {
                    (Status::Unknown, _) => KvOut::Unknown,
                    (_, Some(b)) => KvOut::Cas(b),
                    // Refused before sending, or a 4xx: it had no effect.
                    (_, None) => continue,
                };
                let input = KvIn::Cas {
                    expect: r.expect,
                    new: seen(v),
                };
                (input, out)
            }
            (Func::Put, Status::Failed) => continue,
        };
        ops.push(Operation {
            call: r.call_us,
            ret: (!unknown).then_some(r.ret_us),
            input,
            output,
        });
        behind.push(*r);
    }
    (ops, behind)
}

/// Checks one key's records (in any order); violations found.
pub fn check_key(key: &str, records: &[&Record], budget: u64) -> Vec<Violation> {
    let mut out = index_violations(key, records);
    let (ops, behind) = to_ops(records);
    match checker::check(&KvRegister, &ops, budget) {
        Verdict::Linearizable => {}
        Verdict::Inconclusive { steps } => out.push(Violation {
            kind: "inconclusive",
            key: Some(key.to_string()),
            detail: format!(
                "the search gave up after {steps} steps on {} operations: \
                 this key's history was neither proved nor refuted",
                ops.len()
            ),
            ops: Vec::new(),
        }),
        Verdict::NotLinearizable(cex) => {
            // A history that fits without the final reads lost a write.
            let without_final: Vec<&Record> = records.iter().copied().filter(|r| !r.fin).collect();
            let (ops2, _) = to_ops(&without_final);
            let lost = without_final.len() < records.len()
                && checker::check(&KvRegister, &ops2, budget).is_linearizable();
            let stuck = behind[cex.stuck_op];
            let mut detail = String::new();
            if lost {
                detail.push_str(&format!(
                    "the final read after healing returned {}, which no order of the acknowledged operations allows\n",
                    show(stuck.value)
                ));
            } else {
                detail.push_str(&format!(
                    "no linearization: after the longest linearizable prefix ({} operations) the key held {}, and this operation cannot follow:\n",
                    cex.linearized,
                    show(cex.state)
                ));
            }
            detail.push_str(&format!("  {stuck}\n"));
            detail.push_str("the last operations of that prefix, in linearization order:\n");
            for &i in cex.prefix.iter().rev().take(8).rev() {
                detail.push_str(&format!("  {}\n", behind[i]));
            }
            detail.push_str("operations concurrent with it:\n");
            let mut concurrent: Vec<&Record> = records
                .iter()
                .copied()
                .filter(|r| {
                    r.id != stuck.id && r.call_us <= stuck.ret_us && r.ret_us >= stuck.call_us
                })
                .collect();
            concurrent.sort_by_key(|r| (r.call_us, r.id));
            for r in concurrent.iter().take(24) {
                detail.push_str(&format!("  {r}\n"));
            }
            if concurrent.len() > 24 {
                detail.push_str(&format!("  ... and {} more\n", concurrent.len() - 24));
            }
            out.push(Violation {
                kind: if lost {
                    "lost write"
                } else {
                    "linearizability"
                },
                key: Some(key.to_string()),
                detail,
                ops: vec![stuck.id],
            });
        }
    }
    out
}

fn show(v: Option<u64>) -> String {
    match v {
        None => "nothing (absent)".into(),
        Some(UNSEEN) => "a value no operation read".into(),
        Some(v) => v.to_string(),
    }
}

/// One value is always read with one `ModifyIndex`, and no two values share
/// an index: a write applied twice, or an index reused, breaks both.
fn index_violations(key: &str, records: &[&Record]) -> Vec<Violation> {
    let mut by_value: BTreeMap<u64, (u64, &Record)> = BTreeMap::new();
    let mut by_index: HashMap<u64, (u64, &Record)> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        if r.f != Func::Get || r.status != Status::Ok {
            continue;
        }
        let (Some(v), Some(i)) = (r.value, r.index) else {
            continue;
        };
        if let Some((i0, r0)) = by_value.get(&v) {
            if *i0 != i {
                out.push(Violation {
                    kind: "index",
                    key: Some(key.to_string()),
                    detail: format!(
                        "value {v} was read with ModifyIndex {i0} and then {i} (a write applied twice?)\n  {r0}\n  {r}\n"
                    ),
                    ops: vec![r0.id, r.id],
                });
            }
        } else {
            by_value.insert(v, (i, r));
        }
        if let Some((v0, r0)) = by_index.get(&i) {
            if *v0 != v {
                out.push(Violation {
                    kind: "index",
                    key: Some(key.to_string()),
                    detail: format!(
                        "ModifyIndex {i} was read with value {v0} and with value {v}\n  {r0}\n  {r}\n"
                    ),
                    ops: vec![r0.id, r.id],
                });
            }
        } else {
            by_index.insert(i, (v, r));
        }
    }
    out
}

/// Checks every key of a history (P-compositionality), on `threads` threads.
/// Violations come back sorted by key.
pub fn check_history(records: &[Record], threads: usize, budget: u64) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    let keys: Vec<(&str, Vec<&Record>)> = by_key.into_iter().collect();
    let next = AtomicUsize::new(0);
    let found: Mutex<Vec<Violation>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, recs)) = keys.get(i) else {
                    break;
                };
                let v = check_key(key, recs, budget);
                if !v.is_empty() {
                    found.lock().unwrap_or_else(|e| e.into_inner()).extend(v);
                }
            });
        }
    });
    let mut v = found.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::DEFAULT_STEP_BUDGET;

    /// A tiny history builder: each op on key "k", times in microseconds.
    struct H {
        recs: Vec<Record>,
    }

    impl H {
        fn new() -> Self {
            H { recs: Vec::new() }
        }
        fn push(&mut self, f: Func, t: (u64, u64), status: Status) -> &mut Record {
            let id = self.recs.len() as u64 + 1;
            self.recs.push(Record {
                id,
                client: id as u32,
                node: 1,
                key: "k".into(),
                f,
                stale: false,
                fin: false,
                value: None,
                expect: None,
                expect_index: None,
                index: None,
                result: None,
                call_us: t.0,
                ret_us: t.1,
                status,
                error: None,
            });
            self.recs.last_mut().unwrap()
        }
        fn put(&mut self, v: u64, t: (u64, u64)) -> &mut Self {
            self.push(Func::Put, t, Status::Ok).value = Some(v);
            self
        }
        fn put_unknown(&mut self, v: u64, t: u64) -> &mut Self {
            self.push(Func::Put, (t, t + 1_000_000), Status::Unknown)
                .value = Some(v);
            self
        }
        fn get(&mut self, v: Option<u64>, index: u64, t: (u64, u64)) -> &mut Self {
            let r = self.push(Func::Get, t, Status::Ok);
            r.value = v;
            r.index = v.map(|_| index);
            self
        }
        fn final_get(&mut self, v: Option<u64>, t: (u64, u64)) -> &mut Self {
            let r = self.push(Func::Get, t, Status::Ok);
            r.value = v;
            r.fin = true;
            self
        }
        fn cas(
            &mut self,
            expect: Option<u64>,
            new: u64,
            result: Option<bool>,
            t: (u64, u64),
        ) -> &mut Self {
            let status = match result {
                Some(true) => Status::Ok,
                Some(false) => Status::Failed,
                None => Status::Unknown,
            };
            let r = self.push(Func::Cas, t, status);
            r.expect = expect;
            r.value = Some(new);
            r.result = result;
            self
        }
        fn check(&self) -> Vec<Violation> {
            check_history(&self.recs, 2, DEFAULT_STEP_BUDGET)
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let v = H::new()
            .cas(None, 1, Some(true), (0, 10))
            .get(Some(1), 5, (20, 30))
            .put(2, (40, 50))
            .cas(Some(1), 3, Some(false), (45, 60))
            .get(Some(2), 6, (70, 80))
            .cas(Some(2), 4, Some(true), (90, 100))
            .final_get(Some(4), (200, 210))
            .check();
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_cas_on_an_absent_key_only_succeeds_once() {
        let v = H::new()
            .cas(None, 1, Some(true), (0, 10))
            .cas(None, 2, Some(true), (20, 30))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "linearizability");
    }

    #[test]
    fn a_cas_that_answered_false_needs_another_value_there() {
        // The key held 1 throughout, so a CAS expecting 1 could not fail.
        let v = H::new()
            .put(1, (0, 10))
            .cas(Some(1), 2, Some(false), (20, 30))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
        // ...unless a concurrent write explains it, even an unknown one.
        let v = H::new()
            .put(1, (0, 10))
            .put_unknown(7, 15)
            .cas(Some(1), 2, Some(false), (20, 30))
            .check();
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn an_unknown_cas_may_or_may_not_apply() {
        let v = H::new()
            .put(1, (0, 10))
            .cas(Some(1), 2, None, (20, 30))
            .get(Some(2), 9, (40, 50))
            .check();
        assert!(v.is_empty(), "{v:?}");
        let v = H::new()
            .put(1, (0, 10))
            .cas(Some(1), 2, None, (20, 30))
            .get(Some(1), 4, (40, 50))
            .check();
        assert!(v.is_empty(), "{v:?}");
        // An unknown CAS whose condition never held cannot have applied.
        let v = H::new()
            .put(1, (0, 10))
            .cas(Some(5), 2, None, (20, 30))
            .get(Some(2), 9, (40, 50))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn a_stale_read_is_a_violation_with_an_excerpt() {
        let v = H::new()
            .put(1, (0, 10))
            .put(2, (20, 30))
            .get(Some(1), 3, (40, 50))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "linearizability");
        assert!(v[0].detail.contains("get = 1"), "{}", v[0].detail);
        assert!(v[0].detail.contains("put 2"), "{}", v[0].detail);
    }

    #[test]
    fn a_final_read_that_misses_an_acknowledged_write_is_a_lost_write() {
        let v = H::new()
            .put(1, (0, 10))
            .put(2, (20, 30))
            .final_get(Some(1), (100, 110))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "lost write");
        let v = H::new().put(1, (0, 10)).final_get(None, (100, 110)).check();
        assert_eq!(v[0].kind, "lost write");
    }

    #[test]
    fn many_unknown_writes_nobody_read_are_cheap() {
        // 60 unknown puts of values no one read, between known reads.
        let mut h = H::new();
        h.put(1, (0, 10));
        for i in 0..60 {
            h.put_unknown(100 + i, 20 + i);
        }
        h.get(Some(1), 2, (100, 110));
        h.cas(Some(1), 500, Some(false), (200, 210));
        h.put(2, (300, 310));
        h.get(Some(2), 7, (400, 410));
        assert!(h.check().is_empty());
        // And a violation among them is still found, not given up on.
        h.get(Some(1), 2, (500, 510));
        let v = h.check();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "linearizability");
    }

    #[test]
    fn failed_and_unanswered_reads_change_nothing() {
        let mut h = H::new();
        h.put(1, (0, 10));
        h.push(Func::Get, (20, 30), Status::Unknown);
        h.push(Func::Put, (20, 30), Status::Failed).value = Some(9);
        h.get(Some(1), 2, (40, 50));
        assert!(h.check().is_empty());
    }

    #[test]
    fn one_value_with_two_indexes_is_reported() {
        let v = H::new()
            .put(1, (0, 10))
            .get(Some(1), 5, (20, 30))
            .get(Some(1), 6, (40, 50))
            .check();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "index");
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = H::new();
        h.put(1, (0, 10));
        h.put(2, (20, 30)).recs.last_mut().unwrap().key = "other".into();
        h.get(Some(1), 1, (40, 50));
        h.get(Some(2), 2, (60, 70)).recs.last_mut().unwrap().key = "other".into();
        assert!(h.check().is_empty());
    }
}
