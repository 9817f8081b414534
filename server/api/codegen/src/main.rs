//! Regenerates `server/api/src/v1.rs` from `proto/concord/v1/concord.proto`:
//! `protox` compiles the .proto (no `protoc`), `tonic-prost-build` generates
//! the prost messages and tonic stubs. The header records the .proto's
//! FNV-1a hash, which `concord-api`'s `tests/generated.rs` checks, so an
//! edited .proto without regenerated code fails the tests.

use std::path::Path;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto = api.join("proto/concord/v1/concord.proto");
    let out = std::env::temp_dir().join(format!("concord-api-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let descriptors = protox::compile([&proto], [api.join("proto")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(descriptors)?;
    let generated = std::fs::read_to_string(out.join("concord.v1.rs"))?;
    std::fs::remove_dir_all(&out)?;
    let hash = fnv1a(&std::fs::read(&proto)?);
    let header = format!(
        "//! Generated from `proto/concord/v1/concord.proto` by `tonic-prost-build`\n\
         //! (through `protox`); do not edit: `cargo run --manifest-path\n\
         //! server/api/codegen/Cargo.toml` rewrites it.\n\
         //! proto-fnv1a: {hash:016x}\n\n"
    );
    std::fs::write(api.join("src/v1.rs"), format!("{header}{generated}"))?;
    println!("wrote src/v1.rs (proto-fnv1a {hash:016x})");
    Ok(())
}
