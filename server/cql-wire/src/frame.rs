//! Framing: v4 envelopes, and the v5 segments (checksummed, optionally lz4
//! compressed) that carry envelopes once a v5 connection is established.
//!
//! ```text
//! envelope (v4, and v5 inside segments):
//!   0        1       2..4        4        5..9         9..
//!   version  flags   stream id   opcode   body length  body
//!   (0x04/0x05 request, | 0x80 response)   (i32 BE)
//!
//! v5 segment, uncompressed:          v5 segment, lz4:
//!   3 bytes LE: payload length (17     5 bytes LE: compressed length (17
//!     bits), self-contained (bit 17)     bits), uncompressed length (17
//!   3 bytes: CRC24 of those 3            bits, 0 = stored), self-contained
//!   payload (<= 128 KiB - 1)             (bit 34)
//!   4 bytes LE: CRC32 of payload       3 bytes: CRC24 of those 5
//!                                      payload, 4 bytes LE: CRC32 of it
//! ```
//!
//! Nothing here trusts a length: every length is checked against the
//! configured frame limit before anything is allocated for it.

use cassandra_protocol::crc::{crc24, crc32};

use crate::{WireError, WireResult};

pub const ENVELOPE_HEADER_BYTES: usize = 9;
/// The largest payload one v5 segment carries.
pub const SEGMENT_PAYLOAD_BYTES_MAX: usize = (1 << 17) - 1;

/// A request envelope's header, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub version: u8,
    pub flags: u8,
    pub stream_id: i16,
    pub opcode: u8,
    pub body_bytes: usize,
}

/// The first protocol version byte check: drivers downgrade on the exact
/// substring `unsupported protocol version`.
pub fn check_version(version_byte: u8) -> WireResult<u8> {
    if version_byte & 0x80 != 0 {
        return Err(WireError::Protocol(
            "received a response envelope where a request was expected".into(),
        ));
    }
    let version = version_byte & 0x7f;
    if version == 4 || version == 5 {
        Ok(version)
    } else {
        Err(WireError::Protocol(format!(
            "Invalid or unsupported protocol version ({version}); supported versions are (4/v4, 5/v5)"
        )))
    }
}

/// Parses and validates an envelope header from at least 9 bytes.
pub fn parse_header(bytes: &[u8], frame_bytes_max: usize) -> WireResult<EnvelopeHeader> {
    assert!(bytes.len() >= ENVELOPE_HEADER_BYTES);
    let version = check_version(bytes[0])?;
    let body_length = i32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body_bytes = usize::try_from(body_length)
        .map_err(|_| WireError::Protocol(format!("negative body length {body_length}")))?;
    if body_bytes > frame_bytes_max {
        return Err(WireError::Protocol(format!(
            "frame body of {body_bytes} bytes is over the limit frame_bytes_max = {frame_bytes_max}"
        )));
    }
    Ok(EnvelopeHeader {
        version,
        flags: bytes[1],
        stream_id: i16::from_be_bytes([bytes[2], bytes[3]]),
        opcode: bytes[4],
        body_bytes,
    })
}

/// Decompresses a v4 lz4 envelope body: a 4-byte big-endian uncompressed
/// length, then an lz4 block.
pub fn decompress_v4_lz4(body: &[u8], frame_bytes_max: usize) -> WireResult<Vec<u8>> {
    let Some((length, block)) = body.split_first_chunk::<4>() else {
        return Err(WireError::Protocol(
            "lz4 body shorter than its length prefix".into(),
        ));
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length > frame_bytes_max {
        return Err(WireError::Protocol(format!(
            "lz4 body claims {length} bytes, over frame_bytes_max = {frame_bytes_max}"
        )));
    }
    lz4_flex::block::decompress(block, length)
        .map_err(|error| WireError::Protocol(format!("lz4 body does not decompress: {error}")))
}

/// What a v5 segment decoder found at the front of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentRead {
    NeedMore,
    Segment { consumed: usize, payload: Vec<u8> },
}

