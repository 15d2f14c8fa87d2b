//! `flashrack image import URL` with a block map, against a real HTTP server
//! on loopback: a bmap beside the image on its server is found by bmaptool's
//! names and checked in the download's one pass (the JSON says so and `image
//! show` keeps it); one that lies exits 2 with the map's reason and caches
//! nothing; `--bmap URL` names one elsewhere.

mod common;

use std::path::Path;

use common::{flashrack, text};
use flashrack_testkit::http_files::{FileServer, Served};

/// Runs the binary off the runtime's workers (the server answers on them).
async fn flashrack_async(data: &Path, args: &[&str]) -> std::process::Output {
    let data = data.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        flashrack(&data, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_import_of_a_url_checks_the_bmap_beside_it_and_refuses_one_that_lies() {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&raw_path);
    let truth = flashrack_testkit::bmap::bmaptool_create(&raw_path);
    let at = truth.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut lie = truth.clone();
    lie.replace_range(at..at + 64, &"ab".repeat(32));
    let lie = flashrack_testkit::bmap::reseal(&lie);
    let server = FileServer::start().await;
    server.serve("/bad/disk.img", Served::new(raw.clone(), "b"));
    server.serve("/bad/disk.img.bmap", Served::new(lie.into_bytes(), "bb"));
    server.serve("/good/disk.img", Served::new(raw, "g"));
    server.serve(
        "/good/disk.bmap",
        Served::new(truth.clone().into_bytes(), "gb"),
    );
    server.serve("/maps/m.bmap", Served::new(truth.into_bytes(), "m"));

    // A lying map beside the image: exit 2, the map's reason, nothing cached.
    let data = dir.path().join("data-bad");
    let url = server.url("/bad/disk.img");
    let out = flashrack_async(&data, &["image", "import", &url, "--json"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let error = text(&out.stderr);
    assert!(
        error.contains("cannot use the block map")
            && error.contains("disk.img.bmap")
            && error.contains("do not match the bmap's checksum for them"),
        "{error}"
    );
    let list = flashrack_async(&data, &["image", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // The true map beside the image (disk.bmap, the second name tried), and
    // one named with --bmap URL: attached from the one pass, and kept.
    for (what, extra, file) in [
        ("beside", None, "disk.bmap"),
        ("by URL", Some(server.url("/maps/m.bmap")), "m.bmap"),
    ] {
        let data = dir.path().join(format!("data-{file}"));
        let url = server.url("/good/disk.img");
        let mut args = vec!["image", "import", url.as_str(), "--json"];
        if let Some(bmap) = &extra {
            args.extend(["--bmap", bmap.as_str()]);
        }
        let out = flashrack_async(&data, &args).await;
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let map = &imported["block_map"];
        assert_eq!(map["status"], "attached", "{what}: {imported}");
        assert_eq!(map["origin"]["kind"], "bmap", "{what}: {imported}");
        assert_eq!(map["origin"]["file"], file, "{what}: {imported}");
        assert_eq!(map["mapped_bytes"].as_u64(), Some(12 * 4096), "{what}");
        let sha = imported["sha256"].as_str().unwrap();
        let shown = flashrack_async(&data, &["image", "show", sha, "--json"]).await;
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(
            shown["block_map"]["origin"]["file"], file,
            "{what}: {shown}"
        );
    }
    // The image itself was fetched once per import that got to it.
    assert_eq!(server.requests_for("/good/disk.img").len(), 2);
    assert_eq!(server.requests_for("/bad/disk.img").len(), 1);
}

/// A server that answers 503 for the names a bmap beside the image would
/// have: the lookup is optional, so it is a warning that names the URL and
/// the error, tried once more at most (not the ~31 s of a download's
/// retries), and the image is imported without that map. `--no-bmap` looks
/// for none: not one request for a bmap name. Before, the import failed
/// with the 503 after the download's retries, and nothing could skip the
/// lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmap_lookup_that_meets_a_server_error_is_a_warning_and_no_bmap_skips_it() {
    use flashrack_testkit::http_files::Behaviour;
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&raw_path);
    let server = FileServer::start().await;
    server.serve("/os/disk.img", Served::new(raw, "d"));
    let trouble = || Served::new(Vec::new(), "t").behaving(Behaviour::Status(503));
    server.serve("/os/disk.img.bmap", trouble());
    server.serve("/os/disk.bmap", trouble());
    let url = server.url("/os/disk.img");
    let bmap_requests = || {
        server.requests_for("/os/disk.img.bmap").len() + server.requests_for("/os/disk.bmap").len()
    };

    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    let out = flashrack_async(&data, &["image", "import", &url, "--json"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&server.url("/os/disk.img.bmap")) && stderr.contains("503"),
        "the warning names the URL and the error: {stderr}"
    );
    let asked = bmap_requests();
    assert!(asked <= 2, "one quick retry at most: {asked}");
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sha = imported["sha256"].as_str().unwrap();
    let shown = flashrack_async(&data, &["image", "show", sha, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let failed = shown["provenance"]["bmap_lookup_failed"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failed.contains("disk.img.bmap") && failed.contains("503"),
        "the provenance says the lookup failed: {shown}"
    );

    // --no-bmap: no lookup at all.
    let before = bmap_requests();
    let data = dir.path().join("data-no-bmap");
    let out = flashrack_async(&data, &["image", "import", &url, "--no-bmap", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(bmap_requests(), before, "no bmap name asked for");
    // It says what it says: not with --bmap.
    let out = flashrack_async(
        &data,
        &["image", "import", &url, "--no-bmap", "--bmap", "x.bmap"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
