//! The one pass over a decompressed image: it stores the image (sparse), unless
//! the cache references or clones the file instead, and computes its sha256, the
//! XXH3-128 fingerprint of every chunk and which chunks are all zero.
//!
//! The fingerprints are what the engine checks cached chunks against before it
//! compares read-backs with them (see `flashrack_core::manifest`): computed here
//! over exactly the bytes the image digest covers (XXH3 costs a few percent of
//! a sha256). The image is hashed with sha256 once: the per-chunk sha256s that
//! manifests of formats 1 and 2 carry were a second full pass (0.7 CPU s per
//! GiB here), and are no longer computed.
//!
//! The sha256 is the bulk of the CPU work for an uncompressed or
//! fast-to-decompress image, so hashing runs on a second thread, fed through a
//! bounded channel of chunk buffers, while this thread decodes (see
//! [`ChunkHashing::for_input`]); storing the chunks in the cache file runs on
//! a third, behind the hashing, so that the store's disk writes (`O_DIRECT`:
//! the thread waits for the disk) overlap the decoding and the hashing
//! instead of holding both up. At most [`MAX_BUFFERS`] chunk buffers are in
//! the pass at once, whatever the image size; an observer that keeps chunks'
//! buffers ([`ImportObserver::chunk_owned`]) holds others, which come back
//! when it drops them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;

use flashrack_core::Sha256Digest;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_128;

use crate::error::ImageError;
use crate::input::read_full;
use crate::observe::{ChunkData, ImportObserver};

/// Chunk buffers in the pass at once: one being filled, one queued for the
/// hashing, one being hashed, one queued for the store, one being stored, so
/// that no thread waits on another's jitter.
const MAX_BUFFERS: usize = 5;

/// The alignment of a chunk buffer's data: what reads with `O_DIRECT` need
/// of their buffer (a file system's block; 4096 covers them all here).
pub(crate) const ALIGN: usize = 4096;

