//! Typed values: `concord.v1.Value` to and from `CqlValue`, checked against
//! the column's CQL type (a kind that does not fit is refused, never
//! converted silently), and the protocol's column types back to `CqlType`.

use std::net::IpAddr;
use std::sync::Arc;

use cassandra_protocol::frame::message_result::{ColType, ColTypeOption, ColTypeOptionValue};
use concord_api::v1::{self, value::Kind};
use concord_storage::types::{CqlType, UdtDefinition};
use concord_storage::value::{CqlDuration, CqlValue, Decimal};
use num_bigint::BigInt;

use crate::grpc::error::{ApiError, ApiResult};

/// The deepest nesting of collections, tuples and UDTs a value may have.
pub const VALUE_DEPTH_MAX: usize = 32;

/// Days between the protocol's date origin (2^31) and the Unix epoch.
const DATE_EPOCH: i64 = 1 << 31;

/// The CQL value of `value` for a receiver of type `ty` named `receiver`;
/// `None` for null.
///
/// # Errors
/// `INVALID_VALUE` naming the receiver when the kind does not fit the type,
/// a number is out of range, or the value fails the type's checks.
pub fn to_cql(value: &v1::Value, ty: &CqlType, receiver: &str) -> ApiResult<Option<CqlValue>> {
    let converted = convert(value, ty, receiver, 0)?;
    if let Some(converted) = &converted {
        converted
            .validate(ty)
            .map_err(|error| ApiError::value(format!("{receiver}: {error}")))?;
    }
    Ok(converted)
}

fn mismatch(kind: &Kind, ty: &CqlType, receiver: &str) -> ApiError {
    let name = match kind {
        Kind::Null(_) => "null",
        Kind::Boolean(_) => "boolean",
        Kind::Int(_) => "int",
        Kind::Double(_) => "double",
        Kind::Text(_) => "text",
        Kind::Blob(_) => "blob",
        Kind::Timestamp(_) => "timestamp",
        Kind::Date(_) => "date",
        Kind::Time(_) => "time",
        Kind::Uuid(_) => "uuid",
        Kind::Inet(_) => "inet",
        Kind::Varint(_) => "varint",
        Kind::Decimal(_) => "decimal",
        Kind::Duration(_) => "duration",
        Kind::List(_) => "list",
        Kind::Set(_) => "set",
        Kind::Map(_) => "map",
        Kind::Tuple(_) => "tuple",
        Kind::Udt(_) => "udt",
    };
    ApiError::value(format!(
        "{receiver} is of type {ty}: a {name} value does not fit it"
    ))
}

fn integer<T: TryFrom<i64>>(value: i64, ty: &CqlType, receiver: &str) -> ApiResult<T> {
    T::try_from(value)
        .map_err(|_| ApiError::value(format!("{receiver}: {value} is out of range for {ty}")))
}

fn bigint(text: &str, receiver: &str) -> ApiResult<BigInt> {
    text.trim()
        .parse::<BigInt>()
        .map_err(|_| ApiError::value(format!("{receiver}: {text:?} is not an integer")))
}

fn uuid(bytes: &[u8], receiver: &str) -> ApiResult<[u8; 16]> {
    bytes.try_into().map_err(|_| {
        ApiError::value(format!(
            "{receiver}: a uuid is 16 bytes, not {}",
            bytes.len()
        ))
    })
}

