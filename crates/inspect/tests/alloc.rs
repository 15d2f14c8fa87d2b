//! Block maps generated from real file systems (`mkfs.ext4 -d`, `mkfs.vfat`
//! with files put in by mtools, which scripts/setup installs): the mapped
//! ranges copied onto a stick-sized buffer of garbage give a file system that
//! `e2fsck`/`fsck.vfat` find clean and whose files read back whole, zero-filled
//! ones and directories included; damaged file systems are refused with a
//! reason.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashrack_inspect::alloc::{allocation_map, AllocError, AllocationMap};
use flashrack_inspect::{inspect, FsKind};

const MIB: u64 = 1 << 20;
/// What the "stick" holds before the sparse copy.
const GARBAGE: u8 = 0xa5;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic file contents, never a zero byte.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// The files the tests put in: data, a zero-filled file, a nested directory.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (PathBuf::from("big.bin"), data(3 * MIB as usize + 1234, 1)),
        (PathBuf::from("zeros.bin"), vec![0u8; 300 * 1024]),
        (PathBuf::from("sub/deeper/small.txt"), b"hello\n".to_vec()),
        (PathBuf::from("sub/other.bin"), data(70_000, 2)),
    ];
    for (path, bytes) in &files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    files
}

/// The image's mapped ranges copied onto garbage: a stick after a sparse write.
fn sparse_copy(image: &[u8], map: &AllocationMap) -> Vec<u8> {
    let mut stick = vec![GARBAGE; image.len()];
    for &(offset, len) in &map.ranges {
        let (o, l) = (offset as usize, len as usize);
        stick[o..o + l].copy_from_slice(&image[o..o + l]);
    }
    stick
}

fn assert_ranges_sane(map: &AllocationMap, size: u64) {
    let mut end = 0;
    for &(offset, len) in &map.ranges {
        assert!(len > 0 && offset >= end, "{:?}", map.ranges);
        assert!(offset.is_multiple_of(4096));
        end = offset + len;
    }
    assert!(end <= size);
}

fn make_ext4(dir: &Path, size: u64, extra: &[&str]) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let root = dir.join("ext-root");
    let files = tree(&root);
    let image = dir.join("ext4.img");
    fs::File::create(&image).unwrap().set_len(size).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ROOT"])
        .args(extra)
        .arg("-d")
        .arg(&root)
        .arg(&image));
    (image, files)
}

/// Checks an ext file system image: `e2fsck -fn` finds it clean and every
/// file reads back as written (through debugfs, no mount).
fn assert_ext_intact(path: &Path, files: &[(PathBuf, Vec<u8>)]) {
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(path));
    let out = path.with_extension("dump");
    for (name, bytes) in files {
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /{} {}", name.display(), out.display()))
            .arg(path));
        assert!(
            fs::read(&out).unwrap() == *bytes,
            "{} differs",
            name.display()
        );
    }
    let listing = run(Command::new("debugfs").arg("-R").arg("ls -l /").arg(path));
    assert!(listing.contains("empty-dir"), "{listing}");
}

fn make_fat(dir: &Path, size: u64, fat: &str) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let root = dir.join(format!("fat{fat}-root"));
    let files = tree(&root);
    let image = dir.join(format!("fat{fat}.img"));
    fs::File::create(&image).unwrap().set_len(size).unwrap();
    run(Command::new("mkfs.vfat")
        .args(["-F", fat, "-n", "EFI"])
        .arg(&image));
    for entry in ["big.bin", "zeros.bin", "sub", "empty-dir"] {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(&image)
            .arg(root.join(entry))
            .arg("::/"));
    }
    (image, files)
}

fn assert_fat_intact(path: &Path, files: &[(PathBuf, Vec<u8>)]) {
    run(Command::new("fsck.vfat").arg("-n").arg(path));
    let out = path.with_extension("dump");
    for (name, bytes) in files {
        let _ = fs::remove_file(&out);
        run(Command::new("mcopy")
            .arg("-i")
            .arg(path)
            .arg(format!("::/{}", name.display()))
            .arg(&out));
        assert!(
            fs::read(&out).unwrap() == *bytes,
            "{} differs",
            name.display()
        );
    }
    let listing = run(Command::new("mdir").arg("-i").arg(path).arg("::/"));
    assert!(listing.to_lowercase().contains("empty-dir"), "{listing}");
}

// A `Vec`: a `&[u8]` is not a `&dyn ReadAt` (the impl is for the unsized `[u8]`).
#[allow(clippy::ptr_arg)]
fn map_of(bytes: &Vec<u8>) -> AllocationMap {
    let info = inspect(bytes);
    let map = allocation_map(bytes, &info).unwrap_or_else(|e| panic!("{e}"));
    assert_ranges_sane(&map, bytes.len() as u64);
    map
}

#[test]
fn an_ext4_map_carries_every_allocated_block_and_nothing_free() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("default", &[][..]),
        ("1k-blocks-ext2", &["-b", "1024", "-t", "ext2"][..]),
        (
            "no-lazy-init",
            &["-E", "lazy_itable_init=0", "-O", "^metadata_csum"][..],
        ),
        // Superblock backups in the two groups the superblock names (1 and
        // the last here): its uninitialised groups were mapped whole.
        (
            "sparse-super2",
            &["-b", "1024", "-O", "^has_journal,sparse_super2"][..],
        ),
    ] {
        let sub = dir.path().join(name);
        fs::create_dir(&sub).unwrap();
        let (path, files) = make_ext4(&sub, 64 * MIB, extra);
        let bytes = fs::read(&path).unwrap();
        let map = map_of(&bytes);
        // The file system's own count of its free blocks agrees with the map.
        let header = run(Command::new("dumpe2fs").arg("-h").arg(&path));
        let field = |key: &str| -> u64 {
            header
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in {header}"))
                .trim()
                .parse()
                .unwrap()
        };
        let block = field("Block size:");
        let used = (field("Block count:") - field("Free blocks:")) * block;
        let mapped = map.mapped_bytes();
        // The map is in 4 KiB blocks and always holds the first 2 KiB; with
        // 1 KiB blocks a few partly used 4 KiB blocks are carried whole.
        assert!(mapped >= used, "{name}: {mapped} mapped, {used} used");
        assert!(
            mapped <= used + used / 4 + 8192,
            "{name}: {mapped} mapped, {used} used"
        );
        assert!(mapped < 64 * MIB / 2, "{name}: {mapped}");
        let copy = sub.join("copy.img");
        fs::write(&copy, sparse_copy(&bytes, &map)).unwrap();
        assert_ext_intact(&copy, &files);
    }
}

