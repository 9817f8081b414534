//! A model of the row store for property tests: plain `BTreeMap`s of
//! partitions, rows and cells that compute reads by Cassandra's rules
//! directly, with no knowledge of the key layout, cell encoding, merge
//! operator or compaction filter.
//!
//! [`check`] replays a random [`ModelOp`] sequence against an engine (through
//! [`crate::rows`]) and against [`Model`], and asserts that every read agrees.
//! The rules the model encodes:
//!
//! - Each cell keeps its winning version: the highest write time, a tombstone
//!   winning a tie.
//! - A cell is visible iff it holds a value, has not expired at the read's
//!   now, and its write time is above every deletion covering it (partition,
//!   clustering range, row and, for collection elements, the collection).
//! - A row is visible iff its row marker or any regular cell is visible; the
//!   static row iff any static cell is; statics see only partition deletions.
//! - Rows sort by [`CqlValue::compare`] per clustering column, reversed for
//!   `DESC`; partitions by token, in ring order from the range's start.
//!
//! Write times are unique multiples of 1000 µs, so no two operations tie (a
//! collection replacement's deletion at `write time - 1` can tie nothing),
//! and out-of-order writes lag the clock by at most [`WRITE_LAG_SECONDS_MAX`].
//! The table's `gc_grace_seconds` is above that lag, so purging tombstones and
//! expired cells in compaction never changes an answer; the model therefore
//! needs no notion of compaction at all, which is the point.
//!
//! ```text
//!   ModelOp ──► rows::write_mutation ──► Engine ──► rows::read_* ──┐
//!          └──► Model::apply ──────────────────────► Model::read_* ─┴─ assert_eq!
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::cell::{Expiry, WriteTime};
use crate::clock::{Clock, ManualClock};
use crate::engine::{Direction, Durability, Engine, EngineOptions, WriteBatch};
use crate::keys;
use crate::partitioner::{MAX_TOKEN, MIN_TOKEN, Token, TokenRange};
use crate::rows::{
    self, CellOp, ColumnValue, Liveness, Mutation, Partition, ReadOptions, Row, RowOp, ScanCursor,
    Slice, SliceBound, TableRegistry, Ttl,
};
use crate::schema::{
    ColumnId, ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, Schema, TableDef,
    TableOptions, TableSpec,
};
use crate::testing::conformance::Opened;
use crate::types::CqlType;
use crate::value::{ClusteringOrder, CqlValue};

/// The most an out-of-order write lags the clock, in seconds.
pub const WRITE_LAG_SECONDS_MAX: i64 = 3;
/// The model table's `gc_grace_seconds`: above [`WRITE_LAG_SECONDS_MAX`], so
/// a purged tombstone can never have shadowed a write that arrives later.
pub const MODEL_GC_GRACE_SECONDS: u32 = 10;
/// Where the clock of every model run starts (2023-11-14, in seconds).
pub const CLOCK_START_SECONDS: i64 = 1_700_000_000;
/// Partition keys are drawn from `0..PARTITION_KEYS_MAX`.
pub const PARTITION_KEYS_MAX: i32 = 5;

const CK2_VALUES: [&str; 3] = ["a", "b", "c"];
const V1_VALUES: [&str; 4] = ["", "p", "q", "zz"];
const SET_VALUES: [&str; 3] = ["x", "y", "z"];
const MAP_VALUES: [&str; 3] = ["m", "n", "o"];

/// The table every row-store test uses:
///
/// ```text
///   CREATE TABLE ks.t (pk int, ck1 int, ck2 text, s int STATIC, v1 text, v2 bigint,
///                      l list<int>, st set<text>, m map<int, text>,
///                      PRIMARY KEY (pk, ck1, ck2)) WITH CLUSTERING ORDER BY (ck1 ASC, ck2 DESC)
/// ```
///
/// # Panics
/// If the schema rejects the table (a bug in the schema code).
pub fn table(options: TableOptions) -> Arc<TableDef> {
    let mut schema = Schema::new();
    let keyspace = KeyspaceDef {
        name: "ks".into(),
        replication: ReplicationStrategy::Simple {
            replication_factor: 1,
        },
        durable_writes: true,
    };
    schema
        .create_keyspace(keyspace, IfExists::Strict)
        .expect("create keyspace ks");
    let column = |name: &str, ty: CqlType, kind: ColumnKind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    let columns = vec![
        column("pk", CqlType::Int, ColumnKind::PartitionKey),
        column(
            "ck1",
            CqlType::Int,
            ColumnKind::Clustering(ClusteringOrder::Asc),
        ),
        column(
            "ck2",
            CqlType::Text,
            ColumnKind::Clustering(ClusteringOrder::Desc),
        ),
        column("s", CqlType::Int, ColumnKind::Static),
        column("v1", CqlType::Text, ColumnKind::Regular),
        column("v2", CqlType::Bigint, ColumnKind::Regular),
        column(
            "l",
            CqlType::List(Box::new(CqlType::Int)),
            ColumnKind::Regular,
        ),
        column(
            "st",
            CqlType::Set(Box::new(CqlType::Text)),
            ColumnKind::Regular,
        ),
        column(
            "m",
            CqlType::Map(Box::new(CqlType::Int), Box::new(CqlType::Text)),
            ColumnKind::Regular,
        ),
    ];
    let spec = TableSpec {
        keyspace: "ks".into(),
        name: "t".into(),
        columns,
        options,
    };
    schema
        .create_table(spec, IfExists::Strict)
        .expect("create table ks.t")
        .expect("table is new")
}

