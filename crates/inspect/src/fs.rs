//! File systems by their signatures.

use crate::model::{FileSystem, FsKind};
use crate::read::{bytes, label, le16, le32, ReadAt};

/// The file system starting at `offset` (within `len` bytes), if one is
/// recognised.
pub(crate) fn detect(image: &dyn ReadAt, offset: u64, len: u64) -> Option<FileSystem> {
    let head = bytes(image, offset, 4096.min(len as usize))?;
    if head.len() >= 512 {
        if let Some(fs) = boot_sector(&head) {
            return Some(fs);
        }
    }
    if head.len() >= 2048 {
        if let Some(fs) = ext(&head[1024..2048]) {
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
                });
            }
            if vd[1..6] == *b"BEA01" {
                return Some(FileSystem {
                    kind: FsKind::Udf,
                    label: None,
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
        });
    }
    if b[3..11] == *b"EXFAT   " {
        return Some(FileSystem {
            kind: FsKind::ExFat,
            label: None,
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
    })
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
    })
}
