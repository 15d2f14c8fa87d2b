//! The rules: which disks may be written, as pure functions of the facts, the
//! station's policy and the attempt's request. Nothing here reads the system.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use flashrack_core::{ByteSize, GuardRefusal, RefusalCode};

use crate::facts::{BackingFile, DiskFacts, DiskIdentity};
use crate::GuardError;

/// Who knows which files flashrack keeps (its image cache's files, the raw
/// images the cache reads in place, its records): a loop device over one of
/// them is never written, since writing it would corrupt what the cache or the
/// records hold. The application answers from its image cache; the guard asks
/// only about a loop device's backing file.
pub trait FileKeeper: Send + Sync {
    /// What `file` is to flashrack, when it keeps it: a phrase the refusal's
    /// sentence ends with ("the cached image 1a2b3c4d5e6f (ubuntu.img), which
    /// the cache reads in place"); `None` for a file it does not keep.
    fn keeps(&self, file: &BackingFile) -> Option<String>;
}

/// The policy's [`FileKeeper`], if any (none: no file is protected beyond the
/// other rules). Two policies are equal when they ask the same keeper.
#[derive(Clone, Default)]
pub struct ProtectedFiles(Option<Arc<dyn FileKeeper>>);

impl ProtectedFiles {
    /// Files `keeper` keeps are protected.
    pub fn new(keeper: Arc<dyn FileKeeper>) -> Self {
        ProtectedFiles(Some(keeper))
    }

    /// What `file` is to the keeper, when it keeps it.
    pub fn keeps(&self, file: &BackingFile) -> Option<String> {
        self.0.as_ref().and_then(|keeper| keeper.keeps(file))
    }
}

impl PartialEq for ProtectedFiles {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ProtectedFiles {}

impl fmt::Debug for ProtectedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "ProtectedFiles(keeper)",
            None => "ProtectedFiles(none)",
        })
    }
}

/// The default size limit: 256 GB (decimal). Bigger is probably a USB hard disk.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 256_000_000_000;

/// The station's standing rules for what may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Buses whose disks may be written; `{"usb"}` by default. Name `loop` here to
    /// write loop devices (tests).
    pub allowed_buses: BTreeSet<String>,
    /// Largest device that may be written, in bytes; [`DEFAULT_MAX_SIZE_BYTES`] by
    /// default.
    pub max_size_bytes: u64,
    /// Whether devices in ports missing from [`mapped_ports`](Self::mapped_ports)
    /// (or whose port is unknown) may be written; `false` by default.
    pub allow_unmapped_ports: bool,
    /// Port paths (udev `ID_PATH`) that the configuration maps to labels.
    pub mapped_ports: BTreeSet<String>,
    /// Files no loop device over which may be written (rule 4: the image
    /// cache's files and the raw images it references); none by default.
    pub protected_files: ProtectedFiles,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            allowed_buses: BTreeSet::from(["usb".to_owned()]),
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            allow_unmapped_ports: false,
            mapped_ports: BTreeSet::new(),
            protected_files: ProtectedFiles::default(),
        }
    }
}

/// What one attempt asks of the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardRequest {
    /// Size of the image to be written, in bytes.
    pub image_size: u64,
    /// Whether a run is armed (auto-start).
    pub armed_run: bool,
    /// Whether the operator asked for this very device.
    pub explicit_operator_request: bool,
}

/// Proof that the guard accepted a device, and on whose authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// What allowed the write under rule 6.
    pub authorized_by: Authorization,
}

/// What allowed a write under rule 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// The operator asked for this device (reported even when a run is also armed).
    Operator,
    /// A run is armed and writes every accepted device (auto-start).
    ArmedRun,
}

