//! The flashing engine: one cached image fanned out to many targets, each at its
//! own pace, each verified from the medium.
//!
//! The engine knows nothing of HTTP, SQL or udev. It is given a [`SourceImage`]
//! (a raw image file and its manifest) and targets behind the
//! [`flashrack_target::Target`] seam, and it reports through a channel of
//! [`flashrack_core::EngineEvent`]s.
//!
//! Layout:
//! - [`feed`]: an image still being imported, which targets follow chunk by
//!   chunk (a one-shot flash of a new file writes while it imports; every
//!   attempt waits for the import's end, and its digest, before any
//!   read-back or verdict);
//! - [`source`]: the shared, bounded chunk cache over the image file, whose
//!   chunks are the file's page-cache pages mapped in place ([`mapped`]); every
//!   chunk is read from the file once per pass however many targets want it, and is checked against the manifest (its XXH3-128
//!   fingerprint, or its sha256 for a format-1 manifest) before anything is
//!   verified against it;
//! - [`attempt`]: one target's blocking pipeline (prepare → probe → write → flush →
//!   reset, if asked and the target can → verify) run on a dedicated OS thread, with one helper thread per pass that
//!   keeps the device busy while the CPU works (next source chunk fetched during a
//!   write, next piece read back during a compare);
//! - [`probe`]: the capacity probe that finds the real size of sticks lying
//!   about it (sampling, then bisection to the block);
//! - [`sample`]: which chunks a sampled read-back checks (seeded, repeatable);
//! - `narrow`: a failed write written again in smaller pieces, down to the
//!   block that fails, so that a write error names that block;
//! - [`fanout`]: starts attempts, watches them for stalls, and turns their ends
//!   into verdicts; [`flash_all`] is the one-shot entry point;
//! - [`clock`]: the time the stall watchdog (and the station's timers) go by:
//!   the system's, or a manual clock that tests move past a timeout.
//!
//! **Architecture invariant:** a failed target is data (a [`flashrack_core::Verdict`]),
//! never an `Err`; only a failure of the source image aborts a fan-out.
#![deny(missing_docs)]

pub mod attempt;
pub mod clock;
pub mod fanout;
pub mod feed;
pub mod mapped;
mod narrow;
pub mod probe;
pub mod sample;
pub mod source;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{DataRanges, ImageManifest, VerifyMode};

pub use clock::{Clock, ManualClock};
pub use fanout::{
    flash_all, AttemptHandle, AttemptOutcome, Canceller, Fanout, Hold, ABANDON_GRACE,
};
pub use feed::{FeedError, Follower, ImageFeed};
pub use source::SharedSource;

/// The image to write: a raw image file and what is known about it.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The raw image file (in the image cache).
    pub path: PathBuf,
    /// Its manifest: digest, size, chunk fingerprints and zero chunks.
    pub manifest: ImageManifest,
    /// Whether the file is one the image cache only references (a raw image
    /// imported in place rather than copied) instead of a file of its own. Its
    /// owner may rewrite or cut it short at any time, so its chunks are read
    /// into buffers, never mapped (a mapping of a file cut short ends the
    /// process with `SIGBUS`); like every chunk, each is checked against its
    /// fingerprint before anything is verified against it.
    pub referenced: bool,
}

impl SourceImage {
    /// An image file of the cache's own (not [`referenced`](Self::referenced)).
    pub fn cached(path: PathBuf, manifest: ImageManifest) -> Self {
        Self {
            path,
            manifest,
            referenced: false,
        }
    }
}

