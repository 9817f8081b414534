//! Bounded state: per-shard durability rounds (a RejectBefore fence and a DurableBefore
//! watermark) and the garbage collection of command state they allow.
//!
//! One replica of each shard (its first) drives a round every `sync_interval_micros`:
//!
//! ```text
//!   bound = driver's HLC − sync_margin
//!   SyncFence(bound)   ──► every replica: RejectBefore = bound (Sync), reply every TxnId it
//!                          holds below bound. From now on a PreAccept of an unknown txn with
//!                          t0 < bound is rejected, so no new txn below bound can commit.
//!   SyncCheck(bound,U) ──► every replica: which of U (∪ what it holds below bound) is not
//!                          final here (Sync first, so "final" is durable); unknown ones are
//!                          fetched from peers. Repeated, growing U, until one round in which
//!                          every replica reports nothing pending and nothing unlisted.
//!   SyncDurable(bound) ──► every node: DurableBefore = bound (Sync), then erase each final
//!                          command whose executeAt (and TxnId) is below DurableBefore of every
//!                          shard it touches.
//! ```
//!
//! Why erasing is then safe (design/accord.md, "Bounded state"): every transaction below
//! `bound` that any replica knew when fenced is final on every replica; every other one can
//! never get a PreAccept quorum, so never commits. A command T with executeAt < bound is
//! applied on every replica, so no later transaction needs to wait for it; and every
//! conflicting transaction whose recovery could need T's deps as evidence (t0 below T's
//! executeAt, so below bound) is already decided or can never commit. Messages about an
//! unknown transaction below DurableBefore are answered as "applied everywhere" (CheckStatus),
//! rejected (PreAccept) or ignored, which replaces per-command tombstones.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::messages::Message;
use crate::node::Node;
use crate::timestamp::{LocalTime, NodeId, Timestamp, TxnId};
use crate::topology::ShardId;
use crate::txn::Txn;

/// The most unknown transactions one SyncCheck makes a replica fetch from its peers.
pub const SYNC_FETCH_PER_CHECK_MAX: usize = 64;
/// The most transactions one durability round tracks; a round that would track more is
/// abandoned and retried with a lower bound next interval.
pub const SYNC_ROUND_TXNS_MAX: usize = 200_000;
/// How long a durability round phase waits before resending to replicas that did not reply.
pub const SYNC_RESEND_MICROS: u64 = 100_000;

/// Per-shard watermarks of one replica, durable in the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// PreAccepts of unknown transactions with t0 below this are rejected.
    pub reject_before: BTreeMap<ShardId, Timestamp>,
    /// Every transaction below this is final on every replica of the shard or can never
    /// commit.
    pub durable_before: BTreeMap<ShardId, Timestamp>,
}

const WATERMARKS_VERSION: u8 = 1;

impl Watermarks {
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        encoder.u8(WATERMARKS_VERSION);
        for map in [&self.reject_before, &self.durable_before] {
            encoder.u32(map.len() as u32);
            for (shard, at) in map {
                encoder.u32(shard.0);
                encoder.timestamp(*at);
            }
        }
        encoder.buf
    }

    /// # Errors
    /// `Corruption` if the record does not decode.
    pub fn decode(bytes: &[u8]) -> Result<Watermarks> {
        let mut decoder = Decoder::new(bytes);
        let version = decoder.u8()?;
        if version != WATERMARKS_VERSION {
            return Err(Error::Corruption(format!(
                "unknown watermarks version {version}"
            )));
        }
        let mut maps = [BTreeMap::new(), BTreeMap::new()];
        for map in &mut maps {
            let n = decoder.u32()?;
            for _ in 0..n {
                let shard = ShardId(decoder.u32()?);
                map.insert(shard, decoder.timestamp()?);
            }
        }
        if !decoder.is_empty() {
            return Err(Error::Corruption("trailing bytes after watermarks".into()));
        }
        let [reject_before, durable_before] = maps;
        Ok(Watermarks {
            reject_before,
            durable_before,
        })
    }
}

/// Where a driver's round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPhase {
    Fence,
    Check,
}

