//! Range streaming (design/bootstrap-streaming.md): the rows of a token
//! range move from a source replica to a node gaining the range, over the
//! nodes' Arrow Flight endpoint, as raw row-family pairs.
//!
//! ```text
//! gaining node: fetch_range(db, source, table, range, seal_epoch)
//!   db.clear_rows(table, range)                      (stale rows of an earlier ownership)
//!   DoGet(Ticket = Any{RANGE_FETCH_TICKET_TYPE, JSON RangeFetch{.., after}})
//!     each batch (key, cell): checked in key order → db.import_rows (one synced batch)
//!     stream dropped → retry from after = last imported key (FETCH_STREAM_RETRIES_MAX, backoff)
//!     UNAVAILABLE "range source not ready" → wait, retry until FetchOptions::source_wait
//! source node: flight.rs do_get_fallback(RANGE_FETCH_TICKET_TYPE)
//!   db.range_source_ready(range, seal_epoch)         (the seal's readiness hook)
//!   range_fetch_stream: db.export_rows(.., after, STREAM_CHUNK_BYTES) per batch, until exhausted
//! then (the caller): db.rebuild_analytics()          (imports bypass the change feed)
//! ```
//!
//! Consistency comes from the epoch seal, not from here: while a range is
//! fetched no transaction writes it, so chunks read from different engine
//! snapshots form one consistent copy.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BinaryArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::Any;
use arrow_flight::{FlightClient, FlightData, Ticket};
use concord_storage::engine::Engine;
use concord_storage::partitioner::{Token, TokenRange};
use concord_storage::schema::TableId;
use concord_storage::stream::RowChunk;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Code, Status};

use crate::db::Db;
use crate::{Error, Result};

pub use concord_storage::stream::STREAM_CHUNK_BYTES_MAX;

/// The `Any` type of a range fetch ticket (its value: a JSON [`RangeFetch`]).
pub const RANGE_FETCH_TICKET_TYPE: &str = "type.concord.dev/concord.RangeFetch";
/// The largest range fetch ticket (a resume key is most of it: keys are at
/// most 64 KiB, twice that in hex).
pub const RANGE_FETCH_TICKET_BYTES_MAX: usize = 256 << 10;
/// The bytes of keys and values in one streamed batch (one batch holds at
/// least one pair, so a larger cell moves alone).
pub const STREAM_CHUNK_BYTES: usize = 4 << 20;
/// How a source says it may not serve the range yet (the start of its
/// `UNAVAILABLE` message): the fetcher waits and asks again.
pub const RANGE_SOURCE_NOT_READY: &str = "range source not ready";
/// Failed attempts in a row (no batch imported in between) after which a
/// fetch gives up on a source.
pub const FETCH_STREAM_RETRIES_MAX: u32 = 5;
/// The first wait after a failed attempt; it doubles up to
/// [`FETCH_RETRY_BACKOFF_MAX`].
pub const FETCH_RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const FETCH_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a fetch waits, by default, for a source that is not ready.
pub const FETCH_SOURCE_WAIT_DEFAULT: Duration = Duration::from_secs(60);
/// How often a fetch asks a source that is not ready again.
pub const FETCH_SOURCE_POLL: Duration = Duration::from_millis(50);

/// A range fetch ticket: `table`'s rows in `(start, end]` after key `after`
/// (hex in JSON), for the transition sealed at `seal_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RangeFetch {
    pub table: u32,
    pub start: i64,
    pub end: i64,
    pub seal_epoch: u64,
    #[serde(with = "hex_key", default)]
    pub after: Option<Vec<u8>>,
    /// Bytes per batch; the source caps it at [`STREAM_CHUNK_BYTES`].
    #[serde(default)]
    pub chunk_bytes: Option<usize>,
}

impl RangeFetch {
    pub fn range(&self) -> TokenRange {
        TokenRange {
            start: Token(self.start),
            end: Token(self.end),
        }
    }

    /// The request as a Flight ticket.
    ///
    /// # Errors
    /// If the request does not encode.
    pub fn ticket(&self) -> std::result::Result<Ticket, serde_json::Error> {
        let any = Any {
            type_url: RANGE_FETCH_TICKET_TYPE.to_owned(),
            value: serde_json::to_vec(self)?.into(),
        };
        Ok(Ticket {
            ticket: any.encode_to_vec().into(),
        })
    }

