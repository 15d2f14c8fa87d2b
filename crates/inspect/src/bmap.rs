//! Block maps in bmaptool's XML format (1.x and 2.x): which blocks of an
//! image hold data, with a checksum per range and one of the file itself.
//!
//! [`BlockMap::parse`] reads a map and checks the file's own checksum (2.x:
//! `BmapFileChecksum`, 1.3+: `BmapFileSHA1`); [`BlockMap::check_image`]
//! checks an image against it (its size, and every range's checksum). A map
//! that fails either is refused: a map that lies would make a sparse run skip
//! data.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use sha2::Digest as _;

use crate::read::ReadAt;

/// Why a block map is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmapError {
    /// The text is not a block map this parser understands.
    #[error("not a usable bmap file: {0}")]
    Malformed(String),
    /// The major version is not 1 or 2.
    #[error("bmap version {0} is not supported (1.x and 2.x are)")]
    Version(String),
    /// The file's own checksum does not match its content.
    #[error("the bmap file's own checksum does not match its content (edited or damaged)")]
    FileChecksum,
    /// The image's size is not the one the map describes.
    #[error("the bmap describes an image of {expected} bytes, the image has {actual}")]
    ImageSize {
        /// The map's `ImageSize`.
        expected: u64,
        /// The image's size.
        actual: u64,
    },
    /// A range's checksum does not match the image's bytes there.
    #[error("the image's blocks {first}-{last} do not match the bmap's checksum for them")]
    RangeChecksum {
        /// The range's first block.
        first: u64,
        /// The range's last block.
        last: u64,
    },
    /// A map without checksums for all its ranges leaves out bytes that are
    /// not zeros: nothing ties it to this image, and a sparse run would
    /// leave those bytes off the stick.
    #[error("the bmap carries no checksum for some of its ranges, so nothing ties it to this image, and it leaves out data that is not zeros (at byte {offset}): it is another image's map, or one that cannot be trusted to skip bytes")]
    UnmappedData {
        /// The first byte outside the map that is not zero.
        offset: u64,
    },
    /// The image could not be read.
    #[error("cannot read the image at byte {offset}: {reason}")]
    Read {
        /// Where.
        offset: u64,
        /// The system's words.
        reason: String,
    },
}

/// The checksum a map uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumKind {
    /// SHA-1 (format 1.x).
    Sha1,
    /// SHA-256 (format 2.x).
    Sha256,
}

/// A range of mapped blocks, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedRange {
    /// The first block.
    pub first: u64,
    /// The last block.
    pub last: u64,
    /// Its checksum (lower-case hex), if the map gives one.
    pub checksum: Option<String>,
}

/// A parsed block map whose own checksum (if it has one) matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMap {
    /// The format version (`2.0`, `1.4` …).
    pub version: String,
    /// The image's size in bytes.
    pub image_size: u64,
    /// The block size in bytes.
    pub block_size: u64,
    /// Blocks in the image.
    pub blocks_count: u64,
    /// The checksum the ranges carry.
    pub checksum: Option<ChecksumKind>,
    /// The mapped ranges, in order, not overlapping.
    pub ranges: Vec<MappedRange>,
}

impl fmt::Display for BlockMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bmap {}: {} of {} bytes mapped in {} ranges",
            self.version,
            self.mapped_bytes(),
            self.image_size,
            self.ranges.len()
        )
    }
}

