//! The write path's cost of the transaction modes: `Db::execute` in `direct`
//! mode (a local sequencer, the caller's thread) against `accord` mode (every
//! transaction through the Accord protocol core on a one-node runtime) with
//! each journal (`txn_journal = engine`: RocksDB's `Family::Txn`; `log`: the
//! dedicated segmented log), in one run, on the same machine.
//!
//! Run: `cargo run --profile bench -p concord-benches --bin txn_modes --
//! [--writes 2000] [--rounds 3]`. For each `commit_sync` (`batch`: fsync per
//! commit; `periodic`: no fsync on the write path) and each configuration
//! (rounds interleaved), one thread does `--writes` single-row blind writes
//! (`Db::write`) and as many read-modify-write transactions (`SET n = n + 1
//! IF EXISTS`); prints the median rate of `--rounds` fresh databases and the
//! ratios to direct and log/engine. Analytics are off, so the numbers are the
//! transaction path alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use concord_benches::median;
use concord_server::Db;
use concord_server::config::{CommitSync, Config, TxnJournal, TxnMode};
use concord_server::db::{
    AnalyticsOptions, Arithmetic, Check, Derivation, DerivedCell, Read, Transaction,
};
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::types::CqlType;
use concord_storage::value::CqlValue;

struct Args {
    writes: i64,
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        writes: 2_000,
        rounds: 3,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next();
        match (flag.as_str(), value) {
            ("--writes", Some(value)) => args.writes = value.parse()?,
            ("--rounds", Some(value)) => args.rounds = value.parse()?,
            (other, _) => bail!("unknown or incomplete flag {other}"),
        }
    }
    Ok(args)
}

/// The configurations compared: direct, accord on the engine journal, accord
/// on the log journal.
const SETUPS: [(TxnMode, TxnJournal); 3] = [
    (TxnMode::Direct, TxnJournal::Engine),
    (TxnMode::Accord, TxnJournal::Engine),
    (TxnMode::Accord, TxnJournal::Log),
];

fn open(dir: &Path, (mode, journal): (TxnMode, TxnJournal), commit_sync: CommitSync) -> Result<Db> {
    let config = Config {
        data_dir: dir.to_path_buf(),
        commit_sync,
        periodic_sync_ms: 100,
        txn_mode: Some(mode),
        txn_journal: journal,
        ..Config::default()
    };
    let options = AnalyticsOptions {
        enabled: false,
        ..AnalyticsOptions::default()
    };
    Ok(Db::open_with_analytics(&config, options)?)
}

fn create(db: &Db) -> Result<Arc<TableDef>> {
    db.create_keyspace(
        KeyspaceDef {
            name: "b".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Strict,
    )?;
    let column = |name: &str, ty: CqlType, kind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    db.create_table(
        TableSpec {
            keyspace: "b".into(),
            name: "kv".into(),
            columns: vec![
                column("k", CqlType::Bigint, ColumnKind::PartitionKey),
                column("v", CqlType::Text, ColumnKind::Regular),
                column("n", CqlType::Bigint, ColumnKind::Regular),
            ],
            options: TableOptions::default(),
        },
        IfExists::Strict,
    )?;
    Ok(db.table("b", "kv")?)
}

fn upsert(table: &TableDef, key: i64, cells: Vec<(&str, CqlValue)>) -> Result<Mutation> {
    let mut ops = Vec::new();
    for (name, value) in cells {
        let Some(column) = table.column(name) else {
            bail!("no column {name}");
        };
        ops.push((column.id, CellOp::Set(Some(value))));
    }
    Ok(Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Bigint(key)],
        ops: vec![RowOp::Upsert {
            clustering: Vec::new(),
            liveness: Liveness::RowMarker,
            ttl: Ttl::TableDefault,
            cells: ops,
        }],
    })
}

/// `UPDATE kv SET n = n + 1 WHERE k = key IF EXISTS`.
fn increment(table: &Arc<TableDef>, key: i64) -> Result<Transaction> {
    let Some(n) = table.column("n") else {
        bail!("no column n");
    };
    Ok(Transaction {
        reads: vec![Read::Row {
            table: table.clone(),
            partition_key: vec![CqlValue::Bigint(key)],
            clustering: Vec::new(),
        }],
        writes: vec![upsert(table, key, vec![("n", CqlValue::Bigint(0))])?],
        condition: vec![Check::RowExists { read: 0 }],
        derived: vec![DerivedCell {
            write: 0,
            op: 0,
            column: n.id,
            read: 0,
            derivation: Derivation::Arithmetic(Arithmetic::Add, CqlValue::Bigint(1)),
        }],
    })
}

/// One fresh database: (blind writes, read-modify-writes) elapsed.
fn run(
    dir: &Path,
    setup: (TxnMode, TxnJournal),
    commit_sync: CommitSync,
    writes: i64,
) -> Result<(Duration, Duration)> {
    let db = open(dir, setup, commit_sync)?;
    let table = create(&db)?;
    let started = Instant::now();
    for key in 0..writes {
        db.write(vec![upsert(
            &table,
            key,
            vec![
                ("v", CqlValue::Text("a value of some thirty bytes..".into())),
                ("n", CqlValue::Bigint(0)),
            ],
        )?])?;
    }
    let blind = started.elapsed();
    let started = Instant::now();
    for key in 0..writes {
        let result = db.execute(increment(&table, key)?)?;
        if !result.applied {
            bail!("increment of {key} did not apply");
        }
    }
    let rmw = started.elapsed();
    drop(db);
    std::fs::remove_dir_all(dir)?;
    Ok((blind, rmw))
}

fn main() -> Result<()> {
    let args = args()?;
    let scratch = tempfile::tempdir()?;
    println!(
        "txn_modes bench: {} single-row writes and {} read-modify-writes per run, one thread, \
         {} rounds (medians), analytics off",
        args.writes, args.writes, args.rounds
    );
    for commit_sync in [CommitSync::Batch, CommitSync::Periodic] {
        let mut blind = vec![Vec::new(); SETUPS.len()];
        let mut rmw = vec![Vec::new(); SETUPS.len()];
        for round in 0..args.rounds {
            for (index, setup) in SETUPS.iter().enumerate() {
                let dir = scratch
                    .path()
                    .join(format!("{commit_sync:?}-{index}-{round}"));
                let (b, r) = run(&dir, *setup, commit_sync, args.writes)?;
                blind[index].push(b);
                rmw[index].push(r);
            }
        }
        let rate = |samples: &mut Vec<Duration>| args.writes as f64 / median(samples).as_secs_f64();
        let mut rates = Vec::new();
        for (index, (mode, journal)) in SETUPS.iter().enumerate() {
            let (b, r) = (rate(&mut blind[index]), rate(&mut rmw[index]));
            println!(
                "commit_sync={commit_sync:?} mode={mode:?} journal={journal:?}: blind writes {b:.0}/s, \
                 read-modify-writes {r:.0}/s"
            );
            rates.push((b, r));
        }
        for (index, name) in [(1, "accord-engine/direct"), (2, "accord-log/direct")] {
            println!(
                "commit_sync={commit_sync:?}: {name} blind {:.3}, read-modify-write {:.3}",
                rates[index].0 / rates[0].0,
                rates[index].1 / rates[0].1
            );
        }
        println!(
            "commit_sync={commit_sync:?}: accord log/engine blind {:.3}, read-modify-write {:.3}",
            rates[2].0 / rates[1].0,
            rates[2].1 / rates[1].1
        );
    }
    Ok(())
}
