//! The gRPC endpoint's errors and their one mapping to a gRPC status with a
//! `concord.v1.ErrorDetail` (stable code + message) in its details. The
//! table of codes is in design/api.md; a new code is added there first.

use concord_api::codes;
use concord_api::v1::ErrorDetail;
use tonic::{Code, Status};

use crate::cql::error::CqlError;

/// A failed call: the gRPC code, the stable Concord code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: Code,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: Code, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A malformed request (`INVALID_ARGUMENT` / `INVALID_REQUEST`).
    pub fn request(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidArgument, codes::INVALID_REQUEST, message)
    }

    /// A value that does not fit its column (`INVALID_ARGUMENT` / `INVALID_VALUE`).
    pub fn value(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidArgument, codes::INVALID_VALUE, message)
    }

    /// A failure inside the node (`INTERNAL` / `INTERNAL`), logged here.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "grpc request failed with an internal error");
        ApiError::new(Code::Internal, codes::INTERNAL, message)
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let detail = ErrorDetail {
            code: error.code.to_owned(),
            message: error.message.clone(),
        };
        let details = concord_api::encode_status_details(error.status as i32, &detail);
        Status::with_details(error.status, error.message, details.into())
    }
}

impl From<concord_storage::Error> for ApiError {
    fn from(error: concord_storage::Error) -> ApiError {
        use concord_storage::Error as E;
        let message = error.to_string();
        match error {
            E::UnknownKeyspace(_) | E::UnknownTable { .. } | E::UnknownType { .. } => {
                ApiError::new(Code::NotFound, codes::NOT_FOUND, message)
            }
            E::AlreadyExists { .. } => {
                ApiError::new(Code::AlreadyExists, codes::ALREADY_EXISTS, message)
            }
            E::InvalidValue { .. } => ApiError::value(message),
            E::InvalidRequest(_) | E::InvalidType(_) | E::Unsupported(_) => {
                ApiError::new(Code::InvalidArgument, codes::INVALID_QUERY, message)
            }
            E::LimitExceeded { .. } => {
                ApiError::new(Code::ResourceExhausted, codes::LIMIT_EXCEEDED, message)
            }
            E::Corruption(_) | E::Engine(_) | E::Internal(_) => ApiError::internal(message),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> ApiError {
        match error {
            crate::Error::Storage(error) => error.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// CQL errors keep CQL's classes: syntax, invalid, already exists, overload.
impl From<CqlError> for ApiError {
    fn from(error: CqlError) -> ApiError {
        let message = error.to_string();
        match error {
            CqlError::Syntax(_) => {
                ApiError::new(Code::InvalidArgument, codes::SYNTAX_ERROR, message)
            }
            CqlError::Invalid(_) | CqlError::Config(_) | CqlError::Protocol(_) => {
                ApiError::new(Code::InvalidArgument, codes::INVALID_QUERY, message)
            }
            CqlError::AlreadyExists { .. } => {
                ApiError::new(Code::AlreadyExists, codes::ALREADY_EXISTS, message)
            }
            CqlError::Overloaded(_) => {
                ApiError::new(Code::Unavailable, codes::UNAVAILABLE, message)
            }
            CqlError::Unprepared(_) | CqlError::Server(_) => ApiError::internal(message),
        }
    }
}

/// SQL errors: planning and hints are the caller's; resources and snapshot
/// waits are retryable; the rest is the node's.
impl From<crate::sql::SqlError> for ApiError {
    fn from(error: crate::sql::SqlError) -> ApiError {
        use concord_columnar::Error as E;
        let message = error.to_string();
        match error {
            E::Sql(_) | E::UnsupportedType(_) | E::ValueOutOfRange { .. } => {
                ApiError::new(Code::InvalidArgument, codes::SQL_ERROR, message)
            }
            E::UnknownTable(_) => ApiError::new(Code::NotFound, codes::NOT_FOUND, message),
            E::ResourcesExhausted(_) => {
                ApiError::new(Code::ResourceExhausted, codes::LIMIT_EXCEEDED, message)
            }
            E::SnapshotTimeout { .. } | E::FeedTruncated { .. } => {
                ApiError::new(Code::Unavailable, codes::UNAVAILABLE, message)
            }
            E::SnapshotTooOld { .. } => {
                ApiError::new(Code::FailedPrecondition, codes::SQL_ERROR, message)
            }
            E::Storage(error) => error.into(),
            E::Io { .. } | E::Corruption(_) | E::Internal(_) | E::RebuildFailed(_) => {
                ApiError::internal(message)
            }
        }
    }
}
