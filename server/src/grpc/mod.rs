//! The gRPC endpoint: the Concord API (`concord.v1.Concord`, see
//! design/api.md) and, on the same port, the Arrow Flight SQL service of
//! `server/src/flight.rs` (both listed in [`routes`]).
//!
//! ```text
//! accept ──► HTTP/2 connection (tonic/hyper)
//!              at most `concurrent_streams_max` streams (calls) per connection,
//!              and as many requests in service per connection; messages over
//!              `message_bytes_max` are refused (RESOURCE_EXHAUSTED)
//!            ──► service (service.rs): values typed against the schema (values.rs),
//!              CQL statements through the CQL executor, SQL through Db::sql_with,
//!              changes from the change feed; blocking work on the blocking pool
//!            ──► errors: one mapping to a status + concord.v1.ErrorDetail (error.rs)
//! ```

pub mod error;
pub mod service;
pub mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::{Routes, RoutesBuilder};

use crate::Db;

/// Where the gRPC endpoint listens when not configured: loopback, as the
/// CQL endpoint (`0.0.0.0:50051` to serve other machines).
pub const GRPC_LISTEN_ADDRESS_DEFAULT: &str = "127.0.0.1:50051";
/// The largest request or response message, in bytes (tonic's default is
/// 4 MiB; SQL result batches and row writes are larger).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// The most concurrent calls (HTTP/2 streams) one connection may have open;
/// it is also the per-connection bound on requests in service.
pub const CONCURRENT_STREAMS_MAX_DEFAULT: usize = 256;
/// Change-stream messages buffered per subscription before the node waits
/// for the client (backpressure: it stops reading the feed, never drops).
pub const CHANGE_STREAM_BUFFER_DEFAULT: usize = 64;
/// The most rows one `WriteRows` call may carry.
pub const WRITE_ROWS_MAX: usize = 10_000;
/// The most rows one `ReadRows` call returns (and its default limit).
pub const READ_ROWS_MAX: usize = 10_000;
/// Feed records read per step of a change stream.
pub const CHANGE_STREAM_READ_RECORDS: usize = 512;
/// How long a caught-up change stream waits before looking at the feed again.
pub const CHANGE_STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The endpoint's limits (config keys `grpc_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub message_bytes_max: usize,
    pub concurrent_streams_max: usize,
    pub change_stream_buffer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            concurrent_streams_max: CONCURRENT_STREAMS_MAX_DEFAULT,
            change_stream_buffer: CHANGE_STREAM_BUFFER_DEFAULT,
        }
    }
}

/// Every service the gRPC port serves: the Concord API and Arrow Flight SQL
/// (`crate::flight`). A further service is added here, so `concord start`
/// and the embedded tests serve the same set.
///
/// # Errors
/// A service that cannot be built (Flight SQL's static SQL info: a bug).
pub fn routes(db: &Arc<Db>, limits: Limits) -> std::io::Result<Routes> {
    let mut builder = RoutesBuilder::default();
    builder.add_service(service::server(db.clone(), limits));
    let flight = crate::flight::service(db.clone())
        .map_err(|error| std::io::Error::other(format!("flight sql service: {error}")))?;
    builder.add_service(flight);
    Ok(builder.routes())
}

/// A running gRPC endpoint.
#[derive(Debug)]
pub struct GrpcServer {
    local_address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    /// Binds `address` and serves [`routes`] until stopped or dropped.
    ///
    /// # Errors
    /// The bind failure (address in use, permission).
    pub async fn start(
        db: Arc<Db>,
        address: SocketAddr,
        limits: Limits,
    ) -> std::io::Result<GrpcServer> {
        let routes = routes(&db, limits)?;
        GrpcServer::start_with_routes(address, limits, routes).await
    }

    /// Binds `address` and serves `routes` (any set of tonic services).
    ///
    /// # Errors
    /// The bind failure (address in use, permission).
    pub async fn start_with_routes(
        address: SocketAddr,
        limits: Limits,
        routes: Routes,
    ) -> std::io::Result<GrpcServer> {
        assert!(limits.message_bytes_max > 0 && limits.concurrent_streams_max > 0);
        assert!(limits.change_stream_buffer > 0);
        let listener = TcpListener::bind(address).await?;
        let local_address = listener.local_addr()?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let streams = u32::try_from(limits.concurrent_streams_max).unwrap_or(u32::MAX);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(streams)
            .concurrency_limit_per_connection(limits.concurrent_streams_max);
        let server = builder.add_routes(routes);
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(%error, "grpc endpoint failed");
            }
        });
        Ok(GrpcServer {
            local_address,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Stops accepting and ends open calls.
    pub fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}