/// A durability round this node drives for one shard.
#[derive(Debug, Clone)]
pub struct SyncRound {
    pub bound: Timestamp,
    pub phase: SyncPhase,
    /// Replicas that answered the current phase (or check pass).
    pub acks: BTreeSet<NodeId>,
    /// Every transaction below `bound` some replica reported.
    pub known: BTreeSet<TxnId>,
    /// Some replica reported something pending or unlisted in this check pass.
    pub dirty: bool,
    /// When the current phase (or pass) was last sent.
    pub sent_at: LocalTime,
}

impl Node {
    /// The lowest DurableBefore over every shard `txn` touches (ZERO if one is unknown): a
    /// transaction below it is final on every replica of every one of its shards.
    pub(crate) fn durable_before_of(&self, txn: &Txn) -> Timestamp {
        self.topology
            .shards_for_keys(txn.keys())
            .iter()
            .map(|shard| self.durable_before_shard(*shard))
            .min()
            .unwrap_or(Timestamp::ZERO)
    }

    /// The DurableBefore of `shard` as far as this node knows (every node hears of every
    /// shard's rounds).
    pub(crate) fn durable_before_shard(&self, shard: ShardId) -> Timestamp {
        self.watermarks
            .durable_before
            .get(&shard)
            .copied()
            .unwrap_or(Timestamp::ZERO)
    }

    /// The highest RejectBefore over the shards of `txn` this node replicates.
    pub(crate) fn reject_before_of(&self, txn: &Txn) -> Timestamp {
        self.owned_shards(txn)
            .iter()
            .filter_map(|shard| self.watermarks.reject_before.get(shard).copied())
            .max()
            .unwrap_or(Timestamp::ZERO)
    }

    /// The lowest DurableBefore over every shard: an unknown transaction below it is below
    /// the watermark of whichever shards it touches.
    pub(crate) fn durable_before_all(&self) -> Timestamp {
        self.topology
            .shards
            .iter()
            .map(|shard| self.durable_before_shard(shard.id))
            .min()
            .unwrap_or(Timestamp::ZERO)
    }

    /// The shards of `txn` this node replicates.
    pub(crate) fn owned_shards(&self, txn: &Txn) -> Vec<ShardId> {
        self.topology
            .shards_for_keys(txn.keys())
            .into_iter()
            .filter(|shard| self.topology.shard(*shard).is_replica(self.id))
            .collect()
    }

    /// Returns true (and answers or drops `message`) when it is about a transaction unknown
    /// here whose TxnId is below the DurableBefore watermark: it is applied on every replica
    /// or can never commit, so nothing may recreate its state.
    pub(crate) fn below_durable_before(&mut self, from: NodeId, message: &Message) -> bool {
        let Some(txn_id) = message.txn_id() else {
            return false;
        };
        if self.commands.contains_key(&txn_id) {
            return false;
        }
        let watermark = match message {
            Message::PreAccept { txn, .. }
            | Message::Accept { txn, .. }
            | Message::Commit { txn, .. }
            | Message::Apply { txn, .. }
            | Message::BeginRecovery { txn, .. } => self.durable_before_of(txn),
            Message::AcceptInvalidate { .. }
            | Message::CommitInvalidate { .. }
            | Message::CheckStatus { .. } => self.durable_before_all(),
            _ => return false,
        };
        if txn_id.timestamp() >= watermark {
            return false;
        }
        match message {
            Message::CheckStatus { txn_id } => self.answer_collected(from, *txn_id),
            Message::PreAccept { txn_id, .. } => {
                self.send(from, Message::PreAcceptRejected { txn_id: *txn_id });
            }
            _ => {}
        }
        true
    }

    /// Tells a peer blocked on a collected transaction that it is applied everywhere.
    pub(crate) fn answer_collected(&mut self, to: NodeId, txn_id: TxnId) {
        let knowledge = Box::new(crate::messages::Knowledge {
            status: crate::command::Status::Applied,
            txn: None,
            execute_at: Timestamp::ZERO,
            deps: crate::txn::Deps::new(),
            writes: None,
        });
        let durable_before = self.durable_before_list();
        self.send(
            to,
            Message::CheckStatusOk {
                txn_id,
                knowledge: Some(knowledge),
                durable_before,
            },
        );
    }

