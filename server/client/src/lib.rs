//! The Rust client SDK for Concord's gRPC API (`concord start` serves it on
//! port 50051): typed rows, schema calls, transactions with the semantics
//! of CQL transaction blocks, SQL results as Arrow [`RecordBatch`]es, and
//! change streams.
//!
//! **Owns**: the connection pool ([`Client`]: a bounded set of HTTP/2
//! channels used round robin), the retry policy, typed [`Value`]s and
//! [`Row`]s, and the decoding of SQL results and changes.
//!
//! **Must never**: depend on an engine crate (it links `concord-api`, tonic
//! and Arrow only), or retry a call that is not idempotent. Each method's
//! rustdoc says whether it is; only idempotent calls are retried, and only
//! on `UNAVAILABLE`.
//!
//! Key types: [`Client`], [`Options`], [`Value`], [`Row`], [`Transaction`],
//! [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::Error> {
//! use concord_client::{Client, Row};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! client
//!     .execute("", "CREATE KEYSPACE IF NOT EXISTS shop WITH replication = \
//!               {'class': 'SimpleStrategy', 'replication_factor': 1}", vec![])
//!     .await?;
//! client
//!     .execute("shop", "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text)", vec![])
//!     .await?;
//! client
//!     .write_rows("shop", "items", vec![Row::new().with("id", 1).with("name", "pen")])
//!     .await?;
//! let rows = client.read_rows("shop", "items", Row::new().with("id", 1)).await?;
//! assert_eq!(rows[0].get("name").and_then(|v| v.as_str()), Some("pen"));
//! let batches = client.sql("SELECT count(*) FROM shop.items").await?;
//! # Ok(()) }
//! ```
//! (`no_run`: it needs a node; `server/tests/it/grpc_sdk.rs` runs these
//! calls against an embedded and a started node.)

mod value;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use concord_api::v1::{self, concord_client::ConcordClient};
use tonic::transport::{Channel, Endpoint};

pub use concord_api::codes;
pub use value::{Row, Value};

/// The default number of HTTP/2 connections in a [`Client`]'s pool.
pub const POOL_SIZE_DEFAULT: usize = 2;
/// The most connections a pool may hold.
pub const POOL_SIZE_MAX: usize = 64;
/// The default number of retries of an idempotent call on `UNAVAILABLE`.
pub const RETRIES_DEFAULT: u32 = 3;
/// The first retry's wait; each further one doubles it.
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The default largest message sent or received (the node's default).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

/// An SDK error: a status from the node (with its stable code), or a
/// failure to connect or decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The node refused or failed the call. `code` is the stable Concord
    /// code of `concord.v1.ErrorDetail` (see [`codes`]); empty when the
    /// status carried none (e.g. a transport failure tonic reported).
    #[error("{grpc:?} {code}: {message}")]
    Status {
        grpc: tonic::Code,
        code: String,
        message: String,
    },
    /// The endpoint could not be reached or is malformed.
    #[error("connect: {0}")]
    Connect(String),
    /// A response that does not decode (Arrow IPC).
    #[error("decode: {0}")]
    Decode(String),
    /// A bad argument caught before sending (e.g. a pool size of 0).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// The stable Concord code (`INVALID_VALUE`, `NOT_FOUND`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The gRPC status code, for a status error.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { grpc, .. } => Some(*grpc),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let detail = concord_api::error_detail(status.details());
        Error::Status {
            grpc: status.code(),
            code: detail.map(|d| d.code).unwrap_or_default(),
            message: status.message().to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP/2 connections in the pool (1..=`POOL_SIZE_MAX`); calls are
    /// spread over them round robin, each multiplexing many calls.
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Per call; `None`: no deadline (change streams run until dropped).
    pub request_timeout: Option<Duration>,
    /// Retries of an idempotent call that failed with `UNAVAILABLE`.
    pub retries: u32,
    pub message_bytes_max: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pool_size: POOL_SIZE_DEFAULT,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(60)),
            retries: RETRIES_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
        }
    }
}

/// A result of [`Client::execute`]: columns and rows (for SELECTs and
/// transaction SELECTs), and whether a condition held.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Column names and CQL types, in result order.
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// False only when a condition (IF, IF NOT EXISTS, a transaction's IF)
    /// did not hold and nothing was written.
    pub applied: bool,
}

