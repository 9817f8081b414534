//! The CQL native protocol (v4/v5) serialization of values: the bytes inside a `[bytes]`
//! value, without its 4-byte length. Drivers send values this way, and the row store keeps
//! cell values in this form.
//!
//! ```text
//!   ascii, text, blob     the bytes (UTF-8 for text, 7-bit for ascii)
//!   tinyint .. bigint     two's complement, big endian, 1 / 2 / 4 / 8 bytes
//!   timestamp, counter    i64 big endian; time: i64 nanoseconds since midnight
//!   date                  u32 big endian, the Unix epoch at 2^31
//!   float, double         IEEE 754 big endian
//!   boolean               one byte, 0 false, anything else true
//!   uuid, timeuuid        16 bytes
//!   inet                  4 (IPv4) or 16 (IPv6) bytes
//!   varint                minimal two's complement big endian, at least one byte
//!   decimal               i32 scale, then the unscaled value as a varint
//!   duration              months, days, nanoseconds as zig-zag vints (Cassandra's VIntCoding)
//!   list, set             i32 count, then per element: i32 length, bytes
//!   map                   i32 count, then per entry: i32 length, key, i32 length, value
//!   tuple, udt            per field: i32 length (-1 for null), bytes
//! ```
//!
//! Deserialization trusts nothing: every length is checked, so malformed bytes give an
//! [`Error::InvalidValue`] naming the type, never a panic. Sets and maps arrive in any order
//! from drivers; deserialization sorts them into CQL order and drops duplicates (for maps the
//! last entry of a key wins, as Cassandra's `TreeMap` does). A tuple with fewer fields than
//! its type is padded with nulls; a UDT keeps its missing trailing fields missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use num_bigint::BigInt;

use crate::error::{Error, Result};
use crate::types::CqlType;
use crate::value::{CqlDuration, CqlValue, Decimal, TIME_NANOSECONDS_MAX, uuid_version};

/// Appends the native protocol serialization of `value` to `out`.
///
/// The value should be valid for the type (see [`CqlValue::validate`]); serialization checks
/// only what it needs to produce well-formed bytes.
///
/// # Errors
///
/// Returns [`Error::InvalidValue`] if the value's variant does not match the type, a tuple or
/// UDT value has more fields than its type, or a collection or element is too large for the
/// protocol's 32-bit lengths.
pub fn serialize(value: &CqlValue, ty: &CqlType, out: &mut Vec<u8>) -> Result<()> {
    use CqlValue as V;
    let start_len = out.len();
    match (ty.unfrozen(), value) {
        (CqlType::Ascii, V::Ascii(text)) | (CqlType::Text, V::Text(text)) => {
            out.extend_from_slice(text.as_bytes());
        }
        (CqlType::Bigint | CqlType::Counter, V::Bigint(number))
        | (CqlType::Time, V::Time(number))
        | (CqlType::Timestamp, V::Timestamp(number)) => {
            out.extend_from_slice(&number.to_be_bytes())
        }
        (CqlType::Blob, V::Blob(bytes)) => out.extend_from_slice(bytes),
        (CqlType::Boolean, V::Boolean(flag)) => out.push(u8::from(*flag)),
        (CqlType::Date, V::Date(days)) => out.extend_from_slice(&days.to_be_bytes()),
        (CqlType::Decimal, V::Decimal(decimal)) => {
            out.extend_from_slice(&decimal.scale.to_be_bytes());
            out.extend_from_slice(&decimal.unscaled.to_signed_bytes_be());
        }
        (CqlType::Double, V::Double(number)) => out.extend_from_slice(&number.to_be_bytes()),
        (CqlType::Float, V::Float(number)) => out.extend_from_slice(&number.to_be_bytes()),
        (CqlType::Duration, V::Duration(duration)) => {
            write_signed_vint(i64::from(duration.months), out);
            write_signed_vint(i64::from(duration.days), out);
            write_signed_vint(duration.nanoseconds, out);
        }
        (CqlType::Inet, V::Inet(IpAddr::V4(address))) => out.extend_from_slice(&address.octets()),
        (CqlType::Inet, V::Inet(IpAddr::V6(address))) => out.extend_from_slice(&address.octets()),
        (CqlType::Int, V::Int(number)) => out.extend_from_slice(&number.to_be_bytes()),
        (CqlType::Smallint, V::Smallint(number)) => out.extend_from_slice(&number.to_be_bytes()),
        (CqlType::Tinyint, V::Tinyint(number)) => out.extend_from_slice(&number.to_be_bytes()),
        (CqlType::Timeuuid, V::Timeuuid(bytes)) | (CqlType::Uuid, V::Uuid(bytes)) => {
            out.extend_from_slice(bytes);
        }
        (CqlType::Varint, V::Varint(number)) => out.extend_from_slice(&number.to_signed_bytes_be()),
        (CqlType::List(element_type), V::List(elements))
        | (CqlType::Set(element_type), V::Set(elements)) => {
            write_length(elements.len(), ty, out)?;
            for element in elements {
                serialize_with_length(element, element_type, ty, out)?;
            }
        }
        (CqlType::Map(key_type, value_type), V::Map(entries)) => {
            write_length(entries.len(), ty, out)?;
            for (key, value) in entries {
                serialize_with_length(key, key_type, ty, out)?;
                serialize_with_length(value, value_type, ty, out)?;
            }
        }
        (CqlType::Tuple(field_types), V::Tuple(fields)) => {
            serialize_fields(fields, field_types.iter(), ty, out)?;
        }
        (CqlType::Udt(definition), V::Udt(fields)) => {
            let field_types = definition.fields.iter().map(|(_, field_type)| field_type);
            serialize_fields(fields, field_types, ty, out)?;
        }
        _ => {
            return Err(Error::invalid_value(
                ty.to_string(),
                format!("cannot serialize {} value", value.kind_with_article()),
            ));
        }
    }
    assert!(out.len() >= start_len);
    Ok(())
}

