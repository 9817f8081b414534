//! Range streaming (design/bootstrap-streaming.md): a token range's raw rows
//! exported from one database and imported into another answer every read
//! the same (every deletion shape and TTL kept); only the range moves; bad
//! imports are refused whole; the Flight path end to end with the replica
//! rebuilt; and a source that is not ready makes the fetch wait, then fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arrow::array::Array;
use concord_server::Db;
use concord_server::bootstrap::{self, FetchOptions, RANGE_SOURCE_NOT_READY};
use concord_server::grpc::{GrpcServer, Limits};
use concord_storage::clock::ManualClock;
use concord_storage::engine::Engine;
use concord_storage::partitioner::{Token, TokenRange};
use concord_storage::rows::{
    CellOp, Liveness, Mutation, Partition, ReadOptions, RowOp, Slice, SliceBound, Ttl,
};
use concord_storage::schema::{
    ColumnKind, ColumnSpec, IfExists, KeyspaceDef, ReplicationStrategy, TableDef, TableOptions,
    TableSpec,
};
use concord_storage::stream::RowChunk;
use concord_storage::types::CqlType;
use concord_storage::value::{ClusteringOrder, CqlValue};

const PARTITIONS: i32 = 40;

/// `app.items (pk int, ck bigint, owner text static, tags set<text>, v int,
/// PRIMARY KEY (pk, ck))`, created the same way on every database (so its
/// id is the same).
fn create_schema<E: Engine>(db: &Db<E>) -> Arc<TableDef> {
    db.create_keyspace(
        KeyspaceDef {
            name: "app".into(),
            replication: ReplicationStrategy::Simple {
                replication_factor: 1,
            },
            durable_writes: true,
        },
        IfExists::Lenient,
    )
    .expect("keyspace");
    let column = |name: &str, ty: CqlType, kind| ColumnSpec {
        name: name.into(),
        ty,
        kind,
    };
    db.create_table(
        TableSpec {
            keyspace: "app".into(),
            name: "items".into(),
            columns: vec![
                column("pk", CqlType::Int, ColumnKind::PartitionKey),
                column(
                    "ck",
                    CqlType::Bigint,
                    ColumnKind::Clustering(ClusteringOrder::Asc),
                ),
                column("owner", CqlType::Text, ColumnKind::Static),
                column(
                    "tags",
                    CqlType::Set(Box::new(CqlType::Text)),
                    ColumnKind::Regular,
                ),
                column("v", CqlType::Int, ColumnKind::Regular),
            ],
            options: TableOptions::default(),
        },
        IfExists::Strict,
    )
    .expect("table")
    .expect("created")
}

/// Rows in every partition, then each deletion shape and a TTL'd cell.
fn write_data<E: Engine>(db: &Db<E>, table: &TableDef) {
    let id = |name: &str| table.column(name).expect("column").id;
    let (owner, tags, v) = (id("owner"), id("tags"), id("v"));
    for pk in 0..PARTITIONS {
        let mut ops = vec![RowOp::Upsert {
            clustering: vec![],
            liveness: Liveness::CellsOnly,
            ttl: Ttl::Unlimited,
            cells: vec![(owner, CellOp::Set(Some(CqlValue::Text(format!("o{pk}")))))],
        }];
        for ck in 0..5_i64 {
            ops.push(RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(ck)],
                liveness: Liveness::RowMarker,
                // One TTL'd row per partition.
                ttl: if ck == 4 {
                    Ttl::Seconds(100)
                } else {
                    Ttl::Unlimited
                },
                cells: vec![
                    (v, CellOp::Set(Some(CqlValue::Int(pk * 10 + ck as i32)))),
                    (
                        tags,
                        CellOp::SetAdd(vec![
                            CqlValue::Text(format!("t{ck}")),
                            CqlValue::Text("all".into()),
                        ]),
                    ),
                ],
            });
        }
        db.write(vec![Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(pk)],
            ops,
        }])
        .expect("write");
    }
    let delete = |pk: i32, op: RowOp| {
        db.write(vec![Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(pk)],
            ops: vec![op],
        }])
        .expect("delete");
    };
    for pk in (0..PARTITIONS).step_by(4) {
        delete(
            pk,
            RowOp::DeleteRow {
                clustering: vec![CqlValue::Bigint(2)],
            },
        );
        delete(
            pk + 1,
            RowOp::DeleteRange(Slice {
                start: SliceBound::Included(vec![CqlValue::Bigint(1)]),
                end: SliceBound::Excluded(vec![CqlValue::Bigint(4)]),
            }),
        );
        delete(pk + 2, RowOp::DeletePartition);
        delete(
            pk + 3,
            RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(0)],
                liveness: Liveness::CellsOnly,
                ttl: Ttl::Unlimited,
                cells: vec![(tags, CellOp::SetRemove(vec![CqlValue::Text("all".into())]))],
            },
        );
    }
}

