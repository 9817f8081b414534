//! One client connection: the reader (frames to requests, with the
//! in-flight bound), the request tasks, and the writer (responses and pushed
//! events to frames, in the framing the connection is in).
//!
//! ```text
//! v4:  envelopes both ways, lz4 per envelope once STARTUP asked for it
//! v5:  STARTUP / READY as plain envelopes, then both directions switch to
//!      segments (CRC24 header, CRC32 payload; lz4 per segment if asked)
//! ```
//!
//! A frame that cannot be read (bad version, oversized, bad CRC, body that
//! does not decode) gets a protocol error and ends this connection only.

use std::net::SocketAddr;
use std::sync::Arc;

use cassandra_protocol::compression::Compression;
use cassandra_protocol::frame::Version;
use cassandra_protocol::frame::events::SimpleServerEvent;
use cassandra_protocol::frame::message_event::BodyResEvent;
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_response::ResponseBody;
use cassandra_protocol::frame::message_supported::BodyResSupported;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};

use crate::cql::Shared;
use crate::cql::error::{CqlError, CqlResult};
use crate::cql::execute;
use concord_cql_wire::codec::{
    OPCODE_EXECUTE, decode_request, encode, execute_id, execute_skips_metadata,
};
use concord_cql_wire::frame::{self, ENVELOPE_HEADER_BYTES, EnvelopeHeader, SegmentRead};

/// The CQL version reported in OPTIONS / system.local.
pub const CQL_VERSION: &str = "3.4.7";
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The most bytes of queued responses gathered into one socket write.
const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;

const FLAG_COMPRESSION: u8 = 0x01;
const FLAG_CUSTOM_PAYLOAD: u8 = 0x04;

/// How outgoing envelopes are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Envelopes { lz4: bool },
    Segments { lz4: bool },
}

#[derive(Debug)]
struct Outgoing {
    envelope: Vec<u8>,
    framing: Framing,
}

/// What the connection reads from a request's bytes before decoding it.
#[derive(Debug, Clone, Copy, Default)]
struct RequestTraits {
    /// EXECUTE asked for rows without metadata.
    skip_metadata: bool,
    /// EXECUTE of a prepared point read: run on the connection's task.
    point_read: bool,
}

/// Per-connection state the request tasks share.
#[derive(Debug, Default)]
pub struct Session {
    /// The keyspace `USE` selected.
    pub keyspace: Mutex<Option<String>>,
}

/// Serves one connection until the client closes it or sends a frame that
/// cannot be read.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    tracing::debug!(%peer, "cql connection opened");
    let (reader, writer) = stream.into_split();
    let channel_bytes = shared.limits.in_flight_requests_max + 16;
    let (sender, receiver) = mpsc::channel::<Outgoing>(channel_bytes);
    let writer_task = tokio::spawn(write_loop(writer, receiver));
    let mut connection = Connection {
        shared,
        session: Arc::new(Session::default()),
        sender,
        framing: Framing::Envelopes { lz4: false },
        version: None,
        in_flight: Arc::new(Semaphore::new(0)),
        registered: None,
    };
    connection.in_flight = Arc::new(Semaphore::new(
        connection.shared.limits.in_flight_requests_max,
    ));
    if let Err(error) = connection.read_loop(reader).await {
        tracing::debug!(%peer, %error, "cql connection closed after an unreadable frame");
    }
    drop(connection);
    let _ = writer_task.await;
    tracing::debug!(%peer, "cql connection closed");
}

/// Answers a connection over `connections_max` with an Overloaded error on
/// its first request, then closes it.
pub async fn refuse(mut stream: TcpStream, connections_max: usize) {
    let mut header = [0u8; ENVELOPE_HEADER_BYTES];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_exact(&mut header),
    )
    .await;
    let stream_id = match read {
        Ok(Ok(_)) => i16::from_be_bytes([header[2], header[3]]),
        _ => 0,
    };
    let error = CqlError::Overloaded(format!(
        "too many connections: this node accepts connections_max = {connections_max}"
    ));
    if let Ok(bytes) = encode(
        Version::V4,
        stream_id,
        &error_response(&error),
        Compression::None,
    ) {
        let _ = stream.write_all(&bytes).await;
    }
}

