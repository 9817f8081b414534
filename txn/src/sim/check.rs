//! The simulator's oracles, run after the cluster has quiesced.
//!
//! - **Agreement**: a transaction applied on several replicas has one executeAt and one set
//!   of writes everywhere, and is never both applied and invalidated.
//! - **Serial replay**: replaying every applied transaction in executeAt order against a model
//!   reproduces each transaction's recorded writes and every acknowledged client read. This is
//!   a serializability witness: executeAt order *is* the serial order.
//! - **Real time**: an acknowledged transaction that completed before another was invoked has
//!   a lower executeAt (with the replay, this makes the history strictly serializable).
//! - **No lost writes**: every acknowledged transaction is applied.
//! - **Convergence**: every replica holds a value the model held for each key it owns.
//! - **Bank**: every acknowledged read of all balances sums to the initial total.
//! - **Applied floor**: when a node's applied-before floor of a shard rises to `B`, every
//!   transaction on that shard with executeAt below `B` that is applied anywhere (in the whole
//!   run, before or after) was already applied on that node.
//!
//! The black-box checker (`concord-checker`, run from `history.rs`) is the second opinion, over
//! the same client history, without access to executeAt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::Workload;
use super::cluster::INITIAL_BALANCE;
use crate::node::Outcome;
use crate::timestamp::{NodeId, Timestamp, TxnId};
use crate::topology::{ShardId, Topology};
use crate::txn::{Key, ReadData, Txn, Writes, decode_balance};

/// A client operation as the history records it.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub client: usize,
    pub invoke: u64,
    pub complete: Option<u64>,
    pub txn: Txn,
    pub outcome: Option<Outcome>,
}

/// A transaction as a replica applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedTxn {
    pub execute_at: Timestamp,
    pub txn: Txn,
    pub writes: Writes,
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// One rise of a node's applied-before floor of a shard (`Node::applied_before`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorRaise {
    pub node: NodeId,
    pub shard: ShardId,
    pub bound: Timestamp,
    /// Simulated time of the rise.
    pub time: u64,
}

/// The applied-floor oracle: for each node and shard, the first rise of the floor above a
/// transaction's executeAt must come after that transaction applied on the node.
pub(crate) fn check_floors(
    raises: &[FloorRaise],
    applied: &BTreeMap<NodeId, BTreeMap<TxnId, AppliedTxn>>,
    applied_at: &BTreeMap<(NodeId, TxnId), u64>,
    topology: &Topology,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut global: BTreeMap<TxnId, &AppliedTxn> = BTreeMap::new();
    for txns in applied.values() {
        for (txn_id, txn) in txns {
            global.entry(*txn_id).or_insert(txn);
        }
    }
    let mut by_node_shard: BTreeMap<(NodeId, ShardId), Vec<&FloorRaise>> = BTreeMap::new();
    for raise in raises {
        by_node_shard
            .entry((raise.node, raise.shard))
            .or_default()
            .push(raise);
    }
    for (txn_id, txn) in &global {
        for shard in topology.shards_for_keys(txn.txn.keys()) {
            for node in &topology.shard(shard).replicas {
                let Some(raises) = by_node_shard.get(&(*node, shard)) else {
                    continue;
                };
                let Some(raise) = raises.iter().find(|raise| raise.bound > txn.execute_at) else {
                    continue;
                };
                let applied_here = applied_at.get(&(*node, *txn_id));
                if applied_here.is_none_or(|at| *at > raise.time) {
                    violations.push(Violation::new(
                        "applied floor",
                        format!(
                            "{node}'s floor of shard {} rose to {} at {}us but {txn_id} (executeAt \
                             {}) was applied there {}",
                            shard.0,
                            raise.bound,
                            raise.time,
                            txn.execute_at,
                            applied_here.map_or("never".to_string(), |at| format!("at {at}us"))
                        ),
                    ));
                    if violations.len() >= VIOLATIONS_MAX {
                        return violations;
                    }
                }
            }
        }
    }
    violations
}

/// The most violations reported per run (the first few tell the story).
const VIOLATIONS_MAX: usize = 20;

