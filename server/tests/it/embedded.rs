//! The embedded database end to end: schema, transactions, reads, restart,
//! and the errors bad input gets.

use std::sync::Arc;

use concord_server::Db;
use concord_server::config::TxnMode;
use concord_server::db::{Read, ReadResult, Transaction};
use concord_storage::clock::ManualClock;
use concord_storage::partitioner::TokenRange;
use concord_storage::rows::{CellOp, Liveness, Mutation, RowOp, Slice, Ttl};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::types::CqlType;
use concord_storage::value::{ClusteringOrder, CqlValue};

fn keyspace(name: &str) -> KeyspaceDef {
    KeyspaceDef {
        name: name.into(),
        replication: ReplicationStrategy::Simple {
            replication_factor: 1,
        },
        durable_writes: true,
    }
}

fn events_spec() -> TableSpec {
    let column = |name: &str, ty: CqlType, kind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    TableSpec {
        keyspace: "app".into(),
        name: "events".into(),
        columns: vec![
            column("user_id", CqlType::Int, ColumnKind::PartitionKey),
            column(
                "at",
                CqlType::Timestamp,
                ColumnKind::Clustering(ClusteringOrder::Desc),
            ),
            column("kind", CqlType::Text, ColumnKind::Regular),
            column(
                "tags",
                CqlType::Set(Box::new(CqlType::Text)),
                ColumnKind::Regular,
            ),
        ],
        options: TableOptions::default(),
    }
}

fn insert(table: &TableDef, user: i32, at: i64, kind: &str) -> Mutation {
    Mutation {
        table: table.id,
        partition_key: vec![CqlValue::Int(user)],
        ops: vec![RowOp::Upsert {
            clustering: vec![CqlValue::Timestamp(at)],
            liveness: Liveness::RowMarker,
            ttl: Ttl::TableDefault,
            cells: vec![(
                table.column("kind").unwrap().id,
                CellOp::Set(Some(CqlValue::Text(kind.into()))),
            )],
        }],
    }
}

