//! The sans-IO node: one replica (command store) and the coordinations it drives.
//!
//! ```text
//!   (now, Input::Message | Input::Timer | Input::Client) ──► Node::handle ──► Effects
//!                                                              messages to send
//!                                                              timers to set
//!                                                              client replies
//! ```
//!
//! A message a node sends to itself is handled inside the same call, before `handle` returns,
//! so the coordinator's own replica votes on its t0 before any other message is processed.
//! Nothing here reads a clock, opens a socket or spawns a task.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::command::Command;
use crate::coordinator::Coordination;
use crate::error::Result;
use crate::messages::Message;
use crate::storage::{DataStore, Journal};
use crate::timestamp::{Ballot, Hlc, LocalTime, NodeId, Timestamp, TxnId};
use crate::topology::Topology;
use crate::txn::{Key, ReadData, Txn};

/// Identifies a client request at its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRequestId(pub u64);

/// What the client learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Executed at `execute_at`; the values of the requested reads at executeAt.
    Committed {
        execute_at: Timestamp,
        reads: ReadData,
        fast_path: bool,
    },
    /// The coordinator gave up (timeout, preemption); the transaction may or may not execute.
    Unknown,
    /// The node has too many transactions in flight; nothing was started.
    Overloaded,
}

/// A timer the node asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A coordination phase timed out (stale if `phase_seq` moved on).
    Coordination { txn_id: TxnId, phase_seq: u64 },
    /// The periodic progress-log scan.
    ProgressLog,
}

/// One input to the node.
#[derive(Debug, Clone)]
pub enum Input {
    Message {
        from: NodeId,
        message: Message,
    },
    Timer(Timer),
    Client {
        request_id: ClientRequestId,
        txn: Txn,
    },
}

/// What the node wants done.
#[derive(Debug, Default)]
pub struct Effects {
    pub messages: Vec<(NodeId, Message)>,
    pub timers: Vec<(LocalTime, Timer)>,
    pub replies: Vec<(ClientRequestId, Outcome)>,
}

/// Deliberate protocol bugs, for proving that the simulator's checks bite. Only the simulator
/// and tests set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolBug {
    /// Replicas report no deps.
    DropDeps,
    /// Replicas execute without waiting on deps.
    SkipWaitOnDeps,
    /// The coordinator takes the fast path with one vote too few.
    FastQuorumTooSmall,
    /// Recovery treats accepted proposals as if they were only pre-accepted.
    RecoveryIgnoresAccepted,
    /// The coordinator picks t0 as executeAt on the slow path instead of the max witnessed.
    SlowPathUsesTxnId,
    /// A durability round sends `SyncApplied` once a quorum answered a check pass, clean or
    /// not, and replicas raise their applied-before floor without having promised.
    AppliedFloorFromAnyReply,
    /// A replica that answered a check pass clean answers a recovery of an unknown
    /// transaction below that bound like any unknown one (no `superseding_rejects`).
    RecoveryIgnoresCleanPromise,
}

