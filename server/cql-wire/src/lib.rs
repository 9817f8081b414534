//! `concord-cql-wire`: the CQL native protocol's framing, below any
//! statement semantics.
//!
//! **Owns**: v4 envelope headers and lz4 bodies, v5 segments (CRC24 header,
//! CRC32 payload, optional lz4) in [`frame`]; request body decoding and
//! response body encoding over the `cassandra-protocol` codec in
//! [`codec`]; the protocol version check whose message drivers downgrade on.
//!
//! **Must never**: depend on another Concord crate (fuzzers, the client SDK
//! and `jepsen` use it without linking the engine), trust a length from the
//! wire before checking it against the caller's limit, or let a panic of
//! the third-party codec escape (it is caught and reported as a protocol
//! error).
//!
//! Key types: [`frame::EnvelopeHeader`], [`frame::SegmentRead`],
//! [`WireError`].

pub mod codec;
pub mod frame;

/// A frame that cannot be read or a response that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The peer sent bytes that break the protocol (CQL error 0x000A).
    #[error("{0}")]
    Protocol(String),
    /// A response failed to encode: a bug.
    #[error("{0}")]
    Encode(String),
}

pub type WireResult<T> = Result<T, WireError>;
