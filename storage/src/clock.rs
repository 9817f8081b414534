//! Time sources. Storage never reads the wall clock directly: expiry checks
//! and compaction take their "now" from a [`Clock`], so tests and the
//! simulator control it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_micros(&self) -> i64;

    /// Seconds since the Unix epoch (what expiry times are measured in).
    fn now_seconds(&self) -> i64 {
        self.now_micros().div_euclid(1_000_000)
    }
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since_epoch) => i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX),
            // A clock before 1970 is a misconfigured machine; time zero keeps
            // expiry conservative (nothing expires).
            Err(_) => 0,
        }
    }
}

/// Another clock shifted by a fixed offset: a node whose wall clock is wrong (fault
/// injection: `test_clock_offset_ms` in the server's configuration, the Jepsen clock nemesis).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock<C> {
    inner: C,
    offset_micros: i64,
}

impl<C: Clock> OffsetClock<C> {
    pub fn new(inner: C, offset_micros: i64) -> OffsetClock<C> {
        OffsetClock {
            inner,
            offset_micros,
        }
    }
}

impl<C: Clock> Clock for OffsetClock<C> {
    fn now_micros(&self) -> i64 {
        self.inner.now_micros().saturating_add(self.offset_micros)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(micros: i64) -> ManualClock {
        ManualClock {
            micros: Arc::new(AtomicI64::new(micros)),
        }
    }

    pub fn set_micros(&self, micros: i64) {
        self.micros.store(micros, Ordering::SeqCst);
    }

    pub fn advance_micros(&self, delta_micros: i64) {
        self.micros.fetch_add(delta_micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.micros.load(Ordering::SeqCst)
    }
}
