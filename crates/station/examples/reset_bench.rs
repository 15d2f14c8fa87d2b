//! What the reset before the read-back adds per stick, on the simulated rack
//! through the whole station (the stick leaves and comes back under a new name
//! and is recognised), with realistic speeds: 20 MB/s write, 40 MB/s read.
//!
//! ```sh
//! cargo run --release -p flashrack-station --example reset_bench -- [STICKS] [IMAGE_MIB] [ROUNDS]
//! ```
//!
//! Runs, side by side and interleaved, `ROUNDS` rounds of `STICKS` sticks
//! (default 4 sticks, 32 MiB, 3 rounds) without and with the reset, and prints
//! each stick's time from its start to its verdict and the difference of the
//! means. A benchmark, not a test: nothing here fails on a figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashrack_engine::{EngineOptions, SourceImage};
use flashrack_guard::GuardPolicy;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_simrack::sim_hotplug::sim_rack;
use flashrack_station::{
    ArmRequest, MemoryJournal, PortSpec, PortState, RunOptions, Station, StationSettings,
};

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;

/// One round: `sticks` sticks plugged at once; each stick's seconds from
/// `preparing` to its verdict, and whether its read-back followed a reset.
async fn round(sticks: usize, image_mib: u64, reset: bool) -> Vec<(f64, bool)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bytes = flashrack_testkit::image_bytes((image_mib * MIB) as usize, 11, 1 << 20);
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir.path(), &bytes, 4 << 20);
    let image = SourceImage::cached(path, manifest);
    let (source, control, access) = sim_rack(dir.path().join("rack"));
    let settings = StationSettings {
        station_id: "bench".into(),
        ports: (1..=sticks)
            .map(|n| PortSpec {
                label: format!("A{n}"),
                path: format!("bench-{n}"),
                position: None,
            })
            .collect(),
        policy: GuardPolicy::default(),
        engine: EngineOptions {
            reset_before_verify: reset,
            stall_timeout: Duration::from_secs(600),
            progress_interval: Duration::from_millis(100),
            ..EngineOptions::default()
        },
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
        heartbeat: Duration::from_secs(2),
    };
    let journal = Arc::new(MemoryJournal::default());
    let (station, handle) = Station::new(settings, Arc::new(access), journal);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    handle
        .arm(ArmRequest {
            image,
            image_name: "bench.img".into(),
            options: RunOptions::default(),
            sparse: None,
        })
        .await
        .expect("armed");
    let mut watch = handle.watch();
    for n in 1..=sticks {
        let spec = SimStickSpec::new("", 4 * image_mib * MIB)
            .write_speed(20 * MB)
            .read_speed(40 * MB);
        control
            .plug(&format!("bench-{n}"), &format!("BENCH-{n}"), spec)
            .expect("plugged");
    }
    let mut started: Vec<Option<Instant>> = vec![None; sticks];
    let mut finished: Vec<Option<(f64, bool)>> = vec![None; sticks];
    while finished.iter().any(Option::is_none) {
        {
            let snapshot = watch.borrow_and_update();
            for (i, port) in snapshot.ports.iter().enumerate() {
                if started[i].is_none() && port.state.is_busy() {
                    started[i] = Some(Instant::now());
                }
                if finished[i].is_none()
                    && matches!(port.state, PortState::Passed | PortState::Failed)
                {
                    let secs = started[i].map_or(0.0, |t| t.elapsed().as_secs_f64());
                    let after_reset = port
                        .figures
                        .as_ref()
                        .is_some_and(|f| f.verified_after_reset);
                    assert_eq!(port.state, PortState::Passed, "{port:?}");
                    finished[i] = Some((secs, after_reset));
                }
            }
        }
        if finished.iter().all(Option::is_some) {
            break;
        }
        // A bound on a hang, never a synchronization: a round that shows no
        // change for a minute is stuck, and says where.
        if tokio::time::timeout(Duration::from_secs(60), watch.changed())
            .await
            .is_err()
        {
            panic!("no change for 60 s: {:#?}", handle.snapshot().ports);
        }
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    finished.into_iter().flatten().collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sticks: usize = args.next().map_or(4, |a| a.parse().expect("STICKS"));
    let image_mib: u64 = args.next().map_or(32, |a| a.parse().expect("IMAGE_MIB"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    println!(
        "{sticks} sticks, {image_mib} MiB image, 20 MB/s write, 40 MB/s read, {rounds} rounds each way"
    );
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        for reset in [false, true] {
            let times = round(sticks, image_mib, reset).await;
            assert!(times.iter().all(|&(_, after)| after == reset));
            let secs: Vec<f64> = times.iter().map(|&(s, _)| s).collect();
            println!(
                "round {r} {:>13}: per stick {}",
                if reset { "with reset" } else { "without reset" },
                secs.iter()
                    .map(|s| format!("{s:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if reset {
                with.extend(secs);
            } else {
                without.extend(secs);
            }
        }
    }
    let (a, b) = (mean(&without), mean(&with));
    println!(
        "mean per stick: {a:.3} s without, {b:.3} s with the reset: {:+.3} s ({:+.1} %)",
        b - a,
        (b - a) * 100.0 / a
    );
}
