//! The JSON API handlers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flashrack_core::{SamplePercent, Sha256Digest, VerifyMode};
use flashrack_engine::SourceImage;
use flashrack_image::{CachedImage, ImageCache, ImageError, ImportOptions, StoredMap};
use flashrack_station::{ArmRequest, RunOptions, RunRefusal, StationError};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::follow::{FollowArm, FollowSource, Followed};
use crate::{AppError, ReportFormat, WebState};

/// Query strings whose rejections (a number that is none, a field twice)
/// become [`AppError`]s: shared with the hub, in `flashrack-http`.
pub use flashrack_http::ApiQuery;

/// JSON bodies whose rejections (malformed JSON, wrong fields, wrong content
/// type) become [`AppError`]s with a clear message.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::bad_request(json_rejection_words(
                &rejection.body_text(),
            ))),
        }
    }
}

/// A JSON body's rejection in words for people: serde's type names said as
/// the numbers they take (`expected u32` is "expected a whole number from 0
/// to 4294967295"), after what axum says of the body.
fn json_rejection_words(text: &str) -> String {
    let mut words = text.to_string();
    for (serde, people) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("i64", "a whole number"),
        ("f64", "a number"),
    ] {
        words = words.replace(&format!("expected {serde}"), &format!("expected {people}"));
    }
    words
}

/// A station command's error as the API answers it.
pub fn station_error(error: StationError) -> AppError {
    match error {
        StationError::AlreadyArmed(_)
        | StationError::Arming
        | StationError::Stopping(_)
        | StationError::NotArmed
        | StationError::PortNotReady { .. }
        | StationError::MasterPort(_)
        | StationError::NotMaster(_)
        | StationError::NoStick(_)
        | StationError::ArmStopped => AppError::conflict(error.to_string()),
        StationError::UnknownPort(_) | StationError::NoMasterPort => {
            AppError::not_found(error.to_string())
        }
        StationError::Source(_) => AppError::unprocessable(error.to_string()),
        StationError::Stopped => AppError::unavailable(error.to_string()),
        StationError::Journal(_) => AppError::internal(error),
    }
}

/// An image crate's error as the API answers it.
pub fn image_error(error: ImageError) -> AppError {
    match &error {
        ImageError::NotFound { .. } => AppError::not_found(error.to_string()),
        ImageError::ReadInput { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            AppError::not_found(error.to_string())
        }
        ImageError::Ambiguous { .. }
        | ImageError::PrefixTooShort { .. }
        | ImageError::NotARegularFile { .. } => AppError::bad_request(error.to_string()),
        ImageError::OutsideImportDirs { .. } => AppError::forbidden(format!(
            "{error}: over the API, images are uploaded, or imported from the directories the configuration names ([web] import_dirs)"
        )),
        ImageError::TooLarge { .. } => AppError::too_large(error.to_string()),
        ImageError::CacheFull { .. } => AppError::insufficient_storage(error.to_string()),
        ImageError::Cancelled { .. } => {
            AppError::unavailable("the station is shutting down; the import was abandoned")
        }
        ImageError::CacheIo { .. } | ImageError::BadEntry { .. } => AppError::internal(error),
        _ => AppError::unprocessable(error.to_string()),
    }
}

/// The block map a sparse run of `image` writes by: its kept one, or one
/// generated from its file systems now; none is a 422 that says why.
async fn sparse_map(cache: &ImageCache, image: &CachedImage) -> Result<StoredMap, AppError> {
    let (cache, image) = (cache.clone(), image.clone());
    let map = tokio::task::spawn_blocking(move || match cache.block_map(&image.sha256()) {
        Ok(Some(map)) => Ok(map),
        Ok(None) => cache.generate_map(&image),
        Err(error) => Err(error),
    })
    .await
    .map_err(AppError::internal)?;
    match map {
        Ok(map) => Ok(map),
        Err(ImageError::NoBlockMap { reason }) => Err(AppError::unprocessable(format!(
            "the image has no block map, so it can only be written whole (without \"sparse\"): {reason}"
        ))),
        Err(error) => Err(image_error(error)),
    }
}

