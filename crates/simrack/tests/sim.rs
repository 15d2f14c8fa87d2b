//! The simulated sticks as the engine sees them: through `dyn Target`.

use std::sync::Arc;

use flashrack_simrack::sim::{FakeMode, SimRack, SimStickSpec};
use flashrack_target::{AlignedBuf, Target};

const MIB: u64 = 1024 * 1024;

/// A capacity probe like the engine's: 4 KiB markers spread over the claim, written,
/// flushed, then read back through a fresh reader. Returns whether all came back.
fn probe(target: &dyn Target) -> bool {
    let capacity = target.geometry().unwrap().capacity;
    let offsets: Vec<u64> = (0..8).map(|i| i * (capacity / 8)).collect();
    let marker = |offset: u64| {
        let mut buf = AlignedBuf::zeroed(4096);
        buf[..8].copy_from_slice(&offset.to_le_bytes());
        buf[8..12].copy_from_slice(b"mark");
        buf
    };
    let mut writer = target.open_writer().unwrap();
    for &offset in &offsets {
        writer.write_all_at(offset, &marker(offset)).unwrap();
    }
    writer.flush().unwrap();
    drop(writer);
    let mut reader = target.open_reader().unwrap();
    let mut buf = AlignedBuf::zeroed(4096);
    offsets.iter().all(|&offset| {
        reader.read_at(offset, &mut buf).unwrap();
        buf[..] == marker(offset)[..]
    })
}

#[test]
fn a_capacity_probe_through_dyn_target_catches_fake_sticks() {
    let root = tempfile::tempdir().unwrap();
    let rack = SimRack::create(
        root.path().join("rack"),
        [
            SimStickSpec::new("", 8 * MIB),
            SimStickSpec::new("", 8 * MIB).fake_capacity(MIB, FakeMode::Wrap),
            SimStickSpec::new("", 8 * MIB).fake_capacity(MIB, FakeMode::Vanish),
        ],
    )
    .unwrap();
    let targets: Vec<Arc<dyn Target>> = rack
        .sticks()
        .iter()
        .map(|stick| Arc::new(stick.clone()) as Arc<dyn Target>)
        .collect();
    let verdicts: Vec<bool> = targets.iter().map(|target| probe(&**target)).collect();
    assert_eq!(verdicts, [true, false, false]);
    // The honest stick's read-back really came from its backing file.
    let counters = rack.sticks()[0].counters();
    assert_eq!(counters.medium_bytes_read, 8 * 4096);
    assert_eq!(counters.medium_bytes_written, 8 * 4096);
}