/// Every partition key's read (`None` for a deleted partition).
fn read_all<E: Engine>(db: &Db<E>, table: &TableDef) -> Vec<Option<Partition>> {
    (0..PARTITIONS)
        .map(|pk| {
            db.read_partition(
                table,
                &[CqlValue::Int(pk)],
                &Slice::all(),
                ReadOptions::at(db.now_seconds()),
            )
            .expect("read")
        })
        .collect()
}

/// Exports `range` in chunks of at most `bytes_max`, checking each chunk's
/// bound and that chunks continue where the last ended.
fn export_all<E: Engine>(
    db: &Db<E>,
    table: &TableDef,
    range: &TokenRange,
    bytes_max: usize,
) -> Vec<RowChunk> {
    let mut chunks = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = db
            .export_rows(table.id, range, after.as_deref(), bytes_max)
            .expect("export");
        assert!(chunk.cells.len() == 1 || chunk.size_bytes() <= bytes_max);
        if let (Some(after), Some((first, _))) = (&after, chunk.cells.first()) {
            assert!(first > after, "a chunk starts after the previous one");
        }
        after = chunk.next.clone();
        if let Some(next) = &chunk.next {
            assert_eq!(Some(next), chunk.cells.last().map(|(key, _)| key));
        }
        let done = chunk.next.is_none();
        chunks.push(chunk);
        if done {
            return chunks;
        }
    }
}

fn pairs(chunks: &[RowChunk]) -> Vec<(Vec<u8>, Vec<u8>)> {
    chunks
        .iter()
        .flat_map(|chunk| chunk.cells.iter().cloned())
        .collect()
}

fn memory_db(
    clock: &Arc<ManualClock>,
) -> (Db<concord_storage::memory::MemoryEngine>, Arc<TableDef>) {
    let db = Db::open_in_memory(clock.clone());
    let table = create_schema(&db);
    (db, table)
}

#[test]
fn a_full_ring_moved_in_small_chunks_answers_every_read_like_the_source() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    let (source, table) = memory_db(&clock);
    let (target, target_table) = memory_db(&clock);
    assert_eq!(table.id, target_table.id);
    write_data(&source, &table);
    let range = TokenRange::full_ring();
    let chunks = export_all(&source, &table, &range, 512);
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    for chunk in &chunks {
        target.import_rows(table.id, &range, chunk).expect("import");
    }
    let source_reads = read_all(&source, &table);
    assert_eq!(read_all(&target, &table), source_reads);
    // Each deletion shape and the TTL are there to compare.
    assert!(source_reads[2].is_none(), "partition 2 was deleted");
    let row_deleted = source_reads[0].as_ref().expect("partition 0");
    assert_eq!(row_deleted.rows.len(), 4);
    assert_eq!(source_reads[1].as_ref().expect("partition 1").rows.len(), 2);
    let ttl_row = row_deleted.rows.last().expect("row 4");
    let expiry = ttl_row.columns.values().find_map(|value| value.expiry);
    assert_eq!(expiry.map(|expiry| expiry.ttl_seconds), Some(100));
    assert!(row_deleted.static_row.is_some());
    // The raw pairs are identical.
    assert_eq!(
        pairs(&export_all(&target, &table, &range, usize::MAX)),
        pairs(&chunks)
    );
    // The TTL keeps running out on the target: the row 4s go on both.
    clock.advance_micros(101_000_000);
    let expired = read_all(&source, &table);
    assert_eq!(read_all(&target, &table), expired);
    assert_eq!(expired[0].as_ref().expect("partition 0").rows.len(), 3);
}