#[test]
fn a_fat_map_carries_directories_and_zero_filled_files() {
    let dir = tempfile::tempdir().unwrap();
    for (fat, size) in [("12", 8 * MIB), ("16", 32 * MIB), ("32", 64 * MIB)] {
        let (path, files) = make_fat(dir.path(), size, fat);
        let bytes = fs::read(&path).unwrap();
        let map = map_of(&bytes);
        let files_bytes: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        assert!(map.mapped_bytes() >= files_bytes, "FAT{fat}");
        assert!(
            map.mapped_bytes() < files_bytes + 3 * MIB,
            "FAT{fat}: {}",
            map.mapped_bytes()
        );
        let copy = dir.path().join(format!("copy{fat}.img"));
        fs::write(&copy, sparse_copy(&bytes, &map)).unwrap();
        assert_fat_intact(&copy, &files);
    }
}

#[test]
fn a_partitioned_image_maps_its_table_gaps_and_each_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let (fat, fat_files) = make_fat(dir.path(), 16 * MIB, "16");
    let (ext, ext_files) = make_ext4(dir.path(), 48 * MIB, &[]);
    let disk = dir.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(70 * MIB).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: dos\nstart=2048, size=32768, type=c\nstart=36864, size=98304, type=83\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut bytes = fs::read(&disk).unwrap();
    // Boot code before the table, which must be carried as it is.
    bytes[..440].copy_from_slice(&data(440, 9));
    let place = |bytes: &mut Vec<u8>, at: u64, part: &Path| {
        let p = fs::read(part).unwrap();
        bytes[at as usize..at as usize + p.len()].copy_from_slice(&p);
    };
    place(&mut bytes, MIB, &fat);
    place(&mut bytes, 18 * MIB, &ext);
    let info = inspect(&bytes);
    let parts = &info.table.as_ref().unwrap().partitions;
    assert_eq!(parts[0].filesystem.as_ref().unwrap().kind, FsKind::Fat16);
    assert_eq!(parts[1].filesystem.as_ref().unwrap().kind, FsKind::Ext4);
    let map = map_of(&bytes);
    assert_eq!(map.sources.len(), 2, "{map}");
    // The table, the boot code and the gap before the first partition.
    assert_eq!(map.ranges[0].0, 0);
    assert!(map.ranges[0].1 >= MIB);
    // The space after the last partition matters too (nothing reads it).
    let last = map.ranges.last().unwrap();
    assert_eq!(last.0 + last.1, 70 * MIB);
    assert!(last.0 <= 66 * MIB);
    let copy = sparse_copy(&bytes, &map);
    assert!(copy[..MIB as usize] == bytes[..MIB as usize]);
    let fat_copy = dir.path().join("p1.img");
    fs::write(&fat_copy, &copy[MIB as usize..17 * MIB as usize]).unwrap();
    assert_fat_intact(&fat_copy, &fat_files);
    let ext_copy = dir.path().join("p2.img");
    fs::write(&ext_copy, &copy[18 * MIB as usize..66 * MIB as usize]).unwrap();
    assert_ext_intact(&ext_copy, &ext_files);
}

#[test]
fn a_logical_partition_inside_an_extended_one_is_mapped_with_its_boot_record() {
    // An extended partition holds its logical ones by design: before, it
    // was taken for a partition overlapping them, and the image got no map.
    let dir = tempfile::tempdir().unwrap();
    let (ext, ext_files) = make_ext4(dir.path(), 16 * MIB, &[]);
    let at = 10240 * 512;
    let mut bytes = partitioned(
        dir.path(),
        40 * MIB,
        "label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=65536, type=5\nstart=10240, size=32768, type=83\n",
        &fs::read(&ext).unwrap(),
        at as u64,
    );
    let info = inspect(&bytes);
    let parts = &info.table.as_ref().unwrap().partitions;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[2].number, 5);
    assert_eq!(parts[2].filesystem.as_ref().unwrap().kind, FsKind::Ext4);
    let map = map_of(&bytes);
    assert_eq!(map.sources.len(), 1, "{map}");
    assert!(map.sources[0].contains("partition 5"), "{map}");
    // The extended partition's boot record (its first sector) is carried.
    let ebr = 8192 * 512;
    assert!(
        map.ranges.iter().any(|&(o, l)| o <= ebr && ebr < o + l),
        "{map}"
    );
    let copy = sparse_copy(&bytes, &map);
    assert!(copy[ebr as usize..ebr as usize + 512] == bytes[ebr as usize..ebr as usize + 512]);
    let ext_copy = dir.path().join("p5.img");
    fs::write(&ext_copy, &copy[at..at + 16 * MIB as usize]).unwrap();
    assert_ext_intact(&ext_copy, &ext_files);

    // Partition 1 grown into the logical one: partitions that do share
    // bytes still give no map, and say which.
    bytes[446 + 12..446 + 16].copy_from_slice(&20_000u32.to_le_bytes());
    let info = inspect(&bytes);
    assert_eq!(
        allocation_map(&bytes, &info).unwrap_err(),
        AllocError::Overlap(1, 5)
    );
}