    /// Decodes a ticket's value.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` past [`RANGE_FETCH_TICKET_BYTES_MAX`] or for a
    /// value that does not decode.
    pub fn from_ticket_value(value: &[u8]) -> std::result::Result<RangeFetch, Status> {
        if value.len() > RANGE_FETCH_TICKET_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "a range fetch ticket of {} bytes (RANGE_FETCH_TICKET_BYTES_MAX {RANGE_FETCH_TICKET_BYTES_MAX})",
                value.len()
            )));
        }
        serde_json::from_slice(value)
            .map_err(|error| Status::invalid_argument(format!("range fetch ticket: {error}")))
    }
}

/// A resume key as lowercase hex in JSON.
mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &Option<Vec<u8>>, out: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(key) => {
                let text: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
                out.serialize_some(&text)
            }
            None => out.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(input)? else {
            return Ok(None);
        };
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("a hex key has an odd length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|at| {
                text.get(at..at + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("a key is not hex"))
            })
            .collect::<Result<Vec<u8>, D::Error>>()
            .map(Some)
    }
}

/// What a fetch moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Pairs imported.
    pub cells: u64,
    /// Bytes of keys and values imported.
    pub bytes: u64,
    /// Batches imported.
    pub chunks: u64,
    /// Attempts that resumed after a key imported by an interrupted one.
    pub resumed: u64,
}

/// A fetch's knobs; [`FetchOptions::default`] is what [`fetch_range`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Bytes per batch asked of the source (it caps them at [`STREAM_CHUNK_BYTES`]).
    pub chunk_bytes: usize,
    /// How long to wait for a source that is not ready (from the fetch's start).
    pub source_wait: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            chunk_bytes: STREAM_CHUNK_BYTES,
            source_wait: FETCH_SOURCE_WAIT_DEFAULT,
        }
    }
}

/// The Flight data a source streams for a range fetch.
pub type RangeFetchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<FlightData, Status>> + Send + 'static>>;

/// The batches' schema: the raw key and the encoded cell.
pub fn range_fetch_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("cell", DataType::Binary, false),
    ]))
}

/// The source's answer to a range fetch, after `flight.rs` checked the
/// source is ready: the range's pairs from `request.after` on, exported one
/// chunk per batch (each read from its own engine snapshot) as the client
/// reads them.
///
/// # Errors
/// `NOT_FOUND` for a table this node does not know.
pub fn range_fetch_stream<E: Engine>(
    db: Arc<Db<E>>,
    request: RangeFetch,
) -> std::result::Result<RangeFetchStream, Status> {
    let table = TableId(request.table);
    if db.schema().table_by_id(table).is_none() {
        return Err(Status::not_found(format!(
            "range fetch: table id {} is not in this node's schema",
            request.table
        )));
    }
    let range = request.range();
    let chunk_bytes = request
        .chunk_bytes
        .unwrap_or(STREAM_CHUNK_BYTES)
        .clamp(1, STREAM_CHUNK_BYTES);
    // State: `None` once the range is exhausted, else the key to resume after.
    let batches = futures::stream::try_unfold(Some(request.after), move |resume| {
        let db = Arc::clone(&db);
        async move {
            let Some(after) = resume else {
                return Ok(None);
            };
            let chunk = tokio::task::spawn_blocking(move || {
                db.export_rows(table, &range, after.as_deref(), chunk_bytes)
            })
            .await
            .map_err(|error| internal(format!("range export task: {error}")))?
            .map_err(|error| internal(format!("range export: {error}")))?;
            if chunk.cells.is_empty() {
                return Ok(None);
            }
            let batch = chunk_batch(&chunk)?;
            Ok(Some((batch, chunk.next.map(Some))))
        }
    });
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(range_fetch_schema())
        .with_max_flight_data_size(STREAM_CHUNK_BYTES)
        .build(batches)
        .map_err(Status::from);
    Ok(Box::pin(stream))
}

fn internal(message: String) -> FlightError {
    FlightError::Tonic(Box::new(Status::internal(message)))
}

/// A chunk as a batch of the range fetch schema.
fn chunk_batch(chunk: &RowChunk) -> std::result::Result<RecordBatch, FlightError> {
    let keys = BinaryArray::from_iter_values(chunk.cells.iter().map(|(key, _)| key));
    let cells = BinaryArray::from_iter_values(chunk.cells.iter().map(|(_, cell)| cell));
    Ok(RecordBatch::try_new(
        range_fetch_schema(),
        vec![Arc::new(keys), Arc::new(cells)],
    )?)
}

/// A received batch as a chunk.
fn batch_chunk(batch: &RecordBatch) -> std::result::Result<RowChunk, String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|column| column.as_any().downcast_ref::<BinaryArray>())
            .filter(|column| column.null_count() == 0)
            .ok_or_else(|| format!("a range fetch batch lacks a non-null binary column {name}"))
    };
    let (keys, cells) = (column("key")?, column("cell")?);
    Ok(RowChunk {
        cells: keys
            .iter()
            .zip(cells.iter())
            .filter_map(|(key, cell)| Some((key?.to_vec(), cell?.to_vec())))
            .collect(),
        next: None,
    })
}

