//! A bootable stick image built over the API (`POST
//! /api/v1/images/{sha256}/bootable`, `GET /api/v1/images/builds`) by the
//! whole station (`spawn_app`: SQLite records, the web side on a real port):
//! a UEFI installer ISO made by the test (xorriso, a WIM captured by
//! wimlib-imagex) built into a GPT + FAT32 layout in the cache, whose
//! provenance (built from which image, how, when) the image JSON shows and a
//! run's records and report carry; bad requests (a bad digest, a bad name,
//! unknown fields, an unknown image), an image that is not an ISO and a
//! hybrid ISO that needs no build are refused with a 4xx and their reason,
//! before anything starts.

use std::fs;
use std::time::Duration;

use flashrack_app::testing::{spawn_app, TestApp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

fn error_of(answer: &flashrack_app::testing::Answer) -> String {
    answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Imports `file` into the running station's cache (as `image import` does
/// beside it) and gives its sha256.
fn import(app: &TestApp, file: &std::path::Path) -> String {
    let cache = flashrack_app::images::open_cache(&app.data_dir).unwrap();
    flashrack_app::images::import(&cache, file, None, flashrack_core::ByteSize(1 << 40))
        .unwrap()
        .image
        .sha256()
        .to_hex()
}

/// The build `id` once it has ended.
async fn build_ended(app: &TestApp, id: u64) -> Value {
    app.listed_until_ended("/api/v1/images/builds", id, "building", WAIT)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_iso_is_built_into_a_bootable_image_with_its_provenance() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    fs::create_dir_all(&content).unwrap();
    fs::write(content.join("setup.txt"), b"installed by the stick\n").unwrap();
    let iso = dir.path().join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, b"MZ stand-in UEFI loader", &content);
    let sha = import(&app, &iso);
    let image = app.get(&format!("/api/v1/images/{sha}")).await.json();
    assert!(image["raw_write_refusal"].is_object(), "{image}");

    let started = app
        .post(
            &format!("/api/v1/images/{sha}/bootable"),
            Some(json!({ "name": "quarterly-usb.img" })),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let view = started.json();
    assert_eq!(view["state"], "building", "{view}");
    assert_eq!(view["source"], sha.as_str());
    let built = build_ended(&app, view["id"].as_u64().unwrap()).await;
    assert_eq!(built["state"], "built", "{built}");
    assert_eq!(built["reused"], false);
    let layout = built["image"].as_str().unwrap().to_string();

    // The built image: a GPT with one FAT32 partition, no raw-run refusal,
    // and its provenance says what it was built from, how and when.
    let image = app.get(&format!("/api/v1/images/{layout}")).await.json();
    assert_eq!(image["name"], "quarterly-usb.img");
    assert!(image["raw_write_refusal"].is_null(), "{image}");
    assert_eq!(image["inspection"]["table"]["kind"], "gpt", "{image}");
    let origin = &image["provenance"]["built"];
    assert_eq!(origin["from_sha256"], sha.as_str(), "{image}");
    assert_eq!(origin["from_name"], "quarterly.bin");
    assert!(
        origin["method"]
            .as_str()
            .unwrap()
            .starts_with("bootable USB layout: GPT, one FAT32"),
        "{origin}"
    );
    assert_eq!(origin["built_at"], built["finished_at"], "{built}");
    assert_eq!(built["provenance"], image["provenance"]);
    // Every stage passed, in order; the last one reached is hashing.
    assert_eq!(built["stage"], "hashing", "{built}");
    assert_eq!(built["stage_number"], 5);
    assert_eq!(built["stage_count"], 5);
    let stages: Vec<(String, String)> = built["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            "extracting",
            "splitting",
            "partitioning",
            "copying_files",
            "hashing"
        ]
        .map(|stage| (stage.to_string(), "done".to_string()))
    );

    // Asked again: the layout built before, at once.
    let again = app
        .post(&format!("/api/v1/images/{sha}/bootable"), Some(json!({})))
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    let again = build_ended(&app, again.json()["id"].as_u64().unwrap()).await;
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["image"], layout.as_str());

    // A run of it: its records and report carry where it came from.
    let run = app
        .post("/api/v1/runs", Some(json!({ "image": layout })))
        .await;
    assert_eq!(run.status, 201, "{}", run.body);
    let id = run.json()["id"].as_u64().unwrap();
    let report = app
        .get(&format!("/api/v1/runs/{id}/report?format=json"))
        .await
        .json();
    assert_eq!(
        report["image_provenance"]["built"]["from_sha256"],
        sha.as_str(),
        "{report}"
    );
    let html = app
        .get(&format!("/api/v1/runs/{id}/report?format=html"))
        .await;
    assert!(
        html.body.contains("built from quarterly.bin"),
        "{}",
        html.body
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_cannot_be_is_refused_with_its_reason_before_it_starts() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let hybrid = dir.path().join("live.iso");
    flashrack_testkit::iso::hybrid_linux_iso(&hybrid);
    let hybrid = import(&app, &hybrid);
    let raw = app.image.sha256().to_hex();
    let post = |path: String, body: Value| {
        let app = &app;
        async move { app.post(&path, Some(body)).await }
    };

    // Not an ISO: the app's raw test image.
    let answer = post(format!("/api/v1/images/{raw}/bootable"), json!({})).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        error_of(&answer).contains("is not an ISO 9660 / UDF image"),
        "{}",
        answer.body
    );
    // A hybrid ISO boots written raw: nothing to build.
    let answer = post(format!("/api/v1/images/{hybrid}/bootable"), json!({})).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        error_of(&answer).contains("already boots written raw"),
        "{}",
        answer.body
    );
    // Unknown image, bad digest, bad name, unknown field, not JSON.
    let unknown = "ab".repeat(32);
    let answer = post(format!("/api/v1/images/{unknown}/bootable"), json!({})).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let answer = post("/api/v1/images/xyz/bootable".into(), json!({})).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let answer = post(
        format!("/api/v1/images/{hybrid}/bootable"),
        json!({ "name": "../etc/passwd" }),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        error_of(&answer).contains("must be 1-128 letters"),
        "{}",
        answer.body
    );
    let answer = post(
        format!("/api/v1/images/{hybrid}/bootable"),
        json!({ "name": "x.img", "size": 3 }),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // Nothing started.
    assert_eq!(app.get("/api/v1/images/builds").await.json(), json!([]));
    app.stop().await.unwrap();
}

