//! Inspection of images that real tools build in the test: xorriso (ISO 9660,
//! El Torito, hybrid MBR/GPT), sfdisk (MBR, GPT), mkfs.vfat and mkfs.ext4
//! (Debian's xorriso, fdisk, dosfstools and e2fsprogs, which scripts/setup
//! installs). Names given to the files are deliberately unrelated to what
//! they hold: inspection goes by content.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashrack_inspect::{inspect, Boot, FsKind, ImageInfo, TableKind};

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
    let file = fs::File::open(path).unwrap();
    inspect(&file)
}

/// An EFI boot image: a small FAT file system.
fn efi_image(dir: &Path) -> PathBuf {
    let efi = dir.join("efi.img");
    fs::File::create(&efi).unwrap().set_len(1 << 20).unwrap();
    run(Command::new("mkfs.vfat").arg("-n").arg("EFIBOOT").arg(&efi));
    efi
}

/// A tree for an ISO with the given files (path, content).
fn tree(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join("tree");
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    root
}

#[test]
fn a_hybrid_linux_iso_is_an_iso_with_a_partition_table_and_is_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let efi = efi_image(dir.path());
    let root = tree(
        dir.path(),
        &[
            (
                ".disk/info",
                b"Ubuntu 24.04 LTS \"Noble Numbat\" - Release amd64 (20240424)\n",
            ),
            ("boot/grub/grub.cfg", b"menuentry x {}\n"),
        ],
    );
    fs::copy(&efi, root.join("boot/efi.img")).unwrap();
    let iso = dir.path().join("backup-2019.bin");
    run(Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-J",
            "-V",
            "Ubuntu 24.04 LTS amd64",
        ])
        .args(["-e", "boot/efi.img", "-no-emul-boot"])
        .arg("-append_partition")
        .arg("2")
        .arg("0xef")
        .arg(&efi)
        .arg("-appended_part_as_gpt")
        .arg("-o")
        .arg(&iso)
        .arg(&root));

    let info = inspect_file(&iso);
    let iso_info = info.iso.as_ref().expect("an ISO");
    assert_eq!(
        iso_info.volume_id.as_deref(),
        Some("Ubuntu 24.04 LTS amd64")
    );
    assert_eq!(iso_info.el_torito, vec![Boot::Uefi]);
    assert!(iso_info.hybrid, "{info:#?}");
    assert!(!iso_info.windows_installer);
    assert_eq!(
        iso_info.disk_info.as_deref(),
        Some("Ubuntu 24.04 LTS \"Noble Numbat\" - Release amd64 (20240424)")
    );
    let table = info.table.as_ref().expect("a GPT inside the ISO");
    assert_eq!(table.kind, TableKind::Gpt);
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_name.as_deref() == Some("EFI system"))
        .expect("the appended EFI partition");
    assert_eq!(esp.size, 1 << 20);
    let esp_fs = esp.filesystem.as_ref().expect("FAT in the EFI partition");
    assert_eq!(esp_fs.kind, FsKind::Fat12);
    assert_eq!(esp_fs.label.as_deref(), Some("EFIBOOT"));
    assert_eq!(
        info.filesystem.as_ref().map(|f| f.kind),
        Some(FsKind::Iso9660)
    );
    assert!(info.os.as_ref().unwrap().name.starts_with("Ubuntu 24.04"));
    assert_eq!(info.raw_write_refusal(), None);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
}

