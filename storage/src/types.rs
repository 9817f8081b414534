//! CQL types: every type Cassandra 5 defines except counters (recognised,
//! refused with a clear error).
//!
//! A type is a tree. Collections, tuples and user-defined types may be
//! *frozen* (stored as one opaque value) or *multi-cell* (each element a cell
//! of its own, updatable individually). Tuples are always frozen, as in
//! Cassandra; collections nested inside collections must be frozen.

use std::fmt;
use std::sync::Arc;

/// A CQL data type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CqlType {
    Ascii,
    Bigint,
    Blob,
    Boolean,
    /// Recognised so DDL can say so clearly; every use is refused.
    Counter,
    Date,
    Decimal,
    Double,
    Duration,
    Float,
    Inet,
    Int,
    Smallint,
    /// `text` and `varchar` are the same type.
    Text,
    Time,
    Timestamp,
    Timeuuid,
    Tinyint,
    Uuid,
    Varint,
    List(Box<CqlType>),
    Set(Box<CqlType>),
    Map(Box<CqlType>, Box<CqlType>),
    Tuple(Vec<CqlType>),
    Udt(Arc<UdtDefinition>),
    /// `frozen<T>`: T is a collection or a UDT stored as one value.
    Frozen(Box<CqlType>),
}

/// A user-defined type, resolved: the field types are complete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdtDefinition {
    pub keyspace: String,
    pub name: String,
    pub fields: Vec<(String, CqlType)>,
}

impl CqlType {
    /// Returns true for a collection or UDT whose elements are separate cells.
    pub fn is_multi_cell(&self) -> bool {
        matches!(self, CqlType::List(_) | CqlType::Set(_) | CqlType::Map(..) | CqlType::Udt(_))
    }

    /// Returns the type without a `frozen<>` wrapper.
    pub fn unfrozen(&self) -> &CqlType {
        match self {
            CqlType::Frozen(inner) => inner.unfrozen(),
            other => other,
        }
    }

    /// Returns `frozen<self>` for collections and UDTs, `self` otherwise.
    pub fn frozen(self) -> CqlType {
        if self.is_multi_cell() { CqlType::Frozen(Box::new(self)) } else { self }
    }
}

impl fmt::Display for CqlType {
    /// Formats the type as CQL writes it (`map<text, frozen<list<int>>>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CqlType::Ascii => f.write_str("ascii"),
            CqlType::Bigint => f.write_str("bigint"),
            CqlType::Blob => f.write_str("blob"),
            CqlType::Boolean => f.write_str("boolean"),
            CqlType::Counter => f.write_str("counter"),
            CqlType::Date => f.write_str("date"),
            CqlType::Decimal => f.write_str("decimal"),
            CqlType::Double => f.write_str("double"),
            CqlType::Duration => f.write_str("duration"),
            CqlType::Float => f.write_str("float"),
            CqlType::Inet => f.write_str("inet"),
            CqlType::Int => f.write_str("int"),
            CqlType::Smallint => f.write_str("smallint"),
            CqlType::Text => f.write_str("text"),
            CqlType::Time => f.write_str("time"),
            CqlType::Timestamp => f.write_str("timestamp"),
            CqlType::Timeuuid => f.write_str("timeuuid"),
            CqlType::Tinyint => f.write_str("tinyint"),
            CqlType::Uuid => f.write_str("uuid"),
            CqlType::Varint => f.write_str("varint"),
            CqlType::List(element) => write!(f, "list<{element}>"),
            CqlType::Set(element) => write!(f, "set<{element}>"),
            CqlType::Map(key, value) => write!(f, "map<{key}, {value}>"),
            CqlType::Tuple(fields) => {
                f.write_str("tuple<")?;
                for (field_idx, field) in fields.iter().enumerate() {
                    if field_idx > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{field}")?;
                }
                f.write_str(">")
            }
            CqlType::Udt(udt) => write!(f, "{}", udt.name),
            CqlType::Frozen(inner) => write!(f, "frozen<{inner}>"),
        }
    }
}
