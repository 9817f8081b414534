//! Tests of the segmented log and the journal on it: round trip, reopen, torn tail, truncation,
//! group commit under concurrent appenders, and the `Journal` contract.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

use concord_storage::engine::{Durability, Family, WriteBatch};
use concord_txn::command::Command;
use concord_txn::storage::Journal;
use concord_txn::timestamp::{Domain, Epoch, LocalTime, NodeId, Timestamp, TxnId, TxnKind};

use super::LogJournal;
use super::log::{Backend, Log, LogConfig, LogError, MAX_RECORD_BYTES, Record};

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 37) as usize)).into_bytes()
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip_and_replay_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(records.is_empty());
    for i in 0..100 {
        assert_eq!(log.append(payload(i)).unwrap(), i);
    }
    assert_eq!(log.stats().records.load(Ordering::Relaxed), 100);
    drop(log);
    let (log, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    let expected: Vec<Record> = (0..100)
        .map(|i| Record {
            lsn: i,
            payload: payload(i),
        })
        .collect();
    assert_eq!(records, expected);
    // Appends continue the sequence after a reopen.
    assert_eq!(log.append(b"after".to_vec()).unwrap(), 100);
    drop(log);
    let (_, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(records.len(), 101);
    assert_eq!(records[100].payload, b"after");
}

#[test]
fn torn_or_corrupt_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
    for i in 0..10 {
        log.append(payload(i)).unwrap();
    }
    drop(log);
    let path = dir.path().join(&segments(dir.path())[0]);
    let whole = fs::metadata(&path).unwrap().len();
    // A torn write: half a header and some garbage.
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[7, 0, 0])
        .unwrap();
    let (log, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(records.len(), 10);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        whole,
        "the torn tail is cut on open"
    );
    assert_eq!(log.append(payload(10)).unwrap(), 10);
    drop(log);

    // Corrupt the last record's payload: it goes, the nine before it stay.
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (_, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    let expected: Vec<Record> = (0..10)
        .map(|i| Record {
            lsn: i,
            payload: payload(i),
        })
        .collect();
    assert_eq!(records, expected);
}

/// A log of 256-byte segments (so they roll often) holding
/// `payload(0..records)`, and its configuration.
fn small_segments(dir: &std::path::Path, records: u64) -> (Log, LogConfig) {
    let config = LogConfig {
        segment_bytes: 256,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir, config).unwrap();
    for i in 0..records {
        log.append(payload(i)).unwrap();
    }
    (log, config)
}

#[test]
fn corruption_before_the_last_segment_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let (log, config) = small_segments(dir.path(), 40);
    drop(log);
    let names = segments(dir.path());
    assert!(names.len() > 2, "small segments roll: {names:?}");
    let first = dir.path().join(&names[0]);
    let mut bytes = fs::read(&first).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&first, &bytes).unwrap();
    let error = Log::open(dir.path(), config).unwrap_err();
    assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
}

#[test]
fn truncation_removes_whole_segments_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (log, config) = small_segments(dir.path(), 60);
    let before = segments(dir.path());
    assert!(before.len() > 3, "{before:?}");
    let removed = log.truncate_below(30).unwrap();
    assert!(removed > 0);
    assert_eq!(segments(dir.path()).len(), before.len() - removed);
    assert_eq!(
        log.stats().segments_removed.load(Ordering::Relaxed),
        removed as u64
    );
    // Truncating everything keeps the segment being written.
    log.append(payload(60)).unwrap();
    drop(log);
    let (log, records) = Log::open(dir.path(), config).unwrap();
    let first = records[0].lsn;
    assert!(
        first <= 30 && first > 0,
        "records from 30 on survive, older segments went: {first}"
    );
    let expected: Vec<Record> = (first..61)
        .map(|i| Record {
            lsn: i,
            payload: payload(i),
        })
        .collect();
    assert_eq!(records, expected);
    log.truncate_below(u64::MAX).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(log.append(payload(61)).unwrap(), 61);
}

#[test]
fn oversized_records_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
    let error = log.append(vec![0; MAX_RECORD_BYTES + 1]).unwrap_err();
    assert!(matches!(error, LogError::TooLarge(_)), "{error}");
    assert_eq!(log.append(b"ok".to_vec()).unwrap(), 0);
}

