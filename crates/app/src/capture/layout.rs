//! Where a master's data ends, read from its partition table in the
//! device's own logical sectors, and the GPT a capture up to that end
//! needs to be a disk of its own.
//!
//! A GPT disk keeps a backup of its table (the entries, then a header) in
//! its last sectors. A capture up to the end of the last partition leaves
//! those out, so its image would hold a primary header pointing past its
//! end: every stick written from it would have a damaged GPT (`sgdisk -v`:
//! "Backup header: ERROR"). The capture therefore rebuilds the backup right
//! after the data, as a GPT tool does when it writes a table into an image
//! file of that size: the primary header's `AlternateLBA` and
//! `LastUsableLBA` point there (its CRC computed again), the backup is the
//! same entries and a header naming its own place, and a protective MBR
//! spans the image. Everything else is the device's bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use super::Extent;

/// The device's logical sector size (`BLKSSZGET`): the unit its MBR and
/// GPT count in. 512 when the kernel does not say (not a block device).
pub(super) fn sector_size(file: &File) -> u64 {
    rustix::fs::ioctl_blksszget(file).map_or(512, u64::from)
}

/// What a capture up to the last partition reads, and how it ends.
#[derive(Debug)]
pub(super) struct Layout {
    /// Which table said where the data ends.
    pub extent: Extent,
    /// Where the last partition ends, in bytes: what is read of the device.
    pub data_end: u64,
    /// For a GPT: the bytes laid over the device's and those added after
    /// its data.
    pub rebuilt: Option<RebuiltGpt>,
}

impl Layout {
    /// The image's size: the data, and the backup GPT after it.
    pub fn image_size(&self) -> u64 {
        self.data_end + self.rebuilt.as_ref().map_or(0, |r| r.tail.len() as u64)
    }
}

/// Where the last partition ends, from a GPT (first) or an MBR of a device
/// of `device_size` bytes with `sector`-byte sectors: `Ok(None)` without a
/// table with a partition, `Err` with the reason when the table cannot say
/// it (read from the GPT's backup header, a partition past the device's
/// end, a protective MBR whose GPT cannot be read).
pub(super) fn read_layout(
    file: &mut File,
    device_size: u64,
    sector: u64,
) -> Result<Option<Layout>, String> {
    let found = match gpt_end(file, sector)? {
        Some(end) => Some(Layout {
            extent: Extent::Gpt,
            data_end: end,
            rebuilt: None,
        }),
        None => mbr_end(file, sector)?.map(|end| Layout {
            extent: Extent::Mbr,
            data_end: end,
            rebuilt: None,
        }),
    };
    match found {
        Some(layout) if layout.data_end > device_size => Err(format!(
            "its last partition ends at byte {}, past the device's end ({device_size} bytes)",
            layout.data_end
        )),
        Some(mut layout) if layout.extent == Extent::Gpt => {
            layout.rebuilt = Some(rebuild_gpt(file, sector, layout.data_end / sector)?);
            Ok(Some(layout))
        }
        found => Ok(found),
    }
}

fn gpt_end(file: &mut File, sector: u64) -> Result<Option<u64>, String> {
    if file.seek(SeekFrom::Start(0)).is_err() {
        return Ok(None);
    }
    let Ok(gpt) = gptman::GPT::read_from(file, sector) else {
        return Ok(None);
    };
    if gpt.header.is_backup() {
        // The copy at the device's end is the only good one: the image up to
        // the last partition would hold no usable table.
        return Err("its primary GPT header is damaged (the table is read from the backup header at the device's end, which a capture up to the last partition leaves out)".into());
    }
    Ok(gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| (p.ending_lba + 1) * sector)
        .max())
}

/// The MBR's partition type that protects a GPT.
const PROTECTIVE: u8 = 0xEE;

fn mbr_end(file: &mut File, sector: u64) -> Result<Option<u64>, String> {
    if file.seek(SeekFrom::Start(0)).is_err() {
        return Ok(None);
    }
    let Ok(mbr) = mbrman::MBR::read_from(file, sector as u32) else {
        return Ok(None);
    };
    if mbr.iter().any(|(_, p)| p.sys == PROTECTIVE) {
        // Its partition is the GPT's placeholder over the whole disk, not
        // where data ends; the GPT it protects was not found.
        return Err(
            "its MBR protects a GPT (type 0xEE), and no GPT could be read from the device".into(),
        );
    }
    let primary = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| u64::from(p.starting_lba) + u64::from(p.sectors));
    let logical = mbr
        .logical_partitions
        .iter()
        .map(|l| u64::from(l.partition.starting_lba) + u64::from(l.partition.sectors));
    Ok(primary.chain(logical).max().map(|end| end * sector))
}

