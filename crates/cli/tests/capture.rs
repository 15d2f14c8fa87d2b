//! `flashrack image capture` of a master on a loop device the test attaches
//! (root): the command says whether the captured image fits the smallest
//! stick the station's records know, in words and in its JSON.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use flashrack_testkit::{image_bytes, require_root, LoopDevice};

const MIB: u64 = 1 << 20;

fn flashrack(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run flashrack")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn capture(data: &Path, master: &LoopDevice, json: bool) -> Output {
    let mut args = vec![
        "image",
        "capture",
        master.path().to_str().unwrap(),
        "--whole",
        "--allow-bus",
        "loop",
        "--name",
        "master.img",
    ];
    if json {
        args.push("--json");
    }
    let out = flashrack(data, &args);
    assert!(out.status.success(), "capture failed: {}", stderr(&out));
    out
}

#[test]
fn a_capture_says_whether_it_fits_the_smallest_stick_in_the_records() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let master = LoopDevice::new(8 * MIB);
    {
        let mut file = OpenOptions::new().write(true).open(master.path()).unwrap();
        file.write_all(&image_bytes(8 * MIB as usize, 31, 64 * 1024))
            .unwrap();
        file.sync_all().unwrap();
    }

    // No stick recorded yet: nothing to compare with.
    let out = capture(&data, &master, false);
    assert!(
        stderr(&out).contains("no stick in the records yet to compare its size with"),
        "{}",
        stderr(&out)
    );

    // A flash records a 4 MiB and a 16 MiB stick.
    let image = dir.path().join("small.img");
    std::fs::write(&image, image_bytes(MIB as usize, 32, 64 * 1024)).unwrap();
    let out = flashrack(
        &data,
        &[
            "flash",
            image.to_str().unwrap(),
            "sim:small:capacity=4MiB",
            "sim:large:capacity=16MiB",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "flash failed: {}", stderr(&out));

    // The 8 MiB master does not fit the 4 MiB stick, by 4 MiB.
    let out = capture(&data, &master, false);
    assert!(
        stderr(&out).contains(
            "it does NOT fit the smallest stick the records know (4.19 MB (4194304 bytes)): \
             4.19 MB more than it holds"
        ),
        "{}",
        stderr(&out)
    );
    let out = capture(&data, &master, true);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["size"], 8 * MIB);
    assert_eq!(json["smallest_stick"], 4 * MIB);
    assert_eq!(json["fits_smallest_stick"], false);
    assert_eq!(json["already_cached"], true);

    // Captured only up to what fits (a smaller master): it fits.
    let small_master = LoopDevice::new(2 * MIB);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .open(small_master.path())
            .unwrap();
        file.write_all(&image_bytes(2 * MIB as usize, 33, 64 * 1024))
            .unwrap();
        file.sync_all().unwrap();
    }
    let out = capture(&data, &small_master, false);
    assert!(
        stderr(&out)
            .contains("it fits the smallest stick the records know (4.19 MB (4194304 bytes))"),
        "{}",
        stderr(&out)
    );
}