/// A chunk buffer whose data starts on an [`ALIGN`]-byte boundary, so that a
/// file opened with `O_DIRECT` can be read into it: a `Vec` over-allocated by
/// `ALIGN`, its data from the first aligned byte. Moving it (through a
/// channel) moves no bytes, so the data stays aligned.
pub(crate) struct ChunkBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl ChunkBuf {
    /// A zeroed buffer for chunks of `chunk_size` bytes.
    pub(crate) fn new(chunk_size: usize) -> Self {
        let vec = vec![0u8; chunk_size + ALIGN];
        // Always possible for bytes; bounded all the same.
        let start = vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self {
            vec,
            start,
            len: chunk_size,
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// What the pass learns about the raw image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDigests {
    /// Digest of the whole raw image.
    pub(crate) sha256: Sha256Digest,
    /// Raw image size in bytes.
    pub(crate) size: u64,
    /// XXH3-128 of every chunk, zero chunks included.
    pub(crate) chunk_fingerprints: Vec<u128>,
    /// Whether each chunk is all zero.
    pub(crate) zero: Vec<bool>,
}

/// Which side of the pass failed.
#[derive(Debug)]
pub(crate) enum PassError {
    /// Reading or decoding the input.
    Input(io::Error),
    /// Writing the cache file.
    Output(io::Error),
    /// The watch stopped the pass (a limit, no space left, cancelled).
    Stopped(ImageError),
}

/// Called with the raw size read so far, after each chunk is read and before
/// it is stored; an error stops the pass.
pub(crate) type Watch<'a> = &'a mut dyn FnMut(u64) -> Result<(), ImageError>;

/// Where the digests are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkHashing {
    /// On this thread, chunk after chunk.
    Inline,
    /// The sha256 and the fingerprints on a second thread, while this one
    /// reads (decodes) and writes.
    Worker,
}

impl ChunkHashing {
    /// A worker pays off only when there is a second core to run it: reading
    /// and decoding on one thread, the sha256 (the bulk of the rest) on the
    /// other.
    pub(crate) fn for_input() -> Self {
        match thread::available_parallelism() {
            Ok(n) if n.get() > 1 => Self::Worker,
            _ => Self::Inline,
        }
    }
}

/// Reads `src` to its end in chunks of `chunk_size`, writing the data to `out`
/// if there is one (from its start, leaving all-zero chunks as holes) and
/// digesting it. `observer` hears of each chunk, in order, once it is stored
/// and fingerprinted.
pub(crate) fn digest_and_store(
    src: &mut dyn Read,
    out: Option<&mut File>,
    chunk_size: usize,
    hashing: ChunkHashing,
    watch: Watch<'_>,
    observer: Option<&dyn ImportObserver>,
) -> Result<RawDigests, PassError> {
    match hashing {
        ChunkHashing::Inline => {
            let mut sink = InlineSink {
                buf: None,
                chunk_size,
                digests: ChunkDigests::default(),
                zeros: ZeroDigests::default(),
                observer,
            };
            let whole = run(src, out, chunk_size, &mut sink, watch)?;
            Ok(whole.with_digests(sink.digests))
        }
        ChunkHashing::Worker => {
            // Bounded so the reader cannot run ahead of the hasher by more than
            // one buffer; buffers come back through `back` to be refilled.
            let (jobs, job_rx) = mpsc::sync_channel::<Job>(1);
            let (back, back_rx) = mpsc::channel::<ChunkBuf>();
            let hands_over = observer.is_some_and(|o| o.takes_bytes());
            thread::scope(|scope| {
                // This thread decodes (the bulk of a compressed import's
                // work); the worker digests, and stores the chunks in the
                // cache through a thread of its own.
                let worker = thread::Builder::new()
                    .name("import hash".into())
                    .spawn_scoped(scope, move || hash_chunks(job_rx, back, out, observer))
                    .map_err(PassError::Output)?;
                let mut sink = WorkerSink {
                    jobs,
                    back: back_rx,
                    free: Vec::new(),
                    allocated: 0,
                    chunk_size,
                    hands_over,
                };
                let whole = run(src, None, chunk_size, &mut sink, watch);
                // Closing the job channel lets the worker finish.
                drop(sink);
                let stored = match worker.join() {
                    Ok(stored) => stored,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                // A failed store stops the loop (its sends fail), which may
                // then report that as an input it could not hand over: the
                // store's error is the cause.
                let digests = stored.map_err(PassError::Output)?;
                Ok(whole?.with_digests(digests))
            })
        }
    }
}

/// What the reading loop itself computes.
struct Whole {
    size: u64,
    zero: Vec<bool>,
}

impl Whole {
    fn with_digests(self, digests: ChunkDigests) -> RawDigests {
        RawDigests {
            sha256: Sha256Digest::from_hasher(digests.whole),
            size: self.size,
            chunk_fingerprints: digests.xxh3,
            zero: self.zero,
        }
    }
}

/// Where the reading loop gets empty chunk buffers and hands full ones.
trait ChunkSink {
    /// A buffer of the chunk size to fill.
    fn buffer(&mut self) -> ChunkBuf;
    /// The next chunk: `buf.data()[..len]`, all zero or not. `false`: the
    /// chunks can no longer be taken (the worker stopped on an error), and
    /// the loop stops.
    fn chunk(&mut self, buf: ChunkBuf, len: usize, zero: bool) -> bool;
}

/// The loop shared by every way of hashing chunks.
fn run(
    src: &mut dyn Read,
    mut out: Option<&mut File>,
    chunk_size: usize,
    sink: &mut dyn ChunkSink,
    watch: Watch<'_>,
) -> Result<Whole, PassError> {
    let mut zero = Vec::new();
    let mut size = 0u64;
    // Where the file's cursor is; behind `size` after a zero chunk was skipped.
    let mut file_pos = 0u64;
    loop {
        let mut buf = sink.buffer();
        let len = read_full(src, buf.data_mut()).map_err(PassError::Input)?;
        if len == 0 {
            break;
        }
        watch(size + len as u64).map_err(PassError::Stopped)?;
        let data = &buf.data()[..len];
        let is_zero = is_all_zero(data);
        if let Some(out) = out.as_deref_mut().filter(|_| !is_zero) {
            if file_pos != size {
                out.seek(SeekFrom::Start(size)).map_err(PassError::Output)?;
            }
            out.write_all(data).map_err(PassError::Output)?;
            file_pos = size + len as u64;
        }
        zero.push(is_zero);
        size += len as u64;
        if !sink.chunk(buf, len, is_zero) {
            return Err(PassError::Output(io::Error::other(
                "the chunk store stopped",
            )));
        }
        if len < chunk_size {
            break;
        }
    }
    // Extends the file over trailing zero chunks, leaving them as a hole too.
    if let Some(out) = out {
        out.set_len(size).map_err(PassError::Output)?;
    }
    Ok(Whole { size, zero })
}

/// Whether every byte is zero. Data chunks nearly always differ from zero in
/// their first block, so checking block by block returns early; within a block
/// the OR-fold has no branch and vectorizes.
pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// The image's sha256 and the per-chunk fingerprints, in chunk order.
#[derive(Default)]
struct ChunkDigests {
    whole: Sha256,
    xxh3: Vec<u128>,
}

impl ChunkDigests {
    /// Digests one data chunk; returns its fingerprint.
    fn push_data(&mut self, data: &[u8]) -> u128 {
        self.whole.update(data);
        let fingerprint = xxh3_128(data);
        self.xxh3.push(fingerprint);
        fingerprint
    }

    /// Records an all-zero chunk of `len` bytes; returns its fingerprint.
    fn push_zero(&mut self, zeros: &mut ZeroDigests, len: usize) -> u128 {
        feed_zeros(&mut self.whole, len);
        let fingerprint = zeros.get(len);
        self.xxh3.push(fingerprint);
        fingerprint
    }
}

/// Fingerprints of all-zero chunks, computed once per length (there are at
/// most two: the chunk size and a short last chunk).
#[derive(Default)]
struct ZeroDigests {
    known: Vec<(usize, u128)>,
}

impl ZeroDigests {
    fn get(&mut self, len: usize) -> u128 {
        if let Some(&(_, xxh3)) = self.known.iter().find(|(l, _)| *l == len) {
            return xxh3;
        }
        let xxh3 = xxh3_of_zeros(len);
        self.known.push((len, xxh3));
        xxh3
    }
}

/// Zeros to feed hashers with, a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Feeds `len` zero bytes to `hasher` without a buffer of that size.
fn feed_zeros(hasher: &mut Sha256, len: usize) {
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len());
        hasher.update(&ZEROS[..n]);
        left -= n;
    }
}

