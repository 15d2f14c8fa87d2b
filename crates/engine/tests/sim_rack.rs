//! The engine against the simulated rack: every fault gives its verdict and
//! reason while the healthy sticks of the same run pass.

mod common;
#[path = "common/rack.rs"]
mod rack;
use rack::targets;

use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{
    AttemptFigures, Bound, EngineEvent, EngineEventKind, FailReason, ProbeOperation, Stage,
    TargetId, Verdict, VerifyMethod, VerifyMode,
};
use flashrack_engine::{
    flash_all, AttemptHandle, Clock, EngineError, EngineOptions, Fanout, ManualClock, SourceImage,
    ABANDON_GRACE,
};
use flashrack_simrack::sim::{CacheMode, FakeMode, SimRack, SimStick, SimStickSpec};
use flashrack_target::Target;
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;

/// A stall timeout no test reaches on the system clock: however slowly a loaded
/// machine runs a healthy stick, it is never judged stalled. Tests about stalls
/// measure the stall timeout on a manual clock instead ([`flash_with_stuck`]).
const NO_STALL: Duration = Duration::from_secs(3600);

/// The stall timeout of the tests about stalls, on a manual clock.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits for something that must happen (a bound on a hang, never
/// a synchronization).
const WAIT: Duration = Duration::from_secs(30);

fn options() -> EngineOptions {
    EngineOptions {
        stall_timeout: NO_STALL,
        progress_interval: Duration::from_millis(20),
        ..EngineOptions::default()
    }
}

/// Waits (off the async workers) until a call is stuck in `stick`.
async fn until_stuck(stick: &SimStick) {
    let waiting = stick.clone();
    let stuck = tokio::task::spawn_blocking(move || waiting.wait_until_stalled(WAIT))
        .await
        .unwrap();
    assert!(stuck, "{} never got stuck", stick.name());
}

type Results = Vec<(TargetId, Verdict, AttemptFigures)>;