#[test]
fn a_hybrid_iso_with_an_mbr_is_hybrid() {
    let dir = tempfile::tempdir().unwrap();
    let efi = efi_image(dir.path());
    let root = tree(dir.path(), &[("README", b"hello\n")]);
    fs::copy(&efi, root.join("efi.img")).unwrap();
    let iso = dir.path().join("x");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "DEBIAN_LIVE"])
        .args(["-e", "efi.img", "-no-emul-boot"])
        .arg("-append_partition")
        .arg("2")
        .arg("0xef")
        .arg(&efi)
        .arg("-o")
        .arg(&iso)
        .arg(&root));
    let info = inspect_file(&iso);
    assert_eq!(info.table_kind(), Some(TableKind::Mbr));
    assert!(info.iso.as_ref().unwrap().hybrid);
    let parts = &info.table.as_ref().unwrap().partitions;
    assert_eq!(parts[1].type_id, "0xef");
    assert_eq!(parts[1].filesystem.as_ref().unwrap().kind, FsKind::Fat12);
    assert_eq!(info.os.as_ref().unwrap().name, "Debian");
    assert_eq!(info.raw_write_refusal(), None);
}

#[test]
fn a_windows_like_installer_iso_named_innocently_is_refused_for_a_raw_write() {
    let dir = tempfile::tempdir().unwrap();
    let efi = efi_image(dir.path());
    let root = tree(
        dir.path(),
        &[
            ("sources/install.wim", b"MSWIM\0\0\0 not a real one"),
            ("sources/boot.wim", b"MSWIM\0\0\0"),
            ("boot/etfsboot.com", &[0u8; 2048]),
            ("setup.exe", b"MZ"),
        ],
    );
    fs::create_dir_all(root.join("efi/microsoft/boot")).unwrap();
    fs::copy(&efi, root.join("efi/microsoft/boot/efisys.bin")).unwrap();
    // Joliet only, no Rock Ridge, as Microsoft's ISOs: the plain ISO 9660
    // names (SOURCES/INSTALL.WIM;1) are what the lookup reads.
    // A Windows installer's ISO of `root`, booting by BIOS and (with
    // `uefi`) by UEFI.
    let windows_iso = |name: &str, uefi: bool| {
        let iso = dir.path().join(name);
        let mut xorriso = Command::new("xorriso");
        xorriso
            .args(["-as", "mkisofs", "-quiet", "-J", "-V", "PHOTOS_2023"])
            .args(["-b", "boot/etfsboot.com", "-no-emul-boot"])
            .args(["-boot-load-size", "4"]);
        if uefi {
            xorriso.args(["-eltorito-alt-boot", "-e", "efi/microsoft/boot/efisys.bin"]);
            xorriso.arg("-no-emul-boot");
        }
        run(xorriso.arg("-o").arg(&iso).arg(&root));
        iso
    };
    let iso = windows_iso("holiday-photos-2023.iso", true);

    let info = inspect_file(&iso);
    let iso_info = info.iso.as_ref().expect("an ISO");
    assert!(iso_info.windows_installer, "{info:#?}");
    assert!(!iso_info.hybrid);
    assert_eq!(iso_info.el_torito, vec![Boot::Bios, Boot::Uefi]);
    assert_eq!(info.table, None);
    assert_eq!(info.os.as_ref().unwrap().name, "Windows installer");
    let refusal = info.raw_write_refusal().expect("refused");
    assert!(refusal.reason.contains("Windows installer"), "{refusal}");
    assert!(refusal.advice.contains("force"), "{refusal}");
    assert!(refusal.advice.contains("build-bootable"), "{refusal}");

    // The same installer booting by BIOS only (a 32-bit Windows 7 ISO): no
    // UEFI loader to build a layout from, so the advice does not send the
    // operator to build-bootable, which would refuse it. Before, it did.
    let bios_only = windows_iso("bios-only.iso", false);
    let info = inspect_file(&bios_only);
    assert_eq!(info.iso.as_ref().unwrap().el_torito, vec![Boot::Bios]);
    let refusal = info.raw_write_refusal().expect("refused");
    assert!(refusal.reason.contains("Windows installer"), "{refusal}");
    assert!(!refusal.advice.contains("build-bootable"), "{refusal}");
    assert!(refusal.advice.contains("BIOS only"), "{refusal}");
}

