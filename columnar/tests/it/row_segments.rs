//! Row segments (typed Parquet of a table's rows at a merge horizon) answer
//! full scans with the delta merged on top: updates, every delete shape and
//! new partitions after the segment, cells expiring between the segment's
//! horizon and the snapshot, columns added after it, and a restart (row
//! segments are rewritten by the first merge) all read as the row store.

use concord_columnar::{ColumnarOptions, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{ColumnKind, ColumnSpec, Schema};
use concord_storage::testing::model;
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

use crate::differential::check;
use crate::{Node, open_columnar, query_rows, sorted};

/// Every column of the (altered) table at `at` equals the row store's.
fn check_all_columns(columnar: &concord_columnar::Columnar, node: &Node, at: WriteTime) {
    let (_, partitions) = node.row_store_at(at);
    let expected = concord_columnar::sql::partition_rows(&node.table, &partitions);
    let got = query_rows(
        columnar,
        node,
        "SELECT pk, ck1, ck2, s, v1, v2, l, st, m, extra FROM ks.t",
        at,
    );
    assert_eq!(sorted(got), sorted(expected), "all columns at {at:?}");
}

const T0: i64 = model::CLOCK_START_SECONDS * 1_000_000;
const SECOND: i64 = 1_000_000;

fn upsert(table: &concord_storage::schema::TableDef, key: i32, v2: i64, ttl: Ttl) -> Mutation {
    let id = |name| model::column_id(table, name);
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(key)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Int(key % 3), CqlValue::Text("a".into())],
            liveness: Liveness::RowMarker,
            ttl,
            cells: vec![
                (
                    id("v1"),
                    CellOp::Set(Some(CqlValue::Text(format!("v{key}")))),
                ),
                (id("v2"), CellOp::Set(Some(CqlValue::Bigint(v2)))),
                (id("s"), CellOp::Set(Some(CqlValue::Int(key)))),
            ],
        }],
    }
}

fn op(table: &concord_storage::schema::TableDef, key: i32, op: RowOp) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(key)],
        ops: vec![op],
    }
}

fn schema_with_model_table() -> (Schema, std::sync::Arc<concord_storage::schema::TableDef>) {
    let table = model::table(model::model_table_options());
    let mut schema = Schema::new();
    schema
        .create_keyspace(
            concord_storage::schema::KeyspaceDef {
                name: "ks".into(),
                replication: concord_storage::schema::ReplicationStrategy::Local,
                durable_writes: true,
            },
            concord_storage::schema::IfExists::Strict,
        )
        .expect("keyspace");
    let spec = concord_storage::schema::TableSpec {
        keyspace: "ks".into(),
        name: "t".into(),
        columns: table
            .columns()
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                ty: c.ty.clone(),
                kind: c.kind,
            })
            .collect(),
        options: model::model_table_options(),
    };
    let created = schema
        .create_table(spec, concord_storage::schema::IfExists::Strict)
        .expect("create")
        .expect("new");
    (schema, created)
}

/// Scans read the row segment's Parquet file (no memory for decoded segments).
#[test]
fn row_segments_answer_scans_with_the_delta_expiry_and_schema_changes_on_top() {
    row_segments_answer_scans(0);
}

/// The same reads, with the row segments held decoded in memory.
#[test]
fn decoded_row_segments_answer_scans_with_the_delta_expiry_and_schema_changes_on_top() {
    row_segments_answer_scans(crate::DECODED_BYTES_MAX);
}