/// At import, as `flashrack image import` does: an image with no kept map
/// gets one generated from its file systems' allocation if flashrack reads
/// them (an image it cannot map is still imported, and written whole).
fn keep_generated_map(cache: &ImageCache, image: &CachedImage) {
    match cache.block_map(&image.sha256()) {
        Ok(Some(_)) => {}
        Ok(None) => match cache.generate_map(image) {
            Ok(map) => tracing::info!(image = %image.sha256(), "block map {}", map.summary()),
            Err(ImageError::NoBlockMap { reason }) => {
                tracing::debug!(image = %image.sha256(), "no block map: {reason}")
            }
            Err(error) => {
                tracing::warn!(image = %image.sha256(), "block map not generated: {error}")
            }
        },
        Err(error) => tracing::warn!(image = %image.sha256(), "its block map: {error}"),
    }
}

/// An image as the API shows it. `block_map`: the map kept for sparse runs
/// ([`flashrack_image::MapInfo`]: its source, mapped bytes and share), null
/// when it has none, `{"error": …}` when the kept one cannot be read.
fn image_json(cache: &ImageCache, image: &CachedImage) -> Value {
    let block_map = match cache.block_map(&image.sha256()) {
        Ok(Some(map)) => json!(map.info()),
        Ok(None) => Value::Null,
        Err(error) => json!({"error": error.to_string()}),
    };
    json!({
        "block_map": block_map,
        "sha256": image.sha256(),
        "size": image.size(),
        "name": image.meta.original_name,
        "also_known_as": image.meta.also_known_as,
        "format": image.meta.format.name(),
        "file_sha256": image.meta.input_sha256,
        "zero_bytes": image.manifest.zero_bytes(),
        "imported_at": image.meta.imported_at,
        "inspection": image.meta.inspection,
        "summary": image.meta.inspection.as_ref().map(|i| i.summary()),
        "raw_write_refusal": image.raw_write_refusal(),
        "provenance": image.meta.provenance,
        // Where it came from in words, as `image show` and the reports say it.
        "origin": image.meta.provenance.as_ref().map(|p| p.to_string()),
    })
}

/// `GET /api/v1/health`: `ok`, the station's id, and whether it has joined a
/// fleet (`fleet: true`: `GET /api/v1/fleet` describes its link to the hub).
pub async fn health(State(state): State<WebState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "station_id": state.station.snapshot().station_id,
        "fleet": state.fleet.is_some(),
    }))
}

/// `GET /api/v1/station`: every port and the run.
pub async fn station(State(state): State<WebState>) -> Json<flashrack_station::Snapshot> {
    Json(state.station.snapshot())
}

/// `GET /api/v1/ports`
pub async fn ports(State(state): State<WebState>) -> Json<Vec<flashrack_station::PortView>> {
    Json(state.station.snapshot().ports)
}

/// `GET /api/v1/ports/{label}`
pub async fn port(
    State(state): State<WebState>,
    UrlPath(label): UrlPath<String>,
) -> Result<Json<flashrack_station::PortView>, AppError> {
    state
        .station
        .snapshot()
        .ports
        .into_iter()
        .find(|p| p.label == label)
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no port is labelled {label:?}")))
}

