//! `GET /api/v1/events`: live changes as server-sent events.
//!
//! The stream opens with a `snapshot` event (every port and the run), then sends
//! `port`, `port_gone` and `run` events as they happen. A client that falls too far
//! behind gets a fresh `snapshot` instead of the events it missed. A `ping` event
//! whenever the stream has been quiet for [`PING_INTERVAL`] keeps proxies from
//! closing an idle stream and lets a client tell a quiet station from a lost one
//! (`EventSource` does not surface comments, and a half-open connection raises no
//! error): the dashboard calls its view stale when it has heard nothing for a
//! few intervals. `EventSource` reconnects by itself and starts again from a
//! snapshot.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use flashrack_station::StationEvent;
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::WebState;

/// The longest the event stream stays silent: a `ping` event is sent when
/// nothing else was for this long.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// A station event serialized once for every client; `None` asks the clients to
/// send themselves a fresh snapshot (the hub fell behind the station).
type Shared = Option<Arc<(&'static str, String)>>;

/// Turns each station event into JSON once, however many clients listen: with
/// dozens of dashboards open, serializing per client would cost more than the
/// events themselves. Started by the first client; cheap to clone.
#[derive(Clone, Default)]
pub struct EventHub(Arc<OnceLock<broadcast::Sender<Shared>>>);

impl EventHub {
    fn subscribe(&self, state: &WebState) -> broadcast::Receiver<Shared> {
        self.0
            .get_or_init(|| {
                let (tx, _) = broadcast::channel(1024);
                let mut station = state.station.subscribe();
                let hub = tx.clone();
                tokio::spawn(async move {
                    loop {
                        let shared = match station.recv().await {
                            Ok(event) => Some(Arc::new(serialize(&event))),
                            Err(RecvError::Lagged(_)) => None,
                            Err(RecvError::Closed) => break,
                        };
                        // No client listening is fine: the next one starts
                        // from a snapshot anyway.
                        let _ = hub.send(shared);
                    }
                });
                tx
            })
            .subscribe()
    }
}

fn serialize(event: &StationEvent) -> (&'static str, String) {
    let name = match event {
        StationEvent::Port { .. } => "port",
        StationEvent::PortGone { .. } => "port_gone",
        StationEvent::Run { .. } => "run",
        StationEvent::Arming { .. } => "arming",
    };
    (name, serde_json::to_string(event).unwrap_or_default())
}

fn snapshot_event(state: &WebState) -> Event {
    Event::default()
        .event("snapshot")
        .json_data(state.station.snapshot())
        .unwrap_or_else(|_| Event::default().comment("snapshot unavailable"))
}

/// The handler.
pub async fn stream(
    State(state): State<WebState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.events.subscribe(&state);
    let state_shutdown = state.shutting_down.clone();
    let first = snapshot_event(&state);
    let rest = stream::unfold((receiver, state), |(mut receiver, state)| async move {
        let event = match receiver.recv().await {
            Ok(Some(shared)) => Event::default().event(shared.0).data(shared.1.as_str()),
            Ok(None) | Err(RecvError::Lagged(_)) => snapshot_event(&state),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (receiver, state)))
    });
    // The stream ends when the server shuts down (else graceful shutdown would
    // wait for it forever).
    let mut shutting_down = state_shutdown;
    let ended = async move {
        match shutting_down.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|stop| *stop).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    Sse::new(
        stream::once(async move { Ok(first) })
            .chain(rest)
            .take_until(Box::pin(ended)),
    )
    .keep_alive(
        KeepAlive::new()
            .interval(PING_INTERVAL)
            .event(Event::default().event("ping").data("{}")),
    )
}
