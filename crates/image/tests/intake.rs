//! What an import accepts: regular files only, images no larger than the
//! largest target, as much as the cache's file system can take, only from the
//! directories it is allowed to read, and not after it was cancelled.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use flashrack_image::{FileKind, ImageCache, ImageError, ImportOptions, Sha256Digest};

const MIB: u64 = 1 << 20;

/// Runs an import on its own thread and gives up waiting after a minute: an
/// import that blocks (on a FIFO without a writer) fails the test instead of
/// hanging it. The minute bounds a failure; a passing import returns at once.
fn import_bounded(
    cache: &ImageCache,
    path: &Path,
    options: ImportOptions,
) -> Result<flashrack_image::ImportOutcome, ImageError> {
    let (tx, rx) = mpsc::channel();
    let cache = cache.clone();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(cache.import(&path, options));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the import returns instead of blocking")
}

fn assert_not_regular(error: ImageError, path: &Path, kind: FileKind) {
    match &error {
        ImageError::NotARegularFile { path: p, kind: k } => {
            assert_eq!((p.as_path(), *k), (path, kind), "{error}");
        }
        other => panic!("expected {path:?} to be refused as {kind:?}, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn a_fifo_is_refused_at_once_without_waiting_for_a_writer() {
    let fx = Fixture::new();
    let fifo = fx.inputs.path().join("image.fifo");
    flashrack_testkit::run("mkfifo", &[fifo.to_str().unwrap()]);
    let error = import_bounded(&fx.cache, &fifo, options()).unwrap_err();
    assert_not_regular(error, &fifo, FileKind::Fifo);
    fx.assert_cache_empty();
}

#[test]
fn character_devices_are_refused_before_anything_is_read() {
    let fx = Fixture::new();
    for device in ["/dev/zero", "/dev/urandom", "/dev/null"] {
        let error = import_bounded(&fx.cache, Path::new(device), options()).unwrap_err();
        assert_not_regular(error, Path::new(device), FileKind::CharDevice);
    }
    // Through a symbolic link too: what counts is what the path leads to.
    let link = fx.inputs.path().join("zero.img");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let error = import_bounded(&fx.cache, &link, options()).unwrap_err();
    assert_not_regular(error, &link, FileKind::CharDevice);
    fx.assert_cache_empty();
}

#[test]
fn a_block_device_or_a_directory_is_refused_with_what_it_is() {
    if !flashrack_testkit::require_root(&["losetup"]) {
        return;
    }
    let fx = Fixture::new();
    let error = import_bounded(&fx.cache, fx.inputs.path(), options()).unwrap_err();
    assert_not_regular(error, fx.inputs.path(), FileKind::Directory);

    let disk = flashrack_testkit::LoopDevice::new(4 * MIB);
    let error = import_bounded(&fx.cache, disk.path(), options()).unwrap_err();
    let text = error.to_string();
    assert_not_regular(error, disk.path(), FileKind::BlockDevice);
    assert!(text.contains("copy it to a file first"), "{text}");
    fx.assert_cache_empty();
}

/// `len` bytes that are not zero (so they take room in the cache) but
/// compress to almost nothing.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| 0x55 ^ (i / 4096) as u8 | 1).collect()
}

#[test]
fn a_gzip_bomb_stops_at_the_largest_target_size_and_leaves_nothing() {
    let fx = Fixture::new();
    // 64 MiB that compress to a few KiB, against a 4 MiB limit.
    let raw = pattern(64 * MIB as usize);
    let bomb = gzip(&raw);
    assert!(bomb.len() < MIB as usize, "{}", bomb.len());
    let input = fx.input("small.img.gz", &bomb);
    let limit = 4 * MIB;
    let error = import_bounded(
        &fx.cache,
        &input,
        ImportOptions {
            max_image_size: limit,
            ..options()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&error, ImageError::TooLarge { path, limit: l } if *path == input && *l == limit),
        "{error:?}"
    );
    assert!(error.to_string().contains("largest target"), "{error}");
    fx.assert_cache_empty();

    // Exactly at the limit is fine.
    let input = fx.input("fits.img.gz", &gzip(&raw[..limit as usize]));
    let outcome = import_bounded(
        &fx.cache,
        &input,
        ImportOptions {
            max_image_size: limit,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(outcome.image.size(), limit);
}

#[test]
fn a_raw_image_or_a_cached_one_larger_than_the_limit_is_refused() {
    let fx = Fixture::new();
    let data = sample_image();
    let input = fx.input("disk.img", &data);
    let small = ImportOptions {
        max_image_size: data.len() as u64 - 1,
        ..options()
    };
    let error = import_bounded(&fx.cache, &input, small.clone()).unwrap_err();
    assert!(matches!(error, ImageError::TooLarge { .. }), "{error:?}");
    fx.assert_cache_empty();

    // Cached under a larger limit, then asked for under a smaller one: every
    // shortcut applies the limit too.
    settle(&input);
    import_bounded(&fx.cache, &input, options()).unwrap();
    let error = import_bounded(&fx.cache, &input, small.clone()).unwrap_err();
    assert!(matches!(error, ImageError::TooLarge { .. }), "{error:?}");
    let copy = fx.input("copy.img", &data);
    let error = import_bounded(&fx.cache, &copy, small).unwrap_err();
    assert!(matches!(error, ImageError::TooLarge { .. }), "{error:?}");
}

/// A cache on a 16 MiB tmpfs the test mounts.
struct SmallCache {
    fs: flashrack_testkit::Tmpfs,
    cache: ImageCache,
    inputs: tempfile::TempDir,
}

impl SmallCache {
    fn new() -> Self {
        let fs = flashrack_testkit::Tmpfs::new(16 * MIB);
        let cache = ImageCache::open(fs.path().join("cache")).unwrap();
        Self {
            fs,
            cache,
            inputs: tempfile::tempdir().unwrap(),
        }
    }

    fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.inputs.path().join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.fs.path().join("cache/tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

fn reserve(bytes: u64) -> ImportOptions {
    ImportOptions {
        min_free_space: bytes,
        ..options()
    }
}

#[test]
fn decompressing_stops_before_the_cache_file_system_is_full() {
    if !flashrack_testkit::require_root(&["mount", "umount"]) {
        return;
    }
    let small = SmallCache::new();
    let before = small.fs.available();
    // 32 MiB of data (not zeros: they would be holes) in a small gzip, into
    // 16 MiB, keeping 2 MiB free.
    let input = small.input("big.img.gz", &gzip(&pattern(32 * MIB as usize)));
    let error = import_bounded(&small.cache, &input, reserve(2 * MIB)).unwrap_err();
    match &error {
        ImageError::CacheFull {
            available,
            reserve,
            needed,
            stored,
            ..
        } => {
            assert_eq!(*reserve, 2 * MIB);
            assert!(*available < 2 * MIB + u64::from(CHUNK), "{error}");
            // How far it got: about what the file system had room for.
            assert_eq!(*needed, None, "{error}");
            assert!(*stored > 8 * MIB && *stored < 16 * MIB, "{error}");
            assert!(error.to_string().contains("stopped after"), "{error}");
        }
        other => panic!("expected the cache to be full, got {other:?}"),
    }
    assert!(error.to_string().contains("free space"), "{error}");
    // What the import wrote is gone again.
    assert!(small.temp_files().is_empty(), "{:?}", small.temp_files());
    assert!(small.cache.list().unwrap().is_empty());
    assert_eq!(small.fs.available(), before);
}

#[test]
fn an_import_that_cannot_fit_is_refused_before_it_writes() {
    if !flashrack_testkit::require_root(&["mount", "umount"]) {
        return;
    }
    let small = SmallCache::new();
    // A raw image whose data is larger than the free space.
    let input = small.input("big.img", &noise(20 * MIB as usize, 3));
    let error = import_bounded(&small.cache, &input, reserve(MIB)).unwrap_err();
    // What the image needs is in the words, so the operator knows how much
    // room to make.
    assert!(
        matches!(error, ImageError::CacheFull { needed: Some(n), stored: 0, .. } if n == 20 * MIB),
        "{error:?}"
    );
    assert!(
        error.to_string().ends_with("; the image needs 21 MB"),
        "{error}"
    );
    assert!(small.temp_files().is_empty());

    // A file system already below the reserve takes nothing at all.
    let filler = small.fs.path().join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    file.write_all(&noise(13 * MIB as usize, 4)).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let tiny = small.input("tiny.img", &sample_image());
    let error = import_bounded(&small.cache, &tiny, reserve(4 * MIB)).unwrap_err();
    assert!(matches!(error, ImageError::CacheFull { .. }), "{error:?}");
    assert!(small.temp_files().is_empty());
    // With the room back, the same import goes through.
    fs::remove_file(&filler).unwrap();
    let outcome = import_bounded(&small.cache, &tiny, reserve(4 * MIB)).unwrap();
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&sample_image()));
}

#[test]
fn a_cancelled_import_keeps_nothing() {
    let fx = Fixture::new();
    let input = fx.input("disk.img.xz", &xz(&sample_image()));
    let cancel = Arc::new(AtomicBool::new(true));
    let error = import_bounded(
        &fx.cache,
        &input,
        ImportOptions {
            cancel: Some(cancel),
            ..options()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&error, ImageError::Cancelled { path } if *path == input),
        "{error:?}"
    );
    fx.assert_cache_empty();
}

fn only_from(dirs: &[&Path]) -> ImportOptions {
    ImportOptions {
        allowed_dirs: Some(dirs.iter().map(|d| d.to_path_buf()).collect()),
        ..options()
    }
}

#[test]
fn imports_limited_to_directories_take_nothing_from_elsewhere() {
    let fx = Fixture::new();
    let allowed = tempfile::tempdir().unwrap();
    let inside = allowed.path().join("disk.img");
    fs::write(&inside, sample_image()).unwrap();
    let outside = fx.input("secret.img", &sample_image());
    let dirs = [allowed.path()];

    let outcome = import_bounded(&fx.cache, &inside, only_from(&dirs)).unwrap();
    assert_eq!(outcome.image.sha256(), Sha256Digest::of(&sample_image()));

    let link = allowed.path().join("link.img");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let dotdot = allowed
        .path()
        .join("..")
        .join(fx.inputs.path().strip_prefix("/").unwrap())
        .join("secret.img");
    let sneaky = allowed.path().join("sub/../../etc/shadow");
    for path in [
        outside.clone(),
        link,
        dotdot,
        sneaky,
        PathBuf::from("/etc/shadow"),
        PathBuf::from("/proc/self/environ"),
        PathBuf::from("/nonexistent/disk.img"),
    ] {
        let error = import_bounded(&fx.cache, &path, only_from(&dirs)).unwrap_err();
        assert!(
            matches!(&error, ImageError::OutsideImportDirs { path: p } if *p == path),
            "{path:?}: {error:?}"
        );
    }
    // A missing file inside is just missing.
    let missing = allowed.path().join("missing.img");
    let error = import_bounded(&fx.cache, &missing, only_from(&dirs)).unwrap_err();
    assert!(matches!(error, ImageError::ReadInput { .. }), "{error:?}");
    // No directory at all allows nothing.
    let error = import_bounded(&fx.cache, &inside, only_from(&[])).unwrap_err();
    assert!(
        matches!(error, ImageError::OutsideImportDirs { .. }),
        "{error:?}"
    );
}
