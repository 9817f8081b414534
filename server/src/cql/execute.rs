//! Requests to results: QUERY / PREPARE / EXECUTE / BATCH, the prepared
//! statement cache, and INSERT / UPDATE / DELETE (with their `IF`
//! conditions) built into one `Db::execute` transaction each. SELECT lives in
//! `select`, DDL in `ddl`.

use std::collections::HashMap;
use std::sync::Arc;

use cassandra_protocol::frame::Version;
use cassandra_protocol::frame::message_batch::BatchQuerySubj;
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_response::ResponseBody;
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, BodyResResultSetKeyspace, ColSpec, PreparedMetadata,
    ResResultBody, RowsMetadata, RowsMetadataFlags, TableSpec,
};
use cassandra_protocol::query::QueryValues;
use cassandra_protocol::types::CBytesShort;
use cassandra_protocol::types::value::Value as WireValue;
use concord_cql_parser::ast::{
    Assignment, Condition, Delete, DeleteTarget, Insert, InsertValues, Operator, Parsed,
    QualifiedName, Relation, Statement, Term, TransactionCondition, Update, Using,
};
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Slice, SliceBound, Ttl};
use concord_storage::schema::{ColumnKind, TableDef};
use concord_storage::types::CqlType;
use concord_storage::value::{ClusteringOrder, CqlValue, native};
use parking_lot::Mutex;

use crate::cql::Shared;
use crate::cql::connection::Session;
use crate::cql::error::{CqlError, CqlResult, invalid};
use crate::cql::select;
use crate::cql::values::{self, Bound, BoundValues, col_type, required_value, term_value};
use crate::db::{
    Arithmetic, Check, CompareOp, Derivation, DerivedCell, Read, ReadResult, Transaction,
};

/// The most prepared statements kept; past it an arbitrary one is evicted
/// (its clients get UNPREPARED and re-prepare).
pub const PREPARED_STATEMENTS_MAX: usize = 10_000;
/// The most partitions one statement may name through `IN`.
pub const IN_PARTITIONS_MAX: usize = 1_000;

/// A statement prepared once and executed many times.
#[derive(Debug)]
pub struct PreparedStatement {
    pub id: Vec<u8>,
    /// The CQL text it was prepared from.
    pub text: String,
    pub keyspace: Option<String>,
    pub parsed: Parsed,
    pub bind_columns: Vec<ColSpec>,
    pub pk_indexes: Vec<i16>,
    pub result_columns: Vec<ColSpec>,
    pub result_metadata_id: Vec<u8>,
    /// A SELECT of at most one row (see [`select::is_point_read`]): EXECUTE
    /// runs it on the connection's task, without a blocking-pool handoff.
    pub point_read: bool,
}

/// Prepared statements by id.
#[derive(Debug, Default)]
pub struct PreparedCache {
    entries: Mutex<HashMap<Vec<u8>, Arc<PreparedStatement>>>,
}

impl PreparedCache {
    /// Whether the statement with this id is a point read (false when it is
    /// unknown: the request then takes the general path and gets UNPREPARED).
    pub fn is_point_read(&self, id: &[u8]) -> bool {
        self.entries
            .lock()
            .get(id)
            .is_some_and(|statement| statement.point_read)
    }

    fn get(&self, id: &[u8]) -> Option<Arc<PreparedStatement>> {
        self.entries.lock().get(id).cloned()
    }

    fn insert(&self, statement: Arc<PreparedStatement>) {
        let mut entries = self.entries.lock();
        if entries.len() >= PREPARED_STATEMENTS_MAX && !entries.contains_key(&statement.id) {
            let victim = entries.keys().next().cloned();
            if let Some(victim) = victim {
                entries.remove(&victim);
            }
        }
        entries.insert(statement.id.clone(), statement);
        assert!(entries.len() <= PREPARED_STATEMENTS_MAX);
    }
}

fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut data = Vec::new();
    for part in parts {
        data.extend_from_slice(&(part.len() as u32).to_be_bytes());
        data.extend_from_slice(part);
    }
    let (high, low) = concord_storage::partitioner::murmur3_x64_128(&data, 0);
    let mut id = high.to_be_bytes().to_vec();
    id.extend_from_slice(&low.to_be_bytes());
    id
}

/// What one statement execution needs besides the statement.
#[derive(Debug)]
pub struct Context<'a> {
    pub shared: &'a Shared,
    pub session: &'a Session,
    /// The keyspace unqualified names resolve in.
    pub keyspace: Option<String>,
    pub binds: BoundValues,
    pub page_rows: Option<usize>,
    pub paging_state: Option<Vec<u8>>,
    pub version: Version,
    /// The statement's CQL text, when it came as text (QUERY, or EXECUTE of
    /// a statement prepared from text): a cluster logs DDL as its text.
    pub text: Option<&'a str>,
}

impl Context<'_> {
    pub fn keyspace_of(&self, name: &QualifiedName) -> CqlResult<String> {
        crate::cql::ddl::keyspace_for(name, self.keyspace.as_deref())
    }

    pub fn table(&self, name: &QualifiedName) -> CqlResult<Arc<TableDef>> {
        let keyspace = self.keyspace_of(name)?;
        Ok(self.shared.db.table(&keyspace, &name.name)?)
    }
}

/// Handles one QUERY / PREPARE / EXECUTE / BATCH request.
///
/// # Errors
/// The request's CQL error.
pub fn handle_request(
    shared: &Shared,
    session: &Session,
    request: RequestBody,
    version: Version,
    skip_metadata: bool,
) -> CqlResult<ResponseBody> {
    if let Some(cluster) = shared.db.cluster_meta() {
        cluster.catch_up();
    }
    let result = match request {
        RequestBody::Query(query) => {
            let parsed = concord_cql_parser::parse(&query.query)?;
            let params = query.query_params;
            let keyspace = params
                .keyspace
                .clone()
                .or_else(|| session.keyspace.lock().clone());
            let binds = bind_values(&parsed, params.values)?;
            let mut context = Context {
                shared,
                session,
                keyspace,
                binds,
                page_rows: page_rows(params.page_size),
                paging_state: params.paging_state.and_then(|state| state.into_bytes()),
                version,
                text: Some(&query.query),
            };
            execute_statement(&mut context, &parsed.statement)?
        }
        RequestBody::Prepare(prepare) => {
            let keyspace = prepare
                .keyspace
                .clone()
                .or_else(|| session.keyspace.lock().clone());
            let prepared = prepare_statement(shared, &prepare.query, keyspace)?;
            ResResultBody::Prepared(prepared_result(&prepared, version))
        }
        RequestBody::Execute(execute) => {
            let id = execute.id.into_bytes().unwrap_or_default();
            let Some(prepared) = shared.prepared.get(&id) else {
                return Err(CqlError::Unprepared(id));
            };
            let params = execute.query_parameters;
            let binds = bind_values(&prepared.parsed, params.values)?;
            let keyspace = prepared
                .keyspace
                .clone()
                .or_else(|| session.keyspace.lock().clone());
            let mut context = Context {
                shared,
                session,
                keyspace,
                binds,
                page_rows: page_rows(params.page_size),
                paging_state: params.paging_state.and_then(|state| state.into_bytes()),
                version,
                text: Some(&prepared.text),
            };
            let result = execute_statement(&mut context, &prepared.parsed.statement)?;
            if skip_metadata {
                without_metadata(result, &prepared)
            } else {
                result
            }
        }
        RequestBody::Batch(batch) => {
            let keyspace = batch
                .keyspace
                .clone()
                .or_else(|| session.keyspace.lock().clone());
            let mut statements = Vec::with_capacity(batch.queries.len());
            for query in batch.queries {
                let parsed = match query.subject {
                    BatchQuerySubj::QueryString(text) => concord_cql_parser::parse(&text)?,
                    BatchQuerySubj::PreparedId(id) => {
                        let id = id.into_bytes().unwrap_or_default();
                        let Some(prepared) = shared.prepared.get(&id) else {
                            return Err(CqlError::Unprepared(id));
                        };
                        prepared.parsed.clone()
                    }
                };
                let binds = bind_values(&parsed, Some(query.values))?;
                statements.push((parsed.statement, binds));
            }
            let context = Context {
                shared,
                session,
                keyspace,
                binds: BoundValues::default(),
                page_rows: None,
                paging_state: None,
                version,
                text: None,
            };
            execute_batch(&context, statements)?
        }
        _ => return Err(CqlError::Protocol("not a statement request".into())),
    };
    Ok(ResponseBody::Result(result))
}

