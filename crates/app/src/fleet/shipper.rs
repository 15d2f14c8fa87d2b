//! Shipping the outbox to the hub.
//!
//! Entries leave in sequence order, a batch at a time, and are marked shipped
//! only once the hub has acknowledged them (its `BatchAck` says it stored
//! them durably). A batch whose answer is lost is sent again; the hub keeps
//! each (station, sequence) once, so a replay changes nothing there. While
//! the hub cannot be reached the shipper waits (doubling, up to
//! [`MAX_BACKOFF`]) and the backlog grows in the station's SQLite; when the
//! hub is back, the backlog drains oldest first.
//!
//! The shipper wakes when the station publishes a change (every record the
//! station writes is committed before the change is shown), and at least
//! every [`POLL`] for records written without one (progress heartbeats).

use std::time::{Duration, Instant};

use flashrack_fleet::{RecordBatch, PROTOCOL_VERSION};
use flashrack_station::StationHandle;
use flashrack_store::Store;
use tokio::sync::broadcast::error::RecvError;

use super::{now_ms, Backoff, Fleet};
use crate::ShutdownSignal;

/// Entries per batch.
pub const BATCH: u32 = 1000;

/// The first wait after a failed batch.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between tries while the hub is unreachable: how long a
/// station may take to notice that the hub is back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest the shipper sleeps without looking at the outbox.
pub const POLL: Duration = Duration::from_secs(1);

/// How often the backlog shown is read again while a batch waits for the
/// hub's answer.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The least time between two looks at the outbox, so that a flood of
/// progress events costs a few queries a second, not one per event.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Shipped entries are kept this long (for a look after an incident), then
/// pruned.
const KEEP_SHIPPED: Duration = Duration::from_secs(24 * 3600);

/// How long a station's shutdown waits for the hub to take its last records
/// ([`flush`]).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// Ships what the outbox holds once more, within `patience`, once the
/// station has stopped: the records its shutdown wrote last (its attempts
/// ended `interrupted`, its run's stop) reach the hub now, rather than at
/// its next start (the hub showed them running, the run open, meanwhile, and
/// for good for a station retired after). Best effort: what the hub does
/// not take in time waits in the outbox as before.
pub async fn flush(fleet: &Fleet, store: &Store, patience: Duration) {
    match tokio::time::timeout(patience, drain(fleet, store, None)).await {
        Ok(Ok(())) => tracing::debug!("the last records reached the hub"),
        Ok(Err(())) => {
            tracing::info!("the last records wait in the outbox: the hub did not take them")
        }
        Err(_) => tracing::info!(
            secs = patience.as_secs(),
            "the last records wait in the outbox: the hub did not take them in time"
        ),
    }
}

/// Ships the outbox of `store` until `shutdown`.
pub async fn run(fleet: Fleet, store: Store, station: StationHandle, shutdown: ShutdownSignal) {
    let mut events = station.subscribe();
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut last_prune: Option<Instant> = None;
    let stop = shutdown.clone().raised();
    tokio::pin!(stop);
    loop {
        // A request the hub does not answer never holds up a shutdown: the
        // batch is dropped unacknowledged, and sent again at the next start.
        let drained = tokio::select! {
            drained = drain(&fleet, &store, Some(&shutdown)) => drained,
            () = &mut stop => return,
        };
        let wait = match drained {
            Ok(()) => {
                backoff.reset();
                if last_prune.is_none_or(|at| at.elapsed() > Duration::from_secs(600)) {
                    last_prune = Some(Instant::now());
                    let before = now_ms() - KEEP_SHIPPED.as_millis() as i64;
                    if let Err(error) = store.prune_shipped(before).await {
                        tracing::warn!(%error, "cannot prune the shipped outbox");
                    }
                }
                None
            }
            Err(()) => Some(backoff.next_wait()),
        };
        match wait {
            // The hub is not there: wait, whatever the station does.
            Some(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stop => return,
                }
            }
            // All shipped: wait for the station to change something.
            None => {
                tokio::select! {
                    event = events.recv() => {
                        if let Err(RecvError::Closed) = event {
                            return;
                        }
                    }
                    () = tokio::time::sleep(POLL) => {}
                    () = &mut stop => return,
                }
                tokio::time::sleep(MIN_INTERVAL).await;
            }
        }
    }
}

/// Ships batches until the outbox is empty (`Ok`) or a batch fails (`Err`,
/// said in the fleet view and the log).
async fn drain(fleet: &Fleet, store: &Store, shutdown: Option<&ShutdownSignal>) -> Result<(), ()> {
    loop {
        if shutdown.is_some_and(ShutdownSignal::is_raised) {
            return Ok(());
        }
        let entries = match store.outbox_unshipped(BATCH).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "cannot read the outbox");
                return Err(());
            }
        };
        let backlog = store.outbox_backlog().await.unwrap_or(entries.len() as u64);
        fleet.view.send_if_modified(|view| {
            let changed = view.backlog != backlog;
            view.backlog = backlog;
            changed
        });
        let (Some(first), Some(last)) = (
            entries.first().map(|e| e.seq),
            entries.last().map(|e| e.seq),
        ) else {
            return Ok(());
        };
        let count = entries.len() as u64;
        let batch = RecordBatch {
            protocol: PROTOCOL_VERSION,
            station_id: fleet.client.station_id().to_string(),
            backlog: backlog.saturating_sub(count),
            entries,
            instance: Some(fleet.instance.clone()),
        };
        // While the hub takes its time answering (up to the request's
        // timeout), the backlog shown follows the outbox every second: it
        // stayed at what it was when the batch left (29 shown, 603 waiting).
        let ship = fleet.client.ship(&batch);
        tokio::pin!(ship);
        let answer = loop {
            tokio::select! {
                answer = &mut ship => break answer,
                () = tokio::time::sleep(BACKLOG_EVERY) => {
                    if let Ok(waiting) = store.outbox_backlog().await {
                        fleet.view.send_if_modified(|view| {
                            let changed = view.backlog != waiting;
                            view.backlog = waiting;
                            changed
                        });
                    }
                }
            }
        };
        let ack = match answer {
            Ok(ack) => ack,
            Err(error) => {
                tracing::warn!(%error, backlog, "cannot ship records to the hub; they wait in the outbox");
                fleet.ship_failed(&error.to_string());
                return Err(());
            }
        };
        if ack.acked_through < first {
            tracing::error!(
                acked_through = ack.acked_through,
                first,
                "the hub acknowledged none of the batch"
            );
            fleet.ship_failed("the hub acknowledged none of the batch");
            return Err(());
        }
        fleet.shipped();
        // Never more than was sent, whatever the hub says.
        let through = ack.acked_through.min(last);
        let marked = match store.mark_shipped(through).await {
            Ok(marked) => marked,
            Err(error) => {
                tracing::error!(%error, "cannot mark records shipped");
                return Err(());
            }
        };
        tracing::debug!(
            first,
            through,
            applied = ack.applied,
            duplicates = ack.duplicates,
            "records shipped"
        );
        fleet.view.send_modify(|view| {
            view.shipped += marked;
            view.backlog = view.backlog.saturating_sub(marked);
            if marked > 0 {
                view.last_shipped_at = Some(now_ms());
            }
        });
    }
}
