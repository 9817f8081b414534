//! JSON-lines import and export: round trips, Jepsen-style files, and parse errors.

use concord_checker::synthetic::{
    ListAppendWorkload, RegisterWorkload, list_append_history, register_history,
};
use concord_checker::{
    BankOp, CheckerError, History, MicroOp, ProcessId, RegisterOp, Status, Transaction,
};

use crate::list_append::check;

#[test]
fn list_append_histories_round_trip() {
    let workload = ListAppendWorkload {
        fail_percent: 10,
        info_percent: 10,
        ..Default::default()
    };
    let mut history = list_append_history(&workload, 3);
    history.invoke(ProcessId(77), 1_000_000, vec![MicroOp::Append(1, 1 << 40)]);
    let text = history.to_jsonl_string();
    let parsed: History<Transaction> = History::from_jsonl_str(&text).unwrap();
    assert_eq!(parsed, history);
    let mut bytes = Vec::new();
    history.write_jsonl(&mut bytes).unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
}

#[test]
fn register_and_bank_histories_round_trip() {
    let history = register_history(&RegisterWorkload::default(), 5);
    let parsed: History<RegisterOp> = History::from_jsonl_str(&history.to_jsonl_string()).unwrap();
    assert_eq!(parsed, history);

    let mut bank = History::new();
    bank.record(
        ProcessId(0),
        0,
        5,
        BankOp::Transfer {
            from: 1,
            to: 2,
            amount: 3,
        },
        Status::Ok,
    )
    .unwrap();
    let balances = [(1, 7), (2, -3)].into_iter().collect();
    bank.record(ProcessId(1), 1, 6, BankOp::Read(Some(balances)), Status::Ok)
        .unwrap();
    let parsed: History<BankOp> = History::from_jsonl_str(&bank.to_jsonl_string()).unwrap();
    assert_eq!(parsed, bank);
}

#[test]
fn jepsen_files_pair_completions_by_process_and_skip_the_nemesis() {
    let text = r#"
{"index":0,"type":"invoke","f":"txn","value":[["append",1,1]],"time":0,"process":0}
{"index":1,"type":"info","f":"start-partition","value":null,"time":1,"process":"nemesis"}
{"index":2,"type":"ok","f":"txn","value":[["append",1,1]],"time":10,"process":0}
{"index":3,"type":"invoke","f":"txn","value":[["r",1,null]],"time":20,"process":0}
{"index":4,"type":"ok","f":"txn","value":[["r",1,[]]],"time":30,"process":0}
"#;
    let history: History<Transaction> = History::from_jsonl_str(text).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history.operations()[1].status(), Status::Ok);
    let report = check(&history);
    assert!(
        report.kind_names().contains(&"G-single-realtime"),
        "{report}"
    );
}

#[test]
fn parse_errors_name_the_line() {
    let bad_json = "{\"type\":\"invoke\"\n";
    let error = History::<Transaction>::from_jsonl_str(bad_json).unwrap_err();
    assert!(
        matches!(error, CheckerError::Json { line: 1, .. }),
        "{error}"
    );

    let bad_micro_op = concat!(
        r#"{"type":"invoke","f":"txn","value":[["append",1,1]],"time":0,"process":0}"#,
        "\n",
        r#"{"type":"invoke","f":"txn","value":[["write",1,1]],"time":0,"process":1}"#,
    );
    let error = History::<Transaction>::from_jsonl_str(bad_micro_op).unwrap_err();
    assert!(
        matches!(
            error,
            CheckerError::InvalidField {
                line: 2,
                field: "value",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("line 2: invalid field `value`"),
        "{error}"
    );

    let unmatched = r#"{"type":"ok","f":"txn","value":[],"time":0,"process":4}"#;
    let error = History::<Transaction>::from_jsonl_str(unmatched).unwrap_err();
    assert!(
        matches!(
            error,
            CheckerError::UnmatchedCompletion {
                line: 1,
                process: 4
            }
        ),
        "{error}"
    );

    let mismatch = concat!(
        r#"{"type":"invoke","f":"txn","value":[["r",1,null]],"time":0,"process":0}"#,
        "\n",
        r#"{"type":"ok","f":"txn","value":[["r",2,[]]],"time":5,"process":0}"#,
    );
    let error = History::<Transaction>::from_jsonl_str(mismatch).unwrap_err();
    assert!(
        matches!(error, CheckerError::Line { line: 2, .. }),
        "{error}"
    );
}
