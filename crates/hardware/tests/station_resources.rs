//! A station out of file descriptors: opening a stick fails with `EMFILE`,
//! and that is the station's error, never the stick's (simulated sticks
//! classify with the same `flashrack_target::is_station_resource_error`). A test binary of its
//! own, because it lowers the process's open-files limit and uses it up.

use std::fs::File;
use std::sync::Arc;

use flashrack_guard::DiskFacts;
use flashrack_hardware::block::PathTarget;
use flashrack_target::{Target, TargetError};
use rustix::process::{getrlimit, setrlimit, Resource};

const MIB: u64 = 1 << 20;

/// Uses up every descriptor the open-files limit allows (lowered to a little
/// above what is open now); gives them back when dropped.
struct Exhausted {
    held: Vec<File>,
    old: rustix::process::Rlimit,
}

impl Exhausted {
    fn now() -> Self {
        let old = getrlimit(Resource::Nofile);
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let mut low = old;
        low.current = Some(open + 16);
        setrlimit(Resource::Nofile, low).unwrap();
        let mut held = Vec::new();
        loop {
            match File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(error) => {
                    assert_eq!(
                        error.raw_os_error(),
                        Some(rustix::io::Errno::MFILE.raw_os_error()),
                        "{error}"
                    );
                    break;
                }
            }
        }
        Self { held, old }
    }
}

impl Exhausted {
    /// Gives one descriptor back: the next open succeeds, the one after fails.
    fn spare_one(&mut self) {
        self.held.pop();
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        self.held.clear();
        let _ = setrlimit(Resource::Nofile, self.old);
    }
}

fn assert_station(result: Result<impl Sized, TargetError>, what: &str) {
    match result {
        Err(TargetError::Station(detail)) => {
            assert!(detail.contains("Too many open files"), "{what}: {detail}")
        }
        Err(other) => panic!("{what}: the station's shortage became {other:?}"),
        Ok(_) => panic!("{what}: opened with no descriptor left"),
    }
}

#[test]
fn opening_a_stick_without_a_descriptor_left_is_the_stations_error() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = PathTarget::file(dir.path().join("target.img"), MIB);
    let disk = flashrack_testkit::LoopDevice::new(4 * MIB);
    let block = PathTarget::block_device(disk.path(), Arc::new(|_: &DiskFacts| Ok(())));

    {
        let _exhausted = Exhausted::now();
        assert_station(file.open_writer(), "file writer");
        assert_station(block.geometry(), "block geometry");
        assert_station(block.open_writer(), "block writer");
    }
    {
        // The device opens (with the last descriptor); the guard cannot read
        // what it needs to judge it. Refused? No: the station's error, and
        // still nothing written.
        let mut exhausted = Exhausted::now();
        exhausted.spare_one();
        assert_station(block.open_writer(), "block writer, guard facts");
    }

    // With descriptors back, the same targets open.
    file.open_writer().unwrap();
    block.open_writer().unwrap();
}
