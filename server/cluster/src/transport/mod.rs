//! The node-to-node transport (design/cluster.md, "Transport"): one tonic
//! bidirectional stream per ordered pair of nodes, carrying envelopes that
//! batch many opaque payloads (the protocol core's encoded messages).
//!
//! A [`Transport`] serves the `concord.cluster.v1.Peer` service on its
//! listen address and dials every peer it was given ([`Transport::add_peer`]).
//! [`Transport::send`] never blocks and never waits for the network: it
//! appends the payload to the peer's bounded outbound queue, or refuses it
//! (unknown peer, payload too large, queue full: the last one is counted as a
//! drop). One task per peer drains its queue into envelopes on a live
//! connection, redialling with exponential backoff and jitter when the
//! connection fails. Received payloads come out of the [`Inbound`] receiver
//! `start` returns, in the order each connection carried them.
//!
//! Delivery is at most once: a payload queued while its peer is down waits
//! in the queue (bounded) and goes out after the reconnection; a payload in
//! flight when a connection breaks may be lost. Each connection has a session
//! number and numbers its envelopes 1, 2, ...; a receiver refuses a gap, a
//! repeat or a connection older than the newest it accepted from that node.

pub mod accord;
mod inbound;
mod limits;
mod outbound;
/// The generated code of package `concord.cluster.v1` (checked in; a test
/// in `tests/transport.rs` fails when it is stale).
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod peer_v1;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use concord_txn::timestamp::{Epoch, NodeId};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use limits::{
    BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, ENVELOPE_BYTES_MAX, ENVELOPE_OVERHEAD_BYTES,
    GRPC_MESSAGE_BYTES_MAX, HANDSHAKE_TIMEOUT, INBOUND_BYTES_MAX, INBOUND_QUEUE_MAX, Jitter,
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Limits, MESSAGE_OVERHEAD_BYTES,
    MESSAGES_PER_ENVELOPE_MAX, QUEUE_BYTES_MAX, QUEUE_MESSAGES_MAX, SHUTDOWN_GRACE,
    STREAM_BUFFER_ENVELOPES, backoff,
};

/// The transport's own wire version (framing and handshake), checked in the
/// handshake.
pub const TRANSPORT_VERSION: u32 = 1;

/// What a node needs to join the mesh.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster's id: a node refuses peers of another cluster.
    pub cluster_id: String,
    /// This node.
    pub node: NodeId,
    /// Where to serve the peer service (port 0: the OS picks one).
    pub listen: SocketAddr,
    /// The payload codec's version (the protocol core's message codec);
    /// peers with another version are refused in the handshake.
    pub codec_version: u32,
    pub limits: Limits,
}

/// One received payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sending node.
    pub from: NodeId,
    /// The sender's topology epoch when it sent the payload (see
    /// [`Transport::set_epoch`]).
    pub epoch: Epoch,
    /// The connection (session) it came on: grows with every reconnection of
    /// the sender, so payloads of an older connection are recognisable.
    pub session: u64,
    /// The envelope's number within the session (1, 2, ...).
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// The receiving end of a transport: every payload sent to this node, as
/// [`Inbound`]s. Bounded in messages (`inbound_queue_max`) and payload bytes
/// (`inbound_bytes_max`); taking a payload frees its room.
#[derive(Debug)]
pub struct InboundReceiver {
    receiver: mpsc::Receiver<Inbound>,
    bytes: Arc<Semaphore>,
}

impl InboundReceiver {
    /// The next payload; `None` once the transport is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let inbound = self.receiver.recv().await?;
        self.release(&inbound);
        Some(inbound)
    }

    /// The next payload if one is waiting.
    ///
    /// # Errors
    /// `Empty` when none is waiting, `Disconnected` once the transport is gone.
    pub fn try_recv(&mut self) -> Result<Inbound, mpsc::error::TryRecvError> {
        let inbound = self.receiver.try_recv()?;
        self.release(&inbound);
        Ok(inbound)
    }

    /// The next payload, blocking this (non-async) thread until one comes.
    pub fn blocking_recv(&mut self) -> Option<Inbound> {
        let inbound = self.receiver.blocking_recv()?;
        self.release(&inbound);
        Some(inbound)
    }

    fn release(&self, inbound: &Inbound) {
        self.bytes.add_permits(inbound_cost(inbound) as usize);
    }
}

/// The room a payload takes in the inbound byte bound.
pub(crate) fn inbound_cost(inbound: &Inbound) -> u32 {
    u32::try_from(inbound.payload.len()).unwrap_or(u32::MAX)
}

