//! The CQL endpoint at the byte level: version negotiation, malformed and
//! oversized frames, v5 segments, lz4, and UNPREPARED. A bad connection must
//! get an error and never disturb another one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use concord_server::cql::frame::{SegmentRead, read_segment, write_segments};

use crate::cql_node::Node;

const OPTIONS: u8 = 0x05;
const STARTUP: u8 = 0x01;
const QUERY: u8 = 0x07;
const EXECUTE: u8 = 0x0A;
const ERROR: u8 = 0x00;
const READY: u8 = 0x02;
const SUPPORTED: u8 = 0x06;
const RESULT: u8 = 0x08;

fn connect(node: &Node) -> TcpStream {
    let stream = TcpStream::connect(node.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn envelope(version: u8, flags: u8, stream_id: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![version, flags];
    bytes.extend_from_slice(&stream_id.to_be_bytes());
    bytes.push(opcode);
    bytes.extend_from_slice(&(body.len() as i32).to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// STARTUP (protocol v4, stream 1) on a new connection; waits for READY.
pub(crate) fn start_v4(stream: &mut TcpStream) {
    let startup = envelope(4, 0, 1, STARTUP, &string_map(&[("CQL_VERSION", "3.0.0")]));
    stream.write_all(&startup).unwrap();
    assert_eq!(read_envelope(stream).2, READY);
}

/// REGISTER [string list] `events` (stream 2) on a started v4 connection;
/// waits for READY.
pub(crate) fn register(stream: &mut TcpStream, events: &[&str]) {
    let mut body = (events.len() as u16).to_be_bytes().to_vec();
    for event in events {
        body.extend_from_slice(&(event.len() as u16).to_be_bytes());
        body.extend_from_slice(event.as_bytes());
    }
    stream.write_all(&envelope(4, 0, 2, 0x0B, &body)).unwrap();
    assert_eq!(read_envelope(stream).2, READY);
}

fn string_map(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (entries.len() as u16).to_be_bytes().to_vec();
    for (key, value) in entries {
        for text in [key, value] {
            body.extend_from_slice(&(text.len() as u16).to_be_bytes());
            body.extend_from_slice(text.as_bytes());
        }
    }
    body
}

fn query_body(query: &str, version: u8) -> Vec<u8> {
    let mut body = (query.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(query.as_bytes());
    body.extend_from_slice(&1u16.to_be_bytes()); // consistency ONE
    if version >= 5 {
        body.extend_from_slice(&0u32.to_be_bytes());
    } else {
        body.push(0);
    }
    body
}

/// Reads one envelope: (version byte, stream id, opcode, body).
pub(crate) fn read_envelope(stream: &mut impl Read) -> (u8, i16, u8, Vec<u8>) {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).unwrap();
    let length = i32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (
        header[0],
        i16::from_be_bytes([header[2], header[3]]),
        header[4],
        body,
    )
}

fn error_of(body: &[u8]) -> (i32, String) {
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let length = u16::from_be_bytes([body[4], body[5]]) as usize;
    (
        code,
        String::from_utf8_lossy(&body[6..6 + length]).into_owned(),
    )
}

/// After a bad connection, a fresh one still gets SUPPORTED.
fn assert_node_still_serves(node: &Node) {
    let mut stream = connect(node);
    stream.write_all(&envelope(4, 0, 1, OPTIONS, &[])).unwrap();
    let (_, stream_id, opcode, _) = read_envelope(&mut stream);
    assert_eq!((stream_id, opcode), (1, SUPPORTED));
}

fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[test]
fn unsupported_versions_get_a_protocol_error_drivers_downgrade_on() {
    let node = Node::start("");
    for version in [0x42u8, 0x41, 3, 6] {
        let mut stream = connect(&node);
        stream
            .write_all(&envelope(version, 0, 7, OPTIONS, &[]))
            .unwrap();
        let (response_version, stream_id, opcode, body) = read_envelope(&mut stream);
        assert_eq!(response_version, 0x84);
        assert_eq!((stream_id, opcode), (7, ERROR));
        let (code, message) = error_of(&body);
        assert_eq!(code, 0x000A, "{message}");
        assert!(
            message.contains("unsupported protocol version"),
            "{message}"
        );
        assert_closed(&mut stream);
    }
    assert_node_still_serves(&node);
}

#[test]
fn oversized_malformed_and_garbage_frames_end_only_their_connection() {
    let node = Node::start("cql_frame_bytes_max = 4096");
    let mut healthy = connect(&node);
    healthy
        .write_all(&envelope(
            4,
            0,
            1,
            STARTUP,
            &string_map(&[("CQL_VERSION", "3.0.0")]),
        ))
        .unwrap();
    assert_eq!(read_envelope(&mut healthy).2, READY);

    // Oversized: refused from the header, before the body arrives.
    let mut stream = connect(&node);
    let mut header = envelope(4, 0, 3, QUERY, &[]);
    header[5..9].copy_from_slice(&(1_000_000i32).to_be_bytes());
    stream.write_all(&header).unwrap();
    let (_, _, opcode, body) = read_envelope(&mut stream);
    let (code, message) = error_of(&body);
    assert_eq!((opcode, code), (ERROR, 0x000A));
    assert!(message.contains("frame_bytes_max"), "{message}");
    assert_closed(&mut stream);

    // A negative length.
    let mut stream = connect(&node);
    let mut header = envelope(4, 0, 3, QUERY, &[]);
    header[5..9].copy_from_slice(&(-5i32).to_be_bytes());
    stream.write_all(&header).unwrap();
    let (_, _, opcode, _) = read_envelope(&mut stream);
    assert_eq!(opcode, ERROR);
    assert_closed(&mut stream);

    // A body that does not decode, and an unknown opcode.
    for (opcode, body) in [(STARTUP, vec![0xff, 0xff, 0x00]), (0x7f, vec![])] {
        let mut stream = connect(&node);
        stream.write_all(&envelope(4, 0, 4, opcode, &body)).unwrap();
        let (_, stream_id, response, body) = read_envelope(&mut stream);
        assert_eq!((stream_id, response), (4, ERROR));
        assert_eq!(error_of(&body).0, 0x000A);
        assert_closed(&mut stream);
    }

    // Random garbage, then a truncated frame and a hang-up.
    let mut stream = connect(&node);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_closed(&mut stream);
    let mut stream = connect(&node);
    stream
        .write_all(&envelope(4, 0, 1, QUERY, &[1, 2, 3])[..6])
        .unwrap();
    drop(stream);

    // The healthy connection is undisturbed.
    healthy
        .write_all(&envelope(
            4,
            0,
            9,
            QUERY,
            &query_body("SELECT key FROM system.local", 4),
        ))
        .unwrap();
    let (_, stream_id, opcode, _) = read_envelope(&mut healthy);
    assert_eq!((stream_id, opcode), (9, RESULT));
    assert_node_still_serves(&node);
}

#[test]
fn queries_before_startup_and_unknown_prepared_ids_get_their_errors() {
    let node = Node::start("");
    let mut stream = connect(&node);
    stream
        .write_all(&envelope(
            4,
            0,
            1,
            QUERY,
            &query_body("SELECT * FROM system.local", 4),
        ))
        .unwrap();
    let (_, _, opcode, body) = read_envelope(&mut stream);
    assert_eq!((opcode, error_of(&body).0), (ERROR, 0x000A));
    stream
        .write_all(&envelope(
            4,
            0,
            2,
            STARTUP,
            &string_map(&[("CQL_VERSION", "3.0.0")]),
        ))
        .unwrap();
    assert_eq!(read_envelope(&mut stream).2, READY);
    let mut execute = 16u16.to_be_bytes().to_vec();
    execute.extend_from_slice(&[0xab; 16]);
    execute.extend_from_slice(&1u16.to_be_bytes());
    execute.push(0);
    stream
        .write_all(&envelope(4, 0, 3, EXECUTE, &execute))
        .unwrap();
    let (_, stream_id, opcode, body) = read_envelope(&mut stream);
    let (code, message) = error_of(&body);
    assert_eq!((stream_id, opcode, code), (3, ERROR, 0x2500), "{message}");
    stream
        .write_all(&envelope(
            4,
            0,
            4,
            QUERY,
            &query_body("SELECT * FROM nowhere.t", 4),
        ))
        .unwrap();
    let (_, _, opcode, body) = read_envelope(&mut stream);
    assert_eq!((opcode, error_of(&body).0), (ERROR, 0x2200));
    stream
        .write_all(&envelope(4, 0, 5, QUERY, &query_body("SELECT FROM", 4)))
        .unwrap();
    let (_, _, opcode, body) = read_envelope(&mut stream);
    assert_eq!((opcode, error_of(&body).0), (ERROR, 0x2000));
}

#[test]
fn v5_switches_to_checksummed_segments_with_and_without_lz4() {
    let node = Node::start("");
    for lz4 in [false, true] {
        let mut stream = connect(&node);
        let mut options = vec![("CQL_VERSION", "3.0.0")];
        if lz4 {
            options.push(("COMPRESSION", "lz4"));
        }
        stream
            .write_all(&envelope(5, 0, 1, STARTUP, &string_map(&options)))
            .unwrap();
        let (version, _, opcode, _) = read_envelope(&mut stream);
        assert_eq!((version, opcode), (0x85, READY));
        let mut wire = Vec::new();
        let query = query_body("SELECT release_version FROM system.local", 5);
        write_segments(&envelope(5, 0, 2, QUERY, &query), lz4, &mut wire);
        stream.write_all(&wire).unwrap();
        let mut buffer = Vec::new();
        let payload = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            buffer.extend_from_slice(&chunk[..n]);
            if let SegmentRead::Segment { payload, .. } = read_segment(&buffer, lz4).unwrap() {
                break payload;
            }
        };
        let (version, stream_id, opcode, body) = read_envelope(&mut payload.as_slice());
        assert_eq!((version, stream_id, opcode), (0x85, 2, RESULT));
        assert!(String::from_utf8_lossy(&body).contains("5.0.0"));
        // A corrupted segment ends the connection.
        let mut wire = Vec::new();
        write_segments(&envelope(5, 0, 3, OPTIONS, &[]), lz4, &mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        stream.write_all(&wire).unwrap();
        assert_closed(&mut stream);
    }
    assert_node_still_serves(&node);
}

#[test]
fn v4_lz4_compressed_envelopes_round_trip() {
    let node = Node::start("");
    let mut stream = connect(&node);
    stream
        .write_all(&envelope(
            4,
            0,
            1,
            STARTUP,
            &string_map(&[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "lz4")]),
        ))
        .unwrap();
    assert_eq!(read_envelope(&mut stream).2, READY);
    let query = query_body("SELECT cluster_name FROM system.local", 4);
    let mut compressed = (query.len() as u32).to_be_bytes().to_vec();
    compressed.extend_from_slice(&lz4_flex::block::compress(&query));
    stream
        .write_all(&envelope(4, 0x01, 2, QUERY, &compressed))
        .unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(header[4], RESULT);
    assert_eq!(header[1] & 0x01, 0x01, "the response is compressed too");
    let length = i32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let plain = lz4_flex::block::decompress(&body[4..], size).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("Concord"));
}

#[test]
fn connections_over_the_limit_get_overloaded_and_bad_values_get_invalid() {
    let node = Node::start("cql_connections_max = 2");
    let mut first = connect(&node);
    let mut second = connect(&node);
    for stream in [&mut first, &mut second] {
        stream
            .write_all(&envelope(
                4,
                0,
                1,
                STARTUP,
                &string_map(&[("CQL_VERSION", "3.0.0")]),
            ))
            .unwrap();
        assert_eq!(read_envelope(stream).2, READY);
    }
    let mut third = connect(&node);
    third.write_all(&envelope(4, 0, 5, OPTIONS, &[])).unwrap();
    let (_, stream_id, opcode, body) = read_envelope(&mut third);
    let (code, message) = error_of(&body);
    assert_eq!((stream_id, opcode, code), (5, ERROR, 0x1001), "{message}");
    assert!(message.contains("connections_max"), "{message}");
    assert_closed(&mut third);

    // A bound value of the wrong size for its type: INVALID, connection kept.
    let query = "SELECT * FROM system.local WHERE key = ?";
    let mut body = (query.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(query.as_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(0x01); // values
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&3i32.to_be_bytes());
    body.extend_from_slice(&[0xff, 0xfe, 0xfd]); // not UTF-8
    first.write_all(&envelope(4, 0, 6, QUERY, &body)).unwrap();
    let (_, stream_id, opcode, body) = read_envelope(&mut first);
    let (code, message) = error_of(&body);
    assert_eq!((stream_id, opcode, code), (6, ERROR, 0x2200), "{message}");
    first
        .write_all(&envelope(
            4,
            0,
            7,
            QUERY,
            &query_body("SELECT key FROM system.local", 4),
        ))
        .unwrap();
    assert_eq!(read_envelope(&mut first).2, RESULT);
    // Closing a connection frees its slot.
    drop(second);
    std::thread::sleep(Duration::from_millis(200));
    assert_node_still_serves(&node);
}

#[test]
fn registered_connections_receive_schema_change_events() {
    let node = Node::start("");
    let mut listener = connect(&node);
    start_v4(&mut listener);
    register(&mut listener, &["SCHEMA_CHANGE"]);

    let mut writer = connect(&node);
    start_v4(&mut writer);
    let ddl = "CREATE KEYSPACE evented WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}";
    writer
        .write_all(&envelope(4, 0, 3, QUERY, &query_body(ddl, 4)))
        .unwrap();
    assert_eq!(read_envelope(&mut writer).2, RESULT);

    let (_, stream_id, opcode, body) = read_envelope(&mut listener);
    assert_eq!((stream_id, opcode), (-1, 0x0C), "an EVENT on stream -1");
    let text = String::from_utf8_lossy(&body);
    for expected in ["SCHEMA_CHANGE", "CREATED", "KEYSPACE", "evented"] {
        assert!(text.contains(expected), "{text:?} lacks {expected}");
    }
}

/// One request and its response, as envelopes (v4) or inside segments (v5).
fn round_trip(stream: &mut TcpStream, version: u8, envelope: &[u8]) -> (u8, i16, u8, Vec<u8>) {
    if version == 4 {
        stream.write_all(envelope).unwrap();
        return read_envelope(stream);
    }
    let mut wire = Vec::new();
    write_segments(envelope, false, &mut wire);
    stream.write_all(&wire).unwrap();
    let mut buffer = Vec::new();
    let payload = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buffer.extend_from_slice(&chunk[..n]);
        if let SegmentRead::Segment { payload, .. } = read_segment(&buffer, false).unwrap() {
            break payload;
        }
    };
    read_envelope(&mut payload.as_slice())
}

#[test]
fn execute_with_skip_metadata_gets_rows_without_column_specs_in_v4_and_v5() {
    const PREPARE: u8 = 0x09;
    const NO_METADATA: i32 = 0x0004;
    let node = Node::start("");
    for version in [4u8, 5] {
        let mut stream = connect(&node);
        let startup = envelope(
            version,
            0,
            1,
            STARTUP,
            &string_map(&[("CQL_VERSION", "3.0.0")]),
        );
        stream.write_all(&startup).unwrap();
        assert_eq!(read_envelope(&mut stream).2, READY);
        let keyspace = format!("skipping{version}");
        for (id, ddl) in [
            format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            format!("CREATE TABLE {keyspace}.t (k int PRIMARY KEY, a_column_name text)"),
            format!("INSERT INTO {keyspace}.t (k, a_column_name) VALUES (1, 'the value')"),
        ]
        .iter()
        .enumerate()
        {
            let request = envelope(version, 0, 2 + id as i16, QUERY, &query_body(ddl, version));
            let (_, _, opcode, body) = round_trip(&mut stream, version, &request);
            assert_eq!(opcode, RESULT, "{ddl}: {:?}", String::from_utf8_lossy(&body));
        }
        // PREPARE <long string> (v5: then an int of flags).
        let select = format!("SELECT a_column_name FROM {keyspace}.t WHERE k = 1");
        let mut prepare = (select.len() as i32).to_be_bytes().to_vec();
        prepare.extend_from_slice(select.as_bytes());
        if version >= 5 {
            prepare.extend_from_slice(&0u32.to_be_bytes());
        }
        let (_, _, opcode, prepared) = round_trip(
            &mut stream,
            version,
            &envelope(version, 0, 9, PREPARE, &prepare),
        );
        assert_eq!(opcode, RESULT);
        assert_eq!(prepared[..4], 4i32.to_be_bytes(), "a Prepared result");
        // The id, and in v5 the result metadata id: [short bytes] each.
        let mut end = 4;
        for _ in 0..(if version >= 5 { 2 } else { 1 }) {
            end += 2 + u16::from_be_bytes([prepared[end], prepared[end + 1]]) as usize;
        }
        let ids = &prepared[4..end];
        for skip in [false, true] {
            let mut execute = ids.to_vec();
            execute.extend_from_slice(&1u16.to_be_bytes()); // consistency ONE
            let flags = if skip { 0x02 } else { 0x00 };
            if version >= 5 {
                execute.extend_from_slice(&(flags as u32).to_be_bytes());
            } else {
                execute.push(flags);
            }
            let request = envelope(version, 0, 10, EXECUTE, &execute);
            let (_, stream_id, opcode, body) = round_trip(&mut stream, version, &request);
            assert_eq!(
                (stream_id, opcode),
                (10, RESULT),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(body[..4], 2i32.to_be_bytes(), "a Rows result");
            let metadata_flags = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            let columns = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
            let text = String::from_utf8_lossy(&body);
            assert_eq!(columns, 1, "the column count is always sent");
            assert!(text.contains("the value"), "the row itself: {text:?}");
            assert_eq!(
                metadata_flags & NO_METADATA != 0,
                skip,
                "v{version} skip_metadata={skip}: flags {metadata_flags:#x}"
            );
            assert_eq!(text.contains("a_column_name"), !skip, "{text:?}");
            assert_eq!(text.contains(&keyspace), !skip, "{text:?}");
        }
    }
}

/// `node_in_flight_requests_max` bounds the requests in flight over every
/// connection together: four connections each pipeline 100 queries into a
/// node that allows 2 at once (and 1024 per connection); every query is
/// answered, and the node never had more than 2 running.
#[test]
fn the_node_wide_in_flight_cap_holds_across_connections() {
    use concord_server::Db;
    use concord_server::cql::{CqlServer, Limits};
    use std::sync::Arc;

    const NODE_MAX: usize = 2;
    const PER_CONNECTION: i16 = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("data")).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limits = Limits {
        node_in_flight_requests_max: NODE_MAX,
        ..Limits::default()
    };
    let server = runtime
        .block_on(CqlServer::start(db, "127.0.0.1:0".parse().unwrap(), limits))
        .unwrap();
    let address = server.local_address();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let startup = envelope(4, 0, 0, STARTUP, &string_map(&[("CQL_VERSION", "3.0.0")]));
                stream.write_all(&startup).unwrap();
                assert_eq!(read_envelope(&mut stream).2, READY);
                let mut pipeline = Vec::new();
                for stream_id in 1..=PER_CONNECTION {
                    let query = query_body("SELECT key, cluster_name FROM system.local", 4);
                    pipeline.extend_from_slice(&envelope(4, 0, stream_id, QUERY, &query));
                }
                stream.write_all(&pipeline).unwrap();
                let mut answered = std::collections::BTreeSet::new();
                for _ in 1..=PER_CONNECTION {
                    let (_, stream_id, opcode, body) = read_envelope(&mut stream);
                    assert_eq!(opcode, RESULT, "{:?}", String::from_utf8_lossy(&body));
                    answered.insert(stream_id);
                }
                assert_eq!(answered.len(), PER_CONNECTION as usize);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let in_flight = server.in_flight();
    let high_water = in_flight.high_water();
    assert!(
        (1..=NODE_MAX).contains(&high_water),
        "{high_water} requests ran at once; the node allows {NODE_MAX}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight.current() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(in_flight.current(), 0, "every permit is returned");
    server.stop();
}