/// A table's schema from [`Client::describe_table`].
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub keyspace: String,
    pub table: String,
    /// `(name, CQL type, kind)`: primary key columns first, in key order;
    /// kind is `partition_key`, `clustering`, `static` or `regular`.
    pub columns: Vec<(String, String, String)>,
    /// The `CREATE TABLE` statement that recreates it.
    pub cql: String,
}

/// Which store answers an SQL query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Store {
    /// The node's router decides (partition lookups → row store).
    #[default]
    Auto,
    RowStore,
    Columnar,
}

/// Options of [`Client::sql_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlOptions {
    pub store: Store,
    /// `None`: see every commit made before the query began; `Some(d)`: the
    /// columnar replica may lag by up to `d` (bounded staleness).
    pub max_staleness: Option<Duration>,
}

/// An SQL result: the record batches and the store that answered.
#[derive(Debug, Clone)]
pub struct SqlResult {
    /// `row_store` or `columnar`.
    pub store: String,
    /// The result's columns, also when no row came back.
    pub schema: arrow::datatypes::SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl SqlResult {
    /// Rows over every batch.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A comparison of a transaction condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A transaction: named reads of rows, conditions over them (all must
/// hold), and writes applied only when they do — one timestamp for all, the
/// semantics of a CQL `BEGIN TRANSACTION` block (the node plans it with the
/// same planner).
///
/// ```
/// use concord_client::{Op, Row, Transaction};
/// let transfer = Transaction::new("bank")
///     .read("from", "accounts", Row::new().with("id", 1))
///     .read("to", "accounts", Row::new().with("id", 2))
///     .condition("from", "balance", Op::Ge, 60)
///     .exists("to")
///     .upsert("accounts", Row::new().with("id", 1).with("balance", 40))
///     .upsert("accounts", Row::new().with("id", 2).with("balance", 65));
/// assert_eq!(transfer.request().reads.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    request: v1::TransactionRequest,
}

impl Transaction {
    pub fn new(keyspace: &str) -> Transaction {
        Transaction {
            request: v1::TransactionRequest {
                keyspace: keyspace.to_owned(),
                ..v1::TransactionRequest::default()
            },
        }
    }

    /// Reads the row of `table` with primary key `key` as `name` (a lower
    /// case identifier); conditions and the result refer to it by name.
    pub fn read(mut self, name: &str, table: &str, key: Row) -> Transaction {
        self.request.reads.push(v1::TransactionRead {
            name: name.to_owned(),
            table: table.to_owned(),
            key: Some(key.into()),
        });
        self
    }

    /// Holds when `read.column op value`.
    pub fn condition(
        mut self,
        read: &str,
        column: &str,
        op: Op,
        value: impl Into<Value>,
    ) -> Transaction {
        self.request.conditions.push(v1::TransactionCondition {
            read: read.to_owned(),
            column: column.to_owned(),
            op: op.text().to_owned(),
            value: Some(value.into().into()),
        });
        self
    }

    fn null_check(mut self, read: &str, column: &str, op: &str) -> Transaction {
        self.request.conditions.push(v1::TransactionCondition {
            read: read.to_owned(),
            column: column.to_owned(),
            op: op.to_owned(),
            value: None,
        });
        self
    }

    /// Holds when the read found its row.
    pub fn exists(self, read: &str) -> Transaction {
        self.null_check(read, "", "IS NOT NULL")
    }

    /// Holds when the read found no row.
    pub fn absent(self, read: &str) -> Transaction {
        self.null_check(read, "", "IS NULL")
    }

    /// Holds when `read.column` is null (or the row is absent).
    pub fn is_null(self, read: &str, column: &str) -> Transaction {
        self.null_check(read, column, "IS NULL")
    }

    /// Writes the row (its primary key and the columns to set).
    pub fn upsert(mut self, table: &str, row: Row) -> Transaction {
        self.request.writes.push(v1::TransactionWrite {
            table: table.to_owned(),
            kind: Some(v1::transaction_write::Kind::Upsert(row.into())),
        });
        self
    }

    /// Deletes the row with this primary key.
    pub fn delete(mut self, table: &str, key: Row) -> Transaction {
        self.request.writes.push(v1::TransactionWrite {
            table: table.to_owned(),
            kind: Some(v1::transaction_write::Kind::Delete(key.into())),
        });
        self
    }

    /// The request as sent.
    pub fn request(&self) -> &v1::TransactionRequest {
        &self.request
    }
}

/// What a [`Transaction`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionOutcome {
    /// Whether every condition held and the writes were applied.
    pub applied: bool,
    /// Each read's row at the transaction's timestamp, by read name
    /// (absent when the row does not exist).
    pub reads: std::collections::BTreeMap<String, Row>,
    /// The transaction's timestamp, the write time of its writes
    /// (microseconds since the Unix epoch).
    pub write_time: i64,
}

