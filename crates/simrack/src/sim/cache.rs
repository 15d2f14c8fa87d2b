//! The volatile cache in front of the medium: what a stick's controller (or its
//! USB bridge) keeps in RAM and answers reads from, and the reset that drops it.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use flashrack_target::TargetError;

use super::spec::{CacheMode, VolatileCache};
use super::stick::Inner;

/// The blocks a stick's cache holds.
#[derive(Default)]
pub(super) struct Cache {
    /// Cached blocks by block index: the sequence number of their last write
    /// and their bytes (one logical block each).
    blocks: BTreeMap<u64, (u64, Box<[u8]>)>,
    /// Block indices by the sequence number of their last write: the oldest
    /// first out.
    order: BTreeMap<u64, u64>,
    next_seq: u64,
}

impl Cache {
    /// Puts `bytes` (one block) in as block `index`, newest; returns the blocks
    /// pushed out to keep at most `limit` blocks, oldest first.
    fn insert(&mut self, index: u64, bytes: Box<[u8]>, limit: usize) -> Vec<(u64, Box<[u8]>)> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((old_seq, _)) = self.blocks.insert(index, (seq, bytes)) {
            self.order.remove(&old_seq);
        }
        self.order.insert(seq, index);
        let mut evicted = Vec::new();
        while self.blocks.len() > limit {
            let (_, oldest) = self.order.pop_first().expect("as many entries as blocks");
            let (_, bytes) = self
                .blocks
                .remove(&oldest)
                .expect("ordered blocks are cached");
            evicted.push((oldest, bytes));
        }
        evicted
    }

    fn forget(&mut self, index: u64) {
        if let Some((seq, _)) = self.blocks.remove(&index) {
            self.order.remove(&seq);
        }
    }
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `data` at the claimed `offset` through the cache, if the stick has
    /// one, to the medium.
    pub(super) fn cached_write(
        &self,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> Result<(), TargetError> {
        let Some(VolatileCache { bytes, mode }) = self.spec.cache else {
            return self.medium_write(file, offset, data);
        };
        let block = self.block();
        let limit = usize::try_from(bytes / block).unwrap_or(usize::MAX);
        let end = offset + data.len() as u64;
        if mode == CacheMode::WriteThrough {
            self.medium_write(file, offset, data)?;
        }
        let mut evicted = Vec::new();
        {
            let mut cache = self.cache();
            for index in offset / block..end.div_ceil(block) {
                let start = index * block;
                let (from, to) = (start.max(offset), (start + block).min(end));
                let part = &data[(from - offset) as usize..(to - offset) as usize];
                let piece: Box<[u8]> = if to - from == block {
                    part.into()
                } else if mode == CacheMode::WriteThrough {
                    // A partial block is left to the medium, which has it whole.
                    cache.forget(index);
                    continue;
                } else {
                    // A partial block (the short end of an image, or a call cut
                    // at a fault's threshold) goes over what the cache holds of
                    // it, or zeros, as a device pads a short write.
                    let mut whole = cache.blocks.get(&index).map_or_else(
                        || vec![0u8; block as usize].into_boxed_slice(),
                        |(_, bytes)| bytes.clone(),
                    );
                    whole[(from - start) as usize..(to - start) as usize].copy_from_slice(part);
                    whole
                };
                evicted.extend(cache.insert(index, piece, limit));
            }
        }
        // Write-through: the medium has it all already. Otherwise only what
        // the cache pushes out reaches the medium.
        if mode == CacheMode::LostOnReset {
            for (index, bytes) in evicted {
                self.medium_write(file, index * block, &bytes)?;
            }
        }
        Ok(())
    }

    /// Reads the claimed range at `offset` into `buf`: blocks still in the cache
    /// from it, the rest from the medium (corrupted bytes flipped on the way out).
    pub(super) fn cached_read(
        &self,
        file: &File,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TargetError> {
        let end = offset + buf.len() as u64;
        let mut from_medium: Vec<Range<u64>> = Vec::new();
        if self.spec.cache.is_some() && !buf.is_empty() {
            let block = self.block();
            let cache = self.cache();
            let mut pos = offset;
            for (&index, (_, bytes)) in cache.blocks.range(offset / block..=(end - 1) / block) {
                let start = index * block;
                let (from, to) = (start.max(offset), (start + block).min(end));
                if from > pos {
                    from_medium.push(pos..from);
                }
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
                pos = to;
            }
            if pos < end {
                from_medium.push(pos..end);
            }
        } else {
            from_medium.push(offset..end);
        }
        for range in from_medium {
            let piece = &mut buf[(range.start - offset) as usize..(range.end - offset) as usize];
            self.medium_read(file, range.start, piece)?;
        }
        // Flip the corrupted bytes on the way out; the medium stays intact.
        for &bad in &self.spec.corrupt_at {
            if (offset..end).contains(&bad) {
                buf[(bad - offset) as usize] ^= 0xff;
            }
        }
        Ok(())
    }

    /// A power cycle: the cache is dropped with whatever the medium never got.
    pub(super) fn reset(&self) -> Result<(), TargetError> {
        self.check_present()?;
        *self.cache() = Cache::default();
        self.resets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
