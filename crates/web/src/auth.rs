//! The operator tokens.
//!
//! On loopback (no token configured) everything is open: only this machine can
//! reach it. Otherwise every request that changes something (any method but GET
//! and HEAD) needs `Authorization: Bearer <token>`, and reading needs it too
//! unless the configuration opens reading. The token travels in a header, never
//! in a cookie alone, so a page on another site cannot make a browser send it
//! (no CSRF). The dashboard asks for the token once and keeps it in the tab.
//!
//! Tokens are the shared operator token (`[web] token`) and the operators'
//! own, named ones (`[[web.operators]]`). A request that carries a named token
//! gets its holder's name as a [`TokenHolder`] extension (on loopback too,
//! where no token is needed but one presented still names its holder), and
//! a run it arms is recorded as armed by that name: the arm body's `operator`
//! may repeat the name but not give another one (403), so a form cannot
//! record a run under someone else's name. The shared token names nobody: a
//! run armed with it records the `operator` the body gives, as said, unchecked.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use flashrack_http::auth::{bearer, constant_time_eq, query_param};

use crate::{AppError, TokenHolder, WebState};

/// Middleware: lets a request through or answers 401; marks a request made
/// with a named token with its [`TokenHolder`].
pub async fn check(State(state): State<WebState>, mut request: Request, next: Next) -> Response {
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    let path = request.uri().path();
    // EventSource and plain download links cannot set headers: the event stream
    // and report downloads may carry the token as a query parameter. Nothing else
    // may (a token in a URL lands in histories and logs), and never a change.
    let query_allowed = reading && (path == "/api/v1/events" || path.ends_with("/report"));
    let query_token = query_allowed
        .then(|| query_param(request.uri().query(), "token"))
        .flatten();
    let presented = bearer(request.headers()).or(query_token);
    // Every named token is compared (each in constant time), whichever
    // matches; the configuration makes them distinct.
    let holder = presented.and_then(|given| {
        state.access.operators.iter().fold(None, |found, named| {
            if constant_time_eq(given.as_bytes(), named.token.as_bytes()) {
                Some(named.name.clone())
            } else {
                found
            }
        })
    });
    let shared = presented
        .zip(state.access.token.as_deref())
        .is_some_and(|(given, token)| constant_time_eq(given.as_bytes(), token.as_bytes()));
    if let Some(name) = holder {
        request.extensions_mut().insert(TokenHolder(name));
        return next.run(request).await;
    }
    if state.access.loopback || state.access.token.is_none() && state.access.operators.is_empty() {
        return next.run(request).await;
    }
    // The dashboard's own files and the health check are always readable, so
    // the page can load and ask for the token.
    let always_open =
        reading && (!path.starts_with("/api/") && path != "/metrics" || path == "/api/v1/health");
    if shared || always_open || (reading && state.access.public_read) {
        return next.run(request).await;
    }
    AppError::unauthorized().into_response()
}
