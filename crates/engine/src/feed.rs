//! An image still being imported, which targets follow chunk by chunk.
//!
//! A one-shot flash of a file the cache has not seen need not wait for the
//! import: the importer tells an [`ImageFeed`] where the raw bytes go
//! ([`ImageFeed::begin`]: a file it writes them to, or the raw file itself) and
//! then, in order, that each chunk is there, with its XXH3-128 fingerprint and
//! whether it is all zero ([`ImageFeed::push`]); it ends the feed with the
//! image's sha256 once the import has succeeded ([`ImageFeed::finish`]) or with
//! the reason it failed ([`ImageFeed::fail`]). A [`crate::SharedSource`] made
//! with [`crate::SharedSource::following`] serves the targets from it: a
//! target's write pass asks for chunk after chunk and waits for the ones not
//! yet imported (never ahead of the import); before anything else (a
//! read-back, a verdict) every attempt waits for the end of the feed, so a
//! failed import (a digest that does not match, a corrupt or truncated
//! archive, a read error) fails every attempt as a source failure and no
//! target can pass.
//!
//! Memory: the feed holds what a manifest holds (a fingerprint and a zero
//! flag per chunk) and the bytes of at most [`MAX_HELD_CHUNKS`] data chunks:
//! a producer that hands each chunk's bytes over ([`ImageFeed::push_data`],
//! [`ImageFeed::push_owned`]) spares the targets that keep up with the import
//! a read of the file (and lets the import read a raw file past the page
//! cache). The feed keeps a chunk's bytes while a target following it still
//! needs them (see [`ImageFeed::follow`]), never more than
//! [`MAX_HELD_CHUNKS`], and only for targets that asked for a chunk (or
//! began) within the last [`PACE_GIVE_UP`]. A target further behind, one
//! stuck longer than that, and every read-back read the bytes back from the
//! file through the page cache and the source's bounded cache of chunks:
//! read from disk once and shared, and memory does not grow with the image
//! or the number of targets however far the import runs ahead of the
//! slowest target.
//!
//! The feed knows nothing of the image cache: the application wires an
//! import to it.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flashrack_core::{ImageManifest, Sha256Digest};

use crate::source::{BufferPool, ChunkBytes, HANDED_ALIGN};
use crate::EngineError;

/// How far (in chunks) the import may run ahead of the follower furthest
/// ahead, and of a follower still starting (see [`ImageFeed::follow`]); also
/// how many of the last data chunks handed over with their bytes a feed
/// holds when nobody follows it. A target that keeps up with the import
/// (waits for each chunk as it is pushed) finds its chunk among them. With
/// 8 held whatever the followers, a 1 GiB cold flash at N = 1 peaked at
/// 101 MB against 64 MB before the hand-over, the import running ahead of
/// the target.
pub const HELD_CHUNKS: usize = 2;

/// The most data chunks a feed holds for its followers: a follower behind
/// the one furthest ahead (a stick a little slower, or one that began a
/// little later) finds its chunks held while it is fewer than this many
/// behind the import; further behind, it reads them from the file. The
/// bound on the feed's memory whatever the number of followers (with 4 MiB
/// chunks, 32 MiB); a lone follower that keeps up needs only
/// [`HELD_CHUNKS`].
pub const MAX_HELD_CHUNKS: usize = 8;

/// How long a follower may go without asking for its next chunk (or, still
/// starting, since it was registered or the import began; one waiting for a
/// chunk not imported yet keeps up) before the import stops keeping pace
/// with it and the feed stops holding chunks for it (see
/// [`ImageFeed::follow`]): a
/// stick stuck in the kernel or in its start-up (opening, the guard's
/// checks, the capacity probe), or one slower than this per chunk, then
/// reads what it needs from the file like any target behind, and the import
/// carries on. A safety valve, not a measure of anything: keeping pace only
/// spares a target reading its chunks again from the disk.
pub const PACE_GIVE_UP: Duration = Duration::from_secs(2);

/// How long a waiting target sleeps before it looks at its cancel flag again
/// (and beats its heartbeat: waiting for the import is not a stall of the
/// target).
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// A producer's misuse of a feed; the feed fails with it too, so that the
/// targets following it stop as a source failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// A chunk, an end or a second beginning came before [`ImageFeed::begin`]
    /// or after it as it should not.
    #[error("the image feed was used out of order: {0}")]
    OutOfOrder(&'static str),
    /// The chunk size is not a positive multiple of 4096.
    #[error("the image feed's chunk size {0} is not a positive multiple of 4096")]
    ChunkSize(u32),
    /// A chunk longer than the chunk size, empty, or after a short chunk (only
    /// the last chunk may be short).
    #[error("the image feed's chunk {index} of {len} bytes does not fit chunks of {chunk_size}")]
    ChunkLength {
        /// The chunk's index.
        index: u64,
        /// Its length.
        len: usize,
        /// The feed's chunk size.
        chunk_size: u32,
    },
    /// More or fewer bytes than the size announced at the start.
    #[error("the image feed announced {announced} bytes but {fed} were fed")]
    Size {
        /// The size given to [`ImageFeed::begin`].
        announced: u64,
        /// The bytes fed (so far, when more).
        fed: u64,
    },
}

/// One chunk the import has produced.
#[derive(Debug, Clone, Copy)]
struct FedChunk {
    len: usize,
    zero: bool,
    fingerprint: u128,
}

/// Where a chunk lies and what it is, as the feed knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FedSpan {
    /// Byte offset in the image.
    pub(crate) offset: u64,
    /// Length.
    pub(crate) len: usize,
    /// All zero.
    pub(crate) zero: bool,
    /// Its XXH3-128.
    pub(crate) fingerprint: u128,
}

