//! Block maps kept with cached images: a bmaptool map checked against the
//! image before it is kept (a map that lies is refused and nothing is kept),
//! a map generated from a real file system (`mkfs.ext4 -d`), and an image
//! whose file system is damaged, which gets none and says why.

use std::fs;
use std::process::Command;

use flashrack_image::{ImageCache, ImageError, ImportOptions, MapOrigin};
use flashrack_inspect::bmap::BmapError;
use flashrack_testkit::bmap::{bmaptool_create, reseal, sparse_image};

/// Replaces the first range's checksum with another valid-looking one.
fn wrong_range_checksum(text: &str) -> String {
    let at = text.find("chksum=\"").unwrap() + "chksum=\"".len();
    let mut out = text.to_string();
    out.replace_range(at..at + 64, &"ab".repeat(32));
    reseal(&out)
}

/// What a refusal's reason must be.
type Expected = fn(&BmapError) -> bool;

#[test]
fn a_matching_bmap_is_kept_and_a_lying_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    sparse_image(&path);
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let image = cache.import(&path, ImportOptions::default()).unwrap().image;
    let good = bmaptool_create(&path);

    let cases: Vec<(&str, String, Expected)> = vec![
        ("wrong range checksum", wrong_range_checksum(&good), |e| {
            matches!(e, BmapError::RangeChecksum { first: 0, last: 9 })
        }),
        (
            "wrong file checksum",
            good.replace("> 100-101 <", "> 100 <"),
            |e| matches!(e, BmapError::FileChecksum),
        ),
        (
            "ranges past the image end",
            reseal(&good.replace("> 100-101 <", "> 100-300 <")),
            |e| matches!(e, BmapError::Malformed(m) if m.contains("outside the image")),
        ),
        (
            "malformed XML",
            reseal(&good.replace("</BlockMap>", "")),
            |e| matches!(e, BmapError::Malformed(_)),
        ),
        (
            "another image's size",
            reseal(
                &good
                    .replace(
                        "<ImageSize> 1048576 </ImageSize>",
                        "<ImageSize> 1044480 </ImageSize>",
                    )
                    .replace(
                        "<BlocksCount> 256 </BlocksCount>",
                        "<BlocksCount> 255 </BlocksCount>",
                    ),
            ),
            |e| {
                matches!(
                    e,
                    BmapError::ImageSize {
                        expected: 1_044_480,
                        actual: 1_048_576
                    }
                )
            },
        ),
    ];
    for (name, text, expected) in cases {
        let error = cache.attach_bmap(&image, "disk.bmap", &text).unwrap_err();
        match &error {
            ImageError::BmapRefused { file, source } => {
                assert_eq!(file, "disk.bmap");
                assert!(expected(source), "{name}: {source:?}");
            }
            other => panic!("{name}: {other}"),
        }
        assert!(error
            .to_string()
            .starts_with("the block map disk.bmap is refused: "));
        assert_eq!(cache.block_map(&image.sha256()).unwrap(), None, "{name}");
    }

    let kept = cache.attach_bmap(&image, "disk.bmap", &good).unwrap();
    assert_eq!(
        kept.ranges.ranges(),
        &[(0, 10 * 4096), (100 * 4096, 2 * 4096)]
    );
    assert!(matches!(
        &kept.origin,
        MapOrigin::Bmap { range_checksums: true, version, .. } if version == "2.0"
    ));
    assert_eq!(
        cache.block_map(&image.sha256()).unwrap(),
        Some(kept.clone())
    );
    // A lying map given later does not replace the good one.
    assert!(cache
        .attach_bmap(&image, "x.bmap", &wrong_range_checksum(&good))
        .is_err());
    assert_eq!(cache.block_map(&image.sha256()).unwrap(), Some(kept));
    // Removing the image removes its map.
    cache.remove(&image.sha256()).unwrap();
    let again = cache.import(&path, ImportOptions::default()).unwrap().image;
    assert_eq!(cache.block_map(&again.sha256()).unwrap(), None);
}

