//! Capturing a master stick into the image cache (`flashrack image
//! capture`): the device is judged by the guard's rules for reading (a whole
//! disk on an allowed bus, nothing of it mounted, used as swap or held, not a
//! system disk), opened read-only and exclusively (`O_EXCL`: the kernel
//! refuses it while mounted, and nobody can mount it while it is read),
//! checked to be the disk that was judged, and read once into the cache's
//! single pass (digests, sparse store) like any import. By default it is read
//! up to the end of its last partition (the partition table read with
//! `gptman` for GPT and `mbrman` for MBR); `whole` reads all of it.
//! Nothing is ever written to it. The image keeps where it came from (its
//! `Provenance`: port, serial, device, extent) and, like an import, gets a
//! block map generated from its file systems when flashrack can read them.
//!
//! [`CaptureService`] is the station's side of `POST /api/v1/images/capture`:
//! the stick in a master port, judged at once (a mounted master is refused
//! before anything starts), then captured in the background with its
//! progress kept for `GET /api/v1/images/captures`.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use flashrack_core::{ByteSize, CaptureOrigin, Provenance, Sha256Digest};
use flashrack_guard::{read_refusals, DiskFacts, DiskIdentity, GuardPolicy};
use flashrack_image::{ImageCache, ImportOptions, ImportOutcome, StreamSource};
use flashrack_station::{Progress, StationHandle};

use crate::downloads::error_chain;
use layout::{Layout, Rebuilt};

mod layout;
use crate::images::{map_image, MapNote};
use crate::AppError;

/// What to capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureRequest {
    /// The master's block device (`/dev/sdX`).
    pub device: PathBuf,
    /// The name the image is kept under (default: `capture-<device>.img`).
    pub name: Option<String>,
    /// Read the whole device rather than up to the end of its last partition.
    pub whole: bool,
    /// The station's guard policy (its allowed buses).
    pub policy: GuardPolicy,
    /// The master port the stick sits in, for the image's provenance
    /// (`None`: named on the command line).
    pub port: Option<String>,
    /// The stick's serial, for the image's provenance.
    pub serial: Option<String>,
    /// The disk the station saw in its master port: the capture refuses
    /// another disk found behind the name (`None`: whatever is there now).
    pub expected: Option<DiskIdentity>,
    /// Raised to abandon the capture (the station shuts down); nothing is
    /// kept.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// How much of the device was read, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// All of it (`--whole`).
    Whole,
    /// Up to the end of the last partition of its GPT, with the GPT's
    /// backup copy rebuilt after it (`layout`'s docs).
    Gpt,
    /// Up to the end of the last partition of its MBR.
    Mbr,
}

impl Extent {
    /// The words for people.
    pub fn describe(self) -> &'static str {
        match self {
            Extent::Whole => "the whole device",
            Extent::Gpt => {
                "up to the end of the last GPT partition, the GPT's backup copy rebuilt after it"
            }
            Extent::Mbr => "up to the end of the last MBR partition",
        }
    }
}

/// A captured master.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The image, now in the cache.
    pub outcome: ImportOutcome,
    /// The device's size.
    pub device_size: u64,
    /// Its logical sector size: the unit of its partition table, so a
    /// layout captured from a disk of 4096-byte sectors reads right only on
    /// disks of 4096-byte sectors.
    pub sector_size: u64,
    /// How much of it was read.
    pub extent: Extent,
    /// Its block map: generated from its file systems, or why there is none.
    pub map: MapNote,
}