    /// This node's DurableBefore of every shard, for CheckStatusOk.
    pub(crate) fn durable_before_list(&self) -> Vec<(ShardId, Timestamp)> {
        self.watermarks
            .durable_before
            .iter()
            .map(|(shard, at)| (*shard, *at))
            .collect()
    }

    /// Adopts a peer's DurableBefore watermarks where they are ahead (each was published by
    /// a completed round, so it holds for every node).
    pub(crate) fn learn_durable_before(
        &mut self,
        now: LocalTime,
        durable_before: &[(ShardId, Timestamp)],
    ) -> Result<()> {
        let mut advanced = Vec::new();
        for (shard, bound) in durable_before {
            if self.topology.shards.iter().any(|s| s.id == *shard)
                && self.durable_before_shard(*shard) < *bound
            {
                advanced.push((*shard, *bound));
            }
        }
        for (shard, bound) in advanced {
            self.on_sync_durable(now, shard, bound)?;
        }
        Ok(())
    }

    /// Starts or pushes on the durability rounds this node drives (one per shard whose first
    /// replica it is).
    pub(crate) fn drive_sync(&mut self, now: LocalTime) {
        if !self.config.gc_enabled {
            return;
        }
        let driven: Vec<(ShardId, Vec<NodeId>)> = self
            .topology
            .shards
            .iter()
            .filter(|shard| shard.replicas.first() == Some(&self.id))
            .map(|shard| (shard.id, shard.replicas.clone()))
            .collect();
        for (shard, replicas) in driven {
            match self.sync_rounds.get(&shard).cloned() {
                None => {
                    let last = self.sync_last_end.get(&shard).copied().unwrap_or_default();
                    if now.0.saturating_sub(last.0) < self.config.sync_interval_micros {
                        continue;
                    }
                    let hlc = self.hlc.unique_now(now);
                    let bound = Timestamp::new(
                        hlc.epoch,
                        hlc.hlc.saturating_sub(self.config.sync_margin_micros),
                        0,
                        NodeId(0),
                    );
                    let durable = self.watermarks.durable_before.get(&shard).copied();
                    if durable.is_some_and(|at| at >= bound) {
                        continue;
                    }
                    self.sync_rounds.insert(
                        shard,
                        SyncRound {
                            bound,
                            phase: SyncPhase::Fence,
                            acks: BTreeSet::new(),
                            known: BTreeSet::new(),
                            dirty: false,
                            sent_at: now,
                        },
                    );
                    for replica in replicas {
                        self.send(replica, Message::SyncFence { shard, bound });
                    }
                }
                Some(round) => {
                    if now.0.saturating_sub(round.sent_at.0) < SYNC_RESEND_MICROS {
                        continue;
                    }
                    if let Some(round) = self.sync_rounds.get_mut(&shard) {
                        round.sent_at = now;
                    }
                    let message = match round.phase {
                        SyncPhase::Fence => Message::SyncFence {
                            shard,
                            bound: round.bound,
                        },
                        SyncPhase::Check => Message::SyncCheck {
                            shard,
                            bound: round.bound,
                            txns: round.known.iter().copied().collect(),
                        },
                    };
                    for replica in replicas {
                        if !round.acks.contains(&replica) {
                            self.send(replica, message.clone());
                        }
                    }
                }
            }
        }
    }

    /// Every transaction this node holds below `bound` on `shard` (stubs without a
    /// definition count for every shard: their keys are unknown).
    fn held_below(&self, shard: ShardId, bound: Timestamp) -> BTreeSet<TxnId> {
        let mut held = BTreeSet::new();
        for (key, state) in &self.keys {
            if self.topology.shard_for_key(key).id != shard {
                continue;
            }
            held.extend(
                state
                    .txns
                    .iter()
                    .take_while(|id| id.timestamp() < bound)
                    .filter(|id| self.commands.contains_key(id)),
            );
        }
        held.extend(
            self.commands
                .values()
                .take_while(|command| command.txn_id.timestamp() < bound)
                .filter(|command| command.txn.is_none())
                .map(|command| command.txn_id),
        );
        held
    }

