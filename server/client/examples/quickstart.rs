//! A tour of the SDK against a running node: schema, typed rows, a
//! conditional transfer, SQL as Arrow, and the change stream.
//!
//! ```sh
//! cargo run --release -- start                      # in one terminal
//! cargo run -p concord-client --example quickstart  # in another
//! ```
//! `CONCORD_GRPC` overrides the endpoint (default `http://127.0.0.1:50051`).

use std::time::Duration;

use concord_client::{Client, Op, Row, StartAt, Transaction, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint =
        std::env::var("CONCORD_GRPC").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let client = Client::connect(&endpoint).await?;
    client
        .execute(
            "",
            "CREATE KEYSPACE IF NOT EXISTS quickstart WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            vec![],
        )
        .await?;
    client
        .execute(
            "quickstart",
            "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance bigint, tags set<text>)",
            vec![],
        )
        .await?;
    let mut changes = client
        .subscribe("quickstart", "accounts", StartAt::Now)
        .await?;

    client
        .write_rows(
            "quickstart",
            "accounts",
            vec![
                Row::new()
                    .with("id", 1)
                    .with("balance", 100)
                    .with("tags", Value::Set(vec!["gold".into()])),
                Row::new().with("id", 2).with("balance", 5),
            ],
        )
        .await?;
    let rows = client
        .read_rows("quickstart", "accounts", Row::new().with("id", 1))
        .await?;
    println!("account 1: {:?}", rows.first());

    let transfer = Transaction::new("quickstart")
        .read("from", "accounts", Row::new().with("id", 1))
        .condition("from", "balance", Op::Ge, 60)
        .upsert("accounts", Row::new().with("id", 1).with("balance", 40))
        .upsert("accounts", Row::new().with("id", 2).with("balance", 65));
    let outcome = client.transact(transfer).await?;
    println!("transfer applied: {}", outcome.applied);

    let batches = client
        .sql("SELECT count(*) AS accounts, sum(balance) AS total FROM quickstart.accounts")
        .await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);

    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(2), changes.next()).await {
            Ok(Some(change)) => {
                let change = change?;
                println!(
                    "change @{} {} {:?} {:?}",
                    change.write_time, change.operation, change.partition_key, change.cells
                );
            }
            _ => break,
        }
    }
    Ok(())
}
