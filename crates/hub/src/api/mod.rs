//! The hub's HTTP API: the stations' side (records, live reports, orders,
//! images; under [`flashrack_fleet::paths`]) and the operators' side.
//!
//! Every request passes the `Host`/`Origin` judge of `flashrack-http`. A
//! station's request needs its station token: the hub takes what it sends
//! only under the id the token belongs to.

mod records;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flashrack_fleet::paths;
use flashrack_http::AppError;
use tower_http::trace::TraceLayer;

use crate::pg::{HubDb, PgError, Role};

/// The largest request body a station may send (a batch of records).
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct HubState {
    /// The database (a pool: cloning shares it).
    pub db: HubDb,
    /// Host names the hub answers to besides loopback names and addresses.
    pub allowed_hosts: Arc<Vec<String>>,
}

/// The hub's routes.
pub fn router(state: HubState) -> Router {
    Router::new()
        .route(
            paths::RECORDS,
            post(records::post).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/api/v1/health", get(health))
        .layer(axum::middleware::from_fn_with_state(state.clone(), origin))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /api/v1/health`: 200 while the database answers.
async fn health(State(state): State<HubState>) -> Result<&'static str, AppError> {
    sqlx::query("SELECT 1")
        .execute(state.db.pool())
        .await
        .map_err(AppError::internal)?;
    Ok("ok\n")
}

/// Middleware: refuses foreign host names and cross-origin changes.
async fn origin(State(state): State<HubState>, request: Request, next: Next) -> Response {
    if let Err(error) =
        flashrack_http::origin::judge(request.method(), request.headers(), &state.allowed_hosts)
    {
        return error.into_response();
    }
    next.run(request).await
}

/// The station whose token the request carries, or 401.
pub(crate) async fn station_of(state: &HubState, headers: &HeaderMap) -> Result<String, AppError> {
    let Some(token) = flashrack_http::auth::bearer(headers) else {
        return Err(AppError::unauthorized_because(
            "a station token is required (header: Authorization: Bearer <token>)",
        ));
    };
    match state.db.token_owner(token).await.map_err(internal)? {
        Some(owner) if owner.role == Role::Station => Ok(owner.name),
        _ => Err(AppError::unauthorized_because(
            "this is not a valid station token",
        )),
    }
}

/// A database failure as a 500, or a refused request as a 400.
pub(crate) fn internal(error: PgError) -> AppError {
    match error {
        PgError::Invalid(reason) => AppError::bad_request(reason),
        other => AppError::internal(other),
    }
}
