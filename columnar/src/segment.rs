//! Parquet segments: the replica's stable layer on disk, and its manifest.
//!
//! A segment holds merged row-store cells of one table, one winner per key
//! among the versions at or below the merge horizon it was written at, sorted
//! by key (the row-store key: table, token, partition key, clustering, column),
//! so a segment is sorted by primary key. Row groups carry min/max statistics
//! of `key`, which [`Segment::read`] uses to skip row groups outside a key
//! range.
//!
//! ```text
//! segment-<table>-<id>.parquet   key: Binary | write_time: Int64 | cell: Binary (storage::cell encoding)
//! MANIFEST (text, replaced atomically by write-then-rename)
//!   concord-columnar-manifest 1
//!   position <next feed position not folded into a segment>
//!   horizon <merge horizon, µs>
//!   merged <the feed position the last merge had read up to>
//!   segment <table id> <segment id> <n cells>
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{BinaryArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use concord_storage::cell::WriteTime;
use concord_storage::feed::FeedPosition;
use concord_storage::schema::TableId;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;

use crate::{Error, Result};

/// One merged cell of a segment: row-store key, write time, encoded cell.
pub type SegmentCell = (Vec<u8>, WriteTime, Vec<u8>);
/// Receives each `(key, encoded cell)` a segment read yields.
pub type CellVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Cells a segment read decodes at a time.
const SEGMENT_READ_BATCH_CELLS: usize = 8192;
/// Cells per Parquet row group: the unit of pruning.
pub const SEGMENT_ROW_GROUP_CELLS_MAX: usize = 16 * 1024;
const MANIFEST_FILE: &str = "MANIFEST";
const MANIFEST_HEADER: &str = "concord-columnar-manifest 1";

fn io_error(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{context} {}", path.display());
    move |source| Error::Io { context, source }
}

fn parquet_error(context: &'static str) -> impl FnOnce(parquet::errors::ParquetError) -> Error {
    move |error| Error::Corruption(format!("{context}: {error}"))
}

fn cell_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("write_time", DataType::Int64, false),
        Field::new("cell", DataType::Binary, false),
    ]))
}

/// An immutable segment file. The file is deleted when the last reader drops
/// a segment that a merge has replaced.
#[derive(Debug)]
pub struct Segment {
    pub table: TableId,
    pub id: u64,
    pub n_cells: usize,
    path: PathBuf,
    obsolete: std::sync::atomic::AtomicBool,
}

impl Segment {
    /// The file name of segment `id` of `table`.
    pub fn file_name(table: TableId, id: u64) -> String {
        format!("segment-{}-{id}.parquet", table.0)
    }

    fn path_for(dir: &Path, table: TableId, id: u64) -> PathBuf {
        dir.join(Self::file_name(table, id))
    }

    /// Writes `cells` (sorted by key, one per key) as segment `id`.
    ///
    /// # Errors
    /// `Io` when the file cannot be written; `Internal` for unsorted cells.
    pub fn write(dir: &Path, table: TableId, id: u64, cells: &[SegmentCell]) -> Result<Segment> {
        let mut writer = SegmentWriter::create(dir, table, id)?;
        for (key, write_time, cell) in cells {
            writer.append(key, *write_time, cell)?;
        }
        writer.finish()
    }

