//! Distributed analytics over a 4-process cluster (issue 6, "Analytics in a
//! cluster"; design/cluster.md, "Distributed analytics"): with RF 3 on four
//! nodes each node holds about 3/4 of the token ranges, so a SQL query
//! through any node must read the other ranges from their replicas. Rows
//! are written through node 1; a count, a group-by aggregate and a filter
//! through every node must equal the answer computed here from what was
//! written; EXPLAIN shows the fragments and EXPLAIN ANALYZE that the
//! partial aggregate ran on the fragment nodes (few rows shipped); with
//! node 4 SIGKILLed the query still answers from the other replicas, and
//! with nodes 2–4 down it fails with a clear error. On three nodes with
//! node 3 SIGKILLed, a default-freshness (`Latest`) query still answers
//! with rows written after the kill (the watermark moves with a replica
//! down).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use concord_client::{Client, SqlOptions};
use concord_server::cql::client::CqlClient;

const ROWS: i64 = 240;
const GROUPS: i64 = 4;

struct Member {
    child: Child,
    cql: SocketAddr,
    grpc: SocketAddr,
    cluster: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path, node_id: u32, join: Option<&str>) -> Member {
    let started = crate::cluster::start(data_dir, node_id, "127.0.0.1:0", join);
    let cql = started.value("cql: listening on ").parse().unwrap();
    let grpc = started.value("grpc: listening on ").parse().unwrap();
    let (cluster, _, _) = started.cluster_line();
    let crate::cluster::Started { child, .. } = started;
    Member {
        child,
        cql,
        grpc,
        cluster,
    }
}

fn value(k: i64) -> i64 {
    (k * 37) % 101
}

/// Creates `ks` (RF 3) and `ks.t (k int PRIMARY KEY, g int, v int)` through `client`.
async fn create_table(client: &mut CqlClient) {
    crate::cluster::create_rf3_table(client, "k int PRIMARY KEY, g int, v int").await;
}

/// One CQL batch inserting the row of each key: group `k % GROUPS`, value `value(k)`.
fn insert_batch(keys: impl IntoIterator<Item = i64>) -> String {
    let inserts: Vec<String> = keys
        .into_iter()
        .map(|k| {
            format!(
                "INSERT INTO ks.t (k, g, v) VALUES ({k}, {}, {});",
                k % GROUPS,
                value(k)
            )
        })
        .collect();
    format!("BEGIN BATCH {} APPLY BATCH", inserts.join(" "))
}

async fn sql(member: &Member, query: &str, options: SqlOptions) -> Vec<RecordBatch> {
    let client = Client::connect(&format!("http://{}", member.grpc))
        .await
        .unwrap();
    let result = client.sql_with(query, options).await;
    let result = result.unwrap_or_else(|error| panic!("{query}: {error}"));
    assert_eq!(result.store, "columnar", "{query}");
    result.batches
}

fn column<T: Array + Clone + 'static>(batches: &[RecordBatch], idx: usize, ty: DataType) -> Vec<T> {
    batches
        .iter()
        .map(|batch| {
            let cast = arrow::compute::cast(batch.column(idx), &ty).unwrap();
            cast.as_any().downcast_ref::<T>().unwrap().clone()
        })
        .collect()
}

fn ints(batches: &[RecordBatch], idx: usize) -> Vec<i64> {
    column::<Int64Array>(batches, idx, DataType::Int64)
        .iter()
        .flat_map(|array| array.values().to_vec())
        .collect()
}

fn floats(batches: &[RecordBatch], idx: usize) -> Vec<f64> {
    column::<Float64Array>(batches, idx, DataType::Float64)
        .iter()
        .flat_map(|array| array.values().to_vec())
        .collect()
}

