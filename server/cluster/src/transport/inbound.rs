//! The accepting side: the `concord.cluster.v1.Peer` service. It checks each
//! connection's `Hello` (cluster id, node id, versions, session), answers
//! `Welcome`, then reads envelopes, checks their sequence numbers and hands
//! their payloads to the node's inbound receiver, waiting when that is full
//! in messages or bytes (so backpressure reaches the sender's bounded queue; nothing is dropped
//! here).

use std::sync::Arc;

use concord_txn::timestamp::{Epoch, NodeId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::peer_v1::peer_server::{Peer, PeerServer};
use super::peer_v1::{Hello, PeerFrame, PeerReply, Welcome, peer_frame, peer_reply};
use super::{Counters, Inbound, Shared, TRANSPORT_VERSION, inbound_cost};

/// Serves the peer service on `listener` until the returned sender fires.
pub(crate) fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let limits = shared.config.limits.clone();
    let node = shared.config.node;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = service(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%node, %error, "peer server failed");
        }
    });
    (stop, task)
}

/// The peer service, with the gRPC message bounds of the limits.
pub(crate) fn service(shared: Arc<Shared>) -> PeerServer<PeerService> {
    let limits = shared.config.limits.clone();
    PeerServer::new(PeerService { shared })
        .max_decoding_message_size(limits.grpc_message_bytes_max)
        .max_encoding_message_size(limits.grpc_message_bytes_max)
}

