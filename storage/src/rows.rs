//! The row store: mutations turned into cells, and reads that reconcile
//! cells, tombstones and expiry back into rows.
//!
//! Writes are blind: every cell is a merge operand (see
//! [`crate::cell::LastWriteWins`]), so a write never reads, and the version
//! with the highest write time wins whatever order writes arrive in.
//! Deletions are tombstone cells at three levels (partition, clustering
//! range, row) plus collection deletions; a read hides every cell whose write
//! time is not above the deletions covering it, and every expired cell.
//!
//! [`RowCompactionFilter`] removes expired cells and shadowed data during
//! compaction, and old tombstones in full compactions, so TTL'd data does not
//! pile up for reads to wade through.
//!
//! Slices and directions are in the table's stored clustering order: with a
//! `DESC` column, `Direction::Forward` returns its largest values first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cell::{CELL_VALUE_BYTES_MAX, Cell, CellHeader, Expiry, WriteTime};
use crate::clock::Clock;
use crate::engine::{
    CompactionContext, CompactionFilter, CompactionFilterFactory, Direction, Family, FamilyOptions,
    FilterDecision, KeyRange, ReadView, WriteBatch, prefix_successor,
};
use crate::keys::{self, EncodedPartition};
use crate::partitioner::{Token, TokenRange};
use crate::schema::{ColumnDef, ColumnId, ColumnKind, TableDef, TableId};
use crate::types::CqlType;
use crate::value::{ClusteringOrder, CqlValue, native, ordered};
use crate::{Error, Result};

/// The most elements one collection operation may add or remove.
pub const COLLECTION_OP_ELEMENTS_MAX: usize = 1024;
/// The most rows a scan page may hold.
pub const SCAN_PAGE_ROWS_MAX: usize = 100_000;
/// How long after expiry a compaction may drop an expired cell.
///
/// The compaction filter judges expiry by its clock, the *purge horizon*.
/// Contract: once the horizon has passed a cell's expiry by this delay, no
/// read at a time before its expiry and no write to that cell with an older
/// write time arrives any more (either would see the cell resurrected or
/// missing). With the transaction layer the horizon is at most the node's
/// applied watermark, below which every write has been applied, so the
/// contract holds by construction; the delay covers reads at a
/// transaction's executeAt that trail the wall clock.
pub const EXPIRED_PURGE_DELAY_SECONDS: i64 = 60;

/// How long written cells live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The table's `default_time_to_live` (none when it is 0).
    TableDefault,
    /// No expiry, whatever the table default (`USING TTL 0`).
    Unlimited,
    Seconds(u32),
}

/// Whether an upsert makes the row exist on its own (CQL `INSERT`), or only
/// through its live cells (CQL `UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    RowMarker,
    CellsOnly,
}

/// What happens to one column of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOp {
    /// Sets the whole value; `None` deletes it. For a multi-cell collection
    /// this replaces every element.
    Set(Option<CqlValue>),
    ListAppend(Vec<CqlValue>),
    ListPrepend(Vec<CqlValue>),
    SetAdd(Vec<CqlValue>),
    SetRemove(Vec<CqlValue>),
    MapPut(Vec<(CqlValue, CqlValue)>),
    MapRemove(Vec<CqlValue>),
    /// Sets one field of a non-frozen user type; `None` nulls it.
    UdtSetField(usize, Option<CqlValue>),
}

/// A clustering bound: a clustering prefix, in the table's stored order.
#[derive(Debug, Clone, PartialEq)]
pub enum SliceBound {
    Unbounded,
    Included(Vec<CqlValue>),
    Excluded(Vec<CqlValue>),
}

/// The rows of a partition between two bounds, in stored order.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub start: SliceBound,
    pub end: SliceBound,
}

impl Slice {
    pub fn all() -> Slice {
        Slice {
            start: SliceBound::Unbounded,
            end: SliceBound::Unbounded,
        }
    }
}

/// One operation on a partition.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    /// Writes cells of one row; static columns go to the partition's static
    /// row. `clustering` may be empty when only static columns are written.
    Upsert {
        clustering: Vec<CqlValue>,
        liveness: Liveness,
        ttl: Ttl,
        cells: Vec<(ColumnId, CellOp)>,
    },
    DeleteRow {
        clustering: Vec<CqlValue>,
    },
    DeleteRange(Slice),
    DeletePartition,
}

/// Operations on one partition, applied atomically at one write time.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub table: TableId,
    pub partition_key: Vec<CqlValue>,
    pub ops: Vec<RowOp>,
}

/// A column's value as read.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnValue {
    pub value: CqlValue,
    /// The write time (for collections, of the newest element).
    pub write_time: WriteTime,
    /// For simple columns written with a TTL.
    pub expiry: Option<Expiry>,
}

/// A live row: its clustering and its live columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub clustering: Vec<CqlValue>,
    pub columns: BTreeMap<ColumnId, ColumnValue>,
}

/// A partition as read: its static row (if any static cell is live) and the
/// live rows of the slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub token: Token,
    pub key: Vec<CqlValue>,
    pub static_row: Option<Row>,
    pub rows: Vec<Row>,
}

/// Read parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    pub direction: Direction,
    pub limit_rows: Option<usize>,
    /// The second expiry is judged at.
    pub now_seconds: i64,
}

