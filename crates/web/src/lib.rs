//! The station's web side: a JSON API under `/api/v1`, a server-sent-event stream
//! of live changes, Prometheus metrics, and the dashboard from `web/`, embedded in
//! the binary.
//!
//! [`router`] builds the whole app from a [`WebState`]; tests call it with
//! `oneshot`, and [`serve`] runs it on a listener until shutdown. The web side
//! only talks to the station through its handle and to the image cache; it never
//! touches devices.
//!
//! Layout:
//! - [`api`]: the JSON handlers;
//! - [`auth`]: the operator token (required to change anything once the server
//!   listens beyond loopback);
//! - [`origin`]: only the station's own names and pages: `Host` checked against
//!   them (DNS rebinding), changes refused from other sites (`Origin`);
//! - the accept loop (`flashrack-http`'s `server`): a bound on connections (an
//!   idle flood cannot take the descriptors the sticks need), header and
//!   shutdown time limits;
//! - [`error`]: [`AppError`] (`flashrack-http`'s), JSON errors that never leak
//!   internals;
//! - [`events`]: the SSE stream;
//! - [`fleet`]: the station's link to its fleet hub ([`FleetView`]);
//! - [`downloads`]: imports from URLs, done by the application behind the
//!   [`UrlImports`] seam, and their progress;
//! - [`captures`]: a master port's stick captured into the cache, done by
//!   the application behind the [`Captures`] seam, and their progress;
//! - [`builds`]: a bootable stick image built from an installer ISO that
//!   would not boot written raw, done by the application behind the
//!   [`Builds`] seam, and their progress;
//! - [`assets`]: the embedded dashboard.
#![deny(missing_docs)]

pub mod api;
pub mod assets;
pub mod auth;
pub mod builds;
pub mod captures;
pub mod downloads;
pub mod events;
pub mod fleet;
pub mod follow;
pub mod metrics;
pub mod origin;

pub use flashrack_http::error;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use flashrack_image::ImageCache;
use flashrack_station::StationHandle;
pub use fleet::FleetView;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use builds::{BuildBody, BuildStart, Builds, CancelRefusal};
pub use captures::{CaptureBody, CaptureStart, Captures};
pub use downloads::{ResumeError, StartError, UrlImportRequest, UrlImports};
pub use error::AppError;
pub use follow::{file_name_of, FileSource, FollowArm, FollowSource, Followed, FollowedRuns};

/// Reports for the web side, provided by whoever owns the records (the store),
/// so this crate needs no SQL.
pub trait Reports: Send + Sync {
    /// Every run: JSON rows.
    fn runs(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// One run's report in a format (`csv`, `json`, `html`): content type and body.
    /// `Ok(None)` when there is no such run.
    fn run_report(
        &self,
        run_id: flashrack_core::RunId,
        format: ReportFormat,
    ) -> futures::future::BoxFuture<'_, Result<Option<(String, String)>, String>>;
    /// Every attempt ever made on a device (by serial or key), in a format.
    fn device_report(
        &self,
        key: &str,
        format: ReportFormat,
    ) -> futures::future::BoxFuture<'_, Result<Option<(String, String)>, String>>;
    /// Each port's latest `per_port` verdicts (newest first) and whether the
    /// port is suspect: JSON rows, `{"port_label", "verdicts", "check_port"}`.
    fn port_history(
        &self,
        per_port: u32,
    ) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// Known devices, each with its attempt count and latest verdict: JSON rows.
    fn devices(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// Comma-separated values.
    Csv,
    /// JSON.
    Json,
    /// Printable HTML.
    Html,
    /// A printable sheet of labels (HTML), one per stick that passed, with a
    /// QR code of its record's reference.
    Labels,
}

impl ReportFormat {
    /// Parses `csv`, `json`, `html`, `labels`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            "html" => Some(Self::Html),
            "labels" => Some(Self::Labels),
            _ => None,
        }
    }
}

/// A token that names its holder: a run armed with it is recorded as armed
/// by `name`, whatever the request says (see [`auth`]).
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// The holder's name, as reports print it.
    pub name: String,
    /// The token.
    pub token: String,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: configurations are logged.
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Who made a request, when it carried a [`NamedToken`]: put into the
/// request's extensions by the access check, read by the handlers that
/// record who did something (arming a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder(pub String);

/// Who may do what.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// The shared operator token; with no named token either, `None` means no
    /// token is needed (loopback only).
    pub token: Option<String>,
    /// The operators' own tokens: accepted like the shared one, and a request
    /// that carries one is its holder's (see [`auth`]). Off loopback, with
    /// only named tokens configured, every change needs one of them.
    pub operators: Vec<NamedToken>,
    /// The station listens on loopback only: nobody else can reach it, so
    /// nothing needs a token (a named token presented still names its
    /// holder).
    pub loopback: bool,
    /// Whether reading needs no token.
    pub public_read: bool,
    /// Host names the station answers to besides loopback names and IP
    /// addresses (lower case, no port); see [`origin`].
    pub allowed_hosts: Vec<String>,
}

/// Time and size limits of the web side, chosen so that a client can neither
/// hold the station's resources nor its shutdown.
#[derive(Debug, Clone)]
pub struct WebLimits {
    /// Connections served at once (see `flashrack_http::server`).
    pub max_connections: usize,
    /// A connection must send a request's headers within this time.
    pub header_timeout: Duration,
    /// Ordinary requests must be answered within this time (408 otherwise).
    /// Uploads and imports are not bound by it: they last as long as their
    /// data keeps coming and the image takes to import.
    pub request_timeout: Duration,
    /// An upload whose body sends nothing for this long ends with 408.
    pub upload_idle_timeout: Duration,
    /// After shutdown is asked, how long requests in flight may take before
    /// their connections are closed. Well within systemd's `TimeoutStopSec`.
    pub shutdown_grace: Duration,
}

