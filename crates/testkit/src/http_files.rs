//! A small HTTP/1.1 file server on loopback for download tests: each file
//! with its `ETag` and `Last-Modified`, `Range` and `If-Range` honoured (or
//! not), and the ways real servers fail: a connection cut halfway, a length
//! declared longer than the file, a slow trickle, a stall, a status of
//! the test's choosing (a 503), a 404 for any path it does not serve. It records every request it answered, and the
//! body bytes it sent, so a test can check that a download resumed rather
//! than started again.
//!
//! One request per connection (`Connection: close`): a cut or a stall is
//! then exactly one connection's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves it, honouring `Range` and `If-Range`.
    Honest,
    /// Honest, but ignores `Range`: always the whole file, `200`.
    IgnoresRange,
    /// The first answer for the file stops after this many body bytes and
    /// closes the connection; later answers are honest.
    CutFirstAfter(usize),
    /// The first answer stops after this many body bytes and closes the
    /// connection; the second (the resume) closes right after its headers,
    /// without a body byte (a flaky link); later answers are honest.
    CutThenEmpty(usize),
    /// The first answer stops after this many body bytes and closes the
    /// connection; every answer to a range then starts 4096 bytes before
    /// the byte asked for (its `Content-Range` says so); a request without
    /// a range is answered whole.
    MisalignedResume(usize),
    /// Declares the file this many bytes longer than it is (in
    /// `Content-Length` and `Content-Range`), sends what it has and closes;
    /// a range from the real end on is answered `416` with the real length.
    DeclaresMore(u64),
    /// Sends the body in pieces of this many bytes with a pause between them.
    Slow {
        /// Bytes per piece.
        piece: usize,
        /// The pause after each piece.
        pause: Duration,
    },
    /// Every answer sends up to this offset of the file and then holds the
    /// connection open without a byte more.
    StallAt(usize),
    /// Every answer sends up to this offset of the file, then waits until
    /// the test opens the gate ([`FileServer::open_gate`]) and sends the
    /// rest: the test decides when the download may end.
    GatedAt(usize),
    /// The first answer sends up to this offset of the file, waits until
    /// the test opens the gate, then closes the connection (a cut the test
    /// times: it may change the file first); later answers are honest.
    CutAtGate(usize),
    /// Every answer is this status (a `503` of an overloaded server), with
    /// a short text body and no validators.
    Status(u16),
}

/// A file the server serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its bytes.
    pub body: Vec<u8>,
    /// Its `ETag`, if the server sends one.
    pub etag: Option<String>,
    /// Its `Last-Modified`, if the server sends one.
    pub last_modified: Option<String>,
    /// How the server answers for it.
    pub behaviour: Behaviour,
    /// Whether the server states the file's length: without it a `200`
    /// has no `Content-Length` (the body ends when the connection closes)
    /// and ranges are ignored.
    pub states_length: bool,
    /// Its `Content-Type`, if the server sends one.
    pub content_type: Option<String>,
}

impl Served {
    /// An honest file with a strong `ETag`.
    pub fn new(body: Vec<u8>, etag: &str) -> Self {
        Self {
            body,
            etag: Some(format!("\"{etag}\"")),
            last_modified: Some("Tue, 01 Dec 2026 06:00:00 GMT".to_string()),
            behaviour: Behaviour::Honest,
            states_length: true,
            content_type: None,
        }
    }

    /// The same file sent with this `Content-Type` (`text/html`: a web
    /// page, as a portal or a login page answers).
    pub fn typed(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.to_string());
        self
    }

    /// The same file, its length not stated (see [`Served::states_length`]).
    pub fn without_length(mut self) -> Self {
        self.states_length = false;
        self
    }

    /// The same file answered another way.
    pub fn behaving(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The path.
    pub path: String,
    /// Its `Range` header.
    pub range: Option<String>,
    /// Its `If-Range` header.
    pub if_range: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    files: HashMap<String, Served>,
    /// Answers given per path (for the behaviours of the first answers).
    answered: HashMap<String, usize>,
    seen: Vec<SeenRequest>,
    body_bytes: u64,
}

