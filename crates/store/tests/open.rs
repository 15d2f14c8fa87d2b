//! Opening the store: a new file gets the right settings and schema; a file the
//! store must not touch is refused with a clear error and left byte for byte as it
//! was. Every test uses a real file in its own temporary directory.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestStore, T0};
use flashrack_store::{Clock, ManualClock, Records, Store, StoreError, Writes, SCHEMA_VERSION};
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_database_gets_wal_full_sync_foreign_keys_and_the_schema() {
    let t = TestStore::new("rack-1").await;
    assert!(t.path().is_file());
    let health = t.store.health().await.unwrap();
    assert_eq!(health.journal_mode, "wal");
    assert_eq!(health.synchronous, 2, "synchronous must be FULL");
    assert!(health.foreign_keys);
    assert_eq!(health.integrity, "ok");
    assert_eq!(health.schema_version, SCHEMA_VERSION);

    let mut conn = raw(&t.path()).await;
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        applied,
        vec![
            (1, true),
            (2, true),
            (3, true),
            (4, true),
            (5, true),
            (6, true),
            (7, true),
            (8, true),
            (9, true),
            (10, true),
            (11, true),
            (12, true),
            (13, true),
            (14, true),
            (15, true),
        ]
    );
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "attempts",
            "bootable_builds",
            "devices",
            "events",
            "fleet_orders",
            "fleet_state",
            "images",
            "outbox",
            "refusals",
            "runs",
            "sqlite_sequence",
            "stations",
            "url_imports"
        ]
    );
    let station: (String, i64, i64) =
        sqlx::query_as("SELECT id, first_seen, last_seen FROM stations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(station, ("rack-1".to_string(), T0, T0));
}