fn row_segments_answer_scans(row_segment_decoded_bytes_max: usize) {
    let (mut schema, table) = schema_with_model_table();
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        // Merges keep the row segment and leave merged partitions dirty.
        row_segment_dirty_percent_max: 1000,
        row_segment_decoded_bytes_max,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options.clone());
    columnar.replica().register_table(table.clone());
    for key in 0..40 {
        let ttl = if key == 5 {
            Ttl::Seconds(5)
        } else {
            Ttl::Unlimited
        };
        node.write(
            upsert(&table, key, i64::from(key), ttl),
            WriteTime(T0 + i64::from(key)),
        );
    }
    let catch_up = |columnar: &concord_columnar::Columnar, node: &Node| {
        columnar
            .replica()
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
    };
    catch_up(&columnar, &node);
    let replica = columnar.replica();
    assert!(!replica.has_row_segment(table.id));
    replica.merge().expect("merge");
    assert!(replica.has_row_segment(table.id));
    check(&columnar, &node, WriteTime(T0 + 39));

    // The scan is DataFusion's Parquet scan, with the filter as its predicate.
    let explain = columnar
        .sql(
            "EXPLAIN SELECT count(*) FROM ks.t WHERE v2 > 3",
            Snapshot::Watermark,
        )
        .expect("explain");
    let plan = arrow::util::pretty::pretty_format_batches(&explain.batches)
        .expect("format")
        .to_string();
    if row_segment_decoded_bytes_max == 0 {
        assert!(plan.contains("file_type=parquet"), "{plan}");
        assert!(plan.contains("predicate="), "{plan}");
        assert_eq!(replica.row_segment_decoded_bytes(), 0);
    } else {
        // The segment's rows from memory, filtered above.
        assert!(!plan.contains("file_type=parquet"), "{plan}");
        assert!(plan.contains("partition_sizes="), "{plan}");
        assert!(replica.row_segment_decoded_bytes() > 0);
    }

    // Versions newer than the segment: an update, a row delete, a partition
    // delete, a range delete, a new partition.
    node.write(upsert(&table, 3, 300, Ttl::Unlimited), WriteTime(T0 + 100));
    node.write(
        op(
            &table,
            4,
            RowOp::DeleteRow {
                clustering: vec![CqlValue::Int(1), CqlValue::Text("a".into())],
            },
        ),
        WriteTime(T0 + 101),
    );
    node.write(op(&table, 6, RowOp::DeletePartition), WriteTime(T0 + 102));
    node.write(
        op(
            &table,
            7,
            RowOp::DeleteRange(concord_storage::rows::Slice::all()),
        ),
        WriteTime(T0 + 103),
    );
    node.write(upsert(&table, 50, 50, Ttl::Unlimited), WriteTime(T0 + 104));
    catch_up(&columnar, &node);
    let scans = replica.n_row_segment_scans();
    for at in [39, 100, 102, 104] {
        check(&columnar, &node, WriteTime(T0 + at));
    }
    assert!(replica.n_row_segment_scans() > scans);
    // Merged, the row segment stays and those partitions are dirty.
    replica.merge().expect("merge");
    check(&columnar, &node, WriteTime(T0 + 104));
    node.write(upsert(&table, 8, 800, Ttl::Unlimited), WriteTime(T0 + 200));
    catch_up(&columnar, &node);
    check(&columnar, &node, WriteTime(T0 + 200));

    // Partition 5's cells expire 5 s after T0: live at +4 s, gone at +6 s.
    drop(node.feed.begin(|| WriteTime(T0 + 10 * SECOND)));
    catch_up(&columnar, &node);
    check(&columnar, &node, WriteTime(T0 + 4 * SECOND));
    check(&columnar, &node, WriteTime(T0 + 6 * SECOND));
    replica.merge().expect("merge");
    check(&columnar, &node, WriteTime(T0 + 10 * SECOND));

    // A column added after the segment: the segment is stale until a merge
    // rewrites it; answers are exact throughout.
    let added = schema
        .add_column(
            "ks",
            "t",
            ColumnSpec {
                name: "extra".into(),
                ty: CqlType::Int,
                kind: ColumnKind::Regular,
            },
        )
        .expect("add");
    node.table = added.clone();
    replica.register_table(added.clone());
    assert!(!replica.has_row_segment(table.id));
    node.write(
        upsert(&added, 9, 900, Ttl::Unlimited),
        WriteTime(T0 + 11 * SECOND),
    );
    catch_up(&columnar, &node);
    check_all_columns(&columnar, &node, WriteTime(T0 + 11 * SECOND));
    replica.merge().expect("merge");
    assert!(replica.has_row_segment(table.id));
    check_all_columns(&columnar, &node, WriteTime(T0 + 11 * SECOND));
    node.write(
        upsert(&added, 10, 1000, Ttl::Unlimited),
        WriteTime(T0 + 12 * SECOND),
    );
    catch_up(&columnar, &node);
    check_all_columns(&columnar, &node, WriteTime(T0 + 12 * SECOND));

    // Restart: row segments are rewritten by the first merge after open.
    drop(columnar);
    let columnar = open_columnar(dir.path(), options);
    columnar.replica().register_table(added.clone());
    catch_up(&columnar, &node);
    assert!(!columnar.replica().has_row_segment(table.id));
    check_all_columns(&columnar, &node, WriteTime(T0 + 12 * SECOND));
    columnar.replica().merge().expect("merge");
    assert!(columnar.replica().has_row_segment(table.id));
    check_all_columns(&columnar, &node, WriteTime(T0 + 12 * SECOND));
}

