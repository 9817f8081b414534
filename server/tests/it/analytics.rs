//! The node's analytic path end to end: writes through `Db::execute` reach
//! the columnar replica through the change feed; `Db::sql` routes lookups to
//! the row store and scans to the replica, honours hints and freshness,
//! explains its choice; restart, feed retention and the memory pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::util::pretty::pretty_format_batches;
use concord_columnar::ColumnarOptions;
use concord_columnar::follower::FollowerOptions;
use concord_server::Db;
use concord_server::config::{CommitSync, Config, TxnMode};
use concord_server::db::AnalyticsOptions;
use concord_server::sql::{Freshness, SqlOptions, Store, StoreChoice};
use concord_storage::feed;
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::types::CqlType;
use concord_storage::value::{ClusteringOrder, CqlValue};

/// A node's configuration for tests: no fsync per write.
pub(crate) fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        // No fsync per write: these tests measure nothing and must be quick.
        commit_sync: CommitSync::Periodic,
        periodic_sync_ms: 1000,
        ..Config::default()
    }
}

/// The follower polls every millisecond and never merges on its own.
pub(crate) fn fast_options() -> AnalyticsOptions {
    AnalyticsOptions {
        follower: FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_secs(3600),
        },
        ..AnalyticsOptions::default()
    }
}

fn create_schema<E: concord_storage::engine::Engine>(db: &Db<E>) -> Arc<TableDef> {
    db.create_keyspace(
        KeyspaceDef {
            name: "shop".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Lenient,
    )
    .expect("keyspace");
    let column = |name: &str, ty: CqlType, kind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    db.create_table(
        TableSpec {
            keyspace: "shop".into(),
            name: "orders".into(),
            columns: vec![
                column("customer", CqlType::Int, ColumnKind::PartitionKey),
                column(
                    "id",
                    CqlType::Bigint,
                    ColumnKind::Clustering(ClusteringOrder::Asc),
                ),
                column("amount", CqlType::Bigint, ColumnKind::Regular),
                column("item", CqlType::Text, ColumnKind::Regular),
            ],
            options: TableOptions::default(),
        },
        IfExists::Lenient,
    )
    .expect("table");
    db.table("shop", "orders").expect("table")
}

fn order(table: &TableDef, customer: i32, id: i64, amount: i64) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(customer)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Bigint(id)],
            liveness: Liveness::RowMarker,
            ttl: Ttl::TableDefault,
            cells: vec![
                (
                    table.column("amount").expect("amount").id,
                    CellOp::Set(Some(CqlValue::Bigint(amount))),
                ),
                (
                    table.column("item").expect("item").id,
                    CellOp::Set(Some(CqlValue::Text(format!("item-{}", id % 7)))),
                ),
            ],
        }],
    }
}

fn text(result: &concord_server::sql::SqlResult) -> String {
    pretty_format_batches(&result.batches)
        .expect("format")
        .to_string()
}

/// `count(*)` and `sum(amount)` as one line, e.g. `12 340`.
fn totals(db: &Db, options: &SqlOptions, hint: &str) -> (Store, String) {
    let query = format!("SELECT {hint} count(*) AS n, sum(amount) AS total FROM shop.orders");
    let result = db.sql_with(&query, options).expect("totals");
    let batch = &result.batches[0];
    let n = arrow::util::display::array_value_to_string(batch.column(0), 0).expect("n");
    let total = arrow::util::display::array_value_to_string(batch.column(1), 0).expect("total");
    (result.store, format!("{n} {total}"))
}

