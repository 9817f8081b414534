//! Real-time edges: `a -> b` whenever `a` completed `ok` strictly before `b` was invoked.
//!
//! All such pairs would be quadratic, so only a transitive reduction's worth is added, using
//! the frontier trick of Elle's real-time graph. Events are swept in time order (invocations
//! before completions at equal times, so that touching operations stay concurrent) while a
//! *frontier* holds the ok operations that completed recently:
//!
//! ```text
//!   invoke b:    add an edge from every frontier member to b
//!   complete b:  drop from the frontier every member that joined before b was invoked
//!                (each has an edge to b, and b will carry its order forward), then add b
//! ```
//!
//! Any later operation c invoked after b completes gets `b -> c`, so a dropped member `a`
//! still reaches c through `a -> b -> c`: every real-time pair is connected by a path. The
//! number of edges is about the number of operations times the concurrency.
//!
//! Only operations in the dependency graph take part. Indeterminate (`info`) operations never
//! complete for this purpose: they may take effect at any time after invocation, so they get
//! incoming real-time edges but give none.

use crate::graph::{GraphBuilder, GraphEdgeKind};
use crate::history::{Operation, Status};

/// Adds real-time edges between the operations with `in_graph[op]` set; node `i` is
/// operation `i`.
pub(crate) fn add_realtime_edges<B>(
    operations: &[Operation<B>],
    in_graph: &[bool],
    builder: &mut GraphBuilder,
) {
    assert_eq!(operations.len(), in_graph.len());
    const INVOKE: u8 = 0;
    const COMPLETE: u8 = 1;
    let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(operations.len() * 2);
    for (op, operation) in operations.iter().enumerate() {
        if !in_graph[op] {
            continue;
        }
        events.push((operation.invoke_time(), INVOKE, op as u32));
        if let (Status::Ok, Some(time)) = (operation.status(), operation.complete_time()) {
            events.push((time, COMPLETE, op as u32));
        }
    }
    events.sort_unstable();
    // (operation, sequence number of the event that added it)
    let mut frontier: Vec<(u32, usize)> = Vec::new();
    let mut invoke_sequence = vec![0usize; operations.len()];
    for (sequence, &(_, phase, op)) in events.iter().enumerate() {
        if phase == INVOKE {
            invoke_sequence[op as usize] = sequence;
            for &(member, _) in &frontier {
                builder.add(member, op, GraphEdgeKind::Realtime, 0);
            }
        } else {
            let invoked_at = invoke_sequence[op as usize];
            frontier.retain(|&(_, joined_at)| joined_at > invoked_at);
            frontier.push((op, sequence));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::EdgeMask;
    use crate::history::{History, Outcome, ProcessId};
    use crate::list_append::Transaction;
    use crate::synthetic::SplitMix64;

    /// Whether `target` is reachable from `source` in the built graph.
    fn reachable(graph: &crate::graph::Graph, source: u32, target: u32) -> bool {
        graph.cheapest_path(source, target, EdgeMask::ALL).is_some()
    }

    #[test]
    fn reduction_preserves_every_real_time_pair() {
        for seed in 0..200 {
            let mut random = SplitMix64::new(seed);
            let mut history: History<Transaction> = History::new();
            let n_operations = 2 + random.below(30);
            for process in 0..n_operations {
                let invoke_time = random.below(100);
                let id = history.invoke(ProcessId(process), invoke_time, Vec::new());
                let complete_time = invoke_time + random.below(30);
                let outcome = if random.percent(80) {
                    Outcome::Ok(Vec::new())
                } else {
                    Outcome::Info
                };
                history.complete(id, complete_time, outcome).unwrap();
            }
            let in_graph: Vec<bool> = (0..n_operations).map(|_| random.percent(90)).collect();
            let mut builder = GraphBuilder::new(n_operations as usize);
            add_realtime_edges(history.operations(), &in_graph, &mut builder);
            let graph = builder.build();
            for (a, first) in history.operations().iter().enumerate() {
                for (b, second) in history.operations().iter().enumerate() {
                    let precedes = in_graph[a]
                        && in_graph[b]
                        && first.status() == Status::Ok
                        && first.complete_time().unwrap() < second.invoke_time();
                    let found = a != b && reachable(&graph, a as u32, b as u32);
                    assert_eq!(precedes, found, "seed {seed}: {a} -> {b}");
                }
            }
        }
    }
}
