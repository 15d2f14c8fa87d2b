//! Importing from a stream (what a download feeds): every stream format and
//! raw images in one pass with the same digests as a file import, the
//! provenance set while the stream was read kept with the image, and a
//! stream that fails, mismatches or is a zip leaving nothing behind.

mod common;

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use common::{compressed_formats, sample_image, zip};
use flashrack_core::{DigestSource, Provenance, Sha256Digest};
use flashrack_image::{ImageCache, ImageError, ImportObserver, ImportOptions, StreamSource};
use flashrack_testkit::zips::{
    data_descriptor, descriptor_and_directory, streamed_zip, streamed_zip64,
};

fn source(name: &str) -> (StreamSource, Arc<OnceLock<Provenance>>) {
    let slot = Arc::new(OnceLock::new());
    (
        StreamSource {
            label: format!("https://example.invalid/{name}"),
            name: name.to_string(),
            provenance: slot.clone(),
            ..StreamSource::new("", "")
        },
        slot,
    )
}

fn provenance(name: &str) -> Provenance {
    Provenance {
        url: format!("https://example.invalid/{name}"),
        etag: Some("\"e\"".into()),
        last_modified: None,
        digest_source: DigestSource::Unchecked,
        captured: None,
        built: None,
        bmap_lookup_failed: None,
    }
}

/// Yields `data` and sets the provenance only when it has been read to the
/// end, as a download does.
struct Download {
    data: Cursor<Vec<u8>>,
    slot: Arc<OnceLock<Provenance>>,
    provenance: Provenance,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 {
            let _ = self.slot.set(self.provenance.clone());
        }
        Ok(n)
    }
}

fn no_entries(cache: &ImageCache) {
    assert!(cache.list().unwrap().is_empty());
    assert!(std::fs::read_dir(cache.dir().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(cache.dir().join("images"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn every_stream_format_imports_with_the_digests_of_its_image_and_keeps_its_provenance() {
    let raw = sample_image();
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path()).unwrap();
    let mut inputs: Vec<(String, Vec<u8>)> = vec![("raw.img".into(), raw.clone())];
    for (format, compress, ext) in compressed_formats() {
        if format == flashrack_image::ImageFormat::Zip {
            continue;
        }
        inputs.push((format!("image.{ext}"), compress(&raw)));
    }
    for (i, (name, file)) in inputs.iter().enumerate() {
        let (source, slot) = source(name);
        let mut stream = Download {
            data: Cursor::new(file.clone()),
            slot,
            provenance: provenance(name),
        };
        let outcome = cache
            .import_stream(
                &mut stream,
                source,
                common::expecting(Sha256Digest::of(file)),
            )
            .unwrap();
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw), "{name}");
        assert_eq!(outcome.already_cached(), i > 0, "{name}");
        if i == 0 {
            assert_eq!(outcome.image.meta.input_sha256, Sha256Digest::of(file));
            assert_eq!(outcome.image.meta.input_size, file.len() as u64);
        }
        // The latest download's provenance is the image's.
        assert_eq!(
            outcome.image.meta.provenance,
            Some(provenance(name)),
            "{name}"
        );
        let again = cache.get(&outcome.image.sha256()).unwrap().unwrap();
        assert_eq!(again.meta.provenance, Some(provenance(name)), "{name}");
    }
    assert_eq!(
        std::fs::read(cache.get(&Sha256Digest::of(&raw)).unwrap().unwrap().path).unwrap(),
        raw
    );
}

#[test]
fn a_mismatch_a_failed_stream_and_a_zip_leave_nothing_in_the_cache() {
    let raw = sample_image();
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path()).unwrap();

    let (src, _) = source("raw.img");
    let error = cache
        .import_stream(
            &mut Cursor::new(raw.clone()),
            src,
            common::expecting(Sha256Digest::of(b"something else")),
        )
        .unwrap_err();
    assert!(
        matches!(error, ImageError::ChecksumMismatch { .. }),
        "{error}"
    );
    no_entries(&cache);

    struct FailsHalfway(Cursor<Vec<u8>>, usize);
    impl Read for FailsHalfway {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.position() as usize >= self.1 {
                return Err(io::Error::other("the download stopped before the end"));
            }
            let end = buf.len().min(self.1 - self.0.position() as usize);
            self.0.read(&mut buf[..end])
        }
    }
    let (src, _) = source("raw.img");
    let half = raw.len() / 2;
    let error = cache
        .import_stream(
            &mut FailsHalfway(Cursor::new(raw.clone()), half),
            src,
            common::options(),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("stopped before the end"),
        "{error}"
    );
    no_entries(&cache);

    let (src, _) = source("image.zip");
    let error = cache
        .import_stream(&mut Cursor::new(zip(&raw)), src, common::options())
        .unwrap_err();
    assert!(matches!(error, ImageError::Unsupported { .. }), "{error}");
    no_entries(&cache);
}

