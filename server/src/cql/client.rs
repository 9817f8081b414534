//! A minimal CQL client (protocol v4, one request at a time) for `concord
//! demo`. Not a driver: no pooling, no paging loop, no retries. Real
//! applications use the Cassandra drivers, which the tests exercise.

use std::net::SocketAddr;

use cassandra_protocol::compression::Compression;
use cassandra_protocol::consistency::Consistency;
use cassandra_protocol::frame::message_batch::{
    BatchQuery, BatchQuerySubj, BatchType, BodyReqBatch,
};
use cassandra_protocol::frame::message_response::ResponseBody;
use cassandra_protocol::frame::message_result::ResResultBody;
use cassandra_protocol::frame::{Envelope, Flags, Version};
use cassandra_protocol::query::{QueryParams, QueryValues};
use cassandra_protocol::types::CBytesShort;
use cassandra_protocol::types::value::Value;
use concord_storage::types::CqlType;
use concord_storage::value::{CqlValue, native};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cql::error::{CqlError, CqlResult};
use concord_cql_wire::frame::ENVELOPE_HEADER_BYTES;

/// The largest response the client reads.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A connection to a CQL endpoint.
#[derive(Debug)]
pub struct CqlClient {
    stream: TcpStream,
}

impl CqlClient {
    /// Connects and sends STARTUP.
    ///
    /// # Errors
    /// Connection failures and error responses.
    pub async fn connect(address: SocketAddr) -> CqlResult<CqlClient> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| CqlError::Server(format!("connect to {address}: {error}")))?;
        let _ = stream.set_nodelay(true);
        let mut client = CqlClient { stream };
        let startup = Envelope::new_req_startup(None, Version::V4);
        match client.round_trip(startup).await? {
            ResponseBody::Ready => Ok(client),
            other => Err(CqlError::Protocol(format!(
                "STARTUP answered with {other:?}"
            ))),
        }
    }

    async fn round_trip(&mut self, envelope: Envelope) -> CqlResult<ResponseBody> {
        let bytes = envelope
            .encode_with(Compression::None)
            .map_err(|error| CqlError::Server(format!("encode request: {error}")))?;
        let io = |error: std::io::Error| CqlError::Server(format!("cql connection: {error}"));
        self.stream.write_all(&bytes).await.map_err(io)?;
        let mut header = [0u8; ENVELOPE_HEADER_BYTES];
        self.stream.read_exact(&mut header).await.map_err(io)?;
        let length = i32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| CqlError::Protocol(format!("response length {length}")))?;
        let mut frame = header.to_vec();
        frame.resize(ENVELOPE_HEADER_BYTES + length, 0);
        self.stream
            .read_exact(&mut frame[ENVELOPE_HEADER_BYTES..])
            .await
            .map_err(io)?;
        let parsed = Envelope::from_buffer(&frame, Compression::None)
            .map_err(|error| CqlError::Protocol(format!("response: {error}")))?;
        let body = parsed
            .envelope
            .response_body()
            .map_err(|error| CqlError::Protocol(format!("response body: {error}")))?;
        match body {
            ResponseBody::Error(error) => Err(CqlError::Invalid(format!(
                "server error {}: {}",
                error.ty.to_error_code(),
                error.message
            ))),
            other => Ok(other),
        }
    }

    async fn result(&mut self, envelope: Envelope) -> CqlResult<ResResultBody> {
        match self.round_trip(envelope).await? {
            ResponseBody::Result(result) => Ok(result),
            other => Err(CqlError::Protocol(format!(
                "expected a result, got {other:?}"
            ))),
        }
    }

    /// Runs a statement without values.
    ///
    /// # Errors
    /// Error responses.
    pub async fn query(&mut self, text: &str) -> CqlResult<ResResultBody> {
        let envelope = Envelope::new_req_query(
            text.to_owned(),
            Consistency::One,
            None,
            false,
            None,
            None,
            None,
            None,
            None,
            None,
            Flags::empty(),
            Version::V4,
        );
        self.result(envelope).await
    }

    /// Prepares a statement; returns its id.
    ///
    /// # Errors
    /// Error responses.
    pub async fn prepare(&mut self, text: &str) -> CqlResult<Vec<u8>> {
        let envelope =
            Envelope::new_req_prepare(text.to_owned(), None, Flags::empty(), Version::V4);
        match self.result(envelope).await? {
            ResResultBody::Prepared(prepared) => Ok(prepared.id.into_bytes().unwrap_or_default()),
            other => Err(CqlError::Protocol(format!(
                "PREPARE answered with {other:?}"
            ))),
        }
    }

    /// Executes a prepared statement with values.
    ///
    /// # Errors
    /// Error responses.
    pub async fn execute(&mut self, id: &[u8], values: Vec<Value>) -> CqlResult<ResResultBody> {
        let params = QueryParams {
            consistency: Consistency::One,
            values: Some(QueryValues::SimpleValues(values)),
            ..QueryParams::default()
        };
        let id = CBytesShort::new(id.to_vec());
        let envelope = Envelope::new_req_execute(&id, None, &params, Flags::empty(), Version::V4);
        self.result(envelope).await
    }

    /// Executes one prepared statement once per row of values, as one
    /// unlogged batch (one transaction).
    ///
    /// # Errors
    /// Error responses.
    pub async fn batch(&mut self, id: &[u8], rows: Vec<Vec<Value>>) -> CqlResult<()> {
        let queries = rows
            .into_iter()
            .map(|values| {
                BatchQuery::new(
                    BatchQuerySubj::PreparedId(CBytesShort::new(id.to_vec())),
                    QueryValues::SimpleValues(values),
                )
            })
            .collect();
        let batch = BodyReqBatch {
            batch_type: BatchType::Unlogged,
            queries,
            consistency: Consistency::One,
            serial_consistency: None,
            timestamp: None,
            keyspace: None,
            now_in_seconds: None,
        };
        self.result(Envelope::new_req_batch(batch, Flags::empty(), Version::V4))
            .await
            .map(|_| ())
    }
}

/// A bound value from a typed value.
///
/// # Errors
/// `Invalid` when the value does not fit the type.
pub fn bind(value: &CqlValue, ty: &CqlType) -> CqlResult<Value> {
    native::serialize_to_vec(value, ty)
        .map(Value::Some)
        .map_err(|error| CqlError::Invalid(error.to_string()))
}

/// The rows of a result, decoded with the given column types.
///
/// # Errors
/// `Protocol` when the result is not rows or a value does not decode.
pub fn rows(result: &ResResultBody, types: &[CqlType]) -> CqlResult<Vec<Vec<Option<CqlValue>>>> {
    let ResResultBody::Rows(rows) = result else {
        return Err(CqlError::Protocol(format!("expected rows, got {result:?}")));
    };
    rows.rows_content
        .iter()
        .map(|row| {
            row.iter()
                .zip(types)
                .map(|(cell, ty)| match cell.as_slice() {
                    None => Ok(None),
                    Some(bytes) => native::deserialize(ty, bytes)
                        .map(Some)
                        .map_err(|error| CqlError::Protocol(format!("result value: {error}"))),
                })
                .collect()
        })
        .collect()
}
