//! The report data of a golden dataset: it is recorded through the store's API
//! with a clock the test sets, read back as a run's and a device's report, and
//! compared with the report data in `flashrack-report`'s `tests/data/`, whose
//! exports that crate compares byte for byte with its golden files. So the
//! exports of what the store records are those golden files.
//! `UPDATE_GOLDEN=1 cargo test -p flashrack-store --test report` rewrites the
//! data files; review the diff before committing it (and run the report crate's
//! tests, which then tell whether the exports changed).

mod common;

use std::path::{Path, PathBuf};

use common::{fail, image, pass_figures, TestStore};
use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, GuardRefusal, RefusalCode, Sha256Digest, Stage,
    Verdict,
};
use flashrack_store::{
    AttemptId, Counts, DeviceId, DeviceReport, DeviceRow, Records, RefusalRow, RunId, RunReport,
    RunningFigures, Writes,
};
use serde_json::json;

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
    s.write(|b| Box::pin(b.record_image(&img))).await.unwrap();
    let run = s
        .write(|b| {
            Box::pin(async move {
                b.start_run(
                    img.sha256,
                    &img.name,
                    &json!({
                        "verify": "hash",
                        "eject_on_pass": true,
                        "target_count": 4,
                        "operator": "Ada Lovelace",
                        "lot": "LOT-2025-03-A"
                    }),
                )
                .await
            })
        })
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
        ids.push(s.write(|b| Box::pin(b.upsert_device(d))).await.unwrap());
    }
    // The Verbatim stick: the device report's.
    let verbatim = ids[3];
    let a1 = start(&t, run, ids[0], "A1").await;
    let a2 = start(&t, run, ids[1], "A2").await;
    let a3 = start(&t, run, ids[2], "A3").await;
    let a4 = start(&t, run, ids[3], "A4").await;
    for a in [a1, a2, a3, a4] {
        s.write(|b| Box::pin(b.attempt_stage(a, Stage::Writing)))
            .await
            .unwrap();
    }
    t.clock.advance(10_000);
    s.write(|b| {
        Box::pin(async move {
            b.finish_attempt(
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
        })
    })
    .await
    .unwrap();
    t.clock.advance(5_000);
    s.write(|b| {
        Box::pin(async move {
            b.finish_attempt(
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
        })
    })
    .await
    .unwrap();
    t.clock.advance(25_000);
    for a in [a1, a2] {
        s.write(|b| Box::pin(b.attempt_stage(a, Stage::Flushing)))
            .await
            .unwrap();
        s.write(|b| Box::pin(b.attempt_stage(a, Stage::Verifying)))
            .await
            .unwrap();
    }
    t.clock.advance(12_500);
    s.write(|b| {
        Box::pin(async move { b.finish_attempt(a1, &Verdict::Pass, &pass_figures()).await })
    })
    .await
    .unwrap();
    t.clock.advance(1_200);
    s.write(|b| {
        Box::pin(async move {
            b.finish_attempt(
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
                    // The stick's cache answered until the reset: the mismatch
                    // a reset before the read-back finds.
                    verified_after_reset: true,
                    bytes_skipped: 0,
                    sample: None,
                },
            )
            .await
        })
    })
    .await
    .unwrap();
    let a5 = start(&t, run, ids[3], "A10").await;
    s.write(|b| Box::pin(b.attempt_stage(a5, Stage::Writing)))
        .await
        .unwrap();
    t.clock.advance(52_750);
    s.write(|b| {
        Box::pin(async move {
            b.finish_attempt(
                a5,
                &Verdict::Pass,
                &AttemptFigures {
                    capacity: ByteSize(32_000_000_000),
                    verified_after_reset: true,
                    ..pass_figures()
                },
            )
            .await
        })
    })
    .await
    .unwrap();
    let a6 = start(&t, run, ids[4], "B2").await;
    s.write(|b| Box::pin(b.attempt_stage(a6, Stage::Writing)))
        .await
        .unwrap();
    t.clock.advance(3_000);
    s.write(|b| {
        Box::pin(async move {
            b.record_progress(&[RunningFigures {
                attempt: a6,
                bytes_written: 16_777_216,
                bytes_verified: 0,
            }])
            .await
        })
    })
    .await
    .unwrap();
    // Refused when inserted under the run: nothing written, no attempt.
    t.clock.advance(1_000);
    s.write(|b| {
        Box::pin(async move {
            b.record_refusal(&RefusalRow {
                run_id: Some(run),
                device_id: verbatim,
                port_label: "B3".into(),
                port_path: "pci-0000:00:14.0-usb-0:B3:1.0".into(),
                refusal: GuardRefusal {
                    code: RefusalCode::Mounted,
                    message: "sdd1 is mounted at /media/operator/VERBATIM".into(),
                },
            })
            .await
        })
    })
    .await
    .unwrap();
    // Refused at the moment of opening, after its attempt was recorded.
    let a7 = start(&t, run, ids[3], "B3").await;
    t.clock.advance(500);
    s.write(|b| {
        Box::pin(async move {
            b.finish_attempt(
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
        })
    })
    .await
    .unwrap();
    // Refused in an unmapped port while no run was armed: only in the device's
    // report.
    t.clock.advance(60_000);
    s.write(|b| {
        Box::pin(async move {
            b.record_refusal(&RefusalRow {
                run_id: None,
                device_id: verbatim,
                port_label: "?sdd".into(),
                port_path: "pci-0000:00:14.0-usb-0:9:1.0".into(),
                refusal: GuardRefusal {
                    code: RefusalCode::PortNotMapped,
                    message: "port pci-0000:00:14.0-usb-0:9:1.0 is not mapped in the configuration"
                        .into(),
                },
            })
            .await
        })
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
        .write(|b| {
            Box::pin(async move {
                b.start_attempt(
                    run,
                    device,
                    port,
                    &format!("pci-0000:00:14.0-usb-0:{port}:1.0"),
                )
                .await
            })
        })
        .await
        .unwrap()
}

fn data_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../report/tests/data")
        .join(name)
}

/// Checks that `actual` is the report data of the data file, or rewrites the
/// file under `UPDATE_GOLDEN=1`.
fn check_data<T>(name: &str, actual: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path = data_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let expected: T =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(
        actual,
        &expected,
        "the store's report data differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[tokio::test]
async fn a_runs_report_data_is_the_golden_data() {
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
    check_data("run.json", &run);
}

#[tokio::test]
async fn a_devices_report_data_is_the_golden_data() {
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
    check_data("device.json", &device);
}

#[tokio::test]
async fn a_downloaded_images_provenance_is_in_its_run_and_device_reports() {
    use flashrack_core::{DigestSource, Provenance, SignatureCheck};
    let t = TestStore::new("rack-1").await;
    let file = image();
    let downloaded = flashrack_store::ImageRow {
        sha256: Sha256Digest::of(b"downloaded image"),
        name: "ubuntu.iso".into(),
        provenance: Some(Provenance {
            url: "https://example.invalid/ubuntu.iso".into(),
            etag: Some("\"abc\"".into()),
            last_modified: None,
            digest_source: DigestSource::Sums {
                url: "https://example.invalid/SHA256SUMS".into(),
                file_name: "ubuntu.iso".into(),
                sha256: Sha256Digest::of(b"downloaded image"),
                signature: Some(SignatureCheck {
                    url: "https://example.invalid/SHA256SUMS.gpg".into(),
                    signer_fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
                    signing_key_fingerprint: None,
                }),
            },
            captured: None,
            built: None,
            bmap_lookup_failed: None,
        }),
        ..image()
    };
    let stick = t.stick("SER1").await;
    let file_run = t.run_of(&file).await;
    t.start(file_run, stick, "A1").await;
    let run = t.run_of(&downloaded).await;
    t.start(run, stick, "A2").await;

    let s = &t.store;
    let report = s.run_report(run).await.unwrap().unwrap();
    assert_eq!(report.image_provenance, downloaded.provenance);
    let json = flashrack_report::run_json(&report);
    assert!(json.contains("\"image_provenance\""), "{json}");
    let html = flashrack_report::run_html(&report, common::T0);
    assert!(
        html.contains("https://example.invalid/ubuntu.iso (ETag &quot;abc&quot;); digest ubuntu.iso in https://example.invalid/SHA256SUMS, signed by 0123456789ABCDEF0123456789ABCDEF01234567"),
        "{html}"
    );
    // A run of a file has none, and its exports do not change.
    let report = s.run_report(file_run).await.unwrap().unwrap();
    assert_eq!(report.image_provenance, None);
    assert!(!flashrack_report::run_json(&report).contains("image_provenance"));
    assert!(!flashrack_report::run_html(&report, common::T0).contains("Downloaded from"));

    let device = s.device_report("SER1").await.unwrap().unwrap();
    assert_eq!(device.image_origins.len(), 1, "{:?}", device.image_origins);
    assert_eq!(device.image_origins[0].sha256, downloaded.sha256);
    assert_eq!(device.image_origins[0].name, "ubuntu.iso");
    let html = flashrack_report::device_html(&device, common::T0);
    assert!(html.contains("Downloaded from"), "{html}");
    assert!(
        html.contains("ubuntu.iso: https://example.invalid/ubuntu.iso"),
        "{html}"
    );
    assert!(flashrack_report::device_json(&device).contains("\"image_origins\""));
}

#[tokio::test]
async fn a_captured_images_origin_is_in_its_run_and_device_json_reports() {
    use flashrack_core::{CaptureOrigin, Provenance};
    let t = TestStore::new("rack-1").await;
    let captured = flashrack_store::ImageRow {
        sha256: Sha256Digest::of(b"captured image"),
        name: "golden-v3".into(),
        provenance: Some(Provenance::captured(CaptureOrigin {
            port: Some("M1".into()),
            serial: Some("GOLD-1".into()),
            device: "/dev/sdz".into(),
            device_size: 32_000_000_000,
            extent: "up to the end of the last MBR partition".into(),
            sector_size: None,
        })),
        ..image()
    };
    let stick = t.stick("SER1").await;
    let run = t.run_of(&captured).await;
    t.start(run, stick, "A1").await;

    let s = &t.store;
    let report = s.run_report(run).await.unwrap().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::run_json(&report)).unwrap();
    assert_eq!(json["format"], "flashrack-report/12");
    let want = serde_json::json!({
        "port": "M1",
        "serial": "GOLD-1",
        "device": "/dev/sdz",
        "device_size": 32_000_000_000u64,
        "extent": "up to the end of the last MBR partition",
    });
    assert_eq!(json["image_provenance"]["captured"], want, "{json}");
    assert_eq!(json["image_provenance"]["url"], "/dev/sdz");
    assert_eq!(
        json["image_provenance"]["digest_source"]["kind"],
        "unchecked"
    );
    // The printable report calls it captured, never downloaded (before, its
    // run report said "Downloaded from captured from port M1 …").
    let html = flashrack_report::run_html(&report, common::T0);
    assert!(html.contains("Captured"), "{html}");
    assert!(!html.contains("Downloaded from"), "{html}");
    let device = s.device_report("SER1").await.unwrap().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::device_json(&device)).unwrap();
    assert_eq!(json["image_origins"][0]["name"], "golden-v3");
    assert_eq!(
        json["image_origins"][0]["provenance"]["captured"], want,
        "{json}"
    );
}
