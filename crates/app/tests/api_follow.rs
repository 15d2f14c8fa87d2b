//! A run armed over the API with an image that is not cached yet (issue 14):
//! `POST /api/v1/runs` with `download` (a URL, checked as an import from a
//! URL is) or `file` (a file on the station, in the configured import
//! directories). The whole station (`spawn_app`: simulated rack, so the real
//! engine; records in SQLite; the web side on a real port) and a file server
//! on loopback that holds the download halfway until the test lets it go:
//! the sticks write while the server holds the rest (proven by the order of
//! events, not by timing), the run shows the import's progress, and the
//! records name the image once it is imported, as for `flash URL`. A wrong
//! digest fails every stick before any verdict and caches nothing; bad
//! requests get a 4xx with the reason and record no run.

use std::io::Write;

use flashrack_app::downloads::downloads_dir;
use flashrack_app::images::open_cache;
use flashrack_app::testing::{spawn_app, spawn_app_with, TestApp, View, WriteLockHolder};
use flashrack_core::Sha256Digest;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;
use flashrack_testkit::tasks::sent;
use flashrack_testkit::zips::{data_descriptor, streamed_zip};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn stick(capacity: usize) -> SimStickSpec {
    SimStickSpec::new("", capacity as u64)
}

/// Plugs a stick of `capacity` into port `t-n` (label `An`).
fn plug(app: &TestApp, n: u32, capacity: usize) {
    app.rack
        .plug(&format!("t-{n}"), &format!("S{n}"), stick(capacity))
        .unwrap();
}

/// The bytes at the start of the stick in port `t-n`.
fn stick_bytes(app: &TestApp, n: u32, len: usize) -> Vec<u8> {
    let (_, stick) = app.rack.stick_at(&format!("t-{n}")).expect("a stick");
    let mut bytes = std::fs::read(stick.path()).unwrap();
    bytes.truncate(len);
    bytes
}

fn progress_done(view: &View, label: &str) -> u64 {
    view.ports[label]["progress"]["done"].as_u64().unwrap_or(0)
}

/// Whether both ports are writing with bytes written, and no verdict.
fn both_writing(view: &View) -> bool {
    ["A1", "A2"]
        .iter()
        .all(|l| view.state(l) == "writing" && progress_done(view, l) > 0)
}

