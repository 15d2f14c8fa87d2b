//! UDF (ECMA-167 / OSTA UDF 1.02–2.01): from the anchor to the file set's
//! root directory, and a path lookup in it. Windows installer ISOs keep their
//! files in UDF only (the ISO 9660 side holds a `README.TXT` or nothing), so
//! `sources/install.wim` is looked up here when the ISO 9660 tree does not
//! have it.
//!
//! Read: the anchor volume descriptor pointer (sector 256), the main volume
//! descriptor sequence (partition descriptors, the logical volume descriptor
//! with its type-1 partition maps and the file set's address), the file set
//! descriptor, file entries and extended file entries (short, long and
//! embedded allocation descriptors), and file identifier descriptors. Every
//! descriptor's tag (identifier and checksum) is checked. Not read: virtual
//! and sparable partitions, and the metadata partition of UDF 2.50 and later
//! (Windows ISOs use 1.02, `mkudffs` 2.01 by default): such a volume's files
//! are not looked up, and its problem says so.

use crate::model::Piece;
use crate::read::{bytes, le16, le32, le64, ReadAt};

/// The most descriptors of the volume descriptor sequence read.
const MAX_SEQUENCE: u32 = 64;
/// The most bytes of one directory or file read.
const MAX_READ: u64 = 1 << 20;
/// The most allocation descriptors followed for one file.
const MAX_EXTENTS: usize = 64;

/// A UDF volume: its label and where its root directory is.
pub(crate) struct Volume<'a> {
    image: &'a dyn ReadAt,
    block: u64,
    /// Partition starts (in blocks) by partition reference number (the
    /// index of the logical volume's partition map).
    partitions: Vec<u64>,
    root: Icb,
    /// The logical volume identifier.
    pub label: Option<String>,
}

/// A long allocation descriptor: an extent in a partition.
#[derive(Debug, Clone, Copy)]
struct Icb {
    block: u32,
    partition: u16,
}

/// A file or directory found by a lookup.
pub(crate) struct Node {
    icb: Icb,
    /// Whether it is a directory.
    pub dir: bool,
}

impl<'a> Volume<'a> {
    /// Opens the UDF volume of `image`, or says why it cannot be read.
    pub(crate) fn open(image: &'a dyn ReadAt) -> Result<Self, String> {
        // The anchor is at sector 256 of the medium; its size is the logical
        // block size (2048 on optical media; 512 or 4096 on other media).
        let (block, anchor) = [2048u64, 512, 4096]
            .into_iter()
            .find_map(|b| {
                let d = bytes(image, 256 * b, b as usize)?;
                tag_ok(&d, 2, 256).then_some((b, d))
            })
            .ok_or("no anchor volume descriptor at sector 256")?;
        let seq_len = le32(&anchor, 16);
        let seq_at = u64::from(le32(&anchor, 20));
        let mut starts: Vec<(u16, u64)> = Vec::new();
        let mut lvd = None;
        for i in 0..(seq_len / block as u32).min(MAX_SEQUENCE) {
            let at = seq_at + u64::from(i);
            let Some(d) = bytes(image, at * block, block as usize) else {
                break;
            };
            match le16(&d, 0) {
                5 if tag_ok(&d, 5, at) => starts.push((le16(&d, 22), u64::from(le32(&d, 188)))),
                6 if tag_ok(&d, 6, at) => lvd = Some(d),
                8 => break, // terminating descriptor
                _ => {}
            }
        }
        let lvd = lvd.ok_or("no logical volume descriptor")?;
        if u64::from(le32(&lvd, 212)) != block {
            return Err(format!(
                "logical block size {} differs from the medium's {block}",
                le32(&lvd, 212)
            ));
        }
        let label = dstring(&lvd[84..212]);
        let map_table_len = le32(&lvd, 264) as usize;
        let map_count = le32(&lvd, 268);
        let maps = lvd
            .get(440..440 + map_table_len)
            .ok_or("partition maps past the descriptor's end")?;
        let mut partitions = Vec::new();
        let mut at = 0;
        for _ in 0..map_count {
            let (kind, len) = (
                *maps.get(at).ok_or("short partition map")?,
                usize::from(*maps.get(at + 1).ok_or("short partition map")?),
            );
            if kind != 1 || len != 6 {
                return Err(
                    "a virtual, sparable or metadata partition (UDF 2.50 or later) is not read"
                        .into(),
                );
            }
            let number = le16(maps, at + 4);
            let start = starts
                .iter()
                .find(|(n, _)| *n == number)
                .map(|(_, s)| *s)
                .ok_or(format!("no partition descriptor for partition {number}"))?;
            partitions.push(start);
            at += len;
        }
        let fsd_at = long_ad(&lvd[248..264]);
        let volume = Volume {
            image,
            block,
            partitions,
            root: fsd_at,
            label,
        };
        let fsd_block = volume
            .absolute(fsd_at)
            .ok_or("file set outside its partition")?;
        let fsd = bytes(image, fsd_block * block, block as usize)
            .ok_or("file set descriptor past the end of the image")?;
        if !tag_ok(&fsd, 256, u64::from(fsd_at.block)) {
            return Err("no file set descriptor where the logical volume says".into());
        }
        Ok(Volume {
            root: long_ad(&fsd[400..416]),
            ..volume
        })
    }

