//! The linearizability checker: Wing & Gong's search with Lowe's memoization,
//! in the form Porcupine gives it ("Faster linearizability checking via
//! P-compositionality", Horn & Kroening, 2015).
//!
//! A history is a set of operations, each with an invocation time, a
//! completion time and an output. It is linearizable when the operations can
//! be put in one sequential order that (1) respects real time: an operation
//! that completed before another was invoked comes first, and (2) is a legal
//! run of the sequential [`Model`].
//!
//! The search walks a doubly linked list of call and return entries sorted by
//! time. At a call entry it tries to linearize that operation now: if the
//! model accepts it, the operation and its return entry are lifted out of the
//! list and the search goes on from the head. Reaching a return entry means an
//! operation that had to be linearized by now was not, so the search
//! backtracks. Lowe's optimisation caches every (set of linearized operations,
//! model state) pair already explored, so no configuration is searched twice.
//!
//! **Unknown operations** (a timeout, a 5xx after the request was sent) may or
//! may not have taken effect, at any moment after their invocation. They get
//! a return time of infinity and an output the model accepts either way; an
//! unknown operation linearized at the very end is the same as one that never
//! happened.
//!
//! **Interchangeable unknown operations.** Unknown operations with the same
//! input and output have the same effect and no deadline, so any
//! linearization that uses some of them can use the earliest-called ones
//! instead, in call order (the j-th earliest call is never later than the
//! j-th linearization point). The search therefore only tries them in call
//! order. Without this, k unknown writes that nobody read would cost up to
//! 2^k subsets; with it, k + 1. (The register model maps every value that no
//! operation observed to one token, so such writes compare equal.)
//!
//! P-compositionality is the caller's: a register store is checked key by key
//! (see `model::check_keys`), since a history is linearizable exactly when
//! each key's sub-history is.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The model's state. Two equal states must behave the same from then on.
    type State: Clone + Eq + Hash + Debug;
    /// What an operation asks.
    type Input: Debug + Eq + Hash;
    /// What an operation answered (including "unknown").
    type Output: Debug + Eq + Hash;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state if `output` is a legal answer
    /// from `state`, `None` if it is not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// Completion time; `None` when the outcome is unknown: the operation may
    /// take effect at any time after `call`, or never.
    pub ret: Option<u64>,
    /// What was asked.
    pub input: I,
    /// What was answered.
    pub output: O,
}

/// Why the search found no linearization: the furthest it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample<S> {
    /// How many operations the longest linearizable prefix holds.
    pub linearized: usize,
    /// The model state after that prefix.
    pub state: S,
    /// The operation (an index into the checked slice) that had to be
    /// linearized next, and could not be from that state.
    pub stuck_op: usize,
    /// The operations of that longest prefix, in linearization order.
    pub prefix: Vec<usize>,
}

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<S> {
    /// A linearization exists.
    Linearizable,
    /// None exists; the counterexample says where the search got stuck.
    NotLinearizable(Counterexample<S>),
    /// The search ran out of its step budget before deciding.
    Inconclusive {
        /// Search steps taken.
        steps: u64,
    },
}

impl<S> Verdict<S> {
    /// True only for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The default budget of search steps for one key's history. A step is one
/// attempt to linearize an operation or one backtrack; histories the runner
/// produces (at most a few hundred operations per key) take well under a
/// million.
pub const DEFAULT_STEP_BUDGET: u64 = 200_000_000;

/// A set of operation indices, as the memo's key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64).max(1)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Sentinel index of the list head.
const HEAD: usize = 0;
/// "No entry" in the links.
const NIL: usize = usize::MAX;

/// The doubly linked list of call and return entries. Entry 0 is the head
/// sentinel; entry `1 + 2k` and `2 + 2k` are not fixed: positions follow the
/// time order, and `op`/`is_call`/`partner` say what each entry is.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call entry, the index of its return entry.
    partner: Vec<usize>,
}

impl Entries {
    fn build<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (time, 0 for a call / 1 for a return, op): a call and a return at
        // the same instant are taken as concurrent, the permissive reading.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            events.push((op.ret.unwrap_or(u64::MAX), 1, i));
        }
        events.sort_unstable();
        let n = events.len() + 1;
        let mut e = Entries {
            next: vec![NIL; n],
            prev: vec![NIL; n],
            op: vec![usize::MAX; n],
            is_call: vec![false; n],
            partner: vec![NIL; n],
        };
        let mut call_at = vec![NIL; ops.len()];
        for (pos, &(_, kind, op)) in events.iter().enumerate() {
            let idx = pos + 1;
            e.op[idx] = op;
            e.is_call[idx] = kind == 0;
            if kind == 0 {
                call_at[op] = idx;
            } else {
                e.partner[call_at[op]] = idx;
            }
        }
        for idx in 0..n {
            e.next[idx] = if idx + 1 < n { idx + 1 } else { NIL };
            e.prev[idx] = if idx == 0 { NIL } else { idx - 1 };
        }
        e
    }

    /// Takes a call entry and its return entry out of the list.
    fn lift(&mut self, call: usize) {
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
        let ret = self.partner[call];
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts them back, in the reverse order of [`Entries::lift`].
    fn unlift(&mut self, call: usize) {
        let ret = self.partner[call];
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = ret;
        if n != NIL {
            self.prev[n] = ret;
        }
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = call;
        if n != NIL {
            self.prev[n] = call;
        }
    }
}

