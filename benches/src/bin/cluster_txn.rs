//! Transactions on a local 3-node cluster (issue 6, "Measure"): latency p50/p99, throughput,
//! the share of fast-path commits and the protocol messages per transaction, uncontended,
//! contended and multi-shard, then with one node stopped; beside it, the same client load on
//! one `concord start` node alone in accord mode (no network round trip: the reference row).
//!
//! One run: three `concord start` processes on loopback (node 1 bootstraps, 2 and 3 join;
//! own ports and data directories under a temporary directory), a keyspace of RF 3 and a table
//! `bench.t (k bigint PRIMARY KEY, v bigint)`; `--clients-per-node` concurrent clients per
//! node, each its own gRPC connection (the Rust SDK, `concord-client`), each waiting for its
//! transaction before the next (closed loop), for `--seconds` per scenario:
//!
//! - `single`: one-row upserts (`write_rows`, one partition: one shard), every key distinct;
//! - `hot`: the same on `--hot-keys` keys shared by every client (write-write conflicts);
//! - `multi`: transactions (`transact`) reading and upserting `--keys-per-txn` random
//!   partitions (random tokens: with 48 ranges two keys share a shard 1 time in 48);
//! - `single @25%`, `@50%`, `@75%`: `single` as an open loop at that share of the closed
//!   loop's `single` throughput, the transactions spread over the same connections and sent
//!   on a fixed schedule from a timer thread, latency measured from each one's *intended*
//!   send time (no coordinated omission);
//! - then node 3 is stopped (`--stop kill`: SIGKILL, or `term`) and `single` and `multi` run
//!   again with the clients of nodes 1 and 2, and `single @50%` (of the 3-node peak).
//!
//! A closed loop runs the nodes at saturation, where latency is queueing (clients /
//! throughput) on whatever the machine has left; the p99 target is judged at 50 % of the
//! peak, the way latency targets are stated (the CQL bench does the same), and the
//! saturated p99 is printed beside it. "cpu us/txn" is the CPU time (user + system, from
//! `/proc`) the live nodes' processes spent per answered transaction: the steadier measure
//! of cost on a shared machine.
//!
//! Latencies are measured by the clients (submit to answer). The fast-path share and the
//! message counts are the nodes' own counters (`system.concord_status`: `txn_fast_path`,
//! `txn_slow_path`, `txn_messages_sent`), read before and after each scenario from every live
//! node and summed; "msgs/txn" is messages sent between nodes (durability rounds included) per
//! answered transaction; "syncs/txn" is journal syncs (`txn_journal_syncs`, one per group of
//! runtime steps) summed over the live nodes per answered transaction. "delays" is the message delays before the reply implied by the path
//! mix: 2 on the fast path (PreAccept out, replies back), 4 on the slow path (an Accept round
//! more); with RF 3 on 3 nodes every coordinator is a replica of every shard, so the read is
//! local and adds none.
//!
//! The reference: one node (`txn_mode = "accord"`, no cluster), the same clients, `single` and
//! `multi`. `--runs N` repeats everything on fresh processes and prints the medians.
//!
//! Run: `cargo run --profile bench -p concord-benches --bin cluster_txn -- [--seconds 3]
//! [--runs 1] [--clients-per-node 2] [--hot-keys 4] [--keys-per-txn 2] [--journal engine|log]
//! [--stop kill|term] [--join-rows N] [--concord PATH]`. Without `--concord` the bench builds
//! the `concord` binary with the same profile (`cargo build`) and runs it from its own
//! directory.
//!
//! `--join-rows N` (N > 0) adds the join scenario, once, after the runs: a fresh 3-node
//! cluster, N rows written, then an open-loop writer at 25 % of the `single` peak through
//! nodes 1–3 while a fourth node joins; it prints the join's duration and the writer's p50,
//! p99 and worst latency (a sealed transition holds transactions while the new node fetches
//! the ranges it gains, so the worst latency is the pause clients see).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_benches::{CpuOf, clock_ticks_per_second, median, open_loop, quantile};
use concord_client::{Client, Row, Transaction};

