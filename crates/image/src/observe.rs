//! Watching an import chunk by chunk, for whoever wants to use the image
//! before the import ends (a one-shot flash that writes while it imports).

use std::fmt;
use std::fs::File;

/// Hears of an import's pass as it goes ([`crate::ImportOptions::observer`]).
///
/// Called on the import's threads, in this order: [`began`](Self::began)
/// once, when the pass over a new image starts, then [`chunk`](Self::chunk)
/// for every chunk in order. Neither is called when the import finds its
/// image without a pass (a known file); the import's result says how it
/// ended, and only an `Ok` means the chunks heard of are the image named by
/// its sha256 (a digest that does not match what the operator expected, a
/// corrupt or truncated archive or a read error come after chunks).
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

    /// Said after [`began`](Self::began) when the import reads `raw` with
    /// `O_DIRECT`: its chunks are not in the page cache, so the first read
    /// of one again reads the disk. Default: nothing.
    fn reads_past_page_cache(&self) {}
}
