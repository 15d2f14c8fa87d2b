//! How `flashrack flash` ends: as soon as every target has a verdict (a stick
//! stuck in the kernel holds nothing up), with each verdict committed as it
//! happens, and in order on SIGINT or SIGTERM. Run against the real binary on
//! simulated sticks, with the records read back through `flashrack report`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

/// Far longer than any of these commands needs: only a hang reaches it.
const HANG: Duration = Duration::from_secs(90);

fn image(dir: &Path, size: usize) -> PathBuf {
    let path = dir.join("image.img");
    std::fs::write(&path, flashrack_testkit::image_bytes(size, 9, 1 << 18)).unwrap();
    path
}

fn start(data_dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flashrack")
}

/// Waits for the process to exit; kills it and fails after [`HANG`].
fn finish(child: Child) -> Output {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(HANG) {
        Ok(output) => output,
        Err(_) => {
            let _ = kill_process(pid, Signal::KILL);
            let output = rx.recv().unwrap();
            panic!(
                "flashrack did not exit within {HANG:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Reads the child's stderr line by line, into `seen`, until a line satisfies
/// `wanted`.
fn read_until(
    lines: &mut std::io::Lines<BufReader<ChildStderr>>,
    seen: &mut String,
    wanted: impl Fn(&str) -> bool,
) {
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if wanted(&line) {
            return;
        }
    }
    panic!("stderr ended without the line expected:\n{seen}");
}

fn signal(child: &Child, signal: Signal) {
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), signal).unwrap();
}

/// `flashrack report run <id> --format json`.
fn run_report(data_dir: &Path, run: u32) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["report", "run", &run.to_string(), "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The attempt of `target` in a run report.
fn attempt<'a>(report: &'a Value, target: &str) -> &'a Value {
    report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["port_label"] == target)
        .unwrap_or_else(|| panic!("no attempt for {target}: {report:#}"))
}

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

#[test]
fn sticks_that_never_return_from_write_or_read_hold_nothing_up_and_the_record_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 3 << 20);
    let data = dir.path().join("data");
    let started = Instant::now();
    let out = finish(start(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            "sim:ok",
            // Past the capacity probe's markers: in the write pass.
            "sim:w:hang_write_after=1MiB",
            // Past the probe's reads: in the read-back.
            "sim:r:hang_read_after=1MiB",
            "--stall-timeout",
            "3",
            "--json",
            "--quiet",
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out.status), Some(1), "{stderr}");
    // The stall timeout and a little: not the threads, which never return.
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["passed"].as_u64(), summary["failed"].as_u64()),
        (Some(1), Some(2))
    );
    let targets = summary["targets"].as_array().unwrap();
    assert_eq!(targets[0]["verdict"], "pass");
    for (row, stage) in targets[1..].iter().zip(["writing", "verifying"]) {
        assert_eq!(row["reason"], "stalled", "{row:#}");
        assert_eq!(row["stage"], stage, "{row:#}");
    }
    // The record says what the screen said: nothing left running, run closed.
    let report = run_report(&data, 1);
    assert_eq!(report["run"]["running"], 0, "{report:#}");
    assert_eq!(report["run"]["passed"], 1, "{report:#}");
    assert!(report["run"]["stopped_at"].is_string(), "{report:#}");
    assert_eq!(report["run"]["stop_reason"], "completed");
    assert_eq!(attempt(&report, "sim:ok")["verdict"], "pass");
    for target in ["sim:w", "sim:r"] {
        let row = attempt(&report, target);
        assert_eq!(row["verdict"], "fail", "{row:#}");
        assert_eq!(row["reason_code"], "stalled", "{row:#}");
    }
    // And the simulated sticks' files are gone.
    assert_no_sim_dirs(&data);
}

