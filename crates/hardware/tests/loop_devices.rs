//! The engine on real block devices: loop devices this test attaches itself (as
//! root, like CI) and detaches on drop. Covers the direct-I/O path with an
//! unaligned image tail, exclusive open, the guard, verification from the
//! medium, and what a loop read-back leaves in the page cache (`fincore`).
//!
//! They test block targets through the engine, so they live with the block
//! targets (the engine does not depend on this crate) and share the engine's
//! test images.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::{FailReason, RefusalCode, TargetId, Verdict, VerifyMode};
use flashrack_engine::{flash_all, EngineOptions};
use flashrack_guard::{evaluate, DiskFacts, DiskIdentity, GuardCheck, GuardPolicy, GuardRequest};
use flashrack_hardware::block::PathTarget;
use flashrack_target::{
    AlignedBuf, Target, TargetError, TargetGeometry, TargetReader, TargetWriter,
};
use flashrack_testkit::{reattach_loop, require_root, run, LoopDevice};
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;

/// The real guard, with loop devices allowed as the tests' explicit choice.
fn loop_guard(image_size: u64) -> GuardCheck {
    Arc::new(move |facts: &DiskFacts| {
        let mut policy = GuardPolicy {
            allow_unmapped_ports: true,
            ..GuardPolicy::default()
        };
        policy.allowed_buses.insert("loop".into());
        let request = GuardRequest {
            image_size,
            armed_run: false,
            explicit_operator_request: true,
        };
        evaluate(facts, &policy, &request).map(|_| ())
    })
}

fn options() -> EngineOptions {
    EngineOptions {
        stall_timeout: Duration::from_secs(30),
        ..EngineOptions::default()
    }
}

/// Field `n` of a block device's `/sys/block/X/stat`.
fn stat_field(device: &LoopDevice, n: usize) -> u64 {
    let stat =
        std::fs::read_to_string(format!("/sys/block/{}/stat", device.kernel_name())).unwrap();
    stat.split_whitespace().nth(n).unwrap().parse().unwrap()
}

/// Sectors read from a block device so far (`/sys/block/X/stat`, field 3).
fn sectors_read(device: &LoopDevice) -> u64 {
    stat_field(device, 2)
}

