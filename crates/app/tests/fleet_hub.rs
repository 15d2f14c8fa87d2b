//! Stations and a real hub: the hub of `flashrack-hub` on real PostgreSQL (a
//! throwaway cluster per test), stations as `serve` builds them
//! (`spawn_app`, simulated racks, SQLite records), over real HTTP on
//! loopback. What arrives at the hub is compared with what each station
//! recorded: the last outbox entry of each record is the record as the
//! station holds it (every write queues the whole row in its transaction).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flashrack_app::testing::{spawn_app_with, TestApp};
use flashrack_config::FleetConfig;
use flashrack_hub::pg::{Role, StationRecords};
use flashrack_hub::testing::{spawn_hub, spawn_hub_with, TestHub};
use flashrack_simrack::sim::SimStickSpec;
use flashrack_store::Store;
use flashrack_testkit::pg::PgCluster;

const MIB: u64 = 1 << 20;

fn token_file(dir: &tempfile::TempDir, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(format!("{name}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A station `name` of the hub at `address`, with its token.
async fn station(
    hub: std::net::SocketAddr,
    name: &str,
    token: &str,
    dir: &tempfile::TempDir,
) -> TestApp {
    let fleet = FleetConfig {
        hub: url::Url::parse(&format!("http://{hub}")).unwrap(),
        station_id: name.into(),
        token_file: token_file(dir, name, token),
    };
    let name = name.to_string();
    spawn_app_with(move |config| {
        config.station_id = name;
        config.fleet = Some(fleet);
    })
    .await
}

/// Arms a run and flashes a pass, a write error and a refusal; waits for
/// their verdicts on the station's event stream.
async fn flash_three(app: &TestApp, round: u32) {
    let mut events = app.events().await;
    app.arm().await;
    app.rack
        .plug(
            "t-1",
            &format!("GOOD-{round}"),
            SimStickSpec::new("", 16 * MIB),
        )
        .unwrap();
    app.rack
        .plug(
            "t-2",
            &format!("BAD-{round}"),
            SimStickSpec::new("", 16 * MIB).write_error_after(MIB),
        )
        .unwrap();
    app.rack
        .plug("t-3", &format!("TINY-{round}"), SimStickSpec::new("", MIB))
        .unwrap();
    events
        .until("a pass, a failure and a refusal", |v| {
            v.state("A1") == "passed" && v.state("A2") == "failed" && v.state("A3") == "refused"
        })
        .await;
    let stopped = app.post("/api/v1/runs/current/stop", None).await;
    assert_eq!(stopped.status, 204, "{}", stopped.body);
    for path in ["t-1", "t-2", "t-3"] {
        if let Some((kernel, _)) = app.rack.stick_at(path) {
            app.rack.pull(&kernel).unwrap();
        }
    }
    events
        .until("every port empty", |v| {
            ["A1", "A2", "A3"].iter().all(|p| v.state(p) == "empty")
        })
        .await;
}

async fn open_records(app: &TestApp, name: &str) -> Store {
    Store::open_read_only(&app.database(), name).await.unwrap()
}

/// Waits until the station's outbox is empty (everything acknowledged).
async fn until_shipped(app: &TestApp, name: &str) {
    let store = open_records(app, name).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.outbox_backlog().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "{name} never shipped its backlog: {}",
            app.get("/api/v1/fleet").await.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The station's records as it holds them: the last outbox entry of each.
async fn station_records(app: &TestApp, name: &str) -> StationRecords {
    let store = open_records(app, name).await;
    let mut shipped = Vec::new();
    let mut after = 0;
    loop {
        let entries = store.outbox_entries(after, 1000).await.unwrap();
        let Some(last) = entries.last() else { break };
        after = last.seq;
        shipped.extend(entries.into_iter().map(|entry| entry.record));
    }
    StationRecords::latest(shipped)
}

/// Checks that the hub holds exactly what the station holds.
async fn assert_hub_matches(hub: &TestHub, app: &TestApp, name: &str) -> [usize; 6] {
    until_shipped(app, name).await;
    let ours = station_records(app, name).await;
    let theirs = hub.db.station_records(name).await.unwrap();
    assert_eq!(theirs.counts(), ours.counts(), "{name}: counts");
    assert_eq!(theirs, ours, "{name}: the hub's copy is the station's");
    ours.counts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_of_three_stations_arrive_at_the_hub_as_each_holds_them() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stations = Vec::new();
    for name in ["lab-a", "lab-b", "lab-c"] {
        let token = hub.db.add_token(Role::Station, name).await.unwrap();
        stations.push((name, station(hub.address, name, &token, &dir).await));
    }
    for (round, (_, app)) in stations.iter().enumerate() {
        flash_three(app, round as u32).await;
    }
    for (name, app) in &stations {
        let counts = assert_hub_matches(&hub, app, name).await;
        eprintln!("{name}: images, devices, runs, attempts, refusals, events = {counts:?}");
        let fleet = app.get("/api/v1/fleet").await.json();
        assert_eq!(app.get("/api/v1/health").await.json()["fleet"], true);
        assert_eq!(fleet["connected"], true, "{fleet}");
        assert_eq!(fleet["backlog"], 0, "{fleet}");
    }
    for (_, app) in stations {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_refused_for_an_id_in_use_keeps_the_hubs_words_as_its_last_error() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let first = station(hub.address, "lab-a", &token, &first_dir).await;
    flash_three(&first, 0).await;
    let before = assert_hub_matches(&hub, &first, "lab-a").await;
    // A second station configured with the same id (a copied station.toml
    // and token): the hub refuses its history (409).
    let second = station(hub.address, "lab-a", &token, &second_dir).await;
    flash_three(&second, 1).await;
    let refused = |view: &serde_json::Value| {
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("another station uses the station_id \"lab-a\""))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&second.get("/api/v1/fleet").await.json()) {
        assert!(
            Instant::now() < deadline,
            "the second station was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its orders' polls reach the hub meanwhile: they do not hide that its
    // records are refused (the link showed a connected hub, a growing
    // backlog and no error). Its live reports are refused too, in words
    // that say the same.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(8) {
        let view = second.get("/api/v1/fleet").await.json();
        assert!(refused(&view), "after {:?}: {view}", watched.elapsed());
        assert!(view["backlog"].as_u64().unwrap() > 0, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing of it reached the hub: the first station's records are whole.
    assert_eq!(
        hub.db.station_records("lab-a").await.unwrap().counts(),
        before
    );
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_whose_id_reports_live_from_another_instance_shows_the_refusal_until_it_is_taken()
{
    let pg = PgCluster::start();
    // A station is silent after 6 s without a report (the least allowed).
    let hub_dir = tempfile::tempdir().unwrap();
    let mut config = flashrack_hub::HubConfig::new(pg.url(), hub_dir.path().join("hub"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_connections = 4;
    config.silent_after = Duration::from_secs(6);
    let hub = spawn_hub_with(config, hub_dir).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    // Another station reports live under lab-a and goes on reporting every
    // 500 ms until told to stop: this one's live reports and its records
    // are refused meanwhile (records of another instance than the live one
    // never mix into the station's history).
    let other = |state: &str| flashrack_fleet::LiveReport {
        protocol: flashrack_fleet::PROTOCOL_VERSION,
        station_id: "lab-a".into(),
        instance: Some("0123456789abcdef0123456789abcdef".into()),
        sent_at: 1_700_000_000_000,
        snapshot: serde_json::json!({ "ports": [{ "label": "Z9", "state": state }] }),
        backlog: 0,
        order: None,
    };
    hub.db
        .record_live("lab-a", &other("writing"), 6_000)
        .await
        .unwrap();
    let (quiet, mut told) = tokio::sync::watch::channel(false);
    let db = hub.db.clone();
    let reporting = tokio::spawn(async move {
        while !*told.borrow_and_update() {
            db.record_live("lab-a", &other("writing"), 6_000)
                .await
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(500), told.changed()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let app = station(hub.address, "lab-a", &token, &dir).await;
    let refused = |view: &serde_json::Value| {
        view["last_error"].as_str().is_some_and(|e| {
            e.contains("the hub answered 409")
                && e.contains("reports live from another instance (instance 0123456789ab…")
                && e.contains("another station uses the station_id \"lab-a\"")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&app.get("/api/v1/fleet").await.json()) {
        assert!(
            Instant::now() < deadline,
            "the station never showed the refusal: {}",
            app.get("/api/v1/fleet").await.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its records wait, none of them at the hub, and the refusal stays
    // shown.
    flash_three(&app, 0).await;
    let store = open_records(&app, "lab-a").await;
    assert!(store.outbox_backlog().await.unwrap() > 0);
    assert_eq!(
        hub.db.station_records("lab-a").await.unwrap().counts(),
        [0; 6]
    );
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(7) {
        let view = app.get("/api/v1/fleet").await.json();
        assert!(refused(&view), "after {:?}: {view}", watched.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hub's view of lab-a is the other station's, not a mix.
    let view = &hub.db.station_views(Some("lab-a"), 6_000).await.unwrap()[0];
    let snapshot = view.snapshot.as_ref().unwrap();
    assert_eq!(snapshot["ports"][0]["label"], "Z9", "{snapshot}");

    // The other station goes away and falls silent: this one's next report
    // is taken and its error is over.
    quiet.send(true).unwrap();
    reporting.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = app.get("/api/v1/fleet").await.json();
        if view["last_error"].is_null() && view["connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = &hub.db.station_views(Some("lab-a"), 6_000).await.unwrap()[0];
    let snapshot = view.snapshot.as_ref().unwrap();
    assert_ne!(snapshot["ports"][0]["label"], "Z9", "{snapshot}");
    // Its records follow, whole.
    assert_hub_matches(&hub, &app, "lab-a").await;
    app.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_a_station_writes_as_it_shuts_down_reach_the_hub_before_it_ends() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = station(hub.address, "lab-a", &token, &dir).await;
    let mut events = app.events().await;
    app.arm().await;
    // A slow stick, mid-write when the station stops.
    app.rack
        .plug(
            "t-1",
            "SLOW-1",
            SimStickSpec::new("", 16 * MIB).write_speed(MIB),
        )
        .unwrap();
    events
        .until("writing", |v| v.state("A1") == "writing")
        .await;
    until_shipped(&app, "lab-a").await;
    app.stop().await.unwrap();
    // The attempt interrupted and the run stopped by the shutdown are at
    // the hub now (they waited in the outbox for the next start: the hub
    // showed the stick running and the run open).
    let theirs = hub.db.station_records("lab-a").await.unwrap();
    assert!(
        theirs.runs.iter().all(|r| r.stop_reason.is_some()),
        "{:?}",
        theirs.runs
    );
    assert!(
        theirs
            .attempts
            .iter()
            .all(|a| a.state != flashrack_core::AttemptState::Running),
        "{:?}",
        theirs.attempts
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_while_the_hub_is_away_arrive_once_in_order_when_it_is_back() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let address = hub.address;
    let token = hub.db.add_token(Role::Station, "lab-a").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = station(address, "lab-a", &token, &dir).await;
    flash_three(&app, 0).await;
    let before = assert_hub_matches(&hub, &app, "lab-a").await;

    // The hub goes away; the station goes on.
    hub.stop().await;
    flash_three(&app, 1).await;
    let store = open_records(&app, "lab-a").await;
    let backlog = store.outbox_backlog().await.unwrap();
    assert!(backlog > 0, "records wait for the hub");

    // The hub is back on the same address: the backlog drains.
    let hub_dir = tempfile::tempdir().unwrap();
    let mut config = flashrack_hub::HubConfig::new(pg.url(), hub_dir.path().join("hub"));
    config.listen = address;
    config.database_connections = 4;
    let hub = spawn_hub_with(config, hub_dir).await;
    let after = assert_hub_matches(&hub, &app, "lab-a").await;
    eprintln!("before the hub went away: {before:?}; after it came back: {after:?}; backlog while away: {backlog}");
    assert!(
        after[3] == before[3] + 2 && after[4] == before[4] + 1,
        "{before:?} → {after:?}"
    );
    app.stop().await.unwrap();
}

/// A downloaded image's provenance, as a signed `SHA256SUMS` gives it.
fn downloaded(sha256: flashrack_core::Sha256Digest) -> flashrack_core::Provenance {
    use flashrack_core::{DigestSource, Provenance, SignatureCheck};
    Provenance {
        url: "https://images.example/os-1.2.img".into(),
        etag: Some("\"5f2a-61c\"".into()),
        last_modified: Some("Tue, 01 Dec 2026 09:00:00 GMT".into()),
        digest_source: DigestSource::Sums {
            url: "https://images.example/SHA256SUMS".into(),
            file_name: "os-1.2.img".into(),
            sha256,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_followed_an_import_names_the_real_image_at_the_hub_and_leaves_no_provisional_one(
) {
    use flashrack_station::{RunOptions, RunStart};
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = hub.db.add_token(Role::Station, "lab-w").await.unwrap();
    let app = station(hub.address, "lab-w", &token, &dir).await;
    // The records a flash that writes while it imports makes, written to
    // the station's records as `flash` writes them (on the data directory
    // of a station that joined the fleet: its outbox is written).
    let cache = flashrack_app::images::open_cache(&app.data_dir).unwrap();
    let records = flashrack_app::StoreRecords::open(&app.data_dir, "lab-w", cache.clone())
        .await
        .unwrap();
    let provisional = flashrack_core::Sha256Digest::of(b"flashrack provisional image: os.img");
    let run = records
        .run_started_provisional(
            provisional,
            &RunStart {
                image_sha256: provisional,
                image_name: "os-1.2.img".into(),
                image_size: 2 * MIB,
                options: RunOptions::default(),
            },
        )
        .await
        .unwrap();
    // While the import runs, the hub knows the run under its provisional
    // image, marked `pending`.
    assert_hub_matches(&hub, &app, "lab-w").await;
    let theirs = hub.db.station_records("lab-w").await.unwrap();
    let pending = theirs
        .images
        .iter()
        .find(|i| i.sha256 == provisional)
        .unwrap();
    assert_eq!(pending.format, "pending");
    assert_eq!(
        theirs
            .runs
            .iter()
            .find(|r| r.id == run)
            .unwrap()
            .image_sha256,
        provisional
    );

    // The import ends: a downloaded image (its provenance in the cache).
    let bytes = flashrack_testkit::image_bytes(2 * MIB as usize, 5, 1 << 16);
    let real = flashrack_core::Sha256Digest::of(&bytes);
    let source = flashrack_image::StreamSource {
        label: "https://images.example/os-1.2.img".into(),
        name: "os-1.2.img".into(),
        ..flashrack_image::StreamSource::new("", "")
    };
    source.provenance.set(downloaded(real)).unwrap();
    let imported = tokio::task::spawn_blocking(move || {
        cache.import_stream(
            &mut std::io::Cursor::new(bytes),
            source,
            flashrack_image::ImportOptions::default(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(imported.image.sha256(), real);
    records
        .run_image_known(run, provisional, real, "os-1.2.img", 2 * MIB)
        .await
        .unwrap();

    // The hub's copy ends as the station's: the run names the real image,
    // which carries its provenance; the provisional row is gone from the
    // station's images and marked removed at the hub, never counted.
    let counts = assert_hub_matches(&hub, &app, "lab-w").await;
    let theirs = hub.db.station_records("lab-w").await.unwrap();
    assert_eq!(
        theirs
            .runs
            .iter()
            .find(|r| r.id == run)
            .unwrap()
            .image_sha256,
        real
    );
    assert!(
        theirs.images.iter().all(|i| i.sha256 != provisional),
        "{:?}",
        theirs.images
    );
    assert_eq!(theirs.removed_images, vec![provisional]);
    assert_eq!(counts[0], theirs.images.len());
    let image = theirs.images.iter().find(|i| i.sha256 == real).unwrap();
    assert_eq!(image.provenance.as_deref(), Some(&downloaded(real)));
    assert_eq!(image.format, "raw");
    app.stop().await.unwrap();
    hub.stop().await;
}

/// `method` `url` on the hub (no operator tokens: its API is open to
/// loopback), with a JSON or raw body: the status and the JSON answer.
async fn hub_call(
    method: &'static str,
    url: String,
    body: Option<Result<serde_json::Value, Vec<u8>>>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let request = ureq::request(method, &url).timeout(Duration::from_secs(30));
        let result = match body {
            Some(Ok(json)) => request.send_json(json),
            Some(Err(bytes)) => request
                .set("Content-Type", "application/octet-stream")
                .send_bytes(&bytes),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {url}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    })
    .await
    .unwrap()
}

/// Waits until the hub's view of the lot's only order satisfies `done`,
/// checking that every state it passes through is in `on_the_way`; returns
/// the order's view.
async fn until_order(
    hub: &TestHub,
    what: &str,
    on_the_way: &[&str],
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, lots) = hub_call("GET", hub.url("/api/v1/lots"), None).await;
        assert_eq!(status, 200, "{lots}");
        let order = lots[0]["orders"][0].clone();
        if done(&order) {
            return order;
        }
        let state = order["progress"]["state"].as_str().unwrap_or("no report");
        assert!(
            on_the_way.contains(&state),
            "on the way to {what}, the order was {state}: {order:#}"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s: {order:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_waits_for_the_operators_own_run_and_is_armed_once_it_stops_never_failed() {
    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = hub.db.add_token(Role::Station, "lab-o").await.unwrap();
    let app = station(hub.address, "lab-o", &token, &dir).await;
    // The station's operator arms a run of their own.
    let own = app.arm().await;

    // The hub arms a lot of another image on the station.
    let bytes = flashrack_testkit::image_bytes(2 * MIB as usize, 9, 1 << 16);
    let sha = flashrack_core::Sha256Digest::of(&bytes).to_hex();
    let (status, uploaded) = hub_call(
        "POST",
        hub.url("/api/v1/images?name=lot.img"),
        Some(Err(bytes)),
    )
    .await;
    assert_eq!(
        (status, uploaded["sha256"].as_str()),
        (200, Some(sha.as_str()))
    );
    let (status, lot) = hub_call(
        "POST",
        hub.url("/api/v1/lots"),
        Some(Ok(serde_json::json!({
            "name": "lot-o", "image_sha256": sha, "stations": ["lab-o"]
        }))),
    )
    .await;
    assert_eq!(status, 200, "{lot}");
    let order_id = lot["orders"][0]["order_id"].as_i64().unwrap();

    // It waits, with the station's reason naming the run in the way, at the
    // hub (what its dashboard shows) and at the station.
    let waiting_for = format!(
        "run {own} armed by the station's operator is in the way: the order waits until it is stopped"
    );
    let order = until_order(&hub, "waiting", &["no report"], |o| {
        o["progress"]["state"] == "waiting"
    })
    .await;
    assert_eq!(order["order_id"], order_id);
    assert_eq!(order["armed"], true);
    assert_eq!(order["progress"]["detail"], waiting_for.as_str());
    assert!(order["run_id"].is_null(), "{order:#}");
    let fleet = app.get("/api/v1/fleet").await.json();
    assert_eq!(fleet["order"]["state"], "waiting", "{fleet:#}");
    assert_eq!(fleet["order"]["detail"], waiting_for.as_str());
    let current = app.get("/api/v1/runs/current").await.json();
    assert_eq!(current["id"], own, "the operator's run is not touched");

    // The operator stops their run: the order is followed (its image
    // fetched from the hub, its run armed), and never reported failed.
    let stopped = app
        .post(
            "/api/v1/runs/current/stop",
            Some(serde_json::json!({ "reason": "done" })),
        )
        .await;
    assert!(stopped.status < 300, "{}", stopped.body);
    let order = until_order(
        &hub,
        "armed with its run",
        &["waiting", "fetching", "armed"],
        |o| o["progress"]["state"] == "armed" && !o["run_id"].is_null(),
    )
    .await;
    assert!(order["progress"]["detail"].is_null(), "{order:#}");
    let current = app.get("/api/v1/runs/current").await.json();
    assert_ne!(current["id"], own);
    assert_eq!(current["id"], order["run_id"]);
    assert_eq!(current["image_sha256"], sha.as_str(), "{current:#}");
    assert_eq!(current["armed"], true, "{current:#}");
    // The image fetched from the hub is the station's under its own name
    // (it was "<sha>-lot.img"), and says where it came from (it said
    // nothing): the hub's URL of it, its digest given by the hub's operator.
    let images = app.get("/api/v1/images").await.json();
    let fetched = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sha256"] == sha.as_str())
        .unwrap_or_else(|| panic!("{images:#}"));
    assert_eq!(fetched["name"], "lot.img", "{fetched:#}");
    let origin = fetched["origin"].as_str().unwrap_or_default();
    assert!(
        origin.contains(&format!("/api/v1/fleet/images/{sha}"))
            && origin.contains("given by the operator"),
        "{fetched:#}"
    );
    app.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_order_is_armed_with_the_images_block_map_and_says_which() {
    // An ext4 image, whose map the station generates from its allocation.
    let dir = tempfile::tempdir().unwrap();
    let ext4 = dir.path().join("lot.img");
    std::fs::File::create(&ext4)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&ext4)
        .status()
        .expect("mkfs.ext4 (scripts/setup installs e2fsprogs)");
    assert!(made.success());
    let bytes = std::fs::read(&ext4).unwrap();
    let sha = flashrack_core::Sha256Digest::of(&bytes).to_hex();

    let pg = PgCluster::start();
    let hub = spawn_hub(&pg.url()).await;
    let token = hub.db.add_token(Role::Station, "lab-s").await.unwrap();
    let app = station(hub.address, "lab-s", &token, &dir).await;
    let (status, _) = hub_call(
        "POST",
        hub.url("/api/v1/images?name=lot.img"),
        Some(Err(bytes)),
    )
    .await;
    assert_eq!(status, 200);
    let (status, lot) = hub_call(
        "POST",
        hub.url("/api/v1/lots"),
        Some(Ok(serde_json::json!({
            "name": "lot-s", "image_sha256": sha, "stations": ["lab-s"],
            "options": { "sparse": true }
        }))),
    )
    .await;
    assert_eq!(status, 200, "{lot}");
    // Armed sparse, by the map generated from its ext4, which the run
    // names. Before, the order armed no map and the station refused it.
    let order = until_order(
        &hub,
        "armed with its run",
        &["no report", "fetching", "armed"],
        |o| o["progress"]["state"] == "armed" && !o["run_id"].is_null(),
    )
    .await;
    let current = app.get("/api/v1/runs/current").await.json();
    assert_eq!(current["id"], order["run_id"]);
    assert_eq!(current["options"]["sparse"], true, "{current:#}");
    assert!(
        current["options"]["sparse_map"]
            .as_str()
            .is_some_and(|m| m.starts_with("generated from ext4")),
        "{current:#}"
    );
    app.stop().await.unwrap();
    hub.stop().await;
}
