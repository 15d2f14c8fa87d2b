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
    let headers: Vec<usize> = (0..archive.len() - 30)
        .filter(|&at| archive[at..].starts_with(b"PK\x03\x04"))
        .collect();
    assert_eq!(headers.len(), entries.len());
    for (at, (name, content)) in headers.into_iter().zip(entries) {
        let name_len = usize::from(u16::from_le_bytes([archive[at + 26], archive[at + 27]]));
        assert_eq!(&archive[at + 30..at + 30 + name_len], name.as_bytes());
        if content.is_some() {
            assert_ne!(archive[at + 6] & 0x08, 0, "{name} has a data descriptor");
        }
    }
    archive
}

/// Where the last data descriptor of `archive` starts (its signature), and
/// its central directory's first header.
pub fn descriptor_and_directory(archive: &[u8]) -> (usize, usize) {
    let directory = archive
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("a central directory header");
    let descriptor = archive[..directory]
        .windows(4)
        .rposition(|w| w == b"PK\x07\x08")
        .expect("a data descriptor");
    (descriptor, directory)
}
