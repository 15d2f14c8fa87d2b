//! A resumable download, fed to a channel as the bytes arrive.
//!
//! The bytes are appended to a partial file (in a directory the caller
//! names: the data directory, so that a download cut by a lost connection
//! *or a restart of flashrack* resumes where it stopped) and sent on to the
//! reader at once; nothing reads the partial file again except after a
//! restart, when the bytes it holds are sent first (the reader's state, a
//! decompressor and hashers, cannot be saved, so it is rebuilt from them).
//! Beside the partial file a small state file keeps the URL, the server's
//! validators (`ETag`, `Last-Modified`) and the length it declared.
//!
//! A partial file from an earlier run of a server that gave no validator is
//! not resumed (nothing shows it is the file the server has now): it is
//! downloaded again. A resumed request asks for the rest (`Range:
//! bytes=<held>-`) with `If-Range` set to the validator: a server whose file changed answers the
//! whole new file (`200`), which is [`DownloadError::Changed`] (the caller
//! starts afresh); a server that ignores ranges answers `200` with the same
//! strong `ETag`, and the bytes already held are skipped as they come again.
//! A cut within one run from a server that gave no validator is not resumed
//! with a bare `Range` either (its file may have changed meanwhile: the old
//! file's first part and the new one's rest): the whole file is asked for
//! again from byte 0, and the bytes held are compared with what comes
//! (neither written nor sent on again). Bytes that differ, or another
//! length, are [`DownloadError::Changed`]; the same bytes are passed and the
//! download goes on after them.
//! A `206` must start exactly at the held length and declare the same total;
//! a `206` answered to the first request (for the whole file) declares the
//! file's length, and the rest is asked for after it.
//! A server that declared more bytes than it has is caught when it is asked
//! for the rest (`416` with its real length, or the same early end twice).
//!
//! Transient failures (a cut, a stall, an unreachable server, a 5xx) are
//! retried with exponential back-off, [`RetryPolicy::tries`] times in a row
//! without progress; progress starts the count again.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::DownloadError;

/// A web page answered for a file ([`DownloadError::WebPage`]).
fn refuse_web_page(response: &reqwest::Response, url: &str) -> Result<(), DownloadError> {
    let html = header(response.headers(), CONTENT_TYPE)
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"));
    if html {
        return Err(DownloadError::WebPage { url: url.into() });
    }
    Ok(())
}

/// Pieces in which the bytes of a partial file are sent again after a restart.
const REPLAY_PIECE: usize = 1 << 20;

/// Answers in a row that end at the same byte before the declared length,
/// without a new byte after the first, that make the length a lie.
const SAME_END_IS_A_LIE: u32 = 3;

/// When to try again and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in a row without a new byte before the last error is final.
    pub tries: u32,
    /// The wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
    /// How long an answer or the body may go without a byte before the
    /// request is given up as stalled (and resumed).
    pub stall_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            tries: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure in a row (from 1).
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How far a download has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes held (sent on to the reader).
    pub held: u64,
    /// The length the server declared, if it did.
    pub total: Option<u64>,
    /// Bytes that were held from an earlier run when this one began.
    pub resumed_from: u64,
    /// Set when a try has just failed and the download waits to try again
    /// (`None` in the progress of an answer being received).
    pub retrying: Option<Retrying>,
}

/// A try of a download that failed with a transient error, and the wait
/// before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    /// The number of the try that comes next (2 for the first retry).
    pub next_try: u32,
    /// How many tries are made in all before the download fails.
    pub tries: u32,
    /// The wait before the next try.
    pub wait: Duration,
    /// Why the last try failed (the error's words).
    pub error: String,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The server's `ETag` for the file, if it sent one.
    pub etag: Option<String>,
    /// The server's `Last-Modified`, if it sent one.
    pub last_modified: Option<String>,
    /// Bytes in all.
    pub size: u64,
    /// Bytes held from an earlier run (sent again from the partial file).
    pub resumed_from: u64,
    /// Bytes received over the network by this run.
    pub received: u64,
}

/// A small file fetched whole (a checksum list, a signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Small {
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where a download keeps its state on disk: `<dir>/<sha256 of the URL>.part`
/// (the bytes) and `.json` (URL, validators, declared length).
#[derive(Debug, Clone)]
pub struct Partial {
    data: PathBuf,
    state: PathBuf,
}

