//! A station's batch of outbox entries, applied in one transaction.
//!
//! Idempotent by (station, seq): `received` remembers every entry taken, and
//! only entries it did not hold yet are applied. Every row is an upsert that
//! replaces the stored version only with one of a higher `seq`, so batches
//! applied out of order leave each row at its newest version, and events are
//! inserted once. Concurrent batches of one station (two hub processes, a
//! retry racing its original) are serialized by a lock on the station's row.

use std::collections::HashSet;

use flashrack_fleet::{
    AttemptRecord, BatchAck, DeviceRecord, EventRecord, FleetRecord, ImageRecord, RecordBatch,
    RefusalRecord, RunRecord, ORDER_ID_OPTION,
};
use sqlx::{PgConnection, Postgres, Transaction};

use super::{enum_text, sql, HubDb, PgError, CHANNEL};

/// The most entries one batch may hold.
pub const MAX_BATCH_ENTRIES: usize = 10_000;

/// A size or count as PostgreSQL's bigint.
fn big(what: &str, value: u64) -> Result<i64, PgError> {
    i64::try_from(value).map_err(|_| PgError::Invalid(format!("{what} {value} is out of range")))
}

impl HubDb {
    /// Applies `batch` from `station` (the id its token belongs to) and
    /// acknowledges it. The batch must be well formed (see
    /// [`check_batch`]); its entries that the hub already holds count as
    /// duplicates and change nothing. A change wakes every hub process
    /// (`NOTIFY`) once the transaction commits.
    pub async fn ingest(&self, station: &str, batch: &RecordBatch) -> Result<BatchAck, PgError> {
        check_batch(batch)?;
        let Some(last) = batch.entries.last() else {
            return Ok(BatchAck {
                acked_through: 0,
                applied: 0,
                duplicates: 0,
            });
        };
        let acked_through = big("seq", last.seq)?;
        let backlog = big("backlog", batch.backlog)?;
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
        sqlx::query("SELECT 1 FROM stations WHERE id = $1 FOR UPDATE")
            .bind(station)
            .execute(&mut *tx)
            .await
            .map_err(sql("locking a station"))?;
        let mut seqs = Vec::with_capacity(batch.entries.len());
        let mut kinds = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            seqs.push(big("seq", entry.seq)?);
            kinds.push(entry.record.kind());
        }
        let new: HashSet<i64> = sqlx::query_scalar(
            "INSERT INTO received (station_id, seq, kind)
             SELECT $1, s, k FROM unnest($2::bigint[], $3::text[]) AS u (s, k)
             ON CONFLICT (station_id, seq) DO NOTHING
             RETURNING seq",
        )
        .bind(station)
        .bind(&seqs)
        .bind(&kinds)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("recording received entries"))?
        .into_iter()
        .collect();
        for (entry, seq) in batch.entries.iter().zip(&seqs) {
            if new.contains(seq) {
                apply(&mut tx, station, *seq, &entry.record).await?;
            }
        }
        // A batch older than one already taken (reordered) does not set the
        // backlog back.
        sqlx::query(
            "UPDATE stations SET
                backlog = CASE WHEN $2 >= acked_through THEN $3 ELSE backlog END,
                acked_through = GREATEST(acked_through, $2),
                last_batch_at = now()
             WHERE id = $1",
        )
        .bind(station)
        .bind(acked_through)
        .bind(backlog)
        .execute(&mut *tx)
        .await
        .map_err(sql("updating a station"))?;
        if !new.is_empty() {
            notify(&mut tx, "records", station).await?;
        }
        tx.commit().await.map_err(sql("committing a batch"))?;
        let applied = new.len() as u64;
        Ok(BatchAck {
            acked_through: last.seq,
            applied,
            duplicates: batch.entries.len() as u64 - applied,
        })
    }
}

