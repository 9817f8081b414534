//! Hand-made list-append histories: each anomaly detected and named, valid ones accepted.

use concord_checker::{
    AnomalyKind, ConsistencyModel, EdgeKind, History, ListAppendOptions, MicroOp, OpId, Outcome,
    ProcessId, Report, Status, Transaction, check_list_append,
};

pub fn append(key: u64, element: u64) -> MicroOp {
    MicroOp::Append(key, element)
}

pub fn read(key: u64, elements: &[u64]) -> MicroOp {
    MicroOp::Read(key, Some(elements.to_vec()))
}

/// Records a transaction of `process` over `[start, end]`; ok bodies carry read results.
pub fn transaction(
    history: &mut History<Transaction>,
    process: u64,
    (start, end): (u64, u64),
    status: Status,
    micro_ops: Vec<MicroOp>,
) -> OpId {
    history
        .record(ProcessId(process), start, end, micro_ops, status)
        .unwrap()
}

pub fn check(history: &History<Transaction>) -> Report<Transaction> {
    check_list_append(history, &ListAppendOptions::default())
}

fn check_serializable(history: &History<Transaction>) -> Report<Transaction> {
    let options = ListAppendOptions {
        consistency_model: ConsistencyModel::Serializable,
        ..ListAppendOptions::default()
    };
    check_list_append(history, &options)
}

fn assert_kinds(report: &Report<Transaction>, expected: &[&str]) {
    assert_eq!(report.kind_names(), expected, "{report}");
    assert_eq!(report.valid(), expected.is_empty());
}

#[test]
fn g0_write_cycle() {
    let mut history = History::new();
    let t1 = transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), append(2, 1)],
    );
    let t2 = transaction(
        &mut history,
        1,
        (0, 10),
        Status::Ok,
        vec![append(1, 2), append(2, 2)],
    );
    transaction(
        &mut history,
        2,
        (20, 30),
        Status::Ok,
        vec![read(1, &[1, 2]), read(2, &[2, 1])],
    );
    let report = check(&history);
    assert_kinds(&report, &["G0"]);
    let anomaly = &report.anomalies()[0];
    let mut ids = anomaly.operation_ids();
    ids.sort();
    assert_eq!(ids, vec![t1, t2]);
    assert!(
        anomaly
            .cycle
            .iter()
            .all(|edge| edge.kind == EdgeKind::WriteWrite)
    );
    assert_eq!(anomaly.cycle.len(), 2);
}

#[test]
fn g1a_aborted_read() {
    let mut history = History::new();
    let writer = transaction(&mut history, 0, (0, 10), Status::Fail, vec![append(1, 1)]);
    let reader = transaction(&mut history, 1, (20, 30), Status::Ok, vec![read(1, &[1])]);
    let report = check(&history);
    assert_kinds(&report, &["G1a"]);
    assert_eq!(report.anomalies()[0].operation_ids(), vec![writer, reader]);
}

#[test]
fn g1b_intermediate_read() {
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), append(1, 2)],
    );
    transaction(&mut history, 1, (5, 8), Status::Ok, vec![read(1, &[1])]);
    let report = check(&history);
    assert!(report.has(AnomalyKind::G1b), "{report}");
}

#[test]
fn g1c_circular_information_flow() {
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), read(2, &[1])],
    );
    transaction(
        &mut history,
        1,
        (0, 10),
        Status::Ok,
        vec![append(2, 1), read(1, &[1])],
    );
    let report = check(&history);
    assert_kinds(&report, &["G1c"]);
    let kinds: Vec<EdgeKind> = report.anomalies()[0]
        .cycle
        .iter()
        .map(|edge| edge.kind)
        .collect();
    assert_eq!(kinds, vec![EdgeKind::WriteRead, EdgeKind::WriteRead]);
}

#[test]
fn g_single_read_skew() {
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), append(2, 1)],
    );
    transaction(
        &mut history,
        1,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), read(2, &[1])],
    );
    let report = check(&history);
    assert_kinds(&report, &["G-single"]);
}

#[test]
fn g_single_with_observed_versions() {
    // T2 read key 1 before element 1, which a later read shows: rw to T1, the next writer.
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), append(2, 1)],
    );
    transaction(
        &mut history,
        1,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), read(2, &[1])],
    );
    transaction(
        &mut history,
        2,
        (20, 30),
        Status::Ok,
        vec![read(1, &[1]), read(2, &[1])],
    );
    assert_kinds(&check(&history), &["G-single"]);
}