    /// Every cell of the segment in key order, read a batch at a time.
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be opened.
    pub fn cells(&self) -> Result<SegmentCells> {
        let file = File::open(&self.path).map_err(io_error("open segment", &self.path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error("read segment footer"))?
            .with_batch_size(SEGMENT_READ_BATCH_CELLS)
            .build()
            .map_err(parquet_error("open segment reader"))?;
        Ok(SegmentCells {
            reader,
            batch: None,
            row: 0,
        })
    }

    fn open(dir: &Path, table: TableId, id: u64, n_cells: usize) -> Segment {
        Segment {
            table,
            id,
            n_cells,
            path: Self::path_for(dir, table, id),
            obsolete: false.into(),
        }
    }

    /// Marks the segment replaced: its file goes when the last reader drops it.
    pub fn retire(&self) {
        self.obsolete
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Calls `visit(key, cell)` for every cell whose key is in
    /// `[start, end)` (`None` = unbounded), skipping row groups whose key
    /// statistics lie outside; returns the number of row groups skipped.
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be read or is malformed.
    pub fn read(
        &self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        visit: &mut CellVisitor<'_>,
    ) -> Result<usize> {
        let in_range =
            |key: &[u8]| start.is_none_or(|start| key >= start) && end.is_none_or(|end| key < end);
        let overlaps = |min: &[u8], max: &[u8]| {
            start.is_none_or(|start| max >= start) && end.is_none_or(|end| min < end)
        };
        self.read_where(&overlaps, &in_range, visit)
    }

    /// Calls `visit(key, cell)` for every cell whose key starts with one of
    /// `prefixes`, reading only the row groups whose key statistics can hold
    /// such a key. Partition prefixes never extend one another, so the
    /// greatest prefix at or below a key is the only one it can start with.
    ///
    /// # Errors
    /// As [`Segment::read`].
    pub fn read_prefixes(
        &self,
        prefixes: &std::collections::BTreeSet<Vec<u8>>,
        visit: &mut CellVisitor<'_>,
    ) -> Result<usize> {
        let covering = |key: &[u8]| {
            prefixes
                .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
                .next_back()
        };
        let matches = |key: &[u8]| covering(key).is_some_and(|prefix| key.starts_with(prefix));
        let overlaps = |min: &[u8], max: &[u8]| {
            covering(max).is_some_and(|prefix| prefix.as_slice() >= min || min.starts_with(prefix))
        };
        self.read_where(&overlaps, &matches, visit)
    }

    fn read_where(
        &self,
        group_overlaps: &dyn Fn(&[u8], &[u8]) -> bool,
        key_matches: &dyn Fn(&[u8]) -> bool,
        visit: &mut CellVisitor<'_>,
    ) -> Result<usize> {
        let file = File::open(&self.path).map_err(io_error("open segment", &self.path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error("read segment footer"))?;
        let metadata = builder.metadata().clone();
        let mut row_groups = Vec::new();
        for (group_idx, group) in metadata.row_groups().iter().enumerate() {
            let overlaps = match group.column(0).statistics() {
                Some(Statistics::ByteArray(stats)) => match (stats.min_opt(), stats.max_opt()) {
                    (Some(min), Some(max)) => group_overlaps(min.data(), max.data()),
                    _ => true,
                },
                _ => true,
            };
            if overlaps {
                row_groups.push(group_idx);
            }
        }
        let n_skipped = metadata.num_row_groups() - row_groups.len();
        let reader = builder
            .with_row_groups(row_groups)
            .with_batch_size(8192)
            .build()
            .map_err(parquet_error("open segment reader"))?;
        for batch in reader {
            let batch = batch.map_err(|error| Error::Corruption(format!("segment: {error}")))?;
            let keys = column::<BinaryArray>(&batch, 0)?;
            let cells = column::<BinaryArray>(&batch, 2)?;
            for row_idx in 0..batch.num_rows() {
                let key = keys.value(row_idx);
                if key_matches(key) {
                    visit(key, cells.value(row_idx))?;
                }
            }
        }
        Ok(n_skipped)
    }
}

/// Writes a segment cell by cell (sorted by key, one per key), a row group at
/// a time, so a merge that folds large segments holds one row group, not
/// the table.
pub struct SegmentWriter {
    table: TableId,
    id: u64,
    path: PathBuf,
    writer: ArrowWriter<File>,
    keys: Vec<Vec<u8>>,
    times: Vec<i64>,
    cells: Vec<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    n_cells: usize,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("n_cells", &self.n_cells)
            .finish()
    }
}

impl SegmentWriter {
    /// Starts segment `id` of `table` in `dir`.
    ///
    /// # Errors
    /// `Io` when the file cannot be created.
    pub fn create(dir: &Path, table: TableId, id: u64) -> Result<SegmentWriter> {
        let path = Segment::path_for(dir, table, id);
        let file = File::create(&path).map_err(io_error("create segment", &path))?;
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(SEGMENT_ROW_GROUP_CELLS_MAX))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .build();
        let writer = ArrowWriter::try_new(file, cell_schema(), Some(properties))
            .map_err(parquet_error("open segment writer"))?;
        Ok(SegmentWriter {
            table,
            id,
            path,
            writer,
            keys: Vec::new(),
            times: Vec::new(),
            cells: Vec::new(),
            last_key: None,
            n_cells: 0,
        })
    }

    /// Appends one cell; keys must increase.
    ///
    /// # Errors
    /// `Internal` for a key not above the previous one; `Corruption` when
    /// Parquet fails.
    pub fn append(&mut self, key: &[u8], write_time: WriteTime, cell: &[u8]) -> Result<()> {
        let previous = self.keys.last().or(self.last_key.as_ref());
        if previous.is_some_and(|previous| previous.as_slice() >= key) {
            return Err(Error::Internal(
                "segment cells are not sorted by key".into(),
            ));
        }
        self.keys.push(key.to_vec());
        self.times.push(write_time.0);
        self.cells.push(cell.to_vec());
        self.n_cells += 1;
        if self.keys.len() >= SEGMENT_ROW_GROUP_CELLS_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let keys = BinaryArray::from_iter_values(self.keys.iter());
        let times = Int64Array::from_iter_values(self.times.iter().copied());
        let values = BinaryArray::from_iter_values(self.cells.iter());
        let batch = RecordBatch::try_new(
            cell_schema(),
            vec![Arc::new(keys), Arc::new(times), Arc::new(values)],
        )
        .map_err(|error| Error::Internal(format!("segment batch: {error}")))?;
        self.writer
            .write(&batch)
            .map_err(parquet_error("write segment"))?;
        self.last_key = self.keys.pop();
        self.keys.clear();
        self.times.clear();
        self.cells.clear();
        Ok(())
    }

    /// Finishes the file (synced) and returns the segment.
    ///
    /// # Errors
    /// `Io` / `Corruption` when the file cannot be finished.
    pub fn finish(mut self) -> Result<Segment> {
        self.flush()?;
        let file = self
            .writer
            .into_inner()
            .map_err(parquet_error("close segment writer"))?;
        file.sync_all()
            .map_err(io_error("sync segment", &self.path))?;
        Ok(Segment {
            table: self.table,
            id: self.id,
            n_cells: self.n_cells,
            path: self.path,
            obsolete: false.into(),
        })
    }
}

/// A segment's cells in key order ([`Segment::cells`]).
pub struct SegmentCells {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row: usize,
}

impl std::fmt::Debug for SegmentCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCells")
            .field("row", &self.row)
            .finish()
    }
}

