//! The `concord` binary as a user runs it: `--version`, `start` on a data
//! directory, a clean stop on SIGTERM, and a bad configuration refused.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_concord");

/// `concord start`'s client endpoints on ephemeral ports.
pub(crate) const EPHEMERAL_ENDPOINTS: [&str; 6] = [
    "--cql-listen-address",
    "127.0.0.1:0",
    "--pg-listen-address",
    "127.0.0.1:0",
    "--grpc-listen-address",
    "127.0.0.1:0",
];

/// Reads a started node's stdout up to its `ready` line, within 60 s, and
/// asserts it came: the rest of stdout, and every line read so far.
pub(crate) fn wait_ready(child: &mut Child) -> (Lines<BufReader<ChildStdout>>, Vec<String>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "ready" || Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("ready"),
        "output: {seen:?}"
    );
    (lines, seen)
}

#[test]
fn version_prints_the_crate_version() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("concord {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn start_serves_until_sigterm_then_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut child = Command::new(BINARY)
        .arg("start")
        .args(EPHEMERAL_ENDPOINTS)
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, seen) = wait_ready(&mut child);
    assert!(
        seen.iter()
            .any(|line| line.starts_with("data dir: ") && line.ends_with("data")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|line| line.starts_with("grpc: listening on 127.0.0.1:")),
        "{seen:?}"
    );
    assert!(data_dir.join("rocksdb").is_dir());
    assert!(
        seen.iter()
            .any(|line| line.starts_with("postgres: listening on 127.0.0.1:")),
        "{seen:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|line| line.unwrap()).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
}

#[test]
fn an_unknown_config_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("concord.toml");
    std::fs::write(&config, "data_dirr = \"x\"\n").unwrap();
    let output = Command::new(BINARY)
        .args(["start", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unknown field `data_dirr`"), "{stderr}");
}
