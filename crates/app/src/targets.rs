//! Turning the targets named on the command line into [`Target`]s.
//!
//! - a block device is pinned to the disk it names now (device number and
//!   `diskseq`) and goes through the target guard at the moment it is opened, on
//!   the facts of the disk behind the opened descriptor, which must be that disk;
//! - a regular file (existing or not) is grown to the image size; a file inside
//!   the data directory (the records, the image cache) is refused, after symlinks
//!   and `..` are resolved, and so is a loop device whose backing file is there;
//! - two names of one file or one device in a command are refused;
//! - `sim:NAME[:key=value,...]` is a simulated stick whose medium is a sparse file
//!   in a temporary directory under the data directory (`cache=64MiB` gives it
//!   a volatile cache that answers the read-back of recent writes until a reset,
//!   `lossy_cache=64MiB` one whose window never reaches the medium, `vanish=16MiB`
//!   a real size past which writes are dropped).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use flashrack_core::{ByteSize, ByteSizeParseError, TargetId};
use flashrack_guard::{
    evaluate, DiskFacts, DiskIdentity, GuardCheck, GuardError, GuardPolicy, GuardRequest,
};
use flashrack_hardware::block::PathTarget;
use flashrack_hotplug::DeviceIdentity;
use flashrack_simrack::sim::{CacheMode, FakeMode, SimStick, SimStickSpec};
use flashrack_target::Target;

