//! `POST` [`paths::RECORDS`](flashrack_fleet::paths::RECORDS): a station's
//! batch of outbox entries, answered with a [`BatchAck`] once it is durably
//! stored.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use flashrack_fleet::{BatchAck, RecordBatch};
use flashrack_http::{ApiBytes, AppError};

use crate::pg::PgError;

use super::{internal, station_of, HubState};

/// Takes a batch: the token first (a stranger's body is never parsed), then
/// the batch, which must be the token's station's.
pub(super) async fn post(
    State(state): State<HubState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<BatchAck>, AppError> {
    let station = station_of(&state, &headers).await?;
    let batch: RecordBatch = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request(format!("malformed batch: {e}")))?;
    if batch.station_id != station {
        return Err(AppError::forbidden(format!(
            "this token belongs to station {station:?}, not {:?}",
            batch.station_id
        )));
    }
    let ack = match state
        .db
        .ingest(&station, &batch, state.silent_after_ms)
        .await
    {
        Ok(ack) => ack,
        Err(PgError::Conflict(reason)) => {
            // Shown with the station until a batch is taken: it was only
            // "behind", its records never arriving.
            state.db.note_records_refused(&station, &reason).await;
            return Err(AppError::conflict(reason));
        }
        Err(error) => return Err(internal(error)),
    };
    tracing::debug!(
        station,
        acked_through = ack.acked_through,
        applied = ack.applied,
        duplicates = ack.duplicates,
        "batch stored"
    );
    Ok(Json(ack))
}
