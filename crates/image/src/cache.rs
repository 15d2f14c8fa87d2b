//! The cache directory and what is in it: looking images up, listing and
//! removing them. Importing is in [`crate::import`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use flashrack_core::{ImageManifest, Provenance, Sha256Digest};
use serde::{Deserialize, Serialize};

use flashrack_inspect::{ImageInfo, RawWriteRefusal};

use crate::detect::ImageFormat;
use crate::error::ImageError;
use crate::fsutil::{self, remove_stale_temp_files};
use crate::index::{FileIdentity, Index};

/// The fewest hex digits [`ImageCache::find`] accepts as a prefix.
pub const MIN_PREFIX: usize = 6;

/// The most other names an image keeps ([`ImportMeta::also_known_as`]): a
/// file downloaded again and again under new names does not grow its entry
/// without end.
pub const MAX_OTHER_NAMES: usize = 16;

/// How an image came into the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportMeta {
    /// The file name (last path component) of the imported file.
    pub original_name: String,
    /// The name of the file inside the zip archive, for a zip import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_entry: Option<String>,
    /// Other names it was imported or captured under since, its bytes found
    /// cached already (`golden-v2` for a master captured again): it is
    /// found by them as by [`original_name`](Self::original_name). At most
    /// [`MAX_OTHER_NAMES`], the oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_known_as: Vec<String>,
    /// The detected format of the imported file.
    pub format: ImageFormat,
    /// Size in bytes of the imported file as given (compressed size).
    pub input_size: u64,
    /// The sha256 of the imported file as given (equal to the raw digest for a
    /// raw import).
    pub input_sha256: Sha256Digest,
    /// Where a downloaded image came from (`None` for a local file or an
    /// upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// When the import finished, in seconds since the Unix epoch.
    pub imported_at: u64,
    /// What the image is (partition table, file systems, ISO structure, OS),
    /// inspected at import. Entries written before inspection existed have
    /// none on disk; [`ImageCache::get`] inspects their image file then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<ImageInfo>,
    /// The file the cache references instead of holding a copy (a raw image
    /// imported in place, [`crate::ImportOptions::reference_raw`]); `None`
    /// when the cache holds the image file itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<SourceReference>,
}

/// A raw image file the cache references in place: where it is and who it was
/// when it was hashed (device, inode, size, modification and change times). The
/// image is present only while the file still has that identity; a file
/// rewritten, cut short, replaced or touched since is not the image any more
/// ([`ImageCache::get`] answers `None`, and importing it again hashes it
/// again). Every write sets the change time to the present, and user space
/// cannot set it back, so a changed file cannot keep the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceReference(pub(crate) FileIdentity);

impl SourceReference {
    /// The referenced file (its canonical path).
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Whether the file at the path is still the one that was hashed.
    pub fn is_intact(&self) -> bool {
        fs::metadata(&self.0.path).is_ok_and(|meta| self.0.matches(&meta))
    }
}

/// An image present in the cache: its manifest, where its raw bytes are, and how
/// it was imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// Size, digest, chunk digests and zero chunks of the raw image.
    pub manifest: ImageManifest,
    /// The raw image file (`images/<sha256>.img`), sparse where chunks are zero,
    /// or the file the cache references ([`ImportMeta::reference`]). Open it
    /// read-only: the cache shares it with every reader.
    pub path: PathBuf,
    /// Where the image came from.
    pub meta: ImportMeta,
}

impl CachedImage {
    /// The sha256 of the raw image, its name in the cache.
    pub fn sha256(&self) -> Sha256Digest {
        self.manifest.sha256()
    }

    /// Raw image size in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.size()
    }

    /// Why writing this image raw would give a stick that does not boot
    /// (a non-hybrid installer ISO, such as a Windows installer), if it
    /// would; see [`ImageInfo::raw_write_refusal`].
    pub fn raw_write_refusal(&self) -> Option<RawWriteRefusal> {
        self.meta
            .inspection
            .as_ref()
            .and_then(ImageInfo::raw_write_refusal)
    }
}

/// The content of `images/<sha256>.json`.
#[derive(Serialize, Deserialize)]
pub(crate) struct EntryFile {
    pub(crate) manifest: ImageManifest,
    pub(crate) import: ImportMeta,
}

