//! Importing an image from a stream (a download) rather than a file: the same
//! single pass (format by magic bytes, decompression, whole and chunk digests,
//! sparse store), fed by whatever reads the bytes as they arrive. Nothing is
//! read twice: the stream is consumed once, front to back.
//!
//! An [`ImportObserver`](crate::ImportObserver) in the options hears of the
//! pass as it goes, as for a file (a flash that writes while it downloads).
//!
//! A zip archive needs a stream that is also written whole to a file
//! ([`StreamSource::spooled`]: a download's partial file), for its central
//! directory at its end. Its chosen file
//! ([`ImportOptions::zip_entry`](crate::ImportOptions::zip_entry), as for a
//! file import) is decoded as it arrives from its local header when that
//! gives its sizes; when its sizes follow its data (a data descriptor,
//! checked against what arrived) it is inflated as it arrives when deflated,
//! or, stored, read as it arrives up to the first descriptor that agrees
//! with it (stored data does not mark its end); either way it is checked
//! against the central directory once the stream has ended. An entry that
//! cannot be streamed (encrypted, another method) is read from the spool
//! file once the stream has ended (the archive's sha256 computed as it
//! arrives either way). So is a stored entry whose end, found in its data,
//! was not its end (data made to read as its data descriptor): the central
//! directory lists it longer than the stream made it, and the stream alone
//! cannot tell where it ends, so the archive is read as a file is, and
//! imports as it would from a file; so is an archive whose records, read
//! past such a false end in an earlier stored entry, did not parse or
//! disagree with its directory. An observer that heard of the streamed
//! pass is told it was abandoned ([`ImportObserver::abandoned`]: the chunks
//! it heard of were the entry's first bytes only) and hears nothing of the
//! second. Without a spool file a zip is
//! refused with [`ImageError::Unsupported`]. The stream formats and raw images are
//! imported as they come.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use flashrack_core::{ImageManifest, Provenance, Sha256Digest};

use crate::blockmap::BmapInput;
use crate::cache::{CachedImage, EntryFile, ImageCache, ImportMeta};
use crate::detect::{ImageFormat, MAGIC_LEN};
use crate::error::ImageError;
use crate::fsutil::{write_json_atomic, TempFile};
use crate::import::{
    check_expected, check_size, check_streamed_zip, decode_zip, input_error, stream_zip_entry,
    CacheHit, Checked, ImportOptions, ImportOutcome, StreamedCheck, ZipPass, MAX_CHUNK_SIZE,
};
use crate::input::{read_full, stream_decoder, InputReader, INPUT_BUFFER};
use crate::pass::{digest_and_store, ChunkHashing, PassError};

/// What is known of a stream before it is read.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// What to call it in messages (a URL).
    pub label: String,
    /// The name the image is kept under (the file name of a URL).
    pub name: String,
    /// Where it comes from, kept with the image: set by whoever feeds the
    /// stream before the stream ends (a download knows its server's
    /// validators only once it has them), read once it has ended. Left
    /// unset, the image has no provenance.
    pub provenance: Arc<OnceLock<Provenance>>,
    /// Take the stream as a raw image whatever its first bytes look like (a
    /// disk read as it is, which may well start like a compressed file).
    pub raw: bool,
    /// The stream's length as its source declared it (a server's
    /// `Content-Length`), if it did: set by whoever feeds the stream before
    /// its first byte, read once when the pass begins. For a raw stream it
    /// is the image's size the observer is told at
    /// [`ImportObserver::began`](crate::ImportObserver::began) (a lie
    /// fails the import: the feed checks what it was fed against it).
    /// Left unset, the size is known at the end.
    pub declared_length: Arc<OnceLock<u64>>,
    /// For a compressed stream, the raw size it declares, if known before
    /// the pass (an `.xz` index fetched ahead), told to the observer as the
    /// image's size; ignored for a raw stream.
    pub declared_raw_size: Option<u64>,
    /// A file the stream's bytes are written to as they are read, whole
    /// once the stream has ended (a download's partial file). A zip
    /// archive's central directory, at its end, is read from it (to check
    /// an entry decoded as it arrived, or to read one that could not be).
    /// `None`: a zip is refused.
    pub spooled: Option<PathBuf>,
}

