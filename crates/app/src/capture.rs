//! Capturing a master stick into the image cache (`flashrack image
//! capture`): the device is judged by the guard's rules for reading (a whole
//! disk on an allowed bus, nothing of it mounted, used as swap or held, not a
//! system disk), opened read-only and exclusively (`O_EXCL`: the kernel
//! refuses it while mounted, and nobody can mount it while it is read),
//! checked to be the disk that was judged, and read once into the cache's
//! single pass (digests, sparse store) like any import. By default it is read
//! up to the end of its last partition (the partition table read with
//! `gptman` for GPT and `mbrman` for MBR); `whole` reads all of it.
//! Nothing is ever written to it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use flashrack_core::ByteSize;
use flashrack_guard::{read_refusals, DiskFacts, DiskIdentity, GuardPolicy};
use flashrack_image::{ImageCache, ImportOptions, ImportOutcome, StreamSource};

use crate::AppError;

/// What to capture.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    /// The master's block device (`/dev/sdX`).
    pub device: PathBuf,
    /// The name the image is kept under (default: `capture-<device>.img`).
    pub name: Option<String>,
    /// Read the whole device rather than up to the end of its last partition.
    pub whole: bool,
    /// The station's guard policy (its allowed buses).
    pub policy: GuardPolicy,
}

/// How much of the device was read, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// All of it (`--whole`).
    Whole,
    /// Up to the end of the last partition of its GPT.
    Gpt,
    /// Up to the end of the last partition of its MBR.
    Mbr,
}

impl Extent {
    /// The words for people.
    pub fn describe(self) -> &'static str {
        match self {
            Extent::Whole => "the whole device",
            Extent::Gpt => "up to the end of the last GPT partition",
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
    /// How much of it was read.
    pub extent: Extent,
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
    /// Another disk answers under the name than the one judged.
    #[error("{} changed between the check and the open: not captured", device.display())]
    IdentityChanged {
        /// The device.
        device: PathBuf,
    },
    /// Without `--whole`, a partition table is needed to know where the
    /// master's data ends.
    #[error("{} has no partition table (MBR or GPT) with a partition: give --whole to capture all of it", device.display())]
    NoPartitionTable {
        /// The device.
        device: PathBuf,
    },
}

fn device_error(device: &Path, what: &str, source: io::Error) -> AppError {
    AppError::Capture(CaptureError::Device {
        device: device.to_path_buf(),
        what: what.to_string(),
        source,
    })
}

/// Captures `request.device` into `cache`. Blocking: call it from a
/// blocking thread.
pub fn capture(cache: &ImageCache, request: &CaptureRequest) -> Result<Captured, AppError> {
    let device = &request.device;
    let judge = |facts: &DiskFacts| -> Result<(), AppError> {
        let refusals = read_refusals(facts, &request.policy);
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(AppError::Capture(CaptureError::Refused {
                device: device.clone(),
                reasons: refusals.iter().map(ToString::to_string).collect(),
            }))
        }
    };
    let facts = DiskFacts::inspect(device)
        .map_err(|e| device_error(device, "cannot inspect it", io::Error::other(e.to_string())))?;
    judge(&facts)?;
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
    judge(&DiskFacts::of_opened(&file, device).map_err(|e| {
        device_error(device, "cannot inspect it", io::Error::other(e.to_string()))
    })?)?;
    let device_size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| device_error(device, "cannot find its size", e))?;
    let (extent, length) = if request.whole {
        (Extent::Whole, device_size)
    } else {
        match partitions_end(&mut file) {
            Some((extent, end)) => (extent, end.min(device_size)),
            None => {
                return Err(AppError::Capture(CaptureError::NoPartitionTable {
                    device: device.clone(),
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
    let mut reader = Exactly {
        inner: file.take(length),
        left: length,
    };
    let outcome = cache
        .import_stream(
            &mut reader,
            StreamSource {
                label: device.display().to_string(),
                name,
                provenance: Arc::new(OnceLock::new()),
                raw: true,
            },
            ImportOptions {
                max_image_size: u64::MAX,
                ..ImportOptions::default()
            },
        )
        .map_err(|source| AppError::Import {
            name: device.display().to_string(),
            source: Box::new(source),
        })?;
    Ok(Captured {
        outcome,
        device_size,
        extent,
    })
}

/// Reads exactly `left` bytes: a device that ends sooner (pulled, shrunk)
/// is an error, never a shorter image.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the device ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Where the last partition ends, in bytes, from a GPT (first) or an MBR.
fn partitions_end(file: &mut File) -> Option<(Extent, u64)> {
    if file.seek(SeekFrom::Start(0)).is_ok() {
        if let Ok(gpt) = gptman::GPT::find_from(file) {
            let end = gpt
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(_, p)| (p.ending_lba + 1) * gpt.sector_size)
                .max();
            if let Some(end) = end {
                return Some((Extent::Gpt, end));
            }
        }
    }
    file.seek(SeekFrom::Start(0)).ok()?;
    let mbr = mbrman::MBR::read_from(file, 512).ok()?;
    let primary = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| (u64::from(p.starting_lba) + u64::from(p.sectors)) * 512);
    let logical = mbr
        .logical_partitions
        .iter()
        .map(|l| (u64::from(l.partition.starting_lba) + u64::from(l.partition.sectors)) * 512);
    primary.chain(logical).max().map(|end| (Extent::Mbr, end))
}

/// The smallest capacity among the sticks the records know, if any (to
/// say whether a capture fits the rack's sticks).
pub async fn smallest_stick(data_dir: &Path) -> Option<ByteSize> {
    use flashrack_store::Records;
    let store = crate::reports::open_read_only(data_dir, "station-1")
        .await
        .ok()?;
    let devices = store.device_summaries(100_000).await.ok()?;
    devices
        .iter()
        .map(|d| d.device.capacity)
        .filter(|c| c.bytes() > 0)
        .min_by_key(|c| c.bytes())
}
