//! File systems by their signatures.

use crate::model::{FileSystem, FsKind};
use crate::read::{bytes, label, le16, le32, ReadAt};

/// The file system starting at `offset` (within `len` bytes), if one is
/// recognised.
pub(crate) fn detect(image: &dyn ReadAt, offset: u64, len: u64) -> Option<FileSystem> {
    let head = bytes(image, offset, 4096.min(len as usize))?;
    if head.len() >= 512 {
        if let Some(mut fs) = boot_sector(&head) {
            match fs.kind {
                FsKind::Ntfs => fs.label = ntfs_label(image, offset, len, &head),
                FsKind::ExFat => fs.label = exfat_label(image, offset, len, &head),
                _ => {}
            }
            return Some(fs);
        }
    }
    if head.len() >= 2048 {
        if let Some(mut fs) = ext(&head[1024..2048]) {
            fs.os_release = crate::ext::os_release(image, offset, len);
            return Some(fs);
        }
    }
    if len >= 32768 + 2048 {
        if let Some(vd) = bytes(image, offset + 32768, 2048) {
            if vd[1..6] == *b"CD001" {
                let volume = if vd[0] == 1 { label(&vd[40..72]) } else { None };
                return Some(FileSystem {
                    kind: FsKind::Iso9660,
                    label: volume,
                    os_release: None,
                });
            }
            if vd[1..6] == *b"BEA01" {
                return Some(FileSystem {
                    kind: FsKind::Udf,
                    label: None,
                    os_release: None,
                });
            }
        }
    }
    None
}

/// FAT, NTFS and exFAT: a boot sector at the start.
fn boot_sector(b: &[u8]) -> Option<FileSystem> {
    if b[3..11] == *b"NTFS    " {
        return Some(FileSystem {
            kind: FsKind::Ntfs,
            label: None,
            os_release: None,
        });
    }
    if b[3..11] == *b"EXFAT   " {
        return Some(FileSystem {
            kind: FsKind::ExFat,
            label: None,
            os_release: None,
        });
    }
    if b[510] != 0x55 || b[511] != 0xAA || !(b[0] == 0xEB || b[0] == 0xE9) {
        return None;
    }
    let sector = le16(b, 11);
    let per_cluster = b[13];
    if !matches!(sector, 512 | 1024 | 2048 | 4096)
        || per_cluster == 0
        || !per_cluster.is_power_of_two()
    {
        return None;
    }
    let fat_label = |l: Option<String>| l.filter(|l| l != "NO NAME");
    if b[82..90] == *b"FAT32   " {
        return Some(FileSystem {
            kind: FsKind::Fat32,
            label: fat_label(label(&b[71..82])),
            os_release: None,
        });
    }
    let kind = match &b[54..62] {
        b"FAT12   " => FsKind::Fat12,
        b"FAT16   " => FsKind::Fat16,
        b"FAT     " => {
            // Decide by the cluster count, as the FAT specification does.
            let sectors = if le16(b, 19) != 0 {
                u32::from(le16(b, 19))
            } else {
                le32(b, 32)
            };
            if sectors / u32::from(per_cluster) < 4085 {
                FsKind::Fat12
            } else {
                FsKind::Fat16
            }
        }
        _ => return None,
    };
    Some(FileSystem {
        kind,
        label: fat_label(label(&b[43..54])),
        os_release: None,
    })
}

/// The most bytes of a directory or a file-system structure one label
/// lookup reads.
const MAX_STRUCTURE_BYTES: u64 = 1 << 20;