/// A hook that holds every build as it enters `stage` until the test lets it
/// go: each held build's id is sent on the returned receiver, and a send on
/// the returned sender releases one.
fn hold_at(
    stage: flashrack_app::bootable::BuildStage,
) -> (
    flashrack_app::bootable::StageHook,
    std::sync::mpsc::Receiver<i64>,
    std::sync::mpsc::Sender<()>,
) {
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let held_tx = std::sync::Mutex::new(held_tx);
    let release_rx = std::sync::Mutex::new(release_rx);
    let hook: flashrack_app::bootable::StageHook = std::sync::Arc::new(move |id, entered| {
        if entered == stage {
            held_tx.lock().unwrap().send(id).unwrap();
            // Dropped sender (the test ended): go on.
            let _ = release_rx.lock().unwrap().recv();
        }
    });
    (hook, held, release)
}

/// The next build the hook holds (waited for off the async workers).
async fn held(held: &std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<i64>>>) -> i64 {
    let held = held.clone();
    tokio::task::spawn_blocking(move || {
        held.lock()
            .unwrap()
            .recv_timeout(WAIT)
            .expect("a build is held")
    })
    .await
    .unwrap()
}

/// A UEFI installer ISO made by the test, imported into `app`'s cache.
fn installer_iso(app: &TestApp, dir: &std::path::Path) -> String {
    let content = dir.join("content");
    fs::create_dir_all(&content).unwrap();
    fs::write(content.join("setup.txt"), b"installed by the stick\n").unwrap();
    let iso = dir.join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, b"MZ stand-in UEFI loader", &content);
    import(app, &iso)
}