/// Replaces the first range's checksum with another valid-looking one, the
/// map resealed (its own checksum recomputed, as a careful forger would).
fn lying(map: &str) -> String {
    let at = map.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut out = map.to_string();
    out.replace_range(at..at + 64, &"ab".repeat(32));
    flashrack_testkit::bmap::reseal(&out)
}

#[test]
fn a_bmap_with_a_stream_is_checked_in_its_one_pass_and_a_lie_keeps_nothing() {
    use flashrack_image::{BmapInput, MapOrigin};
    use flashrack_inspect::bmap::BmapError;
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.img");
    let raw = flashrack_testkit::bmap::sparse_image(&raw_path);
    let truth = flashrack_testkit::bmap::bmaptool_create(&raw_path);
    for (what, bytes) in [("raw", raw.clone()), ("gzip", common::gzip(&raw))] {
        // A map that lies: refused, nothing kept, raw or compressed.
        let cache = ImageCache::open(dir.path().join(format!("cache-{what}"))).unwrap();
        let (from, _) = source("disk.img");
        let options = flashrack_image::ImportOptions {
            bmap: Some(BmapInput::parse("disk.img.bmap", &lying(&truth)).unwrap()),
            ..common::options()
        };
        let error = cache
            .import_stream(&mut Cursor::new(bytes.clone()), from, options)
            .unwrap_err();
        assert!(
            matches!(
                &error,
                ImageError::BmapRefused { file, source: BmapError::RangeChecksum { first: 0, last: 9 } }
                    if file == "disk.img.bmap"
            ),
            "{what}: {error:?}"
        );
        no_entries(&cache);

        // The truth: kept with the image, from the one pass.
        let (from, _) = source("disk.img");
        let options = flashrack_image::ImportOptions {
            bmap: Some(BmapInput::parse("disk.img.bmap", &truth).unwrap()),
            ..common::options()
        };
        let outcome = cache
            .import_stream(&mut Cursor::new(bytes), from, options)
            .unwrap();
        assert_eq!(outcome.image.sha256(), Sha256Digest::of(&raw), "{what}");
        let map = outcome.map.expect("the map checked in the pass");
        assert!(matches!(
            &map.origin,
            MapOrigin::Bmap { file, range_checksums: true, claims: Some(_), .. } if file == "disk.img.bmap"
        ));
        assert_eq!(
            map.ranges.ranges(),
            &[(0, 10 * 4096), (100 * 4096, 2 * 4096)]
        );
        assert_eq!(cache.block_map(&outcome.image.sha256()).unwrap(), Some(map));
    }

    // A map of a longer image: its size is checked at the stream's end.
    let cache = ImageCache::open(dir.path().join("cache-short")).unwrap();
    let (from, _) = source("disk.img");
    let options = flashrack_image::ImportOptions {
        bmap: Some(BmapInput::parse("disk.img.bmap", &truth).unwrap()),
        ..common::options()
    };
    let error = cache
        .import_stream(&mut Cursor::new(raw[..512 << 10].to_vec()), from, options)
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ImageError::BmapRefused {
                source: BmapError::ImageSize {
                    expected: 1_048_576,
                    actual: 524_288
                },
                ..
            }
        ),
        "{error:?}"
    );
    no_entries(&cache);
}

