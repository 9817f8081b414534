//! The Arrow Flight SQL service: ADBC's Flight SQL driver, pyarrow and other
//! Arrow-native clients run SQL and list tables, with results as Arrow.
//!
//! ```text
//! GetFlightInfo(CommandStatementQuery q)  → plan q in the catalog context
//!                                           (schema only, no data) → FlightInfo{schema,
//!                                           ticket = TicketStatementQuery{handle = q}}
//! DoGet(TicketStatementQuery q)           → Db::sql_with(q) (the router, the query's
//!                                           snapshot taken now) → Arrow IPC stream
//! CreatePreparedStatement(q)              → handle in a bounded map (PREPARED_STATEMENTS_MAX)
//! DoGet(Any RangeFetch)                   → Db::range_source_ready, then the range's raw rows
//!                                           (crate::bootstrap, node to node)
//! GetCatalogs / GetDbSchemas / GetTables / GetTableTypes / GetSqlInfo → from Db::schema()
//! errors → tonic Status (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) with the
//!          SQLSTATE in brackets, as the Postgres endpoint reports it
//! ```
//!
//! It is a second service on the gRPC port (see `design/sql-endpoints.md`):
//! [`service`] builds it for the node's tonic server.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::DoPutPreparedStatementResult;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::{Stream, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::Db;
use crate::pgwire::catalog::{Catalog, DATABASE_NAME};
use crate::pgwire::sqlstate;
use crate::sql::SqlOptions;

/// Prepared statements held at once over all clients; more fail with
/// `RESOURCE_EXHAUSTED` until some are closed.
pub const PREPARED_STATEMENTS_MAX: usize = 1024;
/// The largest gRPC message the service decodes or encodes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The longest SQL text accepted.
pub const QUERY_BYTES_MAX: usize = 1 << 20;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// The Flight SQL service over one node.
pub struct FlightSql {
    db: Arc<Db>,
    catalog: Catalog,
    /// Handle → (query with `$n` placeholders, bound parameter literals).
    prepared: Mutex<HashMap<u64, (String, Vec<Expr>)>>,
    next_handle: AtomicU64,
    sql_info: SqlInfoData,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql").finish_non_exhaustive()
    }
}

/// The Flight SQL service, ready for `tonic::transport::Server::add_service`.
///
/// # Errors
/// `Internal` if the static SQL info does not build (a bug).
pub fn service(db: Arc<Db>) -> Result<FlightServiceServer<FlightSql>, Status> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "Concord");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
    let sql_info = info
        .build()
        .map_err(|error| Status::internal(format!("sql info: {error}")))?;
    Ok(FlightServiceServer::new(FlightSql {
        catalog: Catalog::new(Arc::clone(&db)),
        db,
        prepared: Mutex::new(HashMap::new()),
        next_handle: AtomicU64::new(1),
        sql_info,
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

/// A Postgres-endpoint error (with its SQLSTATE) as a gRPC status.
fn status(error: ::pgwire::error::PgWireError) -> Status {
    let (code, message) = match &error {
        ::pgwire::error::PgWireError::UserError(info) => (info.code.clone(), info.message.clone()),
        other => (sqlstate::INTERNAL_ERROR.to_owned(), other.to_string()),
    };
    let text = format!("[{code}] {message}");
    match code.as_str() {
        sqlstate::UNDEFINED_TABLE => Status::not_found(text),
        sqlstate::FEATURE_NOT_SUPPORTED => Status::unimplemented(text),
        sqlstate::INSUFFICIENT_RESOURCES
        | sqlstate::OUT_OF_MEMORY
        | sqlstate::PROGRAM_LIMIT_EXCEEDED => Status::resource_exhausted(text),
        sqlstate::PREREQUISITE_STATE | sqlstate::SNAPSHOT_TOO_OLD => Status::unavailable(text),
        sqlstate::INTERNAL_ERROR => Status::internal(text),
        _ => Status::invalid_argument(text),
    }
}

fn stream_batches(schema: SchemaRef, batches: Vec<arrow::array::RecordBatch>) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Box::pin(stream)
}

/// A metadata command's answer: its builder's one batch as a stream.
fn one_batch<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<arrow::array::RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|error| Status::internal(error.to_string()))?;
    Ok(Response::new(stream_batches(schema, vec![batch])))
}

