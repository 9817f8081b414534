//! Real Postgres and Flight SQL clients against a `concord start` process:
//! psql (Debian's `postgresql-client`), psycopg, and ADBC's Flight SQL driver
//! with pyarrow (server/tests/python/pg_test.py), all installed by `.ci/test`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::cql_node::{Node, repository_root, venv_bin};

/// psql; fails the test (never skips it) when it is not installed.
fn psql_bin() -> PathBuf {
    let path = PathBuf::from("/usr/bin/psql");
    assert!(
        path.exists(),
        "the Postgres client tests need psql: run .ci/test, which installs postgresql-client"
    );
    path
}

fn psql(node: &Node, commands: &[&str]) -> Output {
    let mut command = Command::new(psql_bin());
    command
        .env("PGCONNECT_TIMEOUT", "10")
        .arg("-X")
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "concord",
            "-d",
            "concord",
        ])
        .arg("-p")
        .arg(node.pg_address.port().to_string());
    for each in commands {
        command.arg("-c").arg(each);
    }
    command.output().unwrap()
}

fn cqlsh(node: &Node, statements: &str) {
    let output = Command::new(venv_bin().join("cqlsh"))
        .arg(node.address.ip().to_string())
        .arg(node.address.port().to_string())
        .args(["-e", statements])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cqlsh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn psycopg_cql_and_flight_sql_share_rows_and_report_errors() {
    let bin = venv_bin();
    let node = Node::start("");
    let script = repository_root().join("server/tests/python/pg_test.py");
    let output = Command::new(bin.join("python"))
        .arg(&script)
        .arg(node.address.ip().to_string())
        .arg(node.address.port().to_string())
        .arg(node.pg_address.port().to_string())
        .arg(node.flight_address.port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all pg checks passed"),
        "pg_test.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ok flight sql"), "{stdout}");
}

