//! The crate's error type. Protocol outcomes (preempted, timed out, invalidated) are not errors:
//! they are client outcomes. Errors here mean the node cannot go on: storage failed, or durable
//! state does not decode.

/// An error that stops the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage failed: {0}")]
    Storage(#[from] concord_storage::Error),
    #[error("corrupt journal record: {0}")]
    Corruption(String),
}

pub type Result<T> = std::result::Result<T, Error>;