/// Why the guard refused a device. `Display` is the sentence for the operator and
/// the record; [`code`](Refusal::code) is a stable name for filtering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Rule 1: a partition, not a whole disk.
    #[error("{device} is a partition{}, not a whole disk", disk.as_ref().map(|d| format!(" of {d}")).unwrap_or_default())]
    NotWholeDisk {
        /// Kernel name of the partition.
        device: String,
        /// Kernel name of its disk, when known.
        disk: Option<String>,
    },
    /// Rule 1: on a bus the configuration does not allow.
    #[error("the device is on the {bus} bus, which the configuration does not allow")]
    BusNotAllowed {
        /// The device's bus, `unknown` when it could not be told.
        bus: String,
    },
    /// Rule 2: the port is not mapped and unmapped ports are not allowed.
    #[error("{}", match port {
        Some(port) => format!("port {port} is not mapped in the configuration"),
        None => "the device's port is unknown and the configuration does not allow unmapped ports".to_owned(),
    })]
    PortNotMapped {
        /// The port path, `None` when unknown.
        port: Option<String>,
    },
    /// Rule 3: the device or one of its partitions is mounted.
    #[error("{what} is mounted at {mount_point}")]
    Mounted {
        /// Kernel name of what is mounted.
        what: String,
        /// Where.
        mount_point: String,
    },
    /// Rule 3: the device, a partition or a stack on it is used as swap.
    #[error("{what} is in use as swap")]
    Swap {
        /// The swap area as `/proc/swaps` names it.
        what: String,
    },
    /// Rule 3: other devices (device-mapper, md…) are stacked on it.
    #[error("the device is held by {}", holders.join(", "))]
    Held {
        /// The holders, as `"dm-0 on sdb1"`.
        holders: Vec<String>,
    },
    /// Rule 4: a mounted filesystem lives on this disk.
    #[error("this is a system disk: it {why}")]
    SystemDisk {
        /// Why, e.g. `"holds / (mounted from vda)"`.
        why: String,
    },
    /// Rule 4: a loop device over a file flashrack keeps (a cached image, a
    /// raw image the cache reads in place, its records), or a device stacked
    /// over such a loop device (a partition of it, device-mapper, md):
    /// writing the device would corrupt that file.
    #[error("{}, {what}: writing it would corrupt that file", match via {
        None => format!("{device} is a loop device over {}", file.display()),
        Some(loop_device) => format!("{device} lies over loop device {loop_device}, which is over {}", file.display()),
    })]
    ProtectedFile {
        /// Kernel name of the device judged.
        device: String,
        /// The loop device under it, when it is not the device itself (a
        /// partition's disk, the bottom of a dm or md stack).
        via: Option<String>,
        /// The backing file, as the kernel names it (its device and inode
        /// are what was compared).
        file: PathBuf,
        /// What the file is to flashrack.
        what: String,
    },
    /// A loop device over a block device (`losetup /dev/loop5 /dev/sdb`, over
    /// a partition, over another loop device), or a device stacked over such
    /// a loop device, where the guard refuses the device below: writing the
    /// loop device writes it. `reason` is the guard's refusal of the device
    /// below as if it were written itself (every rule but the run's: rules
    /// 1 to 5 with no image size), which may itself be one of these when the
    /// device below is again a loop device over a block device. Its code is
    /// `reason`'s.
    #[error("{}: {reason}", match via {
        None => format!("{device} is a loop device over block device {below}"),
        Some(loop_device) => format!("{device} lies over loop device {loop_device}, which is over block device {below}"),
    })]
    Below {
        /// Kernel name of the device judged.
        device: String,
        /// The loop device under it, when it is not the device itself.
        via: Option<String>,
        /// Kernel name of the block device behind the loop device.
        below: String,
        /// Why the guard refuses that device.
        reason: Box<Refusal>,
    },
    /// Rule 5: bigger than the configured maximum.
    #[error("the device is too large: {} is more than the maximum of {}", bytes(*size), bytes(*max))]
    TooLarge {
        /// The device's size in bytes.
        size: u64,
        /// The configured maximum in bytes.
        max: u64,
    },
    /// Rule 5: smaller than the image.
    #[error("the device is too small: {} is less than the image's {}", bytes(*size), bytes(*needed))]
    TooSmall {
        /// The device's size in bytes.
        size: u64,
        /// The image's size in bytes.
        needed: u64,
    },
    /// Rule 5: the device reports a size of zero: it holds no medium (a card
    /// reader without a card), which is not the same as a small stick.
    #[error("the device holds no medium (it reports a size of 0 bytes)")]
    NoMedium,
    /// Rule 6: no run is armed and the operator did not ask for this device.
    #[error("no run is armed and the operator did not ask for this device")]
    NotArmed,
    /// The device that was opened is not the one that was judged: its name now
    /// leads to another disk (another stick under the same name, a loop device
    /// attached to another file). Produced by the opener, not by [`evaluate`].
    #[error("the device is not the one that was checked: its name now leads to {found}, not {expected} (another disk took its name)")]
    IdentityChanged {
        /// The disk that was checked (pinned when it was first seen).
        expected: DiskIdentity,
        /// The disk behind the name, or behind the opened descriptor.
        found: DiskIdentity,
    },
    /// The exclusive open failed (`EBUSY`): something this guard cannot see holds the
    /// device. Produced by the opener, not by [`evaluate`].
    #[error("the device is busy: {detail}")]
    Busy {
        /// What the opener knows (the OS error).
        detail: String,
    },
    /// The facts the rules need could not be gathered ([`GuardError`] other than a
    /// refusal), so the guard does not write: it fails closed. Produced by callers
    /// that inspect and evaluate in one step, not by [`evaluate`].
    #[error("cannot inspect the device: {detail}")]
    CannotInspect {
        /// Why inspection failed.
        detail: String,
    },
}

