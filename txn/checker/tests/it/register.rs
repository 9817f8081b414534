//! Register linearizability: classic linearizable and non-linearizable histories.

use concord_checker::{
    AnomalyKind, History, ProcessId, RegisterAction, RegisterOp, RegisterOptions, Status,
    check_register,
};

fn op(key: u64, action: RegisterAction) -> RegisterOp {
    RegisterOp { key, action }
}

fn record(
    history: &mut History<RegisterOp>,
    (start, end): (u64, u64),
    body: RegisterOp,
    status: Status,
) {
    let process = ProcessId(history.len() as u64);
    history.record(process, start, end, body, status).unwrap();
}

#[test]
fn read_of_the_old_value_after_a_completed_write_is_not_linearizable() {
    let mut history = History::new();
    record(
        &mut history,
        (0, 10),
        op(1, RegisterAction::Write(1)),
        Status::Ok,
    );
    record(
        &mut history,
        (20, 30),
        op(1, RegisterAction::Read(Some(0))),
        Status::Ok,
    );
    let result = check_register(&history, &RegisterOptions::default());
    assert_eq!(
        result.report.kind_names(),
        vec!["nonlinearizable"],
        "{result}"
    );
    let anomaly = &result.report.anomalies()[0];
    // The longest linearizable prefix is the write; the read cannot follow it.
    assert_eq!(anomaly.operations.len(), 2);
    assert!(
        anomaly.explanation.contains("after linearizing [T0"),
        "{}",
        anomaly.explanation
    );
    assert!(
        anomaly
            .explanation
            .contains("T1 p1 ok [20, 30]: read(1) = 0 cannot be linearized")
    );
}

#[test]
fn concurrent_read_may_see_either_value() {
    let mut history = History::new();
    record(
        &mut history,
        (0, 10),
        op(1, RegisterAction::Write(1)),
        Status::Ok,
    );
    record(
        &mut history,
        (5, 15),
        op(1, RegisterAction::Read(Some(0))),
        Status::Ok,
    );
    record(
        &mut history,
        (6, 16),
        op(1, RegisterAction::Read(Some(1))),
        Status::Ok,
    );
    record(
        &mut history,
        (20, 30),
        op(
            1,
            RegisterAction::CompareAndSet {
                expected: 1,
                new: 2,
            },
        ),
        Status::Ok,
    );
    record(
        &mut history,
        (20, 30),
        op(
            1,
            RegisterAction::CompareAndSet {
                expected: 1,
                new: 3,
            },
        ),
        Status::Fail,
    );
    record(
        &mut history,
        (40, 50),
        op(1, RegisterAction::Read(Some(2))),
        Status::Ok,
    );
    let result = check_register(&history, &RegisterOptions::default());
    assert!(result.report.valid(), "{result}");
    let order: Vec<usize> = result.linearizations[0]
        .order
        .iter()
        .map(|id| id.index())
        .collect();
    assert_eq!(order, vec![1, 0, 2, 3, 5]);
}

#[test]
fn info_writes_may_or_may_not_take_effect() {
    let mut history = History::new();
    record(
        &mut history,
        (0, 10),
        op(1, RegisterAction::Write(5)),
        Status::Info,
    );
    record(
        &mut history,
        (20, 30),
        op(1, RegisterAction::Read(Some(5))),
        Status::Ok,
    );
    record(
        &mut history,
        (0, 10),
        op(2, RegisterAction::Write(5)),
        Status::Info,
    );
    record(
        &mut history,
        (20, 30),
        op(2, RegisterAction::Read(Some(0))),
        Status::Ok,
    );
    let result = check_register(&history, &RegisterOptions::default());
    assert!(result.report.valid(), "{result}");
    assert_eq!(result.linearizations.len(), 2);
    // Key 2's write never took effect in the witness.
    assert_eq!(result.linearizations[1].order.len(), 1);
}

#[test]
fn keys_are_checked_independently() {
    let mut history = History::new();
    record(
        &mut history,
        (0, 10),
        op(1, RegisterAction::Write(1)),
        Status::Ok,
    );
    record(
        &mut history,
        (20, 30),
        op(2, RegisterAction::Read(Some(0))),
        Status::Ok,
    );
    record(
        &mut history,
        (20, 30),
        op(3, RegisterAction::Read(Some(4))),
        Status::Ok,
    );
    let result = check_register(&history, &RegisterOptions::default());
    assert_eq!(
        result.report.count(AnomalyKind::Nonlinearizable),
        1,
        "{result}"
    );
    assert!(
        result.report.anomalies()[0]
            .explanation
            .starts_with("key 3:")
    );
}

#[test]
fn the_search_limit_is_reported_rather_than_hanging() {
    let mut history = History::new();
    for index in 0..12 {
        record(
            &mut history,
            (0, 100),
            op(1, RegisterAction::Write(index)),
            Status::Ok,
        );
    }
    record(
        &mut history,
        (200, 300),
        op(1, RegisterAction::Read(Some(99))),
        Status::Ok,
    );
    let options = RegisterOptions {
        search_steps_max: 50,
        ..RegisterOptions::default()
    };
    let result = check_register(&history, &options);
    assert_eq!(result.report.kind_names(), vec!["search-limit-exceeded"]);
    // With room to search, it is a plain violation.
    let result = check_register(&history, &RegisterOptions::default());
    assert_eq!(result.report.kind_names(), vec!["nonlinearizable"]);
}