    pub(crate) fn on_sync_fence(
        &mut self,
        from: NodeId,
        shard: ShardId,
        bound: Timestamp,
    ) -> Result<()> {
        let fence = self.watermarks.reject_before.entry(shard).or_default();
        if *fence < bound {
            *fence = bound;
            self.journal.record_watermarks(&self.watermarks)?;
        }
        // This node's own transactions must start above the fence, or every replica rejects
        // them: the round's driver may run its clock far ahead of this node's (design/accord.md,
        // "A node behind the fence").
        self.hlc.witness(bound);
        let known = self.held_below(shard, bound).into_iter().collect();
        self.send(
            from,
            Message::SyncFenceOk {
                shard,
                bound,
                known,
            },
        );
        Ok(())
    }

    pub(crate) fn on_sync_fence_ok(
        &mut self,
        now: LocalTime,
        from: NodeId,
        shard: ShardId,
        bound: Timestamp,
        known: Vec<TxnId>,
    ) {
        let replicas = self.topology.shard(shard).replicas.clone();
        let Some(round) = self.sync_rounds.get_mut(&shard) else {
            return;
        };
        if round.bound != bound || round.phase != SyncPhase::Fence {
            return;
        }
        round.known.extend(known);
        round.acks.insert(from);
        if replicas.iter().all(|replica| round.acks.contains(replica)) {
            round.phase = SyncPhase::Check;
            self.send_sync_check(now, shard);
        }
    }

    fn send_sync_check(&mut self, now: LocalTime, shard: ShardId) {
        let replicas = self.topology.shard(shard).replicas.clone();
        let Some(round) = self.sync_rounds.get_mut(&shard) else {
            return;
        };
        if round.known.len() > SYNC_ROUND_TXNS_MAX {
            // Too much to track in one round: give up; the next round starts later.
            self.sync_rounds.remove(&shard);
            self.sync_last_end.insert(shard, now);
            return;
        }
        round.acks.clear();
        round.dirty = false;
        round.sent_at = now;
        let message = Message::SyncCheck {
            shard,
            bound: round.bound,
            txns: round.known.iter().copied().collect(),
        };
        for replica in replicas {
            self.send(replica, message.clone());
        }
    }

