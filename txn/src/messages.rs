//! The messages nodes exchange. Plain values: the simulator passes them by clone, the server
//! will encode them on its transport.
//!
//! ```text
//!   coordinator                         replica
//!   PreAccept(txn)              ──►     PreAcceptOk(witnessedAt, deps) | Nack
//!   Accept(ballot, at, deps)    ──►     AcceptOk(deps < at) | Nack
//!   AcceptInvalidate(ballot)    ──►     AcceptOk | Nack
//!   Commit(at, deps) [+ read]   ──►     ReadOk(data) once executable | ReadNack
//!   CommitInvalidate            ──►     (nothing)
//!   Apply(at, deps, writes)     ──►     ApplyOk
//!   BeginRecovery(ballot)       ──►     RecoverOk(...) | Nack
//!   CheckStatus                 ──►     CheckStatusOk(what the replica knows, its DurableBefore)
//!   PreAccept below RejectBefore ──►    PreAcceptRejected (the coordinator gives up)
//!
//!   durability driver (sync.rs)         every replica of one shard
//!   SyncFence(shard, bound)     ──►     SyncFenceOk(every TxnId it holds below bound)
//!   SyncCheck(bound, pass, txns) ──►    SyncCheckOk(pending: not final here, extra: unlisted)
//!   SyncApplied(shard, bound)   ──►     (a quorum answered one pass clean: raise the
//!                                        applied-before floor; sent to those replicas only)
//!   SyncDurable(shard, bound)   ──►     (nothing; commands below bound may be erased)
//! ```

use crate::command::Status;
use crate::timestamp::{Ballot, Epoch, Timestamp, TxnId};
use crate::topology::ShardId;
use crate::txn::{Deps, ReadData, Txn, Writes};

/// What a replica knows about a transaction, sent to a peer that is blocked on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knowledge {
    pub status: Status,
    pub txn: Option<Txn>,
    pub execute_at: Timestamp,
    pub deps: Deps,
    pub writes: Option<Writes>,
}

/// A replica's answer to BeginRecovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverOk {
    pub status: Status,
    pub accepted: Ballot,
    pub execute_at: Timestamp,
    pub deps: Deps,
    pub txn: Option<Txn>,
    pub writes: Option<Writes>,
    /// The replica's PreAccept vote was t0 (it accepted the fast path).
    pub voted_fast_path: bool,
    /// A conflicting transaction that will execute after t0 was decided (or accepted, with a
    /// higher TxnId) without t0 in its deps: t0 cannot have taken the fast path.
    pub superseding_rejects: bool,
    /// Conflicting transactions with a lower TxnId, accepted to execute after t0 without
    /// witnessing it: recovery must wait until they are decided.
    pub earlier_accepted_no_witness: Vec<TxnId>,
    /// Conflicting transactions with a higher TxnId that this replica pre-accepted with a
    /// fast-path vote (`witnessedAt == t0`) without witnessing t0. Each may have been
    /// fast-committed without t0 in its deps, so proposing t0 now could order t0 before a
    /// transaction that never waits for it: recovery must wait until they are decided.
    pub later_fast_votes_no_witness: Vec<TxnId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    PreAccept {
        txn_id: TxnId,
        txn: Txn,
    },
    PreAcceptOk {
        txn_id: TxnId,
        witnessed_at: Timestamp,
        deps: Deps,
    },
    Accept {
        txn_id: TxnId,
        txn: Txn,
        ballot: Ballot,
        execute_at: Timestamp,
        deps: Deps,
    },
    AcceptInvalidate {
        txn_id: TxnId,
        ballot: Ballot,
    },
    AcceptOk {
        txn_id: TxnId,
        ballot: Ballot,
        deps: Deps,
    },
    /// The replica promised `promised`, above the sender's ballot.
    Nack {
        txn_id: TxnId,
        ballot: Ballot,
        promised: Ballot,
    },
    /// The decision is stable: execute at `execute_at` after `deps`. With `read`, the replica
    /// also answers with the values it reads at executeAt.
    Commit {
        txn_id: TxnId,
        txn: Txn,
        execute_at: Timestamp,
        deps: Deps,
        read: bool,
        ballot: Ballot,
    },
    CommitInvalidate {
        txn_id: TxnId,
    },
    ReadOk {
        txn_id: TxnId,
        ballot: Ballot,
        data: ReadData,
    },
    /// The replica cannot read at executeAt any more (it already applied later writes).
    ReadNack {
        txn_id: TxnId,
        ballot: Ballot,
    },
    Apply {
        txn_id: TxnId,
        txn: Txn,
        execute_at: Timestamp,
        deps: Deps,
        writes: Writes,
    },
    ApplyOk {
        txn_id: TxnId,
    },
    BeginRecovery {
        txn_id: TxnId,
        txn: Txn,
        ballot: Ballot,
    },
    RecoverReply {
        txn_id: TxnId,
        ballot: Ballot,
        reply: Box<RecoverOk>,
    },
    CheckStatus {
        txn_id: TxnId,
    },
    CheckStatusOk {
        txn_id: TxnId,
        knowledge: Option<Box<Knowledge>>,
        /// The responder's DurableBefore of every shard: a node that missed a SyncDurable
        /// catches up through the peers it asks about the deps it waits on.
        durable_before: Vec<(ShardId, Timestamp)>,
        /// The responder's topology epoch, whose shard ids `durable_before` uses.
        epoch: Epoch,
    },
    /// The replica fenced t0 off (it is below the shard's RejectBefore and unknown here):
    /// the transaction can never be committed through this replica.
    PreAcceptRejected {
        txn_id: TxnId,
    },
    /// From the shard's durability driver: reject PreAccepts below `bound` from now on.
    SyncFence {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
    },
    /// The fence is durable; `known` lists every transaction held here below `bound`.
    SyncFenceOk {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
        known: Vec<TxnId>,
    },
    /// Are `txns` (and everything else held here below `bound`) final here? Fences too.
    SyncCheck {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
        /// The driver's pass number; the reply carries it back.
        pass: u32,
        txns: Vec<TxnId>,
    },
    /// `pending`: listed or held transactions not yet final here; `extra`: held here below
    /// `bound` but not listed.
    SyncCheckOk {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
        pass: u32,
        pending: Vec<TxnId>,
        extra: Vec<TxnId>,
    },
    /// A quorum of the shard's replicas, the receiver among them, answered one check pass at
    /// `bound` with nothing pending and nothing unlisted: every transaction below `bound`
    /// that can still commit is applied on the receiver (its applied-before floor).
    SyncApplied {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
    },
    /// Every transaction below `bound` on the shard is final on every replica (or can never
    /// commit): commands below it may be erased.
    SyncDurable {
        /// The sender's topology epoch: shard ids name ranges of one epoch only, so a
        /// receiver on another epoch ignores the message.
        epoch: Epoch,
        shard: ShardId,
        bound: Timestamp,
    },
}

