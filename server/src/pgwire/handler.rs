//! The protocol handlers: startup (no authentication, `server_version`
//! 15.0), simple query, and the extended protocol (Parse plans the statement
//! in the catalog context to describe parameters and result columns; Execute
//! binds parameters as literals and runs through `Db::sql_with`).
//!
//! Session settings live in the connection's session extensions:
//! `SET concord.freshness = 'latest' | 'watermark' | '250ms' | '2s'` and
//! `SET concord.store = 'auto' | 'row_store' | 'columnar'` become the
//! `SqlOptions` of every query of that connection.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use ::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use ::pgwire::api::portal::{Format, Portal};
use ::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use ::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use ::pgwire::api::stmt::QueryParser;
use ::pgwire::api::store::PortalStore;
use ::pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use ::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use ::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Statement, Value, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, SinkExt};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::Db;
use crate::cql;
use crate::pgwire::catalog::{Catalog, SERVER_VERSION};
use crate::pgwire::{Limits, dml, sqlstate};
use crate::sql::{Freshness, SqlOptions, StoreChoice};

/// Every handler of the endpoint.
#[derive(Debug)]
pub struct Handlers {
    service: Arc<Service>,
    startup: Arc<Startup>,
}

impl Handlers {
    pub fn new(db: Arc<Db>, limits: Limits, address: SocketAddr) -> Handlers {
        let (events, _) = broadcast::channel(cql::EVENTS_BUFFERED_MAX);
        let cql_limits = cql::Limits::default();
        let cql = Arc::new(cql::Shared {
            db: Arc::clone(&db),
            limits: cql_limits,
            address,
            prepared: cql::execute::PreparedCache::default(),
            events,
            in_flight: cql::NodeInFlight::new(cql_limits.node_in_flight_requests_max),
        });
        Handlers {
            service: Arc::new(Service {
                inner: Arc::new(Inner {
                    catalog: Catalog::new(Arc::clone(&db)),
                    db,
                    limits,
                    cql,
                    compat: PostgresCompatibilityParser::new(),
                }),
            }),
            startup: Arc::new(Startup),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.service)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.service)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}

/// Startup without authentication; reports `server_version` 15.0.
#[derive(Debug)]
pub struct Startup;

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
            client.set_pid_and_secret_key(pid, secret);
            let mut parameters = DefaultServerParameterProvider::default();
            parameters.server_version = SERVER_VERSION.to_owned();
            finish_authentication(client, &parameters).await?;
        }
        Ok(())
    }
}

/// One connection's settings.
#[derive(Debug, Default)]
struct Session {
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    options: SqlOptions,
    /// Inside `BEGIN` ... `COMMIT`/`ROLLBACK`.
    in_block: bool,
    /// Writes committed since `BEGIN` (each statement commits on its own).
    block_writes: usize,
    /// Other `SET`s, echoed by `SHOW`.
    settings: BTreeMap<String, String>,
}

fn session<C: ClientInfo + ?Sized>(client: &C) -> Arc<Session> {
    client
        .session_extensions()
        .get_or_insert_with(Session::default)
}

/// A statement that changes or reads session state only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Set {
        name: String,
        value: String,
    },
    Show(String),
    Begin,
    Commit,
    Rollback,
    /// Accepted without effect (DISCARD, RESET, DEALLOCATE, ...): its tag.
    Ignored(String),
}

/// What a parsed statement is and where it runs.
#[derive(Debug, Clone)]
pub enum Command {
    Session(SessionCommand),
    /// A query over keyspace tables: `Db::sql_with`.
    Data(Box<Statement>),
    /// A query over pg_catalog / information_schema / no table: the catalog
    /// context.
    Catalog(Box<Statement>),
    Dml(Box<Statement>),
    Empty,
}

/// A parsed (extended-protocol) statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The statement's text as sent (data queries run it verbatim when it
    /// has no parameters, so store hints in comments survive).
    text: String,
    command: Command,
    param_types: Vec<Type>,
    result_schema: Option<SchemaRef>,
}

