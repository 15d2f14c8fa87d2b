//! Optical-disc images: ISO 9660 volume descriptors, UDF's recognition
//! sequence, El Torito boot entries, and a path lookup in the ISO 9660
//! directory tree (Rock Ridge names where present), then in the UDF tree
//! (`udf`) for what the ISO 9660 side lacks.

use crate::model::{Boot, IsoInfo};
use crate::read::{bytes, label, le32, ReadAt};
use crate::udf::Volume;

const SECTOR: u64 = 2048;
/// How many volume descriptors are read at most (the set ends with a
/// terminator; UDF's sequence follows it).
const MAX_DESCRIPTORS: u64 = 32;
/// The most directory bytes one lookup reads (a directory is a few sectors).
const MAX_DIR_BYTES: u32 = 1 << 20;

/// The ISO structure, if the image has an ISO 9660 primary volume descriptor
/// or a UDF recognition sequence at 32 KiB.
pub(crate) fn inspect(image: &dyn ReadAt, problems: &mut Vec<String>) -> Option<IsoInfo> {
    let mut pvd = None;
    let mut boot_catalog = None;
    let mut udf = false;
    let mut seen_any = false;
    for i in 0..MAX_DESCRIPTORS {
        let Some(vd) = bytes(image, 16 * SECTOR + i * SECTOR, SECTOR as usize) else {
            break;
        };
        match &vd[1..6] {
            b"CD001" => {
                seen_any = true;
                match vd[0] {
                    0 if vd[7..30] == *b"EL TORITO SPECIFICATION" => {
                        boot_catalog = Some(le32(&vd, 71));
                    }
                    1 if pvd.is_none() => pvd = Some(vd),
                    _ => {}
                }
            }
            b"BEA01" | b"TEA01" | b"BOOT2" | b"CDW02" => seen_any = true,
            b"NSR02" | b"NSR03" => {
                seen_any = true;
                udf = true;
            }
            _ => {
                if seen_any && vd.iter().all(|&b| b == 0) {
                    break;
                }
                if !seen_any {
                    return None;
                }
            }
        }
    }
    if pvd.is_none() && !udf {
        return None;
    }
    let el_torito = match boot_catalog {
        Some(lba) => catalog(image, lba, problems),
        None => Vec::new(),
    };
    let mut info = IsoInfo {
        volume_id: pvd.as_ref().and_then(|p| label(&p[40..72])),
        udf,
        udf_volume_id: None,
        udf_revision: None,
        el_torito,
        hybrid: false,
        windows_installer: false,
        disk_info: None,
    };
    if let Some(pvd) = &pvd {
        let tree = Tree { image, pvd };
        info.windows_installer = INSTALLER_FILES
            .iter()
            .any(|f| tree.lookup(&["sources", f]).is_some());
        info.disk_info = tree
            .lookup(&[".disk", "info"])
            .filter(|e| !e.dir)
            .and_then(|e| bytes(image, u64::from(e.lba) * SECTOR, e.len.min(512) as usize))
            .and_then(|b| first_line(&b));
    }
    if udf {
        // Windows ISOs keep their files in UDF only (the ISO 9660 side holds
        // a README or nothing): what the ISO 9660 tree lacks is looked up
        // there.
        if let Some((label, revision)) = crate::udf::identify(image) {
            info.udf_volume_id = label;
            info.udf_revision = revision;
        }
        match Volume::open(image) {
            Ok(volume) => {
                if !info.windows_installer {
                    info.windows_installer = INSTALLER_FILES
                        .iter()
                        .any(|f| volume.lookup(&["sources", f]).is_some_and(|n| !n.dir));
                }
                if info.disk_info.is_none() {
                    info.disk_info = volume
                        .lookup(&[".disk", "info"])
                        .filter(|n| !n.dir)
                        .and_then(|n| volume.read(&n, 512))
                        .and_then(|b| first_line(&b));
                }
            }
            Err(why) => problems.push(match &info.udf_revision {
                Some(revision) => format!("UDF {revision} volume not read: {why}"),
                None => format!("UDF volume not read: {why}"),
            }),
        }
    }
    Some(info)
}

/// Whether an image's first bytes hold an ISO's volume descriptors (an ISO
/// 9660 primary volume descriptor or a UDF recognition sequence) with an
/// El Torito boot record among them, read as far as `head` goes. The boot
/// catalog the record points to may lie further on: [`inspect`] reads its
/// entries from the whole image.
pub(crate) fn boot_record_in_head(head: &[u8]) -> bool {
    let (mut volume, mut boot_record) = (false, false);
    for i in 0..MAX_DESCRIPTORS {
        let at = ((16 + i) * SECTOR) as usize;
        let Some(vd) = head.get(at..at + SECTOR as usize) else {
            break;
        };
        match &vd[1..6] {
            b"CD001" => match vd[0] {
                0 if vd[7..30] == *b"EL TORITO SPECIFICATION" => boot_record = true,
                1 => volume = true,
                _ => {}
            },
            b"NSR02" | b"NSR03" => volume = true,
            b"BEA01" | b"TEA01" | b"BOOT2" | b"CDW02" => {}
            // Anything else ends the descriptors (or there were none).
            _ => break,
        }
    }
    volume && boot_record
}

