//! NTFS: the volume's cluster bitmap, the unnamed `$DATA` of MFT record 6
//! (`$Bitmap`), found through the `$DATA` runs of record 0 (`$MFT`).
//!
//! Always mapped, whatever the bitmap says: the boot sector and the rest of
//! `$Boot`'s first 8 KiB, the MFT's runs, `$MFTMirr` (its first four
//! records), the bitmap's own runs, and everything past the sectors the boot
//! sector counts (the backup boot sector lives in the volume's last sector,
//! outside them).

use super::{le16, le32, Ranges, Region};

/// The update sequence stride of NTFS records: 512 bytes, whatever the
/// sector size (Linux's `NTFS_BLOCK_SIZE`).
const STRIDE: usize = 512;
/// The largest cluster NTFS allows (2 MiB).
const MAX_CLUSTER: u64 = 2 << 20;
/// `$Boot`'s bytes at the volume's start that always matter.
const BOOT_BYTES: u64 = 8192;
/// Attribute types this reader looks at.
const ATTR_LIST: u64 = 0x20;
const ATTR_DATA: u64 = 0x80;
const ATTR_END: u64 = 0xFFFF_FFFF;

fn le64(b: &[u8], at: usize) -> u64 {
    le32(b, at) | le32(b, at + 4) << 32
}

/// Adds an NTFS volume's metadata and allocated clusters to `ranges`;
/// answers (bytes in use, bytes of the file system).
pub(super) fn ntfs_allocation(fs: &Region<'_>, ranges: &mut Ranges) -> Result<(u64, u64), String> {
    let mut b = [0u8; 512];
    fs.read(0, &mut b)?;
    if b[3..11] != *b"NTFS    " {
        return Err("no NTFS signature in its boot sector".into());
    }
    let sector = le16(&b, 11);
    if !(256..=4096).contains(&sector) || !sector.is_power_of_two() {
        return Err(format!("{sector}-byte sectors"));
    }
    // Sectors per cluster; above 0x80 the value n means 2^(256 - n).
    let per_cluster = match b[13] {
        0 => 0,
        n @ 1..=0x80 => u64::from(n),
        n => 1u64 << (256 - u32::from(n)).min(31),
    };
    let cluster = sector * per_cluster;
    if cluster == 0 || !cluster.is_power_of_two() || cluster > MAX_CLUSTER {
        return Err(format!("{per_cluster} sectors per cluster"));
    }
    let total_sectors = le64(&b, 40);
    let fs_bytes = total_sectors
        .checked_mul(sector)
        .filter(|&n| n <= fs.len && n >= BOOT_BYTES)
        .ok_or_else(|| {
            format!(
                "it claims {total_sectors} sectors of {sector} bytes, not within its {} bytes",
                fs.len
            )
        })?;
    let clusters = fs_bytes / cluster;
    // Clusters per MFT record; a negative value n means 2^-n bytes.
    let per_record = b[64] as i8;
    let record_size = if per_record < 0 {
        1u64.checked_shl(u32::from(per_record.unsigned_abs()))
            .unwrap_or(0)
    } else {
        u64::from(per_record as u8) * cluster
    };
    if !(1024..=65536).contains(&record_size) || !record_size.is_power_of_two() {
        return Err(format!("{record_size}-byte MFT records"));
    }
    let mft_lcn = le64(&b, 48);
    let mirror_lcn = le64(&b, 56);
    let mirror_clusters = (4 * record_size).div_ceil(cluster);
    for (what, lcn, len) in [
        ("MFT", mft_lcn, 1),
        ("MFT mirror", mirror_lcn, mirror_clusters),
    ] {
        if lcn.checked_add(len).is_none_or(|end| end > clusters) {
            return Err(format!(
                "its {what} at cluster {lcn} lies outside its {clusters} clusters"
            ));
        }
    }

    let mft = record(fs, mft_lcn * cluster, record_size, 0)?;
    let mft_runs = data_runs(&mft, 0, clusters)?;
    // Record 6 through the MFT's own runs (it is in the first run in
    // practice, but nothing says so).
    let bitmap_at = byte_at(&mft_runs.runs, 6 * record_size, cluster)
        .ok_or("record 6 ($Bitmap) lies past the MFT's mapped runs")?;
    let bitmap_record = record(fs, bitmap_at, record_size, 6)?;
    let bitmap = data_runs(&bitmap_record, 6, clusters)?;
    let needed = clusters.div_ceil(8);
    if bitmap.data_size < needed {
        return Err(format!(
            "its cluster bitmap holds {} bytes, {needed} are needed for {clusters} clusters",
            bitmap.data_size
        ));
    }
    let mut bits = Vec::with_capacity(needed as usize);
    for &(lcn, len) in &bitmap.runs {
        if bits.len() as u64 >= needed {
            break;
        }
        let take = (len * cluster).min(needed - bits.len() as u64);
        let at = bits.len();
        bits.resize(at + take as usize, 0);
        match lcn {
            Some(lcn) => fs.read(lcn * cluster, &mut bits[at..])?,
            None => return Err("its cluster bitmap has a hole".into()),
        }
    }
    if (bits.len() as u64) < needed {
        return Err(format!(
            "its cluster bitmap's runs hold {} of the {needed} bytes needed",
            bits.len()
        ));
    }

    // The metadata that always matters.
    ranges.add(fs.start, BOOT_BYTES.max(cluster));
    for runs in [&mft_runs.runs, &bitmap.runs] {
        for &(lcn, len) in runs.iter() {
            if let Some(lcn) = lcn {
                ranges.add(fs.start + lcn * cluster, len * cluster);
            }
        }
    }
    ranges.add(fs.start + mirror_lcn * cluster, mirror_clusters * cluster);
    // The backup boot sector and anything else past the counted sectors.
    ranges.add(fs.start + fs_bytes, fs.len - fs_bytes);

    let mut used = 0u64;
    let mut run: Option<u64> = None;
    for i in 0..=clusters {
        let set = i < clusters && bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
        match (set, run) {
            (true, None) => run = Some(i),
            (false, Some(s)) => {
                ranges.add(fs.start + s * cluster, (i - s) * cluster);
                used += (i - s) * cluster;
                run = None;
            }
            _ => {}
        }
    }
    Ok((used, fs_bytes))
}

