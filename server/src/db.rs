//! The embedded database: schema operations, transactions and reads over one
//! storage engine.
//!
//! Every write goes through [`Db::execute`] as a [`Transaction`] (keys,
//! reads, writes) executed at one timestamp. Today a local sequencer assigns
//! that timestamp from a hybrid logical clock; the Accord transaction layer
//! will take its place without callers changing.
//!
//! Every applied write also goes to the change feed, in the same batch as
//! its rows (`storage::feed`), and a follower thread keeps the columnar
//! replica (`concord_columnar`) up with it; [`Db::sql`] answers SQL from the
//! row store or the replica (see `sql.rs` for the router). A retention
//! thread drops feed records every replica has made durable.
//!
//! Isolation today (single node): transactions that only write run
//! concurrently (RocksDB commits them as one group), holding the sequencer
//! in shared mode while they take a timestamp and apply. A transaction that
//! reads and writes holds it exclusively, so every write with a lower
//! timestamp has been applied before it reads, and none with a lower one can
//! follow: reads see exactly the state at the transaction's timestamp.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use concord_columnar::follower::{Follower, FollowerOptions};
use concord_columnar::{Columnar, ColumnarOptions, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::clock::{Clock, OffsetClock, SystemClock};
use concord_storage::engine::{Durability, Engine, EngineOptions, Family, WriteBatch};
use concord_storage::feed::{self, ChangeFeed, FeedPosition};
use concord_storage::memory::MemoryEngine;
use concord_storage::partitioner::TokenRange;
use concord_storage::rows::{
    self, CellOp, Mutation, Partition, ReadOptions, Row, RowOp, ScanCursor, ScanPage, Slice,
    TableRegistry,
};
use concord_storage::schema::{
    ColumnId, ColumnSpec, IfExists, KeyspaceDef, Schema, TableDef, TableId, TableOptions,
    TableSpec, TypeChange,
};
use concord_storage::stream::{self, RowChunk};
use concord_storage::types::{CqlType, UdtDefinition};
use concord_storage::value::CqlValue;
use concord_storage_rocksdb::{RocksEngine, RocksTuning};
use parking_lot::{Mutex, RwLock};

use concord_cluster::runtime::{Loopback, Peers, Runtime, RuntimeConfig, RuntimeError};
use concord_storage::engine::{Direction, ReadView};
use concord_txn::node::Outcome;
use concord_txn::timestamp::NodeId;
use concord_txn::topology::{FastPathMode, Topology};

use crate::config::TxnJournal;
use crate::config::{CommitSync, Config, TxnMode};
use crate::sql::{Freshness, RowStoreSource, SqlError, SqlOptions, SqlResult, Store, StoreChoice};
use crate::txn_journal;
use crate::txn_store::{self, CqlStore, FeedPacer, PacerObserver};
use crate::{Error, Result};

/// How often the retention thread looks for feed records to drop.
pub const FEED_RETENTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// The most feed records kept for a replica that lags: past it, retention
/// drops them anyway and the replica rebuilds from a row-store snapshot
/// (so a stuck replica cannot fill the disk).
pub const FEED_RETAINED_RECORDS_MAX_DEFAULT: u64 = 10_000_000;

/// The columnar replica's knobs (see `design/columnar.md`).
#[derive(Debug, Clone)]
pub struct AnalyticsOptions {
    /// Whether the node keeps a columnar replica at all (without it, writes
    /// append nothing to the feed and `Db::sql` is refused).
    pub enabled: bool,
    pub columnar: ColumnarOptions,
    pub follower: FollowerOptions,
    pub feed_retention_interval: Duration,
    pub feed_retained_records_max: u64,
}

impl Default for AnalyticsOptions {
    fn default() -> AnalyticsOptions {
        AnalyticsOptions {
            enabled: true,
            columnar: ColumnarOptions::default(),
            follower: FollowerOptions::default(),
            feed_retention_interval: FEED_RETENTION_INTERVAL_DEFAULT,
            feed_retained_records_max: FEED_RETAINED_RECORDS_MAX_DEFAULT,
        }
    }
}

/// The replica of a database, its follower and the feed's retention.
#[derive(Debug)]
struct Analytics {
    columnar: Arc<Columnar>,
    // Dropped (stopped and joined) before `columnar`, which they use.
    follower: Option<Follower>,
    retention: Option<Background>,
}

impl Drop for Analytics {
    fn drop(&mut self) {
        self.retention.take();
        self.follower.take();
    }
}

/// The meta-family key holding the schema.
const SCHEMA_KEY: &[u8] = b"schema";
/// The router's reason when a replica query leaves this node.
const DISTRIBUTED_REASON: &str = "distributed: this node does not hold every token range, so \
     each range is read once from one replica (partition lookups too)";
/// The most reads and mutations one transaction may carry.
pub const TRANSACTION_OPERATIONS_MAX: usize = 10_000;

/// A read inside a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Row {
        table: Arc<TableDef>,
        partition_key: Vec<CqlValue>,
        clustering: Vec<CqlValue>,
    },
    Partition {
        table: Arc<TableDef>,
        partition_key: Vec<CqlValue>,
        slice: Slice,
        limit_rows: Option<usize>,
    },
}

/// A unit of work executed at one timestamp: its reads see the state just
/// before it, its writes all carry that timestamp as their write time.
///
/// `condition` makes it conditional (CQL `IF`, lightweight transactions,
/// `BEGIN TRANSACTION ... IF ... THEN`): every check is evaluated by the
/// executor on this transaction's own reads, and the writes apply only when
/// all hold. Checks are data, not closures, so a replica of the transaction
/// layer evaluates them deterministically from the same reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    pub reads: Vec<Read>,
    pub writes: Vec<Mutation>,
    pub condition: Vec<Check>,
    /// Cell values computed from the reads (`SET balance = balance - 100`).
    pub derived: Vec<DerivedCell>,
}

/// `+` or `-` in a [`DerivedCell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    Add,
    Subtract,
}

/// A cell whose new value the executor computes from one of the
/// transaction's reads: `read`'s value of `column`, then `derivation`. It
/// replaces the value of `column` in the upsert `writes[write].ops[op]`
/// (whose cell for `column` must be a `CellOp::Set`). Data, not a closure,
/// so every replica computes the same.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedCell {
    pub write: usize,
    pub op: usize,
    pub column: ColumnId,
    /// A `Read::Row` of the row being written.
    pub read: usize,
    pub derivation: Derivation,
}

/// How a [`DerivedCell`] computes its value from the current one.
#[derive(Debug, Clone, PartialEq)]
pub enum Derivation {
    /// `column = column ± operand` on a number.
    Arithmetic(Arithmetic, CqlValue),
    /// `list[index] = value`; `None` removes the element (`DELETE list[index]`).
    ListSetIndex(i64, Option<CqlValue>),
    /// `list = list - [values]`: every element equal to one of them goes.
    ListRemoveValues(Vec<CqlValue>),
}

/// A comparison in a [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// One check of a transaction's condition, over the result of one of its
/// reads (by index into `reads`; a `Read::Partition` read is judged by its
/// first row, or its static row when the column is static).
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The read found a live row.
    RowExists { read: usize },
    /// The read found no live row.
    RowAbsent { read: usize },
    /// `column [element] operator value`, where a missing row or cell reads
    /// as null. As in Cassandra, `= null` holds for a null and `!= null` for
    /// a non-null; any other comparison with a null is false.
    Column {
        read: usize,
        column: ColumnId,
        /// A map key or list index inside a collection column.
        element: Option<CqlValue>,
        operator: CompareOp,
        value: Option<CqlValue>,
    },
    /// Compares a column of one read with a column of another.
    Columns {
        left: (usize, ColumnId),
        operator: CompareOp,
        right: (usize, ColumnId),
    },
}

