//! Block targets on real loop devices that this test creates (root, `losetup`,
//! `fincore`): what the read-back leaves in the page cache. The test fails, not
//! skips, without root; the loop device is detached by its `Drop` guard.

use std::path::Path;
use std::sync::Arc;

use flashrack_devices::block::{GuardCheck, PathTarget};
use flashrack_devices::guard::{check_path, GuardPolicy, GuardRequest};
use flashrack_devices::{AlignedBuf, Target};
use flashrack_testkit::{require_root, run, LoopDevice};

const MIB: usize = 1 << 20;

/// The real guard, with loop devices allowed as the test's explicit choice.
fn loop_guard(image_size: u64) -> GuardCheck {
    Arc::new(move |path: &Path| {
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
        check_path(path, &policy, &request)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// Bytes of `path` resident in the page cache.
fn resident_bytes(path: &Path) -> u64 {
    let out = run(
        "fincore",
        &[
            "--bytes",
            "--noheadings",
            "--raw",
            "--output",
            "RES",
            path.to_str().unwrap(),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore printed {out:?}"))
}

#[test]
fn a_loop_read_back_drops_the_backing_file_pages_behind_it() {
    require_root(&["losetup", "fincore"]);
    let written = 48 * MIB;
    let device = LoopDevice::new(64 * MIB as u64);
    let target = PathTarget::block_device(device.path(), loop_guard(written as u64));

    let mut piece = AlignedBuf::zeroed(4 * MIB);
    let mut writer = target.open_writer().unwrap();
    for (index, offset) in (0..written).step_by(piece.len()).enumerate() {
        piece.fill(index as u8 + 1);
        writer.write_all_at(offset as u64, &piece).unwrap();
    }
    writer.flush().unwrap();

    // The read-back, as the engine does it: a fresh reader, sequential pieces.
    let mut reader = target.open_reader().unwrap();
    let mut back = AlignedBuf::zeroed(2 * MIB);
    for offset in (0..written).step_by(back.len()) {
        assert_eq!(
            reader.read_at(offset as u64, &mut back).unwrap(),
            back.len()
        );
        let expected = (offset / (4 * MIB)) as u8 + 1;
        assert!(
            back.iter().all(|&b| b == expected),
            "the bytes at {offset} are the ones written"
        );
    }

    // Without dropping behind, all 48 MiB just read would be cached; what may
    // remain is the last step not yet dropped and the kernel's read-ahead.
    let resident = resident_bytes(device.backing());
    assert!(
        resident <= 24 * MIB as u64,
        "{resident} bytes of the backing file are still cached after the read-back"
    );
}
