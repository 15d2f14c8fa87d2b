//! Test fixtures shared by flashrack's test suites. Never a dependency of the
//! product, only a `dev-dependency`.
//!
//! - [`LoopDevice`]: a loop device over a backing file the test created, detached
//!   when dropped (also when the test panics); [`reattach_loop`] gives its name to
//!   another disk;
//! - [`Tmpfs`]: a small tmpfs the test mounts (a file system that fills up
//!   quickly), unmounted when dropped;
//! - [`require_root`]: the first line of every test that needs root (loop
//!   devices, mounts, udev). Without root the test is reported as not run
//!   (`not run: <test> needs root` on stderr) and returns at once, so a
//!   contributor without root gets every other test from `cargo test`. With
//!   [`REQUIRE_ROOT_TESTS`]`=1`, which `scripts/test` (and so CI) sets, a missing
//!   root fails the test instead: nothing is skipped there. The fixtures that
//!   need root ([`LoopDevice`], [`Tmpfs`], [`udev_stick`]) panic if a test uses them without
//!   asking first;
//! - [`udev_stick::TestStick`]: a loop device that udev presents as a USB stick;
//! - [`pg::PgCluster`]: a throwaway PostgreSQL cluster (the fleet hub's tests);
//! - [`http_files::FileServer`]: an HTTP file server on loopback with ranges,
//!   validators and the ways servers fail (download tests);
//! - [`image_bytes`] / [`image_from_bytes`]: deterministic test images with random
//!   runs and zero holes, with their manifests;
//! - [`iso`]: ISO images built by xorriso (a Windows-like installer that is not
//!   hybrid, a hybrid Linux one), for the tests of image inspection;
//! - [`udf`]: a Windows-like UDF 2.50/2.60 volume with a metadata partition,
//!   written byte by byte (no tool makes one);
//! - [`bmap`]: a sparse image and its block map as `bmaptool create` writes
//!   it, and a map resealed after an edit (tests of block maps);
//! - [`zips`]: zip archives written to a stream, with data descriptors, and
//!   where an archive's last descriptor and its central directory begin, and
//!   a descriptor for given data (to plant in an image);
//! - [`page_cache_bytes`]: how much of a file is in the page cache (`fincore`);
//! - [`tasks::sent`]: a command run as a task once it has reached the
//!   station (commands asked one after the other arrive in that order).
#![deny(missing_docs)]

pub mod bmap;
pub mod http_files;
pub mod iso;
pub mod pg;
pub mod tasks;
pub mod udev_stick;
pub mod udf;
pub mod zips;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashrack_core::{ImageManifest, Sha256Digest};
use rand::{Rng, RngCore, SeedableRng};

/// Runs a command and returns its stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed?)"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The environment variable that turns a test needing root into a failure
/// when it runs without root, instead of a test reported as not run. `scripts/test`
/// sets it to `1`, and so does CI (`.ci/run` runs `scripts/test`).
pub const REQUIRE_ROOT_TESTS: &str = "FLASHRACK_REQUIRE_ROOT_TESTS";

/// Whether this test, which needs root and `tools` on the PATH, can run; its
/// first line is `if !require_root(&[..]) { return; }`.
///
/// - As root: checks the tools (a missing one fails the test) and says `true`.
/// - Without root: says `false` after printing `not run: <test> needs root` on
///   the process's stderr, past the harness's capture, so that `cargo test`
///   shows it (the test returns, and the harness counts it as passed).
/// - Without root and with [`REQUIRE_ROOT_TESTS`] set to anything but `0` or
///   nothing: fails the test, so that a run that must be complete (CI) never
///   skips one silently.
#[must_use = "a test that needs root returns at once when this is false"]
pub fn require_root(tools: &[&str]) -> bool {
    if !is_root() {
        let test = test_name();
        assert!(
            !root_tests_required(),
            "{test} needs root (loop devices, mounts, udev), and {REQUIRE_ROOT_TESTS} \
             says that every such test must run: run the tests as root"
        );
        // Straight to the process's stderr, past the harness's capture of a
        // passing test's `eprintln!`: this line is for whoever runs the tests.
        // One write, so that it is not cut by the harness's own output.
        let line = format!("not run: {test} needs root (loop devices, mounts, udev)\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return false;
    }
    check_tools(tools);
    true
}

/// The running test's name: its thread's, as the test harness names it, or the
/// test binary's (`guard_loop`, without cargo's hash) for a test with its own
/// harness, on the main thread.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|stem| match stem.rsplit_once('-') {
                Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    name.to_string()
                }
                _ => stem,
            })
            .unwrap_or_else(|| "this test".to_string()),
    }
}