/// A target the command line names that cannot be written (nothing has been
/// written anywhere when this is returned).
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// The same spelling twice.
    #[error("target {0} is named twice")]
    NamedTwice(String),
    /// The data directory could not be created.
    #[error("cannot create {}", .0.display())]
    CreateDataDir(PathBuf, #[source] std::io::Error),
    /// The data directory could not be resolved.
    #[error("cannot resolve the data directory {}", .0.display())]
    ResolveDataDir(PathBuf, #[source] std::io::Error),
    /// No room for the simulated sticks' media.
    #[error("cannot create a directory for simulated sticks")]
    SimDir(#[source] std::io::Error),
    /// A simulated stick could not be made.
    #[error("cannot create simulated stick {spec}")]
    SimStick {
        /// The spec as given (after `sim:`).
        spec: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A malformed simulated stick name.
    #[error("simulated stick name {0:?} must be letters, digits, - or _")]
    SimName(String),
    /// A simulated stick option with a bad size.
    #[error("sim:{name}: bad value for {key}")]
    SimValue {
        /// The stick.
        name: String,
        /// The option.
        key: String,
        /// Why.
        #[source]
        source: ByteSizeParseError,
    },
    /// An unknown simulated stick option.
    #[error(
        "sim:{name}: unknown option {key:?} (known: capacity, write, read, fail_after, \
         fail_once_after, bad_block, read_fail_after, corrupt_at, fake, vanish, cache, lossy_cache, read_only, \
         remove_after, stall_after, hang_write_after, hang_read_after)"
    )]
    SimOption {
        /// The stick.
        name: String,
        /// The option.
        key: String,
    },
    /// A block device whose identity cannot be read.
    #[error("cannot identify the device {spec}")]
    Identify {
        /// The target as given.
        spec: String,
        /// Why.
        #[source]
        source: GuardError,
    },
    /// Two names of one block device.
    #[error("{first} and {second} are the same device, named twice")]
    SameDevice {
        /// The first name.
        first: String,
        /// The second.
        second: String,
    },
    /// A loop device and its file, or two loop devices over one file: one
    /// medium, named twice.
    #[error("{first} and {second} write the same file ({}), named twice", backing.display())]
    SameStorage {
        /// The first name.
        first: String,
        /// The second.
        second: String,
        /// The file behind the loop device(s).
        backing: PathBuf,
    },
    /// Two names of one file.
    #[error("{first} and {second} are the same file, named twice")]
    SameFile {
        /// The first name.
        first: String,
        /// The second.
        second: String,
    },
    /// A loop device over a file of the data directory.
    #[error(
        "{spec} is a loop device over {}, inside the data directory {} \
         (flashrack's records and image cache): refusing to write it",
        backing.display(),
        data_dir.display()
    )]
    LoopOverDataDir {
        /// The target as given.
        spec: String,
        /// Its backing file.
        backing: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The image's own file, which the cache references in place (it is
    /// read while the targets are written).
    #[error(
        "{spec} is the image's own file (the cache reads the image from it): refusing to write it"
    )]
    IsTheImage {
        /// The target as given.
        spec: String,
    },
    /// A file of the data directory.
    #[error(
        "{spec} is inside the data directory {} (flashrack's records and image \
         cache): refusing to write it",
        data_dir.display()
    )]
    InDataDir {
        /// The target as given.
        spec: String,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// A `/dev` path that does not exist.
    #[error("{0} does not exist (no such device: is the stick plugged in?)")]
    NoSuchDevice(String),
    /// A `/dev` path that cannot be inspected.
    #[error("{spec} cannot be inspected: {source}")]
    Inspect {
        /// The target as given.
        spec: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `/dev` path that is not a block device.
    #[error("{0} is not a block device")]
    NotBlockDevice(String),
    /// A file target whose path cannot be resolved.
    #[error("cannot resolve the target {spec}")]
    Resolve {
        /// The target as given.
        spec: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The targets of one command, and what must live as long as they do.
pub struct Targets {
    /// Named targets, in the order given.
    pub list: Vec<(TargetId, Arc<dyn Target>)>,
    /// Who each target is, for the records (same order).
    pub identities: Vec<(DeviceIdentity, Option<String>)>,
    /// Holds the simulated sticks' media; removed when dropped.
    _sim_dir: Option<tempfile::TempDir>,
}

/// How block devices are guarded.
pub struct GuardSettings {
    /// The guard's policy.
    pub policy: GuardPolicy,
    /// The image size (the guard refuses smaller devices).
    pub image_size: u64,
    /// An audit: files are read as they are, never created or grown.
    pub audit: bool,
}

/// Refuses a file target that is the image's own file (`image_file`, read
/// for the whole run: a raw image the cache references in place, or a file
/// being imported while it is written). Compared by device and inode, so no
/// spelling of the path gets past it; a missing image file refuses nothing.
pub(crate) fn refuse_the_image_file(
    image_file: &Path,
    specs: &[String],
) -> Result<(), TargetsError> {
    let key = |meta: &std::fs::Metadata| (meta.dev(), meta.ino());
    let Ok(image) = std::fs::metadata(image_file) else {
        return Ok(());
    };
    match specs
        .iter()
        .find(|spec| std::fs::metadata(spec).is_ok_and(|m| m.is_file() && key(&m) == key(&image)))
    {
        Some(spec) => Err(TargetsError::IsTheImage { spec: spec.clone() }),
        None => Ok(()),
    }
}

/// Parses every target spec; fails on the first malformed one, before anything
/// is written anywhere.
pub fn parse_targets(
    specs: &[String],
    image_size: u64,
    data_dir: &Path,
    guard: GuardSettings,
) -> Result<Targets, TargetsError> {
    let mut list = Vec::new();
    let mut identities = Vec::new();
    let mut sim_dir = None;
    let mut seen = std::collections::BTreeSet::new();
    // Two names of one disk or one file (a symlink, `..`, /dev/disk/by-id/…).
    let mut seen_devices = BTreeMap::new();
    let mut seen_files = BTreeMap::new();
    // The files behind the loop devices named: (the loop device, its file).
    let mut loop_backings: BTreeMap<FileKey, (String, PathBuf)> = BTreeMap::new();
    // The data directory as the kernel resolves it, and its records' files by
    // inode (a hard link to the database elsewhere is the database).
    std::fs::create_dir_all(data_dir)
        .map_err(|e| TargetsError::CreateDataDir(data_dir.to_path_buf(), e))?;
    let own_dir = std::fs::canonicalize(data_dir)
        .map_err(|e| TargetsError::ResolveDataDir(data_dir.to_path_buf(), e))?;
    let records_files: Vec<FileKey> = RECORDS_FILES
        .iter()
        .filter_map(|name| file_key(&own_dir.join(name)))
        .collect();
    remove_stale_sim_dirs(&own_dir);
    let guard = Arc::new(guard);
    for spec in specs {
        if !seen.insert(spec.as_str()) {
            return Err(TargetsError::NamedTwice(spec.clone()));
        }
        // A simulated stick is named by its name alone, without its options.
        let mut id = spec.clone();
        let target: Arc<dyn Target> = if let Some(sim) = spec.strip_prefix("sim:") {
            if sim_dir.is_none() {
                sim_dir = Some(
                    tempfile::Builder::new()
                        .prefix("sim-")
                        .tempdir_in(data_dir)
                        .map_err(TargetsError::SimDir)?,
                );
            }
            let dir = sim_dir.as_ref().expect("created above").path();
            let spec = parse_sim_spec(sim, image_size)?;
            id = format!("sim:{}", spec.name);
            let path = dir.join(format!("{}.img", spec.name));
            Arc::new(
                SimStick::create(spec, &path).map_err(|source| TargetsError::SimStick {
                    spec: sim.to_string(),
                    source,
                })?,
            )
        } else {
            let path = Path::new(spec);
            if PathTarget::is_block_device(path) {
                let pin = DiskIdentity::of_path(path).map_err(|source| TargetsError::Identify {
                    spec: spec.clone(),
                    source,
                })?;
                if let Some(other) = seen_devices.insert((pin.major, pin.minor), spec.clone()) {
                    return Err(TargetsError::SameDevice {
                        first: other,
                        second: spec.clone(),
                    });
                }
                if let Some(backing) = loop_backing_file(pin) {
                    if let Some(inside) = resolve(&backing).ok().filter(|b| b.starts_with(&own_dir))
                    {
                        return Err(TargetsError::LoopOverDataDir {
                            spec: spec.clone(),
                            backing: inside,
                            data_dir: own_dir,
                        });
                    }
                    // Its file named too, or another loop device over it:
                    // one medium written twice at once.
                    if let Some(key) = file_key(&backing) {
                        let other = seen_files
                            .get(&key)
                            .cloned()
                            .or_else(|| loop_backings.get(&key).map(|(o, _)| o.clone()));
                        if let Some(other) = other {
                            return Err(TargetsError::SameStorage {
                                first: other,
                                second: spec.clone(),
                                backing,
                            });
                        }
                        loop_backings.insert(key, (spec.clone(), backing));
                    }
                }
                let guard = guard.clone();
                let check: GuardCheck = Arc::new(move |facts: &DiskFacts| {
                    let request = GuardRequest {
                        image_size: guard.image_size,
                        armed_run: false,
                        // Naming the device on the command line is the operator's
                        // explicit request (rule 6).
                        explicit_operator_request: true,
                    };
                    evaluate(facts, &guard.policy, &request).map(|_| ())
                });
                Arc::new(PathTarget::pinned_block_device(path, pin, check))
            } else if path.starts_with("/dev") {
                return Err(match std::fs::metadata(path) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        TargetsError::NoSuchDevice(spec.clone())
                    }
                    Err(source) => TargetsError::Inspect {
                        spec: spec.clone(),
                        source,
                    },
                    Ok(_) => TargetsError::NotBlockDevice(spec.clone()),
                });
            } else {
                let resolved = resolve(path).map_err(|source| TargetsError::Resolve {
                    spec: spec.clone(),
                    source,
                })?;
                if resolved.starts_with(&own_dir)
                    || file_key(&resolved).is_some_and(|key| records_files.contains(&key))
                {
                    return Err(TargetsError::InDataDir {
                        spec: spec.clone(),
                        data_dir: own_dir,
                    });
                }
                let mut keys = vec![FileKey::Path(resolved.clone())];
                keys.extend(file_key(&resolved));
                if let Some((other, backing)) = keys.iter().find_map(|k| loop_backings.get(k)) {
                    return Err(TargetsError::SameStorage {
                        first: other.clone(),
                        second: spec.clone(),
                        backing: backing.clone(),
                    });
                }
                for key in keys {
                    if let Some(other) = seen_files.insert(key, spec.clone()) {
                        return Err(TargetsError::SameFile {
                            first: other,
                            second: spec.clone(),
                        });
                    }
                }
                // An audit's file is what it is: never grown, so that a file
                // shorter than the image is too small, not padded.
                let min_size = if guard.audit { 0 } else { image_size };
                Arc::new(PathTarget::file(resolved, min_size))
            }
        };
        if list
            .iter()
            .any(|(existing, _)| existing == &TargetId::new(id.clone()))
        {
            return Err(TargetsError::NamedTwice(id));
        }
        identities.push(identity_of(&id, &*target));
        list.push((TargetId::new(id), target));
    }
    Ok(Targets {
        list,
        identities,
        _sim_dir: sim_dir,
    })
}

/// Removes the simulated sticks' media that a flash killed before its end
/// (`kill -9`, a power cut) left in the data directory: each flash keeps
/// its sticks in a temporary `sim-XXXXXX` directory there and removes it
/// however it ends, short of being killed. Whoever parses targets holds the
/// data directory's lock (see [`crate::lock`]), so no other flash is using
/// one; the demo's `sim-rack` is the demo's own. The demo calls it too.
pub(crate) fn remove_stale_sim_dirs(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        // `tempfile`'s names: the prefix and six random letters or digits.
        let stale = name.to_str().is_some_and(|name| {
            name.strip_prefix("sim-").is_some_and(|suffix| {
                suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_alphanumeric())
            })
        });
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), %error, "cannot remove a killed flash's simulated sticks");
            }
        }
    }
}

