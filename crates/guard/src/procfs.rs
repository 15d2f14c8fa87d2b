//! The proc files the guard reads, parsed from their text (the live files or a
//! test's): `/proc/self/mountinfo` and `/proc/swaps`.
//!
//! Hand-written rather than the `procfs` crate: `procfs-core` (its parsing half)
//! has no `/proc/swaps` parser, leaves mountinfo's mount points and sources
//! escaped (`\040` for a space) and gives the device number as text, so the
//! guard would keep a swaps parser, the unescaping and the number parsing anyway,
//! and add a dependency (with `chrono` by default) to save about forty lines.

use crate::GuardError;

/// One line of `/proc/self/mountinfo`, the parts the guard needs.
#[derive(Debug)]
pub(crate) struct MountEntry {
    /// Major number of the mounted device (`0` for an anonymous one).
    pub(crate) major: u32,
    /// Its minor number.
    pub(crate) minor: u32,
    /// Where it is mounted, unescaped.
    pub(crate) mount_point: String,
    /// The mount source (`/dev/sdb1`, `/dev/mapper/vg-root`, `tmpfs`), unescaped.
    pub(crate) source: String,
}

/// Parses `mountinfo`. A line that cannot be understood is an error, not skipped: a
/// mount the guard overlooks could be the one that matters.
pub(crate) fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, GuardError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |detail: &str| GuardError::Malformed {
            what: format!("mountinfo line {}", index + 1),
            detail: detail.to_owned(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let (major, minor) = fields
            .get(2)
            .and_then(|f| f.split_once(':'))
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| malformed("no major:minor in the third field"))?;
        let mount_point = fields
            .get(4)
            .map(|f| unescape(f))
            .ok_or_else(|| malformed("no mount point"))?;
        // Optional fields end with a lone "-", then file system type and source.
        let dash = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .ok_or_else(|| malformed("no \"-\" separator"))?;
        let source = fields
            .get(dash + 2)
            .map(|f| unescape(f))
            .ok_or_else(|| malformed("no mount source"))?;
        out.push(MountEntry {
            major,
            minor,
            mount_point,
            source,
        });
    }
    Ok(out)
}

/// One line of `/proc/swaps`.
#[derive(Debug)]
pub(crate) struct SwapEntry {
    /// The swap area (a device or a file), unescaped.
    pub(crate) filename: String,
    /// `partition` for a block device, `file` for a swap file.
    pub(crate) kind: String,
}

/// Parses `/proc/swaps` (a header line, then one area a line).
pub(crate) fn parse_swaps(text: &str) -> Result<Vec<SwapEntry>, GuardError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (index == 0 && line.starts_with("Filename")) {
            continue;
        }
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(filename), Some(kind)) => out.push(SwapEntry {
                filename: unescape(filename),
                kind: kind.to_owned(),
            }),
            _ => {
                return Err(GuardError::Malformed {
                    what: format!("swaps line {}", index + 1),
                    detail: "expected a file name and a type".to_owned(),
                })
            }
        }
    }
    Ok(out)
}

/// Undoes the kernel's octal escapes in proc files (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
