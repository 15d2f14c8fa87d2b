//! Fetching an image from the hub by its sha256, resumable.
//!
//! The bytes go to a partial file the caller names (in the station's data
//! directory, so that a fetch cut by a lost connection *or a station restart*
//! resumes where it stopped). A resumed fetch asks for the rest with an HTTP
//! range request (`Range: bytes=<held>-`) and checks that the hub answers
//! exactly that range of an image of the expected size; a hub that ignores
//! ranges (`200`) is fetched from the start. The bytes held before are hashed
//! again from the file on resume (a sha256 state cannot be saved), and the
//! new bytes as they arrive, so the digest is of every byte in the file.
//!
//! **Invariant:** a fetch succeeds only when the file holds exactly the
//! image's size and its sha256 is the one asked for. A digest mismatch
//! removes the partial file (its bytes are not the image's, and resuming
//! would only keep them); a cut leaves it for the next try.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flashrack_core::Sha256Digest;
use flashrack_fleet::paths;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::{status_error, transport, ClientError, HubClient};

/// How long the body of an image may go without a byte before the fetch is
/// given up as cut (and resumed at the next try).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A fetch that did not end with a verified image.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (hub unreachable, an error status).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The transfer stopped before the end (connection cut, hub gone, no
    /// byte for a while); the partial file keeps what arrived.
    #[error("the image's transfer stopped at {held} of {size} bytes: {reason}")]
    Interrupted {
        /// Bytes held in the partial file.
        held: u64,
        /// The image's size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// The hub serves an image of another size than the order says, or sent
    /// more bytes than that.
    #[error("the hub serves {served} bytes for an image of {expected}")]
    WrongLength {
        /// The size the order gives.
        expected: u64,
        /// What the hub declared or sent.
        served: u64,
    },
    /// The hub answered a range that is not the one asked for.
    #[error("the hub answered the wrong range: {0}")]
    BadRange(String),
    /// Every byte arrived but they are not the image asked for; the partial
    /// file is removed.
    #[error("the fetched bytes have sha256 {actual}, not {expected}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Sha256Digest,
        /// The digest of the bytes received.
        actual: Sha256Digest,
    },
    /// The partial file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The partial file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether trying again later may succeed (and resume).
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Client(error) => error.is_transient(),
            FetchError::Interrupted { .. } | FetchError::Io { .. } => true,
            // The hub may have been serving a broken file; the partial is
            // gone, so the next try starts afresh.
            FetchError::DigestMismatch { .. } => true,
            FetchError::WrongLength { .. } | FetchError::BadRange(_) => false,
        }
    }
}

/// A verified image in its (no longer partial) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The file: the partial file, complete and verified.
    pub path: PathBuf,
    /// Bytes that were already held when this fetch began.
    pub resumed_from: u64,
    /// Bytes received by this fetch.
    pub received: u64,
}

