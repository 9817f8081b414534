//! The metadata Raft group's RPCs: one tonic unary service,
//! `concord.cluster.Meta`, apart from the data-transaction transport. Each
//! method carries one [`MetaMessage`] each way whose bytes are a
//! serde-JSON openraft request or `Result` (so openraft's errors travel
//! typed); `Admin` carries an [`AdminRequest`] for the leader.
//!
//! ```text
//!   RaftNetwork (openraft) ─► MetaPeer ─► /concord.cluster.Meta/AppendEntries ─► Raft::append_entries
//!                                        /Vote, /InstallSnapshot (chunked)     Raft::vote, install_snapshot
//!   MetaNode::admin on a follower ─────► /Admin (forward = false) ─► the leader runs it
//!   MetaNode::join ─► a seed's /Admin (forward = true) ─► the seed forwards once to the leader
//! ```
//!
//! The prost message and the tonic glue are written by hand (one message
//! type, four methods): smaller than a generated file and a codegen crate.

use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tonic::codegen::{Body, BoxFuture, Context, Poll, StdError, http};

use super::MetaTypes;
use super::state::{Command, NodeIdx};

/// The gRPC service name.
pub const SERVICE_NAME: &str = "concord.cluster.Meta";
/// The largest metadata RPC message, in bytes, either way. Snapshots travel
/// in chunks of [`super::SNAPSHOT_CHUNK_BYTES`], well under it.
pub const META_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long a peer may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const PATH_APPEND: &str = "/concord.cluster.Meta/AppendEntries";
const PATH_VOTE: &str = "/concord.cluster.Meta/Vote";
const PATH_SNAPSHOT: &str = "/concord.cluster.Meta/InstallSnapshot";
const PATH_ADMIN: &str = "/concord.cluster.Meta/Admin";

/// The one message of the service: serde-JSON bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// An operator request, run by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Adds a node: registered, caught up as a learner, made a voter, up.
    AddNode {
        node: NodeIdx,
        address: String,
        /// `None`: the default tokens ([`super::state::default_tokens`]).
        vnodes: Option<usize>,
        /// Its client endpoints (see [`super::state::Endpoints`]).
        #[serde(default)]
        endpoints: super::state::Endpoints,
    },
    /// Removes a node from the ring and from the Raft voters.
    RemoveNode { node: NodeIdx },
    /// Any state change that is one command.
    Command(Command),
}

/// Why an admin request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// This node is not the leader (the caller retries on the leader).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// The state machine refused the command; nothing changed.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Raft failed (shutting down, storage error, a membership change in
    /// progress).
    #[error("raft: {0}")]
    Raft(String),
    /// The leader could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// What the leader answers to an admin request: the state afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub epoch: u64,
    pub schema_version: u64,
    /// The log index at which the last command applied.
    pub log_index: u64,
}

/// An admin request on the wire: `forward` lets a node that does not lead
/// pass it on to the leader (once: the forwarded call has it unset, so two
/// nodes that each believe the other leads do not bounce it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdminCall {
    request: AdminRequest,
    forward: bool,
}

/// What serves the four methods (implemented by the node).
pub(crate) trait MetaHandler: Send + Sync + 'static {
    fn raft(&self) -> &openraft::Raft<MetaTypes>;
    /// Runs `request` if this node leads; otherwise forwards it to the
    /// leader when `forward`, else answers [`AdminError::NotLeader`].
    fn admin_call(
        &self,
        request: AdminRequest,
        forward: bool,
    ) -> impl Future<Output = Result<AdminReply, AdminError>> + Send;
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    serde_json::to_vec(value).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable request: {e}")))
}

async fn serve<H: MetaHandler>(
    handler: Arc<H>,
    path: &'static str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    match path {
        PATH_APPEND => {
            let request: AppendEntriesRequest<MetaTypes> = from_json(&payload)?;
            let result = handler.raft().append_entries(request).await;
            to_json(&result)
        }
        PATH_VOTE => {
            let request: VoteRequest<u64> = from_json(&payload)?;
            let result = handler.raft().vote(request).await;
            to_json(&result)
        }
        PATH_SNAPSHOT => {
            let request: InstallSnapshotRequest<MetaTypes> = from_json(&payload)?;
            let result = handler.raft().install_snapshot(request).await;
            to_json(&result)
        }
        PATH_ADMIN => {
            let call: AdminCall = from_json(&payload)?;
            let result = handler.admin_call(call.request, call.forward).await;
            to_json(&result)
        }
        other => Err(tonic::Status::unimplemented(other.to_string())),
    }
}

/// The tonic service of the metadata RPCs.
#[derive(Debug)]
pub(crate) struct MetaServer<H> {
    handler: Arc<H>,
}

