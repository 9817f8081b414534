//! A compact directed graph of typed edges, with the two algorithms cycle checking needs:
//! Tarjan's strongly connected components and a cheapest-path search to pull one concrete
//! cycle out of a component.
//!
//! Nodes are dense `u32` indices; edges sit in one array sorted by source (compressed sparse
//! rows), so a 100k-transaction graph is a few flat vectors. Every algorithm takes an
//! [`EdgeMask`] that selects which edge kinds it may follow, so one graph serves every question
//! ("is there a cycle of ww edges only?", "of ww and wr?", …).
//!
//! Both algorithms are iterative: histories are long and recursion would overflow the stack.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The kind of a graph edge. `Continuation` leaves a per-key helper node (see
/// `list_append::inference`); its meaning is the kind of the edge that entered that node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GraphEdgeKind {
    WriteWrite,
    WriteRead,
    ReadWrite,
    Realtime,
    Continuation,
}

impl GraphEdgeKind {
    fn bit(self) -> u8 {
        match self {
            GraphEdgeKind::WriteWrite => 1,
            GraphEdgeKind::WriteRead => 2,
            GraphEdgeKind::ReadWrite => 4,
            GraphEdgeKind::Realtime => 8,
            GraphEdgeKind::Continuation => 16,
        }
    }
}

/// A set of edge kinds an algorithm may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EdgeMask(u8);

impl EdgeMask {
    pub(crate) const ALL: EdgeMask = EdgeMask(31);

    pub(crate) fn of(kinds: &[GraphEdgeKind]) -> EdgeMask {
        EdgeMask(kinds.iter().fold(0, |bits, kind| bits | kind.bit()))
    }

    pub(crate) fn contains(self, kind: GraphEdgeKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) target: u32,
    pub(crate) kind: GraphEdgeKind,
    /// The key that implies the edge; meaningless for real-time and continuation edges.
    pub(crate) key: u64,
}

/// One step of a path: the node it leaves and the edge it follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PathStep {
    pub(crate) source: u32,
    pub(crate) edge: Edge,
}

#[derive(Debug)]
pub(crate) struct GraphBuilder {
    n_nodes: usize,
    steps: Vec<PathStep>,
}

impl GraphBuilder {
    pub(crate) fn new(n_nodes: usize) -> Self {
        assert!(
            n_nodes < u32::MAX as usize,
            "graph of {n_nodes} nodes does not fit u32 indices"
        );
        GraphBuilder {
            n_nodes,
            steps: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, source: u32, target: u32, kind: GraphEdgeKind, key: u64) {
        debug_assert!((source as usize) < self.n_nodes && (target as usize) < self.n_nodes);
        debug_assert_ne!(source, target, "self edges carry no ordering information");
        self.steps.push(PathStep {
            source,
            edge: Edge { target, kind, key },
        });
    }

    pub(crate) fn build(self) -> Graph {
        // Counting sort by source: offsets[node]..offsets[node + 1] are the node's edges.
        let mut offsets = vec![0usize; self.n_nodes + 1];
        for step in &self.steps {
            offsets[step.source as usize + 1] += 1;
        }
        for node in 0..self.n_nodes {
            offsets[node + 1] += offsets[node];
        }
        let mut cursor = offsets.clone();
        let placeholder = Edge {
            target: 0,
            kind: GraphEdgeKind::Continuation,
            key: 0,
        };
        let mut edges = vec![placeholder; self.steps.len()];
        for step in &self.steps {
            let slot = &mut cursor[step.source as usize];
            edges[*slot] = step.edge;
            *slot += 1;
        }
        Graph { offsets, edges }
    }
}

#[derive(Debug)]
pub(crate) struct Graph {
    offsets: Vec<usize>,
    edges: Vec<Edge>,
}

const UNVISITED: u32 = u32::MAX;

impl Graph {
    pub(crate) fn n_nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(crate) fn out_edges(&self, node: u32) -> &[Edge] {
        &self.edges[self.offsets[node as usize]..self.offsets[node as usize + 1]]
    }

