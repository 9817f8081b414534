//! The storage engine interface: ordered key/value families with atomic
//! batches across families, consistent snapshots, and the two hooks the row
//! store needs from an LSM (a merge operator and a compaction filter).
//!
//! Architecture invariant: nothing in this module names RocksDB. An engine is
//! RocksDB (`concord-storage-rocksdb`) or [`crate::memory::MemoryEngine`]; both
//! pass the conformance suite in [`crate::testing::conformance`].
//!
//! ```text
//!   WriteBatch ──write(batch, Durability)──► Engine ──snapshot()──► ReadView
//!     put / merge / delete / delete_range        │                   get / scan
//!     across families, applied atomically        └─ merge operator, compaction filter
//! ```

use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::Result;

/// A column family: an independent ordered key space inside one engine.
/// The set is fixed so every engine opens the same families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Schema and node metadata.
    Meta,
    /// Table rows (cells, row markers, tombstones); see [`crate::rows`].
    Rows,
    /// Transaction command state, written by the transaction layer.
    Txn,
    /// The change feed that the columnar replica consumes.
    Feed,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 4] = [Family::Meta, Family::Rows, Family::Txn, Family::Feed];

    /// The family's stable on-disk name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Meta => "meta",
            Family::Rows => "rows",
            Family::Txn => "txn",
            Family::Feed => "feed",
        }
    }
}

/// How durable a write must be before `Engine::write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The write-ahead log is synced to disk before returning.
    Sync,
    /// The write is in the log buffer; a crash of the process or machine may
    /// lose it until the next synced write or `sync_wal`.
    Buffered,
}