#[test]
fn sql_routes_lookups_to_the_row_store_and_scans_to_the_replica() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open_with_analytics(&config(dir.path()), fast_options()).expect("open");
    let table = create_schema(&db);
    let mut expected_total = 0;
    for idx in 0..60i64 {
        db.write(vec![order(&table, (idx % 6) as i32, idx, idx * 10)])
            .expect("write");
        expected_total += idx * 10;
    }
    // Default freshness: the answer includes every write committed before.
    let defaults = SqlOptions::default();
    let (store, answer) = totals(&db, &defaults, "");
    assert_eq!(store, Store::Columnar);
    assert_eq!(answer, format!("60 {expected_total}"));

    // A full partition key pinned: the row store answers.
    let lookup = db
        .sql("SELECT id, amount FROM shop.orders WHERE customer = 2 AND id >= 20 ORDER BY id")
        .expect("lookup");
    assert_eq!(lookup.store, Store::RowStore);
    assert_eq!(lookup.snapshot, None);
    let rows = text(&lookup);
    for id in [20, 26, 32, 38, 44, 50, 56] {
        assert!(rows.contains(&format!("| {id} ")), "{rows}");
    }
    assert!(!rows.contains("| 14 "), "{rows}");
    // A join of two pinned partitions stays on the row store; a join with an
    // unpinned side goes to the replica.
    let pinned_join = db
        .sql(
            "SELECT count(*) FROM shop.orders a JOIN shop.orders b ON a.item = b.item \
             WHERE a.customer = 1 AND b.customer = 2",
        )
        .expect("pinned join");
    assert_eq!(pinned_join.store, Store::RowStore);
    let join = db
        .sql("SELECT count(*) FROM shop.orders a JOIN shop.orders b ON a.item = b.item WHERE a.customer = 1")
        .expect("join");
    assert_eq!(join.store, Store::Columnar);

    // Hints and options force a store; the row-store full scan agrees.
    let (store, row_answer) = totals(&db, &defaults, "/*+ ROW_STORE */");
    assert_eq!(store, Store::RowStore);
    assert_eq!(row_answer, answer);
    let forced = SqlOptions {
        store: StoreChoice::RowStore,
        ..SqlOptions::default()
    };
    assert_eq!(totals(&db, &forced, "").0, Store::RowStore);
    let columnar_lookup = db
        .sql("SELECT /*+ COLUMNAR */ count(*) FROM shop.orders WHERE customer = 2")
        .expect("forced columnar");
    assert_eq!(columnar_lookup.store, Store::Columnar);
    assert!(text(&columnar_lookup).contains("| 10 "));
    let contradiction = db
        .sql_with("SELECT /*+ COLUMNAR */ count(*) FROM shop.orders", &forced)
        .expect_err("contradicting hint and option");
    assert!(
        contradiction.to_string().contains("contradicts"),
        "{contradiction}"
    );
    let unknown = db.sql("SELECT /*+ TIFLASH */ 1").expect_err("unknown hint");
    assert!(unknown.to_string().contains("unknown hint"), "{unknown}");

    // EXPLAIN names the store and shows the plan.
    let explain = db
        .sql("EXPLAIN SELECT item, sum(amount) FROM shop.orders GROUP BY item")
        .expect("explain");
    let plan = text(&explain);
    assert!(plan.contains("concord_route"), "{plan}");
    assert!(plan.contains("store=columnar at snapshot"), "{plan}");
    assert!(plan.contains("Aggregate"), "{plan}");
    let explain = db
        .sql("EXPLAIN SELECT amount FROM shop.orders WHERE customer = 3")
        .expect("explain lookup");
    assert!(
        text(&explain).contains("store=row_store"),
        "{}",
        text(&explain)
    );

    // Bounded staleness and the watermark read at once and see a prefix.
    for freshness in [
        Freshness::BoundedStaleness(Duration::from_secs(60)),
        Freshness::Watermark,
    ] {
        let options = SqlOptions {
            freshness,
            ..SqlOptions::default()
        };
        let (store, stale) = totals(&db, &options, "");
        assert_eq!(store, Store::Columnar);
        assert_eq!(stale, answer, "nothing was written since: {freshness:?}");
    }

    // DDL reaches the replica: an added column, then TRUNCATE.
    db.add_column(
        "shop",
        "orders",
        ColumnSpec {
            name: "note".into(),
            ty: CqlType::Text,
            kind: ColumnKind::Regular,
        },
    )
    .expect("add column");
    let nulls = db
        .sql("SELECT count(note) AS notes FROM shop.orders")
        .expect("new column");
    assert!(text(&nulls).contains("| 0 "), "{}", text(&nulls));
    db.truncate("shop", "orders").expect("truncate");
    assert_eq!(totals(&db, &defaults, "").1, "0 ");
    let table = db.table("shop", "orders").expect("table");
    db.write(vec![order(&table, 1, 1, 5)]).expect("write");
    assert_eq!(totals(&db, &defaults, "").1, "1 5");
    db.drop_table("shop", "orders", IfExists::Strict)
        .expect("drop");
    let gone = db
        .sql("SELECT count(*) FROM shop.orders")
        .expect_err("dropped");
    assert!(
        matches!(gone, concord_server::sql::SqlError::Sql(_)),
        "{gone}"
    );
}

