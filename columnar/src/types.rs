//! The CQL → Arrow type mapping, and back (see the table in `design/columnar.md`).
//!
//! Values convert column-wise: [`to_array`] turns the values of one column
//! (`None` for null) into one Arrow array, recursing into list, map and struct
//! children; [`from_array`] turns it back. Every field carries its CQL type as
//! `concord.cql_type` metadata, and uuid fields the `arrow.uuid` extension, so
//! the reverse mapping is exact. Nothing is rounded or reinterpreted silently:
//! a decimal that does not fit `Decimal128(38, s)` or a varint past 38 digits
//! is an error naming the value.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray,
    Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, ListArray, MapArray,
    StringArray, StructArray, Time64NanosecondArray, TimestampMillisecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use concord_storage::types::CqlType;
use concord_storage::value::{CqlDuration, CqlValue, Decimal};
use num_bigint::BigInt;

use crate::{Error, Result};

/// The scale of every decimal column in Arrow (`Decimal128(38, 10)`).
pub const DECIMAL_SCALE_DEFAULT: i8 = 10;
/// The precision of Arrow decimals: 38 digits.
pub const DECIMAL_PRECISION: u8 = 38;
/// The metadata key holding a field's CQL type.
pub const CQL_TYPE_METADATA_KEY: &str = "concord.cql_type";
const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";
/// The days CQL adds to a date so it is unsigned (the epoch is at 2^31).
const DATE_EPOCH_OFFSET_DAYS: i64 = 1 << 31;

/// The Arrow field for a column (or nested element) of CQL type `ty`.
///
/// # Errors
/// `UnsupportedType` for counters.
pub fn field(name: &str, ty: &CqlType, nullable: bool) -> Result<Field> {
    let mut metadata = HashMap::from([(CQL_TYPE_METADATA_KEY.to_owned(), ty.to_string())]);
    if matches!(unfrozen(ty), CqlType::Uuid | CqlType::Timeuuid) {
        metadata.insert(EXTENSION_NAME_KEY.to_owned(), "arrow.uuid".to_owned());
        metadata.insert(EXTENSION_METADATA_KEY.to_owned(), String::new());
    }
    Ok(Field::new(name, data_type(ty)?, nullable).with_metadata(metadata))
}

fn unfrozen(ty: &CqlType) -> &CqlType {
    match ty {
        CqlType::Frozen(inner) => unfrozen(inner),
        other => other,
    }
}

/// The Arrow data type of CQL type `ty`.
///
/// # Errors
/// `UnsupportedType` for counters.
pub fn data_type(ty: &CqlType) -> Result<DataType> {
    use CqlType as T;
    Ok(match unfrozen(ty) {
        T::Ascii | T::Text | T::Inet | T::Duration => DataType::Utf8,
        T::Bigint => DataType::Int64,
        T::Blob => DataType::Binary,
        T::Boolean => DataType::Boolean,
        T::Counter => return Err(Error::UnsupportedType("counter".into())),
        T::Date => DataType::Date32,
        T::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE_DEFAULT),
        T::Varint => DataType::Decimal128(DECIMAL_PRECISION, 0),
        T::Double => DataType::Float64,
        T::Float => DataType::Float32,
        T::Int => DataType::Int32,
        T::Smallint => DataType::Int16,
        T::Tinyint => DataType::Int8,
        T::Time => DataType::Time64(TimeUnit::Nanosecond),
        T::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        T::Uuid | T::Timeuuid => DataType::FixedSizeBinary(16),
        T::List(element) | T::Set(element) => {
            DataType::List(Arc::new(field("item", element, true)?))
        }
        T::Map(key, value) => DataType::Map(Arc::new(map_entries_field(key, value)?), false),
        T::Tuple(fields) => DataType::Struct(
            fields
                .iter()
                .enumerate()
                .map(|(idx, ty)| field(&format!("f{idx}"), ty, true))
                .collect::<Result<Fields>>()?,
        ),
        T::Udt(udt) => DataType::Struct(
            udt.fields
                .iter()
                .map(|(name, ty)| field(name, ty, true))
                .collect::<Result<Fields>>()?,
        ),
        T::Frozen(_) => return Err(Error::Internal("frozen survived unfreezing".into())),
    })
}

