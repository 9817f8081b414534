//! The black-box oracle: the client history of a run, as `concord-checker` sees it.
//!
//! The simulator's own oracles (`check.rs`) look inside the cluster: executeAt, applied writes,
//! replica state. This module looks only at what clients observed, exactly as Jepsen would on a
//! real cluster, and hands it to the Elle-style checker. The two cannot share a bug: the checker
//! knows nothing about Concord.
//!
//! ```text
//!   OpRecord (client, invoke, complete, txn, outcome)
//!       Outcome::Committed ──► ok    (reads filled in)
//!       Outcome::Overloaded ─► fail  (the node refused it; nothing was started)
//!       Outcome::Unknown ────► info  (coordinator gave up, or the client timed out)
//!       no completion ───────► info  (the run ended or panicked first)
//!   list-append ─► check_list_append (strict serializable)
//!   bank ────────► check_bank (total, no negative balance, every account read)
//! ```
//!
//! Times are simulated microseconds; the checker only compares a completion with a later
//! invocation, so they carry real-time order. A client timeout or a coordinator crash is
//! *indeterminate*: the transaction may still execute later. Recording it as `fail` would let
//! the checker flag its appends as aborted reads (`G1a`), so it is `info`.

use std::collections::BTreeMap;

use concord_checker::{
    BankOp, BankOptions, History, ListAppendOptions, MicroOp, NegativeBalances, OperationBody,
    ProcessId, Report, Status, Transaction, check_bank, check_list_append,
};

use super::Workload;
use super::check::{OpRecord, Violation};
use super::cluster::INITIAL_BALANCE;
use crate::node::Outcome;
use crate::txn::{Key, ReadData, Update, decode_balance, decode_list};

/// The longest report text a violation carries (the first anomalies tell the story).
const REPORT_CHARS_MAX: usize = 6_000;

/// What the checker said about one run.
#[derive(Debug, Default, Clone)]
pub struct CheckerVerdict {
    /// Operations recorded as ok, fail and info.
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Anomaly kind name → count; empty when the history is valid.
    pub anomalies: BTreeMap<&'static str, usize>,
    /// The report's text, when invalid (bounded by `REPORT_CHARS_MAX`).
    pub report: Option<String>,
}

impl CheckerVerdict {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// The violation the run reports for an invalid history, naming the anomalies and the
    /// command that replays the run.
    pub fn violation(&self, replay_command: &str) -> Option<Violation> {
        let report = self.report.as_ref()?;
        Some(Violation::new(
            "checker",
            format!("{}\nreplay: {replay_command}", report.trim_end()),
        ))
    }
}

/// Records `ops` as a history of `workload` and runs the matching checker.
pub(crate) fn check_history(ops: &[OpRecord], workload: Workload, keys: u64) -> CheckerVerdict {
    match workload {
        Workload::ListAppend => {
            let history = list_append_history(ops);
            let report = check_list_append(&history, &ListAppendOptions::default());
            verdict(&history, &report)
        }
        Workload::Bank => {
            let accounts = bank_accounts(keys);
            let history = bank_history(ops);
            let options = BankOptions {
                accounts: (0..accounts).collect(),
                total: INITIAL_BALANCE * accounts as i64,
                negative_balances: NegativeBalances::Forbidden,
            };
            let report = check_bank(&history, &options);
            verdict(&history, &report)
        }
    }
}

/// The accounts the bank workload uses (see `Sim::generate_txn`).
pub(crate) fn bank_accounts(keys: u64) -> u64 {
    keys.min(8)
}

fn verdict<B: OperationBody>(history: &History<B>, report: &Report<B>) -> CheckerVerdict {
    let mut verdict = CheckerVerdict::default();
    for operation in history.operations() {
        match operation.status() {
            Status::Ok => verdict.ok += 1,
            Status::Fail => verdict.fail += 1,
            Status::Info => verdict.info += 1,
        }
    }
    for (kind, count) in report.counts() {
        verdict.anomalies.insert(kind.name(), *count);
    }
    if !report.valid() {
        let mut text = report.to_string();
        if text.len() > REPORT_CHARS_MAX {
            let mut end = REPORT_CHARS_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("\n... (report truncated)");
        }
        verdict.report = Some(text);
    }
    verdict
}

