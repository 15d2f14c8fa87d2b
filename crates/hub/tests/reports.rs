//! Reports across stations: a lot's report spans its stations; a stick
//! written at one station and re-tested at another has one history.

mod common;

use common::*;
use flashrack_core::{
    CaptureOrigin, DigestSource, Provenance, Sha256Digest, SignatureCheck, StopReason, Verdict,
};
use flashrack_fleet::{paths, FleetRecord, ImageRecord, ORDER_ID_OPTION};
use flashrack_hub::pg::Role;
use flashrack_hub::testing::spawn_hub;
use flashrack_testkit::pg::PgCluster;
use serde_json::json;

/// The image every station here writes, with where the station got it.
fn image_from(provenance: Provenance) -> FleetRecord {
    let mut record = image();
    if let FleetRecord::Image(r) = &mut record {
        r.provenance = Some(Box::new(provenance));
    }
    record
}

fn downloaded() -> Provenance {
    Provenance {
        url: "https://images.example/os.img.xz".into(),
        etag: Some("\"abc-1\"".into()),
        last_modified: None,
        digest_source: DigestSource::Sums {
            url: "https://images.example/SHA256SUMS".into(),
            file_name: "os.img.xz".into(),
            sha256: image_digest(),
            signature: Some(SignatureCheck {
                url: "https://images.example/SHA256SUMS.gpg".into(),
                signer_fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
                signing_key_fingerprint: None,
            }),
        },
        captured: None,
        built: None,
        bmap_lookup_failed: None,
    }
}

fn captured() -> Provenance {
    Provenance::captured(CaptureOrigin {
        port: Some("A8".into()),
        serial: Some("GOLD1".into()),
        device: "/dev/sdz".into(),
        device_size: 2 << 30,
        extent: "up to the end of the last MBR partition".into(),
        sector_size: None,
    })
}

/// A provisional image (a run that followed an import) recorded, then
/// removed by the station: its last version, marked removed.
fn provisional(removed: bool) -> FleetRecord {
    FleetRecord::Image(ImageRecord {
        sha256: Sha256Digest::of(b"provisional"),
        name: "os.img".into(),
        size: 1 << 30,
        format: "pending".into(),
        imported_at: 1_500,
        provenance: None,
        removed,
    })
}