/// How long a node may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node joining a cluster that holds rows may take to print `ready` (it waits for
/// the transition: the server gives one up after 120 s).
const JOIN_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Rows per `write_rows` call of the join scenario's preload: distinct partitions, so at most
/// `TXN_KEYS_MAX` (64) per transaction.
const PRELOAD_ROWS_PER_CALL: usize = 64;
/// How long a node may take to know the table after the DDL went through node 1.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped node may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A client's pause after a failed transaction (a refused connection fails at once).
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// The most keys a `multi` transaction may touch (the SDK's rows per call are bounded too).
const KEYS_PER_TXN_MAX: usize = 16;
/// The offered loads of the open-loop rows, in percent of the closed loop's throughput.
const LOAD_PERCENTS: [u32; 3] = [25, 50, 75];
/// The offered load (percent of peak) the p99 target is judged at.
const TARGET_LOAD_PERCENT: u32 = 50;
/// Transactions an open loop may have in flight before it stops and reports the load as not
/// sustained.
const OUTSTANDING_MAX: usize = 10_000;
/// The counters of `system.concord_status` the bench reads.
const COUNTERS: [&str; 5] = [
    "txn_committed",
    "txn_fast_path",
    "txn_slow_path",
    "txn_messages_sent",
    "txn_journal_syncs",
];
const KEYSPACE: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

struct Args {
    seconds: f64,
    runs: usize,
    clients_per_node: usize,
    hot_keys: i64,
    keys_per_txn: usize,
    journal: String,
    stop: Stop,
    concord: Option<PathBuf>,
    /// Rows written before a fourth node joins (`--join-rows`; 0: no join scenario).
    join_rows: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        seconds: 3.0,
        runs: 1,
        clients_per_node: 2,
        hot_keys: 4,
        keys_per_txn: 2,
        journal: "engine".to_owned(),
        stop: Stop::Kill,
        concord: None,
        join_rows: 0,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next();
        match (flag.as_str(), value) {
            ("--seconds", Some(value)) => args.seconds = value.parse()?,
            ("--runs", Some(value)) => args.runs = value.parse()?,
            ("--clients-per-node", Some(value)) => args.clients_per_node = value.parse()?,
            ("--hot-keys", Some(value)) => args.hot_keys = value.parse()?,
            ("--keys-per-txn", Some(value)) => args.keys_per_txn = value.parse()?,
            ("--journal", Some(value)) if value == "engine" || value == "log" => {
                args.journal = value;
            }
            ("--stop", Some(value)) => {
                args.stop = match value.as_str() {
                    "kill" => Stop::Kill,
                    "term" => Stop::Term,
                    other => bail!("--stop {other}: kill or term"),
                }
            }
            ("--concord", Some(value)) => args.concord = Some(PathBuf::from(value)),
            ("--join-rows", Some(value)) => args.join_rows = value.parse()?,
            (other, _) => bail!("unknown or incomplete flag {other} (see the file's header)"),
        }
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 || args.runs == 0 || args.clients_per_node == 0
    {
        bail!("--seconds, --runs and --clients-per-node must be positive");
    }
    if args.hot_keys < 1 || !(2..=KEYS_PER_TXN_MAX).contains(&args.keys_per_txn) {
        bail!("--hot-keys must be at least 1, --keys-per-txn within 2..={KEYS_PER_TXN_MAX}");
    }
    Ok(args)
}