fn convert(
    value: &v1::Value,
    ty: &CqlType,
    receiver: &str,
    depth: usize,
) -> ApiResult<Option<CqlValue>> {
    if depth > VALUE_DEPTH_MAX {
        return Err(ApiError::value(format!(
            "{receiver}: values nest deeper than VALUE_DEPTH_MAX = {VALUE_DEPTH_MAX}"
        )));
    }
    let Some(kind) = &value.kind else {
        return Ok(None);
    };
    let ty = ty.unfrozen();
    let element = |value: &v1::Value, ty: &CqlType, what: &str| -> ApiResult<CqlValue> {
        convert(value, ty, &format!("{receiver} {what}"), depth + 1)?
            .ok_or_else(|| ApiError::value(format!("{receiver}: a {what} may not be null")))
    };
    let cql = match (kind, ty) {
        (Kind::Null(_), _) => return Ok(None),
        (Kind::Boolean(b), CqlType::Boolean) => CqlValue::Boolean(*b),
        (Kind::Int(i), CqlType::Tinyint) => CqlValue::Tinyint(integer(*i, ty, receiver)?),
        (Kind::Int(i), CqlType::Smallint) => CqlValue::Smallint(integer(*i, ty, receiver)?),
        (Kind::Int(i), CqlType::Int) => CqlValue::Int(integer(*i, ty, receiver)?),
        (Kind::Int(i), CqlType::Bigint | CqlType::Counter) => CqlValue::Bigint(*i),
        (Kind::Int(i), CqlType::Varint) => CqlValue::Varint(BigInt::from(*i)),
        (Kind::Int(i), CqlType::Double) => CqlValue::Double(*i as f64),
        (Kind::Int(i), CqlType::Float) => CqlValue::Float(*i as f32),
        (Kind::Int(i) | Kind::Timestamp(i), CqlType::Timestamp) => CqlValue::Timestamp(*i),
        (Kind::Double(d), CqlType::Double) => CqlValue::Double(*d),
        (Kind::Double(d), CqlType::Float) => CqlValue::Float(*d as f32),
        (Kind::Text(s), CqlType::Text) => CqlValue::Text(s.clone()),
        (Kind::Text(s), CqlType::Ascii) => CqlValue::Ascii(s.clone()),
        (Kind::Blob(b), CqlType::Blob) => CqlValue::Blob(b.clone()),
        (Kind::Date(days), CqlType::Date) => {
            CqlValue::Date(integer(days.saturating_add(DATE_EPOCH), ty, receiver)?)
        }
        (Kind::Time(nanos), CqlType::Time) => CqlValue::Time(*nanos),
        (Kind::Uuid(b), CqlType::Uuid) => CqlValue::Uuid(uuid(b, receiver)?),
        (Kind::Uuid(b), CqlType::Timeuuid) => CqlValue::Timeuuid(uuid(b, receiver)?),
        (Kind::Inet(b), CqlType::Inet) => CqlValue::Inet(match b.len() {
            4 => IpAddr::from(
                <[u8; 4]>::try_from(b.as_slice()).map_err(|_| mismatch(kind, ty, receiver))?,
            ),
            16 => IpAddr::from(
                <[u8; 16]>::try_from(b.as_slice()).map_err(|_| mismatch(kind, ty, receiver))?,
            ),
            other => {
                return Err(ApiError::value(format!(
                    "{receiver}: an inet is 4 or 16 bytes, not {other}"
                )));
            }
        }),
        (Kind::Varint(s), CqlType::Varint) => CqlValue::Varint(bigint(s, receiver)?),
        (Kind::Decimal(d), CqlType::Decimal) => CqlValue::Decimal(Decimal {
            unscaled: bigint(&d.unscaled, receiver)?,
            scale: d.scale,
        }),
        (Kind::Duration(d), CqlType::Duration) => CqlValue::Duration(CqlDuration {
            months: d.months,
            days: d.days,
            nanoseconds: d.nanoseconds,
        }),
        (Kind::List(list), CqlType::List(inner)) => CqlValue::List(
            list.values
                .iter()
                .map(|v| element(v, inner.as_ref(), "element"))
                .collect::<ApiResult<_>>()?,
        ),
        (Kind::Set(list) | Kind::List(list), CqlType::Set(inner)) => {
            let mut elements: Vec<CqlValue> = list
                .values
                .iter()
                .map(|v| element(v, inner.as_ref(), "element"))
                .collect::<ApiResult<_>>()?;
            elements.sort_by(|a, b| a.compare(b, inner.as_ref()));
            elements.dedup_by(|a, b| a.compare(b, inner.as_ref()).is_eq());
            CqlValue::Set(elements)
        }
        (Kind::Map(map), CqlType::Map(key_ty, value_ty)) => {
            let mut entries = Vec::with_capacity(map.entries.len());
            for entry in &map.entries {
                let key = element(
                    &entry.key.clone().unwrap_or_default(),
                    key_ty.as_ref(),
                    "map key",
                )?;
                let value = element(
                    &entry.value.clone().unwrap_or_default(),
                    value_ty,
                    "map value",
                )?;
                entries.push((key, value));
            }
            entries.sort_by(|a, b| a.0.compare(&b.0, key_ty.as_ref()));
            entries.dedup_by(|a, b| a.0.compare(&b.0, key_ty.as_ref()).is_eq());
            CqlValue::Map(entries)
        }
        (Kind::Tuple(list), CqlType::Tuple(types)) => {
            if list.values.len() != types.len() {
                return Err(ApiError::value(format!(
                    "{receiver} is of type {ty}: a tuple of {} fields does not fit it",
                    list.values.len()
                )));
            }
            CqlValue::Tuple(
                list.values
                    .iter()
                    .zip(types)
                    .enumerate()
                    .map(|(idx, (v, t))| {
                        convert(v, t, &format!("{receiver} field {idx}"), depth + 1)
                    })
                    .collect::<ApiResult<_>>()?,
            )
        }
        (Kind::Udt(udt), CqlType::Udt(def)) => {
            for name in udt.fields.keys() {
                if !def.fields.iter().any(|(field, _)| field == name) {
                    return Err(ApiError::value(format!(
                        "{receiver}: type {} has no field {name}",
                        def.name
                    )));
                }
            }
            CqlValue::Udt(
                def.fields
                    .iter()
                    .map(|(name, field_ty)| match udt.fields.get(name) {
                        Some(v) => convert(v, field_ty, &format!("{receiver}.{name}"), depth + 1),
                        None => Ok(None),
                    })
                    .collect::<ApiResult<_>>()?,
            )
        }
        _ => return Err(mismatch(kind, ty, receiver)),
    };
    Ok(Some(cql))
}