/// The largest batch, in bytes of keys and values, that an engine accepts.
pub const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest key, in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        family: Family,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Combined with the existing value by the family's merge operator.
    Merge {
        family: Family,
        key: Vec<u8>,
        operand: Vec<u8>,
    },
    Delete {
        family: Family,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        family: Family,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// An atomic group of writes across families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    size_bytes: usize,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.size_bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { family, key, value });
    }

    pub fn merge(&mut self, family: Family, key: Vec<u8>, operand: Vec<u8>) {
        self.size_bytes += key.len() + operand.len();
        self.ops.push(BatchOp::Merge {
            family,
            key,
            operand,
        });
    }

    pub fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.size_bytes += key.len();
        self.ops.push(BatchOp::Delete { family, key });
    }

    pub fn delete_range(&mut self, family: Family, start: Vec<u8>, end: Vec<u8>) {
        self.size_bytes += start.len() + end.len();
        self.ops.push(BatchOp::DeleteRange { family, start, end });
    }

    /// Appends every operation of `other`, in order.
    pub fn extend(&mut self, other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values in the batch.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Checks the named limits; engines call this before applying.
    ///
    /// # Errors
    /// `LimitExceeded` when the batch or a key is too large.
    pub fn check_limits(&self) -> Result<()> {
        if self.size_bytes > WRITE_BATCH_BYTES_MAX {
            return Err(crate::Error::LimitExceeded {
                what: "write batch".into(),
                limit: "WRITE_BATCH_BYTES_MAX",
                actual: self.size_bytes,
                max: WRITE_BATCH_BYTES_MAX,
            });
        }
        for op in &self.ops {
            let key_len = match op {
                BatchOp::Put { key, .. }
                | BatchOp::Merge { key, .. }
                | BatchOp::Delete { key, .. } => key.len(),
                BatchOp::DeleteRange { start, end, .. } => start.len().max(end.len()),
            };
            if key_len > KEY_BYTES_MAX {
                return Err(crate::Error::LimitExceeded {
                    what: "key".into(),
                    limit: "KEY_BYTES_MAX",
                    actual: key_len,
                    max: KEY_BYTES_MAX,
                });
            }
        }
        Ok(())
    }
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// A key range for scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key of the family.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        let end = match prefix_successor(prefix) {
            Some(successor) => Bound::Excluded(successor),
            None => Bound::Unbounded,
        };
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end,
        }
    }

    /// `[start, end)`.
    pub fn half_open(start: Vec<u8>, end: Vec<u8>) -> KeyRange {
        KeyRange {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    /// Returns true if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(start) => key >= start.as_slice(),
            Bound::Excluded(start) => key > start.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(end) => key <= end.as_slice(),
            Bound::Excluded(end) => key < end.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (the prefix is all 0xFF).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last != 0xFF {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// A key/value pair returned by a scan.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An iterator over a scan; items are errors when the engine fails mid-scan.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<KeyValue>> + 'a>;

/// Reads: implemented by an engine (the latest state) and by its snapshots
/// (a fixed state). A scan sees one consistent state from start to end.
pub trait ReadView {
    /// Returns the value of `key`, merge operands applied.
    ///
    /// # Errors
    /// `Engine` when the engine fails, `Corruption` on undecodable data.
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Iterates over the keys of `range` in `direction`.
    ///
    /// # Errors
    /// `Engine` when the engine fails to start the scan.
    fn scan(&self, family: Family, range: &KeyRange, direction: Direction) -> Result<ScanIter<'_>>;
}

/// A storage engine.
pub trait Engine: ReadView + Send + Sync + 'static {
    /// A consistent read-only view of the engine at one point in time.
    type Snapshot<'a>: ReadView
    where
        Self: 'a;

    /// Takes a snapshot: later writes are invisible to it.
    fn snapshot(&self) -> Self::Snapshot<'_>;

    /// Applies `batch` atomically: all of it or none of it is visible and
    /// durable.
    ///
    /// # Errors
    /// `LimitExceeded` for an oversized batch; `Engine` on I/O failure, in
    /// which case none of the batch was applied.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// Makes every buffered write durable.
    ///
    /// # Errors
    /// `Engine` on I/O failure.
    fn sync_wal(&self) -> Result<()>;

    /// Flushes in-memory state to durable files (a no-op in memory).
    ///
    /// # Errors
    /// `Engine` on I/O failure.
    fn flush(&self) -> Result<()>;

    /// Compacts all of `family`, running its compaction filter over every
    /// entry as a full compaction.
    ///
    /// # Errors
    /// `Engine` on I/O failure.
    fn compact(&self, family: Family) -> Result<()>;

    /// Approximate count of stored entries in `family`, including entries the
    /// compaction filter has not yet seen (for tests and metrics).
    ///
    /// # Errors
    /// `Engine` on failure.
    fn raw_entry_count(&self, family: Family) -> Result<u64>;
}

/// Combines a key's existing value with merge operands, oldest first.
/// It must be associative: merging operands pairwise in any grouping gives
/// the same result, because an LSM merges partial runs.
pub trait MergeOperator: Send + Sync + 'static {
    /// A stable name; RocksDB refuses to open a family with a different one.
    fn name(&self) -> &'static str;

    /// Returns the merged value, or `None` when the inputs do not decode (the
    /// engine reports corruption).
    fn merge(&self, key: &[u8], existing: Option<&[u8]>, operands: &[&[u8]]) -> Option<Vec<u8>>;
}

/// What a compaction filter decides for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterDecision {
    Keep,
    /// Drop the entry (it becomes a deletion, so older versions below it go
    /// too).
    Remove,
}

/// Facts about the compaction a filter runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionContext {
    /// Every file of the family takes part: nothing older hides elsewhere.
    pub is_full_compaction: bool,
}

/// Creates a filter per compaction. The filter sees keys in ascending order
/// within one compaction, so it may carry state from key to key.
pub trait CompactionFilterFactory: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn create(&self, context: CompactionContext) -> Box<dyn CompactionFilter>;
}

/// Decides, entry by entry, what a compaction keeps.
pub trait CompactionFilter: Send {
    fn filter(&mut self, key: &[u8], value: &[u8]) -> FilterDecision;
}

/// Per-family hooks an engine is opened with.
#[derive(Clone, Default)]
pub struct FamilyOptions {
    pub merge_operator: Option<Arc<dyn MergeOperator>>,
    pub compaction_filter: Option<Arc<dyn CompactionFilterFactory>>,
}

impl fmt::Debug for FamilyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FamilyOptions")
            .field(
                "merge_operator",
                &self.merge_operator.as_ref().map(|m| m.name()),
            )
            .field(
                "compaction_filter",
                &self.compaction_filter.as_ref().map(|c| c.name()),
            )
            .finish()
    }
}

/// Options an engine is opened with: the hooks of each family.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub rows: FamilyOptions,
}

impl EngineOptions {
    /// The hooks of `family` (only `Rows` has any today).
    pub fn family(&self, family: Family) -> FamilyOptions {
        match family {
            Family::Rows => self.rows.clone(),
            Family::Meta | Family::Txn | Family::Feed => FamilyOptions::default(),
        }
    }
}
