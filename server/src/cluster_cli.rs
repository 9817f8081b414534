//! `concord cluster up | status | down`: a local cluster on loopback for
//! development and tests (design/cluster.md, "Operator commands").
//!
//! ```text
//!  up --nodes N --base-port P --data-dir D
//!     D/cluster.json                 the nodes, their addresses, pid and log files
//!     D/node<i>/data                 node i's data directory
//!     D/node<i>/concord.log          its stdout and stderr
//!     D/node<i>/concord.pid          its process id
//!     node i listens on P+10(i-1) + {0: CQL, 1: Postgres, 2: gRPC, 3: cluster}
//!     node 1 bootstraps; nodes 2..N join it; each is a detached `concord start`
//!     (its own process group), started after the previous printed `ready`
//!  status   per node: up/down (CQL answers), primary token ranges (count, share
//!           of the ring), load (bytes of its data directory), columnar lag
//!           (from its system.concord_status)
//!  down     SIGTERM to every node, wait for each to exit (SIGKILL after
//!           DOWN_TIMEOUT), report
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_server::cql::client::{CqlClient, rows};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;
use serde::{Deserialize, Serialize};

/// The most nodes `cluster up` starts.
pub const NODES_MAX: u32 = 9;
/// Ports between one node's first port and the next node's.
pub const PORTS_PER_NODE: u16 = 10;
/// The default first port (node 1's CQL port).
pub const BASE_PORT_DEFAULT: u16 = 19_000;
/// How long `up` waits for one node's `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits for a node to exit after SIGTERM.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `status` waits for one node's CQL endpoint.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The file in the cluster directory that lists the nodes.
pub const CLUSTER_FILE: &str = "cluster.json";

/// One node of a local cluster, as `cluster.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    pub node: u32,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    pub cql: SocketAddr,
    pub pg: SocketAddr,
    pub grpc: SocketAddr,
    pub cluster: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClusterFile {
    nodes: Vec<LocalNode>,
}

fn cluster_file(dir: &Path) -> PathBuf {
    dir.join(CLUSTER_FILE)
}

fn read_cluster(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = cluster_file(dir);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "no local cluster in {} (read {}); start one with `concord cluster up`",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} does not parse", path.display()))
}

