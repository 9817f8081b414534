//! The integration tests of `concord-checker`, one binary (see the house style): hand-made
//! anomalous and valid histories for each checker, randomized valid histories and their
//! mutations, JSON-lines round trips, and a tidy check of the crate's own files.

// clippy's allow-unwrap-in-tests covers `#[test]` functions only; the helpers they share
// here are test code too.
#![allow(clippy::unwrap_used)]

mod bank;
mod cross_check;
mod jsonl;
mod list_append;
mod randomized;
mod register;
mod tidy;
