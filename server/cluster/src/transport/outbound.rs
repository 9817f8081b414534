//! The sending side: one bounded [`Outbox`] per peer, and the task that
//! dials the peer, handshakes, drains the outbox into envelopes and redials
//! with backoff and jitter when the connection fails.
//!
//! The task takes messages out of the outbox only once the connection's
//! stream has room for an envelope, so a message leaves the queue only to be
//! handed to a live connection: while the peer is down, messages wait in the
//! queue (up to its bounds) and go out after the reconnection. What the
//! stream buffer and the socket hold when a connection breaks is lost; the
//! receiver sees the new session start at sequence 1.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use concord_txn::timestamp::NodeId;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::limits::{ENVELOPE_OVERHEAD_BYTES, Jitter, Limits, MESSAGE_OVERHEAD_BYTES, backoff};
use super::peer_v1::peer_client::PeerClient;
use super::peer_v1::{Envelope, Hello, PeerFrame, peer_frame, peer_reply};
use super::{Counters, Shared, TRANSPORT_VERSION};

/// A peer's outbound queue, bounded in messages and payload bytes.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
}

/// Why [`Outbox::push`] refused.
pub(crate) enum PushError {
    /// At a bound: the messages and bytes queued.
    Full(usize, usize),
    /// The link was removed.
    Closed,
}

impl Outbox {
    /// Appends `payload` unless a bound would be exceeded.
    pub(crate) fn push(&self, payload: Vec<u8>, limits: &Limits) -> Result<(), PushError> {
        {
            let mut state = self.state.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if state.queue.len() >= limits.queue_messages_max
                || state.bytes + payload.len() > limits.queue_bytes_max
            {
                return Err(PushError::Full(state.queue.len(), state.bytes));
            }
            state.bytes += payload.len();
            state.queue.push_back(payload);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Takes the oldest messages that fit one envelope: at most
    /// `messages_per_envelope_max` of them and `envelope_bytes_max` encoded
    /// bytes (always at least one: `send` refuses a payload that cannot fit
    /// alone).
    fn take_batch(&self, limits: &Limits) -> Vec<Vec<u8>> {
        let mut state = self.state.lock();
        let mut batch = Vec::new();
        let mut size = ENVELOPE_OVERHEAD_BYTES;
        while batch.len() < limits.messages_per_envelope_max {
            let Some(next) = state.queue.front() else {
                break;
            };
            let grown = size + next.len() + MESSAGE_OVERHEAD_BYTES;
            if !batch.is_empty() && grown > limits.envelope_bytes_max {
                break;
            }
            size = grown;
            if let Some(message) = state.queue.pop_front() {
                state.bytes -= message.len();
                batch.push(message);
            }
        }
        batch
    }

    /// Messages queued now.
    pub(crate) fn len(&self) -> u64 {
        self.state.lock().queue.len() as u64
    }

    /// Refuses later pushes and empties the queue; returns how many messages
    /// it held.
    pub(crate) fn close(&self) -> u64 {
        let mut state = self.state.lock();
        state.closed = true;
        state.bytes = 0;
        let held = state.queue.len() as u64;
        state.queue.clear();
        held
    }
}

/// How a connection ended.
enum Ended {
    /// The handshake succeeded and the connection ran until it broke.
    AfterHandshake(String),
    /// It never got through the handshake.
    Failed { error: String, refused: bool },
}

/// The task behind one peer link: connect, run, back off, repeat (until
/// aborted by `remove_peer` or `shutdown`).
pub(crate) async fn run(
    shared: Arc<Shared>,
    peer: NodeId,
    address: SocketAddr,
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
) {
    let limits = shared.config.limits.clone();
    let mut jitter = Jitter::new(shared.boot ^ u64::from(peer.0).rotate_left(32));
    let mut session = 0u64;
    let mut attempt = 0u32;
    let mut handshakes = 0u64;
    loop {
        session += 1;
        let ended = connect_and_run(
            &shared,
            peer,
            address,
            &outbox,
            &counters,
            session,
            &mut handshakes,
        )
        .await;
        counters.connected.store(false, Ordering::Relaxed);
        match ended {
            Ended::AfterHandshake(reason) => {
                tracing::info!(node = %shared.config.node, %peer, %reason, "peer connection ended; reconnecting");
                *counters.last_error.lock() = Some(reason);
                attempt = 0;
            }
            Ended::Failed { error, refused } => {
                Counters::add(&counters.connect_failures, 1);
                if refused {
                    Counters::add(&counters.handshakes_refused, 1);
                    tracing::error!(node = %shared.config.node, %peer, %address, %error, "peer refused the handshake");
                } else {
                    tracing::debug!(node = %shared.config.node, %peer, %address, %error, "cannot connect to peer");
                }
                *counters.last_error.lock() = Some(error);
            }
        }
        let delay = backoff(
            attempt,
            limits.backoff_min,
            limits.backoff_max,
            jitter.next_u64(),
        );
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One connection: dial, handshake, then envelopes until it breaks.
async fn connect_and_run(
    shared: &Shared,
    peer: NodeId,
    address: SocketAddr,
    outbox: &Outbox,
    counters: &Counters,
    session: u64,
    handshakes: &mut u64,
) -> Ended {
    let limits = &shared.config.limits;
    let failed = |error: String| Ended::Failed {
        error,
        refused: false,
    };
    let endpoint = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(limits.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout)
            .keep_alive_while_idle(true),
        Err(error) => return failed(format!("bad peer address {address}: {error}")),
    };
    let channel = match tokio::time::timeout(limits.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(error)) => return failed(format!("connect to {peer} at {address}: {error}")),
        Err(_) => {
            return failed(format!(
                "connect to {peer} at {address}: no connection within {:?}",
                limits.connect_timeout
            ));
        }
    };
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(limits.grpc_message_bytes_max)
        .max_decoding_message_size(limits.grpc_message_bytes_max);
    let (frames, frames_out) = mpsc::channel::<PeerFrame>(limits.stream_buffer_envelopes);
    let hello = PeerFrame {
        kind: Some(peer_frame::Kind::Hello(Hello {
            cluster_id: shared.config.cluster_id.clone(),
            from: shared.config.node.0,
            to: peer.0,
            transport_version: TRANSPORT_VERSION,
            codec_version: shared.config.codec_version,
            boot: shared.boot,
            session,
        })),
    };
    if frames.send(hello).await.is_err() {
        return failed("the stream closed before the handshake".to_owned());
    }
    let handshake = async {
        let response = client.stream(ReceiverStream::new(frames_out)).await?;
        let mut replies = response.into_inner();
        let first = replies.message().await?;
        Ok::<_, tonic::Status>((first, replies))
    };
    let (first, mut replies) = match tokio::time::timeout(limits.handshake_timeout, handshake).await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(status)) => {
            let refused = status.code() == tonic::Code::FailedPrecondition;
            return Ended::Failed {
                error: format!("handshake with {peer} at {address}: {}", status.message()),
                refused,
            };
        }
        Err(_) => {
            return failed(format!(
                "handshake with {peer} at {address}: no answer within {:?}",
                limits.handshake_timeout
            ));
        }
    };
    match first.and_then(|reply| reply.kind) {
        Some(peer_reply::Kind::Welcome(welcome))
            if welcome.cluster_id == shared.config.cluster_id
                && welcome.node == peer.0
                && welcome.session == session => {}
        other => {
            return Ended::Failed {
                error: format!(
                    "handshake with {peer} at {address}: unexpected answer {other:?} (expected node {} of cluster {:?})",
                    peer.0, shared.config.cluster_id
                ),
                refused: true,
            };
        }
    }
    *handshakes += 1;
    if *handshakes > 1 {
        Counters::add(&counters.reconnects, 1);
    }
    counters.connected.store(true, Ordering::Relaxed);
    tracing::debug!(node = %shared.config.node, %peer, session, "peer connection up");

