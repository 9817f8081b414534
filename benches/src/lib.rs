//! Benchmarks that measure Concord beside a peer in the same run and print
//! the ratio (see `benches/benches/`). Shared helpers live here.
//!
//! **Must never**: be a dependency of anything but benchmarks; timings are
//! never asserted in tests.

use std::time::Duration;

/// Returns the median of `samples`, or zero for none.
pub fn median(samples: &mut [Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Returns the `quantile` (0.0..=1.0) of sorted `samples`, or zero for none.
pub fn quantile(sorted_samples: &[Duration], quantile: f64) -> Duration {
    if sorted_samples.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted_samples.len() - 1) as f64 * quantile.clamp(0.0, 1.0)).round() as usize;
    sorted_samples[idx]
}
