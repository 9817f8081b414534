//! The progress log: a periodic scan that finds commands stalled below Applied and pushes them
//! on.
//!
//! ```text
//!   undecided for too long ───────────────► recover it (BeginRecovery with a fresh ballot)
//!   decided, blocked on a dep ──dep known──► recover the dep if it is undecided
//!                             └─unknown────► CheckStatus at the dep's shard (learn it)
//!   decided, deps applied, no writes ──────► CheckStatus at peers (fetch the writes),
//!                                            then recover (which re-executes and applies)
//! ```
//!
//! Each action backs the command off by a random extra stall so concurrent recoverers rarely
//! duel.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::messages::Message;
use crate::node::Node;
use crate::timestamp::{LocalTime, NodeId, TxnId};

/// The most stalled commands the progress log acts on per scan.
pub const PROGRESS_ACTIONS_PER_TICK_MAX: usize = 64;
/// The most blocking deps of one command chased per scan.
pub const PROGRESS_DEPS_PER_COMMAND_MAX: usize = 8;

impl Node {
    pub(crate) fn on_progress_tick(&mut self, now: LocalTime) -> Result<()> {
        self.drive_sync(now);
        let stall = self.config.stall_micros;
        let stalled: Vec<TxnId> = self
            .commands
            .values()
            .filter(|command| {
                !command.status.is_final()
                    && now.0.saturating_sub(command.last_change.0) > stall
                    && !self.coordinations.contains_key(&command.txn_id)
            })
            .map(|command| command.txn_id)
            .take(PROGRESS_ACTIONS_PER_TICK_MAX)
            .collect();
        for txn_id in stalled {
            // Back off by a random extra stall, so recoverers of one txn rarely duel.
            let jitter = self.next_random() % stall.max(1);
            let Some(command) = self.commands.get_mut(&txn_id) else {
                continue;
            };
            if now.0.saturating_sub(command.last_change.0) <= stall + jitter {
                continue;
            }
            command.last_change = now;
            let status = command.status;
            let txn = command.txn.clone();
            let waiting_on: Vec<TxnId> = command
                .waiting_on
                .iter()
                .copied()
                .take(PROGRESS_DEPS_PER_COMMAND_MAX)
                .collect();
            let dep_keys: Vec<_> = waiting_on
                .iter()
                .filter_map(|dep| command.deps.iter().find(|(id, _)| id == dep))
                .map(|(id, key)| (id, key.clone()))
                .collect();
            if !status.is_decided() {
                // A replica that only saw an AcceptInvalidate (or a BeginRecovery stub) has
                // no definition: use one learned from a peer, and otherwise ask the peers of
                // its own shards (an AcceptInvalidate reaches only home-shard replicas, so
                // this node replicates the home shard).
                // Ask the peers too: a command a late message brought back after it was
                // collected gets no recovery replies, only a "collected" answer (and the
                // peers' watermarks) that drop it.
                if let Some(txn) = txn.or_else(|| self.learned.get(&txn_id).cloned()) {
                    self.start_recovery(now, txn_id, txn);
                }
                {
                    let own: Vec<_> = self
                        .topology
                        .shards
                        .iter()
                        .filter(|shard| shard.is_replica(self.id))
                        .map(|shard| shard.id)
                        .collect();
                    self.check_status_at(txn_id, &own);
                }
                continue;
            }
            if dep_keys.is_empty() {
                // Ready but the writes never came: fetch them, and recover in case nobody has
                // them.
                if let Some(txn) = txn {
                    let shards = self.topology.shards_for_keys(txn.keys());
                    self.check_status_at(txn_id, &shards);
                    if self.next_random().is_multiple_of(2) {
                        self.start_recovery(now, txn_id, txn);
                    }
                }
                continue;
            }
            for (dep, key) in dep_keys {
                match self.commands.get(&dep) {
                    Some(dep_command) if !dep_command.status.is_decided() => {
                        // Known here only as a stub (e.g. AcceptedInvalidate without the
                        // definition): recover from a learned definition, else learn it.
                        let dep_txn = dep_command
                            .txn
                            .clone()
                            .or_else(|| self.learned.get(&dep).cloned());
                        match dep_txn {
                            Some(dep_txn) => self.start_recovery(now, dep, dep_txn),
                            None => {
                                let shard = self.topology.shard_for_key(&key).id;
                                self.check_status_at(dep, &[shard]);
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        if let Some(dep_txn) = self.learned.get(&dep).cloned() {
                            self.start_recovery(now, dep, dep_txn);
                        }
                        let shard = self.topology.shard_for_key(&key).id;
                        self.check_status_at(dep, &[shard]);
                    }
                }
            }
        }
        Ok(())
    }

    fn check_status_at(&mut self, txn_id: TxnId, shards: &[crate::topology::ShardId]) {
        let peers: BTreeSet<NodeId> = shards
            .iter()
            .flat_map(|shard| self.topology.shard(*shard).replicas.iter().copied())
            .filter(|node| *node != self.id)
            .collect();
        for peer in peers {
            self.send(peer, Message::CheckStatus { txn_id });
        }
    }
}
