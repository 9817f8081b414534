//! Checks a JSON-lines history file, e.g. one written by the Jepsen harness:
//! `cargo run -p concord-checker --example check_file -- list-append history.jsonl`
//! (workloads: `list-append`, `list-append-serializable`, `register`). Exits 1 when invalid.

use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use concord_checker::{
    ConsistencyModel, History, ListAppendOptions, RegisterOptions, check_list_append,
    check_register,
};

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, workload, path] = arguments.as_slice() else {
        return Err(
            "usage: check_file <list-append|list-append-serializable|register> FILE".into(),
        );
    };
    let reader = BufReader::new(File::open(path)?);
    let (valid, text) = match workload.as_str() {
        "list-append" | "list-append-serializable" => {
            let consistency_model = if workload == "list-append" {
                ConsistencyModel::StrictSerializable
            } else {
                ConsistencyModel::Serializable
            };
            let options = ListAppendOptions {
                consistency_model,
                ..ListAppendOptions::default()
            };
            let report = check_list_append(&History::read_jsonl(reader)?, &options);
            (report.valid(), report.to_string())
        }
        "register" => {
            let result = check_register(&History::read_jsonl(reader)?, &RegisterOptions::default());
            (result.report.valid(), result.to_string())
        }
        other => return Err(format!("unknown workload {other:?}").into()),
    };
    print!("{text}");
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