async fn run_report(app: &TestApp, run: u64) -> Value {
    let answer = app
        .get(&format!("/api/v1/runs/{run}/report?format=json"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

fn downloads_left(app: &TestApp) -> usize {
    std::fs::read_dir(downloads_dir(&app.data_dir)).map_or(0, |d| d.count())
}

/// Sends `POST /api/v1/runs` with `body` on a connection of its own and
/// returns it unanswered: dropping it is the client leaving.
async fn post_run_on_a_connection(app: &TestApp, body: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(app.address).await.unwrap();
    client
        .write_all(
            format!(
                "POST /api/v1/runs HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                app.address,
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    client
}

/// A station whose import directory (a new one, which lives as long as the
/// `TempDir` returned) holds `name`, a raw image of `size` bytes
/// (`image_bytes(size, seed, max_run)`): the station, the directory, the
/// file, its bytes and their digest.
async fn station_with_file(
    name: &str,
    size: usize,
    seed: u64,
    max_run: usize,
) -> (
    TestApp,
    tempfile::TempDir,
    std::path::PathBuf,
    Vec<u8>,
    Sha256Digest,
) {
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().to_path_buf();
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    let raw = image_bytes(size, seed, max_run);
    let sha = Sha256Digest::of(&raw);
    let path = dir.path().join(name);
    std::fs::write(&path, &raw).unwrap();
    (app, dir, path, raw, sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_armed_with_a_url_follows_the_download_and_records_the_image_as_flash_url_does() {
    let raw = image_bytes(24 * MIB, 81, 64 << 10);
    let sha = Sha256Digest::of(&raw);
    let file = gzip(&raw);
    let gate = file.len() / 2;
    let server = FileServer::start().await;
    server.serve(
        "/os.img.gz",
        Served::new(file.clone(), "gz-api-1").behaving(Behaviour::GatedAt(gate)),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 32 * MIB);
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let url = server.url("/os.img.gz");
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": url, "sha256": sha.to_hex() } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    let run_id = run["id"].as_u64().unwrap();
    assert_eq!(run["import"]["state"], "importing", "{run}");
    assert_eq!(run["import"]["source"], url.as_str(), "{run}");
    assert_eq!(run["image_name"], "os.img.gz", "{run}");
    // Until the import ends the run names no image: a provisional digest.
    assert_ne!(run["image_sha256"], sha.to_hex().as_str(), "{run}");
    assert_eq!(run["image_size"], 0, "a gzip's size is known at its end");
    let held = events
        .until("both sticks write while the download is held", |v| {
            both_writing(v) && v.run["import"]["done"].as_u64().unwrap_or(0) > 0
        })
        .await;
    // The server holds the second half: the sticks follow the download.
    assert!(server.body_bytes_sent() <= gate as u64);
    assert_eq!(
        held.run["import"]["total"],
        file.len() as u64,
        "{:?}",
        held.run
    );
    assert_eq!(held.run["import"]["state"], "importing");
    assert_eq!(held.run["passed"], 0);
    server.open_gate();
    let done = events
        .until("both sticks pass", |v| {
            v.state("A1") == "passed" && v.state("A2") == "passed"
        })
        .await;
    assert_eq!(
        done.run["image_sha256"],
        sha.to_hex().as_str(),
        "{:?}",
        done.run
    );
    assert_eq!(done.run["image_size"], raw.len() as u64);
    assert_eq!(done.run["import"]["state"], "done");
    assert_eq!(done.run["import"]["done"], file.len() as u64);
    for label in ["A1", "A2"] {
        // The verdict names the image, not the provisional digest.
        assert_eq!(
            done.ports[label]["verdict_run"]["image_sha256"],
            sha.to_hex().as_str()
        );
        assert_eq!(
            done.ports[label]["figures"]["verify_method"], "fingerprint",
            "{}",
            done.ports[label]
        );
    }
    assert_eq!(stick_bytes(&app, 1, raw.len()), raw);
    assert_eq!(stick_bytes(&app, 2, raw.len()), raw);
    // One request: the download was not started again.
    assert_eq!(server.requests_for("/os.img.gz").len(), 1);
    assert_eq!(downloads_left(&app), 0);
    let image = open_cache(&app.data_dir)
        .unwrap()
        .get(&sha)
        .unwrap()
        .expect("the image is cached");
    assert_eq!(
        image.meta.provenance.as_ref().map(|p| p.url.as_str()),
        Some(url.as_str())
    );
    let stop = app.post("/api/v1/runs/current/stop", None).await;
    assert_eq!(stop.status, 204, "{}", stop.body);
    // The records: the run's image, its provenance, both attempts.
    let report = run_report(&app, run_id).await;
    assert_eq!(
        report["run"]["image_sha256"],
        sha.to_hex().as_str(),
        "{report}"
    );
    assert_eq!(report["run"]["image_size_bytes"], raw.len() as u64);
    assert_eq!(report["run"]["passed"], 2);
    assert_eq!(report["image_provenance"]["url"], url.as_str(), "{report}");
    let runs = app.get("/api/v1/runs").await.json();
    let listed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run_id)
        .cloned()
        .expect("the run is listed");
    assert_eq!(listed["image_sha256"], sha.to_hex().as_str(), "{listed}");
    // The provisional image row is gone: the run names the real image.
    let images = app.get("/api/v1/images").await.json();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sha256"] == sha.to_hex().as_str()),
        "{images}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_fails_every_stick_of_an_api_run_before_any_verdict_and_caches_nothing() {
    let raw = image_bytes(16 * MIB, 82, 64 << 10);
    let file = gzip(&raw);
    let gate = file.len() / 2;
    let server = FileServer::start().await;
    server.serve(
        "/os.img.gz",
        Served::new(file, "gz-api-2").behaving(Behaviour::GatedAt(gate)),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 32 * MIB);
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let wrong = Sha256Digest::of(b"another image");
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.img.gz"), "sha256": wrong.to_hex() } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run_id = armed.json()["id"].as_u64().unwrap();
    events
        .until("both sticks write while the download is held", both_writing)
        .await;
    server.open_gate();
    let stopped = events
        .until("the run stops with the import's failure", |v| {
            v.run["stop_reason"] == "source_failed"
                && v.run["active"] == 0
                && ["A1", "A2"].iter().all(|l| v.state(l) == "failed")
        })
        .await;
    assert_eq!(stopped.run["passed"], 0, "{:?}", stopped.run);
    assert_eq!(stopped.run["interrupted"], 2, "{:?}", stopped.run);
    assert_eq!(stopped.run["import"]["state"], "failed");
    let error = stopped.run["import"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&wrong.to_hex()), "{error}");
    for label in ["A1", "A2"] {
        assert_eq!(
            stopped.ports[label]["verdict"]["reason"], "interrupted",
            "{}",
            stopped.ports[label]
        );
    }
    let cache = open_cache(&app.data_dir).unwrap();
    assert!(cache.get(&Sha256Digest::of(&raw)).unwrap().is_none());
    assert_eq!(cache.list().unwrap().len(), 1, "only the test's own image");
    assert_eq!(downloads_left(&app), 0, "the wrong bytes are not kept");
    let report = run_report(&app, run_id).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&wrong.to_hex()), "{report}");
    // The runs list names no image either (it gave the run's placeholder
    // digest, the digest of no image, where the report said null).
    assert!(report["run"]["image_sha256"].is_null(), "{report}");
    let runs = app.get("/api/v1/runs").await.json();
    let listed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run_id)
        .cloned()
        .expect("the run is listed");
    assert!(listed["image_sha256"].is_null(), "{listed}");
    assert_eq!(listed["image_imported"], false, "{listed}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_armed_with_a_file_on_the_station_follows_its_import_and_refuses_a_stick_too_small() {
    let (app, _dir, path, raw, sha) = station_with_file("station.img", 20 * MIB, 83, MIB).await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 16 * MIB);
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": path, "sha256": sha.to_hex() }, "verify": "hash" })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    assert_eq!(run["import"]["state"], "importing", "{run}");
    assert_eq!(run["image_name"], "station.img");
    // A raw file's size is known as its import begins: the guard judges by it.
    assert_eq!(run["image_size"], raw.len() as u64, "{run}");
    let done = events
        .until("A1 passes, A2 is refused", |v| {
            v.state("A1") == "passed" && v.state("A2") == "refused"
        })
        .await;
    assert_eq!(
        done.ports["A2"]["refusal"]["code"], "too_small",
        "{:?}",
        done.ports["A2"]
    );
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    assert_eq!(done.run["import"]["state"], "done");
    assert_eq!(done.run["import"]["done"], raw.len() as u64);
    assert_eq!(done.run["refused"], 1);
    assert_eq!(stick_bytes(&app, 1, raw.len()), raw);
    assert!(open_cache(&app.data_dir)
        .unwrap()
        .get(&sha)
        .unwrap()
        .is_some());
    // A stick plugged in once the import has ended reads the cached image.
    plug(&app, 3, 32 * MIB);
    let later = events
        .until("A3 passes", |v| v.state("A3") == "passed")
        .await;
    assert_eq!(
        later.ports["A3"]["verdict_run"]["image_sha256"],
        sha.to_hex().as_str()
    );
    assert_eq!(stick_bytes(&app, 3, raw.len()), raw);
    app.stop().await.unwrap();
}

/// The run's sticks start only once the station has recorded the run and
/// the guard has checked them: the import keeps its first chunks for them
/// meanwhile (`ImageFeed::reserve`), and they read nothing of the image
/// again from the import's file. Here the station's records are held by
/// another process for 600 ms after the request (within the feed's
/// `PACE_GIVE_UP` of 2 s), which holds the run's recording and so its
/// sticks' start: without the reservation the import runs to its end
/// meanwhile, and the sticks either read every data chunk but the last ones
/// back from the file or, started once the import has ended, read the
/// cached image instead of following it. A stick slow to open (300 ms)
/// finds its chunks held too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sticks_of_a_run_armed_with_a_file_read_nothing_again_while_the_station_arms_it() {
    let (app, _dir, path, raw, sha) = station_with_file("station.img", 40 * MIB, 85, MIB).await;
    let mut events = app.events().await;
    plug(&app, 1, 64 * MIB);
    app.rack
        .plug(
            "t-2",
            "S2",
            stick(64 * MIB).open_delay(std::time::Duration::from_millis(300)),
        )
        .unwrap();
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let lock = WriteLockHolder::take(&app.database());
    let release = async move {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        drop(lock);
    };
    let (armed, ()) = tokio::join!(
        app.post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": path, "sha256": sha.to_hex() } })),
        ),
        release
    );
    assert_eq!(armed.status, 201, "{}", armed.body);
    let done = events
        .until("both sticks pass, counted by the run", |v| {
            v.state("A1") == "passed" && v.state("A2") == "passed" && v.run["passed"] == 2
        })
        .await;
    assert_eq!(done.run["import"]["state"], "done", "{:?}", done.run);
    assert_eq!(
        done.run["import"]["reread_bytes"], 0,
        "the sticks read chunks again: {:?}",
        done.run
    );
    // Both followed the import (checked against its chunks' fingerprints),
    // rather than starting once it had ended, on the cached image.
    for label in ["A1", "A2"] {
        assert_eq!(
            done.ports[label]["figures"]["verify_method"], "fingerprint",
            "{}",
            done.ports[label]
        );
    }
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    assert_eq!(stick_bytes(&app, 1, raw.len()), raw);
    assert_eq!(stick_bytes(&app, 2, raw.len()), raw);
    app.stop().await.unwrap();
}