/// A bmap file is read up to 16 MiB: a larger one, or a device that never
/// ends, is refused with its reason instead of being held in memory whole.
/// Before, `--bmap /dev/zero` read until memory ran out, and a 127 MB file
/// of ranges took 390 MB to be refused.
#[test]
fn a_bmap_file_larger_than_any_map_or_without_an_end_is_refused() {
    use flashrack_image::BmapInput;
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.bmap");
    let mut text = String::from("<bmap version=\"2.0\">\n");
    while text.len() <= 16 << 20 {
        text.push_str("<Range chksum=\"00\"> 1 </Range>\n");
    }
    fs::write(&huge, &text).unwrap();
    for path in [huge.as_path(), std::path::Path::new("/dev/zero")] {
        let error = BmapInput::read(path).unwrap_err();
        assert!(
            matches!(error, ImageError::ReadInput { .. })
                && error.to_string().contains("larger than 16 MiB"),
            "{}: {error}",
            path.display()
        );
    }
}

#[test]
fn a_map_is_generated_from_an_ext4_image_and_none_from_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("file"), vec![7u8; 2 << 20]).unwrap();
    let path = dir.path().join("ext4.img");
    fs::File::create(&path).unwrap().set_len(32 << 20).unwrap();
    mkfs_ext4(&path, &["-d".as_ref(), root.as_os_str()], None);
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let image = cache.import(&path, ImportOptions::default()).unwrap().image;
    let map = cache.generate_map(&image).unwrap();
    assert!(
        matches!(&map.origin, MapOrigin::Generated { sources, .. } if sources[0].starts_with("ext4 at the image's start"))
    );
    assert!(map.ranges.mapped_bytes() > 2 << 20);
    // Its metadata (journal, inode tables) and the file: well under half.
    assert!(map.ranges.mapped_bytes() < 16 << 20, "{}", map.summary());
    assert_eq!(cache.block_map(&image.sha256()).unwrap(), Some(map));

    // The same file system with a superblock that claims 4 TiB of blocks.
    let mut bytes = fs::read(&path).unwrap();
    bytes[1024 + 4..1024 + 8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let broken = dir.path().join("broken.img");
    fs::write(&broken, &bytes).unwrap();
    let image = cache
        .import(&broken, ImportOptions::default())
        .unwrap()
        .image;
    let error = cache.generate_map(&image).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "no block map: the ext4 file system at the image's start cannot be mapped: it claims"
        ),
        "{error}"
    );
    assert_eq!(cache.block_map(&image.sha256()).unwrap(), None);
}

