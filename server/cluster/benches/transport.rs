//! Transport throughput beside a peer measured in the same run: one node
//! sends `MESSAGES` payloads of `PAYLOAD_BYTES` to another over loopback,
//! (a) through `concord_cluster::transport` (tonic stream, envelopes,
//! handshake, per-peer queue) and (b) over a bare tokio TCP connection with
//! length-prefixed frames fed by a bounded channel (the least a transport
//! can do). Each is run `RUNS` times, interleaved; the medians and their
//! ratio are printed. Then the latency of one message on an idle link: `PINGS`
//! round trips (A sends, B answers), through the transport and over bare
//! TCP, p50 and p99 of each. Run with
//! `cargo bench -p concord-cluster --bench transport`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_cluster::transport::{Limits, SendError, Transport, TransportConfig};
use concord_txn::timestamp::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

const MESSAGES: usize = 200_000;
const PAYLOAD_BYTES: usize = 64;
const RUNS: usize = 5;
const RAW_CHANNEL: usize = 16 * 1024;
const PINGS: usize = 2_000;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Seconds to deliver every message through the transport.
async fn transport_run() -> f64 {
    let config = |node| TransportConfig {
        cluster_id: "bench".to_owned(),
        node: NodeId(node),
        listen: loopback(),
        codec_version: 1,
        limits: Limits::default(),
    };
    let (a, _a_rx) = Transport::start(config(1)).await.unwrap();
    let (b, mut b_rx) = Transport::start(config(2)).await.unwrap();
    a.add_peer(b.node(), b.local_address());
    while !a.peer_stats(b.node()).connected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let sender = a.clone();
    let producer = std::thread::spawn(move || {
        let mut full = 0u64;
        for i in 0..MESSAGES {
            let mut payload = vec![0u8; PAYLOAD_BYTES];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            loop {
                match sender.send(NodeId(2), payload.clone()) {
                    Ok(()) => break,
                    Err(SendError::QueueFull { .. }) => {
                        full += 1;
                        std::thread::yield_now();
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
        full
    });
    for i in 0..MESSAGES {
        let inbound = b_rx.recv().await.unwrap();
        assert_eq!(inbound.payload[..8], (i as u64).to_be_bytes());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let full = producer.join().unwrap();
    let stats = a.peer_stats(b.node());
    eprintln!(
        "  transport: {:.0} msg/s, {} envelopes ({:.0} msgs each), {full} queue-full retries",
        MESSAGES as f64 / elapsed,
        stats.sent_envelopes,
        MESSAGES as f64 / stats.sent_envelopes as f64
    );
    a.shutdown().await;
    b.shutdown().await;
    elapsed
}

/// Seconds to deliver every message over bare TCP with length prefixes.
async fn raw_run() -> f64 {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(socket);
        let mut buffer = vec![0u8; PAYLOAD_BYTES];
        for i in 0..MESSAGES {
            let len = reader.read_u32().await.unwrap() as usize;
            buffer.resize(len, 0);
            reader.read_exact(&mut buffer).await.unwrap();
            assert_eq!(buffer[..8], (i as u64).to_be_bytes());
        }
    });
    let socket = TcpStream::connect(address).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(RAW_CHANNEL);
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::new(socket);
        while let Some(payload) = rx.recv().await {
            writer.write_u32(payload.len() as u32).await.unwrap();
            writer.write_all(&payload).await.unwrap();
            if rx.is_empty() {
                writer.flush().await.unwrap();
            }
        }
        writer.flush().await.unwrap();
    });
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let mut payload = vec![0u8; PAYLOAD_BYTES];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            tx.blocking_send(payload).unwrap();
        }
    });
    receiver.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    producer.join().unwrap();
    writer.await.unwrap();
    eprintln!("  raw tcp:   {:.0} msg/s", MESSAGES as f64 / elapsed);
    elapsed
}

/// Round-trip times (µs) of `PINGS` one-message pings through two transports.
async fn transport_pings() -> Vec<f64> {
    let config = |node| TransportConfig {
        cluster_id: "bench".to_owned(),
        node: NodeId(node),
        listen: loopback(),
        codec_version: 1,
        limits: Limits::default(),
    };
    let (a, mut a_rx) = Transport::start(config(1)).await.unwrap();
    let (b, mut b_rx) = Transport::start(config(2)).await.unwrap();
    a.add_peer(b.node(), b.local_address());
    b.add_peer(a.node(), a.local_address());
    let echo = b.clone();
    let echoer = tokio::spawn(async move {
        while let Some(inbound) = b_rx.recv().await {
            echo.send(inbound.from, inbound.payload).unwrap();
        }
    });
    let mut times = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 100 {
        let started = Instant::now();
        a.send(b.node(), vec![7; PAYLOAD_BYTES]).unwrap();
        a_rx.recv().await.unwrap();
        // The first 100 warm up (and wait out the connections' setup).
        if i >= 100 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    echoer.abort();
    times
}

/// Round-trip times (µs) of `PINGS` pings over bare TCP (length-prefixed).
async fn raw_pings() -> Vec<f64> {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let echoer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut buffer = vec![0u8; PAYLOAD_BYTES];
        loop {
            let Ok(len) = socket.read_u32().await else {
                return;
            };
            buffer.resize(len as usize, 0);
            socket.read_exact(&mut buffer).await.unwrap();
            let mut frame = (len).to_be_bytes().to_vec();
            frame.extend_from_slice(&buffer);
            socket.write_all(&frame).await.unwrap();
        }
    });
    let mut socket = TcpStream::connect(address).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let mut times = Vec::with_capacity(PINGS);
    let mut frame = (PAYLOAD_BYTES as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[7; PAYLOAD_BYTES]);
    let mut buffer = vec![0u8; PAYLOAD_BYTES];
    for i in 0..PINGS + 100 {
        let started = Instant::now();
        socket.write_all(&frame).await.unwrap();
        let len = socket.read_u32().await.unwrap() as usize;
        buffer.resize(len, 0);
        socket.read_exact(&mut buffer).await.unwrap();
        if i >= 100 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(socket);
    let _ = echoer.await;
    times
}

fn percentile(mut values: Vec<f64>, fraction: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * fraction).round() as usize;
    values[index]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too:
    // one short round then, so the harness stays quick.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runs = if quick { 1 } else { RUNS };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut transport = Vec::new();
    let mut raw = Vec::new();
    for run in 0..runs {
        eprintln!("run {}:", run + 1);
        transport.push(runtime.block_on(transport_run()));
        raw.push(runtime.block_on(raw_run()));
    }
    let (transport, raw) = (median(transport), median(raw));
    eprintln!(
        "{MESSAGES} messages of {PAYLOAD_BYTES} bytes, median of {runs}: transport {:.0} msg/s, raw tcp {:.0} msg/s, transport/raw throughput {:.2}",
        MESSAGES as f64 / transport,
        MESSAGES as f64 / raw,
        raw / transport
    );
    let transport = runtime.block_on(transport_pings());
    let raw = runtime.block_on(raw_pings());
    let (t50, t99) = (
        percentile(transport.clone(), 0.5),
        percentile(transport, 0.99),
    );
    let (r50, r99) = (percentile(raw.clone(), 0.5), percentile(raw, 0.99));
    eprintln!(
        "{PINGS} round trips of one {PAYLOAD_BYTES}-byte message on an idle link: transport p50 {t50:.0} µs p99 {t99:.0} µs, raw tcp p50 {r50:.0} µs p99 {r99:.0} µs, transport/raw p50 {:.2}",
        t50 / r50
    );
}
