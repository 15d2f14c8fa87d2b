//! Partition tables: MBR and GPT.

use crate::model::{Partition, PartitionTable, TableKind};
use crate::read::{bytes, le32, le64, ReadAt};

/// Whether an image's first bytes settle that [`read`] finds no partition
/// table in it: no sign of one (no MBR boot signature `55 AA` at 510, no GPT
/// header `EFI PART` at 512 or 4096), or a boot signature over a sector that
/// [`read`] does not take for a table (boot code where the entries would be,
/// or four empty entries) with no GPT header and no protective entry. `false`
/// whenever a table may be there: a GPT is left to [`read`], which may find
/// it from its backup at the image's end.
pub(crate) fn no_table_in_head(head: &[u8]) -> bool {
    let at = |offset: usize, sign: &[u8]| head.get(offset..offset + sign.len()) == Some(sign);
    if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        return false;
    }
    if !at(510, &[0x55, 0xAA]) {
        return true;
    }
    match mbr_entries(&entry_slots(&head[..512])) {
        MbrEntries::BootCode | MbrEntries::Empty => true,
        MbrEntries::Protective | MbrEntries::Partitions => false,
    }
}

/// What the four entries of a sector with an MBR boot signature hold, as
/// [`read`] judges them.
enum MbrEntries {
    /// A boot flag other than 0 or 0x80: boot code, not a table.
    BootCode,
    /// A protective entry (type 0xEE): the GPT is the table.
    Protective,
    /// No entry with a type and a length.
    Empty,
    /// At least one partition.
    Partitions,
}

/// The four 16-byte partition entries of an MBR sector.
fn entry_slots(mbr: &[u8]) -> [&[u8]; 4] {
    std::array::from_fn(|i| &mbr[446 + 16 * i..462 + 16 * i])
}

fn mbr_entries(entries: &[&[u8]; 4]) -> MbrEntries {
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return MbrEntries::BootCode;
    }
    if entries.iter().any(|e| e[4] == 0xEE) {
        return MbrEntries::Protective;
    }
    if entries.iter().all(|e| e[4] == 0 || le32(e, 12) == 0) {
        return MbrEntries::Empty;
    }
    MbrEntries::Partitions
}

/// The partition table, if the image has a valid one. Damage is noted in
/// `problems`: a GPT whose primary header is damaged is read from its backup
/// (and said so); one with both copies damaged is no table.
pub(crate) fn read(image: &dyn ReadAt, problems: &mut Vec<String>) -> Option<PartitionTable> {
    let size = image.size();
    let mbr = bytes(image, 0, 512)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        // No MBR signature; a GPT without its protective MBR is still a GPT
        // to firmware that reads it, but not to a BIOS.
        if let Some(gpt) = gpt(image, problems, false) {
            problems.push("GPT without a protective MBR (no 55 AA signature at byte 510)".into());
            return Some(gpt);
        }
        return None;
    }
    let entries = entry_slots(&mbr);
    match mbr_entries(&entries) {
        // A boot sector with code where a table would be: no table.
        MbrEntries::BootCode | MbrEntries::Empty => return None,
        // A protective MBR: the GPT is the table (its damage is noted there).
        MbrEntries::Protective => return gpt(image, problems, true),
        MbrEntries::Partitions => {}
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let first = u64::from(le32(e, 8));
        let count = u64::from(le32(e, 12));
        if kind == 0 || count == 0 {
            continue;
        }
        let (start, len) = (first * 512, count * 512);
        if start + len > size {
            problems.push(format!(
                "MBR partition {} ends at byte {} but the image has {} bytes: truncated image or damaged table",
                i + 1,
                start + len,
                size
            ));
        }
        partitions.push(Partition {
            number: i as u32 + 1,
            start,
            size: len,
            type_id: format!("0x{kind:02x}"),
            type_name: mbr_type_name(kind).map(str::to_string),
            name: None,
            bootable: e[0] == 0x80,
            filesystem: None,
        });
    }
    if partitions.is_empty() {
        return None;
    }
    let extended: Vec<(u64, u64)> = partitions
        .iter()
        .filter(|p| p.is_extended())
        .map(|p| (p.start, p.size))
        .collect();
    if let Some(&(start, len)) = extended.first() {
        if extended.len() > 1 {
            problems
                .push("MBR has more than one extended partition; only the first is read".into());
        }
        logical(image, start, len, &mut partitions, problems);
    }
    Some(PartitionTable {
        kind: TableKind::Mbr,
        partitions,
    })
}

