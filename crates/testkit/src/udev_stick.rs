//! Loop devices dressed up by udev as USB sticks, for tests of the real hotplug
//! path (the udev monitor, and the station over it).
//!
//! How a test stick is made (see [`TestStick`]):
//! - a loop device node at a high index (4200 and up, so that no `losetup --find`
//!   of another process picks it first) is created through `/dev/loop-control`
//!   (`LOOP_CTL_ADD`), which gives a real udev `add` event of an empty disk;
//! - a rule in `/run/udev/rules.d/` gives that one device the properties a USB
//!   stick has (`ID_BUS=usb`, `ID_PATH`, `ID_SERIAL_SHORT`, `ID_VENDOR`,
//!   `ID_MODEL`); loop devices have none of their own;
//! - *plugging* it attaches a backing file (`losetup`), a `change` event from size
//!   0 to N; *pulling* it detaches the file (size N → 0). The kernel defers the
//!   detach of a loop device that is open until it is closed, so a stick cannot be
//!   pulled in the middle of a write here (the simulated rack and the VM suite
//!   cover that);
//! - a `Drop` guard detaches it, deletes the node (`LOOP_CTL_REMOVE`) and the rule,
//!   also when a test panics.
//!
//! Other processes attach loop devices too, so sources in tests should be filtered
//! to the test's own devices, and test processes using these sticks take turns (a
//! lock file in `/run`).
#![allow(missing_docs)]

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use rustix::ioctl::{IntegerSetter, Opcode};

use crate::{assert_root, run};

/// Size of a test stick's backing file (sparse).
pub const STICK_SIZE: u64 = 8 * 1024 * 1024;
/// How long a test waits for an event that must come.
pub const WAIT: Duration = Duration::from_secs(10);
/// Where the test's udev rules go (runtime rules, gone at reboot).
const RULES_DIR: &str = "/run/udev/rules.d";
/// `LOOP_CTL_ADD` from `<linux/loop.h>`: creates `/dev/loopN` for a given N.
const LOOP_CTL_ADD: Opcode = 0x4C80;
/// `LOOP_CTL_REMOVE` from `<linux/loop.h>`: deletes an unbound `/dev/loopN`.
const LOOP_CTL_REMOVE: Opcode = 0x4C81;

/// Makes sure `systemd-udevd` runs, starting it (once per test process) if not.
///
/// A stopped udevd leaves `/run/udev/control` behind, and libudev takes the file for
/// a running udevd: the process is what counts, and a stale socket is removed
/// before starting a new one. A fresh udevd has processed nothing, so every block
/// device is replayed (`trigger`) and the queue awaited (`settle`).
pub fn ensure_udevd() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        assert_root(&["losetup", "udevadm"]);
        lock_out_other_test_processes();
        if !udevd_running() {
            let _ = fs::remove_file("/run/udev/control");
            let status = Command::new("/lib/systemd/systemd-udevd")
                .arg("--daemon")
                .status()
                .expect("cannot start /lib/systemd/systemd-udevd (install Debian's `udev`)");
            assert!(status.success(), "systemd-udevd --daemon failed: {status}");
            let deadline = Instant::now() + WAIT;
            while !Path::new("/run/udev/control").exists() {
                assert!(Instant::now() < deadline, "systemd-udevd did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            run(
                "udevadm",
                &["trigger", "--action=add", "--subsystem-match=block"],
            );
            settle();
        }
        fs::create_dir_all(RULES_DIR).expect("cannot create the udev rules directory");
    });
}

/// Makes this test process the only one of its kind until it exits: two processes
/// running these tests at once could pick the same loop index one after the
/// other (a device one deleted, the other creates), and a source of the first would
/// see the second's stick.
fn lock_out_other_test_processes() {
    static LOCK: OnceLock<fs::File> = OnceLock::new();
    LOCK.get_or_init(|| {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/flashrack-udev-hotplug-tests.lock")
            .expect("cannot open the lock file");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .expect("cannot lock the lock file");
        file
    });
}

