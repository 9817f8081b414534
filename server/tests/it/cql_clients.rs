//! Real clients against a `concord start` process: the Python
//! cassandra-driver (server/tests/python/driver_test.py) and cqlsh
//! (server/tests/python/cqlsh_script.cql).

use std::process::Command;

use crate::cql_node::{Node, repository_root, venv_bin};

#[test]
fn python_driver_passes_its_checks() {
    let bin = venv_bin();
    let node = Node::start("");
    let script = repository_root().join("server/tests/python/driver_test.py");
    let output = Command::new(bin.join("python"))
        .arg(&script)
        .arg(node.address.ip().to_string())
        .arg(node.address.port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all driver checks passed"),
        "driver_test.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn cqlsh_runs_a_script_with_describe_and_an_error() {
    let bin = venv_bin();
    let node = Node::start("");
    let script = repository_root().join("server/tests/python/cqlsh_script.cql");
    let output = Command::new(bin.join("cqlsh"))
        .arg(node.address.ip().to_string())
        .arg(node.address.port().to_string())
        .arg("-f")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let both = format!("{stdout}\n{stderr}");
    for expected in [
        "| {'new', 'returning'} | {x: 1, y: 2}",
        "2024-05-01 10:05:00.000000+0000 | /cart",
        "(2 rows)",
        "n_clicks",
        "CREATE KEYSPACE shell WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '1'}",
        "CREATE TYPE shell.point (",
        "CREATE TABLE shell.clicks (",
        ") WITH CLUSTERING ORDER BY (at DESC)",
        "AND default_time_to_live = 86400",
        "system_schema",
        "shell.no_such_table does not exist",
    ] {
        assert!(
            both.contains(expected),
            "cqlsh output lacks {expected:?}:\n{both}"
        );
    }
    assert!(!both.contains("Traceback"), "{both}");
    // `-e` with a bad statement exits non-zero with the server's message.
    let output = Command::new(bin.join("cqlsh"))
        .arg(node.address.ip().to_string())
        .arg(node.address.port().to_string())
        .args(["-e", "SELEC 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("SyntaxException") && stderr.contains("line 1:1"),
        "{stderr}"
    );
}

#[test]
fn demo_ingests_reads_and_analyses_over_cql() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--events", "600", "--users", "12"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "ingested 600 events for 12 users",
        "600 events before, 600 after (idempotent: yes)",
        "a user's 5 most recent events",
        "purchases: 120 in",
        "(601 events)",
        "demo: done",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
}
