//! Imports from URLs over the API: `POST /api/v1/images/import-url` starts
//! one (the application downloads and imports it in the background, through
//! the [`UrlImports`] seam: this crate has no HTTP client), `GET
//! /api/v1/images/downloads` shows each with its progress (bytes, rate, time
//! left), its outcome and the image's provenance, and `POST
//! /api/v1/images/downloads/{id}/resume` starts an interrupted or failed one
//! again from its partial download.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ApiJson;
use crate::{AppError, WebState};

/// What the operator asks for: the body of `POST /api/v1/images/import-url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UrlImportRequest {
    /// The image's URL (http or https).
    pub url: String,
    /// The expected sha256 of the file or of the image inside.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A checksum list (`SHA256SUMS`) that gives the file's sha256 by name.
    #[serde(default)]
    pub sha256sums: Option<String>,
    /// The list's detached OpenPGP signature; needs `keyring`.
    #[serde(default)]
    pub signature: Option<String>,
    /// The public keys to trust, armored (`gpg --export --armor`).
    #[serde(default)]
    pub keyring: Option<String>,
    /// The image's block map (bmaptool's XML) at its own URL (http or
    /// https); it must be there and describe the image, or the import
    /// fails. Without it, a map beside the image's URL is used if there is
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmap: Option<String>,
    /// `true`: look for no block map beside the image (none is fetched; the
    /// image gets one generated from its file systems afterwards where
    /// flashrack reads them). Not with `bmap`. A lookup beside the image
    /// that meets a server error or a timeout is only a warning anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_bmap: bool,
    /// The file to import from a zip archive that holds more than one (its
    /// name in the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_entry: Option<String>,
}

impl UrlImportRequest {
    /// A request for `url` alone: nothing checked, no zip entry named.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sha256: None,
            sha256sums: None,
            signature: None,
            keyring: None,
            bmap: None,
            no_bmap: false,
            zip_entry: None,
        }
    }

    /// The same request, with the expected sha256 of the file or of the
    /// image inside.
    pub fn sha256(self, hex: impl Into<String>) -> Self {
        Self {
            sha256: Some(hex.into()),
            ..self
        }
    }
}

/// The application's side of URL imports.
pub trait UrlImports: Send + Sync {
    /// Checks the request and starts the import in the background; answers
    /// with its view (`{"id", …}`) or why not.
    fn start(&self, request: UrlImportRequest) -> Result<Value, StartError>;
    /// Every import this station started (kept across restarts where the
    /// station keeps records), newest first: `{"id", "url", "state",
    /// "held", "total", "rate_bytes_per_sec", "eta_secs", "error", "image",
    /// "provenance"}`; `state` is checking, downloading, done, failed or
    /// interrupted (left running by a stop or a crash).
    fn list(&self) -> Value;
    /// Starts import `id` again with the request it was started with,
    /// continuing from its partial download: one that was interrupted or
    /// failed. Default: no import can be resumed.
    fn resume(&self, id: u64) -> Result<Value, ResumeError> {
        Err(ResumeError::NotFound(format!(
            "no import {id} to resume on this station"
        )))
    }
}

/// Why an import was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The request cannot be followed (400): the reason.
    Bad(String),
    /// Its URL is being imported already (409).
    Running(String),
}

/// Why an import cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// There is no such import (404).
    NotFound(String),
    /// Not in a state to resume: running, or done (409).
    Conflict(String),
}

/// `POST /api/v1/images/downloads/{id}/resume`: 202 with the import's view;
/// 400 for an id that is not a number, 404 for no such import, 409 for one
/// running or done.
pub async fn resume(
    State(state): State<WebState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let id: u64 = id
        .parse()
        .map_err(|_| AppError::bad_request(format!("{id:?} is not an import id (a number)")))?;
    let imports = state
        .url_imports
        .as_ref()
        .ok_or_else(|| AppError::not_found("this station does not import from URLs"))?;
    match imports.resume(id) {
        Ok(view) => Ok((StatusCode::ACCEPTED, Json(view))),
        Err(ResumeError::NotFound(reason)) => Err(AppError::not_found(reason)),
        Err(ResumeError::Conflict(reason)) => Err(AppError::conflict(reason)),
    }
}

/// `POST /api/v1/images/import-url`
pub async fn import_url(
    State(state): State<WebState>,
    ApiJson(body): ApiJson<UrlImportRequest>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let imports = state
        .url_imports
        .as_ref()
        .ok_or_else(|| AppError::not_found("this station does not import from URLs"))?;
    match imports.start(body) {
        Ok(view) => Ok((StatusCode::ACCEPTED, Json(view))),
        Err(StartError::Bad(reason)) => Err(AppError::bad_request(reason)),
        Err(StartError::Running(reason)) => Err(AppError::conflict(reason)),
    }
}

/// `GET /api/v1/images/downloads`
pub async fn downloads(State(state): State<WebState>) -> Json<Value> {
    Json(
        state
            .url_imports
            .as_ref()
            .map_or_else(|| Value::Array(Vec::new()), |imports| imports.list()),
    )
}
