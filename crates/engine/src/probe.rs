//! The capacity probe: finds how much a stick really stores.
//!
//! Fake sticks report a large capacity but keep only a fraction of it: writes past
//! the real size either wrap around onto the start (the high address lines are not
//! wired, so the stick wraps at a power of two) or vanish. Some hide it behind a
//! cache in their controller or bridge, which answers the read-back of recent
//! writes whatever the medium kept. The probe is f3probe's idea:
//!
//! 1. **Sample.** Unique marker blocks (one logical block each) at offset 0, at
//!    every power of two from 1 MiB, at evenly spaced points, at every
//!    multiple of the alias window (the *giants*, [`alias_window`]) and at
//!    the last block, written from the highest offset down, so that a
//!    wrapping stick's aliases are overwritten by the lower markers written
//!    after them.
//! 2. **Overwrite the aliases.** Zeros over the stick's first window (around
//!    the markers there): a stick that wraps at a real size `R` that is not a
//!    power of two stores a block `b >= R` at `b mod R`, which no other marker
//!    need hit, so `b` would read back its own marker. The first giant past
//!    `R` lands less than a window from 0, under the zeros, and reads back
//!    replaced: the first bad sample is the first one past `R`.
//! 3. **Defeat the stick's cache** ([`ProbeOptions::defeat_cache`]). The
//!    markers are flushed and the stick is
//!    reset where it can be ([`Target::reset`]): a power cycle drops a cache that
//!    hides losses. A stick that cannot be reset gets a filler of more than a
//!    cache bound ([`ProbeOptions::cache_bound`]) of zeros instead of the
//!    window (the larger of the two), which pushes the markers out of its
//!    cache. A target without a cache of its own
//!    ([`Target::may_cache_writes`]: a loop device, a file) gets neither the
//!    filler nor the giants and the window: it has no controller to cache or
//!    to wrap addresses (a loop device maps each one to the same offset of
//!    its backing file), and they were bytes written to it for nothing.
//! 4. **Read back** through a fresh handle. A marker that comes back replaced
//!    (zeros, another marker, stale data) is a bad block.
//! 5. **Bisect.** Between the highest good sample below the lowest bad one and
//!    that bad one, the next round samples [`ProbeOptions::samples_per_round`]
//!    evenly spaced blocks the same way, with zeros over the first `bad - good`
//!    bytes after them (where any sample past `R` lands), until the two are
//!    one block apart: the lowest bad block's offset is the stick's real
//!    usable size. A round divides the interval by `samples_per_round + 1`.
//!
//! On an honest stick steps 1–4 run once: a few dozen single-block markers,
//! a giant every window (512 for a 16 GB claim), the window's zeros (32 MiB
//! for 16 GB) and a reset (or the filler). The markers lie outside the image
//! only where the image is smaller than the stick; inside it they (and the
//! zeros) are overwritten by the image itself.
//!
//! A real size below the window: the window's own blocks past it alias onto
//! real blocks and may hide some, so a size found below the window is probed
//! again as if the stick claimed the window only (a smaller window), until
//! the size found is not below the window that found it.
//!
//! A stick whose marker at offset 0 is gone after the reset keeps nothing it
//! was told, at any offset: it loses flushed writes at a power cycle (a
//! write-back cache that lies about its flush). That is reported as such
//! ([`ProbeResult::LosesFlushed`]), not as a real size of zero.
//!
//! **Limits.** On a stick that cannot be reset, a cache larger than the cache
//! bound still hides a lie, and a real size below the cache bound may be
//! reported smaller than it is (the filler's aliases overwrite low markers;
//! the filler keeps its size whatever the span). A stick that keeps a block
//! at one address and answers it at another by some other rule than a
//! modulo, or that drops only some writes past its size, is caught where a
//! sample is replaced, not necessarily at its exact size.

use std::sync::atomic::{AtomicBool, Ordering};

use flashrack_core::ProbeOperation;
use flashrack_target::{AlignedBuf, Target, TargetError, TargetWriter};

