//! `StoreRecords` against a real SQLite file: what each `Journal` method leaves
//! in the store, and every report format through `Reports`.

use std::io::Write;

use flashrack_core::{
    AttemptFigures, Bound, FailReason, Failure, RefusalCode, Sha256Digest, Stage, Verdict,
    VerifyMethod,
};
use flashrack_guard::Refusal;
use flashrack_station::model::RunOptions;
use flashrack_station::OperatorAction;
use flashrack_store::{AttemptState, EventKind};
use serde_json::Value;

use super::*;

const MIB: usize = 1 << 20;

/// Records in a temporary data directory, with a gzip-compressed image in its
/// cache (so what the records say of it comes from the cache, not a default).
struct Rig {
    records: StoreRecords,
    image: flashrack_image::CachedImage,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let images = crate::images::open_cache(dir.path()).unwrap();
    let raw = flashrack_testkit::image_bytes(MIB, 3, 64 * 1024);
    let file = dir.path().join("image.img.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&file).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap();
    let image = images
        .import(&file, flashrack_image::ImportOptions::default())
        .unwrap()
        .image;
    let records = StoreRecords::open(dir.path(), "rack-1", images)
        .await
        .unwrap();
    Rig {
        records,
        image,
        _dir: dir,
    }
}

impl Rig {
    async fn run(&self) -> RunId {
        self.records
            .run_started(&RunStart {
                image_sha256: self.image.sha256(),
                image_name: "image.img.gz".into(),
                image_size: self.image.size(),
                options: RunOptions {
                    target_count: Some(7),
                    ..RunOptions::default()
                },
            })
            .await
            .unwrap()
    }

    async fn device(&self, serial: &str) -> DeviceId {
        self.records.device_seen(&identity(serial)).await.unwrap()
    }

