//! Live progress of a fan-out: a bar per target on a terminal, plain lines
//! otherwise (logs, CI, pipes); the flash's notices in words.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use flashrack_app::flash::{FlashEvent, Notice};
use flashrack_app::summary::{Summary, TargetVerdict};
use flashrack_core::{
    ByteSize, EngineEvent, EngineEventKind, FailReason, Stage, TargetId, Verdict,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

/// Shows what a flash sends on stderr until the channel closes; gives the
/// summary of a flash that ended with an error after its attempts were
/// recorded ([`FlashEvent::Unfinished`]), for the caller to print.
pub async fn show(mut events: UnboundedReceiver<FlashEvent>, quiet: bool) -> Option<Box<Summary>> {
    let mut view: Box<dyn View> = if quiet || !std::io::stderr().is_terminal() {
        Box::new(Lines {
            quiet,
            ..Lines::default()
        })
    } else {
        Box::new(Bars::default())
    };
    let mut download = DownloadLines::default();
    let mut unfinished = None;
    while let Some(event) = events.recv().await {
        match event {
            FlashEvent::Unfinished(summary) => unfinished = Some(summary),
            FlashEvent::Download(progress) => {
                if let Some(line) = download.line(&progress).filter(|_| !quiet) {
                    view.notice(&line);
                }
            }
            FlashEvent::Targets(targets) => view.targets(&targets),
            FlashEvent::Engine(event) => view.show(&event),
            // The end of an import the targets followed is progress, not a
            // notice: not shown with --quiet.
            FlashEvent::Notice(Notice::Imported { .. }) if quiet => {}
            FlashEvent::Notice(notice) => view.notice(&words(&notice)),
        }
    }
    view.finish();
    unfinished
}

/// The download of a flash of a URL in a few lines: where a resumed one
/// resumed, then each tenth of a declared length.
#[derive(Default)]
struct DownloadLines {
    said_resume: bool,
    last_tenth: u64,
}

impl DownloadLines {
    fn line(&mut self, p: &flashrack_app::downloads::Progress) -> Option<String> {
        if p.resumed_from > 0 && !self.said_resume {
            self.said_resume = true;
            return Some(format!(
                "resuming a partial download at {}",
                ByteSize(p.resumed_from)
            ));
        }
        let total = p.total.filter(|t| *t > 0)?;
        let tenth = p.held.saturating_mul(10) / total;
        if tenth <= self.last_tenth {
            return None;
        }
        self.last_tenth = tenth;
        Some(format!(
            "downloaded {} of {}",
            ByteSize(p.held),
            ByteSize(total)
        ))
    }
}

/// A notice for the operator (shown even with `--quiet`).
fn words(notice: &Notice) -> String {
    match notice {
        Notice::Recovered(recovered) => crate::cli::recovered_words(*recovered),
        Notice::Stopping { signal, grace } => format!(
            "{}: stopping every target at its next safe point (up to {} s; \
             signal again to stop at once)",
            signal.name(),
            grace.as_secs()
        ),
        Notice::NotWaitingLonger(signal) => {
            format!("{}: not waiting any longer", signal.name())
        }
        Notice::GraceOver => "the stop's grace is over: the targets still running are \
                              recorded as interrupted and abandoned"
            .to_string(),
        Notice::Retrying {
            target,
            failure,
            attempt,
            of,
        } => format!("{target}: {failure}; writing it again (attempt {attempt} of {of})"),
        Notice::Imported { sha256, size } => format!(
            "imported {} ({}): the targets read back now",
            sha256.short(),
            ByteSize(*size)
        ),
    }
}

trait View: Send {
    fn targets(&mut self, _targets: &[TargetId]) {}
    fn show(&mut self, event: &EngineEvent);
    fn notice(&mut self, text: &str) {
        errln!("{text}");
    }
    fn finish(&mut self) {}
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<TargetId, ProgressBar>,
    /// The width target names are padded to, so that the bars line up.
    width: usize,
}

impl Default for Bars {
    fn default() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            bars: HashMap::new(),
            width: 8,
        }
    }
}

/// The widest a target's name is shown in the bars (longer names are cut).
const MAX_NAME: usize = 24;

/// A bar's template: the target, its stage, the bar (as wide as the terminal
/// leaves), then how far and how fast in the summary's units (`ByteSize`:
/// KiB/MiB/GiB, speeds in MB/s). `wide_bar` keeps every line within the
/// terminal's width: a line that wrapped would leave a ghost line behind at
/// each redraw.
fn bar_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{prefix:<{width}!}} {{msg:<9!}} [{{wide_bar}}] {{done_of_total:>21}} {{rate:>10}}"
    ))
    .expect("valid template")
    .with_key(
        "done_of_total",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(
                w,
                "{}/{}",
                ByteSize(state.pos()),
                ByteSize(state.len().unwrap_or(0))
            );
        },
    )
    .with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", rate_words(state.per_sec()));
        },
    )
    .progress_chars("=> ")
}