/// The plan text of an EXPLAIN answer (every row's `plan` column).
fn plan_text(batches: &[RecordBatch]) -> String {
    batches
        .iter()
        .flat_map(|batch| {
            let plans = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..plans.len())
                .map(|idx| plans.value(idx).to_owned())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks the count, the group-by aggregate and the filter through `member`.
async fn check_answers(member: &Member, options: SqlOptions, who: &str) {
    let count = sql(member, "SELECT count(*) FROM ks.t", options).await;
    assert_eq!(ints(&count, 0), vec![ROWS], "count through {who}");

    let grouped = sql(
        member,
        "SELECT g, sum(v), count(*), avg(v), min(v), max(v) FROM ks.t GROUP BY g ORDER BY g",
        options,
    )
    .await;
    let mut want: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for k in 0..ROWS {
        want.entry(k % GROUPS).or_default().push(value(k));
    }
    let groups: Vec<i64> = want.keys().copied().collect();
    assert_eq!(ints(&grouped, 0), groups, "groups through {who}");
    let sums: Vec<i64> = want.values().map(|vs| vs.iter().sum()).collect();
    assert_eq!(ints(&grouped, 1), sums, "sums through {who}");
    let counts: Vec<i64> = want.values().map(|vs| vs.len() as i64).collect();
    assert_eq!(ints(&grouped, 2), counts, "counts through {who}");
    let avgs: Vec<f64> = want
        .values()
        .map(|vs| vs.iter().sum::<i64>() as f64 / vs.len() as f64)
        .collect();
    let got = floats(&grouped, 3);
    assert_eq!(got.len(), avgs.len(), "averages through {who}");
    for (got, want) in got.iter().zip(&avgs) {
        assert!(
            (got - want).abs() < 1e-9,
            "avg {got} != {want} through {who}"
        );
    }
    let mins: Vec<i64> = want.values().map(|vs| *vs.iter().min().unwrap()).collect();
    assert_eq!(ints(&grouped, 4), mins, "mins through {who}");
    let maxs: Vec<i64> = want.values().map(|vs| *vs.iter().max().unwrap()).collect();
    assert_eq!(ints(&grouped, 5), maxs, "maxs through {who}");

    // Partition lookups: this node may not hold the partition, so in a
    // distributed cluster they read the replica that does.
    for k in [0, 17, 118, ROWS - 1] {
        let found = sql(
            member,
            &format!("SELECT v FROM ks.t WHERE k = {k}"),
            options,
        )
        .await;
        assert_eq!(ints(&found, 0), vec![value(k)], "k = {k} through {who}");
    }

    // A join: each side's scan is a fragment, the join runs here.
    let joined = sql(
        member,
        "SELECT a.g, count(*) FROM ks.t a JOIN ks.t b ON a.k = b.k + 1 GROUP BY a.g ORDER BY a.g",
        options,
    )
    .await;
    let join_counts: Vec<i64> = (0..GROUPS)
        .map(|g| (1..ROWS).filter(|k| k % GROUPS == g).count() as i64)
        .collect();
    assert_eq!(ints(&joined, 1), join_counts, "join through {who}");

    let filtered = sql(
        member,
        "SELECT k, v FROM ks.t WHERE v > 80 ORDER BY k",
        options,
    )
    .await;
    let keys: Vec<i64> = (0..ROWS).filter(|k| value(*k) > 80).collect();
    assert!(!keys.is_empty());
    assert_eq!(ints(&filtered, 0), keys, "filter through {who}");
    let values: Vec<i64> = keys.iter().map(|k| value(*k)).collect();
    assert_eq!(ints(&filtered, 1), values, "filtered values through {who}");
}

// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_over_four_nodes_read_every_range_once_and_aggregate_where_the_rows_are() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let node1 = start(&dir.path().join("n1"), 1, None);
    let seed = node1.cluster.clone();
    let node2 = start(&dir.path().join("n2"), 2, Some(&seed));
    let node3 = start(&dir.path().join("n3"), 3, Some(&seed));
    let node4 = start(&dir.path().join("n4"), 4, Some(&seed));
    let mut c1 = CqlClient::connect(node1.cql).await.unwrap();
    create_table(&mut c1).await;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(24) {
        c1.query(&insert_batch(chunk.iter().copied()))
            .await
            .unwrap();
    }
    let members = [&node1, &node2, &node3, &node4];

    // Every node lacks some ranges (RF 3 of 4), so every node distributes:
    // its plan reads the ranges it holds here and the others elsewhere.
    for (idx, member) in members.iter().enumerate() {
        let explain = sql(
            member,
            "EXPLAIN SELECT count(*) FROM ks.t",
            SqlOptions::default(),
        )
        .await;
        let text = plan_text(&explain);
        assert!(
            text.contains("distributed"),
            "route through node {}: {text}",
            idx + 1
        );
        assert!(
            text.contains(&format!("node {} (here)", idx + 1)),
            "node {} reads its own ranges: {text}",
            idx + 1
        );
        let remote = (1..=4)
            .filter(|node| *node != idx + 1)
            .any(|node| text.contains(&format!("node {node}: ")));
        assert!(
            remote,
            "node {} reads other ranges elsewhere: {text}",
            idx + 1
        );
    }

    for (idx, member) in members.iter().enumerate() {
        check_answers(member, SqlOptions::default(), &format!("node {}", idx + 1)).await;
    }

    // The partial aggregate runs on the fragment nodes: the coordinator's
    // plan has no partial aggregate of its own, and the fragments ship a few
    // state rows per group and node instead of the rows they scanned.
    let query = "SELECT g, sum(v), count(*), avg(v) FROM ks.t GROUP BY g";
    let explain = plan_text(&sql(&node2, &format!("EXPLAIN {query}"), SqlOptions::default()).await);
    assert!(
        explain.contains("ConcordFragmentsExec: ship=partial aggregate"),
        "{explain}"
    );
    assert!(
        !explain
            .lines()
            .any(|line| line.trim_start().starts_with("AggregateExec: mode=Partial")),
        "the coordinator runs no partial aggregate: {explain}"
    );
    let analyzed = plan_text(
        &sql(
            &node2,
            &format!("EXPLAIN ANALYZE {query}"),
            SqlOptions::default(),
        )
        .await,
    );
    let line = analyzed
        .lines()
        .find(|line| line.contains("ConcordFragmentsExec"))
        .unwrap_or_else(|| panic!("{analyzed}"));
    let shipped: i64 = line
        .split("rows_shipped=")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
        })
        .unwrap_or_else(|| panic!("no rows_shipped in {line}: {analyzed}"));
    println!("rows shipped for the partial aggregate: {shipped} of {ROWS}");
    assert!(shipped >= GROUPS, "{line}");
    // At most one state row per group, node and analytics partition
    // (4 nodes, analytics_threads = 2 by default), against ROWS scanned.
    assert!(
        shipped <= GROUPS * 4 * 2,
        "the fragments shipped {shipped} rows for {ROWS} scanned: {line}"
    );

    // Node 4 dies. A query at a bounded staleness reads at the lowest
    // watermark of the nodes that answer the probe, and node 4's ranges
    // come from their other replicas.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(node4);
    let stale = SqlOptions {
        max_staleness: Some(Duration::from_secs(600)),
        ..SqlOptions::default()
    };
    for (idx, member) in [&node1, &node2, &node3].iter().enumerate() {
        check_answers(member, stale, &format!("node {} (node 4 down)", idx + 1)).await;
    }

    // Nodes 2 and 3 die too: the ranges node 1 does not hold have no
    // replica left, and the query says so instead of answering in part.
    drop(node2);
    drop(node3);
    let client = Client::connect(&format!("http://{}", node1.grpc))
        .await
        .unwrap();
    let error = client
        .sql_with("SELECT count(*) FROM ks.t", stale)
        .await
        .expect_err("ranges without a live replica");
    assert!(
        error.to_string().contains("no replica of token range"),
        "{error}"
    );
}