/// The endpoint's state, shared by every connection; also the extended
/// protocol's parser.
pub struct Inner {
    db: Arc<Db>,
    limits: Limits,
    catalog: Catalog,
    cql: Arc<cql::Shared>,
    compat: PostgresCompatibilityParser,
}

impl Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Strips leading spaces and comments.
fn strip_leading_comments(text: &str) -> &str {
    let mut rest = text.trim_start();
    loop {
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment
                .find('\n')
                .map_or("", |end| &comment[end + 1..])
                .trim_start();
        } else if let Some(comment) = rest.strip_prefix("/*") {
            match comment.find("*/") {
                Some(end) => rest = comment[end + 2..].trim_start(),
                None => return rest,
            }
        } else {
            return rest;
        }
    }
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    value
        .strip_prefix('\'')
        .and_then(|inner| inner.strip_suffix('\''))
        .or_else(|| {
            value
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
        })
        .unwrap_or(value)
        .to_owned()
}

/// Recognises session statements by their leading words.
pub fn session_command(text: &str) -> Option<SessionCommand> {
    let text = strip_leading_comments(text)
        .trim_end()
        .trim_end_matches(';')
        .trim();
    let lower = text.to_ascii_lowercase();
    let first = lower.split_whitespace().next()?;
    Some(match first {
        "begin" | "start" => SessionCommand::Begin,
        "commit" | "end" => SessionCommand::Commit,
        "rollback" | "abort" => SessionCommand::Rollback,
        "set" => {
            let rest = text[3..].trim_start();
            let rest_lower = rest.to_ascii_lowercase();
            let rest = if rest_lower.starts_with("session ") {
                rest[8..].trim_start()
            } else if rest_lower.starts_with("local ") {
                rest[6..].trim_start()
            } else {
                rest
            };
            let rest_lower = rest.to_ascii_lowercase();
            if rest_lower.starts_with("transaction") || rest_lower.starts_with("characteristics") {
                return Some(SessionCommand::Ignored("SET".into()));
            }
            let (name, value) = if let Some((name, value)) = rest.split_once('=') {
                (name, value)
            } else if let Some(position) = rest_lower.find(" to ") {
                (&rest[..position], &rest[position + 4..])
            } else if rest_lower.starts_with("time zone ") {
                ("timezone", &rest[10..])
            } else {
                (rest, "")
            };
            SessionCommand::Set {
                name: name.trim().to_ascii_lowercase(),
                value: unquote(value),
            }
        }
        "show" => SessionCommand::Show(text[4..].trim().to_ascii_lowercase()),
        "discard" | "reset" | "deallocate" | "listen" | "unlisten" => {
            SessionCommand::Ignored(first.to_ascii_uppercase())
        }
        _ => return None,
    })
}

/// Parses `concord.freshness`.
fn parse_freshness(value: &str) -> Option<Freshness> {
    let value = value.trim().to_ascii_lowercase();
    match value.as_str() {
        "latest" | "default" => return Some(Freshness::Latest),
        "watermark" => return Some(Freshness::Watermark),
        _ => {}
    }
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value.as_str(), "ms"), |at| {
            (&value[..at], value[at..].trim())
        });
    let number: u64 = number.parse().ok()?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "us" => Duration::from_micros(number),
        _ => return None,
    };
    Some(Freshness::BoundedStaleness(duration))
}

fn freshness_text(freshness: Freshness) -> String {
    match freshness {
        Freshness::Latest => "latest".into(),
        Freshness::Watermark => "watermark".into(),
        Freshness::BoundedStaleness(duration) => format!("{}ms", duration.as_millis()),
        Freshness::At(at) => format!("at {}", at.0),
    }
}

fn store_text(store: StoreChoice) -> &'static str {
    match store {
        StoreChoice::Auto => "auto",
        StoreChoice::RowStore => "row_store",
        StoreChoice::Columnar => "columnar",
    }
}

fn is_numeric_type(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::OID,
    ]
    .contains(ty)
}

