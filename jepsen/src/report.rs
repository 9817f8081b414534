//! The run's report: operation counts, latency percentiles, availability during each fault,
//! the checker's verdict with its anomalies, lost writes, and client errors — as `report.txt`.

use std::fmt::Write as _;

use concord_checker::Status;

use crate::nemesis::FaultWindow;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::NemesisKind;

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
}
