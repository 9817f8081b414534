//! The coordinator side: one [`Coordination`] per transaction this node drives, either as its
//! original coordinator (ballot ZERO, a client waiting) or as a recovery coordinator.
//!
//! ```text
//!   PreAccept ──all shards fast──────────────────────────► Execute ──reads──► Apply
//!       └──slow quorum, fast path rejected or timed out──► Accept ──quorum──┘
//!   Recover ──finish the most advanced phase (Apply / Execute / Accept)
//!           └──fast path impossible or superseded──► AcceptInvalidate ──► CommitInvalidate
//! ```
//!
//! The client is answered as soon as the reads return: the decision is recoverable from a
//! quorum and reads at executeAt are deterministic, so Apply need not be awaited.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::Status;
use crate::error::Result;
use crate::messages::{Message, RecoverOk};
use crate::node::{COORDINATIONS_MAX, ClientRequestId, Node, Outcome, ProtocolBug, Timer};
use crate::timestamp::{Ballot, Domain, LocalTime, NodeId, Timestamp, TxnId};
use crate::topology::{FastPathMode, Shard, ShardId};
use crate::txn::{Deps, ReadData, Txn, Writes};

/// Where a coordination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreAccept,
    Recover,
    Accept,
    AcceptInvalidate,
    Execute,
    Apply,
}

/// The coordinator's state for one transaction.
#[derive(Debug, Clone)]
pub struct Coordination {
    pub txn_id: TxnId,
    pub txn: Txn,
    pub ballot: Ballot,
    pub client: Option<ClientRequestId>,
    pub phase: Phase,
    pub phase_seq: u64,
    pub attempts: u32,
    pub shards: Vec<ShardId>,
    pub preaccept_replies: BTreeMap<NodeId, (Timestamp, Deps)>,
    pub recover_replies: BTreeMap<NodeId, RecoverOk>,
    pub oks: BTreeSet<NodeId>,
    pub execute_at: Timestamp,
    pub deps: Deps,
    pub read_replicas: BTreeMap<ShardId, NodeId>,
    pub read_nacks: BTreeSet<NodeId>,
    pub reads: ReadData,
    pub shards_read: BTreeSet<ShardId>,
    pub writes: Writes,
    pub fast_path: bool,
}

impl Node {
    fn shard_list(&self, ids: &[ShardId]) -> Vec<Shard> {
        ids.iter()
            .map(|id| self.topology.shard(*id).clone())
            .collect()
    }

    fn replicas_of(&self, ids: &[ShardId]) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = ids
            .iter()
            .flat_map(|id| self.topology.shard(*id).replicas.iter().copied())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    fn new_coordination(&mut self, txn_id: TxnId, txn: Txn, ballot: Ballot) -> Coordination {
        let shards = self.topology.shards_for_keys(txn.keys());
        Coordination {
            txn_id,
            txn,
            ballot,
            client: None,
            phase: Phase::PreAccept,
            phase_seq: 0,
            attempts: 0,
            shards,
            preaccept_replies: BTreeMap::new(),
            recover_replies: BTreeMap::new(),
            oks: BTreeSet::new(),
            execute_at: txn_id.timestamp(),
            deps: Deps::new(),
            read_replicas: BTreeMap::new(),
            read_nacks: BTreeSet::new(),
            reads: ReadData::new(),
            shards_read: BTreeSet::new(),
            writes: Writes::new(),
            fast_path: false,
        }
    }

    /// Moves `txn_id`'s coordination to `phase` and arms its timer.
    fn enter_phase(&mut self, now: LocalTime, txn_id: TxnId, phase: Phase) {
        self.next_phase_seq += 1;
        let phase_seq = self.next_phase_seq;
        let timeout = if phase == Phase::PreAccept {
            self.config.preaccept_timeout_micros
        } else {
            self.config.round_timeout_micros
        };
        if let Some(coordination) = self.coordinations.get_mut(&txn_id) {
            coordination.phase = phase;
            coordination.phase_seq = phase_seq;
            coordination.attempts = 0;
            coordination.oks.clear();
        }
        self.set_timer(
            now.after_micros(timeout),
            Timer::Coordination { txn_id, phase_seq },
        );
    }

