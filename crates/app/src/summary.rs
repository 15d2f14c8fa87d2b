//! The end of a one-shot flash: a row per target, as `flash --json` prints it
//! (the binary renders it as a table for people).

use flashrack_core::{AttemptFigures, FailReason, RefusalCode, Sha256Digest, TargetId, Verdict};
use serde::Serialize;

/// A target's verdict, as the summary counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetVerdict {
    /// Written and verified.
    Pass,
    /// The stick failed.
    Fail,
    /// The target guard refused it at the moment of opening: nothing was
    /// written, and the records count it as a refusal, not as a failure.
    Refused,
    /// Stopped by a signal or a failure of the source, or the station's own
    /// shortage (a station error): says nothing about the stick.
    Interrupted,
}

impl TargetVerdict {
    /// What the summary says of `verdict`, as the records count it (an
    /// attempt refused by the guard is a refusal, an interruption or a
    /// station error is interrupted: neither is a failure of the stick).
    pub fn of(verdict: &Verdict) -> Self {
        match verdict.failure() {
            None => Self::Pass,
            Some(f) if f.reason.is_station_side() => Self::Interrupted,
            Some(f) if matches!(f.reason, FailReason::Refused { .. }) => Self::Refused,
            Some(_) => Self::Fail,
        }
    }

    /// Its word in the JSON summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Refused => "refused",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Whether `verdict` is an interruption (which says nothing about the stick).
pub fn is_interrupted(verdict: &Verdict) -> bool {
    verdict
        .failure()
        .is_some_and(|f| matches!(f.reason, FailReason::Interrupted))
}

/// One row of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The target as given.
    pub target: TargetId,
    /// `pass`, `fail`, `refused` (by the target guard: nothing written), or
    /// `interrupted` (stopped by a signal or a failure of the source, or the
    /// station's own shortage: says nothing about the stick).
    pub verdict: TargetVerdict,
    /// For a pass, what it proved: `pass`, `sampled (5 %)`, `audit pass`,
    /// `written, not verified` (a weaker proof is never a plain `pass`).
    pub proof: Option<String>,
    /// Stable reason code on failure.
    pub reason: Option<&'static str>,
    /// The guard's reason code, when the target guard refused the target.
    pub refusal: Option<RefusalCode>,
    /// The reason for people.
    pub detail: Option<String>,
    /// Stage the failure happened in.
    pub stage: Option<flashrack_core::Stage>,
    /// Byte offset of the failure, where there is one.
    pub offset: Option<u64>,
    /// Measured figures.
    #[serde(flatten)]
    pub figures: AttemptFigures,
    /// Write speed, MB/s.
    pub write_mb_per_sec: Option<f64>,
    /// Verify speed, MB/s.
    pub verify_mb_per_sec: Option<f64>,
    /// Seconds from the start of the fan-out to this target's verdict.
    pub finished_after_secs: Option<f64>,
    /// Attempts made on this target: 1, plus the retries after failures
    /// that may pass when written again (`flash --retries`). Each is an
    /// attempt of its own in the records; the row is the last one's.
    pub attempts: u32,
}

/// What `flash --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The image's sha256; `null` when the flash stopped before its import
    /// ended (the image was never known).
    pub image_sha256: Option<Sha256Digest>,
    /// Image size in bytes.
    pub image_size: u64,
    /// Targets that passed.
    pub passed: usize,
    /// Targets that failed (refusals and interruptions not counted).
    pub failed: usize,
    /// Targets the target guard refused at the moment of opening (nothing
    /// written), counted as the records count them: apart from failures.
    pub refused: usize,
    /// Targets interrupted (by a signal, a failure of the source, or the
    /// station's own shortage of descriptors, memory or threads).
    pub interrupted: usize,
    /// Wall-clock seconds of the whole fan-out.
    pub elapsed_secs: f64,
    /// One row per target, in the order given.
    pub targets: Vec<Row>,
}

