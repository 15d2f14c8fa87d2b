//! The guard's inspection of a stick (sysfs, `/proc/self/mountinfo`) runs off
//! the station's event loop: while one stick's inspection blocks, the other
//! ports, the operator's commands and the verdicts go on; and an answer that
//! comes back after its stick was pulled starts nothing.
//!
//! The rack is the simulated one; its device access is wrapped so that the
//! facts of one chosen stick (by serial) are held until the test lets them go.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use flashrack_engine::{EngineOptions, SourceImage};
use flashrack_guard::{DiskFacts, GuardCheck, GuardError, GuardPolicy};
use flashrack_hotplug::{DeviceAccess, PluggedDevice};
use flashrack_simrack::sim::SimStickSpec;
use flashrack_simrack::sim_hotplug::{sim_rack, SimAccess, SimRackControl};
use flashrack_station::{
    ArmRequest, MemoryJournal, PortSpec, PortState, RunOptions, Snapshot, Station, StationError,
    StationHandle, StationSettings,
};
use flashrack_target::{Target, TargetError};
use tokio::sync::{mpsc, oneshot};

const MIB: u64 = 1 << 20;

/// Holds the guard's facts of one stick until released.
struct Gate {
    /// The serial whose facts are held.
    serial: String,
    /// Whether the held inspections may go on.
    open: Mutex<bool>,
    opened: Condvar,
    /// Told when a held inspection has begun (it is then blocked).
    entered: mpsc::UnboundedSender<()>,
    /// Told when a held inspection has its facts (its answer is on its way).
    returned: mpsc::UnboundedSender<()>,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Lets held inspections go however the test ends (a failed assertion
/// included): no inspection thread outlives its test.
struct ReleaseOnDrop(Arc<Gate>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The simulated rack's access, with the facts of the gate's stick held.
struct GatedAccess {
    inner: SimAccess,
    gate: Arc<Gate>,
}

impl DeviceAccess for GatedAccess {
    fn facts(&self, device: &PluggedDevice) -> Result<DiskFacts, GuardError> {
        let held = device.identity.serial.as_deref() == Some(self.gate.serial.as_str());
        if held {
            let _ = self.gate.entered.send(());
            let mut open = self.gate.open.lock().unwrap();
            while !*open {
                open = self.gate.opened.wait(open).unwrap();
            }
        }
        let facts = self.inner.facts(device);
        if held {
            let _ = self.gate.returned.send(());
        }
        facts
    }

    fn target(&self, device: &PluggedDevice, guard: GuardCheck) -> Arc<dyn Target> {
        self.inner.target(device, guard)
    }

    fn eject(&self, device: &PluggedDevice) -> Result<(), TargetError> {
        self.inner.eject(device)
    }
}

struct Rig {
    handle: StationHandle,
    control: SimRackControl,
    journal: Arc<MemoryJournal>,
    image: SourceImage,
    gate: ReleaseOnDrop,
    entered: mpsc::UnboundedReceiver<()>,
    returned: mpsc::UnboundedReceiver<()>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn port_path(n: usize) -> String {
    format!("gated-port-{n}")
}

/// A station with `ports` ports whose guard holds the facts of `held_serial`.
fn rig(ports: usize, held_serial: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let bytes = flashrack_testkit::image_bytes(2 * MIB as usize, 11, 256 * 1024);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 256 * 1024);
    let (source, control, access) = sim_rack(dir.path().join("rack"));
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (returned_tx, returned) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        serial: held_serial.into(),
        open: Mutex::new(false),
        opened: Condvar::new(),
        entered: entered_tx,
        returned: returned_tx,
    });
    let journal = Arc::new(MemoryJournal::default());
    let settings = StationSettings {
        station_id: "gated".into(),
        ports: (1..=ports)
            .map(|n| PortSpec {
                label: format!("A{n}"),
                path: port_path(n),
                position: Some((0, n as u32 - 1)),
                master: false,
            })
            .collect(),
        policy: GuardPolicy::default(),
        engine: EngineOptions::default(),
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
        heartbeat: Duration::from_secs(2),
    };
    let access = GatedAccess {
        inner: access,
        gate: gate.clone(),
    };
    let (station, handle) = Station::new(settings, Arc::new(access), journal.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    Rig {
        handle,
        control,
        journal,
        image: SourceImage::cached(path, manifest),
        gate: ReleaseOnDrop(gate),
        entered,
        returned,
        stop: Some(stop_tx),
        task,
        _dir: dir,
    }
}

impl Rig {
    fn plug(&self, port: usize, serial: &str) -> String {
        self.control
            .plug(&port_path(port), serial, SimStickSpec::new("", 16 * MIB))
            .unwrap()
    }

    async fn arm(&self, target_count: Option<u32>) {
        self.handle
            .arm(ArmRequest {
                image: self.image.clone(),
                image_name: "test.img".into(),
                options: RunOptions {
                    target_count,
                    ..RunOptions::default()
                },
                sparse: None,
            })
            .await
            .unwrap();
    }

    /// Waits until the held stick's inspection has begun (and blocks).
    async fn held_inspection_began(&mut self) {
        within("the held inspection to begin", self.entered.recv()).await;
    }

    /// Waits until the snapshot satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let mut watch = self.handle.watch();
        let snapshot = within(what, watch.wait_for(|s| check(s)))
            .await
            .unwrap()
            .clone();
        snapshot
    }

    async fn shutdown(mut self) -> Arc<MemoryJournal> {
        self.gate.0.release();
        let _ = self.stop.take().unwrap().send(());
        within("the station to stop", &mut self.task).await.unwrap();
        self.journal.clone()
    }
}

/// Awaits `future`, failing the test after 20 s: a station whose loop is
/// blocked would never get there.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The ports of the attempts recorded, in the order they were started.
fn started(journal: &MemoryJournal) -> Vec<String> {
    journal
        .records()
        .attempts
        .iter()
        .map(|a| a.start.port_label.clone())
        .collect()
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
async fn the_station_goes_on_while_a_guard_inspection_blocks() {
    let mut rig = rig(3, "HELD");
    rig.arm(None).await;
    // A2 is being written (and will not finish before it is pulled) when the
    // held stick arrives in A1.
    let busy = rig
        .control
        .plug(
            &port_path(2),
            "BUSY",
            SimStickSpec::new("", 16 * MIB).stall_after_written(MIB),
        )
        .unwrap();
    rig.until("A2 writing", |s| state(s, "A2") == PortState::Writing)
        .await;
    rig.plug(1, "HELD");
    rig.held_inspection_began().await;

    // While the held stick's facts are being read: a pull mid-write becomes a
    // verdict (recorded, then shown), a new stick is shown, commands are
    // answered.
    rig.control.pull(&busy).unwrap();
    let snap = rig
        .until("A2 failed as removed", |s| {
            s.ports[1]
                .verdict
                .as_ref()
                .and_then(|v| v.failure())
                .is_some_and(|f| matches!(f.reason, flashrack_core::FailReason::Removed { .. }))
        })
        .await;
    assert_eq!(state(&snap, "A1"), PortState::Detected, "not guarded yet");
    rig.plug(3, "NEXT");
    rig.until("A3 shown", |s| state(s, "A3") == PortState::Detected)
        .await;
    assert!(matches!(
        rig.handle.start_port("Z9").await,
        Err(StationError::UnknownPort(_))
    ));
    assert_eq!(
        started(&rig.journal),
        ["A2"],
        "no attempt before the guard answers"
    );

    // The guard answers: the held stick starts, then the one that came after
    // it, in the order they arrived.
    rig.gate.0.release();
    let snap = rig
        .until("A1 and A3 passed", |s| {
            state(s, "A1") == PortState::Passed && state(s, "A3") == PortState::Passed
        })
        .await;
    assert_eq!(snap.run.unwrap().passed, 2);
    let journal = rig.shutdown().await;
    assert_eq!(started(&journal), ["A2", "A1", "A3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_pulled_while_the_guard_inspects_it_is_never_written_and_holds_up_no_later_stick() {
    let mut rig = rig(2, "HELD");
    // The guard's answers are applied in the order they were asked: the
    // second stick waits for the first one's answer…
    rig.arm(None).await;
    let held = rig.plug(1, "HELD");
    let (_, held_stick) = rig.control.stick_at(&port_path(1)).unwrap();
    rig.held_inspection_began().await;
    rig.plug(2, "NEXT");
    rig.until("A2 detected", |s| state(s, "A2") == PortState::Detected)
        .await;

    // …until that stick is pulled: its answer is no longer awaited, so the
    // next stick goes on, while the first one's inspection is still held.
    rig.control.pull(&held).unwrap();
    let snap = rig
        .until("A2 passed", |s| state(s, "A2") == PortState::Passed)
        .await;
    assert_eq!(state(&snap, "A1"), PortState::Empty);

    // The late answer (the stick was accepted) starts nothing.
    rig.gate.0.release();
    within("the held inspection to return", rig.returned.recv()).await;
    let snap = rig
        .until("A2 passed, A1 empty", |s| {
            state(s, "A2") == PortState::Passed && state(s, "A1") == PortState::Empty
        })
        .await;
    assert_eq!(snap.run.unwrap().active, 0);
    let journal = rig.shutdown().await;
    assert_eq!(started(&journal), ["A2"]);
    assert_eq!(held_stick.counters().bytes_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_target_count_sticks_start_in_the_order_they_arrived_whatever_order_the_guard_answers_in(
) {
    let mut rig = rig(2, "FIRST");
    rig.arm(Some(1)).await;
    rig.plug(1, "FIRST");
    rig.held_inspection_began().await;
    // The second stick's answer comes first; it must not take the first
    // one's place under the count.
    rig.plug(2, "SECOND");
    rig.until("A2 detected", |s| state(s, "A2") == PortState::Detected)
        .await;
    assert!(matches!(
        rig.handle.start_port("Z9").await,
        Err(StationError::UnknownPort(_))
    ));
    rig.gate.0.release();
    let snap = rig
        .until("the run reached its target", |s| {
            s.run.as_ref().is_some_and(|r| !r.armed)
        })
        .await;
    assert_eq!(state(&snap, "A1"), PortState::Passed);
    assert_eq!(state(&snap, "A2"), PortState::Detected, "never written");
    let journal = rig.shutdown().await;
    assert_eq!(started(&journal), ["A1"]);
}