#[test]
fn a_broken_file_system_gives_a_reason_and_no_map() {
    let dir = tempfile::tempdir().unwrap();
    let (ext, _) = make_ext4(dir.path(), 16 * MIB, &[]);
    let good = fs::read(&ext).unwrap();

    // A superblock that claims more blocks than the image holds.
    let mut bytes = good.clone();
    bytes[1024 + 4..1024 + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        matches!(&error, AllocError::Broken { kind: FsKind::Ext4, reason, .. } if reason.contains("more than its")),
        "{error}"
    );
    assert!(error
        .to_string()
        .starts_with("the ext4 file system at the image's start cannot be mapped"));

    // A group descriptor whose bitmap lies past the end.
    let mut bytes = good.clone();
    let block = 1024usize << u32::from_le_bytes(bytes[1024 + 24..1024 + 28].try_into().unwrap());
    let gdt = block.max(2048);
    bytes[gdt..gdt + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        error.to_string().contains("outside the file system"),
        "{error}"
    );

    // A FAT boot sector whose FAT is one sector: too small for its clusters.
    let (fat, _) = make_fat(dir.path(), 8 * MIB, "12");
    let mut bytes = fs::read(&fat).unwrap();
    bytes[22..24].copy_from_slice(&1u16.to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        matches!(
            &error,
            AllocError::Broken {
                kind: FsKind::Fat12,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("a FAT of 1 sectors cannot hold"),
        "{error}"
    );

    // Nothing to read at all.
    let bytes = data(MIB as usize, 5);
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert_eq!(error, AllocError::NothingToMap);
}

/// A FUSE file system (ntfs-3g, exfat-fuse) mounted on a device or file the
/// test made; unmounted lazily on drop if the test did not unmount it.
struct FuseMount {
    point: tempfile::TempDir,
    mounted: bool,
}

impl FuseMount {
    fn new(program: &str, options: &[&str], source: &Path) -> Self {
        let point = tempfile::tempdir().unwrap();
        run(Command::new(program)
            .args(options)
            .arg(source)
            .arg(point.path()));
        Self {
            point,
            mounted: true,
        }
    }

    fn path(&self) -> &Path {
        self.point.path()
    }

    /// Unmounts. Both drivers mount a block device as `fuseblk`, whose
    /// unmount returns once the driver has written everything back.
    fn unmount(mut self) {
        run(Command::new("umount").arg(self.point.path()));
        self.mounted = false;
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.point.path())
                .status();
        }
    }
}

/// A file system of `kind` ("ntfs" or "exfat") made on a loop device the
/// test attaches, the test's tree written into it through its FUSE driver
/// mounted on that device, and its bytes once unmounted and detached.
fn make_through_loop(kind: &str, size: u64) -> (Vec<u8>, Vec<(PathBuf, Vec<u8>)>) {
    let device = flashrack_testkit::LoopDevice::new(size);
    let node = device.path();
    let driver = match kind {
        "ntfs" => {
            run(Command::new("mkfs.ntfs")
                .args(["-F", "-Q", "-q", "-L", "DATA"])
                .arg(node));
            "ntfs-3g"
        }
        _ => {
            run(Command::new("mkfs.exfat").args(["-L", "DATA"]).arg(node));
            "mount.exfat-fuse"
        }
    };
    let mount = FuseMount::new(driver, &[], node);
    let files = tree(mount.path());
    mount.unmount();
    let bytes = fs::read(device.backing()).unwrap();
    drop(device);
    (bytes, files)
}

/// A number from a tool's report: the first line holding `key`, its first
/// number after the key.
fn field(report: &str, key: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("{key} in {report}"));
    let rest = &line[line.find(key).unwrap() + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("a number after {key} in {line}"))
        .parse()
        .unwrap()
}

/// Every file of the test's tree reads back from `root` as written, and the
/// empty directory is there.
fn assert_tree(root: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for (name, bytes) in files {
        let read = fs::read(root.join(name)).unwrap();
        assert!(read == *bytes, "{} differs", name.display());
    }
    assert!(root.join("empty-dir").is_dir());
}

