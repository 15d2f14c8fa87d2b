//! What an inspection finds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of the inspection's rules: an answer recorded by an older
/// version is recomputed when the cache reads it. Version 2 reads UDF trees,
/// NTFS and exFAT labels, logical MBR partitions and ext file systems'
/// `os-release`; version 3 reads UDF 2.50+ metadata partitions and names the
/// UDF revision; version 4 reads the tables of disks of 4096-byte sectors (a
/// GPT behind a protective MBR, an MBR whose file systems are found only in
/// them).
pub const INSPECTION_VERSION: u32 = 4;

/// Everything known about an image from its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// [`INSPECTION_VERSION`] of the rules that produced this.
    pub version: u32,
    /// The image's size in bytes.
    pub size: u64,
    /// The partition table, if there is a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<PartitionTable>,
    /// A file system that starts at offset 0 (an ISO, a FAT "superfloppy").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FileSystem>,
    /// The ISO 9660 / UDF structure, for an optical-disc image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<IsoInfo>,
    /// The best guess of the operating system on the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsGuess>,
    /// Damaged, inconsistent or truncated structures, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// MBR or GPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// A DOS/MBR partition table.
    Mbr,
    /// A GUID partition table (behind a protective MBR).
    Gpt,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR",
            TableKind::Gpt => "GPT",
        })
    }
}

/// A partition table and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// The partitions in table order (empty slots left out).
    pub partitions: Vec<Partition>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Its number in the table, from 1.
    pub number: u32,
    /// Offset of its first byte in the image.
    pub start: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The type as stored: `0x0c` for MBR, the type GUID for GPT.
    pub type_id: String,
    /// The type in words, when known (`EFI system`, `Linux filesystem` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// The GPT partition name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Marked active (MBR) or legacy-BIOS-bootable (GPT).
    #[serde(default)]
    pub bootable: bool,
    /// The file system found at its start, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FileSystem>,
}

impl Partition {
    /// An extended MBR partition (types 0x05, 0x0f, 0x85): it holds the
    /// chain of logical partitions, not a file system.
    pub fn is_extended(&self) -> bool {
        matches!(self.type_id.as_str(), "0x05" | "0x0f" | "0x85")
    }
}

/// A file system recognised by its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystem {
    /// Which one.
    pub kind: FsKind,
    /// Its volume label, when it has one this inspection reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The operating system its `/etc/os-release` (or `/usr/lib/os-release`)
    /// names (`PRETTY_NAME`), for an ext2/3/4 root file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_release: Option<String>,
}

/// The file systems recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsKind {
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no ext4 features).
    Ext3,
    /// ext4.
    Ext4,
    /// NTFS.
    Ntfs,
    /// exFAT.
    #[serde(rename = "exfat")]
    ExFat,
    /// ISO 9660.
    Iso9660,
    /// UDF (its volume recognition sequence), possibly beside ISO 9660.
    Udf,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Fat12 => "FAT12",
            FsKind::Fat16 => "FAT16",
            FsKind::Fat32 => "FAT32",
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Ntfs => "NTFS",
            FsKind::ExFat => "exFAT",
            FsKind::Iso9660 => "ISO 9660",
            FsKind::Udf => "UDF",
        })
    }
}

/// How an ISO boots from optical media (El Torito boot catalog entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// A BIOS (x86) boot image.
    Bios,
    /// A UEFI boot image (platform 0xEF).
    Uefi,
    /// Another platform's boot image.
    Other,
}

/// What an optical-disc image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsoInfo {
    /// The ISO 9660 volume identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Whether a UDF volume recognition sequence is present.
    pub udf: bool,
    /// The UDF logical volume identifier, when the UDF volume descriptors
    /// were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udf_volume_id: Option<String>,
    /// The UDF revision the logical volume's domain names ("1.02", "2.01",
    /// "2.50"); 2.50 and later keep the tree in a metadata partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udf_revision: Option<String>,
    /// The El Torito boot entries (empty: the disc does not boot).
    #[serde(default)]
    pub el_torito: Vec<Boot>,
    /// Whether the image also carries an MBR or GPT partition table, so that
    /// firmware boots it from a USB stick written raw ("isohybrid").
    pub hybrid: bool,
    /// Whether `sources/install.wim`, `install.esd` or `install.swm` is
    /// present: a Windows installer.
    pub windows_installer: bool,
    /// The first line of `.disk/info` (Debian, Ubuntu), if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_info: Option<String>,
}