/// A content-addressed cache of raw disk images in one directory.
///
/// Cheap to clone; all methods take `&self` and keep no state in memory, so
/// several handles (or processes) can use one directory. Every change is made by
/// renaming complete files into place.
#[derive(Debug, Clone)]
pub struct ImageCache {
    pub(crate) root: PathBuf,
    /// `images/`: `<sha256>.img` and `<sha256>.json` pairs.
    pub(crate) images: PathBuf,
    /// `tmp/`: files under construction, renamed from here into place (same
    /// file system, so renames are atomic).
    pub(crate) tmp: PathBuf,
    /// `sources/` and `aliases/`.
    pub(crate) index: Index,
}

impl ImageCache {
    /// Opens the cache in `dir`, creating the directory and its layout if
    /// needed, and removes temporary files left by imports that crashed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ImageError> {
        let root = dir.as_ref().to_path_buf();
        let images = root.join("images");
        let sources = root.join("sources");
        let aliases = root.join("aliases");
        let tmp = root.join("tmp");
        for path in [&images, &sources, &aliases, &tmp] {
            fs::create_dir_all(path).map_err(|source| ImageError::CacheIo {
                action: "create",
                path: path.clone(),
                source,
            })?;
        }
        remove_stale_temp_files(&tmp);
        Ok(Self {
            root,
            images,
            index: Index::new(sources, aliases, tmp.clone()),
            tmp,
        })
    }

    /// The cache in `dir` as it is, for reading only: nothing is created or
    /// cleaned up (an import under way in another process keeps its
    /// temporary files). `None` when `dir` holds no cache.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Option<Self>, ImageError> {
        let root = dir.as_ref().to_path_buf();
        let images = root.join("images");
        match fs::metadata(&images) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ImageError::CacheIo {
                    action: "inspect",
                    path: images,
                    source,
                })
            }
        }
        let tmp = root.join("tmp");
        Ok(Some(Self {
            index: Index::new(root.join("sources"), root.join("aliases"), tmp.clone()),
            root,
            images,
            tmp,
        }))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub(crate) fn image_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.images.join(format!("{}.img", digest.to_hex()))
    }

    pub(crate) fn entry_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.images.join(format!("{}.json", digest.to_hex()))
    }

    /// The image with this raw digest, if it is present: its entry exists and its
    /// image file has the size the manifest says.
    pub fn get(&self, digest: &Sha256Digest) -> Result<Option<CachedImage>, ImageError> {
        let entry_path = self.entry_path(digest);
        let bytes = match fs::read(&entry_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ImageError::CacheIo {
                    action: "read",
                    path: entry_path,
                    source,
                })
            }
        };
        let entry: EntryFile =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::BadEntry {
                path: entry_path.clone(),
                reason: e.to_string(),
            })?;
        if entry.manifest.sha256() != *digest {
            return Err(ImageError::BadEntry {
                path: entry_path,
                reason: format!("it describes image {}", entry.manifest.sha256()),
            });
        }
        if let Some(reference) = &entry.import.reference {
            if !reference.is_intact() {
                tracing::warn!(
                    image = %digest.short(),
                    path = %reference.path().display(),
                    "the referenced image file changed since it was imported: not present"
                );
                return Ok(None);
            }
            return Ok(Some(CachedImage {
                manifest: entry.manifest,
                path: reference.path().to_path_buf(),
                meta: entry.import,
            }));
        }
        let path = self.image_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == entry.manifest.size() => {}
            Ok(meta) => {
                tracing::debug!(
                    image = %digest.short(),
                    size = meta.len(),
                    expected = entry.manifest.size(),
                    "image file has the wrong size: not present"
                );
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ImageError::CacheIo {
                    action: "inspect",
                    path,
                    source,
                })
            }
        }
        let mut meta = entry.import;
        if meta
            .inspection
            .as_ref()
            .is_none_or(|i| i.version < flashrack_inspect::INSPECTION_VERSION)
        {
            // An entry from before inspection, or inspected by older rules:
            // its image is read now (a few KiB at known offsets, and the
            // directories followed), not rewritten.
            meta.inspection = fs::File::open(&path)
                .ok()
                .map(|file| flashrack_inspect::inspect(&file));
        }
        Ok(Some(CachedImage {
            manifest: entry.manifest,
            path,
            meta,
        }))
    }

    /// The digests named by entries in `images/` (present or not).
    fn entry_digests(&self) -> Result<Vec<Sha256Digest>, ImageError> {
        let entries = fs::read_dir(&self.images).map_err(|source| ImageError::CacheIo {
            action: "list",
            path: self.images.clone(),
            source,
        })?;
        let mut digests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::CacheIo {
                action: "list",
                path: self.images.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(digest) = Sha256Digest::parse(hex) {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Every image present, oldest import first. An unreadable entry is skipped
    /// (and logged) so one damaged file does not hide the others.
    pub fn list(&self) -> Result<Vec<CachedImage>, ImageError> {
        let mut images = Vec::new();
        for digest in self.entry_digests()? {
            match self.get(&digest) {
                Ok(Some(image)) => images.push(image),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping unreadable cache entry"),
            }
        }
        images.sort_by_key(|i| (i.meta.imported_at, i.sha256()));
        Ok(images)
    }

    /// The cached image whose raw sha256 is `digest`, or that was imported
    /// from a file (a compressed one) whose sha256 is `digest`: what a
    /// digest an operator gives may name.
    pub fn by_digest(&self, digest: &Sha256Digest) -> Result<Option<CachedImage>, ImageError> {
        if let Some(image) = self.get(digest)? {
            return Ok(Some(image));
        }
        for raw in self.index.aliases_of_file(digest) {
            if let Some(image) = self.get(&raw)? {
                return Ok(Some(image));
            }
        }
        // A file imported from a stream (a download) has no alias: its
        // digest is in the entry.
        Ok(self
            .list()?
            .into_iter()
            .find(|image| image.meta.input_sha256 == *digest))
    }

    /// Finds one image by what a person would type: a hex prefix of its raw
    /// digest (at least [`MIN_PREFIX`] digits), the full sha256 of the file it
    /// was imported from, that file's name (or the name inside its zip, or a
    /// name it was found under again: [`ImportMeta::also_known_as`]), or a
    /// unique beginning of one of those (case aside). More than one match is
    /// [`ImageError::Ambiguous`]; none is [`ImageError::NotFound`] with the
    /// names that look like the query.
    pub fn find(&self, query: &str) -> Result<CachedImage, ImageError> {
        let text = query.trim();
        let is_hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex && text.len() >= MIN_PREFIX {
            let prefix = text.to_ascii_lowercase();
            let mut matches = Vec::new();
            for digest in self.entry_digests()? {
                if digest.to_hex().starts_with(&prefix) {
                    if let Some(image) = self.get(&digest)? {
                        matches.push(image);
                    }
                }
            }
            if matches.is_empty() {
                if let Ok(file_digest) = Sha256Digest::parse(text) {
                    for raw in self.index.aliases_of_file(&file_digest) {
                        if let Some(image) = self.get(&raw)? {
                            if !matches.iter().any(|m| m.sha256() == raw) {
                                matches.push(image);
                            }
                        }
                    }
                }
            }
            if !matches.is_empty() {
                return one(query, matches);
            }
        }
        let images = self.list()?;
        let names = |i: &CachedImage| {
            std::iter::once(i.meta.original_name.clone())
                .chain(i.meta.zip_entry.clone())
                .chain(i.meta.also_known_as.clone())
        };
        let by_name: Vec<_> = images
            .iter()
            .filter(|i| names(i).any(|n| n == text))
            .cloned()
            .collect();
        if !by_name.is_empty() {
            return one(query, by_name);
        }
        // A unique beginning of a name, as a unique beginning of a digest:
        // `ubuntu` for `ubuntu-24.04.iso.xz` (case aside).
        let wanted = text.to_lowercase();
        let by_prefix: Vec<_> = images
            .iter()
            .filter(|i| {
                !wanted.is_empty() && names(i).any(|n| n.to_lowercase().starts_with(&wanted))
            })
            .cloned()
            .collect();
        if !by_prefix.is_empty() {
            return one(query, by_prefix);
        }
        if is_hex && text.len() < MIN_PREFIX {
            return Err(ImageError::PrefixTooShort {
                query: query.to_string(),
            });
        }
        Err(ImageError::NotFound {
            query: query.to_string(),
            suggestions: suggestions(&wanted, &images),
        })
    }

    /// Records `name` as another name of a cached image that an import or a
    /// capture under that name found cached already, so that it is found by
    /// it ([`find`](Self::find)). Best effort, as the provenance of a found
    /// image: on failure the image keeps its entry. Nothing changes for its
    /// own name, a name it has, an empty name, or once it has
    /// [`MAX_OTHER_NAMES`].
    pub(crate) fn also_named(&self, image: CachedImage, name: &str) -> CachedImage {
        let meta = &image.meta;
        if name.is_empty()
            || name == meta.original_name
            || meta.zip_entry.as_deref() == Some(name)
            || meta.also_known_as.iter().any(|known| known == name)
            || meta.also_known_as.len() >= MAX_OTHER_NAMES
        {
            return image;
        }
        let mut meta = meta.clone();
        meta.also_known_as.push(name.to_string());
        let entry = EntryFile {
            manifest: image.manifest.clone(),
            import: meta.clone(),
        };
        match fsutil::write_json_atomic(&self.tmp, &self.entry_path(&image.sha256()), &entry) {
            Ok(()) => CachedImage { meta, ..image },
            Err(error) => {
                tracing::warn!(%error, image = %image.sha256().short(), name, "cannot record the image's other name");
                image
            }
        }
    }

    /// Removes an image: its entry first (so it stops counting as present), then
    /// its raw file, then every hint that leads to it. Readers that already have
    /// the image file open keep reading it. A file the cache only references is
    /// never removed: it is not the cache's.
    pub fn remove(&self, digest: &Sha256Digest) -> Result<(), ImageError> {
        let entry = self.entry_path(digest);
        let image = self.image_path(digest);
        if !entry.exists() && !image.exists() {
            return Err(ImageError::NotFound {
                query: digest.to_hex(),
                suggestions: Vec::new(),
            });
        }
        self.remove_map(digest);
        for path in [&entry, &image] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ImageError::CacheIo {
                        action: "remove",
                        path: path.clone(),
                        source,
                    })
                }
            }
            if path == &entry {
                fsutil::sync_parent(&entry)?;
            }
        }
        self.index.forget(digest);
        Ok(())
    }
}