/// Whether a `systemd-udevd` process exists (what `pgrep -x systemd-udevd` checks).
fn udevd_running() -> bool {
    fs::read_dir("/proc")
        .expect("cannot list /proc")
        .flatten()
        .any(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "systemd-udevd")
        })
}

/// Waits until udevd has processed every queued event. Best effort: other
/// processes may keep udevd busy, and what the tests check is the events.
pub fn settle() {
    let _ = Command::new("udevadm")
        .args(["settle", "--timeout=5"])
        .output();
}

/// Makes udevd read the rules again. Tests run side by side and udevd answers a
/// burst of requests with `EAGAIN`, so requests are serialized and retried.
fn reload_rules() -> Result<(), String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _ in 0..40 {
        let output = Command::new("udevadm")
            .args(["control", "--reload"])
            .output()
            .map_err(|e| format!("cannot run udevadm: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("udevadm control --reload keeps failing: {last}"))
}

/// Creates (`LOOP_CTL_ADD`) or deletes (`LOOP_CTL_REMOVE`) loop device `index`.
#[allow(unsafe_code)]
fn loop_control<const OPCODE: Opcode>(index: u32) -> rustix::io::Result<()> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .expect("cannot open /dev/loop-control");
    // SAFETY: both opcodes take the device index as a plain integer argument (no
    // pointer), and the index is a small non-negative number as the kernel expects.
    unsafe { rustix::ioctl::ioctl(&control, IntegerSetter::<OPCODE>::new_usize(index as usize)) }
}

/// The next loop index to try: starts at a per-process spot in 4200..4900 so that
/// test processes running side by side rarely collide (collisions are retried).
fn next_index() -> u32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        AtomicU32::new(4200 + (std::process::id().wrapping_mul(31) ^ nanos) % 700)
    })
    .fetch_add(1, Ordering::Relaxed)
}

/// The udev rule that dresses loop device `name` as a USB stick in `port_path`
/// with `serial`.
fn rule(name: &str, port_path: &str, serial: &str) -> String {
    format!(
        "SUBSYSTEM==\"block\", KERNEL==\"{name}\", ENV{{ID_BUS}}=\"usb\", \
         ENV{{ID_PATH}}=\"{port_path}\", ENV{{ID_SERIAL_SHORT}}=\"{serial}\", \
         ENV{{ID_VENDOR}}=\"Flashrack\", ENV{{ID_MODEL}}=\"Test_Stick\"\n"
    )
}

/// Writes the rule file `path` whole, then renames it into place.
///
/// udevd reloads its rules only when a rules directory's modification time
/// is newer than at its last load. Written in place, a rule file is created
/// (the directory's time moves) before its text is written (it does not): a
/// reload asked by another test in between loaded the file empty, and this
/// one's own reload then changed nothing, so udev handled the stick's events
/// undressed (seen once in CI: four_sticks_plugged_in_at_once_are_all_added
/// got its marker as a bare loop device). The rename moves the directory's
/// time after the text is complete; the temporary name does not end in
/// `.rules`, so udev never reads it.
fn write_rule(path: &Path, text: &str) {
    let partial = path.with_extension("rules.partial");
    fs::write(&partial, text).expect("cannot write the udev rule");
    fs::rename(&partial, path).expect("cannot put the udev rule in place");
}

/// A loop device that udev presents as a USB stick (see the file's docs). Starts
/// empty (unplugged); deleted with its rule on drop.
pub struct TestStick {
    /// The loop index (4200 and up).
    pub index: u32,
    /// The kernel name (`loop4213`).
    pub name: String,
    /// The device node.
    pub dev: PathBuf,
    rules: PathBuf,
    /// The backing file: the stick's medium.
    pub backing: PathBuf,
    /// Holds the backing file; dropped after the device is deleted.
    _dir: tempfile::TempDir,
}

impl TestStick {
    /// The udev `ID_PATH` its rule gives it.
    pub fn port_path(&self) -> String {
        format!("flashrack-test-port-{}", self.index)
    }