#[test]
fn an_ntfs_map_carries_every_allocated_cluster_and_its_metadata() {
    if !flashrack_testkit::require_root(&[
        "mkfs.ntfs",
        "ntfs-3g",
        "ntfsfix",
        "ntfsinfo",
        "ntfscat",
        "losetup",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (bytes, files) = make_through_loop("ntfs", 64 * MIB);
    let image = dir.path().join("ntfs.img");
    fs::write(&image, &bytes).unwrap();
    assert_eq!(inspect(&bytes).filesystem.unwrap().kind, FsKind::Ntfs);
    let map = map_of(&bytes);
    assert!(
        map.sources[0].starts_with("NTFS at the image's start"),
        "{map}"
    );
    // The volume's own count of its free clusters agrees with the map: every
    // allocated cluster, plus the backup boot sector's block at the end.
    let info = run(Command::new("ntfsinfo").arg("-m").arg(&image));
    let cluster = field(&info, "Cluster Size:");
    let used =
        (field(&info, "Volume Size in Clusters:") - field(&info, "Free Clusters:")) * cluster;
    let mapped = map.mapped_bytes();
    assert!(mapped >= used, "{mapped} mapped, {used} used");
    assert!(mapped <= used + 8192, "{mapped} mapped, {used} used");
    let files_bytes: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(mapped >= files_bytes && mapped < 32 * MIB, "{mapped}");

    let copy = dir.path().join("copy.img");
    fs::write(&copy, sparse_copy(&bytes, &map)).unwrap();
    // ntfsfix reads the MFT, its mirror and both boot sectors; -n writes nothing.
    let fix = run(Command::new("ntfsfix").arg("-n").arg(&copy));
    assert!(fix.contains("processed successfully"), "{fix}");
    for (name, expected) in &files {
        let out = Command::new("ntfscat")
            .arg(&copy)
            .arg(format!("/{}", name.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == *expected, "{} differs", name.display());
    }
    // And through the driver, read-only: directories and the zero-filled file
    // as the garbage-filled stick holds them.
    let mount = FuseMount::new("ntfs-3g", &["-o", "ro"], &copy);
    assert_tree(mount.path(), &files);
    mount.unmount();
}

#[test]
fn an_exfat_map_carries_every_allocated_cluster_and_its_metadata() {
    if !flashrack_testkit::require_root(&[
        "mkfs.exfat",
        "mount.exfat-fuse",
        "fsck.exfat",
        "dump.exfat",
        "losetup",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (bytes, files) = make_through_loop("exfat", 64 * MIB);
    let image = dir.path().join("exfat.img");
    fs::write(&image, &bytes).unwrap();
    assert_eq!(inspect(&bytes).filesystem.unwrap().kind, FsKind::ExFat);
    let map = map_of(&bytes);
    assert!(
        map.sources[0].starts_with("exFAT at the image's start"),
        "{map}"
    );
    // Everything before the cluster heap, and the clusters the bitmap says are
    // in use (the bitmap, up-case table and root directory among them).
    let dump = run(Command::new("dump.exfat").arg(&image));
    let sector = 1u64 << field(&dump, "Sector Size Bits:");
    let cluster = field(&dump, "Cluster size:");
    let heap = field(&dump, "Cluster Heap Offset (sector offset):") * sector;
    let used = (field(&dump, "Total Clusters:") - field(&dump, "Free Clusters:")) * cluster;
    let heap_end = heap + field(&dump, "Cluster Count:") * cluster;
    let tail = bytes.len() as u64 - heap_end;
    assert_eq!(map.mapped_bytes(), heap + used + tail, "{map}");
    let files_bytes: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(map.mapped_bytes() < files_bytes + heap + tail + MIB);

    let copy = dir.path().join("copy.img");
    fs::write(&copy, sparse_copy(&bytes, &map)).unwrap();
    let fsck = run(Command::new("fsck.exfat").arg("-n").arg(&copy));
    assert!(fsck.contains("clean"), "{fsck}");
    // exfat-fuse run by root mounts block devices only: the copy goes onto a
    // loop device of the test's, written through its node.
    let stick = flashrack_testkit::LoopDevice::new(bytes.len() as u64);
    fs::write(stick.path(), fs::read(&copy).unwrap()).unwrap();
    let mount = FuseMount::new("mount.exfat-fuse", &["-o", "ro"], stick.path());
    assert_tree(mount.path(), &files);
    mount.unmount();
    drop(stick);
}

#[test]
fn a_broken_ntfs_or_exfat_gives_a_reason_and_no_map() {
    if !flashrack_testkit::require_root(&[
        "mkfs.ntfs",
        "ntfs-3g",
        "mkfs.exfat",
        "mount.exfat-fuse",
        "losetup",
    ]) {
        return;
    }
    let (good, _) = make_through_loop("ntfs", 16 * MIB);
    let le = |b: &[u8], at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |v, &x| v << 8 | u64::from(x))
    };
    let cluster = le(&good, 11, 2) * le(&good, 13, 1);
    let mft = (le(&good, 48, 8) * cluster) as usize;

    // $Bitmap's record (6) no longer a FILE record.
    let mut bytes = good.clone();
    bytes[mft + 6 * 1024..mft + 6 * 1024 + 4].copy_from_slice(b"BAAD");
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        matches!(&error, AllocError::Broken { kind: FsKind::Ntfs, reason, .. }
            if reason == "MFT record 6 has no FILE signature"),
        "{error}"
    );
    assert!(error
        .to_string()
        .starts_with("the NTFS file system at the image's start cannot be mapped"));

    // A torn $MFT record: a sector's last bytes not the update sequence number.
    let mut bytes = good.clone();
    bytes[mft + 510] ^= 0xff;
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        error.to_string().contains("MFT record 0 is torn"),
        "{error}"
    );

    // An MFT placed past the volume's end.
    let mut bytes = good.clone();
    bytes[48..56].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(error.to_string().contains("lies outside its"), "{error}");

    let (good, _) = make_through_loop("exfat", 16 * MIB);
    let sector = 1usize << good[108];
    let cluster = sector << good[109];
    let heap = le(&good, 88, 4) as usize * sector;
    let root = heap + (le(&good, 96, 4) as usize - 2) * cluster;
    let entry = (0..cluster / 32)
        .map(|i| root + 32 * i)
        .find(|&at| good[at] == 0x81)
        .expect("the bitmap entry");

    // The bitmap entry pointing out of the heap.
    let mut bytes = good.clone();
    bytes[entry + 20..entry + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        matches!(&error, AllocError::Broken { kind: FsKind::ExFat, reason, .. }
            if reason.starts_with("the allocation bitmap leads to cluster 4294967295")),
        "{error}"
    );

    // No bitmap entry at all (its type cleared to "unused").
    let mut bytes = good.clone();
    bytes[entry] = 0x01;
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("holds no allocation bitmap entry"),
        "{error}"
    );

    // A bitmap too short for the heap's clusters.
    let mut bytes = good.clone();
    bytes[entry + 24..entry + 32].copy_from_slice(&1u64.to_le_bytes());
    let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
    assert!(error.to_string().contains("are needed for"), "{error}");
}

/// A disk image of `size` bytes with one partition table (`label`: "dos" or
/// "gpt") made by `sfdisk` from `script`, and `volume` put at `start`.
fn partitioned(dir: &Path, size: u64, script: &str, volume: &[u8], start: u64) -> Vec<u8> {
    let disk = dir.join("partitioned.img");
    fs::File::create(&disk).unwrap().set_len(size).unwrap();
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
    let mut bytes = fs::read(&disk).unwrap();
    bytes[start as usize..start as usize + volume.len()].copy_from_slice(volume);
    bytes
}

/// The map's ranges inside `[start, start + len)`, moved to start at 0.
fn window(map: &AllocationMap, start: u64, len: u64) -> Vec<(u64, u64)> {
    map.ranges
        .iter()
        .filter_map(|&(o, l)| {
            let (a, b) = (o.max(start), (o + l).min(start + len));
            (a < b).then(|| (a - start, b - a))
        })
        .collect()
}

