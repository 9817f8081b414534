//! DDL: `CREATE / ALTER / DROP` of keyspaces, tables and types, as one pure
//! function of the schema ([`apply_ddl`]) that both doors use:
//!
//! ```text
//!  execute_ddl ── single node ──► Db::alter_schema(apply_ddl)          here, now
//!              └─ cluster ──────► ClusterMeta::propose_ddl: apply_ddl on a copy
//!                                 (validation) ─► metadata log ─► every node:
//!                                 Db::alter_schema(apply_ddl) in log order
//! ```
//!
//! `apply_ddl` reads nothing but the schema it changes and the statement
//! (types resolve against that schema, table ids come from its counter), so
//! every node applying the same log from the same schema ends with the same
//! schema, table ids included (design/cluster.md, "Schema through the
//! metadata log").

use cassandra_protocol::frame::events::{
    SchemaChange, SchemaChangeOptions, SchemaChangeTarget, SchemaChangeType, ServerEvent,
};
use cassandra_protocol::frame::message_result::ResResultBody;
use concord_cql_parser::ast::{
    AlterTableAction, AlterTypeAction, CreateTable, Property, QualifiedName, Statement, Term,
};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, Schema, TableOptions,
    TableSpec as StorageTableSpec, TypeChange,
};
use concord_storage::types::CqlType;
use concord_storage::value::ClusteringOrder;

use crate::cql::error::{CqlError, CqlResult, already_exists, invalid};
use crate::cql::execute::Context;
use crate::cql::system;

/// Whether `statement` changes the schema (and so, in a cluster, goes
/// through the metadata log).
pub fn is_schema_change(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::CreateKeyspace(_)
            | Statement::AlterKeyspace { .. }
            | Statement::DropKeyspace { .. }
            | Statement::CreateTable(_)
            | Statement::AlterTable { .. }
            | Statement::DropTable { .. }
            | Statement::CreateType(_)
            | Statement::AlterType { .. }
            | Statement::DropType { .. }
    )
}

/// The keyspace `name` lives in: its own, else `default` (the session's).
///
/// # Errors
/// `Invalid` when neither names one.
pub fn keyspace_for(name: &QualifiedName, default: Option<&str>) -> CqlResult<String> {
    match (&name.keyspace, default) {
        (Some(keyspace), _) => Ok(keyspace.clone()),
        (None, Some(keyspace)) => Ok(keyspace.to_owned()),
        (None, None) => invalid!(
            "no keyspace for {}: qualify it (keyspace.{}) or run USE keyspace first",
            name.name,
            name.name
        ),
    }
}

fn property_text(property: &Property) -> CqlResult<String> {
    Ok(match &property.value {
        Term::String(text) | Term::Integer(text) | Term::Float(text) | Term::Identifier(text) => {
            text.clone()
        }
        Term::Boolean(flag) => flag.to_string(),
        _ => invalid!("option {} takes a string or a number", property.name),
    })
}

fn property_map(property: &Property) -> CqlResult<std::collections::BTreeMap<String, String>> {
    let Term::Map(entries) = &property.value else {
        invalid!(
            "option {} takes a map literal such as {{'class': '...'}}",
            property.name
        );
    };
    entries
        .iter()
        .map(|(key, value)| {
            let key = property_text(&Property {
                name: property.name.clone(),
                value: key.clone(),
            })?;
            let value = property_text(&Property {
                name: property.name.clone(),
                value: value.clone(),
            })?;
            Ok((key, value))
        })
        .collect()
}

fn keyspace_def(name: &str, properties: &[Property]) -> CqlResult<KeyspaceDef> {
    let mut def = KeyspaceDef {
        name: name.to_owned(),
        replication: ReplicationStrategy::Simple {
            replication_factor: 1,
        },
        durable_writes: true,
    };
    apply_keyspace_properties(&mut def, properties)?;
    Ok(def)
}

