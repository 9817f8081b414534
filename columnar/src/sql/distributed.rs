//! Distributed analytics (design/cluster.md, "Distributed analytics"): a
//! query whose token ranges this node does not all hold reads every range
//! exactly once, from one replica, at one snapshot `T`, and aggregates
//! partially where the rows are.
//!
//! ```text
//! coordinator: Columnar::sql_distributed(query, T, Distribution, runner)
//!   every replica table → DistributedTable; scan(projection, filters, limit) →
//!     FragmentsExec(ship = rows): one partition per node group of ranges
//!   physical rule PushPartialAggregate: AggregateExec(Partial) over
//!     [Projection|Filter|Repartition|Coalesce]* over FragmentsExec(rows)
//!     → FragmentsExec(ship = partial aggregate): each node runs the partial
//!     aggregate on its ranges, the coordinator's Final aggregate merges
//!   FragmentsExec partition → this node: run_fragment in process
//!                            other node: FragmentRunner::run (the server's Flight client);
//!                            a failure before any row → the ranges go to their next replica
//! fragment node: Columnar::fragment(FragmentRequest): wait watermark ≥ T (bounded),
//!   hold T, plan the same query with every table a RangeRestrictedTable
//!   (its rows filtered to the request's token ranges by the Murmur3 token
//!   of their partition key), find the fragment whose fingerprint the
//!   request names, run it, return its batches (≤ FRAGMENT_RESULT_BYTES_MAX)
//! ```
//!
//! A fragment is named by a fingerprint both sides compute from the same
//! query: the scan's table, projection, pushed filters and limit (logical
//! planning is deterministic), and for a partial aggregate the one-line
//! display of every operator between it and the scan (repartitions and
//! coalesces apart, which depend on the node's partition count). A node
//! that finds no such fragment refuses the request; it never runs another.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use concord_storage::cell::WriteTime;
use concord_storage::partitioner::{self, TokenRange};
use concord_storage::schema::TableDef;
use concord_storage::value::native;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, displayable,
};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::{Columnar, ReplicaSource, SourceTable, map_datafusion_error, plan_query, table_schema};
use crate::{Error, Result, types};

/// Remote fragments of one query running at once on the coordinator.
pub const FRAGMENTS_IN_FLIGHT_MAX: usize = 8;
/// The most bytes (Arrow memory) one fragment may return; more fails the
/// fragment with `ResourcesExhausted` (ship a partial aggregate, or filter).
pub const FRAGMENT_RESULT_BYTES_MAX: usize = 256 << 20;
/// How long the coordinator waits for one fragment's whole answer
/// (the fragment node's own snapshot wait, `snapshot_wait_max`, is inside it).
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the coordinator waits for a node's watermark probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The format of [`FragmentRequest`].
pub const FRAGMENT_REQUEST_FORMAT: u32 = 1;

/// What a coordinator asks a node to run: the fragment `fingerprint`
/// names, of `query` planned over the node's replica restricted to
/// `ranges`, at `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentRequest {
    pub format: u32,
    pub query: String,
    /// `T`, a write time in microseconds.
    pub snapshot: i64,
    pub ranges: Vec<TokenRange>,
    pub fingerprint: String,
}

/// Runs a fragment on another node (the server's Arrow Flight client).
#[async_trait]
pub trait FragmentRunner: Send + Sync + fmt::Debug {
    /// The batches of `request` run on `node`.
    ///
    /// # Errors
    /// Any failure: unreachable node, its refusal, its query error.
    async fn run(&self, node: u32, request: FragmentRequest) -> Result<Vec<RecordBatch>>;

    /// `node`'s replica watermark and merge horizon now (a probe: it also
    /// tells the coordinator the node answers).
    ///
    /// # Errors
    /// Any failure: the node is then left out of the query.
    async fn watermark(&self, node: u32) -> Result<(WriteTime, WriteTime)>;
}

/// Where a query's ranges are read: every range of the ring once, with its
/// replicas in order of preference (this node first when it holds the
/// range); the first is asked, the next ones when it fails.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// This node's id.
    pub local: u32,
    pub ranges: Vec<RangeReplicas>,
}