#[test]
fn a_zip_stream_is_read_from_the_file_it_was_spooled_to_once_it_has_ended() {
    let raw = sample_image();
    let archive = zip(&raw);
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let spool = dir.path().join("disk.zip.part");
    std::fs::write(&spool, &archive).unwrap();
    let (src, slot) = source("disk.zip");
    let src = StreamSource {
        spooled: Some(spool.clone()),
        ..src
    };
    let mut stream = Download {
        data: Cursor::new(archive.clone()),
        slot,
        provenance: provenance("disk.zip"),
    };
    let outcome = cache
        .import_stream(
            &mut stream,
            src,
            common::expecting(Sha256Digest::of(&archive)),
        )
        .unwrap();
    let image = &outcome.image;
    assert_eq!(image.sha256(), Sha256Digest::of(&raw));
    assert_eq!(std::fs::read(&image.path).unwrap(), raw);
    assert_eq!(image.meta.format, flashrack_image::ImageFormat::Zip);
    assert_eq!(image.meta.zip_entry.as_deref(), Some("images/disk.img"));
    assert_eq!(image.meta.original_name, "disk.zip");
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(&archive));
    assert_eq!(image.meta.input_size, archive.len() as u64);
    assert_eq!(image.meta.provenance, Some(provenance("disk.zip")));

    // A spool file that is not what was streamed is refused, and nothing is kept.
    let cache = ImageCache::open(dir.path().join("other")).unwrap();
    std::fs::write(&spool, &archive[..archive.len() - 1]).unwrap();
    let (src, _) = source("disk.zip");
    let src = StreamSource {
        spooled: Some(spool.clone()),
        ..src
    };
    let error = cache
        .import_stream(&mut Cursor::new(archive.clone()), src, common::options())
        .unwrap_err();
    assert!(
        matches!(&error, ImageError::ReadInput { path, .. } if path == &spool),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("were streamed")
            || format!("{error:?}").contains("were streamed"),
        "{error:?}"
    );
    no_entries(&cache);
}

/// `archive` (one [`streamed_zip`] wrote, a directory first) with a data
/// descriptor after that directory too, as `zip` writing to a pipe stores
/// directories: bit 3 set in both its headers, an empty descriptor after its
/// local header, and the offsets after it moved on.
fn with_a_directory_descriptor(archive: &[u8]) -> Vec<u8> {
    let u16_at = |a: &[u8], at: usize| usize::from(u16::from_le_bytes([a[at], a[at + 1]]));
    let u32_at = |a: &[u8], at: usize| u32::from_le_bytes(a[at..at + 4].try_into().unwrap());
    let name_len = u16_at(archive, 26);
    assert!(
        archive[30..30 + name_len].ends_with(b"/"),
        "a directory first"
    );
    let header_end = 30 + name_len + u16_at(archive, 28);
    let descriptor = [b"PK\x07\x08".as_slice(), &[0u8; 12]].concat();
    let shift = descriptor.len() as u32;
    let mut out = archive[..header_end].to_vec();
    out[6] |= 0x08;
    out.extend_from_slice(&descriptor);
    out.extend_from_slice(&archive[header_end..]);
    let eocd = out
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .expect("an end record");
    let entries = u16_at(&out, eocd + 10);
    let directory = u32_at(&out, eocd + 16) + shift;
    out[eocd + 16..eocd + 20].copy_from_slice(&directory.to_le_bytes());
    let mut at = directory as usize;
    for _ in 0..entries {
        assert_eq!(&out[at..at + 4], b"PK\x01\x02");
        let local = u32_at(&out, at + 42);
        if local == 0 {
            out[at + 8] |= 0x08;
        } else {
            out[at + 42..at + 46].copy_from_slice(&(local + shift).to_le_bytes());
        }
        at += 46 + u16_at(&out, at + 28) + u16_at(&out, at + 30) + u16_at(&out, at + 32);
    }
    out
}

