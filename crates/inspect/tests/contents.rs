//! Inspection of what lies inside partitions and optical-disc trees, on
//! images that real tools build in the test: UDF trees (genisoimage's UDF
//! bridge, mkudffs), NTFS and exFAT labels (mkfs.ntfs, mkfs.exfat), logical
//! partitions (sfdisk), and `/etc/os-release` of ext2/3/4 root file systems
//! (mkfs.ext4 / mke2fs `-d`). Debian's genisoimage, udftools, ntfs-3g,
//! exfatprogs, fdisk, dosfstools and e2fsprogs; `scripts/setup` installs
//! them. No mounts: every image is built in user space.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flashrack_inspect::{inspect, FsKind, ImageInfo, TableKind};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inspect_file(path: &Path) -> ImageInfo {
    inspect(&fs::File::open(path).unwrap())
}

fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
}

/// A Windows installer as Microsoft builds it: the ISO 9660 side holds only
/// a README, every file is in the UDF tree.
#[test]
fn an_installer_whose_files_are_only_in_its_udf_tree_is_found_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    write_tree(
        &root,
        &[
            ("README.TXT", b"This disc contains a UDF file system.\r\n"),
            ("sources/install.wim", b"MSWIM\0\0\0 a stand-in"),
            ("sources/boot.wim", b"MSWIM\0\0\0"),
            ("setup.exe", b"MZ"),
        ],
    );
    let iso = dir.path().join("scans-2022.dat");
    run(Command::new("genisoimage")
        .args(["-quiet", "-udf", "-V", "SCANS_2022"])
        // Hidden from the ISO 9660 tree: only the UDF tree has them.
        .args(["-hide", "sources", "-hide", "setup.exe"])
        .arg("-o")
        .arg(&iso)
        .arg(&root));

    let info = inspect_file(&iso);
    let iso_info = info.iso.as_ref().expect("an ISO");
    assert!(iso_info.udf, "{info:#?}");
    assert!(iso_info.windows_installer, "found through UDF: {info:#?}");
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    assert_eq!(info.os.as_ref().unwrap().name, "Windows installer");
    let refusal = info.raw_write_refusal().expect("refused");
    assert!(refusal.reason.contains("Windows installer"), "{refusal}");

    // The same tree without the installer files is no installer.
    fs::remove_dir_all(root.join("sources")).unwrap();
    let plain = dir.path().join("plain.dat");
    run(Command::new("genisoimage")
        .args(["-quiet", "-udf", "-V", "SCANS_2022"])
        .arg("-o")
        .arg(&plain)
        .arg(&root));
    let info = inspect_file(&plain);
    assert!(!info.iso.as_ref().unwrap().windows_installer);
    assert_eq!(info.raw_write_refusal(), None);
}

/// A `.disk/info` kept only in the UDF tree is read from there.
#[test]
fn a_disk_info_only_in_the_udf_tree_names_the_os() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    write_tree(
        &root,
        &[(
            ".disk/info",
            b"Ubuntu 22.04.4 LTS \"Jammy Jellyfish\" - Release amd64\n",
        )],
    );
    let iso = dir.path().join("x");
    run(Command::new("genisoimage")
        .args(["-quiet", "-udf", "-V", "DISC", "-hide", ".disk"])
        .arg("-o")
        .arg(&iso)
        .arg(&root));
    let info = inspect_file(&iso);
    assert_eq!(
        info.iso.as_ref().unwrap().disk_info.as_deref(),
        Some("Ubuntu 22.04.4 LTS \"Jammy Jellyfish\" - Release amd64"),
        "{info:#?}"
    );
    assert!(info.os.as_ref().unwrap().name.starts_with("Ubuntu 22.04"));
}

/// A UDF-only volume (no ISO 9660 descriptors at all), as mkudffs makes it
/// for optical media: its label is read, and an empty tree is no installer.
#[test]
fn a_udf_only_volume_is_read_with_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("u");
    run(Command::new("mkudffs")
        .args([
            "--media-type=hd",
            "--blocksize=2048",
            "--udfrev=1.02",
            "--label=CPBA_X64FRE",
            "--new-file",
        ])
        .arg(&image)
        .arg("4096"));
    let info = inspect_file(&image);
    let iso_info = info
        .iso
        .as_ref()
        .expect("UDF is an optical-disc file system");
    assert!(iso_info.udf);
    assert_eq!(iso_info.volume_id, None, "no ISO 9660 descriptor");
    assert_eq!(iso_info.udf_volume_id.as_deref(), Some("CPBA_X64FRE"));
    assert!(!iso_info.windows_installer);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!(
        (fs.kind, fs.label.as_deref()),
        (FsKind::Udf, Some("CPBA_X64FRE"))
    );
    assert!(
        info.summary().starts_with("UDF \"CPBA_X64FRE\""),
        "{}",
        info.summary()
    );
    // The volume id names Windows; an empty tree has no installer files.
    assert_eq!(info.os.as_ref().unwrap().name, "Windows");
}

