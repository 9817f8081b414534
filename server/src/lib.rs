//! The Concord node: the embedded database, configuration, the endpoints
//! (CQL, gRPC) and the SQL router; cluster metadata as its issue lands.
//!
//! **Owns**: [`db::Db`], the in-process database that every endpoint and the
//! embedded mode use; [`config::Config`]; the `concord` binary; the
//! endpoints: CQL ([`cql`]), Postgres wire ([`pgwire`]) and Arrow Flight SQL
//! ([`flight`]), which all run SQL through [`db::Db::sql_with`].
//!
//! **Must never**: reach into RocksDB directly (it uses
//! `concord_storage::engine`), or order writes any other way than through
//! [`db::Db::execute`], the single door the transaction layer will take over.
//!
//! Key types: [`db::Db`], [`db::Transaction`], [`db::TransactionResult`],
//! [`config::Config`].

pub mod bootstrap;
pub mod cluster_meta;
pub mod config;
pub mod cql;
pub mod db;
pub mod dist_sql;
pub mod error;
pub mod flight;
pub mod grpc;
pub mod pgwire;
pub mod sql;
pub mod transition;
pub mod txn_journal;
pub mod txn_store;

pub use db::Db;
pub use error::{Error, Result};
