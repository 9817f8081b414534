//! A replica's state for one transaction (a *command*) and its journal encoding.
//!
//! ```text
//!   PreAccepted ──► Accepted ─────────► Stable ──► ReadyToExecute ──► PreApplied ──► Applied
//!        │      └─► AcceptedInvalidate ──┐  (deps applied)    (writes known)
//!        └───────────────────────────────┴──────────────────────────────► Invalidated
//! ```
//!
//! Accord's Committed and Stable are one status here: Concord sends the final deps with the
//! decision (see `design/accord.md`). `PreApplied` means the writes are known; the command is
//! applied once its deps are. `ReadyToExecute` is volatile: it is journaled as `Stable`.

use std::collections::BTreeSet;

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::timestamp::{Ballot, LocalTime, NodeId, Timestamp, TxnId};
use crate::txn::{Deps, Key, Txn, Update, Writes};

/// Where a command is in its lifecycle. Ordered by progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    PreAccepted,
    Accepted,
    AcceptedInvalidate,
    Stable,
    ReadyToExecute,
    PreApplied,
    Applied,
    Invalidated,
}

impl Status {
    /// Returns true once executeAt and deps are final.
    pub fn is_decided(self) -> bool {
        matches!(
            self,
            Status::Stable | Status::ReadyToExecute | Status::PreApplied | Status::Applied
        )
    }

    /// Returns true when nothing more will happen to the command locally.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Applied | Status::Invalidated)
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Status::PreAccepted => 1,
            Status::Accepted => 2,
            Status::AcceptedInvalidate => 3,
            Status::Stable => 4,
            // Volatile: replay recomputes readiness.
            Status::ReadyToExecute => 4,
            Status::PreApplied => 6,
            Status::Applied => 7,
            Status::Invalidated => 8,
        }
    }

    pub(crate) fn from_u8(value: u8) -> Option<Status> {
        Some(match value {
            1 => Status::PreAccepted,
            2 => Status::Accepted,
            3 => Status::AcceptedInvalidate,
            4 => Status::Stable,
            6 => Status::PreApplied,
            7 => Status::Applied,
            8 => Status::Invalidated,
            _ => return None,
        })
    }
}

/// A replica's state for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub txn_id: TxnId,
    pub status: Status,
    /// No proposal with a lower ballot is accepted.
    pub promised: Ballot,
    /// The ballot of the last accepted proposal.
    pub accepted: Ballot,
    /// This replica's PreAccept vote (`== txn_id` is a fast-path vote); ZERO if it never
    /// pre-accepted.
    pub witnessed_at: Timestamp,
    pub execute_at: Timestamp,
    pub deps: Deps,
    pub txn: Option<Txn>,
    pub writes: Option<Writes>,
    // Volatile state, rebuilt on replay.
    /// Deps not yet applied (or known to execute later).
    pub waiting_on: BTreeSet<TxnId>,
    /// Coordinators waiting for this replica's read at executeAt.
    pub pending_reads: Vec<(NodeId, Ballot)>,
    /// When the command last changed, for the progress log.
    pub last_change: LocalTime,
}

impl Command {
    pub fn new(txn_id: TxnId, now: LocalTime) -> Command {
        Command {
            txn_id,
            status: Status::PreAccepted,
            promised: Ballot::ZERO,
            accepted: Ballot::ZERO,
            witnessed_at: Timestamp::ZERO,
            execute_at: txn_id.timestamp(),
            deps: Deps::new(),
            txn: None,
            writes: None,
            waiting_on: BTreeSet::new(),
            pending_reads: Vec::new(),
            last_change: now,
        }
    }

    /// Encodes the durable part of the command.
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        encoder.u8(RECORD_VERSION);
        encoder.txn_id(self.txn_id);
        encoder.u8(self.status.to_u8());
        encoder.ballot(self.promised);
        encoder.ballot(self.accepted);
        encoder.timestamp(self.witnessed_at);
        encoder.timestamp(self.execute_at);
        encoder.deps(&self.deps);
        match &self.txn {
            None => encoder.u8(0),
            Some(txn) => {
                encoder.u8(1);
                encode_txn(&mut encoder, txn);
            }
        }
        match &self.writes {
            None => encoder.u8(0),
            Some(writes) => {
                encoder.u8(1);
                encoder.writes(writes);
            }
        }
        encoder.buf
    }

    /// Decodes a record written by [`Command::encode`].
    ///
    /// # Errors
    /// `Corruption` if the record does not decode.
    pub fn decode(bytes: &[u8], now: LocalTime) -> Result<Command> {
        let mut decoder = Decoder::new(bytes);
        let version = decoder.u8()?;
        if version != RECORD_VERSION {
            return Err(Error::Corruption(format!(
                "unknown command record version {version}"
            )));
        }
        let txn_id = decoder.txn_id()?;
        let status_byte = decoder.u8()?;
        let status = Status::from_u8(status_byte)
            .ok_or_else(|| Error::Corruption(format!("bad status {status_byte}")))?;
        let mut command = Command::new(txn_id, now);
        command.status = status;
        command.promised = decoder.ballot()?;
        command.accepted = decoder.ballot()?;
        command.witnessed_at = decoder.timestamp()?;
        command.execute_at = decoder.timestamp()?;
        command.deps = decoder.deps()?;
        command.txn = match decoder.u8()? {
            0 => None,
            1 => Some(decode_txn(&mut decoder)?),
            tag => return Err(Error::Corruption(format!("bad txn tag {tag}"))),
        };
        command.writes = match decoder.u8()? {
            0 => None,
            1 => Some(decoder.writes()?),
            tag => return Err(Error::Corruption(format!("bad writes tag {tag}"))),
        };
        if !decoder.is_empty() {
            return Err(Error::Corruption(
                "trailing bytes after command record".into(),
            ));
        }
        Ok(command)
    }
}