/// The `concord` binary: `--concord`, else built by cargo (same profile) next to this one.
fn concord_binary(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.concord {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        // Under `cargo run`: make sure the node binary is current (a no-op when it is).
        let profile = if dir.ends_with("release") {
            "bench"
        } else {
            "dev"
        };
        let status = Command::new(cargo)
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "concord-server",
                "--bin",
                "concord",
            ])
            .status()?;
        if !status.success() {
            bail!("cargo build of the concord binary failed");
        }
    }
    let path = dir.join("concord");
    if !path.exists() {
        bail!(
            "no concord binary at {}: build it (cargo build --profile bench -p concord-server \
             --bin concord) or pass --concord PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A started `concord start` process.
struct Node {
    id: u32,
    child: Child,
    grpc: String,
    cluster: Option<String>,
}

impl Node {
    /// Starts node `id` on `dir` (data, config, logs) and waits for `ready`. `cluster`:
    /// `None` for a node alone in accord mode, `Some(None)` to bootstrap, `Some(Some(seed))`
    /// to join.
    fn start(
        binary: &Path,
        dir: &Path,
        id: u32,
        journal: &str,
        cluster: Option<Option<&str>>,
    ) -> Result<Node> {
        Node::start_within(binary, dir, id, journal, cluster, READY_TIMEOUT)
    }

    /// [`Node::start`], waiting `ready_timeout` for `ready`.
    fn start_within(
        binary: &Path,
        dir: &Path,
        id: u32,
        journal: &str,
        cluster: Option<Option<&str>>,
        ready_timeout: Duration,
    ) -> Result<Node> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("concord.toml");
        let mut text = format!("txn_journal = \"{journal}\"\n");
        if cluster.is_none() {
            text.push_str("txn_mode = \"accord\"\n");
        }
        std::fs::write(&config, text)?;
        let mut command = Command::new(binary);
        command
            .arg("start")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--cql-listen-address",
                "127.0.0.1:0",
                "--pg-listen-address",
                "127.0.0.1:0",
                "--grpc-listen-address",
                "127.0.0.1:0",
                "--log-filter",
                "warn",
                "--node-id",
                &id.to_string(),
            ]);
        if let Some(seed) = cluster {
            command.args(["--cluster-listen-address", "127.0.0.1:0"]);
            if let Some(seed) = seed {
                command.args(["--join", seed]);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(dir.join("stderr.log"))?))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // One thread per node drains stdout into its log (a full pipe would stall the node)
        // and passes the lines up to `ready` to this one.
        let (sender, lines) = mpsc::channel();
        let mut log = File::create(dir.join("stdout.log"))?;
        std::thread::spawn(move || {
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if !ready {
                    ready = line == "ready";
                    let _ = sender.send(line);
                }
            }
        });
        let deadline = Instant::now() + ready_timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == "ready" => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    bail!(
                        "node {id} did not print ready within {ready_timeout:?}: {seen:?} \
                         (see {})",
                        dir.join("stderr.log").display()
                    );
                }
            }
        }
        let value = |prefix: &str| -> Result<String> {
            seen.iter()
                .find_map(|line| line.strip_prefix(prefix))
                .map(str::to_owned)
                .with_context(|| format!("node {id}: no {prefix:?} line in {seen:?}"))
        };
        let grpc = format!("http://{}", value("grpc: listening on ")?);
        // cluster: node N at ADDR, epoch E, nodes up: ...
        let cluster = match cluster {
            None => None,
            Some(_) => {
                let line = value("cluster: node ")?;
                let address = line
                    .split(" at ")
                    .nth(1)
                    .and_then(|rest| rest.split(", epoch ").next())
                    .with_context(|| format!("node {id}: cluster line {line:?}"))?;
                Some(address.to_owned())
            }
        };
        Ok(Node {
            id,
            child,
            grpc,
            cluster,
        })
    }

    /// Stops the process (SIGKILL or SIGTERM) and waits for it.
    fn stop(mut self, how: Stop) -> Result<()> {
        let signal = match how {
            Stop::Kill => "-KILL",
            Stop::Term => "-TERM",
        };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} node {} failed", self.id);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("node {} did not stop within {STOP_TIMEOUT:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node's `system.concord_status` counters ([`COUNTERS`], in order), through its gRPC
/// endpoint (the same CQL executor).
async fn counters(node: &Node) -> Result<[i64; COUNTERS.len()]> {
    let client = Client::connect(&node.grpc).await?;
    let result = client
        .execute(
            "",
            &format!("SELECT {} FROM system.concord_status", COUNTERS.join(", ")),
            vec![],
        )
        .await?;
    let row = result.rows.first().context("concord_status has no row")?;
    let mut values = [0; COUNTERS.len()];
    for (value, name) in values.iter_mut().zip(COUNTERS) {
        *value = row
            .get(name)
            .and_then(|cell| cell.as_i64())
            .with_context(|| {
                format!("node {}: no counter {name} (not in accord mode?)", node.id)
            })?;
    }
    Ok(values)
}

/// The sum of the live nodes' counters.
async fn total_counters(nodes: &[&Node]) -> Result<[i64; COUNTERS.len()]> {
    let mut total = [0; COUNTERS.len()];
    for node in nodes {
        for (sum, value) in total.iter_mut().zip(counters(node).await?) {
            *sum += value;
        }
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// One-row upserts, every key distinct.
    Single,
    /// One-row upserts on a few shared keys.
    Hot,
    /// Reads and upserts of several random partitions in one transaction.
    Multi,
}

/// A small deterministic generator (splitmix64): random partitions without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
struct Measured {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Counter deltas over the live nodes ([`COUNTERS`]).
    deltas: [i64; COUNTERS.len()],
    /// CPU time (user + system clock ticks) the live nodes' processes spent.
    node_cpu_ticks: u64,
    /// Open loop: the offered rate and whether it was sustained (`None`: closed loop).
    offered: Option<(f64, bool)>,
}

impl Measured {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    fn p(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
    fn fast_share(&self) -> Option<f64> {
        let (fast, slow) = (self.deltas[1], self.deltas[2]);
        (fast + slow > 0).then(|| fast as f64 / (fast + slow) as f64)
    }
    fn messages_per_txn(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.deltas[3] as f64 / self.ok as f64)
    }
    /// Journal syncs summed over the live nodes per answered transaction.
    fn syncs_per_txn(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.deltas[4] as f64 / self.ok as f64)
    }
    /// Message delays before the reply implied by the path mix (none on a node alone).
    /// The nodes' CPU time per answered transaction, in microseconds: unlike latency it
    /// hardly depends on what else the machine runs.
    fn cpu_us_per_txn(&self) -> Option<f64> {
        (self.ok > 0)
            .then(|| self.node_cpu_ticks as f64 * 1e6 / clock_ticks_per_second() / self.ok as f64)
    }
    fn delays(&self) -> Option<f64> {
        if self.deltas[3] == 0 {
            return self.fast_share().map(|_| 0.0);
        }
        self.fast_share().map(|s| 2.0 * s + 4.0 * (1.0 - s))
    }
}

/// Runs `kind` for `duration` from `clients_per_node` clients on each of `nodes`; `seq`
/// makes this scenario's keys distinct from every other's.
async fn scenario(
    nodes: &[&Node],
    kind: Kind,
    args: &Args,
    duration: Duration,
    seq: i64,
) -> Result<Measured> {
    let clients = connect_clients(nodes, args.clients_per_node).await?;
    let baseline = Baseline::take(nodes).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let hot_keys = args.hot_keys;
        let keys_per_txn = args.keys_per_txn;
        tasks.push(tokio::spawn(async move {
            let index = index as i64;
            let mut rng = (seq as u64) << 32 | index as u64;
            let mut measured = Measured::default();
            let mut i: i64 = 0;
            while Instant::now() < deadline {
                i += 1;
                let began = Instant::now();
                let result = match kind {
                    Kind::Single => {
                        let k = (seq << 40) | (index << 32) | i;
                        let row = Row::new().with("k", k).with("v", i);
                        client.write_rows(KEYSPACE, "t", vec![row]).await
                    }
                    Kind::Hot => {
                        let k = (seq << 40) | (splitmix(&mut rng) % hot_keys as u64) as i64;
                        let row = Row::new().with("k", k).with("v", i);
                        client.write_rows(KEYSPACE, "t", vec![row]).await
                    }
                    Kind::Multi => {
                        let mut txn = Transaction::new(KEYSPACE);
                        for key in 0..keys_per_txn {
                            // Random partitions: random tokens, distinct shards mostly.
                            let k = (seq << 40) | (splitmix(&mut rng) >> 24) as i64;
                            txn = txn
                                .read(&format!("r{key}"), "t", Row::new().with("k", k))
                                .upsert("t", Row::new().with("k", k).with("v", i));
                        }
                        client.transact(txn).await.map(|_| ())
                    }
                };
                match result {
                    Ok(()) => {
                        measured.ok += 1;
                        measured.latencies.push(began.elapsed());
                    }
                    Err(error) => {
                        measured.errors += 1;
                        measured
                            .first_error
                            .get_or_insert_with(|| error.to_string());
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            }
            measured
        }));
    }
    let mut total = Measured::default();
    for task in tasks {
        let measured = task.await?;
        total.ok += measured.ok;
        total.errors += measured.errors;
        if total.first_error.is_none() {
            total.first_error = measured.first_error;
        }
        total.latencies.extend(measured.latencies);
    }
    total.elapsed = started.elapsed();
    total.latencies.sort_unstable();
    baseline.finish(nodes, &mut total).await?;
    Ok(total)
}

/// `per_node` SDK connections to each of `nodes`.
async fn connect_clients(nodes: &[&Node], per_node: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for node in nodes {
        for _ in 0..per_node {
            clients.push(Client::connect(&node.grpc).await?);
        }
    }
    Ok(clients)
}

/// The live nodes' counters and CPU time when a scenario starts.
struct Baseline {
    counters: [i64; COUNTERS.len()],
    cpu_ticks: u64,
}

impl Baseline {
    async fn take(nodes: &[&Node]) -> Result<Baseline> {
        Ok(Baseline {
            counters: total_counters(nodes).await?,
            cpu_ticks: node_cpu_ticks(nodes),
        })
    }

    /// Sets `measured`'s counter deltas and CPU time since the baseline.
    async fn finish(self, nodes: &[&Node], measured: &mut Measured) -> Result<()> {
        measured.node_cpu_ticks = node_cpu_ticks(nodes).saturating_sub(self.cpu_ticks);
        let after = total_counters(nodes).await?;
        for ((delta, after), before) in measured.deltas.iter_mut().zip(after).zip(self.counters) {
            *delta = after - before;
        }
        Ok(())
    }
}

/// The CPU clock ticks the nodes' processes spent so far.
fn node_cpu_ticks(nodes: &[&Node]) -> u64 {
    nodes
        .iter()
        .map(|node| CpuOf::Process(node.child.id()).ticks())
        .sum()
}

/// `single` as an open loop: `rate` one-row upserts per second (distinct keys), spread
/// round-robin over `clients_per_node` connections to each of `nodes`, for `duration`;
/// latency from each transaction's intended send time.
async fn offered_single(
    nodes: &[&Node],
    args: &Args,
    rate: f64,
    duration: Duration,
    seq: i64,
) -> Result<Measured> {
    let clients = connect_clients(nodes, args.clients_per_node).await?;
    let baseline = Baseline::take(nodes).await?;
    let started = Instant::now();
    let (summary, latencies) = open_loop(rate, duration, OUTSTANDING_MAX, move |i| {
        let client = clients[i as usize % clients.len()].clone();
        async move {
            let k = (seq << 40) | i as i64;
            let row = Row::new().with("k", k).with("v", i as i64);
            client.write_rows(KEYSPACE, "t", vec![row]).await?;
            Ok(())
        }
    })
    .await?;
    let mut measured = Measured {
        ok: latencies.len(),
        errors: summary.errors as usize,
        elapsed: started.elapsed(),
        latencies,
        offered: Some((rate, summary.sustained)),
        ..Measured::default()
    };
    baseline.finish(nodes, &mut measured).await?;
    Ok(measured)
}

/// Creates the keyspace (replication factor `rf`) and table through `nodes[0]`, then waits
/// until every node takes a write to it.
async fn create_table(nodes: &[&Node], rf: usize) -> Result<()> {
    let client = Client::connect(&nodes[0].grpc).await?;
    client
        .execute(
            "",
            &format!(
                "CREATE KEYSPACE {KEYSPACE} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
            ),
            vec![],
        )
        .await?;
    client
        .execute(
            KEYSPACE,
            "CREATE TABLE t (k bigint PRIMARY KEY, v bigint)",
            vec![],
        )
        .await?;
    for node in nodes {
        let client = Client::connect(&node.grpc).await?;
        let deadline = Instant::now() + SCHEMA_TIMEOUT;
        let probe = Row::new().with("k", -i64::from(node.id)).with("v", 0i64);
        while let Err(error) = client.write_rows(KEYSPACE, "t", vec![probe.clone()]).await {
            if Instant::now() > deadline {
                bail!("node {} cannot write to the table: {error}", node.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Starts a 3-node cluster (node 1 bootstraps, 2 and 3 join; data under `dir/{prefix}N`)
/// and creates the RF 3 table.
async fn start_three(binary: &Path, dir: &Path, prefix: &str, journal: &str) -> Result<[Node; 3]> {
    let node1 = Node::start(
        binary,
        &dir.join(format!("{prefix}1")),
        1,
        journal,
        Some(None),
    )?;
    let seed = node1
        .cluster
        .clone()
        .context("node 1 has no cluster address")?;
    let join = |id: u32| {
        Node::start(
            binary,
            &dir.join(format!("{prefix}{id}")),
            id,
            journal,
            Some(Some(&seed)),
        )
    };
    let (node2, node3) = (join(2)?, join(3)?);
    create_table(&[&node1, &node2, &node3], 3).await?;
    Ok([node1, node2, node3])
}

/// Every scenario's results of one run, by row label.
type RunResults = Vec<(String, Measured)>;

async fn run_cluster(binary: &Path, dir: &Path, args: &Args, run: usize) -> Result<RunResults> {
    let duration = Duration::from_secs_f64(args.seconds);
    let [node1, node2, node3] = start_three(binary, dir, "n", &args.journal).await?;
    let all = [&node1, &node2, &node3];
    let seq = |n: i64| (run as i64) * 16 + n;
    // Warm-up: connections, the table's first ranges; not reported.
    scenario(&all, Kind::Single, args, duration / 3, seq(0)).await?;
    let mut results = Vec::new();
    for (label, kind, n) in [
        ("3 nodes  single", Kind::Single, 1),
        ("3 nodes  hot", Kind::Hot, 2),
        ("3 nodes  multi", Kind::Multi, 3),
    ] {
        results.push((
            label.to_owned(),
            scenario(&all, kind, args, duration, seq(n)).await?,
        ));
    }
    // Latency below saturation: open loops at fractions of the closed loop's throughput.
    let peak = results[0].1.throughput();
    for (index, percent) in LOAD_PERCENTS.into_iter().enumerate() {
        let rate = (peak * f64::from(percent) / 100.0).max(1.0);
        results.push((
            format!("3 nodes  single @{percent}%"),
            offered_single(&all, args, rate, duration, seq(6 + index as i64)).await?,
        ));
    }
    node3.stop(args.stop)?;
    let live = [&node1, &node2];
    for (label, kind, n) in [
        ("2 of 3   single", Kind::Single, 4),
        ("2 of 3   multi", Kind::Multi, 5),
    ] {
        results.push((
            label.to_owned(),
            scenario(&live, kind, args, duration, seq(n)).await?,
        ));
    }
    let rate = (peak * f64::from(TARGET_LOAD_PERCENT) / 100.0).max(1.0);
    results.push((
        format!("2 of 3   single @{TARGET_LOAD_PERCENT}%"),
        offered_single(&live, args, rate, duration, seq(9)).await?,
    ));
    node2.stop(Stop::Term)?;
    node1.stop(Stop::Term)?;
    Ok(results)
}

/// What the join scenario measured.
#[derive(Debug, Clone)]
struct Joined {
    rows: usize,
    /// From starting node 4 to its `ready` (the transition done).
    join: Duration,
    /// The writer's transactions over the whole scenario.
    writes: Measured,
}

/// A fourth node joins a 3-node cluster holding `--join-rows` rows while an open-loop writer
/// offers `rate` one-row upserts per second through nodes 1–3: how long the join takes and
/// what the writer sees (a sealed transition holds transactions until the new node fetched
/// the ranges it gains: the writer's worst latency is the pause).
async fn run_join(binary: &Path, dir: &Path, args: &Args, rate: f64) -> Result<Joined> {
    let [node1, node2, node3] = start_three(binary, dir, "j", &args.journal).await?;
    let seed = node1
        .cluster
        .clone()
        .context("node 1 has no cluster address")?;
    let all = [&node1, &node2, &node3];
    let client = Client::connect(&node1.grpc).await?;
    let mut written = 0;
    while written < args.join_rows {
        let count = PRELOAD_ROWS_PER_CALL.min(args.join_rows - written);
        let rows = (written..written + count)
            .map(|k| Row::new().with("k", k as i64).with("v", k as i64))
            .collect();
        client.write_rows(KEYSPACE, "t", rows).await?;
        written += count;
    }
    // The writer runs 1 s before the join, through it, and 1 s after.
    let clients = connect_clients(&all, 1).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut errors = 0usize;
        let mut first_error = None;
        let mut stop_rx = stop_rx;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut in_flight = tokio::task::JoinSet::new();
        let begin = Instant::now();
        let mut i: u64 = 0;
        loop {
            let intended = begin + interval.mul_f64(i as f64);
            tokio::select! {
                _ = &mut stop_rx => break,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(intended)) => {}
            }
            let client = clients[i as usize % clients.len()].clone();
            let k = (1_i64 << 50) | i as i64;
            in_flight.spawn(async move {
                let row = Row::new().with("k", k).with("v", k);
                let result = client.write_rows(KEYSPACE, "t", vec![row]).await;
                (
                    intended.elapsed(),
                    result.map_err(|error| error.to_string()),
                )
            });
            i += 1;
            while let Some(done) = in_flight.try_join_next() {
                match done? {
                    (latency, Ok(())) => latencies.push(latency),
                    (_, Err(error)) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        while let Some(done) = in_flight.join_next().await {
            match done? {
                (latency, Ok(())) => latencies.push(latency),
                (_, Err(error)) => {
                    errors += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        anyhow::Ok((latencies, errors, first_error))
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let join_started = Instant::now();
    let (binary4, dir4, journal) = (binary.to_owned(), dir.join("j4"), args.journal.clone());
    let node4 = tokio::task::spawn_blocking(move || {
        Node::start_within(
            &binary4,
            &dir4,
            4,
            &journal,
            Some(Some(&seed)),
            JOIN_READY_TIMEOUT,
        )
    })
    .await??;
    let join = join_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(());
    let (mut latencies, errors, first_error) = writer.await??;
    latencies.sort_unstable();
    let writes = Measured {
        ok: latencies.len(),
        errors,
        first_error,
        elapsed: started.elapsed(),
        latencies,
        offered: Some((rate, true)),
        ..Measured::default()
    };
    for node in [node4, node3, node2, node1] {
        node.stop(Stop::Term)?;
    }
    Ok(Joined {
        rows: args.join_rows,
        join,
        writes,
    })
}

async fn run_reference(binary: &Path, dir: &Path, args: &Args, run: usize) -> Result<RunResults> {
    let duration = Duration::from_secs_f64(args.seconds);
    let node = Node::start(binary, &dir.join("alone"), 1, &args.journal, None)?;
    let one = [&node];
    create_table(&one, 1).await?;
    // As many clients as the cluster had, all on the one node.
    let args_one = Args {
        clients_per_node: args.clients_per_node * 3,
        concord: None,
        journal: args.journal.clone(),
        ..*args
    };
    let seq = |n: i64| (run as i64) * 16 + 8 + n;
    scenario(&one, Kind::Single, &args_one, duration / 3, seq(0)).await?;
    let mut results = Vec::new();
    for (label, kind, n) in [
        ("1 node   single", Kind::Single, 1),
        ("1 node   multi", Kind::Multi, 2),
    ] {
        results.push((
            label.to_owned(),
            scenario(&one, kind, &args_one, duration, seq(n)).await?,
        ));
    }
    node.stop(Stop::Term)?;
    Ok(results)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn print_row(label: &str, m: &Measured) {
    let share = m
        .fast_share()
        .map_or_else(|| "n/a".to_owned(), |s| format!("{:.1}%", s * 100.0));
    let delays = m
        .delays()
        .map_or_else(|| "n/a".to_owned(), |d| format!("{d:.2}"));
    let messages = m
        .messages_per_txn()
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
    let syncs = m
        .syncs_per_txn()
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    let cpu = m
        .cpu_us_per_txn()
        .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    println!(
        "{label:<22} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>7} {:>9} {:>10} {:>11} {:>7}{}",
        m.throughput(),
        ms(m.p(0.50)),
        ms(m.p(0.99)),
        share,
        delays,
        messages,
        syncs,
        cpu,
        m.errors,
        match m.offered {
            Some((rate, false)) => format!("  (offered {rate:.0}/s: not sustained)"),
            _ => String::new(),
        }
    );
    if let Some(error) = &m.first_error {
        println!("{:<22} first error: {error}", "");
    }
}

fn header() {
    println!(
        "{:<22} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10} {:>11} {:>7}",
        "scenario",
        "txn/s",
        "p50 ms",
        "p99 ms",
        "fast",
        "delays",
        "msgs/txn",
        "syncs/txn",
        "cpu us/txn",
        "errors"
    );
}

fn main() -> Result<()> {
    let args = args()?;
    let binary = concord_binary(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir()?;
    println!(
        "cluster_txn bench: 3 local nodes (RF 3) and 1 node alone, {} clients per node, {} s \
         per scenario, {} run(s), txn_journal = {}, node 3 stopped with {:?}, hot keys {}, \
         keys per multi transaction {}",
        args.clients_per_node,
        args.seconds,
        args.runs,
        args.journal,
        args.stop,
        args.hot_keys,
        args.keys_per_txn
    );
    let mut all: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for run in 0..args.runs {
        let dir = scratch.path().join(format!("run{run}"));
        let mut results = runtime.block_on(run_cluster(&binary, &dir, &args, run))?;
        results.extend(runtime.block_on(run_reference(&binary, &dir, &args, run))?);
        println!("run {}:", run + 1);
        header();
        for (label, measured) in results {
            print_row(&label, &measured);
            if !order.contains(&label) {
                order.push(label.clone());
            }
            all.entry(label).or_default().push(measured);
        }
    }
    if args.runs > 1 {
        println!(
            "medians of {} runs (each column its own median):",
            args.runs
        );
        header();
        for label in &order {
            let runs = &all[label];
            let pick = |f: &dyn Fn(&Measured) -> f64| {
                let mut values: Vec<Duration> = runs
                    .iter()
                    .map(|m| Duration::from_secs_f64(f(m).max(0.0)))
                    .collect();
                median(&mut values).as_secs_f64()
            };
            let throughput = pick(&|m| m.throughput());
            let p50 = pick(&|m| m.p(0.50).as_secs_f64()) * 1000.0;
            let p99 = pick(&|m| m.p(0.99).as_secs_f64()) * 1000.0;
            let fast = pick(&|m| m.fast_share().unwrap_or(0.0));
            let delays = pick(&|m| m.delays().unwrap_or(0.0));
            let messages = pick(&|m| m.messages_per_txn().unwrap_or(0.0));
            let syncs = pick(&|m| m.syncs_per_txn().unwrap_or(0.0));
            let cpu = pick(&|m| m.cpu_us_per_txn().unwrap_or(0.0));
            let errors = pick(&|m| m.errors as f64);
            println!(
                "{label:<22} {throughput:>9.0} {p50:>8.2} {p99:>8.2} {:>8} {delays:>7.2} \
                 {messages:>9.1} {syncs:>10.2} {cpu:>11.0} {errors:>7.0}",
                format!("{:.1}%", fast * 100.0),
            );
        }
    }
    if args.join_rows > 0 {
        let peak = all
            .get("3 nodes  single")
            .map(|runs| {
                let mut values: Vec<f64> = runs.iter().map(Measured::throughput).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            })
            .unwrap_or(100.0);
        let rate = (peak * f64::from(LOAD_PERCENTS[0]) / 100.0).max(1.0);
        let dir = scratch.path().join("join");
        let joined = runtime.block_on(run_join(&binary, &dir, &args, rate))?;
        let w = &joined.writes;
        println!(
            "join: node 4 joined 3 nodes holding {} rows in {:.2} s; an open-loop writer at \
             {rate:.0}/s through nodes 1-3 over {:.1} s: {} answered, p50 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms (the pause), {} errors{}",
            joined.rows,
            joined.join.as_secs_f64(),
            w.elapsed.as_secs_f64(),
            w.ok,
            ms(w.p(0.50)),
            ms(w.p(0.99)),
            ms(w.latencies.last().copied().unwrap_or_default()),
            w.errors,
            w.first_error
                .as_ref()
                .map(|error| format!(" (first: {error})"))
                .unwrap_or_default(),
        );
    }
    let median_p99 = |label: &str| {
        all.get(label).map(|runs| {
            let mut values: Vec<Duration> = runs.iter().map(|m| m.p(0.99)).collect();
            median(&mut values)
        })
    };
    let target_label = format!("3 nodes  single @{TARGET_LOAD_PERCENT}%");
    let at_load = median_p99(&target_label).unwrap_or_default();
    let sustained = all
        .get(&target_label)
        .is_some_and(|runs| runs.iter().all(|m| matches!(m.offered, Some((_, true)))));
    println!(
        "target (issue 6): uncontended single-shard p99 <= 10 ms at {TARGET_LOAD_PERCENT}% of \
         the closed loop's throughput (open loop): {:.2} ms, {}; at saturation (closed loop, \
         {} clients per node): {:.2} ms",
        ms(at_load),
        if sustained && at_load <= Duration::from_millis(10) {
            "met"
        } else {
            "not met"
        },
        args.clients_per_node,
        ms(median_p99("3 nodes  single").unwrap_or_default()),
    );
    Ok(())
}
