//! Where the engine's watchdogs, and the station's timers over the engine, read
//! the time and wait for it.
//!
//! [`Clock::System`] is the machine's monotonic clock with tokio's timers: every
//! product path uses it. [`Clock::Manual`] stands still until it is told to move
//! ([`ManualClock::advance`]), for tests about a timeout (a stall, a grace period):
//! the test brings the system into the state it is about, waits until the timer it
//! tests is armed ([`ManualClock::until_sleeps`]), then moves the clock past it.
//! Nothing then races the wall clock, however loaded the machine is.
//!
//! Why not tokio's paused time: a paused tokio clock moves by itself to the next
//! timer whenever the runtime has nothing to do, and the runtime has nothing to do
//! exactly while the attempts' OS threads do the I/O. A healthy stick would be
//! judged stalled and a removal grace would end before the removal it waits for.
//! Tokio's clock can also not be read from those threads, which stamp their
//! heartbeats with the time ([`Clock::now`] can be read from any thread).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A source of time and timers; cheap to clone (clones of a manual clock share
/// it).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's monotonic clock; sleeps are tokio timers.
    #[default]
    System,
    /// A clock that only moves when it is told to.
    Manual(ManualClock),
}

impl Clock {
    /// The time now. Callable from any thread, in a runtime or not.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(clock) => clock.now(),
        }
    }

    /// Waits until the clock shows `deadline` or later.
    pub async fn sleep_until(&self, deadline: Instant) {
        match self {
            Clock::System => tokio::time::sleep_until(deadline.into()).await,
            Clock::Manual(clock) => clock.sleep_until(deadline).await,
        }
    }
}

/// A clock for tests: it shows the moment it was made until it is moved
/// ([`advance`](Self::advance)), and tells which sleeps wait on it
/// ([`sleeps`](Self::sleeps), [`until_sleeps`](Self::until_sleeps)). Clones
/// share one clock.
#[derive(Clone)]
pub struct ManualClock(Arc<Manual>);

struct Manual {
    /// What the clock shows before it is moved.
    origin: Instant,
    /// How far it has been moved. A watch: every sleep holds a receiver and
    /// re-checks its deadline when the clock moves.
    moved: watch::Sender<Duration>,
    /// The deadline of every sleep waiting on the clock now (one entry per
    /// sleep). A watch, so that a test can wait until a timer is armed.
    sleeps: watch::Sender<Vec<Instant>>,
}

impl ManualClock {
    /// A clock that shows the present moment, and stays there until moved.
    pub fn new() -> Self {
        Self(Arc::new(Manual {
            origin: Instant::now(),
            moved: watch::Sender::new(Duration::ZERO),
            sleeps: watch::Sender::new(Vec::new()),
        }))
    }

    /// The time it shows.
    pub fn now(&self) -> Instant {
        self.0.origin + *self.0.moved.borrow()
    }

    /// Moves the clock forward by `by`: every sleep whose deadline is reached
    /// ends (on its task's next poll).
    pub fn advance(&self, by: Duration) {
        self.0.moved.send_modify(|moved| *moved += by);
    }

    /// The deadlines of the sleeps waiting on the clock now, in the order they
    /// began.
    pub fn sleeps(&self) -> Vec<Instant> {
        self.0.sleeps.borrow().clone()
    }

    /// Waits until the deadlines of the sleeps waiting on the clock satisfy
    /// `check` (for instance: a timer the test is about has been armed).
    pub async fn until_sleeps(&self, mut check: impl FnMut(&[Instant]) -> bool) {
        let mut sleeps = self.0.sleeps.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = sleeps.wait_for(|deadlines| check(deadlines)).await;
    }

    /// Waits until the clock shows `deadline`, registered among the sleeps
    /// while it waits.
    async fn sleep_until(&self, deadline: Instant) {
        let mut moved = self.0.moved.subscribe();
        if self.0.origin + *moved.borrow_and_update() >= deadline {
            return;
        }
        let _registered = Registered::new(&self.0, deadline);
        loop {
            if self.0.origin + *moved.borrow_and_update() >= deadline {
                return;
            }
            // The sender lives in `self.0`, which this future holds: `changed`
            // cannot fail.
            let _ = moved.changed().await;
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("moved", &*self.0.moved.borrow())
            .field("sleeps", &self.0.sleeps.borrow().len())
            .finish()
    }
}

/// One sleep's entry among a manual clock's sleeps, removed when the sleep ends
/// or is dropped (a `select!` that took another branch).
struct Registered<'a> {
    clock: &'a Manual,
    deadline: Instant,
}

impl<'a> Registered<'a> {
    fn new(clock: &'a Manual, deadline: Instant) -> Self {
        clock.sleeps.send_modify(|sleeps| sleeps.push(deadline));
        Self { clock, deadline }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.clock.sleeps.send_modify(|sleeps| {
            if let Some(at) = sleeps.iter().position(|d| *d == self.deadline) {
                sleeps.remove(at);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_stands_still_until_moved_and_wakes_the_sleeps_it_reaches() {
        let clock = ManualClock::new();
        let start = clock.now();
        let shared = Clock::Manual(clock.clone());
        let short = tokio::spawn({
            let shared = shared.clone();
            async move { shared.sleep_until(start + Duration::from_secs(1)).await }
        });
        let long = tokio::spawn({
            let shared = shared.clone();
            async move { shared.sleep_until(start + Duration::from_secs(5)).await }
        });
        clock.until_sleeps(|deadlines| deadlines.len() == 2).await;
        assert_eq!(shared.now(), start, "it has not moved by itself");
        clock.advance(Duration::from_secs(1));
        short.await.unwrap();
        clock
            .until_sleeps(|deadlines| deadlines == [start + Duration::from_secs(5)])
            .await;
        assert!(!long.is_finished());
        clock.advance(Duration::from_secs(4));
        long.await.unwrap();
        assert!(clock.sleeps().is_empty());
        assert_eq!(clock.now(), start + Duration::from_secs(5));
        // A deadline already reached does not wait.
        shared.sleep_until(start).await;
    }

    #[tokio::test]
    async fn a_sleep_dropped_before_its_deadline_is_no_longer_listed() {
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_secs(1);
        let shared = Clock::Manual(clock.clone());
        let sleep = tokio::spawn(async move { shared.sleep_until(deadline).await });
        clock
            .until_sleeps(|deadlines| deadlines == [deadline])
            .await;
        sleep.abort();
        clock.until_sleeps(<[Instant]>::is_empty).await;
    }
}