#[test]
fn real_time_order_survives_overlapping_completions() {
    // T1 completes while T2 runs, so T1 is not linked to T2; T1 must still precede T3.
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (5, 20), Status::Ok, vec![read(2, &[])]);
    transaction(&mut history, 2, (30, 40), Status::Ok, vec![read(1, &[])]);
    transaction(&mut history, 3, (50, 60), Status::Ok, vec![read(1, &[1])]);
    assert_kinds(&check(&history), &["G-single-realtime"]);
}

#[test]
fn g2_item_write_skew() {
    let mut history = History::new();
    let both_empty = || vec![read(1, &[]), read(2, &[])];
    let mut t1_ops = both_empty();
    t1_ops.push(append(1, 1));
    let mut t2_ops = both_empty();
    t2_ops.push(append(2, 1));
    transaction(&mut history, 0, (0, 10), Status::Ok, t1_ops);
    transaction(&mut history, 1, (0, 10), Status::Ok, t2_ops);
    let report = check(&history);
    assert_kinds(&report, &["G2-item"]);
    let cycle = &report.anomalies()[0].cycle;
    assert_eq!(cycle.len(), 2);
    assert!(
        cycle.iter().all(|edge| edge.kind == EdgeKind::ReadWrite),
        "{report}"
    );
    let mut keys: Vec<Option<u64>> = cycle.iter().map(|edge| edge.key).collect();
    keys.sort();
    assert_eq!(keys, vec![Some(1), Some(2)]);
}

#[test]
fn stale_read_violates_real_time_order() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (20, 30), Status::Ok, vec![read(1, &[])]);
    let report = check(&history);
    // The append is also never read although a later read looked: a lost write.
    assert_kinds(&report, &["G-single-realtime", "lost-write"]);
    let anomaly = report
        .anomalies_of(AnomalyKind::GSingleRealtime)
        .next()
        .unwrap();
    let kinds: Vec<EdgeKind> = anomaly.cycle.iter().map(|edge| edge.kind).collect();
    assert!(kinds.contains(&EdgeKind::Realtime) && kinds.contains(&EdgeKind::ReadWrite));
    // Serializable (not strict) allows it: T2 simply ran first.
    assert_kinds(&check_serializable(&history), &[]);
}

#[test]
fn stale_read_of_an_observed_value_is_g_single_realtime() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (20, 30), Status::Ok, vec![read(1, &[])]);
    transaction(&mut history, 2, (40, 50), Status::Ok, vec![read(1, &[1])]);
    assert_kinds(&check(&history), &["G-single-realtime"]);
}

#[test]
fn write_order_against_real_time_is_g0_realtime() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (20, 30), Status::Ok, vec![append(1, 2)]);
    transaction(
        &mut history,
        2,
        (40, 50),
        Status::Ok,
        vec![read(1, &[2, 1])],
    );
    assert_kinds(&check(&history), &["G0-realtime"]);
    assert_kinds(&check_serializable(&history), &[]);
}

#[test]
fn lost_write() {
    let mut history = History::new();
    let lost = transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (0, 10), Status::Ok, vec![append(1, 2)]);
    let reader = transaction(&mut history, 2, (20, 30), Status::Ok, vec![read(1, &[2])]);
    let report = check(&history);
    assert!(report.has(AnomalyKind::LostWrite), "{report}");
    let anomaly = report.anomalies_of(AnomalyKind::LostWrite).next().unwrap();
    assert_eq!(anomaly.operation_ids(), vec![lost, reader]);
}

#[test]
fn duplicate_elements() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(
        &mut history,
        1,
        (20, 30),
        Status::Ok,
        vec![read(1, &[1, 1])],
    );
    assert_kinds(&check(&history), &["duplicate-elements"]);
}

#[test]
fn incompatible_order() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (0, 10), Status::Ok, vec![append(1, 2)]);
    transaction(
        &mut history,
        2,
        (20, 30),
        Status::Ok,
        vec![read(1, &[1, 2])],
    );
    transaction(
        &mut history,
        3,
        (20, 30),
        Status::Ok,
        vec![read(1, &[2, 1])],
    );
    assert_kinds(&check(&history), &["incompatible-order"]);
}

#[test]
fn garbage_read() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(
        &mut history,
        1,
        (20, 30),
        Status::Ok,
        vec![read(1, &[1, 99])],
    );
    assert_kinds(&check(&history), &["garbage-read"]);
}

