//! The simulated sticks against the contract of a block device and their
//! configured faults.

use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use flashrack_target::{AlignedBuf, Target, TargetError, TargetGeometry};

use super::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A deterministic, position-dependent pattern, so that misplaced bytes show.
fn pattern(offset: u64, len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(len);
    for (i, byte) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        *byte = (at as u8) ^ ((at >> 9) as u8) ^ 0x5a;
    }
    buf
}

fn stick(dir: &tempfile::TempDir, spec: SimStickSpec) -> SimStick {
    SimStick::create(spec, dir.path().join("stick.img")).unwrap()
}

fn read(stick: &SimStick, offset: u64, len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(len);
    let got = stick
        .open_reader()
        .unwrap()
        .read_at(offset, &mut buf)
        .unwrap();
    assert_eq!(got, len);
    buf
}

fn errno(error: &TargetError) -> (u64, i32) {
    match error {
        TargetError::Io { offset, source } => (*offset, source.raw_os_error().unwrap()),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

fn eio() -> i32 {
    rustix::io::Errno::IO.raw_os_error()
}

#[test]
fn what_is_written_and_flushed_reads_back_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(&dir, SimStickSpec::new("demo", 4 * MIB as u64));
    assert_eq!(stick.name(), "demo");
    assert_eq!(
        stick.geometry().unwrap(),
        TargetGeometry {
            capacity: 4 * MIB as u64,
            logical_block_size: 512
        }
    );
    let mut writer = stick.open_writer().unwrap();
    for chunk in 0..3u64 {
        let offset = chunk * 256 * KIB as u64;
        writer
            .write_all_at(offset, &pattern(offset, 256 * KIB))
            .unwrap();
    }
    // A short final write, as at the end of an image.
    writer
        .write_all_at(768 * KIB as u64, &pattern(768 * KIB as u64, 1000))
        .unwrap();
    writer.flush().unwrap();
    drop(writer);

    let back = read(&stick, 0, 768 * KIB + 1024);
    assert_eq!(&back[..768 * KIB + 1000], &pattern(0, 768 * KIB + 1000)[..]);
    assert!(back[768 * KIB + 1000..].iter().all(|&b| b == 0));
    let on_disk = fs::read(stick.path()).unwrap();
    assert_eq!(on_disk.len(), 4 * MIB);
    assert_eq!(&on_disk[..768 * KIB + 1000], &back[..768 * KIB + 1000]);
    assert_eq!(
        stick.counters(),
        SimCounters {
            bytes_written: 768 * KIB as u64 + 1000,
            bytes_read: 768 * KIB as u64 + 1024,
            medium_bytes_written: 768 * KIB as u64 + 1000,
            medium_bytes_read: 768 * KIB as u64 + 1024,
            resets: 0,
        }
    );
}

#[test]
fn the_device_contract_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(&dir, SimStickSpec::new("s", 64 * KIB as u64));
    let mut writer = stick.open_writer().unwrap();
    assert!(matches!(stick.open_writer(), Err(TargetError::Busy(_))));
    let nospc = rustix::io::Errno::NOSPC.raw_os_error();
    let inval = rustix::io::Errno::INVAL.raw_os_error();
    let err = writer
        .write_all_at(64 * KIB as u64, &pattern(0, 512))
        .unwrap_err();
    assert_eq!(errno(&err), (64 * KIB as u64, nospc));
    // Straddling the end: what fits is written, then ENOSPC at the end.
    let err = writer
        .write_all_at(60 * KIB as u64, &pattern(0, 8 * KIB))
        .unwrap_err();
    assert_eq!(errno(&err), (64 * KIB as u64, nospc));
    assert_eq!(stick.counters().medium_bytes_written, 4 * KIB as u64);
    let err = writer.write_all_at(100, &pattern(0, 512)).unwrap_err();
    assert_eq!(errno(&err), (100, inval));
    let unaligned = pattern(0, 2048);
    let err = writer.write_all_at(0, &unaligned[1..513]).unwrap_err();
    assert_eq!(errno(&err).1, inval);
    drop(writer);
    assert!(stick.open_writer().is_ok());

    let mut reader = stick.open_reader().unwrap();
    let mut buf = AlignedBuf::zeroed(8 * KIB);
    assert_eq!(reader.read_at(60 * KIB as u64, &mut buf).unwrap(), 4 * KIB);
    assert_eq!(reader.read_at(64 * KIB as u64, &mut buf).unwrap(), 0);
    let err = reader.read_at(0, &mut buf[..1000]).unwrap_err();
    assert_eq!(errno(&err), (0, inval));
}

