//! The follower: a background thread that keeps the replica up with the
//! node's change feed and merges its delta into cell segments, and a row
//! writer thread that rewrites the typed row segments after merges.
//!
//! ```text
//! follower, first in every round: a rebuild asked by `Follower::rebuild` (rows written
//!   without feed records, e.g. a token range streamed in) →
//!     (frontier, snapshot) = feed.quiesce(..); replica.rebuild(snapshot, frontier); answer the asker
//! follower, while it has nothing to apply: when a feed ticket ends or after
//! poll_interval (`ChangeFeed::wait_for_frontier_change`); else at once (until stopped):
//!   frontier = feed.frontier()            (before the snapshot: nothing below it can appear)
//!   pending.push(frontier)                (frontiers not yet passed, oldest first)
//!   replica.catch_up_chunk(engine.snapshot(), frontier.position_end)   (≤ CATCH_UP_RECORDS_MAX records)
//!     FeedTruncated (retention passed the replica) →
//!       (frontier, snapshot) = feed.quiesce(|f| (f, engine.snapshot()))   (short: no I/O inside)
//!       replica.rebuild(snapshot, frontier)
//!   every pending frontier whose position_end the replica passed:
//!     replica.advance_watermark(frontier.watermark)     (stepwise, after every chunk)
//!   delta past its bound, or every merge_interval: replica.request_merge()
//!   delta past twice its bound: replica.merge_cells() here (back-pressure)
//!   replica.set_feed_backlog(frontier.position_end − next position); back within
//!     row_segment_backlog_records_max after being behind: request_row_segments()
//! row writer (attached to the replica), on request (requests made while it
//! works coalesce into one more pass):
//!   replica.merge_cells() if a merge was asked  (cell segments written outside the state lock)
//!   replica.write_row_segments_unless_behind()  (no state lock held while it writes; skipped
//!                                                while the follower trails the feed)
//! ```
//!
//! Merges and row-segment rewrites take seconds for a large table; on their
//! own thread they no longer hold up catch-up, so the watermark keeps
//! following the feed while they run, and it moves after every applied chunk
//! (a frontier sampled before the chunk is passed), not only once a whole
//! backlog is applied. Reads stay exact meanwhile: a merge installs its
//! segments and drops the folded versions in one step under the state lock,
//! reads leave the partitions merged since the old row segment (`dirty`) out
//! of it, and a rewrite that a newer merge overtook is not installed (see
//! [`Replica::write_row_segments`]).
//!
//! Neither thread writes the engine, so OLTP never waits for them; a
//! follower that falls behind shows as a trailing watermark (queries at a
//! fresh snapshot wait, up to their bound). Errors are logged here, where
//! they are handled, and the loops retry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use concord_storage::engine::Engine;
use concord_storage::feed::{ChangeFeed, FeedFrontier};

use crate::replica::Replica;
use crate::{Error, Result};

/// Frontiers the follower remembers while it works through a backlog (one
/// per applied chunk); past it, it samples no more until it passes some.
pub const PENDING_FRONTIERS_MAX: usize = 4096;

/// How often a caller of [`Follower::rebuild`] checks that the follower
/// still runs while it waits.
pub const REBUILD_WAIT_STEP: Duration = Duration::from_millis(100);

/// Rebuilds asked of the follower from outside: `requested` counts the
/// asks, `finished` the highest ask a completed rebuild answered (a rebuild
/// answers every ask made before it started), with that rebuild's outcome.
#[derive(Debug, Default)]
struct RebuildRequests {
    state: Mutex<RebuildState>,
    finished_changed: Condvar,
}

#[derive(Debug, Default)]
struct RebuildState {
    requested: u64,
    finished: u64,
    outcome: Option<String>,
}

impl RebuildRequests {
    /// The newest ask not answered yet.
    fn pending(&self) -> Option<u64> {
        let state = self.state.lock();
        (state.requested > state.finished).then_some(state.requested)
    }

    fn finish(&self, answered: u64, outcome: Option<String>) {
        let mut state = self.state.lock();
        state.finished = state.finished.max(answered);
        state.outcome = outcome;
        self.finished_changed.notify_all();
    }
}

/// How often the follower looks at the feed and merges.
#[derive(Debug, Clone, Copy)]
pub struct FollowerOptions {
    pub poll_interval: Duration,
    pub merge_interval: Duration,
}

impl Default for FollowerOptions {
    fn default() -> FollowerOptions {
        FollowerOptions {
            poll_interval: Duration::from_millis(1),
            merge_interval: Duration::from_secs(10),
        }
    }
}

