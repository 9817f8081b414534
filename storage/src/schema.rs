//! The schema: keyspaces, user-defined types and tables, with the rules
//! Cassandra applies to them, and their persisted form.
//!
//! A table's columns get stable [`ColumnId`]s and the table a stable
//! [`TableId`]; keys on disk use ids, never names, so renames and drops do not
//! rewrite data. Ids are never reused: a dropped and re-created table gets a
//! new id, so data of the old one can never reappear in the new one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::SchemaObjectKind;
use crate::types::{CqlType, UdtDefinition};
use crate::value::{ClusteringOrder, ordered};
use crate::{Error, Result};

/// The longest keyspace, table or type name (Cassandra's limit).
pub const SCHEMA_NAME_BYTES_MAX: usize = 48;
/// The longest column or field name.
pub const COLUMN_NAME_BYTES_MAX: usize = 255;
/// The most columns a table may have.
pub const COLUMNS_PER_TABLE_MAX: usize = 1_000;
/// The first id given to a table's columns; lower ids are reserved by the
/// key layout (row deletion and row marker, see [`crate::keys`]).
pub const FIRST_USER_COLUMN_ID: u16 = 2;
/// The default `gc_grace_seconds`, as in Cassandra (10 days).
pub const GC_GRACE_SECONDS_DEFAULT: u32 = 864_000;

/// A table's stable id, the first bytes of every key of its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId(pub u32);

/// A column's stable id within its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ColumnId(pub u16);

/// The role of a column in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnKind {
    PartitionKey,
    Clustering(ClusteringOrder),
    Static,
    Regular,
}

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub id: ColumnId,
    pub name: String,
    pub ty: CqlType,
    pub kind: ColumnKind,
}

/// How a keyspace is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationStrategy {
    Simple { replication_factor: u32 },
    NetworkTopology { datacenters: BTreeMap<String, u32> },
    Local,
}

/// A keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceDef {
    pub name: String,
    pub replication: ReplicationStrategy,
    pub durable_writes: bool,
}

/// Table options. Options Concord does not act on yet (compaction, caching,
/// ...) are accepted and stored so existing DDL runs unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableOptions {
    pub default_time_to_live_seconds: u32,
    pub gc_grace_seconds: u32,
    pub comment: String,
    pub compaction: BTreeMap<String, String>,
    pub other: BTreeMap<String, String>,
}

impl Default for TableOptions {
    fn default() -> TableOptions {
        TableOptions {
            default_time_to_live_seconds: 0,
            gc_grace_seconds: GC_GRACE_SECONDS_DEFAULT,
            comment: String::new(),
            compaction: BTreeMap::from([(
                "class".to_owned(),
                "SizeTieredCompactionStrategy".to_owned(),
            )]),
            other: BTreeMap::new(),
        }
    }
}

/// A table, validated: its invariants hold for every `TableDef` in a `Schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub id: TableId,
    pub keyspace: String,
    pub name: String,
    columns: Vec<ColumnDef>,
    partition_key: Vec<usize>,
    clustering: Vec<usize>,
    pub options: TableOptions,
}

impl TableDef {
    pub fn columns(&self) -> &[ColumnDef] {
        &self.columns
    }

    /// Partition key columns, in key order.
    pub fn partition_key(&self) -> impl ExactSizeIterator<Item = &ColumnDef> + '_ {
        self.partition_key.iter().map(|&idx| &self.columns[idx])
    }

    /// Clustering columns, in clustering order.
    pub fn clustering(&self) -> impl ExactSizeIterator<Item = &ColumnDef> + '_ {
        self.clustering.iter().map(|&idx| &self.columns[idx])
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|column| column.name == name)
    }

    pub fn column_by_id(&self, id: ColumnId) -> Option<&ColumnDef> {
        self.columns.iter().find(|column| column.id == id)
    }

    pub fn has_static_columns(&self) -> bool {
        self.columns
            .iter()
            .any(|column| column.kind == ColumnKind::Static)
    }

    /// Regular and static columns: those stored as cells.
    pub fn value_columns(&self) -> impl Iterator<Item = &ColumnDef> + '_ {
        self.columns
            .iter()
            .filter(|column| matches!(column.kind, ColumnKind::Static | ColumnKind::Regular))
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.keyspace, self.name)
    }
}

/// A column as `CREATE TABLE` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: CqlType,
    pub kind: ColumnKind,
}

/// What `CREATE TABLE` asks for. Partition key and clustering columns are in
/// key order as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub keyspace: String,
    pub name: String,
    pub columns: Vec<ColumnSpec>,
    pub options: TableOptions,
}

/// A keyspace with its types and tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceSchema {
    pub def: KeyspaceDef,
    /// Types in creation order, so each one's dependencies come first.
    pub types: Vec<Arc<UdtDefinition>>,
    pub tables: BTreeMap<String, Arc<TableDef>>,
}

/// Every keyspace, type and table of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    keyspaces: BTreeMap<String, KeyspaceSchema>,
    next_table_id: u32,
    /// Bumped on every change.
    pub version: u64,
}

/// Whether a statement carried `IF NOT EXISTS` / `IF EXISTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Fail if the condition does not hold.
    Strict,
    /// Do nothing if the object already exists (create) or is missing (drop).
    Lenient,
}

