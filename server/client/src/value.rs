//! Typed values and rows: a Rust-native [`Value`] for every CQL type and a
//! [`Row`] of values by column name, converted to and from the API's
//! `concord.v1.Value` at the edge.

use std::collections::BTreeMap;
use std::net::IpAddr;

use concord_api::v1::{self, value::Kind};

/// A CQL value as the SDK sends and receives it. The node types every value
/// against its column: a kind that does not fit the column's CQL type is
/// refused (`INVALID_VALUE`), never converted by guessing. [`Value::Int`]
/// fits tinyint, smallint, int, bigint, varint, float and double (range
/// checked); [`Value::Double`] fits float and double.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    /// tinyint, smallint, int, bigint, counter.
    Int(i64),
    /// float, double.
    Double(f64),
    /// text, varchar, ascii.
    Text(String),
    Blob(Vec<u8>),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i64),
    /// Nanoseconds since midnight.
    Time(i64),
    /// uuid and timeuuid.
    Uuid([u8; 16]),
    Inet(IpAddr),
    /// Decimal digits, optionally signed.
    Varint(String),
    /// `unscaled × 10^-scale`, `unscaled` as decimal digits.
    Decimal {
        unscaled: String,
        scale: i32,
    },
    Duration {
        months: i32,
        days: i32,
        nanoseconds: i64,
    },
    List(Vec<Value>),
    /// Sent in any order; the node sorts and deduplicates.
    Set(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Tuple(Vec<Value>),
    /// Fields by name; a field left out is null.
    Udt(BTreeMap<String, Value>),
}

impl Value {
    /// The integer, for every integer kind.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) | Value::Timestamp(i) | Value::Date(i) | Value::Time(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, for text values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number, for double values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// The boolean, for boolean values.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(value: $t) -> Value {
                Value::Int(i64::from(value))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Double(value)
    }
}

