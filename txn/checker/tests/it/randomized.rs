//! Randomized tests: generated serial executions must pass, and targeted mutations of them
//! must be caught with the right anomaly name. Failures print the seed; re-run one seed by
//! narrowing the seed range.

use concord_checker::synthetic::{
    ListAppendWorkload, RegisterWorkload, SplitMix64, list_append_history, register_history,
};
use concord_checker::{
    AnomalyKind, ConsistencyModel, History, ListAppendOptions, MicroOp, Operation, Outcome,
    RegisterAction, RegisterOp, RegisterOptions, Status, Transaction, check_list_append,
    check_register,
};

use crate::list_append::check;

const SEEDS: std::ops::Range<u64> = 0..120;

fn workload(seed: u64) -> ListAppendWorkload {
    let mut random = SplitMix64::new(seed ^ 0x5eed);
    ListAppendWorkload {
        n_transactions: 50 + random.below(250) as usize,
        n_keys: 1 + random.below(8),
        micro_ops_per_transaction_max: 1 + random.below(5) as usize,
        n_processes: 1 + random.below(8),
        window_ticks_max: random.below(80),
        read_percent: 20 + random.below(60),
        fail_percent: random.below(10),
        info_percent: random.below(10),
    }
}

/// A copy of `history` with operation `target`'s invocation and outcome replaced.
fn replace(
    history: &History<Transaction>,
    target: usize,
    outcome: Outcome<Transaction>,
) -> History<Transaction> {
    let mut copy = History::new();
    for (index, operation) in history.operations().iter().enumerate() {
        let id = copy.invoke(
            operation.process(),
            operation.invoke_time(),
            operation.invocation().clone(),
        );
        let outcome = if index == target {
            outcome.clone()
        } else {
            operation.outcome().clone()
        };
        if let Some(time) = operation.complete_time() {
            copy.complete(id, time, outcome).unwrap();
        }
    }
    copy
}

/// The ok reads of a history: (operation index, micro-op index, key, elements).
pub fn reads(history: &History<Transaction>) -> Vec<(usize, usize, u64, Vec<u64>)> {
    let mut reads = Vec::new();
    for (op, operation) in history.operations().iter().enumerate() {
        if let Outcome::Ok(body) = operation.outcome() {
            for (micro, micro_op) in body.iter().enumerate() {
                if let MicroOp::Read(key, Some(elements)) = micro_op {
                    reads.push((op, micro, *key, elements.clone()));
                }
            }
        }
    }
    reads
}

/// `history` with the read at (`op`, `micro`) changed by `change`.
pub fn mutate_read(
    history: &History<Transaction>,
    op: usize,
    micro: usize,
    change: impl FnOnce(&mut Vec<u64>),
) -> History<Transaction> {
    let Outcome::Ok(mut body) = history.operations()[op].outcome().clone() else {
        panic!("only ok reads are mutated");
    };
    if let MicroOp::Read(_, Some(elements)) = &mut body[micro] {
        change(elements);
    }
    replace(history, op, Outcome::Ok(body))
}

fn assert_detects(
    seed: u64,
    mutation: &str,
    history: &History<Transaction>,
    kinds: &[AnomalyKind],
) {
    let report = check(history);
    assert!(
        kinds.iter().any(|&kind| report.has(kind)),
        "seed {seed}: mutation {mutation} not reported as any of {kinds:?}:\n{report}"
    );
}

#[test]
fn generated_histories_are_valid() {
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let report = check(&history);
        assert!(report.valid(), "seed {seed}: {report}");
        let options = ListAppendOptions {
            consistency_model: ConsistencyModel::Serializable,
            ..ListAppendOptions::default()
        };
        assert!(check_list_append(&history, &options).valid(), "seed {seed}");
    }
}

#[test]
fn duplicating_an_element_is_detected() {
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let Some((op, micro, ..)) = reads(&history).into_iter().find(|read| !read.3.is_empty())
        else {
            continue;
        };
        let mutated = mutate_read(&history, op, micro, |elements| elements.push(elements[0]));
        assert_detects(
            seed,
            "duplicate",
            &mutated,
            &[AnomalyKind::DuplicateElements],
        );
    }
}

