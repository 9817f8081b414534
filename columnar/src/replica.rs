//! The replica: per table, a delta of recent cell versions (in memory) over a
//! stable layer of Parquet segments, fed from the change feed, read at a
//! snapshot timestamp.
//!
//! ```text
//!  feed records ──catch_up──► delta: key → [version(position, write_time, cell)]
//!   (position p..)              │  merge: versions ≤ horizon, one LWW winner per key
//!                               ▼
//!                     segments (Parquet, sorted by key) + MANIFEST(position, horizon)
//!  read at T (T ≥ horizon, T ≤ watermark):
//!    winners = LWW over segments ∪ {delta versions with write_time ≤ T}
//!    → CellView (a storage::engine::ReadView) → rows::scan_token_range / read_partition
//! ```
//!
//! Exactness: a version is a row-store cell produced by the same
//! `rows::write_mutation` the apply path runs, and the view shows per key the
//! winner under `cell::reconcile` (the row store's merge rule) among versions
//! at or below `T`, so reads at `T` equal the row store's at `T`. Merging folds
//! only versions at or below the horizon, which never passes the oldest open
//! snapshot nor the watermark, so every readable snapshot keeps its versions.
//!
//! Exactly-once resume: the manifest's position is the oldest feed position
//! whose versions are still only in the delta; records from there on that
//! precede the last merge's position and whose write time is at or below the
//! horizon are already in segments and are skipped; every other is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use concord_storage::cell::{self, WriteTime};
use concord_storage::engine::{
    BatchOp, Direction, Family, KeyRange, KeyValue, ReadView, ScanIter, WriteBatch,
};
use concord_storage::feed::{self, FeedFrontier, FeedPosition, FeedRecord};
use concord_storage::keys;
use concord_storage::partitioner::TokenRange;
use concord_storage::rows::{self, Partition, ReadOptions, RowOp, Slice};
use concord_storage::schema::{TableDef, TableId};
use concord_storage::value::CqlValue;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::row_segment::RowSegment;
use crate::segment::{Manifest, Segment, SegmentCell};
use crate::{Error, Result};

/// Feed records read per step of a catch-up.
pub const CATCH_UP_RECORDS_MAX: usize = 4096;
/// Delta versions (all tables) above which ingest merges into segments.
pub const DELTA_VERSIONS_MAX_DEFAULT: usize = 1 << 20;
/// Segments per table above which a merge compacts them into one.
pub const SEGMENTS_PER_TABLE_MAX: usize = 8;
/// The largest segments a compaction leaves as they are (it folds the
/// others): fewer than [`SEGMENTS_PER_TABLE_MAX`], so a compaction always
/// brings the table back under it.
pub const SEGMENTS_KEPT_BY_COMPACTION: usize = SEGMENTS_PER_TABLE_MAX / 2;
/// The memory the scan cache holds by default (whole-table scans as Arrow).
pub const SCAN_CACHE_BYTES_MAX_DEFAULT: usize = 256 << 20;
/// The memory row segments may hold decoded as Arrow by default
/// (`RowSegment::decoded`): none, so every full scan decodes Parquet as
/// before, until the node's own tests (server/) have run with a budget; the
/// htap bench sets one (design/columnar.md "Row segments").
pub const ROW_SEGMENT_DECODED_BYTES_MAX_DEFAULT: usize = 0;
/// Cells (bytes, with per-entry overhead) a row-segment write converts at
/// a time by default: it streams the table in chunks of whole partitions of
/// about this size (`ColumnarOptions::row_segment_write_chunk_bytes`).
pub const ROW_SEGMENT_WRITE_CHUNK_BYTES: usize = 64 << 20;
/// Bytes counted per cell entry held in memory beside its key and value.
const CELL_ENTRY_OVERHEAD_BYTES: usize = 64;
/// Rows per page of a replica scan.
const SCAN_PAGE_ROWS: usize = 8192;
/// Partitions a table may have merged into cell segments since its row
/// segment's horizon (the `dirty` set every read leaves out of the row
/// segment); past it the row segment is dropped until the next rewrite.
pub const ROW_SEGMENT_DIRTY_PARTITIONS_MAX: usize = 64 * 1024;
/// A merge rewrites a row segment whose dirty partitions pass this
/// percentage of its rows (so a large table written a little is not
/// rewritten at every merge).
pub const ROW_SEGMENT_DIRTY_PERCENT_MAX_DEFAULT: usize = 10;
/// Feed records the follower may trail the feed by and still have the row
/// writer rewrite row segments; further behind, the rewrites wait until it
/// caught up (`ColumnarOptions::row_segment_backlog_records_max`; see
/// [`Replica::write_row_segments_unless_behind`]).
pub const ROW_SEGMENT_BACKLOG_RECORDS_MAX_DEFAULT: u64 = 4 * CATCH_UP_RECORDS_MAX as u64;

#[derive(Debug, Clone)]
struct Version {
    position: FeedPosition,
    write_time: WriteTime,
    cell: Vec<u8>,
}

/// Cell versions by row-store key, applied over a stretch of the feed.
#[derive(Debug, Default)]
struct Generation {
    versions: BTreeMap<Vec<u8>, Vec<Version>>,
    n_versions: usize,
    /// The lowest feed position of a version held (`None` when empty).
    position_min: Option<FeedPosition>,
}

impl Generation {
    fn push(&mut self, key: &[u8], version: Version) {
        self.position_min = Some(
            self.position_min
                .map_or(version.position, |min| min.min(version.position)),
        );
        match self.versions.get_mut(key) {
            Some(versions) => versions.push(version),
            None => {
                self.versions.insert(key.to_vec(), vec![version]);
            }
        }
        self.n_versions += 1;
    }

    fn range(
        &self,
        bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> impl Iterator<Item = (&Vec<u8>, &Vec<Version>)> {
        self.versions.range::<Vec<u8>, _>(bounds)
    }
}

/// A table's delta: the generation catch-up applies into, and the sealed
/// (immutable, shared) generations a merge took or left behind.
///
/// A merge seals the active generation under the state lock (O(1)), folds
/// the sealed generations with no lock held, and installs by swapping them
/// for one generation of the versions it kept (above its horizon), again
/// O(1) per table under the lock. The merged generations are freed after
/// the lock is released: dropping a million versions one by one under the
/// lock stalled catch-up for minutes at SF 1 (design/columnar.md,
/// "Merging without stalling catch-up").
#[derive(Debug, Default)]
struct Delta {
    sealed: Vec<Arc<Generation>>,
    active: Generation,
}

impl Delta {
    fn generations(&self) -> impl Iterator<Item = &Generation> {
        self.sealed
            .iter()
            .map(|generation| &**generation)
            .chain(std::iter::once(&self.active))
    }

    fn n_versions(&self) -> usize {
        self.generations().map(|g| g.n_versions).sum()
    }

    fn position_min(&self) -> Option<FeedPosition> {
        self.generations().filter_map(|g| g.position_min).min()
    }

    /// Every version with its key, generation by generation (keys ascend
    /// within a generation, not across them).
    fn range(
        &self,
        bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> impl Iterator<Item = (&Vec<u8>, &Vec<Version>)> {
        self.generations()
            .flat_map(move |generation| generation.range(bounds.clone()))
    }

    /// Seals the active generation (if it holds anything) and returns every
    /// sealed generation: a merge folds them without the state lock.
    fn seal(&mut self) -> Vec<Arc<Generation>> {
        if self.active.n_versions > 0 {
            let active = std::mem::take(&mut self.active);
            self.sealed.push(Arc::new(active));
        }
        self.sealed.clone()
    }

    /// Replaces the sealed generations `merged` with `kept` (their versions
    /// a merge did not fold); returns the replaced ones, to be dropped once
    /// the state lock is released.
    fn replace_sealed(
        &mut self,
        merged: &[Arc<Generation>],
        kept: Generation,
    ) -> Vec<Arc<Generation>> {
        let (replaced, sealed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sealed)
            .into_iter()
            .partition(|generation| merged.iter().any(|m| Arc::ptr_eq(m, generation)));
        self.sealed = sealed;
        if kept.n_versions > 0 {
            self.sealed.push(Arc::new(kept));
        }
        replaced
    }
}

/// Gives every [`TableState`] a distinct incarnation, so a merge that
/// folded a table's delta outside the state lock installs its segment only
/// into the same table state (not one a `TRUNCATE` or `DROP` + `CREATE`
/// made meanwhile).
static NEXT_TABLE_INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug)]
struct TableState {
    incarnation: u64,
    def: Option<Arc<TableDef>>,
    /// The newest write time of any version applied to the table: a cached
    /// scan at `T` stays exact while this is at or below `T`.
    write_time_max: WriteTime,
    delta: Delta,
    segments: Vec<Arc<Segment>>,
    /// The table's rows at a past horizon as typed Parquet (see
    /// [`crate::row_segment`]); `None` until a merge writes it.
    rows: Option<Arc<RowSegment>>,
    /// Partition prefixes merged into cell segments after `rows`' horizon:
    /// their rows may differ from the row segment's.
    dirty: BTreeSet<Vec<u8>>,
}

impl Default for TableState {
    fn default() -> TableState {
        TableState {
            incarnation: NEXT_TABLE_INCARNATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            def: None,
            write_time_max: WriteTime(i64::MIN),
            delta: Delta::default(),
            segments: Vec::new(),
            rows: None,
            dirty: BTreeSet::new(),
        }
    }
}