    pub(crate) fn on_client_request(
        &mut self,
        now: LocalTime,
        request_id: ClientRequestId,
        txn: Txn,
    ) -> Result<()> {
        if self.coordinations.len() >= COORDINATIONS_MAX {
            self.reply_client(request_id, Outcome::Overloaded);
            return Ok(());
        }
        let t0 = self.hlc.unique_now(now);
        let txn_id = TxnId::new(t0, txn.kind(), Domain::Key);
        let mut coordination = self.new_coordination(txn_id, txn.clone(), Ballot::ZERO);
        coordination.client = Some(request_id);
        let replicas = self.replicas_of(&coordination.shards);
        self.coordinations.insert(txn_id, coordination);
        self.enter_phase(now, txn_id, Phase::PreAccept);
        for replica in replicas {
            self.send(
                replica,
                Message::PreAccept {
                    txn_id,
                    txn: txn.clone(),
                },
            );
        }
        Ok(())
    }

    /// Starts recovering `txn_id` with a fresh ballot, unless this node already coordinates it.
    pub(crate) fn start_recovery(&mut self, now: LocalTime, txn_id: TxnId, txn: Txn) {
        if self.coordinations.contains_key(&txn_id) || self.coordinations.len() >= COORDINATIONS_MAX
        {
            return;
        }
        let ballot = Ballot(self.hlc.unique_now(now));
        let coordination = self.new_coordination(txn_id, txn.clone(), ballot);
        let replicas = self.replicas_of(&coordination.shards);
        self.coordinations.insert(txn_id, coordination);
        self.enter_phase(now, txn_id, Phase::Recover);
        self.stats.recoveries_started += 1;
        for replica in replicas {
            self.send(
                replica,
                Message::BeginRecovery {
                    txn_id,
                    txn: txn.clone(),
                    ballot,
                },
            );
        }
    }