/// The XXH3-128 of `len` zero bytes, without a buffer of that size.
fn xxh3_of_zeros(len: usize) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len());
        hasher.update(&ZEROS[..n]);
        left -= n;
    }
    hasher.digest128()
}

/// Hashes each chunk right after the loop has written it, on the same thread.
struct InlineSink<'o> {
    buf: Option<ChunkBuf>,
    chunk_size: usize,
    digests: ChunkDigests,
    zeros: ZeroDigests,
    observer: Option<&'o dyn ImportObserver>,
}

impl ChunkSink for InlineSink<'_> {
    fn buffer(&mut self) -> ChunkBuf {
        self.buf
            .take()
            .unwrap_or_else(|| ChunkBuf::new(self.chunk_size))
    }

    fn chunk(&mut self, buf: ChunkBuf, len: usize, zero: bool) -> bool {
        let fingerprint = if zero {
            self.digests.push_zero(&mut self.zeros, len)
        } else {
            self.digests.push_data(&buf.data()[..len])
        };
        if let Some(observer) = self.observer {
            tell(observer, &buf.data()[..len], zero, fingerprint);
        }
        self.buf = Some(buf);
        true
    }
}

/// Messages to the chunk-hashing thread, in chunk order.
enum Job {
    /// A data chunk: the buffer and how many bytes of it are the chunk.
    Data(ChunkBuf, usize),
    /// An all-zero chunk of this length: its digest is known without the data.
    Zero(usize),
}

