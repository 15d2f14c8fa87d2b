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

/// `image capture MASTER --whole --allow-bus loop --name NAME`.
fn capture_args<'a>(master: &'a LoopDevice, name: &'a str) -> Vec<&'a str> {
    vec![
        "image",
        "capture",
        master.path().to_str().unwrap(),
        "--whole",
        "--allow-bus",
        "loop",
        "--name",
        name,
    ]
}

fn capture(data: &Path, master: &LoopDevice, json: bool) -> Output {
    let mut args = capture_args(master, "master.img");
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
    // The same bytes asked for under another name: said to keep the first,
    // and found by the second (it was "no cached image matches").
    let out = flashrack(&data, &capture_args(&master, "golden-v4.img"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the same bytes were cached already, as master.img: the image keeps that name, \
             and is known as golden-v4.img too"
        ),
        "{}",
        stderr(&out)
    );
    let out = flashrack(&data, &["image", "show", "golden-v4.img", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["name"], "master.img");
    assert_eq!(shown["also_known_as"], serde_json::json!(["golden-v4.img"]));

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

/// The files in the cache's temporary directory (`<data>/cache/tmp`).
fn cache_tmp(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("cache").join("tmp"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `image capture` of `master` (whole) into `data` and returns once
/// it has begun: its partial file is in the cache. Fails if it never
/// begins, or ends first.
fn capture_begun(data: &Path, master: &LoopDevice) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data)
        .args(capture_args(master, "master.img"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cache_tmp(data).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never began"
        );
        assert!(child.try_wait().unwrap().is_none(), "it ended first");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

/// Ctrl-C (SIGINT) during a capture stops it, says so, exits non-zero and
/// keeps nothing: no image, no partial file. Before, the process died
/// without a word and left its partial file (up to the image's size) in the
/// cache until the next command cleaned it.
#[test]
fn a_capture_interrupted_by_ctrl_c_says_so_and_keeps_nothing() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Sparse: long enough to read that the signal lands mid-capture.
    let master = LoopDevice::new(16 << 30);
    let child = capture_begun(&data, &master);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the capture was cancelled: nothing of it was kept"),
        "{}",
        stderr(&out)
    );
    assert!(cache_tmp(&data).is_empty(), "{:?}", cache_tmp(&data));
    let list = flashrack(&data, &["image", "list", "--json"]);
    let images: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(images, serde_json::json!([]), "{}", stderr(&list));
}

/// A master that shrinks (or is pulled) while it is captured fails the
/// capture with the reason, keeps nothing, and says "cannot capture".
/// Before, it said "cannot import /dev/loopN".
#[test]
fn a_master_that_ends_early_fails_its_capture_and_keeps_nothing() {
    if !require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let master = LoopDevice::new(1 << 30);
    let child = capture_begun(&data, &master);
    // Three quarters of it gone, far ahead of the read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(master.backing())
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    master.refresh_capacity();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot capture {}", master.path().display()))
            && stderr(&out).contains("bytes early"),
        "{}",
        stderr(&out)
    );
    assert!(cache_tmp(&data).is_empty(), "{:?}", cache_tmp(&data));
}
