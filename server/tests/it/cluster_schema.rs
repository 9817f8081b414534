//! Schema changes through the metadata log, over real processes
//! (design/cluster.md, "Schema through the metadata log"): a DDL sent to
//! one node of three is applied on every node with the same table ids and
//! schema digest; a bad DDL fails on its node and changes nothing anywhere;
//! a node that was down during a DDL catches up from the log on restart.

use std::io::{BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command};
use std::time::{Duration, Instant};

use cassandra_protocol::frame::message_result::ResResultBody;
use concord_server::cql::client::{CqlClient, rows};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

/// A `concord start` cluster member.
pub(crate) struct Member {
    child: Child,
    _lines: std::thread::JoinHandle<()>,
    pub data_dir: PathBuf,
    pub cql: SocketAddr,
    /// Its cluster (metadata) address.
    pub cluster: String,
}

impl Member {
    /// Starts node `node_id` on `data_dir`, its cluster service on
    /// `cluster_listen`, joining `join` if given.
    pub(crate) fn start(
        data_dir: &Path,
        node_id: u32,
        cluster_listen: &str,
        join: Option<&str>,
    ) -> Member {
        Member::start_with(
            data_dir,
            node_id,
            cluster_listen,
            join,
            &crate::binary::EPHEMERAL_ENDPOINTS,
        )
    }

    /// As [`Member::start`], with the client endpoints' flags given.
    pub(crate) fn start_with(
        data_dir: &Path,
        node_id: u32,
        cluster_listen: &str,
        join: Option<&str>,
        endpoints: &[&str],
    ) -> Member {
        let started =
            crate::cluster::start_with(data_dir, node_id, cluster_listen, join, endpoints);
        let cql = started.value("cql: listening on ").parse().unwrap();
        let (cluster, _, _) = started.cluster_line();
        let crate::cluster::Started { child, lines, .. } = started;
        Member {
            child,
            _lines: drain(lines),
            data_dir: data_dir.to_path_buf(),
            cql,
            cluster,
        }
    }

    /// SIGTERM, and the exit must be clean.
    pub(crate) fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "exit status {exit:?}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps reading a node's stdout so it never blocks on a full pipe.
fn drain(lines: Lines<BufReader<ChildStdout>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || for _ in lines {})
}

/// Starts node 1 (bootstrap) and nodes 2..=count joining it.
pub(crate) fn start_cluster(dir: &Path, count: u32) -> Vec<Member> {
    let first = Member::start(&dir.join("n1"), 1, "127.0.0.1:0", None);
    let seed = first.cluster.clone();
    let mut members = vec![first];
    for node in 2..=count {
        members.push(Member::start(
            &dir.join(format!("n{node}")),
            node,
            "127.0.0.1:0",
            Some(&seed),
        ));
    }
    members
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The rows of `query` on a fresh connection to `address`.
async fn select(address: SocketAddr, query: &str, types: &[CqlType]) -> Vec<Vec<Option<CqlValue>>> {
    let mut client = CqlClient::connect(address).await.unwrap();
    let result = client.query(query).await.unwrap();
    rows(&result, types).unwrap()
}

/// `system.local`'s schema_version and `ks`'s table ids on `address`.
async fn schema_of(
    address: SocketAddr,
) -> (Vec<Vec<Option<CqlValue>>>, Vec<Vec<Option<CqlValue>>>) {
    let version = select(
        address,
        "SELECT schema_version FROM system.local",
        &[CqlType::Uuid],
    )
    .await;
    let ids = select(
        address,
        "SELECT table_name, id FROM system_schema.tables WHERE keyspace_name = 'ks'",
        &[CqlType::Text, CqlType::Uuid],
    )
    .await;
    (version, ids)
}

/// Retries `statement` on `address` until it succeeds or 15 s pass (a
/// node applies the log shortly after the proposer does).
async fn eventually(address: SocketAddr, statement: &str) -> ResResultBody {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut client = CqlClient::connect(address).await.unwrap();
        match client.query(statement).await {
            Ok(result) => return result,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{statement} on {address}: {error}"),
        }
    }
}

#[test]
fn ddl_on_one_node_applies_on_every_node_and_a_restarted_node_catches_up() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let members = start_cluster(dir.path(), 3);
    let cql: Vec<SocketAddr> = members.iter().map(|member| member.cql).collect();
    let runtime = runtime();
    runtime.block_on(async {
        let mut client = CqlClient::connect(cql[0]).await.unwrap();
        client
            .query(
                "CREATE KEYSPACE ks WITH replication = \
                 {'class': 'SimpleStrategy', 'replication_factor': 3}",
            )
            .await
            .unwrap();
        client.query("USE ks").await.unwrap();
        let created = client
            .query("CREATE TABLE t (k int PRIMARY KEY, v text)")
            .await
            .unwrap();
        assert!(
            matches!(created, ResResultBody::SchemaChange(_)),
            "{created:?}"
        );
        // The reply came after this node applied it: the same connection
        // writes at once.
        client
            .query("INSERT INTO t (k, v) VALUES (1, 'one')")
            .await
            .unwrap();
        for (node, address) in cql.iter().enumerate().skip(1) {
            eventually(*address, "INSERT INTO ks.t (k, v) VALUES (2, 'two')").await;
            let read = select(*address, "SELECT v FROM ks.t WHERE k = 2", &[CqlType::Text]).await;
            assert_eq!(
                read,
                vec![vec![Some(CqlValue::Text("two".into()))]],
                "node {}",
                node + 1
            );
        }
        // Same schema, same table ids everywhere.
        let first = schema_of(cql[0]).await;
        assert_eq!(first.1.len(), 1, "{first:?}");
        for address in &cql[1..] {
            assert_eq!(schema_of(*address).await, first);
        }

        // A DDL that fails validation fails on its node, proposes nothing.
        let mut second = CqlClient::connect(cql[1]).await.unwrap();
        let error = second
            .query("CREATE TABLE ks.t (k int PRIMARY KEY)")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let error = second
            .query("CREATE TABLE ks.bad (k nosuchtype PRIMARY KEY)")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("nosuchtype"), "{error}");
        let error = second
            .query(
                "CREATE KEYSPACE wide WITH replication = \
                 {'class': 'SimpleStrategy', 'replication_factor': 12}",
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("replication factor"), "{error}");
        for address in &cql {
            assert_eq!(schema_of(*address).await, first);
        }
    });

    // Node 3 misses two schema changes while it is down.
    let mut members = members;
    let third = members.pop().unwrap();
    let (third_dir, third_cluster) = (third.data_dir.clone(), third.cluster.clone());
    third.stop();
    runtime.block_on(async {
        let mut client = CqlClient::connect(cql[0]).await.unwrap();
        client
            .query("CREATE TABLE ks.u (k int PRIMARY KEY, n int)")
            .await
            .unwrap();
        client.query("ALTER TABLE ks.t ADD w int").await.unwrap();
    });
    let third = Member::start(&third_dir, 3, &third_cluster, None);
    runtime.block_on(async {
        eventually(third.cql, "INSERT INTO ks.u (k, n) VALUES (1, 1)").await;
        eventually(
            third.cql,
            "INSERT INTO ks.t (k, v, w) VALUES (3, 'three', 3)",
        )
        .await;
        let first = schema_of(cql[0]).await;
        assert_eq!(first.1.len(), 2, "{first:?}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while schema_of(third.cql).await != first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(schema_of(third.cql).await, first);
        assert_eq!(schema_of(cql[1]).await, first);
    });
    third.stop();
    for member in members.into_iter().rev() {
        member.stop();
    }
}
