//! Request bodies in, response bodies out, over the `cassandra-protocol`
//! codec. The codec only serializes response bodies (its `ResponseBody`
//! serialization is test-only), and its decoder is third-party code: a
//! panic in it is caught and becomes a protocol error.

use cassandra_protocol::compression::Compression;
use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_response::ResponseBody;
use cassandra_protocol::frame::{Direction, Envelope, Flags, Opcode, Serialize, Version};

use crate::{WireError, WireResult};

/// The opcode of a response body.
pub fn opcode_of(response: &ResponseBody) -> Opcode {
    match response {
        ResponseBody::Error(_) => Opcode::Error,
        ResponseBody::Ready => Opcode::Ready,
        ResponseBody::Authenticate(_) => Opcode::Authenticate,
        ResponseBody::Supported(_) => Opcode::Supported,
        ResponseBody::Result(_) => Opcode::Result,
        ResponseBody::Event(_) => Opcode::Event,
        ResponseBody::AuthChallenge(_) => Opcode::AuthChallenge,
        _ => Opcode::AuthSuccess,
    }
}

/// Serializes a response body (the codec crate only serializes the bodies
/// themselves outside its tests).
///
/// # Errors
/// `Encode` for a response kind the node never sends.
pub fn serialize_response(response: &ResponseBody, version: Version) -> WireResult<Vec<u8>> {
    let mut body = Vec::new();
    let mut cursor = std::io::Cursor::new(&mut body);
    match response {
        ResponseBody::Error(error) => error.serialize(&mut cursor, version),
        ResponseBody::Ready => {}
        ResponseBody::Supported(supported) => supported.serialize(&mut cursor, version),
        ResponseBody::Result(result) => result.serialize(&mut cursor, version),
        ResponseBody::Event(event) => event.serialize(&mut cursor, version),
        ResponseBody::AuthSuccess(success) => success.serialize(&mut cursor, version),
        _ => return Err(WireError::Encode("response kind not served".into())),
    }
    Ok(body)
}

/// Encodes a response envelope.
///
/// # Errors
/// `Encode` when the body cannot be written.
pub fn encode(
    version: Version,
    stream_id: i16,
    response: &ResponseBody,
    compression: Compression,
) -> WireResult<Vec<u8>> {
    let body = serialize_response(response, version)?;
    let envelope = Envelope::new(
        version,
        Direction::Response,
        Flags::empty(),
        opcode_of(response),
        stream_id,
        body,
        None,
        Vec::new(),
    );
    envelope
        .encode_with(compression)
        .map_err(|error| WireError::Encode(format!("encode response: {error}")))
}

/// Decodes a request body; the decoder is a third-party crate, so a panic
/// inside it is caught and reported as a protocol error rather than trusted
/// never to happen.
///
/// # Errors
/// `Protocol` for an unknown or response opcode, or a body that does
/// not decode.
pub fn decode_request(body: &[u8], opcode: u8, version: Version) -> WireResult<RequestBody> {
    let opcode = Opcode::try_from(opcode)
        .map_err(|_| WireError::Protocol(format!("unknown opcode 0x{opcode:02x}")))?;
    if matches!(
        opcode,
        Opcode::Error
            | Opcode::Ready
            | Opcode::Authenticate
            | Opcode::Supported
            | Opcode::Result
            | Opcode::Event
            | Opcode::AuthChallenge
            | Opcode::AuthSuccess
    ) {
        return Err(WireError::Protocol(format!(
            "opcode {opcode} is a response, not a request"
        )));
    }
    let decoded = std::panic::catch_unwind(|| {
        RequestBody::try_from(body, opcode, version).map_err(|error| error.to_string())
    });
    match decoded {
        Ok(Ok(request)) => Ok(request),
        Ok(Err(error)) => Err(WireError::Protocol(format!(
            "{opcode} body does not decode: {error}"
        ))),
        Err(_) => Err(WireError::Protocol(format!(
            "{opcode} body does not decode"
        ))),
    }
}

/// The EXECUTE opcode.
pub const OPCODE_EXECUTE: u8 = 0x0A;
/// The query-parameters flag by which EXECUTE asks for rows without their
/// metadata (the client has it from PREPARE).
pub const QUERY_FLAG_SKIP_METADATA: u32 = 0x02;

