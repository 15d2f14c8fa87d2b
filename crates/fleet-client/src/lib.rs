//! A station's HTTP client of its fleet hub, and nothing else: it ships record
//! batches, reports the live rack, waits for orders and fetches images, over
//! the wire format of `flashrack-fleet`. It knows no SQL and no engine; what
//! to ship, when, and what to do with an order is the application's.
//!
//! Layout:
//! - [`HubClient`]: the requests, each answered with a typed value or a
//!   [`ClientError`] that says whether trying again later can help;
//! - [`fetch`]: an image by its sha256, resumed with HTTP range requests from
//!   a partial file, hashed on the way and accepted only on a digest match
//!   ([`HubClient::fetch_image`]).
//!
//! **Why reqwest (with rustls), not ureq** (which the station's own command
//! line client uses): the fleet's requests run for a long time inside the
//! station's async application — a long poll of the orders waits up to a
//! minute, an image download for minutes — and must end the moment the
//! station shuts down. reqwest is async on the tokio runtime the station
//! already runs: dropping a request's future cancels it, and no blocking
//! thread is held per request. Its rustls backend (reqwest 0.12) uses `ring`
//! (no OpenSSL, and no cmake as `aws-lc-rs` would need), and the system's
//! root certificates (`rustls-native-certs`), so a hub behind a TLS
//! proxy with a certificate the machine trusts just works; proxies come from
//! the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), as reqwest reads
//! them by default.
//!
//! **Authentication:** every request carries the station's token as a bearer
//! token; the hub binds the token to one station id.
#![deny(missing_docs)]

pub mod fetch;

use std::time::Duration;

use flashrack_fleet::{paths, BatchAck, LiveReport, Orders, RecordBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;
use url::Url;

pub use fetch::{FetchError, Fetched};

/// How long connecting to the hub may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a short request (a batch, a live report) may take as a whole.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to the hub that did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached or did not answer in time (it is down,
    /// the network is, or a proxy is): try again later.
    #[error("hub unreachable: {0}")]
    Unreachable(String),
    /// The hub refused the station's token (401, 403): trying again will not
    /// help until the token is fixed.
    #[error("the hub refused this station's token ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The hub's words.
        message: String,
    },
    /// The hub answered with another error status.
    #[error("the hub answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The hub's words.
        message: String,
    },
    /// The hub's answer could not be understood.
    #[error("the hub's answer cannot be read: {0}")]
    BadAnswer(String),
    /// The client could not be set up (TLS roots, an invalid URL).
    #[error("cannot set up the hub client: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether the request may succeed if tried again unchanged (the hub or
    /// the network may come back; a 5xx may pass): everything but a refused
    /// token and a bad request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::BadAnswer(_) => true,
            ClientError::Status { status, .. } => *status >= 500 || *status == 429,
            ClientError::Refused { .. } | ClientError::Setup(_) => false,
        }
    }
}

fn transport(error: reqwest::Error) -> ClientError {
    // reqwest's message alone ("error sending request") hides the cause.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Unreachable(text)
}

/// A station's client of its hub. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct HubClient {
    /// The hub's base URL (maybe with a path prefix), without a trailing `/`.
    base: String,
    /// The station's id at the hub.
    station_id: String,
    /// The bearer token.
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for HubClient {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .field("station_id", &self.station_id)
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// A client of the hub at `hub` (`http` or `https`), for the station
    /// `station_id` with its `token`.
    pub fn new(hub: &Url, station_id: &str, token: &str) -> Result<Self, ClientError> {
        if !matches!(hub.scheme(), "http" | "https") {
            return Err(ClientError::Setup(format!(
                "{hub} is not an http or https URL"
            )));
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("flashrack/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            base: hub.as_str().trim_end_matches('/').to_string(),
            station_id: station_id.to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The station's id at the hub.
    pub fn station_id(&self) -> &str {
        &self.station_id
    }

    /// The hub's base URL.
    pub fn hub(&self) -> &str {
        &self.base
    }

    /// The URL of `path` (one of [`paths`]) at the hub.
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a batch of outbox entries; the answer says through which
    /// sequence number the hub has stored them.
    pub async fn ship(&self, batch: &RecordBatch) -> Result<BatchAck, ClientError> {
        self.post(paths::RECORDS, batch).await
    }

    /// Reports the live rack; the hub answers with the station's orders.
    pub async fn report_live(&self, report: &LiveReport) -> Result<Orders, ClientError> {
        self.post(paths::LIVE, report).await
    }

    /// The station's orders. With `after`, waits (up to `wait`) for orders
    /// newer than that version, and answers the current ones when none came
    /// (a long poll).
    pub async fn orders(&self, after: Option<i64>, wait: Duration) -> Result<Orders, ClientError> {
        let mut request = self
            .http
            .get(self.url(paths::ORDERS))
            .bearer_auth(&self.token)
            // The hub holds the request up to `wait`: give it that and more.
            .timeout(wait + REQUEST_TIMEOUT);
        if let Some(after) = after {
            request = request.query(&[("after", after), ("wait", wait.as_secs() as i64)]);
        }
        let response = request.send().await.map_err(transport)?;
        decode(response).await
    }

    async fn post<T: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<A, ClientError> {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        decode(response).await
    }
}

/// The error a non-success answer stands for, with the hub's words (its
/// JSON `error` field, or the start of the body).
async fn status_error(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    // `{"error": {"code", "message"}}` (flashrack's HTTP errors), or
    // `{"error": "…"}`, or whatever the body says.
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            error
                .get("message")
                .unwrap_or(error)
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    if status == 401 || status == 403 {
        ClientError::Refused { status, message }
    } else {
        ClientError::Status { status, message }
    }
}

async fn decode<A: DeserializeOwned>(response: reqwest::Response) -> Result<A, ClientError> {
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    let bytes = response.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer(e.to_string()))
}