pub(crate) fn check_run(
    ops: &[OpRecord],
    applied: &BTreeMap<NodeId, BTreeMap<TxnId, AppliedTxn>>,
    invalidated: &BTreeSet<TxnId>,
    finals: &BTreeMap<NodeId, ReadData>,
    workload: Workload,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    // Agreement.
    let mut global: BTreeMap<TxnId, AppliedTxn> = BTreeMap::new();
    for (node, txns) in applied {
        for (txn_id, txn) in txns {
            if invalidated.contains(txn_id) {
                violations.push(Violation::new(
                    "agreement",
                    format!("{txn_id} applied on {node} but invalidated elsewhere"),
                ));
            }
            match global.get(txn_id) {
                None => {
                    global.insert(*txn_id, txn.clone());
                }
                Some(other) if other.execute_at != txn.execute_at || other.writes != txn.writes => {
                    violations.push(Violation::new(
                        "agreement",
                        format!(
                            "{txn_id} applied at {} on {node} but at {} elsewhere (or writes \
                             differ)",
                            txn.execute_at, other.execute_at
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    // Serial replay in executeAt order.
    let by_execute_at: BTreeMap<Timestamp, (TxnId, &AppliedTxn)> = global
        .iter()
        .map(|(txn_id, txn)| (txn.execute_at, (*txn_id, txn)))
        .collect();
    let mut client_by_execute_at: BTreeMap<Timestamp, usize> = BTreeMap::new();
    for (op_idx, op) in ops.iter().enumerate() {
        if let Some(Outcome::Committed { execute_at, .. }) = &op.outcome {
            client_by_execute_at.insert(*execute_at, op_idx);
            if !by_execute_at.contains_key(execute_at) {
                violations.push(Violation::new(
                    "lost write",
                    format!("op {op_idx} acknowledged at {execute_at} but never applied"),
                ));
            }
        }
    }
    let mut model: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    let mut history: BTreeMap<Key, BTreeSet<Option<Vec<u8>>>> = BTreeMap::new();
    for (execute_at, (txn_id, applied)) in &by_execute_at {
        let reads: ReadData = applied
            .txn
            .keys()
            .iter()
            .map(|key| (key.clone(), model.get(key).cloned().flatten()))
            .collect();
        let expected = applied.txn.update().compute(&reads);
        if expected.as_ref() != Some(&applied.writes) {
            violations.push(Violation::new(
                "serializability",
                format!("{txn_id} at {execute_at}: writes differ from a serial replay"),
            ));
        }
        if let Some(op_idx) = client_by_execute_at.get(execute_at)
            && let Some(Outcome::Committed { reads: seen, .. }) = &ops[*op_idx].outcome
        {
            for (key, value) in seen {
                if reads.get(key) != Some(value) {
                    violations.push(Violation::new(
                        "serializability",
                        format!("op {op_idx} ({txn_id}) read a value the serial order never had"),
                    ));
                }
            }
            if workload == Workload::Bank && ops[*op_idx].txn.update() == &crate::txn::Update::None
            {
                check_bank_total(*op_idx, seen, &mut violations);
            }
        }
        for (key, value) in &applied.writes {
            model.insert(key.clone(), value.clone());
            history
                .entry(key.clone())
                .or_default()
                .insert(value.clone());
        }
        if violations.len() > VIOLATIONS_MAX {
            break;
        }
    }
    // Convergence: every replica's value is one the model held.
    for (node, data) in finals {
        for (key, value) in data {
            let held = value.is_none() || history.get(key).is_some_and(|set| set.contains(value));
            if !held {
                violations.push(Violation::new(
                    "convergence",
                    format!("{node} holds a value for a key that no serial state had"),
                ));
            }
        }
    }
    check_real_time(ops, &mut violations);
    violations.truncate(VIOLATIONS_MAX);
    violations
}

fn check_bank_total(op_idx: usize, seen: &ReadData, violations: &mut Vec<Violation>) {
    let total: i64 = seen
        .values()
        .map(|value| {
            value
                .as_deref()
                .and_then(decode_balance)
                .unwrap_or(INITIAL_BALANCE)
        })
        .sum();
    let expected = INITIAL_BALANCE * seen.len() as i64;
    if total != expected {
        violations.push(Violation::new(
            "bank",
            format!("op {op_idx} read a total of {total}, expected {expected}"),
        ));
    }
}

/// (invoke, complete, executeAt, op index, writes the key).
type RealTimeEntry = (u64, u64, Timestamp, usize, bool);

/// An acknowledged op that completed before a conflicting one was invoked has a lower
/// executeAt. Non-conflicting transactions commute, so their executeAt order is free.
fn check_real_time(ops: &[OpRecord], violations: &mut Vec<Violation>) {
    // Per key: (invoke, complete, executeAt, op, writes the key).
    let mut per_key: BTreeMap<Key, Vec<RealTimeEntry>> = BTreeMap::new();
    for (op_idx, op) in ops.iter().enumerate() {
        if let (Some(Outcome::Committed { execute_at, .. }), Some(complete)) =
            (&op.outcome, op.complete)
        {
            let written = op.txn.update().keys();
            for key in op.txn.keys() {
                let writes = written.contains(key);
                per_key.entry(key.clone()).or_default().push((
                    op.invoke,
                    complete,
                    *execute_at,
                    op_idx,
                    writes,
                ));
            }
        }
    }
    for (_, mut by_invoke) in per_key {
        let mut by_complete = by_invoke.clone();
        by_complete.sort_by_key(|entry| entry.1);
        by_invoke.sort_by_key(|entry| entry.0);
        let mut completed_idx = 0;
        let mut max_any: Option<(Timestamp, usize)> = None;
        let mut max_write: Option<(Timestamp, usize)> = None;
        for (invoke, _, execute_at, op_idx, writes) in by_invoke {
            while completed_idx < by_complete.len() && by_complete[completed_idx].1 < invoke {
                let (_, _, at, idx, wrote) = by_complete[completed_idx];
                if max_any.is_none_or(|(max, _)| at > max) {
                    max_any = Some((at, idx));
                }
                if wrote && max_write.is_none_or(|(max, _)| at > max) {
                    max_write = Some((at, idx));
                }
                completed_idx += 1;
            }
            let bound = if writes { max_any } else { max_write };
            if let Some((max, earlier)) = bound
                && execute_at <= max
            {
                violations.push(Violation::new(
                    "real time",
                    format!(
                        "op {op_idx} executes at {execute_at}, before conflicting op {earlier} \
                         ({max}) which completed before it began"
                    ),
                ));
            }
        }
    }
}
