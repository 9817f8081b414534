//! An order-preserving, self-delimiting byte encoding of CQL values, for keys.
//!
//! For two values `a` and `b` of an orderable type, `encode(a) < encode(b)` as unsigned bytes
//! exactly when `a.compare(b) == Less`, and the encodings are equal exactly when the values
//! compare `Equal`. Every encoding is prefix-free (no encoding is a proper prefix of
//! another), so encodings of several components concatenate into a composite key that
//! orders component by component, and [`decode`] knows where each component ends.
//!
//! ```text
//!   tinyint, smallint, int, bigint, timestamp, time   big endian, sign bit flipped
//!   date                                              u32 big endian
//!   boolean                                           0x00 false, 0x01 true
//!   float, double   IEEE bits, all flipped if negative, else sign bit set; NaN canonical
//!   uuid            16 bytes: version nibble, then timestamp (v1) or the other msb bits,
//!                   then lsb (Cassandra's UUIDType order)
//!   timeuuid        16 bytes: reordered timestamp with the sign bit flipped, then each lsb
//!                   byte with its top bit flipped (TimeUUIDType: signed bytes)
//!   text, ascii, blob, inet   bytes with 0x00 escaped as 0x00 0xff, then 0x00 0x01
//!   varint     0x02 zero │ 0x03, u32 byte length, magnitude │ 0x01, both inverted
//!   decimal    0x02 zero │ 0x03, exponent (i64, sign flipped), digit pairs, 0x00
//!                        │ 0x01, the same payload inverted (negative)
//!   list, set  per element 0x02 + element; then 0x01
//!   map        per entry 0x02 + key + value; then 0x01
//!   tuple, udt per field 0x02 (null) or 0x03 + field; then 0x01
//! ```
//!
//! Nested values are always encoded ascending. A descending component is the ascending
//! encoding with every byte inverted: inversion reverses the byte order of any two encodings
//! that differ (they first differ at some byte, never by one being a prefix), keeps them
//! prefix-free, and [`decode`] undoes it while it reads.
//!
//! **Canonical forms.** Values that compare `Equal` encode identically, so [`decode`]
//! returns one canonical value for each class: decimals without trailing zeros in the
//! unscaled value (`1.00` decodes as `1`, `100` as `1E+2`, zero as `0` scale 0) and every
//! NaN as the canonical quiet NaN (`0x7fc00000` / `0x7ff8000000000000`).
//!
//! **Exact variant.** [`encode_exact`] / [`decode_exact`] keep what the canonical form
//! drops, for keys whose exact bytes matter (partition keys: Cassandra hashes the native
//! bytes, so `1.0` and `1.00` are two partitions). A decimal is followed by its scale (i32,
//! sign bit flipped) and a NaN by its raw bits, all in one suffix after the whole canonical
//! encoding, so byte order still agrees with `compare` except among values that compare
//! `Equal`, which the suffix orders (by scale, NaN bits) deterministically.
//!
//! Digit pairs: the decimal's significant digits `d1 d2 ... dn` (no leading or trailing
//! zeros), taken two at a time (a lone last digit is padded with 0), each pair `p` in
//! 0..=99 written as the byte `p + 1`, so the terminator `0x00` sorts below any pair and a
//! shorter digit string sorts first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use num_bigint::{BigInt, BigUint, Sign};

use crate::error::{Error, Result};
use crate::types::CqlType;
use crate::value::{
    ClusteringOrder, CqlValue, Decimal, NormalizedDecimal, TIME_NANOSECONDS_MAX,
    f32_from_order_bits, f32_order_bits, f64_from_order_bits, f64_order_bits,
    timeuuid_from_order_key, timeuuid_order_key, uuid_from_order_key, uuid_order_key,
};

const COLLECTION_END: u8 = 0x01;
const COLLECTION_ELEMENT: u8 = 0x02;
const FIELD_END: u8 = 0x01;
const FIELD_NULL: u8 = 0x02;
const FIELD_PRESENT: u8 = 0x03;
const NUMBER_NEGATIVE: u8 = 0x01;
const NUMBER_ZERO: u8 = 0x02;
const NUMBER_POSITIVE: u8 = 0x03;
const BYTES_ESCAPE: u8 = 0x00;
const BYTES_ESCAPED_ZERO: u8 = 0xff;
const BYTES_TERMINATOR: u8 = 0x01;
const DIGITS_TERMINATOR: u8 = 0x00;

/// Returns true if values of the type have an order and so can be part of a key: false for
/// `duration`, `counter`, and non-frozen collections and UDTs (and anything containing a
/// `duration` or `counter`).
pub fn is_orderable(ty: &CqlType) -> bool {
    match ty {
        CqlType::List(_) | CqlType::Set(_) | CqlType::Map(..) | CqlType::Udt(_) => false,
        other => is_orderable_when_frozen(other),
    }
}

/// Whether the type is orderable inside a frozen value, where collections and UDTs are
/// frozen too.
fn is_orderable_when_frozen(ty: &CqlType) -> bool {
    match ty {
        CqlType::Duration | CqlType::Counter => false,
        CqlType::List(element_type) | CqlType::Set(element_type) => {
            is_orderable_when_frozen(element_type)
        }
        CqlType::Map(key_type, value_type) => {
            is_orderable_when_frozen(key_type) && is_orderable_when_frozen(value_type)
        }
        CqlType::Tuple(field_types) => field_types.iter().all(is_orderable_when_frozen),
        CqlType::Udt(definition) => definition
            .fields
            .iter()
            .all(|(_, field_type)| is_orderable_when_frozen(field_type)),
        CqlType::Frozen(inner) => is_orderable_when_frozen(inner),
        _ => true,
    }
}

/// Appends the order-preserving encoding of `value` in direction `order` to `out`.
///
/// The value should be valid for the type (see [`CqlValue::validate`]): in particular set
/// elements and map keys must already be in CQL order.
///
/// # Errors
///
/// Returns [`Error::InvalidType`] if the type is not orderable ([`is_orderable`]), and
/// [`Error::InvalidValue`] if the value's variant does not match the type or a tuple or UDT
/// value has more fields than its type. On error, `out` is left as it was.
pub fn encode(
    value: &CqlValue,
    ty: &CqlType,
    order: ClusteringOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    encode_with(value, ty, order, Exactness::Canonical, out)
}

/// Appends the *exact* order-preserving encoding of `value`: as [`encode`], except that
/// values which compare `Equal` but are not identical (decimals of different scales, NaNs
/// with different bits) encode differently, after the bytes that decide the order, so
/// [`decode_exact`] returns the value bit for bit. Byte order still agrees with
/// [`CqlValue::compare`] wherever it is not `Equal`. Partition keys need this: Cassandra
/// hashes their exact bytes, so `1.0` and `1.00` are different partitions.
///
/// # Errors
///
/// As [`encode`].
pub fn encode_exact(
    value: &CqlValue,
    ty: &CqlType,
    order: ClusteringOrder,
    out: &mut Vec<u8>,
) -> Result<()> {
    encode_with(value, ty, order, Exactness::Exact, out)
}

