//! A station over the simulated rack with its web side on a real server on
//! port 0, for the tests that need real connections.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flashrack_engine::EngineOptions;
use flashrack_guard::GuardPolicy;
use flashrack_image::{ImageCache, ImportOptions};
use flashrack_simrack::sim_hotplug::{sim_rack, SimRackControl};
use flashrack_station::{MemoryJournal, PortSpec, Station, StationHandle, StationSettings};
use flashrack_web::{AccessPolicy, WebLimits, WebState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MIB: u64 = 1 << 20;

/// A station with two ports (`p1`, `p2` labelled A1, A2), an image in its cache,
/// and its web side served on 127.0.0.1 with `limits`.
pub struct Served {
    pub address: SocketAddr,
    pub station: StationHandle,
    pub control: SimRackControl,
    pub image_sha: String,
    pub dir: tempfile::TempDir,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    stop_station: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A station with two ports (`p1`, `p2` labelled A1, A2) over the simulated
/// rack, with no records, and an image cache holding the test image (2 MiB,
/// written to `image_file` and imported from there).
pub struct TestStation {
    pub images: ImageCache,
    pub image_sha: String,
    pub station: StationHandle,
    pub control: SimRackControl,
    /// The station's records, in memory (its hooks hold or refuse writes).
    pub journal: Arc<MemoryJournal>,
    /// Stops the station when sent or dropped.
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a [`TestStation`] in `dir` (its cache and rack go there). Must be
/// called within a tokio runtime.
pub fn start_station(dir: &Path, image_file: &Path) -> TestStation {
    let images = ImageCache::open(dir.join("cache")).unwrap();
    let bytes = flashrack_testkit::image_bytes(2 * MIB as usize, 3, 256 * 1024);
    std::fs::write(image_file, &bytes).unwrap();
    let image = images
        .import(image_file, ImportOptions::default())
        .unwrap()
        .image;
    let (source, control, access) = sim_rack(dir.join("rack"));
    let settings = StationSettings {
        station_id: "web-test".into(),
        ports: (1..=2)
            .map(|n| PortSpec {
                label: format!("A{n}"),
                path: format!("p{n}"),
                position: Some((0, n - 1)),
                master: false,
            })
            .collect(),
        policy: GuardPolicy::default(),
        engine: EngineOptions::default(),
        shutdown_grace: Duration::from_secs(5),
        removal_grace: Duration::from_millis(300),
        heartbeat: Duration::from_secs(2),
    };
    let journal = Arc::new(MemoryJournal::default());
    let (station, handle) = Station::new(settings, Arc::new(access), journal.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(station.run_until_stopped(Box::new(source), async {
        let _ = stop_rx.await;
    }));
    TestStation {
        images,
        image_sha: image.sha256().to_hex(),
        station: handle,
        control,
        journal,
        stop,
    }
}

impl Served {
    pub async fn start(limits: WebLimits) -> Self {
        Self::start_with(limits, None).await
    }

    /// [`Served::start`] with runs of images not cached yet done by
    /// `followed_runs`.
    pub async fn start_with(
        limits: WebLimits,
        followed_runs: Option<Arc<dyn flashrack_web::FollowedRuns>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let TestStation {
            images,
            image_sha,
            station: handle,
            control,
            stop: stop_station,
            ..
        } = start_station(dir.path(), &dir.path().join("test.img"));
        let state = WebState {
            station: handle.clone(),
            images,
            reports: None,
            access: AccessPolicy::default(),
            upload_dir: dir.path().join("uploads"),
            max_upload_bytes: 64 * MIB,
            max_image_bytes: 64 * MIB,
            import_dirs: Vec::new(),
            limits,
            shutting_down: None,
            events: Default::default(),
            fleet: None,
            url_imports: None,
            captures: None,
            builds: None,
            followed_runs,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_server, server_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(flashrack_web::serve(listener, state, async {
            let _ = server_rx.await;
        }));
        Self {
            address,
            station: handle,
            control,
            image_sha,
            dir,
            server: Some(server),
            stop_server: Some(stop_server),
            stop_station: Some(stop_station),
        }
    }

    /// Asks the server to shut down (as SIGTERM does).
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }

    /// Files left in the upload area.
    pub fn upload_leftovers(&self) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.path().join("uploads")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path.clone());
                }
                found.push(path);
            }
        }
        found
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(stop) = self.stop_station.take() {
            let _ = stop.send(());
        }
    }
}

/// The head of an HTTP/1.1 request to the station, with `Connection: close`.
pub fn request_head(method: &str, uri: &str, extra: &str) -> String {
    format!("{method} {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n")
}

/// Reads a whole response (the server closes after it) and returns its status
/// and body.
pub async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET uri` on a fresh connection.
pub async fn get(address: SocketAddr, uri: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(request_head("GET", uri, "").as_bytes())
        .await
        .unwrap();
    read_response(&mut stream).await
}

/// `POST uri` with a JSON body on a fresh connection.
pub async fn post_json(address: SocketAddr, uri: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = request_head(
        "POST",
        uri,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}
