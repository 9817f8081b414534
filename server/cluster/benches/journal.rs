//! Journal log throughput of its two backends, measured in the same run: `THREADS` appenders
//! each append `PER_THREAD` records of `RECORD_BYTES` to one `concord_cluster::journal::log::Log`
//! (group commit; every append waits for its `fdatasync`), (a) with io_uring linked write +
//! fsync and (b) with plain `write` + `fdatasync`. Each is run `RUNS` times, interleaved; the
//! medians (records/s, records per sync) and the io_uring/plain ratio are printed. The
//! comparison with RocksDB's WAL lives in benches/ (this crate must not link RocksDB). Run with
//! `cargo bench -p concord-cluster --bench journal`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::atomic::Ordering;
use std::time::Instant;

use concord_cluster::journal::log::{Backend, Log, LogConfig};

const THREADS: usize = 16;
const PER_THREAD: usize = 500;
const RECORD_BYTES: usize = 256;
const RUNS: usize = 5;

/// (records per second, records per sync) of one run.
fn run(backend: Backend) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        backend,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir.path(), config).unwrap();
    assert_eq!(
        log.backend(),
        backend,
        "io_uring unavailable on this machine"
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    log.append(vec![7u8; RECORD_BYTES]).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let records = (THREADS * PER_THREAD) as f64;
    let syncs = log.stats().syncs.load(Ordering::Relaxed) as f64;
    (records / elapsed, records / syncs)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let (mut uring, mut plain, mut uring_group, mut plain_group) = (vec![], vec![], vec![], vec![]);
    for run_index in 0..RUNS {
        let (u, ug) = run(Backend::IoUring);
        let (p, pg) = run(Backend::PlainFile);
        eprintln!(
            "run {}: io_uring {u:.0} rec/s ({ug:.1} rec/sync), plain {p:.0} rec/s ({pg:.1} rec/sync)",
            run_index + 1
        );
        uring.push(u);
        plain.push(p);
        uring_group.push(ug);
        plain_group.push(pg);
    }
    let (u, p) = (median(uring), median(plain));
    eprintln!(
        "{THREADS} appenders x {PER_THREAD} records of {RECORD_BYTES} bytes, median of {RUNS}: io_uring {u:.0} rec/s ({:.1} rec/sync), plain {p:.0} rec/s ({:.1} rec/sync), io_uring/plain throughput {:.2}",
        median(uring_group),
        median(plain_group),
        u / p
    );
}
