//! Domain types shared by every flashrack crate: digests, sizes, stages, verdicts,
//! the image manifest and the events the engine emits.
//!
//! This crate does no I/O and knows nothing of devices, HTTP or SQL. Values that
//! must be valid are newtypes with a `parse` constructor (`Sha256Digest`,
//! `ByteSize`); states and verdicts are closed enums, never strings.
//!
//! Layout:
//! - [`digest`]: [`Sha256Digest`], the content address of images and chunks;
//! - [`size`]: [`ByteSize`], parsed from and shown as human sizes;
//! - [`manifest`]: [`ImageManifest`], what is known about a cached image;
//! - [`verdict`]: [`Stage`], [`FailReason`], [`Verdict`] and their figures;
//! - [`event`]: [`EngineEvent`], the closed set of things the engine reports;
//! - [`record`]: the records' ids ([`RunId`], [`DeviceId`], [`AttemptId`],
//!   [`RefusalId`]) and [`StopReason`];
//! - [`refusal`]: [`RefusalCode`] and [`GuardRefusal`], the target guard's
//!   refusals as records and screens carry them;
//! - [`provenance`]: [`Provenance`] and [`DigestSource`], where a downloaded
//!   image came from and what its digest was checked against;
//! - [`ranges`]: [`DataRanges`], the byte ranges a sparse run writes and reads
//!   back (from a block map).
//! - [`sample`]: [`SamplePercent`], the share a sampled verify reads back.
#![deny(missing_docs)]

pub mod build;
pub mod digest;
pub mod event;
pub mod manifest;
mod name;
pub mod provenance;
pub mod ranges;
pub mod record;
pub mod refusal;
pub mod run_options;
pub mod sample;
pub mod size;
mod text;
pub mod verdict;

pub use build::{BuildStage, BuildState};
pub use digest::{DigestParseError, Sha256Digest};
pub use event::{EngineEvent, EngineEventKind, TargetId};
pub use manifest::{ChunkKind, ImageManifest, ManifestError};
pub use name::{
    file_name_from, has_unprintable, is_file_name_char, is_unprintable, printable_name,
    MAX_FILE_NAME_BYTES,
};
pub use provenance::{BuildOrigin, CaptureOrigin, DigestSource, Provenance, SignatureCheck};
pub use ranges::{DataRanges, RangesError};
pub use record::{
    AttemptId, AttemptState, AttemptStateParseError, DeviceId, IdParseError, RefusalId, RunId,
    StopReason, StopReasonParseError,
};
pub use refusal::{GuardRefusal, RefusalCode, RefusalCodeParseError};
pub use run_options::{RunOptions, RUN_OPTION_NAMES};
pub use sample::{SamplePercent, SamplePercentError};
pub use size::{ByteSize, ByteSizeParseError};
pub use verdict::{
    AttemptFigures, Bound, FailReason, Failure, ProbeOperation, Stage, Verdict, VerifyMethod,
    VerifyMode, VerifyModeParseError, VerifySample,
};