/// The server; it runs on the test's tokio runtime until the runtime ends.
#[derive(Clone)]
pub struct FileServer {
    base: String,
    shared: Arc<Mutex<Shared>>,
    /// Open (`true`) once the test lets gated answers go on.
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FileServer {
    /// Starts a server on `127.0.0.1`, on a port of the system's choosing.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let server = Self {
            base,
            shared,
            gate: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let accept = server.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(accept.clone().answer(socket));
            }
        });
        server
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `host:port` the server listens on.
    pub fn authority(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Serves `file` at `path` from now on (replacing what was there).
    pub fn serve(&self, path: &str, file: Served) {
        self.shared
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), file);
    }

    /// Lets every answer held at a [`Behaviour::GatedAt`] offset go on (and
    /// later ones pass it).
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// The requests for `path`.
    pub fn requests_for(&self, path: &str) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Body bytes sent so far, over every request.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.lock().unwrap().body_bytes
    }

    async fn answer(self, mut socket: TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let range = header("range");
        let if_range = header("if-range");
        let (file, nth) = {
            let mut shared = self.shared.lock().unwrap();
            let file = shared.files.get(&path).cloned();
            let nth = shared.answered.entry(path.clone()).or_default();
            *nth += 1;
            (file, *nth)
        };
        let Some(file) = file else {
            self.record(&path, &range, &if_range, 404);
            let _ = socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
                .await;
            return;
        };
        if let Behaviour::Status(status) = file.behaviour {
            self.record(&path, &range, &if_range, status);
            let _ = socket
                .write_all(
                    format!(
                        "HTTP/1.1 {status} Server Trouble\r\ncontent-length: 7\r\nconnection: close\r\n\r\ntrouble"
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
        let real = file.body.len() as u64;
        let declared = match file.behaviour {
            Behaviour::DeclaresMore(more) => real + more,
            _ => real,
        };
        let validator_holds = match &if_range {
            None => true,
            Some(v) => Some(v) == file.etag.as_ref() || Some(v) == file.last_modified.as_ref(),
        };
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| {
                validator_holds && file.behaviour != Behaviour::IgnoresRange && file.states_length
            });
        let mut validators = String::new();
        if let Some(etag) = &file.etag {
            validators.push_str(&format!("etag: {etag}\r\n"));
        }
        if let Some(modified) = &file.last_modified {
            validators.push_str(&format!("last-modified: {modified}\r\n"));
        }
        if let Some(content_type) = &file.content_type {
            validators.push_str(&format!("content-type: {content_type}\r\n"));
        }
        let (status, head_out, from) = match start {
            Some(start) if start >= real => {
                let head = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{real}\r\ncontent-length: 0\r\n{validators}connection: close\r\n\r\n"
                );
                (416, head, real)
            }
            Some(start) => {
                let start = match file.behaviour {
                    Behaviour::MisalignedResume(_) => start.saturating_sub(4096),
                    _ => start,
                };
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{declared}\r\ncontent-length: {}\r\naccept-ranges: bytes\r\n{validators}connection: close\r\n\r\n",
                    declared - 1,
                    declared - start
                );
                (206, head, start)
            }
            None if !file.states_length => {
                let head = format!("HTTP/1.1 200 OK\r\n{validators}connection: close\r\n\r\n");
                (200, head, 0)
            }
            None => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {declared}\r\naccept-ranges: bytes\r\n{validators}connection: close\r\n\r\n"
                );
                (200, head, 0)
            }
        };
        self.record(&path, &range, &if_range, status);
        if socket.write_all(head_out.as_bytes()).await.is_err() || status == 416 {
            return;
        }
        let from = from as usize;
        let end = match file.behaviour {
            Behaviour::CutFirstAfter(n)
            | Behaviour::CutThenEmpty(n)
            | Behaviour::MisalignedResume(n)
                if nth == 1 =>
            {
                n.clamp(from, file.body.len())
            }
            Behaviour::CutThenEmpty(_) if nth == 2 => from,
            Behaviour::StallAt(n) => n.clamp(from, file.body.len()),
            _ => file.body.len(),
        };
        let piece = match file.behaviour {
            Behaviour::Slow { piece, .. } => piece.max(1),
            _ => 64 * 1024,
        };
        let gate_at = match file.behaviour {
            Behaviour::GatedAt(n) => n.clamp(from, end),
            Behaviour::CutAtGate(n) if nth == 1 => n.clamp(from, end),
            _ => end,
        };
        let cut_at_gate = matches!(file.behaviour, Behaviour::CutAtGate(_)) && nth == 1;
        let before_gate = file.body[from..gate_at].chunks(piece);
        let after_gate = file.body[gate_at..end].chunks(piece);
        for (gated, data) in before_gate
            .map(|d| (false, d))
            .chain(after_gate.map(|d| (true, d)))
        {
            if gated && !*self.gate.borrow() {
                let mut open = self.gate.subscribe();
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
            }
            if gated && cut_at_gate {
                // Closed mid-body: the client holds what came before the gate.
                return;
            }
            if socket.write_all(data).await.is_err() {
                return;
            }
            self.shared.lock().unwrap().body_bytes += data.len() as u64;
            if let Behaviour::Slow { pause, .. } = file.behaviour {
                tokio::time::sleep(pause).await;
            }
        }
        let _ = socket.flush().await;
        if let Behaviour::StallAt(_) = file.behaviour {
            // Hold the connection, sending nothing, for as long as the test runs.
            std::future::pending::<()>().await;
        }
        // Anything else: close (a cut when fewer bytes were sent than declared).
    }

    fn record(&self, path: &str, range: &Option<String>, if_range: &Option<String>, status: u16) {
        self.shared.lock().unwrap().seen.push(SeenRequest {
            path: path.to_string(),
            range: range.clone(),
            if_range: if_range.clone(),
            status,
        });
    }
}