/// A UDF 2.50 volume for write-once media (what mkudffs makes of 2.50: a
/// virtual partition, its VAT, and no metadata partition) is recognised with
/// its revision and label, and its tree said unread, not guessed. (A 2.50
/// volume with a metadata partition is read: `udf_metadata.rs`.)
#[test]
fn a_write_once_udf_250_volume_is_recognised_and_its_tree_said_unread() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("u");
    run(Command::new("mkudffs")
        // mkudffs makes 2.50 for write-once media only.
        .args([
            "--media-type=bdr",
            "--udfrev=2.50",
            "--label=DISC",
            "--new-file",
        ])
        .arg(&image)
        .arg("4096"));
    let info = inspect_file(&image);
    let iso = info.iso.as_ref().unwrap();
    assert!(iso.udf);
    assert_eq!(iso.udf_revision.as_deref(), Some("2.50"));
    assert_eq!(iso.udf_volume_id.as_deref(), Some("DISC"));
    assert!(
        info.problems.len() == 1
            && info.problems[0]
                .starts_with("UDF 2.50 volume not read: its UDF Virtual Partition map"),
        "{:?}",
        info.problems
    );
}

/// A file system made by `mkfs` in a file of its own, copied into `disk` at
/// byte `at`.
fn place(disk: &Path, at: u64, fs_image: &Path) {
    use std::io::{Seek, SeekFrom};
    let bytes = fs::read(fs_image).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&bytes).unwrap();
}

fn sized(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

fn sfdisk(image: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (scripts/setup installs fdisk)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn ntfs_and_exfat_labels_are_read_whole_and_in_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let ntfs = sized(dir.path(), "ntfs", 16 << 20);
    run(Command::new("mkfs.ntfs")
        .args(["-q", "-F", "-f", "-L", "Windows Data"])
        .arg(&ntfs));
    let exfat = sized(dir.path(), "exfat", 16 << 20);
    run(Command::new("mkfs.exfat")
        .args(["-L", "CAMERA"])
        .arg(&exfat));

    let info = inspect_file(&ntfs);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!(
        (fs.kind, fs.label.as_deref()),
        (FsKind::Ntfs, Some("Windows Data"))
    );
    let info = inspect_file(&exfat);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!(
        (fs.kind, fs.label.as_deref()),
        (FsKind::ExFat, Some("CAMERA"))
    );

    let disk = sized(dir.path(), "disk", 40 << 20);
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart=34816, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
    );
    place(&disk, 2048 * 512, &ntfs);
    place(&disk, 34816 * 512, &exfat);
    let info = inspect_file(&disk);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    let parts = &info.table.as_ref().unwrap().partitions;
    let labels: Vec<_> = parts
        .iter()
        .map(|p| {
            let fs = p.filesystem.as_ref().unwrap();
            (fs.kind, fs.label.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            (FsKind::Ntfs, "Windows Data".to_string()),
            (FsKind::ExFat, "CAMERA".to_string())
        ]
    );
    assert_eq!(info.os.as_ref().unwrap().name, "Windows");
}

#[test]
fn an_exfat_without_a_label_and_a_damaged_ntfs_record_have_no_label() {
    let dir = tempfile::tempdir().unwrap();
    let exfat = sized(dir.path(), "exfat", 16 << 20);
    run(Command::new("mkfs.exfat").arg(&exfat));
    let info = inspect_file(&exfat);
    assert_eq!(info.filesystem.as_ref().unwrap().label, None);

    let ntfs = sized(dir.path(), "ntfs", 16 << 20);
    run(Command::new("mkfs.ntfs")
        .args(["-q", "-F", "-f", "-L", "LABEL"])
        .arg(&ntfs));
    let mut bytes = fs::read(&ntfs).unwrap();
    // The $Volume record is MFT record 3; spoil its "FILE" signature.
    let cluster = u64::from(u16::from_le_bytes([bytes[11], bytes[12]])) * u64::from(bytes[13]);
    let mft = u64::from_le_bytes(bytes[48..56].try_into().unwrap()) * cluster;
    let record = 1024; // mkfs.ntfs's record size
    let at = (mft + 3 * record) as usize;
    assert_eq!(&bytes[at..at + 4], b"FILE");
    bytes[at] = b'B';
    let info = inspect(&bytes);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!((fs.kind, fs.label.as_deref()), (FsKind::Ntfs, None));
    // A torn write (a sector's update sequence number not matching) is not
    // trusted either.
    let mut bytes = fs::read(&ntfs).unwrap();
    bytes[at + 510] ^= 0xff;
    let info = inspect(&bytes);
    assert_eq!(info.filesystem.as_ref().unwrap().label, None);
}

#[test]
fn logical_partitions_in_an_extended_partition_are_listed_with_their_file_systems() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sized(dir.path(), "disk", 64 << 20);
    // Primary 1 (FAT16), extended 2 holding logical 5 (ext4) and 6 (FAT32).
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=20480, type=e, bootable\nstart=22528, size=108544, type=5\nstart=24576, size=40960, type=83\nstart=67584, size=63488, type=c\n",
    );
    run(Command::new("mkfs.vfat")
        .args(["-F", "16", "-n", "BOOT", "--offset", "2048"])
        .arg(&disk)
        .arg("10240"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "data", "-E", "offset=12582912"])
        .arg(&disk)
        .arg("20480k"));
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "PHOTOS", "--offset", "67584"])
        .arg(&disk)
        .arg("31744"));

    let info = inspect_file(&disk);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    let table = info.table.as_ref().unwrap();
    assert_eq!(table.kind, TableKind::Mbr);
    let seen: Vec<_> = table
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start / 512,
                p.size / 512,
                p.type_id.as_str(),
                p.filesystem
                    .as_ref()
                    .map(|f| (f.kind, f.label.clone().unwrap_or_default())),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, 2048, 20480, "0x0e", Some((FsKind::Fat16, "BOOT".into()))),
            (2, 22528, 108544, "0x05", None),
            (5, 24576, 40960, "0x83", Some((FsKind::Ext4, "data".into()))),
            (
                6,
                67584,
                63488,
                "0x0c",
                Some((FsKind::Fat32, "PHOTOS".into()))
            ),
        ]
    );
}

