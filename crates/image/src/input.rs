//! Reading the file to import: a reader that hashes the file as given while a
//! decoder consumes it, a reader that does the same on a thread of its own
//! ahead of the decoder ([`ReadAhead`]), and the decoders for each compressed
//! format.

use std::error::Error as StdError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};

use crate::detect::ImageFormat;
use crate::pass::ChunkBuf;

/// Size of the buffer between the file and a stream decoder: large enough that
/// reading costs few system calls, small next to the chunk buffers.
pub(crate) const INPUT_BUFFER: usize = 1 << 20;

/// An error of the file being imported itself (as opposed to its content being
/// damaged). Decoders pass the errors of their source through, so this marker
/// lets [`InputError::classify`] tell "cannot read the file" from "corrupt data".
#[derive(Debug)]
struct InputReadError(io::Error);

impl fmt::Display for InputReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for InputReadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

fn mark(error: io::Error) -> io::Error {
    io::Error::new(error.kind(), InputReadError(error))
}

/// What an error met while decoding turns out to be.
#[derive(Debug)]
pub(crate) enum InputError {
    /// The file could not be read.
    Read(io::Error),
    /// The file was read but its content is damaged or cut short.
    Corrupt(String),
}

impl InputError {
    /// Sorts an error returned by a decoder reading from an [`InputReader`].
    pub(crate) fn classify(error: io::Error) -> Self {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<InputReadError>())
        {
            let inner = error.into_inner().expect("checked above");
            let read = inner.downcast::<InputReadError>().expect("checked above");
            return Self::Read(read.0);
        }
        let reason = crate::import::lowercase_first(&error.to_string());
        if error.kind() == io::ErrorKind::UnexpectedEof {
            Self::Corrupt(format!("truncated: {reason}"))
        } else {
            Self::Corrupt(reason)
        }
    }
}

/// Reads the file being imported, optionally hashing it as it goes.
///
/// Stream decoders read it front to back, so every byte is hashed exactly once,
/// as it passes. The zip reader jumps around (it reads the central directory at
/// the end first), so the hash follows a *frontier*: bytes are hashed only when a
/// read starts at or before the frontier and extends it; [`InputReader::finish`]
/// hashes whatever lies beyond. In a common zip (entry data right after its local
/// header, central directory last) that still reads the file about once.
pub(crate) struct InputReader<R> {
    inner: R,
    /// `None` when the file's digest is not needed (a raw image, whose file digest
    /// is its raw digest, computed elsewhere).
    hasher: Option<Sha256>,
    /// Offset of the next read in `inner`.
    pos: u64,
    /// Bytes `0..hashed` have been fed to the hasher.
    hashed: u64,
}

impl<R> InputReader<R> {
    /// Wraps `inner`, positioned at its start.
    pub(crate) fn new(inner: R, hash: bool) -> Self {
        Self {
            inner,
            hasher: hash.then(Sha256::new),
            pos: 0,
            hashed: 0,
        }
    }
}

impl<R: Read> Read for InputReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(mark)?;
        let end = self.pos + n as u64;
        if self.pos <= self.hashed && end > self.hashed {
            let skip = (self.hashed - self.pos) as usize;
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&buf[skip..n]);
            }
            self.hashed = end;
        }
        self.pos = end;
        Ok(n)
    }
}

impl<R: Seek> Seek for InputReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(to).map_err(mark)?;
        Ok(self.pos)
    }
}

impl<R: Read + Seek> InputReader<R> {
    /// Hashes the rest of the file (trailing bytes no decoder wanted, or the
    /// parts a zip reader skipped) and returns its digest, if hashing, and size.
    pub(crate) fn finish(mut self) -> io::Result<(Option<Sha256>, u64)> {
        if self.pos != self.hashed {
            self.seek(SeekFrom::Start(self.hashed))?;
        }
        let mut buf = vec![0u8; INPUT_BUFFER];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((self.hasher, self.hashed))
    }
}