#[test]
fn a_non_hybrid_bootable_linux_iso_is_refused_and_a_data_iso_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let efi = efi_image(dir.path());
    let root = tree(dir.path(), &[("isolinux/isolinux.bin", &[0u8; 2048])]);
    fs::copy(&efi, root.join("efi.img")).unwrap();
    let boot_only = dir.path().join("a");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "FEDORA_OLD"])
        .args(["-b", "isolinux/isolinux.bin", "-no-emul-boot"])
        .arg("-o")
        .arg(&boot_only)
        .arg(&root));
    let info = inspect_file(&boot_only);
    assert_eq!(info.iso.as_ref().unwrap().el_torito, vec![Boot::Bios]);
    let refusal = info.raw_write_refusal().expect("refused");
    assert!(refusal.reason.contains("El Torito"), "{refusal}");

    let data = dir.path().join("b");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "ARCHIVE"])
        .arg("-o")
        .arg(&data)
        .arg(&root));
    let info = inspect_file(&data);
    assert!(info.iso.as_ref().unwrap().el_torito.is_empty());
    assert_eq!(info.raw_write_refusal(), None);
}

/// A 64 MiB disk image partitioned by sfdisk with `script`.
fn disk(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(name);
    fs::File::create(&path).unwrap().set_len(64 << 20).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (scripts/setup installs fdisk)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    path
}

fn mkfs_vfat(image: &Path, start_sector: u64, sectors: u64, fat: &str, label: &str) {
    run(Command::new("mkfs.vfat")
        .args(["-F", fat, "-n", label, "--offset"])
        .arg(start_sector.to_string())
        .arg(image)
        .arg((sectors / 2).to_string()));
}

fn mkfs_ext4(image: &Path, start: u64, size: u64, label: &str) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-E"])
        .arg(format!("offset={start}"))
        .arg(image)
        .arg(format!("{}k", size / 1024)));
}

const GPT_SCRIPT: &str = "label: gpt\nstart=2048, size=65536, type=uefi, name=\"EFI\"\nstart=67584, size=61440, type=linux, name=\"rootfs\"\n";

fn gpt_disk(dir: &Path) -> PathBuf {
    let image = disk(dir, "gpt.raw", GPT_SCRIPT);
    mkfs_vfat(&image, 2048, 65536, "32", "ESP");
    mkfs_ext4(&image, 67584 * 512, 61440 * 512, "rootfs");
    image
}

#[test]
fn a_gpt_disk_with_fat32_and_ext4_is_read_with_types_sizes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_disk(dir.path());
    let info = inspect_file(&image);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    assert_eq!(info.iso, None);
    let table = info.table.as_ref().expect("GPT");
    assert_eq!(table.kind, TableKind::Gpt);
    assert_eq!(table.partitions.len(), 2);
    let (efi, root) = (&table.partitions[0], &table.partitions[1]);
    assert_eq!(
        (efi.number, efi.start, efi.size),
        (1, 2048 * 512, 65536 * 512)
    );
    assert_eq!(efi.type_name.as_deref(), Some("EFI system"));
    assert_eq!(efi.type_id, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(efi.name.as_deref(), Some("EFI"));
    let fat = efi.filesystem.as_ref().unwrap();
    assert_eq!(
        (fat.kind, fat.label.as_deref()),
        (FsKind::Fat32, Some("ESP"))
    );
    assert_eq!((root.start, root.size), (67584 * 512, 61440 * 512));
    assert_eq!(root.type_name.as_deref(), Some("Linux filesystem"));
    let ext = root.filesystem.as_ref().unwrap();
    assert_eq!(
        (ext.kind, ext.label.as_deref()),
        (FsKind::Ext4, Some("rootfs"))
    );
    assert_eq!(info.os.as_ref().unwrap().name, "Linux");
    assert_eq!(info.raw_write_refusal(), None);
    assert_eq!(
        info.summary(),
        "GPT: 2 partitions (FAT32 \"ESP\", ext4 \"rootfs\"); Linux"
    );
}

