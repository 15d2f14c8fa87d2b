//! `flashrack ports learn`: the operator plugs a stick into each port in turn
//! and names it (see `flashrack_app::ports`); here, the questions and answers.
//!
//! Standard input is read on a thread of its own from the start, so that
//! `done` or the end of input (Ctrl-D) ends learning at any prompt: while
//! waiting for a stick as well as at a label prompt.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flashrack_app::ports::{Learning, PortLearner, RackWatch};
use tokio::sync::mpsc;

/// What the operator typed: a line, or the end of input.
enum Typed {
    Line(String),
    End,
}

/// Lines of standard input, read on their own thread (a blocking read that
/// nothing else waits on: the thread ends with the process).
fn typed_lines() -> mpsc::UnboundedReceiver<Typed> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Typed::End);
                    return;
                }
                Ok(_) => {
                    if tx.send(Typed::Line(line.trim().to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Whether a typed line (or the end of input) ends learning.
fn finishes(typed: &Typed) -> bool {
    match typed {
        Typed::End => true,
        Typed::Line(line) => line.eq_ignore_ascii_case("done"),
    }
}

/// Runs the interactive loop until `done`, the end of input, or the end of
/// the hotplug source.
pub async fn learn(config_path: &Path) -> Result<ExitCode> {
    let mut learner = PortLearner::open(config_path)?;
    let mut watch = RackWatch::udev();
    let mut typed = typed_lines();
    outln!(
        "flashrack ports learn: {} port(s) mapped in {}",
        learner.ports().len(),
        config_path.display()
    )?;
    loop {
        let event = tokio::select! {
            event = watch.events.recv() => match event {
                Some(event) => event,
                None => break,
            },
            line = typed.recv() => {
                let line = line.unwrap_or(Typed::End);
                if finishes(&line) {
                    break;
                }
                outln!("waiting for a stick ('done' or Ctrl-D to finish)")?;
                continue;
            }
        };
        match learner.on_hotplug(&event) {
            Learning::Nothing => {}
            Learning::Ready => {
                outln!("plug a stick into the next port ('done' or Ctrl-D to finish)…")?;
            }
            Learning::NoPortPath { kernel_name } => {
                outln!("{kernel_name}: no port path (ID_PATH); cannot be mapped")?;
            }
            Learning::AlreadyMapped { label } => {
                outln!("that port is already mapped as {label}")?;
            }
            Learning::NewPort { path, suggestion } => {
                out!("stick in {path}\n  label [{suggestion}]: ")?;
                // Asked again until a label will do: a label refused left
                // the stick unmapped, and the next lines typed went to
                // "waiting for a stick".
                let mut finished = false;
                loop {
                    let line = typed.recv().await.unwrap_or(Typed::End);
                    if finishes(&line) {
                        outln!()?;
                        finished = true;
                        break;
                    }
                    let Typed::Line(line) = line else {
                        finished = true;
                        break;
                    };
                    let label = if line.is_empty() {
                        suggestion.clone()
                    } else {
                        line
                    };
                    let taken = learner
                        .ports()
                        .iter()
                        .find(|p| p.label.eq_ignore_ascii_case(&label))
                        .map(|p| format!("port {} is labelled so already", p.label));
                    if let Some(problem) = flashrack_config::port_label_problem(&label).or(taken) {
                        out!("  {problem}; label [{suggestion}]: ")?;
                        continue;
                    }
                    match learner.map(path.clone(), label.clone()) {
                        Ok(()) => outln!(
                            "  mapped {label}; unplug it and plug a stick into the next port"
                        )?,
                        Err(error) => outln!("  not mapped: {error}")?,
                    }
                    break;
                }
                if finished {
                    break;
                }
            }
        }
    }
    drop(watch);
    outln!(
        "{} port(s) mapped in {}:",
        learner.ports().len(),
        config_path.display()
    )?;
    // In label order, as the file holds them.
    for port in learner.ports() {
        let place = port.position.map_or(String::new(), |(row, column)| {
            format!("  (row {}, column {})", row + 1, column + 1)
        });
        outln!("  {:<6} {}{place}", port.label, port.path)?;
    }
    Ok(ExitCode::SUCCESS)
}
