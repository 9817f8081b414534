//! Fuzzes the CQL frame decoder: envelope headers, v4 lz4 bodies, v5
//! segments (both framings) and request bodies for every opcode. Nothing
//! may panic; lengths are checked against the limit before allocation.
//!
//! `cassandra-protocol` 4.0.1's request decoder panics on some malformed
//! bodies (found by this target: out-of-range slicing, capacity overflow on
//! negative counts; regression test in `concord-cql-wire`); `decode_request`
//! catches those. The hook below tolerates panics raised while the codec
//! runs and aborts (a finding) on any other.
#![no_main]

use cassandra_protocol::frame::Version;
use concord_cql_wire::codec::decode_request;
use concord_cql_wire::frame::{
    ENVELOPE_HEADER_BYTES, SegmentRead, decompress_v4_lz4, parse_header, read_segment,
};
use libfuzzer_sys::fuzz_target;

const FRAME_BYTES_MAX: usize = 1 << 20;

thread_local! {
    static IN_CODEC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            if !IN_CODEC.with(std::cell::Cell::get) {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    },
    |data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if rest.len() >= ENVELOPE_HEADER_BYTES
                && let Ok(header) = parse_header(rest, FRAME_BYTES_MAX)
            {
                assert!(header.body_bytes <= FRAME_BYTES_MAX);
                let body = &rest[ENVELOPE_HEADER_BYTES..];
                let version = if header.version == 5 { Version::V5 } else { Version::V4 };
                IN_CODEC.with(|flag| flag.set(true));
                let _ = decode_request(body, header.opcode, version);
                IN_CODEC.with(|flag| flag.set(false));
            }
        }
        1 => {
            let _ = decompress_v4_lz4(rest, FRAME_BYTES_MAX);
        }
        2 | 3 => {
            let lz4 = selector % 4 == 3;
            if let Ok(SegmentRead::Segment { consumed, payload }) = read_segment(rest, lz4) {
                assert!(consumed <= rest.len());
                assert!(payload.len() < 1 << 17);
            }
        }
        _ => unreachable!(),
    }
    }
);