    fn store(&self) -> &Store {
        self.records.store()
    }
}

fn identity(serial: &str) -> DeviceIdentity {
    DeviceIdentity {
        serial: Some(serial.into()),
        vendor: Some("Kingston".into()),
        model: Some("DataTraveler".into()),
        capacity: 16_000_000_000,
    }
}

fn passed_figures(size: u64) -> AttemptFigures {
    AttemptFigures {
        capacity: ByteSize(16_000_000_000),
        bytes_written: size,
        write_secs: 2.0,
        bytes_verified: size,
        verify_secs: 1.0,
        read_back_sha256: Some(Sha256Digest::of(b"read back")),
        verify_method: Some(VerifyMethod::Compare),
        bytes_written_bound: Bound::Exact,
        verified_after_reset: false,
        bytes_skipped: 0,
        sample: None,
    }
}

#[tokio::test]
async fn a_started_run_is_recorded_with_its_image_as_the_cache_knows_it() {
    let rig = rig().await;
    let run = rig.run().await;
    let image = rig
        .store()
        .image(rig.image.sha256())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(image.name, "image.img.gz");
    assert_eq!(image.size, ByteSize(rig.image.size()));
    assert_eq!(
        image.format, "gzip",
        "the cache's word for it, not a default"
    );
    assert_eq!(image.imported_at, rig.image.meta.imported_at as i64 * 1000);
    // Where it came from: the gzip file that was imported, its digest and size.
    let source = image.source.expect("the image's source is recorded");
    assert_eq!(source.file_name, "image.img.gz");
    assert_eq!(source.sha256, rig.image.meta.input_sha256);
    assert_ne!(
        source.sha256,
        rig.image.sha256(),
        "the file's, not the raw image's"
    );
    assert_eq!(source.size, ByteSize(rig.image.meta.input_size));
    let summary = rig.store().run(run).await.unwrap().unwrap();
    assert_eq!(summary.run.image_size, Some(ByteSize(rig.image.size())));
    assert_eq!(summary.run.image_source.as_ref(), Some(&source));
    assert_eq!(summary.run.image_sha256, rig.image.sha256());
    assert_eq!(summary.run.image_name, "image.img.gz");
    assert_eq!(summary.run.options["target_count"], 7);
    assert_eq!(summary.run.stop_reason, None);
    assert_eq!(
        rig.store().active_run().await.unwrap().map(|r| r.run.id),
        Some(run)
    );
    // A second run of the same image records the image once.
    rig.run().await;
    assert_eq!(rig.store().images().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stopped_run_keeps_its_reason_and_the_operators_note_in_the_event_log() {
    let rig = rig().await;
    let run = rig.run().await;
    rig.records
        .run_stopped(run, StopReason::Operator, Some("lunch"))
        .await
        .unwrap();
    let summary = rig.store().run(run).await.unwrap().unwrap();
    assert_eq!(summary.run.stop_reason, Some(StopReason::Operator));
    assert!(summary.run.stopped_at.is_some());
    assert_eq!(rig.store().active_run().await.unwrap(), None);
    let events = rig.store().recent_events(50).await.unwrap();
    let stop = events
        .iter()
        .find(|e| e.row.detail["action"] == "run_stopped")
        .expect("the stop is in the event log");
    assert_eq!(stop.row.kind, EventKind::OperatorAction);
    assert_eq!(stop.row.run_id, Some(run));
    assert_eq!(stop.row.detail["note"], "lunch");
    assert_eq!(stop.row.detail["reason"], "operator");
}

#[tokio::test]
async fn a_device_seen_twice_is_one_device_record() {
    let rig = rig().await;
    let first = rig.device("SER-1").await;
    let again = rig.device("SER-1").await;
    let other = rig.device("SER-2").await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    let device = rig.store().device("SER-1").await.unwrap().unwrap();
    assert_eq!(device.id, first);
    assert_eq!(
        (device.vendor.as_deref(), device.model.as_deref()),
        (Some("Kingston"), Some("DataTraveler"))
    );
    assert_eq!(device.capacity, ByteSize(16_000_000_000));
    assert_eq!(rig.store().devices(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_attempt_is_recorded_as_started_staged_advanced_and_finished() {
    let rig = rig().await;
    let run = rig.run().await;
    let device_id = rig.device("SER-1").await;
    let attempt = rig
        .records
        .attempt_started(&AttemptStart {
            run_id: run,
            device_id,
            port_label: "B3".into(),
            port_path: Some("pci-0000:00:14.0-usb-0:3:1.0".into()),
        })
        .await
        .unwrap();
    let record = rig.store().attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.state, AttemptState::Running);
    assert_eq!((record.run_id, record.device_id), (run, device_id));
    assert_eq!(record.port_label, "B3");
    assert_eq!(record.port_path, "pci-0000:00:14.0-usb-0:3:1.0");

    rig.records
        .attempt_stage(attempt, Stage::Writing)
        .await
        .unwrap();
    assert_eq!(
        rig.store().attempt(attempt).await.unwrap().unwrap().stage,
        Stage::Writing
    );

    // The heartbeat records how far the attempt has got.
    rig.records
        .heartbeat(&[AttemptSoFar {
            attempt_id: attempt,
            bytes_written: 512 * 1024,
            bytes_verified: 0,
        }])
        .await
        .unwrap();
    let record = rig.store().attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.figures.bytes_written, 512 * 1024);
    assert_eq!(rig.store().running_attempts().await.unwrap().len(), 1);

    let figures = passed_figures(rig.image.size());
    rig.records
        .attempt_finished(attempt, &Verdict::Pass, &figures)
        .await
        .unwrap();
    let record = rig.store().attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.state, AttemptState::Passed);
    assert_eq!(record.verdict, Some(Verdict::Pass));
    assert_eq!(record.figures.bytes_verified, rig.image.size());
    assert_eq!(
        record.figures.read_back_sha256,
        Some(Sha256Digest::of(b"read back"))
    );
    assert!(record.finished_at.is_some());
    assert!(rig.store().running_attempts().await.unwrap().is_empty());
}

#[tokio::test]
async fn station_events_are_logged_with_their_port() {
    let rig = rig().await;
    for event in [
        JournalEvent::DeviceAdded {
            port: "A1".into(),
            device: "SER-1".into(),
        },
        JournalEvent::Ejected {
            port: "A1".into(),
            device: "SER-1".into(),
        },
        JournalEvent::DeviceRemoved {
            port: "A1".into(),
            device: "SER-1".into(),
        },
        JournalEvent::OperatorAction {
            action: OperatorAction::StartPort,
            detail: "A1".into(),
        },
    ] {
        rig.records.event(&event).await.unwrap();
    }
    let logged: Vec<(EventKind, Option<String>)> = rig
        .store()
        .recent_events(50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.row.kind, e.row.port_label))
        .filter(|(kind, _)| *kind != EventKind::StationStarted)
        .collect();
    for expected in [
        (EventKind::DeviceAdded, Some("A1".to_string())),
        (EventKind::PortChanged, Some("A1".to_string())),
        (EventKind::DeviceRemoved, Some("A1".to_string())),
        (EventKind::OperatorAction, None),
    ] {
        assert!(logged.contains(&expected), "{expected:?} in {logged:?}");
    }
}

#[tokio::test]
async fn a_stick_refused_three_times_is_in_its_device_report_three_times() {
    let dir = tempfile::tempdir().unwrap();
    let images = ImageCache::open(dir.path().join("cache")).unwrap();
    let records = StoreRecords::open(dir.path(), "rack-1", images)
        .await
        .unwrap();
    let run = records
        .run_started(&RunStart {
            image_sha256: Sha256Digest::of(b"image"),
            image_name: "image.img".into(),
            image_size: 1 << 20,
            options: RunOptions::default(),
        })
        .await
        .unwrap();
    let identity = DeviceIdentity {
        serial: Some("HUGE-1".into()),
        vendor: Some("Seagate".into()),
        model: Some("Expansion".into()),
        capacity: 2_000_000_000_000,
    };
    let device_id = records.device_seen(&identity).await.unwrap();
    for _ in 0..3 {
        records
            .event(&JournalEvent::GuardRefused {
                port: "A1".into(),
                port_path: Some("pci-0000:00:14.0-usb-0:1:1.0".into()),
                device: identity.key(),
                device_id,
                run_id: Some(run),
                refusal: Refusal::TooLarge {
                    size: identity.capacity,
                    max: 256_000_000_000,
                },
            })
            .await
            .unwrap();
    }
    let report = records
        .store()
        .device_report("HUGE-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.rows.len(), 3);
    assert_eq!(report.counts.refused, 3);
    assert!(report.rows.iter().all(|r| r.reason_code.as_deref()
        == Some(RefusalCode::TooLarge.as_str())
        && r.run_id == Some(run)
        && r.port_label == "A1"));
    let html = render_device(&report, ReportFormat::Html, 0).body;
    assert!(html.contains("<b>3</b> refused"), "{html}");
    assert!(html.contains("<b>3</b> in all"), "{html}");
    let run_report = records.store().run_report(run).await.unwrap().unwrap();
    assert_eq!(run_report.run.counts.refused, 3);
    assert_eq!(run_report.run.counts.failed, 0);
}

/// A run with a pass on SER-1 and a write error on SER-2.
async fn run_with_a_pass_and_a_failure(rig: &Rig) -> RunId {
    let run = rig.run().await;
    for (serial, port, verdict) in [
        ("SER-1", "A1", Verdict::Pass),
        (
            "SER-2",
            "A2",
            Verdict::Fail(Failure {
                reason: FailReason::WriteError {
                    offset: 4096,
                    detail: "I/O error".into(),
                },
                stage: Stage::Writing,
            }),
        ),
    ] {
        let device_id = rig.device(serial).await;
        let attempt = rig
            .records
            .attempt_started(&AttemptStart {
                run_id: run,
                device_id,
                port_label: port.into(),
                port_path: None,
            })
            .await
            .unwrap();
        rig.records
            .attempt_finished(attempt, &verdict, &passed_figures(rig.image.size()))
            .await
            .unwrap();
    }
    run
}

#[tokio::test]
async fn every_report_format_of_a_run_comes_through_reports_with_its_content_type() {
    let rig = rig().await;
    let run = run_with_a_pass_and_a_failure(&rig).await;
    let reports: &dyn Reports = &rig.records;

    let (kind, csv) = reports
        .run_report(run, ReportFormat::Csv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kind, "text/csv; charset=utf-8");
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("attempt_id,"), "{csv}");
    assert_eq!(lines.count(), 2, "{csv}");
    assert!(
        csv.contains(",SER-1,") && csv.contains(",write_error,"),
        "{csv}"
    );

    let (kind, json) = reports
        .run_report(run, ReportFormat::Json)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kind, "application/json");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["format"], "flashrack-report/12");
    assert_eq!(json["kind"], "run");
    assert_eq!(json["run"]["image_source"]["file_name"], "image.img.gz");
    assert_eq!(json["run"]["image_size_bytes"], rig.image.size());
    assert_eq!(json["run"]["run_id"], run.0);
    assert_eq!(
        (
            json["run"]["passed"].as_u64(),
            json["run"]["failed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(json["attempts"].as_array().unwrap().len(), 2);

    let (kind, html) = reports
        .run_report(run, ReportFormat::Html)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kind, "text/html; charset=utf-8");
    assert!(html.contains("<b>1</b> passed"), "{html}");
    assert!(html.contains("SER-2"), "{html}");
    assert!(
        html.contains("<dt>Imported from</dt><dd>image.img.gz ("),
        "{html}"
    );

    // The label sheet: a label for the pass (SER-1), none for the failure.
    let (kind, labels) = reports
        .run_report(run, ReportFormat::Labels)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kind, "text/html; charset=utf-8");
    assert_eq!(labels.matches("class=\"label\"").count(), 1, "{labels}");
    assert!(
        labels.contains("SER-1") && !labels.contains("SER-2"),
        "{labels}"
    );
    assert_eq!(labels.matches("<svg").count(), 1, "{labels}");

    // The same bodies as the renderers give for the store's report.
    let report = rig.store().run_report(run).await.unwrap().unwrap();
    assert_eq!(render_run(&report, ReportFormat::Csv, 0).body, csv);

    assert!(reports
        .run_report(RunId(999), ReportFormat::Csv)
        .await
        .unwrap()
        .is_none());
    let runs = reports.runs().await.unwrap();
    let listed = runs.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], run.0);
}

