//! The wire form of [`Message`]: what the cluster transport carries between nodes, in the same
//! binary codec as the journal records (`codec.rs`: big-endian integers, length-prefixed bytes).
//!
//! A message is `version (u8) ‖ tag (u8) ‖ fields`. [`MESSAGE_CODEC_VERSION`] is what nodes
//! compare in the transport's handshake; a node refuses peers that encode another version, so a
//! decoder only ever sees its own. Decoding validates every tag, length and count and rejects
//! trailing bytes: a malformed message is an [`Error::Corruption`], never a panic, and never a
//! partially decoded message.

use crate::codec::{Decoder, Encoder};
use crate::command::{Status, decode_txn, encode_txn};
use crate::error::{Error, Result};
use crate::messages::{Knowledge, Message, RecoverOk};
use crate::timestamp::{Epoch, TxnId};
use crate::topology::ShardId;

/// The version of this encoding; bump it on any change to the layout of a message.
/// Version 3 added the sender's topology epoch to the durability-round messages and to
/// `CheckStatusOk` (shard ids name ranges of one epoch only).
pub const MESSAGE_CODEC_VERSION: u8 = 3;

/// Encodes `message` (see the module documentation for the layout).
pub fn encode_message(message: &Message) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u8(MESSAGE_CODEC_VERSION);
    match message {
        Message::PreAccept { txn_id, txn } => {
            e.u8(1);
            e.txn_id(*txn_id);
            encode_txn(&mut e, txn);
        }
        Message::PreAcceptOk {
            txn_id,
            witnessed_at,
            deps,
        } => {
            e.u8(2);
            e.txn_id(*txn_id);
            e.timestamp(*witnessed_at);
            e.deps(deps);
        }
        Message::Accept {
            txn_id,
            txn,
            ballot,
            execute_at,
            deps,
        } => {
            e.u8(3);
            e.txn_id(*txn_id);
            encode_txn(&mut e, txn);
            e.ballot(*ballot);
            e.timestamp(*execute_at);
            e.deps(deps);
        }
        Message::AcceptInvalidate { txn_id, ballot } => {
            e.u8(4);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
        }
        Message::AcceptOk {
            txn_id,
            ballot,
            deps,
        } => {
            e.u8(5);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
            e.deps(deps);
        }
        Message::Nack {
            txn_id,
            ballot,
            promised,
        } => {
            e.u8(6);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
            e.ballot(*promised);
        }
        Message::Commit {
            txn_id,
            txn,
            execute_at,
            deps,
            read,
            ballot,
        } => {
            e.u8(7);
            e.txn_id(*txn_id);
            encode_txn(&mut e, txn);
            e.timestamp(*execute_at);
            e.deps(deps);
            e.u8(u8::from(*read));
            e.ballot(*ballot);
        }
        Message::CommitInvalidate { txn_id } => {
            e.u8(8);
            e.txn_id(*txn_id);
        }
        Message::ReadOk {
            txn_id,
            ballot,
            data,
        } => {
            e.u8(9);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
            e.writes(data);
        }
        Message::ReadNack { txn_id, ballot } => {
            e.u8(10);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
        }
        Message::Apply {
            txn_id,
            txn,
            execute_at,
            deps,
            writes,
        } => {
            e.u8(11);
            e.txn_id(*txn_id);
            encode_txn(&mut e, txn);
            e.timestamp(*execute_at);
            e.deps(deps);
            e.writes(writes);
        }
        Message::ApplyOk { txn_id } => {
            e.u8(12);
            e.txn_id(*txn_id);
        }
        Message::BeginRecovery {
            txn_id,
            txn,
            ballot,
        } => {
            e.u8(13);
            e.txn_id(*txn_id);
            encode_txn(&mut e, txn);
            e.ballot(*ballot);
        }
        Message::RecoverReply {
            txn_id,
            ballot,
            reply,
        } => {
            e.u8(14);
            e.txn_id(*txn_id);
            e.ballot(*ballot);
            encode_recover_ok(&mut e, reply);
        }
        Message::CheckStatus { txn_id } => {
            e.u8(15);
            e.txn_id(*txn_id);
        }
        Message::CheckStatusOk {
            txn_id,
            knowledge,
            durable_before,
            epoch,
        } => {
            e.u8(16);
            e.txn_id(*txn_id);
            match knowledge {
                None => e.u8(0),
                Some(knowledge) => {
                    e.u8(1);
                    encode_knowledge(&mut e, knowledge);
                }
            }
            e.u32(durable_before.len() as u32);
            for (shard, bound) in durable_before {
                e.u32(shard.0);
                e.timestamp(*bound);
            }
            e.u64(epoch.0);
        }
        Message::PreAcceptRejected { txn_id } => {
            e.u8(17);
            e.txn_id(*txn_id);
        }
        Message::SyncFence {
            epoch,
            shard,
            bound,
        } => {
            e.u8(18);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
        }
        Message::SyncFenceOk {
            epoch,
            shard,
            bound,
            known,
        } => {
            e.u8(19);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
            encode_txn_ids(&mut e, known);
        }
        Message::SyncCheck {
            epoch,
            shard,
            bound,
            pass,
            txns,
        } => {
            e.u8(20);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
            e.u32(*pass);
            encode_txn_ids(&mut e, txns);
        }
        Message::SyncCheckOk {
            epoch,
            shard,
            bound,
            pass,
            pending,
            extra,
        } => {
            e.u8(21);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
            e.u32(*pass);
            encode_txn_ids(&mut e, pending);
            encode_txn_ids(&mut e, extra);
        }
        Message::SyncDurable {
            epoch,
            shard,
            bound,
        } => {
            e.u8(22);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
        }
        Message::SyncApplied {
            epoch,
            shard,
            bound,
        } => {
            e.u8(23);
            e.u64(epoch.0);
            e.u32(shard.0);
            e.timestamp(*bound);
        }
    }
    e.buf
}

