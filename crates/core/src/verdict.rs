//! Stages of an attempt, the closed set of failure reasons, and verdicts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::stable_text;
use crate::{ByteSize, RefusalCode, Sha256Digest};

/// Where in its pipeline an attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Opening the target, checking its size and probing its real capacity.
    Preparing,
    /// Writing the image.
    Writing,
    /// Waiting for the target to commit what was written.
    Flushing,
    /// The stick is away in a USB reset (the capacity probe's, between its
    /// markers and their read-back, or the one before the read-back) and
    /// opened again after it: a stick lost in its reset, one that comes back
    /// different or a reset that fails fails in this stage.
    Resetting,
    /// Reading the target back from the medium and comparing.
    Verifying,
}

impl Stage {
    /// The stable text stored in the records and shown in reports (the serde
    /// name).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Preparing => "preparing",
            Stage::Writing => "writing",
            Stage::Flushing => "flushing",
            Stage::Resetting => "resetting",
            Stage::Verifying => "verifying",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the capacity probe was doing when the target failed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOperation {
    /// Writing a marker block.
    Write,
    /// Committing the markers to the medium.
    Flush,
    /// Opening a fresh handle to read the markers back.
    Open,
    /// Reading a marker back.
    Read,
    /// Resetting the stick between writing the markers and reading them back
    /// (and opening it again after the reset).
    Reset,
}

impl fmt::Display for ProbeOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeOperation::Write => "write",
            ProbeOperation::Flush => "flush",
            ProbeOperation::Open => "open",
            ProbeOperation::Read => "read",
            ProbeOperation::Reset => "reset",
        })
    }
}

/// Why an attempt failed. A closed set: every failure a person sees is one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum FailReason {
    /// The target is smaller than the image.
    TooSmall {
        /// What the target reports.
        capacity: ByteSize,
        /// What the image needs.
        needed: ByteSize,
    },
    /// The target holds no medium: it reports a capacity of zero (a card reader
    /// without a card, a stick whose controller lost its flash). Nothing written.
    NoMedium,
    /// The target refuses writes (write-protect switch, read-only device).
    ReadOnly,
    /// The target claims more capacity than it really stores (a fake stick): data
    /// written at one place came back from another, or not at all.
    CapacityLie {
        /// What the target reports.
        claimed: ByteSize,
        /// The first probed offset that did not hold what was written there.
        first_bad_offset: u64,
        /// What it really stores: the offset of its first block that does not
        /// keep what is written there, found by bisection (every block before
        /// it does). `None` in records made before the probe measured it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        real_bytes: Option<ByteSize>,
    },
    /// The capacity probe, before any of the image was written, failed on an
    /// I/O error of the target (not on a lie: that is [`FailReason::CapacityLie`]).
    ProbeError {
        /// What the probe was doing.
        operation: ProbeOperation,
        /// Byte offset of the failed marker write or read; `None` for a flush or
        /// an open.
        offset: Option<u64>,
        /// What the operating system said.
        detail: String,
    },
    /// A write failed.
    WriteError {
        /// Byte offset of the failure: the first logical block that fails when
        /// written on its own, when the failed request could be narrowed down to
        /// it, else where the failed request failed (`detail` says which, and the
        /// failed request's offset and length).
        offset: u64,
        /// What the operating system said, and where the failed request lay.
        detail: String,
    },
    /// Committing the written data failed.
    FlushError {
        /// What the operating system said.
        detail: String,
    },
    /// Reading back failed.
    ReadError {
        /// Byte offset of the failed read.
        offset: u64,
        /// What the operating system said.
        detail: String,
    },
    /// What was read back differs from the image.
    VerifyMismatch {
        /// Byte offset of the first differing byte.
        offset: u64,
    },
    /// The target went away.
    Removed {
        /// What the attempt was doing.
        during: Stage,
    },
    /// The stick was reset (a USB reset, to drop any cache inside it: by the
    /// capacity probe, or before the read-back) and did not come back in its
    /// port within the station's timeout. The attempt could not go on.
    LostAfterReset {
        /// Seconds waited for it to come back.
        after_secs: u64,
    },
    /// The stick was reset (by the capacity probe, or before its read-back)
    /// and what came back in its port is not the stick that was written
    /// (another serial, another capacity, not the marker read before the
    /// reset). It was never written or read back as if it were.
    ChangedAfterReset {
        /// What differs, for a person.
        detail: String,
    },
    /// The target stopped responding and the attempt timed out.
    Stalled {
        /// What the attempt was doing.
        during: Stage,
        /// How far it had got.
        offset: u64,
        /// Seconds without progress before giving up.
        after_secs: u64,
    },
    /// A retry of a stick whose previous attempt stalled, given up before it
    /// opened the stick: the stalled attempt's I/O is still stuck in the
    /// kernel and holds the stick open (exclusively), and it did not let go
    /// within the bound the retry waits for it. Nothing was opened or written;
    /// the stick must be pulled (which ends the stuck I/O), not retried.
    HeldByStuckIo {
        /// Seconds the retry waited for the stuck I/O to end.
        waited_secs: u64,
    },
    /// The target guard refused the target; nothing was written.
    Refused {
        /// The guard's reason as its stable code. `None` only in records made
        /// before refusals carried their code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RefusalCode>,
        /// The guard's reason, for a person.
        detail: String,
    },
    /// The target could not be opened for another reason.
    Unavailable {
        /// What the operating system said.
        detail: String,
    },
    /// The attempt was stopped by the operator or by a shutdown.
    Interrupted,
    /// The station itself could not go on with the attempt: it ran out of file
    /// descriptors, memory or threads (`EMFILE`, `ENFILE`, `ENOMEM`, `EAGAIN`
    /// when opening the stick or starting the attempt's thread). Says nothing
    /// about the stick: it is recorded like an interruption, not as a failure
    /// of the stick, and the stick may be written again.
    StationError {
        /// What the operating system said.
        detail: String,
    },
}

