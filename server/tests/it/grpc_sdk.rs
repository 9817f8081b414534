//! The Rust SDK (`concord-client`) against the gRPC endpoint: an embedded
//! node (Db + gRPC server in this process, ephemeral port) for schema,
//! typed rows, transactions, SQL as Arrow and change streams; bad input and
//! its status codes; feed retention and `POSITION_EXPIRED`; and a started
//! `concord start` process where a write through CQL (the scylla driver) is
//! visible through the SDK's read and its SQL query.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analytics::{config, fast_options};
use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;
use concord_client::{Client, Op, Row, SqlOptions, StartAt, Store, Transaction, Value, codes};
use concord_columnar::follower::FollowerOptions;
use concord_server::Db;
use concord_server::db::AnalyticsOptions;
use concord_server::grpc::{GrpcServer, Limits};

/// The replica merges every 20 ms and retention runs every 10 ms: the feed
/// is dropped as soon as nothing holds it.
fn eager_retention() -> AnalyticsOptions {
    AnalyticsOptions {
        follower: FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_millis(20),
        },
        feed_retention_interval: Duration::from_millis(10),
        ..AnalyticsOptions::default()
    }
}

/// An embedded node: the database and its gRPC endpoint on a free port.
async fn embedded(
    dir: &std::path::Path,
    analytics: AnalyticsOptions,
) -> (Arc<Db>, GrpcServer, Client) {
    let db = Arc::new(Db::open_with_analytics(&config(dir), analytics).expect("open"));
    let server = GrpcServer::start(
        db.clone(),
        "127.0.0.1:0".parse().unwrap(),
        Limits::default(),
    )
    .await
    .expect("grpc server");
    let client = Client::connect(&format!("http://{}", server.local_address()))
        .await
        .expect("connect");
    (db, server, client)
}

fn int64(batch: &RecordBatch, column: &str) -> i64 {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column} in {:?}", batch.schema()));
    let array = array
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap_or_else(|| panic!("{column} is {:?}", array.data_type()));
    assert!(!array.is_null(0));
    array.value(0)
}

