//! Importing every format, the digests and zero map an import computes, the
//! expected-checksum rule, and that a failed import leaves nothing behind.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use flashrack_core::ChunkKind;
use flashrack_image::{CachedImage, ImageError, ImageFormat, ImportOptions, Sha256Digest};

/// Checks an imported image against the raw bytes it must hold, with digests
/// computed independently here.
fn assert_image_is(image: &CachedImage, data: &[u8], chunk: u32) {
    let manifest = &image.manifest;
    assert_eq!(manifest.sha256(), Sha256Digest::of(data));
    assert_eq!(image.sha256(), Sha256Digest::of(data));
    assert_eq!(manifest.size(), data.len() as u64);
    assert_eq!(manifest.chunk_size(), chunk);
    let chunks: Vec<&[u8]> = data.chunks(chunk as usize).collect();
    assert_eq!(manifest.chunk_count(), chunks.len() as u64);
    // Format 3: one sha256 of the image, a fingerprint per chunk, no chunk
    // sha256s.
    assert!(!manifest.has_chunk_digests());
    for (i, bytes) in chunks.iter().enumerate() {
        let i = i as u64;
        assert_eq!(manifest.chunk_digest(i), None, "chunk {i}");
        let expected = if bytes.iter().all(|&b| b == 0) {
            ChunkKind::Zero
        } else {
            ChunkKind::Data
        };
        assert_eq!(manifest.chunk_kind(i), expected, "chunk {i}");
        assert_eq!(
            manifest.chunk_fingerprint(i),
            Some(xxhash_rust::xxh3::xxh3_128(bytes)),
            "chunk {i}"
        );
    }
    assert_eq!(fs::read(&image.path).unwrap(), data, "cached bytes differ");
}

#[test]
fn a_raw_image_is_imported_with_independent_digests_and_zero_map() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    let outcome = fx.cache.import(&input, options()).unwrap();
    assert!(!outcome.already_cached());
    let image = outcome.image;
    assert_image_is(&image, &data, CHUNK);

    let zero: Vec<u64> = (0..image.manifest.chunk_count())
        .filter(|&i| image.manifest.chunk_kind(i) == ChunkKind::Zero)
        .collect();
    assert_eq!(zero, [2, 3, 4, 9]);
    assert_eq!(image.manifest.chunk_span(20), (20 * u64::from(CHUNK), 1000));

    assert_eq!(image.meta.format, ImageFormat::Raw);
    assert_eq!(image.meta.original_name, "disk.img");
    assert_eq!(image.meta.input_size, data.len() as u64);
    assert_eq!(image.meta.input_sha256, image.sha256());
    assert_eq!(image.meta.zip_entry, None);

    let hex = image.sha256().to_hex();
    assert_eq!(
        image.path,
        fx.cache_dir.path().join(format!("images/{hex}.img"))
    );
    assert_eq!(
        fx.files_under("images"),
        [format!("images/{hex}.img"), format!("images/{hex}.json")]
    );
    assert!(fx.files_under("tmp").is_empty());
    assert_eq!(fx.cache.get(&image.sha256()).unwrap(), Some(image));
}

#[test]
fn every_compressed_format_yields_the_same_image_as_the_raw_import() {
    let data = sample_image();
    let raw = {
        let fx = Fixture::new();
        let input = fx.input("disk.img", &data);
        fx.cache.import(&input, options()).unwrap().image
    };
    for (format, compress, name) in compressed_formats() {
        let fx = Fixture::new();
        let compressed = compress(&data);
        let input = fx.input(name, &compressed);
        let outcome = fx
            .cache
            .import(&input, options())
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(!outcome.already_cached(), "{format}");
        let image = outcome.image;
        assert_image_is(&image, &data, CHUNK);
        assert_eq!(image.manifest, raw.manifest, "{format}");
        assert_eq!(image.meta.format, format);
        assert_eq!(image.meta.original_name, name);
        assert_eq!(image.meta.input_size, compressed.len() as u64, "{format}");
        assert_eq!(
            image.meta.input_sha256,
            Sha256Digest::of(&compressed),
            "{format}"
        );
        let entry = (format == ImageFormat::Zip).then(|| "images/disk.img".to_string());
        assert_eq!(image.meta.zip_entry, entry);
        assert!(fx.files_under("tmp").is_empty(), "{format}");
    }
}

