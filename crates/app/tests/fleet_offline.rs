//! A station that joined a fleet never waits on the network: with its hub
//! down, or up but never answering, sticks are written, verdicts recorded and
//! reports served as before, and its records wait in the outbox, whose size
//! the station's API shows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flashrack_app::testing::{spawn_app_with, TestApp};
use flashrack_config::FleetConfig;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_store::Store;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A token file only its owner may read.
fn token_file(dir: &tempfile::TempDir) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("hub-token");
    std::fs::write(&path, "station-token-of-test-station\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn station_of_hub(hub: &str, dir: &tempfile::TempDir) -> TestApp {
    let fleet = FleetConfig {
        hub: url::Url::parse(hub).unwrap(),
        station_id: "test-station".into(),
        token_file: token_file(dir),
    };
    spawn_app_with(move |config| config.fleet = Some(fleet)).await
}

/// Arms a run over the API, plugs a pass, a write error and a stick the
/// guard refuses, and waits for their verdicts on the event stream; returns
/// the run's id.
async fn flash_three_sticks(app: &TestApp) -> u64 {
    let mut events = app.events().await;
    let run_id = app.arm().await;
    app.rack
        .plug("t-1", "GOOD", SimStickSpec::new("", 16 * MIB))
        .unwrap();
    app.rack
        .plug(
            "t-2",
            "BAD",
            SimStickSpec::new("", 16 * MIB).write_error_after(MIB),
        )
        .unwrap();
    app.rack
        .plug("t-3", "TINY", SimStickSpec::new("", MIB))
        .unwrap();
    events
        .until("a pass, a failure and a refusal", |v| {
            v.state("A1") == "passed" && v.state("A2") == "failed" && v.state("A3") == "refused"
        })
        .await;
    run_id
}

/// The run's JSON report, as the station serves it.
async fn run_report(app: &TestApp, run_id: u64) -> Value {
    let report = app
        .get(&format!("/api/v1/runs/{run_id}/report?format=json"))
        .await;
    assert_eq!(report.status, 200, "{}", report.body);
    report.json()
}

async fn outbox_backlog(app: &TestApp) -> u64 {
    let store = Store::open_read_only(&app.database(), "test-station")
        .await
        .unwrap();
    store.outbox_backlog().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_whose_hub_takes_connections_and_never_answers_flashes_and_reports_as_usual() {
    // A hub that accepts connections and then says nothing: every request
    // the station makes hangs until its own timeout.
    let hub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hub.local_addr().unwrap());
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hub.accept().await {
            let _ = seen_tx.send(());
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let app = station_of_hub(&url, &dir).await;
    // The fleet's tasks are talking to the silent hub.
    seen.recv().await.expect("the station connects to its hub");

    let run_id = flash_three_sticks(&app).await;
    let report = run_report(&app, run_id).await;
    let rows = report["attempts"].as_array().expect("report rows");
    assert_eq!(rows.len(), 3, "{report}");

    // Everything it recorded is waiting for the hub.
    let backlog = outbox_backlog(&app).await;
    assert!(
        backlog >= 3 + 3,
        "at least the run, the attempts and the refusal: {backlog}"
    );
    let fleet = app.get("/api/v1/fleet").await.json();
    assert_eq!(fleet["connected"], false, "{fleet}");
    assert_eq!(fleet["shipped"], 0, "{fleet}");
    // The backlog shown follows the outbox while a batch hangs (it stayed
    // at what it was when the batch left, until the request timed out).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = app.get("/api/v1/fleet").await.json()["backlog"].clone();
        if shown == backlog {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog shown ({shown}) never followed the outbox ({backlog})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stopping does not wait for the hub either (well within the 30 s the
    // hanging requests would take).
    let started = Instant::now();
    app.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_whose_hub_is_down_shows_its_backlog_and_why_on_its_api() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let app = station_of_hub(&url, &dir).await;

    let run_id = flash_three_sticks(&app).await;
    assert_eq!(
        run_report(&app, run_id).await["attempts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The shipper tries again (at least every 5 s) and each try counts the
    // backlog: wait until the API shows what the outbox holds.
    let backlog = outbox_backlog(&app).await;
    assert!(backlog > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let fleet = loop {
        let fleet = app.get("/api/v1/fleet").await.json();
        if fleet["backlog"] == backlog && fleet["last_error"].is_string() {
            break fleet;
        }
        assert!(
            Instant::now() < deadline,
            "the API never showed a backlog of {backlog}: {fleet}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(fleet["connected"], false, "{fleet}");
    assert_eq!(fleet["hub"], url, "{fleet}");
    assert_eq!(fleet["station_id"], "test-station");
    assert!(
        fleet["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{fleet}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_in_no_fleet_says_so() {
    let app = spawn_app_with(|_| {}).await;
    assert_eq!(app.get("/api/v1/fleet").await.status, 404);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_a_stopped_station_left_are_removed_at_its_start_but_a_resumable_part_is_kept() {
    use flashrack_app::fleet::orders::{fetch_dir, partial_path};
    use flashrack_core::Sha256Digest;
    let dir = tempfile::tempdir().unwrap();
    let app = station_of_hub("http://127.0.0.1:9/", &dir).await;
    // What a station stopped while following orders leaves (as a kill -9
    // would): a verified image under its import name (renamed from its
    // .part, removed once imported: kept whole, for good, when the import
    // was cut), the .part of an image its cache holds (never fetched
    // again), and the .part of one it lacks (resumed by the next fetch).
    let fetches = fetch_dir(&app.data_dir);
    std::fs::create_dir_all(&fetches).unwrap();
    let lacking = Sha256Digest::of(b"an image the cache lacks");
    let importing = fetches.join(format!("{}-os.img", lacking.short()));
    let importing_part = fetches.join(format!("{}-backup.part", lacking.short()));
    let of_cached = partial_path(&app.data_dir, &app.image.sha256());
    let resumable = partial_path(&app.data_dir, &lacking);
    // Not the follower's: left alone.
    let foreign = fetches.join("notes.txt");
    let uppercase = fetches.join(format!(
        "{}.part",
        app.image.sha256().to_hex().to_uppercase()
    ));
    for (path, size) in [
        (&importing, 3 * MIB),
        (&importing_part, MIB),
        (&of_cached, MIB),
        (&resumable, 2 * MIB),
        (&foreign, 10),
        (&uppercase, 10),
    ] {
        std::fs::write(path, vec![7u8; size as usize]).unwrap();
    }
    let app = app.restart().await;
    assert!(!importing.exists(), "the cut import's image is still there");
    assert!(
        !importing_part.exists(),
        "the cut import of backup.part is still there"
    );
    assert!(
        !of_cached.exists(),
        "the cached image's .part is still there"
    );
    assert_eq!(
        std::fs::read(&resumable).unwrap(),
        vec![7u8; 2 * MIB as usize]
    );
    assert!(foreign.exists() && uppercase.exists());
    app.stop().await.unwrap();
}
