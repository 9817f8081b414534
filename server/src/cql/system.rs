//! The virtual tables drivers and cqlsh read (`system.local`, `system.peers`,
//! `system.peers_v2`, `system_schema.*`, `system_virtual_schema.*`), built on
//! each read from the node and `Db::schema()`, and server-side `DESCRIBE`.
//!
//! The rows only need to be right, not fast: drivers read them at connect
//! and after schema changes. Queries over them go through the same filter
//! and projection as user tables (see `execute`).

use std::collections::BTreeMap;

use concord_storage::partitioner::Token;
use concord_storage::schema::{ColumnKind, KeyspaceDef, ReplicationStrategy, Schema, TableDef};
use concord_storage::types::{CqlType, UdtDefinition};
use concord_storage::value::{ClusteringOrder, CqlValue};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_cluster::meta::state::{NodeIdx, NodeStatus};
use concord_cluster::meta::view::ClusterView;

use crate::cql::Shared;
use crate::cql::connection::CQL_VERSION;

/// The release cqlsh and drivers see: 4.0 or later makes cqlsh send
/// DESCRIBE to the server and drivers read `system_schema`.
pub const RELEASE_VERSION: &str = "5.0.0";
/// How many tokens this node owns, spread evenly over the ring.
pub const NUM_TOKENS: usize = 16;
pub const CLUSTER_NAME: &str = "Concord";
pub const DATA_CENTER: &str = "datacenter1";
/// Every node's rack (one rack, one data centre).
pub const RACK: &str = "rack1";
/// Keyspaces served from here rather than from storage.
pub const VIRTUAL_KEYSPACES: [&str; 3] = ["system", "system_schema", "system_virtual_schema"];

/// A table computed on read.
#[derive(Debug, Clone)]
pub struct VirtualTable {
    pub keyspace: String,
    pub name: String,
    pub columns: Vec<(String, CqlType, ColumnKind)>,
    pub rows: Vec<Vec<Option<CqlValue>>>,
}

fn text(value: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(value.to_owned()))
}

fn set_of_text<I: IntoIterator<Item = String>>(items: I) -> Option<CqlValue> {
    let mut items: Vec<CqlValue> = items.into_iter().map(CqlValue::Text).collect();
    items.sort_by(|a, b| a.compare(b, &CqlType::Text));
    Some(CqlValue::Set(items))
}

fn map_of_text(entries: &BTreeMap<String, String>) -> Option<CqlValue> {
    Some(CqlValue::Map(
        entries
            .iter()
            .map(|(key, value)| (CqlValue::Text(key.clone()), CqlValue::Text(value.clone())))
            .collect(),
    ))
}

fn text_map() -> CqlType {
    CqlType::Map(Box::new(CqlType::Text), Box::new(CqlType::Text)).frozen()
}

fn text_set() -> CqlType {
    CqlType::Set(Box::new(CqlType::Text)).frozen()
}

/// The node's tokens: `NUM_TOKENS` evenly spaced over the ring.
pub fn node_tokens() -> Vec<Token> {
    let step = (u64::MAX / NUM_TOKENS as u64) as i128;
    (0..NUM_TOKENS)
        .map(|idx| Token((i128::from(i64::MIN) + step * idx as i128) as i64))
        .collect()
}

/// A stable host id: on a cluster member derived from its node id (so every
/// node names every other the same way), on a single node from the listen
/// address.
fn host_id(shared: &Shared) -> [u8; 16] {
    match cluster_view(shared) {
        Some((node, _)) => node_host_id(node),
        None => uuid_of(shared.address.to_string().as_bytes()),
    }
}

/// Node `node`'s host id in a cluster.
pub fn node_host_id(node: NodeIdx) -> [u8; 16] {
    uuid_of(format!("concord-node-{node}").as_bytes())
}

/// The cluster view of a cluster member (its node id and the latest view
/// it applied); `None` on a single node or before the node joined.
fn cluster_view(shared: &Shared) -> Option<(NodeIdx, Arc<ClusterView>)> {
    let meta = shared.db.cluster_meta()?.meta()?;
    Some((meta.id(), meta.view()))
}

