//! `flashrack image …`: the image cache from the command line.

use std::path::Path;

use anyhow::{Context, Result};
use flashrack_app::images::{import, open_cache, remove};
use flashrack_core::{ByteSize, Sha256Digest};

use crate::cli::ImageCommand;

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
            let outcome = import(&cache, &file, expected, max_size)?;
            let image = &outcome.image;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "sha256": image.sha256(),
                        "size": image.size(),
                        "format": image.meta.format.name(),
                        "already_cached": outcome.already_cached(),
                        "path": image.path,
                    })
                )?;
            } else {
                errln!(
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
                outln!("{}", image.sha256())?;
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
                            "inspection": i.meta.inspection,
                            "raw_write_refusal": i.raw_write_refusal(),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for i in images {
                    let what = i.meta.inspection.as_ref().map(|x| x.summary());
                    outln!(
                        "{}  {:>10}  {}  {}{}",
                        i.sha256(),
                        ByteSize(i.size()).to_string(),
                        i.meta.original_name,
                        what.unwrap_or_default(),
                        if i.raw_write_refusal().is_some() {
                            "  [raw run refused]"
                        } else {
                            ""
                        }
                    )?;
                }
            }
        }
        ImageCommand::Show { image, json } => {
            let i = cache.find(&image)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "sha256": i.sha256(), "size": i.size(),
                        "name": i.meta.original_name, "format": i.meta.format.name(),
                        "imported_at": i.meta.imported_at,
                        "inspection": i.meta.inspection,
                        "raw_write_refusal": i.raw_write_refusal(),
                    }))?
                )?;
            } else {
                outln!("{}  {}", i.sha256(), i.meta.original_name)?;
                outln!("size: {} ({} bytes)", ByteSize(i.size()), i.size())?;
                match &i.meta.inspection {
                    Some(info) => {
                        for line in info.details() {
                            outln!("{line}")?;
                        }
                    }
                    None => outln!("not inspected (the image file cannot be read)")?,
                }
            }
        }
        ImageCommand::Remove { image } => {
            let removed = remove(&cache, &image)?;
            errln!("removed {removed}");
        }
    }
    Ok(())
}
