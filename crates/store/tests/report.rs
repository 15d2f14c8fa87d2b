//! Report export against golden files: a fixed dataset is recorded through the API
//! with a clock the test sets, exported, and compared byte for byte with the files in
//! `tests/golden/`. `UPDATE_GOLDEN=1 cargo test -p flashrack-store --test report`
//! rewrites them; review the diff before committing it.
//!
//! The printable HTML is also printed to PDF by headless Chromium, which must be
//! installed (`apt-get install chromium`): the test fails without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fail, image, pass_figures, TestStore, T0};
use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, GuardRefusal, RefusalCode, Sha256Digest, Stage,
    Verdict,
};
use flashrack_store::{
    report, AttemptId, Counts, DeviceId, DeviceReport, DeviceRow, RefusalRow, RunId, RunReport,
    RunningFigures,
};
use serde_json::json;

/// When the exports say they were generated: 2025-03-01T12:00:00Z.
const GENERATED_AT: i64 = T0 + 9_000_000;

/// Records the golden dataset: one run of seven attempts covering a pass, a verify
/// mismatch, a removal (its bytes a lower bound), an operator interruption followed
/// by a pass in another port, one still running (with the bytes a heartbeat
/// recorded) and one refused by the guard at the moment of opening; two refusals
/// before any attempt, one under the run and one while no run was armed; devices
/// with awkward strings (a formula, quotes, commas, markup, non-ASCII) and one
/// without serial, vendor or model.
async fn dataset() -> (TestStore, RunReport, DeviceReport) {
    let t = TestStore::new("rack-1").await;
    let s = &t.store;
    let img = image();
    s.record_image(&img).await.unwrap();
    let run = s
        .start_run(
            img.sha256,
            &img.name,
            &json!({ "verify": "hash", "eject_on_pass": true, "target_count": 4 }),
        )
        .await
        .unwrap();
    let devices = [
        DeviceRow {
            serial: Some("4C530001230101117371".into()),
            vendor: Some("SanDisk".into()),
            model: Some("Cruzer Blade".into()),
            capacity: ByteSize(16_008_609_792),
        },
        DeviceRow {
            serial: Some("=cmd|' /C calc'!A0".into()),
            vendor: Some("Kingston, Inc.".into()),
            model: Some("DataTraveler \"Exodia\"".into()),
            capacity: ByteSize(31_042_043_904),
        },
        DeviceRow {
            serial: None,
            vendor: Some("Generic".into()),
            model: Some("<script>alert(1)</script>".into()),
            capacity: ByteSize(8_000_000_000),
        },
        DeviceRow {
            serial: Some("AA00000000001234".into()),
            vendor: Some("Verbatim".into()),
            model: Some("Store 'n' Go".into()),
            capacity: ByteSize(32_000_000_000),
        },
        DeviceRow {
            serial: Some("Ünïcødé-5".into()),
            vendor: None,
            model: None,
            capacity: ByteSize(4_000_000_000),
        },
    ];
    let mut ids = Vec::new();
    for d in &devices {
        t.clock.advance(1_000);
        ids.push(s.upsert_device(d).await.unwrap());
    }
    let a1 = start(&t, run, ids[0], "A1").await;
    let a2 = start(&t, run, ids[1], "A2").await;
    let a3 = start(&t, run, ids[2], "A3").await;
    let a4 = start(&t, run, ids[3], "A4").await;
    for a in [a1, a2, a3, a4] {
        s.attempt_stage(a, Stage::Writing).await.unwrap();
    }
    t.clock.advance(10_000);
    s.finish_attempt(
        a3,
        &fail(
            FailReason::Removed {
                during: Stage::Writing,
            },
            Stage::Writing,
        ),
        &AttemptFigures {
            capacity: ByteSize(8_000_000_000),
            bytes_written: 100_000_000,
            write_secs: 10.0,
            bytes_written_bound: Bound::LowerBound,
            ..AttemptFigures::default()
        },
    )
    .await
    .unwrap();
    t.clock.advance(5_000);
    s.finish_attempt(
        a4,
        &fail(FailReason::Interrupted, Stage::Writing),
        &AttemptFigures {
            capacity: ByteSize(32_000_000_000),
            bytes_written: 150_994_944,
            write_secs: 15.333_333,
            ..AttemptFigures::default()
        },
    )
    .await
    .unwrap();
    t.clock.advance(25_000);
    for a in [a1, a2] {
        s.attempt_stage(a, Stage::Flushing).await.unwrap();
        s.attempt_stage(a, Stage::Verifying).await.unwrap();
    }
    t.clock.advance(12_500);
    s.finish_attempt(a1, &Verdict::Pass, &pass_figures())
        .await
        .unwrap();
    t.clock.advance(1_200);
    s.finish_attempt(
        a2,
        &fail(
            FailReason::VerifyMismatch { offset: 4_194_304 },
            Stage::Verifying,
        ),
        &AttemptFigures {
            capacity: ByteSize(31_042_043_904),
            bytes_written: 629_145_600,
            write_secs: 80.0,
            bytes_verified: 4_194_304,
            verify_secs: 1.2,
            read_back_sha256: Some(Sha256Digest::of(b"what the fake stick returned")),
            verify_method: Some(flashrack_core::VerifyMethod::Hash),
            bytes_written_bound: Bound::Exact,
        },
    )
    .await
    .unwrap();
    let a5 = start(&t, run, ids[3], "B1").await;
    s.attempt_stage(a5, Stage::Writing).await.unwrap();
    t.clock.advance(52_750);
    s.finish_attempt(
        a5,
        &Verdict::Pass,
        &AttemptFigures {
            capacity: ByteSize(32_000_000_000),
            ..pass_figures()
        },
    )
    .await
    .unwrap();
    let a6 = start(&t, run, ids[4], "B2").await;
    s.attempt_stage(a6, Stage::Writing).await.unwrap();
    t.clock.advance(3_000);
    s.record_progress(&[RunningFigures {
        attempt: a6,
        bytes_written: 16_777_216,
        bytes_verified: 0,
    }])
    .await
    .unwrap();
    // Refused when inserted under the run: nothing written, no attempt.
    t.clock.advance(1_000);
    s.record_refusal(&RefusalRow {
        run_id: Some(run),
        device_id: ids[3],
        port_label: "B3".into(),
        port_path: "pci-0000:00:14.0-usb-0:B3:1.0".into(),
        refusal: GuardRefusal {
            code: RefusalCode::Mounted,
            message: "sdd1 is mounted at /media/operator/VERBATIM".into(),
        },
    })
    .await
    .unwrap();
    // Refused at the moment of opening, after its attempt was recorded.
    let a7 = start(&t, run, ids[3], "B3").await;
    t.clock.advance(500);
    s.finish_attempt(
        a7,
        &fail(
            FailReason::Refused {
                code: Some(RefusalCode::Busy),
                detail: "the device is busy: Device or resource busy (os error 16)".into(),
            },
            Stage::Preparing,
        ),
        &AttemptFigures {
            capacity: ByteSize(32_000_000_000),
            ..AttemptFigures::default()
        },
    )
    .await
    .unwrap();
    // Refused in an unmapped port while no run was armed: only in the device's
    // report.
    t.clock.advance(60_000);
    s.record_refusal(&RefusalRow {
        run_id: None,
        device_id: ids[3],
        port_label: "?sdd".into(),
        port_path: "pci-0000:00:14.0-usb-0:9:1.0".into(),
        refusal: GuardRefusal {
            code: RefusalCode::PortNotMapped,
            message: "port pci-0000:00:14.0-usb-0:9:1.0 is not mapped in the configuration".into(),
        },
    })
    .await
    .unwrap();

    let run_report = s.run_report(run).await.unwrap().unwrap();
    let device_report = s.device_report("AA00000000001234").await.unwrap().unwrap();
    (t, run_report, device_report)
}

