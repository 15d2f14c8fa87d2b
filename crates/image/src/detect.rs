//! Recognising the format of a file by its first bytes, never by its name: a
//! `.img` that is really gzip, or an `.xz` download saved as `.bin`, is read right.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How an imported file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// A raw image (`.img`, `.iso`): anything without a known magic number.
    Raw,
    /// gzip, possibly several members back to back.
    Gzip,
    /// xz, possibly several streams back to back.
    Xz,
    /// Zstandard, possibly several frames.
    Zstd,
    /// bzip2, possibly several streams (as `pbzip2` writes).
    Bzip2,
    /// A zip archive holding exactly one file.
    Zip,
}

/// How many leading bytes [`ImageFormat::detect`] looks at.
pub const MAGIC_LEN: usize = 6;

impl ImageFormat {
    /// The format of a file that starts with `head` (its first [`MAGIC_LEN`] bytes,
    /// or fewer if the file is shorter).
    pub fn detect(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Self::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            // The block size digit makes a false match on a raw image unlikely.
            [b'B', b'Z', b'h', b'1'..=b'9', ..] => Self::Bzip2,
            // A local file header, or the end record of an empty archive (which is
            // then rejected as holding no file rather than imported as raw bytes).
            [b'P', b'K', 0x03, 0x04, ..] | [b'P', b'K', 0x05, 0x06, ..] => Self::Zip,
            _ => Self::Raw,
        }
    }

    /// The lower-case name used in messages and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Zip => "zip",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_magic_number_is_recognised() {
        let cases: [(&[u8], ImageFormat); 7] = [
            (&[0x1f, 0x8b, 0x08, 0, 0, 0], ImageFormat::Gzip),
            (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], ImageFormat::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x00], ImageFormat::Zstd),
            (b"BZh91A", ImageFormat::Bzip2),
            (b"PK\x03\x04\x14\x00", ImageFormat::Zip),
            (b"PK\x05\x06\x00\x00", ImageFormat::Zip),
            (&[0xeb, 0x63, 0x90, 0, 0, 0], ImageFormat::Raw),
        ];
        for (head, format) in cases {
            assert_eq!(ImageFormat::detect(head), format, "{head:02x?}");
        }
    }

    #[test]
    fn near_misses_and_short_heads_are_raw() {
        for head in [
            &b""[..],
            b"\x1f",
            b"BZh",
            b"BZhx",
            b"PK",
            b"\xfd7zXZ\x01",
            b"\x28\xb5\x2f",
        ] {
            assert_eq!(ImageFormat::detect(head), ImageFormat::Raw, "{head:02x?}");
        }
    }

    #[test]
    fn serializes_as_lowercase_name() {
        let json = serde_json::to_string(&ImageFormat::Bzip2).unwrap();
        assert_eq!(json, "\"bzip2\"");
        assert_eq!(ImageFormat::Zstd.to_string(), "zstd");
    }
}