/// How a feed ended.
#[derive(Debug, Clone)]
enum End {
    /// The import succeeded; the image's manifest.
    Complete(ImageManifest),
    /// It failed (or the producer misused the feed): why.
    Failed(String),
}

#[derive(Debug, Default)]
struct State {
    /// The file the raw bytes are in, from [`ImageFeed::begin`].
    file: Option<Arc<File>>,
    /// The image's size when known before the import (a raw file's), `None`
    /// for a compressed one.
    size_hint: Option<u64>,
    chunk_size: u32,
    chunks: Vec<FedChunk>,
    /// Bytes fed so far.
    fed: u64,
    end: Option<End>,
    /// Data chunks handed over with their bytes, oldest first, at most
    /// [`MAX_HELD_CHUNKS`]: those a follower in the window still needs, or
    /// the last [`HELD_CHUNKS`] when no follower is (see [`State::trim`]).
    held: VecDeque<(u64, Arc<ChunkBytes>)>,
    /// One past the last data chunk whose bytes the feed let go (or never
    /// held: pushed without them): a follower that needs a chunk before it
    /// reads it from the file, and is neither held for nor, starting, waited
    /// for.
    let_go: u64,
    /// The targets following the feed (see [`ImageFeed::follow`]): the next
    /// chunk each will ask for and when it last asked; `None` once it left.
    followers: Vec<Option<Pace>>,
    /// The slot among `followers` that [`ImageFeed::reserve`] took for the
    /// targets to come, until the first of them registers (or, from
    /// [`ImageFeed::reserve_for`], until it is let go).
    reserved: Option<usize>,
    /// Whether the reservation stays when targets register, until it is let
    /// go ([`ImageFeed::unreserve`]) or its patience runs out
    /// ([`ImageFeed::reserve_for`]).
    reserved_until_let_go: bool,
}

/// Where a follower is.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// The chunk it asks for next (it has all before).
    next: u64,
    /// When it last asked, or got the chunk it waited for; registered, or
    /// saw the import begin, if it has not asked yet.
    moved: Instant,
    /// Whether it has asked for a chunk: its write pass has begun. Until
    /// then it is starting (opening, the guard's checks, the capacity
    /// probe).
    writing: bool,
    /// How long it may go without asking (or, starting, since it registered
    /// or saw the import begin) and still be waited for: [`PACE_GIVE_UP`],
    /// or a reservation's own ([`ImageFeed::reserve_for`]).
    patience: Duration,
}

impl Pace {
    /// Whether it keeps up, `fed` chunks having been fed: it waits for a
    /// chunk not fed yet, or asked (or, starting, registered or saw the
    /// import begin) within [`PACE_GIVE_UP`]. A follower that does not is
    /// stuck or too slow to be kept pace with.
    fn fresh(&self, fed: u64) -> bool {
        (self.writing && self.next >= fed) || self.moved.elapsed() < self.patience
    }
}

impl State {
    /// The fresh followers whose next chunk the feed has not let go: those
    /// it holds chunks for.
    fn in_window(&self) -> impl Iterator<Item = &Pace> {
        let (let_go, fed) = (self.let_go, self.chunks.len() as u64);
        self.followers
            .iter()
            .flatten()
            .filter(move |f| f.fresh(fed) && f.next >= let_go)
    }

    /// Whether the import must wait before it announces chunk `index`:
    /// - the fresh follower furthest ahead in its write pass would not find
    ///   the chunk it needs next among the [`HELD_CHUNKS`] last ones. Only
    ///   the nearest follower counts: a slower one never holds the import,
    ///   nor so the faster ones, back (the feed holds its chunks while it is
    ///   fewer than [`MAX_HELD_CHUNKS`] behind, see [`trim`](Self::trim));
    /// - or a follower still starting, registered within [`PACE_GIVE_UP`]
    ///   and before the feed let its first chunk go, would lose that chunk:
    ///   so the targets of a run begin together, each finding the first
    ///   chunks held, instead of reading again from the file those the
    ///   import passed while they opened their sticks and probed them.
    fn must_wait(&self, index: u64) -> bool {
        if self.end.is_some() {
            return false;
        }
        let fed = self.chunks.len() as u64;
        let lead = self
            .followers
            .iter()
            .flatten()
            .filter(|f| f.writing && f.fresh(fed))
            .map(|f| f.next)
            .max();
        let behind_lead = lead.is_some_and(|next| index >= next + HELD_CHUNKS as u64);
        behind_lead
            || self
                .in_window()
                .any(|f| !f.writing && index >= f.next + HELD_CHUNKS as u64)
    }

    /// Lets go of the held chunks no follower in the window needs any more
    /// (before the next chunk of the one furthest behind), and of the oldest
    /// beyond [`MAX_HELD_CHUNKS`] whoever needs them; with no follower in
    /// the window, of all but the last [`HELD_CHUNKS`] (for a follower about
    /// to begin).
    fn trim(&mut self) {
        let (keep_from, most) = match self.in_window().map(|f| f.next).min() {
            Some(next) => (next, MAX_HELD_CHUNKS),
            None => (0, HELD_CHUNKS),
        };
        while let Some(&(index, _)) = self.held.front() {
            if index >= keep_from && self.held.len() <= most {
                break;
            }
            self.held.pop_front();
            self.let_go = self.let_go.max(index + 1);
        }
    }
}

/// A target following a feed, for the import to keep pace with and the
/// feed to hold chunks for ([`crate::SharedSource::follow`]); it leaves
/// when dropped.
#[derive(Debug)]
pub struct Follower {
    feed: Arc<ImageFeed>,
    slot: usize,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut state = self.feed.lock();
        if let Some(pace) = state.followers.get_mut(self.slot) {
            *pace = None;
        }
        self.feed.changed.notify_all();
    }
}

