//! Live progress of a fan-out: a bar per target on a terminal, plain lines
//! otherwise (logs, CI, pipes); the flash's notices in words.

use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use flashrack_app::flash::{FlashEvent, Notice};
use flashrack_core::{ByteSize, EngineEvent, EngineEventKind, Stage, TargetId};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

/// Shows what a flash sends on stderr until the channel closes.
pub async fn show(mut events: UnboundedReceiver<FlashEvent>, quiet: bool) {
    let mut view: Box<dyn View> = if quiet || !std::io::stderr().is_terminal() {
        Box::new(Lines {
            quiet,
            ..Lines::default()
        })
    } else {
        Box::new(Bars::default())
    };
    while let Some(event) = events.recv().await {
        match event {
            FlashEvent::Targets(targets) => view.targets(&targets),
            FlashEvent::Engine(event) => view.show(&event),
            FlashEvent::Notice(notice) => view.notice(&words(&notice)),
        }
    }
    view.finish();
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
    }
}

trait View: Send {
    fn targets(&mut self, _targets: &[TargetId]) {}
    fn show(&mut self, event: &EngineEvent);
    fn notice(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&mut self) {}
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<TargetId, ProgressBar>,
}

impl Default for Bars {
    fn default() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            bars: HashMap::new(),
        }
    }
}

impl View for Bars {
    fn targets(&mut self, targets: &[TargetId]) {
        let multi = &self.multi;
        let width = targets.iter().map(|t| t.0.len()).max().unwrap_or(8).min(32);
        // Sizes in flashrack's one notation (ByteSize), not indicatif's
        // binary units; rates in MB/s as everywhere else.
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:<{width}}} {{msg:<10}} [{{bar:30}}] {{done:>8}}/{{total:<8}} {{rate:>10}} {{eta:>4}}"
        ))
        .expect("valid template")
        .with_key("done", |state: &ProgressState, w: &mut dyn fmt::Write| {
            let _ = write!(w, "{}", ByteSize(state.pos()));
        })
        .with_key("total", |state: &ProgressState, w: &mut dyn fmt::Write| {
            let _ = write!(w, "{}", ByteSize(state.len().unwrap_or(0)));
        })
        .with_key("rate", |state: &ProgressState, w: &mut dyn fmt::Write| {
            let _ = write!(w, "{:.1} MB/s", state.per_sec() / 1e6);
        })
        .progress_chars("=> ");
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
            EngineEventKind::Progress { done, total, .. } => {
                bar.set_length(*total);
                bar.set_position(*done);
            }
            EngineEventKind::Finished { verdict, .. } => {
                bar.set_message(if verdict.is_pass() {
                    "passed"
                } else if flashrack_app::summary::is_interrupted(verdict) {
                    "interrupted"
                } else {
                    "FAILED"
                });
                bar.abandon();
            }
        }
    }

    fn notice(&mut self, text: &str) {
        // Above the bars, which are redrawn below it.
        if self.multi.println(text).is_err() {
            eprintln!("{text}");
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
            EngineEventKind::Stage { stage } => eprintln!("{target}: {stage}"),
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
                    eprintln!(
                        "{target}: {stage} {percent}% ({} of {}, {:.1} MB/s)",
                        ByteSize(*done),
                        ByteSize(*total),
                        bytes_per_sec / 1e6
                    );
                }
            }
            EngineEventKind::Finished { verdict, .. } => eprintln!("{target}: {verdict}"),
        }
    }
}