impl<R: Read> InputReader<R> {
    /// Reads the rest of a stream (bytes after the compressed data that no
    /// decoder wanted), hashing it, and returns the digest and size of all of
    /// it. Only for a reader that was read front to back (a stream decoder's
    /// input, never a zip reader's) and that hashes.
    pub(crate) fn finish_stream(mut self) -> io::Result<(Sha256, u64)> {
        let mut buf = vec![0u8; INPUT_BUFFER];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let hasher = self
            .hasher
            .ok_or_else(|| io::Error::other("the stream was read without hashing"))?;
        Ok((hasher, self.hashed))
    }
}

/// A decoder for one of the stream formats (all but zip and raw) reading from
/// `buffered` (a [`ReadAhead`], or a `BufReader` of [`INPUT_BUFFER`] bytes).
/// Every format decodes all of its members, streams or frames.
pub(crate) fn stream_decoder<'a, R: BufRead + 'a>(
    format: ImageFormat,
    buffered: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match format {
        ImageFormat::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        // liblzma (built from its source, statically: `liblzma` crate's
        // `static` feature), every stream of the file, each block's check
        // verified. lzma-rust2, used before, computed the blocks' CRC64 a
        // byte at a time (31 % of a cold `.xz` flash); see ARCHITECTURE.md.
        ImageFormat::Xz => Box::new(liblzma::bufread::XzDecoder::new_stream(
            buffered,
            liblzma::stream::Stream::new_stream_decoder(u64::MAX, liblzma::stream::CONCATENATED)
                .map_err(io::Error::from)?,
        )),
        ImageFormat::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        ImageFormat::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
        ImageFormat::Raw | ImageFormat::Zip => {
            unreachable!("{format} is not a stream format")
        }
    })
}

/// Blocks of the file a [`ReadAhead`] holds: the one the decoder reads, the
/// ones read ahead of it, the one being read and the one being hashed.
///
/// Why this many: a cold `.xz` flash traced with `perf sched` (bench/README.md,
/// session 29) had the decoder asleep for 2.4 of its 4.1 s waiting for input,
/// while the reading thread slept 1.4 s waiting for a free block: with three
/// blocks and one read at a time, each of the disk's slower moments starved
/// the decoder, and each of the decoder's busier ones stopped the reads. Eight
/// blocks of [`INPUT_BUFFER`] (8 MiB) let the reads run ahead through both.
const READ_AHEAD_BLOCKS: usize = 8;

/// The file being imported, read on a thread of its own ahead of the decoder
/// that consumes it (a `BufRead` over blocks of [`INPUT_BUFFER`] bytes), and
/// hashed on a third once the decoder is done with each block.
///
/// Why: decompressing is the bulk of a compressed import's CPU work, and the
/// file's own sha256 (the digest an operator may give for the file as
/// downloaded, and what recognises a copy of it later) was computed on the
/// decoder's thread as it read: on a `.xz` of a GiB, 0.6 of 3 CPU s. It runs
/// beside the decoder, on the other core, and not on the reading thread
/// either: there it held the next read back by the time it took to hash a
/// block, and the decoder waited for input. The file is read through the
/// page cache's read-ahead and its pages let go behind the reads (see
/// [`read_ahead`] for why not past the page cache).
///
/// The reading thread reads the whole file, past the end of the compressed
/// data too, so that [`finish`](Self::finish) has the digest and size of all
/// of it. A block goes from the reading thread to the decoder, from the
/// decoder (or [`finish`](Self::finish), for bytes no decoder wanted) to the
/// hashing thread in file order, and from there back to the reading thread.
/// Memory: [`READ_AHEAD_BLOCKS`] blocks. If the decoder stops (an error),
/// dropping the reader stops both threads at their next hand-over.
pub(crate) struct ReadAhead<'scope> {
    /// Filled blocks in file order (the bytes and how many are valid); a
    /// read error ends them, the reading thread's end closes the channel.
    filled: Receiver<io::Result<(ChunkBuf, usize)>>,
    /// Blocks the decoder is done with, in file order, to be hashed and
    /// then filled again.
    consumed: Sender<(ChunkBuf, usize)>,
    /// The block being consumed, and how many of its bytes are valid.
    current: Option<(ChunkBuf, usize)>,
    /// Bytes of `current` consumed.
    pos: usize,
    /// The file ended (or failed): nothing more will come.
    done: bool,
    /// The reading thread: the file's size once it has read it all.
    reader: ScopedJoinHandle<'scope, u64>,
    /// The hashing thread: the digest of every block handed to it.
    hasher: ScopedJoinHandle<'scope, Sha256>,
}

