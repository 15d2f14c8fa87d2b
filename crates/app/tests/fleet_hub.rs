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
        assert_eq!(fleet["connected"], true, "{fleet}");
        assert_eq!(fleet["backlog"], 0, "{fleet}");
    }
    for (_, app) in stations {
        app.stop().await.unwrap();
    }
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
