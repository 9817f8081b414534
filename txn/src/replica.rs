//! The replica side of the protocol: the command state machine, the per-key conflict index,
//! dependency calculation, ballots, and execution in executeAt order.
//!
//! Every handler that replies first records the new state in the journal with
//! `Durability::Sync`. Execution:
//!
//! ```text
//!   Stable(executeAt, deps) ──► waiting_on = deps not Applied/Invalidated whose executeAt is
//!                               unknown or lower ──(each change of a dep re-checks)──►
//!   empty ──► serve pending reads (the state is exactly the state at executeAt)
//!         ──► writes known? one WriteBatch { data writes, Command(Applied) }
//! ```

use concord_storage::engine::{Durability, WriteBatch};

use crate::command::{Command, Status};
use crate::error::Result;
use crate::messages::{Knowledge, Message, RecoverOk};
use crate::node::{Node, ProtocolBug};
use crate::timestamp::{Ballot, LocalTime, NodeId, Timestamp, TxnId};
use crate::txn::{Deps, Txn, Writes};

/// The most dependents re-checked per status change before it is a bug.
pub const DEPENDENTS_PER_CHANGE_MAX: usize = 1_000_000;

impl Node {
    /// Records `command` durably (Sync) before any reply that depends on it.
    fn persist(&mut self, txn_id: TxnId) -> Result<()> {
        if let Some(command) = self.commands.get(&txn_id) {
            self.journal
                .record(command, WriteBatch::new(), Durability::Sync)?;
        }
        Ok(())
    }

    /// Adds `txn_id` to the conflict index of its owned keys and raises their max conflict.
    fn index_command(&mut self, txn_id: TxnId, txn: &Txn, at: Timestamp) {
        for key in self.owned_keys(txn) {
            let state = self.keys.entry(key).or_default();
            state.txns.insert(txn_id);
            state.max_any = state.max_any.max(at);
            if txn_id.kind() == crate::timestamp::TxnKind::Write {
                state.max_write = state.max_write.max(at);
            }
        }
    }

    /// The highest timestamp on `txn`'s owned keys that a transaction of its kind conflicts
    /// with.
    fn max_conflict(&self, txn_id: TxnId, txn: &Txn) -> Timestamp {
        let mut max = Timestamp::ZERO;
        for key in self.owned_keys(txn) {
            if let Some(state) = self.keys.get(&key) {
                let relevant = match txn_id.kind() {
                    crate::timestamp::TxnKind::Read => state.max_write,
                    _ => state.max_any,
                };
                max = max.max(relevant);
            }
        }
        max
    }

    /// The conflicting transactions this replica knows on `txn`'s keys with a TxnId below
    /// `bound`, excluding `txn_id` itself.
    fn calculate_deps(&self, txn_id: TxnId, txn: &Txn, bound: Timestamp) -> Deps {
        let mut deps = Deps::new();
        if self.bug(ProtocolBug::DropDeps) {
            return deps;
        }
        for key in self.owned_keys(txn) {
            let Some(state) = self.keys.get(&key) else {
                continue;
            };
            for other in &state.txns {
                if other.timestamp() >= bound {
                    break;
                }
                if *other != txn_id && txn_id.kind().witnesses(other.kind()) {
                    deps.insert(*other, key.clone());
                }
            }
        }
        deps
    }

