//! A stored zip entry whose sizes follow its data, found as it arrives.
//!
//! Stored (method 0) data does not mark its end, and its local header (bit 3
//! of its flags) gives no sizes: the end is where its data descriptor is.
//! [`StoredUntilDescriptor`] yields the entry's bytes as they arrive,
//! keeping a running CRC-32 and byte count, and holds back the last bytes
//! read ([`HOLD`]: the longest descriptor and the signature after it) until
//! it knows they are data. The entry ends at the first position where the
//! bytes read as a data descriptor (its signature optional; sizes of 4 bytes
//! each, or 8 when the local header had a zip64 field or the count needs
//! them, as [`check_descriptor`](crate::import) reads them) whose CRC-32 and
//! both sizes are the running ones, followed by the signature of a local
//! header or of the central directory.
//!
//! Data may hold such bytes by design (not by chance: sixteen bytes must
//! match values that depend on everything before them), and then the end
//! found is false. That is harmless: the entry so found is checked against
//! the central directory once the archive is whole, as every streamed entry
//! is, and disagrees with it (its size and CRC-32 are not the directory's),
//! so the import fails as corrupt before the feed ends, and no target that
//! followed it passes. An entry read past with a false end leaves the reader
//! in the middle of data, which then fails to parse or names an entry the
//! directory does not choose: the same failure, or the archive read from
//! its end.
//!
//! [`Rewindable`] is the archive's stream: what the scan read past the
//! entry's end is given back to it, so the descriptor and the records after
//! it are read from there, and nothing is read twice from the stream.

use std::io::{self, BufRead, Read};

use crate::import::{CENTRAL_HEADER_SIGNATURE, DATA_DESCRIPTOR_SIGNATURE, LOCAL_HEADER_SIGNATURE};

/// The most bytes after an end that decide it: a descriptor with its
/// signature and 8-byte sizes (24), and the next record's signature (4).
pub(crate) const HOLD: usize = 4 + 4 + 8 + 8 + 4;

/// How much is read off the stream at a time into the held bytes: the
/// memory the scan holds is bounded by this and [`HOLD`].
const WINDOW: usize = 64 << 10;

/// A buffered stream that takes back bytes a reader took past where it
/// should have stopped: they are read again, from memory, before the rest.
pub(crate) struct Rewindable<R> {
    /// Bytes given back, read from `at` on before `inner`.
    given_back: Vec<u8>,
    /// How much of `given_back` has been read again.
    at: usize,
    /// The stream.
    inner: io::BufReader<R>,
}

impl<R: Read> Rewindable<R> {
    /// `inner`, buffered `capacity` bytes at a time.
    pub(crate) fn new(capacity: usize, inner: R) -> Self {
        Self {
            given_back: Vec::new(),
            at: 0,
            inner: io::BufReader::with_capacity(capacity, inner),
        }
    }

    /// Puts `bytes` back in front of what is still to be read.
    fn give_back(&mut self, bytes: &[u8]) {
        let mut front = bytes.to_vec();
        front.extend_from_slice(&self.given_back[self.at..]);
        self.given_back = front;
        self.at = 0;
    }
}

impl<R: Read> Read for Rewindable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.given_back.len() {
            let n = buf.len().min(self.given_back.len() - self.at);
            buf[..n].copy_from_slice(&self.given_back[self.at..self.at + n]);
            self.consume(n);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl<R: Read> BufRead for Rewindable<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.at < self.given_back.len() {
            return Ok(&self.given_back[self.at..]);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if self.at < self.given_back.len() {
            self.at += amount;
            debug_assert!(self.at <= self.given_back.len(), "consumed more than given");
            if self.at >= self.given_back.len() {
                self.given_back = Vec::new();
                self.at = 0;
            }
            return;
        }
        self.inner.consume(amount);
    }
}

/// A stored entry's data, up to its data descriptor, as it arrives (see the
/// module's docs). Reads end (`Ok(0)`) at the descriptor; a stream that ends
/// with no descriptor found (one that lies, or an archive cut short) is
/// `InvalidData`.
/// [`StoredUntilDescriptor::finish`] then gives the bytes read past the end
/// back to the stream.
pub(crate) struct StoredUntilDescriptor<'a, R: Read> {
    /// The archive's stream, positioned after the entry's local header.
    input: &'a mut Rewindable<R>,
    /// The entry's name, for the error when no descriptor comes.
    name: &'a str,
    /// Whether the local header had a zip64 field: 8-byte sizes.
    zip64: bool,
    /// Bytes read off the stream and not yet yielded (`held[start..]`), at
    /// most [`WINDOW`] + [`HOLD`] of them.
    held: Vec<u8>,
    /// Where the bytes not yet yielded start in `held`.
    start: usize,
    /// No position of `held` before this is the entry's end: those bytes
    /// are data.
    scanned: usize,
    /// Where the entry's data ends in `held` (its descriptor starts), once
    /// found.
    end: Option<usize>,
    /// The CRC-32 of the bytes yielded.
    crc: crc32fast::Hasher,
    /// How many bytes were yielded.
    size: u64,
    /// The stream has ended.
    input_ended: bool,
}

