//! One run: start the cluster, set up the workload, run clients and the nemesis for the given
//! time, heal, read back what was written (list-append), stop the cluster, check the history and
//! write the results folder:
//!
//! ```text
//!   <out>/history.jsonl   every operation (Jepsen's invoke / ok / fail / info events)
//!   <out>/nemesis.jsonl   every fault window
//!   <out>/report.txt      verdict, anomalies, lost writes, availability, latencies
//!   <out>/latency.svg     latency over time, faults shaded
//!   <out>/logs/n<i>.log   each node's output
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_checker::{
    AnomalyKind, History, ListAppendOptions, OperationBody, Outcome, ProcessId, RegisterOptions,
    check_bank, check_list_append, check_register,
};

use crate::cluster::{Cluster, ClusterConfig};
use crate::nemesis::{FaultWindow, Nemesis, NemesisKind};
use crate::net::Partitioner;
use crate::report::{self, ReportInput};
use crate::svg::{self, Sample};
use crate::workload::bank::Bank;
use crate::workload::list_append::{self, ListAppend};
use crate::workload::register::Register;
use crate::workload::{self, ClientConfig, Recorded, Recorder, Workload};

/// How long setup (schema, initial rows) may keep retrying while the cluster settles.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final reads may keep retrying after the faults are healed.
pub const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    ListAppend,
    Bank,
    Register,
}

impl FromStr for WorkloadKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "list-append" => Ok(WorkloadKind::ListAppend),
            "bank" => Ok(WorkloadKind::Bank),
            "register" => Ok(WorkloadKind::Register),
            other => Err(format!(
                "unknown workload {other:?} (expected list-append, bank or register)"
            )),
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub binary: PathBuf,
    pub nodes: usize,
    pub workload: WorkloadKind,
    pub nemeses: Vec<NemesisKind>,
    pub time: Duration,
    /// Operations per second over all clients.
    pub rate: f64,
    pub concurrency: usize,
    /// Healthy time between faults, and each fault's length.
    pub interval: Duration,
    pub request_timeout: Duration,
    pub seed: u64,
    pub out: PathBuf,
    /// Extra TOML for each node (e.g. `txn_mode = "accord"`).
    pub extra_config: String,
}

/// A run's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every checker ran to completion and found nothing.
    Valid,
    /// Anomalies, lost writes, or a harness/cluster problem.
    Invalid,
    /// A checker gave up (search limit) or no operation succeeded: nothing was shown.
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "INVALID",
            Verdict::Unknown => "unknown",
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub verdict: Verdict,
    /// The report's text.
    pub report: String,
    pub out: PathBuf,
}

/// What a workload's checks found in its history.
struct Verdicts {
    checker: String,
    anomalies: bool,
    search_limit: bool,
    lost_writes: Vec<String>,
}

/// A checked history, workload-independent.
struct Checked {
    samples: Vec<Sample>,
    checker: String,
    anomalies: bool,
    search_limit: bool,
    lost_writes: Vec<String>,
    history_jsonl: String,
}

/// What every workload's run shares: the client runtime, the clients, the cluster.
struct RunEnv<'a> {
    runtime: &'a tokio::runtime::Runtime,
    clients: &'a ClientConfig,
    config: &'a RunConfig,
    cluster: &'a Arc<Mutex<Cluster>>,
    partitioner: Option<Partitioner>,
    problems: &'a mut Vec<String>,
}

impl RunEnv<'_> {
    /// Runs `workload` (see [`execute`]) and checks its history with `check`.
    fn run_checked<W: Workload>(
        &mut self,
        workload: Arc<W>,
        final_phase: FinalPhase<W::Body>,
        check: impl FnOnce(&History<W::Body>) -> Verdicts,
    ) -> anyhow::Result<(Checked, workload::ErrorCounts, Vec<FaultWindow>, u64)> {
        let (recorded, windows, end_us) = execute(
            self.runtime,
            workload,
            self.clients,
            self.config,
            self.cluster,
            self.partitioner.take(),
            self.problems,
            final_phase,
        )?;
        let verdicts = check(&recorded.history);
        self.problems.extend(recorded.mismatches.iter().cloned());
        let errors = client_errors(&recorded, self.problems);
        let checked = Checked {
            samples: samples(&recorded.history),
            checker: verdicts.checker,
            anomalies: verdicts.anomalies,
            search_limit: verdicts.search_limit,
            lost_writes: verdicts.lost_writes,
            history_jsonl: recorded.history.to_jsonl_string(),
        };
        Ok((checked, errors, windows, end_us))
    }
}

