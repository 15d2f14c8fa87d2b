//! Where the engine's watchdogs, and the station's timers over the engine, read
//! the time and wait for it.
//!
//! [`Clock::System`] is the machine's monotonic clock with tokio's timers: every
//! product path uses it. [`Clock::Manual`] stands still until it is told to move
//! ([`ManualClock::advance`]), for tests about a timeout (a stall, a grace period):
//! the test brings the system into the state it is about, waits until the timer it
//! tests is armed ([`ManualClock::until_sleeps`]), then moves the clock past it,
//! and can wait until every timer it reached has been handled
//! ([`ManualClock::until_nothing_due`]). Nothing then races the wall clock,
//! however loaded the machine is.
//!
//! A [`Sleep`] is listed among a manual clock's sleeps from the moment it is made
//! until it is dropped, not until it ends: a sleep that ended is listed until its
//! owner has acted on it (and, if it sleeps again, made its next sleep first).
//!
//! Why not tokio's paused time: a paused tokio clock moves by itself to the next
//! timer whenever the runtime has nothing to do, and the runtime has nothing to do
//! exactly while the attempts' OS threads do the I/O. A healthy stick would be
//! judged stalled and a removal grace would end before the removal it waits for.
//! Tokio's clock can also not be read from those threads, which stamp their
//! heartbeats with the time ([`Clock::now`] can be read from any thread).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

    /// A future that ends when the clock shows `deadline` or later.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        match self {
            Clock::System => Sleep {
                wait: Box::pin(tokio::time::sleep_until(deadline.into())),
                _listed: None,
            },
            Clock::Manual(clock) => clock.sleep_until(deadline),
        }
    }
}

/// A sleep on a [`Clock`]: ends when the clock shows its deadline. On a manual
/// clock it is listed among the clock's sleeps from when it is made until it is
/// dropped.
pub struct Sleep {
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Its entry among a manual clock's sleeps, removed on drop.
    _listed: Option<Listed>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.wait.as_mut().poll(cx)
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self._listed.as_ref().map(|l| l.deadline))
            .finish_non_exhaustive()
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

    /// The deadlines of the sleeps on the clock (made and not dropped), in the
    /// order they were made.
    pub fn sleeps(&self) -> Vec<Instant> {
        self.0.sleeps.borrow().clone()
    }

    /// Waits until the deadlines of the sleeps on the clock satisfy `check`
    /// (for instance: a timer the test is about has been armed).
    pub async fn until_sleeps(&self, mut check: impl FnMut(&[Instant]) -> bool) {
        let mut sleeps = self.0.sleeps.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = sleeps.wait_for(|deadlines| check(deadlines)).await;
    }

    /// Waits until no sleep on the clock is due: every sleep the clock has
    /// reached has been dropped by its owner, which has acted on it (a
    /// watchdog has given its verdict, or made its next sleep, which is later).
    pub async fn until_nothing_due(&self) {
        let now = self.now();
        self.until_sleeps(|deadlines| deadlines.iter().all(|&d| d > now))
            .await;
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let manual = self.0.clone();
        let wait = async move {
            let mut moved = manual.moved.subscribe();
            while manual.origin + *moved.borrow_and_update() < deadline {
                // The sender lives in `manual`, which this future holds:
                // `changed` cannot fail.
                let _ = moved.changed().await;
            }
        };
        Sleep {
            wait: Box::pin(wait),
            _listed: Some(Listed::new(self.0.clone(), deadline)),
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

/// One sleep's entry among a manual clock's sleeps, removed when the sleep is
/// dropped.
struct Listed {
    clock: Arc<Manual>,
    deadline: Instant,
}

impl Listed {
    fn new(clock: Arc<Manual>, deadline: Instant) -> Self {
        clock.sleeps.send_modify(|sleeps| sleeps.push(deadline));
        Self { clock, deadline }
    }
}

impl Drop for Listed {
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
    async fn a_sleep_that_ended_is_listed_until_its_owner_drops_it() {
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_secs(1);
        let shared = Clock::Manual(clock.clone());
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let (drop_tx, drop_it) = tokio::sync::oneshot::channel::<()>();
        let owner = tokio::spawn(async move {
            let mut sleep = Box::pin(shared.sleep_until(deadline));
            (&mut sleep).await;
            let _ = ended_tx.send(());
            // Sleeps again, the next sleep made before the first is dropped.
            sleep.set(shared.sleep_until(deadline + Duration::from_secs(1)));
            let _ = drop_it.await;
        });
        clock.until_sleeps(|d| d == [deadline]).await;
        clock.advance(Duration::from_secs(1));
        ended.await.unwrap();
        // Handled: the next one is listed, and nothing is due.
        clock.until_nothing_due().await;
        assert_eq!(clock.sleeps(), [deadline + Duration::from_secs(1)]);
        let _ = drop_tx.send(());
        owner.await.unwrap();
        assert!(clock.sleeps().is_empty());
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