/// Whether values that compare `Equal` share one encoding (and decode canonically) or keep
/// what distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exactness {
    Canonical,
    Exact,
}

fn encode_with(
    value: &CqlValue,
    ty: &CqlType,
    order: ClusteringOrder,
    exactness: Exactness,
    out: &mut Vec<u8>,
) -> Result<()> {
    if !is_orderable(ty) {
        return Err(Error::InvalidType(format!(
            "{ty} has no order and cannot be part of a key"
        )));
    }
    let start_len = out.len();
    if let Err(error) = encode_ascending(value, ty, out) {
        out.truncate(start_len);
        return Err(error);
    }
    assert!(out.len() > start_len, "every encoding is at least one byte");
    if exactness == Exactness::Exact {
        // After the whole canonical encoding, so these bytes only order values that compare
        // Equal, even inside tuples and collections.
        append_exact_suffix(value, out);
    }
    if order == ClusteringOrder::Desc {
        for byte in &mut out[start_len..] {
            *byte = !*byte;
        }
    }
    Ok(())
}

/// Returns the order-preserving encoding of `value` as a new vector.
///
/// # Errors
///
/// As [`encode`].
pub fn encode_to_vec(value: &CqlValue, ty: &CqlType, order: ClusteringOrder) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(value, ty, order, &mut out)?;
    Ok(out)
}

fn encode_ascending(value: &CqlValue, ty: &CqlType, out: &mut Vec<u8>) -> Result<()> {
    use CqlValue as V;
    match (ty.unfrozen(), value) {
        (CqlType::Ascii, V::Ascii(text)) | (CqlType::Text, V::Text(text)) => {
            encode_bytes(text.as_bytes(), out);
        }
        (CqlType::Blob, V::Blob(bytes)) => encode_bytes(bytes, out),
        (CqlType::Inet, V::Inet(IpAddr::V4(address))) => encode_bytes(&address.octets(), out),
        (CqlType::Inet, V::Inet(IpAddr::V6(address))) => encode_bytes(&address.octets(), out),
        (CqlType::Bigint, V::Bigint(number))
        | (CqlType::Time, V::Time(number))
        | (CqlType::Timestamp, V::Timestamp(number)) => {
            out.extend_from_slice(&((*number as u64) ^ (1 << 63)).to_be_bytes());
        }
        (CqlType::Int, V::Int(number)) => {
            out.extend_from_slice(&((*number as u32) ^ (1 << 31)).to_be_bytes());
        }
        (CqlType::Smallint, V::Smallint(number)) => {
            out.extend_from_slice(&((*number as u16) ^ (1 << 15)).to_be_bytes());
        }
        (CqlType::Tinyint, V::Tinyint(number)) => out.push((*number as u8) ^ (1 << 7)),
        (CqlType::Date, V::Date(days)) => out.extend_from_slice(&days.to_be_bytes()),
        (CqlType::Boolean, V::Boolean(flag)) => out.push(u8::from(*flag)),
        (CqlType::Float, V::Float(number)) => {
            out.extend_from_slice(&f32_order_bits(*number).to_be_bytes());
        }
        (CqlType::Double, V::Double(number)) => {
            out.extend_from_slice(&f64_order_bits(*number).to_be_bytes());
        }
        (CqlType::Uuid, V::Uuid(bytes)) => out.extend_from_slice(&uuid_order_key(bytes)),
        (CqlType::Timeuuid, V::Timeuuid(bytes)) => {
            out.extend_from_slice(&timeuuid_order_key(bytes));
        }
        (CqlType::Varint, V::Varint(number)) => encode_varint(number, ty, out)?,
        (CqlType::Decimal, V::Decimal(decimal)) => encode_decimal(decimal, out),
        (CqlType::List(element_type), V::List(elements))
        | (CqlType::Set(element_type), V::Set(elements)) => {
            for element in elements {
                out.push(COLLECTION_ELEMENT);
                encode_ascending(element, element_type, out)?;
            }
            out.push(COLLECTION_END);
        }
        (CqlType::Map(key_type, value_type), V::Map(entries)) => {
            for (key, value) in entries {
                out.push(COLLECTION_ELEMENT);
                encode_ascending(key, key_type, out)?;
                encode_ascending(value, value_type, out)?;
            }
            out.push(COLLECTION_END);
        }
        (CqlType::Tuple(field_types), V::Tuple(fields)) => {
            encode_fields(fields, field_types.iter(), ty, out)?;
        }
        (CqlType::Udt(definition), V::Udt(fields)) => {
            let field_types = definition.fields.iter().map(|(_, field_type)| field_type);
            encode_fields(fields, field_types, ty, out)?;
        }
        _ => {
            return Err(Error::invalid_value(
                ty.to_string(),
                format!("cannot encode {} value", value.kind_with_article()),
            ));
        }
    }
    Ok(())
}

fn encode_fields<'a>(
    fields: &[Option<CqlValue>],
    field_types: impl ExactSizeIterator<Item = &'a CqlType>,
    ty: &CqlType,
    out: &mut Vec<u8>,
) -> Result<()> {
    super::check_field_count(fields.len(), field_types.len(), ty)?;
    for (field, field_type) in fields.iter().zip(field_types) {
        match field {
            None => out.push(FIELD_NULL),
            Some(field) => {
                out.push(FIELD_PRESENT);
                encode_ascending(field, field_type, out)?;
            }
        }
    }
    out.push(FIELD_END);
    Ok(())
}

/// Writes the bytes with `0x00` escaped as `0x00 0xff`, then the terminator `0x00 0x01`:
/// the terminator sorts below any continuation, so a prefix sorts first.
fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for byte in bytes {
        out.push(*byte);
        if *byte == BYTES_ESCAPE {
            out.push(BYTES_ESCAPED_ZERO);
        }
    }
    out.extend_from_slice(&[BYTES_ESCAPE, BYTES_TERMINATOR]);
}

