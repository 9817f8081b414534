//! Analytic SQL over the replica: DataFusion with a catalog of keyspaces
//! (schemas) and tables, each table a provider bound to one snapshot.
//!
//! ```text
//! Columnar::sql(query, snapshot)
//!   permit (queries_in_flight_max, else ResourcesExhausted)
//!   T = resolve(snapshot): wait watermark ≥ T (≤ snapshot_wait_max, else SnapshotTimeout)
//!   hold T (merges keep its versions) → SessionContext(memory pool) → catalog ks.table
//!   SourceTable::scan(projection, filters): partition-key equality → one partition
//!     (segment row groups pruned by key statistics) → rows at T → Arrow (types.rs);
//!     full scan → the row segment's Parquet scan less the touched partitions
//!     ∪ those partitions reconciled at T (Replica::read_rows_scan), or, with no
//!     usable row segment, every row reconciled (scan cache)
//!   collect on the analytics runtime
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use concord_storage::cell::WriteTime;
use concord_storage::rows::Partition;
use concord_storage::schema::{ColumnKind, TableDef};
use concord_storage::value::CqlValue;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, Session, TableProvider,
};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
    SendableRecordBatchStream, StatisticsArgs,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::replica::{PartitionFilter, Replica, RowsScan};
use crate::row_segment::{self, RowSegment};
use crate::{Error, Result, types};
use datafusion::common::DFSchema;
use datafusion::common::Statistics;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal, in_list};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self, VisitMut, VisitorMut};

pub mod distributed;

/// The hidden column with the newest write time of a row's live cells.
pub const WRITE_TIME_COLUMN: &str = "_concord_write_time";
/// The hidden column saying whether a row is a deletion (change capture).
pub const DELETED_COLUMN: &str = "_concord_deleted";

/// Limits and knobs of the analytic path.
#[derive(Debug, Clone)]
pub struct ColumnarOptions {
    /// How long a query waits for the watermark to reach its snapshot.
    pub snapshot_wait_max: Duration,
    /// Queries running at once; more fail with `ResourcesExhausted`.
    pub queries_in_flight_max: usize,
    /// The DataFusion memory pool shared by all analytic queries.
    pub memory_pool_bytes: usize,
    /// Worker threads of the analytics runtime (apart from OLTP's).
    pub analytics_threads: usize,
    /// Delta versions above which ingest merges into segments.
    pub delta_versions_max: usize,
    /// Memory of whole-table scans kept as Arrow for later snapshots that
    /// read the same rows (see `Replica::read_all_batch`).
    pub scan_cache_bytes_max: usize,
    /// A merge rewrites a table's row segment when the partitions merged
    /// since it was written pass this percentage of its rows (reads
    /// reconcile those partitions until then); see `Replica::merge`.
    pub row_segment_dirty_percent_max: usize,
    /// Cells a row-segment write converts at a time (whole partitions):
    /// the write streams the table in chunks of about this many bytes.
    pub row_segment_write_chunk_bytes: usize,
    /// Memory row segments may hold decoded as Arrow, so full scans read
    /// memory instead of decoding Parquet (see `RowSegment::decoded`); a
    /// segment that does not fit is scanned from its file.
    pub row_segment_decoded_bytes_max: usize,
    /// Feed records the follower may trail the feed by while the row writer
    /// still rewrites row segments; further behind, rewrites wait until it
    /// caught up (see `Replica::write_row_segments_unless_behind`).
    pub row_segment_backlog_records_max: u64,
    /// How long one query may run (planning, reading and executing);
    /// past it the query is stopped with `ResourcesExhausted`. `None`: no
    /// limit (the default). Checked whenever a scan charges the memory pool
    /// (every page of a row-store scan) and around the whole query.
    pub query_time_max: Option<Duration>,
}

impl Default for ColumnarOptions {
    fn default() -> ColumnarOptions {
        ColumnarOptions {
            snapshot_wait_max: Duration::from_secs(5),
            queries_in_flight_max: 4,
            memory_pool_bytes: 1 << 30,
            analytics_threads: 2,
            delta_versions_max: crate::replica::DELTA_VERSIONS_MAX_DEFAULT,
            scan_cache_bytes_max: crate::replica::SCAN_CACHE_BYTES_MAX_DEFAULT,
            row_segment_dirty_percent_max: crate::replica::ROW_SEGMENT_DIRTY_PERCENT_MAX_DEFAULT,
            row_segment_write_chunk_bytes: crate::replica::ROW_SEGMENT_WRITE_CHUNK_BYTES,
            row_segment_decoded_bytes_max: crate::replica::ROW_SEGMENT_DECODED_BYTES_MAX_DEFAULT,
            row_segment_backlog_records_max:
                crate::replica::ROW_SEGMENT_BACKLOG_RECORDS_MAX_DEFAULT,
            query_time_max: None,
        }
    }
}

/// Which timestamp a query reads at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    /// Exactly `T`: waits until the watermark reaches it. The default read
    /// uses the node's latest commit timestamp, so it sees every prior commit.
    At(WriteTime),
    /// The replica's watermark now: no waiting, possibly stale.
    Watermark,
    /// At least `now - max_staleness`: reads at once when the watermark is
    /// that fresh, otherwise waits for it.
    BoundedStaleness {
        now: WriteTime,
        max_staleness: Duration,
    },
}