impl TableState {
    /// Drops the row segment (reads reconcile every row until a merge writes
    /// a new one).
    fn drop_rows(&mut self) {
        if let Some(rows) = self.rows.take() {
            rows.retire();
        }
        self.dirty.clear();
    }

    /// Whether a merge should (re)write the table's row segment: none, the
    /// definition changed, or more than `dirty_percent_max` % of its rows'
    /// count of partitions were merged since.
    fn rows_need_writing(&self, dirty_percent_max: usize) -> bool {
        match (&self.def, &self.rows) {
            (Some(def), Some(rows)) => {
                **def != *rows.def
                    || self.dirty.len().saturating_mul(100)
                        > rows.n_rows.saturating_mul(dirty_percent_max)
            }
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A table's full scan at one snapshot, as Arrow, reused by later snapshots
/// that would read the same rows: no version of the table was applied above
/// `snapshot` and no cell expires between it and the later snapshot.
#[derive(Debug)]
struct CachedScan {
    def: Arc<TableDef>,
    snapshot: WriteTime,
    /// The earliest expiry (seconds) after `snapshot`'s second among the
    /// cells read; `i64::MAX` for none.
    next_expiry_seconds: i64,
    batch: RecordBatch,
}

#[derive(Debug)]
struct State {
    tables: BTreeMap<TableId, TableState>,
    next_position: FeedPosition,
    horizon: WriteTime,
    /// The horizon a merge under way folds to (`i64::MIN` when none): no
    /// snapshot below it may be held from when the merge starts.
    pending_horizon: WriteTime,
    merged_position: FeedPosition,
    /// Every write at or below it is in segments or in the feed from the
    /// manifest's position (see `Manifest::watermark`): the horizon, except
    /// after a rebuild from a snapshot holding writes above its frontier's
    /// watermark, until a merge passes the horizon again.
    resume_watermark: WriteTime,
    /// The position in the stored manifest: the feed before it may be dropped.
    durable_position: FeedPosition,
    open_snapshots: BTreeMap<WriteTime, usize>,
    next_segment_id: u64,
    n_delta_versions: usize,
    n_records_applied: u64,
}

impl State {
    /// A held table readable at `snapshot`, with its definition.
    ///
    /// # Errors
    /// `SnapshotTooOld` below the merge horizon; `UnknownTable` for a table
    /// the replica does not hold (never registered, or dropped).
    fn table_at(
        &self,
        table: TableId,
        snapshot: WriteTime,
    ) -> Result<(&TableState, Arc<TableDef>)> {
        if snapshot < self.horizon {
            return Err(Error::SnapshotTooOld {
                snapshot: snapshot.0,
                horizon: self.horizon.0,
            });
        }
        let unknown = || Error::UnknownTable(format!("table id {}", table.0));
        let table_state = self.tables.get(&table).ok_or_else(unknown)?;
        let def = table_state.def.clone().ok_or_else(unknown)?;
        Ok((table_state, def))
    }
}

/// What one [`Replica::catch_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatchUp {
    pub n_records_applied: usize,
    /// Records of tables the replica does not hold (dropped), or already in
    /// segments (after a restart).
    pub n_records_skipped: usize,
}

/// Which partitions a read covers.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionFilter {
    All,
    /// One partition, by its full key.
    Key(Vec<CqlValue>),
}

/// The columnar replica of every table of a node.
#[derive(Debug)]
pub struct Replica {
    dir: PathBuf,
    /// Whether `open` found a stored manifest (the replica existed before).
    stored: bool,
    delta_versions_max: usize,
    state: RwLock<State>,
    watermark: Mutex<WriteTime>,
    watermark_advanced: Condvar,
    scan_cache: Mutex<BTreeMap<TableId, CachedScan>>,
    scan_cache_bytes_max: usize,
    /// The budget of row segments held decoded (see `RowSegment::decoded`).
    decoded_memory: Arc<crate::row_segment::DecodedMemory>,
    row_segment_dirty_percent_max: usize,
    row_segment_write_chunk_bytes: usize,
    row_segment_backlog_records_max: u64,
    /// Feed records between the replica's next position and the newest
    /// frontier the follower saw ([`Replica::set_feed_backlog`]).
    feed_backlog: std::sync::atomic::AtomicU64,
    /// Row-segment passes put off because the follower was behind.
    n_row_segment_passes_deferred: std::sync::atomic::AtomicU64,
    n_scan_cache_hits: std::sync::atomic::AtomicU64,
    n_row_segment_scans: std::sync::atomic::AtomicU64,
    /// Cells of the segments compactions rewrote since open.
    n_cells_compacted: std::sync::atomic::AtomicU64,
    row_writer: Mutex<RowWriterRequests>,
    row_writer_requested: Condvar,
    /// Serialises what rewrites cell segments or the manifest (merges,
    /// rebuilds, table drops), so a merge may write its segments without the
    /// state lock. Taken before `state`, never after.
    merge_lock: Mutex<()>,
    merge_observer: MergeObserverSlot,
}

#[derive(Default)]
struct MergeObserverSlot(Mutex<Option<MergeObserver>>);

impl std::fmt::Debug for MergeObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.lock().is_some() {
            "MergeObserver(set)"
        } else {
            "MergeObserver(none)"
        })
    }
}

/// Row-segment passes asked of a row writer thread (the follower's): while
/// one is attached, the merges catch-up and the follower run leave their row
/// segments to it instead of writing them inline.
#[derive(Debug, Default)]
struct RowWriterRequests {
    n_attached: usize,
    /// One pending flag: requests made while a pass runs coalesce into one
    /// more pass.
    pending: bool,
    /// The pending pass starts with a cell merge ([`Replica::merge_cells`]).
    merge: bool,
}

/// Where a merge is when it calls its observer ([`Replica::set_merge_observer`]):
/// `Folding` runs with no state lock held (the merge lock is), `Freeing`
/// with no lock of the replica held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergePhase {
    /// The delta is sealed; its versions at or below the horizon are about
    /// to be folded into segments.
    Folding,
    /// The merge is installed and its locks released; the versions it
    /// folded are about to be freed.
    Freeing,
}

/// Called by a merge at each [`MergePhase`].
pub type MergeObserver = Arc<dyn Fn(MergePhase) + Send + Sync>;

/// A table's part of a merge, taken under the state lock when it started.
struct Taken {
    table: TableId,
    incarnation: u64,
    def: Option<Arc<TableDef>>,
    /// Whether the table had a row segment (then the merge lists the
    /// partitions it folds, to leave them out of it).
    has_rows: bool,
    generations: Vec<Arc<Generation>>,
    segments: Vec<Arc<Segment>>,
}

/// A segment a merge wrote, and the segments it replaces (a compaction).
type NewSegment = (Arc<Segment>, Vec<Arc<Segment>>);

/// A table's part of a merge once folded (without a lock).
struct Folded {
    table: Taken,
    /// The winners at or below the horizon, sorted by key.
    cells: Vec<SegmentCell>,
    /// The versions above the horizon: the table's sealed delta after the merge.
    kept: Generation,
    /// The partitions folded (`None` if not listed: the table had no row segment).
    dirty: Option<BTreeSet<Vec<u8>>>,
}

impl Folded {
    fn writes_segment(&self) -> bool {
        !self.cells.is_empty() || self.table.segments.len() > SEGMENTS_PER_TABLE_MAX
    }
}

/// Keeps a snapshot's versions from being merged away while it is held.
#[derive(Debug)]
pub struct SnapshotGuard {
    replica: Arc<Replica>,
    pub snapshot: WriteTime,
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        let mut state = self.replica.state.write();
        if let Some(count) = state.open_snapshots.get_mut(&self.snapshot) {
            *count -= 1;
            if *count == 0 {
                state.open_snapshots.remove(&self.snapshot);
            }
        }
    }
}

