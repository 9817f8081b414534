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

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;

use num_bigint::{BigInt, Sign};

use crate::error::{Error, Result};
use crate::types::CqlType;

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

// ---------------------------------------------------------------------------------------------
// Validation and comparison.
//
// CQL's comparison order depends only on the values: every variant of `CqlValue` determines
// how it orders (text and blob by bytes, uuid and timeuuid each their own way, ...), so
// `compare` reads the type only to document intent. The order-preserving encoding in
// `ordered` reuses the order keys defined here (`uuid_order_key`, `f64_order_bits`,
// `Decimal::normalized`), so the two cannot drift apart.

/// The largest `time` value: the last nanosecond of a day.
pub const TIME_NANOSECONDS_MAX: i64 = 86_400_000_000_000 - 1;

impl CqlValue {
    /// Checks the value against the type: the variant matches, `time` is within a day,
    /// `ascii` is 7-bit, `timeuuid` is a version-1 UUID, a duration's parts share one sign,
    /// a tuple has exactly the type's arity, a UDT value at most as many fields as the type,
    /// set elements and map keys are sorted by [`CqlValue::compare`] and unique, and every
    /// nested value is valid for its type. `counter` accepts a `Bigint`, the form the native
    /// protocol uses.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidValue`] whose `target` is the type as CQL writes it and whose
    /// reason says what is wrong, prefixed by where (`element 2: ...`) for nested values.
    pub fn validate(&self, ty: &CqlType) -> Result<()> {
        use CqlValue as V;
        let wrong_variant = || {
            Error::invalid_value(
                ty.to_string(),
                format!("got {} value", self.kind_with_article()),
            )
        };
        match (ty.unfrozen(), self) {
            (CqlType::Ascii, V::Ascii(text)) => validate_ascii(text, ty),
            (CqlType::Time, V::Time(nanoseconds)) => {
                if (0..=TIME_NANOSECONDS_MAX).contains(nanoseconds) {
                    Ok(())
                } else {
                    Err(Error::invalid_value(
                        ty.to_string(),
                        format!(
                            "{nanoseconds} is outside 0..={TIME_NANOSECONDS_MAX} nanoseconds \
                             since midnight"
                        ),
                    ))
                }
            }
            (CqlType::Timeuuid, V::Timeuuid(bytes)) => match uuid_version(bytes) {
                1 => Ok(()),
                version => Err(Error::invalid_value(
                    ty.to_string(),
                    format!("uuid version is {version}, a timeuuid must be version 1"),
                )),
            },
            (CqlType::Duration, V::Duration(duration)) => duration.validate(),
            (CqlType::Bigint | CqlType::Counter, V::Bigint(_))
            | (CqlType::Blob, V::Blob(_))
            | (CqlType::Boolean, V::Boolean(_))
            | (CqlType::Date, V::Date(_))
            | (CqlType::Decimal, V::Decimal(_))
            | (CqlType::Double, V::Double(_))
            | (CqlType::Float, V::Float(_))
            | (CqlType::Inet, V::Inet(_))
            | (CqlType::Int, V::Int(_))
            | (CqlType::Smallint, V::Smallint(_))
            | (CqlType::Text, V::Text(_))
            | (CqlType::Timestamp, V::Timestamp(_))
            | (CqlType::Tinyint, V::Tinyint(_))
            | (CqlType::Uuid, V::Uuid(_))
            | (CqlType::Varint, V::Varint(_)) => Ok(()),
            (CqlType::List(element_type), V::List(elements)) => {
                for (element_idx, element) in elements.iter().enumerate() {
                    element.validate(element_type).map_err(|error| {
                        nested_error(ty, format!("element {element_idx}"), error)
                    })?;
                }
                Ok(())
            }
            (CqlType::Set(element_type), V::Set(elements)) => {
                for (element_idx, element) in elements.iter().enumerate() {
                    element.validate(element_type).map_err(|error| {
                        nested_error(ty, format!("element {element_idx}"), error)
                    })?;
                }
                validate_sorted_unique(elements.iter(), ty, "element")
            }
            (CqlType::Map(key_type, value_type), V::Map(entries)) => {
                for (entry_idx, (key, value)) in entries.iter().enumerate() {
                    key.validate(key_type)
                        .map_err(|error| nested_error(ty, format!("key {entry_idx}"), error))?;
                    value.validate(value_type).map_err(|error| {
                        nested_error(ty, format!("value of key {entry_idx}"), error)
                    })?;
                }
                validate_sorted_unique(entries.iter().map(|(key, _)| key), ty, "key")
            }
            (CqlType::Tuple(field_types), V::Tuple(fields)) => {
                if fields.len() != field_types.len() {
                    return Err(Error::invalid_value(
                        ty.to_string(),
                        format!(
                            "tuple has {} fields, the type has {}",
                            fields.len(),
                            field_types.len()
                        ),
                    ));
                }
                for (field_idx, (field, field_type)) in fields.iter().zip(field_types).enumerate() {
                    if let Some(field) = field {
                        field.validate(field_type).map_err(|error| {
                            nested_error(ty, format!("field {field_idx}"), error)
                        })?;
                    }
                }
                Ok(())
            }
            (CqlType::Udt(definition), V::Udt(fields)) => {
                if fields.len() > definition.fields.len() {
                    return Err(Error::invalid_value(
                        ty.to_string(),
                        format!(
                            "value has {} fields, the type declares {}",
                            fields.len(),
                            definition.fields.len()
                        ),
                    ));
                }
                for (field, (field_name, field_type)) in fields.iter().zip(&definition.fields) {
                    if let Some(field) = field {
                        field.validate(field_type).map_err(|error| {
                            nested_error(ty, format!("field {field_name}"), error)
                        })?;
                    }
                }
                Ok(())
            }
            _ => Err(wrong_variant()),
        }
    }

