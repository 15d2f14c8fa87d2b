//! UDF (ECMA-167 / OSTA UDF 1.02–2.60): from the anchor to the file set's
//! root directory, and a path lookup in it. Windows installer ISOs keep their
//! files in UDF only (the ISO 9660 side holds a `README.TXT` or nothing), so
//! `sources/install.wim` is looked up here when the ISO 9660 tree does not
//! have it.
//!
//! Read: the anchor volume descriptor pointer (sector 256), the main volume
//! descriptor sequence (partition descriptors, the logical volume descriptor
//! with its partition maps, its UDF revision and the file set's address), the
//! file set descriptor, file entries and extended file entries (short, long
//! and embedded allocation descriptors), and file identifier descriptors.
//! Every descriptor's tag (identifier and checksum) is checked.
//!
//! **Metadata partitions** (UDF 2.50 and later, a type-2 partition map named
//! `*UDF Metadata Partition`): the file set, directories and file entries
//! live in a partition whose blocks are the blocks of the *metadata file*, a
//! file of type 250 in the physical partition. A block number in the
//! metadata partition is an offset into that file's content (its extents,
//! relative to the physical partition, need not be contiguous), and the tag
//! location of a descriptor there is its block in the metadata partition
//! (UDF 2.60 2.2.13). When the metadata file cannot be read, its mirror (type
//! 251) is. File data is addressed by long allocation descriptors into the
//! physical partition, or by short ones into the metadata partition.
//!
//! Not read: virtual (VAT) and sparable partitions, which write-once and
//! rewritable discs use (not images a lab flashes): such a volume's files are
//! not looked up, and its problem says so.

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
    /// The partitions by partition reference number (the index of the
    /// logical volume's partition map).
    partitions: Vec<Partition>,
    root: Icb,
}

/// Where a partition's blocks are.
#[derive(Debug, Clone)]
enum Partition {
    /// A physical partition: block `n` is the medium's block `start + n`.
    Physical { start: u64, length: u64 },
    /// A metadata partition: block `n` is block `n` of the metadata file,
    /// whose extents are `(first block on the medium, blocks)`.
    Metadata { extents: Vec<(u64, u64)> },
}

/// The type-2 partition map identifier of a metadata partition.
const METADATA_MAP: &[u8] = b"*UDF Metadata Partition";
/// ICB file types of the metadata file and its mirror.
const METADATA_FILE: u8 = 250;
const METADATA_MIRROR: u8 = 251;

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

/// The volume descriptors a reader starts from.
struct Descriptors {
    /// The logical block size.
    block: u64,
    /// (partition number, first block, blocks) of each partition descriptor.
    starts: Vec<(u16, u64, u64)>,
    /// The logical volume descriptor.
    lvd: Vec<u8>,
}

