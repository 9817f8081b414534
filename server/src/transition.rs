//! A cluster member's part in epoch transitions (design/cluster.md, "Epoch transitions and
//! bootstrap"): it serves the rows of ranges it has sealed, fetches the ranges it gains, and
//! reports ready to the metadata.
//!
//! ```text
//!   metadata: placement change ─► Transition { command, from_epoch e, waiting }
//!   every node (follow_views): Runtime::seal(bound of e + 1) ─► clients held, rounds at bound
//!   each waiting node (here): sealed locally? ─► fetch gained ranges from a sealed source
//!        (bootstrap::fetch_range, every table) ─► rebuild its columnar replica
//!        ─► TransitionReady { node, e + 1 }
//!   last report: the change applies, epoch e + 1, sealed_epoch = e + 1 ─► every runtime
//!        reopens on it with the floor (follow_views) and starts the held clients
//!   the leader: a transition older than TRANSITION_TIMEOUT ─► AbortTransition (epoch + 1,
//!        placement unchanged)
//! ```
//!
//! Must never report ready before this node has applied every transaction of the old epoch
//! on the ranges it keeps and holds the rows of every range it gains; must never serve a
//! range's rows (as a source) before its own applied-before floor there reached the seal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_cluster::meta::MetaNode;
use concord_cluster::meta::rpc::AdminRequest;
use concord_cluster::meta::state::{Command, NodeIdx, NodeStatus};
use concord_cluster::meta::view::{ClusterView, gained_ranges};
use concord_cluster::runtime::Runtime;
use concord_storage::engine::Engine;
use concord_txn::sync::epoch_seal_bound;
use concord_txn::timestamp::Epoch;
use tokio::task::JoinHandle;

use crate::bootstrap::fetch_range;
use crate::db::Db;

/// How long a transition may take before the metadata leader gives it up.
pub const TRANSITION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the task looks again while a transition is in progress.
pub const TRANSITION_POLL: Duration = Duration::from_millis(100);

/// Makes `db` serve a range's rows only once `runtime` has sealed it locally (the readiness
/// check of a range fetch).
pub fn install_source_check<E: Engine>(db: &Db<E>, runtime: Arc<Runtime>) {
    db.set_range_source_check(Arc::new(move |range, seal_epoch| {
        if runtime.applied_covers(range, epoch_seal_bound(Epoch(seal_epoch))) {
            Ok(())
        } else {
            Err(format!(
                "this node has not applied every transaction before epoch {seal_epoch} on \
                 range ({}, {}] yet",
                range.start, range.end
            ))
        }
    }));
}

/// Follows the metadata views and plays this node's part in each transition. Ends when the
/// views close.
pub fn spawn<E: Engine + 'static>(
    db: Arc<Db<E>>,
    meta: Arc<MetaNode>,
    runtime: Arc<Runtime>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let me: NodeIdx = meta.id();
        let mut views = meta.subscribe();
        let mut reported: Option<u64> = None;
        let mut first_seen: Option<(u64, Instant)> = None;
        loop {
            let view = Arc::clone(&views.borrow_and_update());
            if let Some(transition) = &view.state.transition {
                let next = transition.next_epoch();
                let since = match first_seen {
                    Some((epoch, since)) if epoch == next => since,
                    _ => {
                        let now = Instant::now();
                        first_seen = Some((next, now));
                        now
                    }
                };
                if transition.waiting.contains(&me) && reported != Some(next) {
                    match take_part(&db, &view, &runtime, me, next).await {
                        Ok(true) => {
                            let ready = Command::TransitionReady {
                                node: me,
                                epoch: next,
                            };
                            match meta.admin(AdminRequest::Command(ready)).await {
                                Ok(_) => {
                                    tracing::info!(
                                        node = me,
                                        epoch = next,
                                        "ready for the transition"
                                    );
                                    reported = Some(next);
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "reporting ready for the transition failed; retrying");
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(%error, epoch = next, "fetching gained ranges failed; retrying");
                        }
                    }
                }
                if since.elapsed() >= TRANSITION_TIMEOUT && is_leader(&meta).await {
                    tracing::warn!(epoch = next, waiting = ?transition.waiting, "a transition took longer than TRANSITION_TIMEOUT: aborting it");
                    let abort = Command::AbortTransition { epoch: next };
                    if let Err(error) = meta.admin(AdminRequest::Command(abort)).await {
                        tracing::warn!(%error, "aborting the transition failed");
                    }
                }
                tokio::select! {
                    changed = views.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(TRANSITION_POLL) => {}
                }
            } else if views.changed().await.is_err() {
                return;
            }
        }
    })
}

async fn is_leader(meta: &MetaNode) -> bool {
    meta.raft().current_leader().await == Some(u64::from(meta.id()))
}

/// This node's part in the transition to `next`: `Ok(true)` once it has applied the old
/// epoch on the ranges it keeps and fetched every range it gains (every table, from the
/// first source that serves it), `Ok(false)` while its own seal is not done.
async fn take_part<E: Engine + 'static>(
    db: &Arc<Db<E>>,
    view: &ClusterView,
    runtime: &Runtime,
    me: NodeIdx,
    next: u64,
) -> crate::error::Result<bool> {
    let bound = epoch_seal_bound(Epoch(next));
    let status = runtime.seal_status();
    if status.bound != Some(bound) || !status.sealed_locally {
        return Ok(false);
    }
    let Some(target) = view.state.transition_target() else {
        return Ok(false);
    };
    let gained: Vec<_> = gained_ranges(&view.state, &target)
        .into_iter()
        .filter(|piece| piece.node == me)
        .collect();
    if gained.is_empty() {
        return Ok(true);
    }
    let addresses: BTreeMap<NodeIdx, String> = view
        .state
        .members
        .iter()
        .filter(|(node, member)| **node != me && member.status == NodeStatus::Up)
        .filter_map(|(node, member)| Some((*node, member.endpoints.get("grpc")?.clone())))
        .collect();
    let tables: Vec<_> = db
        .schema()
        .keyspaces()
        .flat_map(|keyspace| {
            keyspace
                .tables
                .values()
                .map(|table| table.id)
                .collect::<Vec<_>>()
        })
        .collect();
    let started = Instant::now();
    let mut cells = 0;
    for piece in &gained {
        for table in &tables {
            let mut last_error = None;
            let mut done = false;
            for source in &piece.sources {
                let Some(address) = addresses.get(source) else {
                    continue;
                };
                match fetch_range(db, address, *table, piece.range, next).await {
                    Ok(stats) => {
                        cells += stats.cells;
                        done = true;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, source, "a source did not serve a gained range");
                        last_error = Some(error);
                    }
                }
            }
            if !done {
                return Err(last_error.unwrap_or_else(|| {
                    crate::error::Error::Storage(concord_storage::Error::InvalidRequest(format!(
                        "no source of range ({}, {}] is up with a gRPC endpoint",
                        piece.range.start, piece.range.end
                    )))
                }));
            }
        }
    }
    // Fetched rows bypass the change feed: the columnar replica rebuilds from the row store
    // (blocking work, off the async threads).
    let rebuilding = Arc::clone(db);
    tokio::task::spawn_blocking(move || rebuilding.rebuild_analytics())
        .await
        .map_err(|error| crate::error::Error::Io {
            context: "rebuild the columnar replica after fetching gained ranges".into(),
            source: std::io::Error::other(error.to_string()),
        })??;
    tracing::info!(
        node = me,
        epoch = next,
        ranges = gained.len(),
        tables = tables.len(),
        cells,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fetched the gained ranges"
    );
    Ok(true)
}