    let mut seq = 0u64;
    loop {
        // Room in the stream first, so messages leave the queue only for a
        // live connection.
        let permit = tokio::select! {
            permit = frames.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ended::AfterHandshake("the stream closed".to_owned()),
            },
            reply = replies.message() => return Ended::AfterHandshake(ended(reply)),
        };
        let batch = loop {
            let batch = outbox.take_batch(limits);
            if !batch.is_empty() {
                break batch;
            }
            tokio::select! {
                () = outbox.notify.notified() => {}
                reply = replies.message() => return Ended::AfterHandshake(ended(reply)),
            }
        };
        seq += 1;
        let count = batch.len() as u64;
        permit.send(PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(Envelope {
                from: shared.config.node.0,
                epoch: shared.epoch.load(Ordering::Relaxed),
                seq,
                messages: batch,
            })),
        });
        Counters::add(&counters.sent, count);
        Counters::add(&counters.sent_envelopes, 1);
    }
}

/// Describes the end of the reply stream (the acceptor closed it or failed).
fn ended(reply: Result<Option<super::peer_v1::PeerReply>, tonic::Status>) -> String {
    match reply {
        Ok(None) => "the peer closed the connection".to_owned(),
        Ok(Some(reply)) => format!("unexpected frame from the peer: {reply:?}"),
        Err(status) => format!("connection failed: {}", status.message()),
    }
}
