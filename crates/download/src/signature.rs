//! Checking a detached OpenPGP signature (a `SHA256SUMS.gpg`, armored or
//! binary) of some data against a keyring the operator provides (one or
//! more certificates, armored or binary, as `gpg --export [--armor]` writes
//! them), with rPGP.
//!
//! A signature is good when one of the keyring's keys verifies it: a
//! primary key, or a subkey whose binding to its primary key verifies. The
//! signer is named by its certificate's (primary key's) fingerprint, as
//! `gpg --list-keys` shows it.
//!
//! The key must also have been valid when it signed (the signature's
//! creation time): a certificate or signing subkey whose newest
//! self-signature says it had expired by then is refused
//! ([`DownloadError::SigningKeyExpired`]), and so is one that carries a
//! revocation ([`DownloadError::SigningKeyRevoked`]; a revocation that says
//! the key was only superseded or retired counts for signatures made after
//! it, any other — compromised, or no reason — for every signature). Only
//! revocations inside the keyring's certificates are seen: there is no key
//! server or revocation list here.

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{
    Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey, SignedSecretKey,
};
use pgp::packet::{RevocationCode, Signature, SignatureType};
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

/// Why a keyring with no public key is refused (`parse_error`: why it
/// could not be read at all, if so): a secret key given where its public key
/// belongs (`gpg --export-secret-keys`) is named as such.
fn no_public_key(keyring: &[u8], parse_error: Option<String>) -> String {
    let secret = SignedSecretKey::from_reader_many(Cursor::new(keyring))
        .map(|(keys, _)| keys.filter_map(Result::ok).count() > 0)
        .unwrap_or(false);
    match (secret, parse_error) {
        (true, _) => "it holds a secret key, not public keys: give the signer's public keys (gpg --export KEY), and keep secret keys off the station".into(),
        (false, Some(error)) => {
            // rPGP's words are its parser's ("not enough bytes in buffer:
            // armor header"); the operator is told what the file is not.
            tracing::debug!(%error, "the keyring cannot be parsed");
            "it is not an OpenPGP keyring (neither armored nor binary keys, as gpg --export [--armor] writes them)".into()
        }
        (false, None) => "it holds no OpenPGP public key".into(),
    }
}