#[test]
fn restart_in_the_middle_of_ingest_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    // A small delta bound: ingest merges into segments while it runs, so the
    // restart finds segments, a manifest position and an unmerged tail.
    let options = || AnalyticsOptions {
        columnar: ColumnarOptions {
            delta_versions_max: 200,
            ..ColumnarOptions::default()
        },
        ..fast_options()
    };
    let written = {
        let db = Arc::new(Db::open_with_analytics(&config(dir.path()), options()).expect("open"));
        let table = create_schema(&db);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut idx = 0i64;
                while !stop.load(Ordering::SeqCst) || idx < 300 {
                    db.write(vec![order(&table, (idx % 13) as i32, idx, idx)])
                        .expect("write");
                    idx += 1;
                }
                idx
            })
        };
        // Write until the replica has merged at least once (bounded), so the restart finds a
        // segment however slow the machine is; the writer keeps going, leaving a tail.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while db.columnar().expect("replica").replica().n_segments() == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        let written = writer.join().expect("writer");
        // Closed while the follower is still ingesting.
        let db = Arc::into_inner(db).expect("the only handle");
        assert!(db.columnar().expect("replica").replica().n_segments() >= 1);
        drop(db);
        written
    };
    let db = Db::open_with_analytics(&config(dir.path()), options()).expect("reopen");
    let table = db.table("shop", "orders").expect("table");
    for idx in written..written + 50 {
        db.write(vec![order(&table, (idx % 13) as i32, idx, idx)])
            .expect("write");
    }
    let n = written + 50;
    let expected = format!("{n} {}", n * (n - 1) / 2);
    assert_eq!(totals(&db, &SqlOptions::default(), "").1, expected);
    assert_eq!(
        totals(&db, &SqlOptions::default(), "/*+ ROW_STORE */").1,
        expected
    );
    // Row by row, the replica equals the row store.
    let rows = |hint: &str| {
        let result = db
            .sql(&format!(
                "SELECT {hint} customer, id, amount, item FROM shop.orders ORDER BY id"
            ))
            .expect("rows");
        text(&result)
    };
    assert_eq!(rows("/*+ COLUMNAR */"), rows("/*+ ROW_STORE */"));
    let replica = db.columnar().expect("replica").replica().clone();
    assert_eq!(replica.next_position(), db.feed().frontier().position_end);
}

