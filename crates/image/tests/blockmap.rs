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

#[test]
fn a_map_is_generated_from_an_ext4_image_and_none_from_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("file"), vec![7u8; 2 << 20]).unwrap();
    let path = dir.path().join("ext4.img");
    fs::File::create(&path).unwrap().set_len(32 << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = ImageCache::open(dir.path().join("cache")).unwrap();
    let image = cache.import(&path, ImportOptions::default()).unwrap().image;
    let map = cache.generate_map(&image).unwrap();
    assert!(
        matches!(&map.origin, MapOrigin::Generated { sources } if sources[0].starts_with("ext4 at the image's start"))
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
