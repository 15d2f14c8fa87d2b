//! The hub's HTTP API: the stations' side (records, live reports, orders,
//! images; under [`flashrack_fleet::paths`]) and the operators' side
//! (stations, the live stream, lots, images, reports; under `/api/v1`).
//!
//! Every request passes the `Host`/`Origin` judge of `flashrack-http`. A
//! station's request needs its station token: the hub takes what it sends
//! only under the id the token belongs to. An operator's request needs an
//! operator token once the database holds one (see `operator`).

mod images;
mod live;
mod operator;
mod orders;
mod records;
mod reports;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flashrack_fleet::paths;
use flashrack_http::AppError;
use flashrack_image::ImageCache;
use tower_http::trace::TraceLayer;

pub(crate) use images::remove_stale_uploads;
pub use images::{requested_range, ImageInfo};
pub use orders::MAX_WAIT;

use crate::pg::{HubDb, PgError, Role};
use crate::watch::Watch;

/// The largest request body a station may send (a batch of records).
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct HubState {
    /// The database (a pool: cloning shares it).
    pub db: HubDb,
    /// Host names the hub answers to besides loopback names and addresses.
    pub allowed_hosts: Arc<Vec<String>>,
    /// Whether the hub listens on loopback only: then, while the database
    /// holds no operator token, the operator routes are open.
    pub loopback: bool,
    /// A station not heard from for this long is silent (milliseconds).
    pub silent_after_ms: i64,
    /// What this process hears of changes (its listener's output).
    pub watch: Watch,
    /// The hub's image cache.
    pub images: ImageCache,
    /// The hub's directory (uploads are staged under it).
    pub data_dir: PathBuf,
    /// Turns true when the hub shuts down: endless responses end.
    pub stopped: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The hub's routes.
pub fn router(state: HubState) -> Router {
    let operator = Router::new()
        .route("/api/v1/stations", get(operator::stations))
        .route("/api/v1/events", get(operator::events))
        .route("/api/v1/lots", get(orders::list).post(orders::arm))
        .route("/api/v1/lots/{id}/stop", post(orders::stop))
        .route("/api/v1/lots/{id}/report", get(reports::lot))
        .route("/api/v1/devices/{key}", get(reports::device))
        .route("/api/v1/image-origins", get(reports::image_origins))
        .route(
            "/api/v1/images",
            get(images::list)
                .post(images::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operator::require_operator,
        ));
    Router::new()
        .route(
            paths::RECORDS,
            post(records::post).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route(paths::LIVE, post(live::post))
        .route(paths::ORDERS, get(orders::get))
        .route(&format!("{}/{{sha256}}", paths::IMAGES), get(images::get))
        .route("/api/v1/health", get(health))
        .route("/", get(page))
        .route("/hub.js", get(script))
        .merge(operator)
        .fallback(not_found)
        .method_not_allowed_fallback(flashrack_http::error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), origin))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /api/v1/health`: 200 while the database answers, else 503.
async fn health(State(state): State<HubState>) -> Result<&'static str, AppError> {
    sqlx::query("SELECT 1")
        .execute(state.db.pool())
        .await
        .map_err(crate::pg::sql("checking the database"))
        .map_err(internal)?;
    Ok("ok\n")
}

/// Any other path: a JSON 404, as every refusal of the API.
async fn not_found() -> AppError {
    AppError::not_found("no such endpoint")
}

/// `GET /`: the dashboard (it asks for the operator token when the API
/// answers 401).
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../../../web/hub.html"),
    )
        .into_response()
}

/// `GET /hub.js`: the dashboard's script.
async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../../web/hub.js"),
    )
        .into_response()
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

/// A database failure as a 500, a database out of reach as a 503 (at once:
/// within [`ACQUIRE_TIMEOUT`](crate::pg::ACQUIRE_TIMEOUT), never a hang), or
/// a refused request as a 400 (malformed) or a 409 (contradicts what the hub
/// holds).
pub(crate) fn internal(error: PgError) -> AppError {
    match error {
        PgError::Invalid(reason) => AppError::bad_request(reason),
        PgError::Conflict(reason) => AppError::conflict(reason),
        other if other.is_unavailable() => {
            tracing::warn!(error = %other, "the database is unavailable");
            AppError::unavailable("the hub's database is unavailable: try again later")
        }
        other => AppError::internal(other),
    }
}