/// The most logical partitions read from one extended partition (Linux
/// reads at most 256 partitions per disk).
const MAX_LOGICAL: usize = 256;

/// The logical partitions of the extended partition at `ext_start`: a chain of
/// extended boot records, each holding one logical partition (relative to that
/// record) and the link to the next record (relative to the extended
/// partition's start). Numbered from 5, as Linux and fdisk do. A chain that
/// loops, leaves the extended partition or is cut short is a problem, and the
/// partitions read up to there are kept.
fn logical(
    image: &dyn ReadAt,
    ext_start: u64,
    ext_len: u64,
    partitions: &mut Vec<Partition>,
    problems: &mut Vec<String>,
) {
    let size = image.size();
    let mut ebr_at = ext_start;
    let mut seen = std::collections::HashSet::new();
    let mut number = 5;
    loop {
        if !seen.insert(ebr_at) || seen.len() > MAX_LOGICAL {
            problems.push(format!(
                "the chain of logical partitions loops or is longer than {MAX_LOGICAL} (at byte {ebr_at}); read up to there"
            ));
            return;
        }
        let Some(ebr) = bytes(image, ebr_at, 512) else {
            problems.push(format!(
                "extended boot record at byte {ebr_at} lies past the end of the image"
            ));
            return;
        };
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            problems.push(format!(
                "extended boot record at byte {ebr_at} has no 55 AA signature; logical partitions read up to there"
            ));
            return;
        }
        let (this, next) = (&ebr[446..462], &ebr[462..478]);
        let count = u64::from(le32(this, 12));
        if this[4] != 0 && count != 0 {
            let start = ebr_at + u64::from(le32(this, 8)) * 512;
            let len = count * 512;
            if start + len > ext_start + ext_len {
                problems.push(format!(
                    "logical partition {number} ends at byte {} beyond its extended partition (which ends at byte {})",
                    start + len,
                    ext_start + ext_len
                ));
            } else if start + len > size {
                problems.push(format!(
                    "logical partition {number} ends at byte {} but the image has {size} bytes: truncated image or damaged table",
                    start + len
                ));
            }
            partitions.push(Partition {
                number,
                start,
                size: len,
                type_id: format!("0x{:02x}", this[4]),
                type_name: mbr_type_name(this[4]).map(str::to_string),
                name: None,
                bootable: this[0] == 0x80,
                filesystem: None,
            });
            number += 1;
        }
        let link = u64::from(le32(next, 8));
        if next[4] == 0 || link == 0 {
            return;
        }
        ebr_at = ext_start + link * 512;
        if ebr_at >= ext_start + ext_len {
            problems.push(format!(
                "extended boot record link to byte {ebr_at} leaves its extended partition"
            ));
            return;
        }
    }
}

fn mbr_type_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 | 0x0f | 0x85 => "extended",
        0x07 => "NTFS/exFAT",
        0x0b | 0x0c => "FAT32",
        0x17 => "hidden NTFS/exFAT",
        0x1b | 0x1c => "hidden FAT32",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT protective",
        0xef => "EFI system",
        0xfd => "Linux RAID",
        _ => return None,
    })
}