#[test]
fn a_wrapping_sub_range_moves_only_its_partitions_and_clear_rows_removes_them() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    let (source, table) = memory_db(&clock);
    let (target, _) = memory_db(&clock);
    write_data(&source, &table);
    let mut tokens: Vec<(Token, i32)> = read_all(&source, &table)
        .into_iter()
        .flatten()
        .map(|partition| match partition.key[0] {
            CqlValue::Int(pk) => (partition.token, pk),
            ref other => panic!("key {other:?}"),
        })
        .collect();
    tokens.sort();
    // Wraps: from after the 25th partition's token round to the 8th's.
    let range = TokenRange {
        start: tokens[25].0,
        end: tokens[8].0,
    };
    assert!(range.wraps());
    let inside: Vec<i32> = tokens
        .iter()
        .filter(|(token, _)| range.contains(*token))
        .map(|(_, pk)| *pk)
        .collect();
    assert!(inside.len() > 5 && inside.len() < tokens.len() - 5);
    for chunk in export_all(&source, &table, &range, 300) {
        target
            .import_rows(table.id, &range, &chunk)
            .expect("import");
    }
    let (source_reads, target_reads) = (read_all(&source, &table), read_all(&target, &table));
    for pk in 0..PARTITIONS {
        let idx = pk as usize;
        if inside.contains(&pk) {
            assert!(target_reads[idx].is_some(), "partition {pk} moved");
            assert_eq!(target_reads[idx], source_reads[idx], "partition {pk}");
        } else {
            assert_eq!(
                target_reads[idx], None,
                "partition {pk} is outside the range"
            );
        }
    }
    // Stale rows: the whole ring lands, then the range is cleared.
    let full = TokenRange::full_ring();
    for chunk in export_all(&source, &table, &full, 4096) {
        target.import_rows(table.id, &full, &chunk).expect("import");
    }
    target.clear_rows(table.id, &range).expect("clear");
    let target_reads = read_all(&target, &table);
    for pk in 0..PARTITIONS {
        let idx = pk as usize;
        if inside.contains(&pk) {
            assert_eq!(target_reads[idx], None, "partition {pk} was cleared");
        } else {
            assert_eq!(target_reads[idx], source_reads[idx], "partition {pk} stays");
        }
    }
    assert!(pairs(&export_all(&target, &table, &range, usize::MAX)).is_empty());
}

#[test]
fn an_import_with_a_key_outside_its_range_or_table_is_refused_whole() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    let (source, table) = memory_db(&clock);
    let (target, _) = memory_db(&clock);
    write_data(&source, &table);
    let all = pairs(&export_all(
        &source,
        &table,
        &TokenRange::full_ring(),
        usize::MAX,
    ));
    let (first_key, _) = all.first().expect("rows").clone();
    let (last_key, _) = all.last().expect("rows").clone();
    let token = |key: &[u8]| {
        concord_storage::keys::token_from_bytes(key[4..12].try_into().expect("8 bytes"))
    };
    // Holds the first key's token, not the last one's.
    let range = TokenRange {
        start: Token(token(&first_key).0 - 1),
        end: token(&first_key),
    };
    assert!(token(&last_key) != token(&first_key));
    let refused = |chunk: RowChunk, range: &TokenRange, what: &str| {
        let error = target.import_rows(table.id, range, &chunk).expect_err(what);
        assert!(
            matches!(
                error,
                concord_server::Error::Storage(concord_storage::Error::InvalidRequest(_))
            ),
            "{what}: {error}"
        );
        assert!(
            pairs(&export_all(
                &target,
                &table,
                &TokenRange::full_ring(),
                usize::MAX
            ))
            .is_empty(),
            "{what}: nothing written"
        );
    };
    let in_range = all
        .iter()
        .filter(|(key, _)| token(key) == token(&first_key))
        .cloned();
    let mut cells: Vec<_> = in_range.clone().collect();
    cells.push(all.last().expect("rows").clone());
    refused(
        RowChunk { cells, next: None },
        &range,
        "a key outside the range",
    );
    let mut other_table = first_key.clone();
    other_table[..4].copy_from_slice(&(table.id.0 + 1).to_be_bytes());
    let mut cells: Vec<_> = in_range.clone().collect();
    cells.push((other_table, all[0].1.clone()));
    refused(
        RowChunk { cells, next: None },
        &TokenRange::full_ring(),
        "a key of another table",
    );
    let mut cells: Vec<_> = in_range.clone().collect();
    cells.push((first_key.clone(), Vec::new()));
    refused(
        RowChunk { cells, next: None },
        &range,
        "a cell that does not decode",
    );
    // The valid part alone imports.
    target
        .import_rows(
            table.id,
            &range,
            &RowChunk {
                cells: in_range.collect(),
                next: None,
            },
        )
        .expect("import");
    assert!(!pairs(&export_all(&target, &table, &range, usize::MAX)).is_empty());
}

