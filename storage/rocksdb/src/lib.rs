//! The RocksDB engine: Concord's storage engine interface over one RocksDB
//! database, one column family per [`Family`].
//!
//! **Owns**: opening RocksDB with Concord's tuning, mapping batches,
//! snapshots, scans, merges and compaction filters onto RocksDB.
//!
//! **Must never**: let a RocksDB type escape through its public API (callers
//! see only `concord_storage::engine`), or interpret keys and values (the
//! row layout belongs to `concord_storage::rows`).
//!
//! Merge operands are never shown to RocksDB compaction filters (the C API
//! filters only full values), so an entry is filtered once a compaction has
//! merged its operands into a value. [`RocksEngine::compact`] therefore runs
//! a full compaction twice, and only the second pass, which sees every
//! entry as a value, is reported to the filter as a full compaction: a
//! tombstone may be purged only when everything it shadows is in view,
//! otherwise an unmerged older write would outlive it and reappear.

use std::ffi::CString;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use concord_storage::engine::{
    BatchOp, CompactionContext, CompactionFilter, CompactionFilterFactory, Direction, Durability,
    Engine, EngineOptions, Family, FilterDecision, KeyRange, KeyValue, MergeOperator, ReadView,
    ScanIter, WriteBatch,
};
use concord_storage::{Error, Result};
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DB,
    DBRawIteratorWithThreadMode, FlushOptions, Options, ReadOptions, WriteOptions,
};

/// Tuning knobs of the RocksDB engine.
#[derive(Debug, Clone)]
pub struct RocksTuning {
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// Block cache size, in bytes.
    pub block_cache_bytes: usize,
}

impl Default for RocksTuning {
    fn default() -> RocksTuning {
        RocksTuning {
            write_buffer_bytes: 64 * 1024 * 1024,
            background_jobs: 2,
            block_cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A Concord engine backed by RocksDB.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    /// Set only during the second pass of [`RocksEngine::compact`], when
    /// every entry is a merged value the filter can see.
    full_compaction_in_view: Arc<AtomicBool>,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.path)
            .finish()
    }
}

fn engine_error(context: &str, error: rocksdb::Error) -> Error {
    Error::Engine(format!("{context}: {error}"))
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `path`.
    ///
    /// # Errors
    /// `Engine` when RocksDB cannot open it (locked by another process,
    /// unreadable, opened before with another merge operator, ...).
    pub fn open(path: &Path, options: EngineOptions, tuning: &RocksTuning) -> Result<RocksEngine> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(tuning.background_jobs);
        db_options.set_bytes_per_sync(1024 * 1024);
        let cache = rocksdb::Cache::new_lru_cache(tuning.block_cache_bytes);
        let full_compaction_in_view = Arc::new(AtomicBool::new(false));
        let descriptors = Family::ALL.iter().map(|&family| {
            let mut cf_options = Options::default();
            cf_options.set_write_buffer_size(tuning.write_buffer_bytes);
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf_options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
            let mut table_options = BlockBasedOptions::default();
            table_options.set_block_cache(&cache);
            table_options.set_bloom_filter(10.0, false);
            table_options.set_cache_index_and_filter_blocks(true);
            cf_options.set_block_based_table_factory(&table_options);
            let hooks = options.family(family);
            if let Some(merge_operator) = hooks.merge_operator {
                let name = merge_operator.name();
                cf_options.set_merge_operator_associative(name, merge_function(merge_operator));
            }
            if let Some(factory) = hooks.compaction_filter {
                cf_options.set_compaction_filter_factory(FilterFactoryAdapter::new(
                    factory,
                    full_compaction_in_view.clone(),
                ));
            }
            ColumnFamilyDescriptor::new(family.name(), cf_options)
        });
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)
            .map_err(|error| engine_error(&format!("open rocksdb at {}", path.display()), error))?;
        Ok(RocksEngine {
            db,
            path: path.to_path_buf(),
            full_compaction_in_view,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, family: Family) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(family.name())
            .ok_or_else(|| Error::Internal(format!("column family {} is not open", family.name())))
    }
}

