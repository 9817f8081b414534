//! Tests of the CQL data store: its codecs (transaction bodies and read
//! results round-trip, corrupt bytes are errors, and a read's error travels
//! as data) and its writes (a write below the published feed watermark keeps
//! its row).

use std::sync::Arc;

use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Slice, SliceBound, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableOptions, TableSpec,
};
use concord_storage::types::CqlType;

use super::*;

fn table() -> Arc<TableDef> {
    let db = crate::Db::open_in_memory(Arc::new(concord_storage::clock::ManualClock::new(
        1_700_000_000_000_000,
    )));
    db.create_keyspace(
        KeyspaceDef {
            name: "app".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Strict,
    )
    .expect("keyspace");
    let column = |name: &str, ty: CqlType, kind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    db.create_table(
        TableSpec {
            keyspace: "app".into(),
            name: "t".into(),
            columns: vec![
                column("k", CqlType::Int, ColumnKind::PartitionKey),
                column(
                    "c",
                    CqlType::Int,
                    ColumnKind::Clustering(concord_storage::value::ClusteringOrder::Asc),
                ),
                column("v", CqlType::Bigint, ColumnKind::Regular),
                column(
                    "l",
                    CqlType::List(Box::new(CqlType::Int)),
                    ColumnKind::Regular,
                ),
            ],
            options: TableOptions::default(),
        },
        IfExists::Strict,
    )
    .expect("table")
    .expect("created")
}

fn every_kind(table: &Arc<TableDef>) -> Transaction {
    let v = table.column("v").expect("v").id;
    let l = table.column("l").expect("l").id;
    Transaction {
        reads: vec![
            Read::Row {
                table: table.clone(),
                partition_key: vec![CqlValue::Int(1)],
                clustering: vec![CqlValue::Int(2)],
            },
            Read::Partition {
                table: table.clone(),
                partition_key: vec![CqlValue::Int(3)],
                slice: Slice {
                    start: SliceBound::Excluded(vec![CqlValue::Int(0)]),
                    end: SliceBound::Unbounded,
                },
                limit_rows: Some(10),
            },
        ],
        writes: vec![Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(1)],
            ops: vec![
                RowOp::Upsert {
                    clustering: vec![CqlValue::Int(2)],
                    liveness: Liveness::RowMarker,
                    ttl: Ttl::Seconds(30),
                    cells: vec![(v, CellOp::Set(Some(CqlValue::Bigint(5))))],
                },
                RowOp::DeletePartition,
            ],
        }],
        condition: vec![
            Check::RowExists { read: 0 },
            Check::RowAbsent { read: 1 },
            Check::Column {
                read: 0,
                column: l,
                element: Some(CqlValue::Int(0)),
                operator: CompareOp::GreaterOrEqual,
                value: None,
            },
            Check::Columns {
                left: (0, v),
                operator: CompareOp::Less,
                right: (1, v),
            },
        ],
        derived: vec![
            DerivedCell {
                write: 0,
                op: 0,
                column: v,
                read: 0,
                derivation: Derivation::Arithmetic(Arithmetic::Subtract, CqlValue::Bigint(2)),
            },
            DerivedCell {
                write: 0,
                op: 0,
                column: l,
                read: 0,
                derivation: Derivation::ListSetIndex(-1, None),
            },
            DerivedCell {
                write: 0,
                op: 0,
                column: l,
                read: 0,
                derivation: Derivation::ListRemoveValues(vec![CqlValue::Int(4)]),
            },
        ],
    }
}

#[test]
fn bodies_round_trip_and_corrupt_bytes_are_errors() {
    let table = table();
    let registry = TableRegistry::new();
    registry.insert(table.clone());
    let transaction = every_kind(&table);
    let bytes = encode_body(&transaction, 7).expect("encode");
    assert_eq!(
        decode_body(&bytes, &registry).expect("decode"),
        Body {
            transaction: transaction.clone(),
            schema_version: 7
        }
    );
    // A body of format 1 (before the schema version) decodes as version 0.
    let mut unversioned = vec![BODY_VERSION_UNVERSIONED];
    unversioned.extend_from_slice(&bytes[9..]);
    assert_eq!(
        decode_body(&unversioned, &registry).expect("decode format 1"),
        Body {
            transaction,
            schema_version: 0
        }
    );
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            decode_body(&bytes[..cut], &registry).is_err(),
            "cut at {cut}"
        );
    }
    let mut extended = bytes.clone();
    extended.push(0);
    assert!(decode_body(&extended, &registry).is_err());
    // A table dropped since the body was built (this node's schema is at the body's version
    // and lacks it) is a clear error.
    let dropped = TableRegistry::new();
    dropped.publish_version(7);
    let error = decode_body(&bytes, &dropped).expect_err("no table");
    assert!(error.to_string().contains("no longer exists"), "{error}");
}