#[test]
fn feed_retention_drops_what_the_replica_holds_and_a_lagging_replica_rebuilds() {
    let dir = tempfile::tempdir().expect("dir");
    let options = AnalyticsOptions {
        follower: FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_millis(20),
        },
        feed_retention_interval: Duration::from_millis(10),
        ..AnalyticsOptions::default()
    };
    let db = Db::open_with_analytics(&config(dir.path()), options).expect("open");
    let table = create_schema(&db);
    for idx in 0..100i64 {
        db.write(vec![order(&table, (idx % 5) as i32, idx, 1)])
            .expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed::retention_floor(db.engine().as_ref())
        .expect("floor")
        .0
        < 100
    {
        assert!(
            Instant::now() < deadline,
            "retention never dropped the feed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(totals(&db, &SqlOptions::default(), "").1, "100 100");
    drop(db);

    // A replica that never merges, with a tiny retention limit: retention
    // passes it, and it rebuilds from a row-store snapshot.
    let options = AnalyticsOptions {
        follower: FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_secs(3600),
        },
        feed_retention_interval: Duration::from_millis(5),
        feed_retained_records_max: 3,
        ..AnalyticsOptions::default()
    };
    let db = Db::open_with_analytics(&config(dir.path()), options).expect("reopen");
    let table = db.table("shop", "orders").expect("table");
    for idx in 100..300i64 {
        db.write(vec![order(&table, (idx % 5) as i32, idx, 1)])
            .expect("write");
        if idx % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Retention runs every 5 ms; on a loaded machine its thread may be late,
    // so wait for it (bounded) instead of sleeping a fixed time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed::retention_floor(db.engine().as_ref())
        .expect("floor")
        .0
        < 290
    {
        assert!(
            Instant::now() < deadline,
            "retention never passed the lagging replica"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(totals(&db, &SqlOptions::default(), "").1, "300 300");
}

#[test]
fn an_analytic_query_over_the_memory_pool_fails_and_oltp_goes_on() {
    let dir = tempfile::tempdir().expect("dir");
    let options = AnalyticsOptions {
        columnar: ColumnarOptions {
            memory_pool_bytes: 16 * 1024,
            ..ColumnarOptions::default()
        },
        ..fast_options()
    };
    let db = Db::open_with_analytics(&config(dir.path()), options).expect("open");
    let table = create_schema(&db);
    for idx in 0..2000i64 {
        db.write(vec![order(&table, (idx % 50) as i32, idx, idx)])
            .expect("write");
    }
    for hint in ["/*+ COLUMNAR */", "/*+ ROW_STORE */"] {
        let error = db
            .sql(&format!(
                "SELECT {hint} item, sum(amount) FROM shop.orders GROUP BY item"
            ))
            .expect_err("over the pool");
        assert!(
            matches!(error, concord_server::sql::SqlError::ResourcesExhausted(_)),
            "{hint}: {error}"
        );
    }
    // The OLTP path is untouched, and a small lookup still fits.
    db.write(vec![order(&table, 1, 5000, 1)]).expect("write");
    let lookup = db
        .sql("SELECT count(*) FROM shop.orders WHERE customer = 7")
        .expect("small lookup");
    assert_eq!(lookup.store, Store::RowStore);
    assert!(text(&lookup).contains("| 40 "), "{}", text(&lookup));
}

/// A fixed-seed generator (xorshift64), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn through_the_db_the_replica_answers_as_the_row_store_after_every_delete_shape_and_ttl() {
    use concord_storage::clock::ManualClock;
    use concord_storage::rows::{Slice, SliceBound};
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    let mut db = Db::open_in_memory(clock.clone());
    let dir = tempfile::tempdir().expect("dir");
    db.start_analytics(dir.path(), fast_options())
        .expect("analytics");
    let table = create_schema(&db);
    let amount = table.column("amount").expect("amount").id;
    let item = table.column("item").expect("item").id;
    let queries = [
        "SELECT customer, id, amount, item FROM shop.orders ORDER BY customer, id",
        "SELECT customer, id, amount FROM shop.orders WHERE amount > 40 AND item <> 'item-3' ORDER BY customer, id",
        "SELECT item, count(*) AS n, sum(amount) AS total, max(id) AS top FROM shop.orders GROUP BY item ORDER BY item",
        "SELECT a.customer, count(*) AS n FROM shop.orders a JOIN shop.orders b \
         ON a.item = b.item AND a.customer <> b.customer GROUP BY a.customer ORDER BY a.customer",
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for step in 0..300 {
        let customer = rng.below(8) as i32;
        let id = rng.below(12) as i64;
        let mut mutation = order(&table, customer, id, rng.below(100) as i64);
        mutation.ops = vec![match rng.below(10) {
            0 => RowOp::DeleteRow {
                clustering: vec![CqlValue::Bigint(id)],
            },
            1 => RowOp::DeleteRange(Slice {
                start: SliceBound::Included(vec![CqlValue::Bigint(id)]),
                end: SliceBound::Excluded(vec![CqlValue::Bigint(id + 3)]),
            }),
            2 if step % 5 == 0 => RowOp::DeletePartition,
            3 => RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(id)],
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: vec![(amount, CellOp::Set(None))],
            },
            4 | 5 => RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(id)],
                liveness: Liveness::RowMarker,
                ttl: Ttl::Seconds(1 + rng.below(20) as u32),
                cells: vec![
                    (
                        amount,
                        CellOp::Set(Some(CqlValue::Bigint(rng.below(100) as i64))),
                    ),
                    (
                        item,
                        CellOp::Set(Some(CqlValue::Text(format!("item-{}", id % 4)))),
                    ),
                ],
            },
            _ => mutation.ops[0].clone(),
        }];
        db.write(vec![mutation]).expect("write");
        if step % 3 == 0 {
            clock.advance_micros(1_000_000);
        }
        if step % 100 == 99 {
            for query in queries {
                let answer = |hint: &str| {
                    let result = db
                        .sql(&query.replacen("SELECT", &format!("SELECT {hint}"), 1))
                        .expect("query");
                    text(&result)
                };
                assert_eq!(
                    answer("/*+ COLUMNAR */"),
                    answer("/*+ ROW_STORE */"),
                    "step {step}: {query}"
                );
            }
        }
    }
}