impl<'scope> ReadAhead<'scope> {
    /// Starts reading `file` from its start on a thread of `scope`.
    pub(crate) fn start<'env>(scope: &'scope Scope<'scope, 'env>, file: &'env File) -> Self {
        // Unbounded: the blocks themselves bound what is in flight.
        let (filled_tx, filled) = mpsc::channel();
        let (free, free_rx) = mpsc::channel();
        let (consumed, consumed_rx) = mpsc::channel::<(ChunkBuf, usize)>();
        let reader = thread::Builder::new()
            .name("import read".into())
            .spawn_scoped(scope, move || read_ahead(file, filled_tx, free_rx))
            .expect("a thread can be started for the import's reads");
        let hasher = thread::Builder::new()
            .name("import file hash".into())
            .spawn_scoped(scope, move || {
                let mut hasher = Sha256::new();
                for (buf, len) in consumed_rx {
                    hasher.update(&buf.data()[..len]);
                    // The reading thread may have stopped (the end, an
                    // error): then nobody wants the block back.
                    let _ = free.send(buf);
                }
                hasher
            })
            .expect("a thread can be started for the import's file hash");
        Self {
            filled,
            consumed,
            current: None,
            pos: 0,
            done: false,
            reader,
            hasher,
        }
    }

    /// Reads the rest of the file (bytes after the compressed data that no
    /// decoder wanted) and returns the digest and size of all of it.
    pub(crate) fn finish(mut self) -> io::Result<(Sha256, u64)> {
        if let Some(block) = self.current.take() {
            let _ = self.consumed.send(block);
        }
        while !self.done {
            match self.filled.recv() {
                Ok(Ok(block)) => {
                    let _ = self.consumed.send(block);
                }
                Ok(Err(error)) => return Err(mark(error)),
                Err(_) => self.done = true,
            }
        }
        // Every block is with the hashing thread: closing its channel lets
        // it finish.
        let Self {
            consumed,
            reader,
            hasher,
            ..
        } = self;
        drop(consumed);
        let size = match reader.join() {
            Ok(size) => size,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match hasher.join() {
            Ok(digest) => Ok((digest, size)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Read for ReadAhead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ReadAhead<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let exhausted = self
            .current
            .as_ref()
            .is_none_or(|(_, len)| self.pos >= *len);
        if exhausted {
            if let Some(block) = self.current.take() {
                // The hashing thread stops only when this reader is dropped.
                let _ = self.consumed.send(block);
            }
            if !self.done {
                match self.filled.recv() {
                    Ok(Ok(block)) => {
                        self.current = Some(block);
                        self.pos = 0;
                    }
                    Ok(Err(error)) => {
                        self.done = true;
                        return Err(mark(error));
                    }
                    // The thread read the whole file (or panicked, which
                    // `finish` re-raises): the end of the input.
                    Err(_) => self.done = true,
                }
            }
        }
        Ok(match &self.current {
            Some((buf, len)) => &buf.data()[self.pos..*len],
            None => &[],
        })
    }

    fn consume(&mut self, amount: usize) {
        self.pos += amount;
    }
}

/// How much of the file a [`ReadAhead`] lets go of at once, behind its reads:
/// a multiple of the page cache's largest folio (2 MiB on x86-64), since the
/// kernel drops only folios wholly inside the range advised. Dropping each
/// 1 MiB block as it was read left every page of an 8 MiB file cached here
/// (Linux 6.18: its read-ahead fills 2 MiB folios).
const DROP_BEHIND: u64 = 4 << 20;

/// A file read once, front to back, from its start, through the page cache:
/// the kernel is told so (`POSIX_FADV_SEQUENTIAL`: it reads ahead, several
/// requests at once) and the pages read are let go behind the reads, in
/// whole ranges of [`DROP_BEHIND`], and the rest when it is dropped (the
/// file need not stay cached, as with `dd iflag=nocache`). Reads are
/// positioned (`pread`): the file's cursor is left alone.
pub(crate) struct ReadOnce<'f> {
    file: &'f File,
    /// Where the next read starts.
    pos: u64,
    /// Where the pages let go so far end.
    dropped: u64,
}

impl<'f> ReadOnce<'f> {
    /// `file` read from its start.
    pub(crate) fn new(file: &'f File) -> Self {
        Self::at(file, 0)
    }

    /// `file` read from `start`; the pages before it are let go with the
    /// first ones read.
    pub(crate) fn at(file: &'f File, start: u64) -> Self {
        // Advice only: a file system that ignores it is read all the same.
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
        Self {
            file,
            pos: start,
            dropped: 0,
        }
    }

    /// Lets the pages from `self.dropped` to `to` (the end: `None`) go.
    fn drop_behind(&mut self, to: Option<u64>) {
        let len = to.map(|to| to - self.dropped);
        // Advice only: pages still in use stay.
        let _ = rustix::fs::fadvise(
            self.file,
            self.dropped,
            len.and_then(std::num::NonZeroU64::new),
            rustix::fs::Advice::DontNeed,
        );
        if let Some(to) = to {
            self.dropped = to;
        }
    }
}

impl Read for ReadOnce<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        let upto = self.pos - self.pos % DROP_BEHIND;
        if upto > self.dropped {
            self.drop_behind(Some(upto));
        }
        Ok(n)
    }
}

