//! `POST` [`paths::LIVE`](flashrack_fleet::paths::LIVE): a station's live
//! report, answered with its orders.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use flashrack_fleet::{LiveReport, Orders, PROTOCOL_VERSION};
use flashrack_http::{ApiBytes, AppError};

use super::{internal, station_of, HubState};

/// Takes a live report (the token first, then the report, which must be the
/// token's station's, from the instance the hub's view of the station is,
/// else a 409) and answers the station's orders.
pub(super) async fn post(
    State(state): State<HubState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Orders>, AppError> {
    let station = station_of(&state, &headers).await?;
    let report: LiveReport = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request(format!("malformed live report: {e}")))?;
    if report.protocol != PROTOCOL_VERSION {
        return Err(AppError::bad_request(format!(
            "protocol version {} is not spoken here (the hub speaks {PROTOCOL_VERSION})",
            report.protocol
        )));
    }
    if report.station_id != station {
        return Err(AppError::forbidden(format!(
            "this token belongs to station {station:?}, not {:?}",
            report.station_id
        )));
    }
    state
        .db
        .record_live(&station, &report, state.silent_after_ms)
        .await
        .map_err(internal)?;
    let orders = state.db.orders_for(&station).await.map_err(internal)?;
    Ok(Json(orders))
}
