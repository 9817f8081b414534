//! The endpoint's one mapping from Concord's errors (the SQL router's, the
//! catalog context's DataFusion errors, the CQL executor's) to SQLSTATE codes.
//! The table lives in `design/sql-endpoints.md`.

use ::pgwire::error::{ErrorInfo, PgWireError};

use crate::cql::error::CqlError;
use crate::sql::SqlError;

pub const SYNTAX_ERROR: &str = "42601";
pub const UNDEFINED_TABLE: &str = "42P01";
pub const UNDEFINED_COLUMN: &str = "42703";
pub const UNDEFINED_FUNCTION: &str = "42883";
pub const UNDEFINED_OBJECT: &str = "42704";
pub const DATATYPE_MISMATCH: &str = "42804";
pub const DUPLICATE_TABLE: &str = "42P07";
pub const SYNTAX_OR_ACCESS: &str = "42000";
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
pub const DIVISION_BY_ZERO: &str = "22012";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
pub const UNIQUE_VIOLATION: &str = "23505";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INSUFFICIENT_RESOURCES: &str = "53000";
pub const OUT_OF_MEMORY: &str = "53200";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const PREREQUISITE_STATE: &str = "55000";
pub const SNAPSHOT_TOO_OLD: &str = "72000";
pub const INTERNAL_ERROR: &str = "XX000";
pub const WARNING: &str = "01000";

/// An `ERROR` with `code` and `message`.
pub fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// The SQLSTATE of a DataFusion / planner message (the router passes
/// DataFusion's errors as text).
pub fn classify_message(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("parsererror")
        || lower.contains("sql parser error")
        || lower.contains("expected:") && lower.contains("found:")
    {
        SYNTAX_ERROR
    } else if lower.contains("table '") && lower.contains("not found")
        || lower.contains("no table named")
        || lower.contains("unknown table")
        || lower.contains("does not exist")
            && (lower.contains("table") || lower.contains("keyspace") || lower.contains("schema"))
    {
        UNDEFINED_TABLE
    } else if lower.contains("no field named")
        || lower.contains("unknown column")
        || lower.contains("undefined column")
    {
        UNDEFINED_COLUMN
    } else if lower.contains("invalid function")
        || lower.contains("unknown function")
        || lower.contains("no function")
    {
        UNDEFINED_FUNCTION
    } else if lower.contains("divide by zero") || lower.contains("division by zero") {
        DIVISION_BY_ZERO
    } else if lower.contains("overflow") || lower.contains("out of range") {
        NUMERIC_VALUE_OUT_OF_RANGE
    } else if lower.contains("cannot cast")
        || lower.contains("cast error")
        || lower.contains("can't parse")
        || lower.contains("invalid literal")
    {
        INVALID_TEXT_REPRESENTATION
    } else if lower.contains("not implemented")
        || lower.contains("unsupported")
        || lower.contains("not supported")
    {
        FEATURE_NOT_SUPPORTED
    } else if lower.contains("resources exhausted") {
        INSUFFICIENT_RESOURCES
    } else if lower.contains("cannot infer")
        || lower.contains("type coercion")
        || lower.contains("mismatch")
    {
        DATATYPE_MISMATCH
    } else if lower.contains("error during planning")
        || lower.contains("schema error")
        || lower.contains("sql error")
    {
        SYNTAX_OR_ACCESS
    } else {
        INTERNAL_ERROR
    }
}

/// A message without DataFusion's nested prefixes, for humans.
fn clean(message: &str) -> String {
    message
        .replace("sql: ", "")
        .replace("Error during planning: ", "")
        .replace("Schema error: ", "")
        .replace("SQL error: ", "")
}

