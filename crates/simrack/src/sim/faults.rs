//! Faults: thresholds that fire after N bytes (removal, stall, hang, error), each
//! call cut at the first one it crosses, and bad blocks.

use std::io;
use std::sync::PoisonError;
use std::time::Instant;

use flashrack_target::TargetError;

use super::stick::{Inner, State};

/// A fault that fires at a byte threshold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    Remove,
    Stall,
    Hang,
    Error,
    /// An error that fires once (the transient write error).
    ErrorOnce,
}

/// The next piece of a call: how many bytes to transfer, the fault that fires after
/// them (if any), and when pacing lets the piece complete.
pub(super) struct Step {
    pub(super) bytes: usize,
    pub(super) trigger: Option<Trigger>,
    pub(super) deadline: Option<Instant>,
}

#[derive(Clone, Copy)]
pub(super) enum Direction {
    Write,
    Read,
}

impl Inner {
    /// Whether a write of `len` bytes at `offset` covers a bad block (a short
    /// final write covers the whole block it ends in, as it is padded to it).
    pub(super) fn covers_bad_block(&self, offset: u64, len: usize) -> bool {
        let block = self.block();
        let end = (offset + len as u64).div_ceil(block) * block;
        self.spec
            .write_fails_at
            .iter()
            .map(|bad| bad / block * block)
            .any(|bad| offset < bad + block && bad < end)
    }

    /// Plans the next piece of a call that still has `remaining` bytes to move.
    pub(super) fn next_step(
        &self,
        direction: Direction,
        remaining: usize,
    ) -> Result<Step, TargetError> {
        let spec = &self.spec;
        let mut state = self.lock();
        if state.removed {
            return Err(TargetError::Removed);
        }
        let state = &mut *state;
        let (done, rate, pacer, [remove, stall, hang, error], (stall_fired, hang_fired)) =
            match direction {
                Direction::Write => (
                    state.written,
                    spec.write_bytes_per_sec,
                    &mut state.write_pacer,
                    [
                        spec.remove_after_written,
                        spec.stall_after_written,
                        spec.hang_after_written,
                        spec.write_error_after,
                    ],
                    (state.write_stall_fired, state.write_hang_fired),
                ),
                Direction::Read => (
                    state.read,
                    spec.read_bytes_per_sec,
                    &mut state.read_pacer,
                    [
                        spec.remove_after_read,
                        spec.stall_after_read,
                        spec.hang_after_read,
                        spec.read_error_after,
                    ],
                    (state.read_stall_fired, state.read_hang_fired),
                ),
            };
        // A stall or a hang fires once, and none after a release.
        let candidates = [
            (remove, Trigger::Remove),
            (
                stall.filter(|_| !stall_fired && !state.released),
                Trigger::Stall,
            ),
            (
                hang.filter(|_| !hang_fired && !state.released),
                Trigger::Hang,
            ),
            (error, Trigger::Error),
            (
                match direction {
                    Direction::Write => spec
                        .write_error_once_after
                        .filter(|_| !state.write_error_once_fired),
                    Direction::Read => None,
                },
                Trigger::ErrorOnce,
            ),
        ];
        // The lowest threshold this call would cross fires first; on a tie the
        // order above decides (removal, then stall, then hang, then error).
        let mut bytes = remaining as u64;
        let mut trigger = None;
        for (threshold, kind) in candidates {
            if let Some(threshold) = threshold {
                let before = threshold.saturating_sub(done);
                if before < remaining as u64 && (trigger.is_none() || before < bytes) {
                    bytes = before;
                    trigger = Some(kind);
                }
            }
        }
        let deadline = match rate {
            Some(rate) if bytes > 0 => Some(pacer.reserve(bytes, rate, Instant::now())),
            _ => None,
        };
        match direction {
            Direction::Write => state.written += bytes,
            Direction::Read => state.read += bytes,
        }
        match (trigger, direction) {
            (Some(Trigger::Stall), Direction::Write) => state.write_stall_fired = true,
            (Some(Trigger::Stall), Direction::Read) => state.read_stall_fired = true,
            (Some(Trigger::Hang), Direction::Write) => state.write_hang_fired = true,
            (Some(Trigger::Hang), Direction::Read) => state.read_hang_fired = true,
            (Some(Trigger::ErrorOnce), _) => state.write_error_once_fired = true,
            _ => {}
        }
        Ok(Step {
            // `bytes <= remaining`, which is a usize.
            bytes: bytes as usize,
            trigger,
            deadline,
        })
    }

    /// Blocks until the stick is removed (an error) or released.
    pub(super) fn stall(&self) -> Result<(), TargetError> {
        self.hold(true)
    }

    /// Blocks until the stick is released, whether or not it is removed (as a
    /// call stuck in the kernel ignores the device going away); then fails as
    /// removed if it was.
    pub(super) fn hang(&self) -> Result<(), TargetError> {
        self.hold(false)
    }

    /// Holds the call, counted in `stalled`, until a release, or a removal too
    /// when `ends_on_removal`; fails as removed if the stick was.
    fn hold(&self, ends_on_removal: bool) -> Result<(), TargetError> {
        let mut state = self.lock();
        state.stalled += 1;
        self.wake.notify_all();
        let ended = |state: &State| state.released || (ends_on_removal && state.removed);
        while !ended(&state) {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.stalled -= 1;
        if state.removed {
            Err(TargetError::Removed)
        } else {
            Ok(())
        }
    }

    /// Acts on a fault after the bytes before it have been moved; `at` is the
    /// claimed offset of the first byte not moved.
    pub(super) fn fire(&self, trigger: Trigger, at: u64) -> Result<(), TargetError> {
        match trigger {
            Trigger::Remove => {
                self.remove();
                Err(TargetError::Removed)
            }
            Trigger::Stall => self.stall(),
            Trigger::Hang => self.hang(),
            Trigger::Error | Trigger::ErrorOnce => Err(TargetError::Io {
                offset: at,
                source: io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            }),
        }
    }
}
