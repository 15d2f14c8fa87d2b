//! Speed limits: a stick moves its bytes no faster than its spec's rates.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use flashrack_target::TargetError;

use super::stick::Inner;

/// Paces one direction of I/O: each call reserves `bytes / rate` of device time
/// after the previous reservation, so pacing is exact over many calls however long
/// the caller takes between them (up to `SLACK` of idle time is made up for).
#[derive(Default)]
pub(super) struct Pacer {
    next_free: Option<Instant>,
}

impl Pacer {
    /// Idle time the device may make up for, so that the caller's own work between
    /// calls does not slow a stick below its rate.
    const SLACK: Duration = Duration::from_millis(20);

    /// Reserves time for `bytes` at `rate` and returns when the transfer is done.
    pub(super) fn reserve(&mut self, bytes: u64, rate: u64, now: Instant) -> Instant {
        let start = match self.next_free {
            // A fresh stick starts with no credit.
            None => now,
            Some(free) => free.max(now.checked_sub(Self::SLACK).unwrap_or(now)),
        };
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
        let end = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.next_free = Some(end);
        end
    }
}

impl Inner {
    /// Sleeps until `deadline` unless the stick is removed first.
    pub(super) fn pace(&self, deadline: Option<Instant>) -> Result<(), TargetError> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let mut state = self.lock();
        loop {
            if state.removed {
                return Err(TargetError::Removed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            state = self
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
