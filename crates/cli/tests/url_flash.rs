//! `flashrack flash URL TARGETS…` against a real HTTP server on loopback:
//! the exit status, the JSON summary, the run's report and the cache agree,
//! for a download that passes and for one whose digest is not the one
//! expected (every target interrupted, exit 2, nothing cached). That the
//! targets are written while the download goes on is proven by the order of
//! events in `crates/app/tests/url_flash.rs`.

mod common;

use std::path::Path;

use common::{flashrack, text};
use flashrack_core::Sha256Digest;
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};

/// Runs the binary off the runtime's workers (the server answers on them).
async fn flashrack_async(data: &Path, args: Vec<String>) -> std::process::Output {
    let data = data.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flashrack(&data, &args)
    })
    .await
    .unwrap()
}

fn flash_args(url: &str, targets: &[&Path], extra: &[&str]) -> Vec<String> {
    let mut args = vec!["flash".to_string(), url.to_string()];
    args.extend(targets.iter().map(|t| t.display().to_string()));
    args.extend(["--json", "--quiet"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn json_of(data: &Path, args: &[&str]) -> serde_json::Value {
    let out = flashrack_async(data, args.iter().map(|s| s.to_string()).collect()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_flashed_from_the_command_line_exits_0_and_its_output_report_and_cache_agree() {
    let bytes = flashrack_testkit::image_bytes(9 << 20, 71, 1 << 20);
    let sha = Sha256Digest::of(&bytes).to_hex();
    let server = FileServer::start().await;
    server.serve("/os-2.img", Served::new(bytes.clone(), "os-2"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let url = server.url("/os-2.img");
    let out = flashrack_async(&data, flash_args(&url, &[&a, &b], &["--sha256", &sha])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["image_sha256"], sha.as_str());
    assert_eq!(summary["passed"], 2, "{summary}");
    for target in summary["targets"].as_array().unwrap() {
        assert_eq!(target["read_back_sha256"], sha.as_str(), "{target}");
    }
    for file in [&a, &b] {
        assert_eq!(&std::fs::read(file).unwrap()[..bytes.len()], &bytes[..]);
    }
    let report = json_of(&data, &["report", "run", "1", "--format", "json"]).await;
    assert_eq!(report["run"]["image_sha256"], sha.as_str(), "{report}");
    assert_eq!(report["run"]["image_name"], "os-2.img");
    assert_eq!(report["run"]["passed"], 2);
    assert_eq!(report["run"]["stop_reason"], "completed");
    let images = json_of(&data, &["image", "list", "--json"]).await;
    let images = images.as_array().unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["sha256"], sha.as_str());
    assert_eq!(server.requests_for("/os-2.img").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_whose_digest_is_wrong_exits_2_names_it_and_records_no_pass() {
    let bytes = flashrack_testkit::image_bytes(9 << 20, 72, 1 << 20);
    let server = FileServer::start().await;
    server.serve("/os-3.img", Served::new(bytes.clone(), "os-3"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let wrong = Sha256Digest::of(b"another image").to_hex();
    let url = server.url("/os-3.img");
    let out = flashrack_async(&data, flash_args(&url, &[&a, &b], &["--sha256", &wrong])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&wrong),
        "names the digest expected: {stderr}"
    );
    assert!(stderr.contains(&url), "names the URL: {stderr}");
    let report = json_of(&data, &["report", "run", "1", "--format", "json"]).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
    let images = json_of(&data, &["image", "list", "--json"]).await;
    assert!(images.as_array().unwrap().is_empty(), "{images}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_list_is_refused_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = dir.path().join("x.img");
    std::fs::write(&image, vec![1u8; 1 << 20]).unwrap();
    let a = dir.path().join("a.img");
    let out = flashrack_async(
        &data,
        flash_args(
            image.to_str().unwrap(),
            &[&a],
            &["--sha256sums", "http://127.0.0.1:9/SHA256SUMS"],
        ),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--sha256sums is for URLs"),
        "{}",
        text(&out.stderr)
    );
    assert!(!a.exists());
}

/// Whether `target` holds no byte of an image: never made, or all zeros.
fn holds_nothing(target: &Path) -> bool {
    match std::fs::read(target) {
        Ok(bytes) => bytes.iter().all(|&b| b == 0),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The details of the event log's refused runs, oldest first.
async fn refusals(data: &Path) -> Vec<serde_json::Value> {
    use flashrack_store::{EventKind, Records, Store};
    let store = Store::open_read_only(&data.join("flashrack.db"), "station-1")
        .await
        .unwrap();
    let events = store.recent_events(100).await.unwrap();
    store.close().await;
    events
        .into_iter()
        .filter(|e| e.row.kind == EventKind::RunRefused)
        .map(|e| e.row.detail)
        .collect()
}

/// The image names the event log's refused runs give, oldest first.
async fn refused_runs(data: &Path) -> Vec<String> {
    refusals(data)
        .await
        .iter()
        .map(|d| d["image_name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The digests the event log's refused runs give, oldest first: `None`
/// where a refusal names none (the image refused by its head, its import
/// abandoned before its digest was known).
async fn refused_digests(data: &Path) -> Vec<Option<String>> {
    refusals(data)
        .await
        .iter()
        .map(|d| d["image_sha256"].as_str().map(str::to_string))
        .collect()
}

/// An El Torito-only ISO (laid out as a Windows installer: no MBR, no GPT,
/// an innocent name) the cache has not seen, flashed from its URL and from
/// an `.xz` of it, is judged by its head (the first 64 KiB the download or
/// the decoder produces) before a target gets a byte: no byte of it reaches
/// the targets, the refusal is printed (exit 2) and recorded as for an
/// image refused at its import's end (`run_refused`, the run stopped as
/// `source_failed`). A hybrid ISO (an MBR at 0) from its URL is written and
/// passes. Before, both were followed: the targets got the whole ISO, then
/// failed at the import's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_el_torito_only_iso_from_a_url_or_an_xz_file_is_refused_before_a_target_gets_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let iso = dir.path().join("family-album.img");
    flashrack_testkit::iso::windows_like_iso(&iso);
    // Padded to three of the import's 4 MiB chunks, the rest held at the
    // server's gate after the second: a target that followed the download
    // would hold the first chunk (the ISO's data) while the gate is shut.
    let mut bytes = std::fs::read(&iso).unwrap();
    bytes.resize(10 << 20, 0);
    let server = FileServer::start().await;
    server.serve(
        "/family-album.img",
        Served::new(bytes.clone(), "album").behaving(Behaviour::GatedAt(8 << 20)),
    );
    let a = dir.path().join("a.img");
    let url = server.url("/family-album.img");
    let started = std::time::Instant::now();
    let flashing = tokio::spawn({
        let (data, args) = (data.clone(), flash_args(&url, &[&a], &[]));
        async move { flashrack_async(&data, args).await }
    });
    // Refused by its head, the flash ends with the gate shut; the gate is
    // opened only if it wrote the target first or took too long.
    while !flashing.is_finished()
        && holds_nothing(&a)
        && started.elapsed() < std::time::Duration::from_secs(20)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ended_at_the_gate = flashing.is_finished();
    server.open_gate();
    let out = flashing.await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused for a raw run"), "{stderr}");
    assert!(
        holds_nothing(&a),
        "not a byte of the ISO on {a:?}: {stderr}"
    );
    assert!(
        ended_at_the_gate,
        "refused before the download ended: {stderr}"
    );
    assert_eq!(refused_runs(&data).await, ["family-album.img"]);
    let report = json_of(&data, &["report", "run", "1", "--format", "json"]).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0, "{report}");
    let detail = report["run"]["stop_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("would not boot written raw"), "{report}");

    // Another ISO, compressed: its size is in the .xz index, so the target
    // follows its decompression.
    let other = dir.path().join("scans.img");
    let mut other_bytes = bytes.clone();
    other_bytes.extend_from_slice(&[0u8; 4096]);
    // Data in its last chunk too (not all zeros: a decoder's chunks are
    // followed whole).
    let end = other_bytes.len() - 4096;
    other_bytes[end..].fill(0x5a);
    std::fs::write(&other, &other_bytes).unwrap();
    let status = std::process::Command::new("xz")
        .args(["-0", "-f"])
        .arg(&other)
        .status()
        .expect("xz (scripts/setup installs it)");
    assert!(status.success());
    let xz = dir.path().join("scans.img.xz");
    let b = dir.path().join("b.img");
    let out = flashrack_async(&data, flash_args(xz.to_str().unwrap(), &[&b], &[])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused for a raw run"), "{stderr}");
    assert!(
        holds_nothing(&b),
        "not a byte of the ISO on {b:?}: {stderr}"
    );
    // Oldest first.
    assert_eq!(
        refused_runs(&data).await,
        ["family-album.img", "scans.img.xz"]
    );
    // A refusal names the image's digest, or none where the import was
    // abandoned before it was known: never the run's provisional digest,
    // which is no image's.
    let digests = refused_digests(&data).await;
    let images = [Sha256Digest::of(&bytes), Sha256Digest::of(&other_bytes)];
    for (digest, image) in digests.iter().zip(images) {
        assert!(
            digest.as_deref().is_none_or(|d| d == image.to_hex()),
            "a digest of no image: {digests:?}"
        );
    }
    assert_eq!(digests[0], None, "the download was held at the gate");

    // A hybrid ISO (an MBR at 0): written as it arrives, and it passes.
    let hybrid = dir.path().join("live.img");
    flashrack_testkit::iso::hybrid_linux_iso(&hybrid);
    let hybrid_bytes = std::fs::read(&hybrid).unwrap();
    server.serve("/live.img", Served::new(hybrid_bytes.clone(), "live"));
    let c = dir.path().join("c.img");
    let out = flashrack_async(&data, flash_args(&server.url("/live.img"), &[&c], &[])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["passed"], 1, "{summary}");
    assert_eq!(
        &std::fs::read(&c).unwrap()[..hybrid_bytes.len()],
        &hybrid_bytes[..]
    );
}