/// The guard's policy for reading a master from the command line: usb
/// only (add buses with `allowed_buses`), any port, any size.
pub fn read_policy() -> GuardPolicy {
    GuardPolicy {
        allow_unmapped_ports: true,
        max_size_bytes: u64::MAX,
        ..GuardPolicy::default()
    }
}

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The guard's rules for reading refuse the device.
    #[error("{} cannot be captured: {}", device.display(), reasons.join("; "))]
    Refused {
        /// The device.
        device: PathBuf,
        /// Every rule it fails, in words.
        reasons: Vec<String>,
    },
    /// The device could not be inspected, opened or read.
    #[error("{}: {what}", device.display())]
    Device {
        /// The device.
        device: PathBuf,
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the device into the cache failed: the device ended early
    /// (pulled, shrunk), a read error, the cache's own trouble (no room),
    /// or the capture was cancelled. Nothing is kept.
    #[error("cannot capture {}", device.display())]
    Read {
        /// The device.
        device: PathBuf,
        /// Why.
        #[source]
        source: Box<flashrack_image::ImageError>,
    },
    /// Another disk answers under the name than the one judged.
    #[error("{} changed between the check and the open: not captured", device.display())]
    IdentityChanged {
        /// The device.
        device: PathBuf,
    },
    /// The name asked for is not a plain file name (the API's rule,
    /// `flashrack_web::captures::check_name`).
    #[error("cannot capture {}: {reason}", device.display())]
    BadName {
        /// The device.
        device: PathBuf,
        /// Why the name is refused.
        reason: String,
    },
    /// Without `--whole`, a partition table is needed to know where the
    /// master's data ends.
    #[error("{} has no partition table (MBR or GPT) with a partition: give --whole to capture all of it", device.display())]
    NoPartitionTable {
        /// The device.
        device: PathBuf,
    },
    /// Without `--whole`, a partition table that cannot say where the
    /// master's data ends: a GPT read from its backup (a capture up to the
    /// last partition would leave out the only good copy of the table), a
    /// partition that ends past the device's end.
    #[error("{} has a damaged partition table: {reason}: give --whole to capture all of it", device.display())]
    DamagedPartitionTable {
        /// The device.
        device: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn device_error(device: &Path, what: &str, source: io::Error) -> AppError {
    AppError::Capture(CaptureError::Device {
        device: device.to_path_buf(),
        what: what.to_string(),
        source,
    })
}

fn judge(request: &CaptureRequest, facts: &DiskFacts) -> Result<(), AppError> {
    let refusals = read_refusals(facts, &request.policy);
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(AppError::Capture(CaptureError::Refused {
            device: request.device.clone(),
            reasons: refusals.iter().map(ToString::to_string).collect(),
        }))
    }
}

/// Judges `request.device` by the guard's rules for reading, and checks that
/// it is the disk expected: what a capture checks before it opens the
/// device, for answering at once. Blocking (sysfs, the proc files).
pub fn check(request: &CaptureRequest) -> Result<DiskFacts, AppError> {
    let device = &request.device;
    let facts = DiskFacts::inspect(device)
        .map_err(|e| device_error(device, "cannot inspect it", io::Error::other(e.to_string())))?;
    if request
        .expected
        .is_some_and(|expected| expected != facts.identity())
    {
        return Err(AppError::Capture(CaptureError::IdentityChanged {
            device: device.clone(),
        }));
    }
    judge(request, &facts)?;
    Ok(facts)
}

/// Captures `request.device` into `cache`. Blocking: call it from a
/// blocking thread.
pub fn capture(cache: &ImageCache, request: &CaptureRequest) -> Result<Captured, AppError> {
    capture_with(cache, request, &mut |_, _| {})
}

/// [`capture`], telling `progress` the bytes read so far and the bytes to
/// read as it goes (every few MiB).
pub fn capture_with(
    cache: &ImageCache,
    request: &CaptureRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Captured, AppError> {
    let device = &request.device;
    // The name goes wherever images are shown (a terminal, the dashboard,
    // reports): a plain file name, as the API asks, from every caller.
    if let Some(name) = &request.name {
        flashrack_web::captures::check_name(name).map_err(|reason| {
            AppError::Capture(CaptureError::BadName {
                device: device.clone(),
                reason,
            })
        })?;
    }
    let facts = check(request)?;
    // Read-only, exclusive: the kernel refuses it if anything mounted it
    // meanwhile, and lets nobody mount it while it is open.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(device)
        .map_err(|e| device_error(device, "cannot open it exclusively (mounted or in use?)", e))?;
    let opened = DiskIdentity::of_file(&file, device).map_err(|e| {
        device_error(
            device,
            "cannot identify it",
            io::Error::other(e.to_string()),
        )
    })?;
    if opened != facts.identity() {
        return Err(AppError::Capture(CaptureError::IdentityChanged {
            device: device.clone(),
        }));
    }
    judge(
        request,
        &DiskFacts::of_opened(&file, device).map_err(|e| {
            device_error(device, "cannot inspect it", io::Error::other(e.to_string()))
        })?,
    )?;
    let device_size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| device_error(device, "cannot find its size", e))?;
    let sector_size = layout::sector_size(&file);
    let layout = if request.whole {
        Layout {
            extent: Extent::Whole,
            data_end: device_size,
            rebuilt: None,
        }
    } else {
        match layout::read_layout(&mut file, device_size, sector_size) {
            Ok(Some(layout)) => layout,
            Ok(None) => {
                return Err(AppError::Capture(CaptureError::NoPartitionTable {
                    device: device.clone(),
                }))
            }
            Err(reason) => {
                return Err(AppError::Capture(CaptureError::DamagedPartitionTable {
                    device: device.clone(),
                    reason,
                }))
            }
        }
    };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| device_error(device, "cannot read it", e))?;
    let name = request.name.clone().unwrap_or_else(|| {
        format!(
            "capture-{}.img",
            device
                .file_name()
                .map_or_else(|| "device".into(), |n| n.to_string_lossy())
        )
    });
    let origin = CaptureOrigin {
        port: request.port.clone(),
        serial: request.serial.clone(),
        device: device.display().to_string(),
        device_size,
        extent: layout.extent.describe().to_string(),
        sector_size: (sector_size != 512).then_some(sector_size),
    };
    let provenance = Arc::new(OnceLock::new());
    let _ = provenance.set(Provenance::captured(origin));
    let length = layout.image_size();
    let device_part = file.take(layout.data_end);
    let mut source: Box<dyn Read + '_> = match &layout.rebuilt {
        Some(gpt) => Box::new(Rebuilt::new(device_part, layout.data_end, gpt)),
        None => Box::new(device_part),
    };
    let mut reader = Exactly {
        inner: &mut source,
        left: length,
        total: length,
        told: 0,
        progress,
    };
    let outcome = cache
        .import_stream(
            &mut reader,
            StreamSource {
                label: device.display().to_string(),
                name,
                provenance,
                raw: true,
                ..StreamSource::new("", "")
            },
            ImportOptions {
                max_image_size: u64::MAX,
                cancel: request.cancel.clone(),
                ..ImportOptions::default()
            },
        )
        .map_err(|source| {
            AppError::Capture(CaptureError::Read {
                device: device.clone(),
                source: Box::new(source),
            })
        })?;
    // Like an import: a block map from its file systems, where flashrack
    // reads them (a capture it cannot map is still kept, and written whole).
    let map = map_image(cache, &outcome.image, None, None).unwrap_or_else(|error| {
        tracing::warn!(image = %outcome.image.sha256(), %error, "no block map for the capture");
        MapNote::None {
            reason: error.to_string(),
        }
    });
    Ok(Captured {
        outcome,
        device_size,
        sector_size,
        extent: layout.extent,
        map,
    })
}

