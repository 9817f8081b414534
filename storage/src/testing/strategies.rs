//! Proptest strategies for CQL types and values, shared by every crate's tests: any type
//! ([`arb_type`]), any orderable type ([`arb_orderable_type`]), and valid values of a type
//! ([`arb_value`]), plus equality helpers that treat NaN and decimal scale deliberately.
//!
//! Types follow Cassandra's nesting rules (what [`CqlType::parse`] accepts): collections and
//! UDTs inside collections, tuples and UDTs are frozen; set elements and map keys never
//! involve `duration`; `counter` never appears (it is refused as a column type).
//!
//! Values lean on small domains (ints in -2..3, a few bytes, decimals that differ only in
//! scale) as well as the full range, so that pairs of values often compare `Equal` or share
//! long prefixes: the cases where an order-preserving encoding goes wrong.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use num_bigint::BigInt;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::types::{CqlType, UdtDefinition};
use crate::value::{CqlDuration, CqlValue, Decimal, TIME_NANOSECONDS_MAX};

/// How deep generated types nest.
const TYPE_DEPTH_MAX: u32 = 3;
/// The most elements in a generated collection.
const COLLECTION_ELEMENTS_MAX: usize = 4;

/// Any type a column can have (no `counter`), nested up to three levels.
pub fn arb_type() -> BoxedStrategy<CqlType> {
    let nested = arb_nested_type(false);
    prop_oneof![
        arb_leaf_type(false),
        nested.clone(),
        nested
            .clone()
            .prop_map(|element_type| CqlType::List(Box::new(element_type))),
        arb_duration_free(nested.clone())
            .prop_map(|element_type| CqlType::Set(Box::new(element_type))),
        (arb_duration_free(nested.clone()), nested.clone()).prop_map(|(key_type, value_type)| {
            CqlType::Map(Box::new(key_type), Box::new(value_type))
        }),
        vec(nested, 1..4).prop_map(udt_type),
    ]
    .boxed()
}

/// Any type whose values have an order ([`crate::value::ordered::is_orderable`]): native
/// types but `duration`, and frozen collections, tuples and frozen UDTs of orderable types.
pub fn arb_orderable_type() -> BoxedStrategy<CqlType> {
    arb_nested_type(true)
}

/// A native (non-collection) type; `duration` unless `orderable_only`.
pub fn arb_leaf_type(orderable_only: bool) -> BoxedStrategy<CqlType> {
    let mut leaves = vec![
        CqlType::Ascii,
        CqlType::Bigint,
        CqlType::Blob,
        CqlType::Boolean,
        CqlType::Date,
        CqlType::Decimal,
        CqlType::Double,
        CqlType::Float,
        CqlType::Inet,
        CqlType::Int,
        CqlType::Smallint,
        CqlType::Text,
        CqlType::Time,
        CqlType::Timestamp,
        CqlType::Timeuuid,
        CqlType::Tinyint,
        CqlType::Uuid,
        CqlType::Varint,
    ];
    if !orderable_only {
        leaves.push(CqlType::Duration);
    }
    proptest::sample::select(leaves).boxed()
}

/// A type usable inside a collection, tuple or UDT: native types, frozen collections,
/// tuples and frozen UDTs.
fn arb_nested_type(orderable_only: bool) -> BoxedStrategy<CqlType> {
    arb_leaf_type(orderable_only)
        .prop_recursive(TYPE_DEPTH_MAX, 24, 4, |inner| {
            prop_oneof![
                inner
                    .clone()
                    .prop_map(|element_type| CqlType::List(Box::new(element_type)).frozen()),
                arb_duration_free(inner.clone())
                    .prop_map(|element_type| CqlType::Set(Box::new(element_type)).frozen()),
                (arb_duration_free(inner.clone()), inner.clone()).prop_map(
                    |(key_type, value_type)| {
                        CqlType::Map(Box::new(key_type), Box::new(value_type)).frozen()
                    }
                ),
                vec(inner.clone(), 1..4).prop_map(CqlType::Tuple),
                vec(inner, 1..4).prop_map(|field_types| udt_type(field_types).frozen()),
            ]
        })
        .boxed()
}

fn arb_duration_free(types: BoxedStrategy<CqlType>) -> BoxedStrategy<CqlType> {
    types
        .prop_filter("set elements and map keys cannot involve duration", |ty| {
            !ty.references_duration()
        })
        .boxed()
}