/// `POST /api/v1/ports/{label}/start`: write the stick in this port now.
pub async fn start_port(
    State(state): State<WebState>,
    UrlPath(label): UrlPath<String>,
) -> Result<StatusCode, AppError> {
    state
        .station
        .start_port(&label)
        .await
        .map_err(station_error)?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/v1/runs/current/retry-failed`: writes again every stick still
/// in its port that failed in the armed run for a reason that may pass (a
/// write error, a stall while writing; never a capacity lie or a read-only
/// stick). Answers `{"ports": [labels]}`.
pub async fn retry_failed(
    State(state): State<WebState>,
) -> Result<Json<serde_json::Value>, AppError> {
    let ports = state.station.retry_failed().await.map_err(station_error)?;
    Ok(Json(serde_json::json!({ "ports": ports })))
}

/// The most automatic retries a run may ask for.
pub const MAX_RETRIES: u32 = RunOptions::MAX_RETRIES;

/// The body of `POST /api/v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmBody {
    /// A cached image: sha256, a unique prefix, or its name. Exactly one of
    /// `image`, `download` and `file`.
    #[serde(default)]
    pub image: Option<String>,
    /// An image to download and import (the body of `POST
    /// /images/import-url`): the run's sticks follow the download.
    #[serde(default)]
    pub download: Option<crate::UrlImportRequest>,
    /// A file on the station to import (the body of `POST /images/import`):
    /// the run's sticks follow the import.
    #[serde(default)]
    pub file: Option<crate::follow::FileSource>,
    /// `compare` (default), `hash` or `none`.
    #[serde(default)]
    pub verify: VerifyMode,
    /// Eject each stick after it passes.
    #[serde(default)]
    pub eject_on_pass: bool,
    /// Stop after this many passes.
    pub target_count: Option<u32>,
    /// Who arms the run (printed on its report).
    #[serde(default)]
    pub operator: Option<String>,
    /// The lot or batch id (printed on its report).
    #[serde(default)]
    pub lot: Option<String>,
    /// Write the image raw even though inspection says the sticks would not
    /// boot (a non-hybrid installer ISO); recorded in the run's options.
    #[serde(default)]
    pub force_raw: bool,
    /// A sparse run: each stick gets only the image's block map's ranges,
    /// written and read back (the rest of it is left as it was, unchecked).
    /// The image needs a map (a bmap given at import, or one generated from
    /// its file systems).
    #[serde(default)]
    pub sparse: bool,
    /// Check only this share of each stick's chunks, in percent (above 0,
    /// below 100); absent checks every byte.
    #[serde(default)]
    pub sample: Option<SamplePercent>,
    /// Write nothing: read each stick back and compare it with the image.
    #[serde(default)]
    pub audit: bool,
    /// Write a stick again this many times (at most [`MAX_RETRIES`]) when it
    /// fails with a write error or a stall while writing.
    #[serde(default)]
    pub retries: u32,
}

/// The longest operator name or lot id accepted.
const MAX_LABEL: usize = 100;

/// An operator name or lot id as given: trimmed, absent when empty; refused
/// when longer than [`MAX_LABEL`] characters or holding control characters.
fn run_label(what: &str, value: Option<String>) -> Result<Option<String>, AppError> {
    let Some(value) = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if value.chars().count() > MAX_LABEL || flashrack_core::has_unprintable(&value) {
        return Err(AppError::bad_request(format!(
            "{what} must be at most {MAX_LABEL} characters, without control characters or \
             invisible formatting characters (such as U+202E)"
        )));
    }
    Ok(Some(value))
}

/// `GET /api/v1/runs`: every recorded run (or the current one without records).
pub async fn runs(State(state): State<WebState>) -> Result<Json<Value>, AppError> {
    match &state.reports {
        Some(reports) => reports.runs().await.map(Json).map_err(AppError::internal),
        None => Ok(Json(json!(state
            .station
            .snapshot()
            .run
            .into_iter()
            .collect::<Vec<_>>()))),
    }
}

/// `POST /api/v1/runs`: arm a run.
pub async fn arm(
    State(state): State<WebState>,
    holder: Option<axum::Extension<crate::TokenHolder>>,
    ApiJson(body): ApiJson<ArmBody>,
) -> Result<(StatusCode, Json<flashrack_station::RunView>), AppError> {
    let operator = run_label("operator", body.operator)?;
    // A named token's holder is who armed the run: the body may repeat the
    // name, never give another (see `auth`).
    let operator = match (holder, operator) {
        (Some(axum::Extension(crate::TokenHolder(name))), Some(given)) if given != name => {
            return Err(AppError::forbidden(format!(
                "this token is {name}'s: a run armed with it is recorded as armed by {name}, \
                 not {given} (leave the operator empty)"
            )));
        }
        (Some(axum::Extension(crate::TokenHolder(name))), _) => Some(name),
        (None, given) => given,
    };
    let lot = run_label("lot", body.lot)?;
    let options = RunOptions {
        verify: body.verify,
        eject_on_pass: body.eject_on_pass,
        target_count: body.target_count,
        operator,
        lot,
        order_id: None,
        force_raw: body.force_raw,
        sparse: body.sparse,
        // Set when the map is taken (below, or by a followed run's import).
        sparse_map: None,
        sample: body.sample,
        audit: body.audit,
        retries: body.retries,
    };
    options.check().map_err(AppError::bad_request)?;
    // A followed run whose image the cache knew comes with its claim to
    // arm: armed with it (no other arm can have come in between).
    let (image, claim) = match (body.image, body.download, body.file) {
        (Some(query), None, None) => {
            let cache = state.images.clone();
            let image = tokio::task::spawn_blocking(move || cache.find(&query))
                .await
                .map_err(AppError::internal)?
                .map_err(image_error)?;
            (image, None)
        }
        (None, Some(download), None) => {
            match follow(&state, FollowSource::Download(download), options.clone()).await? {
                Followed::Armed(run) => return Ok((StatusCode::CREATED, Json(*run))),
                Followed::Cached(image, claim) => (*image, Some(claim)),
            }
        }
        (None, None, Some(file)) => {
            if !file.path.is_absolute() {
                return Err(AppError::bad_request("file.path must be absolute"));
            }
            let expected = file.sha256.as_deref().map(parse_digest).transpose()?;
            let mut allowed_dirs = state.import_dirs.clone();
            allowed_dirs.push(state.upload_dir.clone());
            let source = FollowSource::File {
                path: file.path,
                expected,
                allowed_dirs,
            };
            match follow(&state, source, options.clone()).await? {
                Followed::Armed(run) => return Ok((StatusCode::CREATED, Json(*run))),
                Followed::Cached(image, claim) => (*image, Some(claim)),
            }
        }
        _ => {
            return Err(AppError::bad_request(
                "give the run's image as exactly one of \"image\" (a cached image), \
                 \"download\" (a URL to download) or \"file\" (a file on the station)",
            ))
        }
    };
    // An audit writes nothing: an image that would not boot written raw may
    // still be compared with sticks written otherwise.
    if let Some(refusal) = image
        .raw_write_refusal()
        .filter(|_| !body.force_raw && !body.audit)
    {
        let message = format!(
            "image {} is refused for a raw run: {refusal} (\"force_raw\": true)",
            image.meta.original_name
        );
        // The refusal stands whether or not it could be written down; a
        // record that failed is the station's error, in its log.
        if let Err(error) = state
            .station
            .record_run_refused(RunRefusal {
                image_sha256: Some(image.manifest.sha256()),
                image_name: image.meta.original_name.clone(),
                reason: refusal.reason,
                advice: refusal.advice,
                options,
            })
            .await
        {
            tracing::error!(%error, "cannot record a refused run");
        }
        return Err(AppError::unprocessable(message));
    }
    let mut options = options;
    let sparse = match body.sparse {
        false => None,
        true => {
            let map = sparse_map(&state.images, &image).await?;
            options.sparse_map = Some(map.source());
            Some(Arc::new(map.ranges))
        }
    };
    let request = ArmRequest {
        image: SourceImage {
            path: image.path.clone(),
            manifest: image.manifest.clone(),
            referenced: image.meta.reference.is_some(),
        },
        image_name: image.meta.original_name.clone(),
        options,
        sparse,
    };
    let run = match claim {
        Some(claim) => claim.arm(request).await,
        None => state.station.arm(request).await,
    }
    .map_err(station_error)?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Arms a run whose image is imported from `source` (see [`crate::follow`]):
/// refused when the station offers no such import, and, before anything is
/// downloaded or imported, when the station refuses to claim the arm for it
/// ([`StationHandle::claim_arm`](flashrack_station::StationHandle::claim_arm):
/// a run armed, or being armed or claimed, or an arm waiting for a run's
/// stop; a run being stopped is no obstacle, the run is armed once its stop
/// is recorded). A sparse run follows with the
/// block map that comes with the image (the application refuses one
/// without); an audit reads its sticks back once the image is whole.
async fn follow(
    state: &WebState,
    source: FollowSource,
    options: RunOptions,
) -> Result<Followed, AppError> {
    let runs = state
        .followed_runs
        .as_ref()
        .ok_or_else(|| AppError::not_found("this station does not import images for runs"))?;
    // Decided on the station's loop, with every other arm: a follow that
    // would be refused once its import has begun is refused now, and no
    // arm asked after this one comes before it.
    let (label, name) = source.describe();
    let claim = state
        .station
        .claim_arm(&name, &label)
        .await
        .map_err(station_error)?;
    runs.arm(FollowArm {
        source,
        options,
        claim,
    })
    .await
}

/// `GET /api/v1/runs/current`
pub async fn current_run(
    State(state): State<WebState>,
) -> Result<Json<flashrack_station::RunView>, AppError> {
    state
        .station
        .snapshot()
        .run
        .map(Json)
        .ok_or_else(|| AppError::not_found("no run has been armed"))
}

/// The body of `POST /api/v1/runs/current/stop`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// Why, for the records.
    pub reason: Option<String>,
}

/// The longest stop reason accepted, in characters.
const MAX_STOP_REASON: usize = 500;

/// `POST /api/v1/runs/current/stop`
pub async fn stop_run(
    State(state): State<WebState>,
    body: axum::body::Bytes,
) -> Result<StatusCode, AppError> {
    // The body is optional: none (or no reason) records no detail beside
    // the stop's reason, `operator`.
    let body: StopBody = if body.iter().all(u8::is_ascii_whitespace) {
        StopBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("malformed JSON body: {e}")))?
    };
    // The reason is kept in the records and printed by every report, the
    // command line's included: as an operator name, no control characters
    // (a newline, or an escape sequence for the terminal that prints it).
    let reason = body
        .reason
        .map(|reason| reason.trim().to_string())
        .unwrap_or_default();
    if reason.chars().count() > MAX_STOP_REASON || flashrack_core::has_unprintable(&reason) {
        return Err(AppError::bad_request(format!(
            "reason must be at most {MAX_STOP_REASON} characters, without control characters or \
             invisible formatting characters (such as U+202E)"
        )));
    }
    state
        .station
        .stop_run(&reason)
        .await
        .map_err(station_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?format=csv|json|html`
#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

fn report_response(format: ReportFormat, name: &str, body: (String, String)) -> Response {
    let (content_type, text) = body;
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response();
    // Printable pages open in the browser; data files download.
    if !matches!(format, ReportFormat::Html | ReportFormat::Labels) {
        let extension = if format == ReportFormat::Csv {
            "csv"
        } else {
            "json"
        };
        if let Ok(value) = format!("attachment; filename=\"{name}.{extension}\"").parse() {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
    }
    response
}

fn parse_format(query: &FormatQuery) -> Result<ReportFormat, AppError> {
    let text = query.format.as_deref().unwrap_or("json");
    ReportFormat::parse(text).ok_or_else(|| {
        AppError::bad_request(format!("format {text:?} is not csv, json, html or labels"))
    })
}

/// `GET /api/v1/runs/{id}/report?format=csv|json|html`
pub async fn run_report(
    State(state): State<WebState>,
    UrlPath(id): UrlPath<String>,
    ApiQuery(query): ApiQuery<FormatQuery>,
) -> Result<Response, AppError> {
    let id = flashrack_core::RunId::parse(&id).map_err(|e| AppError::bad_request(e.to_string()))?;
    let format = parse_format(&query)?;
    let reports = state
        .reports
        .as_ref()
        .ok_or_else(|| AppError::unavailable("this station keeps no records"))?;
    match reports
        .run_report(id, format)
        .await
        .map_err(AppError::internal)?
    {
        Some(body) => Ok(report_response(
            format,
            &format!("flashrack-run-{id}"),
            body,
        )),
        None => Err(AppError::not_found(format!("no run {id}"))),
    }
}

/// `GET /api/v1/devices`
pub async fn devices(State(state): State<WebState>) -> Result<Json<Value>, AppError> {
    let reports = state
        .reports
        .as_ref()
        .ok_or_else(|| AppError::unavailable("this station keeps no records"))?;
    reports
        .devices()
        .await
        .map(Json)
        .map_err(AppError::internal)
}

/// `?last=N`: how many verdicts a port's history shows.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    last: Option<u32>,
}

/// The most verdicts per port `GET /api/v1/port-history` gives.
pub const MAX_PORT_HISTORY: u32 = 50;

/// `GET /api/v1/port-history?last=N` (default 8, at most
/// [`MAX_PORT_HISTORY`]): each port's latest verdicts, newest first, and
/// whether the port is suspect (`check_port`).
pub async fn port_history(
    State(state): State<WebState>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, AppError> {
    let last = query.last.unwrap_or(8);
    if !(1..=MAX_PORT_HISTORY).contains(&last) {
        return Err(AppError::bad_request(format!(
            "last must be between 1 and {MAX_PORT_HISTORY}"
        )));
    }
    let reports = state
        .reports
        .as_ref()
        .ok_or_else(|| AppError::unavailable("this station keeps no records"))?;
    reports
        .port_history(last)
        .await
        .map(Json)
        .map_err(AppError::internal)
}

/// `GET /api/v1/devices/{key}/report?format=…`
pub async fn device_report(
    State(state): State<WebState>,
    UrlPath(key): UrlPath<String>,
    ApiQuery(query): ApiQuery<FormatQuery>,
) -> Result<Response, AppError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "device key is empty, too long or has control characters",
        ));
    }
    let format = parse_format(&query)?;
    let reports = state
        .reports
        .as_ref()
        .ok_or_else(|| AppError::unavailable("this station keeps no records"))?;
    match reports
        .device_report(&key, format)
        .await
        .map_err(AppError::internal)?
    {
        Some(body) => {
            let safe: String = key
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect();
            Ok(report_response(
                format,
                &format!("flashrack-device-{safe}"),
                body,
            ))
        }
        None => Err(AppError::not_found(format!(
            "no device {key:?} in the records"
        ))),
    }
}

/// `GET /api/v1/images`
pub async fn images(State(state): State<WebState>) -> Result<Json<Vec<Value>>, AppError> {
    let cache = state.images.clone();
    let images = tokio::task::spawn_blocking(move || {
        cache
            .list()
            .map(|images| images.iter().map(|i| image_json(&cache, i)).collect())
    })
    .await
    .map_err(AppError::internal)?
    .map_err(image_error)?;
    Ok(Json(images))
}

pub(crate) fn parse_digest(text: &str) -> Result<Sha256Digest, AppError> {
    Sha256Digest::parse(text).map_err(|e| AppError::bad_request(e.to_string()))
}

/// `GET /api/v1/images/{sha256}`
pub async fn image(
    State(state): State<WebState>,
    UrlPath(sha256): UrlPath<String>,
) -> Result<Json<Value>, AppError> {
    let digest = parse_digest(&sha256)?;
    let cache = state.images.clone();
    let image = tokio::task::spawn_blocking(move || {
        cache
            .get(&digest)
            .map(|image| image.map(|i| image_json(&cache, &i)))
    })
    .await
    .map_err(AppError::internal)?
    .map_err(image_error)?
    .ok_or_else(|| AppError::not_found(format!("no image {sha256}")))?;
    Ok(Json(image))
}

/// `DELETE /api/v1/images/{sha256}`
pub async fn delete_image(
    State(state): State<WebState>,
    UrlPath(sha256): UrlPath<String>,
) -> Result<StatusCode, AppError> {
    let digest = parse_digest(&sha256)?;
    if let Some(run) = state.station.snapshot().run {
        if run.armed && run.image_sha256 == digest {
            return Err(AppError::conflict(
                "the armed run uses this image; stop it first",
            ));
        }
    }
    let cache = state.images.clone();
    let present = tokio::task::spawn_blocking(move || {
        cache
            .get(&digest)?
            .map(|_| cache.remove(&digest))
            .transpose()
    })
    .await
    .map_err(AppError::internal)?
    .map_err(image_error)?;
    match present {
        Some(()) => Ok(StatusCode::NO_CONTENT),
        None => Err(AppError::not_found(format!("no image {sha256}"))),
    }
}

/// The body of `POST /api/v1/images/import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// An absolute path on the station.
    pub path: PathBuf,
    /// The expected sha256 of the file or of the raw image.
    pub sha256: Option<String>,
}

