//! What `flashrack flash` accepts as targets: never a file of its own data
//! directory (the records, the image cache), never one file or one device named
//! twice, and block devices only through the target guard, pinned to the disk
//! they named.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashrack_testkit::{require_root, run, LoopDevice};

mod common;
use common::{flashrack, stderr};

fn write_image(dir: &Path) -> PathBuf {
    let path = dir.join("image.img");
    std::fs::write(&path, flashrack_testkit::image_bytes(1 << 20, 7, 1 << 16)).unwrap();
    path
}

/// The same image gzipped: imported, it is decompressed into the cache, so
/// the cache always holds a file of its own (a raw image file that has
/// settled is referenced in place instead of copied).
fn write_gzip_image(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("image.img.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(&flashrack_testkit::image_bytes(1 << 20, 7, 1 << 16))
        .unwrap();
    std::fs::write(&path, encoder.finish().unwrap()).unwrap();
    path
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file below `dir` but the lock file (which names the last process that
/// held the lock), with its length and a hash of its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, usize, u64)> {
    common::snapshot(dir, |path| {
        path.file_name().is_some_and(|n| n != "flashrack.lock")
    })
}

#[test]
fn a_file_target_in_the_data_directory_is_refused_however_it_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_gzip_image(dir.path());
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&dir.path().join("out.img")),
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cached = std::fs::read_dir(data.join("cache/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "img"))
        .expect("the image is cached");
    symlink(&data, dir.path().join("link")).unwrap();
    symlink(data.join("flashrack.db"), dir.path().join("alias.db")).unwrap();
    std::fs::hard_link(data.join("flashrack.db"), dir.path().join("hard.db")).unwrap();
    let before = snapshot(&data);

    // The image by its digest: naming the file would import it again, and a
    // file that has settled since the first import gets its re-import hint
    // recorded then (the image cache's rule), which is not what this test is about.
    let digest = cached.file_stem().unwrap().to_str().unwrap().to_string();
    let spellings = [
        data.join("flashrack.db"),
        data.join("../data/flashrack.db"),
        dir.path().join("link/flashrack.db"),
        dir.path().join("alias.db"),
        dir.path().join("hard.db"),
        cached,
        // Not there yet: its directory is resolved.
        data.join("new.img"),
        dir.path().join("link/cache/images/new.img"),
    ];
    for target in &spellings {
        let out = flashrack(&data, &["flash", &digest, text(target), "-q"]);
        assert_eq!(out.status.code(), Some(2), "{target:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("inside the data directory"),
            "{target:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        snapshot(&data),
        before,
        "nothing in the data directory changed"
    );
    let runs = flashrack(&data, &["report", "runs"]);
    assert_eq!(
        String::from_utf8_lossy(&runs.stdout).lines().count(),
        2,
        "a header and the one run: {}",
        String::from_utf8_lossy(&runs.stdout)
    );
}

#[test]
fn a_file_of_proc_or_sys_is_never_written_as_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    // /proc and /sys hold "regular" files that a write as root turns into an
    // action on the running system (/proc/sysrq-trigger, /proc/sys/…). The
    // ones named here are harmless if written (the flashrack process's own
    // name, which refuses a write at offset 0 anyway; a link to it; a file
    // sysfs would not create), which is what this test guards against.
    symlink("/proc/self/comm", dir.path().join("comm.img")).unwrap();
    for (target, what) in [
        (
            "/proc/self/comm".to_string(),
            "the kernel's proc file system",
        ),
        (
            text(&dir.path().join("comm.img")).to_string(),
            "the kernel's proc file system",
        ),
        (
            "/sys/flashrack-test.img".to_string(),
            "the kernel's sysfs file system",
        ),
    ] {
        let out = flashrack(&data, &["flash", text(&image), &target, "-q", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{target}: {}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = &summary["targets"][0];
        assert_eq!(row["stage"], "preparing", "{target}: {row:#}");
        assert_eq!(row["bytes_written"], 0, "{target}: {row:#}");
        let detail = row["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(what) && detail.contains("not a medium: refusing to write it"),
            "{target}: {row:#}"
        );
    }
}

#[test]
fn one_file_named_twice_in_a_command_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let fresh = dir.path().join("fresh.img");
    let existing = dir.path().join("existing.img");
    std::fs::write(&existing, b"old").unwrap();
    symlink(&existing, dir.path().join("link.img")).unwrap();
    for (a, b) in [
        (fresh.clone(), dir.path().join("sub/../fresh.img")),
        (existing.clone(), dir.path().join("link.img")),
        (existing.clone(), dir.path().join("./existing.img")),
    ] {
        let out = flashrack(&data, &["flash", text(&image), text(&a), text(&b), "-q"]);
        assert_eq!(out.status.code(), Some(2), "{a:?} {b:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("are the same file"),
            "{a:?} {b:?}: {}",
            stderr(&out)
        );
    }
    assert!(!fresh.exists(), "nothing was created");
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"old",
        "nothing was written"
    );
}

/// A second loop device attached over a file (`losetup`), detached on drop.
struct SecondLoop(String);

impl Drop for SecondLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A loop device and its own file, or two loop devices over one file, are
/// one medium: named together in one command they are refused before
/// anything is written. Before, the first pair was written twice at once
/// and recorded as two passes of one medium, and the second failed both as
/// `capacity_lie`, a good medium accused of lying.
#[test]
fn a_loop_device_and_its_file_or_two_loops_over_one_file_are_one_medium() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    let device = LoopDevice::new(8 << 20);
    let second = SecondLoop(
        run("losetup", &["--find", "--show", text(device.backing())])
            .trim()
            .to_string(),
    );
    assert!(second.0.starts_with("/dev/loop"), "{}", second.0);
    for (a, b) in [
        (text(device.path()), text(device.backing())),
        (text(device.backing()), text(device.path())),
        (text(device.path()), second.0.as_str()),
    ] {
        let out = flashrack(
            &data,
            &["flash", text(&image), a, b, "--allow-bus", "loop", "-q"],
        );
        assert_eq!(out.status.code(), Some(2), "{a} {b}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("write the same file"),
            "{a} {b}: {}",
            stderr(&out)
        );
    }
    let medium = std::fs::read(device.backing()).unwrap();
    assert!(medium.iter().all(|&b| b == 0), "nothing was written");
}

#[test]
fn a_block_device_is_written_through_the_guard_once_and_never_through_two_names() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    let device = LoopDevice::new(8 << 20);
    let dev = text(device.path());

    // Loop devices are not USB sticks: refused unless named, and nothing written.
    let out = flashrack(&data, &["flash", text(&image), dev, "--json", "-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["targets"][0]["reason"], "refused");
    let detail = summary["targets"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("--allow-bus loop"), "{detail}");
    let medium = std::fs::read(device.backing()).unwrap();
    assert!(
        medium.iter().all(|&b| b == 0),
        "a refused device is not written"
    );

    // Two names of the device in one command.
    let alias = dir.path().join("alias");
    symlink(device.path(), &alias).unwrap();
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            dev,
            text(&alias),
            "--allow-bus",
            "loop",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("are the same device"),
        "{}",
        stderr(&out)
    );

    // Allowed, it is written and verified.
    let out = flashrack(
        &data,
        &["flash", text(&image), dev, "--allow-bus", "loop", "-q"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let medium = std::fs::read(device.backing()).unwrap();
    assert_eq!(&medium[..1 << 20], &std::fs::read(&image).unwrap()[..]);
}

/// The counts of run `id` as `report runs` prints them: passed, failed,
/// refused and interrupted, read under their header's right-aligned titles.
fn report_runs_counts(data: &Path, id: u64) -> [String; 4] {
    let out = flashrack(data, &["report", "runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table.lines().next().unwrap();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("run {id}: {table}"));
    ["PASSED", "FAILED", "REFUSED", "INTR"].map(|title| {
        let end = header.find(title).unwrap() + title.len();
        row[end - 6..end].trim().to_string()
    })
}

#[test]
fn a_refused_target_is_counted_as_a_refusal_alike_by_the_summary_its_json_and_the_records() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    let device = LoopDevice::new(8 << 20);
    let dev = text(device.path());

    // Its only target refused (a loop device, not allowed by --allow-bus):
    // no pass, and no failure either.
    let out = flashrack(&data, &["flash", text(&image), dev]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("0 passed, 0 failed, 1 refused in "),
        "{table}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "{dev}: REFUSED by the target guard, nothing written: "
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(report_runs_counts(&data, 1), ["0", "0", "1", "0"]);

    // Beside a pass and a failure, in JSON.
    let file = dir.path().join("out.img");
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&file),
            dev,
            "sim:bad:fail_after=64KiB",
            "--json",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ["passed", "failed", "refused", "interrupted"].map(|k| summary[k].as_u64()),
        [Some(1), Some(1), Some(1), Some(0)],
        "{summary:#}"
    );
    let verdicts: Vec<_> = summary["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["pass", "refused", "fail"], "{summary:#}");
    assert_eq!(summary["targets"][1]["refusal"], "bus_not_allowed");
    assert_eq!(report_runs_counts(&data, 2), ["1", "1", "1", "0"]);
    assert!(
        std::fs::read(device.backing())
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "a refused device is not written"
    );
}

/// A loop device this test attaches over a file of its own choosing.
struct LoopOver(PathBuf);

impl LoopOver {
    fn new(backing: &Path) -> Self {
        let out = run("losetup", &["--find", "--show", text(backing)]);
        LoopOver(PathBuf::from(out.trim()))
    }
}

impl Drop for LoopOver {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_loop_device_over_a_file_of_the_data_directory_is_refused() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    std::fs::create_dir_all(&data).unwrap();
    let inside = data.join("scratch.img");
    std::fs::write(&inside, vec![0u8; 4 << 20]).unwrap();
    let device = LoopOver::new(&inside);
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&device.0),
            "--allow-bus",
            "loop",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("inside the data directory"),
        "{}",
        stderr(&out)
    );
    let bytes = std::fs::read(&inside).unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
}

/// Waits until the file's last change (ctime) is old enough for the image
/// cache to reference it in place (100 ms; 3 s on file systems with whole
/// seconds): a wait on the clock, not on another process.
fn settle(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    loop {
        let meta = std::fs::metadata(path).unwrap();
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let age = SystemTime::now().duration_since(ctime).unwrap_or_default();
        let margin = Duration::from_millis(if meta.ctime_nsec() == 0 { 3200 } else { 150 });
        if age > margin {
            return;
        }
        std::thread::sleep(margin - age);
    }
}

#[test]
fn a_loop_device_over_a_raw_image_the_cache_references_is_refused_by_the_guard_and_recorded() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A raw image, settled, imported: the cache reads it in place.
    let referenced = dir.path().join("golden.img");
    let golden = flashrack_testkit::image_bytes(4 << 20, 11, 1 << 16);
    std::fs::write(&referenced, &golden).unwrap();
    settle(&referenced);
    let out = flashrack(&data, &["image", "import", text(&referenced)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kept in place, not copied"),
        "{}",
        stderr(&out)
    );
    let device = LoopOver::new(&referenced);
    let dev = text(&device.0);

    // Another image, written to the loop device over the cached one; and the
    // cached image itself (by its digest), written to the device it is read
    // from. Both are refused by the guard at opening, recorded as refusals.
    let other = write_image(dir.path());
    let digest = flashrack_core::Sha256Digest::of(&golden).to_hex();
    for (run, image) in [(1, text(&other)), (2, digest.as_str())] {
        let out = flashrack(
            &data,
            &["flash", image, dev, "--allow-bus", "loop", "--json", "-q"],
        );
        assert_eq!(out.status.code(), Some(1), "{image}: {}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let target = &summary["targets"][0];
        assert_eq!(target["reason"], "refused", "{target:#}");
        let detail = target["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!(
                "is a loop device over {}, the image {} (golden.img) that the cache reads in place: \
                 writing it would corrupt that file",
                std::fs::canonicalize(&referenced).unwrap().display(),
                &digest[..12]
            )),
            "{detail}"
        );
        let report = flashrack(
            &data,
            &["report", "run", &run.to_string(), "--format", "json"],
        );
        assert!(report.status.success(), "{}", stderr(&report));
        let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
        let attempt = &report["attempts"][0];
        assert_eq!(attempt["verdict"], "refused", "{attempt:#}");
        assert_eq!(attempt["reason_code"], "protected_file", "{attempt:#}");
    }
    // `devices` says the same of it, with the same sentence, and changes
    // nothing in the data directory.
    let listed_before = listing(&data);
    let out = flashrack(&data, &["devices", "--json", "--allow-bus", "loop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .iter()
        .find(|row| row["device"] == dev)
        .unwrap_or_else(|| panic!("{dev} not listed: {rows:#?}"));
    let refusals = row["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{row:#}");
    assert_eq!(refusals[0]["code"], "protected_file", "{row:#}");
    let sentence = format!(
        "{} is a loop device over {}, the image {} (golden.img) that the cache reads in place: \
         writing it would corrupt that file",
        device.0.file_name().unwrap().to_string_lossy(),
        std::fs::canonicalize(&referenced).unwrap().display(),
        &digest[..12]
    );
    assert_eq!(refusals[0]["message"], sentence.as_str(), "{row:#}");
    let out = flashrack(&data, &["devices", "--allow-bus", "loop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|line| line.starts_with(dev))
        .unwrap_or_else(|| panic!("{dev} not in {table}"));
    assert!(line.contains(&format!("refused: {sentence}")), "{line}");
    assert_eq!(
        listing(&data),
        listed_before,
        "devices changed the data directory"
    );
    assert_eq!(
        std::fs::read(&referenced).unwrap(),
        golden,
        "the referenced image is untouched"
    );
    let out = flashrack(&data, &["image", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&digest[..12]),
        "still cached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every path under `dir` with its size and modification time: what a
/// command that only looks must leave as it was.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            out.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// The `devices --json` row of `device`, listed with loop devices allowed.
fn devices_row(data: &Path, device: &Path) -> serde_json::Value {
    let out = flashrack(data, &["devices", "--json", "--allow-bus", "loop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .find(|row| row["device"] == text(device))
        .unwrap_or_else(|| panic!("{} not listed", device.display()))
}

fn kernel_name(device: &Path) -> String {
    device.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_loop_device_over_the_loop_device_of_a_cached_image_is_refused_naming_it() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A raw image, settled, imported: the cache reads it in place.
    let referenced = dir.path().join("golden.img");
    let golden = flashrack_testkit::image_bytes(4 << 20, 13, 1 << 16);
    std::fs::write(&referenced, &golden).unwrap();
    settle(&referenced);
    let out = flashrack(&data, &["image", "import", text(&referenced)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let digest = flashrack_core::Sha256Digest::of(&golden).to_hex();
    // Detached in reverse: `upper` first.
    let lower = LoopOver::new(&referenced);
    let upper = LoopOver::new(&lower.0);
    let sentence = format!(
        "{} is a loop device over block device {}: {} is a loop device over {}, the image {} \
         (golden.img) that the cache reads in place: writing it would corrupt that file",
        kernel_name(&upper.0),
        kernel_name(&lower.0),
        kernel_name(&lower.0),
        std::fs::canonicalize(&referenced).unwrap().display(),
        &digest[..12]
    );
    // `flash` refuses it at opening, with that sentence, and records it.
    let other = write_image(dir.path());
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&other),
            text(&upper.0),
            "--allow-bus",
            "loop",
            "--json",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["targets"][0]["reason"], "refused", "{summary:#}");
    let detail = summary["targets"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&sentence), "{summary:#}");
    let report = flashrack(&data, &["report", "run", "1", "--format", "json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["attempts"][0]["reason_code"], "protected_file",
        "{report:#}"
    );
    // `devices` says the same of it; and of the lower one, that the upper
    // one holds it besides being over the kept file.
    let row = devices_row(&data, &upper.0);
    let refusals = row["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{row:#}");
    assert_eq!(refusals[0]["code"], "protected_file", "{row:#}");
    assert_eq!(refusals[0]["message"], sentence.as_str(), "{row:#}");
    let row = devices_row(&data, &lower.0);
    let codes: Vec<&str> = row["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["held", "protected_file"], "{row:#}");
    assert_eq!(
        row["refusals"][0]["message"],
        format!(
            "the device is held by {} on {}",
            kernel_name(&upper.0),
            kernel_name(&lower.0)
        )
        .as_str()
    );
    assert_eq!(std::fs::read(&referenced).unwrap(), golden, "untouched");
}

/// A file system of the test's mounted on a temporary directory, unmounted
/// on drop (lazily, should something still hold it).
struct Mounted(tempfile::TempDir);

impl Mounted {
    fn new(device: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run("mount", &[text(device), text(dir.path())]);
        Mounted(dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_loop_device_over_a_mounted_loop_device_is_listed_and_refused_as_mounted() {
    if !require_root(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path());
    let backing = dir.path().join("lower.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(32 << 20))
        .unwrap();
    // Dropped in reverse: the upper device detached, the file system
    // unmounted, the lower device detached.
    let lower = LoopOver::new(&backing);
    run("mkfs.ext4", &["-q", "-F", text(&lower.0)]);
    let mounted = Mounted::new(&lower.0);
    let upper = LoopOver::new(&lower.0);
    let before = std::fs::read(&backing).unwrap();
    let sentence = format!(
        "{} is a loop device over block device {}: {} is mounted at {}",
        kernel_name(&upper.0),
        kernel_name(&lower.0),
        kernel_name(&lower.0),
        mounted.0.path().display()
    );
    let row = devices_row(&data, &upper.0);
    assert_eq!(row["refusals"][0]["code"], "mounted", "{row:#}");
    assert_eq!(row["refusals"][0]["message"], sentence.as_str(), "{row:#}");
    let out = flashrack(
        &data,
        &[
            "flash",
            text(&image),
            text(&upper.0),
            "--allow-bus",
            "loop",
            "--json",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = summary["targets"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&sentence), "{summary:#}");
    assert_eq!(std::fs::read(&backing).unwrap(), before, "nothing written");
}