fn merge_function(
    merge_operator: Arc<dyn MergeOperator>,
) -> impl Fn(&[u8], Option<&[u8]>, &rocksdb::MergeOperands) -> Option<Vec<u8>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |key, existing, operands| {
        let operands: Vec<&[u8]> = operands.iter().collect();
        merge_operator.merge(key, existing, &operands)
    }
}

struct FilterFactoryAdapter {
    factory: Arc<dyn CompactionFilterFactory>,
    name: CString,
    full_compaction_in_view: Arc<AtomicBool>,
}

impl FilterFactoryAdapter {
    fn new(
        factory: Arc<dyn CompactionFilterFactory>,
        full_compaction_in_view: Arc<AtomicBool>,
    ) -> FilterFactoryAdapter {
        let name = CString::new(factory.name()).unwrap_or_default();
        FilterFactoryAdapter {
            factory,
            name,
            full_compaction_in_view,
        }
    }
}

struct FilterAdapter {
    filter: Box<dyn CompactionFilter>,
    name: CString,
}

impl rocksdb::compaction_filter::CompactionFilter for FilterAdapter {
    fn filter(&mut self, _level: u32, key: &[u8], value: &[u8]) -> rocksdb::CompactionDecision {
        match self.filter.filter(key, value) {
            FilterDecision::Keep => rocksdb::CompactionDecision::Keep,
            FilterDecision::Remove => rocksdb::CompactionDecision::Remove,
        }
    }

    fn name(&self) -> &std::ffi::CStr {
        &self.name
    }
}

impl rocksdb::compaction_filter_factory::CompactionFilterFactory for FilterFactoryAdapter {
    type Filter = FilterAdapter;

    fn create(
        &mut self,
        context: rocksdb::compaction_filter_factory::CompactionFilterContext,
    ) -> FilterAdapter {
        // RocksDB's own flag is not enough: merge operands stay hidden from
        // the filter even in a full compaction.
        let is_full_compaction = context.is_full_compaction
            && context.is_manual_compaction
            && self.full_compaction_in_view.load(Ordering::SeqCst);
        let context = CompactionContext { is_full_compaction };
        FilterAdapter {
            filter: self.factory.create(context),
            name: self.name.clone(),
        }
    }

    fn name(&self) -> &std::ffi::CStr {
        &self.name
    }
}

fn read_options(range: &KeyRange) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    match &range.start {
        Bound::Included(start) => read_options.set_iterate_lower_bound(start.clone()),
        Bound::Excluded(start) => {
            let mut after = start.clone();
            after.push(0);
            read_options.set_iterate_lower_bound(after);
        }
        Bound::Unbounded => {}
    }
    match &range.end {
        Bound::Excluded(end) => read_options.set_iterate_upper_bound(end.clone()),
        Bound::Included(end) => {
            let mut after = end.clone();
            after.push(0);
            read_options.set_iterate_upper_bound(after);
        }
        Bound::Unbounded => {}
    }
    read_options
}

/// Adapts a RocksDB raw iterator to a scan.
struct RawScan<'a> {
    iterator: DBRawIteratorWithThreadMode<'a, DB>,
    direction: Direction,
    done: bool,
}

impl<'a> RawScan<'a> {
    fn new(mut iterator: DBRawIteratorWithThreadMode<'a, DB>, direction: Direction) -> RawScan<'a> {
        match direction {
            Direction::Forward => iterator.seek_to_first(),
            Direction::Reverse => iterator.seek_to_last(),
        }
        RawScan {
            iterator,
            direction,
            done: false,
        }
    }
}

impl Iterator for RawScan<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.iterator.valid() {
            self.done = true;
            return self
                .iterator
                .status()
                .err()
                .map(|error| Err(engine_error("scan", error)));
        }
        let item = match (self.iterator.key(), self.iterator.value()) {
            (Some(key), Some(value)) => (key.to_vec(), value.to_vec()),
            _ => {
                self.done = true;
                return Some(Err(Error::Internal(
                    "valid rocksdb iterator without a key".into(),
                )));
            }
        };
        match self.direction {
            Direction::Forward => self.iterator.next(),
            Direction::Reverse => self.iterator.prev(),
        }
        Some(Ok(item))
    }
}