async fn start(t: &TestStore, run: RunId, device: DeviceId, port: &str) -> AttemptId {
    t.clock.advance(2_000);
    t.store
        .start_attempt(
            run,
            device,
            port,
            &format!("pci-0000:00:14.0-usb-0:{port}:1.0"),
        )
        .await
        .unwrap()
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} from line {}:\nexpected: {:?}\nactual:   {:?}\n\
             (UPDATE_GOLDEN=1 rewrites the golden file)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[tokio::test]
async fn run_exports_match_the_golden_files() {
    let (_t, run, _) = dataset().await;
    assert_eq!(run.rows.len(), 8);
    assert_eq!(
        run.run.counts,
        Counts {
            attempts: 7,
            passed: 2,
            failed: 2,
            refused: 2,
            interrupted: 1,
            running: 1,
        }
    );
    check_golden("run.csv", &report::csv(&run.rows));
    check_golden("run.json", &report::run_json(&run));
    check_golden("run.html", &report::run_html(&run, GENERATED_AT));
}

#[tokio::test]
async fn device_exports_match_the_golden_files() {
    let (_t, _, device) = dataset().await;
    // Its interruption, its pass, two refusals before an attempt (one without
    // a run) and one at the moment of opening.
    assert_eq!(device.rows.len(), 5);
    assert_eq!(
        device.counts,
        Counts {
            attempts: 3,
            passed: 1,
            failed: 0,
            refused: 3,
            interrupted: 1,
            running: 0,
        }
    );
    check_golden("device.csv", &report::csv(&device.rows));
    check_golden("device.json", &report::device_json(&device));
    check_golden("device.html", &report::device_html(&device, GENERATED_AT));
}

