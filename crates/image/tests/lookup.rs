//! Finding, listing and removing cached images, and the cache directory itself.

mod common;

use std::collections::HashMap;
use std::fs;

use common::*;
use flashrack_image::{ImageCache, ImageError, Sha256Digest};

#[test]
fn an_image_is_found_by_a_prefix_of_its_digest_in_either_case() {
    let fx = Fixture::new();
    let image = fx
        .cache
        .import(fx.input("disk.img", &sample_image()), options())
        .unwrap()
        .image;
    let hex = image.sha256().to_hex();
    for query in [
        &hex[..6],
        &hex[..10],
        &hex,
        &hex[..8].to_uppercase(),
        &format!(" {} ", &hex[..7]),
    ] {
        assert_eq!(fx.cache.find(query).unwrap(), image, "{query}");
    }
    let error = fx.cache.find(&hex[..5]).unwrap_err();
    assert!(
        matches!(error, ImageError::PrefixTooShort { .. }),
        "{error:?}"
    );
    let other = if hex.starts_with("000000") {
        "ffffff"
    } else {
        "000000"
    };
    assert!(matches!(
        fx.cache.find(other).unwrap_err(),
        ImageError::NotFound { .. }
    ));
}

/// Two small images whose digests share their first six hex digits, found by
/// trying contents until two collide (about 5000 tries, a millisecond's work).
fn images_sharing_a_prefix() -> (Vec<u8>, Vec<u8>) {
    let content = |n: u32| {
        format!("flashrack test image {n}\n")
            .repeat(100)
            .into_bytes()
    };
    let mut seen: HashMap<[u8; 3], u32> = HashMap::new();
    for n in 0.. {
        let digest = Sha256Digest::of(&content(n));
        let key = [
            digest.as_bytes()[0],
            digest.as_bytes()[1],
            digest.as_bytes()[2],
        ];
        if let Some(&m) = seen.get(&key) {
            return (content(m), content(n));
        }
        seen.insert(key, n);
    }
    unreachable!()
}

#[test]
fn an_ambiguous_prefix_is_an_error_listing_the_candidates() {
    let fx = Fixture::new();
    let (a, b) = images_sharing_a_prefix();
    let a = fx
        .cache
        .import(fx.input("a.img", &a), options())
        .unwrap()
        .image;
    let b = fx
        .cache
        .import(fx.input("b.img", &b), options())
        .unwrap()
        .image;
    let prefix = &a.sha256().to_hex()[..6];
    assert_eq!(prefix, &b.sha256().to_hex()[..6]);

    let error = fx.cache.find(prefix).unwrap_err();
    match &error {
        ImageError::Ambiguous {
            query, candidates, ..
        } => {
            assert_eq!(query, prefix);
            let mut expected = vec![a.sha256(), b.sha256()];
            expected.sort();
            assert_eq!(candidates, &expected);
        }
        other => panic!("expected an ambiguous prefix, got {other:?}"),
    }
    assert!(error.to_string().contains(&a.sha256().short()), "{error}");
    assert_eq!(fx.cache.find(&a.sha256().to_hex()).unwrap(), a);
    assert_eq!(fx.cache.find(&b.sha256().to_hex()).unwrap(), b);
}

#[test]
fn an_image_is_found_by_file_name_zip_entry_or_file_digest() {
    let fx = Fixture::new();
    let data = sample_image();
    let archive = zip_with(
        &[("inner.img", Some(&data))],
        zip::CompressionMethod::Deflated,
    );
    let zipped = fx
        .cache
        .import(fx.input("release.zip", &archive), options())
        .unwrap()
        .image;
    let other = image(2, 0, &[], 5);
    let plain = fx
        .cache
        .import(fx.input("other.img", &other), options())
        .unwrap()
        .image;

    assert_eq!(fx.cache.find("release.zip").unwrap(), zipped);
    assert_eq!(fx.cache.find("inner.img").unwrap(), zipped);
    assert_eq!(fx.cache.find("other.img").unwrap(), plain);
    assert_eq!(
        fx.cache.find(&Sha256Digest::of(&archive).to_hex()).unwrap(),
        zipped
    );
    assert!(matches!(
        fx.cache.find("missing.img").unwrap_err(),
        ImageError::NotFound { .. }
    ));

    // The same name for two different images is ambiguous.
    let elsewhere = tempfile::tempdir().unwrap();
    let path = elsewhere.path().join("other.img");
    fs::write(&path, image(2, 0, &[], 6)).unwrap();
    fx.cache.import(&path, options()).unwrap();
    assert!(matches!(
        fx.cache.find("other.img").unwrap_err(),
        ImageError::Ambiguous { .. }
    ));
}

