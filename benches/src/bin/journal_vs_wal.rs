//! The accord journal's two homes at the same durability, in one run: the dedicated segmented
//! log (`concord_cluster::journal::log::Log`, plain-file and io_uring backends) against
//! RocksDB's WAL as the engine journal uses it (`RocksEngine::write` of one put in
//! `Family::Txn` with `Durability::Sync`: WAL `sync = true`, RocksDB's own group commit).
//!
//! Every append carries the same record bytes (a 16-byte key and a `--record-bytes` value;
//! the log's payload is key ‖ value) and waits for its sync. Each of `--appenders` (default
//! 1 and 16) threads appends `--records` records; one round runs every (appenders, journal)
//! pair once, interleaved; the median rate of `--rounds` rounds and the ratios log/RocksDB are
//! printed. Where io_uring is unavailable its rows say so.
//!
//! Run: `cargo run --profile bench -p concord-benches --bin journal_vs_wal --
//! [--records 400] [--rounds 5] [--record-bytes 256]`.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use concord_benches::median;
use concord_cluster::journal::log::{Backend, Log, LogConfig};
use concord_storage::engine::{Durability, Engine, EngineOptions, Family, WriteBatch};
use concord_storage_rocksdb::{RocksEngine, RocksTuning};

const APPENDERS: [usize; 2] = [1, 16];
const KEY_BYTES: usize = 16;

struct Args {
    records: usize,
    rounds: usize,
    record_bytes: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        records: 400,
        rounds: 5,
        record_bytes: 256,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next();
        match (flag.as_str(), value) {
            ("--records", Some(value)) => args.records = value.parse()?,
            ("--rounds", Some(value)) => args.rounds = value.parse()?,
            ("--record-bytes", Some(value)) => args.record_bytes = value.parse()?,
            (other, _) => bail!("unknown or incomplete flag {other}"),
        }
    }
    Ok(args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    RocksWal,
    LogPlain,
    LogUring,
}

impl Journal {
    const ALL: [Journal; 3] = [Journal::RocksWal, Journal::LogPlain, Journal::LogUring];

    fn name(self) -> &'static str {
        match self {
            Journal::RocksWal => "rocksdb wal",
            Journal::LogPlain => "log plain",
            Journal::LogUring => "log io_uring",
        }
    }
}

fn key(thread: usize, i: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_BYTES);
    key.extend_from_slice(&(thread as u64).to_be_bytes());
    key.extend_from_slice(&(i as u64).to_be_bytes());
    key
}

/// Runs `appenders` threads of `records` appends each through `append`; returns the elapsed
/// time from the moment all threads start.
fn drive(
    appenders: usize,
    records: usize,
    append: Arc<dyn Fn(usize, usize) -> Result<()> + Send + Sync>,
) -> Result<Duration> {
    let barrier = Arc::new(Barrier::new(appenders + 1));
    let handles: Vec<_> = (0..appenders)
        .map(|thread| {
            let barrier = barrier.clone();
            let append = append.clone();
            std::thread::spawn(move || -> Result<()> {
                barrier.wait();
                for i in 0..records {
                    append(thread, i)?;
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for handle in handles {
        match handle.join() {
            Ok(result) => result?,
            Err(_) => bail!("an appender panicked"),
        }
    }
    Ok(started.elapsed())
}

/// One measurement: records per second, or `None` where io_uring is unavailable.
fn run(dir: &Path, journal: Journal, appenders: usize, args: &Args) -> Result<Option<f64>> {
    let value = vec![0x5a_u8; args.record_bytes];
    let elapsed = match journal {
        Journal::RocksWal => {
            let engine = Arc::new(RocksEngine::open(
                dir,
                EngineOptions::default(),
                &RocksTuning::default(),
            )?);
            drive(
                appenders,
                args.records,
                Arc::new(move |thread, i| {
                    let mut batch = WriteBatch::new();
                    batch.put(Family::Txn, key(thread, i), value.clone());
                    Ok(engine.write(batch, Durability::Sync)?)
                }),
            )?
        }
        Journal::LogPlain | Journal::LogUring => {
            let backend = if journal == Journal::LogUring {
                Backend::IoUring
            } else {
                Backend::PlainFile
            };
            let config = LogConfig {
                backend,
                ..LogConfig::default()
            };
            let log = match Log::open(dir, config) {
                Ok((log, _)) => log,
                Err(error) if backend == Backend::IoUring => {
                    println!("io_uring unavailable: {error}");
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            };
            drive(
                appenders,
                args.records,
                Arc::new(move |thread, i| {
                    let mut payload = key(thread, i);
                    payload.extend_from_slice(&value);
                    log.append(payload)?;
                    Ok(())
                }),
            )?
        }
    };
    std::fs::remove_dir_all(dir)?;
    Ok(Some(
        (appenders * args.records) as f64 / elapsed.as_secs_f64(),
    ))
}

fn main() -> Result<()> {
    let args = args()?;
    let scratch = tempfile::tempdir()?;
    println!(
        "journal_vs_wal bench: appenders {APPENDERS:?} x {} records of {} key + {} value bytes, \
         every append waits for its sync; {} interleaved rounds (medians)",
        args.records, KEY_BYTES, args.record_bytes, args.rounds
    );
    // samples[appenders index][journal index]: elapsed per record (so `median` applies).
    let mut samples = vec![vec![Vec::new(); Journal::ALL.len()]; APPENDERS.len()];
    for round in 0..args.rounds {
        for (a, appenders) in APPENDERS.iter().enumerate() {
            for (j, journal) in Journal::ALL.iter().enumerate() {
                let dir = scratch.path().join(format!("{round}-{appenders}-{j}"));
                if let Some(rate) = run(&dir, *journal, *appenders, &args)? {
                    println!(
                        "round {round}: {appenders:>2} appenders, {:<12} {rate:>9.0} records/s",
                        journal.name()
                    );
                    samples[a][j].push(Duration::from_secs_f64(1.0 / rate));
                }
            }
        }
    }
    for (a, appenders) in APPENDERS.iter().enumerate() {
        let rates: Vec<Option<f64>> = samples[a]
            .iter_mut()
            .map(|per_record| {
                (!per_record.is_empty()).then(|| 1.0 / median(per_record).as_secs_f64())
            })
            .collect();
        let Some(wal) = rates[0] else {
            bail!("no RocksDB samples");
        };
        for (j, journal) in Journal::ALL.iter().enumerate() {
            match rates[j] {
                Some(rate) => println!(
                    "{appenders:>2} appenders: {:<12} median {rate:>9.0} records/s, ratio to rocksdb wal {:.2}",
                    journal.name(),
                    rate / wal
                ),
                None => println!(
                    "{appenders:>2} appenders: {:<12} unavailable",
                    journal.name()
                ),
            }
        }
    }
    Ok(())
}
