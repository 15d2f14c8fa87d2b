//! Opening the database: the checks that keep a wrong file untouched, the
//! connection settings, the migrations and the station's registration.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::Access;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqlitePool};

use serde::{Deserialize, Serialize};

use super::migrate::{self, SCHEMA_VERSION};
use super::{sqlite_code, SQLITE_CORRUPT, SQLITE_NOTADB};
use crate::{Clock, Records, StationId, StoreError};

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections serve reads. Reports are read while attempts are recorded;
/// two is enough for a dashboard and an export at once on a small station.
const READERS: u32 = 2;

/// The station's records: one SQLite database file in WAL mode, shared by every
/// task of the station (clone the `Store` freely: clones share the connections).
/// It reads and writes through [`Records`]: every write is a
/// [`write`](Records::write) transaction, committed with `synchronous=FULL`
/// before the call returns, so a verdict that was awaited survives a power cut.
#[derive(Debug, Clone)]
pub struct Store {
    /// The database file, for messages.
    pub(crate) path: PathBuf,
    /// The station every run, attempt and event written through this store belongs to.
    pub(crate) station: StationId,
    /// Where timestamps come from.
    pub(crate) clock: Clock,
    /// Every write goes through this pool of exactly one connection. SQLite admits
    /// one writer at a time anyway; with one connection our own transactions queue
    /// in order instead of failing with `SQLITE_BUSY` against each other, and a
    /// deferred transaction can never deadlock upgrading to a write lock.
    pub(crate) writer: SqlitePool,
    /// Reads use their own read-only connections: in WAL mode they see the last
    /// commit and never block the writer, so exporting a long report does not delay
    /// a verdict.
    pub(crate) reader: SqlitePool,
    /// What the previous sessions left behind, measured at open before this
    /// session wrote anything: each station id whose runs or attempts the
    /// database holds unfinished (this station's, and another's that used the
    /// same data directory: a one-shot `flash` records as `station-1`, the
    /// demo as `demo`). Recovery touches only those records.
    pub(crate) previous: Vec<(String, PreviousSession)>,
    /// Opened with [`open_read_only`](Store::open_read_only): `writer` is a
    /// read-only pool too, and nothing is ever written.
    pub(crate) read_only: bool,
    /// Whether writes queue their records in the fleet outbox: read from the
    /// database at open, set by [`enable_outbox`](Store::enable_outbox).
    /// Shared by clones; one flashrack process owns a data directory, so
    /// nothing else changes it behind our back.
    pub(crate) outbox: Arc<AtomicBool>,
}

/// High-water marks of the station's records as they were when the store was opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreviousSession {
    /// The highest attempt id the station had recorded.
    pub(crate) last_attempt: i64,
    /// The highest run id the station had recorded.
    pub(crate) last_run: i64,
    /// The last moment the station was known to be alive: its latest timestamp in
    /// any record, its last heartbeat included.
    pub(crate) last_alive: Option<i64>,
}

/// What is at the path before anything is opened.
enum Found {
    /// Nothing: the database will be created.
    Nothing,
    /// An empty file: SQLite treats it as an empty database.
    EmptyFile,
    /// A file that starts like an SQLite database.
    Database,
}

impl Store {
    /// Opens the database at `path` for station `station_id`, creating the file if it
    /// is missing (its directory must exist), and brings its schema up to date.
    ///
    /// Connections use WAL mode, `synchronous=FULL`, foreign keys and a busy timeout.
    /// Nothing is written to a file that is refused: one that is not an SQLite
    /// database ([`StoreError::NotADatabase`]), another program's database
    /// ([`StoreError::ForeignDatabase`]), one from a newer flashrack
    /// ([`StoreError::NewerSchema`]), or one that cannot be written, or whose
    /// directory cannot ([`StoreError::ReadOnly`]).
    ///
    /// Call [`recover_interrupted`](Self::recover_interrupted) next, before starting
    /// any attempt.
    pub async fn open(path: &Path, station_id: &str) -> Result<Store, StoreError> {
        Self::open_with_clock(path, station_id, Clock::System).await
    }

