//! Test images built in the test's own temporary directory.
#![allow(dead_code)]

use std::path::Path;

use flashrack_engine::SourceImage;

/// Chunk size used by the tests: small, so that small images have many chunks.
pub const CHUNK: u32 = 64 * 1024;

/// Writes an image of `size` bytes (random runs with zero holes, deterministic
/// for `seed`) under `dir` and returns it with its bytes.
pub fn make_image(dir: &Path, size: usize, seed: u64) -> (SourceImage, Vec<u8>) {
    let bytes = flashrack_testkit::image_bytes(size, seed, 3 * CHUNK as usize);
    (image_from_bytes(dir, &bytes), bytes)
}

/// Stores `bytes` as an image under `dir` with its manifest.
pub fn image_from_bytes(dir: &Path, bytes: &[u8]) -> SourceImage {
    let (path, manifest) = flashrack_testkit::image_from_bytes(dir, bytes, CHUNK);
    SourceImage::cached(path, manifest)
}