/// Checks one history against `model`, taking at most `budget` search steps.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict<M::State> {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let mut list = Entries::build(ops);
    let class_of = unknown_classes(ops);
    let mut class_done = vec![
        0usize;
        class_of
            .iter()
            .flatten()
            .map(|c| c.0 + 1)
            .max()
            .unwrap_or(0)
    ];
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut linearized = Bitset::new(ops.len());
    let mut state = model.init();
    // Each frame: the call entry linearized, and the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Option<Counterexample<M::State>> = None;
    let mut steps: u64 = 0;
    let mut entry = list.next[HEAD];

    while list.next[HEAD] != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive { steps };
        }
        if list.is_call[entry] {
            let i = list.op[entry];
            let op = &ops[i];
            if let Some((class, rank)) = class_of[i] {
                if rank != class_done[class] {
                    // An earlier-called twin is still pending: try it instead.
                    entry = list.next[entry];
                    continue;
                }
            }
            match model.step(&state, &op.input, &op.output) {
                Some(next) => {
                    let mut with = linearized.clone();
                    with.set(list.op[entry]);
                    if cache.insert((with, next.clone())) {
                        stack.push((entry, std::mem::replace(&mut state, next)));
                        linearized.set(i);
                        if let Some((class, _)) = class_of[i] {
                            class_done[class] += 1;
                        }
                        list.lift(entry);
                        entry = list.next[HEAD];
                    } else {
                        entry = list.next[entry];
                    }
                }
                None => entry = list.next[entry],
            }
        } else {
            // An operation whose return we reached was not linearized: this
            // branch is dead. Remember how far it got, then backtrack.
            if best.as_ref().is_none_or(|b| stack.len() > b.linearized) {
                best = Some(Counterexample {
                    linearized: stack.len(),
                    state: state.clone(),
                    stuck_op: list.op[entry],
                    prefix: stack.iter().map(|(e, _)| list.op[*e]).collect(),
                });
            }
            let Some((call, before)) = stack.pop() else {
                return Verdict::NotLinearizable(best.expect("set just above"));
            };
            state = before;
            linearized.clear(list.op[call]);
            if let Some((class, _)) = class_of[list.op[call]] {
                class_done[class] -= 1;
            }
            list.unlift(call);
            entry = list.next[call];
        }
    }
    Verdict::Linearizable
}