/// Decodes a message written by [`encode_message`].
///
/// # Errors
/// [`Error::Corruption`] for another codec version, an unknown tag, a truncated message, a bad
/// field or trailing bytes.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    let mut d = Decoder::new(bytes);
    let version = d.u8()?;
    if version != MESSAGE_CODEC_VERSION {
        return Err(Error::Corruption(format!(
            "message codec version {version}, this node decodes {MESSAGE_CODEC_VERSION}"
        )));
    }
    let message = match d.u8()? {
        1 => Message::PreAccept {
            txn_id: d.txn_id()?,
            txn: decode_txn(&mut d)?,
        },
        2 => Message::PreAcceptOk {
            txn_id: d.txn_id()?,
            witnessed_at: d.timestamp()?,
            deps: d.deps()?,
        },
        3 => Message::Accept {
            txn_id: d.txn_id()?,
            txn: decode_txn(&mut d)?,
            ballot: d.ballot()?,
            execute_at: d.timestamp()?,
            deps: d.deps()?,
        },
        4 => Message::AcceptInvalidate {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
        },
        5 => Message::AcceptOk {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
            deps: d.deps()?,
        },
        6 => Message::Nack {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
            promised: d.ballot()?,
        },
        7 => Message::Commit {
            txn_id: d.txn_id()?,
            txn: decode_txn(&mut d)?,
            execute_at: d.timestamp()?,
            deps: d.deps()?,
            read: decode_bool(&mut d)?,
            ballot: d.ballot()?,
        },
        8 => Message::CommitInvalidate {
            txn_id: d.txn_id()?,
        },
        9 => Message::ReadOk {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
            data: d.writes()?,
        },
        10 => Message::ReadNack {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
        },
        11 => Message::Apply {
            txn_id: d.txn_id()?,
            txn: decode_txn(&mut d)?,
            execute_at: d.timestamp()?,
            deps: d.deps()?,
            writes: d.writes()?,
        },
        12 => Message::ApplyOk {
            txn_id: d.txn_id()?,
        },
        13 => Message::BeginRecovery {
            txn_id: d.txn_id()?,
            txn: decode_txn(&mut d)?,
            ballot: d.ballot()?,
        },
        14 => Message::RecoverReply {
            txn_id: d.txn_id()?,
            ballot: d.ballot()?,
            reply: Box::new(decode_recover_ok(&mut d)?),
        },
        15 => Message::CheckStatus {
            txn_id: d.txn_id()?,
        },
        16 => {
            let txn_id = d.txn_id()?;
            let knowledge = match d.u8()? {
                0 => None,
                1 => Some(Box::new(decode_knowledge(&mut d)?)),
                tag => return Err(Error::Corruption(format!("bad knowledge tag {tag}"))),
            };
            let n = d.u32()?;
            let mut durable_before = Vec::new();
            for _ in 0..n {
                let shard = ShardId(d.u32()?);
                durable_before.push((shard, d.timestamp()?));
            }
            Message::CheckStatusOk {
                txn_id,
                knowledge,
                durable_before,
                epoch: Epoch(d.u64()?),
            }
        }
        17 => Message::PreAcceptRejected {
            txn_id: d.txn_id()?,
        },
        18 => Message::SyncFence {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
        },
        19 => Message::SyncFenceOk {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
            known: decode_txn_ids(&mut d)?,
        },
        20 => Message::SyncCheck {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
            pass: d.u32()?,
            txns: decode_txn_ids(&mut d)?,
        },
        21 => Message::SyncCheckOk {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
            pass: d.u32()?,
            pending: decode_txn_ids(&mut d)?,
            extra: decode_txn_ids(&mut d)?,
        },
        22 => Message::SyncDurable {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
        },
        23 => Message::SyncApplied {
            epoch: Epoch(d.u64()?),
            shard: ShardId(d.u32()?),
            bound: d.timestamp()?,
        },
        tag => return Err(Error::Corruption(format!("unknown message tag {tag}"))),
    };
    if !d.is_empty() {
        return Err(Error::Corruption(format!(
            "trailing bytes after a {} message",
            message.name()
        )));
    }
    Ok(message)
}