    /// The serial its rule gives it.
    pub fn serial(&self) -> String {
        format!("FRTEST{}", self.index)
    }

    /// Creates an unplugged stick (an empty loop device with its udev rule).
    pub fn create() -> Self {
        ensure_udevd();
        let dir = tempfile::tempdir_in("/var/tmp").expect("temporary directory");
        let backing = dir.path().join("stick.img");
        fs::File::create(&backing)
            .and_then(|f| f.set_len(STICK_SIZE))
            .expect("backing file");
        for _ in 0..50 {
            let index = next_index();
            let name = format!("loop{index}");
            if Path::new("/sys/block").join(&name).exists() {
                continue;
            }
            // The rule goes in before the device exists, so that udev never sees the
            // device without its USB dress.
            let rules = Path::new(RULES_DIR).join(format!(
                "99-flashrack-test-{}-{name}.rules",
                std::process::id()
            ));
            write_rule(
                &rules,
                &rule(
                    &name,
                    &format!("flashrack-test-port-{index}"),
                    &format!("FRTEST{index}"),
                ),
            );
            reload_rules().unwrap();
            match loop_control::<LOOP_CTL_ADD>(index) {
                Ok(()) => {
                    return TestStick {
                        index,
                        dev: PathBuf::from("/dev").join(&name),
                        name,
                        rules,
                        backing,
                        _dir: dir,
                    }
                }
                Err(rustix::io::Errno::EXIST) => {
                    let _ = fs::remove_file(&rules);
                }
                Err(e) => panic!("LOOP_CTL_ADD {index} failed: {e}"),
            }
        }
        panic!("no free loop index found from 4200");
    }

    /// Plugs the stick in: attaches the backing file (size 0 → N).
    pub fn plug(&self) {
        self.wait_for_node();
        run(
            "losetup",
            &[self.dev.to_str().unwrap(), self.backing.to_str().unwrap()],
        );
    }

    /// Moves the (unplugged) stick to another port: its rule now gives it
    /// `port_path` as its `ID_PATH`, which its next plug reports.
    pub fn move_to_port(&self, port_path: &str) {
        write_rule(&self.rules, &rule(&self.name, port_path, &self.serial()));
        reload_rules().unwrap();
    }

    /// Pulls the stick out: detaches the backing file (size N → 0).
    pub fn pull(&self) {
        run("losetup", &["-d", self.dev.to_str().unwrap()]);
    }

    /// Hands the stick's kernel name to another stick in another port: pulls this
    /// one, dresses the device as a stick with `serial` in `port_path`, and plugs
    /// `backing` in under the same name (a new disk, with a new `diskseq`). udev
    /// reports it with its new dress from its next event on.
    pub fn replace_with(&self, backing: &Path, port_path: &str, serial: &str) {
        write_rule(&self.rules, &rule(&self.name, port_path, serial));
        reload_rules().unwrap();
        crate::reattach_loop(&self.dev, backing);
    }

    /// Deletes the empty device node, a real udev `remove` event.
    pub fn delete(&self) {
        self.try_delete().expect("LOOP_CTL_REMOVE failed");
    }

    /// Deletes the device node, waiting while udev's probe still holds it open.
    pub fn try_delete(&self) -> rustix::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match loop_control::<LOOP_CTL_REMOVE>(self.index) {
                Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// devtmpfs creates the node right after `LOOP_CTL_ADD`; this covers the gap.
    pub fn wait_for_node(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.dev.exists() {
            assert!(
                Instant::now() < deadline,
                "{} did not appear",
                self.dev.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The kernel's size of the device in 512-byte sectors (0: nothing attached).
    pub fn sectors(&self) -> u64 {
        fs::read_to_string(Path::new("/sys/block").join(&self.name).join("size"))
            .expect("size in sysfs")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for TestStick {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own panic.
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
        let _ = self.try_delete();
        let _ = fs::remove_file(&self.rules);
        let _ = reload_rules();
    }
}
