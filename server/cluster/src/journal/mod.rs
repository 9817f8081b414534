//! The Accord journal on its own segmented append-only log (design/cluster.md, "Journal").
//!
//! [`log`] is the log: framed, CRC-checked records in segment files, one writer thread that
//! group-commits concurrent appends with one `fdatasync`, replay on open, truncation of whole
//! segments below a watermark. [`LogJournal`] implements `concord_txn::storage::Journal` over
//! it and the node's engine:
//!
//! ```text
//!   record(cmd, empty, _)        cmd not Applied ──► log append (fdatasync'ed, group commit)
//!   record(cmd Applied, data, d)                 ──► engine.write(data + a/<txn id> → cmd, d)
//!   erase(ids)     engine.sync_wal() if an apply is unsynced ──► log append ──► truncate log
//!   open           log replay ──► live commands; a/ markers override, stale markers deleted
//! ```
//!
//! The apply is split: the command's last log record (PreApplied, synced, holding its writes)
//! is the durable copy of the apply, and the engine batch carries the data with the Applied
//! command as its marker, without a sync of its own. A crash that loses the engine batch
//! leaves the command PreApplied in the log, and the core applies it again on replay (the same
//! writes at the same executeAt) before it takes any input. Invariant J5: the log never
//! records an erase (after which the segment holding the PreApplied record may be deleted)
//! while an apply is not durable in the engine.

pub mod log;
mod uring;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use concord_storage::engine::{Direction, Durability, Engine, Family, KeyRange, WriteBatch};
use concord_txn::codec::{Decoder, Encoder};
use concord_txn::command::{Command, Status};
use concord_txn::storage::Journal;
use concord_txn::sync::Watermarks;
use concord_txn::timestamp::{LocalTime, TxnId};
use concord_txn::{Error, Result};

use self::log::{Log, LogConfig, LogError, Lsn};

const TAG_COMMAND: u8 = 1;
const TAG_ERASE: u8 = 2;
const TAG_WATERMARKS: u8 = 3;

/// The prefix of the applied markers in the engine's `Family::Txn` (the engine journal uses
/// `c/` and `w/`; the two never share an engine, see `design/cluster.md`).
pub const APPLIED_MARKER_PREFIX: &[u8] = b"a/";

fn marker_key(txn_id: TxnId) -> Vec<u8> {
    let mut encoder = Encoder::default();
    encoder.buf.extend_from_slice(APPLIED_MARKER_PREFIX);
    encoder.txn_id(txn_id);
    encoder.buf
}

/// The latest state of one live command.
#[derive(Debug, Clone)]
struct Live {
    /// The LSN of its latest log record: kept until the command is erased, so the segment
    /// holding it (the durable copy of an apply) outlives the engine's unsynced batch.
    lsn: Lsn,
    /// The encoded command (the engine marker's copy once applied).
    bytes: Vec<u8>,
    /// Its Applied state (and the apply's data) is in the engine under an `a/` marker.
    applied_in_engine: bool,
}

/// `concord_txn::storage::Journal` on a [`Log`], with applies written to the engine `E`.
#[derive(Debug)]
pub struct LogJournal<E: Engine> {
    log: Log,
    engine: Arc<E>,
    commands: BTreeMap<TxnId, Live>,
    /// The last watermarks record.
    watermarks: Option<(Lsn, Vec<u8>)>,
    /// An apply was written to the engine without a sync since the last `sync_wal`.
    engine_unsynced: bool,
}

fn log_error(error: LogError) -> Error {
    Error::Storage(concord_storage::Error::Engine(error.to_string()))
}

impl<E: Engine + Debug> LogJournal<E> {
    /// Opens the journal in `dir`, replaying its log, and resolves each live command against
    /// its applied marker in `engine` (a marker of a command the log does not hold is stale:
    /// an erase whose engine delete a crash lost; it is deleted).
    ///
    /// # Errors
    /// When the log cannot be opened, a record does not decode or the engine fails.
    pub fn open(dir: &Path, config: LogConfig, engine: Arc<E>) -> Result<LogJournal<E>> {
        let (log, records) = Log::open(dir, config).map_err(log_error)?;
        let mut commands = BTreeMap::new();
        let mut watermarks = None;
        for record in records {
            let mut decoder = Decoder::new(&record.payload);
            match decoder.u8()? {
                TAG_COMMAND => {
                    let txn_id = decoder.txn_id()?;
                    let live = Live {
                        lsn: record.lsn,
                        bytes: decoder.bytes()?,
                        applied_in_engine: false,
                    };
                    commands.insert(txn_id, live);
                }
                TAG_ERASE => {
                    while !decoder.is_empty() {
                        commands.remove(&decoder.txn_id()?);
                    }
                }
                TAG_WATERMARKS => watermarks = Some((record.lsn, decoder.bytes()?)),
                tag => {
                    return Err(Error::Corruption(format!(
                        "journal record {} has unknown tag {tag}",
                        record.lsn
                    )));
                }
            }
        }
        let mut stale = WriteBatch::new();
        let range = KeyRange::prefix(APPLIED_MARKER_PREFIX);
        for entry in engine.scan(Family::Txn, &range, Direction::Forward)? {
            let (key, value) = entry?;
            let txn_id = Decoder::new(&key[APPLIED_MARKER_PREFIX.len()..]).txn_id()?;
            match commands.get_mut(&txn_id) {
                Some(live) => {
                    live.bytes = value;
                    live.applied_in_engine = true;
                }
                None => stale.delete(Family::Txn, key),
            }
        }
        if !stale.is_empty() {
            engine.write(stale, Durability::Buffered)?;
        }
        Ok(LogJournal {
            log,
            engine,
            commands,
            watermarks,
            // What the engine recovered may not be on disk yet (a process crash leaves its
            // log in the page cache): the first erase syncs it.
            engine_unsynced: true,
        })
    }