#[test]
fn read_results_round_trip_per_key_and_errors_travel_as_data() {
    let table = table();
    let v = table.column("v").expect("v").id;
    let row = Row {
        clustering: vec![CqlValue::Int(2)],
        columns: [(
            v,
            ColumnValue {
                value: CqlValue::Bigint(9),
                write_time: WriteTime(1_234),
                expiry: Some(Expiry {
                    expiry_seconds: 99,
                    ttl_seconds: 7,
                }),
            },
        )]
        .into_iter()
        .collect(),
    };
    let results = vec![
        (0, ReadResult::Row(Some(row.clone()))),
        (1, ReadResult::Row(None)),
        (
            2,
            ReadResult::Partition(Some(Partition {
                token: Token(-5),
                key: vec![CqlValue::Int(3)],
                static_row: Some(row.clone()),
                rows: vec![row.clone(), row],
            })),
        ),
        (3, ReadResult::Partition(None)),
    ];
    let bytes = encode_key_reads(&results).expect("encode");
    assert_eq!(decode_key_reads(&bytes).expect("decode"), results);
    assert!(decode_key_reads(&bytes[..bytes.len() - 1]).is_err());
    let failed = encode_read_error("a row of app.t needs all 1 clustering columns");
    let error = decode_key_reads(&failed).expect_err("an error");
    assert!(error.to_string().contains("clustering columns"), "{error}");
}

#[test]
fn keys_are_per_table_partition() {
    let table = table();
    let one = partition_key(&table, &[CqlValue::Int(1)]).expect("key");
    assert_eq!(
        one,
        partition_key(&table, &[CqlValue::Int(1)]).expect("key")
    );
    assert_ne!(
        one,
        partition_key(&table, &[CqlValue::Int(2)]).expect("key")
    );
    // The token is Cassandra's token of the partition key alone; the table id prefixes it.
    let encoded = keys::encode_partition(&table, &[CqlValue::Int(1)]).expect("encode");
    assert_eq!(one.token, encoded.token);
    assert_eq!(&one.partition[..4], &table.id.0.to_be_bytes());
    assert!(partition_key(&table, &[CqlValue::Text("x".into())]).is_err());
    // More partitions than one protocol transaction names is a clear error.
    let writes: Vec<Mutation> = (0..=TXN_KEYS_MAX as i32)
        .map(|k| Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(k)],
            ops: vec![RowOp::DeletePartition],
        })
        .collect();
    let tables = vec![table.clone(); writes.len()];
    let error = build_txn(
        &Transaction {
            writes,
            ..Transaction::default()
        },
        &tables,
        0,
    )
    .expect_err("too many");
    assert!(error.to_string().contains("TXN_KEYS_MAX"), "{error}");
}

type MemoryStore = CqlStore<concord_storage::memory::MemoryEngine>;

/// A transaction store over an in-memory engine whose compaction knows `registry`'s tables,
/// with its feed and pacer (feed records on or off).
fn memory_store(
    registry: &TableRegistry,
    feed_records: bool,
) -> (
    Arc<concord_storage::memory::MemoryEngine>,
    Arc<ChangeFeed>,
    Arc<FeedPacer>,
    MemoryStore,
) {
    let clock: Arc<dyn concord_storage::clock::Clock> = Arc::new(
        concord_storage::clock::ManualClock::new(1_700_000_000_000_000),
    );
    let engine = Arc::new(concord_storage::memory::MemoryEngine::new(
        concord_storage::engine::EngineOptions {
            rows: rows::row_family_options(clock, registry.clone()),
        },
    ));
    let feed = Arc::new(ChangeFeed::open(engine.as_ref()).expect("feed"));
    let pacer = FeedPacer::new(feed.clone(), feed_records);
    let store = CqlStore::new(engine.clone(), registry.clone(), pacer.clone());
    (engine, feed, pacer, store)
}

/// The computed writes of one upsert of row (k = 1, c = 2) of `table` with `cells`, encoded
/// on schema `schema_version`.
fn upsert_writes(table: &TableDef, cells: Vec<(ColumnId, CellOp)>, schema_version: u64) -> Writes {
    let mutation = Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(1)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Int(2)],
            liveness: Liveness::RowMarker,
            ttl: Ttl::Unlimited,
            cells,
        }],
    };
    let key = partition_key(table, &[CqlValue::Int(1)]).expect("key");
    [(
        key,
        Some(encode_mutations(&[&mutation], schema_version).expect("encode")),
    )]
    .into_iter()
    .collect()
}

/// Row (k = 1, c = 2) of `table` in `engine`.
fn row_1_2(engine: &concord_storage::memory::MemoryEngine, table: &TableDef) -> Row {
    rows::read_row(engine, table, &[CqlValue::Int(1)], &[CqlValue::Int(2)], 0)
        .expect("read")
        .expect("the row")
}

