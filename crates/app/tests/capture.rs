//! Capturing a master stick on real loop devices the test attaches (root):
//! a partition table the test writes (MBR and GPT) says where the master's
//! data ends; `whole` reads all of it; a mounted master and a device without
//! a partition table are refused; nothing is ever written to the master. A
//! capture gets a block map from its file systems, like an import, and
//! keeps where it came from. Over the API (`POST /api/v1/images/capture`),
//! the stick in the station's master port is captured with its progress,
//! never written by an armed run, and bad requests get a clear 4xx.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use flashrack_app::capture::{capture, read_policy, CaptureError, CaptureRequest, Extent};
use flashrack_app::images::{open_cache, MapNote};
use flashrack_app::testing::{spawn_app_with, TestApp};
use flashrack_app::AppError;
use flashrack_core::Sha256Digest;
use flashrack_hotplug::{DeviceIdentity, Hotplug, PluggedDevice};
use flashrack_image::MapOrigin;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_testkit::{image_bytes, require_root, run, LoopDevice, MountedExt4};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn request(device: &LoopDevice, whole: bool) -> CaptureRequest {
    let mut policy = read_policy();
    policy.allowed_buses.insert("loop".into());
    CaptureRequest {
        device: device.path().to_path_buf(),
        name: Some("golden-v3".into()),
        whole,
        policy,
        ..Default::default()
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

/// Writes a GPT with one partition from sector `first` to `last` (both
/// included) on `device`, of `sector`-byte sectors, and its protective MBR.
fn gpt_master(device: &LoopDevice, sector: u64, first: u64, last: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device.path())
        .unwrap();
    let mut gpt = gptman::GPT::new_from(&mut file, sector, [7; 16]).unwrap();
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: [1; 16],
        unique_partition_guid: [2; 16],
        starting_lba: first,
        ending_lba: last,
        attribute_bits: 0,
        partition_name: "master".into(),
    };
    gpt.write_into(&mut file).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut file, sector).unwrap();
    file.sync_all().unwrap();
}

/// Checks that the image file at `path` is a GPT disk of its own with
/// `sector`-byte sectors: its primary header and, read alone (the primary
/// torn in a copy), its backup at its last sector both give the one
/// partition from `first` to `last`; and, for 512-byte sectors, that
/// `sfdisk` reads it as GPT without a word of complaint.
fn assert_whole_gpt(path: &std::path::Path, sector: u64, first: u64, last: u64) {
    let bytes = std::fs::read(path).unwrap();
    let last_lba = bytes.len() as u64 / sector - 1;
    let primary = gptman::GPT::read_from(&mut std::io::Cursor::new(&bytes), sector).unwrap();
    assert!(primary.header.is_primary());
    assert_eq!(primary.header.backup_lba, last_lba);
    assert_eq!(primary.header.last_usable_lba, last);
    assert_eq!(
        (primary[1].starting_lba, primary[1].ending_lba),
        (first, last)
    );
    let mut torn = bytes.clone();
    torn[sector as usize..2 * sector as usize].fill(0);
    let backup = gptman::GPT::read_from(&mut std::io::Cursor::new(&torn), sector).unwrap();
    assert!(backup.header.is_backup(), "read from the backup");
    assert_eq!(backup.header.primary_lba, last_lba);
    assert_eq!(
        (backup[1].starting_lba, backup[1].ending_lba),
        (first, last)
    );
    assert_eq!(backup[1].partition_name.as_str(), "master");
    if sector == 512 {
        let out = std::process::Command::new("sfdisk")
            .arg("--dump")
            .arg(path)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("label: gpt"), "{stdout}");
        assert!(stdout.contains(&format!("start={first:>12}")), "{stdout}");
        assert!(stderr.trim().is_empty(), "sfdisk complains: {stderr}");
    }
}