const RECORD_VERSION: u8 = 1;

pub(crate) fn encode_txn(encoder: &mut Encoder, txn: &Txn) {
    encoder.u32(txn.reads().len() as u32);
    for key in txn.reads() {
        encoder.key(key);
    }
    match txn.update() {
        Update::None => encoder.u8(0),
        Update::Append(appends) => {
            encoder.u8(1);
            encoder.u32(appends.len() as u32);
            for (key, value) in appends {
                encoder.key(key);
                encoder.u64(*value);
            }
        }
        Update::Transfer {
            from,
            to,
            amount,
            initial_balance,
        } => {
            encoder.u8(2);
            encoder.key(from);
            encoder.key(to);
            encoder.i64(*amount);
            encoder.i64(*initial_balance);
        }
        Update::Put(puts) => {
            encoder.u8(3);
            encoder.u32(puts.len() as u32);
            for (key, value) in puts {
                encoder.key(key);
                encoder.option_bytes(value.as_deref());
            }
        }
        Update::Opaque { writes, body } => {
            encoder.u8(4);
            encoder.u32(writes.len() as u32);
            for key in writes {
                encoder.key(key);
            }
            encoder.bytes(body);
        }
    }
}

pub(crate) fn decode_txn(decoder: &mut Decoder<'_>) -> Result<Txn> {
    let n_reads = decoder.u32()?;
    let mut reads = Vec::new();
    for _ in 0..n_reads {
        reads.push(decoder.key()?);
    }
    let update = match decoder.u8()? {
        0 => Update::None,
        1 => {
            let n = decoder.u32()?;
            let mut appends = Vec::new();
            for _ in 0..n {
                let key = decoder.key()?;
                appends.push((key, decoder.u64()?));
            }
            Update::Append(appends)
        }
        2 => Update::Transfer {
            from: decoder.key()?,
            to: decoder.key()?,
            amount: decoder.i64()?,
            initial_balance: decoder.i64()?,
        },
        3 => {
            let n = decoder.u32()?;
            let mut puts: Vec<(Key, Option<Vec<u8>>)> = Vec::new();
            for _ in 0..n {
                let key = decoder.key()?;
                puts.push((key, decoder.option_bytes()?));
            }
            Update::Put(puts)
        }
        4 => {
            let n = decoder.u32()?;
            if n as usize > crate::txn::TXN_KEYS_MAX {
                return Err(Error::Corruption(format!("opaque update writes {n} keys")));
            }
            let mut writes = Vec::new();
            for _ in 0..n {
                writes.push(decoder.key()?);
            }
            Update::Opaque {
                writes,
                body: decoder.bytes()?,
            }
        }
        tag => return Err(Error::Corruption(format!("bad update tag {tag}"))),
    };
    let keys = reads.iter().cloned().chain(update.keys()).count();
    if keys == 0 || keys > crate::txn::TXN_KEYS_MAX {
        return Err(Error::Corruption(format!("txn with {keys} keys")));
    }
    Ok(Txn::new(reads, update))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::{Domain, Epoch, TxnKind};

    #[test]
    fn command_round_trips_and_rejects_corruption() {
        let ts = Timestamp::new(Epoch(1), 42, 0, NodeId(3));
        let txn_id = TxnId::new(ts, TxnKind::Write, Domain::Key);
        let mut command = Command::new(txn_id, LocalTime(0));
        command.status = Status::PreApplied;
        command.deps.insert(txn_id, Key::numbered(9));
        command.txn = Some(Txn::new(
            vec![Key::numbered(1)],
            Update::Append(vec![(Key::numbered(2), 5)]),
        ));
        let mut writes = Writes::new();
        writes.insert(Key::numbered(2), Some(vec![1, 2, 3]));
        command.writes = Some(writes);
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes, LocalTime(0)).unwrap(), command);
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert!(Command::decode(&bytes[..cut], LocalTime(0)).is_err());
        }

        command.txn = Some(Txn::new(
            vec![Key::numbered(1)],
            Update::Opaque {
                writes: vec![Key::numbered(2), Key::numbered(4)],
                body: b"a body only the data store reads".to_vec(),
            },
        ));
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes, LocalTime(0)).unwrap(), command);
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert!(Command::decode(&bytes[..cut], LocalTime(0)).is_err());
        }
    }
}
