//! `concord.v1.Concord`: every call maps onto the paths the CQL endpoint and
//! the SQL router already use, so semantics cannot drift between endpoints.
//!
//! - `Execute`, `WriteRows`, `ReadRows`, `DeleteRows`: a CQL statement (the
//!   caller's, or one rendered here with bind markers and quoted names),
//!   prepared for its bind types, bound with the typed values, and run by the
//!   CQL executor (`cql::execute::execute_statement` → `Db::execute`).
//! - `Transact`: rendered as a `BEGIN TRANSACTION` block and planned by the
//!   CQL transaction planner (`cql::transaction::plan_block`) into one
//!   `Db::execute(Transaction { reads, condition, writes })`.
//! - `Sql`: `Db::sql_with` with the request's store and freshness; each
//!   record batch leaves as one Arrow IPC stream message.
//! - `Subscribe`: the change feed (`storage::feed::read_from`) from a
//!   position, filtered to one table; a position retention dropped is
//!   `POSITION_EXPIRED`.
//!
//! Blocking work (the executor, DataFusion, feed reads) runs on the
//! blocking pool, never on the runtime's workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cassandra_protocol::frame::Version;
use cassandra_protocol::frame::message_result::ResResultBody;
use cassandra_protocol::types::value::Value as WireValue;
use concord_api::codes;
use concord_api::v1::{self, concord_server::Concord, concord_server::ConcordServer};
use concord_cql_parser::ast::Statement;
use concord_storage::engine::Engine;
use concord_storage::feed::{self, FeedPosition, FeedRecord};
use concord_storage::rows::{CellOp, RowOp};
use concord_storage::schema::{ColumnKind, TableDef};
use concord_storage::types::CqlType;
use concord_storage::value::{CqlValue, native};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::Db;
use crate::cql::connection::Session;
use crate::cql::execute::{Context, execute_statement, prepare_statement};
use crate::cql::values::BoundValues;
use crate::cql::{NodeInFlight, Shared};
use crate::db::{FeedHold, ReadResult};
use crate::grpc::error::{ApiError, ApiResult};
use crate::grpc::values::{cql_type, from_cql, to_cql};
use crate::grpc::{
    CHANGE_STREAM_POLL, CHANGE_STREAM_READ_RECORDS, Limits, READ_ROWS_MAX, WRITE_ROWS_MAX,
};
use crate::sql::{Freshness, SqlOptions, StoreChoice};

/// The service, wrapped with the message size limits.
pub fn server(db: Arc<Db>, limits: Limits) -> ConcordServer<Service> {
    ConcordServer::new(Service::new(db, limits))
        .max_decoding_message_size(limits.message_bytes_max)
        .max_encoding_message_size(limits.message_bytes_max)
}

/// The Concord API over one database.
#[derive(Debug, Clone)]
pub struct Service {
    shared: Arc<Shared>,
    limits: Limits,
}

impl Service {
    pub fn new(db: Arc<Db>, limits: Limits) -> Service {
        let (events, _) = broadcast::channel(crate::cql::EVENTS_BUFFERED_MAX);
        let cql_limits = crate::cql::Limits::default();
        Service {
            shared: Arc::new(Shared {
                db,
                limits: cql_limits,
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                prepared: crate::cql::execute::PreparedCache::default(),
                events,
                in_flight: NodeInFlight::new(cql_limits.node_in_flight_requests_max),
            }),
            limits,
        }
    }
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::internal(format!("request task failed: {error}")))?
        .map_err(Status::from)
}

/// A CQL identifier, quoted (so any name, any case, round-trips).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn non_empty<'a>(value: &'a str, what: &str) -> ApiResult<&'a str> {
    if value.is_empty() {
        return Err(ApiError::request(format!("{what} is required")));
    }
    Ok(value)
}

fn keyspace_option(keyspace: &str) -> Option<String> {
    (!keyspace.is_empty()).then(|| keyspace.to_owned())
}

/// A statement's result: the columns and rows of a rows result (empty for
/// others).
struct Outcome {
    columns: Vec<(String, CqlType)>,
    rows: Vec<Vec<Option<CqlValue>>>,
}