impl BlockMap {
    /// Parses a bmap file and checks its own checksum.
    pub fn parse(text: &str) -> Result<Self, BmapError> {
        let body = strip_comments(text);
        let (version, _) = element_with_attrs(&body, "bmap")
            .and_then(|(attrs, _)| attr(attrs, "version").map(|v| (v, ())))
            .ok_or_else(|| {
                BmapError::Malformed(
                    if text.trim_start().starts_with("<?xml") || text.contains("<bmap") {
                        "no complete <bmap version=…> element (a file cut short?)".into()
                    } else {
                        "no <bmap version=…> element: not a bmap file".into()
                    },
                )
            })?;
        let major = version.split('.').next().unwrap_or_default();
        if major != "1" && major != "2" {
            return Err(BmapError::Version(version.to_string()));
        }
        // Each of its elements once: a second <BlockSize> (say) is a map
        // that says two things, and bmaptool refuses it too.
        for tag in [
            "ImageSize",
            "BlockSize",
            "BlocksCount",
            "MappedBlocksCount",
            "ChecksumType",
            "BmapFileChecksum",
            "BmapFileSHA1",
            "BlockMap",
        ] {
            let opened = body.matches(&format!("<{tag}>")).count()
                + body.matches(&format!("<{tag} ")).count();
            if opened > 1 {
                return Err(BmapError::Malformed(format!(
                    "<{tag}> given {opened} times"
                )));
            }
        }
        let number = |tag: &str| -> Result<u64, BmapError> {
            let text = element_text(&body, tag)
                .ok_or_else(|| BmapError::Malformed(format!("no <{tag}>")))?;
            text.trim().parse().map_err(|_| {
                BmapError::Malformed(format!("<{tag}> {:?} is not a number", text.trim()))
            })
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks_count = number("BlocksCount")?;
        let mapped_count = number("MappedBlocksCount")?;
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(BmapError::Malformed(format!(
                "block size {block_size} (a block size is a power of two)"
            )));
        }
        if blocks_count != image_size.div_ceil(block_size) {
            return Err(BmapError::Malformed(format!(
                "{blocks_count} blocks of {block_size} bytes cannot hold {image_size} bytes"
            )));
        }
        let checksum = match element_text(&body, "ChecksumType").map(str::trim) {
            Some("sha256") => Some(ChecksumKind::Sha256),
            Some("sha1") => Some(ChecksumKind::Sha1),
            Some(other) => {
                return Err(BmapError::Malformed(format!("checksum type {other:?}")));
            }
            None if major == "1" => Some(ChecksumKind::Sha1),
            None => None,
        };
        // From format 1.3 on a map carries its own checksum (BmapFileSHA1,
        // then BmapFileChecksum): one without it has lost what ties it
        // together, as bmaptool holds.
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(0);
        if (major == "2" || minor >= 3)
            && element_text(text, "BmapFileChecksum").is_none()
            && element_text(text, "BmapFileSHA1").is_none()
        {
            return Err(BmapError::Malformed(format!(
                "no <BmapFileChecksum>: a map of format {version} carries its own checksum"
            )));
        }
        // The file's own checksum, computed with its value replaced by zeros.
        for (tag, kind) in [
            ("BmapFileChecksum", checksum.unwrap_or(ChecksumKind::Sha256)),
            ("BmapFileSHA1", ChecksumKind::Sha1),
        ] {
            if let Some(value) = element_text(text, tag) {
                let value = value.trim();
                let zeroed = text.replacen(value, &"0".repeat(value.len()), 1);
                if !hex_eq(&digest(kind, zeroed.as_bytes()), value) {
                    return Err(BmapError::FileChecksum);
                }
            }
        }
        let map = element_text(&body, "BlockMap")
            .ok_or_else(|| BmapError::Malformed("no <BlockMap>".into()))?;
        let mut ranges: Vec<MappedRange> = Vec::new();
        let mut rest = map;
        while let Some(start) = rest.find("<Range") {
            let after = &rest[start + "<Range".len()..];
            let close = after
                .find('>')
                .ok_or_else(|| BmapError::Malformed("unterminated <Range".into()))?;
            let attrs = &after[..close];
            let end = after
                .find("</Range>")
                .ok_or_else(|| BmapError::Malformed("no </Range>".into()))?;
            let span = after[close + 1..end].trim();
            let (first, last) = match span.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (span, span),
            };
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| BmapError::Malformed(format!("range {span:?}")))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if last < first {
                return Err(BmapError::Malformed(format!(
                    "range {first}-{last} ends before it starts"
                )));
            }
            if last >= blocks_count {
                return Err(BmapError::Malformed(format!(
                    "range {first}-{last} outside the image's {blocks_count} blocks"
                )));
            }
            if ranges.last().is_some_and(|r| r.last >= first) {
                return Err(BmapError::Malformed(format!(
                    "range {first}-{last} overlaps or precedes the one before it"
                )));
            }
            let checksum = attr(attrs, "chksum")
                .or_else(|| attr(attrs, "sha1"))
                .map(|c| c.to_ascii_lowercase());
            ranges.push(MappedRange {
                first,
                last,
                checksum,
            });
            rest = &after[end + "</Range>".len()..];
        }
        let mapped: u64 = ranges.iter().map(|r| r.last - r.first + 1).sum();
        if mapped != mapped_count {
            return Err(BmapError::Malformed(format!(
                "MappedBlocksCount {mapped_count} but the ranges map {mapped} blocks"
            )));
        }
        Ok(Self {
            version: version.to_string(),
            image_size,
            block_size,
            blocks_count,
            checksum,
            ranges,
        })
    }

    /// The mapped ranges in bytes: `(offset, length)`, the last one ending at
    /// the image's end.
    pub fn byte_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|r| {
            let start = r.first * self.block_size;
            let end = ((r.last + 1) * self.block_size).min(self.image_size);
            (start, end - start)
        })
    }

    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.byte_ranges().map(|(_, len)| len).sum()
    }

    /// What the map says of an image's bytes, as one sha256 (lower-case hex):
    /// its image size, block size, checksum type and every range with its
    /// checksum, whatever the file's comments, layout or version string.
    /// Two files with the same digest make the same claims, so an image
    /// checked against one need not be read again for the other.
    pub fn content_digest(&self) -> String {
        let mut claims = format!(
            "flashrack-bmap-claims/1 {} {} {:?}\n",
            self.image_size, self.block_size, self.checksum
        );
        for range in &self.ranges {
            claims.push_str(&format!(
                "{} {} {}\n",
                range.first,
                range.last,
                range.checksum.as_deref().unwrap_or("-")
            ));
        }
        sha2::Sha256::digest(claims.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether every range carries a checksum: otherwise nothing but the
    /// image's size ties the map to the image, and the bytes it leaves out
    /// must be zeros.
    pub fn fully_checksummed(&self) -> bool {
        self.checksum.is_some() && self.ranges.iter().all(|r| r.checksum.is_some())
    }

    /// Checks `image` against the map: its size, and every range's checksum;
    /// for a map without a checksum for every range, that the bytes it
    /// leaves out are zeros. Reads every mapped byte once (and then the
    /// unmapped ones).
    pub fn check_image(&self, image: &dyn ReadAt) -> Result<(), BmapError> {
        let actual = image.size();
        if actual != self.image_size {
            return Err(BmapError::ImageSize {
                expected: self.image_size,
                actual,
            });
        }
        if !self.fully_checksummed() {
            self.check_unmapped_zeros(image)?;
        }
        let Some(kind) = self.checksum else {
            return Ok(());
        };
        let mut buf = vec![0u8; 1 << 20];
        for (range, (start, len)) in self.ranges.iter().zip(self.byte_ranges()) {
            let Some(expected) = &range.checksum else {
                continue;
            };
            let mut hasher = Hasher::new(kind);
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                let got =
                    image
                        .read_at(start + done, &mut buf[..n])
                        .map_err(|e| BmapError::Read {
                            offset: start + done,
                            reason: e.to_string(),
                        })?;
                if got != n {
                    return Err(BmapError::Read {
                        offset: start + done + got as u64,
                        reason: "the image ends early".into(),
                    });
                }
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            if !hex_eq(&hasher.finish(), expected) {
                return Err(BmapError::RangeChecksum {
                    first: range.first,
                    last: range.last,
                });
            }
        }
        Ok(())
    }
}

impl BlockMap {
    /// Reads the bytes of `image` the map leaves out: each must be zero
    /// ([`BmapError::UnmappedData`] names the first that is not).
    fn check_unmapped_zeros(&self, image: &dyn ReadAt) -> Result<(), BmapError> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for (start, len) in self.byte_ranges() {
            if start > at {
                gaps.push((at, start));
            }
            at = at.max(start + len);
        }
        if at < self.image_size {
            gaps.push((at, self.image_size));
        }
        let mut buf = vec![0u8; 1 << 20];
        for (start, end) in gaps {
            let mut done = start;
            while done < end {
                let n = (end - done).min(buf.len() as u64) as usize;
                let got = image
                    .read_at(done, &mut buf[..n])
                    .map_err(|e| BmapError::Read {
                        offset: done,
                        reason: e.to_string(),
                    })?;
                if got != n {
                    return Err(BmapError::Read {
                        offset: done + got as u64,
                        reason: "the image ends early".into(),
                    });
                }
                if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                    return Err(BmapError::UnmappedData {
                        offset: done + i as u64,
                    });
                }
                done += n as u64;
            }
        }
        Ok(())
    }
}

