//! The checked-in generated code (`src/v1.rs`) was made from the .proto as
//! it is now: its header records the .proto's FNV-1a hash (written by
//! `server/api/codegen`), so editing the .proto without regenerating fails
//! here. Regenerate with `cargo run --manifest-path server/api/codegen/Cargo.toml`.

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

#[test]
fn generated_code_is_from_the_current_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = std::fs::read(root.join("proto/concord/v1/concord.proto")).unwrap();
    let generated = std::fs::read_to_string(root.join("src/v1.rs")).unwrap();
    let expected = format!("//! proto-fnv1a: {:016x}\n", fnv1a(&proto));
    assert!(
        generated.contains(&expected),
        "src/v1.rs is stale (no {expected:?}): run cargo run --manifest-path server/api/codegen/Cargo.toml"
    );
    assert!(generated.contains("pub struct ConcordClient"));
    assert!(generated.contains("pub trait Concord"));
}
