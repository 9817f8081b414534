//! The server's side of the cluster metadata (design/cluster.md, "Schema
//! through the metadata log"): DDL proposed to the metadata Raft log and
//! applied from it on every node in log order.
//!
//! ```text
//!  client DDL ─► execute_ddl ─► ClusterMeta::propose_ddl
//!     1. apply_ddl on a copy of the local schema (validation; nothing proposed on error)
//!     2. MetaNode::schema_change(SchemaEntry JSON)  ─► Raft log (a request id: once)
//!     3. wait until this node applied that version ─► the outcome the applier recorded
//!  every node: follower task ─ MetaNode::subscribe ─► each SchemaChange, version order
//!     ─► Db::alter_schema(apply_ddl(statement), marker = applied version) (one batch)
//! ```
//!
//! Invariants:
//! - **S1** Every node applies the schema log's entries in version order,
//!   each exactly once: the applied version is written in the same batch as
//!   the schema it produced, so a restart resumes after it.
//! - **S2** Applying an entry is a function of the schema before it and the
//!   entry alone (`cql::ddl::apply_ddl`: types resolve against that schema,
//!   table ids come from its counter), so every node that applied versions
//!   `1..=v` holds the same schema, table ids included. An entry that fails
//!   fails on every node and changes nothing but the applied version.
//! - **S3** Checked, not assumed: an entry records the schema version it was
//!   validated against (`base`) and the digest of the schema the proposer's
//!   copy reached. Where `base` is the version just before the entry, every
//!   node must reach that digest; a node that does not stops applying and
//!   reports the divergence (it serves its last schema; nothing is written).
//!
//! Must never: change the schema of a cluster member other than through this
//! log; apply an entry twice or out of order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cassandra_protocol::frame::events::{
    SchemaChange, ServerEvent, StatusChange, StatusChangeType, TopologyChange, TopologyChangeType,
};
use concord_cluster::meta::MetaNode;
use concord_cluster::meta::state::REPLICATION_FACTOR_MAX;
use concord_cluster::meta::state::{NodeIdx, NodeStatus};
use concord_cluster::meta::view::ClusterView;
use concord_cql_parser::ast::Statement;
use concord_storage::engine::{Engine, Family};
use concord_storage::schema::Schema;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, watch};

use crate::cql::ddl::{apply_ddl, is_schema_change, replication_factor};
use crate::cql::error::{CqlError, CqlResult};
use crate::db::Db;

