//! Importing images from URLs end to end, against a real HTTP server on
//! loopback (`flashrack_testkit::http_files`) and key pairs generated here:
//! a SHA256SUMS signed by a trusted key, a download cut and resumed after a
//! "restart" (a new import call with only the disk carried over), a bad
//! signature that downloads nothing, a digest mismatch and a failed download
//! that leave nothing in the cache, and a file that changed on the server.

use std::error::Error as _;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use flashrack_app::downloads::{
    downloads_dir, import_url, DigestCheck, Keyring, RetryPolicy, SignatureSpec, UrlBmap, UrlImport,
};
use flashrack_app::images::open_cache;
use flashrack_app::AppError;
use flashrack_core::{ByteSize, DigestSource, Sha256Digest};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;
use pgp::composed::{
    ArmorOptions, DetachedSignature, EncryptionCaps, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::{KeyDetails, Password};

const SIZE: usize = 6 << 20;

fn key_pair(user: &str) -> SignedSecretKey {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(user.into());
    params
        .build()
        .unwrap()
        .generate(rand08::thread_rng())
        .unwrap()
}

fn sign(key: &SignedSecretKey, data: &[u8]) -> Vec<u8> {
    DetachedSignature::sign_binary_data(
        rand08::thread_rng(),
        &key.primary_key,
        &Password::empty(),
        HashAlgorithm::Sha256,
        data,
    )
    .unwrap()
    .to_armored_bytes(ArmorOptions::default())
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn policy(tries: u32) -> RetryPolicy {
    RetryPolicy {
        tries,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(30),
    }
}

/// A vendor's download page: the image (gzip), its SHA256SUMS and the
/// list's signature by `vendor`; the operator's keyring trusts `trusted`.
struct Vendor {
    server: FileServer,
    raw: Vec<u8>,
    file: Vec<u8>,
}

async fn vendor(
    vendor: &SignedSecretKey,
    listed: Option<Sha256Digest>,
    behaviour: Behaviour,
) -> Vendor {
    let raw = image_bytes(SIZE, 11, 64 << 10);
    let file = gzip(&raw);
    let digest = listed.unwrap_or_else(|| Sha256Digest::of(&file));
    let sums = format!(
        "{}  other.img.gz\n{}  image.img.gz\n",
        Sha256Digest::of(b"other"),
        digest
    );
    let server = FileServer::start().await;
    server.serve(
        "/image.img.gz",
        Served::new(file.clone(), "img-1").behaving(behaviour),
    );
    server.serve(
        "/SHA256SUMS",
        Served::new(sums.clone().into_bytes(), "sums-1"),
    );
    server.serve(
        "/SHA256SUMS.gpg",
        Served::new(sign(vendor, sums.as_bytes()), "sig-1"),
    );
    Vendor { server, raw, file }
}

fn keyring(dir: &Path, key: &SignedSecretKey) -> std::path::PathBuf {
    let path = dir.join("vendor.asc");
    std::fs::write(
        &path,
        SignedPublicKey::from(key.clone())
            .to_armored_bytes(ArmorOptions::default())
            .unwrap(),
    )
    .unwrap();
    path
}

fn signed_request(v: &Vendor, keyring: &Path) -> UrlImport {
    UrlImport {
        check: DigestCheck::Sums {
            url: v.server.url("/SHA256SUMS"),
            signature: Some(SignatureSpec {
                url: v.server.url("/SHA256SUMS.gpg"),
                keyring: Keyring::File(keyring.to_path_buf()),
            }),
        },
        ..UrlImport::new(v.server.url("/image.img.gz"), ByteSize(1 << 40))
    }
}

fn downloads_left(data_dir: &Path) -> usize {
    std::fs::read_dir(downloads_dir(data_dir)).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_signed_import_cut_by_a_restart_resumes_and_keeps_its_provenance() {
    let key = key_pair("Vendor <release@example.invalid>");
    let v = vendor(&key, None, Behaviour::CutFirstAfter(SIZE / 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let keyring = keyring(dir.path(), &key);
    let cache = open_cache(&data_dir).unwrap();
    let request = signed_request(&v, &keyring);

    // One try: the cut ends the import, as a restart of flashrack would.
    let error = import_url(&cache, &data_dir, &request, policy(1), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, AppError::Download { .. }), "{error:#}");
    assert!(
        cache.list().unwrap().is_empty(),
        "nothing in the cache after a cut"
    );
    assert_eq!(
        downloads_left(&data_dir),
        2,
        "the partial download and its state stay"
    );

    // A new cache handle: only the disk carries over.
    let cache = open_cache(&data_dir).unwrap();
    let outcome = import_url(&cache, &data_dir, &request, policy(1), |_| {})
        .await
        .unwrap();
    let image = &outcome.image;
    assert_eq!(image.sha256(), Sha256Digest::of(&v.raw));
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(&v.file));
    assert_eq!(image.meta.original_name, "image.img.gz");
    assert_eq!(std::fs::read(&image.path).unwrap(), v.raw);
    let requests = v.server.requests_for("/image.img.gz");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", SIZE / 4).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"img-1\""));

    let provenance = image.meta.provenance.clone().expect("a provenance");
    assert_eq!(provenance.url, request.url);
    assert_eq!(provenance.etag.as_deref(), Some("\"img-1\""));
    match &provenance.digest_source {
        DigestSource::Sums {
            file_name,
            sha256,
            signature: Some(check),
            ..
        } => {
            assert_eq!(file_name, "image.img.gz");
            assert_eq!(*sha256, Sha256Digest::of(&v.file));
            assert_eq!(check.signer_fingerprint, format!("{:X}", key.fingerprint()));
        }
        other => panic!("{other:?}"),
    }
    // The provenance is kept with the image, and read back.
    let again = cache.get(&image.sha256()).unwrap().unwrap();
    assert_eq!(again.meta.provenance, Some(provenance.clone()));
    assert_eq!(downloads_left(&data_dir), 0, "the partial download is gone");

    // The same image imported again from a mirror, unchecked, proves less:
    // the image keeps saying it was checked against the signed list.
    // Before, the unchecked import's provenance replaced it.
    v.server
        .serve("/mirror/image.img", Served::new(v.raw.clone(), "m-1"));
    let mirror = UrlImport::new(v.server.url("/mirror/image.img"), ByteSize(1 << 40));
    let outcome = import_url(&cache, &data_dir, &mirror, policy(1), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.image.meta.provenance, Some(provenance.clone()));
    let kept = cache.get(&image.sha256()).unwrap().unwrap();
    assert_eq!(kept.meta.provenance, Some(provenance));
}

#[tokio::test]
async fn a_signature_by_an_untrusted_key_downloads_nothing_and_caches_nothing() {
    let vendor_key = key_pair("Mallory <m@example.invalid>");
    let trusted = key_pair("Vendor <release@example.invalid>");
    let v = vendor(&vendor_key, None, Behaviour::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let keyring = keyring(dir.path(), &trusted);
    let cache = open_cache(&data_dir).unwrap();
    let error = import_url(
        &cache,
        &data_dir,
        &signed_request(&v, &keyring),
        policy(1),
        |_| {},
    )
    .await
    .unwrap_err();
    let AppError::Download { source, .. } = &error else {
        panic!("{error:#}");
    };
    assert!(
        matches!(
            **source,
            flashrack_download::DownloadError::BadSignature { .. }
        ),
        "{source}"
    );
    assert!(
        v.server.requests_for("/image.img.gz").is_empty(),
        "the image was not asked for"
    );
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(downloads_left(&data_dir), 0);
}

#[tokio::test]
async fn a_digest_mismatch_leaves_nothing_in_the_cache_and_no_partial_download() {
    let key = key_pair("Vendor <release@example.invalid>");
    let v = vendor(
        &key,
        Some(Sha256Digest::of(b"not the image")),
        Behaviour::Honest,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let keyring = keyring(dir.path(), &key);
    let cache = open_cache(&data_dir).unwrap();
    let error = import_url(
        &cache,
        &data_dir,
        &signed_request(&v, &keyring),
        policy(1),
        |_| {},
    )
    .await
    .unwrap_err();
    let AppError::Import { source, .. } = &error else {
        panic!("{error:#}");
    };
    assert!(
        matches!(
            **source,
            flashrack_image::ImageError::ChecksumMismatch { .. }
        ),
        "{source}"
    );
    assert!(cache.list().unwrap().is_empty());
    assert!(std::fs::read_dir(cache.dir().join("images"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(cache.dir().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(
        downloads_left(&data_dir),
        0,
        "wrong bytes are not kept to resume"
    );
}

#[tokio::test]
async fn a_download_that_fails_midway_never_leaves_a_truncated_image() {
    // The server stalls halfway on every try: the import ends with the
    // stall, and the pass must not take the end of the stream for the end
    // of the image.
    let raw = image_bytes(SIZE, 12, 64 << 10);
    let server = FileServer::start().await;
    server.serve(
        "/raw.img",
        Served::new(raw.clone(), "r1").behaving(Behaviour::StallAt(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let request = UrlImport::new(server.url("/raw.img"), ByteSize(1 << 40));
    let stalling = RetryPolicy {
        stall_timeout: Duration::from_secs(1),
        ..policy(1)
    };
    let error = import_url(&cache, &data_dir, &request, stalling, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, AppError::Download { .. }), "{error:#}");
    assert!(cache.list().unwrap().is_empty(), "no image without its end");

    let missing = UrlImport {
        url: server.url("/missing.img"),
        ..request
    };
    let error = import_url(&cache, &data_dir, &missing, policy(1), |_| {})
        .await
        .unwrap_err();
    assert!(
        error.source().unwrap().to_string().contains("not found"),
        "{error:#}"
    );
    assert!(cache.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_file_changed_on_the_server_is_imported_again_from_the_start() {
    let old = image_bytes(SIZE, 13, 64 << 10);
    let new = image_bytes(SIZE, 14, 64 << 10);
    let server = FileServer::start().await;
    server.serve(
        "/v.img",
        Served::new(old, "v1").behaving(Behaviour::CutFirstAfter(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let request = UrlImport {
        check: DigestCheck::Sha256(Sha256Digest::of(&new)),
        ..UrlImport::new(server.url("/v.img"), ByteSize(1 << 40))
    };
    assert!(import_url(&cache, &data_dir, &request, policy(1), |_| {})
        .await
        .is_err());
    server.serve("/v.img", Served::new(new.clone(), "v2"));
    let outcome = import_url(&cache, &data_dir, &request, policy(1), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&new));
    assert_eq!(
        outcome.image.meta.provenance.unwrap().digest_source,
        DigestSource::Operator {
            sha256: Sha256Digest::of(&new)
        }
    );
    let requests = server.requests_for("/v.img");
    // The cut, the If-Range answered whole (changed), then afresh.
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[1].status, 200);
    assert_eq!(requests[2].range, None);
}

/// A server whose answer to the resume starts at another byte than asked
/// cannot be resumed from: the bytes held are thrown away and the whole file
/// asked for again, without a range, in the same import. Before, the import
/// failed with the partial download kept, so that every later import
/// resumed it and failed the same way, for good.
#[tokio::test]
async fn a_server_that_answers_a_resume_with_the_wrong_range_is_downloaded_again_whole() {
    let raw = image_bytes(SIZE, 16, 64 << 10);
    let server = FileServer::start().await;
    server.serve(
        "/m.img",
        Served::new(raw.clone(), "m1").behaving(Behaviour::MisalignedResume(SIZE / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let request = UrlImport {
        check: DigestCheck::Sha256(Sha256Digest::of(&raw)),
        ..UrlImport::new(server.url("/m.img"), ByteSize(1 << 40))
    };
    let outcome = import_url(&cache, &data_dir, &request, policy(3), |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw));
    let requests = server.requests_for("/m.img");
    // The cut, the resume answered from the wrong byte, then afresh.
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[1].range.is_some(), "{requests:?}");
    assert_eq!(requests[2].range, None, "{requests:?}");
    assert_eq!(downloads_left(&data_dir), 0);
}

/// A server without validators (no `ETag`, no `Last-Modified`) cuts the
/// connection halfway, and its file changes before the next request: the
/// import gets the new file whole, never the old file's first half and the
/// new one's second (what resuming with a bare `Range` gave), and with the
/// old file's digest expected it fails on the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_from_a_server_without_validators_never_imports_two_files_mixed() {
    let old = image_bytes(SIZE, 15, 64 << 10);
    let new = image_bytes(SIZE, 16, 64 << 10);
    let bare = |body: Vec<u8>| Served {
        etag: None,
        last_modified: None,
        ..Served::new(body, "unused")
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    for (name, check) in [
        ("/nv.img", DigestCheck::None),
        (
            "/nv-digest.img",
            DigestCheck::Sha256(Sha256Digest::of(&old)),
        ),
    ] {
        let server = FileServer::start().await;
        server.serve(
            name,
            bare(old.clone()).behaving(Behaviour::CutAtGate(SIZE / 2)),
        );
        let request = UrlImport {
            check,
            ..UrlImport::new(server.url(name), ByteSize(1 << 40))
        };
        let importing = tokio::spawn({
            let (cache, data_dir, request) = (cache.clone(), data_dir.clone(), request.clone());
            async move { import_url(&cache, &data_dir, &request, policy(3), |_| {}).await }
        });
        // Half of the old file is out; the file changes; the cut.
        while server.body_bytes_sent() < (SIZE / 2) as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.serve(name, bare(new.clone()));
        server.open_gate();
        let imported = importing.await.unwrap();
        let mixed = [&old[..SIZE / 2], &new[SIZE / 2..]].concat();
        match &request.check {
            DigestCheck::None => {
                let outcome = imported.unwrap();
                assert_ne!(outcome.image.sha256(), Sha256Digest::of(&mixed), "a mix");
                assert_eq!(outcome.image.sha256(), Sha256Digest::of(&new));
            }
            _ => {
                // The new file whole, checked against the old one's digest.
                let error = imported.unwrap_err();
                let AppError::Import { source, .. } = &error else {
                    panic!("{error:#}");
                };
                assert!(
                    matches!(
                        **source,
                        flashrack_image::ImageError::ChecksumMismatch { .. }
                    ),
                    "{source}"
                );
            }
        }
        let requests = server.requests_for(name);
        assert!(
            requests[1..].iter().all(|r| r.range.is_none()),
            "never resumed with a bare Range: {requests:?}"
        );
    }
    assert_eq!(cache.list().unwrap().len(), 1, "the new file, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_imports_a_url_in_the_background_and_shows_its_progress_and_provenance() {
    let key = key_pair("Vendor <release@example.invalid>");
    let v = vendor(&key, None, Behaviour::Honest).await;
    let app = flashrack_app::testing::spawn_app().await;
    let keyring = String::from_utf8(
        SignedPublicKey::from(key.clone())
            .to_armored_bytes(ArmorOptions::default())
            .unwrap(),
    )
    .unwrap();
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({
                "url": v.server.url("/image.img.gz"),
                "sha256sums": v.server.url("/SHA256SUMS"),
                "signature": v.server.url("/SHA256SUMS.gpg"),
                "keyring": keyring,
            })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["url"], v.server.url("/image.img.gz"));
    // A bad request is refused at once, with the reason.
    let bad = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": v.server.url("/x.img"), "signature": "https://example.invalid/s.gpg" })),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Followed until it is done (each answer is the import's state now).
    let done = loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        let import = list[0].clone();
        match import["state"].as_str() {
            Some("done") => break import,
            Some("failed") => panic!("{import}"),
            _ => tokio::task::yield_now().await,
        }
    };
    assert_eq!(done["held"], v.file.len() as u64);
    assert_eq!(done["checks_first"], "signed_list", "{done}");
    assert_eq!(done["image"], Sha256Digest::of(&v.raw).to_hex());
    assert_eq!(
        done["provenance"]["digest_source"]["signature"]["signer_fingerprint"],
        format!("{:X}", key.fingerprint())
    );
    let image = app
        .get(&format!("/api/v1/images/{}", Sha256Digest::of(&v.raw)))
        .await
        .json();
    assert_eq!(image["provenance"]["url"], v.server.url("/image.img.gz"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_why_a_download_waits_to_try_again_until_bytes_arrive() {
    // The first answer is cut a quarter in: the import waits a second and
    // resumes. While it waits, its view says why and which try comes next
    // (its `error` stays the import's final failure: none); once bytes
    // arrive again, and when it is done, the retry is no longer shown.
    let raw = image_bytes(SIZE, 13, 64 << 10);
    let server = FileServer::start().await;
    server.serve(
        "/raw.img",
        Served::new(raw.clone(), "c1").behaving(Behaviour::CutFirstAfter(SIZE / 4)),
    );
    let app = flashrack_app::testing::spawn_app().await;
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": server.url("/raw.img") })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut waiting = None;
    let done = loop {
        let import = app.get("/api/v1/images/downloads").await.json()[0].clone();
        match import["state"].as_str() {
            Some("done") => break import,
            Some("failed") => panic!("{import}"),
            _ => {}
        }
        if !import["retrying"].is_null() && waiting.is_none() {
            waiting = Some(import.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended: {import}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waiting = waiting.expect("the wait before the second try is shown");
    assert_eq!(waiting["state"], "downloading", "{waiting}");
    assert_eq!(waiting["checks_first"], "none", "{waiting}");
    assert!(waiting["error"].is_null(), "{waiting}");
    let retry = &waiting["retrying"];
    assert_eq!(retry["next_try"], 2, "{waiting}");
    assert_eq!(retry["tries"], 6, "{waiting}");
    assert_eq!(retry["wait_secs"], 1.0, "{waiting}");
    assert!(
        retry["error"]
            .as_str()
            .unwrap()
            .contains("the transfer stopped at 1572864 of"),
        "{waiting}"
    );
    assert_eq!(waiting["held"], (SIZE / 4) as u64, "{waiting}");
    assert!(done["retrying"].is_null(), "{done}");
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(done["image"], Sha256Digest::of(&raw).to_hex());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_imported_from_a_url_over_the_api_gets_a_block_map_like_a_file() {
    // An ext4 file system with a file in it: flashrack reads its block
    // bitmaps and maps what it allocates.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("file"), image_bytes(2 << 20, 41, 4096)).unwrap();
    let path = dir.path().join("ext4.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    flashrack_testkit::run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            root.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&path).unwrap();
    let server = FileServer::start().await;
    server.serve("/ext4.img", Served::new(bytes.clone(), "\"ext4\""));
    let app = flashrack_app::testing::spawn_app().await;
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": server.url("/ext4.img") })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let sha = Sha256Digest::of(&bytes);
    // The map is kept before the import's view says done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        match list[0]["state"].as_str() {
            Some("done") => break,
            Some("failed") => panic!("{}", list[0]),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "never done: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let image = app.get(&format!("/api/v1/images/{sha}")).await.json();
    let map = &image["block_map"];
    assert!(
        map["source"].as_str().is_some_and(|s| s.contains("ext4")),
        "{image}"
    );
    let share = map["mapped_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 0.6, "{map}");
    app.stop().await.unwrap();
}

/// A sparse 1 MiB image as a file and `bmaptool create`'s map of it, and the
/// same map with its first range's checksum replaced (resealed, as a careful
/// forger would).
fn image_and_maps(dir: &Path) -> (Vec<u8>, String, String) {
    let path = dir.join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&path);
    let truth = flashrack_testkit::bmap::bmaptool_create(&path);
    let at = truth.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut lie = truth.clone();
    lie.replace_range(at..at + 64, &"ab".repeat(32));
    (raw, truth.clone(), flashrack_testkit::bmap::reseal(&lie))
}

#[tokio::test]
async fn a_bmap_beside_a_url_or_at_its_own_url_is_checked_in_the_one_pass_and_a_lie_is_refused() {
    use flashrack_image::MapOrigin;
    let dir = tempfile::tempdir().unwrap();
    let (raw, truth, lie) = image_and_maps(dir.path());
    let server = FileServer::start().await;
    server.serve("/good/disk.img", Served::new(raw.clone(), "g"));
    // bmaptool's convention: the extension replaced by .bmap.
    server.serve(
        "/good/disk.bmap",
        Served::new(truth.clone().into_bytes(), "gb"),
    );
    server.serve("/bad/disk.img", Served::new(raw.clone(), "b"));
    server.serve(
        "/bad/disk.img.bmap",
        Served::new(lie.clone().into_bytes(), "bb"),
    );
    server.serve("/maps/lie.bmap", Served::new(lie.into_bytes(), "lb"));
    server.serve("/maps/truth.bmap", Served::new(truth.into_bytes(), "tb"));
    let request = |url: &str, bmap: UrlBmap| UrlImport {
        bmap,
        ..UrlImport::new(server.url(url), ByteSize(1 << 40))
    };

    // A lying map beside the image, and one named by its URL: refused with
    // the map's reason, nothing cached.
    for (what, req) in [
        ("beside", request("/bad/disk.img", UrlBmap::Beside)),
        (
            "by URL",
            request("/good/disk.img", UrlBmap::Url(server.url("/maps/lie.bmap"))),
        ),
    ] {
        let data_dir = dir.path().join(format!("data-{what}"));
        let cache = open_cache(&data_dir).unwrap();
        let error = import_url(&cache, &data_dir, &req, policy(1), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, AppError::Bmap { .. }), "{what}: {error:#}");
        let mut text = error.to_string();
        let mut cause = error.source();
        while let Some(e) = cause {
            text.push_str(&format!(": {e}"));
            cause = e.source();
        }
        assert!(
            text.contains("do not match the bmap's checksum"),
            "{what}: {text}"
        );
        assert!(cache.list().unwrap().is_empty(), "{what}");
    }

    // A true map beside the image (the second name tried) and one by URL:
    // kept with the image from the download's one pass.
    for (what, req, file) in [
        (
            "beside",
            request("/good/disk.img", UrlBmap::Beside),
            "disk.bmap",
        ),
        (
            "by URL",
            request(
                "/good/disk.img",
                UrlBmap::Url(server.url("/maps/truth.bmap")),
            ),
            "truth.bmap",
        ),
    ] {
        let data_dir = dir.path().join(format!("data-ok-{what}"));
        let cache = open_cache(&data_dir).unwrap();
        let outcome = import_url(&cache, &data_dir, &req, policy(1), |_| {})
            .await
            .unwrap();
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw));
        let map = outcome.map.expect("the map checked in the pass");
        assert!(
            matches!(&map.origin, MapOrigin::Bmap { file: f, range_checksums: true, .. } if f == file),
            "{what}: {map:?}"
        );
        assert_eq!(cache.block_map(&outcome.image.sha256()).unwrap(), Some(map));
    }
    // The image was downloaded once per import, the beside map looked up
    // in bmaptool's order (disk.img.bmap first, absent here).
    assert_eq!(server.requests_for("/good/disk.img.bmap").len(), 1);
    assert_eq!(server.requests_for("/good/disk.bmap").len(), 1);

    // No map anywhere: no error, no map from the pass.
    let data_dir = dir.path().join("data-none");
    let cache = open_cache(&data_dir).unwrap();
    server.serve("/plain/disk.img", Served::new(raw.clone(), "p"));
    let outcome = import_url(
        &cache,
        &data_dir,
        &request("/plain/disk.img", UrlBmap::Beside),
        policy(1),
        |_| {},
    )
    .await
    .unwrap();
    assert!(outcome.map.is_none());

    // A server that answers a missing file with a page of its own (200 and
    // HTML, a "soft 404") has no map beside the image either: the image is
    // imported, no map from the pass. Before, the page was refused as a
    // malformed bmap and the image could not be imported from that server.
    // The same page sent as `text/html` (as most servers send it) is no map
    // there either: before, the downloader's refusal of a web page failed
    // the whole import, for a map the operator never named.
    for (dir_name, content_type) in [("soft", None), ("html", Some("text/html; charset=utf-8"))] {
        let data_dir = dir.path().join(format!("data-{dir_name}"));
        let cache = open_cache(&data_dir).unwrap();
        server.serve(
            &format!("/{dir_name}/disk.img"),
            Served::new(raw.clone(), dir_name),
        );
        let page = b"<!doctype html><html><body><h1>Not found</h1></body></html>".to_vec();
        for (at, name) in [("p1", "disk.img.bmap"), ("p2", "disk.bmap")] {
            let served = Served::new(page.clone(), at);
            let served = match content_type {
                Some(kind) => served.typed(kind),
                None => served,
            };
            server.serve(&format!("/{dir_name}/{name}"), served);
        }
        let outcome = import_url(
            &cache,
            &data_dir,
            &request(&format!("/{dir_name}/disk.img"), UrlBmap::Beside),
            policy(1),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw), "{dir_name}");
        assert!(outcome.map.is_none(), "{dir_name}");
    }
}

/// Follows import `index` of the station's download list until it ends;
/// answers its view.
async fn download_ended(app: &flashrack_app::testing::TestApp, index: usize) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        if matches!(list[index]["state"].as_str(), Some("done" | "failed")) {
            return list[index].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_a_bmap_url_checks_it_in_the_one_pass_and_refuses_a_lie() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, truth, lie) = image_and_maps(dir.path());
    let sha = Sha256Digest::of(&raw);
    let server = FileServer::start().await;
    server.serve("/disk.img", Served::new(raw.clone(), "d"));
    server.serve("/maps/lie.bmap", Served::new(lie.into_bytes(), "lb"));
    server.serve("/maps/truth.bmap", Served::new(truth.into_bytes(), "tb"));
    let app = flashrack_app::testing::spawn_app().await;

    // Not a URL the station fetches, or not text: 400 with the reason,
    // nothing started.
    for bad in [
        serde_json::json!("ftp://h.invalid/disk.bmap"),
        serde_json::json!("disk.bmap"),
        serde_json::json!(42),
    ] {
        let answer = app
            .post(
                "/api/v1/images/import-url",
                Some(serde_json::json!({ "url": server.url("/disk.img"), "bmap": bad })),
            )
            .await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        if bad.is_string() {
            assert!(
                answer.body.contains("bmap must be an http or https URL"),
                "{}",
                answer.body
            );
        }
    }
    // A map and no map at once, or a no_bmap that is not a boolean: 400,
    // nothing started.
    for (no_bmap, said) in [
        (serde_json::json!(true), "give bmap or no_bmap, not both"),
        (serde_json::json!("yes"), "no_bmap"),
    ] {
        let answer = app
            .post(
                "/api/v1/images/import-url",
                Some(serde_json::json!({
                    "url": server.url("/disk.img"),
                    "bmap": server.url("/maps/truth.bmap"),
                    "no_bmap": no_bmap,
                })),
            )
            .await;
        assert_eq!(answer.status, 400, "{no_bmap}: {}", answer.body);
        assert!(answer.body.contains(said), "{said:?} in {}", answer.body);
    }
    assert_eq!(
        app.get("/api/v1/images/downloads").await.json(),
        serde_json::json!([])
    );

    // A map that lies: the import fails with the map's reason and nothing
    // is cached.
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({
                "url": server.url("/disk.img"),
                "bmap": server.url("/maps/lie.bmap"),
            })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let view = download_ended(&app, 0).await;
    assert_eq!(view["state"], "failed", "{view}");
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("lie.bmap"), "{view}");
    assert!(error.contains("do not match the bmap's checksum"), "{view}");
    assert_eq!(app.get(&format!("/api/v1/images/{sha}")).await.status, 404);

    // The true map: kept with the image from the download's pass, and the
    // image's view says where it came from.
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({
                "url": server.url("/disk.img"),
                "bmap": server.url("/maps/truth.bmap"),
            })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let view = download_ended(&app, 0).await;
    assert_eq!(view["state"], "done", "{view}");
    let image = app.get(&format!("/api/v1/images/{sha}")).await.json();
    let map = &image["block_map"];
    assert!(
        map["source"]
            .as_str()
            .is_some_and(|s| s.contains("truth.bmap")),
        "{image}"
    );
    // Each map was fetched once, and nothing was looked for beside the
    // image when a map was named.
    assert_eq!(server.requests_for("/maps/lie.bmap").len(), 1);
    assert_eq!(server.requests_for("/maps/truth.bmap").len(), 1);
    assert!(server.requests_for("/disk.img.bmap").is_empty());
    assert!(server.requests_for("/disk.bmap").is_empty());
    app.stop().await.unwrap();
}

#[test]
fn bmap_urls_beside_follow_bmaptools_convention() {
    assert_eq!(
        flashrack_app::downloads::bmap_urls_beside("https://h.invalid/a/disk.img.xz?sig=1#x"),
        vec![
            "https://h.invalid/a/disk.img.xz.bmap",
            "https://h.invalid/a/disk.img.bmap",
            "https://h.invalid/a/disk.bmap",
        ]
    );
    assert!(flashrack_app::downloads::bmap_urls_beside("https://h.invalid/").is_empty());
}

/// An import whose expected digest names an image the cache holds (its raw
/// sha256, or the sha256 of the compressed file it was imported from) asks
/// the server for nothing. Before, the whole file was downloaded again to
/// find it was cached already.
#[tokio::test]
async fn an_image_the_expected_digest_names_in_the_cache_is_not_downloaded_again() {
    let raw = image_bytes(SIZE, 17, 64 << 10);
    let file = gzip(&raw);
    let server = FileServer::start().await;
    server.serve("/os.img.gz", Served::new(file.clone(), "g1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let first = UrlImport {
        check: DigestCheck::Sha256(Sha256Digest::of(&file)),
        ..UrlImport::new(server.url("/os.img.gz"), ByteSize(1 << 40))
    };
    let outcome = import_url(&cache, &data_dir, &first, policy(1), |_| {})
        .await
        .unwrap();
    assert!(!outcome.already_cached());
    // Asked again, from a mirror that would answer 404, by either digest.
    for expected in [Sha256Digest::of(&file), Sha256Digest::of(&raw)] {
        let again = UrlImport {
            check: DigestCheck::Sha256(expected),
            bmap: flashrack_app::downloads::UrlBmap::NotWanted,
            ..UrlImport::new(server.url("/mirror/os.img.gz"), ByteSize(1 << 40))
        };
        let outcome = import_url(&cache, &data_dir, &again, policy(1), |_| {})
            .await
            .unwrap();
        assert!(outcome.already_cached());
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw));
    }
    assert!(server.requests_for("/mirror/os.img.gz").is_empty());
    assert_eq!(server.requests_for("/os.img.gz").len(), 1);
    // The provenance that proved as much is kept: the download the bytes
    // came from, with its ETag (not a mirror never asked).
    let kept = cache.get(&Sha256Digest::of(&raw)).unwrap().unwrap();
    let provenance = kept.meta.provenance.unwrap();
    assert_eq!(provenance.url, server.url("/os.img.gz"));
    assert_eq!(provenance.etag.as_deref(), Some("\"g1\""), "{provenance:?}");

    // An image imported from a file (no provenance), asked for by a URL
    // whose expected digest names it: not downloaded, and what that import
    // proved of it is kept with it (before: nothing, and the downloads
    // list showed no origin).
    let other = image_bytes(SIZE, 18, 64 << 10);
    let local = dir.path().join("local.img");
    std::fs::write(&local, &other).unwrap();
    cache
        .import(&local, flashrack_image::ImportOptions::default())
        .unwrap();
    let by_url = UrlImport {
        check: DigestCheck::Sha256(Sha256Digest::of(&other)),
        bmap: flashrack_app::downloads::UrlBmap::NotWanted,
        ..UrlImport::new(server.url("/vendor/local.img"), ByteSize(1 << 40))
    };
    let outcome = import_url(&cache, &data_dir, &by_url, policy(1), |_| {})
        .await
        .unwrap();
    assert!(outcome.already_cached());
    let provenance = outcome.image.meta.provenance.expect("recorded");
    assert_eq!(provenance.url, server.url("/vendor/local.img"));
    assert!(
        matches!(provenance.digest_source, DigestSource::Operator { .. }),
        "{provenance:?}"
    );
    assert!(server.requests_for("/vendor/local.img").is_empty());
}
