//! The checked-in generated code (`src/v1.rs`, and the cluster transport's
//! `server/cluster/src/transport/peer_v1.rs`, both written by
//! `server/api/codegen`) was made from the .protos as they are now: each
//! header records its .proto's FNV-1a hash, so editing a .proto without
//! regenerating fails here. Regenerate with `cargo run --manifest-path server/api/codegen/Cargo.toml`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Every file `server/api/codegen` writes: (crate directory under
/// `server/`, .proto under its `proto/`, output, two names it must define).
const GENERATED: [(&str, &str, &str, [&str; 2]); 2] = [
    (
        "api",
        "concord/v1/concord.proto",
        "src/v1.rs",
        ["pub struct ConcordClient", "pub trait Concord"],
    ),
    (
        "cluster",
        "concord/cluster/v1/peer.proto",
        "src/transport/peer_v1.rs",
        ["pub struct PeerClient", "pub trait Peer"],
    ),
];

#[test]
fn generated_code_is_from_the_current_proto() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (krate, proto, output, names) in GENERATED {
        let root = server.join(krate);
        let proto = std::fs::read(root.join("proto").join(proto)).unwrap();
        let generated = std::fs::read_to_string(root.join(output)).unwrap();
        let expected = format!("//! proto-fnv1a: {:016x}\n", fnv1a(&proto));
        assert!(
            generated.contains(&expected),
            "server/{krate}/{output} is stale (no {expected:?}): run cargo run --manifest-path server/api/codegen/Cargo.toml"
        );
        for name in names {
            assert!(
                generated.contains(name),
                "server/{krate}/{output} lacks {name}"
            );
        }
    }
}
