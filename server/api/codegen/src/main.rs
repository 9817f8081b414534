//! Regenerates the checked-in gRPC code of the workspace from its `.proto`
//! files: `server/api/src/v1.rs` (package `concord.v1`, the client API) and
//! `server/cluster/src/transport/peer_v1.rs` (package `concord.cluster.v1`,
//! the node-to-node transport). `protox` compiles each .proto (no `protoc`),
//! `tonic-prost-build` generates the prost messages and tonic stubs. Each
//! header records its .proto's FNV-1a hash, which `concord-api`'s
//! `tests/generated.rs` checks for every file, so an edited .proto without
//! regenerated code fails the tests. The output is formatted with rustfmt, so an unchanged .proto
//! regenerates the same bytes.

use std::path::Path;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One generated file: the crate directory (relative to `server/`), the
/// .proto under its `proto/` directory, the package, the output under the
/// crate directory.
struct Job {
    krate: &'static str,
    proto: &'static str,
    package: &'static str,
    output: &'static str,
}

const JOBS: [Job; 2] = [
    Job {
        krate: "api",
        proto: "concord/v1/concord.proto",
        package: "concord.v1",
        output: "src/v1.rs",
    },
    Job {
        krate: "cluster",
        proto: "concord/cluster/v1/peer.proto",
        package: "concord.cluster.v1",
        output: "src/transport/peer_v1.rs",
    },
];

fn generate(server: &Path, job: &Job) -> Result<(), Box<dyn std::error::Error>> {
    let root = server.join(job.krate);
    let proto = root.join("proto").join(job.proto);
    let out = std::env::temp_dir().join(format!(
        "concord-codegen-{}-{}",
        job.krate,
        std::process::id()
    ));
    std::fs::create_dir_all(&out)?;
    let descriptors = protox::compile([&proto], [root.join("proto")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(descriptors)?;
    let generated = std::fs::read_to_string(out.join(format!("{}.rs", job.package)))?;
    std::fs::remove_dir_all(&out)?;
    let hash = fnv1a(&std::fs::read(&proto)?);
    let header = format!(
        "//! Generated from `proto/{}` by `tonic-prost-build`\n\
         //! (through `protox`); do not edit: `cargo run --manifest-path\n\
         //! server/api/codegen/Cargo.toml` rewrites it.\n\
         //! proto-fnv1a: {hash:016x}\n\n",
        job.proto
    );
    let target = root.join(job.output);
    std::fs::write(&target, format!("{header}{generated}"))?;
    // The checked-in files are rustfmt's layout (the workspace's `cargo fmt
    // --check` covers them), so regenerating an unchanged .proto changes
    // nothing.
    let status = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(&target)
        .status()?;
    if !status.success() {
        return Err(format!("rustfmt {} failed: {status}", target.display()).into());
    }
    println!(
        "wrote server/{}/{} (proto-fnv1a {hash:016x})",
        job.krate, job.output
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for job in &JOBS {
        generate(&server, job)?;
    }
    Ok(())
}
