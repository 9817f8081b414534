//! Workloads and the clients that run them.
//!
//! A [`Workload`] generates operations, sets up its tables, and executes one operation through
//! a CQL session. The driver ([`drive`]) runs `concurrency` client processes, each pinned to one
//! node (the scylla driver's host filter) — client `i` uses the `i mod n`-th of the current
//! members ([`LiveNodes`], which the membership nemesis changes), reconnecting when that is
//! another node than its session's, so no client stays on a removed node and added nodes get
//! clients — one operation at a time at a steady total `rate`,
//! and records each operation in a Jepsen history: invoke, then ok / fail / info with
//! client-side monotonic times in microseconds since the run started.
//!
//! Outcomes ([`classify`]): a result is `ok`; an error that proves the request never took effect
//! (`Overloaded`, `Unavailable`, no connection to send it on) is `fail`; anything else — a
//! timeout, a broken connection, a server error — is `info` (indeterminate), and the process
//! that saw it is retired for a fresh one, as in Jepsen (its operation may still be running).
//! A `SyntaxError`/`Invalid` reply is a harness bug, counted apart and failing the run.

pub mod bank;
pub mod list_append;
pub mod register;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::cluster::LiveNodes;
use anyhow::Context;
use concord_checker::{History, OperationBody, Outcome, ProcessId};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::host_filter::AllowListHostFilter;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

/// Why an operation did not complete `ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// Certainly did not take effect.
    Fail(String),
    /// May or may not have taken effect.
    Info(String),
    /// The server refused the statement as malformed: a harness bug (recorded `fail`).
    Client(String),
}

/// A workload: its operations, tables and how to run one operation.
pub trait Workload: Send + Sync + 'static {
    type Body: OperationBody + Send + Sync + 'static;

    /// Creates the workload's tables and initial rows through `session`.
    fn setup(&self, session: &Session) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The next operation (an invocation: no results).
    fn generate(&self, rng: &mut StdRng) -> Self::Body;

    /// Runs `body`; `Ok` carries the body with its results.
    fn execute(
        &self,
        session: &Session,
        body: &Self::Body,
    ) -> impl Future<Output = Result<Self::Body, OpError>> + Send;
}

/// What the clients do and for how long.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The CQL address of each member; client `i` talks to member `i % len` of the list at
    /// the time of each operation.
    pub nodes: LiveNodes,
    pub concurrency: usize,
    /// Operations per second over all clients.
    pub rate: f64,
    pub request_timeout: Duration,
    pub seed: u64,
}

/// Error kinds seen by clients, counted for the report (`"info: request timeout"`, ...).
pub type ErrorCounts = BTreeMap<String, u64>;

/// Connects a session pinned to `node`: only that host is used, no retries (a retry of a
/// non-idempotent transaction would corrupt the history), the given request timeout.
///
/// # Errors
/// When the node cannot be reached.
pub async fn connect(node: SocketAddr, request_timeout: Duration) -> anyhow::Result<Session> {
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(request_timeout))
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .consistency(Consistency::Quorum)
        .serial_consistency(Some(SerialConsistency::Serial))
        .build();
    let filter = AllowListHostFilter::new([node]).context("host filter")?;
    let session = SessionBuilder::new()
        .known_node_addr(node)
        .host_filter(Arc::new(filter))
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(request_timeout)
        .build()
        .await
        .with_context(|| format!("connect to {node}"))?;
    Ok(session)
}

/// Maps a driver error to an outcome (see the module documentation).
pub fn classify(error: &ExecutionError) -> OpError {
    let text = error.to_string();
    match error {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => match db {
            DbError::SyntaxError | DbError::Invalid | DbError::ConfigError => OpError::Client(text),
            DbError::Overloaded | DbError::Unavailable { .. } | DbError::IsBootstrapping => {
                OpError::Fail(text)
            }
            _ => OpError::Info(text),
        },
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => OpError::Fail(text),
        _ => OpError::Info(text),
    }
}

/// The short category of an error for the counts: its kind without the details.
fn category(error: &OpError) -> String {
    let (status, text) = match error {
        OpError::Fail(text) => ("fail", text),
        OpError::Info(text) => ("info", text),
        OpError::Client(text) => ("client error", text),
    };
    let head: String = text.chars().take(60).collect();
    format!("{status}: {head}")
}

/// Creates the `jepsen` keyspace (if missing) with `replication_factor`, then `table_ddl`.
///
/// # Errors
/// When a statement fails.
pub async fn create_schema(
    session: &Session,
    replication_factor: usize,
    table_ddl: &str,
) -> anyhow::Result<()> {
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS jepsen WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
            ),
            (),
        )
        .await?;
    session.query_unpaged(table_ddl, ()).await?;
    Ok(())
}

/// Runs a CQL statement, mapping errors with [`classify`].
pub async fn query(session: &Session, cql: &str) -> Result<QueryResult, OpError> {
    session
        .query_unpaged(cql, ())
        .await
        .map_err(|error| classify(&error))
}

