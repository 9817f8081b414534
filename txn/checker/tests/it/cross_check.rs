//! A second opinion: the `adya` crate (an independent, JVM-free take on Elle) must reach the
//! same verdict as this checker on generated histories, their random truncations, and the
//! classic anomalies.

use concord_checker::synthetic::{ListAppendWorkload, SplitMix64, list_append_history};
use concord_checker::{History, Status, Transaction};

use crate::list_append::{append, check, read, transaction};
use crate::randomized::{mutate_read, reads};

/// adya's verdict under strict serializability; `None` when it could not decide.
fn adya_valid(history: &History<Transaction>) -> Option<bool> {
    let text = history.to_jsonl_string();
    let parsed = adya::History::from_json(&text).unwrap();
    let report = adya::check(&parsed, adya::Workload::ListAppend, &adya::Opts::default());
    match report.valid {
        adya::Valid::True => Some(true),
        adya::Valid::False => Some(false),
        adya::Valid::Unknown => None,
    }
}

/// Asserts both checkers agree; returns the verdict.
fn assert_agree(context: &str, history: &History<Transaction>) -> bool {
    let report = check(history);
    if let Some(adya) = adya_valid(history) {
        assert_eq!(
            report.valid(),
            adya,
            "{context}: adya says valid={adya}; we say:\n{report}"
        );
    }
    report.valid()
}

#[test]
fn verdicts_agree_on_generated_histories_and_truncated_reads() {
    let mut n_invalid = 0;
    for seed in 0..40 {
        let mut random = SplitMix64::new(seed);
        // adya pairs completions by process, so each transaction gets its own process.
        let workload = ListAppendWorkload {
            n_transactions: 40 + random.below(120) as usize,
            n_keys: 1 + random.below(5),
            n_processes: u64::MAX,
            window_ticks_max: random.below(60),
            ..ListAppendWorkload::default()
        };
        let history = list_append_history(&workload, seed);
        assert!(assert_agree(&format!("seed {seed}"), &history));
        let candidates: Vec<_> = reads(&history)
            .into_iter()
            .filter(|read| !read.3.is_empty())
            .collect();
        for attempt in 0..3 {
            if candidates.is_empty() {
                break;
            }
            let (op, micro, _, elements) =
                &candidates[random.below(candidates.len() as u64) as usize];
            let length = random.below(elements.len() as u64) as usize;
            let mutated = mutate_read(&history, *op, *micro, |elements| elements.truncate(length));
            let valid = assert_agree(&format!("seed {seed}, truncation {attempt}"), &mutated);
            n_invalid += usize::from(!valid);
        }
    }
    // Truncations often stay valid (a read may be stale while concurrent); enough are not.
    assert!(n_invalid >= 20, "only {n_invalid} truncations were invalid");
}

#[test]
fn verdicts_agree_on_classic_anomalies() {
    let mut write_skew = History::new();
    transaction(
        &mut write_skew,
        0,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), read(2, &[]), append(1, 1)],
    );
    transaction(
        &mut write_skew,
        1,
        (0, 10),
        Status::Ok,
        vec![read(1, &[]), read(2, &[]), append(2, 1)],
    );
    let mut stale_read = History::new();
    transaction(&mut stale_read, 0, (0, 10), Status::Ok, vec![append(1, 1)]);
    transaction(&mut stale_read, 1, (20, 30), Status::Ok, vec![read(1, &[])]);
    transaction(
        &mut stale_read,
        2,
        (40, 50),
        Status::Ok,
        vec![read(1, &[1])],
    );
    let mut circular = History::new();
    transaction(
        &mut circular,
        0,
        (0, 10),
        Status::Ok,
        vec![append(1, 1), read(2, &[1])],
    );
    transaction(
        &mut circular,
        1,
        (0, 10),
        Status::Ok,
        vec![append(2, 1), read(1, &[1])],
    );
    for (name, history) in [
        ("write skew", write_skew),
        ("stale read", stale_read),
        ("G1c", circular),
    ] {
        assert_eq!(adya_valid(&history), Some(false), "{name}");
        assert_agree(name, &history);
    }
}