/// Counts the bytes a stream has yielded.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// Hears of the pass: the size it began with, how much of the stream had
/// been read when each chunk was announced, and whether (why) the pass was
/// abandoned.
#[derive(Debug, Default)]
struct Follower {
    read: Arc<AtomicU64>,
    began: Mutex<Option<Option<u64>>>,
    chunks_at: Mutex<Vec<u64>>,
    abandoned: Mutex<Option<String>>,
}

impl ImportObserver for Follower {
    fn began(&self, _: &File, _: u32, size: Option<u64>) {
        let mut began = self.began.lock().unwrap();
        assert!(began.is_none(), "began twice");
        *began = Some(size);
    }

    fn chunk(&self, _: usize, _: bool, _: u128) {
        assert!(self.began.lock().unwrap().is_some(), "a chunk before began");
        assert!(
            self.abandoned.lock().unwrap().is_none(),
            "a chunk after abandoned"
        );
        let read = self.read.load(Ordering::SeqCst);
        self.chunks_at.lock().unwrap().push(read);
    }

    fn abandoned(&self, reason: &str) {
        assert!(
            self.began.lock().unwrap().is_some(),
            "abandoned before began"
        );
        let mut abandoned = self.abandoned.lock().unwrap();
        assert!(abandoned.is_none(), "abandoned twice");
        *abandoned = Some(reason.to_string());
    }
}

/// Imports `archive` as a download feeds it (spooled to a file, as a
/// download's partial file is), followed by a [`Follower`].
fn import_streamed(
    cache: &ImageCache,
    spool: &std::path::Path,
    archive: &[u8],
    entry: Option<&str>,
) -> (
    Result<flashrack_image::ImportOutcome, ImageError>,
    Arc<Follower>,
) {
    std::fs::write(spool, archive).unwrap();
    let follower = Arc::new(Follower::default());
    let (src, _) = source("disk.zip");
    let src = StreamSource {
        spooled: Some(spool.to_path_buf()),
        ..src
    };
    let mut stream = Counted {
        inner: Cursor::new(archive.to_vec()),
        read: follower.read.clone(),
    };
    let options = ImportOptions {
        observer: Some(follower.clone()),
        zip_entry: entry.map(str::to_string),
        ..common::options()
    };
    let outcome = cache.import_stream(&mut stream, src, options);
    (outcome, follower)
}

#[test]
fn a_deflated_entry_whose_sizes_follow_its_data_is_imported_as_it_arrives() {
    let raw = common::image(40, 1000, &[2, 3, 9], 31);
    let other = common::image(3, 500, &[], 32);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("disk.zip.part");
    let one = streamed_zip(
        &[("disk.img", Some(&raw))],
        zip::CompressionMethod::Deflated,
    );
    // The entry named, after a directory (stored) and another file
    // (deflated), each with its data descriptor: those are read past as
    // they arrive.
    let several = with_a_directory_descriptor(&streamed_zip(
        &[
            ("notes/", None),
            ("readme.txt", Some(&other)),
            ("images/disk.img", Some(&raw)),
        ],
        zip::CompressionMethod::Deflated,
    ));
    // Zip64 (as `zip` writes a file from a pipe, of a size it cannot know):
    // a zip64 field in the local header, and so 8-byte sizes in the
    // descriptor.
    let zip64 = streamed_zip64("large.img", &raw, zip::CompressionMethod::Deflated);
    let name_len = usize::from(u16::from_le_bytes([zip64[26], zip64[27]]));
    assert_eq!(
        &zip64[30 + name_len..32 + name_len],
        &[1, 0],
        "a zip64 field"
    );
    let (descriptor, directory) = descriptor_and_directory(&zip64);
    assert_eq!(directory - descriptor, 4 + 4 + 8 + 8, "8-byte sizes");
    for (archive, entry, name) in [
        (&one, None, "disk.img"),
        (&several, Some("images/disk.img"), "images/disk.img"),
        (&zip64, None, "large.img"),
    ] {
        imported_as_it_arrived(dir.path(), &spool, archive, entry, name, &raw);
    }
}

