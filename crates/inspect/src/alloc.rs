//! Which bytes of an image matter, from its file systems' own allocation:
//! ext2/3/4 block bitmaps, FAT tables, NTFS's cluster bitmap (`$Bitmap`,
//! [`ntfs`]) and exFAT's allocation bitmap ([`exfat`]).
//!
//! [`allocation_map`] answers the byte ranges a sparse write must carry:
//! everything outside the file systems it can read (partition tables, boot
//! code, gaps, partitions of other kinds, what lies past a file system's own
//! end in its partition or image) and, inside each ext2/3/4, FAT,
//! NTFS or exFAT file system, its metadata (always, whatever its bitmap says)
//! and the blocks or clusters it has allocated.
//! Free blocks are left out because the file system says they are free,
//! never because they hold zeros: a FAT directory sector full of zeros is
//! allocated, and carried (bmaptool's maps, made from a file's holes, have
//! lost such sectors).
//!
//! Nothing is guessed. A file system whose structures do not add up (a
//! superblock or boot sector with impossible values, group descriptors or
//! bitmaps past its end, a FAT too small for its clusters) gives an error,
//! and the image is then written whole. So does an ISO (its partitions are
//! files of the ISO, every byte of which its checksums cover) and a table
//! whose partitions overlap.

use std::fmt;

mod exfat;
mod ntfs;

use crate::model::{FsKind, ImageInfo};
use crate::read::ReadAt;

/// The granularity of the map: ranges are widened to whole 4 KiB blocks of
/// the image (what a sparse write writes and a device reads at least).
pub const MAP_BLOCK: u64 = 4096;

/// The version of the rules [`allocation_map`] follows: a map kept by older
/// rules is generated again. Version 2 maps what lies past a file system's
/// own end in its partition or image (version 1 left it out for ext2/3/4
/// and FAT, and a sparse write left data there off the stick). Version 3
/// places the metadata of an ext4 group whose bitmap was never written when
/// the file system keeps its superblock backups in the two groups it names
/// (`sparse_super2`); version 2 mapped such groups whole (safe, but a sparse
/// run then wrote them whole).
pub const ALLOCATION_RULES: u32 = 3;

/// Why no map can be made from an image's file systems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No ext2/3/4, FAT, NTFS or exFAT file system in the image.
    #[error(
        "no file system whose allocation flashrack reads (ext2/3/4, FAT, NTFS, exFAT) was found: the image can only be written whole"
    )]
    NothingToMap,
    /// An ISO 9660 image: its partitions are files of the ISO.
    #[error("the image is an ISO: the file systems in its partitions are files of the ISO, so every byte is written")]
    Iso,
    /// Partitions overlap: a byte free in one may be used by another.
    #[error("partitions {0} and {1} overlap: the image can only be written whole")]
    Overlap(u32, u32),
    /// A partition that ends past the image's end: the table is damaged or
    /// the image truncated, and the bytes the table promises are not there.
    #[error("partition {number} ends at byte {end} but the image has {size} bytes (a damaged table or a truncated image): no block map")]
    PartitionPastEnd {
        /// The partition's number.
        number: u32,
        /// Where it ends, by the table.
        end: u64,
        /// The image's size.
        size: u64,
    },
    /// A partition table that is there but cannot be read: what lies where
    /// is unknown.
    #[error("the partition table is damaged ({0}): no block map")]
    BrokenTable(String),
    /// A file system that is damaged or not understood.
    #[error("the {kind} file system {place} cannot be mapped: {reason}")]
    Broken {
        /// Its kind.
        kind: FsKind,
        /// Where it is ("in partition 2", "at the image's start").
        place: String,
        /// What does not add up.
        reason: String,
    },
}

/// The allocation of an image's file systems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationMap {
    /// Sorted, disjoint byte ranges `(offset, len)` that matter, adjacent
    /// ones merged, in whole [`MAP_BLOCK`]s (the last clipped to the image).
    pub ranges: Vec<(u64, u64)>,
    /// One line per file system read ("ext4 in partition 2: 5.1 MB of 64 MB
    /// in use").
    pub sources: Vec<String>,
}