/// The rows of a result (none for a statement without rows).
pub fn rows(result: QueryResult) -> Result<Vec<Row>, OpError> {
    if !result.is_rows() {
        return Ok(Vec::new());
    }
    let rows = result
        .into_rows_result()
        .map_err(|error| OpError::Client(format!("rows: {error}")))?;
    rows.rows::<Row>()
        .map_err(|error| OpError::Client(format!("rows: {error}")))?
        .collect::<Result<Vec<Row>, _>>()
        .map_err(|error| OpError::Client(format!("row: {error}")))
}

/// An integer cell (`int` or `bigint`).
pub fn integer(value: &CqlValue) -> Option<i64> {
    match value {
        CqlValue::BigInt(value) => Some(*value),
        CqlValue::Int(value) => Some(i64::from(*value)),
        _ => None,
    }
}

/// The history and error counts one workload run produced.
#[derive(Debug)]
pub struct Recorded<B: OperationBody> {
    pub history: History<B>,
    pub errors: ErrorCounts,
    /// Operations whose `ok` result did not match their invocation (a harness bug).
    pub mismatches: Vec<String>,
}

/// Shared recording state of a run.
#[derive(Debug)]
pub struct Recorder<B: OperationBody> {
    start: Instant,
    history: Mutex<History<B>>,
    errors: Mutex<ErrorCounts>,
    mismatches: Mutex<Vec<String>>,
}

impl<B: OperationBody> Recorder<B> {
    pub fn new(start: Instant) -> Recorder<B> {
        Recorder {
            start,
            history: Mutex::new(History::new()),
            errors: Mutex::new(ErrorCounts::new()),
            mismatches: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs `execute` as one recorded operation of `process`; returns its outcome.
    pub async fn record<F>(&self, process: ProcessId, body: &B, execute: F) -> Outcome<B>
    where
        F: Future<Output = Result<B, OpError>>,
    {
        let id = {
            let time = self.now();
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            history.invoke(process, time, body.to_invocation())
        };
        let result = execute.await;
        let time = self.now();
        let outcome = match result {
            Ok(done) => Outcome::Ok(done),
            Err(error) => {
                *self
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(category(&error))
                    .or_insert(0) += 1;
                match error {
                    OpError::Fail(_) | OpError::Client(_) => Outcome::Fail,
                    OpError::Info(_) => Outcome::Info,
                }
            }
        };
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = history.complete(id, time, outcome.clone()) {
            self.mismatches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(error.to_string());
            let _ = history.complete(id, time, Outcome::Info);
            return Outcome::Info;
        }
        outcome
    }

    pub fn finish(self) -> Recorded<B> {
        Recorded {
            history: self.history.into_inner().unwrap_or_else(|e| e.into_inner()),
            errors: self.errors.into_inner().unwrap_or_else(|e| e.into_inner()),
            mismatches: self
                .mismatches
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// How long a client waits before reconnecting to a node it could not reach.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Runs `config.concurrency` client processes until `stop` is set.
pub async fn drive<W: Workload>(
    workload: Arc<W>,
    recorder: Arc<Recorder<W::Body>>,
    config: ClientConfig,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client in 0..config.concurrency {
        let workload = workload.clone();
        let recorder = recorder.clone();
        let config = config.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(workload, recorder, config, stop, client).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn client_loop<W: Workload>(
    workload: Arc<W>,
    recorder: Arc<Recorder<W::Body>>,
    config: ClientConfig,
    stop: Arc<AtomicBool>,
    client: usize,
) {
    let client_u64 = u64::try_from(client).unwrap_or(u64::MAX);
    let concurrency = u64::try_from(config.concurrency).unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(
        config
            .seed
            .wrapping_add(client_u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let mut process = client_u64;
    let interval = Duration::from_secs_f64(config.concurrency as f64 / config.rate.max(0.001));
    let mut next = tokio::time::Instant::now()
        + interval.mul_f64(client as f64 / config.concurrency.max(1) as f64);
    let mut session: Option<(SocketAddr, Session)> = None;
    while !stop.load(Ordering::SeqCst) {
        let members = config.nodes.get();
        let Some(node) = members.get(client % members.len().max(1)).copied() else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        if session.as_ref().is_some_and(|(at, _)| *at != node) {
            session = None;
        }
        let Some((_, current)) = session.as_ref() else {
            match tokio::time::timeout(
                config.request_timeout,
                connect(node, config.request_timeout),
            )
            .await
            {
                Ok(Ok(new)) => session = Some((node, new)),
                _ => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
            continue;
        };
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        next = if next + interval < now {
            now + interval
        } else {
            next + interval
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = workload.generate(&mut rng);
        // The driver has its own request timeout; this bound only guards against a hang.
        let deadline = config.request_timeout + Duration::from_secs(1);
        let outcome = recorder
            .record(ProcessId(process), &body, async {
                match tokio::time::timeout(deadline, workload.execute(current, &body)).await {
                    Ok(result) => result,
                    Err(_) => Err(OpError::Info("client-side deadline".to_owned())),
                }
            })
            .await;
        if matches!(outcome, Outcome::Info) {
            process += concurrency;
        }
    }
}