/// A metadata command's `FlightInfo`: its result schema, and the command
/// itself as the ticket `do_get_*` answers.
fn command_info<T: ProstMessageExt>(
    schema: &Schema,
    query: &T,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    info_for(schema, query.as_any().encode_to_vec(), request.into_inner())
}

fn info_for(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|error| Status::internal(format!("encode schema: {error}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn handle_id(handle: &[u8]) -> Result<u64, Status> {
    <[u8; 8]>::try_from(handle)
        .map(u64::from_be_bytes)
        .map_err(|_| Status::invalid_argument("malformed prepared statement handle"))
}

/// `?` placeholders (the ADBC / JDBC convention) as `$1`, `$2`, ... in
/// text order, so DataFusion can plan them.
fn number_placeholders(query: &str) -> Result<String, Status> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, query).map_err(|error| {
        Status::invalid_argument(format!(
            "[{}] syntax error: {error}",
            sqlstate::SYNTAX_ERROR
        ))
    })?;
    if statements.len() != 1 {
        return Err(Status::invalid_argument(format!(
            "[{}] send exactly one statement (got {})",
            sqlstate::SYNTAX_ERROR,
            statements.len()
        )));
    }
    let mut statement = statements.remove(0);
    let mut next = 0usize;
    let mut questions = false;
    let _ = visit_expressions_mut(&mut statement, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &mut value.value
            && name == "?"
        {
            next += 1;
            questions = true;
            *name = format!("${next}");
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(if questions {
        statement.to_string()
    } else {
        query.to_owned()
    })
}

/// A bound Arrow parameter as a SQL literal.
fn scalar_literal(value: &ScalarValue) -> Expr {
    if value.is_null() {
        return Expr::value(Value::Null);
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Expr::value(Value::Boolean(*b)),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Float32(_)
        | ScalarValue::Float64(_) => Expr::value(Value::Number(value.to_string(), false)),
        other => Expr::value(Value::SingleQuotedString(other.to_string())),
    }
}

impl FlightSql {
    /// The result schema and the parameter schema (`$1`, `$2`, ...) of
    /// `query`, planned without reading data.
    async fn plan_with_parameters(&self, query: &str) -> Result<(SchemaRef, Schema), Status> {
        self.check(query)?;
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, query).map_err(|error| {
            Status::invalid_argument(format!(
                "[{}] syntax error: {error}",
                sqlstate::SYNTAX_ERROR
            ))
        })?;
        let statement = statements
            .pop()
            .ok_or_else(|| Status::invalid_argument("[42601] empty statement"))?;
        if crate::pgwire::dml::is_dml(&statement) {
            return Err(Status::unimplemented(
                "[0A000] the Flight SQL endpoint is read-only: write through CQL, the gRPC API or the Postgres endpoint",
            ));
        }
        let plan = self.catalog.plan(&statement).await.map_err(status)?;
        let parameters = Catalog::ordered_parameters(&plan).map_err(status)?;
        let fields: Vec<arrow::datatypes::Field> = parameters
            .into_iter()
            .map(|(n, ty)| {
                arrow::datatypes::Field::new(
                    format!("${n}"),
                    ty.unwrap_or(arrow::datatypes::DataType::Utf8),
                    true,
                )
            })
            .collect();
        Ok((
            Arc::new(plan.schema().as_arrow().clone()),
            Schema::new(fields),
        ))
    }

    fn check(&self, query: &str) -> Result<(), Status> {
        if query.len() > QUERY_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "[54000] the query is {} bytes; Flight SQL accepts at most {QUERY_BYTES_MAX}",
                query.len()
            )));
        }
        Ok(())
    }

    /// The result schema of `query`, planned without reading data.
    async fn plan_schema(&self, query: &str) -> Result<SchemaRef, Status> {
        self.check(query)?;
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, query).map_err(|error| {
            Status::invalid_argument(format!(
                "[{}] syntax error: {error}",
                sqlstate::SYNTAX_ERROR
            ))
        })?;
        if statements.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "[{}] send exactly one statement (got {})",
                sqlstate::SYNTAX_ERROR,
                statements.len()
            )));
        }
        let statement = statements.remove(0);
        if crate::pgwire::dml::is_dml(&statement) {
            return Err(Status::unimplemented(
                "[0A000] the Flight SQL endpoint is read-only: write through CQL, the gRPC API or the Postgres endpoint",
            ));
        }
        let plan = self.catalog.plan(&statement).await.map_err(status)?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    async fn execute(&self, query: String) -> Result<Response<DoGetStream>, Status> {
        self.check(&query)?;
        let db = Arc::clone(&self.db);
        let text = query.clone();
        let result =
            tokio::task::spawn_blocking(move || db.sql_with(&text, &SqlOptions::default()))
                .await
                .map_err(|error| Status::internal(format!("query task failed: {error}")))?
                .map_err(|error| status(sqlstate::from_sql(&error)))?;
        Ok(Response::new(stream_batches(result.schema, result.batches)))
    }

    /// The prepared statement's query with its bound parameters substituted.
    fn prepared_query(&self, handle: &[u8]) -> Result<String, Status> {
        let id = handle_id(handle)?;
        let (query, params) = self.prepared.lock().get(&id).cloned().ok_or_else(|| {
            Status::not_found("unknown prepared statement handle (closed or never created)")
        })?;
        if params.is_empty() {
            return Ok(query);
        }
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, &query).map_err(|error| {
            Status::invalid_argument(format!(
                "[{}] syntax error: {error}",
                sqlstate::SYNTAX_ERROR
            ))
        })?;
        let mut statement = statements
            .pop()
            .ok_or_else(|| Status::invalid_argument("[42601] empty statement"))?;
        crate::pgwire::handler::substitute(&mut statement, &params).map_err(status)?;
        Ok(statement.to_string())
    }

    fn tables(&self) -> Vec<(String, String, SchemaRef)> {
        let schema = self.db.schema();
        let mut tables = Vec::new();
        for keyspace in schema.keyspaces() {
            for table in keyspace.tables.values() {
                if let Ok(arrow_schema) = concord_columnar::sql::table_schema(table) {
                    tables.push((keyspace.def.name.clone(), table.name.clone(), arrow_schema));
                }
            }
        }
        tables
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.plan_schema(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        info_for(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let query = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket's query is not UTF-8"))?;
        self.execute(query).await
    }

    /// A fragment of a distributed query another node coordinates
    /// (`crate::dist_sql`, design/cluster.md "Distributed analytics"), a
    /// replica watermark probe, or a token range's rows for a node gaining
    /// the range (`crate::bootstrap`).
    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: arrow_flight::sql::Any,
    ) -> Result<Response<DoGetStream>, Status> {
        if message.type_url == crate::dist_sql::PROBE_TICKET_TYPE {
            let columnar = self
                .db
                .columnar()
                .ok_or_else(|| Status::failed_precondition("this node has no columnar replica"))?;
            let (watermark, horizon) = columnar.watermarks();
            let batch = crate::dist_sql::probe_answer(watermark.0, horizon.0);
            let schema = batch
                .as_ref()
                .map(arrow::array::RecordBatch::schema)
                .map_err(|error| Status::internal(error.to_string()))?;
            return one_batch(schema, batch);
        }
        if message.type_url == crate::bootstrap::RANGE_FETCH_TICKET_TYPE {
            let request = crate::bootstrap::RangeFetch::from_ticket_value(&message.value)?;
            // The epoch seal's readiness: a source serves a range only once
            // every transaction of the old epoch applied here.
            self.db
                .range_source_ready(&request.range(), request.seal_epoch)
                .map_err(|reason| {
                    Status::unavailable(format!(
                        "{}: {reason}",
                        crate::bootstrap::RANGE_SOURCE_NOT_READY
                    ))
                })?;
            return Ok(Response::new(crate::bootstrap::range_fetch_stream(
                Arc::clone(&self.db),
                request,
            )?));
        }
        if message.type_url != crate::dist_sql::FRAGMENT_TICKET_TYPE {
            return Err(Status::unimplemented(format!(
                "do_get: unknown ticket type {}",
                message.type_url
            )));
        }
        if message.value.len() > crate::dist_sql::FRAGMENT_TICKET_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "a fragment ticket of {} bytes (FRAGMENT_TICKET_BYTES_MAX {})",
                message.value.len(),
                crate::dist_sql::FRAGMENT_TICKET_BYTES_MAX
            )));
        }
        let request: concord_columnar::sql::distributed::FragmentRequest =
            serde_json::from_slice(&message.value)
                .map_err(|error| Status::invalid_argument(format!("fragment ticket: {error}")))?;
        let columnar = self
            .db
            .columnar()
            .ok_or_else(|| Status::failed_precondition("this node has no columnar replica"))?;
        let (schema, batches) = columnar
            .fragment_async(request)
            .await
            .map_err(|error| status(sqlstate::from_sql(&error)))?;
        Ok(Response::new(stream_batches(schema, batches)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let numbered = number_placeholders(&query.query)?;
        let (schema, parameter_types) = self.plan_with_parameters(&numbered).await?;
        let IpcMessage(parameter_schema) = SchemaAsIpc::new(&parameter_types, &Default::default())
            .try_into()
            .map_err(|error: arrow::error::ArrowError| {
                Status::internal(format!("encode schema: {error}"))
            })?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &Default::default())
            .try_into()
            .map_err(|error: arrow::error::ArrowError| {
                Status::internal(format!("encode schema: {error}"))
            })?;
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        {
            let mut prepared = self.prepared.lock();
            if prepared.len() >= PREPARED_STATEMENTS_MAX {
                return Err(Status::resource_exhausted(format!(
                    "{PREPARED_STATEMENTS_MAX} prepared statements are open (PREPARED_STATEMENTS_MAX): close some"
                )));
            }
            prepared.insert(id, (numbered, Vec::new()));
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: id.to_be_bytes().to_vec().into(),
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let id = handle_id(&query.prepared_statement_handle)?;
        self.prepared.lock().remove(&id);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let id = handle_id(&command.prepared_statement_handle)?;
        let stream = FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(arrow_flight::error::FlightError::from),
        );
        let batches: Vec<arrow::array::RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|error| Status::invalid_argument(format!("parameters: {error}")))?;
        let rows: usize = batches.iter().map(|batch| batch.num_rows()).sum();
        if rows > 1 {
            return Err(Status::unimplemented(
                "[0A000] bind one row of parameters per execution",
            ));
        }
        let mut params = Vec::new();
        if let Some(batch) = batches.iter().find(|batch| batch.num_rows() == 1) {
            for column in batch.columns() {
                let value = ScalarValue::try_from_array(column, 0)
                    .map_err(|error| Status::invalid_argument(format!("parameter: {error}")))?;
                params.push(scalar_literal(&value));
            }
        }
        let mut prepared = self.prepared.lock();
        let entry = prepared.get_mut(&id).ok_or_else(|| {
            Status::not_found("unknown prepared statement handle (closed or never created)")
        })?;
        entry.1 = params;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(command.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let query = self.prepared_query(&command.prepared_statement_handle)?;
        let schema = self.plan_schema(&query).await?;
        info_for(
            &schema,
            command.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let query = self.prepared_query(&command.prepared_statement_handle)?;
        self.execute(query).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(DATABASE_NAME);
        one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for keyspace in self.db.schema().keyspaces() {
            builder.append(DATABASE_NAME, &keyspace.def.name);
        }
        one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for (keyspace, table, arrow_schema) in self.tables() {
            builder
                .append(DATABASE_NAME, keyspace, table, "TABLE", &arrow_schema)
                .map_err(|error| Status::internal(error.to_string()))?;
        }
        one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        one_batch(builder.schema(), builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.clone().into_builder(&self.sql_info).schema(),
            &query,
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        one_batch(builder.schema(), builder.build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
