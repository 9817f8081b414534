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

#[test]
fn swarm_slice() {
    for seed in 0..10 {
        let config = SimConfig::swarm(seed, 100);
        let report = run(&config);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: {}",
            report.violations,
            config.replay_command(100)
        );
    }
}
