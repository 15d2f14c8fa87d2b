//! A station's batch of outbox entries, applied in one transaction.
//!
//! Idempotent by (station, seq): `received` remembers every entry taken, and
//! only entries it did not hold yet are applied. Every row is an upsert that
//! replaces the stored version only with one of a higher `seq`, so batches
//! applied out of order leave each row at its newest version, and events are
//! inserted once. Concurrent batches of one station (two hub processes, a
//! retry racing its original) are serialized by a lock on the station's row.
//!
//! **One statement per kind.** A batch's new rows are applied kind by kind,
//! each kind in one `INSERT … SELECT … FROM unnest(…) ON CONFLICT …`
//! (columns bound as arrays), not one statement per record: a statement
//! costs a round trip and a plan, and a batch holds up to
//! [`MAX_BATCH_ENTRIES`]. One statement may not update the same row twice,
//! so a row that appears several times in a batch (an attempt's start,
//! stages and verdict) is sent once, in its newest version (its highest
//! `seq`), which is what applying the versions in order would leave; an
//! event, inserted once, keeps its first. The seq guard still decides
//! against what an earlier batch stored.

use std::collections::{HashMap, HashSet};

use flashrack_fleet::{
    AttemptRecord, BatchAck, DeviceRecord, EventRecord, FleetRecord, ImageRecord, RecordBatch,
    RefusalRecord, RunRecord, ORDER_ID_OPTION,
};
use sqlx::PgConnection;

use super::{enum_text, sql, HubDb, PgError, CHANNEL};

/// The most entries one batch may hold.
pub const MAX_BATCH_ENTRIES: usize = 10_000;

/// A size or count as PostgreSQL's bigint.
fn big(what: &str, value: u64) -> Result<i64, PgError> {
    i64::try_from(value).map_err(|_| PgError::Invalid(format!("{what} {value} is out of range")))
}

impl HubDb {
    /// Keeps why a batch of `station`'s records was refused (shown with
    /// the station until a batch is taken). Best effort.
    pub async fn note_records_refused(&self, station: &str, reason: &str) {
        let noted = sqlx::query(
            "UPDATE stations SET records_refused = $2, records_refused_at = now() WHERE id = $1",
        )
        .bind(station)
        .bind(reason)
        .execute(&self.pool)
        .await;
        if let Err(error) = noted {
            tracing::warn!(%error, station, "cannot note a refused batch");
        }
    }

