//! Random *valid* histories, for testing the checkers and timing them.
//!
//! Each generator runs transactions one at a time against an in-memory model (so the result is
//! serial, hence strictly serializable or linearizable), and gives each one a real-time window
//! around its position in the serial order:
//!
//! ```text
//!   commit points:   c0 ──10── c1 ──10── c2 ──10── c3 ...
//!   windows:       [c1 - x, c1 + 1 + y]   with x, y < window_ticks_max
//! ```
//!
//! If one window ends before another begins, its commit point is earlier too, so the serial
//! order never contradicts real time, however much the windows overlap. Some transactions
//! fail (not applied) or end `info` (applied or not, at random), as in a real run.
//!
//! Deterministic for a seed: [`SplitMix64`] is the only source of randomness.

use crate::history::{History, OpId, Outcome, ProcessId};
use crate::list_append::{Element, Key, MicroOp, Transaction};
use crate::register::{RegisterAction, RegisterOp};

/// A tiny deterministic pseudo-random generator (SplitMix64), good enough for workloads.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value to return");
        self.next_u64() % bound
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The shape of a generated list-append history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListAppendWorkload {
    pub n_transactions: usize,
    pub n_keys: u64,
    pub micro_ops_per_transaction_max: usize,
    pub n_processes: u64,
    /// How far a transaction's window may reach either side of its commit point; commit points
    /// are 10 ticks apart, so this sets the concurrency.
    pub window_ticks_max: u64,
    pub read_percent: u64,
    pub fail_percent: u64,
    pub info_percent: u64,
}

impl Default for ListAppendWorkload {
    fn default() -> Self {
        ListAppendWorkload {
            n_transactions: 200,
            n_keys: 8,
            micro_ops_per_transaction_max: 4,
            n_processes: 5,
            window_ticks_max: 40,
            read_percent: 50,
            fail_percent: 5,
            info_percent: 5,
        }
    }
}

const COMMIT_POINT_SPACING_TICKS: u64 = 10;

/// A time window around the commit point of the `position`-th serial transaction.
fn window(position: usize, window_ticks_max: u64, random: &mut SplitMix64) -> (u64, u64) {
    let commit_point = window_ticks_max + position as u64 * COMMIT_POINT_SPACING_TICKS;
    let invoke_time = commit_point - random.below(window_ticks_max + 1);
    let complete_time = commit_point + 1 + random.below(window_ticks_max + 1);
    (invoke_time, complete_time)
}

/// How a generated operation ends.
enum Fate {
    Ok,
    Fail,
    InfoApplied,
    InfoNotApplied,
}

fn fate(fail_percent: u64, info_percent: u64, random: &mut SplitMix64) -> Fate {
    let roll = random.below(100);
    if roll < fail_percent {
        Fate::Fail
    } else if roll < fail_percent + info_percent {
        if random.percent(50) {
            Fate::InfoApplied
        } else {
            Fate::InfoNotApplied
        }
    } else {
        Fate::Ok
    }
}

/// Records an operation that ran serially; `Outcome::Ok` only for `Fate::Ok`.
fn record<B: crate::history::OperationBody>(
    history: &mut History<B>,
    process: ProcessId,
    (invoke_time, complete_time): (u64, u64),
    invocation: B,
    outcome: Outcome<B>,
) -> OpId {
    let id = history.invoke(process, invoke_time, invocation);
    // Generated completions always match their invocations and follow them in time.
    let completed = history.complete(id, complete_time, outcome);
    debug_assert!(
        completed.is_ok(),
        "generated completion rejected: {completed:?}"
    );
    id
}

