//! The schema migrations, embedded in the binary.
//!
//! `sqlx::migrate!` would embed them too, but it needs sqlx's `macros` feature, which
//! builds a second copy of sqlx and SQLite for the compiler; a list of `include_str!`
//! costs nothing and yields the same [`Migrator`] (same versions, descriptions and
//! checksums, so the `sqlx` command-line tool sees the same history). A test checks
//! that the list matches the files in `migrations/`.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// Every migration, in order: version, description, SQL. Append-only, like the
/// directory: a new file `migrations/NNNN_description.sql` gets a new line here.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "refusals and written bounds",
        include_str!("../../../../migrations/0002_refusals_and_written_bounds.sql"),
    ),
    (
        3,
        "fleet outbox",
        include_str!("../../../../migrations/0003_fleet_outbox.sql"),
    ),
    (
        4,
        "image sources",
        include_str!("../../../../migrations/0004_image_sources.sql"),
    ),
    (
        5,
        "image inspection",
        include_str!("../../../../migrations/0005_image_inspection.sql"),
    ),
    (
        6,
        "image provenance",
        include_str!("../../../../migrations/0006_image_provenance.sql"),
    ),
    (
        7,
        "fleet orders",
        include_str!("../../../../migrations/0007_fleet_orders.sql"),
    ),
    (
        8,
        "verified after reset",
        include_str!("../../../../migrations/0008_verified_after_reset.sql"),
    ),
    (
        9,
        "sparse coverage",
        include_str!("../../../../migrations/0009_sparse_coverage.sql"),
    ),
    (
        10,
        "verify sample",
        include_str!("../../../../migrations/0010_verify_sample.sql"),
    ),
    (
        11,
        "resetting stage",
        include_str!("../../../../migrations/0011_resetting_stage.sql"),
    ),
    (
        12,
        "bootable builds",
        include_str!("../../../../migrations/0012_bootable_builds.sql"),
    ),
    (
        13,
        "url imports",
        include_str!("../../../../migrations/0013_url_imports.sql"),
    ),
    (
        14,
        "run stop detail",
        include_str!("../../../../migrations/0014_run_stop_detail.sql"),
    ),
    (
        15,
        "url import run",
        include_str!("../../../../migrations/0015_url_import_run.sql"),
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The embedded migrations as a source for sqlx's migrator.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The migrator for the embedded migrations.
pub(crate) async fn migrator() -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_matches_the_migrations_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        // Subdirectories hold other backends' migrations (`postgres/`: the
        // fleet hub's), not this store's.
        let mut on_disk: Vec<(i64, String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| !path.is_dir())
            .map(|path| {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                let stem = name
                    .strip_suffix(".sql")
                    .unwrap_or_else(|| panic!("{name}: not a .sql file"));
                let (version, description) = stem
                    .split_once('_')
                    .unwrap_or_else(|| panic!("{name}: expected NNNN_description.sql"));
                let sql = std::fs::read_to_string(&path).unwrap();
                (version.parse().unwrap(), description.replace('_', " "), sql)
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(i64, String, String)> = MIGRATIONS
            .iter()
            .map(|&(v, d, s)| (v, d.to_string(), s.to_string()))
            .collect();
        assert_eq!(embedded, on_disk);
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}