struct Connection {
    shared: Arc<Shared>,
    session: Arc<Session>,
    sender: mpsc::Sender<Outgoing>,
    framing: Framing,
    version: Option<u8>,
    in_flight: Arc<Semaphore>,
    /// The event types this connection registered for (REGISTER adds),
    /// shared with the forwarding task the first REGISTER starts.
    registered: Option<Arc<Mutex<Vec<SimpleServerEvent>>>>,
}

fn error_response(error: &CqlError) -> ResponseBody {
    ResponseBody::Error(error.to_error_body())
}

fn wire_version(version: u8) -> Version {
    if version == 5 {
        Version::V5
    } else {
        Version::V4
    }
}

async fn write_loop(mut writer: OwnedWriteHalf, mut receiver: mpsc::Receiver<Outgoing>) {
    let mut buffer = Vec::new();
    while let Some(outgoing) = receiver.recv().await {
        buffer.clear();
        frame_outgoing(outgoing, &mut buffer);
        // Responses that are already queued go out in the same write: one
        // system call for many small responses under load.
        while buffer.len() < WRITE_COALESCE_BYTES_MAX {
            let Ok(outgoing) = receiver.try_recv() else {
                break;
            };
            frame_outgoing(outgoing, &mut buffer);
        }
        if writer.write_all(&buffer).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

fn frame_outgoing(outgoing: Outgoing, buffer: &mut Vec<u8>) {
    match outgoing.framing {
        Framing::Envelopes { .. } => buffer.extend_from_slice(&outgoing.envelope),
        Framing::Segments { lz4 } => frame::write_segments(&outgoing.envelope, lz4, buffer),
    }
}

impl Connection {
    async fn send(&self, version: u8, stream_id: i16, response: &ResponseBody) {
        let compression = match self.framing {
            Framing::Envelopes { lz4: true } => Compression::Lz4,
            _ => Compression::None,
        };
        send_response(
            &self.sender,
            self.framing,
            version,
            stream_id,
            response,
            compression,
        )
        .await;
    }

    async fn read_loop(&mut self, mut reader: OwnedReadHalf) -> CqlResult<()> {
        let frame_bytes_max = self.shared.limits.frame_bytes_max;
        let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
        let mut envelopes: Vec<u8> = Vec::new();
        loop {
            // Take every complete unit out of the buffer before reading more;
            // `start` walks over them and the consumed prefix is dropped once.
            let mut start = 0;
            loop {
                match self.framing {
                    Framing::Envelopes { .. } => {
                        let Some((header, consumed)) =
                            self.complete_envelope(&buffer[start..]).await?
                        else {
                            break;
                        };
                        let body = buffer[start + ENVELOPE_HEADER_BYTES..start + consumed].to_vec();
                        start += consumed;
                        self.dispatch(header, body).await?;
                    }
                    Framing::Segments { lz4 } => {
                        let segment = match frame::read_segment(&buffer[start..], lz4)
                            .map_err(CqlError::from)
                        {
                            Ok(segment) => segment,
                            Err(error) => return self.fail(error).await,
                        };
                        let SegmentRead::Segment { consumed, payload } = segment else {
                            break;
                        };
                        start += consumed;
                        envelopes.extend_from_slice(&payload);
                        if envelopes.len() > frame_bytes_max + ENVELOPE_HEADER_BYTES {
                            let error = CqlError::Protocol(format!(
                                "envelope over frame_bytes_max = {frame_bytes_max}"
                            ));
                            return self.fail(error).await;
                        }
                        let mut envelope_start = 0;
                        while let Some((header, consumed)) =
                            self.complete_envelope(&envelopes[envelope_start..]).await?
                        {
                            let body = envelopes
                                [envelope_start + ENVELOPE_HEADER_BYTES..envelope_start + consumed]
                                .to_vec();
                            envelope_start += consumed;
                            self.dispatch(header, body).await?;
                        }
                        envelopes.drain(..envelope_start);
                    }
                }
            }
            buffer.drain(..start);
            buffer.reserve(READ_CHUNK_BYTES);
            let read = reader
                .read_buf(&mut buffer)
                .await
                .map_err(|error| CqlError::Protocol(format!("read: {error}")))?;
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// A complete envelope at the front of `bytes`: its header and length.
    async fn complete_envelope(&self, bytes: &[u8]) -> CqlResult<Option<(EnvelopeHeader, usize)>> {
        if bytes.len() < ENVELOPE_HEADER_BYTES {
            return Ok(None);
        }
        let header = match frame::parse_header(bytes, self.shared.limits.frame_bytes_max)
            .map_err(CqlError::from)
        {
            Ok(header) => header,
            Err(error) => {
                let stream_id = i16::from_be_bytes([bytes[2], bytes[3]]);
                let version = self.version.unwrap_or(4);
                self.send(version, stream_id, &error_response(&error)).await;
                return Err(error);
            }
        };
        let total = ENVELOPE_HEADER_BYTES + header.body_bytes;
        Ok((bytes.len() >= total).then_some((header, total)))
    }

    async fn fail(&self, error: CqlError) -> CqlResult<()> {
        let version = self.version.unwrap_or(4);
        self.send(version, 0, &error_response(&error)).await;
        Err(error)
    }

    async fn dispatch(&mut self, header: EnvelopeHeader, body: Vec<u8>) -> CqlResult<()> {
        let stream_id = header.stream_id;
        if let Some(version) = self.version
            && version != header.version
        {
            let error = CqlError::Protocol(format!(
                "the connection speaks protocol version {version}; got a frame of version {}",
                header.version
            ));
            self.send(version, stream_id, &error_response(&error)).await;
            return Err(error);
        }
        let body = if header.flags & FLAG_COMPRESSION != 0 {
            match self.framing {
                Framing::Envelopes { lz4: true } => {
                    match frame::decompress_v4_lz4(&body, self.shared.limits.frame_bytes_max)
                        .map_err(CqlError::from)
                    {
                        Ok(body) => body,
                        Err(error) => return self.fail(error).await,
                    }
                }
                _ => {
                    let error = CqlError::Protocol(
                        "compressed frame on a connection that did not negotiate compression"
                            .into(),
                    );
                    return self.fail(error).await;
                }
            }
        } else {
            body
        };
        if header.flags & FLAG_CUSTOM_PAYLOAD != 0 {
            let error = CqlError::Protocol("custom payloads are not supported".into());
            self.send(header.version, stream_id, &error_response(&error))
                .await;
            return Ok(());
        }
        let version = wire_version(header.version);
        let execute = header.opcode == OPCODE_EXECUTE;
        let traits = RequestTraits {
            skip_metadata: execute && execute_skips_metadata(&body, version),
            point_read: execute
                && execute_id(&body).is_some_and(|id| self.shared.prepared.is_point_read(id)),
        };
        let request = match decode_request(&body, header.opcode, version).map_err(CqlError::from) {
            Ok(request) => request,
            Err(error) => {
                self.send(header.version, stream_id, &error_response(&error))
                    .await;
                return Err(error);
            }
        };
        self.handle(header.version, stream_id, request, traits)
            .await
    }

    async fn handle(
        &mut self,
        version: u8,
        stream_id: i16,
        request: RequestBody,
        traits: RequestTraits,
    ) -> CqlResult<()> {
        match request {
            RequestBody::Startup(startup) => {
                let lz4 = match startup
                    .map
                    .get("COMPRESSION")
                    .map(|name| name.to_lowercase())
                {
                    None => false,
                    Some(name) if name == "lz4" => true,
                    Some(name) => {
                        let error = CqlError::Protocol(format!(
                            "compression {name} is not supported; use lz4 or none"
                        ));
                        self.send(version, stream_id, &error_response(&error)).await;
                        return Ok(());
                    }
                };
                self.version = Some(version);
                self.framing = Framing::Envelopes {
                    lz4: lz4 && version == 4,
                };
                self.send(version, stream_id, &ResponseBody::Ready).await;
                if version == 5 {
                    self.framing = Framing::Segments { lz4 };
                }
            }
            RequestBody::Options(_) => {
                let data = [
                    ("CQL_VERSION", vec![CQL_VERSION]),
                    ("COMPRESSION", vec!["lz4"]),
                    ("PROTOCOL_VERSIONS", vec!["4/v4", "5/v5"]),
                ]
                .into_iter()
                .map(|(key, values)| {
                    (
                        key.to_owned(),
                        values.into_iter().map(str::to_owned).collect(),
                    )
                })
                .collect();
                let response = ResponseBody::Supported(BodyResSupported { data });
                self.send(version, stream_id, &response).await;
            }
            RequestBody::Register(register) => {
                let registered = match &self.registered {
                    Some(registered) => Arc::clone(registered),
                    None => self.forward_events(version),
                };
                {
                    let mut registered = registered.lock();
                    for event in register.events {
                        if !registered.contains(&event) {
                            registered.push(event);
                        }
                    }
                }
                self.send(version, stream_id, &ResponseBody::Ready).await;
            }
            RequestBody::AuthResponse(_) => {
                let response = ResponseBody::AuthSuccess(
                    cassandra_protocol::frame::message_auth_success::BodyReqAuthSuccess {
                        data: cassandra_protocol::types::CBytes::new_null(),
                    },
                );
                self.send(version, stream_id, &response).await;
            }
            request => {
                if self.version.is_none() {
                    let error = CqlError::Protocol("send STARTUP before other requests".into());
                    self.send(version, stream_id, &error_response(&error)).await;
                    return Ok(());
                }
                // Backpressure: when every permit is taken, stop reading.
                let permit = self
                    .in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| CqlError::Server("in-flight semaphore closed".into()))?;
                let node_permit = crate::cql::NodeInFlight::acquire(&self.shared.in_flight)
                    .await
                    .ok_or_else(|| CqlError::Server("node in-flight semaphore closed".into()))?;
                let shared = self.shared.clone();
                let session = self.session.clone();
                let sender = self.sender.clone();
                let framing = self.framing;
                tokio::spawn(async move {
                    let wire = wire_version(version);
                    let skip_metadata = traits.skip_metadata;
                    let response = if traits.point_read {
                        // A bounded lookup: cheaper here than the handoff
                        // to a blocking-pool thread and back.
                        execute::handle_request(&shared, &session, request, wire, skip_metadata)
                    } else {
                        tokio::task::spawn_blocking(move || {
                            execute::handle_request(&shared, &session, request, wire, skip_metadata)
                        })
                        .await
                        .unwrap_or_else(|error| {
                            Err(CqlError::Server(format!("request task failed: {error}")))
                        })
                    };
                    let response = response.unwrap_or_else(|error| error_response(&error));
                    let compression = match framing {
                        Framing::Envelopes { lz4: true } => Compression::Lz4,
                        _ => Compression::None,
                    };
                    send_response(&sender, framing, version, stream_id, &response, compression)
                        .await;
                    drop(node_permit);
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    /// Starts the task that forwards the events this connection registers
    /// for; the list it filters by, empty until the caller fills it.
    fn forward_events(&mut self, version: u8) -> Arc<Mutex<Vec<SimpleServerEvent>>> {
        let registered = Arc::new(Mutex::new(Vec::new()));
        self.registered = Some(Arc::clone(&registered));
        let mut events = self.shared.events.subscribe();
        let filter = Arc::clone(&registered);
        let sender = self.sender.clone();
        let framing = self.framing;
        tokio::spawn(async move {
            loop {
                let change = match events.recv().await {
                    Ok(change) => change,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if !filter.lock().contains(&SimpleServerEvent::from(&change)) {
                    continue;
                }
                let response = ResponseBody::Event(BodyResEvent { event: change });
                let compression = match framing {
                    Framing::Envelopes { lz4: true } => Compression::Lz4,
                    _ => Compression::None,
                };
                if sender.is_closed() {
                    return;
                }
                send_response(&sender, framing, version, -1, &response, compression).await;
            }
        });
        registered
    }
}

async fn send_response(
    sender: &mpsc::Sender<Outgoing>,
    framing: Framing,
    version: u8,
    stream_id: i16,
    response: &ResponseBody,
    compression: Compression,
) {
    let wire = wire_version(version);
    let envelope = match encode(wire, stream_id, response, compression) {
        Ok(envelope) => envelope,
        Err(error) => {
            let fallback = error_response(&CqlError::from(error));
            match encode(wire, stream_id, &fallback, compression) {
                Ok(envelope) => envelope,
                Err(_) => return,
            }
        }
    };
    let _ = sender.send(Outgoing { envelope, framing }).await;
}