#[tokio::test]
async fn the_json_export_is_versioned_and_parses_back() {
    let (_t, run, _) = dataset().await;
    let value: serde_json::Value = serde_json::from_str(&report::run_json(&run)).unwrap();
    assert_eq!(value["format"], "flashrack-report/2");
    assert_eq!(value["kind"], "run");
    assert_eq!(value["run"]["attempts"], 7);
    assert_eq!(value["run"]["refused"], 2);
    assert_eq!(value["run"]["failed"], 2);
    let rows = value["attempts"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut fields = report::FIELDS.to_vec();
    fields.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, fields);
}

#[tokio::test]
async fn the_csv_export_has_a_line_per_attempt_and_defuses_formulas() {
    let (_t, run, _) = dataset().await;
    let csv = report::csv(&run.rows);
    assert_eq!(csv.lines().next().unwrap(), report::FIELDS.join(","));
    assert!(csv.contains(",'=cmd|' /C calc'!A0,"), "{csv}");
    assert!(
        csv.contains("\"Kingston, Inc.\",\"DataTraveler \"\"Exodia\"\"\""),
        "{csv}"
    );
    // No line starts a field with a bare formula character.
    assert!(!csv.contains(",="), "{csv}");
}

#[tokio::test]
async fn the_html_report_is_self_contained_escaped_and_made_for_print() {
    let (_t, run, _) = dataset().await;
    let html = report::run_html(&run, GENERATED_AT);
    for external in ["http://", "https://", "src=", "<link", "<script", "url("] {
        assert!(!html.contains(external), "found {external:?}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("@page"));
    assert!(html.contains("break-inside: avoid"));
    assert!(html.contains("display: table-header-group"));
    assert_eq!(html.matches("<tr class=").count(), 8);
    assert_eq!(html.matches("<tr class=\"refused\">").count(), 2);
    assert!(html.contains("<b>2</b> refused"), "{html}");
    assert!(
        html.contains("≥ 95.4 MiB"),
        "a pulled stick's bytes are a lower bound"
    );
}

/// Prints the HTML report to PDF with headless Chromium. Chromium must be installed:
/// a station prints its reports, and this is where printing is tested.
#[tokio::test]
async fn the_html_report_prints_to_pdf_in_headless_chromium() {
    let (t, run, _) = dataset().await;
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromium is not installed (apt-get install chromium): the print test needs it");

    let html_path = t.dir.path().join("report.html");
    let pdf_path = t.dir.path().join("report.pdf");
    let profile = t.dir.path().join("chromium-profile");
    std::fs::write(&html_path, report::run_html(&run, GENERATED_AT)).unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", pdf_path.display()))
        .arg(format!("file://{}", html_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("chromium did not finish printing within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "chromium failed: {status}\n{stderr}");
    let pdf = std::fs::read(&pdf_path)
        .unwrap_or_else(|err| panic!("no pdf at {}: {err}\n{stderr}", pdf_path.display()));
    assert!(pdf.starts_with(b"%PDF-"), "not a pdf");
    assert!(
        pdf.len() > 10_000,
        "suspiciously small pdf: {} bytes",
        pdf.len()
    );
    let tail = &pdf[pdf.len().saturating_sub(1024)..];
    assert!(
        tail.windows(5).any(|w| w == b"%%EOF"),
        "the pdf is not complete"
    );
}