/// The NTFS volume label: the `$VOLUME_NAME` attribute (0x60) of MFT record 3
/// (`$Volume`). The first MFT records are contiguous at the MFT's start, so
/// record 3 is found from the boot sector alone.
fn ntfs_label(image: &dyn ReadAt, offset: u64, len: u64, boot: &[u8]) -> Option<String> {
    let sector = u64::from(le16(boot, 11));
    let cluster = sector * u64::from(boot[13]);
    if !matches!(sector, 256..=4096) || !sector.is_power_of_two() || cluster == 0 {
        return None;
    }
    // Clusters per MFT record; a negative value n means 2^-n bytes.
    let per_record = boot[64] as i8;
    let record_size = if per_record < 0 {
        1u64.checked_shl(u32::from(per_record.unsigned_abs()))?
    } else {
        u64::from(per_record as u8) * cluster
    };
    if !(512..=65536).contains(&record_size) {
        return None;
    }
    let mft = u64::from_le_bytes(boot[48..56].try_into().ok()?).checked_mul(cluster)?;
    let at = mft.checked_add(3 * record_size)?;
    if at.checked_add(record_size)? > len {
        return None;
    }
    let mut record = bytes(image, offset + at, record_size as usize)?;
    if record[0..4] != *b"FILE" {
        return None;
    }
    // The update sequence: the last two bytes of every sector were replaced
    // by its number on write; the array holds the originals.
    let usa = usize::from(le16(&record, 4));
    let usa_count = usize::from(le16(&record, 6));
    let stride = sector as usize;
    if usa_count == 0
        || usa + 2 * usa_count > record.len()
        || (usa_count - 1) * stride > record.len()
    {
        return None;
    }
    let check = [record[usa], record[usa + 1]];
    for i in 1..usa_count {
        let end = i * stride;
        if record[end - 2..end] != check {
            return None; // a torn write: the record is not trusted
        }
        let original = [record[usa + 2 * i], record[usa + 2 * i + 1]];
        record[end - 2..end].copy_from_slice(&original);
    }
    let mut attr = usize::from(le16(&record, 20));
    while attr + 24 <= record.len() {
        let kind = le32(&record, attr);
        let length = le32(&record, attr + 4) as usize;
        if kind == 0xFFFF_FFFF || length < 24 || attr + length > record.len() {
            return None;
        }
        if kind == 0x60 && record[attr + 8] == 0 {
            let content_len = le32(&record, attr + 16) as usize;
            let content_at = attr + usize::from(le16(&record, attr + 20));
            let name = record.get(content_at..content_at + content_len)?;
            return utf16le(name);
        }
        attr += length;
    }
    None
}

/// The exFAT volume label: the volume-label entry (0x83) of the root
/// directory, followed along the FAT for at most a megabyte.
fn exfat_label(image: &dyn ReadAt, offset: u64, len: u64, boot: &[u8]) -> Option<String> {
    let sector_shift = u32::from(boot[108]);
    let cluster_shift = u32::from(boot[109]);
    if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
        return None;
    }
    let sector = 1u64 << sector_shift;
    let cluster = sector << cluster_shift;
    let fat = u64::from(le32(boot, 80)) * sector;
    let heap = u64::from(le32(boot, 88)) * sector;
    let cluster_count = le32(boot, 92);
    let mut current = le32(boot, 96);
    let mut read = 0;
    while (2..cluster_count.saturating_add(2)).contains(&current) && read < MAX_STRUCTURE_BYTES {
        let at = heap + u64::from(current - 2) * cluster;
        if at + cluster > len {
            return None;
        }
        let dir = bytes(image, offset + at, cluster as usize)?;
        read += cluster;
        for entry in dir.chunks_exact(32) {
            match entry[0] {
                0x00 => return None, // the end of the directory
                0x83 => {
                    let chars = usize::from(entry[1]).min(11);
                    return utf16le(&entry[2..2 + 2 * chars]);
                }
                _ => {}
            }
        }
        // The next cluster of the root directory, from the FAT.
        let next = bytes(image, offset + fat + u64::from(current) * 4, 4)?;
        current = le32(&next, 0);
    }
    None
}

/// Text from UTF-16LE; `None` when empty.
fn utf16le(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    let text = String::from_utf16_lossy(&units).trim_end().to_string();
    (!text.is_empty()).then_some(text)
}

/// ext2/3/4: the superblock (1024 bytes at offset 1024).
fn ext(sb: &[u8]) -> Option<FileSystem> {
    if le16(sb, 56) != 0xEF53 {
        return None;
    }
    let compat = le32(sb, 92);
    let incompat = le32(sb, 96);
    let ro_compat = le32(sb, 100);
    // extents, 64bit, flex_bg, … ; huge_file, gdt_csum, dir_nlink,
    // extra_isize, metadata_csum: features ext3 never had.
    const EXT4_INCOMPAT: u32 = 0x0040 | 0x0080 | 0x0200 | 0x0400 | 0x8000;
    const EXT4_RO_COMPAT: u32 = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0400;
    let kind = if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO_COMPAT != 0 {
        FsKind::Ext4
    } else if compat & 0x0004 != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    Some(FileSystem {
        kind,
        label: label(&sb[120..136]),
        os_release: None,
    })
}