/// Imports `archive` as a download feeds it and checks that its entry
/// `name` (`entry` when named) came out as `raw`, followed as it arrived:
/// begun with no size (it follows the data), the first chunk announced
/// before half the archive had been read, and most of them while the rest
/// (the descriptor and the central directory among it) was still to come.
/// (The stream is read a MiB at a time.)
fn imported_as_it_arrived(
    dir: &std::path::Path,
    spool: &std::path::Path,
    archive: &[u8],
    entry: Option<&str>,
    name: &str,
    raw: &[u8],
) {
    let cache = ImageCache::open(dir.join(format!("cache-{}", name.replace('/', "-")))).unwrap();
    let (outcome, follower) = import_streamed(&cache, spool, archive, entry);
    let image = outcome.unwrap_or_else(|e| panic!("{name}: {e:?}")).image;
    assert_eq!(image.sha256(), Sha256Digest::of(raw), "{name}");
    assert_eq!(std::fs::read(&image.path).unwrap(), raw, "{name}");
    assert_eq!(image.meta.zip_entry.as_deref(), Some(name));
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(archive));
    assert_eq!(image.meta.input_size, archive.len() as u64);
    assert_eq!(*follower.began.lock().unwrap(), Some(None), "{name}");
    let chunks_at = follower.chunks_at.lock().unwrap();
    let whole = archive.len() as u64;
    assert_eq!(chunks_at.len(), raw.len().div_ceil(common::CHUNK as usize));
    assert!(chunks_at[0] < whole / 2, "{name}: {chunks_at:?} of {whole}");
    let early = chunks_at.iter().filter(|&&at| at < whole).count();
    assert!(
        early > chunks_at.len() / 2,
        "{name}: {chunks_at:?} of {whole}"
    );
}

/// Deflated, a descriptor that lies is read and disagrees; stored, no
/// descriptor agrees with the data, so none ends it (the stream ends
/// first). Either way, and with a directory that lies, the import fails.
#[test]
fn a_data_descriptor_or_a_central_directory_that_lies_fails_the_import_and_keeps_nothing() {
    let raw = common::image(12, 1000, &[2], 33);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("disk.zip.part");
    for (method, lied) in [
        (zip::CompressionMethod::Deflated, "data descriptor says"),
        (
            zip::CompressionMethod::Stored,
            "no data descriptor agrees with the stored data of disk.img",
        ),
    ] {
        let archive = streamed_zip(&[("disk.img", Some(&raw))], method);
        let (descriptor, directory) = descriptor_and_directory(&archive);
        let lie = |at: usize| {
            let mut archive = archive.clone();
            archive[at] ^= 0x01;
            archive
        };
        for (what, lying, says) in [
            // After its signature: the CRC-32, then the compressed size,
            // then the size.
            ("descriptor's CRC-32", lie(descriptor + 4), lied),
            ("descriptor's compressed size", lie(descriptor + 8), lied),
            ("descriptor's size", lie(descriptor + 12), lied),
            // The directory's CRC-32 (16 bytes into its header) and size (24).
            (
                "directory's CRC-32",
                lie(directory + 16),
                "central directory lists disk.img",
            ),
            (
                "directory's size",
                lie(directory + 24),
                "central directory lists disk.img",
            ),
        ] {
            let what = format!("{method:?} {what}");
            let cache = ImageCache::open(dir.path().join(what.replace(' ', "-"))).unwrap();
            let (outcome, follower) = import_streamed(&cache, &spool, &lying, None);
            let error = outcome.unwrap_err();
            match &error {
                ImageError::Corrupt { reason, .. } => {
                    assert!(reason.contains(says), "{what}: {reason}")
                }
                other => panic!("{what}: {other:?}"),
            }
            // It was followed (so the import's failure is the followers' too).
            assert_eq!(*follower.began.lock().unwrap(), Some(None), "{what}");
            assert!(!follower.chunks_at.lock().unwrap().is_empty(), "{what}");
            no_entries(&cache);
        }
    }
}

