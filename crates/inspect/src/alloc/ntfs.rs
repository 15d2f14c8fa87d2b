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

    let volume = Volume {
        fs,
        cluster,
        clusters,
        record_size,
    };
    let mft = record(fs, mft_lcn * cluster, record_size, 0)?;
    // The MFT's own extension records are read through the runs known so
    // far (they lie in its earlier extents, as they must for anyone to
    // find them).
    let mft_runs = volume.data_runs(&mft, 0, None)?;
    // Record 6 through the MFT's own runs (it is in the first run in
    // practice, but nothing says so).
    let bitmap_record = volume.record_in(&mft_runs.runs, 6)?;
    let bitmap = volume.data_runs(&bitmap_record, 6, Some(&mft_runs.runs))?;
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
    for runs in [
        &mft_runs.runs,
        &mft_runs.list_runs,
        &bitmap.runs,
        &bitmap.list_runs,
    ] {
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
    undo_sequence(r, number)
}

/// An MFT record's bytes checked (signature, update sequence, in use) and
/// its update sequence undone.
fn undo_sequence(mut r: Vec<u8>, number: u64) -> Result<Vec<u8>, String> {
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

/// A run list: `(first cluster or None for a hole, clusters)`, in the
/// file's order.
type Runs = Vec<(Option<u64>, u64)>;

/// A file's clusters: every extent of its unnamed `$DATA`, in order.
struct DataRuns {
    /// `(first cluster or None for a hole, clusters)`, in the file's order.
    runs: Vec<(Option<u64>, u64)>,
    /// The attribute's data size in bytes.
    data_size: u64,
    /// The clusters of a non-resident attribute list the extents were
    /// found through (metadata that matters like the runs themselves).
    list_runs: Vec<(Option<u64>, u64)>,
}

/// One attribute of a record, as far as this reader needs it.
struct Attr<'a> {
    kind: u64,
    /// The whole attribute, header included.
    bytes: &'a [u8],
}

impl Attr<'_> {
    fn resident(&self) -> bool {
        self.bytes[8] == 0
    }

    fn unnamed(&self) -> bool {
        self.bytes[9] == 0
    }

    fn instance(&self) -> u64 {
        le16(self.bytes, 14)
    }
}

/// The attributes of record `r` (number `number`, for errors), checked to
/// lie inside it.
fn attributes(r: &[u8], number: u64) -> Result<Vec<Attr<'_>>, String> {
    let bad = |what: &str| format!("MFT record {number}: {what}");
    let mut at = le16(r, 20) as usize;
    let mut out = Vec::new();
    loop {
        // The end marker may take the record's last bytes (a full record).
        if at + 4 > r.len() {
            return Err(bad("its attributes run past its end"));
        }
        let kind = le32(r, at);
        if kind == ATTR_END {
            return Ok(out);
        }
        if at + 16 > r.len() {
            return Err(bad("its attributes run past its end"));
        }
        let length = le32(r, at + 4) as usize;
        if length < 16 || at + length > r.len() {
            return Err(bad("an attribute of impossible length"));
        }
        let bytes = &r[at..at + length];
        // A non-resident header is 0x40 bytes; a resident one 0x18.
        if (bytes[8] != 0 && length < 0x40) || (bytes[8] == 0 && length < 0x18) {
            return Err(bad("an attribute shorter than its header"));
        }
        out.push(Attr { kind, bytes });
        at += length;
    }
}

/// One entry of an attribute list: an extent of an attribute and the record
/// that holds it.
struct ListEntry {
    kind: u64,
    unnamed: bool,
    lowest_vcn: u64,
    /// The MFT record number (48 bits of the file reference).
    record: u64,
    /// Its sequence number (the reference's top 16 bits; 0: not checked).
    sequence: u64,
    instance: u64,
}

/// Parses an attribute list's bytes.
fn list_entries(list: &[u8], number: u64) -> Result<Vec<ListEntry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < list.len() {
        if at + 26 > list.len() {
            return Err(format!(
                "MFT record {number}: its attribute list ends inside an entry at byte {at}"
            ));
        }
        let length = le16(list, at + 4) as usize;
        if length < 26 || at + length > list.len() {
            return Err(format!(
                "MFT record {number}: its attribute list has an entry of impossible length at byte {at}"
            ));
        }
        let reference = le64(list, at + 16);
        out.push(ListEntry {
            kind: le32(list, at),
            unnamed: list[at + 6] == 0,
            lowest_vcn: le64(list, at + 8),
            record: reference & 0xFFFF_FFFF_FFFF,
            sequence: reference >> 48,
            instance: le16(list, at + 24),
        });
        at += length;
    }
    Ok(out)
}

