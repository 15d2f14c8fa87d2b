//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use flashrack_core::Sha256Digest;

use crate::detect::ImageFormat;

/// Everything that can go wrong while importing into, or reading from, the image
/// cache. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory of the cache itself could not be created, read or written.
    #[error("image cache: cannot {action} {}: {source}", path.display())]
    CacheIo {
        /// What was being done, e.g. "create", "write", "rename".
        action: &'static str,
        /// The cache file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A cache entry exists but cannot be understood.
    #[error("image cache: {} is unreadable: {reason}", path.display())]
    BadEntry {
        /// The entry's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A raw image the cache was to reference in place changed while it was
    /// read: its digests would not describe it. Nothing is kept.
    #[error("{} changed while it was imported; import it again once it is complete", path.display())]
    ChangedWhileImported {
        /// The file being imported.
        path: PathBuf,
    },
    /// The file to import could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    ReadInput {
        /// The file being imported.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The thing to import is not a regular file (a FIFO, a device, a socket, a
    /// directory): refused before it is opened for reading, so a pipe cannot
    /// hang the import and `/dev/zero` cannot fill the cache.
    #[error("{}", not_regular_message(.path, *.kind))]
    NotARegularFile {
        /// What was given.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// The file lies outside the directories imports are allowed from (after
    /// symbolic links and `..` are resolved).
    #[error("{} is not inside a directory images may be imported from", path.display())]
    OutsideImportDirs {
        /// What was given.
        path: PathBuf,
    },
    /// The raw image is larger than the largest target any run may write (the
    /// target guard's maximum size): it could never be written, so it is not
    /// kept. The import stops as soon as the image passes the limit.
    #[error(
        "{}: the image is larger than {}, the largest target the station may write (guard max_size)",
        path.display(),
        flashrack_core::ByteSize(*.limit).exact()
    )]
    TooLarge {
        /// The file being imported.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The cache's file system has too little free space left to go on: the
    /// import stops before the space the station needs (for its records) is used
    /// up, and removes what it wrote. The message says how far the import got,
    /// or what it needed, so the operator knows how much room to make.
    #[error(
        "image cache: not enough free space in {}: {} available, {} must stay free{}",
        path.display(),
        flashrack_core::ByteSize(*.available),
        flashrack_core::ByteSize(*.reserve),
        shortfall(*.needed, *.stored)
    )]
    CacheFull {
        /// The cache directory.
        path: PathBuf,
        /// Bytes available to flashrack when the import stopped.
        available: u64,
        /// Bytes the import leaves free.
        reserve: u64,
        /// Bytes the image still needed, when known before they were written.
        needed: Option<u64>,
        /// Bytes of the image stored before the import stopped (removed since).
        stored: u64,
    },
    /// The import was cancelled (the station is shutting down); nothing was kept.
    #[error("{}: import cancelled", path.display())]
    Cancelled {
        /// The file being imported.
        path: PathBuf,
    },
    /// The file to import has no bytes at all.
    #[error("{} is empty", path.display())]
    EmptyInput {
        /// The file being imported.
        path: PathBuf,
    },
    /// The file to import decompresses to nothing.
    #[error("{}: the {format} data holds an empty image", path.display())]
    EmptyImage {
        /// The file being imported.
        path: PathBuf,
        /// Its detected format.
        format: ImageFormat,
    },
    /// The compressed data is damaged or cut short.
    #[error("{}: corrupt {format} data: {reason}", path.display())]
    Corrupt {
        /// The file being imported.
        path: PathBuf,
        /// Its detected format.
        format: ImageFormat,
        /// What the decoder found wrong ("truncated: …" when the data ends early).
        reason: String,
    },
    /// The data is valid but uses a feature this build cannot read (e.g. an
    /// encrypted zip entry or an unsupported zip compression method).
    #[error("{}: unsupported {format} data: {reason}", path.display())]
    Unsupported {
        /// The file being imported.
        path: PathBuf,
        /// Its detected format.
        format: ImageFormat,
        /// What is not supported.
        reason: String,
    },
    /// A zip archive must hold exactly one file (directories are ignored),
    /// unless the file to import is named ([`crate::ImportOptions::zip_entry`]).
    #[error(
        "{}: a zip archive must hold exactly one file, or the file to import must be named; this one holds {}{}",
        path.display(),
        .files.len(),
        list_names(.files)
    )]
    ZipFileCount {
        /// The archive.
        path: PathBuf,
        /// The names of the files it holds (none, or more than one).
        files: Vec<String>,
    },
    /// The file named to import from a zip archive is not in it.
    #[error(
        "{}: the zip archive holds no file named {entry:?}; it holds {}{}",
        path.display(),
        .files.len(),
        list_names(.files)
    )]
    ZipEntryMissing {
        /// The archive.
        path: PathBuf,
        /// The name asked for.
        entry: String,
        /// The names of the files it holds.
        files: Vec<String>,
    },
    /// The digest the user expected matches neither the file as given nor its raw
    /// image. Nothing was added to the cache.
    #[error(
        "{}: checksum mismatch: expected sha256 {expected}, but the file is {file} and its raw image is {raw}",
        path.display()
    )]
    ChecksumMismatch {
        /// The file being imported.
        path: PathBuf,
        /// The digest the user gave.
        expected: Sha256Digest,
        /// The sha256 of the raw (decompressed) image.
        raw: Sha256Digest,
        /// The sha256 of the file as given.
        file: Sha256Digest,
    },
    /// The requested chunk size cannot be used.
    #[error(
        "chunk size {chunk_size} is not a positive multiple of 4096 of at most {} bytes",
        crate::import::MAX_CHUNK_SIZE
    )]
    InvalidChunkSize {
        /// The rejected chunk size.
        chunk_size: u32,
    },
    /// No cached image matches a digest, prefix or name.
    #[error("no cached image matches {query:?}{}", did_you_mean(.suggestions))]
    NotFound {
        /// What was looked for.
        query: String,
        /// Names of cached images that look like it (possibly none).
        suggestions: Vec<String>,
    },
    /// A prefix or name matches several cached images.
    #[error(
        "{query:?} matches {} cached images: {}",
        .candidates.len(),
        list_candidates(.candidates, .names)
    )]
    Ambiguous {
        /// What was looked for.
        query: String,
        /// The images it matches, in digest order.
        candidates: Vec<Sha256Digest>,
        /// Their names, in the same order.
        names: Vec<String>,
    },
    /// A hex prefix too short to name an image safely.
    #[error(
        "{query:?} is too short: give at least {} hex digits",
        crate::cache::MIN_PREFIX
    )]
    PrefixTooShort {
        /// What was looked for.
        query: String,
    },
    /// A bmap file does not describe the image (or is not a bmap file): a
    /// map that lies would make a sparse run skip data, so it is refused.
    #[error("the block map {file} is refused: {source}")]
    BmapRefused {
        /// The bmap file's name.
        file: String,
        /// Why.
        source: flashrack_inspect::bmap::BmapError,
    },
    /// No block map can be generated for the image (no file system flashrack
    /// reads, an ISO, a damaged file system): it can only be written whole.
    #[error("no block map: {reason}")]
    NoBlockMap {
        /// Why.
        reason: flashrack_inspect::alloc::AllocError,
    },
}

