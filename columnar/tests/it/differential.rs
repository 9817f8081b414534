//! The differential property test: random writes (every op kind, every
//! delete shape, TTLs, out-of-order write times) go through the row store and
//! its feed; at random snapshot timestamps, during ingest, across merges and
//! spills, the replica's SQL answers equal the row store's at the same
//! timestamp — full scans, filters, partition-key lookups (pushdown), group-by
//! aggregates and a join.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use concord_columnar::sql::partition_rows;
use concord_columnar::{Columnar, ColumnarOptions, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::rows::{self, Mutation, ReadOptions, Slice};
use concord_storage::testing::model::{self, ModelOp, WriteTimeChoice};
use concord_storage::value::CqlValue;
use proptest::prelude::*;

use crate::{Node, frontier, open_columnar, query_rows, sorted};

const SELECT_COLUMNS: &str = "pk, ck1, ck2, s, v1, v2, l, st, m";

fn text_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        for row_idx in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|array| array_value_to_string(array, row_idx).expect("display"))
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

fn sql_text(columnar: &Columnar, sql: &str, at: WriteTime) -> Vec<String> {
    let result = columnar
        .sql(sql, Snapshot::At(at))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    text_rows(&result.batches)
}

fn int(value: &Option<CqlValue>) -> Option<i64> {
    match value {
        Some(CqlValue::Int(n)) => Some(i64::from(*n)),
        Some(CqlValue::Bigint(n)) => Some(*n),
        _ => None,
    }
}

fn opt(value: Option<i64>) -> String {
    value.map(|n| n.to_string()).unwrap_or_default()
}

/// Checks every query shape at `at` against the row store.
pub(crate) fn check(columnar: &Columnar, node: &Node, at: WriteTime) {
    let (engine, partitions) = node.row_store_at(at);
    let expected = partition_rows(&node.table, &partitions);
    // Columns in table_schema order: pk ck1 ck2 s v1 v2 l st m.
    let full = query_rows(
        columnar,
        node,
        &format!("SELECT {SELECT_COLUMNS} FROM ks.t"),
        at,
    );
    assert_eq!(
        sorted(full),
        sorted(expected.clone()),
        "full scan at {at:?}"
    );

    let filtered = query_rows(
        columnar,
        node,
        &format!("SELECT {SELECT_COLUMNS} FROM ks.t WHERE v2 >= 0 AND v1 <> 'p'"),
        at,
    );
    let expected_filtered: Vec<_> = expected
        .iter()
        .filter(|row| {
            int(&row[5]).is_some_and(|v2| v2 >= 0)
                && matches!(&row[4], Some(CqlValue::Text(v1)) if v1 != "p")
        })
        .cloned()
        .collect();
    assert_eq!(
        sorted(filtered),
        sorted(expected_filtered),
        "filter at {at:?}"
    );

    for key in [0, 3] {
        let pinned = query_rows(
            columnar,
            node,
            &format!("SELECT {SELECT_COLUMNS} FROM ks.t WHERE pk = {key}"),
            at,
        );
        let partition = rows::read_partition(
            &engine,
            &node.table,
            &[CqlValue::Int(key)],
            &Slice::all(),
            ReadOptions::at(at.seconds()),
        )
        .expect("read partition");
        let expected_pinned =
            partition_rows(&node.table, &partition.into_iter().collect::<Vec<_>>());
        assert_eq!(
            sorted(pinned),
            sorted(expected_pinned),
            "pk = {key} at {at:?}"
        );
    }

    let grouped = sql_text(
        columnar,
        "SELECT pk, count(*), count(v1), sum(v2), max(s) FROM ks.t GROUP BY pk",
        at,
    );
    let mut groups: BTreeMap<i64, (i64, i64, Option<i64>, Option<i64>)> = BTreeMap::new();
    for row in &expected {
        let group = groups.entry(int(&row[0]).expect("pk")).or_default();
        group.0 += 1;
        group.1 += i64::from(row[4].is_some());
        if let Some(v2) = int(&row[5]) {
            group.2 = Some(group.2.unwrap_or(0) + v2);
        }
        if let Some(s) = int(&row[3]) {
            group.3 = Some(group.3.map_or(s, |m| m.max(s)));
        }
    }
    let mut expected_grouped: Vec<String> = groups
        .iter()
        .map(|(pk, (n, n_v1, sum, max))| format!("{pk}|{n}|{n_v1}|{}|{}", opt(*sum), opt(*max)))
        .collect();
    expected_grouped.sort();
    assert_eq!(grouped, expected_grouped, "group by at {at:?}");

    let joined = sql_text(
        columnar,
        "SELECT a.pk, count(*) FROM ks.t a JOIN ks.t b ON a.pk = b.pk AND a.ck1 = b.ck1 \
         GROUP BY a.pk",
        at,
    );
    let mut pairs: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for row in &expected {
        if let (Some(pk), Some(ck1)) = (int(&row[0]), int(&row[1])) {
            *pairs.entry((pk, ck1)).or_default() += 1;
        }
    }
    let mut join_counts: BTreeMap<i64, i64> = BTreeMap::new();
    for ((pk, _), n) in pairs {
        *join_counts.entry(pk).or_default() += n * n;
    }
    let mut expected_joined: Vec<String> = join_counts
        .iter()
        .map(|(pk, n)| format!("{pk}|{n}"))
        .collect();
    expected_joined.sort();
    assert_eq!(joined, expected_joined, "join at {at:?}");
}

