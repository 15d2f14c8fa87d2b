//! The station over the real udev monitor, with loop devices that udev presents as
//! USB sticks (see `flashrack_testkit::udev_stick`). Needs root and a running
//! systemd-udevd (started if missing); fails, never skips, without them.
//!
//! A stick cannot be pulled in the middle of a write here: the kernel defers the
//! detach of an open loop device until it is closed. That case runs on the
//! simulated rack (`sim_station.rs`) and in the VM suite with emulated USB sticks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flashrack_core::Verdict;
use flashrack_devices::guard::GuardPolicy;
use flashrack_devices::udev::{UdevAccess, UdevSource};
use flashrack_engine::{EngineOptions, SourceImage};
use flashrack_station::{
    ArmRequest, MemoryJournal, PortSpec, PortState, RunOptions, Snapshot, Station, StationSettings,
};
use flashrack_testkit::udev_stick::{TestStick, STICK_SIZE};

async fn until(
    handle: &flashrack_station::StationHandle,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut watch = handle.watch();
    let wait = async {
        loop {
            if check(&watch.borrow_and_update()) {
                return watch.borrow().clone();
            }
            watch.changed().await.unwrap();
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(snapshot) => snapshot,
        Err(_) => panic!("timed out waiting for {what}: {:#?}", handle.snapshot()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_station_writes_sticks_that_real_udev_announces_and_does_not_rewrite_a_passed_one() {
    let sticks: Vec<TestStick> = (0..3).map(|_| TestStick::create()).collect();
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes((STICK_SIZE / 2) as usize + 4096, 21, 1 << 18);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 1 << 20);
    let image = SourceImage { path, manifest };

    let names: BTreeSet<String> = sticks.iter().map(|s| s.name.clone()).collect();
    let source = UdevSource::with_filter(move |d| names.contains(&d.kernel_name));
    let mut policy = GuardPolicy::default();
    // Loop devices dressed as USB sticks: sysfs still says "loop".
    policy.allowed_buses.insert("loop".into());
    let labels = ["T1", "T2", "T3"];
    let settings = StationSettings {
        station_id: "udev-test".into(),
        ports: sticks
            .iter()
            .zip(labels)
            .map(|(s, label)| PortSpec {
                label: label.into(),
                path: s.port_path(),
                position: None,
            })
            .collect(),
        policy,
        engine: EngineOptions::default(),
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
    };
    let journal = Arc::new(MemoryJournal::default());
    let (station, handle) = Station::new(settings, Arc::new(UdevAccess::new()), journal.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // A stick present before the station starts is found by the enumeration.
    sticks[0].plug();
    let task = tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    let snap = until(&handle, "T1 detected at start-up", |s| {
        state(s, "T1") == PortState::Detected
    })
    .await;
    let device = snap.ports[0].device.clone().unwrap();
    assert_eq!(device.serial.as_deref(), Some(sticks[0].serial().as_str()));
    assert_eq!(device.vendor.as_deref(), Some("Flashrack"));

    // Armed: the present stick is written; two plugged at once are written too.
    handle
        .arm(ArmRequest {
            image: image.clone(),
            image_name: "udev-test.img".into(),
            options: RunOptions::default(),
        })
        .await
        .unwrap();
    sticks[1].plug();
    sticks[2].plug();
    until(&handle, "all three passed", |s| {
        labels.iter().all(|l| state(s, l) == PortState::Passed)
    })
    .await;
    for stick in &sticks {
        let medium = std::fs::read(&stick.backing).unwrap();
        assert_eq!(
            &medium[..bytes.len()],
            &bytes[..],
            "{} holds the image",
            stick.name
        );
    }

    // Pulled, the port empties; re-inserted, the passed stick is not rewritten.
    sticks[0].pull();
    until(&handle, "T1 empty", |s| state(s, "T1") == PortState::Empty).await;
    std::fs::write(&sticks[0].backing, vec![0u8; STICK_SIZE as usize]).unwrap();
    sticks[0].plug();
    let snap = until(&handle, "T1 shown as passed", |s| {
        state(s, "T1") == PortState::Passed
    })
    .await;
    assert_eq!(snap.ports[0].verdict, Some(Verdict::Pass));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::fs::read(&sticks[0].backing)
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "a stick that passed in this run is not written again"
    );
    let records = journal.records();
    assert_eq!(records.attempts.len(), 3);
    assert!(records
        .attempts
        .iter()
        .all(|a| a.verdict == Some(Verdict::Pass)));

    let _ = stop.send(());
    task.await.unwrap();
}