/// The GPT of an image cut at sector `data_end_lba` (see the module's
/// docs).
#[derive(Debug)]
pub(super) struct RebuiltGpt {
    /// Byte offsets in the image and the bytes that replace the device's
    /// there (the protective MBR's sector, the primary header's sector).
    patches: Vec<(u64, Vec<u8>)>,
    /// The backup: the entries, then the header, after the data.
    tail: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put32(b: &mut [u8], at: usize, value: u32) {
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, value: u64) {
    b[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Sets a GPT header's CRC (over its first `size` bytes, the CRC field
/// counted as zero).
fn seal(header: &mut [u8], size: usize) {
    put32(header, 16, 0);
    let crc = crc32fast::hash(&header[..size]);
    put32(header, 16, crc);
}

fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| format!("its GPT could not be read at byte {offset}: {e}"))?;
    Ok(bytes)
}

/// The primary header made to point at a backup placed at `data_end_lba`,
/// and that backup (the device's table was read and checked by `gptman`).
fn rebuild_gpt(file: &File, sector: u64, data_end_lba: u64) -> Result<RebuiltGpt, String> {
    let mut primary = read_at(file, sector, sector)?;
    let header_size = le32(&primary, 12) as usize;
    if !(92..=sector as usize).contains(&header_size) {
        return Err(format!(
            "its GPT header says it is {header_size} bytes long"
        ));
    }
    let entries_lba = le64(&primary, 72);
    let entries_len = u64::from(le32(&primary, 80)) * u64::from(le32(&primary, 84));
    let entry_sectors = entries_len.div_ceil(sector);
    if entry_sectors == 0 || entries_lba.saturating_add(entry_sectors) > data_end_lba {
        return Err("its GPT's entries do not lie before its last partition's end".into());
    }
    let mut tail = read_at(file, entries_lba * sector, entry_sectors * sector)?;
    let backup_lba = data_end_lba + entry_sectors;
    put64(&mut primary, 32, backup_lba);
    put64(&mut primary, 48, data_end_lba - 1);
    let mut backup = primary.clone();
    put64(&mut backup, 24, backup_lba);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, data_end_lba);
    seal(&mut primary, header_size);
    seal(&mut backup, header_size);
    tail.extend_from_slice(&backup);

    let mut patches = vec![(sector, primary)];
    let mut mbr = read_at(file, 0, 512)?;
    let slots: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    let only_protective =
        slots[0][4] == PROTECTIVE && slots[1..].iter().all(|s| s.iter().all(|&b| b == 0));
    if only_protective {
        // As a GPT tool writes it for a disk of the image's size: from
        // sector 1 to the last (a hybrid MBR, with other entries, is left
        // as it is).
        let sectors = backup_lba.min(u64::from(u32::MAX)) as u32;
        put32(&mut mbr, 446 + 12, sectors);
        patches.insert(0, (0, mbr));
    }
    Ok(RebuiltGpt { patches, tail })
}

/// Reads the device's first `data_end` bytes with the rebuilt GPT's
/// patches laid over them, then the backup after them; a device that ends
/// sooner (pulled, shrunk) is an error, never a shorter image.
pub(super) struct Rebuilt<'a, R> {
    inner: R,
    pos: u64,
    data_end: u64,
    gpt: &'a RebuiltGpt,
    tail_read: usize,
}

impl<'a, R: Read> Rebuilt<'a, R> {
    pub fn new(inner: R, data_end: u64, gpt: &'a RebuiltGpt) -> Self {
        Self {
            inner,
            pos: 0,
            data_end,
            gpt,
            tail_read: 0,
        }
    }
}

impl<R: Read> Read for Rebuilt<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.data_end {
            let want = buf.len().min((self.data_end - self.pos) as usize);
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 && want > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the device ended {} bytes early", self.data_end - self.pos),
                ));
            }
            let (start, end) = (self.pos, self.pos + n as u64);
            for (at, bytes) in &self.gpt.patches {
                let (p_start, p_end) = (*at, at + bytes.len() as u64);
                let (from, to) = (start.max(p_start), end.min(p_end));
                if from < to {
                    buf[(from - start) as usize..(to - start) as usize].copy_from_slice(
                        &bytes[(from - p_start) as usize..(to - p_start) as usize],
                    );
                }
            }
            self.pos = end;
            return Ok(n);
        }
        let rest = &self.gpt.tail[self.tail_read..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.tail_read += n;
        Ok(n)
    }
}