/// EXECUTE with `skip_metadata`: rows without their column specs (the
/// client has them from PREPARE), as the protocol asks. Only when the rows
/// carry exactly the prepared result columns: if the table changed since
/// PREPARE the full metadata goes out, so the client never decodes rows
/// with specs that no longer match.
fn without_metadata(result: ResResultBody, prepared: &PreparedStatement) -> ResResultBody {
    let prepared_metadata = rows_metadata(&prepared.result_columns, None);
    match result {
        ResResultBody::Rows(mut rows)
            if rows.metadata.col_specs == prepared_metadata.col_specs
                && rows.metadata.global_table_spec == prepared_metadata.global_table_spec =>
        {
            rows.metadata
                .flags
                .remove(RowsMetadataFlags::GLOBAL_TABLE_SPACE);
            rows.metadata.flags.insert(RowsMetadataFlags::NO_METADATA);
            rows.metadata.global_table_spec = None;
            rows.metadata.col_specs = Vec::new();
            ResResultBody::Rows(rows)
        }
        other => other,
    }
}

fn page_rows(page_size: Option<i32>) -> Option<usize> {
    page_size
        .and_then(|size| usize::try_from(size).ok())
        .filter(|size| *size > 0)
}

fn bind_values(parsed: &Parsed, values: Option<QueryValues>) -> CqlResult<BoundValues> {
    let values = match values {
        None => Vec::new(),
        Some(QueryValues::SimpleValues(values)) => values,
        Some(QueryValues::NamedValues(mut named)) => {
            let mut values = Vec::with_capacity(parsed.bind_markers.len());
            for (idx, marker) in parsed.bind_markers.iter().enumerate() {
                let Some(name) = marker else {
                    invalid!("marker {idx} is anonymous (?); named values need :name markers");
                };
                match named.get(name) {
                    Some(value) => values.push(value.clone()),
                    None => invalid!("no value for :{name}"),
                }
            }
            named.clear();
            values
        }
    };
    if values.len() != parsed.bind_markers.len() {
        invalid!(
            "the statement has {} bind markers but {} values were sent",
            parsed.bind_markers.len(),
            values.len()
        );
    }
    Ok(BoundValues { values })
}

fn ks_table_spec(keyspace: &str, table: &str) -> TableSpec {
    TableSpec {
        ks_name: keyspace.to_owned(),
        table_name: table.to_owned(),
    }
}

/// The rows metadata for a result.
pub fn rows_metadata(columns: &[ColSpec], paging_state: Option<Vec<u8>>) -> RowsMetadata {
    let mut flags = RowsMetadataFlags::empty();
    if paging_state.is_some() {
        flags |= RowsMetadataFlags::HAS_MORE_PAGES;
    }
    let (global, specs) = match columns.first().and_then(|column| column.table_spec.clone()) {
        Some(global) => {
            flags |= RowsMetadataFlags::GLOBAL_TABLE_SPACE;
            let specs = columns
                .iter()
                .map(|column| ColSpec {
                    table_spec: None,
                    ..column.clone()
                })
                .collect();
            (Some(global), specs)
        }
        None => (None, columns.to_vec()),
    };
    if specs.is_empty() {
        flags = (flags - RowsMetadataFlags::GLOBAL_TABLE_SPACE) | RowsMetadataFlags::NO_METADATA;
        return RowsMetadata {
            flags,
            columns_count: 0,
            paging_state: paging_state.map(cassandra_protocol::types::CBytes::new),
            new_metadata_id: None,
            global_table_spec: None,
            col_specs: Vec::new(),
        };
    }
    RowsMetadata {
        flags,
        columns_count: specs.len() as i32,
        paging_state: paging_state.map(cassandra_protocol::types::CBytes::new),
        new_metadata_id: None,
        global_table_spec: global,
        col_specs: specs,
    }
}

/// A result set: columns with their types, rows of serialized values.
pub fn rows_result(
    columns: &[ColSpec],
    types: &[CqlType],
    rows: Vec<Vec<Option<CqlValue>>>,
    paging_state: Option<Vec<u8>>,
    version: Version,
) -> CqlResult<ResResultBody> {
    assert_eq!(columns.len(), types.len());
    let mut content = Vec::with_capacity(rows.len());
    for row in rows {
        assert_eq!(row.len(), types.len());
        let mut cells = Vec::with_capacity(row.len());
        for (value, ty) in row.iter().zip(types) {
            cells.push(match value {
                Some(value) => cassandra_protocol::types::CBytes::new(
                    native::serialize_to_vec(value, ty).map_err(|error| {
                        CqlError::Server(format!("serialize a result value: {error}"))
                    })?,
                ),
                None => cassandra_protocol::types::CBytes::new_null(),
            });
        }
        content.push(cells);
    }
    Ok(ResResultBody::Rows(BodyResResultRows {
        metadata: rows_metadata(columns, paging_state),
        rows_count: content.len() as i32,
        rows_content: content,
        protocol_version: version,
    }))
}

pub fn column_spec(keyspace: &str, table: &str, name: &str, ty: &CqlType) -> ColSpec {
    ColSpec {
        table_spec: Some(ks_table_spec(keyspace, table)),
        name: name.to_owned(),
        col_type: col_type(ty),
    }
}

fn prepared_result(prepared: &PreparedStatement, version: Version) -> BodyResResultPrepared {
    let global = prepared
        .bind_columns
        .first()
        .and_then(|column| column.table_spec.clone());
    let bind_specs = prepared
        .bind_columns
        .iter()
        .map(|column| ColSpec {
            table_spec: if global.is_some() {
                None
            } else {
                column.table_spec.clone()
            },
            ..column.clone()
        })
        .collect();
    BodyResResultPrepared {
        id: CBytesShort::new(prepared.id.clone()),
        result_metadata_id: (version >= Version::V5)
            .then(|| CBytesShort::new(prepared.result_metadata_id.clone())),
        metadata: PreparedMetadata {
            pk_indexes: prepared.pk_indexes.clone(),
            global_table_spec: global,
            col_specs: bind_specs,
        },
        result_metadata: rows_metadata(&prepared.result_columns, None),
    }
}

/// Parses and describes a statement, and caches it.
///
/// # Errors
/// Syntax errors; unknown tables or columns.
pub fn prepare_statement(
    shared: &Shared,
    query: &str,
    keyspace: Option<String>,
) -> CqlResult<Arc<PreparedStatement>> {
    let parsed = concord_cql_parser::parse(query)?;
    let id = digest(&[
        keyspace.as_deref().unwrap_or("").as_bytes(),
        query.as_bytes(),
    ]);
    let session = Session::default();
    let context = Context {
        shared,
        session: &session,
        keyspace: keyspace.clone(),
        binds: BoundValues::default(),
        page_rows: None,
        paging_state: None,
        version: Version::V4,
        text: Some(query),
    };
    let mut receivers = vec![None; parsed.bind_markers.len()];
    let mut pk_indexes = Vec::new();
    describe_binds(&context, &parsed.statement, &mut receivers, &mut pk_indexes)?;
    let bind_columns = receivers
        .into_iter()
        .enumerate()
        .map(|(idx, receiver)| {
            receiver.unwrap_or_else(|| column_spec("", "", &format!("[{idx}]"), &CqlType::Blob))
        })
        .collect();
    let result_columns = match &parsed.statement {
        Statement::Select(select) => select::result_columns(&context, select)?,
        Statement::Insert(Insert {
            if_not_exists: true,
            ..
        })
        | Statement::Update(Update {
            condition: Some(_), ..
        })
        | Statement::Delete(Delete {
            condition: Some(_), ..
        }) => Vec::new(),
        _ => Vec::new(),
    };
    let metadata_digest: Vec<u8> = result_columns
        .iter()
        .flat_map(|column| format!("{}:{:?};", column.name, column.col_type).into_bytes())
        .collect();
    let point_read = match &parsed.statement {
        Statement::Select(select) => select::resolve_user_table(&context, &select.table)?
            .is_some_and(|table| select::is_point_read(&table, select)),
        _ => false,
    };
    let prepared = Arc::new(PreparedStatement {
        text: query.to_owned(),
        point_read,
        result_metadata_id: digest(&[&metadata_digest]),
        id,
        keyspace,
        parsed,
        bind_columns,
        pk_indexes,
        result_columns,
    });
    shared.prepared.insert(prepared.clone());
    Ok(prepared)
}