/// The best guess of the operating system, and what it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsGuess {
    /// The guess in words (`Windows installer`, `Ubuntu 24.04 LTS …`).
    pub name: String,
    /// What it was read from (`sources/install.wim`, `.disk/info`, `volume
    /// id`, `partition layout`).
    pub evidence: String,
}

/// Why a raw copy of this image would not boot, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawWriteRefusal {
    /// Why, in one sentence.
    pub reason: String,
    /// What to do instead.
    pub advice: String,
}

impl RawWriteRefusal {
    /// The refusal of an ISO that boots from optical media only: El Torito
    /// entries (or, seen in an image's head, its boot record), no MBR or
    /// GPT inside.
    pub(crate) fn el_torito_only() -> Self {
        Self {
            reason: "this ISO boots from optical media only (El Torito, no MBR or GPT inside): written raw, the stick will not boot".into(),
            advice: "use the distribution's USB image or a hybrid ISO (xorriso -as mkisofs -isohybrid-mbr …), or force a raw run if a byte-for-byte copy is really wanted".into(),
        }
    }

    /// The refusal of an ISO seen only in its head (a download, a
    /// compressed file): its boot record, no MBR or GPT. Whether it is a
    /// Windows installer is not known yet, so the advice names both ways.
    pub(crate) fn el_torito_only_from_head() -> Self {
        Self {
            advice: "use the distribution's USB image or a hybrid ISO (xorriso -as mkisofs -isohybrid-mbr …); for a Windows installer ISO, import it and build a bootable USB layout from it (flashrack image build-bootable); or force a raw run if a byte-for-byte copy is really wanted".into(),
            ..Self::el_torito_only()
        }
    }
}

impl fmt::Display for RawWriteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.reason, self.advice)
    }
}

impl ImageInfo {
    /// Why a raw write of this image would give a stick that does not boot:
    /// an ISO that boots from optical media (El Torito) or is a Windows
    /// installer, and carries no partition table. `None` for anything else
    /// (disk images, hybrid ISOs, ISOs of plain data).
    pub fn raw_write_refusal(&self) -> Option<RawWriteRefusal> {
        let iso = self.iso.as_ref()?;
        if iso.hybrid || self.table.is_some() {
            return None;
        }
        if iso.windows_installer {
            let reason = "this is a Windows installer ISO (it holds sources/install.wim or install.esd) without a partition table: written raw, the stick will not boot".to_string();
            // flashrack builds UEFI layouts: an ISO whose boot record offers
            // BIOS only has no UEFI loader to build one from.
            let bios_only = !iso.el_torito.is_empty() && !iso.el_torito.contains(&Boot::Uefi);
            return Some(if bios_only {
                RawWriteRefusal {
                    reason,
                    advice: "it boots by BIOS only (no UEFI entry in its boot record), and flashrack builds UEFI layouts only: make the stick with a tool that builds a BIOS-bootable Windows stick (an MBR and an NTFS partition, as Rufus or WoeUSB do), or force a raw run if a byte-for-byte copy is really wanted".into(),
                }
            } else {
                RawWriteRefusal {
                    reason,
                    advice: "build a bootable USB layout from it (GPT with a FAT32 partition holding the ISO's files: flashrack image build-bootable), or force a raw run if a byte-for-byte copy is really wanted".into(),
                }
            });
        }
        if !iso.el_torito.is_empty() {
            return Some(RawWriteRefusal::el_torito_only());
        }
        None
    }

    /// The partition table's kind, if any.
    pub fn table_kind(&self) -> Option<TableKind> {
        self.table.as_ref().map(|t| t.kind)
    }

