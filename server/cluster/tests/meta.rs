//! The metadata Raft group end to end: real `MetaNode`s in one process,
//! talking over tonic on loopback (ephemeral ports), each on its own
//! in-memory engine. Bootstrap and joins, the same view on every node, schema
//! changes in log order (K3), removal, a leader that stops, a node restarted
//! from its engine (catching up by snapshot), placement.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_cluster::meta::rpc::AdminError;
use concord_cluster::meta::state::{NodeIdx, NodeStatus};
use concord_cluster::meta::view::ClusterView;
use concord_cluster::meta::{MetaConfig, MetaError, MetaNode};
use concord_storage::engine::EngineOptions;
use concord_storage::memory::MemoryEngine;

const WAIT: Duration = Duration::from_secs(10);

fn config(node_id: NodeIdx, listen: SocketAddr) -> MetaConfig {
    let mut config = MetaConfig::new(node_id, listen);
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(300);
    config.election_timeout_max = Duration::from_millis(600);
    config
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

struct Node {
    meta: MetaNode,
    engine: Arc<MemoryEngine>,
}

impl Node {
    async fn start_with(config: MetaConfig) -> Node {
        let engine = Arc::new(MemoryEngine::new(EngineOptions::default()));
        let meta = MetaNode::start(config, Arc::clone(&engine))
            .await
            .expect("node starts");
        Node { meta, engine }
    }

    fn address(&self) -> SocketAddr {
        self.meta.address().parse().expect("bound address")
    }
}

/// Bootstraps node 1 and joins nodes 2 and 3 (node 3 through node 2, a
/// follower, which forwards to the leader).
async fn three_nodes(make_config: impl Fn(NodeIdx) -> MetaConfig) -> Vec<Node> {
    let n1 = Node::start_with(make_config(1)).await;
    n1.meta.bootstrap(None).await.expect("bootstrap");
    let n2 = Node::start_with(make_config(2)).await;
    n2.meta
        .join(n1.meta.address(), None)
        .await
        .expect("node 2 joins");
    let n3 = Node::start_with(make_config(3)).await;
    n3.meta
        .join(n2.meta.address(), None)
        .await
        .expect("node 3 joins");
    vec![n1, n2, n3]
}

/// Waits until every node applied index `index` or later and returns their
/// views.
async fn converged(nodes: &[&Node], index: u64) -> Vec<Arc<ClusterView>> {
    let mut views = Vec::new();
    for node in nodes {
        let view = node
            .meta
            .wait_for_view(WAIT, "catch up", |view| view.applied_index >= index)
            .await
            .unwrap_or_else(|e| panic!("node {} did not reach index {index}: {e}", node.meta.id()));
        views.push(view);
    }
    views
}

async fn leader_of(nodes: &[&Node]) -> NodeIdx {
    for _ in 0..200 {
        let leader = nodes[0].meta.raft().current_leader().await;
        if let Some(leader) = leader {
            let leader = NodeIdx::try_from(leader).expect("small id");
            if nodes.iter().any(|node| node.meta.id() == leader) {
                return leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader among the running nodes");
}

async fn shutdown(nodes: &[Node]) {
    for node in nodes {
        node.meta.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_join_and_every_node_sees_the_same_view() {
    let nodes = three_nodes(|id| config(id, any_port())).await;
    let reply = nodes[0].meta.set_replication("ks", 3).await.expect("rf 3");
    let views = converged(&nodes.iter().collect::<Vec<_>>(), reply.log_index).await;
    for view in &views {
        assert_eq!(view.state, views[0].state, "every node has the same state");
        assert_eq!(view.topology, views[0].topology);
        assert_eq!(view.epoch(), reply.epoch);
    }
    let view = &views[0];
    // Three nodes up (three epochs), then the keyspace (a fourth).
    assert_eq!(view.epoch(), 4);
    let up: Vec<NodeIdx> = view.state.up_nodes().collect();
    assert_eq!(up, vec![1, 2, 3]);
    for node in &nodes {
        let member = &view.state.members[&node.meta.id()];
        assert_eq!(member.address, node.meta.address());
        assert_eq!(member.status, NodeStatus::Up);
    }
    // The Raft voters are the three nodes.
    let metrics = nodes[0].meta.raft().metrics().borrow().clone();
    let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    // RF 3 on 3 nodes: every range on every node; the txn topology of the epoch agrees.
    let placement = &view.placements["ks"];
    assert_eq!(placement.ranges.len(), view.ring.len());
    for range in &placement.ranges {
        let replicas: BTreeSet<NodeIdx> = range.replicas.iter().copied().collect();
        assert_eq!(replicas, BTreeSet::from([1, 2, 3]));
    }
    let topology = view.topology.as_ref().expect("topology");
    assert_eq!(topology.epoch.0, view.epoch());
    assert!(
        topology
            .shards
            .iter()
            .all(|shard| shard.replicas.len() == 3)
    );
    // RF 2 spreads: distinct nodes per range, every node holds some ranges.
    let reply = nodes[2].meta.set_replication("two", 2).await.expect("rf 2");
    assert_eq!(reply.epoch, 5);
    let views = converged(&nodes.iter().collect::<Vec<_>>(), reply.log_index).await;
    let placement = &views[1].placements["two"];
    let mut holders = BTreeSet::new();
    for range in &placement.ranges {
        assert_eq!(range.replicas.len(), 2);
        assert_ne!(range.replicas[0], range.replicas[1]);
        holders.extend(range.replicas.iter().copied());
    }
    assert_eq!(holders, BTreeSet::from([1, 2, 3]));
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_apply_in_log_order_on_every_node() {
    let nodes = three_nodes(|id| config(id, any_port())).await;
    // Record every view node 3 publishes while the changes go in.
    let mut receiver = nodes[2].meta.subscribe();
    let recorder = tokio::spawn(async move {
        let mut seen = vec![Arc::clone(&receiver.borrow_and_update())];
        while receiver.changed().await.is_ok() {
            let view = Arc::clone(&receiver.borrow_and_update());
            let done = view.schema_version() >= 6;
            seen.push(view);
            if done {
                break;
            }
        }
        seen
    });
    let mut last_index = 0;
    for version in 1..=6u64 {
        // Proposed from each node in turn; followers forward to the leader.
        let proposer = &nodes[(version as usize) % 3].meta;
        let ddl = format!("CREATE TABLE ks.t{version} (k int PRIMARY KEY)");
        let reply = proposer
            .schema_change(&ddl, true)
            .await
            .expect("schema change");
        assert_eq!(reply.schema_version, version);
        assert!(reply.log_index > last_index);
        last_index = reply.log_index;
    }
    let views = converged(&nodes.iter().collect::<Vec<_>>(), last_index).await;
    let expected: Vec<String> = (1..=6)
        .map(|v| format!("CREATE TABLE ks.t{v} (k int PRIMARY KEY)"))
        .collect();
    for view in &views {
        let ddl: Vec<&str> = view.state.schema.iter().map(|c| c.ddl.as_str()).collect();
        assert_eq!(ddl, expected, "node's schema log differs");
        let versions: Vec<u64> = view.state.schema.iter().map(|c| c.version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    }
    // K3: node 3 never saw a schema log that is not a prefix of the final one,
    // and its applied index and schema version never went back.
    let seen = tokio::time::timeout(WAIT, recorder)
        .await
        .expect("recorder finishes")
        .expect("recorder task");
    let final_log = &views[2].state.schema;
    for pair in seen.windows(2) {
        assert!(pair[0].applied_index <= pair[1].applied_index);
        assert!(pair[0].schema_version() <= pair[1].schema_version());
    }
    for view in &seen {
        let len = view.state.schema.len();
        assert_eq!(view.state.schema[..], final_log[..len]);
    }
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_leaves_ring_and_voters() {
    let nodes = three_nodes(|id| config(id, any_port())).await;
    let before = nodes[0].meta.view().epoch();
    let reply = nodes[1].meta.remove_node(3).await.expect("remove");
    assert_eq!(reply.epoch, before + 1);
    let remaining = [&nodes[0], &nodes[1]];
    let views = converged(&remaining, reply.log_index).await;
    for view in &views {
        assert_eq!(
            view.state.members.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(view.ring.iter().all(|(_, node)| *node != 3));
        let topology = view.topology.as_ref().expect("topology");
        assert_eq!(topology.nodes().len(), 2);
    }
    let leader = leader_of(&remaining).await;
    let leader_node = remaining
        .iter()
        .find(|n| n.meta.id() == leader)
        .expect("leader");
    let metrics = leader_node.meta.raft().metrics().borrow().clone();
    let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([1, 2]));
    // The two remaining nodes still commit; removing an unknown node is refused.
    let reply = nodes[0]
        .meta
        .schema_change("CREATE KEYSPACE k2", false)
        .await
        .expect("commit");
    converged(&remaining, reply.log_index).await;
    match nodes[0].meta.remove_node(3).await {
        Err(MetaError::Admin(error)) => assert!(error.to_string().contains("not a member")),
        other => panic!("removing a removed node: {other:?}"),
    }
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_over_and_bad_requests_change_nothing() {
    let nodes = three_nodes(|id| config(id, any_port())).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let old_leader = leader_of(&all).await;
    let survivors: Vec<&Node> = all
        .iter()
        .copied()
        .filter(|node| node.meta.id() != old_leader)
        .collect();
    // Asked through a follower; the leader removes itself and steps down.
    let reply = survivors[0]
        .meta
        .remove_node(old_leader)
        .await
        .expect("remove the leader");
    let views = converged(&survivors, reply.log_index).await;
    assert!(!views[0].state.members.contains_key(&old_leader));
    let new_leader = leader_of(&survivors).await;
    assert_ne!(new_leader, old_leader);
    // A refused request travels back through forwarding and changes nothing.
    let before = survivors[1].meta.view();
    for attempt in [
        survivors[1].meta.set_replication("ks", 0).await,
        survivors[1].meta.set_replication("ks", 10).await,
        survivors[1].meta.schema_change("", false).await,
    ] {
        match attempt {
            Err(MetaError::Admin(AdminError::Rejected(reason))) => {
                assert!(
                    reason.contains("_MAX"),
                    "the reason names the limit: {reason}"
                );
            }
            other => panic!("a bad request was not rejected: {other:?}"),
        }
    }
    let reply = survivors[1]
        .meta
        .schema_change("CREATE KEYSPACE after", false)
        .await
        .expect("commit");
    let views = converged(&survivors, reply.log_index).await;
    for view in &views {
        assert_eq!(view.epoch(), before.epoch());
        assert_eq!(view.state.keyspaces, before.state.keyspaces);
        assert_eq!(view.schema_version(), before.schema_version() + 1);
    }
    shutdown(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_changes_still_commit() {
    let nodes = three_nodes(|id| config(id, any_port())).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let old_leader = leader_of(&all).await;
    let (stopped, survivors): (Vec<&Node>, Vec<&Node>) = all
        .into_iter()
        .partition(|node| node.meta.id() == old_leader);
    stopped[0].meta.shutdown().await.expect("leader stops");
    // Proposed on a survivor: waits out the election, then commits.
    let reply = survivors[0]
        .meta
        .schema_change("ALTER TABLE ks.t ADD v int", false)
        .await
        .expect("commit after the leader stopped");
    assert_eq!(reply.schema_version, 1);
    let views = converged(&survivors, reply.log_index).await;
    assert_eq!(views[0].state, views[1].state);
    let new_leader = leader_of(&survivors).await;
    assert_ne!(new_leader, old_leader);
    for node in survivors {
        node.meta.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_from_its_engine_and_catches_up() {
    // Snapshot every 4 entries and keep no log below it, so the leader purges
    // what the stopped node missed and the node must install a snapshot.
    let small_log = |id| {
        let mut config = config(id, any_port());
        config.snapshot_every_entries = 4;
        config.log_entries_kept = 0;
        config
    };
    let mut nodes = three_nodes(small_log).await;
    let reply = nodes[0].meta.set_replication("ks", 3).await.expect("rf");
    converged(&nodes.iter().collect::<Vec<_>>(), reply.log_index).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let follower_idx = nodes
        .iter()
        .position(|node| node.meta.id() != leader)
        .expect("a follower");
    let follower = nodes.remove(follower_idx);
    let stopped_view = follower.meta.view();
    let stopped_last_log = follower
        .meta
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .expect("a log");
    let address = follower.address();
    let id = follower.meta.id();
    follower.meta.shutdown().await.expect("follower stops");

    let mut last = reply;
    for version in 1..=10 {
        last = nodes[0]
            .meta
            .schema_change(
                &format!("CREATE TABLE ks.r{version} (k int PRIMARY KEY)"),
                true,
            )
            .await
            .expect("commit with one node down");
    }
    let running: Vec<&Node> = nodes.iter().collect();
    converged(&running, last.log_index).await;
    let leader_node = running
        .iter()
        .find(|n| n.meta.id() == leader)
        .expect("leader");
    // Wait for the leader to purge past what the stopped node holds.
    let mut metrics = leader_node.meta.raft().metrics();
    tokio::time::timeout(
        WAIT,
        metrics.wait_for(|m| m.purged.is_some_and(|p| p.index > stopped_last_log)),
    )
    .await
    .expect("the leader purges its log")
    .expect("metrics");

    // Restart on the same engine and address.
    let mut restart = small_log(id);
    restart.listen = address;
    let meta = MetaNode::start(restart, Arc::clone(&follower.engine))
        .await
        .expect("restart");
    // Before it hears from anyone, it serves what it stored.
    let recovered = meta.view();
    assert_eq!(recovered.state, stopped_view.state);
    assert_eq!(recovered.applied_index, stopped_view.applied_index);
    let restarted = Node {
        meta,
        engine: follower.engine,
    };
    let views = converged(&[&restarted, &nodes[0]], last.log_index).await;
    assert_eq!(views[0].state, views[1].state);
    assert_eq!(views[0].schema_version(), 10);
    nodes.push(restarted);
    // And it takes part again: a change proposed through it commits everywhere.
    let reply = nodes[2]
        .meta
        .schema_change("DROP TABLE ks.r1", false)
        .await
        .expect("commit");
    let views = converged(&nodes.iter().collect::<Vec<_>>(), reply.log_index).await;
    assert!(views.iter().all(|view| view.schema_version() == 11));
    shutdown(&nodes).await;
}
