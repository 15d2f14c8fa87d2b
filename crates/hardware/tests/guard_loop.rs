//! The target guard against real block devices: loop devices this test creates, and
//! the disk under the root filesystem (which is only inspected, never opened).
//!
//! These tests need root, `losetup`, `mkfs.ext4` and `mount`. Without root they
//! are reported as not run (`flashrack_testkit::require_root`), unless
//! `FLASHRACK_REQUIRE_ROOT_TESTS=1` (CI) makes that a failure; a missing tool is
//! a failure. Every loop device is created
//! here and detached (and unmounted) by a `Drop` guard, also when a test panics.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use flashrack_testkit::{reattach_loop, require_root, run, LoopDevice};

use flashrack_core::RefusalCode;
use flashrack_guard::{
    evaluate, refusals, Authorization, DiskFacts, DiskIdentity, GuardPolicy, GuardRequest, Refusal,
};
use flashrack_hardware::block::PathTarget;
use flashrack_target::{Target, TargetError};

const BACKING_SIZE: u64 = 64 * 1024 * 1024;

/// A file system made on a loop device and mounted on a temporary directory,
/// unmounted on drop (declare it after its `LoopDevice` so it drops first).
struct MountedFs {
    dir: tempfile::TempDir,
}

impl MountedFs {
    fn new(device: &LoopDevice) -> Self {
        MountedFs::on(device.path())
    }

    /// A file system made on block device `device` and mounted.
    fn on(device: &Path) -> Self {
        let dev = device.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", dev]);
        let dir = tempfile::tempdir().unwrap();
        run("mount", &[dev, dir.path().to_str().unwrap()]);
        MountedFs { dir }
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The policy of a test station: loop devices allowed, ports not mapped.
fn loop_policy() -> GuardPolicy {
    GuardPolicy {
        allowed_buses: BTreeSet::from(["loop".to_owned()]),
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    }
}

fn armed(image_size: u64) -> GuardRequest {
    GuardRequest {
        image_size,
        armed_run: true,
        explicit_operator_request: false,
    }
}

#[test]
fn a_clean_loop_device_is_accepted_when_loop_is_allowed_and_refused_by_default() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dev = LoopDevice::new(BACKING_SIZE);
    let facts = DiskFacts::inspect(dev.path()).unwrap();
    assert_eq!(facts.bus.as_deref(), Some("loop"));
    assert!(!facts.is_partition);
    assert_eq!(facts.size_bytes, BACKING_SIZE);
    assert_eq!(
        Path::new("/dev").join(&facts.kernel_name),
        dev.path(),
        "kernel name should match the device losetup gave"
    );
    assert!(facts.mounted.is_empty(), "{facts:?}");
    assert_eq!(facts.system_disk, None);

    let accepted = evaluate(&facts, &loop_policy(), &armed(1024 * 1024)).unwrap();
    assert_eq!(accepted.authorized_by, Authorization::ArmedRun);

    assert_eq!(
        evaluate(&facts, &GuardPolicy::default(), &armed(1024 * 1024)),
        Err(Refusal::BusNotAllowed {
            bus: "loop".to_owned()
        })
    );
    // The same device is too small for an image bigger than it.
    assert_eq!(
        evaluate(&facts, &loop_policy(), &armed(BACKING_SIZE + 1)),
        Err(Refusal::TooSmall {
            size: BACKING_SIZE,
            needed: BACKING_SIZE + 1
        })
    );
}

#[test]
fn a_loop_device_with_a_mounted_file_system_is_refused_as_mounted() {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let dev = LoopDevice::new(BACKING_SIZE);
    let mounted = MountedFs::new(&dev);
    let facts = DiskFacts::inspect(dev.path()).unwrap();
    let mount_point = mounted.dir.path().to_str().unwrap().to_owned();
    let refusal = evaluate(&facts, &loop_policy(), &armed(1024)).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::Mounted {
            what: facts.kernel_name.clone(),
            mount_point: mount_point.clone(),
        }
    );
    assert_eq!(
        refusal.to_string(),
        format!("{} is mounted at {mount_point}", facts.kernel_name)
    );
    // It also holds a mounted file system, so rule 4 refuses it as well.
    assert!(refusals(&facts, &loop_policy(), &armed(1024))
        .iter()
        .any(|r| matches!(r, Refusal::SystemDisk { .. })));
}