/// Where a table's rows come from: the replica at a snapshot, or (in the
/// node) the row store. The query engine above is the same for both, so a
/// routed query and its forced-store twin give the same answer shape.
pub trait PartitionSource: Send + Sync + std::fmt::Debug {
    /// The live partitions of `table` that `filter` selects, calling
    /// `charge(bytes)` before holding data so the memory pool can stop the
    /// read with `ResourcesExhausted`.
    ///
    /// # Errors
    /// Whatever the source fails with; `charge`'s error.
    fn read(
        &self,
        table: &Arc<TableDef>,
        filter: &PartitionFilter,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<(Arc<TableDef>, Vec<Partition>)>;

    /// Says what the scan reads, for `EXPLAIN`.
    fn describe(&self) -> String;

    /// A full scan of `table` through a typed row segment (Parquet), when
    /// the source has a usable one; `None` to read with
    /// [`PartitionSource::read_batch`].
    ///
    /// # Errors
    /// As [`PartitionSource::read`].
    fn rows_scan(
        &self,
        _table: &Arc<TableDef>,
        _charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Option<RowsScan>> {
        Ok(None)
    }

    /// [`PartitionSource::read`] as a batch of the `projection` of
    /// [`table_schema`] (`None`: every column).
    ///
    /// # Errors
    /// As [`PartitionSource::read`]; as [`to_projected_batch`].
    fn read_batch(
        &self,
        table: &Arc<TableDef>,
        filter: &PartitionFilter,
        projection: Option<&[usize]>,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<RecordBatch> {
        let (def, partitions) = self.read(table, filter, charge)?;
        to_projected_batch(&def, &partitions, projection)
    }
}

/// The replica at one snapshot.
#[derive(Debug)]
struct ReplicaSource {
    replica: Arc<Replica>,
    snapshot: WriteTime,
}

impl PartitionSource for ReplicaSource {
    fn read(
        &self,
        table: &Arc<TableDef>,
        filter: &PartitionFilter,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<(Arc<TableDef>, Vec<Partition>)> {
        self.replica
            .read_within(table.id, self.snapshot, filter, charge)
    }

    fn describe(&self) -> String {
        format!("columnar replica at snapshot {}", self.snapshot.0)
    }

    fn rows_scan(
        &self,
        table: &Arc<TableDef>,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Option<RowsScan>> {
        // The decode (first scan of a segment) runs after read_rows_scan let
        // go of the replica's state lock.
        let Some(mut scan) = self
            .replica
            .read_rows_scan(table.id, self.snapshot, charge)?
        else {
            return Ok(None);
        };
        scan.decoded = self.replica.row_segment_batches(&scan.segment)?;
        Ok(Some(scan))
    }

    fn read_batch(
        &self,
        table: &Arc<TableDef>,
        filter: &PartitionFilter,
        projection: Option<&[usize]>,
        charge: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<RecordBatch> {
        match filter {
            PartitionFilter::All => {
                let batch = self
                    .replica
                    .read_all_batch(table.id, self.snapshot, charge)?;
                match projection {
                    Some(projection) => batch.project(projection).map_err(|error| {
                        Error::Internal(format!("project a cached scan: {error}"))
                    }),
                    None => Ok(batch),
                }
            }
            PartitionFilter::Key(_) => {
                let (def, partitions) = self.read(table, filter, charge)?;
                to_projected_batch(&def, &partitions, projection)
            }
        }
    }
}

/// A query's answer and the snapshot it was computed at.
#[derive(Debug)]
pub struct QueryResult {
    pub snapshot: WriteTime,
    /// The result's schema, also when no batch came back (an empty result
    /// still tells a client its columns).
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// The node's analytic engine: the replica plus the SQL entry.
#[derive(Debug)]
pub struct Columnar {
    replica: Arc<Replica>,
    options: ColumnarOptions,
    /// Always `Some` until drop, which shuts it down without blocking (a
    /// runtime may not be dropped inside another one).
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<Semaphore>,
    /// The session every query starts from: configuration, functions,
    /// optimizer rules, and one runtime environment (the memory pool and
    /// the Parquet metadata cache, so a row segment's footer is parsed once,
    /// not per query; row segments are immutable files with unique names).
    /// Each query copies it with a catalog of its own snapshot.
    base_state: datafusion::execution::SessionState,
}

impl Columnar {
    /// Opens the replica in `dir` and starts the analytics runtime.
    ///
    /// # Errors
    /// As [`Replica::open`]; `Io` if the runtime cannot start.
    pub fn open(dir: &std::path::Path, options: ColumnarOptions) -> Result<Columnar> {
        let mut replica = Replica::open(dir, options.delta_versions_max)?;
        replica.set_scan_cache_bytes_max(options.scan_cache_bytes_max);
        replica.set_row_segment_dirty_percent_max(options.row_segment_dirty_percent_max);
        replica.set_row_segment_write_chunk_bytes(options.row_segment_write_chunk_bytes);
        replica.set_row_segment_decoded_bytes_max(options.row_segment_decoded_bytes_max);
        replica.set_row_segment_backlog_records_max(options.row_segment_backlog_records_max);
        let replica = Arc::new(replica);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.analytics_threads.max(1))
            .thread_name("concord-analytics")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                context: "start the analytics runtime".into(),
                source,
            })?;
        let memory_pool: Arc<dyn MemoryPool> =
            Arc::new(GreedyMemoryPool::new(options.memory_pool_bytes));
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&memory_pool))
            .build_arc()
            .map_err(map_datafusion_error)?;
        let config = SessionConfig::new()
            .with_target_partitions(options.analytics_threads.max(1))
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false);
        let base_state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime_env)
            .with_default_features()
            .build();
        Ok(Columnar {
            replica,
            permits: Arc::new(Semaphore::new(options.queries_in_flight_max.max(1))),
            options,
            runtime: Some(runtime),
            base_state,
        })
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the analytics runtime lives until Columnar drops")
    }