/// The change feed's frontier rule in both transaction modes: a frontier
/// sampled at any time covers every write at or below its watermark (its
/// record lies below `position_end`), so a snapshot at T never misses a write
/// with executeAt ≤ T that applies later; and a `Latest` query after the
/// writers return sees every write.
#[test]
fn the_feed_frontier_covers_every_write_at_or_below_its_watermark() {
    for mode in [TxnMode::Direct, TxnMode::Accord] {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config {
            txn_mode: Some(mode),
            ..config(dir.path())
        };
        let options = AnalyticsOptions {
            // Keep every record for the check at the end.
            feed_retention_interval: Duration::from_secs(3600),
            ..fast_options()
        };
        let db = Db::open_with_analytics(&config, options).expect("open");
        assert_eq!(db.txn_mode(), mode);
        let table = create_schema(&db);
        let stop = AtomicBool::new(false);
        let (writers, samples) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut samples = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    samples.push(db.feed().frontier());
                    std::thread::yield_now();
                }
                samples
            });
            let writers: Vec<_> = (0..4i64)
                .map(|writer| {
                    let (db, table) = (&db, &table);
                    scope.spawn(move || {
                        for idx in 0..25 {
                            let id = writer * 1_000 + idx;
                            let at = db
                                .write(vec![order(table, (id % 5) as i32, id, 1)])
                                .expect("write");
                            // Answered: a `Latest` snapshot taken now includes it.
                            assert!(db.commit_timestamp() >= at, "{mode:?}");
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().expect("writer");
            }
            stop.store(true, Ordering::SeqCst);
            (4 * 25, sampler.join().expect("sampler"))
        });
        let end = db.feed().frontier().position_end;
        let records = feed::read_from(db.engine().as_ref(), feed::FeedPosition(0), end, 10_000)
            .expect("records");
        assert_eq!(records.len(), writers, "{mode:?}");
        assert!(!samples.is_empty());
        for sample in &samples {
            for record in &records {
                if record.write_time <= sample.watermark {
                    assert!(
                        record.position < sample.position_end,
                        "{mode:?}: record {record:?} at or below the watermark of {sample:?} \
                         but not below its position_end"
                    );
                }
            }
        }
        let latest = SqlOptions {
            freshness: Freshness::Latest,
            ..SqlOptions::default()
        };
        assert_eq!(
            totals(&db, &latest, "/*+ COLUMNAR */").1,
            format!("{writers} {writers}"),
            "{mode:?}"
        );
    }
}

/// A data directory given as a relative path (`concord start --data-dir data`) still serves
/// SQL once the replica has written Parquet row segments: DataFusion's local object store
/// takes absolute paths only, so a relative segment path was read as one under `/` ("object
/// not found"). The path here is relative to the working directory without changing it.
#[test]
fn a_relative_data_dir_serves_sql_over_its_row_segments() {
    let dir = tempfile::tempdir().expect("dir");
    let cwd = std::env::current_dir().expect("cwd");
    let mut relative = std::path::PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.push(dir.path().strip_prefix("/").expect("absolute temp dir"));
    assert!(relative.is_relative());
    let options = AnalyticsOptions {
        follower: FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_millis(20),
        },
        ..AnalyticsOptions::default()
    };
    let db = Db::open_with_analytics(&config(&relative), options).expect("open");
    let table = create_schema(&db);
    for idx in 0..50i64 {
        db.write(vec![order(&table, (idx % 5) as i32, idx, 2)])
            .expect("write");
    }
    let has_row_segment = || {
        std::fs::read_dir(dir.path().join("columnar"))
            .expect("columnar dir")
            .any(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("rows-")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_row_segment() {
        assert!(Instant::now() < deadline, "no row segment was written");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(totals(&db, &SqlOptions::default(), "").1, "50 100");
}