#[tokio::test]
async fn reopening_keeps_the_records_and_applies_nothing_twice() {
    let t = TestStore::new("rack-1").await;
    t.store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    t.clock.advance(60_000);
    let again = t.reopen("rack-1").await;
    assert_eq!(
        again.image(common::image().sha256).await.unwrap(),
        Some(common::image())
    );
    assert_eq!(again.health().await.unwrap().schema_version, SCHEMA_VERSION);
    let mut conn = raw(&t.path()).await;
    let (first, last): (i64, i64) =
        sqlx::query_as("SELECT first_seen, last_seen FROM stations WHERE id = 'rack-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((first, last), (T0, T0 + 60_000));
}

/// A new database at `path` with the migrations 0001 to `version` applied by
/// sqlx's own migrator (as a build of that schema left it); its connection.
async fn database_at_schema(path: &Path, version: u32) -> SqliteConnection {
    let dir = tempfile::tempdir().unwrap();
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
    let mut copied = 0;
    for entry in fs::read_dir(migrations).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let number: Option<u32> = name.get(..4).and_then(|v| v.parse().ok());
        if entry.path().is_file() && number.is_some_and(|n| n <= version) {
            fs::copy(entry.path(), dir.path().join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, version, "one file per migration up to {version}");
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
    conn
}

/// Creates a database at `path` as a build of schema version 1 left it, with
/// records such a build made.
async fn schema_1_database(path: &Path) {
    let mut conn = database_at_schema(path, 1).await;
    let sha = common::image().sha256.to_hex();
    for sql in [
        "INSERT INTO stations VALUES ('rack-1', 'rack-1', 1, 2)".to_string(),
        format!("INSERT INTO images VALUES ('{sha}', 'old.img', 100, 'raw', 1)"),
        format!(
            "INSERT INTO runs (id, station_id, image_sha256, image_name, options, started_at,
                               stopped_at, stop_reason)
             VALUES (1, 'rack-1', '{sha}', 'old.img', '{{}}', 1, 2, 'interrupted')"
        ),
        "INSERT INTO devices VALUES (1, 'OLD1', 'OLD1', NULL, NULL, 1000, 1, 2)".to_string(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    // id, state, stage, reason code, failure, bytes written.
    let attempts = [
        (1, "passed", "verifying", None, None, 100),
        (
            2,
            "interrupted",
            "writing",
            Some("interrupted"),
            Some(r#"{"reason":"interrupted","stage":"writing"}"#),
            0,
        ),
        (
            3,
            "failed",
            "writing",
            Some("stalled"),
            Some(
                r#"{"reason":"stalled","during":"writing","offset":64,"after_secs":60,"stage":"writing"}"#,
            ),
            0,
        ),
        (
            4,
            "failed",
            "writing",
            Some("removed"),
            Some(r#"{"reason":"removed","during":"writing","stage":"writing"}"#),
            40,
        ),
        (
            5,
            "failed",
            "preparing",
            Some("refused"),
            Some(r#"{"reason":"refused","detail":"sdb1 is mounted at /mnt","stage":"preparing"}"#),
            0,
        ),
    ];
    for (id, state, stage, code, failure, written) in attempts {
        sqlx::query(
            "INSERT INTO attempts (id, station_id, run_id, device_id, port_label, port_path,
                started_at, finished_at, state, stage, reason_code, reason_detail, failure,
                capacity, bytes_written)
             VALUES (?, 'rack-1', 1, 1, 'A1', 'p', 1, 2, ?, ?, ?, ?, ?, 1000, ?)",
        )
        .bind(id)
        .bind(state)
        .bind(stage)
        .bind(code)
        .bind(code)
        .bind(failure)
        .bind(written)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_schema_1_database_is_upgraded_and_its_records_say_what_they_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flashrack.db");
    schema_1_database(&path).await;
    let store = Store::open_with_clock(&path, "rack-1", Clock::Manual(ManualClock::new(T0)))
        .await
        .unwrap();
    assert_eq!(store.health().await.unwrap().schema_version, SCHEMA_VERSION);
    let report = store
        .run_report(flashrack_store::RunId(1))
        .await
        .unwrap()
        .unwrap();
    let bounds: Vec<(Option<u64>, &str, &str)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.attempt_id.map(|id| id.0 as u64),
                r.verdict.as_str(),
                r.figures.bytes_written_bound.as_str(),
            )
        })
        .collect();
    assert_eq!(
        bounds,
        [
            (Some(1), "pass", "exact"),
            // Recorded without figures by earlier builds: nobody knows.
            (Some(2), "interrupted", "unknown"),
            (Some(3), "fail", "unknown"),
            // A pulled stick may hold more than it acknowledged.
            (Some(4), "fail", "lower_bound"),
            // A refusal at opening from before refusals carried their code.
            (Some(5), "refused", "exact"),
        ]
    );
    assert_eq!(report.rows[4].reason_code.as_deref(), Some("refused"));
    assert_eq!(report.run.counts.refused, 1);
    assert_eq!(report.run.counts.failed, 2);
}

#[tokio::test]
async fn an_empty_file_is_taken_as_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    fs::write(&path, b"").unwrap();
    let store = Store::open(&path, "rack-1").await.unwrap();
    assert_eq!(store.health().await.unwrap().integrity, "ok");
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flashrack.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    fs::write(&path, &garbage).unwrap();

    let err = Store::open(&path, "rack-1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotADatabase { path: p } if p == &path),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(fs::read(&path).unwrap(), garbage);
    assert_only_file(dir.path(), "flashrack.db");
}

#[tokio::test]
async fn a_short_text_file_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    fs::write(&path, b"SQLite").unwrap();
    let err = Store::open(&path, "rack-1").await.unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), b"SQLite");
}

