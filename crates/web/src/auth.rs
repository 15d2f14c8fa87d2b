//! The operator token.
//!
//! On loopback (no token configured) everything is open: only this machine can
//! reach it. Otherwise every request that changes something (any method but GET
//! and HEAD) needs `Authorization: Bearer <token>`, and reading needs it too
//! unless the configuration opens reading. The token travels in a header, never
//! in a cookie alone, so a page on another site cannot make a browser send it
//! (no CSRF). The dashboard asks for the token once and keeps it in the tab.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use flashrack_http::auth::{bearer, constant_time_eq, query_param};

use crate::{AppError, WebState};

/// Middleware: lets a request through or answers 401.
pub async fn check(State(state): State<WebState>, request: Request, next: Next) -> Response {
    let Some(token) = state.access.token.as_deref() else {
        return next.run(request).await;
    };
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    let path = request.uri().path();
    // The dashboard's own files and the health check are always readable, so
    // the page can load and ask for the token.
    let always_open =
        reading && (!path.starts_with("/api/") && path != "/metrics" || path == "/api/v1/health");
    if always_open || (reading && state.access.public_read) {
        return next.run(request).await;
    }
    let presented = bearer(request.headers());
    // EventSource and plain download links cannot set headers: the event stream
    // and report downloads may carry the token as a query parameter. Nothing else
    // may (a token in a URL lands in histories and logs), and never a change.
    let query_allowed = reading && (path == "/api/v1/events" || path.ends_with("/report"));
    let query_token = query_allowed
        .then(|| query_param(request.uri().query(), "token"))
        .flatten();
    match presented.or(query_token) {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => AppError::unauthorized().into_response(),
    }
}
