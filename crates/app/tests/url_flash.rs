//! `flash URL TARGETS…` (`flashrack_app::flash::flash_url`) against a real
//! HTTP server on loopback (`flashrack_testkit::http_files`): the targets
//! are written while the image downloads, proven by the order of events
//! (the server holds the second half of the file until every target has
//! written its first bytes); a wrong digest, a length the server lies about
//! and a 404 fail every target (or start none) and cache nothing; a cut is
//! resumed within the flash. The records, the events and the outcome are
//! checked against each other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flashrack_app::downloads::{downloads_dir, DigestCheck, RetryPolicy, UrlImport};
use flashrack_app::flash::{flash_url, FlashEvent, FlashOutcome, FlashRequest, Notice};
use flashrack_app::images::open_cache;
use flashrack_app::reports::ReportFormat;
use flashrack_app::AppError;
use flashrack_core::{
    ByteSize, EngineEvent, EngineEventKind, FailReason, RunId, Sha256Digest, Stage, TargetId,
    VerifyMode,
};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;
use tokio::sync::mpsc;

const MIB: usize = 1 << 20;

fn policy(tries: u32) -> RetryPolicy {
    RetryPolicy {
        tries,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(30),
    }
}

fn request(targets: &[&Path]) -> FlashRequest {
    FlashRequest {
        targets: targets.iter().map(|t| t.display().to_string()).collect(),
        verify: VerifyMode::Compare,
        allow_buses: vec!["loop".into()],
        max_size: ByteSize(1 << 40),
        stall_timeout: Duration::from_secs(60),
        probe_capacity: true,
        force_raw: false,
        sparse: false,
        sample: None,
        audit: false,
        retries: 0,
    }
}

fn import(server: &FileServer, path: &str, check: DigestCheck) -> UrlImport {
    // No bmap is served: looked for beside the image, as by default.
    UrlImport {
        check,
        ..UrlImport::new(server.url(path), ByteSize(1 << 40))
    }
}

/// Runs a flash of a URL beside `watch`, which gets its events as they come
/// (the flash's future is driven in this task, with `watch`, to its end)
/// and returns them; then the flash's outcome.
async fn flash_watching<W, Fut>(
    data_dir: &Path,
    import: UrlImport,
    tries: u32,
    request: FlashRequest,
    watch: W,
) -> (Vec<FlashEvent>, Result<FlashOutcome, AppError>)
where
    W: FnOnce(mpsc::UnboundedReceiver<FlashEvent>) -> Fut,
    Fut: std::future::Future<Output = Vec<FlashEvent>>,
{
    let (view_tx, events) = mpsc::unbounded_channel();
    // Kept open: no signal stops the flash.
    let (_stops_tx, stops) = mpsc::unbounded_channel();
    let flash = flash_url(data_dir, import, policy(tries), request, view_tx, stops);
    let (outcome, events) = tokio::join!(flash, watch(events));
    (events, outcome)
}

/// Every event to the end.
async fn all(mut events: mpsc::UnboundedReceiver<FlashEvent>) -> Vec<FlashEvent> {
    let mut all = Vec::new();
    while let Some(event) = events.recv().await {
        all.push(event);
    }
    all
}

/// The verdicts in the events, per target, in order.
fn verdicts(events: &[FlashEvent]) -> Vec<(TargetId, flashrack_core::Verdict)> {
    events
        .iter()
        .filter_map(|e| match e {
            FlashEvent::Engine(EngineEvent {
                target,
                kind: EngineEventKind::Finished { verdict, .. },
            }) => Some((target.clone(), verdict.clone())),
            _ => None,
        })
        .collect()
}

async fn run_report(data_dir: &Path) -> serde_json::Value {
    let report = flashrack_app::reports::run_report(data_dir, None, RunId(1), ReportFormat::Json)
        .await
        .unwrap();
    serde_json::from_slice(report.body.as_ref()).unwrap()
}

fn downloads_left(data_dir: &Path) -> usize {
    std::fs::read_dir(downloads_dir(data_dir)).map_or(0, |d| d.count())
}

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
        |mut events| async move {
            // Wait for every target's first written bytes.
            let mut seen = Vec::new();
            let mut writing = std::collections::HashSet::new();
            let mut downloaded = None;
            while writing.len() < 2 {
                let Some(event) = events.recv().await else {
                    panic!("the flash ended before every target wrote: {seen:?}");
                };
                match &event {
                    FlashEvent::Engine(EngineEvent {
                        target,
                        kind:
                            EngineEventKind::Progress {
                                stage: Stage::Writing,
                                done,
                                ..
                            },
                    }) if *done > 0 => {
                        writing.insert(target.clone());
                    }
                    FlashEvent::Download(progress) => downloaded = Some(*progress),
                    FlashEvent::Engine(EngineEvent {
                        kind: EngineEventKind::Finished { verdict, .. },
                        target,
                    }) => panic!("{target} ended before the download did: {verdict:?}"),
                    _ => {}
                }
                seen.push(event);
            }
            // The server holds the second half: the download cannot have ended.
            let downloaded = downloaded.expect("download progress before the writes");
            assert_eq!(downloaded.total, Some(expected));
            assert!(
                downloaded.held <= 12 * MIB as u64,
                "every target wrote before the download passed the gate: {downloaded:?}"
            );
            assert!(gate.body_bytes_sent() <= 12 * MIB as u64);
            gate.open_gate();
            seen.extend(all(events).await);
            seen
        },
    )
    .await;
    let outcome = outcome.expect("the flash runs");
    assert_eq!(outcome.summary.image_sha256, sha);
    assert_eq!(outcome.summary.passed, 2, "{:?}", outcome.summary);
    // The image is known (and was the one expected) before any verdict.
    let imported = seen
        .iter()
        .position(
            |e| matches!(e, FlashEvent::Notice(Notice::Imported { sha256, .. }) if *sha256 == sha),
        )
        .expect("the import's end is told");
    let first_verdict = seen
        .iter()
        .position(|e| {
            matches!(
                e,
                FlashEvent::Engine(EngineEvent {
                    kind: EngineEventKind::Finished { .. },
                    ..
                })
            )
        })
        .unwrap();
    assert!(imported < first_verdict);
    let last_download = seen
        .iter()
        .rev()
        .find_map(|e| match e {
            FlashEvent::Download(p) => Some(*p),
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
    assert_eq!(outcome.summary.image_sha256, sha);
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
