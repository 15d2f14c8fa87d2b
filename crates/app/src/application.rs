//! The station application: configuration and parts in, a running station
//! with its records and its web side out.
//!
//! [`Application::build`] does everything that can fail before the station
//! runs (records opened and recovered, the listener bound), so a caller learns
//! the address before anything is served (tests use port 0 and read it).
//! [`Application::run_until_stopped`] then runs the station, the web server
//! and the background tasks until the shutdown future completes (the binary
//! passes SIGTERM/Ctrl-C) or a task asks to stop; everything in flight is
//! brought to a safe state before it returns (running attempts interrupted
//! and recorded, connections given their grace, the records checkpointed).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flashrack_config::StationConfig;
use flashrack_engine::EngineOptions;
use flashrack_guard::{GuardPolicy, ProtectedFiles};
use flashrack_hotplug::{DeviceAccess, HotplugSource};
use flashrack_image::ImageCache;
use flashrack_station::{
    Journal, MemoryJournal, PortSpec, Station, StationHandle, StationSettings,
};
use flashrack_web::{AccessPolicy, Reports, WebLimits, WebState};
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::records::{Recovered, StoreRecords};
use crate::AppError;
use flashrack_fleet_client::HubClient;

/// A task that runs beside the station for as long as the application does
/// (the demo's scripted operator; later, shipping records to a hub). It is
/// given the [`AppContext`] and must return once its `shutdown` is raised.
pub type BackgroundTask = Box<dyn FnOnce(AppContext) -> BoxFuture<'static, ()> + Send>;

/// Where the records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recording {
    /// SQLite in the data directory (`flashrack.db`): what a station does.
    #[default]
    Store,
    /// In memory only, no reports (the demo's measurement of what recording
    /// costs).
    Memory,
}

/// What differs between a real station, the demo and a test: where sticks
/// come from and how they are reached, where the data lives, where the web
/// side listens, and what runs beside the station.
///
/// Build with [`Parts::new`] (or [`Parts::udev`]) and the `with_…` methods; a
/// new part gets a default here, so callers that do not need it are not
/// touched.
pub struct Parts {
    /// The hotplug source (runs on its own thread).
    source: Box<dyn HotplugSource>,
    /// How to inspect, write and eject what the source reports.
    access: Arc<dyn DeviceAccess>,
    /// The records and the image cache live here (the configuration's
    /// `data_dir` unless the command line says otherwise).
    data_dir: PathBuf,
    /// Where the web side listens (port 0: any free port).
    listen: SocketAddr,
    /// Where the records go.
    recording: Recording,
    /// Run beside the station.
    tasks: Vec<BackgroundTask>,
    /// Called as bootable builds enter their stages (tests hold a build in
    /// a stage with it); none by default.
    build_stage_hook: Option<crate::bootable::StageHook>,
    /// Called with a build's bytes in its copying and hashing stages (tests
    /// hold a build part way through a stage with it); none by default.
    build_bytes_hook: Option<crate::bootable::BytesHook>,
}

