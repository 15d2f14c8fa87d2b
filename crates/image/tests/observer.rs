//! An import told chunk by chunk (`ImportOptions::observer`): every chunk is
//! in the file the observer was given, with the fingerprint announced, before
//! it is announced; the announcements are the manifest's; a failed import
//! announces chunks and then fails.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use common::*;
use flashrack_image::{ImageError, ImportObserver, ImportOptions, Sha256Digest};
use xxhash_rust::xxh3::xxh3_128;

/// What an observer heard, checking each chunk against the file as it hears it.
#[derive(Debug, Default)]
struct Heard {
    began: Option<(u32, Option<u64>)>,
    file: Option<File>,
    chunks: Vec<(usize, bool, u128)>,
    /// Chunks whose bytes in the file did not have the announced fingerprint
    /// when they were announced.
    wrong: Vec<usize>,
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Heard>);

/// An observer that takes the bytes of data chunks as they are announced
/// (as a flash following the import does): what it was handed, checked.
#[derive(Debug, Default)]
struct Taker {
    heard: Mutex<Vec<(usize, bool, u128)>>,
    /// Data chunks whose bytes did not have the fingerprint handed with them.
    wrong: Mutex<Vec<usize>>,
    past_page_cache: std::sync::atomic::AtomicBool,
}

impl ImportObserver for Taker {
    fn began(&self, _: &File, _: u32, _: Option<u64>) {}

    fn chunk(&self, len: usize, zero: bool, fingerprint: u128) {
        self.heard.lock().unwrap().push((len, zero, fingerprint));
    }

    fn abandoned(&self, reason: &str) {
        panic!("a file's pass is never abandoned: {reason}");
    }

    fn takes_bytes(&self) -> bool {
        true
    }

    fn chunk_data(&self, data: &[u8], fingerprint: u128) {
        let mut heard = self.heard.lock().unwrap();
        if xxh3_128(data) != fingerprint || data.iter().all(|&b| b == 0) {
            self.wrong.lock().unwrap().push(heard.len());
        }
        heard.push((data.len(), false, fingerprint));
    }