/// Evenly spaced markers of the first round, on top of the powers of two.
const SPREAD_MARKERS: u64 = 16;
/// The filler is written in pieces of at most this many bytes.
const FILLER_PIECE: usize = 1 << 20;
/// Marks the second marker written at offset 0, the round's last write.
const LAST_WORD: u64 = 0x1A57_3012_D000_0000;
/// The most giants a first round has ([`giant_offsets`]).
pub const MAX_GIANTS: u64 = 4096;
/// The largest alias window ([`alias_window`]).
const MAX_WINDOW: u64 = 64 << 20;
/// More rounds than any capacity a u64 holds needs (64 halvings at worst).
const MAX_ROUNDS: usize = 64;

/// How the probe works against a stick's own cache, and how fast it narrows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Whether each round defeats the stick's own cache before reading its
    /// markers back: a reset where the target can be reset, else the filler.
    /// Off, the markers are read back at once (a cache inside the stick may
    /// answer them). Off by default (a test of the engine asks for it);
    /// `flashrack flash` turns it on, and the station with its
    /// `reset_before_verify` (its stick leaves and comes back under a new
    /// name while it prepares, which the station treats as part of the
    /// attempt, as before the read-back).
    pub defeat_cache: bool,
    /// Bytes written after each round's markers, before they are read back: more
    /// than the largest cache a stick is expected to hide its losses in.
    pub cache_bound: u64,
    /// Blocks sampled in each round of the bisection (at least 1).
    pub samples_per_round: usize,
    /// Whether the first round has its giants and each round its zeros over
    /// the alias window ([`alias_window`]), which catch a stick wrapping at
    /// a size that is not a power of two. On by default; off only to measure
    /// what they cost (the benchmark), since without them such a stick
    /// passes the probe.
    pub alias_window: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            defeat_cache: false,
            cache_bound: 32 << 20,
            samples_per_round: 128,
            alias_window: true,
        }
    }
}

/// The outcome of a probe.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// Every marker came back.
    Honest,
    /// The stick stores less than it claims.
    Lie {
        /// Its real usable size in bytes: the offset of the first block that
        /// does not keep what is written there (every block before it does).
        real_bytes: u64,
    },
    /// Even the marker at offset 0 was gone when read back after a reset: the
    /// stick loses what it acknowledged as flushed.
    LosesFlushed,
}