const KEYSPACE: &str =
    "CREATE KEYSPACE bank WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_node_serves_schema_rows_transactions_sql_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, server, client) = embedded(dir.path(), fast_options()).await;

    // Schema through CQL text; describe and list.
    client.execute("", KEYSPACE, vec![]).await.unwrap();
    client
        .execute(
            "bank",
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint, owner text)",
            vec![],
        )
        .await
        .unwrap();
    client
        .execute(
            "bank",
            "CREATE TABLE kinds (k text, c int, tags set<text>, scores map<text, int>, \
             pair tuple<int, text>, amount decimal, big varint, at timestamp, ip inet, \
             uid uuid, ratio float, PRIMARY KEY (k, c))",
            vec![],
        )
        .await
        .unwrap();
    let schema = client.describe_table("bank", "kinds").await.unwrap();
    assert_eq!(
        schema.columns[..2],
        [
            (
                "k".to_owned(),
                "text".to_owned(),
                "partition_key".to_owned()
            ),
            ("c".to_owned(), "int".to_owned(), "clustering".to_owned()),
        ]
    );
    assert!(
        schema
            .columns
            .contains(&("scores".into(), "map<text, int>".into(), "regular".into())),
        "{schema:?}"
    );
    assert!(
        schema.cql.starts_with("CREATE TABLE bank.kinds"),
        "{}",
        schema.cql
    );
    let mut tables = client.list_tables("bank").await.unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            ("bank".into(), "accounts".into()),
            ("bank".into(), "kinds".into())
        ]
    );

    // The change stream, from now: it sees the writes below.
    let mut changes = client
        .subscribe("bank", "accounts", StartAt::Now)
        .await
        .unwrap();

    // Typed rows: every kind round-trips; a set comes back sorted.
    let row = Row::new()
        .with("k", "a")
        .with("c", 1)
        .with("tags", Value::Set(vec!["z".into(), "b".into(), "z".into()]))
        .with(
            "scores",
            Value::Map(vec![(Value::from("x"), Value::Int(3))]),
        )
        .with(
            "pair",
            Value::Tuple(vec![Value::Int(7), Value::from("seven")]),
        )
        .with(
            "amount",
            Value::Decimal {
                unscaled: "-1234".into(),
                scale: 2,
            },
        )
        .with(
            "big",
            Value::Varint("123456789012345678901234567890".into()),
        )
        .with("at", Value::Timestamp(1_700_000_000_123))
        .with("ip", Value::Inet("10.1.2.3".parse().unwrap()))
        .with("uid", Value::Uuid([0x42; 16]))
        .with("ratio", 0.5);
    client
        .write_rows("bank", "kinds", vec![row.clone(), row.clone().with("c", 2)])
        .await
        .unwrap();
    let read = client
        .read_rows("bank", "kinds", Row::new().with("k", "a"))
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    let mut expected = row
        .clone()
        .with("tags", Value::Set(vec!["b".into(), "z".into()]));
    assert_eq!(read[0], expected);
    expected.set("c", 2);
    assert_eq!(read[1], expected);
    let one = client
        .read_rows_with(
            "bank",
            "kinds",
            Row::new().with("k", "a").with("c", 2),
            &["c", "ratio"],
            0,
        )
        .await
        .unwrap();
    assert_eq!(one, [Row::new().with("c", 2).with("ratio", 0.5)]);

    // Transactions: a transfer that holds, then one that does not.
    client
        .write_rows(
            "bank",
            "accounts",
            vec![
                Row::new()
                    .with("id", 1)
                    .with("balance", 100)
                    .with("owner", "ann"),
                Row::new()
                    .with("id", 2)
                    .with("balance", 5)
                    .with("owner", "bob"),
            ],
        )
        .await
        .unwrap();
    let transfer = |amount: i64, from_balance: i64, to_balance: i64| {
        Transaction::new("bank")
            .read("sender", "accounts", Row::new().with("id", 1))
            .read("receiver", "accounts", Row::new().with("id", 2))
            .condition("sender", "balance", Op::Ge, amount)
            .exists("receiver")
            .upsert(
                "accounts",
                Row::new()
                    .with("id", 1)
                    .with("balance", from_balance - amount),
            )
            .upsert(
                "accounts",
                Row::new()
                    .with("id", 2)
                    .with("balance", to_balance + amount),
            )
    };
    let outcome = client.transact(transfer(60, 100, 5)).await.unwrap();
    assert!(outcome.applied);
    assert!(outcome.write_time > 0);
    assert_eq!(
        outcome.reads["sender"],
        Row::new()
            .with("id", 1)
            .with("balance", 100)
            .with("owner", "ann")
    );
    let refused = client.transact(transfer(60, 40, 65)).await.unwrap();
    assert!(!refused.applied);
    assert_eq!(
        refused.reads["sender"].get("balance"),
        Some(&Value::Int(40))
    );
    let absent = client
        .transact(
            Transaction::new("bank")
                .read("nobody", "accounts", Row::new().with("id", 9))
                .absent("nobody")
                .upsert("accounts", Row::new().with("id", 9).with("balance", 1)),
        )
        .await
        .unwrap();
    assert!(absent.applied);
    assert!(!absent.reads.contains_key("nobody"));

    // The same through a CQL transaction block with typed binds.
    let block = client
        .execute(
            "bank",
            "BEGIN TRANSACTION LET s = (SELECT balance FROM accounts WHERE id = ?); \
             SELECT s.balance; COMMIT TRANSACTION",
            vec![Value::Int(1)],
        )
        .await
        .unwrap();
    assert_eq!(block.rows[0].get("s.balance"), Some(&Value::Int(40)));

    // SQL: a fresh snapshot on the replica sees every commit before it.
    let result = client
        .sql_with(
            "SELECT count(*) AS n, sum(balance) AS total FROM bank.accounts",
            SqlOptions {
                store: Store::Columnar,
                max_staleness: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(result.store, "columnar");
    assert_eq!(result.num_rows(), 1);
    assert_eq!(int64(&result.batches[0], "n"), 3);
    assert_eq!(int64(&result.batches[0], "total"), 40 + 65 + 1);
    let lookup = client
        .sql("SELECT balance FROM bank.accounts WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(int64(&lookup[0], "balance"), 65);

    // Changes: the accounts writes in order, with write times and cells.
    let mut seen: Vec<(String, i64, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "changes so far: {seen:?}");
        let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a change in time")
            .expect("stream open")
            .expect("change");
        assert!(change.write_time > 0);
        let balance = change
            .cells
            .iter()
            .find(|(column, op, _)| column == "balance" && op == "set")
            .and_then(|(_, _, value)| value.as_i64())
            .unwrap_or(-1);
        let id = change
            .partition_key
            .get("id")
            .and_then(Value::as_i64)
            .unwrap();
        seen.push((change.operation.clone(), id, balance));
    }
    assert_eq!(
        seen,
        [
            ("upsert".into(), 1, 100),
            ("upsert".into(), 2, 5),
            ("upsert".into(), 1, 40),
            ("upsert".into(), 2, 65),
            ("upsert".into(), 9, 1),
        ]
    );

    // Delete, then the row is gone and the change stream says so.
    client
        .delete_rows("bank", "accounts", Row::new().with("id", 9))
        .await
        .unwrap();
    assert!(
        client
            .read_rows("bank", "accounts", Row::new().with("id", 9))
            .await
            .unwrap()
            .is_empty()
    );
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change in time")
        .expect("stream open")
        .expect("change");
    // A table without clustering columns: deleting the row deletes its partition.
    assert_eq!(change.operation, "delete_partition");
    assert_eq!(change.partition_key.get("id"), Some(&Value::Int(9)));
    server.stop();
}

fn expect_code<T: std::fmt::Debug>(
    result: Result<T, concord_client::Error>,
    grpc: tonic::Code,
    code: &str,
    needle: &str,
) {
    let error = result.expect_err("the call must fail");
    assert_eq!(error.grpc_code(), Some(grpc), "{error}");
    assert_eq!(error.code(), Some(code), "{error}");
    assert!(
        error.to_string().contains(needle),
        "{error} lacks {needle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_status_codes_and_error_details() {
    use tonic::Code;
    let dir = tempfile::tempdir().unwrap();
    let (_db, server, client) = embedded(dir.path(), fast_options()).await;
    client.execute("", KEYSPACE, vec![]).await.unwrap();
    client
        .execute(
            "bank",
            "CREATE TABLE t (id int PRIMARY KEY, v int, s text)",
            vec![],
        )
        .await
        .unwrap();

    expect_code(
        client
            .read_rows("bank", "nope", Row::new().with("id", 1))
            .await,
        Code::NotFound,
        codes::NOT_FOUND,
        "bank.nope",
    );
    expect_code(
        client
            .subscribe("nokeyspace", "t", StartAt::Now)
            .await
            .map(|_| ()),
        Code::NotFound,
        codes::NOT_FOUND,
        "nokeyspace",
    );
    expect_code(
        client
            .write_rows("bank", "t", vec![Row::new().with("id", "one")])
            .await,
        Code::InvalidArgument,
        codes::INVALID_VALUE,
        "a text value does not fit",
    );
    expect_code(
        client
            .write_rows(
                "bank",
                "t",
                vec![Row::new().with("id", 1).with("v", 1_i64 << 40)],
            )
            .await,
        Code::InvalidArgument,
        codes::INVALID_VALUE,
        "out of range",
    );
    expect_code(
        client
            .write_rows("bank", "t", vec![Row::new().with("id", 1).with("w", 1)])
            .await,
        Code::InvalidArgument,
        codes::INVALID_REQUEST,
        "has no column w",
    );
    expect_code(
        client.execute("bank", "SELEC * FROM t", vec![]).await,
        Code::InvalidArgument,
        codes::SYNTAX_ERROR,
        "",
    );
    expect_code(
        client
            .execute("bank", "SELECT * FROM t WHERE id = ?", vec![])
            .await,
        Code::InvalidArgument,
        codes::INVALID_REQUEST,
        "1 bind markers but 0 values",
    );
    expect_code(
        client
            .execute("bank", "CREATE TABLE t (id int PRIMARY KEY)", vec![])
            .await,
        Code::AlreadyExists,
        codes::ALREADY_EXISTS,
        "",
    );
    expect_code(
        client.sql("SELECT nonexistent_column FROM bank.t").await,
        Code::InvalidArgument,
        codes::SQL_ERROR,
        "nonexistent_column",
    );
    expect_code(
        client.sql("SELECT * FROM bank.missing_table").await,
        Code::InvalidArgument,
        codes::SQL_ERROR,
        "missing_table",
    );
    expect_code(
        client
            .transact(
                Transaction::new("bank")
                    .read("r", "t", Row::new().with("id", 1))
                    .condition("r", "v", Op::Gt, "text"),
            )
            .await,
        Code::InvalidArgument,
        codes::INVALID_VALUE,
        "",
    );
    expect_code(
        client
            .transact(Transaction::new("bank").read("Bad Name", "t", Row::new().with("id", 1)))
            .await,
        Code::InvalidArgument,
        codes::INVALID_REQUEST,
        "plain lower case identifier",
    );
    // Nothing was written by the refused calls, and the node still serves.
    client
        .write_rows(
            "bank",
            "t",
            vec![Row::new().with("id", 1).with("v", 2).with("s", "ok")],
        )
        .await
        .unwrap();
    let rows = client
        .read_rows("bank", "t", Row::new().with("id", 1))
        .await
        .unwrap();
    assert_eq!(
        rows,
        [Row::new().with("id", 1).with("v", 2).with("s", "ok")]
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_from_a_position_retention_dropped_is_position_expired() {
    let dir = tempfile::tempdir().unwrap();
    let analytics = eager_retention();
    let (db, server, client) = embedded(dir.path(), analytics).await;
    client.execute("", KEYSPACE, vec![]).await.unwrap();
    client
        .execute("bank", "CREATE TABLE t (id int PRIMARY KEY, v int)", vec![])
        .await
        .unwrap();
    for id in 0..40 {
        client
            .write_rows("bank", "t", vec![Row::new().with("id", id).with("v", id)])
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while concord_storage::feed::retention_floor(db.engine().as_ref())
        .unwrap()
        .0
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "retention never dropped the feed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    expect_code(
        client
            .subscribe("bank", "t", StartAt::Position(1))
            .await
            .map(|_| ()),
        tonic::Code::FailedPrecondition,
        codes::POSITION_EXPIRED,
        "dropped by retention",
    );
    server.stop();
}

/// A live change stream holds the feed: with retention running every 10 ms
/// and the replica merging every 20 ms, a subscriber that reads nothing until
/// every write is merged still gets every change, in order; once it is
/// dropped, retention moves past what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_change_stream_holds_feed_retention_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let analytics = eager_retention();
    let db = Arc::new(Db::open_with_analytics(&config(dir.path()), analytics).expect("open"));
    // A small stream buffer and 2 KB changes: most of the stream cannot sit
    // in the server's channel or HTTP/2 windows, it must stay in the feed.
    let server = GrpcServer::start(
        db.clone(),
        "127.0.0.1:0".parse().unwrap(),
        Limits {
            change_stream_buffer: 1,
            ..Limits::default()
        },
    )
    .await
    .expect("grpc server");
    let client = Client::connect(&format!("http://{}", server.local_address()))
        .await
        .expect("connect");
    client.execute("", KEYSPACE, vec![]).await.unwrap();
    client
        .execute(
            "bank",
            "CREATE TABLE t (id int PRIMARY KEY, v text)",
            vec![],
        )
        .await
        .unwrap();
    let mut changes = client.subscribe("bank", "t", StartAt::Now).await.unwrap();
    let writes = 300;
    let payload = "x".repeat(2048);
    for id in 0..writes {
        client
            .write_rows(
                "bank",
                "t",
                vec![Row::new().with("id", id).with("v", payload.as_str())],
            )
            .await
            .unwrap();
    }
    // Every write merged and durable in the replica, and retention has run
    // many times since: without the hold it would have dropped them.
    let end = db.feed().frontier().position_end;
    let replica = db.columnar().unwrap().replica().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.durable_position() < end {
        assert!(Instant::now() < deadline, "the replica never merged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seen = Vec::new();
    while seen.len() < writes as usize {
        let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s")
            .expect("the stream is open")
            .expect("no POSITION_EXPIRED while the stream holds the feed");
        seen.push(change.partition_key);
    }
    let expected: Vec<Row> = (0..writes).map(|id| Row::new().with("id", id)).collect();
    assert_eq!(seen, expected);
    // Dropped, the stream releases its hold: retention drops the records.
    drop(changes);
    let deadline = Instant::now() + Duration::from_secs(20);
    while concord_storage::feed::retention_floor(db.engine().as_ref()).unwrap() < end {
        assert!(
            Instant::now() < deadline,
            "retention never moved past a dropped stream's hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_write_to_a_started_node_is_visible_through_the_sdk_read_and_sql() {
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;
    let node = crate::cql_node::Node::start("");
    let session: Session = SessionBuilder::new()
        .known_node_addr(node.address)
        .build()
        .await
        .unwrap();
    session.query_unpaged(KEYSPACE, &[]).await.unwrap();
    session
        .query_unpaged(
            "CREATE TABLE bank.events (id int PRIMARY KEY, amount bigint, who text)",
            &[],
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            "INSERT INTO bank.events (id, amount, who) VALUES (?, ?, ?)",
            (7_i32, 250_i64, "cql"),
        )
        .await
        .unwrap();
    let client = Client::connect(&format!("http://{}", node.grpc_address))
        .await
        .unwrap();
    let rows = client
        .read_rows("bank", "events", Row::new().with("id", 7))
        .await
        .unwrap();
    assert_eq!(
        rows,
        [Row::new()
            .with("id", 7)
            .with("amount", 250)
            .with("who", "cql")]
    );
    let batches = client
        .sql("SELECT count(*) AS n, sum(amount) AS total FROM bank.events")
        .await
        .unwrap();
    assert_eq!(int64(&batches[0], "n"), 1);
    assert_eq!(int64(&batches[0], "total"), 250);
    // And an SDK write is visible to CQL.
    client
        .write_rows(
            "bank",
            "events",
            vec![
                Row::new()
                    .with("id", 8)
                    .with("amount", 1)
                    .with("who", "sdk"),
            ],
        )
        .await
        .unwrap();
    let result = session
        .query_unpaged("SELECT who FROM bank.events WHERE id = 8", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let (who,): (String,) = result.single_row().unwrap();
    assert_eq!(who, "sdk");
    let tables: BTreeMap<_, _> = client.list_tables("").await.unwrap().into_iter().collect();
    assert_eq!(tables.get("bank").map(String::as_str), Some("events"));
}