/// A version-4-shaped uuid from a Murmur3 hash of `data`.
fn uuid_of(data: &[u8]) -> [u8; 16] {
    let (high, low) = concord_storage::partitioner::murmur3_x64_128(data, 0);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// The schema version as a uuid, so drivers see agreement and change: on a
/// cluster member the digest of the schema (equal on members that applied
/// the same schema log, see `cluster_meta`), on a single node its counter.
fn schema_version(shared: &Shared, schema: &Schema) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if shared.db.cluster_meta().is_some() {
        bytes = crate::cluster_meta::schema_digest(schema);
    } else {
        bytes[8..].copy_from_slice(&schema.version.to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

fn columns(spec: &[(&str, CqlType, ColumnKind)]) -> Vec<(String, CqlType, ColumnKind)> {
    spec.iter()
        .map(|(name, ty, kind)| ((*name).to_owned(), ty.clone(), *kind))
        .collect()
}

const PK: ColumnKind = ColumnKind::PartitionKey;
const CK: ColumnKind = ColumnKind::Clustering(ClusteringOrder::Asc);
const REG: ColumnKind = ColumnKind::Regular;

/// The virtual table `keyspace.name`, or `None` when there is no such
/// virtual table.
pub fn virtual_table(shared: &Shared, keyspace: &str, name: &str) -> Option<VirtualTable> {
    virtual_table_with(shared, keyspace, name, true)
}

/// Every virtual table's name.
const VIRTUAL_TABLES: [(&str, &str); 16] = [
    ("system", "local"),
    ("system", "concord_status"),
    ("system", "peers"),
    ("system", "peers_v2"),
    ("system_schema", "keyspaces"),
    ("system_schema", "tables"),
    ("system_schema", "columns"),
    ("system_schema", "types"),
    ("system_schema", "functions"),
    ("system_schema", "aggregates"),
    ("system_schema", "indexes"),
    ("system_schema", "views"),
    ("system_schema", "triggers"),
    ("system_virtual_schema", "keyspaces"),
    ("system_virtual_schema", "tables"),
    ("system_virtual_schema", "columns"),
];

/// The virtual tables themselves as `TableDef`s, so `system_schema` lists
/// them and clients (cqlsh) find their metadata.
fn virtual_table_defs(shared: &Shared) -> Vec<TableDef> {
    let mut defs = Vec::new();
    for (keyspace, name) in VIRTUAL_TABLES {
        let Some(table) = virtual_table_with(shared, keyspace, name, false) else {
            continue;
        };
        let spec = concord_storage::schema::TableSpec {
            keyspace: keyspace.to_owned(),
            name: name.to_owned(),
            columns: table
                .columns
                .into_iter()
                .map(|(name, ty, kind)| concord_storage::schema::ColumnSpec { name, ty, kind })
                .collect(),
            options: concord_storage::schema::TableOptions::default(),
        };
        let mut scratch = Schema::new();
        let keyspace_def = KeyspaceDef {
            name: keyspace.to_owned(),
            replication: ReplicationStrategy::Local,
            durable_writes: true,
        };
        if scratch
            .create_keyspace(keyspace_def, concord_storage::schema::IfExists::Lenient)
            .is_ok()
            && let Ok(Some(def)) =
                scratch.create_table(spec, concord_storage::schema::IfExists::Lenient)
        {
            defs.push((*def).clone());
        }
    }
    defs
}

fn virtual_table_with(
    shared: &Shared,
    keyspace: &str,
    name: &str,
    include_virtual: bool,
) -> Option<VirtualTable> {
    let schema = shared.db.schema();
    let virtual_defs = if include_virtual && keyspace == "system_schema" {
        virtual_table_defs(shared)
    } else {
        Vec::new()
    };
    let (columns, rows) = match (keyspace, name) {
        ("system", "local") => local(shared, &schema),
        ("system", "concord_status") => concord_status(shared),
        ("system", "peers") => (
            columns(&[
                ("peer", CqlType::Inet, PK),
                ("data_center", CqlType::Text, REG),
                ("host_id", CqlType::Uuid, REG),
                ("preferred_ip", CqlType::Inet, REG),
                ("rack", CqlType::Text, REG),
                ("release_version", CqlType::Text, REG),
                ("rpc_address", CqlType::Inet, REG),
                ("schema_version", CqlType::Uuid, REG),
                ("tokens", text_set(), REG),
            ]),
            peer_rows(shared, &schema, false),
        ),
        ("system", "peers_v2") => (
            columns(&[
                ("peer", CqlType::Inet, PK),
                ("peer_port", CqlType::Int, CK),
                ("data_center", CqlType::Text, REG),
                ("host_id", CqlType::Uuid, REG),
                ("native_address", CqlType::Inet, REG),
                ("native_port", CqlType::Int, REG),
                ("preferred_ip", CqlType::Inet, REG),
                ("preferred_port", CqlType::Int, REG),
                ("rack", CqlType::Text, REG),
                ("release_version", CqlType::Text, REG),
                ("schema_version", CqlType::Uuid, REG),
                ("tokens", text_set(), REG),
            ]),
            peer_rows(shared, &schema, true),
        ),
        ("system_schema", "keyspaces") => keyspaces(&schema),
        ("system_schema", "tables") => tables(&schema, &virtual_defs),
        ("system_schema", "columns") => schema_columns(&schema, &virtual_defs),
        ("system_schema", "types") => types(&schema),
        ("system_schema", "functions") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("function_name", CqlType::Text, CK),
                (
                    "argument_types",
                    CqlType::List(Box::new(CqlType::Text)).frozen(),
                    CK,
                ),
                (
                    "argument_names",
                    CqlType::List(Box::new(CqlType::Text)).frozen(),
                    REG,
                ),
                ("body", CqlType::Text, REG),
                ("called_on_null_input", CqlType::Boolean, REG),
                ("language", CqlType::Text, REG),
                ("return_type", CqlType::Text, REG),
            ]),
            Vec::new(),
        ),
        ("system_schema", "aggregates") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("aggregate_name", CqlType::Text, CK),
                (
                    "argument_types",
                    CqlType::List(Box::new(CqlType::Text)).frozen(),
                    CK,
                ),
                ("final_func", CqlType::Text, REG),
                ("initcond", CqlType::Text, REG),
                ("return_type", CqlType::Text, REG),
                ("state_func", CqlType::Text, REG),
                ("state_type", CqlType::Text, REG),
            ]),
            Vec::new(),
        ),
        ("system_schema", "indexes") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("table_name", CqlType::Text, CK),
                ("index_name", CqlType::Text, CK),
                ("kind", CqlType::Text, REG),
                ("options", text_map(), REG),
            ]),
            Vec::new(),
        ),
        ("system_schema", "views") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("view_name", CqlType::Text, CK),
                ("base_table_id", CqlType::Uuid, REG),
                ("base_table_name", CqlType::Text, REG),
                ("include_all_columns", CqlType::Boolean, REG),
                ("where_clause", CqlType::Text, REG),
            ]),
            Vec::new(),
        ),
        ("system_schema", "triggers") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("table_name", CqlType::Text, CK),
                ("trigger_name", CqlType::Text, CK),
                ("options", text_map(), REG),
            ]),
            Vec::new(),
        ),
        ("system_virtual_schema", "keyspaces") => {
            (columns(&[("keyspace_name", CqlType::Text, PK)]), Vec::new())
        }
        ("system_virtual_schema", "tables") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("table_name", CqlType::Text, CK),
                ("comment", CqlType::Text, REG),
            ]),
            Vec::new(),
        ),
        ("system_virtual_schema", "columns") => (
            columns(&[
                ("keyspace_name", CqlType::Text, PK),
                ("table_name", CqlType::Text, CK),
                ("column_name", CqlType::Text, CK),
                ("clustering_order", CqlType::Text, REG),
                ("column_name_bytes", CqlType::Blob, REG),
                ("kind", CqlType::Text, REG),
                ("position", CqlType::Int, REG),
                ("type", CqlType::Text, REG),
            ]),
            Vec::new(),
        ),
        _ => return None,
    };
    Some(VirtualTable {
        keyspace: keyspace.to_owned(),
        name: name.to_owned(),
        columns,
        rows,
    })
}