fn check_schema_name(kind: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= SCHEMA_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{kind} name {name:?} must be 1 to {SCHEMA_NAME_BYTES_MAX} characters of letters, digits and underscores"
        )))
    }
}

fn check_column_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > COLUMN_NAME_BYTES_MAX {
        return Err(Error::InvalidRequest(format!(
            "column name {name:?} must be 1 to {COLUMN_NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Checks a type used by a column; `in_collection` is true inside a collection.
fn check_column_type(column: &str, ty: &CqlType, in_collection: bool) -> Result<()> {
    let nested = |inner: &CqlType| check_column_type(column, inner, true);
    match ty {
        CqlType::Counter => Err(Error::Unsupported(format!("counter column {column}"))),
        CqlType::List(element) | CqlType::Set(element) => {
            if in_collection {
                return Err(Error::InvalidType(format!(
                    "column {column}: non-frozen collections are not allowed inside collections, use frozen<{ty}>"
                )));
            }
            nested(element)
        }
        CqlType::Map(key, value) => {
            if in_collection {
                return Err(Error::InvalidType(format!(
                    "column {column}: non-frozen collections are not allowed inside collections, use frozen<{ty}>"
                )));
            }
            nested(key)?;
            nested(value)
        }
        CqlType::Udt(udt) => {
            if in_collection {
                return Err(Error::InvalidType(format!(
                    "column {column}: non-frozen user types are not allowed inside collections, use frozen<{}>",
                    udt.name
                )));
            }
            Ok(())
        }
        CqlType::Tuple(fields) => fields
            .iter()
            .try_for_each(|field| check_frozen_type(column, field)),
        CqlType::Frozen(inner) => check_frozen_type(column, inner),
        _ => Ok(()),
    }
}

/// Inside `frozen<>` and tuples everything is frozen; only counters are refused.
/// Checks one field of a user type (`CREATE TYPE`, `ALTER TYPE ADD`): a valid
/// name, no counter inside, and a frozen collection or type, since a field is
/// stored as one value.
fn check_type_field(type_name: &str, field_name: &str, field_type: &CqlType) -> Result<()> {
    check_column_name(field_name)?;
    check_frozen_type(field_name, field_type)?;
    if field_type.is_multi_cell() {
        return Err(Error::InvalidType(format!(
            "field {field_name} of type {type_name}: non-frozen {field_type} is not allowed inside a user type, use frozen<{field_type}>"
        )));
    }
    Ok(())
}

fn check_frozen_type(column: &str, ty: &CqlType) -> Result<()> {
    match ty {
        CqlType::Counter => Err(Error::InvalidType(format!(
            "column {column}: counters cannot be nested in other types"
        ))),
        CqlType::List(element) | CqlType::Set(element) | CqlType::Frozen(element) => {
            check_frozen_type(column, element)
        }
        CqlType::Map(key, value) => {
            check_frozen_type(column, key)?;
            check_frozen_type(column, value)
        }
        CqlType::Tuple(fields) => fields
            .iter()
            .try_for_each(|field| check_frozen_type(column, field)),
        _ => Ok(()),
    }
}

impl Schema {
    pub fn new() -> Schema {
        Schema::default()
    }

    pub fn keyspaces(&self) -> impl Iterator<Item = &KeyspaceSchema> + '_ {
        self.keyspaces.values()
    }

    /// # Errors
    /// `UnknownKeyspace`.
    pub fn keyspace(&self, name: &str) -> Result<&KeyspaceSchema> {
        self.keyspaces
            .get(name)
            .ok_or_else(|| Error::UnknownKeyspace(name.to_owned()))
    }

    /// # Errors
    /// `UnknownKeyspace`, `UnknownTable`.
    pub fn table(&self, keyspace: &str, name: &str) -> Result<&Arc<TableDef>> {
        self.keyspace(keyspace)?
            .tables
            .get(name)
            .ok_or_else(|| Error::UnknownTable {
                keyspace: keyspace.to_owned(),
                table: name.to_owned(),
            })
    }

    pub fn table_by_id(&self, id: TableId) -> Option<&Arc<TableDef>> {
        self.keyspaces
            .values()
            .flat_map(|keyspace| keyspace.tables.values())
            .find(|t| t.id == id)
    }

    /// Looks a user-defined type up by name within a keyspace.
    pub fn user_type(&self, keyspace: &str, name: &str) -> Option<Arc<UdtDefinition>> {
        let keyspace = self.keyspaces.get(keyspace)?;
        keyspace.types.iter().find(|udt| udt.name == name).cloned()
    }

    /// Creates a keyspace. Returns false if it existed and `if_exists` is lenient.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidRequest` for a bad name or replication factor.
    pub fn create_keyspace(&mut self, def: KeyspaceDef, if_exists: IfExists) -> Result<bool> {
        check_schema_name("keyspace", &def.name)?;
        if let ReplicationStrategy::Simple {
            replication_factor: 0,
        } = def.replication
        {
            return Err(Error::InvalidRequest(
                "replication_factor must be at least 1".into(),
            ));
        }
        if self.keyspaces.contains_key(&def.name) {
            return match if_exists {
                IfExists::Lenient => Ok(false),
                IfExists::Strict => Err(Error::AlreadyExists {
                    kind: SchemaObjectKind::Keyspace,
                    name: def.name,
                }),
            };
        }
        self.keyspaces.insert(
            def.name.clone(),
            KeyspaceSchema {
                def,
                types: Vec::new(),
                tables: BTreeMap::new(),
            },
        );
        self.version += 1;
        Ok(true)
    }

    /// Drops a keyspace and returns the tables it held (their data must go).
    ///
    /// # Errors
    /// `UnknownKeyspace` unless lenient.
    pub fn drop_keyspace(&mut self, name: &str, if_exists: IfExists) -> Result<Vec<Arc<TableDef>>> {
        match self.keyspaces.remove(name) {
            Some(keyspace) => {
                self.version += 1;
                Ok(keyspace.tables.into_values().collect())
            }
            None if if_exists == IfExists::Lenient => Ok(Vec::new()),
            None => Err(Error::UnknownKeyspace(name.to_owned())),
        }
    }

    /// Replaces a keyspace's replication and `durable_writes`
    /// (`ALTER KEYSPACE`); its types and tables stay.
    ///
    /// # Errors
    /// `UnknownKeyspace`; `InvalidRequest` for a replication factor of 0.
    pub fn alter_keyspace(&mut self, def: KeyspaceDef) -> Result<()> {
        if let ReplicationStrategy::Simple {
            replication_factor: 0,
        } = def.replication
        {
            return Err(Error::InvalidRequest(
                "replication_factor must be at least 1".into(),
            ));
        }
        let keyspace = self
            .keyspaces
            .get_mut(&def.name)
            .ok_or_else(|| Error::UnknownKeyspace(def.name.clone()))?;
        keyspace.def = def;
        self.version += 1;
        Ok(())
    }

    /// Creates a user-defined type. Returns false if it existed and lenient.
    ///
    /// # Errors
    /// `UnknownKeyspace`, `AlreadyExists`, `InvalidRequest`, `InvalidType`.
    pub fn create_type(
        &mut self,
        keyspace_name: &str,
        name: &str,
        fields: Vec<(String, CqlType)>,
        if_exists: IfExists,
    ) -> Result<bool> {
        check_schema_name("type", name)?;
        let keyspace = self
            .keyspaces
            .get_mut(keyspace_name)
            .ok_or_else(|| Error::UnknownKeyspace(keyspace_name.to_owned()))?;
        if keyspace.types.iter().any(|udt| udt.name == name) {
            return match if_exists {
                IfExists::Lenient => Ok(false),
                IfExists::Strict => Err(Error::AlreadyExists {
                    kind: SchemaObjectKind::Type,
                    name: format!("{keyspace_name}.{name}"),
                }),
            };
        }
        if fields.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "type {name} must have at least one field"
            )));
        }
        for (field_idx, (field_name, field_type)) in fields.iter().enumerate() {
            check_type_field(name, field_name, field_type)?;
            if fields[..field_idx]
                .iter()
                .any(|(other, _)| other == field_name)
            {
                return Err(Error::InvalidRequest(format!(
                    "type {name} declares field {field_name} twice"
                )));
            }
        }
        keyspace.types.push(Arc::new(UdtDefinition {
            keyspace: keyspace_name.to_owned(),
            name: name.to_owned(),
            fields,
        }));
        self.version += 1;
        Ok(true)
    }

    /// Drops a user-defined type that no table uses.
    ///
    /// # Errors
    /// `UnknownType` unless lenient; `InvalidRequest` when a table uses it.
    /// Returns false if the type did not exist (lenient).
    pub fn drop_type(
        &mut self,
        keyspace_name: &str,
        name: &str,
        if_exists: IfExists,
    ) -> Result<bool> {
        let keyspace = self
            .keyspaces
            .get_mut(keyspace_name)
            .ok_or_else(|| Error::UnknownKeyspace(keyspace_name.to_owned()))?;
        let Some(position) = keyspace.types.iter().position(|udt| udt.name == name) else {
            return match if_exists {
                IfExists::Lenient => Ok(false),
                IfExists::Strict => Err(Error::UnknownType {
                    keyspace: keyspace_name.to_owned(),
                    name: name.to_owned(),
                }),
            };
        };
        let used_by = keyspace.tables.values().find(|table| {
            table
                .columns
                .iter()
                .any(|column| type_mentions(&column.ty, name))
        });
        if let Some(table) = used_by {
            return Err(Error::InvalidRequest(format!(
                "type {keyspace_name}.{name} is still used by table {}",
                table.qualified_name()
            )));
        }
        keyspace.types.remove(position);
        self.version += 1;
        Ok(true)
    }

    /// Changes a user-defined type (`ALTER TYPE`) and every type and table
    /// column that embeds it. Values are stored by field position, so a
    /// rename touches names only, and values written before an added field
    /// read it as null.
    ///
    /// A field cannot be added to a type used (at any depth) in a primary key
    /// column: a key's bytes hold its fields, so an old key without the field
    /// and a new key with it null would be two different keys for one value.
    ///
    /// # Errors
    /// `UnknownKeyspace`, `UnknownType`, `InvalidRequest` (unknown or
    /// duplicate field, a type in a primary key), `InvalidType`.
    pub fn alter_type(
        &mut self,
        keyspace_name: &str,
        name: &str,
        change: TypeChange,
    ) -> Result<Arc<UdtDefinition>> {
        let keyspace = self
            .keyspaces
            .get_mut(keyspace_name)
            .ok_or_else(|| Error::UnknownKeyspace(keyspace_name.to_owned()))?;
        let Some(position) = keyspace.types.iter().position(|udt| udt.name == name) else {
            return Err(Error::UnknownType {
                keyspace: keyspace_name.to_owned(),
                name: name.to_owned(),
            });
        };
        let mut definition = (*keyspace.types[position]).clone();
        let field_names = |definition: &UdtDefinition| {
            let names: Vec<&str> = definition.fields.iter().map(|(n, _)| n.as_str()).collect();
            names.join(", ")
        };
        match change {
            TypeChange::AddField(field_name, field_type) => {
                check_type_field(name, &field_name, &field_type)?;
                if definition.fields.iter().any(|(n, _)| *n == field_name) {
                    return Err(Error::InvalidRequest(format!(
                        "type {keyspace_name}.{name} already has a field {field_name}"
                    )));
                }
                if type_mentions(&field_type, name) {
                    return Err(Error::InvalidRequest(format!(
                        "field {field_name} of type {keyspace_name}.{name} cannot contain the type itself"
                    )));
                }
                let in_key = keyspace.tables.values().find_map(|table| {
                    table
                        .columns
                        .iter()
                        .find(|column| {
                            matches!(
                                column.kind,
                                ColumnKind::PartitionKey | ColumnKind::Clustering(_)
                            ) && type_mentions(&column.ty, name)
                        })
                        .map(|column| (table.qualified_name(), column.name.clone()))
                });
                if let Some((table, column)) = in_key {
                    return Err(Error::InvalidRequest(format!(
                        "cannot add a field to type {keyspace_name}.{name}: primary key column {column} of {table} uses it, and keys written before would differ from equal keys written after"
                    )));
                }
                definition.fields.push((field_name, field_type));
            }
            TypeChange::RenameFields(renames) => {
                for (from, to) in renames {
                    check_column_name(&to)?;
                    let Some(field_idx) = definition.fields.iter().position(|(n, _)| *n == from)
                    else {
                        return Err(Error::InvalidRequest(format!(
                            "type {keyspace_name}.{name} has no field {from}; its fields are: {}",
                            field_names(&definition)
                        )));
                    };
                    if definition.fields.iter().any(|(n, _)| *n == to) {
                        return Err(Error::InvalidRequest(format!(
                            "cannot rename field {from} to {to}: type {keyspace_name}.{name} already has a field {to}"
                        )));
                    }
                    definition.fields[field_idx].0 = to;
                }
            }
        }
        let altered = Arc::new(definition);
        // Types are kept in dependency order; rewrite every type that embeds
        // the altered one (they come after it), then every table column.
        let mut replaced: BTreeMap<String, Arc<UdtDefinition>> = BTreeMap::new();
        replaced.insert(name.to_owned(), altered.clone());
        for udt in &mut keyspace.types {
            if udt.name == name {
                *udt = altered.clone();
            } else if replaced.keys().any(|other| type_mentions_udt(udt, other)) {
                let mut rewritten = (**udt).clone();
                for (_, field_type) in &mut rewritten.fields {
                    *field_type = replace_udts(field_type, &replaced);
                }
                let rewritten = Arc::new(rewritten);
                replaced.insert(rewritten.name.clone(), rewritten.clone());
                *udt = rewritten;
            }
        }
        // The added field may name a type created after this one.
        keyspace.types = order_by_dependency(std::mem::take(&mut keyspace.types));
        for table in keyspace.tables.values_mut() {
            if table
                .columns
                .iter()
                .any(|column| type_mentions(&column.ty, name))
            {
                let mut rewritten = (**table).clone();
                for column in &mut rewritten.columns {
                    column.ty = replace_udts(&column.ty, &replaced);
                }
                *table = Arc::new(rewritten);
            }
        }
        self.version += 1;
        Ok(altered)
    }

    /// Creates a table. Returns `None` if it existed and lenient.
    ///
    /// # Errors
    /// `UnknownKeyspace`, `AlreadyExists`, `InvalidRequest` (no partition key,
    /// duplicate column, static without clustering, ...), `InvalidType`,
    /// `Unsupported` (counters).
    pub fn create_table(
        &mut self,
        spec: TableSpec,
        if_exists: IfExists,
    ) -> Result<Option<Arc<TableDef>>> {
        check_schema_name("table", &spec.name)?;
        let keyspace = self.keyspace(&spec.keyspace)?;
        if keyspace.tables.contains_key(&spec.name) {
            return match if_exists {
                IfExists::Lenient => Ok(None),
                IfExists::Strict => Err(Error::AlreadyExists {
                    kind: SchemaObjectKind::Table,
                    name: format!("{}.{}", spec.keyspace, spec.name),
                }),
            };
        }
        if spec.columns.len() > COLUMNS_PER_TABLE_MAX {
            return Err(Error::InvalidRequest(format!(
                "table {} has {} columns, over the limit COLUMNS_PER_TABLE_MAX = {COLUMNS_PER_TABLE_MAX}",
                spec.name,
                spec.columns.len()
            )));
        }
        let mut columns = Vec::with_capacity(spec.columns.len());
        for (column_idx, column) in spec.columns.into_iter().enumerate() {
            check_column_name(&column.name)?;
            if columns
                .iter()
                .any(|existing: &ColumnDef| existing.name == column.name)
            {
                return Err(Error::InvalidRequest(format!(
                    "column {} is declared twice",
                    column.name
                )));
            }
            check_column_type(&column.name, &column.ty, false)?;
            let in_primary_key = matches!(
                column.kind,
                ColumnKind::PartitionKey | ColumnKind::Clustering(_)
            );
            if in_primary_key && !ordered::is_orderable(&column.ty) {
                return Err(Error::InvalidType(format!(
                    "column {} of type {} cannot be part of the primary key{}",
                    column.name,
                    column.ty,
                    if column.ty.is_multi_cell() {
                        ", use a frozen type"
                    } else {
                        ""
                    }
                )));
            }
            let id = u16::try_from(column_idx)
                .ok()
                .and_then(|idx| idx.checked_add(FIRST_USER_COLUMN_ID))
                .ok_or_else(|| Error::Internal("column id overflow".into()))?;
            columns.push(ColumnDef {
                id: ColumnId(id),
                name: column.name,
                ty: column.ty,
                kind: column.kind,
            });
        }
        let partition_key: Vec<usize> = (0..columns.len())
            .filter(|&idx| columns[idx].kind == ColumnKind::PartitionKey)
            .collect();
        let clustering: Vec<usize> = (0..columns.len())
            .filter(|&idx| matches!(columns[idx].kind, ColumnKind::Clustering(_)))
            .collect();
        if partition_key.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "table {} has no partition key",
                spec.name
            )));
        }
        if clustering.is_empty()
            && columns
                .iter()
                .any(|column| column.kind == ColumnKind::Static)
        {
            return Err(Error::InvalidRequest(format!(
                "table {} has static columns but no clustering columns",
                spec.name
            )));
        }
        let id = TableId(self.next_table_id);
        self.next_table_id += 1;
        let table = Arc::new(TableDef {
            id,
            keyspace: spec.keyspace.clone(),
            name: spec.name.clone(),
            columns,
            partition_key,
            clustering,
            options: spec.options,
        });
        let keyspace = self
            .keyspaces
            .get_mut(&spec.keyspace)
            .ok_or_else(|| Error::Internal("keyspace vanished while creating a table".into()))?;
        keyspace.tables.insert(spec.name, table.clone());
        self.version += 1;
        Ok(Some(table))
    }

    /// Drops a table and returns it (its data must go).
    ///
    /// # Errors
    /// `UnknownKeyspace`, or `UnknownTable` unless lenient.
    pub fn drop_table(
        &mut self,
        keyspace: &str,
        name: &str,
        if_exists: IfExists,
    ) -> Result<Option<Arc<TableDef>>> {
        let keyspace_schema = self
            .keyspaces
            .get_mut(keyspace)
            .ok_or_else(|| Error::UnknownKeyspace(keyspace.to_owned()))?;
        match keyspace_schema.tables.remove(name) {
            Some(table) => {
                self.version += 1;
                Ok(Some(table))
            }
            None if if_exists == IfExists::Lenient => Ok(None),
            None => Err(Error::UnknownTable {
                keyspace: keyspace.to_owned(),
                table: name.to_owned(),
            }),
        }
    }

    /// Adds a regular or static column to a table (`ALTER TABLE ADD`).
    ///
    /// # Errors
    /// As `create_table` for the new column.
    pub fn add_column(
        &mut self,
        keyspace: &str,
        table: &str,
        column: ColumnSpec,
    ) -> Result<Arc<TableDef>> {
        let existing = self.table(keyspace, table)?.clone();
        check_column_name(&column.name)?;
        if existing.column(&column.name).is_some() {
            return Err(Error::InvalidRequest(format!(
                "column {} already exists in {}",
                column.name,
                existing.qualified_name()
            )));
        }
        if !matches!(column.kind, ColumnKind::Regular | ColumnKind::Static) {
            return Err(Error::InvalidRequest(
                "cannot add a primary key column".into(),
            ));
        }
        if column.kind == ColumnKind::Static && existing.clustering.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "cannot add static column {} to {}, which has no clustering columns",
                column.name,
                existing.qualified_name()
            )));
        }
        check_column_type(&column.name, &column.ty, false)?;
        if existing.columns.len() >= COLUMNS_PER_TABLE_MAX {
            return Err(Error::InvalidRequest(format!(
                "table {} would exceed COLUMNS_PER_TABLE_MAX = {COLUMNS_PER_TABLE_MAX}",
                existing.qualified_name()
            )));
        }
        // Ids are never reused, so a dropped column's cells never reappear.
        let next_id = existing
            .columns
            .iter()
            .map(|c| c.id.0)
            .max()
            .unwrap_or(FIRST_USER_COLUMN_ID);
        let id = next_id
            .checked_add(1)
            .ok_or_else(|| Error::InvalidRequest("table has run out of column ids".into()))?;
        let mut table_def = (*existing).clone();
        table_def.columns.push(ColumnDef {
            id: ColumnId(id),
            name: column.name,
            ty: column.ty,
            kind: column.kind,
        });
        self.replace_table(table_def)
    }

    /// Drops a regular or static column (`ALTER TABLE DROP`).
    ///
    /// # Errors
    /// `InvalidRequest` for a missing or primary key column.
    pub fn drop_column(
        &mut self,
        keyspace: &str,
        table: &str,
        column: &str,
    ) -> Result<Arc<TableDef>> {
        let existing = self.table(keyspace, table)?.clone();
        let Some(position) = existing.columns.iter().position(|c| c.name == column) else {
            return Err(Error::InvalidRequest(format!(
                "column {column} does not exist in {}",
                existing.qualified_name()
            )));
        };
        if !matches!(
            existing.columns[position].kind,
            ColumnKind::Regular | ColumnKind::Static
        ) {
            return Err(Error::InvalidRequest(format!(
                "cannot drop primary key column {column}"
            )));
        }
        let mut table_def = (*existing).clone();
        table_def.columns.remove(position);
        let reindex = |idx: usize| if idx > position { idx - 1 } else { idx };
        table_def.partition_key = table_def
            .partition_key
            .iter()
            .map(|&idx| reindex(idx))
            .collect();
        table_def.clustering = table_def
            .clustering
            .iter()
            .map(|&idx| reindex(idx))
            .collect();
        self.replace_table(table_def)
    }

    /// Renames primary key columns (`ALTER TABLE ... RENAME a TO b AND ...`).
    /// Cells are stored by column id, so no data moves. As in Cassandra,
    /// only primary key columns may be renamed.
    ///
    /// # Errors
    /// `InvalidRequest` for a missing, non-key or taken name.
    pub fn rename_columns(
        &mut self,
        keyspace: &str,
        table: &str,
        renames: &[(String, String)],
    ) -> Result<Arc<TableDef>> {
        let mut table_def = (**self.table(keyspace, table)?).clone();
        for (from, to) in renames {
            check_column_name(to)?;
            let Some(position) = table_def.columns.iter().position(|c| c.name == *from) else {
                return Err(Error::InvalidRequest(format!(
                    "column {from} does not exist in {}",
                    table_def.qualified_name()
                )));
            };
            if matches!(
                table_def.columns[position].kind,
                ColumnKind::Regular | ColumnKind::Static
            ) {
                return Err(Error::InvalidRequest(format!(
                    "cannot rename non primary key column {from}: only primary key columns can be renamed"
                )));
            }
            if table_def.columns.iter().any(|c| c.name == *to) {
                return Err(Error::InvalidRequest(format!(
                    "cannot rename {from} to {to}: a column {to} already exists in {}",
                    table_def.qualified_name()
                )));
            }
            table_def.columns[position].name = to.clone();
        }
        self.replace_table(table_def)
    }

    /// Replaces a table's options (`ALTER TABLE WITH`).
    ///
    /// # Errors
    /// `UnknownKeyspace`, `UnknownTable`.
    pub fn alter_table_options(
        &mut self,
        keyspace: &str,
        table: &str,
        options: TableOptions,
    ) -> Result<Arc<TableDef>> {
        let mut table_def = (**self.table(keyspace, table)?).clone();
        table_def.options = options;
        self.replace_table(table_def)
    }

    fn replace_table(&mut self, table_def: TableDef) -> Result<Arc<TableDef>> {
        let keyspace = self
            .keyspaces
            .get_mut(&table_def.keyspace)
            .ok_or_else(|| Error::UnknownKeyspace(table_def.keyspace.clone()))?;
        let table = Arc::new(table_def);
        keyspace.tables.insert(table.name.clone(), table.clone());
        self.version += 1;
        Ok(table)
    }

    /// Serializes the schema for the meta family.
    ///
    /// # Errors
    /// `Internal` if serialization fails (it cannot for these types).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let persisted = PersistedSchema {
            format: PERSISTED_SCHEMA_FORMAT,
            version: self.version,
            next_table_id: self.next_table_id,
            keyspaces: self
                .keyspaces
                .values()
                .map(|keyspace| PersistedKeyspace {
                    def: keyspace.def.clone(),
                    types: keyspace
                        .types
                        .iter()
                        .map(|udt| PersistedType {
                            name: udt.name.clone(),
                            fields: udt
                                .fields
                                .iter()
                                .map(|(n, t)| (n.clone(), t.to_string()))
                                .collect(),
                        })
                        .collect(),
                    tables: keyspace
                        .tables
                        .values()
                        .map(|table| PersistedTable {
                            id: table.id,
                            name: table.name.clone(),
                            columns: table
                                .columns
                                .iter()
                                .map(|c| PersistedColumn {
                                    id: c.id,
                                    name: c.name.clone(),
                                    ty: c.ty.to_string(),
                                    kind: c.kind,
                                })
                                .collect(),
                            partition_key: table.partition_key.clone(),
                            clustering: table.clustering.clone(),
                            options: table.options.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&persisted)
            .map_err(|error| Error::Internal(format!("serialize schema: {error}")))
    }

    /// Reads a schema written by [`Schema::to_bytes`].
    ///
    /// # Errors
    /// `Corruption` naming what did not decode.
    pub fn from_bytes(bytes: &[u8]) -> Result<Schema> {
        let persisted: PersistedSchema = serde_json::from_slice(bytes)
            .map_err(|error| Error::corruption(format!("schema does not decode: {error}")))?;
        if persisted.format != PERSISTED_SCHEMA_FORMAT {
            return Err(Error::corruption(format!(
                "schema format {} is unknown",
                persisted.format
            )));
        }
        let mut schema = Schema {
            keyspaces: BTreeMap::new(),
            next_table_id: persisted.next_table_id,
            version: persisted.version,
        };
        for keyspace in persisted.keyspaces {
            let keyspace_name = keyspace.def.name.clone();
            let mut types: Vec<Arc<UdtDefinition>> = Vec::new();
            for persisted_type in keyspace.types {
                let mut fields = Vec::new();
                for (field_name, type_text) in persisted_type.fields {
                    fields.push((field_name, parse_persisted_type(&type_text, &types)?));
                }
                types.push(Arc::new(UdtDefinition {
                    keyspace: keyspace_name.clone(),
                    name: persisted_type.name,
                    fields,
                }));
            }
            let mut tables = BTreeMap::new();
            for table in keyspace.tables {
                let mut columns = Vec::new();
                for column in table.columns {
                    columns.push(ColumnDef {
                        id: column.id,
                        name: column.name,
                        ty: parse_persisted_type(&column.ty, &types)?,
                        kind: column.kind,
                    });
                }
                let in_range = |indices: &[usize]| indices.iter().all(|&idx| idx < columns.len());
                if !in_range(&table.partition_key) || !in_range(&table.clustering) {
                    return Err(Error::corruption(format!(
                        "table {} has a key column index out of range",
                        table.name
                    )));
                }
                let table_def = TableDef {
                    id: table.id,
                    keyspace: keyspace_name.clone(),
                    name: table.name.clone(),
                    columns,
                    partition_key: table.partition_key,
                    clustering: table.clustering,
                    options: table.options,
                };
                tables.insert(table.name, Arc::new(table_def));
            }
            schema.keyspaces.insert(
                keyspace_name,
                KeyspaceSchema {
                    def: keyspace.def,
                    types,
                    tables,
                },
            );
        }
        Ok(schema)
    }
}

/// How `ALTER TYPE` changes a user-defined type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeChange {
    /// `ADD field type`: a new last field.
    AddField(String, CqlType),
    /// `RENAME a TO b AND ...`.
    RenameFields(Vec<(String, String)>),
}