/// The sysfs directory of block device `major:minor`.
fn sysfs_dir(major: u32, minor: u32) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

/// Follows a block device down to a whole disk, independently of the guard's own
/// code: a partition to its parent, a dm/md device to its first slave.
fn whole_disk_of(mut dir: PathBuf) -> PathBuf {
    for _ in 0..16 {
        if dir.join("partition").exists() {
            dir = dir.parent().unwrap().to_owned();
            continue;
        }
        let first_slave = fs::read_dir(dir.join("slaves"))
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|entry| entry.ok());
        match first_slave {
            Some(slave) => dir = fs::canonicalize(slave.path()).unwrap(),
            None => return dir,
        }
    }
    panic!(
        "block device stack deeper than 16 levels at {}",
        dir.display()
    );
}

/// The whole disk under the root filesystem, as (major, minor). When `/` is not on a
/// block device (overlay, tmpfs in a container), the first mount that is (bind mounts
/// such as `/etc/hosts` usually are) stands in for it: what matters is that a disk
/// carrying a mounted file system is refused.
fn root_or_first_mounted_disk() -> (u32, u32, String) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut candidates: Vec<(bool, u32, u32, String)> = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (major, minor) = fields[2].split_once(':').unwrap();
        let (major, minor): (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
        let mount_point = fields[4].to_owned();
        let dir = match sysfs_dir(major, minor) {
            Some(dir) if major != 0 => dir,
            _ => continue,
        };
        let disk = whole_disk_of(dir);
        let (dmaj, dmin) = fs::read_to_string(disk.join("dev"))
            .unwrap()
            .trim()
            .split_once(':')
            .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
            .unwrap();
        candidates.push((mount_point == "/", dmaj, dmin, mount_point));
    }
    candidates.sort_by_key(|c| !c.0);
    let (_, major, minor, mount_point) = candidates
        .into_iter()
        .next()
        .expect("no mounted file system lives on a block device: nothing to test against");
    (major, minor, mount_point)
}

/// A path with device number `major:minor`: its `/dev` node when there is one, else
/// a node made in `dir` (containers often lack `/dev` nodes for the host's disks).
fn device_node(major: u32, minor: u32, dir: &Path) -> PathBuf {
    try_device_node(major, minor, dir).expect("the device is not in sysfs")
}

/// [`device_node`], or `None` when sysfs does not list the device (now).
/// A node made in `dir` by an earlier call is used again.
fn try_device_node(major: u32, minor: u32, dir: &Path) -> Option<PathBuf> {
    let name = sysfs_dir(major, minor)?.file_name()?.to_owned();
    let dev_path = Path::new("/dev").join(&name);
    let rdev = rustix::fs::makedev(major, minor);
    if let Ok(meta) = fs::metadata(&dev_path) {
        if meta.file_type().is_block_device() && meta.rdev() == rdev {
            return Some(dev_path);
        }
    }
    let node = dir.join(&name);
    if let Ok(meta) = fs::metadata(&node) {
        if meta.file_type().is_block_device() && meta.rdev() == rdev {
            return Some(node);
        }
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rdev,
    )
    .unwrap();
    Some(node)
}

