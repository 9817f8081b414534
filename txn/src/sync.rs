//! Bounded state: per-shard durability rounds (a RejectBefore fence, an applied-before floor
//! and a DurableBefore watermark) and the garbage collection of command state they allow.
//!
//! One replica of each shard (its first; another takes over when the floor stops moving)
//! drives a round every `sync_interval_micros`:
//!
//! ```text
//!   bound = driver's HLC − sync_margin
//!   SyncFence(bound)   ──► every replica: RejectBefore = bound (Sync), reply every TxnId it
//!                          holds below bound. From now on a PreAccept of an unknown txn with
//!                          t0 < bound is rejected. The driver goes on with a quorum of replies.
//!   SyncCheck(bound,pass,U) ──► every replica: fence too; which of U (∪ what it holds below
//!                          bound) is not final here; unknown ones are fetched from peers. A
//!                          clean answer (nothing pending, nothing unlisted) raises the
//!                          replica's CleanBefore promise; the answer follows a Sync. Repeated,
//!                          growing U.
//!   SyncApplied(bound) ──► once a quorum answered one pass clean, to those replicas: their
//!                          applied-before floor = bound (the applied level).
//!   SyncDurable(bound) ──► once every replica answered one pass clean, to every node:
//!                          DurableBefore = bound (Sync), then erase each final command whose
//!                          executeAt (and TxnId) is below DurableBefore of every shard it
//!                          touches. With a replica silent after the applied level, the round
//!                          ends without it.
//! ```
//!
//! Why the floor is sound (design/accord.md, "Two levels"): a transaction in the clean pass's
//! list is final on the replica; any other one below `bound` was voted for by no member of the
//! fence quorum, so it took neither path, and a recovery meets the clean quorum at a replica
//! that either held it (then it was listed) or, having promised, answers that it cannot have
//! taken the fast path (`fenced_off_unknown`), so recovery invalidates it.
//!
//! Why erasing is safe (design/accord.md, "Bounded state"): every transaction below
//! `bound` that any replica knew when it answered is final on every replica; every other one
//! never commits. A command T with executeAt < bound is
//! applied on every replica, so no later transaction needs to wait for it; and every
//! conflicting transaction whose recovery could need T's deps as evidence (t0 below T's
//! executeAt, so below bound) is already decided or can never commit. Messages about an
//! unknown transaction below DurableBefore are answered as "applied everywhere" (CheckStatus),
//! rejected (PreAccept) or ignored, which replaces per-command tombstones.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::messages::Message;
use crate::node::{Node, ProtocolBug};
use crate::timestamp::{LocalTime, NodeId, Timestamp, TxnId};
use crate::topology::ShardId;
use crate::txn::Txn;
use concord_storage::partitioner::TokenRange;

/// The most unknown transactions one SyncCheck makes a replica fetch from its peers.
pub const SYNC_FETCH_PER_CHECK_MAX: usize = 64;
/// The most transactions one durability round tracks; a round that would track more is
/// abandoned and retried with a lower bound next interval.
pub const SYNC_ROUND_TXNS_MAX: usize = 200_000;
/// How long a durability round phase waits before resending to replicas that did not reply.
pub const SYNC_RESEND_MICROS: u64 = 100_000;
/// How many round intervals without its applied-before floor moving a replica waits, per
/// position after the first in the shard's replica list, before it drives the shard's rounds
/// itself (the first replica, the usual driver, may be down).
pub const SYNC_TAKEOVER_INTERVALS: u64 = 5;

/// The bound that seals every epoch before `next`: the lowest timestamp of `next`, so every
/// transaction of an earlier epoch is below it and every one of `next` at or above it.
pub fn epoch_seal_bound(next: crate::timestamp::Epoch) -> Timestamp {
    Timestamp::new(next, 0, 0, NodeId(0))
}

/// Per-shard watermarks of one replica, durable in the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// PreAccepts of unknown transactions with t0 below this are rejected.
    pub reject_before: BTreeMap<ShardId, Timestamp>,
    /// Every transaction below this is final on every replica of the shard or can never
    /// commit.
    pub durable_before: BTreeMap<ShardId, Timestamp>,
    /// The highest bound at which this replica answered a round's check pass with nothing
    /// pending and nothing unlisted. Its promise: an unknown transaction below it (and at or
    /// above DurableBefore) is answered in recovery as one that cannot have taken the fast
    /// path (`Node::fenced_off_unknown`).
    pub clean_before: BTreeMap<ShardId, Timestamp>,
    /// The applied-before floor: every transaction below it on the shard that can still
    /// commit is applied (or invalidated) on this replica. Raised by `SyncApplied` once a
    /// quorum of the shard's replicas answered one check pass clean.
    pub applied_before: BTreeMap<ShardId, Timestamp>,
}