impl FailReason {
    /// A short stable code: `too_small`, `write_error`, … (the serde tag).
    pub fn code(&self) -> &'static str {
        match self {
            FailReason::TooSmall { .. } => "too_small",
            FailReason::NoMedium => "no_medium",
            FailReason::ReadOnly => "read_only",
            FailReason::CapacityLie { .. } => "capacity_lie",
            FailReason::ProbeError { .. } => "probe_error",
            FailReason::WriteError { .. } => "write_error",
            FailReason::FlushError { .. } => "flush_error",
            FailReason::ReadError { .. } => "read_error",
            FailReason::VerifyMismatch { .. } => "verify_mismatch",
            FailReason::Removed { .. } => "removed",
            FailReason::Stalled { .. } => "stalled",
            FailReason::LostAfterReset { .. } => "lost_after_reset",
            FailReason::ChangedAfterReset { .. } => "changed_after_reset",
            FailReason::HeldByStuckIo { .. } => "held_by_stuck_io",
            FailReason::Refused { .. } => "refused",
            FailReason::Unavailable { .. } => "unavailable",
            FailReason::Interrupted => "interrupted",
            FailReason::StationError { .. } => "station_error",
        }
    }

    /// Whether the outcome is the station's, not the stick's: an interruption
    /// (operator, shutdown) or a station error. Such an attempt proves nothing
    /// about the stick either way and is not counted as a failure.
    pub fn is_station_side(&self) -> bool {
        matches!(
            self,
            FailReason::Interrupted | FailReason::StationError { .. }
        )
    }

    /// Whether writing the stick again may succeed: a write or flush error
    /// (the capacity probe's own included), or a stall while writing (a stick
    /// or a hub that hiccuped). Never a
    /// capacity lie, a read-only or too small stick, a mismatch, a removal, a
    /// refusal or the station's own trouble: those would fail the same way, or
    /// are not the stick's. A run's automatic retries and the dashboard's
    /// "retry all failed" retry only these.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FailReason::WriteError { .. }
                | FailReason::FlushError { .. }
                | FailReason::ProbeError {
                    operation: ProbeOperation::Write | ProbeOperation::Flush,
                    ..
                }
                | FailReason::Stalled {
                    during: Stage::Writing | Stage::Flushing,
                    ..
                }
        )
    }

    /// The byte offset the failure is tied to, where there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            FailReason::WriteError { offset, .. }
            | FailReason::ReadError { offset, .. }
            | FailReason::VerifyMismatch { offset }
            | FailReason::Stalled { offset, .. } => Some(*offset),
            FailReason::CapacityLie {
                first_bad_offset, ..
            } => Some(*first_bad_offset),
            FailReason::ProbeError { offset, .. } => *offset,
            _ => None,
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::TooSmall { capacity, needed } => {
                // Exact: a stick a few bytes short would otherwise show the
                // image's size.
                write!(
                    f,
                    "too small: holds {}, image needs {}",
                    capacity.exact(),
                    needed.exact()
                )
            }
            FailReason::NoMedium => {
                f.write_str("no medium: the device reports a capacity of 0 bytes")
            }
            FailReason::ReadOnly => f.write_str("read-only: the stick refuses writes"),
            FailReason::CapacityLie {
                claimed,
                first_bad_offset,
                real_bytes: Some(real),
            } => write!(
                f,
                "capacity lie: claims {claimed} but stores only {} (loses data from offset {first_bad_offset})",
                real.exact()
            ),
            FailReason::CapacityLie {
                claimed,
                first_bad_offset,
                real_bytes: None,
            } => write!(
                f,
                "capacity lie: claims {claimed} but does not keep data at offset {first_bad_offset}"
            ),
            FailReason::ProbeError {
                operation,
                offset,
                detail,
            } => {
                f.write_str("capacity probe failed: ")?;
                match (operation, offset) {
                    (ProbeOperation::Write, Some(at)) => {
                        write!(f, "writing the marker at offset {at}")?
                    }
                    (ProbeOperation::Read, Some(at)) => {
                        write!(f, "reading the marker back at offset {at}")?
                    }
                    (ProbeOperation::Flush, _) => f.write_str("committing the markers")?,
                    (ProbeOperation::Open, _) => {
                        f.write_str("opening the stick to read the markers back")?
                    }
                    (ProbeOperation::Reset, _) => {
                        f.write_str("resetting the stick before reading the markers back")?
                    }
                    (operation, None) => write!(f, "{operation}")?,
                }
                write!(f, ": {detail}")
            }
            FailReason::WriteError { offset, detail } => {
                write!(f, "write error at offset {offset}: {detail}")
            }
            FailReason::FlushError { detail } => write!(f, "flush failed: {detail}"),
            FailReason::ReadError { offset, detail } => {
                write!(f, "read error at offset {offset}: {detail}")
            }
            FailReason::VerifyMismatch { offset } => {
                write!(f, "verify mismatch at offset {offset}")
            }
            FailReason::Removed { during } => write!(f, "removed during {during}"),
            FailReason::LostAfterReset { after_secs } => write!(
                f,
                "lost after reset: the stick did not come back within {after_secs} s of its reset"
            ),
            FailReason::ChangedAfterReset { detail } => write!(
                f,
                "changed after reset: what came back in the port is not the stick that was written ({detail}); not read back"
            ),
            FailReason::Stalled {
                during,
                offset,
                after_secs,
            } => write!(
                f,
                "stopped responding during {during} at offset {offset} (no progress for {after_secs} s)"
            ),
            FailReason::HeldByStuckIo { waited_secs } => write!(
                f,
                "still held by I/O stuck in the kernel since its last attempt stalled \
                 (not released within {waited_secs} s): not written again; pull the stick"
            ),
            FailReason::Refused { detail, .. } => {
                write!(f, "refused by the target guard: {detail}")
            }
            FailReason::Unavailable { detail } => write!(f, "cannot open: {detail}"),
            FailReason::Interrupted => f.write_str("interrupted"),
            FailReason::StationError { detail } => write!(
                f,
                "station error, the stick was not judged: {detail}"
            ),
        }
    }
}

