//! The best guess of the operating system.

use crate::model::{FsKind, ImageInfo, OsGuess};

/// Guesses from the strongest evidence down: Windows installer files, the
/// `.disk/info` line, the volume id, an ext root file system's `os-release`,
/// then the partitions' labels and types.
pub(crate) fn os(info: &ImageInfo) -> Option<OsGuess> {
    let guess = |name: &str, evidence: &str| {
        Some(OsGuess {
            name: name.to_string(),
            evidence: evidence.to_string(),
        })
    };
    if let Some(iso) = &info.iso {
        if iso.windows_installer {
            return guess("Windows installer", "sources/install.wim|esd on the ISO");
        }
        if let Some(line) = &iso.disk_info {
            return guess(line, ".disk/info");
        }
        if let Some(v) = iso.volume_id.as_ref().or(iso.udf_volume_id.as_ref()) {
            let lower = v.to_ascii_lowercase();
            let known = [
                ("ubuntu", "Ubuntu"),
                ("debian", "Debian"),
                ("fedora", "Fedora"),
                ("arch", "Arch Linux"),
                ("rhel", "Red Hat Enterprise Linux"),
                ("rocky", "Rocky Linux"),
                ("alma", "AlmaLinux"),
                ("opensuse", "openSUSE"),
                ("freebsd", "FreeBSD"),
                ("cccoma", "Windows"),
                ("cpba", "Windows"),
            ];
            for (needle, name) in known {
                if lower.contains(needle) {
                    return guess(name, &format!("volume id {v:?}"));
                }
            }
        }
    }
    if let Some(os) = info.filesystem.as_ref().and_then(|f| f.os_release.as_ref()) {
        return guess(os, "/etc/os-release of the file system");
    }
    let table = info.table.as_ref()?;
    if let Some((p, os)) = table.partitions.iter().find_map(|p| {
        p.filesystem
            .as_ref()
            .and_then(|f| f.os_release.as_ref())
            .map(|os| (p.number, os))
    }) {
        return guess(os, &format!("/etc/os-release on partition {p}"));
    }
    let labels: Vec<String> = table
        .partitions
        .iter()
        .filter_map(|p| {
            p.filesystem
                .as_ref()
                .and_then(|f| f.label.clone())
                .or_else(|| p.name.clone())
        })
        .map(|l| l.to_ascii_lowercase())
        .collect();
    if labels.iter().any(|l| l == "boot") && labels.iter().any(|l| l == "rootfs") {
        return guess(
            "Raspberry Pi OS or similar (boot + rootfs)",
            "partition labels",
        );
    }
    let has = |kind: FsKind| {
        table
            .partitions
            .iter()
            .any(|p| p.filesystem.as_ref().is_some_and(|f| f.kind == kind))
    };
    if has(FsKind::Ext4) || has(FsKind::Ext3) || has(FsKind::Ext2) {
        return guess("Linux", "an ext2/3/4 partition");
    }
    if has(FsKind::Ntfs) {
        return guess("Windows", "an NTFS partition");
    }
    None
}
