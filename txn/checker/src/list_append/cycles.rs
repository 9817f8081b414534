//! Finding dependency cycles and naming them.
//!
//! Two passes, each over Tarjan's strongly connected components (SCCs):
//!
//! 1. **Dependency edges only** (ww, wr, rw). Each SCC is a serializability violation; one
//!    concrete cycle is pulled out of it, trying the most severe kind first:
//!    - `G0`: an SCC of the ww-only subgraph; any cycle in it.
//!    - `G1c`: an SCC of the ww+wr subgraph that contains a wr edge; a cycle through that edge.
//!    - `G-single`: an rw edge `a -> b` with a ww+wr path back from `b` to `a`. Tried first for
//!      rw edges whose ends share a ww+wr SCC (a path surely exists), then for a bounded
//!      number of others.
//!    - `G2-item`: otherwise, a cycle through some rw edge with the fewest rw edges.
//! 2. **All edges, real time included** (strict mode). An SCC that contains a real-time edge
//!    whose ends are not already in one dependency-only SCC violates strict serializability
//!    alone; the cheapest cycle through that edge is named by its other edges: `G0-realtime`,
//!    `G1c-realtime`, `G-single-realtime` or `G2-item-realtime`.
//!
//! So each SCC yields one anomaly. Cycles are searched in the SCC's induced subgraph, so the
//! work is linear in the size of the SCC (times the bounded number of G-single attempts).

use crate::graph::{EdgeMask, Graph, GraphEdgeKind, PathStep};
use crate::list_append::inference::Analysis;
use crate::list_append::{ListAppendOptions, Transaction};
use crate::report::{AnomalyKind, CycleEdge, EdgeKind, Report};

const NO_COMPONENT: u32 = u32::MAX;

fn write_write() -> EdgeMask {
    EdgeMask::of(&[GraphEdgeKind::WriteWrite, GraphEdgeKind::Continuation])
}

fn write_write_read() -> EdgeMask {
    use GraphEdgeKind::*;
    EdgeMask::of(&[WriteWrite, WriteRead, Continuation])
}

fn dependencies() -> EdgeMask {
    use GraphEdgeKind::*;
    EdgeMask::of(&[WriteWrite, WriteRead, ReadWrite, Continuation])
}

pub(super) fn report_cycles(
    analysis: &Analysis<'_>,
    graph: &Graph,
    options: &ListAppendOptions,
    report: &mut Report<Transaction>,
) {
    let mut dependency_component_of = vec![NO_COMPONENT; graph.n_nodes()];
    let components = graph.strongly_connected_components(dependencies());
    for (component_idx, component) in components.iter().enumerate() {
        for &node in component {
            dependency_component_of[node as usize] = component_idx as u32;
        }
        let local = graph.induced(component, dependencies());
        if let Some(cycle) = dependency_cycle(&local, options) {
            push_cycle(analysis, component, &cycle, report);
        }
    }
    let has_realtime_edges = (0..graph.n_nodes() as u32).any(|node| {
        graph
            .out_edges(node)
            .iter()
            .any(|edge| edge.kind == GraphEdgeKind::Realtime)
    });
    if !has_realtime_edges {
        return;
    }
    for component in graph.strongly_connected_components(EdgeMask::ALL) {
        let local = graph.induced(&component, EdgeMask::ALL);
        let essential = |step: &PathStep| {
            let source = dependency_component_of[component[step.source as usize] as usize];
            let target = dependency_component_of[component[step.edge.target as usize] as usize];
            source == NO_COMPONENT || source != target
        };
        let Some(step) = edges_of_kind(&local, GraphEdgeKind::Realtime).find(essential) else {
            continue;
        };
        if let Some(cycle) = cycle_through(&local, step, EdgeMask::ALL) {
            push_cycle(analysis, &component, &cycle, report);
        }
    }
}

fn edges_of_kind(local: &Graph, kind: GraphEdgeKind) -> impl Iterator<Item = PathStep> + '_ {
    (0..local.n_nodes() as u32).flat_map(move |source| {
        let edges = local.out_edges(source).iter();
        edges
            .filter(move |edge| edge.kind == kind)
            .map(move |&edge| PathStep { source, edge })
    })
}

/// The cycle made of `step` and a cheapest path back from its target to its source.
fn cycle_through(local: &Graph, step: PathStep, mask: EdgeMask) -> Option<Vec<PathStep>> {
    let path_back = local.cheapest_path(step.edge.target, step.source, mask)?;
    let mut cycle = Vec::with_capacity(path_back.len() + 1);
    cycle.push(step);
    cycle.extend(path_back);
    Some(cycle)
}

/// Component index per node of `local` under `mask` (`NO_COMPONENT` for acyclic nodes).
fn component_ids(local: &Graph, mask: EdgeMask) -> Vec<u32> {
    let mut component_of = vec![NO_COMPONENT; local.n_nodes()];
    for (component_idx, component) in local.strongly_connected_components(mask).iter().enumerate() {
        for &node in component {
            component_of[node as usize] = component_idx as u32;
        }
    }
    component_of
}

