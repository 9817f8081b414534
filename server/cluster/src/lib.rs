//! `concord-cluster`: what turns one Concord process into a node of a cluster
//! (design/cluster.md).
//!
//! **Owns**: the node-to-node transport (tonic streams carrying batched
//! envelopes, per-peer bounded queues, reconnection), the cluster metadata
//! replicated with openraft (membership, token ring, placement, schema
//! versions, topology epochs) and the Accord runtime (the thread that owns a
//! `concord_txn::node::Node`, its input queue, timers and journal).
//!
//! **Must never**: link RocksDB or DataFusion (storage comes in through
//! `concord_storage::engine::Engine`, the data a transaction touches through
//! `concord_txn::storage::DataStore`); put data transactions through Raft;
//! block the thread that owns the `Node` on the network or on an fsync outside
//! the journal's group commit; drop a protocol message without counting it.

/// Cluster metadata on openraft (design/cluster.md, "Metadata (as built)").
/// The Accord journal on its own segmented log (design/cluster.md, "Journal").
pub mod journal;
pub mod meta;
pub mod runtime;
pub mod transport;
