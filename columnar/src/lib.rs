//! Concord's columnar replica and analytic SQL.
//!
//! **Owns**: the change-feed consumer ([`replica::Replica::catch_up`]), the
//! per-table delta of recent cell versions and the stable layer of Parquet
//! segments ([`segment`]: merged cells; [`row_segment`]: typed rows read by
//! DataFusion's Parquet scan), the applied watermark and snapshot reads at a
//! timestamp, the CQL → Arrow type mapping ([`types`]), and the DataFusion
//! catalog, table provider and query entry ([`Columnar::sql`]), which runs on
//! its own runtime with bounded concurrency and a memory pool.
//!
//! **Must never**: write to the row store, block or slow the OLTP apply path
//! (it reads the feed the apply path already wrote, at its own pace), serve a
//! snapshot its watermark has not reached, round or reinterpret a value
//! silently, or depend on `concord-txn`, the server or RocksDB.
//!
//! Key types: [`Columnar`], [`Snapshot`], [`replica::Replica`],
//! [`follower::Follower`],
//! [`segment::Segment`], [`Error`]. See `design/columnar.md`.

pub mod follower;
pub mod replica;
pub mod row_segment;
pub mod segment;
pub mod sql;
pub mod types;

pub use replica::PartitionFilter;
pub use sql::{Columnar, ColumnarOptions, PartitionSource, QueryResult, Snapshot};

/// The columnar crate's errors. Expected failures (`SnapshotTimeout`,
/// `SnapshotTooOld`, `ResourcesExhausted`, `Sql`, `ValueOutOfRange`) are
/// apart from `Internal`, which means a bug.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("type {0} is not supported by the columnar replica")]
    UnsupportedType(String),
    #[error("value {value} is out of range: {reason}")]
    ValueOutOfRange { value: String, reason: String },
    #[error(
        "snapshot {snapshot} not reached: the replica's watermark is {watermark} after waiting \
         {waited_ms} ms (raise snapshot_wait_max or read with bounded staleness)"
    )]
    SnapshotTimeout {
        snapshot: i64,
        watermark: i64,
        waited_ms: u64,
    },
    #[error("snapshot {snapshot} is older than the replica's merge horizon {horizon}")]
    SnapshotTooOld { snapshot: i64, horizon: i64 },
    #[error(
        "the replica needs feed position {next} but retention dropped records before {floor}: \
         rebuild it from a row-store snapshot"
    )]
    FeedTruncated { next: u64, floor: u64 },
    #[error("resources exhausted: {0}")]
    ResourcesExhausted(String),
    #[error("unknown table {0}")]
    UnknownTable(String),
    #[error("sql: {0}")]
    Sql(String),
    #[error(transparent)]
    Storage(#[from] concord_storage::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("corrupt replica data: {0}")]
    Corruption(String),
    #[error("internal error (a bug): {0}")]
    Internal(String),
    /// A rebuild asked of the follower (`Follower::rebuild`) failed, or the
    /// follower stopped before it ran.
    #[error("columnar rebuild failed: {0}")]
    RebuildFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
