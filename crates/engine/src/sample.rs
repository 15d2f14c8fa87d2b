//! Which chunks a sampled read-back checks.
//!
//! A sampled verify reads back a stated share of the image's chunks, chosen at
//! random for each stick, plus the first and the last chunk: an MBR and a GPT's
//! primary header and entries lie in the first, a GPT's backup in the last (the
//! extended boot records of logical MBR partitions are not sought out). The
//! choice is drawn from a seed with splitmix64 by selection sampling (Knuth's
//! algorithm S), so that the seed kept in the attempt's figures names exactly
//! the chunks that were checked: [`choose_chunks`] with the same seed, share
//! and chunk count gives them again.

/// The chunks a sampled read-back of `count` chunks checks at `percent`
/// percent, from `seed`: `true` for each chunk checked. At least
/// `ceil(count × percent / 100)` chunks, the first and the last always among
/// them; every chunk when `percent` is 100 or more.
pub fn choose_chunks(count: u64, percent: f64, seed: u64) -> Vec<bool> {
    let n = usize::try_from(count).expect("a chunk map fits in memory");
    if n == 0 {
        return Vec::new();
    }
    if percent.is_nan() || percent >= 100.0 {
        return vec![true; n];
    }
    let mut chosen = vec![false; n];
    chosen[0] = true;
    chosen[n - 1] = true;
    let wanted = ((count as f64) * percent.max(0.0) / 100.0).ceil() as u64;
    let middle = count.saturating_sub(2);
    let mut needed = wanted.saturating_sub(2).min(middle);
    let mut rng = SplitMix64(seed);
    // Algorithm S: chunk i of the `left` still to look at is taken with
    // probability needed / left, which takes exactly `needed` of them.
    for (i, left) in (1..=middle).zip((1..=middle).rev()) {
        if needed == 0 {
            break;
        }
        if rng.below(left) < needed {
            chosen[i as usize] = true;
            needed -= 1;
        }
    }
    chosen
}

/// A seed for a sampled read-back: different for every attempt.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut rng = SplitMix64(
        time ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed),
    );
    rng.next()
}

/// splitmix64: small, fast and good enough to spread a sample; its output for
/// a seed never changes, which is what makes a recorded seed repeatable.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `bound` (non-zero), by multiply-shift.
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_asked_for_is_taken_with_the_first_and_last_chunk() {
        for (count, percent, expected) in
            [(1000, 5.0, 50), (200, 5.0, 10), (3, 5.0, 2), (1, 5.0, 1)]
        {
            let chosen = choose_chunks(count, percent, 42);
            assert_eq!(chosen.len() as u64, count);
            assert!(chosen[0] && chosen[count as usize - 1]);
            assert_eq!(
                chosen.iter().filter(|&&c| c).count(),
                expected,
                "{count} {percent}"
            );
        }
        assert!(choose_chunks(10, 100.0, 1).iter().all(|&c| c));
        assert!(choose_chunks(0, 5.0, 1).is_empty());
    }

    #[test]
    fn a_seed_names_its_chunks_and_another_seed_others() {
        let a = choose_chunks(4096, 5.0, 7);
        assert_eq!(a, choose_chunks(4096, 5.0, 7));
        assert_ne!(a, choose_chunks(4096, 5.0, 8));
        // Spread over the image, not bunched at its start.
        let last_half = a[2048..4095].iter().filter(|&&c| c).count();
        assert!((40..=165).contains(&last_half), "{last_half}");
    }
}