/// An audit of an image not cached yet (a gzip file on the station, of a
/// size known only at its end) reads each stick back once the import has
/// ended, as an audit of a cached image does, and writes nothing: a stick
/// holding the image passes as an audit, one holding something else fails
/// at the first differing byte, and one smaller than the image is judged
/// too small once its size is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_a_file_not_cached_yet_reads_each_stick_back_once_imported_and_writes_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().to_path_buf();
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    let raw = image_bytes(20 * MIB, 86, MIB);
    let sha = Sha256Digest::of(&raw);
    let path = dir.path().join("station.img.gz");
    std::fs::write(&path, gzip(&raw)).unwrap();
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 32 * MIB);
    plug(&app, 3, 16 * MIB);
    events
        .until("the sticks detected", |v| {
            ["A1", "A2", "A3"].iter().all(|l| v.state(l) == "detected")
        })
        .await;
    // A1 holds the image already (written by another station); A2 holds it
    // with one byte changed.
    let stick_file = |n: u32| {
        app.rack
            .stick_at(&format!("t-{n}"))
            .unwrap()
            .1
            .path()
            .to_path_buf()
    };
    {
        use std::os::unix::fs::FileExt;
        let a1 = std::fs::OpenOptions::new()
            .write(true)
            .open(stick_file(1))
            .unwrap();
        a1.write_all_at(&raw, 0).unwrap();
        let mut changed = raw.clone();
        let at = raw.iter().position(|&b| b != 0).unwrap() + 4096;
        changed[at] ^= 0x55;
        let a2 = std::fs::OpenOptions::new()
            .write(true)
            .open(stick_file(2))
            .unwrap();
        a2.write_all_at(&changed, 0).unwrap();
    }
    let before: Vec<Vec<u8>> = (1..=3)
        .map(|n| std::fs::read(stick_file(n)).unwrap())
        .collect();
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": path, "sha256": sha.to_hex() }, "audit": true })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    assert_eq!(run["import"]["state"], "importing", "{run}");
    assert_eq!(run["options"]["audit"], true, "{run}");
    let done = events
        .until("every stick judged, counted by the run", |v| {
            v.state("A1") == "passed"
                && v.state("A2") == "failed"
                && v.state("A3") == "failed"
                && v.run["failed"] == 2
        })
        .await;
    assert_eq!(done.run["import"]["state"], "done", "{:?}", done.run);
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    let a1 = &done.ports["A1"];
    assert_eq!(a1["figures"]["verify_method"], "audit", "{a1}");
    assert_eq!(a1["figures"]["bytes_written"], 0, "{a1}");
    assert_eq!(
        done.ports["A2"]["verdict"]["reason"], "verify_mismatch",
        "{}",
        done.ports["A2"]
    );
    assert_eq!(
        done.ports["A3"]["verdict"]["reason"], "too_small",
        "{}",
        done.ports["A3"]
    );
    for n in 1..=3 {
        assert!(
            std::fs::read(stick_file(n)).unwrap() == before[n as usize - 1],
            "stick {n} was written"
        );
    }
    app.stop().await.unwrap();
}

/// A sparse run of a URL not cached yet follows the download with the bmap
/// found beside the image on its server (fetched before the image, which
/// the import checks against it), as a sparse run of a cached image writes:
/// each stick gets the map's ranges only, reads them back and says how
/// much it skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_run_of_a_url_follows_the_download_with_the_bmap_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&image);
    let bmap = flashrack_testkit::bmap::bmaptool_create(&image);
    let sha = Sha256Digest::of(&raw);
    let server = FileServer::start().await;
    server.serve("/disk.img", Served::new(raw.clone(), "sparse-api"));
    server.serve(
        "/disk.img.bmap",
        Served::new(bmap.into_bytes(), "sparse-api-map"),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 4 * MIB);
    events
        .until("the stick is detected", |v| v.state("A1") == "detected")
        .await;
    let (_, stick) = app.rack.stick_at("t-1").unwrap();
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/disk.img"), "sha256": sha.to_hex() }, "sparse": true })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    assert_eq!(run["options"]["sparse"], true, "{run}");
    // The run says which map its sticks are written by.
    assert_eq!(
        run["options"]["sparse_map"], "bmap file disk.img.bmap (format 2.0)",
        "{run}"
    );
    assert_eq!(run["import"]["state"], "importing", "{run}");
    let done = events
        .until("A1 passes", |v| {
            v.state("A1") == "passed" && v.run["passed"] == 1
        })
        .await;
    assert_eq!(done.run["import"]["state"], "done", "{:?}", done.run);
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    // Blocks 0-9 and 100-101 hold data: 12 blocks of 4 KiB.
    let mapped = 12 * 4096u64;
    let figures = &done.ports["A1"]["figures"];
    assert_eq!(figures["bytes_written"], mapped, "{figures}");
    assert_eq!(
        figures["bytes_skipped"],
        raw.len() as u64 - mapped,
        "{figures}"
    );
    assert_eq!(figures["bytes_verified"], mapped, "{figures}");
    let medium = std::fs::read(stick.path()).unwrap();
    assert_eq!(&medium[..10 * 4096], &raw[..10 * 4096]);
    assert_eq!(
        &medium[100 * 4096..102 * 4096],
        &raw[100 * 4096..102 * 4096]
    );
    // Outside the map the stick holds what the capacity probe left there
    // (its markers and zeros across the stick), not the image's bytes: the
    // engine's sparse tests check it untouched where nothing probes.
    // The map was fetched once, before the image.
    assert_eq!(server.requests_for("/disk.img.bmap").len(), 1);
    // The image is cached with the map it was checked against.
    let cached = open_cache(&app.data_dir).unwrap();
    let kept = cached.block_map(&sha).unwrap().expect("the map is kept");
    assert_eq!(kept.ranges.mapped_bytes(), mapped);
    app.stop().await.unwrap();
}

/// A sparse run of a station file not cached yet follows its import with
/// the bmap beside it (`disk.img.bmap`, checked by the import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_run_of_a_station_file_follows_its_import_with_the_bmap_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().to_path_buf();
    let image = dir.path().join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&image);
    let bmap = flashrack_testkit::bmap::bmaptool_create(&image);
    std::fs::write(dir.path().join("disk.img.bmap"), bmap).unwrap();
    let sha = Sha256Digest::of(&raw);
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    let mut events = app.events().await;
    plug(&app, 1, 4 * MIB);
    events
        .until("the stick is detected", |v| v.state("A1") == "detected")
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": image, "sha256": sha.to_hex() }, "sparse": true })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    assert_eq!(
        armed.json()["import"]["state"],
        "importing",
        "{}",
        armed.body
    );
    let done = events
        .until("A1 passes", |v| {
            v.state("A1") == "passed" && v.run["passed"] == 1
        })
        .await;
    let mapped = 12 * 4096u64;
    let figures = &done.ports["A1"]["figures"];
    assert_eq!(figures["bytes_written"], mapped, "{figures}");
    assert_eq!(
        figures["bytes_skipped"],
        raw.len() as u64 - mapped,
        "{figures}"
    );
    let medium = std::fs::read(app.rack.stick_at("t-1").unwrap().1.path()).unwrap();
    assert_eq!(&medium[..10 * 4096], &raw[..10 * 4096]);
    assert_eq!(
        &medium[100 * 4096..102 * 4096],
        &raw[100 * 4096..102 * 4096]
    );
    app.stop().await.unwrap();
}

/// A zip archive from a URL is imported as it arrives when its entry's
/// sizes are in its local header: the sticks write while the server still
/// holds the archive's second half (its central directory among it), and
/// once the archive is whole the entry is checked against that directory
/// before any pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_armed_with_a_zip_url_writes_its_sticks_while_the_archive_downloads() {
    let raw = image_bytes(24 * MIB, 88, 64 << 10);
    let archive = {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("disk.img", options).unwrap();
        writer.write_all(&raw).unwrap();
        writer.finish().unwrap().into_inner()
    };
    // The entry's size, from its local header, is the run's size already.
    sticks_follow_a_zip_run(&raw, archive, raw.len() as u64).await;
}