/// Where a change stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest change the feed still retains.
    Oldest,
    /// Only changes committed after the subscription.
    Now,
    /// This position (a [`Change::position`] or [`ChangeStream::next_position`]).
    Position(u64),
}

/// One row operation from the change stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub position: u64,
    /// Microseconds since the Unix epoch: every cell of the change has it.
    pub write_time: i64,
    /// `upsert`, `delete_row`, `delete_range` or `delete_partition`.
    pub operation: String,
    pub partition_key: Row,
    pub clustering: Row,
    /// `(column, op, value)` of an upsert; op is `set` or a collection
    /// operation (`list_append`, `set_add`, `map_put`, ...).
    pub cells: Vec<(String, String, Value)>,
}

/// A table's changes, in feed order, until dropped.
#[derive(Debug)]
pub struct ChangeStream {
    inner: tonic::Streaming<v1::SubscribeResponse>,
    buffered: std::collections::VecDeque<Change>,
    next_position: u64,
}

impl ChangeStream {
    /// The next change; `None` when the node ended the stream. An error with
    /// code `POSITION_EXPIRED` means retention dropped changes this stream
    /// had not delivered yet.
    pub async fn next(&mut self) -> Option<Result<Change>> {
        loop {
            if let Some(change) = self.buffered.pop_front() {
                return Some(Ok(change));
            }
            match self.inner.message().await {
                Ok(Some(message)) => {
                    self.next_position = message.next_position;
                    self.buffered
                        .extend(message.changes.into_iter().map(|change| {
                            Change {
                                position: change.position,
                                write_time: change.write_time,
                                operation: change.operation,
                                partition_key: change
                                    .partition_key
                                    .map(Row::from)
                                    .unwrap_or_default(),
                                clustering: change.clustering.map(Row::from).unwrap_or_default(),
                                cells: change
                                    .cells
                                    .into_iter()
                                    .map(|cell| {
                                        (
                                            cell.column,
                                            cell.op,
                                            cell.value.map_or(Value::Null, Value::from),
                                        )
                                    })
                                    .collect(),
                            }
                        }));
                }
                Ok(None) => return None,
                Err(status) => return Some(Err(status.into())),
            }
        }
    }

    /// The position to resubscribe from to continue after the changes
    /// received so far.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }
}

