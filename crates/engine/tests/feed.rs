//! Targets following an import through an `ImageFeed`, on the simulated rack:
//! the test is the importer, so it decides when each chunk exists and when
//! the import ends, and the order of events proves what the targets did
//! meanwhile.

mod common;
#[path = "common/rack.rs"]
mod rack;
use rack::targets;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{
    EngineEvent, EngineEventKind, FailReason, Sha256Digest, Stage, Verdict, VerifyMethod,
};
use flashrack_engine::feed::PACE_GIVE_UP;
use flashrack_engine::{EngineError, EngineOptions, Fanout, ImageFeed};
use flashrack_simrack::sim::{SimRack, SimStickSpec};
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_128;

const MIB: u64 = 1 << 20;
const CHUNK: usize = common::CHUNK as usize;
/// A bound on a hang, never a synchronization.
const WAIT: Duration = Duration::from_secs(60);

fn options() -> EngineOptions {
    EngineOptions {
        stall_timeout: Duration::from_secs(3600),
        // Every piece written is a progress event: the tests wait on them.
        progress_interval: Duration::ZERO,
        source_cache_chunks: 4,
        ..EngineOptions::default()
    }
}

/// The importer's side: the raw bytes go to `file`, chunk by chunk, and each
/// is announced once it is there.
struct Importer {
    feed: Arc<ImageFeed>,
    file: File,
    bytes: Vec<u8>,
    next: usize,
}

impl Importer {
    fn begin(dir: &std::path::Path, bytes: Vec<u8>, size_known: bool) -> Self {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("importing.raw"))
            .unwrap();
        let feed = ImageFeed::new();
        let hint = size_known.then_some(bytes.len() as u64);
        feed.begin(file.try_clone().unwrap(), CHUNK as u32, hint)
            .unwrap();
        Self {
            feed,
            file,
            bytes,
            next: 0,
        }
    }

    fn chunks(&self) -> usize {
        self.bytes.len().div_ceil(CHUNK)
    }

    /// Stores and announces the next `n` chunks.
    fn produce(&mut self, n: usize) {
        for _ in 0..n {
            let start = self.next * CHUNK;
            let chunk = &self.bytes[start..(start + CHUNK).min(self.bytes.len())];
            let zero = chunk.iter().all(|&b| b == 0);
            if !zero {
                self.file.write_all_at(chunk, start as u64).unwrap();
            }
            self.feed.push(chunk.len(), zero, xxh3_128(chunk)).unwrap();
            self.next += 1;
        }
    }

    fn finish(&self) {
        self.feed.finish(Sha256Digest::of(&self.bytes)).unwrap();
    }

    /// The import as the application runs it, on a thread of its own: every
    /// chunk stored, then announced with its bytes handed over (data chunks,
    /// `push_data`), as fast as the feed lets it, and the feed ended.
    fn run_handing_over(mut self) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for index in 0..self.chunks() {
                let start = index * CHUNK;
                let chunk = &self.bytes[start..(start + CHUNK).min(self.bytes.len())];
                let zero = chunk.iter().all(|&b| b == 0);
                if zero {
                    self.feed.push(chunk.len(), true, xxh3_128(chunk)).unwrap();
                } else {
                    self.file.write_all_at(chunk, start as u64).unwrap();
                    self.feed.push_data(chunk, xxh3_128(chunk)).unwrap();
                }
                self.next += 1;
            }
            self.finish();
        })
    }
}

/// Bytes of the image's data chunks (those not all zero).
fn data_bytes(bytes: &[u8]) -> u64 {
    bytes
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| c.len() as u64)
        .sum()
}

fn rack(dir: &std::path::Path, specs: Vec<SimStickSpec>) -> SimRack {
    SimRack::create(dir.join("rack"), specs).unwrap()
}