fn kinds(
    db: &Db<impl concord_storage::engine::Engine>,
    table: &TableDef,
    user: i32,
) -> Vec<String> {
    let partition = db
        .read_partition(
            table,
            &[CqlValue::Int(user)],
            &Slice::all(),
            concord_storage::rows::ReadOptions::at(db.now_seconds()),
        )
        .unwrap();
    let kind_id = table.column("kind").unwrap().id;
    partition
        .map(|partition| {
            partition
                .rows
                .iter()
                .map(|row| match &row.columns[&kind_id].value {
                    CqlValue::Text(text) => text.clone(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn schema_and_rows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        assert!(
            db.create_keyspace(keyspace("app"), IfExists::Strict)
                .unwrap()
        );
        let table = db
            .create_table(events_spec(), IfExists::Strict)
            .unwrap()
            .unwrap();
        db.write(vec![
            insert(&table, 1, 1_000, "login"),
            insert(&table, 1, 2_000, "click"),
        ])
        .unwrap();
        db.write(vec![insert(&table, 2, 1_500, "logout")]).unwrap();
        // DESC clustering: newest first.
        assert_eq!(kinds(&db, &table, 1), ["click", "login"]);
    }
    let db = Db::open(dir.path()).unwrap();
    let table = db.table("app", "events").unwrap();
    assert_eq!(kinds(&db, &table, 1), ["click", "login"]);
    assert_eq!(kinds(&db, &table, 2), ["logout"]);
    let page = db
        .scan(&table, &TokenRange::full_ring(), None, 100)
        .unwrap();
    let rows: usize = page.partitions.iter().map(|p| p.rows.len()).sum();
    assert_eq!(rows, 3);
    assert!(page.next.is_none());
}

#[test]
fn ddl_errors_are_typed_and_if_not_exists_is_lenient() {
    let db = Db::open_in_memory(Arc::new(ManualClock::new(1_700_000_000_000_000)));
    db.create_keyspace(keyspace("app"), IfExists::Strict)
        .unwrap();
    assert!(
        !db.create_keyspace(keyspace("app"), IfExists::Lenient)
            .unwrap()
    );
    let error = db
        .create_keyspace(keyspace("app"), IfExists::Strict)
        .unwrap_err();
    assert_eq!(error.to_string(), "keyspace app already exists");
    db.create_table(events_spec(), IfExists::Strict).unwrap();
    assert!(
        db.create_table(events_spec(), IfExists::Lenient)
            .unwrap()
            .is_none()
    );
    let error = db.table("app", "nope").unwrap_err();
    assert_eq!(error.to_string(), "table app.nope does not exist");
    let mut counter_spec = events_spec();
    counter_spec.name = "counts".into();
    counter_spec.columns[2].ty = CqlType::Counter;
    let error = db.create_table(counter_spec, IfExists::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        "counter column kind is not supported yet"
    );
    let mut no_key = events_spec();
    no_key.name = "nokey".into();
    no_key.columns.remove(0);
    let error = db.create_table(no_key, IfExists::Strict).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid request: table nokey has no partition key"
    );
}

/// A fresh in-memory database in each transaction mode: the tests of
/// `Db::execute` run in both.
fn each_mode(test: impl Fn(Db<concord_storage::memory::MemoryEngine>)) {
    for mode in [TxnMode::Direct, TxnMode::Accord] {
        let db =
            Db::open_in_memory_with_mode(Arc::new(ManualClock::new(1_700_000_000_000_000)), mode);
        assert_eq!(db.txn_mode(), mode);
        test(db);
    }
}

#[test]
fn bad_mutations_are_rejected_and_write_nothing() {
    each_mode(bad_mutations_are_rejected_in);
}

fn bad_mutations_are_rejected_in(db: Db<concord_storage::memory::MemoryEngine>) {
    db.create_keyspace(keyspace("app"), IfExists::Strict)
        .unwrap();
    let table = db
        .create_table(events_spec(), IfExists::Strict)
        .unwrap()
        .unwrap();
    let good = insert(&table, 7, 1, "ok");
    let mut wrong_type = insert(&table, 7, 2, "x");
    wrong_type.partition_key = vec![CqlValue::Text("seven".into())];
    let error = db
        .write(vec![good.clone(), wrong_type])
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("invalid value for column user_id"),
        "{error}"
    );
    let mut missing_clustering = good.clone();
    if let RowOp::Upsert { clustering, .. } = &mut missing_clustering.ops[0] {
        clustering.clear();
    }
    let error = db.write(vec![missing_clustering]).unwrap_err().to_string();
    assert!(
        error.contains("needs all 1 clustering columns, 0 given (missing at)"),
        "{error}"
    );
    let mut unknown_table = good.clone();
    unknown_table.table = concord_storage::schema::TableId(999);
    let error = db.write(vec![unknown_table]).unwrap_err().to_string();
    assert!(
        error.contains("table id 999 which does not exist"),
        "{error}"
    );
    // The good mutation travelled with bad ones and was not applied either.
    assert!(kinds(&db, &table, 7).is_empty());
    db.write(vec![good]).unwrap();
    assert_eq!(kinds(&db, &table, 7), ["ok"]);
}

#[test]
fn transactions_read_the_state_before_their_own_writes() {
    each_mode(transactions_read_the_state_in);
}

fn transactions_read_the_state_in(db: Db<concord_storage::memory::MemoryEngine>) {
    db.create_keyspace(keyspace("app"), IfExists::Strict)
        .unwrap();
    let table = db
        .create_table(events_spec(), IfExists::Strict)
        .unwrap()
        .unwrap();
    let first = db.write(vec![insert(&table, 1, 10, "a")]).unwrap();
    let read = Read::Row {
        table: table.clone(),
        partition_key: vec![CqlValue::Int(1)],
        clustering: vec![CqlValue::Timestamp(10)],
    };
    let result = db
        .execute(Transaction {
            reads: vec![read.clone()],
            writes: vec![insert(&table, 1, 10, "b")],
            ..Transaction::default()
        })
        .unwrap();
    assert!(
        result.execute_at > first,
        "timestamps must increase even when the clock stands still"
    );
    let kind_id = table.column("kind").unwrap().id;
    match &result.reads[0] {
        ReadResult::Row(Some(row)) => {
            assert_eq!(row.columns[&kind_id].value, CqlValue::Text("a".into()))
        }
        other => panic!("unexpected {other:?}"),
    }
    let after = db
        .execute(Transaction {
            reads: vec![read],
            ..Transaction::default()
        })
        .unwrap();
    match &after.reads[0] {
        ReadResult::Row(Some(row)) => {
            assert_eq!(row.columns[&kind_id].value, CqlValue::Text("b".into()));
            assert_eq!(row.columns[&kind_id].write_time, result.execute_at);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn drop_and_truncate_delete_data_and_recreated_tables_start_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.create_keyspace(keyspace("app"), IfExists::Strict)
        .unwrap();
    let table = db
        .create_table(events_spec(), IfExists::Strict)
        .unwrap()
        .unwrap();
    db.write(vec![insert(&table, 1, 10, "a")]).unwrap();
    db.truncate("app", "events").unwrap();
    assert!(kinds(&db, &table, 1).is_empty());
    db.write(vec![insert(&table, 1, 11, "b")]).unwrap();
    assert!(db.drop_table("app", "events", IfExists::Strict).unwrap());
    let recreated = db
        .create_table(events_spec(), IfExists::Strict)
        .unwrap()
        .unwrap();
    assert_ne!(recreated.id, table.id);
    assert!(kinds(&db, &recreated, 1).is_empty());
    let error = db
        .drop_table("app", "events_missing", IfExists::Strict)
        .unwrap_err()
        .to_string();
    assert_eq!(error, "table app.events_missing does not exist");
    assert!(
        !db.drop_table("app", "events_missing", IfExists::Lenient)
            .unwrap()
    );
}

/// Accord mode on RocksDB: rows, and the journal's clock, survive a restart;
/// later transactions execute above every earlier one.
#[test]
fn accord_mode_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = concord_server::config::Config {
        data_dir: dir.path().to_path_buf(),
        txn_mode: Some(TxnMode::Accord),
        ..concord_server::config::Config::default()
    };
    let before = {
        let db = Db::open_with_config(&config).unwrap();
        assert_eq!(db.txn_mode(), TxnMode::Accord);
        db.create_keyspace(keyspace("app"), IfExists::Strict)
            .unwrap();
        let table = db
            .create_table(events_spec(), IfExists::Strict)
            .unwrap()
            .unwrap();
        db.write(vec![insert(&table, 1, 1_000, "login")]).unwrap();
        db.write(vec![insert(&table, 1, 2_000, "click")]).unwrap()
    };
    let db = Db::open_with_config(&config).unwrap();
    let table = db.table("app", "events").unwrap();
    assert_eq!(kinds(&db, &table, 1), ["click", "login"]);
    let after = db.write(vec![insert(&table, 1, 3_000, "logout")]).unwrap();
    assert!(after > before, "{after:?} after {before:?}");
    assert_eq!(kinds(&db, &table, 1), ["logout", "click", "login"]);
}

/// The wall clock stepping back a minute across a restart (NTP, a restored VM, the Jepsen
/// clock nemesis) never gives a new write an older write time than the ones on disk: the
/// sequencer resumes above the ceiling it persisted, so the newer value wins.
#[test]
fn a_clock_that_steps_back_across_a_restart_still_orders_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = concord_server::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..concord_server::config::Config::default()
    };
    let before = {
        let db = Db::open_with_config(&config).unwrap();
        db.create_keyspace(keyspace("app"), IfExists::Strict)
            .unwrap();
        let table = db
            .create_table(events_spec(), IfExists::Strict)
            .unwrap()
            .unwrap();
        db.write(vec![insert(&table, 1, 1_000, "before")]).unwrap()
    };
    config.test_clock_offset_ms = -60_000;
    let db = Db::open_with_config(&config).unwrap();
    let table = db.table("app", "events").unwrap();
    let after = db.write(vec![insert(&table, 1, 1_000, "after")]).unwrap();
    assert!(after > before, "{after:?} after {before:?}");
    assert_eq!(kinds(&db, &table, 1), ["after"]);
    config.test_clock_offset_ms = concord_server::config::TEST_CLOCK_OFFSET_MS_MAX + 1;
    let error = concord_server::config::Config::from_toml(&format!(
        "test_clock_offset_ms = {}",
        config.test_clock_offset_ms
    ))
    .unwrap_err();
    assert!(error.to_string().contains("one day"), "{error}");
}

/// `txn_journal = "log"` on RocksDB, and switching journals on one data
/// directory: every restart keeps the rows, and the journal not chosen is
/// left empty (its live state moved to the chosen one).
#[test]
fn accord_mode_on_the_log_journal_survives_restarts_and_switches() {
    use concord_server::config::TxnJournal;
    use concord_txn::storage::{EngineJournal, Journal};
    let dir = tempfile::tempdir().unwrap();
    let config = |journal| concord_server::config::Config {
        data_dir: dir.path().to_path_buf(),
        txn_mode: Some(TxnMode::Accord),
        txn_journal: journal,
        ..concord_server::config::Config::default()
    };
    let mut expected: Vec<String> = Vec::new();
    let journals = [
        TxnJournal::Log,
        TxnJournal::Log,
        TxnJournal::Engine,
        TxnJournal::Log,
    ];
    for (step, journal) in journals.into_iter().enumerate() {
        let db = Db::open_with_config(&config(journal)).unwrap();
        if step == 0 {
            db.create_keyspace(keyspace("app"), IfExists::Strict)
                .unwrap();
            db.create_table(events_spec(), IfExists::Strict).unwrap();
        }
        let table = db.table("app", "events").unwrap();
        assert_eq!(kinds(&db, &table, 1), expected, "step {step} ({journal:?})");
        let kind = format!("event-{step}");
        db.write(vec![insert(&table, 1, 1_000 * (step as i64 + 1), &kind)])
            .unwrap();
        expected.insert(0, kind);
        assert_eq!(kinds(&db, &table, 1), expected);
        if journal == TxnJournal::Log {
            assert!(dir.path().join("journal").is_dir());
            let engine_journal = EngineJournal::new(db.engine().clone());
            assert_eq!(
                engine_journal.record_count().unwrap(),
                0,
                "the engine journal's commands moved to the log"
            );
        }
    }
}