type Rows = (
    Vec<(String, CqlType, ColumnKind)>,
    Vec<Vec<Option<CqlValue>>>,
);

/// The other members that are up, as `system.peers` (`v2: false`) or
/// `system.peers_v2` rows: their cluster address as `peer` (and
/// `peer_port`), their CQL endpoint as `rpc_address` / `native_address` and
/// `native_port`, their ring tokens, one data centre. Empty on a single
/// node. A peer's `schema_version` is this node's (every member applies the
/// same schema log; a peer that has not applied the latest entry yet
/// catches up within moments, see `cluster_meta`).
fn peer_rows(shared: &Shared, schema: &Schema, v2: bool) -> Vec<Vec<Option<CqlValue>>> {
    let Some((this, view)) = cluster_view(shared) else {
        return Vec::new();
    };
    let version = Some(CqlValue::Uuid(schema_version(shared, schema)));
    let mut rows = Vec::new();
    for (node, member) in &view.state.members {
        if *node == this || member.status != NodeStatus::Up {
            continue;
        }
        let Some(cql) = member
            .endpoints
            .get("cql")
            .and_then(|address| address.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let peer = member.address.parse::<SocketAddr>().unwrap_or(cql);
        let tokens = set_of_text(member.tokens.iter().map(|token| token.0.to_string()));
        let host = Some(CqlValue::Uuid(node_host_id(*node)));
        let inet = |address: SocketAddr| Some(CqlValue::Inet(address.ip()));
        let port = |address: SocketAddr| Some(CqlValue::Int(i32::from(address.port())));
        rows.push(if v2 {
            vec![
                inet(peer),
                port(peer),
                text(DATA_CENTER),
                host,
                inet(cql),
                port(cql),
                inet(peer),
                port(peer),
                text(RACK),
                text(RELEASE_VERSION),
                version.clone(),
                tokens,
            ]
        } else {
            vec![
                inet(peer),
                text(DATA_CENTER),
                host,
                inet(peer),
                text(RACK),
                text(RELEASE_VERSION),
                inet(cql),
                version.clone(),
                tokens,
            ]
        });
    }
    rows
}

/// `system.concord_status`: one row about this node for operators
/// (`concord cluster status`): its node id and applied schema log version
/// (cluster members), the change feed's commit watermark and end position,
/// how far the columnar replica is behind them (null without one), and the
/// accord runtime's counters since it started (null in direct mode):
/// transactions committed through this node, on the fast and the slow path,
/// recoveries started, protocol messages sent to and received from peers, journal syncs (one
/// per group of runtime steps).
fn concord_status(shared: &Shared) -> Rows {
    let spec = columns(&[
        ("key", CqlType::Text, PK),
        ("node_id", CqlType::Int, REG),
        ("schema_log_version", CqlType::Bigint, REG),
        ("commit_watermark", CqlType::Bigint, REG),
        ("feed_position_end", CqlType::Bigint, REG),
        ("columnar_watermark", CqlType::Bigint, REG),
        ("columnar_records_behind", CqlType::Bigint, REG),
        ("columnar_lag_ms", CqlType::Bigint, REG),
        ("txn_committed", CqlType::Bigint, REG),
        ("txn_fast_path", CqlType::Bigint, REG),
        ("txn_slow_path", CqlType::Bigint, REG),
        ("txn_recoveries", CqlType::Bigint, REG),
        ("txn_messages_sent", CqlType::Bigint, REG),
        ("txn_messages_received", CqlType::Bigint, REG),
        ("txn_journal_syncs", CqlType::Bigint, REG),
    ]);
    let bigint = |value: u64| Some(CqlValue::Bigint(i64::try_from(value).unwrap_or(i64::MAX)));
    let cluster = shared.db.cluster_meta();
    let node = cluster
        .and_then(|cluster| cluster.meta())
        .map(|meta| meta.id());
    let frontier = shared.db.feed().frontier();
    let replica = shared.db.columnar().map(|columnar| columnar.replica());
    let accord = shared.db.accord_stats();
    let counter = |read: fn(&concord_cluster::runtime::RuntimeStats) -> &AtomicU64| {
        accord.and_then(|stats| bigint(read(stats).load(Ordering::Relaxed)))
    };
    let row = vec![
        text("local"),
        node.map(|node| CqlValue::Int(i32::try_from(node).unwrap_or(i32::MAX))),
        cluster.and_then(|cluster| bigint(cluster.applied_version())),
        Some(CqlValue::Bigint(frontier.watermark.0)),
        bigint(frontier.position_end.0),
        replica.map(|replica| CqlValue::Bigint(replica.watermark().0)),
        replica.and_then(|replica| {
            bigint(
                frontier
                    .position_end
                    .0
                    .saturating_sub(replica.next_position().0),
            )
        }),
        replica.map(|replica| {
            CqlValue::Bigint(
                frontier
                    .watermark
                    .0
                    .saturating_sub(replica.watermark().0)
                    .max(0)
                    / 1000,
            )
        }),
        counter(|stats| &stats.committed),
        counter(|stats| &stats.fast_path_commits),
        counter(|stats| &stats.slow_path_commits),
        counter(|stats| &stats.recoveries_started),
        counter(|stats| &stats.messages_sent),
        counter(|stats| &stats.messages_received),
        counter(|stats| &stats.journal_flushes),
    ];
    (spec, vec![row])
}

fn local(shared: &Shared, schema: &Schema) -> Rows {
    let address = Some(CqlValue::Inet(shared.address.ip()));
    let tokens: Vec<String> = match cluster_view(shared) {
        Some((node, view)) => view
            .state
            .members
            .get(&node)
            .map(|member| {
                member
                    .tokens
                    .iter()
                    .map(|token| token.0.to_string())
                    .collect()
            })
            .unwrap_or_default(),
        None => node_tokens()
            .into_iter()
            .map(|token| token.0.to_string())
            .collect(),
    };
    let spec = columns(&[
        ("key", CqlType::Text, PK),
        ("bootstrapped", CqlType::Text, REG),
        ("broadcast_address", CqlType::Inet, REG),
        ("broadcast_port", CqlType::Int, REG),
        ("cluster_name", CqlType::Text, REG),
        ("cql_version", CqlType::Text, REG),
        ("data_center", CqlType::Text, REG),
        ("host_id", CqlType::Uuid, REG),
        ("listen_address", CqlType::Inet, REG),
        ("listen_port", CqlType::Int, REG),
        ("native_protocol_version", CqlType::Text, REG),
        ("partitioner", CqlType::Text, REG),
        ("rack", CqlType::Text, REG),
        ("release_version", CqlType::Text, REG),
        ("rpc_address", CqlType::Inet, REG),
        ("rpc_port", CqlType::Int, REG),
        ("schema_version", CqlType::Uuid, REG),
        ("tokens", text_set(), REG),
    ]);
    let port = Some(CqlValue::Int(i32::from(shared.address.port())));
    let row = vec![
        text("local"),
        text("COMPLETED"),
        address.clone(),
        port.clone(),
        text(CLUSTER_NAME),
        text(CQL_VERSION),
        text(DATA_CENTER),
        Some(CqlValue::Uuid(host_id(shared))),
        address.clone(),
        port.clone(),
        text("5"),
        text("org.apache.cassandra.dht.Murmur3Partitioner"),
        text(RACK),
        text(RELEASE_VERSION),
        address,
        port,
        Some(CqlValue::Uuid(schema_version(shared, schema))),
        set_of_text(tokens),
    ];
    (spec, vec![row])
}

fn replication_map(def: &KeyspaceDef) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    match &def.replication {
        ReplicationStrategy::Simple { replication_factor } => {
            map.insert(
                "class".into(),
                "org.apache.cassandra.locator.SimpleStrategy".into(),
            );
            map.insert("replication_factor".into(), replication_factor.to_string());
        }
        ReplicationStrategy::NetworkTopology { datacenters } => {
            map.insert(
                "class".into(),
                "org.apache.cassandra.locator.NetworkTopologyStrategy".into(),
            );
            for (datacenter, factor) in datacenters {
                map.insert(datacenter.clone(), factor.to_string());
            }
        }
        ReplicationStrategy::Local => {
            map.insert(
                "class".into(),
                "org.apache.cassandra.locator.LocalStrategy".into(),
            );
        }
    }
    map
}