    /// [`Columnar::sql`] for callers inside an async runtime (endpoints): the
    /// wait and the query run on the analytics runtime's blocking pool, so the
    /// caller's runtime is never blocked.
    ///
    /// # Errors
    /// As [`Columnar::sql`]; `Internal` if the query task panicked.
    pub async fn sql_async(
        self: &Arc<Self>,
        query: String,
        snapshot: Snapshot,
    ) -> Result<QueryResult> {
        let columnar = Arc::clone(self);
        self.runtime()
            .spawn_blocking(move || columnar.sql(&query, snapshot))
            .await
            .map_err(|error| Error::Internal(format!("analytic query task failed: {error}")))?
    }

    /// Runs `query` at `snapshot` and returns its batches. It blocks: call it
    /// from a thread outside any tokio runtime, or use [`Columnar::sql_async`].
    ///
    /// # Errors
    /// `ResourcesExhausted` when too many queries run or the memory pool is
    /// exhausted; `SnapshotTimeout`, `SnapshotTooOld`; `Sql` for plan and
    /// execution errors.
    pub fn sql(&self, query: &str, snapshot: Snapshot) -> Result<QueryResult> {
        let _permit = self.permit()?;
        let at = self.resolve(snapshot)?;
        let _guard = self.replica.hold_snapshot(at)?;
        let source = Arc::new(ReplicaSource {
            replica: Arc::clone(&self.replica),
            snapshot: at,
        });
        let (schema, batches) = self.run(query, source, &self.replica.tables())?;
        Ok(QueryResult {
            snapshot: at,
            schema,
            batches,
        })
    }

    /// Runs `query` over `tables` read from `source` (the node's row store),
    /// under the same concurrency limit and memory pool as replica queries.
    ///
    /// # Errors
    /// As [`Columnar::sql`], less the snapshot errors.
    pub fn sql_over(
        &self,
        query: &str,
        source: Arc<dyn PartitionSource>,
        tables: &[Arc<TableDef>],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let _permit = self.permit()?;
        self.run(query, source, tables)
    }

    /// Waits for the snapshot `snapshot` names and returns its timestamp.
    ///
    /// # Errors
    /// `SnapshotTimeout` when the watermark does not reach it in
    /// `snapshot_wait_max`.
    pub fn resolve(&self, snapshot: Snapshot) -> Result<WriteTime> {
        Ok(match snapshot {
            Snapshot::At(at) => {
                self.replica
                    .wait_for_watermark(at, self.options.snapshot_wait_max)?;
                at
            }
            Snapshot::Watermark => {
                // Right after a rebuild the watermark may be below the horizon
                // (`Replica::rebuild`): the first readable snapshot is the horizon.
                self.replica
                    .wait_for_watermark(self.replica.horizon(), self.options.snapshot_wait_max)?;
                self.replica.watermark()
            }
            Snapshot::BoundedStaleness { now, max_staleness } => {
                let oldest = WriteTime(now.0.saturating_sub(max_staleness.as_micros() as i64))
                    .max(self.replica.horizon());
                self.replica
                    .wait_for_watermark(oldest, self.options.snapshot_wait_max)?;
                self.replica.watermark().max(oldest)
            }
        })
    }