/// One of three nodes dies and the columnar replicas keep up: rows written through node 1
/// after node 3 was SIGKILLed are in a default-freshness (`Latest`) SQL answer through node 1,
/// and rows written through node 2 then in one through node 2, each within the snapshot wait
/// (`Latest` is the highest executeAt the node answered, so the query waits until the node's
/// columnar watermark passes its own writes). The change feed's watermark follows each node's
/// applied-before floor, which a quorum of every shard's replicas moves (design/cluster.md,
/// "Change feed frontier"; design/accord.md, "Two levels"). When it followed DurableBefore,
/// which needs every replica, the watermark stopped with node 3 and both queries failed their
/// snapshot wait.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_query_sees_new_rows_with_one_of_three_nodes_down() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let node1 = start(&dir.path().join("n1"), 1, None);
    let seed = node1.cluster.clone();
    let node2 = start(&dir.path().join("n2"), 2, Some(&seed));
    let node3 = start(&dir.path().join("n3"), 3, Some(&seed));
    let mut c1 = CqlClient::connect(node1.cql).await.unwrap();
    create_table(&mut c1).await;
    c1.query(&insert_batch(0..40)).await.unwrap();
    let query = "SELECT count(*), sum(v) FROM ks.t";
    let sum = |rows: i64| (0..rows).map(value).sum::<i64>();
    let batches = sql(&node1, query, SqlOptions::default()).await;
    assert_eq!(ints(&batches, 0), vec![40], "count through node 1");

    drop(node3);
    let mut c2 = CqlClient::connect(node2.cql).await.unwrap();
    for (who, member, client, rows) in [
        ("node 1", &node1, &mut c1, 40..80),
        ("node 2", &node2, &mut c2, 80..120),
    ] {
        let end = rows.end;
        client.query(&insert_batch(rows)).await.unwrap();
        let started = std::time::Instant::now();
        let batches = sql(member, query, SqlOptions::default()).await;
        println!(
            "Latest query through {who} with node 3 down answered in {:?}",
            started.elapsed()
        );
        assert_eq!(ints(&batches, 0), vec![end], "count through {who}");
        assert_eq!(ints(&batches, 1), vec![sum(end)], "sum through {who}");
    }
}