impl AllocationMap {
    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|(_, l)| l).sum()
    }
}

impl fmt::Display for AllocationMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sources.join("; "))
    }
}

/// The byte ranges of `image` (inspected as `info`) that a sparse write must
/// carry, from the allocation of its ext2/3/4, FAT, NTFS and exFAT file
/// systems.
pub fn allocation_map(image: &dyn ReadAt, info: &ImageInfo) -> Result<AllocationMap, AllocError> {
    let size = image.size();
    if info.iso.is_some()
        || info
            .filesystem
            .as_ref()
            .is_some_and(|f| matches!(f.kind, FsKind::Iso9660 | FsKind::Udf))
    {
        return Err(AllocError::Iso);
    }
    // The file systems to read: (kind, start, length, where).
    let mut systems: Vec<(FsKind, u64, u64, String)> = Vec::new();
    if info.table.is_none() && has_protective_mbr(image) {
        // A protective MBR says a GPT is the table, and neither of its
        // copies could be read: where the partitions lie is not known.
        let why = info
            .problems
            .iter()
            .find(|p| p.starts_with("GPT damaged"))
            .cloned()
            .unwrap_or_else(|| "a protective MBR with no readable GPT behind it".into());
        return Err(AllocError::BrokenTable(why));
    }
    if let Some(table) = &info.table {
        // A partition past the image's end: the table or the image is not
        // what it should be (a map of it would vouch for bytes not there).
        if let Some(p) = table
            .partitions
            .iter()
            .find(|p| p.start.saturating_add(p.size) > size)
        {
            return Err(AllocError::PartitionPastEnd {
                number: p.number,
                end: p.start.saturating_add(p.size),
                size,
            });
        }
        // An extended MBR partition holds its logical ones by design: only
        // the partitions themselves may not share bytes (the extended
        // one's boot records, outside every file system, are mapped).
        let mut parts: Vec<_> = table
            .partitions
            .iter()
            .filter(|p| !p.is_extended())
            .collect();
        parts.sort_by_key(|p| p.start);
        for pair in parts.windows(2) {
            if pair[0].start + pair[0].size > pair[1].start {
                return Err(AllocError::Overlap(pair[0].number, pair[1].number));
            }
        }
        for p in parts {
            if let Some(fs) = &p.filesystem {
                if readable(fs.kind) {
                    systems.push((
                        fs.kind,
                        p.start,
                        p.size,
                        format!("in partition {}", p.number),
                    ));
                }
            }
        }
    } else if let Some(fs) = &info.filesystem {
        if readable(fs.kind) {
            systems.push((fs.kind, 0, size, "at the image's start".into()));
        }
    }
    if systems.is_empty() {
        return Err(AllocError::NothingToMap);
    }
    let mut ranges = Ranges::default();
    let mut sources = Vec::new();
    let mut at = 0;
    for (kind, start, len, place) in systems {
        // Everything before this file system matters (tables, boot code, gaps).
        ranges.add(at, start - at);
        let broken = |reason: String| AllocError::Broken {
            kind,
            place: place.clone(),
            reason,
        };
        let region = Region { image, start, len };
        let used = match kind {
            FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => ext_allocation(&region, &mut ranges),
            FsKind::Ntfs => ntfs::ntfs_allocation(&region, &mut ranges),
            FsKind::ExFat => exfat::exfat_allocation(&region, &mut ranges),
            _ => fat_allocation(&region, &mut ranges),
        }
        .map_err(broken)?;
        // What lies past the file system's own end, in its partition (or
        // the image, for a file system at its start): not the file
        // system's, so not known to be free (data may be there).
        ranges.add(start + used.1, len - used.1);
        sources.push(format!(
            "{kind} {place}: {} of {} bytes in use",
            used.0, used.1
        ));
        at = start + len;
    }
    ranges.add(at, size - at);
    Ok(AllocationMap {
        ranges: ranges.finish(size),
        sources,
    })
}

/// Whether the image's first sector is an MBR with a protective (0xEE)
/// entry, which says a GPT follows.
fn has_protective_mbr(image: &dyn ReadAt) -> bool {
    let mut mbr = [0u8; 512];
    if !matches!(image.read_at(0, &mut mbr), Ok(512)) || mbr[510..] != [0x55, 0xAA] {
        return false;
    }
    (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE)
}

