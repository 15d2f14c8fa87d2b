//! What a disk image is, read from its bytes: its partition table (MBR or
//! GPT, with each partition's type, size and file system), the file systems
//! found by their signatures (FAT12/16/32, ext2/3/4, NTFS, exFAT, ISO 9660,
//! UDF), whether an ISO is hybrid (it carries a partition table, so it boots
//! when written raw) and how it boots from optical media (El Torito), volume
//! labels, and a best guess of the operating system.
//!
//! [`inspect`] answers an [`ImageInfo`], and [`ImageInfo::raw_write_refusal`]
//! says whether a raw copy of the image would be a stick that cannot boot
//! (an installer ISO without a partition table, such as every Windows
//! installer ISO). Everything is decided by content, never by file name.
//!
//! # Layout
//! - [`model`]: the answer ([`ImageInfo`], [`PartitionTable`], [`Partition`],
//!   [`FileSystem`], [`IsoInfo`], [`OsGuess`], [`RawWriteRefusal`]);
//! - [`alloc`]: which bytes matter, from the allocation of ext2/3/4 (block
//!   bitmaps), FAT (the table), NTFS (`$Bitmap`, followed through attribute
//!   lists) and exFAT (its bitmap) file systems, for a sparse write;
//! - [`bmap`]: block maps in bmaptool's XML format (1.x, 2.x), their own
//!   checksum and their ranges' checksums against an image;
//! - [`udf_tree`]: every file of a UDF tree and where its bytes are, for
//!   copying an ISO's files out (the bootable layout);
//! - `read`: [`ReadAt`], the only way bytes come in (a slice in tests, a file
//!   in the cache);
//! - private: `table` (MBR and GPT, CRCs checked, logical partitions in an
//!   extended one), `fs` (file-system signatures and labels, NTFS's and
//!   exFAT's read from their `$Volume` record and root directory), `iso`
//!   (volume descriptors, El Torito, a path lookup in the ISO 9660 tree with
//!   Rock Ridge names), `udf` (a path lookup in the UDF tree, for ISOs whose
//!   files are in UDF only, through a UDF 2.50/2.60 metadata partition where
//!   there is one; the UDF revision), `ext` (a file read from an ext2/3/4 file
//!   system: `/etc/os-release`), `guess` (the OS).
//!
//! **API boundary:** pure parsing. Nothing here opens a path, writes, or
//! decides policy beyond saying what a raw write would produce; the image
//! cache calls [`inspect`] at import and the application decides what to do
//! with a refusal. A damaged or truncated structure is reported in
//! [`ImageInfo::problems`], never a panic or an error: an image is whatever
//! its bytes are.
#![deny(missing_docs)]

pub mod alloc;
pub mod bmap;
mod ext;
mod fs;
mod guess;
mod iso;
pub mod model;
mod read;
mod table;
mod udf;

pub use model::{
    Boot, FileSystem, FsKind, ImageInfo, IsoInfo, OsGuess, Partition, PartitionTable, Piece,
    RawWriteRefusal, TableKind, TreeEntry, INSPECTION_VERSION,
};
pub use read::ReadAt;

/// Every file and directory of an image's UDF tree, with where each file's
/// bytes are, for copying them out (Windows ISOs keep their files in UDF
/// only). At most `max_entries`; an error in words when the UDF volume or a
/// part of its tree cannot be read (see the `udf` module for what is read).
pub fn udf_tree(image: &dyn ReadAt, max_entries: usize) -> Result<Vec<TreeEntry>, String> {
    udf::Volume::open(image)?.walk(max_entries)
}

/// How many bytes of an image's head [`head_raw_write_refusal`] reads: its
/// boot sector, a GPT header (at 512 or 4096) and the ISO 9660 volume
/// descriptors from 32 KiB on, the El Torito boot record among them.
pub const HEAD_LEN: usize = 64 << 10;

/// Why a raw write of the image whose first bytes are `head` (as a download
/// or a decoder produces them, at most [`HEAD_LEN`] of them read) would give
/// a stick that does not boot, judged before the rest of the image is
/// there: an ISO (an ISO 9660 primary volume descriptor or a UDF
/// recognition sequence) with an El Torito boot record and no partition
/// table, the layout of a Windows installer and of any ISO made for optical
/// media only. No table means neither an MBR nor a GPT header, or an MBR
/// boot signature over boot code or four empty entries (as some ISO
/// makers write their system area), judged as the full inspection judges
/// it. Such an image's full inspection refuses it as well
/// ([`ImageInfo::raw_write_refusal`], with its El Torito entries or as a
/// Windows installer). `None` when the head shows anything else, or is too
/// short to show it: an image that may have a partition table (hybrid, a
/// GPT, or not an ISO at all) is left to the full inspection, which only
/// refuses more.
pub fn head_raw_write_refusal(head: &[u8]) -> Option<RawWriteRefusal> {
    let head = &head[..head.len().min(HEAD_LEN)];
    if !table::no_table_in_head(head) {
        return None;
    }
    iso::boot_record_in_head(head).then(RawWriteRefusal::el_torito_only_from_head)
}

