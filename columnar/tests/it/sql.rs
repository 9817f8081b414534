//! The analytic entry's guarantees: snapshots wait for the watermark (bounded,
//! with a clear error), old snapshots are refused once merged away, held
//! snapshots keep their versions, memory and concurrency are bounded, schema
//! changes show, and unknown names fail as SQL errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_columnar::{ColumnarOptions, Error, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{ColumnKind, ColumnSpec, Schema};
use concord_storage::testing::model;
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

use crate::{Node, open_columnar};

/// An upsert of partition `key`'s row `(0, 'a')` with `v2`.
pub(crate) fn row(table: &concord_storage::schema::TableDef, key: i32, v2: i64) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(key)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Int(0), CqlValue::Text("a".into())],
            liveness: Liveness::RowMarker,
            ttl: Ttl::Unlimited,
            cells: vec![(
                model::column_id(table, "v2"),
                CellOp::Set(Some(CqlValue::Bigint(v2))),
            )],
        }],
    }
}

fn count(columnar: &concord_columnar::Columnar, snapshot: Snapshot) -> Result<i64, Error> {
    query_count(columnar, "SELECT count(*) AS n FROM ks.t", snapshot)
}

/// The single `count(*)` value `query` answers.
fn query_count(
    columnar: &concord_columnar::Columnar,
    query: &str,
    snapshot: Snapshot,
) -> Result<i64, Error> {
    let result = columnar.sql(query, snapshot)?;
    let batch = &result.batches[0];
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("count is Int64");
    Ok(column.value(0))
}

const T0: i64 = model::CLOCK_START_SECONDS * 1_000_000;

#[test]
fn snapshot_reads_wait_for_the_watermark_and_time_out_clearly() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        snapshot_wait_max: Duration::from_millis(100),
        ..ColumnarOptions::default()
    };
    let columnar = Arc::new(open_columnar(dir.path(), options));
    columnar.replica().register_table(table.clone());
    node.write(row(&table, 1, 1), WriteTime(T0 + 1));
    node.write(row(&table, 2, 2), WriteTime(T0 + 2));

    let started = Instant::now();
    let error = count(&columnar, Snapshot::At(WriteTime(T0 + 2))).expect_err("not applied yet");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(matches!(error, Error::SnapshotTimeout { .. }), "{error}");
    assert!(error.to_string().contains("watermark"), "{error}");

    // A reader waiting for T0 + 2 is released by the catch-up.
    let waiting = {
        let columnar = Arc::clone(&columnar);
        std::thread::spawn(move || count(&columnar, Snapshot::At(WriteTime(T0 + 2))))
    };
    std::thread::sleep(Duration::from_millis(10));
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    assert_eq!(waiting.join().expect("join").expect("count"), 2);
    assert_eq!(
        count(&columnar, Snapshot::At(WriteTime(T0 + 1))).expect("count"),
        1
    );
    assert_eq!(count(&columnar, Snapshot::Watermark).expect("count"), 2);
    let stale = Snapshot::BoundedStaleness {
        now: WriteTime(T0 + 50_000),
        max_staleness: Duration::from_secs(1),
    };
    assert_eq!(count(&columnar, stale).expect("count"), 2);
}

#[test]
fn held_snapshots_survive_merges_and_old_ones_are_refused() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    for idx in 0..6 {
        node.write(
            row(&table, idx, i64::from(idx)),
            WriteTime(T0 + i64::from(idx)),
        );
    }
    let replica = columnar.replica();
    replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    let guard = replica.hold_snapshot(WriteTime(T0 + 2)).expect("hold");
    assert_eq!(replica.merge().expect("merge"), WriteTime(T0 + 2));
    assert_eq!(
        count(&columnar, Snapshot::At(WriteTime(T0 + 2))).expect("count"),
        3
    );
    assert_eq!(
        count(&columnar, Snapshot::At(WriteTime(T0 + 5))).expect("count"),
        6
    );
    drop(guard);
    assert_eq!(replica.merge().expect("merge"), WriteTime(T0 + 5));
    let error = count(&columnar, Snapshot::At(WriteTime(T0 + 2))).expect_err("merged away");
    assert!(matches!(error, Error::SnapshotTooOld { .. }), "{error}");
    assert_eq!(
        count(&columnar, Snapshot::At(WriteTime(T0 + 5))).expect("count"),
        6
    );
}