/// The most checks one condition may carry.
pub const CONDITION_CHECKS_MAX: usize = 100;

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResult {
    Row(Option<Row>),
    Partition(Option<Partition>),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionResult {
    /// The timestamp it executed at (the write time of its writes).
    pub execute_at: WriteTime,
    /// One result per read, in order.
    pub reads: Vec<ReadResult>,
    /// Whether the writes were applied: false only when the condition
    /// failed.
    pub applied: bool,
}

/// How many times a read-only transaction is submitted when its coordinator gives up (it has
/// no effects, so another attempt is safe).
pub const READ_ONLY_ATTEMPTS_MAX: u32 = 3;

/// Where the sequencer's write-time ceiling is kept (`Family::Meta`, i64 big-endian).
const CLOCK_CEILING_KEY: &[u8] = b"clock/ceiling";
/// How far ahead of the write time issued the sequencer persists its ceiling: at most one
/// synced ceiling write per this much time.
pub const CLOCK_CEILING_LEASE_MICROS: i64 = 1_000_000;

/// Assigns strictly increasing timestamps that follow the wall clock, and never one at or
/// below a timestamp issued before a restart, even when the wall clock stepped back in between
/// (NTP, a restored VM, the Jepsen clock nemesis): every timestamp it issues is below a
/// ceiling persisted (synced) first, and a reopened sequencer starts above that ceiling.
#[derive(Debug)]
struct LocalSequencer {
    last_micros: AtomicI64,
    /// The persisted ceiling: every timestamp issued is below it.
    ceiling: AtomicI64,
    persist: Mutex<()>,
}

impl LocalSequencer {
    /// A sequencer resuming above the ceiling stored in `engine` (none: a new database).
    fn open<E: Engine>(engine: &E) -> Result<LocalSequencer> {
        let ceiling = match engine.get(Family::Meta, CLOCK_CEILING_KEY)? {
            None => i64::MIN,
            Some(bytes) => i64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                Error::Storage(concord_storage::Error::Corruption(format!(
                    "the clock ceiling record has {} bytes, not 8",
                    bytes.len()
                )))
            })?),
        };
        Ok(LocalSequencer {
            last_micros: AtomicI64::new(ceiling),
            ceiling: AtomicI64::new(ceiling),
            persist: Mutex::new(()),
        })
    }

    /// The next timestamp. When it reaches the persisted ceiling, a new ceiling is synced
    /// first; if that fails, `error` is set and the caller must not use the timestamp.
    fn next<E: Engine>(
        &self,
        clock: &dyn Clock,
        engine: &E,
        error: &mut Option<Error>,
    ) -> WriteTime {
        let now = clock.now_micros();
        let mut last = self.last_micros.load(Ordering::SeqCst);
        let next = loop {
            let next = now.max(last + 1);
            match self
                .last_micros
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break next,
                Err(actual) => last = actual,
            }
        };
        if next >= self.ceiling.load(Ordering::SeqCst) {
            let _persist = self.persist.lock();
            if next >= self.ceiling.load(Ordering::SeqCst) {
                let ceiling = next.saturating_add(CLOCK_CEILING_LEASE_MICROS);
                let mut batch = WriteBatch::new();
                batch.put(
                    Family::Meta,
                    CLOCK_CEILING_KEY.to_vec(),
                    ceiling.to_be_bytes().to_vec(),
                );
                match engine.write(batch, Durability::Sync) {
                    Ok(()) => self.ceiling.store(ceiling, Ordering::SeqCst),
                    Err(failed) => *error = Some(failed.into()),
                }
            }
        }
        WriteTime(next)
    }
}

/// A background thread (WAL sync, feed retention) that runs until dropped.
#[derive(Debug)]
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// An embedded Concord database.
pub struct Db<E: Engine = RocksEngine> {
    engine: Arc<E>,
    schema: RwLock<Arc<Schema>>,
    ddl_lock: Mutex<()>,
    registry: TableRegistry,
    clock: Arc<dyn Clock>,
    sequencer: LocalSequencer,
    isolation: RwLock<()>,
    durability: Durability,
    periodic_sync: Option<Background>,
    feed: Arc<ChangeFeed>,
    feed_holds: Arc<FeedHolds>,
    analytics: Option<Analytics>,
    /// `Some` in accord mode: every `execute` goes through this runtime.
    accord: Option<Accord>,
    /// How far the Accord runtime's clock runs ahead of the wall clock, in
    /// microseconds (`test_clock_offset_ms`; the engine's clock has it too).
    clock_offset_micros: i64,
    /// Opened as a cluster member whose runtime has not started yet
    /// ([`Db::start_cluster_accord`]): transactions are refused until then.
    awaiting_cluster: bool,
    /// Set on a cluster member: DDL goes through the metadata log
    /// (`crate::cluster_meta`).
    cluster_meta: std::sync::OnceLock<Arc<crate::cluster_meta::ClusterMeta>>,
    /// Where the accord runtime journals (`txn_journal`), and the log
    /// journal's directory (`None` in memory: no log journal).
    txn_journal: (TxnJournal, Option<PathBuf>),
    /// Whether this node may serve a token range's rows to a node gaining
    /// it (`crate::bootstrap`); unset: always.
    range_source_check: RwLock<Option<RangeSourceCheck>>,
}

/// Decides whether this node may serve `range` for the epoch transition
/// sealed at `seal_epoch` (`Err(reason)`: not yet, the fetcher retries).
pub type RangeSourceCheck =
    Arc<dyn Fn(&TokenRange, u64) -> std::result::Result<(), String> + Send + Sync>;

/// The Accord runtime of a database in accord mode: one node alone
/// (loopback peers), or a cluster member (the transport).
#[derive(Debug)]
struct Accord {
    runtime: Arc<Runtime>,
    pacer: Arc<FeedPacer>,
    /// A cluster member: partition reads go through the runtime too.
    cluster: bool,
}

/// The feed positions live change streams still need: retention keeps every
/// record at or above the lowest of them, up to `feed_retained_records_max`
/// (past it a stream ends with `POSITION_EXPIRED` rather than the feed
/// growing without bound).
#[derive(Debug, Default)]
pub struct FeedHolds {
    inner: Mutex<FeedHoldsInner>,
}

#[derive(Debug, Default)]
struct FeedHoldsInner {
    next_id: u64,
    positions: BTreeMap<u64, FeedPosition>,
}

impl FeedHolds {
    /// The lowest position held, if any.
    pub fn lowest(&self) -> Option<FeedPosition> {
        self.inner.lock().positions.values().min().copied()
    }
}

/// One change stream's hold on the feed, released on drop.
#[derive(Debug)]
pub struct FeedHold {
    holds: Arc<FeedHolds>,
    id: u64,
}

impl FeedHold {
    /// The stream has read every record below `position`.
    pub fn advance(&self, position: FeedPosition) {
        if let Some(held) = self.holds.inner.lock().positions.get_mut(&self.id) {
            *held = (*held).max(position);
        }
    }
}

impl Drop for FeedHold {
    fn drop(&mut self) {
        self.holds.inner.lock().positions.remove(&self.id);
    }
}

impl<E: Engine> std::fmt::Debug for Db<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("durability", &self.durability)
            .field("accord", &self.accord.is_some())
            .finish_non_exhaustive()
    }
}

impl Db<RocksEngine> {
    /// Opens (creating if needed) a database in `data_dir` with the default
    /// configuration.
    ///
    /// # Errors
    /// `Io` when the directory cannot be created, `Storage` when RocksDB
    /// cannot open it or the stored schema does not decode.
    pub fn open(data_dir: &Path) -> Result<Db<RocksEngine>> {
        let config = Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        Db::open_with_config(&config)
    }

    /// Opens a database as `config` describes.
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn open_with_config(config: &Config) -> Result<Db<RocksEngine>> {
        Db::open_with_analytics(config, AnalyticsOptions::default())
    }

    /// Opens a database as `config` describes, with the columnar replica's
    /// knobs set.
    ///
    /// # Errors
    /// As [`Db::open`]; as [`Db::start_analytics`].
    pub fn open_with_analytics(
        config: &Config,
        analytics: AnalyticsOptions,
    ) -> Result<Db<RocksEngine>> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            context: format!("create data directory {}", config.data_dir.display()),
            source,
        })?;
        let clock: Arc<dyn Clock> = match config.test_clock_offset_ms {
            0 => Arc::new(SystemClock),
            offset => Arc::new(OffsetClock::new(SystemClock, offset.saturating_mul(1_000))),
        };
        let registry = TableRegistry::new();
        let options = EngineOptions {
            rows: rows::row_family_options(clock.clone(), registry.clone()),
        };
        let engine = RocksEngine::open(
            &config.data_dir.join("rocksdb"),
            options,
            &RocksTuning::default(),
        )?;
        let durability = match config.commit_sync {
            CommitSync::Batch => Durability::Sync,
            CommitSync::Periodic => Durability::Buffered,
        };
        let mut db = Db::from_engine(Arc::new(engine), clock, registry, durability)?;
        db.clock_offset_micros = config.test_clock_offset_ms.saturating_mul(1_000);
        db.txn_journal = (
            config.txn_journal,
            Some(config.data_dir.join(txn_journal::JOURNAL_DIR)),
        );
        if config.cluster_listen_address.is_some() {
            // The runtime needs the cluster's topology: the node starts it
            // once it has joined (`Db::start_cluster_accord`).
            db.awaiting_cluster = true;
        } else if config.effective_txn_mode() == TxnMode::Accord {
            // Journal replay applies writes: their feed records must be
            // written if the replica will follow the feed.
            db.start_accord_with_feed(analytics.enabled)?;
        }
        let columnar_dir = config.data_dir.join("columnar");
        if analytics.enabled {
            db.start_analytics(&columnar_dir, analytics)?;
        } else if columnar_dir.exists() {
            // Writes from now on leave no feed records: a replica kept from
            // before would miss them. Drop it; enabling again rebuilds it.
            std::fs::remove_dir_all(&columnar_dir).map_err(|source| Error::Io {
                context: format!("remove the disabled replica {}", columnar_dir.display()),
                source,
            })?;
        }
        if config.commit_sync == CommitSync::Periodic {
            db.periodic_sync = Some(spawn_periodic_sync(
                db.engine.clone(),
                config.periodic_sync_ms,
            ));
        }
        Ok(db)
    }
}

fn spawn_periodic_sync<E: Engine>(engine: Arc<E>, period_ms: u64) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("concord-wal-sync".into())
        .spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(period_ms));
                if let Err(error) = engine.sync_wal() {
                    tracing::error!(%error, "periodic wal sync failed");
                }
            }
        })
        .ok();
    Background { stop, thread }
}