/// A bmap given to the import is checked in its one pass over the image:
/// each lie (a range's checksum, the file's own checksum, ranges past the
/// image's end, XML that is not a map, a `BlockSize` that disagrees with the
/// counts, a map of a longer image) refuses the import with the map's reason
/// and leaves nothing in the cache; the same image compressed is checked on
/// its decompressed bytes; a map that tells the truth is kept with the image.
#[test]
fn a_bmap_given_to_an_import_is_checked_in_its_pass_and_a_lie_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let bytes = sparse_image(&path);
    let good = bmaptool_create(&path);
    let gz = dir.path().join("disk.img.gz");
    {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(
            fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        encoder.write_all(&bytes).unwrap();
        encoder.finish().unwrap();
    }
    let longer = dir.path().join("longer.img");
    let mut more = bytes.clone();
    more.extend_from_slice(&[5u8; 8192]);
    fs::write(&longer, &more).unwrap();
    // The longer image's own map with an `ImageSize` 100 bytes short of it:
    // its last range (the tail of 5s) ends at the image's end.
    let short_size = reseal(&bmaptool_create(&longer).replace(
        "<ImageSize> 1056768 </ImageSize>",
        "<ImageSize> 1056668 </ImageSize>",
    ));

    // Refused when the map is read, before the image is: the map's own flaws.
    let parse_cases: Vec<(&str, String, Expected)> = vec![
        (
            "wrong file checksum",
            good.replace("> 100-101 <", "> 100 <"),
            |e| matches!(e, BmapError::FileChecksum),
        ),
        (
            "ranges past the image end",
            reseal(&good.replace("> 100-101 <", "> 100-300 <")),
            |e| matches!(e, BmapError::Malformed(m) if m.contains("outside the image")),
        ),
        (
            "malformed XML",
            reseal(&good.replace("</BlockMap>", "")),
            |e| matches!(e, BmapError::Malformed(m) if m == "no <BlockMap>"),
        ),
        (
            "BlockSize mismatch",
            reseal(&good.replace(
                "<BlockSize> 4096 </BlockSize>",
                "<BlockSize> 8192 </BlockSize>",
            )),
            |e| matches!(e, BmapError::Malformed(m) if m.contains("cannot hold 1048576 bytes")),
        ),
    ];
    for (name, text, expected) in parse_cases {
        match flashrack_image::BmapInput::parse("disk.bmap", &text) {
            Err(ImageError::BmapRefused { file, source }) => {
                assert_eq!(file, "disk.bmap");
                assert!(expected(&source), "{name}: {source:?}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    // Refused in the pass: the image is not what the map says.
    let cache_dir = dir.path().join("cache");
    let cache = ImageCache::open(&cache_dir).unwrap();
    let pass_cases: Vec<(&str, &std::path::Path, String, Expected)> = vec![
        (
            "wrong range checksum",
            &path,
            wrong_range_checksum(&good),
            |e| matches!(e, BmapError::RangeChecksum { first: 0, last: 9 }),
        ),
        (
            "wrong range checksum, compressed",
            &gz,
            wrong_range_checksum(&good),
            |e| matches!(e, BmapError::RangeChecksum { first: 0, last: 9 }),
        ),
        ("a map of a shorter image", &longer, good.clone(), |e| {
            matches!(
                e,
                BmapError::ImageSize {
                    expected: 1_048_576,
                    actual: 1_056_768
                }
            )
        }),
        // Said as the size it is, not as its last range's checksum (which
        // fails too: it is taken over the map's size).
        (
            "a map whose last range ends short of the image",
            &longer,
            short_size,
            |e| {
                matches!(
                    e,
                    BmapError::ImageSize {
                        expected: 1_056_668,
                        actual: 1_056_768
                    }
                )
            },
        ),
    ];
    for (name, input, text, expected) in pass_cases {
        let bmap = flashrack_image::BmapInput::parse("disk.bmap", &text).unwrap();
        let error = cache
            .import(
                input,
                ImportOptions {
                    bmap: Some(bmap),
                    ..ImportOptions::default()
                },
            )
            .unwrap_err();
        match &error {
            ImageError::BmapRefused { file, source } => {
                assert_eq!(file, "disk.bmap");
                assert!(expected(source), "{name}: {source:?}");
            }
            other => panic!("{name}: {other}"),
        }
        assert!(cache.list().unwrap().is_empty(), "{name}");
        let left: Vec<_> = walk(&cache_dir)
            .into_iter()
            .filter(|p| p.contains("images/") || p.contains("tmp/"))
            .collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }

    // The truth, raw and compressed: kept with the image from the pass.
    for input in [&gz, &path] {
        let bmap = flashrack_image::BmapInput::parse("disk.bmap", &good).unwrap();
        let outcome = cache
            .import(
                input,
                ImportOptions {
                    bmap: Some(bmap),
                    ..ImportOptions::default()
                },
            )
            .unwrap();
        let map = outcome.map.expect("checked in the pass");
        assert_eq!(
            map.ranges.ranges(),
            &[(0, 10 * 4096), (100 * 4096, 2 * 4096)]
        );
        assert_eq!(cache.block_map(&outcome.image.sha256()).unwrap(), Some(map));
    }
}

/// `text` without its ranges' checksums (as a map of format 1.0, or one
/// whose maker left them out), resealed.
fn without_range_checksums(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" chksum=\"") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " chksum=\"".len()..];
        rest = &after[after.find('"').unwrap() + 1..];
    }
    out.push_str(rest);
    reseal(&out)
}

/// `text` without its range of blocks 100-101 (the image's second run of
/// data), its mapped count made to agree, resealed.
fn leaving_out_blocks_100_101(text: &str) -> String {
    let line_start = text.find("> 100-101 <").unwrap();
    let start = text[..line_start].rfind("<Range").unwrap();
    let end = line_start + text[line_start..].find("</Range>").unwrap() + "</Range>".len();
    let mut out = text.to_string();
    out.replace_range(start..end, "");
    // The element, not the comment at the top that names it.
    let count_end = out.find("</MappedBlocksCount>").unwrap();
    let count = out[..count_end].rfind("<MappedBlocksCount>").unwrap();
    out.replace_range(count..count_end, "<MappedBlocksCount> 10 ");
    reseal(&out)
}

/// A map with no checksum for some of its ranges is tied to the image by
/// nothing but its size: the bytes it leaves out must be zeros, or it is
/// refused (when attached to a cached image, and in an import's pass). A
/// map whose every range has a checksum may leave out data (free blocks of
/// a file system). Before, a checksum-less map that left out data was
/// trusted: a sparse run passed sticks that lacked it.
#[test]
fn a_map_without_checksums_that_leaves_out_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    sparse_image(&path);
    let good = bmaptool_create(&path);
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let image = cache.import(&path, ImportOptions::default()).unwrap().image;

    let bare = without_range_checksums(&good);
    assert!(!bare.contains("chksum="), "{bare}");
    let lying = leaving_out_blocks_100_101(&bare);
    let is_unmapped_data =
        |e: &BmapError| matches!(e, BmapError::UnmappedData { offset } if *offset == 100 * 4096);
    let error = cache.attach_bmap(&image, "bare.bmap", &lying).unwrap_err();
    assert!(
        matches!(&error, ImageError::BmapRefused { source, .. } if is_unmapped_data(source)),
        "{error}"
    );
    assert!(error.to_string().contains("not zeros"), "{error}");
    assert_eq!(cache.block_map(&image.sha256()).unwrap(), None);

    // In an import's pass, from a fresh cache.
    let other = ImageCache::open(dir.path().join("other")).unwrap();
    let bmap = flashrack_image::BmapInput::parse("bare.bmap", &lying).unwrap();
    let error = other
        .import(
            &path,
            ImportOptions {
                bmap: Some(bmap),
                ..ImportOptions::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&error, ImageError::BmapRefused { source, .. } if is_unmapped_data(source)),
        "{error}"
    );
    assert!(other.list().unwrap().is_empty());

    // Without checksums but leaving out only zeros: kept.
    let kept = cache.attach_bmap(&image, "bare.bmap", &bare).unwrap();
    assert!(matches!(
        &kept.origin,
        MapOrigin::Bmap {
            range_checksums: false,
            ..
        }
    ));
    // With a checksum for every range, leaving out data is the map's
    // right (its ranges are proven the image's).
    let checked = leaving_out_blocks_100_101(&good);
    let kept = cache.attach_bmap(&image, "checked.bmap", &checked).unwrap();
    assert_eq!(kept.ranges.ranges(), &[(0, 10 * 4096)]);
}

