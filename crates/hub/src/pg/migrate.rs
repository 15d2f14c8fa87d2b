//! The hub's schema migrations (`migrations/postgres/`), embedded in the
//! binary as a list of `include_str!` (as the station's store does, without
//! sqlx's `macros` feature). A test checks the list against the directory.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// Every migration, in order: version, description, SQL. Append-only.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "hub records",
        include_str!("../../../../migrations/postgres/0001_hub_records.sql"),
    ),
    (
        2,
        "live",
        include_str!("../../../../migrations/postgres/0002_live.sql"),
    ),
    (
        3,
        "orders",
        include_str!("../../../../migrations/postgres/0003_orders.sql"),
    ),
    (
        4,
        "image provenance and removal",
        include_str!("../../../../migrations/postgres/0004_image_provenance_and_removal.sql"),
    ),
    (
        5,
        "run stop detail",
        include_str!("../../../../migrations/postgres/0005_run_stop_detail.sql"),
    ),
    (
        6,
        "received at",
        include_str!("../../../../migrations/postgres/0006_received_at.sql"),
    ),
    (
        7,
        "live instance",
        include_str!("../../../../migrations/postgres/0007_live_instance.sql"),
    ),
    (
        8,
        "records refusal",
        include_str!("../../../../migrations/postgres/0008_records_refusal.sql"),
    ),
];

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
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres");
        let mut on_disk: Vec<(i64, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .map(|path| {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                let (number, _) = name.split_once('_').unwrap();
                (
                    number.parse().unwrap(),
                    std::fs::read_to_string(&path).unwrap(),
                )
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(i64, String)> = MIGRATIONS
            .iter()
            .map(|&(v, _, sql)| (v, sql.to_string()))
            .collect();
        assert_eq!(embedded, on_disk);
    }
}
