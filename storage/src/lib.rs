//! Concord's storage layer: the data model and the row store.
//!
//! **Owns**: schema (keyspaces, tables, columns, user-defined types), CQL
//! types and values with their byte encodings, the Cassandra-compatible
//! Murmur3 partitioner and token ranges, the order-preserving key layout,
//! cells with write time and expiry, row / range / partition deletes,
//! last-write-wins reconciliation, TTL expiry in compaction, raw export and
//! import of a token range's rows for range streaming ([`stream`]), and the
//! engine interface with its in-memory implementation.
//!
//! **Must never**: know about networking, the transaction protocol (beyond
//! "apply this batch at this timestamp"), the columnar replica, or RocksDB
//! (the RocksDB engine lives in `concord-storage-rocksdb`).
//!
//! Key types: [`engine::Engine`], [`engine::WriteBatch`], [`schema::Schema`],
//! [`schema::TableDef`], [`value::CqlValue`], [`rows::Mutation`],
//! [`rows::RowStore`].

pub mod cell;
pub mod clock;
pub mod engine;
pub mod error;
pub mod feed;
pub mod keys;
pub mod memory;
pub mod partitioner;
pub mod rows;
pub mod schema;
pub mod stream;
pub mod types;
pub mod value;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