/// The most bytes an attribute list may hold (what Windows allows).
const MAX_LIST: u64 = 256 << 10;

/// What a volume's records are read with.
struct Volume<'a, 'r> {
    fs: &'a Region<'r>,
    cluster: u64,
    clusters: u64,
    record_size: u64,
}

impl Volume<'_, '_> {
    /// MFT record `number`, found through the MFT's `runs` (cluster by
    /// cluster where a cluster is smaller than a record: its clusters may
    /// be in different runs).
    fn record_in(&self, runs: &[(Option<u64>, u64)], number: u64) -> Result<Vec<u8>, String> {
        let step = self.cluster.min(self.record_size);
        let mut r = vec![0u8; self.record_size as usize];
        for (i, piece) in r.chunks_mut(step as usize).enumerate() {
            let at = number
                .checked_mul(self.record_size)
                .and_then(|offset| byte_at(runs, offset + i as u64 * step, self.cluster))
                .ok_or_else(|| format!("MFT record {number} lies past the MFT's mapped runs"))?;
            self.fs.read(at, piece)?;
        }
        undo_sequence(r, number)
    }

    /// Checks that `runs` lie inside the volume.
    fn check_runs(&self, runs: &[(Option<u64>, u64)], number: u64) -> Result<(), String> {
        for &(lcn, len) in runs {
            if let Some(lcn) = lcn {
                if lcn.checked_add(len).is_none_or(|end| end > self.clusters) {
                    return Err(format!(
                        "MFT record {number}: a run of {len} clusters at cluster {lcn} lies outside the volume's {}",
                        self.clusters
                    ));
                }
            }
        }
        Ok(())
    }

    /// A non-resident attribute's runs, decoded and checked to lie in the
    /// volume; `(lowest VCN, runs)`.
    fn extent(&self, attr: &Attr<'_>, number: u64) -> Result<(u64, Runs), String> {
        let runs = mapping_pairs(attr.bytes, le16(attr.bytes, 0x20) as usize)
            .ok_or_else(|| format!("MFT record {number}: its $DATA runs cannot be decoded"))?;
        self.check_runs(&runs, number)?;
        let lowest = le64(attr.bytes, 0x10);
        let highest = le64(attr.bytes, 0x18);
        let count: u64 = runs.iter().map(|&(_, l)| l).sum();
        if count == 0 || lowest.checked_add(count - 1) != Some(highest) {
            return Err(format!(
                "MFT record {number}: a $DATA extent from cluster {lowest} to {highest} of the file has runs of {count} clusters"
            ));
        }
        Ok((lowest, runs))
    }