    /// Whether every table scan of `query` pins one full partition key with
    /// equalities (`pk1 = 1 AND pk2 = 'x'`): a point or partition lookup,
    /// which the row store answers best. Plans the query over `tables`
    /// without reading any data. `EXPLAIN` is looked through.
    ///
    /// # Errors
    /// `Sql` when the query does not plan.
    pub fn pins_partitions(&self, query: &str, tables: &[Arc<TableDef>]) -> Result<bool> {
        #[derive(Debug)]
        struct NoData;
        impl PartitionSource for NoData {
            fn read(
                &self,
                _: &Arc<TableDef>,
                _: &PartitionFilter,
                _: &mut dyn FnMut(usize) -> Result<()>,
            ) -> Result<(Arc<TableDef>, Vec<Partition>)> {
                Err(Error::Internal(
                    "routing analysis must not read data".into(),
                ))
            }
            fn describe(&self) -> String {
                "routing analysis".into()
            }
        }
        let context = self.session(Arc::new(NoData), tables, None)?;
        let pinned = self.runtime().block_on(async {
            let plan = plan_query(&context, query, tables).await?;
            let plan = match plan {
                LogicalPlan::Explain(explain) => explain.plan.as_ref().clone(),
                LogicalPlan::Analyze(analyze) => analyze.input.as_ref().clone(),
                plan => plan,
            };
            let optimized = context.state().optimize(&plan)?;
            let mut n_scans = 0;
            let mut all_pinned = true;
            optimized.apply(|node| {
                if let LogicalPlan::TableScan(scan) = node {
                    n_scans += 1;
                    let pinned = tables
                        .iter()
                        .find(|def| {
                            scan.table_name.table() == def.name
                                && scan
                                    .table_name
                                    .schema()
                                    .is_none_or(|keyspace| keyspace == def.keyspace)
                        })
                        .is_some_and(|def| pinned_partition(def, &scan.filters).is_some());
                    all_pinned &= pinned;
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            Ok::<bool, DataFusionError>(n_scans > 0 && all_pinned)
        });
        pinned.map_err(map_datafusion_error)
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            Error::ResourcesExhausted(format!(
                "{} analytic queries are running (queries_in_flight_max)",
                self.options.queries_in_flight_max
            ))
        })
    }

    fn run(
        &self,
        query: &str,
        source: Arc<dyn PartitionSource>,
        tables: &[Arc<TableDef>],
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let deadline = self.options.query_time_max.map(|limit| Deadline {
            started: Instant::now(),
            limit,
        });
        let context = self.session(source, tables, deadline)?;
        let query = async {
            let plan = plan_query(&context, query, tables).await?;
            let frame = context.execute_logical_plan(plan).await?;
            let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await?;
            // The batches' own schema when there are any (what an IPC
            // writer must announce); the plan's otherwise.
            let schema = batches.first().map_or(planned, RecordBatch::schema);
            Ok((schema, batches))
        };
        self.runtime().block_on(async {
            match deadline {
                // Dropping the query's future on timeout cancels its tasks.
                Some(deadline) => tokio::time::timeout(deadline.limit, query)
                    .await
                    .map_err(|_| deadline.error())?
                    .map_err(map_datafusion_error),
                None => query.await.map_err(map_datafusion_error),
            }
        })
    }

    fn session(
        &self,
        source: Arc<dyn PartitionSource>,
        tables: &[Arc<TableDef>],
        deadline: Option<Deadline>,
    ) -> Result<SessionContext> {
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog
            .register_schema("public", Arc::new(MemorySchemaProvider::new()))
            .map_err(map_datafusion_error)?;
        catalogs.register_catalog("datafusion".into(), Arc::clone(&catalog) as _);
        let state = SessionStateBuilder::new_from_existing(self.base_state.clone())
            .with_catalog_list(catalogs)
            .build();
        let context = SessionContext::new_with_state(state);
        let mut keyspaces: BTreeMap<String, Arc<MemorySchemaProvider>> = BTreeMap::new();
        for def in tables {
            let schema = keyspaces
                .entry(def.keyspace.clone())
                .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
            let table = SourceTable::new(Arc::clone(&source), def.clone())?.with_deadline(deadline);
            schema
                .register_table(def.name.clone(), Arc::new(table))
                .map_err(map_datafusion_error)?;
        }
        for (name, schema) in keyspaces {
            catalog
                .register_schema(&name, schema)
                .map_err(map_datafusion_error)?;
        }
        Ok(context)
    }
}

impl Drop for Columnar {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Plans `query`: parsed, with `*` over a replica table not expanding to the
/// hidden columns ([`hide_hidden_columns`]), then DataFusion's planner.
async fn plan_query(
    context: &SessionContext,
    query: &str,
    tables: &[Arc<TableDef>],
) -> datafusion::error::Result<LogicalPlan> {
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(query, &dialect)?;
    hide_hidden_columns(&mut statement, tables);
    state.statement_to_plan(statement).await
}

/// Makes `*` leave out the hidden columns ([`WRITE_TIME_COLUMN`],
/// [`DELETED_COLUMN`]), which stay selectable by name: `*` over a FROM with
/// exactly one of `tables` gets `EXCLUDE (hidden)`, and `t.*` naming one of
/// them too. A `*` over a join of two or more of them is left as is (an
/// unqualified EXCLUDE would be ambiguous): name the columns, or use `a.*, b.*`.
pub fn hide_hidden_columns(statement: &mut DfStatement, tables: &[Arc<TableDef>]) {
    match statement {
        DfStatement::Statement(statement) => {
            let _ = statement.visit(&mut HideHidden { tables });
        }
        DfStatement::Explain(explain) => hide_hidden_columns(&mut explain.statement, tables),
        _ => {}
    }
}

struct HideHidden<'a> {
    tables: &'a [Arc<TableDef>],
}

impl VisitorMut for HideHidden<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut ast::Query) -> std::ops::ControlFlow<()> {
        self.set_expr(&mut query.body);
        std::ops::ControlFlow::Continue(())
    }
}