/// Appends, in depth-first order, the scale of every decimal and the bits of every NaN in
/// `value`: what the canonical encoding drops.
fn append_exact_suffix(value: &CqlValue, out: &mut Vec<u8>) {
    match value {
        CqlValue::Decimal(decimal) => {
            out.extend_from_slice(&((decimal.scale as u32) ^ (1 << 31)).to_be_bytes());
        }
        CqlValue::Float(number) if number.is_nan() => {
            out.extend_from_slice(&number.to_bits().to_be_bytes());
        }
        CqlValue::Double(number) if number.is_nan() => {
            out.extend_from_slice(&number.to_bits().to_be_bytes());
        }
        CqlValue::List(elements) | CqlValue::Set(elements) => {
            elements
                .iter()
                .for_each(|element| append_exact_suffix(element, out));
        }
        CqlValue::Map(entries) => {
            for (key, value) in entries {
                append_exact_suffix(key, out);
                append_exact_suffix(value, out);
            }
        }
        CqlValue::Tuple(fields) | CqlValue::Udt(fields) => {
            fields
                .iter()
                .flatten()
                .for_each(|field| append_exact_suffix(field, out));
        }
        _ => {}
    }
}

fn encode_varint(number: &BigInt, ty: &CqlType, out: &mut Vec<u8>) -> Result<()> {
    let (sign, magnitude) = number.to_bytes_be();
    let sign_byte = match sign {
        Sign::NoSign => {
            out.push(NUMBER_ZERO);
            return Ok(());
        }
        Sign::Minus => NUMBER_NEGATIVE,
        Sign::Plus => NUMBER_POSITIVE,
    };
    assert_ne!(
        magnitude.first(),
        Some(&0),
        "magnitudes have no leading zero byte"
    );
    let n_bytes = u32::try_from(magnitude.len()).map_err(|_| {
        Error::invalid_value(
            ty.to_string(),
            "magnitude longer than 2^32 bytes cannot be a key",
        )
    })?;
    out.push(sign_byte);
    let payload_start = out.len();
    out.extend_from_slice(&n_bytes.to_be_bytes());
    out.extend_from_slice(&magnitude);
    if sign == Sign::Minus {
        // A larger magnitude is a smaller negative number.
        for byte in &mut out[payload_start..] {
            *byte = !*byte;
        }
    }
    Ok(())
}

fn encode_decimal(decimal: &Decimal, out: &mut Vec<u8>) {
    let (sign_byte, adjusted_exponent, digits) = match decimal.normalized() {
        NormalizedDecimal::Zero => {
            out.push(NUMBER_ZERO);
            return;
        }
        NormalizedDecimal::Negative {
            adjusted_exponent,
            digits,
        } => (NUMBER_NEGATIVE, adjusted_exponent, digits),
        NormalizedDecimal::Positive {
            adjusted_exponent,
            digits,
        } => (NUMBER_POSITIVE, adjusted_exponent, digits),
    };
    out.push(sign_byte);
    let payload_start = out.len();
    out.extend_from_slice(&((adjusted_exponent as u64) ^ (1 << 63)).to_be_bytes());
    for pair in digits.chunks(2) {
        let high_digit = pair[0];
        let low_digit = pair.get(1).copied().unwrap_or(0);
        assert!(high_digit <= 9 && low_digit <= 9);
        out.push(high_digit * 10 + low_digit + 1);
    }
    out.push(DIGITS_TERMINATOR);
    if sign_byte == NUMBER_NEGATIVE {
        for byte in &mut out[payload_start..] {
            *byte = !*byte;
        }
    }
}

/// Decodes one value encoded by [`encode`] with the same type and order from the front of
/// `input`, and advances `input` past it. Values come back in canonical form (see the module
/// documentation).
///
/// # Errors
///
/// Returns [`Error::InvalidType`] if the type is not orderable, and [`Error::Corruption`]
/// naming the type if the bytes are not a valid encoding or decode to a value that
/// [`CqlValue::validate`] refuses. On error `input` is not advanced.
pub fn decode(ty: &CqlType, order: ClusteringOrder, input: &mut &[u8]) -> Result<CqlValue> {
    decode_with(ty, order, Exactness::Canonical, input)
}

/// Decodes one value encoded by [`encode_exact`] with the same type and order, exactly as
/// it was encoded, and advances `input` past it.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_exact(ty: &CqlType, order: ClusteringOrder, input: &mut &[u8]) -> Result<CqlValue> {
    decode_with(ty, order, Exactness::Exact, input)
}

fn decode_with(
    ty: &CqlType,
    order: ClusteringOrder,
    exactness: Exactness,
    input: &mut &[u8],
) -> Result<CqlValue> {
    if !is_orderable(ty) {
        return Err(Error::InvalidType(format!(
            "{ty} has no order and cannot be part of a key"
        )));
    }
    let inversion_mask = match order {
        ClusteringOrder::Asc => 0x00,
        ClusteringOrder::Desc => 0xff,
    };
    let mut reader = OrderedReader {
        remaining: input,
        inversion_mask,
    };
    let mut value = reader.decode_value(ty)?;
    if exactness == Exactness::Exact {
        reader.apply_exact_suffix(&mut value, ty)?;
    }
    assert!(
        reader.remaining.len() < input.len(),
        "decoding consumes at least one byte"
    );
    // Bytes that decode structurally may still not be a value a client could write (a
    // timeuuid of another version, an unsorted set): keys are checked like any input.
    value.validate(ty).map_err(|error| corrupt(ty, error))?;
    *input = reader.remaining;
    Ok(value)
}

/// Reads an encoding, undoing the inversion of descending components (and of negative
/// number payloads) byte by byte.
struct OrderedReader<'a> {
    remaining: &'a [u8],
    inversion_mask: u8,
}

fn corrupt(ty: &CqlType, reason: impl std::fmt::Display) -> Error {
    Error::corruption(format!("ordered encoding of {ty}: {reason}"))
}