impl SegmentCells {
    /// The next `(key, cell)`, or `None` at the end.
    ///
    /// # Errors
    /// `Corruption` for a malformed file.
    pub fn next_cell(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            if let Some(batch) = &self.batch
                && self.row < batch.num_rows()
            {
                let keys = column::<BinaryArray>(batch, 0)?;
                let cells = column::<BinaryArray>(batch, 2)?;
                let out = (
                    keys.value(self.row).to_vec(),
                    cells.value(self.row).to_vec(),
                );
                self.row += 1;
                return Ok(Some(out));
            }
            match self.reader.next() {
                Some(batch) => {
                    self.batch = Some(
                        batch.map_err(|error| Error::Corruption(format!("segment: {error}")))?,
                    );
                    self.row = 0;
                }
                None => return Ok(None),
            }
        }
    }
}

fn column<A: 'static>(batch: &RecordBatch, idx: usize) -> Result<&A> {
    batch
        .column(idx)
        .as_any()
        .downcast_ref::<A>()
        .filter(|_| batch.column(idx).null_count() == 0)
        .ok_or_else(|| Error::Corruption(format!("segment column {idx} has the wrong type")))
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.obsolete.load(std::sync::atomic::Ordering::Acquire) {
            // A leftover file is harmless (the manifest no longer names it).
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The durable state of a replica: where to resume the feed, the merge
/// horizon, and the live segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub position: FeedPosition,
    pub horizon: WriteTime,
    /// Records before this position with write times at or below the
    /// horizon are in segments.
    pub merged_position: FeedPosition,
    /// Every write at or below it is in segments or in the feed from
    /// `position`: the watermark a reopened replica starts at. The horizon,
    /// except after a rebuild whose snapshot held writes above its frontier's
    /// watermark (a cluster member's, see `Replica::rebuild`).
    pub watermark: WriteTime,
    /// (table, segment id, cells)
    pub segments: Vec<(TableId, u64, usize)>,
}

