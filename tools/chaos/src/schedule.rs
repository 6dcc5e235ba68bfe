//! The fault schedule, drawn from the seed alone, so that a failing run can
//! be replayed with `--seed`.
//!
//! The schedule fixes each fault's kind, its duration, the quiet gap before
//! it and a random draw (`pick`) that chooses its targets. Which node is the
//! leader is only known when the fault starts, so "the leader" is resolved
//! then; every other choice (which follower, which minority, which
//! direction, how much loss) comes from `pick`.
//!
//! The first faults are one of each enabled kind, in a seeded order, so that
//! even a short run covers every kind; after that kinds are drawn at random.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The upper end of quorumd's randomized election timeout with the shipped
/// Raft settings (3 ticks of 100 ms, randomized in [1x, 2x)): 600 ms. Pauses
/// last up to twice this, and a recovery slower than twice this is flagged.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(600);

/// Every kind of fault the runner injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of the leader, then a restart.
    KillLeader,
    /// `kill -9` of a follower, then a restart.
    KillFollower,
    /// SIGSTOP of a node (the leader half the time), then SIGCONT.
    Pause,
    /// The leader cut off from every other node.
    PartitionLeader,
    /// A random minority cut off from the majority.
    PartitionSplit,
    /// One node stops hearing the others (or stops reaching them), while the
    /// other direction still works.
    OneWay,
    /// Random packet loss between all nodes (iptables `statistic`).
    Loss,
    /// `kill -9` of every node, then all restart.
    RestartCluster,
    /// SIGSTOP of a follower; 100 ms later SIGTERM of the leader (it hands
    /// off, in an election the paused node misses); 150 to 250 ms later
    /// SIGCONT, so that one Ready brings the follower a new term and
    /// entries to apply; 300 ms later a clean restart of that follower.
    PauseHandoff,
    /// SIGTERM of the leader (a leadership transfer starts) and at once
    /// SIGSTOP of a follower, which may be the transfer's target.
    PauseTransfer,
    /// A learner added through a node while a node (the leader half the
    /// time) restarts cleanly; the learner is removed when it heals.
    MemberRestart,
    /// SIGSTOP of a follower and at once `kill -9` of the leader (the
    /// follower is half the time the first in id order, the one that stands
    /// for election first when a leader's process dies, and otherwise a later
    /// one); SIGCONT when it heals, then a restart of the killed leader.
    KillLeaderPause,
}

impl FaultKind {
    /// All kinds, in a fixed order.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::Pause,
        FaultKind::PartitionLeader,
        FaultKind::PartitionSplit,
        FaultKind::OneWay,
        FaultKind::Loss,
        FaultKind::RestartCluster,
        FaultKind::PauseHandoff,
        FaultKind::PauseTransfer,
        FaultKind::MemberRestart,
        FaultKind::KillLeaderPause,
    ];

    /// The kebab-case name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::Pause => "pause",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionSplit => "partition-split",
            FaultKind::OneWay => "one-way",
            FaultKind::Loss => "loss",
            FaultKind::RestartCluster => "restart-cluster",
            FaultKind::PauseHandoff => "pause-handoff",
            FaultKind::PauseTransfer => "pause-transfer",
            FaultKind::MemberRestart => "member-restart",
            FaultKind::KillLeaderPause => "kill-leader-pause",
        }
    }

    /// Parses a name from [`FaultKind::name`].
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The range of its duration, in milliseconds.
    fn duration_ms(self) -> (u64, u64) {
        let et = ELECTION_TIMEOUT.as_millis() as u64;
        match self {
            FaultKind::KillLeader | FaultKind::KillFollower => (1_000, 4_000),
            // From a quarter of the election timeout (no follower notices) to
            // twice it (an election happens, then the old leader wakes up).
            FaultKind::Pause => (et / 4, 2 * et),
            FaultKind::PartitionLeader | FaultKind::PartitionSplit | FaultKind::OneWay => {
                (1_000, 5_000)
            }
            FaultKind::Loss => (2_000, 6_000),
            FaultKind::RestartCluster => (100, 1_000),
            // The sequence itself takes 550 to 650 ms and ends healed; this
            // is the time before the handing-off leader restarts.
            FaultKind::PauseHandoff => (100, 500),
            FaultKind::PauseTransfer => (et / 4, 2 * et),
            FaultKind::MemberRestart => (200, 1_000),
            // With 3 nodes nothing is elected until the paused one returns.
            FaultKind::KillLeaderPause => (et / 4, 2 * et),
        }
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Its number in the schedule, from 1.
    pub n: u32,
    /// Quiet time before it starts (after the previous one healed and
    /// recovered).
    pub gap_ms: u64,
    /// What it is.
    pub kind: FaultKind,
    /// How long it lasts before it heals.
    pub duration_ms: u64,
    /// A random draw that chooses its targets when it starts.
    pub pick: u64,
}

