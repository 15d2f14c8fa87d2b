//! Fact gathering on fake sysfs trees.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::sysfs::file_name;
use super::*;
use crate::test_support::{armed, refused};
use crate::{evaluate, GuardPolicy, Refusal};

// ---- fact gathering, on fake sysfs trees ----

const USB_PARENT: &str =
    "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";
const SATA_PARENT: &str = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";

/// A sysfs tree in a temporary directory: device directories under `devices/`,
/// linked from `dev/block/MAJ:MIN` and `class/block/NAME` as in the real one.
struct FakeSys {
    dir: tempfile::TempDir,
}

impl FakeSys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("dev/block")).unwrap();
        fs::create_dir_all(dir.path().join("class/block")).unwrap();
        FakeSys { dir }
    }

    fn node(&self, dir: &Path, name: &str, devno: (u32, u32), sectors: u64) {
        fs::create_dir_all(dir.join("holders")).unwrap();
        fs::write(dir.join("dev"), format!("{}:{}\n", devno.0, devno.1)).unwrap();
        fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        fs::write(dir.join("ro"), "0\n").unwrap();
        let root = self.dir.path();
        symlink(dir, root.join(format!("dev/block/{}:{}", devno.0, devno.1))).unwrap();
        symlink(dir, root.join("class/block").join(name)).unwrap();
    }

    /// A whole disk under `parent` (relative to the sysfs root).
    fn disk(&self, parent: &str, name: &str, devno: (u32, u32), sectors: u64) -> PathBuf {
        let dir = self.dir.path().join(parent).join(name);
        fs::create_dir_all(dir.join("slaves")).unwrap();
        // Links that real disks carry and that must not pass for partitions.
        symlink(self.dir.path(), dir.join("subsystem")).unwrap();
        fs::create_dir_all(dir.join("queue")).unwrap();
        self.node(&dir, name, devno, sectors);
        dir
    }

    fn partition(&self, disk: &Path, name: &str, devno: (u32, u32), sectors: u64) -> PathBuf {
        let dir = disk.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("partition"), "1\n").unwrap();
        self.node(&dir, name, devno, sectors);
        dir
    }

    /// Stacks `upper` (a dm or md disk) on `lower`.
    fn stack(&self, upper: &Path, lower: &Path) {
        let lower_name = file_name(lower);
        let upper_name = file_name(upper);
        symlink(lower, upper.join("slaves").join(&lower_name)).unwrap();
        symlink(upper, lower.join("holders").join(&upper_name)).unwrap();
    }

    fn facts(&self, devno: (u32, u32), mountinfo: &str, swaps: &str) -> DiskFacts {
        let view = SystemView::fake(self.dir.path(), mountinfo, swaps);
        DiskFacts::from_view(Path::new("/dev/x"), devno.0, devno.1, &view).unwrap()
    }
}

fn mountinfo(lines: &[(&str, &str, &str)]) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, (devno, mount_point, source))| {
            format!(
                "{} 1 {devno} / {mount_point} rw,relatime shared:1 - fs {source} rw\n",
                20 + i
            )
        })
        .collect()
}

const NO_SWAP: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

#[test]
fn a_usb_disk_is_seen_as_a_whole_usb_disk_with_its_size() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 31_250_000);
    sys.partition(&disk, "sdb1", (8, 17), 1000);
    let facts = sys.facts((8, 16), "", NO_SWAP);
    assert_eq!(facts.kernel_name, "sdb");
    assert_eq!((facts.major, facts.minor), (8, 16));
    assert!(!facts.is_partition);
    assert_eq!(facts.bus.as_deref(), Some("usb"));
    assert_eq!(facts.size_bytes, 16_000_000_000);
    assert_eq!(facts.port_path, None);
    assert!(facts.mounted.is_empty() && facts.swap.is_empty() && facts.holders.is_empty());
    assert_eq!(facts.system_disk, None);
    assert!(!facts.read_only);
    let p = GuardPolicy {
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    assert!(evaluate(&facts, &p, &armed(1_000_000)).is_ok());
}

