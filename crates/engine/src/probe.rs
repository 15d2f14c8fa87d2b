//! The capacity probe: finds how much a stick really stores.
//!
//! Fake sticks report a large capacity but keep only a fraction of it: writes past
//! the real size either wrap around onto the start (the high address lines are not
//! wired, so the stick wraps at a power of two) or vanish. Some hide it behind a
//! cache in their controller or bridge, which answers the read-back of recent
//! writes whatever the medium kept. The probe is f3probe's idea:
//!
//! 1. **Sample.** Unique marker blocks (one logical block each) at offset 0, at
//!    every power of two from 1 MiB, at evenly spaced points and at the last
//!    block, written from the highest offset down, so that a wrapping stick's
//!    aliases are overwritten by the lower markers written after them.
//! 2. **Defeat the stick's cache** ([`ProbeOptions::defeat_cache`]). The
//!    markers are flushed and the stick is
//!    reset where it can be ([`Target::reset`]): a power cycle drops a cache that
//!    hides losses. A stick that cannot be reset gets a filler of more than a
//!    cache bound ([`ProbeOptions::cache_bound`]) written after its markers, at
//!    its start (around the markers there), which pushes them out of its cache.
//!    A target without a cache of its own ([`Target::may_cache_writes`]: a
//!    loop device) gets no filler: there is nothing to push the markers out
//!    of, and the filler was 32 MiB written to it for nothing.
//! 3. **Read back** through a fresh handle. A marker that comes back replaced
//!    (zeros, another marker, stale data) is a bad block.
//! 4. **Bisect.** Between the highest good sample below the lowest bad one and
//!    that bad one, the next round samples [`ProbeOptions::samples_per_round`]
//!    evenly spaced blocks the same way, until the two are one block apart: the
//!    lowest bad block's offset is the stick's real usable size. A round divides
//!    the interval by `samples_per_round + 1`: 4 rounds after the first for a
//!    16 GB claim in 512-byte blocks.
//!
//! On an honest stick steps 1–3 run once: a few dozen single-block writes and
//! reads and a reset (or the filler). The markers lie outside the image only
//! where the image is smaller than the stick; inside it they (and the filler) are
//! overwritten by the image itself.
//!
//! A stick whose marker at offset 0 is gone after the reset keeps nothing it
//! was told, at any offset: it loses flushed writes at a power cycle (a
//! write-back cache that lies about its flush). That is reported as such
//! ([`ProbeResult::LosesFlushed`]), not as a real size of zero.
//!
//! **Limits.** A stick that wraps at a size that is not a power of two is caught
//! only where one of its aliases lands on a probed block. On a stick that cannot
//! be reset, a cache larger than the cache bound still hides a lie, and a real
//! size below the cache bound may be reported smaller than it is (the filler's
//! aliases overwrite low markers).

use std::sync::atomic::{AtomicBool, Ordering};

use flashrack_core::ProbeOperation;
use flashrack_target::{AlignedBuf, Target, TargetError, TargetWriter};

/// Evenly spaced markers of the first round, on top of the powers of two.
const SPREAD_MARKERS: u64 = 16;
/// The filler is written in pieces of at most this many bytes.
const FILLER_PIECE: usize = 1 << 20;
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
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            defeat_cache: false,
            cache_bound: 32 << 20,
            samples_per_round: 128,
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
        self.capacity = capacity;
        let offsets = probe_offsets(capacity, self.unit);
        if offsets.is_empty() {
            return Ok(ProbeResult::Honest);
        }
        let good = self.round(&offsets)?;
        let Some(first_bad) = good.iter().position(|&g| !g) else {
            return Ok(ProbeResult::Honest);
        };
        if first_bad == 0 {
            return Ok(ProbeResult::LosesFlushed);
        }
        let (mut lo, mut hi) = (offsets[first_bad - 1], offsets[first_bad]);
        while hi - lo > self.unit {
            if self.rounds >= MAX_ROUNDS {
                break;
            }
            let offsets = round_offsets(lo, hi, self.unit, self.options.samples_per_round);
            let good = self.round(&offsets)?;
            // The lowest bad sample bounds the real size; the highest good one
            // below it is the new lower end (a wrapping stick may answer right
            // above its first bad block).
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
    /// down, the filler, a flush, a reset where the target has one, and the
    /// read-back. Returns whether each marker came back.
    fn round(&mut self, offsets: &[u64]) -> Result<Vec<bool>, ProbeFailure> {
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
        if !self.options.defeat_cache {
            self.writer()
                .flush()
                .map_err(ProbeFailure::of(ProbeOperation::Flush))?;
        } else if self.target.can_reset() {
            self.writer()
                .flush()
                .map_err(ProbeFailure::of(ProbeOperation::Flush))?;
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
            self.check_cancel(ProbeOperation::Reset)?;
        } else {
            // A filler only pushes the markers out of a cache the target may
            // have; a loop device or a file has none (`may_cache_writes`).
            if self.target.may_cache_writes() {
                self.write_filler(offsets)?;
            }
            self.writer()
                .flush()
                .map_err(ProbeFailure::of(ProbeOperation::Flush))?;
        }
        let mut reader = self
            .target
            .open_reader()
            .map_err(ProbeFailure::of(ProbeOperation::Open))?;
        let mut back = AlignedBuf::zeroed(unit);
        let mut good = Vec::with_capacity(offsets.len());
        for &offset in offsets {
            fill_marker(&mut marker, self.nonce, offset);
            let n = reader
                .read_at(offset, &mut back)
                .map_err(ProbeFailure::of(ProbeOperation::Read))?;
            good.push(n == unit && !is_replaced(&back, &marker));
            self.check_cancel(ProbeOperation::Read)?;
        }
        Ok(good)
    }

    /// Writes zeros over the first `cache_bound` bytes of the stick (at most
    /// all of it), around this round's markers.
    fn write_filler(&mut self, markers: &[u64]) -> Result<(), ProbeFailure> {
        let end = (self.options.cache_bound.div_ceil(self.unit) * self.unit)
            .min(self.capacity / self.unit * self.unit);
        let zeros = AlignedBuf::zeroed(FILLER_PIECE.max(self.unit as usize));
        let mut at = 0u64;
        // The markers below the end of the filler, ascending.
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
