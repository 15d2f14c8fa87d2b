//! Figures about what the hub received, for the fleet benchmark's checks
//! (`crates/fleet-bench`): counts, not records.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{sql, HubDb, PgError};

impl HubDb {
    /// Outbox entries received from every station together.
    pub async fn received_count(&self) -> Result<u64, PgError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM received")
            .fetch_one(&self.pool)
            .await
            .map_err(sql("counting received entries"))?;
        Ok(count.max(0) as u64)
    }

    /// How many entries `station` sent were received, and the highest
    /// sequence number among them (0 for none): equal when none is missing.
    pub async fn received_of(&self, station: &str) -> Result<(u64, u64), PgError> {
        let row = sqlx::query(
            "SELECT count(*) AS n, coalesce(max(seq), 0) AS top FROM received WHERE station_id = $1",
        )
        .bind(station)
        .fetch_one(&self.pool)
        .await
        .map_err(sql("counting a station's entries"))?;
        Ok((
            row.get::<i64, _>("n").max(0) as u64,
            row.get::<i64, _>("top").max(0) as u64,
        ))
    }

    /// Every station's highest acknowledged sequence number.
    pub async fn acked_through_all(&self) -> Result<BTreeMap<String, u64>, PgError> {
        let rows = sqlx::query("SELECT id, acked_through FROM stations")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("reading acknowledgements"))?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<String, _>("id"),
                    row.get::<i64, _>("acked_through").max(0) as u64,
                )
            })
            .collect())
    }
}
