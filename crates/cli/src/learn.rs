//! `flashrack ports learn`: the operator plugs a stick into each port in turn
//! and names it (see `flashrack_app::ports`); here, the questions and answers.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flashrack_app::ports::{Learning, PortLearner, RackWatch};

/// Runs the interactive loop (blocking: call it off the async workers).
pub fn learn(config_path: &Path) -> Result<ExitCode> {
    let mut learner = PortLearner::open(config_path)?;
    let mut watch = RackWatch::udev();
    let mut stdin = std::io::stdin().lock();
    println!(
        "flashrack ports learn: {} port(s) mapped in {}",
        learner.ports().len(),
        config_path.display()
    );
    while let Some(event) = watch.events.blocking_recv() {
        match learner.on_hotplug(&event) {
            Learning::Nothing => {}
            Learning::Ready => {
                println!("plug a stick into the next port (Ctrl-D or 'done' to finish)…");
            }
            Learning::NoPortPath { kernel_name } => {
                println!("{kernel_name}: no port path (ID_PATH); cannot be mapped");
            }
            Learning::AlreadyMapped { label } => {
                println!("that port is already mapped as {label}");
            }
            Learning::NewPort { path, suggestion } => {
                print!("stick in {path}\n  label [{suggestion}]: ");
                std::io::stdout().flush()?;
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 || line.trim() == "done" {
                    break;
                }
                let label = if line.trim().is_empty() {
                    suggestion
                } else {
                    line.trim().to_string()
                };
                match learner.map(path, label.clone()) {
                    Ok(()) => {
                        println!("  mapped {label}; unplug it and plug a stick into the next port")
                    }
                    Err(error) => println!("  not mapped: {error}"),
                }
            }
        }
    }
    drop(watch);
    println!(
        "{} port(s) mapped in {}",
        learner.ports().len(),
        config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