/// Where a member keeps the last schema log version it applied (meta
/// family, u64 big-endian), written with the schema it produced.
pub const SCHEMA_APPLIED_KEY: &[u8] = b"cluster/schema-applied";
/// How long a DDL waits for its proposal to commit and apply here, and a
/// starting member for its schema to catch up with the log it holds.
pub const SCHEMA_APPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Outcomes of applied entries kept for their proposers (older ones go;
/// a proposer waits at most `SCHEMA_APPLY_TIMEOUT`).
pub const SCHEMA_OUTCOMES_KEPT: usize = 256;
/// The format of [`SchemaEntry`].
pub const SCHEMA_ENTRY_FORMAT: u32 = 1;
/// How long a request waits for this node to apply schema entries its
/// metadata view already holds (a table created through another member a
/// moment ago) before it runs against the schema it has.
pub const SCHEMA_CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// How often a member probes the other members' CQL endpoints (a TCP
/// connect) for STATUS_CHANGE events.
pub const PEER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take before it counts as a failure.
pub const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Consecutive failed probes before a peer is announced DOWN (one success
/// announces it UP again).
pub const PEER_DOWN_AFTER_FAILURES: u32 = 2;

/// One schema log entry's DDL text (the `ddl` of a metadata `Schema`
/// command), JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaEntry {
    pub format: u32,
    /// The keyspace unqualified names resolve in (the client's session).
    pub keyspace: Option<String>,
    /// The statement, as the client sent it.
    pub cql: String,
    /// The schema log version the proposer validated against (S3).
    pub base: u64,
    /// [`schema_digest`] of the proposer's copy after the statement (S3).
    pub digest: String,
}

/// A digest of everything the schema holds (ids and counters included):
/// equal on two nodes iff their schemas are. `system.local`'s
/// `schema_version` in a cluster.
pub fn schema_digest(schema: &Schema) -> [u8; 16] {
    let bytes = schema.to_bytes().unwrap_or_default();
    let (high, low) = concord_storage::partitioner::murmur3_x64_128(&bytes, 0);
    let mut digest = [0u8; 16];
    digest[..8].copy_from_slice(&high.to_be_bytes());
    digest[8..].copy_from_slice(&low.to_be_bytes());
    digest
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

type Outcome = CqlResult<Option<SchemaChange>>;

#[derive(Debug, Default)]
struct ApplyState {
    /// The last schema log version applied here.
    applied: u64,
    outcomes: BTreeMap<u64, Outcome>,
    /// Why applying stopped (S3), if it did.
    stalled: Option<String>,
}

#[derive(Debug)]
struct Attached {
    meta: Arc<MetaNode>,
    runtime: Handle,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The peer prober (STATUS_CHANGE events).
    prober: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A cluster member's metadata handle, installed in its `Db`
/// ([`Db::set_cluster_meta`]) before the endpoints start: until
/// [`ClusterMeta::attach`] DDL is refused (the node is still joining).
#[derive(Debug)]
pub struct ClusterMeta {
    attached: OnceLock<Attached>,
    state: Mutex<ApplyState>,
    applied_changed: Condvar,
    /// The CQL endpoint's event channel on a member: SCHEMA_CHANGE of every
    /// applied entry, whichever member proposed it; TOPOLOGY_CHANGE when a
    /// member comes up in the metadata or leaves it; STATUS_CHANGE when the
    /// peer prober sees another member's CQL endpoint go down or come back.
    events: broadcast::Sender<ServerEvent>,
}

impl ClusterMeta {
    pub fn new() -> Arc<ClusterMeta> {
        Arc::new(ClusterMeta {
            attached: OnceLock::new(),
            state: Mutex::new(ApplyState::default()),
            applied_changed: Condvar::new(),
            events: broadcast::channel(crate::cql::EVENTS_BUFFERED_MAX).0,
        })
    }

    /// The CQL events of this member (schema, topology and status changes).
    pub fn events(&self) -> &broadcast::Sender<ServerEvent> {
        &self.events
    }

    /// Before a request runs: waits (at most `SCHEMA_CATCH_UP_WAIT`) until
    /// this node applied every schema entry its metadata view holds, so a
    /// client that created a table through another member and then uses
    /// it here finds it. A timeout or a stall is left to the statement.
    pub fn catch_up(&self) {
        let Some(attached) = self.attached.get() else {
            return;
        };
        let target = attached.meta.view().state.schema_version;
        let mut state = self.state.lock();
        let deadline = Instant::now() + SCHEMA_CATCH_UP_WAIT;
        while state.applied < target && state.stalled.is_none() {
            if self
                .applied_changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return;
            }
        }
    }

    /// The metadata node, once attached.
    pub fn meta(&self) -> Option<&Arc<MetaNode>> {
        self.attached.get().map(|attached| &attached.meta)
    }

    /// The last schema log version this node applied.
    pub fn applied_version(&self) -> u64 {
        self.state.lock().applied
    }

    /// Why this node stopped applying the schema log, if it did (S3).
    pub fn stalled(&self) -> Option<String> {
        self.state.lock().stalled.clone()
    }

    /// Connects the started metadata node: reads the applied version, starts
    /// the follower task and waits until the schema log this node holds is
    /// applied. A data directory with a schema made outside the cluster is
    /// refused (a member starts from the empty schema, S2).
    ///
    /// # Errors
    /// A foreign schema, a second attach, a divergence, or no catch-up
    /// within `SCHEMA_APPLY_TIMEOUT`.
    pub async fn attach<E: Engine + 'static>(
        self: &Arc<Self>,
        db: Arc<Db<E>>,
        meta: Arc<MetaNode>,
    ) -> Result<(), String> {
        let applied = match db.engine().get(Family::Meta, SCHEMA_APPLIED_KEY) {
            Ok(Some(bytes)) => {
                let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    format!(
                        "{:?} holds {} bytes, not 8",
                        SCHEMA_APPLIED_KEY,
                        bytes.len()
                    )
                })?;
                u64::from_be_bytes(array)
            }
            Ok(None) => 0,
            Err(error) => return Err(format!("read the applied schema version: {error}")),
        };
        let keyspaces = db.schema().keyspaces().count();
        if applied == 0 && keyspaces > 0 {
            return Err(format!(
                "the data directory holds {keyspaces} keyspace(s) created outside the \
                 cluster; a cluster member starts from an empty schema (use a new data directory)"
            ));
        }
        self.state.lock().applied = applied;
        let (stop, stopped) = watch::channel(false);
        let views = meta.subscribe();
        let attached = Attached {
            meta: Arc::clone(&meta),
            runtime: Handle::current(),
            stop,
            task: Mutex::new(None),
            prober: Mutex::new(None),
        };
        self.attached
            .set(attached)
            .map_err(|_| "the cluster metadata is already attached".to_string())?;
        let prober = tokio::spawn(probe_peers(
            Arc::clone(self),
            Arc::clone(&meta),
            stopped.clone(),
        ));
        let task = tokio::spawn(follow(Arc::clone(self), db, views, stopped));
        if let Some(attached) = self.attached.get() {
            *attached.task.lock() = Some(task);
            *attached.prober.lock() = Some(prober);
        }
        let target = meta.view().state.schema_version;
        let this = Arc::clone(self);
        let waited = tokio::task::spawn_blocking(move || this.wait_applied(target))
            .await
            .map_err(|error| format!("wait for the schema log: {error}"))?;
        waited.map_err(|error| error.to_string())
    }

    /// Stops the follower task.
    pub async fn stop(&self) {
        let Some(attached) = self.attached.get() else {
            return;
        };
        let _ = attached.stop.send(true);
        let tasks = [attached.task.lock().take(), attached.prober.lock().take()];
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
    }

    fn wait_applied(&self, version: u64) -> CqlResult<()> {
        let deadline = Instant::now() + SCHEMA_APPLY_TIMEOUT;
        let mut state = self.state.lock();
        loop {
            if let Some(reason) = &state.stalled {
                return Err(CqlError::Server(reason.clone()));
            }
            if state.applied >= version {
                return Ok(());
            }
            if self
                .applied_changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return Err(CqlError::Server(format!(
                    "schema version {version} did not apply here within {SCHEMA_APPLY_TIMEOUT:?} \
                     (applied: {})",
                    state.applied
                )));
            }
        }
    }

    /// Runs a client's DDL through the metadata log (see the module note):
    /// validated on a copy of this node's schema, proposed, answered with
    /// the outcome this node's applier recorded for it. A `CREATE` or
    /// `ALTER KEYSPACE` that applied also sets the keyspace's replication
    /// factor in the metadata (`SetReplication`).
    ///
    /// # Errors
    /// The statement's error (from validation, or from applying it after a
    /// concurrent change); `Server` when the node is not attached, the
    /// proposal fails or does not apply in time.
    pub fn propose_ddl<E: Engine>(
        &self,
        db: &Db<E>,
        keyspace: Option<&str>,
        text: Option<&str>,
        statement: &Statement,
    ) -> Outcome {
        let Some(attached) = self.attached.get() else {
            return Err(CqlError::Server(
                "this node is still joining its cluster; retry the schema change shortly".into(),
            ));
        };
        let Some(text) = text else {
            return Err(CqlError::Invalid(
                "in a cluster a schema change must come as CQL text (QUERY or a prepared \
                 statement), not inside a batch"
                    .into(),
            ));
        };
        if !concord_cql_parser::parse(text).is_ok_and(|parsed| parsed.bind_markers.is_empty()) {
            return Err(CqlError::Invalid(
                "in a cluster a schema change cannot take bind markers".into(),
            ));
        }
        let (base, mut copy) = {
            let state = self.state.lock();
            if let Some(reason) = &state.stalled {
                return Err(CqlError::Server(reason.clone()));
            }
            (state.applied, (*db.schema()).clone())
        };
        let Some(_) = apply_ddl(&mut copy, keyspace, statement)? else {
            return Ok(None);
        };
        let replication = match statement {
            Statement::CreateKeyspace(create) => Some(create.name.clone()),
            Statement::AlterKeyspace { name, .. } => Some(name.clone()),
            _ => None,
        }
        .map(|name| {
            let def = &copy.keyspace(&name)?.def;
            match replication_factor(def) {
                Some(rf) if (1..=REPLICATION_FACTOR_MAX).contains(&rf) => Ok((name, rf)),
                Some(rf) => Err(CqlError::Config(format!(
                    "keyspace {name}: replication factor must be 1..={REPLICATION_FACTOR_MAX} \
                     in a cluster, got {rf}"
                ))),
                None => Err(CqlError::Config(format!(
                    "keyspace {name}: LocalStrategy is not allowed in a cluster"
                ))),
            }
        })
        .transpose()?;
        let entry = SchemaEntry {
            format: SCHEMA_ENTRY_FORMAT,
            keyspace: keyspace.map(str::to_owned),
            cql: text.to_owned(),
            base,
            digest: hex(&schema_digest(&copy)),
        };
        let ddl = serde_json::to_string(&entry)
            .map_err(|error| CqlError::Server(format!("encode the schema entry: {error}")))?;
        let creates_table = matches!(statement, Statement::CreateTable(_));
        let meta = Arc::clone(&attached.meta);
        let reply = block_on(&attached.runtime, async move {
            meta.schema_change(&ddl, creates_table).await
        })?
        .map_err(|error| CqlError::Server(format!("schema change not committed: {error}")))?;
        let version = reply.schema_version;
        self.wait_applied(version)?;
        let outcome = self.state.lock().outcomes.remove(&version).ok_or_else(|| {
            CqlError::Server(format!(
                "the outcome of schema version {version} is no longer kept"
            ))
        })?;
        let change = outcome?;
        if let (Some((name, rf)), Some(_)) = (replication, &change) {
            let meta = Arc::clone(&attached.meta);
            block_on(&attached.runtime, async move {
                meta.set_replication(&name, rf).await
            })?
            .map_err(|error| {
                CqlError::Server(format!(
                    "the keyspace changed, but its replication factor was not recorded: {error}"
                ))
            })?;
        }
        Ok(change)
    }

    /// Applies the entries of `view`'s schema log this node has not applied,
    /// in version order (S1); stops at a divergence (S3).
    fn apply_view<E: Engine>(&self, db: &Db<E>, view: &ClusterView) {
        for change in &view.state.schema {
            let mut state = self.state.lock();
            if state.stalled.is_some() {
                return;
            }
            if change.version <= state.applied {
                continue;
            }
            if change.version != state.applied + 1 {
                state.stalled = Some(format!(
                    "schema log gap: version {} follows applied version {}",
                    change.version, state.applied
                ));
                self.applied_changed.notify_all();
                return;
            }
            let version = change.version;
            let marker = (SCHEMA_APPLIED_KEY.to_vec(), version.to_be_bytes().to_vec());
            let applied = db.alter_schema(Some(marker), |schema| {
                let before = schema.clone();
                let entry = decode_entry(&change.ddl);
                let outcome = entry.as_ref().map_err(Clone::clone).and_then(|entry| {
                    let parsed = concord_cql_parser::parse(&entry.cql)?;
                    if !is_schema_change(&parsed.statement) {
                        return Err(CqlError::Invalid(
                            "a schema log entry must be a schema change".into(),
                        ));
                    }
                    apply_ddl(schema, entry.keyspace.as_deref(), &parsed.statement)
                });
                if outcome.is_err() {
                    *schema = before;
                }
                if let Ok(entry) = &entry
                    && entry.base + 1 == version
                    && outcome.is_ok()
                {
                    let reached = hex(&schema_digest(schema));
                    if reached != entry.digest {
                        return Err(crate::Error::Unavailable(format!(
                            "schema divergence at version {version}: this node reached \
                             digest {reached}, the proposer {} from the same version {}; \
                             this node stopped applying the schema log",
                            entry.digest, entry.base
                        )));
                    }
                }
                Ok(outcome)
            });
            match applied {
                Ok(outcome) => {
                    if let Err(error) = &outcome {
                        tracing::info!(version, %error, "schema log entry failed (on every node)");
                    }
                    state.applied = version;
                    if let Ok(Some(change)) = &outcome {
                        let _ = self.events.send(ServerEvent::SchemaChange(change.clone()));
                    }
                    state.outcomes.insert(version, outcome);
                    while state.outcomes.len() > SCHEMA_OUTCOMES_KEPT {
                        state.outcomes.pop_first();
                    }
                }
                Err(error) => {
                    tracing::error!(version, %error, "schema log not applied");
                    state.stalled = Some(error.to_string());
                }
            }
            self.applied_changed.notify_all();
        }
    }
}