#[test]
fn a_looping_chain_of_extended_boot_records_is_a_problem_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sized(dir.path(), "disk", 64 << 20);
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=129024, type=5\nstart=4096, size=8192, type=83\nstart=14336, size=8192, type=83\n",
    );
    let mut bytes = fs::read(&disk).unwrap();
    assert_eq!(inspect(&bytes).table.unwrap().partitions.len(), 3);
    // The first record's link (its second entry) names the second record,
    // relative to the extended partition's start; the second record is made
    // to link to itself.
    let ext_start = 2048 * 512;
    let link = |b: &[u8], at: usize| u32::from_le_bytes(b[at + 470..at + 474].try_into().unwrap());
    let second = ext_start + link(&bytes, ext_start) as usize * 512;
    assert_eq!(
        link(&bytes, second),
        0,
        "the chain ends at the second record"
    );
    let relative = link(&bytes, ext_start);
    bytes[second + 462 + 4] = 0x05;
    bytes[second + 470..second + 474].copy_from_slice(&relative.to_le_bytes());
    bytes[second + 474..second + 478].copy_from_slice(&2048u32.to_le_bytes());
    let info = inspect(&bytes);
    let numbers: Vec<u32> = info
        .table
        .as_ref()
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(numbers, vec![1, 5, 6], "read up to the loop");
    assert!(
        info.problems.len() == 1 && info.problems[0].contains("loops"),
        "{:?}",
        info.problems
    );
}