#[test]
fn a_query_over_the_memory_pool_fails_with_resources_exhausted() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        memory_pool_bytes: 4 * 1024,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options);
    columnar.replica().register_table(table.clone());
    for idx in 0..200 {
        node.write(
            row(&table, idx, i64::from(idx)),
            WriteTime(T0 + i64::from(idx)),
        );
    }
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    let error = columnar
        .sql("SELECT * FROM ks.t ORDER BY v2", Snapshot::Watermark)
        .expect_err("pool too small");
    assert!(matches!(error, Error::ResourcesExhausted(_)), "{error}");
    // The scan itself ran out (while collecting cells), not a later operator.
    assert!(error.to_string().contains("concord scan ks.t"), "{error}");
    // The node keeps serving: a small answer still fits after the failure.
    let ok = columnar
        .sql("SELECT 1", Snapshot::Watermark)
        .expect("tiny query");
    assert_eq!(ok.batches[0].num_rows(), 1);
}

#[test]
fn unknown_tables_are_sql_errors_and_schema_changes_show() {
    let mut schema = Schema::new();
    let table = model::table(model::model_table_options());
    // Rebuild the model table inside a schema we can alter.
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
    let mut node = Node::new(created.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(created.clone());
    node.write(row(&created, 1, 7), WriteTime(T0 + 1));

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
    columnar.replica().register_table(added.clone());
    node.write(
        Mutation {
            table: added.id,
            partition_key: vec![CqlValue::Int(2)],
            ops: vec![RowOp::Upsert {
                clustering: vec![CqlValue::Int(0), CqlValue::Text("a".into())],
                liveness: Liveness::RowMarker,
                ttl: Ttl::Unlimited,
                cells: vec![(
                    model::column_id(&added, "extra"),
                    CellOp::Set(Some(CqlValue::Int(5))),
                )],
            }],
        },
        WriteTime(T0 + 2),
    );
    let dropped = schema.drop_column("ks", "t", "v2").expect("drop");
    node.table = dropped.clone();
    columnar.replica().register_table(dropped);
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    let result = columnar
        .sql(
            "SELECT pk, extra FROM ks.t ORDER BY pk",
            Snapshot::Watermark,
        )
        .expect("query");
    let text = arrow::util::pretty::pretty_format_batches(&result.batches)
        .expect("format")
        .to_string();
    assert!(text.contains("| 1  |       |"), "{text}");
    assert!(text.contains("| 2  | 5     |"), "{text}");
    let error = columnar
        .sql("SELECT v2 FROM ks.t", Snapshot::Watermark)
        .expect_err("dropped column");
    assert!(matches!(error, Error::Sql(_)), "{error}");
    let error = columnar
        .sql("SELECT * FROM ks.missing", Snapshot::Watermark)
        .expect_err("unknown table");
    assert!(matches!(error, Error::Sql(_)), "{error}");
}

#[test]
fn whole_table_scans_are_reused_until_a_write_or_an_expiry_changes_them() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    let replica = columnar.replica();
    let catch_up = |node: &Node| {
        replica
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
    };
    node.write(row(&table, 1, 1), WriteTime(T0 + 1));
    let mut expiring = row(&table, 2, 2);
    let RowOp::Upsert { ttl, .. } = &mut expiring.ops[0] else {
        panic!("an upsert")
    };
    *ttl = Ttl::Seconds(10);
    node.write(expiring, WriteTime(T0 + 2));
    catch_up(&node);
    let at = |micros: i64| Snapshot::At(WriteTime(T0 + micros));
    assert_eq!(count(&columnar, at(2)).expect("count"), 2);
    let hits = replica.n_scan_cache_hits();
    assert_eq!(count(&columnar, at(2)).expect("count"), 2);
    assert_eq!(replica.n_scan_cache_hits(), hits + 1, "same snapshot");
    // Later, with no write and no expiry in between: the same rows.
    drop(node.feed.begin(|| WriteTime(T0 + 3_000_000)));
    catch_up(&node);
    assert_eq!(count(&columnar, at(3_000_000)).expect("count"), 2);
    assert_eq!(replica.n_scan_cache_hits(), hits + 2, "nothing changed");
    // Past the TTL the row is gone: the cached scan is not used.
    drop(node.feed.begin(|| WriteTime(T0 + 11_000_000)));
    catch_up(&node);
    assert_eq!(count(&columnar, at(11_000_000)).expect("count"), 1);
    assert_eq!(replica.n_scan_cache_hits(), hits + 2, "an expiry passed");
    // A write invalidates it; an earlier snapshot never reads a later scan.
    node.write(row(&table, 3, 3), WriteTime(T0 + 12_000_000));
    catch_up(&node);
    assert_eq!(count(&columnar, at(12_000_000)).expect("count"), 2);
    assert_eq!(count(&columnar, at(2)).expect("count"), 2);
    assert_eq!(count(&columnar, at(11_000_000)).expect("count"), 1);
    assert_eq!(replica.n_scan_cache_hits(), hits + 2, "every scan re-read");
    // A scan below the newest write is not reused (conservatively), one at
    // or above it is.
    assert_eq!(count(&columnar, at(11_000_000)).expect("count"), 1);
    assert_eq!(replica.n_scan_cache_hits(), hits + 2);
    assert_eq!(count(&columnar, at(12_000_000)).expect("count"), 2);
    assert_eq!(count(&columnar, at(12_000_000)).expect("count"), 2);
    assert_eq!(replica.n_scan_cache_hits(), hits + 3);
}

