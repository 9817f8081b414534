//! Typing CQL literals and bound values against their receiver's type, the
//! protocol's column type descriptions, and the JSON forms of values
//! (`INSERT JSON`, `SELECT JSON`).
//!
//! A literal means nothing until it meets its receiver: `'2024-01-01'` is
//! text for a `text` column, a day for a `date` and a millisecond for a
//! `timestamp`. Bound values arrive serialized and are decoded with
//! `concord_storage::value::native`, which checks every length.

use std::net::IpAddr;
use std::str::FromStr;

use cassandra_protocol::frame::message_result::{
    CTuple, CUdt, ColType, ColTypeOption, ColTypeOptionValue,
};
use cassandra_protocol::types::value::Value as WireValue;
use concord_cql_parser::ast::{BindMarker, Term};
use concord_storage::types::CqlType;
use concord_storage::value::{CqlDuration, CqlValue, Decimal, native};
use num_bigint::BigInt;

use crate::cql::error::{CqlError, CqlResult, invalid};

/// A value for a receiver: set (possibly to null) or left unset (a bound
/// `UNSET`, which leaves the column as it is).
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Value(Option<CqlValue>),
    Unset,
}

/// The values bound to a statement's markers, in marker order.
#[derive(Debug, Clone, Default)]
pub struct BoundValues {
    pub values: Vec<WireValue>,
}

impl BoundValues {
    /// The value bound to `marker`, decoded as `ty`.
    ///
    /// # Errors
    /// `Invalid` when the marker has no value or the bytes do not decode.
    pub fn get(&self, marker: &BindMarker, ty: &CqlType, receiver: &str) -> CqlResult<Bound> {
        let Some(value) = self.values.get(marker.index) else {
            invalid!(
                "no value bound for marker {} ({receiver}): the statement has more markers than values",
                marker.index
            );
        };
        match value {
            WireValue::Null => Ok(Bound::Value(None)),
            WireValue::NotSet => Ok(Bound::Unset),
            WireValue::Some(bytes) => {
                let value = native::deserialize(ty, bytes).map_err(|error| {
                    CqlError::Invalid(format!("bound value for {receiver}: {error}"))
                })?;
                Ok(Bound::Value(Some(value)))
            }
        }
    }
}

/// Types `term` for a receiver of type `ty` named `receiver` (for errors).
///
/// # Errors
/// `Invalid` naming the receiver when the literal does not fit the type.
pub fn term_value(
    term: &Term,
    ty: &CqlType,
    receiver: &str,
    binds: &BoundValues,
) -> CqlResult<Bound> {
    if let Term::Bind(marker) = term {
        return binds.get(marker, ty, receiver);
    }
    let value = literal(term, ty, receiver, binds)?;
    if let Some(value) = &value {
        value
            .validate(ty)
            .map_err(|error| CqlError::Invalid(format!("{receiver}: {error}")))?;
    }
    Ok(Bound::Value(value))
}

/// Like [`term_value`], but an unset or null value is an error.
pub fn required_value(
    term: &Term,
    ty: &CqlType,
    receiver: &str,
    binds: &BoundValues,
) -> CqlResult<CqlValue> {
    match term_value(term, ty, receiver, binds)? {
        Bound::Value(Some(value)) => Ok(value),
        Bound::Value(None) => invalid!("{receiver} must not be null"),
        Bound::Unset => invalid!("{receiver} must not be unset"),
    }
}

fn nested(term: &Term, ty: &CqlType, receiver: &str, binds: &BoundValues) -> CqlResult<CqlValue> {
    match term_value(term, ty, receiver, binds)? {
        Bound::Value(Some(value)) => Ok(value),
        _ => invalid!("{receiver}: collection elements must not be null or unset"),
    }
}

fn nullable_field(
    term: &Term,
    ty: &CqlType,
    receiver: &str,
    binds: &BoundValues,
) -> CqlResult<Option<CqlValue>> {
    match term_value(term, ty, receiver, binds)? {
        Bound::Value(value) => Ok(value),
        Bound::Unset => invalid!("{receiver}: fields must not be unset"),
    }
}