/// For each unknown operation, its class of interchangeable twins (same input
/// and output) and its rank in that class by call time; `None` for the rest.
fn unknown_classes<I: Eq + Hash, O: Eq + Hash>(
    ops: &[Operation<I, O>],
) -> Vec<Option<(usize, usize)>> {
    let mut classes: std::collections::HashMap<(&I, &O), Vec<usize>> = Default::default();
    for (i, op) in ops.iter().enumerate() {
        if op.ret.is_none() {
            classes.entry((&op.input, &op.output)).or_default().push(i);
        }
    }
    let mut out = vec![None; ops.len()];
    for (class, mut members) in classes.into_values().enumerate() {
        members.sort_by_key(|&i| (ops[i].call, i));
        for (rank, i) in members.into_iter().enumerate() {
            out[i] = Some((class, rank));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain read/write register of small integers, starting at 0.
    struct Register;

    #[derive(Debug, PartialEq, Eq, Hash)]
    enum In {
        Read,
        Write(u32),
    }

    impl Model for Register {
        type State = u32;
        type Input = In;
        type Output = Option<u32>;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, input: &In, out: &Option<u32>) -> Option<u32> {
            match input {
                In::Read => (out.is_none() || *out == Some(*s)).then_some(*s),
                In::Write(v) => Some(*v),
            }
        }
    }

    fn op(call: u64, ret: u64, input: In, output: Option<u32>) -> Operation<In, Option<u32>> {
        Operation {
            call,
            ret: Some(ret),
            input,
            output,
        }
    }

    fn unknown(call: u64, input: In) -> Operation<In, Option<u32>> {
        Operation {
            call,
            ret: None,
            input,
            output: None,
        }
    }

    fn verdict(ops: &[Operation<In, Option<u32>>]) -> Verdict<u32> {
        check(&Register, ops, DEFAULT_STEP_BUDGET)
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(verdict(&[]).is_linearizable());
    }

    #[test]
    fn porcupine_readme_good_history() {
        // C0: |------ put 100 ------|
        // C1:   |-- get -> 100 --|
        // C2:     |- get -> 0 -|
        let h = [
            op(0, 100, In::Write(100), None),
            op(25, 75, In::Read, Some(100)),
            op(30, 60, In::Read, Some(0)),
        ];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn porcupine_readme_bad_history() {
        // C0: |------ put 200 ------|
        // C1:   |- get -> 200 -|
        // C2:                    |- get -> 0 -|   (after 200 was seen)
        let h = [
            op(0, 100, In::Write(200), None),
            op(10, 30, In::Read, Some(200)),
            op(40, 90, In::Read, Some(0)),
        ];
        match verdict(&h) {
            Verdict::NotLinearizable(c) => {
                assert_eq!(c.stuck_op, 2, "the stale read is the one that cannot fit");
            }
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn sequential_stale_read_is_a_violation() {
        let h = [
            op(0, 10, In::Write(1), None),
            op(20, 30, In::Write(2), None),
            op(40, 50, In::Read, Some(1)),
        ];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let h = [op(0, 10, In::Write(1), None), op(20, 30, In::Read, Some(7))];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [
            op(0, 50, In::Write(1), None),
            op(0, 50, In::Write(2), None),
            op(60, 70, In::Read, Some(1)),
        ];
        assert!(verdict(&h).is_linearizable());
        let h = [
            op(0, 50, In::Write(1), None),
            op(0, 50, In::Write(2), None),
            op(60, 70, In::Read, Some(2)),
        ];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn two_readers_must_agree_on_one_order() {
        // Writes of 1 and 2 are concurrent; one reader sees 1 then 2, the
        // other 2 then 1, each read after the previous one: no single order.
        let h = [
            op(0, 100, In::Write(1), None),
            op(0, 100, In::Write(2), None),
            op(10, 20, In::Read, Some(1)),
            op(30, 40, In::Read, Some(2)),
            op(10, 20, In::Read, Some(2)),
            op(30, 40, In::Read, Some(1)),
        ];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_may_have_happened() {
        let h = [
            unknown(0, In::Write(5)),
            op(100, 110, In::Read, Some(5)),
            op(120, 130, In::Read, Some(5)),
        ];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_may_not_have_happened() {
        let h = [unknown(0, In::Write(5)), op(100, 110, In::Read, Some(0))];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_takes_effect_late_but_not_undone() {
        // 5 may land any time after its call, even after a later write...
        let h = [
            unknown(0, In::Write(5)),
            op(10, 20, In::Write(6), None),
            op(30, 40, In::Read, Some(6)),
            op(50, 60, In::Read, Some(5)),
        ];
        assert!(verdict(&h).is_linearizable());
        // ...but once seen it cannot vanish without another write.
        let h = [
            unknown(0, In::Write(5)),
            op(10, 20, In::Write(6), None),
            op(30, 40, In::Read, Some(5)),
            op(50, 60, In::Read, Some(6)),
        ];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn an_unknown_write_cannot_act_before_its_call() {
        let h = [op(0, 10, In::Read, Some(5)), unknown(20, In::Write(5))];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn many_unknown_writes_stay_tractable() {
        // 30 unknown writes of 9 and 30 of 8, then 60 reads alternating 9 and
        // 8: each read needs one more of the unknown writes. Without trying
        // twins in call order this is a search over 2^60 subsets.
        let mut h: Vec<_> = (0..30)
            .flat_map(|i| [unknown(i, In::Write(9)), unknown(i, In::Write(8))])
            .collect();
        for r in 0..60u64 {
            let v = if r % 2 == 0 { 9 } else { 8 };
            h.push(op(1000 + 20 * r, 1010 + 20 * r, In::Read, Some(v)));
        }
        assert!(verdict(&h).is_linearizable());
        // A 31st 9 after the last 8: there are only 30 writes of 9.
        h.push(op(5000, 5010, In::Read, Some(9)));
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn distinct_unknown_writes_read_in_a_strange_order() {
        // 12 distinct unknown writes read back in an order unrelated to their
        // calls: fine, they may land in any order...
        let mut h: Vec<_> = (1..=12).map(|v| unknown(v as u64, In::Write(v))).collect();
        for (k, v) in [7, 3, 12, 1, 9, 5].into_iter().enumerate() {
            let t = 1000 + 20 * k as u64;
            h.push(op(t, t + 10, In::Read, Some(v)));
        }
        assert!(verdict(&h).is_linearizable());
        // ...but none lands twice.
        h.push(op(2000, 2010, In::Read, Some(3)));
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn budget_exhaustion_is_inconclusive_not_a_pass() {
        let h = [
            op(0, 10, In::Write(1), None),
            op(20, 30, In::Write(2), None),
            op(40, 50, In::Read, Some(1)),
        ];
        assert!(matches!(
            check(&Register, &h, 2),
            Verdict::Inconclusive { .. }
        ));
    }
}