/// Range of the quiet gap between faults, in milliseconds.
const GAP_MS: (u64, u64) = (1_000, 3_000);

/// The schedule for `seed`, with the kinds in `kinds` (all when empty).
/// Long enough for `duration`: the runner stops starting faults when the
/// time is up (but never before one of each kind has run).
pub fn generate(seed: u64, duration: Duration, kinds: &[FaultKind]) -> Vec<Fault> {
    let kinds: Vec<FaultKind> = if kinds.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        kinds.to_vec()
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut first = kinds.clone();
    rng.shuffle(&mut first);
    let mut out = Vec::new();
    let mut planned_ms: u64 = 0;
    let budget_ms = duration.as_millis() as u64;
    let mut n = 0;
    while n < first.len() || planned_ms < budget_ms {
        let kind = if n < first.len() {
            first[n]
        } else {
            kinds[rng.usize(..kinds.len())]
        };
        let (lo, hi) = kind.duration_ms();
        let gap_ms = rng.u64(GAP_MS.0..=GAP_MS.1);
        let duration_ms = rng.u64(lo..=hi);
        n += 1;
        out.push(Fault {
            n: n as u32,
            gap_ms,
            kind,
            duration_ms,
            pick: rng.u64(..),
        });
        planned_ms += gap_ms + duration_ms;
    }
    out
}

/// A minority of `nodes` (ids `1..=nodes`), chosen by `pick`: at most
/// `(nodes - 1) / 2` nodes, at least one.
pub fn minority(nodes: u32, pick: u64) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(pick);
    let mut ids: Vec<u32> = (1..=nodes).collect();
    rng.shuffle(&mut ids);
    let size = ((nodes - 1) / 2).max(1) as usize;
    let mut m = ids[..size].to_vec();
    m.sort_unstable();
    m
}

/// Chooses one of `from` by `pick` (salted, so that two choices of one fault
/// are independent).
pub fn choose(from: &[u32], pick: u64, salt: u64) -> Option<u32> {
    if from.is_empty() {
        return None;
    }
    let mut rng = fastrand::Rng::with_seed(pick ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Some(from[rng.usize(..from.len())])
}

/// A probability in `[lo, hi]` drawn by `pick`.
pub fn fraction(pick: u64, salt: u64, lo: f64, hi: f64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(pick ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    lo + (hi - lo) * rng.f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let d = Duration::from_secs(120);
        assert_eq!(generate(7, d, &[]), generate(7, d, &[]));
        assert_ne!(generate(7, d, &[]), generate(8, d, &[]));
    }

    #[test]
    fn every_kind_comes_first_once_even_in_a_short_run() {
        for seed in 0..50 {
            let s = generate(seed, Duration::from_secs(1), &[]);
            assert!(s.len() >= FaultKind::ALL.len());
            let mut first: Vec<_> = s[..FaultKind::ALL.len()].iter().map(|f| f.kind).collect();
            first.sort();
            assert_eq!(first, FaultKind::ALL.to_vec(), "seed {seed}");
        }
    }

    #[test]
    fn durations_stay_in_their_ranges_and_fill_the_run() {
        let s = generate(3, Duration::from_secs(1800), &[]);
        let total: u64 = s.iter().map(|f| f.gap_ms + f.duration_ms).sum();
        assert!(total >= 1_800_000);
        assert!(s.len() >= 100, "30 minutes plan at least 100 faults");
        for f in &s {
            let (lo, hi) = f.kind.duration_ms();
            assert!((lo..=hi).contains(&f.duration_ms), "{f:?}");
            assert!((GAP_MS.0..=GAP_MS.1).contains(&f.gap_ms), "{f:?}");
        }
        // Pauses reach up to twice the election timeout.
        assert_eq!(FaultKind::Pause.duration_ms().1, 1_200);
    }

    #[test]
    fn only_chosen_kinds_are_planned() {
        let s = generate(
            1,
            Duration::from_secs(60),
            &[FaultKind::Pause, FaultKind::Loss],
        );
        assert!(s
            .iter()
            .all(|f| matches!(f.kind, FaultKind::Pause | FaultKind::Loss)));
    }

    #[test]
    fn minorities_are_minorities() {
        for pick in 0..100 {
            let m3 = minority(3, pick);
            assert_eq!(m3.len(), 1);
            let m5 = minority(5, pick);
            assert_eq!(m5.len(), 2);
            assert!(m5.iter().all(|id| (1..=5).contains(id)));
            assert_ne!(m5[0], m5[1]);
        }
    }

    #[test]
    fn names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        assert_eq!(FaultKind::parse("nope"), None);
    }
}