/// So does a run follow a zip written to a stream, whose entry's sizes
/// follow its data (a data descriptor): deflated, it is inflated as it
/// arrives, its size unknown until its end (as a gzip's), and checked
/// against its descriptor and the central directory before any pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_armed_with_a_zip_written_to_a_stream_writes_its_sticks_while_it_downloads() {
    let raw = image_bytes(24 * MIB, 89, 64 << 10);
    // Checks that its file's local header has a data descriptor.
    let archive = streamed_zip(
        &[("disk.img", Some(&raw))],
        zip::CompressionMethod::Deflated,
    );
    sticks_follow_a_zip_run(&raw, archive, 0).await;
}

/// A run of a zip whose stored file's data holds what reads as its data
/// descriptor: its sticks follow the file up to that false end; once the
/// archive is whole its central directory lists the file longer, so both
/// sticks fail with the reason before any verdict, the run stops as a
/// failed import's does, saying so, and the import, read again from the
/// downloaded archive, leaves the image in the cache for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_stored_zip_made_to_seem_to_end_early_fails_its_sticks_and_caches_the_image() {
    let image = image_bytes(16 * MIB, 90, 64 << 10);
    let mut raw = image[..MIB].to_vec();
    raw.extend_from_slice(&data_descriptor(&raw.clone()));
    raw.extend_from_slice(b"PK\x03\x04");
    raw.extend_from_slice(&image[MIB..]);
    let sha = Sha256Digest::of(&raw);
    let archive = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    let gate = archive.len() / 2;
    let server = FileServer::start().await;
    server.serve(
        "/os.zip",
        Served::new(archive, "zip-made-2").behaving(Behaviour::GatedAt(gate)),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 32 * MIB);
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.zip"), "sha256": sha.to_hex() } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run_id = armed.json()["id"].as_u64().unwrap();
    events
        .until("both sticks write while the archive is held", both_writing)
        .await;
    server.open_gate();
    let stopped = events
        .until("the run stops, its import shown failed", |v| {
            v.run["stop_reason"] == "source_failed"
                && v.run["import"]["state"] == "failed"
                && v.run["active"] == 0
                && ["A1", "A2"].iter().all(|l| v.state(l) == "failed")
        })
        .await;
    assert_eq!(stopped.run["passed"], 0, "{:?}", stopped.run);
    assert_eq!(stopped.run["interrupted"], 2, "{:?}", stopped.run);
    assert_eq!(stopped.run["import"]["state"], "failed");
    let error = stopped.run["import"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("seemed to end after {MIB} bytes"))
            && error.contains("arm a run of it to write it whole"),
        "{error}"
    );
    for label in ["A1", "A2"] {
        assert_eq!(
            stopped.ports[label]["verdict"]["reason"], "interrupted",
            "{}",
            stopped.ports[label]
        );
    }
    let cached = open_cache(&app.data_dir)
        .unwrap()
        .get(&sha)
        .unwrap()
        .expect("the image is cached");
    assert_eq!(std::fs::read(&cached.path).unwrap(), raw);
    assert_eq!(downloads_left(&app), 0);
    let report = run_report(&app, run_id).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("seemed to end after"), "{report}");
    assert_eq!(server.requests_for("/os.zip").len(), 1);
    app.stop().await.unwrap();
}

