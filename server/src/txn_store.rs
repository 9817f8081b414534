//! CQL transactions through the Accord protocol core: the server's
//! [`DataStore`] (reads at executeAt, computes the writes, applies rows and
//! change-feed records in one batch) and the codec of the transaction body.
//!
//! ```text
//!  Db::execute(Transaction) ─► Txn { keys, Update::Opaque { writes, body } }
//!     body  = the encoded db::Transaction (reads, condition, derived cells, mutations)
//!     Key   = (token, table id ‖ serialized partition key): conflicts per table partition
//!  CqlStore::read(txn, keys, executeAt) ─► per key: the results of the reads on it
//!  CqlStore::compute(txn, reads)        ─► condition, derived cells ─► per key: mutations
//!  CqlStore::write(writes, executeAt)   ─► rows + feed records at executeAt, one WriteBatch
//! ```
//!
//! `compute` never fails on data: a condition that does not hold, a derived
//! cell that does not apply (null, overflow) or a mutation that does not fit
//! the schema computes no writes, and the client, which evaluates the same
//! body over the same reads ([`execute_body`]), gets the error. Only a body
//! that does not decode is an error (a bug: the node stops).
//!
//! The change feed: the runtime's [`StepObserver`] ([`FeedPacer`]) holds a
//! shared feed ticket at the Node's apply floor during a step, and after it
//! advances the feed's watermark to just below the new floor (invariant C1
//! of design/columnar.md and "Change feed frontier" in design/cluster.md).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use concord_cluster::runtime::StepObserver;
use concord_storage::cell::{Expiry, WriteTime};
use concord_storage::engine::{Engine, WriteBatch};
use concord_storage::feed::{self, ChangeFeed, FeedPosition, SharedFeedTicket};
use concord_storage::keys;
use concord_storage::partitioner::Token;
use concord_storage::rows::{self, ColumnValue, Mutation, Partition, Row, TableRegistry};
use concord_storage::schema::{ColumnId, TableDef, TableId};
use concord_storage::value::CqlValue;
use concord_txn::storage::DataStore;
use concord_txn::timestamp::Timestamp;
use concord_txn::txn::{Key, ReadData, TXN_KEYS_MAX, Txn, Update, Writes};
use parking_lot::Mutex;

use crate::db::{
    Arithmetic, Check, CompareOp, Derivation, DerivedCell, Read, ReadResult, Transaction,
};

/// The body format: 2 carries the schema version the coordinator built the transaction on;
/// 1 (before it) decodes as version 0.
const BODY_VERSION: u8 = 2;
const BODY_VERSION_UNVERSIONED: u8 = 1;
/// The first byte of a key's writes that carry the schema version (then a u64 and the
/// mutations). Writes without it start with their u32 count, whose first byte is 0.
const WRITES_VERSIONED: u8 = 0x80;

/// How long a replica waits for its schema to reach the version a transaction was built on,
/// when the transaction names a table or column this node does not know yet (its schema log
/// trails the coordinator's), before treating the table as dropped (design/cluster.md,
/// "Schema through the metadata log"). The Accord thread waits: a node without the schema
/// cannot apply the transaction, and skipping it would lose an acknowledged write here.
pub const TXN_SCHEMA_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Table `id` from `registry`; when this node does not know it and its schema is older
/// than `schema_version` (the transaction's), waits up to [`TXN_SCHEMA_WAIT`] for the
/// schema first. `None`: the table was dropped (or never reached this node in time).
fn resolve_table(
    registry: &TableRegistry,
    id: TableId,
    schema_version: u64,
) -> Option<Arc<TableDef>> {
    if let Some(table) = registry.get(id) {
        return Some(table);
    }
    catch_up_schema(registry, schema_version);
    registry.get(id)
}

/// Waits until this node's schema is at `schema_version` (bounded by
/// [`TXN_SCHEMA_WAIT`]); returns whether it waited at all.
fn catch_up_schema(registry: &TableRegistry, schema_version: u64) -> bool {
    let local = registry.version();
    if local >= schema_version {
        return false;
    }
    tracing::info!(
        local,
        wanted = schema_version,
        "a transaction names a table or column of a newer schema: waiting for the schema log"
    );
    if !registry.wait_for_version(schema_version, TXN_SCHEMA_WAIT) {
        tracing::error!(
            local = registry.version(),
            wanted = schema_version,
            "this node's schema did not reach the transaction's within TXN_SCHEMA_WAIT"
        );
    }
    true
}

