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
//! Must never: leave a process behind — `Drop` resumes paused nodes and kills every child.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a node may take to print `ready`.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node may take to stop after SIGTERM before it is killed.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
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
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
    binary: PathBuf,
    staging: PathBuf,
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
            let dir = staging.join(format!("n{id}"));
            std::fs::create_dir_all(&dir)?;
            let uid = config.separate_uids.then_some(NODE_UID_BASE + id);
            let spec = NodeSpec {
                id,
                cql: free_port(&mut held)?,
                pg: free_port(&mut held)?,
                grpc: free_port(&mut held)?,
                cluster: if config.nodes > 1 {
                    Some(free_port(&mut held)?)
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
            nodes.push(Node {
                spec,
                child: None,
                paused: false,
            });
        }
        drop(held);
        let mut cluster = Cluster {
            config,
            nodes,
            binary,
            staging,
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

    fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let seed = self.nodes.first().and_then(|node| node.spec.cluster);
        let node = &mut self.nodes[index];
        if node.child.is_some() {
            return Ok(());
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
        // A thread copies stdout into the log and reports `ready` (or the end of output).
        let (ready_tx, ready_rx) = mpsc::channel::<bool>();
        let mut log_out = log;
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_out, "{line}");
                if line == "ready"
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(true);
                }
            }
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(false);
            }
        });
        let id = spec.id;
        let log_path = spec.log_file.clone();
        node.child = Some(child);
        node.paused = false;
        match ready_rx.recv_timeout(NODE_READY_TIMEOUT) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.kill(index);
                bail!(
                    "node {id} exited before it was ready; its log: {}",
                    log_path.display()
                )
            }
            Err(_) => {
                self.kill(index);
                bail!(
                    "node {id} was not ready within {NODE_READY_TIMEOUT:?}; its log: {}",
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
    /// stop within [`NODE_STOP_TIMEOUT`]. Returns the nodes that did not stop cleanly.
    pub fn stop(&mut self) -> Vec<u32> {
        let mut unclean = Vec::new();
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                let _ = self.resume(index);
            }
            let node = &mut self.nodes[index];
            let Some(mut child) = node.child.take() else {
                continue;
            };
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + NODE_STOP_TIMEOUT;
            let clean = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status.success(),
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break false;
                    }
                }
            };
            if !clean {
                unclean.push(node.spec.id);
            }
        }
        unclean
    }
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
