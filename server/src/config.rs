//! Node configuration: defaults, an optional TOML file, then command-line
//! flags, each overriding the one before.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// The data directory used when none is configured.
pub const DATA_DIR_DEFAULT: &str = "concord-data";
/// Where the CQL endpoint listens when not configured (Cassandra's port).
pub const CQL_LISTEN_ADDRESS_DEFAULT: &str = "127.0.0.1:9042";
/// Where the gRPC endpoint (Concord API, Flight SQL) listens when not configured.
pub const GRPC_LISTEN_ADDRESS_DEFAULT: &str = crate::grpc::GRPC_LISTEN_ADDRESS_DEFAULT;

/// How writes reach disk before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitSync {
    /// fsync (with group commit) before acknowledging: no acknowledged write
    /// is lost by a crash. The default.
    Batch,
    /// Acknowledge from the OS buffer; the log is synced every
    /// `periodic_sync_ms`. A machine crash may lose that window of
    /// acknowledged writes (Cassandra's `commitlog_sync: periodic`).
    Periodic,
}

/// How `Db::execute` orders transactions (design/cluster.md, "Transaction modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TxnMode {
    /// A local sequencer assigns the timestamp and the transaction executes
    /// in the calling thread (one node only). The default.
    #[default]
    Direct,
    /// Every transaction goes through the Accord protocol core, driven by a
    /// one-node runtime: the same code path as a cluster node.
    Accord,
}

/// Where accord mode's journal lives (design/cluster.md, "Journal").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TxnJournal {
    /// Command records in the storage engine (RocksDB's WAL syncs them).
    #[default]
    Engine,
    /// Command records in the dedicated segmented log under `<data_dir>/journal`; the
    /// apply's rows still go to the engine.
    Log,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub commit_sync: CommitSync,
    pub periodic_sync_ms: u64,
    /// `direct` or `accord`: how transactions are ordered. Unset: `direct`
    /// on a node alone, `accord` in a cluster (`cluster_listen_address`
    /// set), where `direct` is refused. See [`Config::effective_txn_mode`].
    pub txn_mode: Option<TxnMode>,
    /// `engine` or `log`: where accord mode journals its commands.
    pub txn_journal: TxnJournal,
    /// A `tracing` filter, e.g. `info` or `concord_server=debug,info`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// `host:port` of the CQL native protocol endpoint (port 0: any free).
    pub cql_listen_address: String,
    /// The largest CQL frame accepted, in bytes.
    pub cql_frame_bytes_max: usize,
    /// The most concurrent CQL connections.
    pub cql_connections_max: usize,
    /// The most requests one CQL connection may have in flight; past it the
    /// node stops reading from that connection (backpressure).
    pub cql_in_flight_requests_max: usize,
    /// The most requests the node has in flight over all CQL connections;
    /// past it every connection stops reading (backpressure).
    pub cql_node_in_flight_requests_max: usize,
    /// `host:port` of the Postgres wire endpoint (port 0: any free).
    pub pg_listen_address: String,
    /// The most concurrent Postgres connections; more are refused with
    /// SQLSTATE 53300.
    pub pg_connections_max: usize,
    /// The longest SQL text a Postgres client may send, in bytes.
    pub pg_query_bytes_max: usize,
    /// `host:port` of the gRPC endpoint: the Concord API and Arrow Flight SQL
    /// on one port (port 0: any free). `flight_listen_address` is the same key.
    #[serde(alias = "flight_listen_address")]
    pub grpc_listen_address: String,
    /// The largest gRPC request or response message, in bytes.
    pub grpc_message_bytes_max: usize,
    /// The most concurrent calls (HTTP/2 streams) per gRPC connection.
    pub grpc_concurrent_streams_max: usize,
    /// Change-stream messages buffered per subscription before the node waits
    /// for the client.
    pub grpc_change_stream_buffer: usize,
    /// This node's id in its cluster (at least 1; unique per cluster).
    pub node_id: u32,
    /// `host:port` of the cluster metadata service (Raft, design/cluster.md).
    /// Unset: the node runs alone, without it.
    pub cluster_listen_address: Option<String>,
    /// `host:port` of the metadata service of any member of the cluster to
    /// join. Unset (with `cluster_listen_address` set): the node starts a new
    /// cluster, or resumes the one its data directory holds.
    pub join: Option<String>,
    /// Fault injection only (the Jepsen clock nemesis): shifts this node's wall clock by this
    /// many milliseconds, at most [`TEST_CLOCK_OFFSET_MS_MAX`] either way. 0 in production.
    /// Write times stay ordered across such a step (the sequencer's persisted ceiling).
    pub test_clock_offset_ms: i64,
}

