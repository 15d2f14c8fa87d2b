//! What the `flash URL` tests (`url_flash.rs`, `url_flash_follow.rs`) share:
//! the request and the import they start with, a flash run beside a task
//! watching its events, the wait for every target's first written bytes while
//! the server holds the rest of the file, and readings of the events, the
//! records and the downloads folder afterwards.

#![allow(dead_code)] // Each test file uses its own share of these.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use flashrack_app::downloads::{downloads_dir, DigestCheck, RetryPolicy, UrlImport};
use flashrack_app::flash::{flash_url, FlashEvent, FlashOutcome, FlashRequest, Notice};
use flashrack_app::reports::ReportFormat;
use flashrack_app::AppError;
use flashrack_core::{
    ByteSize, EngineEvent, EngineEventKind, RunId, Sha256Digest, Stage, TargetId, Verdict,
    VerifyMode,
};
use flashrack_testkit::http_files::FileServer;
use tokio::sync::mpsc;

pub const MIB: usize = 1 << 20;

/// Retries `tries` times, 10 ms apart; stalls and connections are timed as
/// by default.
pub fn policy(tries: u32) -> RetryPolicy {
    RetryPolicy {
        tries,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

/// A compare run to `targets`, loop devices allowed.
pub fn request(targets: &[&Path]) -> FlashRequest {
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

/// The import of `path` on `server`, checked by `check`. No bmap is served:
/// one is looked for beside the image, as by default.
pub fn import(server: &FileServer, path: &str, check: DigestCheck) -> UrlImport {
    UrlImport {
        check,
        ..UrlImport::new(server.url(path), ByteSize(1 << 40))
    }
}

/// Runs a flash of a URL (the download retried `tries` times) beside
/// `watch`, which gets its events as they come (the flash's future is driven
/// in this task, with `watch`, to its end) and returns them; then the
/// flash's outcome.
pub async fn flash_watching<W, Fut>(
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
pub async fn all(mut events: mpsc::UnboundedReceiver<FlashEvent>) -> Vec<FlashEvent> {
    let mut all = Vec::new();
    while let Some(event) = events.recv().await {
        all.push(event);
    }
    all
}

/// Waits until each of `count` targets has written bytes (no verdict may
/// come first), checks that the download is still held at `gate` bytes,
/// then calls `release` and collects every event to the end.
pub async fn written_before_the_gate(
    mut events: mpsc::UnboundedReceiver<FlashEvent>,
    count: usize,
    server: &FileServer,
    gate: u64,
    release: impl FnOnce(),
) -> Vec<FlashEvent> {
    let mut seen = Vec::new();
    let mut writing = HashSet::new();
    let mut downloaded = None;
    while writing.len() < count {
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
            FlashEvent::Download(progress) => downloaded = Some(progress.clone()),
            FlashEvent::Engine(EngineEvent {
                kind: EngineEventKind::Finished { verdict, .. },
                target,
            }) => panic!("{target} ended before the download did: {verdict:?}"),
            _ => {}
        }
        seen.push(event);
    }
    // The server holds the rest: the download cannot have ended.
    let downloaded = downloaded.expect("download progress before the writes");
    assert!(
        downloaded.held <= gate,
        "every target wrote before the download passed the gate: {downloaded:?}"
    );
    assert!(server.body_bytes_sent() <= gate);
    release();
    seen.extend(all(events).await);
    seen
}

/// The verdicts in the events, per target, in order.
pub fn verdicts(events: &[FlashEvent]) -> Vec<(TargetId, Verdict)> {
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

/// The image is told as known (`sha`) before the first verdict.
pub fn imported_before_any_verdict(events: &[FlashEvent], sha: Sha256Digest) {
    let imported = events
        .iter()
        .position(
            |e| matches!(e, FlashEvent::Notice(Notice::Imported { sha256, .. }) if *sha256 == sha),
        )
        .expect("the import's end is told");
    let first_verdict = events
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
        .expect("a verdict");
    assert!(imported < first_verdict);
}

/// Run 1's JSON report.
pub async fn run_report(data_dir: &Path) -> serde_json::Value {
    let report = flashrack_app::reports::run_report(data_dir, None, RunId(1), ReportFormat::Json)
        .await
        .unwrap();
    serde_json::from_slice(report.body.as_ref()).unwrap()
}

/// How many partial downloads are left in the data directory.
pub fn downloads_left(data_dir: &Path) -> usize {
    std::fs::read_dir(downloads_dir(data_dir)).map_or(0, |d| d.count())
}