/// An MFT record read at `at` (bytes into the volume), its update sequence
/// undone; `number` names it in errors.
fn record(fs: &Region<'_>, at: u64, size: u64, number: u64) -> Result<Vec<u8>, String> {
    let mut r = vec![0u8; size as usize];
    fs.read(at, &mut r)?;
    if r[0..4] != *b"FILE" {
        return Err(format!("MFT record {number} has no FILE signature"));
    }
    let usa = le16(&r, 4) as usize;
    let usa_count = le16(&r, 6) as usize;
    if usa_count != r.len() / STRIDE + 1 || usa + 2 * usa_count > r.len() {
        return Err(format!(
            "MFT record {number}'s update sequence ({usa_count} entries at {usa}) does not fit it"
        ));
    }
    let check = [r[usa], r[usa + 1]];
    for i in 1..usa_count {
        let end = i * STRIDE;
        if r[end - 2..end] != check {
            return Err(format!("MFT record {number} is torn (update sequence)"));
        }
        let original = [r[usa + 2 * i], r[usa + 2 * i + 1]];
        r[end - 2..end].copy_from_slice(&original);
    }
    if le16(&r, 22) & 1 == 0 {
        return Err(format!("MFT record {number} is not in use"));
    }
    Ok(r)
}

/// A non-resident attribute's clusters.
struct DataRuns {
    /// `(first cluster or None for a hole, clusters)`, in the file's order.
    runs: Vec<(Option<u64>, u64)>,
    /// The attribute's data size in bytes.
    data_size: u64,
}

