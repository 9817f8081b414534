//! Concord's CQL endpoint beside PostgreSQL, in one run, on one machine
//! (issue 5, "Measure").
//!
//! ```text
//! cargo bench -p concord-benches --bench cql_vs_postgres
//! ```
//!
//! The run builds the release `concord` binary, starts `concord start` on a
//! temporary data directory and a free port, initialises and starts
//! PostgreSQL (the Debian package; installed with apt when missing) on
//! another temporary directory and free loopback port, and drives both with
//! the same in-process load generator: the Rust `scylla` driver for Concord,
//! `tokio-postgres` for PostgreSQL, prepared statements on both, the same
//! single-row INSERT and primary-key SELECT of a `(id bigint primary key,
//! v text)` table.
//!
//! Durability is the same on both sides: Concord's default `commit_sync =
//! batch` syncs the RocksDB write-ahead log before it acknowledges (concurrent
//! writers share one sync), and PostgreSQL runs with `fsync = on` and
//! `synchronous_commit = on` (the WAL is flushed before COMMIT returns,
//! concurrent commits share a flush).
//!
//! For each system and each operation, per round:
//! 1. peak throughput: a closed loop of `CQL_BENCH_CONCURRENCY` requests in
//!    flight for `CQL_BENCH_SECONDS`;
//! 2. latency at offered loads of 25 %, 50 % and 75 % of that peak: an open
//!    loop that sends on a fixed schedule from a timer thread and measures
//!    every request from its *intended* send time (no coordinated omission).
//!
//! The peak phase also reads the CPU time the server processes (Concord's
//! process; PostgreSQL's postmaster and backends) and the load generator
//! spent per request, from `/proc`: on a shared machine that is the steadier
//! measure of cost.
//!
//! It prints one table per system and the Concord / PostgreSQL ratios, each
//! number the median over `CQL_BENCH_ROUNDS` rounds (the machine is shared
//! and noisy). Environment knobs: `CQL_BENCH_SECONDS` (default 5),
//! `CQL_BENCH_ROUNDS` (3), `CQL_BENCH_CONCURRENCY` (64),
//! `CQL_BENCH_CONNECTIONS` (driver connections to Concord, 4).
//!
//! Not a test: nothing here asserts a timing.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_benches::{CpuOf, OpenLoop, clock_ticks_per_second, median, open_loop};
use scylla::client::PoolSize;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;

/// The offered loads of the open-loop phase, in percent of the peak.
const LOAD_PERCENTS: [u32; 3] = [25, 50, 75];
/// Requests an open loop may have outstanding before it stops sending and
/// reports the load as not sustained.
const OUTSTANDING_MAX: usize = 20_000;
/// Bytes of the `v` column of every row.
const VALUE_BYTES: usize = 100;
/// How long to wait for a server to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Select,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Select => "select",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    seconds: u64,
    rounds: usize,
    concurrency: usize,
    connections: usize,
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// One system under test, behind prepared statements.
enum Target {
    Concord(Box<ConcordClient>),
    /// One connection per request in flight, each with its own statements
    /// (a tokio-postgres statement belongs to the connection that prepared it).
    Postgres {
        connections: Vec<PostgresConnection>,
        next: AtomicUsize,
    },
}

struct ConcordClient {
    session: Session,
    insert: PreparedStatement,
    select: PreparedStatement,
}