fn map_entries_field(key: &CqlType, value: &CqlType) -> Result<Field> {
    let fields = Fields::from(vec![
        field("key", key, false)?,
        field("value", value, true)?,
    ]);
    Ok(Field::new("entries", DataType::Struct(fields), false))
}

fn struct_fields(ty: &CqlType) -> Result<Fields> {
    match data_type(ty)? {
        DataType::Struct(fields) => Ok(fields),
        other => Err(Error::Internal(format!("{other} is not a struct"))),
    }
}

fn element_field(ty: &CqlType) -> Result<Arc<Field>> {
    match data_type(ty)? {
        DataType::List(field) | DataType::Map(field, _) => Ok(field),
        other => Err(Error::Internal(format!("{other} has no element field"))),
    }
}

fn mismatch(ty: &CqlType, value: &CqlValue) -> Error {
    Error::Internal(format!(
        "value {} does not fit CQL type {ty}",
        value.kind_name()
    ))
}

/// Converts one column's values to an Arrow array of [`data_type`]`(ty)`.
///
/// # Errors
/// `ValueOutOfRange` for a decimal or varint that does not fit
/// `Decimal128(38, s)`; `Internal` for a value of another type.
pub fn to_array(ty: &CqlType, values: &[Option<&CqlValue>]) -> Result<ArrayRef> {
    use CqlType as T;
    use CqlValue as V;
    macro_rules! leaf {
        ($array:ty, $($pattern:pat => $out:expr),+) => {{
            let converted = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    $(Some($pattern) => Ok(Some($out)),)+
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(<$array>::from(converted)) as ArrayRef
        }};
    }
    Ok(match unfrozen(ty) {
        T::Ascii | T::Text => leaf!(StringArray, V::Ascii(s) | V::Text(s) => s.as_str()),
        T::Inet => {
            let texts = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(V::Inet(address)) => Ok(Some(address.to_string())),
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(StringArray::from(texts))
        }
        T::Duration => {
            let texts = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(V::Duration(duration)) => Ok(Some(duration_text(duration))),
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(StringArray::from(texts))
        }
        T::Bigint => leaf!(Int64Array, V::Bigint(n) => *n),
        T::Blob => leaf!(BinaryArray, V::Blob(bytes) => bytes.as_slice()),
        T::Boolean => leaf!(BooleanArray, V::Boolean(flag) => *flag),
        T::Date => leaf!(Date32Array, V::Date(days) => date32(*days)),
        T::Double => leaf!(Float64Array, V::Double(n) => *n),
        T::Float => leaf!(Float32Array, V::Float(n) => *n),
        T::Int => leaf!(Int32Array, V::Int(n) => *n),
        T::Smallint => leaf!(Int16Array, V::Smallint(n) => *n),
        T::Tinyint => leaf!(Int8Array, V::Tinyint(n) => *n),
        T::Time => leaf!(Time64NanosecondArray, V::Time(nanos) => *nanos),
        T::Timestamp => {
            let millis = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(V::Timestamp(millis)) => Ok(Some(*millis)),
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(TimestampMillisecondArray::from(millis).with_timezone("UTC"))
        }
        T::Uuid | T::Timeuuid => {
            let bytes = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(V::Uuid(bytes) | V::Timeuuid(bytes)) => Ok(Some(bytes)),
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(bytes.into_iter(), 16)
                    .map_err(|error| Error::Internal(format!("build uuid array: {error}")))?,
            )
        }
        T::Decimal | T::Varint => {
            let scale = match unfrozen(ty) {
                T::Decimal => DECIMAL_SCALE_DEFAULT,
                _ => 0,
            };
            let unscaled = values
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(V::Decimal(decimal)) => rescale(decimal, scale).map(Some),
                    Some(V::Varint(number)) => rescale(
                        &Decimal {
                            unscaled: number.clone(),
                            scale: 0,
                        },
                        scale,
                    )
                    .map(Some),
                    Some(other) => Err(mismatch(ty, other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(
                Decimal128Array::from(unscaled)
                    .with_precision_and_scale(DECIMAL_PRECISION, scale)
                    .map_err(|error| Error::Internal(format!("build decimal array: {error}")))?,
            )
        }
        T::List(element) | T::Set(element) => {
            let mut children: Vec<Option<&CqlValue>> = Vec::new();
            let mut lengths = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    None => lengths.push(0),
                    Some(V::List(items) | V::Set(items)) => {
                        lengths.push(items.len());
                        children.extend(items.iter().map(Some));
                    }
                    Some(other) => return Err(mismatch(ty, other)),
                }
            }
            let child = to_array(element, &children)?;
            Arc::new(
                ListArray::try_new(
                    element_field(ty)?,
                    OffsetBuffer::from_lengths(lengths),
                    child,
                    nulls(values),
                )
                .map_err(|error| Error::Internal(format!("build list array: {error}")))?,
            )
        }
        T::Map(key_ty, value_ty) => {
            let mut keys: Vec<Option<&CqlValue>> = Vec::new();
            let mut entry_values: Vec<Option<&CqlValue>> = Vec::new();
            let mut lengths = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    None => lengths.push(0),
                    Some(V::Map(entries)) => {
                        lengths.push(entries.len());
                        for (key, entry_value) in entries {
                            keys.push(Some(key));
                            entry_values.push(Some(entry_value));
                        }
                    }
                    Some(other) => return Err(mismatch(ty, other)),
                }
            }
            let entries_field = element_field(ty)?;
            let DataType::Struct(entry_fields) = entries_field.data_type().clone() else {
                return Err(Error::Internal("map entries are not a struct".into()));
            };
            let entries = StructArray::try_new(
                entry_fields,
                vec![to_array(key_ty, &keys)?, to_array(value_ty, &entry_values)?],
                None,
            )
            .map_err(|error| Error::Internal(format!("build map entries: {error}")))?;
            Arc::new(
                MapArray::try_new(
                    entries_field,
                    OffsetBuffer::from_lengths(lengths),
                    entries,
                    nulls(values),
                    false,
                )
                .map_err(|error| Error::Internal(format!("build map array: {error}")))?,
            )
        }
        T::Tuple(_) | T::Udt(_) => {
            let fields = struct_fields(ty)?;
            let field_types: Vec<&CqlType> = match unfrozen(ty) {
                T::Tuple(types) => types.iter().collect(),
                T::Udt(udt) => udt.fields.iter().map(|(_, ty)| ty).collect(),
                _ => Vec::new(),
            };
            let mut columns: Vec<Vec<Option<&CqlValue>>> =
                vec![Vec::with_capacity(values.len()); field_types.len()];
            for value in values {
                match value {
                    None => columns.iter_mut().for_each(|column| column.push(None)),
                    Some(V::Tuple(items) | V::Udt(items)) => {
                        for (field_idx, column) in columns.iter_mut().enumerate() {
                            column.push(items.get(field_idx).and_then(Option::as_ref));
                        }
                    }
                    Some(other) => return Err(mismatch(ty, other)),
                }
            }
            let arrays = field_types
                .iter()
                .zip(&columns)
                .map(|(ty, column)| to_array(ty, column))
                .collect::<Result<Vec<_>>>()?;
            if arrays.is_empty() {
                Arc::new(StructArray::new_empty_fields(values.len(), nulls(values)))
            } else {
                Arc::new(
                    StructArray::try_new(fields, arrays, nulls(values))
                        .map_err(|error| Error::Internal(format!("build struct: {error}")))?,
                )
            }
        }
        T::Counter => return Err(Error::UnsupportedType("counter".into())),
        T::Frozen(_) => return Err(Error::Internal("frozen survived unfreezing".into())),
    })
}