/// A bound parameter as a SQL literal.
fn literal<S: Clone>(portal: &Portal<S>, idx: usize, ty: &Type) -> PgWireResult<Expr> {
    let Some(Some(bytes)) = portal.parameters.get(idx) else {
        return Ok(Expr::value(Value::Null));
    };
    let bad = |detail: String| {
        sqlstate::error(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("parameter ${}: {detail}", idx + 1),
        )
    };
    if portal.parameter_format.is_binary(idx) {
        let number = |text: String| Ok(Expr::value(Value::Number(text, false)));
        let t = ty.clone();
        return if t == Type::INT2 {
            number(
                portal
                    .parameter::<i16>(idx, ty)?
                    .unwrap_or_default()
                    .to_string(),
            )
        } else if t == Type::INT4 {
            number(
                portal
                    .parameter::<i32>(idx, ty)?
                    .unwrap_or_default()
                    .to_string(),
            )
        } else if t == Type::INT8 {
            number(
                portal
                    .parameter::<i64>(idx, ty)?
                    .unwrap_or_default()
                    .to_string(),
            )
        } else if t == Type::FLOAT4 {
            number(
                portal
                    .parameter::<f32>(idx, ty)?
                    .unwrap_or_default()
                    .to_string(),
            )
        } else if t == Type::FLOAT8 {
            number(
                portal
                    .parameter::<f64>(idx, ty)?
                    .unwrap_or_default()
                    .to_string(),
            )
        } else if t == Type::BOOL {
            Ok(Expr::value(Value::Boolean(
                portal.parameter::<bool>(idx, ty)?.unwrap_or_default(),
            )))
        } else if [
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ]
        .contains(&t)
        {
            Ok(Expr::value(Value::SingleQuotedString(
                String::from_utf8(bytes.to_vec()).map_err(|error| bad(error.to_string()))?,
            )))
        } else {
            Err(sqlstate::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "parameter ${}: binary format for type {} is not supported; send it as text",
                    idx + 1,
                    ty.name()
                ),
            ))
        };
    }
    let text = std::str::from_utf8(bytes).map_err(|error| bad(error.to_string()))?;
    if is_numeric_type(ty) {
        let trimmed = text.trim();
        if trimmed.parse::<f64>().is_err()
            || trimmed
                .chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        {
            return Err(bad(format!(
                "invalid input syntax for type {}: \"{text}\"",
                ty.name()
            )));
        }
        return Ok(Expr::value(Value::Number(trimmed.to_owned(), false)));
    }
    if *ty == Type::BOOL {
        return match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Ok(Expr::value(Value::Boolean(true))),
            "f" | "false" | "no" | "off" | "0" => Ok(Expr::value(Value::Boolean(false))),
            _ => Err(bad(format!(
                "invalid input syntax for type boolean: \"{text}\""
            ))),
        };
    }
    Ok(Expr::value(Value::SingleQuotedString(text.to_owned())))
}

/// Replaces `$n` placeholders with `values`.
///
/// # Errors
/// `08P01` when a placeholder has no value.
pub fn substitute(statement: &mut Statement, values: &[Expr]) -> PgWireResult<()> {
    let mut missing = None;
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
        {
            let position = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1));
            match position.and_then(|p| values.get(p)) {
                Some(literal) => *expr = literal.clone(),
                None => missing = Some(name.clone()),
            }
        }
        ControlFlow::<()>::Continue(())
    });
    match missing {
        Some(name) => Err(sqlstate::error(
            "08P01",
            format!(
                "there is no parameter {name}: the statement was bound with {} values",
                values.len()
            ),
        )),
        None => Ok(()),
    }
}

fn relation_kind(statement: &Statement) -> (bool, bool, Vec<String>) {
    let mut catalog = false;
    let mut data = false;
    let mut qualified_data = Vec::new();
    let _ = visit_relations(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| part.to_string().trim_matches('"').to_ascii_lowercase())
            .collect();
        let schema = parts.len().checked_sub(2).and_then(|i| parts.get(i));
        let table = parts.last().cloned().unwrap_or_default();
        match schema {
            Some(schema) if schema == "pg_catalog" || schema == "information_schema" => {
                catalog = true
            }
            None if table.starts_with("pg_") => catalog = true,
            Some(_) => {
                data = true;
                qualified_data.push(name.to_string());
            }
            None => data = true,
        }
        ControlFlow::<()>::Continue(())
    });
    (catalog, data, qualified_data)
}