fn system_keyspace_defs() -> Vec<KeyspaceDef> {
    VIRTUAL_KEYSPACES
        .iter()
        .map(|name| KeyspaceDef {
            name: (*name).to_owned(),
            replication: ReplicationStrategy::Local,
            durable_writes: true,
        })
        .collect()
}

fn keyspaces(schema: &Schema) -> Rows {
    let spec = columns(&[
        ("keyspace_name", CqlType::Text, PK),
        ("durable_writes", CqlType::Boolean, REG),
        ("replication", text_map(), REG),
    ]);
    let rows = system_keyspace_defs()
        .into_iter()
        .chain(schema.keyspaces().map(|keyspace| keyspace.def.clone()))
        .map(|def| {
            vec![
                text(&def.name),
                Some(CqlValue::Boolean(def.durable_writes)),
                map_of_text(&replication_map(&def)),
            ]
        })
        .collect();
    (spec, rows)
}

fn table_id_uuid(table: &TableDef) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[12..].copy_from_slice(&table.id.0.to_be_bytes());
    bytes[6] = 0x40;
    bytes[8] = 0x80;
    bytes
}

fn all_tables<'a>(schema: &'a Schema, virtual_defs: &'a [TableDef]) -> Vec<&'a TableDef> {
    virtual_defs
        .iter()
        .chain(
            schema
                .keyspaces()
                .flat_map(|keyspace| keyspace.tables.values().map(|table| table.as_ref())),
        )
        .collect()
}