#[test]
fn a_write_error_hits_at_the_threshold_and_on_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).write_error_after(6144),
    );
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(0, &pattern(0, 4096)).unwrap();
    let err = writer.write_all_at(4096, &pattern(4096, 4096)).unwrap_err();
    assert_eq!(errno(&err), (6144, eio()));
    let err = writer.write_all_at(8192, &pattern(8192, 4096)).unwrap_err();
    assert_eq!(errno(&err), (8192, eio()));
    assert_eq!(stick.counters().bytes_written, 6144);
    let back = read(&stick, 0, 8192);
    assert_eq!(&back[..6144], &pattern(0, 6144)[..]);
    assert!(back[6144..].iter().all(|&b| b == 0));
}

#[test]
fn a_bad_block_fails_every_write_covering_it_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64)
            .block_size(4096)
            .write_fails_at(3 * 4096 + 100),
    );
    let mut writer = stick.open_writer().unwrap();
    // A write covering the bad block fails at its own offset, writes nothing.
    let err = writer.write_all_at(0, &pattern(0, 8 * 4096)).unwrap_err();
    assert_eq!(errno(&err), (0, eio()));
    assert_eq!(stick.counters().medium_bytes_written, 0);
    // Around it, writes succeed, also later ones.
    writer.write_all_at(0, &pattern(0, 3 * 4096)).unwrap();
    writer
        .write_all_at(4 * 4096, &pattern(4 * 4096, 4096))
        .unwrap();
    let err = writer
        .write_all_at(3 * 4096, &pattern(3 * 4096, 4096))
        .unwrap_err();
    assert_eq!(errno(&err), (3 * 4096, eio()));
    // A short final write ending inside the bad block covers it.
    let err = writer
        .write_all_at(2 * 4096, &pattern(2 * 4096, 4096 + 10))
        .unwrap_err();
    assert_eq!(errno(&err), (2 * 4096, eio()));
}

#[test]
fn a_read_error_hits_at_the_threshold_and_on_every_later_read() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).read_error_after(6144),
    );
    let mut reader = stick.open_reader().unwrap();
    let mut buf = AlignedBuf::zeroed(4096);
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 4096);
    let err = reader.read_at(4096, &mut buf).unwrap_err();
    assert_eq!(errno(&err), (6144, eio()));
    let err = reader.read_at(8192, &mut buf).unwrap_err();
    assert_eq!(errno(&err), (8192, eio()));
}

#[test]
fn corrupted_bytes_read_back_flipped_while_the_medium_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimStickSpec::new("s", MIB as u64)
        .corrupt_at(5000)
        .corrupt_at(70_000);
    let stick = stick(&dir, spec);
    let image = pattern(0, 64 * KIB);
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(0, &image).unwrap();
    writer.flush().unwrap();
    let back = read(&stick, 0, 64 * KIB);
    let first = back.iter().zip(image.iter()).position(|(a, b)| a != b);
    assert_eq!(first, Some(5000));
    assert_eq!(back[5000], !image[5000]);
    assert_eq!(back[5001..], image[5001..]);
    assert_eq!(fs::read(stick.path()).unwrap()[..64 * KIB], image[..]);
}

