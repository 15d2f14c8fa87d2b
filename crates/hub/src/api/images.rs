//! Images by content: `GET` [`paths::IMAGES`](flashrack_fleet::paths::IMAGES)`/<sha256>`
//! for stations (HTTP range requests, so an interrupted fetch resumes), and
//! the operators' upload into the hub's cache (`POST /api/v1/images`).
//!
//! The hub's cache is a `flashrack-image` cache in its data directory, the
//! same content-addressed format as a station's: an upload is imported once
//! (decompressed, hashed, chunk digests) and served raw by its sha256.

use std::io::SeekFrom;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flashrack_core::Sha256Digest;
use flashrack_http::{ApiPath, ApiQuery, AppError};
use flashrack_image::{CachedImage, ImportOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{internal, HubState};
use crate::pg::Role;

/// An image as the hub lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The sha256 of its raw bytes.
    pub sha256: String,
    /// The file name it was uploaded as.
    pub name: String,
    /// Raw size in bytes.
    pub size: u64,
}

impl ImageInfo {
    fn of(image: &CachedImage) -> Self {
        Self {
            sha256: image.sha256().to_hex(),
            name: image.meta.original_name.clone(),
            size: image.size(),
        }
    }
}

/// The requested byte range of an image of `size` bytes: `None` for the
/// whole image (no `Range`, a `Range` this server does not serve in part,
/// or an `If-Range` that is not the image's tag), `Some(Err)` when it lies
/// beyond the end (416), `Some(Ok((first, last)))` inclusive.
pub fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Option<Result<(u64, u64), ()>> {
    let range = headers.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if if_range.to_str().ok()?.trim() != etag {
            return None;
        }
    }
    let spec = range.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let bounds = if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let first: u64 = first.parse().ok()?;
        let last: u64 = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            last.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        if first >= size || first > last {
            return Some(Err(()));
        }
        (first, last)
    };
    Some(Ok(bounds))
}

/// `GET paths::IMAGES/<sha256>`: the raw image, whole (200) or a range
/// (206 with `Content-Range`), tagged with its sha256 (`ETag`) so that a
/// resumed fetch can ask `If-Range`. A station token or an operator's.
pub(super) async fn get(
    State(state): State<HubState>,
    ApiPath(sha256): ApiPath<String>,
    request: Request,
) -> Result<Response, AppError> {
    let headers = request.headers();
    let token = flashrack_http::auth::bearer(headers)
        .ok_or_else(|| AppError::unauthorized_because("a station or operator token is required"))?;
    match state.db.token_owner(token).await.map_err(internal)? {
        Some(owner) if matches!(owner.role, Role::Station | Role::Operator) => {}
        _ => return Err(AppError::unauthorized_because("this token is not valid")),
    }
    let digest = Sha256Digest::parse(&sha256).map_err(|e| AppError::bad_request(e.to_string()))?;
    let cache = state.images.clone();
    let image = tokio::task::spawn_blocking(move || cache.get(&digest))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?
        .ok_or_else(|| AppError::not_found(format!("the hub holds no image {sha256}")))?;
    let size = image.size();
    let etag = format!("\"{}\"", image.sha256().to_hex());
    let mut file = tokio::fs::File::open(&image.path)
        .await
        .map_err(AppError::internal)?;
    let mut response = match requested_range(headers, &etag, size) {
        Some(Err(())) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(AppError::internal)?,
            );
            response
        }
        Some(Ok((first, last))) => {
            file.seek(SeekFrom::Start(first))
                .await
                .map_err(AppError::internal)?;
            let length = last - first + 1;
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(length)));
            let mut response = (StatusCode::PARTIAL_CONTENT, body).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {first}-{last}/{size}"))
                    .map_err(AppError::internal)?,
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            response
        }
        None => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            response
        }
    };
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(AppError::internal)?,
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// How an upload's staging directory under `<data_dir>/uploads` starts; the
/// staging process's id and a `-` follow.
const UPLOAD_PREFIX: &str = ".upload-";

/// Removes the staging directories of uploads whose hub process is gone: a
/// hub killed mid-upload left the bytes received so far (a process that
/// lives removes its own). A directory whose process still runs (another hub
/// process sharing this data directory) is left alone, and so is one not
/// named after a process (staged by a hub older than this naming).
pub(crate) fn remove_stale_uploads(uploads: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(uploads) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(UPLOAD_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new("/proc").join(pid.to_string()).exists()
        {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed an upload a stopped hub left")
            }
            Err(error) => {
                tracing::warn!(path = %entry.path().display(), %error, "cannot remove an upload a stopped hub left")
            }
        }
    }
}

/// `?name=&sha256=` of an upload.
#[derive(Debug, Deserialize)]
pub(super) struct UploadQuery {
    /// The file's name (for people; `upload.img` when absent).
    name: Option<String>,
    /// The sha256 expected, of the file as sent or of the raw image in it.
    sha256: Option<String>,
}

/// `POST /api/v1/images?name=`: the body is an image file (raw or
/// compressed), imported into the hub's cache once it is whole.
pub(super) async fn upload(
    State(state): State<HubState>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<Json<ImageInfo>, AppError> {
    let expected = query
        .sha256
        .as_deref()
        .map(Sha256Digest::parse)
        .transpose()
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    // Its last component, made a file name as a station makes an upload's
    // (a name too long for the file system was a 500).
    let name = query
        .name
        .as_deref()
        .and_then(|n| std::path::Path::new(n).file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| flashrack_core::file_name_from(n, 128))
        .unwrap_or_else(|| "upload.img".to_string());
    let uploads = state.data_dir.join("uploads");
    tokio::fs::create_dir_all(&uploads)
        .await
        .map_err(AppError::internal)?;
    // Named after this process, so that a hub starting after it was killed
    // mid-upload removes what it left (`remove_stale_uploads`).
    let staging = tempfile::Builder::new()
        .prefix(&format!("{UPLOAD_PREFIX}{}-", std::process::id()))
        .tempdir_in(&uploads)
        .map_err(AppError::internal)?;
    let path = staging.path().join(&name);
    let temporary = path.display().to_string();
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(AppError::internal)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|e| AppError::bad_request(format!("upload: {e}")))?;
        file.write_all(&chunk).await.map_err(AppError::internal)?;
    }
    file.flush().await.map_err(AppError::internal)?;
    drop(file);
    let cache = state.images.clone();
    let imported = tokio::task::spawn_blocking(move || {
        let result = cache.import(
            &path,
            ImportOptions {
                expected_sha256: expected,
                ..ImportOptions::default()
            },
        );
        drop(staging);
        result
    })
    .await
    .map_err(AppError::internal)?
    // Named as the upload, not as the hub's temporary file.
    .map_err(|e| {
        AppError::unprocessable(
            e.to_string()
                .replace(&temporary, &format!("the upload {name}")),
        )
    })?;
    Ok(Json(ImageInfo::of(&imported.image)))
}

/// `GET /api/v1/images`: the hub's images.
pub(super) async fn list(State(state): State<HubState>) -> Result<Json<Vec<ImageInfo>>, AppError> {
    let cache = state.images.clone();
    let images = tokio::task::spawn_blocking(move || cache.list())
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    Ok(Json(images.iter().map(ImageInfo::of).collect()))
}