fn decode_entry(ddl: &str) -> CqlResult<SchemaEntry> {
    let entry: SchemaEntry = serde_json::from_str(ddl).map_err(|error| {
        CqlError::Invalid(format!("a schema log entry does not decode: {error}"))
    })?;
    if entry.format != SCHEMA_ENTRY_FORMAT {
        return Err(CqlError::Invalid(format!(
            "schema log entry format {} is unknown",
            entry.format
        )));
    }
    Ok(entry)
}

/// The follower task: applies every published view's new schema entries.
async fn follow<E: Engine + 'static>(
    cluster: Arc<ClusterMeta>,
    db: Arc<Db<E>>,
    mut views: watch::Receiver<Arc<ClusterView>>,
    mut stopped: watch::Receiver<bool>,
) {
    let this_node = cluster.meta().map(|meta| meta.id());
    let mut members = cql_members(&views.borrow(), this_node);
    loop {
        let view = Arc::clone(&views.borrow_and_update());
        let now = cql_members(&view, this_node);
        for event in topology_changes(&members, &now) {
            let _ = cluster.events.send(event);
        }
        members = now;
        let (this, db_ref) = (Arc::clone(&cluster), Arc::clone(&db));
        if let Err(error) =
            tokio::task::spawn_blocking(move || this.apply_view(db_ref.as_ref(), &view)).await
        {
            tracing::error!(%error, "schema log applier failed");
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = stopped.changed() => return,
        }
    }
}