type Receivers = Vec<Option<ColSpec>>;

fn note_bind(receivers: &mut Receivers, term: &Term, table: &TableDef, name: &str, ty: &CqlType) {
    match term {
        Term::Bind(marker) => {
            if let Some(slot) = receivers.get_mut(marker.index) {
                *slot = Some(column_spec(&table.keyspace, &table.name, name, ty));
            }
        }
        Term::List(elements) | Term::Set(elements) | Term::Tuple(elements) => {
            let element_types: Vec<CqlType> = match ty.unfrozen() {
                CqlType::List(element) | CqlType::Set(element) => {
                    vec![(**element).clone(); elements.len()]
                }
                CqlType::Tuple(types) => types.clone(),
                _ => Vec::new(),
            };
            for (element, ty) in elements.iter().zip(&element_types) {
                note_bind(receivers, element, table, name, ty);
            }
        }
        Term::Map(entries) => {
            if let CqlType::Map(key_type, value_type) = ty.unfrozen() {
                for (key, value) in entries {
                    note_bind(receivers, key, table, name, key_type);
                    note_bind(receivers, value, table, name, value_type);
                }
            }
        }
        _ => {}
    }
}

fn column_of<'t>(
    table: &'t TableDef,
    name: &str,
) -> CqlResult<&'t concord_storage::schema::ColumnDef> {
    table.column(name).ok_or_else(|| {
        let names: Vec<&str> = table.columns().iter().map(|c| c.name.as_str()).collect();
        CqlError::Invalid(format!(
            "unknown column {name} in table {}; its columns are: {}",
            table.qualified_name(),
            names.join(", ")
        ))
    })
}

fn describe_relations(
    table: &TableDef,
    relations: &[Relation],
    receivers: &mut Receivers,
    pk_indexes: &mut Vec<i16>,
) -> CqlResult<()> {
    let partition_key: Vec<&str> = table.partition_key().map(|c| c.name.as_str()).collect();
    let mut pk_slots = vec![None; partition_key.len()];
    for relation in relations {
        match relation {
            Relation::Compare {
                column,
                operator,
                value,
            } => {
                let def = column_of(table, column)?;
                let ty = match operator {
                    Operator::Contains => match def.ty.unfrozen() {
                        CqlType::List(element) | CqlType::Set(element) => (**element).clone(),
                        CqlType::Map(_, value) => (**value).clone(),
                        other => other.clone(),
                    },
                    Operator::ContainsKey => match def.ty.unfrozen() {
                        CqlType::Map(key, _) => (**key).clone(),
                        other => other.clone(),
                    },
                    _ => def.ty.clone(),
                };
                note_bind(receivers, value, table, column, &ty);
                if *operator == Operator::Equal
                    && let (Some(position), Term::Bind(marker)) =
                        (partition_key.iter().position(|name| name == column), value)
                {
                    pk_slots[position] = Some(marker.index as i16);
                }
            }
            Relation::In { column, values } => {
                let def = column_of(table, column)?;
                match values {
                    concord_cql_parser::ast::InValues::Bind(marker) => {
                        note_bind(
                            receivers,
                            &Term::Bind(marker.clone()),
                            table,
                            column,
                            &CqlType::List(Box::new(def.ty.clone())),
                        );
                    }
                    concord_cql_parser::ast::InValues::List(terms) => {
                        for term in terms {
                            note_bind(receivers, term, table, column, &def.ty);
                        }
                    }
                }
            }
            Relation::MultiCompare { columns, value, .. } => {
                let types = columns
                    .iter()
                    .map(|name| Ok(column_of(table, name)?.ty.clone()))
                    .collect::<CqlResult<Vec<_>>>()?;
                note_bind(
                    receivers,
                    value,
                    table,
                    &columns.join(","),
                    &CqlType::Tuple(types),
                );
            }
            Relation::MultiIn { columns, values } => {
                let types = columns
                    .iter()
                    .map(|name| Ok(column_of(table, name)?.ty.clone()))
                    .collect::<CqlResult<Vec<_>>>()?;
                let tuple = CqlType::Tuple(types);
                if let concord_cql_parser::ast::InValues::List(terms) = values {
                    for term in terms {
                        note_bind(receivers, term, table, &columns.join(","), &tuple);
                    }
                }
            }
            Relation::Token { columns, value, .. } => match value {
                Term::Function { name, args } if name == "token" => {
                    for (column, arg) in columns.iter().zip(args) {
                        let def = column_of(table, column)?;
                        note_bind(receivers, arg, table, column, &def.ty);
                    }
                }
                other => note_bind(
                    receivers,
                    other,
                    table,
                    "partition key token",
                    &CqlType::Bigint,
                ),
            },
            Relation::IsNotNull(_) => {}
        }
    }
    if pk_slots.iter().all(Option::is_some) {
        pk_indexes.extend(pk_slots.into_iter().flatten());
    }
    Ok(())
}

fn describe_using(using: &Using, table: &TableDef, receivers: &mut Receivers) {
    if let Some(ttl) = &using.ttl {
        note_bind(receivers, ttl, table, "[ttl]", &CqlType::Int);
    }
    if let Some(timestamp) = &using.timestamp {
        note_bind(receivers, timestamp, table, "[timestamp]", &CqlType::Bigint);
    }
}

fn describe_condition(
    condition: &Option<Condition>,
    table: &TableDef,
    receivers: &mut Receivers,
) -> CqlResult<()> {
    if let Some(Condition::Columns(conditions)) = condition {
        for condition in conditions {
            let def = column_of(table, &condition.column)?;
            let value_type = match (&condition.element, def.ty.unfrozen()) {
                (Some(element), CqlType::Map(key, value)) => {
                    note_bind(receivers, element, table, &condition.column, key);
                    (**value).clone()
                }
                (Some(element), CqlType::List(value)) => {
                    note_bind(receivers, element, table, &condition.column, &CqlType::Int);
                    (**value).clone()
                }
                _ => def.ty.clone(),
            };
            note_bind(
                receivers,
                &condition.value,
                table,
                &condition.column,
                &value_type,
            );
        }
    }
    Ok(())
}

