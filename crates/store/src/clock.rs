//! Where the store's timestamps come from: the system clock, or a clock that tests
//! set by hand so that records (and the reports made from them) are reproducible.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The source of every timestamp the store writes, in unix milliseconds (UTC).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A clock that only moves when it is told to.
    Manual(ManualClock),
}

impl Clock {
    /// The current time in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_now_ms(),
            Clock::Manual(clock) => clock.now_ms(),
        }
    }
}

/// A clock for tests and benchmarks: shared by clones, moved by [`set`](Self::set)
/// and [`advance`](Self::advance).
#[derive(Debug, Clone)]
pub struct ManualClock {
    // An atomic rather than a mutex: the value is one integer, read on every write
    // the store makes, and set from the test's own task.
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock showing `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    /// The time it shows.
    pub fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    /// Sets the time.
    pub fn set(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

fn system_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970: record it as it is rather than failing.
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
