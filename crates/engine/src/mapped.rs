//! One chunk of the image file mapped read-only: the page cache's own pages,
//! shared with the kernel, so a chunk costs no copy into a buffer of ours.
//!
//! Mapping a file has one hazard a `pread` does not: touching a mapped page the
//! kernel can no longer supply (the file was truncated, or re-reading an
//! evicted page failed) raises `SIGBUS` instead of returning an error. So a
//! chunk is faulted in whole when it is mapped, with `MADV_POPULATE_READ`, which
//! reports an unreadable file as an error; and its pages are locked in memory
//! (best effort) while it is mapped, so they cannot be evicted and re-read.
//!
//! What remains is outside this process's control, and is a contract with
//! whoever else can write the image cache: nobody writes to or truncates a
//! cached image file while a run maps it. The mapping is `MAP_SHARED`, so a
//! write to the file shows through at once: the bytes behind a `&[u8]` this
//! module hands out would change while it is borrowed (which Rust assumes never
//! happens), and a truncation would end flashrack with `SIGBUS`. flashrack
//! itself never does either: imports write a new file and rename it into place,
//! and removal unlinks, which leaves a mapping intact. Were someone else to
//! write the file, the chunk's fingerprint, checked once when it was mapped,
//! would not see it; a read-back compared with the changed bytes could match
//! what was written from them, or not.
//!
//! The mapping itself is `memmap2`'s: it owns the unmapping, the `Send`/`Sync`
//! reasoning and the slice view, so the one unsafe step left here is the
//! contract above.

#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Deref;

use memmap2::{Advice, Mmap, MmapOptions};

/// `len` bytes of a file at a page-aligned offset, mapped read-only and faulted
/// in. Derefs to exactly those bytes; unmapped on drop.
pub struct MappedChunk(Mmap);

/// Why a chunk could not be mapped.
#[derive(Debug)]
pub enum MapError {
    /// This file cannot be mapped here (a file system without `mmap`, or a
    /// kernel without `MADV_POPULATE_READ`): read it instead.
    Unsupported(std::io::Error),
    /// The mapping was made but its pages could not be read: the file is
    /// unreadable there (or shorter than expected).
    Unreadable(std::io::Error),
}

impl MappedChunk {
    /// Maps `len` (> 0) bytes of `file` at `offset` (a multiple of the page
    /// size) and faults them in.
    pub fn map(file: &File, offset: u64, len: usize) -> Result<Self, MapError> {
        assert!(len > 0, "an empty chunk is never mapped");
        // SAFETY: `Mmap` lets safe code read the file's pages through a `&[u8]`
        // for as long as it lives, which is sound only if the file's bytes do not
        // change and the file is not truncated meanwhile. The mapping is
        // read-only but `MAP_SHARED`: nothing here stops another writer of the
        // file. What holds is the contract in the module's docs: the file is a
        // cached image, which flashrack never writes or truncates once it is in
        // the cache (imports rename a new file into place, removal unlinks), and
        // which no one else is to write while a run uses it.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }
            .map_err(MapError::Unsupported)?;
        map.advise(Advice::PopulateRead).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
                // A kernel older than 5.14 does not know the advice: without a
                // way to fault in with an error, the file is read instead.
                MapError::Unsupported(e)
            } else {
                MapError::Unreadable(e)
            }
        })?;
        // Best effort: without the privilege (or over RLIMIT_MEMLOCK) the pages
        // are still mapped and populated, only evictable under memory pressure.
        // Unmapping (on drop) unlocks them.
        let _ = map.lock();
        Ok(Self(map))
    }
}

impl Deref for MappedChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_chunk_is_the_file_bytes_at_its_offset() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
        file.write_all(&bytes).unwrap();
        let chunk = MappedChunk::map(&file, 4096, 4096).unwrap();
        assert_eq!(&chunk[..], &bytes[4096..8192]);
        // A short last chunk: exactly its bytes, not the rest of the page.
        let tail = MappedChunk::map(&file, 3 * 4096, 100).unwrap();
        assert_eq!(&tail[..], &bytes[3 * 4096..]);
    }

    #[test]
    fn a_chunk_past_the_end_of_the_file_is_an_error_not_a_crash() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 4096]).unwrap();
        // The file has one page; its second page cannot be supplied.
        match MappedChunk::map(&file, 4096, 4096) {
            Err(MapError::Unreadable(_)) => {}
            Err(MapError::Unsupported(e)) => panic!("tempfiles can be mapped: {e}"),
            Ok(_) => panic!("a page past the end of the file was mapped"),
        }
    }
}