/// The API value of a CQL value of type `ty` (`None`: null).
pub fn from_cql(value: Option<&CqlValue>, ty: &CqlType) -> v1::Value {
    let Some(value) = value else {
        return v1::Value { kind: None };
    };
    let ty = ty.unfrozen();
    let list = |values: &[CqlValue], inner: &CqlType| v1::ValueList {
        values: values.iter().map(|v| from_cql(Some(v), inner)).collect(),
    };
    let kind = match value {
        CqlValue::Ascii(s) | CqlValue::Text(s) => Kind::Text(s.clone()),
        CqlValue::Bigint(i) => Kind::Int(*i),
        CqlValue::Blob(b) => Kind::Blob(b.clone()),
        CqlValue::Boolean(b) => Kind::Boolean(*b),
        CqlValue::Date(days) => Kind::Date(i64::from(*days) - DATE_EPOCH),
        CqlValue::Decimal(d) => Kind::Decimal(v1::Decimal {
            unscaled: d.unscaled.to_string(),
            scale: d.scale,
        }),
        CqlValue::Double(d) => Kind::Double(*d),
        CqlValue::Duration(d) => Kind::Duration(v1::Duration {
            months: d.months,
            days: d.days,
            nanoseconds: d.nanoseconds,
        }),
        CqlValue::Float(f) => Kind::Double(f64::from(*f)),
        CqlValue::Inet(IpAddr::V4(ip)) => Kind::Inet(ip.octets().to_vec()),
        CqlValue::Inet(IpAddr::V6(ip)) => Kind::Inet(ip.octets().to_vec()),
        CqlValue::Int(i) => Kind::Int(i64::from(*i)),
        CqlValue::Smallint(i) => Kind::Int(i64::from(*i)),
        CqlValue::Tinyint(i) => Kind::Int(i64::from(*i)),
        CqlValue::Time(t) => Kind::Time(*t),
        CqlValue::Timestamp(t) => Kind::Timestamp(*t),
        CqlValue::Timeuuid(u) | CqlValue::Uuid(u) => Kind::Uuid(u.to_vec()),
        CqlValue::Varint(v) => Kind::Varint(v.to_string()),
        CqlValue::List(values) => {
            let inner = match ty {
                CqlType::List(inner) => inner.as_ref(),
                other => other,
            };
            Kind::List(list(values, inner))
        }
        CqlValue::Set(values) => {
            let inner = match ty {
                CqlType::Set(inner) => inner.as_ref(),
                other => other,
            };
            Kind::Set(list(values, inner))
        }
        CqlValue::Map(entries) => {
            let (key_ty, value_ty) = match ty {
                CqlType::Map(k, v) => (k.as_ref(), v.as_ref()),
                other => (other, other),
            };
            Kind::Map(v1::ValueMap {
                entries: entries
                    .iter()
                    .map(|(k, v)| v1::MapEntry {
                        key: Some(from_cql(Some(k), key_ty)),
                        value: Some(from_cql(Some(v), value_ty)),
                    })
                    .collect(),
            })
        }
        CqlValue::Tuple(fields) => Kind::Tuple(v1::ValueList {
            values: fields
                .iter()
                .enumerate()
                .map(|(idx, v)| {
                    let field_ty = match ty {
                        CqlType::Tuple(types) => types.get(idx).unwrap_or(ty),
                        other => other,
                    };
                    from_cql(v.as_ref(), field_ty)
                })
                .collect(),
        }),
        CqlValue::Udt(fields) => {
            let mut out = std::collections::HashMap::new();
            if let CqlType::Udt(def) = ty {
                for ((name, field_ty), v) in def.fields.iter().zip(fields) {
                    out.insert(name.clone(), from_cql(v.as_ref(), field_ty));
                }
            }
            Kind::Udt(v1::UdtValue { fields: out })
        }
    };
    v1::Value { kind: Some(kind) }
}