struct PostgresConnection {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    select: tokio_postgres::Statement,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Concord(_) => "concord",
            Target::Postgres { .. } => "postgres",
        }
    }

    /// One request; a select must find its row.
    async fn run(&self, op: Op, key: i64, value: &str) -> Result<()> {
        match self {
            Target::Concord(client) => match op {
                Op::Insert => {
                    client
                        .session
                        .execute_unpaged(&client.insert, (key, value))
                        .await?;
                }
                Op::Select => {
                    let rows = client
                        .session
                        .execute_unpaged(&client.select, (key,))
                        .await?
                        .into_rows_result()?;
                    if rows.maybe_first_row::<(String,)>()?.is_none() {
                        bail!("concord: row {key} not found");
                    }
                }
            },
            Target::Postgres { connections, next } => {
                let connection =
                    &connections[next.fetch_add(1, Ordering::Relaxed) % connections.len()];
                match op {
                    Op::Insert => {
                        connection
                            .client
                            .execute(&connection.insert, &[&key, &value])
                            .await?;
                    }
                    Op::Select => {
                        let row = connection
                            .client
                            .query_opt(&connection.select, &[&key])
                            .await?;
                        if row.is_none() {
                            bail!("postgres: row {key} not found");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Keys: inserts take fresh ones, selects pick among those written.
#[derive(Debug, Default)]
struct Keys {
    next: AtomicI64,
}

impl Keys {
    fn fresh(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A key already written (the load phase writes before any select).
    fn existing(&self, seed: &mut u64) -> i64 {
        // xorshift64*: cheap and good enough to spread reads.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let random = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let written = self.next.load(Ordering::Relaxed).max(1) as u64;
        (random % written) as i64
    }
}

/// Closed loop: `concurrency` requests in flight for `seconds`; ops/s.
/// Peak throughput and the CPU it cost per request.
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    ops_per_second: f64,
    /// CPU time of the server processes per request, in microseconds.
    server_cpu_us: f64,
    /// CPU time of this load generator per request, in microseconds.
    client_cpu_us: f64,
}

async fn peak(
    target: &Arc<Target>,
    keys: &Arc<Keys>,
    op: Op,
    settings: Settings,
    value: &Arc<String>,
    server: CpuOf,
) -> Result<Peak> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..settings.concurrency {
        let (target, keys, stop, done, errors, value) = (
            target.clone(),
            keys.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (worker as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                let key = match op {
                    Op::Insert => keys.fresh(),
                    Op::Select => keys.existing(&mut seed),
                };
                match target.run(op, key, &value).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Warm up for a tenth of the run, then count.
    tokio::time::sleep(Duration::from_millis(settings.seconds * 100)).await;
    let start_count = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let (server_start, client_start) = (server.ticks(), CpuOf::Process(0).ticks());
    tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
    let counted = done.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed();
    let (server_end, client_end) = (server.ticks(), CpuOf::Process(0).ticks());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{}: {errors} {} requests failed", target.name(), op.name());
    }
    let per_op = |ticks: u64| ticks as f64 * 1e6 / clock_ticks_per_second() / counted.max(1) as f64;
    Ok(Peak {
        ops_per_second: counted as f64 / elapsed.as_secs_f64(),
        server_cpu_us: per_op(server_end.saturating_sub(server_start)),
        client_cpu_us: per_op(client_end.saturating_sub(client_start)),
    })
}

/// Open loop at `rate` ops/s ([`open_loop`]): latency from the intended send time.
async fn offered_load(
    target: &Arc<Target>,
    keys: &Arc<Keys>,
    op: Op,
    rate: f64,
    seconds: u64,
    value: &Arc<String>,
) -> Result<OpenLoop> {
    let (target, keys, value) = (target.clone(), keys.clone(), value.clone());
    let mut seed = 0xD1B5_4A32_D192_ED03_u64;
    open_loop(
        rate,
        Duration::from_secs(seconds),
        OUTSTANDING_MAX,
        move |_| {
            let key = match op {
                Op::Insert => keys.fresh(),
                Op::Select => keys.existing(&mut seed),
            };
            let (target, value) = (target.clone(), value.clone());
            async move { target.run(op, key, &value).await }
        },
    )
    .await
    .map(|(summary, _)| summary)
}

#[derive(Debug, Default, Clone)]
struct Round {
    peak: [Peak; 2],
    loads: [[OpenLoop; LOAD_PERCENTS.len()]; 2],
}

async fn measure(
    target: &Arc<Target>,
    keys: &Arc<Keys>,
    settings: Settings,
    value: &Arc<String>,
    server: CpuOf,
) -> Result<Round> {
    let mut round = Round::default();
    for (slot, op) in [Op::Insert, Op::Select].into_iter().enumerate() {
        let peak = peak(target, keys, op, settings, value, server).await?;
        round.peak[slot] = peak;
        let peak = peak.ops_per_second;
        for (index, percent) in LOAD_PERCENTS.into_iter().enumerate() {
            let rate = (peak * f64::from(percent) / 100.0).max(1.0);
            round.loads[slot][index] =
                offered_load(target, keys, op, rate, settings.seconds, value).await?;
        }
    }
    Ok(round)
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The per-round results folded into medians.
#[derive(Debug, Clone)]
struct Summary {
    peak: [Peak; 2],
    loads: [[OpenLoop; LOAD_PERCENTS.len()]; 2],
}

fn summarise(rounds: &[Round]) -> Summary {
    let mut summary = Summary {
        peak: [Peak::default(); 2],
        loads: Default::default(),
    };
    for slot in 0..2 {
        let peaks = rounds.iter().map(|r| r.peak[slot]);
        summary.peak[slot] = Peak {
            ops_per_second: median_f64(peaks.clone().map(|p| p.ops_per_second).collect()),
            server_cpu_us: median_f64(peaks.clone().map(|p| p.server_cpu_us).collect()),
            client_cpu_us: median_f64(peaks.map(|p| p.client_cpu_us).collect()),
        };
        for index in 0..LOAD_PERCENTS.len() {
            let all = rounds.iter().map(|r| r.loads[slot][index]);
            summary.loads[slot][index] = OpenLoop {
                offered: median_f64(all.clone().map(|l| l.offered).collect()),
                achieved: median_f64(all.clone().map(|l| l.achieved).collect()),
                p50: median(&mut all.clone().map(|l| l.p50).collect::<Vec<_>>()),
                p99: median(&mut all.clone().map(|l| l.p99).collect::<Vec<_>>()),
                errors: all.clone().map(|l| l.errors).sum(),
                sustained: all.clone().all(|l| l.sustained),
            };
        }
    }
    summary
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn print_summary(name: &str, summary: &Summary, settings: Settings) {
    println!();
    println!(
        "{name}: peak (closed loop, {} in flight) and latency at offered load (open loop, from the intended send time); medians of {} rounds",
        settings.concurrency, settings.rounds
    );
    println!(
        "  {:<7} {:>11} {:>8} {:>8} {:>5} {:>11} {:>11} {:>9} {:>9} {:>7}",
        "op",
        "peak ops/s",
        "srv us/op",
        "cli us/op",
        "load",
        "offered/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "errors"
    );
    for (slot, op) in [Op::Insert, Op::Select].into_iter().enumerate() {
        for (index, percent) in LOAD_PERCENTS.into_iter().enumerate() {
            let load = &summary.loads[slot][index];
            let peak = &summary.peak[slot];
            let (ops, server_cpu, client_cpu) = if index == 0 {
                (
                    format!("{:.0}", peak.ops_per_second),
                    format!("{:.1}", peak.server_cpu_us),
                    format!("{:.1}", peak.client_cpu_us),
                )
            } else {
                Default::default()
            };
            println!(
                "  {:<7} {:>11} {:>8} {:>8} {:>4}% {:>11.0} {:>11.0} {:>9.3} {:>9.3} {:>7}{}",
                if index == 0 { op.name() } else { "" },
                ops,
                server_cpu,
                client_cpu,
                percent,
                load.offered,
                load.achieved,
                ms(load.p50),
                ms(load.p99),
                load.errors,
                if load.sustained {
                    ""
                } else {
                    "  (not sustained)"
                }
            );
        }
    }
}

fn print_ratios(concord: &Summary, postgres: &Summary) {
    println!();
    println!(
        "srv us/op, cli us/op: CPU time (user + system, from /proc) of the server processes and of this load generator per request during the peak phase; unlike throughput it hardly depends on what else the machine runs"
    );
    println!();
    println!("ratios concord / postgres (throughput: higher is better; latency: lower is better)");
    println!(
        "  {:<7} {:>11} {:>10} {:>5} {:>9} {:>9}",
        "op", "peak", "srv us/op", "load", "p50", "p99"
    );
    for (slot, op) in [Op::Insert, Op::Select].into_iter().enumerate() {
        for (index, percent) in LOAD_PERCENTS.into_iter().enumerate() {
            let (c, p) = (&concord.loads[slot][index], &postgres.loads[slot][index]);
            let (peak, cpu) = if index == 0 {
                (
                    format!(
                        "{:.2}x",
                        concord.peak[slot].ops_per_second / postgres.peak[slot].ops_per_second
                    ),
                    format!(
                        "{:.2}x",
                        concord.peak[slot].server_cpu_us / postgres.peak[slot].server_cpu_us
                    ),
                )
            } else {
                Default::default()
            };
            println!(
                "  {:<7} {:>11} {:>10} {:>4}% {:>8.2}x {:>8.2}x",
                if index == 0 { op.name() } else { "" },
                peak,
                cpu,
                percent,
                ms(c.p50) / ms(p.p50),
                ms(c.p99) / ms(p.p99),
            );
        }
    }
    let half = LOAD_PERCENTS
        .iter()
        .position(|&percent| percent == 50)
        .unwrap_or(1);
    let checks = [
        (
            format!(
                "insert peak >= 1.5x postgres ({:.2}x)",
                concord.peak[0].ops_per_second / postgres.peak[0].ops_per_second
            ),
            concord.peak[0].ops_per_second >= 1.5 * postgres.peak[0].ops_per_second,
        ),
        (
            format!(
                "select peak >= 1.5x postgres ({:.2}x)",
                concord.peak[1].ops_per_second / postgres.peak[1].ops_per_second
            ),
            concord.peak[1].ops_per_second >= 1.5 * postgres.peak[1].ops_per_second,
        ),
        (
            format!(
                "write p99 <= 2 ms at half of peak ({:.3} ms)",
                ms(concord.loads[0][half].p99)
            ),
            concord.loads[0][half].p99 <= Duration::from_millis(2),
        ),
        (
            format!(
                "read p99 <= 1 ms at half of peak ({:.3} ms)",
                ms(concord.loads[1][half].p99)
            ),
            concord.loads[1][half].p99 <= Duration::from_millis(1),
        ),
    ];
    println!();
    println!("issue 5 target:");
    for (what, met) in checks {
        println!("  {:<5} {what}", if met { "met" } else { "MISS" });
    }
}

// ---------------------------------------------------------------- servers

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the release `concord` binary next to this bench's own executable
/// (`<target>/release/deps/cql_vs_postgres-…` → `<target>/release/concord`).
fn build_concord() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!("building the release concord binary ...");
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "concord-server",
            "--bin",
            "concord",
        ])
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build --release of concord failed");
    }
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .context("bench executable has no target directory")?;
    let binary = release.join("concord");
    if !binary.exists() {
        bail!("{} not found after the build", binary.display());
    }
    Ok(binary)
}

/// A `concord start` child, stopped with SIGTERM on drop.
#[derive(Debug)]
struct ConcordNode {
    child: Child,
    address: SocketAddr,
}

impl ConcordNode {
    fn start(binary: &Path, data_dir: &Path) -> Result<ConcordNode> {
        let mut child = Command::new(binary)
            .args(["start", "--log-filter", "warn", "--commit-sync", "batch"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--cql-listen-address", "127.0.0.1:0"])
            .args(["--grpc-listen-address", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn concord start")?;
        let stdout = child.stdout.take().context("concord stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut address = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("cql: listening on ") {
                address = Some(rest.trim().parse()?);
            }
            if line == "ready" {
                break;
            }
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let address = address.context("concord did not print its CQL address")?;
        Ok(ConcordNode { child, address })
    }
}

impl Drop for ConcordNode {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL binaries: the newest `/usr/lib/postgresql/N/bin`,
/// installing the Debian package when there is none.
fn postgres_bin() -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    println!("PostgreSQL not found: installing the Debian package with apt-get ...");
    let root = is_root()?;
    let apt = |args: &[&str]| -> Result<()> {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("apt-get {args:?} failed");
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "postgresql"])?;
    find().context("PostgreSQL still not found under /usr/lib/postgresql after apt-get")
}

fn is_root() -> Result<bool> {
    let output = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
#[derive(Debug)]
struct PostgresNode {
    bin: PathBuf,
    data_dir: PathBuf,
    /// As root, the server runs as the `postgres` user (initdb refuses root).
    run_as: Option<String>,
    port: u16,
}

impl PostgresNode {
    /// The postmaster's pid: the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .context("read postmaster.pid")?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("postmaster.pid has no pid")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn start(bin: PathBuf, dir: &Path) -> Result<PostgresNode> {
        let run_as = if is_root()? {
            Some("postgres".to_owned())
        } else {
            None
        };
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:")])
                .arg(dir)
                .status()?;
            if !status.success() {
                bail!("chown {} to {user} failed", dir.display());
            }
        }
        let node = PostgresNode {
            bin,
            data_dir: dir.join("pgdata"),
            run_as,
            port: free_port()?,
        };
        let output = node
            .command("initdb")
            .arg("-D")
            .arg(&node.data_dir)
            .args(["-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("run initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c fsync=on -c synchronous_commit=on -c max_connections=300 \
             -c shared_buffers=256MB",
            node.port
        );
        let output = node
            .command("pg_ctl")
            .arg("-D")
            .arg(&node.data_dir)
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(dir.join("postgres.log"))
            .arg("start")
            .output()
            .context("run pg_ctl start")?;
        if !output.status.success() {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(node)
    }
}

impl Drop for PostgresNode {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------- clients

async fn concord_target(address: SocketAddr, settings: Settings) -> Result<Target> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let session = loop {
        let connections = NonZeroUsize::new(settings.connections.max(1)).context("connections")?;
        match SessionBuilder::new()
            .known_node_addr(address)
            .pool_size(PoolSize::PerHost(connections))
            .build()
            .await
        {
            Ok(session) => break session,
            Err(error) if Instant::now() > deadline => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS bench WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS bench.kv (id bigint PRIMARY KEY, v text)",
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    let insert = session
        .prepare("INSERT INTO bench.kv (id, v) VALUES (?, ?)")
        .await?;
    let select = session
        .prepare("SELECT v FROM bench.kv WHERE id = ?")
        .await?;
    Ok(Target::Concord(Box::new(ConcordClient {
        session,
        insert,
        select,
    })))
}

async fn postgres_target(port: u16, settings: Settings) -> Result<(Target, String)> {
    let config = format!("host=127.0.0.1 port={port} user=bench dbname=postgres");
    let mut clients = Vec::new();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while clients.len() < settings.concurrency {
        match tokio_postgres::connect(&config, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                clients.push(client);
            }
            Err(error) if Instant::now() > deadline => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    clients[0]
        .batch_execute("CREATE TABLE IF NOT EXISTS kv (id bigint PRIMARY KEY, v text)")
        .await?;
    let mut durability = Vec::new();
    for setting in ["fsync", "synchronous_commit", "wal_sync_method"] {
        let row = clients[0]
            .query_one(&format!("SHOW {setting}"), &[])
            .await?;
        durability.push(format!("{setting}={}", row.get::<_, String>(0)));
    }
    let mut connections = Vec::new();
    for client in clients {
        let insert = client
            .prepare("INSERT INTO kv (id, v) VALUES ($1, $2)")
            .await?;
        let select = client.prepare("SELECT v FROM kv WHERE id = $1").await?;
        connections.push(PostgresConnection {
            client,
            insert,
            select,
        });
    }
    let target = Target::Postgres {
        connections,
        next: AtomicUsize::new(0),
    };
    Ok((target, durability.join(", ")))
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let settings = Settings {
        seconds: env_number("CQL_BENCH_SECONDS", 5)?.max(1),
        rounds: env_number("CQL_BENCH_ROUNDS", 3)?.max(1) as usize,
        concurrency: env_number("CQL_BENCH_CONCURRENCY", 64)?.max(1) as usize,
        connections: env_number("CQL_BENCH_CONNECTIONS", 4)?.max(1) as usize,
    };
    let binary = build_concord()?;
    let postgres_bin = postgres_bin()?;
    let scratch = tempfile::Builder::new()
        .prefix("concord-cql-bench-")
        .tempdir()
        .context("create the temporary directory")?;
    let concord_dir = scratch.path().join("concord");
    let postgres_dir = scratch.path().join("postgres");
    std::fs::create_dir_all(&concord_dir)?;
    std::fs::create_dir_all(&postgres_dir)?;
    let concord = ConcordNode::start(&binary, &concord_dir)?;
    let postgres = PostgresNode::start(postgres_bin.clone(), &postgres_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let concord_target = Arc::new(concord_target(concord.address, settings).await?);
        let (postgres_target, postgres_durability) =
            postgres_target(postgres.port, settings).await?;
        let postgres_target = Arc::new(postgres_target);
        println!();
        println!(
            "concord {} on {} (commit_sync=batch: the RocksDB WAL is synced before a write is acknowledged, group commit)",
            binary.display(),
            concord.address
        );
        println!(
            "postgres {} on 127.0.0.1:{} ({postgres_durability}: the WAL is flushed before COMMIT returns)",
            postgres_bin.display(),
            postgres.port
        );
        println!(
            "data under {} (same file system); {} s per phase, {} rounds, {} in flight, {} driver connections to concord, {} to postgres; {} cores",
            scratch.path().display(),
            settings.seconds,
            settings.rounds,
            settings.concurrency,
            settings.connections,
            settings.concurrency,
            std::thread::available_parallelism().map_or(0, NonZeroUsize::get)
        );
        let value = Arc::new("x".repeat(VALUE_BYTES));
        let concord_keys = Arc::new(Keys::default());
        let postgres_keys = Arc::new(Keys::default());
        let mut concord_rounds = Vec::new();
        let mut postgres_rounds = Vec::new();
        for round in 0..settings.rounds {
            // Alternate the order so drift on a shared machine hits both.
            let concord_first = round % 2 == 0;
            for first in [true, false] {
                if first == concord_first {
                    let server = CpuOf::Process(concord.child.id());
                    let measured =
                        measure(&concord_target, &concord_keys, settings, &value, server).await?;
                    println!(
                        "round {}: concord  insert {:.0}/s select {:.0}/s",
                        round + 1,
                        measured.peak[0].ops_per_second,
                        measured.peak[1].ops_per_second
                    );
                    concord_rounds.push(measured);
                } else {
                    let server = CpuOf::ProcessTree(postgres.postmaster_pid()?);
                    let measured =
                        measure(&postgres_target, &postgres_keys, settings, &value, server).await?;
                    println!(
                        "round {}: postgres insert {:.0}/s select {:.0}/s",
                        round + 1,
                        measured.peak[0].ops_per_second,
                        measured.peak[1].ops_per_second
                    );
                    postgres_rounds.push(measured);
                }
            }
        }
        let concord_summary = summarise(&concord_rounds);
        let postgres_summary = summarise(&postgres_rounds);
        print_summary("concord", &concord_summary, settings);
        print_summary("postgres", &postgres_summary, settings);
        print_ratios(&concord_summary, &postgres_summary);
        Ok::<(), anyhow::Error>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(postgres);
    drop(concord);
    result
}