    /// A one-line summary for lists and reports: `GPT: 2 partitions (FAT32
    /// "EFI", ext4 "rootfs")`, `ISO 9660 "CCCOMA_X64FRE", UDF, El Torito
    /// (BIOS, UEFI), not hybrid`, `no partition table, no file system found`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(iso) = &self.iso {
            let mut s = match (&iso.volume_id, &iso.udf_volume_id) {
                (Some(v), _) => format!("ISO 9660 {v:?}"),
                (None, Some(u)) => format!("UDF {u:?}"),
                (None, None) if iso.udf => "UDF".to_string(),
                (None, None) => "ISO 9660".to_string(),
            };
            if iso.udf && iso.volume_id.is_some() {
                s.push_str(", UDF");
            }
            if let Some(revision) = &iso.udf_revision {
                s.push_str(&format!(" {revision}"));
            }
            if !iso.el_torito.is_empty() {
                let boots: Vec<&str> = iso
                    .el_torito
                    .iter()
                    .map(|b| match b {
                        Boot::Bios => "BIOS",
                        Boot::Uefi => "UEFI",
                        Boot::Other => "other",
                    })
                    .collect();
                s.push_str(&format!(", El Torito ({})", boots.join(", ")));
            }
            s.push_str(if iso.hybrid {
                ", hybrid"
            } else {
                ", not hybrid"
            });
            parts.push(s);
        } else if let Some(fs) = &self.filesystem {
            parts.push(fs_words(fs));
        }
        match &self.table {
            Some(t) => {
                let fss: Vec<String> = t
                    .partitions
                    .iter()
                    .map(|p| match &p.filesystem {
                        Some(fs) => fs_words(fs),
                        None => p.type_name.clone().unwrap_or_else(|| p.type_id.clone()),
                    })
                    .collect();
                parts.push(format!(
                    "{}: {} partition{} ({})",
                    t.kind,
                    t.partitions.len(),
                    if t.partitions.len() == 1 { "" } else { "s" },
                    fss.join(", ")
                ));
            }
            None if self.iso.is_none() && self.filesystem.is_none() => {
                parts.push("no partition table, no file system found".into())
            }
            None => {}
        }
        if let Some(os) = &self.os {
            parts.push(os.name.clone());
        }
        parts.join("; ")
    }
}

impl ImageInfo {
    /// The inspection in lines for people: the table and each partition
    /// (number, start, size, type, name, file system), the whole-image file
    /// system, the ISO's structure, the OS guess and the problems found.
    /// Sizes are in bytes; callers that have a size notation add it.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.table {
            Some(t) => {
                lines.push(format!("partition table: {}", t.kind));
                for p in &t.partitions {
                    let mut line = format!(
                        "  {}: start {} bytes, size {} bytes, type {}",
                        p.number, p.start, p.size, p.type_id
                    );
                    if let Some(n) = &p.type_name {
                        line.push_str(&format!(" ({n})"));
                    }
                    if let Some(n) = &p.name {
                        line.push_str(&format!(", name {n:?}"));
                    }
                    if p.bootable {
                        line.push_str(", bootable");
                    }
                    match &p.filesystem {
                        Some(fs) => line.push_str(&format!(", {}", fs_words(fs))),
                        None => line.push_str(", no file system recognised"),
                    }
                    lines.push(line);
                }
            }
            None => lines.push("partition table: none".into()),
        }
        if let Some(fs) = &self.filesystem {
            lines.push(format!("file system at offset 0: {}", fs_words(fs)));
        }
        if let Some(iso) = &self.iso {
            lines.push(format!(
                "ISO: volume id {}, UDF {}, El Torito {}, hybrid {}, Windows installer files {}",
                iso.volume_id
                    .as_deref()
                    .map_or("none".into(), |v| format!("{v:?}")),
                yes_no(iso.udf),
                if iso.el_torito.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", iso.el_torito).to_lowercase()
                },
                yes_no(iso.hybrid),
                yes_no(iso.windows_installer),
            ));
            if let Some(udf) = &iso.udf_volume_id {
                lines.push(format!("UDF volume id: {udf:?}"));
            }
            if let Some(revision) = &iso.udf_revision {
                lines.push(format!("UDF revision: {revision}"));
            }
            if let Some(info) = &iso.disk_info {
                lines.push(format!(".disk/info: {info}"));
            }
        }
        match &self.os {
            Some(os) => lines.push(format!(
                "operating system: {} (from {})",
                os.name, os.evidence
            )),
            None => lines.push("operating system: unknown".into()),
        }
        for p in &self.problems {
            lines.push(format!("problem: {p}"));
        }
        match self.raw_write_refusal() {
            Some(r) => lines.push(format!("raw run: refused unless forced: {r}")),
            None => lines.push("raw run: allowed".into()),
        }
        lines
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn fs_words(fs: &FileSystem) -> String {
    let mut words = match &fs.label {
        Some(l) => format!("{} {l:?}", fs.kind),
        None => fs.kind.to_string(),
    };
    if let Some(os) = &fs.os_release {
        words.push_str(&format!(" with {os}"));
    }
    words
}

/// A file or directory of an optical disc's tree, and where a file's bytes
/// are in the image ([`udf_tree`](crate::udf_tree)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Its path from the root, `/`-separated, as recorded (case kept).
    pub path: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// A file's size in bytes (0 for a directory).
    pub size: u64,
    /// A file's bytes, in order.
    pub pieces: Vec<Piece>,
}

/// A run of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes kept in the file's own entry (small files).
    Embedded(Vec<u8>),
    /// `len` bytes at `offset` of the image.
    At {
        /// Where, in the image.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// `len` bytes of zeros (an extent allocated but not recorded).
    Zeros(u64),
}