/// Receives events (keeping them in `seen`) until `done` says so.
async fn until(
    events: &mut mpsc::UnboundedReceiver<EngineEvent>,
    seen: &mut Vec<EngineEvent>,
    mut done: impl FnMut(&[EngineEvent]) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        while !done(seen) {
            seen.push(events.recv().await.expect("the attempts still run"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened; events: {seen:?}"));
}

/// Whether every target in `names` has written at least `bytes`.
fn written(seen: &[EngineEvent], names: &[&str], bytes: u64) -> bool {
    names.iter().all(|name| {
        seen.iter().any(|e| {
            e.target.0 == *name
                && matches!(e.kind, EngineEventKind::Progress { stage: Stage::Writing, done, .. } if done >= bytes)
        })
    })
}

/// Whether every target in `names` has entered `stage`.
fn entered(seen: &[EngineEvent], names: &[&str], stage: Stage) -> bool {
    names.iter().all(|name| {
        seen.iter()
            .any(|e| e.target.0 == *name && e.kind == EngineEventKind::Stage { stage })
    })
}

/// Whether any target has begun its read-back or been given a verdict.
fn read_back_or_verdict(seen: &[EngineEvent]) -> bool {
    seen.iter().any(|e| {
        matches!(
            e.kind,
            EngineEventKind::Stage {
                stage: Stage::Verifying
            } | EngineEventKind::Finished { .. }
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_write_the_first_chunks_before_the_import_ends_and_pass_once_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(3 * MIB as usize + 1234, 7, 3 * CHUNK);
    let mut importer = Importer::begin(dir.path(), bytes.clone(), true);
    let rack = rack(
        dir.path(),
        vec![
            SimStickSpec::new("a", 8 * MIB),
            SimStickSpec::new("b", 8 * MIB),
        ],
    );
    let (tx, mut events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(importer.feed.clone(), options(), tx).unwrap();
    let handles: Vec<_> = targets(&rack)
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    drop(fanout);
    let mut seen = Vec::new();

    // One chunk imported: both sticks write it, and wait for the next.
    importer.produce(1);
    until(&mut events, &mut seen, |seen| {
        written(seen, &["a", "b"], CHUNK as u64)
    })
    .await;
    assert_eq!(importer.feed.ended(), None, "the import has not ended");
    assert!(
        !written(&seen, &["a"], 2 * CHUNK as u64),
        "never ahead of the import"
    );

    // The whole image imported, but not ended: every stick writes it all and
    // flushes, then waits; nothing is read back, no verdict is given.
    importer.produce(importer.chunks() - 1);
    until(&mut events, &mut seen, |seen| {
        entered(seen, &["a", "b"], Stage::Flushing)
    })
    .await;
    tokio::task::yield_now().await;
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        !read_back_or_verdict(&seen),
        "a read-back or a verdict before the import ended: {seen:?}"
    );

    importer.finish();
    for handle in handles {
        let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
        let (verdict, figures) = outcome.result.unwrap();
        assert_eq!(verdict, Verdict::Pass, "{}", outcome.id);
        assert_eq!(figures.read_back_sha256, Some(Sha256Digest::of(&bytes)));
        assert_eq!(figures.bytes_written, bytes.len() as u64);
        assert_eq!(figures.verify_method, Some(VerifyMethod::Fingerprint));
        let stick = rack.stick(&outcome.id.0).unwrap();
        let medium = std::fs::read(stick.path()).unwrap();
        assert_eq!(
            &medium[..bytes.len()],
            &bytes[..],
            "{} holds the image",
            outcome.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_fails_every_target_writing_or_waiting_and_none_passes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(2 * MIB as usize, 8, 3 * CHUNK);
    let mut importer = Importer::begin(dir.path(), bytes, true);
    // "slow" writes a chunk at a time far behind; "fast" has everything
    // written and waits for the end of the import.
    let rack = rack(
        dir.path(),
        vec![
            SimStickSpec::new("fast", 8 * MIB),
            SimStickSpec::new("slow", 8 * MIB),
        ],
    );
    let (tx, mut events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(importer.feed.clone(), options(), tx).unwrap();
    let mut handles = Vec::new();
    let mut seen = Vec::new();
    for (id, target) in targets(&rack) {
        if id.0 == "fast" {
            handles.push(fanout.start(id, target));
        }
    }
    importer.produce(importer.chunks());
    until(&mut events, &mut seen, |seen| {
        entered(seen, &["fast"], Stage::Flushing)
    })
    .await;
    // Started late, "slow" is still writing when the import fails.
    for (id, target) in targets(&rack) {
        if id.0 == "slow" {
            handles.push(fanout.start(id, target));
        }
    }
    until(&mut events, &mut seen, |seen| written(seen, &["slow"], 1)).await;
    importer
        .feed
        .fail("the image's sha256 is not the one expected");
    for handle in handles {
        let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
        match outcome.result {
            Err(EngineError::SourceFailed { detail }) => {
                assert_eq!(detail, "the image's sha256 is not the one expected")
            }
            other => panic!("{}: {other:?}", outcome.id),
        }
    }
    drop(fanout);
    while let Some(event) = events.recv().await {
        seen.push(event);
    }
    assert!(
        !read_back_or_verdict(&seen),
        "a read-back or a verdict from a failed import: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_unknown_size_fails_a_stick_too_small_for_it_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(3 * MIB as usize, 9, 3 * CHUNK);
    // A compressed file: its size is known only at its end.
    let mut importer = Importer::begin(dir.path(), bytes.clone(), false);
    let rack = rack(
        dir.path(),
        vec![
            SimStickSpec::new("small", 2 * MIB),
            SimStickSpec::new("big", 8 * MIB),
        ],
    );
    let (tx, _events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(importer.feed.clone(), options(), tx).unwrap();
    let handles: Vec<_> = targets(&rack)
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    importer.produce(importer.chunks());
    importer.finish();
    for handle in handles {
        let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
        let (verdict, figures) = outcome.result.unwrap();
        match outcome.id.0.as_str() {
            "big" => {
                assert_eq!(verdict, Verdict::Pass);
                assert_eq!(figures.read_back_sha256, Some(Sha256Digest::of(&bytes)));
            }
            _ => match verdict {
                Verdict::Fail(failure) => {
                    assert_eq!(failure.stage, Stage::Writing);
                    assert!(
                        matches!(failure.reason, FailReason::TooSmall { capacity, needed }
                            if capacity.bytes() == 2 * MIB && needed.bytes() > 2 * MIB),
                        "{:?}",
                        failure.reason
                    );
                }
                Verdict::Pass => panic!("a stick smaller than the image passed"),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_waiting_for_the_import_can_be_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(MIB as usize, 10, 3 * CHUNK);
    let mut importer = Importer::begin(dir.path(), bytes, true);
    let rack = rack(dir.path(), vec![SimStickSpec::new("a", 4 * MIB)]);
    let (tx, mut events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(importer.feed.clone(), options(), tx).unwrap();
    let (id, target) = targets(&rack).remove(0);
    let handle = fanout.start(id, target);
    importer.produce(2);
    let mut seen = Vec::new();
    until(&mut events, &mut seen, |seen| {
        written(seen, &["a"], 2 * CHUNK as u64)
    })
    .await;
    handle.cancel();
    let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
    match outcome.result {
        Ok((Verdict::Fail(failure), _)) => {
            assert_eq!(failure.reason, FailReason::Interrupted);
            assert_eq!(failure.stage, Stage::Writing);
        }
        other => panic!("{other:?}"),
    }
}

/// A target that followed the import is checked against the chunks'
/// fingerprints, not the image read again: a byte read back wrong, in a data
/// chunk or in an all-zero one, still fails it at that byte's offset with the
/// sha256 of what it returned, and a good stick passes with the image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_import_is_verified_by_fingerprint_down_to_the_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = flashrack_testkit::image_bytes(3 * CHUNK + 1234, 11, 3 * CHUNK);
    // Chunk 0 holds data, chunk 1 is all zero.
    bytes[0] = 1;
    bytes[CHUNK..2 * CHUNK].fill(0);
    let bad_data = (CHUNK / 2 + 7) as u64;
    let bad_zero = (CHUNK + 4321) as u64;
    let mut importer = Importer::begin(dir.path(), bytes.clone(), true);
    let rack = rack(
        dir.path(),
        vec![
            SimStickSpec::new("good", 8 * MIB),
            SimStickSpec::new("bad-data", 8 * MIB).corrupt_at(bad_data),
            SimStickSpec::new("bad-zero", 8 * MIB).corrupt_at(bad_zero),
        ],
    );
    let (tx, _events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(importer.feed.clone(), options(), tx).unwrap();
    let handles: Vec<_> = targets(&rack)
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    drop(fanout);
    importer.produce(importer.chunks());
    importer.finish();
    for handle in handles {
        let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
        let (verdict, figures) = outcome.result.unwrap();
        assert_eq!(
            figures.verify_method,
            Some(VerifyMethod::Fingerprint),
            "{}",
            outcome.id
        );
        let bad = match outcome.id.0.as_str() {
            "good" => None,
            "bad-data" => Some(bad_data),
            "bad-zero" => Some(bad_zero),
            other => panic!("{other}"),
        };
        let Some(bad) = bad else {
            assert_eq!(verdict, Verdict::Pass);
            assert_eq!(figures.read_back_sha256, Some(Sha256Digest::of(&bytes)));
            continue;
        };
        let failure = verdict.failure().expect("a bad byte fails the stick");
        assert_eq!(failure.stage, Stage::Verifying, "{}", outcome.id);
        assert_eq!(
            failure.reason,
            FailReason::VerifyMismatch { offset: bad },
            "{}",
            outcome.id
        );
        // What the stick returned: the image with that byte flipped.
        let mut returned = bytes.clone();
        returned[bad as usize] = !returned[bad as usize];
        assert_eq!(
            figures.read_back_sha256,
            Some(Sha256Digest::of(&returned)),
            "{}",
            outcome.id
        );
    }
}

/// A sparse run follows an import with a block map known before it (a bmap
/// file that comes with the image): each stick gets exactly the map's
/// ranges as the chunks arrive (what it held elsewhere stays), reads them
/// back once the import has ended, and says what it skipped. A map of
/// another size than the one the feed announced is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_run_follows_an_import_and_writes_only_the_mapped_ranges() {
    const OLD: u8 = 0xa5;
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(6 * CHUNK, 24, 3 * CHUNK);
    let size = bytes.len() as u64;
    let chunk = CHUNK as u64;
    // A head, a range across a chunk boundary and one in the last chunk.
    let ranges = flashrack_core::DataRanges::new(
        size,
        vec![(0, 8192), (chunk - 4096, 3 * 4096), (5 * chunk, 4096)],
    )
    .unwrap();
    let mapped = ranges.mapped_bytes();
    let importer = Importer::begin(dir.path(), bytes.clone(), true);
    let feed = importer.feed.clone();
    let (tx, _events) = mpsc::unbounded_channel();
    let wrong = flashrack_core::DataRanges::new(size + 4096, vec![(0, 4096)]).unwrap();
    let refused = Fanout::following(
        feed.clone(),
        EngineOptions {
            sparse: Some(Arc::new(wrong)),
            ..options()
        },
        tx.clone(),
    );
    assert!(
        matches!(refused, Err(EngineError::SourceFailed { ref detail }) if detail.contains("block map")),
        "{:?}",
        refused.err()
    );
    let rack = rack(dir.path(), vec![SimStickSpec::new("a", 8 * MIB)]);
    let stick = rack.stick("a").unwrap();
    std::fs::write(stick.path(), vec![OLD; 8 * MIB as usize]).unwrap();
    let fanout = Fanout::following(
        feed.clone(),
        EngineOptions {
            sparse: Some(Arc::new(ranges.clone())),
            // Without the probe, every byte written is the run's.
            probe_capacity: false,
            ..options()
        },
        tx,
    )
    .unwrap();
    let (id, target) = targets(&rack).remove(0);
    let handle = fanout.start(id, target);
    let import = importer.run_handing_over();
    let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
    import.join().unwrap();
    let (verdict, figures) = outcome.result.unwrap();
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(figures.bytes_written, mapped);
    assert_eq!(figures.bytes_verified, mapped);
    assert_eq!(figures.bytes_skipped, size - mapped);
    assert_eq!(figures.verify_method, Some(VerifyMethod::Compare));
    let medium = std::fs::read(stick.path()).unwrap();
    let mut at = 0usize;
    for &(offset, len) in ranges.ranges() {
        let (offset, len) = (offset as usize, len as usize);
        assert!(
            medium[at..offset].iter().all(|&b| b == OLD),
            "{at}..{offset} written"
        );
        assert_eq!(&medium[offset..offset + len], &bytes[offset..offset + len]);
        at = offset + len;
    }
    assert!(
        medium[at..].iter().all(|&b| b == OLD),
        "past the map written"
    );
}

/// Sticks slow to start (opening, the guard's checks, the probe: here a slow
/// open), started as the import begins: the import keeps the chunks it
/// produces meanwhile for them, so neither reads a byte of the image again
/// from the file; both pass, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticks_slow_to_start_take_every_chunk_from_the_feed_and_read_none_again() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(24 * CHUNK, 21, 3 * CHUNK);
    assert!(data_bytes(&bytes) > 0);
    let importer = Importer::begin(dir.path(), bytes.clone(), true);
    let feed = importer.feed.clone();
    // Paced writes (64 ms a chunk): a stick behind the other by a few chunks
    // is so a matter of a few hundred milliseconds, not of the scheduler.
    let slow_start = Duration::from_millis(400);
    assert!(slow_start < PACE_GIVE_UP);
    let rack = rack(
        dir.path(),
        ["a", "b"]
            .into_iter()
            .map(|name| {
                SimStickSpec::new(name, 8 * MIB)
                    .open_delay(slow_start)
                    .write_speed(MIB)
            })
            .collect(),
    );
    let (tx, _events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(feed.clone(), options(), tx).unwrap();
    let handles: Vec<_> = targets(&rack)
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    let import = importer.run_handing_over();
    for handle in handles {
        let outcome = tokio::time::timeout(WAIT, handle.finish()).await.unwrap();
        let (verdict, figures) = outcome.result.unwrap();
        assert_eq!(verdict, Verdict::Pass, "{}", outcome.id);
        assert_eq!(figures.read_back_sha256, Some(Sha256Digest::of(&bytes)));
        assert_eq!(outcome.bytes_reread, 0, "{} read chunks again", outcome.id);
        let medium = std::fs::read(rack.stick(&outcome.id.0).unwrap().path()).unwrap();
        assert_eq!(&medium[..bytes.len()], &bytes[..], "{}", outcome.id);
    }
    import.join().unwrap();
}

/// A flash reserves the feed before its import begins and starts its targets
/// only later (after checking them and opening its records): the import
/// keeps its first chunks for them meanwhile, and they read nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_started_after_the_import_began_read_nothing_again_when_the_feed_was_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(16 * CHUNK, 22, 3 * CHUNK);
    let importer = Importer::begin(dir.path(), bytes.clone(), true);
    let feed = importer.feed.clone();
    feed.reserve();
    let rack = rack(dir.path(), vec![SimStickSpec::new("a", 8 * MIB)]);
    let import = importer.run_handing_over();
    // The caller prepares: the import waits with its first chunks held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        feed.chunks_fed(),
        flashrack_engine::feed::HELD_CHUNKS as u64
    );
    let (tx, _events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(feed.clone(), options(), tx).unwrap();
    let (id, target) = targets(&rack).remove(0);
    let outcome = tokio::time::timeout(WAIT, fanout.start(id, target).finish())
        .await
        .unwrap();
    let (verdict, _) = outcome.result.unwrap();
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(outcome.bytes_reread, 0);
    import.join().unwrap();
}

/// A stick stuck in its start-up holds neither the import nor the other
/// sticks back for longer than `PACE_GIVE_UP`, nor the feed's memory: the
/// others pass (with nothing read again) while it is still stuck; let go, it
/// reads from the file what the feed no longer holds, and passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_stuck_starting_does_not_hold_the_others_and_reads_its_chunks_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(24 * CHUNK, 23, 3 * CHUNK);
    let importer = Importer::begin(dir.path(), bytes.clone(), true);
    let feed = importer.feed.clone();
    let rack = rack(
        dir.path(),
        vec![
            SimStickSpec::new("quick", 8 * MIB),
            SimStickSpec::new("stuck", 8 * MIB).stall_on_open(),
        ],
    );
    let stuck = rack.stick("stuck").unwrap();
    let (tx, _events) = mpsc::unbounded_channel();
    let fanout = Fanout::following(feed.clone(), options(), tx).unwrap();
    let mut handles: Vec<_> = targets(&rack)
        .into_iter()
        .map(|(id, target)| fanout.start(id, target))
        .collect();
    let began = std::time::Instant::now();
    let import = importer.run_handing_over();
    let quick = handles.remove(0);
    assert_eq!(quick.id().0, "quick");
    let outcome = tokio::time::timeout(WAIT, quick.finish()).await.unwrap();
    let (verdict, _) = outcome.result.unwrap();
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(outcome.bytes_reread, 0);
    // The import waited for the stuck stick, but not for ever.
    assert!(began.elapsed() >= PACE_GIVE_UP - Duration::from_millis(200));
    assert_eq!(feed.ended(), Some(Ok(())), "the import ended");
    assert_eq!(stuck.stalled_calls(), 1, "still stuck in its start");
    import.join().unwrap();

    stuck.release();
    let outcome = tokio::time::timeout(WAIT, handles.remove(0).finish())
        .await
        .unwrap();
    let (verdict, _) = outcome.result.unwrap();
    assert_eq!(verdict, Verdict::Pass);
    // Everything but what the feed still held at its end (at most the last
    // HELD_CHUNKS data chunks) came from the file.
    let data = data_bytes(&bytes);
    let held = (flashrack_engine::feed::HELD_CHUNKS * CHUNK) as u64;
    assert!(
        outcome.bytes_reread >= data - held && outcome.bytes_reread <= data,
        "{} of {data} data bytes read again",
        outcome.bytes_reread
    );
    let medium = std::fs::read(stuck.path()).unwrap();
    assert_eq!(&medium[..bytes.len()], &bytes[..]);
}
