//! Where the bytes come from.

use std::io;

/// Positioned reads of an image, the only way bytes reach the parsers.
pub trait ReadAt {
    /// The image's size in bytes.
    fn size(&self) -> u64;

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the
    /// image.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Reads exactly `len` bytes at `offset`, or `None` when the image ends
/// sooner or cannot be read.
pub(crate) fn bytes(image: &dyn ReadAt, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    match image.read_at(offset, &mut buf) {
        Ok(n) if n == len => Some(buf),
        _ => None,
    }
}

/// Little-endian u16 at `at`.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Little-endian u32 at `at`.
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// Little-endian u64 at `at`.
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

/// A label from fixed-width space- or NUL-padded bytes; `None` when empty.
pub(crate) fn label(b: &[u8]) -> Option<String> {
    let text: String = String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .chars()
        .filter(|&c| !flashrack_core::is_unprintable(c))
        .collect();
    (!text.is_empty()).then_some(text)
}