/// The id of a column of [`table`].
///
/// # Panics
/// If the table has no such column.
pub fn column_id(table: &TableDef, name: &str) -> ColumnId {
    table
        .column(name)
        .unwrap_or_else(|| panic!("table has no column {name}"))
        .id
}

/// The columns of [`table`] that operations write, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    S,
    V1,
    V2,
    L,
    St,
    M,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::S => "s",
            Column::V1 => "v1",
            Column::V2 => "v2",
            Column::L => "l",
            Column::St => "st",
            Column::M => "m",
        }
    }

    fn from_name(name: &str) -> Option<Column> {
        [
            Column::S,
            Column::V1,
            Column::V2,
            Column::L,
            Column::St,
            Column::M,
        ]
        .into_iter()
        .find(|column| column.name() == name)
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// When a write happens relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTimeChoice {
    /// After every earlier write and not before the clock.
    Next,
    /// Behind the clock by this many milliseconds (at most
    /// `WRITE_LAG_SECONDS_MAX` seconds): usually before earlier writes.
    BehindMillis(u32),
}

/// Which token range a scan covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeChoice {
    FullRing,
    /// `(start, end]` between two candidate tokens (see [`candidate_tokens`]).
    Between(usize, usize),
}

/// One step of a model run.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOp {
    Write {
        partition_key: i32,
        op: RowOp,
        time: WriteTimeChoice,
    },
    AdvanceClock {
        seconds: u32,
    },
    Flush,
    /// Flushes, then compacts the row family.
    Compact,
    ReadRow {
        partition_key: i32,
        clustering: Vec<CqlValue>,
        seconds_back: u32,
    },
    ReadPartition {
        partition_key: i32,
        slice: Slice,
        direction: Direction,
        limit_rows: Option<usize>,
        seconds_back: u32,
    },
    Scan {
        range: RangeChoice,
        page_rows: Vec<usize>,
        seconds_back: u32,
    },
}

fn int_value() -> impl Strategy<Value = CqlValue> {
    (-2i32..5).prop_map(CqlValue::Int)
}

fn clustering() -> impl Strategy<Value = Vec<CqlValue>> {
    (0i32..3, prop::sample::select(&CK2_VALUES[..]))
        .prop_map(|(ck1, ck2)| vec![CqlValue::Int(ck1), CqlValue::Text(ck2.into())])
}

/// A clustering prefix of 0, 1 or 2 values.
fn clustering_prefix() -> impl Strategy<Value = Vec<CqlValue>> {
    (0usize..=2, clustering()).prop_map(|(len, mut values)| {
        values.truncate(len);
        values
    })
}

fn slice_bound() -> impl Strategy<Value = SliceBound> {
    prop_oneof![
        1 => Just(SliceBound::Unbounded),
        2 => clustering_prefix().prop_map(SliceBound::Included),
        2 => clustering_prefix().prop_map(SliceBound::Excluded),
    ]
}

fn slice() -> impl Strategy<Value = Slice> {
    (slice_bound(), slice_bound()).prop_map(|(start, end)| Slice { start, end })
}

fn text_set() -> impl Strategy<Value = Vec<CqlValue>> {
    prop::collection::btree_set(prop::sample::select(&SET_VALUES[..]), 0..3).prop_map(|set| {
        set.into_iter()
            .map(|text| CqlValue::Text(text.into()))
            .collect()
    })
}

fn int_text_map() -> impl Strategy<Value = Vec<(CqlValue, CqlValue)>> {
    prop::collection::btree_map(0i32..3, prop::sample::select(&MAP_VALUES[..]), 0..3).prop_map(
        |map| {
            map.into_iter()
                .map(|(k, v)| (CqlValue::Int(k), CqlValue::Text(v.into())))
                .collect()
        },
    )
}

