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

#[cfg(test)]
mod tests {
    use super::*;

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