impl ReadOptions {
    pub fn at(now_seconds: i64) -> ReadOptions {
        ReadOptions {
            direction: Direction::Forward,
            limit_rows: None,
            now_seconds,
        }
    }
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// Turns a mutation into merge operands on the row family.
///
/// # Errors
/// `InvalidRequest` / `InvalidValue` for a mutation that does not fit the
/// table; `LimitExceeded` for an oversized value or collection operation.
/// Nothing is added to `batch` on error.
pub fn write_mutation(
    table: &TableDef,
    mutation: &Mutation,
    write_time: WriteTime,
    batch: &mut WriteBatch,
) -> Result<()> {
    if mutation.table != table.id {
        return Err(Error::Internal(format!(
            "mutation for table {:?} applied to {}",
            mutation.table,
            table.qualified_name()
        )));
    }
    let partition = keys::encode_partition(table, &mutation.partition_key)?;
    let mut staged = WriteBatch::new();
    for op in &mutation.ops {
        match op {
            RowOp::Upsert {
                clustering,
                liveness,
                ttl,
                cells,
            } => {
                write_upsert(
                    table,
                    &partition,
                    clustering,
                    *liveness,
                    *ttl,
                    cells,
                    write_time,
                    &mut staged,
                )?;
            }
            RowOp::DeleteRow { clustering } => {
                let row_prefix = row_prefix(table, &partition, clustering, ClusteringArity::Full)?;
                let mut key = row_prefix;
                keys::push_column(&mut key, keys::ROW_DELETION_COLUMN);
                staged.merge(Family::Rows, key, Cell::tombstone(write_time).encode());
            }
            RowOp::DeleteRange(slice) => {
                let (start, end) = slice_bytes(table, slice)?;
                let mut key = partition.section(keys::SECTION_RANGE_TOMBSTONES);
                let start_len = u16::try_from(start.len())
                    .map_err(|_| Error::InvalidRequest("range delete bound is too long".into()))?;
                key.extend_from_slice(&start_len.to_be_bytes());
                key.extend_from_slice(&start);
                key.extend_from_slice(&end);
                staged.merge(Family::Rows, key, Cell::tombstone(write_time).encode());
            }
            RowOp::DeletePartition => {
                let key = partition.section(keys::SECTION_PARTITION_DELETION);
                staged.merge(Family::Rows, key, Cell::tombstone(write_time).encode());
            }
        }
    }
    batch.extend(staged);
    Ok(())
}

/// Whether a clustering must name every clustering column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusteringArity {
    Full,
}

/// The key prefix of a row's cells, up to and excluding its column part.
fn row_prefix(
    table: &TableDef,
    partition: &EncodedPartition,
    clustering: &[CqlValue],
    _arity: ClusteringArity,
) -> Result<Vec<u8>> {
    let expected = table.clustering().len();
    if clustering.len() != expected {
        let missing: Vec<&str> = table
            .clustering()
            .skip(clustering.len())
            .map(|c| c.name.as_str())
            .collect();
        return Err(Error::InvalidRequest(format!(
            "a row of {} needs all {expected} clustering columns, {} given{}",
            table.qualified_name(),
            clustering.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (missing {})", missing.join(", "))
            }
        )));
    }
    let mut key = partition.section(keys::SECTION_ROWS);
    keys::encode_clustering(table, clustering, &mut key)?;
    Ok(key)
}

#[allow(clippy::too_many_arguments)]
fn write_upsert(
    table: &TableDef,
    partition: &EncodedPartition,
    clustering: &[CqlValue],
    liveness: Liveness,
    ttl: Ttl,
    cells: &[(ColumnId, CellOp)],
    write_time: WriteTime,
    batch: &mut WriteBatch,
) -> Result<()> {
    let writes_regular = cells.iter().any(|(column, _)| {
        table
            .column_by_id(*column)
            .is_some_and(|c| c.kind == ColumnKind::Regular)
    });
    let static_only = clustering.is_empty() && table.clustering().len() > 0 && !writes_regular;
    let row = if static_only {
        if liveness == Liveness::RowMarker && table.clustering().len() > 0 {
            return Err(Error::InvalidRequest(format!(
                "an insert into {} needs all clustering columns unless it writes only static columns",
                table.qualified_name()
            )));
        }
        None
    } else {
        Some(row_prefix(
            table,
            partition,
            clustering,
            ClusteringArity::Full,
        )?)
    };
    let ttl_seconds = match ttl {
        Ttl::TableDefault => table.options.default_time_to_live_seconds,
        Ttl::Unlimited => 0,
        Ttl::Seconds(seconds) => seconds,
    };
    let expiry = (ttl_seconds > 0).then(|| Expiry {
        expiry_seconds: write_time.seconds().saturating_add(i64::from(ttl_seconds)),
        ttl_seconds,
    });
    if let (Some(row), Liveness::RowMarker) = (&row, liveness) {
        let mut key = row.clone();
        keys::push_column(&mut key, keys::ROW_MARKER_COLUMN);
        batch.merge(
            Family::Rows,
            key,
            Cell::live(write_time, Vec::new(), expiry).encode(),
        );
    }
    let static_prefix = partition.section(keys::SECTION_STATIC);
    for (column_id, op) in cells {
        let column = table.column_by_id(*column_id).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "table {} has no column with id {}",
                table.qualified_name(),
                column_id.0
            ))
        })?;
        let prefix = match column.kind {
            ColumnKind::Static => &static_prefix,
            ColumnKind::Regular => row
                .as_ref()
                .ok_or_else(|| Error::Internal("regular column without a row".into()))?,
            ColumnKind::PartitionKey | ColumnKind::Clustering(_) => {
                return Err(Error::InvalidRequest(format!(
                    "primary key column {} cannot be updated",
                    column.name
                )));
            }
        };
        let mut column_key = prefix.clone();
        keys::push_column(&mut column_key, column.id);
        write_cell_op(column, column_key, op, write_time, expiry, batch)?;
    }
    Ok(())
}

fn check_value(column: &ColumnDef, ty: &CqlType, value: &CqlValue) -> Result<Vec<u8>> {
    value.validate(ty).map_err(|error| match error {
        Error::InvalidValue { target, reason } => Error::InvalidValue {
            target: format!("column {} ({target})", column.name),
            reason,
        },
        other => other,
    })?;
    let mut bytes = Vec::new();
    native::serialize(value, ty, &mut bytes)?;
    if bytes.len() > CELL_VALUE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: format!("value of column {}", column.name),
            limit: "CELL_VALUE_BYTES_MAX",
            actual: bytes.len(),
            max: CELL_VALUE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

fn check_elements(column: &ColumnDef, count: usize) -> Result<()> {
    if count > COLLECTION_OP_ELEMENTS_MAX {
        return Err(Error::LimitExceeded {
            what: format!(
                "collection operation on column {} ({count} elements)",
                column.name
            ),
            limit: "COLLECTION_OP_ELEMENTS_MAX",
            actual: count,
            max: COLLECTION_OP_ELEMENTS_MAX,
        });
    }
    Ok(())
}

fn wrong_op(column: &ColumnDef, op: &str) -> Error {
    Error::InvalidRequest(format!(
        "{op} is not valid for column {} of type {}",
        column.name, column.ty
    ))
}

fn element_key(column_key: &[u8], element: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(column_key.len() + 1 + element.len());
    key.extend_from_slice(column_key);
    key.push(keys::COMPLEX_ELEMENT);
    key.extend_from_slice(element);
    key
}

fn ordered_element(value: &CqlValue, ty: &CqlType) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ordered::encode(value, ty, ClusteringOrder::Asc, &mut bytes)?;
    Ok(bytes)
}