impl HideHidden<'_> {
    fn set_expr(&self, body: &mut ast::SetExpr) {
        match body {
            ast::SetExpr::Select(select) => self.select(select),
            ast::SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            _ => {}
        }
    }

    /// Whether `name` names one of the replica's tables.
    fn is_replica_table(&self, name: &ast::ObjectName) -> bool {
        let parts: Vec<&ast::Ident> = name.0.iter().filter_map(|part| part.as_ident()).collect();
        let matches = |ident: &ast::Ident, text: &str| match ident.quote_style {
            Some(_) => ident.value == text,
            None => ident.value.eq_ignore_ascii_case(text),
        };
        let Some((table, qualifiers)) = parts.split_last() else {
            return false;
        };
        self.tables.iter().any(|def| {
            matches(table, &def.name)
                && qualifiers
                    .last()
                    .is_none_or(|keyspace| matches(keyspace, &def.keyspace))
        })
    }

    fn select(&self, select: &mut ast::Select) {
        // (the name `t.*` may use, whether the relation is a replica table)
        let mut relations: Vec<(Option<ast::Ident>, bool)> = Vec::new();
        for from in &select.from {
            for factor in
                std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
            {
                relations.push(match factor {
                    ast::TableFactor::Table { name, alias, .. } => {
                        let qualifier = match alias {
                            Some(alias) => Some(alias.name.clone()),
                            None => name.0.last().and_then(|part| part.as_ident()).cloned(),
                        };
                        (qualifier, self.is_replica_table(name))
                    }
                    ast::TableFactor::Derived { alias, .. } => {
                        (alias.as_ref().map(|alias| alias.name.clone()), false)
                    }
                    _ => (None, false),
                });
            }
        }
        let n_replica = relations.iter().filter(|(_, replica)| *replica).count();
        for item in &mut select.projection {
            match item {
                ast::SelectItem::Wildcard(options) if n_replica == 1 => exclude_hidden(options),
                ast::SelectItem::QualifiedWildcard(
                    ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                    options,
                ) => {
                    let named = name.0.last().and_then(|part| part.as_ident());
                    let replica = relations.iter().any(|(qualifier, replica)| {
                        *replica
                            && qualifier
                                .as_ref()
                                .zip(named)
                                .is_some_and(|(q, n)| q.value.eq_ignore_ascii_case(&n.value))
                    });
                    if replica {
                        exclude_hidden(options);
                    }
                }
                _ => {}
            }
        }
    }
}

fn exclude_hidden(options: &mut ast::WildcardAdditionalOptions) {
    let hidden = [WRITE_TIME_COLUMN, DELETED_COLUMN];
    let mut names: Vec<ast::ObjectName> = match options.opt_exclude.take() {
        Some(ast::ExcludeSelectItem::Single(name)) => vec![name],
        Some(ast::ExcludeSelectItem::Multiple(names)) => names,
        None => Vec::new(),
    };
    for column in hidden {
        let named = names.iter().any(|name| {
            name.0
                .last()
                .and_then(|part| part.as_ident())
                .is_some_and(|ident| ident.value.eq_ignore_ascii_case(column))
        });
        if !named {
            names.push(ast::ObjectName::from(vec![ast::Ident::new(column)]));
        }
    }
    options.opt_exclude = Some(ast::ExcludeSelectItem::Multiple(names));
}

fn map_datafusion_error(error: DataFusionError) -> Error {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(message) => Error::ResourcesExhausted(message.clone()),
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(Error::ResourcesExhausted(message)) => Error::ResourcesExhausted(message.clone()),
            Some(Error::ValueOutOfRange { value, reason }) => Error::ValueOutOfRange {
                value: value.clone(),
                reason: reason.clone(),
            },
            Some(Error::SnapshotTooOld { snapshot, horizon }) => Error::SnapshotTooOld {
                snapshot: *snapshot,
                horizon: *horizon,
            },
            _ => Error::Sql(error.to_string()),
        },
        _ => Error::Sql(error.to_string()),
    }
}

/// The Arrow schema of a table: partition key, clustering, then the other
/// columns in declaration order, then the hidden columns.
///
/// # Errors
/// `UnsupportedType` for a column type with no mapping.
pub fn table_schema(def: &TableDef) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for column in ordered_columns(def) {
        let nullable = !matches!(column.kind, ColumnKind::PartitionKey);
        fields.push(types::field(&column.name, &column.ty, nullable)?);
    }
    fields.push(Field::new(
        WRITE_TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
    Ok(Arc::new(Schema::new(fields)))
}

fn ordered_columns(def: &TableDef) -> Vec<&concord_storage::schema::ColumnDef> {
    let mut columns: Vec<_> = def.partition_key().collect();
    columns.extend(def.clustering());
    columns.extend(def.value_columns());
    columns
}

/// One output row per live row; a partition with only static data gives one
/// row with null clustering and regular columns (as CQL does).
pub fn partition_rows(def: &TableDef, partitions: &[Partition]) -> Vec<Vec<Option<CqlValue>>> {
    let columns = ordered_columns(def);
    let mut out = Vec::new();
    for partition in partitions {
        let statics = partition.static_row.as_ref();
        let mut emit = |row: Option<&concord_storage::rows::Row>| {
            let mut values = Vec::with_capacity(columns.len());
            let mut key_idx = 0;
            let mut clustering_idx = 0;
            for column in &columns {
                values.push(match column.kind {
                    ColumnKind::PartitionKey => {
                        key_idx += 1;
                        partition.key.get(key_idx - 1).cloned()
                    }
                    ColumnKind::Clustering(_) => {
                        clustering_idx += 1;
                        row.and_then(|row| row.clustering.get(clustering_idx - 1).cloned())
                    }
                    ColumnKind::Static => statics
                        .and_then(|s| s.columns.get(&column.id))
                        .map(|c| c.value.clone()),
                    ColumnKind::Regular => row
                        .and_then(|row| row.columns.get(&column.id))
                        .map(|c| c.value.clone()),
                });
            }
            out.push(values);
        };
        if partition.rows.is_empty() {
            emit(None);
        }
        for row in &partition.rows {
            emit(Some(row));
        }
    }
    out
}

fn row_write_times(partitions: &[Partition]) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for partition in partitions {
        let newest =
            |row: &concord_storage::rows::Row| row.columns.values().map(|c| c.write_time.0).max();
        if partition.rows.is_empty() {
            out.push(partition.static_row.as_ref().and_then(newest));
        }
        out.extend(partition.rows.iter().map(newest));
    }
    out
}