impl From<f32> for Value {
    fn from(value: f32) -> Value {
        Value::Double(f64::from(value))
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Boolean(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Value {
        Value::Blob(value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

/// A row: values by column name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    columns: BTreeMap<String, Value>,
}

impl Row {
    pub fn new() -> Row {
        Row::default()
    }

    /// The row with `column` set to `value` (builder style).
    ///
    /// ```
    /// use concord_client::{Row, Value};
    /// let row = Row::new().with("id", 1).with("owner", "ann");
    /// assert_eq!(row.get("owner"), Some(&Value::Text("ann".into())));
    /// ```
    pub fn with(mut self, column: impl Into<String>, value: impl Into<Value>) -> Row {
        self.columns.insert(column.into(), value.into());
        self
    }

    pub fn set(&mut self, column: impl Into<String>, value: impl Into<Value>) {
        self.columns.insert(column.into(), value.into());
    }

    /// The column's value; `None` when the row has no such column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns.get(column)
    }

    pub fn columns(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.columns
            .iter()
            .map(|(name, value)| (name.as_str(), value))
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

impl From<Value> for v1::Value {
    fn from(value: Value) -> v1::Value {
        let list = |values: Vec<Value>| v1::ValueList {
            values: values.into_iter().map(Into::into).collect(),
        };
        let kind = match value {
            Value::Null => None,
            Value::Boolean(b) => Some(Kind::Boolean(b)),
            Value::Int(i) => Some(Kind::Int(i)),
            Value::Double(d) => Some(Kind::Double(d)),
            Value::Text(s) => Some(Kind::Text(s)),
            Value::Blob(b) => Some(Kind::Blob(b)),
            Value::Timestamp(t) => Some(Kind::Timestamp(t)),
            Value::Date(d) => Some(Kind::Date(d)),
            Value::Time(t) => Some(Kind::Time(t)),
            Value::Uuid(u) => Some(Kind::Uuid(u.to_vec())),
            Value::Inet(IpAddr::V4(ip)) => Some(Kind::Inet(ip.octets().to_vec())),
            Value::Inet(IpAddr::V6(ip)) => Some(Kind::Inet(ip.octets().to_vec())),
            Value::Varint(v) => Some(Kind::Varint(v)),
            Value::Decimal { unscaled, scale } => {
                Some(Kind::Decimal(v1::Decimal { unscaled, scale }))
            }
            Value::Duration {
                months,
                days,
                nanoseconds,
            } => Some(Kind::Duration(v1::Duration {
                months,
                days,
                nanoseconds,
            })),
            Value::List(values) => Some(Kind::List(list(values))),
            Value::Set(values) => Some(Kind::Set(list(values))),
            Value::Map(entries) => Some(Kind::Map(v1::ValueMap {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| v1::MapEntry {
                        key: Some(key.into()),
                        value: Some(value.into()),
                    })
                    .collect(),
            })),
            Value::Tuple(values) => Some(Kind::Tuple(list(values))),
            Value::Udt(fields) => Some(Kind::Udt(v1::UdtValue {
                fields: fields
                    .into_iter()
                    .map(|(name, value)| (name, value.into()))
                    .collect(),
            })),
        };
        v1::Value { kind }
    }
}

impl From<v1::Value> for Value {
    fn from(value: v1::Value) -> Value {
        let list = |list: v1::ValueList| list.values.into_iter().map(Value::from).collect();
        match value.kind {
            None | Some(Kind::Null(_)) => Value::Null,
            Some(Kind::Boolean(b)) => Value::Boolean(b),
            Some(Kind::Int(i)) => Value::Int(i),
            Some(Kind::Double(d)) => Value::Double(d),
            Some(Kind::Text(s)) => Value::Text(s),
            Some(Kind::Blob(b)) => Value::Blob(b),
            Some(Kind::Timestamp(t)) => Value::Timestamp(t),
            Some(Kind::Date(d)) => Value::Date(d),
            Some(Kind::Time(t)) => Value::Time(t),
            Some(Kind::Uuid(u)) => match <[u8; 16]>::try_from(u.as_slice()) {
                Ok(u) => Value::Uuid(u),
                Err(_) => Value::Blob(u),
            },
            Some(Kind::Inet(b)) => match b.len() {
                4 => <[u8; 4]>::try_from(b.as_slice())
                    .map_or(Value::Blob(b.clone()), |ip| Value::Inet(IpAddr::from(ip))),
                16 => <[u8; 16]>::try_from(b.as_slice())
                    .map_or(Value::Blob(b.clone()), |ip| Value::Inet(IpAddr::from(ip))),
                _ => Value::Blob(b),
            },
            Some(Kind::Varint(v)) => Value::Varint(v),
            Some(Kind::Decimal(d)) => Value::Decimal {
                unscaled: d.unscaled,
                scale: d.scale,
            },
            Some(Kind::Duration(d)) => Value::Duration {
                months: d.months,
                days: d.days,
                nanoseconds: d.nanoseconds,
            },
            Some(Kind::List(l)) => Value::List(list(l)),
            Some(Kind::Set(l)) => Value::Set(list(l)),
            Some(Kind::Map(m)) => Value::Map(
                m.entries
                    .into_iter()
                    .map(|entry| {
                        (
                            entry.key.map_or(Value::Null, Value::from),
                            entry.value.map_or(Value::Null, Value::from),
                        )
                    })
                    .collect(),
            ),
            Some(Kind::Tuple(l)) => Value::Tuple(list(l)),
            Some(Kind::Udt(u)) => Value::Udt(
                u.fields
                    .into_iter()
                    .map(|(name, value)| (name, Value::from(value)))
                    .collect(),
            ),
        }
    }
}

impl From<Row> for v1::Row {
    fn from(row: Row) -> v1::Row {
        v1::Row {
            columns: row
                .columns
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect(),
        }
    }
}

impl From<v1::Row> for Row {
    fn from(row: v1::Row) -> Row {
        Row {
            columns: row
                .columns
                .into_iter()
                .map(|(name, value)| (name, Value::from(value)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_the_wire_message() {
        let values = vec![
            Value::Null,
            Value::Boolean(true),
            Value::Int(-7),
            Value::Double(2.5),
            Value::Text("x".into()),
            Value::Blob(vec![1, 2]),
            Value::Timestamp(1_700_000_000_000),
            Value::Date(-3),
            Value::Time(5),
            Value::Uuid([7; 16]),
            Value::Inet("10.0.0.1".parse().unwrap()),
            Value::Inet("::1".parse().unwrap()),
            Value::Varint("-12345678901234567890".into()),
            Value::Decimal {
                unscaled: "314".into(),
                scale: 2,
            },
            Value::Duration {
                months: 1,
                days: 2,
                nanoseconds: 3,
            },
            Value::List(vec![Value::Int(1), Value::Null]),
            Value::Set(vec![Value::Text("a".into())]),
            Value::Map(vec![(Value::Text("k".into()), Value::Int(1))]),
            Value::Tuple(vec![Value::Int(1), Value::Text("t".into())]),
            Value::Udt(BTreeMap::from([("f".to_owned(), Value::Int(9))])),
        ];
        for value in values {
            let wire: v1::Value = value.clone().into();
            assert_eq!(Value::from(wire), value);
        }
    }
}