fn read_pid(node: &LocalNode) -> Option<i32> {
    std::fs::read_to_string(&node.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn signal(pid: i32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() && alive(pid) {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

fn loopback(port: u32) -> anyhow::Result<SocketAddr> {
    let port = u16::try_from(port).context("the ports run past 65535: lower --base-port")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The nodes `up` would start.
///
/// # Errors
/// A node count outside `1..=NODES_MAX`, or ports past 65535.
pub fn plan(nodes: u32, base_port: u16, dir: &Path) -> anyhow::Result<Vec<LocalNode>> {
    if nodes == 0 || nodes > NODES_MAX {
        bail!("--nodes must be 1..={NODES_MAX} (NODES_MAX), got {nodes}");
    }
    (1..=nodes)
        .map(|node| {
            let first = u32::from(base_port) + (node - 1) * u32::from(PORTS_PER_NODE);
            let node_dir = dir.join(format!("node{node}"));
            Ok(LocalNode {
                node,
                data_dir: node_dir.join("data"),
                log: node_dir.join("concord.log"),
                pid_file: node_dir.join("concord.pid"),
                cql: loopback(first)?,
                pg: loopback(first + 1)?,
                grpc: loopback(first + 2)?,
                cluster: loopback(first + 3)?,
            })
        })
        .collect()
}

/// `concord cluster up`: starts the nodes one after the other and prints
/// their addresses.
///
/// # Errors
/// A cluster already running in `dir`, a node that does not start.
pub fn up(nodes: u32, base_port: u16, dir: &Path) -> anyhow::Result<()> {
    if let Ok(existing) = read_cluster(dir) {
        let running: Vec<u32> = existing
            .nodes
            .iter()
            .filter(|node| read_pid(node).is_some_and(alive))
            .map(|node| node.node)
            .collect();
        if !running.is_empty() {
            bail!(
                "a cluster is already running in {} (nodes {running:?}); run `concord cluster \
                 down` first",
                dir.display()
            );
        }
    }
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let planned = plan(nodes, base_port, &dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let file = ClusterFile {
        nodes: planned.clone(),
    };
    std::fs::write(cluster_file(&dir), serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("write {}", cluster_file(&dir).display()))?;
    let binary = std::env::current_exe().context("find the concord binary")?;
    let seed = planned[0].cluster;
    for node in &planned {
        start_node(&binary, node, (node.node > 1).then_some(seed))?;
        println!(
            "node {}: cql {}  postgres {}  grpc {}  cluster {}  (pid {}, log {})",
            node.node,
            node.cql,
            node.pg,
            node.grpc,
            node.cluster,
            read_pid(node).unwrap_or_default(),
            node.log.display()
        );
    }
    println!(
        "cluster up: {} nodes in {}; `concord cluster status --data-dir {}` shows them, \
         `concord cluster down --data-dir {}` stops them",
        planned.len(),
        dir.display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn start_node(binary: &Path, node: &LocalNode, join: Option<SocketAddr>) -> anyhow::Result<()> {
    let node_dir = node
        .log
        .parent()
        .context("a node's log has a directory")?
        .to_path_buf();
    std::fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
    let log = std::fs::File::create(&node.log)
        .with_context(|| format!("create {}", node.log.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("start")
        .args(["--node-id", &node.node.to_string()])
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(["--cql-listen-address", &node.cql.to_string()])
        .args(["--pg-listen-address", &node.pg.to_string()])
        .args(["--grpc-listen-address", &node.grpc.to_string()])
        .args(["--cluster-listen-address", &node.cluster.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("clone the log file")?)
        .stderr(log);
    if let Some(seed) = join {
        command.args(["--join", &seed.to_string()]);
    }
    // Its own process group: a Ctrl-C at this terminal does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("start node {}", node.node))?;
    let pid = child.id();
    let mut pid_file = std::fs::File::create(&node.pid_file)
        .with_context(|| format!("write {}", node.pid_file.display()))?;
    writeln!(pid_file, "{pid}")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if log_has_line(&node.log, "ready") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "node {} exited ({status}) before it was ready; its log ({}):\n{}",
                node.node,
                node.log.display(),
                log_tail(&node.log)
            );
        }
        if Instant::now() > deadline {
            let _ = signal(i32::try_from(pid).unwrap_or(i32::MAX), "KILL");
            bail!(
                "node {} was not ready within {READY_TIMEOUT:?}; its log ({}):\n{}",
                node.node,
                node.log.display(),
                log_tail(&node.log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_has_line(path: &Path, wanted: &str) -> bool {
    std::fs::File::open(path).is_ok_and(|file| {
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == wanted)
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `concord cluster down`: SIGTERM to every running node, then waits.
///
/// # Errors
/// No cluster in `dir`; a node that does not exit even after SIGKILL.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let cluster = read_cluster(dir)?;
    let mut running = Vec::new();
    for node in &cluster.nodes {
        match read_pid(node).filter(|pid| alive(*pid)) {
            Some(pid) => {
                signal(pid, "TERM")?;
                running.push((node.node, pid, Instant::now()));
            }
            None => println!("node {}: not running", node.node),
        }
    }
    let mut failed = Vec::new();
    for (node, pid, since) in running {
        while alive(pid) && since.elapsed() < DOWN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            signal(pid, "KILL")?;
            std::thread::sleep(Duration::from_millis(200));
            if alive(pid) {
                failed.push(node);
            } else {
                println!(
                    "node {node}: killed (pid {pid}) after {DOWN_TIMEOUT:?} without exiting on SIGTERM"
                );
            }
        } else {
            println!(
                "node {node}: stopped (pid {pid}, {:.1} s)",
                since.elapsed().as_secs_f64()
            );
        }
    }
    for node in &cluster.nodes {
        if !failed.contains(&node.node) {
            let _ = std::fs::remove_file(&node.pid_file);
        }
    }
    if !failed.is_empty() {
        bail!("nodes {failed:?} did not stop");
    }
    println!("cluster down");
    Ok(())
}

/// What `status` learns from one node that answers.
#[derive(Debug, Default)]
struct NodeReport {
    tokens: Vec<i64>,
    lag: Option<(i64, i64)>,
}

async fn report(node: &LocalNode) -> anyhow::Result<NodeReport> {
    let mut client = tokio::time::timeout(STATUS_TIMEOUT, CqlClient::connect(node.cql))
        .await
        .context("timed out")??;
    let local = client.query("SELECT tokens FROM system.local").await?;
    let local = rows(&local, &[CqlType::Set(Box::new(CqlType::Text))])?;
    let mut tokens = Vec::new();
    if let Some(Some(CqlValue::Set(items))) = local.first().and_then(|row| row.first()) {
        for item in items {
            if let CqlValue::Text(text) = item {
                tokens.push(text.parse().context("a token is not a number")?);
            }
        }
    }
    let status = client
        .query("SELECT columnar_records_behind, columnar_lag_ms FROM system.concord_status")
        .await?;
    let status = rows(&status, &[CqlType::Bigint, CqlType::Bigint])?;
    let lag = match status.first().map(Vec::as_slice) {
        Some([Some(CqlValue::Bigint(records)), Some(CqlValue::Bigint(ms))]) => {
            Some((*records, *ms))
        }
        _ => None,
    };
    Ok(NodeReport { tokens, lag })
}

fn directory_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Each node's primary ranges: (count, share of the ring) from every
/// node's tokens (token `t` ends the range `(previous token, t]`).
pub fn ring_shares(tokens: &BTreeMap<u32, Vec<i64>>) -> BTreeMap<u32, (usize, f64)> {
    let mut ring: Vec<(i64, u32)> = tokens
        .iter()
        .flat_map(|(node, tokens)| tokens.iter().map(move |token| (*token, *node)))
        .collect();
    ring.sort_unstable();
    let mut shares: BTreeMap<u32, (usize, f64)> = BTreeMap::new();
    let ring_size = 2f64.powi(64);
    for (index, (token, node)) in ring.iter().enumerate() {
        let previous = if index == 0 {
            ring[ring.len() - 1].0
        } else {
            ring[index - 1].0
        };
        let width = if ring.len() == 1 {
            ring_size
        } else {
            (*token as i128 - previous as i128).rem_euclid(1i128 << 64) as f64
        };
        let entry = shares.entry(*node).or_default();
        entry.0 += 1;
        entry.1 += width / ring_size;
    }
    shares
}

/// `concord cluster status`: one line per node.
///
/// # Errors
/// No cluster in `dir`.
pub fn status(dir: &Path) -> anyhow::Result<()> {
    let cluster = read_cluster(dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let reports: Vec<(LocalNode, Result<NodeReport, String>)> = runtime.block_on(async {
        let mut reports = Vec::new();
        for node in &cluster.nodes {
            let answered = report(node).await.map_err(|error| format!("{error:#}"));
            reports.push((node.clone(), answered));
        }
        reports
    });
    let tokens: BTreeMap<u32, Vec<i64>> = reports
        .iter()
        .filter_map(|(node, report)| Some((node.node, report.as_ref().ok()?.tokens.clone())))
        .collect();
    let shares = ring_shares(&tokens);
    let up = reports.iter().filter(|(_, report)| report.is_ok()).count();
    println!(
        "{:<5} {:<5} {:<8} {:<22} {:>7} {:>8} {:>12} {:>24}",
        "node", "state", "pid", "cql", "ranges", "share", "load", "columnar lag"
    );
    for (node, report) in &reports {
        let pid = read_pid(node).filter(|pid| alive(*pid));
        let load = directory_bytes(&node.data_dir);
        let (state, ranges, share, lag) = match report {
            Ok(report) => {
                let (ranges, share) = shares.get(&node.node).copied().unwrap_or_default();
                let lag = match report.lag {
                    Some((records, ms)) => format!("{records} records, {ms} ms"),
                    None => "no replica".to_string(),
                };
                (
                    "up",
                    ranges.to_string(),
                    format!("{:.1}%", share * 100.0),
                    lag,
                )
            }
            Err(_) => ("down", "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<5} {:<5} {:<8} {:<22} {:>7} {:>8} {:>12} {:>24}",
            node.node,
            state,
            pid.map_or_else(|| "-".to_string(), |pid| pid.to_string()),
            node.cql.to_string(),
            ranges,
            share,
            format!("{load} B"),
            lag
        );
    }
    println!("{up} of {} nodes up", reports.len());
    for (node, report) in &reports {
        if let Err(error) = report {
            println!("node {}: {error}", node.node);
        }
    }
    Ok(())
}

/// How long `concord cluster remove-node` tries to reach the metadata leader.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// `concord cluster remove-node --node N --seed ADDR`: asks the metadata leader (through
/// `seed`, any member's cluster address) to remove node `node`, alive or dead. Once the
/// cluster holds rows this starts a sealed transition (design/cluster.md, "Epoch transitions
/// and bootstrap"): the remaining nodes fetch the ranges they gain, then the new epoch begins
/// without the node. Stop the removed node's process afterwards.
pub fn remove_node(node: u32, seed: &str) -> anyhow::Result<()> {
    use concord_cluster::meta::rpc::{AdminError, AdminRequest, MetaClient};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let reply = runtime.block_on(async {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            let attempt = async {
                let mut client = MetaClient::new(seed)
                    .map_err(|error| AdminError::Unreachable(error.to_string()))?;
                client.admin(&AdminRequest::RemoveNode { node }, true).await
            };
            match tokio::time::timeout(REMOVE_TIMEOUT, attempt).await {
                Ok(Err(AdminError::NotLeader { .. } | AdminError::Unreachable(_)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(result) => return result.map_err(anyhow::Error::from),
                Err(_) => bail!("no answer from {seed} within {REMOVE_TIMEOUT:?}"),
            }
        }
    })?;
    println!(
        "node {node}: removal accepted at log index {} (epoch {}); once the cluster holds rows \
         the others fetch its ranges first",
        reply.log_index, reply.epoch
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spaces_ports_and_refuses_bad_counts() {
        let nodes = plan(3, 20_000, Path::new("/tmp/c")).unwrap();
        assert_eq!(nodes[2].cql.port(), 20_020);
        assert_eq!(nodes[2].cluster.port(), 20_023);
        assert_eq!(nodes[1].data_dir, Path::new("/tmp/c/node2/data"));
        assert!(plan(0, 20_000, Path::new("/tmp/c")).is_err());
        assert!(plan(NODES_MAX + 1, 20_000, Path::new("/tmp/c")).is_err());
        assert!(plan(9, 65_500, Path::new("/tmp/c")).is_err());
    }

    #[test]
    fn ring_shares_sum_to_the_whole_ring() {
        let tokens = BTreeMap::from([
            (1, vec![-100, 5_000]),
            (2, vec![i64::MAX / 2]),
            (3, vec![0]),
        ]);
        let shares = ring_shares(&tokens);
        assert_eq!(shares[&1].0, 2);
        let total: f64 = shares.values().map(|(_, share)| share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // Node 3's range is (-100, 0]: 100 tokens.
        assert!((shares[&3].1 - 100.0 / 2f64.powi(64)).abs() < 1e-18);
    }
}
