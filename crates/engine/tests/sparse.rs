//! Sparse runs against the simulated rack: only the block map's ranges are
//! written, exactly those are read back from the medium, and the figures say
//! how much was proven and how much was skipped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{
    AttemptFigures, DataRanges, FailReason, TargetId, Verdict, VerifyMethod, VerifyMode,
};
use flashrack_engine::{flash_all, EngineError, EngineOptions, Fanout, SourceImage};
use flashrack_simrack::sim::{SimRack, SimStick, SimStickSpec};
use flashrack_target::Target;
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;
/// What the sticks hold before the run, so that a byte left alone shows.
const OLD: u8 = 0xa5;

fn options(ranges: &DataRanges) -> EngineOptions {
    EngineOptions {
        stall_timeout: Duration::from_secs(3600),
        // Without the probe, every byte written or read is the run's.
        probe_capacity: false,
        sparse: Some(Arc::new(ranges.clone())),
        ..EngineOptions::default()
    }
}

fn filled_rack(dir: &std::path::Path, specs: Vec<SimStickSpec>) -> SimRack {
    let rack = SimRack::create(dir.join("rack"), specs).unwrap();
    for stick in rack.sticks() {
        let len = std::fs::metadata(stick.path()).unwrap().len();
        std::fs::write(stick.path(), vec![OLD; len as usize]).unwrap();
    }
    rack
}

async fn flash(
    image: &SourceImage,
    rack: &SimRack,
    options: EngineOptions,
) -> Vec<(TargetId, Verdict, AttemptFigures)> {
    let targets = rack
        .sticks()
        .iter()
        .map(|s| {
            (
                TargetId::new(s.name()),
                Arc::new(s.clone()) as Arc<dyn Target>,
            )
        })
        .collect();
    let (tx, _rx) = mpsc::unbounded_channel();
    flash_all(image, targets, options, tx).await.unwrap()
}

/// Whether each byte of the stick's medium is the image's inside the ranges
/// and untouched outside them.
fn assert_medium(stick: &SimStick, image: &[u8], ranges: &DataRanges) {
    let medium = std::fs::read(stick.path()).unwrap();
    let mut at = 0usize;
    for &(offset, len) in ranges.ranges() {
        let (offset, len) = (offset as usize, len as usize);
        assert!(
            medium[at..offset].iter().all(|&b| b == OLD),
            "{}: bytes {at}..{offset} outside the map were written",
            stick.name()
        );
        assert!(
            medium[offset..offset + len] == image[offset..offset + len],
            "{}: the mapped bytes at {offset} are not the image's",
            stick.name()
        );
        at = offset + len;
    }
    assert!(medium[at..image.len()].iter().all(|&b| b == OLD));
}