/// Builds a (non-frozen) UDT type whose name is derived from its field types, so two
/// generated UDTs share a name only if they are the same type.
pub fn udt_type(field_types: Vec<CqlType>) -> CqlType {
    let fields: Vec<(String, CqlType)> = field_types
        .into_iter()
        .enumerate()
        .map(|(field_idx, field_type)| (format!("field_{field_idx}"), field_type))
        .collect();
    let mut hasher = DefaultHasher::new();
    for (_, field_type) in &fields {
        field_type.to_string().hash(&mut hasher);
    }
    let name = format!("udt_{:016x}", hasher.finish());
    CqlType::Udt(Arc::new(UdtDefinition {
        keyspace: "test_keyspace".to_string(),
        name,
        fields,
    }))
}

/// Valid values of `ty` (they pass [`CqlValue::validate`]).
pub fn arb_value(ty: &CqlType) -> BoxedStrategy<CqlValue> {
    match ty.unfrozen() {
        CqlType::Ascii => vec(prop_oneof![Just(0u8), 0x61u8..0x63, 0u8..0x80], 0..8)
            .prop_map(|bytes| CqlValue::Ascii(bytes.into_iter().map(char::from).collect()))
            .boxed(),
        CqlType::Text => vec(
            prop_oneof![
                Just('\0'),
                Just('\u{ff}'),
                proptest::char::range('a', 'c'),
                any::<char>()
            ],
            0..8,
        )
        .prop_map(|chars| CqlValue::Text(chars.into_iter().collect()))
        .boxed(),
        CqlType::Blob => arb_bytes(0..10).prop_map(CqlValue::Blob).boxed(),
        CqlType::Bigint | CqlType::Counter => arb_i64().prop_map(CqlValue::Bigint).boxed(),
        CqlType::Timestamp => arb_i64().prop_map(CqlValue::Timestamp).boxed(),
        CqlType::Time => prop_oneof![
            Just(0),
            Just(TIME_NANOSECONDS_MAX),
            0..3i64,
            0..=TIME_NANOSECONDS_MAX
        ]
        .prop_map(CqlValue::Time)
        .boxed(),
        CqlType::Int => prop_oneof![any::<i32>(), -2..3i32, Just(i32::MIN), Just(i32::MAX)]
            .prop_map(CqlValue::Int)
            .boxed(),
        CqlType::Smallint => prop_oneof![any::<i16>(), -2..3i16, Just(i16::MIN), Just(i16::MAX)]
            .prop_map(CqlValue::Smallint)
            .boxed(),
        CqlType::Tinyint => any::<i8>().prop_map(CqlValue::Tinyint).boxed(),
        CqlType::Date => prop_oneof![any::<u32>(), Just(1u32 << 31), 0..3u32, Just(u32::MAX)]
            .prop_map(CqlValue::Date)
            .boxed(),
        CqlType::Boolean => any::<bool>().prop_map(CqlValue::Boolean).boxed(),
        CqlType::Float => arb_f32().prop_map(CqlValue::Float).boxed(),
        CqlType::Double => arb_f64().prop_map(CqlValue::Double).boxed(),
        CqlType::Inet => arb_inet().prop_map(CqlValue::Inet).boxed(),
        CqlType::Uuid => {
            let version = prop_oneof![Just(1u8), Just(4u8), 0..16u8];
            (arb_uuid_bytes(), version)
                .prop_map(|(bytes, version)| CqlValue::Uuid(with_uuid_version(bytes, version)))
                .boxed()
        }
        CqlType::Timeuuid => arb_uuid_bytes()
            .prop_map(|bytes| CqlValue::Timeuuid(with_uuid_version(bytes, 1)))
            .boxed(),
        CqlType::Varint => arb_bigint().prop_map(CqlValue::Varint).boxed(),
        CqlType::Decimal => arb_decimal().prop_map(CqlValue::Decimal).boxed(),
        CqlType::Duration => arb_duration().prop_map(CqlValue::Duration).boxed(),
        CqlType::List(element_type) => vec(arb_value(element_type), 0..=COLLECTION_ELEMENTS_MAX)
            .prop_map(CqlValue::List)
            .boxed(),
        CqlType::Set(element_type) => {
            let element_type = element_type.as_ref().clone();
            vec(arb_value(&element_type), 0..=COLLECTION_ELEMENTS_MAX)
                .prop_map(move |mut elements| {
                    elements.sort_by(|left, right| left.compare(right, &element_type));
                    elements
                        .dedup_by(|later, earlier| later.compare(earlier, &element_type).is_eq());
                    CqlValue::Set(elements)
                })
                .boxed()
        }
        CqlType::Map(key_type, value_type) => {
            let key_type = key_type.as_ref().clone();
            let entry = (arb_value(&key_type), arb_value(value_type));
            vec(entry, 0..=COLLECTION_ELEMENTS_MAX)
                .prop_map(move |mut entries| {
                    entries.sort_by(|(left, _), (right, _)| left.compare(right, &key_type));
                    entries.dedup_by(|(later, _), (earlier, _)| {
                        later.compare(earlier, &key_type).is_eq()
                    });
                    CqlValue::Map(entries)
                })
                .boxed()
        }
        CqlType::Tuple(field_types) => arb_fields(field_types.iter())
            .prop_map(CqlValue::Tuple)
            .boxed(),
        CqlType::Udt(definition) => {
            let n_fields = definition.fields.len();
            let field_types = definition.fields.iter().map(|(_, field_type)| field_type);
            // Usually every field; sometimes trailing fields are missing, as in old data.
            let n_kept = prop_oneof![3 => Just(n_fields), 1 => 0..=n_fields];
            (arb_fields(field_types), n_kept)
                .prop_map(|(mut fields, n_kept)| {
                    fields.truncate(n_kept);
                    CqlValue::Udt(fields)
                })
                .boxed()
        }
        CqlType::Frozen(_) => unreachable!("unfrozen() removed every frozen<>"),
    }
}

