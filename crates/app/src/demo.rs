//! The demo (`flashrack demo`): the station and its dashboard over a simulated
//! rack, no hardware and no configuration needed.
//!
//! A demo image is generated and imported, a rack of simulated ports is set up,
//! a run is armed, and sticks (most healthy; some slow, failing, lying about
//! their capacity, corrupting, read-only or too small) are plugged in over time
//! and pulled out a while after their verdict, as an operator would: the
//! scripted operator is a background task of the [`Application`]. Everything
//! runs through the same station, engine and web code as a real rack; only
//! the hotplug source is simulated. The browser test drives the dashboard
//! against it.
//!
//! With a burst ([`Burst`]), many healthy sticks are plugged at once instead,
//! and when each got its verdict is measured ([`BurstReport`]).
//!
//! By hand ([`DemoOptions::by_hand`]), nobody plugs anything: the sticks are
//! plugged and pulled by the commands a [`HandRack`] is given (`plug A3
//! slow:write=2MB`, `pull A3`), which `flashrack demo --by-hand` reads from its
//! standard input. A stick pulled mid-write, a run's target count and a fault
//! of one's choosing can so be seen on the dashboard when one wants them (the
//! browser tests of those states drive the demo this way).
//!
//! With a master port ([`DemoOptions::master`], by hand only), one port is the
//! station's master port (`master = true`: its stick is never written, it is
//! offered for capture) and `plug PORT /dev/loopN` plugs a real block device
//! into it, reported to the station as hotplug would report a stick there. A
//! real device is refused in any other port: a demo never writes a real
//! device. The `loop` bus is then among the demo's allowed buses, so that the
//! capture (which still judges the device by the guard's rules for reading:
//! whole disk, nothing mounted, not a system disk) may read a loop device;
//! the simulated rack's targets write only simulated sticks, whatever bus a
//! device says it is on.
//!
//! [`Application`]: crate::Application

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashrack_config::{PortConfig, StationConfig, WebConfig};
use flashrack_core::ByteSize;
use flashrack_engine::SourceImage;
use flashrack_hotplug::{
    DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, StopSignal,
};
use flashrack_image::ImportOptions;
use flashrack_simrack::sim::{CacheMode, FakeMode, SimStickSpec};
use flashrack_simrack::sim_hotplug::{
    sim_rack, ResetReturn, SimHotplug, SimRackControl, SimRackError,
};
use flashrack_station::{ArmRequest, PortState, RunOptions, StationHandle};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::application::{AppContext, Parts, Recording};
use crate::AppError;

/// What the demo is asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the dashboard listens (port 0: any free port).
    pub listen: SocketAddr,
    /// How many simulated ports (8 to a row, at most 208).
    pub ports: usize,
    /// The size of the generated demo image.
    pub image_size: ByteSize,
    /// The seed of the simulated operator's choices.
    pub seed: u64,
    /// Instead of the operator, a burst of sticks (a measurement).
    pub burst: Option<Burst>,
    /// Where the records go.
    pub recording: Recording,
    /// The station's id (`demo` by default).
    pub station_id: Option<String>,
    /// The fleet hub the demo station joins, if any.
    pub fleet: Option<flashrack_config::FleetConfig>,
    /// Whether the scripted operator arms a run itself; without, sticks wait
    /// for a run armed otherwise (by the hub's orders, or over the API).
    pub arm: bool,
    /// No scripted operator: sticks are plugged and pulled only through the
    /// demo's [`HandRack`] (ignored with a burst).
    pub by_hand: bool,
    /// The label of the port that is the station's master port (by hand
    /// only): its stick is never written, and a real block device may be
    /// plugged into it to be captured.
    pub master: Option<String>,
}

/// A measurement: many healthy sticks plugged at once.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// How many sticks.
    pub sticks: u32,
    /// Their write speed, bytes per second.
    pub write_speed: u64,
    /// Their read speed, bytes per second.
    pub read_speed: u64,
    /// Stop the application once every stick has its verdict.
    pub exit_when_done: bool,
}

