//! `system.local` / `system.peers` / `system.peers_v2` on a cluster member,
//! over real processes: each node lists the other up nodes with their CQL
//! endpoints and ring tokens, and the Python cassandra-driver connected to
//! one node discovers all three and routes token-aware.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use concord_server::cql::client::{CqlClient, rows};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

use crate::cluster_schema::{Member, runtime, start_cluster};
use crate::cql_node::{repository_root, venv_bin};

/// The tokens a node takes by default (`VNODES_PER_NODE_DEFAULT`).
const TOKENS_PER_NODE: usize = 16;

fn tokens_of(value: &Option<CqlValue>) -> Vec<String> {
    match value {
        Some(CqlValue::Set(items)) => items
            .iter()
            .map(|item| match item {
                CqlValue::Text(text) => text.clone(),
                other => panic!("token {other:?}"),
            })
            .collect(),
        other => panic!("tokens {other:?}"),
    }
}

#[test]
fn peers_list_the_other_nodes_and_the_python_driver_routes_token_aware() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let members = start_cluster(dir.path(), 3);
    let cql: Vec<SocketAddr> = members.iter().map(|member| member.cql).collect();
    runtime().block_on(async {
        let mut all_tokens = Vec::new();
        for (index, address) in cql.iter().enumerate() {
            let mut client = CqlClient::connect(*address).await.unwrap();
            let local = client
                .query("SELECT host_id, tokens FROM system.local")
                .await
                .unwrap();
            let local = rows(
                &local,
                &[CqlType::Uuid, CqlType::Set(Box::new(CqlType::Text))],
            )
            .unwrap();
            let local_tokens = tokens_of(&local[0][1]);
            assert_eq!(local_tokens.len(), TOKENS_PER_NODE);
            all_tokens.extend(local_tokens.clone());
            // A member learns of the last node's join at the next Raft
            // heartbeat: wait (bounded) until it lists both peers.
            let deadline = Instant::now() + Duration::from_secs(10);
            let peers = loop {
                let peers = client
                    .query(
                        "SELECT native_address, native_port, host_id, tokens, data_center \
                         FROM system.peers_v2",
                    )
                    .await
                    .unwrap();
                let peers = rows(
                    &peers,
                    &[
                        CqlType::Inet,
                        CqlType::Int,
                        CqlType::Uuid,
                        CqlType::Set(Box::new(CqlType::Text)),
                        CqlType::Text,
                    ],
                )
                .unwrap();
                if peers.len() == 2 || Instant::now() > deadline {
                    break peers;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut listed: Vec<SocketAddr> = peers
                .iter()
                .map(|row| match (&row[0], &row[1]) {
                    (Some(CqlValue::Inet(ip)), Some(CqlValue::Int(port))) => {
                        SocketAddr::new(*ip, u16::try_from(*port).unwrap())
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            listed.sort();
            let mut others: Vec<SocketAddr> = cql
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, address)| *address)
                .collect();
            others.sort();
            assert_eq!(listed, others, "node {}", index + 1);
            for row in &peers {
                assert_ne!(row[2], local[0][0], "a peer has this node's host id");
                assert_eq!(tokens_of(&row[3]).len(), TOKENS_PER_NODE);
                assert_eq!(row[4], Some(CqlValue::Text("datacenter1".into())));
            }
            let v1 = client
                .query("SELECT rpc_address, tokens FROM system.peers")
                .await
                .unwrap();
            assert_eq!(
                rows(&v1, &[CqlType::Inet, CqlType::Set(Box::new(CqlType::Text))])
                    .unwrap()
                    .len(),
                2
            );
        }
        all_tokens.sort();
        all_tokens.dedup();
        assert_eq!(all_tokens.len(), 3 * TOKENS_PER_NODE, "tokens are distinct");
    });

    let output = Command::new(venv_bin().join("python"))
        .arg(repository_root().join("server/tests/python/cluster_driver.py"))
        .arg(cql[0].ip().to_string())
        .arg(cql[0].port().to_string())
        .arg("3")
        .arg(TOKENS_PER_NODE.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all cluster checks passed"),
        "cluster_driver.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for member in members.into_iter().rev() {
        member.stop();
    }
}

/// One EVENT body: (event type, change, the address it names).
fn parse_event(body: &[u8]) -> (String, String, SocketAddr) {
    let mut at = 0;
    let mut string = || {
        let length = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        let text = String::from_utf8(body[at + 2..at + 2 + length].to_vec()).unwrap();
        at += 2 + length;
        text
    };
    let (kind, change) = (string(), string());
    let ip_bytes = body[at] as usize;
    let ip: std::net::IpAddr = match ip_bytes {
        4 => <[u8; 4]>::try_from(&body[at + 1..at + 5]).unwrap().into(),
        16 => <[u8; 16]>::try_from(&body[at + 1..at + 17]).unwrap().into(),
        other => panic!("inet of {other} bytes"),
    };
    let port = i32::from_be_bytes(
        body[at + 1 + ip_bytes..at + 5 + ip_bytes]
            .try_into()
            .unwrap(),
    );
    (
        kind,
        change,
        SocketAddr::new(ip, u16::try_from(port).unwrap()),
    )
}

/// The next EVENT on `stream` (stream id -1), skipping nothing: any other
/// frame fails the test.
fn next_event(stream: &mut std::net::TcpStream) -> (String, String, SocketAddr) {
    let (_, stream_id, opcode, body) = crate::cql_protocol::read_envelope(stream);
    assert_eq!((stream_id, opcode), (-1, 0x0C), "an EVENT on stream -1");
    parse_event(&body)
}

#[test]
fn registered_clients_hear_of_a_joining_node_and_of_a_peer_going_down_and_up() {
    use crate::cql_protocol::{register, start_v4};

    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut members = start_cluster(dir.path(), 2);
    let mut listener = std::net::TcpStream::connect(members[0].cql).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    start_v4(&mut listener);
    // Topology and status changes, not schema changes.
    register(&mut listener, &["TOPOLOGY_CHANGE", "STATUS_CHANGE"]);

    // A schema change is not announced to this connection (it did not ask).
    runtime().block_on(async {
        let mut client = CqlClient::connect(members[1].cql).await.unwrap();
        client
            .query(
                "CREATE KEYSPACE quiet WITH replication = \
                 {'class': 'SimpleStrategy', 'replication_factor': 2}",
            )
            .await
            .unwrap();
    });

    // Node 3 joins: NEW_NODE with its CQL address.
    let cql3 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let endpoints = [
        "--cql-listen-address",
        cql3.as_str(),
        "--pg-listen-address",
        "127.0.0.1:0",
        "--grpc-listen-address",
        "127.0.0.1:0",
    ];
    let seed = members[0].cluster.clone();
    let node3 = Member::start_with(
        &dir.path().join("n3"),
        3,
        "127.0.0.1:0",
        Some(&seed),
        &endpoints,
    );
    let node3_cql = node3.cql;
    assert_eq!(node3_cql.to_string(), cql3);
    let node3_cluster = node3.cluster.clone();
    assert_eq!(
        next_event(&mut listener),
        ("TOPOLOGY_CHANGE".into(), "NEW_NODE".into(), node3_cql)
    );

    // Let node 1's prober see node 3 up (a prober learns a member's first
    // state silently, or announces UP if it saw the endpoint down while
    // node 3 was starting).
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL node 3: its peers' probes fail, STATUS_CHANGE DOWN.
    let killed = Instant::now();
    drop(node3);
    let mut event = next_event(&mut listener);
    if event == ("STATUS_CHANGE".into(), "UP".into(), node3_cql) {
        event = next_event(&mut listener);
    }
    assert_eq!(event, ("STATUS_CHANGE".into(), "DOWN".into(), node3_cql));
    assert!(killed.elapsed() < Duration::from_secs(15));

    // Restarted on the same addresses: STATUS_CHANGE UP.
    let node3 = Member::start_with(&dir.path().join("n3"), 3, &node3_cluster, None, &endpoints);
    assert_eq!(
        next_event(&mut listener),
        ("STATUS_CHANGE".into(), "UP".into(), node3_cql)
    );
    members.push(node3);
    for member in members.into_iter().rev() {
        member.stop();
    }
}