#[test]
fn zip_entries_stored_or_compressed_otherwise_are_read_too() {
    let data = image(6, 100, &[1], 3);
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Zstd,
        zip::CompressionMethod::Bzip2,
    ] {
        let fx = Fixture::new();
        let archive = zip_with(&[("disk.img", Some(&data))], method);
        let input = fx.input("disk.zip", &archive);
        let image = fx.cache.import(&input, options()).unwrap().image;
        assert_image_is(&image, &data, CHUNK);
        assert_eq!(
            image.meta.input_sha256,
            Sha256Digest::of(&archive),
            "{method}"
        );
    }
}

#[test]
fn zero_chunks_are_holes_in_the_cached_file() {
    let fx = Fixture::new();
    // Six zero chunks out of nine, the short tail among them.
    let data = image(8, 3000, &[1, 2, 3, 4, 5, 8], 11);
    let input = fx.input("disk.img.gz", &gzip(&data));
    let image = fx.cache.import(&input, options()).unwrap().image;
    assert_image_is(&image, &data, CHUNK);
    assert_eq!(image.manifest.chunk_kind(8), ChunkKind::Zero);
    assert_eq!(image.manifest.zero_bytes(), 5 * u64::from(CHUNK) + 3000);
    let meta = fs::metadata(&image.path).unwrap();
    assert_eq!(meta.len(), data.len() as u64);
    let allocated = meta.blocks() * 512;
    let data_bytes = 3 * u64::from(CHUNK);
    assert!(
        allocated < meta.len() && allocated <= data_bytes + 64 * 1024,
        "{allocated} bytes allocated for {data_bytes} bytes of data in a {} byte image",
        meta.len()
    );
}

#[test]
fn the_default_chunk_size_is_four_mib() {
    let fx = Fixture::new();
    let mut data = noise(5 << 20, 5);
    data[0] = 0;
    let input = fx.input("disk.iso", &data);
    let image = fx
        .cache
        .import(&input, ImportOptions::default())
        .unwrap()
        .image;
    assert_image_is(&image, &data, 4 << 20);
    assert_eq!(image.manifest.chunk_count(), 2);
}

#[test]
fn the_expected_digest_may_be_of_the_file_as_given_or_of_the_raw_image() {
    let data = sample_image();
    let compressed = xz(&data);
    for expected in [Sha256Digest::of(&compressed), Sha256Digest::of(&data)] {
        let fx = Fixture::new();
        let input = fx.input("disk.img.xz", &compressed);
        let image = fx.cache.import(&input, expecting(expected)).unwrap().image;
        assert_eq!(image.sha256(), Sha256Digest::of(&data));
    }
}