impl<H> Clone for MetaServer<H> {
    fn clone(&self) -> Self {
        MetaServer {
            handler: Arc::clone(&self.handler),
        }
    }
}

impl<H: MetaHandler> MetaServer<H> {
    pub(crate) fn new(handler: Arc<H>) -> MetaServer<H> {
        MetaServer { handler }
    }
}

impl<H> tonic::server::NamedService for MetaServer<H> {
    const NAME: &'static str = SERVICE_NAME;
}

struct Method<H> {
    handler: Arc<H>,
    path: &'static str,
}

impl<H: MetaHandler> tonic::server::UnaryService<MetaMessage> for Method<H> {
    type Response = MetaMessage;
    type Future = BoxFuture<tonic::Response<MetaMessage>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<MetaMessage>) -> Self::Future {
        let handler = Arc::clone(&self.handler);
        let path = self.path;
        Box::pin(async move {
            let payload = serve(handler, path, request.into_inner().payload).await?;
            Ok(tonic::Response::new(MetaMessage { payload }))
        })
    }
}

impl<H, B> tonic::codegen::Service<http::Request<B>> for MetaServer<H>
where
    H: MetaHandler,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = match request.uri().path() {
            PATH_APPEND => PATH_APPEND,
            PATH_VOTE => PATH_VOTE,
            PATH_SNAPSHOT => PATH_SNAPSHOT,
            PATH_ADMIN => PATH_ADMIN,
            _ => {
                return Box::pin(async move {
                    let mut response = http::Response::new(tonic::body::Body::default());
                    let headers = response.headers_mut();
                    headers.insert(
                        tonic::Status::GRPC_STATUS,
                        (tonic::Code::Unimplemented as i32).into(),
                    );
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        tonic::metadata::GRPC_CONTENT_TYPE,
                    );
                    Ok(response)
                });
            }
        };
        let method = Method {
            handler: Arc::clone(&self.handler),
            path,
        };
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<MetaMessage, MetaMessage>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(
                Some(META_MESSAGE_BYTES_MAX),
                Some(META_MESSAGE_BYTES_MAX),
            );
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// A client of one node's metadata service.
#[derive(Debug, Clone)]
pub struct MetaClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl MetaClient {
    /// A client of `address` (`host:port`); connects on first use.
    ///
    /// # Errors
    /// When the address is not a valid URI authority.
    pub fn new(address: &str) -> Result<MetaClient, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(CONNECT_TIMEOUT);
        let grpc = tonic::client::Grpc::new(endpoint.connect_lazy())
            .max_decoding_message_size(META_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(META_MESSAGE_BYTES_MAX);
        Ok(MetaClient { grpc })
    }

    async fn call(
        &mut self,
        path: &'static str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<MetaMessage, MetaMessage>::default();
        let response = self
            .grpc
            .unary(
                tonic::Request::new(MetaMessage { payload }),
                http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(response.into_inner().payload)
    }

    /// Runs an admin request on this node if it leads; if not, and
    /// `forward`, the node passes it on to the leader it knows.
    ///
    /// # Errors
    /// [`AdminError::Unreachable`] when the call fails, or the node's error.
    pub async fn admin(
        &mut self,
        request: &AdminRequest,
        forward: bool,
    ) -> Result<AdminReply, AdminError> {
        let call = AdminCall {
            request: request.clone(),
            forward,
        };
        let payload = serde_json::to_vec(&call).map_err(|e| AdminError::Raft(e.to_string()))?;
        let reply = self
            .call(PATH_ADMIN, payload)
            .await
            .map_err(|status| AdminError::Unreachable(status.to_string()))?;
        serde_json::from_slice::<Result<AdminReply, AdminError>>(&reply)
            .map_err(|e| AdminError::Unreachable(format!("undecodable reply: {e}")))?
    }
}

/// openraft's network: one [`MetaPeer`] per target.
#[derive(Debug, Clone, Default)]
pub struct MetaNetwork;

impl RaftNetworkFactory<MetaTypes> for MetaNetwork {
    type Network = MetaPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> MetaPeer {
        MetaPeer {
            target,
            client: MetaClient::new(&node.addr).map_err(|e| e.to_string()),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct MetaPeer {
    target: u64,
    client: Result<MetaClient, String>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl MetaPeer {
    async fn send<Req, Resp, E>(
        &mut self,
        path: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(reason) => {
                let error = std::io::Error::other(reason.clone());
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
        };
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = match tokio::time::timeout(option.hard_ttl(), client.call(path, payload)).await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
        };
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<MetaTypes> for MetaPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaTypes>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.send(PATH_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MetaTypes>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(PATH_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.send(PATH_VOTE, &rpc, &option).await
    }
}