/// Copies `table`'s rows in `range` from the node whose Flight (gRPC)
/// endpoint is `flight_address` into `db`, with the default
/// [`FetchOptions`]. See [`fetch_range_with`].
///
/// # Errors
/// As [`fetch_range_with`].
pub async fn fetch_range<E: Engine>(
    db: &Arc<Db<E>>,
    flight_address: &str,
    table: TableId,
    range: TokenRange,
    seal_epoch: u64,
) -> Result<FetchStats> {
    fetch_range_with(
        db,
        flight_address,
        table,
        range,
        seal_epoch,
        FetchOptions::default(),
    )
    .await
}

/// Why one attempt of a fetch ended early.
enum Interrupted {
    /// The source may not serve the range yet: wait, ask again.
    NotReady(String),
    /// The connection or stream failed: retry from the last imported key.
    Dropped(String),
    /// Retrying cannot help (bad request, bad data, a local write failure).
    Failed(Error),
}

/// Copies `table`'s rows in `range` from the source at `flight_address`
/// into `db`: clears the range first, then imports every batch as it
/// arrives (in key order, each in one synced write). A dropped stream
/// resumes after the last imported key, up to [`FETCH_STREAM_RETRIES_MAX`]
/// failures in a row with backoff; a source not ready yet is asked again
/// every [`FETCH_SOURCE_POLL`] until `options.source_wait` has passed.
/// The replica sees the rows after [`Db::rebuild_analytics`].
///
/// # Errors
/// `Io` (`TimedOut`) when the source stays not ready; `Io` when the source
/// keeps failing or refuses the request; `Storage` when a batch does not
/// import (a key outside the range, a bad cell) or the engine fails.
pub async fn fetch_range_with<E: Engine>(
    db: &Arc<Db<E>>,
    flight_address: &str,
    table: TableId,
    range: TokenRange,
    seal_epoch: u64,
    options: FetchOptions,
) -> Result<FetchStats> {
    let fail = |kind: std::io::ErrorKind, what: String| Error::Io {
        context: format!(
            "fetch table {} range ({}, {}] from {flight_address}",
            table.0, range.start, range.end
        ),
        source: std::io::Error::new(kind, what),
    };
    blocking(db, move |db| db.clear_rows(table, &range)).await?;
    let started = Instant::now();
    let mut stats = FetchStats::default();
    let mut after: Option<Vec<u8>> = None;
    let mut failures = 0u32;
    let mut backoff = FETCH_RETRY_BACKOFF_INITIAL;
    // Kept across attempts while the source only says "not ready".
    let mut client: Option<FlightClient> = None;
    loop {
        let chunks_before = stats.chunks;
        stats.resumed += u64::from(after.is_some());
        let request = RangeFetch {
            table: table.0,
            start: range.start.0,
            end: range.end.0,
            seal_epoch,
            after: after.clone(),
            chunk_bytes: Some(options.chunk_bytes),
        };
        let attempt = fetch_attempt(
            db,
            flight_address,
            request,
            &mut after,
            &mut stats,
            &mut client,
        );
        let interrupted = match attempt.await {
            Ok(()) => return Ok(stats),
            Err(interrupted) => interrupted,
        };
        match interrupted {
            Interrupted::Failed(error) => return Err(error),
            Interrupted::NotReady(reason) => {
                let waited = started.elapsed();
                if waited >= options.source_wait {
                    return Err(fail(
                        std::io::ErrorKind::TimedOut,
                        format!("the source was not ready after {waited:?}: {reason}"),
                    ));
                }
                tokio::time::sleep(FETCH_SOURCE_POLL).await;
            }
            Interrupted::Dropped(reason) => {
                // A new connection for the next attempt.
                client = None;
                if stats.chunks > chunks_before {
                    failures = 0;
                    backoff = FETCH_RETRY_BACKOFF_INITIAL;
                }
                failures += 1;
                if failures > FETCH_STREAM_RETRIES_MAX {
                    return Err(fail(
                        std::io::ErrorKind::ConnectionAborted,
                        format!(
                            "{failures} attempts in a row failed (FETCH_STREAM_RETRIES_MAX \
                             {FETCH_STREAM_RETRIES_MAX}): {reason}"
                        ),
                    ));
                }
                tracing::warn!(
                    table = table.0,
                    %reason,
                    failures,
                    "range fetch interrupted, resuming after the last imported key"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FETCH_RETRY_BACKOFF_MAX);
            }
        }
    }
}