#[test]
fn a_wrapping_fake_stick_overwrites_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let real = 64 * KIB as u64;
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).fake_capacity(real, FakeMode::Wrap),
    );
    assert_eq!(stick.geometry().unwrap().capacity, MIB as u64);
    assert_eq!(fs::metadata(stick.path()).unwrap().len(), real);
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(0, &pattern(0, 4096)).unwrap();
    writer
        .write_all_at(3 * real, &pattern(3 * real, 4096))
        .unwrap();
    // Straddles the real size: the tail wraps to the start.
    writer
        .write_all_at(real - 2048, &pattern(real - 2048, 4096))
        .unwrap();
    writer.flush().unwrap();
    let at_start = read(&stick, 0, 4096);
    assert_eq!(&at_start[..2048], &pattern(real, 2048)[..]);
    assert_eq!(&at_start[2048..], &pattern(3 * real + 2048, 2048)[..]);
    // Reading a claimed offset past the real size shows the wrapped data.
    assert_eq!(&read(&stick, 3 * real, 4096)[..], &at_start[..]);
}

#[test]
fn a_vanishing_fake_stick_drops_writes_past_its_real_size() {
    let dir = tempfile::tempdir().unwrap();
    let real = 64 * KIB as u64;
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).fake_capacity(real, FakeMode::Vanish),
    );
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(0, &pattern(0, 4096)).unwrap();
    writer
        .write_all_at(2 * real, &pattern(2 * real, 4096))
        .unwrap();
    writer.flush().unwrap();
    assert_eq!(&read(&stick, 0, 4096)[..], &pattern(0, 4096)[..]);
    assert!(read(&stick, 2 * real, 4096).iter().all(|&b| b == 0));
    let counters = stick.counters();
    assert_eq!(counters.bytes_written, 8192);
    assert_eq!(counters.medium_bytes_written, 4096);
    assert_eq!(counters.medium_bytes_read, 4096);
}

#[test]
fn a_read_only_stick_refuses_writers_but_reads() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).read_only());
    assert!(matches!(stick.open_writer(), Err(TargetError::ReadOnly)));
    assert!(read(&stick, 0, 4096).iter().all(|&b| b == 0));
}

#[test]
fn removal_from_another_thread_wakes_a_paced_write() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB at 1 kB/s would take 70 minutes.
    let stick = stick(
        &dir,
        SimStickSpec::new("s", 8 * MIB as u64).write_speed(1_000),
    );
    let mut writer = stick.open_writer().unwrap();
    let (done, result) = std::sync::mpsc::channel();
    thread::spawn(move || done.send(writer.write_all_at(0, &pattern(0, 4 * MIB))));
    // Wait (for the state, polling it) until the bytes are on the medium
    // and the write waits for its pace.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stick.counters().medium_bytes_written < 4 * MIB as u64 {
        assert!(Instant::now() < deadline, "the write never began");
        thread::sleep(Duration::from_millis(1));
    }
    stick.remove();
    // Woken at once: the bound is a bound on a hang, 70 minutes short of
    // the pace.
    let result = result.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(result, Ok(Err(TargetError::Removed))),
        "{result:?}"
    );
    assert!(stick.is_removed());
    assert!(matches!(stick.geometry(), Err(TargetError::Removed)));
    assert!(matches!(stick.open_writer(), Err(TargetError::Removed)));
    assert!(matches!(stick.open_reader(), Err(TargetError::Removed)));
}

#[test]
fn scripted_removal_after_bytes_written_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimStickSpec::new("w", MIB as u64).remove_after_written(10_240);
    let stick = SimStick::create(spec, dir.path().join("w.img")).unwrap();
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(0, &pattern(0, 8192)).unwrap();
    assert!(matches!(
        writer.write_all_at(8192, &pattern(8192, 8192)),
        Err(TargetError::Removed)
    ));
    assert!(matches!(writer.flush(), Err(TargetError::Removed)));
    assert_eq!(stick.counters().medium_bytes_written, 10_240);

    let spec = SimStickSpec::new("r", MIB as u64).remove_after_read(8192);
    let stick = SimStick::create(spec, dir.path().join("r.img")).unwrap();
    let mut reader = stick.open_reader().unwrap();
    let mut buf = AlignedBuf::zeroed(8192);
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 8192);
    assert!(matches!(
        reader.read_at(8192, &mut buf),
        Err(TargetError::Removed)
    ));
    assert!(matches!(stick.open_reader(), Err(TargetError::Removed)));
}

