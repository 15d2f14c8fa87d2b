//! The whole station as `serve` builds it (records in a real SQLite file, the
//! web side on a real port), over the simulated rack, through `spawn_app`:
//! the production journal and reports, checked over HTTP against what the API
//! shows.

use std::time::Duration;

use flashrack_app::reports::ReportFormat;
use flashrack_app::testing::{spawn_app, View, WriteLockHolder};
use flashrack_engine::SourceImage;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_station::{ArmRequest, PortState, RunOptions, Snapshot, StationHandle};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

async fn until(handle: &StationHandle, what: &str, check: impl Fn(&Snapshot) -> bool) {
    let mut watch = handle.watch();
    let wait = watch.wait_for(|s| check(s));
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}: {:#?}", handle.snapshot());
    }
}

fn state(snapshot: &Snapshot, label: &str) -> PortState {
    snapshot
        .ports
        .iter()
        .find(|p| p.label == label)
        .unwrap()
        .state
}

/// The value of a metric line `name{station="…"} value`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// A 16 MiB stick. Its capacity probe writes about 300 KB (markers, a giant
/// every 32 KiB, zeros over the first 32 KiB): a write error meant for the
/// write pass comes after that (1 MiB, in the 3 MiB image).
fn healthy() -> SimStickSpec {
    SimStickSpec::new("", 16 * MIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_view_metrics_and_records_count_passes_failures_and_interruptions_alike() {
    let app = spawn_app().await;
    let handle = app.station.clone();
    let run = handle
        .arm(ArmRequest {
            image: SourceImage {
                path: app.image.path.clone(),
                manifest: app.image.manifest.clone(),
                referenced: app.image.meta.reference.is_some(),
            },
            image_name: "test.img".into(),
            options: RunOptions::default(),
            sparse: None,
        })
        .await
        .unwrap();

    // A pass, a failure, and an attempt the operator's stop interrupts (held
    // in the middle of its write until then).
    let rack = &app.rack;
    rack.plug("t-1", "GOOD", healthy()).unwrap();
    rack.plug("t-2", "BAD", healthy().write_error_after(MIB))
        .unwrap();
    rack.plug("t-3", "SLOW", healthy().stall_after_written(MIB))
        .unwrap();
    until(&handle, "a pass, a failure and a write", |s| {
        state(s, "A1") == PortState::Passed
            && state(s, "A2") == PortState::Failed
            && state(s, "A3") == PortState::Writing
    })
    .await;
    app.post("/api/v1/runs/current/stop", None).await;
    // Told to stop, the stick let go stops at its next safe point.
    rack.stick_at("t-3").unwrap().1.release();
    until(&handle, "the stop settled", |s| {
        state(s, "A3") == PortState::Failed && s.run.as_ref().is_some_and(|r| r.active == 0)
    })
    .await;

    let expected = (1, 1, 1);
    let view = app.get("/api/v1/runs/current").await.json();
    let counts = |v: &Value| {
        (
            v["passed"].as_u64().unwrap(),
            v["failed"].as_u64().unwrap(),
            v["interrupted"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts(&view), expected, "run view: {view}");
    let metrics = app.get("/metrics").await.body;
    assert_eq!(
        (
            metric(&metrics, "flashrack_run_passed"),
            metric(&metrics, "flashrack_run_failed"),
            metric(&metrics, "flashrack_run_interrupted"),
        ),
        expected,
        "metrics:\n{metrics}"
    );
    let listed = app.get("/api/v1/runs").await.json();
    let listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.id.0)
        .unwrap()
        .clone();
    assert_eq!(counts(&listed), expected, "runs list: {listed}");
    let report = app
        .get(&format!("/api/v1/runs/{}/report?format=json", run.id))
        .await
        .json();
    assert_eq!(counts(&report["run"]), expected, "report: {report}");
    let verdicts: Vec<&str> = report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["verdict"].as_str().unwrap())
        .collect();
    let count = |v: &str| verdicts.iter().filter(|x| **x == v).count() as u64;
    assert_eq!(
        (count("pass"), count("fail"), count("interrupted")),
        expected,
        "report rows: {verdicts:?}"
    );

    app.stop().await.unwrap();
}

/// The CSV's rows as maps of header to field (the test's fields hold no
/// commas or quotes).
fn csv_rows(csv: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .map(|(h, f)| (h.to_string(), f.to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_the_api_shows_are_the_ones_its_reports_give_in_every_format() {
    let app = spawn_app().await;
    let mut events = app.events().await;
    let run_id = app.arm().await;

    // A pass, a write error, and a stick the guard refuses (smaller than the
    // image).
    app.rack.plug("t-1", "GOOD", healthy()).unwrap();
    app.rack
        .plug("t-2", "BAD", healthy().write_error_after(MIB))
        .unwrap();
    app.rack
        .plug("t-3", "TINY", SimStickSpec::new("", MIB))
        .unwrap();
    let view: View = events
        .until("a pass, a failure and a refusal", |v| {
            v.state("A1") == "passed" && v.state("A2") == "failed" && v.state("A3") == "refused"
        })
        .await;

    // The run as the API counts it.
    let run = app.get("/api/v1/runs/current").await.json();
    assert_eq!(run["id"], run_id);
    let counts = |v: &Value| {
        (
            v["passed"].as_u64().unwrap(),
            v["failed"].as_u64().unwrap(),
            v["refused"].as_u64().unwrap(),
            v["interrupted"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts(&run), (1, 1, 1, 0), "{run}");
    let a1 = &view.ports["A1"];
    let a2 = &view.ports["A2"];
    assert_eq!(a1["verdict_run"]["run_id"], run_id);

    // JSON: the same counts, and each attempt as its port showed it.
    let json = app
        .get(&format!("/api/v1/runs/{run_id}/report?format=json"))
        .await;
    assert_eq!(
        (json.status, json.content_type.as_str()),
        (200, "application/json")
    );
    let report = json.json();
    assert_eq!(report["format"], "flashrack-report/12");
    assert_eq!(report["kind"], "run");
    assert_eq!(counts(&report["run"]), counts(&run), "{report}");
    let rows = report["attempts"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report}");
    let row = |serial: &str| {
        rows.iter()
            .find(|r| r["serial"] == serial)
            .unwrap_or_else(|| panic!("no row for {serial}: {report}"))
    };
    let good = row("GOOD");
    assert_eq!(good["verdict"], "pass");
    assert_eq!(good["attempt_id"], a1["attempt_id"]);
    assert_eq!(good["port_label"], "A1");
    assert_eq!(good["bytes_written"], a1["figures"]["bytes_written"]);
    assert_eq!(good["bytes_verified"], a1["figures"]["bytes_verified"]);
    assert_eq!(good["read_back_sha256"], app.image.sha256().to_hex());
    assert_eq!(good["read_back_sha256"], a1["figures"]["read_back_sha256"]);
    let bad = row("BAD");
    assert_eq!(bad["verdict"], "fail");
    assert_eq!(bad["attempt_id"], a2["attempt_id"]);
    assert_eq!(bad["reason_code"], "write_error");
    assert_eq!(bad["fail_offset"], a2["verdict"]["offset"]);
    let tiny = row("TINY");
    assert_eq!(tiny["verdict"], "refused");
    assert_eq!(tiny["reason_code"], view.ports["A3"]["refusal"]["code"]);
    assert_eq!(
        tiny["attempt_id"],
        Value::Null,
        "refused before any attempt"
    );

    // CSV: a row per record, the same verdicts.
    let csv = app
        .get(&format!("/api/v1/runs/{run_id}/report?format=csv"))
        .await;
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    let csv_rows = csv_rows(&csv.body);
    let mut verdicts: Vec<(String, String)> = csv_rows
        .iter()
        .map(|r| (r["serial"].clone(), r["verdict"].clone()))
        .collect();
    verdicts.sort();
    assert_eq!(
        verdicts,
        [
            ("BAD".to_string(), "fail".to_string()),
            ("GOOD".into(), "pass".into()),
            ("TINY".into(), "refused".into()),
        ]
    );
    let good_csv = csv_rows.iter().find(|r| r["serial"] == "GOOD").unwrap();
    assert_eq!(good_csv["attempt_id"], a1["attempt_id"].to_string());
    assert_eq!(
        good_csv["read_back_sha256"],
        app.image.sha256().to_hex(),
        "{}",
        csv.body
    );

    // HTML: the same summary.
    let html = app
        .get(&format!("/api/v1/runs/{run_id}/report?format=html"))
        .await;
    assert_eq!(html.content_type, "text/html; charset=utf-8");
    for says in [
        "<b>1</b> passed",
        "<b>1</b> failed",
        "<b>1</b> refused",
        "<b>3</b> in all",
    ] {
        assert!(html.body.contains(says), "{says}: {}", html.body);
    }

    // A device's report: its one attempt, as the API showed it.
    let device = app
        .get("/api/v1/devices/GOOD/report?format=json")
        .await
        .json();
    assert_eq!(device["kind"], "device");
    let attempts = device["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{device}");
    assert_eq!(attempts[0]["attempt_id"], a1["attempt_id"]);
    assert_eq!(attempts[0]["run_id"], run_id);
    assert_eq!(attempts[0]["verdict"], "pass");
    let device_csv = app.get("/api/v1/devices/BAD/report?format=csv").await;
    assert_eq!(device_csv.content_type, "text/csv; charset=utf-8");
    let bad_rows = self::csv_rows(&device_csv.body);
    assert_eq!(bad_rows.len(), 1);
    assert_eq!(bad_rows[0]["reason_code"], "write_error");
    let device_html = app.get("/api/v1/devices/TINY/report?format=html").await;
    assert_eq!(device_html.content_type, "text/html; charset=utf-8");
    assert!(
        device_html.body.contains("<b>1</b> refused"),
        "{}",
        device_html.body
    );

    // The records are in the SQLite file: the report the command line reads
    // from it (read-only, beside the running station) is the API's.
    let from_file = flashrack_app::reports::run_report(
        &app.data_dir,
        Some("test-station"),
        flashrack_core::RunId(run_id as i64),
        ReportFormat::Csv,
    )
    .await
    .unwrap();
    assert_eq!(from_file.body, csv.body);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_history_from_the_records_flags_a_port_where_different_sticks_keep_failing() {
    let app = spawn_app().await;
    let mut events = app.events().await;
    app.arm().await;

    // Port A1: three different sticks fail in turn. Port A2: one good stick.
    app.rack.plug("t-2", "GOOD", healthy()).unwrap();
    for serial in ["BAD-1", "BAD-2", "BAD-3"] {
        let stick = app
            .rack
            .plug("t-1", serial, healthy().write_error_after(MIB))
            .unwrap();
        events
            .until(&format!("{serial} failed in A1"), |v| {
                v.state("A1") == "failed" && v.ports["A1"]["device"]["serial"] == serial
            })
            .await;
        app.rack.pull(&stick).unwrap();
        events
            .until("A1 empty again", |v| v.state("A1") == "empty")
            .await;
    }
    events
        .until("the good stick passed", |v| v.state("A2") == "passed")
        .await;

    let answer = app.get("/api/v1/port-history?last=2").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let history = answer.json();
    let port = |label: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port_label"] == label)
            .unwrap_or_else(|| panic!("no history for {label}: {history}"))
            .clone()
    };
    let a1 = port("A1");
    assert_eq!(a1["check_port"], true, "{a1}");
    let serials: Vec<&str> = a1["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["BAD-3", "BAD-2"], "the latest two, newest first");
    assert_eq!(a1["verdicts"][0]["verdict"], "fail");
    assert_eq!(a1["verdicts"][0]["reason_code"], "write_error");
    let a2 = port("A2");
    assert_eq!(a2["check_port"], false, "{a2}");
    assert_eq!(a2["verdicts"][0]["verdict"], "pass");
    assert_eq!(
        app.get("/api/v1/port-history?last=0").await.status,
        400,
        "a history of nothing is a bad request"
    );

    // Devices: their attempt count and latest verdict.
    let devices = app.get("/api/v1/devices").await.json();
    let device = |serial: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["serial"] == serial)
            .unwrap_or_else(|| panic!("no device {serial}: {devices}"))
            .clone()
    };
    let bad = device("BAD-2");
    assert_eq!(
        (
            &bad["attempts"],
            &bad["last_verdict"],
            &bad["last_reason_code"],
            &bad["last_port"]
        ),
        (
            &json!(1),
            &json!("fail"),
            &json!("write_error"),
            &json!("A1")
        )
    );
    assert_eq!(device("GOOD")["last_verdict"], "pass");
    app.stop().await.unwrap();
}

/// A run refused because its image would not boot written raw is in the
/// station's event log, as an auditor reads it beside the running station:
/// who asked, for which image, why it was refused and what they were told;
/// a forced run says so in its arming event and its options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_raw_run_of_an_installer_iso_is_in_the_event_log_and_a_forced_one_says_so() {
    use flashrack_store::{EventKind, Records, Store};

    let import = tempfile::tempdir().unwrap();
    let import_dir = import.path().to_path_buf();
    let app = flashrack_app::testing::spawn_app_with(|config| {
        config.web.import_dirs = vec![import_dir];
    })
    .await;
    // An innocent name: the refusal goes by content.
    let iso = import.path().join("team-photos.img");
    flashrack_testkit::iso::windows_like_iso(&iso);
    let imported = app
        .post("/api/v1/images/import", Some(json!({ "path": iso })))
        .await;
    assert_eq!(imported.status, 201, "{}", imported.body);
    let sha = imported.json()["sha256"].as_str().unwrap().to_string();

    let refused = app
        .post(
            "/api/v1/runs",
            Some(json!({ "image": sha, "operator": "Ada", "lot": "L-7" })),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(app.station.snapshot().run.is_none(), "nothing armed");

    let store = Store::open_read_only(&app.database(), "test-station")
        .await
        .unwrap();
    let events = store.recent_events(100).await.unwrap();
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.row.kind == EventKind::RunRefused)
        .collect();
    assert_eq!(refusals.len(), 1, "{events:#?}");
    let detail = &refusals[0].row.detail;
    assert_eq!(detail["image_sha256"], sha.as_str(), "{detail}");
    assert_eq!(detail["image_name"], "team-photos.img");
    assert!(
        detail["reason"]
            .as_str()
            .unwrap()
            .contains("Windows installer ISO"),
        "{detail}"
    );
    assert!(
        detail["advice"].as_str().unwrap().contains("force"),
        "{detail}"
    );
    assert_eq!(detail["options"]["operator"], "Ada");
    assert_eq!(detail["options"]["lot"], "L-7");
    assert_eq!(refusals[0].row.run_id, None, "no run was started");
    assert!(
        store.list_runs().await.unwrap().is_empty(),
        "a refusal starts no run"
    );

    let forced = app
        .post(
            "/api/v1/runs",
            Some(json!({ "image": sha, "operator": "Ada", "force_raw": true })),
        )
        .await;
    assert_eq!(forced.status, 201, "{}", forced.body);
    let events = store.recent_events(100).await.unwrap();
    let armed = events
        .iter()
        .rfind(|e| e.row.kind == EventKind::OperatorAction && e.row.detail["action"] == "arm")
        .expect("the arming is logged");
    assert!(
        armed.row.detail["detail"]
            .as_str()
            .unwrap()
            .ends_with("raw write forced"),
        "{:?}",
        armed.row.detail
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.row.kind == EventKind::RunRefused)
            .count(),
        1,
        "the forced run is no refusal"
    );
}

fn port_view<'s>(snapshot: &'s Snapshot, label: &str) -> &'s flashrack_station::PortView {
    snapshot.ports.iter().find(|p| p.label == label).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_the_records_cannot_take_is_shown_as_a_station_error_and_recorded_as_one_once_they_can(
) {
    let app = spawn_app().await;
    let handle = app.station.clone();
    let run_id = app.arm().await;
    // Slow to read back: the lock is taken while it verifies.
    app.rack
        .plug("t-1", "SLOWREAD", healthy().read_speed(MIB))
        .unwrap();
    until(&handle, "the read-back", |s| {
        state(s, "A1") == PortState::Verifying
    })
    .await;
    let lock = WriteLockHolder::take(&app.database());

    // The pass cannot be recorded (after the store's busy timeout): the port
    // does not show it, and the run does not count it as the stick's.
    // A bound on a hang, not a synchronisation: while the lock is held every
    // write of the station (the verdict, heartbeats, its event log) waits the
    // store's 10 s busy timeout in turn, longer on a loaded machine.
    let mut watch = handle.watch();
    let settled = watch.wait_for(|s| state(s, "A1") == PortState::Failed);
    let snapshot = tokio::time::timeout(Duration::from_secs(120), settled)
        .await
        .expect("the verdict settled")
        .unwrap()
        .clone();
    let a1 = port_view(&snapshot, "A1");
    let failure = a1.verdict.as_ref().unwrap().failure().unwrap().clone();
    assert_eq!(failure.reason.code(), "station_error", "{a1:?}");
    assert!(
        failure
            .to_string()
            .contains("its verdict (pass) could not be recorded"),
        "{failure}"
    );
    let run = snapshot.run.as_ref().unwrap();
    assert_eq!(
        (run.passed, run.failed, run.interrupted),
        (0, 0, 1),
        "{run:?}"
    );

    // The lock let go, the next heartbeat records what the port shows.
    drop(lock);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = app
            .get(&format!("/api/v1/runs/{run_id}/report?format=json"))
            .await
            .json();
        let codes: Vec<&str> = report["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["reason_code"].as_str().unwrap_or(""))
            .collect();
        if codes == ["station_error"] {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the records never took the station error: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let row = &report["attempts"][0];
    assert_eq!(row["serial"], "SLOWREAD");
    assert_ne!(row["verdict"], "pass", "{report}");
    assert_eq!(row["attempt_id"], a1.attempt_id.unwrap().0, "{report}");
    assert_eq!(report["run"]["passed"], 0, "{report}");
    assert_eq!(report["run"]["interrupted"], 1, "{report}");

    app.stop().await.unwrap();
}

/// One poll of `GET /api/v1/ports`: the port labelled `label`.
fn port_json<'v>(ports: &'v Value, label: &str) -> &'v Value {
    ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no port {label}: {ports}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_another_process_holds_the_records_locked_the_dashboard_api_keeps_moving_and_then_agrees_with_the_report(
) {
    let app = spawn_app().await;
    let handle = app.station.clone();
    // An image of 256 KiB chunks (the app's own is one chunk): a read-back
    // reports its progress as it goes.
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(3 * MIB as usize, 11, 256 * 1024);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 256 * 1024);
    let run_id = handle
        .arm(ArmRequest {
            image: SourceImage::cached(path, manifest),
            image_name: "chunked.img".into(),
            options: RunOptions::default(),
            sparse: None,
        })
        .await
        .unwrap()
        .id
        .0;
    // A1 reads back in about 3 s: its verdict comes while the lock is held.
    // A2 reads back in about 12 s: its progress is what must keep moving.
    app.rack
        .plug("t-1", "HELDBACK", healthy().read_speed(MIB))
        .unwrap();
    app.rack
        .plug("t-2", "MOVING", healthy().read_speed(MIB / 4))
        .unwrap();
    until(&handle, "A1 and A2 reading back", |s| {
        state(s, "A1") == PortState::Verifying && state(s, "A2") == PortState::Verifying
    })
    .await;
    let lock = WriteLockHolder::take(&app.database());

    // Over real HTTP: while A1's verdict waits on the lock (shown as being
    // recorded, no verdict), A2's progress keeps moving. A bound on a hang,
    // not a timing test: a station whose loop waits on its records shows
    // nothing move for the store's busy timeout (10 s) on every write.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // A2's read-back figures seen, in order, while A1's verdict waited.
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let ports = app.get("/api/v1/ports").await.json();
        let a1 = port_json(&ports, "A1");
        let a2 = port_json(&ports, "A2");
        // A1's read-back is over (its last figure shown, or its verdict
        // being recorded) and it shows no verdict: its verdict waits on
        // the lock.
        let read_back = a1["recording"] == true
            || (a1["state"] == "verifying"
                && a1["progress"]["done"].is_u64()
                && a1["progress"]["done"] == a1["progress"]["total"]);
        if read_back && a1["verdict"].is_null() {
            match a2["progress"]["done"].as_u64() {
                // A new figure (polls are faster than its updates).
                Some(done) if a2["state"] == "verifying" => {
                    if seen.last() != Some(&done) {
                        seen.push(done);
                    }
                }
                _ => seen.clear(),
            }
        } else {
            seen.clear();
        }
        if seen.len() >= 3 && seen.windows(2).all(|w| w[1] > w[0]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A2's progress never moved while A1's verdict waited on the lock: {ports}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The lock let go: each port shows a verdict, and the JSON report (from
    // the records) gives each the verdict its port shows.
    drop(lock);
    let mut watch = handle.watch();
    let settled = watch.wait_for(|s| {
        ["A1", "A2"].iter().all(|l| {
            let p = port_view(s, l);
            p.verdict.is_some() && !p.recording
        })
    });
    let snapshot = tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("both verdicts shown")
        .unwrap()
        .clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let report = app
            .get(&format!("/api/v1/runs/{run_id}/report?format=json"))
            .await
            .json();
        let run = app.get("/api/v1/runs/current").await.json();
        let agrees = ["A1", "A2"].iter().all(|label| {
            let view = port_view(&snapshot, label);
            let row = report["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["port_label"] == *label);
            let Some(row) = row else {
                return false;
            };
            let shown = view.verdict.as_ref().unwrap();
            row["attempt_id"] == view.attempt_id.unwrap().0
                && match shown.failure() {
                    None => row["verdict"] == "pass",
                    Some(failure) => {
                        row["verdict"] != "pass" && row["reason_code"] == failure.reason.code()
                    }
                }
        }) && ["passed", "failed", "interrupted"]
            .iter()
            .all(|k| report["run"][k] == run[k]);
        if agrees {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the report never agreed with the ports: {report}\n{snapshot:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await.unwrap();
}

/// How many bytes the simulated stick in port path `path` has taken.
fn written_at(app: &flashrack_app::testing::TestApp, path: &str) -> u64 {
    app.rack.stick_at(path).unwrap().1.counters().bytes_written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_another_process_holds_the_records_locked_an_arm_and_a_stop_wait_for_them_and_the_station_does_not(
) {
    let app = spawn_app().await;
    let handle = app.station.clone();
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(3 * MIB as usize, 13, 256 * 1024);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 256 * 1024);
    let request = ArmRequest {
        image: SourceImage::cached(path, manifest),
        image_name: "locked.img".into(),
        options: RunOptions::default(),
        sparse: None,
    };
    app.rack.plug("t-1", "PRESENT", healthy()).unwrap();
    until(&handle, "A1 detected", |s| {
        state(s, "A1") == PortState::Detected
    })
    .await;

    // Armed while another process holds the records' write lock: the arm
    // waits for the records (well within the store's 10 s busy timeout
    // here), the station does not.
    let lock = WriteLockHolder::take(&app.database());
    let arming = tokio::spawn({
        let handle = handle.clone();
        let request = request.clone();
        async move { handle.arm(request).await }
    });
    until(&handle, "the run shown being armed", |s| s.arming.is_some()).await;
    assert!(handle.snapshot().run.is_none());
    // Hotplug and commands go on: a stick is shown, another arm refused.
    app.rack.plug("t-2", "ARRIVED", healthy()).unwrap();
    until(&handle, "A2 detected", |s| {
        state(s, "A2") == PortState::Detected
    })
    .await;
    let station = app.get("/api/v1/station").await.json();
    assert_eq!(station["arming"]["image_name"], "locked.img", "{station}");
    let second = app
        .post(
            "/api/v1/runs",
            Some(json!({ "image": app.image.sha256().to_hex() })),
        )
        .await;
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(!arming.is_finished(), "armed before the records hold it");
    assert_eq!(written_at(&app, "t-1"), 0);
    drop(lock);
    let run = tokio::time::timeout(Duration::from_secs(30), arming)
        .await
        .expect("the arm is answered once the lock goes")
        .unwrap()
        .unwrap();
    assert!(run.armed, "{run:?}");
    until(&handle, "A1 and A2 passed", |s| {
        state(s, "A1") == PortState::Passed && state(s, "A2") == PortState::Passed
    })
    .await;

    // A slow stick is being written when the run is stopped under the lock:
    // it stops being written at once, the run is shown stopping (armed,
    // recording) until the records hold its end, and the stop is answered
    // then.
    app.rack
        .plug("t-3", "SLOW", healthy().write_speed(MIB / 4))
        .unwrap();
    until(&handle, "A3 writing", |s| {
        state(s, "A3") == PortState::Writing
    })
    .await;
    let lock = WriteLockHolder::take(&app.database());
    let stopping = tokio::spawn({
        let handle = handle.clone();
        async move { handle.stop_run("end of the batch").await }
    });
    until(&handle, "the run shown stopping", |s| {
        s.run.as_ref().is_some_and(|r| r.armed && r.recording)
    })
    .await;
    // A3 stops being written (two looks a moment apart agree), far from
    // the image's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stopped_at = loop {
        let before = written_at(&app, "t-3");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = written_at(&app, "t-3");
        if before == after {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A3 is still being written"
        );
    };
    assert!(stopped_at < 3 * MIB, "{stopped_at}");
    let again = app.post("/api/v1/runs/current/stop", None).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        !stopping.is_finished(),
        "stopped before the records hold it"
    );
    let shown = handle.snapshot().run.unwrap();
    assert_eq!(shown.stop_reason, None, "{shown:?}");
    drop(lock);
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the stop is answered once the lock goes")
        .unwrap()
        .unwrap();
    let shown = handle.snapshot().run.unwrap();
    assert!(!shown.armed && !shown.recording, "{shown:?}");
    let report = app
        .get(&format!("/api/v1/runs/{}/report?format=json", run.id.0))
        .await
        .json();
    assert_eq!(report["run"]["stop_reason"], "operator", "{report}");
    assert_eq!(written_at(&app, "t-3"), stopped_at);
    app.stop().await.unwrap();
}