#[test]
fn buses_are_told_from_the_sysfs_path() {
    let sys = FakeSys::new();
    sys.disk(SATA_PARENT, "sda", (8, 0), 100);
    sys.disk("devices/virtual/block", "loop3", (7, 3), 100);
    sys.disk(
        "devices/pci0000:00/0000:00:02.0/virtio1/block",
        "vda",
        (254, 0),
        100,
    );
    sys.disk(
        "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0",
        "nvme0n1",
        (259, 0),
        100,
    );
    sys.disk("devices/virtual/block", "dm-0", (253, 0), 100);
    sys.disk(
        "devices/platform/soc/mmc_host/mmc0/mmc0:0001/block",
        "mmcblk0",
        (179, 0),
        100,
    );
    sys.disk(
        "devices/pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0/block",
        "sdc",
        (8, 32),
        100,
    );
    for (devno, bus) in [
        ((8, 0), "ata"),
        ((7, 3), "loop"),
        ((254, 0), "virtio"),
        ((259, 0), "nvme"),
        ((253, 0), "virtual"),
        ((179, 0), "mmc"),
        ((8, 32), "scsi"),
    ] {
        assert_eq!(
            sys.facts(devno, "", "").bus.as_deref(),
            Some(bus),
            "{devno:?}"
        );
    }
}

#[test]
fn a_partition_is_seen_as_one_and_refused() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    sys.partition(&disk, "sdb1", (8, 17), 900);
    let facts = sys.facts((8, 17), "", "");
    assert!(facts.is_partition);
    assert_eq!(facts.parent_disk.as_deref(), Some("sdb"));
    assert_eq!(facts.bus.as_deref(), Some("usb"));
    assert_eq!(
        refused(&facts, &GuardPolicy::default(), &armed(1)),
        Refusal::NotWholeDisk {
            device: "sdb1".to_owned(),
            disk: Some("sdb".to_owned())
        }
    );
}

#[test]
fn a_read_only_disk_is_reported() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    fs::write(disk.join("ro"), "1\n").unwrap();
    assert!(sys.facts((8, 16), "", "").read_only);
}

#[test]
fn a_mounted_partition_of_the_disk_is_found_and_refused() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    sys.partition(&disk, "sdb1", (8, 17), 400);
    sys.partition(&disk, "sdb2", (8, 18), 400);
    let mi = mountinfo(&[
        ("254:0", "/", "/dev/vda"),
        ("8:18", "/media/my\\040stick", "/dev/sdb2"),
    ]);
    let facts = sys.facts((8, 16), &mi, NO_SWAP);
    assert_eq!(
        facts.mounted,
        [MountUse {
            device: "sdb2".to_owned(),
            mount_point: "/media/my stick".to_owned()
        }]
    );
    let p = GuardPolicy {
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    assert_eq!(
        refused(&facts, &p, &armed(1)).to_string(),
        "sdb2 is mounted at /media/my stick"
    );
}

#[test]
fn a_mount_with_an_anonymous_device_number_is_matched_by_its_source() {
    // btrfs shows 0:N in mountinfo; the source names the device.
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    sys.partition(&disk, "sdb1", (8, 17), 400);
    let mi = mountinfo(&[("0:33", "/data", "/dev/sdb1"), ("0:21", "/proc", "proc")]);
    let facts = sys.facts((8, 16), &mi, "");
    assert_eq!(facts.mounted.len(), 1);
    assert_eq!(facts.mounted[0].device, "sdb1");
    assert_eq!(
        facts.system_disk.as_deref(),
        Some("holds /data (mounted from sdb1)")
    );
}

#[test]
fn a_swap_partition_of_the_disk_is_found_and_refused() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    sys.partition(&disk, "sdb2", (8, 18), 400);
    let swaps = format!(
        "{NO_SWAP}/swapfile                               file\t\t1048572\t\t0\t\t-2\n\
         /dev/sdb2                               partition\t1048572\t\t0\t\t-3\n"
    );
    let facts = sys.facts((8, 16), "", &swaps);
    assert_eq!(facts.swap, ["/dev/sdb2"]);
    let p = GuardPolicy {
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    assert_eq!(refused(&facts, &p, &armed(1)).code(), "swap");
}

