//! Linearizability of single registers (read, write, compare-and-set), one register per key.
//!
//! The search is Wing & Gong's, with Lowe's memoization, as in Porcupine and Knossos. Per key,
//! the operations' call and return events are put in time order (calls first at equal times)
//! into a doubly linked list. The search walks the list:
//!
//! ```text
//!   at a call:    if the register model accepts the operation in the current state, and the
//!                 pair (set of linearized operations, new state) is not already known to
//!                 fail, linearize it: push it, unlink its call and return, restart at the head;
//!                 otherwise move on to the next entry
//!   at a return:  that operation had to be linearized by now: pop the last linearized
//!                 operation, relink it, and try the entry after its call
//! ```
//!
//! The history is linearizable when every `ok` operation is linearized; it is not when the
//! stack runs empty. Operations that failed certainly did not happen and are dropped; `info`
//! reads say nothing and are dropped; `info` writes and compare-and-sets may have happened at
//! any time after their call, so their return is placed at the end of time, and they may also
//! stay unlinearized (never happened). A `fail`ed compare-and-set is simply a dropped one.
//!
//! On success the report carries a witness order per key; on failure, the longest prefix the
//! search managed to linearize and the operation that could not be placed after it.
//!
//! JSON lines, Jepsen's independent-key form: `{"f":"write","value":[key, 3]}`,
//! `{"f":"read","value":[key, 3]}` (`[key, null]` when invoked),
//! `{"f":"cas","value":[key, [1, 2]]}`.

use std::collections::BTreeMap;
use std::fmt;

use crate::fast_hash::FastHashSet;
use crate::history::{History, OpId, Operation, OperationBody, Status};
use crate::list_append::Key;
use crate::report::{Anomaly, AnomalyKind, Report};

/// Most operations of the linearized prefix shown in a failure report.
const PREFIX_OPERATIONS_SHOWN_MAX: usize = 16;

/// What an operation does to its register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterAction {
    /// Reads the value: `None` until it completes `ok`.
    Read(Option<u64>),
    Write(u64),
    /// Sets `new` if the value is `expected`; completes `fail` if it was not.
    CompareAndSet {
        expected: u64,
        new: u64,
    },
}

/// One operation on the register named by `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterOp {
    pub key: Key,
    pub action: RegisterAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Every register's value before any write (map a database's "absent" to it).
    pub initial_value: u64,
    /// Most search steps per key before giving up with `search-limit-exceeded`.
    pub search_steps_max: u64,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions {
            initial_value: 0,
            search_steps_max: 10_000_000,
        }
    }
}

/// A witness: one key's operations in an order that explains every result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linearization {
    pub key: Key,
    /// The linearized operations in order; `info` operations left out did not take effect.
    pub order: Vec<OpId>,
}

/// The verdict plus, for every key that passed, a witness order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterReport {
    pub report: Report<RegisterOp>,
    pub linearizations: Vec<Linearization>,
}

impl fmt::Display for RegisterReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.report)
    }
}

/// Checks that each key's operations are linearizable with respect to a register.
pub fn check_register(history: &History<RegisterOp>, options: &RegisterOptions) -> RegisterReport {
    let mut operations_by_key: BTreeMap<Key, Vec<&Operation<RegisterOp>>> = BTreeMap::new();
    for operation in history.operations() {
        let relevant = match (operation.status(), operation.body().action) {
            (Status::Ok, _) => true,
            (Status::Fail, _) | (Status::Info, RegisterAction::Read(_)) => false,
            (Status::Info, _) => true,
        };
        if relevant {
            operations_by_key
                .entry(operation.body().key)
                .or_default()
                .push(operation);
        }
    }
    let mut report = Report::new("register (linearizable)");
    let mut linearizations = Vec::new();
    for (key, operations) in operations_by_key {
        match Search::new(&operations, options).run() {
            SearchOutcome::Linearizable(order) => linearizations.push(Linearization {
                key,
                order: order.into_iter().map(|op| operations[op].id()).collect(),
            }),
            SearchOutcome::Nonlinearizable {
                prefix,
                value,
                stuck,
            } => {
                report.push(nonlinearizable(key, &operations, &prefix, value, stuck));
            }
            SearchOutcome::StepLimitExceeded => report.push(Anomaly {
                kind: AnomalyKind::SearchLimitExceeded,
                explanation: format!(
                    "key {key}: no verdict within {} search steps over {} operations",
                    options.search_steps_max,
                    operations.len()
                ),
                operations: Vec::new(),
                cycle: Vec::new(),
            }),
        }
    }
    RegisterReport {
        report,
        linearizations,
    }
}

