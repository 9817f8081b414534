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
