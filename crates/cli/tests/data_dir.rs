//! The data directory belongs to one flashrack at a time, its records are whole
//! in the database file once a command is done, and reading them changes
//! nothing (and works on a read-only copy).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

use flashrack_testkit::{require_root, run};

mod common;
use common::{flashrack, stderr};

/// Starts flashrack with its stderr piped, for reading line by line.
fn spawn(data_dir: &Path, args: &[&str]) -> (KillOnDrop, std::io::Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flashrack");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (KillOnDrop(child), lines)
}

/// Reads lines until one satisfies `wanted`; panics if the process ends first.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, wanted: &str) {
    read_until_all(lines, &[wanted]);
}

/// Reads lines until each of `wanted` has been said, in any order.
fn read_until_all(lines: &mut impl Iterator<Item = std::io::Result<String>>, wanted: &[&str]) {
    let mut missing: Vec<&str> = wanted.to_vec();
    for line in lines.by_ref() {
        let line = line.unwrap();
        missing.retain(|w| !line.contains(w));
        if missing.is_empty() {
            return;
        }
    }
    panic!("the process ended without saying {missing:?}");
}

/// A process this test started, killed (by its pid) if the test ends first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn write_image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        flashrack_testkit::image_bytes(2 << 20, seed, 1 << 16),
    )
    .unwrap();
    path
}

fn json(output: &Output) -> serde_json::Value {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every file below `dir` but SQLite's shared-memory WAL index (every
/// reader writes its read marks there, so it changes without any record
/// changing), with its length and a hash of its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, usize, u64)> {
    common::snapshot(dir, |path| !path.to_string_lossy().ends_with("-shm"))
}

