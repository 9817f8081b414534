//! The crate's one error type.
//!
//! Checking never fails: a broken history is reported as anomalies, not as an error. Errors
//! come only from recording a history wrongly (completing an operation twice, a completion
//! whose shape does not match its invocation) and from parsing JSON-lines files.

use crate::history::OpId;

/// Errors from building a [`crate::History`] or reading one from JSON lines.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("operation {0} does not exist in this history")]
    UnknownOperation(OpId),
    #[error("operation {0} was already completed")]
    AlreadyCompleted(OpId),
    #[error("operation {op} completes at {complete_time}, before its invocation at {invoke_time}")]
    CompletionBeforeInvocation {
        op: OpId,
        invoke_time: u64,
        complete_time: u64,
    },
    #[error("operation {op}: completion does not match invocation: {reason}")]
    CompletionMismatch { op: OpId, reason: String },
    #[error("line {line}: invalid json: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: invalid field `{field}`: {reason}")]
    InvalidField {
        line: usize,
        field: &'static str,
        reason: String,
    },
    #[error("line {line}: completion for process {process} has no outstanding invocation")]
    UnmatchedCompletion { line: usize, process: u64 },
    #[error("line {line}: operation {op} is invoked twice")]
    DuplicateInvocation { line: usize, op: u64 },
    #[error("line {line}: {source}")]
    Line {
        line: usize,
        source: Box<CheckerError>,
    },
    #[error("read or write history file: {0}")]
    Io(#[from] std::io::Error),
}