/// Sectors written to a block device so far (`/sys/block/X/stat`, field 7).
fn sectors_written(device: &LoopDevice) -> u64 {
    stat_field(device, 6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_devices_are_written_with_direct_io_and_read_back_from_the_device() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An image whose size is not a multiple of the block size: the tail is
    // written by read-modify-write, keeping the stick's bytes after the image.
    let size = 9 * MIB as usize + 1234;
    let (image, bytes) = common::make_image(dir.path(), size, 11);
    let devices: Vec<LoopDevice> = (0..2).map(|_| LoopDevice::new(16 * MIB)).collect();
    for device in &devices {
        std::fs::write(device.backing(), vec![0xEEu8; 16 * MIB as usize]).unwrap();
    }
    let before: Vec<u64> = devices.iter().map(sectors_read).collect();
    let targets = devices
        .iter()
        .map(|d| {
            let target: Arc<dyn Target> =
                Arc::new(PathTarget::block_device(d.path(), loop_guard(size as u64)));
            (TargetId::new(d.path().display().to_string()), target)
        })
        .collect();
    let (tx, _rx) = mpsc::unbounded_channel();
    // The capacity probe would leave a marker in the tail block; it has its own
    // test below.
    let options = EngineOptions {
        probe_capacity: false,
        ..options()
    };
    let results = flash_all(&image, targets, options, tx).await.unwrap();
    for ((id, verdict, figures), (device, before)) in results.iter().zip(devices.iter().zip(before))
    {
        assert_eq!(verdict, &Verdict::Pass, "{id}");
        assert_eq!(figures.read_back_sha256, Some(image.manifest.sha256()));
        let medium = std::fs::read(device.backing()).unwrap();
        assert_eq!(&medium[..size], &bytes[..], "{id} holds the image");
        let block_end = size.div_ceil(512) * 512;
        assert!(
            medium[size..block_end].iter().all(|&b| b == 0xEE),
            "{id}: the bytes after the image in its last block are kept"
        );
        let read = (sectors_read(device) - before) * 512;
        assert!(
            read >= size as u64,
            "{id}: verification read {read} bytes from the device"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_loop_device_passes_the_capacity_probe() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, bytes) = common::make_image(dir.path(), 3 * MIB as usize, 15);
    let device = LoopDevice::new(64 * MIB);
    let target: Arc<dyn Target> =
        Arc::new(PathTarget::block_device(device.path(), loop_guard(3 * MIB)));
    // A loop device has no cache of its own for a filler to defeat.
    assert!(!target.may_cache_writes());
    let written_before = sectors_written(&device);
    let (tx, _rx) = mpsc::unbounded_channel();
    // The probe as `flashrack flash` runs it: defeating the stick's cache.
    let options = EngineOptions {
        probe: flashrack_engine::probe::ProbeOptions {
            defeat_cache: true,
            ..Default::default()
        },
        ..options()
    };
    let results = flash_all(&image, vec![(TargetId::new("honest"), target)], options, tx)
        .await
        .unwrap();
    assert_eq!(results[0].1, Verdict::Pass);
    let medium = std::fs::read(device.backing()).unwrap();
    assert_eq!(&medium[..bytes.len()], &bytes[..]);
    // The image and the probe's markers (a block each, at most 64 of them),
    // not the filler's 32 MiB a stick that cannot be reset gets.
    let written = (sectors_written(&device) - written_before) * 512;
    let markers = 64 * 4096;
    assert!(
        written >= bytes.len() as u64 && written <= bytes.len() as u64 + markers,
        "{written} bytes written for an image of {}",
        bytes.len()
    );
}

#[test]
fn only_block_devices_other_than_loop_devices_may_cache_writes() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = PathTarget::file(dir.path().join("stick.img"), MIB);
    assert!(!file.may_cache_writes());
    let device = LoopDevice::new(8 * MIB);
    let target = PathTarget::block_device(device.path(), loop_guard(MIB));
    assert!(!target.may_cache_writes());
    // A name that could not be pinned says it may: when in doubt, the filler.
    let gone = PathTarget::block_device(dir.path().join("no-such-device"), loop_guard(MIB));
    assert!(gone.may_cache_writes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_device_held_open_exclusively_elsewhere_is_refused_and_untouched() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 12);
    let device = LoopDevice::new(8 * MIB);
    // Another holder: an exclusive open, as a mounted file system or another
    // flashing tool would hold it.
    let _holder = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(device.path())
        .unwrap();
    let target: Arc<dyn Target> =
        Arc::new(PathTarget::block_device(device.path(), loop_guard(MIB)));
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(&image, vec![(TargetId::new("held"), target)], options(), tx)
        .await
        .unwrap();
    match results[0].1.failure().map(|f| &f.reason) {
        Some(FailReason::Refused { code, detail }) => {
            // The exclusive open's refusal keeps its code on its way to the verdict.
            assert_eq!(*code, Some(RefusalCode::Busy));
            assert!(detail.contains("in use"), "{detail}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let medium = std::fs::read(device.backing()).unwrap();
    assert!(medium.iter().all(|&b| b == 0), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_loop_device_is_refused_by_the_guard() {
    if !require_root(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 13);
    let device = LoopDevice::new(32 * MIB);
    let _mounted = flashrack_testkit::MountedExt4::new(&device);
    let target: Arc<dyn Target> =
        Arc::new(PathTarget::block_device(device.path(), loop_guard(MIB)));
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(
        &image,
        vec![(TargetId::new("mounted"), target)],
        options(),
        tx,
    )
    .await
    .unwrap();
    let (_, verdict, figures) = &results[0];
    match verdict.failure() {
        Some(failure) => {
            assert!(
                matches!(&failure.reason, FailReason::Refused { code: Some(RefusalCode::Mounted), detail } if detail.contains("mounted")),
                "{failure:?}"
            );
            assert_eq!(failure.stage, flashrack_core::Stage::Preparing);
        }
        None => panic!("a mounted device was written"),
    }
    assert_eq!(figures.bytes_written, 0);
}

/// The name of a checked disk is given to another disk before the target is
/// opened (a loop device detached and attached to another file, as a stick
/// pulled and another plugged in under the same name): the opened descriptor
/// leads to another disk than the one pinned, so it is refused, and neither disk
/// gets a byte. Judging the name at the open instead would write the new disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_given_to_another_disk_before_the_open_is_refused_and_neither_disk_is_written() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 16);
    let device = LoopDevice::new(8 * MIB);
    let other = dir.path().join("another-disk.img");
    std::fs::File::create(&other)
        .and_then(|f| f.set_len(8 * MIB))
        .unwrap();
    let checked = DiskIdentity::of_path(device.path()).unwrap();
    let swap_to = other.clone();
    let target = PathTarget::block_device(device.path(), loop_guard(MIB))
        .before_open(Arc::new(move |path: &Path| reattach_loop(path, &swap_to)));
    assert_eq!(target.pinned(), Some(checked));
    let target: Arc<dyn Target> = Arc::new(target);
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(
        &image,
        vec![(TargetId::new("swapped"), target)],
        options(),
        tx,
    )
    .await
    .unwrap();

    let now = DiskIdentity::of_path(device.path()).unwrap();
    assert_eq!((now.major, now.minor), (checked.major, checked.minor));
    assert_ne!(
        now.diskseq, checked.diskseq,
        "the name went to another disk"
    );
    let (_, verdict, figures) = &results[0];
    match verdict.failure().map(|f| (&f.reason, f.stage)) {
        Some((FailReason::Refused { code, detail }, flashrack_core::Stage::Preparing)) => {
            assert_eq!(*code, Some(RefusalCode::IdentityChanged));
            assert!(
                detail.contains("not the one that was checked"),
                "the refusal names the identity change: {detail}"
            );
            assert!(detail.contains(&checked.to_string()), "{detail}");
            assert!(detail.contains(&now.to_string()), "{detail}");
        }
        other => panic!("expected a refusal while preparing, got {other:?}"),
    }
    assert_eq!(figures.bytes_written, 0);
    for medium in [&other, &device.backing().to_path_buf()] {
        let bytes = std::fs::read(medium).unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "{} was written",
            medium.display()
        );
    }
}

/// A real block device whose medium is damaged after the write and before the
/// read-back, as a failing stick would; and, with `shrink_to`, that then ends
/// early (its backing file cut to that size and the loop device resized).
struct DamagedBeforeVerify {
    inner: PathTarget,
    backing: PathBuf,
    offset: u64,
    shrink_to: Option<u64>,
}

impl Target for DamagedBeforeVerify {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn geometry(&self) -> Result<TargetGeometry, TargetError> {
        self.inner.geometry()
    }
    fn open_writer(&self) -> Result<Box<dyn TargetWriter>, TargetError> {
        self.inner.open_writer()
    }
    fn open_reader(&self) -> Result<Box<dyn TargetReader>, TargetError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.backing)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, self.offset).unwrap();
        file.write_all_at(&[!byte[0]], self.offset).unwrap();
        if let Some(size) = self.shrink_to {
            file.set_len(size).unwrap();
        }
        file.sync_all().unwrap();
        if self.shrink_to.is_some() {
            run("losetup", &["-c", self.inner.path().to_str().unwrap()]);
        }
        self.inner.open_reader()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_reads_the_medium_and_reports_the_first_bad_offset() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 6 * MIB as usize, 14);
    for verify in [VerifyMode::Compare, VerifyMode::Hash] {
        let device = LoopDevice::new(16 * MIB);
        let offset = 5 * MIB + 777;
        let target: Arc<dyn Target> = Arc::new(DamagedBeforeVerify {
            inner: PathTarget::block_device(device.path(), loop_guard(6 * MIB)),
            backing: device.backing().to_path_buf(),
            offset,
            shrink_to: None,
        });
        let (tx, _rx) = mpsc::unbounded_channel();
        // No probe: its own read-back would open a reader (and damage the
        // medium) before the image is written.
        let options = EngineOptions {
            probe_capacity: false,
            verify,
            ..options()
        };
        let results = flash_all(
            &image,
            vec![(TargetId::new("damaged"), target)],
            options,
            tx,
        )
        .await
        .unwrap();
        let (_, verdict, figures) = &results[0];
        assert_eq!(
            verdict.failure().map(|f| &f.reason),
            Some(&FailReason::VerifyMismatch { offset }),
            "{verify:?}"
        );
        let read_back = figures
            .read_back_sha256
            .expect("digest of what the medium holds");
        assert_ne!(read_back, image.manifest.sha256());
        // The digest of the stick's first image-size bytes: its medium.
        let medium = std::fs::read(device.backing()).unwrap();
        assert_eq!(
            read_back,
            flashrack_core::Sha256Digest::of(&medium[..6 * MIB as usize]),
            "{verify:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_ends_before_the_image_after_a_mismatch_claims_no_digest() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), 6 * MIB as usize, 17);
    for verify in [VerifyMode::Compare, VerifyMode::Hash] {
        let device = LoopDevice::new(16 * MIB);
        let offset = MIB + 777;
        // Damaged at 1 MiB, then cut to 3 MiB: the rest of the image cannot be
        // read back, so no digest can be the stick's first image-size bytes.
        let target: Arc<dyn Target> = Arc::new(DamagedBeforeVerify {
            inner: PathTarget::block_device(device.path(), loop_guard(6 * MIB)),
            backing: device.backing().to_path_buf(),
            offset,
            shrink_to: Some(3 * MIB),
        });
        let (tx, _rx) = mpsc::unbounded_channel();
        let options = EngineOptions {
            probe_capacity: false,
            verify,
            ..options()
        };
        let results = flash_all(&image, vec![(TargetId::new("cut"), target)], options, tx)
            .await
            .unwrap();
        let (_, verdict, figures) = &results[0];
        assert_eq!(
            verdict.failure().map(|f| &f.reason),
            Some(&FailReason::VerifyMismatch { offset }),
            "{verify:?}"
        );
        assert_eq!(figures.read_back_sha256, None, "{verify:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_protected_loop_device_fails_as_read_only_and_is_untouched() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 18);
    let device = LoopDevice::new_read_only(8 * MIB);
    std::fs::write(device.backing(), vec![0xEEu8; 8 * MIB as usize]).unwrap();
    let target: Arc<dyn Target> =
        Arc::new(PathTarget::block_device(device.path(), loop_guard(MIB)));
    let (tx, _rx) = mpsc::unbounded_channel();
    // With the capacity probe: not even a marker may be tried.
    let results = flash_all(&image, vec![(TargetId::new("ro"), target)], options(), tx)
        .await
        .unwrap();
    let (_, verdict, figures) = &results[0];
    let failure = verdict.failure().expect("a read-only device cannot pass");
    assert_eq!(failure.reason, FailReason::ReadOnly, "{failure}");
    assert_eq!(failure.stage, flashrack_core::Stage::Preparing);
    assert_eq!(figures.bytes_written, 0);
    let medium = std::fs::read(device.backing()).unwrap();
    assert!(medium.iter().all(|&b| b == 0xEE), "nothing was written");
}

#[test]
fn a_device_made_read_only_while_open_refuses_the_next_write_as_read_only() {
    if !require_root(&["losetup", "blockdev"]) {
        return;
    }
    let device = LoopDevice::new(4 * MIB);
    let target = PathTarget::block_device(device.path(), loop_guard(MIB));
    let mut writer = target.open_writer().unwrap();
    let data = AlignedBuf::zeroed(64 * 1024);
    writer.write_all_at(0, &data).unwrap();
    // As a stick's write-protect switch flipped while it is written. (The
    // flag outlives the loop device: `LoopDevice` clears it when dropped.)
    run("blockdev", &["--setro", device.path().to_str().unwrap()]);
    let error = writer.write_all_at(64 * 1024, &data).unwrap_err();
    assert!(matches!(error, TargetError::ReadOnly), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_device_of_zero_bytes_has_no_medium() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = common::make_image(dir.path(), MIB as usize, 19);
    let device = LoopDevice::new(0);
    let target: Arc<dyn Target> =
        Arc::new(PathTarget::block_device(device.path(), loop_guard(MIB)));
    let (tx, _rx) = mpsc::unbounded_channel();
    let results = flash_all(
        &image,
        vec![(TargetId::new("empty"), target)],
        options(),
        tx,
    )
    .await
    .unwrap();
    let failure = results[0]
        .1
        .failure()
        .expect("no medium cannot pass")
        .clone();
    assert_eq!(failure.reason, FailReason::NoMedium, "{failure}");
    assert_eq!(failure.stage, flashrack_core::Stage::Preparing);
}

#[test]
fn a_loop_read_back_drops_the_backing_file_pages_behind_it() {
    if !require_root(&["losetup", "fincore"]) {
        return;
    }
    let written = 48 * MIB as usize;
    let device = LoopDevice::new(64 * MIB);
    let target = PathTarget::block_device(device.path(), loop_guard(written as u64));

    let mut piece = AlignedBuf::zeroed(4 * MIB as usize);
    let mut writer = target.open_writer().unwrap();
    for (index, offset) in (0..written).step_by(piece.len()).enumerate() {
        piece.fill(index as u8 + 1);
        writer.write_all_at(offset as u64, &piece).unwrap();
    }
    writer.flush().unwrap();

    // The read-back, as the engine does it: a fresh reader, sequential pieces.
    let mut reader = target.open_reader().unwrap();
    let mut back = AlignedBuf::zeroed(2 * MIB as usize);
    for offset in (0..written).step_by(back.len()) {
        assert_eq!(
            reader.read_at(offset as u64, &mut back).unwrap(),
            back.len()
        );
        let expected = (offset / (4 * MIB as usize)) as u8 + 1;
        assert!(
            back.iter().all(|&b| b == expected),
            "the bytes at {offset} are the ones written"
        );
    }

    // Without dropping behind, all 48 MiB just read would be cached; what may
    // remain is the last step not yet dropped and the kernel's read-ahead.
    let resident = flashrack_testkit::page_cache_bytes(device.backing());
    assert!(
        resident <= 24 * MIB,
        "{resident} bytes of the backing file are still cached after the read-back"
    );
}