    /// Compares two values in CQL order, the order Cassandra gives clustering values:
    ///
    /// - integers, `date` (unsigned days), `time`, `timestamp`, `varint` and `decimal`
    ///   numerically; decimals by value, so `1.0` and `1.00` are `Equal`;
    /// - `float` and `double` as Java's `Float.compare` / `Double.compare`: `-0.0 < 0.0`, and
    ///   every NaN equal to every other NaN and greater than `+inf`;
    /// - `text`, `ascii`, `blob` and `inet` by unsigned bytes (an IPv4 address is its 4 bytes,
    ///   an IPv6 one its 16), a prefix before a longer value; `boolean` false before true;
    /// - `uuid` as Cassandra's `UUIDType`: by version, then for version 1 by timestamp, else by
    ///   the most significant 64 bits unsigned, then by the least significant 64 bits
    ///   unsigned; `timeuuid` as `TimeUUIDType`: by timestamp (signed, with the version
    ///   nibble on top), then the last 8 bytes as *signed* bytes;
    /// - lists, sets, maps (key then value), tuples and UDTs element by element, then the
    ///   shorter first; a null tuple or UDT field before any value;
    /// - `duration` (never a key in CQL) by months, then days, then nanoseconds.
    ///
    /// The order depends only on the values; `ty` states the type they share. Values of
    /// different variants (a caller bug, which `validate` catches) order by variant, so the
    /// result is still a total order.
    pub fn compare(&self, other: &CqlValue, ty: &CqlType) -> Ordering {
        let _ = ty;
        compare_values(self, other)
    }

    /// Returns the name of the value's kind as CQL spells the type (`int`, `list`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            CqlValue::Ascii(_) => "ascii",
            CqlValue::Bigint(_) => "bigint",
            CqlValue::Blob(_) => "blob",
            CqlValue::Boolean(_) => "boolean",
            CqlValue::Date(_) => "date",
            CqlValue::Decimal(_) => "decimal",
            CqlValue::Double(_) => "double",
            CqlValue::Duration(_) => "duration",
            CqlValue::Float(_) => "float",
            CqlValue::Inet(_) => "inet",
            CqlValue::Int(_) => "int",
            CqlValue::Smallint(_) => "smallint",
            CqlValue::Text(_) => "text",
            CqlValue::Time(_) => "time",
            CqlValue::Timestamp(_) => "timestamp",
            CqlValue::Timeuuid(_) => "timeuuid",
            CqlValue::Tinyint(_) => "tinyint",
            CqlValue::Uuid(_) => "uuid",
            CqlValue::Varint(_) => "varint",
            CqlValue::List(_) => "list",
            CqlValue::Set(_) => "set",
            CqlValue::Map(_) => "map",
            CqlValue::Tuple(_) => "tuple",
            CqlValue::Udt(_) => "user-defined type",
        }
    }

    /// Returns the kind's name with its indefinite article, for messages (`an int`).
    pub fn kind_with_article(&self) -> String {
        let kind = self.kind_name();
        let article = if kind.starts_with(['a', 'e', 'i', 'o']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {kind}")
    }

    /// A rank per variant, used only to order values of different variants.
    fn variant_rank(&self) -> u8 {
        match self {
            CqlValue::Ascii(_) => 0,
            CqlValue::Bigint(_) => 1,
            CqlValue::Blob(_) => 2,
            CqlValue::Boolean(_) => 3,
            CqlValue::Date(_) => 4,
            CqlValue::Decimal(_) => 5,
            CqlValue::Double(_) => 6,
            CqlValue::Duration(_) => 7,
            CqlValue::Float(_) => 8,
            CqlValue::Inet(_) => 9,
            CqlValue::Int(_) => 10,
            CqlValue::Smallint(_) => 11,
            CqlValue::Text(_) => 12,
            CqlValue::Time(_) => 13,
            CqlValue::Timestamp(_) => 14,
            CqlValue::Timeuuid(_) => 15,
            CqlValue::Tinyint(_) => 16,
            CqlValue::Uuid(_) => 17,
            CqlValue::Varint(_) => 18,
            CqlValue::List(_) => 19,
            CqlValue::Set(_) => 20,
            CqlValue::Map(_) => 21,
            CqlValue::Tuple(_) => 22,
            CqlValue::Udt(_) => 23,
        }
    }
}