/// Drops the feed records every replica has made durable (or, past
/// `retained_records_max`, the oldest ones anyway: the replica rebuilds).
fn spawn_feed_retention<E: Engine>(
    engine: Arc<E>,
    feed: Arc<ChangeFeed>,
    holds: Arc<FeedHolds>,
    columnar: Arc<Columnar>,
    interval: Duration,
    retained_records_max: u64,
) -> Result<Background> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("concord-feed-retention".into())
        .spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(interval);
                if let Err(error) = truncate_feed(
                    engine.as_ref(),
                    &feed,
                    holds.lowest(),
                    &columnar,
                    retained_records_max,
                ) {
                    tracing::error!(%error, "feed retention failed");
                }
            }
        })
        .map_err(|source| Error::Io {
            context: "spawn the feed retention thread".into(),
            source,
        })?;
    Ok(Background {
        stop,
        thread: Some(thread),
    })
}

/// One retention step: returns the new retention floor. Keeps what the
/// replica has not made durable and what a live change stream (`held`) has
/// not read, but never more than `retained_records_max` records.
fn truncate_feed<E: Engine>(
    engine: &E,
    feed: &ChangeFeed,
    held: Option<FeedPosition>,
    columnar: &Columnar,
    retained_records_max: u64,
) -> Result<FeedPosition> {
    let durable = columnar.replica().durable_position();
    let needed = held.map_or(durable, |held| held.min(durable));
    let end = feed.frontier().position_end;
    let keep_from = FeedPosition(needed.0.max(end.0.saturating_sub(retained_records_max)));
    let floor = feed::retention_floor(engine)?;
    if keep_from <= floor {
        return Ok(floor);
    }
    let mut batch = WriteBatch::new();
    feed::truncate_before(&mut batch, keep_from);
    engine.write(batch, Durability::Buffered)?;
    Ok(keep_from)
}

impl Db<MemoryEngine> {
    /// Opens an empty in-memory database (for tests and simulation).
    pub fn open_in_memory(clock: Arc<dyn Clock>) -> Db<MemoryEngine> {
        let registry = TableRegistry::new();
        let options = EngineOptions {
            rows: rows::row_family_options(clock.clone(), registry.clone()),
        };
        let engine = Arc::new(MemoryEngine::new(options));
        match Db::from_engine(engine, clock, registry, Durability::Sync) {
            Ok(db) => db,
            // An empty memory engine holds no schema that could fail to load.
            Err(error) => unreachable!("opening an empty memory engine failed: {error}"),
        }
    }
}

impl<E: Engine + std::fmt::Debug> Db<E> {
    /// Switches the database to accord mode: from now on every
    /// [`Db::execute`] goes through a one-node Accord runtime on this engine
    /// (its journal as `txn_journal` says, replayed first). Call it right after
    /// opening, before any write and before [`Db::start_analytics`].
    ///
    /// # Errors
    /// `Io` when the runtime cannot start (journal replay failed); calling it
    /// twice is `InvalidRequest`.
    pub fn start_accord(&mut self) -> Result<()> {
        self.start_accord_with_feed(self.analytics.is_some())
    }

    fn start_accord_with_feed(&mut self, feed_on: bool) -> Result<()> {
        let config = RuntimeConfig {
            node: NodeId(1),
            topology: Arc::new(Topology::ring(1, 1, 1, FastPathMode::CoordinatorVotes)),
            node_config: txn_store::node_config(),
            clock_offset_micros: self.clock_offset_micros,
            epoch_floor: None,
        };
        self.start_runtime(feed_on, config, Box::new(Loopback::default()), false)
            .map(|_| ())
    }

    /// Switches a database opened as a cluster member to accord mode: its
    /// runtime runs node `node` of the cluster on `topology` (the metadata
    /// view's, `ClusterView::topology`) and sends through `peers` (the
    /// transport), adopting `epoch_floor` (`follow_views`' `epoch_floor`
    /// of the view). Returns the runtime, to hand it what peers send
    /// (`spawn_delivery`) and newer topologies (`follow_views`). Partition
    /// reads ([`Db::read_row`], [`Db::read_partition`]) then go through the
    /// runtime as read-only transactions. Call it before serving clients.
    ///
    /// # Errors
    /// `Io` when the runtime cannot start (journal replay failed); calling it
    /// twice is `InvalidRequest`.
    pub fn start_cluster_accord(
        &mut self,
        node: NodeId,
        topology: Arc<Topology>,
        epoch_floor: Option<concord_txn::timestamp::Timestamp>,
        peers: Box<dyn Peers>,
    ) -> Result<Arc<Runtime>> {
        let config = RuntimeConfig {
            node,
            topology,
            // Peers coordinate too: the change feed's floor must also stay below the
            // durability rounds' applied-before floor of every shard this node replicates
            // (design/cluster.md, "Change feed frontier").
            node_config: concord_txn::node::NodeConfig {
                apply_floor_durable: true,
                ..txn_store::node_config()
            },
            clock_offset_micros: self.clock_offset_micros,
            epoch_floor,
        };
        let runtime = self.start_runtime(self.analytics.is_some(), config, peers, true)?;
        self.awaiting_cluster = false;
        Ok(runtime)
    }

    fn start_runtime(
        &mut self,
        feed_on: bool,
        config: RuntimeConfig,
        peers: Box<dyn Peers>,
        cluster: bool,
    ) -> Result<Arc<Runtime>> {
        if self.accord.is_some() {
            return Err(concord_storage::Error::InvalidRequest(
                "the accord runtime is already started".into(),
            )
            .into());
        }
        let pacer = FeedPacer::new(self.feed.clone(), feed_on);
        let runtime = Runtime::start(
            config,
            txn_journal::open(
                self.txn_journal.0,
                self.txn_journal.1.as_deref(),
                &self.engine,
            )?,
            Box::new(CqlStore::new(
                self.engine.clone(),
                self.registry.clone(),
                pacer.clone(),
            )),
            peers,
            Box::new(PacerObserver(pacer.clone())),
        )
        .map_err(|error| Error::Io {
            context: "start the accord runtime".into(),
            source: std::io::Error::other(error.to_string()),
        })?;
        let runtime = Arc::new(runtime);
        self.accord = Some(Accord {
            runtime: runtime.clone(),
            pacer,
            cluster,
        });
        Ok(runtime)
    }
}

impl Db<MemoryEngine> {
    /// Opens an empty in-memory database whose transactions run in `mode`.
    pub fn open_in_memory_with_mode(clock: Arc<dyn Clock>, mode: TxnMode) -> Db<MemoryEngine> {
        let mut db = Db::open_in_memory(clock);
        if mode == TxnMode::Accord
            && let Err(error) = db.start_accord()
        {
            // A new memory engine has an empty journal: nothing to replay.
            unreachable!("starting accord on an empty memory engine failed: {error}");
        }
        db
    }
}

impl<E: Engine> Db<E> {
    /// The mode [`Db::execute`] runs transactions in.
    pub fn txn_mode(&self) -> TxnMode {
        if self.accord.is_some() {
            TxnMode::Accord
        } else {
            TxnMode::Direct
        }
    }

