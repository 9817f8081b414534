//! Row segments: a table's live rows at a merge horizon as typed Parquet,
//! which queries read through DataFusion's Parquet scan.
//!
//! ```text
//! rows-<table>-<id>.parquet  (one per table, rewritten by merges; not in the manifest)
//!   table_schema(def) columns (one Arrow column per CQL column, types.rs mapping,
//!   then _concord_write_time, _concord_deleted)
//!   | _concord_partition: Binary   the row-store partition prefix (table, token, key)
//!   | _concord_expiry: Int64?      the earliest expiry (s) of the partition's cells
//!                                  live at the horizon; null when none expires
//!   rows in row-store order (token, partition key, clustering); row groups of
//!   ROW_SEGMENT_ROW_GROUP_ROWS_MAX rows with page-level statistics
//! ```
//!
//! A row segment is the answer at its horizon `H`. A read at `T ≥ H` takes
//! it as is except for the partitions that may differ at `T`: those with a
//! version above `H` (the delta, and the replica's `dirty` set of partitions
//! merged into cell segments since `H`) and those with a cell expiring by
//! `T` ([`RowSegment::expiring_partitions`], pruned by the expiry column's
//! row-group statistics). Those partitions are left out of the Parquet scan
//! and reconciled from the cells instead (see `Replica::read_rows_scan`).
//!
//! Row segments are a cache of the cell segments: they are not named in the
//! manifest, a replica deletes leftover ones on open and the first merge
//! after it writes them again.
//!
//! A segment's rows may also be held decoded, as Arrow batches of the whole
//! file ([`RowSegment::decoded`]), within a node-wide budget
//! ([`DecodedMemory`]): scans then read memory instead of decoding Parquet
//! again for every query. The batches are the file's rows, so a scan over
//! them is the same answer; they go with the segment.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use concord_storage::cell::WriteTime;
use concord_storage::schema::{TableDef, TableId};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;

use crate::{Error, Result};

/// The hidden column holding a row's partition prefix (row-store bytes).
pub const PARTITION_COLUMN: &str = "_concord_partition";
/// The hidden column holding the earliest expiry (seconds) of the live cells
/// of a row's partition.
pub const EXPIRY_COLUMN: &str = "_concord_expiry";
/// Rows per Parquet row group of a row segment: the unit of pruning and of
/// parallel scans.
pub const ROW_SEGMENT_ROW_GROUP_ROWS_MAX: usize = 32 * 1024;
/// Rows per batch of a decoded row segment: DataFusion's default batch size,
/// so the operators above see the batches a Parquet scan would give them.
pub const DECODED_BATCH_ROWS: usize = 8192;

/// The node-wide budget of decoded row segments (Arrow batches held in
/// memory, see [`RowSegment::decoded`]): a segment is decoded and kept only
/// while the bytes held stay within `bytes_max`; otherwise its scans decode
/// the Parquet file as they go.
#[derive(Debug)]
pub struct DecodedMemory {
    bytes_max: usize,
    bytes_held: AtomicUsize,
}

impl DecodedMemory {
    pub fn new(bytes_max: usize) -> DecodedMemory {
        DecodedMemory {
            bytes_max,
            bytes_held: AtomicUsize::new(0),
        }
    }

    /// Bytes of decoded row segments held now.
    pub fn bytes_held(&self) -> usize {
        self.bytes_held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget, or says no.
    fn try_take(&self, bytes: usize) -> bool {
        self.bytes_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|sum| *sum <= self.bytes_max)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.bytes_held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A segment's rows decoded, holding their share of the budget until dropped.
#[derive(Debug)]
struct DecodedRows {
    batches: Arc<Vec<RecordBatch>>,
    bytes: usize,
    memory: Arc<DecodedMemory>,
}

impl Drop for DecodedRows {
    fn drop(&mut self) {
        self.memory.give_back(self.bytes);
    }
}

#[derive(Debug, Default)]
enum Decoded {
    /// Not decoded yet.
    #[default]
    NotYet,
    Held(DecodedRows),
    /// Does not fit the budget (or did not when it was tried): scans decode
    /// the file as they go.
    NotHeld,
}

/// The schema of a row segment of `def`: [`crate::sql::table_schema`], then
/// the partition and expiry columns.
///
/// # Errors
/// As [`crate::sql::table_schema`].
pub fn file_schema(def: &TableDef) -> Result<SchemaRef> {
    let table = crate::sql::table_schema(def)?;
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PARTITION_COLUMN, DataType::Binary, false));
    fields.push(Field::new(EXPIRY_COLUMN, DataType::Int64, true));
    Ok(Arc::new(Schema::new(fields)))
}

fn parquet_error(context: &'static str) -> impl FnOnce(parquet::errors::ParquetError) -> Error {
    move |error| Error::Corruption(format!("{context}: {error}"))
}

