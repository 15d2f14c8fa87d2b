//! What the fleet tests share: a throwaway PostgreSQL cluster, the real
//! `flashrack hub` and `flashrack demo` processes (killed with SIGKILL when
//! a test asks, and when the test ends whatever happened), a plain HTTP client
//! of their APIs, a TCP relay that can hold an image's transfer at a byte
//! count, and the comparison of a station's records with the hub's copy.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use flashrack_hub::pg::{HubDb, StationRecords};
use serde_json::Value;

/// The longest any condition is waited for: the machine may run at a load of
/// 10 or more while others build.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Waits until `probe` answers `Some`, looking every 100 ms, for at most
/// [`DEADLINE`]; panics naming `what` (and the last thing `probe` saw).
pub fn until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => {
                assert!(
                    Instant::now() < deadline,
                    "gave up waiting for {what} after {DEADLINE:?}; last seen: {seen}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A free port on loopback (bound and released: nothing else in the test
/// takes ports by number, and the hub binds it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A runtime for the few async calls (the hub's database, a station's
/// SQLite file read beside it).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A `flashrack` process whose first line on stdout names its address;
/// killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    /// The address it printed.
    pub address: SocketAddr,
}

impl Process {
    fn spawn(args: &[String], log: PathBuf, prefix: &str) -> Process {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("flashrack runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "flashrack {args:?} ended before saying where it listens: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            if line.contains(prefix) {
                break;
            }
        }
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        // The rest of stdout is drained so that the process never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Process { child, address }
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// `http://<address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// GET `path` as JSON (panics on an error status).
    pub fn get(&self, path: &str) -> Value {
        get_json(&self.url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// GET `path` as JSON, or why not.
    pub fn try_get(&self, path: &str) -> Result<Value, String> {
        get_json(&self.url(path))
    }

    /// POST `body` to `path`; the status and the body.
    pub fn post(&self, path: &str, body: Option<Value>) -> (u16, String) {
        let request = ureq::post(&self.url(path)).timeout(Duration::from_secs(60));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(url: &str) -> Result<Value, String> {
    match ureq::get(url).timeout(Duration::from_secs(60)).call() {
        Ok(r) => r.into_json().map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A hub's configuration and its process (when running).
pub struct Hub {
    /// `hub.toml`.
    pub config: PathBuf,
    /// Its data directory (the image cache is under `cache/`).
    pub data_dir: PathBuf,
    /// The database.
    pub database_url: String,
    /// Where it listens (the same after a restart).
    pub port: u16,
    dir: PathBuf,
}

impl Hub {
    /// A hub of the database at `database_url`, configured in `dir`.
    pub fn new(dir: &Path, database_url: &str) -> Hub {
        let port = free_port();
        let data_dir = dir.join("hub");
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{database_url}\"\ndata_dir = \"{}\"\n",
                data_dir.display()
            ),
        )
        .unwrap();
        Hub {
            config,
            data_dir,
            database_url: database_url.to_string(),
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// Starts `flashrack hub` and waits until it listens.
    pub fn start(&self) -> Process {
        Process::spawn(
            &[
                "hub".into(),
                "--config".into(),
                self.config.to_string_lossy().into(),
            ],
            self.dir.join("hub.log"),
            "hub: http://",
        )
    }

    /// A station token made by `flashrack hub token add <station>`, in a
    /// file of mode 600 beside the configuration.
    pub fn token_file(&self, station: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let made = Command::new(env!("CARGO_BIN_EXE_flashrack"))
            .args(["hub", "--config"])
            .arg(&self.config)
            .args(["token", "add", station])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let path = self.dir.join(format!("{station}.token"));
        std::fs::write(&path, &made.stdout).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Every record the hub's database holds of `station`, and the highest
    /// sequence number it acknowledged to it.
    pub fn records(&self, station: &str) -> (StationRecords, u64) {
        block_on(async {
            let db = HubDb::connect(&self.database_url, 2).await.unwrap();
            let records = db.station_records(station).await.unwrap();
            let views = db.station_views(Some(station), 60_000).await.unwrap();
            db.close().await;
            (records, views.first().map_or(0, |v| v.acked_through))
        })
    }
}

/// A simulated station in the fleet: `flashrack demo --config` with its own
/// data directory, station id and token.
pub struct Station {
    /// Its id.
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The demo's arguments after `demo --config <file>`.
    pub args: Vec<String>,
    config: PathBuf,
    log: PathBuf,
}

impl Station {
    /// A station `name` of the hub at `hub` (a URL), configured in `dir`.
    pub fn new(dir: &Path, name: &str, hub: &str, token_file: &Path, args: &[&str]) -> Station {
        let base = dir.join(name);
        std::fs::create_dir_all(&base).unwrap();
        let config = base.join("station.toml");
        std::fs::write(
            &config,
            format!(
                "station_id = \"{name}\"\n[fleet]\nhub = \"{hub}\"\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
        )
        .unwrap();
        Station {
            name: name.to_string(),
            data_dir: base.join("data"),
            args: args.iter().map(|a| a.to_string()).collect(),
            config,
            log: base.join("station.log"),
        }
    }

    /// Starts the station and waits until its dashboard listens.
    pub fn start(&self) -> Process {
        let mut args = vec![
            "--data-dir".to_string(),
            self.data_dir.to_string_lossy().into(),
            "demo".into(),
            "--config".into(),
            self.config.to_string_lossy().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(self.args.iter().cloned());
        Process::spawn(&args, self.log.clone(), "dashboard: http://")
    }

    /// The station's records as it holds them in its SQLite file (read
    /// beside the running station, or after it stopped): the last outbox
    /// entry of each record is the whole row as written, in the transaction
    /// that wrote it. Also the highest sequence number.
    pub fn records(&self) -> (StationRecords, u64) {
        let path = self.data_dir.join("flashrack.db");
        block_on(async {
            let store = flashrack_store::Store::open_read_only(&path, &self.name)
                .await
                .unwrap();
            let mut shipped = Vec::new();
            let mut after = 0;
            loop {
                let entries = store.outbox_entries(after, 1000).await.unwrap();
                let Some(last) = entries.last() else { break };
                after = last.seq;
                shipped.extend(entries.into_iter().map(|entry| entry.record));
            }
            store.close().await;
            let records = StationRecords::latest(shipped);
            (records, after)
        })
    }
}

/// One image request the relay saw, and its answer.
#[derive(Debug, Clone, Default)]
pub struct ImageExchange {
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// The answer's status.
    pub status: u16,
    /// The answer's `Content-Range`, if any.
    pub content_range: Option<String>,
    /// Body bytes passed on to the station.
    pub passed: u64,
}

#[derive(Default)]
struct RelayState {
    /// For each image answer to come, in order: pass this many body bytes,
    /// then hold the connection (no more bytes) until it is cut; `None`:
    /// pass everything. Answers beyond the list pass everything.
    budgets: VecDeque<Option<u64>>,
    exchanges: Vec<ImageExchange>,
    /// Connections held at their budget (index into `exchanges`, the
    /// station's end).
    held: Vec<(usize, TcpStream)>,
}

/// A TCP relay between the stations and the hub: the network, with a hand
/// on image transfers. Every connection is passed through byte for byte; an
/// image answer (`GET …/images/<sha256>`) can be held after a given number
/// of body bytes, as a transfer stalls on a bad link, and then cut (the
/// link, or the hub at its end, is gone). When the hub does not accept a
/// connection, the relay drops the station's: the hub is unreachable.
pub struct Relay {
    /// Where stations connect.
    pub address: SocketAddr,
    state: Arc<(Mutex<RelayState>, Condvar)>,
}

impl Relay {
    /// A relay to `upstream`, with the image answers' budgets.
    pub fn start(upstream: SocketAddr, budgets: &[Option<u64>]) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new((
            Mutex::new(RelayState {
                budgets: budgets.iter().copied().collect(),
                ..RelayState::default()
            }),
            Condvar::new(),
        ));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || relay(client, upstream, shared));
            }
        });
        Relay { address, state }
    }

    /// The image requests answered so far (a request sent as the hub died
    /// has no answer).
    pub fn answered(&self) -> Vec<ImageExchange> {
        let state = self.state.0.lock().unwrap();
        state
            .exchanges
            .iter()
            .filter(|e| e.status != 0)
            .cloned()
            .collect()
    }

    /// Waits until an image transfer is held at its budget; returns its index.
    pub fn until_held(&self) -> usize {
        let (lock, changed) = &*self.state;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = changed
            .wait_timeout_while(guard, DEADLINE, |s| s.held.is_empty())
            .unwrap();
        assert!(!timeout.timed_out(), "no image transfer was held");
        guard.held[0].0
    }

    /// Cuts the held transfers' connections, at both ends.
    pub fn cut_held(&self) {
        let held = std::mem::take(&mut self.state.0.lock().unwrap().held);
        // The relay's thread of each wakes, and closes the hub's end too.
        for (_, station) in held {
            let _ = station.shutdown(Shutdown::Both);
        }
    }
}

/// The end of an HTTP head in `buf`, if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// One connection: requests upstream as they come (image requests noted),
/// answers back (image answers counted, and held at their budget).
fn relay(client: TcpStream, upstream: SocketAddr, state: Arc<(Mutex<RelayState>, Condvar)>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        // The hub is not there: the station's connection is dropped.
        return;
    };
    // Image exchanges of this connection, in request order (HTTP/1.1 answers
    // come in request order).
    let pending: Arc<Mutex<VecDeque<usize>>> = Arc::default();
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let requests = {
        let state = state.clone();
        let pending = pending.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                seen.extend_from_slice(&buf[..n]);
                // Note every image request whose head is complete before
                // passing it on, so that its answer is known for one.
                while let Some(at) = find(&seen, b"GET /api/v1/fleet/images/") {
                    let Some(end) = head_end(&seen[at..]) else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&seen[at..at + end]).to_string();
                    let mut s = state.0.lock().unwrap();
                    s.exchanges.push(ImageExchange {
                        range: header(&head, "range"),
                        ..ImageExchange::default()
                    });
                    pending.lock().unwrap().push_back(s.exchanges.len() - 1);
                    drop(s);
                    seen.drain(..at + end);
                }
                // Keep only what may be the start of a request head.
                if seen.len() > 64 * 1024 {
                    seen.drain(..seen.len() - 1024);
                }
                if to_server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown(Shutdown::Write);
            let _ = from_client.shutdown(Shutdown::Read);
        })
    };
    let (mut from_server, mut to_client) =
        (server.try_clone().unwrap(), client.try_clone().unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    // The image answer being passed: exchange, body bytes still to pass
    // before the hold (None: no hold), body bytes left in the answer.
    let mut current: Option<(usize, Option<u64>, u64)> = None;
    let mut head: Vec<u8> = Vec::new();
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if current.is_some() {
            if !pass_body(chunk, &mut current, &mut to_client, &client, &state) {
                break;
            }
            continue;
        }
        let next = pending.lock().unwrap().front().copied();
        let Some(exchange) = next else {
            // Not an image answer: passed on as it is.
            if to_client.write_all(chunk).is_err() {
                break;
            }
            continue;
        };
        // An image answer: its head first (it may come in pieces).
        head.extend_from_slice(chunk);
        let Some(end) = head_end(&head) else {
            continue;
        };
        let text = String::from_utf8_lossy(&head[..end]).to_string();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: u64 = header(&text, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // A budget is taken by an answer, not a request: a request that
        // never got one (the hub died first) takes none.
        let budget = {
            let mut s = state.0.lock().unwrap();
            let e = &mut s.exchanges[exchange];
            e.status = status;
            e.content_range = header(&text, "content-range");
            s.budgets.pop_front().flatten()
        };
        pending.lock().unwrap().pop_front();
        if to_client.write_all(&head[..end]).is_err() {
            break;
        }
        let body = head.split_off(end);
        head.clear();
        current = Some((exchange, budget, length));
        if !body.is_empty() && !pass_body(&body, &mut current, &mut to_client, &client, &state) {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = requests.join();
}

/// Passes body bytes of the current image answer, up to its budget; at the
/// budget, holds the connection until it is cut. False when the connection
/// is over.
fn pass_body(
    mut bytes: &[u8],
    current: &mut Option<(usize, Option<u64>, u64)>,
    to_client: &mut TcpStream,
    client: &TcpStream,
    state: &Arc<(Mutex<RelayState>, Condvar)>,
) -> bool {
    let Some((exchange, budget, left)) = current.as_mut() else {
        return to_client.write_all(bytes).is_ok();
    };
    // Bytes beyond this answer's body belong to the next answer: none come
    // (the station sends one request at a time per connection).
    let allowed = budget
        .map_or(bytes.len() as u64, |b| b.min(bytes.len() as u64))
        .min(*left);
    let pass = &bytes[..allowed as usize];
    if to_client.write_all(pass).is_err() {
        return false;
    }
    state.0.lock().unwrap().exchanges[*exchange].passed += pass.len() as u64;
    *left = left.saturating_sub(pass.len() as u64);
    if let Some(b) = budget.as_mut() {
        *b -= pass.len() as u64;
        if *b == 0 && *left > 0 {
            // Held: no byte more; the test cuts it (or the station goes).
            let (lock, changed) = &**state;
            lock.lock()
                .unwrap()
                .held
                .push((*exchange, client.try_clone().unwrap()));
            changed.notify_all();
            // Wait for the end of the connection: the station closing it
            // or the test cutting it. Reading the station's side tells.
            let mut probe = [0u8; 1];
            let station = client.try_clone().unwrap();
            loop {
                match station.peek(&mut probe) {
                    Ok(0) | Err(_) => return false,
                    // The station asks something else on this connection
                    // while the answer is held: it cannot.
                    Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    bytes = &bytes[pass.len()..];
    if *left == 0 {
        *current = None;
        if !bytes.is_empty() {
            return to_client.write_all(bytes).is_ok();
        }
    }
    true
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
