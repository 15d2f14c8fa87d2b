//! `flashrack image build-bootable`: a UEFI-bootable installer ISO that would
//! not boot written raw becomes a GPT + FAT32 layout in the cache, with the
//! ISO's files in it (a WIM too large for the limit split into `.swm` parts
//! that `wimlib-imagex` applies back to the same files), built once, and
//! flashed and verified like any other image. The layout's files are read
//! back with mtools (`mdir`, `mcopy` on the image file at the partition's
//! offset: no mount).

use std::fs;
use std::process::{Command, Output};

mod common;
use common::{flashrack, text};

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

/// Runs an mtools command on the FAT at 1 MiB into `image`.
fn mtools(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup installs mtools): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn an_installer_iso_becomes_a_gpt_fat32_layout_once_with_its_wim_split_and_flashes_like_any_image()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Twelve incompressible files of 512 KiB: a WIM of about 6 MiB, which a
    // 2 MiB limit makes wimlib split into parts.
    let content = dir.path().join("wim-content");
    fs::create_dir(&content).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..12 {
        let bytes: Vec<u8> = (0..512 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(content.join(format!("file{i:02}.bin")), bytes).unwrap();
    }
    let loader = b"MZ stand-in UEFI loader: prints FLASHRACK-BOOT-OK";
    let iso = dir.path().join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, loader, &content);
    let iso = iso.to_str().unwrap();

    let sha_iso = ok(flashrack(&data, &["image", "import", iso]))
        .trim()
        .to_string();
    let built = ok(flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            &sha_iso[..12],
            "--name",
            "installer-usb.img",
            "--split-above",
            "2MiB",
            "--json",
        ],
    ));
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    assert_eq!(built["reused"], false);
    assert_eq!(built["built_from"], sha_iso.as_str());
    assert_eq!(built["name"], "installer-usb.img");
    assert_eq!(built["split"][0]["file"], "sources/install.wim", "{built}");
    let parts = built["split"][0]["parts"].as_u64().unwrap();
    assert!(parts >= 3, "{built}");
    let sha = built["sha256"].as_str().unwrap().to_string();

    // What the layout is, by inspection: GPT, one EFI system partition,
    // FAT32 labelled after the ISO, and a raw run allowed.
    let info = &built["inspection"];
    assert_eq!(info["table"]["kind"], "gpt", "{info}");
    let partitions = info["table"]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1);
    assert_eq!(partitions[0]["type_name"], "EFI system");
    assert_eq!(partitions[0]["start"], 1 << 20);
    assert_eq!(partitions[0]["filesystem"]["kind"], "fat32");
    assert_eq!(partitions[0]["filesystem"]["label"], "INSTALLER_X");
    let shown = ok(flashrack(&data, &["image", "show", &sha[..12]]));
    assert!(shown.contains("raw run: allowed"), "{shown}");

    // Flashed and verified from the medium like any other image; the
    // target then holds the layout byte for byte.
    let stick = dir.path().join("stick.img");
    let stick_s = stick.to_str().unwrap();
    let flashed = flashrack(&data, &["flash", &sha, stick_s, "--quiet", "--json"]);
    assert_eq!(flashed.status.code(), Some(0), "{}", text(&flashed.stderr));
    let image = format!("{stick_s}@@1048576");

    // The files, read back from the stick with mtools.
    let listed = mtools("mdir", &["-/", "-b", "-i", &image, "::/"]);
    for file in [
        "::/efi/boot/bootx64.efi",
        "::/setup.exe",
        "::/sources/boot.wim",
        "::/sources/install.swm",
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} in:\n{listed}");
    }
    assert!(
        !listed.contains("install.wim"),
        "the WIM is replaced by its parts:\n{listed}"
    );
    let swm: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("::/sources/install") && l.ends_with(".swm"))
        .collect();
    assert_eq!(swm.len() as u64, parts, "{listed}");
    assert_eq!(
        mtools("mtype", &["-i", &image, "::/efi/boot/bootx64.efi"]).as_bytes(),
        loader
    );
    // The parts apply back to the very files the WIM was captured from.
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    mtools(
        "mcopy",
        &["-s", "-i", &image, "::/sources", out.to_str().unwrap()],
    );
    for part in fs::read_dir(out.join("sources")).unwrap() {
        let part = part.unwrap();
        if part.file_name().to_string_lossy().ends_with(".swm") {
            assert!(part.metadata().unwrap().len() <= 2 << 20, "{part:?}");
        }
    }
    let applied = dir.path().join("applied");
    let status = Command::new("wimlib-imagex")
        .arg("apply")
        .arg(out.join("sources/install.swm"))
        .arg("1")
        .arg(&applied)
        .arg(format!(
            "--ref={}",
            out.join("sources/install*.swm").display()
        ))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for i in 0..12 {
        let name = format!("file{i:02}.bin");
        assert_eq!(
            fs::read(applied.join(&name)).unwrap(),
            fs::read(content.join(&name)).unwrap(),
            "{name}"
        );
    }

    // Built once: asked again, the cached layout is the answer.
    let again = ok(flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            iso,
            "--name",
            "other-name.img",
            "--json",
        ],
    ));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["reused"], true);
    assert_eq!(again["sha256"], sha.as_str());
}