/// The offsets of the first round on a target of `capacity` bytes with markers
/// of `unit` bytes (a power of two): 0, the powers of two from 1 MiB, evenly
/// spaced points and the last block, each once, in ascending order.
pub fn probe_offsets(capacity: u64, unit: u64) -> Vec<u64> {
    if capacity < 2 * unit {
        return Vec::new();
    }
    let last = (capacity - unit) / unit * unit;
    let mut offsets = vec![0];
    // Doubling stops at the highest power of two a u64 holds: a claimed
    // capacity of 2^63 bytes or more must not wrap it to 0 and loop forever.
    let mut power = Some((1u64 << 20).max(unit));
    while let Some(p) = power.filter(|&p| p <= last) {
        offsets.push(p);
        power = p.checked_mul(2);
    }
    for i in 1..SPREAD_MARKERS {
        offsets.push(capacity / SPREAD_MARKERS * i / unit * unit);
    }
    offsets.push(last);
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

/// The blocks a bisection round samples strictly between the good block at
/// `good` and the bad one at `bad` (`bad - good > unit`), ascending.
pub fn round_offsets(good: u64, bad: u64, unit: u64, samples: usize) -> Vec<u64> {
    let span = u128::from(bad - good);
    let parts = samples.max(1) as u128 + 1;
    let mut offsets: Vec<u64> = (1..parts)
        .map(|i| good + ((span * i / parts) as u64) / unit * unit)
        .filter(|&o| o > good && o < bad)
        .collect();
    offsets.dedup();
    if offsets.is_empty() {
        // Fewer blocks in between than samples asked for: the next block.
        offsets.push(good + unit);
    }
    offsets
}

/// The alias window of a probe of `capacity` bytes in blocks of `unit`
/// bytes: the first-round giants are this far apart, and zeros are written
/// over this many bytes at the start of the stick after the markers. A
/// power of two, about 1/512 of the capacity, from 16 blocks up to 64 MiB.
///
/// Why: a stick that wraps at a real size `R` that is not a power of two
/// stores a block `b >= R` at `b mod R`, where nothing else the probe
/// writes may land: read back, `b` answers its own marker, and the lie goes
/// unseen. The first giant past `R` (they are a window apart) lands less
/// than a window from 0, on the zeros written after it, and reads back
/// replaced. The cost is a sequential write of the window and a single
/// block written and read per giant (512 up to 32 GiB, 4096 for 256 GiB).
pub fn alias_window(capacity: u64, unit: u64) -> u64 {
    (capacity / 512)
        .checked_next_power_of_two()
        .unwrap_or(MAX_WINDOW)
        .clamp(16 * unit, MAX_WINDOW.max(16 * unit))
}

/// The giants of a first round: every multiple of `window` up to `last` (the
/// last block's offset), ascending, at most [`MAX_GIANTS`] of them. With the
/// largest window that covers the first 256 GiB: a claim beyond (larger
/// than the guard's default limit) has its giants there only.
pub fn giant_offsets(window: u64, last: u64) -> impl Iterator<Item = u64> {
    (1..=MAX_GIANTS)
        .map(move |i: u64| i.saturating_mul(window))
        .take_while(move |&o| o < last)
}

/// The target failed the probe before it could tell: what the probe was doing,
/// and the target's error.
#[derive(Debug)]
pub struct ProbeFailure {
    /// What the probe was doing.
    pub operation: ProbeOperation,
    /// What the target said.
    pub error: TargetError,
}

impl ProbeFailure {
    fn of(operation: ProbeOperation) -> impl FnOnce(TargetError) -> Self {
        move |error| Self { operation, error }
    }
}

/// Fills `buf` with the marker for `offset`: unique per attempt (`nonce`) and per
/// offset, and not mistakable for zeros or for another marker.
fn fill_marker(buf: &mut [u8], nonce: u64, offset: u64) {
    let mut state = nonce ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
    for word in buf.chunks_exact_mut(8) {
        // xorshift64*: cheap, deterministic, never stuck at zero.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    buf[..8].copy_from_slice(&offset.to_le_bytes());
    buf[8..16].copy_from_slice(&nonce.to_le_bytes());
}

/// Whether `back` is a different block altogether (another marker, zeros, stale
/// data) rather than the marker with a few damaged bytes. A lying stick returns
/// the former; the latter is media corruption, which the verify pass reports with
/// its exact offset when it lies inside the image.
fn is_replaced(back: &[u8], marker: &[u8]) -> bool {
    let differing = back.iter().zip(marker).filter(|(a, b)| a != b).count();
    differing > marker.len() / 2
}

/// What a probe tells its attempt, and what stops it.
pub struct ProbeHooks<'a> {
    /// Checked between I/Os: a stop ends the probe with `Cancelled`.
    pub cancel: &'a AtomicBool,
    /// Called after every I/O, so that a long probe is not taken for a stall.
    pub beat: &'a dyn Fn(),
    /// Called before each reset of the stick: the station expects it to leave
    /// the system and come back (`EngineEventKind::Resetting`).
    pub announce_reset: &'a dyn Fn(),
    /// Called once the stick is back from its reset and open again (the
    /// attempt leaves its `resetting` stage).
    pub reset_over: &'a dyn Fn(),
}

/// One probe of one target: the writer it writes through (given back after a
/// reset, when the target is opened again), and how it reports liveness.
pub struct Prober<'a> {
    target: &'a dyn Target,
    /// `None` only between a reset and the open after it (or after a failure
    /// there).
    writer: Option<Box<dyn TargetWriter>>,
    /// Marker size and alignment: the logical block size.
    unit: u64,
    nonce: u64,
    options: ProbeOptions,
    hooks: ProbeHooks<'a>,
    /// How many rounds the probe took (for tests and figures).
    rounds: usize,
    /// What the target claims, once [`run`](Self::run) is called.
    capacity: u64,
}