    pub(crate) fn on_preaccept(
        &mut self,
        now: LocalTime,
        from: NodeId,
        txn_id: TxnId,
        txn: Txn,
    ) -> Result<()> {
        self.hlc.witness(txn_id.timestamp());
        if let Some(command) = self.commands.get(&txn_id) {
            // A duplicate, or a PreAccept overtaken by recovery or a decision.
            let reply = if command.promised > Ballot::ZERO {
                Message::Nack {
                    txn_id,
                    ballot: Ballot::ZERO,
                    promised: command.promised,
                }
            } else {
                Message::PreAcceptOk {
                    txn_id,
                    witnessed_at: command.witnessed_at,
                    deps: command.deps.clone(),
                }
            };
            self.send(from, reply);
            return Ok(());
        }
        if txn_id.timestamp() < self.reject_before_of(&txn) {
            // A durability round fenced t0 off: never take part in deciding it.
            self.send(from, Message::PreAcceptRejected { txn_id });
            return Ok(());
        }
        let max_conflict = self.max_conflict(txn_id, &txn);
        let witnessed_at = if txn_id.timestamp() > max_conflict {
            txn_id.timestamp()
        } else {
            self.hlc
                .unique_now_above(now, max_conflict.max(txn_id.timestamp()))
        };
        let deps = self.calculate_deps(txn_id, &txn, txn_id.timestamp());
        let mut command = Command::new(txn_id, now);
        command.witnessed_at = witnessed_at;
        command.execute_at = witnessed_at;
        command.deps = deps.clone();
        command.txn = Some(txn.clone());
        self.index_command(txn_id, &txn, witnessed_at);
        self.commands.insert(txn_id, command);
        self.persist(txn_id)?;
        self.send(
            from,
            Message::PreAcceptOk {
                txn_id,
                witnessed_at,
                deps,
            },
        );
        Ok(())
    }