/// Refuses a batch the hub cannot take: another protocol version, too many
/// entries, sequence numbers not increasing or out of range.
pub fn check_batch(batch: &RecordBatch) -> Result<(), PgError> {
    if batch.protocol != flashrack_fleet::PROTOCOL_VERSION {
        return Err(PgError::Invalid(format!(
            "protocol version {} is not spoken here (the hub speaks {})",
            batch.protocol,
            flashrack_fleet::PROTOCOL_VERSION
        )));
    }
    if batch.entries.len() > MAX_BATCH_ENTRIES {
        return Err(PgError::Invalid(format!(
            "a batch holds at most {MAX_BATCH_ENTRIES} entries, not {}",
            batch.entries.len()
        )));
    }
    let mut previous = 0;
    for entry in &batch.entries {
        if entry.seq <= previous || entry.seq > i64::MAX as u64 {
            return Err(PgError::Invalid(format!(
                "sequence numbers must be increasing and positive: {} after {previous}",
                entry.seq
            )));
        }
        previous = entry.seq;
    }
    Ok(())
}

/// Sends a change notice on [`CHANNEL`], delivered when `tx` commits:
/// `{"kind": …, "station": …}`.
pub(crate) async fn notify(
    tx: &mut PgConnection,
    kind: &str,
    station: &str,
) -> Result<(), PgError> {
    let payload = serde_json::json!({ "kind": kind, "station": station }).to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(tx)
        .await
        .map_err(sql("notifying"))?;
    Ok(())
}

/// Upserts one record under `seq`.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    record: &FleetRecord,
) -> Result<(), PgError> {
    match record {
        FleetRecord::Image(r) => image(tx, station, seq, r).await,
        FleetRecord::Device(r) => device(tx, station, seq, r).await,
        FleetRecord::Run(r) => run(tx, station, seq, r).await,
        FleetRecord::Attempt(r) => attempt(tx, station, seq, r).await,
        FleetRecord::Refusal(r) => refusal(tx, station, seq, r).await,
        FleetRecord::Event(r) => event(tx, station, seq, r).await,
    }
}

async fn image(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &ImageRecord,
) -> Result<(), PgError> {
    sqlx::query(
        "INSERT INTO station_images (station_id, sha256, name, size, format, imported_at, seq)
         VALUES ($1, $2, $3, $4, $5, ms_to_ts($6), $7)
         ON CONFLICT (station_id, sha256) DO UPDATE SET
            name = EXCLUDED.name, size = EXCLUDED.size, format = EXCLUDED.format,
            imported_at = EXCLUDED.imported_at, seq = EXCLUDED.seq
         WHERE station_images.seq < EXCLUDED.seq",
    )
    .bind(station)
    .bind(r.sha256.to_hex())
    .bind(&r.name)
    .bind(big("image size", r.size)?)
    .bind(&r.format)
    .bind(r.imported_at)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing an image"))?;
    Ok(())
}

async fn device(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &DeviceRecord,
) -> Result<(), PgError> {
    sqlx::query(
        "INSERT INTO devices (station_id, key, serial, vendor, model, capacity,
                              first_seen, last_seen, seq)
         VALUES ($1, $2, $3, $4, $5, $6, ms_to_ts($7), ms_to_ts($8), $9)
         ON CONFLICT (station_id, key) DO UPDATE SET
            serial = EXCLUDED.serial, vendor = EXCLUDED.vendor, model = EXCLUDED.model,
            capacity = EXCLUDED.capacity, first_seen = EXCLUDED.first_seen,
            last_seen = EXCLUDED.last_seen, seq = EXCLUDED.seq
         WHERE devices.seq < EXCLUDED.seq",
    )
    .bind(station)
    .bind(&r.key)
    .bind(&r.serial)
    .bind(&r.vendor)
    .bind(&r.model)
    .bind(big("capacity", r.capacity)?)
    .bind(r.first_seen)
    .bind(r.last_seen)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing a device"))?;
    Ok(())
}

async fn run(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &RunRecord,
) -> Result<(), PgError> {
    let order_id = r.options.get(ORDER_ID_OPTION).and_then(|v| v.as_i64());
    sqlx::query(
        "INSERT INTO runs (station_id, id, image_sha256, image_name, options, order_id,
                           started_at, stopped_at, stop_reason, seq)
         VALUES ($1, $2, $3, $4, $5, $6, ms_to_ts($7), ms_to_ts($8), $9, $10)
         ON CONFLICT (station_id, id) DO UPDATE SET
            image_sha256 = EXCLUDED.image_sha256, image_name = EXCLUDED.image_name,
            options = EXCLUDED.options, order_id = EXCLUDED.order_id,
            started_at = EXCLUDED.started_at, stopped_at = EXCLUDED.stopped_at,
            stop_reason = EXCLUDED.stop_reason, seq = EXCLUDED.seq
         WHERE runs.seq < EXCLUDED.seq",
    )
    .bind(station)
    .bind(r.id.0)
    .bind(r.image_sha256.to_hex())
    .bind(&r.image_name)
    .bind(&r.options)
    .bind(order_id)
    .bind(r.started_at)
    .bind(r.stopped_at)
    .bind(r.stop_reason.as_ref().map(enum_text))
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing a run"))?;
    Ok(())
}