impl HubClient {
    /// Fetches the image `sha256` of `size` bytes into `partial`, resuming
    /// from what the file holds, and verifies it. `progress` is told the
    /// bytes held as they grow. See the [module](self) for the rules.
    pub async fn fetch_image(
        &self,
        sha256: Sha256Digest,
        size: u64,
        partial: &Path,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<Fetched, FetchError> {
        let io = |source| FetchError::Io {
            path: partial.to_path_buf(),
            source,
        };
        let mut held = match tokio::fs::metadata(partial).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        if held > size {
            tracing::warn!(held, size, path = %partial.display(), "a partial image larger than the image: starting afresh");
            held = 0;
        }
        let resumed_from = held;
        let mut hasher = hash_prefix(partial, held).await.map_err(io)?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .await
            .map_err(io)?;
        file.set_len(held).await.map_err(io)?;
        let mut received = 0u64;
        if held < size {
            let mut request = self
                .http
                .get(format!(
                    "{}{}/{}",
                    self.base,
                    paths::IMAGES,
                    sha256.to_hex()
                ))
                .bearer_auth(&self.token);
            if held > 0 {
                request = request.header(reqwest::header::RANGE, format!("bytes={held}-"));
            }
            let response = request.send().await.map_err(transport)?;
            match response.status().as_u16() {
                206 => {
                    let (start, total) = content_range(&response)?;
                    if total != size {
                        return Err(FetchError::WrongLength {
                            expected: size,
                            served: total,
                        });
                    }
                    if start != held {
                        return Err(FetchError::BadRange(format!(
                            "asked from byte {held}, got from {start}"
                        )));
                    }
                }
                200 => {
                    if let Some(length) = response.content_length() {
                        if length != size {
                            return Err(FetchError::WrongLength {
                                expected: size,
                                served: length,
                            });
                        }
                    }
                    if held > 0 {
                        // The hub ignored the range: start again.
                        tracing::info!(held, "the hub sent the whole image: fetching it afresh");
                        held = 0;
                        hasher = Sha256::new();
                        file.set_len(0).await.map_err(io)?;
                    }
                }
                _ => return Err(status_error(response).await.into()),
            }
            file.seek(std::io::SeekFrom::Start(held))
                .await
                .map_err(io)?;
            let mut body = response.bytes_stream();
            let cut = loop {
                let next = match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
                    Ok(next) => next,
                    Err(_) => break Some(format!("no byte for {} s", IDLE_TIMEOUT.as_secs())),
                };
                let chunk = match next {
                    None => break None,
                    Some(Ok(chunk)) => chunk,
                    Some(Err(error)) => break Some(transport(error).to_string()),
                };
                if held + chunk.len() as u64 > size {
                    drop(file);
                    let _ = tokio::fs::remove_file(partial).await;
                    return Err(FetchError::WrongLength {
                        expected: size,
                        served: held + chunk.len() as u64,
                    });
                }
                file.write_all(&chunk).await.map_err(io)?;
                hasher.update(&chunk);
                held += chunk.len() as u64;
                received += chunk.len() as u64;
                progress(held);
            };
            file.flush().await.map_err(io)?;
            if let Some(reason) = cut {
                return Err(FetchError::Interrupted { held, size, reason });
            }
            if held < size {
                return Err(FetchError::Interrupted {
                    held,
                    size,
                    reason: "the hub ended the transfer early".into(),
                });
            }
        }
        let actual = Sha256Digest::from_hasher(hasher);
        if actual != sha256 {
            drop(file);
            let _ = tokio::fs::remove_file(partial).await;
            return Err(FetchError::DigestMismatch {
                expected: sha256,
                actual,
            });
        }
        file.sync_all().await.map_err(io)?;
        Ok(Fetched {
            path: partial.to_path_buf(),
            resumed_from,
            received,
        })
    }
}

/// The start and total of a `206`'s `Content-Range: bytes <start>-<end>/<total>`.
fn content_range(response: &reqwest::Response) -> Result<(u64, u64), FetchError> {
    let header = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| FetchError::BadRange("a 206 without Content-Range".into()))?;
    let bad = || FetchError::BadRange(format!("Content-Range {header:?}"));
    let spec = header.strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let (start, _end) = range.split_once('-').ok_or_else(bad)?;
    Ok((
        start.trim().parse().map_err(|_| bad())?,
        total.trim().parse().map_err(|_| bad())?,
    ))
}

/// A hasher fed with the first `len` bytes of `path` (the bytes a resumed
/// fetch already holds), read on a blocking thread.
async fn hash_prefix(path: &Path, len: u64) -> std::io::Result<Sha256> {
    if len == 0 {
        return Ok(Sha256::new());
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut hasher = Sha256::new();
        let mut file = std::fs::File::open(&path)?.take(len);
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        if done != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the partial image shrank while it was read",
            ));
        }
        Ok(hasher)
    })
    .await
    .map_err(std::io::Error::other)?
}