/// How often (in bytes read) a capture reports its progress.
const PROGRESS_EVERY: u64 = 4 << 20;

/// Reads exactly `left` bytes: a device that ends sooner (pulled, shrunk)
/// is an error, never a shorter image. Tells `progress` as it goes.
struct Exactly<'p, R> {
    inner: R,
    left: u64,
    total: u64,
    told: u64,
    progress: &'p mut dyn FnMut(u64, u64),
}

impl<R: Read> Read for Exactly<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the device ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        let done = self.total - self.left;
        if done - self.told >= PROGRESS_EVERY || self.left == 0 {
            self.told = done;
            (self.progress)(done, self.total);
        }
        Ok(n)
    }
}

/// The smallest capacity among the sticks the records know, if any (to
/// say whether a capture fits the rack's sticks), leaving out the stick
/// whose key is `except` (the master itself: it was seen too).
pub async fn smallest_stick(data_dir: &Path, except: Option<&str>) -> Option<ByteSize> {
    use flashrack_store::Records;
    let store = crate::reports::open_read_only(data_dir, "station-1")
        .await
        .ok()?;
    let devices = store.device_summaries(100_000).await.ok()?;
    devices
        .iter()
        .filter(|d| Some(d.device.key.as_str()) != except)
        .map(|d| d.device.capacity)
        .filter(|c| c.bytes() > 0)
        .min_by_key(|c| c.bytes())
}

