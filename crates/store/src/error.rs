//! The one error type of the store, whichever database is behind it.

use std::io;
use std::path::PathBuf;

use crate::{AttemptId, AttemptState, RunId};

/// Why the store could not do what was asked.
///
/// The variants for opening ([`NotADatabase`](StoreError::NotADatabase),
/// [`NewerSchema`](StoreError::NewerSchema), [`ReadOnly`](StoreError::ReadOnly), …) are
/// all raised before anything is written: a file the store refuses is left exactly as
/// it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not an SQLite database.
    #[error("{} is not an sqlite database; refusing to touch it", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is an SQLite database of some other program.
    #[error("{} is an sqlite database but not a flashrack store; refusing to touch it", path.display())]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
    },
    /// SQLite says the database is damaged.
    #[error("{} is damaged: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The database was written by a newer flashrack whose schema this build does not
    /// know.
    #[error(
        "{} has schema version {found}, newer than this build knows ({supported}); \
         refusing to touch it: upgrade flashrack", path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The highest schema version applied to the file.
        found: i64,
        /// The highest schema version this build knows.
        supported: i64,
    },
    /// The file, or the directory that must hold it and SQLite's `-wal` and `-shm`
    /// files, cannot be written.
    #[error("{} is not writable: {source}", path.display())]
    ReadOnly {
        /// The file or directory that cannot be written.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file cannot be opened for another reason (missing directory, …).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The migrations could not be applied, or the applied ones differ from this
    /// build's (an edited migration, a failed earlier migration).
    #[error("cannot bring the schema of {} up to date: {source}", path.display())]
    Migrate {
        /// The file.
        path: PathBuf,
        /// What the migrator said.
        source: sqlx::migrate::MigrateError,
    },
    /// The station id is empty, too long or holds control characters or
    /// invisible formatting characters.
    #[error("invalid station id {got:?}: {why}")]
    InvalidStationId {
        /// The rejected id.
        got: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A record the call refers to does not exist.
    #[error("no {what} {id}")]
    NotFound {
        /// What kind of record: `run`, `device`, `attempt`, `image`.
        what: &'static str,
        /// Its id or key.
        id: String,
    },
    /// The run was stopped; it takes no new attempts and cannot be stopped again.
    #[error("run {run} is already stopped")]
    RunStopped {
        /// The run.
        run: RunId,
    },
    /// The attempt already has its verdict; its stage and verdict cannot change.
    #[error("attempt {attempt} is no longer running (it is {state})")]
    AttemptNotRunning {
        /// The attempt.
        attempt: AttemptId,
        /// Its state.
        state: AttemptState,
    },
    /// A record refers to a run, device or attempt that does not exist.
    #[error("{what} refers to a run, device or attempt that does not exist")]
    DanglingReference {
        /// What was being recorded.
        what: &'static str,
    },
    /// A number is too large for the database's signed 64-bit integers.
    #[error("{field} = {value} is too large to record")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A column holds a value this build cannot read (written by hand or by a
    /// different program).
    #[error("unexpected value {value:?} in {column}")]
    BadValue {
        /// The column.
        column: &'static str,
        /// The value.
        value: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<flashrack_core::AttemptStateParseError> for StoreError {
    fn from(error: flashrack_core::AttemptStateParseError) -> Self {
        StoreError::BadValue {
            column: "attempts.state",
            value: error.0,
        }
    }
}
