//! A flood of idle connections on a station short of file descriptors: the
//! health check still answers and a stick still passes. In a test binary of
//! its own, because it lowers the process's open-files limit.

mod common;

use std::time::Duration;

use common::*;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_station::PortState;
use flashrack_web::WebLimits;
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(60);

/// Open descriptors of this process now.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_neither_silences_the_station_nor_fails_a_stick() {
    let served = Served::start(WebLimits {
        max_connections: 32,
        // Long: what saves the station here is the bound, not the time-out.
        header_timeout: Duration::from_secs(600),
        ..WebLimits::default()
    })
    .await;
    // A station with few descriptors to spare: the flood's own sockets (this
    // test is the client too) and 32 served connections fit; a server that
    // took every connection it was offered would run out (the field report:
    // 1,124 idle connections against the default 1,024).
    let flood = 300;
    let limit = open_descriptors() + flood + 32 + 100;
    let mut rlimit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rlimit.current = Some(limit);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, rlimit).unwrap();

    let mut idle = Vec::new();
    for _ in 0..flood {
        idle.push(TcpStream::connect(served.address).await.unwrap());
    }

    let (status, body) = tokio::time::timeout(PATIENCE, get(served.address, "/api/v1/health"))
        .await
        .expect("/health answers during the flood");
    assert_eq!(status, 200, "{body}");
    let (status, body) = tokio::time::timeout(
        PATIENCE,
        post_json(
            served.address,
            "/api/v1/runs",
            &format!("{{\"image\":\"{}\"}}", served.image_sha),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");

    // A healthy stick plugged now is written, read back and passes: opening
    // it found a descriptor.
    served
        .control
        .plug("p1", "SER-HEALTHY", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    let mut watch = served.station.watch();
    let port = tokio::time::timeout(PATIENCE, async {
        loop {
            let port = watch.borrow_and_update().ports[0].clone();
            if matches!(port.state, PortState::Passed | PortState::Failed) {
                return port;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("the stick gets a verdict");
    assert_eq!(port.state, PortState::Passed, "{:?}", port.verdict);
    assert!(open_descriptors() < limit);
    drop(idle);
}
