//! The server crate's error type. Every endpoint maps it once to its
//! protocol's codes.

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the storage layer (bad input, unknown schema object,
    /// corruption, engine failure), passed through with its kind intact.
    #[error(transparent)]
    Storage(#[from] concord_storage::Error),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The transaction layer refused new work (its input queue is full);
    /// nothing was started, the client may retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The transaction layer gave no outcome in time: the transaction may or
    /// may not have executed (a CQL write timeout).
    #[error("transaction outcome unknown: {0}")]
    Unavailable(String),
    /// An I/O failure outside the engine (data directory, config file).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The server crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The columnar replica's errors outside the SQL API (opening the replica,
/// keeping it in step with DDL): storage and I/O errors keep their kind; the
/// rest (a replica that does not catch up before `TRUNCATE`, a corrupt
/// manifest) become the storage layer's `Engine` error with the replica's
/// message. The SQL API returns the columnar error itself (`sql::SqlError`).
impl From<concord_columnar::Error> for Error {
    fn from(error: concord_columnar::Error) -> Error {
        match error {
            concord_columnar::Error::Storage(error) => Error::Storage(error),
            concord_columnar::Error::Io { context, source } => Error::Io { context, source },
            other => Error::Storage(concord_storage::Error::Engine(format!(
                "columnar replica: {other}"
            ))),
        }
    }
}