pub(crate) struct PeerService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamStream = ReceiverStream<Result<PeerReply, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let shared = &self.shared;
        let mut frames = request.into_inner();
        let timeout = shared.config.limits.handshake_timeout;
        let hello = match tokio::time::timeout(timeout, frames.message()).await {
            Ok(Ok(Some(PeerFrame {
                kind: Some(peer_frame::Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => {
                return Err(self.refuse(None, "the first frame of a peer stream must be a Hello"));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(self.refuse(None, &format!("no Hello within {timeout:?}")));
            }
        };
        let from = NodeId(hello.from);
        if let Err(reason) = self.check(&hello) {
            return Err(self.refuse(Some(from), &reason));
        }
        let generation = {
            let mut sessions = shared.sessions.lock();
            let current = sessions.get(&from).copied();
            if let Some((boot, session, _)) = current
                && boot == hello.boot
                && session >= hello.session
            {
                drop(sessions);
                return Err(self.refuse(
                    Some(from),
                    &format!(
                        "stale session {} from {from}: session {session} of the same boot is newer",
                        hello.session
                    ),
                ));
            }
            let generation = current.map_or(1, |(_, _, generation)| generation + 1);
            sessions.insert(from, (hello.boot, hello.session, generation));
            generation
        };
        let (replies, replies_out) = mpsc::channel(1);
        let welcome = PeerReply {
            kind: Some(peer_reply::Kind::Welcome(Welcome {
                cluster_id: shared.config.cluster_id.clone(),
                node: shared.config.node.0,
                session: hello.session,
            })),
        };
        if replies.send(Ok(welcome)).await.is_err() {
            return Err(Status::internal("the reply stream closed"));
        }
        tokio::spawn(read(
            Arc::clone(shared),
            from,
            hello.session,
            generation,
            frames,
            replies,
        ));
        Ok(Response::new(ReceiverStream::new(replies_out)))
    }
}

impl PeerService {
    /// Checks a `Hello` against this node; the error says what differs.
    fn check(&self, hello: &Hello) -> Result<(), String> {
        let config = &self.shared.config;
        if hello.cluster_id != config.cluster_id {
            return Err(format!(
                "cluster id mismatch: this node ({}) belongs to cluster {:?}, the caller (n{}) to cluster {:?}",
                config.node, config.cluster_id, hello.from, hello.cluster_id
            ));
        }
        if hello.to != config.node.0 {
            return Err(format!(
                "node id mismatch: this address serves node {}, the caller (n{}) expected n{}",
                config.node, hello.from, hello.to
            ));
        }
        if hello.from == config.node.0 {
            return Err(format!(
                "the caller claims this node's own id {}: two nodes share an id",
                config.node
            ));
        }
        if hello.transport_version != TRANSPORT_VERSION {
            return Err(format!(
                "transport version mismatch: this node speaks {TRANSPORT_VERSION}, the caller (n{}) {}",
                hello.from, hello.transport_version
            ));
        }
        if hello.codec_version != config.codec_version {
            return Err(format!(
                "codec version mismatch: this node decodes version {}, the caller (n{}) encodes {}",
                config.codec_version, hello.from, hello.codec_version
            ));
        }
        Ok(())
    }

    /// Counts and logs a refused handshake; the status the caller gets.
    fn refuse(&self, from: Option<NodeId>, reason: &str) -> Status {
        let shared = &self.shared;
        Counters::add(&shared.refused_inbound, 1);
        if let Some(from) = from {
            Counters::add(&shared.counters(from).protocol_errors, 1);
        }
        tracing::warn!(node = %shared.config.node, ?from, %reason, "refused a peer handshake");
        Status::failed_precondition(reason.to_owned())
    }
}

/// Reads one accepted connection's envelopes until it ends, is superseded by
/// a newer session of the same node, breaks the protocol, or the transport
/// shuts down. Dropping `replies` ends the call for the dialler.
async fn read(
    shared: Arc<Shared>,
    from: NodeId,
    session: u64,
    generation: u64,
    mut frames: Streaming<PeerFrame>,
    replies: mpsc::Sender<Result<PeerReply, Status>>,
) {
    let counters = shared.counters(from);
    let limits = &shared.config.limits;
    let mut shutdown = shared.shutdown.subscribe();
    let mut expected = 1u64;
    let current = |shared: &Shared| {
        shared
            .sessions
            .lock()
            .get(&from)
            .is_some_and(|(_, _, newest)| *newest == generation)
    };
    let violation = |reason: String| {
        Counters::add(&counters.protocol_errors, 1);
        tracing::warn!(node = %shared.config.node, %from, session, %reason, "closing a peer connection");
        Status::invalid_argument(reason)
    };
    let error = loop {
        let frame = tokio::select! {
            frame = frames.message() => frame,
            _ = shutdown.wait_for(|stop| *stop) => break None,
        };
        let envelope = match frame {
            Ok(Some(PeerFrame {
                kind: Some(peer_frame::Kind::Envelope(envelope)),
            })) => envelope,
            Ok(Some(_)) => {
                break Some(violation(
                    "a peer frame after the Hello that is not an Envelope".to_owned(),
                ));
            }
            Ok(None) => break None,
            Err(status) => {
                tracing::debug!(node = %shared.config.node, %from, session, %status, "peer stream failed");
                break None;
            }
        };
        if envelope.from != from.0 {
            break Some(violation(format!(
                "an envelope from n{} on the connection of {from}",
                envelope.from
            )));
        }
        if envelope.seq != expected {
            break Some(violation(format!(
                "envelope sequence {} where {expected} was expected (session {session})",
                envelope.seq
            )));
        }
        if envelope.messages.len() > limits.messages_per_envelope_max {
            break Some(violation(format!(
                "an envelope of {} messages exceeds messages_per_envelope_max {}",
                envelope.messages.len(),
                limits.messages_per_envelope_max
            )));
        }
        expected += 1;
        Counters::add(&counters.received_envelopes, 1);
        let epoch = Epoch(envelope.epoch);
        let seq = envelope.seq;
        let mut messages = envelope.messages.into_iter();
        let mut stop = false;
        for payload in messages.by_ref() {
            if !current(&shared) {
                Counters::add(&counters.discarded, 1);
                stop = true;
                break;
            }
            let inbound = Inbound {
                from,
                epoch,
                session,
                seq,
                payload,
            };
            let cost = inbound_cost(&inbound);
            // Room in bytes first, then in messages; each wait ends at shutdown.
            let room = tokio::select! {
                permit = shared.inbound_bytes.acquire_many(cost) => permit.ok(),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let delivered = match room {
                Some(permit) => {
                    permit.forget();
                    let sent = tokio::select! {
                        sent = shared.inbound.send(inbound) => sent.is_ok(),
                        _ = shutdown.wait_for(|stop| *stop) => false,
                    };
                    if !sent {
                        shared.inbound_bytes.add_permits(cost as usize);
                    }
                    sent
                }
                None => false,
            };
            if !delivered {
                Counters::add(&counters.discarded, 1);
                stop = true;
                break;
            }
            Counters::add(&counters.received, 1);
        }
        if stop {
            Counters::add(&counters.discarded, messages.len() as u64);
            break None;
        }
        if !current(&shared) {
            break None;
        }
    };
    if let Some(status) = error {
        let _ = replies.send(Err(status)).await;
    }
}
