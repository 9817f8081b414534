//! The simulated cluster and its event loop.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use concord_storage::engine::EngineOptions;
use concord_storage::memory::MemoryEngine;

use super::check::{self, AppliedTxn, FloorRaise, OpRecord, Violation};
use super::history::{self, CheckerVerdict};
use super::{FaultPlan, OneDown, SimConfig, SimRng, Workload};
use crate::command::Status;
use crate::messages::Message;
use crate::node::{ClientRequestId, Effects, Input, Node, NodeConfig, Outcome, Timer};
use crate::storage::{EngineJournal, KvDataStore};
use crate::timestamp::{LocalTime, NodeId, Timestamp, TxnId};
use crate::topology::{ShardId, Topology};
use crate::txn::{Key, Txn, Update};

/// How long a client waits before recording an unknown outcome.
const CLIENT_TIMEOUT_MICROS: u64 = 3_000_000;
/// The longest a run may take in simulated time after the last client finished.
const QUIESCE_MICROS_MAX: u64 = 120_000_000;
/// Simulated time without a completed transaction, while the cluster is healthy, that fails
/// the run.
const WATCHDOG_MICROS: u64 = 20_000_000;
/// The most events one run may process before it is declared stuck.
const EVENTS_MAX: u64 = 50_000_000;
/// With a replica held down ([`SimConfig::one_down`]): how long, after the last client
/// finished, the live replicas' applied-before floors may take to pass every applied
/// transaction before the run fails ("floor stalled").
const FLOOR_WAIT_MICROS_MAX: u64 = 30_000_000;
/// Initial balance of every bank account.
pub const INITIAL_BALANCE: i64 = 100;

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Timer {
        node: NodeId,
        incarnation: u64,
        timer: Timer,
    },
    ClientStart {
        client: usize,
    },
    ClientTimeout {
        op_idx: usize,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    PartitionStart,
    PartitionEnd,
    QuiesceCheck,
    FloorCheck,
}

#[derive(Debug)]
struct NodeSlot {
    node: Option<Node>,
    engine: Arc<MemoryEngine>,
    incarnation: u64,
    skew_micros: u64,
    last_local: u64,
}

/// What one run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub trace_hash: u64,
    pub ops: usize,
    pub committed: usize,
    pub unknown: usize,
    pub fast_path_commits: u64,
    pub slow_path_commits: u64,
    pub recoveries: u64,
    pub invalidations: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Coordinators isolated just as they sent Commit after Accept (`isolate_after_accept`).
    pub isolations: u64,
    pub messages: BTreeMap<&'static str, u64>,
    /// Times a node's applied-before floor of a shard rose (each checked by the floor oracle).
    pub floor_raises: u64,
    /// With [`SimConfig::one_down`]: the live replicas' floors passed every applied
    /// transaction while that replica was still down or cut off.
    pub floor_caught_up: bool,
    pub messages_total: u64,
    pub sim_time_micros: u64,
    /// Mean client latency of fast-path and slow-path commits.
    pub fast_latency_micros_mean: u64,
    pub slow_latency_micros_mean: u64,
    /// The most commands any node held in memory at the end.
    pub commands_per_node_max: usize,
    pub violations: Vec<Violation>,
    /// Samples of (completed ops, commands in memory, journal records, tombstones), summed
    /// over nodes, every `txns / 20` completed ops.
    pub state_curve: Vec<(usize, usize, u64, usize)>,
    /// The most commands in memory on all nodes together at any sample.
    pub commands_peak: usize,
    /// What `concord-checker` said about the client history (also in `violations` when
    /// invalid, as kind `checker`). Default (no ops) when `SimConfig::check` is off.
    pub checker: CheckerVerdict,
}

