//! Reports across stations through `flashrack-report`: a lot's
//! (`GET /api/v1/lots/{id}/report?format=csv|json|html`) and a stick's
//! history (`GET /api/v1/devices/{key}?format=…`).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use flashrack_http::{ApiPath, ApiQuery, AppError};
use serde::Deserialize;

use super::{internal, HubState};

/// `?format=`.
#[derive(Debug, Deserialize)]
pub(super) struct FormatQuery {
    /// `csv`, `json` (the default) or `html`.
    format: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn answer(format: &str, body: String, file: &str) -> Result<Response, AppError> {
    let (kind, disposition) = match format {
        "csv" => ("text/csv; charset=utf-8", Some(format!("{file}.csv"))),
        "json" => ("application/json", None),
        "html" => ("text/html; charset=utf-8", None),
        other => {
            return Err(AppError::bad_request(format!(
                "format {other:?}: csv, json or html"
            )))
        }
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Some(name) = disposition {
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            h.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// `GET /api/v1/image-origins`: every image a station keeps whose origin it
/// recorded (downloaded, captured, built), as the dashboard shows it:
/// `[{"station_id", "sha256", "name", "label", "words", "provenance"}]`,
/// `label` and `words` as the lot and device reports print them ("Downloaded
/// from" and the URL, validators, digest source and signer).
pub(super) async fn image_origins(
    State(state): State<HubState>,
) -> Result<axum::Json<serde_json::Value>, AppError> {
    let origins = state
        .db
        .image_origins_at_stations()
        .await
        .map_err(internal)?;
    Ok(axum::Json(serde_json::Value::Array(
        origins
            .into_iter()
            .map(|(station, origin)| {
                serde_json::json!({
                    "station_id": station,
                    "sha256": origin.sha256,
                    "name": origin.name,
                    "label": flashrack_report::origin_label(&origin.provenance),
                    "words": origin.provenance.to_string(),
                    "provenance": origin.provenance,
                })
            })
            .collect(),
    )))
}

/// A lot's report, across its stations.
pub(super) async fn lot(
    State(state): State<HubState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<FormatQuery>,
) -> Result<Response, AppError> {
    let id = super::orders::lot_id(&id)?;
    let format = query.format.as_deref().unwrap_or("json");
    let report = state
        .db
        .lot_report(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| AppError::not_found(format!("no lot {id}")))?;
    let body = match format {
        "csv" => flashrack_report::csv(&report.rows, &report.image_origins),
        "html" => flashrack_report::lot_html(&report, now_ms()),
        _ => flashrack_report::lot_json(&report),
    };
    answer(format, body, &file_name("lot", &report.lot.name))
}

/// A stick's history at every station.
pub(super) async fn device(
    State(state): State<HubState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<FormatQuery>,
) -> Result<Response, AppError> {
    // PostgreSQL's text holds no NUL (a query with one was a 500); no
    // device's key has one or a control character.
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "device key is empty, too long or has control characters",
        ));
    }
    let format = query.format.as_deref().unwrap_or("json");
    let report = state
        .db
        .device_history(&key)
        .await
        .map_err(internal)?
        .ok_or_else(|| AppError::not_found(format!("no station has seen a device {key:?}")))?;
    let body = match format {
        "csv" => flashrack_report::csv(&report.rows, &report.image_origins),
        "html" => flashrack_report::device_html(&report, now_ms()),
        _ => flashrack_report::device_json(&report),
    };
    answer(format, body, &file_name("device", &key))
}

/// A download's file name (without its extension): `prefix-` and `name` with
/// every character but ASCII letters, digits, `-` and `_` made `_`. A lot's
/// name is an operator's words and a device key a stick's: a quote in it
/// ended the `Content-Disposition` header's file name early, a line break
/// dropped the header, and `/` offered a path.
fn file_name(prefix: &str, name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}-{name}")
}
