//! The run's report: operation counts, latency percentiles, availability during each fault,
//! the checker's verdict with its anomalies, lost writes, and client errors — as `report.txt`.

use std::fmt::Write as _;

use concord_checker::Status;

use crate::nemesis::{FaultWindow, NemesisKind};
use crate::svg::Sample;

/// Counts and latencies of a set of operations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Latency percentiles of `ok` operations, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Stats {
        let mut stats = Stats::default();
        let mut latencies = Vec::new();
        for sample in samples {
            match sample.status {
                Status::Ok => {
                    stats.ok += 1;
                    if let Some(complete) = sample.complete_us {
                        latencies.push(complete.saturating_sub(sample.invoke_us) as f64 / 1000.0);
                    }
                }
                Status::Fail => stats.fail += 1,
                Status::Info => stats.info += 1,
            }
        }
        latencies.sort_by(f64::total_cmp);
        stats.p50_ms = percentile(&latencies, 0.50);
        stats.p99_ms = percentile(&latencies, 0.99);
        stats
    }

    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }

    /// The share of operations that completed `ok` (1.0 for none).
    pub fn availability(&self) -> f64 {
        if self.total() == 0 {
            1.0
        } else {
            self.ok as f64 / self.total() as f64
        }
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Availability per fault window (operations invoked inside it) and outside every window.
pub fn availability(samples: &[Sample], windows: &[FaultWindow]) -> (Vec<Stats>, Stats) {
    let inside = |sample: &Sample, window: &FaultWindow| {
        (window.start_us..window.end_us).contains(&sample.invoke_us)
    };
    let per_window = windows
        .iter()
        .map(|window| Stats::of(samples.iter().filter(|sample| inside(sample, window))))
        .collect();
    let healthy = Stats::of(
        samples
            .iter()
            .filter(|sample| !windows.iter().any(|window| inside(sample, window))),
    );
    (per_window, healthy)
}

/// Everything the text report needs.
#[derive(Debug)]
pub struct ReportInput<'a> {
    pub title: String,
    pub verdict: &'a str,
    pub partition_mechanism: &'a str,
    pub clock_mechanism: &'a str,
    pub samples: &'a [Sample],
    pub windows: &'a [FaultWindow],
    pub checker: String,
    pub lost_writes: &'a [String],
    pub errors: &'a std::collections::BTreeMap<String, u64>,
    pub problems: &'a [String],
}