/// The low bits of every HLC value a node's runtime issues that carry its
/// node id (`NodeConfig::hlc_node_bits`): two nodes never issue the same
/// HLC value, so [`write_time`] is strictly increasing with executeAt and
/// conflicting writes never tie on their cells' timestamps (design/cluster.md,
/// "Write time"). Node ids of a cluster are therefore at most
/// [`NODE_ID_MAX`]; one node issues at most one timestamp per `2^6` µs before
/// its HLC runs ahead of the wall clock.
pub const HLC_NODE_BITS: u32 = 6;
/// The largest node id a runtime with [`HLC_NODE_BITS`] accepts.
pub const NODE_ID_MAX: u32 = (1 << HLC_NODE_BITS) - 1;

/// The runtime configuration of a node in accord mode: the defaults, with
/// the node id in the HLC's low bits.
pub fn node_config() -> concord_txn::node::NodeConfig {
    concord_txn::node::NodeConfig {
        hlc_node_bits: HLC_NODE_BITS,
        // The core's defaults are the simulator's (50 ms rounds, 3 resends, recovery after
        // 200 ms): on real machines a busy node or an fsync outlasts them, the coordinator
        // gives up and recoveries preempt healthy transactions. A node waits ~3.5 s per
        // round before giving up (under the client's CLIENT_REPLY_TIMEOUT) and 1 s before
        // recovering another coordinator's transaction.
        round_timeout_micros: ROUND_TIMEOUT_MICROS,
        round_retries_max: ROUND_RETRIES_MAX,
        stall_micros: STALL_MICROS,
        ..concord_txn::node::NodeConfig::default()
    }
}

/// A coordination round's timeout on a node (the core's default is the simulator's 50 ms).
pub const ROUND_TIMEOUT_MICROS: u64 = 500_000;
/// Resends per round before the coordinator gives up.
pub const ROUND_RETRIES_MAX: u32 = 6;
/// How long a transaction may stay undecided or unapplied before the progress log recovers it.
pub const STALL_MICROS: u64 = 1_000_000;

/// The write time of a transaction executed at `at`: its HLC microseconds
/// (unique per executeAt: the HLC carries the node id, [`HLC_NODE_BITS`]).
pub fn write_time(at: Timestamp) -> WriteTime {
    WriteTime(i64::try_from(at.hlc).unwrap_or(i64::MAX))
}

/// The protocol key of a table partition.
///
/// # Errors
/// `InvalidRequest`/`InvalidValue` for a partition key that does not fit the table.
pub fn partition_key(table: &TableDef, partition_key: &[CqlValue]) -> crate::Result<Key> {
    let encoded = keys::encode_partition(table, partition_key)?;
    let mut partition = Vec::with_capacity(4 + encoded.serialized_key.len());
    partition.extend_from_slice(&table.id.0.to_be_bytes());
    partition.extend_from_slice(&encoded.serialized_key);
    Ok(Key {
        token: encoded.token,
        partition,
    })
}

fn read_table(read: &Read) -> (&Arc<TableDef>, &[CqlValue]) {
    match read {
        Read::Row {
            table,
            partition_key,
            ..
        }
        | Read::Partition {
            table,
            partition_key,
            ..
        } => (table, partition_key),
    }
}

/// The keys of each read and each mutation, in order.
fn operation_keys(
    transaction: &Transaction,
    tables: &[Arc<TableDef>],
) -> crate::Result<(Vec<Key>, Vec<Key>)> {
    let reads = transaction
        .reads
        .iter()
        .map(|read| {
            let (table, key) = read_table(read);
            partition_key(table, key)
        })
        .collect::<crate::Result<Vec<Key>>>()?;
    let writes = transaction
        .writes
        .iter()
        .zip(tables)
        .map(|(mutation, table)| partition_key(table, &mutation.partition_key))
        .collect::<crate::Result<Vec<Key>>>()?;
    Ok((reads, writes))
}

/// Builds the protocol transaction of `transaction` (`tables`: the table of each mutation),
/// with every upsert's TTL resolved against its table now.
///
/// # Errors
/// Bad partition keys; `LimitExceeded` past [`TXN_KEYS_MAX`] partitions.
/// `schema_version`: this node's schema version (at least the one `tables` come from), which
/// replicas wait for before they resolve a table they do not know.
pub fn build_txn(
    transaction: &Transaction,
    tables: &[Arc<TableDef>],
    schema_version: u64,
) -> crate::Result<Txn> {
    let (read_keys, write_keys) = operation_keys(transaction, tables)?;
    let mut all: Vec<&Key> = read_keys.iter().chain(&write_keys).collect();
    all.sort_unstable();
    all.dedup();
    if all.len() > TXN_KEYS_MAX {
        return Err(concord_storage::Error::LimitExceeded {
            what: format!("transaction over {} partitions", all.len()),
            limit: "TXN_KEYS_MAX",
            actual: all.len(),
            max: TXN_KEYS_MAX,
        }
        .into());
    }
    let mut resolved = transaction.clone();
    for (mutation, table) in resolved.writes.iter_mut().zip(tables) {
        *mutation = feed::resolve_ttl(table, mutation);
    }
    let body = encode_body(&resolved, schema_version)?;
    let mut reads = read_keys;
    reads.sort_unstable();
    reads.dedup();
    let mut writes = write_keys;
    writes.sort_unstable();
    writes.dedup();
    Ok(Txn::new(reads, Update::Opaque { writes, body }))
}