#[test]
fn internal_inconsistency() {
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), read(1, &[])],
    );
    assert!(check(&history).has(AnomalyKind::Internal));
}

#[test]
fn duplicate_append() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut history, 1, (20, 30), Status::Ok, vec![append(1, 1)]);
    assert_kinds(&check(&history), &["duplicate-append"]);
}

#[test]
fn serial_history_is_valid() {
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), append(1, 1)],
    );
    transaction(
        &mut history,
        1,
        (11, 20),
        Status::Ok,
        vec![append(1, 2), read(1, &[1, 2])],
    );
    transaction(
        &mut history,
        0,
        (21, 30),
        Status::Ok,
        vec![append(2, 1), read(1, &[1, 2])],
    );
    transaction(
        &mut history,
        1,
        (31, 40),
        Status::Ok,
        vec![read(1, &[1, 2]), read(2, &[1])],
    );
    assert_kinds(&check(&history), &[]);
}

#[test]
fn concurrent_serializable_history_is_valid() {
    // Invoked in the order T1, T2, T3, but serialized as T3, T2, T1: all overlap in time.
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 100),
        Status::Ok,
        vec![append(1, 3), read(2, &[2])],
    );
    transaction(
        &mut history,
        1,
        (10, 90),
        Status::Ok,
        vec![read(1, &[1]), append(1, 2)],
    );
    transaction(
        &mut history,
        2,
        (20, 80),
        Status::Ok,
        vec![append(1, 1), append(2, 2)],
    );
    transaction(
        &mut history,
        3,
        (110, 120),
        Status::Ok,
        vec![read(1, &[1, 2, 3])],
    );
    assert_kinds(&check(&history), &[]);
}

#[test]
fn info_transactions_that_did_and_did_not_take_effect_are_valid() {
    let mut history = History::new();
    // Took effect: a later read sees its element, so it joins the graph as committed.
    transaction(&mut history, 0, (0, 10), Status::Info, vec![append(1, 1)]);
    // Did not take effect: nobody ever sees element 2, and that is allowed.
    transaction(&mut history, 1, (0, 10), Status::Info, vec![append(1, 2)]);
    // Never completed at all: counts as info.
    history.invoke(ProcessId(2), 5, vec![append(1, 3), MicroOp::Read(2, None)]);
    transaction(&mut history, 3, (20, 30), Status::Ok, vec![read(1, &[1])]);
    transaction(&mut history, 4, (40, 50), Status::Ok, vec![read(1, &[1])]);
    assert_kinds(&check(&history), &[]);
}

#[test]
fn info_transaction_observed_joins_cycles() {
    // The info append is seen, so it committed; T2 then read around it.
    let mut history = History::new();
    transaction(
        &mut history,
        0,
        (0, 10),
        Status::Info,
        vec![append(1, 1), append(2, 1)],
    );
    transaction(
        &mut history,
        1,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), read(2, &[1])],
    );
    assert_kinds(&check(&history), &["G-single"]);
}

#[test]
fn builder_rejects_malformed_completions() {
    let mut history: History<Transaction> = History::new();
    let id = history.invoke(ProcessId(0), 10, vec![MicroOp::Read(1, None)]);
    let missing_value = Outcome::Ok(vec![MicroOp::Read(1, None)]);
    assert!(history.complete(id, 20, missing_value).is_err());
    assert!(history.complete(id, 5, Outcome::Fail).is_err());
    history
        .complete(id, 20, Outcome::Ok(vec![read(1, &[])]))
        .unwrap();
    assert!(history.complete(id, 30, Outcome::Info).is_err());
}

#[test]
fn report_display_names_anomalies_edges_and_operations() {
    let mut history = History::new();
    transaction(&mut history, 0, (0, 10), Status::Ok, vec![append(7, 1)]);
    transaction(&mut history, 1, (20, 30), Status::Ok, vec![read(7, &[])]);
    let text = check(&history).to_string();
    assert!(text.contains("INVALID"), "{text}");
    assert!(text.contains("G-single-realtime"), "{text}");
    assert!(text.contains("T1 -rw(key 7)-> T0"), "{text}");
    assert!(text.contains("T0 -realtime-> T1"), "{text}");
    assert!(text.contains("T1 p1 ok [20, 30]: read(7, [])"), "{text}");
    assert_eq!(
        check(&History::<Transaction>::new()).to_string().trim(),
        "list-append (strict-serializable): valid"
    );
}