/// The station's captures for the web side (`flashrack_web::Captures`):
/// each is judged at once, then read on a blocking thread; its progress is
/// kept in memory for `GET /api/v1/images/captures`.
pub struct CaptureService {
    cache: ImageCache,
    data_dir: PathBuf,
    /// The station's guard policy (its allowed buses).
    policy: GuardPolicy,
    runtime: tokio::runtime::Handle,
    /// Raised at shutdown ([`CaptureService::cancel_all`]): captures in
    /// flight stop at their next chunk and keep nothing.
    cancel: Arc<AtomicBool>,
    /// Every capture started, oldest first. A `std` mutex: held only to copy
    /// or update a view, never across an await.
    views: Arc<std::sync::Mutex<Vec<CaptureView>>>,
    /// The station: a master being captured shows `capturing` with its
    /// progress, on the station's event stream.
    station: StationHandle,
}

/// The least time between two progress reports of a capture to the station
/// (the reader reports every chunk).
const STATION_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One capture as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct CaptureView {
    id: u64,
    port: String,
    serial: Option<String>,
    device: String,
    name: String,
    whole: bool,
    /// `capturing`, `done` or `failed`.
    state: &'static str,
    read: u64,
    total: Option<u64>,
    rate_bytes_per_sec: Option<u64>,
    eta_secs: Option<u64>,
    error: Option<String>,
    image: Option<Sha256Digest>,
    size: Option<u64>,
    device_size: Option<u64>,
    sector_size: Option<u64>,
    extent: Option<&'static str>,
    already_cached: Option<bool>,
    smallest_stick: Option<u64>,
    fits_smallest_stick: Option<bool>,
    block_map: Option<serde_json::Value>,
    #[serde(skip)]
    started: std::time::Instant,
}

impl CaptureView {
    fn follow(&mut self, read: u64, total: u64) {
        self.read = read;
        self.total = Some(total);
        let secs = self.started.elapsed().as_secs_f64();
        if secs >= 0.5 && read > 0 {
            let rate = read as f64 / secs;
            self.rate_bytes_per_sec = Some(rate as u64);
            self.eta_secs = Some((total.saturating_sub(read) as f64 / rate).ceil() as u64);
        }
    }
}

impl CaptureService {
    /// Captures into `cache` under the station's guard `policy` (its allowed
    /// buses); the records in `data_dir` give the smallest stick seen.
    /// Tasks run on the current tokio runtime.
    pub fn new(
        cache: ImageCache,
        data_dir: PathBuf,
        policy: GuardPolicy,
        station: StationHandle,
    ) -> Self {
        Self {
            cache,
            data_dir,
            policy,
            runtime: tokio::runtime::Handle::current(),
            cancel: Arc::default(),
            views: Arc::default(),
            station,
        }
    }