#[test]
fn concurrent_appends_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
    const THREADS: u64 = 16;
    const PER_THREAD: u64 = 50;
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut lsns = Vec::new();
                for i in 0..PER_THREAD {
                    let lsn = log.append(payload(t * 1000 + i)).unwrap();
                    // The append returned: its group was synced, so the sync counter already
                    // covers it (records counted only after the fdatasync).
                    assert!(log.stats().records.load(Ordering::Relaxed) > lsn);
                    lsns.push((lsn, t * 1000 + i));
                }
                lsns
            })
        })
        .collect();
    let mut written: Vec<(u64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    written.sort();
    let total = THREADS * PER_THREAD;
    assert_eq!(written.len() as u64, total);
    let syncs = log.stats().syncs.load(Ordering::Relaxed);
    assert!(
        syncs < total,
        "{syncs} syncs for {total} records: appends were not grouped"
    );
    drop(log);
    let (_, records) = Log::open(dir.path(), LogConfig::default()).unwrap();
    let expected: Vec<Record> = written
        .iter()
        .map(|(lsn, i)| Record {
            lsn: *lsn,
            payload: payload(*i),
        })
        .collect();
    assert_eq!(records, expected);
}

fn command(hlc: u64) -> Command {
    let ts = Timestamp::new(Epoch(1), hlc, 0, NodeId(1));
    let mut command = Command::new(TxnId::new(ts, TxnKind::Write, Domain::Key), LocalTime(0));
    command.execute_at = ts;
    command
}

#[test]
fn log_journal_keeps_the_latest_state_forgets_erased_and_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 512,
        ..LogConfig::default()
    };
    let mut journal = LogJournal::open(dir.path(), config).unwrap();
    for hlc in 1..=20 {
        journal
            .record(&command(hlc), WriteBatch::new(), Durability::Sync)
            .unwrap();
    }
    let mut updated = command(5);
    updated.execute_at = Timestamp::new(Epoch(1), 99, 0, NodeId(1));
    journal
        .record(&updated, WriteBatch::new(), Durability::Sync)
        .unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Family::Rows, b"k".to_vec(), b"v".to_vec());
    assert!(
        journal
            .record(&command(21), batch, Durability::Sync)
            .is_err()
    );
    let erased: Vec<TxnId> = (1..=18)
        .filter(|h| *h != 5)
        .map(|h| command(h).txn_id)
        .collect();
    journal.erase(&erased).unwrap();
    assert!(
        journal
            .log()
            .stats()
            .segments_removed
            .load(Ordering::Relaxed)
            > 0
    );
    assert_eq!(journal.record_count().unwrap(), 3);
    drop(journal);

    let journal = LogJournal::open(dir.path(), config).unwrap();
    let replayed = journal.replay(LocalTime(0)).unwrap();
    let ids: Vec<TxnId> = replayed.iter().map(|c| c.txn_id).collect();
    assert_eq!(
        ids,
        vec![command(5).txn_id, command(19).txn_id, command(20).txn_id],
        "TxnId order"
    );
    assert_eq!(replayed[0], updated);
    assert_eq!(replayed[2], command(20));
    assert_eq!(journal.record_count().unwrap(), 3);
}

/// Concurrent appends across segment rolls through `backend`, read back by a plain-file open
/// (the format does not depend on the backend).
fn concurrent_rolling_appends(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        backend,
    };
    let (log, _) = Log::open(dir.path(), config).unwrap();
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..40u64)
                    .map(|i| (log.append(payload(t * 1000 + i)).unwrap(), t * 1000 + i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<(u64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    written.sort();
    assert!(segments(dir.path()).len() > 1);
    drop(log);
    let plain = LogConfig {
        backend: Backend::PlainFile,
        ..config
    };
    let (_, records) = Log::open(dir.path(), plain).unwrap();
    let expected: Vec<Record> = written
        .iter()
        .map(|(lsn, i)| Record {
            lsn: *lsn,
            payload: payload(*i),
        })
        .collect();
    assert_eq!(records, expected);
}

#[test]
fn io_uring_backend_writes_the_same_log_or_falls_back() {
    concurrent_rolling_appends(Backend::PlainFile);
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        backend: Backend::IoUring,
        ..LogConfig::default()
    };
    let auto = LogConfig {
        backend: Backend::Auto,
        ..LogConfig::default()
    };
    match Log::open(dir.path(), config) {
        Ok((log, _)) => {
            assert_eq!(log.backend(), Backend::IoUring);
            drop(log);
            concurrent_rolling_appends(Backend::IoUring);
            let (log, _) = Log::open(tempfile::tempdir().unwrap().path(), auto).unwrap();
            assert_eq!(
                log.backend(),
                Backend::IoUring,
                "Auto picks io_uring where it works"
            );
        }
        Err(error) => {
            // Where io_uring_setup fails, Auto must fall back to plain files and still work.
            assert!(matches!(error, LogError::Io(_)), "{error}");
            let (log, _) = Log::open(tempfile::tempdir().unwrap().path(), auto).unwrap();
            assert_eq!(log.backend(), Backend::PlainFile);
            concurrent_rolling_appends(Backend::Auto);
        }
    }
}