#[tokio::test]
async fn every_report_format_of_a_device_comes_through_reports_with_its_content_type() {
    let rig = rig().await;
    run_with_a_pass_and_a_failure(&rig).await;
    let reports: &dyn Reports = &rig.records;
    for (format, kind, says) in [
        (ReportFormat::Csv, "text/csv; charset=utf-8", ",SER-2,"),
        (
            ReportFormat::Json,
            "application/json",
            "\"kind\":\"device\"",
        ),
        (ReportFormat::Html, "text/html; charset=utf-8", "SER-2"),
    ] {
        let (content_type, body) = reports
            .device_report("SER-2", format)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(content_type, kind, "{format:?}");
        assert!(body.replace(' ', "").contains(says), "{format:?}: {body}");
        assert!(!body.contains("SER-1"), "{format:?}: only SER-2's attempts");
    }
    assert!(reports
        .device_report("NOBODY", ReportFormat::Json)
        .await
        .unwrap()
        .is_none());
    let devices = reports.devices().await.unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 2);
}

/// A run that wrote while its image was being imported, under a provisional
/// image row whose digest is a placeholder (`digest of no image`).
async fn following_run(rig: &Rig, provisional: Sha256Digest) -> RunId {
    rig.records
        .run_started_provisional(
            provisional,
            &RunStart {
                image_sha256: provisional,
                image_name: "ubuntu.img.xz".into(),
                image_size: 0,
                options: RunOptions::default(),
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_whose_followed_import_never_ended_reports_no_image_digest_in_any_format() {
    let rig = rig().await;
    let provisional = Sha256Digest::of(b"flashrack provisional image: test");
    let run = following_run(&rig, provisional).await;
    let device_id = rig.device("SER-9").await;
    let attempt = rig
        .records
        .attempt_started(&AttemptStart {
            run_id: run,
            device_id,
            port_label: "A1".into(),
            port_path: None,
        })
        .await
        .unwrap();
    let interrupted = Verdict::Fail(Failure {
        reason: FailReason::Interrupted,
        stage: Stage::Writing,
    });
    rig.records
        .attempt_finished(attempt, &interrupted, &passed_figures(0))
        .await
        .unwrap();
    rig.records
        .run_stopped(
            run,
            StopReason::SourceFailed,
            Some("the image's sha256 is not the expected one"),
        )
        .await
        .unwrap();
    let reports: &dyn Reports = &rig.records;
    let placeholder = provisional.to_hex();

    let (_, json) = reports
        .run_report(run, ReportFormat::Json)
        .await
        .unwrap()
        .unwrap();
    assert!(!json.contains(&placeholder), "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["run"]["image_name"], "ubuntu.img.xz");
    assert_eq!(json["run"]["image_sha256"], Value::Null, "{json}");
    assert_eq!(json["run"]["image_size_bytes"], Value::Null, "{json}");
    assert_eq!(json["attempts"][0]["image_sha256"], Value::Null, "{json}");
    assert_eq!(json["attempts"][0]["verdict"], "interrupted", "{json}");

    let (_, csv) = reports
        .run_report(run, ReportFormat::Csv)
        .await
        .unwrap()
        .unwrap();
    assert!(!csv.contains(&placeholder), "{csv}");
    // The columns up to `image_sha256` hold no comma in this record.
    let mut lines = csv.lines();
    let headers: Vec<&str> = lines.next().unwrap().split(',').collect();
    let record: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| headers.iter().position(|h| *h == name).unwrap();
    assert_eq!(record[column("image_name")], "ubuntu.img.xz", "{csv}");
    assert_eq!(record[column("image_sha256")], "", "{csv}");

    let (_, html) = reports
        .run_report(run, ReportFormat::Html)
        .await
        .unwrap()
        .unwrap();
    assert!(!html.contains(&placeholder), "{html}");
    assert!(
        html.contains("<dt>Image sha256</dt><dd>none: the run wrote while its image was being imported, and that import did not end</dd>"),
        "{html}"
    );

    // The device's history says the same of that record.
    let (_, device_json) = reports
        .device_report("SER-9", ReportFormat::Json)
        .await
        .unwrap()
        .unwrap();
    assert!(!device_json.contains(&placeholder), "{device_json}");
}

#[tokio::test]
async fn a_followed_run_whose_import_ended_reports_the_image_it_imported() {
    let rig = rig().await;
    let provisional = Sha256Digest::of(b"flashrack provisional image: test 2");
    let run = following_run(&rig, provisional).await;
    rig.records
        .run_image_known(
            run,
            provisional,
            rig.image.sha256(),
            "ubuntu.img.xz",
            rig.image.size(),
        )
        .await
        .unwrap();
    let reports: &dyn Reports = &rig.records;
    let (_, json) = reports
        .run_report(run, ReportFormat::Json)
        .await
        .unwrap()
        .unwrap();
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["run"]["image_sha256"], rig.image.sha256().to_hex());
    assert_eq!(json["run"]["image_size_bytes"], rig.image.size());
}

#[test]
fn a_sticks_live_key_is_the_key_the_records_keep_it_under() {
    // The live view's key must find the stick's history: it was
    // `Generic:Flash Disk:268435456` live, `Generic/Flash Disk/268435456` in
    // the records (a 404 for the report of the key on screen).
    for (serial, vendor, model) in [
        (Some("AA01"), Some("Generic"), Some("Flash Disk")),
        (None, Some("Generic"), Some("Flash Disk")),
        (None, None, None),
        (Some("  "), Some(" "), Some("Model")),
    ] {
        let identity = DeviceIdentity {
            serial: serial.map(str::to_string),
            vendor: vendor.map(str::to_string),
            model: model.map(str::to_string),
            capacity: 268_435_456,
        };
        let row = DeviceRow {
            serial: identity.serial.clone(),
            vendor: identity.vendor.clone(),
            model: identity.model.clone(),
            capacity: flashrack_core::ByteSize(identity.capacity),
        };
        assert_eq!(identity.key(), row.key(), "{identity:?}");
    }
}
