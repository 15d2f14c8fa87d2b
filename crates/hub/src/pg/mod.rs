//! The hub's PostgreSQL storage: every SQL statement of the hub is here,
//! behind named functions.
//!
//! This is the hub's own module rather than a backend of `flashrack-store`:
//! the store's seam (`Records`/`Writes`) is a station's journal (start an
//! attempt, finish it, recover at start-up, with the store's own clock and
//! station id), while the hub applies rows that stations already wrote, keyed
//! by station and guarded by sequence numbers, and keeps what no station has
//! (tokens, live state, orders). Sharing the seam would mean implementing a
//! journal the hub never writes; sharing the crate would link PostgreSQL
//! into every station's records. The station's store and this module meet
//! only in `flashrack-fleet`'s record types.
//!
//! Layout:
//! - [`HubDb`]: the pool, connected and migrated (`migrations/postgres/`);
//! - [`tokens`]: station and operator tokens, stored as sha256;
//! - `ingest`: a [`RecordBatch`](flashrack_fleet::RecordBatch) applied in one
//!   transaction;
//! - `read`: a station's records read back as the protocol's rows;
//! - `live`: stations' live reports, and a station's view (status, backlog,
//!   counters) read back by id;
//! - `orders`: lots, each station's orders, desired against actual;
//! - `reports`: a lot's report and a stick's history across stations, as
//!   `flashrack-report` data.

mod ingest;
mod live;
mod migrate;
mod orders;
mod read;
mod reports;
mod stats;
pub mod tokens;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use live::{status_of, StationCounts, StationStatus, StationView};
pub use orders::{LotView, NewLot, OrderView};
pub use read::StationRecords;
pub use tokens::{Role, TokenOwner};

/// The channel every hub process listens on: a change any of them made.
pub const CHANNEL: &str = "flashrack_hub";

/// A failure of the hub's database, or a request it refuses.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A statement failed.
    #[error("database: {what}: {source}")]
    Sql {
        /// What the hub was doing.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What was sent cannot be stored (a number out of range, entries out of
    /// order): the sender's fault, not the database's.
    #[error("{0}")]
    Invalid(String),
    /// What was sent contradicts what the hub holds (another entry under a
    /// sequence number the station already shipped): refused, never
    /// counted as a duplicate.
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached at start-up: where the hub tried
    /// it, and why (the connection's own error, not the pool's timeout).
    #[error("database: cannot connect to {target}: {source}")]
    Unreachable {
        /// The host (or socket directory) and port, and the database.
        target: String,
        /// The driver's error for one connection tried.
        source: sqlx::Error,
    },
    /// A value read back is not what the hub wrote (a row edited by hand).
    #[error("database holds an unreadable {what}: {reason}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl PgError {
    /// Whether the database cannot be reached now (down, restarting, every
    /// connection refused or lost, none free within [`ACQUIRE_TIMEOUT`]),
    /// rather than a statement failing: the request may be sent again
    /// later, unchanged. The API answers it with a 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Sql { source, .. } => unreachable(source),
            PgError::Migrate(sqlx::migrate::MigrateError::Execute(source)) => unreachable(source),
            PgError::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// Whether `error` says the server is out of reach, not that a statement
/// failed: no connection (refused, lost, timed out, the pool closed), or
/// PostgreSQL's classes 08 (connection exception) and 57P01–57P03 (shutting
/// down, crashed, starting up).
fn unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// How long a request waits for a connection of the pool before the hub
/// answers that its database is unavailable (503). While PostgreSQL is down
/// every request waits this long (the pool tries to connect again until
/// then), so it is short: a station or a browser hears at once that the
/// hub cannot serve now, and tries again. A pool busy for that long (every
/// connection held by a long statement) is answered the same way.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`HubDb::connect`] waits for a database that is not up yet (a
/// hub started with PostgreSQL, before it accepts connections).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Wraps a driver error with what the hub was doing.
pub(crate) fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
    move |source| PgError::Sql { what, source }
}

/// The hub's database: a connection pool, shared by every request.
#[derive(Debug, Clone)]
pub struct HubDb {
    pool: PgPool,
}

impl HubDb {
    /// Connects to `url` with at most `connections` connections and brings
    /// the schema up to date (several hub processes may do this at once:
    /// sqlx's migrator takes an advisory lock).
    pub async fn connect(url: &str, connections: u32) -> Result<Self, PgError> {
        let options: PgConnectOptions = url.parse().map_err(sql("parsing database_url"))?;
        let options = options.application_name("flashrack-hub");
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        // A database still starting is waited for, a while: each try gives
        // up after ACQUIRE_TIMEOUT, which is short for the requests' sake.
        let started = std::time::Instant::now();
        loop {
            let connected = sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map_err(sql("connecting"));
            match connected {
                Ok(_) => break,
                Err(error) if error.is_unavailable() && started.elapsed() < CONNECT_PATIENCE => {
                    tracing::debug!(%error, "the database is not up yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    pool.close().await;
                    // The pool says only that it timed out: one connection
                    // tried says why ("Connection refused"), and where.
                    if error.is_unavailable() {
                        use sqlx::Connection;
                        let target = format!(
                            "{}:{} (database {})",
                            options.get_host(),
                            options.get_port(),
                            options.get_database().unwrap_or("of the user's name")
                        );
                        if let Err(source) = sqlx::PgConnection::connect_with(&options).await {
                            return Err(PgError::Unreachable { target, source });
                        }
                    }
                    return Err(error);
                }
            }
        }
        migrate::migrator().await?.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool, for listeners that need their own connection.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The text the protocol gives a unit enum (`"failed"`, `"verifying"`).
pub(crate) fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// A unit enum back from its text.
pub(crate) fn enum_from<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: String,
) -> Result<T, PgError> {
    serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| PgError::Corrupt {
        what,
        reason: format!("{text:?}"),
    })
}

/// A protocol value back from its jsonb column.
pub(crate) fn json_from<T: serde::de::DeserializeOwned>(
    what: &'static str,
    value: serde_json::Value,
) -> Result<T, PgError> {
    serde_json::from_value(value).map_err(|e| PgError::Corrupt {
        what,
        reason: e.to_string(),
    })
}