    /// The log under this journal (its counters).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The lowest LSN still needed: everything below it is superseded or erased.
    fn live_floor(&self) -> Option<Lsn> {
        let commands = self.commands.values().map(|live| live.lsn);
        commands
            .chain(self.watermarks.as_ref().map(|(lsn, _)| *lsn))
            .min()
    }

    fn append_command(&mut self, command: &Command, encoded: Vec<u8>) -> Result<Lsn> {
        let mut encoder = Encoder::default();
        encoder.u8(TAG_COMMAND);
        encoder.txn_id(command.txn_id);
        encoder.bytes(&encoded);
        self.log.append(encoder.buf).map_err(log_error)
    }

    fn sync_engine(&mut self) -> Result<()> {
        if self.engine_unsynced {
            self.engine.sync_wal()?;
            self.engine_unsynced = false;
        }
        Ok(())
    }
}

impl<E: Engine + Debug> Journal for LogJournal<E> {
    fn record(
        &mut self,
        command: &Command,
        data: WriteBatch,
        durability: Durability,
    ) -> Result<()> {
        let encoded = command.encode();
        if command.status == Status::Applied {
            let lsn = match self.commands.get(&command.txn_id) {
                Some(live) => live.lsn,
                // Applied with no earlier record here: the log gets the command first, so
                // the marker is never the only copy (replay re-applies from this record if
                // the engine loses the batch).
                None => self.append_command(command, encoded.clone())?,
            };
            let mut batch = data;
            batch.put(Family::Txn, marker_key(command.txn_id), encoded.clone());
            self.engine.write(batch, durability)?;
            if durability == Durability::Buffered {
                self.engine_unsynced = true;
            }
            let live = Live {
                lsn,
                bytes: encoded,
                applied_in_engine: true,
            };
            self.commands.insert(command.txn_id, live);
            return Ok(());
        }
        if !data.is_empty() {
            return Err(Error::Storage(concord_storage::Error::Unsupported(
                "data writes with a command that is not Applied".into(),
            )));
        }
        if self
            .commands
            .get(&command.txn_id)
            .is_some_and(|live| live.applied_in_engine)
        {
            // A state after Applied (the core never records one): the marker would override
            // this record on replay, so it goes first, durably.
            let mut batch = WriteBatch::new();
            batch.delete(Family::Txn, marker_key(command.txn_id));
            self.engine.write(batch, Durability::Sync)?;
        }
        // Buffered records are made durable too: the group commit makes that cheap.
        let lsn = self.append_command(command, encoded.clone())?;
        let live = Live {
            lsn,
            bytes: encoded,
            applied_in_engine: false,
        };
        self.commands.insert(command.txn_id, live);
        Ok(())
    }

    /// Nothing to do: every record above is durable when `record` returns (the log's
    /// `append` waits for its group's fdatasync; an Applied record is in the log already).
    /// Per-step buffering of the log's appends is not built (design/cluster.md, "Journal").
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn erase(&mut self, txn_ids: &[TxnId]) -> Result<()> {
        if txn_ids.is_empty() {
            return Ok(());
        }
        // J5: once the erase is in the log, the PreApplied record may be truncated; the
        // applies it backs must be durable in the engine first.
        self.sync_engine()?;
        let mut encoder = Encoder::default();
        encoder.u8(TAG_ERASE);
        for txn_id in txn_ids {
            encoder.txn_id(*txn_id);
        }
        self.log.append(encoder.buf).map_err(log_error)?;
        let mut markers = WriteBatch::new();
        for txn_id in txn_ids {
            if let Some(live) = self.commands.remove(txn_id)
                && live.applied_in_engine
            {
                markers.delete(Family::Txn, marker_key(*txn_id));
            }
        }
        if !markers.is_empty() {
            // Buffered: a marker a crash brings back is stale and deleted on open.
            self.engine.write(markers, Durability::Buffered)?;
        }
        if let Some(floor) = self.live_floor() {
            self.log.truncate_below(floor).map_err(log_error)?;
        }
        Ok(())
    }

    fn record_watermarks(&mut self, watermarks: &Watermarks) -> Result<()> {
        let encoded = watermarks.encode();
        let mut encoder = Encoder::default();
        encoder.u8(TAG_WATERMARKS);
        encoder.bytes(&encoded);
        let lsn = self.log.append(encoder.buf).map_err(log_error)?;
        self.watermarks = Some((lsn, encoded));
        Ok(())
    }

    fn watermarks(&self) -> Result<Watermarks> {
        match &self.watermarks {
            None => Ok(Watermarks::default()),
            Some((_, bytes)) => Watermarks::decode(bytes),
        }
    }

    fn replay(&self, now: LocalTime) -> Result<Vec<Command>> {
        self.commands
            .values()
            .map(|live| {
                let mut command = Command::decode(&live.bytes, now)?;
                if command.status == Status::Applied
                    && !live.applied_in_engine
                    && command.writes.is_some()
                {
                    // Logged as Applied (it had no earlier record) but its batch never
                    // reached the engine durably: apply it again.
                    command.status = Status::PreApplied;
                }
                Ok(command)
            })
            .collect()
    }

    fn record_count(&self) -> Result<u64> {
        Ok(self.commands.len() as u64)
    }
}

#[cfg(test)]
mod tests;
