//! The cluster under test: `concord start` processes on loopback, one per node, each with its
//! own ports, data directory and log file; started, killed (-9), restarted, paused (SIGSTOP)
//! and resumed (SIGCONT) by the nemesis.
//!
//! Nodes keep their ports across restarts (clients reconnect to the same address and the
//! cluster metadata stores it). With more than one node, node 1 bootstraps a cluster and the
//! others join it through node 1's cluster address. When the partition nemesis runs, each node
//! runs under its own user id (`setpriv`), so nftables can tell the nodes' traffic apart on
//! loopback (`net.rs`); the binary and data directories then live in a staging directory under
//! `/tmp` that those uids can reach.
//!
//! With the skew nemesis every node runs with libfaketime preloaded
//! (`FAKETIME_TIMESTAMP_FILE` = its `clock` file, re-read every second; the monotonic clock is
//! left alone), so its wall clock can be stepped while it runs.
//!
//! Membership (the `membership` nemesis): [`Cluster::add_node`] starts a node with a fresh id
//! above every id used so far (its own ports, data directory and log), joining through a live
//! member, and waits for its `ready` (printed once its join transition completed);
//! [`Cluster::remove_node`] takes a node out of the clients' list ([`LiveNodes`]), runs
//! `concord cluster remove-node` through a live member, waits until no remaining member lists
//! it in `system.peers_v2` (the transition completed), then stops its process. A removed node
//! is never restarted or chosen again.
//!
//! Must never: leave a process behind — `Drop` resumes paused nodes and kills every child.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a node may take to print `ready`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node may take to stop after SIGTERM before it is killed.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a membership change may take, from the request to the node being listed (a join)
/// or no longer listed (a removal) by every remaining member. Above the metadata leader's
/// transition timeout (120 s), so an aborted transition is reported as such, not as slow.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(150);
/// How often a removal's completion is polled.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(250);
/// The first user id nodes run under when they need their own (node `i` runs as `BASE + i`).
pub const NODE_UID_BASE: u32 = 61_000;

/// How to start the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `concord` binary.
    pub binary: PathBuf,
    pub nodes: usize,
    /// Where node logs go (`n<i>.log`).
    pub log_dir: PathBuf,
    /// Run each node under its own uid (needed by nftables partitions; requires root).
    pub separate_uids: bool,
    /// Extra TOML for every node's configuration file (e.g. `txn_mode = "accord"`).
    pub extra_config: String,
    /// libfaketime, preloaded into every node for live clock steps (the skew nemesis).
    pub faketime: Option<PathBuf>,
}

/// Where Debian's `libfaketime` puts its thread-safe library.
pub const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// One node's fixed identity.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u32,
    pub cql: SocketAddr,
    pub pg: SocketAddr,
    pub grpc: SocketAddr,
    /// The cluster (metadata and transaction transport) address; `None` for a single node.
    pub cluster: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    /// libfaketime's offset file for this node (`+0` = the true clock).
    pub clock_file: PathBuf,
    /// The uid the process runs as, when nodes are separated.
    pub uid: Option<u32>,
}

impl NodeSpec {
    /// Every port the node listens on (what a partition cuts).
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.cql.port(), self.pg.port(), self.grpc.port()];
        if let Some(cluster) = self.cluster {
            ports.push(cluster.port());
        }
        ports
    }
}

#[derive(Debug)]
struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    paused: bool,
    /// Removed from the cluster (`concord cluster remove-node`): stopped, never restarted.
    removed: bool,
}

/// The CQL addresses of the current members, shared with the clients: a node leaves the list
/// before its removal starts and joins it once it is ready. Clients pick their node from it
/// before every operation.
#[derive(Clone, Debug, Default)]
pub struct LiveNodes(Arc<Mutex<Vec<SocketAddr>>>);

impl LiveNodes {
    pub fn new(nodes: Vec<SocketAddr>) -> LiveNodes {
        LiveNodes(Arc::new(Mutex::new(nodes)))
    }

    /// The current list.
    pub fn get(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, nodes: Vec<SocketAddr>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
    }
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
    binary: PathBuf,
    staging: PathBuf,
    /// What the clients may use: the members' CQL addresses.
    live: LiveNodes,
    /// Removed nodes that did not stop cleanly on SIGTERM (reported by [`Cluster::stop`]).
    unclean_removed: Vec<u32>,
}

