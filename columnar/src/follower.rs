//! The follower: a background thread that keeps the replica up with the
//! node's change feed and merges its delta into segments.
//!
//! ```text
//! loop every poll_interval (until stopped):
//!   frontier = feed.frontier()            (before the snapshot: nothing below it can appear)
//!   replica.catch_up(engine.snapshot(), frontier)
//!     FeedTruncated (retention passed the replica) →
//!       (frontier, snapshot) = feed.quiesce(|f| (f, engine.snapshot()))   (short: no I/O inside)
//!       replica.rebuild(snapshot, frontier)
//!   every merge_interval: replica.merge()
//! ```
//!
//! It only reads the engine, so OLTP never waits for it; a follower that falls
//! behind shows as a trailing watermark (queries at a fresh snapshot wait, up
//! to their bound). Errors are logged here, where they are handled, and the
//! loop retries after `poll_interval`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concord_storage::engine::Engine;
use concord_storage::feed::ChangeFeed;

use crate::replica::Replica;
use crate::{Error, Result};

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

/// A running follower; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("concord-columnar-follower".into())
            .spawn(move || {
                let mut last_merge = Instant::now();
                while !stopping.load(Ordering::Acquire) {
                    let frontier = feed.frontier();
                    match replica.catch_up(&engine.snapshot(), frontier) {
                        Ok(_) => {}
                        Err(Error::FeedTruncated { next, floor }) => {
                            tracing::warn!(
                                next,
                                floor,
                                "columnar follower: behind the feed's retention, rebuilding"
                            );
                            let (frontier, snapshot) =
                                feed.quiesce(|frontier| (frontier, engine.snapshot()));
                            if let Err(error) = replica.rebuild(&snapshot, frontier) {
                                tracing::warn!(%error, "columnar follower: rebuild failed, retrying");
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "columnar follower: catch-up failed, retrying");
                        }
                    }
                    if last_merge.elapsed() >= options.merge_interval {
                        if let Err(error) = replica.merge() {
                            tracing::warn!(%error, "columnar follower: merge failed, retrying");
                        }
                        last_merge = Instant::now();
                    }
                    std::thread::sleep(options.poll_interval);
                }
            })
            .map_err(|source| Error::Io {
                context: "spawn the columnar follower".into(),
                source,
            })?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // A panicked follower already reported itself; nothing to add.
            let _ = thread.join();
        }
    }
}
