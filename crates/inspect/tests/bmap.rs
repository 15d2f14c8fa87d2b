//! Block maps as `bmaptool create` (Debian's bmap-tools, which scripts/setup
//! installs) writes them: parsed, checked against their image, and refused
//! when they lie.

use flashrack_inspect::bmap::{BlockMap, BmapError, StreamCheck};
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

/// Feeds `bytes` to a stream check in pieces of `piece` bytes, as an import's
/// pass does; answers the first failure, or the end's.
fn stream(map: &BlockMap, bytes: &[u8], piece: usize) -> Result<(), BmapError> {
    let mut check = StreamCheck::new(map.clone());
    for part in bytes.chunks(piece) {
        check.update(part)?;
    }
    check.finish()
}

#[test]
fn a_stream_check_agrees_with_the_check_of_a_stored_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let mut bytes = sparse_image(&path);
    let map = BlockMap::parse(&bmaptool_create(&path)).unwrap();
    // Pieces that cut ranges anywhere: a byte, a prime, a chunk, the whole.
    for piece in [1 << 20, 4096 * 3 + 7, 65536, 4 << 20] {
        assert_eq!(stream(&map, &bytes, piece), Ok(()), "{piece}");
    }
    // One byte changed in block 101: refused once its range has gone past.
    bytes[101 * 4096 + 17] ^= 0x40;
    let mut check = StreamCheck::new(map.clone());
    check.update(&bytes[..101 * 4096]).unwrap();
    assert_eq!(
        check.update(&bytes[101 * 4096..102 * 4096]),
        Err(BmapError::RangeChecksum {
            first: 100,
            last: 101
        })
    );
    // And every later call says so again.
    assert!(check.update(&bytes[102 * 4096..]).is_err());
    assert!(check.finish().is_err());
    for piece in [4099, 1 << 20] {
        assert_eq!(
            stream(&map, &bytes, piece),
            map.check_image(&bytes),
            "{piece}"
        );
    }
    bytes[101 * 4096 + 17] ^= 0x40;
    // An image shorter than the map says (its ranges past the image's end),
    // and a longer one.
    assert_eq!(
        stream(&map, &bytes[..4096 * 200], 65536),
        Err(BmapError::ImageSize {
            expected: 1 << 20,
            actual: 4096 * 200
        })
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[7u8; 4096]);
    assert_eq!(
        stream(&map, &longer, 65536),
        Err(BmapError::ImageSize {
            expected: 1 << 20,
            actual: (1 << 20) + 4096
        })
    );
}

#[test]
fn a_map_whose_block_size_disagrees_with_its_counts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    sparse_image(&path);
    let text = bmaptool_create(&path);
    assert!(text.contains("<BlockSize> 4096 </BlockSize>"), "{text}");
    // Resealed, so that only the numbers are wrong.
    for (size, reason) in [
        ("8192", "256 blocks of 8192 bytes cannot hold 1048576 bytes"),
        ("3000", "block size 3000 (a block size is a power of two)"),
        ("0", "block size 0 (a block size is a power of two)"),
    ] {
        let forged = reseal(&text.replace(
            "<BlockSize> 4096 </BlockSize>",
            &format!("<BlockSize> {size} </BlockSize>"),
        ));
        assert_eq!(
            BlockMap::parse(&forged),
            Err(BmapError::Malformed(reason.to_string())),
            "{size}"
        );
    }
    // A second <BlockSize> (bmaptool refuses it; the first was used).
    let twice = reseal(&text.replace(
        "<BlockSize> 4096 </BlockSize>",
        "<BlockSize> 4096 </BlockSize>\n    <BlockSize> 512 </BlockSize>",
    ));
    assert_eq!(
        BlockMap::parse(&twice),
        Err(BmapError::Malformed("<BlockSize> given 2 times".into()))
    );
    // A map of format 2.0 without its own checksum: refused (a 1.0 map has
    // none to carry).
    let start = text.find("<BmapFileChecksum>").unwrap();
    let end = text.find("</BmapFileChecksum>").unwrap() + "</BmapFileChecksum>".len();
    let unsealed = format!("{}{}", &text[..start], &text[end..]);
    assert!(matches!(
        BlockMap::parse(&unsealed),
        Err(BmapError::Malformed(m)) if m.contains("no <BmapFileChecksum>")
    ));
    assert!(BlockMap::parse(&unsealed.replace("version=\"2.0\"", "version=\"1.0\"")).is_ok());
    // Not XML at all, and a map cut short.
    assert!(matches!(
        BlockMap::parse("ceci n'est pas une bmap"),
        Err(BmapError::Malformed(_))
    ));
    // Cut short (resealed): its elements are not closed.
    let cut = reseal(&text[..text.find("<BlockMap>").unwrap() + 40]);
    assert_eq!(
        BlockMap::parse(&cut),
        Err(BmapError::Malformed(
            "no complete <bmap version=…> element (a file cut short?)".into()
        ))
    );
}