fn type_mentions_udt(udt: &UdtDefinition, udt_name: &str) -> bool {
    udt.fields
        .iter()
        .any(|(_, field_type)| type_mentions(field_type, udt_name))
}

/// `ty` with every user type named in `replaced` swapped for its new
/// definition. A user type not in `replaced` embeds none of them.
fn replace_udts(ty: &CqlType, replaced: &BTreeMap<String, Arc<UdtDefinition>>) -> CqlType {
    let boxed = |inner: &CqlType| Box::new(replace_udts(inner, replaced));
    match ty {
        CqlType::Udt(udt) => match replaced.get(&udt.name) {
            Some(new_definition) => CqlType::Udt(new_definition.clone()),
            None => ty.clone(),
        },
        CqlType::List(inner) => CqlType::List(boxed(inner)),
        CqlType::Set(inner) => CqlType::Set(boxed(inner)),
        CqlType::Frozen(inner) => CqlType::Frozen(boxed(inner)),
        CqlType::Map(key, value) => CqlType::Map(boxed(key), boxed(value)),
        CqlType::Tuple(fields) => {
            CqlType::Tuple(fields.iter().map(|f| replace_udts(f, replaced)).collect())
        }
        _ => ty.clone(),
    }
}

/// Types ordered so each one's dependencies come first (the persisted form
/// resolves field types in this order), keeping creation order otherwise.
fn order_by_dependency(mut pending: Vec<Arc<UdtDefinition>>) -> Vec<Arc<UdtDefinition>> {
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|udt| {
            pending
                .iter()
                .all(|other| other.name == udt.name || !type_mentions_udt(udt, &other.name))
        });
        match ready {
            Some(position) => ordered.push(pending.remove(position)),
            None => {
                // A cycle cannot be created (ALTER TYPE refuses a type that
                // contains itself); keep the rest as it was.
                ordered.append(&mut pending);
            }
        }
    }
    ordered
}