impl Distribution {
    /// Whether this node holds every range (no fragment leaves it).
    pub fn is_local(&self) -> bool {
        self.ranges
            .iter()
            .all(|(_, replicas)| replicas.first() == Some(&self.local))
    }

    /// The ranges grouped by their first replica, this node first.
    fn groups(&self) -> Vec<(u32, Vec<RangeReplicas>)> {
        let mut by_node: BTreeMap<u32, Vec<RangeReplicas>> = BTreeMap::new();
        for (range, replicas) in &self.ranges {
            if let Some(first) = replicas.first() {
                by_node
                    .entry(*first)
                    .or_default()
                    .push((*range, replicas.clone()));
            }
        }
        let mut groups: Vec<_> = by_node.into_iter().collect();
        groups.sort_by_key(|(node, _)| *node != self.local);
        groups
    }
}

/// A token range and its replicas in order of preference.
pub type RangeReplicas = (TokenRange, Vec<u32>);

/// Rows and batches the fragments of one query returned (a partial
/// aggregate returns far fewer rows than its fragment scanned).
#[derive(Debug, Default)]
pub struct FragmentStats {
    pub fragments: std::sync::atomic::AtomicU64,
    pub rows_received: std::sync::atomic::AtomicU64,
    pub retries: std::sync::atomic::AtomicU64,
}

/// What every fragment of one coordinated query shares.
struct Shared {
    query: String,
    snapshot: WriteTime,
    distribution: Distribution,
    runner: Arc<dyn FragmentRunner>,
    /// This node's own replica at `snapshot`, for its own fragment.
    local: LocalFragments,
    in_flight: Semaphore,
    stats: Arc<FragmentStats>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("snapshot", &self.snapshot)
            .field("distribution", &self.distribution)
            .finish_non_exhaustive()
    }
}

/// What runs a fragment on this node's replica.
#[derive(Clone)]
struct LocalFragments {
    replica: Arc<crate::replica::Replica>,
    base_state: datafusion::execution::SessionState,
    tables: Vec<Arc<TableDef>>,
}

impl Columnar {
    /// Runs `query` over every range of `distribution`, each read once at
    /// the snapshot `snapshot` names (resolved here: this node waits for
    /// its watermark; every fragment node waits for its own), this node's
    /// ranges in process and the others through `runner`.
    ///
    /// # Errors
    /// As [`Columnar::sql`]; a fragment's error when no replica of its
    /// ranges answered.
    pub fn sql_distributed(
        &self,
        query: &str,
        snapshot: super::Snapshot,
        distribution: Distribution,
        runner: Arc<dyn FragmentRunner>,
    ) -> Result<(super::QueryResult, Arc<FragmentStats>)> {
        let _permit = self.permit()?;
        let mut distribution = distribution;
        let at = self.distributed_snapshot(snapshot, &mut distribution, runner.as_ref())?;
        let _guard = self.replica.hold_snapshot(at)?;
        let tables = self.replica.tables();
        let stats = Arc::new(FragmentStats::default());
        let shared = Arc::new(Shared {
            query: query.to_owned(),
            snapshot: at,
            distribution,
            runner,
            local: LocalFragments {
                replica: Arc::clone(&self.replica),
                base_state: self.base_state.clone(),
                tables: tables.clone(),
            },
            in_flight: Semaphore::new(FRAGMENTS_IN_FLIGHT_MAX),
            stats: Arc::clone(&stats),
        });
        let state = fragment_state(&self.base_state, true);
        let context = self.session_with(state, &tables, |def| {
            Ok(Arc::new(DistributedTable {
                schema: table_schema(&def)?,
                def,
                shared: Arc::clone(&shared),
            }) as Arc<dyn TableProvider>)
        })?;
        let (schema, batches) = self
            .runtime()
            .block_on(async {
                let plan = plan_query(&context, query, &tables).await?;
                let frame = context.execute_logical_plan(plan).await?;
                let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
                let batches = frame.collect().await?;
                let schema = batches.first().map_or(planned, RecordBatch::schema);
                Ok((schema, batches))
            })
            .map_err(map_datafusion_error)?;
        Ok((
            super::QueryResult {
                snapshot: at,
                schema,
                batches,
            },
            stats,
        ))
    }

