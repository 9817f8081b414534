//! The list-append workload and its strict-serializability checker.
//!
//! Each key holds a list; a transaction is a sequence of micro-operations that append a unique
//! element to a key's list or read a key's whole list. Because lists only grow and every
//! element is unique per key, a read reveals the order of every append it includes, which lets
//! the checker recover the version order of each key and from it the dependency edges between
//! transactions (the approach of Elle, Kingsbury and Alvaro, VLDB 2020):
//!
//! ```text
//!  history ─► index appends and reads ─► non-cycle anomalies (G1a, G1b, internal, garbage,
//!                 │                        duplicate elements, incompatible order, lost write)
//!                 ▼
//!       version order per key (the longest read; every read must be a prefix of it)
//!                 ▼
//!       dependency graph: ww, wr, rw edges + real-time edges (strict mode)
//!                 ▼
//!       Tarjan SCCs ─► one concrete cycle per component, classified G0 … G2-item(-realtime)
//! ```
//!
//! The analysis is in `list_append/inference.rs` (indexing and edges) and
//! `list_append/cycles.rs` (finding and naming cycles); `design/checker.md` explains the rules.

mod cycles;
mod inference;

use std::fmt;

use crate::history::{History, OperationBody};
use crate::report::Report;

/// A list key. Plain `u64` rather than a newtype: keys come from the workload generator and
/// Jepsen files, and the checker never mixes them with other integers.
pub type Key = u64;
/// A list element; unique per key across the whole history.
pub type Element = u64;

/// One step of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MicroOp {
    /// Appends the element to the key's list.
    Append(Key, Element),
    /// Reads the key's list: `None` until the transaction completes `ok`.
    Read(Key, Option<Vec<Element>>),
}

impl MicroOp {
    pub fn key(&self) -> Key {
        match self {
            MicroOp::Append(key, _) | MicroOp::Read(key, _) => *key,
        }
    }
}

/// A list-append transaction: its micro-operations in program order.
pub type Transaction = Vec<MicroOp>;

/// Which consistency model to check a list-append history against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConsistencyModel {
    /// Serializable and consistent with real time: a transaction that completed before another
    /// was invoked must come first. Concord's promise.
    #[default]
    StrictSerializable,
    /// Serializable in some order, ignoring real time.
    Serializable,
}

/// Options for [`check_list_append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListAppendOptions {
    pub consistency_model: ConsistencyModel,
    /// How many extra searches for a cycle with exactly one anti-dependency each strongly
    /// connected component may spend before settling for a cycle with more (bounds the cost on
    /// badly broken histories; only the name of the reported cycle depends on it).
    pub single_anti_dependency_searches_max: usize,
}

impl Default for ListAppendOptions {
    fn default() -> Self {
        ListAppendOptions {
            consistency_model: ConsistencyModel::StrictSerializable,
            single_anti_dependency_searches_max: 64,
        }
    }
}

/// Checks a list-append history; see the module documentation.
pub fn check_list_append(
    history: &History<Transaction>,
    options: &ListAppendOptions,
) -> Report<Transaction> {
    let checker_name = match options.consistency_model {
        ConsistencyModel::StrictSerializable => "list-append (strict-serializable)",
        ConsistencyModel::Serializable => "list-append (serializable)",
    };
    let mut report = Report::new(checker_name);
    let mut analysis = inference::Analysis::new(history, &mut report);
    analysis.observe_reads(&mut report);
    let orders = analysis.version_orders();
    let strict = options.consistency_model == ConsistencyModel::StrictSerializable;
    if strict {
        analysis.report_lost_writes(&mut report);
    }
    let graph = analysis.dependency_graph(&orders, strict);
    cycles::report_cycles(&analysis, &graph, options, &mut report);
    report
}

impl OperationBody for Transaction {
    fn function_name(&self) -> &'static str {
        "txn"
    }

    fn to_json_value(&self) -> serde_json::Value {
        use serde_json::json;
        let micro_ops = self.iter().map(|micro_op| match micro_op {
            MicroOp::Append(key, element) => json!(["append", key, element]),
            MicroOp::Read(key, elements) => json!(["r", key, elements]),
        });
        serde_json::Value::Array(micro_ops.collect())
    }

    fn from_json_value(function_name: &str, value: &serde_json::Value) -> Result<Self, String> {
        if function_name != "txn" {
            return Err(format!("expected f \"txn\", found {function_name:?}"));
        }
        let micro_ops = value.as_array().ok_or("a transaction must be an array")?;
        micro_ops.iter().map(parse_micro_op).collect()
    }

    fn to_invocation(&self) -> Self {
        let strip = |micro_op: &MicroOp| match micro_op {
            MicroOp::Append(key, element) => MicroOp::Append(*key, *element),
            MicroOp::Read(key, _) => MicroOp::Read(*key, None),
        };
        self.iter().map(strip).collect()
    }

    fn check_completion(&self, completion: &Self) -> Result<(), String> {
        if self.len() != completion.len() {
            let (invoked, completed) = (self.len(), completion.len());
            return Err(format!(
                "{invoked} micro-ops invoked but {completed} completed"
            ));
        }
        for (position, (invoked, completed)) in self.iter().zip(completion).enumerate() {
            let matches = match (invoked, completed) {
                (MicroOp::Append(..), MicroOp::Append(..)) => invoked == completed,
                (MicroOp::Read(key, _), MicroOp::Read(completed_key, Some(_))) => {
                    key == completed_key
                }
                _ => false,
            };
            if !matches {
                return Err(format!(
                    "micro-op {position}: {invoked:?} completed as {completed:?} \
                     (reads must carry their value)"
                ));
            }
        }
        Ok(())
    }

    fn describe(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, micro_op) in self.iter().enumerate() {
            if position > 0 {
                formatter.write_str(" ")?;
            }
            match micro_op {
                MicroOp::Append(key, element) => write!(formatter, "append({key}, {element})")?,
                MicroOp::Read(key, Some(elements)) => {
                    write!(formatter, "read({key}, {elements:?})")?
                }
                MicroOp::Read(key, None) => write!(formatter, "read({key}, ?)")?,
            }
        }
        Ok(())
    }
}

fn parse_micro_op(value: &serde_json::Value) -> Result<MicroOp, String> {
    let parts = value.as_array().filter(|parts| parts.len() == 3);
    let parts = parts.ok_or_else(|| format!("micro-op {value} is not [f, key, value]"))?;
    let key = parts[1]
        .as_u64()
        .ok_or_else(|| format!("key {} is not a u64", parts[1]))?;
    match parts[0].as_str() {
        Some("append") => {
            let element = parts[2].as_u64();
            let element = element.ok_or_else(|| format!("element {} is not a u64", parts[2]))?;
            Ok(MicroOp::Append(key, element))
        }
        Some("r") => {
            if parts[2].is_null() {
                return Ok(MicroOp::Read(key, None));
            }
            let elements = parts[2]
                .as_array()
                .ok_or_else(|| format!("read {value} has no list"))?;
            let elements: Option<Vec<Element>> =
                elements.iter().map(serde_json::Value::as_u64).collect();
            let elements = elements.ok_or_else(|| format!("read {value} has a non-u64 element"))?;
            Ok(MicroOp::Read(key, Some(elements)))
        }
        _ => Err(format!("micro-op {value} is neither append nor r")),
    }
}