/// When each stick of a burst got its verdict, from the first plug.
#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    /// Sticks plugged.
    pub sticks: usize,
    /// Sticks that passed.
    pub passed: usize,
    /// The image's size in bytes.
    pub image_size: u64,
    /// Writing then reading the image at the sticks' speeds, in seconds: the
    /// least a stick could take.
    pub ideal_secs: f64,
    /// When the last verdict came.
    pub slowest_secs: f64,
    /// `slowest_secs / ideal_secs`.
    pub ratio: f64,
    /// Each stick's verdict time, earliest first.
    pub finish_secs: Vec<BurstFinish>,
}

/// One stick of a burst.
#[derive(Debug, Clone, Serialize)]
pub struct BurstFinish {
    /// Its port.
    pub port: String,
    /// When its verdict came.
    pub secs: f64,
    /// Whether it passed.
    pub passed: bool,
}

/// A demo station, ready to be built into an [`Application`](crate::Application).
pub struct Demo {
    /// Its configuration (a generated rack, loopback, no token).
    pub config: StationConfig,
    /// Its parts: the simulated rack and the scripted operator (or the burst).
    pub parts: Parts,
    /// The rack, to pull every stick once the demo is over.
    pub rack: SimRackControl,
    /// The burst's report, once every stick has its verdict.
    pub burst_report: Option<oneshot::Receiver<BurstReport>>,
    /// The rack in the operator's hands (with [`DemoOptions::by_hand`]).
    pub hand: Option<HandRack>,
}

/// The demo image's file for an image of `size` bytes.
pub fn image_path(data_dir: &Path, size: ByteSize) -> PathBuf {
    data_dir.join(format!("demo-{}.img", size.bytes()))
}

/// Whether the demo image at `path` must be (re)generated.
pub fn needs_image(path: &Path, size: ByteSize) -> bool {
    std::fs::metadata(path).map(|m| m.len()).ok() != Some(size.bytes())
}

impl Demo {
    /// Imports the demo image (generate it first: [`write_image`]) and sets up
    /// the rack, the configuration and the scripted operator.
    pub fn prepare(data_dir: &Path, options: &DemoOptions) -> Result<Demo, AppError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AppError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let image_file = image_path(data_dir, options.image_size);
        let cache = crate::images::open_cache(data_dir)?;
        let image = cache
            .import(&image_file, ImportOptions::default())
            .map_err(|source| AppError::Import {
                name: "the demo image".into(),
                source: Box::new(source),
            })?
            .image;

