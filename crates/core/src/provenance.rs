//! Where an image came from, as recorded with it: the URL it was downloaded
//! from, the server's validators for that file, where the digest it was
//! checked against came from, and who signed that digest; or, for an image
//! captured from a master stick, which stick in which port
//! ([`CaptureOrigin`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;

/// Where the digest an import was checked against came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DigestSource {
    /// Nothing was checked: the image is whatever the server sent.
    Unchecked,
    /// The operator gave the digest (`--sha256`).
    Operator {
        /// The digest given.
        sha256: Sha256Digest,
    },
    /// Looked up by file name in a checksum list (`SHA256SUMS`).
    Sums {
        /// The checksum list's URL.
        url: String,
        /// The name the digest was listed under.
        file_name: String,
        /// The digest listed.
        sha256: Sha256Digest,
        /// The list's OpenPGP signature, when one was checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<SignatureCheck>,
    },
}

/// A checked OpenPGP signature of a checksum list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    /// The signature's URL.
    pub url: String,
    /// The fingerprint of the signer's certificate (primary key), upper-case
    /// hex, as `gpg --list-keys` shows it.
    pub signer_fingerprint: String,
    /// The fingerprint of the (sub)key that made the signature, if it is not
    /// the primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_fingerprint: Option<String>,
}

impl DigestSource {
    /// How much the check proved, to compare two imports of one image:
    /// nothing (0), a digest the operator gave (1), a checksum list's (2),
    /// a list whose signature was checked (3).
    pub fn strength(&self) -> u8 {
        match self {
            DigestSource::Unchecked => 0,
            DigestSource::Operator { .. } => 1,
            DigestSource::Sums {
                signature: None, ..
            } => 2,
            DigestSource::Sums { .. } => 3,
        }
    }

    /// The digest the import was checked against, if any.
    pub fn sha256(&self) -> Option<Sha256Digest> {
        match self {
            DigestSource::Unchecked => None,
            DigestSource::Operator { sha256 } | DigestSource::Sums { sha256, .. } => Some(*sha256),
        }
    }

    /// The signer's fingerprint, when a signature was checked.
    pub fn signer_fingerprint(&self) -> Option<&str> {
        match self {
            DigestSource::Sums {
                signature: Some(check),
                ..
            } => Some(&check.signer_fingerprint),
            _ => None,
        }
    }
}

impl fmt::Display for DigestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestSource::Unchecked => f.write_str("not checked"),
            DigestSource::Operator { .. } => f.write_str("given by the operator"),
            DigestSource::Sums {
                url,
                file_name,
                signature,
                ..
            } => {
                write!(f, "{file_name} in {url}")?;
                match signature {
                    Some(check) => write!(f, ", signed by {}", check.signer_fingerprint),
                    None => f.write_str(", unsigned"),
                }
            }
        }
    }
}

/// The master stick a captured image was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureOrigin {
    /// The station's master port it sat in; `None` when the device was named
    /// on the command line (`flashrack image capture /dev/sdX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The stick's serial, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The device node read (`/dev/sdb`).
    pub device: String,
    /// The device's size in bytes.
    pub device_size: u64,
    /// How much of it was read, in words ("up to the end of the last MBR
    /// partition", "the whole device").
    pub extent: String,
    /// The device's logical sector size when it is not 512 bytes: its
    /// partition table counts in it, and reads right only on disks of that
    /// sector size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u64>,
}

impl fmt::Display for CaptureOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("captured from ")?;
        if let Some(port) = &self.port {
            write!(f, "port {port}, ")?;
        }
        match &self.serial {
            Some(serial) => write!(f, "serial {serial}")?,
            None => f.write_str("no serial")?,
        }
        write!(
            f,
            " ({}, {} bytes), {}",
            self.device, self.device_size, self.extent
        )?;
        if let Some(sector_size) = self.sector_size {
            write!(
                f,
                "; {sector_size}-byte sectors: its partitions are found only on disks of {sector_size}-byte sectors"
            )?;
        }
        Ok(())
    }
}

/// Where an image came from: downloaded, or captured from a master stick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The URL it was downloaded from, as given; for a captured image, the
    /// device node it was read from (see `captured`).
    pub url: String,
    /// The server's `ETag` for the file, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The server's `Last-Modified` for the file, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Where the digest it was checked against came from (`unchecked` for a
    /// capture: the digest is of the bytes read from the master).
    pub digest_source: DigestSource,
    /// The master stick it was captured from; `None` for a download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<CaptureOrigin>,
    /// The image it was built from, for a derived image (a bootable stick
    /// layout of an installer ISO); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built: Option<BuildOrigin>,
    /// Why the lookup of a block map beside a downloaded image on its
    /// server failed, when it did (the URL asked and the error: a server
    /// error, a timeout): the image was imported without that map, and
    /// gets one generated from its file systems where they can be read, as
    /// when none is there. `None` when the lookup found a map or none, or
    /// was not made (a map named by the operator, `--no-bmap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmap_lookup_failed: Option<String>,
}

impl Provenance {
    /// The provenance of an image captured from `origin`.
    pub fn captured(origin: CaptureOrigin) -> Self {
        Self {
            url: origin.device.clone(),
            etag: None,
            last_modified: None,
            digest_source: DigestSource::Unchecked,
            captured: Some(origin),
            built: None,
            bmap_lookup_failed: None,
        }
    }

