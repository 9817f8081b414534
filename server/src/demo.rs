//! `concord demo`: the HTAP story end to end on one node, over CQL.
//!
//! Starts a node (a temporary data directory unless one is given), creates
//! the clickstream table `demo.events_by_user`, ingests events as
//! idempotent upserts keyed by a client-supplied `event_id` (re-sending a
//! batch changes no count), reads a user's recent events, runs analytic
//! queries and measures freshness, printing timings. Until the columnar
//! replica lands, the analytic queries are row-store scans (the baseline it
//! must beat).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_server::cql::client::{CqlClient, bind, rows};
use concord_server::cql::error::CqlResult;
use concord_storage::types::CqlType;
use concord_storage::value::{CqlValue, Decimal};

/// What the demo ingests.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub events: usize,
    pub users: usize,
}

/// Events per batch (one transaction each).
const BATCH_EVENTS: usize = 100;
/// 2026-11-23 as days since the epoch.
const BUCKET_DAY: i64 = 20_780;
const KINDS: [&str; 5] = ["view", "view", "view", "cart", "purchase"];
const CATEGORIES: [&str; 4] = ["books", "games", "garden", "music"];

fn date_value() -> CqlValue {
    CqlValue::Date((BUCKET_DAY + (1 << 31)) as u32)
}

fn event_id(index: usize) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&(index as u64).to_be_bytes());
    bytes[0..4].copy_from_slice(b"demo");
    bytes[6] = 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

fn event_values(
    index: usize,
    users: usize,
) -> CqlResult<Vec<cassandra_protocol::types::value::Value>> {
    let properties = CqlType::Map(Box::new(CqlType::Text), Box::new(CqlType::Text));
    let device = if index.is_multiple_of(3) {
        "mobile"
    } else {
        "desktop"
    };
    Ok(vec![
        bind(&CqlValue::Int((index % users) as i32), &CqlType::Int)?,
        bind(&date_value(), &CqlType::Date)?,
        bind(
            &CqlValue::Timestamp(BUCKET_DAY * 86_400_000 + index as i64 * 1_000),
            &CqlType::Timestamp,
        )?,
        bind(&CqlValue::Uuid(event_id(index)), &CqlType::Uuid)?,
        bind(
            &CqlValue::Text(KINDS[index % KINDS.len()].into()),
            &CqlType::Text,
        )?,
        bind(&CqlValue::Text(format!("p{}", index % 50)), &CqlType::Text)?,
        bind(
            &CqlValue::Text(CATEGORIES[index % CATEGORIES.len()].into()),
            &CqlType::Text,
        )?,
        bind(
            &CqlValue::Decimal(Decimal {
                unscaled: ((index % 100) as i64 * 100 + 99).into(),
                scale: 2,
            }),
            &CqlType::Decimal,
        )?,
        bind(
            &CqlValue::Map(vec![(
                CqlValue::Text("device".into()),
                CqlValue::Text(device.into()),
            )]),
            &properties,
        )?,
    ])
}

async fn count(client: &mut CqlClient, query: &str) -> CqlResult<i64> {
    let result = client.query(query).await?;
    match rows(&result, &[CqlType::Bigint])?
        .first()
        .and_then(|row| row[0].clone())
    {
        Some(CqlValue::Bigint(n)) => Ok(n),
        _ => Ok(0),
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1_000.0)
}