impl Refusal {
    /// The kind of refusal, as the stable code records and reports carry.
    pub fn kind(&self) -> RefusalCode {
        match self {
            Refusal::NotWholeDisk { .. } => RefusalCode::NotWholeDisk,
            Refusal::BusNotAllowed { .. } => RefusalCode::BusNotAllowed,
            Refusal::PortNotMapped { .. } => RefusalCode::PortNotMapped,
            Refusal::Mounted { .. } => RefusalCode::Mounted,
            Refusal::Swap { .. } => RefusalCode::Swap,
            Refusal::Held { .. } => RefusalCode::Held,
            Refusal::SystemDisk { .. } => RefusalCode::SystemDisk,
            Refusal::ProtectedFile { .. } => RefusalCode::ProtectedFile,
            Refusal::Below { reason, .. } => reason.kind(),
            Refusal::TooLarge { .. } => RefusalCode::TooLarge,
            Refusal::TooSmall { .. } => RefusalCode::TooSmall,
            Refusal::NoMedium => RefusalCode::NoMedium,
            Refusal::NotArmed => RefusalCode::NotArmed,
            Refusal::IdentityChanged { .. } => RefusalCode::IdentityChanged,
            Refusal::Busy { .. } => RefusalCode::Busy,
            Refusal::CannotInspect { .. } => RefusalCode::CannotInspect,
        }
    }

    /// A stable snake_case name for the kind of refusal (`"mounted"`, `"too_large"`…):
    /// [`kind`](Self::kind) as text.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The refusal as it travels beyond the guard: its code and its sentence.
    pub fn to_record(&self) -> GuardRefusal {
        GuardRefusal {
            code: self.kind(),
            message: self.to_string(),
        }
    }
}

impl From<Refusal> for GuardRefusal {
    fn from(refusal: Refusal) -> Self {
        refusal.to_record()
    }
}

impl From<GuardError> for Refusal {
    /// A refusal stays itself; any other failure to decide is
    /// [`Refusal::CannotInspect`]: the guard fails closed.
    fn from(error: GuardError) -> Self {
        match error {
            GuardError::Refused(refusal) => refusal,
            other => Refusal::CannotInspect {
                detail: other.to_string(),
            },
        }
    }
}

/// A byte count for people: `"67.1 MB (67108864 bytes)"`, the one notation of
/// sizes with the exact count beside it (a limit is compared to the byte).
fn bytes(n: u64) -> String {
    ByteSize(n).exact().to_string()
}