/// Arms a run with `archive` (holding `raw` as `disk.img`) from a URL,
/// held at half the archive: both sticks write while it is held, the run's
/// size is `size` (0: unknown) when it is armed, and both pass once it is
/// whole.
async fn sticks_follow_a_zip_run(raw: &[u8], archive: Vec<u8>, size: u64) {
    let sha = Sha256Digest::of(raw);
    let gate = archive.len() / 2;
    let server = FileServer::start().await;
    server.serve(
        "/os.zip",
        Served::new(archive.clone(), "zip-api-1").behaving(Behaviour::GatedAt(gate)),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    plug(&app, 2, 32 * MIB);
    events
        .until("both sticks detected", |v| {
            v.state("A1") == "detected" && v.state("A2") == "detected"
        })
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.zip"), "sha256": sha.to_hex() } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    assert_eq!(run["image_size"], size, "{run}");
    let held = events
        .until("both sticks write while the archive is held", |v| {
            both_writing(v) && v.run["import"]["done"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(server.body_bytes_sent() <= gate as u64);
    assert_eq!(held.run["passed"], 0);
    server.open_gate();
    let done = events
        .until("both sticks pass, counted by the run", |v| {
            v.state("A1") == "passed" && v.state("A2") == "passed" && v.run["passed"] == 2
        })
        .await;
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    assert_eq!(stick_bytes(&app, 1, raw.len()), raw);
    assert_eq!(stick_bytes(&app, 2, raw.len()), raw);
    let image = open_cache(&app.data_dir)
        .unwrap()
        .get(&sha)
        .unwrap()
        .expect("the image is cached");
    assert_eq!(image.meta.zip_entry.as_deref(), Some("disk.img"));
    assert_eq!(image.meta.input_size, archive.len() as u64);
    assert_eq!(server.requests_for("/os.zip").len(), 1);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_while_it_follows_a_download_abandons_it_and_keeps_the_partial_file() {
    let raw = image_bytes(16 * MIB, 84, 64 << 10);
    let file = gzip(&raw);
    let gate = file.len() / 2;
    let server = FileServer::start().await;
    server.serve(
        "/os.img.gz",
        Served::new(file, "gz-api-3").behaving(Behaviour::GatedAt(gate)),
    );
    let app = spawn_app().await;
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    events
        .until("the stick is detected", |v| v.state("A1") == "detected")
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.img.gz") } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run_id = armed.json()["id"].as_u64().unwrap();
    events
        .until("the stick writes", |v| {
            v.state("A1") == "writing" && progress_done(v, "A1") > 0
        })
        .await;
    // Listed among the station's downloads as it runs, up to the gate, as
    // the download of its run.
    loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        if list[0]["held"] == gate as u64 {
            assert_eq!(list[0]["state"], "downloading", "{list}");
            assert_eq!(list[0]["run_id"], run_id, "{list}");
            assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stop = app.post("/api/v1/runs/current/stop", None).await;
    assert_eq!(stop.status, 204, "{}", stop.body);
    let stopped = events
        .until(
            "the run stops, the stick is interrupted, the import abandoned",
            |v| {
                v.run["stop_reason"] == "operator"
                    && v.state("A1") == "failed"
                    && v.run["import"]["state"] == "failed"
            },
        )
        .await;
    assert_eq!(stopped.run["passed"], 0, "{:?}", stopped.run);
    assert_eq!(
        stopped.ports["A1"]["verdict"]["reason"], "interrupted",
        "{}",
        stopped.ports["A1"]
    );
    let error = stopped.run["import"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("abandoned"), "{error}");
    // Nothing cached; the partial download is kept for a later import of
    // the URL to resume (its bytes and its validators).
    let cache = open_cache(&app.data_dir).unwrap();
    assert!(downloads_left(&app) > 0);
    assert!(cache.get(&Sha256Digest::of(&raw)).unwrap().is_none());
    // The run's download is one of the station's imports from URLs: listed
    // failed, saying it was abandoned, and resumable from its partial file.
    let list = app.get("/api/v1/images/downloads").await.json();
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["url"], server.url("/os.img.gz").as_str());
    assert_eq!(entries[0]["state"], "failed", "{list}");
    let said = entries[0]["error"].as_str().unwrap_or_default();
    assert!(
        said.contains("abandoned") && said.contains("resume"),
        "{said}"
    );
    let held = entries[0]["held"].as_u64().unwrap();
    assert_eq!(held, gate as u64, "{list}");
    assert_eq!(entries[0]["run_id"], run_id, "{list}");
    let id = entries[0]["id"].as_u64().unwrap();
    // The records keep which run it was for: listed so after a restart.
    let app = app.restart().await;
    let list = app.get("/api/v1/images/downloads").await.json();
    assert_eq!(list[0]["id"], id, "{list}");
    assert_eq!(list[0]["run_id"], run_id, "{list}");
    server.open_gate();
    let resumed = app
        .post(&format!("/api/v1/images/downloads/{id}/resume"), None)
        .await;
    assert_eq!(resumed.status, 202, "{}", resumed.body);
    let done = loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        let entry = list[0].clone();
        if !matches!(entry["state"].as_str(), Some("checking" | "downloading")) {
            break entry;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["image"], Sha256Digest::of(&raw).to_hex().as_str());
    assert_eq!(done["resumed_from"], held, "{done}");
    // Resumed without a run, it still says which run it was started for.
    assert_eq!(done["run_id"], run_id, "{done}");
    assert!(cache.get(&Sha256Digest::of(&raw)).unwrap().is_some());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_for_a_run_of_an_image_not_cached_get_a_clear_4xx_and_record_no_run() {
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().join("images");
    std::fs::create_dir(&import_dir).unwrap();
    std::fs::create_dir(import_dir.join("a-directory")).unwrap();
    let outside = dir.path().join("outside.img");
    std::fs::write(&outside, image_bytes(MIB, 85, 4096)).unwrap();
    // A station file with no block map beside it.
    let unmapped = import_dir.join("unmapped.img");
    std::fs::write(&unmapped, image_bytes(MIB, 87, 4096)).unwrap();
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    let server = FileServer::start().await;
    let url = server.url("/missing.img");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({ "download": { "url": url }, "colour": "red" }),
            400,
            "unknown field",
        ),
        (
            json!({ "download": { "url": url, "checksum": "x" } }),
            400,
            "unknown field",
        ),
        (
            json!({ "file": { "path": "/x.img", "mode": 1 } }),
            400,
            "unknown field",
        ),
        (
            json!({ "image": app.image.sha256().to_hex(), "download": { "url": url } }),
            400,
            "exactly one",
        ),
        (json!({ "verify": "hash" }), 400, "exactly one"),
        (
            json!({ "download": { "url": "ftp://example.invalid/os.img" } }),
            400,
            "http or https",
        ),
        (
            json!({ "download": { "url": url, "bmap": "/etc/os.bmap" } }),
            400,
            "bmap must be",
        ),
        (
            json!({ "download": { "url": url, "signature": "http://x/s.gpg" } }),
            400,
            "sha256sums",
        ),
        (
            json!({ "download": { "url": url, "sha256": "abc" } }),
            400,
            "sha256",
        ),
        // A sparse run needs its block map before the import: none beside
        // the image on its server (the server has nothing), none beside
        // the station file.
        (
            json!({ "download": { "url": url }, "sparse": true }),
            422,
            "needs its block map before the download",
        ),
        (
            json!({ "file": { "path": unmapped }, "sparse": true }),
            422,
            "needs its block map before the import",
        ),
        (
            json!({ "file": { "path": "images/os.img" } }),
            400,
            "absolute",
        ),
        (
            json!({ "file": { "path": import_dir.join("x.img"), "sha256": "12" } }),
            400,
            "",
        ),
        (
            json!({ "file": { "path": import_dir.join("missing.img") } }),
            404,
            "missing.img",
        ),
        (
            json!({ "file": { "path": import_dir.join("a-directory") } }),
            400,
            "a-directory",
        ),
        (json!({ "file": { "path": outside } }), 403, "import_dirs"),
        // The server has no such file: answered before any run is armed.
        (json!({ "download": { "url": url } }), 422, "not found"),
    ];
    for (body, status, words) in &cases {
        let answer = app.post("/api/v1/runs", Some(body.clone())).await;
        assert_eq!(answer.status, *status, "{body}: {}", answer.body);
        assert!(
            answer.body.contains(words),
            "{body}: {words:?} not in {}",
            answer.body
        );
    }
    // Nothing was armed or recorded.
    assert!(app.station.snapshot().run.is_none());
    assert_eq!(app.get("/api/v1/runs").await.json(), json!([]));
    // With a run armed, another is refused before anything is downloaded.
    app.arm().await;
    server.serve(
        "/os.img",
        Served::new(image_bytes(MIB, 86, 4096), "raw-api"),
    );
    let busy = app
        .post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.img") } })),
        )
        .await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(busy.body.contains("already armed"), "{}", busy.body);
    assert!(server.requests_for("/os.img").is_empty());
    app.stop().await.unwrap();
}

/// The refused raw runs in the station's event log, oldest first.
async fn run_refusals(app: &TestApp) -> Vec<Value> {
    use flashrack_store::{EventKind, Records, Store};
    let store = Store::open_read_only(&app.database(), "test-station")
        .await
        .unwrap();
    let refusals = store
        .recent_events(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.row.kind == EventKind::RunRefused)
        .map(|e| e.row.detail)
        .collect();
    store.close().await;
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_iso_followed_without_force_raw_fails_every_stick_and_is_in_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().to_path_buf();
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    // An innocent name: the refusal goes by content. A download is judged
    // by its head (no MBR, no GPT, an El Torito boot record) before a
    // stick gets a byte: its sticks fail then, and the import's end
    // records the refusal.
    let iso = dir.path().join("team-photos.img");
    flashrack_testkit::iso::windows_like_iso(&iso);
    // Padded to three of the import's 4 MiB chunks, the rest held at the
    // server's gate after the second (never opened): a stick that followed
    // the download would hold the first chunk, the ISO's data, and the run
    // would wait at the gate.
    let mut padded = std::fs::read(&iso).unwrap();
    padded.resize(10 << 20, 0);
    let server = FileServer::start().await;
    server.serve(
        "/team-photos.img",
        Served::new(padded, "iso").behaving(Behaviour::GatedAt(8 << 20)),
    );
    let mut events = app.events().await;
    plug(&app, 1, 64 * MIB);
    events
        .until("the stick is detected", |v| v.state("A1") == "detected")
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({
                "download": { "url": server.url("/team-photos.img") },
                "operator": "Ada"
            })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run_id = armed.json()["id"].as_u64().unwrap();
    let stopped = events
        .until("the run stops: the image would not boot written raw", |v| {
            v.run["stop_reason"] == "source_failed"
                && v.state("A1") == "failed"
                && v.run["import"]["state"] == "failed"
        })
        .await;
    let error = stopped.run["import"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("would not boot written raw"), "{error}");
    assert_eq!(stopped.ports["A1"]["verdict"]["reason"], "interrupted");
    assert_eq!(stopped.run["passed"], 0);
    // Not a sector of the ISO's data on the stick: refused by its head.
    // (The stick is not all zeros: its attempt's probe marks it before it
    // follows the image.)
    let iso_bytes = std::fs::read(&iso).unwrap();
    let stick = stick_bytes(&app, 1, iso_bytes.len());
    let written: Vec<usize> = iso_bytes
        .chunks(2048)
        .zip(stick.chunks(2048))
        .enumerate()
        .filter(|(_, (ours, theirs))| ours.iter().any(|&b| b != 0) && ours == theirs)
        .map(|(sector, _)| sector)
        .collect();
    assert_eq!(
        written,
        Vec::<usize>::new(),
        "sectors of the ISO on the stick"
    );
    let refusals = run_refusals(&app).await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["image_name"], "team-photos.img");
    assert_eq!(refusals[0]["options"]["operator"], "Ada");
    // Refused by its head, its import abandoned: no digest is known, and
    // the record names none (not the run's provisional one, no image's).
    assert!(
        refusals[0].get("image_sha256").is_none(),
        "{:?}",
        refusals[0]
    );
    let report = run_report(&app, run_id).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("would not boot written raw"), "{report}");

    // A raw file on the station is the image itself: it is known before a
    // stick is written, and refused as a cached image is (another ISO than
    // the cached one, so that its import has a pass to follow).
    let second = dir.path().join("holiday.img");
    let mut bytes = std::fs::read(&iso).unwrap();
    bytes.extend_from_slice(&[0u8; 2048]);
    std::fs::write(&second, &bytes).unwrap();
    plug(&app, 2, 64 * MIB);
    events
        .until("the second stick is detected", |v| {
            v.state("A2") == "detected"
        })
        .await;
    let refused = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": second }, "operator": "Bea" })),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("refused for a raw run"),
        "{}",
        refused.body
    );
    let station = app.get("/api/v1/station").await.json();
    let a2 = station["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "A2")
        .unwrap()
        .clone();
    assert_eq!(a2["state"], "detected", "never written: {a2}");
    assert_eq!(
        stick_bytes(&app, 2, bytes.len()),
        vec![0u8; bytes.len()],
        "not a byte of the ISO on the stick"
    );
    let refusals = run_refusals(&app).await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[1]["image_name"], "holiday.img");
    assert!(refusals[1]["image_sha256"].is_string(), "{:?}", refusals[1]);
    assert_eq!(refusals[1]["options"]["operator"], "Bea");
    let runs = app.get("/api/v1/runs").await.json();
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "no run armed: {runs}"
    );

    // Forced, the same image is written and passes (the cache knows it now:
    // armed as a cached image, with the force in its options).
    let forced = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": iso }, "force_raw": true })),
        )
        .await;
    assert_eq!(forced.status, 201, "{}", forced.body);
    assert_eq!(forced.json()["options"]["force_raw"], true);
    events
        .until("the forced run passes", |v| v.state("A1") == "passed")
        .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_file_larger_than_the_station_writes_is_refused_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().to_path_buf();
    let app = spawn_app_with(|c| {
        c.web.import_dirs = vec![import_dir.clone()];
        c.max_size = flashrack_core::ByteSize(4 * MIB as u64);
    })
    .await;
    let path = dir.path().join("big.img");
    std::fs::write(&path, image_bytes(8 * MIB, 87, MIB)).unwrap();
    let answer = app
        .post("/api/v1/runs", Some(json!({ "file": { "path": path } })))
        .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body.contains("big.img"), "{}", answer.body);
    assert!(app.station.snapshot().run.is_none());
    assert_eq!(app.get("/api/v1/runs").await.json(), json!([]));
    app.stop().await.unwrap();
}

