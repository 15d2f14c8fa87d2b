//! Live state: each station's latest report, and what the hub shows of a
//! station (its status, backlog, counters) read back by id.

use flashrack_fleet::{LiveReport, OrderProgress};
use serde::Serialize;
use sqlx::Row;

use super::ingest::notify;
use super::{json_from, sql, HubDb, PgError};

/// How a station stands with the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StationStatus {
    /// Heard from lately, nothing left to ship.
    Connected,
    /// Heard from lately, with records still to ship (its backlog).
    Behind,
    /// Not heard from for longer than the hub's `silent_after`: its live view
    /// is stale.
    Silent,
    /// Known (a token, an order) but never heard from.
    Unseen,
}

/// A station's status at `now` (all times in unix milliseconds): silent
/// when its last report or batch is older than `silent_after_ms`.
pub fn status_of(
    now: i64,
    last_seen: Option<i64>,
    backlog: u64,
    silent_after_ms: i64,
) -> StationStatus {
    match last_seen {
        None => StationStatus::Unseen,
        Some(seen) if now - seen > silent_after_ms => StationStatus::Silent,
        Some(_) if backlog > 0 => StationStatus::Behind,
        Some(_) => StationStatus::Connected,
    }
}

/// A station's records by state, all its runs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StationCounts {
    /// Attempts.
    pub attempts: u64,
    /// Passed.
    pub passed: u64,
    /// Failed (the stick), not counting refusals at opening.
    pub failed: u64,
    /// Refused by the guard (before an attempt, or at opening).
    pub refused: u64,
    /// Interrupted.
    pub interrupted: u64,
    /// Running.
    pub running: u64,
}

/// What the hub shows of a station.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StationView {
    /// Its id.
    pub id: String,
    /// Its status when read (see [`status_of`]).
    pub status: StationStatus,
    /// When the hub last heard from it (a live report or a batch), by the
    /// database's clock.
    pub last_seen: Option<i64>,
    /// Outbox entries it had not shipped yet, as it said most recently.
    pub backlog: u64,
    /// The highest sequence number the hub acknowledged to it.
    pub acked_through: u64,
    /// Its latest snapshot (ports, run), as the station's own API serves it.
    pub snapshot: Option<serde_json::Value>,
    /// When the station made that snapshot, by its clock.
    pub snapshot_sent_at: Option<i64>,
    /// Increases with every live report.
    pub live_version: i64,
    /// The order it follows and how far it got.
    pub order: Option<OrderProgress>,
    /// Why the hub refused its last batch of records, while it takes none
    /// (the station keeps them in its outbox): it would otherwise show only
    /// "behind", its records never arriving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_refused: Option<String>,
    /// Whether it holds no station token any more (every one revoked): it
    /// cannot report or ship, and is shown so rather than as "silent".
    pub token_revoked: bool,
    /// Its records by state.
    pub counts: StationCounts,
    /// The database's clock when this was read.
    pub read_at: i64,
}