#[test]
fn a_wrong_expected_digest_is_rejected_and_nothing_is_kept() {
    let fx = Fixture::new();
    let data = sample_image();
    let compressed = zstd(&data);
    let input = fx.input("disk.img.zst", &compressed);
    let wrong = Sha256Digest::of(b"something else");
    let error = fx.cache.import(&input, expecting(wrong)).unwrap_err();
    match &error {
        ImageError::ChecksumMismatch {
            path,
            expected,
            raw,
            file,
        } => {
            assert_eq!(path, &input);
            assert_eq!(*expected, wrong);
            assert_eq!(*raw, Sha256Digest::of(&data));
            assert_eq!(*file, Sha256Digest::of(&compressed));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("disk.img.zst") && message.contains(&wrong.to_hex()),
        "{message}"
    );
    fx.assert_cache_empty();
}

/// Asserts that importing `bytes` fails as corrupt `format` data, names the
/// file, and leaves the cache empty.
fn assert_rejected_as_corrupt(bytes: &[u8], format: ImageFormat, what: &str) -> String {
    let fx = Fixture::new();
    let input = fx.input("broken.bin", bytes);
    let error = fx
        .cache
        .import(&input, options())
        .expect_err(&format!("{format} {what} must be rejected"));
    match &error {
        ImageError::Corrupt {
            path, format: f, ..
        } => {
            assert_eq!(path, &input, "{format} {what}");
            assert_eq!(*f, format, "{format} {what}");
        }
        other => panic!("{format} {what}: expected corrupt data, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("broken.bin") && message.contains(format.name()),
        "{message}"
    );
    fx.assert_cache_empty();
    message
}

#[test]
fn damaged_data_in_each_format_is_rejected_and_nothing_is_kept() {
    let data = sample_image();
    for (format, compress, _) in compressed_formats() {
        let mut bytes = compress(&data);
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle..middle + 16] {
            *byte ^= 0x5a;
        }
        assert_rejected_as_corrupt(&bytes, format, "with damaged data");
    }
}

#[test]
fn truncated_data_in_each_format_is_rejected_and_nothing_is_kept() {
    let data = sample_image();
    for (format, compress, _) in compressed_formats() {
        let bytes = compress(&data);
        for keep in [bytes.len() * 3 / 5, bytes.len() - 1, 10] {
            assert_rejected_as_corrupt(&bytes[..keep], format, &format!("cut to {keep} bytes"));
        }
    }
}

/// The decoder's own check of each xz block is on: a block whose data
/// decodes but whose CRC64 (the 8 bytes before the index) is wrong is
/// corrupt, not an image.
#[test]
fn an_xz_block_with_a_wrong_crc64_is_rejected_and_nothing_is_kept() {
    let data = sample_image();
    let mut encoder =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(0)).unwrap();
    std::io::Write::write_all(&mut encoder, &data).unwrap();
    let mut bytes = encoder.finish().unwrap();
    // Stream flags: the check is CRC64 (type 4).
    assert_eq!(bytes[7], 0x04, "the encoder writes CRC64 checks");
    // The footer's backward size: (index size / 4) - 1, little endian.
    let footer = bytes.len() - 12;
    let backward = u32::from_le_bytes(bytes[footer + 4..footer + 8].try_into().unwrap());
    let index = footer - (backward as usize + 1) * 4;
    // The last (only) block's check lies right before the index.
    bytes[index - 3] ^= 0x01;
    let message = assert_rejected_as_corrupt(&bytes, ImageFormat::Xz, "with a wrong block check");
    // Decoded whole, undamaged: the encoder's bytes are the image.
    bytes[index - 3] ^= 0x01;
    let fx = Fixture::new();
    let image = fx
        .cache
        .import(fx.input("good.img.xz", &bytes), options())
        .unwrap()
        .image;
    assert_eq!(image.sha256(), Sha256Digest::of(&data), "{message}");
}

#[test]
fn a_damaged_header_is_rejected() {
    let mut gz = gzip(b"hello");
    gz[2] = 0x63; // The compression method must be 8 (deflate).
    assert_rejected_as_corrupt(&gz, ImageFormat::Gzip, "with a bad header");
    // Bytes after the last member that are not another one (`gzip -d`
    // ignores them with a warning): refused, and said so.
    let mut trailing = gzip(b"hello");
    trailing.extend_from_slice(b"garbage after the member");
    let message = assert_rejected_as_corrupt(&trailing, ImageFormat::Gzip, "with trailing data");
    assert!(
        message.contains("data after the end of its last member"),
        "{message}"
    );
    let mut bz = bzip2(b"hello");
    bz[4] = b'X'; // Block magic.
    assert_rejected_as_corrupt(&bz, ImageFormat::Bzip2, "with a bad header");
}

#[test]
fn a_zip_entry_with_a_wrong_crc_is_rejected() {
    let data = image(4, 0, &[], 9);
    let mut archive = zip_with(&[("d.img", Some(&data))], zip::CompressionMethod::Stored);
    // Stored data starts after the 30-byte local header and the name.
    archive[30 + "d.img".len() + 1000] ^= 1;
    let message = assert_rejected_as_corrupt(&archive, ImageFormat::Zip, "with a bad crc");
    assert!(message.to_lowercase().contains("checksum"), "{message}");
}