#[test]
fn psql_lists_describes_and_aggregates() {
    let node = Node::start("");
    cqlsh(
        &node,
        "CREATE KEYSPACE bi WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}; \
         CREATE TABLE bi.visits (site text, day int, hits bigint, PRIMARY KEY (site, day)); \
         INSERT INTO bi.visits (site, day, hits) VALUES ('a', 1, 10); \
         INSERT INTO bi.visits (site, day, hits) VALUES ('a', 2, 20); \
         INSERT INTO bi.visits (site, day, hits) VALUES ('b', 1, 5);",
    );
    let output = psql(
        &node,
        &[
            "\\dt bi.*",
            "\\d bi.visits",
            "SELECT site, count(*) AS days, sum(hits) AS total FROM bi.visits GROUP BY site ORDER BY site",
            "\\dn",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed\n{stdout}\n{stderr}");
    for expected in [
        // \dt
        " bi     | visits | table",
        // \d bi.visits
        "Table \"bi.visits\"",
        " site ",
        " day ",
        " hits ",
        "bigint",
        // the aggregate
        " a    |    2 |    30",
        " b    |    1 |     5",
        "(2 rows)",
    ] {
        assert!(
            stdout.contains(expected),
            "psql output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    // An error names its SQLSTATE-worthy cause and psql exits non-zero.
    let output = psql(&node, &["SELECT * FROM bi.nope"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bi.nope") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn malformed_messages_and_too_many_connections_hurt_no_other_client() {
    let node = Node::start("pg_connections_max = 2");
    cqlsh(
        &node,
        "CREATE KEYSPACE m WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}; \
         CREATE TABLE m.t (k int PRIMARY KEY, v text); INSERT INTO m.t (k, v) VALUES (1, 'one');",
    );
    let address = node.pg_address;
    // Garbage instead of a startup packet: that connection is closed.
    let mut garbage = TcpStream::connect(address).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    let mut buffer = [0u8; 256];
    let read = garbage.read(&mut buffer).unwrap_or(0);
    assert!(read == 0 || buffer[0] == b'E', "{:?}", &buffer[..read]);
    drop(garbage);
    // A startup, then a message whose length field lies (1 GiB): closed too.
    let mut liar = TcpStream::connect(address).unwrap();
    liar.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608_i32.to_be_bytes());
    startup.extend_from_slice(b"user\0concord\0database\0concord\0\0");
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    liar.write_all(&packet).unwrap();
    let mut reply = vec![0u8; 4096];
    let read = liar.read(&mut reply).unwrap();
    assert!(
        read > 0 && reply[0] == b'R',
        "no authentication reply: {:?}",
        &reply[..read]
    );
    liar.write_all(b"Q\x3f\xff\xff\xffSELECT 1").unwrap();
    drop(liar);
    // Another client is unaffected.
    let output = psql(&node, &["SELECT v FROM m.t WHERE k = 1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" one"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Two connections past their startup fill pg_connections_max = 2: a third is
    // refused with 53300's message; once one closes, clients connect again. Each
    // holder waits for the authentication reply, which proves it holds a slot (the
    // connections closed above may still hold theirs for a moment on a loaded
    // machine; a holder refused meanwhile tries again).
    let hold = || -> TcpStream {
        for _ in 0..100 {
            let mut stream = TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(&packet).unwrap();
            let mut reply = [0u8; 256];
            let read = stream.read(&mut reply).unwrap_or(0);
            if read > 0 && reply[0] == b'R' {
                return stream;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no connection slot came free");
    };
    let first = hold();
    let second = hold();
    let output = psql(&node, &["SELECT 1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("too many clients"), "{stderr}");
    drop(first);
    drop(second);
    let mut connected = false;
    for _ in 0..50 {
        if psql(&node, &["SELECT 1"]).status.success() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        connected,
        "clients could not connect after the idle ones closed"
    );
}

/// What `read_everywhere.py` printed for one client.
#[derive(Debug, PartialEq)]
struct ClientAnswer {
    columns: Vec<String>,
    rows: Vec<Vec<serde_json::Value>>,
}

/// psycopg's and ADBC Flight SQL's answers to `query`, by client name.
fn python_answers(node: &Node, query: &str) -> std::collections::BTreeMap<String, ClientAnswer> {
    let output = Command::new(venv_bin().join("python"))
        .arg(repository_root().join("server/tests/python/read_everywhere.py"))
        .arg(node.pg_address.ip().to_string())
        .arg(node.pg_address.port().to_string())
        .arg(node.flight_address.port().to_string())
        .arg(query)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "read_everywhere.py failed on {query}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let columns = value["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|column| column.as_str().unwrap().to_owned())
                .collect();
            let rows = value["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().clone())
                .collect();
            (
                value["client"].as_str().unwrap().to_owned(),
                ClientAnswer { columns, rows },
            )
        })
        .collect()
}

/// The acceptance test: one write through CQL (the real cqlsh),
/// then the same row read through the Rust SDK (gRPC), psql, psycopg and
/// ADBC Flight SQL, all against one started node; and a query with no rows
/// still reports its columns through each.
#[test]
fn a_cql_write_is_visible_through_the_sdk_psql_psycopg_and_flight_sql() {
    use concord_client::{Client, Row, SqlOptions};
    let node = Node::start("");
    cqlsh(
        &node,
        "CREATE KEYSPACE crm WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};
         CREATE TABLE crm.accounts (id int PRIMARY KEY, owner text, balance bigint);
         INSERT INTO crm.accounts (id, owner, balance) VALUES (41, 'ines', 1234);",
    );
    let query = "SELECT id, owner, balance FROM crm.accounts WHERE balance > 1000";

    // The Rust SDK: a typed point read (row store) and the SQL scan (replica).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rows, scan, empty) = runtime.block_on(async {
        let client = Client::connect(&format!("http://{}", node.grpc_address))
            .await
            .unwrap();
        let rows = client
            .read_rows("crm", "accounts", Row::new().with("id", 41))
            .await
            .unwrap();
        let scan = client.sql_with(query, SqlOptions::default()).await.unwrap();
        let empty = client
            .sql_with(
                "SELECT id, owner FROM crm.accounts WHERE balance < 0",
                SqlOptions::default(),
            )
            .await
            .unwrap();
        (rows, scan, empty)
    });
    assert_eq!(
        rows,
        [Row::new()
            .with("id", 41)
            .with("owner", "ines")
            .with("balance", 1234)]
    );
    assert_eq!(scan.store, "columnar", "a scan is the replica's");
    assert_eq!(scan.num_rows(), 1);
    let batch = &scan.batches[0];
    let owner = arrow::array::cast::as_string_array(batch.column_by_name("owner").unwrap());
    assert_eq!(owner.value(0), "ines");
    assert_eq!(empty.num_rows(), 0);
    let empty_columns: Vec<&str> = empty
        .schema
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .collect();
    assert_eq!(
        empty_columns,
        ["id", "owner"],
        "an empty result keeps its schema"
    );

    // psql (Debian's client), unaligned output.
    let output = psql(&node, &["\\pset format unaligned", query]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "psql failed: {stdout}");
    assert!(
        stdout.contains("id|owner|balance\n41|ines|1234\n(1 row)"),
        "psql printed:\n{stdout}"
    );
    let output = psql(
        &node,
        &[
            "\\pset format unaligned",
            "SELECT id, owner FROM crm.accounts WHERE balance < 0",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("id|owner\n(0 rows)"),
        "psql printed:\n{stdout}"
    );

    // psycopg and ADBC Flight SQL from Python.
    let answers = python_answers(&node, query);
    let expected = ClientAnswer {
        columns: vec!["id".into(), "owner".into(), "balance".into()],
        rows: vec![vec![41.into(), "ines".into(), 1234.into()]],
    };
    assert_eq!(answers.get("psycopg"), Some(&expected), "{answers:?}");
    assert_eq!(answers.get("flight_sql"), Some(&expected), "{answers:?}");
    let answers = python_answers(
        &node,
        "SELECT id, owner FROM crm.accounts WHERE balance < 0",
    );
    let expected = ClientAnswer {
        columns: vec!["id".into(), "owner".into()],
        rows: vec![],
    };
    assert_eq!(answers.get("psycopg"), Some(&expected), "{answers:?}");
    assert_eq!(answers.get("flight_sql"), Some(&expected), "{answers:?}");
}
