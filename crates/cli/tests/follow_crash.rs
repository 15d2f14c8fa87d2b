//! A run's download cut by a crash (issue 14): a run armed over the API with
//! `download` follows the import of a URL the test's server holds halfway;
//! the station (the demo, a real process) is killed with SIGKILL. The
//! download is listed while it runs (`GET /api/v1/images/downloads`), and
//! after the restart it is listed `interrupted` with the bytes its partial
//! file holds of the declared length, as an image-library import cut by a
//! crash is; resuming it (`POST /api/v1/images/downloads/{id}/resume`)
//! continues from those bytes (a `Range` request) to the image's digest.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use flashrack_core::Sha256Digest;
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use serde_json::{json, Value};

mod common;

const MIB: usize = 1 << 20;

/// `flashrack demo --no-arm` on a free port, killed (SIGKILL) on drop.
struct Station {
    child: Child,
    base: String,
}

impl Station {
    fn start(data_dir: &Path) -> Station {
        let (child, base) = common::start_demo(
            data_dir,
            &["--image-size", "4MiB", "--ports", "4", "--no-arm"],
        );
        Station { child, base }
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}/api/v1{path}", self.base))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    /// The status and the JSON answer of a POST.
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        match ureq::post(&format!("{}/api/v1{path}", self.base)).send_json(body) {
            Ok(answer) => (answer.status(), answer.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(status, answer)) => {
                (status, answer.into_json().unwrap_or(Value::Null))
            }
            Err(error) => panic!("{error}"),
        }
    }

    /// The downloads list once `done` holds for it (looked at every 50 ms,
    /// for at most two minutes).
    fn downloads_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = self.get("/images/downloads");
            let list = list.as_array().unwrap();
            if done(list) {
                return list.clone();
            }
            assert!(Instant::now() < deadline, "{what}: {list:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The total the records keep for import `id` of the station in `data_dir`
/// (read beside the running station: what it has committed).
fn recorded_total(runtime: &tokio::runtime::Runtime, data_dir: &Path, id: i64) -> Option<u64> {
    runtime.block_on(async {
        let store = flashrack_store::Store::open_read_only(&data_dir.join("flashrack.db"), "demo")
            .await
            .ok()?;
        let rows = store.url_imports().await.ok()?;
        store.close().await;
        rows.into_iter().find(|r| r.id == id)?.total
    })
}

#[test]
fn a_runs_download_cut_by_a_crash_is_listed_interrupted_and_resumes_to_its_digest() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bytes = flashrack_testkit::image_bytes(8 * MIB, 93, MIB);
    let sha = Sha256Digest::of(&bytes);
    let server = runtime.block_on(FileServer::start());
    // The first half, then nothing until the test opens the gate.
    server.serve(
        "/os.img",
        Served::new(bytes.clone(), "os-1").behaving(Behaviour::GatedAt(4 * MIB)),
    );
    let url = server.url("/os.img");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");

    // First life: the run follows the download, which is listed as it runs.
    let station = Station::start(&data_dir);
    let (status, run) = station.post(
        "/runs",
        json!({ "download": { "url": url, "sha256": sha.to_hex() } }),
    );
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["import"]["source"], url.as_str(), "{run}");
    let list = station.downloads_until("the run's download is never listed at its half", |l| {
        l.len() == 1 && l[0]["held"] == 4 * MIB as u64
    });
    assert_eq!(list[0]["url"], url.as_str());
    assert_eq!(list[0]["state"], "downloading");
    let id = list[0]["id"].as_u64().unwrap();
    // The declared length is in the records before the kill (written as
    // soon as the answer declared it), so the listing after it can say it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorded_total(&runtime, &data_dir, id as i64) != Some(8 * MIB as u64) {
        assert!(Instant::now() < deadline, "the total was never recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(station); // SIGKILL: nothing more is recorded

    // Second life: listed interrupted, with what the partial file holds.
    let station = Station::start(&data_dir);
    let list = station.get("/images/downloads");
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["id"], id);
    assert_eq!(entries[0]["url"], url.as_str());
    assert_eq!(entries[0]["state"], "interrupted", "{list}");
    assert_eq!(entries[0]["held"], 4 * MIB as u64, "{list}");
    assert_eq!(entries[0]["total"], 8 * MIB as u64, "{list}");
    // The run that followed it ended with the crash; the image is not cached.
    let images = station.get("/images");
    assert!(
        !images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sha256"] == sha.to_hex().as_str()),
        "{images}"
    );

    server.open_gate();
    let (status, resumed) = station.post(&format!("/images/downloads/{id}/resume"), json!({}));
    assert_eq!(status, 202, "{resumed}");
    let list = station.downloads_until("the resumed download never ended", |l| {
        l.iter().any(|d| {
            d["id"] == id && !matches!(d["state"].as_str(), Some("checking" | "downloading"))
        })
    });
    let done = list.iter().find(|d| d["id"] == id).unwrap();
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["image"], sha.to_hex().as_str());
    assert_eq!(done["resumed_from"], 4 * MIB as u64);
    let images = station.get("/images");
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sha256"] == sha.to_hex().as_str()),
        "{images}"
    );
    let requests = server.requests_for("/os.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", 4 * MIB).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"os-1\""));
}