/// The CQL type the protocol's column type describes.
///
/// # Errors
/// `INTERNAL` for a custom type (the node never sends one).
pub fn cql_type(option: &ColTypeOption) -> ApiResult<CqlType> {
    let nested = |boxed: &ColTypeOption| cql_type(boxed).map(Box::new);
    Ok(match (&option.id, &option.value) {
        (ColType::Ascii, _) => CqlType::Ascii,
        (ColType::Bigint, _) => CqlType::Bigint,
        (ColType::Blob, _) => CqlType::Blob,
        (ColType::Boolean, _) => CqlType::Boolean,
        (ColType::Counter, _) => CqlType::Counter,
        (ColType::Date, _) => CqlType::Date,
        (ColType::Decimal, _) => CqlType::Decimal,
        (ColType::Double, _) => CqlType::Double,
        (ColType::Duration, _) => CqlType::Duration,
        (ColType::Float, _) => CqlType::Float,
        (ColType::Inet, _) => CqlType::Inet,
        (ColType::Int, _) => CqlType::Int,
        (ColType::Smallint, _) => CqlType::Smallint,
        (ColType::Varchar, _) => CqlType::Text,
        (ColType::Time, _) => CqlType::Time,
        (ColType::Timestamp, _) => CqlType::Timestamp,
        (ColType::Timeuuid, _) => CqlType::Timeuuid,
        (ColType::Tinyint, _) => CqlType::Tinyint,
        (ColType::Uuid, _) => CqlType::Uuid,
        (ColType::Varint, _) => CqlType::Varint,
        (ColType::List, Some(ColTypeOptionValue::CList(inner))) => CqlType::List(nested(inner)?),
        (ColType::Set, Some(ColTypeOptionValue::CSet(inner))) => CqlType::Set(nested(inner)?),
        (ColType::Map, Some(ColTypeOptionValue::CMap(key, value))) => {
            CqlType::Map(nested(key)?, nested(value)?)
        }
        (ColType::Tuple, Some(ColTypeOptionValue::TupleType(tuple))) => {
            CqlType::Tuple(tuple.types.iter().map(cql_type).collect::<ApiResult<_>>()?)
        }
        (ColType::Udt, Some(ColTypeOptionValue::UdtType(udt))) => {
            CqlType::Udt(Arc::new(UdtDefinition {
                keyspace: udt.ks.clone(),
                name: udt.udt_name.clone(),
                fields: udt
                    .descriptions
                    .iter()
                    .map(|(name, ty)| Ok((name.clone(), cql_type(ty)?)))
                    .collect::<ApiResult<_>>()?,
            }))
        }
        (other, _) => {
            return Err(ApiError::internal(format!(
                "a result column of protocol type {other:?} has no CQL type"
            )));
        }
    })
}