fn nested_error(ty: &CqlType, location: String, inner: Error) -> Error {
    Error::invalid_value(ty.to_string(), format!("{location}: {inner}"))
}

fn validate_ascii(text: &str, ty: &CqlType) -> Result<()> {
    match text.bytes().enumerate().find(|(_, byte)| !byte.is_ascii()) {
        None => Ok(()),
        Some((byte_idx, byte)) => Err(Error::invalid_value(
            ty.to_string(),
            format!("byte {byte:#04x} at offset {byte_idx} is not 7-bit ascii"),
        )),
    }
}

fn validate_sorted_unique<'a>(
    mut elements: impl Iterator<Item = &'a CqlValue>,
    ty: &CqlType,
    element_noun: &str,
) -> Result<()> {
    let Some(mut previous) = elements.next() else {
        return Ok(());
    };
    for (element_idx, element) in elements.enumerate() {
        if compare_values(previous, element) != Ordering::Less {
            return Err(Error::invalid_value(
                ty.to_string(),
                format!(
                    "{element_noun}s must be sorted and unique, but {element_noun} {} does not \
                     sort after {element_noun} {element_idx}",
                    element_idx + 1
                ),
            ));
        }
        previous = element;
    }
    Ok(())
}

fn compare_values(left: &CqlValue, right: &CqlValue) -> Ordering {
    use CqlValue as V;
    match (left, right) {
        (V::Ascii(left), V::Ascii(right)) | (V::Text(left), V::Text(right)) => {
            left.as_bytes().cmp(right.as_bytes())
        }
        (V::Bigint(left), V::Bigint(right))
        | (V::Time(left), V::Time(right))
        | (V::Timestamp(left), V::Timestamp(right)) => left.cmp(right),
        (V::Blob(left), V::Blob(right)) => left.cmp(right),
        (V::Boolean(left), V::Boolean(right)) => left.cmp(right),
        (V::Date(left), V::Date(right)) => left.cmp(right),
        (V::Decimal(left), V::Decimal(right)) => left.normalized().cmp(&right.normalized()),
        (V::Double(left), V::Double(right)) => f64_order_bits(*left).cmp(&f64_order_bits(*right)),
        (V::Float(left), V::Float(right)) => f32_order_bits(*left).cmp(&f32_order_bits(*right)),
        (V::Duration(left), V::Duration(right)) => (left.months, left.days, left.nanoseconds)
            .cmp(&(right.months, right.days, right.nanoseconds)),
        (V::Inet(left), V::Inet(right)) => inet_octets(left).cmp(&inet_octets(right)),
        (V::Int(left), V::Int(right)) => left.cmp(right),
        (V::Smallint(left), V::Smallint(right)) => left.cmp(right),
        (V::Tinyint(left), V::Tinyint(right)) => left.cmp(right),
        (V::Timeuuid(left), V::Timeuuid(right)) => {
            timeuuid_order_key(left).cmp(&timeuuid_order_key(right))
        }
        (V::Uuid(left), V::Uuid(right)) => uuid_order_key(left).cmp(&uuid_order_key(right)),
        (V::Varint(left), V::Varint(right)) => left.cmp(right),
        (V::List(left), V::List(right)) | (V::Set(left), V::Set(right)) => {
            compare_sequences(left, right, compare_values)
        }
        (V::Map(left), V::Map(right)) => compare_sequences(
            left,
            right,
            |(left_key, left_value), (right_key, right_value)| {
                compare_values(left_key, right_key)
                    .then_with(|| compare_values(left_value, right_value))
            },
        ),
        (V::Tuple(left), V::Tuple(right)) | (V::Udt(left), V::Udt(right)) => {
            compare_sequences(left, right, |left_field, right_field| {
                match (left_field, right_field) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(left), Some(right)) => compare_values(left, right),
                }
            })
        }
        _ => left.variant_rank().cmp(&right.variant_rank()),
    }
}

/// Compares element by element, then the shorter sequence first.
fn compare_sequences<T>(left: &[T], right: &[T], compare: impl Fn(&T, &T) -> Ordering) -> Ordering {
    for (left_element, right_element) in left.iter().zip(right) {
        let ordering = compare(left_element, right_element);
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    left.len().cmp(&right.len())
}

pub(crate) fn inet_octets(address: &IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(address) => address.octets().to_vec(),
        IpAddr::V6(address) => address.octets().to_vec(),
    }
}