    /// Returns the command, creating it (without a vote) from the definition if unknown.
    fn command_or_insert(&mut self, now: LocalTime, txn_id: TxnId, txn: &Txn) -> &mut Command {
        if !self.commands.contains_key(&txn_id) {
            let mut command = Command::new(txn_id, now);
            command.txn = Some(txn.clone());
            self.index_command(txn_id, txn, txn_id.timestamp());
            self.commands.insert(txn_id, command);
        }
        let command = self.commands.get_mut(&txn_id);
        let command = command.expect("inserted above");
        if command.txn.is_none() {
            command.txn = Some(txn.clone());
        }
        command
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_accept(
        &mut self,
        now: LocalTime,
        from: NodeId,
        txn_id: TxnId,
        txn: Txn,
        ballot: Ballot,
        execute_at: Timestamp,
        deps: Deps,
    ) -> Result<()> {
        self.hlc.witness(execute_at);
        let command = self.command_or_insert(now, txn_id, &txn);
        if command.promised > ballot || command.status == Status::Invalidated {
            let promised = if command.status == Status::Invalidated {
                Ballot::DECIDED
            } else {
                command.promised
            };
            self.nack(from, txn_id, ballot, promised);
            return Ok(());
        }
        let local_deps = self.calculate_deps(txn_id, &txn, execute_at);
        let command = self.command_or_insert(now, txn_id, &txn);
        if !command.status.is_decided() {
            command.promised = ballot;
            command.accepted = ballot;
            command.execute_at = execute_at;
            command.deps = deps;
            command.deps.union(&local_deps);
            command.status = Status::Accepted;
            command.last_change = now;
            self.index_command(txn_id, &txn, execute_at);
            self.persist(txn_id)?;
        }
        self.send(
            from,
            Message::AcceptOk {
                txn_id,
                ballot,
                deps: local_deps,
            },
        );
        Ok(())
    }

    pub(crate) fn on_accept_invalidate(
        &mut self,
        now: LocalTime,
        from: NodeId,
        txn_id: TxnId,
        ballot: Ballot,
    ) -> Result<()> {
        let command = self
            .commands
            .entry(txn_id)
            .or_insert_with(|| Command::new(txn_id, now));
        if command.promised > ballot || command.status.is_decided() {
            let promised = if command.status.is_decided() {
                Ballot::DECIDED
            } else {
                command.promised
            };
            self.nack(from, txn_id, ballot, promised);
            return Ok(());
        }
        if command.status != Status::Invalidated {
            command.promised = ballot;
            command.accepted = ballot;
            command.status = Status::AcceptedInvalidate;
            command.last_change = now;
            self.persist(txn_id)?;
        }
        self.send(
            from,
            Message::AcceptOk {
                txn_id,
                ballot,
                deps: Deps::new(),
            },
        );
        Ok(())
    }

    /// Learns the decision: executeAt and stable deps. `read_by` asks for the read at
    /// executeAt.
    pub(crate) fn on_commit(
        &mut self,
        now: LocalTime,
        txn_id: TxnId,
        txn: Txn,
        execute_at: Timestamp,
        deps: Deps,
        read_by: Option<(NodeId, Ballot)>,
    ) -> Result<()> {
        self.hlc.witness(execute_at);
        let command = self.command_or_insert(now, txn_id, &txn);
        assert!(
            command.status != Status::Invalidated,
            "txn {txn_id} committed at {execute_at} but invalidated here"
        );
        if command.status.is_decided() {
            assert_eq!(command.execute_at, execute_at, "txn {txn_id} decided twice");
        } else {
            command.status = Status::Stable;
            command.execute_at = execute_at;
            command.deps = deps;
            command.last_change = now;
            self.index_command(txn_id, &txn, execute_at);
            self.persist(txn_id)?;
            self.init_waiting_on(txn_id);
            self.changed.push_back(txn_id);
        }
        if let Some((coordinator, ballot)) = read_by {
            let command = self.commands.get_mut(&txn_id).expect("exists");
            if command.status == Status::Applied {
                self.send(coordinator, Message::ReadNack { txn_id, ballot });
            } else {
                command.pending_reads.push((coordinator, ballot));
            }
        }
        self.try_execute(now, txn_id)
    }

    pub(crate) fn on_commit_invalidate(&mut self, now: LocalTime, txn_id: TxnId) -> Result<()> {
        let command = self
            .commands
            .entry(txn_id)
            .or_insert_with(|| Command::new(txn_id, now));
        assert!(
            !command.status.is_decided(),
            "txn {txn_id} invalidated but decided here"
        );
        if command.status != Status::Invalidated {
            command.status = Status::Invalidated;
            command.last_change = now;
            command.pending_reads.clear();
            self.persist(txn_id)?;
            self.changed.push_back(txn_id);
        }
        Ok(())
    }

    pub(crate) fn on_apply(
        &mut self,
        now: LocalTime,
        txn_id: TxnId,
        txn: Txn,
        execute_at: Timestamp,
        deps: Deps,
        writes: Writes,
    ) -> Result<()> {
        self.on_commit(now, txn_id, txn, execute_at, deps, None)?;
        let command = self.commands.get_mut(&txn_id).expect("committed above");
        if command.status < Status::PreApplied {
            command.writes = Some(writes);
            command.status = Status::PreApplied;
            command.last_change = now;
            self.persist(txn_id)?;
        }
        self.try_execute(now, txn_id)
    }

    /// Computes what a newly stable command waits for.
    fn init_waiting_on(&mut self, txn_id: TxnId) {
        let Some(command) = self.commands.get(&txn_id) else {
            return;
        };
        let execute_at = command.execute_at;
        let deps: Vec<TxnId> = command.deps.txn_ids().collect();
        let collected: Vec<TxnId> = deps
            .iter()
            .copied()
            .filter(|dep| self.collected_dep(*dep, command.deps.keys_of(*dep)))
            .collect();
        let skip_wait = self.bug(ProtocolBug::SkipWaitOnDeps);
        let mut waiting_on = std::collections::BTreeSet::new();
        for dep in deps {
            if !skip_wait && !collected.contains(&dep) && !self.dep_satisfied(dep, execute_at) {
                waiting_on.insert(dep);
                self.blocked_by.entry(dep).or_default().insert(txn_id);
            }
        }
        if let Some(command) = self.commands.get_mut(&txn_id) {
            command.waiting_on = waiting_on;
        }
    }

    /// Returns true if `dep` is unknown here and below the DurableBefore watermark of the
    /// shard of every key it conflicts on: it is final on every replica of those shards (this
    /// one included, where it touches this node's keys), or can never commit.
    pub(crate) fn collected_dep<'a>(
        &self,
        dep: TxnId,
        keys: impl Iterator<Item = &'a crate::txn::Key>,
    ) -> bool {
        if self.commands.contains_key(&dep) {
            return false;
        }
        let mut any = false;
        for key in keys {
            let shard = self.topology.shard_for_key(key).id;
            if dep.timestamp() >= self.durable_before_shard(shard) {
                return false;
            }
            any = true;
        }
        any
    }

