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
//! installed (`apt-get install chromium`): the test fails without it. The label
//! sheet is rendered by Chromium too and its QR codes read back by `zbarimg`
//! (`apt-get install zbar-tools`).

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
    check_golden("run.csv", &flashrack_report::csv(&run.rows, &[]));
    check_golden("run.json", &flashrack_report::run_json(&run));
    check_golden("run.html", &flashrack_report::run_html(&run, GENERATED_AT));
    check_golden(
        "run-labels.html",
        &flashrack_report::labels_html(&run, GENERATED_AT),
    );
}

#[test]
fn device_exports_match_the_golden_files() {
    let device = device();
    check_golden(
        "device.csv",
        &flashrack_report::csv(&device.rows, &device.image_origins),
    );
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
    assert_eq!(value["format"], "flashrack-report/12");
    assert_eq!(value["flashrack_version"], env!("CARGO_PKG_VERSION"));
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
    let csv = flashrack_report::csv(&run.rows, &[]);
    let header: Vec<&str> = flashrack_report::FIELDS
        .iter()
        .chain(flashrack_report::CSV_EXTRA_FIELDS.iter())
        .copied()
        .collect();
    assert_eq!(csv.lines().next().unwrap(), header.join(","));
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

/// The installed Chromium. It must be installed: a station prints its
/// reports, and this is where printing is tested.
fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromium is not installed (apt-get install chromium): the print test needs it")
}

/// Runs headless Chromium on the page `html` (written to `dir`) with `args`
/// (where to print or shoot it), waiting up to 120 s; returns its stderr.
fn run_chromium(dir: &Path, html: &str, args: &[String]) -> String {
    let html_path = dir.join("page.html");
    let profile = dir.join("chromium-profile");
    std::fs::write(&html_path, html).unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
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
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "chromium failed: {status}\n{stderr}");
    stderr
}

/// `html` printed to PDF by headless Chromium, in `dir`.
fn print_to_pdf(dir: &Path, html: &str) -> PathBuf {
    let pdf_path = dir.join("report.pdf");
    let stderr = run_chromium(
        dir,
        html,
        &[format!("--print-to-pdf={}", pdf_path.display())],
    );
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
    pdf_path
}

/// The text of one page of a PDF (`pdftotext -layout`).
fn pdf_page(pdf: &Path, page: usize) -> String {
    let out = Command::new("pdftotext")
        .args(["-layout", "-f", &page.to_string(), "-l", &page.to_string()])
        .arg(pdf)
        .arg("-")
        .output()
        .expect("pdftotext is not installed (apt-get install poppler-utils)");
    assert!(out.status.success(), "pdftotext failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Checks that every page of a printed report has its running header
/// (`header` and `top_right`) and "page N of M", page 2 and the last one
/// read back, and that the last page ends with the signature block; returns
/// the number of pages.
fn check_printed_pages(pdf: &Path, header: &str, top_right: &str) -> usize {
    let first = pdf_page(pdf, 1);
    let pages: usize = first
        .split("page 1 of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"page 1 of M\" on page 1:\n{first}"));
    assert!(pages >= 2, "{pages} page(s): the test needs at least two");
    for page in [2, pages] {
        let text = pdf_page(pdf, page);
        assert!(
            text.contains(header),
            "page {page} lacks the header {header:?}:\n{text}"
        );
        assert!(
            text.contains(top_right),
            "page {page} lacks {top_right:?}:\n{text}"
        );
        assert!(
            text.contains(&format!("page {page} of {pages}")),
            "page {page} lacks its number:\n{text}"
        );
    }
    // The signature block ends the last page.
    let last = pdf_page(pdf, pages);
    assert!(
        last.contains("Approved by (QA)") && last.contains("Signature"),
        "{last}"
    );
    pages
}

/// Prints the HTML report to PDF with headless Chromium: every page has the
/// running header and its number.
#[test]
fn the_html_report_prints_to_pdf_in_headless_chromium() {
    // Enough records for several printed pages.
    let mut run = run();
    let rows = run.rows.clone();
    for _ in 0..12 {
        run.rows.extend(rows.iter().cloned());
    }
    let dir = tempfile::tempdir().unwrap();
    let pdf = print_to_pdf(dir.path(), &flashrack_report::run_html(&run, GENERATED_AT));
    check_printed_pages(
        &pdf,
        "flashrack run 1: debian-12.5-amd64.img",
        "station rack-1",
    );
}

/// A device's history prints as the run's report does: header, "page N of
/// M" on every page, and the signature block at the end.
#[test]
fn the_device_report_prints_with_page_numbers_headers_and_signatures() {
    let mut device = device();
    let rows = device.rows.clone();
    for _ in 0..20 {
        device.rows.extend(rows.iter().cloned());
    }
    let dir = tempfile::tempdir().unwrap();
    let pdf = print_to_pdf(
        dir.path(),
        &flashrack_report::device_html(&device, GENERATED_AT),
    );
    check_printed_pages(
        &pdf,
        "flashrack device AA00000000001234",
        &format!("flashrack {}", env!("CARGO_PKG_VERSION")),
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
    assert_eq!(ports, ["A1", "A2", "A3", "A4", "A10", "B2", "B3", "B3"]);
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

/// The ports of a run's CSV lines, in order.
fn csv_ports(csv: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "port_label")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect()
}

#[test]
fn the_csv_and_json_list_a_runs_records_by_port_as_the_printed_report() {
    let mut run = run();
    // Made in the opposite order: the exports still list them by port.
    run.rows.reverse();
    let expected = ["A1", "A2", "A3", "A4", "A10", "B2", "B3", "B3"];
    assert_eq!(csv_ports(&flashrack_report::run_csv(&run)), expected);
    let json: serde_json::Value = serde_json::from_str(&flashrack_report::run_json(&run)).unwrap();
    let ports: Vec<&str> = json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["port_label"].as_str().unwrap())
        .collect();
    assert_eq!(ports, expected);
    // Each port's records stay in the order given (the order they were made):
    // B3's refusal before any attempt, then its attempt refused at opening.
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::run_json(&self::run())).unwrap();
    let b3: Vec<&serde_json::Value> = json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["port_label"] == "B3")
        .collect();
    assert!(b3[0]["refusal_id"].is_i64() && b3[1]["attempt_id"].is_i64());
}

