//! Test images built in the test's own temporary directory.
#![allow(dead_code)]

use std::path::Path;

use flashrack_core::{ImageManifest, Sha256Digest};
use flashrack_engine::SourceImage;
use rand::{Rng, RngCore, SeedableRng};

/// Chunk size used by the tests: small, so that small images have many chunks.
pub const CHUNK: u32 = 64 * 1024;

/// Writes an image of `size` bytes (random runs with zero holes, deterministic
/// for `seed`) under `dir` and returns it with its manifest.
pub fn make_image(dir: &Path, size: usize, seed: u64) -> (SourceImage, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let run = rng.random_range(1..=3 * CHUNK as usize).min(size - pos);
        if rng.random_bool(0.6) {
            rng.fill_bytes(&mut bytes[pos..pos + run]);
        }
        pos += run;
    }
    let image = image_from_bytes(dir, &bytes);
    (image, bytes)
}

/// Stores `bytes` as an image file under `dir` and builds its manifest.
pub fn image_from_bytes(dir: &Path, bytes: &[u8]) -> SourceImage {
    let path = dir.join("image.raw");
    std::fs::write(&path, bytes).unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK as usize).collect();
    let manifest = ImageManifest::new(
        Sha256Digest::of(bytes),
        bytes.len() as u64,
        CHUNK,
        chunks.iter().map(|c| Sha256Digest::of(c)).collect(),
        chunks.iter().map(|c| c.iter().all(|&b| b == 0)).collect(),
    )
    .unwrap();
    SourceImage { path, manifest }
}