/// A running follower; dropping it stops and joins both threads.
#[derive(Debug)]
pub struct Follower {
    stop: Arc<AtomicBool>,
    replica: Arc<Replica>,
    rebuilds: Arc<RebuildRequests>,
    thread: Option<JoinHandle<()>>,
    row_writer: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following `feed` over `engine` into `replica`.
    ///
    /// # Errors
    /// `Io` if the thread cannot be spawned.
    pub fn spawn<E: Engine>(
        replica: Arc<Replica>,
        engine: Arc<E>,
        feed: Arc<ChangeFeed>,
        options: FollowerOptions,
    ) -> Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let row_writer = {
            let (replica, stopping) = (Arc::clone(&replica), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("concord-columnar-rows".into())
                .spawn(move || {
                    while replica.next_row_segment_request(&stopping) {
                        if replica.take_merge_request()
                            && let Err(error) = replica.merge_cells()
                        {
                            tracing::warn!(%error, "columnar row writer: merge failed, retrying");
                        }
                        if let Err(error) = replica.write_row_segments_unless_behind() {
                            tracing::warn!(%error, "columnar row writer: row segments not written");
                        }
                    }
                })
                .map_err(|source| Error::Io {
                    context: "spawn the columnar row writer".into(),
                    source,
                })?
        };
        replica.attach_row_writer();
        let rebuilds = Arc::new(RebuildRequests::default());
        let asked = Arc::clone(&rebuilds);
        let stopping = Arc::clone(&stop);
        let following = Arc::clone(&replica);
        let thread = std::thread::Builder::new()
            .name("concord-columnar-follower".into())
            .spawn(move || {
                let mut last_merge = Instant::now();
                let mut pending: VecDeque<FeedFrontier> = VecDeque::new();
                let mut behind = false;
                while !stopping.load(Ordering::Acquire) {
                    if let Some(ask) = asked.pending() {
                        pending.clear();
                        let (frontier, snapshot) =
                            feed.quiesce(|frontier| (frontier, engine.snapshot()));
                        let outcome = following.rebuild(&snapshot, frontier).err();
                        if let Some(error) = &outcome {
                            tracing::warn!(%error, "columnar follower: asked rebuild failed");
                        }
                        asked.finish(ask, outcome.map(|error| error.to_string()));
                    }
                    let n_tickets_ended = feed.n_tickets_ended();
                    let frontier = feed.frontier();
                    let newer = pending.back().is_none_or(|last| {
                        last.position_end < frontier.position_end
                            || last.watermark < frontier.watermark
                    });
                    if newer && pending.len() < PENDING_FRONTIERS_MAX {
                        pending.push_back(frontier);
                    }
                    let mut idle = true;
                    match following.catch_up_chunk(&engine.snapshot(), frontier.position_end) {
                        Ok(chunk) => {
                            idle = chunk.n_records_applied + chunk.n_records_skipped == 0;
                        }
                        Err(Error::FeedTruncated { next, floor }) => {
                            tracing::warn!(
                                next,
                                floor,
                                "columnar follower: behind the feed's retention, rebuilding"
                            );
                            pending.clear();
                            let (frontier, snapshot) =
                                feed.quiesce(|frontier| (frontier, engine.snapshot()));
                            if let Err(error) = following.rebuild(&snapshot, frontier) {
                                tracing::warn!(%error, "columnar follower: rebuild failed, retrying");
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "columnar follower: catch-up failed, retrying");
                        }
                    }
                    let next = following.next_position();
                    let mut passed = None;
                    while let Some(oldest) = pending.front().copied()
                        && oldest.position_end <= next
                    {
                        passed = Some(oldest.watermark);
                        pending.pop_front();
                    }
                    if let Some(watermark) = passed {
                        following.advance_watermark(watermark);
                    }
                    // The row writer puts off row-segment rewrites while the
                    // backlog is large; ask for the pass it skipped once the
                    // follower is back within the bound.
                    following.set_feed_backlog(frontier.position_end.0.saturating_sub(next.0));
                    let now_behind = following.behind_for_row_segments();
                    if behind && !now_behind {
                        following.request_row_segments();
                    }
                    behind = now_behind;
                    let n_delta = following.n_delta_versions();
                    let max = following.delta_versions_max();
                    if n_delta > max.saturating_mul(2) {
                        // The row writer does not keep up: merge here, so
                        // the delta stays bounded (catch-up waits meanwhile).
                        if let Err(error) = following.merge_cells() {
                            tracing::warn!(%error, "columnar follower: merge failed, retrying");
                        }
                        following.request_row_segments();
                    } else if n_delta > max || last_merge.elapsed() >= options.merge_interval {
                        // Also when nothing is left to merge: a table may
                        // still lack a row segment (a new definition, a
                        // failed write).
                        following.request_merge();
                        last_merge = Instant::now();
                    }
                    if idle {
                        // Wakes as soon as a transaction finishes (the
                        // frontier may have moved), at the latest after
                        // poll_interval.
                        feed.wait_for_frontier_change(n_tickets_ended, options.poll_interval);
                    }
                }
            })
            .map_err(|source| Error::Io {
                context: "spawn the columnar follower".into(),
                source,
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                stop.store(true, Ordering::Release);
                replica.request_row_segments();
                // A panicked row writer already reported itself.
                let _ = row_writer.join();
                replica.detach_row_writer();
                return Err(error);
            }
        };
        Ok(Follower {
            stop,
            replica,
            rebuilds,
            thread: Some(thread),
            row_writer: Some(row_writer),
        })
    }
}

impl Follower {
    /// Rebuilds the replica from a row-store snapshot taken after this call
    /// (on the follower's thread, at its next round) and returns once done:
    /// for rows written without feed records (a streamed-in token range).
    ///
    /// # Errors
    /// `RebuildFailed` when the rebuild failed or the follower stopped first.
    pub fn rebuild(&self) -> Result<()> {
        let mut state = self.rebuilds.state.lock();
        state.requested += 1;
        let ask = state.requested;
        while state.finished < ask {
            let running = self
                .thread
                .as_ref()
                .is_some_and(|thread| !thread.is_finished());
            if !running || self.stop.load(Ordering::Acquire) {
                return Err(Error::RebuildFailed(
                    "the columnar follower stopped before rebuilding".into(),
                ));
            }
            self.rebuilds
                .finished_changed
                .wait_for(&mut state, REBUILD_WAIT_STEP);
        }
        match &state.outcome {
            None => Ok(()),
            Some(error) => Err(Error::RebuildFailed(error.clone())),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // A panicked follower already reported itself; nothing to add.
            let _ = thread.join();
        }
        // Wakes the row writer, which sees `stop` (a pass under way
        // finishes first).
        self.replica.request_row_segments();
        if let Some(row_writer) = self.row_writer.take() {
            let _ = row_writer.join();
        }
        self.replica.detach_row_writer();
    }
}