/// Waits until `path`'s last change lies clearly in the past (as the cache
/// asks before it references a file in place: 150 ms with nanosecond
/// times, 3.2 s without).
fn settle(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    loop {
        let meta = std::fs::metadata(path).unwrap();
        let margin = if meta.ctime_nsec() == 0 {
            Duration::from_millis(3200)
        } else {
            Duration::from_millis(150)
        };
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let age = SystemTime::now().duration_since(ctime).unwrap_or_default();
        if age > margin {
            return;
        }
        std::thread::sleep(margin - age);
    }
}

/// Whether files in `dir` can be cloned (btrfs, XFS): then a raw import is
/// a reflink into the cache, never a reference.
fn clones(dir: &std::path::Path) -> bool {
    let (a, b) = (dir.join("probe-a"), dir.join("probe-b"));
    std::fs::write(&a, b"x").unwrap();
    let source = std::fs::File::open(&a).unwrap();
    let target = std::fs::File::create(&b).unwrap();
    let cloned = rustix::fs::ioctl_ficlone(&target, &source).is_ok();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    cloned
}

/// Every file under `dir` of `len` bytes.
fn files_of_len(dir: &std::path::Path, len: u64) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.len() == len {
                found.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_file_is_referenced_in_place_not_copied_and_a_change_after_the_import_is_noticed()
{
    let dir = tempfile::tempdir().unwrap();
    let import_dir = dir.path().join("images");
    std::fs::create_dir_all(&import_dir).unwrap();
    let app = spawn_app_with(|c| c.web.import_dirs = vec![import_dir.clone()]).await;
    if clones(&app.data_dir) {
        eprintln!("not run: this file system clones files (the import is a reflink)");
        app.stop().await.unwrap();
        return;
    }
    let raw = image_bytes(12 * MIB, 85, MIB);
    let sha = Sha256Digest::of(&raw);
    let path = import_dir.join("station.img");
    std::fs::write(&path, &raw).unwrap();
    settle(&path);
    let mut events = app.events().await;
    plug(&app, 1, 32 * MIB);
    events
        .until("the stick is detected", |v| v.state("A1") == "detected")
        .await;
    let armed = app
        .post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": path, "sha256": sha.to_hex() } })),
        )
        .await;
    assert_eq!(armed.status, 201, "{}", armed.body);
    let done = events
        .until("A1 passes", |v| v.state("A1") == "passed")
        .await;
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    assert_eq!(stick_bytes(&app, 1, raw.len()), raw);

    // Referenced where it is: nothing of its size in the data directory.
    let cache = open_cache(&app.data_dir).unwrap();
    let image = cache.get(&sha).unwrap().expect("cached");
    assert!(image.meta.reference.is_some(), "{:?}", image.meta);
    assert_eq!(image.path, std::fs::canonicalize(&path).unwrap());
    assert_eq!(
        files_of_len(&app.data_dir, raw.len() as u64),
        Vec::<std::path::PathBuf>::new(),
        "nothing copied"
    );

    // One byte changed in place: no longer the image. A run of it by its
    // digest is refused, and nothing is armed.
    let stop = app.post("/api/v1/runs/current/stop", None).await;
    assert_eq!(stop.status, 204, "{}", stop.body);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(100)).unwrap();
        file.write_all(&[raw[100] ^ 0xff]).unwrap();
    }
    assert_eq!(cache.get(&sha).unwrap(), None);
    let again = app
        .post("/api/v1/runs", Some(json!({ "image": sha.to_hex() })))
        .await;
    assert!(
        (400..500).contains(&again.status),
        "{} {}",
        again.status,
        again.body
    );
    assert_eq!(
        app.get("/api/v1/station").await.json()["run"]["armed"],
        false
    );
    app.stop().await.unwrap();
}

