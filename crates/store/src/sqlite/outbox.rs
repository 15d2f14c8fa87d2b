//! The fleet outbox: every record this station writes, queued for its hub in the
//! same transaction as the write.
//!
//! Once the station has joined a fleet ([`Store::enable_outbox`]), every write
//! of [`SqliteWrites`] also appends the rows it changed — the whole row after
//! the write, as `flashrack-fleet`'s [`FleetRecord`] — to the `outbox` table,
//! numbered in order. A record and its outbox entry commit together or not at
//! all: nothing the station recorded can be missing from what it ships, and
//! nothing can be shipped that it did not record. The shipper reads unshipped
//! entries oldest first ([`Store::outbox_unshipped`]) and marks them shipped
//! once the hub acknowledged them ([`Store::mark_shipped`]).
//!
//! Whether the outbox is written is a fact of the database (`fleet_state`), not
//! of a configuration: a station that joined a fleet keeps queueing while its
//! hub is unreachable or its configuration is being edited, and when it joins,
//! every record it already had is queued first, so the hub gets its whole
//! history.

use std::sync::atomic::Ordering;

use flashrack_core::{AttemptId, RefusalId, RunId, Sha256Digest};
use flashrack_fleet::{
    AttemptRecord, DeviceRecord, EventRecord, FleetRecord, ImageRecord, OutboxEntry, RefusalRecord,
    RunRecord,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::records::{attempt_record, device_record, event, image_row, json, run_columns};
use super::writes::SqliteWrites;
use crate::convert::{parse_refusal_code, to_i64, to_u64};
use crate::{DeviceId, EventId, Records, Store, StoreError};

/// The `fleet_state` key whose presence means the outbox is written.
const OUTBOX_SINCE: &str = "outbox_since";

/// Whether the outbox of the database behind `conn` is written.
pub(super) async fn outbox_enabled(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
    let since: Option<String> = sqlx::query_scalar("SELECT value FROM fleet_state WHERE key = ?")
        .bind(OUTBOX_SINCE)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(since.is_some())
}

/// An outbox row as the entry it holds.
fn outbox_entry(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEntry, StoreError> {
    let text: &str = row.try_get("record")?;
    Ok(OutboxEntry {
        seq: to_u64("outbox.seq", row.try_get("seq")?)?,
        at: row.try_get("at")?,
        record: serde_json::from_str(text).map_err(|_| StoreError::BadValue {
            column: "outbox.record",
            value: text.to_string(),
        })?,
    })
}

impl Store {
    /// Whether this station queues its records for a fleet hub.
    pub fn outbox_enabled(&self) -> bool {
        self.outbox.load(Ordering::SeqCst)
    }

    /// Joins a fleet: from now on every write also queues its records for the
    /// hub, and every record written before is queued now (in one transaction,
    /// oldest kinds first: images, devices, runs, refusals, attempts, events),
    /// so the hub gets the station's whole history. Returns how many entries
    /// were queued; 0 if the outbox was already enabled.
    pub async fn enable_outbox(&self) -> Result<u64, StoreError> {
        let queued = self.write(|batch| Box::pin(batch.enable_outbox())).await?;
        self.outbox.store(true, Ordering::SeqCst);
        Ok(queued)
    }

    /// Up to `limit` entries not yet shipped, oldest first.
    pub async fn outbox_unshipped(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, record FROM outbox WHERE shipped_at IS NULL ORDER BY seq LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(outbox_entry).collect()
    }

    /// Up to `limit` entries after sequence number `after`, shipped or not
    /// (shipped entries are kept until [`prune_shipped`](Self::prune_shipped)),
    /// oldest first: the last entry of each record is the record as it is
    /// now, which is what the fleet's tests compare with the hub's copy.
    pub async fn outbox_entries(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, at, record FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(to_i64("outbox.seq", after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        rows.iter().map(outbox_entry).collect()
    }

    /// How many entries are not yet shipped.
    pub async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE shipped_at IS NULL")
            .fetch_one(&self.reader)
            .await?;
        to_u64("outbox backlog", count)
    }

    /// Marks every entry up to `through` shipped (the hub acknowledged them).
    /// Returns how many entries this marked.
    pub async fn mark_shipped(&self, through: u64) -> Result<u64, StoreError> {
        self.write(move |batch| Box::pin(batch.mark_shipped(through)))
            .await
    }

    /// Removes entries shipped before `before` (unix milliseconds). Returns how
    /// many were removed. Unshipped entries are never removed.
    pub async fn prune_shipped(&self, before: i64) -> Result<u64, StoreError> {
        self.write(move |batch| Box::pin(batch.prune_shipped(before)))
            .await
    }
}

impl SqliteWrites {
    /// See [`Store::enable_outbox`].
    pub(super) async fn enable_outbox(&mut self) -> Result<u64, StoreError> {
        if outbox_enabled(&mut self.tx).await? {
            self.outbox = true;
            return Ok(0);
        }
        let now = self.clock.now_ms();
        sqlx::query("INSERT INTO fleet_state (key, value) VALUES (?, ?)")
            .bind(OUTBOX_SINCE)
            .bind(now.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.outbox = true;
        let mut queued = 0;
        let images: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM images ORDER BY rowid")
            .fetch_all(&mut *self.tx)
            .await?;
        for sha in images {
            let sha = super::records::digest("images.sha256", &sha)?;
            self.queue_image(now, sha).await?;
            queued += 1;
        }
        for (table, kind) in [
            ("devices", Kind::Device),
            ("runs", Kind::Run),
            ("refusals", Kind::Refusal),
            ("attempts", Kind::Attempt),
            ("events", Kind::Event),
        ] {
            // Only this station's runs, refusals, attempts and events: several
            // stations may share a database, and each ships its own.
            let sql = if table == "devices" {
                "SELECT id FROM devices ORDER BY id".to_string()
            } else {
                format!("SELECT id FROM {table} WHERE station_id = ? ORDER BY id")
            };
            let ids: Vec<i64> = sqlx::query_scalar(&sql)
                .bind(self.station.as_str())
                .fetch_all(&mut *self.tx)
                .await?;
            for id in ids {
                match kind {
                    Kind::Device => self.queue_device(now, DeviceId(id)).await?,
                    Kind::Run => self.queue_run(now, RunId(id)).await?,
                    Kind::Refusal => self.queue_refusal(now, RefusalId(id)).await?,
                    Kind::Attempt => self.queue_attempt(now, AttemptId(id)).await?,
                    Kind::Event => self.queue_event(now, EventId(id)).await?,
                }
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// See [`Store::mark_shipped`].
    pub(super) async fn mark_shipped(&mut self, through: u64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("UPDATE outbox SET shipped_at = ? WHERE seq <= ? AND shipped_at IS NULL")
                .bind(self.clock.now_ms())
                .bind(to_i64("shipped through", through)?)
                .execute(&mut *self.tx)
                .await?;
        Ok(done.rows_affected())
    }

    /// See [`Store::prune_shipped`].
    pub(super) async fn prune_shipped(&mut self, before: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM outbox WHERE shipped_at IS NOT NULL AND shipped_at < ?")
                .bind(before)
                .execute(&mut *self.tx)
                .await?;
        Ok(done.rows_affected())
    }

    /// Appends `record` to the outbox, written at `now`.
    async fn queue(&mut self, now: i64, record: FleetRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(&record).map_err(|e| StoreError::BadValue {
            column: "outbox.record",
            value: e.to_string(),
        })?;
        sqlx::query("INSERT INTO outbox (at, kind, record) VALUES (?, ?, ?)")
            .bind(now)
            .bind(record.kind())
            .bind(text)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Queues the image as it is recorded now (if the outbox is written).
    pub(super) async fn queue_image(
        &mut self,
        now: i64,
        sha: Sha256Digest,
    ) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(&format!("{} WHERE sha256 = ?", super::records::IMAGE))
            .bind(sha.to_hex())
            .fetch_one(&mut *self.tx)
            .await?;
        let image = image_row(&row)?;
        self.queue(
            now,
            FleetRecord::Image(ImageRecord {
                sha256: image.sha256,
                name: image.name,
                size: image.size.bytes(),
                format: image.format,
                imported_at: image.imported_at,
                provenance: image.provenance.map(Box::new),
                removed: false,
            }),
        )
        .await
    }

    /// Queues the removal of an image row (a run's provisional image, removed
    /// once the run names the real one): `last` is the row as it was, shipped
    /// once more marked [`removed`](ImageRecord::removed), so the hub's copy
    /// ends as the station's does (if the outbox is written).
    pub(super) async fn queue_image_removed(
        &mut self,
        now: i64,
        last: ImageRecord,
    ) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        self.queue(
            now,
            FleetRecord::Image(ImageRecord {
                removed: true,
                ..last
            }),
        )
        .await
    }

    /// Queues the device as it is recorded now (if the outbox is written).
    pub(super) async fn queue_device(&mut self, now: i64, id: DeviceId) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(&format!("{} WHERE id = ?", super::records::DEVICE))
            .bind(id.0)
            .fetch_one(&mut *self.tx)
            .await?;
        let device = device_record(&row)?;
        self.queue(
            now,
            FleetRecord::Device(DeviceRecord {
                key: device.key,
                serial: device.serial,
                vendor: device.vendor,
                model: device.model,
                capacity: device.capacity.bytes(),
                first_seen: device.first_seen,
                last_seen: device.last_seen,
            }),
        )
        .await
    }

    /// Queues the run as it is recorded now (if the outbox is written).
    pub(super) async fn queue_run(&mut self, now: i64, id: RunId) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT id, station_id, image_sha256, image_name, options, started_at, stopped_at,
                    stop_reason, stop_detail
             FROM runs WHERE id = ?",
        )
        .bind(id.0)
        .fetch_one(&mut *self.tx)
        .await?;
        let run = run_columns(&row)?;
        self.queue(
            now,
            FleetRecord::Run(RunRecord {
                id: run.id,
                image_sha256: run.image_sha256,
                image_name: run.image_name,
                options: run.options,
                started_at: run.started_at,
                stopped_at: run.stopped_at,
                stop_reason: run.stop_reason,
                stop_detail: run.stop_detail,
            }),
        )
        .await
    }

    /// Queues the attempt as it is recorded now (if the outbox is written).
    pub(super) async fn queue_attempt(
        &mut self,
        now: i64,
        id: AttemptId,
    ) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(&format!(
            "SELECT a.*, d.key AS device_key, t.reason_detail FROM ({} WHERE id = ?) a
             JOIN devices d ON d.id = a.device_id JOIN attempts t ON t.id = a.id",
            super::records::ATTEMPT
        ))
        .bind(id.0)
        .fetch_one(&mut *self.tx)
        .await?;
        let attempt = attempt_record(&row)?;
        self.queue(
            now,
            FleetRecord::Attempt(AttemptRecord {
                id: attempt.id,
                run_id: attempt.run_id,
                device_key: row.try_get("device_key")?,
                port_label: attempt.port_label,
                port_path: attempt.port_path,
                started_at: attempt.started_at,
                finished_at: attempt.finished_at,
                state: attempt.state,
                stage: attempt.stage,
                verdict: attempt.verdict,
                reason_detail: row.try_get("reason_detail")?,
                figures: attempt.figures,
            }),
        )
        .await
    }

    /// Queues the refusal as it is recorded (if the outbox is written).
    pub(super) async fn queue_refusal(
        &mut self,
        now: i64,
        id: RefusalId,
    ) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT f.id, f.at, f.run_id, f.port_label, f.port_path, f.capacity, f.code,
                    f.message, d.key
             FROM refusals f JOIN devices d ON d.id = f.device_id WHERE f.id = ?",
        )
        .bind(id.0)
        .fetch_one(&mut *self.tx)
        .await?;
        let record = RefusalRecord {
            id,
            at: row.try_get("at")?,
            run_id: row.try_get::<Option<i64>, _>("run_id")?.map(RunId),
            device_key: row.try_get("key")?,
            port_label: row.try_get("port_label")?,
            port_path: row.try_get("port_path")?,
            capacity: to_u64("refusals.capacity", row.try_get("capacity")?)?,
            refusal: flashrack_core::GuardRefusal {
                code: parse_refusal_code(row.try_get("code")?)?,
                message: row.try_get("message")?,
            },
        };
        self.queue(now, FleetRecord::Refusal(record)).await
    }

    /// Queues the event (if the outbox is written).
    pub(super) async fn queue_event(&mut self, now: i64, id: EventId) -> Result<(), StoreError> {
        if !self.outbox {
            return Ok(());
        }
        let row = sqlx::query(&format!(
            "SELECT e.*, d.key AS device_key FROM ({} WHERE id = ?) e
             LEFT JOIN devices d ON d.id = e.device_id",
            super::records::EVENT
        ))
        .bind(id.0)
        .fetch_one(&mut *self.tx)
        .await?;
        let logged = event(&row)?;
        let detail_text: &str = row.try_get("detail")?;
        self.queue(
            now,
            FleetRecord::Event(EventRecord {
                id: logged.id.0,
                at: logged.at,
                kind: logged.row.kind.as_str().to_string(),
                port_label: logged.row.port_label,
                device_key: row.try_get("device_key")?,
                run_id: logged.row.run_id,
                attempt_id: logged.row.attempt_id,
                detail: json("events.detail", detail_text)?,
            }),
        )
        .await
    }
}

/// What a backfill queues from each table.
#[derive(Clone, Copy)]
enum Kind {
    Device,
    Run,
    Refusal,
    Attempt,
    Event,
}
