//! UDF 2.50 and 2.60 volumes whose tree lives in a metadata partition, as
//! Windows installer ISOs made with 2.50 and Blu-ray-era tools lay them out.
//! No Debian tool makes one (`mkudffs` makes 2.50+ for write-once media
//! only, with a VAT and no metadata partition) and this kernel has no UDF
//! driver, so the volume is written byte by byte
//! (`flashrack_testkit::udf`); `udfinfo` (udftools) reads it
//! independently.

use std::fs;
use std::process::Command;

use flashrack_inspect::{inspect, udf_tree, Piece, TreeEntry};

use flashrack_testkit::udf::{
    efe, put32, tag, windows_like as build, Data, B, LABEL, META, MIRROR, PART, PART_LEN, WIM_AT,
};

/// The bytes of a tree entry's file, from its pieces.
fn content(image: &[u8], entry: &TreeEntry) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in &entry.pieces {
        match piece {
            Piece::Embedded(b) => out.extend(b),
            Piece::Zeros(n) => out.resize(out.len() + *n as usize, 0),
            Piece::At { offset, len } => {
                out.extend(&image[*offset as usize..(*offset + *len) as usize])
            }
        }
    }
    out
}

/// What `udfinfo` (udftools, its own UDF reader) says of the image, as
/// `key=value` lines.
fn udfinfo(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("udf.img");
    fs::write(&path, bytes).unwrap();
    let out = Command::new("udfinfo")
        .arg(&path)
        .output()
        .expect("udfinfo (scripts/setup installs udftools)");
    assert!(
        out.status.success(),
        "udfinfo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_windows_like_udf_250_volume_is_read_through_its_metadata_partition() {
    for (revision, words) in [(0x0250u16, "2.50"), (0x0260, "2.60")] {
        let built = build(revision);
        let bytes = &built.bytes;
        // Another reader of UDF agrees on what the volume is.
        let other = udfinfo(bytes);
        assert!(other.contains(&format!("label={LABEL}")), "{other}");
        assert!(other.contains(&format!("udfrev={words}")), "{other}");
        assert!(other.contains("blocksize=2048"), "{other}");

        let info = inspect(bytes);
        assert!(info.problems.is_empty(), "{words}: {:?}", info.problems);
        let iso = info
            .iso
            .as_ref()
            .expect("UDF is an optical-disc file system");
        assert!(iso.udf);
        assert_eq!(iso.volume_id, None, "no ISO 9660 side");
        assert_eq!(iso.udf_volume_id.as_deref(), Some(LABEL));
        assert_eq!(iso.udf_revision.as_deref(), Some(words));
        assert!(
            iso.windows_installer,
            "install.wim through the metadata partition"
        );
        assert!(!iso.hybrid);
        let refusal = info
            .raw_write_refusal()
            .expect("a Windows installer, not hybrid");
        assert!(refusal.reason.contains("Windows installer"), "{refusal}");
        assert!(
            info.summary()
                .starts_with(&format!("UDF {LABEL:?} {words}")),
            "{}",
            info.summary()
        );
        assert!(info.details().contains(&format!("UDF revision: {words}")));

        // The tree, each file's bytes where its entry says: install.wim's in
        // the physical partition, addressed by a long descriptor.
        let tree = udf_tree(bytes, 100).unwrap();
        let names: Vec<_> = tree.iter().map(|e| (e.path.as_str(), e.dir)).collect();
        assert_eq!(
            names,
            [
                ("sources", true),
                ("sources/install.wim", false),
                ("sources/lang.ini", false)
            ]
        );
        let wim = &tree[1];
        assert_eq!(wim.size, 5000);
        assert_eq!(
            wim.pieces,
            [Piece::At {
                offset: ((PART + WIM_AT) * B) as u64,
                len: 5000
            }]
        );
        assert!(content(bytes, wim) == built.wim);
        assert_eq!(tree[2].pieces, [Piece::Embedded(built.lang.clone())]);
    }
}

/// Offsets in the image of the metadata file's entry and its mirror's.
const MAIN_ENTRY: usize = PART * B;
const MIRROR_ENTRY: usize = (PART + 1) * B;

#[test]
fn a_damaged_metadata_file_is_read_through_its_mirror() {
    let built = build(0x0250);
    // The main metadata file's entry torn (its tag's checksum no longer
    // holds), then one that is not a metadata file (type 5).
    let mut torn = built.bytes.clone();
    torn[MAIN_ENTRY + 4] ^= 0xff;
    // Its first extent's blocks overwritten as well: what was read came from
    // the mirror's copy.
    let first = (PART + META[0].0) * B;
    torn[first..first + META[0].1 * B].fill(0x5a);
    let mut retyped = built.bytes.clone();
    retyped[MAIN_ENTRY + 27] = 5;
    for bytes in [torn, retyped] {
        let info = inspect(&bytes);
        assert!(info.problems.is_empty(), "{:?}", info.problems);
        assert!(info.iso.as_ref().unwrap().windows_installer);
        let tree = udf_tree(&bytes, 100).unwrap();
        assert!(content(&bytes, &tree[1]) == built.wim);
    }
}

#[test]
fn a_broken_metadata_partition_gives_a_reason_and_keeps_the_label_and_revision() {
    let built = build(0x0250);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Both entries torn.
    let mut bytes = built.bytes.clone();
    bytes[MAIN_ENTRY + 4] ^= 0xff;
    bytes[MIRROR_ENTRY + 4] ^= 0xff;
    cases.push((
        "the metadata file: no file entry at block 0 of its partition; its mirror: no file entry at block 1 of its partition",
        bytes,
    ));
    // Both entries' extents past the partition's end (the checksum and CRC
    // made again: a well-formed entry with a wrong extent).
    let mut bytes = built.bytes.clone();
    for (at, location, kind) in [(MAIN_ENTRY, 0, 250u8), (MIRROR_ENTRY, 1, 251)] {
        let entry = efe(
            kind,
            (8 * B) as u64,
            Data::Short(&[((8 * B) as u32, PART_LEN as u32 - 4)]),
            location,
        );
        bytes[at..at + B].copy_from_slice(&entry);
    }
    cases.push((
        "an extent of 8 blocks at block 696 runs past its partition's 700 blocks",
        bytes,
    ));
    // Extents shorter than the file they make.
    let mut bytes = built.bytes.clone();
    for (at, location, kind) in [(MAIN_ENTRY, 0, 250u8), (MIRROR_ENTRY, 1, 251)] {
        let entry = efe(
            kind,
            (8 * B) as u64,
            Data::Short(&[(B as u32, 60)]),
            location,
        );
        bytes[at..at + B].copy_from_slice(&entry);
    }
    cases.push(("its extents hold 2048 of its 16384 bytes", bytes));
    for (expected, bytes) in cases {
        let info = inspect(&bytes);
        assert_eq!(info.problems.len(), 1, "{:?}", info.problems);
        let problem = &info.problems[0];
        assert!(
            problem.starts_with("UDF 2.50 volume not read: the metadata partition cannot be read"),
            "{problem}"
        );
        assert!(problem.contains(expected), "{expected}: {problem}");
        let iso = info.iso.as_ref().unwrap();
        assert_eq!(iso.udf_volume_id.as_deref(), Some(LABEL));
        assert_eq!(iso.udf_revision.as_deref(), Some("2.50"));
        // Its files are not known, so nothing says installer.
        assert!(!iso.windows_installer);
        assert!(udf_tree(&bytes, 100)
            .unwrap_err()
            .contains("metadata partition"));
    }
}

/// A file set whose root lies past the metadata file's blocks: the lookup
/// finds nothing rather than reading past the metadata file.
#[test]
fn a_block_past_the_metadata_file_is_not_read() {
    let built = build(0x0250);
    let mut bytes = built.bytes.clone();
    // The FSD's root ICB (block 9 of an 8-block metadata partition), the
    // FSD's CRC and checksum made again, in both copies of the metadata.
    let mut fsd = bytes[(PART + META[0].0) * B..(PART + META[0].0) * B + 512].to_vec();
    put32(&mut fsd, 404, 9);
    tag(&mut fsd, 256, 512 - 16, 0);
    for first in [META[0].0, MIRROR.0] {
        let at = (PART + first) * B;
        bytes[at..at + 512].copy_from_slice(&fsd);
    }
    let info = inspect(&bytes);
    assert!(!info.iso.as_ref().unwrap().windows_installer);
    assert!(udf_tree(&bytes, 100).is_err());
}
