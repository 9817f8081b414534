//! The server crate's integration tests, one binary: the embedded database,
//! the `concord` binary, and the workspace's tidy and layering rules.

mod binary;
mod embedded;
mod tidy;
