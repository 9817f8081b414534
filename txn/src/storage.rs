//! The protocol's two storage interfaces and their engine-backed implementations.
//!
//! - [`Journal`]: durable command state. Every state change a reply depends on is recorded
//!   with `Durability::Sync`, and [`Journal::flush`] at the end of each `Node::handle` makes
//!   the step's records durable before any of its effects (messages, client replies) leave the
//!   node: one sync per step, not one per record. A restarted node rebuilds from
//!   [`Journal::replay`].
//! - [`DataStore`]: the data the transactions read and write, narrowed to "read these keys"
//!   and "add these writes to a batch". The server implements it over the row store.
//!
//! Both live in one engine per node, so applying a transaction's writes and recording its
//! Applied state is one `WriteBatch` (command records in `Family::Txn`):
//!
//! ```text
//!   WriteBatch { Rows: writes of the txn ; Txn: c/<txn id> → Command(Applied) }
//! ```

use std::fmt::Debug;
use std::sync::Arc;

use concord_storage::engine::{Direction, Durability, Engine, Family, KeyRange, WriteBatch};

use crate::codec::Encoder;
use crate::command::Command;
use crate::error::{Error, Result};
use crate::sync::Watermarks;
use crate::timestamp::{LocalTime, Timestamp, TxnId};
use crate::txn::{Key, ReadData, Txn, Writes};

/// Durable command state.
pub trait Journal: Debug {
    /// Records `command` atomically with `data` (data writes, possibly empty). `Sync`: durable
    /// once the next [`Journal::flush`] returns (an implementation may sync at once);
    /// `Buffered`: a crash may lose it (replay then repeats the step it came from).
    ///
    /// # Errors
    /// When storage fails; the node must stop.
    fn record(&mut self, command: &Command, data: WriteBatch, durability: Durability)
    -> Result<()>;

    /// Makes every `Sync` record since the last flush durable. The Node calls it at the end of
    /// every step (`Node::handle`, `Node::open`), before the step's effects are returned: a
    /// crash before it loses the whole step, and nothing of the step has left the node.
    ///
    /// # Errors
    /// When storage fails; the node must stop.
    fn flush(&mut self) -> Result<()>;

    /// Forgets commands (garbage collection). Buffered: the watermarks that allow it were
    /// recorded with `Sync` first, and a command a crash brings back is final and erased
    /// again by the next durability round.
    ///
    /// # Errors
    /// When storage fails.
    fn erase(&mut self, txn_ids: &[TxnId]) -> Result<()>;

    /// Records the per-shard RejectBefore / DurableBefore watermarks (`Sync`).
    ///
    /// # Errors
    /// When storage fails.
    fn record_watermarks(&mut self, watermarks: &Watermarks) -> Result<()>;

    /// The watermarks last recorded (empty for a new node).
    ///
    /// # Errors
    /// When storage fails or the record is corrupt.
    fn watermarks(&self) -> Result<Watermarks>;

    /// Every recorded command, in TxnId order.
    ///
    /// # Errors
    /// When storage fails or a record is corrupt.
    fn replay(&self, now: LocalTime) -> Result<Vec<Command>>;

    /// The number of records (for bounded-state checks).
    ///
    /// # Errors
    /// When storage fails.
    fn record_count(&self) -> Result<u64>;
}

/// The data transactions read and write.
pub trait DataStore: Debug {
    /// Reads `keys` of `txn` in the current state, which the protocol guarantees is the state
    /// at `txn`'s executeAt (given: a store that judges expiry by time uses it, so every
    /// replica reads the same). A store that executes [`Update::Opaque`](crate::txn::Update::Opaque) bodies reads what the body
    /// asks for; the built-in updates read each key's value.
    ///
    /// # Errors
    /// When storage fails.
    fn read(&self, txn: &Txn, keys: &[Key], execute_at: Timestamp) -> Result<ReadData>;

    /// Computes `txn`'s writes from the values read at its executeAt (every shard's reads
    /// together). Must be a pure function of `txn` and `reads`: the coordinator, a recovery
    /// coordinator and every replica must get the same writes.
    ///
    /// # Errors
    /// `Execution` for an [`Update::Opaque`](crate::txn::Update::Opaque) body the store cannot
    /// execute.
    fn compute(&self, txn: &Txn, reads: &ReadData) -> Result<Writes> {
        txn.update().compute(reads).ok_or_else(|| {
            Error::Execution("this data store does not execute opaque transaction bodies".into())
        })
    }

    /// Adds `writes`, made at `execute_at`, to `batch`.
    fn write(&self, writes: &Writes, execute_at: Timestamp, batch: &mut WriteBatch);
}