/// The anomaly for a key whose search failed: the deepest linearized prefix (its last
/// operations), the value after it, and the operation that could not come next.
fn nonlinearizable(
    key: Key,
    operations: &[&Operation<RegisterOp>],
    prefix: &[usize],
    value: u64,
    stuck: usize,
) -> Anomaly<RegisterOp> {
    let n_hidden = prefix.len().saturating_sub(PREFIX_OPERATIONS_SHOWN_MAX);
    let shown = &prefix[n_hidden..];
    let mut prefix_text: Vec<String> = shown.iter().map(|&op| operations[op].to_string()).collect();
    if n_hidden > 0 {
        prefix_text.insert(0, format!("{n_hidden} earlier operations"));
    }
    let explanation = format!(
        "key {key}: after linearizing [{}] (value {value}), {} cannot be linearized",
        prefix_text.join("; "),
        operations[stuck],
    );
    let mut involved: Vec<_> = shown.iter().map(|&op| operations[op].clone()).collect();
    involved.push(operations[stuck].clone());
    Anomaly {
        kind: AnomalyKind::Nonlinearizable,
        explanation,
        operations: involved,
        cycle: Vec::new(),
    }
}

/// Applies `action` to a register holding `value`: the new value, or `None` if the result
/// the operation reported is impossible in that state.
fn apply(value: u64, action: RegisterAction) -> Option<u64> {
    match action {
        RegisterAction::Read(Some(read)) => (read == value).then_some(value),
        RegisterAction::Read(None) => Some(value),
        RegisterAction::Write(written) => Some(written),
        RegisterAction::CompareAndSet { expected, new } => (value == expected).then_some(new),
    }
}

enum SearchOutcome {
    /// Local operation indices in linearization order.
    Linearizable(Vec<usize>),
    /// The longest linearized prefix, the value after it, and an operation that had to be
    /// linearized next but could not be.
    Nonlinearizable {
        prefix: Vec<usize>,
        value: u64,
        stuck: usize,
    },
    StepLimitExceeded,
}

/// One call or return event in the search list.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    /// The entry index of the matching call or return.
    partner: usize,
}

struct Search<'o> {
    operations: &'o [&'o Operation<RegisterOp>],
    options: &'o RegisterOptions,
    /// Index 0 is the head sentinel and the last index the tail sentinel.
    entries: Vec<Entry>,
    previous: Vec<usize>,
    next: Vec<usize>,
}