/// One DoGet of a fetch: imports every batch, advancing `after` and
/// `stats` as each one is durable.
async fn fetch_attempt<E: Engine>(
    db: &Arc<Db<E>>,
    flight_address: &str,
    request: RangeFetch,
    after: &mut Option<Vec<u8>>,
    stats: &mut FetchStats,
    client: &mut Option<FlightClient>,
) -> std::result::Result<(), Interrupted> {
    let (table, range) = (TableId(request.table), request.range());
    let ticket = request.ticket().map_err(|error| {
        Interrupted::Failed(
            concord_storage::Error::Internal(format!("range fetch ticket: {error}")).into(),
        )
    })?;
    let flight = match client {
        Some(flight) => flight,
        None => client.insert(
            crate::dist_sql::connect_flight(flight_address)
                .await
                .map_err(Interrupted::Dropped)?,
        ),
    };
    let mut stream = flight.do_get(ticket).await.map_err(classify)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify)?;
        let chunk = batch_chunk(&batch).map_err(|error| {
            Interrupted::Failed(concord_storage::Error::InvalidRequest(error).into())
        })?;
        let Some((last, _)) = chunk.cells.last() else {
            continue;
        };
        // Keys come in strictly increasing order, after the resume key:
        // otherwise resuming could skip or repeat keys.
        let mut previous = after.as_deref();
        for (key, _) in &chunk.cells {
            if previous.is_some_and(|previous| key.as_slice() <= previous) {
                return Err(Interrupted::Failed(
                    concord_storage::Error::InvalidRequest(
                        "a range fetch batch is not in key order after the resume key".into(),
                    )
                    .into(),
                ));
            }
            previous = Some(key);
        }
        let last = last.clone();
        let bytes = chunk.size_bytes() as u64;
        let cells = chunk.cells.len() as u64;
        blocking(db, move |db| db.import_rows(table, &range, &chunk))
            .await
            .map_err(Interrupted::Failed)?;
        *after = Some(last);
        stats.cells += cells;
        stats.bytes += bytes;
        stats.chunks += 1;
    }
    Ok(())
}

/// Sorts a Flight error into wait, retry or fail.
fn classify(error: FlightError) -> Interrupted {
    let status = match error {
        FlightError::Tonic(status) => *status,
        other => return Interrupted::Dropped(other.to_string()),
    };
    match status.code() {
        Code::Unavailable if status.message().starts_with(RANGE_SOURCE_NOT_READY) => {
            Interrupted::NotReady(status.message().to_owned())
        }
        Code::InvalidArgument
        | Code::NotFound
        | Code::Unimplemented
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::ResourceExhausted => Interrupted::Failed(Error::Io {
            context: "range fetch refused by the source".into(),
            source: std::io::Error::other(format!("{:?}: {}", status.code(), status.message())),
        }),
        _ => Interrupted::Dropped(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Runs a blocking database call (a synced write) off the async threads.
async fn blocking<E: Engine, T: Send + 'static>(
    db: &Arc<Db<E>>,
    work: impl FnOnce(&Db<E>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || work(&db))
        .await
        .map_err(|error| Error::Io {
            context: "range streaming task".into(),
            source: std::io::Error::other(error.to_string()),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_round_trips_its_resume_key_and_an_oversized_one_is_refused() {
        let request = RangeFetch {
            table: 9,
            start: i64::MIN,
            end: -5,
            seal_epoch: 3,
            after: Some(vec![0x00, 0x7f, 0x80, 0xff]),
            chunk_bytes: None,
        };
        let json = serde_json::to_vec(&request).expect("encode");
        assert!(String::from_utf8_lossy(&json).contains("\"007f80ff\""));
        assert_eq!(
            RangeFetch::from_ticket_value(&json).expect("decode"),
            request
        );
        let without_after = br#"{"table":1,"start":0,"end":0,"seal_epoch":1}"#;
        let decoded = RangeFetch::from_ticket_value(without_after).expect("decode");
        assert_eq!((decoded.after, decoded.chunk_bytes), (None, None));
        let odd = br#"{"table":1,"start":0,"end":0,"seal_epoch":1,"after":"abc"}"#;
        assert_eq!(
            RangeFetch::from_ticket_value(odd).map_err(|status| status.code()),
            Err(Code::InvalidArgument)
        );
        let oversized = vec![b' '; RANGE_FETCH_TICKET_BYTES_MAX + 1];
        let refused = RangeFetch::from_ticket_value(&oversized).expect_err("too big");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("RANGE_FETCH_TICKET_BYTES_MAX"));
    }
}