    /// The bytes of an attribute list (resident or not) and the clusters
    /// holding a non-resident one.
    fn list_bytes(&self, attr: &Attr<'_>, number: u64) -> Result<(Vec<u8>, Runs), String> {
        let bad = |what: &str| format!("MFT record {number}: its attribute list {what}");
        if attr.resident() {
            let len = le32(attr.bytes, 0x10) as usize;
            let at = le16(attr.bytes, 0x14) as usize;
            let value = attr
                .bytes
                .get(at..at.saturating_add(len))
                .ok_or_else(|| bad("runs past its attribute"))?;
            return Ok((value.to_vec(), Vec::new()));
        }
        let runs = mapping_pairs(attr.bytes, le16(attr.bytes, 0x20) as usize)
            .ok_or_else(|| bad("has runs that cannot be decoded"))?;
        self.check_runs(&runs, number)?;
        let size = le64(attr.bytes, 0x30);
        if size > MAX_LIST {
            return Err(bad(&format!("claims {size} bytes")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        for &(lcn, len) in &runs {
            let take = (len * self.cluster).min(size - bytes.len() as u64);
            if take == 0 {
                break;
            }
            let at = bytes.len();
            bytes.resize(at + take as usize, 0);
            let lcn = lcn.ok_or_else(|| bad("has a hole"))?;
            self.fs.read(lcn * self.cluster, &mut bytes[at..])?;
        }
        if (bytes.len() as u64) < size {
            return Err(bad(&format!(
                "holds {} of its {size} bytes in its runs",
                bytes.len()
            )));
        }
        Ok((bytes, runs))
    }

    /// Every extent of the unnamed `$DATA` of record `number` (`base`, its
    /// base record), followed through its attribute list when it has one.
    /// Extension records are read through `mft` (the MFT's runs), or, for
    /// the MFT itself (`mft` None), through its extents found so far.
    fn data_runs(
        &self,
        base: &[u8],
        number: u64,
        mft: Option<&[(Option<u64>, u64)]>,
    ) -> Result<DataRuns, String> {
        let bad = |what: &str| format!("MFT record {number}: {what}");
        let attrs = attributes(base, number)?;
        if attrs
            .iter()
            .any(|a| a.kind == ATTR_DATA && a.unnamed() && a.resident())
        {
            return Err(bad("its $DATA is resident, not in clusters"));
        }
        // (allocated, data size): in the extent at cluster 0 of the file only.
        let sizes = |a: &Attr<'_>| (le64(a.bytes, 0x28), le64(a.bytes, 0x30));
        let mut first = None;
        let list = attrs.iter().find(|a| a.kind == ATTR_LIST);
        let (mut runs, list_runs) = match list {
            None => {
                let a = attrs
                    .iter()
                    .find(|a| a.kind == ATTR_DATA && a.unnamed())
                    .ok_or_else(|| bad("no $DATA attribute"))?;
                if le64(a.bytes, 0x10) != 0 {
                    return Err(bad(
                        "its $DATA attribute does not start at cluster 0 of the file, and it has no attribute list",
                    ));
                }
                first = Some(sizes(a));
                (self.extent(a, number)?.1, Vec::new())
            }
            Some(list) => {
                let (bytes, list_runs) = self.list_bytes(list, number)?;
                let entries = list_entries(&bytes, number)?;
                let mut runs: Vec<(Option<u64>, u64)> = Vec::new();
                let mut next_vcn = 0u64;
                let mut extents = 0;
                for e in entries.iter().filter(|e| e.kind == ATTR_DATA && e.unnamed) {
                    if e.lowest_vcn != next_vcn {
                        return Err(bad(&format!(
                            "its attribute list puts a $DATA extent at cluster {} of the file where cluster {next_vcn} is next",
                            e.lowest_vcn
                        )));
                    }
                    let held;
                    let r: &[u8] = if e.record == number {
                        base
                    } else {
                        held = self
                            .record_in(mft.unwrap_or(&runs), e.record)
                            .map_err(|why| {
                                bad(&format!("its $DATA extension record {}: {why}", e.record))
                            })?;
                        let parent = le64(&held, 0x20);
                        if parent & 0xFFFF_FFFF_FFFF != number {
                            return Err(bad(&format!(
                                "its extension record {} belongs to record {}",
                                e.record,
                                parent & 0xFFFF_FFFF_FFFF
                            )));
                        }
                        if e.sequence != 0 && le16(&held, 16) != e.sequence {
                            return Err(bad(&format!(
                                "its extension record {} has sequence number {}, the list says {}",
                                e.record,
                                le16(&held, 16),
                                e.sequence
                            )));
                        }
                        &held
                    };
                    let attrs = attributes(r, e.record)?;
                    let a = attrs
                        .iter()
                        .find(|a| {
                            a.kind == ATTR_DATA
                                && a.unnamed()
                                && a.instance() == e.instance
                                && !a.resident()
                        })
                        .ok_or_else(|| {
                            bad(&format!(
                                "the $DATA extent its attribute list names (instance {}) is not in record {}",
                                e.instance, e.record
                            ))
                        })?;
                    let (lowest, extent) = self.extent(a, e.record)?;
                    if lowest != e.lowest_vcn {
                        return Err(bad(&format!(
                            "the $DATA extent in record {} starts at cluster {lowest} of the file, its attribute list says {}",
                            e.record, e.lowest_vcn
                        )));
                    }
                    if lowest == 0 {
                        first = Some(sizes(a));
                    }
                    next_vcn += extent.iter().map(|&(_, l)| l).sum::<u64>();
                    runs.extend(extent);
                    extents += 1;
                }
                if extents == 0 {
                    return Err(bad("its attribute list names no $DATA attribute"));
                }
                (runs, list_runs)
            }
        };
        // The sizes are in the first extent only.
        let (allocated, data_size) =
            first.ok_or_else(|| bad("no $DATA extent at cluster 0 of the file"))?;
        let mapped: u64 = runs.iter().map(|&(_, l)| l).sum();
        if mapped.checked_mul(self.cluster) != Some(allocated) || data_size > allocated {
            return Err(bad(&format!(
                "its $DATA runs hold {mapped} clusters of {} bytes but it has {allocated} bytes allocated ({data_size} in use){}",
                self.cluster,
                if list.is_none() { " and no attribute list" } else { "" }
            )));
        }
        runs.shrink_to_fit();
        Ok(DataRuns {
            runs,
            data_size,
            list_runs,
        })
    }
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
