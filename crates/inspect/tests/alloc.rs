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
