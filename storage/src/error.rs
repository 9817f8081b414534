//! The storage crate's one error type.
//!
//! Expected failures (bad input, unknown schema objects, limits) are separate
//! from `Corruption` (bytes from disk that do not decode) and `Internal` (a bug).

use std::fmt;

/// Errors returned by the storage crate.
///
/// Messages are lowercase without trailing punctuation and name what failed,
/// so the server can pass them to clients unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value does not match its declared type (wrong variant, out of range,
    /// invalid UTF-8, ...).
    #[error("invalid value for {target}: {reason}")]
    InvalidValue { target: String, reason: String },
    /// A statement or mutation is malformed with respect to the schema
    /// (missing key column, unknown column, wrong arity, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A type name that does not parse, or a type used where it is not allowed.
    #[error("invalid type: {0}")]
    InvalidType(String),
    #[error("keyspace {0} does not exist")]
    UnknownKeyspace(String),
    #[error("table {keyspace}.{table} does not exist")]
    UnknownTable { keyspace: String, table: String },
    #[error("type {keyspace}.{name} does not exist")]
    UnknownType { keyspace: String, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists {
        kind: SchemaObjectKind,
        name: String,
    },
    /// A named limit was exceeded; `limit` is the constant's name.
    #[error("{what} is {actual} bytes, over the limit {limit} = {max}")]
    LimitExceeded {
        what: String,
        limit: &'static str,
        actual: usize,
        max: usize,
    },
    /// A feature that is recognised but not built yet.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// Bytes read from disk (or another node) that do not decode.
    #[error("corruption: {0}")]
    Corruption(String),
    /// The engine failed (I/O error, RocksDB error); the message is the engine's.
    #[error("engine error: {0}")]
    Engine(String),
    /// A bug: an invariant that should hold did not. Never retried.
    #[error("internal error (likely a bug): {0}")]
    Internal(String),
}

/// Which kind of schema object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaObjectKind {
    Keyspace,
    Table,
    Type,
}

impl fmt::Display for SchemaObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchemaObjectKind::Keyspace => "keyspace",
            SchemaObjectKind::Table => "table",
            SchemaObjectKind::Type => "type",
        })
    }
}

/// The storage crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an `InvalidValue` error.
    pub fn invalid_value(target: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidValue {
            target: target.into(),
            reason: reason.into(),
        }
    }

    /// Builds a `Corruption` error.
    pub fn corruption(what: impl Into<String>) -> Error {
        Error::Corruption(what.into())
    }
}