/// The largest `test_clock_offset_ms`, either way: one day.
pub const TEST_CLOCK_OFFSET_MS_MAX: i64 = 86_400_000;

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            commit_sync: CommitSync::Batch,
            periodic_sync_ms: 100,
            txn_mode: None,
            txn_journal: TxnJournal::default(),
            log_filter: "info".to_owned(),
            log_format: LogFormat::Text,
            cql_listen_address: CQL_LISTEN_ADDRESS_DEFAULT.to_owned(),
            cql_frame_bytes_max: crate::cql::FRAME_BYTES_MAX_DEFAULT,
            cql_connections_max: crate::cql::CONNECTIONS_MAX_DEFAULT,
            cql_in_flight_requests_max: crate::cql::IN_FLIGHT_REQUESTS_MAX_DEFAULT,
            cql_node_in_flight_requests_max: crate::cql::NODE_IN_FLIGHT_REQUESTS_MAX_DEFAULT,
            pg_listen_address: crate::pgwire::LISTEN_ADDRESS_DEFAULT.to_owned(),
            pg_connections_max: crate::pgwire::CONNECTIONS_MAX_DEFAULT,
            pg_query_bytes_max: crate::pgwire::QUERY_BYTES_MAX_DEFAULT,
            grpc_listen_address: GRPC_LISTEN_ADDRESS_DEFAULT.to_owned(),
            grpc_message_bytes_max: crate::grpc::MESSAGE_BYTES_MAX_DEFAULT,
            grpc_concurrent_streams_max: crate::grpc::CONCURRENT_STREAMS_MAX_DEFAULT,
            grpc_change_stream_buffer: crate::grpc::CHANGE_STREAM_BUFFER_DEFAULT,
            node_id: 1,
            cluster_listen_address: None,
            join: None,
            test_clock_offset_ms: 0,
        }
    }
}

