//! Extractors whose rejections are [`AppError`]s: a query string or a path
//! that does not parse is answered 400, and a body beyond its route's limit
//! 413, with the API's JSON error body like every other refusal, never with
//! axum's plain text.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;

use crate::AppError;

/// A query string (`?format=csv`): a value of the wrong type, a field given
/// twice or a number out of range is a JSON 400 that says so.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

/// Path parameters (`/lots/{id}`): one that is not valid UTF-8 once
/// percent-decoded, or not of the wanted type, is a JSON 400 that says so.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

/// A whole request body: one beyond the route's limit is a JSON 413, one
/// that cannot be read a JSON 400, never axum's plain text.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S> axum::extract::FromRequest<S> for ApiBytes
where
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(AppError::too_large(rejection.body_text()))
            }
            Err(rejection) => Err(AppError::bad_request(rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    struct Wanted {
        #[allow(dead_code)]
        n: Option<u32>,
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/things/{id}",
                get(|ApiPath(_): ApiPath<u32>, ApiQuery(_): ApiQuery<Wanted>| async { "ok" }),
            )
            .route(
                "/bodies",
                post(|ApiBytes(body): ApiBytes| async move { body.len().to_string() })
                    .layer(DefaultBodyLimit::max(8)),
            )
    }

    /// The status and the JSON error code of an answer (`None` when the
    /// body is not the API's JSON error).
    async fn answer(request: Request<Body>) -> (StatusCode, Option<String>) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        (status, code)
    }

    fn get_of(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn post_of(bytes: &'static [u8]) -> Request<Body> {
        Request::post("/bodies").body(Body::from(bytes)).unwrap()
    }

    #[tokio::test]
    async fn queries_paths_and_bodies_that_do_not_parse_are_json_errors() {
        for uri in [
            "/things/%FF",
            "/things/abc",
            "/things/1?n=x",
            "/things/1?n=1&n=2",
            "/things/1?n=99999999999",
        ] {
            assert_eq!(
                answer(get_of(uri)).await,
                (StatusCode::BAD_REQUEST, Some("bad_request".into())),
                "{uri}"
            );
        }
        assert_eq!(
            answer(post_of(b"nine bytes")).await,
            (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large".into()))
        );
        // What parses is handed on.
        assert_eq!(
            answer(get_of("/things/1?n=2")).await,
            (StatusCode::OK, None)
        );
        assert_eq!(answer(post_of(b"eight!!!")).await, (StatusCode::OK, None));
    }
}
