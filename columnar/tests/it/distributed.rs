//! Distributed queries between two real replicas in one process
//! (`Columnar::sql_distributed` on node 1, `Columnar::fragment` on node 2;
//! the runner between them stands in for the server's Flight transport):
//! both replicas hold every row, yet each token range is counted once; a
//! node that fails its probe is left out, a node that fails its fragment
//! has its ranges retried on their next replica, a range with no replica
//! left fails the query clearly, and a fragment a node does not plan is
//! refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, Int64Array, RecordBatch};
use async_trait::async_trait;
use concord_columnar::sql::distributed::{
    Distribution, FRAGMENT_REQUEST_FORMAT, FragmentRequest, FragmentRunner,
};
use concord_columnar::{Columnar, ColumnarOptions, Error, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::partitioner::TokenRange;
use concord_storage::testing::model;

use crate::sql::row;
use crate::{Node, open_columnar};

const T0: i64 = model::CLOCK_START_SECONDS * 1_000_000;
const ROWS: i32 = 40;

/// Node 2 is a real replica; node 9 answers its probe but fails every
/// fragment; node 8 fails its probe (and must then never be asked).
#[derive(Debug)]
struct Runner {
    node2: Arc<Columnar>,
    asked_8: AtomicU64,
}

#[async_trait]
impl FragmentRunner for Runner {
    async fn run(
        &self,
        node: u32,
        request: FragmentRequest,
    ) -> concord_columnar::Result<Vec<RecordBatch>> {
        match node {
            2 => Ok(self.node2.fragment_async(request).await?.1),
            8 => {
                self.asked_8.fetch_add(1, Ordering::SeqCst);
                Err(Error::Sql("node 8 is down".into()))
            }
            _ => Err(Error::Sql(format!("node {node}: connection reset"))),
        }
    }

    async fn watermark(&self, node: u32) -> concord_columnar::Result<(WriteTime, WriteTime)> {
        match node {
            8 => Err(Error::Sql("node 8: connection refused".into())),
            _ => Ok(self.node2.watermarks()),
        }
    }
}

fn ints(batches: &[RecordBatch], idx: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|batch| {
            let cast = arrow::compute::cast(batch.column(idx), &arrow::datatypes::DataType::Int64)
                .expect("cast");
            let array = cast
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .clone();
            (0..array.len()).map(|i| array.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn each_range_is_read_once_and_failed_nodes_hand_their_ranges_on() {
    let table = model::table(model::model_table_options());
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let mut replicas = Vec::new();
    for dir in &dirs {
        // Both nodes hold every row (as RF 3 of 3 would).
        let mut node = Node::new(table.clone());
        for key in 0..ROWS {
            node.write(
                row(&table, key, i64::from(key) * 3),
                WriteTime(T0 + 1 + i64::from(key)),
            );
        }
        let columnar = Arc::new(open_columnar(dir.path(), ColumnarOptions::default()));
        columnar.replica().register_table(table.clone());
        columnar
            .replica()
            .catch_up(&node.engine, node.feed.frontier())
            .expect("catch up");
        replicas.push((node, columnar));
    }
    let at = WriteTime(T0 + i64::from(ROWS));
    let node1 = Arc::clone(&replicas[0].1);
    let runner = Arc::new(Runner {
        node2: Arc::clone(&replicas[1].1),
        asked_8: AtomicU64::new(0),
    });
    let parts = TokenRange::full_ring().split_evenly(4);
    let distribution = Distribution {
        local: 1,
        ranges: vec![
            (parts[0], vec![1, 2]),
            (parts[1], vec![9, 2]),
            (parts[2], vec![2, 1]),
            (parts[3], vec![8, 1]),
        ],
    };

    let (count, stats) = node1
        .sql_distributed(
            "SELECT count(*) FROM ks.t",
            Snapshot::At(at),
            distribution.clone(),
            runner.clone(),
        )
        .expect("count");
    assert_eq!(ints(&count.batches, 0), vec![i64::from(ROWS)]);
    assert_eq!(count.snapshot, at);
    assert_eq!(
        stats.retries.load(Ordering::SeqCst),
        1,
        "node 9 failed once"
    );
    assert_eq!(runner.asked_8.load(Ordering::SeqCst), 0, "node 8 left out");

    let (grouped, _) = node1
        .sql_distributed(
            "SELECT pk % 4 AS g, sum(v2) FROM ks.t GROUP BY pk % 4 ORDER BY g",
            Snapshot::At(at),
            distribution.clone(),
            runner.clone(),
        )
        .expect("group by");
    assert_eq!(ints(&grouped.batches, 0), vec![0, 1, 2, 3]);
    let sums: Vec<i64> = (0..4)
        .map(|g| {
            (0..ROWS)
                .filter(|k| k % 4 == g)
                .map(|k| i64::from(k) * 3)
                .sum()
        })
        .collect();
    assert_eq!(ints(&grouped.batches, 1), sums);

    // A range whose only live replica fails its fragment: a clear error.
    let stranded = Distribution {
        local: 1,
        ranges: vec![(parts[0], vec![1]), (parts[1], vec![9])],
    };
    let error = node1
        .sql_distributed(
            "SELECT count(*) FROM ks.t",
            Snapshot::At(at),
            stranded,
            runner.clone(),
        )
        .expect_err("no replica left");
    assert!(
        error.to_string().contains("no replica of token range"),
        "{error}"
    );
    assert!(error.to_string().contains("connection reset"), "{error}");

    // A fragment node never runs a fragment it does not plan itself.
    let refused = replicas[1]
        .1
        .fragment(&FragmentRequest {
            format: FRAGMENT_REQUEST_FORMAT,
            query: "SELECT count(*) FROM ks.t".into(),
            snapshot: at.0,
            ranges: vec![TokenRange::full_ring()],
            fingerprint: "scan ks.t projection=None filters=[] limit=None".into(),
        })
        .expect_err("no such fragment");
    assert!(
        refused.to_string().contains("plans no fragment"),
        "{refused}"
    );
}