/// Converts partitions to one record batch of [`table_schema`].
///
/// # Errors
/// As [`types::to_array`].
pub fn to_record_batch(def: &TableDef, partitions: &[Partition]) -> Result<RecordBatch> {
    to_projected_batch(def, partitions, None)
}

/// The values of one column, one per output row (as [`partition_rows`]
/// lays rows out), borrowed from `partitions`.
fn column_values<'a>(
    column: &concord_storage::schema::ColumnDef,
    key_idx: usize,
    clustering_idx: usize,
    partitions: &'a [Partition],
) -> Vec<Option<&'a CqlValue>> {
    let mut out = Vec::new();
    for partition in partitions {
        let statics = partition.static_row.as_ref();
        let value = |row: Option<&'a concord_storage::rows::Row>| match column.kind {
            ColumnKind::PartitionKey => partition.key.get(key_idx),
            ColumnKind::Clustering(_) => row.and_then(|row| row.clustering.get(clustering_idx)),
            ColumnKind::Static => statics
                .and_then(|s| s.columns.get(&column.id))
                .map(|c| &c.value),
            ColumnKind::Regular => row
                .and_then(|row| row.columns.get(&column.id))
                .map(|c| &c.value),
        };
        if partition.rows.is_empty() {
            out.push(value(None));
        }
        out.extend(partition.rows.iter().map(|row| value(Some(row))));
    }
    out
}

/// Converts partitions to a record batch of the `projection` (indices into
/// [`table_schema`]'s fields; `None` for all): only projected columns are
/// converted.
///
/// # Errors
/// As [`types::to_array`].
pub fn to_projected_batch(
    def: &TableDef,
    partitions: &[Partition],
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let full_schema = table_schema(def)?;
    let all: Vec<usize> = (0..full_schema.fields().len()).collect();
    let projection = projection.unwrap_or(&all);
    let schema = Arc::new(
        full_schema
            .project(projection)
            .map_err(|error| Error::Internal(format!("project the table schema: {error}")))?,
    );
    let columns = ordered_columns(def);
    let n_rows: usize = partitions.iter().map(|p| p.rows.len().max(1)).sum();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(projection.len());
    for &idx in projection {
        if let Some(column) = columns.get(idx) {
            let position = |kind: fn(&ColumnKind) -> bool| {
                columns[..idx].iter().filter(|c| kind(&c.kind)).count()
            };
            let key_idx = position(|k| matches!(k, ColumnKind::PartitionKey));
            let clustering_idx = position(|k| matches!(k, ColumnKind::Clustering(_)));
            let values = column_values(column, key_idx, clustering_idx, partitions);
            arrays.push(types::to_array(&column.ty, &values)?);
        } else if idx == columns.len() {
            arrays.push(Arc::new(
                TimestampMicrosecondArray::from(row_write_times(partitions)).with_timezone("UTC"),
            ));
        } else {
            arrays.push(Arc::new(BooleanArray::from(vec![false; n_rows])));
        }
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n_rows));
    RecordBatch::try_new_with_options(schema, arrays, &options)
        .map_err(|error| Error::Internal(format!("build record batch: {error}")))
}

/// A table read from one source (the replica at a snapshot, or the row
/// store): what the catalog hands DataFusion.
#[derive(Debug)]
struct SourceTable {
    source: Arc<dyn PartitionSource>,
    def: Arc<TableDef>,
    schema: SchemaRef,
    /// Memory of materialised scans, released when the query's context drops.
    reservations: Mutex<Vec<MemoryReservation>>,
    /// Row segments the query's Parquet scans read: kept (so their files
    /// stay) until the query's context drops.
    row_segments: Mutex<Vec<Arc<RowSegment>>>,
    /// The query's time limit (`ColumnarOptions::query_time_max`), checked
    /// every time a scan charges the memory pool.
    deadline: Option<Deadline>,
}

impl SourceTable {
    fn new(source: Arc<dyn PartitionSource>, def: Arc<TableDef>) -> Result<Self> {
        Ok(SourceTable {
            schema: table_schema(&def)?,
            source,
            def,
            reservations: Mutex::new(Vec::new()),
            row_segments: Mutex::new(Vec::new()),
            deadline: None,
        })
    }

    fn with_deadline(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// `charge` for a scan: the query's deadline, then the memory pool.
    fn charge(&self, reservation: &MemoryReservation, bytes: usize) -> Result<()> {
        if let Some(deadline) = &self.deadline {
            deadline.check()?;
        }
        reservation
            .try_grow(bytes)
            .map_err(|error| Error::ResourcesExhausted(error.to_string()))
    }
}

/// When a query started and how long it may run
/// (`ColumnarOptions::query_time_max`).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    started: Instant,
    limit: Duration,
}

impl Deadline {
    fn error(&self) -> Error {
        Error::ResourcesExhausted(format!(
            "the query ran past query_time_max ({} ms) and was stopped",
            self.limit.as_millis()
        ))
    }

