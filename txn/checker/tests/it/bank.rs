//! Bank checker: reads that keep or break the total, negative and missing balances.

use std::collections::BTreeMap;

use concord_checker::{
    AnomalyKind, BankOp, BankOptions, History, NegativeBalances, ProcessId, Status, check_bank,
};

fn options() -> BankOptions {
    BankOptions {
        accounts: vec![0, 1, 2],
        total: 100,
        negative_balances: NegativeBalances::Forbidden,
    }
}

fn read(balances: &[(u64, i64)]) -> BankOp {
    BankOp::Read(Some(balances.iter().copied().collect::<BTreeMap<_, _>>()))
}

fn history(reads: &[(Status, BankOp)]) -> History<BankOp> {
    let mut history = History::new();
    let transfer = BankOp::Transfer {
        from: 0,
        to: 1,
        amount: 10,
    };
    history
        .record(ProcessId(9), 0, 5, transfer, Status::Ok)
        .unwrap();
    for (index, (status, body)) in reads.iter().enumerate() {
        let start = 10 * index as u64 + 10;
        history
            .record(
                ProcessId(index as u64),
                start,
                start + 5,
                body.clone(),
                *status,
            )
            .unwrap();
    }
    history
}

#[test]
fn reads_that_keep_the_total_are_valid() {
    let history = history(&[
        (Status::Ok, read(&[(0, 50), (1, 30), (2, 20)])),
        (Status::Ok, read(&[(0, 40), (1, 40), (2, 20)])),
        // Failed and indeterminate reads say nothing.
        (Status::Fail, BankOp::Read(None)),
        (Status::Info, BankOp::Read(None)),
    ]);
    let report = check_bank(&history, &options());
    assert!(report.valid(), "{report}");
}

#[test]
fn a_wrong_total_is_reported() {
    let history = history(&[
        (Status::Ok, read(&[(0, 50), (1, 30), (2, 20)])),
        (Status::Ok, read(&[(0, 40), (1, 30), (2, 20)])),
    ]);
    let report = check_bank(&history, &options());
    assert_eq!(report.kind_names(), vec!["wrong-total"], "{report}");
    assert_eq!(report.count(AnomalyKind::WrongTotal), 1);
    assert!(
        report
            .to_string()
            .contains("balances add up to 90, not 100"),
        "{report}"
    );
}

#[test]
fn negative_balances_are_reported_unless_allowed() {
    let history = history(&[(Status::Ok, read(&[(0, -10), (1, 90), (2, 20)]))]);
    assert_eq!(
        check_bank(&history, &options()).kind_names(),
        vec!["negative-balance"]
    );
    let allowed = BankOptions {
        negative_balances: NegativeBalances::Allowed,
        ..options()
    };
    assert!(check_bank(&history, &allowed).valid());
}

#[test]
fn missing_and_unknown_accounts_are_reported() {
    let history = history(&[(Status::Ok, read(&[(0, 50), (1, 30), (7, 20)]))]);
    let report = check_bank(&history, &options());
    assert_eq!(report.kind_names(), vec!["unexpected-accounts"], "{report}");
}
