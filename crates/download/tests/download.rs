//! Downloads from a real HTTP server on loopback that the test starts
//! (`flashrack_testkit::http_files`): a connection cut halfway resumed with
//! `Range` and `If-Range`, a restart resumed from the partial file, a file
//! that changed meanwhile, a server that declares more than it has, a stall,
//! a slow server, a 404 and a TLS failure. The client is the real one.

use std::time::Duration;

use bytes::Bytes;
use flashrack_download::{DownloadError, Downloaded, Downloader, Partial, RetryPolicy};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const SIZE: usize = 3 << 20;

fn policy(tries: u32) -> RetryPolicy {
    RetryPolicy {
        tries,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(30),
    }
}

/// Downloads `url` into `partial`, collecting every byte the sink is sent.
async fn download(
    policy: RetryPolicy,
    url: &str,
    partial: &Partial,
) -> (Result<Downloaded, DownloadError>, Vec<u8>) {
    let downloader = Downloader::new(policy).unwrap();
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let collect = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(piece) = rx.recv().await {
            all.extend_from_slice(&piece);
        }
        all
    });
    let result = downloader.download(url, partial, &tx, &mut |_| {}).await;
    drop(tx);
    (result, collect.await.unwrap())
}

#[tokio::test]
async fn a_connection_cut_halfway_is_resumed_with_a_range_and_if_range() {
    let body = image_bytes(SIZE, 1, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/a.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::CutFirstAfter(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/a.img");
    let partial = Partial::in_dir(dir.path(), &url);
    let (result, got) = download(policy(3), &url, &partial).await;
    let done = result.unwrap();
    assert!(got == body, "the bytes sent on are the file's");
    assert_eq!(done.size, SIZE as u64);
    assert_eq!(done.etag.as_deref(), Some("\"v1\""));
    let requests = server.requests_for("/a.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", SIZE / 2).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(requests[1].status, 206);
    assert_eq!(
        server.body_bytes_sent(),
        SIZE as u64,
        "nothing was fetched twice"
    );
}

#[tokio::test]
async fn a_download_stopped_by_a_restart_resumes_from_its_partial_file() {
    let body = image_bytes(SIZE, 2, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/b.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::CutFirstAfter(SIZE / 3)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/b.img");
    // One try: the cut ends this run, as a restart of flashrack would.
    let (result, first) = download(policy(1), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, DownloadError::Cut { held, .. } if held == (SIZE / 3) as u64),
        "{error}"
    );
    assert!(first == body[..SIZE / 3]);
    // A new client, a new partial handle: only what is on disk carries over.
    let (result, second) = download(policy(1), &url, &Partial::in_dir(dir.path(), &url)).await;
    let done = result.unwrap();
    assert!(
        second == body,
        "the held bytes are sent again first, then the rest"
    );
    assert_eq!(done.resumed_from, (SIZE / 3) as u64);
    assert_eq!(done.received, (SIZE - SIZE / 3) as u64);
    let requests = server.requests_for("/b.img");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", SIZE / 3).as_str())
    );
    assert_eq!(server.body_bytes_sent(), SIZE as u64);
}

/// A server that gives no validator (no `ETag`, no `Last-Modified`): what
/// a run held is not resumed by the next, since nothing says the server's
/// file is still the same; the file changed meanwhile is downloaded whole,
/// never half old and half new. Before, the second run resumed with a bare
/// `Range` and the result was the old file's first third and the new file's
/// rest.
#[tokio::test]
async fn a_partial_download_without_validators_is_not_resumed_after_a_restart() {
    let old = image_bytes(SIZE, 11, 4096);
    let new = image_bytes(SIZE, 12, 4096);
    let bare = |body: Vec<u8>| Served {
        etag: None,
        last_modified: None,
        ..Served::new(body, "unused")
    };
    let server = FileServer::start().await;
    server.serve(
        "/nv.img",
        bare(old.clone()).behaving(Behaviour::CutFirstAfter(SIZE / 3)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/nv.img");
    let (result, _) = download(policy(1), &url, &Partial::in_dir(dir.path(), &url)).await;
    assert!(
        matches!(result, Err(DownloadError::Cut { .. })),
        "{result:?}"
    );
    // The file changes on the server; flashrack starts again.
    server.serve("/nv.img", bare(new.clone()));
    let (result, got) = download(policy(1), &url, &Partial::in_dir(dir.path(), &url)).await;
    let done = result.unwrap();
    assert!(got == new, "the new file whole, nothing of the old one");
    assert_eq!(done.resumed_from, 0);
    let requests = server.requests_for("/nv.img");
    assert_eq!(requests.last().unwrap().range, None, "{requests:?}");
}

/// A server that gives no validator cuts the connection halfway and has
/// another file by the next request: the cut is not resumed with a bare
/// `Range` (the old file's first half and the new file's second), but the
/// whole file is asked for again from byte 0, and the bytes held are found
/// to differ from what comes: the file changed ([`DownloadError::Changed`],
/// which the caller answers by starting afresh), and not a byte of the new
/// file was sent on after the old one's. An unchanged file is read again
/// past the bytes held and whole. Before, the second request was a bare
/// `Range: bytes=<half>-` and the download ended with a mix.
#[tokio::test]
async fn a_cut_without_validators_is_asked_again_from_byte_0_and_never_mixes_two_files() {
    let old = image_bytes(SIZE, 13, 4096);
    let new = image_bytes(SIZE, 14, 4096);
    let bare = |body: Vec<u8>| Served {
        etag: None,
        last_modified: None,
        ..Served::new(body, "unused")
    };
    let server = FileServer::start().await;
    server.serve(
        "/cut.img",
        bare(old.clone()).behaving(Behaviour::CutAtGate(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/cut.img");
    let partial = Partial::in_dir(dir.path(), &url);
    let downloading = tokio::spawn({
        let (url, partial) = (url.clone(), partial.clone());
        async move { download(policy(3), &url, &partial).await }
    });
    // The first half is out; the file changes on the server; the
    // connection is cut.
    while server.body_bytes_sent() < (SIZE / 2) as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.serve("/cut.img", bare(new.clone()));
    server.open_gate();
    let (result, got) = downloading.await.unwrap();
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::Changed { .. }), "{error}");
    assert!(
        got == old[..SIZE / 2],
        "nothing of the new file after the old one's half"
    );
    let requests = server.requests_for("/cut.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range, None,
        "asked again from byte 0: {requests:?}"
    );
    assert_eq!(requests[1].if_range, None);

    // The same file, cut and asked for again: read past the bytes held,
    // and whole.
    let body = image_bytes(SIZE, 15, 4096);
    server.serve(
        "/same.img",
        bare(body.clone()).behaving(Behaviour::CutFirstAfter(SIZE / 2)),
    );
    let url = server.url("/same.img");
    let (result, got) = download(policy(3), &url, &Partial::in_dir(dir.path(), &url)).await;
    let done = result.unwrap();
    assert!(got == body, "the file whole, once");
    assert_eq!(done.size, SIZE as u64);
    let requests = server.requests_for("/same.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range, None, "{requests:?}");
}

#[tokio::test]
async fn a_file_that_changed_on_the_server_is_not_resumed() {
    let old = image_bytes(SIZE, 3, 4096);
    let new = image_bytes(SIZE, 4, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/c.img",
        Served::new(old, "v1").behaving(Behaviour::CutFirstAfter(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/c.img");
    let partial = Partial::in_dir(dir.path(), &url);
    let (result, _) = download(policy(1), &url, &partial).await;
    assert!(matches!(result, Err(DownloadError::Cut { .. })));
    server.serve("/c.img", Served::new(new.clone(), "v2"));
    let (result, _) = download(policy(3), &url, &partial).await;
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::Changed { .. }), "{error}");
    let requests = server.requests_for("/c.img");
    assert_eq!(requests[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(
        requests[1].status, 200,
        "the server sent the new file whole"
    );
    // Discarded, the download starts afresh and gets the new file.
    partial.discard().await.unwrap();
    let (result, got) = download(policy(1), &url, &partial).await;
    assert_eq!(result.unwrap().etag.as_deref(), Some("\"v2\""));
    assert!(got == new);
}

#[tokio::test]
async fn a_server_that_ignores_ranges_is_read_past_the_bytes_held() {
    let body = image_bytes(SIZE, 5, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/d.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::CutFirstAfter(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/d.img");
    let partial = Partial::in_dir(dir.path(), &url);
    let (result, _) = download(policy(1), &url, &partial).await;
    assert!(result.is_err());
    server.serve(
        "/d.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::IgnoresRange),
    );
    let (result, got) = download(policy(1), &url, &partial).await;
    result.unwrap();
    assert!(got == body, "the held half is not sent twice");
    assert_eq!(server.requests_for("/d.img")[1].status, 200);
}

/// A resume cut right after its headers (no body byte) is a cut like any
/// other: tried again, and the download ends whole. Before, that second
/// answer ending where the first was cut made the server a liar ("ends at
/// byte N every time") after two answers, and the partial download was
/// thrown away.
#[tokio::test]
async fn a_resume_cut_before_its_first_byte_is_tried_again_not_called_a_lie() {
    let body = image_bytes(SIZE, 8, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/g.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::CutThenEmpty(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/g.img");
    let (result, got) = download(policy(4), &url, &Partial::in_dir(dir.path(), &url)).await;
    result.unwrap();
    assert!(got == body);
    let seen = server.requests_for("/g.img");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[2].range.as_deref(),
        Some(format!("bytes={}-", SIZE / 2).as_str())
    );
}

#[tokio::test]
async fn a_server_that_declares_more_than_it_has_is_caught_lying() {
    let body = image_bytes(SIZE, 6, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/e.img",
        Served::new(body, "v1").behaving(Behaviour::DeclaresMore(4096)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/e.img");
    let (result, _) = download(policy(4), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    match &error {
        DownloadError::WrongLength {
            declared, actual, ..
        } => {
            assert_eq!(*declared, SIZE as u64 + 4096);
            assert!(actual.contains(&SIZE.to_string()), "{error}");
        }
        other => panic!("{other}"),
    }
    assert!(
        error.to_string().contains("lies about the file's length"),
        "{error}"
    );
}

#[tokio::test]
async fn a_stalled_server_is_given_up_after_the_stall_timeout() {
    let body = image_bytes(SIZE, 7, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/f.img",
        Served::new(body, "v1").behaving(Behaviour::StallAt(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/f.img");
    let policy = RetryPolicy {
        stall_timeout: Duration::from_secs(1),
        ..policy(2)
    };
    let (result, got) = download(policy, &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, DownloadError::Stalled { held, secs: 1, .. } if held == (SIZE / 2) as u64),
        "{error}"
    );
    assert_eq!(got.len(), SIZE / 2);
    // The second try asked for the rest, and stalled too.
    let requests = server.requests_for("/f.img");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", SIZE / 2).as_str())
    );
}

#[tokio::test]
async fn a_slow_server_that_keeps_sending_is_not_a_stall() {
    // 16 pieces 250 ms apart: 4 s in all, against a stall timeout of 3 s.
    let body = image_bytes(16 * 16384, 8, 4096);
    let server = FileServer::start().await;
    server.serve(
        "/g.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::Slow {
            piece: 16384,
            pause: Duration::from_millis(250),
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/g.img");
    let policy = RetryPolicy {
        stall_timeout: Duration::from_secs(3),
        ..policy(1)
    };
    let (result, got) = download(policy, &url, &Partial::in_dir(dir.path(), &url)).await;
    result.unwrap();
    assert!(got == body);
}

#[tokio::test]
async fn a_missing_file_is_not_found_at_once() {
    let server = FileServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/nothing.img");
    let (result, _) = download(policy(5), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, DownloadError::NotFound { status: 404, .. }),
        "{error}"
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not tried again");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "nothing to resume is kept: {left:?}");
}

#[tokio::test]
async fn https_to_a_server_that_does_not_speak_tls_is_a_tls_failure() {
    // A server that answers plain HTTP to anything, a TLS greeting included.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://{address}/a.img");
    let (result, _) = download(policy(5), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::Tls { .. }), "{error}");
    assert!(error.to_string().contains("TLS failure"), "{error}");
}

#[tokio::test]
async fn a_whole_file_kept_from_an_earlier_download_is_revalidated_before_it_is_reused() {
    let body = image_bytes(SIZE, 11, 4096);
    let server = FileServer::start().await;
    server.serve("/k.img", Served::new(body.clone(), "v1"));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/k.img");
    let partial = Partial::in_dir(dir.path(), &url);
    // Downloaded whole and kept (as after a refused choice of a zip's file).
    let (result, _) = download(policy(1), &url, &partial).await;
    result.unwrap();
    // The same file, with a newer Last-Modified: the kept bytes are used,
    // after one request for the last byte, and the validators are the
    // server's of now.
    server.serve(
        "/k.img",
        Served {
            last_modified: Some("Wed, 02 Dec 2026 01:00:00 GMT".into()),
            ..Served::new(body.clone(), "v1")
        },
    );
    let (result, got) = download(policy(1), &url, &partial).await;
    let done = result.unwrap();
    assert!(got == body, "the kept bytes are the file's");
    assert_eq!(done.received, 0, "nothing downloaded again");
    assert_eq!(done.etag.as_deref(), Some("\"v1\""));
    assert_eq!(
        done.last_modified.as_deref(),
        Some("Wed, 02 Dec 2026 01:00:00 GMT")
    );
    let requests = server.requests_for("/k.img");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", SIZE - 1).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(requests[1].status, 206);
    assert_eq!(server.body_bytes_sent(), SIZE as u64 + 1);

    // Changed on the server: the kept file is not used.
    server.serve("/k.img", Served::new(image_bytes(SIZE, 12, 4096), "v2"));
    let (result, got) = download(policy(1), &url, &partial).await;
    let error = result.unwrap_err();
    match &error {
        DownloadError::Changed { reason, .. } => {
            assert!(
                reason.contains("\"v1\"") && reason.contains("\"v2\""),
                "{reason}"
            )
        }
        other => panic!("{other}"),
    }
    assert!(got.is_empty(), "no kept byte was sent on");
    // Shorter on the server: not the file kept either.
    partial.discard().await.unwrap();
    server.serve("/k.img", Served::new(body.clone(), "v3"));
    download(policy(1), &url, &partial).await.0.unwrap();
    server.serve("/k.img", Served::new(body[..SIZE / 2].to_vec(), "v3"));
    let error = download(policy(1), &url, &partial).await.0.unwrap_err();
    assert!(matches!(error, DownloadError::Changed { .. }), "{error}");
}

#[tokio::test]
async fn a_kept_whole_file_is_revalidated_by_a_server_that_ignores_ranges_without_reading_it() {
    let body = image_bytes(SIZE, 13, 4096);
    let server = FileServer::start().await;
    server.serve("/r.img", Served::new(body.clone(), "v1"));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/r.img");
    let partial = Partial::in_dir(dir.path(), &url);
    download(policy(1), &url, &partial).await.0.unwrap();
    server.serve(
        "/r.img",
        Served::new(body.clone(), "v1").behaving(Behaviour::IgnoresRange),
    );
    let (result, got) = download(policy(1), &url, &partial).await;
    assert_eq!(result.unwrap().received, 0);
    assert!(got == body);
    assert_eq!(server.requests_for("/r.img")[1].status, 200);
    server.serve(
        "/r.img",
        Served::new(image_bytes(SIZE, 14, 4096), "v2").behaving(Behaviour::IgnoresRange),
    );
    let error = download(policy(1), &url, &partial).await.0.unwrap_err();
    assert!(matches!(error, DownloadError::Changed { .. }), "{error}");
}

/// A server on loopback that answers the `n`-th request (from 0) with
/// `answer(n)`'s head and body, then closes the connection. Returns its
/// address and a count of the requests it answered.
async fn raw_server(
    answer: fn(usize) -> (String, Vec<u8>),
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counted.fetch_add(1, Ordering::SeqCst);
            // The request's head, up to its blank line.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let (answer_head, body) = answer(n);
            let _ = socket.write_all(answer_head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            let _ = socket.shutdown().await;
        }
    });
    (address, count)
}

#[tokio::test]
async fn a_redirect_loop_is_given_up_at_once_and_named() {
    let (address, count) = raw_server(|_| {
        (
            "HTTP/1.1 302 Found\r\nLocation: /loop.img\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string(),
            Vec::new(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{address}/loop.img");
    let (result, _) = download(policy(5), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::Redirects { .. }), "{error}");
    assert!(
        error.to_string().contains("redirects lead nowhere"),
        "{error}"
    );
    // reqwest follows 10 redirects: one try is 11 requests, not 5 tries.
    let asked = count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked <= 11, "the loop is not tried again: {asked} requests");
}

#[tokio::test]
async fn a_resumed_range_that_starts_elsewhere_is_refused_in_words() {
    const LEN: usize = 64 << 10;
    let (address, _) = raw_server(|n| {
        let body = image_bytes(LEN, 9, 4096);
        match n {
            // Half the file, then the connection closes.
            0 => (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\nETag: \"r1\"\r\nConnection: close\r\n\r\n"),
                body[..LEN / 2].to_vec(),
            ),
            // The rest, said to start 7 bytes later than asked.
            _ => {
                let start = LEN / 2 + 7;
                (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{LEN}\r\nETag: \"r1\"\r\nConnection: close\r\n\r\n",
                        LEN - start,
                        LEN - 1
                    ),
                    body[start..].to_vec(),
                )
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{address}/r.img");
    let (result, _) = download(policy(3), &url, &Partial::in_dir(dir.path(), &url)).await;
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::BadRange { .. }), "{error}");
    let words = error.to_string();
    assert!(
        words.contains(&format!(
            "asked from byte {}, got from byte {}",
            LEN / 2,
            LEN / 2 + 7
        )),
        "{words}"
    );
    assert!(!words.contains("Some("), "{words}");
}

#[tokio::test]
async fn a_part_answered_for_the_whole_file_is_not_taken_for_the_whole_file() {
    const LEN: usize = 64 << 10;
    let (address, count) = raw_server(|n| {
        let body = image_bytes(LEN, 10, 4096);
        // Asked for the whole file, the first answer is its first half as a
        // part; the rest is answered to the range asked for it.
        let start = if n == 0 { 0 } else { LEN / 2 };
        let end = if n == 0 { LEN / 2 } else { LEN };
        (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{LEN}\r\nETag: \"p1\"\r\nConnection: close\r\n\r\n",
                end - start,
                end - 1
            ),
            body[start..end].to_vec(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{address}/part.img");
    let (result, got) = download(policy(3), &url, &Partial::in_dir(dir.path(), &url)).await;
    let done = result.unwrap();
    assert_eq!(
        done.size, LEN as u64,
        "the length the Content-Range declares"
    );
    assert!(
        got == image_bytes(LEN, 10, 4096),
        "the whole file, in order"
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A download cut by a restart twice: the second run appends what it gets
/// after the bytes the first held, so the third sends the file whole. The
/// partial file is what a restart trusts: a byte of it out of place is a
/// wrong image (without a digest to check it, imported as such).
#[tokio::test]
async fn a_download_resumed_across_two_restarts_keeps_its_partial_file_in_order() {
    let body = image_bytes(SIZE, 21, 4096);
    let third = SIZE / 3;
    let server = FileServer::start().await;
    server.serve(
        "/r.img",
        Served::new(body.clone(), "r1").behaving(Behaviour::CutFirstAfter(third)),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/r.img");
    let (result, _) = download(policy(1), &url, &Partial::in_dir(dir.path(), &url)).await;
    assert!(matches!(result, Err(DownloadError::Cut { .. })));
    // The second run gets another third, and stalls there.
    server.serve(
        "/r.img",
        Served::new(body.clone(), "r1").behaving(Behaviour::StallAt(2 * third)),
    );
    let stalling = RetryPolicy {
        stall_timeout: Duration::from_millis(300),
        ..policy(1)
    };
    let (result, second) = download(stalling, &url, &Partial::in_dir(dir.path(), &url)).await;
    assert!(
        matches!(result, Err(DownloadError::Stalled { held, .. }) if held == (2 * third) as u64),
        "{result:?}"
    );
    server.serve("/r.img", Served::new(body.clone(), "r1"));
    assert!(second == body[..2 * third]);
    let partial = Partial::in_dir(dir.path(), &url);
    assert!(
        std::fs::read(partial.data_path()).unwrap() == body[..2 * third],
        "the partial file holds the file's first two thirds, in order"
    );
    let (result, last) = download(policy(1), &url, &partial).await;
    result.unwrap();
    assert!(last == body, "the file whole");
}

/// A web page answered for a file (`Content-Type: text/html` with status
/// 200: a portal, a login page, a "file moved" page) is no image, checksum
/// list or signature: refused at once, with nothing kept. Before, an image
/// URL answered so was imported as a raw image of the page's bytes when no
/// digest was given, even under a `.xz` name.
#[tokio::test]
async fn a_web_page_answered_for_a_file_is_refused() {
    let page = b"<!doctype html><title>Sign in</title><p>Please sign in".to_vec();
    let server = FileServer::start().await;
    server.serve(
        "/os.img.xz",
        Served::new(page.clone(), "p1").typed("text/html; charset=utf-8"),
    );
    server.serve("/SHA256SUMS", Served::new(page, "p2").typed("TEXT/HTML"));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/os.img.xz");
    let partial = Partial::in_dir(dir.path(), &url);
    let (result, got) = download(policy(3), &url, &partial).await;
    let error = result.unwrap_err();
    assert!(matches!(error, DownloadError::WebPage { .. }), "{error}");
    assert!(error.to_string().contains("web page"), "{error}");
    assert!(got.is_empty(), "no byte of the page was passed on");
    assert!(!partial.data_path().exists(), "nothing is kept");
    let downloader = Downloader::new(policy(3)).unwrap();
    let error = downloader
        .fetch_small(&server.url("/SHA256SUMS"), "checksum list", 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, DownloadError::WebPage { .. }), "{error}");
    // One request each: a web page is not tried again.
    assert_eq!(server.requests_for("/os.img.xz").len(), 1);
    assert_eq!(server.requests_for("/SHA256SUMS").len(), 1);
}
