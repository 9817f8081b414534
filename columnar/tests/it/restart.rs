//! Restart in the middle of ingest loses nothing and duplicates nothing: the
//! replica resumes from its manifest, skips exactly the records already folded
//! into segments, and answers as the row store does.

use concord_columnar::sql::partition_rows;
use concord_columnar::{ColumnarOptions, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::feed::FeedPosition;
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::testing::model;
use concord_storage::value::CqlValue;

use crate::{Node, frontier, open_columnar, query_rows, sorted};

/// Writes row `idx` for each `idx` in `indexes` (partition `idx % 5`,
/// clustering `idx % 3`, `v2 = idx`) at `t0 + idx`.
fn write_rows(
    node: &mut Node,
    table: &concord_storage::schema::TableDef,
    t0: i64,
    indexes: std::ops::Range<i32>,
) {
    for idx in indexes {
        node.write(
            upsert(table, idx % 5, idx % 3, i64::from(idx)),
            WriteTime(t0 + i64::from(idx)),
        );
    }
}

fn upsert(table: &concord_storage::schema::TableDef, key: i32, ck1: i32, v2: i64) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(key)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Int(ck1), CqlValue::Text("a".into())],
            liveness: Liveness::RowMarker,
            ttl: Ttl::Unlimited,
            cells: vec![
                (
                    model::column_id(table, "v2"),
                    CellOp::Set(Some(CqlValue::Bigint(v2))),
                ),
                (
                    model::column_id(table, "l"),
                    CellOp::ListAppend(vec![CqlValue::Int(ck1)]),
                ),
            ],
        }],
    }
}

fn answer(columnar: &concord_columnar::Columnar, node: &Node, at: WriteTime) -> Vec<String> {
    sorted(query_rows(
        columnar,
        node,
        "SELECT pk, ck1, ck2, s, v1, v2, l, st, m FROM ks.t",
        at,
    ))
}

#[test]
fn restart_mid_ingest_resumes_without_gap_or_duplicate() {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let t0 = model::CLOCK_START_SECONDS * 1_000_000;
    // 30 records at t0 + position, except record 15, written late at t0 + 5 (its
    // position is after records still in the delta when the merge folds it).
    for idx in 0..30 {
        let at = if idx == 15 {
            t0 + 5
        } else {
            t0 + i64::from(idx)
        };
        node.write(
            upsert(&table, idx % 4, idx % 3, i64::from(idx)),
            WriteTime(at),
        );
    }
    let first_life_records;
    {
        let columnar = open_columnar(dir.path(), ColumnarOptions::default());
        columnar.replica().register_table(table.clone());
        let replica = columnar.replica();
        // Ingest 20 records, with a watermark covering the first 12 only, merge
        // (folds those 12), then ingest 5 more and "crash" without merging.
        replica
            .catch_up(&node.engine, frontier(FeedPosition(20), WriteTime(t0 + 11)))
            .expect("catch up");
        assert_eq!(replica.merge().expect("merge"), WriteTime(t0 + 11));
        assert_eq!(replica.n_segments(), 1);
        replica
            .catch_up(&node.engine, frontier(FeedPosition(25), WriteTime(t0 + 24)))
            .expect("catch up");
        first_life_records = replica.n_records_applied();
        assert_eq!(first_life_records, 25);
    }
    // A merge that crashed after writing its segment but before its manifest
    // leaves an orphan file; opening removes it.
    let orphan = dir.path().join("segment-0-99.parquet");
    std::fs::write(&orphan, b"half-written").expect("orphan");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    assert!(!orphan.exists(), "orphan segment removed on open");
    columnar.replica().register_table(table.clone());
    let replica = columnar.replica();
    assert_eq!(replica.watermark(), WriteTime(t0 + 11));
    assert_eq!(replica.next_position(), FeedPosition(12));
    assert_eq!(replica.durable_position(), FeedPosition(12));
    let outcome = replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    // Records 12..30 are read again; 15 is already in a segment and skipped, the
    // other 17 are applied once each; nothing before 12 is read again.
    assert_eq!(outcome.n_records_applied, 17);
    assert_eq!(outcome.n_records_skipped, 1);
    let end = WriteTime(t0 + 29);
    assert_eq!(replica.watermark(), end);
    for at in [t0 + 11, t0 + 12, t0 + 20, t0 + 29] {
        let at = WriteTime(at);
        let (_, partitions) = node.row_store_at(at);
        assert_eq!(
            answer(&columnar, &node, at),
            sorted(partition_rows(&table, &partitions)),
            "at {at:?}"
        );
    }
    // A second restart after a merge that passed records read before it skips
    // exactly those.
    replica.merge().expect("merge");
    drop(columnar);
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    let outcome = columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    assert_eq!(outcome, Default::default());
    let (_, partitions) = node.row_store_at(end);
    assert_eq!(
        answer(&columnar, &node, end),
        sorted(partition_rows(&table, &partitions))
    );
    // Dropping the table removes it from the catalog, the manifest and (once no
    // reader holds them) its segment files.
    let segment_files = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-"))
            })
            .count()
    };
    assert!(segment_files() >= 1);
    columnar.replica().drop_table(table.id).expect("drop");
    assert_eq!(segment_files(), 0);
    let error = columnar
        .sql("SELECT * FROM ks.t", Snapshot::At(end))
        .expect_err("dropped");
    assert!(matches!(error, concord_columnar::Error::Sql(_)), "{error}");
}