#[test]
fn the_disk_under_the_root_file_system_is_refused_as_a_system_disk() {
    if !require_root(&[]) {
        return;
    }
    let (major, minor, mount_point) = root_or_first_mounted_disk();
    let tmp = tempfile::tempdir().unwrap();
    let node = device_node(major, minor, tmp.path());
    let facts = DiskFacts::inspect(&node).unwrap();
    assert_eq!((facts.major, facts.minor), (major, minor));
    assert!(!facts.is_partition, "{facts:?}");

    // Allow its bus, its port and any size, arm a run: only rules 3 and 4 remain.
    let policy = GuardPolicy {
        allowed_buses: BTreeSet::from([facts.bus.clone().expect("bus of the root disk")]),
        allow_unmapped_ports: true,
        max_size_bytes: u64::MAX,
        ..GuardPolicy::default()
    };
    let request = armed(0);
    let all = refusals(&facts, &policy, &request);
    let why = all
        .iter()
        .find_map(|r| match r {
            Refusal::SystemDisk { why } => Some(why.clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "{} not refused as a system disk: {all:?}",
                facts.kernel_name
            )
        });
    assert!(
        why.starts_with(&format!("holds {mount_point} ")),
        "{why:?} should name {mount_point}"
    );
    // evaluate reports the first failing rule: mounted (rule 3) when the disk itself
    // or a partition is mounted, else the system-disk rule.
    let first = evaluate(&facts, &policy, &request).unwrap_err();
    assert!(
        matches!(
            first,
            Refusal::Mounted { .. } | Refusal::Held { .. } | Refusal::SystemDisk { .. }
        ),
        "{first}"
    );
    // With the direct evidence removed, rule 4 alone still refuses it.
    let only_system = DiskFacts {
        mounted: vec![],
        swap: vec![],
        holders: vec![],
        ..facts
    };
    assert_eq!(
        evaluate(&only_system, &policy, &request),
        Err(Refusal::SystemDisk { why })
    );
}

#[test]
fn the_identity_of_an_opened_loop_device_is_its_number_and_disk_sequence() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dev = LoopDevice::new(BACKING_SIZE);
    let by_name = DiskIdentity::of_path(dev.path()).unwrap();
    let file = fs::File::open(dev.path()).unwrap();
    let opened = DiskIdentity::of_file(&file, dev.path()).unwrap();
    assert_eq!(opened, by_name);
    let sys = Path::new("/sys/block").join(dev.kernel_name());
    let diskseq: u64 = fs::read_to_string(sys.join("diskseq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        opened.diskseq,
        Some(diskseq),
        "BLKGETDISKSEQ agrees with sysfs"
    );
    let facts = DiskFacts::of_opened(&file, dev.path()).unwrap();
    assert_eq!(facts.identity(), opened);
    assert_eq!(facts.size_bytes, BACKING_SIZE);
    assert_eq!(facts.bus.as_deref(), Some("loop"));
}

#[test]
fn a_read_back_through_a_name_given_to_another_disk_is_refused_as_removed() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dev = LoopDevice::new(BACKING_SIZE);
    let target = PathTarget::block_device(dev.path(), Arc::new(|_| Ok(())));
    assert!(target.open_reader().is_ok());
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("another-disk.img");
    fs::File::create(&other)
        .and_then(|f| f.set_len(BACKING_SIZE))
        .unwrap();
    reattach_loop(dev.path(), &other);
    // The disk that was written is gone: reading another one back proves nothing.
    assert!(matches!(target.open_reader(), Err(TargetError::Removed)));
    assert!(matches!(
        target.open_writer(),
        Err(TargetError::Refused(why))
            if why.to_string().contains("not the one that was checked")
    ));
}

#[test]
fn the_root_disk_named_as_a_target_is_refused_by_the_guard_and_never_opened_for_writing() {
    if !require_root(&[]) {
        return;
    }
    let (major, minor, mount_point) = root_or_first_mounted_disk();
    let tmp = tempfile::tempdir().unwrap();
    let node = device_node(major, minor, tmp.path());
    let facts = DiskFacts::inspect(&node).unwrap();
    // Everything a careless operator could allow is allowed: its bus, any port,
    // any size, an armed run. The mounted root file system must still stop it,
    // and the refusal must be the guard's (not the kernel's answer to an open).
    let policy = GuardPolicy {
        allowed_buses: BTreeSet::from([facts.bus.clone().expect("bus of the root disk")]),
        allow_unmapped_ports: true,
        max_size_bytes: u64::MAX,
        ..GuardPolicy::default()
    };
    let guard: flashrack_guard::GuardCheck =
        Arc::new(move |facts: &DiskFacts| evaluate(facts, &policy, &armed(0)).map(|_| ()));
    let target = PathTarget::block_device(&node, guard);
    match target.open_writer() {
        Err(TargetError::Refused(refusal)) => assert!(
            matches!(
                refusal.code,
                RefusalCode::Mounted | RefusalCode::Held | RefusalCode::SystemDisk
            ),
            "{} (root file system at {mount_point}) refused for the wrong reason: {refusal:?}",
            node.display()
        ),
        Err(other) => panic!(
            "{} must be refused by the target guard, not fail to open: {other}",
            node.display()
        ),
        Ok(_) => panic!("{} was opened for writing", node.display()),
    }
}

