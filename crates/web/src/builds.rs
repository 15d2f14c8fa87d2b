//! Building a bootable stick image over the API: `POST
//! /api/v1/images/{sha256}/bootable` lays out a UEFI-bootable installer ISO
//! that would not boot written raw (GPT, one FAT32 partition with the ISO's
//! files, a too-large `install.wim` split with wimlib) as a new image of the
//! cache, in the background, through the [`Builds`] seam (the application
//! runs the build: this crate runs no program); `GET /api/v1/images/builds`
//! shows each build with its stage and outcome. What can be judged from the
//! image's inspection is answered before anything starts: an unknown image
//! (404), one that is not an ISO (422), one that already boots written raw
//! (409: a hybrid ISO, or one with a partition table).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use flashrack_image::CachedImage;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{image_error, parse_digest, ApiJson};
use crate::captures::check_name;
use crate::{AppError, WebState};

/// The body of `POST /api/v1/images/{sha256}/bootable`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildBody {
    /// The name the built image is kept under (letters or digits of any
    /// script, `.`, `-`, `_`, `+`; see [`check_name`]); the ISO's name with `-usb.img` when absent.
    #[serde(default)]
    pub name: Option<String>,
}

/// What the application is asked to build: a bootable layout of `iso`.
#[derive(Debug, Clone)]
pub struct BuildStart {
    /// The ISO, found in the cache and judged buildable by its inspection.
    pub iso: CachedImage,
    /// The built image's name (checked).
    pub name: String,
}

/// Why a build was not cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRefusal {
    /// No build has that id (404).
    Unknown(String),
    /// The build has ended already (409).
    Ended(String),
    /// The records could not be read (500, logged, not shown).
    Failed(String),
}

/// The application's side of builds.
pub trait Builds: Send + Sync {
    /// Starts the build in the background (or answers one already under
    /// way for the same ISO); answers with its view (`{"id", …}`).
    fn start(&self, request: BuildStart) -> BoxFuture<'_, Result<Value, String>>;
    /// Every build this station's records hold, newest first: `{"id",
    /// "source", "source_name", "name", "state" ("building" | "built" |
    /// "failed" | "cancelled" | "interrupted"), "stage", "stage_words",
    /// "stage_number", "stage_count", "stages" (each stage with its state:
    /// done, current, stopped, pending), "method", "started_at",
    /// "finished_at", "image", "size", "reused", "split", "provenance",
    /// "error"}`.
    fn list(&self) -> BoxFuture<'_, Result<Value, String>>;
    /// Cancels build `id` under way: it stops at once and keeps nothing;
    /// answers with its view (`"cancel_requested": true`; its state turns
    /// `cancelled` once it has stopped).
    fn cancel(&self, id: u64) -> BoxFuture<'_, Result<Value, CancelRefusal>>;
}

/// Why an image cannot be laid out, judged from its inspection alone (the
/// rest — no UEFI loader, a file too large to split, a missing program — is
/// found by the build, and shown as its failure).
pub fn refusal(iso: &CachedImage) -> Option<(StatusCode, String)> {
    let name = &iso.meta.original_name;
    let info = iso.meta.inspection.as_ref();
    let Some(iso_info) = info.and_then(|i| i.iso.as_ref()) else {
        return Some((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image {name} is not an ISO 9660 / UDF image: there is nothing to lay out"),
        ));
    };
    if info.is_some_and(|i| i.table.is_some()) || iso_info.hybrid {
        return Some((
            StatusCode::CONFLICT,
            format!(
                "image {name} already boots written raw (a hybrid ISO: it carries a partition table): \
                 arm a run of it as it is, no build is needed"
            ),
        ));
    }
    None
}

/// The name a build gets when none is given: the ISO's, with `-usb.img`
/// instead of its extension, kept to the characters [`check_name`] takes.
pub fn default_name(iso_name: &str) -> String {
    let stem = iso_name.rsplit_once('.').map_or(iso_name, |(stem, _)| stem);
    let max = crate::captures::MAX_NAME - "-usb.img".len();
    let clean = flashrack_core::file_name_from(stem, max).unwrap_or_else(|| "image".into());
    format!("{clean}-usb.img")
}

/// `POST /api/v1/images/{sha256}/bootable`: 202 with the build's view; 400
/// for a bad digest or name, 404 for an unknown image or a station that does
/// not build, 422 for an image that is not an ISO, 409 for one that boots
/// written raw already.
pub async fn build(
    State(state): State<WebState>,
    UrlPath(sha256): UrlPath<String>,
    ApiJson(body): ApiJson<BuildBody>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let digest = parse_digest(&sha256)?;
    if let Some(name) = &body.name {
        check_name(name).map_err(AppError::bad_request)?;
    }
    let builds = state
        .builds
        .clone()
        .ok_or_else(|| AppError::not_found("this station does not build bootable images"))?;
    let cache = state.images.clone();
    let iso = tokio::task::spawn_blocking(move || cache.get(&digest))
        .await
        .map_err(AppError::internal)?
        .map_err(image_error)?
        .ok_or_else(|| AppError::not_found(format!("no image {sha256}")))?;
    if let Some((status, reason)) = refusal(&iso) {
        return Err(match status {
            StatusCode::CONFLICT => AppError::conflict(reason),
            _ => AppError::unprocessable(reason),
        });
    }
    let name = body
        .name
        .unwrap_or_else(|| default_name(&iso.meta.original_name));
    let view = builds
        .start(BuildStart { iso, name })
        .await
        .map_err(AppError::conflict)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `GET /api/v1/images/builds`
pub async fn builds(State(state): State<WebState>) -> Result<Json<Value>, AppError> {
    match state.builds.as_ref() {
        None => Ok(Json(Value::Array(Vec::new()))),
        Some(builds) => builds.list().await.map(Json).map_err(AppError::internal),
    }
}

/// `POST /api/v1/images/builds/{id}/cancel`: 202 with the build's view
/// while it stops; 400 for an id that is not a number, 404 for no such
/// build (or a station that does not build), 409 for a build that has
/// ended already.
pub async fn cancel(
    State(state): State<WebState>,
    UrlPath(id): UrlPath<String>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let id: u64 = id
        .parse()
        .map_err(|_| AppError::bad_request(format!("{id:?} is not a build id (a number)")))?;
    let builds = state
        .builds
        .clone()
        .ok_or_else(|| AppError::not_found("this station does not build bootable images"))?;
    match builds.cancel(id).await {
        Ok(view) => Ok((StatusCode::ACCEPTED, Json(view))),
        Err(CancelRefusal::Unknown(why)) => Err(AppError::not_found(why)),
        Err(CancelRefusal::Ended(why)) => Err(AppError::conflict(why)),
        Err(CancelRefusal::Failed(why)) => Err(AppError::internal(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_name_is_the_iso_name_made_plain() {
        assert_eq!(default_name("Win11_24H2.iso"), "Win11_24H2-usb.img");
        assert_eq!(default_name("holiday videos.bin"), "holiday_videos-usb.img");
        assert_eq!(default_name(".iso"), "image-usb.img");
        assert_eq!(default_name("é.iso"), "é-usb.img");
        assert_eq!(default_name("Win \"11\"\u{202E}.iso"), "Win__11__-usb.img");
        let long = default_name(&format!("{}.iso", "x".repeat(300)));
        assert!(check_name(&long).is_ok(), "{long}");
    }
}