/// A run of `station` under `order_id`.
fn ordered_run(order_id: i64) -> FleetRecord {
    let mut record = run(1, None);
    if let FleetRecord::Run(r) = &mut record {
        r.options = json!({ ORDER_ID_OPTION: order_id, "verify": "full", "operator": "Zoë", "lot": "LOT-42" });
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_report_spans_stations_and_a_stick_has_one_history() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let b = hub.db.add_token(Role::Station, "lab-b").await.unwrap();
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let uploaded = post_bytes(hub.url("/api/v1/images?name=os.img"), None, image).await;
    let sha = uploaded.body["sha256"].as_str().unwrap().to_string();
    let lot = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "name": "lot-42", "image_sha256": sha, "stations": ["lab-a", "lab-b"] }),
    )
    .await;
    let id = lot.body["id"].as_i64().unwrap();
    let order_a = lot.body["orders"][0]["order_id"].as_i64().unwrap();
    let order_b = lot.body["orders"][1]["order_id"].as_i64().unwrap();

    // S1 passes at lab-a; S2 fails there and is re-tested at lab-b, where
    // it passes; a refusal at lab-b.
    let at_a = batch(
        "lab-a",
        entries(
            1,
            vec![
                provisional(false),
                image_from(downloaded()),
                provisional(true),
                device("S1", 4_000),
                device("S2", 4_000),
                ordered_run(order_a),
                attempt(1, "S1", 1 << 30, Some(Verdict::Pass)),
                attempt(2, "S2", 4096, Some(mismatch())),
            ],
        ),
        0,
    );
    let mut retest = attempt(1, "S2", 1 << 30, Some(Verdict::Pass));
    if let FleetRecord::Attempt(r) = &mut retest {
        r.started_at = 20_000;
        r.finished_at = Some(25_000);
    }
    let at_b = batch(
        "lab-b",
        entries(
            1,
            vec![
                image_from(captured()),
                device("S2", 20_000),
                ordered_run(order_b),
                retest,
                refusal(1),
            ],
        ),
        0,
    );
    assert_eq!(
        post_json(hub.url(paths::RECORDS), Some(&a), &at_a)
            .await
            .status,
        200
    );
    assert_eq!(
        post_json(hub.url(paths::RECORDS), Some(&b), &at_b)
            .await
            .status,
        200
    );

    let report = get(
        hub.url(&format!("/api/v1/lots/{id}/report?format=json")),
        None,
    )
    .await;
    assert_eq!(report.status, 200, "{:?}", report.body);
    let body = &report.body;
    assert_eq!(body["kind"], "lot");
    assert_eq!(body["lot"]["name"], "lot-42");
    assert_eq!(body["lot"]["passed"], 2);
    assert_eq!(body["lot"]["failed"], 1);
    assert_eq!(body["lot"]["refused"], 1);
    assert_eq!(body["runs"].as_array().unwrap().len(), 2);
    let stations: Vec<&str> = body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["station_id"].as_str().unwrap())
        .collect();
    assert_eq!(stations, ["lab-a", "lab-a", "lab-b", "lab-b"]);
    let failed = &body["attempts"][1];
    assert_eq!(failed["reason_detail"], "verify mismatch at byte 4096");
    assert_eq!(failed["serial"], "S2");
    // Each row carries its run's facts as the station's rows do (they were
    // all empty at the hub): who armed it, its lot and options, its image's
    // size.
    for row in body["attempts"].as_array().unwrap() {
        assert_eq!(row["operator"], "Zoë", "{row:#}");
        assert_eq!(row["lot"], "LOT-42", "{row:#}");
        assert!(
            row["run_options"].as_str().is_some_and(|o| !o.is_empty()),
            "{row:#}"
        );
    }
    assert_eq!(failed["image_size_bytes"], 8u64 << 30, "{failed:#}");
    // Where the lot's image came from, as each station recorded it.
    let origins: Vec<Provenance> = body["image_origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| serde_json::from_value(o["provenance"].clone()).unwrap())
        .collect();
    assert_eq!(origins, [downloaded(), captured()]);
    // The provisional image lab-a removed is no image of it at the hub.
    let stored = hub.db.station_records("lab-a").await.unwrap();
    assert_eq!(stored.images.len(), 1);
    assert_eq!(stored.images[0].provenance.as_deref(), Some(&downloaded()));
    assert_eq!(stored.removed_images, [Sha256Digest::of(b"provisional")]);

    let csv = get(
        hub.url(&format!("/api/v1/lots/{id}/report?format=csv")),
        None,
    )
    .await;
    assert_eq!(csv.status, 200);
    let html = get(
        hub.url(&format!("/api/v1/lots/{id}/report?format=html")),
        None,
    )
    .await;
    assert_eq!(html.status, 200);
    let (_, _, page) = get_bytes(
        hub.url(&format!("/api/v1/lots/{id}/report?format=html")),
        Vec::new(),
    )
    .await;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("Downloaded from") && page.contains("https://images.example/os.img.xz"),
        "{page}"
    );
    assert!(
        page.contains("Captured") && page.contains("GOLD1"),
        "{page}"
    );

    // S2's history: the failure at lab-a, then the pass at lab-b.
    let history = get(hub.url("/api/v1/devices/S2"), None).await;
    assert_eq!(history.status, 200, "{:?}", history.body);
    let rows = history.body["attempts"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["station_id"].as_str().unwrap(),
                r["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("lab-a", "fail"), ("lab-b", "pass")]);
    assert_eq!(history.body["device"]["passed"], 1);
    assert_eq!(history.body["device"]["failed"], 1);
    assert_eq!(
        history.body["image_origins"].as_array().map(Vec::len),
        Some(2),
        "{:?}",
        history.body
    );
    assert_eq!(get(hub.url("/api/v1/devices/NOPE"), None).await.status, 404);

    // A download is named after its lot or stick, with nothing of the name
    // that could break the header or name a path: the lot's name "a\"b/../x
    // <newline> y" gave `filename="lot-a"b/../x` (broken quoting), and one
    // with a line break no Content-Disposition at all.
    let odd = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "name": "a\"b/../x y", "image_sha256": sha, "stations": ["lab-a"] }),
    )
    .await;
    assert_eq!(odd.status, 200, "{:?}", odd.body);
    for (path, file) in [
        (
            format!("/api/v1/lots/{}/report?format=csv", odd.body["id"]),
            "lot-a_b____x_y.csv",
        ),
        (
            format!("/api/v1/lots/{id}/report?format=csv"),
            "lot-lot-42.csv",
        ),
        ("/api/v1/devices/S2?format=csv".to_string(), "device-S2.csv"),
    ] {
        let (status, headers, _) = get_bytes(hub.url(&path), Vec::new()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            headers.get("content-disposition").map(String::as_str),
            Some(format!("attachment; filename=\"{file}\"").as_str()),
            "{path}"
        );
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_stop_detail_is_stored_and_given_in_the_lot_report() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let a = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let uploaded = post_bytes(hub.url("/api/v1/images?name=os.img"), None, bytes).await;
    let sha = uploaded.body["sha256"].as_str().unwrap().to_string();
    let lot = post_json(
        hub.url("/api/v1/lots"),
        None,
        &json!({ "name": "lot-7", "image_sha256": sha, "stations": ["lab-a"] }),
    )
    .await;
    let id = lot.body["id"].as_i64().unwrap();
    let order = lot.body["orders"][0]["order_id"].as_i64().unwrap();
    let detail = "the import of https://images.example/os.img.xz failed: checksum mismatch";
    // The run as armed, then as stopped with the station's words (a later
    // version of the same row).
    let mut stopped = ordered_run(order);
    if let FleetRecord::Run(r) = &mut stopped {
        r.stopped_at = Some(9_000);
        r.stop_reason = Some(StopReason::SourceFailed);
        r.stop_detail = Some(detail.into());
    }
    let shipped = batch(
        "lab-a",
        entries(1, vec![image(), ordered_run(order), stopped]),
        0,
    );
    let answer = post_json(hub.url(paths::RECORDS), Some(&a), &shipped).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let stored = hub.db.station_records("lab-a").await.unwrap();
    assert_eq!(stored.runs[0].stop_detail.as_deref(), Some(detail));
    assert_eq!(stored.runs[0].stop_reason, Some(StopReason::SourceFailed));

    let report = get(
        hub.url(&format!("/api/v1/lots/{id}/report?format=json")),
        None,
    )
    .await;
    assert_eq!(report.status, 200, "{:?}", report.body);
    let run = &report.body["runs"][0];
    assert_eq!(run["stop_reason"], "source_failed", "{run}");
    assert_eq!(run["stop_detail"], detail, "{run}");
    let (_, _, page) = get_bytes(
        hub.url(&format!("/api/v1/lots/{id}/report?format=html")),
        Vec::new(),
    )
    .await;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains(&format!(
            "lab-a run 1 (the image could not be read: {detail})"
        )),
        "{page}"
    );

    // A station that does not record it (older than its records' version
    // 14) ships no detail: none is stored, and an older copy's is not kept.
    let mut older = ordered_run(order);
    if let FleetRecord::Run(r) = &mut older {
        r.stopped_at = Some(9_500);
        r.stop_reason = Some(StopReason::Operator);
    }
    let again = batch("lab-a", entries(4, vec![older]), 0);
    assert_eq!(
        post_json(hub.url(paths::RECORDS), Some(&a), &again)
            .await
            .status,
        200
    );
    let stored = hub.db.station_records("lab-a").await.unwrap();
    assert_eq!(stored.runs[0].stop_detail, None);
    assert_eq!(stored.runs[0].stop_reason, Some(StopReason::Operator));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_a_token_and_its_api_asks_for_one() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    hub.db.add_token(Role::Operator, "alice").await.unwrap();
    let (status, _, page) = get_bytes(hub.url("/"), vec![]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8(page).unwrap().contains("flashrack hub"));
    assert_eq!(get_bytes(hub.url("/hub.js"), vec![]).await.0, 200);
    assert_eq!(get(hub.url("/api/v1/lots"), None).await.status, 401);
    hub.stop().await;
}
