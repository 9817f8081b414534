//! `concord-jepsen`: runs Concord as real processes, hurts them, checks what clients saw.
//!
//! ```text
//! concord-jepsen run --nodes 3 --workload list-append --nemesis kill,pause,partition \
//!     --time 60s --rate 200 --out results/run1
//! concord-jepsen smoke --out results/smoke      # CI: five short runs, one nemesis each
//! ```
//!
//! Exit status: 0 valid, 1 invalid (anomalies, lost writes, a broken cluster), 2 unknown
//! (a checker gave up, or nothing succeeded), 3 the run could not take place.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use concord_jepsen::nemesis::NemesisKind;
use concord_jepsen::run::WorkloadKind;
use concord_jepsen::{RunConfig, Verdict, run};

#[derive(Debug, Parser)]
#[command(
    name = "concord-jepsen",
    about = "Break a real Concord cluster and check every history"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One run: a workload under a set of nemeses.
    Run(RunArgs),
    /// The short CI run: list-append under kill, bank under pause, register under partition
    /// (or kill where nftables is unavailable), list-append under live clock steps (or steps
    /// across restarts where libfaketime is unavailable), list-append while a node joins and
    /// one is removed (with 2+ nodes), one nemesis at a time.
    Smoke(SmokeArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The `concord` binary (default: target/debug/concord, then target/release/concord).
    #[arg(long)]
    binary: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Operations per second over all clients.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Client processes (spread over the nodes).
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Healthy time between faults, and each fault's length.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Extra TOML for every node, e.g. 'txn_mode = "accord"'.
    #[arg(long, default_value = "")]
    node_config: String,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "list-append")]
    workload: WorkloadKind,
    /// Comma-separated: kill, pause, partition, clock, skew, membership; `none` for no faults.
    #[arg(long, default_value = "kill", value_delimiter = ',', value_parser = parse_nemesis)]
    nemesis: Vec<Option<NemesisKind>>,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    time: Duration,
    /// The results folder.
    #[arg(long, default_value = "jepsen-results/run")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SmokeArgs {
    #[command(flatten)]
    common: Common,
    /// Each run's length.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    time: Duration,
    /// The results folder (one subfolder per run).
    #[arg(long, default_value = "jepsen-results/smoke")]
    out: PathBuf,
}

fn parse_nemesis(text: &str) -> Result<Option<NemesisKind>, String> {
    if text == "none" {
        Ok(None)
    } else {
        text.parse().map(Some)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 60s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn default_binary() -> PathBuf {
    for candidate in ["target/debug/concord", "target/release/concord"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let path = PathBuf::from(dir).join("debug/concord");
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("concord")
}

fn config(
    common: &Common,
    workload: WorkloadKind,
    nemeses: Vec<NemesisKind>,
    time: Duration,
    out: PathBuf,
) -> RunConfig {
    RunConfig {
        binary: common.binary.clone().unwrap_or_else(default_binary),
        nodes: common.nodes,
        workload,
        nemeses,
        time,
        rate: common.rate,
        concurrency: common.concurrency,
        interval: common.interval,
        request_timeout: common.request_timeout,
        seed: common.seed,
        out,
        extra_config: common.node_config.replace("\\n", "\n"),
    }
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let runs = match cli.command {
        Command::Run(args) => vec![config(
            &args.common,
            args.workload,
            args.nemesis.into_iter().flatten().collect(),
            args.time,
            args.out,
        )],
        Command::Smoke(args) => {
            let partition = if args.common.nodes >= 2
                && concord_jepsen::net::check_available().is_ok()
            {
                NemesisKind::Partition
            } else {
                eprintln!(
                    "concord-jepsen: partitions unavailable here (needs root and nftables, and 2+ nodes); the register run uses kill"
                );
                NemesisKind::Kill
            };
            let clock = if std::path::Path::new(concord_jepsen::cluster::FAKETIME_LIBRARY).exists()
            {
                NemesisKind::Skew
            } else {
                eprintln!(
                    "concord-jepsen: libfaketime unavailable here; the clock run steps clocks across restarts"
                );
                NemesisKind::Clock
            };
            let mut runs = vec![
                (WorkloadKind::ListAppend, NemesisKind::Kill, "list-append"),
                (WorkloadKind::Bank, NemesisKind::Pause, "bank"),
                (WorkloadKind::Register, partition, "register"),
                (WorkloadKind::ListAppend, clock, "list-append"),
            ];
            // A join and a removal fit in a 15 s run (each takes 1.5-4.5 s here).
            if args.common.nodes >= 2 {
                runs.push((
                    WorkloadKind::ListAppend,
                    NemesisKind::Membership,
                    "list-append",
                ));
            } else {
                eprintln!(
                    "concord-jepsen: one node has no membership to change; no membership run"
                );
            }
            runs.into_iter()
                .map(|(workload, nemesis, name)| {
                    let out = args.out.join(format!("{name}-{}", nemesis.name()));
                    config(&args.common, workload, vec![nemesis], args.time, out)
                })
                .collect()
        }
    };
    let mut worst = ExitCode::SUCCESS;
    let mut worst_rank = 0;
    for config in runs {
        match run(&config) {
            Ok(outcome) => {
                println!("{}", outcome.report);
                println!("results: {}", outcome.out.display());
                let (rank, code) = match outcome.verdict {
                    Verdict::Valid => (0, ExitCode::SUCCESS),
                    Verdict::Unknown => (1, ExitCode::from(2)),
                    Verdict::Invalid => (2, ExitCode::from(1)),
                };
                if rank > worst_rank {
                    worst_rank = rank;
                    worst = code;
                }
            }
            Err(error) => {
                eprintln!("concord-jepsen: the run could not take place: {error:#}");
                return ExitCode::from(3);
            }
        }
    }
    worst
}