/// Executes a transaction body over its read results: `Some(mutations)` (derived cells
/// computed) when the condition holds, `None` when it does not. Every mutation is checked
/// against its table as the row store will write it. Deterministic: the replicas' `compute`
/// and the client that waits for the outcome call it on the same reads.
///
/// # Errors
/// The transaction's own errors (a derived cell on null, a mutation that does not fit).
pub fn execute_body(
    transaction: &Transaction,
    tables: &[Arc<TableDef>],
    results: &[ReadResult],
) -> crate::Result<Option<Vec<Mutation>>> {
    let Some(writes) = crate::db::evaluate(transaction, tables, results)? else {
        return Ok(None);
    };
    let mut scratch = WriteBatch::new();
    for (mutation, table) in writes.iter().zip(tables) {
        rows::write_mutation(table, mutation, WriteTime(0), &mut scratch)?;
    }
    Ok(Some(writes))
}

/// Decodes the read results the outcome carries (`reads`: key → per-key results) into one
/// result per read of `transaction`.
///
/// # Errors
/// A read's own error (e.g. a bad clustering key), or `Corruption` for bytes that do not
/// decode.
pub fn read_results(
    transaction: &Transaction,
    tables: &[Arc<TableDef>],
    reads: &ReadData,
) -> crate::Result<Vec<ReadResult>> {
    let (read_keys, _) = operation_keys(transaction, tables)?;
    let mut results: Vec<Option<ReadResult>> = vec![None; transaction.reads.len()];
    for key in read_keys.iter().collect::<std::collections::BTreeSet<_>>() {
        let bytes = reads.get(key).cloned().flatten().ok_or_else(|| {
            concord_storage::Error::Internal("a transaction read came back without data".into())
        })?;
        for (index, result) in decode_key_reads(&bytes)? {
            if let Some(slot) = results.get_mut(index) {
                *slot = Some(result);
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            result.ok_or_else(|| {
                concord_storage::Error::Internal(format!("transaction read {index} is missing"))
                    .into()
            })
        })
        .collect()
}

/// The tables of a transaction's mutations, from the registry (waiting for a schema at
/// `schema_version` for a table this node does not know yet).
fn mutation_tables(
    transaction: &Transaction,
    registry: &TableRegistry,
    schema_version: u64,
) -> concord_storage::Result<Vec<Arc<TableDef>>> {
    transaction
        .writes
        .iter()
        .map(|mutation| {
            resolve_table(registry, mutation.table, schema_version).ok_or_else(|| {
                concord_storage::Error::InvalidRequest(format!(
                    "table id {} no longer exists",
                    mutation.table.0
                ))
            })
        })
        .collect()
}

/// Paces the change feed by the Node's apply floor; shared by the store (which appends) and
/// the runtime's step observer.
#[derive(Debug)]
pub struct FeedPacer {
    feed: Arc<ChangeFeed>,
    /// Whether writes append feed records (the node keeps a columnar replica).
    enabled: AtomicBool,
    /// Feed records of applied writes that could not be appended (a write below the
    /// published watermark, possible in a cluster): their rows are written, the columnar
    /// replica misses them.
    pub dropped_records: AtomicU64,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    /// The step's floor: every write applied in the step is at or above it.
    floor: WriteTime,
    ticket: Option<SharedFeedTicket>,
    /// The watermark last published.
    published: WriteTime,
}

impl FeedPacer {
    pub fn new(feed: Arc<ChangeFeed>, enabled: bool) -> Arc<FeedPacer> {
        Arc::new(FeedPacer {
            feed,
            enabled: AtomicBool::new(enabled),
            dropped_records: AtomicU64::new(0),
            state: Mutex::new(PacerState {
                floor: WriteTime(i64::MIN),
                ticket: None,
                published: WriteTime(i64::MIN),
            }),
        })
    }

    /// Turns feed records on (the columnar replica started).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    fn append(
        &self,
        at: WriteTime,
        batch: &mut WriteBatch,
        table: &TableDef,
        mutation: &Mutation,
    ) -> concord_storage::Result<Option<FeedPosition>> {
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut state = self.state.lock();
        let floor = state.floor;
        let ticket = state
            .ticket
            .get_or_insert_with(|| self.feed.begin_shared(|| floor));
        self.feed
            .append_at(ticket, at, batch, table, mutation)
            .map(Some)
    }
}

