//! The static topology of one epoch: shards (token ranges), their replicas, the fast-path
//! electorate of each, and the quorum sizes the protocol needs.
//!
//! Quorum sizes follow the reference design (r replicas, electorate e ⊆ replicas):
//!
//! ```text
//!   f       = (r - 1) / 2
//!   slowQ   = r - f                         any two slow quorums intersect
//!   fastQ   = (f + e) / 2 + 1               standard; requires e >= r - f
//!   fastQ'  = max((e + r - slowQ + 1) / 2,  coordinator votes: the coordinator is an
//!                 r / 2 + 1)                 electorate member and its own vote is free
//!   fastReject = 1 + e - fastQ              this many non-votes make the fast path impossible
//! ```
//!
//! The coordinator-votes variant ("privileged coordinator") gives fastQ = 2 for RF=3, so one
//! slow replica does not push every transaction onto the slow path.

use concord_storage::partitioner::{Token, TokenRange};

use crate::timestamp::{Epoch, NodeId};
use crate::txn::Key;

/// Index of a shard within its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

/// How the fast-path quorum is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FastPathMode {
    /// The reference rule: fastQ electorate votes, the coordinator's own vote counts like any.
    Standard,
    /// A coordinator that is an electorate member of the shard votes for its own t0, which
    /// shrinks the fast quorum (to 2 of 3 at RF=3).
    CoordinatorVotes,
}

/// Quorum sizes of one shard for one coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorums {
    pub slow: usize,
    pub fast: usize,
    /// Electorate non-votes that make the fast path impossible.
    pub fast_reject: usize,
}

/// Computes quorum sizes for `replica_count` replicas and `electorate_count` electorate members.
///
/// # Panics
/// If the electorate is smaller than a slow quorum or larger than the replica set.
pub fn quorums(replica_count: usize, electorate_count: usize, privileged: bool) -> Quorums {
    assert!(replica_count >= 1);
    assert!(electorate_count <= replica_count);
    let f = (replica_count - 1) / 2;
    let slow = replica_count - f;
    assert!(
        electorate_count >= slow,
        "the electorate must hold a slow quorum"
    );
    let fast = if privileged {
        (electorate_count + replica_count - slow)
            .div_ceil(2)
            .max(replica_count / 2 + 1)
    } else {
        (f + electorate_count) / 2 + 1
    };
    assert!(fast <= electorate_count && fast >= slow.min(electorate_count));
    Quorums {
        slow,
        fast,
        fast_reject: 1 + electorate_count - fast,
    }
}

/// One shard: a token range and the nodes that replicate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: ShardId,
    pub range: TokenRange,
    pub replicas: Vec<NodeId>,
    /// The fast-path electorate, a subset of `replicas`.
    pub electorate: Vec<NodeId>,
}

impl Shard {
    /// Returns the quorum sizes that apply when `coordinator` coordinates.
    pub fn quorums(&self, mode: FastPathMode, coordinator: NodeId) -> Quorums {
        let privileged =
            mode == FastPathMode::CoordinatorVotes && self.electorate.contains(&coordinator);
        quorums(self.replicas.len(), self.electorate.len(), privileged)
    }

    pub fn is_replica(&self, node: NodeId) -> bool {
        self.replicas.contains(&node)
    }

    pub fn is_elector(&self, node: NodeId) -> bool {
        self.electorate.contains(&node)
    }
}

/// The topology of one epoch. Static: epochs do not change in this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub epoch: Epoch,
    pub shards: Vec<Shard>,
    pub fast_path: FastPathMode,
}

/// The largest replication factor the protocol sizes its trackers for.
pub const REPLICAS_PER_SHARD_MAX: usize = 9;