/// A failed attempt: the reason and the stage it happened in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong.
    #[serde(flatten)]
    pub reason: FailReason,
    /// The stage the attempt was in.
    pub stage: Stage,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The target holds the image, proven by reading it back from the medium (or
    /// written without verification, when the run asked for that: see
    /// [`AttemptFigures::verify_method`]).
    Pass,
    /// The attempt failed.
    Fail(Failure),
}

impl Verdict {
    /// Whether this is a pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// The failure, if any.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail(f) => Some(f),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail(failure) => write!(f, "fail: {failure}"),
        }
    }
}

/// How a run asks its targets to be checked after writing: the operator's
/// choice (a run's options, the API's `verify`, the command line's `--verify`)
/// and the engine's instruction.
///
/// What was actually done to one target is its [`VerifyMethod`], a different
/// type on purpose: a mode is a request made before anything is read, a method
/// is a record of how a read-back was checked (kept with the attempt's figures,
/// absent when the attempt ended before its read-back). Today each mode is
/// carried out as the method of the same name; a method can come to differ from
/// the mode asked for (a read-back that proves less than asked, as a sampled or
/// sparse check would), and a record must say what was done, not what was
/// asked. Both spell themselves the same way in JSON and the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Read back from the medium and compare byte for byte with the cached image,
    /// whose chunks are checked once per run against the XXH3-128 fingerprint the
    /// import computed over the same bytes as the image's sha256 (their sha256 for
    /// a format-1 manifest). Byte equality with checked chunks makes the
    /// read-back's sha256 the image's (the default).
    #[default]
    Compare,
    /// Read back from the medium and hash every chunk with sha256.
    Hash,
    /// No read-back (the operator asked for speed over proof; the verdict says
    /// so).
    None,
}