/// `WITH replication = {...} AND durable_writes = ...` over a keyspace
/// definition (CREATE starts from the defaults, ALTER from the current one).
fn apply_keyspace_properties(def: &mut KeyspaceDef, properties: &[Property]) -> CqlResult<()> {
    for property in properties {
        match property.name.as_str() {
            "replication" => {
                let mut map = property_map(property)?;
                let class = map.remove("class").unwrap_or_default();
                let class = class.rsplit('.').next().unwrap_or_default().to_owned();
                def.replication = match class.as_str() {
                    "SimpleStrategy" => {
                        let factor = map
                            .get("replication_factor")
                            .and_then(|f| f.parse().ok())
                            .ok_or_else(|| {
                                CqlError::Config(
                                    "SimpleStrategy needs a numeric 'replication_factor'".into(),
                                )
                            })?;
                        ReplicationStrategy::Simple {
                            replication_factor: factor,
                        }
                    }
                    "NetworkTopologyStrategy" => {
                        let datacenters =
                            map.into_iter()
                                .map(|(dc, factor)| {
                                    factor.parse().map(|factor| (dc.clone(), factor)).map_err(
                                        |_| {
                                            CqlError::Config(format!(
                                                "replication factor for {dc} must be a number"
                                            ))
                                        },
                                    )
                                })
                                .collect::<CqlResult<_>>()?;
                        ReplicationStrategy::NetworkTopology { datacenters }
                    }
                    "LocalStrategy" => ReplicationStrategy::Local,
                    other => {
                        return Err(CqlError::Config(format!(
                            "unknown replication class '{other}': use SimpleStrategy or NetworkTopologyStrategy"
                        )));
                    }
                };
            }
            "durable_writes" => {
                def.durable_writes = property_text(property)?.eq_ignore_ascii_case("true")
            }
            other => return Err(CqlError::Config(format!("unknown keyspace option {other}"))),
        }
    }
    Ok(())
}

fn apply_table_properties(options: &mut TableOptions, properties: &[Property]) -> CqlResult<()> {
    for property in properties {
        match property.name.as_str() {
            "default_time_to_live" => {
                options.default_time_to_live_seconds =
                    property_text(property)?.parse().map_err(|_| {
                        CqlError::Config("default_time_to_live must be a number of seconds".into())
                    })?
            }
            "gc_grace_seconds" => {
                options.gc_grace_seconds = property_text(property)?
                    .parse()
                    .map_err(|_| CqlError::Config("gc_grace_seconds must be a number".into()))?
            }
            "comment" => options.comment = property_text(property)?,
            "compaction" => {
                let mut map = property_map(property)?;
                if let Some(class) = map.get_mut("class") {
                    *class = class.rsplit('.').next().unwrap_or_default().to_owned();
                }
                options.compaction = map;
            }
            name => {
                let value = match &property.value {
                    Term::String(text) => format!("'{}'", text.replace('\'', "''")),
                    Term::Map(_) => {
                        let map = property_map(property)?;
                        let entries: Vec<String> =
                            map.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
                        format!("{{{}}}", entries.join(", "))
                    }
                    _ => property_text(property)?,
                };
                options.other.insert(name.to_owned(), value);
            }
        }
    }
    Ok(())
}

fn resolve_type(schema: &Schema, keyspace: &str, text: &str) -> CqlResult<CqlType> {
    let ty = CqlType::parse(text, &|name: &str| {
        let (ks, name) = name.split_once('.').unwrap_or((keyspace, name));
        schema.user_type(ks, name.trim_matches('"'))
    })?;
    if matches!(ty, CqlType::Counter) {
        invalid!("counter columns are not supported yet");
    }
    Ok(ty)
}

fn schema_change(
    change_type: SchemaChangeType,
    target: SchemaChangeTarget,
    keyspace: &str,
    name: Option<&str>,
) -> SchemaChange {
    let options = match name {
        Some(name) => SchemaChangeOptions::TableType(keyspace.to_owned(), name.to_owned()),
        None => SchemaChangeOptions::Keyspace(keyspace.to_owned()),
    };
    SchemaChange {
        change_type,
        target,
        options,
    }
}

fn if_exists(flag: bool) -> IfExists {
    if flag {
        IfExists::Lenient
    } else {
        IfExists::Strict
    }
}

fn create_table_spec(
    schema: &Schema,
    default_keyspace: Option<&str>,
    create: &CreateTable,
) -> CqlResult<StorageTableSpec> {
    let keyspace = keyspace_for(&create.table, default_keyspace)?;
    let mut columns = Vec::with_capacity(create.columns.len());
    for column in &create.columns {
        let kind = if let Some(position) = create
            .partition_key
            .iter()
            .position(|name| *name == column.name)
        {
            let _ = position;
            ColumnKind::PartitionKey
        } else if create.clustering.contains(&column.name) {
            let order = create
                .clustering_order
                .iter()
                .find(|(name, _)| *name == column.name)
                .map(|(_, order)| *order);
            ColumnKind::Clustering(match order {
                Some(concord_cql_parser::ast::Order::Desc) => ClusteringOrder::Desc,
                _ => ClusteringOrder::Asc,
            })
        } else if column.is_static {
            ColumnKind::Static
        } else {
            ColumnKind::Regular
        };
        columns.push(ColumnSpec {
            name: column.name.clone(),
            ty: resolve_type(schema, &keyspace, &column.ty.0)?,
            kind,
        });
    }
    // Key columns in key order, as the schema expects.
    let mut ordered = Vec::with_capacity(columns.len());
    for name in create.partition_key.iter().chain(&create.clustering) {
        let Some(idx) = columns.iter().position(|c| c.name == *name) else {
            invalid!("primary key column {name} is not defined");
        };
        ordered.push(columns.remove(idx));
    }
    for (name, _) in &create.clustering_order {
        if !create.clustering.contains(name) {
            invalid!("CLUSTERING ORDER BY names {name}, which is not a clustering column");
        }
    }
    ordered.extend(columns);
    let mut options = TableOptions::default();
    apply_table_properties(&mut options, &create.properties)?;
    Ok(StorageTableSpec {
        keyspace,
        name: create.table.name.clone(),
        columns: ordered,
        options,
    })
}