fn tables(schema: &Schema, virtual_defs: &[TableDef]) -> Rows {
    let spec = columns(&[
        ("keyspace_name", CqlType::Text, PK),
        ("table_name", CqlType::Text, CK),
        ("bloom_filter_fp_chance", CqlType::Double, REG),
        ("caching", text_map(), REG),
        ("comment", CqlType::Text, REG),
        ("compaction", text_map(), REG),
        ("compression", text_map(), REG),
        ("crc_check_chance", CqlType::Double, REG),
        ("default_time_to_live", CqlType::Int, REG),
        (
            "extensions",
            CqlType::Map(Box::new(CqlType::Text), Box::new(CqlType::Blob)).frozen(),
            REG,
        ),
        ("flags", text_set(), REG),
        ("gc_grace_seconds", CqlType::Int, REG),
        ("id", CqlType::Uuid, REG),
        ("max_index_interval", CqlType::Int, REG),
        ("memtable_flush_period_in_ms", CqlType::Int, REG),
        ("min_index_interval", CqlType::Int, REG),
        ("read_repair", CqlType::Text, REG),
        ("speculative_retry", CqlType::Text, REG),
    ]);
    let mut rows = Vec::new();
    {
        for table in all_tables(schema, virtual_defs) {
            let mut compaction = table.options.compaction.clone();
            if let Some(class) = compaction.get_mut("class")
                && !class.contains('.')
            {
                *class = format!("org.apache.cassandra.db.compaction.{class}");
            }
            rows.push(vec![
                text(&table.keyspace),
                text(&table.name),
                Some(CqlValue::Double(0.01)),
                map_of_text(&BTreeMap::from([
                    ("keys".to_owned(), "ALL".to_owned()),
                    ("rows_per_partition".to_owned(), "NONE".to_owned()),
                ])),
                text(&table.options.comment),
                map_of_text(&compaction),
                map_of_text(&BTreeMap::new()),
                Some(CqlValue::Double(1.0)),
                Some(CqlValue::Int(
                    table.options.default_time_to_live_seconds as i32,
                )),
                Some(CqlValue::Map(Vec::new())),
                set_of_text(["compound".to_owned()]),
                Some(CqlValue::Int(table.options.gc_grace_seconds as i32)),
                Some(CqlValue::Uuid(table_id_uuid(table))),
                Some(CqlValue::Int(2048)),
                Some(CqlValue::Int(0)),
                Some(CqlValue::Int(128)),
                text("BLOCKING"),
                text("99p"),
            ]);
        }
    }
    (spec, rows)
}

