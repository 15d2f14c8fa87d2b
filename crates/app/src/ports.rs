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
        /// The label to suggest: from the port's physical place (its hub is a
        /// row letter, its number on the hub the number: port 4 of the first
        /// hub is A4), whatever order the sticks are plugged in.
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
    /// yet: it is created from the example when the first port is mapped; none
    /// either when it still holds the example's made-up ports, which are
    /// replaced by the learnt ones).
    pub fn open(config_path: &Path) -> Result<Self, AppError> {
        let ports = match StationConfig::load(config_path) {
            Ok(config) if config.ports == StationConfig::example().ports => Vec::new(),
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
                    suggestion: suggest_label(&self.ports, &path),
                    path,
                }
            }
            _ => Learning::Nothing,
        }
    }

    /// Maps `path` as `label` and writes the configuration file: the ports
    /// in label order (A2 before A10, rows by letter), each with its grid
    /// position when its label is a row letter and a number (B3: row 1,
    /// column 2). On an error (a label or path taken, a file that cannot be
    /// written) nothing changes.
    pub fn map(&mut self, path: String, label: String) -> Result<(), ConfigError> {
        let mut candidate = self.ports.clone();
        candidate.push(PortConfig {
            position: grid_position(&label),
            label,
            path,
            master: false,
        });
        candidate.sort_by_key(|p| label_order(&p.label));
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

/// Where a USB port sits: its hub (the port path up to the hub: a row) and
/// its number on that hub. `pci-0000:00:14.0-usb-0:1.4:1.0-scsi-0:0:0:0` is
/// port 4 of hub `pci-0000:00:14.0-usb-0:1`; `…-usb-0:3:1.0-…` is port 3 of
/// the root hub. `None` for a path that names no USB port.
pub fn usb_place(path: &str) -> Option<(String, u32)> {
    let at = path.find("usb-")?;
    let rest = &path[at + "usb-".len()..];
    let mut fields = rest.split([':', '-']);
    let bus = fields.next()?;
    let chain = fields.next()?;
    let (hub, port) = match chain.rsplit_once('.') {
        Some((hub, port)) => (format!("{}usb-{bus}:{hub}", &path[..at]), port),
        None => (format!("{}usb-{bus}", &path[..at]), chain),
    };
    Some((hub, port.parse().ok()?))
}

/// A label's row letter and number (`B12` → (1, 12)), when it has that shape.
fn letter_and_number(label: &str) -> Option<(u32, u32)> {
    let mut chars = label.chars();
    let letter = chars.next().filter(char::is_ascii_uppercase)?;
    let number: u32 = chars.as_str().parse().ok()?;
    Some((u32::from(letter) - u32::from('A'), number))
}

/// A label's grid position (row, column; 0-based): B3 is (1, 2).
pub fn grid_position(label: &str) -> Option<(u32, u32)> {
    letter_and_number(label)
        .filter(|(_, number)| *number >= 1)
        .map(|(row, number)| (row, number - 1))
}

/// The order labels are listed in: rows by letter, then by number (A2 before
/// A10), then labels of other shapes by name.
pub fn label_order(label: &str) -> (u32, u32, String) {
    match letter_and_number(label) {
        Some((row, number)) => (row, number, String::new()),
        None => (u32::MAX, u32::MAX, label.to_string()),
    }
}

/// The label to suggest for the port at `path`, by its physical place (see
/// [`usb_place`]): its hub's row letter (the letter its mapped neighbours
/// have; for a new hub, its rank among the known hubs, or the next free
/// letter) and its number on the hub. A path that names no USB port, or a
/// label already taken, gets the next free label instead.
pub fn suggest_label(ports: &[PortConfig], path: &str) -> String {
    let taken = |label: &str| ports.iter().any(|p| p.label == label);
    let Some((hub, number)) = usb_place(path) else {
        return next_label(ports);
    };
    let row_of = |hub: &str| {
        ports.iter().find_map(|p| {
            let (their_hub, _) = usb_place(&p.path)?;
            let (row, _) = letter_and_number(&p.label)?;
            (their_hub == hub).then_some(row)
        })
    };
    let row = row_of(&hub).unwrap_or_else(|| {
        let mut hubs: Vec<String> = ports
            .iter()
            .filter_map(|p| usb_place(&p.path).map(|(hub, _)| hub))
            .chain(std::iter::once(hub.clone()))
            .collect();
        hubs.sort();
        hubs.dedup();
        let rank = hubs.iter().position(|h| *h == hub).unwrap_or(0) as u32;
        let used: Vec<u32> = ports
            .iter()
            .filter_map(|p| letter_and_number(&p.label).map(|(row, _)| row))
            .collect();
        if used.contains(&rank) {
            used.iter().max().map_or(0, |max| max + 1)
        } else {
            rank
        }
    });
    let letter = char::from_u32(u32::from('A') + row.min(25)).unwrap_or('Z');
    let label = format!("{letter}{number}");
    if !taken(&label) {
        return label;
    }
    (1..)
        .map(|n| format!("{letter}{n}"))
        .find(|l| !taken(l))
        .unwrap_or_else(|| next_label(ports))
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
            master: false,
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

    fn usb(chain: &str) -> String {
        format!("pci-0000:00:14.0-usb-0:{chain}:1.0-scsi-0:0:0:0")
    }

    fn mapped(label: &str, path: String) -> PortConfig {
        PortConfig {
            label: label.into(),
            path,
            position: grid_position(label),
            master: false,
        }
    }

    #[test]
    fn a_usb_port_path_is_read_as_its_hub_and_its_number_on_it() {
        assert_eq!(
            usb_place(&usb("1.4")),
            Some(("pci-0000:00:14.0-usb-0:1".to_string(), 4))
        );
        assert_eq!(
            usb_place(&usb("2.3.7")),
            Some(("pci-0000:00:14.0-usb-0:2.3".to_string(), 7))
        );
        assert_eq!(
            usb_place(&usb("3")),
            Some(("pci-0000:00:14.0-usb-0".to_string(), 3))
        );
        assert_eq!(usb_place("platform-loop"), None);
    }

    #[test]
    fn labels_follow_the_physical_port_not_the_plug_order() {
        // The first stick goes into port 4 of the first hub: A4, not A1.
        assert_eq!(suggest_label(&[], &usb("1.4")), "A4");
        let ports = [mapped("A4", usb("1.4"))];
        // The next, into port 1 of the same hub: A1, not A5.
        assert_eq!(suggest_label(&ports, &usb("1.1")), "A1");
        // A second hub is the next row.
        assert_eq!(suggest_label(&ports, &usb("2.3")), "B3");
        // A hub that sorts before a known one takes the next free row.
        let ports = [mapped("A2", usb("2.2"))];
        assert_eq!(suggest_label(&ports, &usb("1.1")), "B1");
        // Not a USB port: the label after the last one.
        assert_eq!(suggest_label(&ports, "platform-x"), "A3");
    }

    #[test]
    fn labels_give_grid_positions_and_list_in_row_then_number_order() {
        assert_eq!(grid_position("A1"), Some((0, 0)));
        assert_eq!(grid_position("B12"), Some((1, 11)));
        assert_eq!(grid_position("front"), None);
        let mut labels = vec!["B1", "A10", "front", "A2"];
        labels.sort_by_key(|l| label_order(l));
        assert_eq!(labels, ["A2", "A10", "B1", "front"]);
    }

    #[test]
    fn the_map_is_written_in_label_order_with_grid_positions() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("station.toml");
        let mut learner = PortLearner::open(&config).unwrap();
        assert!(learner.ports().is_empty(), "a new map starts empty");
        learner.map(usb("1.4"), "A4".into()).unwrap();
        learner.map(usb("2.1"), "B1".into()).unwrap();
        learner.map(usb("1.2"), "A2".into()).unwrap();
        let written = StationConfig::load(&config).unwrap();
        let ports: Vec<_> = written
            .ports
            .iter()
            .map(|p| (p.label.as_str(), p.position))
            .collect();
        assert_eq!(
            ports,
            [
                ("A2", Some((0, 1))),
                ("A4", Some((0, 3))),
                ("B1", Some((1, 0)))
            ]
        );
    }

    #[test]
    fn a_port_beyond_the_layout_grows_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("station.toml");
        let mut learner = PortLearner::open(&config).unwrap();
        // The example's layout is 2x4.
        learner.map(usb("3.6"), "C6".into()).unwrap();
        let written = StationConfig::load(&config).unwrap();
        assert_eq!(written.layout, Some((3, 6)));
    }

    #[test]
    fn the_examples_made_up_ports_are_not_a_map_to_continue() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("station.toml");
        std::fs::write(&config, flashrack_config::EXAMPLE).unwrap();
        let mut learner = PortLearner::open(&config).unwrap();
        assert!(learner.ports().is_empty());
        learner.on_hotplug(&Hotplug::Enumerated);
        assert_eq!(
            learner.on_hotplug(&stick("sdb", Some("platform-x"))),
            Learning::NewPort {
                path: "platform-x".into(),
                suggestion: "A1".into()
            }
        );
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
