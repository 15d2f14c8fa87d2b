//! Watching an import chunk by chunk, for whoever wants to use the image
//! before the import ends (a one-shot flash that writes while it imports).

use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::sync::mpsc::Sender;

use crate::pass::ChunkBuf;

/// Hears of an import's pass as it goes ([`crate::ImportOptions::observer`]).
///
/// Called on the import's threads, in this order: [`began`](Self::began)
/// once, when the pass over a new image starts, then [`chunk`](Self::chunk)
/// for every chunk in order. Neither is called when the import finds its
/// image without a pass (a known file); the import's result says how it
/// ended, and only an `Ok` means the chunks heard of are the image named by
/// its sha256 (a digest that does not match what the operator expected, a
/// corrupt or truncated archive or a read error come after chunks), unless
/// [`abandoned`](Self::abandoned) was called: then nothing heard of is
/// the image, whatever the result.
pub trait ImportObserver: Send + Sync + fmt::Debug {
    /// The pass starts: chunk `i` (of `chunk_size` bytes, the last one
    /// shorter) will be at offset `i × chunk_size` of `raw` before
    /// [`chunk`](Self::chunk) announces it (an all-zero chunk may be a hole).
    /// `raw` is the cache's temporary file the image is decompressed or
    /// copied into, or the raw file itself (referenced in place or cloned);
    /// `size` is the raw size when known before the pass (a raw file's).
    fn began(&self, raw: &File, chunk_size: u32, size: Option<u64>);

    /// The next chunk is stored: `len` bytes, all zero or not, with its
    /// XXH3-128 fingerprint (as the manifest will have it).
    fn chunk(&self, len: usize, zero: bool, fingerprint: u128);

    /// The chunks heard of since [`began`](Self::began) are not the image,
    /// and none will follow: `reason` says why. A zip's stored file read as
    /// it arrived ([`crate::StreamSource::spooled`]) whose end had to be
    /// found in its data was found, once the archive was whole, to go on
    /// past the end found there (data made to read as its data descriptor):
    /// the import reads the file again from the downloaded archive, through
    /// its central directory, as it reads a file, without this observer,
    /// and may still succeed (the image is then in the cache). Whatever was
    /// written from the chunks heard of must be failed with `reason`.
    /// Every observer must say what it does with this: there is no default.
    fn abandoned(&self, reason: &str);

    /// Whether the observer takes each data chunk's bytes as it is announced
    /// ([`chunk_data`](Self::chunk_data)) instead of reading them from `raw`.
    /// Then a raw file is read past the page cache (`O_DIRECT`, which saves
    /// filling the page cache with the image: most of an import's system
    /// time), and [`reads_past_page_cache`](Self::reads_past_page_cache) says
    /// so. Default: no.
    fn takes_bytes(&self) -> bool {
        false
    }

    /// For an observer that [takes bytes](Self::takes_bytes), in place of
    /// [`chunk`](Self::chunk) for a chunk that is not all zero: its bytes
    /// (borrowed for the call: the import reuses its buffers) and their
    /// fingerprint. The default tells [`chunk`](Self::chunk).
    fn chunk_data(&self, data: &[u8], fingerprint: u128) {
        self.chunk(data.len(), false, fingerprint);
    }

    /// For an observer that [takes bytes](Self::takes_bytes), in place of
    /// [`chunk_data`](Self::chunk_data) where the import can give the
    /// chunk's buffer away (a pass with a worker thread, the usual case):
    /// the bytes, owned, to keep as long as the observer likes. The buffer
    /// goes back to the import for another chunk when the last holder drops
    /// it, so keeping it costs the import a buffer, not a copy. The default
    /// lends the bytes to [`chunk_data`](Self::chunk_data).
    fn chunk_owned(&self, data: ChunkData, fingerprint: u128) {
        self.chunk_data(&data, fingerprint);
    }

    /// Said after [`began`](Self::began) when the import reads `raw` with
    /// `O_DIRECT`: its chunks are not in the page cache, so the first read
    /// of one again reads the disk. Default: nothing.
    fn reads_past_page_cache(&self) {}
}

/// The bytes of one data chunk, handed over by the import
/// ([`ImportObserver::chunk_owned`]). Derefs to exactly the chunk's bytes,
/// which start on a 4096-byte boundary (what `O_DIRECT` writes need of
/// their buffer), so a target can be written straight from them.
///
/// Why a buffer and not a copy: copying each chunk out of the import's
/// buffer was 7 % of a cold `.xz` flash's CPU (`memmove`, perf:
/// bench/README.md). Dropped, the buffer goes back to the import that
/// filled it (if that import still runs), so the import reuses it instead
/// of faulting in a new one.
pub struct ChunkData {
    /// Always `Some` until dropped.
    buf: Option<ChunkBuf>,
    /// How many bytes of `buf` are the chunk.
    len: usize,
    /// Back to the import's free buffers.
    back: Sender<ChunkBuf>,
}

impl ChunkData {
    /// `buf.data()[..len]`, to go back through `back` when dropped.
    pub(crate) fn new(buf: ChunkBuf, len: usize, back: Sender<ChunkBuf>) -> Self {
        assert!(len <= buf.data().len(), "a chunk fits its buffer");
        Self {
            buf: Some(buf),
            len,
            back,
        }
    }
}

impl Deref for ChunkData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let buf = self.buf.as_ref().expect("present until dropped");
        &buf.data()[..self.len]
    }
}

impl AsRef<[u8]> for ChunkData {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ChunkData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkData({} bytes)", self.len)
    }
}

impl Drop for ChunkData {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // The import may have ended: then the buffer is freed.
            let _ = self.back.send(buf);
        }
    }
}
