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
