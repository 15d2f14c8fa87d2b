//! Optical-disc images built by Debian's `xorriso` (which `scripts/setup`
//! installs), for the tests of image inspection: what a real tool makes, not
//! bytes written by hand.

use std::fs;
use std::path::{Path, PathBuf};

use crate::run;

/// A small FAT file system (`mkfs.vfat`), an EFI boot image.
fn efi_image(dir: &Path) -> PathBuf {
    let efi = dir.join("efi.img");
    fs::File::create(&efi).unwrap().set_len(1 << 20).unwrap();
    run("mkfs.vfat", &["-n", "EFIBOOT", efi.to_str().unwrap()]);
    efi
}

/// A non-hybrid ISO laid out as a Windows installer (`sources/install.wim`,
/// BIOS and UEFI El Torito entries, no partition table, Joliet names only),
/// written to `out` with an innocent volume id: its name and label say
/// nothing, its content does.
pub fn windows_like_iso(out: &Path) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    fs::create_dir_all(root.join("sources")).unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::create_dir_all(root.join("efi/microsoft/boot")).unwrap();
    fs::write(root.join("sources/install.wim"), b"MSWIM\0\0\0 a stand-in").unwrap();
    fs::write(root.join("boot/etfsboot.com"), [0u8; 2048]).unwrap();
    fs::copy(
        efi_image(work.path()),
        root.join("efi/microsoft/boot/efisys.bin"),
    )
    .unwrap();
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-J",
            "-V",
            "PHOTOS_2023",
            "-b",
            "boot/etfsboot.com",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-eltorito-alt-boot",
            "-e",
            "efi/microsoft/boot/efisys.bin",
            "-no-emul-boot",
            "-o",
            out.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
}

/// A hybrid ISO (El Torito UEFI entry and an MBR with the EFI partition
/// appended, as distributions' live ISOs) written to `out`.
pub fn hybrid_linux_iso(out: &Path) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    fs::create_dir_all(root.join(".disk")).unwrap();
    fs::write(
        root.join(".disk/info"),
        "Debian GNU/Linux 13 \"Trixie\" - Official amd64\n",
    )
    .unwrap();
    let efi = efi_image(work.path());
    fs::copy(&efi, root.join("efi.img")).unwrap();
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-V",
            "d-live 13",
            "-e",
            "efi.img",
            "-no-emul-boot",
            "-append_partition",
            "2",
            "0xef",
            efi.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
}

/// A UEFI-bootable installer ISO that is not hybrid, as Windows installers
/// are laid out (`efi/boot/bootx64.efi` holding `loader`, an El Torito UEFI
/// entry, `sources/install.wim`, no partition table), written to `out`. The
/// WIM is a real one, captured by `wimlib-imagex` (Debian's wimtools) from
/// the directory `wim_content`, so that it can be split and applied again.
pub fn uefi_installer_iso(out: &Path, loader: &[u8], wim_content: &Path) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    fs::create_dir_all(root.join("sources")).unwrap();
    fs::create_dir_all(root.join("efi/boot")).unwrap();
    fs::create_dir_all(root.join("efi/microsoft/boot")).unwrap();
    fs::write(root.join("efi/boot/bootx64.efi"), loader).unwrap();
    fs::write(root.join("setup.exe"), b"MZ a stand-in").unwrap();
    fs::write(root.join("sources/boot.wim"), b"MSWIM\0\0\0 a stand-in").unwrap();
    fs::copy(
        efi_image(work.path()),
        root.join("efi/microsoft/boot/efisys.bin"),
    )
    .unwrap();
    run(
        "wimlib-imagex",
        &[
            "capture",
            wim_content.to_str().unwrap(),
            root.join("sources/install.wim").to_str().unwrap(),
            "Test install image",
        ],
    );
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-J",
            "-joliet-long",
            "-V",
            "INSTALLER_X64",
            "-e",
            "efi/microsoft/boot/efisys.bin",
            "-no-emul-boot",
            "-o",
            out.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
}

/// [`uefi_installer_iso`] laid out as Microsoft lays Windows ISOs out: every
/// file in the UDF tree, the ISO 9660 side holding only a `README.TXT`
/// (Debian's genisoimage, `-udf`, the rest hidden from ISO 9660).
pub fn udf_installer_iso(out: &Path, loader: &[u8], wim_content: &Path) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tree");
    fs::create_dir_all(root.join("sources")).unwrap();
    fs::create_dir_all(root.join("efi/boot")).unwrap();
    fs::write(root.join("efi/boot/bootx64.efi"), loader).unwrap();
    fs::write(root.join("setup.exe"), b"MZ a stand-in").unwrap();
    fs::write(
        root.join("README.TXT"),
        b"This disc contains a \"UDF\" file system.\r\n",
    )
    .unwrap();
    run(
        "wimlib-imagex",
        &[
            "capture",
            wim_content.to_str().unwrap(),
            root.join("sources/install.wim").to_str().unwrap(),
            "Test install image",
        ],
    );
    // No Joliet: genisoimage's UDF tree leaves out what Joliet hides.
    let mut args = vec!["-quiet", "-udf", "-V", "CCCOMA_X64FRE"];
    for hidden in ["sources", "efi", "setup.exe"] {
        args.extend(["-hide", hidden]);
    }
    args.extend(["-o", out.to_str().unwrap(), root.to_str().unwrap()]);
    run("genisoimage", &args);
}

/// The bytes of every file of `iso`'s tree, as xorriso extracts it, and
/// how many files and directories it has: what a bootable build copies
/// into its layout when nothing is split.
pub fn tree_bytes(iso: &Path) -> (u64, usize) {
    let out = tempfile::tempdir().unwrap();
    let tree = out.path().join("tree");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            iso.to_str().unwrap(),
            "-extract",
            "/",
            tree.to_str().unwrap(),
        ],
    );
    let (mut total, mut items) = (0, 0);
    let mut pending = vec![tree];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            items += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    (total, items)
}