/// Free loopback ports, distinct: each stays bound until the caller drops `held` (after every
/// node's ports are chosen), so the kernel cannot hand the same port out twice. Another
/// process could still take one before the node binds it; `concord start` then fails clearly.
fn free_port(held: &mut Vec<TcpListener>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    let address = listener.local_addr()?;
    held.push(listener);
    Ok(address)
}

/// What a node's output said about its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// It printed `ready` after saying its join transition was aborted.
    Aborted,
    /// Its output ended first.
    Exited,
}

/// Node `id`'s identity and files (ports from `held`, which the caller drops once every port
/// of the batch is chosen).
fn new_node(
    config: &ClusterConfig,
    staging: &Path,
    id: u32,
    held: &mut Vec<TcpListener>,
) -> anyhow::Result<Node> {
    let dir = staging.join(format!("n{id}"));
    std::fs::create_dir_all(&dir)?;
    let uid = config.separate_uids.then_some(NODE_UID_BASE + id);
    let spec = NodeSpec {
        id,
        cql: free_port(held)?,
        pg: free_port(held)?,
        grpc: free_port(held)?,
        cluster: if config.nodes > 1 {
            Some(free_port(held)?)
        } else {
            None
        },
        data_dir: dir.join("data"),
        config_file: dir.join("concord.toml"),
        log_file: config.log_dir.join(format!("n{id}.log")),
        clock_file: dir.join("clock"),
        uid,
    };
    std::fs::write(&spec.config_file, &config.extra_config)?;
    write_clock_offset(&spec.clock_file, 0)?;
    if let Some(uid) = uid {
        chown(&dir, uid)?;
        chown(&spec.config_file, uid)?;
    }
    Ok(Node {
        spec,
        child: None,
        paused: false,
        removed: false,
    })
}

impl Cluster {
    /// Starts every node and waits until each printed `ready` (node 1 first: it bootstraps).
    ///
    /// # Errors
    /// When a node does not start; the ones already started are stopped (`Drop`).
    pub fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        if config.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let staging = std::env::temp_dir().join(format!("concord-jepsen-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).context("clear the staging directory")?;
        }
        std::fs::create_dir_all(&staging).context("create the staging directory")?;
        std::fs::create_dir_all(&config.log_dir).context("create the log directory")?;
        let binary = staging.join("concord");
        std::fs::copy(&config.binary, &binary)
            .with_context(|| format!("copy {}", config.binary.display()))?;
        set_mode(&staging, 0o755)?;
        set_mode(&binary, 0o755)?;
        let mut nodes = Vec::with_capacity(config.nodes);
        let mut held = Vec::new();
        for index in 0..config.nodes {
            let id = u32::try_from(index + 1).context("node id")?;
            nodes.push(new_node(&config, &staging, id, &mut held)?);
        }
        drop(held);
        let live = LiveNodes::new(nodes.iter().map(|node| node.spec.cql).collect());
        let mut cluster = Cluster {
            config,
            nodes,
            binary,
            staging,
            live,
            unclean_removed: Vec::new(),
        };
        for index in 0..cluster.nodes.len() {
            cluster.start_node(index)?;
        }
        Ok(cluster)
    }