    /// Wraps an opened engine, loading its schema.
    ///
    /// # Errors
    /// `Storage(Corruption)` when the stored schema or clock ceiling does not decode.
    pub fn from_engine(
        engine: Arc<E>,
        clock: Arc<dyn Clock>,
        registry: TableRegistry,
        durability: Durability,
    ) -> Result<Db<E>> {
        let sequencer = LocalSequencer::open(engine.as_ref())?;
        let schema = match engine.get(Family::Meta, SCHEMA_KEY)? {
            Some(bytes) => Schema::from_bytes(&bytes)?,
            None => Schema::new(),
        };
        for keyspace in schema.keyspaces() {
            for table in keyspace.tables.values() {
                registry.insert(table.clone());
            }
        }
        registry.publish_version(schema.version);
        let feed = Arc::new(ChangeFeed::open(engine.as_ref())?);
        Ok(Db {
            feed,
            feed_holds: Arc::new(FeedHolds::default()),
            analytics: None,
            engine,
            schema: RwLock::new(Arc::new(schema)),
            ddl_lock: Mutex::new(()),
            registry,
            clock,
            sequencer,
            isolation: RwLock::new(()),
            durability,
            periodic_sync: None,
            accord: None,
            clock_offset_micros: 0,
            awaiting_cluster: false,
            cluster_meta: std::sync::OnceLock::new(),
            txn_journal: (TxnJournal::Engine, None),
            range_source_check: RwLock::new(None),
        })
    }

    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }

    /// Starts the columnar replica in `dir`: registers every table, rebuilds
    /// a new replica from a row-store snapshot (rows written before it
    /// existed), and starts its follower and the feed's retention. `open`
    /// does this; an in-memory database calls it to get [`Db::sql`].
    ///
    /// # Errors
    /// `Columnar` errors opening or rebuilding the replica; `Io` if a thread
    /// cannot start. Calling it twice is `InvalidRequest`.
    pub fn start_analytics(&mut self, dir: &Path, options: AnalyticsOptions) -> Result<()> {
        if self.analytics.is_some() {
            return Err(concord_storage::Error::InvalidRequest(
                "the columnar replica is already started".into(),
            )
            .into());
        }
        // DataFusion's local object store reads absolute paths without `..` only: a
        // relative one (`--data-dir data`) would be looked up under `/`.
        let dir = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::canonicalize(dir))
            .map_err(|source| crate::error::Error::Io {
                context: format!("create the columnar directory {}", dir.display()),
                source,
            })?;
        let columnar = Arc::new(Columnar::open(&dir, options.columnar.clone())?);
        let replica = columnar.replica();
        for keyspace in self.schema().keyspaces() {
            for table in keyspace.tables.values() {
                replica.register_table(table.clone());
            }
        }
        // A replica stored before follows the feed from its manifest, even one
        // stored empty (a crash before its first merge): its position's records
        // are all still in the feed, which retention keeps for it.
        if !replica.stored() {
            let (frontier, snapshot) = self
                .feed
                .quiesce(|frontier| (frontier, self.engine.snapshot()));
            replica.rebuild(&snapshot, frontier)?;
        }
        let follower = Follower::spawn(
            replica.clone(),
            self.engine.clone(),
            self.feed.clone(),
            options.follower,
        )?;
        if let Some(accord) = &self.accord {
            accord.pacer.enable();
        }
        let retention = spawn_feed_retention(
            self.engine.clone(),
            self.feed.clone(),
            self.feed_holds.clone(),
            columnar.clone(),
            options.feed_retention_interval,
            options.feed_retained_records_max,
        )?;
        self.analytics = Some(Analytics {
            columnar,
            follower: Some(follower),
            retention: Some(retention),
        });
        Ok(())
    }

    /// The columnar replica and its SQL engine, once started.
    pub fn columnar(&self) -> Option<&Arc<Columnar>> {
        self.analytics.as_ref().map(|analytics| &analytics.columnar)
    }

    /// Rebuilds the columnar replica from a row-store snapshot taken after
    /// this call, on the follower's thread, and returns once it is done:
    /// rows written without feed records ([`Db::import_rows`],
    /// [`Db::clear_rows`]) reach the replica this way. Blocks for as long
    /// as the rebuild takes (call it off an async runtime's threads). `Ok`
    /// at once when the node has no replica.
    ///
    /// # Errors
    /// The rebuild's failure, or a follower that stopped.
    pub fn rebuild_analytics(&self) -> Result<()> {
        match self
            .analytics
            .as_ref()
            .and_then(|analytics| analytics.follower.as_ref())
        {
            Some(follower) => Ok(follower.rebuild()?),
            None => Ok(()),
        }
    }

    /// Raw row-family pairs of `table` whose token lies in `range`, in key
    /// order, after key `after`, up to `bytes_max` bytes of keys and values
    /// (at least one pair), read from one engine snapshot; `next` is set
    /// when more remain. For range streaming (`crate::bootstrap`).
    ///
    /// # Errors
    /// `InvalidRequest` for `bytes_max` 0; engine errors.
    pub fn export_rows(
        &self,
        table: TableId,
        range: &TokenRange,
        after: Option<&[u8]>,
        bytes_max: usize,
    ) -> Result<RowChunk> {
        let snapshot = self.engine.snapshot();
        Ok(stream::export_chunk(
            &snapshot, table, range, after, bytes_max,
        )?)
    }

    /// Deletes every row-family key of `table` in `range` (stale rows of a
    /// range this node held before), durably. The replica sees it after
    /// [`Db::rebuild_analytics`].
    ///
    /// # Errors
    /// Engine errors.
    pub fn clear_rows(&self, table: TableId, range: &TokenRange) -> Result<()> {
        self.engine
            .write(stream::clear_batch(table, range), Durability::Sync)?;
        Ok(())
    }

    /// Writes `chunk`'s raw pairs in one synced engine batch, after checking
    /// every key is a row of `table` in `range` and every cell decodes. The
    /// replica sees them after [`Db::rebuild_analytics`].
    ///
    /// # Errors
    /// `InvalidRequest` for a table not in the schema, a key outside the
    /// table or range or a cell that does not decode, `LimitExceeded` past
    /// `STREAM_CHUNK_BYTES_MAX` (nothing written in either case); engine
    /// errors.
    pub fn import_rows(&self, table: TableId, range: &TokenRange, chunk: &RowChunk) -> Result<()> {
        if self.schema().table_by_id(table).is_none() {
            return Err(concord_storage::Error::InvalidRequest(format!(
                "imported rows of table id {} which is not in this node's schema",
                table.0
            ))
            .into());
        }
        let batch = stream::import_batch(table, range, chunk)?;
        if !batch.is_empty() {
            self.engine.write(batch, Durability::Sync)?;
        }
        Ok(())
    }

    /// Installs the check [`Db::range_source_ready`] asks before this node
    /// serves a range's rows (the epoch seal's readiness).
    pub fn set_range_source_check(&self, check: RangeSourceCheck) {
        *self.range_source_check.write() = Some(check);
    }

    /// Whether this node may serve `range`'s rows for the transition sealed
    /// at `seal_epoch`: `Ok` without a check installed, else the check's
    /// answer (`Err(reason)`: not yet).
    ///
    /// # Errors
    /// The check's reason.
    pub fn range_source_ready(
        &self,
        range: &TokenRange,
        seal_epoch: u64,
    ) -> std::result::Result<(), String> {
        let check = self.range_source_check.read().clone();
        match check {
            Some(check) => check(range, seal_epoch),
            None => Ok(()),
        }
    }

    /// The node's change feed.
    pub fn feed(&self) -> &Arc<ChangeFeed> {
        &self.feed
    }

    /// Holds the feed from `from` on for a change stream: retention keeps
    /// the records the stream has not read (up to the retention cap) until
    /// the hold advances or is dropped. Take the hold before checking the
    /// retention floor, so no truncation slips between the two.
    pub fn hold_feed(&self, from: FeedPosition) -> FeedHold {
        let mut inner = self.feed_holds.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.positions.insert(id, from);
        FeedHold {
            holds: self.feed_holds.clone(),
            id,
        }
    }

    /// A fresh commit timestamp that every write committed before this call
    /// is at or below (and none in flight is): the snapshot of a read that
    /// must see them all. Also the feed's heartbeat while idle.
    pub fn commit_timestamp(&self) -> WriteTime {
        if let Some(accord) = &self.accord {
            // Accord mode: every answered transaction executed at or below the
            // highest executeAt answered; the feed's watermark (paced by the
            // runtime) is the heartbeat while idle.
            let committed = accord
                .runtime
                .stats()
                .committed_max_hlc
                .load(Ordering::SeqCst);
            let committed = WriteTime(i64::try_from(committed).unwrap_or(i64::MAX));
            return committed.max(self.feed.frontier().watermark);
        }
        // A snapshot time writes nothing: a failed ceiling write only fails later writes.
        let (ticket, _ceiling_error) = self.begin_at_next();
        ticket.write_time()
    }

    /// Opens a feed ticket at the sequencer's next timestamp (direct mode). The error, if
    /// any, is the clock ceiling's: nothing may be written at that timestamp.
    fn begin_at_next(&self) -> (feed::FeedTicket<'_>, Option<Error>) {
        let mut ceiling_error = None;
        let ticket = self.feed.begin(|| {
            self.sequencer.next(
                self.clock.as_ref(),
                self.engine.as_ref(),
                &mut ceiling_error,
            )
        });
        (ticket, ceiling_error)
    }

    /// Runs a SQL query (see [`Db::sql_with`]) with the default options: the
    /// router picks the store, replica reads see every prior commit.
    ///
    /// # Errors
    /// As [`Db::sql_with`].
    pub fn sql(&self, query: &str) -> std::result::Result<SqlResult, SqlError> {
        self.sql_with(query, &SqlOptions::default())
    }

    /// Runs a SQL query over the database's keyspaces (schemas) and tables.
    /// Point and partition lookups (every table scan pins a full partition
    /// key with `=`) go to the row store; scans, aggregates and joins to the
    /// columnar replica. `/*+ ROW_STORE */` or `/*+ COLUMNAR */` in the query,
    /// or `options.store`, force a store (a forced row-store query without a
    /// pinned partition is a full scan). `EXPLAIN` returns DataFusion's plan
    /// after a `concord_route` row naming the store, snapshot and reason.
    /// Blocking: call it outside an async runtime (endpoints use
    /// `spawn_blocking`, or the replica's `Columnar::sql_async`).
    ///
    /// # Errors
    /// `Sql` for a query that does not plan or a bad hint;
    /// `ResourcesExhausted` past the concurrency limit or memory pool;
    /// `SnapshotTimeout` when the replica does not reach the snapshot in
    /// time; `Internal` when analytics were never started.
    #[allow(clippy::too_many_lines)]
    pub fn sql_with(
        &self,
        query: &str,
        options: &SqlOptions,
    ) -> std::result::Result<SqlResult, SqlError> {
        let columnar = self.columnar().ok_or_else(|| {
            SqlError::Internal(
                "this database has no columnar replica (open it with a data directory or \
                 call Db::start_analytics)"
                    .into(),
            )
        })?;
        let choice = crate::sql::store_choice(options.store, crate::sql::store_hint(query)?)?;
        let tables: Vec<Arc<TableDef>> = self
            .schema()
            .keyspaces()
            .flat_map(|keyspace| keyspace.tables.values().cloned())
            .collect();
        // A cluster member that does not hold every token range reads the
        // others from their replicas (crate::dist_sql); its row store may
        // lack the partition a lookup pins, so lookups go there too.
        let distributed = self
            .cluster_meta()
            .and_then(|cluster| cluster.meta())
            .and_then(|meta| {
                let view = meta.view();
                let distribution = crate::dist_sql::distribution(&view, meta.id())?;
                (!distribution.is_local()).then_some((distribution, view))
            });
        let (store, mut reason) = match choice {
            StoreChoice::RowStore => (Store::RowStore, "forced by hint or option"),
            StoreChoice::Columnar => (Store::Columnar, "forced by hint or option"),
            StoreChoice::Auto if distributed.is_some() => (Store::Columnar, DISTRIBUTED_REASON),
            StoreChoice::Auto => {
                if columnar.pins_partitions(query, &tables)? {
                    (
                        Store::RowStore,
                        "every table scan pins a full partition key",
                    )
                } else {
                    (Store::Columnar, "scan, aggregate or join over partitions")
                }
            }
        };
        let (snapshot, mut schema, mut batches) = match store {
            Store::RowStore => {
                let source = Arc::new(RowStoreSource {
                    engine: self.engine.clone(),
                    now_seconds: self.clock.now_seconds(),
                });
                let (schema, batches) = columnar.sql_over(query, source, &tables)?;
                (None, schema, batches)
            }
            Store::Columnar => {
                let snapshot = match options.freshness {
                    Freshness::Latest => Snapshot::At(self.commit_timestamp()),
                    Freshness::At(at) => Snapshot::At(at),
                    Freshness::Watermark => Snapshot::Watermark,
                    Freshness::BoundedStaleness(max_staleness) => Snapshot::BoundedStaleness {
                        now: WriteTime(self.clock.now_micros()),
                        max_staleness,
                    },
                };
                let result = match distributed {
                    Some((distribution, view)) => {
                        reason = DISTRIBUTED_REASON;
                        let runner = Arc::new(crate::dist_sql::FlightRunner { view });
                        let (result, stats) =
                            columnar.sql_distributed(query, snapshot, distribution, runner)?;
                        tracing::debug!(?stats, "distributed query");
                        result
                    }
                    None => columnar.sql(query, snapshot)?,
                };
                (Some(result.snapshot), result.schema, result.batches)
            }
        };
        if crate::sql::is_explain(query) {
            let route = crate::sql::route_batch(&batches, store, snapshot, reason)?;
            schema = route.schema();
            batches.insert(0, route);
        }
        Ok(SqlResult {
            store,
            snapshot,
            reason,
            schema,
            batches,
        })
    }

    /// The current schema.
    pub fn schema(&self) -> Arc<Schema> {
        self.schema.read().clone()
    }

    /// Looks a table up.
    ///
    /// # Errors
    /// `UnknownKeyspace`, `UnknownTable`.
    pub fn table(&self, keyspace: &str, name: &str) -> Result<Arc<TableDef>> {
        Ok(self.schema.read().table(keyspace, name)?.clone())
    }

    /// Applies a schema change and persists it, with `extra` (data
    /// deletions) in the same batch.
    fn change_schema<T>(
        &self,
        change: impl FnOnce(&mut Schema) -> concord_storage::Result<T>,
        extra: impl FnOnce(&T, &mut WriteBatch),
    ) -> Result<T> {
        let _ddl = self.ddl_lock.lock();
        let mut schema = (**self.schema.read()).clone();
        let version_before = schema.version;
        let outcome = change(&mut schema)?;
        if schema.version == version_before {
            return Ok(outcome);
        }
        let mut batch = WriteBatch::new();
        batch.put(Family::Meta, SCHEMA_KEY.to_vec(), schema.to_bytes()?);
        extra(&outcome, &mut batch);
        self.engine.write(batch, Durability::Sync)?;
        self.install_schema(schema, &[]);
        Ok(outcome)
    }

    /// Makes a persisted `schema` the one in force: its tables in the registry (and the
    /// replica), `dropped` out of the registry, then the schema and its version published (a
    /// replica waiting for that version finds the tables in the registry).
    fn install_schema(&self, schema: Schema, dropped: &[Arc<TableDef>]) {
        for keyspace in schema.keyspaces() {
            for table in keyspace.tables.values() {
                self.registry.insert(table.clone());
                if let Some(columnar) = self.columnar() {
                    columnar.replica().register_table(table.clone());
                }
            }
        }
        for table in dropped {
            self.registry.remove(table.id);
        }
        let version = schema.version;
        *self.schema.write() = Arc::new(schema);
        self.registry.publish_version(version);
    }

    /// Makes this database a cluster member's: from now on the CQL DDL path
    /// proposes to the metadata log instead of changing the schema here.
    /// Returns false if it was already set.
    pub fn set_cluster_meta(&self, meta: Arc<crate::cluster_meta::ClusterMeta>) -> bool {
        self.cluster_meta.set(meta).is_ok()
    }

    /// The accord runtime's counters (commits, fast and slow path, messages); `None` in
    /// direct mode and on a cluster member awaiting its cluster.
    pub fn accord_stats(&self) -> Option<&concord_cluster::runtime::RuntimeStats> {
        self.accord.as_ref().map(|accord| accord.runtime.stats())
    }

    /// The cluster handle of a cluster member; `None` on a single node.
    pub fn cluster_meta(&self) -> Option<&Arc<crate::cluster_meta::ClusterMeta>> {
        self.cluster_meta.get()
    }

    /// Changes the schema with `change`, a function of the schema alone,
    /// and persists the result in one batch with the data of every table it
    /// dropped deleted and `marker` (a key and value of the meta family)
    /// written. Nothing is written when `change` fails; with a marker the
    /// batch is written even if the schema did not change. The one door of
    /// the CQL DDL path and of the cluster's schema log (`cluster_meta`).
    ///
    /// # Errors
    /// `change`'s error; storage failures.
    pub fn alter_schema<T, X: From<Error>>(
        &self,
        marker: Option<(Vec<u8>, Vec<u8>)>,
        change: impl FnOnce(&mut Schema) -> std::result::Result<T, X>,
    ) -> std::result::Result<T, X> {
        let _ddl = self.ddl_lock.lock();
        let before = self.schema.read().clone();
        let mut schema = (*before).clone();
        let outcome = change(&mut schema)?;
        if schema == *before && marker.is_none() {
            return Ok(outcome);
        }
        let kept: std::collections::BTreeSet<_> = schema
            .keyspaces()
            .flat_map(|keyspace| keyspace.tables.values().map(|table| table.id))
            .collect();
        let dropped: Vec<Arc<TableDef>> = before
            .keyspaces()
            .flat_map(|keyspace| keyspace.tables.values())
            .filter(|table| !kept.contains(&table.id))
            .cloned()
            .collect();
        let mut batch = WriteBatch::new();
        batch.put(
            Family::Meta,
            SCHEMA_KEY.to_vec(),
            schema.to_bytes().map_err(Error::from)?,
        );
        for table in &dropped {
            rows::delete_table(table.id, &mut batch);
        }
        if let Some((key, value)) = marker {
            batch.put(Family::Meta, key, value);
        }
        self.engine
            .write(batch, Durability::Sync)
            .map_err(Error::from)?;
        self.install_schema(schema, &dropped);
        for table in &dropped {
            self.drop_replica_table(table)?;
        }
        Ok(outcome)
    }

    /// `CREATE KEYSPACE`. Returns false if it existed (lenient).
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidRequest`.
    pub fn create_keyspace(&self, def: KeyspaceDef, if_exists: IfExists) -> Result<bool> {
        self.change_schema(|schema| schema.create_keyspace(def, if_exists), |_, _| {})
    }

    /// `DROP KEYSPACE`, deleting its tables' data.
    ///
    /// # Errors
    /// `UnknownKeyspace` unless lenient.
    pub fn drop_keyspace(&self, name: &str, if_exists: IfExists) -> Result<()> {
        let dropped = self.change_schema(
            |schema| schema.drop_keyspace(name, if_exists),
            |tables, batch| {
                tables
                    .iter()
                    .for_each(|table| rows::delete_table(table.id, batch))
            },
        )?;
        for table in &dropped {
            self.registry.remove(table.id);
            self.drop_replica_table(table)?;
        }
        Ok(())
    }

    /// `CREATE TYPE`.
    ///
    /// # Errors
    /// As [`Schema::create_type`].
    pub fn create_type(
        &self,
        keyspace: &str,
        name: &str,
        fields: Vec<(String, CqlType)>,
        if_exists: IfExists,
    ) -> Result<bool> {
        self.change_schema(
            |schema| schema.create_type(keyspace, name, fields, if_exists),
            |_, _| {},
        )
    }

    /// `DROP TYPE`. Returns false if it did not exist (lenient).
    ///
    /// # Errors
    /// As [`Schema::drop_type`].
    pub fn drop_type(&self, keyspace: &str, name: &str, if_exists: IfExists) -> Result<bool> {
        self.change_schema(
            |schema| schema.drop_type(keyspace, name, if_exists),
            |_, _| {},
        )
    }

    /// `CREATE TABLE`. Returns `None` if it existed (lenient).
    ///
    /// # Errors
    /// As [`Schema::create_table`].
    pub fn create_table(
        &self,
        spec: TableSpec,
        if_exists: IfExists,
    ) -> Result<Option<Arc<TableDef>>> {
        self.change_schema(|schema| schema.create_table(spec, if_exists), |_, _| {})
    }

    /// `DROP TABLE`, deleting its data. Returns false if it did not exist
    /// (lenient).
    ///
    /// # Errors
    /// `UnknownKeyspace`, `UnknownTable` unless lenient.
    pub fn drop_table(&self, keyspace: &str, name: &str, if_exists: IfExists) -> Result<bool> {
        let dropped = self.change_schema(
            |schema| schema.drop_table(keyspace, name, if_exists),
            |table, batch| {
                if let Some(table) = table {
                    rows::delete_table(table.id, batch);
                }
            },
        )?;
        if let Some(table) = &dropped {
            self.registry.remove(table.id);
            self.drop_replica_table(table)?;
        }
        Ok(dropped.is_some())
    }

    fn drop_replica_table(&self, table: &TableDef) -> Result<()> {
        if let Some(columnar) = self.columnar() {
            columnar.replica().drop_table(table.id)?;
        }
        Ok(())
    }

    /// `ALTER TABLE ... ADD`.
    ///
    /// # Errors
    /// As [`Schema::add_column`].
    pub fn add_column(
        &self,
        keyspace: &str,
        table: &str,
        column: ColumnSpec,
    ) -> Result<Arc<TableDef>> {
        self.change_schema(
            |schema| schema.add_column(keyspace, table, column),
            |_, _| {},
        )
    }

    /// `ALTER TABLE ... DROP`.
    ///
    /// # Errors
    /// As [`Schema::drop_column`].
    pub fn drop_column(&self, keyspace: &str, table: &str, column: &str) -> Result<Arc<TableDef>> {
        self.change_schema(
            |schema| schema.drop_column(keyspace, table, column),
            |_, _| {},
        )
    }

    /// `ALTER KEYSPACE`.
    ///
    /// # Errors
    /// As [`Schema::alter_keyspace`].
    pub fn alter_keyspace(&self, def: KeyspaceDef) -> Result<()> {
        self.change_schema(|schema| schema.alter_keyspace(def), |_, _| {})
    }

    /// `ALTER TABLE ... RENAME`.
    ///
    /// # Errors
    /// As [`Schema::rename_columns`].
    pub fn rename_columns(
        &self,
        keyspace: &str,
        table: &str,
        renames: &[(String, String)],
    ) -> Result<Arc<TableDef>> {
        self.change_schema(
            |schema| schema.rename_columns(keyspace, table, renames),
            |_, _| {},
        )
    }

    /// `ALTER TYPE`: adds or renames fields of a user type, rewriting the
    /// tables that use it (their stored values are positional and stay).
    ///
    /// # Errors
    /// As [`Schema::alter_type`].
    pub fn alter_type(
        &self,
        keyspace: &str,
        name: &str,
        change: TypeChange,
    ) -> Result<Arc<UdtDefinition>> {
        self.change_schema(
            |schema| schema.alter_type(keyspace, name, change),
            |_, _| {},
        )
    }

    /// `ALTER TABLE ... WITH`.
    ///
    /// # Errors
    /// As [`Schema::alter_table_options`].
    pub fn alter_table_options(
        &self,
        keyspace: &str,
        table: &str,
        options: TableOptions,
    ) -> Result<Arc<TableDef>> {
        self.change_schema(
            |schema| schema.alter_table_options(keyspace, table, options),
            |_, _| {},
        )
    }

    /// `TRUNCATE`: deletes every row of a table.
    ///
    /// # Errors
    /// `UnknownKeyspace`, `UnknownTable`, `Storage` on engine failure.
    pub fn truncate(&self, keyspace: &str, table: &str) -> Result<()> {
        let table = self.table(keyspace, table)?;
        let _exclusive = self.isolation.write();
        // The truncation is not a feed record: with no write in flight, let
        // the replica apply everything before it, then empty its copy too.
        if let Some(columnar) = self.columnar() {
            columnar.resolve(Snapshot::At(self.commit_timestamp()))?;
        }
        let mut batch = WriteBatch::new();
        rows::delete_table(table.id, &mut batch);
        self.engine.write(batch, self.durability)?;
        if let Some(columnar) = self.columnar() {
            columnar.replica().drop_table(table.id)?;
            columnar.replica().register_table(table.clone());
        }
        Ok(())
    }

    /// Executes a transaction at one timestamp.
    ///
    /// # Errors
    /// `Storage(InvalidRequest | InvalidValue | LimitExceeded)` for a
    /// transaction that does not fit the schema (nothing is applied),
    /// `Storage(Engine)` when the engine fails (nothing is applied).
    pub fn execute(&self, transaction: Transaction) -> Result<TransactionResult> {
        if transaction.condition.len() > CONDITION_CHECKS_MAX {
            return Err(concord_storage::Error::LimitExceeded {
                what: format!("condition with {} checks", transaction.condition.len()),
                limit: "CONDITION_CHECKS_MAX",
                actual: transaction.condition.len(),
                max: CONDITION_CHECKS_MAX,
            }
            .into());
        }
        let operations = transaction.reads.len() + transaction.writes.len();
        if operations > TRANSACTION_OPERATIONS_MAX {
            return Err(concord_storage::Error::LimitExceeded {
                what: format!("transaction with {operations} operations"),
                limit: "TRANSACTION_OPERATIONS_MAX",
                actual: operations,
                max: TRANSACTION_OPERATIONS_MAX,
            }
            .into());
        }
        let schema = self.schema();
        let tables: Vec<Arc<TableDef>> = transaction
            .writes
            .iter()
            .map(|mutation| {
                schema.table_by_id(mutation.table).cloned().ok_or_else(|| {
                    concord_storage::Error::InvalidRequest(format!(
                        "mutation names table id {} which does not exist",
                        mutation.table.0
                    ))
                })
            })
            .collect::<concord_storage::Result<_>>()?;
        if let Some(accord) = &self.accord {
            return self.execute_accord(accord, transaction, &tables);
        }
        if self.awaiting_cluster {
            return Err(Error::Unavailable(
                "this node has not joined its cluster yet: its transaction runtime is not running"
                    .into(),
            ));
        }
        // Reads need every lower timestamp applied first; blind writes can
        // go side by side and share an fsync.
        let _shared;
        let _exclusive;
        if transaction.reads.is_empty() {
            _shared = self.isolation.read();
        } else {
            _exclusive = self.isolation.write();
        }
        // The feed ticket allocates the timestamp and holds the feed's
        // frontier below it until the batch is written (or fails).
        let (ticket, ceiling_error) = self.begin_at_next();
        if let Some(error) = ceiling_error {
            return Err(error);
        }
        let execute_at = ticket.write_time();
        let now_seconds = execute_at.seconds();
        let mut reads = Vec::with_capacity(transaction.reads.len());
        for read in &transaction.reads {
            reads.push(read_one(self.engine.as_ref(), read, now_seconds)?);
        }
        let outcome = evaluate(&transaction, &tables, &reads)?;
        let applied = outcome.is_some();
        let writes = outcome.unwrap_or_default();
        if applied && !writes.is_empty() {
            let mut batch = WriteBatch::new();
            let feed_on = self.analytics.is_some();
            for (mutation, table) in writes.iter().zip(&tables) {
                rows::write_mutation(table, mutation, execute_at, &mut batch)?;
                if feed_on {
                    self.feed.append(&ticket, &mut batch, table, mutation)?;
                }
            }
            self.engine.write(batch, self.durability)?;
        }
        drop(ticket);
        Ok(TransactionResult {
            execute_at,
            reads,
            applied,
        })
    }

    /// `execute` in accord mode: the transaction becomes an Accord
    /// transaction (`txn_store`), the runtime orders and applies it, and the
    /// outcome's reads are evaluated again here (the same function the
    /// replicas computed the writes with) to tell `applied` and errors.
    fn execute_accord(
        &self,
        accord: &Accord,
        transaction: Transaction,
        tables: &[Arc<TableDef>],
    ) -> Result<TransactionResult> {
        if transaction.reads.is_empty() && transaction.writes.is_empty() {
            let applied = evaluate(&transaction, tables, &[])?.is_some();
            return Ok(TransactionResult {
                execute_at: self.commit_timestamp(),
                reads: Vec::new(),
                applied,
            });
        }
        // A mutation that does not fit its table fails before it is ordered.
        let mut scratch = WriteBatch::new();
        for (mutation, table) in transaction.writes.iter().zip(tables) {
            rows::write_mutation(table, mutation, WriteTime(0), &mut scratch)?;
        }
        // A read-only transaction has no effects: when its coordinator gives up it is simply
        // submitted again, so reads never answer "may or may not have executed".
        let read_only = transaction.writes.is_empty();
        let mut attempts = 0;
        let outcome = loop {
            let txn = txn_store::build_txn(&transaction, tables, self.registry.version())?;
            let outcome = accord.runtime.execute(txn).map_err(|error| match error {
                RuntimeError::Overloaded => Error::Overloaded(error.to_string()),
                RuntimeError::Timeout(_) => Error::Unavailable(error.to_string()),
                RuntimeError::Stopped(_) | RuntimeError::Open(_) => {
                    Error::Storage(concord_storage::Error::Engine(error.to_string()))
                }
            })?;
            attempts += 1;
            if !(read_only
                && matches!(outcome, Outcome::Unknown)
                && attempts < READ_ONLY_ATTEMPTS_MAX)
            {
                break outcome;
            }
        };
        match outcome {
            Outcome::Committed {
                execute_at, reads, ..
            } => {
                let results = txn_store::read_results(&transaction, tables, &reads)?;
                let applied = txn_store::execute_body(&transaction, tables, &results)?.is_some();
                Ok(TransactionResult {
                    execute_at: txn_store::write_time(execute_at),
                    reads: results,
                    applied,
                })
            }
            Outcome::Unknown => Err(Error::Unavailable(
                "the coordinator gave up; the transaction may or may not execute".into(),
            )),
            Outcome::Overloaded => Err(Error::Overloaded(
                "too many transactions in flight on this node".into(),
            )),
        }
    }

    /// Applies mutations as one transaction and returns their write time.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub fn write(&self, mutations: Vec<Mutation>) -> Result<WriteTime> {
        Ok(self
            .execute(Transaction {
                writes: mutations,
                ..Transaction::default()
            })?
            .execute_at)
    }

    /// Reads one row at the latest applied state (consistency level ONE).
    /// In a cluster the read is a read-only Accord transaction, so it sees
    /// every write any node acknowledged before it began.
    ///
    /// # Errors
    /// Bad keys, corruption, engine failure; in a cluster, as
    /// [`Db::execute`] (`Unavailable` without a quorum).
    pub fn read_row(
        &self,
        table: &TableDef,
        partition_key: &[CqlValue],
        clustering: &[CqlValue],
    ) -> Result<Option<Row>> {
        if self.accord.as_ref().is_some_and(|accord| accord.cluster) {
            let read = Read::Row {
                table: self.table_arc(table),
                partition_key: partition_key.to_vec(),
                clustering: clustering.to_vec(),
            };
            return match self.read_through_accord(read)? {
                ReadResult::Row(row) => Ok(row),
                ReadResult::Partition(_) => Err(Error::Storage(concord_storage::Error::Internal(
                    "a row read returned a partition".into(),
                ))),
            };
        }
        let now_seconds = self.clock.now_seconds();
        Ok(rows::read_row(
            self.engine.as_ref(),
            table,
            partition_key,
            clustering,
            now_seconds,
        )?)
    }

    /// Reads a partition slice at the latest applied state. In a cluster a
    /// forward read is a read-only Accord transaction (strictly
    /// serializable: it sees every write any node acknowledged before it
    /// began; expiry is judged at its executeAt, not `options.now_seconds`);
    /// a reverse read stays local to this node (design/cluster.md).
    ///
    /// # Errors
    /// Bad keys, corruption, engine failure; in a cluster, as
    /// [`Db::execute`].
    pub fn read_partition(
        &self,
        table: &TableDef,
        partition_key: &[CqlValue],
        slice: &Slice,
        options: ReadOptions,
    ) -> Result<Option<Partition>> {
        if self.accord.as_ref().is_some_and(|accord| accord.cluster)
            && options.direction == Direction::Forward
        {
            let read = Read::Partition {
                table: self.table_arc(table),
                partition_key: partition_key.to_vec(),
                slice: slice.clone(),
                limit_rows: options.limit_rows,
            };
            return match self.read_through_accord(read)? {
                ReadResult::Partition(partition) => Ok(partition),
                ReadResult::Row(_) => Err(Error::Storage(concord_storage::Error::Internal(
                    "a partition read returned a row".into(),
                ))),
            };
        }
        Ok(rows::read_partition(
            self.engine.as_ref(),
            table,
            partition_key,
            slice,
            options,
        )?)
    }

    /// The schema's shared definition of `table` (a copy if it was dropped).
    fn table_arc(&self, table: &TableDef) -> Arc<TableDef> {
        self.schema()
            .table_by_id(table.id)
            .cloned()
            .unwrap_or_else(|| Arc::new(table.clone()))
    }

    /// One read as a read-only transaction (cluster mode).
    fn read_through_accord(&self, read: Read) -> Result<ReadResult> {
        let mut result = self.execute(Transaction {
            reads: vec![read],
            ..Transaction::default()
        })?;
        result.reads.pop().ok_or_else(|| {
            Error::Storage(concord_storage::Error::Internal(
                "a read-only transaction returned no read".into(),
            ))
        })
    }

    /// Scans a token range page by page at the latest applied state. Local
    /// to this node, also in a cluster (a scan is no Accord transaction:
    /// its keys are not known in advance).
    ///
    /// # Errors
    /// Bad cursor or page size, corruption, engine failure.
    pub fn scan(
        &self,
        table: &TableDef,
        range: &TokenRange,
        cursor: Option<&ScanCursor>,
        page_rows: usize,
    ) -> Result<ScanPage> {
        let now_seconds = self.clock.now_seconds();
        let snapshot = self.engine.snapshot();
        Ok(rows::scan_token_range(
            &snapshot,
            table,
            range,
            cursor,
            page_rows,
            now_seconds,
        )?)
    }

    /// The clock the database judges expiry by.
    pub fn now_seconds(&self) -> i64 {
        self.clock.now_seconds()
    }

    /// Makes every acknowledged write durable and flushes memtables; called
    /// on shutdown.
    ///
    /// # Errors
    /// `Storage(Engine)` on I/O failure.
    pub fn flush(&self) -> Result<()> {
        self.engine.sync_wal()?;
        self.engine.flush()?;
        Ok(())
    }
}

/// Executes one read of a transaction at `now_seconds` (expiry is judged
/// at the transaction's timestamp).
pub(crate) fn read_one(view: &dyn ReadView, read: &Read, now_seconds: i64) -> Result<ReadResult> {
    Ok(match read {
        Read::Row {
            table,
            partition_key,
            clustering,
        } => ReadResult::Row(rows::read_row(
            view,
            table,
            partition_key,
            clustering,
            now_seconds,
        )?),
        Read::Partition {
            table,
            partition_key,
            slice,
            limit_rows,
        } => {
            let options = ReadOptions {
                limit_rows: *limit_rows,
                ..ReadOptions::at(now_seconds)
            };
            ReadResult::Partition(rows::read_partition(
                view,
                table,
                partition_key,
                slice,
                options,
            )?)
        }
    })
}

/// Evaluates a transaction over its read results: `Some(writes)`, with the
/// derived cells computed, when the condition holds; `None` when it does not.
/// Deterministic: the direct path, and in accord mode every replica and the
/// waiting client, call it on the same reads.
pub(crate) fn evaluate(
    transaction: &Transaction,
    tables: &[Arc<TableDef>],
    results: &[ReadResult],
) -> Result<Option<Vec<Mutation>>> {
    if !evaluate_condition(&transaction.condition, &transaction.reads, results)? {
        return Ok(None);
    }
    let mut writes = transaction.writes.clone();
    apply_derived(&transaction.derived, results, tables, &mut writes)?;
    Ok(Some(writes))
}

/// Evaluates a transaction's condition on its reads; an empty condition
/// holds.
fn evaluate_condition(checks: &[Check], reads: &[Read], results: &[ReadResult]) -> Result<bool> {
    let out_of_range = |read: usize| {
        concord_storage::Error::InvalidRequest(format!(
            "condition names read {read} but the transaction has {} reads",
            results.len()
        ))
    };
    let first_row = |read: usize| -> Result<Option<(&Row, Option<&Row>)>> {
        let result = results.get(read).ok_or_else(|| out_of_range(read))?;
        Ok(match result {
            ReadResult::Row(row) => row.as_ref().map(|row| (row, None)),
            ReadResult::Partition(partition) => partition.as_ref().and_then(|partition| {
                partition
                    .rows
                    .first()
                    .map(|row| (row, partition.static_row.as_ref()))
            }),
        })
    };
    let column_value = |read: usize, column: ColumnId| -> Result<Option<(CqlValue, CqlType)>> {
        let table = match reads.get(read).ok_or_else(|| out_of_range(read))? {
            Read::Row { table, .. } | Read::Partition { table, .. } => table,
        };
        let Some(def) = table.column_by_id(column) else {
            return Err(concord_storage::Error::InvalidRequest(format!(
                "condition names column id {} not in {}",
                column.0,
                table.qualified_name()
            ))
            .into());
        };
        let static_row = match results.get(read) {
            Some(ReadResult::Partition(Some(partition))) => partition.static_row.as_ref(),
            _ => None,
        };
        let row = first_row(read)?.map(|(row, _)| row);
        let cell = row
            .and_then(|row| row.columns.get(&column))
            .or_else(|| static_row.and_then(|row| row.columns.get(&column)));
        Ok(cell.map(|cell| (cell.value.clone(), def.ty.clone())))
    };
    for check in checks {
        let holds = match check {
            Check::RowExists { read } => first_row(*read)?.is_some(),
            Check::RowAbsent { read } => first_row(*read)?.is_none(),
            Check::Column {
                read,
                column,
                element,
                operator,
                value,
            } => {
                let current = column_value(*read, *column)?;
                let current = match (current, element) {
                    (Some((collection, ty)), Some(element)) => {
                        collection_element(&collection, &ty, element)
                    }
                    (current, None) => current,
                    (None, Some(_)) => None,
                };
                compare(
                    current.as_ref().map(|(v, t)| (v, t)),
                    *operator,
                    value.as_ref(),
                )
            }
            Check::Columns {
                left,
                operator,
                right,
            } => {
                let left = column_value(left.0, left.1)?;
                let right = column_value(right.0, right.1)?;
                compare(
                    left.as_ref().map(|(v, t)| (v, t)),
                    *operator,
                    right.as_ref().map(|(v, _)| v),
                )
            }
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Computes derived cells from the reads into the writes.
fn apply_derived(
    derived: &[DerivedCell],
    reads: &[ReadResult],
    tables: &[Arc<TableDef>],
    writes: &mut [Mutation],
) -> Result<()> {
    let invalid = |message: String| -> crate::Error {
        concord_storage::Error::InvalidRequest(message).into()
    };
    for cell in derived {
        let table = tables
            .get(cell.write)
            .ok_or_else(|| invalid(format!("derived cell names write {}", cell.write)))?;
        let def = table
            .column_by_id(cell.column)
            .ok_or_else(|| invalid(format!("derived cell names column id {}", cell.column.0)))?;
        let current = match reads.get(cell.read) {
            Some(ReadResult::Row(row)) => row
                .as_ref()
                .and_then(|row| row.columns.get(&cell.column))
                .map(|value| value.value.clone()),
            _ => {
                return Err(invalid(format!(
                    "derived cell read {} is not a row read",
                    cell.read
                )));
            }
        };
        let value = derive(&def.name, &def.ty, current, &cell.derivation).map_err(invalid)?;
        let mutation = writes
            .get_mut(cell.write)
            .ok_or_else(|| invalid(format!("derived cell names write {}", cell.write)))?;
        let Some(RowOp::Upsert { cells, .. }) = mutation.ops.get_mut(cell.op) else {
            return Err(invalid(format!(
                "derived cell names op {} which is not an upsert",
                cell.op
            )));
        };
        let Some((_, op)) = cells.iter_mut().find(|(column, _)| *column == cell.column) else {
            return Err(invalid(format!(
                "derived cell's upsert has no cell for {}",
                def.name
            )));
        };
        *op = CellOp::Set(value);
    }
    Ok(())
}

/// The new value of a derived cell from its current one (`None`: null).
fn derive(
    name: &str,
    ty: &CqlType,
    current: Option<CqlValue>,
    derivation: &Derivation,
) -> std::result::Result<Option<CqlValue>, String> {
    match derivation {
        Derivation::Arithmetic(operation, operand) => {
            let Some(current) = current else {
                return Err(format!(
                    "{name} is null in the row being updated; `{name} = {name} +/- ...` needs a value"
                ));
            };
            arithmetic(&current, *operation, operand)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "{name} {operation:?} {operand:?} overflows or does not apply to type {ty}"
                    )
                })
        }
        Derivation::ListSetIndex(index, value) => {
            let mut elements = match current {
                Some(CqlValue::List(elements)) => elements,
                None => {
                    return Err(format!(
                        "list {name} is null in the row being updated: there is no element {index}"
                    ));
                }
                Some(other) => return Err(format!("{name} is not a list: {other:?}")),
            };
            let position = usize::try_from(*index)
                .ok()
                .filter(|position| *position < elements.len())
                .ok_or_else(|| {
                    format!(
                        "list index {index} out of bounds: {name} has {} elements",
                        elements.len()
                    )
                })?;
            match value {
                Some(value) => elements[position] = value.clone(),
                None => {
                    elements.remove(position);
                }
            }
            Ok((!elements.is_empty()).then_some(CqlValue::List(elements)))
        }
        Derivation::ListRemoveValues(values) => Ok(match current {
            Some(CqlValue::List(mut elements)) => {
                elements.retain(|element| !values.contains(element));
                (!elements.is_empty()).then_some(CqlValue::List(elements))
            }
            None => None,
            Some(other) => return Err(format!("{name} is not a list: {other:?}")),
        }),
    }
}

fn arithmetic(current: &CqlValue, operation: Arithmetic, operand: &CqlValue) -> Option<CqlValue> {
    use CqlValue as V;
    let add = operation == Arithmetic::Add;
    Some(match (current, operand) {
        (V::Tinyint(a), V::Tinyint(b)) => V::Tinyint(if add {
            a.checked_add(*b)?
        } else {
            a.checked_sub(*b)?
        }),
        (V::Smallint(a), V::Smallint(b)) => V::Smallint(if add {
            a.checked_add(*b)?
        } else {
            a.checked_sub(*b)?
        }),
        (V::Int(a), V::Int(b)) => V::Int(if add {
            a.checked_add(*b)?
        } else {
            a.checked_sub(*b)?
        }),
        (V::Bigint(a), V::Bigint(b)) => V::Bigint(if add {
            a.checked_add(*b)?
        } else {
            a.checked_sub(*b)?
        }),
        (V::Varint(a), V::Varint(b)) => V::Varint(if add { a + b } else { a - b }),
        (V::Float(a), V::Float(b)) => V::Float(if add { a + b } else { a - b }),
        (V::Double(a), V::Double(b)) => V::Double(if add { a + b } else { a - b }),
        _ => return None,
    })
}

fn collection_element(
    collection: &CqlValue,
    ty: &CqlType,
    element: &CqlValue,
) -> Option<(CqlValue, CqlType)> {
    match (collection, ty.unfrozen()) {
        (CqlValue::Map(entries), CqlType::Map(key_type, value_type)) => entries
            .iter()
            .find(|(key, _)| key.compare(element, key_type).is_eq())
            .map(|(_, value)| (value.clone(), (**value_type).clone())),
        (CqlValue::List(elements), CqlType::List(element_type)) => match element {
            CqlValue::Int(index) => usize::try_from(*index)
                .ok()
                .and_then(|index| elements.get(index))
                .map(|value| (value.clone(), (**element_type).clone())),
            _ => None,
        },
        _ => None,
    }
}

fn compare(
    current: Option<(&CqlValue, &CqlType)>,
    operator: CompareOp,
    expected: Option<&CqlValue>,
) -> bool {
    use std::cmp::Ordering;
    match (current, expected) {
        (None, None) => operator == CompareOp::Equal,
        (Some(_), None) | (None, Some(_)) => operator == CompareOp::NotEqual,
        (Some((current, ty)), Some(expected)) => {
            let ordering = current.compare(expected, ty);
            match operator {
                CompareOp::Equal => ordering == Ordering::Equal,
                CompareOp::NotEqual => ordering != Ordering::Equal,
                CompareOp::Less => ordering == Ordering::Less,
                CompareOp::LessOrEqual => ordering != Ordering::Greater,
                CompareOp::Greater => ordering == Ordering::Greater,
                CompareOp::GreaterOrEqual => ordering != Ordering::Less,
            }
        }
    }
}

impl<E: Engine> Drop for Db<E> {
    fn drop(&mut self) {
        // The runtime applies writes (and feed records): stop it first.
        self.accord.take();
        self.analytics.take();
        self.periodic_sync.take();
        if let Err(error) = self.engine.sync_wal() {
            tracing::error!(%error, "syncing the write-ahead log on close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_arithmetic_checks_overflow_and_types() {
        let add = |a, b| arithmetic(&a, Arithmetic::Add, &b);
        assert_eq!(
            add(CqlValue::Int(2), CqlValue::Int(3)),
            Some(CqlValue::Int(5))
        );
        assert_eq!(add(CqlValue::Int(i32::MAX), CqlValue::Int(1)), None);
        assert_eq!(
            arithmetic(
                &CqlValue::Bigint(5),
                Arithmetic::Subtract,
                &CqlValue::Bigint(7)
            ),
            Some(CqlValue::Bigint(-2))
        );
        assert_eq!(add(CqlValue::Int(1), CqlValue::Bigint(1)), None);
        assert_eq!(
            add(CqlValue::Text("a".into()), CqlValue::Text("b".into())),
            None
        );
    }

    #[test]
    fn comparisons_with_null_follow_cassandra() {
        let one = CqlValue::Int(1);
        let current = Some((&one, &CqlType::Int));
        assert!(compare(None, CompareOp::Equal, None));
        assert!(!compare(None, CompareOp::Less, None));
        assert!(compare(current, CompareOp::NotEqual, None));
        assert!(!compare(current, CompareOp::Greater, None));
        assert!(compare(
            current,
            CompareOp::GreaterOrEqual,
            Some(&CqlValue::Int(1))
        ));
        assert!(!compare(
            current,
            CompareOp::Greater,
            Some(&CqlValue::Int(1))
        ));
    }
}
