//! Fetching an image against a real HTTP server on loopback that this test
//! starts: ranges honoured or ignored, a connection cut halfway, a wrong
//! length, bytes that are not the image, a refused token. The client under
//! test is the real one, over real sockets.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flashrack_core::Sha256Digest;
use flashrack_fleet::paths;
use flashrack_fleet_client::{ClientError, FetchError, HubClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Serves the image, honouring `Range`.
    Honest,
    /// Declares the whole answer, sends this many bytes of the body, and
    /// closes the connection.
    CutAfter(usize),
    /// Declares an image this many bytes longer than it is.
    LongerBy(u64),
    /// Serves the image with one byte changed at this offset.
    CorruptAt(usize),
    /// Ignores `Range`: always the whole image, `200`.
    IgnoresRange,
    /// Refuses the token.
    RefusesToken,
}

/// What the server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Each request's `Range` header (`None`: no range asked).
    ranges: Vec<Option<String>>,
    /// Each request's `Authorization` header.
    auth: Vec<Option<String>>,
    /// Each request's path.
    paths: Vec<String>,
}

struct Server {
    url: url::Url,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    async fn start(image: Vec<u8>, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let image = Arc::new(image);
        tokio::spawn({
            let (mode, seen) = (mode.clone(), seen.clone());
            async move {
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    let mode = *mode.lock().unwrap();
                    tokio::spawn(serve(socket, image.clone(), mode, seen.clone()));
                }
            }
        });
        Self { url, mode, seen }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().ranges.clone()
    }
}

/// Answers one request (one per connection: `Connection: close`).
async fn serve(
    mut socket: tokio::net::TcpStream,
    image: Arc<Vec<u8>>,
    mode: Mode,
    seen: Arc<Mutex<Seen>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let range = header("range");
    {
        let mut seen = seen.lock().unwrap();
        seen.ranges.push(range.clone());
        seen.auth.push(header("authorization"));
        seen.paths.push(path);
    }
    if mode == Mode::RefusesToken {
        let body = r#"{"error":"unknown station token"}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(answer.as_bytes()).await;
        return;
    }
    let mut data = image.as_ref().clone();
    if let Mode::CorruptAt(offset) = mode {
        data[offset] ^= 0x5a;
    }
    let total = data.len() as u64
        + match mode {
            Mode::LongerBy(n) => n,
            _ => 0,
        };
    let start = match (&range, mode) {
        (Some(range), m) if m != Mode::IgnoresRange => range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok()),
        _ => None,
    };
    let (status, body_from) = match start {
        Some(start) => ("206 Partial Content", start),
        None => ("200 OK", 0),
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n",
        total - body_from as u64
    );
    if start.is_some() {
        answer.push_str(&format!(
            "content-range: bytes {body_from}-{}/{total}\r\n",
            total - 1
        ));
    }
    answer.push_str("\r\n");
    if socket.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let body = &data[body_from..];
    let body = match mode {
        Mode::CutAfter(n) => &body[..n.min(body.len())],
        _ => body,
    };
    let _ = socket.write_all(body).await;
    let _ = socket.flush().await;
    // Dropping the socket closes the connection: after a cut, mid-body.
}

/// A test image: not all the same byte, so that an offset mistake shows.
fn image(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn client(server: &Server) -> HubClient {
    HubClient::new(&server.url, "lab-a", "s3cret-token-of-lab-a").unwrap()
}

fn partial(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("image.part")
}

const SIZE: usize = 3 << 20;

#[tokio::test]
async fn a_fetched_image_is_verified_and_holds_exactly_the_images_bytes() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let mut reported = 0;
    let fetched = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |held| reported = held)
        .await
        .unwrap();
    assert_eq!(fetched.resumed_from, 0);
    assert_eq!(fetched.received, SIZE as u64);
    assert_eq!(reported, SIZE as u64);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.ranges, vec![None], "a fresh fetch asks for no range");
    assert_eq!(
        seen.auth,
        vec![Some("Bearer s3cret-token-of-lab-a".to_string())]
    );
    assert_eq!(
        seen.paths,
        vec![format!("{}/{}", paths::IMAGES, sha.to_hex())]
    );
}

