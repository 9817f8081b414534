//! Cluster metadata replicated with openraft 0.9 (design/cluster.md,
//! "Metadata state machine"): membership, the token ring, replica placement
//! per keyspace, the schema DDL log and the topology epoch.
//!
//! ```text
//!   MetaNode::admin(request) ─► the leader (forwarded over /Admin if needed)
//!      └─ Raft::client_write(Command) ─► log on a majority (LogStore, engine, synced)
//!            └─ every node: StateMachine::apply ─► ClusterState ─► store ─► publish
//!                                                   Arc<ClusterView> (watch channel):
//!                                                   ring, placement, txn Topology
//! ```
//!
//! Invariants: every node applies the metadata log in log order and
//! publishes a view only after storing the state it derives from (K3);
//! a change of placement always comes with a new epoch; data transactions
//! never go through this Raft group.
//!
//! Key types: [`MetaNode`] (one node: Raft, its RPC server, its view),
//! [`state::ClusterState`] and [`state::Command`] (the replicated state and
//! its changes), [`view::ClusterView`] (what the rest of the node reads).

pub mod rpc;
pub mod state;
pub mod store;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::io::Cursor;

use concord_storage::engine::Engine;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use self::rpc::{AdminError, AdminReply, AdminRequest, MetaClient, MetaHandler, MetaNetwork};
use self::state::{
    Command, CommandResult, Endpoints, NodeIdx, VNODES_PER_NODE_DEFAULT, VNODES_PER_NODE_MAX,
    default_tokens,
};
use self::store::{LogStore, StateMachine};
use self::view::ClusterView;

openraft::declare_raft_types!(
    /// The metadata Raft group's types: commands in, results out, nodes
    /// addressed by `host:port`.
    pub MetaTypes:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
);

/// How often the leader sends heartbeats.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// A follower that hears no leader for a random time in
/// `[ELECTION_TIMEOUT_MIN_DEFAULT, ELECTION_TIMEOUT_MAX_DEFAULT)` starts an
/// election.
pub const ELECTION_TIMEOUT_MIN_DEFAULT: Duration = Duration::from_millis(500);
pub const ELECTION_TIMEOUT_MAX_DEFAULT: Duration = Duration::from_millis(1000);
/// A snapshot is built once this many entries were applied since the last.
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 1024;
/// Entries kept in the log below the last snapshot (for slow followers).
pub const LOG_ENTRIES_KEPT_DEFAULT: u64 = 1024;
/// The size of one snapshot chunk on the wire.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// How long an admin request may wait for a leader and its commit.
pub const ADMIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The pause between attempts of an admin request that found no leader.
pub const ADMIN_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The configuration of one metadata node.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub node_id: NodeIdx,
    /// Where the metadata RPC server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address other nodes reach it at; `None`: the bound address.
    pub advertise: Option<String>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub snapshot_every_entries: u64,
    pub log_entries_kept: u64,
    pub admin_timeout: Duration,
    /// The node's client endpoints, recorded in its member entry when it
    /// bootstraps or joins (`system.peers`, `concord cluster status`).
    pub endpoints: Endpoints,
}

impl MetaConfig {
    /// The defaults for node `node_id` listening on `listen`.
    pub fn new(node_id: NodeIdx, listen: SocketAddr) -> MetaConfig {
        MetaConfig {
            node_id,
            listen,
            advertise: None,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            election_timeout_min: ELECTION_TIMEOUT_MIN_DEFAULT,
            election_timeout_max: ELECTION_TIMEOUT_MAX_DEFAULT,
            snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES_DEFAULT,
            log_entries_kept: LOG_ENTRIES_KEPT_DEFAULT,
            admin_timeout: ADMIN_TIMEOUT_DEFAULT,
            endpoints: Endpoints::new(),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, MetaError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "concord-meta".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..openraft::Config::default()
        };
        config
            .validate()
            .map_err(|e| MetaError::Config(e.to_string()))
    }
}

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("metadata storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { waited: Duration, what: String },
}