impl Drop for ReadOnce<'_> {
    fn drop(&mut self) {
        self.drop_behind(None);
    }
}

/// The reading thread of a [`ReadAhead`]: fills free blocks from `file` (from
/// its start) in order, as far ahead as there are blocks, until the end of
/// the file, a read error (handed over, then the thread stops) or the reader
/// being dropped. Returns the bytes read.
///
/// The file is read as a [`ReadOnce`]: through the page cache's read-ahead,
/// its pages let go behind the reads. Why not `O_DIRECT`, as before session 29: one direct read at a time
/// read a cold 627 MiB `.xz` here in 1.3 s (median of 6; four at once,
/// 1.2 s), the page cache's read-ahead in 0.8 s, for 0.2 s more system time
/// on this thread; the decoder, which needs about 440 MB/s, waited for input
/// with the direct reads (bench/README.md, session 29).
fn read_ahead(
    file: &File,
    filled: Sender<io::Result<(ChunkBuf, usize)>>,
    free: Receiver<ChunkBuf>,
) -> u64 {
    let mut reading = ReadOnce::new(file);
    let mut total = 0u64;
    let mut allocated = 0;
    loop {
        let buf = match free.try_recv() {
            Ok(buf) => Some(buf),
            Err(_) if allocated < READ_AHEAD_BLOCKS => {
                allocated += 1;
                Some(ChunkBuf::new(INPUT_BUFFER))
            }
            Err(_) => free.recv().ok(),
        };
        let Some(mut buf) = buf else {
            // The reader was dropped.
            return total;
        };
        match read_full(&mut reading, buf.data_mut()) {
            Ok(0) => return total,
            Ok(n) => {
                total += n as u64;
                if filled.send(Ok((buf, n))).is_err() || n < INPUT_BUFFER {
                    return total;
                }
            }
            Err(error) => {
                let _ = filled.send(Err(error));
                return total;
            }
        }
    }
}