async fn attempt(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &AttemptRecord,
) -> Result<(), PgError> {
    let verdict = r
        .verdict
        .as_ref()
        .map(|v| serde_json::to_value(v).unwrap_or_default());
    let figures = serde_json::to_value(&r.figures).unwrap_or_default();
    sqlx::query(
        "INSERT INTO attempts (station_id, id, run_id, device_key, port_label, port_path,
                               started_at, finished_at, state, stage, verdict,
                               reason_detail, figures, seq)
         VALUES ($1, $2, $3, $4, $5, $6, ms_to_ts($7), ms_to_ts($8), $9, $10, $11,
                 $12, $13, $14)
         ON CONFLICT (station_id, id) DO UPDATE SET
            run_id = EXCLUDED.run_id, device_key = EXCLUDED.device_key,
            port_label = EXCLUDED.port_label, port_path = EXCLUDED.port_path,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            state = EXCLUDED.state, stage = EXCLUDED.stage, verdict = EXCLUDED.verdict,
            reason_detail = EXCLUDED.reason_detail, figures = EXCLUDED.figures,
            seq = EXCLUDED.seq
         WHERE attempts.seq < EXCLUDED.seq",
    )
    .bind(station)
    .bind(r.id.0)
    .bind(r.run_id.0)
    .bind(&r.device_key)
    .bind(&r.port_label)
    .bind(&r.port_path)
    .bind(r.started_at)
    .bind(r.finished_at)
    .bind(enum_text(&r.state))
    .bind(enum_text(&r.stage))
    .bind(verdict)
    .bind(&r.reason_detail)
    .bind(figures)
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing an attempt"))?;
    Ok(())
}

async fn refusal(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &RefusalRecord,
) -> Result<(), PgError> {
    sqlx::query(
        "INSERT INTO refusals (station_id, id, at, run_id, device_key, port_label, port_path,
                               capacity, refusal, seq)
         VALUES ($1, $2, ms_to_ts($3), $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (station_id, id) DO UPDATE SET
            at = EXCLUDED.at, run_id = EXCLUDED.run_id, device_key = EXCLUDED.device_key,
            port_label = EXCLUDED.port_label, port_path = EXCLUDED.port_path,
            capacity = EXCLUDED.capacity, refusal = EXCLUDED.refusal, seq = EXCLUDED.seq
         WHERE refusals.seq < EXCLUDED.seq",
    )
    .bind(station)
    .bind(r.id.0)
    .bind(r.at)
    .bind(r.run_id.map(|id| id.0))
    .bind(&r.device_key)
    .bind(&r.port_label)
    .bind(&r.port_path)
    .bind(big("capacity", r.capacity)?)
    .bind(serde_json::to_value(&r.refusal).unwrap_or_default())
    .bind(seq)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing a refusal"))?;
    Ok(())
}

async fn event(
    tx: &mut Transaction<'_, Postgres>,
    station: &str,
    seq: i64,
    r: &EventRecord,
) -> Result<(), PgError> {
    sqlx::query(
        "INSERT INTO events (station_id, id, seq, at, kind, port_label, device_key, run_id,
                             attempt_id, detail)
         VALUES ($1, $2, $3, ms_to_ts($4), $5, $6, $7, $8, $9, $10)
         ON CONFLICT (station_id, id) DO NOTHING",
    )
    .bind(station)
    .bind(r.id)
    .bind(seq)
    .bind(r.at)
    .bind(&r.kind)
    .bind(&r.port_label)
    .bind(&r.device_key)
    .bind(r.run_id.map(|id| id.0))
    .bind(r.attempt_id.map(|id| id.0))
    .bind(&r.detail)
    .execute(&mut **tx)
    .await
    .map_err(sql("storing an event"))?;
    Ok(())
}