    /// Probes every other node of `distribution` (one that does not answer
    /// leaves every replica list), then picks the query's snapshot: `At(T)`
    /// is `T`; the watermark and bounded-staleness snapshots take the
    /// lowest watermark of the nodes asked first (so none waits), no older
    /// than the staleness bound or any of their merge horizons.
    fn distributed_snapshot(
        &self,
        snapshot: super::Snapshot,
        distribution: &mut Distribution,
        runner: &dyn FragmentRunner,
    ) -> Result<WriteTime> {
        let local = distribution.local;
        let mut nodes: Vec<u32> = distribution
            .ranges
            .iter()
            .flat_map(|(_, replicas)| replicas.iter().copied())
            .filter(|node| *node != local)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let probes = self
            .runtime()
            .block_on(futures::future::join_all(nodes.iter().map(
                |node| async move {
                    let answer = tokio::time::timeout(PROBE_TIMEOUT, runner.watermark(*node)).await;
                    (*node, answer)
                },
            )));
        let mut live: BTreeMap<u32, (WriteTime, WriteTime)> = BTreeMap::new();
        for (node, answer) in probes {
            match answer {
                Ok(Ok(marks)) => {
                    live.insert(node, marks);
                }
                Ok(Err(error)) => {
                    tracing::warn!(node, %error, "a node did not answer its probe; its ranges go to other replicas");
                }
                Err(_) => tracing::warn!(node, "a node's probe timed out (PROBE_TIMEOUT)"),
            }
        }
        for (range, replicas) in &mut distribution.ranges {
            replicas.retain(|node| *node == local || live.contains_key(node));
            if replicas.is_empty() {
                return Err(Error::Sql(format!(
                    "no replica of token range ({}, {}] answered (nodes down?)",
                    range.start.0, range.end.0
                )));
            }
        }
        if let super::Snapshot::At(at) = snapshot {
            return self.resolve(super::Snapshot::At(at));
        }
        let mine = self.resolve(snapshot)?;
        let asked: Vec<(WriteTime, WriteTime)> = distribution
            .groups()
            .iter()
            .filter_map(|(node, _)| live.get(node).copied())
            .collect();
        let mut at = asked
            .iter()
            .map(|(watermark, _)| *watermark)
            .fold(mine, WriteTime::min);
        if let super::Snapshot::BoundedStaleness { now, max_staleness } = snapshot {
            let oldest = WriteTime(now.0.saturating_sub(max_staleness.as_micros() as i64));
            at = at.max(oldest);
        }
        at = asked
            .iter()
            .map(|(_, horizon)| *horizon)
            .fold(at.max(self.replica.horizon()), WriteTime::max);
        self.resolve(super::Snapshot::At(at))
    }

    /// This replica's watermark and merge horizon (what a probe answers).
    pub fn watermarks(&self) -> (WriteTime, WriteTime) {
        (self.replica.watermark(), self.replica.horizon())
    }

    /// Runs the fragment `request` names on this node's replica (a
    /// coordinator on another node asked). Blocking, as [`Columnar::sql`].
    ///
    /// # Errors
    /// `SnapshotTimeout` / `SnapshotTooOld`; `Sql` when the query plans no
    /// fragment with that fingerprint (another Concord version, another
    /// schema); `ResourcesExhausted` past the limits.
    pub fn fragment(&self, request: &FragmentRequest) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        if request.format != FRAGMENT_REQUEST_FORMAT {
            return Err(Error::Sql(format!(
                "fragment request format {} (this node reads {FRAGMENT_REQUEST_FORMAT})",
                request.format
            )));
        }
        let _permit = self.permit()?;
        let at = self.resolve(super::Snapshot::At(WriteTime(request.snapshot)))?;
        let _guard = self.replica.hold_snapshot(at)?;
        let local = LocalFragments {
            replica: Arc::clone(&self.replica),
            base_state: self.base_state.clone(),
            tables: self.replica.tables(),
        };
        self.runtime()
            .block_on(local.run(request))
            .map_err(map_datafusion_error)
    }

    /// [`Columnar::fragment`] for callers inside an async runtime.
    ///
    /// # Errors
    /// As [`Columnar::fragment`].
    pub async fn fragment_async(
        self: &Arc<Self>,
        request: FragmentRequest,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let columnar = Arc::clone(self);
        self.runtime()
            .spawn_blocking(move || columnar.fragment(&request))
            .await
            .map_err(|error| Error::Internal(format!("fragment task failed: {error}")))?
    }

    fn session_with(
        &self,
        state: datafusion::execution::SessionState,
        tables: &[Arc<TableDef>],
        make: impl Fn(Arc<TableDef>) -> Result<Arc<dyn TableProvider>>,
    ) -> Result<SessionContext> {
        session_over(state, tables, make)
    }
}