/// The chunks of an image as an import produces them (see the module docs).
/// Shared (`Arc`) between the producer (the import, on its own thread) and the
/// targets' threads.
#[derive(Debug, Default)]
pub struct ImageFeed {
    /// A std mutex: held only to read or extend the chunk list, never across
    /// I/O; waiters sleep on `changed`.
    state: Mutex<State>,
    /// Signalled at every chunk, at the beginning and at the end.
    changed: Condvar,
    /// Buffers for the bytes of held chunks, reused once a chunk is let go.
    pool: Arc<BufferPool>,
}

/// What a target waiting on the feed needs: its cancel flag (an operator
/// stop ends the wait) and its heartbeat (a wait for the import is not a
/// stall of the target).
pub(crate) struct Waiter<'a> {
    pub(crate) cancel: &'a AtomicBool,
    pub(crate) beat: &'a dyn Fn(),
}

/// Why a wait on the feed ended without its answer.
pub(crate) enum WaitError {
    /// The target was cancelled while it waited.
    Cancelled,
    /// The import failed: a failure of the source.
    Source(EngineError),
}

impl From<EngineError> for WaitError {
    fn from(error: EngineError) -> Self {
        WaitError::Source(error)
    }
}

impl ImageFeed {
    /// A feed whose import has not begun.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The size announced when the import began, if any.
    pub fn size_hint(&self) -> Option<u64> {
        self.lock().size_hint
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails the feed with a producer's misuse and returns the error.
    fn misuse(&self, state: &mut State, error: FeedError) -> FeedError {
        if state.end.is_none() {
            state.end = Some(End::Failed(error.to_string()));
            state.held.clear();
            self.changed.notify_all();
        }
        error
    }

    /// The import starts: chunk `i` of `chunk_size` bytes will be at offset
    /// `i × chunk_size` of `file` before [`push`](Self::push) announces it;
    /// the image has `size_hint` bytes if that is known now (a raw file), or
    /// a size known at its end (a compressed file).
    pub fn begin(
        &self,
        file: File,
        chunk_size: u32,
        size_hint: Option<u64>,
    ) -> Result<(), FeedError> {
        let mut state = self.lock();
        if state.file.is_some() || state.end.is_some() {
            return Err(self.misuse(&mut state, FeedError::OutOfOrder("begun twice")));
        }
        if chunk_size == 0 || !chunk_size.is_multiple_of(4096) {
            return Err(self.misuse(&mut state, FeedError::ChunkSize(chunk_size)));
        }
        state.file = Some(Arc::new(file));
        state.chunk_size = chunk_size;
        state.size_hint = size_hint;
        // A follower starting (or a reservation) counts from the import's
        // beginning, not from whatever came before it (a download's
        // connection).
        let now = Instant::now();
        for pace in state.followers.iter_mut().flatten() {
            pace.moved = now;
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Targets are about to follow the feed (a one-shot flash that will
    /// start its attempts once the import has begun, after checking its
    /// targets and opening its records; a station's run armed over the
    /// import, whose sticks start once the run is recorded and the guard
    /// has checked them): until the first of them registers
    /// ([`crate::SharedSource::follow`], when its attempt is started), the
    /// import keeps its first chunks for them as for a follower starting
    /// (see [`follow`](Self::follow)), counted from the import's beginning,
    /// at most [`PACE_GIVE_UP`]. Without it, the import would run on while
    /// the caller prepares, and the targets would read the chunks it passed
    /// again from the file. A second reservation changes nothing.
    pub fn reserve(&self) {
        self.reserve_with(PACE_GIVE_UP, false);
    }

    /// A reservation for targets that register one by one, with gaps
    /// between them, such as a station's run, whose sticks start as the
    /// guard answers for each and as the records take each start (which may
    /// wait out a database another process holds): unlike
    /// [`reserve`](Self::reserve), it is not taken over by the first target
    /// that registers, but held until the caller lets it go
    /// ([`unreserve`](Self::unreserve), once every target it expects has
    /// registered) or for `patience` from the import's beginning. So the
    /// import keeps its first chunks until the last of them registers, and
    /// the first ones wait for it there instead of running ahead. The bound on
    /// memory is the same ([`MAX_HELD_CHUNKS`]); only the import and the
    /// targets that registered wait, at most `patience`.
    pub fn reserve_for(&self, patience: Duration) {
        self.reserve_with(patience, true);
    }

    fn reserve_with(&self, patience: Duration, until_let_go: bool) {
        let mut state = self.lock();
        if state.reserved.is_some() {
            return;
        }
        state.reserved_until_let_go = until_let_go;
        state.followers.push(Some(Pace {
            next: 0,
            moved: Instant::now(),
            writing: false,
            patience,
        }));
        state.reserved = Some(state.followers.len() - 1);
    }

    /// Whether a reservation ([`reserve`](Self::reserve)) is still taken:
    /// no target has registered since, and nobody let it go.
    pub fn is_reserved(&self) -> bool {
        self.lock().reserved.is_some()
    }

    /// The targets will not follow after all (the caller flashes the image
    /// once imported instead): the reservation ([`reserve`](Self::reserve))
    /// holds the import back no longer.
    pub fn unreserve(&self) {
        let mut state = self.lock();
        if let Some(slot) = state.reserved.take() {
            state.followers[slot] = None;
            self.changed.notify_all();
        }
    }

    /// A target starts following the feed, from chunk 0: when its attempt
    /// begins, before it opens its stick, passes the guard and probes it,
    /// so that the chunks the import produces meanwhile are kept for it.
    ///
    /// The import keeps pace with its followers: it announces a chunk only
    /// once the follower furthest ahead in its write pass would still find
    /// the chunk it needs next among the last [`HELD_CHUNKS`], and (within
    /// [`PACE_GIVE_UP`] of their start) every follower still starting would
    /// still find its first chunk held (the producer waits in
    /// [`push`](Self::push), [`push_data`](Self::push_data) and
    /// [`push_owned`](Self::push_owned)). The feed holds a chunk's bytes
    /// while a fresh follower needs them, at most [`MAX_HELD_CHUNKS`]. Why:
    /// an import reading past the page cache runs ahead of a loop device or
    /// a stick, and a target that fell behind the held chunks read them
    /// again from the disk: in a cold flash of a GiB at N = 1, about 400 MiB
    /// read twice while the target wrote, and, with the target registered
    /// only at its write pass, 36 MiB (268 MiB on a loaded machine) the
    /// import passed while the target started. A follower that has not
    /// asked for a chunk for [`PACE_GIVE_UP`] (or, starting, began that long
    /// ago) is neither waited for nor held for, and reads from the file like
    /// any target behind; one that leaves (its write pass ends, or its
    /// attempt ends before it, however) is forgotten.
    pub(crate) fn follow(self: &Arc<Self>) -> Follower {
        let mut state = self.lock();
        // A plain reservation has done its work: the targets a caller starts
        // one after the other register without a wait between them. One held
        // until let go stays for the targets still to come (`reserve_for`).
        if !state.reserved_until_let_go {
            if let Some(slot) = state.reserved.take() {
                state.followers[slot] = None;
            }
        }
        state.followers.push(Some(Pace {
            next: 0,
            moved: Instant::now(),
            writing: false,
            patience: PACE_GIVE_UP,
        }));
        Follower {
            feed: self.clone(),
            slot: state.followers.len() - 1,
        }
    }

    /// Waits while the import is as far ahead of its nearest follower as it
    /// may be (see [`follow`](Self::follow)) before chunk `index` is
    /// announced.
    fn keep_pace<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let index = state.chunks.len() as u64;
        while state.must_wait(index) {
            state = self
                .changed
                .wait_timeout(state, WAIT_SLICE)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }

    /// The next chunk is in the file: `len` bytes (the chunk size, or less for
    /// the last chunk), all zero or not, with its XXH3-128 fingerprint.
    pub fn push(&self, len: usize, zero: bool, fingerprint: u128) -> Result<(), FeedError> {
        let state = self.lock();
        let mut state = self.keep_pace(state);
        let index = state.chunks.len() as u64;
        self.push_locked(&mut state, len, zero, fingerprint)?;
        if !zero {
            // Its bytes were never held: a follower that needs it reads the
            // file, and the feed has nothing to keep for it.
            state.let_go = state.let_go.max(index + 1);
        }
        state.trim();
        Ok(())
    }

    /// The next chunk is in the file, and these are its bytes (not all zero),
    /// with their XXH3-128 fingerprint: as [`push`](Self::push), and the feed
    /// keeps a copy of the bytes while a follower needs them (see
    /// [`follow`](Self::follow); the last [`HELD_CHUNKS`] when nobody
    /// follows), for the targets to take instead of reading the file.
    pub fn push_data(&self, data: &[u8], fingerprint: u128) -> Result<(), FeedError> {
        let chunk_size = self.lock().chunk_size as usize;
        // Copied outside the lock, into a buffer of the feed's pool; a chunk
        // that does not fit is refused by `push_locked` below.
        let copy = (!data.is_empty() && data.len() <= chunk_size).then(|| {
            let mut buf = self.pool.take(data.len());
            buf[..data.len()].copy_from_slice(data);
            Arc::new(ChunkBytes::Read {
                buf,
                len: data.len(),
            })
        });
        self.push_held(data.len(), fingerprint, copy)
    }

    /// The next chunk is in the file, and these are its bytes (not all zero),
    /// handed over with their XXH3-128 fingerprint: as
    /// [`push_data`](Self::push_data), but the feed keeps the bytes
    /// themselves instead of a copy (the importer's buffer, which goes back to
    /// it when the feed and every target have let the chunk go). Bytes that
    /// do not start on a [`HANDED_ALIGN`] boundary (targets are written from
    /// them with direct I/O) are copied as by `push_data`.
    ///
    /// Why: the copy was 7 % of a cold `.xz` flash's CPU (bench/README.md).
    pub fn push_owned(
        &self,
        bytes: Box<dyn AsRef<[u8]> + Send + Sync>,
        fingerprint: u128,
    ) -> Result<(), FeedError> {
        let data = (*bytes).as_ref();
        if !(data.as_ptr() as usize).is_multiple_of(HANDED_ALIGN) {
            return self.push_data(data, fingerprint);
        }
        let len = data.len();
        let chunk_size = self.lock().chunk_size as usize;
        // A chunk that does not fit is refused by `push_held`.
        let keep = (len != 0 && len <= chunk_size).then(|| Arc::new(ChunkBytes::Handed(bytes)));
        self.push_held(len, fingerprint, keep)
    }

    /// Announces the next (data) chunk of `len` bytes once the import may
    /// (see [`follow`](Self::follow)), and holds its bytes if given.
    fn push_held(
        &self,
        len: usize,
        fingerprint: u128,
        bytes: Option<Arc<ChunkBytes>>,
    ) -> Result<(), FeedError> {
        let state = self.lock();
        let mut state = self.keep_pace(state);
        let index = state.chunks.len() as u64;
        self.push_locked(&mut state, len, false, fingerprint)?;
        if let Some(bytes) = bytes {
            state.held.push_back((index, bytes));
        }
        state.trim();
        Ok(())
    }

    /// Chunk `index`'s bytes, if the feed still holds them.
    pub(crate) fn held(&self, index: u64) -> Option<Arc<ChunkBytes>> {
        self.lock()
            .held
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, chunk)| chunk.clone())
    }

    fn push_locked(
        &self,
        state: &mut State,
        len: usize,
        zero: bool,
        fingerprint: u128,
    ) -> Result<(), FeedError> {
        if state.end.is_some() {
            return Err(FeedError::OutOfOrder("a chunk after the end"));
        }
        if state.file.is_none() {
            return Err(self.misuse(state, FeedError::OutOfOrder("a chunk before the beginning")));
        }
        let index = state.chunks.len() as u64;
        let chunk_size = state.chunk_size;
        let after_short = state
            .chunks
            .last()
            .is_some_and(|last| last.len < chunk_size as usize);
        if len == 0 || len > chunk_size as usize || after_short {
            let error = FeedError::ChunkLength {
                index,
                len,
                chunk_size,
            };
            return Err(self.misuse(state, error));
        }
        let fed = state.fed + len as u64;
        if let Some(announced) = state.size_hint.filter(|&size| fed > size) {
            return Err(self.misuse(state, FeedError::Size { announced, fed }));
        }
        state.fed = fed;
        state.chunks.push(FedChunk {
            len,
            zero,
            fingerprint,
        });
        // A follower that waited for this chunk kept up: its time to ask for
        // the next one counts from now, not from when it began to wait.
        let now = Instant::now();
        for pace in state.followers.iter_mut().flatten() {
            if pace.writing && pace.next == index {
                pace.moved = now;
            }
        }
        self.changed.notify_all();
        Ok(())
    }

    /// The import succeeded and the image's sha256 is `sha256`: the targets
    /// may read back and pass.
    pub fn finish(&self, sha256: Sha256Digest) -> Result<(), FeedError> {
        let mut state = self.lock();
        if state.end.is_some() {
            return Err(FeedError::OutOfOrder("ended twice"));
        }
        if state.file.is_none() || state.chunks.is_empty() {
            return Err(self.misuse(&mut state, FeedError::OutOfOrder("an end without chunks")));
        }
        if let Some(announced) = state.size_hint.filter(|&size| size != state.fed) {
            let fed = state.fed;
            return Err(self.misuse(&mut state, FeedError::Size { announced, fed }));
        }
        let manifest = ImageManifest::fingerprinted(
            sha256,
            state.fed,
            state.chunk_size,
            state.chunks.iter().map(|c| c.fingerprint).collect(),
            state.chunks.iter().map(|c| c.zero).collect(),
        )
        .expect("every chunk but the last is whole and the chunk size was checked");
        state.end = Some(End::Complete(manifest));
        self.changed.notify_all();
        Ok(())
    }

    /// The import failed: every target following the feed stops as a source
    /// failure with `reason` (unless the feed had already ended).
    pub fn fail(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(End::Failed(reason.into()));
            // Nobody may use the bytes of a failed import.
            state.held.clear();
            self.changed.notify_all();
        }
    }

    /// How many chunks have been fed so far.
    pub fn chunks_fed(&self) -> u64 {
        self.lock().chunks.len() as u64
    }

    /// Whether the feed has ended, and how: `Some(Ok(()))` complete,
    /// `Some(Err(reason))` failed.
    pub fn ended(&self) -> Option<Result<(), String>> {
        match &self.lock().end {
            None => None,
            Some(End::Complete(_)) => Some(Ok(())),
            Some(End::Failed(reason)) => Some(Err(reason.clone())),
        }
    }

    /// Waits, slice by slice, until `ready` says the state answers, the feed
    /// failed or the waiter is cancelled.
    fn wait_for<T>(
        &self,
        waiter: &Waiter<'_>,
        mut ready: impl FnMut(&State) -> Option<T>,
    ) -> Result<T, WaitError> {
        let mut state = self.lock();
        loop {
            if let Some(End::Failed(reason)) = &state.end {
                return Err(WaitError::Source(EngineError::SourceFailed {
                    detail: reason.clone(),
                }));
            }
            if let Some(answer) = ready(&state) {
                return Ok(answer);
            }
            if waiter.cancel.load(Ordering::Relaxed) {
                return Err(WaitError::Cancelled);
            }
            state = self
                .changed
                .wait_timeout(state, WAIT_SLICE)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            (waiter.beat)();
        }
    }

    /// Chunk `index`, once the import has produced it; `None` once the image
    /// is known to end before it (at once past the size announced at the
    /// beginning, else at the end of the import).
    pub(crate) fn wait_chunk(
        &self,
        index: u64,
        waiter: &Waiter<'_>,
        follower: Option<&Follower>,
    ) -> Result<Option<FedSpan>, WaitError> {
        if let Some(follower) = follower {
            // Where the follower is, for the import's pace.
            let mut state = self.lock();
            if let Some(Some(pace)) = state.followers.get_mut(follower.slot) {
                *pace = Pace {
                    next: index,
                    moved: Instant::now(),
                    writing: true,
                    patience: PACE_GIVE_UP,
                };
            }
            self.changed.notify_all();
        }
        self.wait_for(waiter, |state| {
            if let Some(chunk) = state.chunks.get(index as usize) {
                return Some(Some(FedSpan {
                    offset: index * u64::from(state.chunk_size),
                    len: chunk.len,
                    zero: chunk.zero,
                    fingerprint: chunk.fingerprint,
                }));
            }
            let past_size = state
                .size_hint
                .is_some_and(|size| index * u64::from(state.chunk_size) >= size);
            (past_size || matches!(state.end, Some(End::Complete(_)))).then_some(None)
        })
    }

    /// The image's manifest, once the import has succeeded.
    pub(crate) fn wait_end(&self, waiter: &Waiter<'_>) -> Result<ImageManifest, WaitError> {
        self.wait_for(waiter, |state| match &state.end {
            Some(End::Complete(manifest)) => Some(manifest.clone()),
            _ => None,
        })
    }

    /// Chunk `index` if the import has produced it (no wait).
    pub(crate) fn span(&self, index: u64) -> Option<FedSpan> {
        let state = self.lock();
        state.chunks.get(index as usize).map(|chunk| FedSpan {
            offset: index * u64::from(state.chunk_size),
            len: chunk.len,
            zero: chunk.zero,
            fingerprint: chunk.fingerprint,
        })
    }

    /// The file the bytes are in, once begun.
    pub(crate) fn file(&self) -> Option<Arc<File>> {
        self.lock().file.clone()
    }

    /// The chunk size, once begun.
    pub(crate) fn chunk_size(&self) -> Option<u32> {
        let state = self.lock();
        state.file.is_some().then_some(state.chunk_size)
    }
}

#[cfg(test)]
mod tests {
    use flashrack_target::AlignedBuf;

