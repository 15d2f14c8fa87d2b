//! The medium: the backing file behind the claimed capacity (a fake stick's
//! wrapped or vanishing bytes), corrupted bytes on the way out, and the
//! alignment `O_DIRECT` demands.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use flashrack_target::TargetError;

use super::spec::{FakeCapacity, FakeMode};
use super::stick::Inner;

impl Inner {
    /// Splits a claimed range into pieces of the backing file: `(claimed offset,
    /// file offset or None when the bytes vanish, length)`.
    pub(super) fn map_range(&self, offset: u64, len: usize) -> Vec<(u64, Option<u64>, usize)> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let left = len - done;
            let (file_at, span) = match self.spec.fake {
                None => (Some(at), left),
                Some(FakeCapacity {
                    real_size,
                    mode: FakeMode::Wrap,
                }) => {
                    let pos = at % real_size;
                    (Some(pos), clamp(left, real_size - pos))
                }
                Some(FakeCapacity {
                    real_size,
                    mode: FakeMode::Vanish,
                }) => {
                    if at >= real_size {
                        (None, left)
                    } else {
                        (Some(at), clamp(left, real_size - at))
                    }
                }
            };
            pieces.push((at, file_at, span));
            done += span;
        }
        pieces
    }

    pub(super) fn medium_write(
        &self,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> Result<(), TargetError> {
        let mut done = 0usize;
        for (at, file_at, len) in self.map_range(offset, data.len()) {
            if let Some(file_at) = file_at {
                file.write_all_at(&data[done..done + len], file_at)
                    .map_err(|error| TargetError::from_io(at, error))?;
                self.medium_written.fetch_add(len as u64, Ordering::Relaxed);
            }
            done += len;
        }
        Ok(())
    }

    pub(super) fn medium_read(
        &self,
        file: &File,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        let mut done = 0usize;
        for (at, file_at, len) in self.map_range(offset, buf.len()) {
            let piece = &mut buf[done..done + len];
            match file_at {
                Some(file_at) => read_full(file, piece, file_at)
                    .map(|got| {
                        self.medium_read.fetch_add(got as u64, Ordering::Relaxed);
                    })
                    .map_err(|error| TargetError::from_io(at, error))?,
                None => piece.fill(0),
            }
            done += len;
        }
        Ok(())
    }

    /// Rejects what `O_DIRECT` on a real device rejects with `EINVAL`: an offset or
    /// a buffer address (and, for reads, a length) not aligned to the block size.
    pub(super) fn check_alignment(
        &self,
        offset: u64,
        buf: &[u8],
        check_len: bool,
    ) -> Result<(), TargetError> {
        let block = self.block();
        let misaligned = !offset.is_multiple_of(block)
            || (!buf.is_empty() && !(buf.as_ptr() as usize as u64).is_multiple_of(block))
            || (check_len && !(buf.len() as u64).is_multiple_of(block));
        if misaligned {
            Err(TargetError::Io {
                offset,
                source: io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()),
            })
        } else {
            Ok(())
        }
    }
}

/// `min(len, limit)` as a usize.
pub(super) fn clamp(len: usize, limit: u64) -> usize {
    usize::try_from(limit).map_or(len, |limit| len.min(limit))
}

/// Fills `buf` from the file at `pos`, with zeros past its end; returns how many
/// bytes came from the file.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}
