//! A whole station for tests (feature `testing`): [`spawn_app`] builds the
//! [`Application`] as `serve` does, over the simulated rack, with its records
//! in a real SQLite file in a temporary data directory and its web side on a
//! free port of 127.0.0.1; [`TestApp`] is the address, the rack, the data
//! directory, and plain HTTP calls to the API.
//!
//! Tests wait for the station through its API's event stream
//! ([`TestApp::events`]), not by sleeping.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flashrack_config::{PortConfig, StationConfig, WebConfig};
use flashrack_core::ByteSize;
use flashrack_hotplug::Hotplug;
use flashrack_image::CachedImage;
use flashrack_simrack::sim_hotplug::{sim_rack, SimRackControl};
use flashrack_station::StationHandle;
use serde_json::Value;

use crate::application::{Application, Parts};
use crate::AppError;

/// The image every test station has in its cache: 3 MiB of runs and holes.
pub const IMAGE_SIZE: usize = 3 << 20;

/// A running station for a test. Stop it with [`TestApp::stop`] to see how it
/// ended; dropped, it stops too (the temporary directory goes with it).
pub struct TestApp {
    /// Where its web side listens.
    pub address: SocketAddr,
    /// The simulated rack: plug and pull sticks.
    pub rack: SimRackControl,
    /// The station itself (for what the API does not say).
    pub station: StationHandle,
    /// An image in its cache (`test.img`).
    pub image: CachedImage,
    /// Its data directory (records: `flashrack.db`; the cache: `cache/`).
    pub data_dir: PathBuf,
    /// Hotplug events beside the simulated rack's ([`TestApp::hotplug`]).
    extra: std::sync::mpsc::Sender<Hotplug>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), AppError>>>,
    /// Its configuration, for [`TestApp::restart`].
    config: StationConfig,
    /// How many times it was started (each start gets its own rack).
    starts: u32,
    _dir: tempfile::TempDir,
}

/// Starts a station with ports `A1`, `A2`, `A3` (port paths `t-1`, `t-2`,
/// `t-3`), `test.img` in its cache, records in SQLite and the web side on a
/// free port. Needs a multi-threaded runtime.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`], with the configuration changed by `configure` first (a
/// `[fleet]` section, for instance).
pub async fn spawn_app_with(configure: impl FnOnce(&mut StationConfig)) -> TestApp {
    spawn(configure, (None, None)).await
}

/// [`spawn_app`] whose bootable builds call `hook` as they enter each stage
/// (on the build's thread, once the stage is recorded): a test holds a build
/// in a stage by blocking there.
pub async fn spawn_app_with_build_hook(hook: crate::bootable::StageHook) -> TestApp {
    spawn(|_| {}, (Some(hook), None)).await
}

/// [`spawn_app`] whose bootable builds call `bytes` with each report of
/// their copying and hashing stages' bytes (on the build's thread, once the
/// API shows it): a test holds a build part way through a stage by
/// blocking there.
pub async fn spawn_app_with_build_bytes_hook(bytes: crate::bootable::BytesHook) -> TestApp {
    spawn(|_| {}, (None, Some(bytes))).await
}

/// A station's build hooks: as a build enters a stage, and as its bytes are
/// reported.
type BuildHooks = (
    Option<crate::bootable::StageHook>,
    Option<crate::bootable::BytesHook>,
);

async fn spawn(configure: impl FnOnce(&mut StationConfig), hooks: BuildHooks) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().join("data");
    let image_file = dir.path().join("test.img");
    std::fs::write(
        &image_file,
        flashrack_testkit::image_bytes(IMAGE_SIZE, 5, 256 * 1024),
    )
    .expect("the test image");
    let cache = crate::images::open_cache(&data_dir).expect("the image cache");
    let image = crate::images::import(&cache, &image_file, None, ByteSize(256_000_000_000))
        .expect("the test image imported")
        .image;
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let config = StationConfig {
        station_id: "test-station".into(),
        data_dir: data_dir.clone(),
        allowed_buses: BTreeSet::from(["usb".to_string()]),
        max_size: ByteSize(256_000_000_000),
        allow_unmapped_ports: false,
        stall_timeout_secs: 20,
        // Simulated sticks keep their kernel names here; the station's
        // reset is tested on the simulated rack in the station's tests.
        reset_before_verify: false,
        usb_reset: flashrack_config::UsbReset::default(),
        ports: (1..=3)
            .map(|n| PortConfig {
                label: format!("A{n}"),
                path: format!("t-{n}"),
                position: Some((0, n - 1)),
                master: false,
            })
            .collect(),
        layout: None,
        web: WebConfig {
            listen,
            token: None,
            public_read: false,
            allowed_hosts: Vec::new(),
            import_dirs: Vec::new(),
            max_connections: flashrack_config::DEFAULT_MAX_CONNECTIONS,
            operators: Vec::new(),
        },
        fleet: None,
    };
    let mut config = config;
    configure(&mut config);
    start(dir, data_dir, image, config, hooks, 1).await
}