#[test]
fn swap_on_a_stack_over_the_disk_counts_as_swap_on_the_disk() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    let part = sys.partition(&disk, "sdb1", (8, 17), 400);
    let dm = sys.disk("devices/virtual/block", "dm-1", (253, 1), 400);
    sys.stack(&dm, &part);
    let swaps = format!("{NO_SWAP}/dev/dm-1 partition 1048572 0 -2\n");
    let facts = sys.facts((8, 16), "", &swaps);
    assert_eq!(facts.swap, ["/dev/dm-1"]);
    assert_eq!(facts.holders, ["dm-1 on sdb1"]);
}

#[test]
fn holders_of_the_disk_or_its_partitions_are_found_and_refused() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    let part = sys.partition(&disk, "sdb1", (8, 17), 400);
    let md = sys.disk("devices/virtual/block", "md127", (9, 127), 400);
    sys.stack(&md, &disk);
    let dm = sys.disk("devices/virtual/block", "dm-0", (253, 0), 400);
    sys.stack(&dm, &part);
    let facts = sys.facts((8, 16), "", "");
    assert_eq!(facts.holders, ["md127 on sdb", "dm-0 on sdb1"]);
    let p = GuardPolicy {
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    assert_eq!(
        refused(&facts, &p, &armed(1)).to_string(),
        "the device is held by md127 on sdb, dm-0 on sdb1"
    );
}

#[test]
fn a_disk_under_the_root_filesystem_through_lvm_is_a_system_disk() {
    // / on dm-0 (LVM) on sda2: sda is not mounted itself, but it is the system disk.
    let sys = FakeSys::new();
    let sda = sys.disk(USB_PARENT, "sda", (8, 0), 1000);
    let sda1 = sys.partition(&sda, "sda1", (8, 1), 100);
    let sda2 = sys.partition(&sda, "sda2", (8, 2), 800);
    let dm = sys.disk("devices/virtual/block", "dm-0", (253, 0), 800);
    sys.stack(&dm, &sda2);
    let _ = sda1;
    let mi = mountinfo(&[
        ("8:1", "/boot", "/dev/sda1"),
        ("253:0", "/", "/dev/mapper/vg-root"),
    ]);
    let facts = sys.facts((8, 0), &mi, "");
    assert_eq!(
        facts.system_disk.as_deref(),
        Some("holds / (mounted from dm-0)")
    );
    // Even with nothing else against it, rule 4 refuses it.
    let bare = DiskFacts {
        mounted: vec![],
        holders: vec![],
        ..facts
    };
    let p = GuardPolicy {
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    };
    assert_eq!(
        refused(&bare, &p, &armed(1)).to_string(),
        "this is a system disk: it holds / (mounted from dm-0)"
    );
}

#[test]
fn a_disk_under_an_md_array_mounted_anywhere_is_a_system_disk() {
    let sys = FakeSys::new();
    let sdc = sys.disk(SATA_PARENT, "sdc", (8, 32), 1000);
    let sdd = sys.disk(USB_PARENT, "sdd", (8, 48), 1000);
    let md = sys.disk("devices/virtual/block", "md0", (9, 0), 1000);
    sys.stack(&md, &sdc);
    sys.stack(&md, &sdd);
    let mi = mountinfo(&[("9:0", "/srv", "/dev/md0")]);
    for devno in [(8, 32), (8, 48)] {
        let facts = sys.facts(devno, &mi, "");
        assert_eq!(
            facts.system_disk.as_deref(),
            Some("holds /srv (mounted from md0)")
        );
        assert!(facts.mounted.is_empty());
    }
}

#[test]
fn an_unrelated_mount_does_not_touch_the_disk() {
    let sys = FakeSys::new();
    sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    sys.disk(
        "devices/pci0000:00/0000:00:02.0/virtio1/block",
        "vda",
        (254, 0),
        1000,
    );
    let mi = mountinfo(&[("254:0", "/", "/dev/vda"), ("0:21", "/proc", "proc")]);
    let facts = sys.facts((8, 16), &mi, NO_SWAP);
    assert!(facts.mounted.is_empty());
    assert_eq!(facts.system_disk, None);
    let root = sys.facts((254, 0), &mi, NO_SWAP);
    assert_eq!(
        root.system_disk.as_deref(),
        Some("holds / (mounted from vda)")
    );
}