/// A type and a list of valid values of it.
pub fn arb_type_and_values(
    types: BoxedStrategy<CqlType>,
    n_values: std::ops::Range<usize>,
) -> BoxedStrategy<(CqlType, Vec<CqlValue>)> {
    types
        .prop_flat_map(move |ty| {
            let values = vec(arb_value(&ty), n_values.clone());
            (Just(ty), values)
        })
        .boxed()
}

fn arb_fields<'a>(
    field_types: impl Iterator<Item = &'a CqlType>,
) -> BoxedStrategy<Vec<Option<CqlValue>>> {
    let field_strategies: Vec<BoxedStrategy<Option<CqlValue>>> = field_types
        .map(|field_type| proptest::option::weighted(0.8, arb_value(field_type)).boxed())
        .collect();
    field_strategies.boxed()
}

fn arb_i64() -> impl Strategy<Value = i64> {
    prop_oneof![any::<i64>(), -2..3i64, Just(i64::MIN), Just(i64::MAX)]
}

fn arb_bytes(n_bytes: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![Just(0x00u8), Just(0x01u8), Just(0xffu8), any::<u8>()],
        n_bytes,
    )
}

fn arb_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::NAN),
        Just(f32::MIN_POSITIVE),
        (-2..3i8).prop_map(f32::from),
        // NaNs with other payloads and signs.
        any::<u32>().prop_map(|payload| f32::from_bits(payload | 0x7f80_0001)),
    ]
}

fn arb_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(0.0f64),
        Just(-0.0f64),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
        Just(f64::MIN_POSITIVE),
        (-2..3i8).prop_map(f64::from),
        any::<u64>().prop_map(|payload| f64::from_bits(payload | 0x7ff0_0000_0000_0001)),
    ]
}

fn arb_inet() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|octets| IpAddr::V4(Ipv4Addr::from(octets))),
        any::<[u8; 16]>().prop_map(|octets| IpAddr::V6(Ipv6Addr::from(octets))),
        proptest::array::uniform4(0u8..2).prop_map(|octets| IpAddr::V4(Ipv4Addr::from(octets))),
        proptest::array::uniform16(0u8..2).prop_map(|octets| IpAddr::V6(Ipv6Addr::from(octets))),
    ]
}

fn arb_uuid_bytes() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        any::<[u8; 16]>(),
        proptest::array::uniform16(prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff)]),
    ]
}

/// Sets the version nibble (the high nibble of byte 6).
fn with_uuid_version(mut bytes: [u8; 16], version: u8) -> [u8; 16] {
    assert!(version < 16);
    bytes[6] = (bytes[6] & 0x0f) | (version << 4);
    bytes
}

fn arb_bigint() -> impl Strategy<Value = BigInt> {
    prop_oneof![
        (-300..300i64).prop_map(BigInt::from),
        vec(any::<u8>(), 1..20).prop_map(|bytes| BigInt::from_signed_bytes_be(&bytes)),
        any::<i128>().prop_map(BigInt::from),
        prop_oneof![
            Just(1i128 << 64),
            Just(-(1i128 << 64)),
            Just((1i128 << 64) - 1)
        ]
        .prop_map(BigInt::from),
    ]
}