    fn check(&self) -> Result<()> {
        if self.started.elapsed() > self.limit {
            return Err(self.error());
        }
        Ok(())
    }
}

/// The partition key a conjunction of filters pins, if it pins all of it.
fn pinned_partition(def: &TableDef, filters: &[Expr]) -> Option<Vec<CqlValue>> {
    let mut values = Vec::new();
    for column in def.partition_key() {
        let value = filters
            .iter()
            .find_map(|filter| equality_literal(filter, &column.name))
            .and_then(|scalar| scalar_to_cql(&scalar, &column.ty))?;
        values.push(value);
    }
    Some(values)
}

/// `column = literal` or `literal = column`.
fn equality_literal(filter: &Expr, column: &str) -> Option<ScalarValue> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
        return None;
    };
    if *op != Operator::Eq {
        return None;
    }
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(value, _)) | (Expr::Literal(value, _), Expr::Column(c))
            if c.name == column && !value.is_null() =>
        {
            Some(value.clone())
        }
        _ => None,
    }
}

fn scalar_to_cql(scalar: &ScalarValue, ty: &concord_storage::types::CqlType) -> Option<CqlValue> {
    let target = types::data_type(ty).ok()?;
    let array = scalar.to_array().ok()?;
    let cast = arrow::compute::cast(&array, &target).ok()?;
    // A cast that changes the value (e.g. 1.5 to an int column) pins nothing.
    let back = arrow::compute::cast(&cast, array.data_type()).ok()?;
    if back.as_ref() != array.as_ref() {
        return None;
    }
    types::from_array(ty, cast.as_ref()).ok()?.pop()?
}

impl SourceTable {
    /// The plan of a full scan through a row segment: DataFusion's Parquet
    /// scan of the segment (projection, the query's filters as a pruning
    /// predicate, one byte range per analytics thread), less the excluded
    /// partitions, in union with the reconciled rows of those partitions.
    async fn row_segment_plan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        rows_scan: RowsScan,
        reservation: MemoryReservation,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let external = |error: Error| DataFusionError::External(Box::new(error));
        let file_schema = row_segment::file_schema(&rows_scan.def).map_err(external)?;
        let n_table_fields = self.schema.fields().len();
        let projection: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..n_table_fields).collect(),
        };
        // The runtime's metadata cache: the footer is parsed once per segment.
        let store = state
            .runtime_env()
            .object_store(ObjectStoreUrl::local_filesystem())?;
        let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut source = ParquetSource::new(Arc::clone(&file_schema))
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                Arc::clone(&store),
                Arc::clone(&metadata_cache),
            )));
        if let Some(predicate) = datafusion::logical_expr::utils::conjunction(filters.to_vec()) {
            let df_schema = DFSchema::try_from(Arc::clone(&file_schema))?;
            // The predicate prunes row groups and pages and filters rows while
            // they are decoded (the other columns of a filtered-out row are
            // never materialised); DataFusion still applies every filter above.
            if let Ok(physical) = state.create_physical_expr(predicate, &df_schema) {
                source = source
                    .with_predicate(physical)
                    .with_pushdown_filters(true)
                    .with_reorder_filters(true);
            }
        }
        let segment = &rows_scan.segment;
        let path = segment.path().to_string_lossy().into_owned();
        let size = segment.size_bytes;
        let n_ranges = (state.config().target_partitions().max(1) as u64).min(size.max(1));
        let step = size.div_ceil(n_ranges).max(1);
        // The file's statistics (row count, per-column min/max and null
        // counts from its footer, through the metadata cache) let the
        // optimizer estimate filters and pick join sides and orders. They
        // are inexact: excluded and reconciled partitions change the rows,
        // so no aggregate is ever answered from them.
        let statistics = {
            let file = PartitionedFile::new(path.clone(), size);
            DFParquetMetadata::new(store.as_ref(), &file.object_meta)
                .with_file_metadata_cache(Some(Arc::clone(&metadata_cache)))
                .fetch_statistics(&file_schema)
                .await
                .map(|statistics| statistics.to_inexact())
                .unwrap_or_else(|_| Statistics::new_unknown(&file_schema))
        };
        let groups: Vec<FileGroup> = (0..n_ranges)
            .map(|idx| {
                let start = (idx * step).min(size) as i64;
                let end = ((idx + 1) * step).min(size) as i64;
                FileGroup::new(vec![PartitionedFile::new_with_range(
                    path.clone(),
                    size,
                    start,
                    end,
                )])
            })
            .collect();
        let mut file_projection = projection.clone();
        let exclude = !rows_scan.excluded.is_empty();
        if exclude {
            file_projection.push(n_table_fields);
        }
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(Some(file_projection.clone()))?
                .with_statistics(statistics.clone())
                .build();
        let mut plan: Arc<dyn ExecutionPlan> = match &rows_scan.decoded {
            // The segment's rows held decoded: the same rows from memory, no
            // Parquet decode (exact statistics: they are the file's rows).
            Some(batches) => {
                let n_partitions = n_ranges as usize;
                let per_partition = batches.len().div_ceil(n_partitions).max(1);
                let partitions: Vec<Vec<RecordBatch>> = batches
                    .chunks(per_partition)
                    .map(<[RecordBatch]>::to_vec)
                    .collect();
                let partitions = if partitions.is_empty() {
                    vec![Vec::new()]
                } else {
                    partitions
                };
                let schema = batches
                    .first()
                    .map_or_else(|| Arc::clone(&file_schema), RecordBatch::schema);
                let memory = MemorySourceConfig::try_new_exec(
                    &partitions,
                    schema,
                    Some(file_projection.clone()),
                )?;
                Arc::new(DecodedSegmentExec {
                    statistics: Arc::new(statistics.clone().project(Some(&file_projection))),
                    memory,
                })
            }
            None => DataSourceExec::from_data_source(config),
        };
        if exclude {
            let scanned = plan.schema();
            let partition = Arc::new(Column::new(row_segment::PARTITION_COLUMN, projection.len()));
            let list: Vec<Arc<dyn PhysicalExpr>> = rows_scan
                .excluded
                .iter()
                .map(|prefix| {
                    Arc::new(Literal::new(ScalarValue::Binary(Some(prefix.clone()))))
                        as Arc<dyn PhysicalExpr>
                })
                .collect();
            let keep = in_list(partition, list, &true, &scanned)?;
            plan = Arc::new(FilterExec::try_new(keep, plan)?);
            let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = (0..projection.len())
                .map(|idx| {
                    let name = scanned.field(idx).name().clone();
                    (
                        Arc::new(Column::new(&name, idx)) as Arc<dyn PhysicalExpr>,
                        name,
                    )
                })
                .collect();
            plan = Arc::new(ProjectionExec::try_new(columns, plan)?);
        }
        if !rows_scan.reconciled.is_empty() {
            let batch =
                to_projected_batch(&rows_scan.def, &rows_scan.reconciled, Some(&projection))
                    .map_err(external)?;
            reservation.try_grow(batch.get_array_memory_size())?;
            let memory = MemorySourceConfig::try_new_exec(&[vec![batch]], plan.schema(), None)?;
            plan = UnionExec::try_new(vec![plan, memory])?;
        }
        self.reservations.lock().push(reservation);
        self.row_segments
            .lock()
            .push(Arc::clone(&rows_scan.segment));
        Ok(plan)
    }
}