#[test]
fn a_device_missing_from_sysfs_is_an_error() {
    let sys = FakeSys::new();
    let view = SystemView::fake(sys.dir.path(), "", "");
    let err = DiskFacts::from_view(Path::new("/dev/x"), 8, 99, &view).unwrap_err();
    assert!(matches!(
        err,
        GuardError::NotInSysfs {
            major: 8,
            minor: 99,
            ..
        }
    ));
}

#[test]
fn a_malformed_mountinfo_is_an_error_not_an_empty_list() {
    let sys = FakeSys::new();
    sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    let view = SystemView::fake(sys.dir.path(), "garbage line\n", "");
    let err = DiskFacts::from_view(Path::new("/dev/x"), 8, 16, &view).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot understand mountinfo line 1: no major:minor in the third field"
    );
}

#[test]
fn a_regular_file_is_not_a_block_device() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let view = SystemView::fake("/nonexistent", "", "");
    let err = DiskFacts::inspect_with(file.path(), &view).unwrap_err();
    assert!(matches!(err, GuardError::NotBlockDevice { .. }), "{err}");
}

#[test]
fn the_disk_sequence_number_is_read_from_sysfs_when_there_is_one() {
    let sys = FakeSys::new();
    let disk = sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    assert_eq!(sys.facts((8, 16), "", "").diskseq, None);
    fs::write(disk.join("diskseq"), "42\n").unwrap();
    let facts = sys.facts((8, 16), "", "");
    assert_eq!(
        facts.identity(),
        DiskIdentity {
            major: 8,
            minor: 16,
            diskseq: Some(42)
        }
    );
}

const LOOP_PARENT: &str = "devices/virtual/block";

/// Attaches a fake loop device's backing file as sysfs names it.
fn attach(disk: &Path, text: &str) {
    fs::create_dir_all(disk.join("loop")).unwrap();
    fs::write(disk.join("loop/backing_file"), format!("{text}\n")).unwrap();
}

#[test]
fn a_loop_devices_backing_file_is_known_by_path_device_and_inode() {
    use std::os::unix::fs::MetadataExt;
    let sys = FakeSys::new();
    let image = tempfile::NamedTempFile::new().unwrap();
    let disk = sys.disk(LOOP_PARENT, "loop7", (7, 7), 2048);
    attach(&disk, &image.path().display().to_string());
    let facts = sys.facts((7, 7), "", NO_SWAP);
    assert_eq!(facts.bus.as_deref(), Some("loop"));
    let meta = fs::metadata(image.path()).unwrap();
    // A view without the loop device's status: the file at the path now.
    assert_eq!(
        facts.loop_backings,
        vec![LoopBacking {
            loop_device: "loop7".to_owned(),
            file: BackingFile {
                path: image.path().to_path_buf(),
                file: Some((meta.dev(), meta.ino())),
                deleted: false,
                from_loop_status: false,
            },
            below: None,
        }]
    );

    // An unlinked backing file is named as the kernel names it, without
    // the suffix, and has no inode to compare by path.
    attach(&disk, "/tmp/gone.img (deleted)");
    let gone = BackingFile {
        path: PathBuf::from("/tmp/gone.img"),
        file: None,
        deleted: true,
        from_loop_status: false,
    };
    assert_eq!(
        sys.facts((7, 7), "", NO_SWAP).loop_backings[0].file,
        gone.clone()
    );
    // The loop device's status names it all the same.
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP).with_loop_file("loop7", 5, 77);
    let facts = DiskFacts::from_view(Path::new("/dev/x"), 7, 7, &view).unwrap();
    assert_eq!(
        facts.loop_backings[0].file,
        BackingFile {
            file: Some((5, 77)),
            from_loop_status: true,
            ..gone
        }
    );
}