/// A type as `system_schema` and DESCRIBE write it (UDTs by name, frozen
/// spelled out).
pub fn type_text(ty: &CqlType) -> String {
    match ty {
        CqlType::Frozen(inner) => format!("frozen<{}>", type_text(inner)),
        CqlType::List(element) => format!("list<{}>", type_text(element)),
        CqlType::Set(element) => format!("set<{}>", type_text(element)),
        CqlType::Map(key, value) => format!("map<{}, {}>", type_text(key), type_text(value)),
        CqlType::Tuple(fields) => format!(
            "tuple<{}>",
            fields.iter().map(type_text).collect::<Vec<_>>().join(", ")
        ),
        CqlType::Udt(udt) => quote_name(&udt.name),
        other => other.to_string(),
    }
}

fn schema_columns(schema: &Schema, virtual_defs: &[TableDef]) -> Rows {
    let spec = columns(&[
        ("keyspace_name", CqlType::Text, PK),
        ("table_name", CqlType::Text, CK),
        ("column_name", CqlType::Text, CK),
        ("clustering_order", CqlType::Text, REG),
        ("column_name_bytes", CqlType::Blob, REG),
        ("kind", CqlType::Text, REG),
        ("position", CqlType::Int, REG),
        ("type", CqlType::Text, REG),
    ]);
    let mut rows = Vec::new();
    {
        for table in all_tables(schema, virtual_defs) {
            let partition_key: Vec<&str> = table.partition_key().map(|c| c.name.as_str()).collect();
            let clustering: Vec<&str> = table.clustering().map(|c| c.name.as_str()).collect();
            for column in table.columns() {
                let (kind, order, position) = match column.kind {
                    ColumnKind::PartitionKey => (
                        "partition_key",
                        "none",
                        partition_key
                            .iter()
                            .position(|n| *n == column.name)
                            .unwrap_or(0),
                    ),
                    ColumnKind::Clustering(order) => (
                        "clustering",
                        if order == ClusteringOrder::Desc {
                            "desc"
                        } else {
                            "asc"
                        },
                        clustering
                            .iter()
                            .position(|n| *n == column.name)
                            .unwrap_or(0),
                    ),
                    ColumnKind::Static => ("static", "none", usize::MAX),
                    ColumnKind::Regular => ("regular", "none", usize::MAX),
                };
                let position = if position == usize::MAX {
                    -1
                } else {
                    position as i32
                };
                rows.push(vec![
                    text(&table.keyspace),
                    text(&table.name),
                    text(&column.name),
                    text(order),
                    Some(CqlValue::Blob(column.name.as_bytes().to_vec())),
                    text(kind),
                    Some(CqlValue::Int(position)),
                    text(&type_text(&column.ty)),
                ]);
            }
        }
    }
    (spec, rows)
}

