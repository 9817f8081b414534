//! The deterministic simulator: N nodes over crash-simulating in-memory engines, one seeded
//! RNG, a simulated network (delay distributions, loss, duplication, reordering, minority and
//! majority partitions), crashes with restart from the journal, and per-node clock skew and
//! jitter. Each seed swarm-draws its own fault rates.
//!
//! ```text
//!   seed ─► SimRng ─► FaultPlan (swarm) ─► event queue (time, seq) ─► Node::handle ─► effects
//!                                             ▲                                      │
//!                                             └──── network: delay / drop / dup ◄────┘
//!   end of run: heal, quiesce, then the oracles (check.rs), the black-box checker over the
//!   client history (history.rs) and a trace hash.
//! ```
//!
//! Replay a seed: `cargo run -p concord-txn --release --features sim --bin concord-sim --
//! --seed <seed>` (the failure message prints the exact command).

mod check;
mod cluster;
mod history;
mod rng;

pub use check::{FloorRaise, Violation};
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
    /// Probability that a coordinator is isolated from every other node at the moment it
    /// sends Commit for a transaction it sent Accept for (see [`FaultPlan::recovery`]).
    pub isolate_after_accept: f64,
    /// How long such an isolation lasts, drawn uniformly.
    pub isolation_micros_min: u64,
    pub isolation_micros_max: u64,
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
            isolate_after_accept: 0.0,
            isolation_micros_min: 0,
            isolation_micros_max: 0,
        }
    }

    /// A plan aimed at recovery of accepted proposals. A coordinator that has an Accept
    /// quorum is cut off from every other node just as it sends Commit: the decision exists
    /// (it may even execute and answer the client on the isolated side, when the coordinator
    /// is the chosen read replica), but the other replicas hold only `Accepted`. The isolation
    /// outlasts the progress log's stall timeout, so a recovery coordinator on the majority
    /// side must find that accepted proposal and re-propose it; when the partition heals, the
    /// original's Commit/Apply arrive too and must agree with whatever recovery decided.
    /// Delays stay short and no other fault is on, so the isolations dominate.
    pub fn recovery(rng: &mut SimRng) -> FaultPlan {
        let delay_min_micros = rng.range(200, 1_000);
        FaultPlan {
            delay_min_micros,
            delay_max_micros: delay_min_micros + rng.range(500, 5_000),
            isolate_after_accept: 0.05 + rng.unit() * 0.25,
            isolation_micros_min: 300_000,
            isolation_micros_max: 1_200_000,
            ..FaultPlan::calm()
        }
    }

    /// The long bounded-state run's faults (`concord-sim --long`): every fault on at a
    /// moderate rate, so durability rounds keep meeting lost messages, partitions and
    /// restarts for the whole run.
    pub fn long_run() -> FaultPlan {
        FaultPlan {
            delay_min_micros: 500,
            delay_max_micros: 5_000,
            loss: 0.01,
            duplication: 0.01,
            partitions_per_second: 0.1,
            crashes_per_node_second: 0.02,
            skew_max_micros: 10_000,
            jitter_max_micros: 1_000,
            ..FaultPlan::calm()
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
            // Not drawn here, so existing seeds keep their traces; `recovery` turns it on.
            isolate_after_accept: 0.0,
            isolation_micros_min: 0,
            isolation_micros_max: 0,
        }
    }
}

/// A replica held out of the run from its start until the clients finished and the other
/// replicas' applied-before floors passed every applied transaction (then the quiesce brings
/// it back as usual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneDown {
    /// Not started until the quiesce.
    Crashed(crate::timestamp::NodeId),
    /// Up but cut off from every other node (no other partition is drawn).
    Partitioned(crate::timestamp::NodeId),
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
    /// Durability rounds and garbage collection of command state (`NodeConfig::gc_enabled`);
    /// on in every drawn run.
    pub gc: bool,
    /// Which constructor drew this run, so the replay command rebuilds it.
    pub plan: PlanKind,
    /// Durability round cadence and margin (`NodeConfig`); drawn runs use the defaults.
    pub sync_interval_micros: u64,
    pub sync_margin_micros: u64,
    /// Sample command state every this many completed ops (0: every `txns / 20`).
    pub sample_every: usize,
    /// Called with every sample as it is taken (long runs print their curve live).
    pub on_sample: Option<fn(&StateSample)>,
    /// Hold one replica out of the run ([`SimConfig::one_down`]); `None` in drawn runs.
    pub one_down: Option<OneDown>,
}

/// Command state of the whole cluster at one moment of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSample {
    pub ops_done: usize,
    pub sim_time_micros: u64,
    /// Commands held in memory, all nodes together.
    pub commands: usize,
    /// Journal records (one per command), all nodes together.
    pub journal_records: u64,
    /// Marks of collected transactions still waited on.
    pub tombstones: usize,
    /// Entries of the per-key conflict indexes.
    pub key_index: usize,
    /// Ops acknowledged as committed so far.
    pub committed: usize,
}

/// How a run's shape and faults were drawn from its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// [`SimConfig::swarm`].
    Swarm,
    /// [`SimConfig::recovery`].
    Recovery,
    /// [`SimConfig::one_down`].
    OneDown,
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
            gc: true,
            plan: PlanKind::Swarm,
            sync_interval_micros: crate::node::NodeConfig::default().sync_interval_micros,
            sync_margin_micros: crate::node::NodeConfig::default().sync_margin_micros,
            sample_every: 0,
            on_sample: None,
            one_down: None,
        }
    }

    /// A run under [`FaultPlan::recovery`]: list-append on few keys with many clients, so
    /// conflicts push transactions onto the slow path (Accept) often.
    pub fn recovery(seed: u64, txns: usize) -> SimConfig {
        let mut config = SimConfig::swarm(seed, txns);
        let mut rng = SimRng::new(seed.wrapping_mul(131).wrapping_add(17));
        config.workload = Workload::ListAppend;
        config.keys = rng.range(2, 6);
        config.clients = rng.range(4, 8) as usize;
        config.faults = Some(FaultPlan::recovery(&mut rng));
        config.plan = PlanKind::Recovery;
        config
    }

    /// A swarm run with one node held out (down or cut off, drawn) from the start until the
    /// others' applied-before floors passed every applied transaction: the floor must move
    /// with a replica down. Three nodes (every shard loses a replica) and RF 3.
    pub fn one_down(seed: u64, txns: usize) -> SimConfig {
        let mut config = SimConfig::swarm(seed, txns);
        let mut rng = SimRng::new(seed.wrapping_mul(977).wrapping_add(3));
        config.nodes = 3;
        config.replication_factor = 3;
        let node = crate::timestamp::NodeId(1 + rng.range(0, 2) as u32);
        config.one_down = Some(if rng.chance(0.5) {
            OneDown::Crashed(node)
        } else {
            OneDown::Partitioned(node)
        });
        config.plan = PlanKind::OneDown;
        config
    }

    /// The one-line command that replays this run.
    pub fn replay_command(&self, txns: usize) -> String {
        let bug = self
            .bug
            .map(|bug| format!(" --bug {bug:?}"))
            .unwrap_or_default();
        let plan = match self.plan {
            PlanKind::Swarm => "",
            PlanKind::Recovery => " --plan recovery",
            PlanKind::OneDown => " --plan one-down",
        };
        format!(
            "cargo run -p concord-txn --release --features sim --bin concord-sim -- --seed {} \
             --txns {txns}{plan}{bug}",
            self.seed
        )
    }
}

#[cfg(test)]
mod tests;
