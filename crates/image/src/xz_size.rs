//! The uncompressed size an `.xz` file declares in its index, read before it
//! is decompressed, so that whoever follows the import (a flash writing while
//! it imports) knows the image's size from the start.
//!
//! Only a file that is exactly one stream (header, blocks, index, footer,
//! nothing after) whose index accounts for every byte between its header and
//! its index answers; anything else (several streams, stream padding, a
//! damaged or odd footer) answers `None` and the size is known at the end, as
//! for the other formats. The answer is a hint the follower checks at the
//! end (the decoder checks the index against the blocks, and the feed
//! checks the size fed against the size announced): a lie fails the import,
//! it cannot change an image.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Header and footer of an xz stream.
const STREAM_HEADER: u64 = 12;
const STREAM_FOOTER: u64 = 12;
const FOOTER_MAGIC: &[u8; 2] = b"YZ";
const HEADER_MAGIC: &[u8; 6] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
/// An index larger than this is not read (a GiB-sized image has a few
/// thousand blocks at most: a few tens of KiB of index).
const MAX_INDEX: u64 = 16 << 20;

/// The uncompressed size `file` (an xz file of `len` bytes) declares, if it
/// is one plain stream (see the module docs).
pub(crate) fn declared_size(file: &File, len: u64) -> Option<u64> {
    if len < STREAM_HEADER + STREAM_FOOTER {
        return None;
    }
    let mut header = [0u8; 6];
    file.read_exact_at(&mut header, 0).ok()?;
    let mut footer = [0u8; 12];
    file.read_exact_at(&mut footer, len - STREAM_FOOTER).ok()?;
    if &header != HEADER_MAGIC || &footer[10..12] != FOOTER_MAGIC {
        return None;
    }
    let backward = u32::from_le_bytes(footer[4..8].try_into().ok()?);
    let index_len = (u64::from(backward) + 1) * 4;
    if index_len > MAX_INDEX || index_len > len - STREAM_HEADER - STREAM_FOOTER {
        return None;
    }
    let index_at = len - STREAM_FOOTER - index_len;
    let mut index = vec![0u8; index_len as usize];
    file.read_exact_at(&mut index, index_at).ok()?;
    let (blocks, size) = parse_index(&index)?;
    // Every byte between the header and the index is a block the index
    // lists: one stream, nothing hidden.
    (blocks == index_at - STREAM_HEADER).then_some(size)
}

/// The bytes the blocks take (each padded to 4) and their uncompressed sizes,
/// summed, from an index (indicator, count, records, padding, CRC32).
fn parse_index(index: &[u8]) -> Option<(u64, u64)> {
    let (&indicator, mut rest) = index.split_first()?;
    if indicator != 0 {
        return None;
    }
    let count = read_varint(&mut rest)?;
    let (mut blocks, mut size) = (0u64, 0u64);
    for _ in 0..count {
        let unpadded = read_varint(&mut rest)?;
        let uncompressed = read_varint(&mut rest)?;
        blocks = blocks.checked_add(unpadded.checked_next_multiple_of(4)?)?;
        size = size.checked_add(uncompressed)?;
    }
    // Padding to a multiple of 4 and the CRC32: what is left must be just that.
    let used = index.len() - rest.len();
    (rest.len() == used.next_multiple_of(4) - used + 4).then_some((blocks, size))
}

/// An xz multibyte integer (7 bits a byte, least significant first, at most
/// 9 bytes).
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut options = lzma_rust2::XzOptions::with_preset(0);
        // Several blocks, as a multi-threaded xz writes them.
        options.set_block_size(std::num::NonZeroU64::new(100_000));
        let mut writer = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
        writer.write_all(data).unwrap();
        writer.finish().unwrap()
    }

    fn size_of(bytes: &[u8]) -> Option<u64> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        declared_size(&file, bytes.len() as u64)
    }

    #[test]
    fn one_stream_declares_its_size() {
        let data: Vec<u8> = (0..350_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(size_of(&xz(&data)), Some(data.len() as u64));
        assert_eq!(size_of(&xz(&[])), Some(0));
    }

    #[test]
    fn anything_but_one_plain_stream_declares_nothing() {
        let data = vec![5u8; 300_000];
        let one = xz(&data);
        // Two streams: the last index describes only the last one.
        let two = [one.clone(), xz(b"more")].concat();
        assert_eq!(size_of(&two), None);
        // Stream padding after the stream.
        assert_eq!(size_of(&[one.clone(), vec![0; 4]].concat()), None);
        // Cut short, or its footer damaged.
        assert_eq!(size_of(&one[..one.len() - 5]), None);
        let mut damaged = one.clone();
        let at = damaged.len() - 2;
        damaged[at] = b'Q';
        assert_eq!(size_of(&damaged), None);
        assert_eq!(size_of(b"not xz at all, not at all"), None);
    }
}