/// Renders `report.txt`.
pub fn render(input: &ReportInput<'_>) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{}", input.title);
    let _ = writeln!(text, "verdict: {}", input.verdict);
    let _ = writeln!(text, "partitions: {}", input.partition_mechanism);
    let _ = writeln!(text, "clock faults: {}", input.clock_mechanism);
    let all = Stats::of(input.samples.iter());
    let _ = writeln!(
        text,
        "operations: {} (ok {}, fail {}, info {}); ok latency p50 {:.1} ms, p99 {:.1} ms",
        all.total(),
        all.ok,
        all.fail,
        all.info,
        all.p50_ms,
        all.p99_ms
    );
    let (per_window, healthy) = availability(input.samples, input.windows);
    let _ = writeln!(
        text,
        "availability outside faults: {:.1}% of {} operations",
        healthy.availability() * 100.0,
        healthy.total()
    );
    for (window, stats) in input.windows.iter().zip(per_window) {
        let _ = writeln!(
            text,
            "  {} {} [{:.1} s, {:.1} s]: {:.1}% ok of {} (fail {}, info {}), ok p99 {:.1} ms",
            window.kind,
            window.detail,
            window.start_us as f64 / 1e6,
            window.end_us as f64 / 1e6,
            stats.availability() * 100.0,
            stats.total(),
            stats.fail,
            stats.info,
            stats.p99_ms
        );
    }
    if let Some(line) = membership_summary(input.windows) {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(
        text,
        "lost acknowledged writes: {}",
        input.lost_writes.len()
    );
    for lost in input.lost_writes.iter().take(20) {
        let _ = writeln!(text, "  {lost}");
    }
    if !input.errors.is_empty() {
        let _ = writeln!(text, "client errors by kind:");
        for (kind, count) in input.errors {
            let _ = writeln!(text, "  {count:>6}  {kind}");
        }
    }
    for problem in input.problems {
        let _ = writeln!(text, "problem: {problem}");
    }
    let _ = writeln!(text, "checker:\n{}", input.checker);
    text
}

/// `membership changes: 2 joins (3.1, 4.0 s), 1 removal (2.2 s), 1 failed`: how many
/// membership steps completed, how long each took from the harness (request to completion),
/// and how many failed; `None` without any.
pub fn membership_summary(windows: &[FaultWindow]) -> Option<String> {
    let durations = |prefix: &str| -> Vec<String> {
        windows
            .iter()
            .filter(|window| {
                window.kind == NemesisKind::Membership
                    && window.detail.starts_with(prefix)
                    && !window.detail.ends_with("failed")
            })
            .map(|window| {
                format!(
                    "{:.1}",
                    window.end_us.saturating_sub(window.start_us) as f64 / 1e6
                )
            })
            .collect()
    };
    let joins = durations("join");
    let removals = durations("remove");
    let failed = windows
        .iter()
        .filter(|window| {
            window.kind == NemesisKind::Membership && window.detail.ends_with("failed")
        })
        .count();
    if joins.is_empty() && removals.is_empty() && failed == 0 {
        return None;
    }
    let part = |list: &[String], one: &str, many: &str| {
        let noun = if list.len() == 1 { one } else { many };
        if list.is_empty() {
            format!("0 {noun}")
        } else {
            format!("{} {noun} ({} s)", list.len(), list.join(", "))
        }
    };
    Some(format!(
        "membership changes: {}, {}{}",
        part(&joins, "join", "joins"),
        part(&removals, "removal", "removals"),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(invoke_ms: u64, latency_ms: u64, status: Status) -> Sample {
        Sample {
            invoke_us: invoke_ms * 1000,
            complete_us: Some((invoke_ms + latency_ms) * 1000),
            status,
        }
    }

    #[test]
    fn availability_counts_operations_invoked_inside_each_window() {
        let samples = vec![
            sample(100, 2, Status::Ok),
            sample(1_100, 5, Status::Info),
            sample(1_200, 3, Status::Ok),
            sample(1_300, 9, Status::Fail),
            sample(3_000, 4, Status::Ok),
        ];
        let windows = vec![FaultWindow {
            kind: NemesisKind::Pause,
            detail: "n1".into(),
            start_us: 1_000_000,
            end_us: 2_000_000,
        }];
        let (per_window, healthy) = availability(&samples, &windows);
        assert_eq!(per_window.len(), 1);
        assert_eq!(
            (per_window[0].ok, per_window[0].fail, per_window[0].info),
            (1, 1, 1)
        );
        assert!((per_window[0].availability() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(healthy.ok, 2);
        assert_eq!(healthy.availability(), 1.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }

    #[test]
    fn membership_summary_counts_joins_and_removals_with_their_durations() {
        let window = |kind, detail: &str, start_s: u64, end_ms: u64| FaultWindow {
            kind,
            detail: detail.into(),
            start_us: start_s * 1_000_000,
            end_us: end_ms * 1_000,
        };
        assert_eq!(
            membership_summary(&[window(NemesisKind::Kill, "n1", 1, 2_000)]),
            None
        );
        let windows = [
            window(NemesisKind::Membership, "join n4", 5, 8_100),
            window(NemesisKind::Kill, "n2", 10, 15_000),
            window(NemesisKind::Membership, "remove n4", 20, 22_500),
            window(NemesisKind::Membership, "join n5", 30, 31_000),
        ];
        assert_eq!(
            membership_summary(&windows).unwrap(),
            "membership changes: 2 joins (3.1, 1.0 s), 1 removal (2.5 s)"
        );
        let windows = [
            window(NemesisKind::Membership, "join n4", 5, 6_000),
            window(NemesisKind::Membership, "remove n2 failed", 10, 160_000),
        ];
        assert_eq!(
            membership_summary(&windows).unwrap(),
            "membership changes: 1 join (1.0 s), 0 removals, 1 failed"
        );
    }
}
