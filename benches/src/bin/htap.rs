//! The analytic path beside DuckDB, in one run over the same data: TPC-H
//! (Q1, Q3, Q5, Q6, Q18) and a clickstream table loaded through Concord's
//! write path (`Db::write`), queried on the columnar replica
//! (`/*+ COLUMNAR */`), on the row store (`/*+ ROW_STORE */`, a full scan),
//! and by DuckDB over Parquet files exported from the same replica. Also the
//! write path's cost of the change feed (analytics on vs off) and the
//! freshness lag of default and bounded-staleness reads.
//!
//! Run: `cargo run --profile bench -p concord-benches --bin htap -- [--sf 0.01]
//! [--clicks 100000] [--runs 3] [--no-duckdb] [--memory-pool-mib 8192]
//! [--row-scan-repeat-max-secs 30] [--row-scan-cap-secs 60] [--no-row-scan]
//! [--row-segment-decoded-mib 6144] [--explain]`. The first run creates a
//! Python venv with `duckdb` (PyPI) under the target directory. A binary, not
//! a `[[bench]]` target: bench targets build with the crate's
//! dev-dependencies, whose features force a second release build of the
//! whole Arrow/DataFusion stack.
//!
//! Prints medians and the ratios replica/DuckDB and row-scan/replica, and the
//! replica's first run (cold: the first read of a row segment parses its
//! footer). Each query's line prints as soon as its row-store scan ends; a
//! row-store scan is stopped at `--row-scan-cap-secs` and prints as `> cap`,
//! its ratio as the lower bound `>= N x`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_benches::{median, quantile};
use concord_columnar::ColumnarOptions;
use concord_server::Db;
use concord_server::config::{CommitSync, Config};
use concord_server::db::AnalyticsOptions;
use concord_server::sql::{Freshness, SqlError, SqlOptions, StoreChoice};
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::types::CqlType;
use concord_storage::value::{ClusteringOrder, CqlValue, Decimal};
use num_bigint::BigInt;

/// How long `main` keeps retrying its catch-up query after the load.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(600);
/// A row-store scan whose first run takes longer than this is not repeated
/// (its time is that one run, marked in the output); `--row-scan-repeat-max-secs`.
const ROW_SCAN_REPEAT_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// A row-store scan (in fact every query of the measured database: its
/// `ColumnarOptions::query_time_max`) is stopped after this long, so a
/// large scale factor cannot hang the run; `--row-scan-cap-secs`. The
/// replica's queries and the Parquet export stay far below it.
const ROW_SCAN_CAP_DEFAULT: Duration = Duration::from_secs(60);
/// The analytics memory pool of the measured database (`--memory-pool-mib`):
/// the row-store full scan holds whole tables (Q18 holds lineitem twice), and
/// past the pool it fails with `ResourcesExhausted`; the node's default is
/// 1 GiB. The replica's Parquet scans stream and need far less.
const MEMORY_POOL_MIB_DEFAULT: usize = 8 << 10;
/// The memory the measured database's row segments may hold decoded as Arrow
/// (`--row-segment-decoded-mib`; the node keeps none by default). Enough for
/// SF 1 (lineitem alone is estimated at over 1 GiB decoded). 0 reads every
/// scan from Parquet.
const ROW_SEGMENT_DECODED_MIB_DEFAULT: usize = 6 << 10;
/// Mutations per `Db::write` while loading.
const LOAD_BATCH_ROWS: usize = 1000;
/// The DuckDB release the venv installs.
const DUCKDB_VERSION: &str = "1.5.6";
/// Days of 1970-01-01 in CQL's `date` encoding (epoch at 2^31).
const CQL_DATE_EPOCH: u32 = 1 << 31;
/// Days from 1970-01-01 to 1992-01-01, TPC-H's first date.
const TPCH_DATE_OFFSET: i32 = 8035;

#[derive(Debug)]
struct Args {
    scale_factor: f64,
    clicks: usize,
    runs: usize,
    duckdb: bool,
    row_scan_repeat_max: Duration,
    row_scan_cap: Duration,
    memory_pool_mib: usize,
    row_segment_decoded_mib: usize,
    /// Print `EXPLAIN ANALYZE` of every query on the replica (profiling).
    explain: bool,
    /// Skip the row-store scans (profiling the replica against DuckDB).
    row_scan: bool,
}

