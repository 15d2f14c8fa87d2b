//! The target guard of a station over real block devices, for loop devices
//! whose backing is itself a block device (root): the station as `serve`
//! builds it (`Application`, SQLite records, the web side on a real port)
//! with the real devices' access (`UdevAccess`) and a hotplug source that
//! reports the loop devices this test attaches over its own loop devices as
//! sticks in its ports. One over a loop device with a mounted file system is
//! refused as `mounted`, naming the device below, in the station's view, its
//! API and the run's report; one over a plain loop device is written (into
//! that device's file) and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use flashrack_app::{Application, Parts};
use flashrack_config::{PortConfig, StationConfig, WebConfig};
use flashrack_core::ByteSize;
use flashrack_hardware::udev::UdevAccess;
use flashrack_hotplug::{
    DeviceIdentity, Hotplug, HotplugError, HotplugSource, PluggedDevice, StopSignal,
};
use flashrack_station::{PortState, Snapshot, StationHandle};
use flashrack_testkit::{require_root, run, LoopDevice, MountedExt4};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A loop device this test attached over a block device of its own;
/// detached on drop (declare it after what it lies on, so that it goes
/// first).
struct Upper(PathBuf);

impl Upper {
    fn over(lower: &LoopDevice) -> Self {
        let out = run(
            "losetup",
            &["--find", "--show", lower.path().to_str().unwrap()],
        );
        let path = PathBuf::from(out.trim());
        assert!(
            path.to_string_lossy().starts_with("/dev/loop"),
            "losetup printed {out:?}"
        );
        Upper(path)
    }

