//! What an image is, from the command line: `image show` and `image list` say
//! it, and `flash` refuses a raw run of a Windows-like installer ISO (found by
//! content, under an innocent name) unless `--force-raw`, which the run's
//! records keep; the refusal itself is in the records' event log.

use std::path::Path;

mod common;
use common::{flashrack, text};

#[test]
fn a_windows_like_iso_is_shown_and_refused_by_flash_unless_forced_and_the_force_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let iso = dir.path().join("family-videos.bin");
    flashrack_testkit::iso::windows_like_iso(&iso);
    let iso = iso.to_str().unwrap();

    let imported = flashrack(&data, &["image", "import", iso]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let sha = text(&imported.stdout).trim().to_string();

    let shown = flashrack(&data, &["image", "show", &sha[..12]]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    assert!(shown.contains("partition table: none"), "{shown}");
    assert!(
        shown.contains("El Torito [bios, uefi], hybrid no, Windows installer files yes"),
        "{shown}"
    );
    assert!(shown.contains("raw run: refused unless forced"), "{shown}");
    let listed = text(&flashrack(&data, &["image", "list"]).stdout);
    assert!(listed.contains("[raw run refused]"), "{listed}");

    let target = dir.path().join("stick.img");
    let target = target.to_str().unwrap();
    let refused = flashrack(&data, &["flash", &sha, target, "--quiet"]);
    assert!(!refused.status.success());
    let error = text(&refused.stderr);
    assert!(
        error.contains("refused for a raw run")
            && error.contains("Windows installer ISO")
            && error.contains("--force-raw"),
        "{error}"
    );
    assert!(!Path::new(target).exists(), "nothing was written");
    // The refusal is in the records' event log, and no run was started.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use flashrack_store::{EventKind, Records, Store};
        let store = Store::open_read_only(&data.join("flashrack.db"), "station-1")
            .await
            .unwrap();
        let events = store.recent_events(100).await.unwrap();
        let refused: Vec<_> = events
            .iter()
            .filter(|e| e.row.kind == EventKind::RunRefused)
            .collect();
        assert_eq!(refused.len(), 1, "{events:#?}");
        let detail = &refused[0].row.detail;
        assert_eq!(detail["image_sha256"], sha.as_str(), "{detail}");
        assert!(
            detail["reason"]
                .as_str()
                .unwrap()
                .contains("Windows installer ISO"),
            "{detail}"
        );
        assert!(store.list_runs().await.unwrap().is_empty());
        store.close().await;
    });

    let forced = flashrack(
        &data,
        &["flash", &sha, target, "--quiet", "--force-raw", "--json"],
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let report = flashrack(&data, &["report", "run", "1", "--format", "json"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["run"]["options"]["force_raw"], true, "{report}");
    assert_eq!(
        report["image"]["iso"]["windows_installer"], true,
        "{report}"
    );
}

/// A Windows-like ISO the cache has not seen, flashed from its file: the
/// raw file is the image, so it is refused before a target is opened (not
/// written while it is imported, then failed), as a cached one is; the
/// refusal is in the event log and no run was started.
#[test]
fn a_new_windows_like_iso_file_is_refused_by_flash_before_any_target_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let iso = dir.path().join("ubuntu-24.04-desktop-amd64.iso");
    flashrack_testkit::iso::windows_like_iso(&iso);
    let target = dir.path().join("stick.img");
    let refused = flashrack(
        &data,
        &[
            "flash",
            iso.to_str().unwrap(),
            target.to_str().unwrap(),
            "--quiet",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let error = text(&refused.stderr);
    assert!(
        error.contains("refused for a raw run") && error.contains("Windows installer ISO"),
        "{error}"
    );
    assert!(!target.exists(), "nothing was written: {error}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use flashrack_store::{EventKind, Records, Store};
        let store = Store::open_read_only(&data.join("flashrack.db"), "station-1")
            .await
            .unwrap();
        let events = store.recent_events(100).await.unwrap();
        let refused = events
            .iter()
            .filter(|e| e.row.kind == EventKind::RunRefused)
            .count();
        assert_eq!(refused, 1, "{events:#?}");
        let runs = store.list_runs().await.unwrap();
        assert!(runs.is_empty(), "{runs:#?}");
        store.close().await;
    });
}

/// A Windows-like UDF 2.50 volume whose tree is in a metadata partition
/// (written byte by byte by `flashrack_testkit::udf`) is known for what it
/// is; one whose metadata file and mirror are both torn is still imported,
/// with the reason its tree was not read.
#[test]
fn a_udf_250_installer_is_shown_and_refused_and_a_broken_one_still_imports() {
    use flashrack_testkit::udf::{windows_like, B, LABEL, PART};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = dir.path().join("scans.bin");
    let built = windows_like(0x0250);
    std::fs::write(&good, &built.bytes).unwrap();
    let imported = flashrack(&data, &["image", "import", good.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let sha = text(&imported.stdout).trim().to_string();
    let shown = text(&flashrack(&data, &["image", "show", &sha[..12]]).stdout);
    assert!(
        shown.contains(&format!("UDF volume id: {LABEL:?}")),
        "{shown}"
    );
    assert!(shown.contains("UDF revision: 2.50"), "{shown}");
    assert!(shown.contains("Windows installer files yes"), "{shown}");
    assert!(shown.contains("raw run: refused unless forced"), "{shown}");

    let mut broken = built.bytes.clone();
    broken[PART * B + 4] ^= 0xff;
    broken[(PART + 1) * B + 4] ^= 0xff;
    let bad = dir.path().join("torn.bin");
    std::fs::write(&bad, &broken).unwrap();
    let imported = flashrack(&data, &["image", "import", bad.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let sha = text(&imported.stdout).trim().to_string();
    let shown = text(&flashrack(&data, &["image", "show", &sha[..12]]).stdout);
    assert!(
        shown.contains("UDF 2.50 volume not read: the metadata partition cannot be read"),
        "{shown}"
    );
    assert!(shown.contains("UDF revision: 2.50"), "{shown}");
    let listed = text(&flashrack(&data, &["image", "list"]).stdout);
    assert!(
        listed.contains("torn.bin") && listed.contains("scans.bin"),
        "{listed}"
    );
}