#[test]
fn the_json_run_carries_who_what_from_where_and_how_it_went() {
    let run = run();
    let json: serde_json::Value = serde_json::from_str(&flashrack_report::run_json(&run)).unwrap();
    let r = &json["run"];
    assert_eq!(r["station_id"], "rack-1");
    assert_eq!(r["operator"], "Ada Lovelace");
    assert_eq!(r["lot"], "LOT-2025-03-A");
    assert_eq!(r["image_size_bytes"], 629_145_600);
    assert_eq!(r["image_source"]["file_name"], "debian-12.5-amd64.img.xz");
    assert_eq!(r["image_source"]["size_bytes"], 412_316_860);
    assert_eq!(r["image_source"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        r["options_words"],
        "verify by hashing every byte read back (sha256); eject each stick after it passes; \
         stop after 4 passes"
    );
    assert_eq!(r["yield_percent"], 50.0);
    assert_eq!(
        r["failures_by_reason"],
        serde_json::json!([
            { "reason_code": "removed", "count": 1 },
            { "reason_code": "verify_mismatch", "count": 1 },
        ])
    );
    assert!(r["stop_reason"].is_null() && r["stop_reason_words"].is_null());

    // Stopped: the reason as a code and in words.
    let mut stopped = run.clone();
    stopped.run.run.stopped_at = Some(stopped.run.run.started_at + 600_000);
    stopped.run.run.stop_reason = Some(flashrack_core::StopReason::Completed);
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::run_json(&stopped)).unwrap();
    assert_eq!(json["run"]["stop_reason"], "completed");
    assert_eq!(
        json["run"]["stop_reason_words"],
        flashrack_core::StopReason::Completed.describe()
    );
}

fn downloaded_from(url: &str) -> flashrack_core::Provenance {
    flashrack_core::Provenance {
        url: url.into(),
        etag: Some("\"e1\"".into()),
        last_modified: None,
        digest_source: flashrack_core::DigestSource::Unchecked,
        captured: None,
        built: None,
        bmap_lookup_failed: None,
    }
}

#[test]
fn every_csv_line_says_who_armed_its_run_and_where_the_image_came_from() {
    let mut run = run();
    run.image_provenance = Some(downloaded_from("https://example.invalid/debian.img.xz"));
    let csv = flashrack_report::run_csv(&run);
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 8);
    for record in &records {
        assert_eq!(&record[at("operator")], "Ada Lovelace");
        assert_eq!(&record[at("lot")], "LOT-2025-03-A");
        assert_eq!(&record[at("image_size_bytes")], "629145600");
        assert_eq!(&record[at("image_source_name")], "debian-12.5-amd64.img.xz");
        assert!(record[at("run_options")].starts_with("verify by hashing"));
        assert_eq!(&record[at("report_format")], "flashrack-report/12");
        assert_eq!(&record[at("flashrack_version")], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            &record[at("image_origin")],
            "Downloaded from: https://example.invalid/debian.img.xz (ETag \"e1\"); digest not checked"
        );
    }
}

