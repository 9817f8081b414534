//! `concord-sim`: runs simulator campaigns and the fast-path measurement.
//!
//! ```text
//!   concord-sim --seeds 10000 [--first-seed 0] [--txns 500] [--bug DropDeps]
//!   concord-sim --seed 42 [--txns 500]            replay one seed, print its report
//!   concord-sim ... --plan recovery               SimConfig::recovery instead of swarm
//!   concord-sim ... --plan one-down               SimConfig::one_down: one replica held out
//!   concord-sim ... --no-gc                       without durability rounds / GC (bisecting)
//!   concord-sim --measure                         messages per txn and fast-path share
//!   concord-sim --long 1000000 [--calm]           bounded state: command/journal curve
//! ```

use std::process::ExitCode;

use concord_txn::node::ProtocolBug;
use concord_txn::sim::{FaultPlan, SimConfig, Workload, run};
use concord_txn::topology::FastPathMode;

fn parse_bug(name: &str) -> Option<ProtocolBug> {
    Some(match name {
        "DropDeps" => ProtocolBug::DropDeps,
        "SkipWaitOnDeps" => ProtocolBug::SkipWaitOnDeps,
        "FastQuorumTooSmall" => ProtocolBug::FastQuorumTooSmall,
        "RecoveryIgnoresAccepted" => ProtocolBug::RecoveryIgnoresAccepted,
        "SlowPathUsesTxnId" => ProtocolBug::SlowPathUsesTxnId,
        "AppliedFloorFromAnyReply" => ProtocolBug::AppliedFloorFromAnyReply,
        "RecoveryIgnoresCleanPromise" => ProtocolBug::RecoveryIgnoresCleanPromise,
        _ => return None,
    })
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<String> {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|idx| args.get(idx + 1).cloned())
    };
    let number = |name: &str, default: u64| -> u64 {
        value(name).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let txns = number("--txns", 500) as usize;
    let bug = value("--bug").and_then(|name| parse_bug(&name));
    // `--plan recovery`: `SimConfig::recovery` instead of `SimConfig::swarm`.
    let plan = value("--plan");
    let recovery_plan = plan.as_deref() == Some("recovery");
    let one_down_plan = plan.as_deref() == Some("one-down");
    let no_gc = args.iter().any(|arg| arg == "--no-gc");
    let config_for = |seed: u64| {
        let mut config = if recovery_plan {
            SimConfig::recovery(seed, txns)
        } else if one_down_plan {
            SimConfig::one_down(seed, txns)
        } else {
            SimConfig::swarm(seed, txns)
        };
        config.gc = !no_gc;
        config
    };
    if args.iter().any(|arg| arg == "--measure") {
        measure(number("--measure-txns", 2_000) as usize);
        return ExitCode::SUCCESS;
    }
    if let Some(long) = value("--long").and_then(|v| v.parse::<usize>().ok()) {
        long_run(long, args.iter().any(|arg| arg == "--calm"));
        return ExitCode::SUCCESS;
    }
    if let Some(seed) = value("--seed").and_then(|v| v.parse().ok()) {
        let mut config = config_for(seed);
        config.bug = bug;
        let report = run(&config);
        println!("{config:?}");
        println!("{report:#?}");
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let seeds = number("--seeds", 100);
    let first = number("--first-seed", 0);
    let (mut failures, mut committed, mut ops) = (0u64, 0usize, 0usize);
    // Seeds whose client history `concord-checker` rejected (a subset of the failures).
    let mut checker_failures = 0u64;
    for seed in first..first + seeds {
        let mut config = config_for(seed);
        config.bug = bug;
        let report = run(&config);
        committed += report.committed;
        ops += report.ops;
        if !report.violations.is_empty() {
            failures += 1;
            eprintln!("seed {seed} FAILED: {}", report.violations[0]);
            if !report.checker.valid() {
                checker_failures += 1;
                eprintln!("  checker: {:?}", report.checker.anomalies);
            }
            eprintln!("  replay: {}", config.replay_command(txns));
        }
        if (seed - first + 1) % 100 == 0 {
            println!(
                "{} seeds, {ops} ops, {committed} committed, {failures} failed \
                 ({checker_failures} by the checker)",
                seed - first + 1
            );
        }
    }
    println!(
        "done: {seeds} seeds, {ops} ops, {committed} committed, {failures} failed \
         ({checker_failures} by the checker)"
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Messages and latency per transaction, and the fast-path share by contention, replica count
/// and fast-path mode. Calm network, 1 ms per message: latency / 1 ms = message delays.
fn measure(txns: usize) {
    println!("rf mode              contention keys  fast%  msgs/txn  fast_delays slow_delays");
    for replication_factor in [3usize, 5] {
        for mode in [FastPathMode::Standard, FastPathMode::CoordinatorVotes] {
            for (contention, keys) in [("low", 10_000u64), ("medium", 100), ("high", 5)] {
                let mut faults = FaultPlan::calm();
                faults.delay_min_micros = 1_000;
                faults.delay_max_micros = 1_000;
                // One slow replica: jitter the others slightly so arrival order varies.
                faults.delay_max_micros = 1_300;
                let config = SimConfig {
                    seed: 1,
                    nodes: replication_factor as u32,
                    shards: 1,
                    replication_factor,
                    fast_path: mode,
                    workload: Workload::ListAppend,
                    txns,
                    clients: 8,
                    keys,
                    bug: None,
                    faults: Some(faults),
                    check: true,
                    gc: false,
                    plan: concord_txn::sim::PlanKind::Swarm,
                    sync_interval_micros: 300_000,
                    sync_margin_micros: 200_000,
                    sample_every: 0,
                    on_sample: None,
                    one_down: None,
                };
                let report = run(&config);
                let commits = (report.fast_path_commits + report.slow_path_commits).max(1);
                println!(
                    "{replication_factor}  {:<17} {contention:<10} {keys:<5} {:>5.1}  {:>8.1}  {:>11.2} {:>11.2}{}",
                    format!("{mode:?}"),
                    100.0 * report.fast_path_commits as f64 / commits as f64,
                    report.messages_total as f64 / report.ops.max(1) as f64,
                    report.fast_latency_micros_mean as f64 / 1_000.0,
                    report.slow_latency_micros_mean as f64 / 1_000.0,
                    if report.violations.is_empty() {
                        ""
                    } else {
                        "  VIOLATIONS"
                    },
                );
            }
        }
    }
}

/// A long run without the oracles (they keep every transaction), with garbage collection and
/// (unless `calm`) every fault at a moderate rate, printing the command state of all nodes
/// together every 50,000 transactions (or every `txns / 20`) as it goes.
fn long_run(txns: usize, calm: bool) {
    let mut config = SimConfig::swarm(11, txns);
    config.faults = Some(if calm {
        FaultPlan::calm()
    } else {
        FaultPlan::long_run()
    });
    config.check = false;
    config.gc = true;
    config.nodes = 5;
    config.replication_factor = 3;
    config.shards = 4;
    config.keys = 100;
    config.clients = 8;
    config.workload = Workload::ListAppend;
    config.sample_every = (txns / 20).clamp(1, 50_000);
    config.on_sample = Some(print_sample);
    println!("{config:?}");
    println!(
        "{:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9}",
        "txns", "committed", "sim_s", "commands", "journal", "tombstones", "key_index"
    );
    let report = run(&config);
    println!(
        "done: committed {} of {}, crashes {}, partitions {}, messages {}, violations {:?}",
        report.committed,
        report.ops,
        report.crashes,
        report.partitions,
        report.messages_total,
        report.violations
    );
}

fn print_sample(sample: &concord_txn::sim::StateSample) {
    println!(
        "{:>9} {:>9} {:>9.1} {:>8} {:>8} {:>10} {:>9}",
        sample.ops_done,
        sample.committed,
        sample.sim_time_micros as f64 / 1e6,
        sample.commands,
        sample.journal_records,
        sample.tombstones,
        sample.key_index
    );
}