struct Shared {
    id: NodeIdx,
    address: String,
    endpoints: Endpoints,
    raft: Raft<MetaTypes>,
    /// The state this node has applied (the leader's is the latest committed).
    view: watch::Receiver<Arc<ClusterView>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish()
    }
}

fn raft_error(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> AdminError {
    match error.forward_to_leader() {
        Some(forward) => AdminError::NotLeader {
            leader: forward.leader_id,
        },
        None => AdminError::Raft(error.to_string()),
    }
}

impl Shared {
    fn membership(&self) -> openraft::StoredMembership<u64, BasicNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .as_ref()
            .clone()
    }

    async fn write(&self, command: Command) -> Result<AdminReply, AdminError> {
        let response = self.raft.client_write(command).await.map_err(raft_error)?;
        match response.data {
            CommandResult::Applied {
                epoch,
                schema_version,
            }
            | CommandResult::Unchanged {
                epoch,
                schema_version,
            } => Ok(AdminReply {
                epoch,
                schema_version,
                log_index: response.log_id.index,
            }),
            CommandResult::Rejected(reason) => Err(AdminError::Rejected(reason)),
        }
    }

    async fn add_node(
        &self,
        node: NodeIdx,
        address: String,
        vnodes: Option<usize>,
        endpoints: Endpoints,
    ) -> Result<AdminReply, AdminError> {
        let vnodes = vnodes.unwrap_or(VNODES_PER_NODE_DEFAULT);
        if vnodes == 0 || vnodes > VNODES_PER_NODE_MAX {
            return Err(AdminError::Rejected(format!(
                "node {node}: 1..={VNODES_PER_NODE_MAX} vnodes (VNODES_PER_NODE_MAX), got {vnodes}"
            )));
        }
        let add = Command::AddNode {
            node,
            address: address.clone(),
            tokens: default_tokens(node, vnodes),
            endpoints,
        };
        // Refuse before the node becomes a Raft voter: the state machine would reject its
        // NodeUp (e.g. it would gain ranges whose rows nothing streams to it) and leave a
        // voter that owns nothing.
        let mut trial = self.view.borrow().state.clone();
        for command in [&add, &Command::NodeUp { node }] {
            if let CommandResult::Rejected(reason) = trial.apply(command) {
                return Err(AdminError::Rejected(reason));
            }
        }
        self.write(add).await?;
        let raft_id = u64::from(node);
        let is_voter = self
            .membership()
            .membership()
            .voter_ids()
            .any(|v| v == raft_id);
        if !is_voter {
            // Blocks until the learner has caught up with the log.
            self.raft
                .add_learner(raft_id, BasicNode::new(&address), true)
                .await
                .map_err(raft_error)?;
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([raft_id])), false)
                .await
                .map_err(raft_error)?;
        }
        self.write(Command::NodeUp { node }).await
    }

    async fn forward(&self, leader: u64, request: &AdminRequest) -> Result<AdminReply, AdminError> {
        let membership = self.membership();
        let address = membership
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, node)| node.addr.clone());
        let Some(address) = address else {
            return Err(AdminError::NotLeader {
                leader: Some(leader),
            });
        };
        let mut client =
            MetaClient::new(&address).map_err(|e| AdminError::Unreachable(e.to_string()))?;
        client.admin(request, false).await
    }

    async fn remove_node(&self, node: NodeIdx) -> Result<AdminReply, AdminError> {
        let reply = self.write(Command::RemoveNode { node }).await?;
        let raft_id = u64::from(node);
        let membership = self.membership();
        let change = if membership.membership().voter_ids().any(|v| v == raft_id) {
            Some(ChangeMembers::RemoveVoters(BTreeSet::from([raft_id])))
        } else if membership.nodes().any(|(id, _)| *id == raft_id) {
            Some(ChangeMembers::RemoveNodes(BTreeSet::from([raft_id])))
        } else {
            None
        };
        if let Some(change) = change {
            self.raft
                .change_membership(change, false)
                .await
                .map_err(raft_error)?;
        }
        Ok(reply)
    }
}

