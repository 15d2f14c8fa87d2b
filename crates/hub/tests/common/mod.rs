//! What the hub's tests share: a station's records made by hand, batches of
//! them, and a blocking HTTP client run off the async workers.

#![allow(dead_code)]

use flashrack_core::{
    AttemptFigures, AttemptId, AttemptState, FailReason, Failure, GuardRefusal, RefusalCode,
    RefusalId, RunId, Sha256Digest, Stage, StopReason, Verdict,
};
use flashrack_fleet::{
    AttemptRecord, DeviceRecord, EventRecord, FleetRecord, ImageRecord, OutboxEntry, RecordBatch,
    RefusalRecord, RunRecord, PROTOCOL_VERSION,
};
use serde_json::{json, Value};

/// The image every station here writes.
pub fn image_digest() -> Sha256Digest {
    Sha256Digest::of(b"the image")
}

pub fn image() -> FleetRecord {
    FleetRecord::Image(ImageRecord {
        sha256: image_digest(),
        name: "os.img".into(),
        size: 8 << 30,
        format: "xz".into(),
        imported_at: 1_000,
        provenance: None,
        removed: false,
    })
}

pub fn device(key: &str, last_seen: i64) -> FleetRecord {
    FleetRecord::Device(DeviceRecord {
        key: key.into(),
        serial: Some(key.into()),
        vendor: Some("Kingston".into()),
        model: Some("DataTraveler".into()),
        capacity: 64_000_000_000,
        first_seen: 2_000,
        last_seen,
    })
}

pub fn run(id: i64, stopped_at: Option<i64>) -> FleetRecord {
    FleetRecord::Run(RunRecord {
        id: RunId(id),
        image_sha256: image_digest(),
        image_name: "os.img".into(),
        options: json!({ "verify": "full", "target": 10, "order_id": 7 }),
        started_at: 3_000,
        stopped_at,
        stop_reason: stopped_at.map(|_| StopReason::Operator),
        stop_detail: None,
    })
}

/// An attempt at one of its moments: running with `written` bytes, or
/// finished (passed, or failed at a verify mismatch).
pub fn attempt(id: i64, key: &str, written: u64, verdict: Option<Verdict>) -> FleetRecord {
    let figures = AttemptFigures {
        bytes_written: written,
        ..Default::default()
    };
    let finished = verdict.is_some();
    FleetRecord::Attempt(AttemptRecord {
        id: AttemptId(id),
        run_id: RunId(1),
        device_key: key.into(),
        port_label: "A1".into(),
        port_path: "pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0".into(),
        started_at: 4_000,
        finished_at: finished.then_some(9_000),
        state: match &verdict {
            None => AttemptState::Running,
            Some(Verdict::Pass) => AttemptState::Passed,
            Some(Verdict::Fail(_)) => AttemptState::Failed,
        },
        stage: if finished {
            Stage::Verifying
        } else {
            Stage::Writing
        },
        reason_detail: match &verdict {
            Some(Verdict::Fail(_)) => Some("verify mismatch at byte 4096".into()),
            _ => None,
        },
        verdict,
        figures,
    })
}

pub fn mismatch() -> Verdict {
    Verdict::Fail(Failure {
        reason: FailReason::VerifyMismatch { offset: 4096 },
        stage: Stage::Verifying,
    })
}

pub fn refusal(id: i64) -> FleetRecord {
    FleetRecord::Refusal(RefusalRecord {
        id: RefusalId(id),
        at: 5_000,
        run_id: Some(RunId(1)),
        device_key: "BIGDISK".into(),
        port_label: "A2".into(),
        port_path: "t-2".into(),
        capacity: 2_000_000_000_000,
        refusal: GuardRefusal {
            code: RefusalCode::TooLarge,
            message: "the device is larger than the 256 GB limit".into(),
        },
    })
}

pub fn event(id: i64, kind: &str) -> FleetRecord {
    FleetRecord::Event(EventRecord {
        id,
        at: 6_000 + id,
        kind: kind.into(),
        port_label: Some("A1".into()),
        device_key: Some("S1".into()),
        run_id: Some(RunId(1)),
        attempt_id: None,
        detail: json!({ "n": id }),
    })
}