#[test]
fn an_mbr_disk_with_fat16_and_ext4_is_read_with_the_active_flag() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(
        dir.path(),
        "mbr.raw",
        "label: dos\nstart=2048, size=32768, type=e, bootable\nstart=34816, size=65536, type=83\n",
    );
    mkfs_vfat(&image, 2048, 32768, "16", "boot");
    mkfs_ext4(&image, 34816 * 512, 65536 * 512, "rootfs");
    let info = inspect_file(&image);
    assert!(info.problems.is_empty(), "{:?}", info.problems);
    let table = info.table.as_ref().expect("MBR");
    assert_eq!(table.kind, TableKind::Mbr);
    let (boot, root) = (&table.partitions[0], &table.partitions[1]);
    assert!(boot.bootable && !root.bootable);
    assert_eq!(
        (boot.type_id.as_str(), boot.type_name.as_deref()),
        ("0x0e", Some("FAT16"))
    );
    assert_eq!(boot.filesystem.as_ref().unwrap().kind, FsKind::Fat16);
    assert_eq!(
        boot.filesystem.as_ref().unwrap().label.as_deref(),
        Some("boot")
    );
    assert_eq!(root.filesystem.as_ref().unwrap().kind, FsKind::Ext4);
    assert_eq!(root.size, 65536 * 512);
    assert_eq!(
        info.os.as_ref().unwrap().name,
        "Raspberry Pi OS or similar (boot + rootfs)"
    );
}

/// An image of `len` bytes whose MBR holds `entries` (type, first sector,
/// sectors) as given: tables sfdisk will not write (sectors of another
/// size, overlapping partitions).
fn mbr_by_hand(image: &Path, entries: &[(u8, u32, u32)], len: u64) {
    let mut mbr = vec![0u8; 512];
    for (slot, &(kind, first, count)) in entries.iter().enumerate() {
        let entry = &mut mbr[446 + 16 * slot..462 + 16 * slot];
        entry[4] = kind;
        entry[8..12].copy_from_slice(&first.to_le_bytes());
        entry[12..16].copy_from_slice(&count.to_le_bytes());
    }
    mbr[510..].copy_from_slice(&[0x55, 0xAA]);
    fs::write(image, &mbr).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn an_mbr_of_4096_byte_sectors_is_read_in_them_and_said_to_need_such_a_disk() {
    // The image of a disk of 4096-byte sectors (as a capture of one gives):
    // its MBR's entries count in them, which the MBR does not say. Read in
    // 512-byte sectors it pointed at no file system; its file systems show
    // where its sectors are.
    // (sfdisk converts a script's sectors to a file's 512-byte ones.)
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("mbr4k.raw");
    mbr_by_hand(&image, &[(0x0e, 256, 4096), (0x83, 4352, 8192)], 64 << 20);
    // 1 MiB to 17 MiB, and 17 MiB to 49 MiB.
    mkfs_vfat(&image, 256 * 8, 4096 * 8, "16", "BOOT4K");
    mkfs_ext4(&image, 17 << 20, 32 << 20, "root4k");
    let info = inspect_file(&image);
    let table = info.table.as_ref().expect("MBR");
    assert_eq!(table.kind, TableKind::Mbr);
    let (boot, root) = (&table.partitions[0], &table.partitions[1]);
    assert_eq!((boot.start, boot.size), (1 << 20, 16 << 20));
    assert_eq!((root.start, root.size), (17 << 20, 32 << 20));
    let fat = boot.filesystem.as_ref().expect("the FAT at 1 MiB");
    assert_eq!(
        (fat.kind, fat.label.as_deref()),
        (FsKind::Fat16, Some("BOOT4K"))
    );
    let ext = root.filesystem.as_ref().expect("the ext4 at 17 MiB");
    assert_eq!(
        (ext.kind, ext.label.as_deref()),
        (FsKind::Ext4, Some("root4k"))
    );
    assert_eq!(info.problems.len(), 1, "{:?}", info.problems);
    assert!(
        info.problems[0].contains("MBR of 4096-byte sectors")
            && info.problems[0].contains("not on a stick of 512-byte sectors"),
        "{:?}",
        info.problems
    );
    // Cut inside its second partition: the end is judged in its sectors.
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.set_len(40 << 20).unwrap();
    let info = inspect_file(&image);
    let table = info.table.as_ref().expect("MBR");
    assert_eq!(table.partitions[0].start, 1 << 20);
    assert!(
        info.problems
            .iter()
            .any(|p| p.starts_with("MBR partition 2 ends at byte 51380224")),
        "{:?}",
        info.problems
    );
    // An MBR of 512-byte sectors whose partitions hold no file system is
    // left as read (the MBR test above reads one that does).
    let plain = disk(
        dir.path(),
        "mbr512.raw",
        "label: dos\nstart=256, size=4096, type=83\n",
    );
    let info = inspect_file(&plain);
    let table = info.table.as_ref().expect("MBR");
    assert_eq!(
        (table.partitions[0].start, table.partitions[0].size),
        (256 * 512, 4096 * 512)
    );
    assert!(info.problems.is_empty(), "{:?}", info.problems);
}

#[test]
fn overlapping_partitions_are_a_problem_named_by_their_numbers() {
    // sfdisk refuses to write overlapping partitions: a table made by hand
    // (or damaged) is written here, with one partition inside another.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("overlap.raw");
    mbr_by_hand(
        &image,
        &[(0x83, 2048, 8192), (0x83, 6144, 8192), (0x83, 20480, 2048)],
        16 << 20,
    );
    let info = inspect_file(&image);
    assert_eq!(info.table_kind(), Some(TableKind::Mbr));
    assert_eq!(
        info.problems,
        ["partitions 1 and 2 overlap (bytes 3145728 to 5242880): a write to one overwrites the other"]
    );
    // The same table in a hybrid ISO (an ISO 9660 volume descriptor at
    // 32 KiB) is not flagged: a hybrid ISO's MBR overlaps by design (a
    // partition over the whole ISO, its EFI image's inside it).
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"\x01CD001\x01", 32768).unwrap();
    file.write_all_at(b"\xffCD001\x01", 34816).unwrap();
    let info = inspect_file(&image);
    assert!(info.iso.is_some(), "{info:?}");
    assert!(
        !info.problems.iter().any(|p| p.contains("overlap")),
        "{:?}",
        info.problems
    );
}