/// The bits of the NaN every NaN is canonicalised to (Java's `Float.floatToIntBits`).
pub(crate) const F32_CANONICAL_NAN_BITS: u32 = 0x7fc0_0000;
/// The bits of the NaN every NaN is canonicalised to (Java's `Double.doubleToLongBits`).
pub(crate) const F64_CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// Maps a float to an unsigned integer with the same order as Java's `Float.compare`:
/// negative values have all bits flipped, others the sign bit set; NaNs are canonicalised
/// first, so they are equal to each other and above `+inf`.
pub(crate) fn f32_order_bits(value: f32) -> u32 {
    let bits = if value.is_nan() {
        F32_CANONICAL_NAN_BITS
    } else {
        value.to_bits()
    };
    if bits & (1 << 31) != 0 {
        !bits
    } else {
        bits | (1 << 31)
    }
}

/// Inverts [`f32_order_bits`] (NaN comes back canonical).
pub(crate) fn f32_from_order_bits(order_bits: u32) -> f32 {
    let bits = if order_bits & (1 << 31) != 0 {
        order_bits & !(1 << 31)
    } else {
        !order_bits
    };
    f32::from_bits(bits)
}

/// The `f64` twin of [`f32_order_bits`] (Java's `Double.compare`).
pub(crate) fn f64_order_bits(value: f64) -> u64 {
    let bits = if value.is_nan() {
        F64_CANONICAL_NAN_BITS
    } else {
        value.to_bits()
    };
    if bits & (1 << 63) != 0 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// Inverts [`f64_order_bits`] (NaN comes back canonical).
pub(crate) fn f64_from_order_bits(order_bits: u64) -> f64 {
    let bits = if order_bits & (1 << 63) != 0 {
        order_bits & !(1 << 63)
    } else {
        !order_bits
    };
    f64::from_bits(bits)
}

/// Returns the UUID's version: the high nibble of byte 6.
pub(crate) fn uuid_version(bytes: &[u8; 16]) -> u8 {
    bytes[6] >> 4
}

const LOW_60_BITS: u64 = (1 << 60) - 1;

/// Cassandra's `TimeUUIDType.reorderTimestampBytes`: moves `time_hi_and_version` to the top,
/// then `time_mid`, then `time_low`, so a version-1 UUID's 60-bit timestamp reads in order.
fn reorder_timestamp_bytes(most_significant: u64) -> u64 {
    (most_significant << 48)
        | ((most_significant << 16) & 0xffff_0000_0000)
        | (most_significant >> 32)
}

/// Inverts [`reorder_timestamp_bytes`].
fn unreorder_timestamp_bytes(reordered: u64) -> u64 {
    ((reordered & 0xffff_ffff) << 32) | (((reordered >> 32) & 0xffff) << 16) | (reordered >> 48)
}

fn split_uuid(bytes: &[u8; 16]) -> (u64, u64) {
    let mut most_significant = [0u8; 8];
    let mut least_significant = [0u8; 8];
    most_significant.copy_from_slice(&bytes[..8]);
    least_significant.copy_from_slice(&bytes[8..]);
    (
        u64::from_be_bytes(most_significant),
        u64::from_be_bytes(least_significant),
    )
}

fn join_uuid(most_significant: u64, least_significant: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&most_significant.to_be_bytes());
    bytes[8..].copy_from_slice(&least_significant.to_be_bytes());
    bytes
}

/// Returns 16 bytes whose unsigned order is Cassandra's `UUIDType` order: the version in the
/// top nibble, then the 60-bit timestamp (version 1) or the other 60 bits of the most
/// significant half in place (other versions), then the least significant half.
pub(crate) fn uuid_order_key(bytes: &[u8; 16]) -> [u8; 16] {
    let (most_significant, least_significant) = split_uuid(bytes);
    let version = (most_significant >> 12) & 0xf;
    let rest = if version == 1 {
        reorder_timestamp_bytes(most_significant) & LOW_60_BITS
    } else {
        ((most_significant >> 16) << 12) | (most_significant & 0xfff)
    };
    join_uuid((version << 60) | rest, least_significant)
}

/// Inverts [`uuid_order_key`].
pub(crate) fn uuid_from_order_key(key: &[u8; 16]) -> [u8; 16] {
    let (key_most_significant, least_significant) = split_uuid(key);
    let version = key_most_significant >> 60;
    let rest = key_most_significant & LOW_60_BITS;
    let most_significant = if version == 1 {
        unreorder_timestamp_bytes((version << 60) | rest)
    } else {
        ((rest >> 12) << 16) | (version << 12) | (rest & 0xfff)
    };
    join_uuid(most_significant, least_significant)
}

/// Returns 16 bytes whose unsigned order is Cassandra's `TimeUUIDType` order: the reordered
/// most significant half compared as a signed long, then the last 8 bytes as signed bytes.
pub(crate) fn timeuuid_order_key(bytes: &[u8; 16]) -> [u8; 16] {
    let (most_significant, least_significant) = split_uuid(bytes);
    let key_most_significant = reorder_timestamp_bytes(most_significant) ^ (1 << 63);
    join_uuid(
        key_most_significant,
        least_significant ^ 0x8080_8080_8080_8080,
    )
}