/// The keyring `keyring` (read from `keyring_path`: armored or binary, as
/// `gpg --export [--armor]` writes it) as armored text, for a request that
/// carries keys as text (a run armed over a station's API). Armored text is
/// given back as it is; binary keys are armored. Either way the keys are
/// read first, so a file that holds no OpenPGP public key is refused here
/// ([`DownloadError::BadKeyring`]) rather than by the station.
pub fn armored_keyring(keyring_path: &Path, keyring: &[u8]) -> Result<String, DownloadError> {
    let bad_keyring = |reason: String| DownloadError::BadKeyring {
        path: keyring_path.to_path_buf(),
        reason,
    };
    let (keys, _) = SignedPublicKey::from_reader_many(Cursor::new(keyring))
        .map_err(|e| bad_keyring(no_public_key(keyring, Some(e.to_string()))))?;
    let keys: Vec<SignedPublicKey> = keys.filter_map(Result::ok).collect();
    if keys.is_empty() {
        return Err(bad_keyring(no_public_key(keyring, None)));
    }
    if let Ok(text) = std::str::from_utf8(keyring) {
        if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            return Ok(text.to_string());
        }
    }
    let mut armored = Vec::new();
    pgp::armor::write(
        &keys,
        pgp::armor::BlockType::PublicKey,
        &mut armored,
        None,
        true,
    )
    .map_err(|e| bad_keyring(e.to_string()))?;
    String::from_utf8(armored).map_err(|e| bad_keyring(e.to_string()))
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
        .map_err(|e| bad_keyring(no_public_key(keyring, Some(e.to_string()))))?;
    let mut certificates = Vec::new();
    for key in keys {
        match key {
            Ok(key) => certificates.push(key),
            Err(error) => {
                // rPGP's words for a damaged packet carry its I/O error's
                // debug form, with a backtrace when RUST_BACKTRACE is set
                // (a hundred lines): the operator is told which keyring,
                // and the details are there at debug level.
                tracing::warn!(keyring = %keyring_path.display(), "a key of the keyring cannot be read (damaged, or of a kind rPGP does not read): skipped");
                tracing::debug!(%error, "the key that cannot be read");
            }
        }
    }
    if certificates.is_empty() {
        return Err(bad_keyring(no_public_key(keyring, None)));
    }
    let (signature, _) =
        DetachedSignature::from_reader_single(Cursor::new(signature)).map_err(|e| {
            DownloadError::BadSignatureData {
                url: signature_url.to_string(),
                reason: e.to_string(),
            }
        })?;
    let signed_at = signature.signature.created().map(|t| t.as_secs());
    for certificate in &certificates {
        let primary = fingerprint_hex(&certificate.fingerprint());
        let bound = certificate.verify_bindings().is_ok();
        if bound && signature.verify(certificate, data).is_ok() {
            valid_at(certificate, None, &primary, signed_at, signature_url)?;
            return Ok(SignerCheck {
                signer_fingerprint: primary,
                signing_key_fingerprint: None,
            });
        }
        for subkey in &certificate.public_subkeys {
            if subkey.verify_bindings(&certificate.primary_key).is_ok()
                && signature.verify(subkey, data).is_ok()
            {
                // A subkey's signature needs its certificate valid too.
                valid_at(
                    certificate,
                    Some(subkey),
                    &primary,
                    signed_at,
                    signature_url,
                )?;
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
    // Made by a key the operator trusts, yet it does not hold: the list (or
    // the signature) was changed after signing, not signed by a stranger.
    let trusted_issuer = certificates.iter().find_map(|certificate| {
        let mut names = vec![
            fingerprint_hex(&certificate.fingerprint()),
            hex_upper(AsRef::<[u8]>::as_ref(&certificate.legacy_key_id())),
        ];
        for subkey in &certificate.public_subkeys {
            names.push(fingerprint_hex(&subkey.fingerprint()));
            names.push(hex_upper(AsRef::<[u8]>::as_ref(&subkey.legacy_key_id())));
        }
        issuers
            .iter()
            .any(|issuer| names.contains(issuer))
            .then(|| fingerprint_hex(&certificate.fingerprint()))
    });
    if let Some(signer) = trusted_issuer {
        return Err(DownloadError::AlteredAfterSigning {
            sums_url: data_url.to_string(),
            signature_url: signature_url.to_string(),
            signer,
        });
    }
    Err(DownloadError::BadSignature {
        sums_url: data_url.to_string(),
        signature_url: signature_url.to_string(),
        issuers,
    })
}

/// Whether the certificate (and `subkey`, when a subkey signed) was valid at
/// `signed_at` (unix seconds): not expired by then according to its newest
/// self-signature, and not revoked.
fn valid_at(
    certificate: &SignedPublicKey,
    subkey: Option<&SignedPublicSubKey>,
    primary: &str,
    signed_at: Option<u32>,
    signature_url: &str,
) -> Result<(), DownloadError> {
    let Some(signed_at) = signed_at else {
        // RFC 9580 requires a creation time in every signature: without one
        // the key's validity at signing cannot be judged.
        return Err(DownloadError::BadSignatureData {
            url: signature_url.to_string(),
            reason: "the signature has no creation time".into(),
        });
    };
    let details = &certificate.details;
    let self_signatures = details
        .direct_signatures
        .iter()
        .chain(details.users.iter().flat_map(|user| user.signatures.iter()));
    let mut keys = vec![(
        primary.to_string(),
        certificate.primary_key.created_at().as_secs(),
        newest(self_signatures).and_then(Signature::key_expiration_time),
        details.revocation_signatures.iter().collect::<Vec<_>>(),
    )];
    if let Some(subkey) = subkey {
        let (revocations, bindings): (Vec<&Signature>, Vec<&Signature>) = subkey
            .signatures
            .iter()
            .partition(|sig| sig.typ() == Some(SignatureType::SubkeyRevocation));
        keys.push((
            fingerprint_hex(&subkey.fingerprint()),
            subkey.key.created_at().as_secs(),
            newest(bindings.into_iter()).and_then(Signature::key_expiration_time),
            revocations,
        ));
    }
    for (fingerprint, created, expiry, revocations) in keys {
        // A zero duration means "does not expire".
        if let Some(lifetime) = expiry.map(|d| d.as_secs()).filter(|&secs| secs > 0) {
            let expired_at = u64::from(created) + u64::from(lifetime);
            if u64::from(signed_at) >= expired_at {
                return Err(DownloadError::SigningKeyExpired {
                    fingerprint,
                    expired_at,
                    signed_at: u64::from(signed_at),
                });
            }
        }
        for revocation in revocations {
            let soft = matches!(
                revocation.revocation_reason_code(),
                Some(RevocationCode::KeySuperseded | RevocationCode::KeyRetired)
            );
            let revoked_at = revocation.created().map(|t| t.as_secs()).unwrap_or(0);
            if !soft || signed_at >= revoked_at {
                return Err(DownloadError::SigningKeyRevoked {
                    fingerprint,
                    reason: revocation
                        .revocation_reason_code()
                        .map(|code| format!("{code:?}"))
                        .unwrap_or_else(|| "no reason given".into()),
                    revoked_at: u64::from(revoked_at),
                });
            }
        }
    }
    Ok(())
}

/// The newest of `signatures` by creation time (the last of equals).
fn newest<'a>(signatures: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    signatures.max_by_key(|sig| sig.created().map(|t| t.as_secs()).unwrap_or(0))
}

fn fingerprint_hex(fingerprint: &pgp::types::Fingerprint) -> String {
    format!("{fingerprint:X}")
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
