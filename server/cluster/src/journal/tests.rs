//! Tests of the segmented log and the journal on it: round trip, reopen, torn tail, truncation,
//! group commit under concurrent appenders, the `Journal` contract, and the split apply (a
//! crash that loses the engine's unsynced apply batch; J5).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use concord_storage::engine::{
    Direction, Durability, Engine, EngineOptions, Family, KeyRange, ReadView, WriteBatch,
};
use concord_storage::memory::MemoryEngine;
use concord_txn::command::{Command, Status};
use concord_txn::node::{NodeConfig, Outcome};
use concord_txn::storage::{DataStore, Journal, KvDataStore};
use concord_txn::timestamp::{Domain, Epoch, LocalTime, NodeId, Timestamp, TxnId, TxnKind};
use concord_txn::txn::{Key, ReadData, Txn, Writes};

use super::log::{Backend, Log, LogConfig, LogError, MAX_RECORD_BYTES, Record};
use super::{APPLIED_MARKER_PREFIX, LogJournal};
use crate::runtime::tests::{append, config, engine, list};
use crate::runtime::{Loopback, NoObserver, Runtime, RuntimeConfig};

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

/// A log journal on `engine` whose 512-byte segments roll every few records.
fn small_log_journal(
    dir: &std::path::Path,
    engine: &Arc<MemoryEngine>,
) -> LogJournal<MemoryEngine> {
    let config = LogConfig {
        segment_bytes: 512,
        ..LogConfig::default()
    };
    LogJournal::open(dir, config, engine.clone()).unwrap()
}

#[test]
fn log_journal_keeps_the_latest_state_forgets_erased_and_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut journal = small_log_journal(dir.path(), &engine);
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

    let journal = small_log_journal(dir.path(), &engine);
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

/// An engine that loses its unsynced writes on `simulate_crash`.
fn crashable_engine() -> Arc<MemoryEngine> {
    Arc::new(MemoryEngine::with_crash_simulation(EngineOptions::default()))
}

fn markers(engine: &MemoryEngine) -> usize {
    engine
        .scan(
            Family::Txn,
            &KeyRange::prefix(APPLIED_MARKER_PREFIX),
            Direction::Forward,
        )
        .unwrap()
        .count()
}

fn row_key(hlc: u64) -> Vec<u8> {
    format!("row-{hlc}").into_bytes()
}

/// `command(hlc)` decided and PreApplied with one write.
fn pre_applied(hlc: u64) -> Command {
    let mut command = command(hlc);
    command.status = Status::PreApplied;
    let mut writes = Writes::new();
    writes.insert(Key::numbered(hlc), Some(vec![hlc as u8]));
    command.writes = Some(writes);
    command
}

/// Records `hlc`'s PreApplied (synced, in the log) and Applied states, the apply's data batch
/// buffered in the engine as the core does.
fn apply(journal: &mut LogJournal<MemoryEngine>, hlc: u64) {
    let mut command = pre_applied(hlc);
    journal
        .record(&command, WriteBatch::new(), Durability::Sync)
        .unwrap();
    command.status = Status::Applied;
    let mut data = WriteBatch::new();
    data.put(Family::Rows, row_key(hlc), vec![hlc as u8]);
    journal
        .record(&command, data, Durability::Buffered)
        .unwrap();
}

#[test]
fn an_erase_makes_the_applies_durable_first_and_truncation_keeps_live_applies() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crashable_engine();
    let mut journal = small_log_journal(dir.path(), &engine);
    for hlc in 1..=30 {
        apply(&mut journal, hlc);
    }
    assert!(segments(dir.path()).len() > 4);
    assert_eq!(markers(&engine), 30);
    let erased: Vec<TxnId> = (1..=25).map(|h| command(h).txn_id).collect();
    journal.erase(&erased).unwrap();
    let removed = journal
        .log()
        .stats()
        .segments_removed
        .load(Ordering::Relaxed);
    assert!(removed > 0, "segments of erased commands go");
    drop(journal);
    // J5: the erase synced the engine, so a crash now keeps every applied row, and the
    // marker deletes (buffered, after the sync) are what it loses.
    engine.simulate_crash();
    for hlc in 1..=30 {
        assert_eq!(
            engine.get(Family::Rows, &row_key(hlc)).unwrap(),
            Some(vec![hlc as u8]),
            "row {hlc} survives the crash"
        );
    }
    assert_eq!(
        markers(&engine),
        30,
        "the crash brought the erased markers back"
    );

    let journal = small_log_journal(dir.path(), &engine);
    assert_eq!(markers(&engine), 5, "stale markers are deleted on open");
    let replayed = journal.replay(LocalTime(0)).unwrap();
    let ids: Vec<TxnId> = replayed.iter().map(|c| c.txn_id).collect();
    assert_eq!(
        ids,
        (26..=30).map(|h| command(h).txn_id).collect::<Vec<_>>()
    );
    assert!(
        replayed.iter().all(|c| c.status == Status::Applied),
        "applies durable in the engine are not applied again: {replayed:?}"
    );
}

