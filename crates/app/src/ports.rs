//! Learning the port map (`flashrack ports learn`): a stick is plugged into
//! each port in turn and named. Sticks present when learning starts are
//! ignored; each newly plugged stick's physical port path (udev `ID_PATH`) is
//! mapped to the label the operator gives, and the configuration file is
//! rewritten (comments kept) after every port, so nothing is lost if learning
//! is interrupted.
//!
//! [`PortLearner`] holds the logic; the binary asks the operator and prints.

use std::path::{Path, PathBuf};

use flashrack_config::{write_port_map, ConfigError, PortConfig, StationConfig};
use flashrack_hardware::udev::UdevSource;
use flashrack_hotplug::{Hotplug, HotplugError, HotplugSource, StopSignal};
use tokio::sync::mpsc;

use crate::AppError;

/// What a hotplug event means while learning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learning {
    /// Nothing to do (a stick that was there before, a removal, a change).
    Nothing,
    /// Every stick present at the start has been seen: the operator may plug
    /// a stick into the next port.
    Ready,
    /// A stick without a port path (`ID_PATH`): it cannot be mapped.
    NoPortPath {
        /// Its kernel name.
        kernel_name: String,
    },
    /// A stick in a port that is mapped already.
    AlreadyMapped {
        /// The port's label.
        label: String,
    },
    /// A stick in a new port: ask the operator for its label.
    NewPort {
        /// The port's path.
        path: String,
        /// The label to suggest: the one after the last.
        suggestion: String,
    },
}

/// The port map being learnt, and the configuration file it is written to.
#[derive(Debug)]
pub struct PortLearner {
    config_path: PathBuf,
    ports: Vec<PortConfig>,
    /// Whether the sticks present at the start have all been reported.
    enumerated: bool,
}

impl PortLearner {
    /// Starts from the ports `config_path` maps (none when it does not exist
    /// yet: it is created from the example when the first port is mapped).
    pub fn open(config_path: &Path) -> Result<Self, AppError> {
        let ports = match StationConfig::load(config_path) {
            Ok(config) => config.ports,
            Err(ConfigError::Read { .. }) if !config_path.exists() => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        Ok(Self {
            config_path: config_path.to_path_buf(),
            ports,
            enumerated: false,
        })
    }

    /// The ports mapped so far.
    pub fn ports(&self) -> &[PortConfig] {
        &self.ports
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// What `event` means.
    pub fn on_hotplug(&mut self, event: &Hotplug) -> Learning {
        match event {
            Hotplug::Enumerated => {
                self.enumerated = true;
                Learning::Ready
            }
            Hotplug::Added(device) if self.enumerated => {
                let Some(path) = device.port_path.clone() else {
                    return Learning::NoPortPath {
                        kernel_name: device.kernel_name.clone(),
                    };
                };
                if let Some(existing) = self.ports.iter().find(|p| p.path == path) {
                    return Learning::AlreadyMapped {
                        label: existing.label.clone(),
                    };
                }
                Learning::NewPort {
                    path,
                    suggestion: next_label(&self.ports),
                }
            }
            _ => Learning::Nothing,
        }
    }

    /// Maps `path` as `label` and writes the configuration file; on an error
    /// (a label or path taken, a file that cannot be written) nothing changes.
    pub fn map(&mut self, path: String, label: String) -> Result<(), ConfigError> {
        let mut candidate = self.ports.clone();
        candidate.push(PortConfig {
            label,
            path,
            position: None,
        });
        write_port_map(&self.config_path, &candidate)?;
        self.ports = candidate;
        Ok(())
    }
}

/// The real rack's hotplug events on a thread of their own, until dropped.
pub struct RackWatch {
    /// The events.
    pub events: mpsc::UnboundedReceiver<Hotplug>,
    stop: StopSignal,
    thread: Option<std::thread::JoinHandle<Result<(), HotplugError>>>,
}

impl RackWatch {
    /// Starts watching udev.
    pub fn udev() -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = StopSignal::new();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || Box::new(UdevSource::new()).run(tx, stop)
        });
        Self {
            events,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RackWatch {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The label after the last one: A1 → A2, B9 → B10, else P<n+1>.
pub fn next_label(ports: &[PortConfig]) -> String {
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
    use flashrack_hotplug::{DeviceIdentity, PluggedDevice};

    use super::*;

    fn port(label: &str) -> PortConfig {
        PortConfig {
            label: label.into(),
            path: format!("p-{label}"),
            position: None,
        }
    }

    fn stick(kernel_name: &str, port_path: Option<&str>) -> Hotplug {
        Hotplug::Added(PluggedDevice {
            kernel_name: kernel_name.into(),
            dev_path: format!("/dev/{kernel_name}").into(),
            port_path: port_path.map(String::from),
            bus: Some("usb".into()),
            identity: DeviceIdentity::default(),
            removable: true,
            read_only: false,
            disk: None,
        })
    }

    #[test]
    fn labels_count_up_from_the_last_one() {
        assert_eq!(next_label(&[]), "A1");
        assert_eq!(next_label(&[port("A1")]), "A2");
        assert_eq!(next_label(&[port("A1"), port("B9")]), "B10");
        assert_eq!(next_label(&[port("front")]), "P2");
    }

    #[test]
    fn sticks_present_at_the_start_are_ignored_and_each_new_port_is_mapped_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("station.toml");
        let mut learner = PortLearner::open(&config).unwrap();
        assert_eq!(
            learner.on_hotplug(&stick("sda", Some("pci-0:1"))),
            Learning::Nothing,
            "present before learning began"
        );
        assert_eq!(learner.on_hotplug(&Hotplug::Enumerated), Learning::Ready);
        assert_eq!(
            learner.on_hotplug(&stick("sdb", None)),
            Learning::NoPortPath {
                kernel_name: "sdb".into()
            }
        );
        assert_eq!(
            learner.on_hotplug(&stick("sdc", Some("pci-0:2"))),
            Learning::NewPort {
                path: "pci-0:2".into(),
                suggestion: "A1".into()
            }
        );
        learner.map("pci-0:2".into(), "A1".into()).unwrap();
        assert_eq!(
            learner.on_hotplug(&stick("sdc", Some("pci-0:2"))),
            Learning::AlreadyMapped { label: "A1".into() }
        );
        assert_eq!(
            learner.on_hotplug(&stick("sdd", Some("pci-0:3"))),
            Learning::NewPort {
                path: "pci-0:3".into(),
                suggestion: "A2".into()
            }
        );
        // Written as it goes: the file maps what was learnt.
        let written = StationConfig::load(&config).unwrap();
        assert_eq!(written.ports.len(), 1);
        assert_eq!(
            (
                written.ports[0].label.as_str(),
                written.ports[0].path.as_str()
            ),
            ("A1", "pci-0:2")
        );
    }
}
