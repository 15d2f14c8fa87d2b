//! The dashboard: the files of `web/`, embedded at build time (no CDN, nothing to
//! build or install to run it). Its script is a set of ES modules under `/js/`,
//! served as they are (`<script type="module">`): a browser runs a module only
//! when it comes with a JavaScript content type.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::WebState;

const INDEX: &str = include_str!("../../../web/index.html");
const STYLE: &str = include_str!("../../../web/style.css");

/// The dashboard's modules by file name, as `/js/<name>` serves them.
pub const MODULES: &[(&str, &str)] = &[
    ("main.js", include_str!("../../../web/js/main.js")),
    ("util.js", include_str!("../../../web/js/util.js")),
    ("model.js", include_str!("../../../web/js/model.js")),
    ("api.js", include_str!("../../../web/js/api.js")),
    ("live.js", include_str!("../../../web/js/live.js")),
    ("rack.js", include_str!("../../../web/js/rack.js")),
    ("run.js", include_str!("../../../web/js/run.js")),
    ("images.js", include_str!("../../../web/js/images.js")),
    ("records.js", include_str!("../../../web/js/records.js")),
    ("wall.js", include_str!("../../../web/js/wall.js")),
    ("alerts.js", include_str!("../../../web/js/alerts.js")),
    ("fleet.js", include_str!("../../../web/js/fleet.js")),
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// `/`, `/js/<module>`, `/style.css`.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route("/js/{name}", get(module))
        .route(
            "/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

async fn module(Path(name): Path<String>) -> Response {
    match MODULES.iter().find(|(file, _)| *file == name) {
        Some((_, body)) => page(JAVASCRIPT, body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such module").into_response(),
    }
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