impl<'o> Search<'o> {
    fn new(operations: &'o [&'o Operation<RegisterOp>], options: &'o RegisterOptions) -> Self {
        // (time, 0 = call / 1 = return, op); an operation without an ok return returns never.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(operations.len() * 2);
        for (op, operation) in operations.iter().enumerate() {
            events.push((operation.invoke_time(), 0, op));
            let return_time = match operation.status() {
                Status::Ok => operation.complete_time().unwrap_or(u64::MAX),
                Status::Fail | Status::Info => u64::MAX,
            };
            events.push((return_time, 1, op));
        }
        events.sort_unstable();
        let sentinel = Entry {
            op: usize::MAX,
            is_call: false,
            partner: 0,
        };
        let mut entries = vec![sentinel; events.len() + 2];
        let mut call_entry = vec![0usize; operations.len()];
        for (position, &(_, phase, op)) in events.iter().enumerate() {
            let entry_idx = position + 1;
            entries[entry_idx] = Entry {
                op,
                is_call: phase == 0,
                partner: 0,
            };
            if phase == 0 {
                call_entry[op] = entry_idx;
            } else {
                entries[entry_idx].partner = call_entry[op];
                entries[call_entry[op]].partner = entry_idx;
            }
        }
        let n_entries = entries.len();
        let previous = (0..n_entries).map(|idx| idx.saturating_sub(1)).collect();
        let next = (0..n_entries)
            .map(|idx| (idx + 1).min(n_entries - 1))
            .collect();
        Search {
            operations,
            options,
            entries,
            previous,
            next,
        }
    }

    fn unlink(&mut self, entry_idx: usize) {
        let (previous, next) = (self.previous[entry_idx], self.next[entry_idx]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    fn relink(&mut self, entry_idx: usize) {
        let (previous, next) = (self.previous[entry_idx], self.next[entry_idx]);
        self.next[previous] = entry_idx;
        self.previous[next] = entry_idx;
    }

    fn is_ok(&self, op: usize) -> bool {
        self.operations[op].status() == Status::Ok
    }

    fn run(mut self) -> SearchOutcome {
        let tail = self.entries.len() - 1;
        let n_words = self.operations.len().div_ceil(64);
        let mut linearized = vec![0u64; n_words];
        let mut known: FastHashSet<(Vec<u64>, u64)> = FastHashSet::default();
        // (call entry, value before the operation)
        let mut stack: Vec<(usize, u64)> = Vec::new();
        let mut value = self.options.initial_value;
        let mut n_ok_remaining = (0..self.operations.len())
            .filter(|&op| self.is_ok(op))
            .count();
        let mut deepest: Option<(Vec<usize>, u64, usize)> = None;
        let mut entry_idx = self.next[0];
        let mut n_steps = 0u64;
        while n_ok_remaining > 0 {
            n_steps += 1;
            if n_steps > self.options.search_steps_max {
                return SearchOutcome::StepLimitExceeded;
            }
            let entry = self.entries[entry_idx];
            if entry_idx != tail && entry.is_call {
                let op = entry.op;
                if let Some(new_value) = apply(value, self.operations[op].body().action) {
                    linearized[op / 64] |= 1 << (op % 64);
                    if known.insert((linearized.clone(), new_value)) {
                        stack.push((entry_idx, value));
                        value = new_value;
                        n_ok_remaining -= usize::from(self.is_ok(op));
                        self.unlink(entry_idx);
                        self.unlink(entry.partner);
                        entry_idx = self.next[0];
                        continue;
                    }
                    linearized[op / 64] &= !(1 << (op % 64));
                }
                entry_idx = self.next[entry_idx];
                continue;
            }
            // A return (or the end): its operation should have been linearized by now.
            if entry_idx != tail
                && deepest
                    .as_ref()
                    .is_none_or(|(prefix, ..)| stack.len() > prefix.len())
            {
                let prefix = stack
                    .iter()
                    .map(|&(call, _)| self.entries[call].op)
                    .collect();
                deepest = Some((prefix, value, entry.op));
            }
            let Some((call_idx, previous_value)) = stack.pop() else {
                return match deepest {
                    Some((prefix, value, stuck)) => SearchOutcome::Nonlinearizable {
                        prefix,
                        value,
                        stuck,
                    },
                    None => SearchOutcome::StepLimitExceeded, // Unreachable: see the loop guard.
                };
            };
            let op = self.entries[call_idx].op;
            linearized[op / 64] &= !(1 << (op % 64));
            value = previous_value;
            n_ok_remaining += usize::from(self.is_ok(op));
            self.relink(self.entries[call_idx].partner);
            self.relink(call_idx);
            entry_idx = self.next[call_idx];
        }
        SearchOutcome::Linearizable(
            stack
                .iter()
                .map(|&(call, _)| self.entries[call].op)
                .collect(),
        )
    }
}

impl OperationBody for RegisterOp {
    fn function_name(&self) -> &'static str {
        match self.action {
            RegisterAction::Read(_) => "read",
            RegisterAction::Write(_) => "write",
            RegisterAction::CompareAndSet { .. } => "cas",
        }
    }

    fn to_json_value(&self) -> serde_json::Value {
        use serde_json::json;
        match self.action {
            RegisterAction::Read(value) => json!([self.key, value]),
            RegisterAction::Write(value) => json!([self.key, value]),
            RegisterAction::CompareAndSet { expected, new } => json!([self.key, [expected, new]]),
        }
    }

    fn from_json_value(function_name: &str, value: &serde_json::Value) -> Result<Self, String> {
        let pair = value.as_array().filter(|pair| pair.len() == 2);
        let pair = pair.ok_or_else(|| format!("register value {value} is not [key, value]"))?;
        let key = pair[0]
            .as_u64()
            .ok_or_else(|| format!("key {} is not a u64", pair[0]))?;
        let number = |value: &serde_json::Value| {
            value
                .as_u64()
                .ok_or_else(|| format!("register value {value} is not a u64"))
        };
        let action = match function_name {
            "read" if pair[1].is_null() => RegisterAction::Read(None),
            "read" => RegisterAction::Read(Some(number(&pair[1])?)),
            "write" => RegisterAction::Write(number(&pair[1])?),
            "cas" => {
                let values = pair[1].as_array().filter(|values| values.len() == 2);
                let values =
                    values.ok_or_else(|| format!("cas {value} is not [key, [old, new]]"))?;
                RegisterAction::CompareAndSet {
                    expected: number(&values[0])?,
                    new: number(&values[1])?,
                }
            }
            other => return Err(format!("unknown register function {other:?}")),
        };
        Ok(RegisterOp { key, action })
    }

    fn to_invocation(&self) -> Self {
        match self.action {
            RegisterAction::Read(_) => RegisterOp {
                key: self.key,
                action: RegisterAction::Read(None),
            },
            _ => *self,
        }
    }

    fn check_completion(&self, completion: &Self) -> Result<(), String> {
        let matches = self.key == completion.key
            && match (self.action, completion.action) {
                (RegisterAction::Read(_), RegisterAction::Read(Some(_))) => true,
                (RegisterAction::Read(_), _) | (_, RegisterAction::Read(_)) => false,
                (invoked, completed) => invoked == completed,
            };
        if matches {
            Ok(())
        } else {
            Err(format!("{self:?} completed as {completion:?}"))
        }
    }

    fn describe(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key;
        match self.action {
            RegisterAction::Read(Some(value)) => write!(formatter, "read({key}) = {value}"),
            RegisterAction::Read(None) => write!(formatter, "read({key}) = ?"),
            RegisterAction::Write(value) => write!(formatter, "write({key}, {value})"),
            RegisterAction::CompareAndSet { expected, new } => {
                write!(formatter, "cas({key}, {expected} -> {new})")
            }
        }
    }
}