// ---- rule 4: loop devices over kept files, by the file the kernel writes ----

/// A keeper of one file, by device and inode (as the application's keeper
/// compares the cache's files).
struct KeepsOne {
    file: (u64, u64),
}

impl flashrack_guard::FileKeeper for KeepsOne {
    fn keeps(&self, file: &flashrack_guard::BackingFile) -> Option<String> {
        (file.file == Some(self.file)).then(|| "the kept image".to_owned())
    }
}

/// Loop devices (and device-mapper) allowed, any port, `kept` protected.
fn keeping(kept: &Path) -> GuardPolicy {
    let meta = fs::metadata(kept).unwrap();
    GuardPolicy {
        allowed_buses: BTreeSet::from(["loop".to_owned(), "virtual".to_owned()]),
        protected_files: flashrack_guard::ProtectedFiles::new(Arc::new(KeepsOne {
            file: (meta.dev(), meta.ino()),
        })),
        ..loop_policy()
    }
}

/// A loop device this test attached some other way than `LoopDevice` (in
/// another mount namespace, through a link, with partitions); detached on
/// drop.
struct Attached {
    path: PathBuf,
}

impl Attached {
    fn from_losetup_output(out: &str) -> Self {
        let path = PathBuf::from(out.trim());
        assert!(
            path.to_string_lossy().starts_with("/dev/loop"),
            "losetup printed {out:?}"
        );
        Attached { path }
    }

    fn over(file: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        Attached::from_losetup_output(&run("losetup", &args))
    }