/// Ranges over a test image: a short head, a range across a chunk boundary,
/// one inside a zero hole of the image, and the image's unaligned tail.
fn test_ranges(size: u64) -> DataRanges {
    let chunk = u64::from(common::CHUNK);
    DataRanges::new(
        size,
        [
            (0, 4096),
            (chunk - 8192, 3 * 4096),
            (5 * chunk + 4096, chunk / 2),
            (
                (size - 5000) / 4096 * 4096,
                size - (size - 5000) / 4096 * 4096,
            ),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_run_writes_and_reads_back_only_the_mapped_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize + 3000;
    let (image, bytes) = common::make_image(dir.path(), size, 31);
    let ranges = test_ranges(size as u64);
    let rack = filled_rack(
        dir.path(),
        vec![
            SimStickSpec::new("A", 4 * MIB),
            SimStickSpec::new("B", 4 * MIB),
        ],
    );
    for verify in [VerifyMode::Compare, VerifyMode::Hash] {
        let results = flash(
            &image,
            &rack,
            EngineOptions {
                verify,
                ..options(&ranges)
            },
        )
        .await;
        for ((id, verdict, figures), stick) in results.iter().zip(rack.sticks()) {
            assert!(verdict.is_pass(), "{id} {verify:?}: {verdict:?}");
            assert_eq!(figures.bytes_written, ranges.mapped_bytes());
            assert_eq!(figures.bytes_verified, ranges.mapped_bytes());
            assert_eq!(figures.bytes_skipped, ranges.skipped_bytes());
            // The digest of the whole image is not claimed by a sparse run.
            assert_eq!(figures.read_back_sha256, None);
            // A sparse read-back compares (a chunk's digest covers skipped bytes).
            assert_eq!(figures.verify_method, Some(VerifyMethod::Compare));
            assert_medium(stick, &bytes, &ranges);
        }
    }
    // What the sticks were asked to write and read: the mapped bytes, once
    // per pass (the tail is read as a whole 512-byte block).
    for stick in rack.sticks() {
        let counters = stick.counters();
        assert_eq!(counters.bytes_written, 2 * ranges.mapped_bytes());
        let tail_block = (size as u64).div_ceil(512) * 512 - size as u64;
        assert_eq!(
            counters.bytes_read,
            2 * (ranges.mapped_bytes() + tail_block)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_byte_is_found_inside_the_map_and_not_looked_for_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize;
    let (image, _) = common::make_image(dir.path(), size, 32);
    let ranges = test_ranges(size as u64);
    let chunk = u64::from(common::CHUNK);
    let inside = 5 * chunk + 4096 + 777;
    let outside = 3 * chunk;
    let rack = filled_rack(
        dir.path(),
        vec![
            SimStickSpec::new("inside", 4 * MIB).corrupt_at(inside),
            SimStickSpec::new("outside", 4 * MIB).corrupt_at(outside),
        ],
    );
    let results = flash(&image, &rack, options(&ranges)).await;
    let (_, verdict, figures) = &results[0];
    assert_eq!(
        verdict.failure().map(|f| &f.reason),
        Some(&FailReason::VerifyMismatch { offset: inside })
    );
    assert_eq!(figures.read_back_sha256, None);
    assert!(figures.bytes_verified < ranges.mapped_bytes());
    // Outside the map the stick holds what it held, and a sparse run says it
    // did not look: it passes with the skipped bytes counted.
    let (_, verdict, figures) = &results[1];
    assert!(verdict.is_pass(), "{verdict:?}");
    assert_eq!(figures.bytes_skipped, size as u64 - ranges.mapped_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_widened_to_the_sticks_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let size = MIB as usize;
    let (image, bytes) = common::make_image(dir.path(), size, 33);
    // Ranges a 512-byte-block map could give, on a stick of 4 KiB blocks.
    let ranges = DataRanges::new(size as u64, [(512, 512), (10_240, 1024)]).unwrap();
    let mut spec = SimStickSpec::new("4k", 2 * MIB);
    spec.logical_block_size = 4096;
    let rack = filled_rack(dir.path(), vec![spec]);
    let results = flash(&image, &rack, options(&ranges)).await;
    let (_, verdict, figures) = &results[0];
    assert!(verdict.is_pass(), "{verdict:?}");
    let widened = ranges.aligned_to(4096);
    assert_eq!(widened.ranges(), &[(0, 4096), (8192, 4096)]);
    assert_eq!(figures.bytes_written, 8192);
    assert_eq!(figures.bytes_verified, 8192);
    assert_eq!(figures.bytes_skipped, size as u64 - 8192);
    assert_medium(&rack.sticks()[0], &bytes, &widened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_another_image_size_is_a_source_error() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 34);
    let ranges = DataRanges::new(MIB + 4096, [(0, 4096)]).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let error = Fanout::new(&image, options(&ranges), tx)
        .err()
        .expect("refused");
    assert!(
        matches!(&error, EngineError::SourceOpen { detail, .. } if detail.contains("block map")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_attempt_refused_while_it_prepares_says_what_it_would_have_skipped() {
    // A stick too small and a read-only one both fail before a byte is
    // written: each record says it was a sparse attempt, with the same
    // bytes skipped as the stick that passes, whatever ended it.
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize;
    let (image, _) = common::make_image(dir.path(), size, 35);
    let ranges = test_ranges(size as u64);
    let rack = filled_rack(
        dir.path(),
        vec![
            SimStickSpec::new("small", MIB),
            SimStickSpec::new("ro", 4 * MIB).read_only(),
            SimStickSpec::new("good", 4 * MIB),
        ],
    );
    let results = flash(&image, &rack, options(&ranges)).await;
    let reasons: Vec<_> = results
        .iter()
        .map(|(_, verdict, _)| verdict.failure().map(|f| f.reason.clone()))
        .collect();
    assert!(
        matches!(reasons[0], Some(FailReason::TooSmall { .. })),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[1], Some(FailReason::ReadOnly)),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], None);
    for (id, _, figures) in &results {
        assert_eq!(figures.bytes_skipped, ranges.skipped_bytes(), "{id}");
    }
    assert_eq!(results[0].2.bytes_written, 0);
    assert_eq!(results[1].2.bytes_written, 0);
}
