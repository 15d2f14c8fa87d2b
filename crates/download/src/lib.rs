//! Images from URLs, with the proof of where they came from: a resumable
//! download with retries ([`Downloader::download`]), the checksum lists
//! vendors publish beside their images ([`sums`]), and the OpenPGP signature
//! of such a list checked against a keyring the operator provides
//! ([`signature`]). It does not import anything: the bytes go to a channel
//! the caller reads (the application feeds them to the image cache's
//! single pass as they arrive).
//!
//! Layout:
//! - [`fetch`]: [`Downloader`] (the HTTP client: rustls with the system's
//!   root certificates, proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`),
//!   [`RetryPolicy`], [`Partial`] (the state a download keeps on disk so that
//!   it resumes after a restart), [`Progress`];
//! - [`sums`]: finding a file's digest in a `SHA256SUMS` list;
//! - [`signature`]: checking a detached signature against a keyring;
//! - [`error`]: [`DownloadError`], the one error type.
//!
//! **Why rPGP (`pgp`), not Sequoia:** both are maintained pure-Rust OpenPGP
//! implementations, but Sequoia's default cryptographic backend is Nettle (a
//! C library, so `nettle-dev`, `pkg-config` and clang for its bindings on
//! every machine that builds flashrack), and its pure-Rust backend is marked
//! experimental (it must be enabled with `allow-experimental-crypto` and
//! `allow-variable-time-crypto`). rPGP is pure Rust with RustCrypto
//! underneath, builds here with nothing but cargo, and checking a detached
//! signature against a certificate is all flashrack asks of it.
//!
//! **API boundary:** no SQL, no engine, no image cache; the application
//! decides what to do with the bytes and the provenance.
#![deny(missing_docs)]

pub mod error;
pub mod fetch;
pub mod signature;
pub mod sums;

pub use error::DownloadError;
pub use fetch::{Downloaded, Downloader, Partial, Progress, RetryPolicy, Retrying, Small};
pub use signature::{armored_keyring, verify_detached, SignerCheck};
pub use sums::lookup;