#[test]
fn a_hybrid_iso_a_disk_image_and_an_iso_without_a_uefi_loader_are_not_laid_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let hybrid = dir.path().join("h.iso");
    flashrack_testkit::iso::hybrid_linux_iso(&hybrid);
    let refused = flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            hybrid.to_str().unwrap(),
            "--name",
            "x",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("already boots written raw"),
        "{}",
        text(&refused.stderr)
    );

    let bios_only = dir.path().join("w.iso");
    flashrack_testkit::iso::windows_like_iso(&bios_only);
    let refused = flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            bios_only.to_str().unwrap(),
            "--name",
            "x",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("no UEFI loader at EFI/BOOT/BOOTX64.EFI"),
        "{}",
        text(&refused.stderr)
    );

    let disk = dir.path().join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let refused = flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            disk.to_str().unwrap(),
            "--name",
            "x",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("is not an ISO"),
        "{}",
        text(&refused.stderr)
    );
    // Nothing was left behind in the build directory.
    let left: Vec<_> = fs::read_dir(data.join("bootable"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// Windows ISOs keep their files in UDF only (the ISO 9660 side holds a
/// README): the layout is copied out of the UDF tree, and the WIM in it
/// applies back to the captured files.
#[test]
fn an_installer_whose_files_are_in_udf_only_is_laid_out_from_its_udf_tree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let content = dir.path().join("wim-content");
    fs::create_dir(&content).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..4 {
        let bytes: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(content.join(format!("part{i}.bin")), bytes).unwrap();
    }
    let loader = b"MZ another stand-in loader";
    let iso = dir.path().join("scans.bin");
    flashrack_testkit::iso::udf_installer_iso(&iso, loader, &content);

    let built = ok(flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            iso.to_str().unwrap(),
            "--name",
            "win-usb.img",
            "--json",
        ],
    ));
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    assert_eq!(built["split"], serde_json::json!([]), "{built}");
    assert_eq!(
        built["inspection"]["table"]["partitions"][0]["filesystem"]["label"],
        "CCCOMA_X64F"
    );
    let sha = built["sha256"].as_str().unwrap().to_string();
    let stick = dir.path().join("stick.img");
    let flashed = flashrack(&data, &["flash", &sha, stick.to_str().unwrap(), "--quiet"]);
    assert_eq!(flashed.status.code(), Some(0), "{}", text(&flashed.stderr));
    let image = format!("{}@@1048576", stick.display());
    let listed = mtools("mdir", &["-/", "-b", "-i", &image, "::/"]);
    for file in [
        "::/README.TXT",
        "::/setup.exe",
        "::/efi/boot/bootx64.efi",
        "::/sources/install.wim",
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} in:\n{listed}");
    }
    assert_eq!(
        mtools("mtype", &["-i", &image, "::/efi/boot/bootx64.efi"]).as_bytes(),
        loader
    );
    let out = dir.path().join("install.wim");
    mtools(
        "mcopy",
        &[
            "-i",
            &image,
            "::/sources/install.wim",
            out.to_str().unwrap(),
        ],
    );
    let applied = dir.path().join("applied");
    let status = Command::new("wimlib-imagex")
        .arg("apply")
        .arg(&out)
        .arg("1")
        .arg(&applied)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for i in 0..4 {
        let name = format!("part{i}.bin");
        assert_eq!(
            fs::read(applied.join(&name)).unwrap(),
            fs::read(content.join(&name)).unwrap(),
            "{name}"
        );
    }
}