    fn kernel_name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Upper {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A hotplug source that reports what the test sends it.
struct Sent(mpsc::Receiver<Hotplug>);

impl HotplugSource for Sent {
    fn run(
        self: Box<Self>,
        events: tokio::sync::mpsc::UnboundedSender<Hotplug>,
        stop: StopSignal,
    ) -> Result<(), HotplugError> {
        let _ = events.send(Hotplug::Enumerated);
        while !stop.is_stopped() {
            match self.0.recv_timeout(Duration::from_millis(50)) {
                Ok(event) => {
                    if events.send(event).is_err() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }
}

/// The device at `path` as hotplug would report a stick in the port at
/// `port_path`.
fn plugged(path: &Path, port_path: &str, serial: &str) -> PluggedDevice {
    let facts = flashrack_guard::DiskFacts::inspect(path).unwrap();
    PluggedDevice {
        kernel_name: facts.kernel_name.clone(),
        dev_path: path.to_path_buf(),
        port_path: Some(port_path.into()),
        bus: Some("loop".into()),
        identity: DeviceIdentity {
            serial: Some(serial.into()),
            vendor: Some("Test".into()),
            model: Some("Stacked".into()),
            capacity: facts.size_bytes,
        },
        removable: true,
        read_only: false,
        disk: Some(facts.identity()),
    }
}

/// A station with ports A1 and A2 (paths `t-1`, `t-2`), loop devices
/// allowed, and the devices below them (which have no port of their own)
/// judged as devices of unmapped ports are.
fn config(data_dir: &Path) -> StationConfig {
    StationConfig {
        station_id: "loop-station".into(),
        data_dir: data_dir.to_path_buf(),
        allowed_buses: BTreeSet::from(["loop".to_string()]),
        max_size: ByteSize(256_000_000_000),
        allow_unmapped_ports: true,
        stall_timeout_secs: 20,
        reset_before_verify: false,
        usb_reset: flashrack_config::UsbReset::default(),
        ports: (1..=2)
            .map(|n| PortConfig {
                label: format!("A{n}"),
                path: format!("t-{n}"),
                position: Some((0, n - 1)),
                master: false,
            })
            .collect(),
        layout: None,
        web: WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
            public_read: false,
            allowed_hosts: Vec::new(),
            import_dirs: Vec::new(),
            max_connections: flashrack_config::DEFAULT_MAX_CONNECTIONS,
            operators: Vec::new(),
        },
        fleet: None,
    }
}

/// Waits (20 s at most) until the station's snapshot satisfies `check`.
async fn until(handle: &StationHandle, what: &str, check: impl Fn(&Snapshot) -> bool) {
    let mut watch = handle.watch();
    let wait = async {
        while !check(&watch.borrow_and_update()) {
            watch.changed().await.unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}: {:#?}", handle.snapshot());
    }
}

fn state(snapshot: &Snapshot, label: &str) -> PortState {
    snapshot
        .ports
        .iter()
        .find(|p| p.label == label)
        .unwrap()
        .state
}

/// `GET` or `POST` on the station's API: the status and the JSON answer.
async fn call(method: &'static str, url: String, body: Option<Value>) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let request = ureq::request(method, &url).timeout(Duration::from_secs(30));
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {url}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_device_over_a_mounted_device_is_refused_naming_it_and_one_over_a_plain_device_passes(
) {
    if !require_root(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let image_file = dir.path().join("image.img");
    let image = flashrack_testkit::image_bytes(3 << 20, 21, 256 * 1024);
    std::fs::write(&image_file, &image).unwrap();
    let cache = flashrack_app::images::open_cache(&data_dir).unwrap();
    let sha = flashrack_app::images::import(&cache, &image_file, None, ByteSize(1 << 30))
        .unwrap()
        .image
        .sha256()
        .to_hex();
    let (events, received) = mpsc::channel();
    let parts = Parts::new(
        Box::new(Sent(received)),
        Arc::new(UdevAccess::new()),
        &data_dir,
        "127.0.0.1:0".parse().unwrap(),
    );
    let app = Application::build(config(&data_dir), parts).await.unwrap();
    let base = format!("http://{}/api/v1", app.address());
    let station = app.station();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    // Dropped in reverse: each upper device before what it lies on.
    let mounted_lower = LoopDevice::new(32 * MIB);
    let mounted = MountedExt4::new(&mounted_lower);
    let over_mounted = Upper::over(&mounted_lower);
    let plain_lower = LoopDevice::new(32 * MIB);
    let over_plain = Upper::over(&plain_lower);
    let mounted_before = std::fs::read(mounted_lower.backing()).unwrap();

    let (status, run) = call(
        "POST",
        format!("{base}/runs"),
        Some(serde_json::json!({ "image": sha })),
    )
    .await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_u64().unwrap();
    events
        .send(Hotplug::Added(plugged(&over_mounted.0, "t-1", "UPPER-M")))
        .unwrap();
    events
        .send(Hotplug::Added(plugged(&over_plain.0, "t-2", "UPPER-P")))
        .unwrap();
    until(&station, "A1 refused and A2 passed", |s| {
        state(s, "A1") == PortState::Refused && state(s, "A2") == PortState::Passed
    })
    .await;

    // The port over the API: the refusal's code and its sentence, naming
    // the device below.
    let sentence = format!(
        "{} is a loop device over block device {}: {} is mounted at {}",
        over_mounted.kernel_name(),
        mounted_lower.kernel_name(),
        mounted_lower.kernel_name(),
        mounted.path().display()
    );
    let (status, port) = call("GET", format!("{base}/ports/A1"), None).await;
    assert_eq!(status, 200, "{port}");
    assert_eq!(port["state"], "refused", "{port:#}");
    assert_eq!(port["refusal"]["code"], "mounted", "{port:#}");
    assert_eq!(port["refusal"]["message"], sentence.as_str(), "{port:#}");

    // The run's records say the same.
    let (status, report) = call(
        "GET",
        format!("{base}/runs/{run_id}/report?format=json"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let rows = report["attempts"].as_array().unwrap();
    let row = |serial: &str| {
        rows.iter()
            .find(|r| r["serial"] == serial)
            .unwrap_or_else(|| panic!("no row for {serial}: {report:#}"))
            .clone()
    };
    assert_eq!(row("UPPER-M")["verdict"], "refused");
    assert_eq!(row("UPPER-M")["reason_code"], "mounted");
    assert_eq!(row("UPPER-P")["verdict"], "pass");

    // Nothing reached the mounted device; the image reached the plain one's
    // file, through the loop device over it.
    assert_eq!(
        std::fs::read(mounted_lower.backing()).unwrap(),
        mounted_before
    );
    let written = std::fs::read(plain_lower.backing()).unwrap();
    assert_eq!(&written[..image.len()], &image[..]);

    for (label, device) in [("A1", &over_mounted), ("A2", &over_plain)] {
        events
            .send(Hotplug::Removed {
                kernel_name: device.kernel_name(),
            })
            .unwrap();
        until(&station, &format!("{label} empty"), |s| {
            state(s, label) == PortState::Empty
        })
        .await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