impl HubDb {
    /// Stores `report` as `station`'s live state (replacing the one before)
    /// and wakes every hub process.
    ///
    /// The live view of a station is one instance's
    /// ([`LiveReport::instance`]): while the instance held reports (heard
    /// from within `silent_after_ms`), a report from another instance of the
    /// same station id is refused ([`PgError::Conflict`]) and changes
    /// nothing. A silent holder, or one that named no instance (a station
    /// older than the field), is replaced.
    pub async fn record_live(
        &self,
        station: &str,
        report: &LiveReport,
        silent_after_ms: i64,
    ) -> Result<(), PgError> {
        let backlog = i64::try_from(report.backlog)
            .map_err(|_| PgError::Invalid(format!("backlog {} is out of range", report.backlog)))?;
        if !super::ingest::storable_time(report.sent_at) {
            return Err(PgError::Invalid(format!(
                "sent_at {} (unix milliseconds) is not in the years 0 to 9999",
                report.sent_at
            )));
        }
        if let Some(instance) = report.instance.as_deref() {
            if !super::tokens::valid_name(instance) {
                return Err(PgError::Invalid(format!(
                    "instance {:?} is not an instance id: 1-64 letters, digits, '-', '_' or '.'",
                    instance.chars().take(80).collect::<String>()
                )));
            }
        }
        check_snapshot(&report.snapshot).map_err(|why| {
            PgError::Invalid(format!("the report's snapshot is not a station's: {why}"))
        })?;
        let order_nul = report.order.as_ref().and_then(|o| o.detail.as_deref());
        if super::ingest::holds_nul(&report.snapshot) || order_nul.is_some_and(|d| d.contains('\0'))
        {
            return Err(PgError::Invalid(
                "a text of the report holds a NUL character (\\u0000), which the hub cannot store"
                    .to_string(),
            ));
        }
        let order = report
            .order
            .as_ref()
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("opening a transaction"))?;
        sqlx::query("INSERT INTO stations (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
            .bind(station)
            .execute(&mut *tx)
            .await
            .map_err(sql("adding a station"))?;
        // The station's row locked: two instances' first reports, or two
        // hub processes taking them, are judged one after the other.
        sqlx::query("SELECT 1 FROM stations WHERE id = $1 FOR UPDATE")
            .bind(station)
            .execute(&mut *tx)
            .await
            .map_err(sql("locking a station"))?;
        if let Some((Some(holder), heard_ms)) = live_holder(&mut tx, station).await? {
            let other = report.instance.as_deref() != Some(holder.as_str());
            if other && heard_ms <= silent_after_ms {
                return Err(PgError::Conflict(format!(
                    "station {station:?} reports live from another instance ({}, heard from \
                     {:.1} s ago), not this one ({}): another station uses the station_id \
                     {station:?}; give each station a station_id of its own, with a token \
                     made for it",
                    short_instance(&holder),
                    heard_ms.max(0) as f64 / 1000.0,
                    report
                        .instance
                        .as_deref()
                        .map_or_else(|| "one without a name".to_string(), short_instance),
                )));
            }
        }
        sqlx::query(
            "INSERT INTO live (station_id, snapshot, sent_at, received_at, backlog,
                               order_progress, version, instance)
             VALUES ($1, $2, ms_to_ts($3), now(), $4, $5, 1, $6)
             ON CONFLICT (station_id) DO UPDATE SET
                snapshot = EXCLUDED.snapshot, sent_at = EXCLUDED.sent_at,
                received_at = EXCLUDED.received_at, backlog = EXCLUDED.backlog,
                order_progress = EXCLUDED.order_progress, version = live.version + 1,
                instance = EXCLUDED.instance",
        )
        .bind(station)
        .bind(&report.snapshot)
        .bind(report.sent_at)
        .bind(backlog)
        .bind(order)
        .bind(report.instance.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(sql("storing a live report"))?;
        notify(&mut tx, "live", station).await?;
        tx.commit().await.map_err(sql("committing a live report"))?;
        Ok(())
    }

