//! Zip archives from URLs (issue 14 §1), against a real HTTP server on
//! loopback (`flashrack_testkit::http_files`) and archives the test makes:
//! the archive is downloaded whole into the partial file (resumable as any
//! download: a cut is resumed with a `Range`), its chosen file read as it
//! arrives where its local header gives its sizes, or, where they follow
//! its data (a data descriptor, checked against what arrived), inflated as
//! it arrives or, stored, read up to the descriptor that agrees with it, and
//! checked against the central directory at the end (a descriptor or a
//! directory that disagrees fails it): the only one, or the one named
//! (`zip_entry`); an archive of
//! several files without a name, or with a name it does not hold, is refused
//! with the names of its files and keeps its download (a second try with the
//! right name downloads nothing again); a truncated archive and an entry
//! whose CRC-32 does not match its bytes leave nothing in the cache and no
//! partial download. A stored file made to seem to end early (what reads as
//! its data descriptor inside its data) imports as from a file, through the
//! central directory of the downloaded archive. Over the API too, with its
//! bad requests.

use std::io::{Cursor, Write};
use std::path::Path;

use flashrack_app::downloads::{downloads_dir, import_url, DigestCheck, RetryPolicy, UrlImport};
use flashrack_app::images::open_cache;
use flashrack_app::AppError;
use flashrack_core::{ByteSize, Sha256Digest};
use flashrack_image::{ImageError, ImageFormat, ImportOptions};
use flashrack_testkit::http_files::{Behaviour, FileServer, Served};
use flashrack_testkit::image_bytes;
use flashrack_testkit::zips::{data_descriptor, descriptor_and_directory, streamed_zip};

const MIB: usize = 1 << 20;

