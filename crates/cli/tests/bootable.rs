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

    // Built once: asked again alike, the cached layout is the answer.
    let again = ok(flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            iso,
            "--name",
            "other-name.img",
            "--split-above",
            "2MiB",
            "--json",
        ],
    ));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["reused"], true);
    assert_eq!(again["sha256"], sha.as_str());
    // Asked with another split size (here FAT32's own limit), another
    // layout: built, with nothing split. Before, the layout split at 2 MiB
    // was the answer, the size asked for ignored.
    let unsplit = ok(flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            iso,
            "--name",
            "unsplit-usb.img",
            "--json",
        ],
    ));
    let unsplit: serde_json::Value = serde_json::from_str(&unsplit).unwrap();
    assert_eq!(unsplit["reused"], false, "{unsplit}");
    assert_eq!(unsplit["name"], "unsplit-usb.img", "{unsplit}");
    assert_eq!(unsplit["split"], serde_json::json!([]), "{unsplit}");
    assert_ne!(unsplit["sha256"], sha.as_str());
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

#[test]
fn a_build_says_its_stages_and_one_interrupted_in_its_copying_stage_keeps_nothing() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let content = dir.path().join("content");
    fs::create_dir(&content).unwrap();
    fs::write(content.join("setup.txt"), b"installed by the stick\n").unwrap();
    let iso = dir.path().join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, b"MZ stand-in UEFI loader", &content);
    let sha_iso = ok(flashrack(
        &data,
        &["image", "import", iso.to_str().unwrap()],
    ))
    .trim()
    .to_string();
    let listed = ok(flashrack(&data, &["image", "list"]));

    // The build's mcopy is the real one, run once the test writes a word to
    // a FIFO: the build is held in its copying stage until then.
    let real = Command::new("sh")
        .args(["-c", "command -v mcopy"])
        .output()
        .unwrap();
    let real = text(&real.stdout).trim().to_string();
    let shim = dir.path().join("shim");
    fs::create_dir(&shim).unwrap();
    let gate = dir.path().join("gate");
    assert!(Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap()
        .success());
    let script = shim.join("mcopy");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nread word < '{}'\nexec '{real}' \"$@\"\n",
            gate.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let build = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .env("PATH", &path)
            .arg("--data-dir")
            .arg(&data)
            .args(["image", "build-bootable", &sha_iso[..12], "--name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Reads the build's stderr up to the line saying it copies the files.
    let until_copying = |child: &mut std::process::Child| -> (Vec<String>, BufReader<_>) {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the build ended before copying: {lines:?}"
            );
            let line = line.trim_end().to_string();
            let copying = line == "stage 4 of 5: copying the files in";
            lines.push(line);
            if copying {
                return (lines, reader);
            }
        }
    };

    // Interrupted (SIGINT, as Ctrl-C) while held: it stops, says so, exits
    // non-zero and keeps nothing.
    let mut child = build("held-usb.img");
    let (lines, mut reader) = until_copying(&mut child);
    assert_eq!(
        lines,
        [
            "stage 1 of 5: copying the ISO's files out",
            "stage 2 of 5: splitting install.wim",
            "stage 3 of 5: partitioning (GPT and FAT32)",
            "stage 4 of 5: copying the files in",
        ]
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(!status.success(), "{rest}");
    assert!(
        rest.contains("the build was cancelled: nothing of it was kept"),
        "{rest}"
    );
    assert_eq!(ok(flashrack(&data, &["image", "list"])), listed);
    let leftovers: Vec<_> = fs::read_dir(data.join("bootable"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|name| !name.to_string_lossy().starts_with("build-")),
        "{leftovers:?}"
    );

    // Let through, the same build ends with its layout.
    let mut child = build("quarterly-usb.img");
    let (_, mut reader) = until_copying(&mut child);
    fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest}");
    assert!(
        rest.contains("stage 5 of 5: hashing and caching the layout"),
        "{rest}"
    );
    assert!(ok(flashrack(&data, &["image", "list"])).contains("quarterly-usb.img"));
}

/// The lines a build prints on stderr for one stage's bytes
/// (`"<stage>: <done> of <total> (<n>%)"`), as (done, total, percent) in words.
fn byte_lines<'a>(stderr: &'a str, stage: &str) -> Vec<(&'a str, &'a str, u64)> {
    let prefix = format!("{stage}: ");
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (done, rest) = rest.split_once(" of ").expect("'<done> of <total> (<n>%)'");
            let (total, percent) = rest.split_once(" (").expect("'<total> (<n>%)'");
            let percent = percent.strip_suffix("%)").expect("'(<n>%)'");
            (done, total, percent.parse().expect("a whole percent"))
        })
        .collect()
}

#[test]
fn a_build_prints_the_bytes_it_has_copied_and_hashed_as_the_dashboard_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Eight incompressible files of 1 MiB in the WIM, beside the ISO's
    // small files and its EFI image: several reports in each stage.
    let content = dir.path().join("wim-content");
    fs::create_dir(&content).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..8 {
        let bytes: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(content.join(format!("part{i}.bin")), bytes).unwrap();
    }
    let iso = dir.path().join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, b"MZ stand-in UEFI loader", &content);
    let (iso_files, _) = flashrack_testkit::iso::tree_bytes(&iso);
    let sha_iso = ok(flashrack(
        &data,
        &["image", "import", iso.to_str().unwrap()],
    ))
    .trim()
    .to_string();

    // stderr is a pipe here, not a terminal: lines, not a bar.
    let out = flashrack(
        &data,
        &[
            "image",
            "build-bootable",
            &sha_iso[..12],
            "--name",
            "usb.img",
            "--json",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let built: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let size = built["size"].as_u64().unwrap();

    // Each stage's bytes come after its stage line and before the next.
    let at = |line: &str| {
        stderr
            .lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no line {line:?} in:\n{stderr}"))
    };
    let copying = at("stage 4 of 5: copying the files in");
    let hashing = at("stage 5 of 5: hashing and caching the layout");
    for (n, line) in stderr.lines().enumerate() {
        if line.starts_with("copying the files in: ") {
            assert!(copying < n && n < hashing, "{stderr}");
        }
        if line.starts_with("hashing and caching the layout: ") {
            assert!(hashing < n, "{stderr}");
        }
    }

    // From nothing to the whole stage, never backwards, at most a line per
    // tenth; the totals are what the stage has in all: the ISO's files as
    // xorriso extracts them (nothing was split), the built layout's size.
    for (stage, total) in [
        ("copying the files in", iso_files),
        ("hashing and caching the layout", size),
    ] {
        let lines = byte_lines(&stderr, stage);
        let total = flashrack_core::ByteSize(total).to_string();
        assert!(lines.len() >= 3, "{stage}: {lines:?}\n{stderr}");
        assert_eq!(lines[0], ("0 B", total.as_str(), 0), "{stderr}");
        assert_eq!(
            *lines.last().unwrap(),
            (total.as_str(), total.as_str(), 100),
            "{stderr}"
        );
        assert!(lines.iter().all(|(_, t, _)| *t == total), "{lines:?}");
        assert!(
            lines.windows(2).all(|w| w[0].2 / 10 < w[1].2 / 10),
            "one line per tenth, forwards: {lines:?}"
        );
    }
}