impl Message {
    /// The topology epoch a durability-round message was sent in (`None` for the others).
    pub fn sync_epoch(&self) -> Option<Epoch> {
        match self {
            Message::SyncFence { epoch, .. }
            | Message::SyncFenceOk { epoch, .. }
            | Message::SyncCheck { epoch, .. }
            | Message::SyncCheckOk { epoch, .. }
            | Message::SyncApplied { epoch, .. }
            | Message::SyncDurable { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// The transaction the message is about (none for the durability driver's messages).
    pub fn txn_id(&self) -> Option<TxnId> {
        Some(match self {
            Message::PreAccept { txn_id, .. }
            | Message::PreAcceptOk { txn_id, .. }
            | Message::Accept { txn_id, .. }
            | Message::AcceptInvalidate { txn_id, .. }
            | Message::AcceptOk { txn_id, .. }
            | Message::Nack { txn_id, .. }
            | Message::Commit { txn_id, .. }
            | Message::CommitInvalidate { txn_id }
            | Message::ReadOk { txn_id, .. }
            | Message::ReadNack { txn_id, .. }
            | Message::Apply { txn_id, .. }
            | Message::ApplyOk { txn_id }
            | Message::BeginRecovery { txn_id, .. }
            | Message::RecoverReply { txn_id, .. }
            | Message::CheckStatus { txn_id }
            | Message::PreAcceptRejected { txn_id }
            | Message::CheckStatusOk { txn_id, .. } => *txn_id,
            Message::SyncFence { .. }
            | Message::SyncFenceOk { .. }
            | Message::SyncCheck { .. }
            | Message::SyncCheckOk { .. }
            | Message::SyncApplied { .. }
            | Message::SyncDurable { .. } => return None,
        })
    }

    /// A short name for traces and message counts.
    pub fn name(&self) -> &'static str {
        match self {
            Message::PreAccept { .. } => "PreAccept",
            Message::PreAcceptOk { .. } => "PreAcceptOk",
            Message::Accept { .. } => "Accept",
            Message::AcceptInvalidate { .. } => "AcceptInvalidate",
            Message::AcceptOk { .. } => "AcceptOk",
            Message::Nack { .. } => "Nack",
            Message::Commit { .. } => "Commit",
            Message::CommitInvalidate { .. } => "CommitInvalidate",
            Message::ReadOk { .. } => "ReadOk",
            Message::ReadNack { .. } => "ReadNack",
            Message::Apply { .. } => "Apply",
            Message::ApplyOk { .. } => "ApplyOk",
            Message::BeginRecovery { .. } => "BeginRecovery",
            Message::RecoverReply { .. } => "RecoverReply",
            Message::CheckStatus { .. } => "CheckStatus",
            Message::CheckStatusOk { .. } => "CheckStatusOk",
            Message::PreAcceptRejected { .. } => "PreAcceptRejected",
            Message::SyncFence { .. } => "SyncFence",
            Message::SyncFenceOk { .. } => "SyncFenceOk",
            Message::SyncCheck { .. } => "SyncCheck",
            Message::SyncCheckOk { .. } => "SyncCheckOk",
            Message::SyncApplied { .. } => "SyncApplied",
            Message::SyncDurable { .. } => "SyncDurable",
        }
    }
}