impl VerifyMode {
    /// Every mode, in declaration order.
    pub const ALL: &'static [VerifyMode] =
        &[VerifyMode::Compare, VerifyMode::Hash, VerifyMode::None];

    /// The stable text of the mode (the serde name): `compare`, `hash`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Compare => "compare",
            VerifyMode::Hash => "hash",
            VerifyMode::None => "none",
        }
    }
}

stable_text!(
    VerifyMode,
    as_str,
    VerifyModeParseError,
    "a verify mode (compare, hash or none)"
);

/// How the read-back of a target was checked, and so how its sha256 is known:
/// what was done, where [`VerifyMode`] is what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMethod {
    /// Not verified (the run asked for no verification).
    None,
    /// Every byte read back from the medium was compared with the cached image,
    /// whose chunks were checked in the same run against the fingerprints taken in
    /// the import pass that computed the image's sha256; byte equality makes the
    /// read-back's sha256 the image's.
    Compare,
    /// Every byte read back was hashed with sha256 and compared with the image's
    /// chunk digests.
    Hash,
    /// Every chunk read back had the XXH3-128 fingerprint the import pass took of
    /// that chunk, in the pass that computed the image's sha256 (an all-zero
    /// chunk: every byte read back was zero). The same chain of proof as
    /// [`Compare`](Self::Compare), whose cached chunks are checked against those
    /// fingerprints before the bytes are compared, without reading the image
    /// again: what a compare asked for does when its attempt followed the
    /// import (a one-shot flash of a new file), whose chunks are no longer in
    /// memory or the page cache.
    Fingerprint,
    /// A stated share of the image's chunks, chosen at random per stick (from a
    /// seed kept in [`AttemptFigures::sample`]) plus the first and the last
    /// chunk (where an MBR, a GPT and its backup lie), was read back and
    /// compared: a weaker proof than a full compare, never shown as a plain
    /// pass.
    Sampled,
    /// Nothing was written: the stick was read back and every byte compared
    /// with the image (an audit of a stick written earlier, or elsewhere).
    Audit,
}

impl VerifyMethod {
    /// The stable text stored in the records and shown in reports (the serde
    /// name).
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMethod::None => "none",
            VerifyMethod::Compare => "compare",
            VerifyMethod::Hash => "hash",
            VerifyMethod::Fingerprint => "fingerprint",
            VerifyMethod::Sampled => "sampled",
            VerifyMethod::Audit => "audit",
        }
    }
}

/// Which chunks a sampled read-back checked, so that it can be repeated: the
/// share asked for, the seed the random choice was drawn from, and how many
/// chunks that made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VerifySample {
    /// The share of the image's chunks asked for, in percent (above 0, below
    /// 100).
    pub percent: f64,
    /// The seed of the random choice (splitmix64 over the chunk indices).
    pub seed: u64,
    /// Chunks read back and compared (the random ones, the first and the last).
    pub chunks_checked: u64,
    /// Chunks in the image.
    pub chunks_total: u64,
}

impl VerifySample {
    /// How a verdict says what the sample proved: `sampled (5 %)`.
    pub fn words(&self) -> String {
        format!("sampled ({} %)", trim_percent(self.percent))
    }
}

