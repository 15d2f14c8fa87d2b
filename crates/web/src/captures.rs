//! Capturing a master stick over the API: `POST /api/v1/images/capture`
//! reads the stick in a master port (the configuration's `master = true`:
//! the station never writes it) into the image cache, in the background,
//! through the [`Captures`] seam (the application judges and reads the
//! device: this crate never touches one); `GET /api/v1/images/captures`
//! shows each capture with its progress (bytes, rate, time left), its
//! outcome, and the image's size against the smallest stick seen.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use flashrack_station::MasterStick;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{station_error, ApiJson};
use crate::{AppError, WebState};

/// The body of `POST /api/v1/images/capture`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// The master port's label; the first master port holding a stick when
    /// absent.
    #[serde(default)]
    pub port: Option<String>,
    /// The name the image is kept under: 1 to [`MAX_NAME`] letters or digits
    /// (of any script), `.`, `-`, `_` or `+`, not starting with a dot.
    pub name: String,
    /// Read the whole stick rather than up to the end of its last partition.
    #[serde(default)]
    pub whole: bool,
}

/// The longest image name a capture takes.
pub const MAX_NAME: usize = 128;

/// What the application is asked to capture: the stick the station holds
/// in a master port, as it saw it.
#[derive(Debug, Clone)]
pub struct CaptureStart {
    /// The port and its stick.
    pub master: MasterStick,
    /// The image's name (checked).
    pub name: String,
    /// Read the whole stick.
    pub whole: bool,
}

/// The application's side of captures.
pub trait Captures: Send + Sync {
    /// Judges the stick by the guard's rules for reading (a mounted master
    /// is refused here, before anything starts) and starts the capture in
    /// the background; answers with its view (`{"id", …}`) or the reason it
    /// was refused, for the operator.
    fn start(&self, request: CaptureStart) -> BoxFuture<'_, Result<Value, String>>;
    /// Every capture this station started since it started, newest first:
    /// `{"id", "port", "serial", "name", "whole", "state", "read", "total",
    /// "rate_bytes_per_sec", "eta_secs", "error", "image", "size",
    /// "device_size", "extent", "smallest_stick", "fits_smallest_stick",
    /// "block_map"}`.
    fn list(&self) -> Value;
}

/// Checks a capture's image name (see [`CaptureBody::name`]).
pub fn check_name(name: &str) -> Result<(), String> {
    // A name the file-name rules keep as it is: nothing to clean, nothing cut.
    if flashrack_core::file_name_from(name, MAX_NAME).as_deref() == Some(name) {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1-{MAX_NAME} letters or digits (of any script), '.', '-', '_' \
             or '+', not starting with '.' (at most {} bytes)",
            flashrack_core::MAX_FILE_NAME_BYTES
        ))
    }
}

/// `POST /api/v1/images/capture`: 202 with the capture's view; 400 for a
/// bad name, 404 for an unknown port or a station without a master port,
/// 409 for a port that is not a master port, an empty master port, or a
/// master the guard's rules for reading refuse (mounted, in use).
pub async fn capture(
    State(state): State<WebState>,
    ApiJson(body): ApiJson<CaptureBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    check_name(&body.name).map_err(AppError::bad_request)?;
    if let Some(port) = &body.port {
        if port.is_empty() || port.len() > 64 || flashrack_core::has_unprintable(port) {
            return Err(AppError::bad_request(
                "port must be a port's label (1-64 characters)",
            ));
        }
    }
    let captures = state
        .captures
        .as_ref()
        .ok_or_else(|| AppError::not_found("this station does not capture masters"))?;
    let master = state
        .station
        .master_stick(body.port.as_deref())
        .await
        .map_err(station_error)?;
    let view = captures
        .start(CaptureStart {
            master,
            name: body.name,
            whole: body.whole,
        })
        .await
        .map_err(AppError::conflict)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `GET /api/v1/images/captures`
pub async fn captures(State(state): State<WebState>) -> Json<Value> {
    Json(
        state
            .captures
            .as_ref()
            .map_or_else(|| Value::Array(Vec::new()), |captures| captures.list()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_name_is_a_plain_file_name() {
        assert!(check_name("golden-v3.img").is_ok());
        assert!(check_name("a_b.C-1").is_ok());
        assert!(check_name("gölden-映像+1.img").is_ok());
        for bad in [
            "",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "ab\u{202E}c",
            &"x".repeat(MAX_NAME + 1),
            &"映".repeat(MAX_NAME),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