fn within_one_component(component_of: &[u32], step: &PathStep) -> bool {
    let source = component_of[step.source as usize];
    source != NO_COMPONENT && source == component_of[step.edge.target as usize]
}

/// One cycle of a dependency-only SCC (given as its induced subgraph), most severe kind first.
fn dependency_cycle(local: &Graph, options: &ListAppendOptions) -> Option<Vec<PathStep>> {
    use GraphEdgeKind::*;
    // G0: any edge inside an SCC of the ww subgraph closes a ww cycle.
    let write_write_component_of = component_ids(local, write_write());
    let write_write_steps =
        edges_of_kind(local, WriteWrite).chain(edges_of_kind(local, Continuation));
    for step in write_write_steps {
        if within_one_component(&write_write_component_of, &step)
            && let Some(cycle) = cycle_through(local, step, write_write())
        {
            return Some(cycle);
        }
    }
    // G1c: a wr edge inside an SCC of the ww+wr subgraph.
    let write_read_component_of = component_ids(local, write_write_read());
    for step in edges_of_kind(local, WriteRead) {
        if within_one_component(&write_read_component_of, &step)
            && let Some(cycle) = cycle_through(local, step, write_write_read())
        {
            return Some(cycle);
        }
    }
    // G-single: one rw edge plus a ww+wr path back.
    for step in edges_of_kind(local, ReadWrite) {
        if within_one_component(&write_read_component_of, &step)
            && let Some(cycle) = cycle_through(local, step, write_write_read())
        {
            return Some(cycle);
        }
    }
    let attempts =
        edges_of_kind(local, ReadWrite).take(options.single_anti_dependency_searches_max);
    for step in attempts {
        if let Some(cycle) = cycle_through(local, step, write_write_read()) {
            return Some(cycle);
        }
    }
    // G2-item: the fewest rw edges through some rw edge.
    let step = edges_of_kind(local, ReadWrite).next()?;
    cycle_through(local, step, dependencies())
}

/// Converts a cycle of the SCC `component` (local node ids) to reported edges, folds helper
/// nodes away, names it and adds it to the report.
fn push_cycle(
    analysis: &Analysis<'_>,
    component: &[u32],
    cycle: &[PathStep],
    report: &mut Report<Transaction>,
) {
    let n_operations = analysis.n_operations() as u32;
    let global = |local: u32| component[local as usize];
    let is_helper = |local: u32| global(local) >= n_operations;
    let Some(start) = cycle.iter().position(|step| !is_helper(step.source)) else {
        debug_assert!(false, "a cycle made only of helper nodes");
        return;
    };
    let operation_id = |local: u32| analysis.operation_id(global(local));
    let mut edges = Vec::with_capacity(cycle.len());
    let mut position = 0;
    while position < cycle.len() {
        let step = cycle[(start + position) % cycle.len()];
        let mut target = step.edge.target;
        position += 1;
        if is_helper(target) {
            // The helper's continuation edge: the reported edge ends where it leads.
            target = cycle[(start + position) % cycle.len()].edge.target;
            position += 1;
        }
        let (kind, key) = match step.edge.kind {
            GraphEdgeKind::WriteWrite => (EdgeKind::WriteWrite, Some(step.edge.key)),
            GraphEdgeKind::WriteRead => (EdgeKind::WriteRead, Some(step.edge.key)),
            GraphEdgeKind::ReadWrite => (EdgeKind::ReadWrite, Some(step.edge.key)),
            GraphEdgeKind::Realtime => (EdgeKind::Realtime, None),
            GraphEdgeKind::Continuation => {
                debug_assert!(false, "continuation edges leave helper nodes only");
                continue;
            }
        };
        edges.push(CycleEdge {
            from: operation_id(step.source),
            to: operation_id(target),
            kind,
            key,
        });
    }
    let count = |kind: EdgeKind| edges.iter().filter(|edge| edge.kind == kind).count();
    let (n_ww, n_wr, n_rw, n_realtime) = (
        count(EdgeKind::WriteWrite),
        count(EdgeKind::WriteRead),
        count(EdgeKind::ReadWrite),
        count(EdgeKind::Realtime),
    );
    let kind = match (n_realtime > 0, n_rw) {
        (false, 0) if n_wr == 0 => AnomalyKind::G0,
        (false, 0) => AnomalyKind::G1c,
        (false, 1) => AnomalyKind::GSingle,
        (false, _) => AnomalyKind::G2Item,
        (true, 0) if n_wr == 0 => AnomalyKind::G0Realtime,
        (true, 0) => AnomalyKind::G1cRealtime,
        (true, 1) => AnomalyKind::GSingleRealtime,
        (true, _) => AnomalyKind::G2ItemRealtime,
    };
    let explanation = format!(
        "a cycle of {} transactions: {n_ww} ww, {n_wr} wr, {n_rw} rw and {n_realtime} \
         real-time edges",
        edges.len(),
    );
    let ops: Vec<u32> = edges.iter().map(|edge| edge.from.index() as u32).collect();
    let mut anomaly = analysis.anomaly(kind, explanation, &ops);
    anomaly.cycle = edges;
    report.push(anomaly);
}