impl<'a, R: Read> StoredUntilDescriptor<'a, R> {
    /// The data of the entry `name` whose local header (`zip64`: with a
    /// zip64 field) `input` has just read past.
    pub(crate) fn new(input: &'a mut Rewindable<R>, name: &'a str, zip64: bool) -> Self {
        Self {
            input,
            name,
            zip64,
            held: Vec::new(),
            start: 0,
            scanned: 0,
            end: None,
            crc: crc32fast::Hasher::new(),
            size: 0,
            input_ended: false,
        }
    }

    /// Once read to its end: the bytes read past it go back to the stream,
    /// and the entry's CRC-32, compressed size and size (the same: stored).
    pub(crate) fn finish(self) -> (u32, u64, u64) {
        let end = self.end.expect("read to its end before it is finished");
        debug_assert_eq!(self.start, end, "every byte before the end yielded");
        self.input.give_back(&self.held[end..]);
        (self.crc.finalize(), self.size, self.size)
    }

    /// Reads more of the stream into `held`, dropping what was yielded.
    fn fill(&mut self) -> io::Result<()> {
        self.held.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        let arrived = self.input.fill_buf()?;
        if arrived.is_empty() {
            self.input_ended = true;
            return Ok(());
        }
        let n = arrived.len().min(WINDOW);
        self.held.extend_from_slice(&arrived[..n]);
        self.input.consume(n);
        Ok(())
    }