impl Outcome {
    /// False only when the result is an LWT's `[applied] = false`.
    fn applied(&self) -> bool {
        match (self.columns.first(), self.rows.first()) {
            (Some((name, _)), Some(row)) if name == "[applied]" => {
                !matches!(row.first(), Some(Some(CqlValue::Boolean(false))))
            }
            _ => true,
        }
    }
}

/// Prepares `cql` (for its bind types), binds `values` and executes it.
fn run_cql(
    shared: &Shared,
    keyspace: Option<String>,
    cql: &str,
    values: &[v1::Value],
) -> ApiResult<Outcome> {
    let prepared = prepare_statement(shared, cql, keyspace.clone())?;
    let binds = bind(&prepared.bind_columns, values)?;
    let session = Session::default();
    let mut context = Context {
        shared,
        session: &session,
        keyspace,
        binds,
        page_rows: Some(READ_ROWS_MAX),
        paging_state: None,
        version: Version::V4,
        text: Some(cql),
    };
    let result = execute_statement(&mut context, &prepared.parsed.statement)?;
    outcome(result)
}

fn bind(
    columns: &[cassandra_protocol::frame::message_result::ColSpec],
    values: &[v1::Value],
) -> ApiResult<BoundValues> {
    if values.len() != columns.len() {
        return Err(ApiError::request(format!(
            "the statement has {} bind markers but {} values were sent",
            columns.len(),
            values.len()
        )));
    }
    let mut bound = Vec::with_capacity(values.len());
    for (value, column) in values.iter().zip(columns) {
        let ty = cql_type(&column.col_type)?;
        bound.push(match to_cql(value, &ty, &column.name)? {
            None => WireValue::Null,
            Some(value) => WireValue::Some(
                native::serialize_to_vec(&value, &ty)
                    .map_err(|error| ApiError::value(format!("{}: {error}", column.name)))?,
            ),
        });
    }
    Ok(BoundValues { values: bound })
}

fn outcome(result: ResResultBody) -> ApiResult<Outcome> {
    let ResResultBody::Rows(rows) = result else {
        return Ok(Outcome {
            columns: Vec::new(),
            rows: Vec::new(),
        });
    };
    if rows
        .metadata
        .flags
        .contains(cassandra_protocol::frame::message_result::RowsMetadataFlags::HAS_MORE_PAGES)
    {
        return Err(ApiError::new(
            Code::ResourceExhausted,
            codes::LIMIT_EXCEEDED,
            format!(
                "the result has more than READ_ROWS_MAX = {READ_ROWS_MAX} rows: add a LIMIT, or use Sql for large results"
            ),
        ));
    }
    let columns = rows
        .metadata
        .col_specs
        .iter()
        .map(|spec| Ok((spec.name.clone(), cql_type(&spec.col_type)?)))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.rows_content.len());
    for row in &rows.rows_content {
        let mut values = Vec::with_capacity(columns.len());
        for (cell, (name, ty)) in row.iter().zip(&columns) {
            values.push(match cell.as_slice() {
                None => None,
                Some(bytes) => Some(native::deserialize(ty, bytes).map_err(|error| {
                    ApiError::internal(format!("decode result column {name}: {error}"))
                })?),
            });
        }
        out.push(values);
    }
    Ok(Outcome { columns, rows: out })
}

fn kind_name(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::PartitionKey => "partition_key",
        ColumnKind::Clustering(_) => "clustering",
        ColumnKind::Static => "static",
        ColumnKind::Regular => "regular",
    }
}

fn column_schema(table: &TableDef, name: &str, ty: &CqlType) -> v1::ColumnSchema {
    v1::ColumnSchema {
        name: name.to_owned(),
        r#type: ty.to_string(),
        kind: table
            .column(name)
            .map(|column| kind_name(column.kind))
            .unwrap_or("")
            .to_owned(),
    }
}

/// The table, or `NOT_FOUND`.
fn table(db: &Db, keyspace: &str, name: &str) -> ApiResult<Arc<TableDef>> {
    non_empty(keyspace, "keyspace")?;
    non_empty(name, "table")?;
    Ok(db.table(keyspace, name)?)
}

