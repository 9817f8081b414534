//! The server crate's integration tests, one binary: the embedded database,
//! the `concord` binary, and the workspace's tidy and layering rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod binary;
mod cluster;
mod cluster_analytics;
mod cluster_cli;
mod cluster_data;
mod cluster_peers;
mod cluster_schema;
mod cql_clients;
mod cql_node;
mod cql_protocol;
mod cql_rust_driver;
mod cql_transcripts;
mod embedded;
mod grpc_sdk;
mod pg_clients;
mod streaming;
mod tidy;