/// Every file under `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// `bmaptool create`'s map of `image` with one more range, `block`, which
/// holds zeros in the image: a true map that makes other claims.
fn with_zero_range(text: &str, block: u64) -> String {
    let zeros: String = {
        use sha2::Digest;
        sha2::Sha256::digest([0u8; 4096])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let at = text.find("    <Range chksum=\"").unwrap();
    let second = at + 1 + text[at + 1..].find("    <Range chksum=\"").unwrap();
    let mut out = text.to_string();
    out.insert_str(
        second,
        &format!("    <Range chksum=\"{zeros}\"> {block} </Range>\n"),
    );
    let count_at = out.rfind("<MappedBlocksCount> ").unwrap() + "<MappedBlocksCount> ".len();
    let count_end = count_at + out[count_at..].find(' ').unwrap();
    let count: u64 = out[count_at..count_end].parse().unwrap();
    out.replace_range(count_at..count_end, &(count + 1).to_string());
    reseal(&out)
}

#[test]
fn a_bmap_for_a_cached_image_is_read_once_and_its_claims_are_not_read_again() {
    use flashrack_image::BmapCheck;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    sparse_image(&path);
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    // 64 KiB chunks: blocks 0-15 and 96-111 are data chunks, the rest zero.
    let image = cache
        .import(
            &path,
            ImportOptions {
                chunk_size: 64 << 10,
                ..ImportOptions::default()
            },
        )
        .unwrap()
        .image;
    let good = bmaptool_create(&path);
    // A true map with a range in a zero chunk (block 50): its bytes are
    // known from the manifest, so only the data ranges are read.
    let wider = with_zero_range(&good, 50);

    let (map, check) = cache
        .attach_bmap_counted(&image, "disk.bmap", &good)
        .unwrap();
    assert_eq!(check, BmapCheck::Read { bytes: 12 * 4096 });
    // The same claims again, from the same file or one laid out otherwise:
    // known, nothing read.
    let (again, check) = cache
        .attach_bmap_counted(&image, "disk.bmap", &good)
        .unwrap();
    assert_eq!((check, &again), (BmapCheck::Known, &map));
    let relaid = reseal(&good.replace("<!-- ", "<!--  "));
    assert_ne!(relaid, good);
    let (_, check) = cache
        .attach_bmap_counted(&image, "other-name.bmap", &relaid)
        .unwrap();
    assert_eq!(check, BmapCheck::Known);
    assert!(matches!(
        cache.block_map(&image.sha256()).unwrap().unwrap().origin,
        MapOrigin::Bmap { file, .. } if file == "other-name.bmap"
    ));

    // Nothing is read for known claims: with the cached file's first block
    // overwritten (as only a test may), the known map is still accepted,
    // while a map that makes other claims reads the bytes and is refused.
    let cached = fs::OpenOptions::new()
        .write(true)
        .open(&image.path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&cached, &[0xEE; 4096], 0).unwrap();
    let (_, check) = cache
        .attach_bmap_counted(&image, "disk.bmap", &good)
        .unwrap();
    assert_eq!(check, BmapCheck::Known);
    let error = cache
        .attach_bmap_counted(&image, "wider.bmap", &wider)
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ImageError::BmapRefused {
                source: BmapError::RangeChecksum { first: 0, last: 9 },
                ..
            }
        ),
        "{error:?}"
    );
    // The refused map did not replace the kept one.
    assert_eq!(
        cache.block_map(&image.sha256()).unwrap().unwrap().ranges,
        map.ranges
    );

    // The cached file restored, the wider map reads the data ranges only.
    let bytes = fs::read(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&cached, &bytes[..4096], 0).unwrap();
    let (wide, check) = cache
        .attach_bmap_counted(&image, "wider.bmap", &wider)
        .unwrap();
    assert_eq!(check, BmapCheck::Read { bytes: 12 * 4096 });
    assert_eq!(wide.ranges.mapped_bytes(), 13 * 4096);
}

