//! Sparse runs from the command line: a block map given with `--bmap`,
//! found beside the image or generated from its ext4 file system; `flash
//! --sparse` writes only the map onto a target full of garbage, which then
//! holds a clean file system; the summary and the report state the coverage;
//! a bmap that lies is refused; an image whose file system is broken gets no
//! map, says why, and is still written whole.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{flashrack, text};

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A 32 MiB ext4 image holding a 3 MiB file of data and a 1 MiB file of zeros.
fn ext4_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let root = dir.join("root");
    fs::create_dir_all(root.join("sub")).unwrap();
    let data: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 31 % 253) as u8 | 1)
        .collect();
    fs::write(root.join("sub/data.bin"), &data).unwrap();
    fs::write(root.join("zeros.bin"), vec![0u8; MIB as usize]).unwrap();
    let image = dir.join("disk.img");
    fs::File::create(&image).unwrap().set_len(32 * MIB).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image));
    (image, data)
}

/// A target file of the image's size full of garbage: a used stick.
fn garbage_target(path: &Path, size: u64) {
    fs::write(path, vec![0xa5u8; size as usize]).unwrap();
}

#[test]
fn a_sparse_flash_writes_only_the_map_and_the_stick_holds_a_clean_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, data) = ext4_image(dir.path());
    let image = image.to_str().unwrap();

    let imported = flashrack(&data_dir, &["image", "import", image, "--json"]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(imported["block_map"]["status"], "generated", "{imported}");
    let mapped = imported["block_map"]["mapped_bytes"].as_u64().unwrap();
    assert!(mapped > 4 * MIB && mapped < 16 * MIB, "{imported}");
    let sha = imported["sha256"].as_str().unwrap().to_string();

    let target = dir.path().join("stick.img");
    garbage_target(&target, 32 * MIB);
    let out = flashrack(
        &data_dir,
        &[
            "flash",
            &sha,
            target.to_str().unwrap(),
            "--sparse",
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &summary["targets"][0];
    assert_eq!(row["verdict"], "pass", "{summary}");
    assert_eq!(row["bytes_written"].as_u64(), Some(mapped), "{summary}");
    assert_eq!(row["bytes_verified"].as_u64(), Some(mapped), "{summary}");
    assert_eq!(
        row["bytes_skipped"].as_u64(),
        Some(32 * MIB - mapped),
        "{summary}"
    );
    assert!(row["read_back_sha256"].is_null(), "{summary}");
    // Never a plain pass: what it proved, with its share of the image.
    let proof = row["proof"].as_str().unwrap();
    assert!(
        proof.starts_with("sparse (") && proof.ends_with(" % checked)"),
        "{summary}"
    );

    // The stick: garbage where the file system has nothing, and a file
    // system e2fsck finds clean with every file whole.
    let stick = fs::read(&target).unwrap();
    assert!(stick.contains(&0xa5), "the free blocks were left alone");
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&target));
    let dump = dir.path().join("dump");
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /sub/data.bin {}", dump.display()))
        .arg(&target));
    assert!(fs::read(&dump).unwrap() == data);
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /zeros.bin {}", dump.display()))
        .arg(&target));
    assert!(fs::read(&dump).unwrap() == vec![0u8; MIB as usize]);

    // The table and the report say what was proven and what was not.
    let table = flashrack(
        &data_dir,
        &[
            "flash",
            &sha,
            target.to_str().unwrap(),
            "--sparse",
            "--quiet",
        ],
    );
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    assert!(
        text(&table.stdout).contains("sparse: "),
        "{}",
        text(&table.stdout)
    );
    let report = flashrack(&data_dir, &["report", "run", "1", "--format", "json"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["format"], "flashrack-report/12");
    assert_eq!(report["run"]["options"]["sparse"], true, "{report}");
    assert_eq!(
        report["attempts"][0]["bytes_skipped"].as_u64(),
        Some(32 * MIB - mapped),
        "{report}"
    );
    assert_eq!(report["attempts"][0]["verdict_words"], proof, "{report}");
    let labels = flashrack(&data_dir, &["report", "run", "1", "--format", "labels"]);
    assert!(labels.status.success(), "{}", text(&labels.stderr));
    assert!(
        text(&labels.stdout).contains("verdict=sparse")
            && !text(&labels.stdout).contains("verdict=pass"),
        "the labels' references say sparse"
    );
    assert!(
        report["run"]["options_words"]
            .as_str()
            .unwrap()
            .contains("sparse: only the image's block map written and read back"),
        "{report}"
    );
    // Which map the sticks were written by: the records keep it with the
    // run (a later map of the image may be another).
    assert!(
        report["run"]["options"]["sparse_map"]
            .as_str()
            .is_some_and(|m| m.starts_with("generated from ext4")),
        "{report}"
    );
    assert!(
        report["run"]["options_words"]
            .as_str()
            .unwrap()
            .contains("(map: generated from ext4"),
        "{report}"
    );
}

