//! The Accord runtime over the transport: [`TransportPeers`] is the runtime's
//! [`Peers`] (each protocol message encoded with `concord_txn::wire` and sent
//! with [`Transport::send`]), and [`spawn_delivery`] feeds the runtime what the
//! transport receives (decoded, handed over per sender in batches).
//!
//! Both ends count what they cannot pass on: a message the transport refused
//! (queue full, unknown peer) and a payload that does not decode. The runtime
//! counts the messages its full queue refuses. The protocol tolerates each of
//! these as message loss; none is silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_txn::messages::Message;
use concord_txn::timestamp::NodeId;
use concord_txn::wire::{MESSAGE_CODEC_VERSION, decode_message, encode_message};
use tokio::task::JoinHandle;

use super::{Inbound, InboundReceiver, Transport};
use crate::runtime::{Peers, Runtime, RuntimeError};

/// The codec version to put in [`super::TransportConfig::codec_version`] when
/// the transport carries Accord messages.
pub const ACCORD_CODEC_VERSION: u32 = MESSAGE_CODEC_VERSION as u32;

/// At most this many messages of one sender go to the runtime in one
/// `deliver` call.
pub const DELIVERY_BATCH_MAX: usize = 256;

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
/// one sender together (up to [`DELIVERY_BATCH_MAX`]).
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
            let from = first.from;
            let mut batch = Vec::new();
            decode_into(&first, &mut batch, &stats);
            while batch.len() < DELIVERY_BATCH_MAX {
                match inbound.try_recv() {
                    Ok(more) if more.from == from => decode_into(&more, &mut batch, &stats),
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
            match runtime.deliver(from, batch) {
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