#[test]
fn a_whole_disk_fat_file_system_is_not_mistaken_for_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("floppy");
    fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    run(Command::new("mkfs.vfat")
        .args(["-F", "16", "-n", "STICK"])
        .arg(&image));
    let info = inspect_file(&image);
    assert_eq!(info.table, None);
    let fs = info.filesystem.as_ref().unwrap();
    assert_eq!(
        (fs.kind, fs.label.as_deref()),
        (FsKind::Fat16, Some("STICK"))
    );
}

#[test]
fn a_truncated_gpt_disk_names_the_partition_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_disk(dir.path());
    // Cut inside the second partition: the backup header is gone too.
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.set_len(40 << 20).unwrap();
    let info = inspect_file(&image);
    let table = info.table.as_ref().expect("the primary GPT is intact");
    assert_eq!(table.partitions.len(), 2);
    assert_eq!(
        table.partitions[1].filesystem, None,
        "past the end: not read"
    );
    assert_eq!(info.problems.len(), 1, "{:?}", info.problems);
    assert!(
        info.problems[0].contains("GPT partition 2 ends at byte")
            && info.problems[0].contains("truncated"),
        "{:?}",
        info.problems
    );
}

#[test]
fn a_damaged_primary_gpt_is_read_from_its_backup_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_disk(dir.path());
    let mut bytes = fs::read(&image).unwrap();
    bytes[512 + 40] ^= 0xff; // first usable LBA: the header's CRC fails
    let info = inspect(&bytes);
    assert_eq!(info.table_kind(), Some(TableKind::Gpt));
    assert_eq!(info.table.as_ref().unwrap().partitions.len(), 2);
    assert!(
        info.problems.len() == 1
            && info.problems[0].contains("primary GPT header damaged (fails its CRC32)"),
        "{:?}",
        info.problems
    );

    // Both copies damaged: no table, and the problem says why.
    let last = bytes.len() - 512;
    bytes[last] ^= 0xff; // the backup's signature
    let info = inspect(&bytes);
    assert_eq!(info.table, None);
    assert!(
        info.problems.len() == 1 && info.problems[0].starts_with("GPT damaged"),
        "{:?}",
        info.problems
    );
    // The damaged entries array is caught as well.
    let mut bytes = fs::read(&image).unwrap();
    bytes[1024 + 56] ^= 0xff; // the first entry's name
    let info = inspect(&bytes);
    assert!(
        info.problems[0].contains("partition entry array that fails its CRC32"),
        "{:?}",
        info.problems
    );
}