impl Topology {
    /// Splits the ring into `shard_count` shards over `node_count` nodes, each shard replicated
    /// on `replication_factor` consecutive nodes; the electorate is every replica.
    ///
    /// # Panics
    /// If the replication factor exceeds the node count or [`REPLICAS_PER_SHARD_MAX`].
    pub fn ring(
        node_count: u32,
        shard_count: usize,
        replication_factor: usize,
        fast_path: FastPathMode,
    ) -> Topology {
        assert!(replication_factor >= 1 && replication_factor <= node_count as usize);
        assert!(replication_factor <= REPLICAS_PER_SHARD_MAX);
        let shards = TokenRange::full_ring()
            .split_evenly(shard_count)
            .into_iter()
            .enumerate()
            .map(|(shard_idx, range)| {
                let replicas: Vec<NodeId> = (0..replication_factor)
                    .map(|offset| NodeId(1 + ((shard_idx + offset) as u32 % node_count)))
                    .collect();
                Shard {
                    id: ShardId(shard_idx as u32),
                    range,
                    electorate: replicas.clone(),
                    replicas,
                }
            })
            .collect();
        Topology {
            epoch: Epoch(1),
            shards,
            fast_path,
        }
    }

    /// Returns the shard owning `token`.
    ///
    /// # Panics
    /// If no shard owns it (the shards must cover the ring).
    pub fn shard_for_token(&self, token: Token) -> &Shard {
        let shard = self.shards.iter().find(|shard| shard.range.contains(token));
        shard.expect("the shards of a topology cover the whole ring")
    }

    pub fn shard_for_key(&self, key: &Key) -> &Shard {
        self.shard_for_token(key.token)
    }

    pub fn shard(&self, id: ShardId) -> &Shard {
        &self.shards[id.0 as usize]
    }

    /// The shards touched by `keys`, ascending and without duplicates.
    pub fn shards_for_keys<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = keys
            .into_iter()
            .map(|key| self.shard_for_key(key).id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every node of the topology, ascending.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .shards
            .iter()
            .flat_map(|shard| shard.replicas.iter().copied())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Returns true if `node` replicates the shard of `key`.
    pub fn replicates(&self, node: NodeId, key: &Key) -> bool {
        self.shard_for_key(key).is_replica(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn quorum_sizes() {
        let mut table = String::from("r e privileged | slow fast reject\n");
        for (r, e, privileged) in [
            (1, 1, false),
            (3, 3, false),
            (3, 2, false),
            (3, 3, true),
            (3, 2, true),
            (5, 5, false),
            (5, 3, false),
            (5, 5, true),
            (7, 7, false),
            (7, 7, true),
        ] {
            let q = quorums(r, e, privileged);
            table.push_str(&format!(
                "{r} {e} {privileged:5} | {} {} {}\n",
                q.slow, q.fast, q.fast_reject
            ));
        }
        expect![[r#"
            r e privileged | slow fast reject
            1 1 false | 1 1 1
            3 3 false | 2 3 1
            3 2 false | 2 2 1
            3 3 true  | 2 2 2
            3 2 true  | 2 2 1
            5 5 false | 3 4 2
            5 3 false | 3 3 1
            5 5 true  | 3 4 2
            7 7 false | 4 6 2
            7 7 true  | 4 5 3
        "#]]
        .assert_eq(&table);
    }

    #[test]
    fn ring_places_every_token() {
        let topology = Topology::ring(5, 4, 3, FastPathMode::Standard);
        assert_eq!(topology.shards.len(), 4);
        for token in [i64::MIN + 1, -5, 0, 7, i64::MAX] {
            let shard = topology.shard_for_token(Token(token));
            assert!(shard.range.contains(Token(token)));
            assert_eq!(shard.replicas.len(), 3);
        }
        assert_eq!(topology.nodes().len(), 5);
        let privileged = topology.shards[0].quorums(FastPathMode::CoordinatorVotes, NodeId(1));
        let outsider = topology.shards[0].quorums(FastPathMode::CoordinatorVotes, NodeId(5));
        assert_eq!((privileged.fast, outsider.fast), (2, 3));
    }
}
