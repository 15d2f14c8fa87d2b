//! `flashrack serve`: the station with its web side, until SIGTERM or Ctrl-C.
//!
//! Also the engine room of `flashrack demo`, which runs the same code over the
//! simulated rack: the only difference is the hotplug source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use flashrack_config::StationConfig;
use flashrack_engine::EngineOptions;
use flashrack_guard::GuardPolicy;
use flashrack_hotplug::{DeviceAccess, HotplugSource};
use flashrack_station::{Journal, PortSpec, Station, StationHandle, StationSettings};
use flashrack_web::{AccessPolicy, Reports, WebLimits, WebState};
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::records::StoreRecords;

/// Where the station's parts come from.
pub struct Parts {
    /// The hotplug source.
    pub source: Box<dyn HotplugSource>,
    /// How to inspect, write and eject what it reports.
    pub access: Arc<dyn DeviceAccess>,
}

/// Raised once on SIGTERM or Ctrl-C; everything long-running watches it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Listens for SIGTERM and Ctrl-C.
    pub fn on_signals() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// A shutdown raised by `trigger` (and by the signals too).
    pub fn on_signals_or(trigger: watch::Receiver<bool>) -> Self {
        let signals = Self::on_signals();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut trigger = trigger;
            let triggered = async move {
                // A trigger whose sender is gone can never fire: wait for the
                // signals alone rather than shutting down at once.
                if trigger.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = signals.wait() => {}
                _ = triggered => {}
            }
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Completes when shutdown is asked.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs the station and its web server until `shutdown`; calls `listening` with
/// the bound address once the server accepts connections.
pub async fn run_station(
    config: &StationConfig,
    data_dir: &Path,
    parts: Parts,
    keep_records: bool,
    shutdown: Shutdown,
    listening: impl FnOnce(SocketAddr, StationHandle),
) -> Result<()> {
    // Checked here, where every way of starting the station passes, and not only
    // in the configuration file's validation.
    if !config.web.listen.ip().is_loopback() && config.web.token.is_none() {
        anyhow::bail!(
            "refusing to listen on {} (not loopback) without an operator token",
            config.web.listen
        );
    }
    let descriptors = raise_descriptor_limit();
    let max_connections = connection_budget(config.web.max_connections, descriptors);
    if max_connections < config.web.max_connections {
        tracing::warn!(
            descriptors,
            max_connections,
            "few file descriptors: serving fewer connections than configured, to keep descriptors for the sticks"
        );
    }
    let images = crate::image_cmd::open_cache(data_dir)?;
    let records = if keep_records {
        Some(StoreRecords::open(data_dir, &config.station_id, images.clone()).await?)
    } else {
        None
    };
    let (journal, reports): (Arc<dyn Journal>, Option<Arc<dyn Reports>>) = match &records {
        Some(records) => (Arc::new(records.clone()), Some(Arc::new(records.clone()))),
        None => (Arc::new(flashrack_station::MemoryJournal::default()), None),
    };
    let mut policy = GuardPolicy {
        allowed_buses: config.allowed_buses.clone(),
        max_size_bytes: config.max_size.bytes(),
        allow_unmapped_ports: config.allow_unmapped_ports,
        ..GuardPolicy::default()
    };
    policy.mapped_ports.clear();
    let settings = StationSettings {
        station_id: config.station_id.clone(),
        ports: config
            .ports
            .iter()
            .map(|p| PortSpec {
                label: p.label.clone(),
                path: p.path.clone(),
                position: p.position,
            })
            .collect(),
        policy,
        engine: EngineOptions {
            stall_timeout: Duration::from_secs(config.stall_timeout_secs),
            ..EngineOptions::default()
        },
        shutdown_grace: Duration::from_secs(10),
        removal_grace: Duration::from_secs(2),
        // The station's heartbeat also records how far each running attempt
        // has got: after a crash, that much is known to be on each stick.
        heartbeat: Duration::from_secs(2),
    };
    let (station, handle) = Station::new(settings, parts.access, journal);
    let listener = tokio::net::TcpListener::bind(config.web.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.web.listen))?;
    let address = listener.local_addr()?;
    let state = WebState {
        station: handle.clone(),
        images,
        reports,
        access: AccessPolicy {
            token: if address.ip().is_loopback() {
                None
            } else {
                config.web.token.clone()
            },
            public_read: config.web.public_read,
            allowed_hosts: config.web.allowed_hosts.clone(),
        },
        upload_dir: data_dir.join("uploads"),
        // An upload is an image file; a larger one could never be written.
        max_upload_bytes: config.max_size.bytes(),
        max_image_bytes: config.max_size.bytes(),
        import_dirs: config.web.import_dirs.clone(),
        limits: WebLimits {
            max_connections,
            ..WebLimits::default()
        },
        shutting_down: None,
        events: Default::default(),
    };
    let station_task =
        tokio::spawn(station.run_until_stopped(parts.source, shutdown.clone().wait()));
    listening(address, handle);
    flashrack_web::serve(listener, state, shutdown.wait())
        .await
        .context("the web server failed")?;
    station_task.await.context("the station task failed")?;
    if let Some(records) = records {
        records.store().clone().close().await;
    }
    Ok(())
}

/// File descriptors kept for everything but web connections: each stick being
/// written holds a few (its writer, a read-back handle, a loop device's backing
/// file), and the image, the records and udev hold some too. Web connections
/// get at most what is left, so a flood of them never costs a stick its open.
const RESERVED_DESCRIPTORS: u64 = 512;

/// Raises the soft limit on open files to the hard limit (systemd's default
/// soft limit is 1024; the unit sets `LimitNOFILE`), and returns the soft limit
/// now in force. Best effort: a failure keeps the limit as it was.
fn raise_descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "cannot raise the open files limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// How many web connections to serve with `descriptors` open files allowed:
/// the configured number, unless that would eat into the reserve for sticks
/// (never fewer than a handful, so the dashboard still loads).
fn connection_budget(configured: usize, descriptors: u64) -> usize {
    let spare = descriptors.saturating_sub(RESERVED_DESCRIPTORS);
    configured
        .min(usize::try_from(spare).unwrap_or(usize::MAX))
        .max(8)
}

/// The data directory: the flag wins over the configuration.
pub fn data_dir_for(flag: Option<PathBuf>, config: &StationConfig) -> PathBuf {
    flag.unwrap_or_else(|| config.data_dir.clone())
}

/// Runs `flashrack serve`.
pub async fn run(data_dir_flag: Option<PathBuf>, wait: bool, args: ServeArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(path) => StationConfig::load(path)?,
        None => {
            eprintln!("no --config given: using the example configuration (config/station.toml)");
            StationConfig::example()
        }
    };
    let mut config = config;
    if let Some(listen) = args.listen {
        config.web.listen = listen;
        if !listen.ip().is_loopback() && config.web.token.is_none() {
            anyhow::bail!("refusing to listen on {listen} (not loopback) without an operator token in the configuration");
        }
    }
    let data_dir = data_dir_for(data_dir_flag, &config);
    let _lock = crate::lock::DataDirLock::acquire(&data_dir, wait)?;
    let parts = Parts {
        source: Box::new(flashrack_hardware::udev::UdevSource::new()),
        access: Arc::new(flashrack_hardware::udev::UdevAccess::new()),
    };
    let shutdown = Shutdown::on_signals();
    run_station(&config, &data_dir, parts, true, shutdown, |address, _| {
        println!("dashboard: http://{address}/");
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
