//! Block maps as `bmaptool create` (Debian's bmap-tools, which scripts/setup
//! installs) writes them: parsed, checked against their image, and refused
//! when they lie.

use flashrack_inspect::bmap::{BlockMap, BmapError};
use flashrack_testkit::bmap::{bmaptool_create, reseal, sparse_image};

#[test]
fn a_bmaptool_map_is_parsed_and_matches_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let bytes = sparse_image(&path);
    let map = BlockMap::parse(&bmaptool_create(&path)).unwrap();
    assert_eq!(
        (map.version.as_str(), map.block_size, map.blocks_count),
        ("2.0", 4096, 256)
    );
    let ranges: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(ranges, vec![(0, 9), (100, 101)]);
    assert_eq!(map.mapped_bytes(), 12 * 4096);
    map.check_image(&bytes).unwrap();
    // Resealing an unchanged map changes nothing.
    assert_eq!(
        BlockMap::parse(&reseal(&bmaptool_create(&path))).unwrap(),
        map
    );
}

#[test]
fn a_map_edited_without_its_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    sparse_image(&path);
    let text = bmaptool_create(&path)
        .replace("> 100-101 <", "> 100 <")
        .replace(
            "<MappedBlocksCount> 12 </MappedBlocksCount>",
            "<MappedBlocksCount> 11 </MappedBlocksCount>",
        );
    assert_eq!(BlockMap::parse(&text), Err(BmapError::FileChecksum));
}

#[test]
fn a_map_that_lies_about_the_image_is_refused_even_when_resealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let mut bytes = sparse_image(&path);
    let map = BlockMap::parse(&bmaptool_create(&path)).unwrap();
    // The image changed after the map was made: one byte in block 101.
    bytes[101 * 4096 + 17] ^= 0x40;
    assert_eq!(
        map.check_image(&bytes),
        Err(BmapError::RangeChecksum {
            first: 100,
            last: 101
        })
    );
    // A map of another size.
    assert_eq!(
        map.check_image(&bytes[..4096 * 200].to_vec()),
        Err(BmapError::ImageSize {
            expected: 1 << 20,
            actual: 4096 * 200
        })
    );
    // A forged range beyond the image, resealed: refused as malformed.
    let text = reseal(&bmaptool_create(&path).replace("> 100-101 <", "> 100-300 <"));
    assert!(
        matches!(BlockMap::parse(&text), Err(BmapError::Malformed(_))),
        "{text}"
    );
}
