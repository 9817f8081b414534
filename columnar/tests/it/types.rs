//! Every CQL type round-trips through the whole replica path — row store and
//! feed, cell versions, rows at a snapshot, Arrow, SQL — back to the value the
//! row store holds; a decimal or varint that does not fit `Decimal128(38, s)`
//! fails the query with `ValueOutOfRange`, never a rounded answer.

use std::cmp::Ordering;

use concord_columnar::{ColumnarOptions, Error, Snapshot, types};
use concord_storage::cell::WriteTime;
use concord_storage::rows::{self, CellOp, Liveness, Mutation, ReadOptions, RowOp, Slice, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, Schema, TableSpec,
};
use concord_storage::testing::model;
use concord_storage::testing::strategies::{arb_type, arb_value, values_identical};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;
use proptest::prelude::*;

use crate::{Node, open_columnar};

fn holds(ty: &CqlType, wanted: &dyn Fn(&CqlType) -> bool) -> bool {
    wanted(ty)
        || match ty {
            CqlType::List(inner) | CqlType::Set(inner) | CqlType::Frozen(inner) => {
                holds(inner, wanted)
            }
            CqlType::Map(key, value) => holds(key, wanted) || holds(value, wanted),
            CqlType::Tuple(fields) => fields.iter().any(|field| holds(field, wanted)),
            CqlType::Udt(udt) => udt.fields.iter().any(|(_, field)| holds(field, wanted)),
            _ => false,
        }
}

/// The row store may hold a UDT without its trailing null fields (the
/// serialized form may omit them); Arrow structs always have every field.
/// Pads every UDT to its declared arity, recursively, so both compare.
fn padded(ty: &CqlType, value: &CqlValue) -> CqlValue {
    match (ty.unfrozen(), value) {
        (CqlType::List(inner), CqlValue::List(items)) => {
            CqlValue::List(items.iter().map(|item| padded(inner, item)).collect())
        }
        (CqlType::Set(inner), CqlValue::Set(items)) => {
            CqlValue::Set(items.iter().map(|item| padded(inner, item)).collect())
        }
        (CqlType::Map(key_ty, value_ty), CqlValue::Map(entries)) => CqlValue::Map(
            entries
                .iter()
                .map(|(key, value)| (padded(key_ty, key), padded(value_ty, value)))
                .collect(),
        ),
        (CqlType::Tuple(types), CqlValue::Tuple(fields)) => CqlValue::Tuple(
            types
                .iter()
                .zip(fields)
                .map(|(ty, field)| field.as_ref().map(|field| padded(ty, field)))
                .collect(),
        ),
        (CqlType::Udt(udt), CqlValue::Udt(fields)) => CqlValue::Udt(
            udt.fields
                .iter()
                .enumerate()
                .map(|(idx, (_, ty))| fields.get(idx).cloned().flatten().map(|f| padded(ty, &f)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

fn arb_column() -> impl Strategy<Value = (CqlType, CqlValue)> {
    arb_type()
        .prop_filter("counters are refused", |ty| {
            !holds(ty, &|ty| matches!(ty, CqlType::Counter))
        })
        .prop_flat_map(|ty| {
            let value = arb_value(&ty);
            (Just(ty), value)
        })
}

fn check(ty: CqlType, value: CqlValue) -> Result<(), TestCaseError> {
    let mut schema = Schema::new();
    let keyspace = KeyspaceDef {
        name: "ks".into(),
        replication: ReplicationStrategy::Local,
        durable_writes: true,
    };
    schema
        .create_keyspace(keyspace, IfExists::Strict)
        .expect("keyspace");
    let spec = TableSpec {
        keyspace: "ks".into(),
        name: "types".into(),
        columns: vec![
            ColumnSpec {
                name: "k".into(),
                ty: CqlType::Int,
                kind: ColumnKind::PartitionKey,
            },
            ColumnSpec {
                name: "v".into(),
                ty: ty.clone(),
                kind: ColumnKind::Regular,
            },
        ],
        options: model::model_table_options(),
    };
    let created = schema.create_table(spec, IfExists::Strict);
    prop_assume!(created.is_ok(), "not a valid column type");
    let table = created.expect("table").expect("new");
    let mut node = Node::new(table.clone());
    let column = table.column("v").expect("v").id;
    let at = WriteTime(model::CLOCK_START_SECONDS * 1_000_000);
    node.write(
        Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(1)],
            ops: vec![RowOp::Upsert {
                clustering: vec![],
                liveness: Liveness::RowMarker,
                ttl: Ttl::Unlimited,
                cells: vec![(column, CellOp::Set(Some(value)))],
            }],
        },
        at,
    );
    let held = rows::read_partition(
        &node.engine,
        &table,
        &[CqlValue::Int(1)],
        &Slice::all(),
        ReadOptions::at(at.seconds()),
    )
    .expect("read")
    .and_then(|partition| partition.rows.into_iter().next())
    .and_then(|row| row.columns.get(&column).map(|c| padded(&ty, &c.value)));

    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    let decimal = |ty: &CqlType| matches!(ty, CqlType::Decimal | CqlType::Varint);
    // From the cells (delta), then from the row segment (Parquet) a merge writes.
    for merged in [false, true] {
        if merged {
            columnar.replica().merge().expect("merge");
        }
        match columnar.sql("SELECT v FROM ks.types", Snapshot::At(at)) {
            Ok(result) => {
                // Every value that converts is read from the row segment.
                prop_assert_eq!(columnar.replica().has_row_segment(table.id), merged);
                let batch = &result.batches[0];
                let back = types::from_array(&ty, batch.column(0).as_ref()).expect("from arrow");
                prop_assert_eq!(back.len(), 1);
                match (&back[0], &held) {
                    (Some(back), Some(held)) if holds(&ty, &decimal) => {
                        prop_assert_eq!(
                            back.compare(held, &ty),
                            Ordering::Equal,
                            "{} {:?} {:?}",
                            ty,
                            back,
                            held
                        );
                    }
                    (Some(back), Some(held)) => {
                        prop_assert!(values_identical(back, held), "{ty}: {back:?} != {held:?}");
                    }
                    (None, None) => {}
                    (back, held) => {
                        prop_assert!(false, "{ty}: {back:?} but the row store holds {held:?}")
                    }
                }
            }
            Err(Error::ValueOutOfRange { .. }) if holds(&ty, &decimal) => {}
            Err(error) => prop_assert!(false, "{ty}: {error}"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(model::config(48))]
    #[test]
    fn every_cql_type_round_trips_through_the_replica((ty, value) in arb_column()) {
        check(ty, value)?;
    }
}
