//! The live rack at the hub: the station's snapshot (its own event model, as
//! its API serves it), pushed when it changes and every [`KEEPALIVE`]
//! regardless, so that the hub can tell a quiet station from a silent one.
//!
//! Every report is a whole snapshot, so the first report after the hub comes
//! back is the full picture; there is no stream of changes to replay. Reports
//! are at most [`MIN_INTERVAL`] apart: a change is at the hub at most about a
//! quarter of a second (plus the request) after the station shows it. The
//! hub's answer is the station's orders, handed to the order follower.

use std::time::Duration;

use flashrack_fleet::{LiveReport, Orders, PROTOCOL_VERSION};
use flashrack_station::StationHandle;
use tokio::sync::watch;

use super::{now_ms, Backoff, Fleet};
use crate::ShutdownSignal;

/// The least time between two reports.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A report is sent at least this often, changed or not.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Reports the station's rack to the hub until `shutdown`; the orders the hub
/// answers with go to `orders`.
pub async fn run(
    fleet: Fleet,
    station: StationHandle,
    orders: watch::Sender<Option<Orders>>,
    shutdown: ShutdownSignal,
) {
    let mut snapshots = station.watch();
    let mut view = fleet.view.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let stop = shutdown.clone().raised();
    tokio::pin!(stop);
    loop {
        snapshots.mark_unchanged();
        view.mark_unchanged();
        let (backlog, order) = {
            let view = view.borrow();
            (view.backlog, view.order.clone())
        };
        let report = LiveReport {
            protocol: PROTOCOL_VERSION,
            station_id: fleet.client.station_id().to_string(),
            instance: Some(fleet.instance.clone()),
            sent_at: now_ms(),
            snapshot: serde_json::to_value(&*snapshots.borrow()).unwrap_or(serde_json::Value::Null),
            backlog,
            order,
        };
        let answer = tokio::select! {
            answer = fleet.client.report_live(&report) => answer,
            () = &mut stop => return,
        };
        let (pause, sent) = match answer {
            Ok(answer) => {
                fleet.reported();
                backoff.reset();
                orders.send_if_modified(|held| {
                    let newer = held.as_ref().is_none_or(|h| answer.version > h.version);
                    if newer {
                        *held = Some(answer);
                    }
                    newer
                });
                (MIN_INTERVAL, true)
            }
            Err(error) => {
                tracing::debug!(%error, "cannot report the live rack to the hub");
                fleet.report_failed(&error);
                // Try again later, with whatever the rack is then.
                (backoff.next_wait(), false)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut stop => return,
        }
        if !sent {
            continue;
        }
        // Then wait for a change, or the keepalive.
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = view.changed() => {}
            () = tokio::time::sleep(KEEPALIVE.saturating_sub(pause)) => {}
            () = &mut stop => return,
        }
    }
}
