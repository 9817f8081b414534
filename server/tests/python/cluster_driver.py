"""The Python cassandra-driver against one node of a running Concord cluster:
it must discover every node (system.peers_v2), build the token map from the
ring the metadata holds, and route token-aware.

Usage: cluster_driver.py HOST PORT NODES TOKENS_PER_NODE

Prints "ok <name>" per check and "all cluster checks passed" at the end; the
first failure raises and exits non-zero. Run by
server/tests/it/cluster_peers.rs.
"""

import sys
import time

from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

HOST, PORT, NODES, TOKENS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def ok(name):
    print("ok", name, flush=True)


profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()))
cluster = Cluster(
    [HOST],
    port=PORT,
    execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    connect_timeout=10,
)
session = cluster.connect()

hosts = cluster.metadata.all_hosts()
assert len(hosts) == NODES, [str(host.endpoint) for host in hosts]
assert len({host.endpoint for host in hosts}) == NODES, hosts
assert len({host.host_id for host in hosts}) == NODES, hosts
assert all(host.datacenter == "datacenter1" and host.rack == "rack1" for host in hosts), hosts
ok("discovers every node")

token_map = cluster.metadata.token_map
owners = set(token_map.token_to_host_owner.values())
assert owners == set(hosts), (owners, hosts)
assert len(token_map.ring) == NODES * TOKENS, len(token_map.ring)
ok("token map holds every node's tokens")

# The driver opens a pool to every node it found.
deadline = time.time() + 20
while time.time() < deadline:
    pools = [host for host in hosts if session.get_pool_state().get(host)]
    if len(pools) == NODES:
        break
    time.sleep(0.1)
assert len(pools) == NODES, session.get_pool_state()
ok("connects to every node")

session.execute(
    "CREATE KEYSPACE routed WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}"
)
session.execute("CREATE TABLE routed.t (k int PRIMARY KEY, v int)")
assert cluster.control_connection.wait_for_schema_agreement(wait_time=10), "no schema agreement"
ok("schema agreement after DDL")

replicas = cluster.metadata.get_replicas("routed", b"\x00\x00\x00\x01")
assert len(replicas) == NODES, replicas
ok("token-aware replicas for a key")

# Every node answers, whichever the policy picks.
for host in hosts:
    rows = list(session.execute("SELECT host_id FROM system.local", host=host))
    assert rows[0].host_id == host.host_id, (rows, host)
ok("every node answers as itself")

cluster.shutdown()
print("all cluster checks passed", flush=True)
