//! Runs of an image that is not cached yet: `POST /api/v1/runs` with
//! `download` (the body of `POST /images/import-url`) or `file` (the body of
//! `POST /images/import`) instead of `image`. The application imports it
//! through the [`FollowedRuns`] seam (this crate has no HTTP client and
//! imports nothing in the background itself) and arms the run as soon as the
//! import's pass begins: the sticks follow the import, as `flashrack flash
//! FILE|URL` does, and the run shows the import's progress
//! (`RunView::import`) on the event stream.
//!
//! Before anything is downloaded or imported, the route claims the right to
//! arm the run from the station ([`ArmClaim`]): refused there as an arm
//! would be (a run armed, or being armed), the request is answered 409 at
//! once; granted, no other arm can come before the run's, and the claim
//! goes with the request ([`FollowArm::claim`]) until it is handed in with
//! the arm (or dropped, which frees the station).

use std::path::PathBuf;

use flashrack_core::Sha256Digest;
use flashrack_image::CachedImage;
use flashrack_station::{ArmClaim, RunOptions, RunView};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::{AppError, UrlImportRequest};

/// A file on the station to import for a run: `file` in the body of
/// `POST /api/v1/runs`, as `POST /api/v1/images/import` takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// An absolute path on the station, in one of the directories the
    /// configuration names (`[web] import_dirs`) or the upload area.
    pub path: PathBuf,
    /// The expected sha256 of the file or of the raw image.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Where the image of a followed run comes from.
#[derive(Debug, Clone)]
pub enum FollowSource {
    /// A URL, downloaded with the checks of an import from a URL.
    Download(UrlImportRequest),
    /// A file on the station.
    File {
        /// The file (absolute).
        path: PathBuf,
        /// The expected sha256 of the file or of the raw image.
        expected: Option<Sha256Digest>,
        /// Where it may be (links and `..` resolved, checked on the opened
        /// file): the configuration's `import_dirs` and the upload area.
        allowed_dirs: Vec<PathBuf>,
    },
}

impl FollowSource {
    /// Where the image comes from, as the operator named it (the URL, the
    /// file), and the image's name for people until it is known (the
    /// file's name).
    pub fn describe(&self) -> (String, String) {
        match self {
            Self::Download(body) => {
                let name = file_name_of(&body.url).unwrap_or_else(|| body.url.clone());
                (body.url.clone(), name)
            }
            Self::File { path, .. } => {
                let label = path.display().to_string();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| label.clone());
                (label, name)
            }
        }
    }
}

/// The name of the file a URL names: its path's last segment, decoded;
/// `None` when it has none (`https://host/`) or is no URL.
pub fn file_name_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?.to_string();
    // Decoded, a name may hold ESC or a newline (`%1B`, `%0A`).
    let decoded = flashrack_core::printable_name(&percent_decode(&last));
    (!decoded.is_empty()).then_some(decoded)
}

/// `text` with its `%XX` escapes decoded (bytes that are no UTF-8 become
/// U+FFFD); a `%` not followed by two hex digits is kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A run to arm with an image being imported.
#[derive(Debug)]
pub struct FollowArm {
    /// Where the image comes from.
    pub source: FollowSource,
    /// The run's options, checked as for a cached image. A sparse run's
    /// block map comes with the image (a bmap file given with the download,
    /// or found beside the image or the station file): none is the
    /// request's 422.
    pub options: RunOptions,
    /// The station's claim to arm the run, taken before anything is
    /// imported: handed in with the arm ([`ArmClaim::arm_following`], or
    /// [`Followed::Cached`]'s), dropped (released) if the run is not
    /// armed.
    pub claim: ArmClaim,
}

/// What became of a [`FollowArm`].
#[derive(Debug)]
pub enum Followed {
    /// The run is armed, its sticks following the import.
    Armed(Box<RunView>),
    /// The image was in the cache already (the import found it without a
    /// pass): the web side arms it as any cached image (inspection and
    /// all), with the request's claim.
    Cached(Box<CachedImage>, ArmClaim),
}

/// The application's side of runs that follow an import.
pub trait FollowedRuns: Send + Sync {
    /// Starts the import and arms the run once the import's pass begins;
    /// an import that fails before that (a file that is not there, a
    /// server's 404, a checksum list without the file, a bad signature) is
    /// the request's error, and no run is recorded. Dropping the future
    /// before it answers abandons the import.
    fn arm(&self, request: FollowArm) -> BoxFuture<'_, Result<Followed, AppError>>;
}

#[cfg(test)]
mod tests {
    use super::file_name_of;

    #[test]
    fn the_file_name_of_a_url_is_its_last_segment_decoded() {
        assert_eq!(
            file_name_of("https://example.invalid/releases/24.04/ubuntu-24.04.iso?x=1").as_deref(),
            Some("ubuntu-24.04.iso")
        );
        assert_eq!(
            file_name_of("https://example.invalid/a%20b.img.xz").as_deref(),
            Some("a b.img.xz")
        );
        assert_eq!(file_name_of("https://example.invalid/"), None);
        assert_eq!(
            file_name_of("https://example.invalid/100%"),
            Some("100%".into())
        );
        // ESC and a newline decoded would drive a terminal and break a list.
        assert_eq!(
            file_name_of("https://example.invalid/%1B%5B31mred%0Anl.img").as_deref(),
            Some("\u{FFFD}[31mred\u{FFFD}nl.img")
        );
    }
}