#[tokio::test]
async fn a_connection_cut_halfway_keeps_the_bytes_and_the_next_fetch_asks_only_for_the_rest() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let half = SIZE / 2 + 12_345;
    let server = Server::start(data.clone(), Mode::CutAfter(half)).await;
    let dir = tempfile::tempdir().unwrap();
    let error = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    match &error {
        FetchError::Interrupted { held, size, .. } => {
            assert_eq!(*held, half as u64);
            assert_eq!(*size, SIZE as u64);
        }
        other => panic!("expected an interrupted fetch, got {other:?}"),
    }
    assert!(error.is_transient());
    assert_eq!(
        std::fs::read(partial(&dir)).unwrap(),
        data[..half],
        "the partial file holds exactly the bytes that arrived"
    );

    server.set_mode(Mode::Honest);
    let fetched = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap();
    assert_eq!(fetched.resumed_from, half as u64);
    assert_eq!(
        fetched.received,
        (SIZE - half) as u64,
        "only the rest was sent"
    );
    assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={half}-"))]);
}

#[tokio::test]
async fn a_partial_file_left_by_an_earlier_process_is_resumed_and_checked_whole() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let held = 1_000_000;
    std::fs::write(partial(&dir), &data[..held]).unwrap();
    let fetched = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap();
    assert_eq!(fetched.resumed_from, held as u64);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
    assert_eq!(server.ranges(), vec![Some(format!("bytes={held}-"))]);
}

#[tokio::test]
async fn a_partial_file_with_wrong_bytes_fails_the_digest_and_is_removed() {
    // As a power cut can leave it: the right length, not the right bytes.
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let mut stale = data[..SIZE / 3].to_vec();
    stale[100] ^= 1;
    std::fs::write(partial(&dir), &stale).unwrap();
    let error = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::DigestMismatch { expected, .. } if expected == sha),
        "{error:?}"
    );
    assert!(
        !partial(&dir).exists(),
        "bytes that are not the image are not kept"
    );
    // The next try starts afresh and succeeds.
    let fetched = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap();
    assert_eq!(fetched.resumed_from, 0);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
}

#[tokio::test]
async fn bytes_that_are_not_the_image_asked_for_are_refused_and_not_kept() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::CorruptAt(SIZE - 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let error = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    let mut corrupt = data.clone();
    corrupt[SIZE - 10] ^= 0x5a;
    match error {
        FetchError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, sha);
            assert_eq!(
                actual,
                Sha256Digest::of(&corrupt),
                "the digest of what was received"
            );
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!partial(&dir).exists());
}

#[tokio::test]
async fn an_image_of_another_length_is_refused_before_a_byte_is_kept() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::LongerBy(4096)).await;
    let dir = tempfile::tempdir().unwrap();
    let error = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::WrongLength { expected, served } if expected == SIZE as u64 && served == SIZE as u64 + 4096),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(
        std::fs::metadata(partial(&dir))
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );

    // Resuming against the same hub: the declared total is checked too.
    std::fs::write(partial(&dir), &data[..1000]).unwrap();
    let error = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::WrongLength { .. }), "{error:?}");
    assert_eq!(
        std::fs::read(partial(&dir)).unwrap(),
        data[..1000],
        "what was held is kept"
    );
}

#[tokio::test]
async fn a_hub_that_ignores_the_range_is_fetched_again_from_the_start() {
    let data = image(SIZE);
    let sha = Sha256Digest::of(&data);
    let server = Server::start(data.clone(), Mode::IgnoresRange).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(partial(&dir), &data[..5000]).unwrap();
    let fetched = client(&server)
        .fetch_image(sha, SIZE as u64, &partial(&dir), |_| {})
        .await
        .unwrap();
    assert_eq!(fetched.received, SIZE as u64);
    assert_eq!(std::fs::read(&fetched.path).unwrap(), data);
    assert_eq!(server.ranges(), vec![Some("bytes=5000-".to_string())]);
}

#[tokio::test]
async fn a_refused_token_is_said_plainly_and_is_not_worth_retrying() {
    let data = image(4096);
    let server = Server::start(data.clone(), Mode::RefusesToken).await;
    let dir = tempfile::tempdir().unwrap();
    let error = client(&server)
        .fetch_image(Sha256Digest::of(&data), 4096, &partial(&dir), |_| {})
        .await
        .unwrap_err();
    match &error {
        FetchError::Client(ClientError::Refused { status, message }) => {
            assert_eq!(*status, 401);
            assert_eq!(message, "unknown station token");
        }
        other => panic!("expected a refused token, got {other:?}"),
    }
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_hub_that_is_down_is_unreachable_and_worth_retrying() {
    // A port nothing listens on: bound, then closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let client = HubClient::new(&url, "lab-a", "s3cret-token-of-lab-a").unwrap();
    let error = client
        .orders(None, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Unreachable(_)), "{error:?}");
    assert!(error.is_transient());
}