/// A random serial list-append execution with overlapping real-time windows.
pub fn list_append_history(workload: &ListAppendWorkload, seed: u64) -> History<Transaction> {
    assert!(workload.n_keys > 0 && workload.micro_ops_per_transaction_max > 0);
    assert!(workload.n_processes > 0);
    let mut random = SplitMix64::new(seed);
    let mut lists: Vec<Vec<Element>> = vec![Vec::new(); workload.n_keys as usize];
    let mut next_element: Element = 1;
    let mut history = History::new();
    for position in 0..workload.n_transactions {
        let n_micro_ops = 1 + random.below(workload.micro_ops_per_transaction_max as u64) as usize;
        let mut completed: Transaction = Vec::with_capacity(n_micro_ops);
        for _ in 0..n_micro_ops {
            let key: Key = random.below(workload.n_keys);
            if random.percent(workload.read_percent) {
                completed.push(MicroOp::Read(key, Some(lists[key as usize].clone())));
            } else {
                completed.push(MicroOp::Append(key, next_element));
                lists[key as usize].push(next_element);
                next_element += 1;
            }
        }
        let fate = fate(workload.fail_percent, workload.info_percent, &mut random);
        if matches!(fate, Fate::Fail | Fate::InfoNotApplied) {
            // Undo in reverse: each append is the last element of its list.
            for micro_op in completed.iter().rev() {
                if let MicroOp::Append(key, _) = micro_op {
                    lists[*key as usize].pop();
                }
            }
        }
        let invocation: Transaction = crate::history::OperationBody::to_invocation(&completed);
        let outcome = match fate {
            Fate::Ok => Outcome::Ok(completed),
            Fate::Fail => Outcome::Fail,
            Fate::InfoApplied | Fate::InfoNotApplied => Outcome::Info,
        };
        let process = ProcessId(position as u64 % workload.n_processes);
        let times = window(position, workload.window_ticks_max, &mut random);
        record(&mut history, process, times, invocation, outcome);
    }
    history
}

/// The shape of a generated register history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterWorkload {
    pub n_operations: usize,
    pub n_keys: u64,
    pub n_values: u64,
    pub window_ticks_max: u64,
    pub info_percent: u64,
}

impl Default for RegisterWorkload {
    fn default() -> Self {
        RegisterWorkload {
            n_operations: 200,
            n_keys: 3,
            n_values: 4,
            window_ticks_max: 25,
            info_percent: 5,
        }
    }
}

/// A random serial execution of reads, writes and compare-and-sets on registers (initial
/// value 0), with overlapping windows. Failed compare-and-sets complete `fail`.
pub fn register_history(workload: &RegisterWorkload, seed: u64) -> History<RegisterOp> {
    assert!(workload.n_keys > 0 && workload.n_values > 0);
    let mut random = SplitMix64::new(seed);
    let mut values = vec![0u64; workload.n_keys as usize];
    let mut history = History::new();
    for position in 0..workload.n_operations {
        let key = random.below(workload.n_keys);
        let value = &mut values[key as usize];
        let action = match random.below(3) {
            0 => RegisterAction::Read(Some(*value)),
            1 => RegisterAction::Write(random.below(workload.n_values)),
            _ => RegisterAction::CompareAndSet {
                expected: random.below(workload.n_values),
                new: random.below(workload.n_values),
            },
        };
        let info = random.percent(workload.info_percent);
        let applied = !info || random.percent(50);
        let succeeded = match action {
            RegisterAction::Read(_) => true,
            RegisterAction::Write(written) => {
                if applied {
                    *value = written;
                }
                true
            }
            RegisterAction::CompareAndSet { expected, new } => {
                let succeeded = *value == expected;
                if succeeded && applied {
                    *value = new;
                }
                succeeded
            }
        };
        let completed = RegisterOp { key, action };
        let invocation = crate::history::OperationBody::to_invocation(&completed);
        let outcome = match (info, succeeded) {
            (true, _) => Outcome::Info,
            (false, true) => Outcome::Ok(completed),
            (false, false) => Outcome::Fail,
        };
        let process = ProcessId(position as u64);
        let times = window(position, workload.window_ticks_max, &mut random);
        record(&mut history, process, times, invocation, outcome);
    }
    history
}