fn sort_unique(mut elements: Vec<CqlValue>, ty: &CqlType) -> Vec<CqlValue> {
    elements.sort_by(|a, b| a.compare(b, ty));
    elements.dedup_by(|a, b| a.compare(b, ty).is_eq());
    elements
}

fn literal(
    term: &Term,
    ty: &CqlType,
    receiver: &str,
    binds: &BoundValues,
) -> CqlResult<Option<CqlValue>> {
    let mismatch = || {
        let article = if ty.to_string().starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        CqlError::Invalid(format!(
            "{receiver} is of type {ty}; {} is not {article} {ty} literal",
            describe_term(term)
        ))
    };
    let unfrozen = ty.unfrozen().clone();
    let value = match (term, &unfrozen) {
        (Term::Null, _) => return Ok(None),
        (Term::Function { name, args }, _) => return function(name, args, ty, receiver),
        (Term::Integer(digits), _) => integer(digits, &unfrozen).ok_or_else(mismatch)?,
        (Term::Float(digits), CqlType::Double) => {
            CqlValue::Double(parse_float(digits).ok_or_else(mismatch)?)
        }
        (Term::Float(digits), CqlType::Float) => {
            CqlValue::Float(parse_float(digits).ok_or_else(mismatch)? as f32)
        }
        (Term::Float(digits), CqlType::Decimal) => {
            CqlValue::Decimal(parse_decimal(digits).ok_or_else(mismatch)?)
        }
        (Term::Boolean(flag), CqlType::Boolean) => CqlValue::Boolean(*flag),
        (Term::String(text), CqlType::Text) => CqlValue::Text(text.clone()),
        (Term::String(text), CqlType::Ascii) => CqlValue::Ascii(text.clone()),
        (Term::String(text), CqlType::Timestamp) => {
            CqlValue::Timestamp(parse_timestamp(text).ok_or_else(|| {
                CqlError::Invalid(format!(
                    "{receiver}: '{text}' is not a timestamp (use 'yyyy-mm-dd[ hh:mm[:ss[.fff]]][+hhmm]' or milliseconds since the epoch)"
                ))
            })?)
        }
        (Term::String(text), CqlType::Date) => CqlValue::Date(parse_date(text).ok_or_else(|| {
            CqlError::Invalid(format!("{receiver}: '{text}' is not a date (use 'yyyy-mm-dd')"))
        })?),
        (Term::String(text), CqlType::Time) => CqlValue::Time(parse_time(text).ok_or_else(|| {
            CqlError::Invalid(format!(
                "{receiver}: '{text}' is not a time (use 'hh:mm:ss[.fffffffff]')"
            ))
        })?),
        (Term::String(text), CqlType::Inet) => {
            CqlValue::Inet(IpAddr::from_str(text).map_err(|_| {
                CqlError::Invalid(format!("{receiver}: '{text}' is not an IP address"))
            })?)
        }
        (Term::String(text), CqlType::Uuid | CqlType::Timeuuid) | (Term::Uuid(text), _) => {
            let bytes = parse_uuid(text).ok_or_else(mismatch)?;
            match unfrozen {
                CqlType::Uuid => CqlValue::Uuid(bytes),
                CqlType::Timeuuid => CqlValue::Timeuuid(bytes),
                _ => return Err(mismatch()),
            }
        }
        (Term::String(text) | Term::Duration(text), CqlType::Duration) => {
            CqlValue::Duration(parse_duration(text).ok_or_else(mismatch)?)
        }
        (Term::String(text), CqlType::Blob) => {
            invalid!("{receiver} is a blob; write it as 0x{} rather than '{text}'", hex(text.as_bytes()))
        }
        (Term::Blob(bytes), CqlType::Blob) => CqlValue::Blob(bytes.clone()),
        (Term::List(elements), CqlType::List(element_type)) => CqlValue::List(
            elements
                .iter()
                .map(|element| nested(element, element_type, receiver, binds))
                .collect::<CqlResult<_>>()?,
        ),
        (Term::List(elements) | Term::Set(elements), CqlType::Set(element_type)) => {
            let values = elements
                .iter()
                .map(|element| nested(element, element_type, receiver, binds))
                .collect::<CqlResult<Vec<_>>>()?;
            CqlValue::Set(sort_unique(values, element_type))
        }
        (Term::Map(entries), CqlType::Set(_)) if entries.is_empty() => CqlValue::Set(Vec::new()),
        (Term::Map(entries), CqlType::Map(key_type, value_type)) => {
            let mut pairs = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                pairs.push((
                    nested(key, key_type, receiver, binds)?,
                    nested(value, value_type, receiver, binds)?,
                ));
            }
            // The last entry for a key wins, as in Cassandra.
            pairs.reverse();
            pairs.sort_by(|a, b| a.0.compare(&b.0, key_type));
            pairs.dedup_by(|a, b| a.0.compare(&b.0, key_type).is_eq());
            CqlValue::Map(pairs)
        }
        (Term::Tuple(elements), CqlType::Tuple(types)) => {
            if elements.len() > types.len() {
                invalid!("{receiver} is a {ty} of {} fields; got {}", types.len(), elements.len());
            }
            let mut fields = Vec::with_capacity(types.len());
            for (idx, field_type) in types.iter().enumerate() {
                fields.push(match elements.get(idx) {
                    Some(element) => nullable_field(element, field_type, receiver, binds)?,
                    None => None,
                });
            }
            CqlValue::Tuple(fields)
        }
        (Term::Map(entries), CqlType::Udt(udt)) => {
            let mut fields = vec![None; udt.fields.len()];
            for (key, value) in entries {
                let field_name = match key {
                    Term::Identifier(name) | Term::String(name) => name,
                    _ => invalid!("{receiver}: user type fields are written {{name: value}}"),
                };
                let Some(field_idx) = udt.fields.iter().position(|(name, _)| name == field_name)
                else {
                    invalid!("{receiver}: type {} has no field {field_name}", udt.name);
                };
                fields[field_idx] =
                    nullable_field(value, &udt.fields[field_idx].1, receiver, binds)?;
            }
            CqlValue::Udt(fields)
        }
        _ => return Err(mismatch()),
    };
    Ok(Some(value))
}

