//! Machine-enforced house rules over the whole workspace: dependencies point
//! down the layers, every Rust file opens with `//!`, every `lib.rs` says
//! what its crate must never do, and no debugging leftovers land on main.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// Each workspace crate's layer: a crate may depend only on crates in a
/// strictly lower layer.
fn layers() -> BTreeMap<&'static str, u32> {
    BTreeMap::from([
        ("concord-storage", 0),
        ("concord-checker", 0),
        ("concord-cql-parser", 0),
        ("concord-cql-wire", 0),
        ("concord-api", 0),
        ("concord-client", 1),
        ("concord-storage-rocksdb", 1),
        ("concord-txn", 1),
        ("concord-columnar", 1),
        ("concord-cluster", 2),
        ("concord-server", 3),
        ("concord-jepsen", 4),
        ("concord-benches", 4),
    ])
}

/// Crates that must not pull in RocksDB (or anything that links it).
const ROCKSDB_FREE: [&str; 7] = [
    "concord-cluster",
    "concord-cql-parser",
    "concord-cql-wire",
    "concord-storage",
    "concord-txn",
    "concord-columnar",
    "concord-checker",
];

/// Client-side crates (the gRPC API and the SDK, which `jepsen/` and
/// applications link): they must not depend on the engine, RocksDB or
/// DataFusion, in any section but dev-dependencies.
const CLIENT_SIDE: [&str; 2] = ["concord-api", "concord-client"];
const ENGINE_CRATES: [&str; 9] = [
    "concord-storage",
    "concord-storage-rocksdb",
    "concord-txn",
    "concord-columnar",
    "concord-server",
    "rocksdb",
    "librocksdb-sys",
    "datafusion",
    "parquet",
];

fn manifests() -> Vec<(String, toml::Table)> {
    let root = workspace_root();
    let workspace: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    members
        .iter()
        .map(|member| {
            let path = root.join(member.as_str().unwrap()).join("Cargo.toml");
            let manifest: toml::Table =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = manifest["package"]["name"].as_str().unwrap().to_owned();
            (name, manifest)
        })
        .collect()
}

fn dependency_names(manifest: &toml::Table, section: &str) -> Vec<String> {
    manifest
        .get(section)
        .and_then(|deps| deps.as_table())
        .map_or_else(Vec::new, |deps| deps.keys().cloned().collect())
}

#[test]
fn dependencies_point_down_the_layers() {
    let layers = layers();
    let mut violations = Vec::new();
    let manifests = manifests();
    assert_eq!(
        manifests.len(),
        layers.len(),
        "every workspace crate needs a layer in tidy.rs"
    );
    for (name, manifest) in &manifests {
        let own_layer = *layers
            .get(name.as_str())
            .unwrap_or_else(|| panic!("crate {name} has no layer"));
        for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
            for dependency in dependency_names(manifest, section) {
                if let Some(&dependency_layer) = layers.get(dependency.as_str()) {
                    let allowed = dependency_layer < own_layer
                        || (section == "dev-dependencies" && dependency == *name);
                    if !allowed {
                        violations.push(format!("{name} (layer {own_layer}) depends on {dependency} (layer {dependency_layer}) in [{section}]"));
                    }
                }
                let links_rocksdb =
                    dependency == "rocksdb" || dependency == "concord-storage-rocksdb";
                if section != "dev-dependencies"
                    && CLIENT_SIDE.contains(&name.as_str())
                    && ENGINE_CRATES.contains(&dependency.as_str())
                {
                    violations.push(format!(
                        "{name} is client-side and must not depend on {dependency} in [{section}]"
                    ));
                }
                if section == "dependencies"
                    && links_rocksdb
                    && ROCKSDB_FREE.contains(&name.as_str())
                {
                    violations.push(format!("{name} must not depend on {dependency}"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_comment_and_has_no_leftovers() {
    let root = workspace_root();
    let mut files = Vec::new();
    for top in ["storage", "txn", "columnar", "server", "jepsen", "benches"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(files.len() > 10, "tidy found only {} files", files.len());
    let mut problems = Vec::new();
    // Built from pieces so this file does not trip its own check.
    let banned = [
        ["dbg", "!("].concat(),
        ["FIX", "ME"].concat(),
        ["#[ig", "nore"].concat(),
        ["#[should", "_panic"].concat(),
    ];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let relative = file.strip_prefix(&root).unwrap().display().to_string();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{relative}: does not open with a //! comment"));
        }
        for needle in &banned {
            if text.contains(needle.as_str()) {
                problems.push(format!("{relative}: contains {needle}"));
            }
        }
        if file.ends_with("lib.rs") && !text.to_lowercase().contains("must never") {
            problems.push(format!(
                "{relative}: lib.rs does not say what the crate must never do"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "tidy problems:\n{}",
        problems.join("\n")
    );
}