/// The files of the cache's image directory and temporary directory, and
/// what the build directory holds: what a build that ended without a layout
/// must leave as it found them.
fn cache_files(app: &TestApp) -> (Vec<String>, Vec<String>, Vec<String>) {
    let names = |dir: std::path::PathBuf| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let cache = flashrack_app::images::cache_dir(&app.data_dir);
    (
        names(cache.join("images")),
        names(cache.join("tmp")),
        names(app.data_dir.join("bootable")),
    )
}

/// The build's record in the station's SQLite file, read beside it.
async fn record_of(app: &TestApp, id: i64) -> flashrack_store::BuildRecord {
    let store = flashrack_store::Store::open_read_only(&app.database(), "test-station")
        .await
        .unwrap();
    let record = store.build(id).await.unwrap().expect("recorded");
    store.close().await;
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cancelled_mid_build_keeps_nothing_and_its_record_says_cancelled() {
    use flashrack_app::bootable::BuildStage;
    for stage in [BuildStage::CopyingFiles, BuildStage::Hashing] {
        let (hook, held_rx, release) = hold_at(stage);
        let held_rx = std::sync::Arc::new(std::sync::Mutex::new(held_rx));
        let app = flashrack_app::testing::spawn_app_with_build_hook(hook).await;
        let dir = tempfile::tempdir().unwrap();
        let sha = installer_iso(&app, dir.path());
        let before = cache_files(&app);

        let started = app
            .post(&format!("/api/v1/images/{sha}/bootable"), Some(json!({})))
            .await;
        assert_eq!(started.status, 202, "{}", started.body);
        let id = started.json()["id"].as_u64().unwrap();
        assert_eq!(held(&held_rx).await, id as i64);

        // Held in the stage: the API says where it is.
        let list = app.get("/api/v1/images/builds").await.json();
        let view = &list[0];
        assert_eq!(view["id"], id, "{list}");
        assert_eq!(view["state"], "building", "{view}");
        assert_eq!(view["stage"], stage.as_str(), "{view}");
        assert_eq!(view["stage_number"], stage.number(), "{view}");
        let states: Vec<&str> = view["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        let n = stage.number();
        let expected: Vec<&str> = (1..=5)
            .map(|i| match i.cmp(&n) {
                std::cmp::Ordering::Less => "done",
                std::cmp::Ordering::Equal => "current",
                std::cmp::Ordering::Greater => "pending",
            })
            .collect();
        assert_eq!(states, expected, "{view}");

        // Cancelled there: answered at once, then it stops.
        let cancel = app
            .post(&format!("/api/v1/images/builds/{id}/cancel"), None)
            .await;
        assert_eq!(cancel.status, 202, "{}", cancel.body);
        assert_eq!(cancel.json()["cancel_requested"], true, "{}", cancel.body);
        release.send(()).unwrap();
        let ended = build_ended(&app, id).await;
        assert_eq!(ended["state"], "cancelled", "{ended}");
        assert_eq!(ended["stage"], stage.as_str(), "{ended}");
        assert!(ended["image"].is_null(), "{ended}");
        assert!(
            ended["error"]
                .as_str()
                .unwrap()
                .contains("cancelled by the operator"),
            "{ended}"
        );

        // Nothing of it in the cache, no work directory, no layout
        // remembered; the API's image list is what it was.
        assert_eq!(cache_files(&app), before, "{stage:?}");
        let images = app.get("/api/v1/images").await.json();
        assert_eq!(images.as_array().unwrap().len(), 2, "{images}");
        // The record says so, read beside the station.
        let record = record_of(&app, id as i64).await;
        assert_eq!(record.state, flashrack_core::BuildState::Cancelled);
        assert_eq!(record.stage, Some(stage));
        assert!(record.finished_at.is_some() && record.built.is_none());

        // Cancelled again, or a build that does not exist: refused.
        let again = app
            .post(&format!("/api/v1/images/builds/{id}/cancel"), None)
            .await;
        assert_eq!(again.status, 409, "{}", again.body);
        assert_eq!(
            error_of(&again),
            format!("build {id} has already ended (cancelled): there is nothing to cancel")
        );
        let unknown = app.post("/api/v1/images/builds/999/cancel", None).await;
        assert_eq!(unknown.status, 404, "{}", unknown.body);
        assert_eq!(error_of(&unknown), "no build 999");
        let bad = app.post("/api/v1/images/builds/first/cancel", None).await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(error_of(&bad).contains("is not a build id"), "{}", bad.body);
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_build_cannot_be_cancelled_and_the_list_survives_a_restart() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let sha = installer_iso(&app, dir.path());
    let started = app
        .post(&format!("/api/v1/images/{sha}/bootable"), Some(json!({})))
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_u64().unwrap();
    let built = build_ended(&app, id).await;
    assert_eq!(built["state"], "built", "{built}");
    let cancel = app
        .post(&format!("/api/v1/images/builds/{id}/cancel"), None)
        .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);
    assert_eq!(
        error_of(&cancel),
        format!("build {id} has already ended (built): there is nothing to cancel")
    );
    // After a restart the build is listed as it was, with its provenance.
    let app = app.restart().await;
    let list = app.get("/api/v1/images/builds").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let after = &list[0];
    for field in [
        "id",
        "state",
        "stage",
        "image",
        "size",
        "finished_at",
        "provenance",
    ] {
        assert_eq!(after[field], built[field], "{field}: {after} vs {built}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_under_way_when_the_station_stops_is_interrupted_and_listed_so_after_a_restart() {
    use flashrack_app::bootable::BuildStage;
    let (hook, held_rx, release) = hold_at(BuildStage::Partitioning);
    let held_rx = std::sync::Arc::new(std::sync::Mutex::new(held_rx));
    let app = flashrack_app::testing::spawn_app_with_build_hook(hook).await;
    let dir = tempfile::tempdir().unwrap();
    let sha = installer_iso(&app, dir.path());
    let before = cache_files(&app);
    let started = app
        .post(&format!("/api/v1/images/{sha}/bootable"), Some(json!({})))
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_u64().unwrap();
    assert_eq!(held(&held_rx).await, id as i64);

    // The station stops while the build is held in its stage, and starts
    // again: the build is interrupted, where it was, and kept nothing.
    let app = app.restart().await;
    let list = app.get("/api/v1/images/builds").await.json();
    let view = &list[0];
    assert_eq!(view["id"], id, "{list}");
    assert_eq!(view["state"], "interrupted", "{view}");
    assert_eq!(view["stage"], "partitioning", "{view}");
    assert_eq!(view["error"], flashrack_store::INTERRUPTED_DETAIL, "{view}");
    let record = record_of(&app, id as i64).await;
    assert_eq!(record.state, flashrack_core::BuildState::Interrupted);
    // Let the old build's thread go: it stops, and its end is not recorded
    // over the interruption.
    release.send(()).unwrap();
    drop(release);
    let cancel = app
        .post(&format!("/api/v1/images/builds/{id}/cancel"), None)
        .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);
    assert_eq!(cache_files(&app).0, before.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_shows_its_bytes_within_the_copying_and_hashing_stages() {
    use flashrack_app::bootable::{BuildStage, BytesHook, StageBytes};
    // Holds each stage's first report part way through (some bytes done,
    // not all) until the test lets it go.
    let (held_tx, held_rx) = std::sync::mpsc::channel::<(i64, StageBytes)>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let held_tx = std::sync::Mutex::new(held_tx);
    let release_rx = std::sync::Mutex::new(release_rx);
    let seen = std::sync::Mutex::new(Vec::new());
    // Every report, to check the copying stage's whole sequence afterwards.
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let all = reports.clone();
    let hook: BytesHook = std::sync::Arc::new(move |id, bytes: StageBytes| {
        all.lock().unwrap().push(bytes);
        let part_way = bytes.done > 0 && bytes.done < bytes.total;
        if part_way && !seen.lock().unwrap().contains(&bytes.stage) {
            seen.lock().unwrap().push(bytes.stage);
            held_tx.lock().unwrap().send((id, bytes)).unwrap();
            let _ = release_rx.lock().unwrap().recv();
        }
    });
    let app = flashrack_app::testing::spawn_app_with_build_bytes_hook(hook).await;
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    fs::create_dir_all(&content).unwrap();
    fs::write(content.join("setup.txt"), vec![7u8; 300_000]).unwrap();
    let iso = dir.path().join("quarterly.bin");
    flashrack_testkit::iso::uefi_installer_iso(&iso, b"MZ stand-in UEFI loader", &content);
    let (files, items) = flashrack_testkit::iso::tree_bytes(&iso);
    let sha = import(&app, &iso);

    let started = app
        .post(&format!("/api/v1/images/{sha}/bootable"), Some(json!({})))
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_u64().unwrap();
    let held_rx = std::sync::Arc::new(std::sync::Mutex::new(held_rx));
    let next_held = || {
        let held_rx = held_rx.clone();
        tokio::task::spawn_blocking(move || held_rx.lock().unwrap().recv_timeout(WAIT).unwrap())
    };
    let mut hashing_total = 0;
    for stage in [BuildStage::CopyingFiles, BuildStage::Hashing] {
        let (held_id, bytes) = next_held().await.unwrap();
        assert_eq!((held_id, bytes.stage), (id as i64, stage));
        // The API shows the stage and exactly the bytes reported.
        let list = app.get("/api/v1/images/builds").await.json();
        let view = &list[0];
        assert_eq!(view["stage"], stage.as_str(), "{view}");
        assert_eq!(
            view["stage_bytes"],
            json!({"done": bytes.done, "total": bytes.total}),
            "{view}"
        );
        match stage {
            // Every byte of the ISO's files, as another tool extracts them.
            BuildStage::CopyingFiles => assert_eq!(bytes.total, files),
            _ => hashing_total = bytes.total,
        }
        release.send(()).unwrap();
    }
    let built = build_ended(&app, id).await;
    assert_eq!(built["state"], "built", "{built}");
    // The hashing stage counted the layout the cache now holds.
    assert_eq!(built["size"], hashing_total, "{built}");
    assert!(built["stage_bytes"].is_null(), "{built}");
    // The copying stage reported 0 first, then once as mcopy named each
    // file and directory (every name in the order expected: none lost),
    // then the total; never backwards.
    let reports = reports.lock().unwrap().clone();
    let copying: Vec<u64> = reports
        .iter()
        .filter(|b| b.stage == BuildStage::CopyingFiles)
        .map(|b| b.done)
        .collect();
    assert_eq!(copying.len(), items + 2, "{copying:?}");
    assert_eq!((copying[0], *copying.last().unwrap()), (0, files));
    assert!(copying.windows(2).all(|w| w[0] <= w[1]), "{copying:?}");
    let hashing: Vec<u64> = reports
        .iter()
        .filter(|b| b.stage == BuildStage::Hashing)
        .map(|b| b.done)
        .collect();
    assert_eq!(*hashing.last().unwrap(), hashing_total, "{hashing:?}");
    assert!(hashing.windows(2).all(|w| w[0] <= w[1]), "{hashing:?}");
    app.stop().await.unwrap();
}
