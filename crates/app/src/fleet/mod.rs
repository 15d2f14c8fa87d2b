//! The station's side of the fleet: shipping its records to the hub, reporting
//! its rack live, and following the hub's orders. Three tasks beside the
//! station, started by [`Application`](crate::Application) when the
//! configuration has a `[fleet]` section:
//! - [`shipper`]: reads the outbox in order, sends batches, marks them
//!   shipped only on the hub's acknowledgement, backs off while the hub is
//!   down and drains the backlog when it is back;
//! - [`live`]: the station's snapshot pushed to the hub when it changes (at
//!   most 4 times a second) and every few seconds regardless;
//! - [`orders`]: long-polls the hub's orders, fetches a missing image by its
//!   sha256 (resumable, verified) and arms or stops the run the hub asks for.
//!
//! **Architecture invariant:** the station never waits on the network. The
//! tasks only read what the station publishes (snapshots, events) and the
//! outbox its records already hold, and send it the same commands an operator
//! does; nothing of the station, its journal or the web side awaits them.
//! With the hub down, sticks are written, verdicts recorded and reports
//! served as before, and the outbox grows.

pub mod live;
pub mod orders;
pub mod shipper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashrack_fleet_client::HubClient;
use flashrack_web::FleetView;
use tokio::sync::watch;

/// The fleet's shared state: the client, and the view the web side shows.
#[derive(Clone)]
pub struct Fleet {
    /// The hub's client.
    pub client: HubClient,
    /// The station's link to the hub, as shown at `GET /api/v1/fleet`.
    pub view: Arc<watch::Sender<FleetView>>,
    /// Whether the shipper's last batch failed: its error then stays the
    /// view's `last_error` until a batch is acknowledged, whatever the live
    /// reports and orders' polls meet. The hub may answer those and refuse
    /// every batch (another station ships under this station's id): their
    /// success must not hide why the backlog only grows. An atomic: set by
    /// the shipper, read by every task's `contact`.
    batch_failed: Arc<AtomicBool>,
}

impl Fleet {
    /// A fleet link over `client`, not yet connected.
    pub fn new(client: HubClient) -> Self {
        let view = FleetView::new(client.hub(), client.station_id());
        Self {
            client,
            view: Arc::new(watch::channel(view).0),
            batch_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records an exchange with the hub that succeeded.
    /// A batch refused or lost stays the `last_error` (see
    /// [`shipped`](Self::shipped)).
    pub(crate) fn contact(&self) {
        let keep_error = self.batch_failed.load(Ordering::Relaxed);
        self.view.send_if_modified(|view| {
            let changed = !view.connected || (!keep_error && view.last_error.is_some());
            view.connected = true;
            if !keep_error {
                view.last_error = None;
            }
            view.last_contact_at = Some(now_ms());
            changed
        });
    }

    /// Records a batch the hub acknowledged: the shipper's error, if any,
    /// is over.
    pub(crate) fn shipped(&self) {
        self.batch_failed.store(false, Ordering::Relaxed);
        self.contact();
    }

    /// Records a batch that failed (the hub unreachable, or refusing it):
    /// its error stays the `last_error` until a batch is acknowledged.
    pub(crate) fn ship_failed(&self, error: &str) {
        self.batch_failed.store(true, Ordering::Relaxed);
        self.lost(error);
    }

    /// Records a failed request of the live reporter or the orders' poller:
    /// the hub is unreachable or refuses the token. Another answer (a hub
    /// without that endpoint, a 5xx) is only logged: the shipper's batches
    /// say whether records reach the hub.
    pub(crate) fn failed(&self, error: &flashrack_fleet_client::ClientError) {
        use flashrack_fleet_client::ClientError;
        match error {
            ClientError::Unreachable(_) | ClientError::Refused { .. } => {
                self.lost(&error.to_string());
            }
            _ => tracing::warn!(%error, "the hub refused a request"),
        }
    }

    /// Records an exchange with the hub that failed.
    pub(crate) fn lost(&self, error: &str) {
        self.view.send_if_modified(|view| {
            let changed = view.connected || view.last_error.as_deref() != Some(error);
            view.connected = false;
            view.last_error = Some(error.to_string());
            changed
        });
    }
}

/// Unix milliseconds now, by the station's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Waits between tries while the hub cannot be reached: doubling from
/// `first` up to `max`, with ±20 % jitter so that a rack of stations that lost
/// the hub together do not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The next wait, and doubles the one after.
    pub(crate) fn next_wait(&mut self) -> Duration {
        use rand::Rng;
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// After a success: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        let nominal = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000];
        for (wait, nominal) in waits.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait >= nominal.mul_f64(0.8) && *wait <= nominal.mul_f64(1.2),
                "{wait:?} vs {nominal:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(300));
    }
}
