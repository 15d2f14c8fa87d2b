//! Capturing a master stick on real loop devices the test attaches (root):
//! a partition table the test writes (MBR and GPT) says where the master's
//! data ends; `whole` reads all of it; a mounted master and a device without
//! a partition table are refused; nothing is ever written to the master.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use flashrack_app::capture::{capture, read_policy, CaptureError, CaptureRequest, Extent};
use flashrack_app::images::open_cache;
use flashrack_app::AppError;
use flashrack_core::Sha256Digest;
use flashrack_testkit::{image_bytes, require_root, LoopDevice, MountedExt4};

const MIB: u64 = 1 << 20;

fn request(device: &LoopDevice, whole: bool) -> CaptureRequest {
    let mut policy = read_policy();
    policy.allowed_buses.insert("loop".into());
    CaptureRequest {
        device: device.path().to_path_buf(),
        name: Some("golden-v3".into()),
        whole,
        policy,
    }
}

/// Writes `data` at `offset` through the device node (the page cache of the
/// device is then what a later read sees).
fn write_at(device: &LoopDevice, offset: u64, data: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(device.path()).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
}

fn device_bytes(device: &LoopDevice) -> Vec<u8> {
    std::fs::read(device.path()).unwrap()
}

#[test]
fn an_mbr_master_is_captured_up_to_the_end_of_its_last_partition() {
    if !require_root(&["losetup"]) {
        return;
    }
    let device = LoopDevice::new(64 * MIB);
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device.path())
            .unwrap();
        let mut mbr = mbrman::MBR::new_from(&mut file, 512, [1, 2, 3, 4]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_ACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x0c,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: 20 * 2048,
        };
        mbr[2] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 22 * 2048,
            sectors: 10 * 2048,
        };
        mbr.write_into(&mut file).unwrap();
        file.sync_all().unwrap();
    }
    write_at(&device, MIB, &image_bytes(20 * MIB as usize, 21, 4096));
    write_at(&device, 22 * MIB, &image_bytes(10 * MIB as usize, 22, 4096));
    // Data past the last partition is not the master's.
    write_at(&device, 40 * MIB, &image_bytes(MIB as usize, 23, 4096));
    let before = device_bytes(&device);

    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();
    let captured = capture(&cache, &request(&device, false)).unwrap();
    let image = &captured.outcome.image;
    assert_eq!(captured.extent, Extent::Mbr);
    assert_eq!(captured.device_size, 64 * MIB);
    assert_eq!(image.size(), 32 * MIB, "the end of the second partition");
    assert_eq!(
        image.sha256(),
        Sha256Digest::of(&before[..32 * MIB as usize])
    );
    assert_eq!(image.meta.original_name, "golden-v3");
    assert_eq!(
        std::fs::read(&image.path).unwrap(),
        before[..32 * MIB as usize]
    );

    let whole = capture(&cache, &request(&device, true)).unwrap();
    assert_eq!(whole.extent, Extent::Whole);
    assert_eq!(whole.outcome.image.size(), 64 * MIB);
    assert_eq!(whole.outcome.image.sha256(), Sha256Digest::of(&before));
    assert!(
        device_bytes(&device) == before,
        "nothing was written to the master"
    );
}

#[test]
fn a_gpt_master_is_captured_up_to_the_end_of_its_last_partition() {
    if !require_root(&["losetup"]) {
        return;
    }
    let device = LoopDevice::new(64 * MIB);
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device.path())
            .unwrap();
        let mut gpt = gptman::GPT::new_from(&mut file, 512, [7; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 2048 + 24 * 2048 - 1,
            attribute_bits: 0,
            partition_name: "master".into(),
        };
        gpt.write_into(&mut file).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut file, 512).unwrap();
        file.sync_all().unwrap();
    }
    write_at(&device, MIB, &image_bytes(24 * MIB as usize, 24, 4096));
    let before = device_bytes(&device);
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();
    let captured = capture(&cache, &request(&device, false)).unwrap();
    assert_eq!(captured.extent, Extent::Gpt);
    assert_eq!(captured.outcome.image.size(), 25 * MIB);
    assert_eq!(
        captured.outcome.image.sha256(),
        Sha256Digest::of(&before[..25 * MIB as usize])
    );
}

#[test]
fn a_mounted_master_is_refused_and_a_bare_one_needs_whole() {
    if !require_root(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(&dir.path().join("cache")).unwrap();

    let bare = LoopDevice::new(8 * MIB);
    let error = capture(&cache, &request(&bare, false)).unwrap_err();
    assert!(
        matches!(
            error,
            AppError::Capture(CaptureError::NoPartitionTable { .. })
        ),
        "{error}"
    );

    let device = LoopDevice::new(32 * MIB);
    let _mounted = MountedExt4::new(&device);
    let error = capture(&cache, &request(&device, true)).unwrap_err();
    match &error {
        AppError::Capture(CaptureError::Refused { reasons, .. }) => {
            assert!(reasons.iter().any(|r| r.contains("mounted")), "{reasons:?}");
        }
        other => panic!("{other}"),
    }
    assert!(cache.list().unwrap().is_empty());
}
