//! `GET /api/v1/events`: live changes as server-sent events.
//!
//! The stream opens with a `snapshot` event (every port and the run), then sends
//! `port`, `port_gone` and `run` events as they happen. A client that falls too far
//! behind gets a fresh `snapshot` instead of the events it missed. Keep-alive
//! comments every 15 s keep proxies from closing an idle stream; `EventSource`
//! reconnects by itself and starts again from a snapshot.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use flashrack_station::StationEvent;
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use crate::WebState;

fn snapshot_event(state: &WebState) -> Event {
    Event::default()
        .event("snapshot")
        .json_data(state.station.snapshot())
        .unwrap_or_else(|_| Event::default().comment("snapshot unavailable"))
}

fn station_event(event: &StationEvent) -> Event {
    let name = match event {
        StationEvent::Port { .. } => "port",
        StationEvent::PortGone { .. } => "port_gone",
        StationEvent::Run { .. } => "run",
    };
    Event::default()
        .event(name)
        .json_data(event)
        .unwrap_or_else(|_| Event::default().comment("event unavailable"))
}

/// The handler.
pub async fn stream(
    State(state): State<WebState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.station.subscribe();
    let state_shutdown = state.shutting_down.clone();
    let first = snapshot_event(&state);
    let rest = stream::unfold((receiver, state), |(mut receiver, state)| async move {
        let event = match receiver.recv().await {
            Ok(event) => station_event(&event),
            Err(RecvError::Lagged(_)) => snapshot_event(&state),
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
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