/// Returns the native protocol serialization of `value` as a new vector.
///
/// # Errors
///
/// As [`serialize`].
pub fn serialize_to_vec(value: &CqlValue, ty: &CqlType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    serialize(value, ty, &mut out)?;
    Ok(out)
}

fn serialize_fields<'a>(
    fields: &[Option<CqlValue>],
    field_types: impl ExactSizeIterator<Item = &'a CqlType>,
    ty: &CqlType,
    out: &mut Vec<u8>,
) -> Result<()> {
    super::check_field_count(fields.len(), field_types.len(), ty)?;
    for (field, field_type) in fields.iter().zip(field_types) {
        match field {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(field) => serialize_with_length(field, field_type, ty, out)?,
        }
    }
    Ok(())
}

/// Writes `[bytes]`: an i32 length, then the serialized value.
fn serialize_with_length(
    value: &CqlValue,
    ty: &CqlType,
    outer_type: &CqlType,
    out: &mut Vec<u8>,
) -> Result<()> {
    let length_position = out.len();
    out.extend_from_slice(&[0; 4]);
    serialize(value, ty, out)?;
    let n_bytes = out.len() - length_position - 4;
    let length = i32::try_from(n_bytes).map_err(|_| too_large(outer_type, n_bytes))?;
    out[length_position..length_position + 4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

fn write_length(length: usize, ty: &CqlType, out: &mut Vec<u8>) -> Result<()> {
    let length = i32::try_from(length).map_err(|_| too_large(ty, length))?;
    out.extend_from_slice(&length.to_be_bytes());
    Ok(())
}

fn too_large(ty: &CqlType, size: usize) -> Error {
    Error::invalid_value(
        ty.to_string(),
        format!("size {size} does not fit a 32-bit length"),
    )
}

/// Writes a signed vint: zig-zag, then Cassandra's unsigned vint (`VIntCoding`): the number
/// of leading one bits of the first byte is the number of extra bytes, big endian.
fn write_signed_vint(value: i64, out: &mut Vec<u8>) {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    write_unsigned_vint(zigzag, out);
}

fn write_unsigned_vint(value: u64, out: &mut Vec<u8>) {
    // Cassandra's computeUnsignedVIntSize: 7 value bits per byte, up to 9 bytes.
    let magnitude = (value | 1).leading_zeros() as usize;
    let n_bytes = (639 - magnitude * 9) >> 6;
    assert!((1..=9).contains(&n_bytes));
    if n_bytes == 1 {
        out.push(value as u8);
        return;
    }
    let n_extra_bytes = n_bytes - 1;
    let mut encoded = [0u8; 9];
    let mut remaining = value;
    for byte_idx in (0..n_bytes).rev() {
        encoded[byte_idx] = remaining as u8;
        remaining = remaining.checked_shr(8).unwrap_or(0);
    }
    encoded[0] |= !(0xffu32 >> n_extra_bytes) as u8;
    out.extend_from_slice(&encoded[..n_bytes]);
}

/// Reads the native protocol serialization of a value of type `ty`.
///
/// # Errors
///
/// Returns [`Error::InvalidValue`] naming the type (and, for nested values, where) if the
/// bytes are malformed: truncated, too long, invalid UTF-8 or 7-bit ascii, a null collection
/// element, a negative length, or a value out of range for the type.
pub fn deserialize(ty: &CqlType, bytes: &[u8]) -> Result<CqlValue> {
    use CqlValue as V;
    let value = match ty.unfrozen() {
        CqlType::Ascii => {
            if let Some(byte_idx) = bytes.iter().position(|byte| !byte.is_ascii()) {
                return Err(malformed(
                    ty,
                    format!(
                        "byte {:#04x} at offset {byte_idx} is not 7-bit ascii",
                        bytes[byte_idx]
                    ),
                ));
            }
            V::Ascii(decode_utf8(ty, bytes)?)
        }
        CqlType::Text => V::Text(decode_utf8(ty, bytes)?),
        CqlType::Bigint | CqlType::Counter => V::Bigint(i64::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Blob => V::Blob(bytes.to_vec()),
        CqlType::Boolean => V::Boolean(exact::<1>(ty, bytes)?[0] != 0),
        CqlType::Date => V::Date(u32::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Decimal => {
            if bytes.len() < 5 {
                return Err(malformed(
                    ty,
                    format!(
                        "expected at least 5 bytes (scale and unscaled), got {}",
                        bytes.len()
                    ),
                ));
            }
            let (scale_bytes, unscaled_bytes) = bytes.split_at(4);
            let scale = i32::from_be_bytes(exact(ty, scale_bytes)?);
            V::Decimal(Decimal {
                unscaled: BigInt::from_signed_bytes_be(unscaled_bytes),
                scale,
            })
        }
        CqlType::Double => V::Double(f64::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Float => V::Float(f32::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Duration => V::Duration(deserialize_duration(ty, bytes)?),
        CqlType::Inet => match bytes.len() {
            4 => V::Inet(IpAddr::V4(Ipv4Addr::from(exact::<4>(ty, bytes)?))),
            16 => V::Inet(IpAddr::V6(Ipv6Addr::from(exact::<16>(ty, bytes)?))),
            n_bytes => {
                return Err(malformed(
                    ty,
                    format!("expected 4 or 16 bytes, got {n_bytes}"),
                ));
            }
        },
        CqlType::Int => V::Int(i32::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Smallint => V::Smallint(i16::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Tinyint => V::Tinyint(i8::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Time => {
            let nanoseconds = i64::from_be_bytes(exact(ty, bytes)?);
            if !(0..=TIME_NANOSECONDS_MAX).contains(&nanoseconds) {
                return Err(malformed(
                    ty,
                    format!("{nanoseconds} is outside 0..={TIME_NANOSECONDS_MAX} nanoseconds"),
                ));
            }
            V::Time(nanoseconds)
        }
        CqlType::Timestamp => V::Timestamp(i64::from_be_bytes(exact(ty, bytes)?)),
        CqlType::Timeuuid => {
            let uuid = exact::<16>(ty, bytes)?;
            if uuid_version(&uuid) != 1 {
                return Err(malformed(
                    ty,
                    format!(
                        "uuid version is {}, a timeuuid must be version 1",
                        uuid_version(&uuid)
                    ),
                ));
            }
            V::Timeuuid(uuid)
        }
        CqlType::Uuid => V::Uuid(exact(ty, bytes)?),
        CqlType::Varint => {
            if bytes.is_empty() {
                return Err(malformed(ty, "expected at least 1 byte, got 0"));
            }
            V::Varint(BigInt::from_signed_bytes_be(bytes))
        }
        CqlType::List(element_type) => V::List(deserialize_elements(ty, element_type, bytes)?),
        CqlType::Set(element_type) => {
            let mut elements = deserialize_elements(ty, element_type, bytes)?;
            elements.sort_by(|left, right| left.compare(right, element_type));
            elements.dedup_by(|later, earlier| later.compare(earlier, element_type).is_eq());
            V::Set(elements)
        }
        CqlType::Map(key_type, value_type) => {
            V::Map(deserialize_map(ty, key_type, value_type, bytes)?)
        }
        CqlType::Tuple(field_types) => {
            let mut fields = deserialize_fields(ty, field_types.iter(), bytes)?;
            fields.resize(field_types.len(), None);
            V::Tuple(fields)
        }
        CqlType::Udt(definition) => {
            let field_types = definition.fields.iter().map(|(_, field_type)| field_type);
            V::Udt(deserialize_fields(ty, field_types, bytes)?)
        }
        CqlType::Frozen(_) => {
            return Err(Error::Internal(format!(
                "{ty} is still frozen after unfrozen()"
            )));
        }
    };
    Ok(value)
}

fn malformed(ty: &CqlType, reason: impl Into<String>) -> Error {
    Error::invalid_value(ty.to_string(), reason)
}

fn nested(ty: &CqlType, location: String, inner: Error) -> Error {
    Error::invalid_value(ty.to_string(), format!("{location}: {inner}"))
}

fn exact<const N: usize>(ty: &CqlType, bytes: &[u8]) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| malformed(ty, format!("expected {}, got {}", n_bytes(N), bytes.len())))
}

fn n_bytes(count: usize) -> String {
    if count == 1 {
        "1 byte".to_string()
    } else {
        format!("{count} bytes")
    }
}

fn decode_utf8(ty: &CqlType, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|error| {
        malformed(
            ty,
            format!(
                "invalid utf-8 at byte offset {}",
                error.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A cursor over a collection's or tuple's bytes, checking every length.
struct NativeReader<'a> {
    remaining: &'a [u8],
}

impl<'a> NativeReader<'a> {
    fn read_i32(&mut self, ty: &CqlType, what: &str) -> Result<i32> {
        let Some((length_bytes, rest)) = self.remaining.split_first_chunk::<4>() else {
            return Err(malformed(
                ty,
                format!(
                    "truncated: {what} needs 4 bytes, {} remain",
                    self.remaining.len()
                ),
            ));
        };
        self.remaining = rest;
        Ok(i32::from_be_bytes(*length_bytes))
    }

    /// Reads `[bytes]`: `None` for a negative (null) length.
    fn read_value_bytes(&mut self, ty: &CqlType, what: &str) -> Result<Option<&'a [u8]>> {
        let length = self.read_i32(ty, what)?;
        if length == -1 {
            return Ok(None);
        }
        let n_bytes = usize::try_from(length)
            .map_err(|_| malformed(ty, format!("{what} has negative length {length}")))?;
        if n_bytes > self.remaining.len() {
            return Err(malformed(
                ty,
                format!(
                    "truncated: {what} has {n_bytes} bytes, {} remain",
                    self.remaining.len()
                ),
            ));
        }
        let (value_bytes, rest) = self.remaining.split_at(n_bytes);
        self.remaining = rest;
        Ok(Some(value_bytes))
    }

    fn read_count(&mut self, ty: &CqlType) -> Result<usize> {
        let count = self.read_i32(ty, "the element count")?;
        usize::try_from(count).map_err(|_| malformed(ty, format!("negative element count {count}")))
    }

    fn finish(&self, ty: &CqlType) -> Result<()> {
        if self.remaining.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                ty,
                format!("{} unexpected trailing bytes", self.remaining.len()),
            ))
        }
    }
}

fn deserialize_element(
    outer_type: &CqlType,
    element_type: &CqlType,
    reader: &mut NativeReader<'_>,
    location: String,
) -> Result<CqlValue> {
    match reader.read_value_bytes(outer_type, &location)? {
        None => Err(malformed(
            outer_type,
            format!("{location} is null, collections hold no nulls"),
        )),
        Some(element_bytes) => deserialize(element_type, element_bytes)
            .map_err(|error| nested(outer_type, location, error)),
    }
}

fn deserialize_elements(
    ty: &CqlType,
    element_type: &CqlType,
    bytes: &[u8],
) -> Result<Vec<CqlValue>> {
    let mut reader = NativeReader { remaining: bytes };
    let n_elements = reader.read_count(ty)?;
    // Every element takes at least 4 bytes: do not trust the count for the allocation.
    let mut elements = Vec::with_capacity(n_elements.min(reader.remaining.len() / 4));
    for element_idx in 0..n_elements {
        let location = format!("element {element_idx}");
        elements.push(deserialize_element(
            ty,
            element_type,
            &mut reader,
            location,
        )?);
    }
    reader.finish(ty)?;
    assert_eq!(elements.len(), n_elements);
    Ok(elements)
}

fn deserialize_map(
    ty: &CqlType,
    key_type: &CqlType,
    value_type: &CqlType,
    bytes: &[u8],
) -> Result<Vec<(CqlValue, CqlValue)>> {
    let mut reader = NativeReader { remaining: bytes };
    let n_entries = reader.read_count(ty)?;
    let mut entries = Vec::with_capacity(n_entries.min(reader.remaining.len() / 8));
    for entry_idx in 0..n_entries {
        let key = deserialize_element(ty, key_type, &mut reader, format!("key {entry_idx}"))?;
        let location = format!("value of key {entry_idx}");
        let value = deserialize_element(ty, value_type, &mut reader, location)?;
        entries.push((key, value));
    }
    reader.finish(ty)?;
    // Stable sort, then keep the last entry of each key, as Cassandra's TreeMap does.
    entries.sort_by(|(left_key, _), (right_key, _)| left_key.compare(right_key, key_type));
    let mut unique_entries: Vec<(CqlValue, CqlValue)> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        match unique_entries.last_mut() {
            Some((previous_key, previous_value))
                if previous_key.compare(&key, key_type).is_eq() =>
            {
                *previous_value = value;
            }
            _ => unique_entries.push((key, value)),
        }
    }
    Ok(unique_entries)
}

fn deserialize_fields<'a>(
    ty: &CqlType,
    field_types: impl ExactSizeIterator<Item = &'a CqlType>,
    bytes: &[u8],
) -> Result<Vec<Option<CqlValue>>> {
    let mut reader = NativeReader { remaining: bytes };
    let n_fields_max = field_types.len();
    let mut fields = Vec::with_capacity(n_fields_max);
    for (field_idx, field_type) in field_types.enumerate() {
        if reader.remaining.is_empty() {
            break;
        }
        let location = format!("field {field_idx}");
        let field = match reader.read_value_bytes(ty, &location)? {
            None => None,
            Some(field_bytes) => Some(
                deserialize(field_type, field_bytes)
                    .map_err(|error| nested(ty, location, error))?,
            ),
        };
        fields.push(field);
    }
    if !reader.remaining.is_empty() {
        return Err(malformed(
            ty,
            format!(
                "{} bytes after the last of {n_fields_max} fields",
                reader.remaining.len()
            ),
        ));
    }
    assert!(fields.len() <= n_fields_max);
    Ok(fields)
}

fn deserialize_duration(ty: &CqlType, bytes: &[u8]) -> Result<CqlDuration> {
    let mut remaining = bytes;
    let months = read_signed_vint(ty, &mut remaining, "months")?;
    let days = read_signed_vint(ty, &mut remaining, "days")?;
    let nanoseconds = read_signed_vint(ty, &mut remaining, "nanoseconds")?;
    if !remaining.is_empty() {
        return Err(malformed(
            ty,
            format!("{} unexpected trailing bytes", remaining.len()),
        ));
    }
    let to_i32 = |number: i64, what: &str| {
        i32::try_from(number)
            .map_err(|_| malformed(ty, format!("{what} {number} does not fit a 32-bit integer")))
    };
    let duration = CqlDuration {
        months: to_i32(months, "months")?,
        days: to_i32(days, "days")?,
        nanoseconds,
    };
    duration.validate()?;
    Ok(duration)
}

fn read_signed_vint(ty: &CqlType, remaining: &mut &[u8], what: &str) -> Result<i64> {
    let truncated = || malformed(ty, format!("truncated: {what} is missing"));
    let (&first_byte, rest) = remaining.split_first().ok_or_else(truncated)?;
    let n_extra_bytes = first_byte.leading_ones() as usize;
    if rest.len() < n_extra_bytes {
        return Err(truncated());
    }
    let (extra_bytes, rest) = rest.split_at(n_extra_bytes);
    let first_byte_mask = 0xffu32.checked_shr(n_extra_bytes as u32).unwrap_or(0) as u8;
    let mut zigzag = u64::from(first_byte & first_byte_mask);
    for byte in extra_bytes {
        zigzag = (zigzag << 8) | u64::from(*byte);
    }
    *remaining = rest;
    Ok(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;
    use crate::testing::strategies::{arb_type, arb_type_and_values, values_identical};
    use crate::types::UdtDefinition;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|idx| u8::from_str_radix(&text[idx..idx + 2], 16).expect("hex digit"))
            .collect()
    }

    /// Checks a serialization against bytes produced by the Python driver
    /// (`cassandra.cqltypes.*.serialize(value, 4)`), and that it deserializes back.
    fn check_driver_bytes(value: CqlValue, ty: CqlType, driver_hex: &str) {
        let serialized = serialize_to_vec(&value, &ty).expect("serializes");
        assert_eq!(hex(&serialized), driver_hex, "{value:?}");
        let deserialized = deserialize(&ty, &unhex(driver_hex)).expect("deserializes");
        assert!(values_identical(&deserialized, &value), "{deserialized:?}");
    }

    #[test]
    fn serializations_match_the_python_driver() {
        let duration = |months, days, nanoseconds| {
            CqlValue::Duration(CqlDuration {
                months,
                days,
                nanoseconds,
            })
        };
        check_driver_bytes(duration(1, 2, 3), CqlType::Duration, "020406");
        check_driver_bytes(duration(-1, -2, -3), CqlType::Duration, "010305");
        check_driver_bytes(
            duration(0, 0, 3_600_000_000_000),
            CqlType::Duration,
            "0000fc068c61714000",
        );
        check_driver_bytes(
            duration(i32::MAX, 0, i64::MAX),
            CqlType::Duration,
            "f0fffffffe00fffffffffffffffffe",
        );
        check_driver_bytes(
            duration(i32::MIN, 0, i64::MIN),
            CqlType::Duration,
            "f0ffffffff00ffffffffffffffffff",
        );
        let decimal = |unscaled: i128, scale| {
            CqlValue::Decimal(Decimal {
                unscaled: BigInt::from(unscaled),
                scale,
            })
        };
        check_driver_bytes(decimal(150, 2), CqlType::Decimal, "000000020096");
        check_driver_bytes(decimal(-1, 3), CqlType::Decimal, "00000003ff");
        check_driver_bytes(decimal(0, 0), CqlType::Decimal, "0000000000");
        check_driver_bytes(decimal(1, -3), CqlType::Decimal, "fffffffd01");
        check_driver_bytes(
            decimal(1_234_567_890_123_456_789_012_345_678_905, 1),
            CqlType::Decimal,
            "000000010f951a9fa3a286c94f0e766c39",
        );
        for (number, driver_hex) in [
            (0i128, "00"),
            (127, "7f"),
            (128, "0080"),
            (-128, "80"),
            (-129, "ff7f"),
            (1 << 64, "010000000000000000"),
            (-(1 << 64), "ff0000000000000000"),
        ] {
            check_driver_bytes(
                CqlValue::Varint(BigInt::from(number)),
                CqlType::Varint,
                driver_hex,
            );
        }
        check_driver_bytes(
            CqlValue::Map(vec![
                (CqlValue::Int(1), CqlValue::Text("a".into())),
                (CqlValue::Int(2), CqlValue::Text("bc".into())),
            ]),
            CqlType::Map(Box::new(CqlType::Int), Box::new(CqlType::Text)),
            "00000002000000040000000100000001610000000400000002000000026263",
        );
    }

    /// Checks the error for malformed bytes.
    fn check_error(ty: CqlType, bytes_hex: &str, expected: Expect) {
        let error = deserialize(&ty, &unhex(bytes_hex)).expect_err("malformed");
        expected.assert_eq(&error.to_string());
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let list_of_ints = CqlType::List(Box::new(CqlType::Int));
        check_error(
            CqlType::Int,
            "000001",
            expect!["invalid value for int: expected 4 bytes, got 3"],
        );
        check_error(
            CqlType::Bigint,
            "",
            expect!["invalid value for bigint: expected 8 bytes, got 0"],
        );
        check_error(
            CqlType::Boolean,
            "0100",
            expect!["invalid value for boolean: expected 1 byte, got 2"],
        );
        check_error(
            CqlType::Text,
            "61c3",
            expect!["invalid value for text: invalid utf-8 at byte offset 1"],
        );
        check_error(
            CqlType::Ascii,
            "61c3a9",
            expect!["invalid value for ascii: byte 0xc3 at offset 1 is not 7-bit ascii"],
        );
        check_error(
            CqlType::Inet,
            "0a000001ff",
            expect!["invalid value for inet: expected 4 or 16 bytes, got 5"],
        );
        check_error(
            CqlType::Varint,
            "",
            expect!["invalid value for varint: expected at least 1 byte, got 0"],
        );
        check_error(
            CqlType::Decimal,
            "00000001",
            expect![
                "invalid value for decimal: expected at least 5 bytes (scale and unscaled), got 4"
            ],
        );
        check_error(
            CqlType::Time,
            "00004e94914f0000",
            expect![
                "invalid value for time: 86400000000000 is outside 0..=86399999999999 nanoseconds"
            ],
        );
        check_error(
            CqlType::Timeuuid,
            "00000000000040000000000000000000",
            expect!["invalid value for timeuuid: uuid version is 4, a timeuuid must be version 1"],
        );
        check_error(
            CqlType::Duration,
            "0201",
            expect!["invalid value for duration: truncated: nanoseconds is missing"],
        );
        check_error(
            CqlType::Duration,
            "020102",
            expect![
                "invalid value for duration: months, days and nanoseconds must share one sign, got 1, -1 and 1"
            ],
        );
        check_error(
            CqlType::Duration,
            "f1000000000000",
            expect!["invalid value for duration: months 2147483648 does not fit a 32-bit integer"],
        );
        check_error(
            list_of_ints.clone(),
            "00000001000000040000",
            expect!["invalid value for list<int>: truncated: element 0 has 4 bytes, 2 remain"],
        );
        check_error(
            list_of_ints.clone(),
            "00000001ffffffff",
            expect!["invalid value for list<int>: element 0 is null, collections hold no nulls"],
        );
        check_error(
            list_of_ints.clone(),
            "ffffffff",
            expect!["invalid value for list<int>: negative element count -1"],
        );
        check_error(
            list_of_ints.clone(),
            "0000000000",
            expect!["invalid value for list<int>: 1 unexpected trailing bytes"],
        );
        check_error(
            list_of_ints,
            "7fffffff",
            expect!["invalid value for list<int>: truncated: element 0 needs 4 bytes, 0 remain"],
        );
        check_error(
            CqlType::Set(Box::new(CqlType::Ascii)),
            "000000010000000180",
            expect![
                "invalid value for set<ascii>: element 0: invalid value for ascii: byte 0x80 at offset 0 is not 7-bit ascii"
            ],
        );
        let tuple = CqlType::Tuple(vec![CqlType::Int]);
        check_error(
            tuple.clone(),
            "0000000400000001ffffffff",
            expect!["invalid value for tuple<int>: 4 bytes after the last of 1 fields"],
        );
        check_error(
            tuple,
            "fffffffe",
            expect!["invalid value for tuple<int>: field 0 has negative length -2"],
        );
    }

    #[test]
    fn collections_are_sorted_and_tuples_padded_on_deserialize() {
        let set_of_ints = CqlType::Set(Box::new(CqlType::Int));
        let unsorted = CqlValue::List(vec![CqlValue::Int(3), CqlValue::Int(1), CqlValue::Int(3)]);
        let bytes = serialize_to_vec(&unsorted, &CqlType::List(Box::new(CqlType::Int)))
            .expect("serializes");
        let set = deserialize(&set_of_ints, &bytes).expect("deserializes");
        assert_eq!(set, CqlValue::Set(vec![CqlValue::Int(1), CqlValue::Int(3)]));

        let map_type = CqlType::Map(Box::new(CqlType::Int), Box::new(CqlType::Text));
        let entries = |pairs: &[(i32, &str)]| {
            CqlValue::Map(
                pairs
                    .iter()
                    .map(|(key, value)| (CqlValue::Int(*key), CqlValue::Text(value.to_string())))
                    .collect(),
            )
        };
        let bytes = serialize_to_vec(&entries(&[(2, "first"), (1, "x"), (2, "last")]), &map_type)
            .expect("serializes");
        let map = deserialize(&map_type, &bytes).expect("deserializes");
        assert_eq!(map, entries(&[(1, "x"), (2, "last")]));

        let tuple_type = CqlType::Tuple(vec![CqlType::Int, CqlType::Text]);
        let tuple = deserialize(&tuple_type, &unhex("0000000400000007")).expect("deserializes");
        assert_eq!(tuple, CqlValue::Tuple(vec![Some(CqlValue::Int(7)), None]));

        let udt_type = CqlType::Udt(Arc::new(UdtDefinition {
            keyspace: "ks".into(),
            name: "pair".into(),
            fields: vec![("a".into(), CqlType::Int), ("b".into(), CqlType::Int)],
        }));
        let udt = deserialize(&udt_type, &unhex("0000000400000007")).expect("deserializes");
        assert_eq!(udt, CqlValue::Udt(vec![Some(CqlValue::Int(7))]));
    }

    #[test]
    fn serialize_refuses_mismatched_values() {
        let error = serialize_to_vec(&CqlValue::Int(1), &CqlType::Text).expect_err("mismatch");
        expect!["invalid value for text: cannot serialize an int value"]
            .assert_eq(&error.to_string());
        let tuple_type = CqlType::Tuple(vec![CqlType::Int]);
        let too_long = CqlValue::Tuple(vec![None, None]);
        let error = serialize_to_vec(&too_long, &tuple_type).expect_err("too many fields");
        expect!["invalid value for tuple<int>: value has 2 fields, the type has 1"]
            .assert_eq(&error.to_string());
    }

    /// Returns the number of bytes a fixed-size type always takes, if it has one.
    fn fixed_size(ty: &CqlType) -> Option<usize> {
        match ty {
            CqlType::Boolean | CqlType::Tinyint => Some(1),
            CqlType::Smallint => Some(2),
            CqlType::Int | CqlType::Date | CqlType::Float => Some(4),
            CqlType::Bigint | CqlType::Timestamp | CqlType::Time | CqlType::Double => Some(8),
            CqlType::Uuid | CqlType::Timeuuid => Some(16),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn values_round_trip(
            (ty, values) in arb_type_and_values(arb_type(), 1..4),
        ) {
            for value in &values {
                prop_assert!(value.validate(&ty).is_ok(), "{:?} invalid for {}", value, ty);
                let serialized = serialize_to_vec(value, &ty).expect("serializes");
                let deserialized = deserialize(&ty, &serialized).expect("deserializes");
                prop_assert!(values_identical(&deserialized, value), "{:?} != {:?}", deserialized, value);
                if let Some(n_bytes) = fixed_size(&ty) {
                    prop_assert_eq!(serialized.len(), n_bytes);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            ty in arb_type(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(value) = deserialize(&ty, &bytes) {
                prop_assert!(value.validate(&ty).is_ok(), "{:?} invalid for {}", value, ty);
            }
        }

        #[test]
        fn damaged_serializations_never_panic(
            (ty, values) in arb_type_and_values(arb_type(), 1..2),
            cut in any::<proptest::sample::Index>(),
            flip in any::<(proptest::sample::Index, u8)>(),
            extra in proptest::collection::vec(any::<u8>(), 1..6),
        ) {
            let serialized = serialize_to_vec(&values[0], &ty).expect("serializes");
            let mut damaged = vec![
                serialized[..cut.index(serialized.len() + 1)].to_vec(),
                [serialized.clone(), extra].concat(),
            ];
            if !serialized.is_empty() {
                let mut flipped = serialized.clone();
                flipped[flip.0.index(serialized.len())] ^= flip.1 | 1;
                damaged.push(flipped);
            }
            for bytes in &damaged {
                if let Ok(value) = deserialize(&ty, bytes) {
                    prop_assert!(value.validate(&ty).is_ok());
                }
            }
            // Fixed-size values refuse any other length.
            if fixed_size(&ty).is_some() {
                prop_assert!(deserialize(&ty, &damaged[1]).is_err());
                if cut.index(serialized.len() + 1) < serialized.len() {
                    prop_assert!(deserialize(&ty, &damaged[0]).is_err());
                }
            }
        }
    }
}
