//! `concord-txn`: Concord's Accord-style transaction protocol, as a deterministic, sans-IO
//! state machine.
//!
//! **Owns**: timestamps and transaction ids ([`timestamp`]), the static topology and quorum
//! sizes ([`topology`]), transactions and deps ([`txn`]), the replica's command state machine
//! and per-key conflict index ([`replica`], [`command`]), coordination of the fast and slow
//! paths ([`coordinator`]), recovery and the progress log ([`progress`]), durability rounds and garbage collection
//! ([`sync`]), the journal and data
//! interfaces ([`storage`]), and the deterministic simulator (`sim`, behind the `sim`
//! feature).
//!
//! **Must never**: touch RocksDB except through `concord_storage::engine::{Engine,
//! WriteBatch}`; use tokio, sockets, threads or the wall clock in the protocol core (time,
//! messages, randomness and storage come in through [`node::Node::handle`] and the
//! [`storage::Journal`] / [`storage::DataStore`] traits); reply before the state the reply
//! depends on is durable.
//!
//! Key types: [`node::Node`], [`node::Input`], [`node::Effects`], [`timestamp::TxnId`],
//! [`txn::Txn`], [`topology::Topology`]. The protocol and its invariants are described in
//! `design/accord.md`.

pub mod codec;
pub mod command;
pub mod coordinator;
pub mod error;
pub mod messages;
pub mod node;
pub mod progress;
pub mod replica;
pub mod storage;
pub mod sync;
pub mod timestamp;
pub mod topology;
pub mod txn;
pub mod wire;

pub use error::{Error, Result};

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod scenario_tests;