fn type_mentions(ty: &CqlType, udt_name: &str) -> bool {
    match ty {
        CqlType::Udt(udt) => {
            udt.name == udt_name || udt.fields.iter().any(|(_, t)| type_mentions(t, udt_name))
        }
        CqlType::List(inner) | CqlType::Set(inner) | CqlType::Frozen(inner) => {
            type_mentions(inner, udt_name)
        }
        CqlType::Map(key, value) => type_mentions(key, udt_name) || type_mentions(value, udt_name),
        CqlType::Tuple(fields) => fields.iter().any(|field| type_mentions(field, udt_name)),
        _ => false,
    }
}

fn parse_persisted_type(text: &str, types: &[Arc<UdtDefinition>]) -> Result<CqlType> {
    let resolve = |name: &str| types.iter().find(|udt| udt.name == name).cloned();
    CqlType::parse(text, &resolve).map_err(|error| {
        Error::corruption(format!("persisted type {text:?} does not parse: {error}"))
    })
}

const PERSISTED_SCHEMA_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct PersistedSchema {
    format: u32,
    version: u64,
    next_table_id: u32,
    keyspaces: Vec<PersistedKeyspace>,
}

#[derive(Serialize, Deserialize)]
struct PersistedKeyspace {
    def: KeyspaceDef,
    types: Vec<PersistedType>,
    tables: Vec<PersistedTable>,
}

