//! The Rust `scylla` driver (protocol v4) against a `concord start`
//! process: connect (it reads system.local, system.peers and
//! system_schema), DDL, prepared statements with token-aware routing, paging
//! through a stream, a batch, and LWT `[applied]`.

use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::Batch;
use scylla::statement::unprepared::Statement;

use crate::cql_node::Node;

async fn run(node: &Node) -> Result<(), Box<dyn std::error::Error>> {
    let session: Session = SessionBuilder::new()
        .known_node_addr(node.address)
        .build()
        .await?;
    session
        .query_unpaged(
            "CREATE KEYSPACE rs WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await?;
    session
        .query_unpaged(
            "CREATE TABLE rs.kv (k int, c int, v text, PRIMARY KEY (k, c))",
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    let insert = session
        .prepare("INSERT INTO rs.kv (k, c, v) VALUES (?, ?, ?)")
        .await?;
    assert!(
        insert.is_token_aware(),
        "partition key indexes must reach the driver"
    );
    for c in 0..250 {
        session
            .execute_unpaged(&insert, (7_i32, c, format!("v{c}")))
            .await?;
    }
    let mut select = Statement::new("SELECT c, v FROM rs.kv WHERE k = 7");
    select.set_page_size(40);
    let rows: Vec<(i32, String)> = session
        .query_iter(select, &[])
        .await?
        .rows_stream::<(i32, String)>()?
        .try_collect()
        .await?;
    assert_eq!(rows.len(), 250);
    assert_eq!(rows[249], (249, "v249".to_owned()));

    // skip_metadata: the driver decodes rows with the metadata it cached at
    // PREPARE, and the node sends none.
    let mut point = session
        .prepare("SELECT c, v FROM rs.kv WHERE k = ? AND c = ?")
        .await?;
    point.set_use_cached_result_metadata(true);
    let row: (i32, String) = session
        .execute_unpaged(&point, (7_i32, 3_i32))
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(row, (3, "v3".to_owned()));

    // List elements by index (bound) and by value: read and write in one
    // transaction on the node.
    session
        .query_unpaged(
            "CREATE TABLE rs.lists (k int PRIMARY KEY, l list<text>, s set<int>)",
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    session
        .query_unpaged(
            "INSERT INTO rs.lists (k, l, s) VALUES (1, ['a', 'b', 'c', 'b'], {1, 2})",
            &[],
        )
        .await?;
    let set_element = session
        .prepare("UPDATE rs.lists SET l[?] = ? WHERE k = ?")
        .await?;
    session
        .execute_unpaged(&set_element, (2_i32, "C", 1_i32))
        .await?;
    let delete_element = session
        .prepare("DELETE l[?], s[?] FROM rs.lists WHERE k = ?")
        .await?;
    session
        .execute_unpaged(&delete_element, (0_i32, 2_i32, 1_i32))
        .await?;
    let remove_values = session
        .prepare("UPDATE rs.lists SET l = l - ? WHERE k = ?")
        .await?;
    session
        .execute_unpaged(&remove_values, (vec!["b".to_owned()], 1_i32))
        .await?;
    let (list, set): (Vec<String>, Vec<i32>) = session
        .query_unpaged("SELECT l, s FROM rs.lists WHERE k = 1", &[])
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!((list, set), (vec!["C".to_owned()], vec![1]));
    let error = session
        .execute_unpaged(&set_element, (7_i32, "x", 1_i32))
        .await
        .expect_err("index past the end");
    assert!(error.to_string().contains("out of bounds"), "{error}");

    let mut batch = Batch::default();
    batch.append_statement("INSERT INTO rs.kv (k, c, v) VALUES (8, 1, 'a')");
    batch.append_statement("INSERT INTO rs.kv (k, c, v) VALUES (9, 1, 'b')");
    session.batch(&batch, ((), ())).await?;
    let (count,): (i64,) = session
        .query_unpaged("SELECT count(*) FROM rs.kv WHERE k IN (8, 9)", &[])
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(count, 2);

    let lwt = "INSERT INTO rs.kv (k, c, v) VALUES (10, 1, 'x') IF NOT EXISTS";
    let (applied,): (bool,) = session
        .query_unpaged(lwt, &[])
        .await?
        .into_rows_result()?
        .single_row()?;
    assert!(applied);
    // Not applied: `[applied]` and the row that is in the way, as Cassandra does.
    let existing: (bool, i32, i32, String) = session
        .query_unpaged(lwt, &[])
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(existing, (false, 10, 1, "x".to_owned()));
    let error = session
        .query_unpaged("SELECT nope FROM rs.kv", &[])
        .await
        .expect_err("unknown column");
    assert!(error.to_string().contains("nope"), "{error}");

    // ALTER TABLE RENAME (primary key columns) and ALTER KEYSPACE: the
    // rows stay, found under the new name; the driver sees the keyspace change.
    session
        .query_unpaged("ALTER TABLE rs.kv RENAME c TO position", &[])
        .await?;
    session
        .query_unpaged(
            "ALTER KEYSPACE rs WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    let (value,): (String,) = session
        .query_unpaged("SELECT v FROM rs.kv WHERE k = 7 AND position = 249", &[])
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(value, "v249");
    let (replication,): (std::collections::HashMap<String, String>,) = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'rs'",
            &[],
        )
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(
        replication.get("replication_factor").map(String::as_str),
        Some("3")
    );
    Ok(())
}

#[test]
fn rust_scylla_driver_round_trips() {
    let node = Node::start("");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run(&node));
    if let Err(error) = result {
        panic!("scylla driver: {error}");
    }
}