    /// Returns true if `dep` no longer holds back a command executing at `execute_at`.
    fn dep_satisfied(&self, dep: TxnId, execute_at: Timestamp) -> bool {
        if dep.timestamp() > execute_at || self.erased.contains(&dep) {
            return true;
        }
        match self.commands.get(&dep) {
            None => false,
            Some(command) => {
                command.status.is_final()
                    || (command.status.is_decided() && command.execute_at > execute_at)
            }
        }
    }

    /// Re-checks the commands waiting on `txn_id` after its status changed.
    pub(crate) fn on_status_changed(&mut self, now: LocalTime, txn_id: TxnId) -> Result<()> {
        let Some(dependents) = self.blocked_by.get(&txn_id).cloned() else {
            return Ok(());
        };
        assert!(dependents.len() <= DEPENDENTS_PER_CHANGE_MAX);
        let mut still_blocked = std::collections::BTreeSet::new();
        for dependent in dependents {
            let Some(command) = self.commands.get(&dependent) else {
                continue;
            };
            if self.dep_satisfied(txn_id, command.execute_at) {
                if let Some(command) = self.commands.get_mut(&dependent) {
                    command.waiting_on.remove(&txn_id);
                }
                self.try_execute(now, dependent)?;
            } else {
                still_blocked.insert(dependent);
            }
        }
        if still_blocked.is_empty() {
            self.blocked_by.remove(&txn_id);
        } else {
            self.blocked_by.insert(txn_id, still_blocked);
        }
        Ok(())
    }

    /// Executes `txn_id` as far as it can: serve reads once deps are applied, apply writes once
    /// known.
    pub(crate) fn try_execute(&mut self, now: LocalTime, txn_id: TxnId) -> Result<()> {
        let Some(command) = self.commands.get_mut(&txn_id) else {
            return Ok(());
        };
        if !command.status.is_decided()
            || command.status == Status::Applied
            || !command.waiting_on.is_empty()
        {
            return Ok(());
        }
        if command.status == Status::Stable {
            command.status = Status::ReadyToExecute;
        }
        let pending_reads = std::mem::take(&mut command.pending_reads);
        let txn = command
            .txn
            .clone()
            .expect("a decided command has its definition");
        if !pending_reads.is_empty() {
            let execute_at = command.execute_at;
            let data = self.data.read(&txn, &self.owned_keys(&txn), execute_at)?;
            for (coordinator, ballot) in pending_reads {
                self.send(
                    coordinator,
                    Message::ReadOk {
                        txn_id,
                        ballot,
                        data: data.clone(),
                    },
                );
            }
        }
        let command = self.commands.get_mut(&txn_id).expect("exists");
        if command.status != Status::PreApplied {
            return Ok(());
        }
        let writes = command.writes.clone().unwrap_or_default();
        let owned: Writes = writes
            .into_iter()
            .filter(|(key, _)| self.topology.replicates(self.id, key))
            .collect();
        let mut batch = WriteBatch::new();
        let command = self.commands.get_mut(&txn_id).expect("exists");
        self.data.write(&owned, command.execute_at, &mut batch);
        command.status = Status::Applied;
        #[cfg(any(test, feature = "sim"))]
        self.applied_log.push(crate::node::AppliedRecord {
            txn_id,
            execute_at: command.execute_at,
            txn: txn.clone(),
            writes: command.writes.clone().unwrap_or_default(),
        });
        command.last_change = now;
        // Buffered: a crash may lose the batch, and replay of the synced PreApplied record
        // applies it again.
        self.journal.record(command, batch, Durability::Buffered)?;
        self.changed.push_back(txn_id);
        Ok(())
    }