#[derive(Serialize, Deserialize)]
struct PersistedType {
    name: String,
    fields: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct PersistedTable {
    id: TableId,
    name: String,
    columns: Vec<PersistedColumn>,
    partition_key: Vec<usize>,
    clustering: Vec<usize>,
    options: TableOptions,
}

#[derive(Serialize, Deserialize)]
struct PersistedColumn {
    id: ColumnId,
    name: String,
    ty: String,
    kind: ColumnKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace() -> KeyspaceDef {
        KeyspaceDef {
            name: "app".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        }
    }

    fn udt(schema: &Schema, name: &str) -> Arc<UdtDefinition> {
        let keyspace = schema.keyspace("app").expect("keyspace");
        keyspace
            .types
            .iter()
            .find(|udt| udt.name == name)
            .cloned()
            .expect("type")
    }

    fn table(schema: &mut Schema, name: &str, key: CqlType, value: CqlType) {
        let column = |name: &str, ty: CqlType, kind| ColumnSpec {
            name: name.into(),
            ty,
            kind,
        };
        let spec = TableSpec {
            keyspace: "app".into(),
            name: name.into(),
            columns: vec![
                column("id", key, ColumnKind::PartitionKey),
                column("v", value, ColumnKind::Regular),
            ],
            options: TableOptions::default(),
        };
        schema
            .create_table(spec, IfExists::Strict)
            .expect("create table");
    }

