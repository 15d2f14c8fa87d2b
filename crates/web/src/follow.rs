//! Runs of an image that is not cached yet: `POST /api/v1/runs` with
//! `download` (the body of `POST /images/import-url`) or `file` (the body of
//! `POST /images/import`) instead of `image`. The application imports it
//! through the [`FollowedRuns`] seam (this crate has no HTTP client and
//! imports nothing in the background itself) and arms the run as soon as the
//! import's pass begins: the sticks follow the import, as `flashrack flash
//! FILE|URL` does, and the run shows the import's progress
//! (`RunView::import`) on the event stream.

use std::path::PathBuf;

use flashrack_core::Sha256Digest;
use flashrack_image::CachedImage;
use flashrack_station::{RunOptions, RunView};
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

/// A run to arm with an image being imported.
#[derive(Debug, Clone)]
pub struct FollowArm {
    /// Where the image comes from.
    pub source: FollowSource,
    /// The run's options, checked as for a cached image. A sparse run's
    /// block map comes with the image (a bmap file given with the download,
    /// or found beside the image or the station file): none is the
    /// request's 422.
    pub options: RunOptions,
}

/// What became of a [`FollowArm`].
#[derive(Debug)]
pub enum Followed {
    /// The run is armed, its sticks following the import.
    Armed(Box<RunView>),
    /// The image was in the cache already (the import found it without a
    /// pass): the web side arms it as any cached image (inspection and
    /// all).
    Cached(Box<CachedImage>),
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