    pub(crate) fn on_begin_recovery(
        &mut self,
        now: LocalTime,
        from: NodeId,
        txn_id: TxnId,
        txn: Txn,
        ballot: Ballot,
    ) -> Result<()> {
        self.hlc.witness(ballot.0);
        if self.fenced_off_unknown(txn_id, &txn) {
            // This replica answered a durability round's check pass clean above t0 without
            // knowing the transaction: no member of that round's fence quorum ever voted for
            // it, so it cannot have taken the fast path, and recovery must not propose t0
            // (design/accord.md, "Two levels"). No state is kept: the answer stays true.
            let reply = RecoverOk {
                status: Status::PreAccepted,
                accepted: Ballot::ZERO,
                execute_at: txn_id.timestamp(),
                deps: Deps::new(),
                txn: None,
                writes: None,
                voted_fast_path: false,
                superseding_rejects: true,
                earlier_accepted_no_witness: Vec::new(),
                later_fast_votes_no_witness: Vec::new(),
            };
            self.send(
                from,
                Message::RecoverReply {
                    txn_id,
                    ballot,
                    reply: Box::new(reply),
                },
            );
            return Ok(());
        }
        if !self.commands.contains_key(&txn_id) {
            // Pre-accept without a fast-path vote.
            let max_conflict = self.max_conflict(txn_id, &txn).max(txn_id.timestamp());
            let witnessed_at = self.hlc.unique_now_above(now, max_conflict);
            let mut command = Command::new(txn_id, now);
            command.witnessed_at = witnessed_at;
            command.execute_at = witnessed_at;
            command.deps = self.calculate_deps(txn_id, &txn, txn_id.timestamp());
            command.txn = Some(txn.clone());
            self.index_command(txn_id, &txn, witnessed_at);
            self.commands.insert(txn_id, command);
        }
        let command = self.command_or_insert(now, txn_id, &txn);
        if command.promised > ballot {
            let promised = command.promised;
            self.nack(from, txn_id, ballot, promised);
            return Ok(());
        }
        command.promised = ballot;
        self.persist(txn_id)?;
        let reply = self.recover_ok(txn_id, &txn);
        self.send(
            from,
            Message::RecoverReply {
                txn_id,
                ballot,
                reply: Box::new(reply),
            },
        );
        Ok(())
    }

    /// Builds the recovery reply: this replica's state plus what the conflicts it knows say
    /// about whether t0 could have taken the fast path.
    fn recover_ok(&self, txn_id: TxnId, txn: &Txn) -> RecoverOk {
        let command = &self.commands[&txn_id];
        let t0 = txn_id.timestamp();
        let mut superseding_rejects = false;
        let mut earlier_accepted_no_witness = Vec::new();
        let mut later_fast_votes_no_witness = Vec::new();
        for key in self.owned_keys(txn) {
            let Some(state) = self.keys.get(&key) else {
                continue;
            };
            for other_id in &state.txns {
                if *other_id == txn_id || !other_id.kind().witnesses(txn_id.kind()) {
                    continue;
                }
                let Some(other) = self.commands.get(other_id) else {
                    continue;
                };
                if other.deps.contains(txn_id) {
                    continue;
                }
                let accepted = other.status == Status::Accepted;
                let decided = other.status.is_decided();
                if (accepted && *other_id > txn_id) || (decided && other.execute_at > t0) {
                    superseding_rejects = true;
                } else if accepted && *other_id < txn_id && other.execute_at > t0 {
                    earlier_accepted_no_witness.push(*other_id);
                } else if other.status == Status::PreAccepted
                    && *other_id > txn_id
                    && other.witnessed_at == other_id.timestamp()
                {
                    // A fast-path vote for a later transaction that did not see t0. With
                    // coordinator votes its fast quorum may meet ours only here, so the
                    // count of non-votes cannot rule out that it committed without t0.
                    later_fast_votes_no_witness.push(*other_id);
                }
            }
        }
        earlier_accepted_no_witness.sort_unstable();
        earlier_accepted_no_witness.dedup();
        later_fast_votes_no_witness.sort_unstable();
        later_fast_votes_no_witness.dedup();
        RecoverOk {
            status: command.status,
            accepted: command.accepted,
            execute_at: command.execute_at,
            deps: command.deps.clone(),
            txn: command.txn.clone(),
            writes: command.writes.clone(),
            voted_fast_path: command.witnessed_at == t0,
            superseding_rejects,
            earlier_accepted_no_witness,
            later_fast_votes_no_witness,
        }
    }