#[test]
fn a_replica_behind_retention_rebuilds_from_a_snapshot_then_follows() {
    use concord_storage::engine::{Durability, Engine, WriteBatch};
    use concord_storage::feed;
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let t0 = model::CLOCK_START_SECONDS * 1_000_000;
    write_rows(&mut node, &table, t0, 0..30);
    let mut batch = WriteBatch::new();
    feed::truncate_before(&mut batch, FeedPosition(20));
    node.engine
        .write(batch, Durability::Sync)
        .expect("truncate");

    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    let replica = columnar.replica();
    let error = replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect_err("behind retention");
    assert!(
        matches!(
            error,
            concord_columnar::Error::FeedTruncated { next: 0, floor: 20 }
        ),
        "{error}"
    );
    node.feed
        .quiesce(|frontier| replica.rebuild(&node.engine.snapshot(), frontier))
        .expect("rebuild");
    assert_eq!(replica.next_position(), FeedPosition(30));
    assert_eq!(replica.watermark(), WriteTime(t0 + 29));
    write_rows(&mut node, &table, t0, 30..35);
    let outcome = replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("follow");
    assert_eq!(outcome.n_records_applied, 5);
    for at in [t0 + 29, t0 + 32, t0 + 34] {
        let at = WriteTime(at);
        let (_, partitions) = node.row_store_at(at);
        assert_eq!(
            answer(&columnar, &node, at),
            sorted(partition_rows(&table, &partitions)),
            "at {at:?}"
        );
    }
    let error = columnar
        .sql(
            "SELECT count(*) FROM ks.t",
            Snapshot::At(WriteTime(t0 + 10)),
        )
        .expect_err("before the rebuild");
    assert!(
        matches!(error, concord_columnar::Error::SnapshotTooOld { .. }),
        "{error}"
    );
    // A restart after the rebuild resumes from its position.
    drop(columnar);
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    let outcome = columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("resume");
    assert_eq!(outcome.n_records_applied, 5);
    let end = WriteTime(t0 + 34);
    let (_, partitions) = node.row_store_at(end);
    assert_eq!(
        answer(&columnar, &node, end),
        sorted(partition_rows(&table, &partitions))
    );
}

/// A cluster member's feed watermark stays at or below DurableBefore while its
/// steps apply transactions at their executeAt: a rebuild's snapshot then holds
/// writes above the frontier's watermark, and writes below them still come.
/// (Found by Jepsen: a 3-node restart after kill -9 failed with "rebuild view
/// holds a write above the frontier's watermark".)
#[test]
fn a_rebuild_over_writes_above_the_watermark_waits_for_the_feed_to_pass_them() {
    use concord_storage::engine::Engine;
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let t0 = model::CLOCK_START_SECONDS * 1_000_000;
    write_rows(&mut node, &table, t0, 0..10);
    // A step at floor t0 + 10 applies key 1 at t0 + 20.
    node.write_step(
        WriteTime(t0 + 10),
        vec![(upsert(&table, 1, 1, 120), WriteTime(t0 + 20))],
    );
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        snapshot_wait_max: std::time::Duration::from_millis(50),
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options.clone());
    assert!(!columnar.replica().stored());
    columnar.replica().register_table(table.clone());
    let (frontier, snapshot) = node
        .feed
        .quiesce(|frontier| (frontier, node.engine.snapshot()));
    assert_eq!(frontier.watermark, WriteTime(t0 + 10));
    columnar
        .replica()
        .rebuild(&snapshot, frontier)
        .expect("rebuild");
    assert_eq!(columnar.replica().horizon(), WriteTime(t0 + 20));
    assert_eq!(columnar.replica().watermark(), WriteTime(t0 + 10));
    // No snapshot is readable until the feed's watermark passes the horizon.
    for snapshot in [Snapshot::Watermark, Snapshot::At(WriteTime(t0 + 20))] {
        let error = columnar
            .sql("SELECT count(*) FROM ks.t", snapshot)
            .expect_err("below the horizon");
        assert!(
            matches!(error, concord_columnar::Error::SnapshotTimeout { .. }),
            "{error}"
        );
    }
    // A restart keeps the rebuild's watermark, not its horizon.
    drop(columnar);
    let columnar = open_columnar(dir.path(), options);
    assert!(columnar.replica().stored());
    columnar.replica().register_table(table.clone());
    assert_eq!(columnar.replica().horizon(), WriteTime(t0 + 20));
    assert_eq!(columnar.replica().watermark(), WriteTime(t0 + 10));
    // Writes below t0 + 20 still come: key 1 older than its rebuilt cell
    // (LWW keeps t0 + 20), key 2 new.
    node.write_step(
        WriteTime(t0 + 11),
        vec![
            (upsert(&table, 1, 1, 112), WriteTime(t0 + 12)),
            (upsert(&table, 2, 2, 115), WriteTime(t0 + 15)),
        ],
    );
    node.write(upsert(&table, 3, 0, 125), WriteTime(t0 + 25));
    let outcome = columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("follow");
    assert_eq!(outcome.n_records_applied, 3);
    assert_eq!(columnar.replica().watermark(), WriteTime(t0 + 25));
    for at in [t0 + 20, t0 + 22, t0 + 25] {
        let at = WriteTime(at);
        let (_, partitions) = node.row_store_at(at);
        assert_eq!(
            answer(&columnar, &node, at),
            sorted(partition_rows(&table, &partitions)),
            "at {at:?}"
        );
    }
    let latest = columnar
        .sql("SELECT count(*) FROM ks.t", Snapshot::Watermark)
        .expect("at the watermark");
    assert_eq!(latest.snapshot, WriteTime(t0 + 25));
}
