//! The web side on a real server on port 0: what a client can and cannot hold
//! (connections, time, the shutdown). Limits are shortened so that the tests
//! take seconds; each measures against them, never sleeps to wait for the
//! server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flashrack_simrack::sim::SimStickSpec;
use flashrack_web::WebLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound on how long a test waits for something that should happen well
/// within it; reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

fn limits() -> WebLimits {
    WebLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_millis(500),
        upload_idle_timeout: Duration::from_secs(3),
        shutdown_grace: Duration::from_secs(20),
    }
}

/// Starts an upload of `total` bytes: the request head, then `first` bytes.
async fn start_upload(served: &Served, total: usize, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    let head = request_head(
        "POST",
        "/api/v1/images/upload?name=slow.img",
        &format!("Content-Length: {total}\r\n"),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_bounded_by_its_pauses_not_by_its_length() {
    let served = Served::start(limits()).await;
    // 8 MiB at about 3 MiB/s: five times the request timeout, each pause far
    // below the idle limit.
    let image = flashrack_testkit::image_bytes(8 * MIB as usize, 21, 64 * 1024);
    let started = Instant::now();
    let mut stream = start_upload(&served, image.len(), &[]).await;
    for piece in image.chunks(64 * 1024) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = tokio::time::timeout(PATIENCE, read_response(&mut stream))
        .await
        .unwrap();
    assert!(started.elapsed() > limits().request_timeout * 4);
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(&flashrack_core::Sha256Digest::of(&image).to_hex()),
        "{body}"
    );
    assert!(served.upload_leftovers().is_empty());

    // Ordinary requests still have the request timeout: they answer at once.
    let (status, health) = get(served.address, "/api/v1/health").await;
    assert_eq!(status, 200);
    // A station in no fleet says so, and the dashboard never asks for
    // /api/v1/fleet (a 404 in the browser's console on every load).
    assert!(health.contains(r#""fleet":false"#), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stops_sending_ends_with_408_and_leaves_nothing() {
    let served = Served::start(limits()).await;
    let image = flashrack_testkit::image_bytes(8 * MIB as usize, 22, 64 * 1024);
    let started = Instant::now();
    let mut stream = start_upload(&served, image.len(), &image[..MIB as usize]).await;
    // ... and nothing more.
    let (status, body) = tokio::time::timeout(PATIENCE, read_response(&mut stream))
        .await
        .unwrap();
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("stalled"), "{body}");
    assert!(started.elapsed() >= limits().upload_idle_timeout);
    assert!(
        served.upload_leftovers().is_empty(),
        "{:?}",
        served.upload_leftovers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_upload_in_flight_at_once_and_removes_its_files() {
    let mut served = Served::start(limits()).await;
    let image = flashrack_testkit::image_bytes(8 * MIB as usize, 23, 64 * 1024);
    let mut stream = start_upload(&served, image.len(), &image[..2 * MIB as usize]).await;
    // The upload is under way once its file holds data.
    let under_way = async {
        loop {
            let growing = served
                .upload_leftovers()
                .iter()
                .any(|p| p.is_file() && p.metadata().is_ok_and(|m| m.len() > 0));
            if growing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, under_way).await.unwrap();

    let asked = Instant::now();
    served.shut_down();
    let (status, body) = tokio::time::timeout(PATIENCE, read_response(&mut stream))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    tokio::time::timeout(PATIENCE, served.server.take().unwrap())
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    // Well within the grace (20 s here, 10 s by default, against systemd's 30):
    // the upload did not hold the shutdown.
    assert!(
        asked.elapsed() < limits().shutdown_grace / 2,
        "{:?}",
        asked.elapsed()
    );
    assert!(
        served.upload_leftovers().is_empty(),
        "{:?}",
        served.upload_leftovers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let served = Served::start(WebLimits {
        header_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut silent = TcpStream::connect(served.address).await.unwrap();
    let mut partial = TcpStream::connect(served.address).await.unwrap();
    partial
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(PATIENCE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server closes the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_make_room_for_real_requests() {
    let served = Served::start(limits()).await;
    // A live event stream: it has sent its request, so it is never pushed out.
    let mut events = TcpStream::connect(served.address).await.unwrap();
    events
        .write_all(
            request_head("GET", "/api/v1/events", "Accept: text/event-stream\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 16384];
    while !seen.contains("event: snapshot") {
        let n = tokio::time::timeout(PATIENCE, events.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }

    // Five times the connection limit in connections that say nothing.
    let mut idle = Vec::new();
    for _ in 0..5 * limits().max_connections {
        idle.push(TcpStream::connect(served.address).await.unwrap());
    }
    let (status, body) = tokio::time::timeout(PATIENCE, get(served.address, "/api/v1/health"))
        .await
        .expect("/health answers during an idle flood");
    assert_eq!(status, 200, "{body}");
    let (status, _) = tokio::time::timeout(
        PATIENCE,
        post_json(
            served.address,
            "/api/v1/runs",
            &format!("{{\"image\":\"{}\"}}", served.image_sha),
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);

    // The event stream is still there and still live.
    served
        .control
        .plug("p2", "SER-FLOOD", SimStickSpec::new("", 8 * MIB))
        .unwrap();
    while !seen.contains("SER-FLOOD") {
        let n = tokio::time::timeout(PATIENCE, events.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the event stream was closed");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(idle);
}

/// The application's side of followed runs, held by the test: its import's
/// pass "begins" only when the test says, and it then answers with the
/// import's refusal.
struct HeldImport {
    release: tokio::sync::Semaphore,
    asked: tokio::sync::Notify,
}

impl flashrack_web::FollowedRuns for HeldImport {
    fn arm(
        &self,
        request: flashrack_web::FollowArm,
    ) -> futures::future::BoxFuture<'_, Result<flashrack_web::Followed, flashrack_web::AppError>>
    {
        Box::pin(async move {
            assert!(matches!(
                request.source,
                flashrack_web::FollowSource::Download(_)
            ));
            self.asked.notify_one();
            let _permit = self.release.acquire().await.unwrap();
            Err(flashrack_web::AppError::unprocessable(
                "the server has no such file",
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arming_a_run_of_an_import_waits_for_its_pass_beyond_the_request_timeout() {
    let held = std::sync::Arc::new(HeldImport {
        release: tokio::sync::Semaphore::new(0),
        asked: tokio::sync::Notify::new(),
    });
    let served = Served::start_with(limits(), Some(held.clone())).await;
    let address = served.address;
    let started = Instant::now();
    let answer = tokio::spawn(async move {
        post_json(
            address,
            "/api/v1/runs",
            r#"{"download": {"url": "http://127.0.0.1:9/os.img"}}"#,
        )
        .await
    });
    tokio::time::timeout(PATIENCE, held.asked.notified())
        .await
        .unwrap();
    // Held for four request timeouts: a download that takes long to begin
    // (a zip archive is read once it is whole) is not cut off as a 408.
    tokio::time::sleep(limits().request_timeout * 4).await;
    held.release.add_permits(1);
    let (status, body) = tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() > limits().request_timeout * 4);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no such file"), "{body}");
    // Reading the runs still has the request timeout's layer; a cached
    // image is armed as before.
    assert_eq!(get(served.address, "/api/v1/runs").await.0, 200);
    let (status, body) = post_json(
        served.address,
        "/api/v1/runs",
        &format!(r#"{{"image": "{}"}}"#, served.image_sha),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}