    /// Like [`open`](Self::open), taking every timestamp from `clock`.
    pub async fn open_with_clock(
        path: &Path,
        station_id: &str,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        let station = StationId::parse(station_id)?;
        let found = preflight(path)?;
        if let Found::Database = found {
            inspect(path).await?;
        }

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Keep the connection open: closing the last one checkpoints and removes
            // the WAL, which is wasted work between two writes.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(|err| open_error(path, err))?;

        let migrator = migrate::migrator()
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        // A migration that rebuilds a table others reference (0011's
        // `attempts`) needs foreign keys off, which SQLite ignores inside the
        // transaction each migration runs in: they are turned off on the one
        // writer connection around the migrations and on again after them
        // (each such migration checks its references before it commits).
        let mut conn = writer.acquire().await?;
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await?;
        let migrated = migrator.run(&mut *conn).await;
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut *conn)
            .await?;
        drop(conn);
        migrated.map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;

        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&writer)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot share the WAL index; SQLite
            // then keeps its rollback journal, which is durable but slower.
            tracing::warn!(path = %path.display(), mode, "sqlite refused wal mode");
        }

        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await
            .map_err(|err| open_error(path, err))?;

        let mut conn = writer.acquire().await?;
        let previous = previous_sessions(&mut conn).await?;
        let outbox = super::outbox::outbox_enabled(&mut conn).await?;
        drop(conn);

        let store = Store {
            path: path.to_path_buf(),
            station,
            clock,
            writer,
            reader,
            previous,
            read_only: false,
            outbox: Arc::new(AtomicBool::new(outbox)),
        };
        store
            .write(|batch| Box::pin(batch.register_station(SCHEMA_VERSION)))
            .await?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest schema version this build knows.
    pub fn schema_version() -> i64 {
        SCHEMA_VERSION
    }

    /// Checks the database: the connection settings that make records durable, and
    /// `PRAGMA integrity_check`, which reads the whole file (seconds for a large
    /// one; a health page, not a hot path).
    pub async fn health(&self) -> Result<Health, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await?;
        drop(conn);
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.reader)
            .await?;
        let schema_version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
                .fetch_one(&self.reader)
                .await?;
        Ok(Health {
            journal_mode,
            synchronous,
            foreign_keys: foreign_keys == 1,
            integrity: problems.join("\n"),
            schema_version,
        })
    }

    /// Copies every committed transaction from the write-ahead log
    /// (`flashrack.db-wal`) into the database file and empties the log
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so that the database file alone holds
    /// every record (what a backup that copies only the file saves). Returns
    /// `false` when a reader of another process kept part of the log from being
    /// copied (it is copied at a later checkpoint).
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        let (busy, _log, _copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.writer)
                .await?;
        Ok(busy == 0)
    }

    /// Checkpoints the write-ahead log into the database file (see
    /// [`checkpoint`](Self::checkpoint)) and closes every connection; when this
    /// was the last connection to the file, SQLite removes the log. Closing a
    /// store closes its clones too; closing it again does nothing. Dropping the
    /// store closes the connections too, but without waiting and without the
    /// checkpoint: a process that wrote must call this before it exits.
    pub async fn close(self) {
        if self.writer.is_closed() {
            // Closed already, through a clone.
            return;
        }
        self.reader.close().await;
        match self.checkpoint().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                path = %self.path.display(),
                "another process reads the records: part of the log stays beside the database"
            ),
            // A read-only store has nothing to checkpoint.
            Err(error) if self.read_only => {
                tracing::debug!(%error, "no checkpoint of read-only records")
            }
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot checkpoint the records")
            }
        }
        self.writer.close().await;
    }

    /// Opens the records at `path` for reading only, as station `station_id`
    /// (for the queries that are per station), and writes nothing: no station
    /// row, no event, no file beside the database. Works on a copy on a
    /// read-only mount or without write permission.
    ///
    /// When a write-ahead log (`-wal`) lies beside the database, another process
    /// may be writing (or the copy took the log along): the database is opened
    /// read-only through SQLite's shared memory, which sees the log's records
    /// (SQLite needs the `-shm` file beside it, or a directory where it can make
    /// one). Without a log, every record is in the file: it is opened as
    /// immutable, which reads the file and nothing else.
    pub async fn open_read_only(path: &Path, station_id: &str) -> Result<Store, StoreError> {
        let station = StationId::parse(station_id)?;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut head = Vec::with_capacity(SQLITE_HEADER.len());
        File::open(path)
            .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
            .map_err(open_err)?;
        if head.as_slice() != SQLITE_HEADER {
            return Err(StoreError::NotADatabase {
                path: path.to_path_buf(),
            });
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .immutable(!Path::new(&wal).exists())
            .busy_timeout(BUSY_TIMEOUT);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|err| open_error(path, err))?;
        let inspected = inspect_schema(&mut conn, path).await;
        conn.close().await.ok();
        inspected?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(|err| open_error(path, err))?;
        Ok(Store {
            path: path.to_path_buf(),
            station,
            clock: Clock::System,
            // Every write through a read-only connection fails (`SQLITE_READONLY`).
            writer: reader.clone(),
            reader,
            previous: Vec::new(),
            read_only: true,
            outbox: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Checks the path with plain file-system calls before SQLite sees it: SQLite would
/// happily start a new database over an empty directory entry, but it must never get
/// to write to a file that is not ours or cannot be written.
fn preflight(path: &Path) -> Result<Found, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let found = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(open_err(io::Error::other("it is a directory")));
        }
        Ok(_) => {
            let mut head = Vec::with_capacity(SQLITE_HEADER.len());
            File::open(path)
                .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
                .map_err(open_err)?;
            if head.is_empty() {
                Found::EmptyFile
            } else if head.as_slice() == SQLITE_HEADER {
                Found::Database
            } else {
                return Err(StoreError::NotADatabase {
                    path: path.to_path_buf(),
                });
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::metadata(dir).map_err(|source| StoreError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
            Found::Nothing
        }
        Err(err) => return Err(open_err(err)),
    };
    if !matches!(found, Found::Nothing) {
        // Opening for writing without `create` or `truncate` changes nothing, not
        // even the modification time.
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| writable_error(path, source))?;
    }
    // SQLite creates the database and its `-wal` and `-shm` files in the directory.
    // `access` asks the kernel, which also answers for root on a read-only mount or
    // an immutable directory.
    rustix::fs::access(dir, Access::WRITE_OK)
        .map_err(|errno| writable_error(dir, io::Error::from(errno)))?;
    Ok(found)
}

fn writable_error(path: &Path, source: io::Error) -> StoreError {
    match source.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::ReadOnly {
                path: path.to_path_buf(),
                source,
            }
        }
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Looks into an existing database through a read-only connection, so that a file
/// from a newer build or another program is refused before any write.
async fn inspect(path: &Path) -> Result<(), StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|err| open_error(path, err))?;
    let result = inspect_schema(&mut conn, path).await;
    conn.close().await.ok();
    result
}

