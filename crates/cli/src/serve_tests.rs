//! The whole station as `serve` wires it (records in SQLite, the web side on a
//! real port), over the simulated rack.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flashrack_config::{PortConfig, StationConfig, WebConfig};
use flashrack_core::ByteSize;
use flashrack_engine::SourceImage;
use flashrack_image::ImportOptions;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_simrack::sim_hotplug::sim_rack;
use flashrack_station::{ArmRequest, PortState, RunOptions, Snapshot, StationHandle};
use serde_json::Value;

use super::{connection_budget, run_station, Parts, Shutdown};

const MIB: u64 = 1 << 20;

async fn http(method: &'static str, url: String) -> String {
    tokio::task::spawn_blocking(move || {
        ureq::request(method, &url)
            .call()
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
            .into_string()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn json(url: String) -> Value {
    serde_json::from_str(&http("GET", url).await).unwrap()
}

async fn until(handle: &StationHandle, what: &str, check: impl Fn(&Snapshot) -> bool) {
    let mut watch = handle.watch();
    let wait = watch.wait_for(|s| check(s));
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

/// The value of a metric line `name{station="…"} value`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_view_metrics_and_records_count_passes_failures_and_interruptions_alike() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let image_file = data_dir.join("test.img");
    std::fs::write(
        &image_file,
        flashrack_testkit::image_bytes(3 * MIB as usize, 5, 256 * 1024),
    )
    .unwrap();
    let image = crate::image_cmd::open_cache(&data_dir)
        .unwrap()
        .import(&image_file, ImportOptions::default())
        .unwrap()
        .image;
    let ports: Vec<PortConfig> = (1..=3)
        .map(|n| PortConfig {
            label: format!("A{n}"),
            path: format!("t-{n}"),
            position: Some((0, n - 1)),
        })
        .collect();
    let config = StationConfig {
        station_id: "counts".into(),
        data_dir: data_dir.clone(),
        allowed_buses: BTreeSet::from(["usb".to_string()]),
        max_size: ByteSize(256_000_000_000),
        allow_unmapped_ports: false,
        stall_timeout_secs: 20,
        ports,
        layout: None,
        web: WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
            public_read: false,
            allowed_hosts: Vec::new(),
            import_dirs: Vec::new(),
            max_connections: flashrack_config::DEFAULT_MAX_CONNECTIONS,
        },
    };
    let (source, rack, access) = sim_rack(data_dir.join("rack"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<(SocketAddr, StationHandle)>();
    let station = tokio::spawn({
        let data_dir = data_dir.clone();
        async move {
            run_station(
                &config,
                &data_dir,
                Parts {
                    source: Box::new(source),
                    access: Arc::new(access),
                },
                true,
                Shutdown::on_signals_or(stop_rx),
                move |address, handle| {
                    let _ = up_tx.send((address, handle));
                },
            )
            .await
        }
    });
    let (address, handle) = up_rx.await.unwrap();
    let base = format!("http://{address}");
    let run = handle
        .arm(ArmRequest {
            image: SourceImage {
                path: image.path.clone(),
                manifest: image.manifest.clone(),
            },
            image_name: "test.img".into(),
            options: RunOptions::default(),
        })
        .await
        .unwrap();

    // A pass, a failure, and an attempt the operator's stop interrupts (held
    // in the middle of its write until then).
    let healthy = || SimStickSpec::new("", 16 * MIB);
    rack.plug("t-1", "GOOD", healthy()).unwrap();
    rack.plug("t-2", "BAD", healthy().write_error_after(256 * 1024))
        .unwrap();
    rack.plug("t-3", "SLOW", healthy().stall_after_written(MIB))
        .unwrap();
    until(&handle, "a pass, a failure and a write", |s| {
        state(s, "A1") == PortState::Passed
            && state(s, "A2") == PortState::Failed
            && state(s, "A3") == PortState::Writing
    })
    .await;
    http("POST", format!("{base}/api/v1/runs/current/stop")).await;
    // Told to stop, the stick let go stops at its next safe point.
    rack.stick_at("t-3").unwrap().1.release();
    until(&handle, "the stop settled", |s| {
        state(s, "A3") == PortState::Failed && s.run.as_ref().is_some_and(|r| r.active == 0)
    })
    .await;

    let expected = (1, 1, 1);
    let view = json(format!("{base}/api/v1/runs/current")).await;
    let counts = |v: &Value| {
        (
            v["passed"].as_u64().unwrap(),
            v["failed"].as_u64().unwrap(),
            v["interrupted"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts(&view), expected, "run view: {view}");
    let metrics = http("GET", format!("{base}/metrics")).await;
    assert_eq!(
        (
            metric(&metrics, "flashrack_run_passed"),
            metric(&metrics, "flashrack_run_failed"),
            metric(&metrics, "flashrack_run_interrupted"),
        ),
        expected,
        "metrics:\n{metrics}"
    );
    let listed = json(format!("{base}/api/v1/runs")).await;
    let listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.id.0)
        .unwrap()
        .clone();
    assert_eq!(counts(&listed), expected, "runs list: {listed}");
    let report = json(format!("{base}/api/v1/runs/{}/report?format=json", run.id)).await;
    assert_eq!(counts(&report["run"]), expected, "report: {report}");
    let verdicts: Vec<&str> = report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["verdict"].as_str().unwrap())
        .collect();
    let count = |v: &str| verdicts.iter().filter(|x| **x == v).count() as u64;
    assert_eq!(
        (count("pass"), count("fail"), count("interrupted")),
        expected,
        "report rows: {verdicts:?}"
    );

    stop_tx.send(true).unwrap();
    station.await.unwrap().unwrap();
}

#[test]
fn connections_leave_the_reserved_descriptors_to_the_sticks() {
    assert_eq!(connection_budget(256, 524_288), 256);
    assert_eq!(connection_budget(256, 1024), 256);
    assert_eq!(connection_budget(1000, 1024), 1024 - 512);
    assert_eq!(connection_budget(256, 600), 88);
    assert_eq!(connection_budget(256, 100), 8);
    assert_eq!(connection_budget(256, u64::MAX), 256);
}
