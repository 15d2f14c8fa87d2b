//! `flashrack devices`: the block devices attached now and what the target
//! guard would say of each (see `flashrack_app::devices`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use flashrack_app::devices::{attached, AttachedDevice, Survey};
use flashrack_config::StationConfig;

use crate::cli::DevicesArgs;

/// Lists the devices (blocking: call it off the async workers). Loop
/// devices over the files of the data directory (`--data-dir`, else the
/// configuration's with `--config`, else the default) are judged as kept.
pub fn run(
    data_dir_flag: Option<PathBuf>,
    default_dir: PathBuf,
    request: DevicesArgs,
) -> Result<ExitCode> {
    let (mut survey, data_dir) = match &request.config {
        Some(path) => {
            let config = StationConfig::load(path)
                .with_context(|| format!("--config {}", path.display()))?;
            let data_dir = data_dir_flag.unwrap_or_else(|| config.data_dir.clone());
            (Survey::of_config(&config), data_dir)
        }
        None => (
            Survey::like_flash(request.max_size),
            data_dir_flag.unwrap_or(default_dir),
        ),
    };
    survey.allow_buses(&request.allow_buses);
    survey
        .keeping(&data_dir)
        .with_context(|| format!("the data directory {}", data_dir.display()))?;
    let devices = attached(&survey)?;
    if request.json {
        outln!("{}", serde_json::to_string_pretty(&devices)?)?;
    } else {
        out!("{}", table(&devices))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A line per device: node, port, size, vendor and model, serial, bus and the
/// guard's answer.
pub fn table(devices: &[AttachedDevice]) -> String {
    if devices.is_empty() {
        return "no disks attached\n".to_string();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![[
        "DEVICE".to_string(),
        "PORT".into(),
        "SIZE".into(),
        "VENDOR/MODEL".into(),
        "SERIAL".into(),
        "BUS".into(),
        "GUARD".into(),
    ]];
    for d in devices {
        let name = [d.vendor.as_deref(), d.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        rows.push([
            d.device.clone(),
            dash(&d.port),
            d.size_words(),
            if name.is_empty() { "-".into() } else { name },
            dash(&d.serial),
            dash(&d.bus),
            d.verdict_words(),
        ]);
    }
    crate::table::render(&rows)
}