    fn reads_past_page_cache(&self) {
        self.past_page_cache
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn an_observer_taking_the_bytes_gets_every_data_chunk_and_the_raw_file_stays_out_of_the_page_cache()
{
    let data = image(40, 1234, &[2, 7], 24);
    let fixture = Fixture::new();
    let path = fixture.input("disk.img", &data);
    let file = File::open(&path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    settle(&path);
    let taker = Arc::new(Taker::default());
    let options = ImportOptions {
        observer: Some(taker.clone()),
        // As `flash` imports the operator's raw file: referenced in place.
        reference_raw: true,
        ..options()
    };
    let outcome = fixture.cache.import(&path, options).unwrap();
    let manifest = &outcome.image.manifest;
    assert_eq!(manifest.sha256(), Sha256Digest::of(&data));
    let heard = taker.heard.lock().unwrap();
    assert_eq!(heard.len() as u64, manifest.chunk_count());
    for (index, &(len, zero, fingerprint)) in heard.iter().enumerate() {
        let index = index as u64;
        assert_eq!(len, manifest.chunk_span(index).1, "{index}");
        assert_eq!(
            zero,
            manifest.chunk_kind(index) == flashrack_core::ChunkKind::Zero,
            "{index}"
        );
        assert_eq!(Some(fingerprint), manifest.chunk_fingerprint(index));
    }
    assert!(taker.wrong.lock().unwrap().is_empty());
    // Read with O_DIRECT (the file system of the tests, ext4 here, allows
    // it; tmpfs would not), and the observer was told so.
    let on_tmpfs = rustix::fs::statfs(&path).unwrap().f_type == 0x0102_1994;
    if !on_tmpfs {
        assert!(taker
            .past_page_cache
            .load(std::sync::atomic::Ordering::Relaxed));
        let cached = flashrack_testkit::page_cache_bytes(&path);
        assert!(
            cached <= 64 << 10,
            "the import cached {cached} bytes of the {} it read",
            data.len()
        );
    }
}

impl ImportObserver for Recorder {
    fn began(&self, raw: &File, chunk_size: u32, size: Option<u64>) {
        let mut heard = self.0.lock().unwrap();
        assert!(heard.began.is_none(), "began twice");
        heard.began = Some((chunk_size, size));
        heard.file = Some(raw.try_clone().unwrap());
    }

    fn chunk(&self, len: usize, zero: bool, fingerprint: u128) {
        let mut heard = self.0.lock().unwrap();
        let index = heard.chunks.len();
        let (chunk_size, _) = heard.began.expect("a chunk before the beginning");
        let mut bytes = vec![0u8; len];
        let file = heard.file.as_ref().unwrap();
        // An all-zero chunk may be a hole the file does not reach yet.
        let read = file.read_at(&mut bytes, index as u64 * u64::from(chunk_size));
        if !zero && (read.ok() != Some(len) || xxh3_128(&bytes) != fingerprint) {
            heard.wrong.push(index);
        }
        heard.chunks.push((len, zero, fingerprint));
    }

    fn abandoned(&self, reason: &str) {
        panic!("a file's pass is never abandoned: {reason}");
    }
}

fn xz_one_stream(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let options = lzma_rust2::XzOptions::with_preset(0);
    let mut encoder = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn observed(options: ImportOptions) -> (ImportOptions, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let options = ImportOptions {
        observer: Some(recorder.clone()),
        ..options
    };
    (options, recorder)
}

#[test]
fn every_chunk_is_in_the_file_before_it_is_announced_raw_or_compressed() {
    let data = image(6, 1000, &[1, 4], 21);
    for (name, bytes, size) in [
        ("disk.img", data.clone(), Some(data.len() as u64)),
        // One xz stream declares its size; two (what `xz()` writes) do not.
        ("one.img.xz", xz_one_stream(&data), Some(data.len() as u64)),
        ("disk.img.xz", xz(&data), None),
        ("disk.img.gz", gzip(&data), None),
    ] {
        let fixture = Fixture::new();
        let path = fixture.input(name, &bytes);
        let (options, recorder) = observed(options());
        let outcome = fixture.cache.import(&path, options).unwrap();
        let heard = recorder.0.lock().unwrap();
        assert_eq!(heard.began, Some((CHUNK, size)), "{name}");
        assert!(heard.wrong.is_empty(), "{name}: chunks {:?}", heard.wrong);
        let manifest = &outcome.image.manifest;
        assert_eq!(manifest.sha256(), Sha256Digest::of(&data));
        assert_eq!(heard.chunks.len() as u64, manifest.chunk_count(), "{name}");
        for (index, &(len, zero, fingerprint)) in heard.chunks.iter().enumerate() {
            let index = index as u64;
            assert_eq!(len, manifest.chunk_span(index).1, "{name} {index}");
            assert_eq!(
                zero,
                manifest.chunk_kind(index) == flashrack_core::ChunkKind::Zero
            );
            assert_eq!(Some(fingerprint), manifest.chunk_fingerprint(index));
        }
    }
}

#[test]
fn a_known_file_is_not_read_and_nothing_is_announced() {
    let fixture = Fixture::new();
    let data = image(3, 0, &[], 22);
    let path = fixture.input("disk.img", &data);
    settle(&path);
    fixture.cache.import(&path, options()).unwrap();
    let (options, recorder) = observed(options());
    let outcome = fixture.cache.import(&path, options).unwrap();
    assert!(outcome.already_cached());
    let heard = recorder.0.lock().unwrap();
    assert!(heard.began.is_none() && heard.chunks.is_empty());
}

#[test]
fn a_truncated_archive_announces_its_chunks_then_fails_and_keeps_nothing() {
    let fixture = Fixture::new();
    let data = image(8, 0, &[], 23);
    let whole = xz(&data);
    let path = fixture.input("disk.img.xz", &whole[..whole.len() * 2 / 3]);
    let (options, recorder) = observed(options());
    let error = fixture.cache.import(&path, options).unwrap_err();
    assert!(matches!(error, ImageError::Corrupt { .. }), "{error:?}");
    let heard = recorder.0.lock().unwrap();
    assert!(heard.began.is_some());
    assert!(heard.wrong.is_empty());
    fixture.assert_cache_empty();
}

#[test]
fn a_digest_mismatch_comes_after_every_chunk_and_keeps_nothing() {
    let fixture = Fixture::new();
    let data = image(4, 0, &[], 24);
    let path = fixture.input("disk.img", &data);
    let (options, recorder) = observed(expecting(Sha256Digest::of(b"another image")));
    let error = fixture.cache.import(&path, options).unwrap_err();
    assert!(
        matches!(error, ImageError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(recorder.0.lock().unwrap().chunks.len(), 4);
    fixture.assert_cache_empty();
}