/// List element positions: appends sort after everything written earlier,
/// prepends before. Positions are `write_time × 1024 + index`.
fn list_position(write_time: WriteTime, element_idx: usize, prepend: bool) -> Vec<u8> {
    let base = write_time
        .0
        .saturating_mul(COLLECTION_OP_ELEMENTS_MAX as i64);
    let position = if prepend {
        base.saturating_neg()
            .saturating_sub(COLLECTION_OP_ELEMENTS_MAX as i64)
            + element_idx as i64
    } else {
        base + element_idx as i64
    };
    ((position as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

fn write_cell_op(
    column: &ColumnDef,
    column_key: Vec<u8>,
    op: &CellOp,
    write_time: WriteTime,
    expiry: Option<Expiry>,
    batch: &mut WriteBatch,
) -> Result<()> {
    let live = |bytes: Vec<u8>| Cell::live(write_time, bytes, expiry).encode();
    let dead = || Cell::tombstone(write_time).encode();
    let complex_deletion = |batch: &mut WriteBatch, at: WriteTime| {
        let mut key = column_key.clone();
        key.push(keys::COMPLEX_DELETION);
        batch.merge(Family::Rows, key, Cell::tombstone(at).encode());
    };
    match (&column.ty, op) {
        (ty, CellOp::Set(value)) if !ty.is_multi_cell() => {
            let encoded = match value {
                Some(value) => live(check_value(column, ty, value)?),
                None => dead(),
            };
            batch.merge(Family::Rows, column_key, encoded);
        }
        (ty, CellOp::Set(value)) => {
            // Replacing a collection deletes what was there just before this write.
            let Some(value) = value else {
                complex_deletion(batch, write_time);
                return Ok(());
            };
            value.validate(ty).map_err(|error| match error {
                Error::InvalidValue { target, reason } => Error::InvalidValue {
                    target: format!("column {} ({target})", column.name),
                    reason,
                },
                other => other,
            })?;
            complex_deletion(batch, WriteTime(write_time.0 - 1));
            // The new elements are the element operations of the same write.
            let element_ops = match (ty, value) {
                (CqlType::List(_), CqlValue::List(elements)) => {
                    vec![CellOp::ListAppend(elements.clone())]
                }
                (CqlType::Set(_), CqlValue::Set(elements)) => {
                    vec![CellOp::SetAdd(elements.clone())]
                }
                (CqlType::Map(..), CqlValue::Map(entries)) => vec![CellOp::MapPut(entries.clone())],
                (CqlType::Udt(_), CqlValue::Udt(fields)) => fields
                    .iter()
                    .enumerate()
                    .filter_map(|(field_idx, field)| {
                        field
                            .as_ref()
                            .map(|field| CellOp::UdtSetField(field_idx, Some(field.clone())))
                    })
                    .collect(),
                _ => return Err(wrong_op(column, "this value")),
            };
            for element_op in &element_ops {
                write_cell_op(
                    column,
                    column_key.clone(),
                    element_op,
                    write_time,
                    expiry,
                    batch,
                )?;
            }
        }
        (
            CqlType::List(element_ty),
            CellOp::ListAppend(elements) | CellOp::ListPrepend(elements),
        ) => {
            check_elements(column, elements.len())?;
            let prepend = matches!(op, CellOp::ListPrepend(_));
            for (element_idx, element) in elements.iter().enumerate() {
                let key = element_key(
                    &column_key,
                    &list_position(write_time, element_idx, prepend),
                );
                batch.merge(
                    Family::Rows,
                    key,
                    live(check_value(column, element_ty, element)?),
                );
            }
        }
        (CqlType::Set(element_ty), CellOp::SetAdd(elements) | CellOp::SetRemove(elements)) => {
            check_elements(column, elements.len())?;
            for element in elements {
                element.validate(element_ty)?;
                let key = element_key(&column_key, &ordered_element(element, element_ty)?);
                let cell = if matches!(op, CellOp::SetAdd(_)) {
                    live(Vec::new())
                } else {
                    dead()
                };
                batch.merge(Family::Rows, key, cell);
            }
        }
        (CqlType::Map(key_ty, value_ty), CellOp::MapPut(entries)) => {
            check_elements(column, entries.len())?;
            for (entry_key, entry_value) in entries {
                entry_key.validate(key_ty)?;
                let key = element_key(&column_key, &ordered_element(entry_key, key_ty)?);
                batch.merge(
                    Family::Rows,
                    key,
                    live(check_value(column, value_ty, entry_value)?),
                );
            }
        }
        (CqlType::Map(key_ty, _), CellOp::MapRemove(entry_keys)) => {
            check_elements(column, entry_keys.len())?;
            for entry_key in entry_keys {
                entry_key.validate(key_ty)?;
                let key = element_key(&column_key, &ordered_element(entry_key, key_ty)?);
                batch.merge(Family::Rows, key, dead());
            }
        }
        (CqlType::Udt(udt), CellOp::UdtSetField(field_idx, value)) => {
            let Some((_, field_ty)) = udt.fields.get(*field_idx) else {
                return Err(Error::InvalidRequest(format!(
                    "type {} has no field number {field_idx}",
                    udt.name
                )));
            };
            let key = element_key(&column_key, &(*field_idx as u16).to_be_bytes());
            let cell = match value {
                Some(value) => live(check_value(column, field_ty, value)?),
                None => dead(),
            };
            batch.merge(Family::Rows, key, cell);
        }
        (_, CellOp::ListAppend(_) | CellOp::ListPrepend(_)) => {
            return Err(wrong_op(column, "a list append"));
        }
        (_, CellOp::SetAdd(_) | CellOp::SetRemove(_)) => {
            return Err(wrong_op(column, "a set add or remove"));
        }
        (_, CellOp::MapPut(_) | CellOp::MapRemove(_)) => {
            return Err(wrong_op(column, "a map put or remove"));
        }
        (_, CellOp::UdtSetField(..)) => return Err(wrong_op(column, "a field update")),
    }
    Ok(())
}

/// Byte bounds of a slice relative to the start of the rows section.
fn slice_bytes(table: &TableDef, slice: &Slice) -> Result<(Vec<u8>, Vec<u8>)> {
    let bound = |bound: &SliceBound, is_start: bool| -> Result<Vec<u8>> {
        Ok(match bound {
            SliceBound::Unbounded if is_start => Vec::new(),
            SliceBound::Unbounded => vec![0xFF],
            SliceBound::Included(prefix) | SliceBound::Excluded(prefix) => {
                let mut bytes = Vec::new();
                keys::encode_clustering(table, prefix, &mut bytes)?;
                let after = matches!(bound, SliceBound::Excluded(_)) == is_start;
                if after {
                    bytes.push(keys::AFTER_PREFIX);
                }
                bytes
            }
        })
    };
    Ok((bound(&slice.start, true)?, bound(&slice.end, false)?))
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RangeTombstone {
    start: Vec<u8>,
    end: Vec<u8>,
    deleted_at: WriteTime,
}

impl RangeTombstone {
    fn covers(&self, clustering_bytes: &[u8]) -> bool {
        self.start.as_slice() <= clustering_bytes && clustering_bytes < self.end.as_slice()
    }
}

fn decode_range_tombstone(
    section_key_len: usize,
    key: &[u8],
    value: &[u8],
) -> Result<RangeTombstone> {
    let rest = &key[section_key_len..];
    let corrupt = || Error::corruption(format!("range tombstone key {key:02x?} does not decode"));
    let (length, bounds) = rest.split_at_checked(2).ok_or_else(corrupt)?;
    let start_len = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let (start, end) = bounds.split_at_checked(start_len).ok_or_else(corrupt)?;
    let header = CellHeader::decode(value)?;
    Ok(RangeTombstone {
        start: start.to_vec(),
        end: end.to_vec(),
        deleted_at: header.write_time,
    })
}

/// Deletions that apply to a whole partition's reads.
#[derive(Debug, Clone, Default)]
struct PartitionDeletions {
    partition: Option<WriteTime>,
    ranges: Vec<RangeTombstone>,
}

fn load_deletions(view: &dyn ReadView, partition: &EncodedPartition) -> Result<PartitionDeletions> {
    let partition_deletion = view
        .get(
            Family::Rows,
            &partition.section(keys::SECTION_PARTITION_DELETION),
        )?
        .map(|bytes| CellHeader::decode(&bytes).map(|header| header.write_time))
        .transpose()?;
    let section = partition.section(keys::SECTION_RANGE_TOMBSTONES);
    let mut ranges = Vec::new();
    for item in view.scan(
        Family::Rows,
        &KeyRange::prefix(&section),
        Direction::Forward,
    )? {
        let (key, value) = item?;
        ranges.push(decode_range_tombstone(section.len(), &key, &value)?);
    }
    Ok(PartitionDeletions {
        partition: partition_deletion,
        ranges,
    })
}

/// Reads one partition's slice.
///
/// Returns `None` when the partition has no live static cell and no live row
/// in the slice.
///
/// # Errors
/// `InvalidRequest` / `InvalidValue` for a bad key, `Corruption` for data
/// that does not decode, `Engine` on engine failure.
pub fn read_partition(
    view: &dyn ReadView,
    table: &TableDef,
    partition_key: &[CqlValue],
    slice: &Slice,
    options: ReadOptions,
) -> Result<Option<Partition>> {
    let partition = keys::encode_partition(table, partition_key)?;
    let (start, end) = slice_bytes(table, slice)?;
    let (rows, _) = read_encoded_partition(view, table, &partition, &start, &end, options)?;
    let static_row = read_static_row(view, table, &partition, options.now_seconds)?;
    if rows.is_empty() && static_row.is_none() {
        return Ok(None);
    }
    Ok(Some(Partition {
        token: partition.token,
        key: partition_key.to_vec(),
        static_row,
        rows,
    }))
}

/// Reads one row (with the partition's static columns merged in when `with_static`).
///
/// # Errors
/// As [`read_partition`].
pub fn read_row(
    view: &dyn ReadView,
    table: &TableDef,
    partition_key: &[CqlValue],
    clustering: &[CqlValue],
    now_seconds: i64,
) -> Result<Option<Row>> {
    let slice = Slice {
        start: SliceBound::Included(clustering.to_vec()),
        end: SliceBound::Included(clustering.to_vec()),
    };
    if clustering.len() != table.clustering().len() {
        return Err(Error::InvalidRequest(format!(
            "a row of {} needs all {} clustering columns, {} given",
            table.qualified_name(),
            table.clustering().len(),
            clustering.len()
        )));
    }
    let partition = keys::encode_partition(table, partition_key)?;
    let (start, end) = slice_bytes(table, &slice)?;
    let options = ReadOptions {
        direction: Direction::Forward,
        limit_rows: Some(1),
        now_seconds,
    };
    let (mut rows, _) = read_encoded_partition(view, table, &partition, &start, &end, options)?;
    Ok(rows.pop())
}

fn read_static_row(
    view: &dyn ReadView,
    table: &TableDef,
    partition: &EncodedPartition,
    now_seconds: i64,
) -> Result<Option<Row>> {
    if !table.has_static_columns() {
        return Ok(None);
    }
    let deletions = PartitionDeletions {
        partition: view
            .get(
                Family::Rows,
                &partition.section(keys::SECTION_PARTITION_DELETION),
            )?
            .map(|bytes| CellHeader::decode(&bytes).map(|header| header.write_time))
            .transpose()?,
        ranges: Vec::new(),
    };
    let section = partition.section(keys::SECTION_STATIC);
    let mut cells = Vec::new();
    for item in view.scan(
        Family::Rows,
        &KeyRange::prefix(&section),
        Direction::Forward,
    )? {
        let (key, value) = item?;
        cells.push((key[section.len()..].to_vec(), value));
    }
    resolve_row(
        table,
        Vec::new(),
        &[],
        &cells,
        &deletions,
        now_seconds,
        RowKind::Static,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Static,
    Clustered,
}

/// Reads the live rows of a partition whose clustering bytes lie in
/// `[start, end)`. Returns them and, when the limit cut the read short, the
/// clustering bytes of the last row returned.
fn read_encoded_partition(
    view: &dyn ReadView,
    table: &TableDef,
    partition: &EncodedPartition,
    start: &[u8],
    end: &[u8],
    options: ReadOptions,
) -> Result<(Vec<Row>, Option<Vec<u8>>)> {
    let deletions = load_deletions(view, partition)?;
    let rows_prefix = partition.section(keys::SECTION_ROWS);
    let concat = |suffix: &[u8]| {
        let mut key = rows_prefix.clone();
        key.extend_from_slice(suffix);
        key
    };
    let range = KeyRange::half_open(concat(start), concat(end));
    let limit = options.limit_rows.unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    // The current row: its clustering bytes (up to CELLS), values and cells.
    let mut current: Option<(Vec<u8>, Vec<CqlValue>)> = None;
    let mut cells: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut last_returned = None;
    let mut flush = |current: &mut Option<(Vec<u8>, Vec<CqlValue>)>,
                     cells: &mut Vec<(Vec<u8>, Vec<u8>)>,
                     rows: &mut Vec<Row>|
     -> Result<()> {
        if let Some((clustering_bytes, clustering)) = current.take() {
            if options.direction == Direction::Reverse {
                cells.reverse();
            }
            let row = resolve_row(
                table,
                clustering,
                &clustering_bytes,
                cells,
                &deletions,
                options.now_seconds,
                RowKind::Clustered,
            )?;
            if let Some(row) = row {
                rows.push(row);
                last_returned = Some(clustering_bytes);
            }
        }
        cells.clear();
        Ok(())
    };
    for item in view.scan(Family::Rows, &range, options.direction)? {
        let (key, value) = item?;
        let suffix = &key[rows_prefix.len()..];
        let same_row = current.as_ref().is_some_and(|(clustering_bytes, _)| {
            suffix.starts_with(clustering_bytes)
                && suffix.get(clustering_bytes.len()) == Some(&keys::CELLS)
        });
        if !same_row {
            flush(&mut current, &mut cells, &mut rows)?;
            if rows.len() >= limit {
                break;
            }
            let mut input = suffix;
            let clustering = keys::decode_clustering(table, &mut input)?;
            let clustering_len = suffix.len() - input.len();
            current = Some((suffix[..clustering_len].to_vec(), clustering));
        }
        let clustering_len = current.as_ref().map_or(0, |(bytes, _)| bytes.len());
        cells.push((suffix[clustering_len..].to_vec(), value));
    }
    if rows.len() < limit {
        flush(&mut current, &mut cells, &mut rows)?;
    }
    let cut_short = rows.len() >= limit;
    Ok((rows, if cut_short { last_returned } else { None }))
}

/// Reconciles a row's cells (column parts and encoded cells, in ascending
/// key order) into a live row, or `None`.
fn resolve_row(
    table: &TableDef,
    clustering: Vec<CqlValue>,
    clustering_bytes: &[u8],
    cells: &[(Vec<u8>, Vec<u8>)],
    deletions: &PartitionDeletions,
    now_seconds: i64,
    kind: RowKind,
) -> Result<Option<Row>> {
    let mut deleted_at = deletions.partition;
    for range in &deletions.ranges {
        if range.covers(clustering_bytes) {
            deleted_at = deleted_at.max(Some(range.deleted_at));
        }
    }
    // Row deletion sorts first among the row's cells.
    let mut cell_idx = 0;
    if let Some((part, value)) = cells.first() {
        let (column, rest) = keys::decode_column(part)?;
        if column == keys::ROW_DELETION_COLUMN && rest.is_empty() {
            deleted_at = deleted_at.max(Some(CellHeader::decode(value)?.write_time));
            cell_idx = 1;
        }
    }
    let shadowed =
        |write_time: WriteTime, bound: Option<WriteTime>| bound.is_some_and(|at| write_time <= at);
    let mut row_marker_live = false;
    let mut columns = BTreeMap::new();
    while cell_idx < cells.len() {
        let (part, value) = &cells[cell_idx];
        let (column_id, rest) = keys::decode_column(part)?;
        if column_id == keys::ROW_MARKER_COLUMN {
            let header = CellHeader::decode(value)?;
            row_marker_live |=
                header.is_live(now_seconds) && !shadowed(header.write_time, deleted_at);
            cell_idx += 1;
            continue;
        }
        // Gather every cell of this column.
        let column_end = cells[cell_idx..]
            .iter()
            .position(|(other, _)| keys::decode_column(other).map(|(id, _)| id) != Ok(column_id))
            .map_or(cells.len(), |offset| cell_idx + offset);
        let Some(column) = table.column_by_id(column_id) else {
            // A dropped column: its cells are never shown again.
            cell_idx = column_end;
            continue;
        };
        if column.ty.is_multi_cell() {
            if let Some(column_value) = resolve_complex(
                column,
                &cells[cell_idx..column_end],
                deleted_at,
                now_seconds,
            )? {
                columns.insert(column_id, column_value);
            }
        } else if rest.is_empty() {
            let header = CellHeader::decode(value)?;
            if header.is_live(now_seconds) && !shadowed(header.write_time, deleted_at) {
                let value = native::deserialize(&column.ty, header.value(value))?;
                columns.insert(
                    column_id,
                    ColumnValue {
                        value,
                        write_time: header.write_time,
                        expiry: header.expiry,
                    },
                );
            }
        }
        cell_idx = column_end;
    }
    let live = match kind {
        RowKind::Static => !columns.is_empty(),
        RowKind::Clustered => {
            row_marker_live
                || columns.keys().any(|id| {
                    table
                        .column_by_id(*id)
                        .is_some_and(|c| c.kind == ColumnKind::Regular)
                })
        }
    };
    Ok(live.then_some(Row {
        clustering,
        columns,
    }))
}

fn resolve_complex(
    column: &ColumnDef,
    cells: &[(Vec<u8>, Vec<u8>)],
    row_deleted_at: Option<WriteTime>,
    now_seconds: i64,
) -> Result<Option<ColumnValue>> {
    let mut deleted_at = row_deleted_at;
    let mut elements: Vec<(&[u8], CellHeader, &[u8])> = Vec::new();
    for (part, value) in cells {
        let (_, rest) = keys::decode_column(part)?;
        let header = CellHeader::decode(value)?;
        match rest.split_first() {
            Some((&keys::COMPLEX_DELETION, [])) => {
                deleted_at = deleted_at.max(Some(header.write_time))
            }
            Some((&keys::COMPLEX_ELEMENT, element_key)) => {
                elements.push((element_key, header, value))
            }
            _ => {
                return Err(Error::corruption(format!(
                    "collection cell key {part:02x?} does not decode"
                )));
            }
        }
    }
    let live: Vec<_> = elements
        .into_iter()
        .filter(|(_, header, _)| {
            header.is_live(now_seconds) && deleted_at.is_none_or(|at| header.write_time > at)
        })
        .collect();
    if live.is_empty() {
        return Ok(None);
    }
    let write_time = live
        .iter()
        .map(|(_, header, _)| header.write_time)
        .max()
        .unwrap_or(WriteTime(0));
    let value = match &column.ty {
        CqlType::List(element_ty) => CqlValue::List(
            live.iter()
                .map(|(_, header, value)| native::deserialize(element_ty, header.value(value)))
                .collect::<Result<_>>()?,
        ),
        CqlType::Set(element_ty) => CqlValue::Set(
            live.iter()
                .map(|(element_key, _, _)| {
                    ordered::decode(element_ty, ClusteringOrder::Asc, &mut &element_key[..])
                })
                .collect::<Result<_>>()?,
        ),
        CqlType::Map(key_ty, value_ty) => CqlValue::Map(
            live.iter()
                .map(|(element_key, header, value)| {
                    Ok((
                        ordered::decode(key_ty, ClusteringOrder::Asc, &mut &element_key[..])?,
                        native::deserialize(value_ty, header.value(value))?,
                    ))
                })
                .collect::<Result<_>>()?,
        ),
        CqlType::Udt(udt) => {
            let mut fields = vec![None; udt.fields.len()];
            for (element_key, header, value) in &live {
                let field_idx = match element_key {
                    [high, low] => usize::from(u16::from_be_bytes([*high, *low])),
                    _ => return Err(Error::corruption("user type field key does not decode")),
                };
                if let Some((_, field_ty)) = udt.fields.get(field_idx) {
                    fields[field_idx] = Some(native::deserialize(field_ty, header.value(value))?);
                }
            }
            CqlValue::Udt(fields)
        }
        other => return Err(Error::Internal(format!("{other} is not a multi-cell type"))),
    };
    Ok(Some(ColumnValue {
        value,
        write_time,
        expiry: None,
    }))
}

/// Where a token-range scan resumes: after a partition, or inside one after
/// a row. Opaque to callers; serialize with [`ScanCursor::to_bytes`] to hand
/// it to a client as paging state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    partition_prefix: Vec<u8>,
    /// The clustering bytes of the last row returned, when the partition was
    /// cut short.
    after_row: Option<Vec<u8>>,
}

impl ScanCursor {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.partition_prefix.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.partition_prefix);
        if let Some(after_row) = &self.after_row {
            out.extend_from_slice(after_row);
        }
        out
    }

    /// # Errors
    /// `InvalidRequest` for bytes that are not a cursor.
    pub fn from_bytes(bytes: &[u8]) -> Result<ScanCursor> {
        let invalid = || Error::InvalidRequest("paging state does not decode".into());
        let (length, rest) = bytes.split_at_checked(4).ok_or_else(invalid)?;
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let (prefix, after_row) = rest.split_at_checked(length).ok_or_else(invalid)?;
        Ok(ScanCursor {
            partition_prefix: prefix.to_vec(),
            after_row: (!after_row.is_empty()).then(|| after_row.to_vec()),
        })
    }
}

/// A page of a token-range scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    pub partitions: Vec<Partition>,
    /// Where the next page starts; `None` when the range is exhausted.
    pub next: Option<ScanCursor>,
}

/// Scans the partitions of `table` whose tokens lie in `range`, in token
/// order, returning at most `page_rows` rows (partitions holding only static
/// data count as one row).
///
/// # Errors
/// `InvalidRequest` for a page size of 0 or over `SCAN_PAGE_ROWS_MAX` or a
/// cursor of another table, otherwise as [`read_partition`].
pub fn scan_token_range(
    view: &dyn ReadView,
    table: &TableDef,
    range: &TokenRange,
    cursor: Option<&ScanCursor>,
    page_rows: usize,
    now_seconds: i64,
) -> Result<ScanPage> {
    if page_rows == 0 || page_rows > SCAN_PAGE_ROWS_MAX {
        return Err(Error::InvalidRequest(format!(
            "page size {page_rows} must be between 1 and SCAN_PAGE_ROWS_MAX = {SCAN_PAGE_ROWS_MAX}"
        )));
    }
    let table_prefix = keys::table_prefix(table.id);
    if let Some(cursor) = cursor
        && !cursor.partition_prefix.starts_with(&table_prefix)
    {
        return Err(Error::InvalidRequest(
            "paging state belongs to another table".into(),
        ));
    }
    let mut partitions = Vec::new();
    let mut rows_left = page_rows;
    // A wrapping range (start >= end) is two key ranges, scanned in ring
    // order: the part after `start` first.
    let mut key_ranges = crate::stream::token_range_key_ranges(table.id, range);
    key_ranges.reverse();
    let mut resume = cursor.cloned();
    // The second part of a wrapping range sorts first in key space, so the
    // ranges before the cursor's are found by position in the list, not by
    // comparing keys; otherwise a cursor in the second part rescans the first.
    let resume_range_idx = resume.as_ref().and_then(|cursor| {
        key_ranges.iter().position(|(range_start, range_end)| {
            cursor.partition_prefix >= *range_start && cursor.partition_prefix < *range_end
        })
    });
    for (range_idx, (range_start, range_end)) in key_ranges.into_iter().enumerate() {
        if resume_range_idx.is_some_and(|resume_idx| range_idx < resume_idx) {
            continue;
        }
        let mut position = range_start.clone();
        if let Some(cursor) = &resume
            && cursor.partition_prefix >= range_start
            && cursor.partition_prefix < range_end
        {
            if let Some(after_row) = &cursor.after_row {
                // Finish the partition that was cut short.
                let (partition, values) = keys::decode_partition(table, &cursor.partition_prefix)?;
                let mut start = after_row.clone();
                start.push(keys::AFTER_PREFIX);
                let options = ReadOptions {
                    direction: Direction::Forward,
                    limit_rows: Some(rows_left),
                    now_seconds,
                };
                let (rows, cut) =
                    read_encoded_partition(view, table, &partition, &start, &[0xFF], options)?;
                rows_left -= rows.len();
                if !rows.is_empty() {
                    partitions.push(Partition {
                        token: partition.token,
                        key: values,
                        static_row: None,
                        rows,
                    });
                }
                if let Some(after_row) = cut {
                    return Ok(page_ending_in(
                        partitions,
                        partition.prefix,
                        Some(after_row),
                    ));
                }
            }
            position =
                prefix_successor(&cursor.partition_prefix).unwrap_or_else(|| range_end.clone());
            resume = None;
        } else if resume
            .as_ref()
            .is_some_and(|cursor| cursor.partition_prefix >= range_end)
        {
            continue;
        }
        while position < range_end {
            let next_key = view
                .scan(
                    Family::Rows,
                    &KeyRange::half_open(position.clone(), range_end.clone()),
                    Direction::Forward,
                )?
                .next()
                .transpose()?;
            let Some((key, _)) = next_key else { break };
            let (partition, values) = keys::decode_partition(table, &key)?;
            let options = ReadOptions {
                direction: Direction::Forward,
                limit_rows: Some(rows_left),
                now_seconds,
            };
            let (rows, cut) =
                read_encoded_partition(view, table, &partition, &[], &[0xFF], options)?;
            let static_row = read_static_row(view, table, &partition, now_seconds)?;
            let counted = rows.len().max(usize::from(static_row.is_some()));
            if counted > 0 {
                rows_left = rows_left.saturating_sub(counted);
                partitions.push(Partition {
                    token: partition.token,
                    key: values,
                    static_row,
                    rows,
                });
            }
            if let Some(after_row) = cut {
                return Ok(page_ending_in(
                    partitions,
                    partition.prefix,
                    Some(after_row),
                ));
            }
            if rows_left == 0 {
                return Ok(page_ending_in(partitions, partition.prefix, None));
            }
            position = prefix_successor(&partition.prefix).unwrap_or_else(|| range_end.clone());
        }
    }
    Ok(ScanPage {
        partitions,
        next: None,
    })
}

/// A page that stops inside the range: the next one resumes after
/// `after_row` of the partition at `partition_prefix`, or after the whole
/// partition.
fn page_ending_in(
    partitions: Vec<Partition>,
    partition_prefix: Vec<u8>,
    after_row: Option<Vec<u8>>,
) -> ScanPage {
    ScanPage {
        partitions,
        next: Some(ScanCursor {
            partition_prefix,
            after_row,
        }),
    }
}

/// Deletes every row of a table (`TRUNCATE`, `DROP TABLE`).
pub fn delete_table(table: TableId, batch: &mut WriteBatch) {
    let prefix = keys::table_prefix(table);
    let end = prefix_successor(&prefix).unwrap_or_else(|| vec![0xFF; 5]);
    batch.delete_range(Family::Rows, prefix, end);
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

/// The tables a compaction filter and the transaction store know, shared with the schema
/// owner, and the version of the schema they come from ([`crate::schema::Schema::version`]).
///
/// The version lets a replica tell a table or column it does not know *yet* (a transaction
/// built on a newer schema than this node applied: wait, [`TableRegistry::wait_for_version`])
/// from one dropped since (skip its writes).
#[derive(Debug, Clone, Default)]
pub struct TableRegistry {
    tables: Arc<RwLock<HashMap<TableId, Arc<TableDef>>>>,
    version: Arc<(parking_lot::Mutex<u64>, parking_lot::Condvar)>,
}

impl TableRegistry {
    pub fn new() -> TableRegistry {
        TableRegistry::default()
    }

    /// The schema version the registry's tables are at.
    pub fn version(&self) -> u64 {
        *self.version.0.lock()
    }

    /// Records that the registry now holds the tables of schema `version` (call after
    /// inserting and removing them); wakes the waiters. Versions never go back.
    pub fn publish_version(&self, version: u64) {
        let (current, changed) = &*self.version;
        let mut current = current.lock();
        if version > *current {
            *current = version;
            changed.notify_all();
        }
    }

    /// Waits until the registry is at schema `version` or later, at most `timeout`; returns
    /// whether it is.
    pub fn wait_for_version(&self, version: u64, timeout: std::time::Duration) -> bool {
        let (current, changed) = &*self.version;
        let deadline = std::time::Instant::now() + timeout;
        let mut current = current.lock();
        while *current < version {
            if changed.wait_until(&mut current, deadline).timed_out() {
                return *current >= version;
            }
        }
        true
    }

    pub fn insert(&self, table: Arc<TableDef>) {
        self.tables.write().insert(table.id, table);
    }

    pub fn remove(&self, table: TableId) {
        self.tables.write().remove(&table);
    }

    pub fn get(&self, table: TableId) -> Option<Arc<TableDef>> {
        self.tables.read().get(&table).cloned()
    }
}

/// The row family's hooks: last-write-wins merges and the compaction filter.
pub fn row_family_options(clock: Arc<dyn Clock>, tables: TableRegistry) -> FamilyOptions {
    FamilyOptions {
        merge_operator: Some(Arc::new(crate::cell::LastWriteWins)),
        compaction_filter: Some(Arc::new(RowCompactionFilterFactory { clock, tables })),
    }
}

#[derive(Debug)]
struct RowCompactionFilterFactory {
    clock: Arc<dyn Clock>,
    tables: TableRegistry,
}

impl CompactionFilterFactory for RowCompactionFilterFactory {
    fn name(&self) -> &'static str {
        "concord.row_compaction_filter.v1"
    }

    fn create(&self, context: CompactionContext) -> Box<dyn CompactionFilter> {
        Box::new(RowCompactionFilter {
            now_seconds: self.clock.now_seconds(),
            context,
            tables: self.tables.clone(),
            partition: None,
        })
    }
}

/// What the filter remembers about the partition it is in. Keys arrive in
/// order, so a partition's deletions come before the cells they shadow.
#[derive(Debug)]
struct PartitionState {
    prefix: Vec<u8>,
    table: Arc<TableDef>,
    deletions: PartitionDeletions,
    /// The row being filtered: its prefix up to and including CELLS, and
    /// its row deletion.
    row: Option<(Vec<u8>, Option<WriteTime>)>,
    /// The collection being filtered: its key prefix and deletion.
    complex: Option<(Vec<u8>, WriteTime)>,
}

/// Drops expired cells, cells shadowed by a deletion seen earlier in the
/// same compaction, and (in full compactions only) tombstones older than the
/// table's `gc_grace_seconds`, with everything of dropped tables.
///
/// Removing an entry turns it into a deletion below which older versions of
/// the same key vanish too, so dropping an expired cell never resurrects an
/// older value. A tombstone is only dropped in a full compaction: elsewhere
/// an older shadowed cell could sit in a file this compaction does not see.
#[derive(Debug)]
pub struct RowCompactionFilter {
    now_seconds: i64,
    context: CompactionContext,
    tables: TableRegistry,
    partition: Option<PartitionState>,
}

impl RowCompactionFilter {
    fn enter_partition(&mut self, key: &[u8]) -> Option<&mut PartitionState> {
        let inside = self
            .partition
            .as_ref()
            .is_some_and(|state| key.starts_with(&state.prefix));
        if !inside {
            self.partition = None;
            let table_id = TableId(u32::from_be_bytes(key.get(..4)?.try_into().ok()?));
            let table = self.tables.get(table_id)?;
            let (partition, _) = keys::decode_partition(&table, key).ok()?;
            self.partition = Some(PartitionState {
                prefix: partition.prefix,
                table,
                deletions: PartitionDeletions::default(),
                row: None,
                complex: None,
            });
        }
        self.partition.as_mut()
    }

    fn tombstone_decision(&self, write_time: WriteTime, gc_grace_seconds: u32) -> FilterDecision {
        let purgeable = self.context.is_full_compaction
            && write_time
                .seconds()
                .saturating_add(i64::from(gc_grace_seconds))
                < self.now_seconds;
        if purgeable {
            FilterDecision::Remove
        } else {
            FilterDecision::Keep
        }
    }

    fn decide(&mut self, key: &[u8], value: &[u8]) -> Option<FilterDecision> {
        let is_full_compaction = self.context.is_full_compaction;
        let table_known = key
            .get(..4)
            .and_then(|bytes| bytes.try_into().ok())
            .is_some_and(|bytes| {
                self.tables
                    .get(TableId(u32::from_be_bytes(bytes)))
                    .is_some()
            });
        if !table_known {
            // Cells of a dropped table are deleted by a range delete; a full
            // compaction removes whatever is left.
            return Some(if is_full_compaction {
                FilterDecision::Remove
            } else {
                FilterDecision::Keep
            });
        }
        let now_seconds = self.now_seconds;
        let header = CellHeader::decode(value).ok()?;
        let state = self.enter_partition(key)?;
        let gc_grace_seconds = state.table.options.gc_grace_seconds;
        let section = *key.get(state.prefix.len())?;
        let suffix = &key[state.prefix.len() + 1..];
        let partition_deleted_at = state.deletions.partition;
        let shadowed_by =
            |bound: Option<WriteTime>| bound.is_some_and(|at| header.write_time <= at);
        match section {
            keys::SECTION_PARTITION_DELETION => {
                state.deletions.partition = Some(header.write_time);
                Some(self.tombstone_decision(header.write_time, gc_grace_seconds))
            }
            keys::SECTION_RANGE_TOMBSTONES => {
                let section_len = state.prefix.len() + 1;
                let range = decode_range_tombstone(section_len, key, value).ok()?;
                if shadowed_by(partition_deleted_at) {
                    return Some(FilterDecision::Remove);
                }
                state.deletions.ranges.push(range);
                Some(self.tombstone_decision(header.write_time, gc_grace_seconds))
            }
            keys::SECTION_STATIC | keys::SECTION_ROWS => {
                let mut input = suffix;
                if section == keys::SECTION_ROWS {
                    // Find the row: reuse the last one if the key extends it.
                    let same_row = state
                        .row
                        .as_ref()
                        .is_some_and(|(row, _)| suffix.starts_with(row));
                    if !same_row {
                        keys::decode_clustering(&state.table, &mut input).ok()?;
                        let clustering_len = suffix.len() - input.len();
                        state.row = Some((suffix[..=clustering_len].to_vec(), None));
                        state.complex = None;
                    }
                }
                let (row_prefix, row_deleted_at) = match (&state.row, section) {
                    (Some((row, deleted_at)), keys::SECTION_ROWS) => (row.clone(), *deleted_at),
                    _ => (vec![keys::CELLS], None),
                };
                let clustering_bytes = &row_prefix[..row_prefix.len() - 1];
                let mut deleted_at = partition_deleted_at.max(row_deleted_at);
                if section == keys::SECTION_ROWS {
                    for range in &state.deletions.ranges {
                        if range.covers(clustering_bytes) {
                            deleted_at = deleted_at.max(Some(range.deleted_at));
                        }
                    }
                }
                let (column, rest) =
                    keys::decode_column(suffix.get(row_prefix.len() - 1..)?).ok()?;
                if column == keys::ROW_DELETION_COLUMN && section == keys::SECTION_ROWS {
                    if shadowed_by(deleted_at) {
                        return Some(FilterDecision::Remove);
                    }
                    if let Some((_, row_deleted)) = state.row.as_mut() {
                        *row_deleted = Some(header.write_time);
                    }
                    return Some(self.tombstone_decision(header.write_time, gc_grace_seconds));
                }
                if let Some((complex_prefix, complex_deleted_at)) = &state.complex
                    && key.starts_with(complex_prefix)
                {
                    deleted_at = deleted_at.max(Some(*complex_deleted_at));
                }
                if let Some((&keys::COMPLEX_DELETION, [])) = rest.split_first() {
                    if shadowed_by(deleted_at) {
                        return Some(FilterDecision::Remove);
                    }
                    let mut complex_prefix = key.to_vec();
                    complex_prefix.pop();
                    state.complex = Some((complex_prefix, header.write_time));
                    return Some(self.tombstone_decision(header.write_time, gc_grace_seconds));
                }
                if shadowed_by(deleted_at) {
                    return Some(FilterDecision::Remove);
                }
                if header.is_tombstone() {
                    return Some(self.tombstone_decision(header.write_time, gc_grace_seconds));
                }
                let expired = header.expiry.is_some_and(|expiry| {
                    expiry
                        .expiry_seconds
                        .saturating_add(EXPIRED_PURGE_DELAY_SECONDS)
                        <= now_seconds
                });
                Some(if expired {
                    FilterDecision::Remove
                } else {
                    FilterDecision::Keep
                })
            }
            _ => Some(FilterDecision::Keep),
        }
    }
}

impl CompactionFilter for RowCompactionFilter {
    fn filter(&mut self, key: &[u8], value: &[u8]) -> FilterDecision {
        // Anything the filter cannot decode is kept: a read will report it as
        // corruption, and a filter must never lose data it does not understand.
        self.decide(key, value).unwrap_or(FilterDecision::Keep)
    }
}
