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

/// What an open loop at a fixed offered rate measured ([`open_loop`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenLoop {
    /// The offered rate, requests per second.
    pub offered: f64,
    /// Answered requests per second over the whole run (last answer included).
    pub achieved: f64,
    /// Latency from each request's *intended* send time (no coordinated omission).
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
    /// False when the loop stopped early: `outstanding_max` requests were in flight.
    pub sustained: bool,
}

/// Sends `rate` requests per second for `duration` on a fixed schedule from a timer thread
/// and measures every answer from the request's intended send time, so a stalled server
/// shows as latency, not as fewer requests (no coordinated omission). `request(i)` makes the
/// i-th request; it runs as a task on the current tokio runtime. The loop gives up (not
/// sustained) once `outstanding_max` requests are in flight. Returns the summary and every
/// answered request's latency, sorted.
pub async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    outstanding_max: usize,
    mut request: F,
) -> anyhow::Result<(OpenLoop, Vec<Duration>)>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    anyhow::ensure!(
        rate > 0.0 && rate.is_finite(),
        "open loop: rate {rate} must be positive"
    );
    let runtime = tokio::runtime::Handle::current();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * duration.as_secs_f64()) as u64;
    let (latencies2, errors2, outstanding2) =
        (latencies.clone(), errors.clone(), outstanding.clone());
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0_u64;
        let mut sustained = true;
        for index in 0..total {
            let intended = start + interval.mul_f64(index as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if outstanding2.load(Ordering::Relaxed) >= outstanding_max {
                sustained = false;
                break;
            }
            outstanding2.fetch_add(1, Ordering::Relaxed);
            let future = request(index);
            let (latencies, errors, outstanding) =
                (latencies2.clone(), errors2.clone(), outstanding2.clone());
            runtime.spawn(async move {
                match future.await {
                    Ok(()) => latencies
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(intended.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
            sent += 1;
        }
        (start, sent, sustained)
    });
    let (start, sent, sustained) = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the open-loop sender thread panicked"))?;
    while outstanding.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let mut latencies = std::mem::take(
        &mut *latencies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    latencies.sort_unstable();
    let summary = OpenLoop {
        offered: rate,
        achieved: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
        errors: errors.load(Ordering::Relaxed),
        sustained: sustained && sent == total,
    };
    Ok((summary, latencies))
}

/// Whose CPU time to count: one process (0: this one), or a process and its children
/// (PostgreSQL's postmaster and its backends).
#[derive(Debug, Clone, Copy)]
pub enum CpuOf {
    Process(u32),
    ProcessTree(u32),
}

impl CpuOf {
    /// User + system CPU time in clock ticks, from `/proc` (0 elsewhere).
    pub fn ticks(self) -> u64 {
        use std::path::Path;
        // (parent pid, utime + stime) from /proc/<pid>/stat; the command name may hold
        // spaces, so fields are counted after its ')'.
        fn stat(path: &Path) -> Option<(u32, u64)> {
            let text = std::fs::read_to_string(path).ok()?;
            let fields: Vec<&str> = text
                .get(text.rfind(')')? + 1..)?
                .split_whitespace()
                .collect();
            let ppid = fields.get(1)?.parse().ok()?;
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((ppid, utime + stime))
        }
        match self {
            CpuOf::Process(0) => stat(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t),
            CpuOf::Process(pid) => {
                stat(&Path::new("/proc").join(pid.to_string()).join("stat")).map_or(0, |(_, t)| t)
            }
            CpuOf::ProcessTree(root) => {
                let mut total = stat(&Path::new("/proc").join(root.to_string()).join("stat"))
                    .map_or(0, |(_, t)| t);
                if let Ok(entries) = std::fs::read_dir("/proc") {
                    for entry in entries.flatten() {
                        if let Some((ppid, ticks)) = stat(&entry.path().join("stat"))
                            && ppid == root
                        {
                            total += ticks;
                        }
                    }
                }
                total
            }
        }
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if unknown).
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