    pub(crate) fn on_check_status(&mut self, from: NodeId, txn_id: TxnId) {
        let knowledge = self.commands.get(&txn_id).map(|command| {
            Box::new(Knowledge {
                status: command.status,
                txn: command.txn.clone(),
                execute_at: command.execute_at,
                deps: command.deps.clone(),
                writes: command.writes.clone(),
            })
        });
        let durable_before = self.durable_before_list();
        self.send(
            from,
            Message::CheckStatusOk {
                epoch: self.topology.epoch,
                txn_id,
                knowledge,
                durable_before,
            },
        );
    }

    pub(crate) fn on_check_status_ok(
        &mut self,
        now: LocalTime,
        txn_id: TxnId,
        knowledge: Option<Box<Knowledge>>,
    ) -> Result<()> {
        let Some(knowledge) = knowledge else {
            return Ok(());
        };
        let local = self.commands.get(&txn_id).map(|command| command.status);
        if local.is_some_and(Status::is_final) {
            return Ok(());
        }
        let watermark = match &knowledge.txn {
            Some(txn) => self.durable_before_of(txn),
            None => self.durable_before_all(),
        };
        if local.is_none() && txn_id.timestamp() < watermark {
            // Collected here already (or never committable): an answer to an old question
            // must not bring it back, least of all re-apply its writes over newer ones.
            return Ok(());
        }
        if knowledge.status == Status::Applied && knowledge.txn.is_none() && local.is_some() {
            // Collected by the peer: final on every replica of its shards, or never
            // committable. A stub without a definition here (made by a late AcceptInvalidate
            // after this node collected it) is garbage: drop it.
            let stub = self
                .commands
                .get(&txn_id)
                .is_some_and(|command| command.txn.is_none());
            if stub {
                self.commands.remove(&txn_id);
                self.journal.erase(&[txn_id])?;
                self.erased.insert(txn_id);
                self.changed.push_back(txn_id);
                return Ok(());
            }
            return self.finish_collected_foreign(now, txn_id);
        }
        match (knowledge.status, knowledge.txn) {
            (Status::Invalidated, _) => self.on_commit_invalidate(now, txn_id)?,
            (Status::Applied, None) if local.is_none() => {
                // Collected by the peer, so applied on every replica: nothing to wait for.
                self.erased.insert(txn_id);
                self.changed.push_back(txn_id);
            }
            (Status::Applied | Status::PreApplied, Some(txn)) if knowledge.writes.is_some() => {
                let writes = knowledge.writes.unwrap_or_default();
                self.on_apply(
                    now,
                    txn_id,
                    txn,
                    knowledge.execute_at,
                    knowledge.deps,
                    writes,
                )?;
            }
            (status, Some(txn)) if status.is_decided() => {
                self.on_commit(now, txn_id, txn, knowledge.execute_at, knowledge.deps, None)?;
            }
            (_, Some(txn)) => {
                // Learn the definition unless the local command already has it (a stub made
                // by AcceptInvalidate or a recovery has none).
                let has_txn = self
                    .commands
                    .get(&txn_id)
                    .is_some_and(|command| command.txn.is_some());
                if !has_txn {
                    self.learned.insert(txn_id, txn);
                }
            }
            (_, None) => {}
        }
        Ok(())
    }

    /// Rebuilds commands, the conflict index and execution state from the journal.
    pub(crate) fn replay(&mut self, now: LocalTime) -> Result<()> {
        self.watermarks = self.journal.watermarks()?;
        let commands = self.journal.replay(now)?;
        for command in commands {
            self.hlc.witness(command.txn_id.timestamp());
            self.hlc.witness(command.execute_at);
            self.hlc.witness(command.promised.0);
            if let Some(txn) = command.txn.clone() {
                let at = command.execute_at.max(command.witnessed_at);
                self.index_command(command.txn_id, &txn, at);
            }
            self.commands.insert(command.txn_id, command);
        }
        let decided: Vec<TxnId> = self
            .commands
            .values()
            .filter(|command| command.status.is_decided() && command.status != Status::Applied)
            .map(|command| command.txn_id)
            .collect();
        for txn_id in &decided {
            self.init_waiting_on(*txn_id);
        }
        for txn_id in decided {
            self.try_execute(now, txn_id)?;
        }
        Ok(())
    }
}