fn cell_op(column: Column) -> BoxedStrategy<CellOp> {
    let delete = Just(CellOp::Set(None));
    match column {
        Column::S => {
            prop_oneof![3 => int_value().prop_map(|v| CellOp::Set(Some(v))), 1 => delete].boxed()
        }
        Column::V1 => prop_oneof![
            3 => prop::sample::select(&V1_VALUES[..])
                .prop_map(|text| CellOp::Set(Some(CqlValue::Text(text.into())))),
            1 => delete,
        ]
        .boxed(),
        Column::V2 => prop_oneof![
            3 => (-3i64..3).prop_map(|v| CellOp::Set(Some(CqlValue::Bigint(v)))),
            1 => delete,
        ]
        .boxed(),
        Column::L => {
            let elements = || prop::collection::vec(int_value(), 1..3);
            prop_oneof![
                3 => elements().prop_map(CellOp::ListAppend),
                2 => elements().prop_map(CellOp::ListPrepend),
                2 => prop::collection::vec(int_value(), 0..3)
                    .prop_map(|list| CellOp::Set(Some(CqlValue::List(list)))),
                1 => delete,
            ]
            .boxed()
        }
        Column::St => prop_oneof![
            3 => text_set().prop_map(CellOp::SetAdd),
            2 => text_set().prop_map(CellOp::SetRemove),
            2 => text_set().prop_map(|set| CellOp::Set(Some(CqlValue::Set(set)))),
            1 => delete,
        ]
        .boxed(),
        Column::M => prop_oneof![
            3 => int_text_map().prop_map(CellOp::MapPut),
            2 => prop::collection::vec((0i32..3).prop_map(CqlValue::Int), 1..3)
                .prop_map(CellOp::MapRemove),
            2 => int_text_map().prop_map(|map| CellOp::Set(Some(CqlValue::Map(map)))),
            1 => delete,
        ]
        .boxed(),
    }
}

fn upsert(ids: &ColumnIds) -> impl Strategy<Value = RowOp> + use<> {
    let ids = ids.clone();
    let columns = prop::sample::subsequence(
        vec![
            Column::S,
            Column::V1,
            Column::V2,
            Column::L,
            Column::St,
            Column::M,
        ],
        0..=3,
    );
    let cells = columns.prop_flat_map(|columns| {
        columns
            .into_iter()
            .map(|column| cell_op(column).prop_map(move |op| (column, op)))
            .collect::<Vec<_>>()
    });
    let ttl = prop_oneof![
        4 => Just(Ttl::TableDefault),
        1 => Just(Ttl::Unlimited),
        3 => (1u32..=20).prop_map(Ttl::Seconds),
    ];
    let liveness = prop_oneof![Just(Liveness::RowMarker), Just(Liveness::CellsOnly)];
    (
        prop::option::weighted(0.85, clustering()),
        liveness,
        ttl,
        cells,
    )
        .prop_map(move |(clustering, liveness, ttl, cells)| {
            let static_only = clustering.is_none();
            let mut cells: Vec<(ColumnId, CellOp)> = cells
                .into_iter()
                .filter(|(column, _)| !static_only || *column == Column::S)
                .map(|(column, op)| (ids.get(column), op))
                .collect();
            if static_only && cells.is_empty() {
                cells.push((ids.get(Column::S), CellOp::Set(Some(CqlValue::Int(0)))));
            }
            RowOp::Upsert {
                clustering: clustering.unwrap_or_default(),
                // A static-only write cannot carry a row marker.
                liveness: if static_only {
                    Liveness::CellsOnly
                } else {
                    liveness
                },
                ttl,
                cells,
            }
        })
}

fn row_op(ids: &ColumnIds) -> impl Strategy<Value = RowOp> + use<> {
    prop_oneof![
        10 => upsert(ids),
        2 => clustering().prop_map(|clustering| RowOp::DeleteRow { clustering }),
        2 => slice().prop_map(RowOp::DeleteRange),
        1 => Just(RowOp::DeletePartition),
    ]
}

fn model_op(ids: &ColumnIds) -> impl Strategy<Value = ModelOp> + use<> {
    let partition_key = || 0..PARTITION_KEYS_MAX;
    let seconds_back = || prop_oneof![4 => Just(0u32), 1 => 0u32..=60];
    let time = prop_oneof![
        4 => Just(WriteTimeChoice::Next),
        1 => (1u32..=(WRITE_LAG_SECONDS_MAX as u32 * 1000)).prop_map(WriteTimeChoice::BehindMillis),
    ];
    let n_tokens = candidate_token_count();
    let range = prop_oneof![
        2 => Just(RangeChoice::FullRing),
        1 => (0..n_tokens, 0..n_tokens).prop_map(|(a, b)| RangeChoice::Between(a, b)),
    ];
    let direction = prop_oneof![Just(Direction::Forward), Just(Direction::Reverse)];
    prop_oneof![
        12 => (partition_key(), row_op(ids), time)
            .prop_map(|(partition_key, op, time)| ModelOp::Write { partition_key, op, time }),
        2 => prop_oneof![3 => 0u32..=30, 1 => 60u32..=120]
            .prop_map(|seconds| ModelOp::AdvanceClock { seconds }),
        1 => Just(ModelOp::Flush),
        1 => Just(ModelOp::Compact),
        2 => (partition_key(), clustering(), seconds_back()).prop_map(
            |(partition_key, clustering, seconds_back)| ModelOp::ReadRow {
                partition_key,
                clustering,
                seconds_back,
            }
        ),
        3 => (
            partition_key(),
            slice(),
            direction,
            prop::option::of(0usize..5),
            seconds_back(),
        )
            .prop_map(|(partition_key, slice, direction, limit_rows, seconds_back)| {
                ModelOp::ReadPartition { partition_key, slice, direction, limit_rows, seconds_back }
            }),
        1 => (range, prop::collection::vec(1usize..=6, 1..4), seconds_back())
            .prop_map(|(range, page_rows, seconds_back)| ModelOp::Scan {
                range,
                page_rows,
                seconds_back,
            }),
    ]
}

