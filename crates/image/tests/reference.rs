//! Raw images referenced in place instead of copied into the cache
//! (`ImportOptions::reference_raw`): nothing copied, and a referenced file
//! that changes afterwards is no longer the image.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use flashrack_image::{CacheHit, ImageError, ImportOptions, Sha256Digest};

fn in_place() -> ImportOptions {
    ImportOptions {
        reference_raw: true,
        ..options()
    }
}

/// Whether the cache's file system clones files (btrfs, XFS): then a raw
/// import is a reflink into the cache, never a reference.
fn clones(fx: &Fixture) -> bool {
    let a = fx.cache_dir.path().join("probe-a");
    let b = fx.cache_dir.path().join("probe-b");
    fs::write(&a, b"x").unwrap();
    let source = fs::File::open(&a).unwrap();
    let target = fs::File::create(&b).unwrap();
    let cloned = rustix::fs::ioctl_ficlone(&target, &source).is_ok();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    cloned
}

/// Sets the file's modification time back to what `meta` says, as a tool
/// that hides a change would (the change time still moves).
fn put_mtime_back(path: &std::path::Path, meta: &fs::Metadata) {
    let mtime = UNIX_EPOCH + Duration::new(meta.mtime() as u64, meta.mtime_nsec() as u32);
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
}

#[test]
fn a_settled_raw_file_is_referenced_in_place_not_copied() {
    let fx = Fixture::new();
    if clones(&fx) {
        eprintln!("not run: this file system clones files (the import is a reflink)");
        return;
    }
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    settle(&input);
    let outcome = fx.cache.import(&input, in_place()).unwrap();
    assert_eq!(outcome.hit, None);
    let image = outcome.image;
    assert_eq!(image.sha256(), Sha256Digest::of(&data));
    assert_eq!(image.path, fs::canonicalize(&input).unwrap());
    let reference = image.meta.reference.as_ref().expect("referenced");
    assert_eq!(reference.path(), image.path);
    assert!(reference.is_intact());
    // Nothing of the image in the cache but its entry.
    assert!(!fx.files_under("images").iter().any(|f| f.ends_with(".img")));
    assert!(fx.files_under("tmp").is_empty());
    assert_eq!(fx.cache.get(&image.sha256()).unwrap(), Some(image.clone()));
    assert_eq!(fx.cache.find("disk.img").unwrap(), image);
    // Known by its identity next time, without reading it.
    let again = fx.cache.import(&input, in_place()).unwrap();
    assert_eq!(again.hit, Some(CacheHit::SameFile));

    // Removing the image forgets it; the operator's file stays.
    fx.cache.remove(&image.sha256()).unwrap();
    assert_eq!(fx.cache.get(&image.sha256()).unwrap(), None);
    assert_eq!(fs::read(&input).unwrap(), data);
}

#[test]
fn a_referenced_file_changed_in_place_is_no_longer_the_image_and_is_hashed_again() {
    let fx = Fixture::new();
    if clones(&fx) {
        eprintln!("not run: this file system clones files (the import is a reflink)");
        return;
    }
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    settle(&input);
    let first = fx.cache.import(&input, in_place()).unwrap().image;
    assert!(first.meta.reference.is_some());

    // One byte rewritten in place, same size, the modification time put back:
    // only the change time tells.
    let before = fs::metadata(&input).unwrap();
    let mut file = OpenOptions::new().write(true).open(&input).unwrap();
    file.seek(SeekFrom::Start(100)).unwrap();
    file.write_all(&[data[100] ^ 0xff]).unwrap();
    drop(file);
    put_mtime_back(&input, &before);
    assert_eq!(fs::metadata(&input).unwrap().mtime(), before.mtime());
    assert_eq!(fx.cache.get(&first.sha256()).unwrap(), None);
    assert!(fx.cache.list().unwrap().is_empty());

    // Importing it again hashes it again: another image.
    settle(&input);
    let mut changed = data.clone();
    changed[100] ^= 0xff;
    let second = fx.cache.import(&input, in_place()).unwrap();
    assert_eq!(second.hit, None);
    assert_eq!(second.image.sha256(), Sha256Digest::of(&changed));
}