/// The files whose presence in `sources/` makes a Windows installer.
const INSTALLER_FILES: [&str; 3] = ["install.wim", "install.esd", "install.swm"];

/// The first line of a text, trimmed; `None` when empty.
fn first_line(b: &[u8]) -> Option<String> {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// The boot entries of the El Torito catalog at `lba`.
fn catalog(image: &dyn ReadAt, lba: u32, problems: &mut Vec<String>) -> Vec<Boot> {
    let Some(cat) = bytes(image, u64::from(lba) * SECTOR, SECTOR as usize) else {
        problems.push(format!(
            "El Torito boot catalog at sector {lba} lies past the end of the image"
        ));
        return Vec::new();
    };
    if cat[0] != 1 || cat[30] != 0x55 || cat[31] != 0xAA {
        problems.push("El Torito boot catalog has no valid validation entry".into());
        return Vec::new();
    }
    let platform = |id: u8| match id {
        0 => Boot::Bios,
        0xEF => Boot::Uefi,
        _ => Boot::Other,
    };
    let mut boots = Vec::new();
    let mut current = platform(cat[1]);
    // The default entry follows the validation entry; section headers (0x90,
    // 0x91 for the last) name the platform of the entries after them.
    for entry in cat.chunks_exact(32).skip(1) {
        match entry[0] {
            0x88 => {
                if !boots.contains(&current) {
                    boots.push(current);
                }
            }
            0x90 | 0x91 => current = platform(entry[1]),
            0x00 => {}
            0x44 => {} // section entry extension
            _ => break,
        }
    }
    boots
}

/// A directory entry found by a lookup.
struct Entry {
    lba: u32,
    len: u32,
    dir: bool,
}

/// The ISO 9660 directory tree of one primary volume descriptor.
struct Tree<'a> {
    image: &'a dyn ReadAt,
    pvd: &'a [u8],
}

impl Tree<'_> {
    /// The entry at `path` (components compared without case, ISO 9660
    /// version suffixes and trailing dots, or by their Rock Ridge names).
    fn lookup(&self, path: &[&str]) -> Option<Entry> {
        let root = &self.pvd[156..190];
        let mut here = Entry {
            lba: le32(root, 2),
            len: le32(root, 10),
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

    fn find_in(&self, dir: &Entry, want: &str) -> Option<Entry> {
        let len = dir.len.min(MAX_DIR_BYTES);
        let data = bytes(self.image, u64::from(dir.lba) * SECTOR, len as usize)?;
        let mut at = 0usize;
        while at < data.len() {
            let rec_len = data[at] as usize;
            if rec_len == 0 {
                // Records do not cross sectors: go on at the next one.
                at = (at / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if at + rec_len > data.len() || rec_len < 34 {
                return None;
            }
            let rec = &data[at..at + rec_len];
            let name_len = rec[32] as usize;
            if 33 + name_len > rec.len() {
                return None;
            }
            let name = &rec[33..33 + name_len];
            let entry = Entry {
                lba: le32(rec, 2),
                len: le32(rec, 10),
                dir: rec[25] & 0x02 != 0,
            };
            // The system use area follows the name and its padding byte.
            let system_use = rec.get(33 + name_len + (1 - name_len % 2)..).unwrap_or(&[]);
            let rr = rock_ridge_name(system_use);
            let matches = match &rr {
                Some(rr) => rr.eq_ignore_ascii_case(want),
                None => iso_name(name).eq_ignore_ascii_case(&iso_mangle(want)),
            };
            if matches && !(name_len == 1 && (name[0] == 0 || name[0] == 1)) {
                return Some(entry);
            }
            at += rec_len;
        }
        None
    }
}

/// An ISO 9660 name without its `;1` version and trailing dot.
fn iso_name(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    let text = text.split(';').next().unwrap_or_default();
    text.trim_end_matches('.').to_string()
}

/// What a name becomes in plain ISO 9660 (d-characters: `.disk` is `_DISK`).
fn iso_mangle(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && i > 0) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The Rock Ridge `NM` (alternate name) in a record's system use area.
fn rock_ridge_name(mut area: &[u8]) -> Option<String> {
    let mut name = String::new();
    while area.len() >= 4 {
        let len = area[2] as usize;
        if len < 4 || len > area.len() {
            break;
        }
        if &area[0..2] == b"NM" && len >= 5 {
            name.push_str(&String::from_utf8_lossy(&area[5..len]));
        }
        area = &area[len..];
    }
    (!name.is_empty()).then_some(name)
}