struct Sim {
    config: SimConfig,
    rng: SimRng,
    faults: FaultPlan,
    topology: Arc<Topology>,
    nodes: BTreeMap<NodeId, NodeSlot>,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    now: u64,
    partition: Option<BTreeSet<NodeId>>,
    ops: Vec<OpRecord>,
    clients_busy: Vec<bool>,
    next_value: u64,
    quiescing: bool,
    done: bool,
    last_progress: u64,
    report: RunReport,
    applied: BTreeMap<NodeId, BTreeMap<TxnId, AppliedTxn>>,
    applied_conflicts: Vec<Violation>,
    /// Transactions some node sent Accept for (the `isolate_after_accept` nemesis' trigger).
    accept_sent: BTreeSet<TxnId>,
    /// Each node's applied-before floors as last observed.
    floors: BTreeMap<NodeId, BTreeMap<ShardId, Timestamp>>,
    /// Every rise of a node's floor, in time order (the floor oracle's input).
    floor_raises: Vec<FloorRaise>,
    /// When each transaction was first applied on each node (with `check`).
    applied_at: BTreeMap<(NodeId, TxnId), u64>,
    /// When the wait for the floors began (one replica down), if it did.
    floor_wait_since: Option<u64>,
}

/// Runs one simulation. Panics inside the protocol (failed invariants) become violations; the
/// client history up to the panic still goes to the checker, so a bug that trips an assertion
/// is judged by the black-box oracle too.
pub fn run(config: &SimConfig) -> RunReport {
    let mut sim = Sim::new(config.clone());
    let result = catch_unwind(AssertUnwindSafe(|| sim.run()));
    match result {
        Ok(()) => sim.finish(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            let mut violations = vec![Violation::new("invariant", message)];
            let checker = sim.check_history();
            violations.extend(checker.violation(&config.replay_command(config.txns)));
            RunReport {
                seed: config.seed,
                ops: sim.ops.len(),
                violations,
                checker,
                ..RunReport::default()
            }
        }
    }
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let mut rng = SimRng::new(config.seed);
        let faults = config
            .faults
            .clone()
            .unwrap_or_else(|| FaultPlan::swarm(&mut rng));
        let topology = Arc::new(Topology::ring(
            config.nodes,
            config.shards,
            config.replication_factor,
            config.fast_path,
        ));
        let mut sim = Sim {
            report: RunReport {
                seed: config.seed,
                ..RunReport::default()
            },
            clients_busy: vec![false; config.clients],
            config,
            rng,
            faults,
            topology,
            nodes: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            partition: None,
            ops: Vec::new(),
            next_value: 1,
            quiescing: false,
            done: false,
            last_progress: 0,
            applied: BTreeMap::new(),
            applied_conflicts: Vec::new(),
            accept_sent: BTreeSet::new(),
            floors: BTreeMap::new(),
            floor_raises: Vec::new(),
            applied_at: BTreeMap::new(),
            floor_wait_since: None,
        };
        match sim.config.one_down {
            Some(OneDown::Partitioned(node)) => {
                // Cut off from the start until the quiesce; no other partition may replace it.
                sim.faults.partitions_per_second = 0.0;
                sim.faults.isolate_after_accept = 0.0;
                sim.partition = Some(BTreeSet::from([node]));
            }
            Some(OneDown::Crashed(_)) | None => {}
        }
        for node_id in sim.topology.nodes() {
            let skew_micros = sim.rng.range(0, sim.faults.skew_max_micros);
            let engine = Arc::new(MemoryEngine::with_crash_simulation(EngineOptions::default()));
            let slot = NodeSlot {
                node: None,
                engine,
                incarnation: 0,
                skew_micros,
                last_local: 0,
            };
            sim.nodes.insert(node_id, slot);
            if sim.config.one_down != Some(OneDown::Crashed(node_id)) {
                sim.start_node(node_id);
            }
        }
        for client in 0..sim.config.clients {
            let at = sim.rng.range(0, 1_000);
            sim.schedule(at, Event::ClientStart { client });
        }
        sim.schedule_fault_events();
        sim
    }

    fn schedule(&mut self, delay_micros: u64, event: Event) {
        self.seq += 1;
        self.queue
            .insert((self.now + delay_micros, self.seq), event);
    }

    fn node_config(&self, node_id: NodeId, incarnation: u64) -> NodeConfig {
        NodeConfig {
            seed: self.config.seed ^ (incarnation << 40) ^ u64::from(node_id.0),
            bug: self.config.bug,
            gc_enabled: self.config.gc,
            sync_interval_micros: self.config.sync_interval_micros,
            sync_margin_micros: self.config.sync_margin_micros,
            ..NodeConfig::default()
        }
    }

    fn local_time(&mut self, node_id: NodeId) -> LocalTime {
        let jitter = self.rng.range(0, self.faults.jitter_max_micros);
        let slot = self.nodes.get_mut(&node_id).expect("known node");
        let local = (self.now + slot.skew_micros + jitter).max(slot.last_local + 1);
        slot.last_local = local;
        LocalTime(local)
    }

    fn start_node(&mut self, node_id: NodeId) {
        let now = self.local_time(node_id);
        let slot = self.nodes.get_mut(&node_id).expect("known node");
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        let engine = slot.engine.clone();
        let config = self.node_config(node_id, incarnation);
        let journal = Box::new(EngineJournal::new(engine.clone()));
        let data = Box::new(KvDataStore::new(engine));
        let (node, effects) =
            Node::open(node_id, self.topology.clone(), config, journal, data, now)
                .expect("the in-memory engine does not fail");
        let mut node = node;
        let applied = node.take_applied();
        // A restarted node's floors come from its journal: not a rise.
        self.floors.insert(node_id, node.applied_before());
        self.nodes.get_mut(&node_id).expect("known").node = Some(node);
        self.record_applied(node_id, applied);
        self.apply_effects(node_id, effects);
    }

    fn schedule_fault_events(&mut self) {
        let horizon = 1_000_000;
        if self.faults.partitions_per_second > 0.0 {
            let gap = (horizon as f64 / self.faults.partitions_per_second) as u64;
            let at = self.rng.range(gap / 2, gap.max(1) * 3 / 2);
            self.schedule(at, Event::PartitionStart);
        }
        if self.faults.crashes_per_node_second > 0.0 {
            let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
            for node in nodes {
                self.schedule_crash(node);
            }
        }
    }

    fn schedule_crash(&mut self, node: NodeId) {
        let gap = (1_000_000.0 / self.faults.crashes_per_node_second) as u64;
        let at = self.rng.range(gap / 2, gap.max(1) * 3 / 2);
        self.schedule(at, Event::Crash { node });
    }

    fn run(&mut self) {
        let mut events = 0u64;
        while let Some(((time, _), event)) = self.queue.pop_first() {
            events += 1;
            assert!(events < EVENTS_MAX, "run exceeded EVENTS_MAX events");
            self.now = time;
            self.handle_event(event);
            if self.done {
                break;
            }
            if !self.quiescing && self.healthy() && self.clients_waiting() {
                assert!(
                    self.now.saturating_sub(self.last_progress) < WATCHDOG_MICROS,
                    "watchdog: no transaction completed for {WATCHDOG_MICROS}us while healthy"
                );
            }
        }
    }

    fn healthy(&self) -> bool {
        self.partition.is_none() && self.nodes.values().all(|slot| slot.node.is_some())
    }

    fn clients_waiting(&self) -> bool {
        self.clients_busy.iter().any(|busy| *busy)
    }

    fn trace(&mut self, kind: u64, a: u64, b: u64) {
        let mut hash = self.report.trace_hash ^ 0xcbf2_9ce4_8422_2325;
        for word in [self.now, kind, a, b] {
            hash ^= word;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.report.trace_hash = hash;
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => {
                self.trace(
                    1,
                    u64::from(from.0) << 32 | u64::from(to.0),
                    txn_hash(&message),
                );
                self.deliver(from, to, message);
            }
            Event::Timer {
                node,
                incarnation,
                timer,
            } => {
                let current = self.nodes.get(&node).map(|slot| slot.incarnation);
                if current == Some(incarnation) {
                    self.trace(2, u64::from(node.0), 0);
                    self.input(node, Input::Timer(timer));
                }
            }
            Event::ClientStart { client } => self.client_start(client),
            Event::ClientTimeout { op_idx } => {
                if self.ops[op_idx].complete.is_none() {
                    self.complete_op(op_idx, Outcome::Unknown);
                }
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => {
                if self.nodes[&node].node.is_none() {
                    self.trace(4, u64::from(node.0), 0);
                    self.start_node(node);
                }
            }
            Event::PartitionStart => self.partition_start(),
            Event::PartitionEnd => {
                self.partition = None;
                if !self.quiescing && self.faults.partitions_per_second > 0.0 {
                    let gap = (1_000_000.0 / self.faults.partitions_per_second.max(0.01)) as u64;
                    let at = self.rng.range(gap / 2, gap * 3 / 2);
                    self.schedule(at, Event::PartitionStart);
                }
            }
            Event::QuiesceCheck => self.quiesce_check(),
            Event::FloorCheck => self.floor_check(),
        }
    }

    fn crash(&mut self, node: NodeId) {
        if self.quiescing {
            return;
        }
        let up = self
            .nodes
            .values()
            .filter(|slot| slot.node.is_some())
            .count();
        // Keep a majority up so the run can make progress; a crashed majority is a partition
        // case covered by majority partitions.
        if self.nodes[&node].node.is_some() && up * 2 > self.nodes.len() + 1 {
            self.trace(3, u64::from(node.0), 0);
            let slot = self.nodes.get_mut(&node).expect("known");
            slot.node = None;
            slot.engine.simulate_crash();
            self.report.crashes += 1;
            let down = self.rng.range(20_000, 500_000);
            self.schedule(down, Event::Restart { node });
        }
        self.schedule_crash(node);
    }

    fn partition_start(&mut self) {
        if self.quiescing {
            return;
        }
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        // Minority or majority side, drawn; the other side is the rest.
        let side_size = 1 + self.rng.index(nodes.len() - 1);
        let mut side = BTreeSet::new();
        while side.len() < side_size {
            side.insert(nodes[self.rng.index(nodes.len())]);
        }
        self.partition = Some(side);
        self.report.partitions += 1;
        let length = self.rng.range(50_000, 1_000_000);
        self.schedule(length, Event::PartitionEnd);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, message: Message) {
        if self.nodes.get(&to).is_none_or(|slot| slot.node.is_none()) {
            return;
        }
        self.input(to, Input::Message { from, message });
    }

    fn input(&mut self, node_id: NodeId, input: Input) {
        let now = self.local_time(node_id);
        let slot = self.nodes.get_mut(&node_id).expect("known node");
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        let effects = node
            .handle(now, input)
            .expect("the in-memory engine does not fail");
        let applied = node.take_applied();
        let floors = node.applied_before();
        self.record_applied(node_id, applied);
        self.observe_floors(node_id, floors);
        self.apply_effects(node_id, effects);
    }

    fn record_applied(&mut self, node_id: NodeId, applied: Vec<crate::node::AppliedRecord>) {
        for record in applied {
            let entry = AppliedTxn {
                execute_at: record.execute_at,
                txn: record.txn,
                writes: record.writes,
            };
            let on_node = self.applied.entry(node_id).or_default();
            if let Some(previous) = on_node.get(&record.txn_id)
                && *previous != entry
            {
                self.applied_conflicts.push(Violation::new(
                    "agreement",
                    format!("{} applied twice on {node_id} differently", record.txn_id),
                ));
            }
            if self.config.check {
                on_node.insert(record.txn_id, entry);
                self.applied_at
                    .entry((node_id, record.txn_id))
                    .or_insert(self.now);
            }
        }
    }

    fn apply_effects(&mut self, node_id: NodeId, effects: Effects) {
        let slot = &self.nodes[&node_id];
        let (incarnation, local_now) = (slot.incarnation, slot.last_local);
        for (at, timer) in effects.timers {
            let delay = at.0.saturating_sub(local_now).max(1);
            self.schedule(
                delay,
                Event::Timer {
                    node: node_id,
                    incarnation,
                    timer,
                },
            );
        }
        self.maybe_isolate_after_accept(node_id, &effects.messages);
        for (to, message) in effects.messages {
            *self.report.messages.entry(message.name()).or_default() += 1;
            self.report.messages_total += 1;
            self.send(node_id, to, message);
        }
        for (request_id, outcome) in effects.replies {
            let op_idx = request_id.0 as usize;
            if self.ops[op_idx].complete.is_none() {
                self.complete_op(op_idx, outcome);
            }
        }
    }

    /// The recovery nemesis: when `node` sends Commit for a transaction that went through
    /// Accept, maybe cut it off from everyone before the Commit leaves (see
    /// `FaultPlan::recovery`).
    fn maybe_isolate_after_accept(&mut self, node: NodeId, messages: &[(NodeId, Message)]) {
        if self.faults.isolate_after_accept <= 0.0 {
            return;
        }
        let mut commits_accepted = false;
        for (_, message) in messages {
            match message {
                Message::Accept { txn_id, .. } => {
                    self.accept_sent.insert(*txn_id);
                }
                Message::Commit { txn_id, .. } => {
                    commits_accepted |= self.accept_sent.contains(txn_id);
                }
                _ => {}
            }
        }
        if !commits_accepted || self.quiescing || self.partition.is_some() {
            return;
        }
        if self.rng.chance(self.faults.isolate_after_accept) {
            self.trace(7, u64::from(node.0), 0);
            self.partition = Some(BTreeSet::from([node]));
            self.report.partitions += 1;
            self.report.isolations += 1;
            let length = self.rng.range(
                self.faults.isolation_micros_min,
                self.faults.isolation_micros_max,
            );
            self.schedule(length, Event::PartitionEnd);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if let Some(side) = &self.partition
            && side.contains(&from) != side.contains(&to)
        {
            return;
        }
        if self.rng.chance(self.faults.loss) {
            return;
        }
        let copies = if self.rng.chance(self.faults.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .range(self.faults.delay_min_micros, self.faults.delay_max_micros);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    fn client_start(&mut self, client: usize) {
        if self.ops.len() >= self.config.txns {
            self.clients_busy[client] = false;
            if !self.clients_waiting() && !self.quiescing {
                if self.config.one_down.is_some() {
                    if self.floor_wait_since.is_none() {
                        self.floor_wait_since = Some(self.now);
                        self.schedule(100_000, Event::FloorCheck);
                    }
                } else {
                    self.begin_quiesce();
                }
            }
            return;
        }
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, slot)| slot.node.is_some())
            .map(|(id, _)| *id)
            .collect();
        if up.is_empty() {
            self.schedule(10_000, Event::ClientStart { client });
            return;
        }
        let coordinator = up[self.rng.index(up.len())];
        let txn = self.generate_txn();
        let op_idx = self.ops.len();
        self.ops.push(OpRecord {
            client,
            invoke: self.now,
            complete: None,
            txn: txn.clone(),
            outcome: None,
        });
        self.clients_busy[client] = true;
        self.trace(5, op_idx as u64, u64::from(coordinator.0));
        let request_id = ClientRequestId(op_idx as u64);
        self.schedule(CLIENT_TIMEOUT_MICROS, Event::ClientTimeout { op_idx });
        self.input(coordinator, Input::Client { request_id, txn });
    }

    fn generate_txn(&mut self) -> Txn {
        let keys = self.config.keys;
        match self.config.workload {
            Workload::ListAppend => {
                let n_ops = self.rng.range(1, 3);
                let (mut reads, mut appends) = (Vec::new(), Vec::new());
                for _ in 0..n_ops {
                    let key = Key::numbered(self.rng.range(0, keys - 1));
                    if self.rng.chance(0.5) {
                        if !reads.contains(&key) {
                            reads.push(key);
                        }
                    } else {
                        appends.push((key, self.next_value));
                        self.next_value += 1;
                    }
                }
                let update = if appends.is_empty() {
                    Update::None
                } else {
                    Update::Append(appends)
                };
                Txn::new(reads, update)
            }
            Workload::Bank => {
                let accounts = history::bank_accounts(keys);
                if self.rng.chance(0.2) {
                    Txn::new((0..accounts).map(Key::numbered).collect(), Update::None)
                } else {
                    let from = self.rng.range(0, accounts - 1);
                    let to = (from + self.rng.range(1, accounts - 1)) % accounts;
                    let amount = self.rng.range(1, 50) as i64;
                    let update = Update::Transfer {
                        from: Key::numbered(from),
                        to: Key::numbered(to),
                        amount,
                        initial_balance: INITIAL_BALANCE,
                    };
                    Txn::new(vec![Key::numbered(from), Key::numbered(to)], update)
                }
            }
        }
    }

    fn complete_op(&mut self, op_idx: usize, mut outcome: Outcome) {
        if !self.config.check
            && let Outcome::Committed { reads, .. } = &mut outcome
        {
            // Without the oracles nothing reads the values again; list-append reads grow with
            // the run (every read returns the whole list), so keeping them made a long run's
            // memory grow quadratically (the 1M-transaction run died near 700k).
            reads.clear();
        }
        let op = &mut self.ops[op_idx];
        op.complete = Some(self.now);
        if let Outcome::Committed { fast_path, .. } = &outcome {
            self.last_progress = self.now;
            let _ = fast_path;
        }
        op.outcome = Some(outcome);
        let client = op.client;
        self.trace(6, op_idx as u64, 0);
        let sample_every = match self.config.sample_every {
            0 => (self.config.txns / 20).max(1),
            every => every,
        };
        if (op_idx + 1).is_multiple_of(sample_every) {
            self.sample_state(op_idx + 1);
        }
        let think = self.rng.range(0, 2_000);
        self.schedule(think, Event::ClientStart { client });
    }

    fn sample_state(&mut self, ops_done: usize) {
        let mut sample = super::StateSample {
            ops_done,
            sim_time_micros: self.now,
            ..super::StateSample::default()
        };
        for slot in self.nodes.values() {
            if let Some(node) = &slot.node {
                sample.commands += node.command_count();
                sample.journal_records += node.journal_record_count().unwrap_or(0);
                sample.tombstones += node.tombstone_count();
                sample.key_index += node.key_index_count();
            }
        }
        sample.committed = self
            .ops
            .iter()
            .filter(|op| matches!(op.outcome, Some(Outcome::Committed { .. })))
            .count();
        self.report.commands_peak = self.report.commands_peak.max(sample.commands);
        self.report.state_curve.push((
            ops_done,
            sample.commands,
            sample.journal_records,
            sample.tombstones,
        ));
        if let Some(on_sample) = self.config.on_sample {
            on_sample(&sample);
        }
    }

    /// Records every rise of `node_id`'s applied-before floors.
    fn observe_floors(&mut self, node_id: NodeId, floors: BTreeMap<ShardId, Timestamp>) {
        let last = self.floors.entry(node_id).or_default();
        for (shard, at) in &floors {
            if last.get(shard).is_none_or(|before| before < at) {
                self.floor_raises.push(FloorRaise {
                    node: node_id,
                    shard: *shard,
                    bound: *at,
                    time: self.now,
                });
            }
        }
        *last = floors;
    }

    /// One replica held down: waits, before the quiesce brings it back, until every live
    /// replica's floor of every shard passed every transaction applied on that shard.
    fn floor_check(&mut self) {
        if self.quiescing {
            return;
        }
        let mut target: BTreeMap<ShardId, Timestamp> = BTreeMap::new();
        for txns in self.applied.values() {
            for txn in txns.values() {
                for shard in self.topology.shards_for_keys(txn.txn.keys()) {
                    let at = target.entry(shard).or_default();
                    *at = (*at).max(txn.execute_at);
                }
            }
        }
        let caught_up = self.topology.shards.iter().all(|shard| {
            let needed = target.get(&shard.id).copied().unwrap_or_default();
            shard.replicas.iter().all(|node| {
                let live = self.nodes[node].node.is_some()
                    && self
                        .partition
                        .as_ref()
                        .is_none_or(|side| !side.contains(node));
                !live
                    || self
                        .floors
                        .get(node)
                        .and_then(|floors| floors.get(&shard.id))
                        .is_some_and(|floor| *floor > needed)
            })
        });
        let since = self.floor_wait_since.unwrap_or(self.now);
        if caught_up {
            self.report.floor_caught_up = true;
            self.begin_quiesce();
        } else if self.now.saturating_sub(since) >= FLOOR_WAIT_MICROS_MAX {
            let floors = format!("{:?}", self.floors);
            self.applied_conflicts.push(Violation::new(
                "floor stalled",
                format!(
                    "the live replicas' applied-before floors did not pass every applied \
                     transaction {FLOOR_WAIT_MICROS_MAX}us after the clients finished (one \
                     replica down): targets {target:?}, floors {floors}"
                ),
            ));
            self.begin_quiesce();
        } else {
            self.schedule(100_000, Event::FloorCheck);
        }
    }

    fn begin_quiesce(&mut self) {
        self.quiescing = true;
        self.partition = None;
        self.faults.loss = 0.0;
        self.faults.duplication = 0.0;
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, slot)| slot.node.is_none())
            .map(|(id, _)| *id)
            .collect();
        for node in down {
            self.start_node(node);
        }
        self.last_progress = self.now;
        self.schedule(100_000, Event::QuiesceCheck);
    }

    fn quiesce_check(&mut self) {
        let unfinished: usize = self
            .nodes
            .values()
            .filter_map(|slot| slot.node.as_ref())
            .map(|node| node.unfinished_count() + node.coordinations.len())
            .sum();
        if unfinished == 0 {
            self.done = true;
            return;
        }
        if self.now.saturating_sub(self.last_progress) >= QUIESCE_MICROS_MAX {
            let stuck: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(id, slot)| slot.node.as_ref().map(|node| (id, node)))
                .flat_map(|(id, node)| {
                    node.describe_unfinished(2)
                        .into_iter()
                        .map(move |line| format!("{id}: {line}"))
                })
                .collect();
            panic!("liveness: {unfinished} commands unfinished after healing: {stuck:?}");
        }
        self.schedule(100_000, Event::QuiesceCheck);
    }

    fn finish(mut self) -> RunReport {
        let mut violations = Vec::new();
        if !self.done {
            violations.push(Violation::new(
                "liveness",
                "the event queue ran dry before quiescence",
            ));
        }
        let applied = std::mem::take(&mut self.applied);
        violations.append(&mut self.applied_conflicts);
        let mut invalidated: BTreeSet<TxnId> = BTreeSet::new();
        let mut finals = BTreeMap::new();
        let all_keys: Vec<Key> = (0..self.config.keys).map(Key::numbered).collect();
        for (node_id, slot) in &self.nodes {
            let Some(node) = slot.node.as_ref() else {
                continue;
            };
            let stats = node.stats();
            self.report.fast_path_commits += stats.fast_path_commits;
            self.report.slow_path_commits += stats.slow_path_commits;
            self.report.recoveries += stats.recoveries_started;
            self.report.invalidations += stats.invalidations;
            self.report.commands_per_node_max =
                self.report.commands_per_node_max.max(node.command_count());
            for command in node.commands.values() {
                if command.status == Status::Invalidated {
                    invalidated.insert(command.txn_id);
                }
            }
            let owned: Vec<Key> = all_keys
                .iter()
                .filter(|key| self.topology.replicates(*node_id, key))
                .cloned()
                .collect();
            let store = KvDataStore::new(slot.engine.clone());
            if let Ok(data) = store.values(&owned) {
                finals.insert(*node_id, data);
            }
        }
        self.report.floor_raises = self.floor_raises.len() as u64;
        if self.config.check {
            violations.extend(check::check_floors(
                &self.floor_raises,
                &applied,
                &self.applied_at,
                &self.topology,
            ));
            violations.extend(check::check_run(
                &self.ops,
                &applied,
                &invalidated,
                &finals,
                self.config.workload,
            ));
            self.report.checker = self.check_history();
            let replay = self.config.replay_command(self.config.txns);
            violations.extend(self.report.checker.violation(&replay));
        }
        let (mut fast_sum, mut fast_n, mut slow_sum, mut slow_n) = (0, 0, 0, 0);
        for op in &self.ops {
            match &op.outcome {
                Some(Outcome::Committed { fast_path, .. }) => {
                    self.report.committed += 1;
                    let latency = op.complete.unwrap_or(op.invoke) - op.invoke;
                    if *fast_path {
                        fast_sum += latency;
                        fast_n += 1;
                    } else {
                        slow_sum += latency;
                        slow_n += 1;
                    }
                }
                _ => self.report.unknown += 1,
            }
        }
        self.report.fast_latency_micros_mean = fast_sum / fast_n.max(1);
        self.report.slow_latency_micros_mean = slow_sum / slow_n.max(1);
        self.report.ops = self.ops.len();
        self.report.sim_time_micros = self.now;
        self.report.violations = violations;
        self.report
    }
}

impl Sim {
    /// The black-box oracle over what clients observed (`history.rs`).
    fn check_history(&self) -> CheckerVerdict {
        history::check_history(&self.ops, self.config.workload, self.config.keys)
    }
}

fn txn_hash(message: &Message) -> u64 {
    let txn_id = message
        .txn_id()
        .map_or(crate::timestamp::Timestamp::ZERO, |id| id.timestamp());
    txn_id.hlc ^ (u64::from(txn_id.node.0) << 48) ^ message.name().len() as u64
}