/// Checks an image against a [`BlockMap`] as its bytes go past, in order and
/// once: for an import, which reads every byte of the image anyway
/// ([`BlockMap::check_image`] reads the mapped bytes of a stored image
/// again). [`update`](Self::update) answers a range whose checksum fails as
/// soon as its last byte has gone past; [`finish`](Self::finish) checks the
/// size (a map of a longer image, whose ranges lie past this one's end, is
/// refused there).
pub struct StreamCheck {
    map: BlockMap,
    /// The mapped ranges in bytes, `(start, end)`, the last clipped to the
    /// map's image size.
    spans: Vec<(u64, u64)>,
    /// The first range not yet complete.
    next: usize,
    /// The digest of the part of `spans[next]` seen so far.
    hasher: Option<Hasher>,
    /// Bytes seen so far.
    seen: u64,
    /// Whether the bytes outside the map must be zeros: a map without a
    /// checksum for every range (nothing else ties it to the image).
    unmapped_zero: bool,
    /// The first span not yet behind the bytes seen (for that check).
    gap_next: usize,
    /// The first failure: every later call answers it again.
    failed: Option<BmapError>,
}

impl StreamCheck {
    /// A check of the image that is about to go past against `map`.
    pub fn new(map: BlockMap) -> Self {
        let spans = map.byte_ranges().map(|(o, l)| (o, o + l)).collect();
        let unmapped_zero = !map.fully_checksummed();
        Self {
            map,
            spans,
            next: 0,
            hasher: None,
            seen: 0,
            unmapped_zero,
            gap_next: 0,
            failed: None,
        }
    }