impl Parts {
    /// A station over `source` and `access`, with its data in `data_dir`, its
    /// web side on `listen`, its records in SQLite and no background task.
    pub fn new(
        source: Box<dyn HotplugSource>,
        access: Arc<dyn DeviceAccess>,
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> Self {
        Self {
            source,
            access,
            data_dir: data_dir.into(),
            listen,
            recording: Recording::Store,
            tasks: Vec::new(),
            build_stage_hook: None,
            build_bytes_hook: None,
        }
    }

    /// Calls `hook` as each bootable build enters each stage (see
    /// [`crate::bootable::StageHook`]).
    pub fn with_build_stage_hook(mut self, hook: crate::bootable::StageHook) -> Self {
        self.build_stage_hook = Some(hook);
        self
    }

    /// Calls `hook` with each report of a bootable build's bytes (see
    /// [`crate::bootable::BytesHook`]).
    pub fn with_build_bytes_hook(mut self, hook: crate::bootable::BytesHook) -> Self {
        self.build_bytes_hook = Some(hook);
        self
    }

    /// A real station: udev's sticks, real block devices (USB sticks reset
    /// through sysfs `authorized` when the run resets them).
    pub fn udev(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self::udev_with_reset(data_dir, listen, flashrack_config::UsbReset::default())
    }

    /// A real station whose USB sticks are reset with `usb_reset` before
    /// their read-back (the configuration's `[engine] usb_reset`).
    pub fn udev_with_reset(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        usb_reset: flashrack_config::UsbReset,
    ) -> Self {
        use flashrack_hardware::usb_reset::ResetMethod;
        let method = match usb_reset {
            flashrack_config::UsbReset::Authorize => ResetMethod::Authorize,
            flashrack_config::UsbReset::Usbdevfs => ResetMethod::Usbdevfs,
        };
        Self::new(
            Box::new(flashrack_hardware::udev::UdevSource::new()),
            Arc::new(flashrack_hardware::udev::UdevAccess::with_reset_method(
                method,
            )),
            data_dir,
            listen,
        )
    }

    /// Records go to `recording`.
    pub fn recording(mut self, recording: Recording) -> Self {
        self.recording = recording;
        self
    }

    /// Runs `task` beside the station.
    pub fn with_task(
        mut self,
        task: impl FnOnce(AppContext) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
        self.tasks.push(Box::new(task));
        self
    }
}

/// What a background task is given.
#[derive(Clone)]
pub struct AppContext {
    /// The station.
    pub station: StationHandle,
    /// The records, unless they are kept in memory.
    pub records: Option<StoreRecords>,
    /// The image cache.
    pub images: ImageCache,
    /// Raised when the application stops.
    pub shutdown: ShutdownSignal,
    /// Asks the application to stop.
    stop: Arc<watch::Sender<bool>>,
}

impl AppContext {
    /// Asks the whole application to stop, as a signal would.
    pub fn stop_application(&self) {
        self.stop.send_replace(true);
    }
}

/// Raised once when the application stops; cheap to clone.
#[derive(Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// Completes when the application stops.
    pub async fn raised(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the application is stopping.
    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }
}

/// A station application, built and bound, not yet running.
pub struct Application {
    /// Where the web side listens (the bound address: a port 0 resolved).
    address: SocketAddr,
    listener: tokio::net::TcpListener,
    station: Station,
    handle: StationHandle,
    source: Box<dyn HotplugSource>,
    web: WebState,
    images: ImageCache,
    records: Option<StoreRecords>,
    tasks: Vec<BackgroundTask>,
    /// Raised to stop (by the shutdown future or a task); a `watch` rather
    /// than a `Notify` so that whoever looks late still sees it raised.
    stop: Arc<watch::Sender<bool>>,
    /// The fleet hub's link, when the station joined one.
    fleet: Option<Fleet>,
    /// The data directory (partial image fetches live there).
    data_dir: PathBuf,
    /// The largest image the station accepts (its largest target).
    max_image_size: u64,
    /// Captures of master sticks (also in `web`), abandoned at shutdown.
    captures: Arc<crate::capture::CaptureService>,
    /// Bootable builds (also in `web`; none without records), recorded as
    /// interrupted and stopped at shutdown.
    builds: Option<Arc<crate::bootable::BuildService>>,
}