#[test]
fn a_named_zip_entry_is_imported_and_a_name_not_there_lists_the_files() {
    let a = image(2, 10, &[], 4);
    let b = image(3, 11, &[1], 5);
    let two = zip_with(
        &[("a.img", Some(&a)), ("dir/", None), ("b.img", Some(&b))],
        zip::CompressionMethod::Deflated,
    );
    let fx = Fixture::new();
    let input = fx.input("two.zip", &two);
    let named = |entry: &str| ImportOptions {
        zip_entry: Some(entry.to_string()),
        ..options()
    };
    let first = fx.cache.import(&input, named("b.img")).unwrap();
    assert!(!first.already_cached());
    assert_image_is(&first.image, &b, CHUNK);
    assert_eq!(first.image.meta.zip_entry.as_deref(), Some("b.img"));
    assert_eq!(first.image.meta.input_sha256, Sha256Digest::of(&two));
    // The same file, the other entry: read again, not answered by what the
    // first import found in it.
    let second = fx.cache.import(&input, named("a.img")).unwrap();
    assert!(!second.already_cached());
    assert_image_is(&second.image, &a, CHUNK);
    assert_eq!(second.image.meta.zip_entry.as_deref(), Some("a.img"));
    // No name: still refused with the names, though both images are cached.
    let error = fx.cache.import(&input, options()).unwrap_err();
    assert!(
        matches!(&error, ImageError::ZipFileCount { files, .. } if files == &["a.img", "b.img"]),
        "{error:?}"
    );
    // A name it does not hold (a directory is no file): the names it does.
    for missing in ["c.img", "dir/"] {
        let error = fx.cache.import(&input, named(missing)).unwrap_err();
        match &error {
            ImageError::ZipEntryMissing { path, entry, files } => {
                assert_eq!(path, &input);
                assert_eq!(entry, missing);
                assert_eq!(files, &["a.img", "b.img"]);
            }
            other => panic!("expected a missing entry, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&format!("no file named {missing:?}"))
                && message.contains("holds 2 (a.img, b.img)"),
            "{message}"
        );
    }
    assert_eq!(fx.cache.list().unwrap().len(), 2);
}

#[test]
fn a_zip_must_hold_exactly_one_file() {
    let data = image(2, 10, &[], 4);
    let two = zip_with(
        &[
            ("a.img", Some(&data)),
            ("dir/", None),
            ("b.img", Some(&data)),
        ],
        zip::CompressionMethod::Deflated,
    );
    let only_dirs = zip_with(&[("dir/", None)], zip::CompressionMethod::Deflated);
    let empty = zip_with(&[], zip::CompressionMethod::Deflated);
    for (bytes, files) in [
        (two, vec!["a.img", "b.img"]),
        (only_dirs, vec![]),
        (empty, vec![]),
    ] {
        let fx = Fixture::new();
        let input = fx.input("many.zip", &bytes);
        let error = fx.cache.import(&input, options()).unwrap_err();
        match &error {
            ImageError::ZipFileCount { path, files: got } => {
                assert_eq!(path, &input);
                assert_eq!(got, &files);
            }
            other => panic!("expected a zip file count error, got {other:?}"),
        }
        assert!(error.to_string().contains("exactly one file"), "{error}");
        fx.assert_cache_empty();
    }
}

#[test]
fn an_empty_file_or_an_empty_compressed_image_is_rejected() {
    let fx = Fixture::new();
    let input = fx.input("empty.img", b"");
    let error = fx.cache.import(&input, options()).unwrap_err();
    assert!(
        matches!(&error, ImageError::EmptyInput { path } if *path == input),
        "{error:?}"
    );

    for (format, compress, name) in compressed_formats() {
        let input = fx.input(name, &compress(b""));
        let error = fx.cache.import(&input, options()).unwrap_err();
        assert!(
            matches!(&error, ImageError::EmptyImage { path, format: f } if *path == input && *f == format),
            "{format}: {error:?}"
        );
    }
    fx.assert_cache_empty();
}

#[test]
fn a_missing_file_is_a_read_error_and_a_directory_is_not_a_regular_file() {
    let fx = Fixture::new();
    let missing = fx.inputs.path().join("nope.img");
    let error = fx.cache.import(&missing, options()).unwrap_err();
    assert!(
        matches!(&error, ImageError::ReadInput { path, .. } if *path == missing),
        "{error:?}"
    );
    assert!(error.to_string().contains("nope.img"));
    let error = fx.cache.import(fx.inputs.path(), options()).unwrap_err();
    assert!(
        matches!(error, ImageError::NotARegularFile { .. }),
        "{error:?}"
    );
    fx.assert_cache_empty();
}

#[test]
fn a_chunk_size_that_is_not_a_multiple_of_4096_is_rejected() {
    let fx = Fixture::new();
    let input = fx.input("disk.img", &sample_image());
    for chunk_size in [0, 1000, 4096 + 512, 128 << 20] {
        let error = fx
            .cache
            .import(
                &input,
                ImportOptions {
                    chunk_size,
                    ..options()
                },
            )
            .unwrap_err();
        assert!(matches!(error, ImageError::InvalidChunkSize { chunk_size: c } if c == chunk_size));
    }
    fx.assert_cache_empty();
}

#[test]
fn a_raw_file_is_read_past_the_page_cache_with_the_same_digests() {
    // Chunks and a tail that is not a multiple of the file system's block.
    let data = image(40, 1234, &[2], 31);
    let fixture = Fixture::new();
    let path = fixture.input("disk.img", &data);
    let file = fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(
        flashrack_testkit::page_cache_bytes(&path),
        0,
        "the test starts with the file cold"
    );
    let outcome = fixture.cache.import(&path, options()).unwrap();
    assert_image_is(&outcome.image, &data, CHUNK);
    // The file system of the tests (ext4 here) reads it directly; tmpfs
    // cannot, and would be read through the cache.
    let on_tmpfs = rustix::fs::statfs(&path).unwrap().f_type == 0x0102_1994;
    if !on_tmpfs {
        // At most the read-ahead of the few bytes read to detect its format.
        let cached = flashrack_testkit::page_cache_bytes(&path);
        assert!(
            cached <= 64 << 10,
            "the import cached {cached} bytes of the {} it read",
            data.len()
        );
    }
}

/// A compressed file is read on a thread of its own, past the page cache
/// where the file system allows: every stream format gives the same image
/// and the digest of the whole file (several of the reader's 1 MiB blocks,
/// and a tail that is not a multiple of a block), and leaves the file
/// uncached.
#[test]
fn a_compressed_file_is_read_past_the_page_cache_with_the_digest_of_all_of_it() {
    // Noise does not compress: the files are about 2.6 MiB.
    let data = image(40, 1234, &[2], 37);
    for (format, compress, _) in compressed_formats() {
        if format == ImageFormat::Zip {
            // Read by seeking, through the page cache.
            continue;
        }
        let fixture = Fixture::new();
        let compressed = compress(&data);
        assert!(compressed.len() > 2 << 20, "{format}: {}", compressed.len());
        let path = fixture.input("disk.compressed", &compressed);
        let file = fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let outcome = fixture.cache.import(&path, options()).unwrap();
        assert_image_is(&outcome.image, &data, CHUNK);
        assert_eq!(outcome.image.meta.format, format);
        assert_eq!(
            outcome.image.meta.input_size,
            compressed.len() as u64,
            "{format}"
        );
        assert_eq!(
            outcome.image.meta.input_sha256,
            Sha256Digest::of(&compressed),
            "{format}"
        );
        let on_tmpfs = rustix::fs::statfs(&path).unwrap().f_type == 0x0102_1994;
        if !on_tmpfs {
            // At most the read-ahead of the few bytes read to detect its format.
            let cached = flashrack_testkit::page_cache_bytes(&path);
            assert!(
                cached <= 64 << 10,
                "{format}: the import cached {cached} bytes of the {} it read",
                compressed.len()
            );
        }
    }
}

/// Appends to the file being imported when the first chunk is announced: a
/// file still being written (downloaded, copied) while it is imported.
#[derive(Debug)]
struct Grower {
    path: std::path::PathBuf,
    grown: std::sync::atomic::AtomicBool,
}

impl flashrack_image::ImportObserver for Grower {
    fn began(&self, _: &std::fs::File, _: u32, _: Option<u64>) {}

    fn chunk(&self, _: usize, _: bool, _: u128) {
        if !self.grown.swap(true, std::sync::atomic::Ordering::SeqCst) {
            use std::io::Write;
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .unwrap();
            file.write_all(&noise(CHUNK as usize * 3, 99)).unwrap();
        }
    }

    fn abandoned(&self, reason: &str) {
        panic!("a file's pass is never abandoned: {reason}");
    }
}

#[test]
fn a_file_that_grows_while_it_is_imported_is_refused_and_nothing_is_kept() {
    let fx = Fixture::new();
    // Just written: not settled, so its bytes are copied into the cache (a
    // settled one is referenced in place and was checked already).
    let path = fx.input("growing.img", &image(4, 0, &[], 17));
    let grower = std::sync::Arc::new(Grower {
        path: path.clone(),
        grown: Default::default(),
    });
    let result = fx.cache.import(
        &path,
        ImportOptions {
            observer: Some(grower.clone()),
            ..options()
        },
    );
    assert!(grower.grown.load(std::sync::atomic::Ordering::SeqCst));
    match result {
        Err(ImageError::ChangedWhileImported { path: named }) => assert_eq!(named, path),
        other => panic!("expected the import refused, got {other:?}"),
    }
    assert!(fx.cache.list().unwrap().is_empty());
    fx.assert_cache_empty();
}