/// The number a simulator key was made from (`Key::numbered`).
fn key_number(key: &Key) -> u64 {
    let word: [u8; 8] = key
        .partition
        .as_slice()
        .try_into()
        .expect("simulator keys are Key::numbered");
    u64::from_be_bytes(word)
}

/// Every op becomes one invocation (reads first, then appends: the update sees the values read
/// at executeAt, so that is the program order) and, if the client saw one, one completion.
pub(crate) fn list_append_history(ops: &[OpRecord]) -> History<Transaction> {
    let mut history = History::new();
    for op in ops {
        let appends: &[(Key, u64)] = match op.txn.update() {
            Update::Append(appends) => appends,
            Update::None => &[],
            other => panic!("a list-append run issued {other:?}"),
        };
        let invocation: Transaction = op
            .txn
            .reads()
            .iter()
            .map(|key| MicroOp::Read(key_number(key), None))
            .chain(
                appends
                    .iter()
                    .map(|(key, element)| MicroOp::Append(key_number(key), *element)),
            )
            .collect();
        let process = ProcessId(op.client as u64);
        let id = history.invoke(process, op.invoke, invocation.clone());
        let (Some(complete), Some(outcome)) = (op.complete, &op.outcome) else {
            continue;
        };
        let outcome = match outcome {
            Outcome::Committed { reads, .. } => {
                concord_checker::Outcome::Ok(fill_list_reads(&invocation, reads))
            }
            Outcome::Overloaded => concord_checker::Outcome::Fail,
            Outcome::Unknown => concord_checker::Outcome::Info,
        };
        history
            .complete(id, complete, outcome)
            .expect("the simulator records each op once, completing after its invocation");
    }
    history
}

fn fill_list_reads(invocation: &Transaction, reads: &ReadData) -> Transaction {
    invocation
        .iter()
        .map(|micro_op| match micro_op {
            MicroOp::Read(key, None) => {
                let value = reads
                    .iter()
                    .find(|(read_key, _)| key_number(read_key) == *key)
                    .and_then(|(_, value)| value.as_deref());
                // A list that fails to decode is shown as a garbage element rather than
                // dropped, so the checker flags it instead of the conversion hiding it.
                let list = match value {
                    None => Vec::new(),
                    Some(bytes) => decode_list(bytes).unwrap_or_else(|| vec![u64::MAX]),
                };
                MicroOp::Read(*key, Some(list))
            }
            other => other.clone(),
        })
        .collect()
}