impl OrderedReader<'_> {
    fn read_byte(&mut self, ty: &CqlType) -> Result<u8> {
        let (&byte, rest) = self
            .remaining
            .split_first()
            .ok_or_else(|| corrupt(ty, "truncated"))?;
        self.remaining = rest;
        Ok(byte ^ self.inversion_mask)
    }

    fn read_array<const N: usize>(&mut self, ty: &CqlType) -> Result<[u8; N]> {
        let (bytes, rest) = self.remaining.split_first_chunk::<N>().ok_or_else(|| {
            corrupt(
                ty,
                format!(
                    "truncated: {N} bytes expected, {} remain",
                    self.remaining.len()
                ),
            )
        })?;
        self.remaining = rest;
        let mut array = *bytes;
        for byte in &mut array {
            *byte ^= self.inversion_mask;
        }
        Ok(array)
    }

    fn read_vec(&mut self, ty: &CqlType, n_bytes: usize) -> Result<Vec<u8>> {
        if n_bytes > self.remaining.len() {
            return Err(corrupt(
                ty,
                format!(
                    "truncated: {n_bytes} bytes expected, {} remain",
                    self.remaining.len()
                ),
            ));
        }
        let (bytes, rest) = self.remaining.split_at(n_bytes);
        self.remaining = rest;
        Ok(bytes
            .iter()
            .map(|byte| byte ^ self.inversion_mask)
            .collect())
    }

    /// Reads an escaped byte string up to and including its terminator.
    fn read_escaped_bytes(&mut self, ty: &CqlType) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        loop {
            let byte = self.read_byte(ty)?;
            if byte != BYTES_ESCAPE {
                bytes.push(byte);
                continue;
            }
            match self.read_byte(ty)? {
                BYTES_ESCAPED_ZERO => bytes.push(0x00),
                BYTES_TERMINATOR => return Ok(bytes),
                other => return Err(corrupt(ty, format!("invalid escape 0x00 {other:#04x}"))),
            }
        }
    }

    fn decode_value(&mut self, ty: &CqlType) -> Result<CqlValue> {
        use CqlValue as V;
        let value = match ty.unfrozen() {
            CqlType::Ascii => {
                let text = self.decode_text(ty)?;
                if !text.is_ascii() {
                    return Err(corrupt(ty, "non-ascii byte"));
                }
                V::Ascii(text)
            }
            CqlType::Text => V::Text(self.decode_text(ty)?),
            CqlType::Blob => V::Blob(self.read_escaped_bytes(ty)?),
            CqlType::Inet => {
                let octets = self.read_escaped_bytes(ty)?;
                match octets.len() {
                    4 => V::Inet(IpAddr::V4(Ipv4Addr::from(copy_array::<4>(&octets)))),
                    16 => V::Inet(IpAddr::V6(Ipv6Addr::from(copy_array::<16>(&octets)))),
                    n_bytes => return Err(corrupt(ty, format!("{n_bytes} address bytes"))),
                }
            }
            CqlType::Bigint => V::Bigint(self.read_signed_i64(ty)?),
            CqlType::Timestamp => V::Timestamp(self.read_signed_i64(ty)?),
            CqlType::Time => {
                let nanoseconds = self.read_signed_i64(ty)?;
                if !(0..=TIME_NANOSECONDS_MAX).contains(&nanoseconds) {
                    return Err(corrupt(ty, format!("{nanoseconds} is not a time of day")));
                }
                V::Time(nanoseconds)
            }
            CqlType::Int => V::Int((u32::from_be_bytes(self.read_array(ty)?) ^ (1 << 31)) as i32),
            CqlType::Smallint => {
                V::Smallint((u16::from_be_bytes(self.read_array(ty)?) ^ (1 << 15)) as i16)
            }
            CqlType::Tinyint => V::Tinyint((self.read_byte(ty)? ^ (1 << 7)) as i8),
            CqlType::Date => V::Date(u32::from_be_bytes(self.read_array(ty)?)),
            CqlType::Boolean => match self.read_byte(ty)? {
                0x00 => V::Boolean(false),
                0x01 => V::Boolean(true),
                other => return Err(corrupt(ty, format!("boolean byte {other:#04x}"))),
            },
            CqlType::Float => {
                let order_bits = u32::from_be_bytes(self.read_array(ty)?);
                let number = f32_from_order_bits(order_bits);
                // Every NaN encodes as the canonical one; other NaN bits are not an encoding.
                if number.is_nan() && f32_order_bits(number) != order_bits {
                    return Err(corrupt(ty, "a NaN other than the canonical NaN"));
                }
                V::Float(number)
            }
            CqlType::Double => {
                let order_bits = u64::from_be_bytes(self.read_array(ty)?);
                let number = f64_from_order_bits(order_bits);
                if number.is_nan() && f64_order_bits(number) != order_bits {
                    return Err(corrupt(ty, "a NaN other than the canonical NaN"));
                }
                V::Double(number)
            }
            CqlType::Uuid => V::Uuid(uuid_from_order_key(&self.read_array(ty)?)),
            CqlType::Timeuuid => V::Timeuuid(timeuuid_from_order_key(&self.read_array(ty)?)),
            CqlType::Varint => V::Varint(self.decode_varint(ty)?),
            CqlType::Decimal => V::Decimal(self.decode_decimal(ty)?),
            CqlType::List(element_type) => V::List(self.decode_elements(ty, element_type)?),
            CqlType::Set(element_type) => V::Set(self.decode_elements(ty, element_type)?),
            CqlType::Map(key_type, value_type) => {
                let mut entries = Vec::new();
                while self.read_collection_tag(ty)? {
                    let key = self.decode_value(key_type)?;
                    let value = self.decode_value(value_type)?;
                    entries.push((key, value));
                }
                V::Map(entries)
            }
            CqlType::Tuple(field_types) => V::Tuple(self.decode_fields(ty, field_types.iter())?),
            CqlType::Udt(definition) => {
                let field_types = definition.fields.iter().map(|(_, field_type)| field_type);
                V::Udt(self.decode_fields(ty, field_types)?)
            }
            CqlType::Duration | CqlType::Counter | CqlType::Frozen(_) => {
                return Err(Error::InvalidType(format!("{ty} has no order encoding")));
            }
        };
        Ok(value)
    }

    /// Reads what [`append_exact_suffix`] wrote, in the same order, into the canonical
    /// value just decoded.
    fn apply_exact_suffix(&mut self, value: &mut CqlValue, ty: &CqlType) -> Result<()> {
        match value {
            CqlValue::Decimal(decimal) => {
                let scale = (u32::from_be_bytes(self.read_array(ty)?) ^ (1 << 31)) as i32;
                let canonical = std::mem::replace(
                    decimal,
                    Decimal {
                        unscaled: BigInt::from(0),
                        scale: 0,
                    },
                );
                *decimal = rescale_exactly(canonical, scale).map_err(|error| corrupt(ty, error))?;
            }
            CqlValue::Float(number) if number.is_nan() => {
                *number = f32::from_bits(u32::from_be_bytes(self.read_array(ty)?));
                if !number.is_nan() {
                    return Err(corrupt(ty, "exact bits of a NaN are not a NaN"));
                }
            }
            CqlValue::Double(number) if number.is_nan() => {
                *number = f64::from_bits(u64::from_be_bytes(self.read_array(ty)?));
                if !number.is_nan() {
                    return Err(corrupt(ty, "exact bits of a NaN are not a NaN"));
                }
            }
            CqlValue::List(elements) | CqlValue::Set(elements) => {
                for element in elements {
                    self.apply_exact_suffix(element, ty)?;
                }
            }
            CqlValue::Map(entries) => {
                for (key, value) in entries {
                    self.apply_exact_suffix(key, ty)?;
                    self.apply_exact_suffix(value, ty)?;
                }
            }
            CqlValue::Tuple(fields) | CqlValue::Udt(fields) => {
                for field in fields.iter_mut().flatten() {
                    self.apply_exact_suffix(field, ty)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_text(&mut self, ty: &CqlType) -> Result<String> {
        let bytes = self.read_escaped_bytes(ty)?;
        String::from_utf8(bytes).map_err(|error| {
            corrupt(
                ty,
                format!(
                    "invalid utf-8 at byte offset {}",
                    error.utf8_error().valid_up_to()
                ),
            )
        })
    }

    fn read_signed_i64(&mut self, ty: &CqlType) -> Result<i64> {
        Ok((u64::from_be_bytes(self.read_array(ty)?) ^ (1 << 63)) as i64)
    }

    /// Reads a collection element header: true for an element, false at the end.
    fn read_collection_tag(&mut self, ty: &CqlType) -> Result<bool> {
        match self.read_byte(ty)? {
            COLLECTION_ELEMENT => Ok(true),
            COLLECTION_END => Ok(false),
            other => Err(corrupt(ty, format!("collection header {other:#04x}"))),
        }
    }

    fn decode_elements(&mut self, ty: &CqlType, element_type: &CqlType) -> Result<Vec<CqlValue>> {
        let mut elements = Vec::new();
        while self.read_collection_tag(ty)? {
            elements.push(self.decode_value(element_type)?);
        }
        Ok(elements)
    }

    fn decode_fields<'a>(
        &mut self,
        ty: &CqlType,
        mut field_types: impl Iterator<Item = &'a CqlType>,
    ) -> Result<Vec<Option<CqlValue>>> {
        let mut fields = Vec::new();
        loop {
            let tag = self.read_byte(ty)?;
            if tag == FIELD_END {
                return Ok(fields);
            }
            let Some(field_type) = field_types.next() else {
                return Err(corrupt(ty, "more fields than the type has"));
            };
            match tag {
                FIELD_NULL => fields.push(None),
                FIELD_PRESENT => fields.push(Some(self.decode_value(field_type)?)),
                other => return Err(corrupt(ty, format!("field header {other:#04x}"))),
            }
        }
    }

    /// Runs `read` with negative-number payload inversion applied on top of the direction's.
    fn with_inverted_payload<T>(
        &mut self,
        invert: bool,
        read: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let saved_mask = self.inversion_mask;
        if invert {
            self.inversion_mask ^= 0xff;
        }
        let result = read(self);
        self.inversion_mask = saved_mask;
        result
    }

    fn decode_varint(&mut self, ty: &CqlType) -> Result<BigInt> {
        let sign = match self.read_byte(ty)? {
            NUMBER_ZERO => return Ok(BigInt::from(0)),
            NUMBER_NEGATIVE => Sign::Minus,
            NUMBER_POSITIVE => Sign::Plus,
            other => return Err(corrupt(ty, format!("sign byte {other:#04x}"))),
        };
        let magnitude = self.with_inverted_payload(sign == Sign::Minus, |reader| {
            let n_bytes = u32::from_be_bytes(reader.read_array(ty)?) as usize;
            reader.read_vec(ty, n_bytes)
        })?;
        if magnitude.first().is_none_or(|byte| *byte == 0) {
            return Err(corrupt(ty, "magnitude is empty or has a leading zero byte"));
        }
        Ok(BigInt::from_biguint(
            sign,
            BigUint::from_bytes_be(&magnitude),
        ))
    }

    fn decode_decimal(&mut self, ty: &CqlType) -> Result<Decimal> {
        let sign_byte = self.read_byte(ty)?;
        let negative = match sign_byte {
            NUMBER_ZERO => {
                return Ok(Decimal {
                    unscaled: BigInt::from(0),
                    scale: 0,
                });
            }
            NUMBER_NEGATIVE => true,
            NUMBER_POSITIVE => false,
            other => return Err(corrupt(ty, format!("sign byte {other:#04x}"))),
        };
        let (adjusted_exponent, digits) = self.with_inverted_payload(negative, |reader| {
            let adjusted_exponent = (u64::from_be_bytes(reader.read_array(ty)?) ^ (1 << 63)) as i64;
            let mut digits = Vec::new();
            loop {
                match reader.read_byte(ty)? {
                    DIGITS_TERMINATOR => break,
                    pair_byte @ 1..=100 => {
                        digits.extend_from_slice(&[(pair_byte - 1) / 10, (pair_byte - 1) % 10]);
                    }
                    other => return Err(corrupt(ty, format!("digit pair byte {other:#04x}"))),
                }
            }
            // A lone last digit was padded with a zero.
            if digits.last() == Some(&0) {
                digits.pop();
            }
            Ok((adjusted_exponent, digits))
        })?;
        let normalized = if negative {
            NormalizedDecimal::Negative {
                adjusted_exponent,
                digits,
            }
        } else {
            NormalizedDecimal::Positive {
                adjusted_exponent,
                digits,
            }
        };
        Decimal::from_normalized(&normalized).map_err(|error| corrupt(ty, error))
    }
}

/// Returns `decimal` with scale `scale` and the same value, multiplying the unscaled value by
/// a power of ten.
fn rescale_exactly(decimal: Decimal, scale: i32) -> Result<Decimal> {
    if decimal.unscaled.sign() == Sign::NoSign {
        return Ok(Decimal {
            unscaled: decimal.unscaled,
            scale,
        });
    }
    let n_zeros = i64::from(scale) - i64::from(decimal.scale);
    if !(0..=DECIMAL_EXACT_ZEROS_MAX).contains(&n_zeros) {
        return Err(Error::invalid_value(
            "decimal",
            format!("scale {scale} cannot hold the value {decimal}"),
        ));
    }
    let unscaled = decimal.unscaled * BigInt::from(10).pow(n_zeros as u32);
    Ok(Decimal { unscaled, scale })
}

/// The most trailing zeros an exact decimal may carry beyond its canonical form; the
/// zeros are real digits of the value, so this bounds the memory a corrupt key can claim.
const DECIMAL_EXACT_ZEROS_MAX: i64 = 1 << 16;

fn copy_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::sync::Arc;

    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;
    use crate::testing::strategies::{
        arb_orderable_type, arb_type, arb_type_and_values, arb_value, values_identical,
        values_identical_in_key,
    };
    use crate::types::UdtDefinition;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Checks the ascending and descending encodings of a value, as hex.
    fn check(value: CqlValue, ty: CqlType, expected: Expect) {
        let ascending = encode_to_vec(&value, &ty, ClusteringOrder::Asc).expect("encodes");
        let descending = encode_to_vec(&value, &ty, ClusteringOrder::Desc).expect("encodes");
        expected.assert_eq(&format!(
            "asc {} desc {}",
            hex(&ascending),
            hex(&descending)
        ));
    }

    #[test]
    fn encodings_of_leaf_values() {
        check(
            CqlValue::Int(1),
            CqlType::Int,
            expect!["asc 80000001 desc 7ffffffe"],
        );
        check(
            CqlValue::Int(-1),
            CqlType::Int,
            expect!["asc 7fffffff desc 80000000"],
        );
        check(
            CqlValue::Tinyint(i8::MIN),
            CqlType::Tinyint,
            expect!["asc 00 desc ff"],
        );
        check(
            CqlValue::Date(1 << 31),
            CqlType::Date,
            expect!["asc 80000000 desc 7fffffff"],
        );
        check(
            CqlValue::Boolean(true),
            CqlType::Boolean,
            expect!["asc 01 desc fe"],
        );
        check(
            CqlValue::Text("a\0b".into()),
            CqlType::Text,
            expect!["asc 6100ff620001 desc 9eff009dfffe"],
        );
        check(
            CqlValue::Blob(vec![]),
            CqlType::Blob,
            expect!["asc 0001 desc fffe"],
        );
        check(
            CqlValue::Double(-0.0),
            CqlType::Double,
            expect!["asc 7fffffffffffffff desc 8000000000000000"],
        );
        check(
            CqlValue::Double(0.0),
            CqlType::Double,
            expect!["asc 8000000000000000 desc 7fffffffffffffff"],
        );
        check(
            CqlValue::Float(f32::NAN),
            CqlType::Float,
            expect!["asc ffc00000 desc 003fffff"],
        );
        check(
            CqlValue::Inet("10.0.0.1".parse().expect("address")),
            CqlType::Inet,
            expect!["asc 0a00ff00ff010001 desc f5ff00ff00fefffe"],
        );
        let version_1 = [
            0x5e, 0xb1, 0, 0, 0x12, 0x34, 0x11, 0xee, 0x80, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        check(
            CqlValue::Uuid(version_1),
            CqlType::Uuid,
            expect!["asc 11ee12345eb100008000000000000001 desc ee11edcba14effff7ffffffffffffffe"],
        );
        check(
            CqlValue::Timeuuid(version_1),
            CqlType::Timeuuid,
            expect!["asc 91ee12345eb100000080808080808081 desc 6e11edcba14effffff7f7f7f7f7f7f7e"],
        );
    }

    #[test]
    fn encodings_of_numbers() {
        let decimal = |unscaled: i64, scale: i32| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            })
        };
        // 1.0 and 1.00 encode alike; 0.5 and 5 differ only in the exponent.
        check(
            decimal(10, 1),
            CqlType::Decimal,
            expect!["asc 0380000000000000010b00 desc fc7ffffffffffffffef4ff"],
        );
        check(
            decimal(100, 2),
            CqlType::Decimal,
            expect!["asc 0380000000000000010b00 desc fc7ffffffffffffffef4ff"],
        );
        check(
            decimal(5, 1),
            CqlType::Decimal,
            expect!["asc 0380000000000000003300 desc fc7fffffffffffffffccff"],
        );
        check(
            decimal(-123, 0),
            CqlType::Decimal,
            expect!["asc 017ffffffffffffffcf2e0ff desc fe80000000000000030d1f00"],
        );
        check(decimal(0, 7), CqlType::Decimal, expect!["asc 02 desc fd"]);
        check(
            CqlValue::Varint(BigInt::from(256)),
            CqlType::Varint,
            expect!["asc 03000000020100 desc fcfffffffdfeff"],
        );
        check(
            CqlValue::Varint(BigInt::from(-1)),
            CqlType::Varint,
            expect!["asc 01fffffffefe desc fe0000000101"],
        );
    }

    #[test]
    fn encodings_of_composite_values() {
        let list_of_ints = CqlType::Frozen(Box::new(CqlType::List(Box::new(CqlType::Int))));
        check(
            CqlValue::List(vec![]),
            list_of_ints.clone(),
            expect!["asc 01 desc fe"],
        );
        check(
            CqlValue::List(vec![CqlValue::Int(7)]),
            list_of_ints,
            expect!["asc 028000000701 desc fd7ffffff8fe"],
        );
        let tuple = CqlType::Tuple(vec![CqlType::Int, CqlType::Text]);
        check(
            CqlValue::Tuple(vec![None, Some(CqlValue::Text("x".into()))]),
            tuple,
            expect!["asc 020378000101 desc fdfc87fffefe"],
        );
    }

    #[test]
    fn canonical_forms_on_decode() {
        let decode_ascending = |value: CqlValue, ty: CqlType| {
            let encoded = encode_to_vec(&value, &ty, ClusteringOrder::Asc).expect("encodes");
            let mut input = &encoded[..];
            let decoded = decode(&ty, ClusteringOrder::Asc, &mut input).expect("decodes");
            assert!(input.is_empty());
            decoded
        };
        let decimal = |unscaled: i64, scale: i32| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            })
        };
        assert_eq!(
            decode_ascending(decimal(100, 2), CqlType::Decimal),
            decimal(1, 0)
        );
        assert_eq!(
            decode_ascending(decimal(100, 0), CqlType::Decimal),
            decimal(1, -2)
        );
        assert_eq!(
            decode_ascending(decimal(-1500, 3), CqlType::Decimal),
            decimal(-15, 1)
        );
        assert_eq!(
            decode_ascending(decimal(0, -9), CqlType::Decimal),
            decimal(0, 0)
        );
        // The scale cannot go below i32::MIN: trailing zeros are kept instead.
        assert_eq!(
            decode_ascending(decimal(10, i32::MIN), CqlType::Decimal),
            decimal(10, i32::MIN)
        );
        let nan = f64::from_bits(0xfff0_0000_0000_0123);
        match decode_ascending(CqlValue::Double(nan), CqlType::Double) {
            CqlValue::Double(decoded) => assert_eq!(decoded.to_bits(), 0x7ff8_0000_0000_0000),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn exact_encoding_keeps_the_scale() {
        let decimal = |unscaled: i64, scale: i32| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            })
        };
        let exact = |value: &CqlValue| {
            let mut encoded = Vec::new();
            encode_exact(value, &CqlType::Decimal, ClusteringOrder::Asc, &mut encoded)
                .expect("encodes");
            encoded
        };
        let (one_point_zero, one_point_zero_zero) = (decimal(10, 1), decimal(100, 2));
        assert_eq!(
            hex(&exact(&one_point_zero)),
            "0380000000000000010b0080000001"
        );
        assert_eq!(
            hex(&exact(&one_point_zero_zero)),
            "0380000000000000010b0080000002"
        );
        for value in [
            one_point_zero,
            one_point_zero_zero,
            decimal(0, -4),
            decimal(-1500, 3),
        ] {
            let encoded = exact(&value);
            let decoded = decode_exact(&CqlType::Decimal, ClusteringOrder::Asc, &mut &encoded[..])
                .expect("decodes");
            assert_eq!(decoded, value);
        }
    }

    #[test]
    fn orderability() {
        let int = || Box::new(CqlType::Int);
        assert!(is_orderable(&CqlType::Int));
        assert!(!is_orderable(&CqlType::Duration));
        assert!(!is_orderable(&CqlType::Counter));
        assert!(!is_orderable(&CqlType::List(int())));
        assert!(is_orderable(&CqlType::Frozen(Box::new(CqlType::List(
            int()
        )))));
        assert!(is_orderable(&CqlType::Frozen(Box::new(CqlType::Map(
            int(),
            Box::new(CqlType::List(int()))
        )))));
        assert!(!is_orderable(&CqlType::Tuple(vec![
            CqlType::Int,
            CqlType::Duration
        ])));
        let udt = Arc::new(UdtDefinition {
            keyspace: "ks".into(),
            name: "point".into(),
            fields: vec![("x".into(), CqlType::Int)],
        });
        assert!(!is_orderable(&CqlType::Udt(udt.clone())));
        assert!(is_orderable(&CqlType::Frozen(Box::new(CqlType::Udt(udt)))));
        let error = encode_to_vec(
            &CqlValue::List(vec![]),
            &CqlType::List(int()),
            ClusteringOrder::Asc,
        )
        .expect_err("non-frozen lists have no order");
        expect!["invalid type: list<int> has no order and cannot be part of a key"]
            .assert_eq(&error.to_string());
    }

    #[test]
    fn malformed_encodings_are_corruption() {
        let check_error = |ty: CqlType, bytes: &[u8], expected: Expect| {
            let mut input = bytes;
            let error = decode(&ty, ClusteringOrder::Asc, &mut input).expect_err("malformed");
            assert_eq!(input, bytes, "input is not advanced on error");
            expected.assert_eq(&error.to_string());
        };
        check_error(
            CqlType::Int,
            &[0x80, 0x00],
            expect!["corruption: ordered encoding of int: truncated: 4 bytes expected, 2 remain"],
        );
        check_error(
            CqlType::Text,
            &[0x61, 0x00, 0x07],
            expect!["corruption: ordered encoding of text: invalid escape 0x00 0x07"],
        );
        check_error(
            CqlType::Text,
            &[0xc3, 0x00, 0x01],
            expect!["corruption: ordered encoding of text: invalid utf-8 at byte offset 0"],
        );
        check_error(
            CqlType::Ascii,
            &[0xc3, 0xa9, 0x00, 0x01],
            expect!["corruption: ordered encoding of ascii: non-ascii byte"],
        );
        // Found by `decoding_arbitrary_bytes_never_panics` (CI, 2026-11-24): a NaN with a
        // payload decoded and re-encoded as the canonical NaN, so two byte strings meant one key.
        check_error(
            CqlType::Float,
            &[0xff, 0x80, 0x00, 0x01],
            expect!["corruption: ordered encoding of float: a NaN other than the canonical NaN"],
        );
        check_error(
            CqlType::Double,
            &[0xff, 0xf0, 0, 0, 0, 0, 0, 0x01],
            expect!["corruption: ordered encoding of double: a NaN other than the canonical NaN"],
        );
        check_error(
            CqlType::Boolean,
            &[0x02],
            expect!["corruption: ordered encoding of boolean: boolean byte 0x02"],
        );
        check_error(
            CqlType::Varint,
            &[0x03, 0, 0, 0, 1, 0],
            expect![
                "corruption: ordered encoding of varint: magnitude is empty or has a leading zero byte"
            ],
        );
        check_error(
            CqlType::Decimal,
            &[0x03, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0x01, 0x00],
            expect![
                "corruption: ordered encoding of decimal: invalid value for decimal: normalised digits must not start or end with zero"
            ],
        );
        check_error(
            CqlType::Tuple(vec![CqlType::Int]),
            &[0x02, 0x02, 0x01],
            expect!["corruption: ordered encoding of tuple<int>: more fields than the type has"],
        );
    }

    /// Returns the encoding, checking that it decodes back (in canonical form) and consumes
    /// exactly its own bytes even with more bytes after it.
    fn encode_and_check_decode(value: &CqlValue, ty: &CqlType, order: ClusteringOrder) -> Vec<u8> {
        let encoded = encode_to_vec(value, ty, order).expect("encodes");
        let mut with_suffix = encoded.clone();
        with_suffix.extend_from_slice(&[0x00, 0x01, 0xff]);
        let mut input = &with_suffix[..];
        let decoded = decode(ty, order, &mut input).expect("decodes");
        assert_eq!(
            input,
            [0x00, 0x01, 0xff],
            "decode stops at the end of the encoding"
        );
        assert!(
            values_identical_in_key(&decoded, value),
            "{decoded:?} != {value:?}"
        );
        assert_eq!(decoded.compare(value, ty), Ordering::Equal);
        decoded.validate(ty).expect("decoded values are valid");
        assert_eq!(
            encode_to_vec(&decoded, ty, order).expect("encodes"),
            encoded
        );
        encoded
    }

    fn contains_decimal(value: &CqlValue) -> bool {
        match value {
            CqlValue::Decimal(_) => true,
            CqlValue::List(elements) | CqlValue::Set(elements) => {
                elements.iter().any(contains_decimal)
            }
            CqlValue::Map(entries) => entries
                .iter()
                .any(|(key, value)| contains_decimal(key) || contains_decimal(value)),
            CqlValue::Tuple(fields) | CqlValue::Udt(fields) => {
                fields.iter().flatten().any(contains_decimal)
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn byte_order_is_cql_order(
            (ty, values) in arb_type_and_values(arb_orderable_type(), 2..6),
        ) {
            prop_assert!(is_orderable(&ty));
            let ascending: Vec<Vec<u8>> = values
                .iter()
                .map(|value| encode_and_check_decode(value, &ty, ClusteringOrder::Asc))
                .collect();
            let descending: Vec<Vec<u8>> = values
                .iter()
                .map(|value| encode_and_check_decode(value, &ty, ClusteringOrder::Desc))
                .collect();
            for (left_idx, left) in values.iter().enumerate() {
                prop_assert!(left.validate(&ty).is_ok());
                for (right_idx, right) in values.iter().enumerate() {
                    let expected = left.compare(right, &ty);
                    let (left_asc, right_asc) = (&ascending[left_idx], &ascending[right_idx]);
                    let (left_desc, right_desc) = (&descending[left_idx], &descending[right_idx]);
                    prop_assert_eq!(left_asc.cmp(right_asc), expected, "{:?} vs {:?}", left, right);
                    prop_assert_eq!(left_desc.cmp(right_desc), expected.reverse());
                    // Prefix-free: one encoding is a prefix of another only if they are equal.
                    prop_assert!(!right_asc.starts_with(left_asc) || left_asc == right_asc);
                    prop_assert!(!right_desc.starts_with(left_desc) || left_desc == right_desc);
                    if !contains_decimal(left) && !contains_decimal(right) && expected.is_eq() {
                        prop_assert!(values_identical_in_key(left, right));
                    }
                }
            }
        }

        #[test]
        fn numbers_order_across_magnitudes_and_digit_prefixes(
            decimals in proptest::collection::vec(arb_value(&CqlType::Decimal), 2..10),
            varints in proptest::collection::vec(arb_value(&CqlType::Varint), 2..10),
        ) {
            for (ty, values) in [(CqlType::Decimal, decimals), (CqlType::Varint, varints)] {
                for left in &values {
                    let left_encoded = encode_and_check_decode(left, &ty, ClusteringOrder::Asc);
                    for right in &values {
                        let right_encoded =
                            encode_and_check_decode(right, &ty, ClusteringOrder::Asc);
                        prop_assert_eq!(
                            left_encoded.cmp(&right_encoded),
                            left.compare(right, &ty),
                            "{:?} vs {:?}", left, right
                        );
                    }
                }
            }
        }

        #[test]
        fn exact_encoding_keeps_values_bit_for_bit(
            (ty, values) in arb_type_and_values(arb_orderable_type(), 2..6),
            descending in any::<bool>(),
        ) {
            let order = if descending { ClusteringOrder::Desc } else { ClusteringOrder::Asc };
            let mut encodings = Vec::new();
            for value in &values {
                let mut encoded = Vec::new();
                encode_exact(value, &ty, order, &mut encoded).expect("encodes");
                encoded.push(0x5a);
                let mut input = &encoded[..];
                let decoded = decode_exact(&ty, order, &mut input).expect("decodes");
                prop_assert_eq!(input, &[0x5a]);
                prop_assert!(values_identical(&decoded, value), "{:?} != {:?}", decoded, value);
                encoded.pop();
                encodings.push(encoded);
            }
            for (left_idx, left) in values.iter().enumerate() {
                for (right_idx, right) in values.iter().enumerate() {
                    let (left_encoded, right_encoded) = (&encodings[left_idx], &encodings[right_idx]);
                    let byte_order = left_encoded.cmp(right_encoded);
                    let expected = match left.compare(right, &ty) {
                        Ordering::Equal => byte_order,
                        unequal if descending => unequal.reverse(),
                        unequal => unequal,
                    };
                    prop_assert_eq!(byte_order, expected);
                    prop_assert_eq!(byte_order.is_eq(), values_identical(left, right));
                    prop_assert!(!right_encoded.starts_with(left_encoded) || left_encoded == right_encoded);
                }
            }
        }

        #[test]
        fn composite_keys_order_component_by_component(
            components in proptest::collection::vec(
                (arb_type_and_values(arb_orderable_type(), 2..3), any::<bool>()),
                1..4,
            ),
        ) {
            let order_of = |descending: bool| {
                if descending { ClusteringOrder::Desc } else { ClusteringOrder::Asc }
            };
            let composite_key = |value_idx: usize| -> Vec<u8> {
                let mut key = Vec::new();
                for ((ty, values), descending) in &components {
                    encode(&values[value_idx], ty, order_of(*descending), &mut key)
                        .expect("encodes");
                }
                key
            };
            let (left_key, right_key) = (composite_key(0), composite_key(1));
            let mut expected = Ordering::Equal;
            for ((ty, values), descending) in &components {
                let ordering = values[0].compare(&values[1], ty);
                expected = expected.then(if *descending { ordering.reverse() } else { ordering });
            }
            prop_assert_eq!(left_key.cmp(&right_key), expected);
            let mut input = &left_key[..];
            for ((ty, values), descending) in &components {
                let decoded = decode(ty, order_of(*descending), &mut input).expect("decodes");
                prop_assert_eq!(decoded.compare(&values[0], ty), Ordering::Equal);
            }
            prop_assert!(input.is_empty());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            ty in arb_orderable_type(),
            bytes in proptest::collection::vec(any::<u8>(), 0..48),
            descending in any::<bool>(),
        ) {
            let order = if descending { ClusteringOrder::Desc } else { ClusteringOrder::Asc };
            let mut exact_input = &bytes[..];
            if let Ok(value) = decode_exact(&ty, order, &mut exact_input) {
                prop_assert!(value.validate(&ty).is_ok());
            }
            let mut input = &bytes[..];
            if let Ok(value) = decode(&ty, order, &mut input) {
                // Whatever decodes is a valid value that encodes back to the bytes consumed.
                let n_consumed = bytes.len() - input.len();
                prop_assert!(value.validate(&ty).is_ok());
                let reencoded = encode_to_vec(&value, &ty, order).expect("encodes");
                if !contains_decimal(&value) {
                    prop_assert_eq!(&reencoded[..], &bytes[..n_consumed]);
                }
            }
        }

        #[test]
        fn decoding_truncated_encodings_fails(
            (ty, values) in arb_type_and_values(arb_orderable_type(), 1..2),
            descending in any::<bool>(),
        ) {
            let order = if descending { ClusteringOrder::Desc } else { ClusteringOrder::Asc };
            let encoded = encode_to_vec(&values[0], &ty, order).expect("encodes");
            for n_bytes in 0..encoded.len() {
                let mut input = &encoded[..n_bytes];
                prop_assert!(decode(&ty, order, &mut input).is_err());
            }
        }

        #[test]
        fn non_orderable_types_are_refused(ty in arb_type(), value_seed in any::<u64>()) {
            let _ = value_seed;
            if !is_orderable(&ty) {
                let mut input: &[u8] = &[0x01];
                prop_assert!(matches!(
                    decode(&ty, ClusteringOrder::Asc, &mut input),
                    Err(Error::InvalidType(_))
                ));
            }
        }

        #[test]
        fn non_decimal_values_decode_identically(
            (ty, values) in arb_type_and_values(arb_orderable_type(), 1..2),
        ) {
            let value = &values[0];
            let encoded = encode_to_vec(value, &ty, ClusteringOrder::Asc).expect("encodes");
            let decoded = decode(&ty, ClusteringOrder::Asc, &mut &encoded[..]).expect("decodes");
            if !contains_decimal(value) {
                let canonical_nan = values_identical(&decoded, value)
                    || values_identical_in_key(&decoded, value);
                prop_assert!(canonical_nan);
            }
            let _ = arb_value(&ty);
        }
    }
}