        let columns = 8u32;
        let port_count = options.ports.clamp(1, 26 * 8) as u32;
        let ports: Vec<PortConfig> = (0..port_count)
            .map(|i| {
                let (row, column) = (i / columns, i % columns);
                PortConfig {
                    label: format!("{}{}", (b'A' + row as u8) as char, column + 1),
                    path: format!("sim-usb-0:{}.{}", row + 1, column + 1),
                    position: Some((row, column)),
                    master: false,
                }
            })
            .collect();
        let mut ports = ports;
        if let Some(label) = &options.master {
            if !options.by_hand || options.burst.is_some() {
                return Err(AppError::Demo(
                    "a master port is for the demo by hand (--by-hand)".into(),
                ));
            }
            let port = ports
                .iter_mut()
                .find(|p| &p.label == label)
                .ok_or_else(|| {
                    AppError::Demo(format!(
                        "no port {label} in the demo's rack of {port_count} ports"
                    ))
                })?;
            port.master = true;
        }
        let rows = port_count.div_ceil(columns);
        let mut allowed_buses = BTreeSet::from(["usb".to_string()]);
        if options.master.is_some() {
            // The capture of a loop device plugged by hand into the master
            // port (its read rules); nothing writes one (module docs).
            allowed_buses.insert("loop".to_string());
        }
        let config = StationConfig {
            station_id: options.station_id.clone().unwrap_or_else(|| "demo".into()),
            data_dir: data_dir.to_path_buf(),
            allowed_buses,
            max_size: ByteSize(256_000_000_000),
            allow_unmapped_ports: false,
            stall_timeout_secs: 20,
            // As a real station: each simulated stick is reset by its
            // capacity probe and before its read-back, leaving the system and
            // coming back under a new name in its port (`resetting`). Not in
            // a burst, which measures the fan-out against writing and
            // reading alone (bench/README.md).
            reset_before_verify: options.burst.is_none(),
            usb_reset: flashrack_config::UsbReset::default(),
            layout: Some((rows, columns)),
            web: WebConfig {
                listen: options.listen,
                token: None,
                public_read: false,
                allowed_hosts: Vec::new(),
                import_dirs: Vec::new(),
                max_connections: flashrack_config::DEFAULT_MAX_CONNECTIONS,
                operators: Vec::new(),
            },
            fleet: options.fleet.clone(),
            ports: ports.clone(),
        };
        // What a flash killed on this data directory left (its records are
        // closed when they are opened): the demo holds the directory's lock,
        // as the next flash would.
        crate::targets::remove_stale_sim_dirs(data_dir);
        let (source, rack, access) = sim_rack(data_dir.join("sim-rack"));
        let (extra, extra_events) = std::sync::mpsc::channel();
        let source = WithExtra {
            rack: source,
            extra: extra_events,
        };
        if options.burst.is_none() {
            // A real stick comes back from its reset in about half a second
            // (bench/README.md): long enough to see the port say so.
            for port in &ports {
                rack.on_reset(&port.path, ResetReturn::After(DEMO_RESET));
            }
        }
        let source_image = SourceImage {
            path: image.path.clone(),
            manifest: image.manifest.clone(),
            referenced: image.meta.reference.is_some(),
        };
        let image_name = image.meta.original_name.clone();
        let parts = Parts::new(Box::new(source), Arc::new(access), data_dir, options.listen)
            .recording(options.recording);
        let scenario_rack = rack.clone();
        let hand = (options.by_hand && options.burst.is_none()).then(|| HandRack {
            rack: rack.clone(),
            ports: ports.clone(),
            image_size: image.manifest.size(),
            plugged: 0,
            extra,
            real: HashMap::new(),
        });
        let (parts, burst_report) = match options.burst {
            Some(burst) => {
                let (report_tx, report_rx) = oneshot::channel();
                let parts = parts.with_task(move |context: AppContext| {
                    Box::pin(async move {
                        let shutdown = context.shutdown.clone();
                        tokio::select! {
                            () = burst_scenario(
                                &context,
                                scenario_rack,
                                ports,
                                source_image,
                                image_name,
                                burst,
                                report_tx,
                            ) => {}
                            () = shutdown.raised() => {}
                        }
                    })
                });
                (parts, Some(report_rx))
            }
            None if options.by_hand => {
                let arm_run = options.arm;
                let parts = parts.with_task(move |context: AppContext| {
                    Box::pin(async move {
                        if arm_run {
                            arm(&context.station, source_image, image_name).await;
                        }
                    })
                });
                (parts, None)
            }
            None => {
                let seed = options.seed;
                let arm_run = options.arm;
                let parts = parts.with_task(move |context: AppContext| {
                    Box::pin(async move {
                        let shutdown = context.shutdown.clone();
                        tokio::select! {
                            () = scenario(
                                context.station,
                                scenario_rack,
                                ports,
                                source_image,
                                image_name,
                                seed,
                                arm_run,
                            ) => {}
                            () = shutdown.raised() => {}
                        }
                    })
                });
                (parts, None)
            }
        };
        Ok(Demo {
            config,
            parts,
            rack,
            burst_report,
            hand,
        })
    }
}