/// Every rule that `facts` fail, in rule order (empty when the device is accepted).
pub fn refusals(facts: &DiskFacts, policy: &GuardPolicy, request: &GuardRequest) -> Vec<Refusal> {
    let mut out = Vec::new();

    // Rule 1. An unknown bus is never allowed, whatever the policy names.
    if facts.is_partition {
        out.push(Refusal::NotWholeDisk {
            device: facts.kernel_name.clone(),
            disk: facts.parent_disk.clone(),
        });
    }
    let bus_allowed = facts
        .bus
        .as_ref()
        .is_some_and(|bus| policy.allowed_buses.contains(bus));
    if !bus_allowed {
        out.push(Refusal::BusNotAllowed {
            bus: facts.bus.clone().unwrap_or_else(|| "unknown".to_owned()),
        });
    }

    // Rule 2.
    let port_mapped = facts
        .port_path
        .as_ref()
        .is_some_and(|port| policy.mapped_ports.contains(port));
    if !port_mapped && !policy.allow_unmapped_ports {
        out.push(Refusal::PortNotMapped {
            port: facts.port_path.clone(),
        });
    }

    // Rule 3.
    out.extend(facts.mounted.iter().map(|m| Refusal::Mounted {
        what: m.device.clone(),
        mount_point: m.mount_point.clone(),
    }));
    out.extend(
        facts
            .swap
            .iter()
            .map(|what| Refusal::Swap { what: what.clone() }),
    );
    if !facts.holders.is_empty() {
        out.push(Refusal::Held {
            holders: facts.holders.clone(),
        });
    }

    // Rule 4.
    if let Some(why) = &facts.system_disk {
        out.push(Refusal::SystemDisk { why: why.clone() });
    }
    // Rule 4 also covers what flashrack itself reads: a loop device over a
    // cached image (or the raw image the cache references in place), or a
    // device stacked over one, would overwrite the image the other targets
    // are written from.
    for backing in &facts.loop_backings {
        if let Some(what) = policy.protected_files.keeps(&backing.file) {
            out.push(Refusal::ProtectedFile {
                device: facts.kernel_name.clone(),
                via: (backing.loop_device != facts.kernel_name)
                    .then(|| backing.loop_device.clone()),
                file: backing.file.path.clone(),
                what,
            });
        }
    }

    // Every rule also for what a loop device writes when its "file" is a
    // block device: a loop device over a mounted disk, a partition of the
    // system disk, a USB disk on an unmapped port or a loop device over a
    // kept file would otherwise be written through it. The run's own rules
    // (an image's size, rule 6) are the loop device's, judged above and
    // below.
    for backing in &facts.loop_backings {
        let Some(below) = &backing.below else {
            continue;
        };
        let as_written = GuardRequest {
            image_size: 0,
            armed_run: false,
            explicit_operator_request: true,
        };
        for reason in refusals(below, policy, &as_written) {
            out.push(Refusal::Below {
                device: facts.kernel_name.clone(),
                via: (backing.loop_device != facts.kernel_name)
                    .then(|| backing.loop_device.clone()),
                below: below.kernel_name.clone(),
                reason: Box::new(reason),
            });
        }
    }

    // Rule 5.
    if facts.size_bytes > policy.max_size_bytes {
        out.push(Refusal::TooLarge {
            size: facts.size_bytes,
            max: policy.max_size_bytes,
        });
    }
    if facts.size_bytes == 0 {
        out.push(Refusal::NoMedium);
    } else if facts.size_bytes < request.image_size {
        out.push(Refusal::TooSmall {
            size: facts.size_bytes,
            needed: request.image_size,
        });
    }

    // Rule 6.
    if !request.armed_run && !request.explicit_operator_request {
        out.push(Refusal::NotArmed);
    }
    out
}

/// Every rule that `facts` fail for *reading* the whole device (capturing a
/// master stick into an image), in rule order: it must be a whole disk on an
/// allowed bus (rule 1), none of it mounted, used as swap or held (rule 3),
/// not a disk that holds a mounted file system (rule 4), and have a medium.
/// A mounted master would be read while it changes; the station never writes
/// it (the reader opens it read-only), so ports, sizes and runs do not matter.
pub fn read_refusals(facts: &DiskFacts, policy: &GuardPolicy) -> Vec<Refusal> {
    let relaxed = GuardPolicy {
        allow_unmapped_ports: true,
        max_size_bytes: u64::MAX,
        // Reading a loop device over a kept file harms nothing.
        protected_files: ProtectedFiles::default(),
        ..policy.clone()
    };
    let request = GuardRequest {
        image_size: 0,
        armed_run: false,
        explicit_operator_request: true,
    };
    refusals(facts, &relaxed, &request)
}

