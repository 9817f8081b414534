//! What only a persistent engine can show: synced writes survive closing and
//! reopening the database, merged rows read the same after a reopen, and
//! bytes corrupted on disk surface as errors rather than as wrong data.

use std::path::Path;
use std::sync::Arc;

use concord_storage::cell::WriteTime;
use concord_storage::clock::ManualClock;
use concord_storage::engine::{
    Direction, Durability, Engine, EngineOptions, Family, KeyRange, ReadView, WriteBatch,
};
use concord_storage::rows::{
    self, CellOp, Liveness, Mutation, ReadOptions, RowOp, Slice, TableRegistry, Ttl,
};
use concord_storage::schema::{TableDef, TableOptions};
use concord_storage::testing::model;
use concord_storage::value::CqlValue;
use concord_storage_rocksdb::{RocksEngine, RocksTuning};

fn row_options(table: &Arc<TableDef>) -> EngineOptions {
    let clock = ManualClock::new(model::CLOCK_START_SECONDS * 1_000_000);
    let registry = TableRegistry::new();
    registry.insert(table.clone());
    EngineOptions {
        rows: rows::row_family_options(Arc::new(clock), registry),
    }
}

fn open(path: &Path, options: EngineOptions) -> RocksEngine {
    RocksEngine::open(path, options, &RocksTuning::default()).expect("open rocksdb")
}

fn write_rows(engine: &RocksEngine, table: &TableDef, partition_key: i32, millis: i64) {
    let v1 = model::column_id(table, "v1");
    let list = model::column_id(table, "l");
    let ops = (0..3)
        .map(|ck1| RowOp::Upsert {
            clustering: vec![CqlValue::Int(ck1), CqlValue::Text("a".into())],
            liveness: Liveness::RowMarker,
            ttl: Ttl::TableDefault,
            cells: vec![
                (v1, CellOp::Set(Some(CqlValue::Text(format!("v{millis}"))))),
                (list, CellOp::ListAppend(vec![CqlValue::Int(ck1)])),
            ],
        })
        .collect();
    let mutation = Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(partition_key)],
        ops,
    };
    let write_time = WriteTime(model::CLOCK_START_SECONDS * 1_000_000 + millis * 1000);
    let mut batch = WriteBatch::new();
    rows::write_mutation(table, &mutation, write_time, &mut batch).expect("write mutation");
    engine.write(batch, Durability::Sync).expect("write");
}

fn read_partition(
    engine: &RocksEngine,
    table: &TableDef,
    partition_key: i32,
) -> Option<rows::Partition> {
    let options = ReadOptions::at(model::CLOCK_START_SECONDS);
    rows::read_partition(
        engine,
        table,
        &[CqlValue::Int(partition_key)],
        &Slice::all(),
        options,
    )
    .expect("read partition")
}

fn all_pairs(view: &dyn ReadView, family: Family) -> Vec<(Vec<u8>, Vec<u8>)> {
    view.scan(family, &KeyRange::all(), Direction::Forward)
        .expect("start scan")
        .map(|item| item.expect("scan item"))
        .collect()
}

#[test]
fn synced_writes_survive_reopen() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let table = model::table(TableOptions::default());
    let (rows_before, meta_before) = {
        let engine = open(directory.path(), row_options(&table));
        let mut batch = WriteBatch::new();
        for family in Family::ALL {
            batch.put(family, b"k".to_vec(), family.name().as_bytes().to_vec());
        }
        engine.write(batch, Durability::Sync).expect("synced write");
        // Some rows reach SST files, some stay in the log only.
        write_rows(&engine, &table, 1, 1);
        engine.flush().expect("flush");
        write_rows(&engine, &table, 1, 2);
        write_rows(&engine, &table, 2, 3);
        let mut buffered = WriteBatch::new();
        buffered.put(Family::Meta, b"buffered".to_vec(), b"then synced".to_vec());
        engine
            .write(buffered, Durability::Buffered)
            .expect("buffered write");
        engine.sync_wal().expect("sync wal");
        (
            (
                read_partition(&engine, &table, 1),
                read_partition(&engine, &table, 2),
            ),
            all_pairs(&engine, Family::Meta),
        )
    };
    assert!(
        rows_before
            .0
            .as_ref()
            .is_some_and(|partition| partition.rows.len() == 3)
    );
    let engine = open(directory.path(), row_options(&table));
    for family in Family::ALL {
        let value = engine.get(family, b"k").expect("get");
        assert_eq!(
            value.as_deref(),
            Some(family.name().as_bytes()),
            "{family:?}"
        );
    }
    assert_eq!(all_pairs(&engine, Family::Meta), meta_before);
    let rows_after = (
        read_partition(&engine, &table, 1),
        read_partition(&engine, &table, 2),
    );
    assert_eq!(rows_after, rows_before);
    // Merges written before the reopen still combine with merges after it.
    write_rows(&engine, &table, 1, 4);
    let partition = read_partition(&engine, &table, 1).expect("partition");
    let list = model::column_id(&table, "l");
    let first = &partition.rows[0].columns[&list].value;
    assert_eq!(first, &CqlValue::List(vec![CqlValue::Int(0); 3]));
    engine.compact(Family::Rows).expect("compact");
    assert_eq!(read_partition(&engine, &table, 1), Some(partition));
}

/// Flips bytes in the data blocks of every SST file.
fn corrupt_sst_files(path: &Path) -> usize {
    let mut n_corrupted = 0;
    for entry in std::fs::read_dir(path).expect("list database directory") {
        let entry = entry.expect("directory entry");
        if entry
            .path()
            .extension()
            .is_some_and(|extension| extension == "sst")
        {
            let mut bytes = std::fs::read(entry.path()).expect("read sst");
            // Data blocks come first in a block-based table; the index and
            // footer sit at the end, so the first third is data.
            let data_end = bytes.len() / 3;
            for byte in &mut bytes[64..data_end] {
                *byte ^= 0x5A;
            }
            std::fs::write(entry.path(), bytes).expect("write sst");
            n_corrupted += 1;
        }
    }
    n_corrupted
}

#[test]
fn corrupted_files_are_errors_not_wrong_data() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let n_keys = 2000u32;
    let value_of = |idx: u32| format!("value-{idx:06}-").repeat(4).into_bytes();
    {
        let engine = open(directory.path(), EngineOptions::default());
        let mut batch = WriteBatch::new();
        for idx in 0..n_keys {
            batch.put(Family::Meta, idx.to_be_bytes().to_vec(), value_of(idx));
        }
        engine.write(batch, Durability::Sync).expect("write");
        engine.flush().expect("flush");
    }
    assert!(
        corrupt_sst_files(directory.path()) > 0,
        "the flush wrote an SST file"
    );
    // Opening may already fail; if it does not, reads must.
    let Ok(engine) = RocksEngine::open(
        directory.path(),
        EngineOptions::default(),
        &RocksTuning::default(),
    ) else {
        return;
    };
    let mut n_errors = 0;
    for idx in 0..n_keys {
        match engine.get(Family::Meta, &idx.to_be_bytes()) {
            Ok(Some(value)) => assert_eq!(value, value_of(idx), "key {idx} read back wrong"),
            Ok(None) => panic!("key {idx} vanished without an error"),
            Err(_) => n_errors += 1,
        }
    }
    assert!(n_errors > 0, "corruption went unnoticed by gets");
    let scan_failed = engine
        .scan(Family::Meta, &KeyRange::all(), Direction::Forward)
        .map(|mut scan| scan.any(|item| item.is_err()))
        .unwrap_or(true);
    assert!(scan_failed, "corruption went unnoticed by a scan");
}