impl Partial {
    /// The partial download of `url` in `dir`.
    pub fn in_dir(dir: &Path, url: &str) -> Self {
        let key = Sha256::digest(url.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Self {
            data: dir.join(format!("{key}.part")),
            state: dir.join(format!("{key}.json")),
        }
    }

    /// The file holding the bytes.
    pub fn data_path(&self) -> &Path {
        &self.data
    }

    /// Removes the partial download (both files); missing files are fine.
    pub async fn discard(&self) -> Result<(), DownloadError> {
        for path in [&self.data, &self.state] {
            match tokio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DownloadError::Io {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Whether its file holds no byte (or is not there).
    async fn holds_nothing(&self) -> bool {
        tokio::fs::metadata(&self.data)
            .await
            .map_or(true, |meta| meta.len() == 0)
    }

    async fn load(&self, url: &str) -> Option<State> {
        let bytes = tokio::fs::read(&self.state).await.ok()?;
        serde_json::from_slice::<State>(&bytes)
            .ok()
            .filter(|state| state.url == url)
    }

    async fn save(&self, state: &State) -> Result<(), DownloadError> {
        let io = |source| DownloadError::Io {
            path: self.state.clone(),
            source,
        };
        let temp = self.state.with_extension("json.new");
        let bytes = serde_json::to_vec(state).expect("the state serializes");
        tokio::fs::write(&temp, bytes).await.map_err(io)?;
        tokio::fs::rename(&temp, &self.state).await.map_err(io)
    }
}

/// What a partial download remembers of the server's file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    total: Option<u64>,
}

impl State {
    /// The validator for `If-Range`: a strong `ETag`, else `Last-Modified`.
    fn validator(&self) -> Option<&str> {
        match (&self.etag, &self.last_modified) {
            (Some(etag), _) if !etag.starts_with("W/") => Some(etag),
            (_, Some(modified)) => Some(modified),
            _ => None,
        }
    }

    /// Whether a whole answer (`200`) carries the same file: its strong
    /// `ETag` is ours, or, without one, its `Last-Modified` is.
    fn same_file(&self, etag: Option<&str>, last_modified: Option<&str>) -> bool {
        match (&self.etag, etag) {
            (Some(ours), Some(theirs)) => !ours.starts_with("W/") && ours == theirs,
            (None, None) => {
                self.last_modified.is_some() && self.last_modified.as_deref() == last_modified
            }
            _ => false,
        }
    }
}

/// The HTTP client of downloads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Downloader {
    http: reqwest::Client,
    policy: RetryPolicy,
}

impl Downloader {
    /// A client with rustls (the system's root certificates) and the
    /// environment's proxies.
    pub fn new(policy: RetryPolicy) -> Result<Self, DownloadError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(policy.connect_timeout)
            .user_agent(concat!("flashrack/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Setup(e.to_string()))?;
        Ok(Self { http, policy })
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Fetches a small file whole (at most `limit` bytes), with the same
    /// retries as a download.
    pub async fn fetch_small(
        &self,
        url: &str,
        what: &'static str,
        limit: u64,
    ) -> Result<Small, DownloadError> {
        let parsed = parse_url(url)?;
        let mut failures = 0;
        loop {
            match self.fetch_small_once(&parsed, url, what, limit).await {
                Ok(small) => return Ok(small),
                Err(error) if error.is_transient() && failures + 1 < self.policy.tries => {
                    failures += 1;
                    let wait = self.policy.backoff(failures);
                    tracing::warn!(
                        %error,
                        ?wait,
                        "fetching {what} again (try {} of {})",
                        failures + 1,
                        self.policy.tries
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn fetch_small_once(
        &self,
        parsed: &Url,
        url: &str,
        what: &'static str,
        limit: u64,
    ) -> Result<Small, DownloadError> {
        let response = self.send(self.http.get(parsed.clone()), url, 0).await?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            _ => return Err(DownloadError::unexpected_status(url, status)),
        }
        refuse_web_page(&response, url)?;
        let too_large = || DownloadError::TooLarge {
            url: url.into(),
            what,
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        let mut body = response.bytes_stream();
        loop {
            match tokio::time::timeout(self.policy.stall_timeout, body.next()).await {
                Err(_) => return Err(self.stalled(url, bytes.len() as u64)),
                Ok(None) => break,
                Ok(Some(Err(error))) => return Err(cut(url, bytes.len() as u64, None, &error)),
                Ok(Some(Ok(chunk))) => {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&chunk);
                }
            }
        }
        Ok(Small { bytes })
    }

    /// Downloads `url`, resuming what `partial` holds, and sends every byte
    /// of the file, in order, to `sink` (the bytes held from an earlier run
    /// first). `progress` is told how far it has got after every piece, and
    /// the length declared before any byte of an answer is sent (so the
    /// reader of `sink` knows it from its first byte on). On
    /// an error the partial download is kept (resumable), except that
    /// [`DownloadError::Changed`] means it is worthless: the caller discards
    /// it and starts again. A download that fails holding no byte (a 404,
    /// a server that cannot be reached) keeps nothing: there is nothing to
    /// resume. See the [module](self) for the rules.
    pub async fn download(
        &self,
        url: &str,
        partial: &Partial,
        sink: &mpsc::Sender<Bytes>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Downloaded, DownloadError> {
        let result = self.download_into(url, partial, sink, progress).await;
        if result.is_err() && partial.holds_nothing().await {
            if let Err(error) = partial.discard().await {
                tracing::warn!(%error, url, "cannot remove an empty partial download");
            }
        }
        result
    }

    async fn download_into(
        &self,
        url: &str,
        partial: &Partial,
        sink: &mpsc::Sender<Bytes>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Downloaded, DownloadError> {
        let parsed = parse_url(url)?;
        let io = |source| DownloadError::Io {
            path: partial.data.clone(),
            source,
        };
        if let Some(dir) = partial.data.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut state = partial.load(url).await;
        let mut held = match (&state, tokio::fs::metadata(&partial.data).await) {
            (Some(_), Ok(meta)) => meta.len(),
            _ => 0,
        };
        if state
            .as_ref()
            .and_then(|s| s.total)
            .is_some_and(|total| held > total)
        {
            tracing::warn!(
                held,
                url,
                "a partial download longer than the file: starting afresh"
            );
            held = 0;
        }
        // Bytes held from an earlier run of a server that gave no validator
        // (no strong ETag, no Last-Modified) cannot be shown to be the
        // file's it serves now: resumed, a file changed meanwhile would be
        // imported half old, half new. They are downloaded again.
        if held > 0 && state.as_ref().is_some_and(|s| s.validator().is_none()) {
            tracing::warn!(
                held,
                url,
                "a partial download from a server that gave no validator: starting afresh"
            );
            held = 0;
        }
        if held == 0 {
            state = None;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&partial.data)
            .await
            .map_err(io)?;
        file.set_len(held).await.map_err(io)?;
        // The bytes that come go after the ones held (a file opened for
        // writing starts at 0: a resumed run wrote its first byte over the
        // partial file's first, and a later restart sent that mix again).
        file.seek(std::io::SeekFrom::Start(held))
            .await
            .map_err(io)?;
        let resumed_from = held;
        let mut state = state.unwrap_or_else(|| State {
            url: url.to_string(),
            ..State::default()
        });
        // A whole file kept from an earlier import (one whose choice of a
        // zip's file was refused, say) is asked about again before it is
        // used: the server may have changed it since.
        if held > 0 && state.total == Some(held) {
            self.revalidate(&parsed, url, &mut state, held).await?;
            partial.save(&state).await?;
        }
        // Told before the bytes held are sent again: whoever reads the sink
        // knows the length declared before its first byte.
        progress(Progress {
            held,
            total: state.total,
            resumed_from,
            retrying: None,
        });
        if held > 0 {
            tracing::info!(url, held, "resuming a partial download");
            replay(&partial.data, held, sink).await?;
        }
        let mut failures = 0u32;
        // Where the last cuts ended, and how many in a row ended there.
        let mut last_cut: Option<(u64, u32)> = None;
        while state.total.is_none_or(|total| held < total) {
            let before = held;
            let mut transfer = Transfer {
                url,
                partial,
                state: &mut state,
                file: &mut file,
                held: &mut held,
                sink,
                progress: &mut *progress,
                resumed_from,
                at: before,
            };
            let result = self.request(&parsed, &mut transfer).await;
            let at = transfer.at;
            match result {
                Ok(()) => break,
                Err(error) if error.is_transient() => {
                    if held > before {
                        failures = 0;
                    }
                    if let (DownloadError::Cut { .. }, Some(total)) = (&error, state.total) {
                        // The same early end again and again, without a new
                        // byte: the server does not have what it declared.
                        // One answer cut right after its headers is a cut
                        // like any other (a flaky link does that too), so
                        // it takes the same end three times in a row. (An
                        // answer from byte 0 cut while it was compared with
                        // the bytes held ended before them.)
                        let same = match last_cut {
                            Some((end, times)) if end == at && held == before && at == held => {
                                times + 1
                            }
                            _ => 1,
                        };
                        if same >= SAME_END_IS_A_LIE {
                            return Err(DownloadError::WrongLength {
                                url: url.into(),
                                declared: total,
                                actual: format!(
                                    "but ends at byte {held} every time ({same} answers in a row)"
                                ),
                            });
                        }
                        last_cut = Some((at, same));
                    }
                    failures += 1;
                    if failures >= self.policy.tries {
                        return Err(error);
                    }
                    let wait = self.policy.backoff(failures);
                    // Told to the progress as well: a download's view says
                    // why it waits (its error stays empty until it fails).
                    progress(Progress {
                        held,
                        total: state.total,
                        resumed_from,
                        retrying: Some(Retrying {
                            next_try: failures + 1,
                            tries: self.policy.tries,
                            wait,
                            error: error.to_string(),
                        }),
                    });
                    // A warning, shown without -v: a server that stalls or
                    // fails is tried for minutes, and the operator sees why.
                    tracing::warn!(
                        %error,
                        held,
                        ?wait,
                        "download interrupted: trying again (try {} of {})",
                        failures + 1,
                        self.policy.tries
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(Downloaded {
            etag: state.etag.clone(),
            last_modified: state.last_modified.clone(),
            size: held,
            resumed_from,
            received: held - resumed_from,
        })
    }

    /// Asks the server whether the whole file `state` describes (all `held`
    /// bytes of it are in the partial download) is still its file: a request
    /// for its last byte with `If-Range`, which a server answers `206` with
    /// the same length (and `ETag`) while the file is the same, and `200`
    /// (the whole file, not read) once it changed; a server that ignores
    /// ranges answers `200` with its validators, which must be ours. The
    /// validators it sends are kept (the image's provenance is then what the
    /// server says now). A changed file is [`DownloadError::Changed`]: the
    /// caller discards the partial download and starts again.
    async fn revalidate(
        &self,
        parsed: &Url,
        url: &str,
        state: &mut State,
        held: u64,
    ) -> Result<(), DownloadError> {
        let mut request = self
            .http
            .get(parsed.clone())
            .header(RANGE, format!("bytes={}-", held - 1));
        match state.validator() {
            Some(validator) => request = request.header(IF_RANGE, validator),
            None => tracing::warn!(url, "the server gave no validator: a kept download is checked by its length alone; the digest check is the only guard"),
        }
        let mut failures = 0u32;
        let response = loop {
            match self
                .send(request.try_clone().expect("no streamed body"), url, held)
                .await
            {
                Ok(response) => break response,
                Err(error) if error.is_transient() && failures + 1 < self.policy.tries => {
                    failures += 1;
                    tokio::time::sleep(self.policy.backoff(failures)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let status = response.status().as_u16();
        let etag = header(response.headers(), ETAG);
        let last_modified = header(response.headers(), LAST_MODIFIED);
        let changed = |reason: String| DownloadError::Changed {
            url: url.into(),
            reason,
        };
        match status {
            206 => {
                let (_, total) = content_range(&response, url)?;
                if total != Some(held) {
                    return Err(changed(format!(
                        "its length is now {}, was {held} bytes",
                        total.map_or_else(|| "not stated".to_string(), |t| t.to_string())
                    )));
                }
                if let (Some(ours), Some(theirs)) = (&state.etag, &etag) {
                    if ours != theirs {
                        return Err(changed(format!("ETag {ours} is now {theirs}")));
                    }
                }
            }
            200 => {
                if !state.same_file(etag.as_deref(), last_modified.as_deref())
                    || response.content_length().is_some_and(|n| n != held)
                {
                    return Err(changed(match (&state.etag, &etag) {
                        (Some(ours), Some(theirs)) if ours != theirs => {
                            format!("ETag {ours} is now {theirs}")
                        }
                        _ => "the server sent the file again, without the same validator or length"
                            .into(),
                    }));
                }
            }
            416 => {
                return Err(changed(format!(
                    "byte {} is no longer there: the file is shorter",
                    held - 1
                )))
            }
            _ => return Err(DownloadError::unexpected_status(url, status)),
        }
        // The same file: what the server says of it now.
        if etag.is_some() {
            state.etag = etag;
        }
        if last_modified.is_some() {
            state.last_modified = last_modified;
        }
        tracing::info!(url, held, "a kept download is still the server's file");
        Ok(())
    }

    /// Sends a request, giving up after the stall timeout without an answer.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        held: u64,
    ) -> Result<reqwest::Response, DownloadError> {
        match tokio::time::timeout(self.policy.stall_timeout, request.send()).await {
            Err(_) => Err(self.stalled(url, held)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(url, held, &error)),
        }
    }

    fn stalled(&self, url: &str, held: u64) -> DownloadError {
        DownloadError::Stalled {
            url: url.into(),
            held,
            secs: self.policy.stall_timeout.as_secs(),
        }
    }

    /// One request: from what is held to the end, or to an error.
    async fn request(&self, parsed: &Url, t: &mut Transfer<'_>) -> Result<(), DownloadError> {
        let url = t.url;
        let held = *t.held;
        let mut request = self.http.get(parsed.clone());
        // Without a validator nothing tells whether the server's file is
        // still the one the bytes held came from: it is asked for whole, and
        // those bytes are compared with the answer's first ones.
        let compare_held = held > 0 && t.state.validator().is_none();
        if compare_held {
            tracing::info!(
                url,
                held,
                "the server gave no validator: asking for the whole file again and comparing \
                 the bytes held with it"
            );
        } else if let Some(validator) = t.state.validator().filter(|_| held > 0) {
            request = request
                .header(RANGE, format!("bytes={held}-"))
                .header(IF_RANGE, validator);
        }
        let from = if compare_held { 0 } else { held };
        t.at = from;
        let response = self.send(request, url, held).await?;
        refuse_web_page(&response, url)?;
        let status = response.status().as_u16();
        let etag = header(response.headers(), ETAG);
        let last_modified = header(response.headers(), LAST_MODIFIED);
        let mut skip = 0u64;
        // Bytes of the answer to compare with the bytes held (an answer
        // from byte 0 to a download without a validator).
        let mut compare = 0u64;
        let changed_length = |declared: Option<u64>, length: Option<u64>| match (declared, length) {
            (Some(declared), Some(length)) if declared != length => Some(DownloadError::Changed {
                url: url.into(),
                reason: format!(
                    "the server gave no validator, and the file's length is now {length}, \
                         was {declared} bytes"
                ),
            }),
            _ => None,
        };
        match status {
            // A part of the whole file asked for again (a server or proxy
            // that answers `206` unasked): from byte 0, or it is no answer.
            206 if compare_held => {
                let (start, total) = content_range(&response, url)?;
                if start != Some(0) {
                    return Err(DownloadError::BadRange {
                        url: url.into(),
                        reason: format!("asked for the whole file, got from byte {start:?}"),
                    });
                }
                if let Some(error) = changed_length(t.state.total, total) {
                    return Err(error);
                }
                compare = held;
            }
            206 => {
                let (start, total) = content_range(&response, url)?;
                let total = total.ok_or_else(|| DownloadError::BadRange {
                    url: url.into(),
                    reason: "a 206 without the file's length".into(),
                })?;
                if start != Some(held) {
                    return Err(DownloadError::BadRange {
                        url: url.into(),
                        reason: match start {
                            Some(start) => format!("asked from byte {held}, got from byte {start}"),
                            None => format!("asked from byte {held}, got no start"),
                        },
                    });
                }
                if let (Some(ours), Some(theirs)) = (&t.state.etag, &etag) {
                    if ours != theirs {
                        return Err(DownloadError::Changed {
                            url: url.into(),
                            reason: format!("ETag {ours} is now {theirs}"),
                        });
                    }
                }
                match t.state.total {
                    Some(declared) if declared != total => {
                        return Err(DownloadError::WrongLength {
                            url: url.into(),
                            declared,
                            actual: format!("then {total} bytes"),
                        });
                    }
                    Some(_) => {}
                    // A first answer that is a part (asked for the whole
                    // file, a server or proxy sent `206`): the file's length
                    // is its `Content-Range`'s, and the rest is asked for
                    // after this part, not taken for the end of the file.
                    None => {
                        *t.state = State {
                            url: url.to_string(),
                            etag,
                            last_modified,
                            total: Some(total),
                        };
                        t.partial.save(t.state).await?;
                    }
                }
            }
            200 if compare_held => {
                if let Some(error) = changed_length(t.state.total, response.content_length()) {
                    return Err(error);
                }
                compare = held;
            }
            200 if held > 0 => {
                if !t.state.same_file(etag.as_deref(), last_modified.as_deref()) {
                    return Err(DownloadError::Changed {
                        url: url.into(),
                        reason: match (&t.state.etag, &etag) {
                            (Some(ours), Some(theirs)) => format!("ETag {ours} is now {theirs}"),
                            _ => "the server sent the whole file again without the same validator"
                                .into(),
                        },
                    });
                }
                if let (Some(declared), Some(length)) = (t.state.total, response.content_length()) {
                    if declared != length {
                        return Err(DownloadError::WrongLength {
                            url: url.into(),
                            declared,
                            actual: format!("then {length} bytes"),
                        });
                    }
                }
                // The same file, whole: the server ignores ranges.
                tracing::info!(
                    url,
                    held,
                    "the server ignores ranges: skipping the bytes held"
                );
                skip = held;
            }
            200 => {
                *t.state = State {
                    url: url.to_string(),
                    etag,
                    last_modified,
                    total: response.content_length(),
                };
                t.partial.save(t.state).await?;
            }
            416 => {
                let (_, actual) = content_range(&response, url).unwrap_or((None, None));
                return Err(match (t.state.total, actual) {
                    (Some(declared), Some(actual)) if actual != declared => {
                        DownloadError::WrongLength {
                            url: url.into(),
                            declared,
                            actual: format!("but has {actual}"),
                        }
                    }
                    _ => DownloadError::BadRange {
                        url: url.into(),
                        reason: format!("bytes from {held} are not satisfiable"),
                    },
                });
            }
            _ => return Err(DownloadError::unexpected_status(url, status)),
        }
        // The answer is accepted: its length is told before its first byte
        // is sent on (a fresh download learns it here).
        (t.progress)(Progress {
            held: *t.held,
            total: t.state.total,
            resumed_from: t.resumed_from,
            retrying: None,
        });
        let io = |source| DownloadError::Io {
            path: t.partial.data.clone(),
            source,
        };
        // The bytes held, read again to be compared with the answer's.
        let mut held_bytes = match compare {
            0 => None,
            _ => {
                t.file.flush().await.map_err(io)?;
                Some(tokio::fs::File::open(&t.partial.data).await.map_err(io)?)
            }
        };
        let mut body = response.bytes_stream();
        loop {
            let mut chunk = match tokio::time::timeout(self.policy.stall_timeout, body.next()).await
            {
                Err(_) => return Err(self.stalled(url, *t.held)),
                Ok(None) => break,
                Ok(Some(Err(error))) => return Err(cut(url, *t.held, t.state.total, &error)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            if let Some(held_file) = held_bytes.as_mut().filter(|_| compare > 0) {
                let n = (compare.min(chunk.len() as u64)) as usize;
                let mut ours = vec![0u8; n];
                held_file.read_exact(&mut ours).await.map_err(io)?;
                if let Some(i) = ours.iter().zip(&chunk[..n]).position(|(a, b)| a != b) {
                    return Err(DownloadError::Changed {
                        url: url.into(),
                        reason: format!(
                            "the server gave no validator, and byte {} of the file is not the \
                             one held",
                            t.at + i as u64
                        ),
                    });
                }
                chunk.advance(n);
                compare -= n as u64;
                t.at += n as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            if skip > 0 {
                let n = (skip.min(chunk.len() as u64)) as usize;
                chunk.advance(n);
                skip -= n as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            let len = chunk.len() as u64;
            if let Some(total) = t.state.total {
                if *t.held + len > total {
                    return Err(DownloadError::WrongLength {
                        url: url.into(),
                        declared: total,
                        actual: format!("but sends more ({} bytes at least)", *t.held + len),
                    });
                }
            }
            // On disk first: a restart sends again what the file holds.
            t.file.write_all(&chunk).await.map_err(io)?;
            t.sink
                .send(chunk)
                .await
                .map_err(|_| DownloadError::SinkClosed)?;
            *t.held += len;
            t.at = *t.held;
            (t.progress)(Progress {
                held: *t.held,
                total: t.state.total,
                resumed_from: t.resumed_from,
                retrying: None,
            });
        }
        if skip > 0 || compare > 0 || t.state.total.is_some_and(|total| *t.held < total) {
            return Err(DownloadError::Cut {
                url: url.into(),
                held: *t.held,
                total: t.state.total,
                reason: "the server ended the transfer early".into(),
            });
        }
        if t.state.total.is_none() {
            // Without a declared length, the end of the body is the end.
            t.state.total = Some(*t.held);
        }
        Ok(())
    }
}

/// What one request works on.
struct Transfer<'a> {
    url: &'a str,
    partial: &'a Partial,
    state: &'a mut State,
    file: &'a mut tokio::fs::File,
    held: &'a mut u64,
    sink: &'a mpsc::Sender<Bytes>,
    progress: &'a mut (dyn FnMut(Progress) + Send),
    resumed_from: u64,
    /// How far into the file the answer being read has got (its start,
    /// then byte by byte): below `held` while an answer from byte 0 is
    /// compared with the bytes held.
    at: u64,
}

/// Sends the first `len` bytes of the partial file to the sink again.
async fn replay(path: &Path, len: u64, sink: &mpsc::Sender<Bytes>) -> Result<(), DownloadError> {
    let io = |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; REPLAY_PIECE.min(left as usize)];
        file.read_exact(&mut buf).await.map_err(io)?;
        left -= buf.len() as u64;
        sink.send(Bytes::from(buf))
            .await
            .map_err(|_| DownloadError::SinkClosed)?;
    }
    Ok(())
}

fn parse_url(url: &str) -> Result<Url, DownloadError> {
    let parsed = Url::parse(url).map_err(|e| DownloadError::BadUrl {
        url: url.into(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DownloadError::BadUrl {
            url: url.into(),
            reason: "only http and https URLs can be downloaded".into(),
        });
    }
    Ok(parsed)
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Content-Range: bytes <start>-<end>/<total>` or `bytes */<total>`: the
/// start (if any) and the total (if known).
fn content_range(
    response: &reqwest::Response,
    url: &str,
) -> Result<(Option<u64>, Option<u64>), DownloadError> {
    let text =
        header(response.headers(), CONTENT_RANGE).ok_or_else(|| DownloadError::BadRange {
            url: url.into(),
            reason: "no Content-Range".into(),
        })?;
    let bad = || DownloadError::BadRange {
        url: url.into(),
        reason: format!("Content-Range {text:?}"),
    };
    let spec = text.strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().map_err(|_| bad())?),
    };
    let start = match range.trim() {
        "*" => None,
        r => Some(
            r.split_once('-')
                .ok_or_else(bad)?
                .0
                .trim()
                .parse()
                .map_err(|_| bad())?,
        ),
    };
    Ok((start, total))
}

/// An error's message with all its causes.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// rustls's error among the causes, if the failure was TLS's.
fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = rustls_error(error) {
            return Some(tls.to_string());
        }
        current = error.source();
    }
    None
}

/// `error` itself as rustls's error, looking inside an `io::Error` carrying
/// it (tokio-rustls), which `source()` skips.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return rustls_error(inner);
    }
    None
}

/// A request that got no answer.
fn classify(url: &str, held: u64, error: &reqwest::Error) -> DownloadError {
    if let Some(reason) = tls_failure(error) {
        return DownloadError::Tls {
            url: url.into(),
            reason,
        };
    }
    if error.is_body() || error.is_decode() {
        return cut(url, held, None, error);
    }
    if error.is_redirect() {
        return DownloadError::Redirects {
            url: url.into(),
            reason: chain(error),
        };
    }
    DownloadError::Unreachable {
        url: url.into(),
        reason: chain(error),
    }
}

fn cut(url: &str, held: u64, total: Option<u64>, error: &reqwest::Error) -> DownloadError {
    DownloadError::Cut {
        url: url.into(),
        held,
        total,
        reason: chain(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_limit() {
        let policy = RetryPolicy {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let waits: Vec<u64> = (1..=5).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_weak_etag_is_no_validator_for_a_range() {
        let state = State {
            url: "u".into(),
            etag: Some("W/\"x\"".into()),
            last_modified: None,
            total: Some(1),
        };
        assert_eq!(state.validator(), None);
        assert!(!state.same_file(Some("W/\"x\""), None));
        let state = State {
            etag: Some("\"x\"".into()),
            ..state
        };
        assert_eq!(state.validator(), Some("\"x\""));
        assert!(state.same_file(Some("\"x\""), None));
        assert!(!state.same_file(Some("\"y\""), None));
    }
}