/// One table's rows at `horizon`, as a Parquet file.
#[derive(Debug)]
pub struct RowSegment {
    pub table: TableId,
    pub id: u64,
    /// The definition the rows were written with: a segment is used only
    /// while the table's definition equals it.
    pub def: Arc<TableDef>,
    pub horizon: WriteTime,
    pub n_rows: usize,
    pub size_bytes: u64,
    /// The earliest `_concord_expiry` of any row (`None`: nothing expires):
    /// a read before it needs no look at the file's expiry column.
    pub expiry_min: Option<i64>,
    path: PathBuf,
    obsolete: std::sync::atomic::AtomicBool,
    /// The rows as Arrow, once a scan decoded them (see [`RowSegment::decoded`]).
    decoded: parking_lot::Mutex<Decoded>,
}

/// Builds a row segment batch by batch.
pub struct RowSegmentWriter {
    table: TableId,
    id: u64,
    def: Arc<TableDef>,
    horizon: WriteTime,
    schema: SchemaRef,
    path: PathBuf,
    writer: ArrowWriter<File>,
    n_rows: usize,
    expiry_min: Option<i64>,
}

impl std::fmt::Debug for RowSegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowSegmentWriter")
            .field("path", &self.path)
            .field("n_rows", &self.n_rows)
            .finish()
    }
}

impl RowSegment {
    /// The file name of row segment `id` of `table`.
    pub fn file_name(table: TableId, id: u64) -> String {
        format!("rows-{}-{id}.parquet", table.0)
    }