impl Config {
    /// Reads a TOML configuration file; missing keys keep their defaults.
    ///
    /// # Errors
    /// `Io` when unreadable, `Config` when it does not parse or names an
    /// unknown key.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("read config file {}", path.display()),
            source,
        })?;
        Config::from_toml(&text)
            .map_err(|error| Error::Config(format!("{}: {error}", path.display())))
    }

    /// Parses a TOML configuration.
    ///
    /// # Errors
    /// `Config` with the parser's message.
    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config =
            toml::from_str(text).map_err(|error| Error::Config(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    ///
    /// The mode transactions run in: `txn_mode` when set, else `accord` in a
    /// cluster and `direct` alone.
    pub fn effective_txn_mode(&self) -> TxnMode {
        match (self.txn_mode, &self.cluster_listen_address) {
            (Some(mode), _) => mode,
            (None, Some(_)) => TxnMode::Accord,
            (None, None) => TxnMode::Direct,
        }
    }

    /// # Errors
    /// `Config` naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.test_clock_offset_ms.abs() > TEST_CLOCK_OFFSET_MS_MAX {
            return Err(Error::Config(format!(
                "test_clock_offset_ms {} is beyond ±{TEST_CLOCK_OFFSET_MS_MAX} (one day)",
                self.test_clock_offset_ms
            )));
        }
        if self.commit_sync == CommitSync::Periodic && self.periodic_sync_ms == 0 {
            return Err(Error::Config("periodic_sync_ms must be at least 1".into()));
        }
        if self
            .cql_listen_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(Error::Config(format!(
                "cql_listen_address {:?} is not host:port (e.g. 127.0.0.1:9042)",
                self.cql_listen_address
            )));
        }
        if self
            .pg_listen_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(Error::Config(format!(
                "pg_listen_address {:?} is not host:port (e.g. 127.0.0.1:5433)",
                self.pg_listen_address
            )));
        }
        if self.pg_connections_max == 0 || self.pg_query_bytes_max == 0 {
            return Err(Error::Config(
                "pg_connections_max and pg_query_bytes_max must be at least 1".into(),
            ));
        }
        if self.cql_frame_bytes_max == 0
            || self.cql_connections_max == 0
            || self.cql_in_flight_requests_max == 0
            || self.cql_node_in_flight_requests_max == 0
        {
            return Err(Error::Config(
                "cql_frame_bytes_max, cql_connections_max, cql_in_flight_requests_max and cql_node_in_flight_requests_max must be at least 1".into(),
            ));
        }
        if self
            .grpc_listen_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(Error::Config(format!(
                "grpc_listen_address {:?} is not host:port (e.g. 127.0.0.1:50051)",
                self.grpc_listen_address
            )));
        }
        if self.grpc_message_bytes_max == 0
            || self.grpc_concurrent_streams_max == 0
            || self.grpc_change_stream_buffer == 0
        {
            return Err(Error::Config(
                "grpc_message_bytes_max, grpc_concurrent_streams_max and grpc_change_stream_buffer must be at least 1".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("data_dir must not be empty".into()));
        }
        if self.node_id == 0 {
            return Err(Error::Config("node_id must be at least 1".into()));
        }
        if let Some(address) = &self.cluster_listen_address
            && address.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Error::Config(format!(
                "cluster_listen_address {address:?} is not host:port (e.g. 127.0.0.1:7000)"
            )));
        }
        if self.cluster_listen_address.is_some() && self.node_id > crate::txn_store::NODE_ID_MAX {
            return Err(Error::Config(format!(
                "node_id {} is too large for a cluster: at most {} (NODE_ID_MAX: the node id rides in the low bits of every transaction timestamp)",
                self.node_id,
                crate::txn_store::NODE_ID_MAX
            )));
        }
        if self.cluster_listen_address.is_some() && self.txn_mode == Some(TxnMode::Direct) {
            return Err(Error::Config(
                "txn_mode = \"direct\" cannot run in a cluster (cluster_listen_address is set): a cluster orders transactions with Accord; drop txn_mode or set it to \"accord\"".into(),
            ));
        }
        if self.join.is_some() && self.cluster_listen_address.is_none() {
            return Err(Error::Config(
                "join needs cluster_listen_address (where the other nodes reach this one)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config =
            Config::from_toml("data_dir = \"/tmp/x\"\ncommit_sync = \"periodic\"").unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.commit_sync, CommitSync::Periodic);
        assert_eq!(config.periodic_sync_ms, 100);
        assert_eq!(config.txn_journal, TxnJournal::default());
        let config = Config::from_toml("txn_journal = \"log\"").unwrap();
        assert_eq!(config.txn_journal, TxnJournal::Log);
        let error = Config::from_toml("txn_journal = \"wal\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `wal`"), "{error}");
        let error = Config::from_toml("dat_dir = \"/tmp/x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `dat_dir`"), "{error}");
        let error = Config::from_toml("commit_sync = \"periodic\"\nperiodic_sync_ms = 0")
            .unwrap_err()
            .to_string();
        assert!(error.contains("periodic_sync_ms"), "{error}");
        let error = Config::from_toml("cql_listen_address = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cql_listen_address"), "{error}");
        let config = Config::from_toml("cql_listen_address = \"0.0.0.0:19042\"").unwrap();
        assert_eq!(config.cql_listen_address, "0.0.0.0:19042");
        assert_eq!(Config::default().pg_listen_address, "127.0.0.1:5433");
        let error = Config::from_toml("pg_listen_address = \"5433\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("pg_listen_address"), "{error}");
        let error = Config::from_toml("pg_connections_max = 0")
            .unwrap_err()
            .to_string();
        assert!(error.contains("pg_connections_max"), "{error}");
        assert_eq!(Config::default().grpc_listen_address, "127.0.0.1:50051");
        let config = Config::from_toml("grpc_listen_address = \"0.0.0.0:0\"").unwrap();
        assert_eq!(config.grpc_listen_address, "0.0.0.0:0");
        let error = Config::from_toml("grpc_listen_address = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("grpc_listen_address"), "{error}");
        let error = Config::from_toml("grpc_message_bytes_max = 0")
            .unwrap_err()
            .to_string();
        assert!(error.contains("grpc_message_bytes_max"), "{error}");
        assert_eq!(Config::default().cluster_listen_address, None);
        let config = Config::from_toml(
            "node_id = 2\ncluster_listen_address = \"127.0.0.1:0\"\njoin = \"127.0.0.1:7000\"",
        )
        .unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.join.as_deref(), Some("127.0.0.1:7000"));
        // A cluster runs accord; direct is refused by name.
        assert_eq!(config.effective_txn_mode(), TxnMode::Accord);
        assert_eq!(Config::default().effective_txn_mode(), TxnMode::Direct);
        let error =
            Config::from_toml("cluster_listen_address = \"127.0.0.1:0\"\ntxn_mode = \"direct\"")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("txn_mode = \"direct\" cannot run in a cluster"),
            "{error}"
        );
        let error = Config::from_toml("cluster_listen_address = \"127.0.0.1:0\"\nnode_id = 64")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("node_id 64 is too large for a cluster: at most 63"),
            "{error}"
        );
        let config =
            Config::from_toml("cluster_listen_address = \"127.0.0.1:0\"\ntxn_mode = \"accord\"")
                .unwrap();
        assert_eq!(config.effective_txn_mode(), TxnMode::Accord);
        let error = Config::from_toml("node_id = 0").unwrap_err().to_string();
        assert!(error.contains("node_id"), "{error}");
        let error = Config::from_toml("cluster_listen_address = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster_listen_address"), "{error}");
        let error = Config::from_toml("join = \"127.0.0.1:7000\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("join needs cluster_listen_address"),
            "{error}"
        );
    }
}