fn types(schema: &Schema) -> Rows {
    let list = CqlType::List(Box::new(CqlType::Text)).frozen();
    let spec = columns(&[
        ("keyspace_name", CqlType::Text, PK),
        ("type_name", CqlType::Text, CK),
        ("field_names", list.clone(), REG),
        ("field_types", list, REG),
    ]);
    let mut rows = Vec::new();
    for keyspace in schema.keyspaces() {
        for udt in &keyspace.types {
            rows.push(vec![
                text(&keyspace.def.name),
                text(&udt.name),
                Some(CqlValue::List(
                    udt.fields
                        .iter()
                        .map(|(name, _)| CqlValue::Text(name.clone()))
                        .collect(),
                )),
                Some(CqlValue::List(
                    udt.fields
                        .iter()
                        .map(|(_, ty)| CqlValue::Text(type_text(ty)))
                        .collect(),
                )),
            ]);
        }
    }
    (spec, rows)
}

/// Quotes a name when CQL needs it to.
pub fn quote_name(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn quote_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn map_literal(map: &BTreeMap<String, String>) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|(key, value)| format!("{}: {}", quote_string(key), quote_string(value)))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// `CREATE KEYSPACE ...` for DESCRIBE.
pub fn create_keyspace_statement(def: &KeyspaceDef) -> String {
    let mut replication = replication_map(def);
    if let Some(class) = replication.get_mut("class") {
        *class = class.rsplit('.').next().unwrap_or(class).to_owned();
    }
    format!(
        "CREATE KEYSPACE {} WITH replication = {} AND durable_writes = {};",
        quote_name(&def.name),
        map_literal(&replication),
        def.durable_writes
    )
}

