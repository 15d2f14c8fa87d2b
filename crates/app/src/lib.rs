//! The flashrack station application: everything between the command line and
//! the library crates, as a library the binary calls and tests reuse.
//!
//! The binary (`crates/cli`) parses arguments, installs logging, takes the data
//! directory's lock and prints; everything else is here:
//! - [`application`]: [`Application::build`] (configuration and [`Parts`] in:
//!   the hotplug source and device access, the data directory, the listener,
//!   where records go, background tasks) and
//!   [`Application::run_until_stopped`] (until a shutdown future completes);
//!   `serve` and `demo` are thin calls into it;
//! - [`records`]: [`StoreRecords`], the station's `Journal` and the web side's
//!   `Reports` over the SQLite store (the one place where they meet);
//! - [`reports`]: report rendering for the web side and `flashrack report`;
//! - [`flash`]: one-shot flashing (the fan-out, its records, signals as a
//!   stream, a typed summary: [`summary`]) over the targets of [`targets`],
//!   and one-shot audits (`flashrack verify`: read back, write nothing), whose
//!   block devices [`audit`] judges by the guard's rules for reading;
//! - [`fleet`]: the station's side of a fleet: records shipped to the hub,
//!   the live rack reported, the hub's orders followed (images fetched);
//! - [`images`]: the image cache under a data directory;
//! - [`downloads`]: images imported from URLs, with their digest checked
//!   against a signed `SHA256SUMS` and their provenance kept;
//! - [`follow`]: runs armed over the API with an image not cached yet (a URL,
//!   a file on the station), whose sticks follow its import;
//! - [`devices`]: the block devices attached now, as the guard judges them;
//! - [`kept_files`]: the files the guard protects from a loop device over them
//!   (the data directory, cached images, raw images referenced in place);
//! - [`capture`]: a master stick read into the image cache;
//! - [`client`]: the HTTP client of a running station (`status`, `run`);
//! - [`ports`]: learning the port map;
//! - [`lock`]: one flashrack per data directory;
//! - [`demo`]: the demo's rack, image and scripted operator;
//! - `testing` (feature `testing`): `spawn_app`, a whole station for tests.
//!
//! **Architecture invariant:** the library never prints and never installs
//! logging; it returns typed results ([`AppError`]) and reports progress
//! through channels. Signals are the binary's: a shutdown arrives as a future,
//! a flash's stop as a channel of [`flash::StopSignal`]s.
#![deny(missing_docs)]

pub mod application;
pub mod audit;
pub mod bootable;
pub mod capture;
pub mod client;
pub mod demo;
pub mod devices;
pub mod downloads;
pub mod error;
pub mod flash;
pub mod fleet;
pub mod follow;
pub mod images;
pub mod kept_files;
pub mod lock;
pub mod ports;
pub mod records;
pub mod reports;
pub mod summary;
pub mod targets;
#[cfg(feature = "testing")]
pub mod testing;

pub use application::{AppContext, Application, BackgroundTask, Parts, Recording, ShutdownSignal};
pub use error::AppError;
pub use records::StoreRecords;
