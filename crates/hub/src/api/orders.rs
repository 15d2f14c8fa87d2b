//! The stations' orders (`GET` [`paths::ORDERS`](flashrack_fleet::paths::ORDERS),
//! a long-poll) and the operators' lots (arm, stop, list).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use flashrack_core::Sha256Digest;
use flashrack_fleet::Orders;
use flashrack_http::{ApiBytes, ApiPath, ApiQuery, AppError};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{internal, station_of, HubState};
use crate::pg::{LotView, NewLot};

/// The longest a station's long-poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// `?station=&after=&wait=`.
#[derive(Debug, Deserialize)]
pub(super) struct OrdersQuery {
    /// The station (must be the token's, when given).
    station: Option<String>,
    /// The version the station has: answer when a newer one exists.
    after: Option<i64>,
    /// How long to wait for one, in seconds (at most 60).
    wait: Option<u64>,
}

/// `GET paths::ORDERS`: the station's orders; with `after`, waits (up to
/// `wait` seconds) until their version is newer, woken by the hub's notices
/// (any hub process may have changed them), and answers what there is then.
pub(super) async fn get(
    State(state): State<HubState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Json<Orders>, AppError> {
    let station = station_of(&state, &headers).await?;
    if query.station.as_ref().is_some_and(|s| *s != station) {
        return Err(AppError::forbidden(format!(
            "this token belongs to station {station:?}"
        )));
    }
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_WAIT);
    // Subscribed before reading: a change between the two is not missed.
    let mut notices = state.watch.notices();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let orders = state.db.orders_for(&station).await.map_err(internal)?;
        let Some(after) = query.after else {
            return Ok(Json(orders));
        };
        if orders.version > after {
            return Ok(Json(orders));
        }
        // Wait for a notice about this station (or a resync), or the end.
        loop {
            let notice = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(Json(orders)),
                notice = notices.recv() => notice,
            };
            match notice {
                Ok(n) if n.kind == "resync" || (n.kind == "orders" && n.station == station) => {
                    break
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return Ok(Json(orders)),
            }
        }
    }
}

/// What an operator sends to arm a lot. A field the hub does not know is
/// refused, not ignored: a misspelt `options` would arm a lot with the
/// station's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArmRequest {
    /// The lot's name (made up when absent).
    name: Option<String>,
    /// The image, by sha256: the hub's cache must hold it.
    image_sha256: String,
    /// Verify mode, eject on pass, target count … (a JSON object).
    #[serde(default)]
    options: serde_json::Map<String, serde_json::Value>,
    /// The stations.
    stations: Vec<String>,
}

/// The longest lot name taken, in characters.
const MAX_LOT_NAME: usize = 200;

/// A lot's name as given: trimmed, none when empty (the hub makes one up:
/// `lot-<id>`); refused when longer than [`MAX_LOT_NAME`] characters or
/// holding control or invisible formatting characters (it is printed on
/// every report of the lot, and names its files).
fn lot_name(name: Option<String>) -> Result<Option<String>, AppError> {
    let Some(name) = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > MAX_LOT_NAME || flashrack_core::has_unprintable(&name) {
        return Err(AppError::bad_request(format!(
            "a lot's name must be at most {MAX_LOT_NAME} characters, without control \
             characters or invisible formatting characters (such as U+202E); got {:?}",
            flashrack_core::printable_name(&name.chars().take(80).collect::<String>())
        )));
    }
    Ok(Some(name))
}

/// `POST /api/v1/lots`: arms a lot; answers it as listed.
pub(super) async fn arm(
    State(state): State<HubState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<LotView>, AppError> {
    let mut request: ArmRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request(format!("malformed request: {e}")))?;
    request.name = lot_name(request.name)?;
    // Judged as each station will judge its order, before anything is
    // disarmed: options no station can use stopped the stations' working
    // lot runs, then failed there.
    flashrack_core::RunOptions::of_order(&serde_json::Value::Object(request.options.clone()))
        .map_err(AppError::bad_request)?;
    let digest = Sha256Digest::parse(&request.image_sha256)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let cache = state.images.clone();
    let image = tokio::task::spawn_blocking(move || cache.get(&digest))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?
        .ok_or_else(|| {
            AppError::conflict(format!(
                "the hub holds no image {}: upload it first",
                request.image_sha256
            ))
        })?;
    let operator = super::operator::operator_name(&state, &headers).await;
    let id = state
        .db
        .arm_lot(&NewLot {
            name: request.name,
            image_sha256: image.sha256(),
            image_name: image.meta.original_name.clone(),
            image_size: image.size(),
            options: serde_json::Value::Object(request.options),
            stations: request.stations,
            created_by: operator,
        })
        .await
        .map_err(internal)?;
    lot_by_id(&state, id).await.map(Json)
}

async fn lot_by_id(state: &HubState, id: i64) -> Result<LotView, AppError> {
    state
        .db
        .lots()
        .await
        .map_err(internal)?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| AppError::not_found(format!("no lot {id}")))
}

/// A lot's id as a path gives it: a positive number, or a 400 that says so
/// (not the router's own text).
pub(super) fn lot_id(text: &str) -> Result<i64, AppError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::bad_request(format!("{text:?} is not a lot id")))
}

/// `POST /api/v1/lots/{id}/stop`.
pub(super) async fn stop(
    State(state): State<HubState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LotView>, AppError> {
    let id = lot_id(&id)?;
    if !state.db.stop_lot(id).await.map_err(internal)? {
        return Err(AppError::not_found(format!("no lot {id}")));
    }
    lot_by_id(&state, id).await.map(Json)
}

/// `GET /api/v1/lots`: every lot, desired and actual per station.
pub(super) async fn list(State(state): State<HubState>) -> Result<Json<Vec<LotView>>, AppError> {
    Ok(Json(state.db.lots().await.map_err(internal)?))
}