/// Timing and limits.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How long the coordinator waits for fast-path votes before settling for the slow path.
    pub preaccept_timeout_micros: u64,
    /// Timeout of every other coordination round.
    pub round_timeout_micros: u64,
    /// Resends per round before the coordinator gives up.
    pub round_retries_max: u32,
    /// How often the progress log scans.
    pub progress_interval_micros: u64,
    /// How long a command may stay undecided or unapplied before the progress log acts.
    pub stall_micros: u64,
    /// Seed for the node's own jitter (recovery back-off).
    pub seed: u64,
    pub bug: Option<ProtocolBug>,
    /// Run durability rounds and garbage-collect command state below their watermarks
    /// (`sync.rs`, design/accord.md "Bounded state").
    pub gc_enabled: bool,
    /// How often the first replica of each shard starts a durability round.
    pub sync_interval_micros: u64,
    /// How far below its HLC a round's bound lies: transactions younger than this are never
    /// fenced off, so a PreAccept delayed by less is not rejected.
    pub sync_margin_micros: u64,
    /// Low bits of every HLC value this node issues that carry its id (0: none). With
    /// `b > 0` node ids must be below `2^b`; then two nodes never issue the same HLC value,
    /// so executeAt's HLC alone orders conflicting transactions (see [`Hlc`]).
    pub hlc_node_bits: u32,
    /// Keep [`Node::apply_floor`] at or below the applied-before floor of every shard this
    /// node replicates: the floor is then a bound in a cluster too (a write this node has yet
    /// to apply, whoever coordinates it and whether or not this node voted on it, executes at
    /// or above that floor), at the price of lagging the durability rounds. The floor needs
    /// only a quorum of each shard's replicas (`SyncApplied`, design/accord.md "Two levels"),
    /// so it moves with a replica down. Needs `gc_enabled`.
    pub apply_floor_durable: bool,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            preaccept_timeout_micros: 20_000,
            round_timeout_micros: 50_000,
            round_retries_max: 3,
            progress_interval_micros: 50_000,
            stall_micros: 200_000,
            seed: 0,
            bug: None,
            gc_enabled: true,
            sync_interval_micros: 300_000,
            sync_margin_micros: 200_000,
            hlc_node_bits: 0,
            apply_floor_durable: false,
        }
    }
}

/// The most coordinations one node runs at once; more client requests are refused.
pub const COORDINATIONS_MAX: usize = 4_096;
/// The most messages one `handle` call may produce before it is a bug.
pub const EFFECT_MESSAGES_MAX: usize = 1_000_000;

/// Per-key conflict index: the transactions on the key and the highest timestamps they hold.
#[derive(Debug, Default, Clone)]
pub struct KeyState {
    pub txns: BTreeSet<TxnId>,
    /// The highest witnessedAt/executeAt of a write on this key.
    pub max_write: Timestamp,
    /// The highest of any transaction on this key.
    pub max_any: Timestamp,
}

/// One applied transaction, as the simulator's oracle sees it.
#[cfg(any(test, feature = "sim"))]
#[derive(Debug, Clone)]
pub struct AppliedRecord {
    pub txn_id: TxnId,
    pub execute_at: Timestamp,
    pub txn: Txn,
    pub writes: crate::txn::Writes,
}

/// Counters for measurements.
#[derive(Debug, Default, Clone)]
pub struct NodeStats {
    pub fast_path_commits: u64,
    pub slow_path_commits: u64,
    pub recoveries_started: u64,
    pub invalidations: u64,
    /// Durability-round messages of another topology epoch, ignored.
    pub stale_sync_messages: u64,
}