/// The runtime's [`StepObserver`] for a [`FeedPacer`].
#[derive(Debug)]
pub struct PacerObserver(pub Arc<FeedPacer>);

impl StepObserver for PacerObserver {
    fn before_step(&mut self, floor: Timestamp) {
        self.0.state.lock().floor = write_time(floor);
    }

    fn after_step(&mut self, floor: Timestamp) {
        let mut state = self.0.state.lock();
        // The step's batches are written: its records are final.
        state.ticket.take();
        // Every write below the floor is applied: the watermark may pass them.
        let watermark = WriteTime(write_time(floor).0.saturating_sub(1));
        if watermark > state.published {
            state.published = watermark;
            self.0.feed.finish(self.0.feed.begin(|| watermark));
        }
    }
}

/// The server's data store: CQL transaction bodies over the row store.
pub struct CqlStore<E: Engine> {
    engine: Arc<E>,
    registry: TableRegistry,
    pacer: Arc<FeedPacer>,
}

impl<E: Engine> Debug for CqlStore<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlStore").finish_non_exhaustive()
    }
}

impl<E: Engine> CqlStore<E> {
    pub fn new(engine: Arc<E>, registry: TableRegistry, pacer: Arc<FeedPacer>) -> CqlStore<E> {
        CqlStore {
            engine,
            registry,
            pacer,
        }
    }

    fn body(txn: &Txn) -> concord_txn::Result<&[u8]> {
        match txn.update() {
            Update::Opaque { body, .. } => Ok(body),
            _ => Err(concord_txn::Error::Execution(
                "the CQL store executes only opaque CQL transaction bodies".into(),
            )),
        }
    }

    fn decode(&self, body: &[u8]) -> concord_storage::Result<Body> {
        decode_body(body, &self.registry)
    }

    /// The reads of `keys`, per key; a read's error is its key's value.
    fn read_keys(
        &self,
        transaction: &Transaction,
        keys: &[Key],
        now_seconds: i64,
    ) -> crate::Result<ReadData> {
        let mut per_key: BTreeMap<Key, Vec<(usize, ReadResult)>> =
            keys.iter().map(|key| (key.clone(), Vec::new())).collect();
        for (index, read) in transaction.reads.iter().enumerate() {
            let (table, key) = read_table(read);
            let key = partition_key(table, key)?;
            if let Some(results) = per_key.get_mut(&key) {
                results.push((
                    index,
                    crate::db::read_one(self.engine.as_ref(), read, now_seconds)?,
                ));
            }
        }
        per_key
            .into_iter()
            .map(|(key, results)| Ok((key, Some(encode_key_reads(&results)?))))
            .collect()
    }
}

impl<E: Engine> DataStore for CqlStore<E> {
    fn read(
        &self,
        txn: &Txn,
        keys: &[Key],
        execute_at: Timestamp,
    ) -> concord_txn::Result<ReadData> {
        let body = Self::body(txn)?;
        let outcome = self
            .decode(body)
            .map_err(crate::Error::from)
            .and_then(|body| {
                self.read_keys(&body.transaction, keys, write_time(execute_at).seconds())
            });
        Ok(match outcome {
            Ok(data) => data,
            // The transaction's own error (a dropped table, a bad clustering key): every key
            // carries it, compute writes nothing, the client reports it.
            Err(error) => {
                let failed = encode_read_error(&error.to_string());
                keys.iter()
                    .map(|key| (key.clone(), Some(failed.clone())))
                    .collect()
            }
        })
    }

    fn compute(&self, txn: &Txn, reads: &ReadData) -> concord_txn::Result<Writes> {
        let body = Self::body(txn)?;
        let outcome = self.decode(body).map_err(crate::Error::from).and_then(
            |Body {
                 transaction,
                 schema_version,
             }| {
                let tables = mutation_tables(&transaction, &self.registry, schema_version)?;
                let results = read_results(&transaction, &tables, reads)?;
                let (_, write_keys) = operation_keys(&transaction, &tables)?;
                let Some(mutations) = execute_body(&transaction, &tables, &results)? else {
                    return Ok(Writes::new());
                };
                let mut per_key: BTreeMap<Key, Vec<&Mutation>> = BTreeMap::new();
                for (key, mutation) in write_keys.into_iter().zip(&mutations) {
                    per_key.entry(key).or_default().push(mutation);
                }
                per_key
                    .into_iter()
                    .map(|(key, mutations)| {
                        Ok((key, Some(encode_mutations(&mutations, schema_version)?)))
                    })
                    .collect::<crate::Result<Writes>>()
            },
        );
        match outcome {
            Ok(writes) => Ok(writes),
            Err(error) => {
                tracing::debug!(%error, "transaction computes no writes");
                Ok(Writes::new())
            }
        }
    }