fn policy() -> RetryPolicy {
    RetryPolicy {
        tries: 3,
        first_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

/// A zip of `entries` (a name ending in `/` is a directory), each file
/// compressed with `method`.
fn zip_of(entries: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        if name.ends_with('/') {
            writer.add_directory(*name, options).unwrap();
        } else {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
    }
    writer.finish().unwrap().into_inner()
}

fn request(server: &FileServer, path: &str, entry: Option<&str>) -> UrlImport {
    UrlImport {
        zip_entry: entry.map(str::to_string),
        ..UrlImport::new(server.url(path), ByteSize(1 << 40))
    }
}

fn downloads_left(data_dir: &Path) -> usize {
    std::fs::read_dir(downloads_dir(data_dir)).map_or(0, |d| d.count())
}

/// The image error inside an import's error.
fn image_error(error: &AppError) -> &ImageError {
    match error {
        AppError::Import { source, .. } => source,
        other => panic!("not an import error: {other:#}"),
    }
}

#[tokio::test]
async fn a_zip_cut_midway_is_resumed_then_its_one_file_imported_with_its_provenance() {
    let raw = image_bytes(6 * MIB, 61, 64 << 10);
    let archive = zip_of(
        &[("images/", b""), ("images/disk.img", &raw)],
        zip::CompressionMethod::Deflated,
    );
    let server = FileServer::start().await;
    server.serve(
        "/disk.zip",
        Served::new(archive.clone(), "zip-1").behaving(Behaviour::CutFirstAfter(archive.len() / 2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let checked = UrlImport {
        // The digest of the archive as served: checked on the download.
        check: DigestCheck::Sha256(Sha256Digest::of(&archive)),
        ..request(&server, "/disk.zip", None)
    };
    let outcome = import_url(&cache, &data_dir, &checked, policy(), |_| {})
        .await
        .unwrap();
    let image = &outcome.image;
    assert_eq!(image.sha256(), Sha256Digest::of(&raw));
    assert_eq!(std::fs::read(&image.path).unwrap(), raw);
    assert_eq!(image.meta.format, ImageFormat::Zip);
    assert_eq!(image.meta.zip_entry.as_deref(), Some("images/disk.img"));
    assert_eq!(image.meta.original_name, "disk.zip");
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(&archive));
    assert_eq!(image.meta.input_size, archive.len() as u64);
    let provenance = image.meta.provenance.as_ref().unwrap();
    assert_eq!(provenance.url, server.url("/disk.zip"));
    assert_eq!(provenance.etag.as_deref(), Some("\"zip-1\""));
    // The cut, then the rest asked for by range: nothing fetched twice.
    let requests = server.requests_for("/disk.zip");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", archive.len() / 2).as_str())
    );
    assert_eq!(server.body_bytes_sent(), archive.len() as u64);
    assert_eq!(downloads_left(&data_dir), 0, "the partial download is gone");
    assert_eq!(cache.list().unwrap().len(), 1);

    // The raw image's digest is accepted as well as the archive's.
    let again = UrlImport {
        check: DigestCheck::Sha256(Sha256Digest::of(&raw)),
        ..request(&server, "/disk.zip", None)
    };
    let outcome = import_url(&cache, &data_dir, &again, policy(), |_| {})
        .await
        .unwrap();
    assert!(outcome.already_cached());
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw));
}

#[tokio::test]
async fn a_zip_of_several_files_needs_one_named_and_a_wrong_name_lists_them_without_downloading_again(
) {
    let a = image_bytes(2 * MIB, 62, 64 << 10);
    let b = image_bytes(3 * MIB + 512, 63, 64 << 10);
    let archive = zip_of(
        &[("a.img", &a), ("docs/", b""), ("b.img", &b)],
        zip::CompressionMethod::Deflated,
    );
    let server = FileServer::start().await;
    server.serve("/two.zip", Served::new(archive.clone(), "two-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();

    // No name: refused with the files' names (not the directory's).
    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/two.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    match image_error(&error) {
        ImageError::ZipFileCount { files, .. } => assert_eq!(files, &["a.img", "b.img"]),
        other => panic!("{other:?}"),
    }
    let message = flashrack_app::downloads::error_chain(&error);
    assert!(
        message.contains("holds 2 (a.img, b.img)") && message.contains("must be named"),
        "{message}"
    );
    // A name it does not hold: refused with what it holds.
    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/two.zip", Some("c.img")),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    match image_error(&error) {
        ImageError::ZipEntryMissing { entry, files, .. } => {
            assert_eq!(entry, "c.img");
            assert_eq!(files, &["a.img", "b.img"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.list().unwrap().is_empty());
    // The archive is what the server has: its download is kept, and asked
    // about again (its last byte, with If-Range) before it is read again.
    assert_eq!(downloads_left(&data_dir), 2, "the .part and its state");
    let requests = server.requests_for("/two.zip");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={}-", archive.len() - 1).as_str())
    );
    assert_eq!(requests[1].if_range.as_deref(), Some("\"two-1\""));
    assert_eq!(requests[1].status, 206);

    // The right name: imported from the download already held, its
    // provenance what the server says now (a newer Last-Modified, the same
    // file by its ETag).
    server.serve(
        "/two.zip",
        Served {
            last_modified: Some("Wed, 02 Dec 2026 01:00:00 GMT".into()),
            ..Served::new(archive.clone(), "two-1")
        },
    );
    let outcome = import_url(
        &cache,
        &data_dir,
        &request(&server, "/two.zip", Some("b.img")),
        policy(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&b));
    assert_eq!(std::fs::read(&outcome.image.path).unwrap(), b);
    assert_eq!(outcome.image.meta.zip_entry.as_deref(), Some("b.img"));
    let provenance = outcome.image.meta.provenance.as_ref().expect("provenance");
    assert_eq!(provenance.etag.as_deref(), Some("\"two-1\""));
    assert_eq!(
        provenance.last_modified.as_deref(),
        Some("Wed, 02 Dec 2026 01:00:00 GMT")
    );
    assert_eq!(
        server.requests_for("/two.zip").len(),
        3,
        "nothing downloaded again: two requests for the last byte"
    );
    assert_eq!(server.body_bytes_sent(), archive.len() as u64 + 2);
    assert_eq!(downloads_left(&data_dir), 0);
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[tokio::test]
async fn a_kept_zip_that_changed_on_the_server_is_downloaded_again_not_read() {
    let a = image_bytes(2 * MIB, 64, 64 << 10);
    let b = image_bytes(2 * MIB, 65, 64 << 10);
    let old = zip_of(
        &[("a.img", &a), ("b.img", &b)],
        zip::CompressionMethod::Stored,
    );
    let b2 = image_bytes(2 * MIB, 66, 64 << 10);
    let new = zip_of(
        &[("a.img", &a), ("b.img", &b2)],
        zip::CompressionMethod::Stored,
    );
    let server = FileServer::start().await;
    server.serve("/two.zip", Served::new(old.clone(), "old-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/two.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(
        image_error(&error),
        ImageError::ZipFileCount { .. }
    ));
    assert_eq!(downloads_left(&data_dir), 2, "kept");
    // A new release under the same URL.
    server.serve("/two.zip", Served::new(new.clone(), "new-1"));
    let outcome = import_url(
        &cache,
        &data_dir,
        &request(&server, "/two.zip", Some("b.img")),
        policy(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        outcome.image.sha256(),
        Sha256Digest::of(&b2),
        "the new file's"
    );
    let provenance = outcome.image.meta.provenance.as_ref().expect("provenance");
    assert_eq!(provenance.etag.as_deref(), Some("\"new-1\""));
    let requests = server.requests_for("/two.zip");
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[1].if_range.as_deref(), Some("\"old-1\""));
    assert_eq!(requests[1].status, 200, "the changed file: not a range");
    assert_eq!(requests[2].range, None, "downloaded afresh");
    assert_eq!(downloads_left(&data_dir), 0);
}

#[tokio::test]
async fn a_truncated_zip_and_an_entry_whose_crc_is_wrong_leave_nothing() {
    let raw = image_bytes(2 * MIB, 64, 64 << 10);
    let whole = zip_of(&[("disk.img", &raw)], zip::CompressionMethod::Deflated);
    // Stored, so that a flipped byte of the data is the entry's bytes no
    // longer matching the CRC-32 its headers give.
    let mut bad_crc = zip_of(&[("disk.img", &raw)], zip::CompressionMethod::Stored);
    bad_crc[30 + "disk.img".len() + 4096] ^= 0x40;
    let server = FileServer::start().await;
    // The server has (and declares) only the first 60 % of the archive.
    server.serve(
        "/cut.zip",
        Served::new(whole[..whole.len() * 6 / 10].to_vec(), "cut-1"),
    );
    server.serve("/crc.zip", Served::new(bad_crc, "crc-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();

    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/cut.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    match image_error(&error) {
        ImageError::Corrupt { format, reason, .. } => {
            assert_eq!(*format, ImageFormat::Zip);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/crc.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    match image_error(&error) {
        ImageError::Corrupt { format, reason, .. } => {
            assert_eq!(*format, ImageFormat::Zip);
            assert!(reason.to_lowercase().contains("checksum"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.list().unwrap().is_empty());
    for sub in ["images", "tmp"] {
        assert!(
            std::fs::read_dir(cache.dir().join(sub))
                .unwrap()
                .next()
                .is_none(),
            "{sub} is empty"
        );
    }
    assert_eq!(
        downloads_left(&data_dir),
        0,
        "bytes that are not an archive are not kept to resume"
    );
}

/// A file whose sizes follow its data is read as it arrives and checked
/// against its data descriptor and the central directory: deflated, it is
/// inflated to the end deflate marks; stored, its end is found where a
/// descriptor agrees with the data before it (its data holding descriptor
/// patterns that do not); a named entry after another such file (deflated
/// or stored) is read past as it arrives, and one after a file with sizes
/// in its local header too. One request each: nothing is downloaded twice.
#[tokio::test]
async fn a_zip_with_data_descriptors_is_imported_and_a_named_entry_found_past_others() {
    let raw = image_bytes(2 * MIB, 65, 64 << 10);
    let other = image_bytes(MIB, 66, 64 << 10);
    let deflated = streamed_zip(
        &[("disk.img", Some(&raw))],
        zip::CompressionMethod::Deflated,
    );
    // Descriptor patterns in the stored data: another entry's, and one
    // with the right sizes for the data before it but a wrong CRC-32.
    let patterned = {
        let mut out = raw[..MIB].to_vec();
        out.extend_from_slice(&data_descriptor(&raw[..4096]));
        out.extend_from_slice(b"PK\x03\x04");
        let mut near = data_descriptor(&out);
        near[4] ^= 0x01;
        out.extend_from_slice(&near);
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&raw[MIB..]);
        out
    };
    let stored = streamed_zip(
        &[("disk.img", Some(&patterned))],
        zip::CompressionMethod::Stored,
    );
    let stored_several = streamed_zip(
        &[("readme.txt", Some(&other)), ("disk.img", Some(&raw))],
        zip::CompressionMethod::Stored,
    );
    let several = streamed_zip(
        &[("readme.txt", Some(&other)), ("disk.img", Some(&raw))],
        zip::CompressionMethod::Deflated,
    );
    let two = zip_of(
        &[("notes/", b""), ("readme.txt", &other), ("disk.img", &raw)],
        zip::CompressionMethod::Deflated,
    );
    let server = FileServer::start().await;
    server.serve("/deflated.zip", Served::new(deflated.clone(), "dd-1"));
    server.serve("/stored.zip", Served::new(stored.clone(), "dd-2"));
    server.serve("/several.zip", Served::new(several.clone(), "dd-3"));
    server.serve(
        "/stored-several.zip",
        Served::new(stored_several.clone(), "dd-4"),
    );
    server.serve("/two.zip", Served::new(two.clone(), "two-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (path, archive, entry, image) in [
        ("/deflated.zip", &deflated, None, &raw),
        ("/stored.zip", &stored, None, &patterned),
        ("/several.zip", &several, Some("disk.img"), &raw),
        (
            "/stored-several.zip",
            &stored_several,
            Some("disk.img"),
            &raw,
        ),
        ("/two.zip", &two, Some("disk.img"), &raw),
    ] {
        // A cache of its own each: the image is imported every time.
        let cache = open_cache(&data_dir.join(&path[1..])).unwrap();
        let outcome = import_url(
            &cache,
            &data_dir,
            &request(&server, path, entry),
            policy(),
            |_| {},
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert!(outcome.hit.is_none(), "{path}");
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(image), "{path}");
        assert_eq!(outcome.image.meta.zip_entry.as_deref(), Some("disk.img"));
        assert_eq!(outcome.image.meta.input_sha256, Sha256Digest::of(archive));
        assert_eq!(server.requests_for(path).len(), 1, "{path}");
    }
}

/// A file read as it arrived is checked against its data descriptor and
/// against the central directory: either one lying about it fails the
/// import as a corrupt archive, and nothing is kept. Deflated, the
/// descriptor read after the data disagrees with it; stored, no descriptor
/// agrees with the data, so the archive ends with none found.
#[tokio::test]
async fn a_descriptor_or_a_directory_that_lies_about_an_entry_with_sizes_after_its_data_leaves_nothing(
) {
    let raw = image_bytes(2 * MIB, 68, 64 << 10);
    let server = FileServer::start().await;
    let mut cases = Vec::new();
    for (method, lied) in [
        (
            zip::CompressionMethod::Deflated,
            "disk.img's data descriptor says",
        ),
        (
            zip::CompressionMethod::Stored,
            "no data descriptor agrees with the stored data of disk.img",
        ),
    ] {
        let archive = streamed_zip(&[("disk.img", Some(&raw))], method);
        let (descriptor, directory) = descriptor_and_directory(&archive);
        let lie = |at: usize| {
            let mut archive = archive.clone();
            archive[at] ^= 0x10;
            archive
        };
        // After the descriptor's signature: its CRC-32, then the sizes; the
        // directory's size is 24 bytes into its header.
        for (what, at, says) in [
            ("crc", descriptor + 4, lied),
            ("size", descriptor + 12, lied),
            ("dir", directory + 24, "central directory lists disk.img"),
        ] {
            let path = format!("/{method:?}-{what}.zip");
            server.serve(&path, Served::new(lie(at), &format!("{what}-1")));
            cases.push((path, says));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    for (path, says) in cases {
        let error = import_url(
            &cache,
            &data_dir,
            &request(&server, &path, None),
            policy(),
            |_| {},
        )
        .await
        .unwrap_err();
        match image_error(&error) {
            ImageError::Corrupt { format, reason, .. } => {
                assert_eq!(*format, ImageFormat::Zip, "{path}");
                assert!(reason.contains(says), "{path}: {reason}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(downloads_left(&data_dir), 0);
}

/// A stored file whose data holds what reads as its data descriptor (the
/// CRC-32 and sizes of the data before it, then a local header's
/// signature) seems to end there as it arrives; the central directory
/// lists it longer, so the downloaded archive is read through that
/// directory, as a file is: the image is the one the same archive gives
/// imported from a file, downloaded once, and nothing is left behind.
#[tokio::test]
async fn a_stored_file_made_to_seem_to_end_early_imports_from_a_url_as_from_a_file() {
    let image = image_bytes(2 * MIB, 69, 64 << 10);
    let mut raw = image[..MIB].to_vec();
    raw.extend_from_slice(&data_descriptor(&raw.clone()));
    raw.extend_from_slice(b"PK\x03\x04");
    raw.extend_from_slice(&image[MIB..]);
    let archive = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("made.zip");
    std::fs::write(&file, &archive).unwrap();
    let from_file = open_cache(&dir.path().join("file"))
        .unwrap()
        .import(&file, ImportOptions::default())
        .unwrap()
        .image;
    assert_eq!(from_file.sha256(), Sha256Digest::of(&raw));

    let server = FileServer::start().await;
    server.serve("/made.zip", Served::new(archive.clone(), "made-1"));
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let outcome = import_url(
        &cache,
        &data_dir,
        &request(&server, "/made.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(outcome.hit.is_none());
    assert_eq!(outcome.image.sha256(), from_file.sha256());
    assert_eq!(outcome.image.manifest, from_file.manifest);
    assert_eq!(std::fs::read(&outcome.image.path).unwrap(), raw);
    assert_eq!(outcome.image.meta.zip_entry.as_deref(), Some("disk.img"));
    assert_eq!(outcome.image.meta.input_sha256, Sha256Digest::of(&archive));
    assert_eq!(server.requests_for("/made.zip").len(), 1);
    assert_eq!(downloads_left(&data_dir), 0);
    assert_eq!(cache.list().unwrap().len(), 1);
}

/// An entry read as it arrived is checked against the central directory
/// once the archive is whole: a directory whose CRC-32 for it differs from
/// its local header's fails the import as a corrupt archive, nothing kept.
#[tokio::test]
async fn a_streamed_entry_the_central_directory_disagrees_with_leaves_nothing() {
    let raw = image_bytes(2 * MIB, 67, 64 << 10);
    let mut archive = zip_of(&[("disk.img", &raw)], zip::CompressionMethod::Stored);
    let directory = archive
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("a central directory header");
    // Its CRC-32 field, 16 bytes into the header.
    archive[directory + 16] ^= 0xff;
    let server = FileServer::start().await;
    server.serve("/lying.zip", Served::new(archive, "lying-1"));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cache = open_cache(&data_dir).unwrap();
    let error = import_url(
        &cache,
        &data_dir,
        &request(&server, "/lying.zip", None),
        policy(),
        |_| {},
    )
    .await
    .unwrap_err();
    match image_error(&error) {
        ImageError::Corrupt { format, reason, .. } => {
            assert_eq!(*format, ImageFormat::Zip);
            assert!(
                reason.contains("central directory lists disk.img"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_imports_a_named_file_of_a_zip_from_a_url_and_refuses_bad_requests() {
    let a = image_bytes(MIB, 65, 64 << 10);
    let b = image_bytes(2 * MIB, 66, 64 << 10);
    let archive = zip_of(
        &[("a.img", &a), ("b.img", &b)],
        zip::CompressionMethod::Deflated,
    );
    let server = FileServer::start().await;
    server.serve("/two.zip", Served::new(archive.clone(), "api-1"));
    let app = flashrack_app::testing::spawn_app().await;

    // An empty name names nothing.
    let bad = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": server.url("/two.zip"), "zip_entry": "" })),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("zip_entry"), "{}", bad.body);
    let bad = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": server.url("/two.zip"), "zip_entry": 3 })),
        )
        .await;
    assert!(
        (400..500).contains(&bad.status),
        "{} {}",
        bad.status,
        bad.body
    );
    assert!(server.requests().is_empty(), "nothing started");

    // No name: failed, with the names.
    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({ "url": server.url("/two.zip") })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let failed = follow(&app, answer.json()["id"].as_u64().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("(a.img, b.img)"),
        "{failed}"
    );

    let answer = app
        .post(
            "/api/v1/images/import-url",
            Some(serde_json::json!({
                "url": server.url("/two.zip"),
                "sha256": Sha256Digest::of(&a).to_hex(),
                "zip_entry": "a.img",
            })),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let done = follow(&app, answer.json()["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["image"], Sha256Digest::of(&a).to_hex());
    let image = app
        .get(&format!("/api/v1/images/{}", Sha256Digest::of(&a)))
        .await;
    assert_eq!(image.status, 200, "{}", image.body);
    assert_eq!(image.json()["provenance"]["url"], server.url("/two.zip"));
    // Downloaded once: the second import read the download the first kept,
    // once the server said (for its last byte) that it is still its file.
    let requests = server.requests_for("/two.zip");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].status, 206);
    app.stop().await.unwrap();
}

/// The API's view of import `id` once it has ended.
async fn follow(app: &flashrack_app::testing::TestApp, id: u64) -> serde_json::Value {
    loop {
        let list = app.get("/api/v1/images/downloads").await.json();
        let import = list
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .cloned()
            .unwrap();
        match import["state"].as_str() {
            Some("done" | "failed") => return import,
            _ => tokio::task::yield_now().await,
        }
    }
}