impl Application {
    /// Opens the records (accounting for an unclean stop), sets up the
    /// station, and binds the web side's listener.
    pub async fn build(config: StationConfig, parts: Parts) -> Result<Self, AppError> {
        let listen = parts.listen;
        // Checked here, where every way of starting the station passes, and not
        // only in the configuration file's validation.
        if !listen.ip().is_loopback() && config.web.token.is_none() {
            return Err(AppError::NoToken(listen));
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
        let data_dir = parts.data_dir;
        let images = crate::images::open_cache(&data_dir)?;
        for left in crate::fleet::orders::remove_stale_fetches(&data_dir, &images) {
            tracing::info!(path = %left.display(), "removed an image fetch a stopped station left behind");
        }
        let records = match parts.recording {
            Recording::Store => {
                Some(StoreRecords::open(&data_dir, &config.station_id, images.clone()).await?)
            }
            Recording::Memory => None,
        };
        let (journal, reports): (Arc<dyn Journal>, Option<Arc<dyn Reports>>) = match &records {
            Some(records) => (Arc::new(records.clone()), Some(Arc::new(records.clone()))),
            None => (Arc::new(MemoryJournal::default()), None),
        };
        let fleet = match &config.fleet {
            Some(fleet) => {
                let token = fleet.read_token().map_err(AppError::FleetToken)?;
                let client = HubClient::new(&fleet.hub, &fleet.station_id, &token)
                    .map_err(AppError::FleetClient)?;
                let store = records
                    .as_ref()
                    .ok_or(AppError::FleetWithoutRecords)?
                    .store();
                // Joining queues the station's history first: the hub gets
                // every record, not only those written from now on.
                let queued = store
                    .enable_outbox()
                    .await
                    .map_err(AppError::EnableOutbox)?;
                if queued > 0 {
                    tracing::info!(queued, hub = %fleet.hub, "joined the fleet: the station's records are queued for the hub");
                }
                let instance = crate::fleet::instance_id(&data_dir).map_err(|source| {
                    AppError::FleetInstance {
                        path: data_dir.join(crate::fleet::INSTANCE_FILE),
                        source,
                    }
                })?;
                Some(Fleet::new(client, instance))
            }
            None => None,
        };
        // A loop device over a file of the data directory or over a cached
        // image is refused by the guard (rule 4).
        let protected = crate::kept_files::KeptFiles::new(&data_dir, images.clone()).protected();
        let (station, handle) = Station::new(
            station_settings(&config, protected.clone()),
            parts.access,
            journal,
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| AppError::Listen {
                address: listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| AppError::Listen {
            address: listen,
            source,
        })?;
        let captures = Arc::new(crate::capture::CaptureService::new(
            images.clone(),
            data_dir.clone(),
            station_settings(&config, protected).policy,
            handle.clone(),
        ));
        // Builds are recorded: a station without records builds none.
        let builds = match &records {
            Some(records) => Some(Arc::new(
                crate::bootable::BuildService::open(
                    images.clone(),
                    data_dir.clone(),
                    config.max_size,
                    records.store().clone(),
                )
                .await?
                .with_stage_hook(parts.build_stage_hook.clone())
                .with_bytes_hook(parts.build_bytes_hook.clone()),
            )),
            None => None,
        };
        // The list of imports from URLs is kept in the records, where there
        // are records: it outlives a restart, and an import left running is
        // shown interrupted and can be resumed.
        let url_imports: Arc<crate::downloads::UrlImportService> = match &records {
            Some(records) => Arc::new(
                crate::downloads::UrlImportService::persisted(
                    images.clone(),
                    data_dir.clone(),
                    config.max_size,
                    records.store().clone(),
                )
                .await?,
            ),
            None => Arc::new(crate::downloads::UrlImportService::new(
                images.clone(),
                data_dir.clone(),
                config.max_size,
            )),
        };
        let web = WebState {
            station: handle.clone(),
            images: images.clone(),
            reports,
            access: AccessPolicy {
                token: if address.ip().is_loopback() {
                    None
                } else {
                    config.web.token.clone()
                },
                // On loopback nothing needs a token, but a named one still
                // names who armed a run.
                loopback: address.ip().is_loopback(),
                operators: config
                    .web
                    .operators
                    .iter()
                    .map(|o| flashrack_web::NamedToken {
                        name: o.name.clone(),
                        token: o.token.clone(),
                    })
                    .collect(),
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
            fleet: fleet.as_ref().map(|fleet| fleet.view.subscribe()),
            url_imports: Some(url_imports.clone() as Arc<dyn flashrack_web::UrlImports>),
            captures: Some(captures.clone()),
            builds: builds.clone().map(|b| b as Arc<dyn flashrack_web::Builds>),
            followed_runs: Some(Arc::new(crate::follow::FollowService::new(
                images.clone(),
                config.max_size,
                handle.clone(),
                url_imports,
            ))),
        };
        Ok(Self {
            address,
            listener,
            station,
            handle,
            source: parts.source,
            web,
            images,
            records,
            tasks: parts.tasks,
            stop: Arc::new(watch::channel(false).0),
            fleet,
            data_dir,
            max_image_size: config.max_size.bytes(),
            captures,
            builds,
        })
    }

    /// Where the web side listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The station's handle (commands, snapshots, events).
    pub fn station(&self) -> StationHandle {
        self.handle.clone()
    }

    /// The records, unless they are kept in memory.
    pub fn records(&self) -> Option<&StoreRecords> {
        self.records.as_ref()
    }

    /// What opening the records found left by an unclean stop (nothing when
    /// they are kept in memory).
    pub fn recovered(&self) -> Recovered {
        self.records
            .as_ref()
            .map(StoreRecords::recovered)
            .unwrap_or_default()
    }

    /// [`run_until_stopped`](Self::run_until_stopped) by a signal: its name
    /// (`SIGTERM`), which `shutdown` answers, is kept as the detail of the
    /// stop of a run the shutdown ends.
    pub async fn run_until_signalled(
        self,
        shutdown: impl Future<Output = &'static str> + Send + 'static,
    ) -> Result<(), AppError> {
        let station = self.handle.clone();
        self.run_until_stopped(async move {
            let signal = shutdown.await;
            station.note_shutdown(signal);
        })
        .await
    }

    /// Runs the station, its web side and the background tasks until
    /// `shutdown` completes or a task asks to stop; then stops the station
    /// (running attempts end `interrupted` at a safe point, or are recorded so
    /// after its grace), lets the web side's requests finish within theirs,
    /// waits for the tasks and closes the records.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Self {
            listener,
            station,
            handle,
            source,
            web,
            images,
            records,
            tasks,
            stop,
            fleet,
            data_dir,
            max_image_size,
            captures,
            builds,
            ..
        } = self;
        let signal = ShutdownSignal(stop.subscribe());
        tokio::spawn({
            let stop = stop.clone();
            let mut asked = stop.subscribe();
            async move {
                tokio::select! {
                    () = shutdown => tracing::info!("shutting down"),
                    _ = asked.wait_for(|stop| *stop) => tracing::info!("stop asked: shutting down"),
                }
                stop.send_replace(true);
            }
        });
        let station_task = tokio::spawn(station.run_until_stopped(source, signal.clone().raised()));
        let context = AppContext {
            station: handle.clone(),
            records: records.clone(),
            images: images.clone(),
            shutdown: signal.clone(),
            stop: stop.clone(),
        };
        let mut tasks: Vec<_> = tasks
            .into_iter()
            .map(|task| tokio::spawn(task(context.clone())))
            .collect();
        drop(context);
        let last_flush = fleet.clone();
        if let (Some(fleet), Some(records)) = (fleet, &records) {
            tasks.extend(spawn_fleet(
                fleet,
                records.store().clone(),
                handle.clone(),
                images.clone(),
                data_dir,
                max_image_size,
                signal.clone(),
            ));
        }
        let served = flashrack_web::serve(listener, web, signal.raised()).await;
        // The web server ends at shutdown, or sooner if it fails: then the
        // rest stops too.
        stop.send_replace(true);
        // A capture in flight keeps nothing (its blocking thread stops at
        // its next chunk).
        captures.cancel_all();
        // A build under way is recorded interrupted and stopped, keeping
        // nothing (its blocking thread stops at its next step).
        if let Some(builds) = &builds {
            builds.interrupt_all().await;
        }
        let stopped = station_task.await;
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a background task failed");
            }
        }
        if let Some(records) = records {
            // The records the station's stop wrote last, to the hub (within
            // a few seconds) before they are closed.
            if let Some(fleet) = &last_flush {
                crate::fleet::shipper::flush(
                    fleet,
                    records.store(),
                    crate::fleet::shipper::SHUTDOWN_FLUSH,
                )
                .await;
            }
            records.store().clone().close().await;
        }
        served.map_err(AppError::Web)?;
        stopped.map_err(AppError::StationTask)?;
        Ok(())
    }
}