/// The GPT: the primary header at LBA 1, else the backup at the last LBA,
/// in 512-byte sectors; or, with no header at byte 512 but a good one at
/// byte 4096, in 4096-byte sectors (the image of a disk of 4096-byte
/// sectors, as a capture of one gives), which is said as a problem: written
/// to a stick of 512-byte sectors, that stick sees no partition.
fn gpt(image: &dyn ReadAt, problems: &mut Vec<String>, expected: bool) -> Option<PartitionTable> {
    // Only behind a protective MBR (`expected`), which such an image has at
    // byte 0 as any GPT disk: any other image is not read at byte 4096 for
    // it (its head is read as little as can be, through the page cache).
    let primary = header(image, 1, 512);
    if expected && primary.is_err() {
        if let Ok(found) = header(image, 1, 4096) {
            problems.push(
                "GPT of 4096-byte sectors: its partitions are found only on a disk of 4096-byte sectors, not on a stick of 512-byte sectors"
                    .into(),
            );
            return gpt_in(image, problems, expected, 4096, Ok(found));
        }
    }
    gpt_in(image, problems, expected, 512, primary)
}

/// [`gpt`] in sectors of `sector` bytes, its primary header (with its
/// entries) read already.
fn gpt_in(
    image: &dyn ReadAt,
    problems: &mut Vec<String>,
    expected: bool,
    sector: u64,
    primary: Result<(Vec<u8>, Vec<u8>), String>,
) -> Option<PartitionTable> {
    let size = image.size();
    let sectors = size / sector;
    let (header, entries) = match primary {
        Ok(found) => found,
        Err(why) => {
            let backup = if sectors > 1 {
                header(image, sectors - 1, sector)
            } else {
                Err("no room for a backup header".into())
            };
            match backup {
                Ok(found) => {
                    problems.push(format!(
                        "primary GPT header damaged ({why}); partitions read from the backup header"
                    ));
                    found
                }
                Err(backup_why) => {
                    if expected {
                        problems.push(format!(
                            "GPT damaged: primary header {why}; backup header {backup_why}"
                        ));
                    }
                    return None;
                }
            }
        }
    };
    let entry_size = le32(&header, 84) as usize;
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size).enumerate() {
        let type_guid = &e[0..16];
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            problems.push(format!("GPT partition {} ends before it starts", i + 1));
            continue;
        }
        // Sizes from the table are checked, never wrapped: a damaged entry may
        // hold any number.
        let start = first.saturating_mul(sector);
        let len = (last - first).saturating_add(1).saturating_mul(sector);
        if start.saturating_add(len) > size {
            problems.push(format!(
                "GPT partition {} ends at byte {} but the image has {} bytes: truncated image or damaged table",
                i + 1,
                start.saturating_add(len),
                size
            ));
        }
        let name: Vec<u16> = e[56..128.min(entry_size)]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let name = String::from_utf16_lossy(&name);
        let guid = guid_text(type_guid);
        partitions.push(Partition {
            number: i as u32 + 1,
            start,
            size: len,
            type_name: gpt_type_name(&guid).map(str::to_string),
            type_id: guid,
            name: (!name.is_empty()).then_some(name),
            bootable: le64(e, 48) & 0x4 != 0,
            filesystem: None,
        });
    }
    Some(PartitionTable {
        kind: TableKind::Gpt,
        partitions,
    })
}

/// A GPT header at `lba` (of `sector`-byte sectors) and its entry array,
/// both CRCs checked.
fn header(image: &dyn ReadAt, lba: u64, sector: u64) -> Result<(Vec<u8>, Vec<u8>), String> {
    let h = bytes(image, lba * sector, 512).ok_or("cannot be read (image too short)")?;
    if h[0..8] != *b"EFI PART" {
        return Err("has no \"EFI PART\" signature".into());
    }
    let header_size = le32(&h, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(format!("claims a size of {header_size} bytes"));
    }
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(&h, 16) {
        return Err("fails its CRC32".into());
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80) as usize;
    let entry_size = le32(&h, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 16384 || count * entry_size > 4 << 20 {
        return Err(format!("describes {count} entries of {entry_size} bytes"));
    }
    let entries = bytes(
        image,
        entries_lba.saturating_mul(sector),
        count * entry_size,
    )
    .ok_or("points at entries past the end of the image")?;
    if crc32fast::hash(&entries) != le32(&h, 88) {
        return Err("has a partition entry array that fails its CRC32".into());
    }
    Ok((h, entries))
}

/// A GUID as text, upper case (the first three fields are little-endian).
fn guid_text(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(g, 0),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        _ => return None,
    })
}