#[test]
fn a_devices_csv_line_names_the_origin_of_its_own_image_only() {
    let mut device = device();
    let images: Vec<flashrack_core::Sha256Digest> = device
        .rows
        .iter()
        .filter_map(|row| row.image_sha256)
        .collect();
    let first = images[0];
    device.image_origins = vec![
        flashrack_report::ImageOrigin {
            sha256: first,
            name: "debian.img.xz".into(),
            provenance: downloaded_from("https://a.invalid/debian.img.xz"),
        },
        // Another image's origin is no line's here but its own image's.
        flashrack_report::ImageOrigin {
            sha256: flashrack_core::Sha256Digest::of(b"another image"),
            name: "other.img".into(),
            provenance: downloaded_from("=HYPERLINK(\"https://evil.invalid\")"),
        },
    ];
    let csv = flashrack_report::csv(&device.rows, &device.image_origins);
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let mut named = 0;
    for record in reader.records().map(Result::unwrap) {
        let origin = &record[at("image_origin")];
        if record[at("image_sha256")] == first.to_hex() {
            assert!(
                origin.starts_with("Downloaded from: https://a.invalid/"),
                "{origin}"
            );
            named += 1;
        } else {
            assert_eq!(origin, "", "{record:?}");
        }
    }
    assert!(named > 0, "{csv}");
}

#[test]
fn the_printed_reports_name_the_image_size_and_source() {
    let html = flashrack_report::run_html(&run(), GENERATED_AT);
    assert!(
        html.contains("<dt>Image size</dt><dd>629 MB (629145600 bytes)</dd>"),
        "{html}"
    );
    assert!(
        html.contains("<dt>Imported from</dt><dd>debian-12.5-amd64.img.xz (412 MB), sha256 "),
        "{html}"
    );
    assert!(
        html.contains("<dt>Operator</dt><dd>Ada Lovelace</dd>"),
        "{html}"
    );
    assert!(
        html.contains("<dt>Lot</dt><dd>LOT-2025-03-A</dd>"),
        "{html}"
    );
    // A device's history names each record's operator and lot, and is signed.
    let html = flashrack_report::device_html(&device(), GENERATED_AT);
    assert!(html.contains("<th>Operator</th><th>Lot</th>"), "{html}");
    assert!(
        html.contains("<td>Ada Lovelace</td><td>LOT-2025-03-A</td>"),
        "{html}"
    );
    assert!(html.contains("Approved by (QA)"), "{html}");
}

/// The label sheet rendered by Chromium and read by a barcode scanner
/// (`zbarimg`, Debian's zbar-tools): every stick that passed has a label
/// whose QR code decodes to its record's reference, and no other stick has
/// one.
#[test]
fn each_passed_stick_gets_a_label_whose_qr_code_scans_to_its_record() {
    let run = run();
    let html = flashrack_report::labels_html(&run, GENERATED_AT);
    let passed: Vec<&flashrack_report::ReportRow> = run
        .rows
        .iter()
        .filter(|row| row.verdict == flashrack_report::ReportVerdict::Pass)
        .collect();
    assert_eq!(passed.len(), 2);
    let expected: Vec<String> = passed
        .iter()
        .map(|row| flashrack_report::record_reference(row).unwrap())
        .collect();
    assert_eq!(html.matches("class=\"label\"").count(), 2, "{html}");
    for (row, reference) in passed.iter().zip(&expected) {
        let serial = row.serial.as_deref().unwrap();
        assert!(html.contains(serial), "{serial} is not on the sheet");
        assert!(
            reference.starts_with(&format!(
                "flashrack:rack-1/run/1/attempt/{}?serial={serial}&image=0a2a40ff14c626aa",
                row.attempt_id.unwrap()
            )),
            "{reference}"
        );
    }
    // By port: A1 before A10.
    assert!(html.find(">PASS · A1<").unwrap() < html.find(">PASS · A10<").unwrap());
    assert!(html.contains(">0a2a40ff14c6…<"), "{html}");
    assert!(html.contains(">2025-03-01<"), "{html}");

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("labels.png");
    run_chromium(
        dir.path(),
        &html,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1000,700".to_string(),
            "--force-device-scale-factor=2".to_string(),
        ],
    );
    let out = Command::new("zbarimg")
        .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable"])
        .arg(&png)
        .output()
        .expect("zbarimg is not installed (apt-get install zbar-tools)");
    assert!(
        out.status.success(),
        "zbarimg found no code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut scanned: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    scanned.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(scanned, expected);
}

