//! `flashrack serve`: the station with its web side, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use flashrack_app::{Application, Parts};
use flashrack_config::StationConfig;

use crate::cli::ServeArgs;

/// Runs `flashrack serve`.
pub async fn run(data_dir_flag: Option<PathBuf>, wait: bool, args: ServeArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => StationConfig::load(path)?,
        None => {
            eprintln!("no --config given: using the example configuration (config/station.toml)");
            StationConfig::example()
        }
    };
    if let Some(listen) = args.listen {
        config.web.listen = listen;
        if !listen.ip().is_loopback() && config.web.token.is_none() {
            bail!("refusing to listen on {listen} (not loopback) without an operator token in the configuration");
        }
    }
    // The flag wins over the configuration.
    let data_dir = data_dir_flag.unwrap_or_else(|| config.data_dir.clone());
    let _lock = crate::cli::lock(&data_dir, wait)?;
    let shutdown = crate::signals::shutdown()?;
    let parts = Parts::udev(&data_dir, config.web.listen);
    let app = Application::build(config, parts).await?;
    crate::cli::say_recovered(app.recovered());
    let _ = outln!("dashboard: http://{}/", app.address());
    app.run_until_stopped(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