/// A GPT master is read up to the end of its last partition, and the
/// image gets the GPT's backup copy right after that (its primary header
/// pointing there, the protective MBR spanning the image): a disk of its
/// own. Before, the image ended at the partition and its primary header
/// pointed at a backup past its end: `sfdisk` read it as a plain MBR disk
/// and `sgdisk -v` said "Backup header: ERROR", on every stick written
/// from it.
#[test]
fn a_gpt_master_is_captured_up_to_the_end_of_its_last_partition_with_its_backup_rebuilt() {
    if !require_root(&["losetup", "sfdisk"]) {
        return;
    }
    let device = LoopDevice::new(64 * MIB);
    gpt_master(&device, 512, 2048, 2048 + 24 * 2048 - 1);
    write_at(&device, MIB, &image_bytes(24 * MIB as usize, 24, 4096));
    let before = device_bytes(&device);
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();
    let captured = capture(&cache, &request(&device, false)).unwrap();
    assert_eq!(captured.extent, Extent::Gpt);
    assert_eq!(captured.sector_size, 512);
    // The data, then the 128 entries (32 sectors) and the header.
    let image = &captured.outcome.image;
    assert_eq!(image.size(), 25 * MIB + 33 * 512);
    let bytes = std::fs::read(&image.path).unwrap();
    assert_eq!(image.sha256(), Sha256Digest::of(&bytes));
    // Past the protective MBR and the primary header, the device's bytes.
    assert!(bytes[1024..25 * MIB as usize] == before[1024..25 * MIB as usize]);
    assert!(
        bytes[..446] == before[..446],
        "the boot code is the master's"
    );
    assert_whole_gpt(&image.path, 512, 2048, 2048 + 24 * 2048 - 1);
    let origin = image
        .meta
        .provenance
        .as_ref()
        .unwrap()
        .captured
        .clone()
        .unwrap();
    assert!(
        origin.extent.contains("backup copy rebuilt"),
        "{}",
        origin.extent
    );
    assert_eq!(origin.sector_size, None);
    assert!(
        device_bytes(&device) == before,
        "nothing was written to the master"
    );
}

/// A master of 4096-byte logical sectors (some USB disks report them): its
/// MBR and its GPT count in those sectors, so it is read to the real end of
/// its last partition, and the image says its sector size. Before, the
/// MBR's sectors were taken as 512 bytes: the image stopped at an eighth of
/// the data, with no warning.
#[test]
fn a_master_of_4096_byte_sectors_is_read_in_its_own_sectors() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();

    let mbr_device = LoopDevice::with_sector_size(64 * MIB, 4096);
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mbr_device.path())
            .unwrap();
        let mut mbr = mbrman::MBR::new_from(&mut file, 4096, [1, 2, 3, 4]).unwrap();
        for (slot, start, sectors) in [(1, 256, 2048), (2, 4096, 2048)] {
            mbr[slot] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_INACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys: 0x83,
                last_chs: mbrman::CHS::empty(),
                starting_lba: start,
                sectors,
            };
        }
        mbr.write_into(&mut file).unwrap();
        file.sync_all().unwrap();
    }
    // The second partition: 16 MiB to 24 MiB.
    write_at(
        &mbr_device,
        16 * MIB,
        &image_bytes(8 * MIB as usize, 31, 4096),
    );
    let before = device_bytes(&mbr_device);
    let captured = capture(&cache, &request(&mbr_device, false)).unwrap();
    assert_eq!(captured.extent, Extent::Mbr);
    assert_eq!(captured.sector_size, 4096);
    assert_eq!(captured.outcome.image.size(), 24 * MIB);
    assert_eq!(
        captured.outcome.image.sha256(),
        Sha256Digest::of(&before[..24 * MIB as usize])
    );
    let origin = captured.outcome.image.meta.provenance.as_ref().unwrap();
    assert_eq!(origin.captured.as_ref().unwrap().sector_size, Some(4096));
    assert!(origin.to_string().contains("4096-byte sectors"), "{origin}");

    let gpt_device = LoopDevice::with_sector_size(64 * MIB, 4096);
    // 1 MiB to 17 MiB in 4096-byte sectors.
    gpt_master(&gpt_device, 4096, 256, 256 + 4096 - 1);
    let captured = capture(&cache, &request(&gpt_device, false)).unwrap();
    assert_eq!((captured.extent, captured.sector_size), (Extent::Gpt, 4096));
    // The data, then the 128 entries (4 sectors) and the header.
    assert_eq!(captured.outcome.image.size(), 17 * MIB + 5 * 4096);
    assert_whole_gpt(&captured.outcome.image.path, 4096, 256, 256 + 4096 - 1);
    // Its inspection reads the GPT in 4096-byte sectors and says what that
    // means for sticks (before: "partition table: none, GPT damaged").
    let info = captured.outcome.image.meta.inspection.as_ref().unwrap();
    let table = info.table.as_ref().expect("a partition table");
    assert_eq!(
        (table.partitions[0].start, table.partitions[0].size),
        (MIB, 16 * MIB)
    );
    assert!(
        info.problems
            .iter()
            .any(|p| p.contains("4096-byte sectors")),
        "{:?}",
        info.problems
    );
}