#[test]
fn a_verdict_is_in_the_records_as_soon_as_it_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 3 << 20);
    let data = dir.path().join("data");
    let mut child = start(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            "sim:fast",
            // Still writing (forever) when the fast one passes.
            "sim:slow:hang_write_after=1MiB",
            "--stall-timeout",
            "600",
        ],
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |line| {
        line.starts_with("sim:fast: pass")
    });
    // While the flash runs, the other one is running.
    let report = run_report(&data, 1);
    assert_eq!(
        attempt(&report, "sim:slow")["verdict"],
        "running",
        "{report:#}"
    );
    // Killed at once, as a power cut would: no chance to record anything more.
    child.kill().unwrap();
    child.wait().unwrap();
    // The pass shown is in the records. The other is still running in them
    // (nothing closed it), but no flashrack runs it: a report says it was
    // interrupted, and the run cut short.
    let report = run_report(&data, 1);
    assert_eq!(
        attempt(&report, "sim:fast")["verdict"],
        "pass",
        "{report:#}"
    );
    let slow = attempt(&report, "sim:slow");
    assert_eq!(slow["verdict"], "interrupted", "{report:#}");
    assert!(
        slow["reason_detail"]
            .as_str()
            .is_some_and(|d| d.contains("no longer running")),
        "{report:#}"
    );
    assert_eq!(
        (&report["run"]["running"], &report["run"]["interrupted"]),
        (&Value::from(0), &Value::from(1)),
        "{report:#}"
    );
    let runs = finish(start(&data, &["report", "runs"]));
    let runs = String::from_utf8_lossy(&runs.stdout).into_owned();
    assert!(runs.contains("cut short"), "{runs}");
    // Nothing ran to remove the killed flash's simulated sticks (a sparse
    // file each, as large as its stick): the next flashrack to hold the
    // data directory does (the demo here, or a flash).
    let killed: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sim-") && name != "sim-rack")
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    // The demo (records as `demo`, not the flash's `station-1`) holds the
    // data directory next: it closes the flash's work in the records, with
    // the recovery's words, as it would its own.
    let demo = finish(start(
        &data,
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--image-size",
            "1MiB",
            "--burst",
            "1",
            "--exit-when-done",
        ],
    ));
    assert_eq!(
        code(demo.status),
        Some(0),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let report = run_report(&data, 1);
    let slow = attempt(&report, "sim:slow");
    assert_eq!(slow["verdict"], "interrupted", "{report:#}");
    assert!(
        slow["reason_detail"]
            .as_str()
            .is_some_and(|d| d.contains("stopped unexpectedly")),
        "closed in the records by the demo, not only shown so: {report:#}"
    );
    assert_eq!(report["run"]["stop_reason"], "interrupted", "{report:#}");
    // And it removed the killed flash's simulated sticks, as the next flash
    // on the data directory would.
    assert_no_sim_dirs(&data);
    let next = finish(start(
        &data,
        &["flash", image.to_str().unwrap(), "sim:next", "-q"],
    ));
    assert_eq!(
        code(next.status),
        Some(0),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert_no_sim_dirs(&data);
}

#[test]
fn sigterm_and_sigint_stop_every_target_at_a_safe_point_and_close_the_run() {
    for (n, (sig, status)) in [(Signal::TERM, 143), (Signal::INT, 130)]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        // Eight 4 MiB chunks at 4 MiB/s: a safe point every second.
        let image = image(dir.path(), 32 << 20);
        let data = dir.path().join("data");
        let mut child = start(
            &data,
            &[
                "flash",
                image.to_str().unwrap(),
                "sim:a:write=4MiB",
                "sim:b:write=4MiB",
                "--json",
            ],
        );
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        read_until(&mut lines, &mut seen, |l| l == "sim:a: writing");
        if !seen.contains("sim:b: writing") {
            read_until(&mut lines, &mut seen, |l| l == "sim:b: writing");
        }
        signal(&child, sig);
        // The rest of stderr, to the end.
        for line in lines {
            seen.push_str(&line.unwrap());
            seen.push('\n');
        }
        let out = finish(child);
        assert_eq!(code(out.status), Some(status), "{n}: {seen}");
        assert!(seen.contains("stopping every target"), "{seen}");
        let summary: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(summary["interrupted"], 2, "{summary:#}");
        assert_eq!(summary["failed"], 0, "{summary:#}");
        for row in summary["targets"].as_array().unwrap() {
            assert_eq!(row["verdict"], "interrupted", "{row:#}");
            assert_eq!(row["stage"], "writing", "{row:#}");
        }
        let report = run_report(&data, 1);
        assert_eq!(report["run"]["interrupted"], 2, "{report:#}");
        assert_eq!(report["run"]["running"], 0, "{report:#}");
        assert_eq!(report["run"]["stop_reason"], "shutdown", "{report:#}");
        assert!(report["run"]["stopped_at"].is_string(), "{report:#}");
        for target in ["sim:a", "sim:b"] {
            assert_eq!(attempt(&report, target)["verdict"], "interrupted");
        }
        assert_no_sim_dirs(&data);
    }
}

#[test]
fn a_second_signal_abandons_a_stick_stuck_in_the_kernel_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 3 << 20);
    let data = dir.path().join("data");
    let mut child = start(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            // Stuck in the middle of its first chunk: it reaches no safe point.
            "sim:stuck:hang_write_after=1MiB",
            "--stall-timeout",
            "600",
        ],
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l == "sim:stuck: writing");
    signal(&child, Signal::TERM);
    read_until(&mut lines, &mut seen, |l| {
        l.contains("stopping every target")
    });
    let asked = Instant::now();
    signal(&child, Signal::INT);
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let out = finish(child);
    // Not the 10 s grace, and not the 600 s stall timeout.
    assert!(asked.elapsed() < Duration::from_secs(8), "{seen}");
    // The first signal decides the status.
    assert_eq!(code(out.status), Some(143), "{seen}");
    let report = run_report(&data, 1);
    assert_eq!(attempt(&report, "sim:stuck")["verdict"], "interrupted");
    assert_eq!(report["run"]["stop_reason"], "shutdown", "{report:#}");
    assert_no_sim_dirs(&data);
}