/// `raw` with data descriptors planted in it, each followed by a record's
/// signature, that a stored entry's reader must take as data: one of
/// another entry (an archive inside the image), one with the right sizes
/// for the data before it and a wrong CRC-32 (before an end of central
/// directory's signature, not a record that may follow an entry, one with
/// a wrong CRC-32 before a local header's), and a whole stored archive
/// written to a stream.
fn with_descriptor_patterns(raw: &[u8]) -> Vec<u8> {
    let inner = streamed_zip(
        &[("inner.img", Some(&raw[..5000]))],
        zip::CompressionMethod::Stored,
    );
    let mut out = raw[..100_000].to_vec();
    out.extend_from_slice(&data_descriptor(&raw[..3000]));
    out.extend_from_slice(b"PK\x03\x04");
    out.extend_from_slice(&raw[100_000..200_000]);
    let mut near = data_descriptor(&out);
    near[4] ^= 0x01;
    out.extend_from_slice(&near);
    out.extend_from_slice(b"PK\x01\x02");
    out.extend_from_slice(&inner);
    out.extend_from_slice(&raw[200_000..]);
    out
}

#[test]
fn a_stored_entry_whose_sizes_follow_its_data_is_found_in_the_stream_and_imported_as_it_arrives() {
    let raw = with_descriptor_patterns(&common::image(40, 1000, &[2, 3, 9], 34));
    let other = common::image(3, 500, &[], 35);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("disk.zip.part");
    let one = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    // The entry named, after a directory and another stored file, each with
    // its data descriptor: those are read past as they arrive, so the one
    // after them streams too.
    let several = with_a_directory_descriptor(&streamed_zip(
        &[
            ("notes/", None),
            ("readme.txt", Some(&other)),
            ("images/disk.img", Some(&raw)),
        ],
        zip::CompressionMethod::Stored,
    ));
    // Zip64: 8-byte sizes in the descriptor.
    let zip64 = streamed_zip64("large.img", &raw, zip::CompressionMethod::Stored);
    let (descriptor, directory) = descriptor_and_directory(&zip64);
    assert_eq!(directory - descriptor, 4 + 4 + 8 + 8, "8-byte sizes");
    for (archive, entry, name) in [
        (&one, None, "disk.img"),
        (&several, Some("images/disk.img"), "images/disk.img"),
        (&zip64, None, "large.img"),
    ] {
        imported_as_it_arrived(dir.path(), &spool, archive, entry, name, &raw);
    }
}

