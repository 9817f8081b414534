//! Times the list-append checker on a generated history:
//! `cargo run --release -p concord-checker --example time_list_append -- [n_transactions]`.
//!
//! The workload is the synthetic default (up to 4 micro-ops, half reads, 5% fail, 5% info,
//! 5 processes, windows of ±40 ticks around commit points 10 ticks apart) over one key per ten
//! transactions, so lists stay short as they do in Jepsen runs with rotating keys.

use std::time::Instant;

use concord_checker::synthetic::{ListAppendWorkload, list_append_history};
use concord_checker::{ListAppendOptions, check_list_append};

fn main() {
    let n_transactions: usize = std::env::args()
        .nth(1)
        .and_then(|argument| argument.parse().ok())
        .unwrap_or(100_000);
    let workload = ListAppendWorkload {
        n_transactions,
        n_keys: (n_transactions as u64 / 10).max(1),
        ..ListAppendWorkload::default()
    };
    let generate_start = Instant::now();
    let history = list_append_history(&workload, 1);
    let n_micro_ops: usize = history
        .operations()
        .iter()
        .map(|operation| operation.body().len())
        .sum();
    println!(
        "generated {} transactions ({n_micro_ops} micro-ops) in {:?}",
        history.len(),
        generate_start.elapsed()
    );
    let check_start = Instant::now();
    let report = check_list_append(&history, &ListAppendOptions::default());
    println!(
        "checked in {:?}: {}",
        check_start.elapsed(),
        report.to_string().trim()
    );
}