/// A command to the rack by hand that cannot be carried out (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum HandError {
    /// Not a command this rack knows.
    #[error("unknown command {0:?} (plug PORT [NAME[:key=value,...]], pull PORT)")]
    Unknown(String),
    /// A command without its port, or with words left over.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// No port has that label.
    #[error("no port {0} in this rack")]
    NoPort(String),
    /// Pulling a port with no stick in it.
    #[error("no stick in port {0}")]
    Empty(String),
    /// A real block device offered to a port that is not a master port.
    #[error(
        "port {0} is not a master port: a real device is plugged only into the master port (a demo never writes a real device)"
    )]
    RealNotMaster(String),
    /// A real device that cannot be inspected.
    #[error("cannot plug {device}: {reason}")]
    Device {
        /// The device's path.
        device: String,
        /// Why it cannot be.
        reason: String,
    },
    /// A stick that cannot be described as asked.
    #[error(transparent)]
    Spec(#[from] crate::targets::TargetsError),
    /// The simulated rack said no (an occupied port, no room for the medium).
    #[error(transparent)]
    Rack(#[from] SimRackError),
}

/// The demo's rack in the operator's hands: each command plugs or pulls one
/// stick, as a hand at the rack would.
///
/// - `plug PORT [NAME[:key=value,...]]` plugs a stick described as `flashrack
///   flash` takes `sim:` targets (`slow:write=2MB`, `bad:fail_after=10MiB`,
///   `tiny:capacity=1MiB`); its serial is NAME (`HAND-0001`, … by default);
/// - `plug PORT /dev/…` plugs a real block device (a loop device) into the
///   master port PORT, to be captured; refused for any other port;
/// - `pull PORT` pulls the stick out of the port, whatever it is doing.
pub struct HandRack {
    rack: SimRackControl,
    ports: Vec<PortConfig>,
    image_size: u64,
    plugged: u32,
    /// Where the real devices plugged by hand are reported to the station.
    extra: std::sync::mpsc::Sender<Hotplug>,
    /// The real devices plugged by hand: kernel name by port label.
    real: HashMap<String, String>,
}

impl HandRack {
    /// Carries out one command line; says what it did.
    pub fn command(&mut self, line: &str) -> Result<String, HandError> {
        let mut words = line.split_whitespace();
        let Some(verb) = words.next() else {
            return Err(HandError::Unknown(String::new()));
        };
        let port = words.next();
        let spec = words.next();
        match (verb, port, spec, words.next()) {
            ("plug", Some(port), Some(device), None) if device.starts_with('/') => {
                self.plug_real(port, device)
            }
            ("plug", Some(port), spec, None) => {
                let path = self.port_path(port)?;
                if self.real.contains_key(port) {
                    return Err(SimRackError::PortOccupied(path).into());
                }
                // Sticks without a name are numbered by the ones plugged.
                let text =
                    spec.map_or_else(|| format!("HAND-{:04}", self.plugged + 1), String::from);
                let spec = crate::targets::parse_sim_spec(&text, self.image_size)?;
                let serial = spec.name.clone();
                let kernel_name = self.rack.plug(&path, &serial, spec)?;
                self.plugged += 1;
                Ok(format!("plugged {port}: {serial} ({kernel_name})"))
            }
            ("pull", Some(port), None, None) => {
                let path = self.port_path(port)?;
                if let Some(kernel_name) = self.real.remove(port) {
                    let _ = self.extra.send(Hotplug::Removed {
                        kernel_name: kernel_name.clone(),
                    });
                    return Ok(format!("pulled {port} ({kernel_name})"));
                }
                let (kernel_name, _) = self
                    .rack
                    .stick_at(&path)
                    .ok_or_else(|| HandError::Empty(port.to_string()))?;
                self.rack.pull(&kernel_name)?;
                Ok(format!("pulled {port} ({kernel_name})"))
            }
            ("plug", ..) => Err(HandError::Usage("plug PORT [NAME[:key=value,...]]")),
            ("pull", ..) => Err(HandError::Usage("pull PORT")),
            (other, ..) => Err(HandError::Unknown(other.to_string())),
        }
    }

    /// Plugs the real block device at `device` into the master port `port`,
    /// as hotplug reports a stick there: its facts as the system shows them,
    /// a serial numbered as the other sticks plugged by hand.
    fn plug_real(&mut self, port: &str, device: &str) -> Result<String, HandError> {
        let config = self
            .ports
            .iter()
            .find(|p| p.label == port)
            .ok_or_else(|| HandError::NoPort(port.to_string()))?;
        if !config.master {
            return Err(HandError::RealNotMaster(port.to_string()));
        }
        let port_path = config.path.clone();
        if self.real.contains_key(port) || self.rack.stick_at(&port_path).is_some() {
            return Err(SimRackError::PortOccupied(port_path).into());
        }
        let facts = flashrack_guard::DiskFacts::inspect(Path::new(device)).map_err(|e| {
            HandError::Device {
                device: device.to_string(),
                reason: e.to_string(),
            }
        })?;
        let serial = format!("HAND-{:04}", self.plugged + 1);
        let kernel_name = facts.kernel_name.clone();
        let plugged = PluggedDevice {
            kernel_name: kernel_name.clone(),
            dev_path: facts.dev_path.clone(),
            port_path: Some(port_path),
            bus: facts.bus.clone(),
            identity: DeviceIdentity {
                serial: Some(serial.clone()),
                vendor: Some("Flashrack".into()),
                model: Some("Master (by hand)".into()),
                capacity: facts.size_bytes,
            },
            removable: true,
            read_only: facts.read_only,
            disk: Some(facts.identity()),
        };
        self.extra
            .send(Hotplug::Added(plugged))
            .map_err(|_| HandError::Device {
                device: device.to_string(),
                reason: "the station has stopped".into(),
            })?;
        self.plugged += 1;
        self.real.insert(port.to_string(), kernel_name.clone());
        Ok(format!("plugged {port}: {serial} ({kernel_name})"))
    }

    fn port_path(&self, label: &str) -> Result<String, HandError> {
        self.ports
            .iter()
            .find(|p| p.label == label)
            .map(|p| p.path.clone())
            .ok_or_else(|| HandError::NoPort(label.to_string()))
    }
}

/// Arms the demo's run with default options; logs and says so when it cannot.
async fn arm(station: &StationHandle, image: SourceImage, image_name: String) -> bool {
    let request = ArmRequest {
        image,
        image_name,
        options: RunOptions::default(),
        sparse: None,
    };
    match station.arm(request).await {
        Ok(_) => true,
        Err(error) => {
            tracing::error!(%error, "the demo could not arm its run");
            false
        }
    }
}

/// Arms a run (unless `arm_run` is false: then the sticks wait for a run armed
/// otherwise), then keeps the rack busy like an operator would.
async fn scenario(
    station: StationHandle,
    rack: SimRackControl,
    ports: Vec<PortConfig>,
    image: SourceImage,
    image_name: String,
    seed: u64,
    arm_run: bool,
) {
    let image_size = image.manifest.size();
    if arm_run && !arm(&station, image, image_name).await {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plugged = 0u32;
    let mut done_since: HashMap<String, Instant> = HashMap::new();
    loop {
        let snapshot = station.snapshot();
        // A port is free when no stick is in it: empty, or showing the verdict
        // of a stick pulled during its attempt.
        let empty: Vec<&PortConfig> = ports
            .iter()
            .filter(|p| {
                snapshot.ports.iter().any(|v| {
                    v.label == p.label && v.device.is_none() && !v.state.is_busy() && !v.ejected
                })
            })
            .collect();
        // Plug a couple of sticks at a time into empty ports.
        for port in empty.iter().take(if plugged < 8 { 8 } else { 1 }) {
            plugged += 1;
            let spec = stick_spec(plugged, image_size, &mut rng);
            let serial = format!("DEMO-{plugged:04}");
            if let Err(error) = rack.plug(&port.path, &serial, spec) {
                tracing::warn!(%error, "demo could not plug a stick");
            }
        }
        // Pull sticks some seconds after their verdict (or refusal).
        for view in &snapshot.ports {
            let finished = matches!(
                view.state,
                PortState::Passed | PortState::Failed | PortState::Refused
            );
            if !finished {
                done_since.remove(&view.label);
                continue;
            }
            let since = *done_since
                .entry(view.label.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(12) {
                if let Some(path) = &view.port_path {
                    if let Some((kernel_name, _)) = rack.stick_at(path) {
                        let _ = rack.pull(&kernel_name);
                    }
                }
                done_since.remove(&view.label);
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// Arms a run, plugs `burst.sticks` sticks within a moment, and reports when each
/// got its verdict, measured from the first plug.
async fn burst_scenario(
    context: &AppContext,
    rack: SimRackControl,
    ports: Vec<PortConfig>,
    image: SourceImage,
    image_name: String,
    burst: Burst,
    report: oneshot::Sender<BurstReport>,
) {
    let station = &context.station;
    let image_size = image.manifest.size();
    if !arm(station, image, image_name).await {
        context.stop_application();
        return;
    }
    let mut watch = station.watch();
    let started = Instant::now();
    let labels: Vec<String> = ports
        .iter()
        .take(burst.sticks as usize)
        .map(|p| p.label.clone())
        .collect();
    for (n, port) in ports.iter().take(burst.sticks as usize).enumerate() {
        let spec = SimStickSpec::new("", 8u64 << 30)
            .write_speed(burst.write_speed)
            .read_speed(burst.read_speed);
        if let Err(error) = rack.plug(&port.path, &format!("BURST-{:04}", n + 1), spec) {
            tracing::error!(%error, "the burst could not plug a stick");
        }
    }
    let mut finished: HashMap<String, (f64, bool)> = HashMap::new();
    while finished.len() < labels.len() {
        if watch.changed().await.is_err() {
            return;
        }
        let snapshot = watch.borrow_and_update().clone();
        for view in snapshot.ports.iter().filter(|v| labels.contains(&v.label)) {
            if matches!(
                view.state,
                PortState::Passed | PortState::Failed | PortState::Refused
            ) {
                finished.entry(view.label.clone()).or_insert((
                    started.elapsed().as_secs_f64(),
                    view.state == PortState::Passed,
                ));
            }
        }
    }
    let ideal =
        image_size as f64 / burst.write_speed as f64 + image_size as f64 / burst.read_speed as f64;
    let slowest = finished.values().map(|(t, _)| *t).fold(0.0, f64::max);
    let mut times: Vec<(String, f64, bool)> =
        finished.into_iter().map(|(l, (t, p))| (l, t, p)).collect();
    times.sort_by(|a, b| a.1.total_cmp(&b.1));
    let _ = report.send(BurstReport {
        sticks: labels.len(),
        passed: times.iter().filter(|t| t.2).count(),
        image_size,
        ideal_secs: ideal,
        slowest_secs: slowest,
        ratio: slowest / ideal,
        finish_secs: times
            .into_iter()
            .map(|(port, secs, passed)| BurstFinish { port, secs, passed })
            .collect(),
    });
    if burst.exit_when_done {
        context.stop_application();
    }
}

/// How long a simulated stick of the demo is away in its reset.
const DEMO_RESET: Duration = Duration::from_millis(600);

/// The `n`-th stick of the demo: mostly healthy, sometimes faulty.
fn stick_spec(n: u32, image_size: u64, rng: &mut impl Rng) -> SimStickSpec {
    let capacity = 8u64 << 30;
    let healthy = || {
        SimStickSpec::new("", capacity)
            .write_speed(rng_speed(n, 12, 40))
            .read_speed(rng_speed(n, 40, 90))
    };
    match n % 12 {
        3 => healthy().write_speed(3_000_000),
        5 => healthy().write_error_after(image_size / 3 + u64::from(n) * 4096),
        // A counterfeit that hides its lie behind a cache: only the probe's
        // reset shows what it really stores.
        7 => SimStickSpec::new("", 32 << 30)
            .fake_capacity(64 << 20, FakeMode::Wrap)
            .volatile_cache(16 << 20, CacheMode::WriteThrough),
        9 => healthy().corrupt_at(rng.random_range(0..image_size)),
        10 => healthy().read_only(),
        11 => SimStickSpec::new("", (image_size / 2).div_ceil(512) * 512),
        _ => healthy(),
    }
}

fn rng_speed(n: u32, low_mb: u64, high_mb: u64) -> u64 {
    (low_mb + u64::from(n * 7) % (high_mb - low_mb)) * 1_000_000
}

/// Writes the demo image to `path`: like a real installer image, random runs
/// and zero holes, always the same for a size.
pub fn write_image(path: &Path, size: ByteSize) -> Result<(), AppError> {
    let tmp = path.with_extension("img.part");
    write_image_to(&tmp, size.bytes())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| AppError::WriteFile {
            path: path.to_path_buf(),
            source,
        })
}

fn write_image_to(tmp: &Path, size: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::create(tmp)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let run = rng.random_range(64 * 1024..8 << 20).min(size - pos);
        if rng.random_bool(0.6) {
            let mut left = run;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                rng.fill_bytes(&mut buf[..n]);
                file.write_all(&buf[..n])?;
                left -= n as u64;
            }
        } else {
            file.seek(SeekFrom::Current(run as i64))?;
        }
        pos += run;
    }
    file.set_len(size)?;
    file.sync_all()
}

/// The simulated rack's events, and beside them those sent by hand: a real
/// block device in a master port (the demo's [`HandRack`], or a test's
/// `TestApp::hotplug`).
pub(crate) struct WithExtra {
    pub(crate) rack: SimHotplug,
    pub(crate) extra: std::sync::mpsc::Receiver<Hotplug>,
}

impl HotplugSource for WithExtra {
    fn run(
        self: Box<Self>,
        events: tokio::sync::mpsc::UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError> {
        let rack = Box::new(self.rack);
        let rack_thread = std::thread::spawn({
            let (events, stop) = (events.clone(), stop.clone());
            move || rack.run(events, stop)
        });
        while !stop.is_stopped() {
            match self.extra.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => {
                    if events.send(event).is_err() {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        rack_thread.join().unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand(dir: &Path) -> HandRack {
        let (_source, rack, _access) = sim_rack(dir);
        HandRack {
            rack,
            ports: vec![
                PortConfig {
                    label: "A1".into(),
                    path: "sim-usb-0:1.1".into(),
                    position: None,
                    master: false,
                },
                PortConfig {
                    label: "A2".into(),
                    path: "sim-usb-0:1.2".into(),
                    position: None,
                    master: true,
                },
            ],
            image_size: 1 << 20,
            plugged: 0,
            extra: std::sync::mpsc::channel().0,
            real: HashMap::new(),
        }
    }

    #[test]
    fn a_real_device_is_plugged_by_hand_only_into_the_master_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut hand = hand(dir.path());
        let text = hand.command("plug A1 /dev/loop0").unwrap_err().to_string();
        assert!(
            text.contains("port A1 is not a master port")
                && text.contains("a demo never writes a real device"),
            "{text}"
        );
        assert!(hand.rack.stick_at("sim-usb-0:1.1").is_none());
        // In the master port, a path that is no block device is refused
        // with what the system said.
        let missing = dir.path().join("no-such-device");
        let text = hand
            .command(&format!("plug A2 {}", missing.display()))
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("cannot plug "), "{text}");
        assert!(hand.real.is_empty());
        // A simulated stick in the master port takes it; a real device then
        // finds it occupied.
        hand.command("plug A2 sim").unwrap();
        assert!(matches!(
            hand.command("plug A2 /dev/loop0"),
            Err(HandError::Rack(SimRackError::PortOccupied(_)))
        ));
        assert!(matches!(
            hand.command("plug B1 /dev/loop0"),
            Err(HandError::NoPort(_))
        ));
    }

    #[test]
    fn the_rack_by_hand_plugs_and_pulls_what_it_is_told_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut hand = hand(dir.path());
        let plugged = hand.command("plug A1 slow:write=2MB").unwrap();
        assert!(plugged.starts_with("plugged A1: slow ("), "{plugged}");
        let (_, stick) = hand.rack.stick_at("sim-usb-0:1.1").unwrap();
        assert_eq!(stick.spec().write_bytes_per_sec, Some(2_000_000));
        assert!(matches!(
            hand.command("plug A1"),
            Err(HandError::Rack(SimRackError::PortOccupied(_)))
        ));
        assert!(hand.command("pull A1").unwrap().starts_with("pulled A1 ("));
        assert!(hand.rack.stick_at("sim-usb-0:1.1").is_none());
        assert!(matches!(hand.command("pull A1"), Err(HandError::Empty(_))));
        // A default name, numbered.
        assert!(hand
            .command("plug A1")
            .unwrap()
            .starts_with("plugged A1: HAND-0002 ("));
        for (line, error) in [
            ("plug B7", "no port B7 in this rack"),
            ("pull", "usage: pull PORT"),
            ("plug A1 x y", "usage: plug PORT"),
            ("shake A1", "unknown command \"shake\""),
            ("plug A1 bad:speed=1", "sim:bad"),
        ] {
            let text = hand.command(line).unwrap_err().to_string();
            assert!(text.contains(error), "{line}: {text}");
        }
    }
}