impl MetaHandler for Shared {
    fn raft(&self) -> &Raft<MetaTypes> {
        &self.raft
    }

    async fn admin_call(
        &self,
        request: AdminRequest,
        forward: bool,
    ) -> Result<AdminReply, AdminError> {
        let leader = self.raft.current_leader().await;
        match leader {
            Some(leader) if leader == u64::from(self.id) => {}
            Some(leader) if forward => return self.forward(leader, &request).await,
            _ => return Err(AdminError::NotLeader { leader }),
        }
        match request {
            AdminRequest::AddNode {
                node,
                address,
                vnodes,
                endpoints,
            } => self.add_node(node, address, vnodes, endpoints).await,
            AdminRequest::RemoveNode { node } => self.remove_node(node).await,
            AdminRequest::Command(command) => self.write(command).await,
        }
    }
}

/// Another gRPC service served on the metadata port (the transaction
/// transport's peer service, `Transport::start_shared`), with the HTTP/2
/// keepalive it needs.
#[derive(Debug)]
pub struct ExtraService {
    pub routes: tonic::service::Routes,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// One node of the metadata Raft group: its Raft instance, the RPC server
/// other nodes reach it through, and the views it publishes.
#[derive(Debug)]
pub struct MetaNode {
    shared: Arc<Shared>,
    view: watch::Receiver<Arc<ClusterView>>,
    admin_timeout: Duration,
    server: Mutex<Option<ServerHandle>>,
}

#[derive(Debug)]
struct ServerHandle {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

static REQUEST_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl MetaNode {
    /// Opens the metadata stored in `engine` (a fresh engine: an empty,
    /// uninitialised node), starts Raft and the RPC server. A restarted
    /// node resumes from its stored log, vote and state; it publishes the
    /// stored view at once and catches up from the leader.
    ///
    /// # Errors
    /// When the address cannot be bound, the configuration is invalid or the
    /// stored state does not load.
    pub async fn start<E: Engine>(
        config: MetaConfig,
        engine: Arc<E>,
    ) -> Result<MetaNode, MetaError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MetaError::Bind {
                address: config.listen,
                source,
            })?;
        MetaNode::start_on(config, engine, listener, None).await
    }