    pub(crate) fn on_coordinator_reply(
        &mut self,
        now: LocalTime,
        from: NodeId,
        message: Message,
    ) -> Result<()> {
        let Some(txn_id) = message.txn_id() else {
            return Ok(());
        };
        let Some(coordination) = self.coordinations.get_mut(&txn_id) else {
            return Ok(());
        };
        let ballot = coordination.ballot;
        match (coordination.phase, message) {
            (
                Phase::PreAccept,
                Message::PreAcceptOk {
                    witnessed_at, deps, ..
                },
            ) => {
                self.hlc.witness(witnessed_at);
                let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
                coordination
                    .preaccept_replies
                    .insert(from, (witnessed_at, deps));
                self.evaluate_preaccept(now, txn_id, false);
            }
            (
                Phase::Recover,
                Message::RecoverReply {
                    ballot: reply_ballot,
                    reply,
                    ..
                },
            ) if reply_ballot == ballot => {
                self.hlc.witness(reply.execute_at);
                let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
                coordination.recover_replies.insert(from, *reply);
                let shard_ids = coordination.shards.clone();
                let shards = self.shard_list(&shard_ids);
                let replied: BTreeSet<NodeId> = self.coordinations[&txn_id]
                    .recover_replies
                    .keys()
                    .copied()
                    .collect();
                if self.every_shard_has_quorum(&shards, &replied) {
                    self.decide_recovery(now, txn_id);
                }
            }
            (
                Phase::Accept,
                Message::AcceptOk {
                    ballot: reply_ballot,
                    deps,
                    ..
                },
            ) if reply_ballot == ballot => {
                coordination.oks.insert(from);
                coordination.deps.union(&deps);
                let shard_ids = coordination.shards.clone();
                let oks = coordination.oks.clone();
                let shards = self.shard_list(&shard_ids);
                if self.every_shard_has_quorum(&shards, &oks) {
                    self.stats.slow_path_commits += 1;
                    self.go_execute(now, txn_id);
                }
            }
            (
                Phase::AcceptInvalidate,
                Message::AcceptOk {
                    ballot: reply_ballot,
                    ..
                },
            ) if reply_ballot == ballot => {
                coordination.oks.insert(from);
                let home_key = coordination.txn.home_key().clone();
                let oks = coordination.oks.clone();
                let shards = coordination.shards.clone();
                let home = self.topology.shard_for_key(&home_key).clone();
                if self.every_shard_has_quorum(&[home], &oks) {
                    for replica in self.replicas_of(&shards) {
                        self.send(replica, Message::CommitInvalidate { txn_id });
                    }
                    self.stats.invalidations += 1;
                    self.finish(txn_id, Outcome::Unknown);
                }
            }
            (Phase::PreAccept, Message::PreAcceptRejected { .. }) => {
                // A replica fenced t0 off (a durability round passed it): this transaction
                // can never gather a PreAccept quorum. Give up without deciding anything;
                // replicas that pre-accepted it before the fence recover it, and the round
                // waits until they have.
                self.finish(txn_id, Outcome::Unknown);
            }
            (
                _,
                Message::Nack {
                    ballot: reply_ballot,
                    promised,
                    ..
                },
            ) if reply_ballot == ballot => {
                self.hlc.witness(promised.0);
                self.finish(txn_id, Outcome::Unknown);
            }
            (
                Phase::Execute,
                Message::ReadOk {
                    ballot: reply_ballot,
                    data,
                    ..
                },
            ) if reply_ballot == ballot => {
                self.on_read_ok(now, txn_id, from, data)?;
            }
            (
                Phase::Execute,
                Message::ReadNack {
                    ballot: reply_ballot,
                    ..
                },
            ) if reply_ballot == ballot => {
                coordination.read_nacks.insert(from);
                self.send_reads(txn_id, true);
            }
            (Phase::Apply, Message::ApplyOk { .. }) => {
                coordination.oks.insert(from);
                let shard_ids = coordination.shards.clone();
                let replicas = self.replicas_of(&shard_ids);
                if replicas
                    .iter()
                    .all(|replica| self.coordinations[&txn_id].oks.contains(replica))
                {
                    self.coordinations.remove(&txn_id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn every_shard_has_quorum(&self, shards: &[Shard], replied: &BTreeSet<NodeId>) -> bool {
        shards.iter().all(|shard| {
            let quorums = shard.quorums(FastPathMode::Standard, NodeId(0));
            let count = shard
                .replicas
                .iter()
                .filter(|node| replied.contains(node))
                .count();
            count >= quorums.slow
        })
    }

    /// Decides between the fast path, the slow path and waiting for more votes.
    fn evaluate_preaccept(&mut self, now: LocalTime, txn_id: TxnId, timed_out: bool) {
        let coordination = &self.coordinations[&txn_id];
        let t0 = txn_id.timestamp();
        let mode = self.topology.fast_path;
        let (mut all_fast, mut all_slow_ok, mut all_settled) = (true, true, true);
        for shard in self.shard_list(&coordination.shards) {
            let replies = &coordination.preaccept_replies;
            let coordinator = txn_id.coordinator();
            let coordinator_voted = replies
                .get(&coordinator)
                .is_some_and(|(witnessed_at, _)| *witnessed_at == t0);
            let voter = if coordinator_voted {
                coordinator
            } else {
                NodeId(u32::MAX)
            };
            let quorums = shard.quorums(mode, voter);
            let mut fast = quorums.fast;
            if self.bug(ProtocolBug::FastQuorumTooSmall) {
                fast = fast.saturating_sub(1).max(1);
            }
            let fast_reject = 1 + shard.electorate.len() - fast;
            let from_shard: Vec<(&NodeId, &(Timestamp, Deps))> = replies
                .iter()
                .filter(|(node, _)| shard.is_replica(**node))
                .collect();
            let votes = from_shard
                .iter()
                .filter(|(node, (at, _))| shard.is_elector(**node) && *at == t0)
                .count();
            let non_votes = from_shard
                .iter()
                .filter(|(node, (at, _))| shard.is_elector(**node) && *at != t0)
                .count();
            let shard_fast = votes >= fast;
            all_fast &= shard_fast;
            all_slow_ok &= from_shard.len() >= quorums.slow;
            all_settled &= shard_fast || non_votes >= fast_reject;
        }
        let mut deps = Deps::new();
        let mut max_witnessed = t0;
        for (witnessed_at, reply_deps) in coordination.preaccept_replies.values() {
            deps.union(reply_deps);
            max_witnessed = max_witnessed.max(*witnessed_at);
        }
        if all_fast {
            let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
            coordination.execute_at = t0;
            coordination.deps = deps;
            coordination.fast_path = true;
            self.stats.fast_path_commits += 1;
            self.go_execute(now, txn_id);
        } else if all_slow_ok && (all_settled || timed_out) {
            let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
            coordination.execute_at = if self.config.bug == Some(ProtocolBug::SlowPathUsesTxnId) {
                t0
            } else {
                max_witnessed
            };
            coordination.deps = deps;
            self.go_accept(now, txn_id);
        }
    }

    fn go_accept(&mut self, now: LocalTime, txn_id: TxnId) {
        self.enter_phase(now, txn_id, Phase::Accept);
        self.send_accepts(txn_id, &BTreeSet::new());
    }

    fn send_accepts(&mut self, txn_id: TxnId, skip: &BTreeSet<NodeId>) {
        let coordination = &self.coordinations[&txn_id];
        let message = Message::Accept {
            txn_id,
            txn: coordination.txn.clone(),
            ballot: coordination.ballot,
            execute_at: coordination.execute_at,
            deps: coordination.deps.clone(),
        };
        for replica in self.replicas_of(&coordination.shards.clone()) {
            if !skip.contains(&replica) {
                self.send(replica, message.clone());
            }
        }
    }

    fn go_accept_invalidate(&mut self, now: LocalTime, txn_id: TxnId) {
        self.enter_phase(now, txn_id, Phase::AcceptInvalidate);
        let coordination = &self.coordinations[&txn_id];
        let ballot = coordination.ballot;
        let home = self
            .topology
            .shard_for_key(coordination.txn.home_key())
            .clone();
        for replica in home.replicas {
            self.send(replica, Message::AcceptInvalidate { txn_id, ballot });
        }
    }

    /// Sends the stable decision to every replica, asking one replica per shard to read.
    fn go_execute(&mut self, now: LocalTime, txn_id: TxnId) {
        self.enter_phase(now, txn_id, Phase::Execute);
        let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
        coordination.read_replicas.clear();
        coordination.shards_read.clear();
        coordination.reads.clear();
        let message = Message::Commit {
            txn_id,
            txn: coordination.txn.clone(),
            execute_at: coordination.execute_at,
            deps: coordination.deps.clone(),
            read: false,
            ballot: coordination.ballot,
        };
        let shard_ids = coordination.shards.clone();
        let replicas = self.replicas_of(&shard_ids);
        self.send_reads(txn_id, false);
        let readers: BTreeSet<NodeId> = self.coordinations[&txn_id]
            .read_replicas
            .values()
            .copied()
            .collect();
        for replica in replicas {
            if !readers.contains(&replica) {
                self.send(replica, message.clone());
            }
        }
    }

    /// Picks a read replica for every shard not yet read (avoiding nacked ones; rotating on
    /// retries) and sends it the decision with a read request.
    fn send_reads(&mut self, txn_id: TxnId, rotate: bool) {
        let my_id = self.id;
        let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
        let shards = coordination.shards.clone();
        let mut chosen = BTreeSet::new();
        for shard_id in shards {
            if coordination.shards_read.contains(&shard_id) {
                continue;
            }
            let shard = self.topology.shard(shard_id);
            let candidates: Vec<NodeId> = shard
                .replicas
                .iter()
                .copied()
                .filter(|node| !coordination.read_nacks.contains(node))
                .collect();
            if candidates.is_empty() {
                let txn_id = coordination.txn_id;
                self.finish(txn_id, Outcome::Unknown);
                return;
            }
            let previous = coordination.read_replicas.get(&shard_id).copied();
            let pick = if !rotate && candidates.contains(&my_id) {
                my_id
            } else if rotate || previous.is_some() {
                let start = previous
                    .and_then(|node| candidates.iter().position(|c| *c == node))
                    .map_or(0, |idx| idx + 1);
                candidates[(start + coordination.attempts as usize) % candidates.len()]
            } else {
                candidates[(txn_id.timestamp().hlc as usize) % candidates.len()]
            };
            if rotate && previous == Some(pick) && !coordination.read_nacks.is_empty() {
                continue;
            }
            coordination.read_replicas.insert(shard_id, pick);
            chosen.insert(pick);
        }
        let message = Message::Commit {
            txn_id,
            txn: coordination.txn.clone(),
            execute_at: coordination.execute_at,
            deps: coordination.deps.clone(),
            read: true,
            ballot: coordination.ballot,
        };
        for node in chosen {
            self.send(node, message.clone());
        }
    }

    fn on_read_ok(
        &mut self,
        now: LocalTime,
        txn_id: TxnId,
        from: NodeId,
        data: ReadData,
    ) -> Result<()> {
        let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
        for shard_id in coordination.shards.clone() {
            if self.topology.shard(shard_id).is_replica(from) {
                coordination.shards_read.insert(shard_id);
            }
        }
        coordination.reads.extend(data);
        if coordination.shards_read.len() < coordination.shards.len() {
            return Ok(());
        }
        coordination.writes = self.data.compute(&coordination.txn, &coordination.reads)?;
        if let Some(request_id) = coordination.client.take() {
            let reads: ReadData = coordination
                .txn
                .reads()
                .iter()
                .map(|key| (key.clone(), coordination.reads.get(key).cloned().flatten()))
                .collect();
            let outcome = Outcome::Committed {
                execute_at: coordination.execute_at,
                reads,
                fast_path: coordination.fast_path,
            };
            self.reply_client(request_id, outcome);
        }
        self.go_apply(now, txn_id);
        Ok(())
    }

    fn go_apply(&mut self, now: LocalTime, txn_id: TxnId) {
        self.enter_phase(now, txn_id, Phase::Apply);
        self.send_applies(txn_id);
    }

    fn send_applies(&mut self, txn_id: TxnId) {
        let coordination = &self.coordinations[&txn_id];
        let message = Message::Apply {
            txn_id,
            txn: coordination.txn.clone(),
            execute_at: coordination.execute_at,
            deps: coordination.deps.clone(),
            writes: coordination.writes.clone(),
        };
        let oks = coordination.oks.clone();
        for replica in self.replicas_of(&coordination.shards.clone()) {
            if !oks.contains(&replica) {
                self.send(replica, message.clone());
            }
        }
    }

    /// Ends a coordination, telling the client (if still waiting) `outcome`.
    fn finish(&mut self, txn_id: TxnId, outcome: Outcome) {
        if let Some(coordination) = self.coordinations.remove(&txn_id)
            && let Some(request_id) = coordination.client
        {
            self.reply_client(request_id, outcome);
        }
    }

    /// Applies the recovery decision rules to a quorum of replies per shard.
    fn decide_recovery(&mut self, now: LocalTime, txn_id: TxnId) {
        let coordination = &self.coordinations[&txn_id];
        let replies: Vec<RecoverOk> = coordination.recover_replies.values().cloned().collect();
        let t0 = txn_id.timestamp();
        let mut all_deps = Deps::new();
        for reply in &replies {
            all_deps.union(&reply.deps);
        }
        // 1. Finish the most advanced phase.
        if let Some(applied) = replies
            .iter()
            .find(|reply| reply.status >= Status::PreApplied && reply.status != Status::Invalidated)
        {
            let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
            coordination.execute_at = applied.execute_at;
            coordination.deps = applied.deps.clone();
            coordination.writes = applied.writes.clone().unwrap_or_default();
            self.go_apply(now, txn_id);
            return;
        }
        if replies
            .iter()
            .any(|reply| reply.status == Status::Invalidated)
        {
            let shards = coordination.shards.clone();
            for replica in self.replicas_of(&shards) {
                self.send(replica, Message::CommitInvalidate { txn_id });
            }
            self.finish(txn_id, Outcome::Unknown);
            return;
        }
        if let Some(stable) = replies.iter().find(|reply| reply.status.is_decided()) {
            let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
            coordination.execute_at = stable.execute_at;
            coordination.deps = stable.deps.clone();
            self.go_execute(now, txn_id);
            return;
        }
        let ignore_accepted = self.bug(ProtocolBug::RecoveryIgnoresAccepted);
        let accepted = replies
            .iter()
            .filter(|reply| {
                matches!(reply.status, Status::Accepted | Status::AcceptedInvalidate)
                    && !ignore_accepted
            })
            .max_by_key(|reply| reply.accepted);
        if let Some(accepted) = accepted {
            if accepted.status == Status::AcceptedInvalidate {
                self.go_accept_invalidate(now, txn_id);
            } else {
                let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
                coordination.execute_at = accepted.execute_at;
                coordination.deps = all_deps;
                self.go_accept(now, txn_id);
            }
            return;
        }
        // 2. Only pre-accepted: could t0 have taken the fast path?
        let mode = self.topology.fast_path;
        let mut fast_path_impossible = replies.iter().any(|reply| reply.superseding_rejects);
        for shard in self.shard_list(&coordination.shards) {
            let quorums = shard.quorums(mode, txn_id.coordinator());
            let non_votes = coordination
                .recover_replies
                .iter()
                .filter(|(node, reply)| shard.is_elector(**node) && !reply.voted_fast_path)
                .count();
            fast_path_impossible |= non_votes >= quorums.fast_reject;
        }
        if fast_path_impossible {
            self.go_accept_invalidate(now, txn_id);
            return;
        }
        let earlier_pending = replies.iter().any(|reply| {
            reply
                .earlier_accepted_no_witness
                .iter()
                .any(|earlier| *earlier != txn_id)
        });
        // A later transaction pre-accepted with a fast-path vote that did not witness t0 may
        // already be fast-committed without t0 in its deps (its fast quorum need only meet
        // this recovery quorum in that one replica). Once it is decided its reply either
        // carries t0 in its deps or is a superseding reject; until then t0 cannot be proposed.
        let later_pending = replies
            .iter()
            .any(|reply| !reply.later_fast_votes_no_witness.is_empty());
        if earlier_pending || later_pending {
            // Wait for those transactions to be decided; the progress log retries.
            self.finish(txn_id, Outcome::Unknown);
            return;
        }
        let coordination = self.coordinations.get_mut(&txn_id).expect("exists");
        coordination.execute_at = t0;
        coordination.deps = all_deps;
        self.go_accept(now, txn_id);
    }

    pub(crate) fn on_coordination_timeout(
        &mut self,
        now: LocalTime,
        txn_id: TxnId,
        phase_seq: u64,
    ) -> Result<()> {
        let Some(coordination) = self.coordinations.get_mut(&txn_id) else {
            return Ok(());
        };
        if coordination.phase_seq != phase_seq {
            return Ok(());
        }
        coordination.attempts += 1;
        let attempts = coordination.attempts;
        let phase = coordination.phase;
        if phase == Phase::PreAccept {
            self.evaluate_preaccept(now, txn_id, true);
            if self
                .coordinations
                .get(&txn_id)
                .is_none_or(|c| c.phase != Phase::PreAccept)
            {
                return Ok(());
            }
        }
        // Reads wait for deps to apply, which may legitimately take many rounds.
        let retries_max = if phase == Phase::Execute {
            self.config.round_retries_max * 10
        } else {
            self.config.round_retries_max
        };
        if attempts > retries_max {
            // Apply retries are best effort: replicas that missed it fetch it themselves.
            self.finish(txn_id, Outcome::Unknown);
            return Ok(());
        }
        let coordination = &self.coordinations[&txn_id];
        let replicas = self.replicas_of(&coordination.shards.clone());
        match phase {
            Phase::PreAccept => {
                let replied: BTreeSet<NodeId> =
                    coordination.preaccept_replies.keys().copied().collect();
                let txn = coordination.txn.clone();
                for replica in replicas.into_iter().filter(|r| !replied.contains(r)) {
                    self.send(
                        replica,
                        Message::PreAccept {
                            txn_id,
                            txn: txn.clone(),
                        },
                    );
                }
            }
            Phase::Recover => {
                let replied: BTreeSet<NodeId> =
                    coordination.recover_replies.keys().copied().collect();
                let (txn, ballot) = (coordination.txn.clone(), coordination.ballot);
                for replica in replicas.into_iter().filter(|r| !replied.contains(r)) {
                    self.send(
                        replica,
                        Message::BeginRecovery {
                            txn_id,
                            txn: txn.clone(),
                            ballot,
                        },
                    );
                }
            }
            Phase::Accept => {
                let oks = coordination.oks.clone();
                self.send_accepts(txn_id, &oks);
            }
            Phase::AcceptInvalidate => {
                let ballot = coordination.ballot;
                let home = self
                    .topology
                    .shard_for_key(coordination.txn.home_key())
                    .clone();
                for replica in home.replicas {
                    self.send(replica, Message::AcceptInvalidate { txn_id, ballot });
                }
            }
            Phase::Execute => self.send_reads(txn_id, true),
            Phase::Apply => self.send_applies(txn_id),
        }
        self.next_phase_seq += 1;
        let phase_seq = self.next_phase_seq;
        if let Some(coordination) = self.coordinations.get_mut(&txn_id) {
            coordination.phase_seq = phase_seq;
        }
        let at = now.after_micros(self.config.round_timeout_micros);
        self.set_timer(at, Timer::Coordination { txn_id, phase_seq });
        Ok(())
    }
}
