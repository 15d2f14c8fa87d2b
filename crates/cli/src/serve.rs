//! `flashrack serve`: the station with its web side, until SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use flashrack_app::{Application, Parts};
use flashrack_config::StationConfig;

use crate::cli::ServeArgs;

/// The configuration the Debian package installs and its unit starts with.
pub const PACKAGED_CONFIG: &str = "/etc/flashrack/station.toml";

/// Runs `flashrack serve`.
pub async fn run(data_dir_flag: Option<PathBuf>, wait: bool, args: ServeArgs) -> Result<ExitCode> {
    // No quiet default: the example's port map names ports of some other
    // machine, and a station that labels sticks by them misleads its operator.
    let Some(config_path) = &args.config else {
        bail!("{}", no_configuration_words());
    };
    let mut config = StationConfig::load(config_path)?;
    if let Some(listen) = args.listen {
        config.web.listen = listen;
        if !listen.ip().is_loopback() && config.web.token.is_none() {
            bail!("refusing to listen on {listen} (not loopback) without an operator token in the configuration");
        }
    }
    if config.ports.is_empty() {
        errln!(
            "{}",
            no_ports_words(config_path, config.allow_unmapped_ports)
        );
    }
    // The flag wins over the configuration.
    let data_dir = data_dir_flag.unwrap_or_else(|| config.data_dir.clone());
    let _lock = crate::cli::lock(&data_dir, wait)?;
    let shutdown = crate::signals::named_shutdown()?;
    let parts = Parts::udev_with_reset(&data_dir, config.web.listen, config.usb_reset);
    let app = Application::build(config, parts).await?;
    crate::cli::say_recovered(app.recovered());
    let _ = outln!("dashboard: http://{}/", app.address());
    app.run_until_signalled(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Why `serve` without `--config` does not start, and how to make a configuration.
fn no_configuration_words() -> String {
    format!(
        "no station configuration given: start it with `flashrack serve --config FILE` \
         ({PACKAGED_CONFIG} on a station installed from the Debian package). \
         To make one, map the rack's ports: `flashrack ports learn --config FILE` \
         (plug a stick into each port in turn and name it; a missing FILE starts \
         from the example configuration)"
    )
}

/// What a station whose configuration maps no port tells its operator.
fn no_ports_words(config_path: &Path, allow_unmapped_ports: bool) -> String {
    let consequence = if allow_unmapped_ports {
        "sticks are shown by their kernel names, not by port labels"
    } else {
        "no stick will be written"
    };
    format!(
        "warning: no ports are mapped in {path}: {consequence}. Map them: stop the \
         station, run `flashrack ports learn --config {path}`, plug a stick into each \
         port in turn and name it, then start the station again",
        path = config_path.display()
    )
}