/// A run armed with a file not cached yet while the last run's stop is
/// being recorded (the records locked by another process) is not refused:
/// as a plain arm then, it waits for the stop's record and is armed once
/// the records hold it, its import started meanwhile (and the station says
/// so: `waiting_for_stop`, no longer `claimed`, once the import has begun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_file_asked_while_the_last_run_is_being_stopped_is_armed_once_its_stop_is_recorded(
) {
    let (app, _dir, path, raw, sha) = station_with_file("next.img", 8 * MIB, 89, MIB).await;
    let mut events = app.events().await;
    let first = app.arm().await;
    // A slow stick is being written when the run is stopped.
    app.rack
        .plug("t-1", "SLOW", stick(32 * MIB).write_speed(MIB as u64 / 4))
        .unwrap();
    events
        .until("A1 writing", |v| v.state("A1") == "writing")
        .await;
    let lock = WriteLockHolder::take(&app.database());
    let stopping = tokio::spawn({
        let station = app.station.clone();
        async move { station.stop_run("end of the batch").await }
    });
    events
        .until("the run shown stopping", |v| {
            v.run["armed"] == true && v.run["recording"] == true
        })
        .await;
    plug(&app, 2, 32 * MIB);
    events
        .until("A2 detected", |v| v.state("A2") == "detected")
        .await;
    // The follow waits for the stop's record (not a 409); the lock goes a
    // moment later.
    let release = async {
        // Its import begun, its arm waits for the stop's record: the API
        // says so (claimed only until then), as the dashboard shows it.
        // The request may not have reached the station at the first look
        // (no arming yet); once claimed it is never unclaimed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut claimed = false;
        loop {
            let station = app.get("/api/v1/station").await.json();
            let arming = &station["arming"];
            if arming["state"] == "waiting_for_stop" {
                assert_eq!(arming["image_name"], "next.img", "{station}");
                assert!(
                    arming["source"]
                        .as_str()
                        .is_some_and(|s| s.ends_with("next.img")),
                    "{station}"
                );
                assert!(arming["image_sha256"].is_string(), "{station}");
                assert_eq!(station["run"]["id"], first, "{station}");
                break;
            }
            if arming.is_null() {
                assert!(!claimed, "claimed, then no arming: {station}");
            } else {
                assert_eq!(arming["state"], "claimed", "{station}");
                claimed = true;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never shown waiting for the stop: {station}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let shown = app.station.snapshot().run.unwrap();
        assert!(
            shown.armed && shown.recording && shown.id.0 as u64 == first,
            "{shown:?}"
        );
        assert!(
            !stopping.is_finished(),
            "stopped before the records hold it"
        );
        drop(lock);
    };
    let (armed, ()) = tokio::join!(
        app.post(
            "/api/v1/runs",
            Some(json!({ "file": { "path": path, "sha256": sha.to_hex() } })),
        ),
        release
    );
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    let run_id = run["id"].as_u64().unwrap();
    assert_ne!(run_id, first, "{run}");
    assert_eq!(run["image_name"], "next.img", "{run}");
    assert!(run["import"].is_object(), "{run}");
    tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .expect("the stop is answered")
        .unwrap()
        .unwrap();
    let stopped = run_report(&app, first).await;
    assert_eq!(stopped["run"]["stop_reason"], "operator", "{stopped}");
    let done = events
        .until("A2 passes under the new run", |v| {
            v.state("A2") == "passed" && v.run["id"] == run_id && v.run["import"]["state"] == "done"
        })
        .await;
    assert_eq!(done.run["image_sha256"], sha.to_hex().as_str());
    assert_eq!(stick_bytes(&app, 2, raw.len()), raw);
    app.stop().await.unwrap();
}

/// A run of a URL asked while another run's start waits for the records
/// (another process holds their write lock) is refused as the station
/// refuses a second arm then (409, "being armed"), before anything is
/// downloaded: the server is never asked, and no import is listed. The run
/// being armed is armed once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_url_asked_while_another_is_being_armed_downloads_nothing_and_gets_409() {
    let raw = image_bytes(4 * MIB, 91, MIB);
    let server = FileServer::start().await;
    server.serve("/os.img", Served::new(raw, "arming-1"));
    let app = spawn_app().await;
    let lock = WriteLockHolder::take(&app.database());
    let follow = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app.station.snapshot().arming.is_none() {
            assert!(std::time::Instant::now() < deadline, "never shown arming");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let refused = app
            .post(
                "/api/v1/runs",
                Some(json!({ "download": { "url": server.url("/os.img") } })),
            )
            .await;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert!(refused.body.contains("being armed"), "{}", refused.body);
        assert!(server.requests().is_empty(), "{:?}", server.requests());
        assert_eq!(downloads_left(&app), 0);
        drop(lock);
    };
    let (armed, ()) = tokio::join!(app.arm(), follow);
    let run = app.station.snapshot().run.unwrap();
    assert_eq!(run.id.0 as u64, armed);
    assert!(run.armed && run.import.is_none(), "{run:?}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    app.stop().await.unwrap();
}

/// A plain arm of the app's cached image, as the station's handle takes it.
fn arm_request(app: &TestApp) -> flashrack_station::ArmRequest {
    flashrack_station::ArmRequest {
        image: flashrack_engine::SourceImage {
            path: app.image.path.clone(),
            manifest: app.image.manifest.clone(),
            referenced: app.image.meta.reference.is_some(),
        },
        image_name: app.image.meta.original_name.clone(),
        options: flashrack_station::RunOptions::default(),
        sparse: None,
    }
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A run of a URL asked while a plain arm waits for the last run's stop to
/// be recorded (another process holds the records' write lock) is refused
/// as the station refuses a second arm (409, "being armed"), at once and
/// before anything is downloaded: the server is never asked, no import is
/// listed. The waiting arm is armed once the records hold the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_url_asked_while_an_arm_waits_for_the_last_runs_stop_downloads_nothing_and_gets_409(
) {
    let raw = image_bytes(4 * MIB, 93, MIB);
    let server = FileServer::start().await;
    server.serve("/os.img", Served::new(raw, "held-arm-1"));
    let app = spawn_app().await;
    let first = app.arm().await;
    let lock = WriteLockHolder::take(&app.database());
    let stopping = tokio::spawn({
        let station = app.station.clone();
        async move { station.stop_run("end of the batch").await }
    });
    eventually("shown stopping", || {
        app.station
            .snapshot()
            .run
            .is_some_and(|r| r.armed && r.recording)
    })
    .await;
    // A plain arm waits for the stop's record; it reaches the station
    // before the follow.
    let waiting = sent({
        let station = app.station.clone();
        let request = arm_request(&app);
        async move { station.arm(request).await }
    })
    .await;
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        assert!(!waiting.is_finished(), "armed before the stop's record");
        drop(lock);
    };
    let (refused, ()) = tokio::join!(
        app.post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": server.url("/os.img") } })),
        ),
        release
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert!(refused.body.contains("being armed"), "{}", refused.body);
    assert_eq!(downloads_left(&app), 0);
    let list = app.get("/api/v1/images/downloads").await.json();
    assert_eq!(list, json!([]), "{list}");
    let next = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("the waiting arm is answered")
        .unwrap()
        .unwrap();
    assert_ne!(next.id.0 as u64, first);
    assert!(next.import.is_none(), "{next:?}");
    tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .expect("the stop is answered")
        .unwrap()
        .unwrap();
    let shown = app.station.snapshot().run.unwrap();
    assert_eq!(shown.id, next.id, "{shown:?}");
    app.stop().await.unwrap();
}

/// A run armed (a plain arm over the API) while a run of a URL waits for
/// its download's first bytes is refused (409, "being armed"): the station
/// holds the right to arm for the follow, whose download has begun, and its
/// snapshot says which run is being armed. The follow is armed once its
/// bytes come; the server is asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm_asked_while_a_run_of_a_url_waits_for_its_first_bytes_gets_409_and_the_follow_is_armed(
) {
    let raw = image_bytes(4 * MIB, 95, MIB);
    let sha = Sha256Digest::of(&raw);
    let server = FileServer::start().await;
    server.serve(
        "/os.img",
        Served::new(raw.clone(), "claimed-1").behaving(Behaviour::GatedAt(0)),
    );
    let app = spawn_app().await;
    let url = server.url("/os.img");
    let meanwhile = async {
        eventually("asked for the download", || {
            !server.requests_for("/os.img").is_empty()
        })
        .await;
        let refused = app
            .post(
                "/api/v1/runs",
                Some(json!({ "image": app.image.sha256().to_hex() })),
            )
            .await;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert!(refused.body.contains("being armed"), "{}", refused.body);
        // The dashboard's snapshot says which run is being armed, and
        // that nothing is recorded yet.
        let station = app.get("/api/v1/station").await.json();
        assert_eq!(station["arming"]["state"], "claimed", "{station}");
        assert_eq!(station["arming"]["source"], url.as_str(), "{station}");
        assert_eq!(station["arming"]["image_name"], "os.img", "{station}");
        assert!(station["arming"].get("image_sha256").is_none(), "{station}");
        assert!(station["run"].is_null(), "{station}");
        server.open_gate();
    };
    let (armed, ()) = tokio::join!(
        app.post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": url, "sha256": sha.to_hex() } })),
        ),
        meanwhile
    );
    assert_eq!(armed.status, 201, "{}", armed.body);
    let run = armed.json();
    assert_eq!(run["import"]["source"], url.as_str(), "{run}");
    let shown = app.station.snapshot();
    assert_eq!(
        shown.run.as_ref().map(|r| r.id.0 as u64),
        run["id"].as_u64(),
        "{shown:?}"
    );
    assert!(shown.arming.is_none(), "{shown:?}");
    assert_eq!(server.requests_for("/os.img").len(), 1);
    app.stop().await.unwrap();
}