    /// Moves `scanned` over every position of `held` that can be decided
    /// now (one with [`HOLD`] bytes after it, or any once the stream has
    /// ended), stopping at the first that is the entry's end.
    fn scan(&mut self) {
        let limit = if self.input_ended {
            self.held.len()
        } else {
            self.held.len().saturating_sub(HOLD - 1)
        };
        if limit <= self.scanned {
            return;
        }
        // An end is followed by its descriptor (12, 16, 20 or 24 bytes)
        // and a record's signature: look for the signatures first (rare in
        // data), then at the positions they would end a descriptor at.
        let mut candidates = Vec::new();
        let from = self.scanned + 12;
        let to = self.held.len().min(limit - 1 + HOLD);
        if from < to {
            for found in memchr::memmem::find_iter(&self.held[from..to], b"PK") {
                let at = from + found;
                if !next_record_at(&self.held, at) {
                    continue;
                }
                for before in [12, 16, 20, 24] {
                    if let Some(end) = at.checked_sub(before) {
                        if (self.scanned..limit).contains(&end) {
                            candidates.push(end);
                        }
                    }
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        for end in candidates {
            if self.is_end(end) {
                self.end = Some(end);
                self.scanned = end;
                return;
            }
        }
        self.scanned = limit;
    }

    /// Whether `held[at..]` is a data descriptor for the data before it,
    /// followed by a local header's or the central directory's signature.
    fn is_end(&self, at: usize) -> bool {
        let size = self.size + (at - self.start) as u64;
        let width = if self.zip64 || size > u64::from(u32::MAX) {
            8
        } else {
            4
        };
        let bytes = &self.held[at..];
        let number = |from: usize, len: usize| {
            let mut value = [0u8; 8];
            value[..len].copy_from_slice(&bytes[from..from + len]);
            u64::from_le_bytes(value)
        };
        // With its signature, and without (a CRC-32 that happens to read as
        // the signature is then tried as both).
        for signature in [4, 0] {
            let len = signature + 4 + 2 * width;
            if bytes.len() < len + 4 || !next_record_at(bytes, len) {
                continue;
            }
            if signature == 4 && number(0, 4) != u64::from(DATA_DESCRIPTOR_SIGNATURE) {
                continue;
            }
            if number(signature + 4, width) != size || number(signature + 4 + width, width) != size
            {
                continue;
            }
            // The sizes agree (rare in data): the CRC-32 of what is before.
            let mut crc = self.crc.clone();
            crc.update(&self.held[self.start..at]);
            if number(signature, 4) == u64::from(crc.finalize()) {
                return true;
            }
        }
        false
    }
}

/// Whether `bytes[at..]` starts with a local header's or the central
/// directory's signature.
fn next_record_at(bytes: &[u8], at: usize) -> bool {
    bytes.get(at..at + 4).is_some_and(|signature| {
        let signature = u32::from_le_bytes(signature.try_into().expect("4 bytes"));
        signature == LOCAL_HEADER_SIGNATURE || signature == CENTRAL_HEADER_SIGNATURE
    })
}

impl<R: Read> Read for StoredUntilDescriptor<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let ready = self.end.unwrap_or(self.scanned);
            if ready > self.start {
                let n = buf.len().min(ready - self.start);
                let bytes = &self.held[self.start..self.start + n];
                buf[..n].copy_from_slice(bytes);
                self.crc.update(bytes);
                self.size += n as u64;
                self.start += n;
                return Ok(n);
            }
            if self.end.is_some() {
                return Ok(0);
            }
            if self.input_ended {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "no data descriptor agrees with the stored data of {} (one that lies, \
                         or a truncated archive)",
                        self.name
                    ),
                ));
            }
            self.fill()?;
            self.scan();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data`, stored, then its descriptor (`signed`, `wide`) and `next`.
    fn entry(data: &[u8], signed: bool, wide: bool, next: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        if signed {
            out.extend_from_slice(b"PK\x07\x08");
        }
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        for _ in 0..2 {
            if wide {
                out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            } else {
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
        }
        out.extend_from_slice(next);
        out
    }

    /// Reads `stream` as a stored entry `size`-byte buffers at a time: its
    /// data, its CRC-32 and sizes, and what is left to read after it.
    fn scanned(stream: &[u8], zip64: bool, size: usize) -> io::Result<(Vec<u8>, u32, Vec<u8>)> {
        let mut input = Rewindable::new(size, stream);
        let mut entry = StoredUntilDescriptor::new(&mut input, "disk.img", zip64);
        let mut data = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        let (crc, compressed, len) = entry.finish();
        assert_eq!((compressed, len), (data.len() as u64, data.len() as u64));
        let mut rest = Vec::new();
        input.read_to_end(&mut rest)?;
        Ok((data, crc, rest))
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn the_entry_ends_at_its_descriptor_in_each_of_its_forms() {
        let data = data(200_000);
        for (signed, wide) in [(true, false), (false, false), (true, true), (false, true)] {
            for next in [b"PK\x03\x04rest".as_slice(), b"PK\x01\x02rest"] {
                let stream = entry(&data, signed, wide, next);
                for size in [1, 7, 4096, 1 << 20] {
                    let (found, crc, rest) = scanned(&stream, wide, size).unwrap();
                    assert_eq!(found, data, "{signed} {wide} {size}");
                    assert_eq!(crc, crc32fast::hash(&data));
                    let descriptor = stream.len() - data.len() - next.len();
                    assert_eq!(&rest[descriptor..], next);
                    assert_eq!(rest.len(), stream.len() - data.len());
                }
            }
        }
        // Empty data: its descriptor right away.
        let stream = entry(b"", true, false, b"PK\x01\x02");
        assert_eq!(scanned(&stream, false, 64).unwrap().0, b"");
    }

    #[test]
    fn a_descriptor_pattern_inside_the_data_that_does_not_match_is_data() {
        // The data holds a whole entry (a descriptor of its own part, with
        // the signature after it): its CRC-32 and sizes are not those of
        // the data before it in the outer entry, so it is read past.
        let inner = entry(&data(1000), true, false, b"PK\x03\x04");
        let mut outer = data(5000);
        outer.extend_from_slice(&inner);
        outer.extend_from_slice(&data(3000));
        // And a descriptor with the right sizes but a wrong CRC-32.
        let mut near = entry(&outer, true, false, b"PK\x03\x04");
        let crc_at = outer.len() + 4;
        near[crc_at] ^= 1;
        outer.extend_from_slice(&near[outer.len()..]);
        let stream = entry(&outer, false, false, b"PK\x01\x02");
        let (found, crc, _) = scanned(&stream, false, 4096).unwrap();
        assert_eq!(found, outer);
        assert_eq!(crc, crc32fast::hash(&outer));
    }

    #[test]
    fn a_descriptor_not_followed_by_a_record_is_data_and_none_at_all_fails() {
        let data = data(10_000);
        let mut stream = entry(&data, true, false, b"PK\x05\x06");
        stream.extend_from_slice(&[0; 64]);
        let error = scanned(&stream, false, 4096).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error
            .to_string()
            .contains("no data descriptor agrees with the stored data of disk.img"));
        // A descriptor whose size is right but 4 bytes wide where the local
        // header asked for 8 is not the end either.
        let narrow = entry(&data, true, false, b"PK\x01\x02");
        assert!(scanned(&narrow, true, 4096).is_err());
    }
}
