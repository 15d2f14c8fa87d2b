//! Checking a detached OpenPGP signature (a `SHA256SUMS.gpg`, armored or
//! binary) of some data against a keyring the operator provides (one or
//! more certificates, armored or binary, as `gpg --export [--armor]` writes
//! them), with rPGP.
//!
//! A signature is good when one of the keyring's keys verifies it: a
//! primary key, or a subkey whose binding to its primary key verifies. The
//! signer is named by its certificate's (primary key's) fingerprint, as
//! `gpg --list-keys` shows it. Not checked here: expiry and revocation of
//! the keys (the keyring is the operator's statement of trust; a revoked key
//! is removed from it).

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use crate::DownloadError;

/// The key that made a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerCheck {
    /// The certificate's (primary key's) fingerprint, upper-case hex.
    pub signer_fingerprint: String,
    /// The fingerprint of the subkey that signed, when a subkey did.
    pub signing_key_fingerprint: Option<String>,
}

/// Checks that `signature` (from `signature_url`) is a valid signature of
/// `data` (from `data_url`) by a key of the keyring `keyring` (read from
/// `keyring_path`).
pub fn verify_detached(
    keyring_path: &Path,
    keyring: &[u8],
    signature_url: &str,
    signature: &[u8],
    data_url: &str,
    data: &[u8],
) -> Result<SignerCheck, DownloadError> {
    let bad_keyring = |reason: String| DownloadError::BadKeyring {
        path: keyring_path.to_path_buf(),
        reason,
    };
    let (keys, _) = SignedPublicKey::from_reader_many(Cursor::new(keyring))
        .map_err(|e| bad_keyring(e.to_string()))?;
    let mut certificates = Vec::new();
    for key in keys {
        match key {
            Ok(key) => certificates.push(key),
            Err(error) => {
                tracing::warn!(%error, keyring = %keyring_path.display(), "a key of the keyring cannot be read: skipped")
            }
        }
    }
    if certificates.is_empty() {
        return Err(bad_keyring("it holds no OpenPGP public key".into()));
    }
    let (signature, _) =
        DetachedSignature::from_reader_single(Cursor::new(signature)).map_err(|e| {
            DownloadError::BadSignatureData {
                url: signature_url.to_string(),
                reason: e.to_string(),
            }
        })?;
    for certificate in &certificates {
        let primary = fingerprint_hex(&certificate.fingerprint());
        if certificate.verify_bindings().is_ok() && signature.verify(certificate, data).is_ok() {
            return Ok(SignerCheck {
                signer_fingerprint: primary,
                signing_key_fingerprint: None,
            });
        }
        for subkey in &certificate.public_subkeys {
            if subkey.verify_bindings(&certificate.primary_key).is_ok()
                && signature.verify(subkey, data).is_ok()
            {
                return Ok(SignerCheck {
                    signer_fingerprint: primary,
                    signing_key_fingerprint: Some(fingerprint_hex(&subkey.fingerprint())),
                });
            }
        }
    }
    let mut issuers: Vec<String> = signature
        .signature
        .issuer_fingerprint()
        .into_iter()
        .map(fingerprint_hex)
        .collect();
    issuers.extend(
        signature
            .signature
            .issuer_key_id()
            .into_iter()
            .map(|id| hex_upper(AsRef::<[u8]>::as_ref(id))),
    );
    Err(DownloadError::BadSignature {
        sums_url: data_url.to_string(),
        signature_url: signature_url.to_string(),
        issuers,
    })
}

fn fingerprint_hex(fingerprint: &pgp::types::Fingerprint) -> String {
    format!("{fingerprint:X}")
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