    /// Checks that the bytes of `bytes` (from image offset `start`) outside
    /// the map's spans are zeros.
    fn check_unmapped(&mut self, start: u64, bytes: &[u8]) -> Result<(), BmapError> {
        let end = start + bytes.len() as u64;
        let mut at = start;
        while at < end {
            // Spans wholly behind `at` are done with.
            while self
                .spans
                .get(self.gap_next)
                .is_some_and(|&(_, span_end)| span_end <= at)
            {
                self.gap_next += 1;
            }
            let (gap_end, next_at) = match self.spans.get(self.gap_next) {
                Some(&(span_start, span_end)) if span_start <= at => (at, span_end.min(end)),
                Some(&(span_start, _)) => (span_start.min(end), span_start.min(end)),
                None => (end, end),
            };
            if gap_end > at {
                let gap = &bytes[(at - start) as usize..(gap_end - start) as usize];
                if let Some(i) = gap.iter().position(|&b| b != 0) {
                    return Err(BmapError::UnmappedData {
                        offset: at + i as u64,
                    });
                }
            }
            at = next_at.max(gap_end);
        }
        Ok(())
    }

    /// The map being checked.
    pub fn map(&self) -> &BlockMap {
        &self.map
    }

    /// The image's next bytes (following those given before).
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), BmapError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let start = self.seen;
        let end = start + bytes.len() as u64;
        self.seen = end;
        if self.unmapped_zero {
            if let Err(error) = self.check_unmapped(start, bytes) {
                self.failed = Some(error.clone());
                return Err(error);
            }
        }
        let Some(kind) = self.map.checksum else {
            return Ok(());
        };
        while let Some(&(span_start, span_end)) = self.spans.get(self.next) {
            if span_start >= end {
                break;
            }
            let range = &self.map.ranges[self.next];
            let from = span_start.max(start);
            let to = span_end.min(end);
            if range.checksum.is_some() && from < to {
                self.hasher
                    .get_or_insert_with(|| Hasher::new(kind))
                    .update(&bytes[(from - start) as usize..(to - start) as usize]);
            }
            if to < span_end {
                break;
            }
            // The range is complete.
            let hasher = self.hasher.take();
            if let Some(expected) = &range.checksum {
                let digest = hasher.unwrap_or_else(|| Hasher::new(kind)).finish();
                if !hex_eq(&digest, expected) {
                    let error = BmapError::RangeChecksum {
                        first: range.first,
                        last: range.last,
                    };
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
            self.next += 1;
        }
        Ok(())
    }

    /// The range that failed, if one did (the pass stops there).
    pub fn failure(&self) -> Option<&BmapError> {
        self.failed.as_ref()
    }

    /// The image has ended: its size must be the map's (and so every range
    /// was inside it, and checked).
    pub fn finish(&self) -> Result<(), BmapError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.seen != self.map.image_size {
            return Err(BmapError::ImageSize {
                expected: self.map.image_size,
                actual: self.seen,
            });
        }
        debug_assert_eq!(self.next, self.spans.len());
        Ok(())
    }
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(kind: ChecksumKind) -> Self {
        match kind {
            ChecksumKind::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            ChecksumKind::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

fn digest(kind: ChecksumKind, bytes: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(kind);
    h.update(bytes);
    h.finish()
}

fn hex_eq(digest: &[u8], hex: &str) -> bool {
    let text: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    text.eq_ignore_ascii_case(hex.trim())
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// The attributes and text of the first `<tag …>…</tag>`.
fn element_with_attrs<'a>(text: &'a str, tag: &str) -> Option<(&'a str, &'a str)> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(at) = text[from..].find(&open) {
        let start = from + at + open.len();
        let next = text[start..].chars().next()?;
        if next == '>' || next.is_whitespace() {
            let close = text[start..].find('>')? + start;
            let end = text[close..].find(&format!("</{tag}>"))? + close;
            return Some((&text[start..close], &text[close + 1..end]));
        }
        from = start;
    }
    None
}

fn element_text<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    element_with_attrs(text, tag).map(|(_, body)| body)
}

fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let at = attrs.find(&key)? + key.len();
    let quote = attrs[at..].chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let value = &attrs[at + 1..];
    let end = value.find(quote)?;
    Some(&value[..end])
}