impl Inner {
    fn check_length(&self, text: &str) -> PgWireResult<()> {
        if text.len() > self.limits.query_bytes_max {
            return Err(sqlstate::error(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the query is {} bytes; the endpoint accepts at most {} (pg_query_bytes_max)",
                    text.len(),
                    self.limits.query_bytes_max
                ),
            ));
        }
        Ok(())
    }

    /// Splits `text` into commands.
    fn parse(&self, text: &str) -> PgWireResult<Vec<Command>> {
        if let Some(command) = session_command(text) {
            return Ok(vec![Command::Session(command)]);
        }
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, text) {
            Ok(statements) => statements,
            Err(error) => self.compat.parse(text).map_err(|_| {
                sqlstate::error(sqlstate::SYNTAX_ERROR, format!("syntax error: {error}"))
            })?,
        };
        let single = statements.len() == 1;
        statements
            .into_iter()
            .map(|statement| self.classify(statement, single.then_some(text)))
            .collect()
    }

    fn classify(&self, statement: Statement, text: Option<&str>) -> PgWireResult<Command> {
        match &statement {
            Statement::Query(_) | Statement::Explain { .. } => {
                let (catalog, data, qualified_data) = relation_kind(&statement);
                if catalog && !qualified_data.is_empty() {
                    return Err(sqlstate::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "a query cannot mix catalog views (pg_catalog, information_schema) with table data ({})",
                            qualified_data.join(", ")
                        ),
                    ));
                }
                if data && !catalog {
                    return Ok(Command::Data(Box::new(statement)));
                }
                let rewritten = text
                    .and_then(|text| self.compat.parse(text).ok())
                    .and_then(|mut statements| {
                        (statements.len() == 1).then(|| statements.remove(0))
                    })
                    .unwrap_or_else(|| self.compat.rewrite(statement));
                Ok(Command::Catalog(Box::new(rewritten)))
            }
            statement if dml::is_dml(statement) => Ok(Command::Dml(Box::new(statement.clone()))),
            Statement::CreateTable { .. }
            | Statement::CreateSchema { .. }
            | Statement::Drop { .. }
            | Statement::AlterTable { .. }
            | Statement::Truncate { .. } => Err(sqlstate::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "schema changes go through CQL (cqlsh, a CQL driver): the schema is CQL's; this endpoint reads and writes rows",
            )),
            other => Err(sqlstate::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "statement not supported by the Postgres endpoint: {}",
                    first_words(&other.to_string())
                ),
            )),
        }
    }

    /// Plans `statement` in the catalog context (no data read): its
    /// parameter types and result schema.
    async fn describe(&self, statement: &Statement) -> PgWireResult<(Vec<Type>, SchemaRef)> {
        let plan = self.catalog.plan(statement).await?;
        let ordered = Catalog::ordered_parameters(&plan)?;
        let mut types = Vec::new();
        for (_, ty) in ordered {
            types.push(match ty {
                Some(ty) => into_pg_type(&ty).unwrap_or(Type::UNKNOWN),
                None => Type::UNKNOWN,
            });
        }
        Ok((types, Arc::new(plan.schema().as_arrow().clone())))
    }

    async fn run_session<C>(
        &self,
        client: &mut C,
        command: &SessionCommand,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client);
        match command {
            SessionCommand::Set { name, value } => {
                let mut state = session.state.lock();
                match name.as_str() {
                    "concord.freshness" => {
                        state.options.freshness = parse_freshness(value).ok_or_else(|| {
                            sqlstate::error(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                format!("invalid value for concord.freshness: \"{value}\" (latest, watermark, or a staleness bound such as 250ms or 2s)"),
                            )
                        })?;
                    }
                    "concord.store" => {
                        state.options.store = match value.to_ascii_lowercase().as_str() {
                            "auto" | "default" => StoreChoice::Auto,
                            "row_store" => StoreChoice::RowStore,
                            "columnar" => StoreChoice::Columnar,
                            _ => {
                                return Err(sqlstate::error(
                                    sqlstate::INVALID_PARAMETER_VALUE,
                                    format!(
                                        "invalid value for concord.store: \"{value}\" (auto, row_store, columnar)"
                                    ),
                                ));
                            }
                        };
                    }
                    other if other.starts_with("concord.") => {
                        return Err(sqlstate::error(
                            sqlstate::UNDEFINED_OBJECT,
                            format!(
                                "unrecognized configuration parameter \"{other}\" (concord.freshness, concord.store)"
                            ),
                        ));
                    }
                    other => {
                        state.settings.insert(other.to_owned(), value.clone());
                    }
                }
                Ok(Response::Execution(Tag::new("SET")))
            }
            SessionCommand::Show(name) => {
                let value = {
                    let state = session.state.lock();
                    match name.as_str() {
                        "concord.freshness" => Some(freshness_text(state.options.freshness)),
                        "concord.store" => Some(store_text(state.options.store).to_owned()),
                        "server_version" => Some(SERVER_VERSION.to_owned()),
                        "server_encoding" | "client_encoding" => Some("UTF8".to_owned()),
                        "standard_conforming_strings" => Some("on".to_owned()),
                        "transaction_isolation" | "transaction isolation level" => {
                            Some("serializable".to_owned())
                        }
                        "search_path" => Some(
                            state
                                .settings
                                .get("search_path")
                                .cloned()
                                .unwrap_or_else(|| "public".to_owned()),
                        ),
                        "datestyle" => Some("ISO, MDY".to_owned()),
                        "timezone" => Some(
                            state
                                .settings
                                .get("timezone")
                                .cloned()
                                .unwrap_or_else(|| "UTC".to_owned()),
                        ),
                        other => state.settings.get(other).cloned(),
                    }
                };
                let value = value.ok_or_else(|| {
                    sqlstate::error(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
                    name.as_str(),
                    arrow::datatypes::DataType::Utf8,
                    false,
                )]));
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(arrow::array::StringArray::from(vec![value]))],
                )
                .map_err(|error| sqlstate::error(sqlstate::INTERNAL_ERROR, error.to_string()))?;
                encode(schema, vec![batch], &Format::UnifiedText)
            }
            SessionCommand::Begin => {
                let mut state = session.state.lock();
                state.in_block = true;
                state.block_writes = 0;
                Ok(Response::TransactionStart(Tag::new("BEGIN")))
            }
            SessionCommand::Commit => {
                let mut state = session.state.lock();
                state.in_block = false;
                state.block_writes = 0;
                Ok(Response::TransactionEnd(Tag::new("COMMIT")))
            }
            SessionCommand::Rollback => {
                let writes = {
                    let mut state = session.state.lock();
                    state.in_block = false;
                    std::mem::take(&mut state.block_writes)
                };
                if writes > 0 {
                    let notice = ErrorInfo::new(
                        "WARNING".to_owned(),
                        sqlstate::WARNING.to_owned(),
                        format!(
                            "ROLLBACK cannot undo {writes} statement(s) of this block: Concord commits each statement on its own"
                        ),
                    );
                    client
                        .send(PgWireBackendMessage::NoticeResponse(notice.into()))
                        .await?;
                }
                Ok(Response::TransactionEnd(Tag::new("ROLLBACK")))
            }
            SessionCommand::Ignored(tag) => Ok(Response::Execution(Tag::new(tag))),
        }
    }

    /// Runs one command with bound parameter literals.
    async fn run<C>(
        &self,
        client: &mut C,
        command: &Command,
        text: Option<&str>,
        params: &[Expr],
        format: &Format,
        described: Option<&SchemaRef>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match command {
            Command::Empty => Ok(Response::EmptyQuery),
            Command::Session(command) => self.run_session(client, command).await,
            Command::Data(statement) => {
                let query = match text {
                    Some(text) if params.is_empty() => text.to_owned(),
                    _ => {
                        let mut statement = statement.as_ref().clone();
                        substitute(&mut statement, params)?;
                        match text.and_then(|text| crate::sql::store_hint(text).ok().flatten()) {
                            Some(StoreChoice::RowStore) => format!("/*+ ROW_STORE */ {statement}"),
                            Some(StoreChoice::Columnar) => format!("/*+ COLUMNAR */ {statement}"),
                            _ => statement.to_string(),
                        }
                    }
                };
                let options = session(client).state.lock().options;
                let db = Arc::clone(&self.db);
                let result = tokio::task::spawn_blocking(move || db.sql_with(&query, &options))
                    .await
                    .map_err(|error| {
                        sqlstate::error(
                            sqlstate::INTERNAL_ERROR,
                            format!("query task failed: {error}"),
                        )
                    })?
                    .map_err(|error| sqlstate::from_sql(&error))?;
                let schema = match (result.batches.first(), described) {
                    (Some(batch), _) => batch.schema(),
                    (None, Some(schema)) => Arc::clone(schema),
                    (None, None) => result.schema,
                };
                encode(schema, result.batches, format)
            }
            Command::Catalog(statement) => {
                let mut statement = statement.as_ref().clone();
                substitute(&mut statement, params)?;
                let context = self.catalog.context()?;
                let frame = context
                    .execute_logical_plan(
                        context
                            .state()
                            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
                            .await
                            .map_err(|error| sqlstate::from_datafusion(&error))?,
                    )
                    .await
                    .map_err(|error| sqlstate::from_datafusion(&error))?;
                let schema = Arc::new(frame.schema().as_arrow().clone());
                let batches = frame
                    .collect()
                    .await
                    .map_err(|error| sqlstate::from_datafusion(&error))?;
                encode(schema, batches, format)
            }
            Command::Dml(statement) => {
                let mut statement = statement.as_ref().clone();
                substitute(&mut statement, params)?;
                let translated = dml::translate(&statement)?;
                self.db
                    .table(&translated.table.0, &translated.table.1)
                    .map_err(|_| {
                        sqlstate::error(
                            sqlstate::UNDEFINED_TABLE,
                            format!(
                                "relation \"{}.{}\" does not exist",
                                translated.table.0, translated.table.1
                            ),
                        )
                    })?;
                let shared = Arc::clone(&self.cql);
                let kind = translated.kind;
                let rows = tokio::task::spawn_blocking(move || dml::execute(&shared, &translated))
                    .await
                    .map_err(|error| {
                        sqlstate::error(
                            sqlstate::INTERNAL_ERROR,
                            format!("write task failed: {error}"),
                        )
                    })??;
                {
                    let session = session(client);
                    let mut state = session.state.lock();
                    if state.in_block {
                        state.block_writes += 1;
                    }
                }
                let tag = Tag::new(kind.tag()).with_rows(rows);
                Ok(Response::Execution(if kind == dml::DmlKind::Insert {
                    tag.with_oid(0)
                } else {
                    tag
                }))
            }
        }
    }
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arrow batches as a Postgres row stream, each column in its requested
/// format.
fn encode(schema: SchemaRef, batches: Vec<RecordBatch>, format: &Format) -> PgWireResult<Response> {
    let fields: Arc<Vec<FieldInfo>> = Arc::new(arrow_schema_to_pg_fields(&schema, format, None)?);
    let mut rows = Vec::new();
    for batch in batches {
        rows.extend(encode_recordbatch(Arc::clone(&fields), batch));
    }
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows),
    )))
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let inner = &self.inner;
        inner.check_length(query)?;
        let commands = inner.parse(query)?;
        let single = commands.len() == 1;
        let mut responses = Vec::new();
        for command in &commands {
            match inner
                .run(
                    client,
                    command,
                    single.then_some(query),
                    &[],
                    &Format::UnifiedText,
                    None,
                )
                .await
            {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(responses)
    }
}