/// A table that cannot say where the master's data ends needs `whole`: a
/// GPT whose primary header is damaged (read from its backup at the
/// device's end, which a capture up to the last partition would leave out:
/// the image would hold no usable table), and an MBR whose partition ends
/// past the device's end (a device smaller than the one it was written
/// for). Before, the first was captured without its only good table and
/// the second as the whole device said to end at its last partition.
#[test]
fn a_master_whose_table_cannot_say_where_it_ends_needs_whole() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();

    let gpt_device = LoopDevice::new(32 * MIB);
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(gpt_device.path())
            .unwrap();
        let mut gpt = gptman::GPT::new_from(&mut file, 512, [5; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [3; 16],
            starting_lba: 2048,
            ending_lba: 2048 + 8 * 2048 - 1,
            attribute_bits: 0,
            partition_name: "master".into(),
        };
        gpt.write_into(&mut file).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut file, 512).unwrap();
        file.sync_all().unwrap();
    }
    // The primary header (LBA 1) torn: only the backup at the end is good.
    write_at(&gpt_device, 512, &[0u8; 512]);
    let error = capture(&cache, &request(&gpt_device, false)).unwrap_err();
    match &error {
        AppError::Capture(CaptureError::DamagedPartitionTable { reason, .. }) => {
            assert!(reason.contains("primary GPT header"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("--whole"), "{error}");
    let whole = capture(&cache, &request(&gpt_device, true)).unwrap();
    assert_eq!(whole.outcome.image.size(), 32 * MIB);

    let mbr_device = LoopDevice::new(16 * MIB);
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mbr_device.path())
            .unwrap();
        let mut mbr = mbrman::MBR::new_from(&mut file, 512, [4, 3, 2, 1]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            // 24 MiB from 1 MiB on a 16 MiB device.
            sectors: 24 * 2048,
        };
        mbr.write_into(&mut file).unwrap();
        file.sync_all().unwrap();
    }
    let error = capture(&cache, &request(&mbr_device, false)).unwrap_err();
    match &error {
        AppError::Capture(CaptureError::DamagedPartitionTable { reason, .. }) => {
            assert!(reason.contains("past the device's end"), "{reason}");
        }
        other => panic!("{other}"),
    }
    // A protective MBR whose GPT is gone (both headers): its partition is
    // the GPT's placeholder over the whole disk, not where data ends.
    // Before, it was captured as an MBR master up to the device's end.
    let protective = LoopDevice::new(16 * MIB);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .open(protective.path())
            .unwrap();
        gptman::GPT::write_protective_mbr_into(&mut file, 512).unwrap();
        file.sync_all().unwrap();
    }
    let error = capture(&cache, &request(&protective, false)).unwrap_err();
    match &error {
        AppError::Capture(CaptureError::DamagedPartitionTable { reason, .. }) => {
            assert!(reason.contains("protects a GPT"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(cache.list().unwrap().len(), 1, "only the whole GPT capture");
}

/// The name a capture is kept under is a plain file name whoever asks (the
/// API's rule): a path, a name starting with a dot, a terminal's escape
/// sequence are refused before the device is opened. Before, `image capture
/// --name ../../etc/evil` (or `a/b`, or one holding ESC) kept the image
/// under that name, printed as it was by `image list`.
#[test]
fn a_capture_name_that_is_not_a_plain_file_name_is_refused() {
    if !require_root(&["losetup"]) {
        return;
    }
    let device = LoopDevice::new(8 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();
    for name in ["../../etc/evil", "a/b", ".hidden", "red\u{1b}[31m", ""] {
        let request = CaptureRequest {
            name: Some(name.into()),
            ..request(&device, true)
        };
        let error = capture(&cache, &request).unwrap_err();
        assert!(
            matches!(error, AppError::Capture(CaptureError::BadName { .. })),
            "{name:?}: {error}"
        );
    }
    assert!(cache.list().unwrap().is_empty());
    let plain = CaptureRequest {
        name: Some("golden-v3.img".into()),
        ..request(&device, true)
    };
    capture(&cache, &plain).unwrap();
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

/// Writes an MBR with one Linux partition of `mib` MiB at 1 MiB, holding an
/// ext4 file system with a 2 MiB file: a master as a person prepares one.
fn ext4_master(device: &LoopDevice, mib: u64) {
    {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device.path())
            .unwrap();
        let mut mbr = mbrman::MBR::new_from(&mut file, 512, [9, 8, 7, 6]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_ACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: (mib * MIB / 512) as u32,
        };
        mbr.write_into(&mut file).unwrap();
        file.sync_all().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("file"), image_bytes(2 * MIB as usize, 31, 4096)).unwrap();
    let fs = dir.path().join("ext4.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            root.to_str().unwrap(),
            fs.to_str().unwrap(),
        ],
    );
    write_at(device, MIB, &std::fs::read(&fs).unwrap());
}

#[test]
fn a_capture_gets_a_block_map_from_its_file_systems_and_says_where_it_came_from() {
    if !require_root(&["losetup", "mkfs.ext4"]) {
        return;
    }
    let device = LoopDevice::new(48 * MIB);
    ext4_master(&device, 24);
    let before = device_bytes(&device);
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path()).unwrap();
    let mut request = request(&device, false);
    request.port = Some("M1".into());
    request.serial = Some("GOLD-1".into());
    let captured = capture(&cache, &request).unwrap();
    let image = &captured.outcome.image;
    assert_eq!(image.size(), 25 * MIB);
    let MapNote::Generated(map) = &captured.map else {
        panic!("no map generated: {}", captured.map.summary());
    };
    assert!(
        matches!(&map.origin, MapOrigin::Generated { sources, .. } if sources.iter().any(|s| s.contains("ext4"))),
        "{:?}",
        map.origin
    );
    // The file and the file system's metadata, well under the image.
    let mapped = map.ranges.mapped_bytes();
    assert!(mapped > 2 * MIB && mapped < 16 * MIB, "{}", map.summary());
    assert_eq!(
        cache.block_map(&image.sha256()).unwrap().as_ref(),
        Some(map)
    );
    let provenance = image.meta.provenance.clone().expect("a provenance");
    let origin = provenance.captured.clone().expect("captured");
    assert_eq!(origin.port.as_deref(), Some("M1"));
    assert_eq!(origin.serial.as_deref(), Some("GOLD-1"));
    assert_eq!(origin.device_size, 48 * MIB);
    assert_eq!(origin.extent, Extent::Mbr.describe());
    assert!(
        provenance
            .to_string()
            .starts_with("captured from port M1, serial GOLD-1"),
        "{provenance}"
    );
    // Read again from the cache: the provenance was kept with the image.
    let again = cache.get(&image.sha256()).unwrap().unwrap();
    assert_eq!(again.meta.provenance, Some(provenance));
    assert!(
        device_bytes(&device) == before,
        "nothing was written to the master"
    );
}

/// How long a test waits for what must happen: a bound on a hang.
const WAIT: Duration = Duration::from_secs(60);

/// A station whose port A3 is its master port, loop devices allowed (the
/// test's master is one), and a 64 MiB simulated stick in A1.
async fn station_with_a_master_port() -> TestApp {
    let app = spawn_app_with(|config| {
        config.ports[2].master = true;
        config.allowed_buses.insert("loop".into());
    })
    .await;
    app.rack
        .plug("t-1", "COPY-1", SimStickSpec::new("", 64 * MIB))
        .unwrap();
    app
}

/// The loop device as hotplug would report a stick in the port at `port_path`.
fn plugged(device: &LoopDevice, port_path: &str, serial: &str) -> PluggedDevice {
    let facts = flashrack_guard::DiskFacts::inspect(device.path()).unwrap();
    PluggedDevice {
        kernel_name: device.kernel_name(),
        dev_path: device.path().to_path_buf(),
        port_path: Some(port_path.into()),
        bus: Some("loop".into()),
        identity: DeviceIdentity {
            serial: Some(serial.into()),
            vendor: Some("Test".into()),
            model: Some("Master".into()),
            capacity: facts.size_bytes,
        },
        removable: true,
        read_only: false,
        disk: Some(facts.identity()),
    }
}

/// Waits until capture `id` has ended; returns its view.
async fn capture_ended(app: &TestApp, id: u64) -> Value {
    app.listed_until_ended("/api/v1/images/captures", id, "capturing", WAIT)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_ports_stick_is_captured_over_the_api_and_never_written_by_a_run() {
    if !require_root(&["losetup", "mkfs.ext4"]) {
        return;
    }
    let device = LoopDevice::new(48 * MIB);
    ext4_master(&device, 24);
    let before = device_bytes(&device);
    let app = station_with_a_master_port().await;
    let mut events = app.events().await;
    app.hotplug(Hotplug::Added(plugged(&device, "t-3", "GOLD-1")));
    let view = events
        .until("the master in A3", |v| {
            v.state("A3") == "master" && v.state("A1") == "detected"
        })
        .await;
    assert_eq!(view.ports["A3"]["master"], true);
    assert_eq!(view.ports["A1"]["master"], false);

    // An armed run writes A1's stick and never the master.
    app.arm().await;
    events
        .until("A1 passed", |v| v.state("A1") == "passed")
        .await;
    let start = app.post("/api/v1/ports/A3/start", None).await;
    assert_eq!(start.status, 409, "{}", start.body);
    assert!(start.body.contains("master port"), "{}", start.body);
    assert_eq!(
        app.station.snapshot().ports[2].state,
        flashrack_station::PortState::Master
    );
    let stopped = app
        .post(
            "/api/v1/runs/current/stop",
            Some(json!({ "reason": "done" })),
        )
        .await;
    assert!(stopped.status < 300, "{}", stopped.body);

    let started = app
        .post(
            "/api/v1/images/capture",
            Some(json!({ "name": "golden-v3" })),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let started = started.json();
    assert_eq!(started["port"], "A3");
    assert_eq!(started["serial"], "GOLD-1");
    assert_eq!(started["state"], "capturing");
    let done = capture_ended(&app, started["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    let size = 25 * MIB;
    assert_eq!(done["size"], size);
    assert_eq!(
        (done["read"].as_u64(), done["total"].as_u64()),
        (Some(size), Some(size))
    );
    assert_eq!(done["device_size"], 48 * MIB);
    assert_eq!(done["extent"], Extent::Mbr.describe());
    // The smallest stick seen is A1's (the master itself is left out).
    assert_eq!(done["smallest_stick"], 64 * MIB);
    assert_eq!(done["fits_smallest_stick"], true);
    assert_eq!(done["block_map"]["status"], "generated", "{done}");
    let sha = Sha256Digest::of(&before[..size as usize]);
    assert_eq!(done["image"], sha.to_hex());

    // In the image library like an import: its provenance and block map.
    let image = app.get(&format!("/api/v1/images/{}", sha.to_hex())).await;
    assert_eq!(image.status, 200, "{}", image.body);
    let image = image.json();
    assert_eq!(image["name"], "golden-v3");
    assert_eq!(image["provenance"]["captured"]["port"], "A3");
    assert_eq!(image["provenance"]["captured"]["serial"], "GOLD-1");
    let share = image["block_map"]["mapped_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 0.7, "{image}");

    assert!(
        device_bytes(&device) == before,
        "nothing was written to the master"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_capture_requests_get_a_clear_4xx() {
    if !require_root(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let app = station_with_a_master_port().await;
    let mut events = app.events().await;
    events
        .until("A1 detected", |v| v.state("A1") == "detected")
        .await;
    let capture = |body: Value| {
        let app = &app;
        async move { app.post("/api/v1/images/capture", Some(body)).await }
    };
    let error_of = |answer: &flashrack_app::testing::Answer| {
        answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // No stick in the master port.
    let empty = capture(json!({ "name": "golden" })).await;
    assert_eq!(empty.status, 409, "{}", empty.body);
    assert!(
        error_of(&empty).contains("no stick in master port A3"),
        "{}",
        empty.body
    );
    // Not a master port; no such port.
    let not_master = capture(json!({ "name": "golden", "port": "A1" })).await;
    assert_eq!(not_master.status, 409, "{}", not_master.body);
    assert!(
        error_of(&not_master).contains("not a master port"),
        "{}",
        not_master.body
    );
    let unknown = capture(json!({ "name": "golden", "port": "Z9" })).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // A name that is no file name; a body with a field it does not know.
    for name in ["../etc/passwd", "", ".hidden", "a b"] {
        let bad = capture(json!({ "name": name })).await;
        assert_eq!(bad.status, 400, "{name:?}: {}", bad.body);
        assert!(
            error_of(&bad).contains("must be 1-128 letters"),
            "{}",
            bad.body
        );
    }
    let unknown_field = capture(json!({ "name": "golden", "device": "/dev/sda" })).await;
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.body);

    // A mounted master is refused before anything starts.
    let device = LoopDevice::new(32 * MIB);
    let mounted = MountedExt4::new(&device);
    app.hotplug(Hotplug::Added(plugged(&device, "t-3", "GOLD-2")));
    events
        .until("the master in A3", |v| v.state("A3") == "master")
        .await;
    let refused = capture(json!({ "name": "golden", "whole": true })).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(error_of(&refused).contains("mounted"), "{}", refused.body);
    assert_eq!(app.get("/api/v1/images/captures").await.json(), json!([]));
    drop(mounted);
    app.hotplug(Hotplug::Removed {
        kernel_name: device.kernel_name(),
    });
    events.until("A3 empty", |v| v.state("A3") == "empty").await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_without_a_master_port_says_so() {
    let app = flashrack_app::testing::spawn_app().await;
    let answer = app
        .post("/api/v1/images/capture", Some(json!({ "name": "golden" })))
        .await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(answer.body.contains("no master port"), "{}", answer.body);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_pulled_during_its_capture_fails_it_and_nothing_is_kept() {
    if !require_root(&["losetup"]) {
        return;
    }
    // 2 GiB read whole: a capture of a second or more, pulled as it begins.
    // The loop device stays readable after the station hears of the pull
    // (a real stick would not): the capture must stop because the station
    // saw its master go, not because a read failed. Before, it was read to
    // the end and cached as `done`.
    let device = LoopDevice::new(2048 * MIB);
    let app = station_with_a_master_port().await;
    let mut events = app.events().await;
    app.hotplug(Hotplug::Added(plugged(&device, "t-3", "GOLD-P")));
    events
        .until("the master in A3", |v| v.state("A3") == "master")
        .await;
    let started = app
        .post(
            "/api/v1/images/capture",
            Some(json!({ "name": "pulled-master", "whole": true })),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    app.hotplug(Hotplug::Removed {
        kernel_name: device.kernel_name(),
    });
    let ended = capture_ended(&app, started.json()["id"].as_u64().unwrap()).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("the master was pulled from port A3 during its capture"),
        "{ended}"
    );
    assert!(ended["read"].as_u64().unwrap() < 2048 * MIB, "{ended}");
    let images = app.get("/api/v1/images").await.json();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "pulled-master"),
        "nothing of it cached: {images}"
    );
    app.stop().await.unwrap();
}
