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

use crate::cluster_schema::{runtime, start_cluster};
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