fn nulls(values: &[Option<&CqlValue>]) -> Option<NullBuffer> {
    values
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(values.iter().map(Option::is_some)))
}

fn date32(days: u32) -> i32 {
    // Exact: u32 minus 2^31 spans the i32 range.
    (i64::from(days) - DATE_EPOCH_OFFSET_DAYS) as i32
}

/// Rescales `decimal` to `scale` exactly, or fails.
fn rescale(decimal: &Decimal, scale: i8) -> Result<i128> {
    let out_of_range = |reason: &str| Error::ValueOutOfRange {
        value: format!("{}E{}", decimal.unscaled, -i64::from(decimal.scale)),
        reason: reason.to_owned(),
    };
    let shift = i64::from(scale) - i64::from(decimal.scale);
    let ten = BigInt::from(10);
    let unscaled = if shift >= 0 {
        if shift > i64::from(DECIMAL_PRECISION) && decimal.unscaled != BigInt::ZERO {
            return Err(out_of_range("exceeds 38 digits"));
        }
        let shift = u32::try_from(shift.min(64)).map_err(|_| out_of_range("scale"))?;
        &decimal.unscaled * ten.pow(shift)
    } else if decimal.unscaled == BigInt::ZERO {
        BigInt::ZERO
    } else {
        // 10^k > 2^k > |unscaled| once k exceeds its bit length: digits would
        // be lost, and computing 10^k for a huge scale would never finish.
        let digits_dropped = u64::try_from(-shift).map_err(|_| out_of_range("scale"))?;
        if digits_dropped > decimal.unscaled.bits() {
            return Err(out_of_range(&format!(
                "has more than {scale} fractional digits (Decimal128(38, {scale}))"
            )));
        }
        let divisor = ten.pow(u32::try_from(digits_dropped).map_err(|_| out_of_range("scale"))?);
        if &decimal.unscaled % &divisor != BigInt::ZERO {
            return Err(out_of_range(&format!(
                "has more than {scale} fractional digits (Decimal128(38, {scale}))"
            )));
        }
        &decimal.unscaled / divisor
    };
    let limit = BigInt::from(10).pow(u32::from(DECIMAL_PRECISION));
    if unscaled >= limit || unscaled <= -limit {
        return Err(out_of_range(if scale == 0 {
            "varint exceeds 38 digits (Decimal128(38, 0))"
        } else {
            "exceeds 38 digits (Decimal128(38, s))"
        }));
    }
    i128::try_from(unscaled).map_err(|_| out_of_range("exceeds 38 digits"))
}