async fn inspect_schema(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|err| open_error(path, err))?;
    if !tables.iter().any(|t| t == "_sqlx_migrations") {
        return if tables.is_empty() {
            Ok(())
        } else {
            Err(StoreError::ForeignDatabase {
                path: path.to_path_buf(),
            })
        };
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| open_error(path, err))?;
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Turns SQLite's verdict on a file into the store's.
fn open_error(path: &Path, err: sqlx::Error) -> StoreError {
    match sqlite_code(&err) {
        Some(SQLITE_NOTADB) => StoreError::NotADatabase {
            path: path.to_path_buf(),
        },
        Some(SQLITE_CORRUPT) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: err.to_string(),
        },
        _ => match err {
            sqlx::Error::Io(source) => writable_error(path, source),
            err => StoreError::Database(err),
        },
    }
}

/// Measures what each station's previous session left unfinished, before
/// this one writes. Whoever opens the records for writing holds the data
/// directory's lock, so no other flashrack is recording there: whatever is
/// still running, under any station id, was left by one that ended.
async fn previous_sessions(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, PreviousSession)>, StoreError> {
    let stations: Vec<String> = sqlx::query_scalar(
        "SELECT station_id FROM attempts WHERE state = 'running'
         UNION SELECT station_id FROM runs WHERE stopped_at IS NULL
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut previous = Vec::with_capacity(stations.len());
    for station in stations {
        let session = previous_session(conn, &station).await?;
        previous.push((station, session));
    }
    Ok(previous)
}

/// Measures what the station's previous session left, before this one writes.
async fn previous_session(
    conn: &mut SqliteConnection,
    station: &str,
) -> Result<PreviousSession, StoreError> {
    let row = sqlx::query(
        "SELECT
            (SELECT COALESCE(MAX(id), 0) FROM attempts WHERE station_id = ?1) AS last_attempt,
            (SELECT COALESCE(MAX(id), 0) FROM runs WHERE station_id = ?1) AS last_run,
            (SELECT last_seen FROM stations WHERE id = ?1) AS last_seen,
            (SELECT MAX(at) FROM events WHERE station_id = ?1) AS last_event,
            (SELECT MAX(started_at) FROM attempts WHERE station_id = ?1) AS last_attempt_start,
            (SELECT MAX(finished_at) FROM attempts WHERE station_id = ?1) AS last_attempt_end,
            (SELECT MAX(started_at) FROM runs WHERE station_id = ?1) AS last_run_start,
            (SELECT MAX(stopped_at) FROM runs WHERE station_id = ?1) AS last_run_stop",
    )
    .bind(station)
    .fetch_one(&mut *conn)
    .await?;
    let mut last_alive: Option<i64> = None;
    for column in [
        "last_seen",
        "last_event",
        "last_attempt_start",
        "last_attempt_end",
        "last_run_start",
        "last_run_stop",
    ] {
        let at: Option<i64> = row.try_get(column)?;
        last_alive = last_alive.max(at);
    }
    Ok(PreviousSession {
        last_attempt: row.try_get("last_attempt")?,
        last_run: row.try_get("last_run")?,
        last_alive,
    })
}

/// What [`Store::health`] finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The journal mode: `wal` unless the file system refused it.
    pub journal_mode: String,
    /// The write connection's `synchronous` level: 2 is `FULL`.
    pub synchronous: i64,
    /// Whether the write connection enforces foreign keys.
    pub foreign_keys: bool,
    /// What `PRAGMA integrity_check` says: `ok`, or the problems it found.
    pub integrity: String,
    /// The newest migration applied to the file.
    pub schema_version: i64,
}
