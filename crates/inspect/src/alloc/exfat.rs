//! exFAT: the allocation bitmap named by the root directory's bitmap entry
//! (0x81), one bit per cluster of the cluster heap.
//!
//! Always mapped, whatever the bitmap says: everything before the cluster
//! heap (the main and backup boot regions, the FATs), the clusters of the
//! root directory, the allocation bitmap and the up-case table (entry 0x82),
//! and everything after the heap. The bitmap, not the FAT, is the truth of
//! exFAT's allocation: a contiguous file (`NoFatChain`) has no FAT entries.

use super::{le16, le32, Ranges, Region};

/// Directory entry types this reader looks at.
const ENTRY_END: u8 = 0x00;
const ENTRY_BITMAP: u8 = 0x81;
const ENTRY_UPCASE: u8 = 0x82;
/// The FAT's end-of-chain mark.
const END_OF_CHAIN: u64 = 0xFFFF_FFFF;

fn le64(b: &[u8], at: usize) -> u64 {
    le32(b, at) | le32(b, at + 4) << 32
}

/// The volume's geometry, from its boot sector.
struct Geometry {
    cluster: u64,
    /// Byte offset of the FAT in use.
    fat: u64,
    /// Byte offset of the cluster heap (cluster 2).
    heap: u64,
    clusters: u64,
}

impl Geometry {
    fn offset(&self, cluster: u64) -> u64 {
        self.heap + (cluster - 2) * self.cluster
    }
}

/// Adds an exFAT volume's metadata and allocated clusters to `ranges`;
/// answers (bytes in use, bytes of the file system).
pub(super) fn exfat_allocation(fs: &Region<'_>, ranges: &mut Ranges) -> Result<(u64, u64), String> {
    let mut b = [0u8; 512];
    fs.read(0, &mut b)?;
    if b[3..11] != *b"EXFAT   " {
        return Err("no exFAT signature in its boot sector".into());
    }
    let sector_shift = u32::from(b[108]);
    let cluster_shift = u32::from(b[109]);
    if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
        return Err(format!(
            "sectors of 2^{sector_shift} bytes, clusters of 2^{cluster_shift} sectors"
        ));
    }
    let sector = 1u64 << sector_shift;
    let cluster = sector << cluster_shift;
    let volume_sectors = le64(&b, 72);
    let fs_bytes = volume_sectors
        .checked_mul(sector)
        .filter(|&n| n <= fs.len)
        .ok_or_else(|| {
            format!(
                "it claims {volume_sectors} sectors of {sector} bytes, more than its {} bytes",
                fs.len
            )
        })?;
    let fat_offset = le32(&b, 80);
    let fat_length = le32(&b, 84);
    let heap_offset = le32(&b, 88);
    let clusters = le32(&b, 92);
    let root = le32(&b, 96);
    let fats = u64::from(b[110]);
    let active = if fats == 2 { le16(&b, 106) & 1 } else { 0 };
    if !(1..=2).contains(&fats) {
        return Err(format!("{fats} FATs"));
    }
    if fat_offset < 24 || fat_offset + fats * fat_length > heap_offset {
        return Err(format!(
            "{fats} FATs of {fat_length} sectors at sector {fat_offset} run into the cluster heap at sector {heap_offset}"
        ));
    }
    if fat_length * sector < (clusters + 2) * 4 {
        return Err(format!(
            "a FAT of {fat_length} sectors cannot hold {clusters} clusters"
        ));
    }
    let heap_end = heap_offset * sector + clusters * cluster;
    if heap_end > fs_bytes {
        return Err(format!(
            "{clusters} clusters from sector {heap_offset} run past its {fs_bytes} bytes"
        ));
    }
    let g = Geometry {
        cluster,
        fat: (fat_offset + active * fat_length) * sector,
        heap: heap_offset * sector,
        clusters,
    };

    // The root directory, for the bitmap and up-case entries.
    let root_chain = chain(fs, &g, root, None, "the root directory")?;
    let mut bitmap: Option<(u64, u64)> = None;
    let mut upcase: Option<(u64, u64)> = None;
    let mut entry = vec![0u8; cluster as usize];
    'dir: for &c in &root_chain {
        fs.read(g.offset(c), &mut entry)?;
        for e in entry.chunks_exact(32) {
            match e[0] {
                ENTRY_END => break 'dir,
                // Bit 0 of its flags says which FAT and bitmap it is.
                ENTRY_BITMAP if u64::from(e[1] & 1) == active => {
                    bitmap = Some((le32(e, 20), le64(e, 24)));
                }
                ENTRY_UPCASE => upcase = Some((le32(e, 20), le64(e, 24))),
                _ => {}
            }
        }
    }
    let (bitmap_first, bitmap_len) =
        bitmap.ok_or("its root directory holds no allocation bitmap entry")?;
    let needed = clusters.div_ceil(8);
    if bitmap_len < needed {
        return Err(format!(
            "its allocation bitmap holds {bitmap_len} bytes, {needed} are needed for {clusters} clusters"
        ));
    }
    let bitmap_chain = chain(fs, &g, bitmap_first, Some(needed), "the allocation bitmap")?;
    let mut bits = vec![0u8; needed as usize];
    for (i, &c) in bitmap_chain.iter().enumerate() {
        let at = i * cluster as usize;
        let end = (at + cluster as usize).min(bits.len());
        fs.read(g.offset(c), &mut bits[at..end])?;
    }
    let upcase_chain = match upcase {
        Some((first, len)) if len > 0 => chain(fs, &g, first, Some(len), "the up-case table")?,
        _ => return Err("its root directory holds no up-case table entry".into()),
    };

    // The metadata that always matters.
    ranges.add(fs.start, g.heap);
    for c in root_chain.iter().chain(&bitmap_chain).chain(&upcase_chain) {
        ranges.add(fs.start + g.offset(*c), cluster);
    }
    ranges.add(fs.start + heap_end, fs.len - heap_end);

    let mut used = 0u64;
    let mut run: Option<u64> = None;
    for i in 0..=clusters {
        let set = i < clusters && bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
        match (set, run) {
            (true, None) => run = Some(i),
            (false, Some(s)) => {
                ranges.add(fs.start + g.offset(s + 2), (i - s) * cluster);
                used += (i - s) * cluster;
                run = None;
            }
            _ => {}
        }
    }
    Ok((g.heap + used, fs_bytes))
}

/// The clusters of a chain from `first`, along the FAT: `bytes` of them when
/// the length is known, else up to the end-of-chain mark. A link out of the
/// heap, a loop or a chain too short is an error naming `what`.
fn chain(
    fs: &Region<'_>,
    g: &Geometry,
    first: u64,
    bytes: Option<u64>,
    what: &str,
) -> Result<Vec<u64>, String> {
    let want = bytes.map(|n| n.div_ceil(g.cluster));
    let mut out = Vec::new();
    let mut current = first;
    loop {
        if !(2..g.clusters + 2).contains(&current) {
            return Err(format!(
                "{what} leads to cluster {current}, outside the heap's {} clusters",
                g.clusters
            ));
        }
        if out.len() as u64 >= g.clusters {
            return Err(format!("{what}'s cluster chain loops"));
        }
        out.push(current);
        if want == Some(out.len() as u64) {
            return Ok(out);
        }
        let mut next = [0u8; 4];
        fs.read(g.fat + current * 4, &mut next)?;
        current = le32(&next, 0);
        if current == END_OF_CHAIN {
            return match want {
                Some(n) => Err(format!(
                    "{what}'s chain ends after {} of its {n} clusters",
                    out.len()
                )),
                None => Ok(out),
            };
        }
    }
}
