//! The operators' side: the fleet's stations and their live stream.
//!
//! Every route here needs an operator token once the database holds one
//! (reading too: the hub shows every station's records). Without any, the
//! hub listens on loopback only (`Hub::build` refuses otherwise) and these
//! routes are open to this machine. The token travels in
//! `Authorization: Bearer`; only `GET`s may carry it as `?token=` (an
//! `EventSource` and a download link cannot set headers).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flashrack_http::auth::{bearer, query_param};
use flashrack_http::AppError;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use super::{internal, HubState};
use crate::pg::{Role, StationView};
use crate::watch::Change;

/// Middleware: an operator token, unless the hub is on loopback with none.
pub(super) async fn require_operator(
    State(state): State<HubState>,
    request: Request,
    next: Next,
) -> Response {
    let given = bearer(request.headers()).or_else(|| {
        (request.method() == axum::http::Method::GET)
            .then(|| query_param(request.uri().query(), "token"))
            .flatten()
    });
    let allowed = match given {
        Some(token) => match state.db.token_owner(token).await {
            Ok(Some(owner)) => owner.role == Role::Operator,
            Ok(None) => false,
            Err(error) => return internal(error).into_response(),
        },
        None if state.loopback => match state.db.has_operator_tokens().await {
            Ok(any) => !any,
            Err(error) => return internal(error).into_response(),
        },
        None => false,
    };
    if !allowed {
        return AppError::unauthorized().into_response();
    }
    next.run(request).await
}

/// `GET /api/v1/stations`: every station's view.
pub(super) async fn stations(
    State(state): State<HubState>,
) -> Result<Json<Vec<StationView>>, AppError> {
    let views = state
        .db
        .station_views(None, state.silent_after_ms)
        .await
        .map_err(internal)?;
    Ok(Json(views))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn snapshot(state: &HubState, stations: &[StationView]) -> Event {
    Event::default().event("snapshot").data(
        json!({
            "now": now_ms(),
            "silent_after_ms": state.silent_after_ms,
            "stations": stations,
        })
        .to_string(),
    )
}

/// `GET /api/v1/events`: the fleet live. First a `snapshot` (every station),
/// then a `station` event per change, a fresh `snapshot` after the hub's
/// listener reconnected (or when this stream fell behind), and a `ping`
/// (`{"now": …}`) every 5 s of quiet, by which the dashboard ages its
/// stations. Ends when the hub shuts down.
pub(super) async fn events(State(state): State<HubState>) -> Result<Response, AppError> {
    // Subscribed before reading, so that no change falls between the two.
    let mut changes = state.watch.changes();
    let first = state
        .db
        .station_views(None, state.silent_after_ms)
        .await
        .map_err(internal)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let mut stopped = state.stopped.clone();
    tokio::spawn(async move {
        if tx.send(Ok(snapshot(&state, &first))).await.is_err() {
            return;
        }
        loop {
            let stop = async {
                match stopped.as_mut() {
                    Some(stopped) => {
                        let _ = stopped.wait_for(|s| *s).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = stop => return,
                _ = tx.closed() => return,
                change = tokio::time::timeout(Duration::from_secs(5), changes.recv()) => match change {
                    Err(_) => Event::default().event("ping").data(json!({ "now": now_ms() }).to_string()),
                    Ok(Ok(change)) => match Arc::as_ref(&change) {
                        Change::Station(view) => Event::default()
                            .event("station")
                            .data(serde_json::to_string(view).unwrap_or_default()),
                        Change::Resync(all) => snapshot(&state, all),
                    },
                    Ok(Err(RecvError::Lagged(_))) => {
                        match state.db.station_views(None, state.silent_after_ms).await {
                            Ok(all) => snapshot(&state, &all),
                            Err(error) => {
                                tracing::warn!(%error, "cannot re-read the fleet for a stream");
                                return;
                            }
                        }
                    }
                    Ok(Err(RecvError::Closed)) => return,
                },
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The name of the operator whose token the request carries (`loopback`
/// when the hub is open on loopback).
pub(super) async fn operator_name(state: &HubState, headers: &axum::http::HeaderMap) -> String {
    match bearer(headers) {
        Some(token) => match state.db.token_owner(token).await {
            Ok(Some(owner)) => owner.name,
            _ => "unknown".into(),
        },
        None => "loopback".into(),
    }
}
