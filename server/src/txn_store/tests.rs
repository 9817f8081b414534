//! Tests of the CQL data store's codecs: transaction bodies and read results
//! round-trip, corrupt bytes are errors, and a read's error travels as data.

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
    let bytes = encode_body(&transaction).expect("encode");
    assert_eq!(decode_body(&bytes, &registry).expect("decode"), transaction);
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            decode_body(&bytes[..cut], &registry).is_err(),
            "cut at {cut}"
        );
    }
    let mut extended = bytes.clone();
    extended.push(0);
    assert!(decode_body(&extended, &registry).is_err());
    // A table dropped since the body was built is a clear error.
    let error = decode_body(&bytes, &TableRegistry::new()).expect_err("no table");
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
    )
    .expect_err("too many");
    assert!(error.to_string().contains("TXN_KEYS_MAX"), "{error}");
}