/// A percentage with at most two decimals and no trailing zeros: `5`, `0.5`,
/// `12.25`.
fn trim_percent(percent: f64) -> String {
    let text = format!("{percent:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The figures of one attempt, for the summary table and the records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptFigures {
    /// Reported capacity of the target.
    pub capacity: ByteSize,
    /// Bytes written to the target.
    pub bytes_written: u64,
    /// Seconds spent writing, flush included.
    pub write_secs: f64,
    /// Bytes read back from the medium.
    pub bytes_verified: u64,
    /// Seconds spent reading back.
    pub verify_secs: f64,
    /// The sha256 of what was read back: the image's on a pass; on a verify
    /// mismatch, the digest of the stick's first image-size bytes as the medium
    /// returned them (the read-back carries on to the end of the image after the
    /// first difference). `None` when they could not all be read (a read error,
    /// a removal or a stop after the mismatch) and when nothing was verified.
    pub read_back_sha256: Option<Sha256Digest>,
    /// How the read-back was checked.
    pub verify_method: Option<VerifyMethod>,
    /// How far [`bytes_written`](Self::bytes_written) can be trusted: exact when
    /// the attempt's own thread counted every write the target acknowledged to
    /// the end, a lower bound when the verdict came from outside it (a stall, a
    /// removal, a shutdown, a crash: a write in flight may have landed too).
    #[serde(default)]
    pub bytes_written_bound: Bound,
    /// Whether the read-back followed a reset of the target (a power cycle
    /// that drops any cache inside the stick), so that what was read is what
    /// its medium holds. Kept in the records (schema 8, `false` for attempts
    /// recorded before it) and in the reports (from `flashrack-report/4` on).
    #[serde(default)]
    pub verified_after_reset: bool,
    /// Bytes of the image a sparse attempt neither wrote nor read back (outside
    /// its block map's ranges: the stick holds there whatever it held before,
    /// but for the capacity probe's markers).
    /// Zero for a full attempt. `bytes_verified` is the coverage of the rest.
    #[serde(default)]
    pub bytes_skipped: u64,
    /// For a sampled read-back ([`VerifyMethod::Sampled`]): the share asked
    /// for, the seed and the chunks checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<VerifySample>,
}

impl AttemptFigures {
    /// Write speed in MB/s (10^6 bytes a second), flush included.
    pub fn write_mb_per_sec(&self) -> Option<f64> {
        rate(self.bytes_written, self.write_secs)
    }

    /// Read-back speed in MB/s.
    pub fn verify_mb_per_sec(&self) -> Option<f64> {
        rate(self.bytes_verified, self.verify_secs)
    }

    /// What a verdict of these figures proved, in the words every view and
    /// report uses for a pass: `pass` (every byte read back and checked),
    /// `sampled (5 %)`, `audit pass` (read back without writing), `written,
    /// not verified`, `sparse (15.2 % checked)` (the block map's ranges
    /// written and read back, the rest of the image neither), `sparse,
    /// sampled (5 %)` (a sample of those ranges read back). A weaker proof
    /// is never a plain `pass`.
    pub fn pass_words(&self) -> String {
        // A sample of a sparse run's ranges says both.
        let sparse = if self.bytes_skipped > 0 {
            "sparse, "
        } else {
            ""
        };
        match (self.verify_method, &self.sample) {
            (Some(VerifyMethod::Sampled), Some(sample)) => format!("{sparse}{}", sample.words()),
            (Some(VerifyMethod::Sampled), None) => format!("{sparse}sampled"),
            (Some(VerifyMethod::Audit), _) => "audit pass".into(),
            (Some(VerifyMethod::None), _) => "written, not verified".into(),
            _ if self.bytes_skipped > 0 => {
                let covered = self.bytes_verified + self.bytes_skipped;
                // Rounded down: never more than was checked.
                let percent =
                    (self.bytes_verified as f64 * 10_000.0 / covered as f64).floor() / 100.0;
                format!("sparse ({} % checked)", trim_percent(percent))
            }
            _ => "pass".into(),
        }
    }
}

/// How far a recorded byte count can be trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The count is what happened.
    #[default]
    Exact,
    /// At least this many bytes; more may have reached the target.
    LowerBound,
    /// Not known (the count says nothing).
    Unknown,
}

impl Bound {
    /// The stable text stored in the records and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Exact => "exact",
            Bound::LowerBound => "lower_bound",
            Bound::Unknown => "unknown",
        }
    }
}