#[test]
fn a_stalled_write_blocks_until_released_then_completes() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).stall_after_written(4096),
    );
    let mut writer = stick.open_writer().unwrap();
    let worker = thread::spawn(move || writer.write_all_at(0, &pattern(0, 16 * KIB)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    // Held: a stalled call leaves the stall only when released or removed.
    assert!(!worker.is_finished());
    assert_eq!(stick.counters().medium_bytes_written, 4096);
    stick.release();
    worker.join().unwrap().unwrap();
    assert_eq!(stick.stalled_calls(), 0);
    assert_eq!(&read(&stick, 0, 16 * KIB)[..], &pattern(0, 16 * KIB)[..]);
}

#[test]
fn a_rearmed_stick_is_held_again_at_a_later_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64)
            .stall_after_written(4096)
            .hang_after_written(12 * KIB as u64),
    );
    let mut writer = stick.open_writer().unwrap();
    let worker = thread::spawn(move || {
        writer.write_all_at(0, &pattern(0, 8 * KIB)).unwrap();
        writer
    });
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    assert_eq!(stick.counters().medium_bytes_written, 4096);
    stick.release();
    let mut writer = worker.join().unwrap();
    // Released, the hang would not fire; rearmed, it does.
    stick.rearm();
    let worker = thread::spawn(move || writer.write_all_at(8 * KIB as u64, &pattern(0, 8 * KIB)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    assert_eq!(stick.counters().medium_bytes_written, 12 * KIB as u64);
    stick.release();
    worker.join().unwrap().unwrap();
    assert_eq!(stick.counters().medium_bytes_written, 16 * KIB as u64);
}

#[test]
fn a_stalled_read_ends_with_removal_or_with_the_stick_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimStickSpec::new("s", MIB as u64).stall_after_read(0);
    let stick = SimStick::create(spec.clone(), dir.path().join("a.img")).unwrap();
    let mut reader = stick.open_reader().unwrap();
    let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    stick.remove();
    assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));

    let stick = SimStick::create(spec, dir.path().join("b.img")).unwrap();
    let mut reader = stick.open_reader().unwrap();
    let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    drop(stick);
    assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));
}

#[test]
fn a_hung_write_ignores_removal_and_the_stick_dropped_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("s", MIB as u64).hang_after_written(4096),
    );
    let mut writer = stick.open_writer().unwrap();
    let worker = thread::spawn(move || writer.write_all_at(0, &pattern(0, 16 * KIB)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    let keep = stick.clone();
    stick.remove();
    drop(stick);
    // Removal would have woken a stall at once; a hang stays put. (No
    // later event can prove that the woken call went back to waiting:
    // this short pause only gives a regression the time to show. It cannot
    // fail a correct stick, however loaded the machine.)
    thread::sleep(Duration::from_millis(50));
    assert!(!worker.is_finished());
    assert_eq!(keep.stalled_calls(), 1);
    keep.release();
    assert!(matches!(worker.join().unwrap(), Err(TargetError::Removed)));
    assert_eq!(keep.stalled_calls(), 0);
}

#[test]
fn a_hung_read_returns_only_when_released() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).hang_after_read(0));
    let mut reader = stick.open_reader().unwrap();
    let worker = thread::spawn(move || reader.read_at(0, &mut AlignedBuf::zeroed(4096)));
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    assert!(!worker.is_finished());
    stick.release();
    assert_eq!(worker.join().unwrap().unwrap(), 4096);
    // Released: later reads are not hung again.
    assert_eq!(read(&stick, 0, 4096).len(), 4096);
}

