//! What can go wrong in the application: [`AppError`].
//!
//! Messages are lowercase sentences with the context (a path, a target, an
//! address); the cause is the error's `source`, which the binary prints after
//! it (`anyhow`'s `{:#}`: "cannot open the records in …: <cause>").

use std::path::PathBuf;

use flashrack_core::{RunId, Sha256Digest};
use flashrack_station::JournalError;

pub use crate::client::ClientError;
pub use crate::lock::LockError;
pub use crate::targets::TargetsError;

/// Everything the application's operations can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A directory could not be created.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written or read (the demo image, for instance).
    #[error("cannot write {}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image cache could not be opened.
    #[error("cannot open the image cache in {}", dir.display())]
    OpenCache {
        /// The cache's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<flashrack_image::ImageError>,
    },
    /// An image could not be imported.
    #[error("cannot import {name}")]
    Import {
        /// The file as named.
        name: String,
        /// Why.
        #[source]
        source: Box<flashrack_image::ImageError>,
    },
    /// An image could not be downloaded, or its checksum list or signature
    /// did not hold.
    #[error("cannot import {url}")]
    Download {
        /// The image's URL (a failure of its checksum list or signature
        /// names theirs).
        url: String,
        /// Why.
        #[source]
        source: Box<flashrack_download::DownloadError>,
    },
    /// The file at a URL changed on the server while a flash wrote it as
    /// it downloaded (a resume answered with the whole new file, or a new
    /// `ETag`): the sticks hold part of the old file, so every target fails
    /// before any verdict; the partial download is discarded.
    #[error(
        "{url} changed on the server while it was being written ({reason}): no stick holds a whole image; flash it again to write the new file, downloaded from its start"
    )]
    SourceChanged {
        /// The URL.
        url: String,
        /// Which validator changed.
        reason: String,
    },
    /// A flash wrote its sticks from an import as it arrived, and the
    /// import abandoned what it had told them
    /// ([`flashrack_image::ImportObserver::abandoned`]: a zip's stored file
    /// that went on past the end found in its data) and read the image
    /// again from the downloaded archive: every target failed before any
    /// verdict, and the image is in the cache.
    #[error(
        "the sticks followed {name} as it arrived, but {reason}: no stick holds a whole image; the image is now in the cache ({sha256}): flash it again to write it whole"
    )]
    FollowAbandoned {
        /// The file or URL.
        name: String,
        /// Why the import abandoned what it had told.
        reason: String,
        /// The image, now in the cache.
        sha256: flashrack_core::Sha256Digest,
    },
    /// A master could not be captured.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// A target of an audit cannot be read back.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The demo cannot be set up as asked (a master port not in its rack).
    #[error("demo: {0}")]
    Demo(String),
    /// The operator's keyring could not be read.
    #[error("cannot read the keyring {}", path.display())]
    ReadKeyring {
        /// The keyring file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operator's keyring holds no OpenPGP public key flashrack can read.
    #[error("cannot use the keyring")]
    BadKeyring(#[source] Box<flashrack_download::DownloadError>),
    /// A name that is neither a file nor a cached image.
    #[error("{name} is neither a file nor a cached image")]
    UnknownImage {
        /// The name given.
        name: String,
        /// What the cache said.
        #[source]
        source: Box<flashrack_image::ImageError>,
    },
    /// A cached image that is not the one the caller expected.
    #[error("cached image {found} does not match --sha256 {expected}")]
    ImageMismatch {
        /// The cached image's digest.
        found: Sha256Digest,
        /// The digest expected.
        expected: Sha256Digest,
    },
    /// The image would not boot when written raw (a non-hybrid installer
    /// ISO, found by inspecting its content) and the raw run was not forced.
    #[error("image {name} is refused for a raw run: {refusal} (--force-raw)")]
    RawWriteRefused {
        /// The image's name.
        name: String,
        /// Why, and what to do instead.
        refusal: flashrack_image::RawWriteRefusal,
    },
    /// A bootable layout could not be built from an ISO.
    #[error(transparent)]
    Bootable(Box<crate::bootable::BuildError>),
    /// A block map given for an image was refused (unreadable, malformed,
    /// or it does not describe the image).
    #[error("cannot use the block map {}", path.display())]
    Bmap {
        /// The bmap file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<flashrack_image::ImageError>,
    },
    /// A sparse run of an image that has no block map.
    #[error("image {name} has no block map, so it can only be written whole (without --sparse): {reason}")]
    NoBlockMap {
        /// The image's name.
        name: String,
        /// Why none could be made.
        reason: String,
    },
    /// Anything else the image cache refused (listing, removal).
    #[error(transparent)]
    Image(Box<flashrack_image::ImageError>),
    /// The records could not be opened for writing.
    #[error("cannot open the records in {}", path.display())]
    OpenRecords {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: flashrack_store::StoreError,
    },
    /// Attempts a crash left unfinished could not be accounted for.
    #[error("cannot recover unfinished attempts")]
    Recover(#[source] flashrack_store::StoreError),
    /// There are no records to report from.
    #[error("no records in {} (nothing has been flashed with this data directory)", dir.display())]
    NoRecords {
        /// The data directory.
        dir: PathBuf,
    },
    /// The records could not be opened for reading.
    #[error("cannot read the records in {}", path.display())]
    ReadRecords {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: flashrack_store::StoreError,
    },
    /// A run asked for as one station's that another station made.
    #[error("run {run} was made by station {station:?}, not {asked:?} (--station)")]
    RunOfAnotherStation {
        /// The run.
        run: RunId,
        /// Its station.
        station: String,
        /// The station asked about.
        asked: String,
    },
    /// No run with that id in the records.
    #[error("no run {0} in the records")]
    NoSuchRun(RunId),
    /// No device with that serial or key in the records.
    #[error("no device {0:?} in the records")]
    NoSuchDevice(String),
    /// A read of the records failed.
    #[error(transparent)]
    Store(#[from] flashrack_store::StoreError),
    /// A record could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A verdict could not be recorded (the flash stops: a verdict that is not
    /// in the records is never shown).
    #[error("cannot record the verdict of {target}")]
    RecordVerdict {
        /// The target.
        target: String,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The station's hub token cannot be used.
    #[error("cannot join the fleet")]
    FleetToken(#[source] flashrack_config::ConfigError),
    /// The hub's client cannot be set up.
    #[error("cannot join the fleet")]
    FleetClient(#[source] flashrack_fleet_client::ClientError),
    /// The station's instance id (`fleet-instance` in the data directory)
    /// cannot be read or made.
    #[error("cannot read or make the station's fleet instance id {}", path.display())]
    FleetInstance {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A fleet station keeps its records (they are what it ships).
    #[error("a station in a fleet must keep its records (not in memory only)")]
    FleetWithoutRecords,
    /// The outbox could not be enabled (the station's history queued).
    #[error("cannot queue the station's records for the hub")]
    EnableOutbox(#[source] flashrack_store::StoreError),
    /// The station would listen beyond loopback without a token.
    #[error("refusing to listen on {0} (not loopback) without an operator token")]
    NoToken(std::net::SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The web server stopped with an error.
    #[error("the web server failed")]
    Web(#[source] std::io::Error),
    /// The station's task panicked.
    #[error("the station task failed")]
    StationTask(#[source] tokio::task::JoinError),
    /// The image source failed under a flash: the run was aborted.
    #[error("the run was aborted")]
    SourceFailed(#[source] flashrack_engine::EngineError),
    /// The configuration could not be read or written.
    #[error(transparent)]
    Config(#[from] flashrack_config::ConfigError),
    /// The data directory's lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A target named on the command line.
    #[error(transparent)]
    Targets(#[from] TargetsError),
    /// The station's HTTP API.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The hotplug source could not run (`ports learn`).
    #[error(transparent)]
    Hotplug(#[from] flashrack_hotplug::HotplugError),
}

impl From<flashrack_image::ImageError> for AppError {
    fn from(error: flashrack_image::ImageError) -> Self {
        AppError::Image(Box::new(error))
    }
}