impl StreamSource {
    /// A stream called `label`, kept under `name`, with no provenance and
    /// no declared length: its format by its first bytes.
    pub fn new(label: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            name: name.into(),
            provenance: Arc::default(),
            raw: false,
            declared_length: Arc::default(),
            declared_raw_size: None,
            spooled: None,
        }
    }
}

impl ImageCache {
    /// Imports the image `input` yields, read once to its end, as
    /// [`ImageCache::import`] imports a file: decompressed by its magic bytes,
    /// digested, checked against `options.expected_sha256` (of the stream as
    /// given or of the raw image) and moved into the cache; on any error
    /// nothing is left in the cache. An image already cached is kept, and
    /// takes the stream's provenance. A bmap (`options.bmap`) is checked on
    /// the raw bytes as they go past, as [`ImageCache::import`] checks it: a
    /// map that lies fails the import ([`ImageError::BmapRefused`]) and
    /// nothing is kept; one that tells the truth is kept with the image
    /// ([`ImportOutcome::map`]).
    pub fn import_stream(
        &self,
        input: &mut dyn Read,
        source: StreamSource,
        options: ImportOptions,
    ) -> Result<ImportOutcome, ImageError> {
        let label = PathBuf::from(&source.label);
        let chunk_size = options.chunk_size;
        if chunk_size == 0 || !chunk_size.is_multiple_of(4096) || chunk_size > MAX_CHUNK_SIZE {
            return Err(ImageError::InvalidChunkSize { chunk_size });
        }
        let mut head = [0u8; MAGIC_LEN];
        let head_len =
            read_full(input, &mut head).map_err(|e| input_error(&label, ImageFormat::Raw, e))?;
        if head_len == 0 {
            return Err(ImageError::EmptyInput { path: label });
        }
        let format = if source.raw {
            ImageFormat::Raw
        } else {
            ImageFormat::detect(&head[..head_len])
        };
        let spooled = match (format, &source.spooled) {
            (ImageFormat::Zip, None) => {
                return Err(ImageError::Unsupported {
                    path: label,
                    format,
                    reason: "a zip archive is read from its end, and this stream is kept in no file to read it from; download it and import the file".into(),
                })
            }
            (ImageFormat::Zip, Some(path)) => Some(path.clone()),
            _ => None,
        };
        self.check_space(0, 0, options.min_free_space)?;
        let mut temp = TempFile::create_in(&self.tmp, "img")?;
        let out_path = temp.path().to_path_buf();
        // Whoever follows the import hears of it from here on, as of a
        // file's: the raw bytes go to the temporary file, chunk by chunk.
        let observer = options.observer.as_deref();
        // A zip's observer hears of the pass once its entry is found (with
        // its size when its local header gives it), below.
        if let (Some(observer), None) = (observer, &spooled) {
            let size = match format {
                ImageFormat::Raw => source.declared_length.get().copied(),
                _ => source.declared_raw_size,
            };
            observer.began(temp.file_mut(), chunk_size, size);
        }
        let mut watch = |raw_size: u64| -> Result<(), ImageError> {
            if options.cancelled() {
                return Err(ImageError::Cancelled {
                    path: label.clone(),
                });
            }
            check_size(&label, raw_size, &options)?;
            self.check_space(u64::from(chunk_size), raw_size, options.min_free_space)
        };
        let pass_error = |error: PassError| match error {
            PassError::Input(e) => input_error(&label, format, e),
            PassError::Output(source) => ImageError::CacheIo {
                action: "write",
                path: out_path.clone(),
                source,
            },
            PassError::Stopped(error) => error,
        };
        let whole = Cursor::new(head[..head_len].to_vec()).chain(input);
        let hashing = ChunkHashing::for_input();
        // A bmap that comes with the stream is checked on the raw bytes as
        // they go past, as a file import checks it: no second read.
        let mut check = options.bmap.as_ref().map(BmapInput::check);
        let mut zip_entry = None;
        let passed = if let Some(spooled) = &spooled {
            // The entry as it arrives, from its local header, where it can
            // be (its sizes before its data, or after it, deflated or
            // stored: its size unknown until its end, checked against the
            // data descriptor after it);
            // the rest of the stream to its
            // end (hashed as it arrives: the sha256 of the file as given);
            // then the archive's central directory, from the file the stream
            // was written to: the streamed entry checked against it, or,
            // when the entry could not be streamed, read from there.
            let mut reader = InputReader::new(whole, true);
            let raw_file = temp
                .file()
                .try_clone()
                .map_err(|source| ImageError::CacheIo {
                    action: "open",
                    path: out_path.clone(),
                    source,
                })?;
            // Whether the observer heard of the streamed pass, and whether
            // that pass was abandoned (the observer hears nothing more).
            let told = std::cell::Cell::new(false);
            let abandoned = std::cell::Cell::new(false);
            let mut tell = |size: Option<u64>| {
                if let Some(observer) = observer.filter(|_| !abandoned.get()) {
                    told.set(true);
                    observer.began(&raw_file, chunk_size, size);
                }
            };
            let mut read_past_in_data = false;
            let streamed = stream_zip_entry(
                &label,
                &mut reader,
                options.zip_entry.as_deref(),
                &mut tell,
                ZipPass {
                    out: Some(temp.file_mut()),
                    chunk_size: chunk_size as usize,
                    hashing,
                    watch: &mut watch,
                    observer,
                    check: check.as_mut(),
                },
                &pass_error,
                &mut read_past_in_data,
            );
            // Past an end found in an earlier entry's stored data, a record
            // that does not parse was read from the middle of that data:
            // it says nothing of the archive, which is read from its end
            // (the stream drained to it first, below).
            let mut misread = None;
            let streamed = match streamed {
                Err(error @ ImageError::Corrupt { .. }) if read_past_in_data => {
                    misread = Some(error);
                    Ok(None)
                }
                other => other,
            };
            let finished = streamed.and_then(|streamed| {
                let (hasher, input_size) = reader
                    .finish_stream()
                    .map_err(|e| input_error(&label, format, e))?;
                Ok((streamed, hasher, input_size))
            });
            finished.and_then(|(streamed, hasher, input_size)| {
                let read_error = |source| ImageError::ReadInput {
                    path: spooled.clone(),
                    source,
                };
                let file = File::open(spooled).map_err(read_error)?;
                let on_disk = file.metadata().map_err(read_error)?.len();
                if on_disk != input_size {
                    return Err(read_error(std::io::Error::other(format!(
                        "it holds {on_disk} bytes, but {input_size} were streamed"
                    ))));
                }
                let file_sha256 = Sha256Digest::from_hasher(hasher);
                let past_false_end = |error: &ImageError| {
                    format!(
                        "an entry before the one imported from {} seemed to end where its \
                         stored data holds what reads as its data descriptor, and what \
                         followed, read from the middle of that data, was not the archive \
                         ({error}): it is read again from the downloaded archive",
                        source.label
                    )
                };
                let again = match streamed {
                    Some((raw, entry)) => match check_streamed_zip(
                        &label,
                        InputReader::new(&file, false),
                        options.zip_entry.as_deref(),
                        &entry,
                    ) {
                        Ok(StreamedCheck::Agrees) => {
                            zip_entry = Some(entry.name);
                            return Ok((raw, file_sha256, input_size));
                        }
                        // What was stored and told is the entry's first
                        // bytes.
                        Ok(StreamedCheck::EndedEarly { listed }) => Some(format!(
                            "{} in {} seemed to end after {} bytes, where its data holds \
                             what reads as its data descriptor, but the archive's central \
                             directory lists {listed} bytes: the bytes read as it arrived \
                             were its first ones only, and it is read again from the \
                             downloaded archive",
                            entry.name, source.label, entry.size
                        )),
                        Err(error @ ImageError::Corrupt { .. }) if read_past_in_data => {
                            Some(past_false_end(&error))
                        }
                        Err(error) => return Err(error),
                    },
                    None => misread.as_ref().map(past_false_end),
                };
                // What was streamed is dropped, and the entry read again
                // below, through the central directory, as from a file.
                if let Some(reason) = again {
                    tracing::warn!(image = %source.label, %reason, "a zip read as it arrived is read again from its file");
                    if told.get() {
                        if let Some(observer) = observer {
                            observer.abandoned(&reason);
                        }
                        abandoned.set(true);
                    }
                    temp.file_mut()
                        .set_len(0)
                        .map_err(|source| ImageError::CacheIo {
                            action: "write",
                            path: out_path.clone(),
                            source,
                        })?;
                    // The map's check starts again with the raw bytes.
                    check = options.bmap.as_ref().map(BmapInput::check);
                }
                let mut archive = InputReader::new(&file, false);
                decode_zip(
                    &label,
                    &mut archive,
                    options.zip_entry.as_deref(),
                    &mut tell,
                    ZipPass {
                        out: Some(temp.file_mut()),
                        chunk_size: chunk_size as usize,
                        hashing,
                        watch: &mut watch,
                        observer: observer.filter(|_| !abandoned.get()),
                        check: check.as_mut(),
                    },
                    &pass_error,
                )
                .map(|(raw, name)| {
                    zip_entry = Some(name);
                    (raw, file_sha256, input_size)
                })
            })
        } else if format == ImageFormat::Raw {
            let mut reader = InputReader::new(whole, false);
            let mut checked = Checked::new(&mut reader, check.as_mut());
            digest_and_store(
                &mut checked,
                Some(temp.file_mut()),
                chunk_size as usize,
                hashing,
                &mut watch,
                observer,
            )
            .map_err(pass_error)
            .map(|raw| {
                let (sha256, size) = (raw.sha256, raw.size);
                (raw, sha256, size)
            })
        } else {
            let mut reader = InputReader::new(whole, true);
            let raw = {
                let buffered = std::io::BufReader::with_capacity(INPUT_BUFFER, &mut reader);
                let mut decoder =
                    stream_decoder(format, buffered).map_err(|e| input_error(&label, format, e))?;
                let mut checked = Checked::new(&mut *decoder, check.as_mut());
                digest_and_store(
                    &mut checked,
                    Some(temp.file_mut()),
                    chunk_size as usize,
                    hashing,
                    &mut watch,
                    observer,
                )
                .map_err(pass_error)
            };
            raw.and_then(|raw| {
                let (hasher, size) = reader
                    .finish_stream()
                    .map_err(|e| input_error(&label, format, e))?;
                Ok((raw, Sha256Digest::from_hasher(hasher), size))
            })
        };
        // A range that failed stopped the pass: that is the import's error.
        let (raw, file_sha256, input_size) = match (passed, &check, &options.bmap) {
            (Err(_), Some(check), Some(bmap)) if check.failure().is_some() => {
                let failure = check.failure().cloned().expect("checked just now");
                return Err(bmap.refused(failure));
            }
            (passed, _, _) => passed.map_err(|e| self.out_of_space(e, options.min_free_space))?,
        };
        if raw.size == 0 {
            return Err(ImageError::EmptyImage {
                path: label,
                format,
            });
        }
        check_expected(&label, &options, raw.sha256, file_sha256)?;
        // The whole image went past the bmap's check: its size, and every
        // range's checksum, before anything is kept.
        let map = match (&check, &options.bmap) {
            (Some(check), Some(bmap)) => {
                check.finish().map_err(|source| bmap.refused(source))?;
                Some(bmap.stored()?)
            }
            _ => None,
        };
        let provenance = source.provenance.get().cloned();
        let meta = ImportMeta {
            original_name: flashrack_core::printable_name(&source.name),
            zip_entry,
            also_known_as: Vec::new(),
            format,
            input_size,
            input_sha256: file_sha256,
            provenance: provenance.clone(),
            imported_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            // Read from the raw bytes just stored, as a file import does.
            inspection: Some(flashrack_inspect::inspect(&*temp.file_mut())),
            reference: None,
        };
        if let Some(image) = self.get(&raw.sha256)? {
            let image = self.add_fingerprints(image, &raw);
            let image = self.with_provenance(image, provenance);
            let image = self.also_named(image, &meta.original_name);
            if let Some(map) = &map {
                self.keep_map(&raw.sha256, map)?;
            }
            return Ok(ImportOutcome {
                image,
                hit: Some(CacheHit::SameImage),
                map,
            });
        }
        let manifest = ImageManifest::fingerprinted(
            raw.sha256,
            raw.size,
            chunk_size,
            raw.chunk_fingerprints,
            raw.zero,
        )
        .expect("the pass yields one fingerprint and zero flag per chunk of a valid size");
        let image_path = self.image_path(&raw.sha256);
        temp.persist(&image_path)?;
        let entry = EntryFile {
            manifest: manifest.clone(),
            import: meta.clone(),
        };
        // The map before the entry, which makes the image part of the cache.
        let kept = match &map {
            Some(map) => self.keep_map(&raw.sha256, map),
            None => Ok(()),
        };
        if let Err(error) =
            kept.and_then(|()| write_json_atomic(&self.tmp, &self.entry_path(&raw.sha256), &entry))
        {
            let _ = std::fs::remove_file(&image_path);
            self.remove_map(&raw.sha256);
            return Err(error);
        }
        tracing::debug!(image = %raw.sha256.short(), size = manifest.size(), "imported from a stream");
        Ok(ImportOutcome {
            image: CachedImage {
                manifest,
                path: image_path,
                meta,
            },
            hit: None,
            map,
        })
    }