#[test]
fn select_star_leaves_out_the_hidden_columns_which_stay_selectable_by_name() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    node.write(row(&table, 1, 7), WriteTime(T0 + 1));
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    let names = |sql: &str| -> Vec<String> {
        let result = columnar
            .sql(sql, Snapshot::Watermark)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batch = &result.batches[0];
        assert_eq!(batch.num_rows(), 1, "{sql}");
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    let visible: Vec<String> = ["pk", "ck1", "ck2", "s", "v1", "v2", "l", "st", "m"]
        .map(String::from)
        .to_vec();
    assert_eq!(names("SELECT * FROM ks.t"), visible);
    assert_eq!(names("SELECT * FROM ks.t WHERE v2 = 7"), visible);
    assert_eq!(names("SELECT a.* FROM ks.t a"), visible);
    assert_eq!(names("SELECT ks.t.* FROM ks.t"), visible);
    assert_eq!(
        names("SELECT * FROM (SELECT * FROM ks.t) AS inner_rows"),
        visible
    );
    let mut joined = visible.clone();
    joined.push("k".into());
    assert_eq!(
        names("SELECT * FROM ks.t a JOIN (SELECT pk AS k FROM ks.t) b ON a.pk = b.k"),
        joined
    );
    assert_eq!(
        names("SELECT * EXCLUDE (m) FROM ks.t"),
        visible[..visible.len() - 1].to_vec()
    );
    // By name they are there, with the row's write time.
    assert_eq!(
        names("SELECT pk, _concord_write_time, _concord_deleted FROM ks.t"),
        vec!["pk", "_concord_write_time", "_concord_deleted"]
    );
    let mut with_time = visible.clone();
    with_time.push("_concord_write_time".into());
    assert_eq!(names("SELECT *, _concord_write_time FROM ks.t"), with_time);
    let result = columnar
        .sql(
            "SELECT CAST(_concord_write_time AS BIGINT) AS w FROM ks.t",
            Snapshot::Watermark,
        )
        .expect("write time");
    let w = result.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("bigint")
        .value(0);
    assert_eq!(w, T0 + 1);
}

#[test]
fn a_query_past_query_time_max_is_stopped_with_resources_exhausted() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    for idx in 0..50 {
        node.write(
            row(&table, idx, i64::from(idx)),
            WriteTime(T0 + i64::from(idx)),
        );
    }
    let query = "SELECT count(*) AS n FROM ks.t";
    for (limit, stopped) in [(Duration::ZERO, true), (Duration::from_secs(60), false)] {
        let dir = tempfile::tempdir().expect("dir");
        let options = ColumnarOptions {
            query_time_max: Some(limit),
            ..ColumnarOptions::default()
        };
        let columnar = open_columnar(dir.path(), options);
        columnar.replica().register_table(table.clone());
        columnar
            .replica()
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
        match columnar.sql(query, Snapshot::Watermark) {
            Err(error) if stopped => {
                assert!(matches!(error, Error::ResourcesExhausted(_)), "{error}");
                assert!(error.to_string().contains("query_time_max"), "{error}");
            }
            Ok(_) if stopped => panic!("a query with query_time_max = 0 ran to the end"),
            result => {
                let result = result.expect("within the limit");
                let n = result.batches[0]
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("count is Int64")
                    .value(0);
                assert_eq!(n, 50);
            }
        }
    }
}