/// Sequences of up to `n_ops_max` operations on [`table`].
pub fn operations(n_ops_max: usize) -> impl Strategy<Value = Vec<ModelOp>> {
    let ids = ColumnIds::new(&table(model_table_options()));
    prop::collection::vec(model_op(&ids), 1..=n_ops_max)
}

/// A proptest configuration running `default_cases` cases, or
/// `PROPTEST_CASES` when set.
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        ..Config::default()
    }
}

/// The options of the model table: no default TTL, a short grace period.
pub fn model_table_options() -> TableOptions {
    TableOptions {
        gc_grace_seconds: MODEL_GC_GRACE_SECONDS,
        ..TableOptions::default()
    }
}

#[derive(Debug, Clone)]
struct ColumnIds {
    ids: BTreeMap<Column, ColumnId>,
}

impl ColumnIds {
    fn new(table: &TableDef) -> ColumnIds {
        let ids = table
            .value_columns()
            .filter_map(|column| Some((Column::from_name(&column.name)?, column.id)))
            .collect();
        ColumnIds { ids }
    }

    fn get(&self, column: Column) -> ColumnId {
        self.ids[&column]
    }

    fn column(&self, id: ColumnId) -> Column {
        match self.ids.iter().find(|(_, column_id)| **column_id == id) {
            Some((column, _)) => *column,
            None => panic!("operation names unknown column id {}", id.0),
        }
    }
}

fn candidate_token_count() -> usize {
    PARTITION_KEYS_MAX as usize + 3
}

/// Tokens scans start and end at: every partition's token (to hit the
/// boundaries exactly), the ring's ends and zero.
pub fn candidate_tokens(table: &TableDef) -> Vec<Token> {
    let mut tokens: Vec<Token> = (0..PARTITION_KEYS_MAX)
        .map(|partition_key| token_of(table, partition_key))
        .collect();
    tokens.extend([MIN_TOKEN, MAX_TOKEN, Token(0)]);
    assert_eq!(tokens.len(), candidate_token_count());
    tokens
}

fn token_of(table: &TableDef, partition_key: i32) -> Token {
    keys::encode_partition(table, &[CqlValue::Int(partition_key)])
        .expect("int key encodes")
        .token
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// One version of a cell: `value` is `None` for a tombstone.
#[derive(Debug, Clone, PartialEq)]
struct Version {
    write_time: WriteTime,
    value: Option<CqlValue>,
    expiry: Option<Expiry>,
}

impl Version {
    /// Last write wins; a tombstone wins a tie.
    fn reconcile(slot: &mut Option<Version>, new: Version) {
        let replace = match slot {
            None => true,
            Some(old) => {
                new.write_time > old.write_time
                    || (new.write_time == old.write_time && new.value.is_none())
            }
        };
        if let Some(old) = slot.as_ref()
            && old.write_time == new.write_time
            && old.value.is_some()
            && new.value.is_some()
        {
            // Unique write times make a tie between two values impossible;
            // if one happened the model would need the value-bytes rule.
            assert_eq!(old, &new, "two values of one cell at one write time");
        }
        if replace {
            *slot = Some(new);
        }
    }

    fn visible(&self, deleted_at: Option<WriteTime>, now_seconds: i64) -> bool {
        self.value.is_some()
            && deleted_at.is_none_or(|at| self.write_time > at)
            && self
                .expiry
                .is_none_or(|expiry| expiry.expiry_seconds > now_seconds)
    }
}

/// An element of a collection: list position, set element or map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ElementKey {
    Position(i128),
    Int(i32),
    Text(String),
}

#[derive(Debug, Clone, Default)]
struct Collection {
    deleted_at: Option<WriteTime>,
    elements: BTreeMap<ElementKey, Option<Version>>,
}

#[derive(Debug, Clone, Default)]
struct Cells {
    simple: BTreeMap<Column, Option<Version>>,
    collections: BTreeMap<Column, Collection>,
}

#[derive(Debug, Clone, Default)]
struct ModelRow {
    deleted_at: Option<WriteTime>,
    marker: Option<Version>,
    cells: Cells,
}

/// A clustering, ordered as the table stores it.
#[derive(Debug, Clone, PartialEq)]
struct Clustering(Vec<CqlValue>);

const CLUSTERING_ORDERS: [ClusteringOrder; 2] = [ClusteringOrder::Asc, ClusteringOrder::Desc];
const CLUSTERING_TYPES: [CqlType; 2] = [CqlType::Int, CqlType::Text];

