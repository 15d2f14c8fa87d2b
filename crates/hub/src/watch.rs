//! What a hub process hears of changes, its own and other processes': one
//! `LISTEN` connection on [`pg::CHANNEL`](crate::pg::CHANNEL), turned into
//! fresh [`StationView`]s for the operators' event streams and into wake-ups
//! for the stations' long-polls.
//!
//! A notice only says which station changed (`{"kind": …, "station": …}`);
//! the listener re-reads the station by id, so a notice is never trusted for
//! content. A notice sent while the listener was disconnected is gone
//! (PostgreSQL does not queue them for a connection that is not there), so
//! after every (re)connection, once it listens again, the listener re-reads
//! every station and sends the whole fleet ([`Change::Resync`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};

use crate::pg::{HubDb, StationView, CHANNEL};

/// A change of the fleet as an operator's stream sends it.
#[derive(Debug, Clone)]
pub enum Change {
    /// One station, re-read after a notice.
    Station(Box<StationView>),
    /// Every station, re-read after the listener (re)connected.
    Resync(Vec<StationView>),
}

/// A notice as sent on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Notice {
    /// What changed: `records`, `live`, `orders`, `images`.
    pub kind: String,
    /// Which station (empty for a change of no one station).
    #[serde(default)]
    pub station: String,
}

/// The channels a hub process's handlers subscribe to.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Fresh views for the operators' event streams. A broadcast: a slow
    /// stream lags and then re-reads the fleet rather than holding others up.
    changes: broadcast::Sender<Arc<Change>>,
    /// Every notice (and a `resync` notice after a reconnection), for
    /// long-polls that re-read their own station.
    notices: broadcast::Sender<Notice>,
    /// Turns true once the listener listens for the first time: a change
    /// made before is not heard, only re-read (see [`Watch::listening`]).
    listening: Arc<watch::Sender<bool>>,
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    /// Channels with nobody listening yet.
    pub fn new() -> Self {
        Self {
            changes: broadcast::channel(1024).0,
            notices: broadcast::channel(1024).0,
            listening: Arc::new(watch::channel(false).0),
        }
    }

    /// Completes once the listener has listened at least once. The hub
    /// serves only then: a stream opened earlier would read the fleet, miss
    /// the notice of a change made before the listener listened, and get
    /// that change only in the listener's first re-read (a `snapshot`, not
    /// a `station` event).
    pub async fn listening(&self) {
        let mut listening = self.listening.subscribe();
        let _ = listening.wait_for(|l| *l).await;
    }

    /// Fresh views from now on.
    pub fn changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Notices from now on.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// Listens until `stopped` turns true: reconnects after any loss (pausing a
/// second between failed attempts), and re-reads everything each time it
/// listens again.
pub async fn run_listener(
    db: HubDb,
    watch: Watch,
    silent_after_ms: i64,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let listening = async {
            let mut listener = PgListener::connect_with(db.pool()).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stopped.changed() => return,
            listening = listening => match listening {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for the hub's notices; retrying");
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Listening now: whatever changed before is read, not waited for.
        resync(&db, &watch, silent_after_ms).await;
        watch.listening.send_replace(true);
        loop {
            let next = tokio::select! {
                _ = stopped.changed() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => {
                    let Ok(notice) = serde_json::from_str::<Notice>(notification.payload()) else {
                        tracing::warn!(payload = notification.payload(), "an unreadable notice");
                        continue;
                    };
                    if !notice.station.is_empty() {
                        match db
                            .station_views(Some(&notice.station), silent_after_ms)
                            .await
                        {
                            Ok(views) => {
                                for view in views {
                                    let _ = watch
                                        .changes
                                        .send(Arc::new(Change::Station(Box::new(view))));
                                }
                            }
                            Err(error) => tracing::warn!(%error, "cannot re-read a station"),
                        }
                    }
                    let _ = watch.notices.send(notice);
                }
                // The connection was lost (and sqlx may have reconnected
                // already): notices may have been missed either way.
                Ok(None) => {
                    tracing::info!("the hub's listener lost its connection; re-reading");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "the hub's listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Sends every station afresh, and a `resync` notice.
async fn resync(db: &HubDb, watch: &Watch, silent_after_ms: i64) {
    match db.station_views(None, silent_after_ms).await {
        Ok(views) => {
            let _ = watch.changes.send(Arc::new(Change::Resync(views)));
        }
        Err(error) => tracing::warn!(%error, "cannot re-read the fleet"),
    }
    let _ = watch.notices.send(Notice {
        kind: "resync".into(),
        station: String::new(),
    });
}