/// Inverts [`timeuuid_order_key`].
pub(crate) fn timeuuid_from_order_key(key: &[u8; 16]) -> [u8; 16] {
    let (key_most_significant, key_least_significant) = split_uuid(key);
    let most_significant = unreorder_timestamp_bytes(key_most_significant ^ (1 << 63));
    join_uuid(
        most_significant,
        key_least_significant ^ 0x8080_8080_8080_8080,
    )
}

impl CqlDuration {
    /// Checks that months, days and nanoseconds share one sign, as Cassandra requires.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidValue`] naming the three parts otherwise.
    pub fn validate(&self) -> Result<()> {
        let all_non_negative = self.months >= 0 && self.days >= 0 && self.nanoseconds >= 0;
        let all_non_positive = self.months <= 0 && self.days <= 0 && self.nanoseconds <= 0;
        if all_non_negative || all_non_positive {
            Ok(())
        } else {
            Err(Error::invalid_value(
                "duration",
                format!(
                    "months, days and nanoseconds must share one sign, got {}, {} and {}",
                    self.months, self.days, self.nanoseconds
                ),
            ))
        }
    }
}

/// A decimal reduced to what its value depends on, ordered by value: the sign, then (for
/// non-zero values) the adjusted exponent `e` and the digits `d1 d2 ... dn` without trailing
/// zeros such that the magnitude is `0.d1d2...dn × 10^e`. `1.0` and `1.00` normalise alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NormalizedDecimal {
    Negative {
        adjusted_exponent: i64,
        digits: Vec<u8>,
    },
    Zero,
    Positive {
        adjusted_exponent: i64,
        digits: Vec<u8>,
    },
}

impl Ord for NormalizedDecimal {
    fn cmp(&self, other: &Self) -> Ordering {
        use NormalizedDecimal as N;
        match (self, other) {
            (N::Zero, N::Zero) => Ordering::Equal,
            (N::Negative { .. }, N::Zero | N::Positive { .. }) | (N::Zero, N::Positive { .. }) => {
                Ordering::Less
            }
            (N::Positive { .. }, N::Zero | N::Negative { .. }) | (N::Zero, N::Negative { .. }) => {
                Ordering::Greater
            }
            (
                N::Positive {
                    adjusted_exponent: left_exponent,
                    digits: left_digits,
                },
                N::Positive {
                    adjusted_exponent: right_exponent,
                    digits: right_digits,
                },
            ) => (left_exponent, left_digits).cmp(&(right_exponent, right_digits)),
            (
                N::Negative {
                    adjusted_exponent: left_exponent,
                    digits: left_digits,
                },
                N::Negative {
                    adjusted_exponent: right_exponent,
                    digits: right_digits,
                },
            ) => (right_exponent, right_digits).cmp(&(left_exponent, left_digits)),
        }
    }
}

impl PartialOrd for NormalizedDecimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The most trailing zeros [`Decimal::from_normalized`] appends to fit the scale in an `i32`;
/// more means the input is not the normal form of any `Decimal` a client could send.
const DECIMAL_PADDING_ZEROS_MAX: i64 = 1 << 20;

impl Decimal {
    /// Returns the value's sign, adjusted exponent and significant digits (each 0..=9).
    pub(crate) fn normalized(&self) -> NormalizedDecimal {
        let (sign, magnitude) = (self.unscaled.sign(), self.unscaled.magnitude());
        if sign == Sign::NoSign {
            return NormalizedDecimal::Zero;
        }
        let all_digits = magnitude.to_radix_be(10);
        let n_digits = all_digits.len() as i64;
        let n_significant = all_digits
            .iter()
            .rposition(|digit| *digit != 0)
            .map_or(0, |idx| idx + 1);
        assert!(
            n_significant > 0,
            "a non-zero magnitude has a non-zero digit"
        );
        assert_ne!(all_digits[0], 0, "the leading digit is non-zero");
        let digits = all_digits[..n_significant].to_vec();
        let adjusted_exponent = n_digits - i64::from(self.scale);
        match sign {
            Sign::Minus => NormalizedDecimal::Negative {
                adjusted_exponent,
                digits,
            },
            _ => NormalizedDecimal::Positive {
                adjusted_exponent,
                digits,
            },
        }
    }

