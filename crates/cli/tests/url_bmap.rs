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