    /// The strongly connected components of two or more nodes, following `mask` edges only.
    /// (The graph has no self edges, so single nodes are never cyclic.)
    pub(crate) fn strongly_connected_components(&self, mask: EdgeMask) -> Vec<Vec<u32>> {
        let n_nodes = self.n_nodes();
        let mut index = vec![UNVISITED; n_nodes];
        let mut lowlink = vec![0u32; n_nodes];
        let mut on_stack = vec![false; n_nodes];
        let mut stack: Vec<u32> = Vec::new();
        // The explicit call stack: (node, position of the next edge to look at).
        let mut calls: Vec<(u32, usize)> = Vec::new();
        let mut components = Vec::new();
        let mut next_index = 0u32;
        for root in 0..n_nodes as u32 {
            if index[root as usize] != UNVISITED {
                continue;
            }
            index[root as usize] = next_index;
            lowlink[root as usize] = next_index;
            next_index += 1;
            stack.push(root);
            on_stack[root as usize] = true;
            calls.push((root, self.offsets[root as usize]));
            while let Some(&mut (node, ref mut cursor)) = calls.last_mut() {
                if *cursor < self.offsets[node as usize + 1] {
                    let edge = self.edges[*cursor];
                    *cursor += 1;
                    if !mask.contains(edge.kind) {
                        continue;
                    }
                    let target = edge.target as usize;
                    if index[target] == UNVISITED {
                        index[target] = next_index;
                        lowlink[target] = next_index;
                        next_index += 1;
                        stack.push(edge.target);
                        on_stack[target] = true;
                        calls.push((edge.target, self.offsets[target]));
                    } else if on_stack[target] {
                        lowlink[node as usize] = lowlink[node as usize].min(index[target]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(parent, _)) = calls.last() {
                    lowlink[parent as usize] = lowlink[parent as usize].min(lowlink[node as usize]);
                }
                if lowlink[node as usize] == index[node as usize] {
                    let mut component = Vec::new();
                    while let Some(member) = stack.pop() {
                        on_stack[member as usize] = false;
                        component.push(member);
                        if member == node {
                            break;
                        }
                    }
                    if component.len() >= 2 {
                        components.push(component);
                    }
                }
            }
        }
        debug_assert!(stack.is_empty());
        components
    }

    /// The subgraph induced by `nodes`, keeping `mask` edges. Node `i` of the result is
    /// `nodes[i]` here.
    pub(crate) fn induced(&self, nodes: &[u32], mask: EdgeMask) -> Graph {
        let mut local_of = std::collections::HashMap::with_capacity(nodes.len());
        for (local, &node) in nodes.iter().enumerate() {
            local_of.insert(node, local as u32);
        }
        let mut builder = GraphBuilder::new(nodes.len());
        for (local, &node) in nodes.iter().enumerate() {
            for edge in self.out_edges(node) {
                if !mask.contains(edge.kind) {
                    continue;
                }
                if let Some(&target) = local_of.get(&edge.target) {
                    builder.add(local as u32, target, edge.kind, edge.key);
                }
            }
        }
        builder.build()
    }

    /// A path from `from` to `to` over `mask` edges with the fewest read-write edges, then the
    /// fewest edges; `None` if there is none. A path from a node to itself is not searched for.
    pub(crate) fn cheapest_path(
        &self,
        from: u32,
        to: u32,
        mask: EdgeMask,
    ) -> Option<Vec<PathStep>> {
        const READ_WRITE_COST: u64 = 1 << 32;
        let n_nodes = self.n_nodes();
        let mut cost = vec![u64::MAX; n_nodes];
        let mut parent: Vec<Option<PathStep>> = vec![None; n_nodes];
        let mut frontier = BinaryHeap::new();
        cost[from as usize] = 0;
        frontier.push(Reverse((0u64, from)));
        while let Some(Reverse((node_cost, node))) = frontier.pop() {
            if node == to {
                break;
            }
            if node_cost > cost[node as usize] {
                continue;
            }
            for edge in self.out_edges(node) {
                if !mask.contains(edge.kind) {
                    continue;
                }
                let step_cost = match edge.kind {
                    GraphEdgeKind::ReadWrite => READ_WRITE_COST,
                    GraphEdgeKind::Continuation => 0,
                    _ => 1,
                };
                let target_cost = node_cost + step_cost;
                if target_cost < cost[edge.target as usize] {
                    cost[edge.target as usize] = target_cost;
                    parent[edge.target as usize] = Some(PathStep {
                        source: node,
                        edge: *edge,
                    });
                    frontier.push(Reverse((target_cost, edge.target)));
                }
            }
        }
        if cost[to as usize] == u64::MAX {
            return None;
        }
        let mut path = Vec::new();
        let mut node = to;
        while node != from {
            let step = parent[node as usize]?;
            path.push(step);
            node = step.source;
        }
        path.reverse();
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n_nodes: usize, edges: &[(u32, u32, GraphEdgeKind)]) -> Graph {
        let mut builder = GraphBuilder::new(n_nodes);
        for &(source, target, kind) in edges {
            builder.add(source, target, kind, 0);
        }
        builder.build()
    }

    #[test]
    fn components_follow_the_mask() {
        use GraphEdgeKind::*;
        let graph = graph(
            4,
            &[(0, 1, WriteWrite), (1, 0, ReadWrite), (2, 3, WriteRead)],
        );
        let mut all = graph.strongly_connected_components(EdgeMask::ALL);
        all.iter_mut().for_each(|component| component.sort());
        assert_eq!(all, vec![vec![0, 1]]);
        assert!(
            graph
                .strongly_connected_components(EdgeMask::of(&[WriteWrite]))
                .is_empty()
        );
    }

    #[test]
    fn cheapest_path_avoids_read_write_edges() {
        use GraphEdgeKind::*;
        // 0 -rw-> 3 directly, or 0 -ww-> 1 -ww-> 2 -wr-> 3 without anti-dependencies.
        let graph = graph(
            4,
            &[
                (0, 3, ReadWrite),
                (0, 1, WriteWrite),
                (1, 2, WriteWrite),
                (2, 3, WriteRead),
            ],
        );
        let path = graph.cheapest_path(0, 3, EdgeMask::ALL).unwrap();
        let nodes: Vec<u32> = path.iter().map(|step| step.edge.target).collect();
        assert_eq!(nodes, vec![1, 2, 3]);
        assert!(graph.cheapest_path(3, 0, EdgeMask::ALL).is_none());
    }

    #[test]
    fn deep_chains_do_not_overflow_the_stack() {
        let n_nodes = 200_000u32;
        let mut builder = GraphBuilder::new(n_nodes as usize);
        for node in 0..n_nodes {
            builder.add(node, (node + 1) % n_nodes, GraphEdgeKind::WriteWrite, 0);
        }
        let components = builder.build().strongly_connected_components(EdgeMask::ALL);
        assert_eq!(components.len(), 1);
        assert_eq!(components[0].len(), n_nodes as usize);
    }
}