#[test]
fn ntfs_and_exfat_inside_an_mbr_and_a_gpt_are_mapped_from_their_partition_start() {
    if !flashrack_testkit::require_root(&[
        "mkfs.ntfs",
        "ntfs-3g",
        "ntfsfix",
        "mkfs.exfat",
        "mount.exfat-fuse",
        "fsck.exfat",
        "sfdisk",
        "losetup",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    const VOLUME: u64 = 48 * MIB;
    // The partition starts at 1 MiB (sector 2048); the disk keeps 1 MiB
    // after it (room for a GPT's backup).
    let (start, size) = (MIB, VOLUME + 2 * MIB);
    for kind in ["ntfs", "exfat"] {
        let (volume, _) = make_through_loop(kind, VOLUME);
        let bare = map_of(&volume);
        for (label, script) in [
            (
                "dos",
                format!("label: dos\nstart=2048, size={}, type=7\n", VOLUME / 512),
            ),
            (
                "gpt",
                format!(
                    "label: gpt\nstart=2048, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
                    VOLUME / 512
                ),
            ),
        ] {
            let what = format!("{kind} in {label}");
            let mut disk = partitioned(dir.path(), size, &script, &volume, start);
            // Bytes past the partition (and the table's own gap) are carried
            // whatever they hold: garbage there must be in the map.
            let end = (start + VOLUME) as usize;
            let tail = disk.len() - if label == "gpt" { 33 * 512 } else { 0 };
            disk[end..tail].fill(0x5a);
            let info = inspect(&disk);
            let part = &info.table.as_ref().unwrap().partitions[0];
            assert_eq!((part.start, part.size), (start, VOLUME), "{what}");
            let map = map_of(&disk);
            assert_eq!(map.sources.len(), 1, "{what}: {map}");
            assert!(map.sources[0].contains("in partition 1"), "{what}: {map}");
            // Inside the partition: exactly the bare volume's map, moved by
            // the partition's start.
            assert_eq!(window(&map, start, VOLUME), bare.ranges, "{what}");
            // Outside it: everything.
            assert_eq!(window(&map, 0, start), vec![(0, start)], "{what}");
            assert_eq!(
                window(&map, start + VOLUME, size - start - VOLUME),
                vec![(0, size - start - VOLUME)],
                "{what}"
            );
            // The partition of a sparse copy onto garbage checks clean.
            let copy = sparse_copy(&disk, &map);
            let part_copy = dir.path().join(format!("{kind}-{label}.img"));
            fs::write(&part_copy, &copy[start as usize..end]).unwrap();
            if kind == "ntfs" {
                let fix = run(Command::new("ntfsfix").arg("-n").arg(&part_copy));
                assert!(fix.contains("processed successfully"), "{what}: {fix}");
            } else {
                let fsck = run(Command::new("fsck.exfat").arg("-n").arg(&part_copy));
                assert!(fsck.contains("clean"), "{what}: {fsck}");
            }
        }
    }
}

#[test]
fn a_damaged_table_or_a_partition_past_the_end_gives_a_reason_and_no_map() {
    let dir = tempfile::tempdir().unwrap();
    let (ext, _) = make_ext4(dir.path(), 16 * MIB, &[]);
    let volume = fs::read(&ext).unwrap();
    let size = 18 * MIB;
    let gpt = partitioned(
        dir.path(),
        size,
        &format!("label: gpt\nstart=2048, size={}, type=L\n", 16 * MIB / 512),
        &volume,
        MIB,
    );
    let dos = partitioned(
        dir.path(),
        size,
        &format!("label: dos\nstart=2048, size={}, type=83\n", 16 * MIB / 512),
        &volume,
        MIB,
    );
    // Both good: a map of the ext4 in partition 1.
    for bytes in [&gpt, &dos] {
        assert!(map_of(bytes).sources[0].starts_with("ext4 in partition 1"));
    }

    // Both GPT headers damaged behind the protective MBR.
    let mut broken = gpt.clone();
    broken[512 + 24] ^= 0xff;
    let last = broken.len() - 512;
    broken[last + 24] ^= 0xff;
    let error = allocation_map(&broken, &inspect(&broken)).unwrap_err();
    assert!(
        matches!(&error, AllocError::BrokenTable(why) if why.starts_with("GPT damaged")),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("the partition table is damaged (GPT damaged: primary header"),
        "{error}"
    );

    // The image cut short inside its partition (GPT read from its primary;
    // MBR as it is): the partition ends past the image's end.
    for (label, bytes) in [("gpt", &gpt), ("dos", &dos)] {
        let cut = bytes[..12 * MIB as usize].to_vec();
        let error = allocation_map(&cut, &inspect(&cut)).unwrap_err();
        assert_eq!(
            error,
            AllocError::PartitionPastEnd {
                number: 1,
                end: 17 * MIB,
                size: 12 * MIB
            },
            "{label}"
        );
        assert!(error
            .to_string()
            .contains("a damaged table or a truncated image"));
    }
}

/// An NTFS volume whose `$MFT` grew so fragmented that its run list no
/// longer fits its record: ntfs-3g moves the later extents of its `$DATA`
/// into extension records and gives it an attribute list. The volume is
/// filled with two-cluster files, every other one removed (scattered free
/// clusters), and then many files of a few bytes (resident, so only the MFT
/// grows) are made; the filler is removed afterwards so that the volume has
/// free space a wrong map could leave out.
#[test]
fn an_ntfs_whose_mft_has_an_attribute_list_is_mapped_through_it() {
    if !flashrack_testkit::require_root(&[
        "mkfs.ntfs",
        "ntfs-3g",
        "ntfsfix",
        "ntfsinfo",
        "ntfscat",
        "losetup",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = flashrack_testkit::LoopDevice::new(32 * MIB);
    run(Command::new("mkfs.ntfs")
        .args(["-F", "-Q", "-q", "-c", "1024", "-L", "FRAG"])
        .arg(device.path()));
    let mount = FuseMount::new("ntfs-3g", &[], device.path());
    let root = mount.path();
    fs::create_dir(root.join("pairs")).unwrap();
    let pairs = 1500;
    for i in 0..pairs {
        fs::write(root.join(format!("pairs/{i}")), data(1500, i)).unwrap();
    }
    // Fill what is left (the MFT zone included) until the driver says full.
    {
        use std::io::Write;
        let mut filler = fs::File::create(root.join("filler")).unwrap();
        let block = data(64 * 1024, 7);
        while filler.write_all(&block).is_ok() {}
    }
    for i in (0..pairs).step_by(2) {
        fs::remove_file(root.join(format!("pairs/{i}"))).unwrap();
    }
    fs::create_dir(root.join("tiny")).unwrap();
    let mut tiny = 0;
    while tiny < 4000 && fs::write(root.join(format!("tiny/{tiny}")), tiny.to_string()).is_ok() {
        tiny += 1;
    }
    fs::remove_file(root.join("filler")).unwrap();
    let files = tree(root);
    mount.unmount();
    let bytes = fs::read(device.backing()).unwrap();
    drop(device);
    let image = dir.path().join("frag.img");
    fs::write(&image, &bytes).unwrap();

    // What the test needs is there: $MFT has an attribute list naming
    // $DATA extents in more than one record.
    let mft_info = run(Command::new("ntfsinfo").args(["-v", "-i", "0"]).arg(&image));
    assert!(
        mft_info.contains("Dumping attribute $ATTRIBUTE_LIST (0x20) from mft record 0"),
        "{mft_info}"
    );
    let extents: Vec<u64> = mft_info
        .split("Attribute type:\t0x80")
        .skip(1)
        .map(|entry| field(entry, "MFT reference:"))
        .collect();
    assert!(
        extents.len() >= 2 && extents.iter().any(|&r| r != 0),
        "$MFT's $DATA extents in records {extents:?}"
    );
    // Every run of every extent, as ntfsinfo decodes them ("VCN LCN
    // Length" rows in hexadecimal).
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mft_runs: Vec<(u64, u64)> = mft_info
        .lines()
        .filter_map(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            match cols[..] {
                [v, l, n] if v.starts_with("0x") => Some((hex(v)?, hex(l)?, hex(n)?)),
                _ => None,
            }
        })
        .map(|(_, lcn, len)| (lcn, len))
        .collect();
    assert!(mft_runs.len() > 50, "{} runs", mft_runs.len());

    let map = map_of(&bytes);
    let covered = |offset: u64, len: u64| {
        map.ranges
            .iter()
            .any(|&(o, l)| o <= offset && offset + len <= o + l)
    };
    let volume_info = run(Command::new("ntfsinfo").arg("-m").arg(&image));
    let cluster = field(&volume_info, "Cluster Size:");
    for &(lcn, len) in &mft_runs {
        assert!(
            covered(lcn * cluster, len * cluster),
            "MFT run of {len} clusters at {lcn} not mapped"
        );
    }
    // Every cluster the volume's bitmap (read by libntfs, not by us) says
    // is in use is in the map, and the map holds little more.
    let bitmap = Command::new("ntfscat")
        .args(["-i", "6"])
        .arg(&image)
        .output()
        .unwrap()
        .stdout;
    let clusters = field(&volume_info, "Volume Size in Clusters:");
    // And nothing else: the 4 KiB blocks holding an allocated cluster, the
    // boot sector's 8 KiB and what lies past the counted clusters (the
    // backup boot sector), counted from libntfs's bitmap alone.
    let mut blocks = std::collections::BTreeSet::new();
    let mut add = |offset: u64, len: u64| {
        for b in offset / 4096..(offset + len).div_ceil(4096) {
            blocks.insert(b);
        }
    };
    add(0, 8192);
    add(clusters * cluster, bytes.len() as u64 - clusters * cluster);
    let mut used = 0;
    for c in 0..clusters {
        if bitmap[(c / 8) as usize] & (1 << (c % 8)) != 0 {
            used += 1;
            add(c * cluster, cluster);
            assert!(covered(c * cluster, cluster), "cluster {c} not mapped");
        }
    }
    let mapped = map.mapped_bytes();
    assert_eq!(mapped, blocks.len() as u64 * 4096, "{used} clusters in use");
    assert!(
        mapped < bytes.len() as u64 / 2,
        "{mapped} of {}",
        bytes.len()
    );

    // A copy of the mapped ranges onto garbage is the same volume: the MFT
    // read whole through its list, the files, the tiny ones' count.
    let copy = dir.path().join("copy.img");
    fs::write(&copy, sparse_copy(&bytes, &map)).unwrap();
    let fix = run(Command::new("ntfsfix").arg("-n").arg(&copy));
    assert!(fix.contains("processed successfully"), "{fix}");
    let whole_mft = |path: &Path| {
        Command::new("ntfscat")
            .args(["-i", "0"])
            .arg(path)
            .output()
            .unwrap()
            .stdout
    };
    let original_mft = whole_mft(&image);
    // A record for each file made and kept, at least.
    let records = (pairs / 2 + tiny as u64) * 1024;
    assert!(
        original_mft.len() as u64 > records,
        "{}",
        original_mft.len()
    );
    assert!(whole_mft(&copy) == original_mft, "the MFT differs");
    let mount = FuseMount::new("ntfs-3g", &["-o", "ro"], &copy);
    assert_tree(mount.path(), &files);
    assert_eq!(
        fs::read_dir(mount.path().join("tiny")).unwrap().count(),
        tiny
    );
    assert_eq!(
        fs::read(mount.path().join(format!("tiny/{}", tiny - 1))).unwrap(),
        (tiny - 1).to_string().into_bytes()
    );
    mount.unmount();
}

/// An NTFS record's update sequence undone: each 512-byte stride's last two
/// bytes put back from the array.
fn ntfs_unfix(rec: &mut [u8]) {
    let usa = u16::from_le_bytes([rec[4], rec[5]]) as usize;
    let count = u16::from_le_bytes([rec[6], rec[7]]) as usize;
    for i in 1..count {
        let (a, b) = (rec[usa + 2 * i], rec[usa + 2 * i + 1]);
        rec[i * 512 - 2] = a;
        rec[i * 512 - 1] = b;
    }
}

/// An NTFS record's update sequence applied again (the inverse of
/// [`ntfs_unfix`], same sequence number).
fn ntfs_fix(rec: &mut [u8]) {
    let usa = u16::from_le_bytes([rec[4], rec[5]]) as usize;
    let count = u16::from_le_bytes([rec[6], rec[7]]) as usize;
    let (u0, u1) = (rec[usa], rec[usa + 1]);
    for i in 1..count {
        rec[usa + 2 * i] = rec[i * 512 - 2];
        rec[usa + 2 * i + 1] = rec[i * 512 - 1];
        rec[i * 512 - 2] = u0;
        rec[i * 512 - 1] = u1;
    }
}

/// One NTFS mapping pair: `len` clusters at `delta` from the previous run.
fn ntfs_pair(len: u64, delta: i64) -> Vec<u8> {
    let len_bytes: Vec<u8> = len.to_le_bytes()[..8 - len.leading_zeros() as usize / 8].to_vec();
    let mut off = delta.to_le_bytes().to_vec();
    // The shortest width whose sign is right.
    while off.len() > 1 {
        let top = off[off.len() - 1];
        let next = off[off.len() - 2];
        if (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
            off.pop();
        } else {
            break;
        }
    }
    let mut out = vec![(off.len() as u8) << 4 | len_bytes.len() as u8];
    out.extend(len_bytes);
    out.extend(off);
    out
}

/// The pieces of the `$Bitmap`-with-a-list volume the bad-input cases change.
struct SplitBitmap {
    bytes: Vec<u8>,
    /// Byte offsets of record 6 and of its extension record (16).
    base: usize,
    extension: usize,
    /// Where in record 6 (undone) the attribute list's value starts.
    list_value: usize,
}

/// A 64 MiB volume made by mkntfs with 512-byte clusters (a `$Bitmap` of 32
/// clusters), whose `$Bitmap`'s `$DATA` is then split byte by byte into two
/// extents: clusters 0–15 in record 6, 16–31 in record 16 (an extension
/// record, marked in use in the MFT's bitmap), named by a resident
/// attribute list in record 6, as NTFS lays out a file with too many runs.
fn split_bitmap(dir: &Path) -> (Vec<u8>, SplitBitmap) {
    let path = dir.join("split.img");
    fs::File::create(&path).unwrap().set_len(64 * MIB).unwrap();
    run(Command::new("mkntfs")
        .args(["-F", "-Q", "-q", "-c", "512", "-L", "SPLIT"])
        .arg(&path));
    let original = fs::read(&path).unwrap();
    let le = |b: &[u8], at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |v, &x| v << 8 | u64::from(x))
    };
    let cluster = le(&original, 11, 2) * le(&original, 13, 1);
    assert_eq!(cluster, 512);
    let mft = (le(&original, 48, 8) * cluster) as usize;
    let (base, extension) = (mft + 6 * 1024, mft + 16 * 1024);
    let mut bytes = original.clone();
    let mut rec6 = bytes[base..base + 1024].to_vec();
    ntfs_unfix(&mut rec6);
    let seq6 = le(&rec6, 16, 2);
    // Record 6's attributes, each as bytes.
    let mut attrs: Vec<Vec<u8>> = Vec::new();
    let mut at = le(&rec6, 20, 2) as usize;
    while le(&rec6, at, 4) != 0xFFFF_FFFF {
        let len = le(&rec6, at + 4, 4) as usize;
        attrs.push(rec6[at..at + len].to_vec());
        at += len;
    }
    let data_at = attrs.iter().position(|a| a[0] == 0x80).unwrap();
    let data = &attrs[data_at];
    assert_eq!(le(data, 0x18, 8), 31, "a 32-cluster $Bitmap");
    // Its one run, decoded: 0x21 (1-byte length, 2-byte offset) or wider.
    let mp = le(data, 0x20, 2) as usize;
    let header = data[mp];
    let (ls, os) = ((header & 0xf) as usize, (header >> 4) as usize);
    assert_eq!(le(data, mp + 1, ls), 32);
    let lcn = le(data, mp + 1 + ls, os);
    assert_eq!(data[mp + 1 + ls + os], 0, "one run");
    // The first extent: clusters 0-15.
    let mut first = data[..0x40].to_vec();
    first[0x18..0x20].copy_from_slice(&15u64.to_le_bytes());
    first.extend(ntfs_pair(16, lcn as i64));
    first.push(0);
    first.resize(first.len().div_ceil(8) * 8, 0);
    let first_len = first.len() as u32;
    first[4..8].copy_from_slice(&first_len.to_le_bytes());
    attrs[data_at] = first;
    // The second: clusters 16-31 in record 16, instance 0, sizes 0 as in
    // every extent but the first.
    let mut second = vec![0u8; 0x40];
    second[0] = 0x80;
    second[8] = 1;
    second[10] = 0x40;
    second[0x10..0x18].copy_from_slice(&16u64.to_le_bytes());
    second[0x18..0x20].copy_from_slice(&31u64.to_le_bytes());
    second[0x20] = 0x40;
    second.extend(ntfs_pair(16, lcn as i64 + 16));
    second.push(0);
    second.resize(second.len().div_ceil(8) * 8, 0);
    let second_len = second.len() as u32;
    second[4..8].copy_from_slice(&second_len.to_le_bytes());
    // The attribute list: every attribute of record 6, and the extent in 16.
    let entry = |kind: u32, vcn: u64, record: u64, seq: u64, instance: u16| {
        let mut e = vec![0u8; 32];
        e[0..4].copy_from_slice(&kind.to_le_bytes());
        e[4..6].copy_from_slice(&32u16.to_le_bytes());
        e[7] = 0x1a;
        e[8..16].copy_from_slice(&vcn.to_le_bytes());
        e[16..24].copy_from_slice(&(record | seq << 48).to_le_bytes());
        e[24..26].copy_from_slice(&instance.to_le_bytes());
        e
    };
    let mut list = Vec::new();
    for a in &attrs {
        let kind = le(a, 0, 4) as u32;
        let vcn = if a[8] != 0 { le(a, 0x10, 8) } else { 0 };
        assert_eq!(a[9], 0, "record 6's attributes are unnamed");
        list.extend(entry(kind, vcn, 6, seq6, le(a, 14, 2) as u16));
        if kind == 0x80 {
            list.extend(entry(0x80, 16, 16, 16, 0));
        }
    }
    let instance = le(&rec6, 0x28, 2) as u16;
    let mut list_attr = vec![0u8; 0x18];
    list_attr[0..4].copy_from_slice(&0x20u32.to_le_bytes());
    list_attr[4..8].copy_from_slice(&(0x18 + list.len() as u32).to_le_bytes());
    list_attr[10] = 0x18;
    list_attr[14..16].copy_from_slice(&instance.to_le_bytes());
    list_attr[0x10..0x14].copy_from_slice(&(list.len() as u32).to_le_bytes());
    list_attr[0x14] = 0x18;
    list_attr.extend(&list);
    // Record 6 rewritten: attributes in type order, the list second.
    let mut body = Vec::new();
    let mut list_value = 0;
    let start = le(&rec6, 20, 2) as usize;
    for a in &attrs {
        body.extend(a);
        if a[0] == 0x10 {
            list_value = start + body.len() + 0x18;
            body.extend(&list_attr);
        }
    }
    assert!(list_value > 0, "a $STANDARD_INFORMATION first");
    body.extend(0xFFFF_FFFFu32.to_le_bytes());
    body.extend([0u8; 4]);
    assert!(start + body.len() <= 1024, "record 6 overflows");
    rec6[start..].fill(0);
    rec6[start..start + body.len()].copy_from_slice(&body);
    rec6[0x18..0x1c].copy_from_slice(&((start + body.len()) as u32).to_le_bytes());
    rec6[0x28..0x2a].copy_from_slice(&(instance + 1).to_le_bytes());
    ntfs_fix(&mut rec6);
    bytes[base..base + 1024].copy_from_slice(&rec6);
    // Record 16: in use, an extension of record 6 holding the second extent.
    let mut rec16 = bytes[extension..extension + 1024].to_vec();
    assert_eq!(&rec16[..4], b"FILE");
    ntfs_unfix(&mut rec16);
    assert_eq!(le(&rec16, 16, 2), 16, "mkntfs numbers reserved records so");
    let start16 = le(&rec16, 20, 2) as usize;
    rec16[0x16] = 1;
    rec16[0x20..0x28].copy_from_slice(&(6 | seq6 << 48).to_le_bytes());
    rec16[0x28..0x2a].copy_from_slice(&1u16.to_le_bytes());
    rec16[start16..].fill(0);
    let mut body = second;
    body.extend(0xFFFF_FFFFu32.to_le_bytes());
    body.extend([0u8; 4]);
    rec16[start16..start16 + body.len()].copy_from_slice(&body);
    rec16[0x18..0x1c].copy_from_slice(&((start16 + body.len()) as u32).to_le_bytes());
    ntfs_fix(&mut rec16);
    bytes[extension..extension + 1024].copy_from_slice(&rec16);
    // Record 16 in use in the MFT's own bitmap ($MFT's $BITMAP, one
    // cluster at the run its record 0 gives).
    let mut rec0 = bytes[mft..mft + 1024].to_vec();
    ntfs_unfix(&mut rec0);
    let mut at = le(&rec0, 20, 2) as usize;
    while le(&rec0, at, 4) != 0xB0 {
        at += le(&rec0, at + 4, 4) as usize;
    }
    let b = &rec0[at..];
    assert_eq!(b[8], 1, "a non-resident MFT bitmap");
    let mp = le(b, 0x20, 2) as usize;
    let (ls, os) = ((b[mp] & 0xf) as usize, (b[mp] >> 4) as usize);
    let bitmap_at = (le(b, mp + 1 + ls, os) * cluster) as usize;
    bytes[bitmap_at + 2] |= 1;
    (
        original,
        SplitBitmap {
            bytes,
            base,
            extension,
            list_value,
        },
    )
}

#[test]
fn an_ntfs_whose_bitmap_has_an_attribute_list_is_mapped_through_it() {
    // mkntfs on a file, no loop device: no root needed.
    let dir = tempfile::tempdir().unwrap();
    let (original, split) = split_bitmap(dir.path());
    let image = dir.path().join("split-made.img");
    fs::write(&image, &split.bytes).unwrap();
    let before = dir.path().join("before.img");
    fs::write(&before, &original).unwrap();
    // libntfs reads the construct as NTFS: record 6 has an attribute list,
    // its $DATA is in records 6 and 16, and the bitmap reads as before.
    let info = run(Command::new("ntfsinfo").args(["-v", "-i", "6"]).arg(&image));
    assert!(info.contains("$ATTRIBUTE_LIST"), "{info}");
    assert!(
        info.contains("Dumping attribute $DATA (0x80) from mft record 16"),
        "{info}"
    );
    let cat = |path: &Path| {
        let out = Command::new("ntfscat")
            .args(["-i", "6"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(cat(&image).len(), 16384);
    assert!(cat(&image) == cat(&before), "the bitmap reads differently");
    let fix = run(Command::new("ntfsfix").arg("-n").arg(&image));
    assert!(fix.contains("processed successfully"), "{fix}");

    // The map follows the list: the same map as the volume before.
    assert_eq!(map_of(&split.bytes).ranges, map_of(&original).ranges);
    let copy = dir.path().join("copy.img");
    fs::write(&copy, sparse_copy(&split.bytes, &map_of(&split.bytes))).unwrap();
    assert!(cat(&copy) == cat(&before));

    // What does not add up gives a reason and no map.
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // The extension record claims another base record.
    let mut bytes = split.bytes.clone();
    bytes[split.extension + 0x20] = 7;
    cases.push(("its extension record 16 belongs to record 7", bytes));
    // The extension record is not in use.
    let mut bytes = split.bytes.clone();
    bytes[split.extension + 0x16] = 0;
    cases.push(("MFT record 16 is not in use", bytes));
    // The second extent's entry in the list says cluster 17 (a gap). The
    // list value sits before the first stride's end, out of the update
    // sequence's way.
    let mut bytes = split.bytes.clone();
    let entries = split.base + split.list_value;
    let second = (0..8)
        .map(|i| entries + 32 * i)
        .find(|&e| bytes[e] == 0x80 && bytes[e + 16] == 16)
        .expect("the extension's entry");
    assert!(second + 32 < split.base + 510);
    bytes[second + 8] = 17;
    cases.push(("where cluster 16 is next", bytes.clone()));
    // The list no longer names the second extent: 16 of 32 clusters.
    bytes[second] = 0x90;
    cases.push((
        "its $DATA runs hold 16 clusters of 512 bytes but it has 16384 bytes allocated",
        bytes,
    ));
    // The extension's run ends past the volume.
    let mut bytes = split.bytes.clone();
    let mut rec16 = bytes[split.extension..split.extension + 1024].to_vec();
    ntfs_unfix(&mut rec16);
    let a = le16(&rec16, 20);
    let mp = a + le16(&rec16, a + 0x20);
    let far = ntfs_pair(16, 1 << 30);
    rec16[mp..mp + far.len()].copy_from_slice(&far);
    ntfs_fix(&mut rec16);
    bytes[split.extension..split.extension + 1024].copy_from_slice(&rec16);
    cases.push(("lies outside the volume's", bytes));
    for (expected, bytes) in cases {
        let error = allocation_map(&bytes, &inspect(&bytes)).unwrap_err();
        assert!(
            matches!(
                &error,
                AllocError::Broken {
                    kind: FsKind::Ntfs,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
}

#[test]
fn what_lies_past_a_file_systems_end_in_its_image_is_mapped() {
    // A file system at the image's start smaller than the image (an image
    // grown after its file system was made, or with data put after it): the
    // bytes past the file system's own end are not its free blocks, and
    // data there must reach the stick. Before, only the file system's
    // allocation was mapped, and a sparse run left that data off the stick
    // and still passed.
    let dir = tempfile::tempdir().unwrap();
    for (kind, image_len, fs_len) in [("ext4", 48 * MIB, 32 * MIB), ("fat16", 32 * MIB, 20 * MIB)] {
        let path = dir.path().join(format!("{kind}-tail.img"));
        fs::File::create(&path).unwrap().set_len(image_len).unwrap();
        let blocks_of_1k = (fs_len / 1024).to_string();
        match kind {
            "ext4" => run(Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&path)
                .arg(format!("{}k", fs_len / 1024))),
            _ => run(Command::new("mkfs.vfat")
                .args(["-F", "16"])
                .arg(&path)
                .arg(&blocks_of_1k)),
        };
        let mut bytes = fs::read(&path).unwrap();
        let at = (fs_len + 5 * MIB) as usize;
        bytes[at..at + 2 * MIB as usize].copy_from_slice(&data(2 * MIB as usize, 9));
        let map = map_of(&bytes);
        assert_eq!(
            window(&map, fs_len, image_len - fs_len),
            [(0, image_len - fs_len)],
            "{kind}: {:?}",
            map.sources
        );
        let stick = sparse_copy(&bytes, &map);
        assert!(
            stick[fs_len as usize..] == bytes[fs_len as usize..],
            "{kind}"
        );
    }
}
