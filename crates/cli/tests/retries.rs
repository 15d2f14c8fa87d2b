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