#[test]
fn a_referenced_file_cut_short_or_replaced_is_no_longer_the_image() {
    let fx = Fixture::new();
    if clones(&fx) {
        eprintln!("not run: this file system clones files (the import is a reflink)");
        return;
    }
    let data = sample_image();
    let cut = fx.input("cut.img", &data);
    let replaced = fx.input("replaced.img", &image(20, 1000, &[2], 8));
    settle(&cut);
    settle(&replaced);
    let a = fx.cache.import(&cut, in_place()).unwrap().image;
    let b = fx.cache.import(&replaced, in_place()).unwrap().image;

    OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(fx.cache.get(&a.sha256()).unwrap(), None);

    // The same bytes under the same name, but another file (a new inode).
    let bytes = fs::read(&replaced).unwrap();
    let staged = fx.inputs.path().join("staged");
    fs::write(&staged, &bytes).unwrap();
    fs::rename(&staged, &replaced).unwrap();
    assert_eq!(fx.cache.get(&b.sha256()).unwrap(), None);
    // Imported again, it is the same image, found by hashing.
    settle(&replaced);
    let again = fx.cache.import(&replaced, in_place()).unwrap();
    assert_eq!(again.image.sha256(), b.sha256());
    assert!(again.image.meta.reference.as_ref().unwrap().is_intact());
}

#[test]
fn a_file_changed_just_before_the_import_is_copied_not_referenced() {
    let fx = Fixture::new();
    if clones(&fx) {
        eprintln!("not run: this file system clones files (the import is a reflink)");
        return;
    }
    let data = sample_image();
    let input = fx.input("fresh.img", &data);
    // Written a moment ago: a change in the same clock tick could keep its
    // identity, so it is not referenced. (If the machine was so slow that
    // the file settled meanwhile, the reference is correct too.)
    let written = SystemTime::now();
    let image = fx.cache.import(&input, in_place()).unwrap().image;
    if written.elapsed().unwrap() < Duration::from_millis(50) {
        assert_eq!(image.meta.reference, None);
        assert!(fx.files_under("images").iter().any(|f| f.ends_with(".img")));
        assert_eq!(fs::read(&image.path).unwrap(), data);
    }
}

#[test]
fn without_reference_raw_a_raw_file_is_copied() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    settle(&input);
    let image = fx.cache.import(&input, options()).unwrap().image;
    assert_eq!(image.meta.reference, None);
    assert_ne!(image.path, fs::canonicalize(&input).unwrap());
    // Changing the original changes nothing of the cached image.
    fs::write(&input, b"gone").unwrap();
    assert_eq!(fx.cache.get(&image.sha256()).unwrap(), Some(image.clone()));
    assert_eq!(fs::read(&image.path).unwrap(), data);
}

#[test]
fn a_compressed_file_is_always_decompressed_into_the_cache() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img.gz", &gzip(&data));
    settle(&input);
    let image = fx.cache.import(&input, in_place()).unwrap().image;
    assert_eq!(image.meta.reference, None);
    assert_eq!(fs::read(&image.path).unwrap(), data);
}

#[test]
fn an_expected_digest_that_does_not_match_keeps_no_reference() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    settle(&input);
    let wrong = Sha256Digest::of(b"something else");
    let error = fx
        .cache
        .import(
            &input,
            ImportOptions {
                expected_sha256: Some(wrong),
                ..in_place()
            },
        )
        .unwrap_err();
    assert!(
        matches!(error, ImageError::ChecksumMismatch { .. }),
        "{error}"
    );
    assert!(fx.cache.list().unwrap().is_empty());
    assert!(fx.files_under("images").is_empty());
    assert!(fx.files_under("tmp").is_empty());
}
