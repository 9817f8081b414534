//! The node-to-node transport over loopback: real tonic servers and clients
//! on ephemeral ports, three nodes at most, short backoff. Each test bounds
//! its waits (generously, for a loaded CI machine); none measures speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use concord_cluster::transport::peer_v1::peer_client::PeerClient;
use concord_cluster::transport::peer_v1::{Envelope, Hello, PeerFrame, peer_frame, peer_reply};
use concord_cluster::transport::{
    Inbound, InboundReceiver, Limits, SendError, StartError, TRANSPORT_VERSION, Transport,
    TransportConfig,
};
use concord_txn::timestamp::{Epoch, NodeId};
use tokio::sync::mpsc;

const CODEC_VERSION: u32 = 7;
/// The longest any test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..Limits::default()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start_at(
    cluster: &str,
    node: u32,
    listen: SocketAddr,
    limits: Limits,
) -> (Transport, InboundReceiver) {
    Transport::start(TransportConfig {
        cluster_id: cluster.to_owned(),
        node: NodeId(node),
        listen,
        codec_version: CODEC_VERSION,
        limits,
    })
    .await
    .unwrap()
}

async fn start(node: u32, limits: Limits) -> (Transport, InboundReceiver) {
    start_at("test-cluster", node, loopback(), limits).await
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn receive(rx: &mut InboundReceiver, n: usize) -> Vec<Inbound> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(inbound)) => out.push(inbound),
            Ok(None) => panic!("inbound closed after {} of {n}", out.len()),
            Err(_) => panic!(
                "only {} of {n} messages arrived within {PATIENCE:?}",
                out.len()
            ),
        }
    }
    out
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn text(inbound: &Inbound) -> String {
    String::from_utf8(inbound.payload.clone()).unwrap()
}

#[tokio::test]
async fn three_nodes_exchange_messages_both_ways() {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, limits()).await);
    }
    for (transport, _) in &nodes {
        for (peer, _) in &nodes {
            transport.add_peer(peer.node(), peer.local_address());
        }
        transport.set_epoch(Epoch(5));
        // Adding itself is ignored: self-sends take the local path.
        assert_eq!(transport.peers().len(), 2);
    }
    const EACH: usize = 50;
    for (transport, _) in &nodes {
        for i in 0..EACH {
            for to in 1..=3 {
                let payload = format!("{}->{to}:{i}", transport.node().0).into_bytes();
                transport.send(NodeId(to), payload).unwrap();
            }
        }
    }
    for (transport, rx) in &mut nodes {
        let me = transport.node().0;
        let got = receive(rx, 3 * EACH).await;
        for from in 1..=3u32 {
            let texts: Vec<String> = got
                .iter()
                .filter(|inbound| inbound.from == NodeId(from))
                .map(text)
                .collect();
            let expected: Vec<String> = (0..EACH).map(|i| format!("{from}->{me}:{i}")).collect();
            assert_eq!(
                texts, expected,
                "at n{me} from n{from}: in order, each once"
            );
        }
        assert!(got.iter().all(|inbound| inbound.epoch == Epoch(5)));
        assert!(rx.try_recv().is_err(), "nothing beyond what was sent");
    }
    for (transport, _) in &nodes {
        let stats = transport.stats();
        for peer in 1..=3 {
            let stats = &stats[&NodeId(peer)];
            assert_eq!(
                stats.sent,
                EACH as u64,
                "n{} to n{peer}",
                transport.node().0
            );
            assert_eq!(stats.received, EACH as u64);
            assert_eq!(stats.dropped, 0);
            assert_eq!(stats.protocol_errors, 0);
        }
    }
    for (transport, _) in &nodes {
        transport.shutdown().await;
        assert_eq!(
            transport.send(NodeId(1), b"late".to_vec()),
            Err(SendError::Closed)
        );
        // Nothing dials after shutdown.
        assert!(transport.peers().is_empty());
        transport.add_peer(NodeId(9), loopback());
        assert!(transport.peers().is_empty());
    }
}