#[test]
fn the_loop_devices_status_wins_over_what_its_path_names_now() {
    use std::os::unix::fs::MetadataExt;
    // The path names one file here (another mount namespace, or a file
    // replaced at that path); the loop device writes another.
    let sys = FakeSys::new();
    let here = tempfile::NamedTempFile::new().unwrap();
    let disk = sys.disk(LOOP_PARENT, "loop7", (7, 7), 2048);
    attach(&disk, &here.path().display().to_string());
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP).with_loop_file("loop7", 5, 77);
    let facts = DiskFacts::from_view(Path::new("/dev/x"), 7, 7, &view).unwrap();
    let meta = fs::metadata(here.path()).unwrap();
    assert_ne!(Some((meta.dev(), meta.ino())), Some((5, 77)));
    assert_eq!(facts.loop_backings[0].file.file, Some((5, 77)));
    assert_eq!(facts.loop_backings[0].file.path, here.path());
}

#[test]
fn devices_stacked_over_loop_devices_carry_the_loop_devices_backing_files() {
    let sys = FakeSys::new();
    let loop1 = sys.disk(LOOP_PARENT, "loop1", (7, 1), 2048);
    attach(&loop1, "/srv/one.img");
    let loop1p1 = sys.partition(&loop1, "loop1p1", (259, 0), 1024);
    let loop2 = sys.disk(LOOP_PARENT, "loop2", (7, 2), 2048);
    attach(&loop2, "/srv/two.img");
    let detached = sys.disk(LOOP_PARENT, "loop3", (7, 3), 0);
    let usb = sys.disk(USB_PARENT, "sdb", (8, 16), 2048);
    // dm-0 over loop1's partition and over loop2; md0 over dm-0, a detached
    // loop device and a USB disk.
    let dm = sys.disk(LOOP_PARENT, "dm-0", (253, 0), 2048);
    sys.stack(&dm, &loop1p1);
    sys.stack(&dm, &loop2);
    let md = sys.disk(LOOP_PARENT, "md0", (9, 0), 2048);
    sys.stack(&md, &dm);
    sys.stack(&md, &detached);
    sys.stack(&md, &usb);
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP)
        .with_loop_file("loop1", 5, 11)
        .with_loop_file("loop2", 5, 22);
    /// A loop device's name, the device and inode of its file, its path.
    type Under = (String, Option<(u64, u64)>, PathBuf);
    let under = |devno: (u32, u32)| -> Vec<Under> {
        DiskFacts::from_view(Path::new("/dev/x"), devno.0, devno.1, &view)
            .unwrap()
            .loop_backings
            .into_iter()
            .map(|b| (b.loop_device, b.file.file, b.file.path))
            .collect()
    };
    let one = (
        "loop1".to_owned(),
        Some((5, 11)),
        PathBuf::from("/srv/one.img"),
    );
    let two = (
        "loop2".to_owned(),
        Some((5, 22)),
        PathBuf::from("/srv/two.img"),
    );
    assert_eq!(under((253, 0)), vec![one.clone(), two.clone()]);
    assert_eq!(under((9, 0)), vec![one.clone(), two]);
    // A partition carries its loop device's file; the USB disk none.
    assert_eq!(under((259, 0)), vec![one]);
    assert_eq!(under((8, 16)), vec![]);
}

#[test]
fn a_disk_that_is_no_loop_device_or_a_detached_loop_has_no_backing_file() {
    let sys = FakeSys::new();
    sys.disk(USB_PARENT, "sdb", (8, 16), 1000);
    assert_eq!(sys.facts((8, 16), "", NO_SWAP).loop_backings, vec![]);
    // A loop device with nothing attached has no `loop/` directory.
    sys.disk(LOOP_PARENT, "loop3", (7, 3), 0);
    assert_eq!(sys.facts((7, 3), "", NO_SWAP).loop_backings, vec![]);
}

// ---- loop devices over block devices: judged by what they write ----

/// Loop devices and USB disks allowed, any port.
fn loops_and_usb() -> GuardPolicy {
    GuardPolicy {
        allowed_buses: ["loop".to_owned(), "usb".to_owned()].into(),
        allow_unmapped_ports: true,
        ..GuardPolicy::default()
    }
}

/// What `evaluate` and `refusals` say of the device `devno` in `view`.
fn judged(view: &SystemView, devno: (u32, u32)) -> (DiskFacts, Vec<Refusal>) {
    let facts = DiskFacts::from_view(Path::new("/dev/x"), devno.0, devno.1, view).unwrap();
    let all = crate::refusals(&facts, &loops_and_usb(), &armed(1));
    (facts, all)
}