/// Builds and runs the station over a new simulated rack.
async fn start(
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    image: CachedImage,
    config: StationConfig,
    hooks: BuildHooks,
    starts: u32,
) -> TestApp {
    let listen = config.web.listen;
    let rack_dir = match starts {
        1 => dir.path().join("rack"),
        n => dir.path().join(format!("rack-{n}")),
    };
    let (source, rack, access) = sim_rack(rack_dir);
    let (extra, extra_events) = std::sync::mpsc::channel();
    let source = crate::demo::WithExtra {
        rack: source,
        extra: extra_events,
    };
    let mut parts = Parts::new(
        Box::new(source),
        std::sync::Arc::new(access),
        &data_dir,
        listen,
    );
    if let Some(hook) = hooks.0 {
        parts = parts.with_build_stage_hook(hook);
    }
    if let Some(hook) = hooks.1 {
        parts = parts.with_build_bytes_hook(hook);
    }
    let app = Application::build(config.clone(), parts)
        .await
        .expect("the station builds");
    let address = app.address();
    let station = app.station();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        rack,
        station,
        image,
        data_dir,
        extra,
        stop: Some(stop),
        task: Some(task),
        config,
        starts,
        _dir: dir,
    }
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl TestApp {
    /// `http://address`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends the station a hotplug event of the test's own, beside the
    /// simulated rack's (a real loop device added in a port, say).
    pub fn hotplug(&self, event: Hotplug) {
        self.extra
            .send(event)
            .expect("the station's hotplug source runs");
    }

    /// The path of the records' database file.
    pub fn database(&self) -> PathBuf {
        crate::records::database_path(&self.data_dir)
    }

    /// `GET path` (e.g. `/api/v1/station`).
    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body (or none).
    pub async fn post(&self, path: &str, body: Option<Value>) -> Answer {
        self.call("POST", path, body).await
    }

    /// Entry `id` of the list at `path` (a JSON array of views with `id` and
    /// `state`, as `/api/v1/images/captures` and `/api/v1/images/builds`
    /// give), once its state is no longer `running`. The work runs on its
    /// own thread: the list is polled, as the dashboard polls it, for at most
    /// `within`; panics if the entry is not listed or never ends.
    pub async fn listed_until_ended(
        &self,
        path: &str,
        id: u64,
        running: &str,
        within: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let list = self.get(path).await.json();
            let view = list
                .as_array()
                .unwrap_or_else(|| panic!("{path} is not a list: {list}"))
                .iter()
                .find(|v| v["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("{id} is not listed in {path}: {list}"));
            if view["state"] != running {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} in {path} never ended: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Arms a run of the app's image over the API (`POST /api/v1/runs`,
    /// which must answer 201); returns the run's id.
    pub async fn arm(&self) -> u64 {
        let armed = self
            .post(
                "/api/v1/runs",
                Some(serde_json::json!({ "image": self.image.sha256().to_hex() })),
            )
            .await;
        assert_eq!(armed.status, 201, "{}", armed.body);
        armed.json()["id"].as_u64().expect("a run's id")
    }

    async fn call(&self, method: &'static str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.base());
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
            Answer {
                status: response.status(),
                content_type: response.header("content-type").unwrap_or("").to_string(),
                body: response.into_string().expect("a text body"),
            }
        })
        .await
        .expect("the request task")
    }

    /// The API's event stream (`/api/v1/events`), read on a thread of its own.
    pub async fn events(&self) -> EventStream {
        let url = format!("{}/api/v1/events", self.base());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let response = match ureq::get(&url).call() {
                Ok(response) => response,
                Err(error) => panic!("GET {url}: {error}"),
            };
            let _ = opened_tx.send(());
            read_events(response.into_reader(), &tx);
        });
        opened.await.expect("the event stream opened");
        EventStream {
            events: rx,
            view: View::default(),
        }
    }

    /// Stops the station (as SIGTERM would) and returns how it ended.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.stop_here().await
    }

    async fn stop_here(&mut self) -> Result<(), AppError> {
        let _ = self.stop.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the station stops within a minute")
            .expect("the application's task")
    }

    /// Stops the station (as SIGTERM would; it must stop cleanly) and starts
    /// it again over the same data directory and configuration, on a new
    /// port, with a new simulated rack and no build hook.
    pub async fn restart(mut self) -> TestApp {
        self.stop_here().await.expect("the station stops cleanly");
        // The old rack's threads end with it.
        let dir = std::mem::replace(
            &mut self._dir,
            tempfile::tempdir().expect("a temporary directory"),
        );
        let mut config = self.config.clone();
        config.web.listen = "127.0.0.1:0".parse().expect("an address");
        start(
            dir,
            self.data_dir.clone(),
            self.image.clone(),
            config,
            (None, None),
            self.starts + 1,
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Server-sent events from `reader` to `tx`, as (event, data) pairs.
fn read_events(reader: impl Read, tx: &tokio::sync::mpsc::UnboundedSender<(String, String)>) {
    let mut event = String::new();
    let mut data = String::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.is_empty() {
            if !data.is_empty()
                && tx
                    .send((std::mem::take(&mut event), std::mem::take(&mut data)))
                    .is_err()
            {
                return;
            }
            event.clear();
        } else if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if let Some(text) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(text.strip_prefix(' ').unwrap_or(text));
        }
    }
}