/// The query handlers of every connection.
#[derive(Debug)]
pub struct Service {
    inner: Arc<Inner>,
}

/// The extended protocol's parser: Parse plans the statement to describe it.
#[async_trait]
impl QueryParser for Inner {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.check_length(sql)?;
        let mut commands = self.parse(sql)?;
        if commands.len() > 1 {
            return Err(sqlstate::error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let command = commands.pop().unwrap_or(Command::Empty);
        let (mut param_types, result_schema) = match &command {
            Command::Data(statement) | Command::Catalog(statement) => {
                let (types, schema) = self.describe(statement).await?;
                (types, Some(schema))
            }
            Command::Session(SessionCommand::Show(name)) => (
                Vec::new(),
                Some(Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
                    name.as_str(),
                    arrow::datatypes::DataType::Utf8,
                    false,
                )]))),
            ),
            Command::Dml(statement) => {
                let mut count = 0usize;
                let _ = count_placeholders(statement.as_ref(), &mut count);
                (vec![Type::UNKNOWN; count], None)
            }
            _ => (Vec::new(), None),
        };
        for (idx, ty) in types.iter().enumerate() {
            if let Some(ty) = ty {
                if idx < param_types.len() {
                    param_types[idx] = ty.clone();
                } else {
                    param_types.push(ty.clone());
                }
            }
        }
        Ok(Some(Prepared {
            text: sql.to_owned(),
            command,
            param_types,
            result_schema,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.param_types.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &statement.result_schema {
            Some(schema) => {
                arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None)
            }
            None => Ok(Vec::new()),
        }
    }
}