impl<'a> Prober<'a> {
    /// A probe of `target` through its open `writer`, with markers of one
    /// logical block (`block`, a power of two of at least 16 bytes) unique to
    /// `nonce`.
    pub fn new(
        target: &'a dyn Target,
        writer: Box<dyn TargetWriter>,
        block: u64,
        nonce: u64,
        options: ProbeOptions,
        hooks: ProbeHooks<'a>,
    ) -> Self {
        Self {
            target,
            writer: Some(writer),
            unit: block.max(16),
            nonce,
            options,
            hooks,
            rounds: 0,
            capacity: 0,
        }
    }

    /// The writer, open again after the probe's resets; `None` when the probe
    /// failed while it was closed.
    pub fn into_writer(self) -> Option<Box<dyn TargetWriter>> {
        self.writer
    }

    /// How many rounds of markers the probe wrote.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Probes a target claiming `capacity` bytes: its real size, or that it
    /// keeps everything probed.
    pub fn run(&mut self, capacity: u64) -> Result<ProbeResult, ProbeFailure> {
        let mut span = capacity;
        let mut result = self.probe_span(span)?;
        // A real size below the alias window: the window's own blocks past
        // it alias onto real blocks, and may have hidden some of them (a
        // real size reported too small). The stick is probed again as if it
        // claimed the window only, whose own window is smaller, until the
        // real size is not below the window that found it. Not where the
        // filler is written (a stick that cannot be reset): the filler's
        // size is the cache bound's, whatever the span.
        while let ProbeResult::Lie { real_bytes } = result {
            let window = self.window(span);
            if real_bytes >= window || window >= span || self.filler_len() > 0 {
                break;
            }
            span = window;
            result = match self.probe_span(span)? {
                ProbeResult::Honest => ProbeResult::Lie { real_bytes },
                narrower => narrower,
            };
        }
        Ok(result)
    }

    /// One probe of the first `span` bytes of the stick, as if it claimed
    /// that much: the first round (the markers of [`probe_offsets`] and the
    /// giants every alias window), then the bisection.
    fn probe_span(&mut self, span: u64) -> Result<ProbeResult, ProbeFailure> {
        self.capacity = span;
        let window = self.window(span);
        let mut offsets = probe_offsets(span, self.unit);
        if offsets.is_empty() {
            return Ok(ProbeResult::Honest);
        }
        let last = *offsets.last().expect("not empty");
        if window > 0 {
            offsets.extend(giant_offsets(window, last));
        }
        offsets.sort_unstable();
        offsets.dedup();
        let good = self.round(&offsets, window)?;
        let Some(first_bad) = good.iter().position(|&g| !g) else {
            return Ok(ProbeResult::Honest);
        };
        if first_bad == 0 {
            return Ok(ProbeResult::LosesFlushed);
        }
        let (mut lo, mut hi) = (offsets[first_bad - 1], offsets[first_bad]);
        let mut rounds = 1;
        while hi - lo > self.unit {
            if rounds >= MAX_ROUNDS {
                break;
            }
            rounds += 1;
            let offsets = round_offsets(lo, hi, self.unit, self.options.samples_per_round);
            // The window covers every alias of a sample past the real size:
            // that sample less the real size, below `hi - lo`.
            let window = if self.uses_window() { hi - lo } else { 0 };
            let good = self.round(&offsets, window)?;
            // The lowest bad sample bounds the real size; the highest good one
            // below it is the new lower end.
            let bad_at = good.iter().position(|&g| !g);
            if let Some(at) = bad_at {
                hi = offsets[at];
            }
            if let Some(at) = good[..bad_at.unwrap_or(good.len())]
                .iter()
                .rposition(|&g| g)
            {
                lo = offsets[at];
            }
        }
        Ok(ProbeResult::Lie { real_bytes: hi })
    }

    /// Whether the rounds have giants and zeros over an alias window: when
    /// the options ask for them and the target may be a stick, with a
    /// controller that maps its addresses (`may_cache_writes`: not a loop
    /// device, which maps each address to the same offset of its backing
    /// file, nor a file).
    fn uses_window(&self) -> bool {
        self.options.alias_window && self.target.may_cache_writes()
    }