#[tokio::test]
async fn another_programs_database_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE recipes (name TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let before = fs::read(&path).unwrap();
    let err = Store::open(&path, "rack-1").await.unwrap_err();
    assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused_and_left_as_it_was() {
    let t = TestStore::new("rack-1").await;
    t.store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    t.store.clone().close().await;
    // What a newer flashrack would have left: a migration this build does not know.
    {
        let mut conn = raw(&t.path()).await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (?, 'from the future', TRUE, x'00', 0)",
        )
        .bind(SCHEMA_VERSION + 1)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let before = fs::read(t.path()).unwrap();

    let err = Store::open(&t.path(), "rack-1").await.unwrap_err();
    match &err {
        StoreError::NewerSchema {
            path,
            found,
            supported,
        } => {
            assert_eq!(path, &t.path());
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade flashrack"), "{err}");
    assert_eq!(fs::read(t.path()).unwrap(), before);
}

#[tokio::test]
async fn an_invalid_station_id_is_refused_before_the_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flashrack.db");
    for bad in ["", " rack", "rack\n1", &"x".repeat(65)] {
        let err = Store::open(&path, bad).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidStationId { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(!path.exists());
}

#[tokio::test]
async fn a_missing_directory_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let err = Store::open(&missing.join("flashrack.db"), "rack-1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path == &missing),
        "{err:?}"
    );
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_read_only_directory_is_refused_with_its_path() {
    let dir = ReadOnly::empty_dir();
    let path = dir.path.join("flashrack.db");
    let err = Store::open(&path, "rack-1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::ReadOnly { path, .. } if path == &dir.path),
        "{err:?}"
    );
    assert!(err.to_string().contains(&dir.path.display().to_string()));
    assert!(!path.exists());
}

#[tokio::test]
async fn a_database_in_a_directory_made_read_only_is_refused_and_left_as_it_was() {
    let dir = ReadOnly::dir_with_database().await;
    let path = dir.path.join("flashrack.db");
    let before = fs::read(&path).unwrap();
    let err = Store::open(&path, "rack-1").await.unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn an_unwritable_database_file_is_refused_with_its_path_and_left_as_it_was() {
    let file = ReadOnly::database_file().await;
    let before = fs::read(&file.path).unwrap();
    let err = Store::open(&file.path, "rack-1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::ReadOnly { path, .. } if path == &file.path),
        "{err:?}"
    );
    assert_eq!(fs::read(&file.path).unwrap(), before);
}

#[tokio::test]
async fn closing_leaves_every_record_in_the_database_file_alone() {
    let t = TestStore::new("rack-1").await;
    t.store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    let wal = t.dir.path().join("flashrack.db-wal");
    assert!(
        fs::metadata(&wal).unwrap().len() > 0,
        "committed into the log"
    );
    t.store.clone().close().await;
    assert!(
        fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the log was checkpointed into the database file"
    );
    // A backup that copies the database file alone has the record.
    let copy = tempfile::tempdir().unwrap();
    fs::copy(t.path(), copy.path().join("flashrack.db")).unwrap();
    let store = Store::open_read_only(&copy.path().join("flashrack.db"), "rack-1")
        .await
        .unwrap();
    assert_eq!(store.images().await.unwrap(), [common::image()]);
    store.close().await;
    assert_only_file(copy.path(), "flashrack.db");
}

#[tokio::test]
async fn a_store_opened_read_only_reads_a_read_only_directory_and_writes_nothing() {
    let dir = ReadOnly::dir_with_database().await;
    let path = dir.path.join("flashrack.db");
    let before = fs::read(&path).unwrap();
    let store = Store::open_read_only(&path, "elsewhere").await.unwrap();
    assert_eq!(store.images().await.unwrap(), [common::image()]);
    assert!(
        store.write(|b| Box::pin(b.heartbeat())).await.is_err(),
        "a read-only store writes nothing"
    );
    store.close().await;
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_only_file(&dir.path, "flashrack.db");
}

#[tokio::test]
async fn reading_through_a_read_only_store_changes_no_byte_and_registers_no_station() {
    let t = TestStore::new("rack-1").await;
    t.store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    t.store.clone().close().await;
    let before = fs::read(t.path()).unwrap();
    let store = Store::open_read_only(&t.path(), "elsewhere").await.unwrap();
    store.list_runs().await.unwrap();
    store.recent_events(10).await.unwrap();
    store.close().await;
    assert_eq!(fs::read(t.path()).unwrap(), before);
    assert_only_file(t.dir.path(), "flashrack.db");
    let mut conn = raw(&t.path()).await;
    let stations: Vec<String> = sqlx::query_scalar("SELECT id FROM stations")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(stations, ["rack-1"]);
}

#[tokio::test]
async fn a_read_only_store_sees_what_a_live_writer_committed() {
    let t = TestStore::new("rack-1").await;
    t.store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    let store = Store::open_read_only(&t.path(), "rack-1").await.unwrap();
    assert_eq!(store.images().await.unwrap(), [common::image()]);
    store.close().await;
    // The writer carries on.
    t.store.write(|b| Box::pin(b.heartbeat())).await.unwrap();
}

fn assert_only_file(dir: &Path, name: &str) {
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [name], "nothing else may be created next to it");
}

/// Something that cannot be written, even by root, undone on drop. Root ignores
/// permission bits, so as root this is a read-only mount (a tmpfs for directories, a
/// read-only bind mount for a file); otherwise it is a mode without write bits. The
/// tests run both ways and skip neither.
struct ReadOnly {
    path: PathBuf,
    mounted: bool,
    _tmp: TempDir,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap();
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

async fn write_database(path: &Path) {
    let store = Store::open_with_clock(path, "rack-1", Clock::Manual(ManualClock::new(T0)))
        .await
        .unwrap();
    store
        .write(|b| Box::pin(async move { b.record_image(&common::image()).await }))
        .await
        .unwrap();
    store.close().await;
}

impl ReadOnly {
    fn empty_dir() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        fs::create_dir(&path).unwrap();
        let p = path.to_str().unwrap();
        if is_root() {
            run("mount", &["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", p]);
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o555)).unwrap();
        }
        Self {
            path,
            mounted: is_root(),
            _tmp: tmp,
        }
    }

    async fn dir_with_database() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        fs::create_dir(&path).unwrap();
        let p = path.to_str().unwrap().to_string();
        if is_root() {
            run("mount", &["-t", "tmpfs", "-o", "size=16m", "tmpfs", &p]);
        }
        let guard = Self {
            path: path.clone(),
            mounted: is_root(),
            _tmp: tmp,
        };
        write_database(&path.join("flashrack.db")).await;
        if is_root() {
            run("mount", &["-o", "remount,ro", &p]);
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o555)).unwrap();
        }
        guard
    }

    async fn database_file() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flashrack.db");
        write_database(&path).await;
        let p = path.to_str().unwrap();
        if is_root() {
            run("mount", &["--bind", p, p]);
            run("mount", &["-o", "remount,bind,ro", p]);
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
        }
        Self {
            path,
            mounted: is_root(),
            _tmp: tmp,
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            // Lazily: a store's connections may still be closing in the
            // background when the test ends, and a plain umount then fails as
            // busy and leaves the mount behind. A lazy one detaches it at once;
            // the kernel frees it when the last file on it is closed.
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&self.path)
                .status();
        } else {
            let _ = fs::set_permissions(&self.path, fs::Permissions::from_mode(0o755));
        }
    }
}