#[test]
fn a_run_without_a_pass_gets_a_sheet_that_says_so() {
    let mut run = run();
    run.rows
        .retain(|row| row.verdict != flashrack_report::ReportVerdict::Pass);
    let html = flashrack_report::labels_html(&run, GENERATED_AT);
    assert!(html.contains("No stick has passed here"), "{html}");
    assert!(!html.contains("<svg"), "{html}");
}

/// The golden run with its first attempt (A1, a pass) made a sampled pass of
/// 5 % (24 of 480 chunks, the seed a u64 beyond a double's exact integers).
fn sampled_run() -> RunReport {
    let mut value: serde_json::Value = data("run.json");
    let row = &mut value["rows"][0];
    assert_eq!(row["port_label"], "A1");
    assert_eq!(row["verdict"], "pass");
    row["figures"]["verify_method"] = "sampled".into();
    row["figures"]["read_back_sha256"] = serde_json::Value::Null;
    row["figures"]["sample"] = serde_json::json!({
        "percent": 5.0,
        "seed": 18_446_744_073_709_551_557_u64,
        "chunks_checked": 24,
        "chunks_total": 480,
    });
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_sampled_pass_says_sampled_with_its_share_in_every_format() {
    let run = sampled_run();

    let json: serde_json::Value = serde_json::from_str(&flashrack_report::run_json(&run)).unwrap();
    assert_eq!(json["format"], "flashrack-report/12");
    let a1 = &json["attempts"][0];
    assert_eq!(a1["port_label"], "A1");
    assert_eq!(a1["verdict"], "pass");
    assert_eq!(a1["verdict_words"], "sampled (5 %)");
    assert_eq!(a1["verify_method"], "sampled");
    assert_eq!(a1["sample_percent"], 5.0);
    assert_eq!(a1["sample_seed"], "18446744073709551557");
    assert_eq!(a1["sample_chunks_checked"], 24);
    assert_eq!(a1["sample_chunks_total"], 480);
    // The other pass (A10) read every byte back: a plain pass, no sample.
    let full = json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port_label"] == "A10")
        .unwrap();
    assert_eq!(full["verdict_words"], "pass");
    assert!(full["sample_percent"].is_null());
    assert!(full["sample_seed"].is_null());

    let csv = flashrack_report::run_csv(&run);
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let a1 = records
        .iter()
        .find(|r| &r[at("port_label")] == "A1")
        .unwrap();
    assert_eq!(&a1[at("verdict")], "pass");
    assert_eq!(&a1[at("verdict_words")], "sampled (5 %)");
    assert_eq!(&a1[at("verify_method")], "sampled");
    assert_eq!(&a1[at("sample_percent")], "5.0");
    assert_eq!(&a1[at("sample_seed")], "18446744073709551557");
    assert_eq!(&a1[at("sample_chunks_checked")], "24");
    assert_eq!(&a1[at("sample_chunks_total")], "480");
    let a10 = records
        .iter()
        .find(|r| &r[at("port_label")] == "A10")
        .unwrap();
    assert_eq!(&a10[at("verdict_words")], "pass");
    assert_eq!(&a10[at("sample_percent")], "");

    let html = flashrack_report::run_html(&run, GENERATED_AT);
    assert!(
        html.contains(
            "<td>sampled (5 %): 24 of 480 chunks, seed 18446744073709551557</td>\
             <td class=\"verdict\">sampled (5 %)</td>"
        ),
        "the printed report's A1 row names the sample: {html}"
    );

    let labels = flashrack_report::labels_html(&run, GENERATED_AT);
    assert!(
        labels.contains("<dd class=\"verdict\">SAMPLED (5 %) · A1</dd>"),
        "the label says sampled: {labels}"
    );
    assert!(labels.contains("<dd class=\"verdict\">PASS · A10</dd>"));
}

#[test]
fn the_printed_yield_says_how_many_passes_were_not_verified() {
    let mut run = run();
    for row in &mut run.rows {
        if row.verdict == flashrack_report::ReportVerdict::Pass {
            row.figures.verify_method = Some(flashrack_core::VerifyMethod::None);
        }
    }
    let passes = run
        .rows
        .iter()
        .filter(|r| r.verdict == flashrack_report::ReportVerdict::Pass)
        .count();
    assert!(passes > 0);
    let html = flashrack_report::run_html(&run, GENERATED_AT);
    // It read "100.0 % (6 of 6 sticks passed" for a run that read nothing back.
    assert!(
        html.contains(&format!(
            "sticks passed, {passes} of them written, not verified;"
        )),
        "{html}"
    );
}