fn describe_binds(
    context: &Context<'_>,
    statement: &Statement,
    receivers: &mut Receivers,
    pk_indexes: &mut Vec<i16>,
) -> CqlResult<()> {
    match statement {
        Statement::Insert(insert) => {
            let table = context.table(&insert.table)?;
            if let InsertValues::Values { columns, values } = &insert.values {
                let partition_key: Vec<&str> =
                    table.partition_key().map(|c| c.name.as_str()).collect();
                let mut pk_slots = vec![None; partition_key.len()];
                for (column, value) in columns.iter().zip(values) {
                    let def = column_of(&table, column)?;
                    note_bind(receivers, value, &table, column, &def.ty);
                    if let (Some(position), Term::Bind(marker)) =
                        (partition_key.iter().position(|name| name == column), value)
                    {
                        pk_slots[position] = Some(marker.index as i16);
                    }
                }
                if pk_slots.iter().all(Option::is_some) {
                    pk_indexes.extend(pk_slots.into_iter().flatten());
                }
            } else if let InsertValues::Json { json, .. } = &insert.values {
                note_bind(receivers, json, &table, "[json]", &CqlType::Text);
            }
            describe_using(&insert.using, &table, receivers);
        }
        Statement::Update(update) => {
            let table = context.table(&update.table)?;
            describe_using(&update.using, &table, receivers);
            for assignment in &update.assignments {
                match assignment {
                    Assignment::Set { column, value }
                    | Assignment::Add { column, value }
                    | Assignment::Prepend { column, value } => {
                        let def = column_of(&table, column)?;
                        note_bind(receivers, value, &table, column, &def.ty);
                    }
                    Assignment::Subtract { column, value } => {
                        let def = column_of(&table, column)?;
                        let ty = match def.ty.unfrozen() {
                            CqlType::Map(key, _) => CqlType::Set(key.clone()),
                            other => other.clone(),
                        };
                        note_bind(receivers, value, &table, column, &ty);
                    }
                    Assignment::SetElement { column, key, value } => {
                        let def = column_of(&table, column)?;
                        match def.ty.unfrozen() {
                            CqlType::Map(key_type, value_type) => {
                                note_bind(receivers, key, &table, column, key_type);
                                note_bind(receivers, value, &table, column, value_type);
                            }
                            CqlType::List(value_type) => {
                                note_bind(receivers, key, &table, column, &CqlType::Int);
                                note_bind(receivers, value, &table, column, value_type);
                            }
                            _ => {}
                        }
                    }
                    Assignment::SetField {
                        column,
                        field,
                        value,
                    } => {
                        let def = column_of(&table, column)?;
                        if let CqlType::Udt(udt) = def.ty.unfrozen()
                            && let Some((_, ty)) = udt.fields.iter().find(|(name, _)| name == field)
                        {
                            note_bind(receivers, value, &table, column, ty);
                        }
                    }
                }
            }
            describe_relations(&table, &update.where_clause, receivers, pk_indexes)?;
            describe_condition(&update.condition, &table, receivers)?;
        }
        Statement::Delete(delete) => {
            let table = context.table(&delete.table)?;
            for target in &delete.targets {
                let def = column_of(&table, &target.column)?;
                if let Some(element) = &target.element {
                    let ty = match def.ty.unfrozen() {
                        CqlType::Map(key, _) => (**key).clone(),
                        CqlType::Set(element) => (**element).clone(),
                        _ => CqlType::Int,
                    };
                    note_bind(receivers, element, &table, &target.column, &ty);
                }
            }
            describe_using(&delete.using, &table, receivers);
            describe_relations(&table, &delete.where_clause, receivers, pk_indexes)?;
            describe_condition(&delete.condition, &table, receivers)?;
        }
        Statement::Select(select) => {
            if let Some(table) = select::resolve_user_table(context, &select.table)? {
                describe_relations(&table, &select.where_clause, receivers, pk_indexes)?;
                for term in [&select.limit, &select.per_partition_limit]
                    .into_iter()
                    .flatten()
                {
                    note_bind(receivers, term, &table, "[limit]", &CqlType::Int);
                }
            }
        }
        Statement::Batch(batch) => {
            for statement in &batch.statements {
                describe_binds(context, statement, receivers, &mut Vec::new())?;
            }
        }
        Statement::Transaction(block) => {
            let mut let_tables = HashMap::new();
            for binding in &block.lets {
                let table = context.table(&binding.select.table)?;
                describe_relations(
                    &table,
                    &binding.select.where_clause,
                    receivers,
                    &mut Vec::new(),
                )?;
                let_tables.insert(binding.name.clone(), table);
            }
            for condition in block.condition.iter().flatten() {
                if let TransactionCondition::Compare { left, right, .. } = condition {
                    for (reference, other) in [(left, right), (right, left)] {
                        if let Term::Reference { row, column } = reference
                            && let Some(table) = let_tables.get(row)
                            && let Some(def) = table.column(column)
                        {
                            note_bind(receivers, other, table, column, &def.ty);
                        }
                    }
                }
            }
            for statement in &block.modifications {
                describe_binds(context, statement, receivers, &mut Vec::new())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Executes one statement.
///
/// # Errors
/// The statement's CQL error; nothing is applied on error.
pub fn execute_statement(
    context: &mut Context<'_>,
    statement: &Statement,
) -> CqlResult<ResResultBody> {
    match statement {
        Statement::Use(keyspace) => {
            context
                .shared
                .db
                .schema()
                .keyspace(keyspace)
                .map_err(|_| CqlError::Invalid(format!("keyspace {keyspace} does not exist")))?;
            *context.session.keyspace.lock() = Some(keyspace.clone());
            Ok(ResResultBody::SetKeyspace(BodyResResultSetKeyspace {
                body: keyspace.clone(),
            }))
        }
        Statement::Select(select) => select::execute_select(context, select),
        Statement::Describe(describe) => select::execute_describe(context, describe),
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
            let plan = plan_modification(context, statement, &context.binds)?;
            run_plans(context, vec![plan])
        }
        Statement::Batch(batch) => {
            if batch.using.timestamp.is_some() {
                return Err(using_timestamp_error());
            }
            let statements = batch
                .statements
                .iter()
                .map(|statement| (statement.clone(), context.binds.clone()))
                .collect();
            execute_batch(context, statements)
        }
        Statement::Transaction(block) => crate::cql::transaction::execute_block(context, block),
        _ => crate::cql::ddl::execute_ddl(context, statement),
    }
}

fn using_timestamp_error() -> CqlError {
    CqlError::Invalid(
        "USING TIMESTAMP is not supported: Concord orders every write through its transaction layer, which assigns the write time; remove the clause".into(),
    )
}

/// A conditional statement's read, its checks, its table and the columns
/// reported back when the condition fails.
pub type Conditional = (Read, Vec<CheckTemplate>, Arc<TableDef>, Vec<String>);

/// One modification statement turned into storage terms.
#[derive(Debug)]
pub struct Plan {
    pub mutations: Vec<Mutation>,
    /// The read and checks of a conditional statement.
    pub conditional: Option<Conditional>,
    /// Cells computed from a read of the row (arithmetic: transaction blocks
    /// only; list index operations anywhere): (mutation index, op index,
    /// column, derivation, the read).
    pub derived: Vec<Derived>,
}

/// A derived cell of a [`Plan`], before its indexes are fixed in the
/// transaction.
pub type Derived = (
    usize,
    usize,
    concord_storage::schema::ColumnId,
    Derivation,
    Read,
);

/// What an assignment does to its column.
#[derive(Debug)]
enum Assigned {
    Op(CellOp),
    Unset,
    /// Computed from the row's current value, in the transaction.
    Derived(Derivation),
}

/// A check against the plan's own read (index fixed when plans combine).
#[derive(Debug, Clone)]
pub enum CheckTemplate {
    Exists,
    Absent,
    Column {
        column: concord_storage::schema::ColumnId,
        element: Option<CqlValue>,
        operator: CompareOp,
        value: Option<CqlValue>,
    },
}

fn execute_batch(
    context: &Context<'_>,
    statements: Vec<(Statement, BoundValues)>,
) -> CqlResult<ResResultBody> {
    let mut plans = Vec::with_capacity(statements.len());
    for (statement, binds) in &statements {
        if !matches!(
            statement,
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
        ) {
            invalid!("a batch holds only INSERT, UPDATE and DELETE statements");
        }
        plans.push(plan_modification(context, statement, binds)?);
    }
    run_plans(context, plans)
}

/// Runs plans as one transaction; returns `[applied]` rows when any plan
/// was conditional.
fn run_plans(context: &Context<'_>, plans: Vec<Plan>) -> CqlResult<ResResultBody> {
    let mut transaction = Transaction::default();
    let mut conditional = Vec::new();
    let mut derived_targets = Vec::new();
    for plan in plans {
        let write_offset = transaction.writes.len();
        transaction.writes.extend(plan.mutations);
        for (write, op, column, derivation, read) in plan.derived {
            if let Read::Row {
                table,
                partition_key,
                clustering,
            } = &read
            {
                let target = (table.id, partition_key.clone(), clustering.clone(), column);
                if derived_targets.contains(&target) {
                    invalid!(
                        "two statements of the batch change the same list or number in one row by index, removal or arithmetic; combine them"
                    );
                }
                derived_targets.push(target);
            }
            let read_idx = transaction.reads.len();
            transaction.reads.push(read);
            transaction.derived.push(DerivedCell {
                write: write_offset + write,
                op,
                column,
                read: read_idx,
                derivation,
            });
        }
        if let Some((read, checks, table, columns)) = plan.conditional {
            let read_idx = transaction.reads.len();
            transaction.reads.push(read);
            for check in checks {
                transaction.condition.push(match check {
                    CheckTemplate::Exists => Check::RowExists { read: read_idx },
                    CheckTemplate::Absent => Check::RowAbsent { read: read_idx },
                    CheckTemplate::Column {
                        column,
                        element,
                        operator,
                        value,
                    } => Check::Column {
                        read: read_idx,
                        column,
                        element,
                        operator,
                        value,
                    },
                });
            }
            conditional.push((table, columns, read_idx));
        }
    }
    let first_conditional_read = conditional
        .first()
        .and_then(|(_, _, read)| transaction.reads.get(*read).cloned());
    let result = context.shared.db.execute(transaction)?;
    if conditional.is_empty() {
        return Ok(ResResultBody::Void);
    }
    // `[applied]`, then (when not applied) the current values of the first
    // conditional statement's columns, as drivers expect.
    let (table, columns, conditional_read_idx) = &conditional[0];
    let partition_key = match first_conditional_read {
        Some(Read::Row { partition_key, .. } | Read::Partition { partition_key, .. }) => {
            partition_key
        }
        None => Vec::new(),
    };
    let mut specs = vec![column_spec(
        &table.keyspace,
        &table.name,
        "[applied]",
        &CqlType::Boolean,
    )];
    let mut types = vec![CqlType::Boolean];
    let mut row = vec![Some(CqlValue::Boolean(result.applied))];
    if !result.applied {
        let (current, static_row) = match result.reads.get(*conditional_read_idx) {
            Some(ReadResult::Row(row)) => (row.clone(), None),
            Some(ReadResult::Partition(Some(partition))) => (
                partition.rows.first().cloned(),
                partition.static_row.clone(),
            ),
            _ => (None, None),
        };
        if current.is_some() || static_row.is_some() {
            for name in columns {
                let Some(def) = table.column(name) else {
                    continue;
                };
                specs.push(column_spec(&table.keyspace, &table.name, name, &def.ty));
                types.push(def.ty.clone());
                let value = match def.kind {
                    ColumnKind::PartitionKey => table
                        .partition_key()
                        .position(|column| column.id == def.id)
                        .and_then(|position| partition_key.get(position).cloned()),
                    ColumnKind::Clustering(_) => {
                        let position = table.clustering().position(|column| column.id == def.id);
                        current
                            .as_ref()
                            .zip(position)
                            .and_then(|(row, position)| row.clustering.get(position).cloned())
                    }
                    ColumnKind::Static => static_row
                        .as_ref()
                        .and_then(|row| row.columns.get(&def.id))
                        .map(|cell| cell.value.clone()),
                    ColumnKind::Regular => current
                        .as_ref()
                        .and_then(|row| row.columns.get(&def.id))
                        .map(|cell| cell.value.clone()),
                };
                row.push(value);
            }
        }
    }
    rows_result(&specs, &types, vec![row], None, context.version)
}

fn ttl_of(using: &Using, binds: &BoundValues) -> CqlResult<Ttl> {
    if using.timestamp.is_some() {
        return Err(using_timestamp_error());
    }
    let Some(term) = &using.ttl else {
        return Ok(Ttl::TableDefault);
    };
    match term_value(term, &CqlType::Int, "TTL", binds)? {
        Bound::Value(Some(CqlValue::Int(0))) => Ok(Ttl::Unlimited),
        Bound::Value(Some(CqlValue::Int(seconds))) if seconds > 0 => {
            Ok(Ttl::Seconds(seconds as u32))
        }
        Bound::Value(Some(other)) => {
            invalid!("TTL must be a positive number of seconds, got {other:?}")
        }
        Bound::Value(None) | Bound::Unset => Ok(Ttl::TableDefault),
    }
}

/// The key values a WHERE clause (or INSERT) fixes: partition keys (a
/// cartesian product over IN) and the clustering restriction.
#[derive(Debug)]
pub struct KeyRestriction {
    pub partition_keys: Vec<Vec<CqlValue>>,
    /// Clustering prefixes fixed by `=` / `IN` (several with IN).
    pub clustering_prefixes: Vec<Vec<CqlValue>>,
    /// A range on the column after the prefix, in natural (not stored) order.
    pub clustering_range: Option<(SliceBound, SliceBound)>,
}

fn in_values(
    values: &concord_cql_parser::ast::InValues,
    ty: &CqlType,
    column: &str,
    binds: &BoundValues,
) -> CqlResult<Vec<CqlValue>> {
    match values {
        concord_cql_parser::ast::InValues::List(terms) => terms
            .iter()
            .map(|term| required_value(term, ty, &format!("column {column}"), binds))
            .collect(),
        concord_cql_parser::ast::InValues::Bind(marker) => {
            match binds.get(marker, &CqlType::List(Box::new(ty.clone())), column)? {
                Bound::Value(Some(CqlValue::List(values))) => Ok(values),
                _ => invalid!("IN ? for column {column} needs a list value"),
            }
        }
    }
}

/// Extracts the key restriction from a WHERE clause. With `require_full`,
/// every partition key column must be fixed.
pub fn key_restriction(
    table: &TableDef,
    relations: &[Relation],
    binds: &BoundValues,
) -> CqlResult<Option<KeyRestriction>> {
    let mut partition_values: Vec<Vec<Vec<CqlValue>>> = Vec::new();
    for column in table.partition_key() {
        let mut found = None;
        for relation in relations {
            match relation {
                Relation::Compare {
                    column: name,
                    operator: Operator::Equal,
                    value,
                } if *name == column.name => {
                    found = Some(vec![required_value(
                        value,
                        &column.ty,
                        &format!("column {name}"),
                        binds,
                    )?]);
                }
                Relation::In {
                    column: name,
                    values,
                } if *name == column.name => {
                    found = Some(in_values(values, &column.ty, name, binds)?);
                }
                _ => {}
            }
        }
        match found {
            Some(values) => partition_values.push(values.into_iter().map(|v| vec![v]).collect()),
            None => return Ok(None),
        }
    }
    let mut partition_keys: Vec<Vec<CqlValue>> = vec![Vec::new()];
    for choices in partition_values {
        let mut next = Vec::new();
        for prefix in &partition_keys {
            for choice in &choices {
                let mut key = prefix.clone();
                key.extend(choice.iter().cloned());
                next.push(key);
            }
        }
        partition_keys = next;
        if partition_keys.len() > IN_PARTITIONS_MAX {
            invalid!(
                "the IN restrictions name more than IN_PARTITIONS_MAX = {IN_PARTITIONS_MAX} partitions"
            );
        }
    }
    let mut clustering_prefixes: Vec<Vec<CqlValue>> = vec![Vec::new()];
    let mut clustering_range = None;
    'columns: for column in table.clustering() {
        for relation in relations {
            match relation {
                Relation::Compare {
                    column: name,
                    operator,
                    value,
                } if *name == column.name => {
                    let value =
                        required_value(value, &column.ty, &format!("column {name}"), binds)?;
                    match operator {
                        Operator::Equal => {
                            clustering_prefixes
                                .iter_mut()
                                .for_each(|prefix| prefix.push(value.clone()));
                            continue 'columns;
                        }
                        Operator::Greater
                        | Operator::GreaterOrEqual
                        | Operator::Less
                        | Operator::LessOrEqual => {
                            let (mut start, mut end) = clustering_range
                                .take()
                                .unwrap_or((SliceBound::Unbounded, SliceBound::Unbounded));
                            let bound = |inclusive: bool, value: CqlValue| {
                                if inclusive {
                                    SliceBound::Included(vec![value])
                                } else {
                                    SliceBound::Excluded(vec![value])
                                }
                            };
                            match operator {
                                Operator::Greater => start = bound(false, value),
                                Operator::GreaterOrEqual => start = bound(true, value),
                                Operator::Less => end = bound(false, value),
                                _ => end = bound(true, value),
                            }
                            clustering_range = Some((start, end));
                        }
                        _ => {}
                    }
                }
                Relation::In {
                    column: name,
                    values,
                } if *name == column.name => {
                    let values = in_values(values, &column.ty, name, binds)?;
                    let mut next = Vec::new();
                    for prefix in &clustering_prefixes {
                        for value in &values {
                            let mut prefix = prefix.clone();
                            prefix.push(value.clone());
                            next.push(prefix);
                        }
                    }
                    clustering_prefixes = next;
                    continue 'columns;
                }
                _ => {}
            }
        }
        break;
    }
    Ok(Some(KeyRestriction {
        partition_keys,
        clustering_prefixes,
        clustering_range,
    }))
}

/// Turns a natural-order range on the column after `prefix` into a slice in
/// stored order.
pub fn slice_for(
    table: &TableDef,
    prefix: &[CqlValue],
    range: &Option<(SliceBound, SliceBound)>,
) -> Slice {
    let Some((start, end)) = range else {
        if prefix.is_empty() {
            return Slice::all();
        }
        return Slice {
            start: SliceBound::Included(prefix.to_vec()),
            end: SliceBound::Included(prefix.to_vec()),
        };
    };
    let descending = table
        .clustering()
        .nth(prefix.len())
        .is_some_and(|column| column.kind == ColumnKind::Clustering(ClusteringOrder::Desc));
    let extend = |bound: &SliceBound| match bound {
        SliceBound::Unbounded if prefix.is_empty() => SliceBound::Unbounded,
        SliceBound::Unbounded => SliceBound::Included(prefix.to_vec()),
        SliceBound::Included(value) => SliceBound::Included([prefix, value].concat()),
        SliceBound::Excluded(value) => SliceBound::Excluded([prefix, value].concat()),
    };
    let (start, end) = if descending {
        (extend(end), extend(start))
    } else {
        (extend(start), extend(end))
    };
    Slice { start, end }
}

/// Plans a modification inside a transaction block, with the block's
/// bound values.
///
/// # Errors
/// As the statement's planning.
pub fn plan_for_transaction(context: &Context<'_>, statement: &Statement) -> CqlResult<Plan> {
    match statement {
        Statement::Update(update) => plan_update(context, update, &context.binds, true),
        other => plan_modification(context, other, &context.binds),
    }
}

fn plan_modification(
    context: &Context<'_>,
    statement: &Statement,
    binds: &BoundValues,
) -> CqlResult<Plan> {
    match statement {
        Statement::Insert(insert) => plan_insert(context, insert, binds),
        Statement::Update(update) => plan_update(context, update, binds, false),
        Statement::Delete(delete) => plan_delete(context, delete, binds),
        _ => invalid!("not a modification"),
    }
}

fn plan_insert(context: &Context<'_>, insert: &Insert, binds: &BoundValues) -> CqlResult<Plan> {
    let table = context.table(&insert.table)?;
    let ttl = ttl_of(&insert.using, binds)?;
    let mut values: Vec<(String, Bound)> = Vec::new();
    match &insert.values {
        InsertValues::Values {
            columns,
            values: terms,
        } => {
            for (column, term) in columns.iter().zip(terms) {
                let def = column_of(&table, column)?;
                if values.iter().any(|(name, _)| name == column) {
                    invalid!("column {column} is given twice");
                }
                values.push((
                    column.clone(),
                    term_value(term, &def.ty, &format!("column {column}"), binds)?,
                ));
            }
        }
        InsertValues::Json {
            json,
            default_unset,
        } => {
            let text = match required_value(json, &CqlType::Text, "the JSON value", binds)? {
                CqlValue::Text(text) => text,
                _ => invalid!("INSERT JSON takes a string"),
            };
            let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|error| CqlError::Invalid(format!("INSERT JSON: {error}")))?;
            for column in table.columns() {
                let entry = object.iter().find(|(key, _)| {
                    key.as_str() == column.name
                        || (!key.starts_with('"') && key.to_lowercase() == column.name)
                        || key.trim_matches('"') == column.name
                });
                match entry {
                    Some((_, json)) => values.push((
                        column.name.clone(),
                        Bound::Value(values::from_json(json, &column.ty, &column.name)?),
                    )),
                    None if *default_unset => {}
                    None => values.push((column.name.clone(), Bound::Value(None))),
                }
            }
            for key in object.keys() {
                if table.column(key.trim_matches('"')).is_none()
                    && table.column(&key.to_lowercase()).is_none()
                {
                    invalid!(
                        "INSERT JSON names unknown column {key} of {}",
                        table.qualified_name()
                    );
                }
            }
        }
    }
    let key_value = |name: &str| -> CqlResult<CqlValue> {
        match values.iter().find(|(column, _)| column == name) {
            Some((_, Bound::Value(Some(value)))) => Ok(value.clone()),
            Some(_) => invalid!("primary key column {name} must not be null or unset"),
            None => invalid!("INSERT must give primary key column {name}"),
        }
    };
    let partition_key = table
        .partition_key()
        .map(|c| key_value(&c.name))
        .collect::<CqlResult<Vec<_>>>()?;
    let only_static = values.iter().all(|(name, _)| {
        table
            .column(name)
            .is_some_and(|c| matches!(c.kind, ColumnKind::PartitionKey | ColumnKind::Static))
    });
    let clustering = if only_static
        && table.clustering().len() > 0
        && !values
            .iter()
            .any(|(name, _)| table.clustering().any(|c| c.name == *name))
    {
        Vec::new()
    } else {
        table
            .clustering()
            .map(|c| key_value(&c.name))
            .collect::<CqlResult<Vec<_>>>()?
    };
    let mut cells = Vec::new();
    for (name, bound) in &values {
        let Some(def) = table.column(name) else {
            continue;
        };
        if matches!(
            def.kind,
            ColumnKind::PartitionKey | ColumnKind::Clustering(_)
        ) {
            continue;
        }
        if let Bound::Value(value) = bound {
            cells.push((def.id, CellOp::Set(value.clone())));
        }
    }
    let mutation = Mutation {
        table: table.id,
        partition_key: partition_key.clone(),
        ops: vec![RowOp::Upsert {
            clustering: clustering.clone(),
            liveness: Liveness::RowMarker,
            ttl,
            cells,
        }],
    };
    let conditional = insert.if_not_exists.then(|| {
        let columns = table.columns().iter().map(|c| c.name.clone()).collect();
        (
            Read::Row {
                table: table.clone(),
                partition_key,
                clustering,
            },
            vec![CheckTemplate::Absent],
            table.clone(),
            columns,
        )
    });
    Ok(Plan {
        mutations: vec![mutation],
        conditional,
        derived: Vec::new(),
    })
}

/// The rows an UPDATE or DELETE names: full primary keys.
fn full_keys(
    table: &TableDef,
    relations: &[Relation],
    binds: &BoundValues,
    what: &str,
) -> CqlResult<(Vec<Vec<CqlValue>>, KeyRestriction)> {
    let Some(restriction) = key_restriction(table, relations, binds)? else {
        let names: Vec<&str> = table.partition_key().map(|c| c.name.as_str()).collect();
        invalid!(
            "{what} needs the whole partition key ({}) restricted by = or IN",
            names.join(", ")
        );
    };
    Ok((restriction.partition_keys.clone(), restriction))
}

fn condition_checks(
    table: &TableDef,
    condition: &Condition,
    binds: &BoundValues,
) -> CqlResult<(Vec<CheckTemplate>, Vec<String>)> {
    match condition {
        Condition::Exists => Ok((vec![CheckTemplate::Exists], Vec::new())),
        Condition::NotExists => Ok((vec![CheckTemplate::Absent], Vec::new())),
        Condition::Columns(conditions) => {
            let mut checks = Vec::new();
            let mut columns = Vec::new();
            for condition in conditions {
                let def = column_of(table, &condition.column)?;
                let (element, value_type) = match (&condition.element, def.ty.unfrozen()) {
                    (Some(element), CqlType::Map(key, value)) => (
                        Some(required_value(element, key, &condition.column, binds)?),
                        (**value).clone(),
                    ),
                    (Some(element), CqlType::List(value)) => (
                        Some(required_value(
                            element,
                            &CqlType::Int,
                            &condition.column,
                            binds,
                        )?),
                        (**value).clone(),
                    ),
                    (Some(_), _) => invalid!("column {} is not a map or list", condition.column),
                    (None, _) => (None, def.ty.clone()),
                };
                let operator = compare_op(condition.operator)?;
                let value =
                    match term_value(&condition.value, &value_type, &condition.column, binds)? {
                        Bound::Value(value) => value,
                        Bound::Unset => {
                            invalid!("IF {} compares with an unset value", condition.column)
                        }
                    };
                checks.push(CheckTemplate::Column {
                    column: def.id,
                    element,
                    operator,
                    value,
                });
                if !columns.contains(&condition.column) {
                    columns.push(condition.column.clone());
                }
            }
            Ok((checks, columns))
        }
    }
}

pub fn compare_op(operator: Operator) -> CqlResult<CompareOp> {
    Ok(match operator {
        Operator::Equal => CompareOp::Equal,
        Operator::NotEqual => CompareOp::NotEqual,
        Operator::Less => CompareOp::Less,
        Operator::LessOrEqual => CompareOp::LessOrEqual,
        Operator::Greater => CompareOp::Greater,
        Operator::GreaterOrEqual => CompareOp::GreaterOrEqual,
        other => invalid!("operator {other:?} is not supported in conditions"),
    })
}

fn conditional_read(
    table: &Arc<TableDef>,
    partition_keys: &[Vec<CqlValue>],
    clustering: &[Vec<CqlValue>],
    condition: &Option<Condition>,
    binds: &BoundValues,
) -> CqlResult<Option<Conditional>> {
    let Some(condition) = condition else {
        return Ok(None);
    };
    if partition_keys.len() != 1 || clustering.len() != 1 {
        invalid!("a conditional statement must name exactly one row (no IN)");
    }
    let (checks, columns) = condition_checks(table, condition, binds)?;
    let read = if clustering[0].len() == table.clustering().len() {
        Read::Row {
            table: table.clone(),
            partition_key: partition_keys[0].clone(),
            clustering: clustering[0].clone(),
        }
    } else {
        Read::Partition {
            table: table.clone(),
            partition_key: partition_keys[0].clone(),
            slice: Slice::all(),
            limit_rows: Some(1),
        }
    };
    Ok(Some((read, checks, table.clone(), columns)))
}

fn plan_update(
    context: &Context<'_>,
    update: &Update,
    binds: &BoundValues,
    arithmetic_allowed: bool,
) -> CqlResult<Plan> {
    let table = context.table(&update.table)?;
    let ttl = ttl_of(&update.using, binds)?;
    let (partition_keys, restriction) = full_keys(&table, &update.where_clause, binds, "UPDATE")?;
    let mut cells = Vec::new();
    let mut only_static = true;
    let mut derivations = Vec::new();
    for assignment in &update.assignments {
        let (column, assigned) = assignment_op(&table, assignment, binds)?;
        let def = column_of(&table, &column)?;
        match def.kind {
            ColumnKind::PartitionKey | ColumnKind::Clustering(_) => {
                invalid!("primary key column {column} cannot be updated")
            }
            ColumnKind::Regular => only_static = false,
            ColumnKind::Static => {}
        }
        match assigned {
            Assigned::Op(op) => cells.push((def.id, op)),
            Assigned::Unset => {}
            Assigned::Derived(derivation) => {
                if !arithmetic_allowed && matches!(derivation, Derivation::Arithmetic(..)) {
                    invalid!(
                        "`{column} = {column} +/- ...` on a {} column runs only inside BEGIN TRANSACTION (counters are not supported yet)",
                        def.ty
                    );
                }
                cells.push((def.id, CellOp::Set(None)));
                derivations.push((def.id, derivation));
            }
        }
    }
    let full_clustering = restriction.clustering_range.is_none()
        && restriction
            .clustering_prefixes
            .iter()
            .all(|p| p.len() == table.clustering().len());
    let clusterings: Vec<Vec<CqlValue>> = if full_clustering {
        restriction.clustering_prefixes.clone()
    } else if only_static {
        vec![Vec::new()]
    } else {
        let names: Vec<&str> = table.clustering().map(|c| c.name.as_str()).collect();
        invalid!(
            "UPDATE needs every clustering column ({}) restricted by = or IN",
            names.join(", ")
        );
    };
    let conditional = conditional_read(
        &table,
        &partition_keys,
        &clusterings,
        &update.condition,
        binds,
    )?;
    let derived = derived_cells(&table, &partition_keys, &clusterings, &cells, derivations)?;
    let mutations = partition_keys
        .iter()
        .map(|partition_key| Mutation {
            table: table.id,
            partition_key: partition_key.clone(),
            ops: clusterings
                .iter()
                .map(|clustering| RowOp::Upsert {
                    clustering: clustering.clone(),
                    liveness: Liveness::CellsOnly,
                    ttl,
                    cells: cells.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(Plan {
        derived,
        mutations,
        conditional,
    })
}

/// The derived cells of a statement that updates one row: each reads the
/// row and replaces its placeholder cell (the only cell of its column).
fn derived_cells(
    table: &Arc<TableDef>,
    partition_keys: &[Vec<CqlValue>],
    clusterings: &[Vec<CqlValue>],
    cells: &[(concord_storage::schema::ColumnId, CellOp)],
    derivations: Vec<(concord_storage::schema::ColumnId, Derivation)>,
) -> CqlResult<Vec<Derived>> {
    if derivations.is_empty() {
        return Ok(Vec::new());
    }
    let one_row = partition_keys.len() == 1
        && clusterings.len() == 1
        && clusterings[0].len() == table.clustering().len();
    if !one_row {
        invalid!(
            "`column = column +/- ...`, `list[i] = ...`, `DELETE list[i]` and `list = list - [...]` read the row first: the statement must name exactly one row (full primary key by =)"
        );
    }
    let mut derived = Vec::with_capacity(derivations.len());
    for (column, derivation) in derivations {
        if cells.iter().filter(|(id, _)| *id == column).count() != 1 {
            let name = table
                .column_by_id(column)
                .map_or("?", |def| def.name.as_str());
            invalid!(
                "column {name} has more than one operation in this statement; an index or arithmetic operation must be its only one"
            );
        }
        let read = Read::Row {
            table: table.clone(),
            partition_key: partition_keys[0].clone(),
            clustering: clusterings[0].clone(),
        };
        derived.push((0, 0, column, derivation, read));
    }
    Ok(derived)
}

fn elements_of(value: Option<CqlValue>) -> Vec<CqlValue> {
    match value {
        Some(CqlValue::List(elements) | CqlValue::Set(elements)) => elements,
        _ => Vec::new(),
    }
}

fn assignment_op(
    table: &TableDef,
    assignment: &Assignment,
    binds: &BoundValues,
) -> CqlResult<(String, Assigned)> {
    let value_of = |column: &str, term: &Term, ty: &CqlType| -> CqlResult<Bound> {
        term_value(term, ty, &format!("column {column}"), binds)
    };
    Ok(match assignment {
        Assignment::Set { column, value } => {
            let def = column_of(table, column)?;
            match value_of(column, value, &def.ty)? {
                Bound::Value(value) => (column.clone(), Assigned::Op(CellOp::Set(value))),
                Bound::Unset => (column.clone(), Assigned::Unset),
            }
        }
        Assignment::SetElement { column, key, value } => {
            let def = column_of(table, column)?;
            match def.ty.unfrozen() {
                CqlType::Map(key_type, value_type) if def.ty.is_multi_cell() => {
                    let key = required_value(key, key_type, column, binds)?;
                    match value_of(column, value, value_type)? {
                        Bound::Value(Some(value)) => (
                            column.clone(),
                            Assigned::Op(CellOp::MapPut(vec![(key, value)])),
                        ),
                        Bound::Value(None) => {
                            (column.clone(), Assigned::Op(CellOp::MapRemove(vec![key])))
                        }
                        Bound::Unset => (column.clone(), Assigned::Unset),
                    }
                }
                CqlType::List(element_type) if def.ty.is_multi_cell() => {
                    let index = list_index(key, column, binds)?;
                    match value_of(column, value, element_type)? {
                        Bound::Value(value) => (
                            column.clone(),
                            Assigned::Derived(Derivation::ListSetIndex(index, value)),
                        ),
                        Bound::Unset => (column.clone(), Assigned::Unset),
                    }
                }
                _ => invalid!("column {column} is not a non-frozen map or list"),
            }
        }
        Assignment::SetField {
            column,
            field,
            value,
        } => {
            let def = column_of(table, column)?;
            let CqlType::Udt(udt) = def.ty.unfrozen() else {
                invalid!("column {column} is not a user type")
            };
            if !def.ty.is_multi_cell() {
                invalid!("column {column} is frozen; set the whole value");
            }
            let Some(idx) = udt.fields.iter().position(|(name, _)| name == field) else {
                invalid!("type {} has no field {field}", udt.name);
            };
            match value_of(column, value, &udt.fields[idx].1)? {
                Bound::Value(value) => (
                    column.clone(),
                    Assigned::Op(CellOp::UdtSetField(idx, value)),
                ),
                Bound::Unset => (column.clone(), Assigned::Unset),
            }
        }
        Assignment::Add { column, value }
        | Assignment::Prepend { column, value }
        | Assignment::Subtract { column, value } => {
            let def = column_of(table, column)?;
            let operand_type = match (assignment, def.ty.unfrozen()) {
                (Assignment::Subtract { .. }, CqlType::Map(key, _)) => CqlType::Set(key.clone()),
                (_, ty) => ty.clone(),
            };
            let numeric = matches!(
                def.ty,
                CqlType::Tinyint
                    | CqlType::Smallint
                    | CqlType::Int
                    | CqlType::Bigint
                    | CqlType::Varint
                    | CqlType::Float
                    | CqlType::Double
            );
            if numeric && !matches!(assignment, Assignment::Prepend { .. }) {
                let operand = required_value(value, &def.ty, &format!("column {column}"), binds)?;
                let operation = if matches!(assignment, Assignment::Add { .. }) {
                    Arithmetic::Add
                } else {
                    Arithmetic::Subtract
                };
                return Ok((
                    column.clone(),
                    Assigned::Derived(Derivation::Arithmetic(operation, operand)),
                ));
            }
            if !def.ty.is_multi_cell() {
                invalid!(
                    "column {column} of type {}: `{column} = {column} +/- ...` needs a non-frozen collection or a number",
                    def.ty
                );
            }
            let operand = match value_of(column, value, &operand_type)? {
                Bound::Value(value) => value,
                Bound::Unset => return Ok((column.clone(), Assigned::Unset)),
            };
            let op = match (assignment, def.ty.unfrozen(), operand) {
                (Assignment::Add { .. }, CqlType::List(_), value) => {
                    CellOp::ListAppend(elements_of(value))
                }
                (Assignment::Prepend { .. }, CqlType::List(_), value) => {
                    CellOp::ListPrepend(elements_of(value))
                }
                (Assignment::Add { .. }, CqlType::Set(_), value) => {
                    CellOp::SetAdd(elements_of(value))
                }
                (Assignment::Subtract { .. }, CqlType::Set(_), value) => {
                    CellOp::SetRemove(elements_of(value))
                }
                (Assignment::Add { .. }, CqlType::Map(_, _), Some(CqlValue::Map(entries))) => {
                    CellOp::MapPut(entries)
                }
                (Assignment::Add { .. }, CqlType::Map(_, _), None) => CellOp::MapPut(Vec::new()),
                (Assignment::Subtract { .. }, CqlType::Map(_, _), value) => {
                    CellOp::MapRemove(elements_of(value))
                }
                (Assignment::Subtract { .. }, CqlType::List(_), value) => {
                    return Ok((
                        column.clone(),
                        Assigned::Derived(Derivation::ListRemoveValues(elements_of(value))),
                    ));
                }
                _ => invalid!(
                    "this operation does not apply to column {column} of type {}",
                    def.ty
                ),
            };
            (column.clone(), Assigned::Op(op))
        }
    })
}

fn plan_delete(context: &Context<'_>, delete: &Delete, binds: &BoundValues) -> CqlResult<Plan> {
    let table = context.table(&delete.table)?;
    if delete.using.timestamp.is_some() {
        return Err(using_timestamp_error());
    }
    let (partition_keys, restriction) = full_keys(&table, &delete.where_clause, binds, "DELETE")?;
    let mut derivations = Vec::new();
    let n_clustering = table.clustering().len();
    let full_row = restriction.clustering_range.is_none()
        && restriction
            .clustering_prefixes
            .iter()
            .all(|p| p.len() == n_clustering);
    let mut ops = Vec::new();
    let mut clusterings = restriction.clustering_prefixes.clone();
    if delete.targets.is_empty() {
        if n_clustering > 0 && full_row {
            ops.extend(clusterings.iter().map(|clustering| RowOp::DeleteRow {
                clustering: clustering.clone(),
            }));
        } else if restriction.clustering_range.is_none() && clusterings.iter().all(Vec::is_empty) {
            ops.push(RowOp::DeletePartition);
        } else {
            for prefix in &clusterings {
                ops.push(RowOp::DeleteRange(slice_for(
                    &table,
                    prefix,
                    &restriction.clustering_range,
                )));
            }
        }
    } else {
        let mut cells = Vec::new();
        let mut only_static = true;
        for DeleteTarget { column, element } in &delete.targets {
            if let (Some(index), CqlType::List(_)) =
                (element, column_of(&table, column)?.ty.unfrozen())
            {
                let def = column_of(&table, column)?;
                if !def.ty.is_multi_cell() {
                    invalid!("column {column} is a frozen list; set the whole value");
                }
                only_static &= def.kind == ColumnKind::Static;
                let index = list_index(index, column, binds)?;
                cells.push((def.id, CellOp::Set(None)));
                derivations.push((def.id, Derivation::ListSetIndex(index, None)));
                continue;
            }
            let def = column_of(&table, column)?;
            match def.kind {
                ColumnKind::PartitionKey | ColumnKind::Clustering(_) => {
                    invalid!("primary key column {column} cannot be deleted; delete the row")
                }
                ColumnKind::Regular => only_static = false,
                ColumnKind::Static => {}
            }
            let op = match (element, def.ty.unfrozen()) {
                (None, _) => CellOp::Set(None),
                (Some(Term::Identifier(field)), CqlType::Udt(udt)) => {
                    let Some(idx) = udt.fields.iter().position(|(name, _)| name == field) else {
                        invalid!("type {} has no field {field}", udt.name);
                    };
                    CellOp::UdtSetField(idx, None)
                }
                (Some(key), CqlType::Map(key_type, _)) => {
                    CellOp::MapRemove(vec![required_value(key, key_type, column, binds)?])
                }
                (Some(key), CqlType::Set(element_type)) => {
                    CellOp::SetRemove(vec![required_value(key, element_type, column, binds)?])
                }
                (Some(_), _) => {
                    invalid!("DELETE {column}[...] is supported for maps, sets and lists only")
                }
            };
            cells.push((def.id, op));
        }
        if !full_row {
            if only_static && clusterings.iter().all(Vec::is_empty) {
                clusterings = vec![Vec::new()];
            } else {
                invalid!("deleting columns needs every clustering column restricted by = or IN");
            }
        }
        for clustering in &clusterings {
            ops.push(RowOp::Upsert {
                clustering: clustering.clone(),
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: cells.clone(),
            });
        }
    }
    let conditional = conditional_read(
        &table,
        &partition_keys,
        &clusterings,
        &delete.condition,
        binds,
    )?;
    let cells_of_upsert = match ops.first() {
        Some(RowOp::Upsert { cells, .. }) => cells.clone(),
        _ => Vec::new(),
    };
    let derived = derived_cells(
        &table,
        &partition_keys,
        &clusterings,
        &cells_of_upsert,
        derivations,
    )?;
    let mutations = partition_keys
        .into_iter()
        .map(|partition_key| Mutation {
            table: table.id,
            partition_key,
            ops: ops.clone(),
        })
        .collect();
    Ok(Plan {
        mutations,
        conditional,
        derived,
    })
}

/// A list index (`l[i]`): a non-negative int.
fn list_index(term: &Term, column: &str, binds: &BoundValues) -> CqlResult<i64> {
    match required_value(
        term,
        &CqlType::Int,
        &format!("index of list {column}"),
        binds,
    )? {
        CqlValue::Int(index) if index >= 0 => Ok(i64::from(index)),
        other => invalid!("list index of {column} must be a non-negative int, got {other:?}"),
    }
}

/// Values as the wire carries them, for tests and the transaction block.
pub fn wire_value(value: &CqlValue, ty: &CqlType) -> CqlResult<WireValue> {
    Ok(WireValue::Some(
        native::serialize_to_vec(value, ty)
            .map_err(|error| CqlError::Invalid(error.to_string()))?,
    ))
}
