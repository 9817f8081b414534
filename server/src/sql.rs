//! The SQL entry of the node and its router: [`crate::Db::sql`] sends point
//! and partition lookups to the row store and scans, aggregates and joins to
//! the columnar replica.
//!
//! ```text
//! Db::sql(query) / Db::sql_with(query, SqlOptions)
//!   store = hint /*+ ROW_STORE */ | /*+ COLUMNAR */ , or SqlOptions::store, or
//!           Auto: plan the query (no data read); every table scan pins a full
//!           partition key with equalities → RowStore, otherwise → Columnar
//!   RowStore: DataFusion over RowStoreSource (rows::read_partition, or a
//!             full rows::scan_token_range when a scan is forced)
//!   Columnar: snapshot = Freshness::Latest → T = a fresh commit timestamp
//!             (every write committed before the query began), wait for the
//!             replica's watermark ≥ T (bounded: ColumnarOptions::snapshot_wait_max)
//!   EXPLAIN:  DataFusion's plan, preceded by a `concord_route` row naming
//!             the store, the snapshot and the reason
//! ```
//!
//! Both stores run the same DataFusion plan shape over the same Arrow schema
//! (`concord_columnar::sql::table_schema`), so forcing a store changes where
//! rows come from, never the answer's form.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use concord_columnar::replica::append_page;
use concord_columnar::{PartitionFilter, PartitionSource};
use concord_storage::cell::WriteTime;
use concord_storage::engine::Engine;
use concord_storage::partitioner::TokenRange;
use concord_storage::rows::{self, Partition, ReadOptions, Slice};
use concord_storage::schema::TableDef;

/// The SQL API's error: the columnar crate's, whose kinds
/// (`ResourcesExhausted`, `SnapshotTimeout`, `Sql`, ...) callers match on.
pub type SqlError = concord_columnar::Error;

/// Rows per page of a row-store full scan.
const ROW_SCAN_PAGE_ROWS: usize = 4096;
/// The rough memory of one cell of a row read from the row store, charged to
/// the analytics memory pool before the row is kept.
const ROW_CELL_BYTES_ESTIMATE: usize = 64;

/// Which store answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// The router decides: partition lookups to the row store, the rest to
    /// the replica.
    #[default]
    Auto,
    /// The row store; a query that pins no partition is a full scan.
    RowStore,
    /// The columnar replica.
    Columnar,
}

/// How fresh a replica read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    /// Every write committed before the query began (waits for the replica,
    /// at most `snapshot_wait_max`, then `SnapshotTimeout`).
    #[default]
    Latest,
    /// At most this stale: reads at once when the replica is that fresh,
    /// otherwise waits for it (bounded as for `Latest`).
    BoundedStaleness(Duration),
    /// The replica's watermark now: never waits, possibly stale.
    Watermark,
    /// Exactly this timestamp (waits as for `Latest`).
    At(WriteTime),
}

/// Options of [`crate::Db::sql_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlOptions {
    pub store: StoreChoice,
    /// Replica reads only; the row store reads its latest applied state.
    pub freshness: Freshness,
}

/// The store that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    RowStore,
    Columnar,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::RowStore => "row_store",
            Store::Columnar => "columnar",
        }
    }
}

/// A SQL query's answer.
#[derive(Debug)]
pub struct SqlResult {
    pub store: Store,
    /// The replica snapshot read (`None` for the row store, which reads its
    /// latest applied state).
    pub snapshot: Option<WriteTime>,
    /// Why the router chose `store`.
    pub reason: &'static str,
    /// The result's schema, also when `batches` is empty.
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Reads the store hint of `query`: `/*+ ROW_STORE */` or `/*+ COLUMNAR */`
/// anywhere in it (the optimizer-hint comment form of Oracle, MySQL and
/// TiDB). Other SQL comments are ignored.
///
/// # Errors
/// `Sql` for an unknown hint, two different hints, or an unclosed hint.
pub fn store_hint(query: &str) -> Result<Option<StoreChoice>, SqlError> {
    let mut found: Option<StoreChoice> = None;
    let mut rest = query;
    while let Some(start) = rest.find("/*+") {
        let after = &rest[start + 3..];
        let end = after
            .find("*/")
            .ok_or_else(|| SqlError::Sql("unclosed optimizer hint `/*+`".into()))?;
        for word in after[..end].split_whitespace() {
            let choice = match word.to_ascii_uppercase().as_str() {
                "ROW_STORE" => StoreChoice::RowStore,
                "COLUMNAR" => StoreChoice::Columnar,
                other => {
                    return Err(SqlError::Sql(format!(
                        "unknown hint {other}: the hints are ROW_STORE and COLUMNAR"
                    )));
                }
            };
            if found.is_some_and(|previous| previous != choice) {
                return Err(SqlError::Sql(
                    "the hints ROW_STORE and COLUMNAR contradict each other".into(),
                ));
            }
            found = Some(choice);
        }
        rest = &after[end + 2..];
    }
    Ok(found)
}

/// Whether `query` is an `EXPLAIN` (after leading comments and spaces).
pub fn is_explain(query: &str) -> bool {
    let mut rest = query.trim_start();
    while let Some(comment) = rest.strip_prefix("/*") {
        match comment.find("*/") {
            Some(end) => rest = comment[end + 2..].trim_start(),
            None => return false,
        }
    }
    rest.get(..7)
        .is_some_and(|word| word.eq_ignore_ascii_case("explain"))
}

/// Resolves the options' store and the query's hint into one choice.
///
/// # Errors
/// `Sql` when they contradict each other.
pub fn store_choice(
    options: StoreChoice,
    hint: Option<StoreChoice>,
) -> Result<StoreChoice, SqlError> {
    match (options, hint) {
        (choice, None) | (StoreChoice::Auto, Some(choice)) => Ok(choice),
        (choice, Some(hint)) if choice == hint => Ok(choice),
        (choice, Some(hint)) => Err(SqlError::Sql(format!(
            "the query's hint {hint:?} contradicts SqlOptions::store {choice:?}"
        ))),
    }
}

/// The `concord_route` row `EXPLAIN` starts with, in DataFusion's explain
/// schema (`plan_type`, `plan`).
///
/// # Errors
/// `Internal` if the batch does not build.
pub fn route_batch(
    batches: &[RecordBatch],
    store: Store,
    snapshot: Option<WriteTime>,
    reason: &str,
) -> Result<RecordBatch, SqlError> {
    let schema = batches.first().map_or_else(
        || {
            Arc::new(Schema::new(vec![
                Field::new("plan_type", DataType::Utf8, false),
                Field::new("plan", DataType::Utf8, false),
            ]))
        },
        RecordBatch::schema,
    );
    let at = match snapshot {
        Some(at) => format!(" at snapshot {}", at.0),
        None => " (latest applied state)".to_owned(),
    };
    let text = format!("store={}{at}: {reason}", store.name());
    let columns: Vec<arrow::array::ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(idx, _)| {
            let value = if idx == 0 { "concord_route" } else { &text };
            Arc::new(StringArray::from(vec![value])) as arrow::array::ArrayRef
        })
        .collect();
    RecordBatch::try_new(schema, columns)
        .map_err(|error| SqlError::Internal(format!("build the route row: {error}")))
}