/// Starts the fleet's tasks: the shipper, the live reporter, the orders'
/// poller and their follower.
fn spawn_fleet(
    fleet: Fleet,
    store: flashrack_store::Store,
    station: StationHandle,
    images: ImageCache,
    data_dir: PathBuf,
    max_image_size: u64,
    signal: ShutdownSignal,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (orders, wanted) = watch::channel(None);
    let follower = crate::fleet::orders::Follower {
        fleet: fleet.clone(),
        station: station.clone(),
        images,
        data_dir,
        max_image_size,
        store: store.clone(),
    };
    vec![
        tokio::spawn(crate::fleet::shipper::run(
            fleet.clone(),
            store,
            station.clone(),
            signal.clone(),
        )),
        tokio::spawn(crate::fleet::live::run(
            fleet.clone(),
            station,
            orders.clone(),
            signal.clone(),
        )),
        tokio::spawn(crate::fleet::orders::poll(fleet, orders, signal.clone())),
        tokio::spawn(follower.run(wanted, signal)),
    ]
}

/// The station's settings from the configuration, with the files its guard
/// protects.
fn station_settings(config: &StationConfig, protected_files: ProtectedFiles) -> StationSettings {
    let mut policy = GuardPolicy {
        allowed_buses: config.allowed_buses.clone(),
        max_size_bytes: config.max_size.bytes(),
        allow_unmapped_ports: config.allow_unmapped_ports,
        protected_files,
        ..GuardPolicy::default()
    };
    // The station maps its own ports (from `ports` below).
    policy.mapped_ports.clear();
    StationSettings {
        station_id: config.station_id.clone(),
        ports: config
            .ports
            .iter()
            .map(|p| PortSpec {
                label: p.label.clone(),
                path: p.path.clone(),
                position: p.position,
                master: p.master,
            })
            .collect(),
        policy,
        engine: EngineOptions {
            stall_timeout: Duration::from_secs(config.stall_timeout_secs),
            reset_before_verify: config.reset_before_verify,
            // The capacity probe defeats a stick's own cache the same way
            // (a reset where the stick can be reset, else the filler): the
            // station expects the stick to leave and come back while it
            // prepares, as it does before the read-back.
            probe: flashrack_engine::probe::ProbeOptions {
                defeat_cache: config.reset_before_verify,
                ..Default::default()
            },
            // A stick away in its reset makes no progress: the station gives
            // up on it before the stall watchdog would.
            reset_timeout: Duration::from_secs(20.min(config.stall_timeout_secs / 2).max(1)),
            // A retry of a stick whose attempt stalled waits as long for the
            // stuck I/O to let go of it as a stall is waited for.
            release_timeout: Duration::from_secs(config.stall_timeout_secs),
            ..EngineOptions::default()
        },
        shutdown_grace: Duration::from_secs(10),
        removal_grace: Duration::from_secs(2),
        // The station's heartbeat also records how far each running attempt
        // has got: after a crash, that much is known to be on each stick.
        heartbeat: Duration::from_secs(2),
    }
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

#[cfg(test)]
mod tests {
    use super::connection_budget;

    #[test]
    fn connections_leave_the_reserved_descriptors_to_the_sticks() {
        assert_eq!(connection_budget(256, 524_288), 256);
        assert_eq!(connection_budget(256, 1024), 256);
        assert_eq!(connection_budget(1000, 1024), 1024 - 512);
        assert_eq!(connection_budget(256, 600), 88);
        assert_eq!(connection_budget(256, 100), 8);
        assert_eq!(connection_budget(256, u64::MAX), 256);
    }
}