#[tokio::test]
async fn many_small_sends_travel_in_few_envelopes_in_order() {
    let limits = Limits {
        messages_per_envelope_max: 100,
        ..limits()
    };
    let (a, _a_rx) = start(1, limits.clone()).await;
    let (b, mut b_rx) = start(2, limits).await;
    a.add_peer(b.node(), b.local_address());
    eventually("a connects to b", || a.peer_stats(b.node()).connected).await;
    // No await between the sends: on this single-threaded runtime the
    // sending task cannot run, so all of them wait in the queue.
    for i in 0..2000u32 {
        a.send(b.node(), i.to_be_bytes().to_vec()).unwrap();
    }
    let got = receive(&mut b_rx, 2000).await;
    let values: Vec<u32> = got
        .iter()
        .map(|inbound| u32::from_be_bytes(inbound.payload.clone().try_into().unwrap()))
        .collect();
    assert_eq!(values, (0..2000).collect::<Vec<_>>());
    // Envelopes of exactly 100, numbered 1..=20 on one session.
    let seqs: Vec<u64> = got.iter().map(|inbound| inbound.seq).collect();
    let expected: Vec<u64> = (1..=20).flat_map(|seq| [seq; 100]).collect();
    assert_eq!(seqs, expected);
    assert!(got.iter().all(|inbound| inbound.session == got[0].session));
    let sent = a.peer_stats(b.node());
    assert_eq!((sent.sent, sent.sent_envelopes), (2000, 20));
    let received = b.peer_stats(a.node());
    assert_eq!((received.received, received.received_envelopes), (2000, 20));
}

#[tokio::test]
async fn envelopes_respect_the_byte_bound() {
    // 4 payloads of 1000 bytes fit 4096 with the overheads; a fifth does not.
    let limits = Limits {
        envelope_bytes_max: 4096,
        grpc_message_bytes_max: 4096,
        ..limits()
    };
    let (a, _a_rx) = start(1, limits.clone()).await;
    let (b, mut b_rx) = start(2, limits).await;
    // From a plain thread, as the Accord runtime's thread calls it.
    let (sender, node, address) = (a.clone(), b.node(), b.local_address());
    std::thread::spawn(move || sender.add_peer(node, address))
        .join()
        .unwrap();
    eventually("a connects to b", || a.peer_stats(b.node()).connected).await;
    let (sender, node) = (a.clone(), b.node());
    std::thread::spawn(move || {
        for i in 0..40u8 {
            sender.send(node, vec![i; 1000]).unwrap();
        }
    })
    .join()
    .unwrap();
    let got = receive(&mut b_rx, 40).await;
    for (i, inbound) in got.iter().enumerate() {
        assert_eq!(inbound.payload, vec![i as u8; 1000]);
        assert_eq!(inbound.seq, i as u64 / 4 + 1);
    }
    assert_eq!(b.peer_stats(a.node()).received_envelopes, 10);
}

