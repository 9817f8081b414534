//! Data over a 3-process cluster (issue 6, "Accord for real"): node 1
//! bootstraps, nodes 2 and 3 join; a keyspace of RF 3; writes through one
//! node are read through another (reads are Accord transactions in a
//! cluster, so they see every acknowledged write); node 3 is SIGKILLed and
//! writes and reads through nodes 1 and 2 go on (quorum 2 of 3); node 3
//! restarts on its data directory, replays its journal and serves reads
//! again; then its own copy of the table (a local full scan, which is no
//! Accord transaction) is checked for the writes it missed while down.

use std::io::{BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command};
use std::time::{Duration, Instant};

use concord_server::cql::client::{CqlClient, rows};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

struct Member {
    child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
    cql: SocketAddr,
    grpc: SocketAddr,
    cluster: String,
}

fn start(data_dir: &Path, node_id: u32, cluster_listen: &str, join: Option<&str>) -> Member {
    let started = crate::cluster::start(data_dir, node_id, cluster_listen, join);
    let cql = started.value("cql: listening on ").parse().unwrap();
    let grpc = started.value("grpc: listening on ").parse().unwrap();
    let (cluster, _, _) = started.cluster_line();
    let crate::cluster::Started { child, lines, .. } = started;
    Member {
        child,
        _lines: lines,
        cql,
        grpc,
        cluster,
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes 1–3 under `dir`: node 1 bootstraps, 2 and 3 join through it.
fn start_three(dir: &Path) -> (Member, Member, Member) {
    let node1 = start(&dir.join("n1"), 1, "127.0.0.1:0", None);
    let seed = node1.cluster.clone();
    let node2 = start(&dir.join("n2"), 2, "127.0.0.1:0", Some(&seed));
    let node3 = start(&dir.join("n3"), 3, "127.0.0.1:0", Some(&seed));
    (node1, node2, node3)
}

/// Creates `ks` (RF 3) and `ks.t (k int PRIMARY KEY, v int)` through `client`.
async fn create_table(client: &mut CqlClient) {
    crate::cluster::create_rf3_table(client, "k int PRIMARY KEY, v int").await;
}

async fn client(member: &Member) -> CqlClient {
    CqlClient::connect(member.cql).await.unwrap()
}

/// `SELECT v FROM ks.t WHERE k = key` through `client`.
async fn read(client: &mut CqlClient, key: i32) -> Option<i32> {
    let result = client
        .query(&format!("SELECT v FROM ks.t WHERE k = {key}"))
        .await
        .unwrap_or_else(|error| panic!("read k = {key}: {error}"));
    let rows = rows(&result, &[CqlType::Int]).unwrap();
    assert!(rows.len() <= 1, "{rows:?}");
    rows.into_iter().next().map(|row| match &row[0] {
        Some(CqlValue::Int(v)) => *v,
        other => panic!("k = {key}: v is {other:?}"),
    })
}

/// Every `(k, v)` of the table in this node's own row store (a full scan is
/// local, not an Accord transaction).
async fn local_rows(client: &mut CqlClient) -> Vec<(i32, i32)> {
    let result = client.query("SELECT k, v FROM ks.t").await.unwrap();
    let mut pairs: Vec<(i32, i32)> = rows(&result, &[CqlType::Int, CqlType::Int])
        .unwrap()
        .into_iter()
        .map(|row| match (&row[0], &row[1]) {
            (Some(CqlValue::Int(k)), Some(CqlValue::Int(v))) => (*k, *v),
            other => panic!("row {other:?}"),
        })
        .collect();
    pairs.sort_unstable();
    pairs
}

// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_through_another_and_survive_a_sigkill() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (node1, node2, node3) = start_three(dir.path());
    let node3_address = node3.cluster.clone();
    let mut c1 = client(&node1).await;
    let mut c2 = client(&node2).await;
    let mut c3 = client(&node3).await;

    // DDL through one node goes through the metadata log to every node
    // (same table ids everywhere).
    create_table(&mut c1).await;

    // Writes through node 1 are seen by reads through nodes 2 and 3 at once.
    for k in 0..20 {
        c1.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {})", k * 10))
            .await
            .unwrap();
        assert_eq!(
            read(&mut c2, k).await,
            Some(k * 10),
            "k = {k} through node 2"
        );
    }
    for k in 0..20 {
        assert_eq!(
            read(&mut c3, k).await,
            Some(k * 10),
            "k = {k} through node 3"
        );
    }
    // An overwrite through node 2 wins over node 1's older write everywhere.
    c2.query("UPDATE ks.t SET v = 7 WHERE k = 0").await.unwrap();
    assert_eq!(read(&mut c1, 0).await, Some(7));

    // SIGKILL node 3: RF 3 keeps a quorum of 2, writes and reads go on.
    drop(c3);
    drop(node3);
    let started = Instant::now();
    for k in 20..40 {
        c2.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {})", k * 10))
            .await
            .unwrap_or_else(|error| panic!("write k = {k} with node 3 down: {error}"));
        assert_eq!(
            read(&mut c1, k).await,
            Some(k * 10),
            "k = {k} through node 1"
        );
    }
    let with_one_down = started.elapsed();
    assert!(
        with_one_down < Duration::from_secs(20),
        "20 writes and reads with one node down took {with_one_down:?}"
    );

    // Node 3 restarts on its data directory and address (it resumes the
    // stored cluster), replays its journal and coordinates reads again:
    // an Accord read waits for the writes it depends on to apply locally.
    let node3 = start(&dir.path().join("n3"), 3, &node3_address, None);
    let mut c3 = client(&node3).await;
    for k in [0, 5, 25, 39] {
        let expected = if k == 0 { 7 } else { k * 10 };
        assert_eq!(
            read(&mut c3, k).await,
            Some(expected),
            "k = {k} through restarted node 3"
        );
    }
    // Its own copy catches up with the writes it missed while down.
    let want: Vec<(i32, i32)> = (0..40)
        .map(|k| (k, if k == 0 { 7 } else { k * 10 }))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut local = local_rows(&mut c3).await;
    while local != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        local = local_rows(&mut c3).await;
    }
    assert_eq!(local, want, "node 3's own rows after its restart");
}