    /// The node at `path` (components compared without case).
    pub(crate) fn lookup(&self, path: &[&str]) -> Option<Node> {
        let mut here = Node {
            icb: self.root,
            dir: true,
        };
        for want in path {
            if !here.dir {
                return None;
            }
            here = self.find_in(&here, want)?;
        }
        Some(here)
    }

    /// Up to `max` bytes of a file's content.
    pub(crate) fn read(&self, node: &Node, max: u64) -> Option<Vec<u8>> {
        self.contents(node.icb, max)
    }

    fn absolute(&self, icb: Icb) -> Option<u64> {
        let start = self.partitions.get(usize::from(icb.partition))?;
        Some(start + u64::from(icb.block))
    }

    fn find_in(&self, dir: &Node, want: &str) -> Option<Node> {
        let data = self.contents(dir.icb, MAX_READ)?;
        fids(&data)
            .into_iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(want))
            .map(|(_, icb, dir)| Node { icb, dir })
    }

    /// The content of the file whose (extended) file entry is at `icb`.
    fn contents(&self, icb: Icb, max: u64) -> Option<Vec<u8>> {
        let (_, pieces) = self.pieces(icb, max)?;
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Embedded(b) => out.extend(b),
                Piece::At { offset, len } => out.extend(bytes(self.image, offset, len as usize)?),
                Piece::Zeros(len) => out.resize(out.len() + len as usize, 0),
            }
        }
        Some(out)
    }

    /// Where the first `max` bytes of the file at `icb` are, and its size.
    fn pieces(&self, icb: Icb, max: u64) -> Option<(u64, Vec<Piece>)> {
        let block = self.absolute(icb)?;
        let entry = bytes(self.image, block * self.block, self.block as usize)?;
        let (info_len, ea_len, ad_len, ad_at) = match le16(&entry, 0) {
            261 if tag_ok(&entry, 261, u64::from(icb.block)) => (
                le64(&entry, 56),
                le32(&entry, 168) as usize,
                le32(&entry, 172) as usize,
                176,
            ),
            266 if tag_ok(&entry, 266, u64::from(icb.block)) => (
                le64(&entry, 56),
                le32(&entry, 208) as usize,
                le32(&entry, 212) as usize,
                216,
            ),
            _ => return None,
        };
        let ads = entry.get(ad_at + ea_len..ad_at + ea_len + ad_len)?;
        let want = info_len.min(max);
        let flags = le16(&entry, 16 + 18);
        let mut pieces = Vec::new();
        let mut have = 0u64;
        match flags & 7 {
            // Embedded: the content is where the descriptors would be.
            3 => pieces.push(Piece::Embedded(ads.get(..want as usize)?.to_vec())),
            kind @ (0 | 1) => {
                let step = if kind == 0 { 8 } else { 16 };
                for ad in ads.chunks_exact(step).take(MAX_EXTENTS) {
                    if have >= want {
                        break;
                    }
                    let raw_len = le32(ad, 0);
                    let (len, extent_type) = (raw_len & 0x3FFF_FFFF, raw_len >> 30);
                    if len == 0 {
                        break;
                    }
                    let at = if kind == 0 {
                        Icb {
                            block: le32(ad, 4),
                            partition: icb.partition,
                        }
                    } else {
                        long_ad(ad)
                    };
                    let take = u64::from(len).min(want - have);
                    match extent_type {
                        0 => pieces.push(Piece::At {
                            offset: self.absolute(at)?.checked_mul(self.block)?,
                            len: take,
                        }),
                        // Allocated and not recorded, or not allocated: zeros.
                        1 | 2 => pieces.push(Piece::Zeros(take)),
                        _ => return None, // a continuation of descriptors: not followed
                    }
                    have += take;
                }
                if have < want {
                    return None; // descriptors that end before the file does
                }
            }
            _ => return None,
        }
        Some((info_len, pieces))
    }

    /// Every file and directory of the tree, depth first, with where each
    /// file's bytes are: for copying a volume's files out (the bootable
    /// layout). A directory that cannot be read, a file whose descriptors
    /// are not understood (continuations, a strategy other than 4) or a tree
    /// past `max_entries` entries is an error naming the path.
    pub(crate) fn walk(&self, max_entries: usize) -> Result<Vec<crate::model::TreeEntry>, String> {
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), self.root, 0u32)];
        let mut seen = std::collections::HashSet::new();
        while let Some((path, icb, depth)) = pending.pop() {
            if depth > 64 || !seen.insert((icb.partition, icb.block)) {
                return Err(format!(
                    "the directory {path:?} loops back or nests too deep"
                ));
            }
            let data = self
                .contents(icb, MAX_READ)
                .ok_or_else(|| format!("the directory {path:?} cannot be read"))?;
            for (name, child, dir) in fids(&data) {
                let child_path = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                if out.len() >= max_entries {
                    return Err(format!("more than {max_entries} files and directories"));
                }
                if dir {
                    out.push(crate::model::TreeEntry {
                        path: child_path.clone(),
                        dir: true,
                        size: 0,
                        pieces: Vec::new(),
                    });
                    pending.push((child_path, child, depth + 1));
                } else {
                    let (size, pieces) = self
                        .pieces(child, u64::MAX)
                        .ok_or_else(|| format!("the file {child_path:?} cannot be located"))?;
                    out.push(crate::model::TreeEntry {
                        path: child_path,
                        dir: false,
                        size,
                        pieces,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The live entries of a directory's file identifier descriptors: name,
/// where its entry is, whether it is a directory.
fn fids(data: &[u8]) -> Vec<(String, Icb, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 38 <= data.len() {
        let d = &data[at..];
        if le16(d, 0) != 257 {
            break;
        }
        let characteristics = d[18];
        let name_len = usize::from(d[19]);
        let icb = long_ad(&d[20..36]);
        let use_len = usize::from(le16(d, 36));
        let name_at = 38 + use_len;
        let total = (name_at + name_len + 3) & !3;
        if total > d.len() {
            break;
        }
        let deleted = characteristics & 0x04 != 0;
        let parent = characteristics & 0x08 != 0;
        if !deleted && !parent && name_len > 0 {
            let name = dchars(&d[name_at..name_at + name_len]);
            // A name that would leave its directory is not a name.
            if !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) {
                out.push((name, icb, characteristics & 0x02 != 0));
            }
        }
        at += total;
    }
    out
}

/// Whether `d` starts with a descriptor tag of `id` whose checksum holds and
/// which says it is at `location` (its block in its partition or on the
/// medium).
fn tag_ok(d: &[u8], id: u16, location: u64) -> bool {
    if d.len() < 16 || le16(d, 0) != id {
        return false;
    }
    let sum = d[..16]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .fold(0u8, |s, (_, b)| s.wrapping_add(*b));
    sum == d[4] && u64::from(le32(d, 12)) == location
}

fn long_ad(b: &[u8]) -> Icb {
    Icb {
        block: le32(b, 4),
        partition: le16(b, 8),
    }
}

/// OSTA compressed unicode: a compression id (8: one byte a character, 16:
/// UTF-16BE) and the characters.
fn dchars(b: &[u8]) -> String {
    match b.first() {
        Some(8) => b[1..].iter().map(|&c| char::from(c)).collect(),
        Some(16) => {
            let units: Vec<u16> = b[1..]
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::new(),
    }
}

/// A fixed-size dstring: its last byte is the used length.
fn dstring(b: &[u8]) -> Option<String> {
    let used = usize::from(*b.last()?);
    if used == 0 || used >= b.len() {
        return None;
    }
    let text = dchars(&b[..used]);
    let text = text.trim_end_matches(['\0', ' ']).to_string();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_unicode_in_both_widths() {
        assert_eq!(dchars(b"\x08install.wim"), "install.wim");
        assert_eq!(dchars(b"\x10\x00s\x00r\x00c"), "src");
        assert_eq!(dchars(b"\x07junk"), "");
        let mut label = [0u8; 32];
        label[..5].copy_from_slice(b"\x08CCCO");
        label[31] = 5;
        assert_eq!(dstring(&label).as_deref(), Some("CCCO"));
        label[31] = 40;
        assert_eq!(dstring(&label), None, "a used length past the field");
    }

    #[test]
    fn a_tag_with_a_wrong_checksum_or_location_is_not_a_descriptor() {
        let mut d = [0u8; 16];
        d[0] = 2; // anchor
        d[12] = 0; // location 256 = 0x100
        d[13] = 1;
        let sum = d
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .fold(0u8, |s, (_, b)| s.wrapping_add(*b));
        d[4] = sum;
        assert!(tag_ok(&d, 2, 256));
        assert!(!tag_ok(&d, 2, 257));
        assert!(!tag_ok(&d, 5, 256));
        d[4] ^= 1;
        assert!(!tag_ok(&d, 2, 256));
    }
}
