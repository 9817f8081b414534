//! Integration tests of the columnar replica: one binary (see style.md §20).
//!
//! `Harness` stands in for the node: a MemoryEngine row store, the change
//! feed appended in the same batch as the rows (as `Db::execute` will), and a
//! `Columnar` replica following the feed.

mod differential;
mod distributed;
mod follower;
mod restart;
mod row_segments;
mod sql;
mod types;

use std::sync::Arc;

use concord_columnar::{Columnar, ColumnarOptions, Snapshot};
use concord_storage::cell::WriteTime;
use concord_storage::clock::ManualClock;
use concord_storage::engine::{Durability, Engine, EngineOptions, WriteBatch};
use concord_storage::feed::{ChangeFeed, FeedFrontier, FeedPosition};
use concord_storage::memory::MemoryEngine;
use concord_storage::partitioner::TokenRange;
use concord_storage::rows::{self, Mutation, Partition, TableRegistry};
use concord_storage::schema::TableDef;
use concord_storage::testing::model;
use concord_storage::value::CqlValue;

/// The decoded row-segment budget of the tests that read segments from
/// memory (the node's default is none).
pub const DECODED_BYTES_MAX: usize = 1 << 30;

pub fn engine_options(table: &Arc<TableDef>) -> EngineOptions {
    let registry = TableRegistry::new();
    registry.insert(table.clone());
    let clock = ManualClock::new(model::CLOCK_START_SECONDS * 1_000_000);
    EngineOptions {
        rows: rows::row_family_options(Arc::new(clock), registry),
    }
}

/// The row store, its feed, and every write applied so far.
#[allow(missing_debug_implementations)]
pub struct Node {
    pub table: Arc<TableDef>,
    pub engine: MemoryEngine,
    pub feed: Arc<ChangeFeed>,
    pub writes: Vec<(WriteTime, Mutation)>,
}

impl Node {
    pub fn new(table: Arc<TableDef>) -> Node {
        let engine = MemoryEngine::new(engine_options(&table));
        let feed = Arc::new(ChangeFeed::open(&engine).expect("open feed"));
        Node {
            table,
            engine,
            feed,
            writes: Vec::new(),
        }
    }

    /// Applies `mutation` at `write_time` the way the apply path does: rows and
    /// feed record in one batch.
    pub fn write(&mut self, mutation: Mutation, write_time: WriteTime) -> FeedPosition {
        let ticket = self.feed.begin(|| write_time);
        let mut batch = WriteBatch::new();
        rows::write_mutation(&self.table, &mutation, write_time, &mut batch).expect("rows");
        let position = self
            .feed
            .append(&ticket, &mut batch, &self.table, &mutation)
            .expect("feed");
        self.engine.write(batch, Durability::Sync).expect("write");
        self.feed.finish(ticket);
        self.writes.push((write_time, mutation));
        position
    }

    /// Applies `writes` the way a cluster member's Accord step does: one
    /// shared ticket at `floor`, each write at its own executeAt at or above it.
    pub fn write_step(&mut self, floor: WriteTime, writes: Vec<(Mutation, WriteTime)>) {
        let ticket = self.feed.begin_shared(|| floor);
        for (mutation, write_time) in writes {
            let mut batch = WriteBatch::new();
            rows::write_mutation(&self.table, &mutation, write_time, &mut batch).expect("rows");
            self.feed
                .append_at(&ticket, write_time, &mut batch, &self.table, &mutation)
                .expect("feed");
            self.engine.write(batch, Durability::Sync).expect("write");
            self.writes.push((write_time, mutation));
        }
    }

    /// What the row store answers at `snapshot`: every write at or below it,
    /// applied to a fresh engine, scanned with expiry judged at its second.
    pub fn row_store_at(&self, snapshot: WriteTime) -> (MemoryEngine, Vec<Partition>) {
        let engine = MemoryEngine::new(engine_options(&self.table));
        for (write_time, mutation) in self.writes.iter().filter(|(t, _)| *t <= snapshot) {
            let mut batch = WriteBatch::new();
            rows::write_mutation(&self.table, mutation, *write_time, &mut batch).expect("rows");
            engine.write(batch, Durability::Buffered).expect("write");
        }
        let mut partitions: Vec<Partition> = Vec::new();
        let mut cursor = None;
        loop {
            let page = rows::scan_token_range(
                &engine,
                &self.table,
                &TokenRange::full_ring(),
                cursor.as_ref(),
                1000,
                snapshot.seconds(),
            )
            .expect("scan");
            for partition in page.partitions {
                match partitions.last_mut() {
                    Some(last) if last.key == partition.key => last.rows.extend(partition.rows),
                    _ => partitions.push(partition),
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        (engine, partitions)
    }
}

/// Runs `sql` on the replica at exactly `at` and returns its rows as CQL
/// values, each column converted back with the table's type.
pub fn query_rows(
    columnar: &Columnar,
    node: &Node,
    sql: &str,
    at: WriteTime,
) -> Vec<Vec<Option<CqlValue>>> {
    let result = columnar
        .sql(sql, Snapshot::At(at))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(result.snapshot, at);
    let mut rows = Vec::new();
    for batch in &result.batches {
        let columns: Vec<Vec<Option<CqlValue>>> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| {
                let ty = &node.table.column(field.name()).expect("column").ty;
                concord_columnar::types::from_array(ty, array.as_ref()).expect("from arrow")
            })
            .collect();
        for row_idx in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c[row_idx].clone()).collect());
        }
    }
    rows
}

pub fn open_columnar(dir: &std::path::Path, options: ColumnarOptions) -> Columnar {
    Columnar::open(dir, options).expect("open columnar")
}

/// A frontier up to `position_end` with the given watermark.
pub fn frontier(position_end: FeedPosition, watermark: WriteTime) -> FeedFrontier {
    FeedFrontier {
        position_end,
        watermark,
    }
}

/// Rows as comparable text, sorted: SQL output order is not defined.
pub fn sorted(rows: Vec<Vec<Option<CqlValue>>>) -> Vec<String> {
    let mut text: Vec<String> = rows.iter().map(|row| format!("{row:?}")).collect();
    text.sort();
    text
}