/// What a path that is not a regular file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device (`/dev/zero`, `/dev/urandom`, a terminal).
    CharDevice,
    /// A block device (a disk): imaging a device is not what `import` does.
    BlockDevice,
    /// Anything else.
    Other,
}

impl FileKind {
    /// What `meta` describes, if it is not a regular file.
    pub fn of(meta: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_file() {
            None
        } else if kind.is_dir() {
            Some(Self::Directory)
        } else if kind.is_fifo() {
            Some(Self::Fifo)
        } else if kind.is_socket() {
            Some(Self::Socket)
        } else if kind.is_char_device() {
            Some(Self::CharDevice)
        } else if kind.is_block_device() {
            Some(Self::BlockDevice)
        } else {
            Some(Self::Other)
        }
    }

    /// The kind in words.
    pub fn name(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Fifo => "named pipe (FIFO)",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Other => "special file",
        }
    }
}

fn not_regular_message(path: &std::path::Path, kind: FileKind) -> String {
    match kind {
        FileKind::BlockDevice => format!(
            "{} is a block device: import takes image files only (to image a disk, copy it to a file first)",
            path.display()
        ),
        _ => format!(
            "{} is a {}, not a regular file: only image files can be imported",
            path.display(),
            kind.name()
        ),
    }
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        " (none)".to_string()
    } else {
        let names: Vec<String> = names.iter().map(|name| escaped(name)).collect();
        format!(" ({})", names.join(", "))
    }
}

/// A name from inside an archive as it may be printed: as it is, or, when
/// it holds a control character (ESC, a newline), quoted with its escapes
/// (`"a\u{1b}[31m.img"`), so that the operator can still name it exactly
/// and the terminal is not driven by it.
fn escaped(name: &str) -> String {
    if flashrack_core::has_unprintable(name) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

fn list_candidates(digests: &[Sha256Digest], names: &[String]) -> String {
    digests
        .iter()
        .zip(names)
        .map(|(digest, name)| format!("{} ({name})", digest.short()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "; did you mean …?" with the names, or nothing.
fn did_you_mean(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; did you mean one of: {}?", many.join(", ")),
    }
}

/// The end of a [`ImageError::CacheFull`] message: what the image needed, or
/// how much of it had been stored when the space ran out.
fn shortfall(needed: Option<u64>, stored: u64) -> String {
    match (needed, stored) {
        (Some(needed), _) if needed > 0 => {
            format!("; the image needs {}", flashrack_core::ByteSize(needed))
        }
        (_, 0) => String::new(),
        (_, stored) => format!(
            "; stopped after {} of the image (removed again)",
            flashrack_core::ByteSize(stored)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_are_lowercase_without_trailing_period() {
        let errors = [
            ImageError::EmptyInput {
                path: "/x/a.img".into(),
            },
            ImageError::Corrupt {
                path: "/x/a.img.gz".into(),
                format: ImageFormat::Gzip,
                reason: "invalid gzip header".into(),
            },
            ImageError::ZipFileCount {
                path: "/x/a.zip".into(),
                files: vec!["a.img".into(), "b.img".into()],
            },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(text.contains("/x/a"), "{text}");
            assert!(!text.ends_with('.'), "{text}");
            assert!(!text.starts_with(char::is_uppercase), "{text}");
        }
        let zip = ImageError::ZipFileCount {
            path: "/x/a.zip".into(),
            files: vec!["a.img".into(), "b.img".into()],
        };
        assert!(zip.to_string().contains("holds 2 (a.img, b.img)"), "{zip}");
        // An archive's names are the archive maker's: ESC or a newline in
        // one is shown escaped, never sent to the terminal.
        let zip = ImageError::ZipFileCount {
            path: "/x/a.zip".into(),
            files: vec!["a\u{1b}[31mred\n.img".into(), "b.img".into()],
        };
        let text = zip.to_string();
        assert!(!text.contains(['\u{1b}', '\n']), "{text:?}");
        assert!(
            text.contains(r#"holds 2 ("a\u{1b}[31mred\n.img", b.img)"#),
            "{text}"
        );
    }
}
