//! Live progress of a fan-out: a bar per target on a terminal, plain lines
//! otherwise (logs, CI, pipes).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use flashrack_core::{ByteSize, EngineEvent, EngineEventKind, Stage, TargetId};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the live view is given to show.
pub enum Shown {
    /// An engine event (a verdict only once it is recorded).
    Event(EngineEvent),
    /// A line for the operator (shown even with `--quiet`): what the command
    /// is doing about a signal, for instance.
    Notice(String),
}

/// Consumes what to show until the channel closes, showing it on stderr, and
/// returns when each target finished, in seconds after `started`.
pub async fn show(
    mut events: UnboundedReceiver<Shown>,
    targets: Vec<TargetId>,
    quiet: bool,
    started: Instant,
) -> HashMap<TargetId, f64> {
    let mut finished = HashMap::new();
    let mut view: Box<dyn View> = if quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars::new(&targets))
    } else {
        Box::new(Lines::default())
    };
    while let Some(shown) = events.recv().await {
        let event = match shown {
            Shown::Event(event) => event,
            Shown::Notice(text) => {
                view.notice(&text);
                continue;
            }
        };
        if let EngineEventKind::Finished { .. } = event.kind {
            finished.insert(event.target.clone(), started.elapsed().as_secs_f64());
        }
        view.show(&event);
    }
    view.finish();
    finished
}

trait View: Send {
    fn show(&mut self, event: &EngineEvent);
    fn notice(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&mut self) {}
}

struct Silent;
impl View for Silent {
    fn show(&mut self, _: &EngineEvent) {}
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<TargetId, ProgressBar>,
}

impl Bars {
    fn new(targets: &[TargetId]) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let width = targets.iter().map(|t| t.0.len()).max().unwrap_or(8).min(32);
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:<{width}}} {{msg:<10}} [{{bar:30}}] {{bytes:>10}}/{{total_bytes:<10}} {{bytes_per_sec:>12}} {{eta:>4}}"
        ))
        .expect("valid template")
        .progress_chars("=> ");
        let bars = targets
            .iter()
            .map(|t| {
                let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(t.0.clone());
                bar.set_message("waiting");
                (t.clone(), bar)
            })
            .collect();
        Self { multi, bars }
    }
}

impl View for Bars {
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
                } else if is_interrupted(verdict) {
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

/// Plain lines: stage changes and verdicts always, progress every few seconds.
#[derive(Default)]
struct Lines {
    last_progress: HashMap<TargetId, Instant>,
}

impl View for Lines {
    fn show(&mut self, event: &EngineEvent) {
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

/// Whether `verdict` is an interruption (which says nothing about the stick).
pub fn is_interrupted(verdict: &flashrack_core::Verdict) -> bool {
    verdict
        .failure()
        .is_some_and(|f| matches!(f.reason, flashrack_core::FailReason::Interrupted))
}