/// Creates a database at `path` as a build of schema version 10 left it (the
/// files 0001–0010 applied by sqlx's own migrator, foreign keys on), with runs,
/// attempts of every kind such a build recorded and events referencing them.
async fn schema_10_database(path: &Path) {
    let mut conn = database_at_schema(path, 10).await;
    let sha = common::image().sha256.to_hex();
    for sql in [
        "PRAGMA foreign_keys = ON".to_string(),
        "INSERT INTO stations VALUES ('rack-1', 'rack-1', 1, 2)".to_string(),
        format!("INSERT INTO images (sha256, name, size, format, imported_at) VALUES ('{sha}', 'old.img', 100, 'raw', 1)"),
        format!(
            "INSERT INTO runs (id, station_id, image_sha256, image_name, options, started_at,
                               stopped_at, stop_reason)
             VALUES (1, 'rack-1', '{sha}', 'old.img', '{{}}', 1, 2, 'completed')"
        ),
        "INSERT INTO devices VALUES (1, 'OLD1', 'OLD1', NULL, NULL, 1000, 1, 2)".to_string(),
        "INSERT INTO devices VALUES (2, 'OLD2', 'OLD2', 'V', 'M', 1000, 1, 2)".to_string(),
        // A pass read back after a reset, sampled, sparse.
        "INSERT INTO attempts (id, station_id, run_id, device_id, port_label, port_path,
            started_at, finished_at, state, stage, capacity, bytes_written, write_secs,
            bytes_verified, verify_secs, read_back_sha256, verify_method, verified_after_reset,
            bytes_skipped, sample_percent, sample_seed, sample_chunks_checked, sample_chunks_total)
         VALUES (1, 'rack-1', 1, 1, 'A1', 'pci-1', 10, 20, 'passed', 'verifying', 1000, 100, 1.5,
            100, 0.5, NULL, 'sampled', 1, 24, 12.5, '18446744073709551615', 3, 24)"
            .to_string(),
        // What earlier builds recorded for a stick lost in the read-back's reset.
        "INSERT INTO attempts (id, station_id, run_id, device_id, port_label, port_path,
            started_at, finished_at, state, stage, reason_code, reason_detail, failure,
            capacity, bytes_written, bytes_written_bound)
         VALUES (2, 'rack-1', 1, 2, 'A2', 'pci-2', 11, 21, 'failed', 'flushing',
            'lost_after_reset', 'gone', '{\"reason\":\"lost_after_reset\",\"after_secs\":30,\"stage\":\"flushing\"}',
            1000, 100, 'exact')"
            .to_string(),
        // Still running when that build stopped.
        "INSERT INTO attempts (id, station_id, run_id, device_id, port_label, port_path,
            started_at, state, stage, capacity, bytes_written, bytes_written_bound)
         VALUES (3, 'rack-1', 1, 1, 'A1', 'pci-1', 30, 'running', 'writing', 1000, 50, 'lower_bound')"
            .to_string(),
        "INSERT INTO events (id, station_id, at, kind, port_label, device_id, run_id, attempt_id, detail)
         VALUES (1, 'rack-1', 10, 'attempt_started', 'A1', 1, 1, 1, '{}'),
                (2, 'rack-1', 12, 'stage_changed', 'A2', 2, 1, 2, '{\"stage\":\"flushing\"}'),
                (3, 'rack-1', 13, 'port_added', 'A3', NULL, NULL, NULL, '{}'),
                (4, 'rack-1', 30, 'attempt_started', 'A1', 1, 1, 3, '{}')"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

