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
use flashrack_testkit::http_files::{FileServer, Served};

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
