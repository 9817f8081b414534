//! Simulator tests: calm runs, determinism, and a small swarm slice.

use super::*;

fn calm(seed: u64, txns: usize) -> SimConfig {
    let mut config = SimConfig::swarm(seed, txns);
    config.faults = Some(FaultPlan::calm());
    config
}

#[test]
fn calm_run_commits_everything() {
    let report = run(&calm(1, 100));
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.committed, 100, "{report:?}");
}

#[test]
fn same_seed_same_trace() {
    let config = SimConfig::swarm(7, 100);
    let (a, b) = (run(&config), run(&config));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.messages_total, b.messages_total);
}

/// The CI slice: `CI_SEEDS` swarm seeds of `CI_TXNS` transactions, in four parallel parts.
/// Long campaigns: `cargo run -p concord-txn --release --features sim --bin concord-sim --
/// --seeds 10000`.
const CI_SEEDS: u64 = 120;
const CI_TXNS: usize = 200;

fn swarm_part(part: u64) {
    let parts = 4;
    for seed in (0..CI_SEEDS).filter(|seed| seed % parts == part) {
        let config = SimConfig::swarm(seed, CI_TXNS);
        let report = run(&config);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: {}",
            report.violations,
            config.replay_command(CI_TXNS)
        );
        assert!(report.committed > 0, "seed {seed} committed nothing");
    }
}

#[test]
fn swarm_slice_part_0() {
    swarm_part(0);
}

#[test]
fn swarm_slice_part_1() {
    swarm_part(1);
}

#[test]
fn swarm_slice_part_2() {
    swarm_part(2);
}

#[test]
fn swarm_slice_part_3() {
    swarm_part(3);
}

/// Returns the first seed below `seeds` whose run with `bug` reports a violation.
fn first_failing_seed(bug: crate::node::ProtocolBug, seeds: u64, txns: usize) -> Option<u64> {
    (0..seeds).find(|seed| {
        let mut config = SimConfig::swarm(*seed, txns);
        config.bug = Some(bug);
        !run(&config).violations.is_empty()
    })
}

#[test]
fn bug_drop_deps_is_caught() {
    let seed = first_failing_seed(crate::node::ProtocolBug::DropDeps, 20, 150);
    assert!(seed.is_some(), "dropping deps went unnoticed");
}

#[test]
fn bug_skip_wait_on_deps_is_caught() {
    let seed = first_failing_seed(crate::node::ProtocolBug::SkipWaitOnDeps, 20, 150);
    assert!(
        seed.is_some(),
        "executing without waiting on deps went unnoticed"
    );
}

#[test]
fn bug_fast_quorum_too_small_is_caught() {
    let seed = first_failing_seed(crate::node::ProtocolBug::FastQuorumTooSmall, 30, 150);
    assert!(seed.is_some(), "a fast quorum one too small went unnoticed");
}

#[test]
fn bug_slow_path_uses_txn_id_is_caught() {
    let seed = first_failing_seed(crate::node::ProtocolBug::SlowPathUsesTxnId, 20, 150);
    assert!(seed.is_some(), "a slow path at t0 went unnoticed");
}

/// Garbage collection keeps command state bounded: on a calm run of 2,000 transactions the
/// commands held in memory (all nodes together) never exceed a small multiple of the
/// transactions in flight, and the journal shrinks with them.
#[test]
fn command_state_stays_bounded() {
    let mut config = calm(3, 2_000);
    config.clients = 4;
    config.keys = 20;
    config.gc = true;
    let report = run(&config);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.committed, 2_000);
    let nodes = config.nodes as usize;
    let bound = 150 * nodes;
    assert!(
        report.commands_peak <= bound,
        "peak {} commands > {bound}; curve {:?}",
        report.commands_peak,
        report.state_curve
    );
    let (_, _, last_records, _) = report.state_curve.last().copied().unwrap_or_default();
    assert!(
        last_records <= bound as u64,
        "journal kept {last_records} records"
    );
}
