//! The row store's write and point-read paths beside a plain RocksDB loop
//! with the same key and value sizes and the same WAL sync setting, in one
//! run. Prints Concord's throughput as a ratio of raw RocksDB's.
//!
//! Concord's side goes through `Db::write` / `Db::read_row`: schema lookup,
//! validation, key encoding, cell encoding, LWW merge operands, reconcile on
//! read. The peer does `put`/`get` of an 8-byte key and a 100-byte value.
//!
//! Run: `cargo bench -p concord-benches --bench row_store`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concord_server::Db;
use concord_server::config::{CommitSync, Config};
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;
use criterion::{BenchmarkId, Criterion, Throughput};

const VALUE_BYTES: usize = 100;
const PRELOADED_ROWS: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Fsync,
    NoFsync,
}

impl Sync {
    fn label(self) -> &'static str {
        match self {
            Sync::Fsync => "fsync",
            Sync::NoFsync => "no_fsync",
        }
    }
}

fn open_concord(dir: &Path, sync: Sync) -> (Db, Arc<TableDef>) {
    let commit_sync = match sync {
        Sync::Fsync => CommitSync::Batch,
        // Periodic sync every 10 s: effectively no fsync on the write path.
        Sync::NoFsync => CommitSync::Periodic,
    };
    let config = Config {
        data_dir: dir.to_path_buf(),
        commit_sync,
        periodic_sync_ms: 10_000,
        ..Config::default()
    };
    let db = Db::open_with_config(&config).expect("open concord");
    db.create_keyspace(
        KeyspaceDef {
            name: "bench".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Lenient,
    )
    .expect("create keyspace");
    let spec = TableSpec {
        keyspace: "bench".into(),
        name: "kv".into(),
        columns: vec![
            ColumnSpec {
                name: "k".into(),
                ty: CqlType::Bigint,
                kind: ColumnKind::PartitionKey,
            },
            ColumnSpec {
                name: "v".into(),
                ty: CqlType::Blob,
                kind: ColumnKind::Regular,
            },
        ],
        options: TableOptions::default(),
    };
    db.create_table(spec, IfExists::Lenient)
        .expect("create table");
    let table = db.table("bench", "kv").expect("table");
    (db, table)
}

fn upsert(table: &TableDef, key: i64, value: &[u8]) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Bigint(key)],
        ops: vec![RowOp::Upsert {
            clustering: vec![],
            liveness: Liveness::CellsOnly,
            ttl: Ttl::TableDefault,
            cells: vec![(
                table.columns()[1].id,
                CellOp::Set(Some(CqlValue::Blob(value.to_vec()))),
            )],
        }],
    }
}

fn open_raw(dir: &Path) -> rocksdb::DB {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.set_max_background_jobs(2);
    options.set_write_buffer_size(64 * 1024 * 1024);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table_options = rocksdb::BlockBasedOptions::default();
    table_options.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&table_options);
    rocksdb::DB::open(&options, dir).expect("open raw rocksdb")
}

/// A cheap deterministic key sequence (splitmix64), the same on both sides.
fn key_at(idx: u64) -> i64 {
    let mut z = idx.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % PRELOADED_ROWS as u64) as i64
}

fn bench_writes(c: &mut Criterion) {
    let value = vec![0xAB; VALUE_BYTES];
    for sync in [Sync::Fsync, Sync::NoFsync] {
        let mut group = c.benchmark_group(format!("write_{}", sync.label()));
        group.throughput(Throughput::Elements(1));
        group.measurement_time(Duration::from_secs(if sync == Sync::Fsync {
            10
        } else {
            5
        }));
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = open_raw(&dir.path().join("raw"));
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(sync == Sync::Fsync);
        let mut idx = 0u64;
        group.bench_function(BenchmarkId::new("rocksdb", "put"), |b| {
            b.iter(|| {
                idx += 1;
                raw.put_opt(key_at(idx).to_be_bytes(), &value, &write_options)
                    .expect("put");
            })
        });
        drop(raw);
        let (db, table) = open_concord(&dir.path().join("concord"), sync);
        let mut idx = 0u64;
        group.bench_function(BenchmarkId::new("concord", "put"), |b| {
            b.iter(|| {
                idx += 1;
                db.write(vec![upsert(&table, key_at(idx), &value)])
                    .expect("write");
            })
        });
        group.finish();
    }
}

fn bench_point_reads(c: &mut Criterion) {
    let value = vec![0xCD; VALUE_BYTES];
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = open_raw(&dir.path().join("raw"));
    let (db, table) = open_concord(&dir.path().join("concord"), Sync::NoFsync);
    for key in 0..PRELOADED_ROWS {
        raw.put(key.to_be_bytes(), &value).expect("put");
    }
    for chunk_start in (0..PRELOADED_ROWS).step_by(1_000) {
        let mutations = (chunk_start..chunk_start + 1_000)
            .map(|key| upsert(&table, key, &value))
            .collect();
        db.write(mutations).expect("write");
    }
    raw.flush().expect("flush raw");
    db.flush().expect("flush concord");
    let mut group = c.benchmark_group("point_read");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let mut idx = 0u64;
    group.bench_function(BenchmarkId::new("rocksdb", "get"), |b| {
        b.iter(|| {
            idx += 1;
            let found = raw.get(key_at(idx).to_be_bytes()).expect("get");
            assert!(found.is_some());
        })
    });
    let mut idx = 0u64;
    group.bench_function(BenchmarkId::new("concord", "get"), |b| {
        b.iter(|| {
            idx += 1;
            let row = db
                .read_row(&table, &[CqlValue::Bigint(key_at(idx))], &[])
                .expect("read");
            assert!(row.is_some());
        })
    });
    group.finish();
}

/// Reads criterion's median estimate (ns per iteration) for one benchmark.
fn median_ns(group: &str, function: &str, parameter: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = Path::new(&target)
        .join("criterion")
        .join(group)
        .join(function)
        .join(parameter)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    println!("\n== Concord row store vs raw RocksDB (same run, medians) ==");
    println!(
        "{:<16} {:>14} {:>14} {:>10}",
        "path", "rocksdb ops/s", "concord ops/s", "ratio"
    );
    for (group, operation) in [
        ("write_fsync", "put"),
        ("write_no_fsync", "put"),
        ("point_read", "get"),
    ] {
        let raw_operation = operation;
        let (Some(raw), Some(concord)) = (
            median_ns(group, "rocksdb", raw_operation),
            median_ns(group, "concord", operation),
        ) else {
            println!("{group:<16} (estimates not found; run without --baseline filters)");
            continue;
        };
        let raw_ops = 1e9 / raw;
        let concord_ops = 1e9 / concord;
        println!(
            "{group:<16} {raw_ops:>14.0} {concord_ops:>14.0} {:>9.2}x",
            concord_ops / raw_ops
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_writes(&mut criterion);
    bench_point_reads(&mut criterion);
    criterion.final_summary();
    print_ratios();
}