#[test]
fn list_shows_every_present_image_and_remove_deletes_one_with_its_hints() {
    let fx = Fixture::new();
    assert!(fx.cache.list().unwrap().is_empty());
    let inputs: Vec<_> = (0..3)
        .map(|seed| fx.input(&format!("{seed}.img.gz"), &gzip(&image(2, 10, &[], seed))))
        .collect();
    // Settled files get a `sources/` hint each (the last written settles last).
    settle(inputs.last().unwrap());
    let mut imported = Vec::new();
    for input in &inputs {
        imported.push(fx.cache.import(input, options()).unwrap().image);
    }
    let mut listed = fx.cache.list().unwrap();
    listed.sort_by_key(|i| i.meta.original_name.clone());
    assert_eq!(listed, imported);

    let gone = imported.remove(1);
    fx.cache.remove(&gone.sha256()).unwrap();
    assert_eq!(fx.cache.get(&gone.sha256()).unwrap(), None);
    assert!(!gone.path.exists());
    let mut listed = fx.cache.list().unwrap();
    listed.sort_by_key(|i| i.meta.original_name.clone());
    assert_eq!(listed, imported);
    assert_eq!(fx.files_under("images").len(), 4);
    assert_eq!(fx.files_under("sources").len(), 2);
    assert_eq!(fx.files_under("aliases").len(), 2);

    let error = fx.cache.remove(&gone.sha256()).unwrap_err();
    assert!(matches!(error, ImageError::NotFound { .. }), "{error:?}");
}

#[test]
fn a_damaged_entry_is_an_error_for_get_and_skipped_by_list() {
    let fx = Fixture::new();
    let good = fx
        .cache
        .import(fx.input("a.img", &image(2, 0, &[], 1)), options())
        .unwrap()
        .image;
    let bad = fx
        .cache
        .import(fx.input("b.img", &image(2, 0, &[], 2)), options())
        .unwrap()
        .image;
    let entry = bad.path.with_extension("json");
    fs::write(&entry, b"{ not json").unwrap();

    let error = fx.cache.get(&bad.sha256()).unwrap_err();
    assert!(
        matches!(&error, ImageError::BadEntry { path, .. } if *path == entry),
        "{error:?}"
    );
    assert_eq!(fx.cache.list().unwrap(), [good]);
}

#[test]
fn opening_creates_the_layout_and_removes_leftovers_of_crashed_imports() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    ImageCache::open(&root).unwrap();
    for sub in ["images", "sources", "aliases", "tmp"] {
        assert!(root.join(sub).is_dir(), "{sub}");
    }
    // Pid 0 is never a running process: a crashed import's leftover.
    let leftover = root.join("tmp/0-123-0.img.partial");
    fs::write(&leftover, b"half an image").unwrap();
    let cache = ImageCache::open(&root).unwrap();
    assert!(!leftover.exists());
    assert_eq!(cache.dir(), root);
}