/// Decides whether the device described by `facts` may be written: accepted, or
/// refused for the first failing rule in rule order (see the module docs).
pub fn evaluate(
    facts: &DiskFacts,
    policy: &GuardPolicy,
    request: &GuardRequest,
) -> Result<Accepted, Refusal> {
    match refusals(facts, policy, request).into_iter().next() {
        Some(refusal) => Err(refusal),
        None => Ok(Accepted {
            authorized_by: if request.explicit_operator_request {
                Authorization::Operator
            } else {
                Authorization::ArmedRun
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::test_support::{armed, healthy, policy, refused};
    use crate::{LoopBacking, MountUse};

    #[test]
    fn a_healthy_usb_disk_in_a_mapped_port_is_accepted_under_an_armed_run() {
        let accepted = evaluate(&healthy(), &policy(), &armed(1_000_000)).unwrap();
        assert_eq!(accepted.authorized_by, Authorization::ArmedRun);
    }

    #[test]
    fn an_explicit_operator_request_authorizes_without_an_armed_run() {
        let request = GuardRequest {
            image_size: 1,
            armed_run: false,
            explicit_operator_request: true,
        };
        let accepted = evaluate(&healthy(), &policy(), &request).unwrap();
        assert_eq!(accepted.authorized_by, Authorization::Operator);
    }

    #[test]
    fn default_policy_allows_only_usb_mapped_ports_and_256_gb() {
        let p = GuardPolicy::default();
        assert_eq!(p.allowed_buses, BTreeSet::from(["usb".to_owned()]));
        assert_eq!(p.max_size_bytes, 256_000_000_000);
        assert!(!p.allow_unmapped_ports);
        assert!(p.mapped_ports.is_empty());
    }

    /// A keeper of one file, by device and inode.
    struct OneFile((u64, u64));

    impl FileKeeper for OneFile {
        fn keeps(&self, file: &BackingFile) -> Option<String> {
            (file.file == Some(self.0)).then(|| "the image 1a2b3c4d5e6f (x.img)".to_owned())
        }
    }

    fn backing(loop_device: &str, file: (u64, u64)) -> LoopBacking {
        LoopBacking {
            loop_device: loop_device.to_owned(),
            file: BackingFile {
                path: PathBuf::from("/srv/x.img"),
                file: Some(file),
                deleted: false,
                from_loop_status: true,
            },
            below: None,
        }
    }

    fn loop_over(file: (u64, u64)) -> DiskFacts {
        DiskFacts {
            kernel_name: "loop4".to_owned(),
            bus: Some("loop".to_owned()),
            loop_backings: vec![backing("loop4", file)],
            ..healthy()
        }
    }

    #[test]
    fn a_loop_device_over_a_kept_file_is_refused_as_a_protected_file_and_no_other_is() {
        let mut p = policy();
        p.allowed_buses.insert("loop".to_owned());
        let operator = GuardRequest {
            image_size: 1,
            armed_run: false,
            explicit_operator_request: true,
        };
        // Without a keeper, or over a file it does not keep: written.
        assert!(evaluate(&loop_over((1, 2)), &p, &operator).is_ok());
        p.protected_files = ProtectedFiles::new(Arc::new(OneFile((1, 2))));
        assert!(evaluate(&loop_over((1, 3)), &p, &operator).is_ok());
        // Over the kept file: refused, whoever asks, with the keeper's words.
        for request in [operator, armed(1)] {
            let refusal = refused(&loop_over((1, 2)), &p, &request);
            assert_eq!(refusal.kind(), RefusalCode::ProtectedFile);
            assert_eq!(refusal.code(), "protected_file");
            assert_eq!(
                refusal.to_string(),
                "loop4 is a loop device over /srv/x.img, the image 1a2b3c4d5e6f (x.img): \
                 writing it would corrupt that file"
            );
        }
        // Reading it (a capture) harms nothing.
        assert_eq!(read_refusals(&loop_over((1, 2)), &p), Vec::new());
        // Two policies asking one keeper are equal; another keeper is not.
        assert_eq!(p.clone(), p);
        let other = GuardPolicy {
            protected_files: ProtectedFiles::new(Arc::new(OneFile((1, 2)))),
            ..p.clone()
        };
        assert_ne!(other, p);
    }

    #[test]
    fn a_device_stacked_over_a_loop_device_over_a_kept_file_is_refused_naming_the_loop_device() {
        let mut p = policy();
        p.allowed_buses
            .extend(["loop".to_owned(), "virtual".to_owned()]);
        p.protected_files = ProtectedFiles::new(Arc::new(OneFile((1, 2))));
        // dm-0 over loop4 (kept) and loop5 (not kept): refused once, for loop4.
        let dm = DiskFacts {
            kernel_name: "dm-0".to_owned(),
            bus: Some("virtual".to_owned()),
            loop_backings: vec![backing("loop4", (1, 2)), backing("loop5", (1, 3))],
            ..healthy()
        };
        assert_eq!(
            refusals(&dm, &p, &armed(1)),
            vec![Refusal::ProtectedFile {
                device: "dm-0".to_owned(),
                via: Some("loop4".to_owned()),
                file: PathBuf::from("/srv/x.img"),
                what: "the image 1a2b3c4d5e6f (x.img)".to_owned(),
            }]
        );
        assert_eq!(
            refused(&dm, &p, &armed(1)).to_string(),
            "dm-0 lies over loop device loop4, which is over /srv/x.img, the image \
             1a2b3c4d5e6f (x.img): writing it would corrupt that file"
        );
        // Over loop5 alone: written.
        let over_other = DiskFacts {
            loop_backings: vec![backing("loop5", (1, 3))],
            ..dm.clone()
        };
        assert!(evaluate(&over_other, &p, &armed(1)).is_ok());
        // A partition of the kept loop device: not a whole disk, and over a
        // kept file.
        let partition = DiskFacts {
            kernel_name: "loop4p1".to_owned(),
            is_partition: true,
            parent_disk: Some("loop4".to_owned()),
            bus: Some("loop".to_owned()),
            loop_backings: vec![backing("loop4", (1, 2))],
            ..healthy()
        };
        let codes: Vec<RefusalCode> = refusals(&partition, &p, &armed(1))
            .iter()
            .map(Refusal::kind)
            .collect();
        assert_eq!(
            codes,
            [RefusalCode::NotWholeDisk, RefusalCode::ProtectedFile]
        );
    }

    #[test]
    fn a_master_is_read_only_whole_unmounted_and_on_an_allowed_bus() {
        // Too large to write, in an unmapped port, no run armed: readable.
        let facts = DiskFacts {
            size_bytes: 2_000_000_000_000,
            port_path: None,
            ..healthy()
        };
        assert_eq!(read_refusals(&facts, &policy()), Vec::new());
        let mounted = DiskFacts {
            mounted: vec![MountUse {
                device: "sdb1".to_owned(),
                mount_point: "/media/master".to_owned(),
            }],
            ..healthy()
        };
        assert_eq!(
            read_refusals(&mounted, &policy()),
            vec![Refusal::Mounted {
                what: "sdb1".to_owned(),
                mount_point: "/media/master".to_owned()
            }]
        );
        let nvme = DiskFacts {
            bus: Some("nvme".to_owned()),
            ..healthy()
        };
        assert!(matches!(
            read_refusals(&nvme, &policy()).as_slice(),
            [Refusal::BusNotAllowed { .. }]
        ));
        let empty = DiskFacts {
            size_bytes: 0,
            ..healthy()
        };
        assert_eq!(read_refusals(&empty, &policy()), vec![Refusal::NoMedium]);
    }

    #[test]
    fn a_partition_is_refused() {
        let facts = DiskFacts {
            kernel_name: "sdb1".to_owned(),
            is_partition: true,
            parent_disk: Some("sdb".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r,
            Refusal::NotWholeDisk {
                device: "sdb1".to_owned(),
                disk: Some("sdb".to_owned())
            }
        );
        assert_eq!(
            r.to_string(),
            "sdb1 is a partition of sdb, not a whole disk"
        );
    }

    #[test]
    fn a_disk_on_a_bus_that_is_not_allowed_is_refused() {
        for bus in ["ata", "nvme", "virtio", "scsi", "other"] {
            let facts = DiskFacts {
                bus: Some(bus.to_owned()),
                ..healthy()
            };
            assert_eq!(
                refused(&facts, &policy(), &armed(1)),
                Refusal::BusNotAllowed {
                    bus: bus.to_owned()
                }
            );
        }
    }

    #[test]
    fn an_unknown_bus_is_refused_even_if_the_policy_names_unknown() {
        let facts = DiskFacts {
            bus: None,
            ..healthy()
        };
        let mut p = policy();
        p.allowed_buses.insert("unknown".to_owned());
        assert_eq!(
            refused(&facts, &p, &armed(1)),
            Refusal::BusNotAllowed {
                bus: "unknown".to_owned()
            }
        );
    }

    #[test]
    fn a_loop_device_is_allowed_only_when_the_policy_names_loop() {
        let facts = DiskFacts {
            bus: Some("loop".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "the device is on the loop bus, which the configuration does not allow"
        );
        let mut p = policy();
        p.allowed_buses.insert("loop".to_owned());
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn a_refusal_travels_as_its_code_and_its_sentence() {
        let r = Refusal::TooLarge {
            size: 512_000_000_000,
            max: 256_000_000_000,
        };
        let record = r.to_record();
        assert_eq!(record.code, RefusalCode::TooLarge);
        assert_eq!(record.code.as_str(), r.code());
        assert_eq!(record.message, r.to_string());
        // Failing to inspect is a refusal too: the guard fails closed.
        let error = GuardError::NotBlockDevice {
            path: PathBuf::from("/dev/null"),
        };
        let r = Refusal::from(error);
        assert_eq!(r.kind(), RefusalCode::CannotInspect);
        assert_eq!(
            r.to_string(),
            "cannot inspect the device: /dev/null is not a block device"
        );
        let r = Refusal::from(GuardError::Refused(Refusal::NotArmed));
        assert_eq!(r, Refusal::NotArmed);
    }

    #[test]
    fn an_unmapped_port_is_refused_unless_unmapped_ports_are_allowed() {
        let facts = DiskFacts {
            port_path: Some("pci-0000:00:14.0-usb-0:9:1.0".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "port pci-0000:00:14.0-usb-0:9:1.0 is not mapped in the configuration"
        );
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..policy()
        };
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn an_unknown_port_is_refused_unless_unmapped_ports_are_allowed() {
        let facts = DiskFacts {
            port_path: None,
            ..healthy()
        };
        assert_eq!(
            refused(&facts, &policy(), &armed(1)),
            Refusal::PortNotMapped { port: None }
        );
        let p = GuardPolicy {
            allow_unmapped_ports: true,
            ..policy()
        };
        assert!(evaluate(&facts, &p, &armed(1)).is_ok());
    }

    #[test]
    fn a_disk_with_a_mounted_partition_is_refused() {
        let facts = DiskFacts {
            mounted: vec![MountUse {
                device: "sdb1".to_owned(),
                mount_point: "/media/stick".to_owned(),
            }],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(r.code(), "mounted");
        assert_eq!(r.to_string(), "sdb1 is mounted at /media/stick");
    }

    #[test]
    fn a_disk_used_as_swap_is_refused() {
        let facts = DiskFacts {
            swap: vec!["/dev/sdb2".to_owned()],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(r.to_string(), "/dev/sdb2 is in use as swap");
    }

    #[test]
    fn a_disk_with_holders_is_refused() {
        let facts = DiskFacts {
            holders: vec!["dm-0 on sdb1".to_owned(), "md127 on sdb2".to_owned()],
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "the device is held by dm-0 on sdb1, md127 on sdb2"
        );
    }

    #[test]
    fn a_system_disk_is_refused() {
        let facts = DiskFacts {
            system_disk: Some("holds / (mounted from dm-0)".to_owned()),
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r.to_string(),
            "this is a system disk: it holds / (mounted from dm-0)"
        );
    }

    #[test]
    fn a_disk_over_the_maximum_is_refused_and_one_at_the_maximum_is_not() {
        let facts = DiskFacts {
            size_bytes: 256_000_000_001,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1));
        assert_eq!(
            r,
            Refusal::TooLarge {
                size: 256_000_000_001,
                max: DEFAULT_MAX_SIZE_BYTES
            }
        );
        assert_eq!(
            r.to_string(),
            "the device is too large: 256 GB (256000000001 bytes) is more than the \
             maximum of 256 GB (256000000000 bytes)"
        );
        let at_max = DiskFacts {
            size_bytes: DEFAULT_MAX_SIZE_BYTES,
            ..healthy()
        };
        assert!(evaluate(&at_max, &policy(), &armed(1)).is_ok());
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused_and_one_of_its_size_is_not() {
        let facts = DiskFacts {
            size_bytes: 999,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1_000));
        assert_eq!(
            r.to_string(),
            "the device is too small: 999 bytes is less than the image's 1 kB (1000 bytes)"
        );
        assert!(evaluate(&facts, &policy(), &armed(999)).is_ok());
    }

    #[test]
    fn a_disk_of_size_zero_is_refused_as_holding_no_medium_not_as_too_small() {
        let facts = DiskFacts {
            size_bytes: 0,
            ..healthy()
        };
        let r = refused(&facts, &policy(), &armed(1_000));
        assert_eq!(r, Refusal::NoMedium);
        assert_eq!(r.code(), "no_medium");
        assert_eq!(
            r.to_string(),
            "the device holds no medium (it reports a size of 0 bytes)"
        );
        // Also with an empty image: no medium is never a place to write.
        assert_eq!(refused(&facts, &policy(), &armed(0)), Refusal::NoMedium);
    }

    #[test]
    fn without_an_armed_run_or_an_explicit_request_nothing_is_written() {
        let request = GuardRequest {
            image_size: 1,
            armed_run: false,
            explicit_operator_request: false,
        };
        let r = refused(&healthy(), &policy(), &request);
        assert_eq!(r, Refusal::NotArmed);
        assert_eq!(
            r.to_string(),
            "no run is armed and the operator did not ask for this device"
        );
    }

    #[test]
    fn evaluate_reports_the_first_failing_rule_and_refusals_lists_all_in_order() {
        let facts = DiskFacts {
            is_partition: true,
            bus: Some("ata".to_owned()),
            port_path: None,
            mounted: vec![MountUse {
                device: "sdb".to_owned(),
                mount_point: "/".to_owned(),
            }],
            swap: vec!["/dev/sdb".to_owned()],
            holders: vec!["dm-0 on sdb".to_owned()],
            system_disk: Some("holds /".to_owned()),
            size_bytes: 300_000_000_000,
            ..healthy()
        };
        let request = GuardRequest {
            image_size: 400_000_000_000,
            armed_run: false,
            explicit_operator_request: false,
        };
        let codes: Vec<_> = refusals(&facts, &policy(), &request)
            .iter()
            .map(Refusal::code)
            .collect();
        assert_eq!(
            codes,
            [
                "not_whole_disk",
                "bus_not_allowed",
                "port_not_mapped",
                "mounted",
                "swap",
                "held",
                "system_disk",
                "too_large",
                "too_small",
                "not_armed"
            ]
        );
        assert_eq!(
            refused(&facts, &policy(), &request).code(),
            "not_whole_disk"
        );
    }

    #[test]
    fn every_refusal_reads_as_a_lowercase_sentence_without_a_final_period() {
        let all = [
            Refusal::NotWholeDisk {
                device: "sdb1".into(),
                disk: None,
            },
            Refusal::BusNotAllowed { bus: "ata".into() },
            Refusal::PortNotMapped { port: None },
            Refusal::PortNotMapped {
                port: Some("x".into()),
            },
            Refusal::Mounted {
                what: "sdb1".into(),
                mount_point: "/mnt".into(),
            },
            Refusal::Swap {
                what: "/dev/sdb2".into(),
            },
            Refusal::Held {
                holders: vec!["dm-0 on sdb".into()],
            },
            Refusal::SystemDisk {
                why: "holds /".into(),
            },
            Refusal::Below {
                device: "loop5".into(),
                via: Some("loop4".into()),
                below: "sdb".into(),
                reason: Box::new(Refusal::NoMedium),
            },
            Refusal::TooLarge { size: 2, max: 1 },
            Refusal::TooSmall { size: 1, needed: 2 },
            Refusal::NotArmed,
            Refusal::Busy {
                detail: "device or resource busy".into(),
            },
            Refusal::IdentityChanged {
                expected: healthy().identity(),
                found: DiskIdentity {
                    diskseq: None,
                    ..healthy().identity()
                },
            },
        ];
        for r in all {
            let text = r.to_string();
            let first = text.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{text:?}");
            assert!(!text.ends_with('.'), "{text:?}");
        }
    }

    #[test]
    fn a_busy_target_met_by_the_engine_is_refused_as_the_guard_refuses_it() {
        let detail = "device or resource busy";
        assert_eq!(
            GuardRefusal::from(Refusal::Busy {
                detail: detail.into()
            }),
            GuardRefusal::busy(detail)
        );
    }

    #[test]
    fn an_identity_change_names_both_disks_and_has_its_own_code() {
        let expected = healthy().identity();
        let found = DiskIdentity {
            diskseq: Some(10),
            ..expected
        };
        assert_ne!(
            expected, found,
            "a new disk sequence number is another disk"
        );
        let r = Refusal::IdentityChanged { expected, found };
        assert_eq!(r.code(), "identity_changed");
        assert_eq!(
            r.to_string(),
            "the device is not the one that was checked: its name now leads to device 8:16 \
             (disk sequence 10), not device 8:16 (disk sequence 9) (another disk took its name)"
        );
    }
}