    fn kernel_name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A file of `BACKING_SIZE` bytes with a recognisable pattern.
fn patterned_file(path: &Path) -> Vec<u8> {
    let bytes: Vec<u8> = (0..BACKING_SIZE as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    fs::write(path, &bytes).unwrap();
    bytes
}

/// Opening `device` for writing through the guard with `policy`: the
/// refusal, if any.
fn refusal_at_opening(device: &Path, policy: GuardPolicy) -> Option<flashrack_core::GuardRefusal> {
    let guard: flashrack_guard::GuardCheck =
        Arc::new(move |facts: &DiskFacts| evaluate(facts, &policy, &armed(0)).map(|_| ()));
    match PathTarget::block_device(device, guard).open_writer() {
        Ok(_) => None,
        Err(TargetError::Refused(refusal)) => Some(refusal),
        Err(other) => panic!("{} failed to open: {other}", device.display()),
    }
}

#[test]
fn a_loop_device_over_a_kept_file_attached_in_another_mount_namespace_is_refused_though_its_path_names_nothing_here(
) {
    if !require_root(&["losetup", "unshare", "mount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept_dir = dir.path().join("kept");
    let seen_dir = dir.path().join("seen");
    fs::create_dir_all(&kept_dir).unwrap();
    fs::create_dir_all(&seen_dir).unwrap();
    let kept = kept_dir.join("image.img");
    let bytes = patterned_file(&kept);
    // Attached in a private mount namespace through a bind mount that ends
    // with it: the kernel names the file by a path that is not this one's.
    let script = format!(
        "mount --bind {} {} && losetup --find --show {}/image.img",
        kept_dir.display(),
        seen_dir.display(),
        seen_dir.display()
    );
    let dev = Attached::from_losetup_output(&run("unshare", &["--mount", "sh", "-c", &script]));
    let facts = DiskFacts::inspect(&dev.path).unwrap();
    let backing = &facts.loop_backings[0];
    assert_eq!(backing.loop_device, dev.kernel_name());
    assert_ne!(
        backing.file.path, kept,
        "the kernel's path is the namespace's"
    );
    assert!(
        fs::metadata(&backing.file.path).is_err(),
        "{} names nothing here",
        backing.file.path.display()
    );
    assert!(backing.file.from_loop_status);
    let refusal = refusal_at_opening(&dev.path, keeping(&kept)).expect("refused");
    assert_eq!(refusal.code, RefusalCode::ProtectedFile, "{refusal:?}");
    assert_eq!(
        refusal.message,
        format!(
            "{} is a loop device over {}, the kept image: writing it would corrupt that file",
            dev.kernel_name(),
            backing.file.path.display()
        )
    );
    assert_eq!(fs::read(&kept).unwrap(), bytes);
}

#[test]
fn a_loop_device_over_a_kept_file_attached_through_a_link_since_removed_is_refused() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("image.img");
    let bytes = patterned_file(&kept);
    let link = dir.path().join("link.img");
    fs::hard_link(&kept, &link).unwrap();
    let dev = Attached::over(&link, &[]);
    fs::remove_file(&link).unwrap();
    let facts = DiskFacts::inspect(&dev.path).unwrap();
    let backing = &facts.loop_backings[0].file;
    assert!(backing.deleted, "{backing:?}");
    assert_eq!(backing.path, link);
    let refusal = refusal_at_opening(&dev.path, keeping(&kept)).expect("refused");
    assert_eq!(refusal.code, RefusalCode::ProtectedFile, "{refusal:?}");
    assert_eq!(fs::read(&kept).unwrap(), bytes);
}

#[test]
fn a_kept_file_renamed_away_and_replaced_is_judged_by_the_file_the_loop_device_writes() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.img");
    let bytes = patterned_file(&path);
    let policy = keeping(&path);
    let dev = Attached::over(&path, &[]);
    // The kept file renamed away, another file put at its path.
    let away = dir.path().join("image.img.away");
    fs::rename(&path, &away).unwrap();
    fs::write(&path, vec![0u8; BACKING_SIZE as usize]).unwrap();
    let refusal = refusal_at_opening(&dev.path, policy.clone()).expect("refused");
    assert_eq!(refusal.code, RefusalCode::ProtectedFile, "{refusal:?}");
    assert_eq!(fs::read(&away).unwrap(), bytes);

    // The other way round: a loop device over a file that is not kept, and
    // the kept file moved to that file's path since: written, and the write
    // goes to the file the loop device was attached to.
    let other = dir.path().join("other.img");
    fs::write(&other, vec![0u8; BACKING_SIZE as usize]).unwrap();
    let dev2 = Attached::over(&other, &[]);
    fs::rename(&other, dir.path().join("other.img.away")).unwrap();
    fs::rename(&away, &other).unwrap();
    assert_eq!(refusal_at_opening(&dev2.path, policy), None);
    assert_eq!(fs::read(&other).unwrap(), bytes);
}

#[test]
fn a_partition_of_a_loop_device_over_a_kept_file_is_refused_too() {
    if !require_root(&["losetup", "sfdisk", "partx"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("image.img");
    fs::File::create(&kept)
        .and_then(|f| f.set_len(BACKING_SIZE))
        .unwrap();
    let table = "label: dos\nstart=2048, size=20480, type=83\n";
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", kept.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let dev = Attached::over(&kept, &["--partscan"]);
    let nodes = tempfile::tempdir().unwrap();
    let facts = first_partition_facts(&dev, nodes.path());
    assert!(facts.is_partition);
    assert_eq!(facts.loop_backings[0].loop_device, dev.kernel_name());
    let found: Vec<Refusal> = refusals(&facts, &keeping(&kept), &armed(0));
    let protected = found
        .iter()
        .find(|r| r.kind() == RefusalCode::ProtectedFile)
        .unwrap_or_else(|| panic!("no protected_file among {found:?}"));
    assert_eq!(
        protected.to_string(),
        format!(
            "{}p1 lies over loop device {}, which is over {}, the kept image: writing it would corrupt that file",
            dev.kernel_name(),
            dev.kernel_name(),
            kept.display()
        )
    );
}

/// The facts of `dev`'s first partition, once the kernel lists it.
///
/// Some kernels leave the scan to udev, so the partition is added here
/// (`partx --add`) if it has not come by itself. It can also vanish for a
/// moment after it came: udevd watches loop devices, and when `losetup` closes
/// the device it opened for writing, udevd re-reads the partition table, which
/// drops every partition and adds it again. So the lookup is retried until one
/// whole reading (sysfs numbers, node, facts) succeeds. Its node in /dev may
/// come later still, so the test makes its own in `nodes`.
fn first_partition_facts(dev: &Attached, nodes: &Path) -> DiskFacts {
    let dev_file = Path::new("/sys/block")
        .join(dev.kernel_name())
        .join(format!("{}p1", dev.kernel_name()))
        .join("dev");
    let started = std::time::Instant::now();
    let mut added = false;
    let mut last_error = String::from("never listed in sysfs");
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if !added && started.elapsed() > std::time::Duration::from_secs(1) {
            // A failure here (the kernel added it meanwhile) is no failure of
            // the test: the next reading decides.
            let _ = Command::new("partx")
                .args(["--add", dev.path.to_str().unwrap()])
                .output();
            added = true;
        }
        if let Ok(numbers) = fs::read_to_string(&dev_file) {
            let (major, minor) = numbers.trim().split_once(':').unwrap();
            let (major, minor) = (major.parse().unwrap(), minor.parse().unwrap());
            if let Some(partition) = try_device_node(major, minor, nodes) {
                match DiskFacts::inspect(&partition) {
                    Ok(facts) => return facts,
                    Err(e) => last_error = e.to_string(),
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "{}p1 never became readable: {last_error}",
        dev.kernel_name()
    );
}

/// Whether the kernel has device-mapper (`dmsetup version` reaches its
/// driver). Some test machines' kernels have none.
fn device_mapper_available() -> bool {
    Command::new("dmsetup")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A dm-linear device this test made over one of its loop devices; removed
/// on drop.
struct DmLinear {
    name: String,
}

impl Drop for DmLinear {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup")
            .args(["remove", &self.name])
            .status();
    }
}

#[test]
fn a_device_mapper_device_over_a_loop_device_over_a_kept_file_is_refused() {
    if !require_root(&["losetup", "dmsetup"]) {
        return;
    }
    if !device_mapper_available() {
        // Not a pass: said on stderr past the harness, like a test needing root.
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"not run: a_device_mapper_device_over_a_loop_device_over_a_kept_file_is_refused \
              needs device-mapper in the kernel (dmsetup version fails)\n",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("image.img");
    let bytes = patterned_file(&kept);
    let dev = Attached::over(&kept, &[]);
    let name = format!("flashrack-test-{}", std::process::id());
    let sectors = BACKING_SIZE / 512;
    let table = format!("0 {sectors} linear {} 0", dev.path.display());
    run("dmsetup", &["create", &name, "--table", &table]);
    let dm = DmLinear { name };
    let node = PathBuf::from("/dev/mapper").join(&dm.name);
    let facts = DiskFacts::inspect(&node).unwrap();
    assert_eq!(facts.loop_backings[0].loop_device, dev.kernel_name());
    let refusal = refusal_at_opening(&node, keeping(&kept)).expect("refused");
    assert_eq!(refusal.code, RefusalCode::ProtectedFile, "{refusal:?}");
    assert!(
        refusal
            .message
            .contains(&format!("lies over loop device {}", dev.kernel_name())),
        "{}",
        refusal.message
    );
    assert_eq!(fs::read(&kept).unwrap(), bytes);
}

// ---- loop devices over block devices: judged by the device below ----

/// Opening `device` for writing through the guard with `policy`, and
/// writing a recognisable block at its start when it is let through:
/// the refusal, if any.
fn write_through_guard(device: &Path, policy: GuardPolicy) -> Option<flashrack_core::GuardRefusal> {
    let guard: flashrack_guard::GuardCheck =
        Arc::new(move |facts: &DiskFacts| evaluate(facts, &policy, &armed(0)).map(|_| ()));
    let target = PathTarget::block_device(device, guard);
    let mut writer = match target.open_writer() {
        Ok(writer) => writer,
        Err(TargetError::Refused(refusal)) => return Some(refusal),
        Err(other) => panic!("{} failed to open: {other}", device.display()),
    };
    let mut buf = flashrack_target::AlignedBuf::zeroed(4096);
    buf.fill(0xA5);
    writer.write_all_at(0, &buf).unwrap();
    writer.flush().unwrap();
    None
}

#[test]
fn a_loop_device_over_a_loop_device_with_a_mounted_file_system_is_refused_naming_it() {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    // Dropped in reverse: `upper` is detached first, then the file system
    // unmounted, then `lower` detached.
    let lower = LoopDevice::new(BACKING_SIZE);
    let mounted = MountedFs::new(&lower);
    let upper = Attached::over(lower.path(), &[]);
    let before = fs::read(lower.backing()).unwrap();
    let facts = DiskFacts::inspect(&upper.path).unwrap();
    assert!(
        facts.mounted.is_empty(),
        "the upper device is not mounted itself"
    );
    let below = facts.loop_backings[0]
        .below
        .as_deref()
        .expect("followed to the lower loop device");
    assert_eq!(below.kernel_name, lower.kernel_name());
    assert!(
        facts.loop_backings[0].file.from_loop_status,
        "the lower device is known from the upper one's status"
    );
    // The kernel lets the upper device be opened exclusively (the mount
    // claims only the lower one): without the guard it would be written
    // under the mounted file system.
    let refusal = write_through_guard(&upper.path, loop_policy()).expect("refused");
    assert_eq!(refusal.code, RefusalCode::Mounted, "{refusal:?}");
    assert_eq!(
        refusal.message,
        format!(
            "{} is a loop device over block device {}: {} is mounted at {}",
            upper.kernel_name(),
            lower.kernel_name(),
            lower.kernel_name(),
            mounted.dir.path().display()
        )
    );
    assert_eq!(
        fs::read(lower.backing()).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn a_loop_device_whose_file_system_is_mounted_holds_the_device_below_it() {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let lower = LoopDevice::new(BACKING_SIZE);
    let upper = Attached::over(lower.path(), &[]);
    let _mounted = MountedFs::on(&upper.path);
    let before = fs::read(lower.backing()).unwrap();
    // The lower device opens exclusively (the mount claims the upper one):
    // the guard must see the loop device over it.
    let refusal = write_through_guard(lower.path(), loop_policy()).expect("refused");
    assert_eq!(refusal.code, RefusalCode::Held, "{refusal:?}");
    assert_eq!(
        refusal.message,
        format!(
            "the device is held by {} on {}",
            upper.kernel_name(),
            lower.kernel_name()
        )
    );
    assert_eq!(
        fs::read(lower.backing()).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn a_loop_device_over_the_loop_device_of_a_kept_file_is_refused_as_a_protected_file() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("image.img");
    let bytes = patterned_file(&kept);
    let lower = Attached::over(&kept, &[]);
    let upper = Attached::over(&lower.path, &[]);
    let refusal = write_through_guard(&upper.path, keeping(&kept)).expect("refused");
    assert_eq!(refusal.code, RefusalCode::ProtectedFile, "{refusal:?}");
    assert_eq!(
        refusal.message,
        format!(
            "{} is a loop device over block device {}: {} is a loop device over {}, \
             the kept image: writing it would corrupt that file",
            upper.kernel_name(),
            lower.kernel_name(),
            lower.kernel_name(),
            kept.display()
        )
    );
    assert_eq!(fs::read(&kept).unwrap(), bytes);
}

#[test]
fn a_loop_device_over_a_plain_loop_device_is_allowed_as_that_device_is_and_writes_it() {
    if !require_root(&["losetup"]) {
        return;
    }
    let lower = LoopDevice::new(BACKING_SIZE);
    let upper = Attached::over(lower.path(), &[]);
    let facts = DiskFacts::inspect(&upper.path).unwrap();
    let below = facts.loop_backings[0].below.as_deref().expect("followed");
    assert_eq!(
        (below.major, below.minor),
        (
            DiskFacts::inspect(lower.path()).unwrap().major,
            DiskFacts::inspect(lower.path()).unwrap().minor
        )
    );
    assert!(below.holders.is_empty(), "{below:?}");
    // Allowed where the lower device would be: loop devices on any port.
    assert_eq!(refusals(&facts, &loop_policy(), &armed(0)), vec![]);
    // Not where the lower device would not be: loop devices on mapped
    // ports only (the lower one has no port).
    let mapped_only = GuardPolicy {
        allow_unmapped_ports: false,
        ..loop_policy()
    };
    assert!(refusals(&facts, &mapped_only, &armed(0)).iter().any(
        |r| matches!(r, Refusal::Below { below, reason, .. }
            if *below == lower.kernel_name() && r.kind() == RefusalCode::PortNotMapped
                && matches!(**reason, Refusal::PortNotMapped { port: None }))
    ));
    // Written through the guard: the bytes land in the lower device's file.
    assert_eq!(write_through_guard(&upper.path, loop_policy()), None);
    let written = fs::read(lower.backing()).unwrap();
    assert!(written[..4096].iter().all(|&b| b == 0xA5));
    // And the lower device, with a loop device over it, is held by it.
    let lower_facts = DiskFacts::inspect(lower.path()).unwrap();
    assert_eq!(
        lower_facts.holders,
        [format!(
            "{} on {}",
            upper.kernel_name(),
            lower.kernel_name()
        )]
    );
}

#[test]
fn the_device_below_a_loop_device_is_claimed_for_the_write_and_one_held_elsewhere_is_refused() {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let lower = LoopDevice::new(BACKING_SIZE);
    run("mkfs.ext4", &["-q", "-F", lower.path().to_str().unwrap()]);
    let upper = Attached::over(lower.path(), &[]);
    let before = fs::read(lower.backing()).unwrap();

    // Another process's exclusive hold on the lower device, which the
    // guard's facts cannot see and the upper device's own exclusive open
    // does not meet: refused as busy, naming the lower device.
    let held = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(lower.path())
        .unwrap();
    let facts = DiskFacts::inspect(&upper.path).unwrap();
    assert_eq!(refusals(&facts, &loop_policy(), &armed(0)), vec![]);
    let refusal = write_through_guard(&upper.path, loop_policy()).expect("refused");
    assert_eq!(refusal.code, RefusalCode::Busy, "{refusal:?}");
    assert_eq!(
        refusal.message,
        format!(
            "{} is a loop device over block device {}: the device is busy: {} is mounted or \
             opened exclusively by another process",
            upper.kernel_name(),
            lower.kernel_name(),
            lower.kernel_name()
        )
    );
    assert_eq!(
        fs::read(lower.backing()).unwrap(),
        before,
        "nothing written"
    );
    drop(held);

    // While a writer of the upper device lives, the lower device cannot be
    // mounted (its file system would be written under it).
    let guard: flashrack_guard::GuardCheck =
        Arc::new(move |facts: &DiskFacts| evaluate(facts, &loop_policy(), &armed(0)).map(|_| ()));
    let target = PathTarget::block_device(&upper.path, guard);
    let writer = target
        .open_writer()
        .expect("written as the lower device is");
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .arg(lower.path())
        .arg(dir.path())
        .status()
        .unwrap();
    if mounted.success() {
        let _ = Command::new("umount").arg(dir.path()).status();
    }
    assert!(!mounted.success(), "the claimed device was mounted");
    drop(writer);
    // Let go with the writer: mountable again.
    let mounted = MountedFs::on(lower.path());
    drop(mounted);
}
