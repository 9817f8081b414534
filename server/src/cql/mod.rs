//! The CQL native protocol endpoint (v4 and v5): cqlsh and the Cassandra
//! drivers talk to `concord start` through it unchanged. See `design/cql.md`.
//!
//! ```text
//! accept ──► connection task (one per client, connections_max)
//!              reader: frames ► requests; a permit per request from the
//!                      connection (in_flight_requests_max) and from the
//!                      node (node_in_flight_requests_max): when either is
//!                      exhausted the reader stops reading, so TCP pushes back
//!              request task: parse / bind / execute on the blocking pool
//!              writer: responses (and pushed events) ► frames
//! ```
//!
//! Every write reaches the database through `Db::execute` (in
//! [`execute`]); a malformed frame ends only its own connection.

pub mod client;
pub mod connection;
pub mod ddl;
pub mod error;
pub mod execute;
pub mod select;
pub mod system;
pub mod transaction;
pub mod values;

/// The framing lives in `concord-cql-wire`; re-exported for the tests.
pub use concord_cql_wire::frame;

use std::net::SocketAddr;
use std::sync::Arc;

use cassandra_protocol::frame::events::ServerEvent;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use tokio::net::TcpListener;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use crate::Db;

/// The default `frame_bytes_max` (Cassandra's `native_transport_max_frame_size`
/// is 16 MiB; the issue sets 256 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// The default number of concurrent client connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// The default number of requests one connection may have in flight.
pub const IN_FLIGHT_REQUESTS_MAX_DEFAULT: usize = 1024;
/// The default number of requests the whole node may have in flight over
/// every connection together.
pub const NODE_IN_FLIGHT_REQUESTS_MAX_DEFAULT: usize = 4096;
/// Pushed events buffered per connection before a slow one misses some.
pub const EVENTS_BUFFERED_MAX: usize = 256;

/// The endpoint's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub frame_bytes_max: usize,
    pub connections_max: usize,
    pub in_flight_requests_max: usize,
    /// Over all connections: when every permit is taken, each connection
    /// stops reading after its current request (backpressure).
    pub node_in_flight_requests_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            in_flight_requests_max: IN_FLIGHT_REQUESTS_MAX_DEFAULT,
            node_in_flight_requests_max: NODE_IN_FLIGHT_REQUESTS_MAX_DEFAULT,
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    pub limits: Limits,
    /// The address clients reach this node at (system.local's rpc_address).
    pub address: SocketAddr,
    pub prepared: execute::PreparedCache,
    /// Server events (schema, topology and status changes) for registered
    /// connections.
    pub events: broadcast::Sender<ServerEvent>,
    /// The node-wide in-flight bound (`node_in_flight_requests_max`).
    pub in_flight: Arc<NodeInFlight>,
}

/// Requests in flight over the whole node: a semaphore of
/// `node_in_flight_requests_max` permits, and the count and its high-water
/// mark (for operators, and for the test that proves the bound holds).
#[derive(Debug)]
pub struct NodeInFlight {
    permits: Arc<Semaphore>,
    current: AtomicUsize,
    high_water: AtomicUsize,
}

/// One request's share of the node-wide bound; released on drop.
#[derive(Debug)]
pub struct NodeInFlightPermit {
    _permit: OwnedSemaphorePermit,
    node: Arc<NodeInFlight>,
}

impl NodeInFlight {
    /// A bound of `max` requests (at least 1).
    pub fn new(max: usize) -> Arc<NodeInFlight> {
        assert!(max > 0, "node_in_flight_requests_max must be at least 1");
        Arc::new(NodeInFlight {
            permits: Arc::new(Semaphore::new(max)),
            current: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
        })
    }

    /// Waits for a permit: the caller (a connection's reader) reads nothing
    /// more until it has one.
    pub async fn acquire(node: &Arc<NodeInFlight>) -> Option<NodeInFlightPermit> {
        let permit = node.permits.clone().acquire_owned().await.ok()?;
        let now = node.current.fetch_add(1, AtomicOrdering::AcqRel) + 1;
        node.high_water.fetch_max(now, AtomicOrdering::AcqRel);
        Some(NodeInFlightPermit {
            _permit: permit,
            node: node.clone(),
        })
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        self.current.load(AtomicOrdering::Acquire)
    }

    /// The most requests that were ever in flight at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(AtomicOrdering::Acquire)
    }
}

impl Drop for NodeInFlightPermit {
    fn drop(&mut self) {
        self.node.current.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

/// A running CQL endpoint.
#[derive(Debug)]
pub struct CqlServer {
    local_address: SocketAddr,
    in_flight: Arc<NodeInFlight>,
    task: tokio::task::JoinHandle<()>,
}

impl CqlServer {
    /// Binds `address` and serves connections until dropped or stopped.
    ///
    /// # Errors
    /// The bind failure (address in use, permission).
    pub async fn start(
        db: Arc<Db>,
        address: SocketAddr,
        limits: Limits,
    ) -> std::io::Result<CqlServer> {
        assert!(limits.frame_bytes_max > 0 && limits.connections_max > 0);
        assert!(limits.in_flight_requests_max > 0 && limits.node_in_flight_requests_max > 0);
        let listener = TcpListener::bind(address).await?;
        let local_address = listener.local_addr()?;
        // A cluster member announces the schema log's changes, whichever
        // member they came through, and its peers' topology and status.
        let events = match db.cluster_meta() {
            Some(cluster) => cluster.events().clone(),
            None => broadcast::channel(EVENTS_BUFFERED_MAX).0,
        };
        let shared = Arc::new(Shared {
            db,
            limits,
            address: local_address,
            prepared: execute::PreparedCache::default(),
            events,
            in_flight: NodeInFlight::new(limits.node_in_flight_requests_max),
        });
        let in_flight = shared.in_flight.clone();
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(CqlServer {
            local_address,
            in_flight,
            task,
        })
    }

    /// The address it listens on (with the port the OS chose for port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The node-wide count of requests in flight.
    pub fn in_flight(&self) -> &NodeInFlight {
        &self.in_flight
    }

    /// Stops accepting; open connections end with the runtime.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.limits.connections_max));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(%error, "cql accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    connection::serve(stream, peer, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(connection::refuse(stream, shared.limits.connections_max));
            }
        }
    }
}