#[test]
fn a_bmap_beside_the_image_is_used_and_one_that_lies_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, _) = ext4_image(dir.path());
    let bmap = run(Command::new("bmaptool").arg("create").arg(&image));

    // A lying map given with --bmap: the command fails and says why.
    let lying = dir.path().join("lying.bmap");
    let at = bmap.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut forged = bmap.clone();
    forged.replace_range(at..at + 64, &"0".repeat(64));
    fs::write(&lying, &forged).unwrap();
    let out = flashrack(
        &data_dir,
        &[
            "image",
            "import",
            image.to_str().unwrap(),
            "--bmap",
            lying.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(
        error.contains("cannot use the block map") && error.contains("own checksum"),
        "{error}"
    );
    assert_nothing_cached(&data_dir);

    // A map resealed over a wrong range checksum, found beside the image: the
    // import's pass refuses it, nothing is cached, and a flash of the file
    // writes nothing (the import is checked before any stick is written).
    let beside = dir.path().join("disk.img.bmap");
    let at = bmap.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut forged = bmap.clone();
    forged.replace_range(at..at + 64, &"ab".repeat(32));
    fs::write(&beside, flashrack_testkit::bmap::reseal(&forged)).unwrap();
    let out = flashrack(&data_dir, &["image", "import", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(
        error.contains("cannot use the block map")
            && error.contains("disk.img.bmap")
            && error.contains("do not match the bmap's checksum for them"),
        "{error}"
    );
    assert_nothing_cached(&data_dir);
    let target = dir.path().join("stick.img");
    garbage_target(&target, 32 * MIB);
    let out = flashrack(
        &data_dir,
        &[
            "flash",
            image.to_str().unwrap(),
            target.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("do not match the bmap's checksum"));
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0xa5));
    assert_nothing_cached(&data_dir);

    // The real one beside the image (disk.img.bmap) is found and checked.
    fs::write(dir.path().join("disk.img.bmap"), &bmap).unwrap();
    let out = flashrack(
        &data_dir,
        &["image", "import", image.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["block_map"]["status"], "attached", "{imported}");
    assert_eq!(
        imported["block_map"]["origin"]["kind"], "bmap",
        "{imported}"
    );
    assert_eq!(imported["block_map"]["origin"]["file"], "disk.img.bmap");
}

#[test]
fn an_image_with_a_broken_file_system_gets_no_map_and_is_still_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, _) = ext4_image(dir.path());
    let mut bytes = fs::read(&image).unwrap();
    // The superblock claims 4 TiB of blocks.
    bytes[1024 + 4..1024 + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let broken = dir.path().join("broken.img");
    fs::write(&broken, &bytes).unwrap();
    let broken = broken.to_str().unwrap();

    let out = flashrack(&data_dir, &["image", "import", broken]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains(
            "no block map (the ext4 file system at the image's start cannot be mapped: it claims"
        ),
        "{said}"
    );
    let target = dir.path().join("stick.img");
    let target = target.to_str().unwrap();
    let out = flashrack(&data_dir, &["flash", broken, target, "--sparse", "--quiet"]);
    assert_eq!(out.status.code(), Some(2));
    let error = text(&out.stderr);
    assert!(
        error.contains("has no block map, so it can only be written whole (without --sparse)"),
        "{error}"
    );
    let out = flashrack(&data_dir, &["flash", broken, target, "--quiet", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(fs::read(target).unwrap() == bytes);
}

/// Imports `file` and gives its sha256.
fn import(data_dir: &Path, file: &Path) -> String {
    let out = flashrack(
        data_dir,
        &["image", "import", file.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    imported["sha256"].as_str().unwrap().to_string()
}

fn json_of(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn image_show_and_list_give_the_block_map_its_source_and_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Three images: mapped from its ext4 file system, mapped by a bmap file
    // beside it, and one with no file system (no map).
    let (generated, _) = ext4_image(&dir.path().join("gen"));
    let (with_bmap, _) = ext4_image(&dir.path().join("bmap"));
    let bmap = run(Command::new("bmaptool").arg("create").arg(&with_bmap));
    fs::write(dir.path().join("bmap/disk.img.bmap"), bmap).unwrap();
    let plain = dir.path().join("plain.img");
    fs::write(
        &plain,
        (0..4 * MIB as usize)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let generated = import(&data_dir, &generated);
    let with_bmap = import(&data_dir, &with_bmap);
    let plain = import(&data_dir, &plain);

    let shown = |sha: &str| json_of(flashrack(&data_dir, &["image", "show", sha, "--json"]));
    let map = shown(&generated)["block_map"].clone();
    flashrack_testkit::bmap::assert_generated_map(&map, "ext4", 32 * MIB, 3 * MIB, 16 * MIB);
    let mapped = map["mapped_bytes"].as_u64().unwrap();
    let share = map["mapped_share"].as_f64().unwrap();
    assert!(map["ranges"].as_u64().unwrap() >= 1, "{map}");

    let bmap_map = shown(&with_bmap)["block_map"].clone();
    assert_eq!(bmap_map["origin"]["kind"], "bmap", "{bmap_map}");
    assert!(
        bmap_map["source"]
            .as_str()
            .unwrap()
            .starts_with("bmap file disk.img.bmap (format "),
        "{bmap_map}"
    );
    assert!(
        bmap_map["mapped_share"].as_f64().unwrap() > 0.1,
        "{bmap_map}"
    );
    assert!(shown(&plain)["block_map"].is_null());

    // In words.
    let words = |sha: &str| {
        let out = flashrack(&data_dir, &["image", "show", sha]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let said = words(&generated);
    let line = format!(
        "block map: {}: {mapped} of {} bytes mapped ({:.1} %)",
        map["source"].as_str().unwrap(),
        32 * MIB,
        share * 100.0
    );
    assert!(said.contains(&line), "{said}\nwanted: {line}");
    let said = words(&with_bmap);
    assert!(
        said.contains("block map: bmap file disk.img.bmap"),
        "{said}"
    );
    let said = words(&plain);
    assert!(
        said.contains("block map: none (sparse runs are not possible; written whole)"),
        "{said}"
    );

    // The list gives the same, row by row.
    let listed = json_of(flashrack(&data_dir, &["image", "list", "--json"]));
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let sha = row["sha256"].as_str().unwrap();
        assert_eq!(row["block_map"], shown(sha)["block_map"], "{row}");
    }
    let out = flashrack(&data_dir, &["image", "list"]);
    let listed = text(&out.stdout);
    let line_of = |sha: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(sha))
            .unwrap_or_else(|| panic!("{sha} not in {listed}"))
            .to_string()
    };
    assert!(
        line_of(&generated).contains(&format!("[block map {:.1} %]", share * 100.0)),
        "{listed}"
    );
    assert!(line_of(&with_bmap).contains("[block map "), "{listed}");
    assert!(!line_of(&plain).contains("block map"), "{listed}");
}

/// No image in the cache of `data_dir`, and no image or map file.
fn assert_nothing_cached(data_dir: &Path) {
    let out = flashrack(data_dir, &["image", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let images = data_dir.join("cache/images");
    let files: Vec<_> = fs::read_dir(&images)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
}

#[test]
fn a_bmap_given_for_a_cached_image_is_checked_once_and_one_that_lies_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (image, _) = ext4_image(dir.path());
    // The map, kept away from the image (nothing is found beside it).
    let maps = dir.path().join("maps");
    fs::create_dir(&maps).unwrap();
    let bmap = run(Command::new("bmaptool").arg("create").arg(&image));
    let good = maps.join("disk.bmap");
    fs::write(&good, &bmap).unwrap();
    let at = bmap.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut forged = bmap.clone();
    forged.replace_range(at..at + 64, &"ab".repeat(32));
    let lying = maps.join("lying.bmap");
    fs::write(&lying, flashrack_testkit::bmap::reseal(&forged)).unwrap();

    let imported = flashrack(
        &data_dir,
        &["image", "import", image.to_str().unwrap(), "--json"],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(imported["block_map"]["status"], "generated", "{imported}");
    let sha = imported["sha256"].as_str().unwrap().to_string();
    let target = dir.path().join("stick.img");
    garbage_target(&target, 32 * MIB);
    let flash = |bmap: &Path| {
        flashrack(
            &data_dir,
            &[
                "flash",
                &sha,
                target.to_str().unwrap(),
                "--bmap",
                bmap.to_str().unwrap(),
                "--sparse",
                "--json",
            ],
        )
    };

    // A lying map for the cached image: refused with the map's reason, the
    // stick untouched, the generated map kept.
    let out = flash(&lying);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let error = text(&out.stderr);
    assert!(
        error.contains("cannot use the block map")
            && error.contains("lying.bmap")
            && error.contains("do not match the bmap's checksum for them"),
        "{error}"
    );
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0xa5));
    let shown = flashrack(&data_dir, &["image", "show", &sha, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["block_map"]["origin"]["kind"], "generated", "{shown}");

    // The true map: checked (its mapped ranges read once), kept, flashed by.
    let out = flash(&good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("block map: bmap 2.0 (disk.bmap)") && !said.contains("not read again"),
        "{said}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mapped = summary["targets"][0]["bytes_written"].as_u64().unwrap();
    assert_eq!(summary["targets"][0]["verdict"], "pass", "{summary}");
    assert_eq!(
        summary["targets"][0]["bytes_verified"].as_u64(),
        Some(mapped)
    );
    // Again: the same claims are known true of this image, not read again.
    let out = flash(&good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(checked against this image before: not read again)"),
        "{}",
        text(&out.stderr)
    );
    let shown = flashrack(&data_dir, &["image", "show", &sha, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["block_map"]["origin"]["kind"], "bmap", "{shown}");
    assert_eq!(shown["block_map"]["mapped_bytes"].as_u64(), Some(mapped));
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&target));
}