/// The files of the records in the data directory (a hard link to one of them
/// elsewhere is refused as a target too).
const RECORDS_FILES: [&str; 4] = [
    "flashrack.db",
    "flashrack.db-wal",
    "flashrack.db-shm",
    "flashrack.lock",
];

/// What makes two names one file target: its resolved path, or (for a file that
/// exists) its inode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum FileKey {
    /// The path with symlinks and `..` resolved.
    Path(PathBuf),
    /// Device and inode of an existing file.
    Inode(u64, u64),
}

/// The inode of an existing file, `None` when there is none.
fn file_key(path: &Path) -> Option<FileKey> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| FileKey::Inode(meta.dev(), meta.ino()))
}

/// `path` as the kernel would resolve it: symlinks and `..` resolved in the part
/// that exists (for a file not created yet: its directory), the rest appended as
/// given (a path through a directory that does not exist cannot be opened anyway).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::env::current_dir()?.join(path);
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => {
                return Ok(rest
                    .iter()
                    .rev()
                    .fold(resolved, |acc: PathBuf, part: &Component| acc.join(part)));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut components = existing.components();
                match components.next_back() {
                    Some(last) => {
                        rest.push(last);
                        existing = components.as_path();
                    }
                    None => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// The backing file of a loop device, if `disk` is one.
fn loop_backing_file(disk: DiskIdentity) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/loop/backing_file",
        disk.major, disk.minor
    ))
    .ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Who a target is, for the records, and its physical port path when known: a
