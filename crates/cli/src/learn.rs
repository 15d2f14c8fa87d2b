//! `flashrack ports learn`: build the port map by plugging a stick into each port
//! in turn and naming it. Sticks present when learning starts are ignored; each
//! newly plugged stick's physical port path (udev `ID_PATH`) is mapped to the
//! label the operator types, and the configuration file is rewritten (comments
//! kept) after every port, so nothing is lost if learning is interrupted.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flashrack_config::{write_port_map, PortConfig, StationConfig};
use flashrack_hardware::udev::UdevSource;
use flashrack_hotplug::{Hotplug, HotplugSource, StopSignal};

/// Runs the interactive loop (blocking: call it off the async workers).
pub fn learn(config_path: &Path) -> Result<ExitCode> {
    let mut ports = match StationConfig::load(config_path) {
        Ok(config) => config.ports,
        Err(flashrack_config::ConfigError::Read { .. }) if !config_path.exists() => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = StopSignal::new();
    let watcher = std::thread::spawn({
        let stop = stop.clone();
        move || Box::new(UdevSource::new()).run(tx, stop)
    });
    let mut stdin = std::io::stdin().lock();
    let mut enumerated = false;
    println!(
        "flashrack ports learn: {} port(s) mapped in {}",
        ports.len(),
        config_path.display()
    );
    while let Some(event) = rx.blocking_recv() {
        match event {
            Hotplug::Enumerated => {
                enumerated = true;
                println!("plug a stick into the next port (Ctrl-D or 'done' to finish)…");
            }
            Hotplug::Added(device) if enumerated => {
                let Some(path) = device.port_path.clone() else {
                    println!(
                        "{}: no port path (ID_PATH); cannot be mapped",
                        device.kernel_name
                    );
                    continue;
                };
                if let Some(existing) = ports.iter().find(|p| p.path == path) {
                    println!("that port is already mapped as {}", existing.label);
                    continue;
                }
                let suggestion = next_label(&ports);
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
                let mut candidate = ports.clone();
                candidate.push(PortConfig {
                    label: label.clone(),
                    path,
                    position: None,
                });
                match write_port_map(config_path, &candidate) {
                    Ok(()) => {
                        ports = candidate;
                        println!("  mapped {label}; unplug it and plug a stick into the next port");
                    }
                    Err(error) => println!("  not mapped: {error}"),
                }
            }
            _ => {}
        }
    }
    stop.stop();
    let _ = watcher.join();
    println!(
        "{} port(s) mapped in {}",
        ports.len(),
        config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The label after the last one: A1 → A2, B9 → B10, else P<n+1>.
fn next_label(ports: &[PortConfig]) -> String {
    let Some(last) = ports.last() else {
        return "A1".into();
    };
    let prefix = last.label.trim_end_matches(|c: char| c.is_ascii_digit());
    match last.label[prefix.len()..].parse::<u32>() {
        Ok(n) => format!("{prefix}{}", n + 1),
        Err(_) => format!("P{}", ports.len() + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(label: &str) -> PortConfig {
        PortConfig {
            label: label.into(),
            path: format!("p-{label}"),
            position: None,
        }
    }

    #[test]
    fn labels_count_up_from_the_last_one() {
        assert_eq!(next_label(&[]), "A1");
        assert_eq!(next_label(&[port("A1")]), "A2");
        assert_eq!(next_label(&[port("A1"), port("B9")]), "B10");
        assert_eq!(next_label(&[port("front")]), "P2");
    }
}