/// Data that holds a data descriptor of the data before it, then a record's
/// signature, ends a stored entry there as it arrives (such data is made,
/// not met by chance: sixteen bytes that depend on all before them). The
/// central directory, once the archive is whole, lists the entry longer:
/// the stream could not tell its end, so the archive is read from the
/// spool file through its directory, and the image is the one a file
/// import of the same archive gives. Unfollowed, that is all; followed,
/// the observer heard of the entry's first bytes only, and is told the
/// pass it followed was abandoned, and why (nothing more after it).
#[test]
fn data_made_to_end_a_stored_entry_early_is_read_again_from_the_spool_as_a_file_is() {
    let image = common::image(12, 1000, &[2], 36);
    let mut raw = image[..300_000].to_vec();
    raw.extend_from_slice(&data_descriptor(&raw.clone()));
    raw.extend_from_slice(b"PK\x03\x04");
    raw.extend_from_slice(&image[300_000..]);
    let archive = streamed_zip(&[("disk.img", Some(&raw))], zip::CompressionMethod::Stored);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("disk.zip.part");

    // From a file: its central directory first.
    let file = dir.path().join("disk.zip");
    std::fs::write(&file, &archive).unwrap();
    let from_file = ImageCache::open(dir.path().join("file"))
        .unwrap()
        .import(&file, common::options())
        .unwrap()
        .image;
    assert_eq!(from_file.sha256(), Sha256Digest::of(&raw));

    // As a download, unfollowed: the same image, read again from the spool.
    let cache = ImageCache::open(dir.path().join("stream")).unwrap();
    std::fs::write(&spool, &archive).unwrap();
    let (src, _) = source("disk.zip");
    let src = StreamSource {
        spooled: Some(spool.clone()),
        ..src
    };
    let image = cache
        .import_stream(&mut Cursor::new(archive.clone()), src, common::options())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .image;
    assert_eq!(image.sha256(), from_file.sha256());
    assert_eq!(std::fs::read(&image.path).unwrap(), raw);
    assert_eq!(image.meta.zip_entry.as_deref(), Some("disk.img"));
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(&archive));
    assert_eq!(image.meta.input_size, archive.len() as u64);
    assert_eq!(image.manifest, from_file.manifest);

    // Followed: the same image, the follower told its pass was abandoned.
    let cache = ImageCache::open(dir.path().join("followed")).unwrap();
    let (outcome, follower) = import_streamed(&cache, &spool, &archive, None);
    let image = outcome.unwrap_or_else(|e| panic!("{e:?}")).image;
    assert_eq!(image.sha256(), from_file.sha256());
    assert_eq!(std::fs::read(&image.path).unwrap(), raw);
    assert_eq!(*follower.began.lock().unwrap(), Some(None));
    let reason = follower
        .abandoned
        .lock()
        .unwrap()
        .clone()
        .expect("abandoned");
    assert!(
        reason.contains(
            "disk.img in https://example.invalid/disk.zip seemed to end after 300000 bytes"
        ) && reason.contains(&format!("lists {} bytes", raw.len()))
            && reason.contains("read again from the downloaded archive"),
        "{reason}"
    );
    // It heard of the first 300000 bytes' chunks only.
    assert_eq!(
        follower.chunks_at.lock().unwrap().len(),
        300_000usize.div_ceil(common::CHUNK as usize)
    );
}

/// The same made data in a stored file before the one imported: it is read
/// past to the false end, and what follows, read from the middle of its
/// data, is not the archive's next record. The archive is read from the
/// spool file through its central directory, as from a file: the named
/// file's image, the same a file import gives.
#[test]
fn data_made_to_end_an_earlier_stored_entry_early_is_read_again_from_the_spool_as_a_file_is() {
    let other = common::image(6, 1000, &[], 37);
    let mut readme = other[..100_000].to_vec();
    readme.extend_from_slice(&data_descriptor(&readme.clone()));
    readme.extend_from_slice(b"PK\x03\x04");
    readme.extend_from_slice(&other[100_000..]);
    let raw = common::image(12, 1000, &[2], 38);
    let archive = streamed_zip(
        &[("readme.txt", Some(&readme)), ("disk.img", Some(&raw))],
        zip::CompressionMethod::Stored,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.zip");
    std::fs::write(&file, &archive).unwrap();
    let options = || ImportOptions {
        zip_entry: Some("disk.img".into()),
        ..common::options()
    };
    let from_file = ImageCache::open(dir.path().join("file"))
        .unwrap()
        .import(&file, options())
        .unwrap()
        .image;
    assert_eq!(from_file.sha256(), Sha256Digest::of(&raw));

    let spool = dir.path().join("disk.zip.part");
    let cache = ImageCache::open(dir.path().join("followed")).unwrap();
    let (outcome, follower) = import_streamed(&cache, &spool, &archive, Some("disk.img"));
    let image = outcome.unwrap_or_else(|e| panic!("{e:?}")).image;
    assert_eq!(image.manifest, from_file.manifest);
    assert_eq!(std::fs::read(&image.path).unwrap(), raw);
    assert_eq!(image.meta.zip_entry.as_deref(), Some("disk.img"));
    assert_eq!(image.meta.input_sha256, Sha256Digest::of(&archive));
    // Nothing of it was told before the archive was whole: the follower
    // heard of the second pass alone, with the directory's size.
    assert_eq!(
        *follower.began.lock().unwrap(),
        Some(Some(raw.len() as u64))
    );
    assert!(follower.abandoned.lock().unwrap().is_none());
    assert_eq!(
        follower.chunks_at.lock().unwrap().len(),
        raw.len().div_ceil(common::CHUNK as usize)
    );
}
