//! What a node reads of the cluster metadata: [`ClusterView`], derived from
//! one applied [`ClusterState`] and published (as an `Arc`, on a watch
//! channel) after every applied entry.
//!
//! The ring is the tokens of the members that are `Up`; token `t` ends the
//! range `(previous token, t]`, which its node owns (Cassandra's convention).
//! A keyspace with replication factor RF places each range on the owner and
//! the next nodes met walking the ring clockwise, skipping nodes already
//! chosen, until RF distinct nodes (or every node that is up) are chosen.
//!
//! ```text
//!   ring: t0(n1) t1(n2) t2(n1) t3(n3)      range (t3, t0] ─► n1, n2, n3 (RF 3)
//!                                          range (t0, t1] ─► n2, n1      (RF 2)
//! ```

use std::collections::BTreeMap;

use concord_storage::partitioner::{Token, TokenRange};
use concord_txn::timestamp::{Epoch, NodeId};
use concord_txn::topology::{FastPathMode, REPLICAS_PER_SHARD_MAX, Shard, ShardId, Topology};

use super::state::{ClusterState, NodeIdx, NodeStatus};

/// The replication factor of the epoch's transaction topology when no
/// keyspace is defined yet.
pub const TOPOLOGY_REPLICATION_FACTOR_DEFAULT: u32 = 3;

/// One range of the ring and the nodes that replicate it, owner first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeReplicas {
    pub range: TokenRange,
    pub replicas: Vec<NodeIdx>,
}

/// The replicas of every range of the ring for one replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The factor asked for; a range has fewer replicas only when fewer
    /// nodes are up.
    pub replication_factor: u32,
    /// Ranges in ring order; together they cover the ring exactly once.
    pub ranges: Vec<RangeReplicas>,
}

impl Placement {
    /// The replicas of the range holding `token`.
    pub fn replicas_for(&self, token: Token) -> Option<&[NodeIdx]> {
        self.ranges
            .iter()
            .find(|entry| entry.range.contains(token))
            .map(|entry| entry.replicas.as_slice())
    }
}

/// The cluster as one node sees it after applying a prefix of the metadata
/// log. Immutable; a new one is published for every applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The Raft log index of the last entry applied (0 before any).
    pub applied_index: u64,
    /// The replicated state itself.
    pub state: ClusterState,
    /// `(token, owner)` of every up node's tokens, ascending by token.
    pub ring: Vec<(Token, NodeIdx)>,
    /// Placement per keyspace.
    pub placements: BTreeMap<String, Placement>,
    /// The transaction layer's topology for this epoch: the ring's ranges
    /// as shards, replicated with the largest replication factor of any
    /// keyspace ([`TOPOLOGY_REPLICATION_FACTOR_DEFAULT`] without keyspaces),
    /// every replica an elector. `None` while no node is up.
    pub topology: Option<Topology>,
}