#[test]
fn a_loop_device_over_another_carries_its_facts_and_is_judged_as_it_is() {
    let sys = FakeSys::new();
    let loop4 = sys.disk(LOOP_PARENT, "loop4", (7, 4), 2048);
    attach(&loop4, "/srv/a.img");
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 2048);
    attach(&loop5, "/dev/loop4");
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP).with_loop_over_device("loop5", 7, 4);
    let (facts, all) = judged(&view, (7, 5));
    let below = facts.loop_backings[0].below.as_deref().expect("below");
    assert_eq!(below.kernel_name, "loop4");
    assert_eq!((below.major, below.minor), (7, 4));
    // loop5 is what is judged: it is not loop4's holder here.
    assert!(below.holders.is_empty(), "{below:?}");
    assert_eq!(below.loop_backings[0].file.path, Path::new("/srv/a.img"));
    assert!(below.loop_backings[0].below.is_none());
    // loop4 is allowed, so loop5 is.
    assert_eq!(all, vec![]);

    // loop4 with a file system mounted: loop5 is refused, naming loop4.
    let mi = mountinfo(&[("7:4", "/mnt/a", "/dev/loop4")]);
    let view = SystemView::fake(sys.dir.path(), mi, NO_SWAP).with_loop_over_device("loop5", 7, 4);
    let (facts, all) = judged(&view, (7, 5));
    assert_eq!(facts.mounted, vec![], "loop5 itself is not mounted");
    let first = evaluate(&facts, &loops_and_usb(), &armed(1)).unwrap_err();
    assert_eq!(first, all[0]);
    assert_eq!(first.kind(), flashrack_core::RefusalCode::Mounted);
    assert_eq!(
        first.to_string(),
        "loop5 is a loop device over block device loop4: loop4 is mounted at /mnt/a"
    );
    // The system-disk rule says so too (loop4 holds a mounted file system).
    assert!(all.iter().any(|r| matches!(
        r,
        Refusal::Below { reason, .. } if matches!(**reason, Refusal::SystemDisk { .. })
    )));
}

#[test]
fn a_loop_device_is_a_holder_of_the_block_device_it_writes() {
    let sys = FakeSys::new();
    let loop4 = sys.disk(LOOP_PARENT, "loop4", (7, 4), 2048);
    attach(&loop4, "/srv/a.img");
    sys.partition(&loop4, "loop4p1", (259, 1), 1024);
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 1024);
    attach(&loop5, "/dev/loop4p1");
    let loop6 = sys.disk(LOOP_PARENT, "loop6", (7, 6), 2048);
    attach(&loop6, "/dev/loop4");
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP)
        .with_loop_over_device("loop5", 259, 1)
        .with_loop_over_device("loop6", 7, 4);
    // Writing loop4 would write under loop5 and loop6 (a file system on
    // either may be mounted): held by both, which the kernel does not list.
    let (facts, _) = judged(&view, (7, 4));
    assert_eq!(facts.holders, ["loop5 on loop4p1", "loop6 on loop4"]);
    assert_eq!(
        evaluate(&facts, &loops_and_usb(), &armed(1))
            .unwrap_err()
            .to_string(),
        "the device is held by loop5 on loop4p1, loop6 on loop4"
    );
    // loop6 is over loop4, which loop5 holds through its partition: refused,
    // naming loop4 and the other loop device, not itself.
    let (facts, all) = judged(&view, (7, 6));
    assert_eq!(
        facts.loop_backings[0].below.as_deref().unwrap().holders,
        ["loop5 on loop4p1"]
    );
    assert_eq!(
        all.iter().map(Refusal::to_string).collect::<Vec<_>>(),
        ["loop6 is a loop device over block device loop4: the device is held by loop5 on loop4p1"]
    );
    // loop5 is over a partition: refused for that (and for loop6 over its disk).
    let (_, all) = judged(&view, (7, 5));
    assert_eq!(
        all.iter().map(Refusal::to_string).collect::<Vec<_>>(),
        [
            "loop5 is a loop device over block device loop4p1: loop4p1 is a partition of loop4, not a whole disk",
        ]
    );
}