/// Writes `image` to every stick of `rack` with the stall timeout on a manual
/// clock, which moves past the timeout only once every stick but those named in
/// `stuck` has its verdict and each of those is stuck in a call: the stuck ones
/// then get theirs from the watchdog, and no other stick can be taken for a
/// stalled one, however slowly the machine runs it (the clock moves in steps of
/// the stall timeout, each once the watchdogs have acted on the last). Returns the verdicts and the
/// event channel (still open if a thread holds a sender).
async fn flash_with_stuck(
    image: &SourceImage,
    rack: &SimRack,
    stuck: &[&str],
    options: EngineOptions,
) -> (Results, mpsc::UnboundedReceiver<EngineEvent>) {
    let clock = ManualClock::new();
    let options = EngineOptions {
        stall_timeout: STALL_TIMEOUT,
        clock: Clock::Manual(clock.clone()),
        ..options
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = tokio::spawn({
        let image = image.clone();
        let targets = targets(rack);
        async move { flash_all(&image, targets, options, tx).await }
    });
    let others = rack.len() - stuck.len();
    let mut finished = Vec::new();
    tokio::time::timeout(WAIT, async {
        while finished.len() < others {
            let event = rx.recv().await.expect("events until every verdict");
            if let EngineEventKind::Finished { verdict, .. } = event.kind {
                let name = event.target.0;
                assert!(
                    !stuck.contains(&name.as_str()),
                    "{name} got a verdict before the clock moved: {verdict:?}"
                );
                finished.push(name);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {finished:?} got a verdict"));
    for name in stuck {
        until_stuck(rack.stick(name).unwrap()).await;
    }
    // A stuck stick's attempt may still beat for the work it had in hand (the
    // piece it checks while its reader is stuck on the next): each time the
    // clock has moved past the stall timeout, every watchdog either gives its
    // verdict or waits from that last beat, and the clock moves again until
    // none waits.
    for _ in 0..10 {
        clock.advance(STALL_TIMEOUT);
        tokio::time::timeout(WAIT, clock.until_nothing_due())
            .await
            .expect("the watchdogs act on the moved clock");
        if clock.sleeps().is_empty() {
            break;
        }
    }
    let results = tokio::time::timeout(WAIT, run)
        .await
        .expect("the watchdog gives the stuck sticks their verdicts")
        .unwrap()
        .unwrap();
    (results, rx)
}

fn reason_of(verdict: &Verdict) -> Option<&FailReason> {
    verdict.failure().map(|f| &f.reason)
}

/// Writes `image` to every stick of `rack` with `options`; the events go unread.
async fn flash_rack(image: &SourceImage, rack: &SimRack, options: EngineOptions) -> Results {
    let (tx, _rx) = mpsc::unbounded_channel();
    flash_all(image, targets(rack), options, tx).await.unwrap()
}

/// A rack of 4 MiB sticks under `dir`, one per case, named after it and
/// corrupting the bytes at its offsets.
fn corrupting_rack(dir: &std::path::Path, cases: &[(&str, Vec<u64>)]) -> SimRack {
    SimRack::create(
        dir.join("rack"),
        cases.iter().map(|(name, bad)| {
            bad.iter()
                .fold(SimStickSpec::new(*name, 4 * MIB), |spec, &b| {
                    spec.corrupt_at(b)
                })
        }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_sticks_pass_and_hold_the_image_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes) = common::make_image(dir.path(), 3 * MIB as usize + 1234, 1);
    let rack = SimRack::create(
        dir.path().join("rack"),
        (0..4).map(|_| SimStickSpec::new("", 8 * MIB)),
    )
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, targets(&rack), options(), tx)
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    for ((id, verdict, figures), stick) in results.iter().zip(rack.sticks()) {
        assert_eq!(verdict, &Verdict::Pass, "{id}");
        assert_eq!(figures.read_back_sha256, Some(image.manifest.sha256()));
        assert_eq!(figures.verify_method, Some(VerifyMethod::Compare));
        assert_eq!(figures.bytes_written, bytes.len() as u64);
        assert_eq!(figures.bytes_verified, bytes.len() as u64);
        let medium = std::fs::read(stick.path()).unwrap();
        assert_eq!(&medium[..bytes.len()], &bytes[..], "{id} holds the image");
        // Verification read the whole image back from the medium.
        assert!(stick.counters().bytes_read >= bytes.len() as u64);
    }
    let mut finished = 0;
    let mut stages = Vec::new();
    while let Ok(event) = rx.try_recv() {
        match event.kind {
            EngineEventKind::Finished { .. } => finished += 1,
            EngineEventKind::Stage { stage } if event.target.0 == "S01" => stages.push(stage),
            _ => {}
        }
    }
    assert_eq!(finished, 4);
    assert_eq!(
        stages,
        [
            Stage::Preparing,
            Stage::Writing,
            Stage::Flushing,
            Stage::Verifying
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_gets_its_own_verdict_and_the_healthy_sticks_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let image_size = 2 * MIB as usize;
    let (image, _) = common::make_image(dir.path(), image_size, 2);
    // Put a non-zero byte at a known offset so the corruption is visible whatever
    // the random content is there.
    let corrupt_offset = 1_000_003u64;
    let capacity = 8 * MIB;
    let specs = vec![
        SimStickSpec::new("healthy-1", capacity),
        SimStickSpec::new("slow", capacity)
            .write_speed(8 * MIB)
            .read_speed(16 * MIB),
        SimStickSpec::new("write-error", capacity).write_error_after(MIB + 4096 * 40),
        SimStickSpec::new("corrupt", capacity).corrupt_at(corrupt_offset),
        SimStickSpec::new("fake-wrap", 64 * MIB).fake_capacity(4 * MIB, FakeMode::Wrap),
        SimStickSpec::new("fake-vanish", 64 * MIB).fake_capacity(6 * MIB, FakeMode::Vanish),
        SimStickSpec::new("read-only", capacity).read_only(),
        SimStickSpec::new("pulled-writing", capacity).remove_after_written(MIB),
        SimStickSpec::new("pulled-verifying", capacity).remove_after_read(MIB + 300 * 1024),
        SimStickSpec::new("too-small", MIB),
        SimStickSpec::new("stalled", capacity).stall_after_written(MIB),
        SimStickSpec::new("healthy-2", capacity),
    ];
    let rack = SimRack::create(dir.path().join("rack"), specs).unwrap();
    let (results, _rx) = flash_with_stuck(&image, &rack, &["stalled"], options()).await;
    let by_name = |name: &str| {
        results
            .iter()
            .find(|(id, ..)| id.0 == name)
            .map(|(_, v, f)| (v.clone(), f.clone()))
            .unwrap()
    };
    for healthy in ["healthy-1", "healthy-2", "slow"] {
        assert_eq!(by_name(healthy).0, Verdict::Pass, "{healthy}");
    }
    let (verdict, figures) = by_name("write-error");
    assert!(
        matches!(reason_of(&verdict), Some(FailReason::WriteError { offset, .. }) if *offset > 0 && *offset < image_size as u64),
        "{verdict:?}"
    );
    // The time it wrote for is said beside what it wrote (0 s before).
    assert!(
        figures.bytes_written > 0 && figures.write_secs > 0.0,
        "{figures:?}"
    );
    let (verdict, figures) = by_name("corrupt");
    let expected_byte = std::fs::read(&image.path).unwrap()[corrupt_offset as usize];
    let _ = expected_byte;
    assert_eq!(
        reason_of(&verdict),
        Some(&FailReason::VerifyMismatch {
            offset: corrupt_offset
        })
    );
    let read_back = figures.read_back_sha256.expect("digest of what was read");
    assert_ne!(read_back, image.manifest.sha256());
    for fake in ["fake-wrap", "fake-vanish"] {
        let (verdict, _) = by_name(fake);
        assert!(
            matches!(reason_of(&verdict), Some(FailReason::CapacityLie { .. })),
            "{fake}: {verdict:?}"
        );
        assert_eq!(verdict.failure().unwrap().stage, Stage::Preparing);
    }
    assert_eq!(
        reason_of(&by_name("read-only").0),
        Some(&FailReason::ReadOnly)
    );
    assert_eq!(
        reason_of(&by_name("pulled-writing").0),
        Some(&FailReason::Removed {
            during: Stage::Writing
        })
    );
    assert_eq!(
        reason_of(&by_name("pulled-verifying").0),
        Some(&FailReason::Removed {
            during: Stage::Verifying
        })
    );
    assert!(matches!(
        reason_of(&by_name("too-small").0),
        Some(FailReason::TooSmall { .. })
    ));
    assert!(matches!(
        reason_of(&by_name("stalled").0),
        Some(FailReason::Stalled {
            during: Stage::Writing,
            ..
        })
    ));
    // Nothing was written to the sticks that failed before writing.
    for untouched in ["read-only", "too-small"] {
        assert_eq!(rack.stick(untouched).unwrap().counters().bytes_written, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_stick_is_caught_even_when_the_image_fits_in_its_real_size() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 3);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [SimStickSpec::new("fake", 1 << 34).fake_capacity(16 * MIB, FakeMode::Wrap)],
    )
    .unwrap();
    let results = flash_rack(&image, &rack, options()).await;
    assert!(matches!(
        reason_of(&results[0].1),
        Some(FailReason::CapacityLie { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_verification_passes_good_sticks_and_catches_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize + 512, 4);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("good", 4 * MIB),
            SimStickSpec::new("bad", 4 * MIB).corrupt_at(MIB),
        ],
    )
    .unwrap();
    let options = EngineOptions {
        verify: VerifyMode::Hash,
        ..options()
    };
    let results = flash_rack(&image, &rack, options).await;
    assert_eq!(results[0].1, Verdict::Pass);
    assert_eq!(results[0].2.verify_method, Some(VerifyMethod::Hash));
    assert_eq!(
        reason_of(&results[1].1),
        Some(&FailReason::VerifyMismatch { offset: MIB })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_verification_nothing_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 5);
    let rack = SimRack::create(dir.path().join("rack"), [SimStickSpec::new("s", 4 * MIB)]).unwrap();
    let options = EngineOptions {
        verify: VerifyMode::None,
        probe_capacity: false,
        ..options()
    };
    let results = flash_rack(&image, &rack, options).await;
    assert_eq!(results[0].1, Verdict::Pass);
    assert_eq!(results[0].2.verify_method, Some(VerifyMethod::None));
    assert_eq!(results[0].2.read_back_sha256, None);
    assert_eq!(rack.sticks()[0].counters().bytes_read, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_aborts_the_run_with_a_source_error() {
    let dir = tempfile::tempdir().unwrap();
    let (image, mut bytes) = common::make_image(dir.path(), 2 * MIB as usize, 6);
    // Damage a data chunk of the cached image after its manifest was made.
    let chunk = (0..image.manifest.chunk_count())
        .find(|&i| {
            !matches!(
                image.manifest.chunk_kind(i),
                flashrack_core::ChunkKind::Zero
            )
        })
        .unwrap();
    let offset = image.manifest.chunk_span(chunk).0 as usize;
    bytes[offset] ^= 0xFF;
    std::fs::write(&image.path, &bytes).unwrap();
    let rack = SimRack::create(
        dir.path().join("rack"),
        (0..3).map(|_| SimStickSpec::new("", 4 * MIB)),
    )
    .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    match flash_all(&image, targets(&rack), options(), tx).await {
        Err(EngineError::SourceCorrupt { offset: at }) => assert_eq!(at, offset as u64),
        other => panic!("expected a corrupt source, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_truncated_cache_file_is_a_source_error() {
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes) = common::make_image(dir.path(), MIB as usize, 7);
    std::fs::write(&image.path, &bytes[..1000]).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    assert!(matches!(
        flash_all(&image, Vec::new(), options(), tx.clone()).await,
        Err(EngineError::SourceOpen { .. })
    ));
    std::fs::remove_file(&image.path).unwrap();
    assert!(matches!(
        flash_all(&image, Vec::new(), options(), tx).await,
        Err(EngineError::SourceOpen { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stick_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 4 * MIB as usize, 8);
    // The slowest stick there is: held in the middle of its write until the
    // test lets it go. The others must pass while it is held.
    let mut specs: Vec<SimStickSpec> = (0..3)
        .map(|i| SimStickSpec::new(format!("fast{i}"), 8 * MIB))
        .collect();
    specs.push(SimStickSpec::new("slow", 8 * MIB).stall_after_written(MIB));
    let rack = SimRack::create(dir.path().join("rack"), specs).unwrap();
    let slow = rack.stick("slow").unwrap().clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = tokio::spawn({
        let targets = targets(&rack);
        let image = image.clone();
        async move { flash_all(&image, targets, options(), tx).await }
    });
    let mut finished = Vec::new();
    while let Some(EngineEvent { target, kind }) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no verdict after {finished:?}"))
    {
        if let EngineEventKind::Finished { verdict, .. } = kind {
            assert_eq!(verdict, Verdict::Pass, "{target}");
            finished.push(target.0);
            if finished.len() == 3 {
                // Every fast stick passed; the slow one is still held, a
                // quarter of the way through its write.
                until_stuck(&slow).await;
                assert_eq!(slow.counters().bytes_written, MIB);
                slow.release();
            }
        }
    }
    run.await.unwrap().unwrap();
    // The fast ones, in whatever order, then the slow one.
    finished[..3].sort();
    assert_eq!(finished, ["fast0", "fast1", "fast2", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_started_late_runs_at_once_and_an_operator_stop_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 9);
    // Held in the middle of its write until the test lets it go.
    let early = SimStick::create(
        SimStickSpec::new("early", 4 * MIB).stall_after_written(MIB),
        dir.path().join("early.img"),
    )
    .unwrap();
    let late = SimStick::create(
        SimStickSpec::new("late", 4 * MIB),
        dir.path().join("late.img"),
    )
    .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let fanout = Fanout::new(&image, options(), tx).unwrap();
    let early_handle = fanout.start(TargetId::new("early"), Arc::new(early.clone()));
    until_stuck(&early).await;
    // Started while the early one is mid-write, the late one passes while
    // the early one is still there.
    let late_handle = fanout.start(TargetId::new("late"), Arc::new(late));
    let late_outcome = tokio::time::timeout(WAIT, late_handle.finish())
        .await
        .expect("the late stick is not held up");
    assert_eq!(late_outcome.result.unwrap().0, Verdict::Pass);
    assert_eq!(early.stalled_calls(), 1, "the early one is still mid-write");
    early_handle.cancel();
    early.release();
    let early_outcome = early_handle.finish().await;
    let (verdict, _) = early_outcome.result.unwrap();
    assert_eq!(reason_of(&verdict), Some(&FailReason::Interrupted));
    assert_eq!(verdict.failure().unwrap().stage, Stage::Writing);
}

/// The image with a fingerprint for every chunk (manifest format 2), as the
/// image cache imports it today; the other tests use format-1 manifests.
fn with_fingerprints(image: &flashrack_engine::SourceImage) -> flashrack_engine::SourceImage {
    let bytes = std::fs::read(&image.path).unwrap();
    let chunk = image.manifest.chunk_size() as usize;
    let manifest = image
        .manifest
        .clone()
        .with_chunk_fingerprints(
            bytes
                .chunks(chunk)
                .map(xxhash_rust::xxh3::xxh3_128)
                .collect(),
        )
        .unwrap();
    flashrack_engine::SourceImage {
        manifest,
        ..image.clone()
    }
}

/// The image with fingerprints and without chunk digests (manifest format 3),
/// as the image cache imports it now; read from its own copy, not mapped, as
/// the engine treats a file the cache only references.
fn fingerprints_only(image: &flashrack_engine::SourceImage) -> flashrack_engine::SourceImage {
    let bytes = std::fs::read(&image.path).unwrap();
    let m = &image.manifest;
    let chunk = m.chunk_size() as usize;
    let manifest = flashrack_core::ImageManifest::fingerprinted(
        m.sha256(),
        m.size(),
        m.chunk_size(),
        bytes
            .chunks(chunk)
            .map(xxhash_rust::xxh3::xxh3_128)
            .collect(),
        (0..m.chunk_count())
            .map(|i| m.chunk_kind(i) == flashrack_core::ChunkKind::Zero)
            .collect(),
    )
    .unwrap();
    let path = image.path.with_extension("referenced");
    std::fs::write(&path, &bytes).unwrap();
    flashrack_engine::SourceImage {
        path,
        manifest,
        referenced: true,
    }
}

/// What a stick corrupting `bad` on read-back returns for the image.
fn read_back_with_flips(bytes: &[u8], bad: &[u64]) -> flashrack_core::Sha256Digest {
    let mut back = bytes.to_vec();
    for &b in bad {
        back[b as usize] ^= 0xff;
    }
    flashrack_core::Sha256Digest::of(&back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_reports_its_first_offset_and_the_exact_read_back_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, bytes) = common::make_image(dir.path(), 2 * MIB as usize + 3000, 10);
    let chunk = u64::from(common::CHUNK);
    // A byte in the first half of a chunk, one in the second half (the compare
    // pass reads half chunks), and a second bad byte further on that the
    // digest must include.
    let cases = [
        ("first-half", vec![5 * chunk + 100, 20 * chunk + 3]),
        (
            "second-half",
            vec![7 * chunk + chunk / 2 + 9, 7 * chunk + chunk - 1],
        ),
        ("last-byte", vec![bytes.len() as u64 - 1]),
        ("first-byte", vec![0, MIB]),
    ];
    let rack = corrupting_rack(dir.path(), &cases);
    // Format 2 (chunk digests and fingerprints) and format 3 (fingerprints
    // only: hash mode finds the bad chunk by its fingerprint).
    for image in [with_fingerprints(&plain), fingerprints_only(&plain)] {
        for verify in [VerifyMode::Compare, VerifyMode::Hash] {
            let options = EngineOptions {
                verify,
                ..options()
            };
            let format3 = !image.manifest.has_chunk_digests();
            let results = flash_rack(&image, &rack, options).await;
            for ((id, verdict, figures), (_, bad)) in results.iter().zip(&cases) {
                assert_eq!(
                    reason_of(verdict),
                    Some(&FailReason::VerifyMismatch { offset: bad[0] }),
                    "{verify:?} {id} format 3: {format3}"
                );
                assert_eq!(verdict.failure().unwrap().stage, Stage::Verifying);
                assert_eq!(
                    figures.read_back_sha256,
                    Some(read_back_with_flips(&bytes, bad)),
                    "{verify:?} {id} format 3: {format3}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprinted_images_pass_and_a_changed_cache_is_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (image, mut bytes) = common::make_image(dir.path(), 3 * MIB as usize + 512, 11);
    let image = with_fingerprints(&image);
    let rack = SimRack::create(
        dir.path().join("rack"),
        (0..3).map(|_| SimStickSpec::new("", 8 * MIB)),
    )
    .unwrap();
    for image in [image.clone(), fingerprints_only(&image)] {
        for verify in [VerifyMode::Compare, VerifyMode::Hash] {
            let options = EngineOptions {
                verify,
                ..options()
            };
            for (id, verdict, figures) in flash_rack(&image, &rack, options).await {
                assert_eq!(verdict, Verdict::Pass, "{verify:?} {id}");
                assert_eq!(figures.read_back_sha256, Some(image.manifest.sha256()));
                assert_eq!(figures.bytes_verified, bytes.len() as u64);
            }
        }
    }
    // The cached file changes after the import: the fingerprint check fails the
    // source, whatever the sticks hold.
    let chunk = (0..image.manifest.chunk_count())
        .rev()
        .find(|&i| {
            !matches!(
                image.manifest.chunk_kind(i),
                flashrack_core::ChunkKind::Zero
            )
        })
        .unwrap();
    let offset = image.manifest.chunk_span(chunk).0;
    bytes[offset as usize + 1] ^= 0x01;
    std::fs::write(&image.path, &bytes).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    match flash_all(&image, targets(&rack), options(), tx).await {
        Err(EngineError::SourceCorrupt { offset: at }) => assert_eq!(at, offset),
        other => panic!("expected a corrupt source, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_that_stalls_while_read_back_fails_as_stalled_during_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 12);
    let image = with_fingerprints(&image);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("healthy", 8 * MIB),
            // Past the probe's reads, in the middle of the read-back.
            SimStickSpec::new("stalls", 8 * MIB).stall_after_read(MIB + 100 * 1024),
        ],
    )
    .unwrap();
    let (results, _rx) = flash_with_stuck(&image, &rack, &["stalls"], options()).await;
    assert_eq!(results[0].1, Verdict::Pass);
    assert!(matches!(
        reason_of(&results[1].1),
        Some(FailReason::Stalled {
            during: Stage::Verifying,
            ..
        })
    ));
    // The verdict came from the watchdog, not from waiting for the stick: the
    // stick still holds the read it stalled in.
    assert_eq!(rack.stick("stalls").unwrap().stalled_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_that_never_return_from_write_or_read_are_abandoned_and_hold_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 14);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("healthy", 8 * MIB),
            // Past the probe's markers: in the write pass.
            SimStickSpec::new("hangs-writing", 8 * MIB).hang_after_written(MIB),
            // Past the probe's reads: in the middle of the read-back.
            SimStickSpec::new("hangs-reading", 8 * MIB).hang_after_read(MIB + 100 * 1024),
        ],
    )
    .unwrap();
    // Returns although two threads never will.
    let (results, mut rx) = flash_with_stuck(
        &image,
        &rack,
        &["hangs-writing", "hangs-reading"],
        options(),
    )
    .await;
    assert_eq!(results[0].1, Verdict::Pass);
    for (result, stage) in results[1..].iter().zip([Stage::Writing, Stage::Verifying]) {
        assert!(
            matches!(
                reason_of(&result.1),
                Some(FailReason::Stalled { during, .. }) if *during == stage
            ),
            "{}: {:?}",
            result.0,
            result.1
        );
    }
    for name in ["hangs-writing", "hangs-reading"] {
        assert_eq!(
            rack.stick(name).unwrap().stalled_calls(),
            1,
            "{name} is hung"
        );
    }
    // The abandoned threads hold no sender: once flash_all has returned, the
    // event channel closes, so whoever waits for it to close is not held up.
    let mut finished = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(event) = rx.recv().await {
            if matches!(event.kind, EngineEventKind::Finished { .. }) {
                finished += 1;
            }
        }
    })
    .await
    .expect("the event channel closes while the stuck threads still hang");
    // The healthy stick's verdict event was read by `flash_with_stuck`.
    assert_eq!(finished, 2, "one verdict event per stuck target");
    for stick in rack.sticks() {
        stick.release();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_claiming_2_to_the_63_bytes_or_more_gets_its_verdict_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 15);
    // 9,000,000 TiB (above 2^63 bytes), storing 64 MiB: the probe must not
    // wrap its powers of two to 0 and loop forever.
    let claimed = 9_000_000u64 << 40;
    let rack = SimRack::create(
        dir.path().join("rack"),
        [SimStickSpec::new("huge", claimed).fake_capacity(64 * MIB, FakeMode::Wrap)],
    )
    .unwrap();
    let results = tokio::time::timeout(WAIT, flash_rack(&image, &rack, options()))
        .await
        .expect("the probe ends");
    assert!(
        matches!(
            reason_of(&results[0].1),
            Some(FailReason::CapacityLie { claimed: c, .. }) if c.bytes() == claimed
        ),
        "{:?}",
        results[0].1
    );
}

/// A one-stick run of a 4 MiB image (pattern `seed`) whose 8 MiB stick `name`
/// is held in the middle of its read-back (past the probe's reads) until the
/// test releases it; the fan-out is returned to be kept alive with the attempt.
fn held_in_read_back(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
) -> (
    Fanout,
    SimStick,
    AttemptHandle,
    mpsc::UnboundedReceiver<EngineEvent>,
) {
    let (image, _) = common::make_image(dir, 4 * MIB as usize, seed);
    let stick = SimStick::create(
        SimStickSpec::new(name, 8 * MIB).stall_after_read(MIB + 100 * 1024),
        dir.join("stick.img"),
    )
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let fanout = Fanout::new(&image, options(), tx).unwrap();
    let handle = fanout.start(TargetId::new(name), Arc::new(stick.clone()));
    (fanout, stick, handle, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_stop_during_the_read_back_interrupts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_fanout, stick, handle, mut rx) = held_in_read_back(dir.path(), "held-reader", 13);
    // Wait until it verifies and is held there, then stop it.
    tokio::time::timeout(WAIT, async {
        while let Some(event) = rx.recv().await {
            if event.kind
                == (EngineEventKind::Stage {
                    stage: Stage::Verifying,
                })
            {
                return;
            }
        }
        panic!("the events ended before the read-back");
    })
    .await
    .expect("the read-back begins");
    until_stuck(&stick).await;
    handle.cancel();
    stick.release();
    let outcome = handle.finish().await;
    let (verdict, _) = outcome.result.unwrap();
    assert_eq!(reason_of(&verdict), Some(&FailReason::Interrupted));
    assert_eq!(verdict.failure().unwrap().stage, Stage::Verifying);
    assert!(
        stick.counters().bytes_read < 4 * MIB,
        "stopped before the end"
    );
}

/// The first failure of a one-stick run.
async fn only_failure(
    image: &flashrack_engine::SourceImage,
    spec: SimStickSpec,
    dir: &std::path::Path,
    options: EngineOptions,
) -> (
    flashrack_core::Failure,
    flashrack_core::AttemptFigures,
    SimRack,
) {
    let rack = SimRack::create(dir.join("rack"), [spec]).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut results = flash_all(image, targets(&rack), options, tx).await.unwrap();
    let (_, verdict, figures) = results.remove(0);
    let failure = verdict.failure().cloned().expect("the stick fails");
    (failure, figures, rack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_names_the_failing_block_not_the_start_of_the_failed_write() {
    // Chunks of 4 MiB, as the image cache makes them: one failed write covers
    // 4 MiB, and a bad block 3.7 MB into it must not be reported 3.7 MB early.
    let chunk = 4 << 20;
    let bytes = flashrack_testkit::image_bytes(10 << 20, 21, 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, chunk);
    let image = flashrack_engine::SourceImage::cached(path, manifest);
    let bad = u64::from(chunk) + 3_700_001;
    for block in [512u32, 4096] {
        let sub = tempfile::tempdir().unwrap();
        let spec = SimStickSpec::new("bad-block", 64 * MIB)
            .block_size(block)
            .write_fails_at(bad);
        let (failure, figures, _rack) = only_failure(&image, spec, sub.path(), options()).await;
        assert_eq!(failure.stage, Stage::Writing);
        let block_offset = bad / u64::from(block) * u64::from(block);
        match &failure.reason {
            FailReason::WriteError { offset, detail } => {
                assert_eq!(*offset, block_offset, "{block}: {detail}");
                assert!(
                    detail.contains(&format!("{block}-byte block"))
                        && detail.contains(&format!("{chunk}-byte write at offset {chunk}")),
                    "{detail}"
                );
            }
            other => panic!("{block}: expected a write error, got {other:?}"),
        }
        // The chunk before the bad one was written; the figure says so.
        assert_eq!(figures.bytes_written, u64::from(chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_during_the_capacity_probe_says_it_was_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 22);
    // The probe's markers are written from the highest offset down: the first
    // (the last block) is written, the second (the highest giant, one alias
    // window of 128 KiB below 64 MiB) fails.
    let (failure, figures, rack) = only_failure(
        &image,
        SimStickSpec::new("probe-write", 64 * MIB).write_error_after(512),
        dir.path(),
        options(),
    )
    .await;
    assert_eq!(failure.stage, Stage::Preparing);
    assert_eq!(
        failure.reason,
        FailReason::ProbeError {
            operation: ProbeOperation::Write,
            offset: Some(64 * MIB - 128 * 1024),
            detail: "Input/output error (os error 5)".into(),
        }
    );
    assert_eq!(figures.bytes_written, 0);
    drop(rack);
    // Reading the markers back fails at the first one.
    let (failure, _, _rack) = only_failure(
        &image,
        SimStickSpec::new("probe-read", 64 * MIB).read_error_after(0),
        dir.path(),
        options(),
    )
    .await;
    assert_eq!(failure.stage, Stage::Preparing);
    assert!(
        matches!(
            failure.reason,
            FailReason::ProbeError {
                operation: ProbeOperation::Read,
                offset: Some(0),
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure
        .to_string()
        .starts_with("capacity probe failed: reading"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_of_zero_bytes_has_no_medium_and_is_not_called_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 23);
    let (failure, figures, rack) = only_failure(
        &image,
        SimStickSpec::new("empty-reader", 0),
        dir.path(),
        options(),
    )
    .await;
    assert_eq!(failure.reason, FailReason::NoMedium);
    assert_eq!(failure.stage, Stage::Preparing);
    assert_eq!(figures.bytes_written, 0);
    assert_eq!(rack.sticks()[0].counters().bytes_written, 0);
}

/// The sha256 of the stick's first `len` bytes, computed apart from the
/// engine: its medium (the backing file) as a reader of the stick gets it,
/// with the bytes it corrupts on the way out flipped.
fn stick_digest(stick: &SimStick, len: usize) -> flashrack_core::Sha256Digest {
    let mut medium = std::fs::read(stick.path()).unwrap();
    medium.truncate(len);
    for &bad in &stick.spec().corrupt_at {
        if let Some(byte) = medium.get_mut(bad as usize) {
            *byte ^= 0xff;
        }
    }
    flashrack_core::Sha256Digest::of(&medium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_mismatch_the_read_back_digest_is_the_sticks_first_image_size_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize + 3000;
    let (image, _) = common::make_image(dir.path(), size, 24);
    let image = with_fingerprints(&image);
    let manifest = &image.manifest;
    let chunk = u64::from(common::CHUNK);
    let zero_chunk = (0..manifest.chunk_count())
        .find(|&i| matches!(manifest.chunk_kind(i), flashrack_core::ChunkKind::Zero))
        .expect("the test image has a zero chunk");
    let last = manifest.chunk_count() - 1;
    let cases = [
        // A byte in a hole of the image (a zero chunk is compared as zeros).
        ("zero-chunk", vec![zero_chunk * chunk + chunk / 2 + 1]),
        // The mismatch in the last, short piece, and nothing read after it.
        ("last-piece", vec![last * chunk + 5]),
        // The first byte of the second half of a chunk, and a later one.
        ("half", vec![3 * chunk + chunk / 2, size as u64 - 2]),
    ];
    let rack = corrupting_rack(dir.path(), &cases);
    for verify in [VerifyMode::Compare, VerifyMode::Hash] {
        let options = EngineOptions {
            verify,
            ..options()
        };
        let results = flash_rack(&image, &rack, options).await;
        for ((id, verdict, figures), ((_, bad), stick)) in
            results.iter().zip(cases.iter().zip(rack.sticks()))
        {
            assert_eq!(
                reason_of(verdict),
                Some(&FailReason::VerifyMismatch { offset: bad[0] }),
                "{verify:?} {id}"
            );
            assert_eq!(
                figures.read_back_sha256,
                Some(stick_digest(stick, size)),
                "{verify:?} {id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_rest_cannot_be_read_after_a_mismatch_no_digest_is_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize;
    let (image, _) = common::make_image(dir.path(), size, 25);
    let image = with_fingerprints(&image);
    // Without the probe, the read-back is the only reader: the thresholds
    // count from the image's first byte. The mismatch is early; the read
    // error, or the pull, comes after it.
    let options = EngineOptions {
        probe_capacity: false,
        ..options()
    };
    for verify in [VerifyMode::Compare, VerifyMode::Hash] {
        // Fresh sticks per pass: the thresholds count over a stick's life.
        let rack = SimRack::create(
            dir.path().join(format!("rack-{verify:?}")),
            [
                SimStickSpec::new("read-error", 4 * MIB)
                    .corrupt_at(1000)
                    .read_error_after(MIB + 4096),
                SimStickSpec::new("pulled", 4 * MIB)
                    .corrupt_at(1000)
                    .remove_after_read(MIB + 4096),
            ],
        )
        .unwrap();
        let options = EngineOptions {
            verify,
            ..options.clone()
        };
        for (id, verdict, figures) in flash_rack(&image, &rack, options).await {
            assert_eq!(
                reason_of(&verdict),
                Some(&FailReason::VerifyMismatch { offset: 1000 }),
                "{verify:?} {id}"
            );
            assert_eq!(figures.read_back_sha256, None, "{verify:?} {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_verdict_carries_the_bytes_the_stick_acknowledged_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes) = common::make_image(dir.path(), 3 * MIB as usize, 14);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            // Stuck in the write pass once 1 MiB (probe markers included) is on it.
            SimStickSpec::new("stalls-writing", 8 * MIB).stall_after_written(MIB),
            // Stuck in the read-back, after the whole image was written.
            SimStickSpec::new("stalls-verifying", 8 * MIB).stall_after_read(MIB + 100 * 1024),
        ],
    )
    .unwrap();
    let (results, _rx) = flash_with_stuck(
        &image,
        &rack,
        &["stalls-writing", "stalls-verifying"],
        options(),
    )
    .await;

    let (_, verdict, figures) = &results[0];
    assert!(matches!(
        reason_of(verdict),
        Some(FailReason::Stalled {
            during: Stage::Writing,
            ..
        })
    ));
    // What the watchdog knew: the image bytes the stick had acknowledged, a
    // lower bound (a write in flight may land), never more than reached it.
    assert!(
        figures.bytes_written > MIB / 2 && figures.bytes_written <= MIB,
        "{figures:?}"
    );
    let on_stick = rack
        .stick("stalls-writing")
        .unwrap()
        .counters()
        .bytes_written;
    assert!(
        figures.bytes_written <= on_stick,
        "{figures:?} vs {on_stick}"
    );
    assert_eq!(figures.bytes_written_bound, Bound::LowerBound);
    assert_eq!(figures.capacity.bytes(), 8 * MIB);

    let (_, verdict, figures) = &results[1];
    assert!(matches!(
        reason_of(verdict),
        Some(FailReason::Stalled {
            during: Stage::Verifying,
            ..
        })
    ));
    assert_eq!(figures.bytes_written, bytes.len() as u64, "{figures:?}");
    assert!(figures.bytes_verified > 0, "{figures:?}");
    assert_eq!(figures.bytes_written_bound, Bound::LowerBound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_out_of_descriptors_is_a_station_error_not_the_sticks_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 2 * MIB as usize, 31);
    let emfile = rustix::io::Errno::MFILE.raw_os_error();
    let enomem = rustix::io::Errno::NOMEM.raw_os_error();
    let eacces = rustix::io::Errno::ACCESS.raw_os_error();
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("", 8 * MIB).open_error(emfile),
            SimStickSpec::new("", 8 * MIB).open_error(enomem),
            SimStickSpec::new("", 8 * MIB).open_error(eacces),
            SimStickSpec::new("", 8 * MIB),
        ],
    )
    .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, targets(&rack), options(), tx)
        .await
        .unwrap();
    for (id, verdict, figures) in &results[..2] {
        let failure = verdict.failure().expect("not a pass");
        assert!(
            matches!(&failure.reason, FailReason::StationError { .. }),
            "{id}: {verdict}"
        );
        assert!(failure.reason.is_station_side(), "{id}");
        assert_eq!(failure.stage, Stage::Preparing);
        assert_eq!(figures.bytes_written, 0);
    }
    // Any other reason not to open stays the stick's.
    assert!(matches!(
        reason_of(&results[2].1),
        Some(FailReason::Unavailable { .. })
    ));
    assert_eq!(results[3].1, Verdict::Pass);
}

/// The niceness in a `stat` file of `/proc` (field 19; the name before it, in
/// parentheses, may hold spaces, so the fields are counted after its closing
/// parenthesis).
fn niceness_in_stat(stat: &str) -> i32 {
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    // After the name: the state (field 3) … the niceness (field 19).
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

/// The niceness of each of this process's threads named `name`, from
/// `/proc/self/task/<tid>/stat`.
fn niceness_of_threads_named(name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        // A thread that ended while the list was read has no files left.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end_matches('\n') != name {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            found.push(niceness_in_stat(&stat));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempts_helper_thread_runs_at_the_attempts_priority_not_lower() {
    let dir = tempfile::tempdir().unwrap();
    // Held in the middle of its read-back, where the helper thread reads the
    // stick while the attempt thread waits for the pieces.
    let (_fanout, stick, handle, _rx) = held_in_read_back(dir.path(), "nice", 17);
    until_stuck(&stick).await;
    // The process's own line is its main thread's.
    let process = niceness_in_stat(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let attempt = niceness_of_threads_named("flash nice");
    let helper = niceness_of_threads_named("flash nice io");
    handle.cancel();
    stick.release();
    handle.finish().await;
    let expected = process + flashrack_engine::attempt::IO_THREAD_NICENESS;
    assert_eq!(attempt, [expected.min(19)], "the attempt's thread");
    assert_eq!(
        helper,
        [expected.min(19)],
        "its helper, as low as the attempt"
    );
}

/// The sticks of the reset tests, on a fresh rack under `dir`: two that cache
/// what they lose (a fake whose medium keeps nothing past 4 MiB, hidden by a
/// write-through cache; an honest one whose write-back cache never reaches the
/// medium) and two healthy ones, one with a cache.
fn caching_rack(dir: &std::path::Path) -> SimRack {
    SimRack::create(
        dir,
        [
            SimStickSpec::new("fake-cached", 64 * MIB)
                .fake_capacity(4 * MIB, FakeMode::Vanish)
                .volatile_cache(16 * MIB, CacheMode::WriteThrough),
            SimStickSpec::new("lossy", 16 * MIB).volatile_cache(2 * MIB, CacheMode::LostOnReset),
            SimStickSpec::new("healthy", 16 * MIB),
            SimStickSpec::new("healthy-cached", 16 * MIB)
                .volatile_cache(2 * MIB, CacheMode::WriteThrough),
        ],
    )
    .unwrap()
}

/// The first byte of `image` that `medium` (a stick's backing file, read
/// through the stick's fake capacity: zeros past `real_size`) does not hold.
fn first_lost_byte(image: &[u8], medium: &[u8], real_size: usize) -> Option<u64> {
    image
        .iter()
        .enumerate()
        .position(|(at, &byte)| byte != if at < real_size { medium[at] } else { 0 })
        .map(|at| at as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_stick_passes_without_a_reset_and_fails_at_its_first_lost_byte_after_one() {
    let dir = tempfile::tempdir().unwrap();
    let image_size = 8 * MIB as usize;
    let (image, bytes) = common::make_image(dir.path(), image_size, 16);

    // Without a reset the cache answers the read-back: every stick passes,
    // the two that lost data included (the false pass of today's tools). The
    // capacity probe is off: it would catch both before writing (it resets the
    // sticks it can; see the probe's tests), and this is about the read-back.
    let no_probe = || EngineOptions {
        probe_capacity: false,
        ..options()
    };
    let rack = caching_rack(&dir.path().join("no-reset"));
    let results = flash_rack(&image, &rack, no_probe()).await;
    for (id, verdict, figures) in &results {
        assert_eq!(verdict, &Verdict::Pass, "{id}");
        assert!(!figures.verified_after_reset, "{id}");
        assert_eq!(rack.stick(&id.0).unwrap().counters().resets, 0);
    }
    // What the false pass hid: the media do not hold the image.
    let medium =
        |rack: &SimRack, name: &str| std::fs::read(rack.stick(name).unwrap().path()).unwrap();
    assert!(first_lost_byte(&bytes, &medium(&rack, "fake-cached"), 4 * MIB as usize).is_some());
    assert!(first_lost_byte(&bytes, &medium(&rack, "lossy"), image_size).is_some());

    // With a reset before the read-back, each fails at its first lost byte.
    let rack = caching_rack(&dir.path().join("reset"));
    let options = EngineOptions {
        reset_before_verify: true,
        ..no_probe()
    };
    let results = flash_rack(&image, &rack, options).await;
    let by_name = |name: &str| {
        results
            .iter()
            .find(|(id, ..)| id.0 == name)
            .map(|(_, v, f)| (v.clone(), f.clone()))
            .unwrap()
    };
    for (id, _, figures) in &results {
        assert!(figures.verified_after_reset, "{id}");
        assert_eq!(rack.stick(&id.0).unwrap().counters().resets, 1, "{id}");
    }
    for healthy in ["healthy", "healthy-cached"] {
        assert_eq!(by_name(healthy).0, Verdict::Pass, "{healthy}");
    }
    // The fake's medium keeps nothing past 4 MiB: the first non-zero byte of
    // the image from there is the first one lost.
    let (verdict, _) = by_name("fake-cached");
    let lost = first_lost_byte(&bytes, &medium(&rack, "fake-cached"), 4 * MIB as usize).unwrap();
    assert!(lost >= 4 * MIB, "{lost}");
    assert_eq!(
        verdict.failure().map(|f| (&f.reason, f.stage)),
        Some((
            &FailReason::VerifyMismatch { offset: lost },
            Stage::Verifying
        ))
    );
    // The lossy stick's last 2 MiB of writes never reached its medium.
    let (verdict, figures) = by_name("lossy");
    let lost = first_lost_byte(&bytes, &medium(&rack, "lossy"), image_size).unwrap();
    assert!(lost >= (image_size as u64) - 2 * MIB, "{lost}");
    assert_eq!(
        reason_of(&verdict),
        Some(&FailReason::VerifyMismatch { offset: lost })
    );
    assert_ne!(figures.read_back_sha256, Some(image.manifest.sha256()));
}

/// A target that cannot be reset (as block devices and files are until the
/// USB reset exists): a simulated stick behind the trait's defaults, saying
/// whether it may cache writes (a loop device or a file may not).
struct Plain {
    stick: SimStick,
    may_cache_writes: bool,
}

impl Plain {
    /// Caches writes as a stick may: the trait's default.
    fn stick(stick: SimStick) -> Self {
        Self {
            stick,
            may_cache_writes: true,
        }
    }

    /// Has no cache of its own, as a loop device or a file.
    fn without_cache(stick: SimStick) -> Self {
        Self {
            stick,
            may_cache_writes: false,
        }
    }
}

impl Target for Plain {
    fn name(&self) -> String {
        self.stick.name()
    }

    fn geometry(&self) -> Result<flashrack_target::TargetGeometry, flashrack_target::TargetError> {
        self.stick.geometry()
    }

    fn may_cache_writes(&self) -> bool {
        self.may_cache_writes
    }

    fn open_writer(
        &self,
    ) -> Result<Box<dyn flashrack_target::TargetWriter>, flashrack_target::TargetError> {
        self.stick.open_writer()
    }

    fn open_reader(
        &self,
    ) -> Result<Box<dyn flashrack_target::TargetReader>, flashrack_target::TargetError> {
        self.stick.open_reader()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_be_reset_is_read_back_as_before_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 4 * MIB as usize, 17);
    let stick = SimStick::create(
        SimStickSpec::new("lossy", 16 * MIB).volatile_cache(MIB, CacheMode::LostOnReset),
        dir.path().join("lossy.img"),
    )
    .unwrap();
    let target: Arc<dyn Target> = Arc::new(Plain::stick(stick.clone()));
    let options = EngineOptions {
        reset_before_verify: true,
        ..options()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, vec![(TargetId::new("lossy"), target)], options, tx)
        .await
        .unwrap();
    // Its cache answered: a pass that does not claim a reset.
    assert_eq!(results[0].1, Verdict::Pass);
    assert!(!results[0].2.verified_after_reset);
    assert_eq!(stick.counters().resets, 0);
}

/// The test options with a probe that defeats the sticks' caches (a reset
/// where the stick can be reset, else the filler).
fn defeating_cache() -> EngineOptions {
    EngineOptions {
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            ..Default::default()
        },
        ..options()
    }
}

/// The real size a capacity lie reports, if the verdict is one.
fn real_bytes_of(verdict: &Verdict) -> Option<u64> {
    match reason_of(verdict) {
        Some(FailReason::CapacityLie {
            real_bytes: Some(real),
            first_bad_offset,
            ..
        }) => {
            assert_eq!(*first_bad_offset, real.bytes());
            Some(real.bytes())
        }
        _ => None,
    }
}

/// Writes `image` to a rack of `fakes` (name, real size, spec) with the probe
/// defeating caches: each is found a capacity lie of exactly its real size,
/// in `preparing`, before any of the image was written.
async fn probe_fakes(
    dir: &std::path::Path,
    image: &SourceImage,
    fakes: &[(&str, u64, SimStickSpec)],
) -> Results {
    let rack = SimRack::create(
        dir.join("rack"),
        fakes.iter().map(|(name, _, spec)| spec.clone().name(*name)),
    )
    .unwrap();
    let results = flash_rack(image, &rack, defeating_cache()).await;
    for (name, real, _) in fakes {
        let (verdict, figures) = result_of(&results, name);
        assert_eq!(real_bytes_of(verdict), Some(*real), "{name}: {verdict:?}");
        assert_eq!(verdict.failure().unwrap().stage, Stage::Preparing);
        // Found before any of the image was written.
        assert_eq!(figures.bytes_written, 0, "{name}");
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_finds_the_exact_real_size_of_fakes_that_wrap_drop_or_hide_behind_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 30);
    // Real sizes that are not round: the bisection must end on the block.
    let odd = 100 * MIB + 3 * 512;
    let fakes = [
        // A classic counterfeit: wraps at its real (power-of-two) size.
        (
            "wrap",
            64 * MIB,
            SimStickSpec::new("", 1 << 30).fake_capacity(64 * MIB, FakeMode::Wrap),
        ),
        // Drops what lands past its real size.
        (
            "vanish",
            odd,
            SimStickSpec::new("", 1 << 30).fake_capacity(odd, FakeMode::Vanish),
        ),
        // Sold as 16 GB, stores 8 GB (the numbers an operator returns a batch with).
        (
            "vanish-16g",
            8_000_000_000,
            SimStickSpec::new("", 16_000_000_000).fake_capacity(8_000_000_000, FakeMode::Vanish),
        ),
        // Drops them, behind a 16 MiB cache that answers their read-back until
        // a reset: markers that fit in it came back with the old probe.
        (
            "cached",
            odd,
            SimStickSpec::new("", 1 << 30)
                .fake_capacity(odd, FakeMode::Vanish)
                .volatile_cache(16 * MIB, CacheMode::WriteThrough),
        ),
    ];
    let results = probe_fakes(dir.path(), &image, &fakes).await;
    for (name, ..) in &fakes {
        let (verdict, _) = result_of(&results, name);
        assert!(
            verdict.to_string().contains("stores only"),
            "{name}: {verdict}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_that_cannot_be_reset_has_its_cache_pushed_out_by_the_filler() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 31);
    let real = 40 * MIB + 512;
    let cached_fake = SimStick::create(
        SimStickSpec::new("cached-fake", 1 << 30)
            .fake_capacity(real, FakeMode::Vanish)
            .volatile_cache(8 * MIB, CacheMode::WriteThrough),
        dir.path().join("cached-fake.img"),
    )
    .unwrap();
    // An honest stick whose write-back cache keeps its last 8 MiB of writes
    // from the medium until a reset: the filler pushes the markers through.
    let lossy = SimStick::create(
        SimStickSpec::new("lossy", 256 * MIB).volatile_cache(8 * MIB, CacheMode::LostOnReset),
        dir.path().join("lossy.img"),
    )
    .unwrap();
    let targets: Vec<(TargetId, Arc<dyn Target>)> = vec![
        (
            TargetId::new("cached-fake"),
            Arc::new(Plain::stick(cached_fake.clone())),
        ),
        (
            TargetId::new("lossy"),
            Arc::new(Plain::stick(lossy.clone())),
        ),
    ];
    let options = EngineOptions {
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            cache_bound: 16 * MIB,
            ..Default::default()
        },
        ..options()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, targets, options, tx).await.unwrap();
    assert_eq!(
        real_bytes_of(&results[0].1),
        Some(real),
        "{:?}",
        results[0].1
    );
    assert_eq!(results[1].1, Verdict::Pass);
    for stick in [&cached_fake, &lossy] {
        assert_eq!(stick.counters().resets, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_a_cache_of_its_own_gets_the_markers_but_no_filler() {
    let dir = tempfile::tempdir().unwrap();
    let image_size = MIB as usize;
    let (image, _) = common::make_image(dir.path(), image_size, 33);
    let stick = |name: &str| {
        SimStick::create(
            SimStickSpec::new(name, 256 * MIB),
            dir.path().join(format!("{name}.img")),
        )
        .unwrap()
    };
    let (plain, cacheless) = (stick("plain"), stick("cacheless"));
    let targets: Vec<(TargetId, Arc<dyn Target>)> = vec![
        (
            TargetId::new("plain"),
            Arc::new(Plain::stick(plain.clone())),
        ),
        (
            TargetId::new("cacheless"),
            Arc::new(Plain::without_cache(cacheless.clone())),
        ),
    ];
    let cache_bound = 16 * MIB;
    let options = EngineOptions {
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            cache_bound,
            ..Default::default()
        },
        ..options()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, targets, options, tx).await.unwrap();
    for (id, verdict, _) in &results {
        assert_eq!(verdict, &Verdict::Pass, "{id}");
    }
    // Markers are one block each, a few dozen of them.
    let markers = 64 * 4096;
    let written = |s: &SimStick| s.counters().bytes_written;
    assert!(
        written(&plain) >= image_size as u64 + cache_bound - markers,
        "the stick that may cache got its filler: {}",
        written(&plain)
    );
    assert!(
        written(&cacheless) <= image_size as u64 + markers,
        "the target without a cache got no filler: {}",
        written(&cacheless)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_stick_passes_the_probe_with_one_reset_and_a_lossy_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 32);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("honest", 1 << 30),
            SimStickSpec::new("honest-cached", 1 << 30)
                .volatile_cache(16 * MIB, CacheMode::WriteThrough),
            // Its write-back cache never reaches the medium before a reset:
            // flushed markers are gone after it, even the one at 0.
            SimStickSpec::new("lossy", 1 << 30).volatile_cache(2 * MIB, CacheMode::LostOnReset),
        ],
    )
    .unwrap();
    let results = flash_rack(&image, &rack, defeating_cache()).await;
    for name in ["honest", "honest-cached"] {
        let (_, verdict, _) = results.iter().find(|(id, ..)| id.0 == name).unwrap();
        assert_eq!(verdict, &Verdict::Pass, "{name}");
        // The probe's one reset; the image itself is not written twice.
        let counters = rack.stick(name).unwrap().counters();
        assert_eq!(counters.resets, 1, "{name}");
    }
    let (_, verdict, _) = results.iter().find(|(id, ..)| id.0 == "lossy").unwrap();
    let failure = verdict.failure().unwrap();
    assert_eq!(failure.stage, Stage::Preparing);
    assert!(
        matches!(&failure.reason, FailReason::FlushError { detail } if detail.contains("even at offset 0")),
        "{failure:?}"
    );
}

/// Figures and verdict of the one stick of `rack` named `name`.
fn result_of<'a>(results: &'a Results, name: &str) -> (&'a Verdict, &'a AttemptFigures) {
    results
        .iter()
        .find(|(id, ..)| id.0 == name)
        .map(|(_, v, f)| (v, f))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_verify_reads_its_share_names_its_seed_and_never_claims_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    // 64 chunks of 64 KiB.
    let (image, _) = common::make_image(dir.path(), 4 * MIB as usize, 40);
    let chunk = u64::from(common::CHUNK);
    let middle = 30 * chunk + 17;
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("good", 8 * MIB),
            // The first chunk is always in the sample.
            SimStickSpec::new("bad-first", 8 * MIB).corrupt_at(100),
            SimStickSpec::new("bad-middle", 8 * MIB).corrupt_at(middle),
        ],
    )
    .unwrap();
    // Without the probe, every byte read from a stick is the read-back's.
    let options = EngineOptions {
        sample_percent: Some(10.0),
        probe_capacity: false,
        ..options()
    };
    let results = flash_rack(&image, &rack, options).await;

    let (verdict, figures) = result_of(&results, "good");
    assert_eq!(verdict, &Verdict::Pass);
    assert_eq!(figures.verify_method, Some(VerifyMethod::Sampled));
    let sample = figures.sample.expect("the sample is recorded");
    assert_eq!((sample.chunks_checked, sample.chunks_total), (7, 64));
    assert_eq!(figures.pass_words(), "sampled (10 %)");
    assert_eq!(figures.bytes_verified, 7 * chunk);
    assert_eq!(rack.stick("good").unwrap().counters().bytes_read, 7 * chunk);
    assert_eq!(figures.read_back_sha256, None, "a sample proves no digest");
    // The seed names the chunks again.
    let chosen = flashrack_engine::sample::choose_chunks(64, 10.0, sample.seed);
    assert_eq!(chosen.iter().filter(|&&c| c).count(), 7);
    assert!(chosen[0] && chosen[63]);

    let (verdict, figures) = result_of(&results, "bad-first");
    assert_eq!(
        reason_of(verdict),
        Some(&FailReason::VerifyMismatch { offset: 100 })
    );
    assert_eq!(figures.read_back_sha256, None);
    assert_eq!(figures.verify_method, Some(VerifyMethod::Sampled));

    // The middle chunk's damage is seen exactly when its chunk was drawn.
    let (verdict, figures) = result_of(&results, "bad-middle");
    let drawn = flashrack_engine::sample::choose_chunks(64, 10.0, figures.sample.unwrap().seed)
        [(middle / chunk) as usize];
    if drawn {
        assert_eq!(
            reason_of(verdict),
            Some(&FailReason::VerifyMismatch { offset: middle })
        );
    } else {
        assert_eq!(verdict, &Verdict::Pass);
        assert_eq!(figures.pass_words(), "sampled (10 %)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_reads_back_without_writing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes) = common::make_image(dir.path(), 2 * MIB as usize, 41);
    let rack = SimRack::create(
        dir.path().join("rack"),
        [
            SimStickSpec::new("written", 8 * MIB),
            SimStickSpec::new("blank", 8 * MIB),
            SimStickSpec::new("small", MIB),
            // Holds the image (put on its medium below) and refuses writes.
            SimStickSpec::new("locked", 8 * MIB).read_only(),
        ],
    )
    .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(rack.stick("locked").unwrap().path())
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0))
        .unwrap();
    // The first stick gets the image the ordinary way.
    let (tx, _rx) = mpsc::unbounded_channel();
    let written: Arc<dyn Target> = Arc::new(rack.stick("written").unwrap().clone());
    let first = flash_all(
        &image,
        vec![(TargetId::new("written"), written)],
        options(),
        tx,
    )
    .await
    .unwrap();
    assert_eq!(first[0].1, Verdict::Pass);
    let before: Vec<u64> = rack
        .sticks()
        .iter()
        .map(|s| s.counters().bytes_written)
        .collect();

    let audit = EngineOptions {
        audit: true,
        ..options()
    };
    let results = flash_rack(&image, &rack, audit).await;
    // Nothing written to any stick.
    let after: Vec<u64> = rack
        .sticks()
        .iter()
        .map(|s| s.counters().bytes_written)
        .collect();
    assert_eq!(before, after);
    for name in ["written", "locked"] {
        let (verdict, figures) = result_of(&results, name);
        assert_eq!(verdict, &Verdict::Pass, "{name}");
        assert_eq!(figures.verify_method, Some(VerifyMethod::Audit));
        assert_eq!(figures.pass_words(), "audit pass");
        assert_eq!(
            (figures.bytes_written, figures.bytes_written_bound),
            (0, Bound::Unknown)
        );
        assert_eq!(figures.bytes_verified, bytes.len() as u64);
        assert_eq!(figures.read_back_sha256, Some(image.manifest.sha256()));
    }
    let (verdict, figures) = result_of(&results, "blank");
    assert!(matches!(
        reason_of(verdict),
        Some(FailReason::VerifyMismatch { .. })
    ));
    assert_eq!(figures.verify_method, Some(VerifyMethod::Audit));
    let (verdict, _) = result_of(&results, "small");
    assert!(
        matches!(reason_of(verdict), Some(FailReason::TooSmall { .. })),
        "{verdict:?}"
    );

    // An audit can be sampled too: it says sampled.
    let sampled = EngineOptions {
        audit: true,
        sample_percent: Some(5.0),
        ..options()
    };
    let results = flash_rack(&image, &rack, sampled).await;
    let (verdict, figures) = result_of(&results, "written");
    assert_eq!(verdict, &Verdict::Pass);
    assert_eq!(figures.verify_method, Some(VerifyMethod::Sampled));
    assert_eq!(figures.bytes_written_bound, Bound::Unknown);
    assert_eq!(figures.pass_words(), "sampled (5 %)");
}

/// A 2 MiB image made from `seed` (and its bytes), and a rack of one 8 MiB
/// stick, `stuck`, whose writes hang once 1 MiB is written, until it is
/// released or removed.
fn image_and_a_stick_that_hangs(
    dir: &std::path::Path,
    seed: u64,
) -> (SourceImage, Vec<u8>, SimRack) {
    let (image, bytes) = common::make_image(dir, 2 * MIB as usize, seed);
    let rack = SimRack::create(
        dir.join("rack"),
        [SimStickSpec::new("stuck", 8 * MIB).hang_after_written(MIB)],
    )
    .unwrap();
    (image, bytes, rack)
}

/// How long a retry waits for a stalled attempt's stuck I/O to let go of the
/// stick, in the retry tests (on the manual clock).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// A fan-out on a manual clock and the outcome of its first attempt on
/// `stick`, which got stuck in a write and was given `stalled` by the
/// watchdog once the clock moved past the stall timeout.
async fn stalled_first_attempt(
    image: &SourceImage,
    stick: &SimStick,
) -> (Fanout, ManualClock, flashrack_engine::AttemptOutcome) {
    let clock = ManualClock::new();
    let options = EngineOptions {
        stall_timeout: STALL_TIMEOUT,
        release_timeout: RELEASE_TIMEOUT,
        clock: Clock::Manual(clock.clone()),
        ..options()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let fanout = Fanout::new(image, options, tx).unwrap();
    let target: Arc<dyn Target> = Arc::new(stick.clone());
    let first = tokio::spawn(fanout.start(TargetId::new("stuck#1"), target).finish());
    until_stuck(stick).await;
    // The watchdog's verdict: the clock moves by a stall timeout each time
    // the watchdog has acted on the last move (it may wait from a later beat
    // of the piece the thread had in hand).
    for _ in 0..10 {
        if first.is_finished() {
            break;
        }
        clock.advance(STALL_TIMEOUT);
        tokio::time::timeout(WAIT, clock.until_nothing_due())
            .await
            .expect("the watchdog acts on the moved clock");
    }
    let outcome = tokio::time::timeout(WAIT, first)
        .await
        .expect("the stalled verdict")
        .unwrap();
    (fanout, clock, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_given_up_on_while_stuck_in_the_kernel_gets_its_verdict_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _, rack) = image_and_a_stick_that_hangs(dir.path(), 43);
    let stick = rack.stick("stuck").unwrap();
    let clock = ManualClock::new();
    let options = EngineOptions {
        stall_timeout: STALL_TIMEOUT,
        clock: Clock::Manual(clock.clone()),
        ..options()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let fanout = Fanout::new(&image, options, tx).unwrap();
    let target: Arc<dyn Target> = Arc::new(stick.clone());
    let handle = fanout.start(TargetId::new("stuck#1"), target);
    let canceller = handle.canceller();
    let attempt = tokio::spawn(handle.finish());
    until_stuck(stick).await;
    let reason = FailReason::LostAfterReset { after_secs: 7 };
    canceller.abandon(reason.clone());
    // Its thread does not answer: the verdict waits for the grace only (the
    // clock is never moved to the stall timeout).
    let grace_over = clock.now() + ABANDON_GRACE;
    tokio::time::timeout(WAIT, clock.until_sleeps(|s| s.contains(&grace_over)))
        .await
        .expect("the grace is armed");
    assert!(!attempt.is_finished());
    clock.advance(ABANDON_GRACE);
    let outcome = tokio::time::timeout(WAIT, attempt)
        .await
        .expect("the verdict once the grace is over")
        .unwrap();
    let (verdict, figures) = outcome.result.unwrap();
    assert_eq!(
        verdict,
        Verdict::Fail(flashrack_core::Failure {
            reason,
            stage: Stage::Writing,
        })
    );
    assert_eq!(figures.bytes_written_bound, Bound::LowerBound);
    // Left behind, its thread holds the stick until the kernel lets go.
    assert!(!outcome.hold.is_released());
    stick.release();
    let mut hold = outcome.hold.clone();
    tokio::time::timeout(WAIT, hold.released())
        .await
        .expect("the stuck thread lets go once its write returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_stall_waits_for_the_stuck_write_to_let_go_then_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes, rack) = image_and_a_stick_that_hangs(dir.path(), 41);
    let stick = rack.stick("stuck").unwrap();
    let (fanout, clock, first) = stalled_first_attempt(&image, stick).await;
    assert!(
        matches!(
            reason_of(&first.result.as_ref().unwrap().0),
            Some(FailReason::Stalled {
                during: Stage::Writing,
                ..
            })
        ),
        "{:?}",
        first.result
    );
    // The abandoned thread still holds the stick: opened now, it is busy.
    assert!(!first.hold.is_released());
    assert!(matches!(
        stick.open_writer(),
        Err(flashrack_target::TargetError::Busy(_))
    ));
    let target: Arc<dyn Target> = Arc::new(stick.clone());
    let retry = tokio::spawn(
        fanout
            .start_after(TargetId::new("stuck#2"), target, Some(first.hold.clone()))
            .finish(),
    );
    // The retry waits for the release, bounded on the clock (its only
    // timer: no watchdog before its thread starts).
    tokio::time::timeout(WAIT, clock.until_sleeps(|s| s.len() == 1))
        .await
        .expect("the retry waits for the stick to be released");
    assert!(!retry.is_finished());
    // The stuck write comes back from the kernel: the abandoned thread sees
    // its cancel and lets go; the retry starts at once, with the clock where
    // it was, and passes.
    stick.release();
    let retried = tokio::time::timeout(WAIT, retry)
        .await
        .expect("the retry ends once the stick is released")
        .unwrap();
    let (verdict, figures) = retried.result.unwrap();
    assert_eq!(verdict, Verdict::Pass, "{figures:?}");
    assert!(first.hold.is_released());
    assert!(retried.hold.is_released());
    assert_eq!(figures.bytes_written, bytes.len() as u64);
    assert_eq!(
        stick_digest(stick, bytes.len()),
        flashrack_core::Sha256Digest::of(&bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_stick_stuck_for_good_ends_held_by_stuck_io_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _, rack) = image_and_a_stick_that_hangs(dir.path(), 42);
    let stick = rack.stick("stuck").unwrap();
    let (fanout, clock, first) = stalled_first_attempt(&image, stick).await;
    let written = stick.counters().bytes_written;

    // A retry the operator stops while it waits: interrupted at once, with
    // the clock where it was.
    let target: Arc<dyn Target> = Arc::new(stick.clone());
    let stopped = fanout.start_after(
        TargetId::new("stuck#2"),
        target.clone(),
        Some(first.hold.clone()),
    );
    tokio::time::timeout(WAIT, clock.until_sleeps(|s| s.len() == 1))
        .await
        .expect("the retry waits for the stick to be released");
    stopped.cancel();
    let stopped = tokio::time::timeout(WAIT, stopped.finish())
        .await
        .expect("a cancel ends the wait at once");
    assert_eq!(
        stopped.result.unwrap().0.failure().map(|f| &f.reason),
        Some(&FailReason::Interrupted)
    );

    // A retry whose wait runs out: the distinct verdict, in `preparing`, and
    // the stick never opened (nothing written, the stuck call still the only
    // one).
    let retry = tokio::spawn(
        fanout
            .start_after(TargetId::new("stuck#3"), target, Some(first.hold.clone()))
            .finish(),
    );
    tokio::time::timeout(WAIT, clock.until_sleeps(|s| s.len() == 1))
        .await
        .expect("the retry waits for the stick to be released");
    clock.advance(RELEASE_TIMEOUT);
    let retried = tokio::time::timeout(WAIT, retry)
        .await
        .expect("the wait is bounded")
        .unwrap();
    let (verdict, figures) = retried.result.unwrap();
    assert_eq!(
        verdict.failure(),
        Some(&flashrack_core::Failure {
            reason: FailReason::HeldByStuckIo {
                waited_secs: RELEASE_TIMEOUT.as_secs()
            },
            stage: Stage::Preparing,
        })
    );
    assert!(verdict.to_string().contains("pull the stick"), "{verdict}");
    assert_eq!(figures, AttemptFigures::default());
    assert_eq!(stick.counters().bytes_written, written, "never written");
    assert_eq!(stick.stalled_calls(), 1);
    assert!(!first.hold.is_released());
    // Its own thread never started: it holds nothing.
    assert!(retried.hold.is_released());
    stick.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fakes_that_wrap_or_drop_at_a_size_that_is_no_power_of_two_get_their_exact_real_size() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 33);
    // Wrapping at such a size, a stick stores a block b past it at
    // b mod real: no other marker of the first round need land there, and
    // b read back its own marker (the probe said honest: the image fit, and
    // the fake passed).
    let odd = 100 * MIB + 3 * 512;
    let fakes = [
        (
            "wrap-odd",
            odd,
            SimStickSpec::new("", 1 << 30).fake_capacity(odd, FakeMode::Wrap),
        ),
        // Sold as 16 GB, wraps at 7.5 GB (to the block).
        (
            "wrap-16g",
            7_499_999_744,
            SimStickSpec::new("", 16_000_000_000).fake_capacity(7_499_999_744, FakeMode::Wrap),
        ),
        // Just past a power of two: its aliases land just above 0.
        (
            "wrap-just-past",
            64 * MIB + 512,
            SimStickSpec::new("", 1 << 30).fake_capacity(64 * MIB + 512, FakeMode::Wrap),
        ),
        // Below the alias window (2 MiB for a 1 GiB claim): the window's own
        // blocks wrap onto real ones, and the stick is probed again as if
        // it claimed the window only.
        (
            "wrap-tiny",
            MIB + 5 * 512,
            SimStickSpec::new("", 1 << 30).fake_capacity(MIB + 5 * 512, FakeMode::Wrap),
        ),
        // Drops what lands past such a size.
        (
            "vanish-odd",
            odd + 512,
            SimStickSpec::new("", 1 << 30).fake_capacity(odd + 512, FakeMode::Vanish),
        ),
        // Wraps at such a size behind a cache that answers the read-back of
        // recent writes until a reset.
        (
            "wrap-odd-cached",
            odd,
            SimStickSpec::new("", 1 << 30)
                .fake_capacity(odd, FakeMode::Wrap)
                .volatile_cache(16 * MIB, CacheMode::WriteThrough),
        ),
    ];
    probe_fakes(dir.path(), &image, &fakes).await;
}

#[test]
fn the_alias_window_grows_with_the_claim_within_its_bounds() {
    use flashrack_engine::probe::{alias_window, giant_offsets};
    assert_eq!(alias_window(16_000_000_000, 512), 32 * MIB);
    assert_eq!(alias_window(1 << 30, 512), 2 * MIB);
    assert_eq!(alias_window(256_000_000_000, 512), 64 * MIB);
    assert_eq!(alias_window(MIB, 512), 16 * 512);
    assert_eq!(alias_window(MIB, 4096), 16 * 4096);
    assert_eq!(alias_window(u64::MAX, 512), 64 * MIB);
    // A giant every window, below the last block.
    let giants: Vec<u64> = giant_offsets(2 * MIB, 8 * MIB - 512).collect();
    assert_eq!(giants, [2 * MIB, 4 * MIB, 6 * MIB]);
    assert_eq!(
        giant_offsets(alias_window(16_000_000_000, 512), 16_000_000_000 - 512).count(),
        476
    );
}