/// The sector size an MBR counts in, when it is not 512: an MBR does not
/// say it. The image of a disk of 4096-byte sectors (a capture of one) has
/// entries that point at its file systems only when counted in 4096-byte
/// sectors. When no partition holds a file system where its entry points in
/// 512-byte sectors and one does in 4096-byte sectors, `table` is read in
/// them (its partitions' offsets, sizes and file systems), and a problem
/// says what that means for sticks, as for a GPT of 4096-byte sectors.
/// A table with an extended partition is left as read (its chain of logical
/// partitions counts in the same unknown sectors; such images are rare).
fn mbr_of_4096_byte_sectors(
    image: &dyn ReadAt,
    table: &mut PartitionTable,
    problems: &mut Vec<String>,
) {
    const SCALE: u64 = 4096 / 512;
    let size = image.size();
    if table.kind != TableKind::Mbr
        || table
            .partitions
            .iter()
            .any(|p| p.is_extended() || p.filesystem.is_some())
    {
        return;
    }
    let scaled = |p: &Partition| (p.start.saturating_mul(SCALE), p.size.saturating_mul(SCALE));
    let found: Vec<Option<FileSystem>> = table
        .partitions
        .iter()
        .map(|p| {
            let (start, len) = scaled(p);
            (start.saturating_add(len) <= size)
                .then(|| fs::detect(image, start, len))
                .flatten()
        })
        .collect();
    if found.iter().all(Option::is_none) {
        return;
    }
    // The entries' ends were judged in 512-byte sectors: judged again.
    problems.retain(|p| !(p.starts_with("MBR partition ") && p.contains(" ends at byte ")));
    for (p, filesystem) in table.partitions.iter_mut().zip(found) {
        (p.start, p.size) = scaled(p);
        p.filesystem = filesystem;
        if p.start.saturating_add(p.size) > size {
            problems.push(format!(
                "MBR partition {} ends at byte {} but the image has {size} bytes: truncated image or damaged table",
                p.number,
                p.start.saturating_add(p.size),
            ));
        }
    }
    problems.push(
        "MBR of 4096-byte sectors (its entries point at file systems only when counted in them): its partitions are found only on a disk of 4096-byte sectors, not on a stick of 512-byte sectors"
            .into(),
    );
}

/// Partitions that share bytes, each pair in words: a damaged or
/// hand-made table (a write to one overwrites the other). An extended MBR
/// partition holds its logical ones by design and is left out (as is the
/// table of a hybrid ISO, by the caller).
fn overlaps(table: &PartitionTable) -> Vec<String> {
    let mut spans: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| !p.is_extended() && p.size > 0)
        .collect();
    spans.sort_by_key(|p| (p.start, p.number));
    let mut found = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        let a_end = a.start.saturating_add(a.size);
        for b in spans[i + 1..].iter().take_while(|b| b.start < a_end) {
            let (first, second) = if a.number < b.number { (a, b) } else { (b, a) };
            found.push(format!(
                "partitions {} and {} overlap (bytes {} to {}): a write to one overwrites the other",
                first.number,
                second.number,
                b.start,
                a_end.min(b.start.saturating_add(b.size)),
            ));
        }
    }
    found
}

/// Inspects an image: its partition table, file systems, ISO structure and OS.
///
/// Reads at most a few hundred KiB at known offsets (and the directories it
/// follows in an ISO). Read errors are not fatal: what could not be read is a
/// problem in the answer.
pub fn inspect(image: &dyn ReadAt) -> ImageInfo {
    let size = image.size();
    let mut problems = Vec::new();
    let whole_fs = fs::detect(image, 0, size);
    let iso = iso::inspect(image, &mut problems);
    // A file system at offset 0 that carries a boot sector (FAT, NTFS, exFAT
    // "superfloppies") is not a partition table even with 55 AA at 510.
    let boot_sector_fs = whole_fs.as_ref().is_some_and(|f| {
        matches!(
            f.kind,
            FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 | FsKind::Ntfs | FsKind::ExFat
        )
    });
    let table = if boot_sector_fs {
        None
    } else {
        table::read(image, &mut problems)
    };
    let mut table = table;
    let mut iso = iso;
    if let Some(iso) = &mut iso {
        iso.hybrid = table.is_some();
    }
    if let Some(t) = &mut table {
        for p in &mut t.partitions {
            if !p.is_extended() && p.start.saturating_add(p.size) <= size {
                p.filesystem = fs::detect(image, p.start, p.size);
            }
        }
    }
    if let Some(t) = &mut table {
        mbr_of_4096_byte_sectors(image, t, &mut problems);
        // A hybrid ISO's MBR overlaps by design: a partition over the
        // whole ISO, and its EFI image's inside it.
        if iso.is_none() {
            problems.extend(overlaps(t));
        }
    }
    let mut whole_fs = whole_fs;
    if let (Some(fs), Some(iso)) = (&mut whole_fs, &iso) {
        if fs.kind == FsKind::Udf && fs.label.is_none() {
            fs.label = iso.udf_volume_id.clone();
        }
    }
    let mut info = ImageInfo {
        version: INSPECTION_VERSION,
        size,
        table,
        filesystem: whole_fs,
        iso,
        os: None,
        problems,
    };
    info.os = guess::os(&info);
    info
}
