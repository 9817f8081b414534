//! The integration tests of `concord-checker`, one binary (see the house style): hand-made
//! anomalous and valid histories for each checker, randomized valid histories and their
//! mutations, JSON-lines round trips, and a tidy check of the crate's own files.

mod bank;
mod jsonl;
mod list_append;
mod randomized;
mod register;
mod tidy;