/// The single match, or [`ImageError::Ambiguous`] (the candidates in digest
/// order, each with its name).
fn one(query: &str, mut matches: Vec<CachedImage>) -> Result<CachedImage, ImageError> {
    if matches.len() == 1 {
        return Ok(matches.remove(0));
    }
    matches.sort_by_key(CachedImage::sha256);
    Err(ImageError::Ambiguous {
        query: query.to_string(),
        candidates: matches.iter().map(CachedImage::sha256).collect(),
        names: matches
            .iter()
            .map(|i| i.meta.original_name.clone())
            .collect(),
    })
}

/// How many names an unknown query lists when none looks like it.
const MAX_SUGGESTIONS: usize = 8;

/// The names to offer for an unknown query (`wanted`, lowercased): those
/// containing it or any four characters of it in a row (`xubuntu` finds
/// `ubuntu-24.04.iso`); when none does and the cache is small, every name.
fn suggestions(wanted: &str, images: &[CachedImage]) -> Vec<String> {
    let all: Vec<String> = images
        .iter()
        .map(|i| i.meta.original_name.clone())
        .collect();
    let chars: Vec<char> = wanted.chars().collect();
    let pieces: Vec<String> = chars.windows(4).map(|w| w.iter().collect()).collect();
    let mut close: Vec<String> = all
        .iter()
        .filter(|name| {
            let name = name.to_lowercase();
            !wanted.is_empty()
                && (name.contains(wanted) || pieces.iter().any(|p| name.contains(p.as_str())))
        })
        .cloned()
        .collect();
    if close.is_empty() && all.len() <= MAX_SUGGESTIONS {
        close = all;
    }
    close.sort();
    close.dedup();
    close.truncate(MAX_SUGGESTIONS);
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_images_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<ImageCache>();
        shareable::<CachedImage>();
        shareable::<crate::ImportOutcome>();
    }
}