    /// Builds the canonical decimal of a normalised value: no trailing zeros in `unscaled`
    /// (so `1.00` comes back as `1`, `100` as `1E+2`), unless the scale would not fit an
    /// `i32`, in which case the fewest zeros that make it fit are kept; zero is `0` scale 0.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidValue`] if no `Decimal` has this value (digits out of 0..=9,
    /// a leading or trailing zero digit, or an exponent out of range).
    pub(crate) fn from_normalized(normalized: &NormalizedDecimal) -> Result<Decimal> {
        let invalid = |reason: &str| Error::invalid_value("decimal", reason);
        let (sign, adjusted_exponent, digits) = match normalized {
            NormalizedDecimal::Zero => {
                return Ok(Decimal {
                    unscaled: BigInt::from(0),
                    scale: 0,
                });
            }
            NormalizedDecimal::Negative {
                adjusted_exponent,
                digits,
            } => (Sign::Minus, *adjusted_exponent, digits),
            NormalizedDecimal::Positive {
                adjusted_exponent,
                digits,
            } => (Sign::Plus, *adjusted_exponent, digits),
        };
        if digits.first().is_none_or(|digit| *digit == 0) || digits.last() == Some(&0) {
            return Err(invalid("normalised digits must not start or end with zero"));
        }
        let n_digits = i64::try_from(digits.len()).map_err(|_| invalid("too many digits"))?;
        let scale = n_digits
            .checked_sub(adjusted_exponent)
            .ok_or_else(|| invalid("exponent out of range"))?;
        let n_padding_zeros = i64::from(i32::MIN).saturating_sub(scale).max(0);
        if n_padding_zeros > DECIMAL_PADDING_ZEROS_MAX {
            return Err(invalid("exponent out of range"));
        }
        let scale = i32::try_from(scale.saturating_add(n_padding_zeros))
            .map_err(|_| invalid("scale does not fit a 32-bit integer"))?;
        let mut all_digits = digits.clone();
        all_digits.resize(digits.len() + n_padding_zeros as usize, 0);
        let unscaled = BigInt::from_radix_be(sign, &all_digits, 10)
            .ok_or_else(|| invalid("digit out of range 0..=9"))?;
        let decimal = Decimal { unscaled, scale };
        assert_eq!(&decimal.normalized(), normalized);
        Ok(decimal)
    }
}

impl fmt::Display for Decimal {
    /// Formats as `unscaled` with the decimal point `scale` places from the right, using an
    /// exponent when that would need more than a few padding zeros (`1.5`, `-0.001`, `1E+3`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.magnitude().to_str_radix(10);
        let sign = if self.unscaled.sign() == Sign::Minus {
            "-"
        } else {
            ""
        };
        let scale = i64::from(self.scale);
        let n_digits = digits.len() as i64;
        if scale == 0 {
            write!(f, "{sign}{digits}")
        } else if scale > 0 && scale < n_digits {
            let (integer_part, fraction_part) = digits.split_at((n_digits - scale) as usize);
            write!(f, "{sign}{integer_part}.{fraction_part}")
        } else if scale >= n_digits && scale - n_digits < 6 {
            let zeros = "0".repeat((scale - n_digits) as usize);
            write!(f, "{sign}0.{zeros}{digits}")
        } else {
            write!(f, "{sign}{digits}E{:+}", -scale)
        }
    }
}