/// The session state of a distributed query or a fragment: the node's,
/// without the rule that fuses a partial aggregate with its final one (the
/// split is where fragments cut), plus, on the coordinator, the rule that
/// ships partial aggregates.
fn fragment_state(
    base: &datafusion::execution::SessionState,
    coordinator: bool,
) -> datafusion::execution::SessionState {
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = base
        .physical_optimizers()
        .iter()
        .filter(|rule| rule.name() != "CombinePartialFinalAggregate")
        .cloned()
        .collect();
    if coordinator {
        rules.push(Arc::new(PushPartialAggregate));
    }
    SessionStateBuilder::new_from_existing(base.clone())
        .with_physical_optimizer_rules(rules)
        .build()
}

fn session_over(
    state: datafusion::execution::SessionState,
    tables: &[Arc<TableDef>],
    make: impl Fn(Arc<TableDef>) -> Result<Arc<dyn TableProvider>>,
) -> Result<SessionContext> {
    use datafusion::catalog::{
        CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
        MemorySchemaProvider, SchemaProvider,
    };
    let catalogs = Arc::new(MemoryCatalogProviderList::new());
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog
        .register_schema("public", Arc::new(MemorySchemaProvider::new()))
        .map_err(map_datafusion_error)?;
    catalogs.register_catalog("datafusion".into(), Arc::clone(&catalog) as _);
    let state = SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(catalogs)
        .build();
    let context = SessionContext::new_with_state(state);
    let mut keyspaces: BTreeMap<String, Arc<MemorySchemaProvider>> = BTreeMap::new();
    for def in tables {
        let schema = keyspaces
            .entry(def.keyspace.clone())
            .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
        schema
            .register_table(def.name.clone(), make(Arc::clone(def))?)
            .map_err(map_datafusion_error)?;
    }
    for (name, schema) in keyspaces {
        catalog
            .register_schema(&name, schema)
            .map_err(map_datafusion_error)?;
    }
    Ok(context)
}

impl LocalFragments {
    /// Plans `request.query` over this replica at `request.snapshot` (held
    /// by the caller) restricted to `request.ranges` and runs the fragment
    /// it names.
    async fn run(
        &self,
        request: &FragmentRequest,
    ) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
        let source = Arc::new(ReplicaSource {
            replica: Arc::clone(&self.replica),
            snapshot: WriteTime(request.snapshot),
        });
        let state = fragment_state(&self.base_state, false);
        let ranges: Arc<[TokenRange]> = request.ranges.clone().into();
        let context = session_over(state, &self.tables, |def| {
            Ok(Arc::new(RangeRestrictedTable {
                inner: SourceTable::new(source.clone(), Arc::clone(&def))?,
                def,
                ranges: Arc::clone(&ranges),
            }) as Arc<dyn TableProvider>)
        })
        .map_err(|error| DataFusionError::External(Box::new(error)))?;
        let logical = plan_query(&context, &request.query, &self.tables).await?;
        let plan = context.state().create_physical_plan(&logical).await?;
        let fragment = find_fragment(&plan, &request.fingerprint).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "this node plans no fragment {:?} for the query (another Concord version or \
                 schema?)",
                request.fingerprint
            ))
        })?;
        let schema = fragment.schema();
        let mut stream = datafusion::physical_plan::execute_stream(fragment, context.task_ctx())?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            bytes += batch.get_array_memory_size();
            if bytes > FRAGMENT_RESULT_BYTES_MAX {
                return Err(DataFusionError::External(Box::new(
                    Error::ResourcesExhausted(format!(
                        "a fragment's result passed {FRAGMENT_RESULT_BYTES_MAX} bytes \
                         (FRAGMENT_RESULT_BYTES_MAX)"
                    )),
                )));
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }
}