fn function(
    name: &str,
    args: &[Term],
    ty: &CqlType,
    receiver: &str,
) -> CqlResult<Option<CqlValue>> {
    let now_millis = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64)
    };
    let value = match (name, args, ty.unfrozen()) {
        ("now", [], CqlType::Timeuuid) => CqlValue::Timeuuid(new_timeuuid()),
        ("uuid", [], CqlType::Uuid) => CqlValue::Uuid(random_uuid()),
        ("currenttimestamp", [], CqlType::Timestamp) => CqlValue::Timestamp(now_millis()),
        ("totimestamp", [Term::Function { name, .. }], CqlType::Timestamp) if name == "now" => {
            CqlValue::Timestamp(now_millis())
        }
        ("currentdate", [], CqlType::Date) | ("todate", [_], CqlType::Date) => {
            CqlValue::Date((now_millis().div_euclid(86_400_000) + (1 << 31)) as u32)
        }
        _ => invalid!(
            "{receiver} is of type {ty}: function {name}() with {} arguments is not supported there",
            args.len()
        ),
    };
    Ok(Some(value))
}

fn describe_term(term: &Term) -> String {
    match term {
        Term::Integer(text) | Term::Float(text) => format!("the number {text}"),
        Term::String(text) => format!("the string '{text}'"),
        Term::Boolean(flag) => format!("{flag}"),
        Term::Uuid(uuid) => format!("the uuid {uuid}"),
        Term::Duration(text) => format!("the duration {text}"),
        Term::Blob(_) => "a blob".into(),
        Term::List(_) => "a list literal".into(),
        Term::Set(_) => "a set literal".into(),
        Term::Map(_) => "a map literal".into(),
        Term::Tuple(_) => "a tuple literal".into(),
        Term::Identifier(name) => format!("the name `{name}`"),
        Term::Reference { row, column } => format!("{row}.{column}"),
        Term::Function { name, .. } => format!("{name}()"),
        Term::Null => "null".into(),
        Term::Bind(_) => "a bind marker".into(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn integer(digits: &str, ty: &CqlType) -> Option<CqlValue> {
    Some(match ty {
        CqlType::Tinyint => CqlValue::Tinyint(digits.parse().ok()?),
        CqlType::Smallint => CqlValue::Smallint(digits.parse().ok()?),
        CqlType::Int => CqlValue::Int(digits.parse().ok()?),
        CqlType::Bigint | CqlType::Counter => CqlValue::Bigint(digits.parse().ok()?),
        CqlType::Varint => CqlValue::Varint(BigInt::from_str(digits).ok()?),
        CqlType::Decimal => CqlValue::Decimal(parse_decimal(digits)?),
        CqlType::Double => CqlValue::Double(digits.parse().ok()?),
        CqlType::Float => CqlValue::Float(digits.parse().ok()?),
        CqlType::Timestamp => CqlValue::Timestamp(digits.parse().ok()?),
        CqlType::Date => CqlValue::Date(digits.parse().ok()?),
        CqlType::Time => CqlValue::Time(digits.parse().ok()?),
        _ => return None,
    })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Parses `-12.345e-3` exactly.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(idx) => (&text[..idx], text[idx + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (integer_part, fraction_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{integer_part}{fraction_part}");
    let unscaled = BigInt::from_str(&digits).ok()?;
    let scale = i32::try_from(fraction_part.len())
        .ok()?
        .checked_sub(exponent)?;
    Some(Decimal { unscaled, scale })
}

pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex_digits: String = text.chars().filter(|c| *c != '-').collect();
    if hex_digits.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (idx, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_digits.get(idx * 2..idx * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex = hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn random_uuid() -> [u8; 16] {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// A version 1 (time-based) uuid for `now()`.
pub fn new_timeuuid() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    // 100 ns intervals since 1582-10-15.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64 / 100)
        + 0x01b2_1dd2_1381_4000;
    let ticks = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .map_or(now, |last| now.max(last + 1));
    let mut bytes: [u8; 16] = rand::random();
    let time_low = (ticks & 0xffff_ffff) as u32;
    let time_mid = ((ticks >> 32) & 0xffff) as u16;
    let time_high = (((ticks >> 48) & 0x0fff) as u16) | 0x1000;
    bytes[0..4].copy_from_slice(&time_low.to_be_bytes());
    bytes[4..6].copy_from_slice(&time_mid.to_be_bytes());
    bytes[6..8].copy_from_slice(&time_high.to_be_bytes());
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (year, month, day) for days since the epoch.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn parse_ymd(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn parse_date(text: &str) -> Option<u32> {
    let days = parse_ymd(text.trim())?;
    u32::try_from(days + (1 << 31)).ok()
}

/// `hh:mm[:ss[.f...]]` to nanoseconds since midnight.
fn parse_time(text: &str) -> Option<i64> {
    let (clock, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let mut parts = clock.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: i64 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    if parts.next().is_some() || hours > 23 || minutes > 59 || seconds > 59 || fraction.len() > 9 {
        return None;
    }
    let fraction_nanos: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + fraction_nanos)
}

/// `yyyy-mm-dd[( |T)hh:mm[:ss[.fff]]][Z|(+|-)hh[:]mm]` to milliseconds
/// since the epoch (UTC when no zone is given).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(millis) = text.parse::<i64>() {
        return Some(millis);
    }
    let date_length = text.find([' ', 'T']).unwrap_or(text.len());
    let (date, rest) = text.split_at(date_length);
    // The zone starts at the last + or - after the date, or at Z.
    let days = parse_ymd(date)?;
    let rest = rest.trim_start_matches([' ', 'T']);
    let (clock, offset_minutes) = match rest.rfind(['+', '-', 'Z']) {
        Some(idx) => {
            let zone = &rest[idx..];
            let offset = if zone == "Z" {
                0
            } else {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
                if digits.len() != 4 {
                    return None;
                }
                let hours: i64 = digits[..2].parse().ok()?;
                let minutes: i64 = digits[2..].parse().ok()?;
                sign * (hours * 60 + minutes)
            };
            (rest[..idx].trim(), offset)
        }
        None => (rest, 0),
    };
    let nanos = if clock.is_empty() {
        0
    } else {
        parse_time(clock)?
    };
    Some(days * 86_400_000 + nanos / 1_000_000 - offset_minutes * 60_000)
}

/// `1y2mo3w4d5h6m7s8ms9us10ns` (optionally negative) to a duration.
fn parse_duration(text: &str) -> Option<CqlDuration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut duration = CqlDuration {
        months: 0,
        days: 0,
        nanoseconds: 0,
    };
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let amount: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_length = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_length].to_lowercase();
        rest = &rest[unit_length..];
        let nanos_per = |n: i64| amount.checked_mul(n);
        match unit.as_str() {
            "y" => duration.months += i32::try_from(amount.checked_mul(12)?).ok()?,
            "mo" => duration.months += i32::try_from(amount).ok()?,
            "w" => duration.days += i32::try_from(amount.checked_mul(7)?).ok()?,
            "d" => duration.days += i32::try_from(amount).ok()?,
            "h" => duration.nanoseconds += nanos_per(3_600_000_000_000)?,
            "m" => duration.nanoseconds += nanos_per(60_000_000_000)?,
            "s" => duration.nanoseconds += nanos_per(1_000_000_000)?,
            "ms" => duration.nanoseconds += nanos_per(1_000_000)?,
            "us" | "µs" => duration.nanoseconds += nanos_per(1_000)?,
            "ns" => duration.nanoseconds += amount,
            _ => return None,
        }
    }
    if negative {
        duration.months = -duration.months;
        duration.days = -duration.days;
        duration.nanoseconds = -duration.nanoseconds;
    }
    Some(duration)
}

/// The protocol's description of a type, for result and bind metadata.
pub fn col_type(ty: &CqlType) -> ColTypeOption {
    let simple = |id| ColTypeOption { id, value: None };
    match ty {
        CqlType::Ascii => simple(ColType::Ascii),
        CqlType::Bigint => simple(ColType::Bigint),
        CqlType::Blob => simple(ColType::Blob),
        CqlType::Boolean => simple(ColType::Boolean),
        CqlType::Counter => simple(ColType::Counter),
        CqlType::Date => simple(ColType::Date),
        CqlType::Decimal => simple(ColType::Decimal),
        CqlType::Double => simple(ColType::Double),
        CqlType::Duration => simple(ColType::Duration),
        CqlType::Float => simple(ColType::Float),
        CqlType::Inet => simple(ColType::Inet),
        CqlType::Int => simple(ColType::Int),
        CqlType::Smallint => simple(ColType::Smallint),
        CqlType::Text => simple(ColType::Varchar),
        CqlType::Time => simple(ColType::Time),
        CqlType::Timestamp => simple(ColType::Timestamp),
        CqlType::Timeuuid => simple(ColType::Timeuuid),
        CqlType::Tinyint => simple(ColType::Tinyint),
        CqlType::Uuid => simple(ColType::Uuid),
        CqlType::Varint => simple(ColType::Varint),
        CqlType::List(element) => ColTypeOption {
            id: ColType::List,
            value: Some(ColTypeOptionValue::CList(Box::new(col_type(element)))),
        },
        CqlType::Set(element) => ColTypeOption {
            id: ColType::Set,
            value: Some(ColTypeOptionValue::CSet(Box::new(col_type(element)))),
        },
        CqlType::Map(key, value) => ColTypeOption {
            id: ColType::Map,
            value: Some(ColTypeOptionValue::CMap(
                Box::new(col_type(key)),
                Box::new(col_type(value)),
            )),
        },
        CqlType::Tuple(fields) => ColTypeOption {
            id: ColType::Tuple,
            value: Some(ColTypeOptionValue::TupleType(CTuple {
                types: fields.iter().map(col_type).collect(),
            })),
        },
        CqlType::Udt(udt) => ColTypeOption {
            id: ColType::Udt,
            value: Some(ColTypeOptionValue::UdtType(CUdt {
                ks: udt.keyspace.clone(),
                udt_name: udt.name.clone(),
                descriptions: udt
                    .fields
                    .iter()
                    .map(|(name, ty)| (name.clone(), col_type(ty)))
                    .collect(),
            })),
        },
        CqlType::Frozen(inner) => col_type(inner),
    }
}

/// The JSON form of a value, as Cassandra's `toJson` writes it.
pub fn to_json(value: &CqlValue, ty: &CqlType) -> serde_json::Value {
    use serde_json::Value as J;
    let ty = ty.unfrozen();
    match (value, ty) {
        (CqlValue::Ascii(text) | CqlValue::Text(text), _) => J::String(text.clone()),
        (CqlValue::Bigint(n), _) => J::from(*n),
        (CqlValue::Int(n), _) => J::from(*n),
        (CqlValue::Smallint(n), _) => J::from(*n),
        (CqlValue::Tinyint(n), _) => J::from(*n),
        (CqlValue::Boolean(flag), _) => J::Bool(*flag),
        (CqlValue::Double(n), _) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        (CqlValue::Float(n), _) => {
            serde_json::Number::from_f64(f64::from(*n)).map_or(J::Null, J::Number)
        }
        (CqlValue::Varint(n), _) => {
            serde_json::from_str(&n.to_string()).unwrap_or_else(|_| J::String(n.to_string()))
        }
        (CqlValue::Decimal(n), _) => {
            serde_json::from_str(&n.to_string()).unwrap_or_else(|_| J::String(n.to_string()))
        }
        (CqlValue::List(elements), CqlType::List(element_type))
        | (CqlValue::Set(elements), CqlType::Set(element_type)) => J::Array(
            elements
                .iter()
                .map(|element| to_json(element, element_type))
                .collect(),
        ),
        (CqlValue::Map(entries), CqlType::Map(key_type, value_type)) => J::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match to_json(key, key_type) {
                        J::String(text) => text,
                        other => other.to_string(),
                    };
                    (key, to_json(value, value_type))
                })
                .collect(),
        ),
        (CqlValue::Tuple(fields), CqlType::Tuple(types)) => J::Array(
            fields
                .iter()
                .zip(types)
                .map(|(field, ty)| field.as_ref().map_or(J::Null, |field| to_json(field, ty)))
                .collect(),
        ),
        (CqlValue::Udt(fields), CqlType::Udt(udt)) => J::Object(
            udt.fields
                .iter()
                .enumerate()
                .map(|(idx, (name, ty))| {
                    let value = fields
                        .get(idx)
                        .and_then(Option::as_ref)
                        .map_or(J::Null, |field| to_json(field, ty));
                    (name.clone(), value)
                })
                .collect(),
        ),
        _ => J::String(display(value)),
    }
}

/// A value as cqlsh prints it (used for JSON strings and DESCRIBE).
pub fn display(value: &CqlValue) -> String {
    match value {
        CqlValue::Ascii(text) | CqlValue::Text(text) => text.clone(),
        CqlValue::Uuid(bytes) | CqlValue::Timeuuid(bytes) => format_uuid(bytes),
        CqlValue::Blob(bytes) => format!("0x{}", hex(bytes)),
        CqlValue::Inet(address) => address.to_string(),
        CqlValue::Timestamp(millis) => {
            let days = millis.div_euclid(86_400_000);
            let rest = millis.rem_euclid(86_400_000);
            let (year, month, day) = civil_from_days(days);
            format!(
                "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
                rest / 3_600_000,
                rest / 60_000 % 60,
                rest / 1000 % 60,
                rest % 1000
            )
        }
        CqlValue::Date(days) => {
            let (year, month, day) = civil_from_days(i64::from(*days) - (1 << 31));
            format!("{year:04}-{month:02}-{day:02}")
        }
        CqlValue::Time(nanos) => format!(
            "{:02}:{:02}:{:02}.{:09}",
            nanos / 3_600_000_000_000,
            nanos / 60_000_000_000 % 60,
            nanos / 1_000_000_000 % 60,
            nanos % 1_000_000_000
        ),
        CqlValue::Duration(duration) => {
            format!(
                "{}mo{}d{}ns",
                duration.months, duration.days, duration.nanoseconds
            )
        }
        CqlValue::Decimal(decimal) => decimal.to_string(),
        CqlValue::Varint(n) => n.to_string(),
        CqlValue::Bigint(n) => n.to_string(),
        CqlValue::Int(n) => n.to_string(),
        CqlValue::Smallint(n) => n.to_string(),
        CqlValue::Tinyint(n) => n.to_string(),
        CqlValue::Double(n) => n.to_string(),
        CqlValue::Float(n) => n.to_string(),
        CqlValue::Boolean(flag) => flag.to_string(),
        CqlValue::List(elements) => format!("[{}]", display_elements(elements)),
        CqlValue::Set(elements) => format!("{{{}}}", display_elements(elements)),
        CqlValue::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(key, value)| format!("{}: {}", display_nested(key), display_nested(value)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        CqlValue::Tuple(fields) | CqlValue::Udt(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|field| field.as_ref().map_or("null".into(), display_nested))
                .collect();
            if matches!(value, CqlValue::Tuple(_)) {
                format!("({})", fields.join(", "))
            } else {
                format!("{{{}}}", fields.join(", "))
            }
        }
    }
}

/// A value as cqlsh prints it, with user type field names from its type.
pub fn display_typed(value: &CqlValue, ty: &CqlType) -> String {
    let nested = |value: &CqlValue, ty: &CqlType| match value {
        CqlValue::Ascii(_) | CqlValue::Text(_) => display_nested(value),
        other => display_typed(other, ty),
    };
    match (value, ty.unfrozen()) {
        (CqlValue::Udt(fields), CqlType::Udt(udt)) => {
            let fields: Vec<String> = udt
                .fields
                .iter()
                .enumerate()
                .map(|(idx, (name, field_type))| {
                    let value = fields
                        .get(idx)
                        .and_then(Option::as_ref)
                        .map_or("null".into(), |field| nested(field, field_type));
                    format!("{name}: {value}")
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        (CqlValue::List(elements), CqlType::List(element_type))
        | (CqlValue::Set(elements), CqlType::Set(element_type)) => {
            let elements: Vec<String> = elements.iter().map(|e| nested(e, element_type)).collect();
            if matches!(value, CqlValue::List(_)) {
                format!("[{}]", elements.join(", "))
            } else {
                format!("{{{}}}", elements.join(", "))
            }
        }
        (CqlValue::Map(entries), CqlType::Map(key_type, value_type)) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", nested(k, key_type), nested(v, value_type)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        (CqlValue::Tuple(fields), CqlType::Tuple(types)) => {
            let fields: Vec<String> = fields
                .iter()
                .zip(types)
                .map(|(field, ty)| field.as_ref().map_or("null".into(), |f| nested(f, ty)))
                .collect();
            format!("({})", fields.join(", "))
        }
        _ => display(value),
    }
}

/// A value inside a collection: text quoted, as a CQL literal.
fn display_nested(value: &CqlValue) -> String {
    match value {
        CqlValue::Ascii(text) | CqlValue::Text(text) => format!("'{}'", text.replace('\'', "''")),
        other => display(other),
    }
}

fn display_elements(elements: &[CqlValue]) -> String {
    elements
        .iter()
        .map(display_nested)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Types a JSON value (from `INSERT JSON`) as `ty`.
///
/// # Errors
/// `Invalid` naming the column when the JSON does not fit.
pub fn from_json(
    json: &serde_json::Value,
    ty: &CqlType,
    column: &str,
) -> CqlResult<Option<CqlValue>> {
    use serde_json::Value as J;
    let none = BoundValues::default();
    let term = match (json, ty.unfrozen()) {
        (J::Null, _) => return Ok(None),
        (J::Bool(flag), _) => Term::Boolean(*flag),
        (J::Number(number), _) => {
            let text = number.to_string();
            if text.contains(['.', 'e', 'E']) {
                Term::Float(text)
            } else {
                Term::Integer(text)
            }
        }
        (J::String(text), CqlType::Blob) => {
            let digits = text.strip_prefix("0x").unwrap_or(text);
            let bytes = (0..digits.len())
                .step_by(2)
                .map(|idx| {
                    digits
                        .get(idx..idx + 2)
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    CqlError::Invalid(format!("column {column}: '{text}' is not a hex blob"))
                })?;
            Term::Blob(bytes)
        }
        (
            J::String(text),
            CqlType::Tinyint | CqlType::Smallint | CqlType::Int | CqlType::Bigint | CqlType::Varint,
        ) => Term::Integer(text.clone()),
        (J::String(text), CqlType::Float | CqlType::Double | CqlType::Decimal) => {
            Term::Float(text.clone())
        }
        (J::String(text), CqlType::Boolean) => Term::Boolean(text.eq_ignore_ascii_case("true")),
        (J::String(text), _) => Term::String(text.clone()),
        (J::Array(elements), CqlType::List(element_type) | CqlType::Set(element_type)) => {
            let values = elements
                .iter()
                .map(|element| {
                    from_json(element, element_type, column)?.ok_or_else(|| {
                        CqlError::Invalid(format!("column {column}: null collection element"))
                    })
                })
                .collect::<CqlResult<Vec<_>>>()?;
            let value = if matches!(ty.unfrozen(), CqlType::Set(_)) {
                CqlValue::Set(sort_unique(values, element_type))
            } else {
                CqlValue::List(values)
            };
            return Ok(Some(value));
        }
        (J::Array(elements), CqlType::Tuple(types)) => {
            let fields = elements
                .iter()
                .zip(types)
                .map(|(element, ty)| from_json(element, ty, column))
                .collect::<CqlResult<Vec<_>>>()?;
            return Ok(Some(CqlValue::Tuple(fields)));
        }
        (J::Object(entries), CqlType::Map(key_type, value_type)) => {
            let mut pairs = Vec::new();
            for (key, value) in entries {
                let key = from_json(&J::String(key.clone()), key_type, column)?
                    .ok_or_else(|| CqlError::Invalid(format!("column {column}: null map key")))?;
                let value = from_json(value, value_type, column)?
                    .ok_or_else(|| CqlError::Invalid(format!("column {column}: null map value")))?;
                pairs.push((key, value));
            }
            pairs.sort_by(|a, b| a.0.compare(&b.0, key_type));
            return Ok(Some(CqlValue::Map(pairs)));
        }
        (J::Object(entries), CqlType::Udt(udt)) => {
            let mut fields = vec![None; udt.fields.len()];
            for (key, value) in entries {
                let Some(idx) = udt.fields.iter().position(|(name, _)| name == key) else {
                    invalid!("column {column}: type {} has no field {key}", udt.name);
                };
                fields[idx] = from_json(value, &udt.fields[idx].1, column)?;
            }
            return Ok(Some(CqlValue::Udt(fields)));
        }
        _ => invalid!("column {column} of type {ty}: JSON {json} does not fit"),
    };
    match term_value(&term, ty, &format!("column {column}"), &none)? {
        Bound::Value(value) => Ok(value),
        Bound::Unset => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_dates_and_durations_parse_like_cassandra() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(
            parse_timestamp("2024-01-01 10:00:00+0000"),
            Some(1_704_103_200_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-01T10:00:00.5Z"),
            Some(1_704_103_200_500)
        );
        assert_eq!(
            parse_timestamp("2024-01-01 12:00:00+02:00"),
            Some(1_704_103_200_000)
        );
        assert_eq!(parse_timestamp("not a date"), None);
        assert_eq!(parse_date("1970-01-02"), Some((1 << 31) + 1));
        assert_eq!(parse_time("01:00:00.5"), Some(3_600_500_000_000));
        let duration = parse_duration("1y2mo3d4h").expect("parses");
        assert_eq!((duration.months, duration.days), (14, 3));
        assert_eq!(duration.nanoseconds, 4 * 3_600_000_000_000);
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(
            display(&CqlValue::Timestamp(1_704_103_200_500)),
            "2024-01-01 10:00:00.500Z"
        );
        let decimal = parse_decimal("-12.5e1").expect("parses");
        assert_eq!(decimal.to_string(), "-125");
        assert_eq!(new_timeuuid()[6] >> 4, 1);
    }
}
