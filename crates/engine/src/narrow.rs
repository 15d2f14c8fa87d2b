//! Narrowing a failed write down to the block that fails.
//!
//! A direct-I/O write to a block device fails as a whole: the kernel answers
//! `EIO` for the whole 4 MiB request, not for the block of it that the stick
//! rejected, so the request's offset can lie megabytes before the bad block.
//! [`narrow_failed_write`] writes the failed request again in smaller pieces,
//! bisecting: each step writes the first half of what is left; if that half
//! fails, the failing block is in it, otherwise it is in the second half. It
//! ends at a single logical block that fails on its own.
//!
//! **Bounded work:** about `log2(request / block) + 1` writes (13 for 4 MiB of
//! 512-byte blocks), rewriting less than the request in all, and only bytes the
//! attempt was writing there anyway. With failures that stay where they are, the
//! block found is the *first* failing block of the request: a half that fails
//! holds it, and a half that succeeds holds none. The narrowing stops at the
//! first error that is not an I/O error (the stick went away, refuses writes) and
//! when the attempt is stopped.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use flashrack_target::{TargetError, TargetWriter};

/// What narrowing a failed write found.
#[derive(Debug)]
pub(crate) enum Narrowed {
    /// The first block of the request that fails when written on its own.
    Block {
        /// Its byte offset on the target.
        offset: u64,
        /// Its length: the logical block size (less for the image's last,
        /// partial block).
        len: usize,
        /// What the target said when it was written alone.
        source: io::Error,
    },
    /// Written again in pieces, the request succeeded: the failure did not
    /// repeat, and which block failed is unknown.
    NotRepeated,
    /// The attempt was stopped before the failing block was found.
    Cancelled,
    /// The target failed otherwise (removed, read-only …); that is the verdict.
    Target(TargetError),
}

/// Narrows a write of `data` at `offset` that failed at `failed_at` (the
/// target's account of where: at or after `offset`; the bytes before it were
/// accepted) down to the first failing block of `block` bytes. `offset` is
/// block-aligned and `data` aligned for direct I/O, as the failed write was;
/// only `data`'s end may fall inside a block (the image's last piece). `beat`
/// is called after every completed write (the attempt's heartbeat); `cancel`
/// is checked before every write.
pub(crate) fn narrow_failed_write(
    writer: &mut dyn TargetWriter,
    offset: u64,
    data: &[u8],
    failed_at: u64,
    block: usize,
    cancel: &AtomicBool,
    mut beat: impl FnMut(),
) -> Narrowed {
    let block = block.max(1);
    if data.is_empty() {
        return Narrowed::NotRepeated;
    }
    // The failure lies in [lo, hi), relative to `offset`.
    let accepted = usize::try_from(failed_at.saturating_sub(offset)).unwrap_or(usize::MAX);
    let mut lo = accepted.min(data.len() - 1) / block * block;
    let mut hi = data.len();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Narrowed::Cancelled;
        }
        let single = hi - lo <= block;
        let mid = if single {
            hi
        } else {
            lo + ((hi - lo) / 2 / block).max(1) * block
        };
        let result = writer.write_all_at(offset + lo as u64, &data[lo..mid]);
        beat();
        match result {
            Ok(()) if single => return Narrowed::NotRepeated,
            Ok(()) => lo = mid,
            Err(TargetError::Io { source, .. }) if single => {
                return Narrowed::Block {
                    offset: offset + lo as u64,
                    len: mid - lo,
                    source,
                }
            }
            Err(TargetError::Io { .. }) => hi = mid,
            Err(other) => return Narrowed::Target(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashrack_simrack::sim::{SimStick, SimStickSpec};
    use flashrack_target::{AlignedBuf, Target};

    fn data(len: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(len);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        buf
    }

    /// Narrows a failed write of `len` bytes at `offset` to a stick with bad
    /// blocks at `bad`; returns what was found and how many writes it took.
    fn narrow(bad: &[u64], offset: u64, len: usize, block: u32) -> (Narrowed, usize) {
        let dir = tempfile::tempdir().unwrap();
        let spec = bad.iter().fold(
            SimStickSpec::new("s", 64 << 20).block_size(block),
            |spec, &b| spec.write_fails_at(b),
        );
        let stick = SimStick::create(spec, dir.path().join("s.img")).unwrap();
        let mut writer = stick.open_writer().unwrap();
        let buf = data(len.next_multiple_of(4096));
        let failed = writer.write_all_at(offset, &buf[..len]).unwrap_err();
        let TargetError::Io { offset: at, .. } = failed else {
            panic!("expected an I/O error, got {failed:?}");
        };
        let mut writes = 0;
        let found = narrow_failed_write(
            &mut *writer,
            offset,
            &buf[..len],
            at,
            block as usize,
            &AtomicBool::new(false),
            || writes += 1,
        );
        (found, writes)
    }

    #[test]
    fn the_first_failing_block_of_a_request_is_found_in_a_bounded_number_of_writes() {
        let chunk = 4 << 20;
        for (bad, block) in [
            (vec![chunk as u64 + 3_700_001], 512),
            (vec![chunk as u64 + 3_700_001, chunk as u64 + 100_000], 512),
            (vec![chunk as u64], 4096),
            (vec![2 * chunk as u64 - 1], 4096),
        ] {
            let (found, writes) = narrow(&bad, chunk as u64, chunk, block);
            let first = bad.iter().min().unwrap() / u64::from(block) * u64::from(block);
            match found {
                Narrowed::Block { offset, len, .. } => {
                    assert_eq!((offset, len), (first, block as usize), "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            let bound = (chunk / block as usize).ilog2() as usize + 1;
            assert!(writes <= bound, "{writes} writes for {bad:?}");
        }
    }

    #[test]
    fn a_bad_block_in_the_partial_last_block_of_the_image_is_found() {
        let (found, _) = narrow(&[10_000], 0, 10_100, 512);
        match found {
            Narrowed::Block { offset, len, .. } => assert_eq!((offset, len), (9_728, 372)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failure_that_does_not_repeat_is_said_to_be_unlocated() {
        let dir = tempfile::tempdir().unwrap();
        let stick =
            SimStick::create(SimStickSpec::new("s", 1 << 20), dir.path().join("s.img")).unwrap();
        let mut writer = stick.open_writer().unwrap();
        let buf = data(64 << 10);
        let found = narrow_failed_write(
            &mut *writer,
            0,
            &buf,
            4096,
            512,
            &AtomicBool::new(false),
            || {},
        );
        assert!(matches!(found, Narrowed::NotRepeated), "{found:?}");
    }

    #[test]
    fn a_stopped_attempt_or_a_removed_stick_stops_the_narrowing() {
        let dir = tempfile::tempdir().unwrap();
        let stick = SimStick::create(
            SimStickSpec::new("s", 1 << 20).write_fails_at(60_000),
            dir.path().join("s.img"),
        )
        .unwrap();
        let mut writer = stick.open_writer().unwrap();
        let buf = data(64 << 10);
        let cancel = AtomicBool::new(true);
        let mut writes = 0;
        let found = narrow_failed_write(&mut *writer, 0, &buf, 0, 512, &cancel, || writes += 1);
        assert!(matches!(found, Narrowed::Cancelled), "{found:?}");
        assert_eq!(writes, 0);
        stick.remove();
        let found = narrow_failed_write(
            &mut *writer,
            0,
            &buf,
            0,
            512,
            &AtomicBool::new(false),
            || {},
        );
        assert!(
            matches!(found, Narrowed::Target(TargetError::Removed)),
            "{found:?}"
        );
    }
}
