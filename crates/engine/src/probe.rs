//! The capacity probe: catches sticks that claim more than they store.
//!
//! Fake sticks report a large capacity but keep only a fraction of it: writes past
//! the real size either wrap around onto the start (the high address lines are not
//! wired) or vanish. Before the image is written, the probe writes a unique marker
//! block at offset 0, at every power of two from 1 MiB up to the claimed capacity,
//! at evenly spaced points and at the last block, flushes, then reads every marker
//! back through a fresh handle. A wrapping stick overwrites the low markers with
//! the high ones (powers of two alias onto 0); a vanishing one returns something
//! else for the high ones. Either way a marker comes back wrong, and the attempt
//! fails as a capacity lie before any of the image is written.
//!
//! The markers lie outside the image only where the image is smaller than the
//! stick; inside it they are overwritten by the image itself.

use flashrack_core::ProbeOperation;
use flashrack_target::{AlignedBuf, Target, TargetError, TargetWriter};

/// Size of one marker block.
const MARKER_SIZE: usize = 4096;
/// Evenly spaced markers, on top of the powers of two.
const SPREAD_MARKERS: u64 = 16;

/// The outcome of a probe.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// Every marker came back.
    Honest,
    /// The marker at this offset did not come back.
    Lie {
        /// The first offset (in write order) whose marker was lost.
        offset: u64,
    },
}

/// The offsets probed on a target of `capacity` bytes, in write order.
pub fn probe_offsets(capacity: u64) -> Vec<u64> {
    let block = MARKER_SIZE as u64;
    if capacity < 2 * block {
        return Vec::new();
    }
    let last = (capacity - block) / block * block;
    let mut offsets = vec![0];
    // Doubling stops at the highest power of two a u64 holds: a claimed
    // capacity of 2^63 bytes or more must not wrap it to 0 and loop forever.
    let mut power = Some(1u64 << 20);
    while let Some(p) = power.filter(|&p| p <= last) {
        offsets.push(p);
        power = p.checked_mul(2);
    }
    for i in 1..SPREAD_MARKERS {
        offsets.push(capacity / SPREAD_MARKERS * i / block * block);
    }
    offsets.push(last);
    // Keep the first occurrence of each offset, in order: 0 first, so that a
    // wrapping stick overwrites it with a later marker.
    let mut seen = std::collections::BTreeSet::new();
    offsets.retain(|o| seen.insert(*o));
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

/// Writes the markers through `writer`, flushes, and reads them back through a
/// fresh reader of `target`. An error of the target comes back with what the
/// probe was doing, so that the verdict can say it was the probe.
pub fn probe_capacity(
    target: &dyn Target,
    writer: &mut dyn TargetWriter,
    capacity: u64,
    nonce: u64,
) -> Result<ProbeResult, ProbeFailure> {
    let offsets = probe_offsets(capacity);
    let mut marker = AlignedBuf::zeroed(MARKER_SIZE);
    for &offset in &offsets {
        fill_marker(&mut marker, nonce, offset);
        writer
            .write_all_at(offset, &marker)
            .map_err(ProbeFailure::of(ProbeOperation::Write))?;
    }
    writer
        .flush()
        .map_err(ProbeFailure::of(ProbeOperation::Flush))?;
    let mut reader = target
        .open_reader()
        .map_err(ProbeFailure::of(ProbeOperation::Open))?;
    let mut back = AlignedBuf::zeroed(MARKER_SIZE);
    for &offset in &offsets {
        fill_marker(&mut marker, nonce, offset);
        let n = reader
            .read_at(offset, &mut back)
            .map_err(ProbeFailure::of(ProbeOperation::Read))?;
        if n != MARKER_SIZE || is_replaced(&back, &marker) {
            return Ok(ProbeResult::Lie { offset });
        }
    }
    Ok(ProbeResult::Honest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_start_at_zero_include_powers_of_two_and_the_last_block() {
        let capacity = 64u64 << 20;
        let offsets = probe_offsets(capacity);
        assert_eq!(offsets[0], 0);
        assert!(offsets.contains(&(1 << 20)));
        assert!(offsets.contains(&(32 << 20)));
        assert!(offsets.contains(&(capacity - 4096)));
        assert!(offsets
            .iter()
            .all(|o| o % 4096 == 0 && o + 4096 <= capacity));
        let unique: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert_eq!(unique.len(), offsets.len());
    }

    #[test]
    fn a_claimed_capacity_of_2_to_the_63_or_more_is_probed_without_wrapping() {
        for capacity in [(1u64 << 63) + (1 << 20), u64::MAX / 4096 * 4096] {
            let offsets = probe_offsets(capacity);
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
    fn a_few_damaged_bytes_are_not_a_replaced_block() {
        let mut marker = vec![0u8; MARKER_SIZE];
        fill_marker(&mut marker, 9, 4096);
        let mut back = marker.clone();
        back[100] ^= 0xFF;
        assert!(!is_replaced(&back, &marker));
        assert!(is_replaced(&vec![0u8; MARKER_SIZE], &marker));
        let mut other = vec![0u8; MARKER_SIZE];
        fill_marker(&mut other, 9, 0);
        assert!(is_replaced(&other, &marker));
    }

    #[test]
    fn markers_differ_per_offset_and_per_nonce() {
        let mut a = vec![0u8; MARKER_SIZE];
        let mut b = vec![0u8; MARKER_SIZE];
        fill_marker(&mut a, 1, 0);
        fill_marker(&mut b, 1, 4096);
        assert_ne!(a, b);
        fill_marker(&mut b, 2, 0);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }
}