// ---------------------------------------------------------------- coordinator

/// A replica table on the coordinator: its scans are fragments.
#[derive(Debug)]
struct DistributedTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    shared: Arc<Shared>,
}

/// The fingerprint of a scan: what `TableProvider::scan` was given.
fn scan_fingerprint(
    def: &TableDef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> String {
    let filters: Vec<String> = filters.iter().map(ToString::to_string).collect();
    format!(
        "scan {} projection={projection:?} filters=[{}] limit={limit:?}",
        def.qualified_name(),
        filters.join(", ")
    )
}

#[async_trait]
impl TableProvider for DistributedTable {
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
        // As SourceTable: both sides must see the same scan arguments.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(projection) => Arc::new(self.schema.project(projection)?),
            None => Arc::clone(&self.schema),
        };
        Ok(Arc::new(FragmentsExec::new(
            Arc::clone(&self.shared),
            schema,
            scan_fingerprint(&self.def, projection, filters, limit),
            Ship::Rows,
        )))
    }
}

/// What a fragment sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ship {
    /// The scan's rows.
    Rows,
    /// The partial aggregate's state rows.
    PartialAggregate,
}

/// One partition per node group of ranges; each runs the fragment
/// `fingerprint` names on its node and yields what it returned.
#[derive(Debug)]
struct FragmentsExec {
    shared: Arc<Shared>,
    schema: SchemaRef,
    fingerprint: String,
    ship: Ship,
    groups: Vec<(u32, Vec<RangeReplicas>)>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl FragmentsExec {
    fn new(shared: Arc<Shared>, schema: SchemaRef, fingerprint: String, ship: Ship) -> Self {
        let groups = shared.distribution.groups();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        FragmentsExec {
            shared,
            schema,
            fingerprint,
            ship,
            groups,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for FragmentsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let ship = match self.ship {
            Ship::Rows => "rows",
            Ship::PartialAggregate => "partial aggregate",
        };
        let local = self.shared.distribution.local;
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|(node, ranges)| {
                let here = if *node == local { " (here)" } else { "" };
                format!("node {node}{here}: {} ranges", ranges.len())
            })
            .collect();
        // After execution (EXPLAIN ANALYZE): the rows the fragments sent.
        let shipped = self
            .metrics
            .clone_inner()
            .output_rows()
            .map(|rows| format!(", rows_shipped={rows}"))
            .unwrap_or_default();
        write!(
            f,
            "ConcordFragmentsExec: ship={ship}, snapshot={}, fragments=[{}]{shipped}, fragment={}",
            self.shared.snapshot.0,
            groups.join(", "),
            self.fingerprint
        )
    }
}

impl ExecutionPlan for FragmentsExec {
    fn name(&self) -> &str {
        "ConcordFragmentsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let ranges = self
            .groups
            .get(partition)
            .map(|(_, ranges)| ranges.clone())
            .unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        let fingerprint = self.fingerprint.clone();
        let schema = Arc::clone(&self.schema);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let run_schema = Arc::clone(&schema);
        let batches = async move {
            let batches = run_ranges(&shared, &fingerprint, ranges).await?;
            let mut out = Vec::with_capacity(batches.len());
            for batch in batches {
                shared.stats.rows_received.fetch_add(
                    batch.num_rows() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                out.push(Ok(conform(&run_schema, batch)?));
            }
            Ok::<_, DataFusionError>(futures::stream::iter(out))
        };
        let stream = futures::stream::once(batches)
            .try_flatten()
            .inspect_ok(move |batch| baseline.record_output(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// A fragment node's batch under the schema the coordinator planned (the
/// same columns; nullability or metadata may differ between a Parquet scan
/// and a batch built from cells).
fn conform(schema: &SchemaRef, batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), batch.columns().to_vec(), &options)
        .map_err(|error| {
            DataFusionError::Execution(format!(
                "a fragment returned columns {:?} where {:?} were planned: {error}",
                batch.schema(),
                schema
            ))
        })
}

/// Runs the fragment over `ranges`, each on its first replica; the ranges
/// of a node that fails go to their next replica (a node's failure before
/// it answered loses nothing: fragments are read-only and answered whole).
async fn run_ranges(
    shared: &Arc<Shared>,
    fingerprint: &str,
    ranges: Vec<RangeReplicas>,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let mut pending = ranges;
    let mut out = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while !pending.is_empty() {
        // Group what is left by its current first replica.
        let mut by_node: BTreeMap<u32, Vec<RangeReplicas>> = BTreeMap::new();
        for (range, replicas) in pending.drain(..) {
            match replicas.first() {
                Some(node) => by_node.entry(*node).or_default().push((range, replicas)),
                None => {
                    return Err(DataFusionError::External(Box::new(Error::Sql(format!(
                        "no replica of token range ({}, {}] answered: {}",
                        range.start.0,
                        range.end.0,
                        failures.join("; ")
                    )))));
                }
            }
        }
        for (node, group) in by_node {
            let request = FragmentRequest {
                format: FRAGMENT_REQUEST_FORMAT,
                query: shared.query.clone(),
                snapshot: shared.snapshot.0,
                ranges: group.iter().map(|(range, _)| *range).collect(),
                fingerprint: fingerprint.to_owned(),
            };
            shared
                .stats
                .fragments
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = if node == shared.distribution.local {
                shared
                    .local
                    .run(&request)
                    .await
                    .map(|(_, batches)| batches)
                    .map_err(|error| error.to_string())
            } else {
                let _slot = shared.in_flight.acquire().await.map_err(|_| {
                    DataFusionError::Internal("the fragment semaphore closed".into())
                })?;
                match tokio::time::timeout(FRAGMENT_TIMEOUT, shared.runner.run(node, request)).await
                {
                    Ok(answer) => answer.map_err(|error| error.to_string()),
                    Err(_) => Err(format!(
                        "no answer in {} s (FRAGMENT_TIMEOUT)",
                        FRAGMENT_TIMEOUT.as_secs()
                    )),
                }
            };
            match answer {
                Ok(batches) => out.extend(batches),
                Err(error) if node == shared.distribution.local => {
                    // This node's own replica failed: no other node is
                    // asked to cover for an error that is not a lost node.
                    return Err(DataFusionError::External(Box::new(Error::Sql(format!(
                        "the fragment on this node failed: {error}"
                    )))));
                }
                Err(error) => {
                    tracing::warn!(node, %error, "a fragment failed; its ranges go to their next replica");
                    failures.push(format!("node {node}: {error}"));
                    shared
                        .stats
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for (range, mut replicas) in group {
                        replicas.remove(0);
                        pending.push((range, replicas));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The coordinator's rule: a partial aggregate whose input is one
/// fragment scan (through projections, filters, repartitions) runs on the
/// fragment nodes.
#[derive(Debug)]
struct PushPartialAggregate;

impl PhysicalOptimizerRule for PushPartialAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let Some(fingerprint) = partial_fingerprint(node.as_ref(), &|leaf| {
                leaf.downcast_ref::<FragmentsExec>()
                    .filter(|exec| exec.ship == Ship::Rows)
                    .map(|exec| exec.fingerprint.clone())
            }) else {
                return Ok(Transformed::no(node));
            };
            let Some(scan) = find_leaf::<FragmentsExec>(&node) else {
                return Ok(Transformed::no(node));
            };
            let pushed: Arc<dyn ExecutionPlan> = Arc::new(FragmentsExec::new(
                Arc::clone(&scan.shared),
                node.schema(),
                fingerprint,
                Ship::PartialAggregate,
            ));
            Ok(Transformed::new(pushed, true, TreeNodeRecursion::Jump))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "ConcordPushPartialAggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Operators between a partial aggregate and its scan that depend on the
/// node's partition count: left out of fingerprints.
fn is_partitioning(node: &dyn ExecutionPlan) -> bool {
    matches!(
        node.name(),
        "RepartitionExec" | "CoalesceBatchesExec" | "CoalescePartitionsExec" | "CooperativeExec"
    )
}

/// Operators a shipped partial aggregate may have between it and its scan.
fn is_row_local(node: &dyn ExecutionPlan) -> bool {
    is_partitioning(node) || matches!(node.name(), "ProjectionExec" | "FilterExec")
}

/// The fingerprint of `node` if it is a partial aggregate over one scan
/// that `leaf` fingerprints.
fn partial_fingerprint(
    node: &dyn ExecutionPlan,
    leaf: &dyn Fn(&dyn ExecutionPlan) -> Option<String>,
) -> Option<String> {
    let aggregate = node.downcast_ref::<AggregateExec>()?;
    if *aggregate.mode() != AggregateMode::Partial {
        return None;
    }
    let mut parts = vec![displayable(node).one_line().to_string()];
    let mut current = Arc::clone(aggregate.input());
    loop {
        if let Some(scan) = leaf(current.as_ref()) {
            parts.push(scan);
            return Some(parts.join(" <- "));
        }
        if !is_row_local(current.as_ref()) || current.children().len() != 1 {
            return None;
        }
        if !is_partitioning(current.as_ref()) {
            parts.push(displayable(current.as_ref()).one_line().to_string());
        }
        let child = Arc::clone(current.children()[0]);
        current = child;
    }
}

fn find_leaf<T: ExecutionPlan>(plan: &Arc<dyn ExecutionPlan>) -> Option<&T> {
    let mut current = plan;
    loop {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        current = current.children().into_iter().next()?;
    }
}

/// The fragment of a fragment node's plan that `fingerprint` names.
fn find_fragment(
    plan: &Arc<dyn ExecutionPlan>,
    fingerprint: &str,
) -> Option<Arc<dyn ExecutionPlan>> {
    let leaf = |node: &dyn ExecutionPlan| {
        node.downcast_ref::<RestrictedScanExec>()
            .map(|exec| exec.fingerprint.clone())
    };
    if leaf(plan.as_ref()).as_deref() == Some(fingerprint)
        || partial_fingerprint(plan.as_ref(), &leaf).as_deref() == Some(fingerprint)
    {
        return Some(Arc::clone(plan));
    }
    plan.children()
        .into_iter()
        .find_map(|child| find_fragment(child, fingerprint))
}

// ------------------------------------------------------------ fragment node

/// A replica table read only within some token ranges.
#[derive(Debug)]
struct RangeRestrictedTable {
    inner: SourceTable,
    def: Arc<TableDef>,
    ranges: Arc<[TokenRange]>,
}

#[async_trait]
impl TableProvider for RangeRestrictedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let fingerprint = scan_fingerprint(&self.def, projection, filters, limit);
        let schema = self.inner.schema();
        let wanted: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        // The partition key columns come first in the table schema.
        let n_key = self.def.partition_key().len();
        let mut read: Vec<usize> = (0..n_key).chain(wanted.iter().copied()).collect();
        read.sort_unstable();
        read.dedup();
        let output: Vec<usize> = wanted
            .iter()
            .map(|idx| read.iter().position(|r| r == idx).unwrap_or_default())
            .collect();
        // No limit below the range filter: it would cut rows before it.
        let input = self.inner.scan(state, Some(&read), filters, None).await?;
        let out_schema = Arc::new(schema.project(&wanted)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&out_schema)),
            Partitioning::UnknownPartitioning(
                input.properties().output_partitioning().partition_count(),
            ),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(RestrictedScanExec {
            input,
            def: Arc::clone(&self.def),
            ranges: Arc::clone(&self.ranges),
            output,
            schema: out_schema,
            fingerprint,
            properties,
        }))
    }
}

/// The rows of `input` whose partition key's token lies in `ranges`,
/// projected to `output`.
#[derive(Debug)]
struct RestrictedScanExec {
    input: Arc<dyn ExecutionPlan>,
    def: Arc<TableDef>,
    ranges: Arc<[TokenRange]>,
    output: Vec<usize>,
    schema: SchemaRef,
    fingerprint: String,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for RestrictedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConcordRangeScanExec: {} token ranges, fragment={}",
            self.ranges.len(),
            self.fingerprint
        )
    }
}

impl ExecutionPlan for RestrictedScanExec {
    fn name(&self) -> &str {
        "ConcordRangeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("a range scan has one input".into()))?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&self.schema)),
            Partitioning::UnknownPartitioning(
                input.properties().output_partitioning().partition_count(),
            ),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(RestrictedScanExec {
            input,
            def: Arc::clone(&self.def),
            ranges: Arc::clone(&self.ranges),
            output: self.output.clone(),
            schema: Arc::clone(&self.schema),
            fingerprint: self.fingerprint.clone(),
            properties,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let def = Arc::clone(&self.def);
        let ranges = Arc::clone(&self.ranges);
        let output = self.output.clone();
        let schema = Arc::clone(&self.schema);
        let out_schema = Arc::clone(&schema);
        let stream = input.map(move |batch| {
            let batch = batch?;
            let keep = in_ranges(&def, &ranges, &batch)
                .map_err(|error| DataFusionError::External(Box::new(error)))?;
            let kept = arrow::compute::filter_record_batch(&batch, &keep)?;
            let columns = output
                .iter()
                .map(|idx| Arc::clone(kept.column(*idx)))
                .collect();
            let options = RecordBatchOptions::new().with_row_count(Some(kept.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                Arc::clone(&out_schema),
                columns,
                &options,
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Which rows of `batch` (its first columns the partition key) have a
/// token in `ranges`: Murmur3 of the serialized key, as the ring places it.
fn in_ranges(def: &TableDef, ranges: &[TokenRange], batch: &RecordBatch) -> Result<BooleanArray> {
    let keys: Vec<Vec<Option<concord_storage::value::CqlValue>>> = def
        .partition_key()
        .enumerate()
        .map(|(idx, column)| types::from_array(&column.ty, batch.column(idx).as_ref()))
        .collect::<Result<_>>()?;
    let key_types: Vec<_> = def.partition_key().map(|column| &column.ty).collect();
    let mut keep = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut components = Vec::with_capacity(keys.len());
        for (values, ty) in keys.iter().zip(&key_types) {
            let value = values[row].as_ref().ok_or_else(|| {
                Error::Internal("a replica row has a null partition key column".into())
            })?;
            components.push(native::serialize_to_vec(value, ty)?);
        }
        let refs: Vec<&[u8]> = components.iter().map(Vec::as_slice).collect();
        let token = partitioner::token(&partitioner::serialize_partition_key(&refs));
        keep.push(ranges.iter().any(|range| range.contains(token)));
    }
    Ok(BooleanArray::from(keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_storage::partitioner::Token;

    fn range(start: i64, end: i64) -> TokenRange {
        TokenRange {
            start: Token(start),
            end: Token(end),
        }
    }

    #[test]
    fn groups_put_this_node_first_and_read_every_range_once() {
        let distribution = Distribution {
            local: 2,
            ranges: vec![
                (range(0, 10), vec![1, 2, 3]),
                (range(10, 20), vec![2, 3, 4]),
                (range(20, 30), vec![4, 1, 2]),
                (range(30, 0), vec![2, 4, 1]),
            ],
        };
        assert!(!distribution.is_local());
        let groups = distribution.groups();
        assert_eq!(groups[0].0, 2);
        let nodes: Vec<u32> = groups.iter().map(|(node, _)| *node).collect();
        assert_eq!(nodes, vec![2, 1, 4]);
        let total: usize = groups.iter().map(|(_, ranges)| ranges.len()).sum();
        assert_eq!(total, 4);
        let here = Distribution {
            local: 1,
            ranges: vec![(range(0, 10), vec![1, 2])],
        };
        assert!(here.is_local());
    }
}
