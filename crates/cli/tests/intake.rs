//! What the command line lets in: images that are images, no larger than the
//! largest target, with the digest they have now; a configuration that is a
//! file of reasonable size.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Runs flashrack and waits at most a minute: a command that hangs (on a
/// FIFO) fails the test instead of hanging it.
fn flashrack(data_dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flashrack");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("flashrack {args:?} did not return within a minute");
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn cached_images(data: &Path) -> usize {
    let out = flashrack(data, &["image", "list", "--json"]);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .len()
}

#[test]
fn image_import_refuses_a_fifo_and_devices_at_once_and_says_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fifo = dir.path().join("image.img");
    flashrack_testkit::run("mkfifo", &[fifo.to_str().unwrap()]);
    let cases = [
        (
            fifo.to_str().unwrap(),
            "named pipe (FIFO), not a regular file",
        ),
        ("/dev/zero", "character device, not a regular file"),
        ("/dev/urandom", "character device, not a regular file"),
    ];
    for (path, says) in cases {
        let out = flashrack(&data, &["image", "import", path]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{path}: {}", stderr(&out));
        // As the image of a flash, too.
        let target = dir.path().join("target.img");
        let out = flashrack(&data, &["flash", path, target.to_str().unwrap(), "--quiet"]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{path}: {}", stderr(&out));
        assert!(!target.exists());
    }
    assert_eq!(cached_images(&data), 0);
}

#[test]
fn an_image_larger_than_the_largest_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 48 MiB of a pattern that gzip squeezes to little, against 8 MiB.
    let raw: Vec<u8> = (0..48 << 20).map(|i: usize| (i / 4096) as u8 | 1).collect();
    let mut encoder = flate2_gzip();
    encoder.write_all(&raw).unwrap();
    let bomb = dir.path().join("small.img.gz");
    std::fs::write(&bomb, encoder.finish().unwrap()).unwrap();
    let bomb = bomb.to_str().unwrap();
    let out = flashrack(&data, &["image", "import", bomb, "--max-size", "8MiB"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 8.39 MB (8388608 bytes)"),
        "{}",
        stderr(&out)
    );
    let target = dir.path().join("target.img");
    let out = flashrack(
        &data,
        &[
            "flash",
            bomb,
            target.to_str().unwrap(),
            "--max-size",
            "8MiB",
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("largest target"), "{}", stderr(&out));
    assert_eq!(cached_images(&data), 0);
    // Under the default limit (256 GB) it is an image like any other.
    let out = flashrack(&data, &["image", "import", bomb]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A gzip encoder, through the image crate's own dependency.
fn flate2_gzip() -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
}

/// Waits until the file's last change (ctime) is old enough for the image
/// cache to trust its identity (see the image crate's tests): a wait on the
/// clock, not on another process.
fn settle(path: &Path) {
    loop {
        let meta = std::fs::metadata(path).unwrap();
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let age = SystemTime::now().duration_since(ctime).unwrap_or_default();
        let margin = Duration::from_millis(if meta.ctime_nsec() == 0 { 3200 } else { 150 });
        if age > margin {
            return;
        }
        std::thread::sleep(margin - age);
    }
}

fn flash_json(data: &Path, image: &Path, target: &Path) -> serde_json::Value {
    let out = flashrack(
        data,
        &[
            "flash",
            image.to_str().unwrap(),
            target.to_str().unwrap(),
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_file_rewritten_in_place_with_its_mtime_put_back_is_flashed_as_what_it_holds_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = dir.path().join("image.img");
    let old = flashrack_testkit::image_bytes(3 << 20, 41, 1 << 18);
    let new = flashrack_testkit::image_bytes(3 << 20, 42, 1 << 18);
    std::fs::write(&image, &old).unwrap();
    settle(&image);
    let first = flash_json(&data, &image, &dir.path().join("a.img"));
    let old_sha = flashrack_core::Sha256Digest::of(&old).to_hex();
    assert_eq!(first["image_sha256"], old_sha.as_str());
    // Known now: the next flash would take the shortcut.
    let again = flash_json(&data, &image, &dir.path().join("b.img"));
    assert_eq!(again["image_sha256"], old_sha.as_str());

    // Same path, inode, size; mtime and atime put back with utimensat.
    let before = std::fs::metadata(&image).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.write_all(&new).unwrap();
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(before.modified().unwrap())
            .set_accessed(before.accessed().unwrap()),
    )
    .unwrap();
    drop(file);
    let after = std::fs::metadata(&image).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        )
    );

    let target = dir.path().join("c.img");
    let summary = flash_json(&data, &image, &target);
    let new_sha = flashrack_core::Sha256Digest::of(&new).to_hex();
    assert_eq!(summary["image_sha256"], new_sha.as_str());
    assert_eq!(summary["targets"][0]["read_back_sha256"], new_sha.as_str());
    assert_eq!(&std::fs::read(&target).unwrap()[..new.len()], &new[..]);
}

#[test]
fn serve_refuses_a_configuration_that_is_no_file_or_too_large_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fifo = dir.path().join("station.toml");
    flashrack_testkit::run("mkfifo", &[fifo.to_str().unwrap()]);
    for path in ["/dev/zero", "/dev/urandom", fifo.to_str().unwrap()] {
        let out = flashrack(&data, &["serve", "--config", path]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a regular file"),
            "{path}: {}",
            stderr(&out)
        );
    }
    let big = dir.path().join("big.toml");
    let mut text = String::new();
    while text.len() <= 1 << 20 {
        text.push_str("# a comment line to make the file larger than any configuration\n");
    }
    std::fs::write(&big, text).unwrap();
    let out = flashrack(&data, &["serve", "--config", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("larger than"), "{}", stderr(&out));
}

#[test]
fn flash_refuses_to_write_the_file_its_image_is_read_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    // Referenced in place only once its last change is settled (100 ms).
    loop {
        let meta = std::fs::metadata(&image).unwrap();
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        match SystemTime::now().duration_since(ctime) {
            Ok(age) if age > Duration::from_millis(150) => break,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let path = image.to_str().unwrap();
    let out = flashrack(&data, &["image", "import", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kept in place, not copied"),
        "{}",
        stderr(&out)
    );
    let before = std::fs::metadata(&image).unwrap();
    let out = flashrack(&data, &["flash", path, path, "--quiet"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is the image's own file"),
        "{}",
        stderr(&out)
    );
    // Not touched: still the image.
    let after = std::fs::metadata(&image).unwrap();
    assert_eq!(after.ctime_nsec(), before.ctime_nsec());
    assert_eq!(cached_images(&data), 1);
}