impl Summary {
    /// Builds the summary from the engine's verdicts (each target's last),
    /// with the retries made per target.
    pub fn new(
        image_sha256: Option<Sha256Digest>,
        image_size: u64,
        elapsed_secs: f64,
        results: Vec<(TargetId, Verdict, AttemptFigures)>,
        finish_times: &std::collections::HashMap<TargetId, f64>,
        retries_made: &std::collections::HashMap<TargetId, u32>,
    ) -> Self {
        let targets: Vec<Row> = results
            .into_iter()
            .map(|(target, verdict, figures)| {
                let failure = verdict.failure();
                let finished_after_secs = finish_times.get(&target).copied();
                let attempts = 1 + retries_made.get(&target).copied().unwrap_or(0);
                let detail = failure.map(|f| {
                    let mut detail = f.reason.to_string();
                    if let FailReason::Refused {
                        code: Some(RefusalCode::BusNotAllowed),
                        ..
                    } = f.reason
                    {
                        detail.push_str(&allow_bus_hint(&target));
                    }
                    detail
                });
                Row {
                    target,
                    verdict: TargetVerdict::of(&verdict),
                    proof: verdict.is_pass().then(|| figures.pass_words()),
                    reason: failure.map(|f| f.reason.code()),
                    refusal: match failure.map(|f| &f.reason) {
                        Some(FailReason::Refused { code, .. }) => *code,
                        _ => None,
                    },
                    detail,
                    stage: failure.map(|f| f.stage),
                    offset: failure.and_then(|f| f.reason.offset()),
                    write_mb_per_sec: figures.write_mb_per_sec(),
                    verify_mb_per_sec: figures.verify_mb_per_sec(),
                    finished_after_secs,
                    attempts,
                    figures,
                }
            })
            .collect();
        let count = |verdict| targets.iter().filter(|r| r.verdict == verdict).count();
        Self {
            image_sha256,
            image_size,
            passed: count(TargetVerdict::Pass),
            failed: count(TargetVerdict::Fail),
            refused: count(TargetVerdict::Refused),
            interrupted: count(TargetVerdict::Interrupted),
            elapsed_secs,
            targets,
        }
    }
}

/// How to write a target the guard refused for its bus anyway: the flag that
/// names the bus, which is read again from sysfs (the refusal carries its code
/// and words; the flag is the command line's business).
fn allow_bus_hint(target: &TargetId) -> String {
    let bus = flashrack_guard::DiskFacts::inspect(std::path::Path::new(&target.0))
        .ok()
        .and_then(|facts| facts.bus);
    match bus {
        Some(bus) => format!(" (to write it anyway: --allow-bus {bus})"),
        None => " (to write it anyway: --allow-bus <bus>)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flashrack_core::{Failure, Stage};

    use super::*;

    fn failed(reason: FailReason) -> Verdict {
        Verdict::Fail(Failure {
            stage: Stage::Preparing,
            reason,
        })
    }

    #[test]
    fn refusals_and_station_errors_are_counted_as_the_records_count_them() {
        let results = [
            ("a", Verdict::Pass),
            (
                "b",
                failed(FailReason::WriteError {
                    offset: 0,
                    detail: "Input/output error".into(),
                }),
            ),
            (
                "c",
                failed(FailReason::Refused {
                    code: Some(RefusalCode::Mounted),
                    detail: "c is mounted at /mnt".into(),
                }),
            ),
            (
                "d",
                failed(FailReason::StationError {
                    detail: "Too many open files".into(),
                }),
            ),
            ("e", failed(FailReason::Interrupted)),
        ]
        .into_iter()
        .map(|(t, v)| (TargetId(t.into()), v, AttemptFigures::default()))
        .collect();
        let summary = Summary::new(
            Some(Sha256Digest::of(b"")),
            0,
            1.0,
            results,
            &HashMap::new(),
            &HashMap::new(),
        );
        assert_eq!(
            (
                summary.passed,
                summary.failed,
                summary.refused,
                summary.interrupted
            ),
            (1, 1, 1, 2),
            "{summary:?}"
        );
        let verdicts: Vec<_> = summary.targets.iter().map(|r| r.verdict.as_str()).collect();
        assert_eq!(
            verdicts,
            ["pass", "fail", "refused", "interrupted", "interrupted"]
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["refused"], 1, "{json:#}");
        assert_eq!(json["targets"][2]["verdict"], "refused", "{json:#}");
        assert_eq!(json["targets"][2]["refusal"], "mounted", "{json:#}");
    }
}