fn decode_bool(d: &mut Decoder<'_>) -> Result<bool> {
    match d.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Error::Corruption(format!("bad boolean {other}"))),
    }
}

fn decode_status(d: &mut Decoder<'_>) -> Result<Status> {
    let byte = d.u8()?;
    Status::from_u8(byte).ok_or_else(|| Error::Corruption(format!("bad status {byte}")))
}

fn encode_txn_ids(e: &mut Encoder, ids: &[TxnId]) {
    e.u32(ids.len() as u32);
    for id in ids {
        e.txn_id(*id);
    }
}

fn decode_txn_ids(d: &mut Decoder<'_>) -> Result<Vec<TxnId>> {
    let n = d.u32()?;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(d.txn_id()?);
    }
    Ok(ids)
}

fn encode_option_txn(e: &mut Encoder, txn: Option<&crate::txn::Txn>) {
    match txn {
        None => e.u8(0),
        Some(txn) => {
            e.u8(1);
            encode_txn(e, txn);
        }
    }
}

fn decode_option_txn(d: &mut Decoder<'_>) -> Result<Option<crate::txn::Txn>> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(decode_txn(d)?)),
        tag => Err(Error::Corruption(format!("bad txn tag {tag}"))),
    }
}

fn encode_option_writes(e: &mut Encoder, writes: Option<&crate::txn::Writes>) {
    match writes {
        None => e.u8(0),
        Some(writes) => {
            e.u8(1);
            e.writes(writes);
        }
    }
}

fn decode_option_writes(d: &mut Decoder<'_>) -> Result<Option<crate::txn::Writes>> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(d.writes()?)),
        tag => Err(Error::Corruption(format!("bad writes tag {tag}"))),
    }
}