fn arb_decimal() -> impl Strategy<Value = Decimal> {
    let scale = prop_oneof![
        4 => -3..4i32,
        1 => any::<i32>(),
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
    ];
    // Digit strings that are prefixes of each other (1, 1.05, 1.2, 1.23) at the same
    // exponent: where a digit encoding's terminator decides the order.
    let prefix_digits = proptest::sample::select(vec![1i64, 105, 12, 123, 1234, 2, 25, 9, 99, 999]);
    let unscaled = prop_oneof![
        2 => arb_bigint(),
        1 => (prefix_digits, any::<bool>()).prop_map(|(digits, negative)| {
            BigInt::from(if negative { -digits } else { digits })
        }),
    ];
    // Trailing zeros appended to the unscaled value (and the scale raised to match) give
    // values equal to others with a different scale: 1.0 and 1.00.
    (unscaled, scale, 0..3u32).prop_map(|(unscaled, scale, n_trailing_zeros)| {
        match scale.checked_add(n_trailing_zeros as i32) {
            Some(raised_scale) => Decimal {
                unscaled: unscaled * BigInt::from(10).pow(n_trailing_zeros),
                scale: raised_scale,
            },
            None => Decimal { unscaled, scale },
        }
    })
}

fn arb_duration() -> impl Strategy<Value = CqlDuration> {
    let parts = prop_oneof![
        (0..=i32::MAX, 0..=i32::MAX, 0..=i64::MAX),
        (0..3i32, 0..3i32, 0..3i64),
    ];
    (parts, any::<bool>()).prop_map(|((months, days, nanoseconds), negative)| {
        if negative {
            CqlDuration {
                months: -months,
                days: -days,
                nanoseconds: -nanoseconds,
            }
        } else {
            CqlDuration {
                months,
                days,
                nanoseconds,
            }
        }
    })
}

/// Returns true if the values are the same, bit for bit: floats by their bits, decimals by
/// unscaled value and scale. What a lossless encoding must preserve.
pub fn values_identical(left: &CqlValue, right: &CqlValue) -> bool {
    values_match(
        left,
        right,
        &|left, right| left == right,
        &|left, right| left.to_bits() == right.to_bits(),
        &|left, right| left.to_bits() == right.to_bits(),
    )
}

/// Returns true if the values are the same up to what the order-preserving encoding
/// canonicalises: decimals by value (`1.0` matches `1.00`), every NaN matches every NaN.
pub fn values_identical_in_key(left: &CqlValue, right: &CqlValue) -> bool {
    values_match(
        left,
        right,
        &|left, right| left.normalized() == right.normalized(),
        &|left, right| (left.is_nan() && right.is_nan()) || left.to_bits() == right.to_bits(),
        &|left, right| (left.is_nan() && right.is_nan()) || left.to_bits() == right.to_bits(),
    )
}

fn values_match(
    left: &CqlValue,
    right: &CqlValue,
    decimals_match: &dyn Fn(&Decimal, &Decimal) -> bool,
    floats_match: &dyn Fn(f32, f32) -> bool,
    doubles_match: &dyn Fn(f64, f64) -> bool,
) -> bool {
    use CqlValue as V;
    let recurse = |left: &CqlValue, right: &CqlValue| {
        values_match(left, right, decimals_match, floats_match, doubles_match)
    };
    match (left, right) {
        (V::Decimal(left), V::Decimal(right)) => decimals_match(left, right),
        (V::Float(left), V::Float(right)) => floats_match(*left, *right),
        (V::Double(left), V::Double(right)) => doubles_match(*left, *right),
        (V::List(left), V::List(right)) | (V::Set(left), V::Set(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| recurse(left, right))
        }
        (V::Map(left), V::Map(right)) => {
            left.len() == right.len()
                && left.iter().zip(right).all(
                    |((left_key, left_value), (right_key, right_value))| {
                        recurse(left_key, right_key) && recurse(left_value, right_value)
                    },
                )
        }
        (V::Tuple(left), V::Tuple(right)) | (V::Udt(left), V::Udt(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| match (left, right) {
                        (None, None) => true,
                        (Some(left), Some(right)) => recurse(left, right),
                        _ => false,
                    })
        }
        _ => left == right,
    }
}