/// Sends chunks to the hashing thread and recycles the buffers it returns.
struct WorkerSink {
    /// Chunks to hash, in order. Capacity one: see [`MAX_BUFFERS`].
    jobs: SyncSender<Job>,
    /// Buffers the worker has finished with.
    back: Receiver<ChunkBuf>,
    /// Buffers ready to refill (zero chunks never leave this thread).
    free: Vec<ChunkBuf>,
    /// Buffers allocated so far: never more than [`MAX_BUFFERS`] unless the
    /// observer keeps buffers.
    allocated: usize,
    chunk_size: usize,
    /// Whether the observer is handed data chunks' buffers
    /// ([`ImportObserver::chunk_owned`]): they come back only when it (and
    /// whoever it shares them with) drops them, so this thread never waits
    /// for one (the observer may be waiting for the next chunk before it
    /// lets one go) and makes a new buffer instead. Those it holds are
    /// bounded by the observer (an engine feed: the chunks it holds, its
    /// source's cache and two per target).
    hands_over: bool,
}

impl ChunkSink for WorkerSink {
    fn buffer(&mut self) -> ChunkBuf {
        if let Some(buf) = self.free.pop() {
            return buf;
        }
        if let Ok(buf) = self.back.try_recv() {
            return buf;
        }
        if self.allocated < MAX_BUFFERS || self.hands_over {
            self.allocated += 1;
            return ChunkBuf::new(self.chunk_size);
        }
        // All buffers are with the worker: wait for one. If the worker died
        // (only a panic does that), carry on with a fresh buffer; the panic is
        // re-raised when the worker is joined.
        self.back
            .recv()
            .unwrap_or_else(|_| ChunkBuf::new(self.chunk_size))
    }

    fn chunk(&mut self, buf: ChunkBuf, len: usize, zero: bool) -> bool {
        let job = if zero {
            self.free.push(buf);
            Job::Zero(len)
        } else {
            Job::Data(buf, len)
        };
        // A send fails only if the worker stopped (a write error, or a
        // panic); joining it reports which.
        self.jobs.send(job).is_ok()
    }
}

/// The cache file as the worker stores chunks into it: a data chunk of whole
/// blocks is written with `O_DIRECT` straight from its aligned buffer where
/// the file system allows it, anything else (a short last chunk, or every
/// chunk where direct I/O is refused) through the file as given.
///
/// Why: writing a decompressed GiB through the page cache was 20–23.5 % of a
/// cold `.xz` flash's CPU (`copy_folio_from_iter_atomic`: every page
/// allocated and copied into; bench/README.md), on the worker, which also
/// hashes. A direct write is the disk's work; the import's `sync_all` before
/// the rename still makes it durable, and the page cache keeps none of it
/// (a target that followed the import is checked against the chunks'
/// fingerprints, not the cached bytes: see the engine's verify pass).
struct ChunkStore<'f> {
    file: &'f mut File,
    /// The same inode opened with `O_DIRECT`; `None` where it cannot be, or
    /// once a direct write was refused as invalid.
    direct: Option<File>,
}

impl<'f> ChunkStore<'f> {
    fn new(file: &'f mut File) -> Self {
        let direct = direct_writer(file);
        Self { file, direct }
    }

    /// Writes `data` (from a [`ChunkBuf`]) at `offset`.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let whole_blocks = data.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64)
            && (data.as_ptr() as usize).is_multiple_of(ALIGN);
        if let Some(direct) = self.direct.as_ref().filter(|_| whole_blocks) {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // A file system that opens with O_DIRECT but refuses the
                // write: the chunk (whatever part of it landed) and the rest
                // go through the page cache.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::debug!(error = %e, "direct writes refused; storing through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)
    }
}