/// Executes a DDL statement (or `TRUNCATE`) for a client: on a single node
/// through [`apply_ddl`] here; on a cluster member through the metadata log
/// (`ClusterMeta::propose_ddl`), answering once this node applied it.
///
/// # Errors
/// The statement's error; nothing changes on error.
pub fn execute_ddl(context: &mut Context<'_>, statement: &Statement) -> CqlResult<ResResultBody> {
    let db = &context.shared.db;
    if let Statement::Truncate(table) = statement {
        let keyspace = context.keyspace_of(table)?;
        db.truncate(&keyspace, &table.name)?;
        return Ok(ResResultBody::Void);
    }
    if !is_schema_change(statement) {
        invalid!("statement not supported here");
    }
    let keyspace = context.keyspace.clone();
    let change = match db.cluster_meta() {
        Some(cluster) => cluster.propose_ddl(db, keyspace.as_deref(), context.text, statement)?,
        None => db.alter_schema(None, |schema| {
            apply_ddl(schema, keyspace.as_deref(), statement)
        })?,
    };
    let Some(change) = change else {
        return Ok(ResResultBody::Void);
    };
    if let Statement::DropKeyspace { name, .. } = statement {
        let mut session = context.session.keyspace.lock();
        if session.as_deref() == Some(name.as_str()) {
            *session = None;
        }
    }
    if db.cluster_meta().is_none() {
        // On a cluster member the applier announces it, on every member.
        let _ = context
            .shared
            .events
            .send(ServerEvent::SchemaChange(change.clone()));
    }
    Ok(ResResultBody::SchemaChange(change))
}

