//! A `concord start` process on a free port for the CQL tests, and the
//! repository's Python client venv (installed by `.ci/test`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");

/// A running node; killed (SIGTERM, then waited for) on drop.
pub struct Node {
    child: Child,
    pub address: SocketAddr,
    /// The Postgres wire endpoint.
    pub pg_address: SocketAddr,
    /// The Arrow Flight SQL endpoint.
    pub flight_address: SocketAddr,
    /// The gRPC endpoint (Concord API, Flight SQL).
    pub grpc_address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with extra TOML configuration lines.
    pub fn start(extra_config: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("concord.toml");
        std::fs::write(
            &config,
            format!(
                "cql_listen_address = \"127.0.0.1:0\"\npg_listen_address = \"127.0.0.1:0\"\ngrpc_listen_address = \"127.0.0.1:0\"\n{extra_config}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .args(["start", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut address = None;
        let mut pg_address = None;
        let mut flight_address = None;
        let mut grpc_address = None;
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("cql: listening on ") {
                address = Some(rest.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("flight sql: listening on ") {
                flight_address = Some(rest.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("postgres: listening on ") {
                pg_address = Some(rest.parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("grpc: listening on ") {
                grpc_address = Some(rest.parse().unwrap());
            }
            seen.push(line.clone());
            if line == "ready" || Instant::now() > deadline {
                break;
            }
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let address = address.unwrap_or_else(|| panic!("no cql address in {seen:?}"));
        let pg_address = pg_address.unwrap_or_else(|| panic!("no postgres address in {seen:?}"));
        let flight_address =
            flight_address.unwrap_or_else(|| panic!("no flight sql address in {seen:?}"));
        let grpc_address = grpc_address.unwrap_or_else(|| panic!("no grpc address in {seen:?}"));
        Node {
            child,
            pg_address,
            flight_address,
            address,
            grpc_address,
            _dir: dir,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// The venv's bin directory; fails the test (never skips it) when the
/// clients are not installed.
pub fn venv_bin() -> PathBuf {
    let bin = repository_root().join(".venv-cql").join("bin");
    assert!(
        bin.join("python").exists() && bin.join("cqlsh").exists(),
        "the CQL client tests need cqlsh and the Python cassandra-driver in {}: run .ci/test, \
         which installs them (python3 -m venv .venv-cql && .venv-cql/bin/pip install \
         cqlsh==6.2.2 cassandra-driver==3.30.1)",
        bin.display()
    );
    bin
}
