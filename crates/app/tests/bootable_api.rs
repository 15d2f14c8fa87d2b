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