/// `file` opened again (through `/proc/self/fd`: the same inode) for direct
/// writes, or `None` where the file system cannot (an older tmpfs), the file
/// was not opened for writing, or it is not the same file.
fn direct_writer(file: &File) -> Option<File> {
    let mode = rustix::fs::fcntl_getfl(file).ok()?;
    if !(mode.contains(rustix::fs::OFlags::WRONLY) || mode.contains(rustix::fs::OFlags::RDWR)) {
        return None;
    }
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let (given, opened) = (file.metadata().ok()?, direct.metadata().ok()?);
    (given.dev() == opened.dev() && given.ino() == opened.ino()).then_some(direct)
}

/// A chunk the worker has digested, on its way to the store.
enum Digested {
    /// A data chunk: its buffer, how many bytes of it are the chunk, and its
    /// fingerprint.
    Data(ChunkBuf, usize, u128),
    /// An all-zero chunk of this length, and its fingerprint.
    Zero(usize, u128),
}

/// The worker thread: digests and fingerprints each chunk in the order they
/// come; then stores it in `out` if there is one (data at its offset, zero
/// chunks left as holes; see [`ChunkStore`]) on a store thread of its own,
/// which tells the observer once the chunk is in the file and hands each
/// buffer back (or over, to an observer that keeps them). Without `out` the
/// worker tells the observer itself. A write error stops the store; the
/// worker then stops at its next hand-over, and the loop at its own.
fn hash_chunks(
    jobs: Receiver<Job>,
    back: mpsc::Sender<ChunkBuf>,
    out: Option<&mut File>,
    observer: Option<&dyn ImportObserver>,
) -> io::Result<ChunkDigests> {
    let mut digests = ChunkDigests::default();
    let mut zeros = ZeroDigests::default();
    let mut digest = |job: Job| match job {
        Job::Data(buf, len) => {
            let fingerprint = digests.push_data(&buf.data()[..len]);
            Digested::Data(buf, len, fingerprint)
        }
        Job::Zero(len) => Digested::Zero(len, digests.push_zero(&mut zeros, len)),
    };
    let Some(file) = out else {
        for job in jobs {
            deliver(digest(job), observer, &back);
        }
        return Ok(digests);
    };
    thread::scope(|scope| {
        // One chunk queued between the two: the store's disk writes and the
        // hashing each wait on the other as little as the decoding does.
        let (to_store, store_rx) = mpsc::sync_channel::<Digested>(1);
        let store = thread::Builder::new()
            .name("import store".into())
            .spawn_scoped(scope, move || store_chunks(store_rx, file, observer, back))?;
        for job in jobs {
            if to_store.send(digest(job)).is_err() {
                // The store stopped on an error, which joining it gives.
                break;
            }
        }
        drop(to_store);
        match store.join() {
            Ok(stored) => stored,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })?;
    Ok(digests)
}

/// The store thread: writes each digested chunk at its offset of `file`
/// (zero chunks left as holes), then tells the observer, in order; extends
/// the file over trailing zero chunks at the end. Stops at the first write
/// error.
fn store_chunks(
    chunks: Receiver<Digested>,
    file: &mut File,
    observer: Option<&dyn ImportObserver>,
    back: mpsc::Sender<ChunkBuf>,
) -> io::Result<()> {
    let mut store = ChunkStore::new(file);
    // The image's size so far.
    let mut size = 0u64;
    for chunk in chunks {
        match &chunk {
            Digested::Data(buf, len, _) => {
                store.write_at(&buf.data()[..*len], size)?;
                size += *len as u64;
            }
            Digested::Zero(len, _) => size += *len as u64,
        }
        deliver(chunk, observer, &back);
    }
    // Extends the file over trailing zero chunks, leaving them as a hole too.
    store.file.set_len(size)
}

/// Tells `observer` of a digested (and stored, if stored at all) chunk, and
/// gives its buffer back to the loop, or over to an observer that takes
/// bytes (it comes back when dropped).
fn deliver(chunk: Digested, observer: Option<&dyn ImportObserver>, back: &mpsc::Sender<ChunkBuf>) {
    match (chunk, observer) {
        (Digested::Zero(len, fingerprint), Some(observer)) => {
            observer.chunk(len, true, fingerprint);
        }
        (Digested::Zero(..), None) => {}
        (Digested::Data(buf, len, fingerprint), Some(observer)) if observer.takes_bytes() => {
            observer.chunk_owned(ChunkData::new(buf, len, back.clone()), fingerprint);
        }
        (Digested::Data(buf, len, fingerprint), Some(observer)) => {
            observer.chunk(len, false, fingerprint);
            // The loop may have stopped (an error); then nobody wants it back.
            let _ = back.send(buf);
        }
        (Digested::Data(buf, ..), None) => {
            let _ = back.send(buf);
        }
    }
}

/// Tells `observer` of a stored chunk: its bytes too if it takes them and
/// the chunk is not all zero.
fn tell(observer: &dyn ImportObserver, data: &[u8], zero: bool, fingerprint: u128) {
    if !zero && observer.takes_bytes() {
        observer.chunk_data(data, fingerprint);
    } else {
        observer.chunk(data.len(), zero, fingerprint);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const CHUNK: usize = 8192;

    /// Three data chunks, two zero chunks, a data chunk with a zero first half,
    /// a short zero tail: the chunk kinds the map has to get right.
    fn sample() -> (Vec<u8>, Vec<bool>) {
        let mut data = Vec::new();
        let mut zero = Vec::new();
        let mut fill = |byte: Option<u8>, len: usize, is_zero: bool| {
            data.extend((0..len).map(|i| byte.unwrap_or((i % 253) as u8 + 1)));
            zero.push(is_zero);
        };
        fill(None, CHUNK, false);
        fill(Some(0), CHUNK, true);
        fill(Some(0), CHUNK, true);
        fill(None, CHUNK, false);
        data.extend(vec![0u8; CHUNK / 2]);
        data.extend(vec![9u8; CHUNK / 2]);
        zero.push(false);
        data.extend(vec![0u8; 1000]);
        zero.push(true);
        (data, zero)
    }

    fn check(hashing: ChunkHashing) {
        let (data, zero) = sample();
        let dir = tempfile::tempdir().unwrap();
        let mut out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        let got = digest_and_store(
            &mut Cursor::new(&data),
            Some(&mut out),
            CHUNK,
            hashing,
            &mut |_| Ok(()),
            None,
        )
        .unwrap();
        assert_eq!(got.sha256, Sha256Digest::of(&data));
        assert_eq!(got.size, data.len() as u64);
        // Without an output: the same digests, nothing written.
        let digests_only = digest_and_store(
            &mut Cursor::new(&data),
            None,
            CHUNK,
            hashing,
            &mut |_| Ok(()),
            None,
        )
        .unwrap();
        assert_eq!(digests_only, got);
        let expected_fingerprints: Vec<u128> = data.chunks(CHUNK).map(xxh3_128).collect();
        assert_eq!(got.chunk_fingerprints, expected_fingerprints);
        assert_eq!(got.zero, zero);
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
    }

    #[test]
    fn inline_pass_digests_and_stores_every_kind_of_chunk() {
        check(ChunkHashing::Inline);
    }

    #[test]
    fn worker_pass_digests_and_stores_every_kind_of_chunk() {
        check(ChunkHashing::Worker);
    }

    #[test]
    fn an_input_error_midway_is_reported_as_such() {
        struct FailsAfter(usize);
        impl Read for FailsAfter {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("boom"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut out = File::create(dir.path().join("out")).unwrap();
        for hashing in [ChunkHashing::Inline, ChunkHashing::Worker] {
            let error = digest_and_store(
                &mut FailsAfter(5 * CHUNK + 3),
                Some(&mut out),
                CHUNK,
                hashing,
                &mut |_| Ok(()),
                None,
            )
            .unwrap_err();
            assert!(matches!(error, PassError::Input(e) if e.to_string() == "boom"));
        }
    }

    #[test]
    fn a_store_that_fails_is_reported_as_an_output_error_and_stops_the_pass() {
        let (data, _) = sample();
        // Ten times the sample, so that the loop would have chunks left to
        // read after the first failed write.
        let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * 10).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"").unwrap();
        for hashing in [ChunkHashing::Inline, ChunkHashing::Worker] {
            // Opened for reading only: every write fails.
            let mut out = File::open(&path).unwrap();
            let mut read = 0u64;
            let error = digest_and_store(
                &mut Cursor::new(&data),
                Some(&mut out),
                CHUNK,
                hashing,
                &mut |size| {
                    read = size;
                    Ok(())
                },
                None,
            )
            .unwrap_err();
            assert!(
                matches!(&error, PassError::Output(e) if e.raw_os_error() == Some(9)),
                "{hashing:?}: {error:?}"
            );
            // The loop stopped within a few chunks of the failed write: at
            // most the chunk stored, one queued for the store, one hashed,
            // one queued for the hashing and the one the loop could not hand
            // over (five), and one more for margin.
            assert!(
                read <= 6 * CHUNK as u64,
                "{hashing:?}: read {read} of {} bytes",
                data.len()
            );
        }
    }

    #[test]
    fn the_store_writes_past_the_page_cache_where_the_file_system_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"").unwrap();
        // Where this file system takes O_DIRECT, the store uses it.
        let direct_here = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path)
            .is_ok();
        let mut rw = File::options().read(true).write(true).open(&path).unwrap();
        assert_eq!(ChunkStore::new(&mut rw).direct.is_some(), direct_here);
        // Never through a descriptor the file was not opened to write with.
        assert!(direct_writer(&File::open(&path).unwrap()).is_none());
        // Whole blocks and a short tail land where they belong either way.
        let mut store = ChunkStore::new(&mut rw);
        let mut block = ChunkBuf::new(2 * ALIGN);
        block.data_mut().fill(7);
        store.write_at(block.data(), 2 * ALIGN as u64).unwrap();
        block.data_mut().fill(9);
        store
            .write_at(&block.data()[..100], 4 * ALIGN as u64)
            .unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(stored.len(), 4 * ALIGN + 100);
        assert!(stored[..2 * ALIGN].iter().all(|&b| b == 0));
        assert!(stored[2 * ALIGN..4 * ALIGN].iter().all(|&b| b == 7));
        assert!(stored[4 * ALIGN..].iter().all(|&b| b == 9));
    }

    /// An observer that takes bytes and either keeps every chunk handed
    /// over or lets each go at once, noting where each buffer was.
    #[derive(Debug, Default)]
    struct Taker {
        keep: bool,
        kept: std::sync::Mutex<Vec<(ChunkData, u128)>>,
        told: std::sync::Mutex<Vec<Told>>,
    }

    /// A chunk as a [`Taker`] was told of it: index, length, zero or not,
    /// fingerprint and where its buffer was (0 for a zero chunk).
    type Told = (usize, usize, bool, u128, usize);

    impl ImportObserver for Taker {
        fn began(&self, _: &File, _: u32, _: Option<u64>) {}

        fn chunk(&self, len: usize, zero: bool, fingerprint: u128) {
            let mut told = self.told.lock().unwrap();
            let index = told.len();
            told.push((index, len, zero, fingerprint, 0));
        }

        fn takes_bytes(&self) -> bool {
            true
        }

        fn chunk_data(&self, _: &[u8], _: u128) {
            panic!("a worker pass hands its buffers over instead of lending them");
        }

        fn abandoned(&self, reason: &str) {
            panic!("a pass over a file is never abandoned: {reason}");
        }

        fn chunk_owned(&self, data: ChunkData, fingerprint: u128) {
            let mut told = self.told.lock().unwrap();
            let index = told.len();
            told.push((
                index,
                data.len(),
                false,
                fingerprint,
                data.as_ptr() as usize,
            ));
            if self.keep {
                self.kept.lock().unwrap().push((data, fingerprint));
            }
        }
    }

    /// `chunks` chunks of CHUNK bytes, every third one all zero.
    fn striped(chunks: usize) -> Vec<u8> {
        (0..chunks)
            .flat_map(|i| {
                let byte = if i % 3 == 2 { 0 } else { i as u8 | 1 };
                std::iter::repeat_n(byte, CHUNK)
            })
            .collect()
    }

    #[test]
    fn an_observer_that_keeps_every_chunk_handed_over_does_not_stall_the_pass() {
        // Far more data chunks than the pass's own buffers: the pass must
        // make new ones rather than wait for a buffer the observer keeps.
        let data = striped(4 * MAX_BUFFERS + 3);
        let dir = tempfile::tempdir().unwrap();
        let mut out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        let taker = Taker {
            keep: true,
            ..Taker::default()
        };
        let got = digest_and_store(
            &mut Cursor::new(&data),
            Some(&mut out),
            CHUNK,
            ChunkHashing::Worker,
            &mut |_| Ok(()),
            Some(&taker),
        )
        .unwrap();
        assert_eq!(got.sha256, Sha256Digest::of(&data));
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), data);
        // Every data chunk was handed over, in order, with its own bytes and
        // fingerprint, in a buffer a target can be written from directly.
        let kept = taker.kept.lock().unwrap();
        let data_chunks: Vec<&[u8]> = data.chunks(CHUNK).filter(|c| !is_all_zero(c)).collect();
        assert_eq!(kept.len(), data_chunks.len());
        for ((bytes, fingerprint), expected) in kept.iter().zip(&data_chunks) {
            assert_eq!(&bytes[..], *expected);
            assert_eq!(*fingerprint, xxh3_128(expected));
            assert!((bytes.as_ptr() as usize).is_multiple_of(ALIGN));
        }
        // Zero chunks are told as such, in their place.
        let told = taker.told.lock().unwrap();
        assert_eq!(told.len(), data.len() / CHUNK);
        for (i, len, zero, fingerprint, _) in told.iter() {
            assert_eq!((*len, *zero), (CHUNK, i % 3 == 2), "chunk {i}");
            assert_eq!(*fingerprint, got.chunk_fingerprints[*i]);
        }
    }

    #[test]
    fn buffers_handed_over_and_let_go_are_filled_again() {
        let data = striped(96);
        let taker = Taker::default();
        let got = digest_and_store(
            &mut Cursor::new(&data),
            None,
            CHUNK,
            ChunkHashing::Worker,
            &mut |_| Ok(()),
            Some(&taker),
        )
        .unwrap();
        assert_eq!(got.sha256, Sha256Digest::of(&data));
        let told = taker.told.lock().unwrap();
        let buffers: std::collections::HashSet<usize> =
            told.iter().filter(|t| !t.2).map(|t| t.4).collect();
        // 64 data chunks through a handful of buffers: each comes back when
        // the observer drops it. (A buffer caught between its drop and its
        // return may make the pass take a new one, rarely: hence the margin.)
        assert!(
            buffers.len() <= 2 * MAX_BUFFERS,
            "{} buffers for 64 data chunks",
            buffers.len()
        );
    }

    #[test]
    fn fingerprints_of_zero_chunks_are_those_of_the_bytes() {
        for len in [1, 1000, 64 * 1024, 64 * 1024 + 1, 4 << 20] {
            assert_eq!(xxh3_of_zeros(len), xxh3_128(&vec![0u8; len]), "{len}");
        }
    }

    #[test]
    fn zero_detection_looks_at_every_byte() {
        let mut data = vec![0u8; 3 * 4096 + 17];
        assert!(is_all_zero(&data));
        assert!(is_all_zero(&[]));
        *data.last_mut().unwrap() = 1;
        assert!(!is_all_zero(&data));
    }
}