/// Whether [`REQUIRE_ROOT_TESTS`] asks for every test needing root to run.
fn root_tests_required() -> bool {
    std::env::var_os(REQUIRE_ROOT_TESTS).is_some_and(|value| !value.is_empty() && value != "0")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Fails the test if one of `tools` is not on the PATH.
fn check_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(found, "this test needs `{tool}` on PATH");
    }
}

/// For fixtures that need root: a test that did not ask [`require_root`] first
/// fails here, with what to do.
fn assert_root(tools: &[&str]) {
    assert!(
        is_root(),
        "this fixture needs root: begin the test with \
         `if !flashrack_testkit::require_root(&[..]) {{ return; }}`"
    );
    check_tools(tools);
}

/// An ext4 file system made on a test's loop device and mounted in a temporary
/// directory: a disk in use, which the guard must refuse. Unmounted on drop
/// (declare it after its [`LoopDevice`], so that it drops first).
pub struct MountedExt4 {
    mount_point: tempfile::TempDir,
}

impl MountedExt4 {
    /// Makes ext4 on `device` (which the test created) and mounts it.
    pub fn new(device: &LoopDevice) -> Self {
        assert_root(&["mkfs.ext4", "mount", "umount"]);
        let device = device.path().to_str().unwrap();
        run("mkfs.ext4", &["-q", device]);
        let mount_point = tempfile::tempdir().expect("temporary directory");
        run("mount", &[device, mount_point.path().to_str().unwrap()]);
        Self { mount_point }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for MountedExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

/// A loop device over a sparse backing file in a temporary directory; detached on
/// drop, and the backing file removed after it.
pub struct LoopDevice {
    path: PathBuf,
    backing: PathBuf,
    /// Holds the backing file; dropped after the device is detached.
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// Attaches a new loop device over a fresh `size`-byte backing file. A size
    /// of zero gives a block device of zero bytes, as a card reader without a
    /// card reports.
    pub fn new(size: u64) -> Self {
        Self::attach(size, false, None)
    }

    /// Attaches a new loop device of `sector_size`-byte logical sectors
    /// (`losetup --sector-size`, e.g. 4096, as some USB disks report) over
    /// a fresh `size`-byte backing file.
    pub fn with_sector_size(size: u64, sector_size: u32) -> Self {
        Self::attach(size, false, Some(sector_size))
    }

    /// Attaches a new read-only loop device (`losetup -r`) over a fresh
    /// `size`-byte backing file: the kernel sets the device's `ro` flag, opens
    /// it for writing and refuses every write with `EPERM`, as it does for a
    /// stick whose write-protect switch is on.
    pub fn new_read_only(size: u64) -> Self {
        Self::attach(size, true, None)
    }

    fn attach(size: u64, read_only: bool, sector_size: Option<u32>) -> Self {
        assert_root(&["losetup"]);
        let dir = tempfile::tempdir_in(scratch_dir()).expect("temporary directory");
        let backing = dir.path().join("backing.img");
        fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .expect("backing file");
        let mut args = vec!["--find", "--show"];
        if read_only {
            args.push("--read-only");
        }
        let sector_size = sector_size.map(|s| s.to_string());
        if let Some(sector_size) = &sector_size {
            args.extend(["--sector-size", sector_size]);
        }
        args.push(backing.to_str().unwrap());
        let out = run("losetup", &args);
        let path = PathBuf::from(out.trim());
        assert!(
            path.to_string_lossy().starts_with("/dev/loop"),
            "losetup printed {out:?}"
        );
        Self {
            path,
            backing,
            _dir: dir,
        }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backing file: the loop device's medium.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Makes the kernel read the backing file's size again (`losetup -c`), as
    /// after the test has truncated or grown it: the device changes size.
    pub fn refresh_capacity(&self) {
        run("losetup", &["-c", self.path.to_str().unwrap()]);
    }

    /// The kernel name, e.g. `loop3`.
    pub fn kernel_name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// Gives the name of loop device `device` to another disk: detaches its backing
/// file and attaches `backing` to the same node, as another stick taking a pulled
/// one's name would. The node keeps its device number; the kernel gives the new
/// disk a new `diskseq`. A detach is deferred while anyone (udev's probe) holds the
/// device, and the attach fails until it is done: it is retried for a while.
pub fn reattach_loop(device: &Path, backing: &Path) {
    run("losetup", &["-d", device.to_str().expect("a UTF-8 path")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let output = Command::new("losetup")
            .arg(device)
            .arg(backing)
            .output()
            .expect("cannot run losetup");
        if output.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cannot attach {} to {}: {}",
            backing.display(),
            device.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own panic.
        // A read-only flag a test set (`blockdev --setro`) outlives the
        // attachment: clear it, or the next loop device under this name, in
        // whatever test or process, would refuse every write.
        let _ = Command::new("blockdev")
            .arg("--setrw")
            .arg(&self.path)
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A tmpfs of a given size mounted on a fresh temporary directory, for tests
/// that need a file system to fill up; unmounted (lazily, so a test that
/// panics with a file open still cleans up) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes.
    pub fn new(size: u64) -> Self {
        assert_root(&["mount", "umount"]);
        let dir = tempfile::tempdir().expect("temporary directory");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "flashrack-test",
                dir.path().to_str().unwrap(),
            ],
        );
        Self { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes available in it now.
    pub fn available(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.dir.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

/// Where backing files go: a disk-backed directory, because `/tmp` may be a
/// tmpfs, and a loop device over a tmpfs file does not exercise a disk.
fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from("/var/tmp");
    if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    }
}

/// Bytes of a test image: `size` bytes of random runs and zero holes (runs of 1
/// to `max_run` bytes, about 60% data), deterministic for `seed`.
pub fn image_bytes(size: usize, seed: u64, max_run: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let run = rng.random_range(1..=max_run.max(1)).min(size - pos);
        if rng.random_bool(0.6) {
            rng.fill_bytes(&mut bytes[pos..pos + run]);
        }
        pos += run;
    }
    bytes
}

/// Stores `bytes` as `image.raw` under `dir` and builds its manifest with chunks
/// of `chunk_size` bytes.
pub fn image_from_bytes(dir: &Path, bytes: &[u8], chunk_size: u32) -> (PathBuf, ImageManifest) {
    let path = dir.join("image.raw");
    fs::write(&path, bytes).expect("write test image");
    let chunks: Vec<&[u8]> = bytes.chunks(chunk_size as usize).collect();
    let manifest = ImageManifest::new(
        Sha256Digest::of(bytes),
        bytes.len() as u64,
        chunk_size,
        chunks.iter().map(|c| Sha256Digest::of(c)).collect(),
        chunks.iter().map(|c| c.iter().all(|&b| b == 0)).collect(),
    )
    .expect("consistent manifest");
    (path, manifest)
}

/// Bytes of `path` resident in the page cache, as `fincore` counts them.
pub fn page_cache_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore runs (util-linux)");
    assert!(out.status.success(), "fincore failed on {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore printed {text:?}"))
}