/// Found by the Jepsen harness (list-append, 3 nodes, one killed and restarted): a peer's
/// transaction that the restarted node applied late had an executeAt below the feed watermark
/// this node had already published, and `CqlStore::write` skipped its row with its feed
/// record. Reads served by that replica then missed appends the others held, and later reads
/// saw them again at their executeAt positions: reads of one list that are not prefixes of
/// each other (`incompatible-order`). The row is the truth: it is written at its executeAt,
/// only its feed record is dropped (and counted).
#[test]
fn a_write_below_the_published_feed_watermark_keeps_its_row() {
    let table = table();
    let registry = TableRegistry::new();
    registry.insert(table.clone());
    let (engine, feed, pacer, store) = memory_store(&registry, true);
    let mut observer = PacerObserver(pacer.clone());
    let l = table.column("l").expect("l").id;
    let append = |element: i32| -> Writes {
        upsert_writes(
            &table,
            vec![(l, CellOp::ListAppend(vec![CqlValue::Int(element)]))],
            0,
        )
    };
    let at = |hlc: u64| {
        Timestamp::new(
            concord_txn::timestamp::Epoch(1),
            hlc,
            0,
            concord_txn::timestamp::NodeId(2),
        )
    };
    // One runtime step: the apply floor before it, a write, the floor after it.
    let step = |observer: &mut PacerObserver, floors: (u64, u64), writes: &Writes, execute_at| {
        observer.before_step(at(floors.0));
        let mut batch = WriteBatch::new();
        store.write(writes, at(execute_at), &mut batch);
        engine
            .write(batch, concord_storage::engine::Durability::Sync)
            .expect("write");
        observer.after_step(at(floors.1));
    };
    // This node applies element 2 (executeAt 2_000) and publishes a watermark past it.
    step(&mut observer, (2_000, 3_000), &append(2), 2_000);
    assert_eq!(feed.frontier().watermark, WriteTime(2_999));
    // A peer's transaction fetched late: element 1 at executeAt 1_000, below the watermark.
    step(&mut observer, (3_000, 3_000), &append(1), 1_000);
    let row = row_1_2(&engine, &table);
    assert_eq!(
        row.columns.get(&l).map(|cell| cell.value.clone()),
        Some(CqlValue::List(vec![CqlValue::Int(1), CqlValue::Int(2)])),
        "both appends, in executeAt order"
    );
    assert_eq!(pacer.dropped_records.load(Ordering::Relaxed), 1);
    let records = feed::read_from(
        engine.as_ref(),
        FeedPosition(0),
        feed.frontier().position_end,
        10,
    )
    .expect("feed");
    assert_eq!(
        records
            .iter()
            .map(|record| record.write_time)
            .collect::<Vec<_>>(),
        vec![WriteTime(2_000)],
        "only the record above the watermark"
    );
}

/// Found by CI under load (`a_schema_change_under_load_loses_no_write`: node 3 lacked the
/// first row written after CREATE TABLE): a replica whose schema log trailed the
/// coordinator's applied a transaction on a table it did not know yet and skipped its write
/// as if the table had been dropped. Now the writes carry the coordinator's schema version;
/// a replica behind it waits for its schema, and only a table unknown at that version counts
/// as dropped.
#[test]
fn a_write_on_a_table_this_node_does_not_know_yet_waits_for_the_schema() {
    let table = table();
    let registry = TableRegistry::new();
    registry.publish_version(4);
    let (engine, _, _, store) = memory_store(&registry, false);
    let v = table.column("v").expect("v").id;
    let writes = |schema_version: u64| -> Writes {
        upsert_writes(
            &table,
            vec![(v, CellOp::Set(Some(CqlValue::Bigint(9))))],
            schema_version,
        )
    };
    let at = Timestamp::new(
        concord_txn::timestamp::Epoch(1),
        5_000,
        0,
        concord_txn::timestamp::NodeId(2),
    );

    // Built on schema 4, which this node is at: the table is unknown at the transaction's
    // version, so it was dropped since; nothing is written, at once.
    let mut batch = WriteBatch::new();
    store.write(&writes(4), at, &mut batch);
    assert!(batch.is_empty(), "a dropped table's write is skipped");

    // Built on schema 5, which creates the table and reaches this node 200 ms later.
    let publisher = {
        let (registry, table) = (registry.clone(), table.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            registry.insert(table);
            registry.publish_version(5);
        })
    };
    let started = std::time::Instant::now();
    let mut batch = WriteBatch::new();
    store.write(&writes(5), at, &mut batch);
    publisher.join().expect("publisher");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(150),
        "the write waited for the schema"
    );
    assert!(!batch.is_empty(), "the write is applied, not skipped");
    engine
        .write(batch, concord_storage::engine::Durability::Sync)
        .expect("write");
    let row = row_1_2(&engine, &table);
    assert_eq!(
        row.columns.get(&v).map(|cell| cell.value.clone()),
        Some(CqlValue::Bigint(9))
    );
}

#[test]
fn a_registry_version_wait_ends_when_the_version_is_published_or_times_out() {
    let registry = TableRegistry::new();
    assert_eq!(registry.version(), 0);
    assert!(registry.wait_for_version(0, std::time::Duration::ZERO));
    assert!(!registry.wait_for_version(1, std::time::Duration::from_millis(20)));
    registry.publish_version(3);
    registry.publish_version(2);
    assert_eq!(registry.version(), 3, "versions never go back");
    assert!(registry.wait_for_version(3, std::time::Duration::ZERO));
}
