//! The end-of-run summary: a table for people, JSON for programs.

use flashrack_core::{
    AttemptFigures, ByteSize, FailReason, RefusalCode, Sha256Digest, TargetId, Verdict,
};
use serde::Serialize;

/// One row of the summary.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The target as given.
    pub target: TargetId,
    /// `pass`, `fail`, or `interrupted` (stopped by a signal or a failure of
    /// the source: says nothing about the stick).
    pub verdict: &'static str,
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
    /// Builds the summary from the engine's verdicts.
    pub fn new(
        image_sha256: Sha256Digest,
        image_size: u64,
        elapsed_secs: f64,
        results: Vec<(TargetId, Verdict, AttemptFigures)>,
        finish_times: &std::collections::HashMap<TargetId, f64>,
    ) -> Self {
        let targets: Vec<Row> = results
            .into_iter()
            .map(|(target, verdict, figures)| {
                let failure = verdict.failure();
                let finished_after_secs = finish_times.get(&target).copied();
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
                    verdict: if verdict.is_pass() {
                        "pass"
                    } else if crate::progress::is_interrupted(&verdict) {
                        "interrupted"
                    } else {
                        "fail"
                    },
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
                    figures,
                }
            })
            .collect();
        let count = |verdict: &str| targets.iter().filter(|r| r.verdict == verdict).count();
        let (passed, interrupted) = (count("pass"), count("interrupted"));
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

    /// A plain-text table.
    pub fn table(&self) -> String {
        let header = [
            "TARGET",
            "SIZE",
            "VERDICT",
            "REASON",
            "WRITE MB/s",
            "VERIFY MB/s",
            "SHA256 READ BACK",
        ];
        let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
        for r in &self.targets {
            let speed = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
            rows.push([
                r.target.to_string(),
                r.figures.capacity.to_string(),
                r.verdict.to_uppercase(),
                r.detail.clone().unwrap_or_else(|| "-".into()),
                speed(r.write_mb_per_sec),
                speed(r.verify_mb_per_sec),
                r.figures
                    .read_back_sha256
                    .map_or("-".to_string(), |d| d.to_hex()),
            ]);
        }
        let mut out = crate::table::render(&rows);
        let interrupted = if self.interrupted > 0 {
            format!(", {} interrupted", self.interrupted)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} passed, {} failed{interrupted} in {:.1} s (image {} , {})\n",
            self.passed,
            self.failed,
            self.elapsed_secs,
            self.image_sha256.short(),
            ByteSize(self.image_size)
        ));
        out
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
