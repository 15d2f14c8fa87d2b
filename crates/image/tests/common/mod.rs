//! Test data and helpers shared by the integration tests: images generated on
//! the fly, compressed with the same crates the importer decodes with.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashrack_image::{ImageCache, ImageFormat, ImportOptions, Sha256Digest};

/// The chunk size the tests use: small, so a small image has many chunks.
pub const CHUNK: u32 = 64 * 1024;

/// Pseudo-random bytes (xorshift), the same for the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An image of `chunks` full chunks of [`CHUNK`] bytes plus a short tail of
/// `tail` bytes, where the chunks listed in `zero` (the tail is chunk `chunks`)
/// are all zero and every other chunk is noise.
pub fn image(chunks: usize, tail: usize, zero: &[usize], seed: u64) -> Vec<u8> {
    let chunk = CHUNK as usize;
    let mut data = noise(chunks * chunk + tail, seed);
    for &index in zero {
        let start = index * chunk;
        let end = (start + chunk).min(data.len());
        data[start..end].fill(0);
    }
    // Make sure no "data" chunk starts like a compressed file.
    if !zero.contains(&0) {
        data[0] = 0xeb;
    }
    data
}

/// The standard test image: 20 full chunks and a 1000-byte tail, with zero
/// chunks 2..=4 and 9. About 1.3 MB.
pub fn sample_image() -> Vec<u8> {
    image(20, 1000, &[2, 3, 4, 9], 7)
}

/// Two gzip members back to back.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = Vec::new();
    for part in [a, b] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(part).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

/// Two xz streams back to back.
pub fn xz(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 3);
    let mut out = Vec::new();
    for part in [a, b] {
        let options = lzma_rust2::XzOptions::with_preset(0);
        let mut encoder = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
        encoder.write_all(part).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

/// Two zstd frames back to back, with content checksums as the `zstd` tool
/// writes them (without one, a damaged raw block cannot be noticed).
pub fn zstd(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = Vec::new();
    for part in [a, b] {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.include_checksum(true).unwrap();
        encoder.write_all(part).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

/// Two bzip2 streams back to back (as pbzip2 writes).
pub fn bzip2(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 2);
    let mut out = Vec::new();
    for part in [a, b] {
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        encoder.write_all(part).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

/// A zip archive: `Some(bytes)` entries are files, `None` entries directories.
pub fn zip_with(entries: &[(&str, Option<&[u8]>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, content) in entries {
        match content {
            Some(bytes) => {
                writer.start_file(*name, options).unwrap();
                writer.write_all(bytes).unwrap();
            }
            None => writer.add_directory(*name, options).unwrap(),
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A deflated zip holding a directory and one file.
pub fn zip(data: &[u8]) -> Vec<u8> {
    zip_with(
        &[("images/", None), ("images/disk.img", Some(data))],
        zip::CompressionMethod::Deflated,
    )
}

/// Compresses bytes into one of the formats.
pub type Compressor = fn(&[u8]) -> Vec<u8>;

/// Every compressed format with its compressor and a file name whose extension
/// is deliberately wrong, so detection by content is what makes imports work.
pub fn compressed_formats() -> Vec<(ImageFormat, Compressor, &'static str)> {
    vec![
        (ImageFormat::Gzip, gzip, "disk.img"),
        (ImageFormat::Xz, xz, "disk.gz"),
        (ImageFormat::Zstd, zstd, "disk.xz"),
        (ImageFormat::Bzip2, bzip2, "disk.zst"),
        (ImageFormat::Zip, zip, "disk.bz2"),
    ]
}

/// Test options with the small chunk size.
pub fn options() -> ImportOptions {
    ImportOptions {
        chunk_size: CHUNK,
        ..ImportOptions::default()
    }
}

/// Options expecting `digest`.
pub fn expecting(digest: Sha256Digest) -> ImportOptions {
    ImportOptions {
        expected_sha256: Some(digest),
        ..options()
    }
}

/// A fresh cache in its own temporary directory, and a separate directory for
/// input files.
pub struct Fixture {
    pub cache: ImageCache,
    pub cache_dir: tempfile::TempDir,
    pub inputs: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::open(cache_dir.path()).unwrap();
        Self {
            cache,
            cache_dir,
            inputs: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes an input file and returns its path.
    pub fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.inputs.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Every file (not directory) in the cache, relative to its root.
    pub fn cache_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        walk(self.cache_dir.path(), self.cache_dir.path(), &mut files);
        files.sort();
        files
    }

    /// Files under one subdirectory of the cache.
    pub fn files_under(&self, sub: &str) -> Vec<String> {
        self.cache_files()
            .into_iter()
            .filter(|f| f.starts_with(&format!("{sub}/")))
            .collect()
    }

    /// Asserts that the cache holds no file at all.
    pub fn assert_cache_empty(&self) {
        let files = self.cache_files();
        assert!(files.is_empty(), "cache should be empty, holds {files:?}");
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            walk(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// Waits until the last change of the file at `path` (its ctime) lies far
/// enough in the past for the cache to record its identity (100 ms on a file
/// system with nanosecond timestamps, 3 s on one with whole seconds: see
/// `FileIdentity::is_settled`). A wait on the clock, which no test can set
/// back for a ctime, not on another thread.
pub fn settle(path: &Path) {
    loop {
        let meta = fs::metadata(path).unwrap();
        let margin = if meta.ctime_nsec() == 0 {
            Duration::from_millis(3200)
        } else {
            Duration::from_millis(150)
        };
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let age = SystemTime::now().duration_since(ctime).unwrap_or_default();
        if age > margin {
            return;
        }
        std::thread::sleep(margin - age);
    }
}