/// Entries numbered from `first`.
pub fn entries(first: u64, records: Vec<FleetRecord>) -> Vec<OutboxEntry> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| OutboxEntry {
            seq: first + i as u64,
            at: 10_000 + i as i64,
            record,
        })
        .collect()
}

pub fn batch(station: &str, entries: Vec<OutboxEntry>, backlog: u64) -> RecordBatch {
    RecordBatch {
        protocol: PROTOCOL_VERSION,
        station_id: station.into(),
        entries,
        backlog,
        instance: None,
    }
}

/// An HTTP answer: status and JSON body (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// `POST`s `body` (raw text) with an optional bearer token.
pub async fn post_raw(url: String, token: Option<String>, body: String) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::post(&url).set("Content-Type", "application/json");
        if let Some(token) = &token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_string(&body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("POST {url}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    })
    .await
    .expect("the request thread")
}

/// `POST`s `value` as JSON.
pub async fn post_json<T: serde::Serialize>(url: String, token: Option<&str>, value: &T) -> Answer {
    post_raw(
        url,
        token.map(str::to_string),
        serde_json::to_string(value).unwrap(),
    )
    .await
}

/// `GET`s `url` with an optional bearer token.
pub async fn get(url: String, token: Option<String>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::get(&url);
        if let Some(token) = &token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("GET {url}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    })
    .await
    .expect("the request thread")
}

/// An operator's event stream (SSE), read on a thread of its own: events
/// arrive as (name, JSON data).
pub struct EventStream {
    events: tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
}

impl EventStream {
    /// Opens `url` (with `?token=` when a token is given).
    pub async fn open(url: String) -> EventStream {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let response = ureq::get(&url).call().expect("the event stream opens");
            let _ = opened_tx.send(response.status());
            let reader = std::io::BufReader::new(response.into_reader());
            let mut name = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if tx.send((std::mem::take(&mut name), value)).is_err() {
                        return;
                    }
                }
            }
        });
        assert_eq!(opened.await.expect("the stream's thread"), 200);
        EventStream { events }
    }

    /// The next event named `name` whose data satisfies `pred`, skipping
    /// others; fails the test after 30 s (a guard against a hang, not a
    /// synchronization: the event is expected at once).
    pub async fn wait_for(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {name} event as expected within 30 s"))
                .expect("the stream ended");
            if next.0 == name && pred(&next.1) {
                return next.1;
            }
        }
    }
}

/// A live report of `station` with `backlog`.
pub fn live_report(station: &str, backlog: u64, port_state: &str) -> flashrack_fleet::LiveReport {
    flashrack_fleet::LiveReport {
        protocol: PROTOCOL_VERSION,
        station_id: station.into(),
        instance: None,
        sent_at: 1_700_000_000_000,
        snapshot: json!({ "ports": [{ "label": "A1", "state": port_state }] }),
        backlog,
        order: None,
    }
}

/// The station named `id` in a list of station views.
pub fn station<'a>(views: &'a Value, id: &str) -> Option<&'a Value> {
    views.as_array()?.iter().find(|s| s["id"] == id)
}

/// `POST`s raw bytes.
pub async fn post_bytes(url: String, token: Option<String>, body: Vec<u8>) -> Answer {
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::post(&url).set("Content-Type", "application/octet-stream");
        if let Some(token) = &token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_bytes(&body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("POST {url}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    })
    .await
    .expect("the request thread")
}

/// A `GET` of raw bytes with extra headers: status, headers asked for, body.
pub async fn get_bytes(
    url: String,
    headers: Vec<(&'static str, String)>,
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let mut request = ureq::get(&url);
        for (name, value) in &headers {
            request = request.set(name, value);
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("GET {url}: {error}"),
        };
        let status = response.status();
        let mut seen = std::collections::HashMap::new();
        for name in [
            "content-range",
            "etag",
            "accept-ranges",
            "content-length",
            "content-disposition",
        ] {
            if let Some(value) = response.header(name) {
                seen.insert(name.to_string(), value.to_string());
            }
        }
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
        (status, seen, body)
    })
    .await
    .expect("the request thread")
}