impl Manifest {
    /// Reads the manifest in `dir`; `None` when there is none yet.
    ///
    /// # Errors
    /// `Io` when it cannot be read; `Corruption` when it does not parse.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read manifest", &path)(error)),
        };
        let corrupt = |line: &str| Error::Corruption(format!("manifest line {line:?}"));
        let mut lines = text.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(Error::Corruption("manifest header".into()));
        }
        let mut manifest = Manifest {
            position: FeedPosition(0),
            horizon: WriteTime(i64::MIN),
            merged_position: FeedPosition(0),
            watermark: WriteTime(i64::MIN),
            segments: Vec::new(),
        };
        let mut watermark = None;
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["position", n] => {
                    manifest.position = FeedPosition(n.parse().map_err(|_| corrupt(line))?)
                }
                ["merged", n] => {
                    manifest.merged_position = FeedPosition(n.parse().map_err(|_| corrupt(line))?)
                }
                ["horizon", n] => {
                    manifest.horizon = WriteTime(n.parse().map_err(|_| corrupt(line))?)
                }
                ["watermark", n] => {
                    watermark = Some(WriteTime(n.parse().map_err(|_| corrupt(line))?))
                }
                ["segment", table, id, n_cells] => manifest.segments.push((
                    TableId(table.parse().map_err(|_| corrupt(line))?),
                    id.parse().map_err(|_| corrupt(line))?,
                    n_cells.parse().map_err(|_| corrupt(line))?,
                )),
                _ => return Err(corrupt(line)),
            }
        }
        // Manifests written before the line existed: the horizon.
        manifest.watermark = watermark.unwrap_or(manifest.horizon);
        if manifest.watermark > manifest.horizon {
            return Err(Error::Corruption(format!(
                "manifest watermark {} above its horizon {}",
                manifest.watermark.0, manifest.horizon.0
            )));
        }
        Ok(Some(manifest))
    }

    /// Replaces the manifest in `dir` atomically.
    ///
    /// # Errors
    /// `Io` when it cannot be written.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let mut text = format!(
            "{MANIFEST_HEADER}\nposition {}\nhorizon {}\nmerged {}\nwatermark {}\n",
            self.position.0, self.horizon.0, self.merged_position.0, self.watermark.0
        );
        for (table, id, n_cells) in &self.segments {
            text.push_str(&format!("segment {} {id} {n_cells}\n", table.0));
        }
        let temporary = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut file = File::create(&temporary).map_err(io_error("create manifest", &temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("write manifest", &temporary))?;
        let path = dir.join(MANIFEST_FILE);
        std::fs::rename(&temporary, &path).map_err(io_error("replace manifest", &path))?;
        if let Ok(directory) = File::open(dir) {
            // Makes the rename durable where the platform allows it.
            let _ = directory.sync_all();
        }
        Ok(())
    }

    pub(crate) fn open_segments(&self, dir: &Path) -> Vec<Arc<Segment>> {
        self.segments
            .iter()
            .map(|(table, id, n_cells)| Arc::new(Segment::open(dir, *table, *id, *n_cells)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_prune_row_groups_by_key_statistics() {
        let dir = tempfile::tempdir().expect("dir");
        let n_cells = SEGMENT_ROW_GROUP_CELLS_MAX * 3;
        let cells: Vec<_> = (0..n_cells as u32)
            .map(|idx| {
                (
                    idx.to_be_bytes().to_vec(),
                    WriteTime(i64::from(idx)),
                    vec![7u8],
                )
            })
            .collect();
        let segment = Segment::write(dir.path(), TableId(1), 9, &cells).expect("write");
        let mut seen = Vec::new();
        let start = (SEGMENT_ROW_GROUP_CELLS_MAX as u32 + 5).to_be_bytes();
        let end = (SEGMENT_ROW_GROUP_CELLS_MAX as u32 + 8).to_be_bytes();
        let skipped = segment
            .read(Some(&start), Some(&end), &mut |key, _| {
                seen.push(key.to_vec());
                Ok(())
            })
            .expect("read");
        assert_eq!(skipped, 2);
        assert_eq!(seen.len(), 3);
        let mut all = 0;
        segment
            .read(None, None, &mut |_, _| {
                all += 1;
                Ok(())
            })
            .expect("read");
        assert_eq!(all, n_cells);
    }

    #[test]
    fn manifest_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(Manifest::load(dir.path()).expect("load"), None);
        let manifest = Manifest {
            position: FeedPosition(12),
            horizon: WriteTime(-5),
            merged_position: FeedPosition(20),
            watermark: WriteTime(-9),
            segments: vec![(TableId(3), 1, 10), (TableId(4), 2, 0)],
        };
        manifest.store(dir.path()).expect("store");
        assert_eq!(Manifest::load(dir.path()).expect("load"), Some(manifest));
        // Written before the watermark line: the horizon.
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            format!("{MANIFEST_HEADER}\nposition 1\nhorizon 7\nmerged 1\n"),
        )
        .expect("write");
        let old = Manifest::load(dir.path()).expect("load").expect("stored");
        assert_eq!((old.horizon, old.watermark), (WriteTime(7), WriteTime(7)));
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            format!("{MANIFEST_HEADER}\nposition 1\nhorizon 7\nmerged 1\nwatermark 8\n"),
        )
        .expect("write");
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(Error::Corruption(_))
        ));
        std::fs::write(dir.path().join(MANIFEST_FILE), "nonsense").expect("write");
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(Error::Corruption(_))
        ));
    }
}
