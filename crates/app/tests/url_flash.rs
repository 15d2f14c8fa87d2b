//! `flash URL TARGETS…` (`flashrack_app::flash::flash_url`) against a real
//! HTTP server on loopback (`flashrack_testkit::http_files`): the targets
//! are written while the image downloads, proven by the order of events
//! (the server holds the second half of the file until every target has
//! written its first bytes); a wrong digest, a length the server lies about
//! and a 404 fail every target (or start none) and cache nothing; a cut is
//! resumed within the flash. The records, the events and the outcome are
//! checked against each other.

use std::path::{Path, PathBuf};

use flashrack_app::downloads::DigestCheck;
use flashrack_app::flash::FlashEvent;
use flashrack_app::images::open_cache;
use flashrack_core::{EngineEvent, EngineEventKind, FailReason, Sha256Digest, Stage};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;

mod url_flash_support;
use url_flash_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_devices_are_written_while_the_url_downloads_and_the_run_names_the_image() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let bytes = image_bytes(24 * MIB, 61, MIB);
    let sha = Sha256Digest::of(&bytes);
    let server = FileServer::start().await;
    // The second half waits until the test has seen every target write.
    server.serve(
        "/os.img",
        Served::new(bytes.clone(), "os-1").behaving(Behaviour::GatedAt(12 * MIB)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let devices = [
        flashrack_testkit::LoopDevice::new(32 << 20),
        flashrack_testkit::LoopDevice::new(32 << 20),
    ];
    let targets: Vec<&Path> = devices.iter().map(|d| d.path()).collect();
    let expected = bytes.len() as u64;
    let gate = server.clone();
    let (seen, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img", DigestCheck::Sha256(sha)),
        1,
        request(&targets),
        |events| written_before_the_gate(events, 2, &gate, 12 * MIB as u64, || gate.open_gate()),
    )
    .await;
    let outcome = outcome.expect("the flash runs");
    assert_eq!(outcome.summary.image_sha256, Some(sha));
    assert_eq!(outcome.summary.passed, 2, "{:?}", outcome.summary);
    // The image is known (and was the one expected) before any verdict.
    imported_before_any_verdict(&seen, sha);
    // Its length was known from the download's start.
    assert!(seen
        .iter()
        .any(|e| matches!(e, FlashEvent::Download(p) if p.total == Some(expected))));
    let last_download = seen
        .iter()
        .rev()
        .find_map(|e| match e {
            FlashEvent::Download(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_download.held, bytes.len() as u64);
    for device in &devices {
        let written = std::fs::read(device.backing()).unwrap();
        assert_eq!(&written[..bytes.len()], &bytes[..]);
    }

    // The cache holds it, from its URL; the records name it as the run's.
    let cache = open_cache(&data_dir).unwrap();
    let image = cache.get(&sha).unwrap().expect("cached");
    let provenance = image.meta.provenance.expect("a provenance");
    assert_eq!(provenance.url, server.url("/os.img"));
    assert_eq!(provenance.etag.as_deref(), Some("\"os-1\""));
    assert_eq!(downloads_left(&data_dir), 0, "the partial download is gone");
    let report = run_report(&data_dir).await;
    assert_eq!(
        report["run"]["image_sha256"],
        sha.to_hex().as_str(),
        "{report}"
    );
    assert_eq!(report["run"]["image_name"], "os.img");
    assert_eq!(report["run"]["passed"], 2);
    assert_eq!(report["run"]["stop_reason"], "completed");
    assert_eq!(server.requests_for("/os.img").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_fails_every_target_before_any_pass_and_caches_nothing() {
    let bytes = image_bytes(12 * MIB, 62, MIB);
    let server = FileServer::start().await;
    server.serve("/os.img", Served::new(bytes.clone(), "os-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let wrong = Sha256Digest::of(b"another image");
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img", DigestCheck::Sha256(wrong)),
        1,
        request(&[&a, &b]),
        all,
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(words.contains(&wrong.to_hex()), "{words}");
    // Both targets began writing (they followed the download), and both
    // failed for the source, naming the digest expected.
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    for (target, verdict) in &ended {
        assert_eq!(
            verdict.failure().map(|f| &f.reason),
            Some(&FailReason::Interrupted),
            "{target}: {verdict:?}"
        );
    }
    assert!(events.iter().any(|e| matches!(
        e,
        FlashEvent::Engine(EngineEvent {
            kind: EngineEventKind::Stage {
                stage: Stage::Writing
            },
            ..
        })
    )));
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    assert_eq!(downloads_left(&data_dir), 0, "the wrong bytes are not kept");
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
    assert_eq!(report["run"]["interrupted"], 2);
    assert_ne!(
        report["run"]["image_sha256"],
        Sha256Digest::of(&bytes).to_hex().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_during_the_flash_is_resumed_and_every_target_passes() {
    let bytes = image_bytes(16 * MIB, 63, MIB);
    let sha = Sha256Digest::of(&bytes);
    let server = FileServer::start().await;
    server.serve(
        "/os.img",
        Served::new(bytes.clone(), "os-1").behaving(Behaviour::CutFirstAfter(10 * MIB)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img", DigestCheck::Sha256(sha)),
        3,
        request(&[&a, &b]),
        all,
    )
    .await;
    let outcome = outcome.expect("the flash runs");
    assert_eq!(outcome.summary.passed, 2, "{:?}", outcome.summary);
    assert_eq!(outcome.summary.image_sha256, Some(sha));
    assert!(verdicts(&events).iter().all(|(_, v)| v.is_pass()));
    let requests = server.requests_for("/os.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", 10 * MIB).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"os-1\""));
    for file in [&a, &b] {
        assert_eq!(&std::fs::read(file).unwrap()[..bytes.len()], &bytes[..]);
    }
    assert!(open_cache(&data_dir).unwrap().get(&sha).unwrap().is_some());
    assert_eq!(
        run_report(&data_dir).await["run"]["image_sha256"],
        sha.to_hex().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lies_about_the_length_fails_every_target_and_caches_nothing() {
    let bytes = image_bytes(12 * MIB, 64, MIB);
    let server = FileServer::start().await;
    server.serve(
        "/os.img",
        Served::new(bytes.clone(), "os-1").behaving(Behaviour::DeclaresMore(MIB as u64)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/os.img", DigestCheck::None),
        3,
        request(&[&a, &b]),
        all,
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(words.contains("lies about the file's length"), "{words}");
    let ended = verdicts(&events);
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(ended.iter().all(|(_, v)| !v.is_pass()), "{ended:?}");
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    assert_eq!(downloads_left(&data_dir), 0, "the lying file is not kept");
    let report = run_report(&data_dir).await;
    assert_eq!(report["run"]["stop_reason"], "source_failed", "{report}");
    assert_eq!(report["run"]["passed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_not_found_starts_no_target_and_records_no_run() {
    let server = FileServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let a: PathBuf = dir.path().join("a.img");
    let (events, outcome) = flash_watching(
        &data_dir,
        import(&server, "/missing.img", DigestCheck::None),
        3,
        request(&[&a]),
        all,
    )
    .await;
    let error = outcome.expect_err("the flash fails");
    let words = flashrack_app::downloads::error_chain(&error);
    assert!(words.contains("404"), "{words}");
    assert!(verdicts(&events).is_empty());
    assert!(!a.exists(), "nothing was written");
    assert!(open_cache(&data_dir).unwrap().list().unwrap().is_empty());
    assert_eq!(
        server.requests_for("/missing.img").len(),
        1,
        "a 404 is final"
    );
    let runs = flashrack_app::reports::runs(&data_dir, None).await;
    assert!(runs.is_err() || runs.unwrap().is_empty(), "no run recorded");
}
