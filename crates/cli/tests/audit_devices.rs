//! `flashrack verify` on real block devices (loop devices the test creates):
//! a stick written earlier passes its audit, read back and compared, nothing
//! written; a mounted one is refused by the guard's rules for reading before
//! it is opened, and nothing is recorded or read.

use std::path::Path;

use flashrack_testkit::{require_root, LoopDevice, MountedExt4};

mod common;
use common::{flashrack, text};

fn path_text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_mounted_loop_device_is_never_audited_and_a_written_one_passes() {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = dir.path().join("image.img");
    std::fs::write(&image, flashrack_testkit::image_bytes(1 << 20, 11, 1 << 16)).unwrap();
    let device = LoopDevice::new(8 << 20);
    let dev = path_text(device.path());
    // `verify` of the image on the loop device, with `flags`.
    let verify = |flags: &[&str]| {
        let mut args = vec!["verify", path_text(&image), dev, "--allow-bus", "loop"];
        args.extend_from_slice(flags);
        flashrack(&data, &args)
    };

    // Written by a flash, then audited: a pass that says it wrote nothing.
    let out = flashrack(
        &data,
        &["flash", path_text(&image), dev, "--allow-bus", "loop", "-q"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = verify(&["--json", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["targets"][0]["proof"], "audit pass", "{summary}");
    assert_eq!(summary["targets"][0]["verify_method"], "audit", "{summary}");
    // Two runs so far: the flash and the audit.
    assert!(run_exists(&data, 2) && !run_exists(&data, 3));

    // Mounted: refused before it is opened, with the reason, nothing recorded.
    let mounted = MountedExt4::new(&device);
    let out = verify(&["-q"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(dev), "names the device: {stderr}");
    assert!(stderr.contains("mounted"), "says why: {stderr}");
    assert!(!run_exists(&data, 3), "a refused audit records no run");
    drop(mounted);
}

/// Whether the records hold run `id`.
fn run_exists(data: &Path, id: u32) -> bool {
    let id = id.to_string();
    flashrack(data, &["report", "run", &id, "--format", "json"])
        .status
        .success()
}