/// Knobs of a fan-out.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How to verify (what each target's read-back then was is its figures'
    /// `verify_method`).
    pub verify: VerifyMode,
    /// A target that makes no progress for this long fails as stalled.
    pub stall_timeout: Duration,
    /// The clock the stall timeout is measured on (the station's timers use it
    /// too): the system's, or a manual one in tests.
    pub clock: Clock,
    /// Minimum time between two progress events of one target.
    pub progress_interval: Duration,
    /// How many chunks the shared source cache keeps (memory: this × chunk size).
    pub source_cache_chunks: usize,
    /// Whether to probe media that may lie about their capacity before writing.
    pub probe_capacity: bool,
    /// How the capacity probe works against a stick's own cache (the filler
    /// written before its markers are read back) and how many blocks each
    /// round of its bisection samples.
    pub probe: probe::ProbeOptions,
    /// Whether to reset each target that can be reset
    /// ([`flashrack_target::Target::can_reset`]) after its write pass is
    /// flushed and before it is read back, so that no cache inside the stick
    /// answers the read-back (the figures' `verified_after_reset` says whether
    /// it was done). Targets that cannot be reset are read back as before.
    pub reset_before_verify: bool,
    /// A sparse run: only these ranges of the image (its block map) are
    /// written, and exactly these are read back and compared; the rest of
    /// each stick is left as it was and not checked (the figures'
    /// `bytes_skipped`). `None`: the whole image. The ranges are widened to
    /// each target's logical blocks. A sparse read-back always compares (a
    /// chunk's digest covers bytes the run does not read).
    pub sparse: Option<Arc<DataRanges>>,
    /// How long a station waits for a stick to come back from its reset
    /// before it fails the attempt as `lost_after_reset` (measured on
    /// [`clock`](Self::clock) by the station, which sees the stick leave and
    /// return; the engine itself only waits on the target). Keep it below
    /// [`stall_timeout`](Self::stall_timeout): the attempt makes no progress
    /// while its stick is away.
    pub reset_timeout: Duration,
    /// Check only this share of each target's chunks, in percent (above 0,
    /// below 100): chosen at random per target from a seed kept in its
    /// figures, plus the first and the last chunk ([`sample::choose_chunks`]).
    /// `None` (the default) checks every byte. A sampled pass is recorded as
    /// `sampled`, never as a plain pass.
    pub sample_percent: Option<f64>,
    /// Write nothing: read each target back and compare it with the image (an
    /// audit of sticks written earlier or elsewhere). No probe, no reset; the
    /// bytes written are unknown, not zero.
    pub audit: bool,
    /// How long an attempt started after a stalled one of the same stick
    /// ([`fanout::Fanout::start_after`]: a retry) waits, on
    /// [`clock`](Self::clock), for the stalled attempt's I/O to come back from
    /// the kernel and let go of the stick before it gives up as
    /// `held_by_stuck_io` without opening it. The station and `flashrack
    /// flash` set it to the stall timeout.
    pub release_timeout: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            verify: VerifyMode::Compare,
            stall_timeout: Duration::from_secs(60),
            clock: Clock::System,
            progress_interval: Duration::from_millis(250),
            source_cache_chunks: 8,
            probe_capacity: true,
            probe: probe::ProbeOptions::default(),
            reset_before_verify: false,
            sparse: None,
            reset_timeout: Duration::from_secs(20),
            sample_percent: None,
            audit: false,
            release_timeout: Duration::from_secs(60),
        }
    }
}

/// A failure of the source image: the only thing that aborts a fan-out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The image file could not be opened or does not match its manifest's size.
    #[error("cannot open the source image {path}: {detail}")]
    SourceOpen {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Reading a chunk of the image failed.
    #[error("reading the source image failed at offset {offset}: {detail}")]
    SourceRead {
        /// Byte offset of the chunk.
        offset: u64,
        /// What the operating system said.
        detail: String,
    },
    /// A chunk of the cached image no longer matches its fingerprint (or sha256)
    /// from the import (the cache is corrupt): nothing can be verified against it.
    #[error(
        "the cached image is corrupt: chunk at offset {offset} does not match its digest from the import"
    )]
    SourceCorrupt {
        /// Byte offset of the chunk.
        offset: u64,
    },
    /// The import a run follows failed (a digest that does not match, a
    /// corrupt or truncated archive, a read error), or the run asked for what
    /// a followed import cannot give: no target may pass.
    #[error("the image source failed: {detail}")]
    SourceFailed {
        /// Why.
        detail: String,
    },
}