    use super::*;

    fn file() -> File {
        tempfile::tempfile().unwrap()
    }

    fn waiter(cancel: &AtomicBool) -> Waiter<'_> {
        Waiter {
            cancel,
            beat: &|| {},
        }
    }

    #[test]
    fn chunks_are_served_in_order_and_the_end_gives_the_manifest() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), 8192, Some(8192 + 100)).unwrap();
        feed.push(8192, false, 7).unwrap();
        feed.push(100, true, 9).unwrap();
        let second = match feed.wait_chunk(1, &waiter(&cancel), None) {
            Ok(Some(span)) => span,
            _ => panic!("chunk 1 was fed"),
        };
        assert_eq!((second.offset, second.len, second.zero), (8192, 100, true));
        feed.finish(Sha256Digest::of(b"x")).unwrap();
        assert!(matches!(
            feed.wait_chunk(2, &waiter(&cancel), None),
            Ok(None)
        ));
        let manifest = match feed.wait_end(&waiter(&cancel)) {
            Ok(manifest) => manifest,
            Err(_) => panic!("the feed completed"),
        };
        assert_eq!(manifest.size(), 8292);
        assert_eq!(manifest.chunk_fingerprint(0), Some(7));
        assert_eq!(feed.ended(), Some(Ok(())));
    }

    #[test]
    fn a_failed_feed_fails_every_wait_even_for_chunks_already_fed() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), 4096, None).unwrap();
        feed.push(4096, false, 1).unwrap();
        feed.fail("sha256 mismatch");
        for result in [
            feed.wait_chunk(0, &waiter(&cancel), None).map(|_| ()),
            feed.wait_end(&waiter(&cancel)).map(|_| ()),
        ] {
            match result {
                Err(WaitError::Source(EngineError::SourceFailed { detail })) => {
                    assert_eq!(detail, "sha256 mismatch")
                }
                _ => panic!("a failed feed answered"),
            }
        }
        // A late finish changes nothing.
        assert!(feed.finish(Sha256Digest::of(b"x")).is_err());
        assert_eq!(feed.ended(), Some(Err("sha256 mismatch".into())));
    }

    #[test]
    fn the_bytes_of_the_last_data_chunks_are_held_and_a_failure_lets_them_go() {
        let feed = ImageFeed::new();
        feed.begin(file(), 4096, None).unwrap();
        let chunk = |i: usize| vec![i as u8 + 1; 4096];
        let total = HELD_CHUNKS + 3;
        for i in 0..total {
            feed.push_data(&chunk(i), i as u128).unwrap();
        }
        // The zero chunk has no bytes to hold.
        feed.push(4096, true, 99).unwrap();
        assert_eq!(feed.chunks_fed(), total as u64 + 1);
        for i in 0..total {
            match feed.held(i as u64) {
                Some(bytes) => {
                    assert!(i >= total - HELD_CHUNKS, "chunk {i} is still held");
                    assert_eq!(&bytes[..], &chunk(i)[..], "chunk {i}");
                }
                None => assert!(i < total - HELD_CHUNKS, "chunk {i} is not held"),
            }
        }
        assert!(feed.held(total as u64).is_none());
        // A chunk that does not fit fails the feed, and a failed feed holds
        // nothing anyone could write.
        assert!(matches!(
            feed.push_data(&[1u8; 5000], 0),
            Err(FeedError::ChunkLength { .. })
        ));
        assert!((0..=total as u64).all(|i| feed.held(i).is_none()));
    }

    /// Bytes handed over and dropped: counts the drops, so a test sees when
    /// the feed has let the buffer go.
    struct Counted(AlignedBuf, Arc<std::sync::atomic::AtomicUsize>);

    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn handed_bytes_are_held_as_they_are_and_let_go_once_pushed_out() {
        let feed = ImageFeed::new();
        feed.begin(file(), 4096, None).unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut addresses = Vec::new();
        let total = HELD_CHUNKS + 2;
        for i in 0..total {
            let mut buf = AlignedBuf::zeroed(4096);
            buf.fill(i as u8 + 1);
            addresses.push(buf.as_ptr() as usize);
            feed.push_owned(Box::new(Counted(buf, dropped.clone())), i as u128)
                .unwrap();
        }
        // The held chunks are the buffers handed over, not copies; the older
        // ones were let go (back to whoever filled them).
        for (i, &address) in addresses.iter().enumerate().skip(total - HELD_CHUNKS) {
            let held = feed
                .held(i as u64)
                .unwrap_or_else(|| panic!("chunk {i} is held"));
            assert_eq!(held.as_ptr() as usize, address, "chunk {i} was copied");
            assert!(held.iter().all(|&b| b == i as u8 + 1));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), total - HELD_CHUNKS);
        // Bytes a target could not be written from with direct I/O are
        // copied into an aligned buffer.
        let unaligned = AlignedBuf::zeroed(8192);
        struct Offset(AlignedBuf);
        impl AsRef<[u8]> for Offset {
            fn as_ref(&self) -> &[u8] {
                &self.0[1..4097]
            }
        }
        let at = unaligned.as_ptr() as usize + 1;
        feed.push_owned(Box::new(Offset(unaligned)), 5).unwrap();
        let held = feed.held(total as u64).expect("the copy is held");
        assert_ne!(held.as_ptr() as usize, at);
        assert!((held.as_ptr() as usize).is_multiple_of(HANDED_ALIGN));
        // A chunk that does not fit fails the feed, which then lets every
        // handed buffer go.
        let big = AlignedBuf::zeroed(8192);
        assert!(matches!(
            feed.push_owned(Box::new(Counted(big, dropped.clone())), 0),
            Err(FeedError::ChunkLength { .. })
        ));
        assert!((0..=total as u64).all(|i| feed.held(i).is_none()));
        assert_eq!(dropped.load(Ordering::SeqCst), total + 1);
    }

    #[test]
    fn the_import_keeps_pace_with_its_nearest_follower_which_finds_every_chunk_held() {
        const CHUNK: usize = 8192;
        const CHUNKS: u64 = 64;
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), CHUNK as u32, None).unwrap();
        let follower = feed.follow();
        let straggler = feed.follow();
        std::thread::scope(|scope| {
            let producer = scope.spawn(|| {
                for i in 0..CHUNKS {
                    let data = vec![i as u8 + 1; CHUNK];
                    feed.push_data(&data, i as u128).unwrap();
                }
            });
            // It takes its first chunk and never asks again: a follower
            // further behind does not hold the import back.
            assert!(feed
                .wait_chunk(0, &waiter(&cancel), Some(&straggler))
                .is_ok_and(|span| span.is_some()));
            for i in 0..CHUNKS {
                let span = feed
                    .wait_chunk(i, &waiter(&cancel), Some(&follower))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panic!("chunk {i} is fed"));
                assert_eq!(span.fingerprint, u128::from(i));
                // Never further ahead than the chunks held: the one asked
                // for is among them.
                let fed = feed.chunks_fed();
                assert!(
                    fed <= i + HELD_CHUNKS as u64,
                    "{fed} fed when {i} was asked for"
                );
                let held = feed.held(i).unwrap_or_else(|| panic!("chunk {i} is held"));
                assert!(held.iter().all(|&b| b == i as u8 + 1));
            }
            producer.join().unwrap();
        });
        drop(straggler);
        feed.finish(Sha256Digest::of(b"x")).unwrap();
    }

    #[test]
    fn a_follower_that_leaves_lets_the_import_go_on() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), 8192, None).unwrap();
        let follower = feed.follow();
        std::thread::scope(|scope| {
            let producer = scope.spawn(|| {
                for i in 0..32u64 {
                    feed.push(8192, true, u128::from(i)).unwrap();
                }
            });
            assert!(feed
                .wait_chunk(1, &waiter(&cancel), Some(&follower))
                .is_ok_and(|span| span.is_some()));
            // Its write pass ends (a failed stick): the import is no longer
            // held back and feeds the rest.
            drop(follower);
            producer.join().unwrap();
        });
        assert_eq!(feed.chunks_fed(), 32);
    }

    #[test]
    fn a_cancelled_waiter_stops_waiting() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(true);
        assert!(matches!(
            feed.wait_chunk(0, &waiter(&cancel), None),
            Err(WaitError::Cancelled)
        ));
    }

    #[test]
    fn misuse_is_an_error_and_fails_the_feed() {
        let feed = ImageFeed::new();
        assert_eq!(
            feed.push(10, false, 0),
            Err(FeedError::OutOfOrder("a chunk before the beginning"))
        );
        assert!(feed.ended().is_some_and(|end| end.is_err()));

        let feed = ImageFeed::new();
        assert_eq!(
            feed.begin(file(), 1000, None),
            Err(FeedError::ChunkSize(1000))
        );

        let feed = ImageFeed::new();
        feed.begin(file(), 4096, None).unwrap();
        feed.push(100, false, 0).unwrap();
        assert!(matches!(
            feed.push(4096, false, 0),
            Err(FeedError::ChunkLength { index: 1, .. })
        ));

        let feed = ImageFeed::new();
        feed.begin(file(), 4096, Some(4096)).unwrap();
        feed.push(4096, false, 0).unwrap();
        assert_eq!(
            feed.push(4096, false, 0),
            Err(FeedError::Size {
                announced: 4096,
                fed: 8192
            })
        );

        let feed = ImageFeed::new();
        feed.begin(file(), 4096, Some(8192)).unwrap();
        feed.push(4096, false, 0).unwrap();
        assert_eq!(
            feed.finish(Sha256Digest::of(b"x")),
            Err(FeedError::Size {
                announced: 8192,
                fed: 4096
            })
        );
        assert!(feed.ended().is_some_and(|end| end.is_err()));
    }

    /// How many chunks the feed holds the bytes of.
    fn held_count(feed: &ImageFeed) -> usize {
        feed.lock().held.len()
    }

    /// Pushes `n` data chunks of `CHUNK` bytes on a thread of `scope`, as
    /// fast as the feed lets it.
    fn produce<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        feed: &'scope ImageFeed,
        n: u64,
    ) -> std::thread::ScopedJoinHandle<'scope, ()> {
        scope.spawn(move || {
            for i in 0..n {
                feed.push_data(&[i as u8 + 1; 8192], u128::from(i)).unwrap();
            }
        })
    }

    /// Waits (bounded) until the feed has been fed `n` chunks.
    fn until_fed(feed: &ImageFeed, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while feed.chunks_fed() < n {
            assert!(Instant::now() < deadline, "{} fed", feed.chunks_fed());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_follower_starting_keeps_its_first_chunks_held_until_it_asks_for_them() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), 8192, None).unwrap();
        // Registered when its attempt starts, before its stick is open.
        let follower = feed.follow();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 24);
            until_fed(&feed, HELD_CHUNKS as u64);
            // Its stick takes a while to open and probe: the import waits
            // with the first chunks held instead of passing them.
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(feed.chunks_fed(), HELD_CHUNKS as u64);
            for i in 0..24u64 {
                assert!(feed
                    .wait_chunk(i, &waiter(&cancel), Some(&follower))
                    .is_ok_and(|span| span.is_some()));
                let held = feed.held(i).unwrap_or_else(|| panic!("chunk {i} is held"));
                assert!(held.iter().all(|&b| b == i as u8 + 1));
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn a_follower_behind_the_lead_finds_its_chunks_held_up_to_the_bound() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        feed.begin(file(), 8192, None).unwrap();
        let lead = feed.follow();
        let behind = feed.follow();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 32);
            // Both begin; the one behind takes chunk 0 and then lingers.
            for follower in [&behind, &lead] {
                assert!(feed
                    .wait_chunk(0, &waiter(&cancel), Some(follower))
                    .is_ok_and(|span| span.is_some()));
            }
            // The lead runs ahead: the import keeps pace with it alone, and
            // the chunks the one behind needs next stay held while it is
            // fewer than MAX_HELD_CHUNKS behind (more than HELD_CHUNKS here).
            const LAG: u64 = 4;
            assert!(LAG as usize > HELD_CHUNKS && LAG as usize + HELD_CHUNKS <= MAX_HELD_CHUNKS);
            for i in 1..=LAG {
                assert!(feed
                    .wait_chunk(i, &waiter(&cancel), Some(&lead))
                    .is_ok_and(|span| span.is_some()));
            }
            until_fed(&feed, LAG + HELD_CHUNKS as u64);
            assert_eq!(held_count(&feed), LAG as usize + HELD_CHUNKS);
            assert!(feed.held(0).is_some(), "chunk 0 is held for the one behind");
            // Further ahead, the bound lets the oldest go, whoever needs it.
            for i in LAG + 1..20 {
                assert!(feed
                    .wait_chunk(i, &waiter(&cancel), Some(&lead))
                    .is_ok_and(|span| span.is_some()));
                assert!(held_count(&feed) <= MAX_HELD_CHUNKS);
            }
            assert!(feed.held(0).is_none(), "the bound let chunk 0 go");
            drop(lead);
            drop(behind);
            producer.join().unwrap();
        });
        // Nobody follows any more: the last HELD_CHUNKS are held.
        assert_eq!(held_count(&feed), HELD_CHUNKS);
    }

    #[test]
    fn a_follower_stuck_starting_holds_the_import_and_its_chunks_no_longer_than_the_give_up() {
        let feed = ImageFeed::new();
        feed.begin(file(), 8192, None).unwrap();
        let began = Instant::now();
        let stuck = feed.follow();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 32);
            // It never asks: the import goes on after PACE_GIVE_UP, and
            // holds no more than a feed nobody follows.
            producer.join().unwrap();
            assert!(began.elapsed() >= PACE_GIVE_UP);
        });
        assert_eq!(held_count(&feed), HELD_CHUNKS);
        assert!(feed.held(0).is_none());
        drop(stuck);
    }

    #[test]
    fn a_reservation_keeps_the_first_chunks_for_the_targets_to_come() {
        let feed = ImageFeed::new();
        let cancel = AtomicBool::new(false);
        // Before the import begins (a flash checking its targets).
        feed.reserve();
        feed.begin(file(), 8192, None).unwrap();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 16);
            until_fed(&feed, HELD_CHUNKS as u64);
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(feed.chunks_fed(), HELD_CHUNKS as u64);
            // The targets are started: the first takes the reservation's
            // place, and finds every chunk held.
            let follower = feed.follow();
            for i in 0..16u64 {
                assert!(feed
                    .wait_chunk(i, &waiter(&cancel), Some(&follower))
                    .is_ok_and(|span| span.is_some()));
                assert!(feed.held(i).is_some(), "chunk {i} is held");
            }
            producer.join().unwrap();
        });
        // A reservation withdrawn (the targets will not follow after all)
        // holds the import back no longer.
        let feed = ImageFeed::new();
        feed.reserve();
        feed.begin(file(), 8192, None).unwrap();
        let began = Instant::now();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 16);
            until_fed(&feed, HELD_CHUNKS as u64);
            feed.unreserve();
            producer.join().unwrap();
        });
        assert_eq!(feed.chunks_fed(), 16);
        assert!(began.elapsed() < PACE_GIVE_UP, "{:?}", began.elapsed());
    }

    #[test]
    fn a_reservation_held_until_let_go_outlasts_the_first_target_and_the_give_up() {
        let patience = PACE_GIVE_UP + Duration::from_secs(2);
        let feed = ImageFeed::new();
        feed.reserve_for(patience);
        feed.begin(file(), 8192, None).unwrap();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 16);
            until_fed(&feed, HELD_CHUNKS as u64);
            // A first target registers (a station's first stick started):
            // the reservation stays for the sticks still on their way, past
            // the give-up of a plain reservation and of the target itself.
            let first = feed.follow();
            std::thread::sleep(PACE_GIVE_UP + Duration::from_millis(500));
            assert!(feed.is_reserved());
            assert_eq!(feed.chunks_fed(), HELD_CHUNKS as u64);
            assert!(feed.held(0).is_some());
            // Every stick expected has started: let go, the import goes on.
            feed.unreserve();
            producer.join().unwrap();
            drop(first);
        });
        assert_eq!(feed.chunks_fed(), 16);
        // Never let go: the import goes on once its patience has run out.
        let feed = ImageFeed::new();
        feed.reserve_for(patience);
        feed.begin(file(), 8192, None).unwrap();
        let began = Instant::now();
        std::thread::scope(|scope| {
            let producer = produce(scope, &feed, 16);
            producer.join().unwrap();
        });
        assert_eq!(feed.chunks_fed(), 16);
        assert!(began.elapsed() >= patience, "{:?}", began.elapsed());
    }
}
