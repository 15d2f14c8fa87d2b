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
    /// The stick failed (or the guard refused it).
    Fail,
    /// Stopped by a signal or a failure of the source: says nothing about the
    /// stick.
    Interrupted,
}

impl TargetVerdict {
    /// What the summary says of `verdict`.
    pub fn of(verdict: &Verdict) -> Self {
        if verdict.is_pass() {
            Self::Pass
        } else if is_interrupted(verdict) {
            Self::Interrupted
        } else {
            Self::Fail
        }
    }

    /// Its word in the JSON summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
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
#[derive(Debug, Serialize)]
pub struct Row {
    /// The target as given.
    pub target: TargetId,
    /// `pass`, `fail`, or `interrupted` (stopped by a signal or a failure of
    /// the source: says nothing about the stick).
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
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The image's sha256.
    pub image_sha256: Sha256Digest,
    /// Image size in bytes.
    pub image_size: u64,
    /// Targets that passed.
    pub passed: usize,
    /// Targets that failed.
    pub failed: usize,
    /// Targets interrupted (by a signal, or a failure of the source).
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
        image_sha256: Sha256Digest,
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
        let (passed, interrupted) = (
            count(TargetVerdict::Pass),
            count(TargetVerdict::Interrupted),
        );
        Self {
            image_sha256,
            image_size,
            passed,
            failed: targets.len() - passed - interrupted,
            interrupted,
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
