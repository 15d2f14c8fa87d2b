//! Block maps as `bmaptool create` (Debian's bmap-tools, which scripts/setup
//! installs) writes them, and the image they describe: for the tests of the
//! map parser (`flashrack-inspect`) and of maps kept with cached images
//! (`flashrack-image`).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use sha2::Digest;

/// Writes a sparse 1 MiB image to `path`: data in 4 KiB blocks 0-9 and
/// 100-101, holes elsewhere. Returns its bytes (zeros in the holes).
pub fn sparse_image(path: &Path) -> Vec<u8> {
    let mut bytes = vec![0u8; 1 << 20];
    for (i, b) in bytes.iter_mut().enumerate() {
        let block = i / 4096;
        if block < 10 || (100..102).contains(&block) {
            *b = (i * 7 % 251) as u8 | 1;
        }
    }
    let file = fs::File::create(path).unwrap();
    file.set_len(bytes.len() as u64).unwrap();
    file.write_all_at(&bytes[..10 * 4096], 0).unwrap();
    file.write_all_at(&bytes[100 * 4096..102 * 4096], 100 * 4096)
        .unwrap();
    bytes
}

/// The map `bmaptool create` writes for `image`; panics if it fails.
pub fn bmaptool_create(image: &Path) -> String {
    let out = Command::new("bmaptool")
        .arg("create")
        .arg(image)
        .output()
        .expect("bmaptool (scripts/setup installs bmap-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The map with its own checksum (`BmapFileChecksum`, a sha256 computed with
/// its value zeroed) recomputed, as a careful forger would.
pub fn reseal(text: &str) -> String {
    let start = text.find("<BmapFileChecksum>").unwrap() + "<BmapFileChecksum>".len();
    let end = text.find("</BmapFileChecksum>").unwrap();
    let value = text[start..end].trim().to_string();
    let zeroed = text.replacen(&value, &"0".repeat(64), 1);
    let digest: String = sha2::Sha256::digest(zeroed.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    zeroed.replacen(&"0".repeat(64), &digest, 1)
}

/// Asserts that `map` (a block map as `image show --json` and the API give it)
/// was generated from the allocation of a `file_system` (e.g. "ext4") for an
/// image of `image_size` bytes, maps more than `min_mapped` and less than
/// `max_mapped` bytes, and states its share of the image consistently.
pub fn assert_generated_map(
    map: &serde_json::Value,
    file_system: &str,
    image_size: u64,
    min_mapped: u64,
    max_mapped: u64,
) {
    assert_eq!(map["origin"]["kind"], "generated", "{map}");
    assert!(
        map["source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("generated from {file_system}")),
        "{map}"
    );
    let mapped = map["mapped_bytes"].as_u64().unwrap();
    assert!(mapped > min_mapped && mapped < max_mapped, "{map}");
    assert_eq!(map["image_size"], image_size, "{map}");
    let share = map["mapped_share"].as_f64().unwrap();
    assert!(
        (share - mapped as f64 / image_size as f64).abs() < 1e-9,
        "{map}"
    );
}