#[test]
fn a_truncated_mbr_disk_names_the_partition_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(
        dir.path(),
        "m",
        "label: dos\nstart=2048, size=100000, type=83\n",
    );
    mkfs_ext4(&image, 2048 * 512, 100000 * 512, "root");
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    f.set_len(10 << 20).unwrap();
    let info = inspect_file(&image);
    assert_eq!(info.table_kind(), Some(TableKind::Mbr));
    assert!(
        info.problems.len() == 1
            && info.problems[0].starts_with("MBR partition 1 ends at byte 52248576"),
        "{:?}",
        info.problems
    );
}

#[test]
fn garbage_and_zeros_are_no_table_and_no_file_system() {
    // A fixed pseudo-random sequence (xorshift), with the MBR signature set
    // so that the table parser is really asked.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut garbage: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    garbage[510] = 0x55;
    garbage[511] = 0xAA;
    let info = inspect(&garbage);
    assert_eq!(
        (&info.table, &info.filesystem, &info.iso),
        (&None, &None, &None)
    );
    assert_eq!(info.summary(), "no partition table, no file system found");
    assert_eq!(info.raw_write_refusal(), None);

    for size in [0usize, 100, 511, 4096] {
        let info = inspect(&vec![0u8; size]);
        assert_eq!(
            (&info.table, &info.filesystem, &info.iso),
            (&None, &None, &None)
        );
    }
}