/// A run of a URL whose client leaves while its download waits for its
/// first bytes lets the station go: its claim to arm is released, nothing
/// is shown being armed, and a plain arm is armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_url_whose_client_leaves_before_its_first_bytes_leaves_the_station_free() {
    let raw = image_bytes(4 * MIB, 97, MIB);
    let server = FileServer::start().await;
    server.serve(
        "/os.img",
        Served::new(raw, "left-1").behaving(Behaviour::GatedAt(0)),
    );
    let app = spawn_app().await;
    let body = json!({ "download": { "url": server.url("/os.img") } }).to_string();
    let client = post_run_on_a_connection(&app, &body).await;
    eventually("asked for the download", || {
        !server.requests_for("/os.img").is_empty()
    })
    .await;
    assert!(
        app.station.snapshot().arming.is_some(),
        "the follow's run is shown being armed"
    );
    drop(client);
    eventually("the claim released", || {
        app.station.snapshot().arming.is_none()
    })
    .await;
    let armed = app.arm().await;
    let run = app.station.snapshot().run.unwrap();
    assert_eq!(run.id.0 as u64, armed);
    assert!(run.import.is_none(), "{run:?}");
    server.open_gate();
    app.stop().await.unwrap();
}

/// A run of a station file whose client leaves once its arm has reached the
/// station (the records, locked by another process, taking its start) is
/// armed all the same, as any arm whose caller left: and its import goes on
/// to its end, the run naming the image, instead of being abandoned under a
/// run shown importing for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_file_whose_client_leaves_while_its_start_is_recorded_is_imported_to_its_end() {
    let (app, _dir, path, _raw, sha) = station_with_file("left.img", 8 * MIB, 99, MIB).await;
    let lock = WriteLockHolder::take(&app.database());
    let body = json!({ "file": { "path": path } }).to_string();
    let client = post_run_on_a_connection(&app, &body).await;
    // Its import has begun and its arm reached the station: the records
    // take the run's start.
    eventually("the run's start being recorded", || {
        app.station
            .snapshot()
            .arming
            .is_some_and(|a| a.state == flashrack_station::ArmingState::Recording)
    })
    .await;
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(lock);
    let mut events = app.events().await;
    let done = events
        .until("the run's import ends", |v| {
            v.run["import"]["state"] == "done" || v.run["import"]["state"] == "failed"
        })
        .await;
    assert_eq!(done.run["import"]["state"], "done", "{:?}", done.run);
    assert_eq!(
        done.run["image_sha256"],
        sha.to_hex().as_str(),
        "{:?}",
        done.run
    );
    assert_eq!(done.run["armed"], true, "{:?}", done.run);
    app.stop().await.unwrap();
}

/// The operator stops a run of a URL whose server has sent nothing yet (a
/// stall, a server that fails): the stop is answered at once (204), the run
/// being armed is dropped (its arm answered 409, nothing recorded, nothing
/// shown being armed), and bytes that come later arm nothing. Before, the
/// stop waited for that run (minutes, for a stalled server: the API gave
/// up with 408) and was applied to it once armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_a_run_of_a_url_waits_for_its_first_bytes_stops_the_arming_at_once() {
    let raw = image_bytes(4 * MIB, 96, MIB);
    let sha = Sha256Digest::of(&raw);
    let server = FileServer::start().await;
    server.serve(
        "/os.img",
        Served::new(raw.clone(), "stopped-1").behaving(Behaviour::GatedAt(0)),
    );
    let app = spawn_app().await;
    let url = server.url("/os.img");
    let meanwhile = async {
        eventually("asked for the download", || {
            !server.requests_for("/os.img").is_empty()
        })
        .await;
        let station = app.get("/api/v1/station").await.json();
        assert_eq!(station["arming"]["state"], "claimed", "{station}");
        let stopped = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            app.post(
                "/api/v1/runs/current/stop",
                Some(json!({ "reason": "wrong image" })),
            ),
        )
        .await
        .expect("the stop is answered at once");
        assert_eq!(stopped.status, 204, "{}", stopped.body);
    };
    let (armed, ()) = tokio::join!(
        app.post(
            "/api/v1/runs",
            Some(json!({ "download": { "url": url, "sha256": sha.to_hex() } })),
        ),
        meanwhile
    );
    assert_eq!(armed.status, 409, "{}", armed.body);
    assert!(
        armed
            .body
            .contains("stopped by the operator while it was being armed"),
        "{}",
        armed.body
    );
    let station = app.get("/api/v1/station").await.json();
    assert!(station["arming"].is_null(), "{station}");
    assert!(station["run"].is_null(), "{station}");
    // The bytes come after all: nothing is armed by them.
    server.open_gate();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(app.station.snapshot().run.is_none());
    assert_eq!(app.get("/api/v1/runs").await.json(), json!([]));
    // The station is free: a plain arm is armed.
    let plain = app
        .post(
            "/api/v1/runs",
            Some(json!({ "image": app.image.sha256().to_hex() })),
        )
        .await;
    assert_eq!(plain.status, 201, "{}", plain.body);
    app.stop().await.unwrap();
}