impl Replica {
    /// Opens the replica stored in `dir` (created if missing), resuming from
    /// its manifest. Tables must be registered before catching up.
    ///
    /// # Errors
    /// `Io` / `Corruption` for an unreadable directory or manifest.
    pub fn open(dir: &Path, delta_versions_max: usize) -> Result<Replica> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: format!("create replica directory {}", dir.display()),
            source,
        })?;
        let loaded = Manifest::load(dir)?;
        let stored = loaded.is_some();
        let manifest = loaded.unwrap_or(Manifest {
            position: FeedPosition(0),
            horizon: WriteTime(i64::MIN),
            merged_position: FeedPosition(0),
            watermark: WriteTime(i64::MIN),
            segments: Vec::new(),
        });
        remove_orphan_segments(dir, &manifest)?;
        let mut tables: BTreeMap<TableId, TableState> = BTreeMap::new();
        let mut next_segment_id = 0;
        for segment in manifest.open_segments(dir) {
            next_segment_id = next_segment_id.max(segment.id + 1);
            tables
                .entry(segment.table)
                .or_default()
                .segments
                .push(segment);
        }
        Ok(Replica {
            dir: dir.to_owned(),
            stored,
            delta_versions_max: delta_versions_max.max(1),
            state: RwLock::new(State {
                tables,
                next_position: manifest.position,
                horizon: manifest.horizon,
                pending_horizon: WriteTime(i64::MIN),
                merged_position: manifest.merged_position,
                resume_watermark: manifest.watermark,
                durable_position: manifest.position,
                open_snapshots: BTreeMap::new(),
                next_segment_id,
                n_delta_versions: 0,
                n_records_applied: 0,
            }),
            // Everything at or below it is in segments or the feed from the
            // manifest's position.
            watermark: Mutex::new(manifest.watermark),
            watermark_advanced: Condvar::new(),
            scan_cache: Mutex::new(BTreeMap::new()),
            scan_cache_bytes_max: SCAN_CACHE_BYTES_MAX_DEFAULT,
            decoded_memory: Arc::new(crate::row_segment::DecodedMemory::new(
                ROW_SEGMENT_DECODED_BYTES_MAX_DEFAULT,
            )),
            row_segment_dirty_percent_max: ROW_SEGMENT_DIRTY_PERCENT_MAX_DEFAULT,
            row_segment_write_chunk_bytes: ROW_SEGMENT_WRITE_CHUNK_BYTES,
            row_segment_backlog_records_max: ROW_SEGMENT_BACKLOG_RECORDS_MAX_DEFAULT,
            feed_backlog: std::sync::atomic::AtomicU64::new(0),
            n_row_segment_passes_deferred: std::sync::atomic::AtomicU64::new(0),
            n_scan_cache_hits: std::sync::atomic::AtomicU64::new(0),
            n_row_segment_scans: std::sync::atomic::AtomicU64::new(0),
            n_cells_compacted: std::sync::atomic::AtomicU64::new(0),
            row_writer: Mutex::new(RowWriterRequests::default()),
            row_writer_requested: Condvar::new(),
            merge_lock: Mutex::new(()),
            merge_observer: MergeObserverSlot::default(),
        })
    }

    /// Registers a row writer thread: until [`Replica::detach_row_writer`],
    /// the merges [`Replica::catch_up`] runs under pressure write only cell
    /// segments and ask for a row-segment pass
    /// ([`Replica::request_row_segments`]) instead of writing row segments
    /// inline. [`Replica::merge`] always writes them inline.
    pub fn attach_row_writer(&self) {
        self.row_writer.lock().n_attached += 1;
    }

    /// Undoes one [`Replica::attach_row_writer`] (after its thread stopped).
    pub fn detach_row_writer(&self) {
        let mut requests = self.row_writer.lock();
        requests.n_attached = requests.n_attached.saturating_sub(1);
    }

    /// Asks the attached row writer for a pass of
    /// [`Replica::write_row_segments`]; also wakes it to see a stop flag.
    pub fn request_row_segments(&self) {
        self.row_writer.lock().pending = true;
        self.row_writer_requested.notify_all();
    }

    /// Asks the attached row writer for a pass that first merges the delta
    /// into cell segments ([`Replica::merge_cells`]), then writes row
    /// segments: the follower's merges run there, off its catch-up thread.
    pub fn request_merge(&self) {
        let mut requests = self.row_writer.lock();
        requests.pending = true;
        requests.merge = true;
        drop(requests);
        self.row_writer_requested.notify_all();
    }

    /// Takes a pending merge request (the row writer asks after
    /// [`Replica::next_row_segment_request`] returned `true`).
    pub fn take_merge_request(&self) -> bool {
        std::mem::take(&mut self.row_writer.lock().merge)
    }

    /// The row writer's wait: returns `true` when a pass was requested
    /// (taking the request), `false` once `stop` is set (checked whenever it
    /// wakes; set it, then call [`Replica::request_row_segments`]).
    pub fn next_row_segment_request(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        let mut requests = self.row_writer.lock();
        loop {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                return false;
            }
            if requests.pending {
                requests.pending = false;
                return true;
            }
            self.row_writer_requested.wait(&mut requests);
        }
    }

    /// After a cell merge: hands the row segments to the attached row writer,
    /// or writes them inline when none is attached.
    fn row_segments_after_merge(&self) -> Result<()> {
        if self.row_writer.lock().n_attached > 0 {
            self.request_row_segments();
            Ok(())
        } else {
            self.write_row_segments()
        }
    }

    /// Adds a table, or replaces its definition after `ALTER TABLE` (added
    /// columns read as null in older rows; dropped columns disappear).
    pub fn register_table(&self, def: Arc<TableDef>) {
        let id = def.id;
        self.state.write().tables.entry(id).or_default().def = Some(def);
        self.scan_cache.lock().remove(&id);
    }

    /// Drops a table's data (its segments go once no reader holds them).
    ///
    /// # Errors
    /// As [`Replica::merge`]: the manifest is rewritten without the table.
    pub fn drop_table(&self, table: TableId) -> Result<()> {
        let _merging = self.merge_lock.lock();
        let mut state = self.state.write();
        self.scan_cache.lock().remove(&table);
        let Some(removed) = state.tables.remove(&table) else {
            return Ok(());
        };
        state.n_delta_versions -= removed.delta.n_versions();
        let stored = self.store_manifest(&mut state);
        drop(state);
        removed.segments.iter().for_each(|segment| segment.retire());
        if let Some(rows) = &removed.rows {
            rows.retire();
        }
        // The delta is freed here, with the state lock released.
        drop(removed);
        stored
    }

    pub fn table(&self, table: TableId) -> Option<Arc<TableDef>> {
        self.state.read().tables.get(&table)?.def.clone()
    }

    pub fn tables(&self) -> Vec<Arc<TableDef>> {
        let state = self.state.read();
        state
            .tables
            .values()
            .filter_map(|t| t.def.clone())
            .collect()
    }

    /// Every write at or below the watermark is readable.
    pub fn watermark(&self) -> WriteTime {
        *self.watermark.lock()
    }

    /// The merge horizon: snapshots below it can no longer be read.
    pub fn horizon(&self) -> WriteTime {
        self.state.read().horizon
    }

    /// Whether [`Replica::open`] found a stored manifest: the replica existed
    /// before and resumes from the feed; a new one must be rebuilt from the row
    /// store first (rows written before it existed have no feed records).
    pub fn stored(&self) -> bool {
        self.stored
    }

    /// The next feed position the replica reads.
    pub fn next_position(&self) -> FeedPosition {
        self.state.read().next_position
    }

    /// Feed records applied since open (for tests and metrics).
    pub fn n_records_applied(&self) -> u64 {
        self.state.read().n_records_applied
    }

    pub fn n_delta_versions(&self) -> usize {
        self.state.read().n_delta_versions
    }

    pub fn n_segments(&self) -> usize {
        let state = self.state.read();
        state.tables.values().map(|t| t.segments.len()).sum()
    }

    /// Reads the feed from the replica's position up to `frontier`, applies
    /// it, then advances the watermark to the frontier's. Merges (inline:
    /// the cell segments are written outside the state lock) when the delta
    /// holds more than its bound, then writes row segments or leaves them to
    /// an attached row writer. The follower uses [`Replica::catch_up_chunk`]
    /// and [`Replica::advance_watermark`] instead, which move the watermark
    /// after every chunk and leave merges to the row writer thread.
    ///
    /// # Errors
    /// Storage errors reading or decoding the feed; a record that the
    /// table's row-store decomposition rejects is `Internal` (the apply path
    /// accepted it).
    pub fn catch_up(&self, view: &dyn ReadView, frontier: FeedFrontier) -> Result<CatchUp> {
        let mut outcome = CatchUp::default();
        loop {
            let chunk = self.catch_up_chunk(view, frontier.position_end)?;
            outcome.n_records_applied += chunk.n_records_applied;
            outcome.n_records_skipped += chunk.n_records_skipped;
            if self.n_delta_versions() > self.delta_versions_max {
                self.merge_cells()?;
                self.row_segments_after_merge()?;
            }
            if chunk.n_records_applied + chunk.n_records_skipped == 0 {
                break;
            }
        }
        self.advance_watermark(frontier.watermark);
        Ok(outcome)
    }

    /// Applies at most [`CATCH_UP_RECORDS_MAX`] feed records from the
    /// replica's position, below `position_end` (a frontier's: `view` must be
    /// an engine snapshot taken after that frontier). It does not move the
    /// watermark: once [`Replica::next_position`] reaches a frontier's
    /// `position_end`, the caller may [`Replica::advance_watermark`] to its
    /// watermark (C11: every write at or below it is applied then). Applied
    /// and skipped counts are zero when nothing was left below
    /// `position_end`.
    ///
    /// # Errors
    /// `FeedTruncated` when retention dropped records the replica still
    /// needs; as [`Replica::catch_up`].
    pub fn catch_up_chunk(
        &self,
        view: &dyn ReadView,
        position_end: FeedPosition,
    ) -> Result<CatchUp> {
        let mut outcome = CatchUp::default();
        let from = self.state.read().next_position;
        if from >= position_end {
            return Ok(outcome);
        }
        let floor = feed::retention_floor(view)?;
        if from < floor {
            return Err(Error::FeedTruncated {
                next: from.0,
                floor: floor.0,
            });
        }
        let records = feed::read_from(view, from, position_end, CATCH_UP_RECORDS_MAX)?;
        let mut state = self.state.write();
        if state.next_position != from {
            // A rebuild moved the replica meanwhile; the caller asks again.
            return Ok(outcome);
        }
        for record in &records {
            if self.apply(&mut state, record)? {
                outcome.n_records_applied += 1;
            } else {
                outcome.n_records_skipped += 1;
            }
            // Per record, so an error leaves no applied record behind the
            // position (a retry would apply it twice).
            state.next_position = FeedPosition(record.position.0 + 1);
        }
        Ok(outcome)
    }

    /// Moves the watermark up to `watermark` (never down) and wakes the
    /// queries waiting for it. Call it only with a frontier's watermark once
    /// every record below the frontier's `position_end` is applied.
    pub fn advance_watermark(&self, watermark: WriteTime) {
        let mut current = self.watermark.lock();
        if watermark > *current {
            *current = watermark;
            self.watermark_advanced.notify_all();
        }
    }

    /// The delta's bound ([`ColumnarOptions::delta_versions_max`](crate::ColumnarOptions)).
    pub fn delta_versions_max(&self) -> usize {
        self.delta_versions_max
    }

    fn apply(&self, state: &mut State, record: &FeedRecord) -> Result<bool> {
        if record.position < state.merged_position && record.write_time <= state.horizon {
            // Folded into a segment before a restart.
            return Ok(false);
        }
        let Some(def) = state
            .tables
            .get(&record.table())
            .and_then(|table| table.def.clone())
        else {
            return Ok(false);
        };
        let mutation = without_dropped_columns(&def, &record.mutation);
        let mut batch = WriteBatch::new();
        rows::write_mutation(&def, &mutation, record.write_time, &mut batch).map_err(|error| {
            Error::Internal(format!(
                "feed record {} does not apply to {}: {error}",
                record.position.0,
                def.qualified_name()
            ))
        })?;
        let table = state.tables.entry(def.id).or_default();
        let mut n_versions = 0;
        for op in batch.ops() {
            match op {
                BatchOp::Merge {
                    family: Family::Rows,
                    key,
                    operand,
                } => {
                    table.delta.active.push(
                        key,
                        Version {
                            position: record.position,
                            write_time: record.write_time,
                            cell: operand.clone(),
                        },
                    );
                    n_versions += 1;
                }
                other => {
                    return Err(Error::Internal(format!(
                        "row-store decomposition produced {other:?}"
                    )));
                }
            }
        }
        table.write_time_max = table.write_time_max.max(record.write_time);
        state.n_delta_versions += n_versions;
        state.n_records_applied += 1;
        Ok(true)
    }

    /// Replaces the replica's contents with the tables' cells in `view`, an
    /// engine snapshot taken inside [`feed::ChangeFeed::quiesce`] with
    /// `frontier` (so it holds exactly the records below the frontier's
    /// position, and every write at or below its watermark); the replica then
    /// follows the feed from the frontier's position.
    ///
    /// The view may also hold writes above the watermark: a cluster member
    /// applies transactions at their executeAt while its feed's watermark stays
    /// at or below DurableBefore, so a write below one already applied may
    /// still come (at a later position). The new horizon is then the highest
    /// write time in the view (the view's cells are LWW winners: older versions
    /// of their keys are gone, so no snapshot below it can be read), while the
    /// watermark stays the frontier's, and reads wait until the feed's passes
    /// the horizon: by then every write at or below it is in segments or
    /// applied from the feed, and LWW over both is the row store's answer.
    /// Snapshots below the new horizon become too old.
    ///
    /// # Errors
    /// Storage errors reading the view; `Io` writing segments or the manifest
    /// (nothing changed unless the manifest failed, as in [`Replica::merge`]).
    pub fn rebuild(&self, view: &dyn ReadView, frontier: FeedFrontier) -> Result<()> {
        let merging = self.merge_lock.lock();
        let mut state = self.state.write();
        let mut rebuilt: Vec<(TableId, Arc<Segment>)> = Vec::new();
        let mut horizon = frontier.watermark;
        for (table_id, table) in &state.tables {
            if table.def.is_none() {
                continue;
            }
            let range = KeyRange::prefix(&keys::table_prefix(*table_id));
            let mut cells: Vec<SegmentCell> = Vec::new();
            for item in view.scan(Family::Rows, &range, Direction::Forward)? {
                let (key, cell) = item?;
                let write_time = cell::CellHeader::decode(&cell)?.write_time;
                horizon = horizon.max(write_time);
                cells.push((key, write_time, cell));
            }
            if !cells.is_empty() {
                let id = state.next_segment_id + rebuilt.len() as u64;
                let segment = Segment::write(&self.dir, *table_id, id, &cells)?;
                rebuilt.push((*table_id, Arc::new(segment)));
            }
        }
        let mut retired = Vec::new();
        let mut dropped_deltas = Vec::new();
        for table in state.tables.values_mut() {
            retired.append(&mut table.segments);
            table.drop_rows();
            // Freed below, once the state lock is released.
            dropped_deltas.push(std::mem::take(&mut table.delta));
            table.write_time_max = table.write_time_max.max(horizon);
        }
        state.next_segment_id += rebuilt.len() as u64;
        for (table_id, segment) in rebuilt {
            state
                .tables
                .entry(table_id)
                .or_default()
                .segments
                .push(segment);
        }
        state.n_delta_versions = 0;
        self.scan_cache.lock().clear();
        state.horizon = horizon;
        state.resume_watermark = frontier.watermark;
        state.next_position = frontier.position_end;
        state.merged_position = frontier.position_end;
        self.store_manifest(&mut state)?;
        retired.iter().for_each(|segment| segment.retire());
        drop(state);
        drop(merging);
        drop(dropped_deltas);
        self.advance_watermark(frontier.watermark);
        self.write_row_segments()
    }

    /// Waits until the watermark reaches `snapshot`, at most `timeout`.
    ///
    /// # Errors
    /// `SnapshotTimeout` naming the watermark reached.
    pub fn wait_for_watermark(&self, snapshot: WriteTime, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut watermark = self.watermark.lock();
        while *watermark < snapshot {
            if self
                .watermark_advanced
                .wait_until(&mut watermark, deadline)
                .timed_out()
                && *watermark < snapshot
            {
                return Err(Error::SnapshotTimeout {
                    snapshot: snapshot.0,
                    watermark: watermark.0,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        Ok(())
    }

    /// Holds `snapshot`'s versions until the guard drops.
    ///
    /// # Errors
    /// `SnapshotTooOld` if a merge already folded past it.
    pub fn hold_snapshot(self: &Arc<Self>, snapshot: WriteTime) -> Result<SnapshotGuard> {
        let mut state = self.state.write();
        // A merge under way folds up to `pending_horizon`: a snapshot below
        // it would lose its versions when the merge installs.
        let horizon = state.horizon.max(state.pending_horizon);
        if snapshot < horizon {
            return Err(Error::SnapshotTooOld {
                snapshot: snapshot.0,
                horizon: horizon.0,
            });
        }
        *state.open_snapshots.entry(snapshot).or_insert(0) += 1;
        Ok(SnapshotGuard {
            replica: Arc::clone(self),
            snapshot,
        })
    }

    /// Folds delta versions at or below min(watermark, oldest open snapshot)
    /// into a new segment per table, compacts tables with too many segments,
    /// records the result in the manifest, then writes the row segments that
    /// need writing ([`Replica::merge_cells`], then
    /// [`Replica::write_row_segments`]). Returns the new horizon.
    ///
    /// # Errors
    /// As [`Replica::merge_cells`].
    pub fn merge(&self) -> Result<WriteTime> {
        let horizon = self.merge_cells()?;
        self.write_row_segments()?;
        Ok(horizon)
    }

    /// The cell half of [`Replica::merge`]: folds the delta into cell
    /// segments and stores the manifest, leaving row segments to
    /// [`Replica::write_row_segments`] (the follower's row writer thread runs
    /// that, so a long rewrite does not hold up feed catch-up).
    /// Until then reads leave the merged partitions (`dirty`) out of the old
    /// row segment, or reconcile the cells, exactly as after any merge.
    /// Returns the new horizon.
    ///
    /// # Errors
    /// `Io` / `Corruption` writing or reading segments (then nothing changed),
    /// or storing the manifest (then memory moved on and the durable state is
    /// the previous one: both are complete).
    pub fn merge_cells(&self) -> Result<WriteTime> {
        let mut merged_generations = Vec::new();
        let merged = self.merge_cells_into(&mut merged_generations);
        // The folded versions are freed with no lock held, not even the
        // merge lock: catch-up, queries and the next merge (the follower's
        // back-pressure one) go on meanwhile.
        if !merged_generations.is_empty() {
            self.observe_merge(MergePhase::Freeing);
        }
        drop(merged_generations);
        merged
    }

    /// [`Replica::merge_cells`] up to freeing: the generations it folded
    /// are left in `merged_generations`.
    fn merge_cells_into(&self, merged_generations: &mut Vec<Arc<Generation>>) -> Result<WriteTime> {
        let _merging = self.merge_lock.lock();
        let watermark = self.watermark();
        let (horizon, taken) = {
            let mut state = self.state.write();
            let oldest_snapshot = state.open_snapshots.keys().next().copied();
            let horizon = oldest_snapshot.map_or(watermark, |oldest| oldest.min(watermark));
            if horizon <= state.horizon {
                return Ok(state.horizon);
            }
            // From here no snapshot below `horizon` can be taken (C5).
            state.pending_horizon = horizon;
            // Every version at or below the horizon is applied (the
            // watermark passed it), so the sealed generations hold them all;
            // catch-up applies only versions above it meanwhile, into new
            // active generations. O(1) per table.
            let taken: Vec<Taken> = state
                .tables
                .iter_mut()
                .map(|(table_id, table)| Taken {
                    table: *table_id,
                    incarnation: table.incarnation,
                    def: table.def.clone(),
                    has_rows: table.rows.is_some(),
                    generations: table.delta.seal(),
                    segments: table.segments.clone(),
                })
                .collect();
            (horizon, taken)
        };
        let merged = self.merge_cells_to(horizon, taken, merged_generations);
        let mut state = self.state.write();
        state.pending_horizon = WriteTime(i64::MIN);
        drop(state);
        merged
    }

    /// Calls `observer` at the points where a merge works on the delta
    /// without the state lock ([`MergePhase`]); `None` removes it. For tests
    /// and instrumentation: it runs on the merging thread.
    pub fn set_merge_observer(&self, observer: Option<MergeObserver>) {
        *self.merge_observer.0.lock() = observer;
    }

    fn observe_merge(&self, phase: MergePhase) {
        let observer = self.merge_observer.0.lock().clone();
        if let Some(observer) = observer {
            observer(phase);
        }
    }

    /// [`Replica::merge_cells`] to `horizon`, under the merge lock, over the
    /// generations `taken` sealed: with no lock held, the winners at or below
    /// the horizon are folded per table (and the versions above it kept, and
    /// the partitions folded listed for tables with a row segment), and the
    /// segments are written (queries and catch-up go on); the result is
    /// installed under the write lock, O(1) per table (segments, the
    /// generations swapped for the kept versions); the manifest is stored
    /// after it. The merged generations go to `merged_generations`, for the
    /// caller to free once the merge lock is released.
    fn merge_cells_to(
        &self,
        horizon: WriteTime,
        taken: Vec<Taken>,
        merged_generations: &mut Vec<Arc<Generation>>,
    ) -> Result<WriteTime> {
        self.observe_merge(MergePhase::Folding);
        let mut folded: Vec<Folded> = Vec::with_capacity(taken.len());
        for table in taken {
            folded.push(fold_generations(table, horizon)?);
        }
        let n_writes = folded.iter().filter(|f| f.writes_segment()).count();
        let first_id = {
            let mut state = self.state.write();
            let first_id = state.next_segment_id;
            state.next_segment_id += n_writes as u64;
            first_id
        };
        // Per folded table, the new segment and the segments it replaces.
        let mut written: Vec<Option<NewSegment>> = Vec::with_capacity(folded.len());
        let mut id = first_id;
        for f in &mut folded {
            if !f.writes_segment() {
                written.push(None);
                continue;
            }
            let cells = std::mem::take(&mut f.cells);
            let compacted = compaction_inputs(&f.table.segments, !cells.is_empty());
            let outcome = if compacted.is_empty() {
                Segment::write(&self.dir, f.table.table, id, &cells)
                    .map(|segment| (segment, Vec::new()))
            } else {
                fold_segments(&self.dir, f.table.table, id, &compacted, cells)
                    .map(|segment| (segment, compacted))
            };
            match outcome {
                Ok((segment, replaced)) => {
                    let n_cells: usize = replaced.iter().map(|s| s.n_cells).sum();
                    self.n_cells_compacted
                        .fetch_add(n_cells as u64, std::sync::atomic::Ordering::Relaxed);
                    written.push(Some((Arc::new(segment), replaced)));
                }
                Err(error) => {
                    written
                        .iter()
                        .flatten()
                        .for_each(|(segment, _)| segment.retire());
                    let _ =
                        std::fs::remove_file(self.dir.join(Segment::file_name(f.table.table, id)));
                    return Err(error);
                }
            }
            id += 1;
        }
        // Only now change the in-memory state: segments are written. Nothing
        // here is proportional to the delta.
        let mut state = self.state.write();
        let mut retired = Vec::new();
        let mut n_removed = 0;
        for (f, written) in folded.iter_mut().zip(written) {
            let table = match state.tables.get_mut(&f.table.table) {
                Some(table) if table.incarnation == f.table.incarnation => table,
                // Dropped or truncated meanwhile: the rows are gone.
                _ => {
                    if let Some((segment, _)) = written {
                        segment.retire();
                    }
                    continue;
                }
            };
            if let Some((segment, replaced)) = written {
                table
                    .segments
                    .retain(|old| !replaced.iter().any(|r| Arc::ptr_eq(r, old)));
                table.segments.push(segment);
                retired.extend(replaced);
            }
            if table.rows.is_some() {
                mark_dirty(table, f.dirty.take());
            }
            let kept = std::mem::take(&mut f.kept);
            let n_kept = kept.n_versions;
            let replaced = table.delta.replace_sealed(&f.table.generations, kept);
            n_removed += replaced.iter().map(|g| g.n_versions).sum::<usize>() - n_kept;
            merged_generations.extend(replaced);
        }
        state.n_delta_versions -= n_removed;
        state.horizon = horizon;
        // The horizon never passes the watermark: every write at or below it is in.
        state.resume_watermark = horizon;
        state.merged_position = state.next_position;
        let manifest = manifest_of(&state);
        drop(state);
        // If the manifest cannot be stored it still names the old segments and
        // position, which hold everything, so a restart is exact; this process
        // keeps the new in-memory state, which is complete. The merge lock
        // keeps manifests stored in the order their states were made.
        let stored = manifest.store(&self.dir);
        if stored.is_ok() {
            self.state.write().durable_position = manifest.position;
            retired.iter().for_each(|segment| segment.retire());
        }
        // `folded` holds only further references to the merged generations:
        // the caller frees them, with no lock held.
        drop(folded);
        stored?;
        Ok(horizon)
    }

    /// Writes a row segment at the current horizon for every table whose row
    /// segment is missing, stale (the definition changed) or dirty, from the
    /// table's cell segments (which hold exactly the rows at the horizon).
    /// Runs without the state lock (catch-up and reads go on meanwhile); a
    /// segment is installed only if no merge or rebuild moved the horizon or
    /// changed the table's cell segments meanwhile (the next call rewrites
    /// it). Safe to call from any thread, concurrently with itself: every
    /// installed segment is exactly its table's rows at the current horizon.
    /// A table whose row segment cannot be written keeps none (logged; its
    /// reads reconcile the cells).
    ///
    /// # Errors
    /// None today; `Result` so callers keep propagating.
    pub fn write_row_segments(&self) -> Result<()> {
        let (horizon, work) = {
            let mut state = self.state.write();
            let horizon = state.horizon;
            let mut work = Vec::new();
            let mut next_id = state.next_segment_id;
            for (table_id, table) in &state.tables {
                let needed = table.rows_need_writing(self.row_segment_dirty_percent_max);
                if let (true, Some(def)) = (needed, &table.def) {
                    work.push((*table_id, Arc::clone(def), table.segments.clone(), next_id));
                    next_id += 1;
                }
            }
            state.next_segment_id = next_id;
            (horizon, work)
        };
        for (table_id, def, segments, id) in work {
            // A row segment is a cache of the cell segments: a table whose
            // rows cannot be written (a value outside its Arrow type, an I/O
            // error) is read from the cells, and the next merge tries again.
            let written = match self.write_row_segment(&def, &segments, horizon, id) {
                Ok(written) => Arc::new(written),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        table = def.qualified_name(),
                        "columnar: row segment not written, reads reconcile the cells"
                    );
                    let _ =
                        std::fs::remove_file(self.dir.join(RowSegment::file_name(table_id, id)));
                    continue;
                }
            };
            let mut state = self.state.write();
            let current = state.horizon;
            let installed = match state.tables.get_mut(&table_id) {
                Some(table)
                    if current == horizon
                        && table.def.as_ref().is_some_and(|d| **d == *def)
                        && table.segments.len() == segments.len()
                        && table
                            .segments
                            .iter()
                            .zip(&segments)
                            .all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    table.drop_rows();
                    table.rows = Some(Arc::clone(&written));
                    true
                }
                _ => false,
            };
            if !installed {
                written.retire();
            }
        }
        Ok(())
    }

    /// The row writer's pass: [`Replica::write_row_segments`], unless the
    /// follower trails the feed by more than `row_segment_backlog_records_max`
    /// records ([`Replica::set_feed_backlog`]). Rewriting whole tables takes
    /// seconds of CPU the follower needs while it is behind (on two cores
    /// the rewrites after every merge starved it during a load); meanwhile
    /// reads leave the partitions merged since the old row segment out of it
    /// and reconcile them from the cells (exact, slower), and a table with
    /// no row segment yet is read from the cells. The follower asks for a
    /// pass once it is back within the bound. Returns whether it wrote.
    ///
    /// # Errors
    /// As [`Replica::write_row_segments`].
    pub fn write_row_segments_unless_behind(&self) -> Result<bool> {
        if self.feed_backlog() > self.row_segment_backlog_records_max {
            self.n_row_segment_passes_deferred
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        self.write_row_segments()?;
        Ok(true)
    }

    /// Records how many feed records the follower trails the feed by (the
    /// newest frontier's end less [`Replica::next_position`]).
    pub fn set_feed_backlog(&self, records: u64) {
        self.feed_backlog
            .store(records, std::sync::atomic::Ordering::Relaxed);
    }

    /// The backlog the follower last recorded ([`Replica::set_feed_backlog`]).
    pub fn feed_backlog(&self) -> u64 {
        self.feed_backlog.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the follower trails the feed by more than
    /// `row_segment_backlog_records_max` records.
    pub fn behind_for_row_segments(&self) -> bool {
        self.feed_backlog() > self.row_segment_backlog_records_max
    }

    /// Row-segment passes put off since open because the follower was
    /// behind (for tests and metrics).
    pub fn n_row_segment_passes_deferred(&self) -> u64 {
        self.n_row_segment_passes_deferred
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the follower backlog past which row-segment rewrites wait (see
    /// [`ROW_SEGMENT_BACKLOG_RECORDS_MAX_DEFAULT`]).
    pub fn set_row_segment_backlog_records_max(&mut self, records: u64) {
        self.row_segment_backlog_records_max = records;
    }

    /// Materialises `def`'s rows at `horizon` from its cell segments,
    /// streaming: the segments are merged in key order and converted a
    /// chunk of whole partitions at a time (about
    /// [`ROW_SEGMENT_WRITE_CHUNK_BYTES`] of cells; a larger partition is one
    /// chunk), so memory does not grow with the table.
    fn write_row_segment(
        &self,
        def: &Arc<TableDef>,
        segments: &[Arc<Segment>],
        horizon: WriteTime,
        id: u64,
    ) -> Result<RowSegment> {
        let mut merged = MergedCells::open(segments)?;
        let mut writer = RowSegment::writer(&self.dir, Arc::clone(def), id, horizon)?;
        let mut chunk: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut chunk_bytes = 0;
        let mut partition: Option<Vec<u8>> = None;
        loop {
            let next = merged.next()?;
            let new_partition = match &next {
                Some((key, _)) => !partition.as_ref().is_some_and(|p| key.starts_with(p)),
                None => true,
            };
            if new_partition {
                if next.is_none() || chunk_bytes >= self.row_segment_write_chunk_bytes {
                    let view = CellView {
                        cells: std::mem::take(&mut chunk),
                    };
                    write_rows(&view, def, horizon, &mut writer)?;
                    chunk_bytes = 0;
                }
                if let Some((key, _)) = &next {
                    partition = Some(partition_prefix(def, key)?);
                }
            }
            let Some((key, cell)) = next else {
                break;
            };
            chunk_bytes += key.len() + cell.len() + CELL_ENTRY_OVERHEAD_BYTES;
            chunk.insert(key, cell);
        }
        writer.finish()
    }

    /// The feed position a restart resumes from: the node may drop feed
    /// records before it (`feed::truncate_before`).
    pub fn durable_position(&self) -> FeedPosition {
        self.state.read().durable_position
    }

    fn store_manifest(&self, state: &mut State) -> Result<()> {
        let manifest = manifest_of(state);
        manifest.store(&self.dir)?;
        state.durable_position = manifest.position;
        Ok(())
    }

    /// Sets when a merge rewrites a row segment (see
    /// [`ROW_SEGMENT_DIRTY_PERCENT_MAX_DEFAULT`]).
    pub fn set_row_segment_dirty_percent_max(&mut self, percent: usize) {
        self.row_segment_dirty_percent_max = percent;
    }

    /// Sets how many bytes of cells a row-segment write converts at a time
    /// (see [`ROW_SEGMENT_WRITE_CHUNK_BYTES`]).
    pub fn set_row_segment_write_chunk_bytes(&mut self, bytes: usize) {
        self.row_segment_write_chunk_bytes = bytes;
    }

    /// Sets the memory the scan cache may hold (whole-table scans kept as
    /// Arrow for later snapshots that read the same rows).
    pub fn set_scan_cache_bytes_max(&mut self, bytes: usize) {
        self.scan_cache_bytes_max = bytes;
    }

    /// Sets the memory row segments may hold decoded (see
    /// [`ROW_SEGMENT_DECODED_BYTES_MAX_DEFAULT`]).
    pub fn set_row_segment_decoded_bytes_max(&mut self, bytes: usize) {
        self.decoded_memory = Arc::new(crate::row_segment::DecodedMemory::new(bytes));
    }

    /// Bytes of row segments held decoded now.
    pub fn row_segment_decoded_bytes(&self) -> usize {
        self.decoded_memory.bytes_held()
    }

    /// `segment`'s rows as Arrow batches held in memory, decoded on first
    /// use, when they fit the budget (`None` otherwise: the scan reads the
    /// Parquet file). Takes no replica lock: the first decode of a large
    /// segment takes seconds and must not hold up catch-up.
    ///
    /// # Errors
    /// As [`RowSegment::decoded`].
    pub fn row_segment_batches(
        &self,
        segment: &RowSegment,
    ) -> Result<Option<Arc<Vec<arrow::array::RecordBatch>>>> {
        segment.decoded(&self.decoded_memory)
    }

    /// Full scans answered from the scan cache since open (for tests and
    /// metrics).
    pub fn n_scan_cache_hits(&self) -> u64 {
        self.n_scan_cache_hits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Full scans read through a row segment since open (for tests and
    /// metrics).
    pub fn n_row_segment_scans(&self) -> u64 {
        self.n_row_segment_scans
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cells of the segments compactions rewrote since open (for tests and
    /// metrics).
    pub fn n_cells_compacted(&self) -> u64 {
        self.n_cells_compacted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `table` has a row segment written for its current definition.
    pub fn has_row_segment(&self, table: TableId) -> bool {
        let state = self.state.read();
        state
            .tables
            .get(&table)
            .is_some_and(|t| match (&t.def, &t.rows) {
                (Some(def), Some(rows)) => **def == *rows.def,
                _ => false,
            })
    }

    /// Every live row of `table` at `snapshot` as one batch of
    /// [`crate::sql::table_schema`], from the scan cache when a cached scan
    /// is exact for `snapshot` (see [`CachedScan`]), otherwise read (calling
    /// `charge` as [`Replica::read_within`] does) and cached.
    ///
    /// # Errors
    /// As [`Replica::read_within`]; as [`crate::sql::to_record_batch`].
    pub fn read_all_batch(
        &self,
        table: TableId,
        snapshot: WriteTime,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<RecordBatch> {
        let (def, write_time_max) = {
            let state = self.state.read();
            let (table_state, def) = state.table_at(table, snapshot)?;
            (def, table_state.write_time_max)
        };
        if let Some(cached) = self.scan_cache.lock().get(&table) {
            let exact = Arc::ptr_eq(&cached.def, &def)
                && cached.snapshot <= snapshot
                && write_time_max <= cached.snapshot
                && snapshot.seconds() < cached.next_expiry_seconds;
            if exact {
                self.n_scan_cache_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(cached.batch.clone());
            }
        }
        let (def, view) = self.view_at(table, snapshot, &PartitionFilter::All, charge)?;
        let next_expiry_seconds = view.next_expiry_after(snapshot.seconds())?;
        let partitions = scan_all(&view, &def, snapshot.seconds())?;
        drop(view);
        let batch = crate::sql::to_record_batch(&def, &partitions)?;
        let bytes = batch.get_array_memory_size();
        if bytes <= self.scan_cache_bytes_max {
            let mut cache = self.scan_cache.lock();
            cache.remove(&table);
            let held: usize = cache
                .values()
                .map(|c| c.batch.get_array_memory_size())
                .sum();
            if held + bytes > self.scan_cache_bytes_max {
                cache.clear();
            }
            cache.insert(
                table,
                CachedScan {
                    def,
                    snapshot,
                    next_expiry_seconds,
                    batch: batch.clone(),
                },
            );
        }
        Ok(batch)
    }

    /// The live partitions of `table` at `snapshot`, as the row store returns
    /// them, with expiry judged at the snapshot's second.
    ///
    /// # Errors
    /// `UnknownTable`; `SnapshotTooOld` below the horizon; storage errors.
    pub fn read(
        &self,
        table: TableId,
        snapshot: WriteTime,
        filter: &PartitionFilter,
    ) -> Result<(Arc<TableDef>, Vec<Partition>)> {
        self.read_within(table, snapshot, filter, &mut |_| Ok(()))
    }

    /// [`Replica::read`], calling `charge(bytes)` for every cell it collects
    /// before keeping it, so a memory budget can stop the read early (the
    /// query's memory pool returns `ResourcesExhausted`) instead of letting it
    /// grow without bound.
    ///
    /// # Errors
    /// As [`Replica::read`], and whatever `charge` returns.
    pub fn read_within(
        &self,
        table: TableId,
        snapshot: WriteTime,
        filter: &PartitionFilter,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<(Arc<TableDef>, Vec<Partition>)> {
        let (def, view) = self.view_at(table, snapshot, filter, charge)?;
        let now_seconds = snapshot.seconds();
        let partitions = match filter {
            PartitionFilter::Key(key) => rows::read_partition(
                &view,
                &def,
                key,
                &Slice::all(),
                ReadOptions::at(now_seconds),
            )?
            .into_iter()
            .collect(),
            PartitionFilter::All => scan_all(&view, &def, now_seconds)?,
        };
        Ok((def, partitions))
    }

    /// A full scan of `table` at `snapshot` through its row segment, or
    /// `None` when the table has no usable row segment (none written yet, or
    /// the definition changed since): then read with
    /// [`Replica::read_all_batch`]. `charge` is called for the cells of the
    /// reconciled partitions, as in [`Replica::read_within`].
    ///
    /// # Errors
    /// As [`Replica::read_within`]; `Io` / `Corruption` reading segments.
    pub fn read_rows_scan(
        &self,
        table: TableId,
        snapshot: WriteTime,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Option<RowsScan>> {
        let state = self.state.read();
        let (table_state, def) = state.table_at(table, snapshot)?;
        let Some(segment) = table_state.rows.clone() else {
            return Ok(None);
        };
        if *segment.def != *def || segment.horizon > snapshot {
            return Ok(None);
        }
        let mut touched = table_state.dirty.clone();
        delta_partitions(table_state, &def, snapshot, &mut touched)?;
        touched.extend(segment.expiring_partitions(snapshot.seconds())?);
        let mut reconciled = Vec::new();
        if !touched.is_empty() {
            let mut winners: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for cells in &table_state.segments {
                cells.read_prefixes(&touched, &mut |key, cell| {
                    charge_new(&winners, key, cell, charge)?;
                    offer(&mut winners, key, cell)
                })?;
            }
            for prefix in &touched {
                for generation in table_state.delta.generations() {
                    let range = (Bound::Included(prefix.clone()), Bound::Unbounded);
                    for (key, versions) in generation.range(range) {
                        if !key.starts_with(prefix) {
                            break;
                        }
                        for version in versions.iter().filter(|v| v.write_time <= snapshot) {
                            charge_new(&winners, key, &version.cell, charge)?;
                            offer(&mut winners, key, &version.cell)?;
                        }
                    }
                }
            }
            let view = CellView { cells: winners };
            reconciled = scan_all(&view, &def, snapshot.seconds())?;
        }
        self.n_row_segment_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(RowsScan {
            def,
            segment,
            excluded: touched.into_iter().collect(),
            reconciled,
            decoded: None,
        }))
    }

    fn view_at(
        &self,
        table: TableId,
        snapshot: WriteTime,
        filter: &PartitionFilter,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<(Arc<TableDef>, CellView)> {
        let state = self.state.read();
        let (table_state, def) = state.table_at(table, snapshot)?;
        let range = match filter {
            PartitionFilter::All => KeyRange::prefix(&keys::table_prefix(table)),
            PartitionFilter::Key(key) => {
                KeyRange::prefix(&keys::encode_partition(&def, key)?.prefix)
            }
        };
        let (start, end) = (bound_bytes(&range.start), bound_bytes(&range.end));
        let mut winners: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for segment in &table_state.segments {
            segment.read(start, end, &mut |key, cell| {
                charge_new(&winners, key, cell, charge)?;
                offer(&mut winners, key, cell)
            })?;
        }
        let delta_range = (range.start.clone(), range.end.clone());
        for (key, versions) in table_state.delta.range(delta_range) {
            for version in versions.iter().filter(|v| v.write_time <= snapshot) {
                charge_new(&winners, key, &version.cell, charge)?;
                offer(&mut winners, key, &version.cell)?;
            }
        }
        Ok((def, CellView { cells: winners }))
    }
}

/// Appends the live rows of `view` (whole partitions of `def`) at
/// `horizon` to a row segment.
fn write_rows(
    view: &CellView,
    def: &Arc<TableDef>,
    horizon: WriteTime,
    writer: &mut crate::row_segment::RowSegmentWriter,
) -> Result<()> {
    if view.cells.is_empty() {
        return Ok(());
    }
    let now_seconds = horizon.seconds();
    let expiries = view.partition_expiries(def, now_seconds)?;
    let mut cursor = None;
    loop {
        let page = rows::scan_token_range(
            view,
            def,
            &TokenRange::full_ring(),
            cursor.as_ref(),
            SCAN_PAGE_ROWS,
            now_seconds,
        )?;
        if !page.partitions.is_empty() {
            let batch = crate::sql::to_record_batch(def, &page.partitions)?;
            let prefixes: Vec<Vec<u8>> = page
                .partitions
                .iter()
                .map(|p| keys::encode_partition(def, &p.key).map(|e| e.prefix))
                .collect::<concord_storage::Result<_>>()?;
            let mut row_prefixes: Vec<&[u8]> = Vec::with_capacity(batch.num_rows());
            let mut row_expiries = Vec::with_capacity(batch.num_rows());
            for (partition, prefix) in page.partitions.iter().zip(&prefixes) {
                let expiry = expiries.get(prefix).copied();
                for _ in 0..partition.rows.len().max(1) {
                    row_prefixes.push(prefix);
                    row_expiries.push(expiry);
                }
            }
            writer.append(&batch, &row_prefixes, &row_expiries)?;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// The cells of a table's cell segments in key order, one winner per key
/// (the last-write-wins rule across segments): a k-way merge holding one
/// batch per segment.
struct MergedCells {
    sources: Vec<crate::segment::SegmentCells>,
    heads: Vec<Option<(Vec<u8>, Vec<u8>)>>,
}

impl MergedCells {
    fn open(segments: &[Arc<Segment>]) -> Result<MergedCells> {
        let mut sources = Vec::with_capacity(segments.len());
        let mut heads = Vec::with_capacity(segments.len());
        for segment in segments {
            let mut cells = segment.cells()?;
            heads.push(cells.next_cell()?);
            sources.push(cells);
        }
        Ok(MergedCells { sources, heads })
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut least: Option<usize> = None;
        for (idx, head) in self.heads.iter().enumerate() {
            if let Some((key, _)) = head
                && least.is_none_or(|l| self.heads[l].as_ref().is_some_and(|(k, _)| key < k))
            {
                least = Some(idx);
            }
        }
        let Some(least) = least else {
            return Ok(None);
        };
        let Some((key, mut cell)) = self.heads[least].take() else {
            return Ok(None);
        };
        self.heads[least] = self.sources[least].next_cell()?;
        for idx in 0..self.heads.len() {
            while let Some((other, other_cell)) = &self.heads[idx]
                && *other == key
            {
                if wins(other_cell, &cell)? {
                    cell = other_cell.clone();
                }
                self.heads[idx] = self.sources[idx].next_cell()?;
            }
        }
        Ok(Some((key, cell)))
    }
}

/// The manifest describing `state`: resume from the oldest position still
/// only in the delta.
fn manifest_of(state: &State) -> Manifest {
    let position = state
        .tables
        .values()
        .filter_map(|table| table.delta.position_min())
        .min()
        .unwrap_or(state.next_position);
    Manifest {
        position,
        horizon: state.horizon,
        merged_position: state.merged_position,
        watermark: state.resume_watermark,
        segments: state
            .tables
            .iter()
            .flat_map(|(table, t)| t.segments.iter().map(|s| (*table, s.id, s.n_cells)))
            .collect(),
    }
}

/// The segments a merge folds its new cells into (none: it writes a new
/// segment): when the table would pass [`SEGMENTS_PER_TABLE_MAX`], every
/// segment but the [`SEGMENTS_KEPT_BY_COMPACTION`] largest. Cells are
/// reconciled last-write-wins across segments, so any subset may be
/// compacted; leaving the large ones alone keeps a growing table from being
/// rewritten whole at every compaction (at SF 1, merges of a million
/// versions each rewrote lineitem's ~100 M cells every 8th merge).
fn compaction_inputs(segments: &[Arc<Segment>], has_new_cells: bool) -> Vec<Arc<Segment>> {
    if segments.len() + usize::from(has_new_cells) <= SEGMENTS_PER_TABLE_MAX {
        return Vec::new();
    }
    let mut by_size: Vec<Arc<Segment>> = segments.to_vec();
    by_size.sort_by_key(|segment| std::cmp::Reverse(segment.n_cells));
    by_size.split_off(SEGMENTS_KEPT_BY_COMPACTION.min(by_size.len()))
}

/// The partition prefix of a row-store key of `def`.
fn partition_prefix(def: &TableDef, key: &[u8]) -> Result<Vec<u8>> {
    Ok(keys::decode_partition(def, key)?.0.prefix)
}

/// Adds to `out` the partitions of `table`'s delta keys that have a version
/// at or below `at`.
fn delta_partitions(
    table: &TableState,
    def: &TableDef,
    at: WriteTime,
    out: &mut BTreeSet<Vec<u8>>,
) -> Result<()> {
    for generation in table.delta.generations() {
        let mut last: Option<Vec<u8>> = None;
        for (key, versions) in &generation.versions {
            if last.as_ref().is_some_and(|prefix| key.starts_with(prefix)) {
                continue;
            }
            if versions.iter().any(|version| version.write_time <= at) {
                let prefix = partition_prefix(def, key)?;
                out.insert(prefix.clone());
                last = Some(prefix);
            }
        }
    }
    Ok(())
}

/// Records in `table.dirty` the partitions a merge folded into cell
/// segments (`folded`, listed without the state lock; `None` when the merge
/// did not list them because the table had no row segment when it started:
/// then the row segment, written meanwhile, is dropped). Drops the row
/// segment when they pass [`ROW_SEGMENT_DIRTY_PARTITIONS_MAX`]. At most that
/// many partitions are inserted under the lock.
fn mark_dirty(table: &mut TableState, folded: Option<BTreeSet<Vec<u8>>>) {
    let Some(folded) = folded.filter(|_| table.def.is_some()) else {
        table.drop_rows();
        return;
    };
    if folded.len() > ROW_SEGMENT_DIRTY_PARTITIONS_MAX {
        table.drop_rows();
        return;
    }
    table.dirty.extend(folded);
    if table.dirty.len() > ROW_SEGMENT_DIRTY_PARTITIONS_MAX {
        table.drop_rows();
    }
}

/// Folds a table's sealed delta generations (oldest first) to `horizon`,
/// with no lock held: per key, the last-write-wins winner among the
/// versions at or below it (sorted by key, as a segment is written), the
/// versions above it (kept in the delta), and, given the table's definition,
/// the partitions with a folded version (the row segment's new `dirty`).
fn fold_generations(table: Taken, horizon: WriteTime) -> Result<Folded> {
    let dirty_def = table.def.as_ref().filter(|_| table.has_rows);
    let generations = &table.generations;
    let mut cells: Vec<SegmentCell> = Vec::new();
    let mut kept = Generation::default();
    let mut dirty = dirty_def.map(|_| BTreeSet::new());
    let mut last_prefix: Option<Vec<u8>> = None;
    let mut sources: Vec<_> = generations
        .iter()
        .map(|generation| generation.versions.iter().peekable())
        .collect();
    loop {
        // The least key among the generations' heads (a k-way merge; k is
        // small: the versions a merge kept, and the generations sealed since).
        let mut least: Option<&Vec<u8>> = None;
        for source in &mut sources {
            if let Some((key, _)) = source.peek()
                && least.is_none_or(|l| *key < l)
            {
                least = Some(*key);
            }
        }
        let Some(key) = least else {
            break;
        };
        let mut winner: Option<&Version> = None;
        for source in &mut sources {
            let Some((_, versions)) = source.next_if(|(k, _)| *k == key) else {
                continue;
            };
            for version in versions {
                if version.write_time > horizon {
                    kept.push(key, version.clone());
                    continue;
                }
                winner = Some(match winner {
                    Some(current) if !wins(&version.cell, &current.cell)? => current,
                    _ => version,
                });
            }
        }
        let Some(winner) = winner else {
            continue;
        };
        cells.push((key.clone(), winner.write_time, winner.cell.clone()));
        if let (Some(def), Some(dirty)) = (dirty_def, dirty.as_mut())
            && !last_prefix
                .as_ref()
                .is_some_and(|prefix| key.starts_with(prefix))
        {
            let prefix = partition_prefix(def, key)?;
            dirty.insert(prefix.clone());
            last_prefix = Some(prefix);
        }
    }
    drop(sources);
    Ok(Folded {
        table,
        cells,
        kept,
        dirty,
    })
}

/// A full scan through a row segment: the segment's rows less the
/// `excluded` partitions, plus `reconciled`, those partitions' rows at the
/// snapshot (read from the cells).
#[derive(Debug)]
pub struct RowsScan {
    pub def: Arc<TableDef>,
    pub segment: Arc<RowSegment>,
    /// Sorted partition prefixes whose rows the segment must not supply.
    pub excluded: Vec<Vec<u8>>,
    pub reconciled: Vec<Partition>,
    /// The segment's rows held decoded (`Replica::row_segment_batches`), to
    /// scan instead of the file; `None`: scan the file.
    pub decoded: Option<Arc<Vec<arrow::array::RecordBatch>>>,
}

/// Every live partition of `def` in `view`.
fn scan_all(view: &CellView, def: &TableDef, now_seconds: i64) -> Result<Vec<Partition>> {
    let mut partitions = Vec::new();
    let mut cursor = None;
    loop {
        let page = rows::scan_token_range(
            view,
            def,
            &TokenRange::full_ring(),
            cursor.as_ref(),
            SCAN_PAGE_ROWS,
            now_seconds,
        )?;
        append_page(&mut partitions, page.partitions);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(partitions)
}

/// Deletes segment files the manifest does not name: written by a merge that
/// crashed before its manifest was stored, or retired while a reader held them.
fn remove_orphan_segments(dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: std::collections::BTreeSet<String> = manifest
        .segments
        .iter()
        .map(|(table, id, _)| Segment::file_name(*table, *id))
        .collect();
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        context: format!("list replica directory {}", dir.display()),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan_cells =
            name.starts_with("segment-") && name.ends_with(".parquet") && !live.contains(&name);
        // Row segments are rewritten by the first merge after open.
        let row_segment = name.starts_with("rows-") && name.ends_with(".parquet");
        if orphan_cells || row_segment {
            std::fs::remove_file(entry.path()).map_err(|source| Error::Io {
                context: format!("remove orphan segment {name}"),
                source,
            })?;
        }
    }
    Ok(())
}

fn bound_bytes(bound: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match bound {
        Bound::Included(bytes) | Bound::Excluded(bytes) => Some(bytes),
        Bound::Unbounded => None,
    }
}

/// Appends a scan page to `partitions`: a page may end inside a partition,
/// and the next page continues it.
pub fn append_page(partitions: &mut Vec<Partition>, page: Vec<Partition>) {
    for partition in page {
        match partitions.last_mut() {
            Some(last) if last.key == partition.key && last.token == partition.token => {
                last.rows.extend(partition.rows);
                if last.static_row.is_none() {
                    last.static_row = partition.static_row;
                }
            }
            _ => partitions.push(partition),
        }
    }
}

/// Charges a cell the view is about to hold for the first time (a key's
/// replacement winner reuses its slot, roughly).
fn charge_new(
    winners: &BTreeMap<Vec<u8>, Vec<u8>>,
    key: &[u8],
    cell: &[u8],
    charge: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    if winners.contains_key(key) {
        return Ok(());
    }
    // Key, value and the map's per-entry overhead.
    charge(key.len() + cell.len() + CELL_ENTRY_OVERHEAD_BYTES)
}

fn wins(candidate: &[u8], current: &[u8]) -> Result<bool> {
    Ok(cell::reconcile(candidate, current)? == std::cmp::Ordering::Greater)
}

fn offer(winners: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], cell: &[u8]) -> Result<()> {
    match winners.get_mut(key) {
        Some(current) => {
            if wins(cell, current)? {
                *current = cell.to_vec();
            }
        }
        None => {
            winners.insert(key.to_vec(), cell.to_vec());
        }
    }
    Ok(())
}

/// Compacts `segments` and `cells` (sorted, one per key) into segment `id`,
/// streaming: a k-way merge of the segments with the new cells, written a
/// row group at a time.
fn fold_segments(
    dir: &Path,
    table: TableId,
    id: u64,
    segments: &[Arc<Segment>],
    cells: Vec<SegmentCell>,
) -> Result<Segment> {
    let mut merged = MergedCells::open(segments)?;
    let mut writer = crate::segment::SegmentWriter::create(dir, table, id)?;
    let mut new_cells = cells.into_iter().peekable();
    let mut old = merged.next()?;
    loop {
        let take_new = match (&old, new_cells.peek()) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some((old_key, _)), Some((new_key, _, _))) => new_key <= old_key,
        };
        if take_new {
            let Some((key, _, mut cell)) = new_cells.next() else {
                break;
            };
            if let Some((old_key, old_cell)) = &old
                && *old_key == key
            {
                if wins(old_cell, &cell)? {
                    cell = old_cell.clone();
                }
                old = merged.next()?;
            }
            let write_time = cell::CellHeader::decode(&cell)?.write_time;
            writer.append(&key, write_time, &cell)?;
        } else if let Some((key, cell)) = old.take() {
            let write_time = cell::CellHeader::decode(&cell)?.write_time;
            writer.append(&key, write_time, &cell)?;
            old = merged.next()?;
        }
    }
    writer.finish()
}

/// Cells of dropped columns are left out: the record was valid when applied,
/// the column's data must not reappear.
fn without_dropped_columns(
    def: &TableDef,
    mutation: &concord_storage::rows::Mutation,
) -> concord_storage::rows::Mutation {
    let mut kept = mutation.clone();
    for op in &mut kept.ops {
        if let RowOp::Upsert { cells, .. } = op {
            cells.retain(|(column, _)| def.column_by_id(*column).is_some());
        }
    }
    kept
}

/// The row family as the replica holds it at one snapshot: one winning cell
/// per key.
#[derive(Debug)]
pub struct CellView {
    cells: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl CellView {
    /// Per partition prefix, the earliest expiry (seconds) after
    /// `now_seconds` among its cells; partitions with none are left out.
    ///
    /// # Errors
    /// `Corruption` for a cell or key that does not decode.
    fn partition_expiries(
        &self,
        def: &TableDef,
        now_seconds: i64,
    ) -> Result<BTreeMap<Vec<u8>, i64>> {
        let mut out: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut current: Option<Vec<u8>> = None;
        for (key, cell) in &self.cells {
            let Some(expiry) = cell::CellHeader::decode(cell)?.expiry else {
                continue;
            };
            if expiry.expiry_seconds <= now_seconds {
                continue;
            }
            let prefix = match &current {
                Some(prefix) if key.starts_with(prefix) => prefix.clone(),
                _ => {
                    let prefix = partition_prefix(def, key)?;
                    current = Some(prefix.clone());
                    prefix
                }
            };
            let slot = out.entry(prefix).or_insert(i64::MAX);
            *slot = (*slot).min(expiry.expiry_seconds);
        }
        Ok(out)
    }

    /// The earliest expiry (seconds) after `seconds` among the view's cells;
    /// `i64::MAX` for none.
    ///
    /// # Errors
    /// `Corruption` for a cell that does not decode.
    fn next_expiry_after(&self, seconds: i64) -> Result<i64> {
        let mut next = i64::MAX;
        for cell in self.cells.values() {
            if let Some(expiry) = cell::CellHeader::decode(cell)?.expiry
                && expiry.expiry_seconds > seconds
            {
                next = next.min(expiry.expiry_seconds);
            }
        }
        Ok(next)
    }
}

impl ReadView for CellView {
    fn get(&self, family: Family, key: &[u8]) -> concord_storage::Result<Option<Vec<u8>>> {
        Ok(match family {
            Family::Rows => self.cells.get(key).cloned(),
            _ => None,
        })
    }

    fn scan(
        &self,
        family: Family,
        range: &KeyRange,
        direction: Direction,
    ) -> concord_storage::Result<ScanIter<'_>> {
        if family != Family::Rows {
            return Ok(Box::new(std::iter::empty()));
        }
        let bounds = (range.start.clone(), range.end.clone());
        if let (
            Bound::Included(start) | Bound::Excluded(start),
            Bound::Included(end) | Bound::Excluded(end),
        ) = (&bounds.0, &bounds.1)
        {
            // BTreeMap::range panics on an inverted range.
            if start > end
                || (start == end
                    && !(matches!(bounds.0, Bound::Included(_))
                        && matches!(bounds.1, Bound::Included(_))))
            {
                return Ok(Box::new(std::iter::empty()));
            }
        }
        let items = self
            .cells
            .range::<Vec<u8>, _>(bounds)
            .map(|(key, value)| Ok::<KeyValue, _>((key.clone(), value.clone())));
        Ok(match direction {
            Direction::Forward => Box::new(items),
            Direction::Reverse => Box::new(items.rev()),
        })
    }
}
