//! A station out of file descriptors: opening a stick fails with `EMFILE`,
//! and that is the station's error, never the stick's. A test binary of its
//! own, because it lowers the process's open-files limit and uses it up.

use std::fs::File;
use std::sync::Arc;

use flashrack_devices::block::PathTarget;
use flashrack_devices::sim::{SimStick, SimStickSpec};
use flashrack_devices::{Target, TargetError};
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
    flashrack_testkit::require_root(&["losetup"]);
    let dir = tempfile::tempdir().unwrap();
    let file = PathTarget::file(dir.path().join("target.img"), MIB);
    let stick = SimStick::create(
        SimStickSpec::new("s", 4 * MIB),
        dir.path().join("stick.img"),
    )
    .unwrap();
    let disk = flashrack_testkit::LoopDevice::new(4 * MIB);
    let block = PathTarget::block_device(disk.path(), Arc::new(|_: &std::path::Path| Ok(())));

    {
        let _exhausted = Exhausted::now();
        assert_station(file.open_writer(), "file writer");
        assert_station(stick.open_writer(), "sim writer");
        assert_station(stick.open_reader(), "sim reader");
        assert_station(block.geometry(), "block geometry");
        assert_station(block.open_writer(), "block writer");
    }

    // With descriptors back, the same targets open.
    file.open_writer().unwrap();
    stick.open_writer().unwrap();
    block.open_writer().unwrap();
}