/// Checks that a tuple or UDT value has no more fields than its type, as
/// both byte encodings require before writing fields.
///
/// # Errors
/// `InvalidValue` naming both counts.
fn check_field_count(value_fields: usize, type_fields: usize, ty: &CqlType) -> crate::Result<()> {
    if value_fields > type_fields {
        return Err(crate::Error::invalid_value(
            ty.to_string(),
            format!("value has {value_fields} fields, the type has {type_fields}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;
    use crate::testing::strategies::{arb_type, arb_type_and_values};
    use crate::types::UdtDefinition;

    /// Checks the error `validate` gives.
    fn check_invalid(value: CqlValue, ty: CqlType, expected: Expect) {
        let error = value.validate(&ty).expect_err("invalid");
        assert!(matches!(error, Error::InvalidValue { .. }));
        expected.assert_eq(&error.to_string());
    }

    fn list_of(element_type: CqlType) -> CqlType {
        CqlType::List(Box::new(element_type))
    }

    #[test]
    fn validation_errors() {
        check_invalid(
            CqlValue::Text("x".into()),
            CqlType::Int,
            expect!["invalid value for int: got a text value"],
        );
        check_invalid(
            CqlValue::Int(1),
            CqlType::Ascii,
            expect!["invalid value for ascii: got an int value"],
        );
        check_invalid(
            CqlValue::Time(86_400_000_000_000),
            CqlType::Time,
            expect![
                "invalid value for time: 86400000000000 is outside 0..=86399999999999 nanoseconds since midnight"
            ],
        );
        check_invalid(
            CqlValue::Time(-1),
            CqlType::Time,
            expect![
                "invalid value for time: -1 is outside 0..=86399999999999 nanoseconds since midnight"
            ],
        );
        check_invalid(
            CqlValue::Ascii("café".into()),
            CqlType::Ascii,
            expect!["invalid value for ascii: byte 0xc3 at offset 3 is not 7-bit ascii"],
        );
        check_invalid(
            CqlValue::Tuple(vec![Some(CqlValue::Int(1))]),
            CqlType::Tuple(vec![CqlType::Int, CqlType::Text]),
            expect!["invalid value for tuple<int, text>: tuple has 1 fields, the type has 2"],
        );
        check_invalid(
            CqlValue::Set(vec![CqlValue::Int(2), CqlValue::Int(1)]),
            CqlType::Set(Box::new(CqlType::Int)),
            expect![
                "invalid value for set<int>: elements must be sorted and unique, but element 1 does not sort after element 0"
            ],
        );
        let one = |scale| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(10),
                scale,
            })
        };
        check_invalid(
            CqlValue::Map(vec![(one(1), CqlValue::Int(1)), (one(1), CqlValue::Int(2))]),
            CqlType::Map(Box::new(CqlType::Decimal), Box::new(CqlType::Int)),
            expect![
                "invalid value for map<decimal, int>: keys must be sorted and unique, but key 1 does not sort after key 0"
            ],
        );
        check_invalid(
            CqlValue::List(vec![
                CqlValue::Ascii("ok".into()),
                CqlValue::Ascii("é".into()),
            ]),
            list_of(CqlType::Ascii).frozen(),
            expect![
                "invalid value for frozen<list<ascii>>: element 1: invalid value for ascii: byte 0xc3 at offset 0 is not 7-bit ascii"
            ],
        );
        check_invalid(
            CqlValue::Timeuuid([0; 16]),
            CqlType::Timeuuid,
            expect!["invalid value for timeuuid: uuid version is 0, a timeuuid must be version 1"],
        );
        check_invalid(
            CqlValue::Duration(CqlDuration {
                months: 1,
                days: -1,
                nanoseconds: 0,
            }),
            CqlType::Duration,
            expect![
                "invalid value for duration: months, days and nanoseconds must share one sign, got 1, -1 and 0"
            ],
        );
        let udt = CqlType::Udt(Arc::new(UdtDefinition {
            keyspace: "ks".into(),
            name: "point".into(),
            fields: vec![("x".into(), CqlType::Int)],
        }));
        check_invalid(
            CqlValue::Udt(vec![None, None]),
            udt.clone(),
            expect!["invalid value for point: value has 2 fields, the type declares 1"],
        );
        check_invalid(
            CqlValue::Udt(vec![Some(CqlValue::Bigint(1))]),
            udt.clone(),
            expect!["invalid value for point: field x: invalid value for int: got a bigint value"],
        );
        CqlValue::Udt(vec![])
            .validate(&udt)
            .expect("missing trailing fields are null");
        CqlValue::Bigint(5)
            .validate(&CqlType::Counter)
            .expect("counters are bigints");
    }

    fn check_order(ty: CqlType, ascending_values: Vec<CqlValue>) {
        for (left_idx, left) in ascending_values.iter().enumerate() {
            left.validate(&ty).expect("valid");
            for (right_idx, right) in ascending_values.iter().enumerate() {
                assert_eq!(
                    left.compare(right, &ty),
                    left_idx.cmp(&right_idx),
                    "{left:?} vs {right:?}"
                );
            }
        }
    }

    #[test]
    fn cql_orders() {
        let double = |number: f64| CqlValue::Double(number);
        check_order(
            CqlType::Double,
            vec![
                double(f64::NEG_INFINITY),
                double(-1.5),
                double(-0.0),
                double(0.0),
                double(f64::MIN_POSITIVE),
                double(f64::INFINITY),
                double(f64::NAN),
            ],
        );
        // Every NaN equals every other NaN (Java's Double.compare).
        let other_nan = f64::from_bits(0xfff0_0000_0000_0001);
        assert_eq!(
            double(f64::NAN).compare(&double(other_nan), &CqlType::Double),
            Ordering::Equal
        );
        check_order(
            CqlType::Date,
            vec![
                CqlValue::Date(0),
                CqlValue::Date(1 << 31),
                CqlValue::Date(u32::MAX),
            ],
        );
        let decimal = |unscaled: i64, scale: i32| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            })
        };
        check_order(
            CqlType::Decimal,
            vec![
                decimal(-1, -5),
                decimal(-11, 1),
                decimal(-1, 0),
                decimal(-1, 3),
                decimal(0, 0),
                decimal(1, 3),
                decimal(99, 2),
                decimal(1, 0),
                decimal(101, 2),
                decimal(1, -5),
            ],
        );
        assert_eq!(
            decimal(10, 1).compare(&decimal(1, 0), &CqlType::Decimal),
            Ordering::Equal
        );
        assert_eq!(
            decimal(0, 9).compare(&decimal(0, -3), &CqlType::Decimal),
            Ordering::Equal
        );
        let inet = |text: &str| CqlValue::Inet(text.parse().expect("address"));
        // By unsigned bytes, an IPv4 address being 4 bytes and an IPv6 one 16.
        check_order(
            CqlType::Inet,
            vec![
                inet("0.0.0.0"),
                inet("::"),
                inet("::1"),
                inet("0.0.0.1"),
                inet("ff::"),
                inet("10.0.0.1"),
            ],
        );
        let text = |text: &str| CqlValue::Text(text.into());
        check_order(
            CqlType::Text,
            vec![text(""), text("a"), text("a\0"), text("ab"), text("é")],
        );
        let int_list = |elements: &[i32]| {
            CqlValue::List(
                elements
                    .iter()
                    .map(|element| CqlValue::Int(*element))
                    .collect(),
            )
        };
        check_order(
            list_of(CqlType::Int).frozen(),
            vec![
                int_list(&[]),
                int_list(&[-1, 5]),
                int_list(&[1]),
                int_list(&[1, 0]),
            ],
        );
        let pair = |first: Option<i32>, second: Option<i32>| {
            CqlValue::Tuple(vec![first.map(CqlValue::Int), second.map(CqlValue::Int)])
        };
        check_order(
            CqlType::Tuple(vec![CqlType::Int, CqlType::Int]),
            vec![
                pair(None, None),
                pair(None, Some(1)),
                pair(Some(0), None),
                pair(Some(0), Some(0)),
            ],
        );
    }

    #[test]
    fn uuid_orders_follow_cassandra() {
        // Version 1: time_low 0x00000002 with time_hi 0 is earlier than time_low 1 with
        // time_hi 1, although its bytes are larger.
        let earlier = [0, 0, 0, 2, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let later = [0, 0, 0, 1, 0, 0, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let version_4 = [0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        check_order(
            CqlType::Uuid,
            vec![
                CqlValue::Uuid(earlier),
                CqlValue::Uuid(later),
                CqlValue::Uuid(version_4),
            ],
        );
        // Timeuuid compares the last 8 bytes as signed bytes (0x80 < 0x00), uuid as unsigned.
        let mut negative_clock = earlier;
        negative_clock[8] = 0x80;
        check_order(
            CqlType::Timeuuid,
            vec![
                CqlValue::Timeuuid(negative_clock),
                CqlValue::Timeuuid(earlier),
            ],
        );
        check_order(
            CqlType::Uuid,
            vec![CqlValue::Uuid(earlier), CqlValue::Uuid(negative_clock)],
        );
        for uuid in [earlier, later, version_4, negative_clock, [0xff; 16]] {
            assert_eq!(uuid_from_order_key(&uuid_order_key(&uuid)), uuid);
            assert_eq!(timeuuid_from_order_key(&timeuuid_order_key(&uuid)), uuid);
        }
    }

    #[test]
    fn decimals_display() {
        let display = |unscaled: i64, scale: i32| {
            Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            }
            .to_string()
        };
        expect!["1.50 -0.001 0 1E+3 12 1E-7 1E+2147483648"].assert_eq(
            &[
                display(150, 2),
                display(-1, 3),
                display(0, 0),
                display(1, -3),
                display(12, 0),
                display(1, 7),
                display(1, i32::MIN),
            ]
            .join(" "),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn generated_values_are_valid_and_compare_as_a_total_order(
            (ty, values) in arb_type_and_values(arb_type(), 1..5),
        ) {
            for value in &values {
                prop_assert!(value.validate(&ty).is_ok(), "{:?} invalid for {}", value, ty);
                prop_assert_eq!(value.compare(value, &ty), Ordering::Equal);
            }
            let mut sorted = values.clone();
            sorted.sort_by(|left, right| left.compare(right, &ty));
            for pair in sorted.windows(2) {
                prop_assert_ne!(pair[0].compare(&pair[1], &ty), Ordering::Greater);
                prop_assert_eq!(
                    pair[0].compare(&pair[1], &ty),
                    pair[1].compare(&pair[0], &ty).reverse()
                );
            }
            // Transitivity over all triples.
            for first in &values {
                for second in &values {
                    for third in &values {
                        if first.compare(second, &ty).is_le() && second.compare(third, &ty).is_le() {
                            prop_assert!(first.compare(third, &ty).is_le());
                        }
                    }
                }
            }
        }

        #[test]
        fn decimal_order_matches_exact_arithmetic(
            left_unscaled in -2000i64..2000,
            left_scale in -4i32..5,
            right_unscaled in -2000i64..2000,
            right_scale in -4i32..5,
        ) {
            // Compare exactly by scaling both to 10^-8.
            let exact = |unscaled: i64, scale: i32| {
                BigInt::from(unscaled) * BigInt::from(10).pow((8 - scale) as u32)
            };
            let left = Decimal { unscaled: BigInt::from(left_unscaled), scale: left_scale };
            let right = Decimal { unscaled: BigInt::from(right_unscaled), scale: right_scale };
            let expected = exact(left_unscaled, left_scale).cmp(&exact(right_unscaled, right_scale));
            prop_assert_eq!(left.normalized().cmp(&right.normalized()), expected);
            prop_assert_eq!(
                Decimal::from_normalized(&left.normalized()).map(|decimal| decimal.normalized()),
                Ok(left.normalized())
            );
        }
    }
}