    fn write(&self, writes: &Writes, execute_at: Timestamp, batch: &mut WriteBatch) {
        let at = write_time(execute_at);
        for value in writes.values().flatten() {
            let (schema_version, mutations) = match decode_mutations(value) {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::error!(%error, "undecodable transaction writes skipped");
                    continue;
                }
            };
            for mutation in mutations {
                // A table this node does not know yet (its schema log trails) is waited for;
                // one unknown at the transaction's schema version was dropped since: its data
                // is gone with it.
                let Some(mut table) = resolve_table(&self.registry, mutation.table, schema_version)
                else {
                    continue;
                };
                let mut staged = WriteBatch::new();
                let mut written = rows::write_mutation(&table, &mutation, at, &mut staged);
                // A column added by a schema change this node has not applied yet: retry on
                // the table as the transaction's schema has it.
                if written.is_err()
                    && catch_up_schema(&self.registry, schema_version)
                    && let Some(newer) = self.registry.get(mutation.table)
                {
                    table = newer;
                    staged = WriteBatch::new();
                    written = rows::write_mutation(&table, &mutation, at, &mut staged);
                }
                if let Err(error) = written {
                    tracing::error!(%error, table = %table.qualified_name(), "transaction write skipped");
                    continue;
                }
                // The row store is the truth: a feed record that cannot be appended never
                // costs the row. In a cluster a write can arrive below the watermark this
                // node published (a peer's transaction, fetched after a restart): its record
                // is dropped and counted, the columnar replica misses it (design/cluster.md,
                // "Change feed frontier": the floor rule makes this a bug or an epoch change).
                if let Err(error) = self.pacer.append(at, &mut staged, &table, &mutation) {
                    self.pacer.dropped_records.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, table = %table.qualified_name(), "feed record dropped; the row is written");
                }
                batch.extend(staged);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------

fn corrupt(what: &str) -> concord_storage::Error {
    concord_storage::Error::corruption(format!("transaction body: {what}"))
}

fn push_u32(value: usize, out: &mut Vec<u8>) -> concord_storage::Result<()> {
    let value = u32::try_from(value).map_err(|_| concord_storage::Error::LimitExceeded {
        what: "transaction body length".into(),
        limit: "u32::MAX",
        actual: value,
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&value.to_be_bytes());
    Ok(())
}

fn push_bytes(bytes: &[u8], out: &mut Vec<u8>) -> concord_storage::Result<()> {
    push_u32(bytes.len(), out)?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn push_optional(value: Option<&CqlValue>, out: &mut Vec<u8>) -> concord_storage::Result<()> {
    let values: Vec<CqlValue> = value.into_iter().cloned().collect();
    feed::encode_values_into(&values, out)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> concord_storage::Result<&'a [u8]> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let bytes: &'a [u8] = self.bytes;
        let slice = &bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> concord_storage::Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> concord_storage::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> concord_storage::Result<usize> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    fn count(&mut self) -> concord_storage::Result<usize> {
        let count = self.u32()?;
        if count > self.bytes.len() - self.offset {
            return Err(corrupt("count exceeds its bytes"));
        }
        Ok(count)
    }

    fn bytes(&mut self) -> concord_storage::Result<&'a [u8]> {
        let len = self.count()?;
        self.take(len)
    }

    fn values(&mut self) -> concord_storage::Result<Vec<CqlValue>> {
        feed::decode_values_from(self.bytes, &mut self.offset)
    }

    fn optional(&mut self) -> concord_storage::Result<Option<CqlValue>> {
        let mut values = self.values()?;
        if values.len() > 1 {
            return Err(corrupt("an optional value holds several"));
        }
        Ok(values.pop())
    }

    fn value(&mut self) -> concord_storage::Result<CqlValue> {
        self.optional()?
            .ok_or_else(|| corrupt("a value is missing"))
    }

    fn finish(&self) -> concord_storage::Result<()> {
        if self.offset != self.bytes.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(())
    }
}

fn encode_mutation(mutation: &Mutation, out: &mut Vec<u8>) -> concord_storage::Result<()> {
    push_bytes(&feed::encode_record(WriteTime(0), mutation)?, out)
}

fn decode_mutation(cursor: &mut Cursor<'_>) -> concord_storage::Result<Mutation> {
    Ok(feed::decode_record(FeedPosition(0), cursor.bytes()?)?.mutation)
}

fn encode_mutations(mutations: &[&Mutation], schema_version: u64) -> crate::Result<Vec<u8>> {
    let mut out = vec![WRITES_VERSIONED];
    out.extend_from_slice(&schema_version.to_be_bytes());
    push_u32(mutations.len(), &mut out)?;
    for mutation in mutations {
        encode_mutation(mutation, &mut out)?;
    }
    Ok(out)
}

/// A key's writes: the schema version they were computed on (0 for writes encoded before
/// it was recorded) and the mutations.
fn decode_mutations(bytes: &[u8]) -> concord_storage::Result<(u64, Vec<Mutation>)> {
    let mut cursor = Cursor { bytes, offset: 0 };
    let schema_version = if bytes.first() == Some(&WRITES_VERSIONED) {
        cursor.u8()?;
        u64::from_be_bytes(cursor.array()?)
    } else {
        0
    };
    let count = cursor.count()?;
    let mutations = (0..count)
        .map(|_| decode_mutation(&mut cursor))
        .collect::<concord_storage::Result<_>>()?;
    cursor.finish()?;
    Ok((schema_version, mutations))
}

fn compare_to_u8(operator: CompareOp) -> u8 {
    match operator {
        CompareOp::Equal => 0,
        CompareOp::NotEqual => 1,
        CompareOp::Less => 2,
        CompareOp::LessOrEqual => 3,
        CompareOp::Greater => 4,
        CompareOp::GreaterOrEqual => 5,
    }
}

fn compare_from_u8(tag: u8) -> concord_storage::Result<CompareOp> {
    Ok(match tag {
        0 => CompareOp::Equal,
        1 => CompareOp::NotEqual,
        2 => CompareOp::Less,
        3 => CompareOp::LessOrEqual,
        4 => CompareOp::Greater,
        5 => CompareOp::GreaterOrEqual,
        _ => return Err(corrupt("comparison tag")),
    })
}

/// Encodes a transaction (table references by id) built on schema `schema_version`.
///
/// # Errors
/// `LimitExceeded` for a length past `u32`.
pub fn encode_body(
    transaction: &Transaction,
    schema_version: u64,
) -> concord_storage::Result<Vec<u8>> {
    let mut out = vec![BODY_VERSION];
    out.extend_from_slice(&schema_version.to_be_bytes());
    push_u32(transaction.reads.len(), &mut out)?;
    for read in &transaction.reads {
        match read {
            Read::Row {
                table,
                partition_key,
                clustering,
            } => {
                out.push(0);
                out.extend_from_slice(&table.id.0.to_be_bytes());
                feed::encode_values_into(partition_key, &mut out)?;
                feed::encode_values_into(clustering, &mut out)?;
            }
            Read::Partition {
                table,
                partition_key,
                slice,
                limit_rows,
            } => {
                out.push(1);
                out.extend_from_slice(&table.id.0.to_be_bytes());
                feed::encode_values_into(partition_key, &mut out)?;
                feed::encode_slice_into(slice, &mut out)?;
                match limit_rows {
                    None => out.push(0),
                    Some(limit) => {
                        out.push(1);
                        out.extend_from_slice(&(*limit as u64).to_be_bytes());
                    }
                }
            }
        }
    }
    push_u32(transaction.writes.len(), &mut out)?;
    for mutation in &transaction.writes {
        encode_mutation(mutation, &mut out)?;
    }
    push_u32(transaction.condition.len(), &mut out)?;
    for check in &transaction.condition {
        match check {
            Check::RowExists { read } => {
                out.push(0);
                push_u32(*read, &mut out)?;
            }
            Check::RowAbsent { read } => {
                out.push(1);
                push_u32(*read, &mut out)?;
            }
            Check::Column {
                read,
                column,
                element,
                operator,
                value,
            } => {
                out.push(2);
                push_u32(*read, &mut out)?;
                out.extend_from_slice(&column.0.to_be_bytes());
                push_optional(element.as_ref(), &mut out)?;
                out.push(compare_to_u8(*operator));
                push_optional(value.as_ref(), &mut out)?;
            }
            Check::Columns {
                left,
                operator,
                right,
            } => {
                out.push(3);
                push_u32(left.0, &mut out)?;
                out.extend_from_slice(&left.1.0.to_be_bytes());
                out.push(compare_to_u8(*operator));
                push_u32(right.0, &mut out)?;
                out.extend_from_slice(&right.1.0.to_be_bytes());
            }
        }
    }
    push_u32(transaction.derived.len(), &mut out)?;
    for cell in &transaction.derived {
        push_u32(cell.write, &mut out)?;
        push_u32(cell.op, &mut out)?;
        out.extend_from_slice(&cell.column.0.to_be_bytes());
        push_u32(cell.read, &mut out)?;
        match &cell.derivation {
            Derivation::Arithmetic(operation, operand) => {
                out.push(0);
                out.push(u8::from(*operation == Arithmetic::Subtract));
                push_optional(Some(operand), &mut out)?;
            }
            Derivation::ListSetIndex(index, value) => {
                out.push(1);
                out.extend_from_slice(&index.to_be_bytes());
                push_optional(value.as_ref(), &mut out)?;
            }
            Derivation::ListRemoveValues(values) => {
                out.push(2);
                feed::encode_values_into(values, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// A decoded transaction body.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub transaction: Transaction,
    /// The coordinator's schema version when it built the body (0 for a body of format 1).
    pub schema_version: u64,
}

/// Decodes a transaction encoded by [`encode_body`], resolving tables in `registry` (for a
/// table this node does not know yet, after waiting for its schema to reach the body's
/// version, [`TXN_SCHEMA_WAIT`] at most).
///
/// # Errors
/// `Corruption` for bytes that are not a body; `InvalidRequest` for a table that no longer
/// exists.
pub fn decode_body(bytes: &[u8], registry: &TableRegistry) -> concord_storage::Result<Body> {
    let mut cursor = Cursor { bytes, offset: 0 };
    let schema_version = match cursor.u8()? {
        BODY_VERSION => u64::from_be_bytes(cursor.array()?),
        BODY_VERSION_UNVERSIONED => 0,
        _ => return Err(corrupt("unknown version")),
    };
    let table = |cursor: &mut Cursor<'_>| -> concord_storage::Result<Arc<TableDef>> {
        let id = TableId(u32::from_be_bytes(cursor.array()?));
        resolve_table(registry, id, schema_version).ok_or_else(|| {
            concord_storage::Error::InvalidRequest(format!("table id {} no longer exists", id.0))
        })
    };
    let mut transaction = Transaction::default();
    for _ in 0..cursor.count()? {
        let read = match cursor.u8()? {
            0 => Read::Row {
                table: table(&mut cursor)?,
                partition_key: cursor.values()?,
                clustering: cursor.values()?,
            },
            1 => Read::Partition {
                table: table(&mut cursor)?,
                partition_key: cursor.values()?,
                slice: feed::decode_slice_from(cursor.bytes, &mut cursor.offset)?,
                limit_rows: match cursor.u8()? {
                    0 => None,
                    1 => Some(
                        usize::try_from(u64::from_be_bytes(cursor.array()?))
                            .map_err(|_| corrupt("row limit"))?,
                    ),
                    _ => return Err(corrupt("row limit tag")),
                },
            },
            _ => return Err(corrupt("read tag")),
        };
        transaction.reads.push(read);
    }
    for _ in 0..cursor.count()? {
        transaction.writes.push(decode_mutation(&mut cursor)?);
    }
    for _ in 0..cursor.count()? {
        let check = match cursor.u8()? {
            0 => Check::RowExists {
                read: cursor.u32()?,
            },
            1 => Check::RowAbsent {
                read: cursor.u32()?,
            },
            2 => Check::Column {
                read: cursor.u32()?,
                column: ColumnId(u16::from_be_bytes(cursor.array()?)),
                element: cursor.optional()?,
                operator: compare_from_u8(cursor.u8()?)?,
                value: cursor.optional()?,
            },
            3 => Check::Columns {
                left: (cursor.u32()?, ColumnId(u16::from_be_bytes(cursor.array()?))),
                operator: compare_from_u8(cursor.u8()?)?,
                right: (cursor.u32()?, ColumnId(u16::from_be_bytes(cursor.array()?))),
            },
            _ => return Err(corrupt("check tag")),
        };
        transaction.condition.push(check);
    }
    for _ in 0..cursor.count()? {
        let write = cursor.u32()?;
        let op = cursor.u32()?;
        let column = ColumnId(u16::from_be_bytes(cursor.array()?));
        let read = cursor.u32()?;
        let derivation = match cursor.u8()? {
            0 => {
                let operation = match cursor.u8()? {
                    0 => Arithmetic::Add,
                    1 => Arithmetic::Subtract,
                    _ => return Err(corrupt("arithmetic tag")),
                };
                Derivation::Arithmetic(operation, cursor.value()?)
            }
            1 => Derivation::ListSetIndex(i64::from_be_bytes(cursor.array()?), cursor.optional()?),
            2 => Derivation::ListRemoveValues(cursor.values()?),
            _ => return Err(corrupt("derivation tag")),
        };
        transaction.derived.push(DerivedCell {
            write,
            op,
            column,
            read,
            derivation,
        });
    }
    cursor.finish()?;
    Ok(Body {
        transaction,
        schema_version,
    })
}

fn encode_row(row: &Row, out: &mut Vec<u8>) -> concord_storage::Result<()> {
    feed::encode_values_into(&row.clustering, out)?;
    push_u32(row.columns.len(), out)?;
    for (column, value) in &row.columns {
        out.extend_from_slice(&column.0.to_be_bytes());
        push_optional(Some(&value.value), out)?;
        out.extend_from_slice(&value.write_time.0.to_be_bytes());
        match value.expiry {
            None => out.push(0),
            Some(expiry) => {
                out.push(1);
                out.extend_from_slice(&expiry.expiry_seconds.to_be_bytes());
                out.extend_from_slice(&expiry.ttl_seconds.to_be_bytes());
            }
        }
    }
    Ok(())
}

fn decode_row(cursor: &mut Cursor<'_>) -> concord_storage::Result<Row> {
    let clustering = cursor.values()?;
    let mut columns = BTreeMap::new();
    for _ in 0..cursor.count()? {
        let column = ColumnId(u16::from_be_bytes(cursor.array()?));
        let value = cursor.value()?;
        let write_time = WriteTime(i64::from_be_bytes(cursor.array()?));
        let expiry = match cursor.u8()? {
            0 => None,
            1 => Some(Expiry {
                expiry_seconds: i64::from_be_bytes(cursor.array()?),
                ttl_seconds: u32::from_be_bytes(cursor.array()?),
            }),
            _ => return Err(corrupt("expiry tag")),
        };
        columns.insert(
            column,
            ColumnValue {
                value,
                write_time,
                expiry,
            },
        );
    }
    Ok(Row {
        clustering,
        columns,
    })
}

const KEY_READS_OK: u8 = 0;
const KEY_READS_FAILED: u8 = 1;

fn encode_key_reads(results: &[(usize, ReadResult)]) -> crate::Result<Vec<u8>> {
    let mut out = vec![KEY_READS_OK];
    push_u32(results.len(), &mut out)?;
    for (index, result) in results {
        push_u32(*index, &mut out)?;
        match result {
            ReadResult::Row(None) => out.push(0),
            ReadResult::Row(Some(row)) => {
                out.push(1);
                encode_row(row, &mut out)?;
            }
            ReadResult::Partition(None) => out.push(2),
            ReadResult::Partition(Some(partition)) => {
                out.push(3);
                out.extend_from_slice(&partition.token.0.to_be_bytes());
                feed::encode_values_into(&partition.key, &mut out)?;
                match &partition.static_row {
                    None => out.push(0),
                    Some(row) => {
                        out.push(1);
                        encode_row(row, &mut out)?;
                    }
                }
                push_u32(partition.rows.len(), &mut out)?;
                for row in &partition.rows {
                    encode_row(row, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

fn encode_read_error(message: &str) -> Vec<u8> {
    let mut out = vec![KEY_READS_FAILED];
    out.extend_from_slice(message.as_bytes());
    out
}

fn decode_key_reads(bytes: &[u8]) -> crate::Result<Vec<(usize, ReadResult)>> {
    let mut cursor = Cursor { bytes, offset: 0 };
    match cursor.u8()? {
        KEY_READS_OK => {}
        KEY_READS_FAILED => {
            let message = String::from_utf8_lossy(&bytes[1..]).into_owned();
            return Err(concord_storage::Error::InvalidRequest(message).into());
        }
        _ => return Err(corrupt("read status").into()),
    }
    let mut results = Vec::new();
    for _ in 0..cursor.count()? {
        let index = cursor.u32()?;
        let result = match cursor.u8()? {
            0 => ReadResult::Row(None),
            1 => ReadResult::Row(Some(decode_row(&mut cursor)?)),
            2 => ReadResult::Partition(None),
            3 => {
                let token = Token(i64::from_be_bytes(cursor.array()?));
                let key = cursor.values()?;
                let static_row = match cursor.u8()? {
                    0 => None,
                    1 => Some(decode_row(&mut cursor)?),
                    _ => return Err(corrupt("static row tag").into()),
                };
                let rows = (0..cursor.count()?)
                    .map(|_| decode_row(&mut cursor))
                    .collect::<concord_storage::Result<_>>()?;
                ReadResult::Partition(Some(Partition {
                    token,
                    key,
                    static_row,
                    rows,
                }))
            }
            _ => return Err(corrupt("read result tag").into()),
        };
        results.push((index, result));
    }
    cursor.finish()?;
    Ok(results)
}

#[cfg(test)]
mod tests;
