//! `flashrack image …`: the image cache from the command line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use flashrack_core::{ByteSize, Sha256Digest};
use flashrack_image::{CachedImage, ImageCache, ImportOptions};

use crate::cli::ImageCommand;

/// Opens (creating if needed) the cache under the data directory.
pub fn open_cache(data_dir: &Path) -> Result<ImageCache> {
    let dir = data_dir.join("cache");
    ImageCache::open(&dir)
        .with_context(|| format!("cannot open the image cache in {}", dir.display()))
}

/// An image named on the command line: a file to import, or a cached digest.
/// An image larger than `max_size` (the largest target that may be written) is
/// refused: it could never be written.
pub fn resolve_image(
    cache: &ImageCache,
    name: &str,
    expected: Option<Sha256Digest>,
    max_size: ByteSize,
    quiet: bool,
) -> Result<CachedImage> {
    let path = Path::new(name);
    // Anything that exists is given to the import, which takes regular files
    // only and says what else it found (a FIFO, a device, a directory).
    if path.exists() {
        if !quiet && path.is_file() {
            eprintln!("importing {name} …");
        }
        let outcome = cache
            .import(
                path,
                ImportOptions {
                    expected_sha256: expected,
                    max_image_size: max_size.bytes(),
                    ..ImportOptions::default()
                },
            )
            .with_context(|| format!("cannot import {name}"))?;
        return Ok(outcome.image);
    }
    let image = cache
        .find(name)
        .with_context(|| format!("{name} is neither a file nor a cached image"))?;
    if let Some(expected) = expected {
        if expected != image.sha256() && expected != image.meta.input_sha256 {
            bail!(
                "cached image {} does not match --sha256 {expected}",
                image.sha256()
            );
        }
    }
    Ok(image)
}

/// Runs an `image` subcommand.
pub fn run(data_dir: &Path, command: ImageCommand) -> Result<()> {
    let cache = open_cache(data_dir)?;
    match command {
        ImageCommand::Import {
            file,
            sha256,
            max_size,
            json,
        } => {
            let expected = sha256
                .as_deref()
                .map(Sha256Digest::parse)
                .transpose()
                .context("--sha256")?;
            let outcome = cache
                .import(
                    &file,
                    ImportOptions {
                        expected_sha256: expected,
                        max_image_size: max_size.bytes(),
                        ..ImportOptions::default()
                    },
                )
                .with_context(|| format!("cannot import {}", file.display()))?;
            let image = &outcome.image;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "sha256": image.sha256(),
                        "size": image.size(),
                        "format": image.meta.format.name(),
                        "already_cached": outcome.already_cached(),
                        "path": image.path,
                    })
                );
            } else {
                eprintln!(
                    "{} {} ({}, {}, {} in zero chunks)",
                    if outcome.already_cached() {
                        "already cached:"
                    } else {
                        "imported:"
                    },
                    image.meta.original_name,
                    image.meta.format.name(),
                    ByteSize(image.size()),
                    ByteSize(image.manifest.zero_bytes()),
                );
                println!("{}", image.sha256());
            }
        }
        ImageCommand::List { json } => {
            let images = cache.list()?;
            if json {
                let rows: Vec<_> = images
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "sha256": i.sha256(), "size": i.size(),
                            "name": i.meta.original_name, "format": i.meta.format.name(),
                            "imported_at": i.meta.imported_at,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for i in images {
                    println!(
                        "{}  {:>10}  {}",
                        i.sha256(),
                        ByteSize(i.size()).to_string(),
                        i.meta.original_name
                    );
                }
            }
        }
        ImageCommand::Remove { image } => {
            let found = cache.find(&image)?;
            cache.remove(&found.sha256())?;
            eprintln!("removed {}", found.sha256());
        }
    }
    Ok(())
}