/// A node's database and its gRPC (Flight) endpoint on a free port.
async fn serving_node(dir: &std::path::Path) -> (Arc<Db>, GrpcServer, Arc<TableDef>) {
    let db = Arc::new(
        Db::open_with_analytics(
            &crate::analytics::config(dir),
            crate::analytics::fast_options(),
        )
        .expect("open"),
    );
    let table = create_schema(&db);
    let server = GrpcServer::start(
        db.clone(),
        "127.0.0.1:0".parse().expect("address"),
        Limits::default(),
    )
    .await
    .expect("grpc server");
    (db, server, table)
}

/// `count(*)` and `sum(v)` on the node's columnar replica.
async fn totals(db: &Arc<Db>) -> (i64, i64) {
    let db = db.clone();
    tokio::task::spawn_blocking(move || sql_totals(&db))
        .await
        .expect("task")
}

fn sql_totals(db: &Db) -> (i64, i64) {
    let result = db
        .sql("SELECT /*+ COLUMNAR */ count(*) AS n, sum(v) AS total FROM app.items")
        .expect("sql");
    let batch = result.batches.first().expect("a batch");
    let value = |idx: usize| {
        let column = batch
            .column(idx)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("int64");
        if column.is_null(0) {
            0
        } else {
            column.value(0)
        }
    };
    (value(0), value(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_fetched_over_flight_reaches_the_target_replica_after_a_rebuild() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, server, table) = serving_node(source_dir.path()).await;
    let (target, _target_server, _) = serving_node(target_dir.path()).await;
    write_data(source.as_ref(), &table);
    // A stale row on the target the fetch replaces.
    target
        .write(vec![Mutation {
            table: table.id,
            partition_key: vec![CqlValue::Int(7)],
            ops: vec![RowOp::Upsert {
                clustering: vec![CqlValue::Bigint(99)],
                liveness: Liveness::RowMarker,
                ttl: Ttl::Unlimited,
                cells: vec![],
            }],
        }])
        .expect("stale write");
    let address = server.local_address().to_string();
    let range = TokenRange::full_ring();
    let stats = bootstrap::fetch_range_with(
        &target,
        &address,
        table.id,
        range,
        1,
        FetchOptions {
            chunk_bytes: 2048,
            ..FetchOptions::default()
        },
    )
    .await
    .expect("fetch");
    let source_pairs = pairs(&export_all(source.as_ref(), &table, &range, usize::MAX));
    assert_eq!(stats.cells, source_pairs.len() as u64);
    assert!(stats.chunks > 3, "{stats:?}");
    assert_eq!(stats.resumed, 0);
    assert_eq!(
        pairs(&export_all(target.as_ref(), &table, &range, usize::MAX)),
        source_pairs
    );
    assert_eq!(
        read_all(target.as_ref(), &table),
        read_all(source.as_ref(), &table)
    );
    // The imports bypassed the change feed: the replica only has the stale row.
    assert_eq!(totals(&target).await, (1, 0));
    let rebuilt = target.clone();
    tokio::task::spawn_blocking(move || rebuilt.rebuild_analytics())
        .await
        .expect("task")
        .expect("rebuild");
    let expected = totals(&source).await;
    assert_eq!(expected.0, 110, "live rows of write_data");
    assert_eq!(totals(&target).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_waits_for_a_source_that_is_not_ready_then_fails_clearly() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, server, table) = serving_node(source_dir.path()).await;
    let (target, _target_server, _) = serving_node(target_dir.path()).await;
    write_data(source.as_ref(), &table);
    let address = server.local_address().to_string();
    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    source.set_range_source_check(Arc::new(move |_range: &TokenRange, epoch: u64| {
        counter.fetch_add(1, Ordering::SeqCst);
        Err(format!("epoch {epoch} is not sealed here"))
    }));
    let options = FetchOptions {
        source_wait: Duration::from_millis(400),
        ..FetchOptions::default()
    };
    let started = Instant::now();
    let error = bootstrap::fetch_range_with(
        &target,
        &address,
        table.id,
        TokenRange::full_ring(),
        7,
        options,
    )
    .await
    .expect_err("never ready");
    let message = error.to_string();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(message.contains(RANGE_SOURCE_NOT_READY), "{message}");
    assert!(message.contains("epoch 7 is not sealed here"), "{message}");
    assert!(asked.load(Ordering::SeqCst) >= 2, "it asked again");
    assert!(
        pairs(&export_all(
            target.as_ref(),
            &table,
            &TokenRange::full_ring(),
            usize::MAX
        ))
        .is_empty()
    );
    // Ready after a few refusals: the fetch waits, then moves every row.
    let refusals = Arc::new(AtomicU32::new(0));
    let counter = refusals.clone();
    source.set_range_source_check(Arc::new(move |_range: &TokenRange, _epoch: u64| {
        if counter.fetch_add(1, Ordering::SeqCst) < 3 {
            Err("applying the old epoch".into())
        } else {
            Ok(())
        }
    }));
    let stats = bootstrap::fetch_range_with(
        &target,
        &address,
        table.id,
        TokenRange::full_ring(),
        7,
        FetchOptions {
            source_wait: Duration::from_secs(30),
            ..FetchOptions::default()
        },
    )
    .await
    .expect("fetch once ready");
    assert_eq!(refusals.load(Ordering::SeqCst), 4);
    assert_eq!(
        stats.cells,
        pairs(&export_all(
            source.as_ref(),
            &table,
            &TokenRange::full_ring(),
            usize::MAX
        ))
        .len() as u64
    );
}

/// A TCP proxy to `target` that cuts its first connection after
/// `cut_after` bytes from the server; later connections pass whole. Counts
/// the connections.
async fn cutting_proxy(
    target: std::net::SocketAddr,
    cut_after: usize,
) -> (std::net::SocketAddr, Arc<AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicU32::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            tokio::spawn(async move {
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                let downstream = async {
                    let mut buffer = vec![0u8; 1024];
                    let mut forwarded = 0;
                    while forwarded < cut_after {
                        let Ok(n) = server_read.read(&mut buffer).await else {
                            break;
                        };
                        if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        forwarded += n;
                    }
                };
                // The first to finish (the cut) ends both directions.
                tokio::select! {
                    _ = upstream => {}
                    () = downstream => {}
                }
            });
        }
    });
    (address, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cut_mid_stream_resumes_after_the_last_imported_key() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, server, table) = serving_node(source_dir.path()).await;
    let (target, _target_server, _) = serving_node(target_dir.path()).await;
    write_data(source.as_ref(), &table);
    let range = TokenRange::full_ring();
    let source_pairs = pairs(&export_all(source.as_ref(), &table, &range, usize::MAX));
    let total_bytes: usize = source_pairs
        .iter()
        .map(|(key, cell)| key.len() + cell.len())
        .sum();
    let (proxy, connections) = cutting_proxy(server.local_address(), total_bytes / 3).await;
    let stats = bootstrap::fetch_range_with(
        &target,
        &proxy.to_string(),
        table.id,
        range,
        1,
        FetchOptions {
            chunk_bytes: 1024,
            ..FetchOptions::default()
        },
    )
    .await
    .expect("fetch");
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "the first stream was cut"
    );
    // Every pair once: none skipped, none imported twice.
    assert_eq!(stats.cells, source_pairs.len() as u64);
    assert_eq!(stats.bytes, total_bytes as u64);
    assert_eq!(
        pairs(&export_all(target.as_ref(), &table, &range, usize::MAX)),
        source_pairs
    );
}