    /// Applies `batch` from `station` (the id its token belongs to) and
    /// acknowledges it. The batch must be well formed (see
    /// [`check_batch`]); its entries that the hub already holds count as
    /// duplicates and change nothing. A change wakes every hub process
    /// (`NOTIFY`) once the transaction commits.
    pub async fn ingest(
        &self,
        station: &str,
        batch: &RecordBatch,
        silent_after_ms: i64,
    ) -> Result<BatchAck, PgError> {
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
        // Records come from the instance that holds the station's live view,
        // as its live reports do: a copy of the station's data directory
        // started beside it (another instance) shipped its own history under
        // the same sequence numbers first, and the station's own was refused
        // for good.
        if let Some(instance) = batch.instance.as_deref() {
            let held = super::live::live_holder(&mut tx, station).await?;
            if let Some((Some(holder), heard_ms)) = held {
                if holder != instance && heard_ms <= silent_after_ms {
                    return Err(PgError::Conflict(format!(
                        "station {station:?} reports live from another instance ({}, heard from \
                         {:.1} s ago), not this one ({}): its records are refused, so that \
                         they never mix into that station's history; another station uses \
                         the station_id {station:?} (a copy of its data directory?): give \
                         each station a station_id of its own, with a token made for it",
                        super::live::short_instance(&holder),
                        heard_ms.max(0) as f64 / 1000.0,
                        super::live::short_instance(instance),
                    )));
                }
            }
        }
        let mut seqs = Vec::with_capacity(batch.entries.len());
        let mut kinds = Vec::with_capacity(batch.entries.len());
        let mut ats = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            seqs.push(big("seq", entry.seq)?);
            kinds.push(entry.record.kind());
            ats.push(entry.at);
        }
        let new: HashSet<i64> = sqlx::query_scalar(
            "INSERT INTO received (station_id, seq, kind, at)
             SELECT $1, s, k, a FROM unnest($2::bigint[], $3::text[], $4::bigint[]) AS u (s, k, a)
             ON CONFLICT (station_id, seq) DO NOTHING
             RETURNING seq",
        )
        .bind(station)
        .bind(&seqs)
        .bind(&kinds)
        .bind(&ats)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("recording received entries"))?
        .into_iter()
        .collect();
        if new.len() < seqs.len() {
            refuse_another_history(&mut tx, station, &seqs, &kinds, &ats).await?;
        }
        let rows = Rows::of(
            batch
                .entries
                .iter()
                .zip(&seqs)
                .filter(|(_, seq)| new.contains(seq))
                .map(|(entry, seq)| (*seq, &entry.record)),
        );
        rows.apply(&mut tx, station).await?;
        // A batch older than one already taken (reordered) does not set the
        // backlog back.
        sqlx::query(
            "UPDATE stations SET
                backlog = CASE WHEN $2 >= acked_through THEN $3 ELSE backlog END,
                acked_through = GREATEST(acked_through, $2),
                last_batch_at = now(),
                records_refused = NULL, records_refused_at = NULL
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

/// Refuses (rolling the batch back) entries the hub already holds under the
/// same (station, seq) with another kind or another time: not a replay, but
/// another history under this station id (a second station configured with
/// it, or this station's records started afresh). Counted as duplicates,
/// they would be acknowledged and the station would mark them shipped:
/// lost, silently. Entries received before their time was kept (`at` NULL)
/// are compared by kind alone.
async fn refuse_another_history(
    tx: &mut PgConnection,
    station: &str,
    seqs: &[i64],
    kinds: &[&str],
    ats: &[i64],
) -> Result<(), PgError> {
    let clash: Option<(i64, String, Option<i64>, String, i64)> = sqlx::query_as(
        "SELECT r.seq, r.kind, r.at, u.k, u.a
         FROM received r
         JOIN unnest($2::bigint[], $3::text[], $4::bigint[]) AS u (s, k, a) ON r.seq = u.s
         WHERE r.station_id = $1 AND (r.kind <> u.k OR r.at <> u.a)
         ORDER BY r.seq
         LIMIT 1",
    )
    .bind(station)
    .bind(seqs)
    .bind(kinds)
    .bind(ats)
    .fetch_optional(&mut *tx)
    .await
    .map_err(sql("comparing received entries"))?;
    match clash {
        None => Ok(()),
        Some((seq, kind, at, sent_kind, sent_at)) => Err(PgError::Conflict(format!(
            "station {station:?} already shipped another entry {seq} (a {kind} written {}, \
             not this {sent_kind} written at {}): another station uses the station_id \
             {station:?}, or this station's records were started afresh; give each station \
             a station_id of its own, with a token made for it",
            at.map_or_else(
                || "before the hub kept times".to_string(),
                |at| format!("at {}", flashrack_report::format_time(at))
            ),
            flashrack_report::format_time(sent_at),
        ))),
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
        if let Some(at) = times(&entry.record)
            .into_iter()
            .flatten()
            .find(|at| !storable_time(*at))
        {
            return Err(PgError::Invalid(format!(
                "entry {}: the time {at} (unix milliseconds) is not in the years 0 to 9999",
                entry.seq
            )));
        }
        // PostgreSQL's text and jsonb hold no NUL character: the statement
        // failed (a 500 the station retried for ever).
        if serde_json::to_value(&entry.record).is_ok_and(|value| holds_nul(&value)) {
            return Err(PgError::Invalid(format!(
                "entry {}: a text holds a NUL character (\\u0000), which the hub cannot store",
                entry.seq
            )));
        }
    }
    Ok(())
}

/// Whether any string of `value` (or any key of its objects) holds a NUL.
pub(super) fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
    }
}

/// The earliest time a record may carry: the year 0, as the reports write
/// times (`flashrack_report::format_time`). PostgreSQL's `timestamptz`
/// reaches further, but a time far beyond fails the statement (an interval
/// or a timestamp out of range): a 500, which the station would retry for
/// ever, where a malformed batch is a 400.
const EARLIEST_MS: i64 = -62_167_219_200_000;

/// The latest time a record may carry: the last millisecond of the year 9999.
const LATEST_MS: i64 = 253_402_300_799_999;

/// Whether `ms` (unix milliseconds) is a time the hub stores: in the years
/// 0 to 9999.
pub(super) fn storable_time(ms: i64) -> bool {
    (EARLIEST_MS..=LATEST_MS).contains(&ms)
}

