//! A Windows-like UDF 2.50/2.60 volume with a metadata partition, written
//! byte by byte from ECMA-167 and UDF 2.60 (no Debian tool makes one:
//! `mkudffs` makes 2.50+ only for write-once media, with a VAT, and this
//! kernel has no UDF driver): volume recognition sequence, anchors at 256
//! and in the last block, a main and a reserve volume descriptor sequence,
//! an integrity descriptor, a physical partition holding the metadata file
//! (type 250, two extents that are not next to each other), its mirror
//! (type 251, one extent elsewhere) and the files' data, and a metadata
//! partition (type-2 map) holding the file set, the directories and the
//! file entries, every descriptor's tag location its block in its own
//! partition, every tag with its checksum and CRC. `udfinfo` (udftools)
//! reads it.

/// The logical block size.
pub const B: usize = 2048;
/// Blocks of the image; the second anchor is in the last one.
pub const BLOCKS: usize = 1024;
/// The physical partition: its first block and length.
pub const PART: usize = 260;
/// Blocks of the physical partition.
pub const PART_LEN: usize = 700;
/// The metadata file's extents (first block in the partition, blocks): its
/// blocks 0–1, then 2–7 further on.
pub const META: [(usize, usize); 2] = [(20, 2), (40, 6)];
/// The mirror's one extent.
pub const MIRROR: (usize, usize) = (60, 8);
/// Where install.wim's bytes are in the partition.
pub const WIM_AT: usize = 100;
/// The volume's label (logical volume, file set and volume identifiers).
pub const LABEL: &str = "CCCOMA_X64FRE_EN-US_DV9";

