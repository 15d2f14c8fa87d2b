//! flashrack's records: images, runs, devices, attempts and an append-only event
//! log in one SQLite database, and the report data read from them.
//!
//! The store knows nothing of devices, udev, HTTP or the engine: it takes and gives
//! the domain types of `flashrack-core` ([`Verdict`](flashrack_core::Verdict),
//! [`AttemptFigures`](flashrack_core::AttemptFigures), …), its own rows and
//! records, and the report data of `flashrack-report` ([`RunReport`],
//! [`DeviceReport`]), which that crate renders as CSV, JSON and HTML. All SQL of
//! flashrack lives in this crate, behind named functions.
//!
//! The store is async and needs a tokio runtime (sqlx runs SQLite on its own worker
//! threads, so no call blocks the async workers).
//!
//! # Guarantees
//! - An attempt is recorded as started before its first byte is written (callers
//!   await [`Store::start_attempt`]) and its verdict is committed durably
//!   (`synchronous=FULL` in WAL mode) before [`Store::finish_attempt`] returns.
//! - Every refusal of the target guard is recorded ([`Store::record_refusal`])
//!   and shows in run and device reports, counted apart from failures.
//! - A running attempt's acknowledged bytes are recorded every few seconds
//!   ([`Store::record_progress`]); recovery keeps them as a lower bound.
//! - Attempts left running by a crash or power loss become `interrupted` at the next
//!   start ([`Store::recover_interrupted`]).
//! - A file the store refuses to open (not SQLite, another program's, a newer
//!   schema, not writable) is never written to: see [`Store::open`].
//! - Every run, attempt and event carries the station that made it, so several
//!   stations can share one database.
//! - After [`Store::close`] the database file alone holds every record (the
//!   write-ahead log is checkpointed into it), and [`Store::open_read_only`]
//!   reads records without writing anything, also from a read-only copy.
//!
//! # Layout
//! - [`store`](Store): opening, the file checks, connection settings, migrations;
//! - `migrate`: the migrations of the top-level `migrations/` directory, embedded
//!   (append-only; schema version [`SCHEMA_VERSION`]);
//! - `write`: every write, one transaction each, or several in a [`Batch`];
//! - `read`: the queries: runs and their summaries, reports, devices, events;
//! - [`model`]: ids, rows to write, records read back (the report data
//!   re-exported from `flashrack-report`);
//! - [`clock`]: where timestamps come from (unix milliseconds, UTC), settable in
//!   tests.
//!
//! # Portability
//! The SQL is SQLite's, kept to what PostgreSQL also understands where that costs
//! nothing (`ON CONFLICT`, `RETURNING`, `CASE` rather than boolean sums, partial
//! indexes), so that a PostgreSQL backend for a lab's shared database is a second
//! migrations directory and connection setup rather than a rewrite.
#![deny(missing_docs)]

pub mod clock;
mod convert;
mod error;
mod migrate;
pub mod model;
mod read;
mod store;
mod write;

pub use clock::{Clock, ManualClock};
pub use error::StoreError;
pub use migrate::SCHEMA_VERSION;
pub use model::{
    AttemptId, AttemptRecord, AttemptState, Counts, DeviceId, DeviceRecord, DeviceReport,
    DeviceRow, Event, EventId, EventKind, EventRow, Health, ImageRow, Recovery, RefusalId,
    RefusalRow, ReportRow, ReportVerdict, Run, RunId, RunReport, RunSummary, RunningFigures,
    StationId, StopReason,
};
pub use store::Store;
pub use write::Batch;