/// The router's error.
pub fn from_sql(error: &SqlError) -> PgWireError {
    let message = error.to_string();
    let code = match error {
        SqlError::ResourcesExhausted(detail) => {
            if detail.to_ascii_lowercase().contains("memory") {
                OUT_OF_MEMORY
            } else {
                INSUFFICIENT_RESOURCES
            }
        }
        SqlError::SnapshotTimeout { .. } | SqlError::FeedTruncated { .. } => PREREQUISITE_STATE,
        SqlError::SnapshotTooOld { .. } => SNAPSHOT_TOO_OLD,
        SqlError::UnknownTable(_) => UNDEFINED_TABLE,
        SqlError::ValueOutOfRange { .. } => NUMERIC_VALUE_OUT_OF_RANGE,
        SqlError::UnsupportedType(_) => FEATURE_NOT_SUPPORTED,
        SqlError::Sql(detail) => classify_message(detail),
        SqlError::Storage(storage) => classify_message(&storage.to_string()),
        _ => INTERNAL_ERROR,
    };
    if code == INTERNAL_ERROR {
        tracing::error!(%message, "pg: internal error");
    }
    error_with(code, clean(&message))
}

fn error_with(code: &str, message: String) -> PgWireError {
    error(code, message)
}

/// A DataFusion error of the catalog context.
pub fn from_datafusion(error: &datafusion::error::DataFusionError) -> PgWireError {
    let message = error.to_string();
    let code = match error.find_root() {
        datafusion::error::DataFusionError::SQL(..) => {
            let code = classify_message(&message);
            if code == INTERNAL_ERROR {
                SYNTAX_ERROR
            } else {
                code
            }
        }
        datafusion::error::DataFusionError::ResourcesExhausted(_) => OUT_OF_MEMORY,
        datafusion::error::DataFusionError::NotImplemented(_) => FEATURE_NOT_SUPPORTED,
        _ => classify_message(&message),
    };
    self::error(code, clean(&message))
}

/// The CQL executor's error (Postgres DML runs through it).
pub fn from_cql(error: &CqlError) -> PgWireError {
    let message = error.to_string();
    let code = match error {
        CqlError::Syntax(_) => SYNTAX_ERROR,
        CqlError::AlreadyExists { .. } => DUPLICATE_TABLE,
        CqlError::Overloaded(_) => INSUFFICIENT_RESOURCES,
        CqlError::Server(_) => INTERNAL_ERROR,
        CqlError::Invalid(detail) | CqlError::Config(detail) => {
            let lower = detail.to_ascii_lowercase();
            if lower.contains("column")
                && (lower.contains("undefined")
                    || lower.contains("unknown")
                    || lower.contains("no column"))
            {
                UNDEFINED_COLUMN
            } else if lower.contains("does not exist")
                || lower.contains("unknown table")
                || lower.contains("unknown keyspace")
            {
                UNDEFINED_TABLE
            } else if lower.contains("primary key")
                || lower.contains("partition key")
                || lower.contains("clustering")
                || lower.contains("restrict")
            {
                FEATURE_NOT_SUPPORTED
            } else if lower.contains("out of range") || lower.contains("overflow") {
                NUMERIC_VALUE_OUT_OF_RANGE
            } else {
                INVALID_TEXT_REPRESENTATION
            }
        }
        CqlError::Protocol(_) | CqlError::Unprepared(_) => INTERNAL_ERROR,
    };
    self::error(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datafusion_messages_map_to_their_sqlstates() {
        for (message, code) in [
            (
                "Error during planning: table 'datafusion.ks.nope' not found",
                UNDEFINED_TABLE,
            ),
            (
                "Schema error: No field named nope. Valid fields are ks.t.id.",
                UNDEFINED_COLUMN,
            ),
            (
                "SQL error: ParserError(\"Expected: an expression, found: FROM\")",
                SYNTAX_ERROR,
            ),
            (
                "Error during planning: Invalid function 'nope'.",
                UNDEFINED_FUNCTION,
            ),
            ("Arrow error: Divide by zero error", DIVISION_BY_ZERO),
            (
                "Arrow error: Cast error: Cannot cast string 'x' to value of Int32 type",
                INVALID_TEXT_REPRESENTATION,
            ),
            (
                "This feature is not implemented: LATERAL",
                FEATURE_NOT_SUPPORTED,
            ),
        ] {
            assert_eq!(classify_message(message), code, "{message}");
        }
    }
}