fn args() -> Result<Args> {
    let mut args = Args {
        scale_factor: 0.01,
        clicks: 100_000,
        runs: 3,
        duckdb: true,
        row_scan_repeat_max: ROW_SCAN_REPEAT_MAX_DEFAULT,
        row_scan_cap: ROW_SCAN_CAP_DEFAULT,
        memory_pool_mib: MEMORY_POOL_MIB_DEFAULT,
        row_segment_decoded_mib: ROW_SEGMENT_DECODED_MIB_DEFAULT,
        explain: false,
        row_scan: true,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--sf" => args.scale_factor = iter.next().context("--sf N")?.parse()?,
            "--clicks" => args.clicks = iter.next().context("--clicks N")?.parse()?,
            "--runs" => args.runs = iter.next().context("--runs N")?.parse()?,
            "--no-duckdb" => args.duckdb = false,
            "--explain" => args.explain = true,
            "--no-row-scan" => args.row_scan = false,
            "--row-segment-decoded-mib" => {
                args.row_segment_decoded_mib = iter
                    .next()
                    .context("--row-segment-decoded-mib N")?
                    .parse()?
            }
            "--memory-pool-mib" => {
                args.memory_pool_mib = iter.next().context("--memory-pool-mib N")?.parse()?
            }
            "--row-scan-repeat-max-secs" => {
                args.row_scan_repeat_max = Duration::from_secs_f64(
                    iter.next()
                        .context("--row-scan-repeat-max-secs N")?
                        .parse()?,
                )
            }
            "--row-scan-cap-secs" => {
                args.row_scan_cap =
                    Duration::from_secs_f64(iter.next().context("--row-scan-cap-secs N")?.parse()?)
            }
            // cargo bench passes --bench; ignore harness flags.
            other if other.starts_with("--") => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn col(name: &str, ty: CqlType, kind: ColumnKind) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        ty,
        kind,
    }
}

fn create(
    db: &Db,
    keyspace: &str,
    name: &str,
    columns: Vec<ColumnSpec>,
    ttl: u32,
) -> Result<Arc<TableDef>> {
    db.create_keyspace(
        KeyspaceDef {
            name: keyspace.into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Lenient,
    )?;
    db.create_table(
        TableSpec {
            keyspace: keyspace.into(),
            name: name.into(),
            columns,
            options: TableOptions {
                default_time_to_live_seconds: ttl,
                ..TableOptions::default()
            },
        },
        IfExists::Lenient,
    )?;
    Ok(db.table(keyspace, name)?)
}

/// Buffers rows of one table and writes them through `Db::write`.
struct Loader<'a> {
    db: &'a Db,
    table: Arc<TableDef>,
    pending: Vec<Mutation>,
    n_rows: usize,
}

impl<'a> Loader<'a> {
    fn new(db: &'a Db, table: Arc<TableDef>) -> Self {
        Loader {
            db,
            table,
            pending: Vec::new(),
            n_rows: 0,
        }
    }

    /// `values` name every column: partition key, clustering, then cells.
    fn row(&mut self, values: Vec<(&str, CqlValue)>) -> Result<()> {
        let mut partition_key = Vec::new();
        let mut clustering = Vec::new();
        let mut cells = Vec::new();
        for (name, value) in values {
            let column = self.table.column(name).context("column")?;
            match column.kind {
                ColumnKind::PartitionKey => partition_key.push(value),
                ColumnKind::Clustering(_) => clustering.push(value),
                _ => cells.push((column.id, CellOp::Set(Some(value)))),
            }
        }
        self.pending.push(Mutation {
            table: self.table.id,
            partition_key,
            ops: vec![RowOp::Upsert {
                clustering,
                liveness: Liveness::RowMarker,
                ttl: Ttl::TableDefault,
                cells,
            }],
        });
        self.n_rows += 1;
        if self.pending.len() == LOAD_BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.db.write(std::mem::take(&mut self.pending))?;
        }
        Ok(())
    }
}

fn text(value: impl ToString) -> CqlValue {
    CqlValue::Text(value.to_string())
}

fn money(value: tpchgen::decimal::TPCHDecimal) -> CqlValue {
    CqlValue::Double(value.0 as f64 / 100.0)
}

fn date(value: tpchgen::dates::TPCHDate) -> CqlValue {
    CqlValue::Date(CQL_DATE_EPOCH.wrapping_add_signed(value.into_inner() + TPCH_DATE_OFFSET))
}

