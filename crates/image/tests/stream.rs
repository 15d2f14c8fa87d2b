//! Importing from a stream (what a download feeds): every stream format and
//! raw images in one pass with the same digests as a file import, the
//! provenance set while the stream was read kept with the image, and a
//! stream that fails, mismatches or is a zip leaving nothing behind.

mod common;

use std::io::{self, Cursor, Read};
use std::sync::{Arc, OnceLock};

use common::{compressed_formats, sample_image, zip};
use flashrack_core::{DigestSource, Provenance, Sha256Digest};
use flashrack_image::{ImageCache, ImageError, StreamSource};

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