/// Why `send` refused a payload. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("unknown peer {0}: add it with Transport::add_peer first")]
    UnknownPeer(NodeId),
    #[error("payload of {len} bytes exceeds the transport's payload limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error(
        "the outbound queue to {peer} is full ({messages} messages, {bytes} bytes queued); the message was dropped"
    )]
    QueueFull {
        peer: NodeId,
        messages: usize,
        bytes: usize,
    },
    #[error("the transport is shut down")]
    Closed,
}

/// Why a transport did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// One peer's counters, as [`Transport::stats`] reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Payloads handed to a connection to this peer.
    pub sent: u64,
    /// Envelopes handed to a connection to this peer.
    pub sent_envelopes: u64,
    /// Payloads received from this peer and handed to the consumer.
    pub received: u64,
    /// Envelopes received from this peer.
    pub received_envelopes: u64,
    /// Payloads refused by `send` because the queue was full.
    pub dropped: u64,
    /// Payloads refused by `send` for their size.
    pub refused_too_large: u64,
    /// Payloads that were queued when the peer was removed or the transport
    /// shut down, or that arrived on a superseded connection.
    pub discarded: u64,
    /// Successful handshakes after the first one (to this peer).
    pub reconnects: u64,
    /// Failed connection attempts (TCP, HTTP/2, handshake) to this peer.
    pub connect_failures: u64,
    /// Handshakes this peer refused (wrong cluster, node or version).
    pub handshakes_refused: u64,
    /// Inbound connections from this peer that broke the protocol (a
    /// sequence gap or repeat, a stale session, a frame out of place).
    pub protocol_errors: u64,
    /// Payloads waiting in the outbound queue now.
    pub queued: u64,
    /// Whether an outbound connection to this peer is up now.
    pub connected: bool,
    /// The last connection error to this peer, if any.
    pub last_error: Option<String>,
}

