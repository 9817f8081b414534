//! The endpoint's errors and their one mapping to CQL error codes.
//!
//! Expected failures (bad syntax, bad values, unknown schema objects,
//! limits) are told apart from `Server`, which means a bug or an engine
//! failure and is logged where it is mapped.

use cassandra_protocol::frame::message_error::{
    AlreadyExistsError, ErrorBody, ErrorType, UnpreparedError,
};
use cassandra_protocol::types::CBytesShort;
use concord_cql_parser::ParseError;

/// A request that failed, with the CQL error it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CqlError {
    /// 0x000A: the frame itself is wrong (version, opcode, length, body).
    #[error("{0}")]
    Protocol(String),
    /// 0x2000
    #[error("{0}")]
    Syntax(String),
    /// 0x2200: the statement is well formed but wrong for the schema or data.
    #[error("{0}")]
    Invalid(String),
    /// 0x2300
    #[error("{0}")]
    Config(String),
    /// 0x2400
    #[error("{message}")]
    AlreadyExists {
        keyspace: String,
        table: String,
        message: String,
    },
    /// 0x2500: the driver re-prepares on this.
    #[error("prepared statement {} is unknown (the node restarted or evicted it); re-prepare it", hex(.0))]
    Unprepared(Vec<u8>),
    /// 0x1001: too many connections or requests.
    #[error("{0}")]
    Overloaded(String),
    /// 0x0000: a bug or an engine failure.
    #[error("{0}")]
    Server(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub type CqlResult<T> = Result<T, CqlError>;

impl CqlError {
    /// The protocol's error body for this error.
    pub fn to_error_body(&self) -> ErrorBody {
        let message = self.to_string();
        let ty = match self {
            CqlError::Protocol(_) => ErrorType::Protocol,
            CqlError::Syntax(_) => ErrorType::Syntax,
            CqlError::Invalid(_) => ErrorType::Invalid,
            CqlError::Config(_) => ErrorType::Config,
            CqlError::AlreadyExists {
                keyspace, table, ..
            } => ErrorType::AlreadyExists(AlreadyExistsError {
                ks: keyspace.clone(),
                table: table.clone(),
            }),
            CqlError::Unprepared(id) => ErrorType::Unprepared(UnpreparedError {
                id: CBytesShort::new(id.clone()),
            }),
            CqlError::Overloaded(_) => ErrorType::Overloaded,
            CqlError::Server(_) => {
                tracing::error!(error = %message, "cql request failed with a server error");
                ErrorType::Server
            }
        };
        ErrorBody { message, ty }
    }
}

impl From<concord_cql_wire::WireError> for CqlError {
    fn from(error: concord_cql_wire::WireError) -> CqlError {
        match error {
            concord_cql_wire::WireError::Protocol(message) => CqlError::Protocol(message),
            concord_cql_wire::WireError::Encode(message) => CqlError::Server(message),
        }
    }
}

impl From<ParseError> for CqlError {
    fn from(error: ParseError) -> CqlError {
        CqlError::Syntax(error.to_string())
    }
}

impl From<concord_storage::Error> for CqlError {
    fn from(error: concord_storage::Error) -> CqlError {
        use concord_storage::Error as E;
        match error {
            // The executor, which knows the keyspace and table, fills them in
            // (see `already_exists`).
            E::AlreadyExists { .. } => CqlError::AlreadyExists {
                keyspace: String::new(),
                table: String::new(),
                message: error.to_string(),
            },
            E::InvalidValue { .. }
            | E::InvalidRequest(_)
            | E::InvalidType(_)
            | E::UnknownKeyspace(_)
            | E::UnknownTable { .. }
            | E::UnknownType { .. }
            | E::LimitExceeded { .. }
            | E::Unsupported(_) => CqlError::Invalid(error.to_string()),
            E::Corruption(_) | E::Engine(_) | E::Internal(_) => CqlError::Server(error.to_string()),
        }
    }
}

impl From<crate::Error> for CqlError {
    fn from(error: crate::Error) -> CqlError {
        match error {
            crate::Error::Storage(error) => error.into(),
            crate::Error::Config(message) => CqlError::Config(message),
            crate::Error::Overloaded(_) => CqlError::Overloaded(error.to_string()),
            crate::Error::Io { .. } | crate::Error::Unavailable(_) => {
                CqlError::Server(error.to_string())
            }
        }
    }
}

/// Returns early with `CqlError::Invalid(format!(...))`.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::cql::error::CqlError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;

/// Names the keyspace and table in an `AlreadyExists` error (drivers show
/// them); other errors pass through.
pub fn already_exists(error: CqlError, keyspace: &str, table: &str) -> CqlError {
    match error {
        CqlError::AlreadyExists { message, .. } => CqlError::AlreadyExists {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
            message,
        },
        other => other,
    }
}
