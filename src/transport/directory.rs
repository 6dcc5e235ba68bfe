//! Who may talk to this node: the peers of the live membership, kept current
//! by the layer above (from the replicated member records), and the rules
//! that admit or refuse a `Hello`.
//!
//! The transport reads it on every handshake; nothing here imports the Raft
//! or membership layers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::wire::RejectCode;

/// One peer this node talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntry {
    /// Its peer (Raft) address.
    pub addr: SocketAddr,
    /// True once the cluster saw it hold the log: from then on a `Hello`
    /// from it without state means its data dir was lost.
    pub joined: bool,
}

/// The membership as the transport needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// This node's cluster id, once its cluster formed (or it joined one).
    pub cluster_id: Option<String>,
    /// Every peer (not this node).
    pub peers: BTreeMap<u64, PeerEntry>,
    /// Ids removed from the cluster: never admitted again.
    pub removed: BTreeSet<u64>,
    /// True if this node has Raft state (false only while a fresh node
    /// finds out whether to bootstrap, join or refuse).
    pub has_state: bool,
}

/// A directory shared between the transport, the health monitor and the
/// task that keeps it current. Held briefly, never across an await.
pub type SharedDirectory = Arc<RwLock<Directory>>;

/// What a `Hello` carries that admission looks at.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The id it claims.
    pub from: u64,
    /// Its cluster id, if it knows one.
    pub cluster_id: Option<&'a str>,
    /// Whether it has Raft state.
    pub has_state: bool,
}

impl Directory {
    /// Admits a dialer, or says why not (with a code the dialer acts on).
    pub fn admit(&self, cluster: &str, caller: Caller<'_>) -> Result<(), (RejectCode, String)> {
        let from = caller.from;
        if self.removed.contains(&from) {
            return Err((
                RejectCode::Removed,
                format!("node {from} was removed from cluster {cluster:?}; its id may not rejoin"),
            ));
        }
        if let (Some(theirs), Some(ours)) = (caller.cluster_id, self.cluster_id.as_deref()) {
            if theirs != ours {
                return Err((
                    RejectCode::OtherCluster,
                    format!(
                        "node {from} belongs to cluster id {theirs:?}, this is cluster {cluster:?} \
                         with cluster id {ours:?}"
                    ),
                ));
            }
        }
        let Some(peer) = self.peers.get(&from) else {
            return Err((
                RejectCode::NotMember,
                format!("node id {from} is not a member of cluster {cluster:?}"),
            ));
        };
        if self.cluster_id.is_some()
            && caller.cluster_id.is_none()
            && !caller.has_state
            && peer.joined
        {
            return Err((
                RejectCode::StateLost,
                format!(
                    "node {from} is a member of cluster {cluster:?} that held its log, and it \
                     started without any state"
                ),
            ));
        }
        Ok(())
    }

    /// The address of a peer.
    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        self.peers.get(&id).map(|p| p.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let entry = |port: u16, joined| PeerEntry {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            joined,
        };
        Directory {
            cluster_id: Some("abc".into()),
            peers: [(2, entry(2, true)), (3, entry(3, false))].into(),
            removed: [9].into(),
            has_state: true,
        }
    }

    fn caller(from: u64, cluster_id: Option<&str>, has_state: bool) -> Caller<'_> {
        Caller {
            from,
            cluster_id,
            has_state,
        }
    }

    #[test]
    fn admission_follows_the_membership() {
        let d = dir();
        let code = |c| d.admit("c3", c).map_err(|(code, _)| code);
        assert_eq!(code(caller(2, Some("abc"), true)), Ok(()));
        // A member that holds state but never learned the id: fine.
        assert_eq!(code(caller(2, None, true)), Ok(()));
        // A joined member with no state at all: its data dir was lost.
        assert_eq!(code(caller(2, None, false)), Err(RejectCode::StateLost));
        // A member that never joined may start empty (it is new).
        assert_eq!(code(caller(3, None, false)), Ok(()));
        assert_eq!(code(caller(4, None, false)), Err(RejectCode::NotMember));
        assert_eq!(code(caller(9, Some("abc"), true)), Err(RejectCode::Removed));
        assert_eq!(
            code(caller(2, Some("xyz"), true)),
            Err(RejectCode::OtherCluster)
        );
        // Before the cluster formed, the file's peers are let in as before.
        let mut fresh = d.clone();
        fresh.cluster_id = None;
        assert_eq!(
            fresh.admit("c3", caller(2, None, false)).map_err(|e| e.0),
            Ok(())
        );
    }
}