    pub(crate) fn on_sync_check(
        &mut self,
        from: NodeId,
        shard: ShardId,
        bound: Timestamp,
        txns: Vec<TxnId>,
    ) -> Result<()> {
        // Make every "final" this reply reports durable (a Sync write flushes earlier
        // buffered applies).
        self.journal.record_watermarks(&self.watermarks)?;
        let durable = Some(self.durable_before_shard(shard));
        let listed: BTreeSet<TxnId> = txns.iter().copied().collect();
        let mut pending = Vec::new();
        let mut unknown = Vec::new();
        for txn_id in &txns {
            match self.commands.get(txn_id) {
                Some(command) if command.status.is_final() => {}
                Some(_) => pending.push(*txn_id),
                None if self.erased.contains(txn_id)
                    || durable.is_some_and(|at| txn_id.timestamp() < at) => {}
                None => {
                    pending.push(*txn_id);
                    unknown.push(*txn_id);
                }
            }
        }
        let mut extra = Vec::new();
        for txn_id in self.held_below(shard, bound) {
            if !listed.contains(&txn_id) {
                extra.push(txn_id);
            }
            let is_final = self.commands[&txn_id].status.is_final();
            if !is_final && !listed.contains(&txn_id) {
                pending.push(txn_id);
            }
        }
        // Learn what this replica missed (an Apply or Commit that never arrived).
        for txn_id in unknown.into_iter().take(SYNC_FETCH_PER_CHECK_MAX) {
            let peers: Vec<NodeId> = self
                .topology
                .shard(shard)
                .replicas
                .iter()
                .copied()
                .filter(|node| *node != self.id)
                .collect();
            for peer in peers {
                self.send(peer, Message::CheckStatus { txn_id });
            }
        }
        self.send(
            from,
            Message::SyncCheckOk {
                shard,
                bound,
                pending,
                extra,
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_sync_check_ok(
        &mut self,
        now: LocalTime,
        from: NodeId,
        shard: ShardId,
        bound: Timestamp,
        pending: Vec<TxnId>,
        extra: Vec<TxnId>,
    ) {
        let replicas = self.topology.shard(shard).replicas.clone();
        let Some(round) = self.sync_rounds.get_mut(&shard) else {
            return;
        };
        if round.bound != bound || round.phase != SyncPhase::Check || round.acks.contains(&from) {
            return;
        }
        round.acks.insert(from);
        if !pending.is_empty() || !extra.is_empty() {
            round.dirty = true;
        }
        round.known.extend(extra);
        if !replicas.iter().all(|replica| round.acks.contains(replica)) {
            return;
        }
        if round.dirty {
            // Check again on the next progress tick, not at once: what is pending needs time
            // to finish.
            round.acks.clear();
            round.dirty = false;
            round.sent_at = LocalTime(0);
            return;
        }
        self.sync_rounds.remove(&shard);
        self.sync_last_end.insert(shard, now);
        // Every node, not only the shard's replicas: a node may erase a transaction only once
        // every shard it touches is durable past it.
        for node in self.topology.nodes() {
            self.send(node, Message::SyncDurable { shard, bound });
        }
    }

    pub(crate) fn on_sync_durable(
        &mut self,
        now: LocalTime,
        shard: ShardId,
        bound: Timestamp,
    ) -> Result<()> {
        // DurableBefore raises RejectBefore here: new transactions start above it.
        self.hlc.witness(bound);
        let durable = self.watermarks.durable_before.entry(shard).or_default();
        if *durable >= bound {
            return Ok(());
        }
        *durable = bound;
        if self.topology.shard(shard).is_replica(self.id) {
            let fence = self.watermarks.reject_before.entry(shard).or_default();
            *fence = (*fence).max(bound);
        }
        self.journal.record_watermarks(&self.watermarks)?;
        self.release_collected_deps(now)?;
        let foreign: Vec<TxnId> =
            self.commands
                .values()
                .filter(|command| {
                    !command.status.is_final()
                        && command.txn.as_ref().is_some_and(|txn| {
                            command.txn_id.timestamp() < self.durable_before_of(txn)
                        })
                })
                .map(|command| command.txn_id)
                .collect();
        for txn_id in foreign {
            self.finish_collected_foreign(now, txn_id)?;
        }
        self.collect_garbage()
    }

    /// A non-final command below the DurableBefore watermark of every shard it touches. One
    /// that touches none of this node's keys (learned to follow a dep) is final on every
    /// replica of its shards: nothing is left to do here, so it counts as applied. One with
    /// keys here was brought back by a late message after it was collected: it is dropped.
    pub(crate) fn finish_collected_foreign(&mut self, now: LocalTime, txn_id: TxnId) -> Result<()> {
        let Some(command) = self.commands.get(&txn_id) else {
            return Ok(());
        };
        let foreign = command
            .txn
            .as_ref()
            .is_some_and(|txn| self.owned_keys(txn).is_empty());
        if command.status.is_final() {
            return Ok(());
        }
        if !foreign {
            // Below the watermark every replica of its shards (this one included) had it
            // final when the round checked, so this is a copy a late message (under a stale
            // watermark) brought back after it was collected: drop it.
            self.commands.remove(&txn_id);
            self.journal.erase(&[txn_id])?;
            self.erased.insert(txn_id);
            self.changed.push_back(txn_id);
            return Ok(());
        }
        let command = self.commands.get_mut(&txn_id).expect("exists");
        command.status = crate::command::Status::Applied;
        command.pending_reads.clear();
        command.last_change = now;
        self.journal.record(
            command,
            concord_storage::engine::WriteBatch::new(),
            concord_storage::engine::Durability::Buffered,
        )?;
        self.changed.push_back(txn_id);
        Ok(())
    }

    /// Releases commands waiting on deps the new watermark covers (unknown here, final on
    /// every replica of their shards or never committed).
    fn release_collected_deps(&mut self, now: LocalTime) -> Result<()> {
        let unknown: Vec<TxnId> = self
            .blocked_by
            .keys()
            .copied()
            .filter(|dep| !self.commands.contains_key(dep))
            .collect();
        let mut released = Vec::new();
        for dep in unknown {
            let dependents = self.blocked_by.get(&dep).cloned().unwrap_or_default();
            let mut still = BTreeSet::new();
            for dependent in dependents {
                let collected = self
                    .commands
                    .get(&dependent)
                    .is_some_and(|command| self.collected_dep(dep, command.deps.keys_of(dep)));
                if collected {
                    if let Some(command) = self.commands.get_mut(&dependent) {
                        command.waiting_on.remove(&dep);
                    }
                    released.push(dependent);
                } else if self.commands.contains_key(&dependent) {
                    still.insert(dependent);
                }
            }
            if still.is_empty() {
                self.blocked_by.remove(&dep);
            } else {
                self.blocked_by.insert(dep, still);
            }
        }
        for dependent in released {
            self.try_execute(now, dependent)?;
        }
        Ok(())
    }

    /// Erases every final command below the DurableBefore watermark of every shard of it
    /// that this node replicates, prunes empty per-key state below the watermark, and drops
    /// learned "applied everywhere" marks nothing waits on any more.
    pub(crate) fn collect_garbage(&mut self) -> Result<()> {
        let everywhere = self.durable_before_all();
        let mut erase = Vec::new();
        for command in self.commands.values() {
            if !command.status.is_final() {
                continue;
            }
            let below = match &command.txn {
                Some(txn) => {
                    let watermark = self.durable_before_of(txn);
                    command.txn_id.timestamp() < watermark
                        && (command.status == crate::command::Status::Invalidated
                            || command.execute_at < watermark)
                }
                None => command.txn_id.timestamp() < everywhere,
            };
            if below && !self.blocked_by.contains_key(&command.txn_id) {
                erase.push(command.txn_id);
            }
        }
        for txn_id in &erase {
            if let Some(command) = self.commands.remove(txn_id)
                && let Some(txn) = &command.txn
            {
                for key in self.owned_keys(txn) {
                    if let Some(state) = self.keys.get_mut(&key) {
                        state.txns.remove(txn_id);
                    }
                }
            }
            self.learned.remove(txn_id);
        }
        self.journal.erase(&erase)?;
        let topology = self.topology.clone();
        let durable = self.watermarks.durable_before.clone();
        self.keys.retain(|key, state| {
            let shard = topology.shard_for_key(key).id;
            let watermark = durable.get(&shard).copied().unwrap_or(Timestamp::ZERO);
            !state.txns.is_empty() || state.max_any >= watermark
        });
        let everywhere_floor = everywhere;
        let blocked = &self.blocked_by;
        self.erased.retain(|txn_id| {
            blocked.contains_key(txn_id) && txn_id.timestamp() >= everywhere_floor
        });
        let learned_floor = everywhere;
        self.learned
            .retain(|txn_id, _| txn_id.timestamp() >= learned_floor);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Epoch;

    #[test]
    fn watermarks_round_trip_and_reject_corruption() {
        let mut watermarks = Watermarks::default();
        let at = Timestamp::new(Epoch(1), 42, 0, NodeId(0));
        watermarks.reject_before.insert(ShardId(2), at);
        watermarks.durable_before.insert(ShardId(2), at);
        watermarks
            .durable_before
            .insert(ShardId(0), Timestamp::ZERO);
        let bytes = watermarks.encode();
        assert_eq!(Watermarks::decode(&bytes).unwrap(), watermarks);
        assert_eq!(
            Watermarks::decode(&Watermarks::default().encode()).unwrap(),
            Watermarks::default()
        );
        for cut in [0, 1, bytes.len() - 1] {
            assert!(Watermarks::decode(&bytes[..cut]).is_err());
        }
    }
}