    /// Every station's view (or only `station`'s), by id; `silent_after_ms`
    /// decides their status.
    pub async fn station_views(
        &self,
        station: Option<&str>,
        silent_after_ms: i64,
    ) -> Result<Vec<StationView>, PgError> {
        let rows = sqlx::query(
            "WITH a AS (
                SELECT station_id,
                       count(*) AS attempts,
                       count(*) FILTER (WHERE state = 'passed') AS passed,
                       count(*) FILTER (WHERE state = 'failed'
                                        AND verdict->>'reason' IS DISTINCT FROM 'refused') AS failed,
                       count(*) FILTER (WHERE state = 'failed'
                                        AND verdict->>'reason' = 'refused') AS refused_at_open,
                       count(*) FILTER (WHERE state = 'interrupted') AS interrupted,
                       count(*) FILTER (WHERE state = 'running') AS running
                FROM attempts WHERE $1::text IS NULL OR station_id = $1
                GROUP BY station_id),
             r AS (
                SELECT station_id, count(*) AS refused FROM refusals
                WHERE $1::text IS NULL OR station_id = $1
                GROUP BY station_id)
             SELECT s.id, s.acked_through,
                    ts_to_ms(GREATEST(s.last_batch_at, l.received_at)) AS last_seen,
                    CASE WHEN l.received_at IS NOT NULL
                              AND (s.last_batch_at IS NULL OR l.received_at >= s.last_batch_at)
                         THEN l.backlog ELSE s.backlog END AS backlog,
                    l.snapshot, ts_to_ms(l.sent_at) AS sent_at,
                    coalesce(l.version, 0) AS version, l.order_progress,
                    coalesce(a.attempts, 0) AS attempts, coalesce(a.passed, 0) AS passed,
                    coalesce(a.failed, 0) AS failed,
                    coalesce(a.refused_at_open, 0) + coalesce(r.refused, 0) AS refused,
                    coalesce(a.interrupted, 0) AS interrupted,
                    coalesce(a.running, 0) AS running,
                    s.records_refused,
                    NOT EXISTS (SELECT 1 FROM tokens t
                                WHERE t.role = 'station' AND t.name = s.id
                                  AND t.revoked_at IS NULL) AS token_revoked,
                    ts_to_ms(now()) AS now
             FROM stations s
             LEFT JOIN live l ON l.station_id = s.id
             LEFT JOIN a ON a.station_id = s.id
             LEFT JOIN r ON r.station_id = s.id
             WHERE $1::text IS NULL OR s.id = $1
             ORDER BY s.id",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("reading stations"))?;
        let count = |row: &sqlx::postgres::PgRow, name: &str| row.get::<i64, _>(name).max(0) as u64;
        rows.iter()
            .map(|row| {
                let now: i64 = row.get("now");
                let last_seen: Option<i64> = row.get("last_seen");
                let backlog = count(row, "backlog");
                Ok(StationView {
                    id: row.get("id"),
                    status: status_of(now, last_seen, backlog, silent_after_ms),
                    last_seen,
                    backlog,
                    acked_through: count(row, "acked_through"),
                    snapshot: row.get("snapshot"),
                    snapshot_sent_at: row.get("sent_at"),
                    live_version: row.get("version"),
                    order: row
                        .get::<Option<serde_json::Value>, _>("order_progress")
                        .map(|v| json_from("order progress", v))
                        .transpose()?,
                    records_refused: row.get("records_refused"),
                    token_revoked: row.get("token_revoked"),
                    counts: StationCounts {
                        attempts: count(row, "attempts"),
                        passed: count(row, "passed"),
                        failed: count(row, "failed"),
                        refused: count(row, "refused"),
                        interrupted: count(row, "interrupted"),
                        running: count(row, "running"),
                    },
                    read_at: now,
                })
            })
            .collect()
    }
}

/// Whether `snapshot` has the shape every dashboard draws a station's rack
/// from: an object whose `ports` are objects each with a text `label` and
/// `state`, and whose `run`, if any, is an object or null. Anything else
/// (`"ports": "garbage"`) was stored and broke the hub's dashboard for every
/// station until the next report.
fn check_snapshot(snapshot: &serde_json::Value) -> Result<(), String> {
    let ports = snapshot
        .get("ports")
        .and_then(|p| p.as_array())
        .ok_or("it has no list of ports")?;
    for port in ports {
        let text = |key: &str| port.get(key).is_some_and(serde_json::Value::is_string);
        if !(text("label") && text("state")) {
            return Err("a port without a text label and state".into());
        }
    }
    match snapshot.get("run") {
        None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => Ok(()),
        Some(_) => Err("its run is not an object".into()),
    }
}

/// The instance that holds `station`'s live view (`None` inside for a
/// holder that named none) and how long ago the hub heard from it, in
/// milliseconds; `None` before any live report. Read in `tx`, the station's
/// row locked.
pub(super) async fn live_holder(
    tx: &mut sqlx::PgConnection,
    station: &str,
) -> Result<Option<(Option<String>, i64)>, PgError> {
    sqlx::query_as(
        "SELECT instance, ts_to_ms(now()) - ts_to_ms(received_at) FROM live
         WHERE station_id = $1",
    )
    .bind(station)
    .fetch_optional(tx)
    .await
    .map_err(sql("reading a station's live instance"))
}

/// An instance id as the hub's words show it: its first 12 characters,
/// enough to tell two apart (a station's is 32 hex digits).
pub(super) fn short_instance(instance: &str) -> String {
    let short: String = instance.chars().take(12).collect();
    if instance.chars().count() > 12 {
        format!("instance {short}…")
    } else {
        format!("instance {short}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_station_is_silent_once_not_heard_from_for_longer_than_the_threshold() {
        assert_eq!(status_of(10_000, None, 0, 5_000), StationStatus::Unseen);
        assert_eq!(
            status_of(10_000, Some(5_000), 0, 5_000),
            StationStatus::Connected
        );
        assert_eq!(
            status_of(10_000, Some(4_999), 0, 5_000),
            StationStatus::Silent
        );
        assert_eq!(
            status_of(10_000, Some(9_000), 3, 5_000),
            StationStatus::Behind
        );
        assert_eq!(
            status_of(10_000, Some(1_000), 3, 5_000),
            StationStatus::Silent
        );
    }
}