/// A self-join of a 400-row table with its filtered twin (`pk < 5`), planned
/// after a merge wrote its row segment, with `row_segment_decoded_bytes_max`.
/// Returns the replica, the physical plan's text, the whole plan and the
/// data directory (kept while the replica lives).
fn self_join_plan(
    row_segment_decoded_bytes_max: usize,
) -> (
    concord_columnar::Columnar,
    String,
    String,
    tempfile::TempDir,
) {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        row_segment_decoded_bytes_max,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options);
    columnar.replica().register_table(table.clone());
    for idx in 0..400 {
        node.write(
            row(&table, idx, i64::from(idx)),
            WriteTime(T0 + i64::from(idx)),
        );
    }
    let replica = columnar.replica();
    replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    replica.merge().expect("merge");
    assert!(replica.has_row_segment(table.id));
    // The query names the whole table first; its filtered twin (a few rows
    // by the footer's min/max of pk) is the smaller input and must be the
    // hash join's build (left) side. Without statistics DataFusion keeps the
    // query's order.
    let explain = columnar
        .sql(
            "EXPLAIN SELECT count(*) FROM ks.t AS a JOIN (SELECT pk FROM ks.t WHERE pk < 5) AS b \
             ON a.pk = b.pk",
            Snapshot::Watermark,
        )
        .expect("explain");
    let plan = arrow::util::pretty::pretty_format_batches(&explain.batches)
        .expect("format")
        .to_string();
    let physical = plan
        .split("physical_plan")
        .nth(1)
        .expect("a physical plan")
        .to_string();
    (columnar, physical, plan, dir)
}

/// Through the row segment held decoded: the memory scan carries the file's
/// footer statistics, so the filtered input still builds the hash table.
#[test]
fn decoded_row_segment_statistics_put_the_smaller_join_input_on_the_build_side() {
    let (columnar, physical, plan, _dir) = self_join_plan(crate::DECODED_BYTES_MAX);
    assert!(columnar.replica().row_segment_decoded_bytes() > 0);
    let lines: Vec<&str> = physical.lines().collect();
    let join = lines
        .iter()
        .position(|line| line.contains("HashJoinExec"))
        .unwrap_or_else(|| panic!("a hash join: {plan}"));
    let inputs: Vec<&&str> = lines[join..]
        .iter()
        .filter(|line| line.contains("DecodedSegmentExec") || line.contains("FilterExec"))
        .collect();
    assert_eq!(inputs.len(), 3, "{plan}");
    // The build (left) side comes first: the filter, then its scan.
    assert!(
        inputs[0].contains("FilterExec") && inputs[0].contains("< 5"),
        "build side is not the filtered input: {plan}"
    );
    assert_eq!(self_join_count(&columnar), 5);
}

/// The row count of `self_join_plan`'s join, run (the answer is the join's, whichever side
/// builds).
fn self_join_count(columnar: &concord_columnar::Columnar) -> i64 {
    query_count(
        columnar,
        "SELECT count(*) FROM ks.t AS a JOIN (SELECT pk FROM ks.t WHERE pk < 5) AS b \
         ON a.pk = b.pk",
        Snapshot::Watermark,
    )
    .expect("join")
}

/// Through the row segment's Parquet scan (no memory for decoded segments).
#[test]
fn row_segment_statistics_put_the_smaller_join_input_on_the_build_side() {
    let (columnar, physical, plan, _dir) = self_join_plan(0);
    let lines: Vec<&str> = physical.lines().collect();
    let join = lines
        .iter()
        .position(|line| line.contains("HashJoinExec"))
        .unwrap_or_else(|| panic!("a hash join: {plan}"));
    let scans: Vec<&&str> = lines[join..]
        .iter()
        .filter(|line| line.contains("DataSourceExec"))
        .collect();
    assert_eq!(scans.len(), 2, "{plan}");
    assert!(
        scans[0].contains("< 5"),
        "build side is not the filtered input: {plan}"
    );
    assert!(!scans[1].contains("< 5"), "{plan}");
    // The answer is the join's, whichever side builds.
    assert_eq!(self_join_count(&columnar), 5);
}
