//! A zip archive from a URL through the binary (issue 14 §1): `image import
//! URL` of an archive of two files refuses to guess (exit 2, naming both)
//! and imports the one `--zip-entry` names; `flash URL --zip-entry NAME`
//! writes that file, and its output, its report and the cache agree;
//! `--zip-entry` with a cached image is refused. Against a real HTTP server
//! on loopback.

mod common;

use std::io::{Cursor, Write};
use std::path::Path;

use common::{flashrack, text};
use flashrack_core::Sha256Digest;
use flashrack_testkit::http_files::{FileServer, Served};

/// Runs the binary off the runtime's workers (the server answers on them).
async fn run(data: &Path, args: &[&str]) -> std::process::Output {
    let data = data.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flashrack(&data, &args)
    })
    .await
    .unwrap()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_from_a_url_is_imported_and_flashed_by_the_file_it_names() {
    let a = flashrack_testkit::image_bytes(3 << 20, 81, 1 << 16);
    let b = flashrack_testkit::image_bytes(5 << 20, 82, 1 << 16);
    let (sha_a, sha_b) = (Sha256Digest::of(&a).to_hex(), Sha256Digest::of(&b).to_hex());
    let server = FileServer::start().await;
    server.serve(
        "/pair.zip",
        Served::new(zip_of(&[("a.img", &a), ("b.img", &b)]), "pair-1"),
    );
    let url = server.url("/pair.zip");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // No name: exit 2, the archive's files named, nothing cached.
    let out = run(&data, &["image", "import", &url]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(a.img, b.img)"), "{stderr}");
    // No checksum list was given: none is said to be checked.
    assert!(!stderr.contains("checksum list"), "{stderr}");
    let list = run(&data, &["image", "list", "--json"]).await;
    let images: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(images.as_array().unwrap().is_empty(), "{images}");

    // Named: imported, as the JSON says.
    let out = run(
        &data,
        &["image", "import", &url, "--zip-entry", "b.img", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(imported["sha256"], sha_b.as_str(), "{imported}");
    assert_eq!(imported["format"], "zip");
    assert_eq!(imported["provenance"]["url"], url.as_str());

    // Flashed by name: both files written with a.img, and the report and
    // the cache say so.
    let (t1, t2) = (dir.path().join("t1.img"), dir.path().join("t2.img"));
    let (t1s, t2s) = (t1.display().to_string(), t2.display().to_string());
    let out = run(
        &data,
        &[
            "flash",
            &url,
            &t1s,
            &t2s,
            "--zip-entry",
            "a.img",
            "--sha256",
            &sha_a,
            "--json",
            "--quiet",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["image_sha256"], sha_a.as_str(), "{summary}");
    assert_eq!(summary["passed"], 2, "{summary}");
    for target in [&t1, &t2] {
        assert_eq!(&std::fs::read(target).unwrap()[..a.len()], &a[..]);
    }
    let report = run(&data, &["report", "run", "1", "--format", "json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["run"]["image_sha256"], sha_a.as_str(), "{report}");
    assert_eq!(report["run"]["passed"], 2);
    let list = run(&data, &["image", "list", "--json"]).await;
    let images: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut cached: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sha256"].as_str().unwrap())
        .collect();
    cached.sort_unstable();
    let mut expected = vec![sha_a.as_str(), sha_b.as_str()];
    expected.sort_unstable();
    assert_eq!(cached, expected);

    // A cached image has no zip entry to name.
    let out = run(
        &data,
        &["flash", &sha_a, &t1s, "--zip-entry", "a.img", "--quiet"],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--zip-entry is for a zip archive"),
        "{stderr}"
    );
}
