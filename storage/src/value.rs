//! CQL values, in memory.
//!
//! `CqlValue` is the typed form of a value. Null is not a value: a missing
//! value is `None` wherever a column or field may be null. The byte forms
//! live beside it:
//! - [`native`]: the CQL native protocol serialization (what drivers send and
//!   what the row store keeps in a cell), and
//! - [`ordered`]: an order-preserving encoding used in keys, whose byte order
//!   equals CQL's comparison order.

pub mod native;
pub mod ordered;

use std::net::IpAddr;

use num_bigint::BigInt;

/// A CQL value. Collections hold their elements in CQL order where the type
/// defines one (sets sorted and deduplicated, maps sorted by key).
#[derive(Debug, Clone, PartialEq)]
pub enum CqlValue {
    Ascii(String),
    Bigint(i64),
    Blob(Vec<u8>),
    Boolean(bool),
    /// Days, as the protocol encodes them: an unsigned 32-bit integer with the
    /// Unix epoch at 2^31.
    Date(u32),
    Decimal(Decimal),
    Double(f64),
    Duration(CqlDuration),
    Float(f32),
    Inet(IpAddr),
    Int(i32),
    Smallint(i16),
    Text(String),
    /// Nanoseconds since midnight, 0 ..= 86_399_999_999_999.
    Time(i64),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    /// A version-1 UUID.
    Timeuuid([u8; 16]),
    Tinyint(i8),
    Uuid([u8; 16]),
    Varint(BigInt),
    List(Vec<CqlValue>),
    Set(Vec<CqlValue>),
    Map(Vec<(CqlValue, CqlValue)>),
    /// Tuple fields, each possibly null.
    Tuple(Vec<Option<CqlValue>>),
    /// UDT fields in declaration order, each possibly null. Trailing fields
    /// missing from the serialized form are null.
    Udt(Vec<Option<CqlValue>>),
}

/// An arbitrary-precision decimal: `unscaled × 10^-scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub unscaled: BigInt,
    pub scale: i32,
}

/// A CQL duration: months, days and nanoseconds, all of the same sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqlDuration {
    pub months: i32,
    pub days: i32,
    pub nanoseconds: i64,
}

/// The sort direction of a clustering column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ClusteringOrder {
    Asc,
    Desc,
}
