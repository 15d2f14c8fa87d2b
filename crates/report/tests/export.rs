//! The exports against golden files: the report data of `tests/data/` (what the
//! store returns for its golden dataset: `flashrack-store`'s `tests/report.rs`
//! records it and checks that it reads back as these files) is exported and
//! compared byte for byte with the files in `tests/golden/`.
//! `UPDATE_GOLDEN=1 cargo test -p flashrack-report --test export` rewrites them;
//! review the diff before committing it.
//!
//! The dataset: one run of seven attempts covering a pass, a verify mismatch, a
//! removal (its bytes a lower bound), an operator interruption followed by a pass
//! in another port, one still running (with the bytes a heartbeat recorded) and
//! one refused by the guard at the moment of opening; two refusals before any
//! attempt, one under the run and one while no run was armed; devices with
//! awkward strings (a formula, quotes, commas, markup, non-ASCII) and one without
//! serial, vendor or model.
//!
//! The printable HTML is also printed to PDF by headless Chromium, which must be
//! installed (`apt-get install chromium`): the test fails without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashrack_report::{DeviceReport, RunReport};

/// When the exports say they were generated: 2025-03-01T12:00:00Z.
const GENERATED_AT: i64 = 1_740_830_400_000;

fn path(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir)
        .join(name)
}

fn data<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = path("data", name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The run's report data.
fn run() -> RunReport {
    data("run.json")
}

/// The device's report data (the Verbatim stick of the run, and a refusal of it
/// while no run was armed).
fn device() -> DeviceReport {
    data("device.json")
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = path("golden", name);
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

#[test]
fn run_exports_match_the_golden_files() {
    let run = run();
    check_golden("run.csv", &flashrack_report::csv(&run.rows));
    check_golden("run.json", &flashrack_report::run_json(&run));
    check_golden("run.html", &flashrack_report::run_html(&run, GENERATED_AT));
}

#[test]
fn device_exports_match_the_golden_files() {
    let device = device();
    check_golden("device.csv", &flashrack_report::csv(&device.rows));
    check_golden("device.json", &flashrack_report::device_json(&device));
    check_golden(
        "device.html",
        &flashrack_report::device_html(&device, GENERATED_AT),
    );
}

#[test]
fn the_json_export_is_versioned_and_parses_back() {
    let run = run();
    let value: serde_json::Value = serde_json::from_str(&flashrack_report::run_json(&run)).unwrap();
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
    let mut fields = flashrack_report::FIELDS.to_vec();
    fields.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, fields);
}

#[test]
fn the_csv_export_has_a_line_per_attempt_and_defuses_formulas() {
    let run = run();
    let csv = flashrack_report::csv(&run.rows);
    assert_eq!(
        csv.lines().next().unwrap(),
        flashrack_report::FIELDS.join(",")
    );
    assert!(csv.contains(",'=cmd|' /C calc'!A0,"), "{csv}");
    assert!(
        csv.contains("\"Kingston, Inc.\",\"DataTraveler \"\"Exodia\"\"\""),
        "{csv}"
    );
    // No line starts a field with a bare formula character.
    assert!(!csv.contains(",="), "{csv}");
}

#[test]
fn the_html_report_is_self_contained_escaped_and_made_for_print() {
    let run = run();
    let html = flashrack_report::run_html(&run, GENERATED_AT);
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
        html.contains("≥ 100 MB"),
        "a pulled stick's bytes are a lower bound"
    );
}

/// Prints the HTML report to PDF with headless Chromium. Chromium must be installed:
/// a station prints its reports, and this is where printing is tested.
#[test]
fn the_html_report_prints_to_pdf_in_headless_chromium() {
    let run = run();
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

    // Enough records for several printed pages.
    let mut run = run;
    let rows = run.rows.clone();
    for _ in 0..12 {
        run.rows.extend(rows.iter().cloned());
    }
    let dir = tempfile::tempdir().unwrap();
    let html_path = dir.path().join("report.html");
    let pdf_path = dir.path().join("report.pdf");
    let profile = dir.path().join("chromium-profile");
    std::fs::write(&html_path, flashrack_report::run_html(&run, GENERATED_AT)).unwrap();
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

    // Every printed page has the running header and "page N of M" (CSS
    // paged media: @page margin boxes), the second one included.
    let text = |page: usize| {
        let out = Command::new("pdftotext")
            .args(["-layout", "-f", &page.to_string(), "-l", &page.to_string()])
            .arg(&pdf_path)
            .arg("-")
            .output()
            .expect("pdftotext is not installed (apt-get install poppler-utils)");
        assert!(out.status.success(), "pdftotext failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = text(1);
    let pages: usize = first
        .split("page 1 of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"page 1 of M\" on page 1:\n{first}"));
    assert!(pages >= 2, "{pages} page(s): the test needs at least two");
    for page in [2, pages] {
        let text = text(page);
        assert!(
            text.contains("flashrack run 1: debian-12.5-amd64.img"),
            "page {page} lacks the header:\n{text}"
        );
        assert!(
            text.contains("station rack-1"),
            "page {page} lacks the station:\n{text}"
        );
        assert!(
            text.contains(&format!("page {page} of {pages}")),
            "page {page} lacks its number:\n{text}"
        );
    }
    // The signature block ends the last page.
    let last = text(pages);
    assert!(
        last.contains("Approved by (QA)") && last.contains("Signature"),
        "{last}"
    );
}

#[test]
fn the_printed_run_report_lists_records_by_port_with_yield_and_failure_reasons() {
    let mut run = run();
    run.rows.reverse();
    let html = flashrack_report::run_html(&run, GENERATED_AT);
    let ports: Vec<&str> = html
        .split("<tr class=")
        .skip(1)
        .filter_map(|row| row.split("<td>").nth(1))
        .filter_map(|cell| cell.split("</td>").next())
        .collect();
    assert_eq!(ports, ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B3"]);
    assert!(
        html.contains("<dt>Yield</dt><dd>50.0 % (2 of 4 sticks passed"),
        "{html}"
    );
    assert!(
        html.contains("<tr><td>verify_mismatch</td><td class=\"num\">1</td></tr>"),
        "{html}"
    );
    assert!(html.contains("<dt>flashrack</dt><dd>"), "{html}");
    assert!(html.contains("<th>Verify</th>"), "{html}");
    assert!(html.contains("Approved by (QA)"), "{html}");
}