fn load_tpch(db: &Db, sf: f64) -> Result<usize> {
    use ColumnKind::{Clustering, PartitionKey as Pk, Regular as R};
    use CqlType::{Bigint, Date, Double, Int, Text};
    use tpchgen::generators::*;
    let mut n_rows = 0;
    let region = create(
        db,
        "tpch",
        "region",
        vec![
            col("r_regionkey", Bigint, Pk),
            col("r_name", Text, R),
            col("r_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, region);
    for r in RegionGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("r_regionkey", CqlValue::Bigint(r.r_regionkey)),
            ("r_name", text(r.r_name)),
            ("r_comment", text(r.r_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    let nation = create(
        db,
        "tpch",
        "nation",
        vec![
            col("n_nationkey", Bigint, Pk),
            col("n_name", Text, R),
            col("n_regionkey", Bigint, R),
            col("n_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, nation);
    for n in NationGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("n_nationkey", CqlValue::Bigint(n.n_nationkey)),
            ("n_name", text(n.n_name)),
            ("n_regionkey", CqlValue::Bigint(n.n_regionkey)),
            ("n_comment", text(n.n_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    let supplier = create(
        db,
        "tpch",
        "supplier",
        vec![
            col("s_suppkey", Bigint, Pk),
            col("s_name", Text, R),
            col("s_address", Text, R),
            col("s_nationkey", Bigint, R),
            col("s_phone", Text, R),
            col("s_acctbal", Double, R),
            col("s_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, supplier);
    for s in SupplierGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("s_suppkey", CqlValue::Bigint(s.s_suppkey)),
            ("s_name", text(s.s_name)),
            ("s_address", text(&s.s_address)),
            ("s_nationkey", CqlValue::Bigint(s.s_nationkey)),
            ("s_phone", text(&s.s_phone)),
            ("s_acctbal", money(s.s_acctbal)),
            ("s_comment", text(&s.s_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    let customer = create(
        db,
        "tpch",
        "customer",
        vec![
            col("c_custkey", Bigint, Pk),
            col("c_name", Text, R),
            col("c_address", Text, R),
            col("c_nationkey", Bigint, R),
            col("c_phone", Text, R),
            col("c_acctbal", Double, R),
            col("c_mktsegment", Text, R),
            col("c_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, customer);
    for c in CustomerGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("c_custkey", CqlValue::Bigint(c.c_custkey)),
            ("c_name", text(c.c_name)),
            ("c_address", text(&c.c_address)),
            ("c_nationkey", CqlValue::Bigint(c.c_nationkey)),
            ("c_phone", text(&c.c_phone)),
            ("c_acctbal", money(c.c_acctbal)),
            ("c_mktsegment", text(c.c_mktsegment)),
            ("c_comment", text(c.c_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    let orders = create(
        db,
        "tpch",
        "orders",
        vec![
            col("o_orderkey", Bigint, Pk),
            col("o_custkey", Bigint, R),
            col("o_orderstatus", Text, R),
            col("o_totalprice", Double, R),
            col("o_orderdate", Date, R),
            col("o_orderpriority", Text, R),
            col("o_clerk", Text, R),
            col("o_shippriority", Int, R),
            col("o_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, orders);
    for o in OrderGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("o_orderkey", CqlValue::Bigint(o.o_orderkey)),
            ("o_custkey", CqlValue::Bigint(o.o_custkey)),
            ("o_orderstatus", text(o.o_orderstatus)),
            ("o_totalprice", money(o.o_totalprice)),
            ("o_orderdate", date(o.o_orderdate)),
            ("o_orderpriority", text(o.o_orderpriority)),
            ("o_clerk", text(o.o_clerk)),
            ("o_shippriority", CqlValue::Int(o.o_shippriority)),
            ("o_comment", text(o.o_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    let lineitem = create(
        db,
        "tpch",
        "lineitem",
        vec![
            col("l_orderkey", Bigint, Pk),
            col("l_linenumber", Int, Clustering(ClusteringOrder::Asc)),
            col("l_partkey", Bigint, R),
            col("l_suppkey", Bigint, R),
            col("l_quantity", Double, R),
            col("l_extendedprice", Double, R),
            col("l_discount", Double, R),
            col("l_tax", Double, R),
            col("l_returnflag", Text, R),
            col("l_linestatus", Text, R),
            col("l_shipdate", Date, R),
            col("l_commitdate", Date, R),
            col("l_receiptdate", Date, R),
            col("l_shipinstruct", Text, R),
            col("l_shipmode", Text, R),
            col("l_comment", Text, R),
        ],
        0,
    )?;
    let mut loader = Loader::new(db, lineitem);
    for l in LineItemGenerator::new(sf, 1, 1).iter() {
        loader.row(vec![
            ("l_orderkey", CqlValue::Bigint(l.l_orderkey)),
            ("l_linenumber", CqlValue::Int(l.l_linenumber)),
            ("l_partkey", CqlValue::Bigint(l.l_partkey)),
            ("l_suppkey", CqlValue::Bigint(l.l_suppkey)),
            ("l_quantity", CqlValue::Double(l.l_quantity as f64)),
            ("l_extendedprice", money(l.l_extendedprice)),
            ("l_discount", money(l.l_discount)),
            ("l_tax", money(l.l_tax)),
            ("l_returnflag", text(l.l_returnflag)),
            ("l_linestatus", text(l.l_linestatus)),
            ("l_shipdate", date(l.l_shipdate)),
            ("l_commitdate", date(l.l_commitdate)),
            ("l_receiptdate", date(l.l_receiptdate)),
            ("l_shipinstruct", text(l.l_shipinstruct)),
            ("l_shipmode", text(l.l_shipmode)),
            ("l_comment", text(l.l_comment)),
        ])?;
    }
    loader.flush()?;
    n_rows += loader.n_rows;
    Ok(n_rows)
}

/// A deterministic generator (xorshift64*), so every run loads the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The clickstream of the design brief's users: `events_by_user`,
/// partitioned by `(user_id, bucket_date)`, clustered by
/// `event_time DESC, event_id`, 30-day default TTL.
fn load_clicks(db: &Db, n_events: usize) -> Result<usize> {
    use ColumnKind::{Clustering, PartitionKey as Pk, Regular as R};
    let table = create(
        db,
        "clicks",
        "events_by_user",
        vec![
            col("user_id", CqlType::Bigint, Pk),
            col("bucket_date", CqlType::Date, Pk),
            col(
                "event_time",
                CqlType::Timestamp,
                Clustering(ClusteringOrder::Desc),
            ),
            col("event_id", CqlType::Uuid, Clustering(ClusteringOrder::Asc)),
            col("session_id", CqlType::Bigint, R),
            col("event_type", CqlType::Text, R),
            col("product_id", CqlType::Bigint, R),
            col("category", CqlType::Text, R),
            col("price", CqlType::Decimal, R),
            col(
                "properties",
                CqlType::Map(Box::new(CqlType::Text), Box::new(CqlType::Text)),
                R,
            ),
        ],
        30 * 24 * 3600,
    )?;
    let mut loader = Loader::new(db, table);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n_users = (n_events / 20).max(1) as u64;
    // 2026-11-01 00:00 UTC, in days and milliseconds since the Unix epoch.
    let first_day: i64 = 20_393;
    for idx in 0..n_events as u64 {
        let user = rng.below(n_users);
        let day = first_day + rng.below(14) as i64;
        let millis = day * 86_400_000 + rng.below(86_400_000) as i64;
        let product = rng.below(2000);
        let kind = match rng.below(100) {
            0..70 => "view",
            70..90 => "add_to_cart",
            _ => "purchase",
        };
        // The price moves a little by day: what price sensitivity looks at.
        let cents = 500 + (product * 7919 % 20_000) as i64 + (day % 7) * 100;
        let mut event_id = [0u8; 16];
        event_id[..8].copy_from_slice(&idx.to_be_bytes());
        event_id[8..].copy_from_slice(&rng.next().to_be_bytes());
        event_id[6] = (event_id[6] & 0x0f) | 0x40;
        event_id[8] = (event_id[8] & 0x3f) | 0x80;
        let device = if rng.below(3) == 0 {
            "desktop"
        } else {
            "mobile"
        };
        loader.row(vec![
            ("user_id", CqlValue::Bigint(user as i64)),
            (
                "bucket_date",
                CqlValue::Date(CQL_DATE_EPOCH.wrapping_add_signed(day as i32)),
            ),
            ("event_time", CqlValue::Timestamp(millis)),
            ("event_id", CqlValue::Uuid(event_id)),
            (
                "session_id",
                CqlValue::Bigint((user * 1000 + (millis / 3_600_000) as u64 % 1000) as i64),
            ),
            ("event_type", text(kind)),
            ("product_id", CqlValue::Bigint(product as i64)),
            ("category", text(format!("cat-{:02}", product % 20))),
            (
                "price",
                CqlValue::Decimal(Decimal {
                    unscaled: BigInt::from(cents),
                    scale: 2,
                }),
            ),
            (
                "properties",
                CqlValue::Map(vec![
                    (text("device"), text(device)),
                    (
                        text("ref"),
                        text(if product.is_multiple_of(3) {
                            "ad"
                        } else {
                            "search"
                        }),
                    ),
                ]),
            ),
        ])?;
    }
    loader.flush()?;
    Ok(loader.n_rows)
}

const QUERIES: &[(&str, &str)] = &[
    (
        "tpch_q1",
        "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price, \
      sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, \
      avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc, count(*) AS count_order \
      FROM tpch.lineitem WHERE l_shipdate <= date '1998-09-02' GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
    ),
    (
        "tpch_q3",
        "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate, o_shippriority \
      FROM tpch.customer, tpch.orders, tpch.lineitem WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey \
      AND l_orderkey = o_orderkey AND o_orderdate < date '1995-03-15' AND l_shipdate > date '1995-03-15' \
      GROUP BY l_orderkey, o_orderdate, o_shippriority ORDER BY revenue DESC, o_orderdate LIMIT 10",
    ),
    (
        "tpch_q5",
        "SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue FROM tpch.customer, tpch.orders, \
      tpch.lineitem, tpch.supplier, tpch.nation, tpch.region WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
      AND l_suppkey = s_suppkey AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey \
      AND r_name = 'ASIA' AND o_orderdate >= date '1994-01-01' AND o_orderdate < date '1995-01-01' \
      GROUP BY n_name ORDER BY revenue DESC",
    ),
    (
        "tpch_q6",
        "SELECT sum(l_extendedprice * l_discount) AS revenue FROM tpch.lineitem WHERE l_shipdate >= date '1994-01-01' \
      AND l_shipdate < date '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
    ),
    (
        "tpch_q18",
        "SELECT c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity) AS quantity \
      FROM tpch.customer, tpch.orders, tpch.lineitem WHERE o_orderkey IN (SELECT l_orderkey FROM tpch.lineitem \
      GROUP BY l_orderkey HAVING sum(l_quantity) > 300) AND c_custkey = o_custkey AND o_orderkey = l_orderkey \
      GROUP BY c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice ORDER BY o_totalprice DESC, o_orderdate LIMIT 100",
    ),
    (
        "clicks_funnel_by_category",
        "SELECT category, sum(CASE WHEN event_type = 'view' THEN 1 ELSE 0 END) AS views, \
      sum(CASE WHEN event_type = 'add_to_cart' THEN 1 ELSE 0 END) AS carts, \
      sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS purchases \
      FROM clicks.events_by_user GROUP BY category ORDER BY category",
    ),
    (
        "clicks_repeat_purchases",
        "SELECT count(*) AS repeat_buyers FROM (SELECT user_id, product_id FROM clicks.events_by_user \
      WHERE event_type = 'purchase' GROUP BY user_id, product_id HAVING count(*) > 1) AS t",
    ),
    (
        "clicks_top_products_per_day",
        "SELECT bucket_date, product_id, n FROM (SELECT bucket_date, product_id, count(*) AS n, \
      row_number() OVER (PARTITION BY bucket_date ORDER BY count(*) DESC, product_id) AS place \
      FROM clicks.events_by_user WHERE event_type = 'purchase' GROUP BY bucket_date, product_id) AS t \
      WHERE place <= 3 ORDER BY bucket_date, place",
    ),
    (
        "clicks_sessions_per_user",
        "SELECT avg(sessions) AS avg_sessions, max(sessions) AS max_sessions FROM \
      (SELECT user_id, count(DISTINCT session_id) AS sessions FROM clicks.events_by_user GROUP BY user_id) AS t",
    ),
    (
        "clicks_price_sensitivity",
        "SELECT CAST(floor(CAST(price AS DOUBLE) / 50) AS BIGINT) AS band, \
      sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS purchases, count(*) AS events \
      FROM clicks.events_by_user WHERE event_type IN ('view', 'purchase') GROUP BY band ORDER BY band",
    ),
];

/// The first run's time, the median of the runs, the rows returned and the
/// number of runs: `runs`, or one when the first run took longer than
/// `repeat_max` (the row-store scan at large scale factors).
fn time_concord(
    db: &Db,
    query: &str,
    store: StoreChoice,
    runs: usize,
    repeat_max: Duration,
) -> std::result::Result<(Duration, Duration, usize, usize), SqlError> {
    let options = SqlOptions {
        store,
        freshness: Freshness::Latest,
    };
    let mut samples = Vec::new();
    let mut n_rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let result = db.sql_with(query, &options)?;
        samples.push(started.elapsed());
        n_rows = result.batches.iter().map(|b| b.num_rows()).sum();
        if samples[0] > repeat_max {
            break;
        }
    }
    let first = samples.first().copied().unwrap_or_default();
    let n_runs = samples.len();
    Ok((first, median(&mut samples), n_rows, n_runs))
}

/// Exports every table to Parquet through the replica, so DuckDB reads the
/// very rows Concord holds.
fn export_parquet(db: &Db, dir: &Path) -> Result<()> {
    for keyspace in db.schema().keyspaces() {
        if keyspace.def.name != "tpch" && keyspace.def.name != "clicks" {
            continue;
        }
        for table in keyspace.tables.values() {
            let columns: Vec<String> = table
                .columns()
                .iter()
                .map(|c| format!("\"{}\"", c.name))
                .collect();
            let query = format!(
                "SELECT /*+ COLUMNAR */ {} FROM {}.{}",
                columns.join(", "),
                keyspace.def.name,
                table.name
            );
            let result = db.sql(&query)?;
            let schema = result
                .batches
                .first()
                .map(|b| b.schema())
                .context("no batches")?;
            let path = dir.join(format!("{}.{}.parquet", keyspace.def.name, table.name));
            let file = std::fs::File::create(&path)?;
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
            for batch in &result.batches {
                writer.write(batch)?;
            }
            writer.close()?;
        }
    }
    Ok(())
}

const DUCKDB_SCRIPT: &str = r#"
import json, sys, time, glob, os
import duckdb
parquet_dir, queries_path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute("SET threads TO 2")
for path in glob.glob(os.path.join(parquet_dir, "*.parquet")):
    keyspace, table = os.path.basename(path)[:-len(".parquet")].split(".")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {keyspace}")
    con.execute(f"CREATE VIEW {keyspace}.{table} AS SELECT * FROM read_parquet('{path}')")
out = {}
for name, query in json.load(open(queries_path)):
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = con.execute(query).fetchall()
        samples.append(time.perf_counter() - started)
    samples.sort()
    out[name] = [samples[len(samples) // 2], len(rows)]
print(json.dumps(out))
"#;

fn duckdb_times(
    target: &Path,
    parquet_dir: &Path,
    runs: usize,
) -> Result<BTreeMap<String, (Duration, usize)>> {
    let venv = target.join("htap-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv failed");
        }
    }
    let installed = Command::new(&python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()?;
    if String::from_utf8_lossy(&installed.stdout).trim() != DUCKDB_VERSION {
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                &format!("duckdb=={DUCKDB_VERSION}"),
            ])
            .status()?;
        if !status.success() {
            bail!("pip install duckdb=={DUCKDB_VERSION} failed");
        }
    }
    let script = parquet_dir.join("duckdb_bench.py");
    std::fs::write(&script, DUCKDB_SCRIPT)?;
    let queries = parquet_dir.join("queries.json");
    std::fs::write(&queries, serde_json::to_string(QUERIES)?)?;
    let output = Command::new(&python)
        .arg(&script)
        .arg(parquet_dir)
        .arg(&queries)
        .arg(runs.to_string())
        .output()?;
    if !output.status.success() {
        bail!(
            "duckdb runner failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let parsed: BTreeMap<String, (f64, usize)> = serde_json::from_slice(&output.stdout)?;
    Ok(parsed
        .into_iter()
        .map(|(name, (secs, rows))| (name, (Duration::from_secs_f64(secs), rows)))
        .collect())
}

fn open(
    dir: &Path,
    analytics: bool,
    memory_pool_bytes: usize,
    row_segment_decoded_bytes_max: usize,
    query_time_max: Option<Duration>,
) -> Result<Db> {
    let config = Config {
        data_dir: dir.to_path_buf(),
        commit_sync: CommitSync::Periodic,
        periodic_sync_ms: 100,
        ..Config::default()
    };
    let options = AnalyticsOptions {
        enabled: analytics,
        columnar: ColumnarOptions {
            memory_pool_bytes,
            row_segment_decoded_bytes_max,
            query_time_max,
            ..ColumnarOptions::default()
        },
        ..AnalyticsOptions::default()
    };
    Ok(Db::open_with_analytics(&config, options)?)
}

/// Single-row writes per second with the feed and replica on and off.
fn write_path_cost(scratch: &Path) -> Result<(f64, f64)> {
    const N_WRITES: i64 = 20_000;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..3 {
        for analytics in [false, true] {
            let dir = scratch.join(format!("write-{round}-{analytics}"));
            let db = open(
                &dir,
                analytics,
                ColumnarOptions::default().memory_pool_bytes,
                ColumnarOptions::default().row_segment_decoded_bytes_max,
                None,
            )?;
            let table = create(
                &db,
                "w",
                "kv",
                vec![
                    col("k", CqlType::Bigint, ColumnKind::PartitionKey),
                    col("v", CqlType::Text, ColumnKind::Regular),
                ],
                0,
            )?;
            let mut loader = Loader::new(&db, table);
            let started = Instant::now();
            for key in 0..N_WRITES {
                loader.row(vec![
                    ("k", CqlValue::Bigint(key)),
                    ("v", text("a value of some thirty bytes..")),
                ])?;
                loader.flush()?;
            }
            let elapsed = started.elapsed();
            if analytics {
                on.push(elapsed)
            } else {
                off.push(elapsed)
            }
            drop(loader);
            drop(db);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let rate = |samples: &mut Vec<Duration>| N_WRITES as f64 / median(samples).as_secs_f64();
    Ok((rate(&mut off), rate(&mut on)))
}

/// Commit-to-visibility lag: a writer commits a row every `period`; a reader
/// loops `SELECT max(seq)`. A row's lag is the time from its commit to the end
/// of the first read that started after the commit and returned it.
fn freshness(
    db: &Arc<Db>,
    freshness: Freshness,
    duration: Duration,
    period: Duration,
    offset: i64,
) -> Result<(Duration, Duration, usize)> {
    let table = db.table("fresh", "t")?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop, table) = (Arc::clone(db), Arc::clone(&stop), table.clone());
        std::thread::spawn(move || -> Result<Vec<(i64, Instant)>> {
            let mut commits = Vec::new();
            let mut seq = offset;
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let mut loader = Loader::new(&db, table.clone());
                loader.row(vec![
                    ("seq", CqlValue::Bigint(seq)),
                    ("v", CqlValue::Bigint(seq)),
                ])?;
                loader.flush()?;
                commits.push((seq, Instant::now()));
                seq += 1;
                let next = started + period * (seq - offset) as u32;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(commits)
        })
    };
    let mut reads: Vec<(Instant, Instant, i64)> = Vec::new();
    let options = SqlOptions {
        store: StoreChoice::Columnar,
        freshness,
    };
    let started = Instant::now();
    while started.elapsed() < duration {
        let read_start = Instant::now();
        let result = db.sql_with("SELECT max(seq) FROM fresh.t", &options)?;
        let column = result.batches[0].column(0);
        let value = arrow::util::display::array_value_to_string(column, 0)?;
        reads.push((read_start, Instant::now(), value.parse().unwrap_or(-1)));
    }
    stop.store(true, Ordering::SeqCst);
    let commits = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let mut lags = Vec::new();
    for (seq, committed) in &commits {
        if let Some((_, end, _)) = reads
            .iter()
            .find(|(start, _, max)| start >= committed && max >= seq)
        {
            lags.push(*end - *committed);
        }
    }
    lags.sort_unstable();
    Ok((quantile(&lags, 0.5), quantile(&lags, 0.99), lags.len()))
}

fn main() -> Result<()> {
    let args = args()?;
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()));
    let scratch = tempfile::tempdir()?;
    println!(
        "htap bench: TPC-H SF {} + {} clickstream events, {} runs per query (medians), analytics memory pool {} MiB",
        args.scale_factor, args.clicks, args.runs, args.memory_pool_mib
    );

    let (off, on) = write_path_cost(scratch.path())?;
    println!(
        "write path (single-row Db::write, no fsync): analytics off {off:.0}/s, on {on:.0}/s, on/off {:.3}",
        on / off
    );

    let db = Arc::new(open(
        &scratch.path().join("db"),
        true,
        args.memory_pool_mib << 20,
        args.row_segment_decoded_mib << 20,
        Some(args.row_scan_cap),
    )?);
    let started = Instant::now();
    let n_tpch = load_tpch(&db, args.scale_factor)?;
    let n_clicks = load_clicks(&db, args.clicks)?;
    let load = started.elapsed();
    println!(
        "loaded {n_tpch} TPC-H rows and {n_clicks} events through Db::write in {:.1} s ({:.0} rows/s)",
        load.as_secs_f64(),
        (n_tpch + n_clicks) as f64 / load.as_secs_f64()
    );
    let caught_up = Instant::now();
    // A default read waits at most `snapshot_wait_max` for the watermark;
    // after a heavy load the follower may trail by more (it applies the feed
    // and merges), so keep asking, within CATCH_UP_WAIT_MAX.
    loop {
        match db.sql("SELECT /*+ COLUMNAR */ count(*) FROM tpch.region") {
            Ok(_) => break,
            Err(SqlError::SnapshotTimeout {
                snapshot,
                watermark,
                ..
            }) if caught_up.elapsed() < CATCH_UP_WAIT_MAX => {
                println!(
                    "replica catching up: {:.1} s after the load, watermark {} ms behind the query's snapshot",
                    caught_up.elapsed().as_secs_f64(),
                    (snapshot - watermark) / 1000
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    println!(
        "replica caught up {:.1} s after the load ({} row-segment passes put off while the follower trailed the feed)",
        caught_up.elapsed().as_secs_f64(),
        db.columnar()
            .context("analytics are on")?
            .replica()
            .n_row_segment_passes_deferred()
    );
    // The follower merges every 10 s; merge now so the queries read the
    // steady state (row segments with the loaded rows) rather than a delta
    // the next merge would fold anyway.
    let merging = Instant::now();
    let replica = db.columnar().context("analytics are on")?.replica();
    replica.merge()?;
    println!(
        "merged the delta into cell and row segments in {:.1} s",
        merging.elapsed().as_secs_f64()
    );
    let row_segment_scans = replica.n_row_segment_scans();
    if args.explain {
        for (name, query) in QUERIES {
            let result = db.sql(&format!("EXPLAIN ANALYZE /*+ COLUMNAR */ {query}"))?;
            println!("--- {name}");
            for batch in &result.batches {
                for row in 0..batch.num_rows() {
                    let mut cells = Vec::new();
                    for column in batch.columns() {
                        cells.push(arrow::util::display::array_value_to_string(column, row)?);
                    }
                    println!("{}", cells.join(" | "));
                }
            }
        }
    }

    // The replica first: its first runs are cold (the Parquet export for
    // DuckDB reads every table through it and parses the segments' footers).
    let mut replica_times = Vec::new();
    for (_, query) in QUERIES {
        let (first, median, rows, _) =
            time_concord(&db, query, StoreChoice::Columnar, args.runs, Duration::MAX)?;
        replica_times.push((first, median, rows));
    }
    println!(
        "full scans through row segments (Parquet): {}",
        replica.n_row_segment_scans() - row_segment_scans
    );
    let duck = if args.duckdb {
        let parquet_dir = scratch.path().join("parquet");
        std::fs::create_dir_all(&parquet_dir)?;
        export_parquet(&db, &parquet_dir)?;
        Some(duckdb_times(&target, &parquet_dir, args.runs)?)
    } else {
        None
    };
    // Freshness before the row-store scans, which are the long part of a
    // large run.
    create(
        &db,
        "fresh",
        "t",
        vec![
            col("seq", CqlType::Bigint, ColumnKind::PartitionKey),
            col("v", CqlType::Bigint, ColumnKind::Regular),
        ],
        0,
    )?;
    let period = Duration::from_millis(5);
    for (label, mode, offset) in [
        ("default (sees every prior commit)", Freshness::Latest, 0),
        (
            "bounded staleness 100 ms",
            Freshness::BoundedStaleness(Duration::from_millis(100)),
            1_000_000,
        ),
    ] {
        let (p50, p99, n) = freshness(&db, mode, Duration::from_secs(5), period, offset)?;
        println!(
            "freshness lag, {label}: p50 {:.1} ms, p99 {:.1} ms over {n} rows (a write every {} ms)",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            period.as_millis()
        );
    }

    // One line per query, printed as soon as its row-store scan ends.
    println!(
        "{:<30} {:>11} {:>11} {:>11} {:>11} {:>14} {:>16} {:>6}",
        "query",
        "1st run ms",
        "replica ms",
        "row-scan ms",
        "duckdb ms",
        "replica/duckdb",
        "row-scan/replica",
        "rows"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let cap_ms = ms(args.row_scan_cap);
    let mut replica_over_duck = Vec::new();
    let mut scan_over_replica = Vec::new();
    let (mut n_single_scans, mut n_capped, mut n_failed) = (0, 0, 0);
    for ((name, query), (first, replica, rows)) in QUERIES.iter().zip(replica_times) {
        let (duck_ms, ratio) = match duck.as_ref().and_then(|d| d.get(*name)) {
            Some((time, duck_rows)) => {
                if *duck_rows != rows {
                    bail!("{name}: the replica returned {rows} rows, DuckDB {duck_rows}");
                }
                let ratio = ms(replica) / ms(*time);
                replica_over_duck.push(ratio);
                (format!("{:.1}", ms(*time)), format!("{ratio:.1}x"))
            }
            None => ("-".into(), "-".into()),
        };
        let (scan_ms, speedup) = if !args.row_scan {
            ("-".into(), "-".into())
        } else {
            match time_concord(
                &db,
                query,
                StoreChoice::RowStore,
                args.runs,
                args.row_scan_repeat_max,
            ) {
                Ok((_, scan, scan_rows, scan_runs)) => {
                    if rows != scan_rows {
                        bail!(
                            "{name}: the replica returned {rows} rows, the row store {scan_rows}"
                        );
                    }
                    let speedup = ms(scan) / ms(replica);
                    scan_over_replica.push(speedup);
                    let star = if scan_runs < args.runs {
                        n_single_scans += 1;
                        "*"
                    } else {
                        ""
                    };
                    (format!("{:.1}{star}", ms(scan)), format!("{speedup:.1}x"))
                }
                // Stopped at the cap (the database's query_time_max): the
                // ratio is a lower bound.
                Err(SqlError::ResourcesExhausted(message))
                    if message.contains("query_time_max") =>
                {
                    n_capped += 1;
                    let speedup = cap_ms / ms(replica);
                    scan_over_replica.push(speedup);
                    (format!("> {cap_ms:.0}"), format!(">= {speedup:.1}x"))
                }
                Err(error) => {
                    n_failed += 1;
                    println!("{name}: the row-store scan failed: {error}");
                    ("failed".into(), "-".into())
                }
            }
        };
        println!(
            "{name:<30} {:>11.1} {:>11.1} {scan_ms:>11} {duck_ms:>11} {ratio:>14} {speedup:>16} {rows:>6}",
            ms(first),
            ms(replica),
        );
    }
    if n_single_scans > 0 {
        println!(
            "* {n_single_scans} row-store scans ran once, not {} times: the first run took longer than {:.0} s",
            args.runs,
            args.row_scan_repeat_max.as_secs_f64()
        );
    }
    if n_capped > 0 {
        println!(
            "> {n_capped} row-store scans were stopped at the cap ({:.0} s, --row-scan-cap-secs): their ratios are lower bounds",
            args.row_scan_cap.as_secs_f64()
        );
    }
    if n_failed > 0 {
        println!("{n_failed} row-store scans failed (left out of the geometric mean)");
    }
    let geo = |ratios: &[f64]| {
        (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp()
    };
    println!(
        "geometric mean: replica/duckdb {:.1}x, row-scan/replica {}{:.1}x",
        geo(&replica_over_duck),
        if n_capped > 0 { ">= " } else { "" },
        geo(&scan_over_replica)
    );
    Ok(())
}