    pub fn specs(&self) -> Vec<NodeSpec> {
        self.nodes.iter().map(|node| node.spec.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The id [`Cluster::add_node`] gives the next node.
    pub fn next_id(&self) -> u32 {
        u32::try_from(self.nodes.len() + 1).unwrap_or(u32::MAX)
    }

    /// How many nodes the cluster started with (node indices below this are the originals).
    pub fn original_nodes(&self) -> usize {
        self.config.nodes
    }

    /// The indices of the current members (every node not removed), in id order.
    pub fn members(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| !self.nodes[*index].removed)
            .collect()
    }

    /// The node ids of node indices (`n<id>` in reports).
    pub fn id(&self, index: usize) -> u32 {
        self.nodes.get(index).map_or(0, |node| node.spec.id)
    }

    /// The clients' view of the members (see [`LiveNodes`]).
    pub fn live_nodes(&self) -> LiveNodes {
        self.live.clone()
    }

    /// A running member's cluster address other than `index`'s, to join through.
    fn seed_for(&self, index: usize) -> Option<SocketAddr> {
        let candidates = || {
            self.nodes
                .iter()
                .enumerate()
                .filter(move |(other, node)| *other != index && !node.removed)
        };
        candidates()
            .find(|(_, node)| node.child.is_some() && !node.paused)
            .or_else(|| candidates().next())
            .and_then(|(_, node)| node.spec.cluster)
    }

    fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let seed = self.seed_for(index);
        let node = &mut self.nodes[index];
        if node.child.is_some() {
            return Ok(());
        }
        if node.removed {
            bail!("node {} was removed from the cluster", node.spec.id);
        }
        let spec = &node.spec;
        // libfaketime goes into the node only (through `env` after `setpriv`): preloaded into
        // setpriv too, it would create its shared-memory semaphore as root, which the node's
        // uid then cannot open.
        let faketime: Vec<std::ffi::OsString> = match &self.config.faketime {
            Some(library) => {
                let mut preload = std::ffi::OsString::from("LD_PRELOAD=");
                preload.push(library);
                let mut file = std::ffi::OsString::from("FAKETIME_TIMESTAMP_FILE=");
                file.push(&spec.clock_file);
                vec![
                    preload,
                    file,
                    "FAKETIME_CACHE_DURATION=1".into(),
                    "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
                ]
            }
            None => Vec::new(),
        };
        let mut command = match spec.uid {
            Some(uid) => {
                let mut command = Command::new("setpriv");
                command.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    "--".to_owned(),
                ]);
                if !faketime.is_empty() {
                    command.arg("env").args(&faketime);
                }
                command.arg(&self.binary);
                command
            }
            None if !faketime.is_empty() => {
                let mut command = Command::new("env");
                command.args(&faketime).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("start")
            .arg("--config")
            .arg(&spec.config_file)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--commit-sync", "batch"])
            .arg("--cql-listen-address")
            .arg(spec.cql.to_string())
            .arg("--pg-listen-address")
            .arg(spec.pg.to_string())
            .arg("--grpc-listen-address")
            .arg(spec.grpc.to_string());
        if let Some(cluster) = spec.cluster {
            command
                .arg("--node-id")
                .arg(spec.id.to_string())
                .arg("--cluster-listen-address")
                .arg(cluster.to_string());
            if index > 0
                && let Some(seed) = seed
            {
                command.arg("--join").arg(seed.to_string());
            }
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .with_context(|| format!("open {}", spec.log_file.display()))?;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start node {}", spec.id))?;
        let stdout = child.stdout.take().context("node stdout")?;
        // A thread copies stdout into the log and reports `ready` (or the end of output, or a
        // join whose transition was aborted: `cluster: node N not up ...`).
        let (ready_tx, ready_rx) = mpsc::channel::<Readiness>();
        let mut log_out = log;
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            let mut aborted = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_out, "{line}");
                if line.starts_with("cluster: node ") && line.contains(" not up ") {
                    aborted = true;
                }
                if line == "ready"
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(if aborted {
                        Readiness::Aborted
                    } else {
                        Readiness::Ready
                    });
                }
            }
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(Readiness::Exited);
            }
        });
        let id = spec.id;
        let log_path = spec.log_file.clone();
        // A join once tables exist waits for its transition (at most 120 s before an abort).
        let ready_timeout = if index >= self.config.nodes {
            MEMBERSHIP_TIMEOUT
        } else {
            NODE_READY_TIMEOUT
        };
        node.child = Some(child);
        node.paused = false;
        match ready_rx.recv_timeout(ready_timeout) {
            Ok(Readiness::Ready) => Ok(()),
            Ok(Readiness::Aborted) => {
                self.kill(index);
                bail!(
                    "node {id} joined but its transition was aborted; its log: {}",
                    log_path.display()
                )
            }
            Ok(Readiness::Exited) => {
                self.kill(index);
                bail!(
                    "node {id} exited before it was ready; its log: {}",
                    log_path.display()
                )
            }
            Err(_) => {
                self.kill(index);
                bail!(
                    "node {id} was not ready within {ready_timeout:?}; its log: {}",
                    log_path.display()
                )
            }
        }
    }

    /// SIGKILLs node `index` (no-op if it is not running).
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
            node.paused = false;
        }
    }

    /// Restarts node `index` after a kill and waits until it is ready.
    ///
    /// # Errors
    /// When it does not come back.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.start_node(index)
    }

    /// Rewrites node `index`'s configuration with its wall clock shifted by `offset_ms`
    /// (`test_clock_offset_ms`); it takes effect at the node's next start.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_clock_offset(&mut self, index: usize, offset_ms: i64) -> anyhow::Result<()> {
        let node = self.nodes.get(index).context("no such node")?;
        let mut text = self.config.extra_config.clone();
        if offset_ms != 0 {
            text.push_str(&format!("\ntest_clock_offset_ms = {offset_ms}\n"));
        }
        std::fs::write(&node.spec.config_file, text)
            .with_context(|| format!("write {}", node.spec.config_file.display()))
    }

    /// Steps node `index`'s wall clock to `offset_seconds` from the true clock while it runs
    /// (libfaketime reads it within a second). Only with `ClusterConfig::faketime`.
    ///
    /// # Errors
    /// Without libfaketime, or when the file cannot be written.
    pub fn set_live_clock_offset(
        &mut self,
        index: usize,
        offset_seconds: i64,
    ) -> anyhow::Result<()> {
        if self.config.faketime.is_none() {
            bail!("live clock steps need libfaketime (the skew nemesis)");
        }
        let node = self.nodes.get(index).context("no such node")?;
        write_clock_offset(&node.spec.clock_file, offset_seconds)
    }

    /// SIGSTOPs node `index`.
    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, "STOP")?;
        self.nodes[index].paused = true;
        Ok(())
    }

    /// SIGCONTs node `index`.
    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, "CONT")?;
        self.nodes[index].paused = false;
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> anyhow::Result<()> {
        let node = self.nodes.get(index).context("no such node")?;
        let Some(child) = &node.child else {
            bail!("node {} is not running", node.spec.id);
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -{signal} node {} failed: {status}", node.spec.id);
        }
        Ok(())
    }

    /// Stops every node with SIGTERM (resuming paused ones first), killing any that does not
    /// stop within [`NODE_STOP_TIMEOUT`]. Returns the nodes that did not stop cleanly (removed
    /// nodes that did not stop cleanly included).
    pub fn stop(&mut self) -> Vec<u32> {
        let mut unclean = std::mem::take(&mut self.unclean_removed);
        for index in 0..self.nodes.len() {
            if !self.stop_one(index) {
                unclean.push(self.nodes[index].spec.id);
            }
        }
        unclean
    }

    /// Stops node `index` with SIGTERM (see [`Cluster::stop`]); whether it stopped cleanly (a
    /// node not running did).
    fn stop_one(&mut self, index: usize) -> bool {
        if self.nodes[index].paused {
            let _ = self.resume(index);
        }
        let node = &mut self.nodes[index];
        let Some(mut child) = node.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
            }
        }
    }

    /// Adds a node: a fresh id above every id used so far, its own ports, data directory and
    /// log; it joins through a running member and this returns once it printed `ready` (its
    /// join transition completed), at most [`MEMBERSHIP_TIMEOUT`]. Clients may then use it.
    /// Returns its index.
    ///
    /// # Errors
    /// When it does not come up (its process is then killed; it stays in the cluster's
    /// metadata as a joining node, which the report shows through the error).
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        if self.config.nodes < 2 {
            bail!("membership changes need a cluster (at least two nodes)");
        }
        let id = self.next_id();
        let mut held = Vec::new();
        let node = new_node(&self.config, &self.staging, id, &mut held)?;
        drop(held);
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        if let Err(error) = self.start_node(index) {
            // Never reused: its id may be in the metadata as joining.
            self.nodes[index].removed = true;
            return Err(error.context(format!("join node {id}")));
        }
        self.publish_members();
        Ok(index)
    }

    /// Removes node `index` from the cluster: out of the clients' list first, then `concord
    /// cluster remove-node` through another member, then waits until every remaining running
    /// member stopped listing it in `system.peers_v2` (its removal transition completed), at
    /// most [`MEMBERSHIP_TIMEOUT`], then stops its process (SIGTERM; a node that does not stop
    /// cleanly is reported by [`Cluster::stop`]).
    ///
    /// # Errors
    /// When the command fails or the removal does not complete in time.
    pub fn remove_node(&mut self, index: usize) -> anyhow::Result<()> {
        let id = self.id(index);
        if self.nodes.get(index).is_none_or(|node| node.removed) {
            bail!("node {id} is not a member");
        }
        if self.members().len() < 2 {
            bail!("node {id} is the last member");
        }
        let removed_cql = self.nodes[index].spec.cql;
        self.live.set(
            self.members()
                .into_iter()
                .filter(|other| *other != index)
                .map(|other| self.nodes[other].spec.cql)
                .collect(),
        );
        let seed = self
            .seed_for(index)
            .context("no other member to send the removal through")?;
        let output = Command::new(&self.binary)
            .args(["cluster", "remove-node", "--node"])
            .arg(id.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .output()
            .context("run concord cluster remove-node")?;
        if !output.status.success() {
            self.publish_members();
            bail!(
                "concord cluster remove-node --node {id} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let remaining: Vec<SocketAddr> = self
            .members()
            .into_iter()
            .filter(|other| *other != index && self.nodes[*other].child.is_some())
            .map(|other| self.nodes[other].spec.cql)
            .collect();
        wait_until_unlisted(&remaining, removed_cql, MEMBERSHIP_TIMEOUT)
            .with_context(|| format!("removal of node {id}"))?;
        self.nodes[index].removed = true;
        if !self.stop_one(index) {
            self.unclean_removed.push(id);
        }
        self.publish_members();
        Ok(())
    }

    /// Puts every member's CQL address in the clients' list.
    fn publish_members(&self) {
        self.live.set(
            self.members()
                .into_iter()
                .map(|index| self.nodes[index].spec.cql)
                .collect(),
        );
    }
}

/// Polls each of `members` (CQL addresses) until none lists a peer whose CQL port is
/// `removed`'s in `system.peers_v2`, at most `timeout`.
fn wait_until_unlisted(
    members: &[SocketAddr],
    removed: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime to poll system.peers_v2")?;
    runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        for member in members {
            loop {
                let last = match listed_ports(*member).await {
                    Ok(ports) if !ports.contains(&removed.port()) => break,
                    Ok(ports) => format!("{member} still lists it (ports {ports:?})"),
                    Err(error) => format!("{member}: {error:#}"),
                };
                if Instant::now() > deadline {
                    bail!("not complete after {timeout:?}: {last}");
                }
                tokio::time::sleep(MEMBERSHIP_POLL).await;
            }
        }
        Ok(())
    })
}