/// Version 2 added `clean_before` and `applied_before`; version 1 records still decode (with
/// both empty).
const WATERMARKS_VERSION: u8 = 2;

impl Watermarks {
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        encoder.u8(WATERMARKS_VERSION);
        for map in [
            &self.reject_before,
            &self.durable_before,
            &self.clean_before,
            &self.applied_before,
        ] {
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
        let map_count = match version {
            1 => 2,
            WATERMARKS_VERSION => 4,
            _ => {
                return Err(Error::Corruption(format!(
                    "unknown watermarks version {version}"
                )));
            }
        };
        let mut maps = [
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        ];
        for map in maps.iter_mut().take(map_count) {
            let n = decoder.u32()?;
            for _ in 0..n {
                let shard = ShardId(decoder.u32()?);
                map.insert(shard, decoder.timestamp()?);
            }
        }
        if !decoder.is_empty() {
            return Err(Error::Corruption("trailing bytes after watermarks".into()));
        }
        let [reject_before, durable_before, clean_before, applied_before] = maps;
        Ok(Watermarks {
            reject_before,
            durable_before,
            clean_before,
            applied_before,
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
    /// The current check pass; replies of another pass are ignored.
    pub pass: u32,
    /// Replicas that answered the current phase (or check pass).
    pub acks: BTreeSet<NodeId>,
    /// Replicas that answered the current check pass with nothing pending and nothing
    /// unlisted.
    pub clean: BTreeSet<NodeId>,
    /// Replicas sent `SyncApplied` in this round (the applied level is reached once a quorum
    /// answered one pass clean).
    pub applied_to: BTreeSet<NodeId>,
    /// Every transaction below `bound` some replica reported.
    pub known: BTreeSet<TxnId>,
    /// Some replica reported something pending or unlisted in this check pass.
    pub dirty: bool,
    /// When the current phase (or pass) was last sent.
    pub sent_at: LocalTime,
}

/// The size of a slow quorum (a simple majority) of `replicas`.
fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
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
                epoch: self.topology.epoch,
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

    /// Starts or pushes on the durability rounds this node drives: one per shard whose first
    /// replica it is, and, as a fallback, one per shard it replicates whose applied-before
    /// floor has not moved here for a while (the first replica is down or cut off): the
    /// replica at position `i` takes over after `i × SYNC_TAKEOVER_INTERVALS` intervals.
    pub(crate) fn drive_sync(&mut self, now: LocalTime) {
        if !self.config.gc_enabled {
            return;
        }
        let interval = self.config.sync_interval_micros;
        let mut driven: Vec<(ShardId, Vec<NodeId>)> = Vec::new();
        for shard in &self.topology.shards {
            let Some(position) = shard.replicas.iter().position(|node| *node == self.id) else {
                continue;
            };
            let moved = *self.sync_floor_moved.entry(shard.id).or_insert(now);
            let takeover = interval
                .saturating_mul(SYNC_TAKEOVER_INTERVALS)
                .saturating_mul(position as u64);
            if position == 0
                || self.sync_rounds.contains_key(&shard.id)
                || now.0.saturating_sub(moved.0) >= takeover
            {
                driven.push((shard.id, shard.replicas.clone()));
            }
        }
        for (shard, replicas) in driven {
            // An epoch seal not yet durable on this shard: rounds run at the seal's bound (the
            // first at once), and go on after the applied level until every replica is
            // durable, since a replica that missed one round's applied level needs another.
            let seal = self
                .seal
                .filter(|seal| self.durable_before_shard(shard) < *seal);
            match self.sync_rounds.get(&shard).cloned() {
                None => {
                    let last = self.sync_last_end.get(&shard).copied().unwrap_or_default();
                    let first_sealed = seal.is_some() && !self.sealed_rounds.contains(&shard);
                    if now.0.saturating_sub(last.0) < interval && !first_sealed {
                        continue;
                    }
                    let hlc = self.hlc.unique_now(now);
                    let mut bound = Timestamp::new(
                        hlc.epoch,
                        hlc.hlc.saturating_sub(self.config.sync_margin_micros),
                        0,
                        NodeId(0),
                    );
                    if let Some(seal) = seal {
                        bound = bound.max(seal);
                        self.sealed_rounds.insert(shard);
                    }
                    let floor = self.applied_before_shard(shard);
                    if floor >= bound && seal.is_none() {
                        continue;
                    }
                    self.sync_rounds.insert(
                        shard,
                        SyncRound {
                            bound,
                            phase: SyncPhase::Fence,
                            pass: 0,
                            acks: BTreeSet::new(),
                            clean: BTreeSet::new(),
                            applied_to: BTreeSet::new(),
                            known: BTreeSet::new(),
                            dirty: false,
                            sent_at: now,
                        },
                    );
                    for replica in replicas {
                        self.send(
                            replica,
                            Message::SyncFence {
                                epoch: self.topology.epoch,
                                shard,
                                bound,
                            },
                        );
                    }
                }
                Some(round) => {
                    if now.0.saturating_sub(round.sent_at.0) < SYNC_RESEND_MICROS {
                        continue;
                    }
                    if round.phase == SyncPhase::Check {
                        let everyone = replicas.iter().all(|replica| round.acks.contains(replica));
                        if !everyone && !round.applied_to.is_empty() {
                            // The applied level is reached and a replica does not answer:
                            // DurableBefore waits for a later round; start one after the
                            // interval, so the floor keeps moving with that replica down.
                            self.sync_rounds.remove(&shard);
                            self.sync_last_end.insert(shard, now);
                            continue;
                        }
                        if round.dirty && round.acks.len() >= majority(replicas.len()) {
                            // Check again (with what was reported): what is pending needs
                            // time to finish, and a replica that does not answer must not
                            // hold the others' pass back.
                            self.send_sync_check(now, shard);
                            continue;
                        }
                    }
                    if let Some(round) = self.sync_rounds.get_mut(&shard) {
                        round.sent_at = now;
                    }
                    let message = match round.phase {
                        SyncPhase::Fence => Message::SyncFence {
                            epoch: self.topology.epoch,
                            shard,
                            bound: round.bound,
                        },
                        SyncPhase::Check => Message::SyncCheck {
                            epoch: self.topology.epoch,
                            shard,
                            bound: round.bound,
                            pass: round.pass,
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

    /// Seals the epoch before `bound` (an epoch transition, design/cluster.md "Epoch
    /// transitions"): every durability round this node drives runs at `bound` until the
    /// shard's DurableBefore reaches it, so every replica fences off (rejects) each unknown
    /// transaction below it and applies every one that can still commit. The caller stops
    /// coordinating new transactions of the old epoch first. A lower bound than the current
    /// seal is ignored.
    pub fn seal(&mut self, bound: Timestamp) {
        if self.seal.is_none_or(|seal| seal < bound) {
            self.seal = Some(bound);
            self.sealed_rounds.clear();
        }
    }

    /// Whether every shard this node replicates has its applied-before floor at or above
    /// `bound`: every transaction below it that can still commit is applied here.
    pub fn sealed_locally(&self, bound: Timestamp) -> bool {
        self.topology
            .shards
            .iter()
            .filter(|shard| shard.is_replica(self.id))
            .all(|shard| self.applied_before_shard(shard.id) >= bound)
    }

    /// Whether this node replicates every token of `range` and its applied-before floor is at
    /// or above `bound` on each shard meeting the range: its rows of the range hold every
    /// write below `bound` (a source for a node that gains the range).
    pub fn applied_covers(&self, range: &TokenRange, bound: Timestamp) -> bool {
        let meeting: Vec<&crate::topology::Shard> = self
            .topology
            .shards
            .iter()
            .filter(|shard| shard.range.meets(range))
            .collect();
        !meeting.is_empty()
            && meeting.iter().all(|shard| {
                shard.is_replica(self.id) && self.applied_before_shard(shard.id) >= bound
            })
    }

    /// Adopts the floor of an epoch entered through a completed transition: every
    /// transaction below `bound` (every one of the earlier epochs) is applied on every
    /// replica of the new topology, each having applied its kept ranges and fetched the rows
    /// of the ranges it gained. Sets every watermark of every shard to at least `bound` and
    /// drops watermarks of shard ids the topology does not have (shard ids name other ranges
    /// in another epoch, so an earlier epoch's watermarks must not carry over).
    ///
    /// # Errors
    /// When the journal cannot record the watermarks.
    pub fn adopt_epoch_floor(
        &mut self,
        now: LocalTime,
        bound: Timestamp,
    ) -> Result<crate::node::Effects> {
        let shards: Vec<ShardId> = self.topology.shards.iter().map(|shard| shard.id).collect();
        for map in [
            &mut self.watermarks.reject_before,
            &mut self.watermarks.durable_before,
            &mut self.watermarks.clean_before,
            &mut self.watermarks.applied_before,
        ] {
            map.retain(|shard, _| shards.contains(shard));
            for shard in &shards {
                let at = map.entry(*shard).or_default();
                *at = (*at).max(bound);
            }
        }
        // New transactions start above every fence kept (the seal's rounds may have fenced
        // above `bound`, in the new epoch).
        let highest = self
            .watermarks
            .reject_before
            .values()
            .copied()
            .max()
            .unwrap_or(bound);
        self.hlc.witness(highest.max(bound));
        self.journal.record_watermarks(&self.watermarks)?;
        self.release_collected_deps(now)?;
        let foreign: Vec<TxnId> = self
            .commands
            .values()
            .filter(|command| !command.status.is_final() && command.txn_id.timestamp() < bound)
            .map(|command| command.txn_id)
            .collect();
        for txn_id in foreign {
            self.finish_collected_foreign(now, txn_id)?;
        }
        self.collect_garbage()?;
        self.drain(now)?;
        self.journal.flush()?;
        Ok(std::mem::take(&mut self.effects))
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
                epoch: self.topology.epoch,
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
        if round.bound != bound || round.phase != SyncPhase::Fence || !replicas.contains(&from) {
            return;
        }
        round.known.extend(known);
        round.acks.insert(from);
        // A quorum fenced is enough: every commit quorum (fast or slow) meets it, and a
        // replica that fences later does so when it answers the check (`on_sync_check`),
        // reporting what it holds as `extra`.
        if round.acks.len() >= majority(replicas.len()) {
            round.phase = SyncPhase::Check;
            self.send_sync_check(now, shard);
        }
    }

    /// Starts the next check pass of `shard`'s round.
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
        round.pass += 1;
        round.acks.clear();
        round.clean.clear();
        round.dirty = false;
        round.sent_at = now;
        let message = Message::SyncCheck {
            epoch: self.topology.epoch,
            shard,
            bound: round.bound,
            pass: round.pass,
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
        pass: u32,
        txns: Vec<TxnId>,
    ) -> Result<()> {
        // The check fences too: a replica that missed the fence (the driver moves on with a
        // quorum) must reject PreAccepts below `bound` before it reports what it holds.
        let fence = self.watermarks.reject_before.entry(shard).or_default();
        *fence = (*fence).max(bound);
        self.hlc.witness(bound);
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
        if pending.is_empty() && extra.is_empty() {
            // The promise behind the applied level: from now on an unknown transaction below
            // `bound` is answered in recovery as fenced off (`fenced_off_unknown`).
            let clean = self.watermarks.clean_before.entry(shard).or_default();
            *clean = (*clean).max(bound);
        }
        // Make the fence, the promise and every "final" this reply reports durable (a Sync
        // write flushes earlier buffered applies).
        self.journal.record_watermarks(&self.watermarks)?;
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
                epoch: self.topology.epoch,
                shard,
                bound,
                pass,
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
        pass: u32,
        pending: Vec<TxnId>,
        extra: Vec<TxnId>,
    ) {
        let replicas = self.topology.shard(shard).replicas.clone();
        let applied_bug = self.bug(ProtocolBug::AppliedFloorFromAnyReply);
        let Some(round) = self.sync_rounds.get_mut(&shard) else {
            return;
        };
        if round.bound != bound
            || round.phase != SyncPhase::Check
            || round.pass != pass
            || round.acks.contains(&from)
            || !replicas.contains(&from)
        {
            return;
        }
        round.acks.insert(from);
        if pending.is_empty() && extra.is_empty() {
            round.clean.insert(from);
        } else {
            round.dirty = true;
        }
        round.known.extend(extra);
        // The applied level: a quorum answered this pass clean. Each of them has applied
        // every transaction below `bound` that can still commit (design/accord.md, "Two
        // levels").
        let quorum = if applied_bug {
            &round.acks
        } else {
            &round.clean
        };
        if quorum.len() >= majority(replicas.len()) {
            let to: Vec<NodeId> = quorum.difference(&round.applied_to).copied().collect();
            round.applied_to.extend(to.iter().copied());
            for node in to {
                self.send(
                    node,
                    Message::SyncApplied {
                        epoch: self.topology.epoch,
                        shard,
                        bound,
                    },
                );
            }
        }
        let Some(round) = self.sync_rounds.get_mut(&shard) else {
            return;
        };
        if !replicas.iter().all(|replica| round.acks.contains(replica)) {
            return;
        }
        if round.dirty {
            // Check again on the next progress tick, not at once: what is pending needs time
            // to finish.
            round.sent_at = LocalTime(0);
            return;
        }
        self.sync_rounds.remove(&shard);
        self.sync_last_end.insert(shard, now);
        // Every node, not only the shard's replicas: a node may erase a transaction only once
        // every shard it touches is durable past it.
        for node in self.topology.nodes() {
            self.send(
                node,
                Message::SyncDurable {
                    epoch: self.topology.epoch,
                    shard,
                    bound,
                },
            );
        }
    }

    /// Raises this replica's applied-before floor of `shard` to `bound`: a quorum of the
    /// shard's replicas, this one among them, answered one check pass at `bound` clean.
    pub(crate) fn on_sync_applied(
        &mut self,
        now: LocalTime,
        shard: ShardId,
        bound: Timestamp,
    ) -> Result<()> {
        if !self.topology.shard(shard).is_replica(self.id)
            || self.applied_before_shard(shard) >= bound
        {
            return Ok(());
        }
        // Only a replica that promised (answered clean at `bound`) may raise its floor; the
        // driver sends SyncApplied to no other, so this only guards against a bug.
        let promised = self
            .watermarks
            .clean_before
            .get(&shard)
            .is_some_and(|at| *at >= bound);
        if !promised && !self.bug(ProtocolBug::AppliedFloorFromAnyReply) {
            return Ok(());
        }
        self.hlc.witness(bound);
        self.watermarks.applied_before.insert(shard, bound);
        self.sync_floor_moved.insert(shard, now);
        self.journal.record_watermarks(&self.watermarks)
    }

    /// The applied-before floor of `shard` here: every transaction below it on the shard that
    /// can still commit is applied (or invalidated) on this node. DurableBefore is one too.
    pub(crate) fn applied_before_shard(&self, shard: ShardId) -> Timestamp {
        let applied = self
            .watermarks
            .applied_before
            .get(&shard)
            .copied()
            .unwrap_or(Timestamp::ZERO);
        applied.max(self.durable_before_shard(shard))
    }

    /// The lowest applied-before floor over the shards this node replicates (`None` if it
    /// replicates none): every write below it this node will ever apply is applied.
    pub(crate) fn applied_before_owned(&self) -> Option<Timestamp> {
        self.topology
            .shards
            .iter()
            .filter(|shard| shard.is_replica(self.id))
            .map(|shard| self.applied_before_shard(shard.id))
            .min()
    }

    /// Returns true when recovery may be told that `txn_id` (unknown here) cannot have taken
    /// the fast path: on a shard of it this node replicates, it answered a check pass clean
    /// at a bound above t0 (and t0 is at or above DurableBefore, so it was not collected
    /// here). Such a transaction was in no replica's report of that round's fence quorum, so
    /// no member of that quorum ever voted for it, and every fast quorum meets it.
    pub(crate) fn fenced_off_unknown(&self, txn_id: TxnId, txn: &Txn) -> bool {
        if self.commands.contains_key(&txn_id)
            || self.erased.contains(&txn_id)
            || self.bug(ProtocolBug::RecoveryIgnoresCleanPromise)
        {
            return false;
        }
        let t0 = txn_id.timestamp();
        self.owned_shards(txn).into_iter().any(|shard| {
            let clean = self
                .watermarks
                .clean_before
                .get(&shard)
                .copied()
                .unwrap_or(Timestamp::ZERO);
            self.durable_before_shard(shard) <= t0 && t0 < clean
        })
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
        self.sync_floor_moved.insert(shard, now);
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
        watermarks.clean_before.insert(ShardId(2), at);
        watermarks.applied_before.insert(ShardId(2), at);
        assert_eq!(
            Watermarks::decode(&watermarks.encode()).unwrap(),
            watermarks
        );
    }

    /// A version-1 record (before the applied level) still decodes, with no promise and no
    /// applied-before floor.
    #[test]
    fn version_1_watermarks_still_decode() {
        let at = Timestamp::new(Epoch(1), 42, 0, NodeId(0));
        let mut encoder = Encoder::default();
        encoder.u8(1);
        for _ in 0..2 {
            encoder.u32(1);
            encoder.u32(7);
            encoder.timestamp(at);
        }
        let decoded = Watermarks::decode(&encoder.buf).unwrap();
        assert_eq!(decoded.reject_before, BTreeMap::from([(ShardId(7), at)]));
        assert_eq!(decoded.durable_before, BTreeMap::from([(ShardId(7), at)]));
        assert!(decoded.clean_before.is_empty() && decoded.applied_before.is_empty());
        let mut unknown = encoder.buf.clone();
        unknown[0] = 3;
        assert!(Watermarks::decode(&unknown).is_err());
    }
}