/// The CQL endpoints of the members that are up in `view`, but `this` one.
fn cql_members(view: &ClusterView, this: Option<NodeIdx>) -> BTreeMap<NodeIdx, SocketAddr> {
    view.state
        .members
        .iter()
        .filter(|(node, member)| Some(**node) != this && member.status == NodeStatus::Up)
        .filter_map(|(node, member)| {
            let cql = member.endpoints.get("cql")?.parse::<SocketAddr>().ok()?;
            Some((*node, cql))
        })
        .collect()
}

/// TOPOLOGY_CHANGE events from one set of up members to the next: NEW_NODE
/// for a member that came up, REMOVED_NODE for one that left (or stopped
/// being up in the metadata), each with its CQL address.
fn topology_changes(
    before: &BTreeMap<NodeIdx, SocketAddr>,
    after: &BTreeMap<NodeIdx, SocketAddr>,
) -> Vec<ServerEvent> {
    let event =
        |change_type, addr| ServerEvent::TopologyChange(TopologyChange { change_type, addr });
    let mut events = Vec::new();
    for (node, addr) in after {
        if !before.contains_key(node) {
            events.push(event(TopologyChangeType::NewNode, *addr));
        }
    }
    for (node, addr) in before {
        if !after.contains_key(node) {
            events.push(event(TopologyChangeType::RemovedNode, *addr));
        }
    }
    events
}

