//! The block devices attached now and what the target guard would say of each
//! (`flashrack devices`): what an operator checks before arming a run, as
//! Etcher's drive list or caligula's picker show it.
//!
//! Each whole disk udev knows (as the station's hotplug source sees it at
//! start-up) is judged by the same rules the station applies when a stick is
//! inserted while a run is armed: the configuration's port map, buses and size
//! limit, the mounts, swaps and holders of the moment. Nothing is opened for
//! writing.

use std::collections::BTreeMap;

use flashrack_config::StationConfig;
use flashrack_core::{ByteSize, GuardRefusal};
use flashrack_guard::{refusals, GuardPolicy, GuardRequest};
use flashrack_hardware::udev::{present_disks, UdevAccess};
use flashrack_hotplug::{DeviceAccess, PluggedDevice};
use serde::Serialize;

use crate::AppError;

/// What the devices are judged against.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// The guard's standing rules (buses, size limit, mapped ports).
    pub policy: GuardPolicy,
    /// Port labels by port path (udev `ID_PATH`).
    pub labels: BTreeMap<String, String>,
}

impl Survey {
    /// The station's rules as `config` sets them: its port map, buses, size
    /// limit and whether unmapped ports may be written.
    pub fn of_config(config: &StationConfig) -> Self {
        let labels: BTreeMap<String, String> = config
            .ports
            .iter()
            .map(|p| (p.path.clone(), p.label.clone()))
            .collect();
        Survey {
            policy: GuardPolicy {
                allowed_buses: config.allowed_buses.clone(),
                max_size_bytes: config.max_size.bytes(),
                allow_unmapped_ports: config.allow_unmapped_ports,
                mapped_ports: labels.keys().cloned().collect(),
                // Files kept (rule 4's protected files): see `keeping`.
                ..GuardPolicy::default()
            },
            labels,
        }
    }

    /// The rules `flash` applies to the devices it is given: no port map to
    /// consult, usb only, devices up to `max_size`.
    pub fn like_flash(max_size: ByteSize) -> Self {
        Survey {
            policy: GuardPolicy {
                max_size_bytes: max_size.bytes(),
                allow_unmapped_ports: true,
                ..GuardPolicy::default()
            },
            labels: BTreeMap::new(),
        }
    }

    /// Judges loop devices over the files of `data_dir` and of its image
    /// cache as the station and `flash` do (rule 4's `protected_file`),
    /// looking at the cache as it is: nothing in the data directory is
    /// created or changed, and a running station's imports are left alone.
    pub fn keeping(&mut self, data_dir: &std::path::Path) -> Result<(), AppError> {
        self.policy.protected_files =
            crate::kept_files::KeptFiles::looking_at(data_dir)?.protected();
        Ok(())
    }

    /// Also lets through devices on `buses` (`loop` for loop devices).
    pub fn allow_buses(&mut self, buses: &[String]) {
        self.policy
            .allowed_buses
            .extend(buses.iter().map(|bus| bus.to_ascii_lowercase()));
    }
}

/// One attached device and the guard's answer.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedDevice {
    /// Its node (`/dev/sdb`).
    pub device: String,
    /// Its port's label, when the port is mapped.
    pub port: Option<String>,
    /// Its port path (udev `ID_PATH`).
    pub port_path: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Its vendor.
    pub vendor: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// Its serial.
    pub serial: Option<String>,
    /// Its bus (`usb`, `ata`, `nvme`, `loop` …).
    pub bus: Option<String>,
    /// Every rule it fails, in rule order: empty when the guard accepts it.
    pub refusals: Vec<GuardRefusal>,
    /// Whether the kernel marks it read-only (its write protection on): not
    /// a guard rule (a run fails it as `read_only`, which tells the operator
    /// more), but no run writes it.
    pub read_only: bool,
}

impl AttachedDevice {
    /// Whether an armed run would write it.
    pub fn would_write(&self) -> bool {
        self.refusals.is_empty() && !self.read_only
    }

    /// The guard's answer in words: "would write", "would fail: read-only …"
    /// (the guard accepts it, its write protection refuses the write), or
    /// "refused: " and the first reason (more: "(+N more)").
    pub fn verdict_words(&self) -> String {
        match self.refusals.as_slice() {
            [] if self.read_only => {
                "would fail: read-only (its write protection is on)".to_string()
            }
            [] => "would write".to_string(),
            [one] => format!("refused: {}", one.message),
            [first, rest @ ..] => format!("refused: {} (+{} more)", first.message, rest.len()),
        }
    }

    /// Its size for people (`7.5 GiB`).
    pub fn size_words(&self) -> String {
        ByteSize(self.size).to_string()
    }
}

/// The whole disks attached now, judged as an armed run would judge them
/// (blocking: sysfs, `/proc`, udev).
pub fn attached(survey: &Survey) -> Result<Vec<AttachedDevice>, AppError> {
    let access = UdevAccess::new();
    Ok(present_disks()?
        .into_iter()
        .map(|device| judge(&access, survey, device))
        .collect())
}

/// The guard's answer for `device`: the facts of the moment judged with an
/// armed run's request (the image's size aside: any image is assumed to fit).
fn judge(access: &UdevAccess, survey: &Survey, device: PluggedDevice) -> AttachedDevice {
    let request = GuardRequest {
        image_size: 0,
        armed_run: true,
        explicit_operator_request: false,
    };
    // The bus as the guard sees it (sysfs), when udev has not named it.
    let (refused, bus, read_only) = match access.facts(&device) {
        Ok(facts) => (
            refusals(&facts, &survey.policy, &request)
                .iter()
                .map(|r| r.to_record())
                .collect(),
            device.bus.clone().or(facts.bus),
            facts.read_only || device.read_only,
        ),
        Err(error) => (
            vec![flashrack_guard::Refusal::from(error).to_record()],
            device.bus.clone(),
            device.read_only,
        ),
    };
    AttachedDevice {
        device: device.dev_path.display().to_string(),
        port: device
            .port_path
            .as_ref()
            .and_then(|path| survey.labels.get(path).cloned()),
        port_path: device.port_path,
        size: device.identity.capacity,
        vendor: device.identity.vendor,
        model: device.identity.model,
        serial: device.identity.serial,
        bus,
        refusals: refused,
        read_only,
    }
}