/// The CQL ports of the peers `member` lists in `system.peers_v2`.
async fn listed_ports(member: SocketAddr) -> anyhow::Result<Vec<u16>> {
    let session = crate::workload::connect(member, Duration::from_secs(5)).await?;
    let result = session
        .query_unpaged("SELECT native_port FROM system.peers_v2", ())
        .await
        .context("read system.peers_v2")?;
    let rows = crate::workload::rows(result).map_err(|error| anyhow::anyhow!("{error:?}"))?;
    let mut ports = Vec::new();
    for row in rows {
        let port = row
            .columns
            .first()
            .and_then(Option::as_ref)
            .and_then(crate::workload::integer)
            .context("system.peers_v2 without a native_port")?;
        ports.push(u16::try_from(port).context("native_port out of range")?);
    }
    Ok(ports)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                let _ = self.resume(index);
            }
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn chown(path: &Path, uid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .with_context(|| format!("chown {} to uid {uid}", path.display()))
}

/// Writes libfaketime's relative offset (`+12`, `-7`: seconds) to `path`, atomically (a reader
/// sees the old offset or the new one).
fn write_clock_offset(path: &Path, offset_seconds: i64) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{offset_seconds:+}\n"))
        .with_context(|| format!("write {}", temporary.display()))?;
    set_mode(&temporary, 0o644)?;
    std::fs::rename(&temporary, path).with_context(|| format!("replace {}", path.display()))
}
