//! Where an image came from, as recorded with it: the URL it was downloaded
//! from, the server's validators for that file, where the digest it was
//! checked against came from, and who signed that digest.

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

/// Where a downloaded image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The URL it was downloaded from, as given.
    pub url: String,
    /// The server's `ETag` for the file, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The server's `Last-Modified` for the file, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Where the digest it was checked against came from.
    pub digest_source: DigestSource,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.url)?;
        match (&self.etag, &self.last_modified) {
            (Some(etag), _) => write!(f, " (ETag {etag})")?,
            (None, Some(modified)) => write!(f, " (Last-Modified {modified})")?,
            (None, None) => {}
        }
        match &self.digest_source {
            DigestSource::Unchecked => f.write_str("; digest not checked"),
            source => write!(f, "; digest {source}"),
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
}