/// What the prober knows of one peer.
#[derive(Debug)]
struct PeerProbe {
    /// `None` until a probe decides it: a peer is announced only once it
    /// was known up and went down, or known down and came up.
    up: Option<bool>,
    failures: u32,
}

impl PeerProbe {
    /// Records one probe; the STATUS_CHANGE to announce, if any.
    fn probed(&mut self, reachable: bool) -> Option<StatusChangeType> {
        if reachable {
            self.failures = 0;
            let was = self.up.replace(true);
            (was == Some(false)).then_some(StatusChangeType::Up)
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures < PEER_DOWN_AFTER_FAILURES {
                return None;
            }
            let was = self.up.replace(false);
            (was == Some(true)).then_some(StatusChangeType::Down)
        }
    }
}

/// The peer prober: every `PEER_PROBE_INTERVAL`, a TCP connect to each other
/// up member's CQL endpoint (at most `PEER_PROBE_TIMEOUT`).
/// `PEER_DOWN_AFTER_FAILURES` failures in a row make a peer down, one
/// success up; a change from a known state is announced as STATUS_CHANGE
/// (a member's first state is learnt silently: NEW_NODE announced it, and
/// a joining member's endpoint may not listen yet). This is what clients
/// see of a peer (its CQL endpoint), not a Raft or transport judgement: the
/// metadata keeps a stopped member `Up` (no failure detector there yet).
async fn probe_peers(
    cluster: Arc<ClusterMeta>,
    meta: Arc<MetaNode>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut peers: BTreeMap<NodeIdx, (SocketAddr, PeerProbe)> = BTreeMap::new();
    let mut interval = tokio::time::interval(PEER_PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.changed() => return,
        }
        let members = cql_members(&meta.view(), Some(meta.id()));
        peers.retain(|node, (addr, _)| members.get(node) == Some(addr));
        let mut probes = tokio::task::JoinSet::new();
        for (node, addr) in members {
            probes.spawn(async move {
                let connected =
                    tokio::time::timeout(PEER_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await;
                (node, addr, matches!(connected, Ok(Ok(_))))
            });
        }
        while let Some(probed) = probes.join_next().await {
            let Ok((node, addr, reachable)) = probed else {
                continue;
            };
            let (_, probe) = peers.entry(node).or_insert((
                addr,
                PeerProbe {
                    up: None,
                    failures: 0,
                },
            ));
            if let Some(change_type) = probe.probed(reachable) {
                tracing::info!(node, %addr, ?change_type, "peer CQL endpoint status changed");
                let _ = cluster.events.send(ServerEvent::StatusChange(StatusChange {
                    change_type,
                    addr,
                }));
            }
        }
    }
}

/// Runs `future` on `runtime` and waits for it from this (blocking) thread,
/// letting a runtime worker's other tasks move meanwhile.
fn block_on<T: Send + 'static>(
    runtime: &Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> CqlResult<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    let wait = move || receiver.recv_timeout(SCHEMA_APPLY_TIMEOUT);
    let received = match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
            return Err(CqlError::Server(
                "a schema change cannot wait on a current-thread runtime".into(),
            ));
        }
        Ok(_) => tokio::task::block_in_place(wait),
        Err(_) => wait(),
    };
    received.map_err(|_| {
        CqlError::Server(format!(
            "the metadata did not answer within {SCHEMA_APPLY_TIMEOUT:?}"
        ))
    })
}