#[test]
fn a_loop_device_over_a_partition_of_the_system_disk_is_refused_naming_it() {
    let sys = FakeSys::new();
    let vda = sys.disk(
        "devices/pci0000:00/0000:00:02.0/virtio1/block",
        "vda",
        (254, 0),
        100_000,
    );
    sys.partition(&vda, "vda1", (254, 1), 90_000);
    sys.partition(&vda, "vda2", (254, 2), 9_000);
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 9_000);
    attach(&loop5, "/dev/vda2");
    // vda2 itself is not mounted: the disk it is on holds /.
    let mi = mountinfo(&[("254:1", "/", "/dev/vda1")]);
    let view = SystemView::fake(sys.dir.path(), mi, NO_SWAP).with_loop_over_device("loop5", 254, 2);
    // Even with virtio allowed: a partition of the system disk.
    let policy = GuardPolicy {
        allowed_buses: ["loop".to_owned(), "virtio".to_owned()].into(),
        ..loops_and_usb()
    };
    let facts = DiskFacts::from_view(Path::new("/dev/loop5"), 7, 5, &view).unwrap();
    let all = crate::refusals(&facts, &policy, &armed(1));
    assert_eq!(
        all.iter().map(Refusal::to_string).collect::<Vec<_>>(),
        [
            "loop5 is a loop device over block device vda2: vda2 is a partition of vda, not a whole disk",
            "loop5 is a loop device over block device vda2: this is a system disk: it holds / (mounted from vda1)",
        ]
    );
    assert_eq!(all[1].kind(), flashrack_core::RefusalCode::SystemDisk);
    // And with the default buses, the bus too; never accepted.
    let (_, all) = judged(&view, (7, 5));
    assert!(all.iter().any(|r| r.to_string()
        == "loop5 is a loop device over block device vda2: the device is on the virtio bus, which the configuration does not allow"));
    // Capturing through it is refused as well: vda holds a mounted file system.
    assert!(crate::read_refusals(&facts, &policy)
        .iter()
        .any(|r| r.kind() == flashrack_core::RefusalCode::SystemDisk));
}

#[test]
fn loop_devices_over_block_devices_are_followed_down_every_level() {
    let sys = FakeSys::new();
    let loop4 = sys.disk(LOOP_PARENT, "loop4", (7, 4), 2048);
    attach(&loop4, "/srv/a.img");
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 2048);
    attach(&loop5, "/dev/loop4");
    let loop6 = sys.disk(LOOP_PARENT, "loop6", (7, 6), 2048);
    attach(&loop6, "/dev/loop5");
    sys.partition(&loop6, "loop6p1", (259, 6), 1024);
    let mi = mountinfo(&[("7:4", "/mnt/a", "/dev/loop4")]);
    let view = SystemView::fake(sys.dir.path(), mi, NO_SWAP)
        .with_loop_over_device("loop5", 7, 4)
        .with_loop_over_device("loop6", 7, 5);
    let (_, all) = judged(&view, (7, 6));
    assert_eq!(
        all[0].to_string(),
        "loop6 is a loop device over block device loop5: loop5 is a loop device over block device loop4: loop4 is mounted at /mnt/a"
    );
    assert_eq!(all[0].code(), "mounted");
    // A partition of the top one names the loop device it lies on.
    let (_, all) = judged(&view, (259, 6));
    assert!(
        all.iter().any(|r| r.to_string()
            == "loop6p1 lies over loop device loop6, which is over block device loop5: loop5 is a loop device over block device loop4: loop4 is mounted at /mnt/a"),
        "{all:#?}"
    );
}