#[test]
fn an_image_whose_table_is_broken_is_imported_and_gets_a_reason_instead_of_a_map() {
    use flashrack_inspect::alloc::AllocError;
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    // An MBR whose partition 1 (sector 2048, 64 MiB) runs past the end of
    // this 8 MiB image (a truncated image), and a GPT's protective MBR with
    // no GPT behind it.
    let mbr = |kind: u8, sectors: u32| {
        let mut bytes = vec![0u8; 8 << 20];
        bytes[446 + 4] = kind;
        bytes[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        bytes[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
        bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
        bytes[2048 * 512..2049 * 512].fill(7);
        bytes
    };
    for (name, bytes, expected) in [
        (
            "cut.img",
            mbr(0x83, 131_072),
            "partition 1 ends at byte 68157440 but the image has 8388608 bytes",
        ),
        (
            "gpt-lost.img",
            mbr(0xEE, 16383),
            "the partition table is damaged (GPT damaged: primary header",
        ),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let image = cache.import(&path, ImportOptions::default()).unwrap().image;
        let error = cache.generate_map(&image).unwrap_err();
        match &error {
            ImageError::NoBlockMap { reason } => {
                assert!(
                    matches!(
                        reason,
                        AllocError::PartitionPastEnd { .. } | AllocError::BrokenTable(_)
                    ),
                    "{name}: {reason}"
                );
                assert!(reason.to_string().starts_with(expected), "{name}: {reason}");
            }
            other => panic!("{name}: {other}"),
        }
        // The import stands: the image is cached, without a map, and is
        // written whole.
        assert!(cache.get(&image.sha256()).unwrap().is_some(), "{name}");
        assert_eq!(cache.block_map(&image.sha256()).unwrap(), None, "{name}");
    }
}

#[test]
fn a_map_generated_by_older_rules_is_generated_again_when_read() {
    // A 32 MiB ext4 in a 48 MiB image with data 5 MiB past its end: the
    // rules of version 1 mapped only the file system's allocation, and a
    // sparse run left that data off the stick. A map kept by them (here
    // written as they left it: no `rules`, the tail unmapped) is not used:
    // reading it generates it again, tail included.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tail.img");
    fs::File::create(&path).unwrap().set_len(48 << 20).unwrap();
    mkfs_ext4(&path, &[], Some("32768k"));
    let mut bytes = fs::read(&path).unwrap();
    bytes[37 << 20..38 << 20].fill(0x5a);
    fs::write(&path, &bytes).unwrap();
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let image = cache.import(&path, ImportOptions::default()).unwrap().image;
    let map = cache.generate_map(&image).unwrap();
    let tail = [(32u64 << 20, 16u64 << 20)];
    let covers_tail = |ranges: &flashrack_core::DataRanges| {
        ranges
            .ranges()
            .iter()
            .any(|&(o, l)| o <= tail[0].0 && o + l >= tail[0].0 + tail[0].1)
    };
    assert!(covers_tail(&map.ranges), "{}", map.summary());

    let cache_dir = dir.path().join("cache");
    let kept = walk(&cache_dir)
        .into_iter()
        .find(|p| p.ends_with(".bmap.json"))
        .map(|p| cache_dir.join(p))
        .expect("the kept map");
    let old = flashrack_image::StoredMap {
        origin: MapOrigin::Generated {
            sources: vec!["ext4 at the image's start: by the old rules".into()],
            rules: 0,
        },
        ranges: flashrack_core::DataRanges::new(48 << 20, [(0, 32 << 20)]).unwrap(),
    };
    let mut json = serde_json::to_value(&old).unwrap();
    remove_key(&mut json, "rules");
    fs::write(&kept, serde_json::to_vec(&json).unwrap()).unwrap();

    let read = cache.block_map(&image.sha256()).unwrap().expect("a map");
    assert!(covers_tail(&read.ranges), "{}", read.summary());
    assert!(
        matches!(&read.origin, MapOrigin::Generated { rules, .. } if *rules == flashrack_inspect::alloc::ALLOCATION_RULES)
    );
    // And kept so: read again, the same map without generating it.
    assert_eq!(cache.block_map(&image.sha256()).unwrap(), Some(read));
}

/// Makes an ext4 file system in the file at `path` with `options`, of
/// `size` (mkfs's blocks-count argument, `32768k`) or the whole file.
fn mkfs_ext4(path: &std::path::Path, options: &[&std::ffi::OsStr], size: Option<&str>) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .args(options)
        .arg(path)
        .args(size)
        .output()
        .expect("mkfs.ext4 (scripts/setup installs e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes every `key` in a JSON value.
fn remove_key(value: &mut serde_json::Value, key: &str) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| remove_key(v, key));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| remove_key(v, key)),
        _ => {}
    }
}
