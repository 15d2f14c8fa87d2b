//! The writer and the reader: a call moves its bytes piece by piece, each piece
//! to the next fault threshold, paced, and the fault fired after it.

use std::fs::File;
use std::io;
use std::sync::Arc;

use flashrack_target::{TargetError, TargetReader, TargetWriter};

use super::faults::Direction;
use super::medium::clamp;
use super::stick::Inner;

#[cfg(doc)]
use super::stick::SimStick;

/// A writer on a [`SimStick`].
pub(super) struct SimWriter {
    pub(super) inner: Arc<Inner>,
    pub(super) file: File,
}

impl TargetWriter for SimWriter {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        let inner = &*self.inner;
        inner.check_present()?;
        inner.check_alignment(offset, data, false)?;
        if data.is_empty() {
            return Ok(());
        }
        let capacity = inner.spec.capacity;
        if offset >= capacity {
            return Err(no_space(offset));
        }
        if inner.covers_bad_block(offset, data.len()) {
            return Err(TargetError::Io {
                offset,
                source: io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            });
        }
        // Like a block device: what fits is written, the rest is ENOSPC.
        let fits = clamp(data.len(), capacity - offset);
        let mut done = 0usize;
        while done < fits {
            let step = inner.next_step(Direction::Write, fits - done)?;
            let at = offset + done as u64;
            inner.cached_write(&self.file, at, &data[done..done + step.bytes])?;
            inner.pace(step.deadline)?;
            done += step.bytes;
            if let Some(trigger) = step.trigger {
                inner.fire(trigger, offset + done as u64)?;
            }
        }
        if fits < data.len() {
            return Err(no_space(capacity));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        // The backing file is the medium and the kernel keeps it coherent between
        // handles, so there is nothing to make durable; removal still shows.
        self.inner.check_present()
    }
}

impl Drop for SimWriter {
    fn drop(&mut self) {
        self.inner.lock().writer_open = false;
    }
}

fn no_space(offset: u64) -> TargetError {
    TargetError::Io {
        offset,
        source: io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
    }
}

/// A fresh reader on a [`SimStick`], with its own handle on the backing file.
pub(super) struct SimReader {
    pub(super) inner: Arc<Inner>,
    pub(super) file: File,
}

impl TargetReader for SimReader {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let inner = &*self.inner;
        inner.check_present()?;
        inner.check_alignment(offset, buf, true)?;
        let capacity = inner.spec.capacity;
        if offset >= capacity {
            return Ok(0);
        }
        let fits = clamp(buf.len(), capacity - offset);
        let mut done = 0usize;
        while done < fits {
            let step = inner.next_step(Direction::Read, fits - done)?;
            let at = offset + done as u64;
            inner.cached_read(&self.file, at, &mut buf[done..done + step.bytes])?;
            inner.pace(step.deadline)?;
            done += step.bytes;
            if let Some(trigger) = step.trigger {
                inner.fire(trigger, offset + done as u64)?;
            }
        }
        Ok(fits)
    }
}
