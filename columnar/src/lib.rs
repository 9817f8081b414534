//! Concord's columnar replica and analytic SQL — **not built yet** (the
//! Columnar issue). This crate exists so the layering is fixed from day one.
//!
//! **Will own**: the change-feed consumer, the Arrow delta and Parquet
//! segments per table, snapshot reads at a timestamp, and the DataFusion
//! catalog and table providers.
//!
//! **Must never**: write to the row store, block the OLTP apply path (it
//! consumes the change feed through a bounded queue and falls back to a
//! snapshot rebuild), or depend on `concord-txn` or the server.
