//! How the station stands with its fleet hub, for `GET /api/v1/fleet` and the
//! `flashrack_fleet_*` metrics. The application's fleet tasks keep a
//! [`FleetView`] up to date; the web side only shows it.

use axum::extract::State;
use axum::Json;
use flashrack_fleet::OrderProgress;
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::WebState;

/// The station's link to its hub, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// The hub's URL.
    pub hub: String,
    /// The station's id at the hub.
    pub station_id: String,
    /// Whether the last exchange with the hub succeeded.
    pub connected: bool,
    /// Records written here and not yet acknowledged by the hub.
    pub backlog: u64,
    /// Records the hub acknowledged since the station started.
    pub shipped: u64,
    /// When the hub last answered (unix milliseconds).
    pub last_contact_at: Option<i64>,
    /// When the hub last acknowledged records of this station (unix
    /// milliseconds), since the station started.
    pub last_shipped_at: Option<i64>,
    /// Why the last exchange failed, while it does.
    pub last_error: Option<String>,
    /// The hub's order the station follows, and how far it got.
    pub order: Option<OrderProgress>,
}

impl FleetView {
    /// A station of the hub at `hub` that has not talked to it yet.
    pub fn new(hub: &str, station_id: &str) -> Self {
        Self {
            hub: hub.to_string(),
            station_id: station_id.to_string(),
            connected: false,
            backlog: 0,
            shipped: 0,
            last_contact_at: None,
            last_shipped_at: None,
            last_error: None,
            order: None,
        }
    }
}

/// `GET /api/v1/fleet`: the station's link to its hub (404 when it has
/// joined none).
pub async fn fleet(State(state): State<WebState>) -> Result<Json<FleetView>, AppError> {
    state
        .fleet
        .as_ref()
        .map(|view| Json(view.borrow().clone()))
        .ok_or_else(|| AppError::not_found("this station has joined no fleet"))
}