/// The canonical text of a duration: `[-]{months}mo{days}d{nanoseconds}ns`.
pub fn duration_text(duration: &CqlDuration) -> String {
    let negative = duration.months < 0 || duration.days < 0 || duration.nanoseconds < 0;
    format!(
        "{}{}mo{}d{}ns",
        if negative { "-" } else { "" },
        duration.months.unsigned_abs(),
        duration.days.unsigned_abs(),
        duration.nanoseconds.unsigned_abs()
    )
}

fn parse_duration(text: &str) -> Option<CqlDuration> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (months, rest) = rest.split_once("mo")?;
    let (days, rest) = rest.split_once('d')?;
    let nanoseconds = rest.strip_suffix("ns")?;
    let (months, days, nanoseconds): (i64, i64, i128) = (
        months.parse().ok()?,
        days.parse().ok()?,
        nanoseconds.parse().ok()?,
    );
    let sign = if negative { -1 } else { 1 };
    Some(CqlDuration {
        months: i32::try_from(sign * months).ok()?,
        days: i32::try_from(sign * days).ok()?,
        nanoseconds: i64::try_from(i128::from(sign) * nanoseconds).ok()?,
    })
}

fn downcast<'a, A: 'static>(array: &'a dyn Array, ty: &CqlType) -> Result<&'a A> {
    array.as_any().downcast_ref::<A>().ok_or_else(|| {
        Error::Internal(format!(
            "array of {} does not hold CQL type {ty}",
            array.data_type()
        ))
    })
}

/// Converts an Arrow array of [`data_type`]`(ty)` back to CQL values.
///
/// # Errors
/// `Internal` for an array of another type or text that is not canonical.
pub fn from_array(ty: &CqlType, array: &dyn Array) -> Result<Vec<Option<CqlValue>>> {
    use CqlType as T;
    use CqlValue as V;
    macro_rules! leaf {
        ($array:ty, |$item:ident| $out:expr) => {{
            let typed = downcast::<$array>(array, ty)?;
            typed
                .iter()
                .map(|item| item.map(|$item| $out))
                .collect::<Vec<_>>()
        }};
    }
    let bad_text = |text: &str| Error::Internal(format!("{text:?} is not a canonical {ty}"));
    Ok(match unfrozen(ty) {
        T::Ascii => leaf!(StringArray, |text| V::Ascii(text.to_owned())),
        T::Text => leaf!(StringArray, |text| V::Text(text.to_owned())),
        T::Inet => downcast::<StringArray>(array, ty)?
            .iter()
            .map(|item| {
                item.map(|text| text.parse().map(V::Inet).map_err(|_| bad_text(text)))
                    .transpose()
            })
            .collect::<Result<_>>()?,
        T::Duration => downcast::<StringArray>(array, ty)?
            .iter()
            .map(|item| {
                item.map(|text| {
                    parse_duration(text)
                        .map(V::Duration)
                        .ok_or_else(|| bad_text(text))
                })
                .transpose()
            })
            .collect::<Result<_>>()?,
        T::Bigint => leaf!(Int64Array, |n| V::Bigint(n)),
        T::Blob => leaf!(BinaryArray, |bytes| V::Blob(bytes.to_vec())),
        T::Boolean => leaf!(BooleanArray, |flag| V::Boolean(flag)),
        T::Date => leaf!(Date32Array, |days| V::Date(
            (i64::from(days) + DATE_EPOCH_OFFSET_DAYS) as u32
        )),
        T::Double => leaf!(Float64Array, |n| V::Double(n)),
        T::Float => leaf!(Float32Array, |n| V::Float(n)),
        T::Int => leaf!(Int32Array, |n| V::Int(n)),
        T::Smallint => leaf!(Int16Array, |n| V::Smallint(n)),
        T::Tinyint => leaf!(Int8Array, |n| V::Tinyint(n)),
        T::Time => leaf!(Time64NanosecondArray, |nanos| V::Time(nanos)),
        T::Timestamp => leaf!(TimestampMillisecondArray, |millis| V::Timestamp(millis)),
        T::Uuid | T::Timeuuid => {
            let timeuuid = matches!(unfrozen(ty), T::Timeuuid);
            downcast::<FixedSizeBinaryArray>(array, ty)?
                .iter()
                .map(|item| {
                    item.map(|bytes| {
                        let bytes: [u8; 16] = bytes
                            .try_into()
                            .map_err(|_| Error::Internal("uuid of the wrong width".into()))?;
                        Ok(if timeuuid {
                            V::Timeuuid(bytes)
                        } else {
                            V::Uuid(bytes)
                        })
                    })
                    .transpose()
                })
                .collect::<Result<_>>()?
        }
        T::Decimal => {
            let typed = downcast::<Decimal128Array>(array, ty)?;
            let scale = i32::from(typed.scale());
            typed
                .iter()
                .map(|item| {
                    item.map(|unscaled| {
                        V::Decimal(Decimal {
                            unscaled: BigInt::from(unscaled),
                            scale,
                        })
                    })
                })
                .collect()
        }
        T::Varint => leaf!(Decimal128Array, |unscaled| V::Varint(BigInt::from(
            unscaled
        ))),
        T::List(element) | T::Set(element) => {
            let list = downcast::<ListArray>(array, ty)?;
            let children = from_array(element, list.values().as_ref())?;
            let set = matches!(unfrozen(ty), T::Set(_));
            let offsets = list.value_offsets();
            (0..list.len())
                .map(|row_idx| {
                    if list.is_null(row_idx) {
                        return Ok(None);
                    }
                    let items = children[offsets[row_idx] as usize..offsets[row_idx + 1] as usize]
                        .iter()
                        .map(|item| item.clone().ok_or_else(null_element))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Some(if set { V::Set(items) } else { V::List(items) }))
                })
                .collect::<Result<_>>()?
        }
        T::Map(key_ty, value_ty) => {
            let map = downcast::<MapArray>(array, ty)?;
            let keys = from_array(key_ty, map.keys().as_ref())?;
            let values = from_array(value_ty, map.values().as_ref())?;
            let offsets = map.value_offsets();
            (0..map.len())
                .map(|row_idx| {
                    if map.is_null(row_idx) {
                        return Ok(None);
                    }
                    let range = offsets[row_idx] as usize..offsets[row_idx + 1] as usize;
                    let entries = keys[range.clone()]
                        .iter()
                        .zip(&values[range])
                        .map(|(key, value)| match (key, value) {
                            (Some(key), Some(value)) => Ok((key.clone(), value.clone())),
                            _ => Err(null_element()),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Some(V::Map(entries)))
                })
                .collect::<Result<_>>()?
        }
        T::Tuple(_) | T::Udt(_) => {
            let structs = downcast::<StructArray>(array, ty)?;
            let field_types: Vec<&CqlType> = match unfrozen(ty) {
                T::Tuple(types) => types.iter().collect(),
                T::Udt(udt) => udt.fields.iter().map(|(_, ty)| ty).collect(),
                _ => Vec::new(),
            };
            let columns = field_types
                .iter()
                .zip(structs.columns())
                .map(|(ty, column)| from_array(ty, column.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            let tuple = matches!(unfrozen(ty), T::Tuple(_));
            (0..structs.len())
                .map(|row_idx| {
                    (!structs.is_null(row_idx)).then(|| {
                        let fields = columns.iter().map(|c| c[row_idx].clone()).collect();
                        if tuple {
                            V::Tuple(fields)
                        } else {
                            V::Udt(fields)
                        }
                    })
                })
                .collect()
        }
        T::Counter => return Err(Error::UnsupportedType("counter".into())),
        T::Frozen(_) => return Err(Error::Internal("frozen survived unfreezing".into())),
    })
}

fn null_element() -> Error {
    Error::Internal("a collection element is null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_storage::testing::strategies::{arb_type, arb_value, values_identical};
    use proptest::prelude::*;

    /// What the row store holds, as the replica must return it: decimals and
    /// varints by value at the column's scale; everything else bit for bit.
    fn expected_back(ty: &CqlType, value: &CqlValue) -> Option<CqlValue> {
        use CqlValue as V;
        Some(match (unfrozen(ty), value) {
            (CqlType::Decimal, V::Decimal(decimal)) => V::Decimal(Decimal {
                unscaled: BigInt::from(rescale(decimal, DECIMAL_SCALE_DEFAULT).ok()?),
                scale: i32::from(DECIMAL_SCALE_DEFAULT),
            }),
            (CqlType::Varint, V::Varint(number)) => {
                rescale(
                    &Decimal {
                        unscaled: number.clone(),
                        scale: 0,
                    },
                    0,
                )
                .ok()?;
                value.clone()
            }
            (CqlType::List(element), V::List(items)) => V::List(
                items
                    .iter()
                    .map(|item| expected_back(element, item))
                    .collect::<Option<_>>()?,
            ),
            (CqlType::Set(element), V::Set(items)) => V::Set(
                items
                    .iter()
                    .map(|item| expected_back(element, item))
                    .collect::<Option<_>>()?,
            ),
            (CqlType::Map(key_ty, value_ty), V::Map(entries)) => V::Map(
                entries
                    .iter()
                    .map(|(k, v)| Some((expected_back(key_ty, k)?, expected_back(value_ty, v)?)))
                    .collect::<Option<_>>()?,
            ),
            (CqlType::Tuple(types), V::Tuple(fields)) => V::Tuple(
                types
                    .iter()
                    .zip(fields)
                    .map(|(ty, field)| match field {
                        None => Some(None),
                        Some(field) => expected_back(ty, field).map(Some),
                    })
                    .collect::<Option<_>>()?,
            ),
            (CqlType::Udt(udt), V::Udt(fields)) => V::Udt(
                udt.fields
                    .iter()
                    .enumerate()
                    .map(|(idx, (_, ty))| match fields.get(idx) {
                        None | Some(None) => Some(None),
                        Some(Some(field)) => expected_back(ty, field).map(Some),
                    })
                    .collect::<Option<_>>()?,
            ),
            _ => value.clone(),
        })
    }

    fn arb_column() -> impl Strategy<Value = (CqlType, Vec<Option<CqlValue>>)> {
        arb_type()
            .prop_filter("counters are refused", |ty| !matches!(ty, CqlType::Counter))
            .prop_flat_map(|ty| {
                let values = prop::collection::vec(prop::option::of(arb_value(&ty)), 0..4);
                (Just(ty), values)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn every_type_round_trips((ty, values) in arb_column()) {
            let refs: Vec<Option<&CqlValue>> = values.iter().map(Option::as_ref).collect();
            let expected: Option<Vec<Option<CqlValue>>> = values
                .iter()
                .map(|value| match value {
                    None => Some(None),
                    Some(value) => expected_back(&ty, value).map(Some),
                })
                .collect();
            match (to_array(&ty, &refs), expected) {
                (Ok(array), Some(expected)) => {
                    prop_assert_eq!(array.data_type(), &data_type(&ty).expect("type"));
                    let back = from_array(&ty, array.as_ref()).expect("back");
                    prop_assert_eq!(back.len(), expected.len());
                    for (back, expected) in back.iter().zip(&expected) {
                        let same = match (back, expected) {
                            (None, None) => true,
                            (Some(back), Some(expected)) => values_identical(back, expected),
                            _ => false,
                        };
                        prop_assert!(same, "{ty}: {back:?} != {expected:?}");
                    }
                }
                // A value that does not fit Decimal128(38, s) is a clear error, never rounded.
                (Err(Error::ValueOutOfRange { .. }), None) => {}
                (actual, expected) => {
                    prop_assert!(false, "{ty}: {actual:?} but expected {expected:?}");
                }
            }
        }
    }

    #[test]
    fn mapping_matches_the_design_table() {
        use CqlType as T;
        let uuid = field("id", &T::Uuid, false).expect("field");
        assert_eq!(uuid.data_type(), &DataType::FixedSizeBinary(16));
        assert_eq!(
            uuid.metadata().get(EXTENSION_NAME_KEY).map(String::as_str),
            Some("arrow.uuid")
        );
        let cases = [
            (T::Timestamp, "Timestamp(ms, \"UTC\")"),
            (T::Date, "Date32"),
            (T::Time, "Time64(ns)"),
            (T::Decimal, "Decimal128(38, 10)"),
            (T::Varint, "Decimal128(38, 0)"),
            (T::Inet, "Utf8"),
            (T::Duration, "Utf8"),
            (T::Map(Box::new(T::Int), Box::new(T::Text)), "Map"),
        ];
        for (ty, expected) in cases {
            let actual = data_type(&ty).expect("type").to_string();
            assert!(actual.starts_with(expected), "{ty}: {actual}");
        }
        assert!(matches!(
            data_type(&T::Counter),
            Err(Error::UnsupportedType(_))
        ));
    }

    #[test]
    fn out_of_range_values_fail_clearly() {
        let big = CqlValue::Varint(BigInt::from(10).pow(38));
        let error = to_array(&CqlType::Varint, &[Some(&big)]).expect_err("39 digits");
        assert!(
            error.to_string().contains("varint exceeds 38 digits"),
            "{error}"
        );
        let fine = CqlValue::Varint(BigInt::from(10).pow(38) - 1);
        assert!(to_array(&CqlType::Varint, &[Some(&fine)]).is_ok());
        let too_precise = CqlValue::Decimal(Decimal {
            unscaled: BigInt::from(1),
            scale: 11,
        });
        let error = to_array(&CqlType::Decimal, &[Some(&too_precise)]).expect_err("scale 11");
        assert!(error.to_string().contains("fractional digits"), "{error}");
        let duration = CqlDuration {
            months: -1,
            days: -2,
            nanoseconds: -3,
        };
        assert_eq!(duration_text(&duration), "-1mo2d3ns");
        assert_eq!(parse_duration("-1mo2d3ns"), Some(duration));
    }
}
