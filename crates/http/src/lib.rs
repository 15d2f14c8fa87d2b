//! HTTP plumbing shared by flashrack's two servers: the station's web side
//! (`flashrack-web`) and the fleet hub (`flashrack-hub`).
//!
//! It holds what both need and nothing of either: no station, no engine, no
//! database. The hub depends on this crate rather than on `flashrack-web`,
//! which would link the station and the engine into it.
//!
//! Layout:
//! - [`error`]: [`AppError`], JSON errors that never leak internals;
//! - [`origin`]: the `Host` check (no DNS rebinding) and the `Origin` check
//!   (no cross-site change) as one pure decision, [`origin::judge`];
//! - [`auth`]: bearer tokens out of a request, compared in constant time;
//! - [`extract`]: query and path extractors whose rejections are JSON
//!   [`AppError`]s ([`ApiQuery`], [`ApiPath`], [`ApiBytes`]);
//! - [`server`]: the accept loop, with a bound on connections, a header
//!   timeout and a shutdown grace ([`ServerLimits`]).
#![deny(missing_docs)]

pub mod auth;
pub mod error;
pub mod extract;
pub mod origin;
pub mod server;

pub use error::AppError;
pub use extract::{ApiBytes, ApiPath, ApiQuery};
pub use server::ServerLimits;