/// A GPT whose header and entries pass their CRCs but whose one entry holds
/// the largest numbers an LBA can hold.
#[test]
fn a_gpt_entry_with_absurd_lbas_is_a_problem_not_a_crash() {
    let mut image = vec![0u8; 64 * 1024];
    // Protective MBR.
    image[446 + 4] = 0xEE;
    image[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    image[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xAA;
    // One entry at LBA 2: Linux filesystem, first u64::MAX - 1, last u64::MAX.
    let entries = 1024;
    let linux = [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ];
    image[entries..entries + 16].copy_from_slice(&linux);
    image[entries + 32..entries + 40].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    image[entries + 40..entries + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    let entries_crc = crc32fast::hash(&image[entries..entries + 128 * 128]);
    let h = 512;
    image[h..h + 8].copy_from_slice(b"EFI PART");
    image[h + 8..h + 12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    image[h + 12..h + 16].copy_from_slice(&92u32.to_le_bytes());
    image[h + 24..h + 32].copy_from_slice(&1u64.to_le_bytes());
    image[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes());
    image[h + 80..h + 84].copy_from_slice(&128u32.to_le_bytes());
    image[h + 84..h + 88].copy_from_slice(&128u32.to_le_bytes());
    image[h + 88..h + 92].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&image[h..h + 92]);
    image[h + 16..h + 20].copy_from_slice(&header_crc.to_le_bytes());

    let info = inspect(&image);
    let table = info.table.as_ref().expect("the GPT reads");
    assert_eq!(table.partitions.len(), 1);
    assert_eq!(table.partitions[0].filesystem, None);
    assert!(
        info.problems.len() == 1
            && info.problems[0].contains("GPT partition 1 ends at byte 18446744073709551615"),
        "{:?}",
        info.problems
    );
}

/// The head of an image (its first 64 KiB, as a download or a decoder
/// produces them) is enough to refuse an ISO laid out as a Windows
/// installer (no MBR, no GPT, an El Torito boot record at 32 KiB on) before
/// the rest of it is there, with the words the full inspection gives an
/// El Torito-only ISO, also when a boot signature sits over empty entries
/// or boot code; a hybrid ISO's head (an MBR at 0) and a data ISO
/// without a boot record are not refused, nor is a head too short to hold
/// the volume descriptors.
#[test]
fn the_head_of_an_el_torito_only_iso_is_enough_to_refuse_it_and_a_hybrids_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let head = |path: &Path| {
        let mut bytes = fs::read(path).unwrap();
        bytes.truncate(flashrack_inspect::HEAD_LEN);
        bytes
    };
    let windows = dir.path().join("photos.bin");
    flashrack_testkit::iso::windows_like_iso(&windows);
    let refused = flashrack_inspect::head_raw_write_refusal(&head(&windows))
        .expect("an El Torito-only ISO's head is refused");
    assert!(refused.reason.contains("optical media only"), "{refused:?}");
    // Its head cannot tell a Windows installer from another ISO: the advice
    // names the way for each (before, only the Linux one).
    assert!(refused.advice.contains("build-bootable"), "{refused:?}");
    assert!(refused.advice.contains("hybrid ISO"), "{refused:?}");
    // The full inspection refuses it too (as a Windows installer).
    assert!(inspect_file(&windows).raw_write_refusal().is_some());
    // Too short to hold the descriptors: not judged.
    assert_eq!(
        flashrack_inspect::head_raw_write_refusal(&head(&windows)[..33 << 10]),
        None
    );

    // A boot signature over an empty table, or over boot code, is no table
    // (as some ISO makers write the system area): the head is enough. Each
    // layout: whether its head is refused, and whether its full inspection
    // refuses it.
    let refusals = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        (
            flashrack_inspect::head_raw_write_refusal(&head(&path)).is_some(),
            inspect_file(&path).raw_write_refusal().is_some(),
        )
    };
    let mut signed = fs::read(&windows).unwrap();
    signed[510] = 0x55;
    signed[511] = 0xAA;
    assert_eq!(
        refusals("signed.bin", &signed),
        (true, true),
        "a boot signature over four empty entries"
    );
    for (i, byte) in signed[446..510].iter_mut().enumerate() {
        *byte = 0x31 + (i % 7) as u8;
    }
    assert_eq!(
        refusals("bootcode.bin", &signed),
        (true, true),
        "a boot signature over boot code"
    );
    // One real entry (type 0x83, 1 MiB from sector 2048): a table, left to
    // the full inspection, which takes the ISO for a hybrid.
    signed[446..510].fill(0);
    signed[446 + 4] = 0x83;
    signed[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    signed[446 + 12..446 + 16].copy_from_slice(&2048u32.to_le_bytes());
    assert_eq!(
        refusals("entry.bin", &signed),
        (false, false),
        "one real entry"
    );

    let hybrid = dir.path().join("live.bin");
    flashrack_testkit::iso::hybrid_linux_iso(&hybrid);
    assert_eq!(
        flashrack_inspect::head_raw_write_refusal(&head(&hybrid)),
        None
    );
    assert_eq!(inspect_file(&hybrid).raw_write_refusal(), None);

    let root = tree(dir.path(), &[("notes.txt", b"data only\n")]);
    let data = dir.path().join("data.bin");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "DATA", "-o"])
        .arg(&data)
        .arg(&root));
    assert_eq!(
        flashrack_inspect::head_raw_write_refusal(&head(&data)),
        None
    );
}