impl ClusterView {
    /// Derives the view of `state` applied up to `applied_index`.
    pub fn new(applied_index: u64, state: ClusterState) -> ClusterView {
        let ring = ring_of(&state);
        let placements = state
            .keyspaces
            .iter()
            .map(|(name, rf)| (name.clone(), place(&ring, *rf)))
            .collect();
        let topology = (!ring.is_empty()).then(|| {
            let placement = place(&ring, topology_replication_factor(&state));
            topology_of(state.epoch, &placement)
        });
        ClusterView {
            applied_index,
            state,
            ring,
            placements,
            topology,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    pub fn schema_version(&self) -> u64 {
        self.state.schema_version
    }

    /// The replicas of `token` in `keyspace`, or `None` for an unknown
    /// keyspace or an empty ring.
    pub fn replicas(&self, keyspace: &str, token: Token) -> Option<&[NodeIdx]> {
        self.placements.get(keyspace)?.replicas_for(token)
    }
}

/// The replication factor of the transaction topology: the largest of any keyspace.
fn topology_replication_factor(state: &ClusterState) -> u32 {
    state
        .keyspaces
        .values()
        .copied()
        .max()
        .unwrap_or(TOPOLOGY_REPLICATION_FACTOR_DEFAULT)
}

/// The ring of `state`'s up members, ascending by token.
fn ring_of(state: &ClusterState) -> Vec<(Token, NodeIdx)> {
    let mut ring: Vec<(Token, NodeIdx)> = state
        .members
        .iter()
        .filter(|(_, member)| member.status == NodeStatus::Up)
        .flat_map(|(node, member)| member.tokens.iter().map(move |token| (*token, *node)))
        .collect();
    ring.sort_unstable();
    ring
}

/// Whether both states place the transaction topology's ranges on the same replicas.
pub fn same_placement(before: &ClusterState, after: &ClusterState) -> bool {
    place(&ring_of(before), topology_replication_factor(before))
        == place(&ring_of(after), topology_replication_factor(after))
}

/// A range some node replicates in `after`'s transaction topology (where Accord applies the
/// rows) but not in `before`'s, with the nodes that replicated it in `before` (where to
/// fetch its rows from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GainedRange {
    pub node: NodeIdx,
    pub range: TokenRange,
    pub sources: Vec<NodeIdx>,
}

/// Every range a node gains from `before` to `after`, adjacent pieces with the same node and
/// sources merged. Placement is constant on each range between consecutive tokens of either
/// ring, so comparing both placements on those pieces covers the whole ring. Empty when
/// either ring is.
pub fn gained_ranges(before: &ClusterState, after: &ClusterState) -> Vec<GainedRange> {
    let (ring_before, ring_after) = (ring_of(before), ring_of(after));
    if ring_before.is_empty() || ring_after.is_empty() {
        return Vec::new();
    }
    let placed_before = place(&ring_before, topology_replication_factor(before));
    let placed_after = place(&ring_after, topology_replication_factor(after));
    let mut tokens: Vec<Token> = ring_before
        .iter()
        .chain(&ring_after)
        .map(|(token, _)| *token)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let mut gained: Vec<GainedRange> = Vec::new();
    for (idx, end) in tokens.iter().enumerate() {
        let start = tokens[(idx + tokens.len() - 1) % tokens.len()];
        let had = placed_before.replicas_for(*end).unwrap_or(&[]);
        for node in placed_after.replicas_for(*end).unwrap_or(&[]) {
            if had.contains(node) {
                continue;
            }
            let merged = gained.iter_mut().rev().find(|piece| piece.node == *node);
            match merged {
                Some(piece) if piece.range.end == start && piece.sources == had => {
                    piece.range.end = *end;
                }
                _ => gained.push(GainedRange {
                    node: *node,
                    range: TokenRange {
                        start: if tokens.len() == 1 { *end } else { start },
                        end: *end,
                    },
                    sources: had.to_vec(),
                }),
            }
        }
    }
    gained
}

/// Places every range of `ring` on `replication_factor` distinct nodes.
pub fn place(ring: &[(Token, NodeIdx)], replication_factor: u32) -> Placement {
    let node_count = {
        let mut nodes: Vec<NodeIdx> = ring.iter().map(|(_, node)| *node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    };
    let wanted = (replication_factor as usize).min(node_count);
    let ranges = (0..ring.len())
        .map(|idx| {
            let previous = ring[(idx + ring.len() - 1) % ring.len()].0;
            let range = TokenRange {
                start: previous,
                end: ring[idx].0,
            };
            let mut replicas: Vec<NodeIdx> = Vec::with_capacity(wanted);
            for step in 0..ring.len() {
                if replicas.len() == wanted {
                    break;
                }
                let node = ring[(idx + step) % ring.len()].1;
                if !replicas.contains(&node) {
                    replicas.push(node);
                }
            }
            RangeReplicas { range, replicas }
        })
        .collect();
    Placement {
        replication_factor,
        ranges,
    }
}

fn topology_of(epoch: u64, placement: &Placement) -> Topology {
    let shards = placement
        .ranges
        .iter()
        .enumerate()
        .map(|(idx, entry)| {
            let replicas: Vec<NodeId> = entry
                .replicas
                .iter()
                .take(REPLICAS_PER_SHARD_MAX)
                .map(|node| NodeId(*node))
                .collect();
            Shard {
                id: ShardId(idx as u32),
                range: entry.range,
                electorate: replicas.clone(),
                replicas,
            }
        })
        .collect();
    Topology {
        epoch: Epoch(epoch),
        shards,
        fast_path: FastPathMode::CoordinatorVotes,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::meta::state::{Command, VNODES_PER_NODE_DEFAULT, default_tokens};

    fn cluster(nodes: u32, keyspaces: &[(&str, u32)]) -> ClusterView {
        let mut state = ClusterState::default();
        for node in 1..=nodes {
            state.apply(&Command::AddNode {
                node,
                address: format!("10.0.0.{node}:7000"),
                tokens: default_tokens(node, VNODES_PER_NODE_DEFAULT),
                endpoints: Default::default(),
            });
            state.apply(&Command::NodeUp { node });
        }
        for (name, rf) in keyspaces {
            state.apply(&Command::SetReplication {
                keyspace: (*name).into(),
                replication_factor: *rf,
            });
        }
        ClusterView::new(1, state)
    }

    /// Every token of a sample lies in exactly one range.
    fn assert_covers_ring(placement: &Placement) {
        let samples = [i64::MIN + 1, -1 << 40, -7, 0, 1, 1 << 50, i64::MAX];
        let boundaries = placement.ranges.iter().map(|r| r.range.end.0);
        for token in samples.into_iter().chain(boundaries) {
            let owners = placement
                .ranges
                .iter()
                .filter(|r| r.range.contains(Token(token)))
                .count();
            assert_eq!(owners, 1, "token {token} is in {owners} ranges");
        }
    }

    #[test]
    fn rf3_on_three_nodes_puts_every_range_everywhere() {
        let view = cluster(3, &[("ks", 3)]);
        let placement = &view.placements["ks"];
        assert_eq!(placement.ranges.len(), 3 * VNODES_PER_NODE_DEFAULT);
        assert_covers_ring(placement);
        for entry in &placement.ranges {
            let set: BTreeSet<_> = entry.replicas.iter().copied().collect();
            assert_eq!(set, BTreeSet::from([1, 2, 3]), "{:?}", entry);
            assert_eq!(entry.replicas.len(), 3);
        }
        let topology = view.topology.as_ref().expect("a topology");
        assert_eq!(topology.epoch, Epoch(view.epoch()));
        assert_eq!(topology.shards.len(), placement.ranges.len());
        assert!(topology.shards.iter().all(|s| s.replicas.len() == 3));
    }

    #[test]
    fn rf2_spreads_and_never_repeats_a_node() {
        let view = cluster(4, &[("two", 2), ("one", 1)]);
        let placement = &view.placements["two"];
        assert_covers_ring(placement);
        let mut per_node: BTreeMap<NodeIdx, usize> = BTreeMap::new();
        for entry in &placement.ranges {
            assert_eq!(entry.replicas.len(), 2);
            assert_ne!(entry.replicas[0], entry.replicas[1], "{entry:?}");
            // The owner (the node of the range's end token) comes first.
            let owner = view
                .ring
                .iter()
                .find(|(t, _)| *t == entry.range.end)
                .map(|(_, n)| *n);
            assert_eq!(Some(entry.replicas[0]), owner);
            for node in &entry.replicas {
                *per_node.entry(*node).or_default() += 1;
            }
        }
        assert_eq!(per_node.len(), 4, "every node holds ranges: {per_node:?}");
        assert!(per_node.values().all(|count| *count >= 8), "{per_node:?}");
        // RF 1 keeps only the owner; the topology uses the largest RF.
        assert!(
            view.placements["one"]
                .ranges
                .iter()
                .all(|r| r.replicas.len() == 1)
        );
        let topology = view.topology.as_ref().expect("a topology");
        assert!(topology.shards.iter().all(|s| s.replicas.len() == 2));
        let shard = topology.shard_for_token(Token(12345));
        let replicas: Vec<u32> = shard.replicas.iter().map(|n| n.0).collect();
        assert_eq!(
            Some(replicas.as_slice()),
            view.replicas("two", Token(12345))
        );
    }

    #[test]
    fn rf_above_node_count_uses_every_node_once() {
        let view = cluster(2, &[("ks", 3)]);
        for entry in &view.placements["ks"].ranges {
            let set: BTreeSet<_> = entry.replicas.iter().copied().collect();
            assert_eq!(set.len(), entry.replicas.len());
            assert_eq!(set, BTreeSet::from([1, 2]));
        }
        let one = cluster(1, &[]);
        assert_eq!(one.ring.len(), VNODES_PER_NODE_DEFAULT);
        assert!(cluster(0, &[]).topology.is_none());
    }

    #[test]
    fn gained_ranges_are_exactly_where_a_node_becomes_a_replica() {
        let before = cluster(3, &[("ks", 3)]).state;
        let after = cluster(4, &[("ks", 3)]).state;
        let gained = gained_ranges(&before, &after);
        assert!(!gained.is_empty());
        assert!(gained.iter().all(|piece| piece.node == 4), "{gained:?}");
        let placed_before = place(&ring_of(&before), 3);
        let placed_after = place(&ring_of(&after), 3);
        // Probe every ring token and its successor: 4 replicates it after (and not before)
        // exactly when a gained piece holds it, and its sources are the replicas before.
        for (token, _) in ring_of(&after).iter().chain(&ring_of(&before)) {
            for probe in [*token, Token(token.0.wrapping_add(1))] {
                let now = placed_after.replicas_for(probe).expect("placed");
                let had = placed_before.replicas_for(probe).expect("placed");
                let piece = gained.iter().find(|piece| piece.range.contains(probe));
                assert_eq!(
                    now.contains(&4) && !had.contains(&4),
                    piece.is_some(),
                    "{probe}"
                );
                if let Some(piece) = piece {
                    assert_eq!(piece.sources, had);
                }
            }
        }
        // Pieces do not overlap.
        for (i, a) in gained.iter().enumerate() {
            for b in &gained[i + 1..] {
                assert!(!a.range.contains(b.range.end) && !b.range.contains(a.range.end));
            }
        }
        // Nothing is gained when nothing moves; removing a node of four gains the others.
        assert!(gained_ranges(&after, &after).is_empty());
        assert!(same_placement(&after, &after));
        let gained = gained_ranges(&after, &before);
        assert!(!gained.is_empty() && gained.iter().all(|piece| piece.node != 4));
        assert!(gained.iter().all(|piece| piece.sources.contains(&4)));
    }
}