/// Assigns write times as the model does: `Next` after every earlier write,
/// `BehindMillis` lagging the clock.
fn write_times(ops: &[ModelOp]) -> Vec<Option<WriteTime>> {
    let mut clock = model::CLOCK_START_SECONDS * 1_000_000;
    let mut latest = clock;
    ops.iter()
        .map(|op| match op {
            ModelOp::Write { time, .. } => Some(WriteTime(match time {
                WriteTimeChoice::Next => {
                    latest = latest.max(clock) + 1;
                    latest
                }
                WriteTimeChoice::BehindMillis(millis) => clock - i64::from(*millis) * 1000,
            })),
            ModelOp::AdvanceClock { seconds } => {
                clock += i64::from(*seconds) * 1_000_000;
                None
            }
            _ => None,
        })
        .collect()
}

fn run(ops: &[ModelOp], snapshot_picks: &[u16], merge_picks: u32) {
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let options = ColumnarOptions {
        // Small, so ingest spills the delta into segments mid-run.
        delta_versions_max: 48,
        // Some merges keep the row segment and leave the merged partitions
        // dirty, so reads exercise that path too.
        row_segment_dirty_percent_max: 50,
        // Tiny, so row-segment writes stream the table partition by
        // partition (every partition its own chunk).
        row_segment_write_chunk_bytes: 1,
        ..ColumnarOptions::default()
    };
    let columnar = open_columnar(dir.path(), options);
    columnar.replica().register_table(table.clone());
    let times = write_times(ops);
    let mut picks = snapshot_picks.iter().cycle();
    for (op_idx, op) in ops.iter().enumerate() {
        match op {
            ModelOp::Write {
                partition_key, op, ..
            } => {
                let write_time = times[op_idx].expect("write time");
                let mutation = Mutation {
                    table: table.id,
                    partition_key: vec![CqlValue::Int(*partition_key)],
                    ops: vec![op.clone()],
                };
                node.write(mutation, write_time);
            }
            ModelOp::Flush | ModelOp::Compact | ModelOp::Scan { .. } => {
                // The watermark contract: no later write is at or below it.
                let later_min = times[op_idx..].iter().flatten().min().copied();
                let applied_max = node.writes.iter().map(|(t, _)| *t).max();
                let Some(applied_max) = applied_max else {
                    continue;
                };
                let watermark = match later_min {
                    Some(later) => applied_max.min(WriteTime(later.0 - 1)),
                    None => applied_max,
                };
                let replica = columnar.replica();
                replica
                    .catch_up(
                        &node.engine,
                        frontier(node.feed.frontier().position_end, watermark),
                    )
                    .expect("catch up");
                if merge_picks & (1 << (op_idx % 32)) != 0 {
                    replica.merge().expect("merge");
                }
                let low = replica.horizon().max(WriteTime(
                    model::CLOCK_START_SECONDS * 1_000_000 - 4_000_000,
                ));
                if watermark < low {
                    continue;
                }
                let span = (watermark.0 - low.0) as u64;
                let pick = u64::from(*picks.next().unwrap_or(&0));
                let at = WriteTime(low.0 + (span * pick / u64::from(u16::MAX)) as i64);
                check(&columnar, &node, at);
            }
            _ => {}
        }
    }
    // Everything applied; a heartbeat moves the watermark past every TTL.
    let last = node
        .writes
        .iter()
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(WriteTime(0));
    let end = WriteTime(last.0 + 120_000_000);
    let heartbeat = node.feed.begin(|| end);
    node.feed.finish(heartbeat);
    let replica = columnar.replica();
    replica
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    assert_eq!(replica.watermark(), end);
    let mut final_times: Vec<WriteTime> = node.writes.iter().map(|(t, _)| *t).collect();
    final_times.sort();
    final_times.dedup();
    let horizon = replica.horizon();
    for at in final_times.iter().rev().take(3).copied().chain([end]) {
        if at >= horizon {
            check(&columnar, &node, at);
        }
    }
    replica.merge().expect("merge");
    assert!(replica.has_row_segment(node.table.id));
    let row_segment_scans = replica.n_row_segment_scans();
    check(&columnar, &node, end);
    // The full scans after the merge read the row segment (Parquet).
    assert!(replica.n_row_segment_scans() > row_segment_scans);
}