/// A node: replica state, coordinations, clock, storage.
#[derive(Debug)]
pub struct Node {
    pub(crate) id: NodeId,
    pub(crate) topology: Arc<Topology>,
    pub(crate) config: NodeConfig,
    pub(crate) hlc: Hlc,
    pub(crate) commands: BTreeMap<TxnId, Command>,
    pub(crate) keys: BTreeMap<Key, KeyState>,
    /// dep → the commands waiting on it.
    pub(crate) blocked_by: BTreeMap<TxnId, BTreeSet<TxnId>>,
    pub(crate) coordinations: BTreeMap<TxnId, Coordination>,
    /// Definitions of undecided transactions learned from peers, for recovery.
    pub(crate) learned: BTreeMap<TxnId, Txn>,
    /// Transactions of other shards a peer reported as collected (applied everywhere): deps
    /// that no longer hold anything back. Dropped once nothing waits on them.
    pub(crate) erased: BTreeSet<TxnId>,
    /// Per-shard RejectBefore / DurableBefore (durable in the journal).
    pub(crate) watermarks: crate::sync::Watermarks,
    /// Durability rounds this node drives, per shard.
    pub(crate) sync_rounds: BTreeMap<crate::topology::ShardId, crate::sync::SyncRound>,
    /// When this node's last round of each shard ended.
    pub(crate) sync_last_end: BTreeMap<crate::topology::ShardId, LocalTime>,
    /// When this node's applied-before floor of each shard it replicates last moved (or it
    /// first looked): a replica takes over a shard's rounds when it stays put too long.
    pub(crate) sync_floor_moved: BTreeMap<crate::topology::ShardId, LocalTime>,
    /// Every apply since the simulator last drained it: the oracle's view of execution,
    /// which survives garbage collection.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) applied_log: Vec<AppliedRecord>,
    pub(crate) journal: Box<dyn Journal>,
    pub(crate) data: Box<dyn DataStore>,
    pub(crate) stats: NodeStats,
    pub(crate) rng_state: u64,
    /// Outgoing effects of the current `handle` call.
    pub(crate) effects: Effects,
    /// Messages to self, handled before `handle` returns.
    pub(crate) loopback: VecDeque<Message>,
    /// Transactions whose status changed and whose dependents must be re-checked.
    pub(crate) changed: VecDeque<TxnId>,
    pub(crate) next_phase_seq: u64,
    pub(crate) progress_timer_armed: bool,
    /// The epoch seal this node drives towards (`Node::seal`): durability rounds run at this
    /// bound until DurableBefore reaches it. `None` outside an epoch transition.
    pub(crate) seal: Option<Timestamp>,
    /// Shards whose rounds at the seal bound have started here (the first starts at once,
    /// later ones after the usual interval).
    pub(crate) sealed_rounds: BTreeSet<crate::topology::ShardId>,
}