fn rate(bytes: u64, secs: f64) -> Option<f64> {
    (bytes > 0 && secs > 0.0).then(|| bytes as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_serialize_with_a_stable_reason_code_and_offset() {
        let fail = Verdict::Fail(Failure {
            reason: FailReason::VerifyMismatch { offset: 4096 },
            stage: Stage::Verifying,
        });
        let json = serde_json::to_value(&fail).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["reason"], "verify_mismatch");
        assert_eq!(json["offset"], 4096);
        assert_eq!(json["stage"], "verifying");
        assert_eq!(serde_json::from_value::<Verdict>(json).unwrap(), fail);
        assert_eq!(fail.to_string(), "fail: verify mismatch at offset 4096");
    }

    #[test]
    fn a_refusal_carries_the_guards_code_and_reads_older_records_without_one() {
        let refused = Failure {
            reason: FailReason::Refused {
                code: Some(RefusalCode::Mounted),
                detail: "sdb1 is mounted at /mnt".into(),
            },
            stage: Stage::Preparing,
        };
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["reason"], "refused");
        assert_eq!(json["code"], "mounted");
        assert_eq!(serde_json::from_value::<Failure>(json).unwrap(), refused);
        let old: Failure =
            serde_json::from_str(r#"{"reason":"refused","detail":"x","stage":"preparing"}"#)
                .unwrap();
        assert_eq!(
            old.reason,
            FailReason::Refused {
                code: None,
                detail: "x".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"reason":"refused","detail":"x","stage":"preparing"}"#
        );
    }

    #[test]
    fn figures_without_a_bound_read_as_exact() {
        let figures: AttemptFigures = serde_json::from_str(
            r#"{"capacity":1,"bytes_written":2,"write_secs":0.0,"bytes_verified":0,
                "verify_secs":0.0,"read_back_sha256":null,"verify_method":null}"#,
        )
        .unwrap();
        assert_eq!(figures.bytes_written_bound, Bound::Exact);
        assert_eq!(
            serde_json::to_value(Bound::LowerBound).unwrap(),
            "lower_bound"
        );
        for bound in [Bound::Exact, Bound::LowerBound, Bound::Unknown] {
            assert_eq!(serde_json::to_value(bound).unwrap(), bound.as_str());
        }
    }

    #[test]
    fn only_interruptions_and_station_errors_are_the_stations_side() {
        let station = FailReason::StationError {
            detail: "Too many open files (os error 24)".into(),
        };
        assert!(station.is_station_side());
        assert!(FailReason::Interrupted.is_station_side());
        assert_eq!(station.code(), "station_error");
        assert!(station.to_string().contains("not judged"), "{station}");
        for stick in [
            FailReason::ReadOnly,
            FailReason::Unavailable { detail: "x".into() },
            FailReason::Removed {
                during: Stage::Writing,
            },
        ] {
            assert!(!stick.is_station_side(), "{stick}");
        }
    }

    #[test]
    fn stage_and_verify_method_texts_are_their_serde_names() {
        for stage in [
            Stage::Preparing,
            Stage::Writing,
            Stage::Flushing,
            Stage::Resetting,
            Stage::Verifying,
        ] {
            assert_eq!(serde_json::to_value(stage).unwrap(), stage.as_str());
            assert_eq!(stage.to_string(), stage.as_str());
            let back: Stage =
                serde_json::from_value(serde_json::Value::from(stage.as_str())).unwrap();
            assert_eq!(back, stage);
        }
        assert_eq!(Stage::Resetting.as_str(), "resetting");
        let failure: Failure = serde_json::from_str(
            r#"{"reason":"lost_after_reset","after_secs":30,"stage":"resetting"}"#,
        )
        .unwrap();
        assert_eq!(failure.stage, Stage::Resetting);
        assert!(serde_json::from_str::<Stage>(r#""reseting""#).is_err());
        for method in [
            VerifyMethod::None,
            VerifyMethod::Compare,
            VerifyMethod::Hash,
            VerifyMethod::Fingerprint,
            VerifyMethod::Sampled,
            VerifyMethod::Audit,
        ] {
            assert_eq!(serde_json::to_value(method).unwrap(), method.as_str());
        }
    }

    #[test]
    fn verify_modes_keep_the_spellings_of_the_api_and_the_records() {
        let spelled: Vec<&str> = VerifyMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(spelled, ["compare", "hash", "none"]);
        for &mode in VerifyMode::ALL {
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
            assert_eq!(
                serde_json::from_value::<VerifyMode>(mode.as_str().into()).unwrap(),
                mode
            );
            assert_eq!(mode.as_str().parse::<VerifyMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(VerifyMode::default(), VerifyMode::Compare);
        assert!("Compare".parse::<VerifyMode>().is_err());
    }

    #[test]
    fn codes_match_the_serde_tags() {
        let reasons = [
            FailReason::ReadOnly,
            FailReason::Interrupted,
            FailReason::Removed {
                during: Stage::Writing,
            },
            FailReason::TooSmall {
                capacity: ByteSize(1),
                needed: ByteSize(2),
            },
            FailReason::NoMedium,
            FailReason::ProbeError {
                operation: ProbeOperation::Flush,
                offset: None,
                detail: "Input/output error (os error 5)".into(),
            },
            FailReason::StationError {
                detail: "Too many open files".into(),
            },
            FailReason::LostAfterReset { after_secs: 20 },
            FailReason::ChangedAfterReset {
                detail: "serial A became B".into(),
            },
            FailReason::HeldByStuckIo { waited_secs: 30 },
        ];
        for r in reasons {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["reason"], r.code());
        }
    }

    #[test]
    fn failures_stored_before_the_new_reasons_still_read_back_unchanged() {
        // Records keep the failure as JSON: every earlier code must still parse
        // to the same value and serialize to the same JSON.
        let stored = [
            r#"{"reason":"too_small","capacity":0,"needed":2048,"stage":"preparing"}"#,
            r#"{"reason":"read_only","stage":"preparing"}"#,
            r#"{"reason":"capacity_lie","claimed":64,"first_bad_offset":0,"stage":"preparing"}"#,
            r#"{"reason":"write_error","offset":16777216,"detail":"Input/output error (os error 5)","stage":"writing"}"#,
            r#"{"reason":"flush_error","detail":"x","stage":"flushing"}"#,
            r#"{"reason":"read_error","offset":4096,"detail":"x","stage":"verifying"}"#,
            r#"{"reason":"verify_mismatch","offset":4096,"stage":"verifying"}"#,
            r#"{"reason":"removed","during":"writing","stage":"writing"}"#,
            r#"{"reason":"stalled","during":"verifying","offset":1,"after_secs":60,"stage":"verifying"}"#,
            r#"{"reason":"refused","detail":"x","stage":"preparing"}"#,
            r#"{"reason":"unavailable","detail":"x","stage":"preparing"}"#,
            r#"{"reason":"interrupted","stage":"writing"}"#,
        ];
        for json in stored {
            let failure: Failure = serde_json::from_str(json).unwrap();
            let again: serde_json::Value = serde_json::to_value(&failure).unwrap();
            assert_eq!(
                again,
                serde_json::from_str::<serde_json::Value>(json).unwrap()
            );
        }
    }

    #[test]
    fn a_probe_failure_says_it_was_the_probe_what_it_did_and_where() {
        let reason = FailReason::ProbeError {
            operation: ProbeOperation::Write,
            offset: Some(16_777_216),
            detail: "Input/output error (os error 5)".into(),
        };
        assert_eq!(reason.code(), "probe_error");
        assert_eq!(reason.offset(), Some(16_777_216));
        assert_eq!(
            reason.to_string(),
            "capacity probe failed: writing the marker at offset 16777216: \
             Input/output error (os error 5)"
        );
        let json = serde_json::to_value(&reason).unwrap();
        assert_eq!(json["operation"], "write");
        assert_eq!(json["offset"], 16_777_216);
        assert_eq!(serde_json::from_value::<FailReason>(json).unwrap(), reason);
    }

    #[test]
    fn a_capacity_lie_names_the_real_size_and_older_records_read_without_it() {
        let lie = FailReason::CapacityLie {
            claimed: ByteSize(64_000_000_000),
            first_bad_offset: 8_000_000_000,
            real_bytes: Some(ByteSize(8_000_000_000)),
        };
        assert_eq!(
            lie.to_string(),
            "capacity lie: claims 64 GB but stores only 8 GB (8000000000 bytes) \
             (loses data from offset 8000000000)"
        );
        let json = serde_json::to_value(&lie).unwrap();
        assert_eq!(json["real_bytes"], 8_000_000_000u64);
        assert_eq!(serde_json::from_value::<FailReason>(json).unwrap(), lie);
        let old: FailReason =
            serde_json::from_str(r#"{"reason":"capacity_lie","claimed":64,"first_bad_offset":0}"#)
                .unwrap();
        assert!(matches!(
            old,
            FailReason::CapacityLie {
                real_bytes: None,
                ..
            }
        ));
        assert!(!serde_json::to_string(&old).unwrap().contains("real_bytes"));
    }

    #[test]
    fn a_weaker_proof_is_never_called_a_plain_pass() {
        let sampled = AttemptFigures {
            verify_method: Some(VerifyMethod::Sampled),
            sample: Some(VerifySample {
                percent: 5.0,
                seed: 7,
                chunks_checked: 12,
                chunks_total: 200,
            }),
            ..AttemptFigures::default()
        };
        assert_eq!(sampled.pass_words(), "sampled (5 %)");
        let half = VerifySample {
            percent: 0.5,
            ..sampled.sample.unwrap()
        };
        assert_eq!(half.words(), "sampled (0.5 %)");
        let json = serde_json::to_value(&sampled).unwrap();
        assert_eq!(json["verify_method"], "sampled");
        assert_eq!(json["sample"]["seed"], 7);
        let audit = AttemptFigures {
            verify_method: Some(VerifyMethod::Audit),
            ..AttemptFigures::default()
        };
        assert_eq!(audit.pass_words(), "audit pass");
        let full = AttemptFigures {
            verify_method: Some(VerifyMethod::Compare),
            ..AttemptFigures::default()
        };
        assert_eq!(full.pass_words(), "pass");
        assert!(!serde_json::to_string(&full).unwrap().contains("sample"));
        // A sparse pass proved its map's ranges only: its share, rounded
        // down. Before, it was a plain `pass` in every report and label.
        let sparse = AttemptFigures {
            verify_method: Some(VerifyMethod::Compare),
            bytes_verified: 40_853_504,
            bytes_skipped: 227_581_952,
            ..AttemptFigures::default()
        };
        assert_eq!(sparse.pass_words(), "sparse (15.21 % checked)");
        let almost = AttemptFigures {
            bytes_verified: 999_999,
            bytes_skipped: 1,
            ..sparse
        };
        assert_eq!(almost.pass_words(), "sparse (99.99 % checked)");
        // A sample of a sparse run's ranges says both (before: "sampled
        // (5 %)", the map's skipped bytes said nowhere in the words).
        let sparse_sample = AttemptFigures {
            bytes_skipped: 55_021_568,
            ..sampled
        };
        assert_eq!(sparse_sample.pass_words(), "sparse, sampled (5 %)");
    }

    #[test]
    fn only_write_errors_and_stalls_while_writing_are_retried() {
        let stalled = |during| FailReason::Stalled {
            during,
            offset: 0,
            after_secs: 60,
        };
        for retried in [
            FailReason::WriteError {
                offset: 0,
                detail: "x".into(),
            },
            FailReason::FlushError { detail: "x".into() },
            FailReason::ProbeError {
                operation: ProbeOperation::Write,
                offset: Some(0),
                detail: "x".into(),
            },
            stalled(Stage::Writing),
        ] {
            assert!(retried.is_retryable(), "{retried}");
        }
        for never in [
            FailReason::CapacityLie {
                claimed: ByteSize(2),
                first_bad_offset: 1,
                real_bytes: Some(ByteSize(1)),
            },
            FailReason::ReadOnly,
            FailReason::TooSmall {
                capacity: ByteSize(1),
                needed: ByteSize(2),
            },
            FailReason::VerifyMismatch { offset: 0 },
            FailReason::Removed {
                during: Stage::Writing,
            },
            FailReason::Interrupted,
            stalled(Stage::Verifying),
            // Still held by its stuck I/O: only a pull frees it.
            FailReason::HeldByStuckIo { waited_secs: 30 },
        ] {
            assert!(!never.is_retryable(), "{never}");
        }
    }

    #[test]
    fn a_device_without_medium_is_not_called_too_small() {
        assert_eq!(FailReason::NoMedium.code(), "no_medium");
        assert_eq!(
            FailReason::NoMedium.to_string(),
            "no medium: the device reports a capacity of 0 bytes"
        );
    }
}
