//! One chunk of the image file mapped read-only: the page cache's own pages,
//! shared with the kernel, so a chunk costs no copy into a buffer of ours.
//!
//! Mapping a file has one hazard a `pread` does not: touching a mapped page the
//! kernel can no longer supply (the file was truncated, or re-reading an
//! evicted page failed) raises `SIGBUS` instead of returning an error. So a
//! chunk is faulted in whole when it is mapped, with `MADV_POPULATE_READ`, which
//! reports an unreadable file as an error; and its pages are locked in memory
//! (best effort) while it is mapped, so they cannot be evicted and re-read. What
//! remains is another process truncating the image cache file during a run:
//! flashrack never does (imports write a new file and rename it; removal
//! unlinks, which leaves a mapping intact).

#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Deref;
use std::ptr::NonNull;

use rustix::mm::{self, Advice, MapFlags, ProtFlags};

/// `len` bytes of a file at a page-aligned offset, mapped read-only and faulted
/// in. Derefs to exactly those bytes; unmapped on drop.
pub struct MappedChunk {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and private to this value; sharing or moving
// a `&[u8]` view of it between threads is sound.
unsafe impl Send for MappedChunk {}
// SAFETY: as above; nothing mutates the mapping.
unsafe impl Sync for MappedChunk {}

/// Why a chunk could not be mapped.
#[derive(Debug)]
pub enum MapError {
    /// This file cannot be mapped here (a file system without `mmap`, or a
    /// kernel without `MADV_POPULATE_READ`): read it instead.
    Unsupported(rustix::io::Errno),
    /// The mapping was made but its pages could not be read: the file is
    /// unreadable there (or shorter than expected).
    Unreadable(rustix::io::Errno),
}

impl MappedChunk {
    /// Maps `len` (> 0) bytes of `file` at `offset` (a multiple of the page
    /// size) and faults them in.
    pub fn map(file: &File, offset: u64, len: usize) -> Result<Self, MapError> {
        assert!(len > 0, "an empty chunk is never mapped");
        // SAFETY: a fresh mapping chosen by the kernel (null hint), read-only and
        // shared with the page cache; it aliases no Rust memory.
        let raw = unsafe {
            mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                offset,
            )
        }
        .map_err(MapError::Unsupported)?;
        let chunk = Self {
            ptr: NonNull::new(raw.cast()).expect("mmap never returns null on success"),
            len,
        };
        // SAFETY: the range is exactly the mapping made above.
        unsafe { mm::madvise(raw, len, Advice::LinuxPopulateRead) }.map_err(|e| {
            if e == rustix::io::Errno::INVAL {
                // A kernel older than 5.14 does not know the advice: without a
                // way to fault in with an error, the file is read instead.
                MapError::Unsupported(e)
            } else {
                MapError::Unreadable(e)
            }
        })?;
        // Best effort: without the privilege (or over RLIMIT_MEMLOCK) the pages
        // are still mapped and populated, only evictable under memory pressure.
        // SAFETY: the range is exactly the mapping made above.
        let _ = unsafe { mm::mlock(raw, len) };
        Ok(chunk)
    }
}

impl Deref for MappedChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `ptr` until drop, and were
        // faulted in successfully.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedChunk {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no view of it outlives
        // `self` (views borrow it).
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
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