impl Node {
    /// Starts a node, rebuilding its state from `journal` (empty for a new node).
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn open(
        id: NodeId,
        topology: Arc<Topology>,
        config: NodeConfig,
        journal: Box<dyn Journal>,
        data: Box<dyn DataStore>,
        now: LocalTime,
    ) -> Result<(Node, Effects)> {
        let epoch = topology.epoch;
        if config.hlc_node_bits > crate::timestamp::HLC_NODE_BITS_MAX
            || (config.hlc_node_bits > 0 && u64::from(id.0) >= 1u64 << config.hlc_node_bits)
        {
            return Err(crate::error::Error::Config(format!(
                "node id {} does not fit in hlc_node_bits = {} (at most {})",
                id.0,
                config.hlc_node_bits,
                crate::timestamp::HLC_NODE_BITS_MAX
            )));
        }
        let hlc = Hlc::with_node_bits(id, epoch, config.hlc_node_bits);
        let rng_state = config.seed ^ (u64::from(id.0) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        let mut node = Node {
            id,
            topology,
            config,
            hlc,
            commands: BTreeMap::new(),
            keys: BTreeMap::new(),
            blocked_by: BTreeMap::new(),
            coordinations: BTreeMap::new(),
            learned: BTreeMap::new(),
            erased: BTreeSet::new(),
            watermarks: crate::sync::Watermarks::default(),
            sync_rounds: BTreeMap::new(),
            sync_last_end: BTreeMap::new(),
            sync_floor_moved: BTreeMap::new(),
            #[cfg(any(test, feature = "sim"))]
            applied_log: Vec::new(),
            journal,
            data,
            stats: NodeStats::default(),
            rng_state,
            effects: Effects::default(),
            loopback: VecDeque::new(),
            changed: VecDeque::new(),
            next_phase_seq: 0,
            progress_timer_armed: false,
            seal: None,
            sealed_rounds: BTreeSet::new(),
        };
        node.replay(now)?;
        node.arm_progress_timer(now);
        node.drain(now)?;
        node.journal.flush()?;
        let effects = std::mem::take(&mut node.effects);
        Ok((node, effects))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The topology this node runs on.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Gives back the journal and the data store, dropping the in-memory state, so the
    /// caller can open a new node on them (the runtime does, on a new topology epoch).
    pub fn into_storage(self) -> (Box<dyn Journal>, Box<dyn DataStore>) {
        (self.journal, self.data)
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Commands held in memory (for bounded-state checks).
    pub fn command_count(&self) -> usize {
        self.commands.len()
    }

    /// Journal records (for bounded-state checks).
    ///
    /// # Errors
    /// When storage fails.
    pub fn journal_record_count(&self) -> Result<u64> {
        self.journal.record_count()
    }

    /// Drains the applies since the last call (simulator oracle).
    #[cfg(any(test, feature = "sim"))]
    pub fn take_applied(&mut self) -> Vec<AppliedRecord> {
        std::mem::take(&mut self.applied_log)
    }

    /// A short description of up to `n` unfinished commands, for liveness failures.
    pub fn describe_unfinished(&self, n: usize) -> Vec<String> {
        self.commands
            .values()
            .filter(|command| !command.status.is_final())
            .take(n)
            .map(|command| {
                let waiting: Vec<String> = command
                    .waiting_on
                    .iter()
                    .take(3)
                    .map(|dep| {
                        let status = self.commands.get(dep).map(|c| c.status);
                        format!("{dep}={status:?}")
                    })
                    .collect();
                format!(
                    "{} {:?} waiting {:?}",
                    command.txn_id, command.status, waiting
                )
            })
            .collect()
    }

    /// Marks of collected transactions of other shards still waited on (the only per-txn
    /// state left after garbage collection).
    pub fn tombstone_count(&self) -> usize {
        self.erased.len()
    }

    /// Entries of the per-key conflict index.
    pub fn key_index_count(&self) -> usize {
        self.keys.len()
    }

    /// This node's DurableBefore watermark of every shard it replicates.
    pub fn durable_before(&self) -> BTreeMap<crate::topology::ShardId, Timestamp> {
        self.watermarks.durable_before.clone()
    }

    /// This node's applied-before floor of every shard it replicates (the higher of the
    /// floor `SyncApplied` raised and DurableBefore): every transaction below it on the shard
    /// that can still commit is applied here.
    pub fn applied_before(&self) -> BTreeMap<crate::topology::ShardId, Timestamp> {
        self.topology
            .shards
            .iter()
            .filter(|shard| shard.is_replica(self.id))
            .map(|shard| (shard.id, self.applied_before_shard(shard.id)))
            .collect()
    }

    /// Commands that are not yet Applied or Invalidated.
    pub fn unfinished_count(&self) -> usize {
        self.commands
            .values()
            .filter(|command| !command.status.is_final())
            .count()
    }

    /// The lowest timestamp at which a write this node has not applied yet may still execute,
    /// if this node coordinates every transaction it replicates (one node): the minimum over
    /// unfinished write commands of executeAt once decided, TxnId before (executeAt is never
    /// below it), and otherwise the next timestamp its clock can issue (every new TxnId is
    /// above every timestamp the clock issued or witnessed). Every write below the floor is
    /// applied here. With peers that alone is not a bound (a peer's PreAccept may carry a
    /// lower t0, a replica outside the fast quorum applies what it never voted on): with
    /// `NodeConfig::apply_floor_durable` the floor is also at or below the applied-before
    /// floor of every shard this node replicates, below which every write that can still
    /// commit is applied here (design/cluster.md, "Change feed frontier").
    pub fn apply_floor(&self) -> Timestamp {
        let mut next = self.hlc.next_floor();
        if self.config.apply_floor_durable
            && let Some(applied) = self.applied_before_owned()
        {
            next = next.min(applied);
        }
        self.commands
            .values()
            .filter(|command| {
                !command.status.is_final()
                    && command.txn_id.kind() == crate::timestamp::TxnKind::Write
            })
            .map(|command| {
                if command.status.is_decided() {
                    command.execute_at
                } else {
                    command.txn_id.timestamp()
                }
            })
            .fold(next, Timestamp::min)
    }

    /// Handles one input and returns what to do: one step, its journal records durable
    /// ([`Node::flush`]) before the effects are returned.
    ///
    /// # Errors
    /// When storage fails; the node must then be stopped.
    pub fn handle(&mut self, now: LocalTime, input: Input) -> Result<Effects> {
        let effects = self.handle_unflushed(now, input)?;
        self.flush()?;
        Ok(effects)
    }

    /// Handles one input like [`Node::handle`] but leaves its `Sync` journal records unsynced:
    /// the caller must call [`Node::flush`] before any of the returned messages or replies
    /// leaves the node (timers and messages to itself may be acted on before). A runtime uses
    /// it to group the syncs of several queued inputs into one (group commit across
    /// concurrent transactions).
    ///
    /// # Errors
    /// When storage fails; the node must then be stopped.
    pub fn handle_unflushed(&mut self, now: LocalTime, input: Input) -> Result<Effects> {
        match input {
            Input::Message { from, message } => self.on_message(now, from, message)?,
            Input::Timer(Timer::ProgressLog) => {
                self.progress_timer_armed = false;
                self.on_progress_tick(now)?;
                self.arm_progress_timer(now);
            }
            Input::Timer(Timer::Coordination { txn_id, phase_seq }) => {
                self.on_coordination_timeout(now, txn_id, phase_seq)?;
            }
            Input::Client { request_id, txn } => self.on_client_request(now, request_id, txn)?,
        }
        self.drain(now)?;
        Ok(std::mem::take(&mut self.effects))
    }

    /// Makes every journal record of the steps handled since the last flush durable (one
    /// sync). Nothing those steps produced may leave the node before it returns.
    ///
    /// # Errors
    /// When storage fails; the node must then be stopped.
    pub fn flush(&mut self) -> Result<()> {
        self.journal.flush()
    }

    /// Handles loopback messages and dependency notifications until none remain.
    pub(crate) fn drain(&mut self, now: LocalTime) -> Result<()> {
        loop {
            if let Some(txn_id) = self.changed.pop_front() {
                self.on_status_changed(now, txn_id)?;
                continue;
            }
            if let Some(message) = self.loopback.pop_front() {
                let from = self.id;
                self.on_message(now, from, message)?;
                continue;
            }
            break;
        }
        assert!(self.effects.messages.len() <= EFFECT_MESSAGES_MAX);
        Ok(())
    }

    fn on_message(&mut self, now: LocalTime, from: NodeId, message: Message) -> Result<()> {
        if let Message::CheckStatusOk {
            durable_before,
            epoch,
            ..
        } = &message
            && *epoch == self.topology.epoch
        {
            self.learn_durable_before(now, durable_before)?;
        }
        // A durability round of another epoch names shards of another topology: ignored (its
        // driver runs the round again in its new epoch).
        if message
            .sync_epoch()
            .is_some_and(|epoch| epoch != self.topology.epoch)
        {
            self.stats.stale_sync_messages += 1;
            return Ok(());
        }
        if let Some(txn_id) = message.txn_id()
            && self.erased.contains(&txn_id)
            && !self.commands.contains_key(&txn_id)
        {
            // Collected (applied everywhere): late and duplicate messages change nothing,
            // but a peer blocked on it learns that it is applied everywhere.
            if let Message::CheckStatus { txn_id } = message {
                self.answer_collected(from, txn_id);
            }
            return Ok(());
        }
        if self.below_durable_before(from, &message) {
            return Ok(());
        }
        match message {
            Message::PreAccept { txn_id, txn } => self.on_preaccept(now, from, txn_id, txn),
            Message::Accept {
                txn_id,
                txn,
                ballot,
                execute_at,
                deps,
            } => self.on_accept(now, from, txn_id, txn, ballot, execute_at, deps),
            Message::AcceptInvalidate { txn_id, ballot } => {
                self.on_accept_invalidate(now, from, txn_id, ballot)
            }
            Message::Commit {
                txn_id,
                txn,
                execute_at,
                deps,
                read,
                ballot,
            } => {
                let read_by = read.then_some((from, ballot));
                self.on_commit(now, txn_id, txn, execute_at, deps, read_by)
            }
            Message::CommitInvalidate { txn_id } => self.on_commit_invalidate(now, txn_id),
            Message::Apply {
                txn_id,
                txn,
                execute_at,
                deps,
                writes,
            } => {
                self.on_apply(now, txn_id, txn, execute_at, deps, writes)?;
                self.send(from, Message::ApplyOk { txn_id });
                Ok(())
            }
            Message::BeginRecovery {
                txn_id,
                txn,
                ballot,
            } => self.on_begin_recovery(now, from, txn_id, txn, ballot),
            Message::SyncFence { shard, bound, .. } => self.on_sync_fence(from, shard, bound),
            Message::SyncFenceOk {
                shard,
                bound,
                known,
                ..
            } => {
                self.on_sync_fence_ok(now, from, shard, bound, known);
                Ok(())
            }
            Message::SyncCheck {
                shard,
                bound,
                pass,
                txns,
                ..
            } => self.on_sync_check(from, shard, bound, pass, txns),
            Message::SyncCheckOk {
                shard,
                bound,
                pass,
                pending,
                extra,
                ..
            } => {
                self.on_sync_check_ok(now, from, shard, bound, pass, pending, extra);
                Ok(())
            }
            Message::SyncApplied { shard, bound, .. } => self.on_sync_applied(now, shard, bound),
            Message::SyncDurable { shard, bound, .. } => self.on_sync_durable(now, shard, bound),
            Message::CheckStatus { txn_id } => {
                self.on_check_status(from, txn_id);
                Ok(())
            }
            Message::CheckStatusOk {
                txn_id, knowledge, ..
            } => self.on_check_status_ok(now, txn_id, knowledge),
            Message::PreAcceptOk { .. }
            | Message::AcceptOk { .. }
            | Message::Nack { .. }
            | Message::ReadOk { .. }
            | Message::ReadNack { .. }
            | Message::ApplyOk { .. }
            | Message::PreAcceptRejected { .. }
            | Message::RecoverReply { .. } => self.on_coordinator_reply(now, from, message),
        }
    }

    /// Queues a message; messages to self are handled within this call.
    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        if to == self.id {
            self.loopback.push_back(message);
        } else {
            self.effects.messages.push((to, message));
        }
    }

    /// Refuses `ballot` for `txn_id`: this replica promised `promised`.
    pub(crate) fn nack(&mut self, to: NodeId, txn_id: TxnId, ballot: Ballot, promised: Ballot) {
        self.send(
            to,
            Message::Nack {
                txn_id,
                ballot,
                promised,
            },
        );
    }

    pub(crate) fn set_timer(&mut self, at: LocalTime, timer: Timer) {
        self.effects.timers.push((at, timer));
    }

    pub(crate) fn reply_client(&mut self, request_id: ClientRequestId, outcome: Outcome) {
        self.effects.replies.push((request_id, outcome));
    }

    fn arm_progress_timer(&mut self, now: LocalTime) {
        if !self.progress_timer_armed {
            self.progress_timer_armed = true;
            let at = now.after_micros(self.config.progress_interval_micros);
            self.set_timer(at, Timer::ProgressLog);
        }
    }

    /// A deterministic pseudo-random number (splitmix64) for jitter.
    pub(crate) fn next_random(&mut self) -> u64 {
        self.rng_state = self.rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn bug(&self, bug: ProtocolBug) -> bool {
        self.config.bug == Some(bug)
    }

    /// The keys of `txn` that this node replicates.
    pub(crate) fn owned_keys(&self, txn: &Txn) -> Vec<Key> {
        txn.keys()
            .iter()
            .filter(|key| self.topology.replicates(self.id, key))
            .cloned()
            .collect()
    }
}
