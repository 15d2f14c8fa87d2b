//! flashrack's records: images, runs, devices, attempts, refusals and an
//! append-only event log, and the report data read from them.
//!
//! The store knows nothing of devices, udev, HTTP or the engine: it takes and gives
//! the domain types of `flashrack-core` ([`Verdict`](flashrack_core::Verdict),
//! [`AttemptFigures`](flashrack_core::AttemptFigures), …), its own rows and
//! records, and the report data of `flashrack-report` ([`RunReport`],
//! [`DeviceReport`]), which that crate renders. All SQL of flashrack lives in
//! this crate, behind named functions.
//!
//! Everything reads and writes through two traits, the seam a second database
//! implements (a lab hub's PostgreSQL): [`Records`] (one entry point for
//! writing, [`Records::write`], start-up recovery, and the queries) and
//! [`Writes`] (every write, as a method of one open transaction, a [`Batch`]).
//! The station's database is SQLite ([`Store`], in [`sqlite`]); nothing
//! SQLite-specific leaves that module.
//!
//! The store is async and needs a tokio runtime (sqlx runs SQLite on its own worker
//! threads, so no call blocks the async workers).
//!
//! # Guarantees
//! - An attempt is recorded as started before its first byte is written (callers
//!   await the [`write`](Records::write) that makes [`Writes::start_attempt`])
//!   and its verdict is committed durably (`synchronous=FULL` in WAL mode)
//!   before the `write` that makes [`Writes::finish_attempt`] returns.
//! - Every refusal of the target guard is recorded ([`Writes::record_refusal`])
//!   and shows in run and device reports, counted apart from failures.
//! - A running attempt's acknowledged bytes are recorded every few seconds
//!   ([`Writes::record_progress`]); recovery keeps them as a lower bound.
//! - Attempts left running by a crash or power loss become `interrupted` at the next
//!   start ([`Records::recover_interrupted`]).
//! - A file the store refuses to open (not SQLite, another program's, a newer
//!   schema, not writable) is never written to: see [`Store::open`].
//! - Every run, attempt and event carries the station that made it, so several
//!   stations can share one database.
//! - After [`Store::close`] the database file alone holds every record (the
//!   write-ahead log is checkpointed into it), and [`Store::open_read_only`]
//!   reads records without writing anything, also from a read-only copy.
//!
//! # Layout
//! - `backend`: the seam: [`Records`], [`Writes`], [`Batch`];
//! - [`sqlite`]: the SQLite store: opening, the file checks, connection settings,
//!   migrations ([`SCHEMA_VERSION`]), the SQL of every write and query;
//! - [`model`]: ids, rows to write, records read back (the report data
//!   re-exported from `flashrack-report`);
//! - `convert`: what database columns hold for domain values;
//! - [`clock`]: where timestamps come from (unix milliseconds, UTC), settable in
//!   tests.
//!
//! # Portability
//! The SQL is SQLite's, kept to what PostgreSQL also understands where that costs
//! nothing (`ON CONFLICT`, `RETURNING`, `CASE` rather than boolean sums, partial
//! indexes), so that a PostgreSQL backend for a lab's shared database is a second
//! module implementing [`Records`] and [`Writes`], with its own migrations and
//! connection setup, rather than a rewrite.
#![deny(missing_docs)]

mod backend;
pub mod clock;
mod convert;
mod error;
pub mod model;
pub mod sqlite;

pub use backend::{Batch, BoxFuture, Records, Writes};
pub use clock::{Clock, ManualClock};
pub use error::StoreError;
pub use model::{
    AttemptId, AttemptRecord, AttemptState, Counts, DeviceId, DeviceRecord, DeviceReport,
    DeviceRow, DeviceSummary, Event, EventId, EventKind, EventRow, ImageRow, ImageSource,
    PortHistory, Recovery, RefusalId, RefusalRow, ReportRow, ReportVerdict, Run, RunFacts, RunId,
    RunReport, RunSummary, RunningFigures, StationId, StopReason, PENDING_IMAGE_FORMAT,
};
pub use sqlite::{
    BuildEnd, BuildRecord, BuiltLayout, Health, NewBuild, OrderMemory, SqliteWrites, Store,
    UrlImportRow, UrlImportState, INTERRUPTED_DETAIL, SCHEMA_VERSION,
};
