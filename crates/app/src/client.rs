//! A client of a running station's HTTP API (`flashrack status`, `flashrack run
//! start|stop`): loopback by default; the operator token when the station
//! listens elsewhere.

use std::time::Duration;

use flashrack_core::{RunId, Sha256Digest, VerifyMode};
use flashrack_station::Snapshot;
use serde::Deserialize;
use serde_json::{json, Value};

/// Why a request to the station failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The station answered with an error.
    #[error("the station answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The station's message (`error.message`).
        message: String,
    },
    /// The station could not be reached.
    #[error(
        "cannot reach the station at {base}: {detail} (is `flashrack serve` running? --server URL)"
    )]
    Unreachable {
        /// Its address.
        base: String,
        /// What went wrong, in words.
        detail: String,
    },
    /// The answer could not be read.
    #[error("unexpected answer from the station")]
    Answer(#[source] std::io::Error),
}

/// A run the station armed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ArmedRun {
    /// Its id.
    pub id: RunId,
    /// Its image's name.
    pub image_name: String,
    /// Its image (a provisional digest while the import it follows runs).
    pub image_sha256: Sha256Digest,
    /// The import it follows, for an image not cached when it was armed.
    #[serde(default)]
    pub import: Option<Box<flashrack_station::RunImport>>,
}

/// The image of a run to arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunImage {
    /// A cached image: sha256, a unique prefix, or its name.
    Cached(String),
    /// An image the station downloads while the sticks follow (`download`
    /// in `POST /runs`: the body of `POST /images/import-url`).
    Url {
        /// The image's URL.
        url: String,
        /// The expected sha256 of the file or of the image inside.
        sha256: Option<String>,
        /// A checksum list that gives the file's sha256 by its name.
        sha256sums: Option<String>,
        /// The checksum list's detached OpenPGP signature (its URL); needs
        /// `keyring`.
        signature: Option<String>,
        /// The public keys to trust for `signature`, armored
        /// ([`crate::downloads::keyring_text`] reads a keyring file so).
        keyring: Option<String>,
        /// The image's block map (bmaptool's XML) at its own URL.
        bmap: Option<String>,
        /// Look for no block map beside the image on its server (the
        /// API's `no_bmap`; not with `bmap`).
        no_bmap: bool,
        /// The file to take from a zip archive of several.
        zip_entry: Option<String>,
    },
    /// A file on the station it imports while the sticks follow (`file` in
    /// `POST /runs`).
    StationFile {
        /// The file's absolute path on the station.
        path: String,
        /// The expected sha256 of the file or of the raw image.
        sha256: Option<String>,
    },
}

/// What to arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmRun {
    /// The image.
    pub image: RunImage,
    /// How to verify.
    pub verify: VerifyMode,
    /// Eject each stick after it passes.
    pub eject_on_pass: bool,
    /// Stop by itself after this many passes.
    pub target_count: Option<u32>,
    /// Who arms the run (printed on its report).
    pub operator: Option<String>,
    /// The lot or batch id (printed on its report).
    pub lot: Option<String>,
    /// Write the image raw even though inspection says the sticks would not
    /// boot (recorded in the run's options).
    pub force_raw: bool,
}

/// A client of one station. Its calls block (they are plain HTTP/1 requests
/// with a 30 s timeout): call them off the async workers.
#[derive(Debug, Clone)]
pub struct StationClient {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The operator token, if any.
    token: Option<String>,
}

impl StationClient {
    /// A client of the station at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = ureq::request(method, &format!("{}/api/v1{path}", self.base))
            .timeout(Duration::from_secs(30));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// Sends a request and returns the JSON answer (`null` for an empty one),
    /// or the station's error message.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let request = self.request(method, path);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let text = response.into_string().map_err(ClientError::Answer)?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| ClientError::Answer(e.into()))
            }
            Err(ureq::Error::Status(status, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"]
                    .as_str()
                    .unwrap_or("no details")
                    .to_string();
                Err(ClientError::Refused { status, message })
            }
            Err(error) => Err(ClientError::Unreachable {
                base: self.base.clone(),
                detail: error.to_string(),
            }),
        }
    }

    /// The station as it answers `GET /station`, verbatim.
    pub fn station_json(&self) -> Result<Value, ClientError> {
        self.send("GET", "/station", None)
    }

    /// The station: every port and the run.
    pub fn station(&self) -> Result<Snapshot, ClientError> {
        serde_json::from_value(self.station_json()?).map_err(|e| ClientError::Answer(e.into()))
    }

    /// Arms a run.
    pub fn arm(&self, run: &ArmRun) -> Result<ArmedRun, ClientError> {
        let mut body = json!({
            "verify": run.verify,
            "eject_on_pass": run.eject_on_pass,
            "target_count": run.target_count,
            "operator": run.operator,
            "lot": run.lot,
        });
        match &run.image {
            RunImage::Cached(image) => body["image"] = json!(image),
            RunImage::Url {
                url,
                sha256,
                sha256sums,
                signature,
                keyring,
                bmap,
                no_bmap,
                zip_entry,
            } => {
                let mut download = json!({ "url": url });
                if *no_bmap {
                    // Only when asked: a station from before it refuses
                    // fields it does not know.
                    download["no_bmap"] = json!(true);
                }
                for (key, value) in [
                    ("sha256", sha256),
                    ("sha256sums", sha256sums),
                    ("signature", signature),
                    ("keyring", keyring),
                    ("bmap", bmap),
                    ("zip_entry", zip_entry),
                ] {
                    if let Some(value) = value {
                        download[key] = json!(value);
                    }
                }
                body["download"] = download;
            }
            RunImage::StationFile { path, sha256 } => {
                body["file"] = json!({ "path": path });
                if let Some(sha256) = sha256 {
                    body["file"]["sha256"] = json!(sha256);
                }
            }
        }
        if run.force_raw {
            // Only when asked: a station from before inspection refuses
            // fields it does not know.
            body["force_raw"] = json!(true);
        }
        let answer = self.send("POST", "/runs", Some(body))?;
        serde_json::from_value(answer).map_err(|e| ClientError::Answer(e.into()))
    }

    /// Stops the armed run; `reason` goes to the records.
    pub fn stop(&self, reason: Option<&str>) -> Result<(), ClientError> {
        let body = reason.map(|r| json!({ "reason": r }));
        self.send("POST", "/runs/current/stop", body).map(|_| ())
    }
}
