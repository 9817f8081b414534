//! The deterministic simulator: N nodes over crash-simulating in-memory engines, one seeded
//! RNG, a simulated network (delay distributions, loss, duplication, reordering, minority and
//! majority partitions), crashes with restart from the journal, and per-node clock skew and
//! jitter. Each seed swarm-draws its own fault rates.
//!
//! ```text
//!   seed ─► SimRng ─► FaultPlan (swarm) ─► event queue (time, seq) ─► Node::handle ─► effects
//!                                             ▲                                      │
//!                                             └──── network: delay / drop / dup ◄────┘
//!   end of run: heal, quiesce, then the oracles (check.rs) and a trace hash.
//! ```
//!
//! Replay a seed: `cargo run -p concord-txn --release --features sim --bin concord-sim --
//! --seed <seed>` (the failure message prints the exact command).

mod check;
mod cluster;
mod history;
mod rng;

pub use check::Violation;
pub use cluster::{RunReport, run};
pub use history::CheckerVerdict;
pub use rng::SimRng;

use crate::node::ProtocolBug;
use crate::topology::FastPathMode;

/// Which workload clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Multi-key transactions that read lists and append unique values.
    ListAppend,
    /// Transfers between accounts and reads of every balance; the total is invariant.
    Bank,
}

/// Fault rates for one run. [`FaultPlan::swarm`] draws them from the seed.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub delay_min_micros: u64,
    pub delay_max_micros: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplication: f64,
    /// Partitions start at this rate per simulated second.
    pub partitions_per_second: f64,
    /// Crashes per node per simulated second.
    pub crashes_per_node_second: f64,
    /// Largest clock offset of a node.
    pub skew_max_micros: u64,
    /// Largest per-reading clock jitter.
    pub jitter_max_micros: u64,
}

impl FaultPlan {
    /// No faults: a fixed small delay.
    pub fn calm() -> FaultPlan {
        FaultPlan {
            delay_min_micros: 500,
            delay_max_micros: 1_500,
            loss: 0.0,
            duplication: 0.0,
            partitions_per_second: 0.0,
            crashes_per_node_second: 0.0,
            skew_max_micros: 0,
            jitter_max_micros: 0,
        }
    }

    /// Swarm testing: each fault is switched on or off and its rate drawn, per seed.
    pub fn swarm(rng: &mut SimRng) -> FaultPlan {
        let delay_min_micros = rng.range(100, 2_000);
        let delay_max_micros = delay_min_micros + rng.range(0, 20_000);
        let on = |rng: &mut SimRng| rng.chance(0.5);
        FaultPlan {
            delay_min_micros,
            delay_max_micros,
            loss: if on(rng) { rng.unit() * 0.05 } else { 0.0 },
            duplication: if on(rng) { rng.unit() * 0.05 } else { 0.0 },
            partitions_per_second: if on(rng) { rng.unit() * 2.0 } else { 0.0 },
            crashes_per_node_second: if on(rng) { rng.unit() * 0.5 } else { 0.0 },
            skew_max_micros: if on(rng) { rng.range(0, 50_000) } else { 0 },
            jitter_max_micros: if on(rng) { rng.range(0, 5_000) } else { 0 },
        }
    }
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u32,
    pub shards: usize,
    pub replication_factor: usize,
    pub fast_path: FastPathMode,
    pub workload: Workload,
    /// Transactions the clients submit in total.
    pub txns: usize,
    pub clients: usize,
    /// Distinct keys (fewer means more contention).
    pub keys: u64,
    pub bug: Option<ProtocolBug>,
    /// `None`: swarm-drawn from the seed.
    pub faults: Option<FaultPlan>,
    /// Run the oracles (keeps every applied transaction in memory; off for very long runs).
    pub check: bool,
    /// Garbage-collect command state (see `NodeConfig::gc_enabled`).
    pub gc: bool,
}

impl SimConfig {
    /// A run with every size and fault drawn from the seed.
    pub fn swarm(seed: u64, txns: usize) -> SimConfig {
        let mut rng = SimRng::new(seed.wrapping_mul(31).wrapping_add(7));
        let replication_factor = if rng.chance(0.7) { 3 } else { 5 };
        let nodes = replication_factor as u32 + rng.range(0, 2) as u32;
        SimConfig {
            seed,
            nodes,
            shards: rng.range(1, 4) as usize,
            replication_factor,
            fast_path: if rng.chance(0.5) {
                FastPathMode::Standard
            } else {
                FastPathMode::CoordinatorVotes
            },
            workload: if rng.chance(0.7) {
                Workload::ListAppend
            } else {
                Workload::Bank
            },
            txns,
            clients: rng.range(2, 8) as usize,
            keys: rng.range(3, 30),
            bug: None,
            faults: None,
            check: true,
            gc: false,
        }
    }

    /// The one-line command that replays this run.
    pub fn replay_command(&self, txns: usize) -> String {
        let bug = self
            .bug
            .map(|bug| format!(" --bug {bug:?}"))
            .unwrap_or_default();
        format!(
            "cargo run -p concord-txn --release --features sim --bin concord-sim -- --seed {} \
             --txns {txns}{bug}",
            self.seed
        )
    }
}

#[cfg(test)]
mod tests;
