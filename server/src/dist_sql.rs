//! The server's side of distributed analytics (design/cluster.md,
//! "Distributed analytics"): which node reads which token range, and the
//! Arrow Flight calls that carry fragments between nodes.
//!
//! ```text
//! Db::sql_with (replica store, cluster member)
//!   distribution(view, me): every shard of the epoch's topology, its up
//!     replicas with a Flight endpoint, this node first if it holds the shard
//!   this node holds every shard → Columnar::sql (unchanged, local)
//!   otherwise → Columnar::sql_distributed(.., FlightRunner)
//! FlightRunner::run(node, FragmentRequest)
//!   → DoGet(Ticket = Any{FRAGMENT_TICKET_TYPE, JSON request}) on the node's grpc endpoint
//! flight.rs do_get_fallback(FRAGMENT_TICKET_TYPE) → Columnar::fragment_async → batches
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use arrow::array::RecordBatch;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::Any;
use arrow_flight::{FlightClient, Ticket};
use async_trait::async_trait;
use concord_cluster::meta::state::NodeStatus;
use concord_cluster::meta::view::ClusterView;
use concord_columnar::sql::distributed::{
    Distribution, FRAGMENT_RESULT_BYTES_MAX, FragmentRequest, FragmentRunner,
};
use concord_storage::cell::WriteTime;
use futures::TryStreamExt;
use prost::Message;

/// The `Any` type of a fragment ticket (its value: a JSON [`FragmentRequest`]).
pub const FRAGMENT_TICKET_TYPE: &str = "type.concord.dev/concord.FragmentRequest";
/// The `Any` type of a watermark probe ticket (empty value): the answer is
/// one row, `watermark` and `horizon` (Int64 microseconds).
pub const PROBE_TICKET_TYPE: &str = "type.concord.dev/concord.WatermarkProbe";
/// How long a node waits to connect to another node's Flight endpoint (a
/// fragment node, a range streaming source).
pub const FRAGMENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest fragment ticket (the query text is most of it).
pub const FRAGMENT_TICKET_BYTES_MAX: usize = 2 << 20;

/// Where the ranges of the cluster are read from a query coordinated by
/// node `me`: every shard of the topology once, its up replicas that
/// publish a Flight (`grpc`) endpoint, `me` first when it holds the shard.
/// `None` without a topology.
pub fn distribution(view: &ClusterView, me: u32) -> Option<Distribution> {
    let topology = view.topology.as_ref()?;
    let reachable = |node: u32| {
        node == me
            || view.state.members.get(&node).is_some_and(|member| {
                member.status == NodeStatus::Up && member.endpoints.contains_key("grpc")
            })
    };
    let ranges = topology
        .shards
        .iter()
        .map(|shard| {
            let mut replicas: Vec<u32> = shard
                .replicas
                .iter()
                .map(|node| node.0)
                .filter(|node| reachable(*node))
                .collect();
            if let Some(at) = replicas.iter().position(|node| *node == me) {
                replicas.remove(at);
                replicas.insert(0, me);
            }
            (shard.range, replicas)
        })
        .collect();
    Some(Distribution { local: me, ranges })
}

/// A fragment as a Flight ticket.
///
/// # Errors
/// If the request does not encode.
pub fn fragment_ticket(request: &FragmentRequest) -> Result<Ticket, serde_json::Error> {
    let any = Any {
        type_url: FRAGMENT_TICKET_TYPE.to_owned(),
        value: serde_json::to_vec(request)?.into(),
    };
    Ok(Ticket {
        ticket: any.encode_to_vec().into(),
    })
}

/// The probe's answer for this node's replica.
///
/// # Errors
/// If the batch does not build (a bug).
pub fn probe_answer(watermark: i64, horizon: i64) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("watermark", DataType::Int64, false),
        Field::new("horizon", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![watermark])),
            Arc::new(Int64Array::from(vec![horizon])),
        ],
    )
}

/// A Flight client of another node's gRPC endpoint `address` (`host:port`,
/// as the metadata's member endpoints publish it), with the service's
/// message bounds; also the range streaming client (`crate::bootstrap`).
///
/// # Errors
/// A malformed address or a failed connection, as text naming the address.
pub async fn connect_flight(address: &str) -> Result<FlightClient, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| format!("bad endpoint {address}: {error}"))?
        .connect_timeout(FRAGMENT_CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let inner = FlightServiceClient::new(channel)
        .max_decoding_message_size(crate::flight::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::flight::MESSAGE_BYTES_MAX);
    Ok(FlightClient::new_from_inner(inner))
}

/// Runs fragments on other nodes through their Flight endpoint.
#[derive(Debug)]
pub struct FlightRunner {
    pub view: Arc<ClusterView>,
}

#[async_trait]
impl FragmentRunner for FlightRunner {
    async fn run(
        &self,
        node: u32,
        request: FragmentRequest,
    ) -> concord_columnar::Result<Vec<RecordBatch>> {
        let ticket = fragment_ticket(&request)
            .map_err(|error| concord_columnar::Error::Sql(error.to_string()))?;
        self.do_get(node, ticket).await
    }

    async fn watermark(&self, node: u32) -> concord_columnar::Result<(WriteTime, WriteTime)> {
        let any = Any {
            type_url: PROBE_TICKET_TYPE.to_owned(),
            value: Vec::new().into(),
        };
        let batches = self
            .do_get(
                node,
                Ticket {
                    ticket: any.encode_to_vec().into(),
                },
            )
            .await?;
        let column = |batch: &RecordBatch, idx: usize| {
            batch
                .column(idx)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .filter(|array| !array.is_empty())
                .map(|array| array.value(0))
        };
        batches
            .first()
            .and_then(|batch| Some((column(batch, 0)?, column(batch, 1)?)))
            .map(|(watermark, horizon)| (WriteTime(watermark), WriteTime(horizon)))
            .ok_or_else(|| {
                concord_columnar::Error::Sql(format!("node {node}: a malformed probe answer"))
            })
    }
}

impl FlightRunner {
    async fn do_get(
        &self,
        node: u32,
        ticket: Ticket,
    ) -> concord_columnar::Result<Vec<RecordBatch>> {
        let fail = |what: String| concord_columnar::Error::Sql(format!("node {node}: {what}"));
        let address = self
            .view
            .state
            .members
            .get(&node)
            .and_then(|member| member.endpoints.get("grpc"))
            .ok_or_else(|| fail("no Flight (grpc) endpoint in the cluster metadata".into()))?;
        let mut client = connect_flight(address).await.map_err(fail)?;
        let mut stream = client
            .do_get(ticket)
            .await
            .map_err(|error| fail(error.to_string()))?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|error| fail(error.to_string()))?
        {
            bytes += batch.get_array_memory_size();
            if bytes > FRAGMENT_RESULT_BYTES_MAX {
                return Err(concord_columnar::Error::ResourcesExhausted(format!(
                    "node {node}'s fragment passed {FRAGMENT_RESULT_BYTES_MAX} bytes \
                     (FRAGMENT_RESULT_BYTES_MAX)"
                )));
            }
            batches.push(batch);
        }
        Ok(batches)
    }
}