/// Reads one v5 segment from the front of `buffer`.
pub fn read_segment(buffer: &[u8], lz4: bool) -> WireResult<SegmentRead> {
    let header_bytes = if lz4 { 8 } else { 6 };
    if buffer.len() < header_bytes {
        return Ok(SegmentRead::NeedMore);
    }
    let header_data_bytes = header_bytes - 3;
    let mut header = 0u64;
    for (idx, byte) in buffer[..header_data_bytes].iter().enumerate() {
        header |= u64::from(*byte) << (8 * idx);
    }
    let crc_stored = u32::from(buffer[header_data_bytes])
        | u32::from(buffer[header_data_bytes + 1]) << 8
        | u32::from(buffer[header_data_bytes + 2]) << 16;
    let crc_computed = crc24(&buffer[..header_data_bytes]) as u32 & 0x00ff_ffff;
    if crc_stored != crc_computed {
        return Err(WireError::Protocol(format!(
            "segment header CRC24 mismatch: stored {crc_stored:06x}, computed {crc_computed:06x}"
        )));
    }
    let payload_bytes = (header & 0x1ffff) as usize;
    let uncompressed_bytes = if lz4 {
        ((header >> 17) & 0x1ffff) as usize
    } else {
        0
    };
    let end = header_bytes + payload_bytes + 4;
    if buffer.len() < end {
        return Ok(SegmentRead::NeedMore);
    }
    let payload = &buffer[header_bytes..header_bytes + payload_bytes];
    let trailer = &buffer[header_bytes + payload_bytes..end];
    let crc_stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let crc_computed = crc32(payload);
    if crc_stored != crc_computed {
        return Err(WireError::Protocol(format!(
            "segment payload CRC32 mismatch: stored {crc_stored:08x}, computed {crc_computed:08x}"
        )));
    }
    let payload = if lz4 && uncompressed_bytes > 0 {
        lz4_flex::block::decompress(payload, uncompressed_bytes).map_err(|error| {
            WireError::Protocol(format!("segment payload does not decompress: {error}"))
        })?
    } else {
        payload.to_vec()
    };
    Ok(SegmentRead::Segment {
        consumed: end,
        payload,
    })
}

/// Wraps one encoded envelope in v5 segments (several when it is larger
/// than a segment, then marked not self-contained).
pub fn write_segments(envelope: &[u8], lz4: bool, out: &mut Vec<u8>) {
    let self_contained = envelope.len() <= SEGMENT_PAYLOAD_BYTES_MAX;
    for chunk in envelope.chunks(SEGMENT_PAYLOAD_BYTES_MAX) {
        let (payload, uncompressed_bytes) = if lz4 {
            let compressed = lz4_flex::block::compress(chunk);
            if compressed.len() < chunk.len() {
                (compressed, chunk.len())
            } else {
                (chunk.to_vec(), 0)
            }
        } else {
            (chunk.to_vec(), 0)
        };
        let mut header = payload.len() as u64;
        let header_data_bytes = if lz4 {
            header |= (uncompressed_bytes as u64) << 17;
            if self_contained {
                header |= 1 << 34;
            }
            5
        } else {
            if self_contained {
                header |= 1 << 17;
            }
            3
        };
        let header_bytes = &header.to_le_bytes()[..header_data_bytes];
        out.extend_from_slice(header_bytes);
        let crc = crc24(header_bytes) as u32;
        out.extend_from_slice(&crc.to_le_bytes()[..3]);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&crc32(&payload).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_reject_corruption() {
        for lz4 in [false, true] {
            for length in [
                0,
                10,
                SEGMENT_PAYLOAD_BYTES_MAX,
                SEGMENT_PAYLOAD_BYTES_MAX * 2 + 7,
            ] {
                let envelope: Vec<u8> = (0..length).map(|idx| (idx % 7) as u8).collect();
                let mut wire = Vec::new();
                write_segments(&envelope, lz4, &mut wire);
                let mut position = 0;
                let mut decoded = Vec::new();
                while position < wire.len() {
                    match read_segment(&wire[position..], lz4).unwrap() {
                        SegmentRead::Segment { consumed, payload } => {
                            position += consumed;
                            decoded.extend(payload);
                        }
                        SegmentRead::NeedMore => panic!("truncated"),
                    }
                }
                assert_eq!(decoded, envelope);
                if !wire.is_empty() {
                    if length <= SEGMENT_PAYLOAD_BYTES_MAX {
                        let truncated = read_segment(&wire[..wire.len() - 1], lz4).unwrap();
                        assert_eq!(truncated, SegmentRead::NeedMore);
                    }
                    let mut corrupt = wire.clone();
                    let last = corrupt.len() - 1;
                    corrupt[last] ^= 1;
                    assert!(
                        read_segment(&corrupt, lz4).is_err() || length > SEGMENT_PAYLOAD_BYTES_MAX
                    );
                    corrupt[0] ^= 1;
                    assert!(read_segment(&corrupt, lz4).is_err());
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Stands in for a fuzzer in CI: arbitrary bytes never panic the
        /// segment reader or the header parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for lz4 in [false, true] {
                let _ = read_segment(&bytes, lz4);
            }
            if bytes.len() >= ENVELOPE_HEADER_BYTES {
                let _ = parse_header(&bytes, 1 << 20);
            }
            let _ = decompress_v4_lz4(&bytes, 1 << 20);
        }
    }

    #[test]
    fn headers_are_validated_before_allocation() {
        let header = [4, 0, 0, 1, 7, 0x7f, 0xff, 0xff, 0xff];
        let error = parse_header(&header, 1024).unwrap_err().to_string();
        assert!(error.contains("frame_bytes_max"), "{error}");
        let header = [4, 0, 0, 1, 7, 0xff, 0xff, 0xff, 0xff];
        assert!(parse_header(&header, 1024).is_err());
        let error = check_version(0x42).unwrap_err().to_string();
        assert!(error.contains("unsupported protocol version"), "{error}");
        assert_eq!(check_version(5).ok(), Some(5));
    }
}