/// The runs of the unnamed `$DATA` of MFT record `number`, checked to lie
/// inside the volume's `clusters`.
fn data_runs(r: &[u8], number: u64, clusters: u64) -> Result<DataRuns, String> {
    let bad = |what: &str| format!("MFT record {number}: {what}");
    let mut at = le16(r, 20) as usize;
    let mut listed = false;
    loop {
        if at + 16 > r.len() {
            return Err(bad("its attributes run past its end"));
        }
        let kind = le32(r, at);
        if kind == ATTR_END {
            break;
        }
        let length = le32(r, at + 4) as usize;
        if length < 16 || at + length > r.len() {
            return Err(bad("an attribute of impossible length"));
        }
        let attr = &r[at..at + length];
        listed |= kind == ATTR_LIST;
        if kind == ATTR_DATA && attr[9] == 0 {
            if attr[8] == 0 {
                return Err(bad("its $DATA is resident, not in clusters"));
            }
            if length < 0x40 || le64(attr, 0x10) != 0 {
                return Err(bad(
                    "its $DATA attribute does not start at cluster 0 of the file",
                ));
            }
            let data_size = le64(attr, 0x30);
            let runs = mapping_pairs(attr, le16(attr, 0x20) as usize)
                .ok_or_else(|| bad("its $DATA runs cannot be decoded"))?;
            for &(lcn, len) in &runs {
                if let Some(lcn) = lcn {
                    if lcn.checked_add(len).is_none_or(|end| end > clusters) {
                        return Err(bad(&format!(
                            "a run of {len} clusters at cluster {lcn} lies outside the volume's {clusters}"
                        )));
                    }
                }
            }
            return Ok(DataRuns { runs, data_size });
        }
        at += length;
    }
    Err(bad(if listed {
        "its $DATA is in an attribute list, which is not read"
    } else {
        "no $DATA attribute"
    }))
}

/// Decodes a run list (mapping pairs) from `at` in `attr`.
fn mapping_pairs(attr: &[u8], mut at: usize) -> Option<Vec<(Option<u64>, u64)>> {
    let mut runs = Vec::new();
    let mut lcn: i64 = 0;
    loop {
        let header = *attr.get(at)?;
        if header == 0 {
            return Some(runs);
        }
        let len_size = usize::from(header & 0x0f);
        let off_size = usize::from(header >> 4);
        if len_size == 0 || len_size > 8 || off_size > 8 {
            return None;
        }
        let field = attr.get(at + 1..at + 1 + len_size + off_size)?;
        let mut len = 0u64;
        for (i, &byte) in field[..len_size].iter().enumerate() {
            len |= u64::from(byte) << (8 * i);
        }
        if len == 0 {
            return None;
        }
        if off_size == 0 {
            runs.push((None, len));
        } else {
            let mut delta = 0i64;
            for (i, &byte) in field[len_size..].iter().enumerate() {
                delta |= i64::from(byte) << (8 * i);
            }
            // Sign-extend the delta from its width.
            let shift = 64 - 8 * off_size as u32;
            delta = (delta << shift) >> shift;
            lcn = lcn.checked_add(delta).filter(|&l| l >= 0)?;
            runs.push((Some(lcn as u64), len));
        }
        at += 1 + len_size + off_size;
    }
}

/// Where byte `offset` of a file with `runs` lies in the volume.
fn byte_at(runs: &[(Option<u64>, u64)], offset: u64, cluster: u64) -> Option<u64> {
    let mut vcn = offset / cluster;
    for &(lcn, len) in runs {
        if vcn < len {
            return lcn.map(|l| (l + vcn) * cluster + offset % cluster);
        }
        vcn -= len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lists_decode_with_negative_deltas_and_holes() {
        // 0x21: 1-byte length, 2-byte offset. Then a hole of 4 clusters, then
        // a run 0x10 clusters before the first.
        let mut attr = vec![0u8; 0x40];
        attr[0x20] = 0x40;
        attr.extend_from_slice(&[0x21, 0x08, 0x00, 0x01, 0x01, 0x04, 0x11, 0x02, 0xf0, 0x00]);
        let runs = mapping_pairs(&attr, 0x40).unwrap();
        assert_eq!(runs, vec![(Some(256), 8), (None, 4), (Some(240), 2)]);
        assert_eq!(byte_at(&runs, 8 * 4096 + 5, 4096), None);
        assert_eq!(byte_at(&runs, 12 * 4096 + 5, 4096), Some(240 * 4096 + 5));
        // A run before cluster 0 is refused.
        let bad = [0x11, 0x01, 0xff, 0x00];
        assert_eq!(mapping_pairs(&bad, 0), None);
    }
}