    /// Starts writing row segment `id` of `def` at `horizon` into `dir`.
    ///
    /// # Errors
    /// `Io` when the file cannot be created; as [`file_schema`].
    pub fn writer(
        dir: &Path,
        def: Arc<TableDef>,
        id: u64,
        horizon: WriteTime,
    ) -> Result<RowSegmentWriter> {
        let schema = file_schema(&def)?;
        let path = dir.join(Self::file_name(def.id, id));
        let file = File::create(&path).map_err(|source| Error::Io {
            context: format!("create row segment {}", path.display()),
            source,
        })?;
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_SEGMENT_ROW_GROUP_ROWS_MAX))
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties))
            .map_err(parquet_error("open row segment writer"))?;
        Ok(RowSegmentWriter {
            table: def.id,
            id,
            def,
            horizon,
            schema,
            path,
            writer,
            n_rows: 0,
            expiry_min: None,
        })
    }

    /// The file's path (DataFusion's Parquet scan opens it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the segment replaced: its file goes when the last reader drops it.
    pub fn retire(&self) {
        self.obsolete
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Every row of the file (all columns of [`file_schema`]) as Arrow
    /// batches of [`DECODED_BATCH_ROWS`], decoded on the first call and held
    /// while the segment lives, if they fit `memory`; `None` when they do not
    /// (then they are never tried again for this segment). Concurrent first
    /// calls decode once (the others wait for it).
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be read.
    pub fn decoded(&self, memory: &Arc<DecodedMemory>) -> Result<Option<Arc<Vec<RecordBatch>>>> {
        let mut decoded = self.decoded.lock();
        match &*decoded {
            Decoded::Held(rows) => return Ok(Some(Arc::clone(&rows.batches))),
            Decoded::NotHeld => return Ok(None),
            Decoded::NotYet => {}
        }
        // The file's size is a lower bound of the decoded size: no decode
        // when even it does not fit.
        if !memory.try_take(self.size_bytes as usize) {
            *decoded = Decoded::NotHeld;
            return Ok(None);
        }
        memory.give_back(self.size_bytes as usize);
        let file = File::open(&self.path).map_err(|source| Error::Io {
            context: format!("open row segment {}", self.path.display()),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error("read row segment footer"))?
            .with_batch_size(DECODED_BATCH_ROWS)
            .build()
            .map_err(parquet_error("open row segment reader"))?;
        let mut batches = Vec::new();
        let mut bytes = 0;
        for batch in reader {
            let batch =
                batch.map_err(|error| Error::Corruption(format!("row segment: {error}")))?;
            bytes += batch.get_array_memory_size();
            batches.push(batch);
        }
        if !memory.try_take(bytes) {
            *decoded = Decoded::NotHeld;
            return Ok(None);
        }
        let batches = Arc::new(batches);
        *decoded = Decoded::Held(DecodedRows {
            batches: Arc::clone(&batches),
            bytes,
            memory: Arc::clone(memory),
        });
        Ok(Some(batches))
    }

    /// The partitions (prefixes) holding a cell that expires at or before
    /// `now_seconds`: their rows at `now_seconds` may differ from the
    /// segment's. Row groups whose expiry statistics are all later (or that
    /// hold no expiring cell) are skipped without reading them.
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be read.
    pub fn expiring_partitions(&self, now_seconds: i64) -> Result<Vec<Vec<u8>>> {
        if self
            .expiry_min
            .is_none_or(|expiry_min| expiry_min > now_seconds)
        {
            return Ok(Vec::new());
        }
        let file = File::open(&self.path).map_err(|source| Error::Io {
            context: format!("open row segment {}", self.path.display()),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error("read row segment footer"))?;
        let metadata = builder.metadata().clone();
        let n_columns = builder.schema().fields().len();
        let (partition_idx, expiry_idx) = (n_columns - 2, n_columns - 1);
        let mut row_groups = Vec::new();
        for (group_idx, group) in metadata.row_groups().iter().enumerate() {
            let may_expire = match group.column(expiry_idx).statistics() {
                Some(Statistics::Int64(stats)) => match stats.min_opt() {
                    Some(min) => *min <= now_seconds,
                    // Statistics without a minimum: only nulls (nothing expires).
                    None => stats.null_count_opt() != Some(group.num_rows() as u64),
                },
                _ => true,
            };
            if may_expire {
                row_groups.push(group_idx);
            }
        }
        if row_groups.is_empty() {
            return Ok(Vec::new());
        }
        let mask = ProjectionMask::roots(
            builder.parquet_schema(),
            [partition_idx, expiry_idx].iter().copied(),
        );
        let reader = builder
            .with_row_groups(row_groups)
            .with_projection(mask)
            .build()
            .map_err(parquet_error("open row segment reader"))?;
        let mut out: Vec<Vec<u8>> = Vec::new();
        for batch in reader {
            let batch =
                batch.map_err(|error| Error::Corruption(format!("row segment: {error}")))?;
            let partitions = batch
                .column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| Error::Corruption("row segment partition column".into()))?;
            let expiries = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Corruption("row segment expiry column".into()))?;
            for row_idx in 0..batch.num_rows() {
                if expiries.is_valid(row_idx) && expiries.value(row_idx) <= now_seconds {
                    let partition = partitions.value(row_idx);
                    if out.last().is_none_or(|last| last.as_slice() != partition) {
                        out.push(partition.to_vec());
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Drop for RowSegment {
    fn drop(&mut self) {
        if self.obsolete.load(std::sync::atomic::Ordering::Acquire) {
            // A leftover file is harmless (deleted on the next open).
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl RowSegmentWriter {
    /// Appends rows: `table_batch` is a batch of the full
    /// [`crate::sql::table_schema`]; `partitions` and `expiries` give each
    /// row's partition prefix and partition expiry.
    ///
    /// # Errors
    /// `Internal` for mismatched lengths; `Corruption` when Parquet fails.
    pub fn append(
        &mut self,
        table_batch: &RecordBatch,
        partitions: &[&[u8]],
        expiries: &[Option<i64>],
    ) -> Result<()> {
        let n_rows = table_batch.num_rows();
        if partitions.len() != n_rows || expiries.len() != n_rows {
            return Err(Error::Internal(format!(
                "row segment batch of {n_rows} rows with {} partitions and {} expiries",
                partitions.len(),
                expiries.len()
            )));
        }
        let mut columns: Vec<ArrayRef> = table_batch.columns().to_vec();
        columns.push(Arc::new(BinaryArray::from_iter_values(partitions.iter())));
        columns.push(Arc::new(Int64Array::from(expiries.to_vec())));
        let options = RecordBatchOptions::new().with_row_count(Some(n_rows));
        let batch = RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
            .map_err(|error| Error::Internal(format!("row segment batch: {error}")))?;
        self.writer
            .write(&batch)
            .map_err(parquet_error("write row segment"))?;
        self.n_rows += n_rows;
        if let Some(batch_min) = expiries.iter().flatten().min() {
            self.expiry_min = Some(self.expiry_min.map_or(*batch_min, |m| m.min(*batch_min)));
        }
        Ok(())
    }

    /// Finishes the file (synced) and returns the segment.
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be finished.
    pub fn finish(self) -> Result<RowSegment> {
        let file = self
            .writer
            .into_inner()
            .map_err(parquet_error("close row segment writer"))?;
        let io = |context: &str, path: &Path| {
            let context = format!("{context} {}", path.display());
            move |source| Error::Io { context, source }
        };
        file.sync_all()
            .map_err(io("sync row segment", &self.path))?;
        let size_bytes = file
            .metadata()
            .map_err(io("stat row segment", &self.path))?
            .len();
        Ok(RowSegment {
            table: self.table,
            id: self.id,
            def: self.def,
            horizon: self.horizon,
            n_rows: self.n_rows,
            size_bytes,
            expiry_min: self.expiry_min,
            path: self.path,
            obsolete: false.into(),
            decoded: parking_lot::Mutex::new(Decoded::NotYet),
        })
    }
}