#[test]
fn pacing_holds_writes_and_reads_to_their_own_speeds() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimStickSpec::new("s", 4 * MIB as u64)
        .write_speed(20_000_000)
        .read_speed(40_000_000);
    let stick = stick(&dir, spec);
    let mut writer = stick.open_writer().unwrap();
    let chunk = pattern(0, 512 * KIB);
    let started = Instant::now();
    for i in 0..4u64 {
        writer.write_all_at(i * 512 * KIB as u64, &chunk).unwrap();
    }
    // 2 MiB at 20 MB/s is 104.9 ms.
    assert!(started.elapsed() >= Duration::from_millis(104));

    let mut reader = stick.open_reader().unwrap();
    let mut buf = AlignedBuf::zeroed(512 * KIB);
    let started = Instant::now();
    for i in 0..4u64 {
        reader.read_at(i * 512 * KIB as u64, &mut buf).unwrap();
    }
    // 2 MiB at 40 MB/s is 52.4 ms.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(52), "{elapsed:?}");
}

#[test]
fn invalid_specs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    for spec in [
        SimStickSpec::new("s", 1000),
        SimStickSpec::new("s", 4096).block_size(1000),
        SimStickSpec::new("s", 4096).write_speed(0),
        SimStickSpec::new("s", 4096).fake_capacity(8192, FakeMode::Wrap),
        // No file holds 2^63 bytes or more.
        SimStickSpec::new("s", 1 << 63),
        // A bad block past the end (whose end would not fit a u64).
        SimStickSpec::new("s", 4096).write_fails_at(u64::MAX),
    ] {
        let err = SimStick::create(spec, &path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
    // A stick may claim any capacity as long as it stores what a file holds.
    let huge = (u64::MAX / 512) * 512;
    let liar = SimStick::create(
        SimStickSpec::new("s", huge).fake_capacity(MIB as u64, FakeMode::Wrap),
        &path,
    )
    .unwrap();
    assert_eq!(liar.geometry().unwrap().capacity, huge);
}

#[test]
fn a_rack_numbers_its_sticks_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("rack");
    let rack = SimRack::create(
        &dir,
        [
            SimStickSpec::new("", MIB as u64),
            SimStickSpec::new("", MIB as u64).read_only(),
            SimStickSpec::new("", 512 * KIB as u64),
        ],
    )
    .unwrap();
    let names: Vec<String> = rack.sticks().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["S01", "S02", "S03"]);
    assert!(dir.join("S02.img").exists());
    assert!(matches!(
        rack.stick("S02").unwrap().open_writer(),
        Err(TargetError::ReadOnly)
    ));
    let kept = rack.stick("S01").unwrap().clone();
    // A second rack must not clobber the first one's files.
    assert!(SimRack::create(&dir, [SimStickSpec::new("", MIB as u64)]).is_err());
    assert!(dir.join("S01.img").exists());
    drop(rack);
    assert!(!dir.exists());
    assert!(kept.is_removed());
}

/// Writes `len` bytes of the pattern at `offset`, flushed, and closes the writer.
fn write_flushed(stick: &SimStick, offset: u64, len: usize) {
    let mut writer = stick.open_writer().unwrap();
    writer.write_all_at(offset, &pattern(offset, len)).unwrap();
    writer.flush().unwrap();
}

#[test]
fn a_write_through_cache_hides_what_a_fake_medium_dropped_until_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("c", 16 * MIB as u64)
            .fake_capacity(MIB as u64, FakeMode::Vanish)
            .volatile_cache(4 * MIB as u64, CacheMode::WriteThrough),
    );
    write_flushed(&stick, 0, 2 * MIB);
    // Everything reads back right, the bytes past the real size from the cache.
    assert_eq!(&read(&stick, 0, 2 * MIB)[..], &pattern(0, 2 * MIB)[..]);
    assert_eq!(stick.counters().medium_bytes_read, 0);
    stick.reset().unwrap();
    let back = read(&stick, 0, 2 * MIB);
    assert_eq!(&back[..MIB], &pattern(0, MIB)[..]);
    assert!(back[MIB..].iter().all(|&b| b == 0));
    assert_eq!(stick.counters().resets, 1);
}