fn encode_knowledge(e: &mut Encoder, knowledge: &Knowledge) {
    e.u8(knowledge.status.to_u8());
    encode_option_txn(e, knowledge.txn.as_ref());
    e.timestamp(knowledge.execute_at);
    e.deps(&knowledge.deps);
    encode_option_writes(e, knowledge.writes.as_ref());
}

fn decode_knowledge(d: &mut Decoder<'_>) -> Result<Knowledge> {
    Ok(Knowledge {
        status: decode_status(d)?,
        txn: decode_option_txn(d)?,
        execute_at: d.timestamp()?,
        deps: d.deps()?,
        writes: decode_option_writes(d)?,
    })
}

fn encode_recover_ok(e: &mut Encoder, reply: &RecoverOk) {
    e.u8(reply.status.to_u8());
    e.ballot(reply.accepted);
    e.timestamp(reply.execute_at);
    e.deps(&reply.deps);
    encode_option_txn(e, reply.txn.as_ref());
    encode_option_writes(e, reply.writes.as_ref());
    e.u8(u8::from(reply.voted_fast_path));
    e.u8(u8::from(reply.superseding_rejects));
    encode_txn_ids(e, &reply.earlier_accepted_no_witness);
    encode_txn_ids(e, &reply.later_fast_votes_no_witness);
}