#[test]
fn a_unique_beginning_of_a_name_finds_the_image_in_either_case() {
    let fx = Fixture::new();
    let ubuntu = fx
        .cache
        .import(
            fx.input("ubuntu-24.04.iso.gz", &gzip(&image(2, 0, &[], 1))),
            options(),
        )
        .unwrap()
        .image;
    let debian = fx
        .cache
        .import(fx.input("debian-12.img", &image(2, 0, &[], 2)), options())
        .unwrap()
        .image;
    assert_eq!(fx.cache.find("ubuntu").unwrap(), ubuntu);
    assert_eq!(fx.cache.find("Ubuntu-24").unwrap(), ubuntu);
    assert_eq!(fx.cache.find("d").unwrap(), debian);
}

#[test]
fn a_beginning_shared_by_two_names_is_ambiguous_and_names_both() {
    let fx = Fixture::new();
    for (name, seed) in [("ubuntu-22.04.img", 1), ("ubuntu-24.04.img", 2)] {
        fx.cache
            .import(fx.input(name, &image(2, 0, &[], seed)), options())
            .unwrap();
    }
    let error = fx.cache.find("ubuntu").unwrap_err();
    match &error {
        ImageError::Ambiguous { names, .. } => {
            let mut names = names.clone();
            names.sort();
            assert_eq!(names, ["ubuntu-22.04.img", "ubuntu-24.04.img"]);
        }
        other => panic!("expected an ambiguous name, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("ubuntu-22.04.img") && text.contains("ubuntu-24.04.img"),
        "{text}"
    );
    assert_eq!(
        fx.cache.find("ubuntu-24").unwrap().meta.original_name,
        "ubuntu-24.04.img"
    );
}

#[test]
fn an_unknown_name_is_answered_with_the_names_that_look_like_it() {
    let fx = Fixture::new();
    for (name, seed) in [("ubuntu-24.04.img", 1), ("debian-12.img", 2)] {
        fx.cache
            .import(fx.input(name, &image(2, 0, &[], seed)), options())
            .unwrap();
    }
    let error = fx.cache.find("xubuntu").unwrap_err();
    match &error {
        ImageError::NotFound { suggestions, .. } => {
            assert_eq!(suggestions, &["ubuntu-24.04.img"]);
        }
        other => panic!("expected not found, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .ends_with("did you mean ubuntu-24.04.img?"),
        "{error}"
    );
    // Nothing alike in a small cache: every name is offered.
    let error = fx.cache.find("fedora").unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("did you mean one of: debian-12.img, ubuntu-24.04.img?"),
        "{error}"
    );
}

#[test]
fn an_image_imported_again_under_another_name_is_found_by_it_too() {
    let fx = Fixture::new();
    let bytes = sample_image();
    let first = fx
        .cache
        .import(fx.input("golden-v1.img", &bytes), options())
        .unwrap()
        .image;
    // The same bytes under another name: the image keeps its name, and is
    // found by the new one (it was "no cached image matches").
    let again = fx
        .cache
        .import(fx.input("golden-v2.img", &bytes), options())
        .unwrap();
    assert!(again.already_cached());
    assert_eq!(again.image.meta.original_name, "golden-v1.img");
    assert_eq!(again.image.meta.also_known_as, ["golden-v2.img"]);
    let found = fx.cache.find("golden-v2.img").unwrap();
    assert_eq!(found.sha256(), first.sha256());
    assert_eq!(found.meta.also_known_as, ["golden-v2.img"]);
    // Kept across a new cache over the same directory, once per name.
    fx.cache
        .import(fx.input("golden-v2.img", &bytes), options())
        .unwrap();
    let reopened = ImageCache::open(fx.cache_dir.path()).unwrap();
    assert_eq!(
        reopened.find("golden-v2").unwrap().meta.also_known_as,
        ["golden-v2.img"]
    );
    // Never without end: at most MAX_OTHER_NAMES.
    for n in 0..flashrack_image::MAX_OTHER_NAMES + 4 {
        fx.cache
            .import(fx.input(&format!("copy-{n}.img"), &bytes), options())
            .unwrap();
    }
    let image = fx.cache.find(&first.sha256().to_hex()).unwrap();
    assert_eq!(
        image.meta.also_known_as.len(),
        flashrack_image::MAX_OTHER_NAMES
    );
}