#[test]
fn a_lossy_cache_loses_its_window_on_a_reset_and_the_medium_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("c", 8 * MIB as u64).volatile_cache(MIB as u64, CacheMode::LostOnReset),
    );
    let mut writer = stick.open_writer().unwrap();
    for piece in 0..4u64 {
        let offset = piece * MIB as u64;
        writer.write_all_at(offset, &pattern(offset, MIB)).unwrap();
    }
    // A short final write ends inside a block: it is cached padded.
    writer
        .write_all_at(4 * MIB as u64, &pattern(4 * MIB as u64, 1000))
        .unwrap();
    writer.flush().unwrap();
    drop(writer);
    let written = 4 * MIB + 1000;
    assert_eq!(
        &read(&stick, 0, 4 * MIB + 1024)[..written],
        &pattern(0, written)[..]
    );
    // The medium got only what the cache pushed out: the window (the last
    // MiB of blocks, the short write's two included) never reached it.
    let window = (written.div_ceil(512) - MIB / 512) as u64 * 512;
    let medium = fs::read(stick.path()).unwrap();
    assert_eq!(&medium[..window as usize], &pattern(0, window as usize)[..]);
    assert!(medium[window as usize..written].iter().all(|&b| b == 0));
    stick.reset().unwrap();
    let back = read(&stick, 0, 4 * MIB + 1024);
    assert_eq!(&back[..window as usize], &pattern(0, window as usize)[..]);
    assert!(back[window as usize..].iter().all(|&b| b == 0));
}

#[test]
fn a_healthy_stick_with_a_cache_reads_the_same_before_and_after_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(
        &dir,
        SimStickSpec::new("c", 8 * MIB as u64)
            .volatile_cache(MIB as u64, CacheMode::WriteThrough)
            .corrupt_at(3 * MIB as u64 + 7),
    );
    write_flushed(&stick, 0, 4 * MIB);
    let before = read(&stick, 0, 4 * MIB);
    stick.reset().unwrap();
    let after = read(&stick, 0, 4 * MIB);
    assert_eq!(&before[..], &after[..]);
    // A corrupted byte comes back flipped from the cache as from the medium.
    let mut expected = pattern(0, 4 * MIB);
    expected[3 * MIB + 7] ^= 0xff;
    assert_eq!(&after[..], &expected[..]);
    stick.remove();
    assert!(matches!(stick.reset(), Err(TargetError::Removed)));
}

#[test]
fn a_slow_start_delays_every_open_for_writing_and_a_removal_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(300);
    let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).open_delay(delay));
    let began = Instant::now();
    let mut writer = stick.open_writer().unwrap();
    assert!(
        began.elapsed() >= delay,
        "opened after {:?}",
        began.elapsed()
    );
    writer.write_all_at(0, &pattern(0, 4096)).unwrap();
    drop(writer);
    // Removed while it starts: the open fails as removed at once.
    let opening = {
        let stick = stick.clone();
        thread::spawn(move || stick.open_writer().map(|_| ()))
    };
    stick.remove();
    assert!(matches!(opening.join().unwrap(), Err(TargetError::Removed)));
}

#[test]
fn a_stick_stuck_in_its_start_opens_only_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let stick = stick(&dir, SimStickSpec::new("s", MIB as u64).stall_on_open());
    let opening = {
        let stick = stick.clone();
        thread::spawn(move || {
            let mut writer = stick.open_writer()?;
            writer.write_all_at(0, &pattern(0, 4096))
        })
    };
    assert!(stick.wait_until_stalled(Duration::from_secs(5)));
    assert!(!opening.is_finished());
    stick.release();
    opening.join().unwrap().unwrap();
    assert_eq!(stick.stalled_calls(), 0);
    assert_eq!(&read(&stick, 0, 4096)[..], &pattern(0, 4096)[..]);
}