impl Default for WebLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            upload_idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct WebState {
    /// The station.
    pub station: StationHandle,
    /// The image cache.
    pub images: ImageCache,
    /// The records, if there are any.
    pub reports: Option<Arc<dyn Reports>>,
    /// Who may do what.
    pub access: AccessPolicy,
    /// Where uploads are staged before import (inside the cache's file system,
    /// so the import can read them without a copy across devices).
    pub upload_dir: std::path::PathBuf,
    /// Largest accepted upload.
    pub max_upload_bytes: u64,
    /// Largest image imported: the largest target the guard lets through.
    pub max_image_bytes: u64,
    /// Directories `POST /images/import` may import from, besides
    /// `upload_dir` (the configuration's `import_dirs`; none by default).
    pub import_dirs: Vec<PathBuf>,
    /// Time limits and the connection bound.
    pub limits: WebLimits,
    /// Raised when the server shuts down, so that endless responses (the event
    /// stream) end and the graceful shutdown can complete. [`serve`] sets it.
    pub shutting_down: Option<tokio::sync::watch::Receiver<bool>>,
    /// Serializes each live event once for all event-stream clients.
    pub events: events::EventHub,
    /// The station's link to its fleet hub, kept up to date by the
    /// application's fleet tasks; `None` when it joined no fleet.
    pub fleet: Option<tokio::sync::watch::Receiver<FleetView>>,
    /// Imports from URLs, done by the application; `None`: not offered.
    pub url_imports: Option<Arc<dyn UrlImports>>,
    /// Captures of master sticks, done by the application; `None`: not
    /// offered.
    pub captures: Option<Arc<dyn Captures>>,
    /// Builds of bootable stick images from installer ISOs, done by the
    /// application; `None`: not offered.
    pub builds: Option<Arc<dyn Builds>>,
    /// Runs of images not cached yet, whose sticks follow the import, done
    /// by the application; `None`: not offered (`POST /runs` then takes
    /// cached images only).
    pub followed_runs: Option<Arc<dyn FollowedRuns>>,
}

/// The whole app: API, events, metrics, dashboard.
pub fn router(state: WebState) -> Router {
    let max_upload = state.max_upload_bytes;
    let timeout = TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        state.limits.request_timeout,
    );
    // Everything but uploads and imports answers within the request timeout;
    // those two are bounded by their data instead (idle upload time, image
    // size, free space) and end on shutdown. Arming a run is one of them: a
    // run of an image not cached yet answers once its import's pass begins
    // (a zip archive whose file is stored with its sizes after its data:
    // once it is downloaded whole), bounded by the
    // download's own stall timeout, and a request dropped abandons it.
    let api = Router::new()
        .route("/health", get(api::health))
        .route("/station", get(api::station))
        .route("/ports", get(api::ports))
        .route("/ports/{label}", get(api::port))
        .route("/ports/{label}/start", post(api::start_port))
        .route("/runs/current", get(api::current_run))
        .route("/runs/current/stop", post(api::stop_run))
        .route("/runs/current/retry-failed", post(api::retry_failed))
        .route("/runs/{id}/report", get(api::run_report))
        .route("/images", get(api::images))
        .route(
            "/images/{sha256}",
            get(api::image).delete(api::delete_image),
        )
        .route("/port-history", get(api::port_history))
        .route("/devices", get(api::devices))
        .route("/devices/{key}/report", get(api::device_report))
        .route("/events", get(events::stream))
        .route("/fleet", get(fleet::fleet))
        // A capture is answered once the master is judged; it goes on in
        // the background.
        .route("/images/capture", post(captures::capture))
        .route("/images/captures", get(captures::captures))
        // A build is answered once the ISO is judged; it goes on in the
        // background.
        .route("/images/{sha256}/bootable", post(builds::build))
        .route("/images/builds", get(builds::builds))
        .route("/images/builds/{id}/cancel", post(builds::cancel))
        .route_layer(timeout)
        .route("/runs", get(api::runs).layer(timeout).post(api::arm))
        .route("/images/import", post(api::import_path))
        .route("/images/import-url", post(downloads::import_url))
        .route("/images/downloads", get(downloads::downloads))
        .route("/images/downloads/{id}/resume", post(downloads::resume))
        .route(
            "/images/upload",
            post(api::upload).layer(DefaultBodyLimit::max(
                max_upload.min(usize::MAX as u64) as usize
            )),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(flashrack_http::error::method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .merge(
            Router::new()
                .route("/metrics", get(metrics::metrics))
                .merge(assets::routes())
                .route_layer(timeout)
                .method_not_allowed_fallback(flashrack_http::error::method_not_allowed),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::check,
        ))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes, within
/// `state.limits` (see `flashrack_http::server`): requests in flight get the
/// shutdown grace to finish, uploads and imports stop at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (raise, shutting_down) = tokio::sync::watch::channel(false);
    let limits = state.limits.clone();
    let state = WebState {
        shutting_down: Some(shutting_down.clone()),
        ..state
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = raise.send(true);
    });
    let limits = flashrack_http::ServerLimits {
        max_connections: limits.max_connections,
        header_timeout: limits.header_timeout,
        shutdown_grace: limits.shutdown_grace,
    };
    flashrack_http::server::run(listener, router(state), limits, shutting_down).await
}