#[test]
fn a_second_flashrack_on_a_busy_data_directory_stops_naming_the_first_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path(), "image.img", 8);
    let other_image = write_image(dir.path(), "other.img", 9);

    // The first: a flash whose stick stalls half-way, so it is still running
    // while the others try.
    let (mut first, mut first_err) = spawn(
        &data,
        &[
            "flash",
            text(&image),
            "sim:slow:stall_after=1MiB",
            "--stall-timeout",
            "3600",
        ],
    );
    // The file is written while it is imported: its run names the image only
    // once the import has ended, so the snapshot below waits for that too.
    read_until_all(&mut first_err, &["sim:slow: writing", "imported "]);
    let pid = first.0.id();
    let lock = std::fs::read_to_string(data.join("flashrack.lock")).unwrap();
    assert_eq!(
        lock.trim(),
        pid.to_string(),
        "the lock file names its holder"
    );
    let report_first = || {
        json(&flashrack(
            &data,
            &["report", "run", "1", "--format", "json"],
        ))
    };
    let before = report_first();
    assert_eq!(before["attempts"][0]["verdict"], "running");
    let images_before = flashrack(&data, &["image", "list", "--json"]).stdout;

    let sha = before["run"]["image_sha256"].as_str().unwrap().to_owned();
    for args in [
        vec!["flash", text(&image), "sim:other", "-q"],
        vec!["demo", "--listen", "127.0.0.1:0", "--image-size", "4MiB"],
        vec!["image", "import", text(&other_image)],
        vec!["image", "remove", &sha],
    ] {
        let out = flashrack(&data, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("in use by another flashrack (pid {pid})")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The first one's records are as it left them: its attempt still running,
    // not "recovered" as interrupted, and no second run; the cache unchanged.
    assert_eq!(report_first(), before);
    let runs = flashrack(&data, &["report", "runs"]);
    assert_eq!(String::from_utf8_lossy(&runs.stdout).lines().count(), 2);
    assert_eq!(
        flashrack(&data, &["image", "list", "--json"]).stdout,
        images_before
    );

    // With --wait, the next one waits for the first to be gone, then runs.
    let (mut waiting, mut waiting_err) =
        spawn(&data, &["flash", "--wait", text(&image), "sim:next", "-q"]);
    read_until(
        &mut waiting_err,
        &format!("waiting for another flashrack (pid {pid})"),
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let status = waiting.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let runs = flashrack(&data, &["report", "runs"]);
    assert_eq!(String::from_utf8_lossy(&runs.stdout).lines().count(), 3);
}

#[test]
fn after_a_flash_the_database_file_alone_holds_the_run_and_a_read_only_copy_reports_it() {
    if !require_root(&["mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path(), "image.img", 10);
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
    let wal = data.join("flashrack.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the write-ahead log was checkpointed into the database"
    );

    // A backup that copies the database file alone, on a read-only mount.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(data.join("flashrack.db"), copy.join("flashrack.db")).unwrap();
    let view = dir.path().join("read-only");
    std::fs::create_dir(&view).unwrap();
    let _mount = ReadOnlyBind::new(&copy, &view);
    assert!(
        std::fs::write(view.join("probe"), b"x").is_err(),
        "the view is read-only"
    );

    let runs = flashrack(&view, &["report", "runs"]);
    assert_eq!(runs.status.code(), Some(0), "{}", stderr(&runs));
    let listing = String::from_utf8_lossy(&runs.stdout).into_owned();
    assert_eq!(listing.lines().count(), 2, "{listing}");
    let report = json(&flashrack(
        &view,
        &["report", "run", "1", "--format", "json"],
    ));
    assert_eq!(report["attempts"][0]["verdict"], "pass");
    assert_eq!(report["run"]["passed"], 1);
    let files: Vec<_> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        ["flashrack.db"],
        "nothing was created beside the copy"
    );
}

#[test]
fn report_commands_change_nothing_in_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path(), "image.img", 11);
    let out = flashrack(&data, &["flash", text(&image), "sim:a", "sim:b", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = snapshot(&data);
    for args in [
        vec!["report", "runs", "--station", "elsewhere"],
        vec!["report", "runs"],
        vec![
            "report",
            "run",
            "1",
            "--station",
            "station-1",
            "--format",
            "json",
        ],
        vec!["report", "run", "1", "--format", "html"],
        vec!["report", "device", "sim:a", "--station", "elsewhere"],
    ] {
        let out = flashrack(&data, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        snapshot(&data),
        before,
        "reports wrote to the data directory"
    );
}

/// A read-only bind mount of `source` at `target`, unmounted on drop.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(source: &Path, target: &Path) -> Self {
        run("mount", &["--bind", text(source), text(target)]);
        let bind = ReadOnlyBind(target.to_path_buf());
        run("mount", &["-o", "remount,bind,ro", text(target)]);
        bind
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A report run in a PID namespace of its own (a container sharing the data
/// directory with a station in another) tells the flashrack that holds the
/// data directory there from one that was killed: its running attempt is
/// shown running while it runs, and interrupted once it is gone. The flash
/// runs in a new PID namespace, the report in another with its own
/// `/proc`, which lists none of the flash's locks.
#[test]
fn a_report_in_another_pid_namespace_tells_a_running_flashrack_from_a_killed_one() {
    if !require_root(&["unshare"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = write_image(dir.path(), "image.img", 10);
    let mut flash = Command::new("unshare")
        // When unshare is killed, so is the flash (the namespace's init).
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "flash",
            text(&image),
            "sim:slow:stall_after=1MiB",
            "--stall-timeout",
            "3600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flashrack in a PID namespace of its own");
    let mut lines = BufReader::new(flash.stderr.take().unwrap()).lines();
    let mut flash = KillOnDrop(flash);
    read_until_all(&mut lines, &["sim:slow: writing", "imported "]);
    let report = || {
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_flashrack"))
            .arg("--data-dir")
            .arg(&data)
            .args(["report", "run", "1", "--format", "json"])
            .output()
            .expect("run a report in a PID namespace of its own");
        json(&out)
    };
    let running = report();
    assert_eq!(running["attempts"][0]["verdict"], "running", "{running:#}");
    assert_eq!(running["run"]["running"], 1, "{running:#}");

    // Killed (unshare, and with it the flash): the same report, from the
    // same kind of namespace, tells it is gone once the kernel has dropped
    // its lock.
    flash.0.kill().unwrap();
    flash.0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let after = report();
        if after["attempts"][0]["verdict"] == "interrupted" {
            assert_eq!(after["run"]["running"], 0, "{after:#}");
            break;
        }
        assert_eq!(after["attempts"][0]["verdict"], "running", "{after:#}");
        assert!(
            std::time::Instant::now() < deadline,
            "still running 30 s after the kill: {after:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
