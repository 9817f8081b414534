//! Concord's gRPC API: the `.proto` definitions (`proto/concord/v1/`) and
//! the prost messages and tonic client/server stubs generated from them
//! (checked in as `src/v1.rs`; `tests/generated.rs` fails when it is stale,
//! `cargo run --manifest-path server/api/codegen/Cargo.toml` rewrites it).
//!
//! **Owns**: the wire contract between `concord start` and its clients (the
//! Rust SDK `concord-client`, `jepsen/`, any gRPC client), and the stable
//! error codes ([`codes`]) carried in [`v1::ErrorDetail`].
//!
//! **Must never**: depend on an engine crate (storage, columnar, server) or
//! anything that links RocksDB or DataFusion, so clients stay small.
//!
//! Key types: [`v1::concord_client::ConcordClient`],
//! [`v1::concord_server::Concord`], [`v1::Value`], [`v1::ErrorDetail`].

/// The generated code of package `concord.v1` (checked in; see
/// `tests/generated.rs`).
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1;

/// The type URL under which [`v1::ErrorDetail`] travels in a status's
/// `google.protobuf.Any` details.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/concord.v1.ErrorDetail";

/// The default gRPC port of `concord start` (the Concord API and Flight SQL).
pub const DEFAULT_PORT: u16 = 50051;

/// The stable error codes of [`v1::ErrorDetail::code`] (see design/api.md).
pub mod codes {
    /// The request is malformed (a missing field, an unknown store name).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// A value does not fit its column's CQL type.
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    /// CQL that does not parse.
    pub const SYNTAX_ERROR: &str = "SYNTAX_ERROR";
    /// A statement that parses but is not valid (unknown column, missing key).
    pub const INVALID_QUERY: &str = "INVALID_QUERY";
    /// The keyspace or table does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The keyspace or table to create already exists.
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    /// A SQL query that fails to plan or run.
    pub const SQL_ERROR: &str = "SQL_ERROR";
    /// The change stream's start position was dropped by feed retention.
    pub const POSITION_EXPIRED: &str = "POSITION_EXPIRED";
    /// A named limit was exceeded (message size, rows per call, streams).
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    /// The node cannot serve the request now (shutting down, overloaded);
    /// retrying an idempotent call is safe.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// A failure inside the node (corruption, engine error).
    pub const INTERNAL: &str = "INTERNAL";
}

/// Decodes the [`v1::ErrorDetail`] from a status's details (the bytes of
/// the `grpc-status-details-bin` trailer: a `google.rpc.Status` whose
/// `details` hold a packed `ErrorDetail`).
pub fn error_detail(details: &[u8]) -> Option<v1::ErrorDetail> {
    use prost::Message;
    let status = rpc::Status::decode(details).ok()?;
    status
        .details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| v1::ErrorDetail::decode(any.value.as_slice()).ok())
}

/// Encodes a `google.rpc.Status` with `detail` packed in its details, the
/// form [`error_detail`] reads back (and gRPC's rich error model).
pub fn encode_status_details(grpc_code: i32, detail: &v1::ErrorDetail) -> Vec<u8> {
    use prost::Message;
    rpc::Status {
        code: grpc_code,
        message: detail.message.clone(),
        details: vec![rpc::Any {
            type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// `google.rpc.Status` and `google.protobuf.Any`, declared here so the crate
/// needs neither `prost-types` nor `tonic-types`.
mod rpc {
    /// A packed message and its type URL.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// The rich error model's status.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }
}