    /// The provenance of an image built from another (`origin`): its `url`
    /// names the source image (`image:<sha256>`), its digest is of the
    /// bytes built.
    pub fn built(origin: BuildOrigin) -> Self {
        Self {
            url: format!("image:{}", origin.from_sha256.to_hex()),
            etag: None,
            last_modified: None,
            digest_source: DigestSource::Unchecked,
            captured: None,
            built: Some(origin),
            bmap_lookup_failed: None,
        }
    }
}

/// The image a derived image was built from, how, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOrigin {
    /// The sha256 of the image it was built from (an installer ISO).
    pub from_sha256: Sha256Digest,
    /// That image's name.
    pub from_name: String,
    /// How, in words ("bootable USB layout: GPT, FAT32 with the ISO's
    /// files; sources/install.wim split into 3 parts (wimlib)").
    pub method: String,
    /// When the build ended, RFC 3339 in UTC.
    pub built_at: String,
}

impl fmt::Display for BuildOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "built from {} (sha256 {}) as a {}, at {}",
            self.from_name,
            self.from_sha256.to_hex(),
            self.method,
            self.built_at
        )
    }
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.captured {
            return write!(f, "{origin}");
        }
        if let Some(origin) = &self.built {
            return write!(f, "{origin}");
        }
        write!(f, "{}", self.url)?;
        match (&self.etag, &self.last_modified) {
            (Some(etag), _) => write!(f, " (ETag {etag})")?,
            (None, Some(modified)) => write!(f, " (Last-Modified {modified})")?,
            (None, None) => {}
        }
        match &self.digest_source {
            DigestSource::Unchecked => f.write_str("; digest not checked")?,
            source => write!(f, "; digest {source}")?,
        }
        match &self.bmap_lookup_failed {
            Some(why) => write!(
                f,
                "; no block map from beside it: the lookup failed ({why})"
            ),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_provenance_reads_as_one_line_naming_the_signer() {
        let sha = Sha256Digest::of(b"x");
        let p = Provenance {
            url: "https://example.invalid/a.iso".into(),
            etag: Some("\"abc\"".into()),
            last_modified: None,
            digest_source: DigestSource::Sums {
                url: "https://example.invalid/SHA256SUMS".into(),
                file_name: "a.iso".into(),
                sha256: sha,
                signature: Some(SignatureCheck {
                    url: "https://example.invalid/SHA256SUMS.gpg".into(),
                    signer_fingerprint: "ABCD".into(),
                    signing_key_fingerprint: None,
                }),
            },
            captured: None,
            built: None,
            bmap_lookup_failed: None,
        };
        assert_eq!(
            p.to_string(),
            "https://example.invalid/a.iso (ETag \"abc\"); digest a.iso in https://example.invalid/SHA256SUMS, signed by ABCD"
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Provenance>(&json).unwrap(), p);
        assert_eq!(p.digest_source.signer_fingerprint(), Some("ABCD"));
        assert_eq!(p.digest_source.sha256(), Some(sha));
    }

    #[test]
    fn a_captured_provenance_names_the_port_the_serial_and_the_extent() {
        let p = Provenance::captured(CaptureOrigin {
            port: Some("M1".into()),
            serial: Some("GOLD-7".into()),
            device: "/dev/sdc".into(),
            device_size: 64 << 20,
            extent: "up to the end of the last MBR partition".into(),
            sector_size: None,
        });
        assert_eq!(
            p.to_string(),
            "captured from port M1, serial GOLD-7 (/dev/sdc, 67108864 bytes), up to the end of the last MBR partition"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["captured"]["port"], "M1");
        // A 512-byte-sector master's, as before the sector size was kept.
        assert!(json["captured"].get("sector_size").is_none());
        let mut four_k = p.clone();
        if let Some(origin) = four_k.captured.as_mut() {
            origin.sector_size = Some(4096);
        }
        assert!(four_k.to_string().ends_with(
            "partition; 4096-byte sectors: its partitions are found only on disks of 4096-byte sectors"
        ));
        assert_eq!(json["url"], "/dev/sdc");
        assert_eq!(serde_json::from_value::<Provenance>(json).unwrap(), p);
        // A download's provenance has no `captured` key, as before captures.
        let download = Provenance {
            captured: None,
            ..p
        };
        assert!(serde_json::to_value(&download)
            .unwrap()
            .get("built")
            .is_none());
        assert!(serde_json::to_value(&download)
            .unwrap()
            .get("captured")
            .is_none());
    }

    #[test]
    fn a_built_provenance_names_the_source_the_method_and_the_time() {
        let from = Sha256Digest::of(b"iso");
        let p = Provenance::built(BuildOrigin {
            from_sha256: from,
            from_name: "Win11.iso".into(),
            method: "bootable USB layout: GPT, FAT32 with the ISO's files".into(),
            built_at: "2026-12-01T17:00:00.000Z".into(),
        });
        assert_eq!(
            p.to_string(),
            format!(
                "built from Win11.iso (sha256 {}) as a bootable USB layout: GPT, FAT32 with the ISO's files, at 2026-12-01T17:00:00.000Z",
                from.to_hex()
            )
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["built"]["from_name"], "Win11.iso");
        assert_eq!(json["url"], format!("image:{}", from.to_hex()));
        assert!(json.get("captured").is_none());
        assert_eq!(serde_json::from_value::<Provenance>(json).unwrap(), p);
    }
}