/// `"k" = ? AND "c" = ?` over the key row's columns in key order, and the
/// values in the same order. Every named column must be a key column.
fn key_relations<'a>(
    table: &TableDef,
    key: &'a v1::Row,
) -> ApiResult<(String, Vec<&'a v1::Value>)> {
    for name in key.columns.keys() {
        match table.column(name) {
            Some(column)
                if matches!(
                    column.kind,
                    ColumnKind::PartitionKey | ColumnKind::Clustering(_)
                ) => {}
            Some(_) => {
                return Err(ApiError::request(format!(
                    "{name} is not a primary key column of {}",
                    table.qualified_name()
                )));
            }
            None => {
                return Err(ApiError::request(format!(
                    "{} has no column {name}",
                    table.qualified_name()
                )));
            }
        }
    }
    let mut relations = Vec::new();
    let mut values = Vec::new();
    for column in table.partition_key().chain(table.clustering()) {
        if let Some(value) = key.columns.get(&column.name) {
            relations.push(format!("{} = ?", quote(&column.name)));
            values.push(value);
        }
    }
    if relations.is_empty() {
        return Err(ApiError::request(format!(
            "the key names no column of {}'s partition key",
            table.qualified_name()
        )));
    }
    Ok((relations.join(" AND "), values))
}

fn qualified(table: &TableDef) -> String {
    format!("{}.{}", quote(&table.keyspace), quote(&table.name))
}

/// `INSERT INTO ks.t ("a", "b") VALUES (?, ?)` for a row, and its values.
fn insert_statement<'a>(
    table: &TableDef,
    row: &'a v1::Row,
) -> ApiResult<(String, Vec<&'a v1::Value>)> {
    if row.columns.is_empty() {
        return Err(ApiError::request("a row names no columns"));
    }
    let mut names: Vec<&String> = row.columns.keys().collect();
    names.sort();
    let mut values = Vec::with_capacity(names.len());
    for name in &names {
        if table.column(name).is_none() {
            return Err(ApiError::request(format!(
                "{} has no column {name}",
                table.qualified_name()
            )));
        }
        values.push(&row.columns[*name]);
    }
    let columns: Vec<String> = names.iter().map(|name| quote(name)).collect();
    let markers = vec!["?"; names.len()].join(", ");
    Ok((
        format!(
            "INSERT INTO {} ({}) VALUES ({markers})",
            qualified(table),
            columns.join(", ")
        ),
        values,
    ))
}

fn row_message(columns: &[(String, CqlType)], values: Vec<Option<CqlValue>>) -> v1::Row {
    v1::Row {
        columns: columns
            .iter()
            .zip(values)
            .map(|((name, ty), value)| (name.clone(), from_cql(value.as_ref(), ty)))
            .collect(),
    }
}

fn store_choice(store: &str) -> ApiResult<StoreChoice> {
    match store {
        "" | "auto" => Ok(StoreChoice::Auto),
        "row_store" => Ok(StoreChoice::RowStore),
        "columnar" => Ok(StoreChoice::Columnar),
        other => Err(ApiError::request(format!(
            "store {other:?} is not one of auto, row_store, columnar"
        ))),
    }
}

/// A complete Arrow IPC stream: the schema, then `batches` (none for an
/// empty result).
fn ipc_stream(
    schema: &arrow::datatypes::Schema,
    batches: &[arrow::record_batch::RecordBatch],
) -> ApiResult<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, schema)
        .map_err(|error| ApiError::internal(format!("arrow ipc: {error}")))?;
    batches
        .iter()
        .try_for_each(|batch| writer.write(batch))
        .and_then(|()| writer.finish())
        .map_err(|error| ApiError::internal(format!("arrow ipc: {error}")))?;
    drop(writer);
    Ok(bytes)
}