fn readable(kind: FsKind) -> bool {
    matches!(
        kind,
        FsKind::Ext2
            | FsKind::Ext3
            | FsKind::Ext4
            | FsKind::Fat12
            | FsKind::Fat16
            | FsKind::Fat32
            | FsKind::Ntfs
            | FsKind::ExFat
    )
}

/// Byte ranges being collected, in any order.
#[derive(Default)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn add(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.0.push((offset, len));
        }
    }

    /// Sorted, widened to [`MAP_BLOCK`]s, clipped to `size`, merged.
    fn finish(mut self, size: u64) -> Vec<(u64, u64)> {
        self.0.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (offset, len) in self.0 {
            let start = offset / MAP_BLOCK * MAP_BLOCK;
            let end = (offset + len).div_ceil(MAP_BLOCK) * MAP_BLOCK;
            let end = end.min(size);
            if start >= end {
                continue;
            }
            match out.last_mut() {
                Some((o, l)) if *o + *l >= start => *l = end.max(*o + *l) - *o,
                _ => out.push((start, end - start)),
            }
        }
        out
    }
}

/// A file system's bytes within the image.
struct Region<'a> {
    image: &'a dyn ReadAt,
    start: u64,
    len: u64,
}

impl Region<'_> {
    /// Reads exactly `buf.len()` bytes at `offset` of the region.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(format!(
                "a structure at byte {offset} lies past the end of its {} bytes",
                self.len
            ));
        }
        match self.image.read_at(self.start + offset, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(format!(
                "the image ends before byte {}",
                self.start + offset
            )),
            Err(e) => Err(format!("cannot read byte {}: {e}", self.start + offset)),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

// ext2/3/4 feature flags this reader looks at.
const COMPAT_SPARSE_SUPER2: u64 = 0x200;
const INCOMPAT_META_BG: u64 = 0x10;
const INCOMPAT_64BIT: u64 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u64 = 0x1;
const RO_COMPAT_GDT_CSUM: u64 = 0x10;
const RO_COMPAT_BIGALLOC: u64 = 0x200;
const RO_COMPAT_METADATA_CSUM: u64 = 0x400;
const BG_BLOCK_UNINIT: u64 = 0x2;

/// Adds an ext2/3/4 file system's allocated blocks to `ranges`, with block 0
/// and the superblock; answers (bytes in use, bytes of the file system).
fn ext_allocation(fs: &Region<'_>, ranges: &mut Ranges) -> Result<(u64, u64), String> {
    let mut sb = [0u8; 1024];
    fs.read(1024, &mut sb)?;
    if le16(&sb, 56) != 0xEF53 {
        return Err("no superblock magic".into());
    }
    let log = le32(&sb, 24);
    if log > 6 {
        return Err(format!("block size 1024 << {log}"));
    }
    let block = 1024u64 << log;
    let incompat = le32(&sb, 96);
    let ro_compat = le32(&sb, 100);
    let compat = le32(&sb, 92);
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return Err("bigalloc (bitmaps of clusters, not blocks) is not read".into());
    }
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let blocks = le32(&sb, 4) | if is64 { le32(&sb, 0x150) << 32 } else { 0 };
    let first_data = le32(&sb, 20);
    let per_group = le32(&sb, 32);
    let inodes_per_group = le32(&sb, 40);
    let rev = le32(&sb, 76);
    let inode_size = if rev == 0 { 128 } else { le16(&sb, 88) };
    let desc_size = if is64 { le16(&sb, 254).max(32) } else { 32 };
    let reserved_gdt = le16(&sb, 206);
    if per_group == 0 || per_group > 8 * block {
        return Err(format!(
            "{per_group} blocks per group with {block}-byte blocks"
        ));
    }
    if blocks <= first_data || first_data > 1 {
        return Err(format!(
            "{blocks} blocks with the first data block at {first_data}"
        ));
    }
    let fs_bytes = blocks
        .checked_mul(block)
        .filter(|&b| b <= fs.len)
        .ok_or_else(|| {
            format!(
                "it claims {blocks} blocks of {block} bytes, more than its {} bytes",
                fs.len
            )
        })?;
    if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block {
        return Err(format!("inode size {inode_size}"));
    }
    let groups = (blocks - first_data).div_ceil(per_group);
    let desc_blocks = (groups * desc_size).div_ceil(block);
    let gdt_offset = (first_data + 1) * block;
    let mut gdt = vec![0u8; (groups * desc_size) as usize];
    fs.read(gdt_offset, &mut gdt)?;
    let lazy_ok = ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    // Group descriptors and the layout of uninitialised groups are only
    // computed without META_BG (descriptors spread over the groups); with
    // it an uninitialised group is carried whole.
    let classic = incompat & INCOMPAT_META_BG == 0;
    // SPARSE_SUPER2: superblock backups in at most two groups, which the
    // superblock names (`s_backup_bgs`, 0 for none).
    let sparse_super2 = compat & COMPAT_SPARSE_SUPER2 != 0;
    let backup_groups = [le32(&sb, 0x24C), le32(&sb, 0x250)];
    let desc = |g: u64| &gdt[(g * desc_size) as usize..((g + 1) * desc_size) as usize];
    let location = |d: &[u8], lo: usize, hi: usize| {
        le32(d, lo)
            | if is64 && desc_size >= 64 {
                le32(d, hi) << 32
            } else {
                0
            }
    };
    let itable_blocks = (inodes_per_group * inode_size).div_ceil(block);
    // Every group's bitmaps and inode table, to place in uninitialised groups.
    let mut metadata: Vec<(u64, u64)> = Vec::with_capacity(3 * groups as usize);
    for g in 0..groups {
        let d = desc(g);
        for (at, len) in [
            (location(d, 0, 0x20), 1),
            (location(d, 4, 0x24), 1),
            (location(d, 8, 0x28), itable_blocks),
        ] {
            if at < first_data || at.saturating_add(len) > blocks {
                return Err(format!(
                    "group {g}'s metadata at block {at} lies outside the file system's {blocks} blocks"
                ));
            }
            metadata.push((at, len));
        }
    }
    metadata.sort_unstable();
    // As the kernel's ext4_bg_has_super.
    let has_super = |g: u64| {
        if sparse_super2 {
            return g == 0 || backup_groups.contains(&g);
        }
        g == 0
            || ro_compat & RO_COMPAT_SPARSE_SUPER == 0
            || [3u64, 5, 7].iter().any(|&base| {
                let mut p = 1;
                while p < g {
                    p *= base;
                }
                p == g
            })
            || g == 1
    };
    // Block 0 (boot block; with 1 KiB blocks, outside every group) and the
    // superblock always matter.
    ranges.add(fs.start, 2048.max(block * (first_data + 1)));
    let mut used_blocks = 0u64;
    let mut bitmap = vec![0u8; block as usize];
    for g in 0..groups {
        let group_start = first_data + g * per_group;
        let group_blocks = per_group.min(blocks - group_start);
        let d = desc(g);
        let flags = le16(d, 0x12);
        if lazy_ok && flags & BG_BLOCK_UNINIT != 0 {
            if !classic {
                ranges.add(fs.start + group_start * block, group_blocks * block);
                used_blocks += group_blocks;
                continue;
            }
            // What mke2fs and the kernel consider allocated in a group whose
            // bitmap was never written: its superblock backup and descriptor
            // blocks, and any group's metadata that lies in it.
            if has_super(g) {
                let n = (1 + desc_blocks + reserved_gdt).min(group_blocks);
                ranges.add(fs.start + group_start * block, n * block);
                used_blocks += n;
            }
            let end = group_start + group_blocks;
            let first = metadata.partition_point(|&(at, len)| at + len <= group_start);
            for &(at, len) in metadata[first..].iter().take_while(|&&(at, _)| at < end) {
                let s = at.max(group_start);
                let e = (at + len).min(end);
                ranges.add(fs.start + s * block, (e - s) * block);
                used_blocks += e - s;
            }
            continue;
        }
        let at = location(d, 0, 0x20);
        fs.read(at * block, &mut bitmap)?;
        let mut run: Option<u64> = None;
        for i in 0..=group_blocks {
            let set = i < group_blocks && bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            match (set, run) {
                (true, None) => run = Some(i),
                (false, Some(s)) => {
                    ranges.add(fs.start + (group_start + s) * block, (i - s) * block);
                    used_blocks += i - s;
                    run = None;
                }
                _ => {}
            }
        }
    }
    Ok((used_blocks * block, fs_bytes))
}