/// Raised when the request that started an import goes away (the client
/// left, or the shutdown grace ran out), so the import stops too.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Completes when the server shuts down (never, without a server).
async fn shutdown_of(state: &WebState) {
    match state.shutting_down.clone() {
        Some(mut rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Imports `path` on a blocking thread. `allowed_dirs`: where it may be
/// (checked on the opened file). The import stops, keeping nothing, when the
/// server shuts down or the request is dropped.
async fn import_file(
    state: &WebState,
    path: PathBuf,
    expected: Option<String>,
    allowed_dirs: Option<Vec<PathBuf>>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let expected = expected.as_deref().map(parse_digest).transpose()?;
    let cache = state.images.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let options = ImportOptions {
        expected_sha256: expected,
        max_image_size: state.max_image_bytes,
        allowed_dirs,
        cancel: Some(Arc::clone(&cancel)),
        ..ImportOptions::default()
    };
    let import = tokio::task::spawn_blocking(move || {
        let outcome = cache.import(&path, options)?;
        keep_generated_map(&cache, &outcome.image);
        let body = image_json(&cache, &outcome.image);
        Ok::<_, ImageError>((outcome, body))
    });
    let outcome = tokio::select! {
        result = import => result,
        _ = shutdown_of(state) => {
            cancel.store(true, Ordering::Relaxed);
            return Err(AppError::unavailable(
                "the station is shutting down; the import was abandoned",
            ));
        }
    }
    .map_err(AppError::internal)?
    .map_err(image_error)?;
    let (outcome, mut body) = outcome;
    let status = if outcome.already_cached() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    body["already_cached"] = json!(outcome.already_cached());
    Ok((status, Json(body)))
}

/// `POST /api/v1/images/import`: import a file that is on the station. Only
/// from the directories the configuration names (`[web] import_dirs`) and the
/// upload area, with links and `..` resolved first: the service runs as root,
/// and `/etc/shadow` is not an image.
pub async fn import_path(
    State(state): State<WebState>,
    ApiJson(body): ApiJson<ImportBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    if !body.path.is_absolute() {
        return Err(AppError::bad_request("path must be absolute"));
    }
    let mut dirs = state.import_dirs.clone();
    dirs.push(state.upload_dir.clone());
    import_file(&state, body.path, body.sha256, Some(dirs)).await
}

/// `?name=&sha256=` of an upload.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
    sha256: Option<String>,
}

/// A file name safe to create: the name's last component, letters and digits
/// of any script, `.`, `-`, `_` and `+` kept, every other character made `_`,
/// at most 128 characters (cut in the stem: `.img.xz` is kept).
fn safe_file_name(name: &str) -> Result<String, AppError> {
    let last = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    flashrack_core::file_name_from(last, 128).ok_or_else(|| {
        AppError::bad_request(format!(
            "{:?} is not a usable file name",
            flashrack_core::printable_name(name)
        ))
    })
}

/// `POST /api/v1/images/upload?name=ubuntu.iso.xz[&sha256=…]`: the body is the
/// file. It is written to a temporary file in the cache's file system, imported,
/// and removed; an upload larger than the limit is refused as it arrives.
pub async fn upload(
    State(state): State<WebState>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let name = safe_file_name(query.name.as_deref().unwrap_or("upload.img"))?;
    tokio::fs::create_dir_all(&state.upload_dir)
        .await
        .map_err(AppError::internal)?;
    let dir = tempfile::Builder::new()
        .prefix("upload-")
        .tempdir_in(&state.upload_dir)
        .map_err(AppError::internal)?;
    let path = dir.path().join(&name);
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(AppError::internal)?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    let mut checked_space_at: u64 = 0;
    let too_large = || {
        AppError::too_large(format!(
            "the upload is larger than {} bytes",
            state.max_upload_bytes
        ))
    };
    loop {
        // An upload lasts as long as its data keeps coming: no total time
        // limit, but a pause longer than the idle limit ends it, and so does a
        // shutdown. Either way the temporary directory goes with `dir`.
        let next = tokio::select! {
            next = tokio::time::timeout(state.limits.upload_idle_timeout, stream.next()) => next,
            _ = shutdown_of(&state) => {
                return Err(AppError::unavailable(
                    "the station is shutting down; upload again once it is back",
                ));
            }
        };
        let chunk = match next {
            Err(_) => {
                return Err(AppError::request_timeout(format!(
                    "the upload stalled: nothing arrived for {} s",
                    state.limits.upload_idle_timeout.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(chunk)) => chunk.map_err(|e| {
                if e.to_string().contains("length limit") {
                    too_large()
                } else {
                    AppError::bad_request(format!("the upload broke off: {e}"))
                }
            })?,
        };
        received += chunk.len() as u64;
        if received > state.max_upload_bytes {
            return Err(too_large());
        }
        // The upload lands next to the records: stop before it fills their
        // file system (checked every few MiB).
        if received - checked_space_at >= UPLOAD_SPACE_CHECK || checked_space_at == 0 {
            checked_space_at = received;
            check_upload_space(&state.upload_dir)?;
        }
        file.write_all(&chunk).await.map_err(AppError::internal)?;
    }
    file.flush().await.map_err(AppError::internal)?;
    drop(file);
    if received == 0 {
        return Err(AppError::bad_request("the upload is empty"));
    }
    // Its errors name the upload, not the station's temporary file.
    let temporary = path.display().to_string();
    let result = import_file(&state, path, query.sha256, None)
        .await
        .map_err(|error| error.with_message_naming(&temporary, &format!("the upload {name}")));
    drop(dir);
    result
}

/// How often (in bytes received) an upload checks the free space.
const UPLOAD_SPACE_CHECK: u64 = 16 << 20;

/// Refuses to go on with an upload when its file system is down to the space
/// the station keeps free.
fn check_upload_space(dir: &Path) -> Result<(), AppError> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| AppError::internal(e.to_string()))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    let reserve = flashrack_image::DEFAULT_MIN_FREE_SPACE;
    if available < reserve + UPLOAD_SPACE_CHECK {
        return Err(AppError::insufficient_storage(format!(
            "no room for the upload: {} left on the station",
            flashrack_core::ByteSize(available)
        )));
    }
    Ok(())
}

/// Unknown API paths.
pub async fn not_found() -> AppError {
    AppError::not_found("no such API endpoint")
}