#[test]
fn reading_a_never_written_element_is_detected() {
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let Some((op, micro, ..)) = reads(&history).into_iter().find(|read| !read.3.is_empty())
        else {
            continue;
        };
        let mutated = mutate_read(&history, op, micro, |elements| {
            *elements.last_mut().unwrap() = 1 << 50;
        });
        assert_detects(seed, "garbage", &mutated, &[AnomalyKind::GarbageRead]);
    }
}

/// Two reads of one key by different operations, both at least `length` long.
fn two_reads(
    history: &History<Transaction>,
    length: usize,
) -> Option<((usize, usize), (usize, usize))> {
    let reads = reads(history);
    for first in &reads {
        for second in &reads {
            if first.0 != second.0
                && first.2 == second.2
                && first.3.len() >= length
                && second.3.len() >= length
            {
                return Some(((first.0, first.1), (second.0, second.1)));
            }
        }
    }
    None
}

#[test]
fn reordering_a_read_is_detected() {
    let mut n_mutated = 0;
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let Some(((op, micro), _)) = two_reads(&history, 2) else {
            continue;
        };
        let mutated = mutate_read(&history, op, micro, |elements| elements.swap(0, 1));
        assert_detects(seed, "swap", &mutated, &[AnomalyKind::IncompatibleOrder]);
        n_mutated += 1;
    }
    assert!(
        n_mutated > SEEDS.count() / 2,
        "only {n_mutated} histories had two long reads"
    );
}

#[test]
fn dropping_an_element_from_a_read_is_detected() {
    let mut n_mutated = 0;
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        // Both reads have a first and a second element; without its first, one read starts
        // with the other's second element, so neither is a prefix of the other.
        let Some(((op, micro), _)) = two_reads(&history, 2) else {
            continue;
        };
        let mutated = mutate_read(&history, op, micro, |elements| {
            elements.remove(0);
        });
        assert_detects(seed, "drop", &mutated, &[AnomalyKind::IncompatibleOrder]);
        n_mutated += 1;
    }
    assert!(n_mutated > SEEDS.count() / 2);
}

#[test]
fn failing_an_observed_writer_is_detected_as_g1a() {
    let mut n_mutated = 0;
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let operations = history.operations();
        // An ok writer whose element another ok transaction read.
        let writer_of = |key: u64, element: u64| {
            operations
                .iter()
                .position(|operation: &Operation<Transaction>| {
                    operation
                        .invocation()
                        .contains(&MicroOp::Append(key, element))
                })
        };
        let target = reads(&history)
            .into_iter()
            .find_map(|(reader, _, key, elements)| {
                let writer = writer_of(key, *elements.first()?)?;
                (writer != reader && operations[writer].status() == Status::Ok).then_some(writer)
            });
        let Some(writer) = target else { continue };
        let mutated = replace(&history, writer, Outcome::Fail);
        assert_detects(seed, "fail writer", &mutated, &[AnomalyKind::G1a]);
        n_mutated += 1;
    }
    assert!(n_mutated > SEEDS.count() / 2);
}