/// The station as its event stream shows it: ports by label, and the run.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Each port's JSON view, by label.
    pub ports: std::collections::BTreeMap<String, Value>,
    /// The run's JSON view (`null` without one).
    pub run: Value,
}

impl View {
    /// A port's `state`.
    pub fn state(&self, label: &str) -> &str {
        self.ports
            .get(label)
            .and_then(|p| p["state"].as_str())
            .unwrap_or("")
    }

    fn apply(&mut self, event: &str, data: &str) {
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(_) => return,
        };
        match event {
            "snapshot" => {
                self.ports = value["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p["label"].as_str()?.to_string(), p.clone())))
                    .collect();
                self.run = value["run"].clone();
            }
            "port" => {
                if let Some(label) = value["port"]["label"].as_str() {
                    self.ports.insert(label.to_string(), value["port"].clone());
                }
            }
            "port_gone" => {
                if let Some(label) = value["label"].as_str() {
                    self.ports.remove(label);
                }
            }
            "run" => self.run = value["run"].clone(),
            _ => {}
        }
    }
}

/// The API's event stream, folded into a [`View`].
pub struct EventStream {
    events: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    view: View,
}

impl EventStream {
    /// Reads events until the view satisfies `check` (20 s at most: a test
    /// that waits longer has failed); returns it.
    pub async fn until(&mut self, what: &str, check: impl Fn(&View) -> bool) -> View {
        let wait = async {
            while !check(&self.view) {
                let (event, data) = self
                    .events
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("the event stream ended waiting for {what}"));
                self.view.apply(&event, &data);
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}: {:#?}", self.view);
        }
        self.view.clone()
    }
}

/// Another process holding the records' write lock: `sqlite3` in a write
/// transaction on the station's database (an operator's manual edit left
/// open), until dropped. Every write of the station waits meanwhile (up to
/// the store's busy timeout); reads go on.
pub struct WriteLockHolder(std::process::Child);

impl WriteLockHolder {
    /// Takes the write lock of the database `db` (see
    /// [`TestApp::database`]); returns once it is held.
    pub fn take(db: &std::path::Path) -> Self {
        use std::io::Write;
        let mut child = std::process::Command::new("sqlite3")
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sqlite3 (scripts/setup installs it)");
        let stdin = child.stdin.as_mut().expect("sqlite3's stdin");
        stdin
            // Waits (as the station does) for a write of the station's in
            // progress: without a busy timeout, BEGIN IMMEDIATE fails at
            // once then (the records' writes run beside the station's loop),
            // and, without `.bail on`, `locked` was printed all the same.
            .write_all(b".bail on\n.timeout 20000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n")
            .expect("sqlite3 takes commands");
        stdin.flush().expect("sqlite3 takes commands");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("sqlite3's stdout"))
            .read_line(&mut line)
            .expect("sqlite3 answers");
        assert_eq!(line.trim(), "locked", "sqlite3 did not take the write lock");
        WriteLockHolder(child)
    }
}

impl Drop for WriteLockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