/// Compares clustering prefixes over their common length, in stored order.
fn compare_stored(a: &[CqlValue], b: &[CqlValue]) -> Ordering {
    for (idx, (x, y)) in a.iter().zip(b).enumerate() {
        let ordering = x.compare(y, &CLUSTERING_TYPES[idx]);
        let ordering = match CLUSTERING_ORDERS[idx] {
            ClusteringOrder::Asc => ordering,
            ClusteringOrder::Desc => ordering.reverse(),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

impl Eq for Clustering {}

impl PartialOrd for Clustering {
    fn partial_cmp(&self, other: &Clustering) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Clustering {
    fn cmp(&self, other: &Clustering) -> Ordering {
        compare_stored(&self.0, &other.0).then(self.0.len().cmp(&other.0.len()))
    }
}

/// Returns true if a full clustering lies in a slice (bounds are prefixes,
/// compared over their own length, in stored order).
fn slice_contains(slice: &Slice, clustering: &[CqlValue]) -> bool {
    let versus = |prefix: &[CqlValue]| compare_stored(&clustering[..prefix.len()], prefix);
    let after_start = match &slice.start {
        SliceBound::Unbounded => true,
        SliceBound::Included(prefix) => versus(prefix) != Ordering::Less,
        SliceBound::Excluded(prefix) => versus(prefix) == Ordering::Greater,
    };
    let before_end = match &slice.end {
        SliceBound::Unbounded => true,
        SliceBound::Included(prefix) => versus(prefix) != Ordering::Greater,
        SliceBound::Excluded(prefix) => versus(prefix) == Ordering::Less,
    };
    after_start && before_end
}

#[derive(Debug, Clone, Default)]
struct ModelPartition {
    deleted_at: Option<WriteTime>,
    range_deletions: Vec<(Slice, WriteTime)>,
    static_cells: Cells,
    rows: BTreeMap<Clustering, ModelRow>,
}

/// The row store as plain maps.
#[derive(Debug, Clone)]
pub struct Model {
    table: Arc<TableDef>,
    ids: ColumnIds,
    partitions: BTreeMap<i32, ModelPartition>,
}

fn max_time(a: Option<WriteTime>, b: Option<WriteTime>) -> Option<WriteTime> {
    a.max(b)
}

/// List positions: appends after everything written earlier, prepends before.
fn list_position(write_time: WriteTime, element_idx: usize, prepend: bool) -> i128 {
    let stride = rows::COLLECTION_OP_ELEMENTS_MAX as i128;
    let time = i128::from(write_time.0);
    if prepend {
        -time * stride - stride + element_idx as i128
    } else {
        time * stride + element_idx as i128
    }
}

impl Model {
    pub fn new(table: Arc<TableDef>) -> Model {
        let ids = ColumnIds::new(&table);
        Model {
            table,
            ids,
            partitions: BTreeMap::new(),
        }
    }

    /// Applies one operation on partition `partition_key` at `write_time`.
    pub fn apply(&mut self, partition_key: i32, op: &RowOp, write_time: WriteTime) {
        let ids = self.ids.clone();
        let default_ttl = self.table.options.default_time_to_live_seconds;
        let partition = self.partitions.entry(partition_key).or_default();
        match op {
            RowOp::Upsert {
                clustering,
                liveness,
                ttl,
                cells,
            } => {
                let ttl_seconds = match ttl {
                    Ttl::TableDefault => default_ttl,
                    Ttl::Unlimited => 0,
                    Ttl::Seconds(seconds) => *seconds,
                };
                let expiry = (ttl_seconds > 0).then(|| Expiry {
                    expiry_seconds: write_time.seconds() + i64::from(ttl_seconds),
                    ttl_seconds,
                });
                let live = |value: CqlValue| Version {
                    write_time,
                    value: Some(value),
                    expiry,
                };
                if !clustering.is_empty() && *liveness == Liveness::RowMarker {
                    let row = partition
                        .rows
                        .entry(Clustering(clustering.clone()))
                        .or_default();
                    Version::reconcile(&mut row.marker, live(CqlValue::Boolean(true)));
                }
                for (id, cell_op) in cells {
                    let column = ids.column(*id);
                    let target = if column == Column::S {
                        &mut partition.static_cells
                    } else {
                        &mut partition
                            .rows
                            .entry(Clustering(clustering.clone()))
                            .or_default()
                            .cells
                    };
                    apply_cell_op(target, column, cell_op, write_time, expiry);
                }
            }
            RowOp::DeleteRow { clustering } => {
                let row = partition
                    .rows
                    .entry(Clustering(clustering.clone()))
                    .or_default();
                row.deleted_at = max_time(row.deleted_at, Some(write_time));
            }
            RowOp::DeleteRange(slice) => {
                partition.range_deletions.push((slice.clone(), write_time))
            }
            RowOp::DeletePartition => {
                partition.deleted_at = max_time(partition.deleted_at, Some(write_time));
            }
        }
    }

    fn resolve_cells(
        &self,
        cells: &Cells,
        deleted_at: Option<WriteTime>,
        now_seconds: i64,
    ) -> BTreeMap<ColumnId, ColumnValue> {
        let mut columns = BTreeMap::new();
        for (column, version) in &cells.simple {
            if let Some(version) = version
                && version.visible(deleted_at, now_seconds)
                && let Some(value) = &version.value
            {
                let column_value = ColumnValue {
                    value: value.clone(),
                    write_time: version.write_time,
                    expiry: version.expiry,
                };
                columns.insert(self.ids.get(*column), column_value);
            }
        }
        for (column, collection) in &cells.collections {
            let deleted_at = max_time(deleted_at, collection.deleted_at);
            let live: Vec<(&ElementKey, &Version)> = collection
                .elements
                .iter()
                .filter_map(|(key, version)| Some((key, version.as_ref()?)))
                .filter(|(_, version)| version.visible(deleted_at, now_seconds))
                .collect();
            let Some(write_time) = live.iter().map(|(_, version)| version.write_time).max() else {
                continue;
            };
            let value_of = |version: &Version| version.value.clone().expect("visible has a value");
            let value = match column {
                Column::L => CqlValue::List(live.iter().map(|(_, v)| value_of(v)).collect()),
                Column::St => CqlValue::Set(live.iter().map(|(_, v)| value_of(v)).collect()),
                Column::M => CqlValue::Map(
                    live.iter()
                        .map(|(key, v)| match key {
                            ElementKey::Int(key) => (CqlValue::Int(*key), value_of(v)),
                            other => panic!("map key {other:?} is not an int"),
                        })
                        .collect(),
                ),
                other => panic!("{other:?} is not a collection"),
            };
            columns.insert(
                self.ids.get(*column),
                ColumnValue {
                    value,
                    write_time,
                    expiry: None,
                },
            );
        }
        columns
    }

    fn resolve_row(
        &self,
        partition: &ModelPartition,
        clustering: &Clustering,
        row: &ModelRow,
        now_seconds: i64,
    ) -> Option<Row> {
        let mut deleted_at = max_time(partition.deleted_at, row.deleted_at);
        for (slice, at) in &partition.range_deletions {
            if slice_contains(slice, &clustering.0) {
                deleted_at = max_time(deleted_at, Some(*at));
            }
        }
        let marker_live = row
            .marker
            .as_ref()
            .is_some_and(|m| m.visible(deleted_at, now_seconds));
        let columns = self.resolve_cells(&row.cells, deleted_at, now_seconds);
        (marker_live || !columns.is_empty()).then(|| Row {
            clustering: clustering.0.clone(),
            columns,
        })
    }

    fn static_row(&self, partition: &ModelPartition, now_seconds: i64) -> Option<Row> {
        let columns =
            self.resolve_cells(&partition.static_cells, partition.deleted_at, now_seconds);
        (!columns.is_empty()).then(|| Row {
            clustering: Vec::new(),
            columns,
        })
    }

    /// The live rows of a slice, in stored order.
    fn live_rows(&self, partition: &ModelPartition, slice: &Slice, now_seconds: i64) -> Vec<Row> {
        partition
            .rows
            .iter()
            .filter(|(clustering, _)| slice_contains(slice, &clustering.0))
            .filter_map(|(clustering, row)| {
                self.resolve_row(partition, clustering, row, now_seconds)
            })
            .collect()
    }

    /// What [`rows::read_row`] must return.
    pub fn read_row(
        &self,
        partition_key: i32,
        clustering: &[CqlValue],
        now_seconds: i64,
    ) -> Option<Row> {
        let partition = self.partitions.get(&partition_key)?;
        let clustering = Clustering(clustering.to_vec());
        let row = partition.rows.get(&clustering)?;
        self.resolve_row(partition, &clustering, row, now_seconds)
    }

    /// What [`rows::read_partition`] must return.
    pub fn read_partition(
        &self,
        partition_key: i32,
        slice: &Slice,
        options: ReadOptions,
    ) -> Option<Partition> {
        let partition = self.partitions.get(&partition_key)?;
        let mut rows = self.live_rows(partition, slice, options.now_seconds);
        if options.direction == Direction::Reverse {
            rows.reverse();
        }
        rows.truncate(options.limit_rows.unwrap_or(usize::MAX));
        let static_row = self.static_row(partition, options.now_seconds);
        if rows.is_empty() && static_row.is_none() {
            return None;
        }
        Some(Partition {
            token: token_of(&self.table, partition_key),
            key: vec![CqlValue::Int(partition_key)],
            static_row,
            rows,
        })
    }

    /// Every live partition whose token lies in `range`, in ring order from
    /// the range's start, with all its rows.
    pub fn scan(&self, range: &TokenRange, now_seconds: i64) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self
            .partitions
            .keys()
            .filter(|partition_key| range.contains(token_of(&self.table, **partition_key)))
            .filter_map(|partition_key| {
                let options = ReadOptions::at(now_seconds);
                self.read_partition(*partition_key, &Slice::all(), options)
            })
            .collect();
        // Tokens after the start come first; a wrapping range continues at
        // the bottom of the ring.
        partitions.sort_by_key(|partition| (partition.token <= range.start, partition.token));
        partitions
    }
}

fn element_text(value: &CqlValue) -> ElementKey {
    match value {
        CqlValue::Text(text) => ElementKey::Text(text.clone()),
        CqlValue::Int(number) => ElementKey::Int(*number),
        other => panic!("unexpected collection element {other:?}"),
    }
}

fn apply_cell_op(
    cells: &mut Cells,
    column: Column,
    op: &CellOp,
    write_time: WriteTime,
    expiry: Option<Expiry>,
) {
    let live = |value: CqlValue| Version {
        write_time,
        value: Some(value),
        expiry,
    };
    let dead = Version {
        write_time,
        value: None,
        expiry: None,
    };
    if matches!(column, Column::S | Column::V1 | Column::V2) {
        let CellOp::Set(value) = op else {
            panic!("{op:?} on simple column {column:?}")
        };
        let version = value.clone().map_or(dead, live);
        Version::reconcile(cells.simple.entry(column).or_default(), version);
        return;
    }
    let collection = cells.collections.entry(column).or_default();
    let mut put = |key: ElementKey, version: Version| {
        Version::reconcile(collection.elements.entry(key).or_default(), version);
    };
    match op {
        CellOp::Set(None) => {
            collection.deleted_at = max_time(collection.deleted_at, Some(write_time));
        }
        CellOp::Set(Some(value)) => {
            // A replacement deletes what was there just before it.
            let deleted_at = WriteTime(write_time.0 - 1);
            collection.deleted_at = max_time(collection.deleted_at, Some(deleted_at));
            match value {
                CqlValue::List(elements) => {
                    for (idx, element) in elements.iter().enumerate() {
                        put(
                            ElementKey::Position(list_position(write_time, idx, false)),
                            live(element.clone()),
                        );
                    }
                }
                CqlValue::Set(elements) => {
                    for element in elements {
                        put(element_text(element), live(element.clone()));
                    }
                }
                CqlValue::Map(entries) => {
                    for (key, value) in entries {
                        put(element_text(key), live(value.clone()));
                    }
                }
                other => panic!("{other:?} is not a collection"),
            }
        }
        CellOp::ListAppend(elements) | CellOp::ListPrepend(elements) => {
            let prepend = matches!(op, CellOp::ListPrepend(_));
            for (idx, element) in elements.iter().enumerate() {
                put(
                    ElementKey::Position(list_position(write_time, idx, prepend)),
                    live(element.clone()),
                );
            }
        }
        CellOp::SetAdd(elements) => {
            for element in elements {
                put(element_text(element), live(element.clone()));
            }
        }
        CellOp::SetRemove(elements) | CellOp::MapRemove(elements) => {
            for element in elements {
                put(element_text(element), dead.clone());
            }
        }
        CellOp::MapPut(entries) => {
            for (key, value) in entries {
                put(element_text(key), live(value.clone()));
            }
        }
        CellOp::UdtSetField(..) => panic!("the model table has no user types"),
    }
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

/// Hands out unique write times that follow the clock.
#[derive(Debug)]
struct WriteTimes {
    used: HashSet<i64>,
    latest: i64,
}

impl WriteTimes {
    fn next(&mut self, clock: &ManualClock, choice: WriteTimeChoice) -> WriteTime {
        const STEP_MICROS: i64 = 1000;
        let now = clock.now_micros();
        let mut micros = match choice {
            WriteTimeChoice::Next => self.latest.max(now) + STEP_MICROS,
            WriteTimeChoice::BehindMillis(millis) => now - i64::from(millis) * STEP_MICROS,
        };
        while self.used.contains(&micros) {
            micros -= STEP_MICROS;
        }
        // Never lag the clock by more than the bound the model relies on.
        assert!(micros >= now - WRITE_LAG_SECONDS_MAX * 1_000_000 - 100 * STEP_MICROS);
        self.used.insert(micros);
        self.latest = self.latest.max(micros);
        WriteTime(micros)
    }
}

/// Stitches scan pages back into whole partitions.
fn reassemble(pages: Vec<Partition>) -> Vec<Partition> {
    let mut whole: Vec<Partition> = Vec::new();
    for piece in pages {
        match whole.last_mut() {
            Some(last) if last.key == piece.key => {
                assert!(
                    piece.static_row.is_none(),
                    "a continued partition repeats its static row"
                );
                last.rows.extend(piece.rows);
            }
            _ => whole.push(piece),
        }
    }
    whole
}

/// Scans `range` page by page, each page's cursor round-tripping through
/// bytes, and returns the pages stitched together.
///
/// # Panics
/// If a page holds more rows than asked for, or the scan does not end.
pub fn scan_in_pages<E: Engine>(
    engine: &E,
    table: &TableDef,
    range: &TokenRange,
    page_rows: &[usize],
    now_seconds: i64,
) -> Vec<Partition> {
    let mut pieces = Vec::new();
    let mut cursor: Option<ScanCursor> = None;
    for page_idx in 0.. {
        assert!(page_idx < 10_000, "the scan does not end");
        let page_size = page_rows[page_idx % page_rows.len()];
        let page = rows::scan_token_range(
            engine,
            table,
            range,
            cursor.as_ref(),
            page_size,
            now_seconds,
        )
        .expect("scan a page");
        let counted: usize = page
            .partitions
            .iter()
            .map(|partition| {
                partition
                    .rows
                    .len()
                    .max(usize::from(partition.static_row.is_some()))
            })
            .sum();
        assert!(
            counted <= page_size,
            "page {page_idx} holds {counted} rows, asked for {page_size}"
        );
        pieces.extend(page.partitions);
        match page.next {
            None => break,
            Some(next) => {
                let bytes = next.to_bytes();
                let decoded = ScanCursor::from_bytes(&bytes).expect("cursor decodes");
                assert_eq!(decoded, next, "cursor round-trips through bytes");
                cursor = Some(decoded);
            }
        }
    }
    reassemble(pieces)
}

/// Runs `ops` against an engine opened by `open` and against the model,
/// asserting that every read agrees.
///
/// # Panics
/// On the first disagreement, naming the operation.
pub fn check<E: Engine>(open: &dyn Fn(EngineOptions) -> Opened<E>, ops: &[ModelOp]) {
    let table = table(model_table_options());
    let clock = ManualClock::new(CLOCK_START_SECONDS * 1_000_000);
    let registry = TableRegistry::new();
    registry.insert(table.clone());
    let options = EngineOptions {
        rows: rows::row_family_options(Arc::new(clock.clone()), registry),
    };
    let opened = open(options);
    let engine = &opened.engine;
    let tokens = candidate_tokens(&table);
    let mut model = Model::new(table.clone());
    let mut write_times = WriteTimes {
        used: HashSet::new(),
        latest: 0,
    };
    let read_now = |seconds_back: u32| clock.now_seconds() - i64::from(seconds_back);
    for (op_idx, op) in ops.iter().enumerate() {
        match op {
            ModelOp::Write {
                partition_key,
                op,
                time,
            } => {
                let write_time = write_times.next(&clock, *time);
                let mutation = Mutation {
                    table: table.id,
                    partition_key: vec![CqlValue::Int(*partition_key)],
                    ops: vec![op.clone()],
                };
                let mut batch = WriteBatch::new();
                rows::write_mutation(&table, &mutation, write_time, &mut batch)
                    .unwrap_or_else(|error| panic!("op {op_idx}: write {op:?}: {error}"));
                engine
                    .write(batch, Durability::Buffered)
                    .expect("write batch");
                model.apply(*partition_key, op, write_time);
            }
            ModelOp::AdvanceClock { seconds } => {
                clock.advance_micros(i64::from(*seconds) * 1_000_000)
            }
            ModelOp::Flush => engine.flush().expect("flush"),
            ModelOp::Compact => {
                engine.flush().expect("flush");
                engine
                    .compact(crate::engine::Family::Rows)
                    .expect("compact");
            }
            ModelOp::ReadRow {
                partition_key,
                clustering,
                seconds_back,
            } => {
                let now = read_now(*seconds_back);
                let key = [CqlValue::Int(*partition_key)];
                let actual =
                    rows::read_row(engine, &table, &key, clustering, now).expect("read row");
                let expected = model.read_row(*partition_key, clustering, now);
                assert_eq!(actual, expected, "op {op_idx}: {op:?} at now {now}");
            }
            ModelOp::ReadPartition {
                partition_key,
                slice,
                direction,
                limit_rows,
                seconds_back,
            } => {
                let options = ReadOptions {
                    direction: *direction,
                    limit_rows: *limit_rows,
                    now_seconds: read_now(*seconds_back),
                };
                let key = [CqlValue::Int(*partition_key)];
                let actual = rows::read_partition(engine, &table, &key, slice, options)
                    .expect("read partition");
                let expected = model.read_partition(*partition_key, slice, options);
                assert_eq!(actual, expected, "op {op_idx}: {op:?} with {options:?}");
            }
            ModelOp::Scan {
                range,
                page_rows,
                seconds_back,
            } => {
                let now = read_now(*seconds_back);
                let range = match range {
                    RangeChoice::FullRing => TokenRange::full_ring(),
                    RangeChoice::Between(start, end) => TokenRange {
                        start: tokens[*start],
                        end: tokens[*end],
                    },
                };
                let actual = scan_in_pages(engine, &table, &range, page_rows, now);
                let expected = model.scan(&range, now);
                assert_eq!(
                    actual, expected,
                    "op {op_idx}: {op:?} over {range:?} at now {now}"
                );
            }
        }
    }
    // Every run ends with a full scan, so nothing written goes unchecked.
    let now = clock.now_seconds();
    let actual = scan_in_pages(engine, &table, &TokenRange::full_ring(), &[3], now);
    assert_eq!(
        actual,
        model.scan(&TokenRange::full_ring(), now),
        "final full scan"
    );
}