/// A target that has its verdict: no bar, the verdict in words at once (a
/// failure with its reason, not a bar reading `0 B/0 B`).
fn done_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{{prefix:<{width}!}} {{wide_msg}}"))
        .expect("valid template")
}

/// A speed as the summary and the JSON give it: MB/s, 10^6 bytes a second.
pub fn rate_words(bytes_per_sec: f64) -> String {
    format!("{:.1} MB/s", bytes_per_sec / 1e6)
}

/// What a finished target's line says: `passed`, `interrupted (…)`,
/// `REFUSED …` or `FAILED while …: <reason>`, as the summary counts it.
pub fn verdict_words(verdict: &Verdict) -> String {
    let Some(failure) = verdict.failure() else {
        return "passed".to_string();
    };
    match TargetVerdict::of(verdict) {
        TargetVerdict::Interrupted if flashrack_app::summary::is_interrupted(verdict) => {
            format!("interrupted ({})", failure.stage)
        }
        // The station's own shortage: not judged, and not a failure.
        TargetVerdict::Interrupted => {
            format!("not judged while {}: {}", failure.stage, failure.reason)
        }
        TargetVerdict::Refused => match &failure.reason {
            FailReason::Refused { detail, .. } => {
                format!("REFUSED by the target guard, nothing written: {detail}")
            }
            other => format!("REFUSED, nothing written: {other}"),
        },
        TargetVerdict::Pass | TargetVerdict::Fail => {
            format!("FAILED while {}: {}", failure.stage, failure.reason)
        }
    }
}

impl View for Bars {
    fn targets(&mut self, targets: &[TargetId]) {
        let multi = &self.multi;
        self.width = targets
            .iter()
            .map(|t| t.0.chars().count())
            .max()
            .unwrap_or(8)
            .min(MAX_NAME);
        let style = bar_style(self.width);
        self.bars = targets
            .iter()
            .map(|t| {
                let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(t.0.clone());
                bar.set_message("waiting");
                (t.clone(), bar)
            })
            .collect();
    }

    fn show(&mut self, event: &EngineEvent) {
        let Some(bar) = self.bars.get(&event.target) else {
            return;
        };
        match &event.kind {
            EngineEventKind::Stage { stage } => {
                bar.set_message(stage.to_string());
                bar.set_position(0);
                bar.reset_eta();
            }
            EngineEventKind::Resetting => {
                bar.set_message("resetting");
                bar.set_position(0);
            }
            EngineEventKind::Progress { done, total, .. } => {
                bar.set_length(*total);
                bar.set_position(*done);
            }
            EngineEventKind::Finished { verdict, .. } => {
                bar.set_style(done_style(self.width));
                bar.abandon_with_message(verdict_words(verdict));
            }
        }
    }

    fn notice(&mut self, text: &str) {
        // Above the bars, which are redrawn below it.
        if self.multi.println(text).is_err() {
            errln!("{text}");
        }
    }

    fn finish(&mut self) {
        let _ = self.multi.clear();
    }
}

/// Plain lines: stage changes and verdicts always, progress every few
/// seconds; with `quiet`, nothing but notices.
#[derive(Default)]
struct Lines {
    quiet: bool,
    last_progress: HashMap<TargetId, Instant>,
}

impl View for Lines {
    fn show(&mut self, event: &EngineEvent) {
        if self.quiet {
            return;
        }
        let target = &event.target;
        match &event.kind {
            EngineEventKind::Stage { stage } => errln!("{target}: {stage}"),
            EngineEventKind::Resetting => errln!("{target}: resetting"),
            EngineEventKind::Progress {
                stage,
                done,
                total,
                bytes_per_sec,
            } => {
                let now = Instant::now();
                let due = self
                    .last_progress
                    .get(target)
                    .is_none_or(|t| now - *t >= Duration::from_secs(2));
                if due && *stage != Stage::Preparing {
                    self.last_progress.insert(target.clone(), now);
                    let percent = (*done * 100).checked_div(*total).unwrap_or(0);
                    errln!(
                        "{target}: {stage} {percent}% ({} of {}, {})",
                        ByteSize(*done),
                        ByteSize(*total),
                        rate_words(*bytes_per_sec)
                    );
                }
            }
            EngineEventKind::Finished { verdict, .. } => {
                errln!("{target}: {}", verdict_words(verdict))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flashrack_core::Failure;

    use super::*;

    #[test]
    fn a_failed_target_says_its_reason_and_stage_not_a_bar() {
        let verdict = Verdict::Fail(Failure {
            stage: Stage::Writing,
            reason: FailReason::WriteError {
                offset: 4096,
                detail: "Input/output error".into(),
            },
        });
        let words = verdict_words(&verdict);
        assert!(words.starts_with("FAILED while writing: "), "{words}");
        assert!(words.contains("4096"), "{words}");
    }

    #[test]
    fn speeds_are_in_the_summarys_megabytes_a_second() {
        assert_eq!(rate_words(12_345_678.0), "12.3 MB/s");
    }
}