fn samples<B: OperationBody>(history: &History<B>) -> Vec<Sample> {
    history
        .operations()
        .iter()
        .map(|operation| Sample {
            invoke_us: operation.invoke_time(),
            complete_us: operation.complete_time(),
            status: operation.status(),
        })
        .collect()
}

/// Runs one test; see the module documentation.
///
/// # Errors
/// When the run could not take place (the binary missing, nodes not starting, partitions
/// requested where nftables is unavailable). A run that took place returns its verdict.
pub fn run(config: &RunConfig) -> anyhow::Result<RunOutcome> {
    if config.nodes == 0 || config.concurrency == 0 || config.rate <= 0.0 {
        bail!("nodes, concurrency and rate must be positive");
    }
    let partitions = config.nemeses.contains(&NemesisKind::Partition);
    if partitions && config.nodes < 2 {
        bail!("the partition nemesis needs at least two nodes");
    }
    if partitions {
        crate::net::check_available().context("partitions requested")?;
    }
    let membership = config.nemeses.contains(&NemesisKind::Membership);
    if membership && config.nodes < 2 {
        bail!("the membership nemesis needs a cluster (at least two nodes)");
    }
    if membership && partitions {
        // The partitioner's rules name the starting nodes' uids and ports only.
        bail!("the membership nemesis does not combine with partitions");
    }
    let skew = config.nemeses.contains(&NemesisKind::Skew);
    let faketime = std::path::PathBuf::from(crate::cluster::FAKETIME_LIBRARY);
    if skew && !faketime.exists() {
        bail!(
            "the skew nemesis needs libfaketime ({} is missing; Debian: apt install libfaketime)",
            faketime.display()
        );
    }
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("create {}", config.out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the client runtime")?;
    let cluster = Cluster::start(ClusterConfig {
        binary: config.binary.clone(),
        nodes: config.nodes,
        log_dir: config.out.join("logs"),
        separate_uids: partitions,
        extra_config: config.extra_config.clone(),
        faketime: skew.then_some(faketime),
    })?;
    let specs = cluster.specs();
    let partitioner = if partitions {
        Some(Partitioner::new(&specs)?)
    } else {
        None
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let nodes = match cluster.lock() {
        Ok(cluster) => cluster.live_nodes(),
        Err(_) => bail!("the cluster lock is poisoned"),
    };
    let replication_factor = config.nodes.min(3);
    let clients = ClientConfig {
        nodes,
        concurrency: config.concurrency,
        rate: config.rate,
        request_timeout: config.request_timeout,
        seed: config.seed,
    };
    let mut problems = Vec::new();
    let mut run_env = RunEnv {
        runtime: &runtime,
        clients: &clients,
        config,
        cluster: &cluster,
        partitioner,
        problems: &mut problems,
    };
    let (checked, errors, windows, end_us) = match config.workload {
        WorkloadKind::ListAppend => {
            let workload = Arc::new(ListAppend::new(replication_factor));
            let reader = workload.clone();
            run_env.run_checked(
                workload,
                Box::new(move |recorder, session| {
                    Box::pin(async move { final_reads(&reader, recorder, session).await })
                }),
                |history| {
                    let report = check_list_append(history, &ListAppendOptions::default());
                    Verdicts {
                        checker: report.to_string(),
                        anomalies: !report.valid(),
                        search_limit: false,
                        lost_writes: list_append::lost_appends(history)
                            .into_iter()
                            .map(|(key, element)| format!("key {key}: element {element}"))
                            .collect(),
                    }
                },
            )?
        }
        WorkloadKind::Bank => run_env.run_checked(
            Arc::new(Bank::new(replication_factor)),
            Box::new(|_, _| Box::pin(async { Ok(()) })),
            |history| {
                let report = check_bank(history, &Bank::options());
                Verdicts {
                    checker: report.to_string(),
                    anomalies: !report.valid(),
                    search_limit: false,
                    lost_writes: Vec::new(),
                }
            },
        )?,
        WorkloadKind::Register => run_env.run_checked(
            Arc::new(Register::new(replication_factor)),
            Box::new(|_, _| Box::pin(async { Ok(()) })),
            |history| {
                let checked = check_register(history, &RegisterOptions::default());
                Verdicts {
                    checker: checked.to_string(),
                    // A search that gave up is "unknown", not an anomaly.
                    anomalies: checked
                        .report
                        .counts()
                        .keys()
                        .any(|kind| *kind != AnomalyKind::SearchLimitExceeded),
                    search_limit: checked.report.has(AnomalyKind::SearchLimitExceeded),
                    lost_writes: Vec::new(),
                }
            },
        )?,
    };
    let unclean = match cluster.lock() {
        Ok(mut cluster) => cluster.stop(),
        Err(_) => vec![],
    };
    for node in unclean {
        problems.push(format!("node n{node} did not stop cleanly on SIGTERM"));
    }
    problems.extend(panics(&config.out.join("logs")));
    let ok = checked
        .samples
        .iter()
        .filter(|sample| sample.status == concord_checker::Status::Ok)
        .count();
    let verdict = if checked.anomalies || !checked.lost_writes.is_empty() || !problems.is_empty() {
        Verdict::Invalid
    } else if checked.search_limit || ok == 0 {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let nemeses: Vec<&str> = config.nemeses.iter().map(|kind| kind.name()).collect();
    let title = format!(
        "concord-jepsen: {} on {} node(s), nemesis {}, {:.0} s at {} ops/s, {} clients, seed {}",
        workload_name(config.workload),
        config.nodes,
        if nemeses.is_empty() {
            "none".to_owned()
        } else {
            nemeses.join(",")
        },
        config.time.as_secs_f64(),
        config.rate,
        config.concurrency,
        config.seed
    );
    let mechanism = if partitions {
        "nftables drop rules per node uid on loopback"
    } else {
        "not used"
    };
    let clocks = match (config.nemeses.contains(&NemesisKind::Clock), skew) {
        (true, true) => "steps across restarts (test_clock_offset_ms) and live (libfaketime)",
        (true, false) => "steps across restarts (test_clock_offset_ms)",
        (false, true) => "live steps (libfaketime)",
        (false, false) => "not used",
    };
    let text = report::render(&ReportInput {
        title: title.clone(),
        verdict: verdict.name(),
        partition_mechanism: mechanism,
        clock_mechanism: clocks,
        samples: &checked.samples,
        windows: &windows,
        checker: checked.checker.clone(),
        lost_writes: &checked.lost_writes,
        errors: &errors,
        problems: &problems,
    });
    std::fs::write(config.out.join("history.jsonl"), &checked.history_jsonl)?;
    let nemesis_lines: Vec<String> = windows
        .iter()
        .map(|window| window.to_json().to_string())
        .collect();
    std::fs::write(
        config.out.join("nemesis.jsonl"),
        nemesis_lines.join("\n") + "\n",
    )?;
    std::fs::write(config.out.join("report.txt"), &text)?;
    std::fs::write(
        config.out.join("latency.svg"),
        svg::latency_plot(&title, &checked.samples, &windows, end_us),
    )?;
    Ok(RunOutcome {
        verdict,
        report: text,
        out: config.out.clone(),
    })
}

fn workload_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::ListAppend => "list-append",
        WorkloadKind::Bank => "bank",
        WorkloadKind::Register => "register",
    }
}

/// The client error counts of a run; a statement the server called malformed is a problem.
fn client_errors<B: OperationBody>(
    recorded: &Recorded<B>,
    problems: &mut Vec<String>,
) -> workload::ErrorCounts {
    let malformed: u64 = recorded
        .errors
        .iter()
        .filter(|(kind, _)| kind.starts_with("client error"))
        .map(|(_, count)| count)
        .sum();
    if malformed > 0 {
        problems.push(format!(
            "{malformed} statements were refused as malformed or returned an unexpected shape \
             (a harness or server bug)"
        ));
    }
    recorded.errors.clone()
}

/// The workload-specific last step, after every fault is healed (list-append's final reads).
type FinalPhase<B> = Box<
    dyn FnOnce(
        Arc<Recorder<B>>,
        Arc<scylla::client::session::Session>,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
>;

/// Sets up, runs clients and the nemesis, heals, runs the final phase; returns the history.
#[allow(clippy::too_many_arguments)]
fn execute<W: Workload>(
    runtime: &tokio::runtime::Runtime,
    workload: Arc<W>,
    clients: &ClientConfig,
    config: &RunConfig,
    cluster: &Arc<Mutex<Cluster>>,
    partitioner: Option<Partitioner>,
    problems: &mut Vec<String>,
    final_phase: FinalPhase<W::Body>,
) -> anyhow::Result<(Recorded<W::Body>, Vec<FaultWindow>, u64)> {
    // Setup through every node in turn (IF NOT EXISTS everywhere), retried while the cluster
    // settles.
    runtime.block_on(async {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        for node in &clients.nodes.get() {
            loop {
                let attempt = async {
                    let session = workload::connect(*node, clients.request_timeout).await?;
                    workload.setup(&session).await
                }
                .await;
                match attempt {
                    Ok(()) => break,
                    Err(error) if Instant::now() < deadline => {
                        tracing_free_log(&format!("setup via {node}: {error:#}; retrying"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(error.context(format!("set up through {node}"))),
                }
            }
        }
        Ok(())
    })?;
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis = Nemesis {
        kinds: config.nemeses.clone(),
        interval: config.interval,
        seed: config.seed,
    };
    let nemesis_thread = {
        let cluster = cluster.clone();
        let stop = stop.clone();
        std::thread::spawn(move || nemesis.run(&cluster, partitioner, start, &stop))
    };
    let driver = runtime.spawn(workload::drive(
        workload,
        recorder.clone(),
        clients.clone(),
        stop.clone(),
    ));
    std::thread::sleep(config.time);
    stop.store(true, Ordering::SeqCst);
    let windows = match nemesis_thread.join() {
        Ok((windows, None)) => windows,
        Ok((windows, Some(error))) => {
            problems.push(format!("nemesis: {error:#}"));
            windows
        }
        Err(_) => {
            problems.push("the nemesis thread panicked".to_owned());
            Vec::new()
        }
    };
    let _ = runtime.block_on(driver);
    let end_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    // Every fault is healed: the final phase reads back through the first member (node 1
    // unless the membership nemesis removed it).
    let first = *clients
        .nodes
        .get()
        .first()
        .context("no member left for the final reads")?;
    let final_result = runtime.block_on(async {
        let deadline = Instant::now() + FINAL_READ_TIMEOUT;
        let session = loop {
            match workload::connect(first, clients.request_timeout).await {
                Ok(session) => break session,
                Err(error) if Instant::now() < deadline => {
                    tracing_free_log(&format!("final phase: {error:#}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        };
        final_phase(recorder.clone(), Arc::new(session)).await
    });
    if let Err(error) = final_result {
        problems.push(format!("final reads: {error:#}"));
    }
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| anyhow::anyhow!("a client still holds the recorder"))?;
    Ok((recorder.finish(), windows, end_us))
}

/// The panics the nodes' logs show: `n2: thread '...' panicked at src/x.rs:1:2: message`, one
/// per log at most [`PANICS_PER_LOG_MAX`]. A panic is a bug even where the checkers found
/// nothing.
fn panics(log_dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return found;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(&log) else {
            continue;
        };
        let name = log
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains("panicked at"))
            .take(PANICS_PER_LOG_MAX)
        {
            let message = lines.get(at + 1).copied().unwrap_or("");
            found.push(format!("{name} panicked: {} {message}", line.trim()));
        }
    }
    found
}

/// How many panics of one node's log the report quotes.
pub const PANICS_PER_LOG_MAX: usize = 3;

/// Progress lines on stderr (the harness has no logger of its own).
fn tracing_free_log(line: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("concord-jepsen: {line}");
    }
}

/// Reads every key used, each read retried until it completes `ok` or the deadline passes.
async fn final_reads(
    workload: &ListAppend,
    recorder: Arc<Recorder<concord_checker::Transaction>>,
    session: Arc<scylla::client::session::Session>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut process = 1_000_000u64;
    for transaction in workload.final_reads() {
        loop {
            let outcome = recorder
                .record(ProcessId(process), &transaction, async {
                    workload.execute(&session, &transaction).await
                })
                .await;
            if matches!(outcome, Outcome::Ok(_)) {
                break;
            }
            if matches!(outcome, Outcome::Info) {
                process += 1;
            }
            if Instant::now() > deadline {
                bail!("a final read did not succeed within {FINAL_READ_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_node_log_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n1.log"), "ready\nall fine\n").unwrap();
        std::fs::write(
            dir.path().join("n2.log"),
            "ready\nthread 'concord-accord-2' (1) panicked at txn/src/topology.rs:163:21:\n\
             index out of bounds: the len is 48 but the index is 49\nstack backtrace:\n",
        )
        .unwrap();
        let found = panics(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("n2 panicked: thread"), "{}", found[0]);
        assert!(
            found[0].ends_with("index out of bounds: the len is 48 but the index is 49"),
            "{}",
            found[0]
        );
        assert!(panics(&dir.path().join("missing")).is_empty());
    }
}