#[tokio::test]
async fn a_peer_down_then_up_gets_the_queued_messages_and_the_link_recovers() {
    let limits = limits();
    let address = free_port();
    let (a, _a_rx) = start(1, limits.clone()).await;
    a.add_peer(NodeId(2), address);
    for i in 0..10u8 {
        a.send(NodeId(2), vec![i]).unwrap();
    }
    eventually("a retries the absent peer with backoff", || {
        a.peer_stats(NodeId(2)).connect_failures >= 3
    })
    .await;
    let stats = a.peer_stats(NodeId(2));
    assert_eq!((stats.queued, stats.sent, stats.connected), (10, 0, false));
    assert!(stats.last_error.unwrap().contains("connect to n2"));

    // The peer starts: the queued messages arrive, in order, within the
    // backoff bound (plus slack for a loaded machine).
    let (b, mut b_rx) = start_at("test-cluster", 2, address, limits.clone()).await;
    let got = receive(&mut b_rx, 10).await;
    let payloads: Vec<Vec<u8>> = got.iter().map(|inbound| inbound.payload.clone()).collect();
    assert_eq!(payloads, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
    let first_session = got[0].session;
    let stats = a.peer_stats(NodeId(2));
    assert_eq!((stats.sent, stats.queued, stats.reconnects), (10, 0, 0));

    // The peer goes away: a notices, queues, and delivers after the restart
    // on a new session whose envelopes count from 1 again.
    b.shutdown().await;
    drop(b_rx);
    eventually("a notices the peer is gone", || {
        !a.peer_stats(NodeId(2)).connected
    })
    .await;
    for i in 10..15u8 {
        a.send(NodeId(2), vec![i]).unwrap();
    }
    let (b, mut b_rx) = start_at("test-cluster", 2, address, limits).await;
    let got = receive(&mut b_rx, 5).await;
    let payloads: Vec<Vec<u8>> = got.iter().map(|inbound| inbound.payload.clone()).collect();
    assert_eq!(payloads, (10..15u8).map(|i| vec![i]).collect::<Vec<_>>());
    assert!(got[0].session > first_session);
    assert_eq!(got[0].seq, 1);
    let stats = a.peer_stats(NodeId(2));
    assert_eq!((stats.sent, stats.dropped, stats.reconnects), (15, 0, 1));
    assert!(stats.connected);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let limits = Limits {
        queue_messages_max: 8,
        queue_bytes_max: 64 * 1024 * 1024,
        ..limits()
    };
    let (a, _a_rx) = start(1, limits).await;
    // Nobody listens there: everything stays queued.
    a.add_peer(NodeId(2), free_port());
    let mut refused = 0;
    for i in 0..20u8 {
        match a.send(NodeId(2), vec![i; 10]) {
            Ok(()) => assert!(i < 8, "message {i} was queued beyond the bound"),
            Err(SendError::QueueFull {
                peer,
                messages,
                bytes,
            }) => {
                assert_eq!((peer, messages, bytes), (NodeId(2), 8, 80));
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused, 12);
    let stats = a.peer_stats(NodeId(2));
    assert_eq!((stats.dropped, stats.queued, stats.sent), (12, 8, 0));
    // Removing the peer discards (and counts) what it held.
    a.remove_peer(NodeId(2));
    let stats = a.peer_stats(NodeId(2));
    assert_eq!((stats.discarded, stats.queued), (8, 0));
    assert_eq!(
        a.send(NodeId(2), vec![1]),
        Err(SendError::UnknownPeer(NodeId(2)))
    );
}

#[tokio::test]
async fn the_byte_bound_of_a_queue_drops_too() {
    let limits = Limits {
        envelope_bytes_max: 2000,
        grpc_message_bytes_max: 2000,
        queue_bytes_max: 3000,
        ..limits()
    };
    let (a, _a_rx) = start(1, limits).await;
    a.add_peer(NodeId(2), free_port());
    a.send(NodeId(2), vec![0; 1500]).unwrap();
    a.send(NodeId(2), vec![1; 1500]).unwrap();
    let error = a.send(NodeId(2), vec![2; 1]).unwrap_err();
    assert_eq!(
        error,
        SendError::QueueFull {
            peer: NodeId(2),
            messages: 2,
            bytes: 3000
        }
    );
    assert!(error.to_string().contains("dropped"));
    assert_eq!(a.peer_stats(NodeId(2)).dropped, 1);
}

#[tokio::test]
async fn a_slow_consumer_holds_back_senders_within_the_inbound_byte_bound() {
    // Room for three 1000-byte payloads between the transport and its consumer.
    let limits = Limits {
        envelope_bytes_max: 2000,
        grpc_message_bytes_max: 2000,
        inbound_bytes_max: 3000,
        ..limits()
    };
    let (a, _a_rx) = start(1, limits.clone()).await;
    let (b, mut b_rx) = start(2, limits).await;
    a.add_peer(b.node(), b.local_address());
    for i in 0..8u8 {
        a.send(b.node(), vec![i; 1000]).unwrap();
    }
    eventually("three payloads wait for the consumer", || {
        b.peer_stats(a.node()).received == 3
    })
    .await;
    // The bound holds: nothing more is taken off the connection meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.peer_stats(a.node()).received, 3);
    // A self-send that does not fit is refused and counted, never waited for.
    assert!(matches!(
        b.send(b.node(), vec![0; 1000]),
        Err(SendError::QueueFull { bytes: 3000, .. })
    ));
    assert_eq!(b.peer_stats(b.node()).dropped, 1);
    // Consuming frees the room: everything arrives, in order, nothing lost.
    let got = receive(&mut b_rx, 8).await;
    for (i, inbound) in got.iter().enumerate() {
        assert_eq!(inbound.payload, vec![i as u8; 1000]);
    }
    let stats = a.peer_stats(b.node());
    assert_eq!((stats.sent, stats.dropped), (8, 0));
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let (a, _a_rx) = start_at("alpha", 1, loopback(), limits()).await;
    let (b, mut b_rx) = start_at("beta", 2, loopback(), limits()).await;
    a.add_peer(b.node(), b.local_address());
    a.send(b.node(), b"hello".to_vec()).unwrap();
    eventually("b refuses a's handshake", || {
        a.peer_stats(b.node()).handshakes_refused >= 1
    })
    .await;
    let stats = a.peer_stats(b.node());
    let error = stats.last_error.unwrap();
    assert!(
        error.contains("cluster id mismatch")
            && error.contains("\"alpha\"")
            && error.contains("\"beta\""),
        "{error}"
    );
    assert!(!stats.connected);
    assert_eq!((stats.sent, stats.queued), (0, 1));
    assert!(b.refused_handshakes() >= 1);
    assert!(b_rx.try_recv().is_err());

    // The right cluster but the wrong node id at that address: refused too.
    let (c, _c_rx) = start_at("beta", 3, loopback(), limits()).await;
    c.add_peer(NodeId(4), b.local_address());
    eventually("b refuses c's handshake", || {
        c.peer_stats(NodeId(4)).handshakes_refused >= 1
    })
    .await;
    let error = c.peer_stats(NodeId(4)).last_error.unwrap();
    assert!(error.contains("node id mismatch"), "{error}");
    assert!(b_rx.try_recv().is_err());
}

#[tokio::test]
async fn an_oversized_payload_is_refused_and_the_largest_allowed_arrives() {
    let limits = Limits {
        envelope_bytes_max: 64 * 1024,
        grpc_message_bytes_max: 64 * 1024,
        ..limits()
    };
    let largest = limits.payload_bytes_max();
    let (a, _a_rx) = start(1, limits.clone()).await;
    let (b, mut b_rx) = start(2, limits).await;
    a.add_peer(b.node(), b.local_address());
    let error = a.send(b.node(), vec![7; largest + 1]).unwrap_err();
    assert_eq!(
        error,
        SendError::TooLarge {
            len: largest + 1,
            limit: largest
        }
    );
    assert!(
        error
            .to_string()
            .contains("exceeds the transport's payload limit")
    );
    assert_eq!(a.peer_stats(b.node()).refused_too_large, 1);
    // The largest payload fits an envelope and the gRPC message bound.
    a.send(b.node(), vec![7; largest]).unwrap();
    a.send(b.node(), vec![8; largest]).unwrap();
    let got = receive(&mut b_rx, 2).await;
    assert_eq!(got[0].payload, vec![7; largest]);
    assert_eq!(got[1].payload, vec![8; largest]);
    assert_eq!(b.peer_stats(a.node()).received_envelopes, 2);
}

#[tokio::test]
async fn self_sends_arrive_locally() {
    let (a, mut a_rx) = start(1, limits()).await;
    a.set_epoch(Epoch(3));
    a.send(a.node(), b"me".to_vec()).unwrap();
    let got = receive(&mut a_rx, 1).await;
    assert_eq!(
        (got[0].from, got[0].epoch, got[0].payload.as_slice()),
        (NodeId(1), Epoch(3), &b"me"[..])
    );
}

/// The next frame of a raw peer stream, within [`PATIENCE`].
async fn next_reply(
    replies: &mut tonic::Streaming<concord_cluster::transport::peer_v1::PeerReply>,
) -> Result<Option<concord_cluster::transport::peer_v1::PeerReply>, tonic::Status> {
    tokio::time::timeout(PATIENCE, replies.message())
        .await
        .expect("the peer answered within the patience")
}

fn hello(to: u32, boot: u64, session: u64) -> PeerFrame {
    PeerFrame {
        kind: Some(peer_frame::Kind::Hello(Hello {
            cluster_id: "test-cluster".to_owned(),
            from: 9,
            to,
            transport_version: TRANSPORT_VERSION,
            codec_version: CODEC_VERSION,
            boot,
            session,
        })),
    }
}

fn envelope(seq: u64, message: &[u8]) -> PeerFrame {
    PeerFrame {
        kind: Some(peer_frame::Kind::Envelope(Envelope {
            from: 9,
            epoch: 1,
            seq,
            messages: vec![message.to_vec()],
        })),
    }
}

/// Opens a raw peer stream with the generated client and sends `frames`.
async fn raw_stream(
    address: SocketAddr,
    frames: Vec<PeerFrame>,
) -> Result<tonic::Streaming<concord_cluster::transport::peer_v1::PeerReply>, tonic::Status> {
    let (replies, tx) = raw_stream_open(address, frames).await?;
    // Keep the request stream open for the call's life.
    tokio::spawn(async move {
        tx.closed().await;
    });
    Ok(replies)
}

/// As [`raw_stream`], and returns the sender of further frames.
async fn raw_stream_open(
    address: SocketAddr,
    frames: Vec<PeerFrame>,
) -> Result<
    (
        tonic::Streaming<concord_cluster::transport::peer_v1::PeerReply>,
        mpsc::Sender<PeerFrame>,
    ),
    tonic::Status,
> {
    let mut client = PeerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(frames.len() + 8);
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    let response = tokio::time::timeout(
        PATIENCE,
        client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the peer answered within the patience")?;
    Ok((response.into_inner(), tx))
}

#[tokio::test]
async fn a_newer_session_supersedes_the_open_older_one() {
    let (b, mut b_rx) = start(2, limits()).await;
    let address = b.local_address();
    let (mut old, old_tx) = raw_stream_open(address, vec![hello(2, 50, 1), envelope(1, b"a")])
        .await
        .unwrap();
    next_reply(&mut old).await.unwrap().unwrap();
    let got = receive(&mut b_rx, 1).await;
    assert_eq!((got[0].session, got[0].payload.as_slice()), (1, &b"a"[..]));
    // The dialler reconnected (session 2) while session 1 is still open.
    let (mut new, new_tx) = raw_stream_open(address, vec![hello(2, 50, 2), envelope(1, b"b")])
        .await
        .unwrap();
    next_reply(&mut new).await.unwrap().unwrap();
    let got = receive(&mut b_rx, 1).await;
    assert_eq!((got[0].session, got[0].payload.as_slice()), (2, &b"b"[..]));
    // A late envelope on the old connection is discarded, counted, and ends it.
    old_tx.send(envelope(2, b"late")).await.unwrap();
    assert!(next_reply(&mut old).await.unwrap().is_none());
    new_tx.send(envelope(2, b"c")).await.unwrap();
    let got = receive(&mut b_rx, 1).await;
    assert_eq!(
        (got[0].session, got[0].seq, got[0].payload.as_slice()),
        (2, 2, &b"c"[..])
    );
    let stats = b.peer_stats(NodeId(9));
    assert_eq!((stats.received, stats.discarded), (3, 1));
    assert!(b_rx.try_recv().is_err());
}

#[tokio::test]
async fn sequence_gaps_and_stale_sessions_are_refused() {
    let (b, mut b_rx) = start(2, limits()).await;
    let address = b.local_address();

    // A gap: envelope 2 first. The welcome comes, then the stream fails.
    let mut replies = raw_stream(address, vec![hello(2, 77, 5), envelope(2, b"x")])
        .await
        .unwrap();
    let welcome = next_reply(&mut replies).await.unwrap().unwrap();
    assert!(
        matches!(welcome.kind, Some(peer_reply::Kind::Welcome(w)) if w.node == 2 && w.session == 5)
    );
    let status = next_reply(&mut replies).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("envelope sequence 2 where 1 was expected"),
        "{status}"
    );
    assert!(b_rx.try_recv().is_err());

    // An older session of the same boot after session 5: refused.
    let status = raw_stream(address, vec![hello(2, 77, 4), envelope(1, b"y")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("stale session 4"), "{status}");

    // A newer session delivers; a new boot may start from session 1 again.
    let mut replies = raw_stream(address, vec![hello(2, 77, 6), envelope(1, b"z")])
        .await
        .unwrap();
    next_reply(&mut replies).await.unwrap().unwrap();
    let got = receive(&mut b_rx, 1).await;
    assert_eq!((got[0].from, got[0].session, got[0].seq), (NodeId(9), 6, 1));
    let mut replies = raw_stream(address, vec![hello(2, 78, 1), envelope(1, b"w")])
        .await
        .unwrap();
    next_reply(&mut replies).await.unwrap().unwrap();
    let got = receive(&mut b_rx, 1).await;
    assert_eq!(got[0].payload, b"w");
    let stats = b.peer_stats(NodeId(9));
    assert_eq!((stats.received, stats.protocol_errors), (2, 2));
    assert_eq!(b.refused_handshakes(), 1);

    // A Hello where an envelope belongs breaks the protocol too.
    let mut replies = raw_stream(address, vec![hello(2, 79, 1), hello(2, 79, 1)])
        .await
        .unwrap();
    next_reply(&mut replies).await.unwrap().unwrap();
    let status = next_reply(&mut replies).await.unwrap_err();
    assert!(status.message().contains("not an Envelope"), "{status}");
}

#[tokio::test]
async fn inconsistent_limits_do_not_start() {
    let error = Transport::start(TransportConfig {
        cluster_id: "c".to_owned(),
        node: NodeId(1),
        listen: loopback(),
        codec_version: 1,
        limits: Limits {
            envelope_bytes_max: 8 * 1024 * 1024,
            ..Limits::default()
        },
    })
    .await
    .unwrap_err();
    assert!(matches!(error, StartError::Config(_)));
    assert!(
        error.to_string().contains("grpc_message_bytes_max"),
        "{error}"
    );
    let error = Transport::start(TransportConfig {
        cluster_id: String::new(),
        node: NodeId(1),
        listen: loopback(),
        codec_version: 1,
        limits: Limits::default(),
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("cluster id is empty"), "{error}");
}

mod accord {
    //! Three Accord runtimes (RF=3, one shard) talking only through three
    //! transports: transactions coordinated by different nodes commit, and
    //! every replica applies them.

    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use concord_cluster::runtime::{NoObserver, Runtime, RuntimeConfig};
    use concord_cluster::transport::accord::{
        ACCORD_CODEC_VERSION, AccordWireStats, TransportPeers, spawn_delivery,
    };
    use concord_cluster::transport::{Transport, TransportConfig};
    use concord_storage::engine::EngineOptions;
    use concord_storage::memory::MemoryEngine;
    use concord_txn::node::{NodeConfig, Outcome};
    use concord_txn::storage::{EngineJournal, KvDataStore};
    use concord_txn::timestamp::NodeId;
    use concord_txn::topology::{FastPathMode, Topology};
    use concord_txn::txn::{Key, Txn, Update, decode_list};

    use super::{eventually, limits, loopback};

    fn list(engine: &Arc<MemoryEngine>, key: &Key) -> Vec<u64> {
        let values = KvDataStore::new(engine.clone())
            .values(std::slice::from_ref(key))
            .unwrap();
        values[key]
            .as_deref()
            .map(|bytes| decode_list(bytes).unwrap())
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_runtimes_commit_over_the_transport() {
        let topology = Arc::new(Topology::ring(3, 1, 3, FastPathMode::CoordinatorVotes));
        let mut transports = Vec::new();
        let mut receivers = Vec::new();
        for id in 1..=3 {
            let (transport, rx) = Transport::start(TransportConfig {
                cluster_id: "accord".to_owned(),
                node: NodeId(id),
                listen: loopback(),
                codec_version: ACCORD_CODEC_VERSION,
                limits: limits(),
            })
            .await
            .unwrap();
            transports.push(transport);
            receivers.push(rx);
        }
        for transport in &transports {
            for peer in &transports {
                transport.add_peer(peer.node(), peer.local_address());
            }
        }
        let mut nodes = Vec::new();
        for (transport, rx) in transports.iter().zip(receivers) {
            let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
            let stats = Arc::new(AccordWireStats::default());
            let runtime = Arc::new(
                Runtime::start(
                    RuntimeConfig {
                        node: transport.node(),
                        topology: topology.clone(),
                        node_config: NodeConfig::default(),
                        clock_offset_micros: 0,
                        epoch_floor: None,
                    },
                    Box::new(EngineJournal::new(engine.clone())),
                    Box::new(KvDataStore::new(engine.clone())),
                    Box::new(TransportPeers::new(transport.clone(), stats.clone())),
                    Box::new(NoObserver),
                )
                .unwrap(),
            );
            let delivery = spawn_delivery(rx, runtime.clone(), stats.clone());
            nodes.push((runtime, engine, stats, delivery));
        }
        let key = Key::numbered(42);
        // Appends coordinated by each node in turn, one after another.
        for value in 0..9u64 {
            let runtime = nodes[value as usize % 3].0.clone();
            let txn = Txn::new(
                vec![key.clone()],
                Update::Append(vec![(key.clone(), value)]),
            );
            let outcome = tokio::task::spawn_blocking(move || runtime.execute(txn))
                .await
                .unwrap()
                .unwrap();
            let Outcome::Committed { reads, .. } = outcome else {
                panic!("value {value} did not commit: {outcome:?}");
            };
            let read = reads[&key]
                .as_deref()
                .map(|bytes| decode_list(bytes).unwrap());
            assert_eq!(read.unwrap_or_default(), (0..value).collect::<Vec<_>>());
        }
        // Every replica applies every append, in the same order.
        for (_, engine, _, _) in &nodes {
            eventually("every replica applied the nine appends", || {
                list(engine, &key) == (0..9).collect::<Vec<_>>()
            })
            .await;
        }
        // A payload that is no message is counted at the receiver, not delivered.
        transports[0].send(NodeId(2), vec![0xde, 0xad]).unwrap();
        let undecodable = nodes[1].2.clone();
        eventually("n2 counts the undecodable payload", || {
            undecodable.undecodable.load(Ordering::Relaxed) == 1
        })
        .await;
        for (index, (runtime, _, stats, _)) in nodes.iter().enumerate() {
            let expected = u64::from(index == 1);
            assert_eq!(stats.undecodable.load(Ordering::Relaxed), expected);
            assert_eq!(stats.unsent.load(Ordering::Relaxed), 0);
            assert_eq!(runtime.stats().refused_messages.load(Ordering::Relaxed), 0);
        }
        let committed: u64 = nodes
            .iter()
            .map(|(runtime, ..)| runtime.stats().committed.load(Ordering::Relaxed))
            .sum();
        assert_eq!(committed, 9);
        for transport in &transports {
            let sent: u64 = transport.stats().values().map(|stats| stats.sent).sum();
            assert!(sent > 0, "{:?} sent nothing", transport.node());
            transport.shutdown().await;
        }
        for (runtime, _, _, delivery) in nodes {
            delivery.abort();
            let _ = delivery.await;
            tokio::task::spawn_blocking(move || drop(runtime))
                .await
                .unwrap();
        }
    }
}

mod views {
    //! The node's wiring in process: metadata and transport on one port per
    //! node (`Transport::start_shared`, `MetaNode::start_on`), runtimes that
    //! follow the views (`follow_views`): peers are the members, the
    //! runtimes move to each new epoch, a transaction commits across the
    //! nodes, and a removed member stops being a peer.

    use std::sync::Arc;
    use std::time::Duration;

    use concord_cluster::meta::{ExtraService, MetaConfig, MetaNode};
    use concord_cluster::runtime::{NoObserver, Runtime, RuntimeConfig};
    use concord_cluster::transport::accord::{
        ACCORD_CODEC_VERSION, AccordWireStats, CLUSTER_ID_DEFAULT, TransportPeers, follow_views,
        spawn_delivery,
    };
    use concord_cluster::transport::{Transport, TransportConfig};
    use concord_storage::engine::EngineOptions;
    use concord_storage::memory::MemoryEngine;
    use concord_txn::node::{NodeConfig, Outcome};
    use concord_txn::storage::{EngineJournal, KvDataStore};
    use concord_txn::timestamp::{Epoch, NodeId};
    use concord_txn::txn::{Key, Txn, Update};

    use super::{eventually, limits, loopback};

    struct Member {
        meta: MetaNode,
        transport: Transport,
        runtime: Arc<Runtime>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        engine: Arc<MemoryEngine>,
    }

    /// A node as `concord start` wires it: bootstrap (no seed) or join.
    async fn member(id: u32, seed: Option<String>) -> Member {
        let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let bound = listener.local_addr().unwrap();
        let limits = limits();
        let (transport, inbound, routes) = Transport::start_shared(TransportConfig {
            cluster_id: CLUSTER_ID_DEFAULT.to_owned(),
            node: NodeId(id),
            listen: bound,
            codec_version: ACCORD_CODEC_VERSION,
            limits: limits.clone(),
        })
        .unwrap();
        let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
        let mut config = MetaConfig::new(id, bound);
        config.heartbeat_interval = Duration::from_millis(50);
        config.election_timeout_min = Duration::from_millis(200);
        config.election_timeout_max = Duration::from_millis(400);
        let extra = ExtraService {
            routes,
            keepalive_interval: limits.keepalive_interval,
            keepalive_timeout: limits.keepalive_timeout,
        };
        let meta = MetaNode::start_on(config, engine.clone(), listener, Some(extra))
            .await
            .unwrap();
        let reply = match seed {
            Some(seed) => meta.join(&seed, None).await.unwrap(),
            None => meta.bootstrap(None).await.unwrap(),
        };
        let view = meta
            .wait_for_view(Duration::from_secs(10), "own join", |view| {
                view.applied_index >= reply.log_index
            })
            .await
            .unwrap();
        let topology = Arc::new(view.topology.clone().unwrap());
        transport.set_epoch(topology.epoch);
        let stats = Arc::new(AccordWireStats::default());
        let runtime = Arc::new(
            Runtime::start(
                RuntimeConfig {
                    node: NodeId(id),
                    topology,
                    node_config: NodeConfig::default(),
                    clock_offset_micros: 0,
                    epoch_floor: None,
                },
                Box::new(EngineJournal::new(engine.clone())),
                Box::new(KvDataStore::new(engine.clone())),
                Box::new(TransportPeers::new(transport.clone(), stats.clone())),
                Box::new(NoObserver),
            )
            .unwrap(),
        );
        let tasks = vec![
            spawn_delivery(inbound, runtime.clone(), stats),
            follow_views(meta.subscribe(), transport.clone(), runtime.clone()),
        ];
        Member {
            meta,
            transport,
            runtime,
            tasks,
            engine,
        }
    }

    fn peers(member: &Member) -> Vec<u32> {
        member.transport.peers().keys().map(|node| node.0).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runtimes_follow_the_views_peers_and_epochs() {
        let one = member(1, None).await;
        let seed = one.meta.address().to_owned();
        let two = member(2, Some(seed.clone())).await;
        let three = member(3, Some(seed)).await;
        let epoch = Epoch(three.meta.view().epoch());
        for node in [&one, &two, &three] {
            eventually("every runtime runs the latest epoch", || {
                node.runtime.epoch() == epoch
            })
            .await;
        }
        assert_eq!(peers(&one), [2, 3]);
        assert_eq!(peers(&two), [1, 3]);
        // A write coordinated by node 2 commits and reaches node 1's store.
        let key = Key::numbered(5);
        let runtime = two.runtime.clone();
        let txn = Txn::new(
            vec![key.clone()],
            Update::Put(vec![(key.clone(), Some(b"x".to_vec()))]),
        );
        let outcome = tokio::task::spawn_blocking(move || runtime.execute(txn))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
        let engine = one.engine.clone();
        eventually("node 1 applied node 2's write", || {
            KvDataStore::new(engine.clone())
                .values(std::slice::from_ref(&key))
                .unwrap()[&key]
                .is_some()
        })
        .await;
        // Removing node 3: a new epoch, and it is no peer any more.
        one.meta.remove_node(3).await.unwrap();
        eventually("node 1 stops sending to the removed node", || {
            peers(&one) == [2]
        })
        .await;
        eventually("node 1 runs the removal's epoch", || {
            one.runtime.epoch() > epoch
        })
        .await;
        for node in [one, two, three] {
            for task in &node.tasks {
                task.abort();
            }
            node.transport.shutdown().await;
            let _ = node.meta.shutdown().await;
            let runtime = node.runtime;
            drop(node.tasks);
            tokio::task::spawn_blocking(move || drop(runtime))
                .await
                .unwrap();
        }
    }
}