/// A client of one node: a bounded pool of HTTP/2 connections. Cheap to
/// clone (clones share the pool); use it from many tasks at once.
#[derive(Debug, Clone)]
pub struct Client {
    channels: Arc<Vec<ConcordClient<Channel>>>,
    next: Arc<AtomicUsize>,
    options: Options,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`) with the
    /// default [`Options`].
    ///
    /// # Errors
    /// `Connect` when the endpoint is malformed or unreachable.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(endpoint, Options::default()).await
    }

    /// Connects with `options`; every connection of the pool is opened now.
    ///
    /// # Errors
    /// `Invalid` for a pool size outside 1..=`POOL_SIZE_MAX`; `Connect`
    /// when the endpoint is malformed or unreachable.
    pub async fn connect_with(endpoint: &str, options: Options) -> Result<Client> {
        if options.pool_size == 0 || options.pool_size > POOL_SIZE_MAX {
            return Err(Error::Invalid(format!(
                "pool_size {} is outside 1..={POOL_SIZE_MAX}",
                options.pool_size
            )));
        }
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|error| Error::Connect(format!("{endpoint}: {error}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true);
        if let Some(timeout) = options.request_timeout {
            builder = builder.timeout(timeout);
        }
        let mut channels = Vec::with_capacity(options.pool_size);
        for _ in 0..options.pool_size {
            let channel = builder
                .connect()
                .await
                .map_err(|error| Error::Connect(format!("{endpoint}: {error}")))?;
            channels.push(
                ConcordClient::new(channel)
                    .max_decoding_message_size(options.message_bytes_max)
                    .max_encoding_message_size(options.message_bytes_max),
            );
        }
        Ok(Client {
            channels: Arc::new(channels),
            next: Arc::new(AtomicUsize::new(0)),
            options,
        })
    }

    fn channel(&self) -> ConcordClient<Channel> {
        let idx = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[idx].clone()
    }

    /// Runs `call` once, or (when `idempotent`) again after `UNAVAILABLE`, up
    /// to `options.retries` times with doubling backoff.
    async fn call<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T>
    where
        F: Fn(ConcordClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        let mut backoff = RETRY_BACKOFF_FIRST;
        loop {
            match call(self.channel()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if idempotent
                        && status.code() == tonic::Code::Unavailable
                        && attempt < self.options.retries =>
                {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Runs one CQL statement with typed bind values (`?` markers, in
    /// order): DDL, INSERT/UPDATE/DELETE (with IF), BATCH, SELECT (at most
    /// `READ_ROWS_MAX` rows), or a `BEGIN TRANSACTION` block. `keyspace`
    /// (may be empty) is where unqualified names resolve.
    ///
    /// **Not retried**: the statement may not be idempotent.
    ///
    /// # Errors
    /// `SYNTAX_ERROR`, `INVALID_QUERY`, `INVALID_VALUE`, `ALREADY_EXISTS`, ...
    pub async fn execute(
        &self,
        keyspace: &str,
        cql: &str,
        values: Vec<Value>,
    ) -> Result<QueryResult> {
        let request = v1::ExecuteRequest {
            keyspace: keyspace.to_owned(),
            cql: cql.to_owned(),
            values: values.into_iter().map(Into::into).collect(),
        };
        let response = self
            .call(false, |mut client| {
                let request = request.clone();
                async move { client.execute(request).await }
            })
            .await?;
        let columns: Vec<(String, String)> = response
            .columns
            .into_iter()
            .map(|column| (column.name, column.r#type))
            .collect();
        let rows = response
            .rows
            .into_iter()
            .map(|row| {
                let mut out = Row::new();
                for ((name, _), value) in columns.iter().zip(row.values) {
                    out.set(name.clone(), Value::from(value));
                }
                out
            })
            .collect();
        Ok(QueryResult {
            columns,
            rows,
            applied: response.applied,
        })
    }

    /// The table's columns and `CREATE TABLE` text. Idempotent (retried).
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown keyspace or table.
    pub async fn describe_table(&self, keyspace: &str, table: &str) -> Result<TableSchema> {
        let request = v1::DescribeTableRequest {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
        };
        let response = self
            .call(true, |mut client| {
                let request = request.clone();
                async move { client.describe_table(request).await }
            })
            .await?;
        Ok(TableSchema {
            keyspace: response.keyspace,
            table: response.table,
            columns: response
                .columns
                .into_iter()
                .map(|c| (c.name, c.r#type, c.kind))
                .collect(),
            cql: response.cql,
        })
    }

    /// `(keyspace, table)` of every table in `keyspace` (empty: every
    /// non-system keyspace). Idempotent (retried).
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown keyspace.
    pub async fn list_tables(&self, keyspace: &str) -> Result<Vec<(String, String)>> {
        let request = v1::ListTablesRequest {
            keyspace: keyspace.to_owned(),
        };
        let response = self
            .call(true, |mut client| {
                let request = request.clone();
                async move { client.list_tables(request).await }
            })
            .await?;
        Ok(response
            .tables
            .into_iter()
            .map(|t| (t.keyspace, t.table))
            .collect())
    }

    /// Upserts rows (each with its whole primary key), all in one
    /// transaction at one write time. Idempotent (retried): writing the same
    /// values again leaves the same state.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_REQUEST` (unknown column, missing key),
    /// `INVALID_VALUE`, `LIMIT_EXCEEDED` (over `WRITE_ROWS_MAX` rows).
    pub async fn write_rows(&self, keyspace: &str, table: &str, rows: Vec<Row>) -> Result<()> {
        let request = v1::WriteRowsRequest {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
            rows: rows.into_iter().map(Into::into).collect(),
        };
        self.call(true, |mut client| {
            let request = request.clone();
            async move { client.write_rows(request).await }
        })
        .await?;
        Ok(())
    }