/// Row segments are written streaming (here one partition per chunk) and
/// compactions fold many cell segments streaming: after every merge, across
/// compactions, updates and partition deletes, scans read as the row store.
/// A compaction folds the small segments and leaves the largest alone (any
/// subset may be compacted: cells are reconciled across segments), so a
/// large table written a little at a time is not rewritten whole every
/// `SEGMENTS_PER_TABLE_MAX` merges; reads stay the row store's.
#[test]
fn compactions_leave_the_largest_segments_alone() {
    const N_BIG: i32 = 400;
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    let replica = columnar.replica();
    replica.register_table(table.clone());
    let mut at = T0;
    for key in 0..N_BIG {
        at += 1;
        node.write(
            upsert(&table, key, i64::from(key), Ttl::Unlimited),
            WriteTime(at),
        );
    }
    replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    replica.merge_cells().expect("merge");
    let rounds = 3 * concord_columnar::replica::SEGMENTS_PER_TABLE_MAX as i32;
    for round in 0..rounds {
        at += 1;
        // Overwrites a row of the big segment, or adds one.
        let key = if round % 2 == 0 { round } else { N_BIG + round };
        node.write(
            upsert(&table, key, i64::from(1000 + round), Ttl::Unlimited),
            WriteTime(at),
        );
        replica
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
        replica.merge_cells().expect("merge");
        assert!(replica.n_segments() <= concord_columnar::replica::SEGMENTS_PER_TABLE_MAX);
    }
    let compacted = replica.n_cells_compacted();
    assert!(compacted > 0, "the table was compacted");
    // Rewriting the big segment even once would count every one of its
    // cells (at least one per row).
    assert!(
        compacted < N_BIG as u64,
        "{compacted} cells rewritten by compactions"
    );
    replica.merge().expect("merge");
    check(&columnar, &node, WriteTime(at));
}

#[test]
fn streamed_row_segment_writes_and_compactions_read_as_the_row_store() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        row_segment_write_chunk_bytes: 1,
        row_segment_dirty_percent_max: 0,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options);
    let replica = columnar.replica();
    replica.register_table(table.clone());
    let mut at = T0;
    let rounds = concord_columnar::replica::SEGMENTS_PER_TABLE_MAX as i32 + 4;
    for round in 0..rounds {
        for offset in 0..6 {
            at += 1;
            let key = (round * 3 + offset) % 20;
            node.write(
                upsert(&table, key, i64::from(round * 100 + offset), Ttl::Unlimited),
                WriteTime(at),
            );
        }
        if round % 3 == 2 {
            at += 1;
            node.write(
                op(&table, round % 20, RowOp::DeletePartition),
                WriteTime(at),
            );
        }
        replica
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
        replica.merge().expect("merge");
        assert!(replica.has_row_segment(table.id));
        assert!(replica.n_segments() <= concord_columnar::replica::SEGMENTS_PER_TABLE_MAX);
        let scans = replica.n_row_segment_scans();
        check(&columnar, &node, WriteTime(at));
        assert!(
            replica.n_row_segment_scans() > scans,
            "read the row segment"
        );
    }
}

#[test]
fn row_segment_rewrites_wait_while_the_follower_trails_the_feed() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        row_segment_backlog_records_max: 100,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options);
    columnar.replica().register_table(table.clone());
    for key in 0..30 {
        node.write(
            upsert(&table, key, i64::from(key), Ttl::Unlimited),
            WriteTime(T0 + i64::from(key)),
        );
    }
    let replica = columnar.replica();
    replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    replica.merge_cells().expect("merge cells");
    assert!(!replica.has_row_segment(table.id));

    // Behind by more than the bound: the pass is put off, reads stay exact
    // (from the cells).
    replica.set_feed_backlog(101);
    assert!(!replica.write_row_segments_unless_behind().expect("pass"));
    assert!(!replica.has_row_segment(table.id));
    assert_eq!(replica.n_row_segment_passes_deferred(), 1);
    check(&columnar, &node, WriteTime(T0 + 29));

    // Back within it: the pass writes the row segment.
    replica.set_feed_backlog(100);
    assert!(replica.write_row_segments_unless_behind().expect("pass"));
    assert!(replica.has_row_segment(table.id));
    assert_eq!(replica.n_row_segment_passes_deferred(), 1);
    let scans = replica.n_row_segment_scans();
    check(&columnar, &node, WriteTime(T0 + 29));
    assert!(replica.n_row_segment_scans() > scans);
}
