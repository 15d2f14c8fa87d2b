//! Re-importing: a known file is not read again, a copy of one is hashed but not
//! decompressed, and the expected digest is checked on every such shortcut.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use common::*;
use flashrack_image::{CacheHit, ImageError, Sha256Digest};

#[test]
fn reimporting_an_unchanged_file_returns_at_once() {
    let fx = Fixture::new();
    let input = fx.input("disk.img.gz", &gzip(&sample_image()));
    settle(&input);
    let first = fx.cache.import(&input, options()).unwrap();
    assert_eq!(first.hit, None);
    let files = fx.cache_files();

    let again = fx.cache.import(&input, options()).unwrap();
    assert!(again.already_cached());
    assert_eq!(again.hit, Some(CacheHit::SameFile));
    assert_eq!(again.image, first.image);
    assert_eq!(fx.cache_files(), files, "a fast re-import writes nothing");
}

/// Rewrites `path` in place (same inode, same size) with `bytes` and puts its
/// modification and access times back (`utimensat`), as a careless tool or a
/// hostile user can: only the change time (ctime) tells.
fn rewrite_in_place_keeping_mtime(path: &std::path::Path, bytes: &[u8]) {
    let before = fs::metadata(path).unwrap();
    assert_eq!(before.len(), bytes.len() as u64);
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_times(
        fs::FileTimes::new()
            .set_modified(before.modified().unwrap())
            .set_accessed(before.accessed().unwrap()),
    )
    .unwrap();
    drop(file);
    let after = fs::metadata(path).unwrap();
    assert_eq!(
        (
            after.dev(),
            after.ino(),
            after.len(),
            after.mtime(),
            after.mtime_nsec()
        ),
        (
            before.dev(),
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "path, device, inode, size and mtime are those of the old file"
    );
    assert_ne!(
        (after.ctime(), after.ctime_nsec()),
        (before.ctime(), before.ctime_nsec())
    );
}

#[test]
fn a_file_rewritten_in_place_with_its_mtime_put_back_is_read_again() {
    let fx = Fixture::new();
    let old = image(20, 1000, &[2, 3], 7);
    let new = image(20, 1000, &[2, 3], 8);
    let input = fx.input("disk.img", &old);
    settle(&input);
    let first = fx.cache.import(&input, options()).unwrap();
    assert_eq!(first.image.sha256(), Sha256Digest::of(&old));
    let known = fx.cache.import(&input, options()).unwrap();
    assert_eq!(known.hit, Some(CacheHit::SameFile), "the shortcut works");

    // Path, device, inode, size and mtime all say "the same file"; its content
    // is another image. The import must say so, never the old digest.
    rewrite_in_place_keeping_mtime(&input, &new);
    let again = fx.cache.import(&input, options()).unwrap();
    assert_eq!(again.hit, None);
    assert_eq!(again.image.sha256(), Sha256Digest::of(&new));
    assert_eq!(fs::read(&again.image.path).unwrap(), new);

    // And once the rewritten file has settled, it is the shortcut's new answer.
    settle(&input);
    fx.cache.import(&input, options()).unwrap();
    let known = fx.cache.import(&input, options()).unwrap();
    assert_eq!(known.hit, Some(CacheHit::SameFile));
    assert_eq!(known.image.sha256(), Sha256Digest::of(&new));
    assert!(fx.files_under("tmp").is_empty());
}

#[test]
fn a_changed_file_at_the_same_path_is_imported_again() {
    let fx = Fixture::new();
    let input = fx.input("disk.img", &sample_image());
    let first = fx.cache.import(&input, options()).unwrap().image;

    let other = image(3, 5, &[], 99);
    fs::write(&input, &other).unwrap();
    // Make sure the modification time moves even on a coarse clock.
    let file = OpenOptions::new().write(true).open(&input).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    drop(file);

    let second = fx.cache.import(&input, options()).unwrap();
    assert_eq!(second.hit, None);
    assert_eq!(second.image.sha256(), Sha256Digest::of(&other));
    assert_eq!(fx.cache.list().unwrap().len(), 2);
    assert!(fx.cache.get(&first.sha256()).unwrap().is_some());
}

#[test]
fn a_copy_elsewhere_is_recognised_by_its_digest_then_by_its_identity() {
    for (format, compress, name) in compressed_formats() {
        let fx = Fixture::new();
        let data = sample_image();
        let bytes = compress(&data);
        let original = fx.input(name, &bytes);
        let first = fx.cache.import(&original, options()).unwrap().image;

        let copy_dir = tempfile::tempdir().unwrap();
        let copy = copy_dir.path().join("copy");
        fs::write(&copy, &bytes).unwrap();
        settle(&copy);
        let outcome = fx.cache.import(&copy, options()).unwrap();
        assert_eq!(outcome.hit, Some(CacheHit::SameFileDigest), "{format}");
        assert_eq!(outcome.image.sha256(), first.sha256(), "{format}");
        assert_eq!(outcome.image.meta.original_name, first.meta.original_name);
        // Found by the copy's name too from now on.
        assert_eq!(outcome.image.meta.also_known_as, ["copy"], "{format}");

        let outcome = fx.cache.import(&copy, options()).unwrap();
        assert_eq!(outcome.hit, Some(CacheHit::SameFile), "{format}");
        assert!(fx.files_under("tmp").is_empty());
    }
}

#[test]
fn a_copy_of_a_raw_image_is_recognised_by_its_digest() {
    let fx = Fixture::new();
    let data = sample_image();
    fx.cache
        .import(fx.input("a.img", &data), options())
        .unwrap();
    let outcome = fx
        .cache
        .import(fx.input("b.img", &data), options())
        .unwrap();
    assert_eq!(outcome.hit, Some(CacheHit::SameFileDigest));
}

#[test]
fn the_same_image_compressed_otherwise_is_recognised_after_decoding() {
    let fx = Fixture::new();
    let data = sample_image();
    let first = fx
        .cache
        .import(fx.input("disk.img.gz", &gzip(&data)), options())
        .unwrap()
        .image;
    let bz = fx.input("disk.img.bz2", &bzip2(&data));
    settle(&bz);
    let outcome = fx.cache.import(&bz, options()).unwrap();
    assert_eq!(outcome.hit, Some(CacheHit::SameImage));
    assert_eq!(
        (outcome.image.sha256(), &outcome.image.meta.original_name),
        (first.sha256(), &first.meta.original_name),
        "the first import's record is kept"
    );
    assert_eq!(outcome.image.meta.also_known_as, ["disk.img.bz2"]);
    assert_eq!(fx.cache.list().unwrap().len(), 1);
    assert!(fx.files_under("tmp").is_empty());
    // The new file is remembered too.
    let outcome = fx.cache.import(&bz, options()).unwrap();
    assert_eq!(outcome.hit, Some(CacheHit::SameFile));
}

/// Asserts a checksum mismatch that leaves the cached image in place.
fn assert_mismatch(
    fx: &Fixture,
    result: Result<flashrack_image::ImportOutcome, ImageError>,
    raw: Sha256Digest,
    file: Sha256Digest,
) {
    match result {
        Err(ImageError::ChecksumMismatch {
            raw: r, file: f, ..
        }) => {
            assert_eq!((r, f), (raw, file));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(
        fx.cache.get(&raw).unwrap().is_some(),
        "the cached image stays"
    );
}

#[test]
fn the_expected_digest_is_checked_on_every_shortcut() {
    let fx = Fixture::new();
    let data = sample_image();
    let bytes = zstd(&data);
    let raw = Sha256Digest::of(&data);
    let file = Sha256Digest::of(&bytes);
    let wrong = Sha256Digest::of(b"wrong");
    let input = fx.input("disk.img.zst", &bytes);
    settle(&input);
    fx.cache.import(&input, options()).unwrap();

    // Known file.
    assert_mismatch(&fx, fx.cache.import(&input, expecting(wrong)), raw, file);
    for right in [raw, file] {
        let outcome = fx.cache.import(&input, expecting(right)).unwrap();
        assert_eq!(outcome.hit, Some(CacheHit::SameFile));
    }

    // Known file digest.
    let copy = fx.input("copy.zst", &bytes);
    assert_mismatch(&fx, fx.cache.import(&copy, expecting(wrong)), raw, file);
    let outcome = fx.cache.import(&copy, expecting(file)).unwrap();
    assert_eq!(outcome.hit, Some(CacheHit::SameFileDigest));

    // Known image.
    let other = gzip(&data);
    let recompressed = fx.input("disk.img.gz", &other);
    assert_mismatch(
        &fx,
        fx.cache.import(&recompressed, expecting(wrong)),
        raw,
        Sha256Digest::of(&other),
    );
    let outcome = fx.cache.import(&recompressed, expecting(raw)).unwrap();
    assert_eq!(outcome.hit, Some(CacheHit::SameImage));
    assert!(fx.files_under("tmp").is_empty());
}

#[test]
fn a_removed_image_is_imported_again_in_full() {
    let fx = Fixture::new();
    let input = fx.input("disk.img.gz", &gzip(&sample_image()));
    let first = fx.cache.import(&input, options()).unwrap().image;
    fx.cache.remove(&first.sha256()).unwrap();
    fx.assert_cache_empty();

    let again = fx.cache.import(&input, options()).unwrap();
    assert_eq!(again.hit, None);
    assert_eq!(again.image.manifest, first.manifest);
}

#[test]
fn an_image_file_of_the_wrong_size_is_absent_and_imported_again() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    let first = fx.cache.import(&input, options()).unwrap().image;
    let file = OpenOptions::new().write(true).open(&first.path).unwrap();
    file.set_len(1000).unwrap();
    drop(file);
    assert_eq!(fx.cache.get(&first.sha256()).unwrap(), None);
    assert!(fx.cache.list().unwrap().is_empty());

    let again = fx.cache.import(&input, options()).unwrap();
    assert_eq!(again.hit, None);
    assert_eq!(fs::read(&again.image.path).unwrap(), data);
}

/// Rewrites the cache entry of `digest` as a format-1 manifest (no chunk
/// fingerprints), as a build from before fingerprints wrote it.
fn downgrade_to_format_1(fx: &Fixture, digest: Sha256Digest) {
    let path = fx
        .cache_dir
        .path()
        .join("images")
        .join(format!("{}.json", digest.to_hex()));
    let mut entry: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let image = fs::read(fx.cache.get(&digest).unwrap().unwrap().path).unwrap();
    let manifest = entry["manifest"].as_object_mut().unwrap();
    assert_eq!(manifest["format"], 3);
    manifest.insert("format".into(), 1.into());
    manifest.remove("chunk_fingerprints").unwrap();
    let digests: Vec<String> = image
        .chunks(CHUNK as usize)
        .map(|c| Sha256Digest::of(c).to_hex())
        .collect();
    manifest.insert("chunk_digests".into(), digests.into());
    fs::write(&path, serde_json::to_vec_pretty(&entry).unwrap()).unwrap();
}

#[test]
fn a_format_1_entry_still_reads_and_a_reimport_adds_its_fingerprints() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img.gz", &gzip(&data));
    settle(&input);
    let first = fx.cache.import(&input, options()).unwrap().image;
    assert!(first.manifest.has_chunk_fingerprints());
    downgrade_to_format_1(&fx, first.sha256());

    let old = fx.cache.get(&first.sha256()).unwrap().unwrap();
    assert!(!old.manifest.has_chunk_fingerprints());
    assert_eq!(old.manifest.chunk_fingerprint(0), None);
    assert_eq!(
        old.manifest.chunk_digest(0),
        Some(Sha256Digest::of(&data[..CHUNK as usize]))
    );

    // The known-file shortcut is not taken for a format-1 entry: the file is
    // decoded again and the entry gets the fingerprints (format 2: it keeps
    // its chunk digests), nothing else changes.
    let again = fx.cache.import(&input, options()).unwrap();
    assert_eq!(again.hit, Some(CacheHit::SameImage));
    let upgraded = &again.image.manifest;
    assert_eq!(again.image.sha256(), first.sha256());
    assert!(upgraded.has_chunk_fingerprints() && upgraded.has_chunk_digests());
    for i in 0..first.manifest.chunk_count() {
        assert_eq!(
            upgraded.chunk_fingerprint(i),
            first.manifest.chunk_fingerprint(i)
        );
        assert_eq!(upgraded.chunk_digest(i), old.manifest.chunk_digest(i));
    }
    assert_eq!(fx.cache.get(&first.sha256()).unwrap().unwrap(), again.image);
    assert!(fx.files_under("tmp").is_empty());

    // Upgraded: the shortcut applies again.
    let third = fx.cache.import(&input, options()).unwrap();
    assert_eq!(third.hit, Some(CacheHit::SameFile));
}