/// SIGTERM and wait for a clean stop.
fn stop(mut member: Member) {
    let status = Command::new("kill")
        .args(["-TERM", &member.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = member.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// What node 3 missed while down reaches it after the nodes that sent to it
/// restarted too (so no transport queue kept those messages for it): the
/// protocol's own fetching (durability rounds, CheckStatus) has to bring it.
// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_fetches_what_it_missed_after_its_peers_restarted() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (node1, node2, node3) = start_three(dir.path());
    let addresses: Vec<String> = [&node1, &node2, &node3]
        .iter()
        .map(|member| member.cluster.clone())
        .collect();
    // DDL through node 1 reaches every node through the metadata log.
    let mut c = client(&node1).await;
    create_table(&mut c).await;
    drop(c);
    drop(node3);
    let mut c1 = client(&node1).await;
    for k in 0..10 {
        c1.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {k})"))
            .await
            .unwrap();
    }
    drop(c1);
    // Nodes 1 and 2 restart one after the other: their queues for node 3 are gone.
    stop(node1);
    let node1 = start(&dir.path().join("n1"), 1, &addresses[0], None);
    stop(node2);
    let node2 = start(&dir.path().join("n2"), 2, &addresses[1], None);
    let mut c2 = client(&node2).await;
    assert_eq!(read(&mut c2, 9).await, Some(9));
    let node3 = start(&dir.path().join("n3"), 3, &addresses[2], None);
    let mut c3 = client(&node3).await;
    let want: Vec<(i32, i32)> = (0..10).map(|k| (k, k)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut local = local_rows(&mut c3).await;
    while local != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        local = local_rows(&mut c3).await;
    }
    assert_eq!(local, want, "node 3's own rows after its restart");
    assert_eq!(read(&mut c3, 4).await, Some(4));
    // Node 3's columnar replica has the fetched writes too: their executeAts were above
    // the feed watermark it published (the floor follows the durability rounds).
    let sql = concord_client::Client::connect(&format!("http://{}", node3.grpc))
        .await
        .unwrap();
    let scan = sql
        .sql_with(
            "SELECT k, v FROM ks.t",
            concord_client::SqlOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(scan.store, "columnar");
    assert_eq!(scan.num_rows(), 10, "node 3's columnar replica");
    drop(node1);
}

/// A schema change under load (issue 6's tests): node 1 writes without pause while
/// `ALTER TABLE ... ADD` goes through node 2; once node 3 knows the new column (the metadata
/// log reaches it; a client waits for that as drivers wait for schema agreement), node 3
/// writes rows that use it. No write fails, and every node's own copy ends with every
/// acknowledged row, old rows with the new column null.
// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_under_load_loses_no_write() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (node1, node2, node3) = start_three(dir.path());
    let mut c1 = client(&node1).await;
    create_table(&mut c1).await;
    let stop_writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop_writing = stop_writing.clone();
        tokio::spawn(async move {
            let mut written = 0;
            while !stop_writing.load(std::sync::atomic::Ordering::SeqCst) || written < 20 {
                c1.query(&format!(
                    "INSERT INTO ks.t (k, v) VALUES ({written}, {written})"
                ))
                .await
                .unwrap_or_else(|error| panic!("write k = {written} during the ALTER: {error}"));
                written += 1;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c2 = client(&node2).await;
    c2.query("ALTER TABLE ks.t ADD w int").await.unwrap();
    let mut c3 = client(&node3).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c3
            .query("INSERT INTO ks.t (k, v, w) VALUES (100000, 1, 1)")
            .await
        {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "node 3 never learnt the new column: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for k in 100_001..100_010 {
        c3.query(&format!("INSERT INTO ks.t (k, v, w) VALUES ({k}, 1, {k})"))
            .await
            .unwrap_or_else(|error| panic!("write k = {k} with w: {error}"));
    }
    stop_writing.store(true, std::sync::atomic::Ordering::SeqCst);
    let written: i32 = writer.await.unwrap();
    let mut want: Vec<(i32, i32, Option<i32>)> = (0..written).map(|k| (k, k, None)).collect();
    want.push((100_000, 1, Some(1)));
    want.extend((100_001..100_010).map(|k| (k, 1, Some(k))));
    for (name, member) in [("node 1", &node1), ("node 2", &node2), ("node 3", &node3)] {
        let mut c = client(member).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let result = c.query("SELECT k, v, w FROM ks.t").await.unwrap();
            let mut got: Vec<(i32, i32, Option<i32>)> =
                rows(&result, &[CqlType::Int, CqlType::Int, CqlType::Int])
                    .unwrap()
                    .into_iter()
                    .map(|row| match (&row[0], &row[1], &row[2]) {
                        (Some(CqlValue::Int(k)), Some(CqlValue::Int(v)), w) => (
                            *k,
                            *v,
                            w.as_ref().map(|w| match w {
                                CqlValue::Int(w) => *w,
                                other => panic!("w is {other:?}"),
                            }),
                        ),
                        other => panic!("row {other:?}"),
                    })
                    .collect();
            got.sort_unstable();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s own rows: {} of {} (first differences {:?})",
                got.len(),
                want.len(),
                got.iter()
                    .zip(&want)
                    .filter(|(a, b)| a != b)
                    .take(3)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A node that joins a cluster already holding rows (issue 6, "joining and removing nodes";
/// design/cluster.md, "Epoch transitions and bootstrap"): the placement change seals the
/// epoch, node 2 fetches the rows of every range it gains from node 1, and only then does the
/// new epoch begin. Writes go on through node 1 during the join (held for the seal, then
/// committed in the new epoch). Afterwards node 2's own row store holds every row, deleted
/// rows stay deleted, reads through node 2 see every acknowledged write, and node 2's
/// columnar replica, rebuilt from the fetched rows, answers on its own once node 1 is gone.
// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_a_cluster_holding_rows_fetches_them_before_it_serves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let node1 = start(&dir.path().join("n1"), 1, "127.0.0.1:0", None);
    let mut c1 = client(&node1).await;
    create_table(&mut c1).await;
    for k in 0..200 {
        c1.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {})", k * 10))
            .await
            .unwrap();
    }
    c1.query("DELETE FROM ks.t WHERE k = 7").await.unwrap();
    c1.query("UPDATE ks.t SET v = 5 WHERE k = 8").await.unwrap();

    // A writer through node 1 for the whole join.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut c = client(&node1).await;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 1000;
            while !stop.load(Ordering::Relaxed) {
                if c.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {k})"))
                    .await
                    .is_ok()
                {
                    acked.push(k);
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seed = node1.cluster.clone();
    let n2_dir = dir.path().join("n2");
    let node2 = tokio::task::spawn_blocking(move || start(&n2_dir, 2, "127.0.0.1:0", Some(&seed)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() >= 20,
        "few writes were acknowledged: {}",
        acked.len()
    );

    let mut c2 = client(&node2).await;
    let peers = c1.query("SELECT peer FROM system.peers").await.unwrap();
    assert_eq!(
        rows(&peers, &[CqlType::Inet]).unwrap().len(),
        1,
        "node 2 is a member"
    );
    // Node 2's own copy (a local scan) converges to node 1's and holds every acknowledged
    // write: rows fetched during the join and rows applied since.
    let mut want: Vec<(i32, i32)> = (0..200).filter(|k| *k != 7).map(|k| (k, k * 10)).collect();
    want.iter_mut().for_each(|pair| {
        if pair.0 == 8 {
            pair.1 = 5
        }
    });
    want.extend(acked.iter().map(|k| (*k, *k)));
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got1, got2) = (local_rows(&mut c1).await, local_rows(&mut c2).await);
        let unacked_only = |got: &Vec<(i32, i32)>| {
            want.iter().all(|pair| got.contains(pair))
                && got.iter().all(|pair| want.contains(pair) || pair.0 >= 1000)
        };
        if got1 == got2 && unacked_only(&got2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 has {} rows, node 1 {}, {} wanted; missing on node 2: {:?}",
            got2.len(),
            got1.len(),
            want.len(),
            want.iter()
                .filter(|pair| !got2.contains(pair))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reads through node 2 are Accord reads in the new epoch.
    assert_eq!(read(&mut c2, 7).await, None);
    assert_eq!(read(&mut c2, 8).await, Some(5));
    assert_eq!(read(&mut c2, 199).await, Some(1990));
    assert_eq!(read(&mut c2, acked[0]).await, Some(acked[0]));
    // Writes through node 2 commit on both nodes.
    c2.query("INSERT INTO ks.t (k, v) VALUES (5000, 1)")
        .await
        .unwrap();
    assert_eq!(read(&mut c1, 5000).await, Some(1));

    // Node 2's columnar replica holds the fetched rows: with node 1 gone it answers alone
    // (bounded staleness: node 2's watermark stops without a quorum).
    drop(c1);
    drop(node1);
    let client = concord_client::Client::connect(&format!("http://{}", node2.grpc))
        .await
        .unwrap();
    let options = concord_client::SqlOptions {
        max_staleness: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let result = client
        .sql_with("SELECT count(*), sum(v) FROM ks.t WHERE k < 1000", options)
        .await
        .unwrap();
    assert_eq!(result.store, "columnar");
    let count = result.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    let sum = result.batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    let fetched: Vec<&(i32, i32)> = want.iter().filter(|pair| pair.0 < 1000).collect();
    assert_eq!(count, fetched.len() as i64);
    assert_eq!(
        sum,
        fetched.iter().map(|pair| i64::from(pair.1)).sum::<i64>()
    );
}

/// A dead node is removed from a cluster holding rows (`concord cluster remove-node`): the
/// removal is a sealed transition in which the remaining nodes take over its ranges, fetching
/// the rows of ranges they gain from the replicas that are alive. Four nodes at RF 3, so each
/// of nodes 2–4 gains ranges; node 4 itself joined after the rows were written.
// The turn guard is a std mutex held for the whole test on purpose: each test runs on its own
// thread, and the other cluster tests wait on theirs.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_and_the_others_take_over_its_ranges() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (node1, node2, node3) = start_three(dir.path());
    let mut c1 = client(&node1).await;
    create_table(&mut c1).await;
    for k in 0..100 {
        c1.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {k})"))
            .await
            .unwrap();
    }
    let seed = node2.cluster.clone();
    let n4_dir = dir.path().join("n4");
    let node4 = tokio::task::spawn_blocking(move || start(&n4_dir, 4, "127.0.0.1:0", Some(&seed)))
        .await
        .unwrap();
    drop(c1);
    drop(node1);
    let mut c2 = client(&node2).await;
    for k in 100..150 {
        c2.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {k})"))
            .await
            .unwrap();
    }
    let seed = node2.cluster.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(crate::binary::BINARY)
            .args(["cluster", "remove-node", "--node", "1", "--seed", &seed])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The transition ends when node 1 is no member: node 2 lists nodes 3 and 4 only.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let peers = c2.query("SELECT peer FROM system.peers").await.unwrap();
        if rows(&peers, &[CqlType::Inet]).unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 is still a member");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c3 = client(&node3).await;
    for k in 150..160 {
        c3.query(&format!("INSERT INTO ks.t (k, v) VALUES ({k}, {k})"))
            .await
            .unwrap();
    }
    // Three nodes at RF 3: each holds every row in its own store.
    let want: Vec<(i32, i32)> = (0..160).map(|k| (k, k)).collect();
    let mut c4 = client(&node4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, c) in [("2", &mut c2), ("3", &mut c3), ("4", &mut c4)] {
        loop {
            let got = local_rows(c).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} holds {} rows of {}; missing {:?}",
                got.len(),
                want.len(),
                want.iter()
                    .filter(|pair| !got.contains(pair))
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(read(&mut c4, 120).await, Some(120));
}