    /// Records `provenance` with a cached image (a derived image's origin,
    /// once it is in the cache), replacing any it had; the entry is
    /// rewritten atomically.
    pub fn set_provenance(
        &self,
        image: CachedImage,
        provenance: Provenance,
    ) -> Result<CachedImage, ImageError> {
        if image.meta.provenance.as_ref() == Some(&provenance) {
            return Ok(image);
        }
        let meta = ImportMeta {
            provenance: Some(provenance),
            ..image.meta.clone()
        };
        let entry = EntryFile {
            manifest: image.manifest.clone(),
            import: meta.clone(),
        };
        write_json_atomic(&self.tmp, &self.entry_path(&image.sha256()), &entry)?;
        Ok(CachedImage { meta, ..image })
    }

    /// Records `provenance` with a cached image found by its digest instead
    /// of being downloaded (a URL import whose expected digest names it),
    /// if it had none or this one proves more (a signed list's digest for
    /// an image imported from a file): its bytes came from elsewhere, so a
    /// provenance that proves as much (the download they came from, with
    /// its validators) is kept.
    pub fn found_with_provenance(&self, image: CachedImage, provenance: Provenance) -> CachedImage {
        let proves_more =
            image.meta.provenance.as_ref().is_none_or(|kept| {
                provenance.digest_source.strength() > kept.digest_source.strength()
            });
        if !proves_more {
            return image;
        }
        self.with_provenance(image, Some(provenance))
    }