    /// The alias window of a span, or none (see [`uses_window`](Self::uses_window)).
    fn window(&self, span: u64) -> u64 {
        if self.uses_window() {
            alias_window(span, self.unit)
        } else {
            0
        }
    }

    fn writer(&mut self) -> &mut dyn TargetWriter {
        &mut **self.writer.as_mut().expect("open between resets")
    }

    fn check_cancel(&self, operation: ProbeOperation) -> Result<(), ProbeFailure> {
        (self.hooks.beat)();
        if self.hooks.cancel.load(Ordering::Relaxed) {
            return Err(ProbeFailure {
                operation,
                error: TargetError::Cancelled,
            });
        }
        Ok(())
    }

    /// One round: markers at `offsets` (ascending) written from the highest
    /// down, zeros over the first `window` bytes around them (the alias
    /// window, or the filler if longer), a flush, a reset where the target
    /// has one and the probe defeats caches, and the read-back. Returns
    /// whether each marker came back.
    fn round(&mut self, offsets: &[u64], window: u64) -> Result<Vec<bool>, ProbeFailure> {
        self.rounds += 1;
        let unit = self.unit as usize;
        let mut marker = AlignedBuf::zeroed(unit);
        for &offset in offsets.iter().rev() {
            fill_marker(&mut marker, self.nonce, offset);
            self.writer()
                .write_all_at(offset, &marker)
                .map_err(ProbeFailure::of(ProbeOperation::Write))?;
            self.check_cancel(ProbeOperation::Write)?;
        }
        // Written after the markers: a marker past a wrapping stick's real
        // size landed on a block of the window, which the zeros overwrite.
        self.write_zeros_below(window.max(self.filler_len()), offsets)?;
        // The marker at 0 once more, as the last write before the flush: a
        // stick that loses what it acknowledged loses this one, whatever the
        // zeros pushed through its cache before it (the older marker there
        // reads back as replaced). Only at 0, which no sample lies below:
        // any other sample written last would overwrite its own alias.
        let last_word = offsets.first() == Some(&0);
        if last_word {
            fill_marker(&mut marker, self.nonce ^ LAST_WORD, 0);
            self.writer()
                .write_all_at(0, &marker)
                .map_err(ProbeFailure::of(ProbeOperation::Write))?;
        }
        self.writer()
            .flush()
            .map_err(ProbeFailure::of(ProbeOperation::Flush))?;
        if self.options.defeat_cache && self.target.can_reset() {
            // A reset takes the stick away from every handle: the writer is
            // closed first and the stick opened again after it.
            self.writer = None;
            (self.hooks.announce_reset)();
            self.target
                .reset()
                .map_err(ProbeFailure::of(ProbeOperation::Reset))?;
            self.writer = Some(
                self.target
                    .open_writer()
                    .map_err(ProbeFailure::of(ProbeOperation::Reset))?,
            );
            (self.hooks.reset_over)();
            self.check_cancel(ProbeOperation::Reset)?;
        }
        let mut reader = self
            .target
            .open_reader()
            .map_err(ProbeFailure::of(ProbeOperation::Open))?;
        let mut back = AlignedBuf::zeroed(unit);
        let mut good = Vec::with_capacity(offsets.len());
        for &offset in offsets {
            let nonce = if last_word && offset == 0 {
                self.nonce ^ LAST_WORD
            } else {
                self.nonce
            };
            fill_marker(&mut marker, nonce, offset);
            let n = reader
                .read_at(offset, &mut back)
                .map_err(ProbeFailure::of(ProbeOperation::Read))?;
            good.push(n == unit && !is_replaced(&back, &marker));
            self.check_cancel(ProbeOperation::Read)?;
        }
        Ok(good)
    }

    /// The filler's length: the cache bound where the probe defeats caches
    /// on a stick that cannot be reset, else none.
    fn filler_len(&self) -> u64 {
        // A filler only pushes the markers out of a cache the target may
        // have; a loop device or a file has none (`may_cache_writes`).
        if self.options.defeat_cache && !self.target.can_reset() && self.target.may_cache_writes() {
            self.options.cache_bound
        } else {
            0
        }
    }

