//! The one error type of this crate.

use std::path::PathBuf;

/// Why a download, a checksum lookup or a signature check failed. Each
/// variant says whether trying again may help ([`DownloadError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL cannot be downloaded from (not http or https, malformed).
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server has no such file (404 or 410).
    #[error("{url}: not found on the server ({status})")]
    NotFound {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server answered with a web page (`Content-Type: text/html`), as
    /// a login page, a portal or a "file moved" page does with status 200:
    /// no image, checksum list, signature or block map is one.
    #[error("{url}: the server answered with a web page (text/html), not the file: is the URL the file's own link?")]
    WebPage {
        /// The URL.
        url: String,
    },
    /// The server answered another error status.
    #[error("{url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The TLS handshake failed (an untrusted or invalid certificate, a
    /// server that does not speak TLS): not retried.
    #[error("{url}: TLS failure: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// rustls's words.
        reason: String,
    },
    /// The server could not be reached (name, connection refused, timeout).
    #[error("{url}: cannot reach the server: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server's redirects lead nowhere (a loop, too many of them, a
    /// `Location` that is no URL): asking again would go the same way.
    #[error("{url}: the server's redirects lead nowhere: {reason}")]
    Redirects {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The transfer stopped before the end; what arrived is kept and the
    /// next try resumes from it.
    #[error("{url}: the transfer stopped at {held} of {} bytes: {reason}", total.map_or_else(|| "?".to_string(), |t| t.to_string()))]
    Cut {
        /// The URL.
        url: String,
        /// Bytes held.
        held: u64,
        /// The length the server declared, if it did.
        total: Option<u64>,
        /// Why.
        reason: String,
    },
    /// No byte arrived for the stall timeout.
    #[error("{url}: stalled: no byte for {secs} s at {held} bytes")]
    Stalled {
        /// The URL.
        url: String,
        /// Bytes held.
        held: u64,
        /// The stall timeout, in seconds.
        secs: u64,
    },
    /// The server's length does not hold: it declared one length and has
    /// or sends another, or changed it between requests.
    #[error(
        "{url}: the server lies about the file's length: it declared {declared} bytes, {actual}"
    )]
    WrongLength {
        /// The URL.
        url: String,
        /// The length it declared first.
        declared: u64,
        /// What it did instead, in words with the figure.
        actual: String,
    },
    /// The server answered a range that is not the one asked for.
    #[error("{url}: the server answered the wrong range: {reason}")]
    BadRange {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The file changed on the server since the partial download began (its
    /// `ETag` or `Last-Modified` differs): the bytes held are not worth
    /// keeping.
    #[error("{url}: the file changed on the server since the download began ({reason})")]
    Changed {
        /// The URL.
        url: String,
        /// Which validator changed.
        reason: String,
    },
    /// A small file (a checksum list, a signature) is larger than it may be.
    #[error("{url}: larger than {limit} bytes, too large for a {what}")]
    TooLarge {
        /// The URL.
        url: String,
        /// What was being fetched.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Whoever reads the bytes stopped reading (the import failed or was
    /// cancelled); its own error says why.
    #[error("the import stopped reading the download")]
    SinkClosed,
    /// The partial download on disk cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client cannot be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// The checksum list does not list the file.
    #[error("{sums_url} lists no sha256 for {file_name}{}", listed_names(.listed))]
    NotListed {
        /// The list's URL.
        sums_url: String,
        /// The name looked for.
        file_name: String,
        /// Some names it does list.
        listed: Vec<String>,
    },
    /// The checksum list names the file on a line that gives no sha256 of
    /// it (a digest cut short or too long, another form).
    #[error("{sums_url} names {file_name} on line {line}, but gives no sha256 of it there (not 64 hex digits in a form flashrack reads)")]
    MalformedEntry {
        /// The list's URL.
        sums_url: String,
        /// The name looked for.
        file_name: String,
        /// The line (from 1).
        line: usize,
    },
    /// The checksum list gives the file two different digests.
    #[error("{sums_url} lists {file_name} twice with different digests")]
    ListedTwice {
        /// The list's URL.
        sums_url: String,
        /// The name looked for.
        file_name: String,
    },
    /// The keyring cannot be read or holds no usable public key.
    #[error("keyring {}: {reason}", path.display())]
    BadKeyring {
        /// The keyring file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The signature cannot be parsed.
    #[error("{url}: not an OpenPGP signature: {reason}")]
    BadSignatureData {
        /// The signature's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No key of the keyring made a valid signature of the checksum list:
    /// it was altered, or signed by a key the operator does not trust.
    #[error("{sums_url}: the signature {signature_url} is not a valid signature by any key of the keyring{}", issuer_note(.issuers))]
    BadSignature {
        /// The checksum list's URL.
        sums_url: String,
        /// The signature's URL.
        signature_url: String,
        /// The key ids or fingerprints the signature names as its issuer.
        issuers: Vec<String>,
    },
    /// The signature names a key of the keyring as its maker, but does not
    /// hold for the checksum list: the list or the signature was changed
    /// after signing.
    #[error("{sums_url}: the signature {signature_url} names {signer}, a key of the keyring, as its maker, but does not hold for this checksum list: the list (or the signature) was changed after it was signed")]
    AlteredAfterSigning {
        /// The checksum list's URL.
        sums_url: String,
        /// The signature's URL.
        signature_url: String,
        /// The fingerprint of the keyring's certificate the signature names.
        signer: String,
    },
    /// The key that made the signature had expired when it signed (its
    /// newest self-signature's key expiration time had passed).
    #[error(
        "the signing key {fingerprint} had expired when it signed: it expired at {} and the signature was made at {}",
        utc(*expired_at),
        utc(*signed_at)
    )]
    SigningKeyExpired {
        /// The expired key's fingerprint (the certificate's, or its subkey's).
        fingerprint: String,
        /// When it expired, unix seconds.
        expired_at: u64,
        /// When the signature was made, unix seconds.
        signed_at: u64,
    },
    /// The key that made the signature is revoked.
    #[error(
        "the signing key {fingerprint} is revoked ({reason}, at {}): its signatures are not trusted",
        utc(*revoked_at)
    )]
    SigningKeyRevoked {
        /// The revoked key's fingerprint (the certificate's, or its subkey's).
        fingerprint: String,
        /// The revocation's reason code, as rPGP names it.
        reason: String,
        /// When it was revoked, unix seconds.
        revoked_at: u64,
    },
}

/// Unix seconds as a UTC date and time, `2026-12-01 16:30:00 UTC`.
fn utc(secs: u64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl DownloadError {
    /// A server's answer that is not the one asked for: `NotFound` for 404
    /// and 410 (the file is not there), `Status` for any other.
    pub(crate) fn unexpected_status(url: &str, status: u16) -> Self {
        match status {
            404 | 410 => DownloadError::NotFound {
                url: url.into(),
                status,
            },
            _ => DownloadError::Status {
                url: url.into(),
                status,
            },
        }
    }

    /// Whether trying again may succeed (and resume): a cut, a stall, an
    /// unreachable server, a 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Cut { .. }
            | DownloadError::Stalled { .. }
            | DownloadError::Unreachable { .. } => true,
            DownloadError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

fn listed_names(names: &[String]) -> String {
    if names.is_empty() {
        " (it lists nothing)".to_string()
    } else {
        format!(" (it lists {})", names.join(", "))
    }
}

fn issuer_note(issuers: &[String]) -> String {
    if issuers.is_empty() {
        String::new()
    } else {
        format!(" (it names issuer {})", issuers.join(", "))
    }
}
