//! The Accord journal on its own segmented append-only log (design/cluster.md, "Journal").
//!
//! [`log`] is the log: framed, CRC-checked records in segment files, one writer thread that
//! group-commits concurrent appends with one `fdatasync`, replay on open, truncation of whole
//! segments below a watermark. [`LogJournal`] implements `concord_txn::storage::Journal` over
//! it: each command state, erase and watermark record is one log record; the live state (the
//! latest record of every command not erased, the last watermarks) is kept in memory and
//! rebuilt from the log on open; segments holding only superseded or erased records are
//! deleted after each erase.
//!
//! Not yet: the command record and the data writes of an apply are one atomic engine batch in
//! `EngineJournal`; a separate log cannot share that atomicity, so `LogJournal::record`
//! refuses a non-empty data batch (the runtime keeps `EngineJournal` until the apply path is
//! split, see the design note).

pub mod log;
mod uring;

use std::collections::BTreeMap;
use std::path::Path;

use concord_storage::engine::{Durability, WriteBatch};
use concord_txn::codec::{Decoder, Encoder};
use concord_txn::command::Command;
use concord_txn::storage::Journal;
use concord_txn::sync::Watermarks;
use concord_txn::timestamp::{LocalTime, TxnId};
use concord_txn::{Error, Result};

use self::log::{Log, LogConfig, LogError, Lsn};

const TAG_COMMAND: u8 = 1;
const TAG_ERASE: u8 = 2;
const TAG_WATERMARKS: u8 = 3;

/// `concord_txn::storage::Journal` on a [`Log`].
#[derive(Debug)]
pub struct LogJournal {
    log: Log,
    /// Latest record of every live command: its LSN and encoded command.
    commands: BTreeMap<TxnId, (Lsn, Vec<u8>)>,
    /// The last watermarks record.
    watermarks: Option<(Lsn, Vec<u8>)>,
}

fn log_error(error: LogError) -> Error {
    Error::Storage(concord_storage::Error::Engine(error.to_string()))
}

impl LogJournal {
    /// Opens the journal in `dir`, replaying its log.
    ///
    /// # Errors
    /// When the log cannot be opened or a record does not decode.
    pub fn open(dir: &Path, config: LogConfig) -> Result<LogJournal> {
        let (log, records) = Log::open(dir, config).map_err(log_error)?;
        let mut commands = BTreeMap::new();
        let mut watermarks = None;
        for record in records {
            let mut decoder = Decoder::new(&record.payload);
            match decoder.u8()? {
                TAG_COMMAND => {
                    let txn_id = decoder.txn_id()?;
                    commands.insert(txn_id, (record.lsn, decoder.bytes()?));
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
        Ok(LogJournal {
            log,
            commands,
            watermarks,
        })
    }

    /// The log under this journal (its counters).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The lowest LSN still needed: everything below it is superseded or erased.
    fn live_floor(&self) -> Option<Lsn> {
        let commands = self.commands.values().map(|(lsn, _)| *lsn);
        commands
            .chain(self.watermarks.as_ref().map(|(lsn, _)| *lsn))
            .min()
    }
}

impl Journal for LogJournal {
    fn record(&mut self, command: &Command, data: WriteBatch, _: Durability) -> Result<()> {
        if !data.is_empty() {
            return Err(Error::Storage(concord_storage::Error::Unsupported(
                "data writes in the log journal (the apply batch needs the engine journal)".into(),
            )));
        }
        let encoded = command.encode();
        let mut encoder = Encoder::default();
        encoder.u8(TAG_COMMAND);
        encoder.txn_id(command.txn_id);
        encoder.bytes(&encoded);
        // Buffered records are made durable too: the group commit makes that cheap.
        let lsn = self.log.append(encoder.buf).map_err(log_error)?;
        self.commands.insert(command.txn_id, (lsn, encoded));
        Ok(())
    }

    fn erase(&mut self, txn_ids: &[TxnId]) -> Result<()> {
        if txn_ids.is_empty() {
            return Ok(());
        }
        let mut encoder = Encoder::default();
        encoder.u8(TAG_ERASE);
        for txn_id in txn_ids {
            encoder.txn_id(*txn_id);
        }
        self.log.append(encoder.buf).map_err(log_error)?;
        for txn_id in txn_ids {
            self.commands.remove(txn_id);
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
            .map(|(_, bytes)| Command::decode(bytes, now))
            .collect()
    }

    fn record_count(&self) -> Result<u64> {
        Ok(self.commands.len() as u64)
    }
}

#[cfg(test)]
mod tests;
