//! Zip archives written to a stream, as `zip` writes to a pipe, Java's
//! `ZipOutputStream` or a web server zipping on the fly: each file's CRC-32
//! and sizes follow its data, in a data descriptor (general-purpose bit 3).

use std::io::Write;

/// A zip written to a stream (`ZipWriter::new_stream`): `Some(bytes)`
/// entries are files, `None` entries directories. Panics unless every
/// file's local header, in order, names it and has bit 3 set.
pub fn streamed_zip(entries: &[(&str, Option<&[u8]>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new_stream(Vec::new());
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, content) in entries {
        match content {
            Some(bytes) => {
                writer.start_file(*name, options).unwrap();
                writer.write_all(bytes).unwrap();
            }
            None => writer.add_directory(*name, options).unwrap(),
        }
    }
    let archive = writer.finish().unwrap().into_inner();
    // Bit 3 of each file's local header's flags: its sizes follow its data.
    // The headers found through the central directory (the data may hold
    // their signature).
    let mut read = zip::ZipArchive::new(std::io::Cursor::new(&archive[..])).unwrap();
    assert_eq!(read.len(), entries.len());
    for (index, (name, content)) in entries.iter().enumerate() {
        let at = usize::try_from(read.by_index_raw(index).unwrap().header_start()).unwrap();
        assert_eq!(&archive[at..at + 4], b"PK\x03\x04");
        let name_len = usize::from(u16::from_le_bytes([archive[at + 26], archive[at + 27]]));
        assert_eq!(&archive[at + 30..at + 30 + name_len], name.as_bytes());
        if content.is_some() {
            assert_ne!(archive[at + 6] & 0x08, 0, "{name} has a data descriptor");
        }
    }
    archive
}

/// One file `name` written to a stream as zip64 (as `zip` writes a file from
/// a pipe, of a size it cannot know): a zip64 field in its local header, and
/// so 8-byte sizes in its data descriptor. Panics unless it has bit 3 set.
pub fn streamed_zip64(name: &str, data: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new_stream(Vec::new());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    writer.start_file(name, options).unwrap();
    writer.write_all(data).unwrap();
    let archive = writer.finish().unwrap().into_inner();
    assert_ne!(archive[6] & 0x08, 0, "{name} has a data descriptor");
    archive
}

/// Where the last data descriptor of `archive` starts (its signature), and
/// its central directory's first header.
pub fn descriptor_and_directory(archive: &[u8]) -> (usize, usize) {
    // From the end record (the data may hold a directory header's
    // signature); the last descriptor is the last before the directory.
    let read = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let directory = usize::try_from(read.central_directory_start()).unwrap();
    assert_eq!(
        &archive[directory..directory + 4],
        b"PK\x01\x02",
        "a central directory header"
    );
    let descriptor = archive[..directory]
        .windows(4)
        .rposition(|w| w == b"PK\x07\x08")
        .expect("a data descriptor");
    (descriptor, directory)
}

/// The data descriptor a zip writer puts after `data` stored (method 0,
/// sizes under 4 GiB): its signature, CRC-32 and both sizes, 16 bytes.
/// Planted inside an image's data it is a pattern a reader that looks for
/// a stored entry's end must see past (another entry's descriptor), or,
/// for the data before it, a false end.
pub fn data_descriptor(data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let size = u32::try_from(data.len()).expect("under 4 GiB");
    [
        b"PK\x07\x08".as_slice(),
        &crc.sum().to_le_bytes(),
        &size.to_le_bytes(),
        &size.to_le_bytes(),
    ]
    .concat()
}