    /// Records `provenance` with a cached image (best effort, as the
    /// fingerprint upgrade: on failure the image keeps its old entry), unless
    /// the one it has proved more: an image once checked against a signed
    /// checksum list keeps saying so when it is imported again unchecked.
    fn with_provenance(&self, image: CachedImage, provenance: Option<Provenance>) -> CachedImage {
        let Some(provenance) = provenance else {
            return image;
        };
        if image.meta.provenance.as_ref() == Some(&provenance) {
            return image;
        }
        if image
            .meta
            .provenance
            .as_ref()
            .is_some_and(|kept| kept.digest_source.strength() > provenance.digest_source.strength())
        {
            tracing::info!(
                image = %image.sha256().short(),
                "imported again with less proof: its provenance stays the one that proved more"
            );
            return image;
        }
        let meta = ImportMeta {
            provenance: Some(provenance),
            ..image.meta.clone()
        };
        let entry = EntryFile {
            manifest: image.manifest.clone(),
            import: meta.clone(),
        };
        match write_json_atomic(&self.tmp, &self.entry_path(&image.sha256()), &entry) {
            Ok(()) => CachedImage { meta, ..image },
            Err(error) => {
                tracing::warn!(%error, image = %image.sha256().short(), "cannot record the image's provenance");
                image
            }
        }
    }
}