/// The live counters behind [`PeerStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub sent_envelopes: AtomicU64,
    pub received: AtomicU64,
    pub received_envelopes: AtomicU64,
    pub dropped: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub discarded: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub connected: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self, queued: u64) -> PeerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PeerStats {
            sent: get(&self.sent),
            sent_envelopes: get(&self.sent_envelopes),
            received: get(&self.received),
            received_envelopes: get(&self.received_envelopes),
            dropped: get(&self.dropped),
            refused_too_large: get(&self.refused_too_large),
            discarded: get(&self.discarded),
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            handshakes_refused: get(&self.handshakes_refused),
            protocol_errors: get(&self.protocol_errors),
            queued,
            connected: self.connected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// A peer this node sends to: its queue and the task that drains it.
struct PeerLink {
    address: SocketAddr,
    outbox: Arc<outbound::Outbox>,
    task: JoinHandle<()>,
}

/// State shared by the handle, the peer tasks and the server.
pub(crate) struct Shared {
    pub config: TransportConfig,
    /// This process's boot nonce (see `Hello.boot`).
    pub boot: u64,
    pub epoch: AtomicU64,
    peers: Mutex<BTreeMap<NodeId, PeerLink>>,
    counters: Mutex<BTreeMap<NodeId, Arc<Counters>>>,
    pub inbound: mpsc::Sender<Inbound>,
    /// Payload bytes the inbound channel may still take
    /// (`inbound_bytes_max`); [`InboundReceiver`] gives them back.
    pub inbound_bytes: Arc<Semaphore>,
    /// Inbound handshakes refused, whoever the caller claimed to be.
    pub refused_inbound: AtomicU64,
    /// The newest accepted inbound connection per node: `(boot, session,
    /// generation)`; an older reader sees its generation superseded.
    pub sessions: Mutex<BTreeMap<NodeId, (u64, u64, u64)>>,
    pub shutdown: watch::Sender<bool>,
    closed: AtomicBool,
    /// The tokio runtime `start` ran on: peer tasks are spawned there, so
    /// `add_peer` works from any thread (the Node's, the metadata's).
    runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn counters(&self, node: NodeId) -> Arc<Counters> {
        Arc::clone(self.counters.lock().entry(node).or_default())
    }
}

/// The running peer server: its stop signal and its task.
type ServerHandle = (oneshot::Sender<()>, JoinHandle<()>);

/// A node's endpoint in the mesh (cheap to clone; every clone is the same
/// transport). See the module documentation.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    local_address: SocketAddr,
    server: Arc<Mutex<Option<ServerHandle>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.shared.config.node)
            .field("cluster_id", &self.shared.config.cluster_id)
            .field("local_address", &self.local_address)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Validates the limits, binds the listen address and serves the peer
    /// service. Returns the transport and the receiver of every payload sent
    /// to this node (by peers, and by itself through [`Transport::send`]).
    ///
    /// # Errors
    /// [`StartError::Config`] for inconsistent limits or an empty cluster id;
    /// [`StartError::Bind`] when the address cannot be bound.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Transport, InboundReceiver), StartError> {
        config.limits.validate().map_err(StartError::Config)?;
        if config.cluster_id.is_empty() {
            return Err(StartError::Config("the cluster id is empty".to_owned()));
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    address: config.listen,
                    source,
                })?;
        let local_address = listener.local_addr().map_err(|source| StartError::Bind {
            address: config.listen,
            source,
        })?;
        let (shared, receiver) = Transport::shared(config);
        let server = inbound::serve(Arc::clone(&shared), listener);
        Ok((
            Transport {
                shared,
                local_address,
                server: Arc::new(Mutex::new(Some(server))),
            },
            receiver,
        ))
    }

    /// A transport whose peer service another server carries: the returned
    /// [`tonic::service::Routes`] must be served on `config.listen` (which
    /// must be the bound address, not port 0) by the caller's tonic server,
    /// with HTTP/2 keepalive [`Limits::keepalive_interval`] and
    /// [`Limits::keepalive_timeout`] (the node serves it next to the metadata
    /// service on the cluster port). Everything else is as [`Transport::start`];
    /// `shutdown` ends the inbound streams but not the caller's server.
    ///
    /// # Errors
    /// [`StartError::Config`] for inconsistent limits or an empty cluster id.
    pub fn start_shared(
        config: TransportConfig,
    ) -> Result<(Transport, InboundReceiver, tonic::service::Routes), StartError> {
        config.limits.validate().map_err(StartError::Config)?;
        if config.cluster_id.is_empty() {
            return Err(StartError::Config("the cluster id is empty".to_owned()));
        }
        let local_address = config.listen;
        let (shared, receiver) = Transport::shared(config);
        let routes = tonic::service::Routes::new(inbound::service(Arc::clone(&shared)));
        Ok((
            Transport {
                shared,
                local_address,
                server: Arc::new(Mutex::new(None)),
            },
            receiver,
            routes,
        ))
    }

    fn shared(config: TransportConfig) -> (Arc<Shared>, InboundReceiver) {
        let (inbound, receiver) = mpsc::channel(config.limits.inbound_queue_max);
        let inbound_bytes = Arc::new(Semaphore::new(config.limits.inbound_bytes_max));
        let receiver = InboundReceiver {
            receiver,
            bytes: Arc::clone(&inbound_bytes),
        };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            boot: boot_nonce(config.node),
            config,
            epoch: AtomicU64::new(0),
            peers: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            inbound,
            inbound_bytes,
            refused_inbound: AtomicU64::new(0),
            sessions: Mutex::new(BTreeMap::new()),
            shutdown,
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        (shared, receiver)
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.shared.config.node
    }

    /// The address the peer service listens on (with the port the OS chose
    /// for port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Sets the topology epoch stamped on envelopes from now on.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.shared.epoch.fetch_max(epoch.0, Ordering::Relaxed);
    }

    /// Starts sending to `node` at `address` (dialling now, redialling with
    /// backoff). Callable from any thread: the dialler runs on the tokio
    /// runtime `start` ran on. Adding a known peer with a new address replaces its link;
    /// payloads queued for the old address are discarded (counted).
    pub fn add_peer(&self, node: NodeId, address: SocketAddr) {
        if node == self.shared.config.node {
            return;
        }
        let mut peers = self.shared.peers.lock();
        // Checked under the lock `shutdown` takes the links with, so no link
        // is added after it stopped them.
        if self.shared.closed.load(Ordering::Acquire)
            || peers.get(&node).is_some_and(|link| link.address == address)
        {
            return;
        }
        let counters = self.shared.counters(node);
        let outbox = Arc::new(outbound::Outbox::default());
        let task = self.shared.runtime.spawn(outbound::run(
            Arc::clone(&self.shared),
            node,
            address,
            Arc::clone(&outbox),
            Arc::clone(&counters),
        ));
        if let Some(old) = peers.insert(
            node,
            PeerLink {
                address,
                outbox,
                task,
            },
        ) {
            discard(&old, &counters);
        }
    }

    /// Stops sending to `node`; its queued payloads are discarded (counted).
    pub fn remove_peer(&self, node: NodeId) {
        let old = self.shared.peers.lock().remove(&node);
        if let Some(old) = old {
            discard(&old, &self.shared.counters(node));
        }
    }

    /// The peers this node sends to, with their addresses.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.shared
            .peers
            .lock()
            .iter()
            .map(|(node, link)| (*node, link.address))
            .collect()
    }

    /// Queues `payload` for `to` and returns at once (never blocks, never
    /// waits for the network; callable from any thread). A payload to this
    /// node itself goes straight to its inbound receiver.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] above [`Limits::payload_bytes_max`];
    /// [`SendError::UnknownPeer`]; [`SendError::QueueFull`] when the peer's
    /// queue is at its bound (the payload is dropped and counted);
    /// [`SendError::Closed`] after shutdown.
    pub fn send(&self, to: NodeId, payload: Vec<u8>) -> Result<(), SendError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let limit = shared.config.limits.payload_bytes_max();
        if payload.len() > limit {
            Counters::add(&shared.counters(to).refused_too_large, 1);
            return Err(SendError::TooLarge {
                len: payload.len(),
                limit,
            });
        }
        if to == shared.config.node {
            return self.send_to_self(payload);
        }
        let outbox = match shared.peers.lock().get(&to) {
            Some(link) => Arc::clone(&link.outbox),
            None => return Err(SendError::UnknownPeer(to)),
        };
        outbox
            .push(payload, &shared.config.limits)
            .map_err(|error| match error {
                outbound::PushError::Full(messages, bytes) => {
                    Counters::add(&shared.counters(to).dropped, 1);
                    SendError::QueueFull {
                        peer: to,
                        messages,
                        bytes,
                    }
                }
                outbound::PushError::Closed => SendError::UnknownPeer(to),
            })
    }

    fn send_to_self(&self, payload: Vec<u8>) -> Result<(), SendError> {
        let shared = &self.shared;
        let node = shared.config.node;
        let counters = shared.counters(node);
        let inbound = Inbound {
            from: node,
            epoch: Epoch(shared.epoch.load(Ordering::Relaxed)),
            session: 0,
            seq: 0,
            payload,
        };
        let Ok(permit) = shared
            .inbound_bytes
            .try_acquire_many(inbound_cost(&inbound))
        else {
            Counters::add(&counters.dropped, 1);
            return Err(SendError::QueueFull {
                peer: node,
                messages: shared.config.limits.inbound_queue_max - shared.inbound.capacity(),
                bytes: shared.config.limits.inbound_bytes_max
                    - shared.inbound_bytes.available_permits(),
            });
        };
        match shared.inbound.try_send(inbound) {
            Ok(()) => {
                permit.forget();
                Counters::add(&counters.sent, 1);
                Counters::add(&counters.received, 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&counters.dropped, 1);
                Err(SendError::QueueFull {
                    peer: node,
                    messages: shared.config.limits.inbound_queue_max,
                    bytes: 0,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Every known node's counters (peers sent to, and nodes received from).
    pub fn stats(&self) -> BTreeMap<NodeId, PeerStats> {
        let queued: BTreeMap<NodeId, u64> = self
            .shared
            .peers
            .lock()
            .iter()
            .map(|(node, link)| (*node, link.outbox.len()))
            .collect();
        self.shared
            .counters
            .lock()
            .iter()
            .map(|(node, counters)| {
                let queued = queued.get(node).copied().unwrap_or(0);
                (*node, counters.snapshot(queued))
            })
            .collect()
    }

    /// One node's counters (all zero if nothing was exchanged with it).
    pub fn peer_stats(&self, node: NodeId) -> PeerStats {
        self.stats().remove(&node).unwrap_or_default()
    }

    /// Inbound handshakes this node refused (wrong cluster, node id or
    /// version, stale session), whoever the caller claimed to be.
    pub fn refused_handshakes(&self) -> u64 {
        self.shared.refused_inbound.load(Ordering::Relaxed)
    }

    /// Stops everything: ends the inbound streams and the server, stops the
    /// peer tasks (their queued payloads are discarded, counted) and refuses
    /// later sends. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let peers = {
            let mut peers = self.shared.peers.lock();
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *peers)
        };
        for (node, link) in peers {
            discard(&link, &self.shared.counters(node));
        }
        let server = self.server.lock().take();
        if let Some((stop, mut task)) = server {
            let _ = stop.send(());
            let grace = self.shared.config.limits.shutdown_grace;
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                tracing::warn!(node = %self.shared.config.node, "peer server did not stop within the grace period; aborting it");
                task.abort();
            }
        }
    }
}

/// Stops a link's task and counts what was still queued as discarded.
fn discard(link: &PeerLink, counters: &Counters) {
    link.task.abort();
    Counters::add(&counters.discarded, link.outbox.close());
    counters.connected.store(false, Ordering::Relaxed);
}

/// A nonce for this transport instance: differs between restarts of a node
/// (time, process id, node id mixed through SplitMix64).
fn boot_nonce(node: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    static INSTANCE: AtomicU64 = AtomicU64::new(0);
    let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
    let seed = (nanos as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(node.0).rotate_left(17)
        ^ instance.rotate_left(48);
    Jitter::new(seed).next_u64()
}