/// A root file system tree as distributions lay it out: `/etc/os-release`
/// a relative link to `/usr/lib/os-release`.
fn root_tree(dir: &Path, pretty: &str, extra_etc_files: usize) -> PathBuf {
    let root = dir.join("root");
    write_tree(
        &root,
        &[
            (
                "usr/lib/os-release",
                format!("NAME=\"X\"\nPRETTY_NAME=\"{pretty}\"\nID=x\n").as_bytes(),
            ),
            ("etc/hostname", b"stick\n"),
        ],
    );
    for i in 0..extra_etc_files {
        fs::write(
            root.join(format!(
                "etc/a-rather-long-configuration-file-name-{i:04}.conf"
            )),
            b"x",
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    root
}

#[test]
fn os_release_is_read_from_an_ext4_root_partition_through_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_tree(dir.path(), "Debian GNU/Linux 13 (trixie)", 0);
    let disk = sized(dir.path(), "disk", 64 << 20);
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=16384, type=uefi\nstart=18432, size=100352, type=linux\n",
    );
    run(Command::new("mkfs.vfat")
        .args(["-n", "EFI", "--offset", "2048"])
        .arg(&disk)
        .arg("8192"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-E", "offset=9437184", "-d"])
        .arg(&root)
        .arg(&disk)
        .arg("50176k"));
    let info = inspect_file(&disk);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    let root_fs = info.table.as_ref().unwrap().partitions[1]
        .filesystem
        .as_ref()
        .unwrap();
    assert_eq!(root_fs.kind, FsKind::Ext4);
    assert_eq!(
        root_fs.os_release.as_deref(),
        Some("Debian GNU/Linux 13 (trixie)")
    );
    let os = info.os.as_ref().unwrap();
    assert_eq!(
        (os.name.as_str(), os.evidence.as_str()),
        (
            "Debian GNU/Linux 13 (trixie)",
            "/etc/os-release on partition 2"
        )
    );
    assert!(
        info.summary()
            .contains("ext4 \"root\" with Debian GNU/Linux 13 (trixie)"),
        "{}",
        info.summary()
    );
}

/// ext2 maps its blocks directly and through indirect blocks (no extents):
/// a directory of 1 KiB blocks with more entries than twelve blocks hold is
/// read through its indirect block.
#[test]
fn os_release_is_read_from_a_block_mapped_ext2_with_a_large_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_tree(dir.path(), "Alpine Linux v3.20", 400);
    let image = sized(dir.path(), "fs", 16 << 20);
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext2",
            "-b",
            "1024",
            "-O",
            "^dir_index",
            "-d",
        ])
        .arg(&root)
        .arg(&image));
    let info = inspect_file(&image);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!(fs.kind, FsKind::Ext2);
    assert_eq!(fs.os_release.as_deref(), Some("Alpine Linux v3.20"));
    assert_eq!(info.os.as_ref().unwrap().name, "Alpine Linux v3.20");

    // Without an os-release: no such guess, and no problem.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let image = sized(dir.path(), "fs2", 8 << 20);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&empty)
        .arg(&image));
    let info = inspect_file(&image);
    assert_eq!(info.filesystem.as_ref().unwrap().os_release, None);
    assert_eq!(info.os, None);
}

/// The whole UDF tree, with every file's bytes where `udf_tree` says they
/// are: what a bootable layout is copied from.
#[test]
fn the_udf_tree_lists_every_file_with_the_pieces_that_make_its_bytes() {
    use flashrack_inspect::{udf_tree, Piece};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    write_tree(
        &root,
        &[
            ("README.TXT", b"readme\r\n"),
            ("sources/install.wim", &big),
            ("efi/boot/bootx64.efi", b"MZ loader"),
            ("empty.txt", b""),
        ],
    );
    let iso = dir.path().join("x");
    run(Command::new("genisoimage")
        .args(["-quiet", "-udf", "-V", "T", "-hide", "sources"])
        .arg("-o")
        .arg(&iso)
        .arg(&root));
    let image = fs::read(&iso).unwrap();
    let tree = udf_tree(&image, 1000).unwrap();
    let mut paths: Vec<(&str, bool)> = tree.iter().map(|e| (e.path.as_str(), e.dir)).collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            ("README.TXT", false),
            ("efi", true),
            ("efi/boot", true),
            ("efi/boot/bootx64.efi", false),
            ("empty.txt", false),
            ("sources", true),
            ("sources/install.wim", false),
        ]
    );
    for entry in tree.iter().filter(|e| !e.dir) {
        let mut bytes = Vec::new();
        for piece in &entry.pieces {
            match piece {
                Piece::Embedded(b) => bytes.extend_from_slice(b),
                Piece::At { offset, len } => {
                    bytes.extend_from_slice(&image[*offset as usize..(*offset + *len) as usize])
                }
                Piece::Zeros(len) => bytes.resize(bytes.len() + *len as usize, 0),
            }
        }
        assert_eq!(bytes.len() as u64, entry.size, "{}", entry.path);
        assert_eq!(
            bytes,
            fs::read(root.join(&entry.path)).unwrap(),
            "{}",
            entry.path
        );
    }
    // Too many entries for the bound: an error, not a partial list.
    assert!(udf_tree(&image, 3).unwrap_err().contains("more than 3"));
    // No UDF at all: said.
    assert!(udf_tree(&vec![0u8; 1 << 20], 10).is_err());
}