    /// [`MetaNode::start`] on a listener the caller bound, serving `extra`
    /// (the transaction transport's peer service) on the same port.
    ///
    /// # Errors
    /// As [`MetaNode::start`].
    pub async fn start_on<E: Engine>(
        config: MetaConfig,
        engine: Arc<E>,
        listener: tokio::net::TcpListener,
        extra: Option<ExtraService>,
    ) -> Result<MetaNode, MetaError> {
        let bound = listener.local_addr().map_err(|source| MetaError::Bind {
            address: config.listen,
            source,
        })?;
        let address = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let raft_config = Arc::new(config.raft_config()?);
        let log = LogStore::new(Arc::clone(&engine));
        let machine = StateMachine::open(engine).map_err(|e| MetaError::Storage(e.to_string()))?;
        let view = machine.subscribe();
        let raft = Raft::new(
            u64::from(config.node_id),
            raft_config,
            MetaNetwork,
            log,
            machine,
        )
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
        let shared = Arc::new(Shared {
            id: config.node_id,
            address,
            endpoints: config.endpoints.clone(),
            raft,
            view: view.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = rpc::MetaServer::new(Arc::clone(&shared));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let router = match extra {
            None => tonic::transport::Server::builder().add_service(service),
            Some(extra) => tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(extra.keepalive_interval))
                .http2_keepalive_timeout(Some(extra.keepalive_timeout))
                .add_routes(extra.routes)
                .add_service(service),
        };
        let incoming = incoming.with_nodelay(Some(true));
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Ok(MetaNode {
            shared,
            view,
            admin_timeout: config.admin_timeout,
            server: Mutex::new(Some(ServerHandle { stop, task })),
        })
    }

    pub fn id(&self) -> NodeIdx {
        self.shared.id
    }

    /// The address other nodes reach this node's metadata service at.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The openraft instance (metrics, leadership).
    pub fn raft(&self) -> &Raft<MetaTypes> {
        &self.shared.raft
    }

    /// The latest view this node applied.
    pub fn view(&self) -> Arc<ClusterView> {
        Arc::clone(&self.view.borrow())
    }

    /// A receiver of every view this node publishes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Waits until the published view satisfies `predicate`.
    ///
    /// # Errors
    /// [`MetaError::Timeout`] after `timeout`.
    pub async fn wait_for_view(
        &self,
        timeout: Duration,
        what: &str,
        predicate: impl FnMut(&Arc<ClusterView>) -> bool,
    ) -> Result<Arc<ClusterView>, MetaError> {
        let mut receiver = self.view.clone();
        match tokio::time::timeout(timeout, receiver.wait_for(predicate)).await {
            Ok(Ok(view)) => Ok(Arc::clone(&view)),
            Ok(Err(_closed)) => Err(MetaError::Raft("the state machine stopped".into())),
            Err(_elapsed) => Err(MetaError::Timeout {
                waited: timeout,
                what: what.to_string(),
            }),
        }
    }

    /// Starts a new cluster with this node as its only member (voter, up,
    /// with `vnodes` tokens or the default). Repeating it on an initialised
    /// node only re-registers the node (a no-op).
    ///
    /// # Errors
    /// When Raft fails or no leadership is reached in time.
    pub async fn bootstrap(&self, vnodes: Option<usize>) -> Result<AdminReply, MetaError> {
        let raft = &self.shared.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                u64::from(self.shared.id),
                BasicNode::new(&self.shared.address),
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| MetaError::Raft(e.to_string()))?;
        }
        self.admin(AdminRequest::AddNode {
            node: self.shared.id,
            address: self.shared.address.clone(),
            vnodes,
            endpoints: self.shared.endpoints.clone(),
        })
        .await
    }

    /// Asks the node at `seed` (any member) to add this node to its cluster:
    /// the seed forwards the request to the leader, which registers the
    /// node, catches it up as a learner, makes it a voter and puts its
    /// tokens in the ring. The way `concord start --join` joins.
    ///
    /// # Errors
    /// When the leader refuses, or no leader is reached before the admin
    /// timeout.
    pub async fn join(&self, seed: &str, vnodes: Option<usize>) -> Result<AdminReply, MetaError> {
        let request = AdminRequest::AddNode {
            node: self.shared.id,
            address: self.shared.address.clone(),
            vnodes,
            endpoints: self.shared.endpoints.clone(),
        };
        let mut client =
            MetaClient::new(seed).map_err(|e| AdminError::Unreachable(e.to_string()))?;
        let deadline = Instant::now() + self.admin_timeout;
        loop {
            let attempt = client.admin(&request, true);
            match self
                .within(deadline, "joining through the seed", attempt)
                .await?
            {
                Err(AdminError::NotLeader { .. } | AdminError::Unreachable(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(ADMIN_RETRY_INTERVAL).await;
                }
                other => return other.map_err(MetaError::from),
            }
        }
    }

    /// Runs an operator request on the leader, from any node: here if this
    /// node leads, else forwarded to the leader; retried while there is no
    /// leader (an election) or it cannot be reached, until the admin timeout
    /// (which also bounds each attempt).
    ///
    /// # Errors
    /// The leader's refusal ([`AdminError::Rejected`]), a Raft failure, or a
    /// timeout.
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminReply, MetaError> {
        let deadline = Instant::now() + self.admin_timeout;
        loop {
            let attempt = self.shared.admin_call(request.clone(), true);
            match self.within(deadline, "an admin request", attempt).await? {
                Err(AdminError::NotLeader { .. } | AdminError::Unreachable(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(ADMIN_RETRY_INTERVAL).await;
                }
                other => return other.map_err(MetaError::from),
            }
        }
    }

    /// Runs `attempt` until `deadline` (a forwarded call to a leader that
    /// stopped answering must not hang the caller).
    async fn within<T>(
        &self,
        deadline: Instant,
        what: &str,
        attempt: impl Future<Output = T>,
    ) -> Result<T, MetaError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining.max(ADMIN_RETRY_INTERVAL), attempt)
            .await
            .map_err(|_elapsed| MetaError::Timeout {
                waited: self.admin_timeout,
                what: what.to_string(),
            })
    }

    /// Appends a schema change (one DDL statement) to the replicated schema
    /// log; every node applies it in log order. `creates_table`: the statement
    /// creates a table (from then on the cluster may hold rows, and placement
    /// changes that would give a node ranges it lacks are refused).
    ///
    /// # Errors
    /// As [`MetaNode::admin`].
    pub async fn schema_change(
        &self,
        ddl: &str,
        creates_table: bool,
    ) -> Result<AdminReply, MetaError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let sequence = REQUEST_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let request = nanos ^ (u64::from(self.shared.id) << 48) ^ sequence.rotate_left(32);
        self.admin(AdminRequest::Command(Command::Schema {
            ddl: ddl.to_string(),
            request,
            creates_table,
        }))
        .await
    }

    /// Records this node's client endpoints in its member entry: an
    /// `AddNode` repeating its address and tokens, so no new epoch (a
    /// member started before its client ports were bound, or restarted on
    /// new ones).
    ///
    /// # Errors
    /// As [`MetaNode::admin`].
    pub async fn set_endpoints(&self, endpoints: Endpoints) -> Result<AdminReply, MetaError> {
        let tokens = self
            .view()
            .state
            .members
            .get(&self.shared.id)
            .map(|member| member.tokens.len());
        self.admin(AdminRequest::AddNode {
            node: self.shared.id,
            address: self.shared.address.clone(),
            vnodes: tokens,
            endpoints,
        })
        .await
    }

    /// Sets `keyspace`'s replication factor (creating the keyspace); a new
    /// epoch when it changes.
    ///
    /// # Errors
    /// As [`MetaNode::admin`].
    pub async fn set_replication(
        &self,
        keyspace: &str,
        replication_factor: u32,
    ) -> Result<AdminReply, MetaError> {
        self.admin(AdminRequest::Command(Command::SetReplication {
            keyspace: keyspace.to_string(),
            replication_factor,
        }))
        .await
    }

    /// Adds node `node` reachable at `address` (which must be running).
    ///
    /// # Errors
    /// As [`MetaNode::admin`].
    pub async fn add_node(&self, node: NodeIdx, address: &str) -> Result<AdminReply, MetaError> {
        self.admin(AdminRequest::AddNode {
            node,
            address: address.to_string(),
            vnodes: None,
            endpoints: Endpoints::new(),
        })
        .await
    }

    /// Removes node `node` from the ring and the Raft voters.
    ///
    /// # Errors
    /// As [`MetaNode::admin`].
    pub async fn remove_node(&self, node: NodeIdx) -> Result<AdminReply, MetaError> {
        self.admin(AdminRequest::RemoveNode { node }).await
    }

    /// Stops Raft and the RPC server. The engine keeps everything the node
    /// stored; [`MetaNode::start`] on it resumes.
    ///
    /// # Errors
    /// When Raft's task fails to stop.
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        let server = self.server.lock().take();
        self.shared
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        if let Some(server) = server {
            let _ = server.stop.send(());
            match server.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(MetaError::Raft(format!("rpc server: {e}"))),
                Err(e) => return Err(MetaError::Raft(format!("rpc server task: {e}"))),
            }
        }
        Ok(())
    }
}
