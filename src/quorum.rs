//! Quorum math and the quorum waiter.
//!
//! The cluster size N counts this node once, and the quorum is `N/2 + 1`.
//! The voter set comes from the cluster file, never from
//! whoever happened to answer, and the quorum is never relaxed after a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::error::{Error, Result};
use crate::health::{HealthEvent, HealthHandle};

/// The number of voters that make a majority of `cluster_size`.
pub fn quorum_size(cluster_size: usize) -> usize {
    cluster_size / 2 + 1
}

/// True if `me` should campaign at once: it has the lowest id among the live
/// quorum (itself included). This is only a shortcut to a quick first
/// election; the other nodes still elect a leader by the randomized timeout.
pub fn campaigns_first(me: u64, live_peers: &[u64]) -> bool {
    live_peers.iter().all(|&p| me < p)
}

/// Waits until the live nodes, counting this one, reach a quorum, and until
/// every peer with a lower id has been probed once (so that the campaign
/// decision sees a lower-id node that is up, rather than racing its first
/// probe). Returns the live peers at that moment. Fails with
/// [`Error::QuorumTimeout`] after `timeout`, naming the peers that never
/// answered.
pub async fn wait_for_quorum(
    voters: &BTreeMap<u64, SocketAddr>,
    me: u64,
    health: &HealthHandle,
    timeout: Duration,
) -> Result<Vec<u64>> {
    let needed = quorum_size(voters.len());
    let (now, events) = health
        .subscribe()
        .await
        .ok_or_else(|| Error::Internal("health monitor stopped during bootstrap".into()))?;
    let mut live: BTreeSet<u64> = now
        .alive
        .into_iter()
        .filter(|id| voters.contains_key(id))
        .collect();
    let mut unprobed_lower: BTreeSet<u64> = voters
        .keys()
        .copied()
        .filter(|&id| id < me && !now.probed.contains(&id))
        .collect();
    let deadline = Instant::now() + timeout;
    while live.len() + 1 < needed || !unprobed_lower.is_empty() {
        let event = future::or(async { events.recv_async().await.ok() }, async {
            async_io::Timer::at(deadline).await;
            None
        })
        .await;
        match event {
            Some(HealthEvent::Up(id)) if voters.contains_key(&id) => {
                live.insert(id);
            }
            Some(HealthEvent::Down(id)) => {
                live.remove(&id);
            }
            Some(HealthEvent::Probed(id)) => {
                unprobed_lower.remove(&id);
            }
            Some(HealthEvent::Up(_) | HealthEvent::Refused(..)) => {}
            None if live.len() + 1 >= needed => break,
            None => {
                let missing: Vec<String> = voters
                    .iter()
                    .filter(|(&id, _)| id != me && !live.contains(&id))
                    .map(|(id, addr)| format!("{id}@{addr}"))
                    .collect();
                return Err(Error::QuorumTimeout {
                    timeout: humantime::format_duration(timeout).to_string(),
                    reachable: live.len() + 1,
                    needed,
                    cluster_size: voters.len(),
                    missing: missing.join(", "),
                });
            }
        }
    }
    Ok(live.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_counts_self_once() {
        assert_eq!(quorum_size(1), 1);
        assert_eq!(quorum_size(2), 2);
        assert_eq!(quorum_size(3), 2);
        assert_eq!(quorum_size(4), 3);
        assert_eq!(quorum_size(5), 3);
        assert_eq!(quorum_size(7), 4);
    }

    #[test]
    fn lowest_live_id_campaigns() {
        assert!(campaigns_first(1, &[2, 3]));
        assert!(!campaigns_first(2, &[1]));
        // Node 1 is down: among the live quorum {2, 3}, node 2 is lowest.
        assert!(campaigns_first(2, &[3]));
        assert!(!campaigns_first(3, &[2]));
        // A single-node cluster campaigns at once.
        assert!(campaigns_first(1, &[]));
    }
}