const COMMAND_PREFIX: &[u8] = b"c/";
const DATA_PREFIX: &[u8] = b"d/";
const WATERMARKS_KEY: &[u8] = b"w/";

fn command_key(txn_id: TxnId) -> Vec<u8> {
    let mut encoder = Encoder::default();
    encoder.buf.extend_from_slice(COMMAND_PREFIX);
    encoder.txn_id(txn_id);
    encoder.buf
}

/// The journal as records in the engine's `Family::Txn`, one per command. `Sync` records are
/// written buffered and synced together by [`Journal::flush`] (`Engine::sync_wal`: the WAL is
/// ordered, so one sync covers every write before it).
#[derive(Debug)]
pub struct EngineJournal<E: Engine> {
    engine: Arc<E>,
    /// A `Sync` record was written since the last flush.
    unsynced: bool,
}

impl<E: Engine + Debug> EngineJournal<E> {
    pub fn new(engine: Arc<E>) -> EngineJournal<E> {
        EngineJournal {
            engine,
            unsynced: false,
        }
    }
}

impl<E: Engine + Debug> Journal for EngineJournal<E> {
    fn record(
        &mut self,
        command: &Command,
        mut data: WriteBatch,
        durability: Durability,
    ) -> Result<()> {
        data.put(Family::Txn, command_key(command.txn_id), command.encode());
        self.engine.write(data, Durability::Buffered)?;
        if durability == Durability::Sync {
            self.unsynced = true;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.unsynced {
            self.engine.sync_wal()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn erase(&mut self, txn_ids: &[TxnId]) -> Result<()> {
        if txn_ids.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for txn_id in txn_ids {
            batch.delete(Family::Txn, command_key(*txn_id));
        }
        self.engine.write(batch, Durability::Buffered)?;
        Ok(())
    }

    fn record_watermarks(&mut self, watermarks: &Watermarks) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Family::Txn, WATERMARKS_KEY.to_vec(), watermarks.encode());
        self.engine.write(batch, Durability::Sync)?;
        Ok(())
    }

    fn watermarks(&self) -> Result<Watermarks> {
        match self.engine.get(Family::Txn, WATERMARKS_KEY)? {
            None => Ok(Watermarks::default()),
            Some(bytes) => Watermarks::decode(&bytes),
        }
    }

    fn replay(&self, now: LocalTime) -> Result<Vec<Command>> {
        let mut commands = Vec::new();
        let range = KeyRange::prefix(COMMAND_PREFIX);
        for entry in self.engine.scan(Family::Txn, &range, Direction::Forward)? {
            let (_, value) = entry?;
            commands.push(Command::decode(&value, now)?);
        }
        Ok(commands)
    }

    fn record_count(&self) -> Result<u64> {
        let range = KeyRange::prefix(COMMAND_PREFIX);
        let mut count = 0;
        for entry in self.engine.scan(Family::Txn, &range, Direction::Forward)? {
            entry?;
            count += 1;
        }
        Ok(count)
    }
}

/// A key/value data store in the engine's `Family::Rows`: one value per key. Used by the
/// simulator (list-append and bank) and tests; the server uses the row store instead.
#[derive(Debug)]
pub struct KvDataStore<E: Engine> {
    engine: Arc<E>,
}

impl<E: Engine + Debug> KvDataStore<E> {
    pub fn new(engine: Arc<E>) -> KvDataStore<E> {
        KvDataStore { engine }
    }

    /// The current value of each key.
    ///
    /// # Errors
    /// When storage fails.
    pub fn values(&self, keys: &[Key]) -> Result<ReadData> {
        let mut data = ReadData::new();
        for key in keys {
            data.insert(key.clone(), self.engine.get(Family::Rows, &data_key(key))?);
        }
        Ok(data)
    }
}

fn data_key(key: &Key) -> Vec<u8> {
    let mut encoder = Encoder::default();
    encoder.buf.extend_from_slice(DATA_PREFIX);
    encoder.key(key);
    encoder.buf
}

impl<E: Engine + Debug> DataStore for KvDataStore<E> {
    fn read(&self, _txn: &Txn, keys: &[Key], _execute_at: Timestamp) -> Result<ReadData> {
        self.values(keys)
    }

    fn write(&self, writes: &Writes, _execute_at: Timestamp, batch: &mut WriteBatch) {
        // The row store will stamp cells with executeAt as their write time; a plain value
        // store needs no timestamp because the protocol applies writes in executeAt order.
        for (key, value) in writes {
            match value {
                Some(value) => batch.put(Family::Rows, data_key(key), value.clone()),
                None => batch.delete(Family::Rows, data_key(key)),
            }
        }
    }
}