/// The prepared-statement id at the front of an EXECUTE body
/// (`<id: [short bytes]>`), or `None` when the body is too short.
pub fn execute_id(body: &[u8]) -> Option<&[u8]> {
    let length = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2..2 + length)
}

/// Whether an EXECUTE body sets `skip_metadata`. `cassandra-protocol`
/// decodes the flags but drops this one, so it is read from the bytes:
/// `<id: [short bytes]>` (v5: then `<result_metadata_id: [short bytes]>`),
/// `<consistency: [short]>`, then the flags (v4: a byte; v5: an int).
/// A body too short to hold them says no (its decoding fails anyway).
pub fn execute_skips_metadata(body: &[u8], version: Version) -> bool {
    fn short_bytes(body: &[u8], at: usize) -> Option<usize> {
        let length = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        Some(at + 2 + usize::from(length))
    }
    let flags = || -> Option<u32> {
        let mut at = short_bytes(body, 0)?;
        if version >= Version::V5 {
            at = short_bytes(body, at)?;
        }
        at += 2;
        if version >= Version::V5 {
            let bytes = body.get(at..at + 4)?;
            Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        } else {
            body.get(at).map(|&flags| u32::from(flags))
        }
    };
    flags().is_some_and(|flags| flags & QUERY_FLAG_SKIP_METADATA != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_metadata_is_read_from_execute_bodies() {
        // id 0xAB01, consistency ONE, flags.
        let v4 = |flags: u8| vec![0, 2, 0xAB, 0x01, 0, 1, flags];
        assert!(execute_skips_metadata(&v4(0x02), Version::V4));
        assert!(execute_skips_metadata(&v4(0x03), Version::V4));
        assert!(!execute_skips_metadata(&v4(0x01), Version::V4));
        // v5: a result metadata id, then an int of flags.
        let v5 = |flags: u32| {
            let mut body = vec![0, 1, 0xAB, 0, 2, 0xCD, 0xEF, 0, 1];
            body.extend_from_slice(&flags.to_be_bytes());
            body
        };
        assert!(execute_skips_metadata(&v5(0x02), Version::V5));
        assert!(!execute_skips_metadata(&v5(0x100), Version::V5));
        // Truncated or lying lengths are a no, never a panic.
        assert!(!execute_skips_metadata(&[0, 9, 1], Version::V4));
        assert!(!execute_skips_metadata(&[], Version::V5));
        assert!(!execute_skips_metadata(&[0xFF, 0xFF], Version::V4));
        assert_eq!(execute_id(&v4(0)), Some(&[0xAB, 0x01][..]));
        assert_eq!(execute_id(&[0, 3, 1]), None);
        assert_eq!(execute_id(&[0]), None);
    }

    /// Inputs on which `cassandra-protocol` 4.0.1's decoder panics (found
    /// by the `cql_frames` fuzz target): the catch turns them into protocol
    /// errors. Envelopes (header and a truncated body): STARTUP, QUERY,
    /// STARTUP.
    #[test]
    fn decoder_panics_found_by_fuzzing_become_protocol_errors() {
        let crashes = [
            "040035f1010001ce1f62003f000000010000",
            "047e000107000000004777f1000041f1ce0000",
            // A STARTUP whose string map claims -1 entries.
            "040035f10100010001ffffffffffff0fff0c000400",
        ];
        for hex in crashes {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|idx| u8::from_str_radix(&hex[idx..idx + 2], 16).expect("hex"))
                .collect();
            let header = crate::frame::parse_header(&bytes, 1 << 20).expect("header parses");
            let body = &bytes[crate::frame::ENVELOPE_HEADER_BYTES..];
            let result = decode_request(body, header.opcode, Version::V4);
            assert!(matches!(result, Err(WireError::Protocol(_))), "{result:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Arbitrary request bodies for every opcode decode or fail; they
        /// never take the connection task down.
        #[test]
        fn arbitrary_bodies_never_panic(
            opcode in 0u8..0x12,
            v5 in proptest::prelude::any::<bool>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let version = if v5 { Version::V5 } else { Version::V4 };
            let _ = decode_request(&body, opcode, version);
        }
    }
}