    /// Abandons every capture in flight (shutdown): nothing of them is kept.
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn update(
        views: &std::sync::Mutex<Vec<CaptureView>>,
        id: u64,
        f: impl FnOnce(&mut CaptureView),
    ) {
        let mut views = views.lock().expect("no panic while held");
        if let Some(view) = views.iter_mut().find(|v| v.id == id) {
            f(view);
        }
    }

    async fn start_capture(
        &self,
        start: flashrack_web::CaptureStart,
    ) -> Result<serde_json::Value, String> {
        let device = start.master.device;
        let label = start.master.label;
        // This capture's own stop: raised at shutdown, or when its master
        // leaves the port (pulled mid-capture: a stick that is gone is not
        // read to the end, whatever its device node still answers).
        let stop = Arc::new(AtomicBool::new(false));
        let request = CaptureRequest {
            device: device.dev_path.clone(),
            name: Some(start.name.clone()),
            whole: start.whole,
            policy: GuardPolicy {
                // The master port is the station's own; its size is no limit.
                allow_unmapped_ports: true,
                max_size_bytes: u64::MAX,
                ..self.policy.clone()
            },
            port: Some(label.clone()),
            serial: device.identity.serial.clone(),
            expected: device.disk,
            cancel: Some(stop.clone()),
        };
        if self.cancel.load(Ordering::Relaxed) {
            return Err("the station is shutting down".into());
        }
        // Judged now, so that a mounted master is refused to the operator's
        // face rather than in a list later.
        let checked = tokio::task::spawn_blocking({
            let request = request.clone();
            move || check(&request).map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())?;
        checked.map_err(|error| error_chain(&error))?;
        let view = {
            let mut views = self.views.lock().expect("no panic while held");
            if let Some(busy) = views.iter().find(|v| {
                v.state == "capturing" && v.device == device.dev_path.display().to_string()
            }) {
                return Err(format!(
                    "the master in port {} is being captured already (capture {})",
                    busy.port, busy.id
                ));
            }
            let view = CaptureView {
                id: views.len() as u64 + 1,
                port: label,
                serial: device.identity.serial.clone(),
                device: device.dev_path.display().to_string(),
                name: start.name,
                whole: start.whole,
                state: "capturing",
                read: 0,
                total: None,
                rate_bytes_per_sec: None,
                eta_secs: None,
                error: None,
                image: None,
                size: None,
                device_size: None,
                sector_size: None,
                extent: None,
                already_cached: None,
                smallest_stick: None,
                fits_smallest_stick: None,
                block_map: None,
                started: std::time::Instant::now(),
            };
            views.push(view.clone());
            view
        };
        let id = view.id;
        let (views, cache, data_dir) = (
            self.views.clone(),
            self.cache.clone(),
            self.data_dir.clone(),
        );
        let master_key = device.identity.key();
        let station = self.station.clone();
        let port = view.port.clone();
        // The port shows `capturing` from now on (nothing read yet).
        station
            .capture_progress(&port, &master_key, Some(Progress::default()))
            .await;
        let runtime = self.runtime.clone();
        let shutdown = self.cancel.clone();
        let pulled = Arc::new(AtomicBool::new(false));
        self.runtime.spawn(async move {
            let captured = tokio::task::spawn_blocking({
                let (views, station, port, key) = (
                    views.clone(),
                    station.clone(),
                    port.clone(),
                    master_key.clone(),
                );
                let (stop, pulled) = (stop.clone(), pulled.clone());
                move || {
                    let mut last_sent: Option<std::time::Instant> = None;
                    capture_with(&cache, &request, &mut |read, total| {
                        if shutdown.load(Ordering::Relaxed) {
                            stop.store(true, Ordering::Relaxed);
                        }
                        let mut progress = Progress::default();
                        Self::update(&views, id, |view| {
                            view.follow(read, total);
                            progress = Progress {
                                done: read,
                                total,
                                bytes_per_sec: view.rate_bytes_per_sec.unwrap_or(0) as f64,
                            };
                        });
                        // Throttled: the reader reports every chunk.
                        let due = last_sent.is_none_or(|at| at.elapsed() >= STATION_PROGRESS_EVERY);
                        if due || read >= total {
                            last_sent = Some(std::time::Instant::now());
                            // The master still in its port? The station
                            // saw it go (a pull): stopped, nothing kept.
                            let present = station.snapshot().ports.iter().any(|p| {
                                p.label == port && p.device.as_ref().is_some_and(|d| d.key == key)
                            });
                            if !present {
                                pulled.store(true, Ordering::Relaxed);
                                stop.store(true, Ordering::Relaxed);
                            }
                            runtime.block_on(station.capture_progress(&port, &key, Some(progress)));
                        }
                    })
                }
            })
            .await;
            let captured = match captured {
                // (Read whole before the pull was seen, it is whole: kept.)
                Ok(Err(_)) if pulled.load(Ordering::Relaxed) => Err(format!(
                    "the master was pulled from port {port} during its capture: nothing of it \
                     was kept"
                )),
                Ok(result) => result.map_err(|error| error_chain(&error)),
                Err(join) => Err(format!("the capture stopped: {join}")),
            };
            match captured {
                Ok(captured) => {
                    let image = &captured.outcome.image;
                    let smallest = smallest_stick(&data_dir, Some(&master_key)).await;
                    tracing::info!(capture = id, image = %image.sha256(), size = image.size(), "master captured");
                    Self::update(&views, id, |view| {
                        view.state = "done";
                        view.image = Some(image.sha256());
                        view.size = Some(image.size());
                        view.read = view.total.unwrap_or(image.size());
                        view.eta_secs = None;
                        view.device_size = Some(captured.device_size);
                        view.sector_size = Some(captured.sector_size);
                        view.extent = Some(captured.extent.describe());
                        view.already_cached = Some(captured.outcome.already_cached());
                        view.smallest_stick = smallest.map(|s| s.bytes());
                        view.fits_smallest_stick = smallest.map(|s| image.size() <= s.bytes());
                        view.block_map = Some(map_note_json(&captured.map));
                    });
                }
                Err(error) => {
                    tracing::warn!(capture = id, %error, "capture failed");
                    Self::update(&views, id, |view| {
                        view.state = "failed";
                        view.eta_secs = None;
                        view.error = Some(error);
                    });
                }
            }
            // Ended after its view says how: a dashboard that sees the port
            // leave `capturing` reads the result.
            station.capture_progress(&port, &master_key, None).await;
        });
        serde_json::to_value(&view).map_err(|e| e.to_string())
    }
}

impl flashrack_web::Captures for CaptureService {
    fn start(
        &self,
        request: flashrack_web::CaptureStart,
    ) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(self.start_capture(request))
    }

    fn list(&self) -> serde_json::Value {
        let views = self.views.lock().expect("no panic while held");
        serde_json::to_value(views.iter().rev().collect::<Vec<_>>()).unwrap_or_default()
    }
}

/// A capture's block map as JSON: what became of it, and its coverage.
pub fn map_note_json(note: &MapNote) -> serde_json::Value {
    match note {
        MapNote::Attached(map)
        | MapNote::Known(map)
        | MapNote::Kept(map)
        | MapNote::Generated(map) => {
            let status = match note {
                MapNote::Attached(_) => "attached",
                MapNote::Known(_) => "known",
                MapNote::Kept(_) => "kept",
                _ => "generated",
            };
            serde_json::json!({"status": status, "info": map.info()})
        }
        MapNote::Refused { file, reason } => {
            serde_json::json!({"status": "refused", "file": file, "reason": reason})
        }
        MapNote::None { reason } => serde_json::json!({"status": "none", "reason": reason}),
    }
}