    /// The rows of the partition `key` names (its whole partition key,
    /// optionally a clustering prefix), every column. Idempotent (retried).
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_REQUEST`, `INVALID_VALUE`.
    pub async fn read_rows(&self, keyspace: &str, table: &str, key: Row) -> Result<Vec<Row>> {
        self.read_rows_with(keyspace, table, key, &[], 0).await
    }

    /// As [`Client::read_rows`], with the columns to return (empty: all) and
    /// a row limit (0: the node's `READ_ROWS_MAX`). Idempotent (retried).
    ///
    /// # Errors
    /// As [`Client::read_rows`].
    pub async fn read_rows_with(
        &self,
        keyspace: &str,
        table: &str,
        key: Row,
        columns: &[&str],
        limit: u32,
    ) -> Result<Vec<Row>> {
        let request = v1::ReadRowsRequest {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
            key: Some(key.into()),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            limit,
        };
        let response = self
            .call(true, |mut client| {
                let request = request.clone();
                async move { client.read_rows(request).await }
            })
            .await?;
        Ok(response.rows.into_iter().map(Row::from).collect())
    }

    /// Deletes the row (whole primary key) or partition (partition key)
    /// `key` names. Idempotent (retried).
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_REQUEST`, `INVALID_VALUE`.
    pub async fn delete_rows(&self, keyspace: &str, table: &str, key: Row) -> Result<()> {
        let request = v1::DeleteRowsRequest {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
            key: Some(key.into()),
        };
        self.call(true, |mut client| {
            let request = request.clone();
            async move { client.delete_rows(request).await }
        })
        .await?;
        Ok(())
    }

    /// Runs a [`Transaction`]: reads, conditions and writes at one
    /// timestamp. **Not retried**: after `UNAVAILABLE` the writes may or may
    /// not have applied; read the rows to find out.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_REQUEST` (bad read name, operator), `INVALID_VALUE`,
    /// `INVALID_QUERY` (what a CQL transaction block refuses).
    pub async fn transact(&self, transaction: Transaction) -> Result<TransactionOutcome> {
        let request = transaction.request;
        let response = self
            .call(false, |mut client| {
                let request = request.clone();
                async move { client.transact(request).await }
            })
            .await?;
        Ok(TransactionOutcome {
            applied: response.applied,
            reads: response
                .reads
                .into_iter()
                .map(|(name, row)| (name, Row::from(row)))
                .collect(),
            write_time: response.write_time,
        })
    }

    /// Runs a SQL query (tables as `keyspace.table`); the router picks the
    /// store and the result sees every commit made before the query began.
    /// Idempotent (retried).
    ///
    /// # Errors
    /// `SQL_ERROR`, `NOT_FOUND`, `LIMIT_EXCEEDED`, `UNAVAILABLE`; `Decode`
    /// for a message that is not Arrow IPC.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.sql_with(query, SqlOptions::default()).await?.batches)
    }

    /// As [`Client::sql`] with a store and a staleness bound. Idempotent
    /// (retried).
    ///
    /// # Errors
    /// As [`Client::sql`].
    pub async fn sql_with(&self, query: &str, options: SqlOptions) -> Result<SqlResult> {
        let request = v1::SqlRequest {
            query: query.to_owned(),
            store: match options.store {
                Store::Auto => "auto",
                Store::RowStore => "row_store",
                Store::Columnar => "columnar",
            }
            .to_owned(),
            max_staleness_ms: options.max_staleness.map_or(0, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
        };
        let mut stream = self
            .call(true, |mut client| {
                let request = request.clone();
                async move { client.sql(request).await }
            })
            .await?;
        let mut batches = Vec::new();
        let mut store = String::new();
        let mut schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
        while let Some(message) = stream.message().await? {
            store = message.store;
            let reader = arrow::ipc::reader::StreamReader::try_new(message.ipc.as_slice(), None)
                .map_err(|error| Error::Decode(error.to_string()))?;
            schema = reader.schema();
            for batch in reader {
                batches.push(batch.map_err(|error| Error::Decode(error.to_string()))?);
            }
        }
        Ok(SqlResult {
            store,
            schema,
            batches,
        })
    }

    /// Subscribes to the changes of `keyspace.table` from `from`. The stream
    /// runs until dropped (`request_timeout` bounds only its start); resume
    /// after a disconnect from [`ChangeStream::next_position`].
    ///
    /// # Errors
    /// `NOT_FOUND`; `POSITION_EXPIRED` when retention already dropped `from`.
    pub async fn subscribe(
        &self,
        keyspace: &str,
        table: &str,
        from: StartAt,
    ) -> Result<ChangeStream> {
        let (from_position, from_now) = match from {
            StartAt::Oldest => (0, false),
            StartAt::Now => (0, true),
            StartAt::Position(position) => (position, false),
        };
        let request = v1::SubscribeRequest {
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
            from_position,
            from_now,
        };
        let inner = self
            .call(true, |mut client| {
                let request = request.clone();
                async move { client.subscribe(request).await }
            })
            .await?;
        Ok(ChangeStream {
            inner,
            buffered: std::collections::VecDeque::new(),
            next_position: from_position,
        })
    }
}