/// Every time a record carries (stored as `timestamptz`).
fn times(record: &FleetRecord) -> [Option<i64>; 2] {
    match record {
        FleetRecord::Image(r) => [Some(r.imported_at), None],
        FleetRecord::Device(r) => [Some(r.first_seen), Some(r.last_seen)],
        FleetRecord::Run(r) => [Some(r.started_at), r.stopped_at],
        FleetRecord::Attempt(r) => [Some(r.started_at), r.finished_at],
        FleetRecord::Refusal(r) => [Some(r.at), None],
        FleetRecord::Event(r) => [Some(r.at), None],
    }
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

/// A batch's new rows, by kind: one version per row (see the module's
/// docs), in the order of their sequence numbers.
#[derive(Default)]
struct Rows<'a> {
    images: Vec<(i64, &'a ImageRecord)>,
    devices: Vec<(i64, &'a DeviceRecord)>,
    runs: Vec<(i64, &'a RunRecord)>,
    attempts: Vec<(i64, &'a AttemptRecord)>,
    refusals: Vec<(i64, &'a RefusalRecord)>,
    events: Vec<(i64, &'a EventRecord)>,
}

/// Keeps the newest version of each row (`entries` in increasing seq order).
fn newest<'a, K: std::hash::Hash + Eq, R>(
    entries: Vec<(i64, &'a R)>,
    key: impl Fn(&R) -> K,
) -> Vec<(i64, &'a R)> {
    let mut at: HashMap<K, usize> = HashMap::with_capacity(entries.len());
    let mut kept: Vec<Option<(i64, &'a R)>> = Vec::with_capacity(entries.len());
    for (seq, row) in entries {
        if let Some(older) = at.insert(key(row), kept.len()) {
            kept[older] = None;
        }
        kept.push(Some((seq, row)));
    }
    kept.into_iter().flatten().collect()
}

/// One column of `rows`, as an array parameter for `unnest`.
fn column<'r, R, T>(rows: &[(i64, &'r R)], value: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(|&(_, row)| value(row)).collect()
}

/// The sequence numbers of `rows`: the `seq` column.
fn seqs<R>(rows: &[(i64, &R)]) -> Vec<i64> {
    rows.iter().map(|&(seq, _)| seq).collect()
}

impl<'a> Rows<'a> {
    /// Sorts `(seq, record)` pairs (increasing seq) by kind, one version per
    /// row.
    fn of(entries: impl Iterator<Item = (i64, &'a FleetRecord)>) -> Self {
        let mut rows = Rows::default();
        for (seq, record) in entries {
            match record {
                FleetRecord::Image(r) => rows.images.push((seq, r)),
                FleetRecord::Device(r) => rows.devices.push((seq, r)),
                FleetRecord::Run(r) => rows.runs.push((seq, r)),
                FleetRecord::Attempt(r) => rows.attempts.push((seq, r)),
                FleetRecord::Refusal(r) => rows.refusals.push((seq, r)),
                FleetRecord::Event(r) => rows.events.push((seq, r)),
            }
        }
        rows.images = newest(rows.images, |r| r.sha256);
        rows.devices = newest(rows.devices, |r| r.key.clone());
        rows.runs = newest(rows.runs, |r| r.id.0);
        rows.attempts = newest(rows.attempts, |r| r.id.0);
        rows.refusals = newest(rows.refusals, |r| r.id.0);
        // An event is inserted once: its first version is the one kept.
        let mut seen = HashSet::new();
        rows.events.retain(|(_, r)| seen.insert(r.id));
        rows
    }

    /// Applies every kind in one statement each, rows a row refers to first.
    async fn apply(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        if !self.images.is_empty() {
            self.images(tx, station).await?;
        }
        if !self.devices.is_empty() {
            self.devices(tx, station).await?;
        }
        if !self.runs.is_empty() {
            self.runs(tx, station).await?;
        }
        if !self.attempts.is_empty() {
            self.attempts(tx, station).await?;
        }
        if !self.refusals.is_empty() {
            self.refusals(tx, station).await?;
        }
        if !self.events.is_empty() {
            self.events(tx, station).await?;
        }
        Ok(())
    }

    async fn images(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.images;
        let mut sizes = Vec::with_capacity(rows.len());
        for (_, r) in rows {
            sizes.push(big("image size", r.size)?);
        }
        sqlx::query(
            "INSERT INTO station_images (station_id, sha256, name, size, format, imported_at,
                                         provenance, removed, seq)
             SELECT $1, u.sha256, u.name, u.size, u.format, ms_to_ts(u.imported_at),
                    u.provenance, u.removed, u.seq
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                         $7::jsonb[], $8::boolean[], $9::bigint[])
                  AS u (sha256, name, size, format, imported_at, provenance, removed, seq)
             ON CONFLICT (station_id, sha256) DO UPDATE SET
                name = EXCLUDED.name, size = EXCLUDED.size, format = EXCLUDED.format,
                imported_at = EXCLUDED.imported_at, provenance = EXCLUDED.provenance,
                removed = EXCLUDED.removed, seq = EXCLUDED.seq
             WHERE station_images.seq < EXCLUDED.seq",
        )
        .bind(station)
        .bind(column(rows, |r| r.sha256.to_hex()))
        .bind(column(rows, |r| r.name.as_str()))
        .bind(sizes)
        .bind(column(rows, |r| r.format.as_str()))
        .bind(column(rows, |r| r.imported_at))
        .bind(column(rows, |r| {
            r.provenance
                .as_ref()
                .map(|p| serde_json::to_value(p).expect("a provenance serializes"))
        }))
        .bind(column(rows, |r| r.removed))
        .bind(seqs(rows))
        .execute(tx)
        .await
        .map_err(sql("storing images"))?;
        Ok(())
    }

    async fn devices(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.devices;
        let mut capacities = Vec::with_capacity(rows.len());
        for (_, r) in rows {
            capacities.push(big("capacity", r.capacity)?);
        }
        sqlx::query(
            "INSERT INTO devices (station_id, key, serial, vendor, model, capacity,
                                  first_seen, last_seen, seq)
             SELECT $1, u.key, u.serial, u.vendor, u.model, u.capacity,
                    ms_to_ts(u.first_seen), ms_to_ts(u.last_seen), u.seq
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::bigint[])
                  AS u (key, serial, vendor, model, capacity, first_seen, last_seen, seq)
             ON CONFLICT (station_id, key) DO UPDATE SET
                serial = EXCLUDED.serial, vendor = EXCLUDED.vendor, model = EXCLUDED.model,
                capacity = EXCLUDED.capacity, first_seen = EXCLUDED.first_seen,
                last_seen = EXCLUDED.last_seen, seq = EXCLUDED.seq
             WHERE devices.seq < EXCLUDED.seq",
        )
        .bind(station)
        .bind(column(rows, |r| r.key.as_str()))
        .bind(column(rows, |r| r.serial.as_deref()))
        .bind(column(rows, |r| r.vendor.as_deref()))
        .bind(column(rows, |r| r.model.as_deref()))
        .bind(capacities)
        .bind(column(rows, |r| r.first_seen))
        .bind(column(rows, |r| r.last_seen))
        .bind(seqs(rows))
        .execute(tx)
        .await
        .map_err(sql("storing devices"))?;
        Ok(())
    }

    async fn runs(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.runs;
        sqlx::query(
            "INSERT INTO runs (station_id, id, image_sha256, image_name, options, order_id,
                               started_at, stopped_at, stop_reason, stop_detail, seq)
             SELECT $1, u.id, u.image_sha256, u.image_name, u.options, u.order_id,
                    ms_to_ts(u.started_at), ms_to_ts(u.stopped_at), u.stop_reason,
                    u.stop_detail, u.seq
             FROM unnest($2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bigint[])
                  AS u (id, image_sha256, image_name, options, order_id, started_at,
                        stopped_at, stop_reason, stop_detail, seq)
             ON CONFLICT (station_id, id) DO UPDATE SET
                image_sha256 = EXCLUDED.image_sha256, image_name = EXCLUDED.image_name,
                options = EXCLUDED.options, order_id = EXCLUDED.order_id,
                started_at = EXCLUDED.started_at, stopped_at = EXCLUDED.stopped_at,
                stop_reason = EXCLUDED.stop_reason, stop_detail = EXCLUDED.stop_detail,
                seq = EXCLUDED.seq
             WHERE runs.seq < EXCLUDED.seq",
        )
        .bind(station)
        .bind(column(rows, |r| r.id.0))
        .bind(column(rows, |r| r.image_sha256.to_hex()))
        .bind(column(rows, |r| r.image_name.as_str()))
        .bind(column(rows, |r| r.options.clone()))
        .bind(column(rows, |r| {
            r.options.get(ORDER_ID_OPTION).and_then(|v| v.as_i64())
        }))
        .bind(column(rows, |r| r.started_at))
        .bind(column(rows, |r| r.stopped_at))
        .bind(column(rows, |r| r.stop_reason.as_ref().map(enum_text)))
        .bind(column(rows, |r| r.stop_detail.as_deref()))
        .bind(seqs(rows))
        .execute(tx)
        .await
        .map_err(sql("storing runs"))?;
        Ok(())
    }

    async fn attempts(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.attempts;
        sqlx::query(
            "INSERT INTO attempts (station_id, id, run_id, device_key, port_label, port_path,
                                   started_at, finished_at, state, stage, verdict,
                                   reason_detail, figures, seq)
             SELECT $1, u.id, u.run_id, u.device_key, u.port_label, u.port_path,
                    ms_to_ts(u.started_at), ms_to_ts(u.finished_at), u.state, u.stage,
                    u.verdict, u.reason_detail, u.figures, u.seq
             FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::jsonb[],
                         $12::text[], $13::jsonb[], $14::bigint[])
                  AS u (id, run_id, device_key, port_label, port_path, started_at,
                        finished_at, state, stage, verdict, reason_detail, figures, seq)
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
        .bind(column(rows, |r| r.id.0))
        .bind(column(rows, |r| r.run_id.0))
        .bind(column(rows, |r| r.device_key.as_str()))
        .bind(column(rows, |r| r.port_label.as_str()))
        .bind(column(rows, |r| r.port_path.as_str()))
        .bind(column(rows, |r| r.started_at))
        .bind(column(rows, |r| r.finished_at))
        .bind(column(rows, |r| enum_text(&r.state)))
        .bind(column(rows, |r| enum_text(&r.stage)))
        .bind(column(rows, |r| {
            r.verdict
                .as_ref()
                .map(|v| serde_json::to_value(v).unwrap_or_default())
        }))
        .bind(column(rows, |r| r.reason_detail.as_deref()))
        .bind(column(rows, |r| {
            serde_json::to_value(&r.figures).unwrap_or_default()
        }))
        .bind(seqs(rows))
        .execute(tx)
        .await
        .map_err(sql("storing attempts"))?;
        Ok(())
    }

    async fn refusals(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.refusals;
        let mut capacities = Vec::with_capacity(rows.len());
        for (_, r) in rows {
            capacities.push(big("capacity", r.capacity)?);
        }
        sqlx::query(
            "INSERT INTO refusals (station_id, id, at, run_id, device_key, port_label, port_path,
                                   capacity, refusal, seq)
             SELECT $1, u.id, ms_to_ts(u.at), u.run_id, u.device_key, u.port_label,
                    u.port_path, u.capacity, u.refusal, u.seq
             FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::jsonb[], $10::bigint[])
                  AS u (id, at, run_id, device_key, port_label, port_path, capacity,
                        refusal, seq)
             ON CONFLICT (station_id, id) DO UPDATE SET
                at = EXCLUDED.at, run_id = EXCLUDED.run_id, device_key = EXCLUDED.device_key,
                port_label = EXCLUDED.port_label, port_path = EXCLUDED.port_path,
                capacity = EXCLUDED.capacity, refusal = EXCLUDED.refusal, seq = EXCLUDED.seq
             WHERE refusals.seq < EXCLUDED.seq",
        )
        .bind(station)
        .bind(column(rows, |r| r.id.0))
        .bind(column(rows, |r| r.at))
        .bind(column(rows, |r| r.run_id.map(|id| id.0)))
        .bind(column(rows, |r| r.device_key.as_str()))
        .bind(column(rows, |r| r.port_label.as_str()))
        .bind(column(rows, |r| r.port_path.as_str()))
        .bind(capacities)
        .bind(column(rows, |r| {
            serde_json::to_value(&r.refusal).unwrap_or_default()
        }))
        .bind(seqs(rows))
        .execute(tx)
        .await
        .map_err(sql("storing refusals"))?;
        Ok(())
    }

    async fn events(&self, tx: &mut PgConnection, station: &str) -> Result<(), PgError> {
        let rows = &self.events;
        sqlx::query(
            "INSERT INTO events (station_id, id, seq, at, kind, port_label, device_key, run_id,
                                 attempt_id, detail)
             SELECT $1, u.id, u.seq, ms_to_ts(u.at), u.kind, u.port_label, u.device_key,
                    u.run_id, u.attempt_id, u.detail
             FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[], $10::jsonb[])
                  AS u (id, seq, at, kind, port_label, device_key, run_id, attempt_id, detail)
             ON CONFLICT (station_id, id) DO NOTHING",
        )
        .bind(station)
        .bind(column(rows, |r| r.id))
        .bind(seqs(rows))
        .bind(column(rows, |r| r.at))
        .bind(column(rows, |r| r.kind.as_str()))
        .bind(column(rows, |r| r.port_label.as_deref()))
        .bind(column(rows, |r| r.device_key.as_deref()))
        .bind(column(rows, |r| r.run_id.map(|id| id.0)))
        .bind(column(rows, |r| r.attempt_id.map(|id| id.0)))
        .bind(column(rows, |r| r.detail.clone()))
        .execute(tx)
        .await
        .map_err(sql("storing events"))?;
        Ok(())
    }
}