/// A scan of a row segment held decoded: the `MemoryExec` over its batches,
/// with the file's footer statistics (inexact, as for the Parquet scan) in
/// place of the memory source's own, which have no minimum or maximum, so the
/// optimizer estimates filters and join sides as it does over the file.
#[derive(Debug)]
struct DecodedSegmentExec {
    memory: Arc<DataSourceExec>,
    statistics: Arc<Statistics>,
}

impl DisplayAs for DecodedSegmentExec {
    fn fmt_as(&self, format: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "DecodedSegmentExec: ")?;
        self.memory.fmt_as(format, f)
    }
}

impl ExecutionPlan for DecodedSegmentExec {
    fn name(&self) -> &str {
        "DecodedSegmentExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.memory.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        self.memory.execute(partition, context)
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        Ok(match args.partition() {
            None => Arc::clone(&self.statistics),
            Some(_) => Arc::new(Statistics::new_unknown(&self.schema())),
        })
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Partition-key equalities narrow the scan, and every filter prunes
        // row groups of a row segment; DataFusion still applies every
        // filter, so Inexact is always correct.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let filter = match pinned_partition(&self.def, filters) {
            Some(key) => PartitionFilter::Key(key),
            None => PartitionFilter::All,
        };
        let external = |error: Error| DataFusionError::External(Box::new(error));
        if filter == PartitionFilter::All {
            let reservation =
                MemoryConsumer::new(format!("concord scan {}", self.def.qualified_name()))
                    .register(&state.runtime_env().memory_pool);
            let rows_scan = self
                .source
                .rows_scan(&self.def, &mut |bytes| self.charge(&reservation, bytes))
                .map_err(external)?;
            if let Some(rows_scan) = rows_scan {
                reservation.resize(0);
                let plan = self
                    .row_segment_plan(state, projection, filters, rows_scan, reservation)
                    .await?;
                return Ok(plan);
            }
        }
        // The cells read and the batch built are charged to the query's memory
        // pool as they grow, so an oversized scan fails with ResourcesExhausted
        // before it can exhaust the node.
        let reservation =
            MemoryConsumer::new(format!("concord scan {}", self.def.qualified_name()))
                .register(&state.runtime_env().memory_pool);
        let batch = self
            .source
            .read_batch(
                &self.def,
                &filter,
                projection.map(Vec::as_slice),
                &mut |bytes| self.charge(&reservation, bytes),
            )
            .map_err(external)?;
        // The cell view is gone; keep what the batch holds.
        reservation.resize(0);
        reservation.try_grow(batch.get_array_memory_size())?;
        self.reservations.lock().push(reservation);
        // One partition per analytics thread, so DataFusion scans in parallel.
        let n_partitions = state.config().target_partitions().max(1);
        let rows_per_partition = batch.num_rows().div_ceil(n_partitions).max(1);
        let partitions: Vec<Vec<RecordBatch>> = (0..batch.num_rows())
            .step_by(rows_per_partition)
            .map(|offset| {
                let len = rows_per_partition.min(batch.num_rows() - offset);
                vec![batch.slice(offset, len)]
            })
            .collect();
        let schema = batch.schema();
        let partitions = if partitions.is_empty() {
            vec![vec![batch]]
        } else {
            partitions
        };
        let plan = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
        Ok(plan)
    }
}