/// block device's vendor and model from sysfs and its serial and `ID_PATH` from
/// the udev database; a file or simulated stick is known by its name.
fn identity_of(name: &str, target: &dyn Target) -> (DeviceIdentity, Option<String>) {
    let capacity = target.geometry().map(|g| g.capacity).unwrap_or(0);
    let mut identity = DeviceIdentity {
        serial: Some(name.to_string()),
        vendor: None,
        model: None,
        capacity,
    };
    let mut port_path = None;
    if let Ok(meta) = std::fs::metadata(name) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if meta.file_type().is_block_device() {
            let (major, minor) = (
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            );
            let sys = format!("/sys/dev/block/{major}:{minor}/device");
            let read = |file: &str| {
                std::fs::read_to_string(format!("{sys}/{file}"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            };
            identity.vendor = read("vendor");
            identity.model = read("model");
            identity.serial = None;
            if let Ok(db) = std::fs::read_to_string(format!("/run/udev/data/b{major}:{minor}")) {
                for line in db.lines() {
                    if let Some(serial) = line.strip_prefix("E:ID_SERIAL_SHORT=") {
                        identity.serial = Some(serial.to_string());
                    } else if let Some(path) = line.strip_prefix("E:ID_PATH=") {
                        port_path = Some(path.to_string());
                    }
                }
            }
        }
    }
    (identity, port_path)
}

/// Parses `NAME[:key=value,...]`.
pub(crate) fn parse_sim_spec(text: &str, image_size: u64) -> Result<SimStickSpec, TargetsError> {
    let (name, options) = text.split_once(':').unwrap_or((text, ""));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(TargetsError::SimName(name.to_string()));
    }
    // Default: a stick comfortably larger than the image (sparse, so free),
    // or the largest whole MiB for an image too large to double.
    let default_capacity = image_size
        .saturating_mul(2)
        .max(64 << 20)
        .checked_next_multiple_of(1 << 20)
        .unwrap_or(u64::MAX >> 20 << 20);
    let mut spec = SimStickSpec::new(name, default_capacity);
    let size = |key: &str, value: &str| -> Result<u64, TargetsError> {
        ByteSize::parse(value)
            .map(ByteSize::bytes)
            .map_err(|source| TargetsError::SimValue {
                name: name.to_string(),
                key: key.to_string(),
                source,
            })
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        spec = match key {
            "capacity" => SimStickSpec {
                capacity: size(key, value)? / 512 * 512,
                ..spec
            },
            "write" => spec.write_speed(size(key, value)?),
            "read" => spec.read_speed(size(key, value)?),
            "fail_after" => spec.write_error_after(size(key, value)?),
            "fail_once_after" => spec.write_error_once_after(size(key, value)?),
            "bad_block" => spec.write_fails_at(size(key, value)?),
            "read_fail_after" => spec.read_error_after(size(key, value)?),
            "corrupt_at" => spec.corrupt_at(size(key, value)?),
            "fake" => spec.fake_capacity(size(key, value)?, FakeMode::Wrap),
            "vanish" => spec.fake_capacity(size(key, value)?, FakeMode::Vanish),
            "cache" => spec.volatile_cache(size(key, value)?, CacheMode::WriteThrough),
            "lossy_cache" => spec.volatile_cache(size(key, value)?, CacheMode::LostOnReset),
            "read_only" => spec.read_only(),
            "remove_after" => spec.remove_after_written(size(key, value)?),
            "stall_after" => spec.stall_after_written(size(key, value)?),
            "hang_write_after" => spec.hang_after_written(size(key, value)?),
            "hang_read_after" => spec.hang_after_read(size(key, value)?),
            _ => {
                return Err(TargetsError::SimOption {
                    name: name.to_string(),
                    key: key.to_string(),
                })
            }
        };
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashrack_simrack::sim::{FakeCapacity, VolatileCache};

    /// The error and its causes, as the binary prints them.
    fn error_chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn sim_specs_parse_sizes_and_faults() {
        let spec =
            parse_sim_spec("s1:capacity=2GiB,write=20MB,read=40MB,read_only", 1 << 20).unwrap();
        assert_eq!(spec.name, "s1");
        assert_eq!(spec.capacity, 2 << 30);
        assert_eq!(spec.write_bytes_per_sec, Some(20_000_000));
        assert_eq!(spec.read_bytes_per_sec, Some(40_000_000));
        assert!(spec.read_only);
        assert_eq!(parse_sim_spec("s2", 1 << 30).unwrap().capacity, 2 << 30);
    }

    #[test]
    fn sim_specs_give_sticks_a_volatile_cache_that_hides_or_loses_writes() {
        let spec = parse_sim_spec("c1:capacity=1GiB,vanish=16MiB,cache=64MiB", 1 << 20).unwrap();
        assert_eq!(
            spec.cache,
            Some(VolatileCache {
                bytes: 64 << 20,
                mode: CacheMode::WriteThrough
            })
        );
        assert_eq!(
            spec.fake,
            Some(FakeCapacity {
                real_size: 16 << 20,
                mode: FakeMode::Vanish
            })
        );
        let spec = parse_sim_spec("c2:lossy_cache=8MiB", 1 << 20).unwrap();
        assert_eq!(
            spec.cache,
            Some(VolatileCache {
                bytes: 8 << 20,
                mode: CacheMode::LostOnReset
            })
        );
        let error = error_chain(&parse_sim_spec("c3:cache=lots", 1 << 20).unwrap_err());
        assert!(error.contains("bad value for cache"), "{error}");
    }

    #[test]
    fn malformed_sim_specs_are_rejected_with_the_reason() {
        for (bad, why) in [
            ("", "name"),
            ("a/b", "name"),
            ("s:speed=1", "unknown option"),
            ("s:write=fast", "bad value for write"),
        ] {
            let error = error_chain(&parse_sim_spec(bad, 1 << 20).unwrap_err());
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }
}