/// The highest `$n` placeholder of a statement.
fn count_placeholders(statement: &Statement, count: &mut usize) -> ControlFlow<()> {
    datafusion::sql::sqlparser::ast::visit_expressions(statement, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
            && let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
        {
            *count = (*count).max(n);
        }
        ControlFlow::Continue(())
    })
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = Prepared;
    type QueryParser = Inner;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.inner)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let mut params = Vec::with_capacity(portal.parameter_len());
        for idx in 0..portal.parameter_len() {
            let ty = portal
                .statement
                .parameter_types
                .get(idx)
                .cloned()
                .flatten()
                .or_else(|| prepared.param_types.get(idx).cloned())
                .unwrap_or(Type::UNKNOWN);
            params.push(literal(portal, idx, &ty)?);
        }
        self.inner
            .run(
                client,
                &prepared.command,
                Some(&prepared.text),
                &params,
                &portal.result_column_format,
                prepared.result_schema.as_ref(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_statements_are_recognised() {
        assert_eq!(
            session_command("SET concord.freshness = '250ms'"),
            Some(SessionCommand::Set {
                name: "concord.freshness".into(),
                value: "250ms".into()
            })
        );
        assert_eq!(
            session_command("/* x */ set session DateStyle to ISO;"),
            Some(SessionCommand::Set {
                name: "datestyle".into(),
                value: "ISO".into()
            })
        );
        assert_eq!(
            session_command("SHOW concord.store"),
            Some(SessionCommand::Show("concord.store".into()))
        );
        assert_eq!(session_command("BEGIN"), Some(SessionCommand::Begin));
        assert_eq!(session_command("rollback;"), Some(SessionCommand::Rollback));
        assert_eq!(session_command("SELECT 1"), None);
        assert_eq!(session_command("settle"), None);
    }

    #[test]
    fn freshness_values_parse_or_are_refused() {
        assert_eq!(parse_freshness("latest"), Some(Freshness::Latest));
        assert_eq!(parse_freshness("WATERMARK"), Some(Freshness::Watermark));
        assert_eq!(
            parse_freshness("2s"),
            Some(Freshness::BoundedStaleness(Duration::from_secs(2)))
        );
        assert_eq!(
            parse_freshness("250"),
            Some(Freshness::BoundedStaleness(Duration::from_millis(250)))
        );
        assert_eq!(parse_freshness("soon"), None);
        assert_eq!(parse_freshness("5 years"), None);
    }
}
