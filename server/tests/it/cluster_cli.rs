//! `concord cluster up | status | down` as an operator runs them: three
//! detached nodes on loopback, a status that sees them up with the ring
//! split between them, a second `up` refused while they run, and `down`
//! stopping every one.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::binary::BINARY;

/// A base port whose 3 nodes' ports (base + 10i + 0..4) are free now.
fn free_base_port() -> u16 {
    let seed = u64::from(std::process::id()) * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 101) % 4_000) * 10;
        let base = u16::try_from(base).unwrap();
        let free = (0..3u16)
            .flat_map(|node| (0..4u16).map(move |offset| base + node * 10 + offset))
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range found");
}

fn cluster(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    command.arg("cluster").args(args).arg("--data-dir").arg(dir);
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn cluster_up_status_down() {
    let _turn = crate::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("local");
    let base = free_base_port().to_string();
    let up = cluster(&data, &["up", "--nodes", "3", "--base-port", &base]);
    let stop = || cluster(&data, &["down"]);
    if !up.status.success() {
        let _ = stop();
        panic!("cluster up failed:\n{}", text(&up));
    }
    let printed = text(&up);
    for node in 1..=3 {
        assert!(
            printed.contains(&format!("node {node}: cql 127.0.0.1:")),
            "{printed}"
        );
    }
    assert!(printed.contains("cluster up: 3 nodes"), "{printed}");

    let again = cluster(&data, &["up", "--nodes", "3", "--base-port", &base]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let status = cluster(&data, &["status"]);
    let report = text(&status);
    assert!(status.status.success(), "{report}");
    assert!(report.contains("3 of 3 nodes up"), "{report}");
    let rows: Vec<Vec<&str>> = report
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()) && line.contains(" up "))
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{report}");
    let mut share = 0.0;
    for row in &rows {
        // node, state, pid, cql, ranges, share, load, "B", lag...
        assert_eq!(row[1], "up", "{report}");
        assert_eq!(row[4], "16", "16 primary ranges each: {report}");
        share += row[5].trim_end_matches('%').parse::<f64>().unwrap();
        assert!(row[6].parse::<u64>().unwrap() > 0, "load: {report}");
        assert!(row[8..].join(" ").contains("records"), "lag: {report}");
    }
    assert!(
        (share - 100.0).abs() < 0.5,
        "shares sum to {share}: {report}"
    );

    let down = stop();
    let stopped = text(&down);
    assert!(down.status.success(), "{stopped}");
    for node in 1..=3 {
        assert!(
            stopped.contains(&format!("node {node}: stopped")),
            "{stopped}"
        );
    }
    let status = cluster(&data, &["status"]);
    assert!(
        text(&status).contains("0 of 3 nodes up"),
        "{}",
        text(&status)
    );
}
