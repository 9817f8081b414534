//! CQL types: every type Cassandra 5 defines except counters (recognised,
//! refused with a clear error).
//!
//! A type is a tree. Collections, tuples and user-defined types may be
//! *frozen* (stored as one opaque value) or *multi-cell* (each element a cell
//! of its own, updatable individually). Tuples are always frozen, as in
//! Cassandra; collections nested inside collections must be frozen.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

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
        matches!(
            self,
            CqlType::List(_) | CqlType::Set(_) | CqlType::Map(..) | CqlType::Udt(_)
        )
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
        if self.is_multi_cell() {
            CqlType::Frozen(Box::new(self))
        } else {
            self
        }
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

/// The deepest nesting of `<...>` the type parser accepts; deeper input is refused rather
/// than risking the stack.
pub const TYPE_NESTING_DEPTH_MAX: usize = 32;

impl CqlType {
    /// Parses a type as CQL writes it: `int`, `varchar`, `map<text, frozen<list<int>>>`,
    /// `tuple<int, text>`, `frozen<address>`. Names are case-insensitive; any other name is a
    /// user-defined type, looked up with `resolve_udt` (lowercased unless double-quoted;
    /// `ks.name` is passed as written, each part normalised).
    ///
    /// Cassandra's rules apply: collections and UDTs inside collections must be frozen,
    /// everything inside `frozen<>` or a tuple is frozen, `frozen<>` only wraps collections,
    /// tuples and UDTs, counters are only allowed on their own, and durations cannot be set
    /// elements or map keys. `counter` parses to [`CqlType::Counter`].
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidType`] saying what is wrong and quoting the input.
    pub fn parse(
        text: &str,
        resolve_udt: &dyn Fn(&str) -> Option<Arc<UdtDefinition>>,
    ) -> Result<CqlType> {
        let mut parser = TypeParser {
            text,
            position: 0,
            depth: 0,
            resolve_udt,
        };
        let ty = parser.parse_type(false)?;
        parser.skip_whitespace();
        if parser.position < text.len() {
            return Err(parser.error(format!(
                "unexpected `{}` after the type",
                &text[parser.position..]
            )));
        }
        assert_eq!(parser.depth, 0);
        Ok(ty)
    }

    /// Returns true if the type is or contains `duration` (which Cassandra refuses as a set
    /// element, a map key, or in a primary key).
    pub fn references_duration(&self) -> bool {
        match self {
            CqlType::Duration => true,
            CqlType::List(inner) | CqlType::Set(inner) | CqlType::Frozen(inner) => {
                inner.references_duration()
            }
            CqlType::Map(key_type, value_type) => {
                key_type.references_duration() || value_type.references_duration()
            }
            CqlType::Tuple(field_types) => field_types.iter().any(CqlType::references_duration),
            CqlType::Udt(definition) => definition
                .fields
                .iter()
                .any(|(_, field_type)| field_type.references_duration()),
            _ => false,
        }
    }

    fn is_collection(&self) -> bool {
        matches!(
            self.unfrozen(),
            CqlType::List(_) | CqlType::Set(_) | CqlType::Map(..)
        )
    }
}

/// A recursive-descent parser over a type's text.
struct TypeParser<'a> {
    text: &'a str,
    position: usize,
    depth: usize,
    resolve_udt: &'a dyn Fn(&str) -> Option<Arc<UdtDefinition>>,
}

impl TypeParser<'_> {
    fn error(&self, reason: String) -> Error {
        const QUOTED_CHARS_MAX: usize = 60;
        let quoted: String = self.text.chars().take(QUOTED_CHARS_MAX).collect();
        let ellipsis = if quoted.len() < self.text.len() {
            "..."
        } else {
            ""
        };
        Error::InvalidType(format!("{reason} in `{quoted}{ellipsis}`"))
    }

    fn skip_whitespace(&mut self) {
        let rest = &self.text[self.position..];
        self.position += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_whitespace();
        self.text[self.position..].chars().next()
    }

    fn expect(&mut self, expected: char) -> Result<()> {
        match self.peek() {
            Some(found) if found == expected => {
                self.position += expected.len_utf8();
                Ok(())
            }
            Some(found) => Err(self.error(format!("expected `{expected}`, found `{found}`"))),
            None => Err(self.error(format!("expected `{expected}`, found the end"))),
        }
    }

    /// Reads a name: unquoted names are lowercased, `"quoted"` ones kept (with `""` as a
    /// quote), and `ks.name` is read as one name. Returns the name and whether any part was
    /// quoted.
    fn read_name(&mut self) -> Result<(String, bool)> {
        let mut name = String::new();
        let mut quoted_any = false;
        loop {
            match self.peek() {
                Some('"') => {
                    quoted_any = true;
                    self.position += 1;
                    loop {
                        let mut chars = self.text[self.position..].chars();
                        match (chars.next(), chars.next()) {
                            (Some('"'), Some('"')) => {
                                name.push('"');
                                self.position += 2;
                            }
                            (Some('"'), _) => {
                                self.position += 1;
                                break;
                            }
                            (Some(character), _) => {
                                name.push(character);
                                self.position += character.len_utf8();
                            }
                            (None, _) => {
                                return Err(self.error("unterminated quoted name".to_string()));
                            }
                        }
                    }
                }
                Some(character) if character.is_ascii_alphabetic() || character == '_' => {
                    let rest = &self.text[self.position..];
                    let n_bytes = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    name.push_str(&rest[..n_bytes].to_ascii_lowercase());
                    self.position += n_bytes;
                }
                Some(found) => return Err(self.error(format!("expected a type, found `{found}`"))),
                None => return Err(self.error("expected a type, found the end".to_string())),
            }
            if self.text[self.position..].starts_with('.') {
                name.push('.');
                self.position += 1;
            } else {
                return Ok((name, quoted_any));
            }
        }
    }

    /// Parses one type. `frozen_context` is true inside `frozen<>` and tuples, where
    /// collections and UDTs are frozen.
    fn parse_type(&mut self, frozen_context: bool) -> Result<CqlType> {
        let (name, quoted) = self.read_name()?;
        if !quoted {
            if let Some(native) = native_type(&name) {
                return Ok(native);
            }
            match name.as_str() {
                "list" | "set" | "map" | "tuple" | "frozen" => {
                    return self.parse_parameterized(&name, frozen_context);
                }
                "vector" => return Err(self.error("vector types are not supported".to_string())),
                _ => {}
            }
        }
        let Some(definition) = (self.resolve_udt)(&name) else {
            return Err(self.error(format!("unknown type `{name}`")));
        };
        let udt = CqlType::Udt(definition);
        Ok(if frozen_context { udt.frozen() } else { udt })
    }

    fn parse_parameterized(&mut self, name: &str, frozen_context: bool) -> Result<CqlType> {
        self.expect('<')?;
        self.depth += 1;
        if self.depth > TYPE_NESTING_DEPTH_MAX {
            return Err(self.error(format!("types nest deeper than {TYPE_NESTING_DEPTH_MAX}")));
        }
        let ty = match name {
            "list" | "set" => {
                let element_type = self.parse_element(frozen_context, name)?;
                if name == "set" && element_type.references_duration() {
                    return Err(self.error("durations are not allowed inside sets".to_string()));
                }
                let element_type = Box::new(element_type);
                if name == "list" {
                    CqlType::List(element_type)
                } else {
                    CqlType::Set(element_type)
                }
            }
            "map" => {
                let key_type = self.parse_element(frozen_context, "map")?;
                if key_type.references_duration() {
                    return Err(self.error("durations are not allowed as map keys".to_string()));
                }
                self.expect(',')?;
                let value_type = self.parse_element(frozen_context, "map")?;
                CqlType::Map(Box::new(key_type), Box::new(value_type))
            }
            "tuple" => {
                let mut field_types = vec![self.parse_tuple_field()?];
                while self.peek() == Some(',') {
                    self.position += 1;
                    field_types.push(self.parse_tuple_field()?);
                }
                CqlType::Tuple(field_types)
            }
            _ => {
                assert_eq!(name, "frozen");
                let inner = self.parse_type(true)?;
                if !matches!(inner, CqlType::Frozen(_) | CqlType::Tuple(_)) {
                    return Err(self.error(format!(
                        "frozen<> only applies to collections, tuples and user-defined types, \
                         not {inner}"
                    )));
                }
                inner
            }
        };
        self.expect('>')?;
        self.depth -= 1;
        Ok(if frozen_context { ty.frozen() } else { ty })
    }

    /// Parses a collection's element (or key, or value) type and checks it may be one.
    fn parse_element(&mut self, frozen_context: bool, collection: &str) -> Result<CqlType> {
        let element_type = self.parse_type(frozen_context)?;
        if element_type == CqlType::Counter {
            return Err(self.error("counters are not allowed inside collections".to_string()));
        }
        if element_type.is_multi_cell() {
            let what = if element_type.is_collection() {
                "collections"
            } else {
                "udts"
            };
            return Err(self.error(format!(
                "non-frozen {what} are not allowed inside collections: use \
                 {collection}<frozen<{element_type}>>"
            )));
        }
        Ok(element_type)
    }

    fn parse_tuple_field(&mut self) -> Result<CqlType> {
        let field_type = self.parse_type(true)?;
        if field_type == CqlType::Counter {
            return Err(self.error("counters are not allowed inside tuples".to_string()));
        }
        Ok(field_type)
    }
}

/// Returns the native type with this (lowercase) name.
fn native_type(name: &str) -> Option<CqlType> {
    let native = match name {
        "ascii" => CqlType::Ascii,
        "bigint" => CqlType::Bigint,
        "blob" => CqlType::Blob,
        "boolean" => CqlType::Boolean,
        "counter" => CqlType::Counter,
        "date" => CqlType::Date,
        "decimal" => CqlType::Decimal,
        "double" => CqlType::Double,
        "duration" => CqlType::Duration,
        "float" => CqlType::Float,
        "inet" => CqlType::Inet,
        "int" => CqlType::Int,
        "smallint" => CqlType::Smallint,
        "text" | "varchar" => CqlType::Text,
        "time" => CqlType::Time,
        "timestamp" => CqlType::Timestamp,
        "timeuuid" => CqlType::Timeuuid,
        "tinyint" => CqlType::Tinyint,
        "uuid" => CqlType::Uuid,
        "varint" => CqlType::Varint,
        _ => return None,
    };
    Some(native)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;
    use crate::testing::strategies::arb_type;

    fn address_type() -> Arc<UdtDefinition> {
        Arc::new(UdtDefinition {
            keyspace: "ks".into(),
            name: "address".into(),
            fields: vec![
                ("street".into(), CqlType::Text),
                ("zip".into(), CqlType::Int),
            ],
        })
    }

    fn resolve_address(name: &str) -> Option<Arc<UdtDefinition>> {
        (name == "address" || name == "ks.address" || name == "Address").then(address_type)
    }

    /// Parses, then shows the type's `Display` and its structure (or the error).
    fn check(text: &str, expected: Expect) {
        let shown = match CqlType::parse(text, &resolve_address) {
            Ok(ty) => format!("{ty}  {}", structure(&ty)),
            Err(error) => error.to_string(),
        };
        expected.assert_eq(&shown);
    }

    /// A compact form of the type tree: `F(...)` for frozen, UDTs by name.
    fn structure(ty: &CqlType) -> String {
        match ty {
            CqlType::List(element) => format!("List({})", structure(element)),
            CqlType::Set(element) => format!("Set({})", structure(element)),
            CqlType::Map(key, value) => format!("Map({}, {})", structure(key), structure(value)),
            CqlType::Tuple(fields) => {
                let fields: Vec<String> = fields.iter().map(structure).collect();
                format!("Tuple({})", fields.join(", "))
            }
            CqlType::Udt(definition) => format!("Udt({})", definition.name),
            CqlType::Frozen(inner) => format!("F({})", structure(inner)),
            native => format!("{native:?}"),
        }
    }

    #[test]
    fn parses_cql_types() {
        check("int", expect!["int  Int"]);
        check("  VarChar ", expect!["text  Text"]);
        check("counter", expect!["counter  Counter"]);
        check(
            "map<text, frozen<list<int>>>",
            expect!["map<text, frozen<list<int>>>  Map(Text, F(List(Int)))"],
        );
        check(
            "MAP<TEXT,FROZEN<LIST<INT>>>",
            expect!["map<text, frozen<list<int>>>  Map(Text, F(List(Int)))"],
        );
        check(
            "tuple<int, text, list<int>>",
            expect!["tuple<int, text, frozen<list<int>>>  Tuple(Int, Text, F(List(Int)))"],
        );
        check("frozen<tuple<int>>", expect!["tuple<int>  Tuple(Int)"]);
        check(
            "frozen<list<set<int>>>",
            expect!["frozen<list<frozen<set<int>>>>  F(List(F(Set(Int))))"],
        );
        check(
            "list<frozen<address>>",
            expect!["list<frozen<address>>  List(F(Udt(address)))"],
        );
        check("address", expect!["address  Udt(address)"]);
        check(
            "frozen<\"Address\">",
            expect!["frozen<address>  F(Udt(address))"],
        );
        check("ks.address", expect!["address  Udt(address)"]);
    }

    #[test]
    fn refuses_invalid_types() {
        check(
            "",
            expect!["invalid type: expected a type, found the end in ``"],
        );
        check(
            "integer",
            expect!["invalid type: unknown type `integer` in `integer`"],
        );
        check(
            "list<list<int>>",
            expect![
                "invalid type: non-frozen collections are not allowed inside collections: use list<frozen<list<int>>> in `list<list<int>>`"
            ],
        );
        check(
            "set<address>",
            expect![
                "invalid type: non-frozen udts are not allowed inside collections: use set<frozen<address>> in `set<address>`"
            ],
        );
        check(
            "map<int>",
            expect!["invalid type: expected `,`, found `>` in `map<int>`"],
        );
        check(
            "list<int",
            expect!["invalid type: expected `>`, found the end in `list<int`"],
        );
        check(
            "list<int>>",
            expect!["invalid type: unexpected `>` after the type in `list<int>>`"],
        );
        check(
            "frozen<int>",
            expect![
                "invalid type: frozen<> only applies to collections, tuples and user-defined types, not int in `frozen<int>`"
            ],
        );
        check(
            "list<counter>",
            expect!["invalid type: counters are not allowed inside collections in `list<counter>`"],
        );
        check(
            "tuple<counter>",
            expect!["invalid type: counters are not allowed inside tuples in `tuple<counter>`"],
        );
        check(
            "set<duration>",
            expect!["invalid type: durations are not allowed inside sets in `set<duration>`"],
        );
        check(
            "map<frozen<list<duration>>, int>",
            expect![
                "invalid type: durations are not allowed as map keys in `map<frozen<list<duration>>, int>`"
            ],
        );
        check(
            "tuple<>",
            expect!["invalid type: expected a type, found `>` in `tuple<>`"],
        );
        check(
            "vector<float, 3>",
            expect!["invalid type: vector types are not supported in `vector<float, 3>`"],
        );
        check(
            "\"unterminated",
            expect![[r#"invalid type: unterminated quoted name in `"unterminated`"#]],
        );
        check(
            &"frozen<list<".repeat(20),
            expect![
                "invalid type: types nest deeper than 32 in `frozen<list<frozen<list<frozen<list<frozen<list<frozen<list<...`"
            ],
        );
    }

    /// Collects the UDTs a type mentions, by name.
    fn collect_udts(ty: &CqlType, udts: &mut HashMap<String, Arc<UdtDefinition>>) {
        match ty {
            CqlType::List(inner) | CqlType::Set(inner) | CqlType::Frozen(inner) => {
                collect_udts(inner, udts)
            }
            CqlType::Map(key, value) => {
                collect_udts(key, udts);
                collect_udts(value, udts);
            }
            CqlType::Tuple(fields) => fields.iter().for_each(|field| collect_udts(field, udts)),
            CqlType::Udt(definition) => {
                udts.insert(definition.name.clone(), definition.clone());
                for (_, field_type) in &definition.fields {
                    collect_udts(field_type, udts);
                }
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_round_trips_display(ty in arb_type()) {
            let mut udts = HashMap::new();
            collect_udts(&ty, &mut udts);
            let resolve = |name: &str| udts.get(name).cloned();
            let text = ty.to_string();
            let parsed = CqlType::parse(&text, &resolve);
            prop_assert_eq!(parsed.as_ref(), Ok(&ty), "{}", text);
            let shouted = CqlType::parse(&text.to_uppercase(), &|name: &str| udts.get(name).cloned());
            prop_assert_eq!(shouted, Ok(ty));
        }
    }
}