/// The file `file` opened again (through `/proc/self/fd`, so the same
/// inode) for direct reads (`O_DIRECT`), or `None` where the file system
/// cannot (tmpfs) or it is not the same file. Its reads must be into
/// buffers aligned to [`crate::pass::ALIGN`], of a multiple of it in
/// length, at offsets that are multiples of it; the last one is short at the
/// end of the file, where the next read answers 0.
///
/// Reading a cold file through the page cache cost this VM more than the
/// sha256 of it: every page allocated, zeroed and copied out again (a
/// profile of `image import` of a GiB: 35 % of the CPU in `_copy_to_iter`,
/// 23 % zeroing new page-cache folios, 36 % sha256). A direct read lands in
/// the pass's aligned buffers and leaves the page cache alone.
pub(crate) fn direct_reader(file: &File) -> Option<File> {
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let (given, opened) = (file.metadata().ok()?, direct.metadata().ok()?);
    (given.dev() == opened.dev() && given.ino() == opened.ino()).then_some(direct)
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
pub(crate) fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Hashes everything `src` yields; used to recognise a copy of a known file
/// without decompressing it. `None` if `stop` said so before the end.
pub(crate) fn hash_all(
    src: &mut dyn Read,
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<(Sha256, u64)>> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; INPUT_BUFFER];
    loop {
        if stop() {
            return Ok(None);
        }
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            return Ok(Some((hasher, total)));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use flashrack_core::Sha256Digest;

    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn sequential_reads_hash_every_byte_once() {
        let bytes = data(100_000);
        let mut reader = InputReader::new(Cursor::new(bytes.clone()), true);
        let mut buf = [0u8; 777];
        while reader.read(&mut buf).unwrap() > 0 {}
        let (hasher, size) = reader.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(
            Sha256Digest::from_hasher(hasher.unwrap()),
            Sha256Digest::of(&bytes)
        );
    }

    #[test]
    fn jumps_back_and_forth_still_hash_the_file_in_order() {
        let bytes = data(50_000);
        let mut reader = InputReader::new(Cursor::new(bytes.clone()), true);
        let mut buf = [0u8; 1000];
        // Like a zip reader: the end first, then from the start, with a re-read
        // of an already hashed range and a partial overlap.
        reader.seek(SeekFrom::End(-1000)).unwrap();
        reader.read_exact(&mut buf).unwrap();
        reader.seek(SeekFrom::Start(0)).unwrap();
        reader.read_exact(&mut buf).unwrap();
        reader.seek(SeekFrom::Start(500)).unwrap();
        reader.read_exact(&mut buf).unwrap();
        reader.seek(SeekFrom::Start(10_000)).unwrap();
        reader.read_exact(&mut buf).unwrap();
        let (hasher, size) = reader.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(
            Sha256Digest::from_hasher(hasher.unwrap()),
            Sha256Digest::of(&bytes)
        );
    }

    /// A file of `len` bytes of [`data`] in a temporary directory.
    fn file_of(len: usize) -> (tempfile::TempDir, File, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        let bytes = data(len);
        std::fs::write(&path, &bytes).unwrap();
        (dir, File::open(&path).unwrap(), bytes)
    }

    #[test]
    fn a_read_ahead_gives_every_byte_in_order_and_hashes_the_whole_file() {
        // Sizes around the block and the number of blocks that circulate
        // (the hashing thread gives them back to be read into again): a
        // short file, an exact multiple of the block, and one that wraps
        // the blocks several times with a short last block.
        for len in [
            10,
            INPUT_BUFFER,
            3 * INPUT_BUFFER,
            (READ_AHEAD_BLOCKS * 3 + 1) * INPUT_BUFFER + 12_345,
        ] {
            let (_dir, file, bytes) = file_of(len);
            // The decoder takes only the first part, in odd pieces, as a
            // decoder stops at the end of its compressed data: the rest is
            // still read and hashed by `finish`.
            let wanted = len * 2 / 3;
            let got = thread::scope(|scope| {
                let mut input = ReadAhead::start(scope, &file);
                let mut got = Vec::new();
                let mut piece = vec![0u8; 99_991];
                while got.len() < wanted {
                    let n = input
                        .read(&mut piece[..(wanted - got.len()).min(99_991)])
                        .unwrap();
                    assert_ne!(n, 0, "the file ended early at {} of {len}", got.len());
                    got.extend_from_slice(&piece[..n]);
                }
                let (hasher, size) = input.finish().unwrap();
                assert_eq!(size, len as u64);
                assert_eq!(Sha256Digest::from_hasher(hasher), Sha256Digest::of(&bytes));
                got
            });
            assert!(
                got == bytes[..wanted],
                "bytes out of order for a file of {len}"
            );
        }
    }

    #[test]
    fn a_read_ahead_read_to_its_end_answers_end_and_a_dropped_one_stops_its_threads() {
        let (_dir, file, bytes) = file_of(2 * INPUT_BUFFER + 7);
        thread::scope(|scope| {
            let mut input = ReadAhead::start(scope, &file);
            let mut all = Vec::new();
            input.read_to_end(&mut all).unwrap();
            assert!(all == bytes);
            assert_eq!(input.read(&mut [0u8; 16]).unwrap(), 0);
            let (hasher, size) = input.finish().unwrap();
            assert_eq!(
                (Sha256Digest::from_hasher(hasher), size),
                (Sha256Digest::of(&bytes), bytes.len() as u64)
            );
        });
        // A decoder that fails after its first bytes drops the reader: both
        // threads stop (the scope joins them; a hang fails the test by its
        // timeout) although the file is far from read.
        let (_dir, file, _) = file_of((READ_AHEAD_BLOCKS * 4) * INPUT_BUFFER);
        thread::scope(|scope| {
            let mut input = ReadAhead::start(scope, &file);
            input.read_exact(&mut [0u8; 1000]).unwrap();
            drop(input);
        });
    }

    #[test]
    fn a_read_ahead_lets_the_pages_it_read_go() {
        // The file is written (so cached) and read: what the reads passed is
        // no longer in the page cache, as `dd iflag=nocache` leaves it. A
        // file system that ignores the advice (tmpfs keeps its pages) is not
        // what this checks.
        let (dir, file, _) = file_of(8 * INPUT_BUFFER);
        if rustix::fs::statfs(dir.path()).unwrap().f_type == 0x0102_1994 {
            eprintln!("tmpfs keeps its pages: skipped");
            return;
        }
        file.sync_all().unwrap();
        // util-linux's `fincore` (essential on Debian) counts the file's
        // pages in the page cache, without unsafe code here.
        let path = dir.path().join("input");
        let resident = |_: &File| {
            let out = std::process::Command::new("fincore")
                .args(["--bytes", "--noheadings", "--output", "RES"])
                .arg(&path)
                .output()
                .expect("fincore (util-linux) runs");
            assert!(out.status.success(), "fincore: {out:?}");
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        assert!(resident(&file) > 0, "the file just written is cached");
        thread::scope(|scope| {
            let mut input = ReadAhead::start(scope, &file);
            std::io::copy(&mut input, &mut io::sink()).unwrap();
            input.finish().unwrap();
        });
        assert_eq!(resident(&file), 0, "pages of the read file stayed cached");
    }

    #[test]
    fn errors_of_the_file_are_told_apart_from_corrupt_data() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut decoder = stream_decoder(
            ImageFormat::Gzip,
            io::BufReader::new(InputReader::new(Failing, true)),
        )
        .unwrap();
        let error = decoder.read(&mut [0u8; 10]).unwrap_err();
        assert!(
            matches!(InputError::classify(error), InputError::Read(e) if e.to_string() == "disk on fire")
        );

        let mut decoder = stream_decoder(
            ImageFormat::Gzip,
            io::BufReader::new(InputReader::new(
                Cursor::new(b"\x1f\x8bxxxxxxxxxxxxxx"),
                true,
            )),
        )
        .unwrap();
        let error = decoder.read(&mut [0u8; 10]).unwrap_err();
        assert!(matches!(
            InputError::classify(error),
            InputError::Corrupt(_)
        ));
    }
}