/// Transfers and whole-bank reads; a missing account holds `INITIAL_BALANCE`.
pub(crate) fn bank_history(ops: &[OpRecord]) -> History<BankOp> {
    let mut history = History::new();
    for op in ops {
        let invocation = match op.txn.update() {
            Update::Transfer {
                from, to, amount, ..
            } => BankOp::Transfer {
                from: key_number(from),
                to: key_number(to),
                amount: *amount,
            },
            Update::None => BankOp::Read(None),
            other => panic!("a bank run issued {other:?}"),
        };
        let process = ProcessId(op.client as u64);
        let id = history.invoke(process, op.invoke, invocation.clone());
        let (Some(complete), Some(outcome)) = (op.complete, &op.outcome) else {
            continue;
        };
        let outcome = match (outcome, &invocation) {
            (Outcome::Committed { reads, .. }, BankOp::Read(None)) => {
                let balances = reads
                    .iter()
                    .map(|(key, value)| {
                        // An undecodable balance becomes one the total cannot absorb.
                        let balance = value.as_deref().map_or(INITIAL_BALANCE, |bytes| {
                            decode_balance(bytes).unwrap_or(i64::MIN)
                        });
                        (key_number(key), balance)
                    })
                    .collect();
                concord_checker::Outcome::Ok(BankOp::Read(Some(balances)))
            }
            (Outcome::Committed { .. }, _) => concord_checker::Outcome::Ok(invocation.clone()),
            (Outcome::Overloaded, _) => concord_checker::Outcome::Fail,
            (Outcome::Unknown, _) => concord_checker::Outcome::Info,
        };
        history
            .complete(id, complete, outcome)
            .expect("the simulator records each op once, completing after its invocation");
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;
    use crate::txn::Txn;

    fn list(values: &[u64]) -> Option<Vec<u8>> {
        Some(
            values
                .iter()
                .flat_map(|value| value.to_be_bytes())
                .collect(),
        )
    }

    fn op(client: usize, invoke: u64, complete: u64, txn: Txn, outcome: Outcome) -> OpRecord {
        OpRecord {
            client,
            invoke,
            complete: Some(complete),
            txn,
            outcome: Some(outcome),
        }
    }

    fn committed(reads: ReadData) -> Outcome {
        Outcome::Committed {
            execute_at: Timestamp::default(),
            reads,
            fast_path: true,
        }
    }

    fn append(key: u64, element: u64) -> Txn {
        Txn::new(vec![], Update::Append(vec![(Key::numbered(key), element)]))
    }

    fn read(key: u64) -> Txn {
        Txn::new(vec![Key::numbered(key)], Update::None)
    }

    fn reads(key: u64, values: &[u64]) -> ReadData {
        [(Key::numbered(key), list(values))].into_iter().collect()
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_append_is_an_anomaly() {
        let ops = vec![
            op(0, 10, 20, append(1, 5), committed(ReadData::new())),
            op(1, 30, 40, read(1), committed(reads(1, &[]))),
        ];
        let verdict = check_history(&ops, Workload::ListAppend, 3);
        assert!(!verdict.valid(), "{verdict:?}");
        let violation = verdict.violation("REPLAY").expect("invalid");
        assert!(violation.detail.contains("replay: REPLAY"), "{violation}");
        assert!(violation.detail.contains("realtime"), "{violation}");
    }

    #[test]
    fn an_unknown_outcome_is_info_not_fail() {
        // The append timed out at the client but executed: a later read sees it. As `fail`
        // this would be an aborted read (G1a); as `info` it is a valid history.
        let ops = vec![
            op(0, 10, 20, append(1, 5), Outcome::Unknown),
            op(1, 30, 40, read(1), committed(reads(1, &[5]))),
        ];
        let verdict = check_history(&ops, Workload::ListAppend, 3);
        assert!(verdict.valid(), "{verdict:?}");
        assert_eq!((verdict.ok, verdict.fail, verdict.info), (1, 0, 1));
        let history = list_append_history(&ops);
        assert_eq!(history.operations()[0].status(), Status::Info);
    }

    #[test]
    fn overloaded_is_fail_and_its_appends_must_not_be_read() {
        let ops = vec![
            op(0, 10, 20, append(1, 5), Outcome::Overloaded),
            op(1, 30, 40, read(1), committed(reads(1, &[5]))),
        ];
        let verdict = check_history(&ops, Workload::ListAppend, 3);
        assert!(verdict.anomalies.contains_key("G1a"), "{verdict:?}");
    }

    #[test]
    fn bank_reads_must_add_up() {
        let balances = |values: &[i64]| -> ReadData {
            values
                .iter()
                .enumerate()
                .map(|(idx, value)| {
                    (
                        Key::numbered(idx as u64),
                        Some(value.to_be_bytes().to_vec()),
                    )
                })
                .collect()
        };
        let all = || Txn::new((0..3).map(Key::numbered).collect(), Update::None);
        let good = vec![op(0, 1, 2, all(), committed(balances(&[50, 150, 100])))];
        assert!(check_history(&good, Workload::Bank, 3).valid());
        let bad = vec![op(0, 1, 2, all(), committed(balances(&[50, 100, 100])))];
        let verdict = check_history(&bad, Workload::Bank, 3);
        assert!(verdict.anomalies.contains_key("wrong-total"), "{verdict:?}");
    }
}
