//! Retries of one-shot flashes: `flash --retries N` writes a target again
//! after a failure that may pass the next time (a write or flush error, the
//! capacity probe's, a stall while writing), up to N times, each time as an
//! attempt of its own in the records; never after a capacity lie or a
//! read-only stick. The summary (table and JSON) and the exit status give
//! each target's last verdict. A count out of range is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{flashrack, text};

const MIB: usize = 1 << 20;

/// A 4 MiB image of varied bytes.
fn image(dir: &Path) -> String {
    let image = dir.join("disk.img");
    let bytes: Vec<u8> = (0..4 * MIB).map(|i| (i * 131 % 251) as u8).collect();
    fs::write(&image, bytes).unwrap();
    image.to_str().unwrap().to_string()
}

/// `flash IMAGE ARGS…` of a 4 MiB image in a data directory of its own:
/// the temporary directory (kept as long as the data), the data directory
/// and the command's output.
fn flash(args: &[&str]) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let image = image(dir.path());
    let mut all = vec!["flash", image.as_str()];
    all.extend_from_slice(args);
    let out = flashrack(&data_dir, &all);
    (dir, data_dir, out)
}

/// Run 1's JSON report.
fn report(data_dir: &Path) -> serde_json::Value {
    let out = flashrack(data_dir, &["report", "run", "1", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The run's attempts from its JSON report, as (target, verdict, reason).
fn attempts(data_dir: &Path) -> Vec<(String, String, Option<String>)> {
    report(data_dir)["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["port_label"].as_str().unwrap().to_string(),
                a["verdict"].as_str().unwrap().to_string(),
                a["reason_code"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn row<'a>(summary: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    summary["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("no row for {target}: {summary}"))
}

#[test]
fn a_transient_write_error_passes_on_its_retry_and_the_summary_says_pass() {
    let (_dir, data_dir, out) = flash(&[
        "sim:flaky:fail_once_after=2MiB",
        "sim:ok",
        "--retries",
        "2",
        "--json",
        "--quiet",
    ]);
    // Every target's last verdict is a pass: exit 0.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["passed"], 2, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let flaky = row(&summary, "sim:flaky");
    assert_eq!(flaky["verdict"], "pass", "{summary}");
    assert_eq!(flaky["attempts"], 2, "{summary}");
    assert_eq!(row(&summary, "sim:ok")["attempts"], 1, "{summary}");
    // The retry was announced, even with --quiet.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sim:flaky: failed while writing: write error")
            && stderr.contains("writing it again (attempt 2 of 3)"),
        "{stderr}"
    );
    // The failed attempt and its retry are two attempts in the records.
    let recorded = attempts(&data_dir);
    let flaky: Vec<_> = recorded.iter().filter(|a| a.0 == "sim:flaky").collect();
    assert_eq!(flaky.len(), 2, "{recorded:?}");
    assert_eq!(
        (flaky[0].1.as_str(), flaky[0].2.as_deref()),
        ("fail", Some("write_error"))
    );
    assert_eq!(flaky[1].1, "pass", "{recorded:?}");
    assert_eq!(recorded.iter().filter(|a| a.0 == "sim:ok").count(), 1);
}

#[test]
fn only_failures_that_may_pass_are_retried_and_the_exit_status_is_the_last_verdicts() {
    let (_dir, data_dir, out) = flash(&[
        // Fails every write past 1 MiB, however often it is written.
        "sim:broken:fail_after=1MiB",
        // Claims 64 MiB, keeps 8 MiB: found by the probe, never retried.
        "sim:fake:capacity=64MiB,vanish=8MiB",
        "sim:ro:read_only",
        "sim:ok",
        "--retries",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The table may wrap a long reason: compared with its spaces joined.
    let table = text(&out.stdout);
    let words = table.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("(after 3 attempts)") && words.contains("1 passed, 3 failed"),
        "{table}"
    );
    let recorded = attempts(&data_dir);
    let of = |target: &str| -> Vec<(String, Option<String>)> {
        recorded
            .iter()
            .filter(|a| a.0 == target)
            .map(|a| (a.1.clone(), a.2.clone()))
            .collect()
    };
    // The first attempt and two retries; the retries fail at the probe's
    // first marker (the stick fails every write once 1 MiB went in).
    let broken = of("sim:broken");
    assert_eq!(broken.len(), 3, "{recorded:?}");
    assert_eq!(broken[0].1.as_deref(), Some("write_error"), "{broken:?}");
    for (verdict, reason) in &broken[1..] {
        assert_eq!(verdict, "fail");
        assert_eq!(reason.as_deref(), Some("probe_error"), "{broken:?}");
    }
    assert_eq!(
        of("sim:fake"),
        [("fail".to_string(), Some("capacity_lie".to_string()))]
    );
    assert_eq!(
        of("sim:ro"),
        [("fail".to_string(), Some("read_only".to_string()))]
    );
    assert_eq!(of("sim:ok"), [("pass".to_string(), None)]);
    // The run's options say how many retries it allowed.
    let report = report(&data_dir);
    let options = report["run"]["options"].to_string();
    assert!(options.contains("\"retries\":2"), "{report}");
}

#[test]
fn without_retries_a_write_error_is_one_attempt() {
    let (_dir, data_dir, out) = flash(&["sim:flaky:fail_once_after=2MiB", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row(&summary, "sim:flaky")["attempts"], 1, "{summary}");
    assert_eq!(row(&summary, "sim:flaky")["reason"], "write_error");
    assert_eq!(attempts(&data_dir).len(), 1);
}

#[test]
fn a_retry_count_out_of_range_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let image = image(dir.path());
    for bad in ["11", "-1", "many"] {
        let retries = format!("--retries={bad}");
        let out = flashrack(&data_dir, &["flash", &image, "sim:a", &retries]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--retries"), "{bad}: {stderr}");
        // Refused before anything is opened, imported or recorded.
        assert!(!data_dir.exists(), "{bad}");
    }
}

#[test]
fn a_retry_of_a_stick_stuck_in_the_kernel_says_pull_it_and_the_flash_still_ends() {
    let started = std::time::Instant::now();
    // Stuck for good in a write of the write pass (past the probe's
    // markers): its thread never returns and keeps the stick open.
    let (_dir, data_dir, out) = flash(&[
        "sim:stuck:hang_write_after=1MiB",
        "sim:ok",
        "--retries",
        "2",
        "--stall-timeout",
        "2",
        "--json",
        "--quiet",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The stall timeout, then as long again for the stuck write to let go:
    // not the thread, which never returns.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["passed"], 1, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    let stuck = row(&summary, "sim:stuck");
    assert_eq!(stuck["verdict"], "fail", "{summary}");
    assert_eq!(stuck["reason"], "held_by_stuck_io", "{summary}");
    assert_eq!(stuck["stage"], "preparing", "{summary}");
    assert_eq!(stuck["bytes_written"], 0, "{summary}");
    assert!(
        stuck["detail"]
            .as_str()
            .is_some_and(|d| d.contains("stuck in the kernel") && d.contains("pull the stick")),
        "{summary}"
    );
    // Retried once, after the stall; never a third time.
    assert_eq!(stuck["attempts"], 2, "{summary}");
    assert!(
        stderr.contains("sim:stuck: failed while writing: stopped responding")
            && stderr.contains("writing it again (attempt 2 of 3)"),
        "{stderr}"
    );
    // The records say the same: the stall, then the stick held by it.
    let recorded = attempts(&data_dir);
    let stuck: Vec<_> = recorded
        .iter()
        .filter(|a| a.0 == "sim:stuck")
        .map(|a| (a.1.as_str(), a.2.as_deref()))
        .collect();
    assert_eq!(
        stuck,
        [
            ("fail", Some("stalled")),
            ("fail", Some("held_by_stuck_io"))
        ],
        "{recorded:?}"
    );
}

/// Runs `program ARGS…` on drop, ignoring how it ends: the undoing of a
/// fixture's step (a thaw, an unmount, a detach), also when the test fails.
struct Undo(&'static str, Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = std::process::Command::new(self.0).args(&self.1).status();
    }
}

#[test]
fn a_retry_waits_for_a_write_stuck_in_the_kernel_to_end_and_then_passes() {
    if !flashrack_testkit::require_root(&["losetup", "mkfs.ext4", "mount", "fsfreeze"]) {
        return;
    }
    use std::io::BufRead;
    // A loop device whose backing file lies on a file system the test
    // freezes: the loop device's writes wait in the kernel (for the thaw)
    // exactly as a stick's stuck I/O does, and its open handle keeps the
    // device busy (O_EXCL) meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let image = image(dir.path());
    let outer = flashrack_testkit::LoopDevice::new(64 << 20);
    let outer_path = outer.path().to_str().unwrap().to_string();
    flashrack_testkit::run("mkfs.ext4", &["-q", &outer_path]);
    let mount_point = dir.path().join("fs");
    fs::create_dir(&mount_point).unwrap();
    let mount_point = mount_point.to_str().unwrap().to_string();
    flashrack_testkit::run("mount", &[&outer_path, &mount_point]);
    let _unmount = Undo("umount", vec!["-l".into(), mount_point.clone()]);
    let backing = format!("{mount_point}/stick.img");
    fs::File::create(&backing)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let stick = flashrack_testkit::run(
        "losetup",
        &["--find", "--show", "--direct-io=off", &backing],
    )
    .trim()
    .to_string();
    let _detach = Undo("losetup", vec!["-d".into(), stick.clone()]);
    flashrack_testkit::run("fsfreeze", &["--freeze", &mount_point]);
    // Declared last: thawed first, whatever happens below.
    let thaw = Undo("fsfreeze", vec!["--unfreeze".into(), mount_point.clone()]);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["flash", &image, &stick, "--allow-bus", "loop"])
        // No probe: the first write stuck is the write pass's, which a
        // retry may write again.
        .args(["--no-probe", "--retries", "1", "--stall-timeout", "5"])
        .args(["--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut thaw = Some(thaw);
    for line in stderr.lines() {
        let line = line.unwrap();
        // The stall given, the retry about to start: the stuck write comes
        // back from the kernel now.
        if line.contains("writing it again (attempt 2 of 2)") {
            drop(thaw.take());
        }
        seen.push(line);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = seen.join("\n");
    assert!(thaw.is_none(), "no retry announced: {stderr}");
    assert!(
        stderr.contains("failed while writing: stopped responding"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = row(&summary, &stick);
    assert_eq!(row["verdict"], "pass", "{summary}");
    assert_eq!(row["attempts"], 2, "{summary}");
    let recorded: Vec<_> = attempts(&data_dir)
        .into_iter()
        .map(|a| (a.1, a.2))
        .collect();
    assert_eq!(
        recorded,
        [
            ("fail".to_string(), Some("stalled".to_string())),
            ("pass".to_string(), None)
        ]
    );
    let written = fs::read(&backing).unwrap();
    assert_eq!(&written[..4 * MIB], &fs::read(&image).unwrap()[..]);
}