/// Every row of `table`, each as one text of its columns' SQL literals, in id
/// order; and the table's columns (name, type, not null, default, pk).
async fn dump(conn: &mut SqliteConnection, table: &str) -> (Vec<String>, Vec<String>) {
    let columns: Vec<(String, String, bool, Option<String>, i64)> = sqlx::query_as(
        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(!columns.is_empty(), "{table}: no columns");
    let expr = columns
        .iter()
        .map(|c| format!("quote({})", c.0))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT {expr} FROM {table} ORDER BY id"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let columns = columns.into_iter().map(|c| format!("{c:?}")).collect();
    (rows, columns)
}

async fn attempts_indexes(conn: &mut SqliteConnection) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT name, sql FROM sqlite_master
         WHERE type = 'index' AND tbl_name = 'attempts' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_schema_10_database_keeps_every_attempt_and_event_and_then_takes_a_resetting_stage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flashrack.db");
    schema_10_database(&path).await;
    let mut conn = raw(&path).await;
    let attempts_before = dump(&mut conn, "attempts").await;
    let events_before = dump(&mut conn, "events").await;
    let indexes_before = attempts_indexes(&mut conn).await;
    assert_eq!(attempts_before.0.len(), 3);
    assert_eq!(events_before.0.len(), 4);
    assert_eq!(indexes_before.len(), 3);
    // Before the upgrade the records refuse the new stage.
    let refused = sqlx::query("UPDATE attempts SET stage = 'resetting' WHERE id = 2")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("CHECK"), "{refused}");
    conn.close().await.unwrap();

    let store = Store::open_with_clock(&path, "rack-1", Clock::Manual(ManualClock::new(T0)))
        .await
        .unwrap();
    let health = store.health().await.unwrap();
    assert_eq!(health.schema_version, SCHEMA_VERSION);
    assert!(
        health.foreign_keys,
        "foreign keys are on again after the upgrade"
    );
    assert_eq!(health.integrity, "ok");

    let mut conn = raw(&path).await;
    assert_eq!(dump(&mut conn, "attempts").await, attempts_before);
    // Every event kept, and the open's own `station_started` after them.
    let events_after = dump(&mut conn, "events").await;
    assert_eq!(events_after.1, events_before.1);
    assert_eq!(events_after.0[..4], events_before.0[..]);
    assert_eq!(events_after.0.len(), 5);
    assert!(
        events_after.0[4].contains("'station_started'"),
        "{events_after:?}"
    );
    assert_eq!(attempts_indexes(&mut conn).await, indexes_before);
    let dangling: Vec<(String, i64)> =
        sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(dangling, []);
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE name LIKE '%attempts_new%' OR name LIKE 'migration_0011%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(leftovers, Vec::<String>::new());

    // The rebuilt table still holds its constraints: a misspelt stage, an
    // unknown state and a dangling run are refused.
    for bad in [
        "UPDATE attempts SET stage = 'reseting' WHERE id = 2",
        "UPDATE attempts SET state = 'sleeping' WHERE id = 2",
        "UPDATE attempts SET verified_after_reset = 2 WHERE id = 1",
        "UPDATE attempts SET sample_percent = 100 WHERE id = 1",
    ] {
        let error = sqlx::query(bad).execute(&mut conn).await.unwrap_err();
        assert!(error.to_string().contains("CHECK"), "{bad}: {error}");
    }
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut conn)
        .await
        .unwrap();
    let error = sqlx::query("UPDATE attempts SET run_id = 99 WHERE id = 2")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("FOREIGN KEY"), "{error}");

    // And now takes the new stage, which the store reads back.
    sqlx::query(
        "UPDATE attempts SET stage = 'resetting',
            failure = '{\"reason\":\"lost_after_reset\",\"after_secs\":30,\"stage\":\"resetting\"}'
         WHERE id = 2",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let record = store
        .attempt(flashrack_store::AttemptId(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.stage, flashrack_core::Stage::Resetting);
    let report = store
        .run_report(flashrack_store::RunId(1))
        .await
        .unwrap()
        .unwrap();
    let stages: Vec<Option<&str>> = report
        .rows
        .iter()
        .map(|r| r.stage.map(|s| s.as_str()))
        .collect();
    assert_eq!(
        stages,
        [Some("verifying"), Some("resetting"), Some("writing")]
    );
}

#[tokio::test]
async fn a_schema_13_database_takes_its_stopped_runs_words_from_their_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flashrack.db");
    let mut conn = database_at_schema(&path, 13).await;
    let sha = common::image().sha256.to_hex();
    for sql in [
        "PRAGMA foreign_keys = ON".to_string(),
        "INSERT INTO stations VALUES ('rack-1', 'rack-1', 1, 2)".to_string(),
        format!("INSERT INTO images (sha256, name, size, format, imported_at) VALUES ('{sha}', 'os.img', 100, 'raw', 1)"),
        // Stopped for its source, said in its event log; stopped without a
        // word; still open.
        format!(
            "INSERT INTO runs (id, station_id, image_sha256, image_name, options, started_at,
                               stopped_at, stop_reason)
             VALUES (1, 'rack-1', '{sha}', 'os.img', '{{}}', 1, 2, 'source_failed'),
                    (2, 'rack-1', '{sha}', 'os.img', '{{}}', 3, 4, 'completed'),
                    (3, 'rack-1', '{sha}', 'os.img', '{{}}', 5, NULL, NULL)"
        ),
        "INSERT INTO events (id, station_id, at, kind, run_id, detail)
         VALUES (1, 'rack-1', 2, 'run_stopped', 1, '{\"reason\":\"source_failed\"}'),
                (2, 'rack-1', 2, 'operator_action', 1,
                 '{\"action\":\"run_stopped\",\"reason\":\"source_failed\",\"note\":\"the digest did not match\"}'),
                (3, 'rack-1', 4, 'operator_action', 2,
                 '{\"action\":\"run_stopped\",\"reason\":\"completed\",\"note\":null}'),
                (4, 'rack-1', 5, 'operator_action', 3, '{\"action\":\"run_armed\"}')"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let store = Store::open_with_clock(&path, "rack-1", Clock::Manual(ManualClock::new(T0)))
        .await
        .unwrap();
    let detail = |run: i64| {
        let store = store.clone();
        async move {
            store
                .run_report(flashrack_store::RunId(run))
                .await
                .unwrap()
                .unwrap()
                .run
                .run
                .stop_detail
        }
    };
    assert_eq!(detail(1).await.as_deref(), Some("the digest did not match"));
    assert_eq!(detail(2).await, None, "nothing was said");
    assert_eq!(
        detail(3).await,
        None,
        "open at the upgrade: nothing said of it"
    );
}