impl Descriptors {
    /// The anchor (sector 256) and the main volume descriptor sequence.
    fn read(image: &dyn ReadAt) -> Result<Self, String> {
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
        let mut starts = Vec::new();
        let mut lvd = None;
        for i in 0..(seq_len / block as u32).min(MAX_SEQUENCE) {
            let at = seq_at + u64::from(i);
            let Some(d) = bytes(image, at * block, block as usize) else {
                break;
            };
            match le16(&d, 0) {
                5 if tag_ok(&d, 5, at) => starts.push((
                    le16(&d, 22),
                    u64::from(le32(&d, 188)),
                    u64::from(le32(&d, 192)),
                )),
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
        Ok(Descriptors { block, starts, lvd })
    }

    /// The logical volume identifier.
    fn label(&self) -> Option<String> {
        dstring(&self.lvd[84..212])
    }

    /// The UDF revision of the logical volume's domain ("2.50"): the
    /// domain identifier's suffix starts with it in binary-coded decimal.
    fn revision(&self) -> Option<String> {
        self.lvd[217..240]
            .starts_with(b"*OSTA UDF Compliant")
            .then(|| {
                let r = le16(&self.lvd, 240);
                format!("{:x}.{:02x}", r >> 8, r & 0xff)
            })
    }
}

/// A UDF volume's label and revision, from its volume descriptors alone
/// (known even when its file set cannot be read); `None` without them.
pub(crate) fn identify(image: &dyn ReadAt) -> Option<(Option<String>, Option<String>)> {
    let d = Descriptors::read(image).ok()?;
    Some((d.label(), d.revision()))
}

impl<'a> Volume<'a> {
    /// Opens the UDF volume of `image`, or says why it cannot be read.
    pub(crate) fn open(image: &'a dyn ReadAt) -> Result<Self, String> {
        let Descriptors { block, starts, lvd } = Descriptors::read(image)?;
        let map_table_len = le32(&lvd, 264) as usize;
        let map_count = le32(&lvd, 268);
        let maps = lvd
            .get(440..440 + map_table_len)
            .ok_or("partition maps past the descriptor's end")?;
        // Physical partitions first: a metadata partition names one.
        enum Map {
            Physical(u16),
            Metadata { number: u16, file: u32, mirror: u32 },
        }
        let mut found = Vec::new();
        let mut at = 0;
        for _ in 0..map_count {
            let (kind, len) = (
                *maps.get(at).ok_or("short partition map")?,
                usize::from(*maps.get(at + 1).ok_or("short partition map")?),
            );
            let map = maps.get(at..at + len).ok_or("short partition map")?;
            match (kind, len) {
                (1, 6) => found.push(Map::Physical(le16(map, 4))),
                (2, 64) if map[5..5 + METADATA_MAP.len()] == *METADATA_MAP => {
                    found.push(Map::Metadata {
                        number: le16(map, 38),
                        file: le32(map, 40),
                        mirror: le32(map, 44),
                    })
                }
                (2, 64) => {
                    let id = String::from_utf8_lossy(&map[5..28]);
                    return Err(format!(
                        "its {} map (write-once or rewritable media) is not read",
                        id.trim_end_matches('\0').trim_start_matches('*')
                    ));
                }
                _ => return Err(format!("a partition map of type {kind} and {len} bytes")),
            }
            at += len;
        }
        let physical = |number: u16| {
            starts
                .iter()
                .find(|(n, _, _)| *n == number)
                .map(|&(_, start, length)| (start, length))
                .ok_or(format!("no partition descriptor for partition {number}"))
        };
        let mut partitions = Vec::new();
        for map in &found {
            partitions.push(match *map {
                Map::Physical(number) => {
                    let (start, length) = physical(number)?;
                    Partition::Physical { start, length }
                }
                Map::Metadata {
                    number,
                    file,
                    mirror,
                } => {
                    let (start, length) = physical(number)?;
                    metadata_partition(image, block, start, length, file, mirror)?
                }
            });
        }
        let fsd_at = long_ad(&lvd[248..264]);
        let volume = Volume {
            image,
            block,
            partitions,
            root: fsd_at,
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

    /// The medium's block holding block `icb.block` of its partition.
    fn absolute(&self, icb: Icb) -> Option<u64> {
        self.extents(icb, 1)?.first().map(|&(at, _)| at)
    }

    /// Where `blocks` blocks from `icb` of its partition are on the medium:
    /// `(first block, blocks)`, several when a metadata partition's blocks
    /// cross from one extent of its file to the next.
    fn extents(&self, icb: Icb, blocks: u64) -> Option<Vec<(u64, u64)>> {
        let first = u64::from(icb.block);
        match self.partitions.get(usize::from(icb.partition))? {
            Partition::Physical { start, length } => {
                // An extent past its partition's end is not in it.
                (first.checked_add(blocks)? <= *length).then(|| vec![(start + first, blocks)])
            }
            Partition::Metadata { extents } => {
                let mut out = Vec::new();
                let (mut skip, mut want) = (first, blocks);
                for &(at, len) in extents {
                    if want == 0 {
                        break;
                    }
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    let take = (len - skip).min(want);
                    out.push((at + skip, take));
                    want -= take;
                    skip = 0;
                }
                (want == 0).then_some(out)
            }
        }
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
                        0 => {
                            let mut left = take;
                            for (first, blocks) in self.extents(at, take.div_ceil(self.block))? {
                                let len = (blocks * self.block).min(left);
                                pieces.push(Piece::At {
                                    offset: first.checked_mul(self.block)?,
                                    len,
                                });
                                left -= len;
                            }
                        }
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

/// The metadata partition over the physical partition at `start`
/// (`length` blocks): the extents of its metadata file, whose entry is at
/// block `file` of the physical partition, or of its mirror at `mirror`
/// when the file cannot be read. An error says why neither can.
fn metadata_partition(
    image: &dyn ReadAt,
    block: u64,
    start: u64,
    length: u64,
    file: u32,
    mirror: u32,
) -> Result<Partition, String> {
    let read = |at: u32, kind: u8| -> Result<Vec<(u64, u64)>, String> {
        if u64::from(at) >= length {
            return Err(format!(
                "its entry at block {at} lies past its partition's {length} blocks"
            ));
        }
        let entry = bytes(image, (start + u64::from(at)) * block, block as usize).ok_or(
            format!("its entry at block {at} lies past the end of the image"),
        )?;
        let id = le16(&entry, 0);
        if !matches!(id, 261 | 266) || !tag_ok(&entry, id, u64::from(at)) {
            return Err(format!("no file entry at block {at} of its partition"));
        }
        if entry[27] != kind {
            return Err(format!(
                "the entry at block {at} is of file type {}, not {kind}",
                entry[27]
            ));
        }
        let (info_len, ea_len, ad_len, ad_at) = if id == 261 {
            (le64(&entry, 56), le32(&entry, 168), le32(&entry, 172), 176)
        } else {
            (le64(&entry, 56), le32(&entry, 208), le32(&entry, 212), 216)
        };
        if le16(&entry, 34) & 7 != 0 {
            return Err("its allocation descriptors are not short ones".into());
        }
        let ads = entry
            .get(ad_at + ea_len as usize..ad_at + ea_len as usize + ad_len as usize)
            .ok_or("its allocation descriptors run past its entry")?;
        let mut extents = Vec::new();
        let mut have = 0u64;
        for ad in ads.chunks_exact(8).take(MAX_EXTENTS) {
            let raw = le32(ad, 0);
            let (len, kind) = (u64::from(raw & 0x3FFF_FFFF), raw >> 30);
            if len == 0 {
                break;
            }
            if kind != 0 || len % block != 0 {
                return Err(format!(
                    "an extent of {len} bytes of type {kind} (recorded whole blocks only)"
                ));
            }
            let first = u64::from(le32(ad, 4));
            let blocks = len / block;
            if first + blocks > length {
                return Err(format!(
                    "an extent of {blocks} blocks at block {first} runs past its partition's {length} blocks"
                ));
            }
            extents.push((start + first, blocks));
            have += len;
        }
        if have < info_len || info_len == 0 {
            return Err(format!("its extents hold {have} of its {info_len} bytes"));
        }
        Ok(extents)
    };
    match read(file, METADATA_FILE) {
        Ok(extents) => Ok(Partition::Metadata { extents }),
        Err(main) => match read(mirror, METADATA_MIRROR) {
            Ok(extents) => Ok(Partition::Metadata { extents }),
            Err(copy) => Err(format!(
                "the metadata partition cannot be read: the metadata file: {main}; its mirror: {copy}"
            )),
        },
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