proptest! {
    #![proptest_config(model::config(10))]
    #[test]
    fn replica_answers_equal_the_row_store(
        ops in model::operations(60),
        snapshot_picks in prop::collection::vec(any::<u16>(), 1..8),
        merge_picks in any::<u32>(),
    ) {
        run(&ops, &snapshot_picks, merge_picks);
    }
}

#[test]
fn every_delete_shape_and_ttl_on_a_fixed_history() {
    use concord_storage::rows::{CellOp, Liveness, RowOp, SliceBound, Ttl};
    let id = |name: &str| model::column_id(&model::table(model::model_table_options()), name);
    let clustering = |ck1: i32, ck2: &str| vec![CqlValue::Int(ck1), CqlValue::Text(ck2.into())];
    let upsert = |ck1, ck2, ttl| RowOp::Upsert {
        clustering: clustering(ck1, ck2),
        liveness: Liveness::RowMarker,
        ttl,
        cells: vec![
            (id("v1"), CellOp::Set(Some(CqlValue::Text("q".into())))),
            (id("v2"), CellOp::Set(Some(CqlValue::Bigint(2)))),
            (id("s"), CellOp::Set(Some(CqlValue::Int(1)))),
        ],
    };
    let t0 = model::CLOCK_START_SECONDS * 1_000_000;
    let history: Vec<(i32, RowOp)> = vec![
        (0, upsert(0, "a", Ttl::Unlimited)),
        (0, upsert(1, "b", Ttl::Seconds(5))),
        (0, upsert(2, "c", Ttl::Unlimited)),
        (1, upsert(0, "a", Ttl::Unlimited)),
        (1, upsert(1, "a", Ttl::Unlimited)),
        (2, upsert(0, "a", Ttl::Unlimited)),
        (
            0,
            RowOp::Upsert {
                clustering: clustering(2, "c"),
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: vec![(id("v1"), CellOp::Set(None))],
            },
        ),
        (
            0,
            RowOp::DeleteRow {
                clustering: clustering(0, "a"),
            },
        ),
        (
            1,
            RowOp::DeleteRange(Slice {
                start: SliceBound::Included(vec![CqlValue::Int(1)]),
                end: SliceBound::Unbounded,
            }),
        ),
        (2, RowOp::DeletePartition),
    ];
    let table = model::table(model::model_table_options());
    let mut node = Node::new(table.clone());
    let dir = tempfile::tempdir().expect("dir");
    let columnar = open_columnar(dir.path(), ColumnarOptions::default());
    columnar.replica().register_table(table.clone());
    for (idx, (key, op)) in history.into_iter().enumerate() {
        let mutation = Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(key)],
            ops: vec![op],
        };
        node.write(mutation, WriteTime(t0 + idx as i64 * 1_000_000));
    }
    let end = WriteTime(t0 + 60_000_000);
    let heartbeat = node.feed.begin(|| end);
    node.feed.finish(heartbeat);
    columnar
        .replica()
        .catch_up(&node.engine, node.feed.frontier())
        .expect("catch up");
    for seconds in [0, 1, 5, 6, 7, 8, 9, 10, 60] {
        check(&columnar, &node, WriteTime(t0 + seconds * 1_000_000));
    }
    // After everything: partition 0 keeps (2, c) with v1 deleted, (1, b) expired at +6 s;
    // partition 1 keeps (0, a); partition 2 is deleted.
    let rows = query_rows(&columnar, &node, "SELECT pk, ck1, ck2, v1 FROM ks.t", end);
    assert_eq!(
        sorted(rows),
        sorted(vec![
            vec![
                Some(CqlValue::Int(0)),
                Some(CqlValue::Int(2)),
                Some(CqlValue::Text("c".into())),
                None
            ],
            vec![
                Some(CqlValue::Int(1)),
                Some(CqlValue::Int(0)),
                Some(CqlValue::Text("a".into())),
                Some(CqlValue::Text("q".into()))
            ],
        ])
    );
}