/// The row store as a query source: a pinned partition is one
/// `rows::read_partition`; anything else is a full token-range scan.
pub struct RowStoreSource<E: Engine> {
    pub engine: Arc<E>,
    /// The second expiry is judged at.
    pub now_seconds: i64,
}

impl<E: Engine> std::fmt::Debug for RowStoreSource<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStoreSource")
            .field("now_seconds", &self.now_seconds)
            .finish_non_exhaustive()
    }
}

fn charge_partitions(
    partitions: &[Partition],
    charge: &mut dyn FnMut(usize) -> concord_columnar::Result<()>,
) -> concord_columnar::Result<()> {
    let cells: usize = partitions
        .iter()
        .map(|partition| {
            let statics = partition.static_row.as_ref().map_or(0, |r| r.columns.len());
            statics
                + partition
                    .rows
                    .iter()
                    .map(|row| row.columns.len() + row.clustering.len() + 1)
                    .sum::<usize>()
        })
        .sum();
    charge(cells * ROW_CELL_BYTES_ESTIMATE)
}

impl<E: Engine> PartitionSource for RowStoreSource<E> {
    fn read(
        &self,
        table: &Arc<TableDef>,
        filter: &PartitionFilter,
        charge: &mut dyn FnMut(usize) -> concord_columnar::Result<()>,
    ) -> concord_columnar::Result<(Arc<TableDef>, Vec<Partition>)> {
        let partitions = match filter {
            PartitionFilter::Key(key) => {
                let partitions: Vec<Partition> = rows::read_partition(
                    self.engine.as_ref(),
                    table,
                    key,
                    &Slice::all(),
                    ReadOptions::at(self.now_seconds),
                )?
                .into_iter()
                .collect();
                charge_partitions(&partitions, charge)?;
                partitions
            }
            PartitionFilter::All => {
                let snapshot = self.engine.snapshot();
                let mut partitions = Vec::new();
                let mut cursor = None;
                loop {
                    let page = rows::scan_token_range(
                        &snapshot,
                        table,
                        &TokenRange::full_ring(),
                        cursor.as_ref(),
                        ROW_SCAN_PAGE_ROWS,
                        self.now_seconds,
                    )?;
                    charge_partitions(&page.partitions, charge)?;
                    append_page(&mut partitions, page.partitions);
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                partitions
            }
        };
        Ok((Arc::clone(table), partitions))
    }

    fn describe(&self) -> String {
        "row store (latest applied state)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_read_from_optimizer_comments() {
        assert_eq!(store_hint("SELECT 1").expect("none"), None);
        assert_eq!(
            store_hint("SELECT /*+ ROW_STORE */ * FROM ks.t").expect("row"),
            Some(StoreChoice::RowStore)
        );
        assert_eq!(
            store_hint("/*+ columnar */ SELECT * FROM ks.t /* plain */").expect("col"),
            Some(StoreChoice::Columnar)
        );
        assert!(store_hint("SELECT /*+ TIFLASH */ 1").is_err());
        assert!(store_hint("SELECT /*+ ROW_STORE COLUMNAR */ 1").is_err());
        assert!(store_hint("SELECT /*+ ROW_STORE 1").is_err());
        assert_eq!(
            store_choice(StoreChoice::Auto, Some(StoreChoice::Columnar)).expect("hint"),
            StoreChoice::Columnar
        );
        assert!(store_choice(StoreChoice::RowStore, Some(StoreChoice::Columnar)).is_err());
        assert!(is_explain("  /*+ COLUMNAR */ explain SELECT 1"));
        assert!(!is_explain("SELECT 'explain'"));
    }
}
