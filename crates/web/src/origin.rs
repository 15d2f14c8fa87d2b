//! Who is asking: the station answers only under its own names, and takes
//! changes only from its own pages. The decision is `flashrack-http`'s
//! [`judge`] (see there why: DNS rebinding and cross-site changes); this is
//! the station's middleware around it, with the station's allowed names
//! (`[web] allowed_hosts`).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use flashrack_http::origin::judge;

use crate::WebState;

/// Middleware: refuses foreign host names and cross-origin changes.
pub async fn check(State(state): State<WebState>, request: Request, next: Next) -> Response {
    if let Err(error) = judge(
        request.method(),
        request.headers(),
        &state.access.allowed_hosts,
    ) {
        return error.into_response();
    }
    next.run(request).await
}