    #[test]
    fn alter_type_rewrites_embedding_types_and_tables_and_persists() {
        let mut schema = Schema::new();
        schema
            .create_keyspace(keyspace(), IfExists::Strict)
            .expect("keyspace");
        let fields = vec![("street".to_owned(), CqlType::Text)];
        schema
            .create_type("app", "address", fields, IfExists::Strict)
            .expect("address");
        let frozen_address = CqlType::Frozen(Box::new(CqlType::Udt(udt(&schema, "address"))));
        let fields = vec![("home".to_owned(), frozen_address.clone())];
        schema
            .create_type("app", "person", fields, IfExists::Strict)
            .expect("person");
        let fields = vec![("code".to_owned(), CqlType::Int)];
        schema
            .create_type("app", "zip", fields, IfExists::Strict)
            .expect("zip");
        let frozen_person = CqlType::Frozen(Box::new(CqlType::Udt(udt(&schema, "person"))));
        table(
            &mut schema,
            "people",
            CqlType::Int,
            CqlType::List(Box::new(frozen_person)),
        );
        table(&mut schema, "keyed", frozen_address, CqlType::Int);

        // A type used in a primary key cannot grow.
        let zip = CqlType::Frozen(Box::new(CqlType::Udt(udt(&schema, "zip"))));
        let refused = schema.alter_type(
            "app",
            "address",
            TypeChange::AddField("zip".into(), zip.clone()),
        );
        assert!(
            matches!(&refused, Err(Error::InvalidRequest(m)) if m.contains("primary key column id of app.keyed")),
            "{refused:?}"
        );
        schema
            .drop_table("app", "keyed", IfExists::Strict)
            .expect("drop");

        let version = schema.version;
        schema
            .alter_type("app", "address", TypeChange::AddField("zip".into(), zip))
            .expect("add");
        schema
            .alter_type(
                "app",
                "address",
                TypeChange::RenameFields(vec![("street".into(), "line".into())]),
            )
            .expect("rename");
        assert_eq!(schema.version, version + 2);
        let names = |udt: &UdtDefinition| -> Vec<String> {
            udt.fields.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(&udt(&schema, "address")), ["line", "zip"]);
        // `person` embeds the new `address`; the table embeds the new `person`.
        let person = udt(&schema, "person");
        assert!(
            matches!(&person.fields[0].1, CqlType::Frozen(inner) if **inner == CqlType::Udt(udt(&schema, "address")))
        );
        let people = schema.table("app", "people").expect("table");
        let expected = CqlType::List(Box::new(CqlType::Frozen(Box::new(CqlType::Udt(person)))));
        assert_eq!(people.columns[1].ty, expected);
        // `address` now needs `zip`, created after it: the order follows.
        let order: Vec<String> = schema
            .keyspace("app")
            .expect("ks")
            .types
            .iter()
            .map(|u| u.name.clone())
            .collect();
        assert_eq!(order, ["zip", "address", "person"]);
        let reloaded = Schema::from_bytes(&schema.to_bytes().expect("bytes")).expect("reload");
        assert_eq!(reloaded, schema);

        let unknown = schema.alter_type(
            "app",
            "address",
            TypeChange::RenameFields(vec![("nope".into(), "x".into())]),
        );
        assert!(
            matches!(&unknown, Err(Error::InvalidRequest(m)) if m.contains("fields are: line, zip")),
            "{unknown:?}"
        );
        let duplicate = schema.alter_type(
            "app",
            "address",
            TypeChange::AddField("zip".into(), CqlType::Int),
        );
        assert!(matches!(duplicate, Err(Error::InvalidRequest(_))));
        let cycle = schema.alter_type(
            "app",
            "address",
            TypeChange::AddField(
                "owner".into(),
                CqlType::Frozen(Box::new(CqlType::Udt(udt(&schema, "person")))),
            ),
        );
        assert!(
            matches!(&cycle, Err(Error::InvalidRequest(m)) if m.contains("cannot contain the type itself")),
            "{cycle:?}"
        );
        let missing = schema.alter_type(
            "app",
            "nothing",
            TypeChange::AddField("x".into(), CqlType::Int),
        );
        assert!(matches!(missing, Err(Error::UnknownType { .. })));
    }
}