/// `CREATE TYPE ...` for DESCRIBE.
pub fn create_type_statement(keyspace: &str, udt: &UdtDefinition) -> String {
    let fields: Vec<String> = udt
        .fields
        .iter()
        .map(|(name, ty)| format!("    {} {}", quote_name(name), type_text(ty)))
        .collect();
    format!(
        "CREATE TYPE {}.{} (\n{}\n);",
        quote_name(keyspace),
        quote_name(&udt.name),
        fields.join(",\n")
    )
}

/// `CREATE TABLE ...` for DESCRIBE.
pub fn create_table_statement(table: &TableDef) -> String {
    let mut lines: Vec<String> = table
        .columns()
        .iter()
        .map(|column| {
            let is_static = if column.kind == ColumnKind::Static {
                " static"
            } else {
                ""
            };
            format!(
                "    {} {}{is_static}",
                quote_name(&column.name),
                type_text(&column.ty)
            )
        })
        .collect();
    let partition_key: Vec<String> = table.partition_key().map(|c| quote_name(&c.name)).collect();
    let clustering: Vec<String> = table.clustering().map(|c| quote_name(&c.name)).collect();
    let partition = if partition_key.len() == 1 {
        partition_key[0].clone()
    } else {
        format!("({})", partition_key.join(", "))
    };
    let mut key = vec![partition];
    key.extend(clustering);
    lines.push(format!("    PRIMARY KEY ({})", key.join(", ")));
    let mut options = Vec::new();
    if table.clustering().len() > 0 {
        let orders: Vec<String> = table
            .clustering()
            .map(|column| {
                let order = match column.kind {
                    ColumnKind::Clustering(ClusteringOrder::Desc) => "DESC",
                    _ => "ASC",
                };
                format!("{} {order}", quote_name(&column.name))
            })
            .collect();
        options.push(format!("CLUSTERING ORDER BY ({})", orders.join(", ")));
    }
    options.push(format!(
        "comment = {}",
        quote_string(&table.options.comment)
    ));
    options.push(format!(
        "compaction = {}",
        map_literal(&table.options.compaction)
    ));
    options.push(format!(
        "default_time_to_live = {}",
        table.options.default_time_to_live_seconds
    ));
    options.push(format!(
        "gc_grace_seconds = {}",
        table.options.gc_grace_seconds
    ));
    for (name, value) in &table.options.other {
        options.push(format!("{name} = {value}"));
    }
    format!(
        "CREATE TABLE {}.{} (\n{}\n) WITH {};",
        quote_name(&table.keyspace),
        quote_name(&table.name),
        lines.join(",\n"),
        options.join("\n    AND ")
    )
}
