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
    /// The data store cannot execute a transaction body (an [`Update::Opaque`] it does not
    /// understand). Deterministic: every node would fail the same way.
    ///
    /// [`Update::Opaque`]: crate::txn::Update::Opaque
    #[error("cannot execute the transaction body: {0}")]
    Execution(String),
    /// The node's configuration cannot run (checked when it opens).
    #[error("invalid node configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;
