//! The station's records in one SQLite file through sqlx: [`Store`] implements
//! [`Records`](crate::Records), [`SqliteWrites`] implements
//! [`Writes`](crate::Writes).
//!
//! Everything SQLite-specific stays in this module: connections, pragmas, the
//! file checks, the migrations of the top-level `migrations/` directory, the
//! SQL, SQLite's result codes and its rows.
//!
//! # Layout
//! - [`store`](Store): opening (the file checks, the connection settings, the
//!   migrations, the station's registration), health, checkpoint, close;
//! - `records`: the [`Records`](crate::Records) implementation: transactions,
//!   recovery and the queries;
//! - `writes`: the [`Writes`](crate::Writes) implementation: the SQL of every
//!   write;
//! - `outbox`: the fleet outbox (every write's records queued for a hub in
//!   the same transaction);
//! - `orders`: what the station did about its hub's orders ([`OrderMemory`]),
//!   kept across restarts;
//! - `url_imports`: the station's imports from URLs ([`UrlImportRow`]),
//!   kept across restarts;
//! - `migrate`: the embedded migrations (append-only; schema version
//!   [`SCHEMA_VERSION`]).

mod builds;
mod migrate;
mod orders;
mod outbox;
mod records;
mod store;
mod url_imports;
mod writes;

pub use builds::{BuildEnd, BuildRecord, BuiltLayout, NewBuild, INTERRUPTED_DETAIL};
pub use migrate::SCHEMA_VERSION;
pub use orders::OrderMemory;
pub use store::{Health, Store};
pub use url_imports::{UrlImportRow, UrlImportState};
pub use writes::SqliteWrites;

/// SQLite result codes the store tells apart.
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// SQLite's extended result code for a failed foreign-key constraint.
const SQLITE_CONSTRAINT_FOREIGNKEY: &str = "787";

/// The primary SQLite result code of a database error, if this is one
/// (`SQLITE_NOTADB` is 26, `SQLITE_CORRUPT` 11, `SQLITE_CONSTRAINT` 19).
fn sqlite_code(err: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    db.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}

/// Maps a foreign-key failure to [`StoreError::DanglingReference`] and keeps
/// anything else as a database error.
///
/// [`StoreError::DanglingReference`]: crate::StoreError::DanglingReference
fn on_insert(what: &'static str) -> impl FnOnce(sqlx::Error) -> crate::StoreError {
    move |err| {
        let foreign_key = matches!(&err, sqlx::Error::Database(db)
            if db.code().as_deref() == Some(SQLITE_CONSTRAINT_FOREIGNKEY));
        if foreign_key {
            crate::StoreError::DanglingReference { what }
        } else {
            crate::StoreError::Database(err)
        }
    }
}