impl ReadView for RocksEngine {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(family)?, key)
            .map_err(|error| engine_error("get", error))
    }

    fn scan(&self, family: Family, range: &KeyRange, direction: Direction) -> Result<ScanIter<'_>> {
        let iterator = self
            .db
            .raw_iterator_cf_opt(self.cf(family)?, read_options(range));
        Ok(Box::new(RawScan::new(iterator, direction)))
    }
}

/// A consistent view of a [`RocksEngine`].
pub struct RocksSnapshot<'a> {
    engine: &'a RocksEngine,
    snapshot: rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl std::fmt::Debug for RocksSnapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RocksSnapshot")
    }
}

impl ReadView for RocksSnapshot<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot
            .get_cf(self.engine.cf(family)?, key)
            .map_err(|error| engine_error("get", error))
    }

    fn scan(&self, family: Family, range: &KeyRange, direction: Direction) -> Result<ScanIter<'_>> {
        let iterator = self
            .snapshot
            .raw_iterator_cf_opt(self.engine.cf(family)?, read_options(range));
        Ok(Box::new(RawScan::new(iterator, direction)))
    }
}

impl Engine for RocksEngine {
    type Snapshot<'a> = RocksSnapshot<'a>;

    fn snapshot(&self) -> RocksSnapshot<'_> {
        RocksSnapshot {
            engine: self,
            snapshot: self.db.snapshot(),
        }
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        batch.check_limits()?;
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { family, key, value } => {
                    rocks_batch.put_cf(self.cf(*family)?, key, value)
                }
                BatchOp::Merge {
                    family,
                    key,
                    operand,
                } => rocks_batch.merge_cf(self.cf(*family)?, key, operand),
                BatchOp::Delete { family, key } => rocks_batch.delete_cf(self.cf(*family)?, key),
                BatchOp::DeleteRange { family, start, end } => {
                    rocks_batch.delete_range_cf(self.cf(*family)?, start, end);
                }
            }
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durability == Durability::Sync);
        self.db
            .write_opt(rocks_batch, &write_options)
            .map_err(|error| engine_error("write batch", error))
    }

    fn sync_wal(&self) -> Result<()> {
        self.db
            .flush_wal(true)
            .map_err(|error| engine_error("sync wal", error))
    }

    fn flush(&self) -> Result<()> {
        let mut flush_options = FlushOptions::default();
        flush_options.set_wait(true);
        for family in Family::ALL {
            self.db
                .flush_cf_opt(self.cf(family)?, &flush_options)
                .map_err(|error| engine_error(&format!("flush {}", family.name()), error))?;
        }
        Ok(())
    }

    fn compact(&self, family: Family) -> Result<()> {
        let mut compact_options = CompactOptions::default();
        compact_options.set_exclusive_manual_compaction(true);
        compact_options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        // Twice: the first pass merges operands into values, the second
        // shows those values to the compaction filter as a full compaction.
        let cf = self.cf(family)?;
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &compact_options);
        self.full_compaction_in_view.store(true, Ordering::SeqCst);
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &compact_options);
        self.full_compaction_in_view.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn raw_entry_count(&self, family: Family) -> Result<u64> {
        let cf = self.cf(family)?;
        let memtable_entries = [
            "rocksdb.num-entries-active-mem-table",
            "rocksdb.num-entries-imm-mem-tables",
        ]
        .iter()
        .map(|property| {
            self.db
                .property_int_value_cf(cf, *property)
                .map(|value| value.unwrap_or(0))
        })
        .sum::<std::result::Result<u64, _>>()
        .map_err(|error| engine_error("read memtable entry count", error))?;
        let file_entries: u64 = self
            .db
            .live_files()
            .map_err(|error| engine_error("list live files", error))?
            .iter()
            .filter(|file| file.column_family_name == family.name())
            .map(|file| file.num_entries)
            .sum();
        Ok(memtable_entries + file_entries)
    }
}