#[test]
fn a_crash_before_the_engine_sync_leaves_the_command_to_apply_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crashable_engine();
    let mut journal = LogJournal::open(dir.path(), LogConfig::default(), engine.clone()).unwrap();
    apply(&mut journal, 1);
    apply(&mut journal, 2);
    engine.sync_wal().unwrap();
    apply(&mut journal, 3);
    // A command applied with no earlier record here goes to the log first.
    let mut direct = pre_applied(4);
    direct.status = Status::Applied;
    let mut data = WriteBatch::new();
    data.put(Family::Rows, row_key(4), vec![4]);
    journal.record(&direct, data, Durability::Buffered).unwrap();
    drop(journal);
    engine.simulate_crash();
    assert_eq!(engine.get(Family::Rows, &row_key(3)).unwrap(), None);
    assert_eq!(engine.get(Family::Rows, &row_key(4)).unwrap(), None);
    let journal = LogJournal::open(dir.path(), LogConfig::default(), engine.clone()).unwrap();
    let statuses: Vec<Status> = journal
        .replay(LocalTime(0))
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            Status::Applied,
            Status::Applied,
            Status::PreApplied,
            Status::PreApplied
        ]
    );
}

fn runtime_config() -> RuntimeConfig {
    RuntimeConfig {
        // No durability rounds: nothing erases (and so syncs the engine) behind the test.
        node_config: NodeConfig {
            gc_enabled: false,
            ..NodeConfig::default()
        },
        ..config()
    }
}

/// `KvDataStore`, counting the apply batches it builds.
#[derive(Debug)]
struct CountingStore {
    inner: KvDataStore<MemoryEngine>,
    writes: Arc<AtomicUsize>,
}

impl DataStore for CountingStore {
    fn read(
        &self,
        txn: &Txn,
        keys: &[Key],
        execute_at: Timestamp,
    ) -> concord_txn::Result<ReadData> {
        self.inner.read(txn, keys, execute_at)
    }
    fn write(&self, writes: &Writes, execute_at: Timestamp, batch: &mut WriteBatch) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(writes, execute_at, batch);
    }
}

/// A runtime on the log journal in `dir`; returns it and its store's apply counter.
fn start_on_log(dir: &std::path::Path, engine: &Arc<MemoryEngine>) -> (Runtime, Arc<AtomicUsize>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let journal = LogJournal::open(dir, LogConfig::default(), engine.clone()).unwrap();
    let store = CountingStore {
        inner: KvDataStore::new(engine.clone()),
        writes: writes.clone(),
    };
    let runtime = Runtime::start(
        runtime_config(),
        Box::new(journal),
        Box::new(store),
        Box::new(Loopback::default()),
        Box::new(NoObserver),
    )
    .unwrap();
    (runtime, writes)
}

fn commit(runtime: &Runtime, key: &Key, value: u64) {
    let outcome = runtime.execute(append(key, value)).unwrap();
    assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
}

#[test]
fn the_runtime_on_the_log_journal_applies_again_what_a_crash_lost() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crashable_engine();
    let key = Key::numbered(7);
    {
        let (runtime, writes) = start_on_log(dir.path(), &engine);
        commit(&runtime, &key, 1);
        commit(&runtime, &key, 2);
        assert_eq!(writes.load(Ordering::SeqCst), 2);
        assert_eq!(list(&engine, &key), vec![1, 2]);
    }
    // The engine never synced the applies: the crash loses them; the log keeps both
    // transactions PreApplied.
    engine.simulate_crash();
    assert_eq!(list(&engine, &key), Vec::<u64>::new());
    let (runtime, writes) = start_on_log(dir.path(), &engine);
    assert_eq!(
        writes.load(Ordering::SeqCst),
        2,
        "both applied again on open"
    );
    assert_eq!(list(&engine, &key), vec![1, 2]);
    commit(&runtime, &key, 3);
    assert_eq!(list(&engine, &key), vec![1, 2, 3]);
    drop(runtime);

    // Synced applies: the markers are durable and the reopened node applies nothing again.
    engine.sync_wal().unwrap();
    engine.simulate_crash();
    let (_runtime, writes) = start_on_log(dir.path(), &engine);
    assert_eq!(
        writes.load(Ordering::SeqCst),
        0,
        "no apply replayed over its marker"
    );
    assert_eq!(list(&engine, &key), vec![1, 2, 3]);
}
