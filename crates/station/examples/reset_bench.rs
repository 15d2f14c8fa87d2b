//! What the reset before the read-back adds per stick, and what the capacity
//! probe's reset (while the stick prepares) adds on top, on the simulated rack
//! through the whole station (the stick leaves and comes back under a new name
//! and is recognised), with realistic speeds: 20 MB/s write, 40 MB/s read.
//!
//! ```sh
//! cargo run --release -p flashrack-station --example reset_bench -- [STICKS] [IMAGE_MIB] [ROUNDS]
//! ```
//!
//! Runs, side by side and interleaved, `ROUNDS` rounds of `STICKS` sticks
//! (default 4 sticks, 32 MiB, 3 rounds) without a reset, with the reset before
//! the read-back, and with the probe's reset too, and prints each stick's time
//! from its start to its verdict and the differences of the means. A
//! benchmark, not a test: nothing here fails on a figure.

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
async fn round(sticks: usize, image_mib: u64, reset: bool, probe_reset: bool) -> Vec<(f64, bool)> {
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
                master: false,
            })
            .collect(),
        policy: GuardPolicy::default(),
        engine: EngineOptions {
            reset_before_verify: reset,
            probe: flashrack_engine::probe::ProbeOptions {
                defeat_cache: probe_reset,
                ..Default::default()
            },
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
    // Without a reset; with the reset before the read-back; with the
    // capacity probe's reset as well (each stick of 4 × the image claims
    // and stores all of it: one probe round, one reset).
    let modes = [
        ("without reset", false, false),
        ("with reset", true, false),
        ("with probe reset", true, true),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for r in 1..=rounds {
        for (i, &(name, reset, probe_reset)) in modes.iter().enumerate() {
            let done = round(sticks, image_mib, reset, probe_reset).await;
            assert!(done.iter().all(|&(_, after)| after == reset));
            let secs: Vec<f64> = done.iter().map(|&(s, _)| s).collect();
            println!(
                "round {r} {name:>16}: per stick {}",
                secs.iter()
                    .map(|s| format!("{s:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            times[i].extend(secs);
        }
    }
    let (a, b, c) = (mean(&times[0]), mean(&times[1]), mean(&times[2]));
    println!(
        "mean per stick: {a:.3} s without, {b:.3} s with the reset: {:+.3} s ({:+.1} %)",
        b - a,
        (b - a) * 100.0 / a
    );
    println!(
        "mean per stick: {c:.3} s with the probe's reset too: {:+.3} s ({:+.1} %) over the reset alone",
        c - b,
        (c - b) * 100.0 / b
    );
}
