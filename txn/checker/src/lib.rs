//! `concord-checker` owns the checking of client-observed histories: it takes what clients saw
//! (operations with invocation and completion times, outcomes and results) and says whether a
//! correct database could have produced it, naming every anomaly it finds.
//!
//! **Architecture Invariant:** this crate knows nothing about Concord. It must never depend on
//! another Concord crate, never sees replicas, timestamps or logs of the system under test, and
//! judges only what a client could observe. That is what lets one checker serve the
//! deterministic Accord simulator (`txn/`) and the Jepsen harness on real clusters alike, and
//! what keeps it honest: it cannot share a bug with the code it checks.
//!
//! Checking never fails: every problem in a history is an anomaly in the [`Report`]. Errors
//! ([`CheckerError`]) come only from recording a history wrongly or parsing a file.
//!
//! Key types and entry points:
//! - [`History`], [`Operation`], [`Outcome`], [`OpId`], [`ProcessId`]: the history model, a
//!   builder (`invoke` then `complete`) and JSON-lines import/export (`history` module).
//! - [`check_list_append`] over [`Transaction`]s of [`MicroOp`]s: strict serializability,
//!   Elle-style (`list_append` module).
//! - [`check_bank`] over [`BankOp`]s: the total-balance invariant (`bank` module).
//! - [`check_register`] over [`RegisterOp`]s: linearizability of single registers, per key
//!   (`register` module).
//! - [`Report`], [`Anomaly`], [`AnomalyKind`]: the verdict.
//! - [`synthetic`]: random valid histories for tests and benchmarks.
//!
//! `design/checker.md` describes what is checked, the algorithms, their limits, and how to
//! read a report.

mod bank;
mod error;
mod fast_hash;
mod graph;
mod history;
mod list_append;
mod realtime;
mod register;
mod report;
pub mod synthetic;

pub use bank::{Account, BankOp, BankOptions, NegativeBalances, check_bank};
pub use error::CheckerError;
pub use history::{
    History, OPERATIONS_MAX, OpId, Operation, OperationBody, Outcome, ProcessId, Status,
};
pub use list_append::{
    ConsistencyModel, Element, Key, ListAppendOptions, MicroOp, Transaction, check_list_append,
};
pub use register::{
    Linearization, RegisterAction, RegisterOp, RegisterOptions, RegisterReport, check_register,
};
pub use report::{Anomaly, AnomalyKind, CycleEdge, EdgeKind, Report};