/// Applies one schema-changing statement to `schema`, unqualified names
/// resolving in `keyspace`: the event to announce, or `None` when nothing
/// changed (`IF NOT EXISTS` / `IF EXISTS`). A function of `schema` and the
/// statement alone (see the module note).
///
/// # Errors
/// The statement's error (`schema` may then be partly changed: callers
/// apply it to a copy and keep the copy only on success).
pub fn apply_ddl(
    schema: &mut Schema,
    keyspace: Option<&str>,
    statement: &Statement,
) -> CqlResult<Option<SchemaChange>> {
    let change = match statement {
        Statement::CreateKeyspace(create) => {
            if system::VIRTUAL_KEYSPACES.contains(&create.name.as_str()) {
                return Err(CqlError::AlreadyExists {
                    keyspace: create.name.clone(),
                    table: String::new(),
                    message: format!(
                        "keyspace {} already exists (it is a system keyspace)",
                        create.name
                    ),
                });
            }
            let def = keyspace_def(&create.name, &create.properties)?;
            let created = schema
                .create_keyspace(def, if_exists(create.if_not_exists))
                .map_err(|error| already_exists(error.into(), &create.name, ""))?;
            if !created {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Created,
                SchemaChangeTarget::Keyspace,
                &create.name,
                None,
            )
        }
        Statement::AlterKeyspace { name, properties } => {
            if system::VIRTUAL_KEYSPACES.contains(&name.as_str()) {
                invalid!("keyspace {name} is a system keyspace and cannot be altered");
            }
            let mut def = schema.keyspace(name)?.def.clone();
            apply_keyspace_properties(&mut def, properties)?;
            schema.alter_keyspace(def)?;
            schema_change(
                SchemaChangeType::Updated,
                SchemaChangeTarget::Keyspace,
                name,
                None,
            )
        }
        Statement::DropKeyspace {
            name,
            if_exists: flag,
        } => {
            let existed = schema.keyspace(name).is_ok();
            schema.drop_keyspace(name, if_exists(*flag))?;
            if !existed {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Dropped,
                SchemaChangeTarget::Keyspace,
                name,
                None,
            )
        }
        Statement::CreateTable(create) => {
            let spec = create_table_spec(schema, keyspace, create)?;
            let keyspace = spec.keyspace.clone();
            let created = schema
                .create_table(spec, if_exists(create.if_not_exists))
                .map_err(|error| already_exists(error.into(), &keyspace, &create.table.name))?;
            if created.is_none() {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Created,
                SchemaChangeTarget::Table,
                &keyspace,
                Some(&create.table.name),
            )
        }
        Statement::AlterTable { table, action } => {
            let keyspace = keyspace_for(table, keyspace)?;
            match action {
                AlterTableAction::Add(columns) => {
                    for column in columns {
                        let ty = resolve_type(schema, &keyspace, &column.ty.0)?;
                        let kind = if column.is_static {
                            ColumnKind::Static
                        } else {
                            ColumnKind::Regular
                        };
                        schema.add_column(
                            &keyspace,
                            &table.name,
                            ColumnSpec {
                                name: column.name.clone(),
                                ty,
                                kind,
                            },
                        )?;
                    }
                }
                AlterTableAction::Drop(columns) => {
                    for column in columns {
                        schema.drop_column(&keyspace, &table.name, column)?;
                    }
                }
                AlterTableAction::Rename(renames) => {
                    schema.rename_columns(&keyspace, &table.name, renames)?;
                }
                AlterTableAction::With(properties) => {
                    let mut options = schema.table(&keyspace, &table.name)?.options.clone();
                    apply_table_properties(&mut options, properties)?;
                    schema.alter_table_options(&keyspace, &table.name, options)?;
                }
            }
            schema_change(
                SchemaChangeType::Updated,
                SchemaChangeTarget::Table,
                &keyspace,
                Some(&table.name),
            )
        }
        Statement::DropTable {
            table,
            if_exists: flag,
        } => {
            let keyspace = keyspace_for(table, keyspace)?;
            if schema
                .drop_table(&keyspace, &table.name, if_exists(*flag))?
                .is_none()
            {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Dropped,
                SchemaChangeTarget::Table,
                &keyspace,
                Some(&table.name),
            )
        }
        Statement::CreateType(create) => {
            let keyspace = keyspace_for(&create.name, keyspace)?;
            let fields = create
                .fields
                .iter()
                .map(|(name, ty)| Ok((name.clone(), resolve_type(schema, &keyspace, &ty.0)?)))
                .collect::<CqlResult<Vec<_>>>()?;
            let created = schema
                .create_type(
                    &keyspace,
                    &create.name.name,
                    fields,
                    if_exists(create.if_not_exists),
                )
                .map_err(|error| already_exists(error.into(), &keyspace, &create.name.name))?;
            if !created {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Created,
                SchemaChangeTarget::Type,
                &keyspace,
                Some(&create.name.name),
            )
        }
        Statement::AlterType { name, action } => {
            let keyspace = keyspace_for(name, keyspace)?;
            let change = match action {
                AlterTypeAction::Add(field, ty) => {
                    TypeChange::AddField(field.clone(), resolve_type(schema, &keyspace, &ty.0)?)
                }
                AlterTypeAction::Rename(renames) => TypeChange::RenameFields(renames.clone()),
            };
            schema.alter_type(&keyspace, &name.name, change)?;
            schema_change(
                SchemaChangeType::Updated,
                SchemaChangeTarget::Type,
                &keyspace,
                Some(&name.name),
            )
        }
        Statement::DropType {
            name,
            if_exists: flag,
        } => {
            let keyspace = keyspace_for(name, keyspace)?;
            if !schema.drop_type(&keyspace, &name.name, if_exists(*flag))? {
                return Ok(None);
            }
            schema_change(
                SchemaChangeType::Dropped,
                SchemaChangeTarget::Type,
                &keyspace,
                Some(&name.name),
            )
        }
        _ => invalid!("statement not supported here"),
    };
    Ok(Some(change))
}

/// The replication factor a keyspace definition asks for: SimpleStrategy's,
/// or the sum over NetworkTopologyStrategy's data centres; `None` for
/// LocalStrategy.
pub fn replication_factor(def: &KeyspaceDef) -> Option<u32> {
    match &def.replication {
        ReplicationStrategy::Simple { replication_factor } => Some(*replication_factor),
        ReplicationStrategy::NetworkTopology { datacenters } => Some(
            datacenters
                .values()
                .fold(0u32, |sum, rf| sum.saturating_add(*rf)),
        ),
        ReplicationStrategy::Local => None,
    }
}