type SqlBatches = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::SqlResponse, Status>> + Send>>;
type Changes =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Concord for Service {
    async fn execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        let request = request.into_inner();
        let shared = self.shared.clone();
        let outcome = blocking(move || {
            non_empty(&request.cql, "cql")?;
            run_cql(
                &shared,
                keyspace_option(&request.keyspace),
                &request.cql,
                &request.values,
            )
        })
        .await?;
        let applied = outcome.applied();
        let keyspace_columns = outcome
            .columns
            .iter()
            .map(|(name, ty)| v1::ColumnSchema {
                name: name.clone(),
                r#type: ty.to_string(),
                kind: String::new(),
            })
            .collect();
        let rows = outcome
            .rows
            .into_iter()
            .map(|row| v1::ValueList {
                values: row
                    .iter()
                    .zip(&outcome.columns)
                    .map(|(value, (_, ty))| from_cql(value.as_ref(), ty))
                    .collect(),
            })
            .collect();
        Ok(Response::new(v1::ExecuteResponse {
            columns: keyspace_columns,
            rows,
            applied,
        }))
    }

    async fn describe_table(
        &self,
        request: Request<v1::DescribeTableRequest>,
    ) -> Result<Response<v1::DescribeTableResponse>, Status> {
        let request = request.into_inner();
        let table = table(&self.shared.db, &request.keyspace, &request.table)?;
        let mut columns: Vec<v1::ColumnSchema> = table
            .partition_key()
            .chain(table.clustering())
            .map(|column| column_schema(&table, &column.name, &column.ty))
            .collect();
        for column in table.columns() {
            if matches!(column.kind, ColumnKind::Static | ColumnKind::Regular) {
                columns.push(column_schema(&table, &column.name, &column.ty));
            }
        }
        Ok(Response::new(v1::DescribeTableResponse {
            keyspace: table.keyspace.clone(),
            table: table.name.clone(),
            columns,
            cql: crate::cql::system::create_table_statement(&table),
        }))
    }

    async fn list_tables(
        &self,
        request: Request<v1::ListTablesRequest>,
    ) -> Result<Response<v1::ListTablesResponse>, Status> {
        let request = request.into_inner();
        let schema = self.shared.db.schema();
        if !request.keyspace.is_empty() {
            schema.keyspace(&request.keyspace).map_err(ApiError::from)?;
        }
        let tables = schema
            .keyspaces()
            .filter(|keyspace| {
                if request.keyspace.is_empty() {
                    !keyspace.def.name.starts_with("system")
                } else {
                    keyspace.def.name == request.keyspace
                }
            })
            .flat_map(|keyspace| {
                keyspace.tables.values().map(|table| v1::TableName {
                    keyspace: table.keyspace.clone(),
                    table: table.name.clone(),
                })
            })
            .collect();
        Ok(Response::new(v1::ListTablesResponse { tables }))
    }

    async fn write_rows(
        &self,
        request: Request<v1::WriteRowsRequest>,
    ) -> Result<Response<v1::WriteRowsResponse>, Status> {
        let request = request.into_inner();
        let shared = self.shared.clone();
        blocking(move || {
            let table = table(&shared.db, &request.keyspace, &request.table)?;
            if request.rows.is_empty() {
                return Err(ApiError::request("rows is empty"));
            }
            if request.rows.len() > WRITE_ROWS_MAX {
                return Err(ApiError::new(
                    Code::ResourceExhausted,
                    codes::LIMIT_EXCEEDED,
                    format!(
                        "{} rows is over WRITE_ROWS_MAX = {WRITE_ROWS_MAX} per call",
                        request.rows.len()
                    ),
                ));
            }
            let mut statements = Vec::with_capacity(request.rows.len());
            let mut values = Vec::new();
            for row in &request.rows {
                let (statement, row_values) = insert_statement(&table, row)?;
                statements.push(statement);
                values.extend(row_values.into_iter().cloned());
            }
            let cql = if statements.len() == 1 {
                statements.remove(0)
            } else {
                format!("BEGIN BATCH {}; APPLY BATCH", statements.join("; "))
            };
            run_cql(&shared, None, &cql, &values)?;
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::WriteRowsResponse {}))
    }

    async fn read_rows(
        &self,
        request: Request<v1::ReadRowsRequest>,
    ) -> Result<Response<v1::ReadRowsResponse>, Status> {
        let request = request.into_inner();
        let shared = self.shared.clone();
        let rows = blocking(move || {
            let table = table(&shared.db, &request.keyspace, &request.table)?;
            let key = request.key.unwrap_or_default();
            let (relations, values) = key_relations(&table, &key)?;
            let columns = if request.columns.is_empty() {
                "*".to_owned()
            } else {
                for name in &request.columns {
                    if table.column(name).is_none() {
                        return Err(ApiError::request(format!(
                            "{} has no column {name}",
                            table.qualified_name()
                        )));
                    }
                }
                let quoted: Vec<String> = request.columns.iter().map(|c| quote(c)).collect();
                quoted.join(", ")
            };
            let limit = match request.limit {
                0 => READ_ROWS_MAX,
                limit => usize::try_from(limit)
                    .unwrap_or(READ_ROWS_MAX)
                    .min(READ_ROWS_MAX),
            };
            let cql = format!(
                "SELECT {columns} FROM {} WHERE {relations} LIMIT {limit}",
                qualified(&table)
            );
            let values: Vec<v1::Value> = values.into_iter().cloned().collect();
            let outcome = run_cql(&shared, None, &cql, &values)?;
            Ok(outcome
                .rows
                .into_iter()
                .map(|row| row_message(&outcome.columns, row))
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(Response::new(v1::ReadRowsResponse { rows }))
    }

    async fn delete_rows(
        &self,
        request: Request<v1::DeleteRowsRequest>,
    ) -> Result<Response<v1::DeleteRowsResponse>, Status> {
        let request = request.into_inner();
        let shared = self.shared.clone();
        blocking(move || {
            let table = table(&shared.db, &request.keyspace, &request.table)?;
            let key = request.key.unwrap_or_default();
            let (relations, values) = key_relations(&table, &key)?;
            let cql = format!("DELETE FROM {} WHERE {relations}", qualified(&table));
            let values: Vec<v1::Value> = values.into_iter().cloned().collect();
            run_cql(&shared, None, &cql, &values)?;
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::DeleteRowsResponse {}))
    }

    async fn transact(
        &self,
        request: Request<v1::TransactionRequest>,
    ) -> Result<Response<v1::TransactionResponse>, Status> {
        let request = request.into_inner();
        let shared = self.shared.clone();
        let response = blocking(move || transact(&shared, request)).await?;
        Ok(Response::new(response))
    }

    type SqlStream = SqlBatches;

    async fn sql(&self, request: Request<v1::SqlRequest>) -> Result<Response<SqlBatches>, Status> {
        let request = request.into_inner();
        let db = self.shared.db.clone();
        let (store, messages) = blocking(move || {
            non_empty(&request.query, "query")?;
            let options = SqlOptions {
                store: store_choice(&request.store)?,
                freshness: match request.max_staleness_ms {
                    0 => Freshness::Latest,
                    ms => Freshness::BoundedStaleness(Duration::from_millis(ms)),
                },
            };
            let result = db.sql_with(&request.query, &options)?;
            let messages = if result.batches.is_empty() {
                // No rows: one message with the schema alone, so a client
                // still learns the result's columns.
                vec![ipc_stream(&result.schema, &[])?]
            } else {
                result
                    .batches
                    .iter()
                    .map(|batch| ipc_stream(&batch.schema(), std::slice::from_ref(batch)))
                    .collect::<ApiResult<Vec<_>>>()?
            };
            Ok((result.store.name(), messages))
        })
        .await?;
        let stream = tokio_stream::iter(messages.into_iter().map(move |ipc| {
            Ok(v1::SqlResponse {
                ipc,
                store: store.to_owned(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    type SubscribeStream = Changes;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Changes>, Status> {
        let request = request.into_inner();
        let db = self.shared.db.clone();
        let table = table(&db, &request.keyspace, &request.table)?;
        // The stream holds the feed from the start (retention keeps what it
        // has not read); the hold comes before the floor check, so no
        // truncation slips between them.
        let hold = db.hold_feed(FeedPosition(0));
        let start = {
            let db = db.clone();
            blocking(move || {
                let floor = feed::retention_floor(&db.engine().snapshot())?;
                start_position(&db, &request, floor)
            })
            .await?
        };
        hold.advance(start);
        let (sender, receiver) = mpsc::channel(self.limits.change_stream_buffer);
        tokio::spawn(follow(db, table, start, hold, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn expired(position: FeedPosition, floor: FeedPosition) -> ApiError {
    ApiError::new(
        Code::FailedPrecondition,
        codes::POSITION_EXPIRED,
        format!(
            "feed position {} was dropped by retention (the oldest retained is {}): resubscribe from_position {} and reconcile by reading the table",
            position.0, floor.0, floor.0
        ),
    )
}

fn start_position(
    db: &Db,
    request: &v1::SubscribeRequest,
    floor: FeedPosition,
) -> ApiResult<FeedPosition> {
    if request.from_now {
        return Ok(db.feed().frontier().position_end);
    }
    let position = FeedPosition(request.from_position);
    if request.from_position == 0 {
        return Ok(floor);
    }
    if position < floor {
        return Err(expired(position, floor));
    }
    Ok(position)
}

/// Streams the table's changes from `next` until the client goes away.
async fn follow(
    db: Arc<Db>,
    table: Arc<TableDef>,
    mut next: FeedPosition,
    hold: FeedHold,
    sender: mpsc::Sender<Result<v1::SubscribeResponse, Status>>,
) {
    loop {
        hold.advance(next);
        let end = db.feed().frontier().position_end;
        if next >= end {
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(CHANGE_STREAM_POLL).await;
            continue;
        }
        let read = {
            let db = db.clone();
            blocking(move || {
                let snapshot = db.engine().snapshot();
                let floor = feed::retention_floor(&snapshot)?;
                if next < floor {
                    return Err(expired(next, floor));
                }
                Ok(feed::read_from(
                    &snapshot,
                    next,
                    end,
                    CHANGE_STREAM_READ_RECORDS,
                )?)
            })
            .await
        };
        let records = match read {
            Ok(records) => records,
            Err(status) => {
                let _ = sender.send(Err(status)).await;
                return;
            }
        };
        let Some(last) = records.last() else {
            // Positions below `end` are final; an empty read means none are left.
            next = end;
            continue;
        };
        let next_position = FeedPosition(last.position.0 + 1);
        let schema = db.schema();
        let current = schema
            .table_by_id(table.id)
            .cloned()
            .unwrap_or_else(|| table.clone());
        let changes: Vec<v1::Change> = records
            .iter()
            .filter(|record| record.table() == table.id)
            .flat_map(|record| changes(&current, record))
            .collect();
        next = next_position;
        if changes.is_empty() {
            continue;
        }
        let message = v1::SubscribeResponse {
            changes,
            next_position: next.0,
        };
        if sender.send(Ok(message)).await.is_err() {
            return;
        }
    }
}

fn key_row(columns: Vec<(&str, &CqlType)>, values: &[CqlValue]) -> v1::Row {
    v1::Row {
        columns: columns
            .into_iter()
            .zip(values)
            .map(|((name, ty), value)| (name.to_owned(), from_cql(Some(value), ty)))
            .collect(),
    }
}

/// The changes of one feed record: one per row operation.
fn changes(table: &TableDef, record: &FeedRecord) -> Vec<v1::Change> {
    let partition_columns: Vec<(&str, &CqlType)> = table
        .partition_key()
        .map(|column| (column.name.as_str(), &column.ty))
        .collect();
    let clustering_columns = || -> Vec<(&str, &CqlType)> {
        table
            .clustering()
            .map(|column| (column.name.as_str(), &column.ty))
            .collect()
    };
    let partition_key = key_row(partition_columns, &record.mutation.partition_key);
    record
        .mutation
        .ops
        .iter()
        .map(|op| {
            let (operation, clustering, cells) = match op {
                RowOp::Upsert {
                    clustering, cells, ..
                } => (
                    "upsert",
                    key_row(clustering_columns(), clustering),
                    cells
                        .iter()
                        .map(|(id, cell)| change_cell(table, *id, cell))
                        .collect(),
                ),
                RowOp::DeleteRow { clustering } => (
                    "delete_row",
                    key_row(clustering_columns(), clustering),
                    Vec::new(),
                ),
                RowOp::DeleteRange(_) => ("delete_range", v1::Row::default(), Vec::new()),
                RowOp::DeletePartition => ("delete_partition", v1::Row::default(), Vec::new()),
            };
            v1::Change {
                position: record.position.0,
                write_time: record.write_time.0,
                operation: operation.to_owned(),
                partition_key: Some(partition_key.clone()),
                clustering: Some(clustering),
                cells,
            }
        })
        .collect()
}

fn change_cell(table: &TableDef, id: concord_storage::schema::ColumnId, cell: &CellOp) -> v1::Cell {
    let (name, ty) = match table.column_by_id(id) {
        Some(column) => (column.name.clone(), column.ty.clone()),
        None => (format!("[dropped column {}]", id.0), CqlType::Blob),
    };
    let element = |ty: &CqlType| -> CqlType {
        match ty.unfrozen() {
            CqlType::List(inner) | CqlType::Set(inner) => inner.as_ref().clone(),
            CqlType::Map(key, _) => key.as_ref().clone(),
            other => other.clone(),
        }
    };
    let list = |values: &[CqlValue], ty: CqlType| {
        from_cql(
            Some(&CqlValue::List(values.to_vec())),
            &CqlType::List(Box::new(ty)),
        )
    };
    let (op, value) = match cell {
        CellOp::Set(value) => ("set", from_cql(value.as_ref(), &ty)),
        CellOp::ListAppend(values) => ("list_append", list(values, element(&ty))),
        CellOp::ListPrepend(values) => ("list_prepend", list(values, element(&ty))),
        CellOp::SetAdd(values) => ("set_add", list(values, element(&ty))),
        CellOp::SetRemove(values) => ("set_remove", list(values, element(&ty))),
        CellOp::MapPut(entries) => (
            "map_put",
            from_cql(Some(&CqlValue::Map(entries.clone())), &ty),
        ),
        CellOp::MapRemove(keys) => ("map_remove", list(keys, element(&ty))),
        CellOp::UdtSetField(idx, value) => {
            let field_ty = match ty.unfrozen() {
                CqlType::Udt(def) => def.fields.get(*idx).map(|(_, t)| t.clone()),
                _ => None,
            };
            (
                "udt_set_field",
                from_cql(value.as_ref(), &field_ty.unwrap_or(CqlType::Blob)),
            )
        }
    };
    v1::Cell {
        column: name,
        op: op.to_owned(),
        value: Some(value),
    }
}

const CONDITION_OPERATORS: [&str; 6] = ["=", "!=", "<", "<=", ">", ">="];

/// `Transact`: rendered as a CQL transaction block with bind markers, then
/// planned and executed exactly as the CQL endpoint does.
fn transact(
    shared: &Shared,
    request: v1::TransactionRequest,
) -> ApiResult<v1::TransactionResponse> {
    let keyspace = non_empty(&request.keyspace, "keyspace")?.to_owned();
    let db = &shared.db;
    let mut text = String::from("BEGIN TRANSACTION\n");
    let mut values: Vec<v1::Value> = Vec::new();
    let mut read_tables: HashMap<String, (Arc<TableDef>, v1::Row)> = HashMap::new();
    for read in &request.reads {
        if read.name.is_empty()
            || !read
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || read.name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(ApiError::request(format!(
                "read name {:?} must be a plain lower case identifier ([a-z_][a-z0-9_]*)",
                read.name
            )));
        }
        let table = table(db, &keyspace, &read.table)?;
        let key = read.key.clone().unwrap_or_default();
        let (relations, key_values) = key_relations(&table, &key)?;
        text.push_str(&format!(
            "  LET {} = (SELECT * FROM {} WHERE {relations} LIMIT 1);\n",
            read.name,
            qualified(&table)
        ));
        values.extend(key_values.into_iter().cloned());
        if read_tables
            .insert(read.name.to_lowercase(), (table, key))
            .is_some()
        {
            return Err(ApiError::request(format!(
                "read name {} is used twice",
                read.name
            )));
        }
    }
    let mut conditions = Vec::new();
    for condition in &request.conditions {
        if !read_tables.contains_key(&condition.read.to_lowercase()) {
            return Err(ApiError::request(format!(
                "condition names read {:?}, which the transaction does not read",
                condition.read
            )));
        }
        let subject = if condition.column.is_empty() {
            condition.read.clone()
        } else {
            format!("{}.{}", condition.read, quote(&condition.column))
        };
        let op = condition.op.trim().to_uppercase();
        match op.as_str() {
            "IS NULL" | "IS NOT NULL" => conditions.push(format!("{subject} {op}")),
            op if CONDITION_OPERATORS.contains(&op) => {
                if condition.column.is_empty() {
                    return Err(ApiError::request(format!(
                        "a {op} condition compares a column: name one"
                    )));
                }
                conditions.push(format!("{subject} {op} ?"));
                values.push(condition.value.clone().unwrap_or_default());
            }
            other => {
                return Err(ApiError::request(format!(
                    "condition operator {other:?} is not one of =, !=, <, <=, >, >=, IS NULL, IS NOT NULL"
                )));
            }
        }
    }
    let mut modifications = Vec::new();
    for write in &request.writes {
        let table = table(db, &keyspace, &write.table)?;
        match &write.kind {
            Some(v1::transaction_write::Kind::Upsert(row)) => {
                let (statement, row_values) = insert_statement(&table, row)?;
                modifications.push(statement);
                values.extend(row_values.into_iter().cloned());
            }
            Some(v1::transaction_write::Kind::Delete(key)) => {
                let (relations, key_values) = key_relations(&table, key)?;
                modifications.push(format!(
                    "DELETE FROM {} WHERE {relations}",
                    qualified(&table)
                ));
                values.extend(key_values.into_iter().cloned());
            }
            None => return Err(ApiError::request("a write is neither upsert nor delete")),
        }
    }
    let indent = if conditions.is_empty() { "  " } else { "    " };
    if !conditions.is_empty() {
        text.push_str(&format!("  IF {} THEN\n", conditions.join(" AND ")));
    }
    for statement in &modifications {
        text.push_str(&format!("{indent}{statement};\n"));
    }
    if !conditions.is_empty() {
        text.push_str("  END IF\n");
    }
    text.push_str("COMMIT TRANSACTION");
    let prepared = prepare_statement(shared, &text, Some(keyspace.clone()))?;
    let binds = bind(&prepared.bind_columns, &values)?;
    let Statement::Transaction(block) = &prepared.parsed.statement else {
        return Err(ApiError::internal(
            "a rendered transaction did not parse as one",
        ));
    };
    let session = Session::default();
    let context = Context {
        shared,
        session: &session,
        keyspace: Some(keyspace),
        binds,
        page_rows: None,
        paging_state: None,
        version: Version::V4,
        text: None,
    };
    let planned = crate::cql::transaction::plan_block(&context, block)?;
    let lets = planned.lets.clone();
    let result = db.execute(planned.transaction)?;
    let mut reads = HashMap::new();
    for (name, read, table) in lets {
        let Some((_, key)) = read_tables.get(&name.to_lowercase()) else {
            continue;
        };
        let row = match result.reads.get(read) {
            Some(ReadResult::Row(Some(row))) => Some((row.clone(), None)),
            Some(ReadResult::Partition(Some(partition))) => partition
                .rows
                .first()
                .cloned()
                .map(|row| (row, partition.static_row.clone())),
            _ => None,
        };
        let Some((row, static_row)) = row else {
            continue;
        };
        let mut columns: HashMap<String, v1::Value> = key.columns.clone();
        for (column, value) in table.clustering().zip(&row.clustering) {
            columns.insert(column.name.clone(), from_cql(Some(value), &column.ty));
        }
        for (id, value) in row
            .columns
            .iter()
            .chain(static_row.iter().flat_map(|s| s.columns.iter()))
        {
            if let Some(column) = table.column_by_id(*id) {
                columns.insert(
                    column.name.clone(),
                    from_cql(Some(&value.value), &column.ty),
                );
            }
        }
        reads.insert(name, v1::Row { columns });
    }
    Ok(v1::TransactionResponse {
        reads,
        applied: result.applied,
        write_time: result.execute_at.0,
    })
}