fn decode_recover_ok(d: &mut Decoder<'_>) -> Result<RecoverOk> {
    Ok(RecoverOk {
        status: decode_status(d)?,
        accepted: d.ballot()?,
        execute_at: d.timestamp()?,
        deps: d.deps()?,
        txn: decode_option_txn(d)?,
        writes: decode_option_writes(d)?,
        voted_fast_path: decode_bool(d)?,
        superseding_rejects: decode_bool(d)?,
        earlier_accepted_no_witness: decode_txn_ids(d)?,
        later_fast_votes_no_witness: decode_txn_ids(d)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::{Ballot, Domain, Epoch, NodeId, Timestamp, TxnKind};
    use crate::txn::{Deps, Key, Txn, Update, Writes};

    fn ts(hlc: u64, node: u32) -> Timestamp {
        Timestamp::new(Epoch(2), hlc, 0, NodeId(node))
    }

    fn key(name: &[u8]) -> Key {
        Key::from_partition(name.to_vec())
    }

    /// One of every message, with every optional part both present and absent somewhere.
    fn every_message() -> Vec<Message> {
        let txn_id = TxnId::new(ts(10, 1), TxnKind::Write, Domain::Key);
        let other = TxnId::new(ts(11, 2), TxnKind::Read, Domain::Key);
        let mut deps = Deps::new();
        deps.insert(other, key(b"a"));
        deps.insert(other, key(b"b"));
        let txn = Txn::new(
            vec![key(b"a")],
            Update::Opaque {
                writes: vec![key(b"b")],
                body: vec![1, 2, 3],
            },
        );
        let put = Txn::new(vec![], Update::Put(vec![(key(b"p"), None)]));
        let mut writes = Writes::new();
        writes.insert(key(b"b"), Some(b"value".to_vec()));
        writes.insert(key(b"gone"), None);
        let ballot = Ballot(ts(12, 3));
        let shard = ShardId(4);
        let recover = RecoverOk {
            status: Status::Accepted,
            accepted: ballot,
            execute_at: ts(13, 1),
            deps: deps.clone(),
            txn: Some(txn.clone()),
            writes: None,
            voted_fast_path: true,
            superseding_rejects: false,
            earlier_accepted_no_witness: vec![other],
            later_fast_votes_no_witness: vec![],
        };
        vec![
            Message::PreAccept {
                txn_id,
                txn: txn.clone(),
            },
            Message::PreAcceptOk {
                txn_id,
                witnessed_at: ts(14, 2),
                deps: deps.clone(),
            },
            Message::Accept {
                txn_id,
                txn: put.clone(),
                ballot,
                execute_at: ts(15, 1),
                deps: Deps::new(),
            },
            Message::AcceptInvalidate { txn_id, ballot },
            Message::AcceptOk {
                txn_id,
                ballot,
                deps: deps.clone(),
            },
            Message::Nack {
                txn_id,
                ballot: Ballot::ZERO,
                promised: ballot,
            },
            Message::Commit {
                txn_id,
                txn: txn.clone(),
                execute_at: ts(16, 1),
                deps: deps.clone(),
                read: true,
                ballot,
            },
            Message::CommitInvalidate { txn_id },
            Message::ReadOk {
                txn_id,
                ballot,
                data: writes.clone(),
            },
            Message::ReadNack { txn_id, ballot },
            Message::Apply {
                txn_id,
                txn: txn.clone(),
                execute_at: ts(17, 1),
                deps: deps.clone(),
                writes: writes.clone(),
            },
            Message::ApplyOk { txn_id },
            Message::BeginRecovery {
                txn_id,
                txn: txn.clone(),
                ballot,
            },
            Message::RecoverReply {
                txn_id,
                ballot,
                reply: Box::new(recover),
            },
            Message::CheckStatus { txn_id },
            Message::CheckStatusOk {
                epoch: Epoch(7),
                txn_id,
                knowledge: Some(Box::new(Knowledge {
                    status: Status::Applied,
                    txn: None,
                    execute_at: ts(18, 1),
                    deps,
                    writes: Some(writes),
                })),
                durable_before: vec![(shard, ts(19, 1)), (ShardId(5), ts(20, 2))],
            },
            Message::CheckStatusOk {
                epoch: Epoch(7),
                txn_id,
                knowledge: None,
                durable_before: vec![],
            },
            Message::PreAcceptRejected { txn_id },
            Message::SyncFence {
                epoch: Epoch(7),
                shard,
                bound: ts(21, 1),
            },
            Message::SyncFenceOk {
                epoch: Epoch(7),
                shard,
                bound: ts(21, 1),
                known: vec![txn_id, other],
            },
            Message::SyncCheck {
                epoch: Epoch(7),
                shard,
                bound: ts(21, 1),
                pass: 3,
                txns: vec![txn_id],
            },
            Message::SyncCheckOk {
                epoch: Epoch(7),
                shard,
                bound: ts(21, 1),
                pass: 3,
                pending: vec![other],
                extra: vec![txn_id],
            },
            Message::SyncDurable {
                epoch: Epoch(7),
                shard,
                bound: ts(22, 1),
            },
            Message::SyncApplied {
                epoch: Epoch(7),
                shard,
                bound: ts(23, 1),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let messages = every_message();
        let mut tags = std::collections::BTreeSet::new();
        for message in &messages {
            let bytes = encode_message(message);
            assert_eq!(bytes[0], MESSAGE_CODEC_VERSION);
            tags.insert(bytes[1]);
            assert_eq!(
                &decode_message(&bytes).unwrap(),
                message,
                "{}",
                message.name()
            );
        }
        // Every variant has its own tag.
        assert_eq!(tags, (1..=23).collect());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for message in every_message() {
            let bytes = encode_message(&message);
            // Every truncation fails.
            for len in 0..bytes.len() {
                assert!(
                    decode_message(&bytes[..len]).is_err(),
                    "{} truncated to {len}",
                    message.name()
                );
            }
            // Trailing bytes fail.
            let mut longer = bytes.clone();
            longer.push(0);
            let error = decode_message(&longer).unwrap_err();
            assert!(error.to_string().contains("trailing bytes"), "{error}");
            // Flipping any one byte never panics (it may still decode to another message).
            for i in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[i] ^= 0xff;
                let _ = decode_message(&flipped);
            }
        }
        let error = decode_message(&[MESSAGE_CODEC_VERSION + 1, 1]).unwrap_err();
        assert!(
            error.to_string().contains("message codec version"),
            "{error}"
        );
        let error = decode_message(&[MESSAGE_CODEC_VERSION, 99]).unwrap_err();
        assert!(
            error.to_string().contains("unknown message tag 99"),
            "{error}"
        );
    }
}