/// Runs the demo against the CQL endpoint at `address`.
///
/// # Errors
/// Any failed request.
pub async fn run(address: SocketAddr, options: DemoOptions) -> CqlResult<()> {
    let mut client = CqlClient::connect(address).await?;
    println!("demo: connected over CQL to {address}");
    client.query("DROP KEYSPACE IF EXISTS demo").await?;
    client
        .query("CREATE KEYSPACE demo WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        .await?;
    client
        .query(
            "CREATE TABLE demo.events_by_user (
                user_id int, bucket_date date, event_time timestamp, event_id uuid,
                kind text, product text, category text, price decimal,
                properties map<text, text>,
                PRIMARY KEY ((user_id, bucket_date), event_time, event_id)
            ) WITH CLUSTERING ORDER BY (event_time DESC, event_id ASC)
              AND default_time_to_live = 2592000",
        )
        .await?;
    println!(
        "demo: created demo.events_by_user (partition (user_id, bucket_date), newest first, 30-day TTL)"
    );
    let insert = client
        .prepare(
            "INSERT INTO demo.events_by_user (user_id, bucket_date, event_time, event_id, kind, \
             product, category, price, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .await?;
    let started = Instant::now();
    for start in (0..options.events).step_by(BATCH_EVENTS) {
        let end = (start + BATCH_EVENTS).min(options.events);
        let batch = (start..end)
            .map(|index| event_values(index, options.users))
            .collect::<CqlResult<Vec<_>>>()?;
        client.batch(&insert, batch).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "demo: ingested {} events for {} users in {} ({:.0} events/s, batches of {BATCH_EVENTS}, durable)",
        options.events,
        options.users,
        millis(elapsed),
        options.events as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let total_query = "SELECT count(*) FROM demo.events_by_user";
    let before = count(&mut client, total_query).await?;
    let resend = (0..BATCH_EVENTS.min(options.events))
        .map(|index| event_values(index, options.users))
        .collect::<CqlResult<Vec<_>>>()?;
    client.batch(&insert, resend).await?;
    let after = count(&mut client, total_query).await?;
    println!(
        "demo: re-sent the first batch: {before} events before, {after} after (idempotent: {})",
        if before == after { "yes" } else { "NO" }
    );

    let recent = client
        .prepare(
            "SELECT event_time, kind, product, price FROM demo.events_by_user \
             WHERE user_id = ? AND bucket_date = ? LIMIT 5",
        )
        .await?;
    let mut latencies = Vec::new();
    let mut shown = Vec::new();
    for round in 0..200 {
        let user = (round * 7) % options.users;
        let values = vec![
            bind(&CqlValue::Int(user as i32), &CqlType::Int)?,
            bind(&date_value(), &CqlType::Date)?,
        ];
        let started = Instant::now();
        let result = client.execute(&recent, values).await?;
        latencies.push(started.elapsed());
        if round == 0 {
            shown = rows(
                &result,
                &[
                    CqlType::Timestamp,
                    CqlType::Text,
                    CqlType::Text,
                    CqlType::Decimal,
                ],
            )?;
        }
    }
    latencies.sort();
    println!(
        "demo: a user's 5 most recent events (point reads): p50 {}, p99 {} over {} reads",
        millis(latencies[latencies.len() / 2]),
        millis(latencies[latencies.len() * 99 / 100]),
        latencies.len()
    );
    for row in shown {
        let cells: Vec<String> = row
            .iter()
            .map(|cell| {
                cell.as_ref()
                    .map_or("null".into(), concord_server::cql::values::display)
            })
            .collect();
        println!("demo:   {}", cells.join(" | "));
    }

    println!("demo: analytics (row-store scans until the columnar replica lands):");
    for (label, query) in [
        ("events", total_query.to_owned()),
        (
            "purchases",
            "SELECT count(*) FROM demo.events_by_user WHERE kind = 'purchase' ALLOW FILTERING".to_owned(),
        ),
        (
            "mobile carts",
            "SELECT count(*) FROM demo.events_by_user WHERE kind = 'cart' AND properties CONTAINS 'mobile' ALLOW FILTERING".to_owned(),
        ),
    ] {
        let started = Instant::now();
        let n = count(&mut client, &query).await?;
        println!("demo:   {label}: {n} in {}", millis(started.elapsed()));
    }
    let started = Instant::now();
    let result = client
        .query("SELECT max(price), min(price) FROM demo.events_by_user")
        .await?;
    let extremes = rows(&result, &[CqlType::Decimal, CqlType::Decimal])?;
    let show = |value: &Option<CqlValue>| {
        value
            .as_ref()
            .map_or("null".into(), concord_server::cql::values::display)
    };
    if let Some(row) = extremes.first() {
        println!(
            "demo:   price range: {} .. {} in {}",
            show(&row[1]),
            show(&row[0]),
            millis(started.elapsed())
        );
    }

    let fresh_index = options.events + 1_000_000;
    let started = Instant::now();
    client
        .execute(&insert, event_values(fresh_index, options.users)?)
        .await?;
    let written = started.elapsed();
    let seen = count(&mut client, total_query).await?;
    println!(
        "demo: freshness: a new event acknowledged in {} is counted by the next query ({seen} events): 0 ms lag on the row store",
        millis(written)
    );
    println!("demo: done");
    Ok(())
}