#[test]
fn a_loop_device_over_a_usb_disk_is_judged_by_that_disk() {
    let sys = FakeSys::new();
    sys.disk(USB_PARENT, "sdb", (8, 16), 31_250_000);
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 31_250_000);
    attach(&loop5, "/dev/sdb");
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP).with_loop_over_device("loop5", 8, 16);
    // USB and unmapped ports allowed: as sdb is.
    assert_eq!(judged(&view, (7, 5)).1, vec![]);
    let facts = DiskFacts::from_view(Path::new("/dev/loop5"), 7, 5, &view).unwrap();
    // sdb's port is not known from sysfs: where ports must be mapped,
    // writing it through a loop device is refused as writing it would be.
    let mapped_only = GuardPolicy {
        allow_unmapped_ports: false,
        ..loops_and_usb()
    };
    let all = crate::refusals(&facts, &mapped_only, &armed(1));
    assert!(all.iter().any(|r| r.to_string()
        == "loop5 is a loop device over block device sdb: the device's port is unknown and the configuration does not allow unmapped ports"));
    // Over the size limit: probably a USB hard disk.
    let small_limit = GuardPolicy {
        max_size_bytes: 1_000_000_000,
        ..loops_and_usb()
    };
    let all = crate::refusals(&facts, &small_limit, &armed(1));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|r| r.code() == "too_large"));
    assert!(all[0]
        .to_string()
        .starts_with("loop5 is a loop device over block device sdb: the device is too large"));
    // USB not allowed: refused for sdb's bus.
    let loops_only = GuardPolicy {
        allowed_buses: ["loop".to_owned()].into(),
        ..loops_and_usb()
    };
    assert_eq!(
        evaluate(&facts, &loops_only, &armed(1)).unwrap_err().to_string(),
        "loop5 is a loop device over block device sdb: the device is on the usb bus, which the configuration does not allow"
    );
}

#[test]
fn a_loop_device_over_a_loop_device_over_a_kept_file_is_refused_as_a_protected_file() {
    struct Keeps;
    impl crate::FileKeeper for Keeps {
        fn keeps(&self, file: &BackingFile) -> Option<String> {
            (file.file == Some((5, 11))).then(|| "the cached image".to_owned())
        }
    }
    let sys = FakeSys::new();
    let loop4 = sys.disk(LOOP_PARENT, "loop4", (7, 4), 2048);
    attach(&loop4, "/cache/abc.img");
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 2048);
    attach(&loop5, "/dev/loop4");
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP)
        .with_loop_file("loop4", 5, 11)
        .with_loop_over_device("loop5", 7, 4);
    let facts = DiskFacts::from_view(Path::new("/dev/loop5"), 7, 5, &view).unwrap();
    let policy = GuardPolicy {
        protected_files: crate::ProtectedFiles::new(std::sync::Arc::new(Keeps)),
        ..loops_and_usb()
    };
    let refusal = evaluate(&facts, &policy, &armed(1)).unwrap_err();
    assert_eq!(refusal.code(), "protected_file");
    assert_eq!(
        refusal.to_string(),
        "loop5 is a loop device over block device loop4: loop4 is a loop device over \
         /cache/abc.img, the cached image: writing it would corrupt that file"
    );
    // The node's own device and inode (the loop device's "file") is never
    // taken for the kept file.
    assert_eq!(facts.loop_backings[0].file.file, Some((0, 0)));
}

#[test]
fn a_cycle_of_loop_devices_fails_closed() {
    // The kernel refuses to make one; a view that shows one is not trusted.
    let sys = FakeSys::new();
    let loop4 = sys.disk(LOOP_PARENT, "loop4", (7, 4), 2048);
    attach(&loop4, "/dev/loop5");
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 2048);
    attach(&loop5, "/dev/loop4");
    let view = SystemView::fake(sys.dir.path(), "", NO_SWAP)
        .with_loop_over_device("loop4", 7, 5)
        .with_loop_over_device("loop5", 7, 4);
    let error = DiskFacts::from_view(Path::new("/dev/loop5"), 7, 5, &view).unwrap_err();
    assert!(
        error.to_string().contains("stacked deeper than 16 levels"),
        "{error}"
    );
    assert_eq!(Refusal::from(error).code(), "cannot_inspect");
}

#[test]
fn a_fake_view_never_follows_a_backing_path_to_the_hosts_dev() {
    // No status given: the path names a block device on most hosts, but a
    // test's view must not depend on what the host's /dev holds.
    let sys = FakeSys::new();
    let loop5 = sys.disk(LOOP_PARENT, "loop5", (7, 5), 2048);
    attach(&loop5, "/dev/null");
    let facts = sys.facts((7, 5), "", NO_SWAP);
    assert!(facts.loop_backings[0].below.is_none());
}