#[test]
fn stale_reads_after_completed_appends_are_detected() {
    let mut n_mutated = 0;
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let operations = history.operations();
        // A read that includes an element appended by an ok transaction that completed before
        // the reader was invoked; the reader does not append to that key itself.
        let candidate = reads(&history)
            .into_iter()
            .find_map(|(reader, micro, key, elements)| {
                let reader_op = &operations[reader];
                if reader_op
                    .invocation()
                    .iter()
                    .any(|m| matches!(m, MicroOp::Append(k, _) if *k == key))
                {
                    return None;
                }
                elements
                    .iter()
                    .enumerate()
                    .find_map(|(position, &element)| {
                        let writer = operations.iter().find(|operation| {
                            operation.status() == Status::Ok
                                && operation
                                    .invocation()
                                    .contains(&MicroOp::Append(key, element))
                        })?;
                        (writer.complete_time()? < reader_op.invoke_time())
                            .then_some((reader, micro, position))
                    })
            });
        let Some((reader, micro, position)) = candidate else {
            continue;
        };
        let mutated = mutate_read(&history, reader, micro, |elements| {
            elements.truncate(position)
        });
        // Usually a real-time cycle; a dependency cycle when the reader also saw the writer's
        // other appends.
        use AnomalyKind::*;
        let kinds = [
            GSingleRealtime,
            G2ItemRealtime,
            G0Realtime,
            G1cRealtime,
            LostWrite,
            GSingle,
            G2Item,
            G1c,
            G0,
        ];
        assert_detects(seed, "stale read", &mutated, &kinds);
        n_mutated += 1;
    }
    assert!(
        n_mutated > SEEDS.count() / 2,
        "only {n_mutated} stale-read candidates"
    );
}

#[test]
fn making_an_ok_transaction_indeterminate_keeps_the_history_valid() {
    for seed in SEEDS {
        let history = list_append_history(&workload(seed), seed);
        let mut random = SplitMix64::new(seed);
        let target = random.below(history.len() as u64) as usize;
        let mutated = replace(&history, target, Outcome::Info);
        let report = check(&mutated);
        assert!(
            report.valid(),
            "seed {seed}, op {target} made info: {report}"
        );
    }
}

#[test]
fn a_twenty_thousand_transaction_history_is_checked() {
    let workload = ListAppendWorkload {
        n_transactions: 20_000,
        n_keys: 2_000,
        ..ListAppendWorkload::default()
    };
    let history = list_append_history(&workload, 7);
    assert!(check(&history).valid());
    // Dropping the only element of a late read of a busy key makes it stale.
    let late_read = reads(&history)
        .into_iter()
        .rev()
        .find(|read| read.3.len() >= 3)
        .unwrap();
    let mutated = mutate_read(&history, late_read.0, late_read.1, |elements| {
        elements.clear()
    });
    assert!(!check(&mutated).valid());
}

#[test]
fn generated_register_histories_are_linearizable() {
    for seed in SEEDS {
        let mut random = SplitMix64::new(seed);
        let workload = RegisterWorkload {
            n_operations: 20 + random.below(200) as usize,
            n_keys: 1 + random.below(3),
            n_values: 1 + random.below(5),
            window_ticks_max: random.below(60),
            info_percent: random.below(15),
        };
        let history = register_history(&workload, seed);
        let result = check_register(&history, &RegisterOptions::default());
        assert!(result.report.valid(), "seed {seed}: {result}");
        let n_ok = history
            .operations()
            .iter()
            .filter(|op| op.status() == Status::Ok)
            .count();
        let n_linearized: usize = result.linearizations.iter().map(|l| l.order.len()).sum();
        assert!(
            n_linearized >= n_ok,
            "seed {seed}: witness misses ok operations"
        );
        // A read of a value nobody wrote has no linearization.
        let Some(target) = history.operations().iter().position(|op| {
            op.status() == Status::Ok && matches!(op.body().action, RegisterAction::Read(_))
        }) else {
            continue;
        };
        let mutated = replace_register_read(&history, target, 1_000_000);
        let result = check_register(&mutated, &RegisterOptions::default());
        assert!(
            result.report.has(AnomalyKind::Nonlinearizable),
            "seed {seed}: {result}"
        );
    }
}

fn replace_register_read(
    history: &History<RegisterOp>,
    target: usize,
    value: u64,
) -> History<RegisterOp> {
    let mut copy = History::new();
    for (index, operation) in history.operations().iter().enumerate() {
        let id = copy.invoke(
            operation.process(),
            operation.invoke_time(),
            *operation.invocation(),
        );
        let mut outcome = operation.outcome().clone();
        if let (true, Outcome::Ok(body)) = (index == target, &mut outcome) {
            body.action = RegisterAction::Read(Some(value));
        }
        if let Some(time) = operation.complete_time() {
            copy.complete(id, time, outcome).unwrap();
        }
    }
    copy
}