/// Adds a FAT file system's reserved sectors, FATs, root directory (FAT12/16)
/// and allocated clusters to `ranges`; answers (bytes in use, bytes of the
/// file system).
fn fat_allocation(fs: &Region<'_>, ranges: &mut Ranges) -> Result<(u64, u64), String> {
    let mut b = [0u8; 512];
    fs.read(0, &mut b)?;
    let sector = le16(&b, 11);
    let per_cluster = u64::from(b[13]);
    let reserved = le16(&b, 14);
    let fats = u64::from(b[16]);
    let root_entries = le16(&b, 17);
    let total = match le16(&b, 19) {
        0 => le32(&b, 32),
        n => n,
    };
    let fat_sectors = match le16(&b, 22) {
        0 => le32(&b, 36),
        n => n,
    };
    if ![512, 1024, 2048, 4096].contains(&sector) {
        return Err(format!("{sector}-byte sectors"));
    }
    if per_cluster == 0 || !per_cluster.is_power_of_two() {
        return Err(format!("{per_cluster} sectors per cluster"));
    }
    if reserved == 0 || fats == 0 || fat_sectors == 0 {
        return Err(format!(
            "{reserved} reserved sectors, {fats} FATs of {fat_sectors} sectors"
        ));
    }
    let fs_bytes = total
        .checked_mul(sector)
        .filter(|&n| n <= fs.len)
        .ok_or_else(|| {
            format!(
                "it claims {total} sectors of {sector} bytes, more than its {} bytes",
                fs.len
            )
        })?;
    let root_sectors = (root_entries * 32).div_ceil(sector);
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if data_start >= total {
        return Err(format!(
            "its data area would start at sector {data_start} of {total}"
        ));
    }
    let clusters = (total - data_start) / per_cluster;
    // As Linux decides: FAT32 when the 16-bit FAT size is zero, else FAT12 or
    // FAT16 by the count of clusters.
    let bits = if le16(&b, 22) == 0 {
        32
    } else if clusters < 4085 {
        12
    } else {
        16
    };
    let fat_bytes = ((clusters + 2) * bits).div_ceil(8);
    if fat_bytes > fat_sectors * sector {
        return Err(format!(
            "a FAT of {fat_sectors} sectors cannot hold {clusters} clusters of FAT{bits}"
        ));
    }
    let mut fat = vec![0u8; (fat_sectors * sector) as usize];
    fs.read(reserved * sector, &mut fat)?;
    let entry = |n: u64| -> u64 {
        match bits {
            12 => {
                let at = (n * 3 / 2) as usize;
                let v = le16(&fat, at);
                if n.is_multiple_of(2) {
                    v & 0xfff
                } else {
                    v >> 4
                }
            }
            16 => le16(&fat, (n * 2) as usize),
            _ => le32(&fat, (n * 4) as usize) & 0x0fff_ffff,
        }
    };
    // Boot sector, reserved sectors (FSInfo, backup boot sector), the FATs and
    // the root directory of FAT12/16 always matter.
    ranges.add(fs.start, data_start * sector);
    let cluster_bytes = per_cluster * sector;
    let mut used = 0u64;
    let mut run: Option<u64> = None;
    for n in 2..=clusters + 2 {
        let set = n < clusters + 2 && entry(n) != 0;
        match (set, run) {
            (true, None) => run = Some(n),
            (false, Some(s)) => {
                let offset = data_start * sector + (s - 2) * cluster_bytes;
                ranges.add(fs.start + offset, (n - s) * cluster_bytes);
                used += (n - s) * cluster_bytes;
                run = None;
            }
            _ => {}
        }
    }
    Ok((data_start * sector + used, fs_bytes))
}