    /// Writes zeros over the first `len` bytes of the stick (at most all of
    /// the span probed), around this round's markers.
    fn write_zeros_below(&mut self, len: u64, markers: &[u64]) -> Result<(), ProbeFailure> {
        let end = (len.div_ceil(self.unit) * self.unit).min(self.capacity / self.unit * self.unit);
        let zeros = AlignedBuf::zeroed(FILLER_PIECE.max(self.unit as usize));
        let mut at = 0u64;
        // The markers below the end of the zeros, ascending.
        let mut skip = markers.iter().copied().filter(|&m| m < end).peekable();
        while at < end {
            if skip.peek() == Some(&at) {
                skip.next();
                at += self.unit;
                continue;
            }
            let stop = skip.peek().copied().unwrap_or(end);
            let len = (stop - at).min(zeros.len() as u64);
            self.writer()
                .write_all_at(at, &zeros[..len as usize])
                .map_err(ProbeFailure::of(ProbeOperation::Write))?;
            self.check_cancel(ProbeOperation::Write)?;
            at += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_start_at_zero_include_powers_of_two_and_the_last_block() {
        let capacity = 64u64 << 20;
        let offsets = probe_offsets(capacity, 512);
        assert_eq!(offsets[0], 0);
        assert!(offsets.contains(&(1 << 20)));
        assert!(offsets.contains(&(32 << 20)));
        assert!(offsets.contains(&(capacity - 512)));
        assert!(offsets.iter().all(|o| o % 512 == 0 && o + 512 <= capacity));
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "ascending, once each"
        );
    }

    #[test]
    fn a_claimed_capacity_of_2_to_the_63_or_more_is_probed_without_wrapping() {
        for capacity in [(1u64 << 63) + (1 << 20), u64::MAX / 4096 * 4096] {
            let offsets = probe_offsets(capacity, 4096);
            assert_eq!(offsets[0], 0);
            assert!(offsets.contains(&(1 << 63)), "{capacity}");
            assert_eq!(*offsets.last().unwrap(), capacity - 4096);
            assert!(offsets
                .iter()
                .all(|&o| o % 4096 == 0 && o <= capacity - 4096));
            // 0, 44 powers of two (2^20 ..= 2^63), 15 spread markers, the last block.
            assert!(offsets.len() <= 1 + 44 + 15 + 1, "{}", offsets.len());
        }
    }

    #[test]
    fn a_round_samples_strictly_between_its_ends_and_narrows_to_one_block() {
        let offsets = round_offsets(1 << 20, 2 << 20, 512, 127);
        assert_eq!(offsets.len(), 127);
        assert!(offsets
            .iter()
            .all(|&o| o > 1 << 20 && o < 2 << 20 && o % 512 == 0));
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        // Fewer blocks than samples: each block in between once.
        assert_eq!(round_offsets(0, 2048, 512, 128), [512, 1024, 1536]);
        assert_eq!(round_offsets(4096, 5120, 512, 1), [4608]);
        // No overflow near the top of a u64.
        let top = u64::MAX / 512 * 512;
        let offsets = round_offsets(top - (1 << 40), top, 512, 128);
        assert!(offsets.iter().all(|&o| o < top));
    }

    #[test]
    fn a_few_damaged_bytes_are_not_a_replaced_block() {
        let mut marker = vec![0u8; 4096];
        fill_marker(&mut marker, 9, 4096);
        let mut back = marker.clone();
        back[100] ^= 0xFF;
        assert!(!is_replaced(&back, &marker));
        assert!(is_replaced(&vec![0u8; 4096], &marker));
        let mut other = vec![0u8; 4096];
        fill_marker(&mut other, 9, 0);
        assert!(is_replaced(&other, &marker));
    }

    #[test]
    fn markers_differ_per_offset_and_per_nonce() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill_marker(&mut a, 1, 0);
        fill_marker(&mut b, 1, 512);
        assert_ne!(a, b);
        fill_marker(&mut b, 2, 0);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }
}