/// A stick abandoned by a second signal in the middle of its write pass is
/// recorded with what its progress said was written, as a lower bound (its
/// thread may write on until it reaches a safe point), and its capacity:
/// the summary and the report agree. Before, it was recorded as 0 bytes
/// written, "exact", with a capacity of 0 in the summary, while megabytes of
/// the image were on the stick.
/// A flash of a new 16 MiB image to `sim:slow` (2 MB/s, 64 MiB) with
/// `--json` or not, 2.5 s into its write pass: a few megabytes written,
/// each reported as it is acknowledged. Answers the child, its stderr's
/// lines and what was read of them.
fn slow_flash_writing(
    data: &Path,
    image: &Path,
    json: bool,
) -> (Child, std::io::Lines<BufReader<ChildStderr>>, String) {
    let mut args = vec![
        "flash",
        image.to_str().unwrap(),
        "sim:slow:write=2MB,capacity=64MiB",
    ];
    if json {
        args.push("--json");
    }
    let mut child = start(data, &args);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l == "sim:slow: writing");
    std::thread::sleep(Duration::from_millis(2500));
    (child, lines, seen)
}

#[test]
fn a_stick_abandoned_mid_write_is_recorded_with_at_least_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 16 << 20);
    let data = dir.path().join("data");
    let (child, mut lines, mut seen) = slow_flash_writing(&data, &image, true);
    signal(&child, Signal::TERM);
    read_until(&mut lines, &mut seen, |l| {
        l.contains("stopping every target")
    });
    signal(&child, Signal::INT);
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let out = finish(child);
    assert_eq!(code(out.status), Some(143), "{seen}");
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let row = &summary["targets"][0];
    assert_eq!(row["verdict"], "interrupted", "{row:#}");
    assert_eq!(row["stage"], "writing", "{row:#}");
    assert_eq!(row["capacity"], 64 << 20, "{row:#}");
    assert_eq!(row["bytes_written_bound"], "lower_bound", "{row:#}");
    let written = row["bytes_written"].as_u64().unwrap();
    assert!(written >= 1 << 20, "{row:#}");
    // Its write pass ran from "writing" until the stop (2.5 s and more):
    // the time it took is recorded, not 0 with megabytes written.
    let write_secs = row["write_secs"].as_f64().unwrap();
    assert!(write_secs >= 2.0, "{row:#}");
    let report = run_report(&data, 1);
    // The file was new to the cache, its import following the slow stick:
    // stopped before it ended, the image was never known, and the summary
    // says so as the records do. Before, it printed the run's provisional
    // digest, a digest of no image, different on every run.
    let real = flashrack_core::Sha256Digest::of(&std::fs::read(&image).unwrap()).to_hex();
    assert_eq!(
        summary["image_sha256"], report["run"]["image_sha256"],
        "{report:#}"
    );
    assert!(
        summary["image_sha256"].is_null() || summary["image_sha256"] == real.as_str(),
        "{summary:#}"
    );
    let recorded = attempt(&report, "sim:slow");
    assert_eq!(recorded["verdict"], "interrupted", "{recorded:#}");
    assert_eq!(recorded["bytes_written"], written, "{recorded:#}");
    let recorded_secs = recorded["write_secs"].as_f64().unwrap();
    assert!(
        (recorded_secs - write_secs).abs() < 0.01,
        "{recorded:#} {row:#}"
    );
    assert_eq!(
        recorded["bytes_written_bound"], "lower_bound",
        "{recorded:#}"
    );
    assert_no_sim_dirs(&data);
}

#[test]
fn a_flash_killed_outright_leaves_the_bytes_it_had_written_in_the_records() {
    // SIGKILL: no handler runs, nothing is settled. The records hold what
    // the flash's progress last wrote there (every second while it runs),
    // and the next command finds the attempt interrupted with at least
    // that. Before, a killed one-shot flash left 0 bytes written on a stick
    // it had half overwritten.
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 16 << 20);
    let data = dir.path().join("data");
    // About 5 MB at 2 MB/s, the progress written at least twice meanwhile.
    let (child, _lines, seen) = slow_flash_writing(&data, &image, false);
    signal(&child, Signal::KILL);
    let out = finish(child);
    assert_eq!(out.status.signal(), Some(9), "{seen}");
    let report = run_report(&data, 1);
    let recorded = attempt(&report, "sim:slow");
    assert_eq!(recorded["verdict"], "interrupted", "{recorded:#}");
    assert!(
        recorded["bytes_written"].as_u64().unwrap() >= 1 << 20,
        "{recorded:#}"
    );
    assert_eq!(
        recorded["bytes_written_bound"], "lower_bound",
        "{recorded:#}"
    );
}

#[test]
fn a_sim_stick_claiming_more_than_a_file_can_hold_is_refused_at_once_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(dir.path(), 1 << 20);
    let data = dir.path().join("data");
    let out = finish(start(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            "sim:x:capacity=9000000TiB",
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out.status), Some(2), "{stderr}");
    assert!(stderr.contains("at most 8 EiB"), "{stderr}");
}

/// No flash's simulated sticks are left in `data` (the demo's rack,
/// `sim-rack`, is the demo's own and stays).
fn assert_no_sim_dirs(data: &Path) {
    let left: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sim-") && name != "sim-rack")
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
