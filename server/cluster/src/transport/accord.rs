//! The Accord runtime over the transport: [`TransportPeers`] is the runtime's
//! [`Peers`] (each protocol message encoded with `concord_txn::wire` and sent
//! with [`Transport::send`]), and [`spawn_delivery`] feeds the runtime what the
//! transport receives (decoded, handed over per sender in batches).
//!
//! [`follow_views`] keeps both in step with the cluster metadata: every
//! member of the published view is a peer (at its cluster address, where
//! the node serves the metadata and the peer service on one port), and every
//! newer epoch's topology goes to the transport (stamped on envelopes) and
//! then to the runtime (which reopens its Node on it).
//!
//! Both ends count what they cannot pass on: a message the transport refused
//! (queue full, unknown peer) and a payload that does not decode. The runtime
//! counts the messages its full queue refuses. The protocol tolerates each of
//! these as message loss; none is silent.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_txn::messages::Message;
use concord_txn::sync::epoch_seal_bound;
use concord_txn::timestamp::{Epoch, NodeId, Timestamp};
use concord_txn::wire::{MESSAGE_CODEC_VERSION, decode_message, encode_message};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Inbound, InboundReceiver, Transport};
use crate::meta::view::ClusterView;
use crate::runtime::{Peers, Runtime, RuntimeError};

/// The codec version to put in [`super::TransportConfig::codec_version`] when
/// the transport carries Accord messages.
pub const ACCORD_CODEC_VERSION: u32 = MESSAGE_CODEC_VERSION as u32;

/// At most this many messages of one sender go to the runtime in one
/// `deliver` call.
pub const DELIVERY_BATCH_MAX: usize = 256;

/// The cluster id the node's transport presents in its handshake. One value
/// for every Concord cluster until the metadata carries a cluster id of its
/// own: the handshake then still refuses other node ids and versions, but
/// not a node of another Concord cluster (design/cluster.md, "What is left").
pub const CLUSTER_ID_DEFAULT: &str = "concord";

/// The pause before [`follow_views`] offers a topology again to a runtime
/// whose input queue was full.
pub const TOPOLOGY_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// What the adapters could not pass on.
#[derive(Debug, Default)]
pub struct AccordWireStats {
    /// Messages the transport refused to send (full queue, unknown peer,
    /// oversized, shut down).
    pub unsent: AtomicU64,
    /// Received payloads that did not decode as a message.
    pub undecodable: AtomicU64,
    /// Received messages the runtime refused (its queue was full) or could
    /// not take (stopped).
    pub undelivered: AtomicU64,
}

/// The runtime's peers: a transport.
#[derive(Debug)]
pub struct TransportPeers {
    transport: Transport,
    stats: Arc<AccordWireStats>,
}

impl TransportPeers {
    pub fn new(transport: Transport, stats: Arc<AccordWireStats>) -> TransportPeers {
        TransportPeers { transport, stats }
    }
}

impl Peers for TransportPeers {
    fn send(&self, to: NodeId, messages: Vec<Message>) {
        for message in messages {
            if let Err(error) = self.transport.send(to, encode_message(&message)) {
                self.stats.unsent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%to, message = message.name(), %error, "accord message not sent");
            }
        }
    }
}

/// Drains `inbound` into `runtime` until the transport closes it or the
/// runtime stops: decodes each payload and delivers consecutive messages of
/// one sender and epoch together (up to [`DELIVERY_BATCH_MAX`]) with
/// [`Runtime::deliver_at`], so a message of an epoch the runtime does not
/// run yet waits for it (K1).
pub fn spawn_delivery(
    mut inbound: InboundReceiver,
    runtime: Arc<Runtime>,
    stats: Arc<AccordWireStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next: Option<Inbound> = None;
        loop {
            let first = match next.take() {
                Some(first) => first,
                None => match inbound.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let (from, epoch) = (first.from, first.epoch);
            let mut batch = Vec::new();
            decode_into(&first, &mut batch, &stats);
            while batch.len() < DELIVERY_BATCH_MAX {
                match inbound.try_recv() {
                    Ok(more) if more.from == from && more.epoch == epoch => {
                        decode_into(&more, &mut batch, &stats);
                    }
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let count = batch.len() as u64;
            match runtime.deliver_at(from, epoch, batch) {
                Ok(()) => {}
                Err(RuntimeError::Stopped(_)) => {
                    stats.undelivered.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    stats.undelivered.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
    })
}

fn decode_into(inbound: &Inbound, batch: &mut Vec<Message>, stats: &AccordWireStats) {
    match decode_message(&inbound.payload) {
        Ok(message) => batch.push(message),
        Err(error) => {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %inbound.from, %error, "an undecodable accord message");
        }
    }
}

/// Follows the metadata views until `views` closes or the runtime stops:
/// members become the transport's peers (removed members stop being peers),
/// and each topology with an epoch newer than the runtime's goes first to
/// the transport's envelope stamp, then to [`Runtime::set_topology`] (so a
/// peer never gets a message of an epoch its sender's runtime does not run
/// yet stamped with an older one).
pub fn follow_views(
    mut views: watch::Receiver<Arc<ClusterView>>,
    transport: Transport,
    runtime: Arc<Runtime>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let view = Arc::clone(&views.borrow_and_update());
            apply_view(&view, &transport);
            // A transition in progress seals this node's epoch (design/cluster.md, "Epoch
            // transitions and bootstrap").
            if let Some(transition) = &view.state.transition
                && transition.from_epoch == runtime.epoch().0
            {
                let bound = epoch_seal_bound(Epoch(transition.next_epoch()));
                loop {
                    match runtime.seal(bound) {
                        Ok(()) => break,
                        Err(RuntimeError::Overloaded) => {
                            tokio::time::sleep(TOPOLOGY_RETRY_INTERVAL).await;
                        }
                        Err(_) => return,
                    }
                }
            }
            if let Some(topology) = &view.topology
                && topology.epoch > runtime.epoch()
            {
                transport.set_epoch(topology.epoch);
                let floor = epoch_floor(&view.state);
                let topology = Arc::new(topology.clone());
                loop {
                    match runtime.set_topology_with_floor(Arc::clone(&topology), floor) {
                        Ok(()) => break,
                        Err(RuntimeError::Overloaded) => {
                            tokio::time::sleep(TOPOLOGY_RETRY_INTERVAL).await;
                        }
                        Err(_) => return,
                    }
                }
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The floor a Node opening on `state`'s topology adopts: that of the latest epoch entered
/// through a completed transition (`None` if none was).
pub fn epoch_floor(state: &crate::meta::state::ClusterState) -> Option<Timestamp> {
    (state.sealed_epoch > 0).then(|| epoch_seal_bound(Epoch(state.sealed_epoch)))
}

/// Makes the transport's peers the view's members (by their cluster address).
pub fn apply_view(view: &ClusterView, transport: &Transport) {
    let own = transport.node();
    let mut members = BTreeSet::new();
    for (node, member) in &view.state.members {
        let node = NodeId(*node);
        members.insert(node);
        if node == own {
            continue;
        }
        match member.address.parse::<SocketAddr>() {
            Ok(address) => transport.add_peer(node, address),
            Err(error) => {
                tracing::warn!(%node, address = %member.address, %error, "a member's cluster address is not host:port; not sending to it");
            }
        }
    }
    for node in transport.peers().into_keys() {
        if !members.contains(&node) {
            transport.remove_peer(node);
        }
    }
}