/// CRC-ITU-T (polynomial 0x1021, initial 0), as ECMA-167 7.2.6 asks.
pub fn crc(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                crc << 1 ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Fills in a descriptor's tag: `id`, version 3 (NSR03), the CRC of the
/// `len` bytes after the tag, the checksum and `location`.
pub fn tag(d: &mut [u8], id: u16, len: usize, location: usize) {
    d[0..2].copy_from_slice(&id.to_le_bytes());
    d[2..4].copy_from_slice(&3u16.to_le_bytes());
    d[6..8].copy_from_slice(&1u16.to_le_bytes());
    let c = crc(&d[16..16 + len]);
    d[8..10].copy_from_slice(&c.to_le_bytes());
    d[10..12].copy_from_slice(&(len as u16).to_le_bytes());
    d[12..16].copy_from_slice(&(location as u32).to_le_bytes());
    d[4] = 0;
    d[4] = d[..16]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .fold(0u8, |s, (_, b)| s.wrapping_add(*b));
}

/// Puts a little-endian u16 at `at`.
pub fn put16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Puts a little-endian u32 at `at`.
pub fn put32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Puts a little-endian u64 at `at`.
pub fn put64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A dstring of `len` bytes: compression id 8, the characters, the used
/// length in the last byte.
fn dstring(d: &mut [u8], at: usize, len: usize, text: &str) {
    d[at] = 8;
    d[at + 1..at + 1 + text.len()].copy_from_slice(text.as_bytes());
    d[at + len - 1] = (1 + text.len()) as u8;
}

/// The OSTA compressed Unicode character set specification (64 bytes).
fn charspec(d: &mut [u8], at: usize) {
    d[at] = 0;
    d[at + 1..at + 24].copy_from_slice(b"OSTA Compressed Unicode");
}

/// An entity identifier: flags 0, `id`, and a suffix starting with
/// `revision` (domain and UDF identifier suffixes) when given.
fn entity(d: &mut [u8], at: usize, id: &str, revision: Option<u16>) {
    d[at + 1..at + 1 + id.len()].copy_from_slice(id.as_bytes());
    if let Some(r) = revision {
        put16(d, at + 24, r);
    }
}

/// A long allocation descriptor: `len` bytes at `block` of partition `part`.
fn long_ad(d: &mut [u8], at: usize, len: u32, block: u32, part: u16) {
    put32(d, at, len);
    put32(d, at + 4, block);
    put16(d, at + 8, part);
}

/// How an extended file entry's data is described.
pub enum Data<'a> {
    /// Short allocation descriptors `(bytes, block)`, in the entry's own
    /// partition.
    Short(&'a [(u32, u32)]),
    /// One long allocation descriptor: bytes, block, partition reference.
    Long(u32, u32, u16),
    /// The bytes themselves, in the entry.
    Embedded(&'a [u8]),
}

/// An extended file entry (ECMA-167 4/14.17) of `file_type` with
/// `info_len` bytes, recorded at `location` of its partition.
pub fn efe(file_type: u8, info_len: u64, data: Data<'_>, location: usize) -> Vec<u8> {
    let mut d = vec![0u8; B];
    put16(&mut d, 20, 4); // strategy 4
    put16(&mut d, 24, 1); // max entries
    d[27] = file_type;
    let (flags, ads): (u16, Vec<u8>) = match data {
        Data::Short(extents) => (
            0,
            extents
                .iter()
                .flat_map(|&(len, block)| {
                    let mut ad = len.to_le_bytes().to_vec();
                    ad.extend(block.to_le_bytes());
                    ad
                })
                .collect(),
        ),
        Data::Long(len, block, part) => {
            let mut ad = vec![0u8; 16];
            long_ad(&mut ad, 0, len, block, part);
            (1, ad)
        }
        Data::Embedded(bytes) => (3, bytes.to_vec()),
    };
    put16(&mut d, 34, flags);
    put32(&mut d, 36, u32::MAX); // uid
    put32(&mut d, 40, u32::MAX); // gid
    put32(&mut d, 44, 0x1ce7); // permissions: read and execute for all
    put16(&mut d, 48, 1); // link count
    put64(&mut d, 56, info_len);
    put64(&mut d, 64, info_len); // object size
    let recorded = if flags == 3 {
        0
    } else {
        info_len.div_ceil(B as u64)
    };
    put64(&mut d, 72, recorded);
    put32(&mut d, 128, 1); // checkpoint
    entity(&mut d, 168, "*flashrack test", None);
    put64(&mut d, 200, location as u64 + 16); // unique id
    put32(&mut d, 212, ads.len() as u32);
    d[216..216 + ads.len()].copy_from_slice(&ads);
    tag(&mut d, 266, 216 - 16 + ads.len(), location);
    d
}

/// File identifier descriptors of a directory recorded at `location` of the
/// metadata partition: the parent entry, then `(name, entry block, is a
/// directory)`, every ICB in the metadata partition (reference 1).
fn fids(parent: u32, entries: &[(&str, u32, bool)], location: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut one = |name: &str, icb: u32, characteristics: u8| {
        let l_fi = if name.is_empty() { 0 } else { 1 + name.len() };
        let total = (38 + l_fi).div_ceil(4) * 4;
        let mut d = vec![0u8; total];
        put16(&mut d, 16, 1);
        d[18] = characteristics;
        d[19] = l_fi as u8;
        long_ad(&mut d, 20, B as u32, icb, 1);
        if l_fi > 0 {
            d[38] = 8;
            d[39..39 + name.len()].copy_from_slice(name.as_bytes());
        }
        tag(&mut d, 257, total - 16, location);
        out.extend(d);
    };
    one("", parent, 0x0a);
    for &(name, icb, dir) in entries {
        one(name, icb, if dir { 0x02 } else { 0 });
    }
    out
}

/// What the built image holds, and ways to break it.
pub struct Built {
    /// The image.
    pub bytes: Vec<u8>,
    /// `sources/install.wim`'s bytes.
    pub wim: Vec<u8>,
    /// `sources/lang.ini`'s bytes.
    pub lang: Vec<u8>,
}

/// Metadata partition blocks: the file set, the root directory's entry and
/// its identifiers, `sources`' entry and identifiers, install.wim's and
/// lang.ini's entries.
pub const M_FSD: u32 = 0;
/// A metadata partition block (see [`M_FSD`]).
pub const M_ROOT: u32 = 1;
/// A metadata partition block (see [`M_FSD`]).
pub const M_ROOT_DIR: u32 = 2;
/// A metadata partition block (see [`M_FSD`]).
pub const M_SOURCES: u32 = 3;
/// A metadata partition block (see [`M_FSD`]).
pub const M_SOURCES_DIR: u32 = 4;
/// A metadata partition block (see [`M_FSD`]).
pub const M_WIM: u32 = 5;
/// A metadata partition block (see [`M_FSD`]).
pub const M_LANG: u32 = 6;

/// A Windows-like UDF volume of `revision` (0x0250, 0x0260): `sources/`
/// with `install.wim` (5000 bytes in the physical partition) and
/// `lang.ini` (embedded in its entry), no ISO 9660 side.
pub fn windows_like(revision: u16) -> Built {
    let mut img = vec![0u8; BLOCKS * B];
    let block = |img: &mut Vec<u8>, at: usize, d: &[u8]| {
        img[at * B..at * B + d.len()].copy_from_slice(d);
    };
    // The volume recognition sequence at 32 KiB.
    for (i, id) in [b"BEA01", b"NSR03", b"TEA01"].iter().enumerate() {
        let mut d = vec![0u8; B];
        d[1..6].copy_from_slice(*id);
        d[6] = 1;
        block(&mut img, 16 + i, &d);
    }

    // The metadata partition's content: blocks 0-7 of the metadata file.
    let wim: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let lang = b"[Available UI Languages]\r\nen-US = 3\r\n".to_vec();
    let mut meta = vec![0u8; 8 * B];
    let mut m = |at: u32, d: &[u8]| {
        meta[at as usize * B..at as usize * B + d.len()].copy_from_slice(d);
    };
    let mut fsd = vec![0u8; 512];
    put16(&mut fsd, 28, 3);
    put16(&mut fsd, 30, 3);
    put32(&mut fsd, 32, 1);
    put32(&mut fsd, 36, 1);
    charspec(&mut fsd, 48);
    dstring(&mut fsd, 112, 128, LABEL);
    charspec(&mut fsd, 240);
    dstring(&mut fsd, 304, 32, LABEL);
    long_ad(&mut fsd, 400, B as u32, M_ROOT, 1);
    entity(&mut fsd, 416, "*OSTA UDF Compliant", Some(revision));
    tag(&mut fsd, 256, 512 - 16, M_FSD as usize);
    m(M_FSD, &fsd);
    let root_dir = fids(M_ROOT, &[("sources", M_SOURCES, true)], M_ROOT_DIR as usize);
    let root_len = root_dir.len() as u32;
    m(
        M_ROOT,
        &efe(
            4,
            root_len.into(),
            Data::Short(&[(root_len, M_ROOT_DIR)]),
            M_ROOT as usize,
        ),
    );
    m(M_ROOT_DIR, &root_dir);
    let sources_dir = fids(
        M_ROOT,
        &[("install.wim", M_WIM, false), ("lang.ini", M_LANG, false)],
        M_SOURCES_DIR as usize,
    );
    let sources_len = sources_dir.len() as u32;
    m(
        M_SOURCES,
        &efe(
            4,
            sources_len.into(),
            Data::Short(&[(sources_len, M_SOURCES_DIR)]),
            M_SOURCES as usize,
        ),
    );
    m(M_SOURCES_DIR, &sources_dir);
    m(
        M_WIM,
        &efe(
            5,
            wim.len() as u64,
            Data::Long(wim.len() as u32, WIM_AT as u32, 0),
            M_WIM as usize,
        ),
    );
    m(
        M_LANG,
        &efe(5, lang.len() as u64, Data::Embedded(&lang), M_LANG as usize),
    );

    // The physical partition: the metadata file's entry (block 0) and its
    // mirror's (1), their extents, install.wim.
    let at = |rel: usize| PART + rel;
    let meta_len = (8 * B) as u32;
    let extents: Vec<(u32, u32)> = META
        .iter()
        .map(|&(first, n)| ((n * B) as u32, first as u32))
        .collect();
    block(
        &mut img,
        at(0),
        &efe(250, meta_len.into(), Data::Short(&extents), 0),
    );
    block(
        &mut img,
        at(1),
        &efe(
            251,
            meta_len.into(),
            Data::Short(&[(meta_len, MIRROR.0 as u32)]),
            1,
        ),
    );
    let mut next = 0;
    for &(first, n) in &META {
        block(&mut img, at(first), &meta[next * B..(next + n) * B]);
        next += n;
    }
    block(&mut img, at(MIRROR.0), &meta);
    block(&mut img, at(WIM_AT), &wim);

    // The volume descriptor sequences: main at 32, reserve at 48.
    for seq in [32usize, 48] {
        let mut pvd = vec![0u8; 512];
        dstring(&mut pvd, 24, 32, LABEL);
        put16(&mut pvd, 56, 1);
        put16(&mut pvd, 58, 1);
        put16(&mut pvd, 60, 2);
        put16(&mut pvd, 62, 3);
        put32(&mut pvd, 64, 1);
        put32(&mut pvd, 68, 1);
        dstring(&mut pvd, 72, 128, "0123456789ABCDEF");
        charspec(&mut pvd, 200);
        charspec(&mut pvd, 264);
        entity(&mut pvd, 388, "*flashrack test", None);
        tag(&mut pvd, 1, 512 - 16, seq);
        block(&mut img, seq, &pvd);

        let mut iuvd = vec![0u8; 512];
        put32(&mut iuvd, 16, 1);
        entity(&mut iuvd, 20, "*UDF LV Info", Some(revision));
        charspec(&mut iuvd, 52);
        dstring(&mut iuvd, 116, 128, LABEL);
        tag(&mut iuvd, 4, 512 - 16, seq + 1);
        block(&mut img, seq + 1, &iuvd);

        let mut pd = vec![0u8; 512];
        put32(&mut pd, 16, 2);
        put16(&mut pd, 20, 1); // allocated
        put16(&mut pd, 22, 0); // partition number 0
        entity(&mut pd, 24, "+NSR03", None);
        put32(&mut pd, 184, 1); // read-only
        put32(&mut pd, 188, PART as u32);
        put32(&mut pd, 192, PART_LEN as u32);
        entity(&mut pd, 196, "*flashrack test", None);
        tag(&mut pd, 5, 512 - 16, seq + 2);
        block(&mut img, seq + 2, &pd);

        let mut lvd = vec![0u8; 440 + 6 + 64];
        put32(&mut lvd, 16, 3);
        charspec(&mut lvd, 20);
        dstring(&mut lvd, 84, 128, LABEL);
        put32(&mut lvd, 212, B as u32);
        entity(&mut lvd, 216, "*OSTA UDF Compliant", Some(revision));
        long_ad(&mut lvd, 248, B as u32, M_FSD, 1);
        put32(&mut lvd, 264, 6 + 64);
        put32(&mut lvd, 268, 2);
        entity(&mut lvd, 272, "*flashrack test", None);
        put32(&mut lvd, 432, (2 * B) as u32);
        put32(&mut lvd, 436, 64);
        // Map 0: the physical partition 0.
        lvd[440] = 1;
        lvd[441] = 6;
        put16(&mut lvd, 442, 1);
        put16(&mut lvd, 444, 0);
        // Map 1: the metadata partition over partition 0.
        let m = 446;
        lvd[m] = 2;
        lvd[m + 1] = 64;
        entity(&mut lvd, m + 4, "*UDF Metadata Partition", Some(revision));
        put16(&mut lvd, m + 36, 1); // volume sequence number
        put16(&mut lvd, m + 38, 0); // partition number
        put32(&mut lvd, m + 40, 0); // metadata file
        put32(&mut lvd, m + 44, 1); // its mirror
        put32(&mut lvd, m + 48, u32::MAX); // no bitmap file (read-only)
        put32(&mut lvd, m + 52, 32); // allocation unit
        put16(&mut lvd, m + 56, 1); // alignment unit
        let len = lvd.len();
        tag(&mut lvd, 6, len - 16, seq + 3);
        block(&mut img, seq + 3, &lvd);

        let mut usd = vec![0u8; 24];
        put32(&mut usd, 16, 4);
        tag(&mut usd, 7, 8, seq + 4);
        block(&mut img, seq + 4, &usd);

        let mut td = vec![0u8; 512];
        tag(&mut td, 8, 512 - 16, seq + 5);
        block(&mut img, seq + 5, &td);
    }

    // The integrity sequence at 64: closed, two partitions' sizes.
    let mut lvid = vec![0u8; 80 + 16 + 46];
    put32(&mut lvid, 28, 1); // close
    put64(&mut lvid, 40, 32); // next unique id
    put32(&mut lvid, 72, 2);
    put32(&mut lvid, 76, 46);
    put32(&mut lvid, 80, 0); // free blocks of partition 0
    put32(&mut lvid, 84, 0); // and of the metadata partition
    put32(&mut lvid, 88, PART_LEN as u32);
    put32(&mut lvid, 92, 8);
    entity(&mut lvid, 96, "*flashrack test", None);
    put32(&mut lvid, 128, 2); // files
    put32(&mut lvid, 132, 2); // directories
    put16(&mut lvid, 136, revision);
    put16(&mut lvid, 138, revision);
    put16(&mut lvid, 140, revision);
    let len = lvid.len();
    tag(&mut lvid, 9, len - 16, 64);
    block(&mut img, 64, &lvid);
    let mut td = vec![0u8; 512];
    tag(&mut td, 8, 512 - 16, 65);
    block(&mut img, 65, &td);

    // The anchors, at 256 and in the last block.
    for at in [256, BLOCKS - 1] {
        let mut avdp = vec![0u8; 512];
        put32(&mut avdp, 16, (16 * B) as u32);
        put32(&mut avdp, 20, 32);
        put32(&mut avdp, 24, (16 * B) as u32);
        put32(&mut avdp, 28, 48);
        tag(&mut avdp, 2, 512 - 16, at);
        block(&mut img, at, &avdp);
    }
    Built {
        bytes: img,
        wim,
        lang,
    }
}
