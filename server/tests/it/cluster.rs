//! `concord start` as a cluster member, over real processes: node 1
//! bootstraps a cluster, node 2 joins it with `--join`, both stop cleanly on
//! SIGTERM, and node 2 restarted on its data directory (without `--join`)
//! resumes the cluster it stored.

use std::io::{BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::binary::{BINARY, EPHEMERAL_ENDPOINTS, wait_ready};

/// Multi-node process tests take turns: three debug nodes keep a 2-core CI machine busy, and
/// two such clusters at once starve the protocol's timers ("the coordinator gave up").
static CLUSTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held for the whole of a test that starts a multi-node cluster.
pub(crate) fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A started `concord start` cluster member: the process, the rest of its stdout, and the
/// lines it printed up to `ready`.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
    pub(crate) output: Vec<String>,
}

/// Starts node `node_id` on `data_dir` with its cluster service on `cluster_listen`, joining
/// `join` if given, client endpoints on ephemeral ports; waits for `ready`.
pub(crate) fn start(
    data_dir: &Path,
    node_id: u32,
    cluster_listen: &str,
    join: Option<&str>,
) -> Started {
    start_with(
        data_dir,
        node_id,
        cluster_listen,
        join,
        &EPHEMERAL_ENDPOINTS,
    )
}

/// As [`start`], with the client endpoints' flags given (`--cql-listen-address ...`).
pub(crate) fn start_with(
    data_dir: &Path,
    node_id: u32,
    cluster_listen: &str,
    join: Option<&str>,
    endpoints: &[&str],
) -> Started {
    let mut command = Command::new(BINARY);
    command
        .arg("start")
        .args(endpoints)
        .args([
            "--node-id",
            &node_id.to_string(),
            "--cluster-listen-address",
            cluster_listen,
            "--data-dir",
        ])
        .arg(data_dir);
    if let Some(seed) = join {
        command.args(["--join", seed]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, output) = wait_ready(&mut child);
    Started {
        child,
        lines,
        output,
    }
}

impl Started {
    /// What follows `prefix` on the first output line that starts with it.
    pub(crate) fn value(&self, prefix: &str) -> &str {
        self.output
            .iter()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:?}", self.output))
    }

    /// The `cluster:` line: (address, epoch, nodes up).
    pub(crate) fn cluster_line(&self) -> (String, u64, String) {
        let line = self
            .output
            .iter()
            .find(|line| line.starts_with("cluster: node "))
            .unwrap_or_else(|| panic!("no cluster line in {:?}", self.output));
        // cluster: node N at ADDR, epoch E, nodes up: A,B
        let rest = line.split(" at ").nth(1).unwrap();
        let (address, rest) = rest.split_once(", epoch ").unwrap();
        let (epoch, up) = rest.split_once(", nodes up: ").unwrap();
        (address.to_string(), epoch.parse().unwrap(), up.to_string())
    }

    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let rest: Vec<String> = self.lines.map(|line| line.unwrap()).collect();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "exit status {exit:?}");
        assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    }
}

#[test]
fn a_second_node_joins_and_a_restart_resumes_the_cluster() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let node1 = start(&dir.path().join("n1"), 1, "127.0.0.1:0", None);
    let (seed, epoch, up) = node1.cluster_line();
    assert_eq!((epoch, up.as_str()), (1, "1"));

    let node2 = start(&dir.path().join("n2"), 2, "127.0.0.1:0", Some(&seed));
    let (node2_address, epoch, up) = node2.cluster_line();
    assert_eq!((epoch, up.as_str()), (2, "1,2"));
    node2.stop();

    // Restarted without --join on the same address: it resumes the stored
    // cluster (it does not bootstrap a new one) and sees both nodes.
    let node2 = start(&dir.path().join("n2"), 2, &node2_address, None);
    let (_, epoch, up) = node2.cluster_line();
    assert_eq!((epoch, up.as_str()), (2, "1,2"));
    node2.stop();
    node1.stop();
}

/// Runs `concord start` for node `node_id` on `data_dir` joining through `seed`, for a join
/// that must fail: waits for the process to exit and returns its output (stderr captured).
pub(crate) fn failed_join(data_dir: &Path, node_id: u32, seed: &str) -> std::process::Output {
    Command::new(BINARY)
        .arg("start")
        .args(EPHEMERAL_ENDPOINTS)
        .args([
            "--node-id",
            &node_id.to_string(),
            "--cluster-listen-address",
            "127.0.0.1:0",
            "--join",
            seed,
            "--data-dir",
        ])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn joining_an_unreachable_seed_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback address.
    let output = failed_join(&dir.path().join("n2"), 2, "127.0.0.1:1");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("join the cluster through 127.0.0.1:1"),
        "{stderr}"
    );
}

/// Creates keyspace `ks` (RF 3) and table `ks.t (columns)` through `client`.
pub(crate) async fn create_rf3_table(
    client: &mut concord_server::cql::client::CqlClient,
    columns: &str,
) {
    client
        .query(
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
        )
        .await
        .unwrap();
    client
        .query(&format!("CREATE TABLE ks.t ({columns})"))
        .await
        .unwrap();
}
