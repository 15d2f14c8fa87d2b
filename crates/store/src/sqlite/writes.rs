//! Every write the store makes, as the methods of [`SqliteWrites`]: one open
//! transaction on the store's write connection, committed by
//! [`Records::write`](crate::Records::write).

use flashrack_core::{AttemptFigures, FailReason, Failure, Sha256Digest, Stage, Verdict};
use serde_json::json;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, Sqlite, Transaction};

use super::on_insert;
use super::store::PreviousSession;
use crate::convert::{parse_stage, to_i64};
use crate::model::non_blank;
use crate::{
    AttemptId, AttemptState, Clock, DeviceId, DeviceRow, EventId, EventKind, EventRow, ImageRow,
    Recovery, RefusalId, RefusalRow, RunId, RunningFigures, StationId, StopReason, StoreError,
    Writes,
};

/// One open transaction on the store's write connection, with the station and
/// the clock every write is stamped with.
///
/// It holds the store's only write connection until it is committed or dropped
/// (dropping rolls it back), so other writes wait for it.
#[derive(Debug)]
pub struct SqliteWrites {
    /// The open transaction.
    pub(super) tx: Transaction<'static, Sqlite>,
    /// The station every record written belongs to.
    pub(super) station: StationId,
    /// Where each write's timestamp comes from.
    pub(super) clock: Clock,
    /// Whether every write also queues its records in the fleet outbox (see
    /// `outbox`), in this same transaction.
    pub(super) outbox: bool,
}

impl SqliteWrites {
    /// A transaction just begun on the write connection.
    pub(super) fn new(
        tx: Transaction<'static, Sqlite>,
        station: StationId,
        clock: Clock,
        outbox: bool,
    ) -> Self {
        Self {
            tx,
            station,
            clock,
            outbox,
        }
    }

    /// Commits every write, durably (`synchronous=FULL`).
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Registers the station at start-up (first seen, last seen) and logs it.
    pub(super) async fn register_station(&mut self, schema_version: i64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        sqlx::query(
            "INSERT INTO stations (id, name, first_seen, last_seen) VALUES (?1, ?1, ?2, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(self.station.as_str())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        let event = EventRow::new(
            EventKind::StationStarted,
            json!({ "schema_version": schema_version }),
        );
        self.log(now, &event).await?;
        Ok(())
    }

    /// Fails with [`StoreError::NotFound`] unless the image `sha` (its hex
    /// sha256) is recorded.
    async fn require_image(&mut self, sha: &str) -> Result<(), StoreError> {
        let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM images WHERE sha256 = ?")
            .bind(sha)
            .fetch_optional(&mut *self.tx)
            .await?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "image",
                id: sha.to_owned(),
            });
        }
        Ok(())
    }

    /// Appends `event` to the log, dated `now` (the time of the write it belongs
    /// to).
    async fn log(&mut self, now: i64, event: &EventRow) -> Result<EventId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (station_id, at, kind, port_label, device_id, run_id, attempt_id, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(self.station.as_str())
        .bind(now)
        .bind(event.kind.as_str())
        .bind(event.port_label.as_deref())
        .bind(event.device_id.map(|id| id.0))
        .bind(event.run_id.map(|id| id.0))
        .bind(event.attempt_id.map(|id| id.0))
        .bind(event.detail.to_string())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(on_insert("an event"))?;
        let id = EventId(id);
        self.queue_event(now, id).await?;
        Ok(id)
    }

    /// Turns what the previous sessions left running into `interrupted`,
    /// each station's (`previous`, measured at open) at the last moment that
    /// station was known alive: see
    /// [`Records::recover_interrupted`](crate::Records::recover_interrupted).
    pub(super) async fn recover(
        &mut self,
        previous: Vec<(String, PreviousSession)>,
    ) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        for (station, session) in previous {
            self.recover_station(&station, session, &mut recovery)
                .await?;
        }
        Ok(recovery)
    }

    /// [`Self::recover`] for the work station `station` left.
    async fn recover_station(
        &mut self,
        station: &str,
        previous: PreviousSession,
        recovery: &mut Recovery,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let crash_at = previous.last_alive.unwrap_or(now);
        let before = (recovery.attempts.len(), recovery.runs.len());

        let rows = sqlx::query(
            "SELECT id, stage, run_id, device_id, port_label, started_at FROM attempts
             WHERE station_id = ? AND state = 'running' AND id <= ? ORDER BY id",
        )
        .bind(station)
        .bind(previous.last_attempt)
        .fetch_all(&mut *self.tx)
        .await?;
        for row in rows {
            let attempt = AttemptId(row.try_get("id")?);
            let stage = parse_stage(row.try_get("stage")?)?;
            let started_at: i64 = row.try_get("started_at")?;
            let failure = Failure {
                reason: FailReason::Interrupted,
                stage,
            };
            let finished_at = crash_at.max(started_at);
            // The bytes last recorded while it ran (heartbeats) are kept: at least
            // that much reached the stick; with none recorded after the write pass
            // began, nobody knows.
            sqlx::query(
                "UPDATE attempts SET finished_at = ?, state = 'interrupted',
                    reason_code = ?, reason_detail = ?, failure = ?,
                    bytes_written_bound = CASE
                        WHEN stage = 'preparing' THEN 'exact'
                        WHEN bytes_written > 0 THEN 'lower_bound'
                        ELSE 'unknown' END
                 WHERE id = ?",
            )
            .bind(finished_at)
            .bind(failure.reason.code())
            .bind(format!(
                "interrupted: the station stopped unexpectedly during {stage}"
            ))
            .bind(json!(failure).to_string())
            .bind(attempt.0)
            .execute(&mut *self.tx)
            .await?;
            self.queue_attempt(now, attempt).await?;
            let event = EventRow {
                kind: EventKind::AttemptInterrupted,
                port_label: Some(row.try_get("port_label")?),
                device_id: Some(DeviceId(row.try_get("device_id")?)),
                run_id: Some(RunId(row.try_get("run_id")?)),
                attempt_id: Some(attempt),
                detail: json!({ "stage": stage, "presumed_crash_at": finished_at }),
            };
            self.log(now, &event).await?;
            recovery.attempts.push(attempt);
        }

        let runs = sqlx::query(
            "SELECT id, started_at FROM runs
             WHERE station_id = ? AND stopped_at IS NULL AND id <= ? ORDER BY id",
        )
        .bind(station)
        .bind(previous.last_run)
        .fetch_all(&mut *self.tx)
        .await?;
        for row in runs {
            let run = RunId(row.try_get("id")?);
            let stopped_at = crash_at.max(row.try_get("started_at")?);
            sqlx::query("UPDATE runs SET stopped_at = ?, stop_reason = ? WHERE id = ?")
                .bind(stopped_at)
                .bind(StopReason::Interrupted.code())
                .bind(run.0)
                .execute(&mut *self.tx)
                .await?;
            self.queue_run(now, run).await?;
            let mut event = EventRow::new(
                EventKind::RunStopped,
                json!({ "reason": StopReason::Interrupted, "presumed_crash_at": stopped_at }),
            );
            event.run_id = Some(run);
            self.log(now, &event).await?;
            recovery.runs.push(run);
        }

        if (recovery.attempts.len(), recovery.runs.len()) != before {
            recovery.presumed_crash_at = recovery.presumed_crash_at.max(Some(crash_at));
        }
        Ok(())
    }
}

impl Writes for SqliteWrites {
    async fn record_image(&mut self, image: &ImageRow) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        sqlx::query(
            "INSERT INTO images (sha256, name, size, format, imported_at, source_name,
                                 source_sha256, source_size, inspection, provenance)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (sha256) DO UPDATE SET name = excluded.name, format = excluded.format,
                 source_name = COALESCE(excluded.source_name, images.source_name),
                 source_sha256 = COALESCE(excluded.source_sha256, images.source_sha256),
                 source_size = COALESCE(excluded.source_size, images.source_size),
                 inspection = COALESCE(excluded.inspection, images.inspection),
                 provenance = COALESCE(excluded.provenance, images.provenance)",
        )
        .bind(image.sha256.to_hex())
        .bind(&image.name)
        .bind(to_i64("image size", image.size.bytes())?)
        .bind(&image.format)
        .bind(image.imported_at)
        .bind(image.source.as_ref().map(|s| s.file_name.as_str()))
        .bind(image.source.as_ref().map(|s| s.sha256.to_hex()))
        .bind(
            image
                .source
                .as_ref()
                .map(|s| to_i64("image source size", s.size.bytes()))
                .transpose()?,
        )
        .bind(&image.inspection)
        .bind(
            image
                .provenance
                .as_ref()
                .map(|p| serde_json::to_string(p).expect("a provenance serializes")),
        )
        .execute(&mut *self.tx)
        .await?;
        self.queue_image(now, image.sha256).await?;
        let event = EventRow::new(
            EventKind::ImageRecorded,
            json!({ "sha256": image.sha256, "name": image.name, "size": image.size }),
        );
        self.log(now, &event).await?;
        Ok(())
    }

    async fn start_run(
        &mut self,
        image_sha256: Sha256Digest,
        image_name: &str,
        options: &serde_json::Value,
    ) -> Result<RunId, StoreError> {
        let now = self.clock.now_ms();
        let sha = image_sha256.to_hex();
        self.require_image(&sha).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (station_id, image_sha256, image_name, options, started_at)
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(self.station.as_str())
        .bind(&sha)
        .bind(image_name)
        .bind(options.to_string())
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        let run = RunId(id);
        self.queue_run(now, run).await?;
        let mut event = EventRow::new(
            EventKind::RunStarted,
            json!({ "image_sha256": sha, "image_name": image_name, "options": options }),
        );
        event.run_id = Some(run);
        self.log(now, &event).await?;
        Ok(run)
    }

    async fn set_run_image(
        &mut self,
        run: RunId,
        image_sha256: Sha256Digest,
        image_name: &str,
        provisional: Sha256Digest,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let sha = image_sha256.to_hex();
        self.require_image(&sha).await?;
        let updated = sqlx::query("UPDATE runs SET image_sha256 = ?, image_name = ? WHERE id = ?")
            .bind(&sha)
            .bind(image_name)
            .bind(run.0)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound {
                what: "run",
                id: run.0.to_string(),
            });
        }
        if provisional != image_sha256 {
            let removed = sqlx::query(&format!(
                "{} WHERE sha256 = ?1 AND NOT EXISTS (SELECT 1 FROM runs WHERE image_sha256 = ?1)",
                super::records::IMAGE
            ))
            .bind(provisional.to_hex())
            .fetch_optional(&mut *self.tx)
            .await?
            .map(|row| super::records::image_row(&row))
            .transpose()?;
            if let Some(last) = removed {
                sqlx::query("DELETE FROM images WHERE sha256 = ?")
                    .bind(provisional.to_hex())
                    .execute(&mut *self.tx)
                    .await?;
                // The hub got the provisional row when the run started: it
                // is told the row is gone, not left with an orphan.
                self.queue_image_removed(
                    now,
                    flashrack_fleet::ImageRecord {
                        sha256: last.sha256,
                        name: last.name,
                        size: last.size.bytes(),
                        format: last.format,
                        imported_at: last.imported_at,
                        provenance: last.provenance.map(Box::new),
                        removed: false,
                    },
                )
                .await?;
            }
        }
        // The hub takes the run again with its image (runs are upserted).
        self.queue_run(now, run).await?;
        let mut event = EventRow::new(
            EventKind::ImageRecorded,
            json!({ "sha256": sha, "name": image_name, "run_image": true }),
        );
        event.run_id = Some(run);
        self.log(now, &event).await?;
        Ok(())
    }

    async fn stop_run(
        &mut self,
        run: RunId,
        reason: StopReason,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        check_run_open(&mut self.tx, run).await?;
        sqlx::query(
            "UPDATE runs SET stopped_at = ?, stop_reason = ?, stop_detail = ? WHERE id = ?",
        )
        .bind(now)
        .bind(reason.code())
        .bind(detail)
        .bind(run.0)
        .execute(&mut *self.tx)
        .await?;
        self.queue_run(now, run).await?;
        let mut event = EventRow::new(EventKind::RunStopped, json!({ "reason": reason }));
        event.run_id = Some(run);
        self.log(now, &event).await?;
        Ok(())
    }

    async fn upsert_device(&mut self, device: &DeviceRow) -> Result<DeviceId, StoreError> {
        let now = self.clock.now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO devices (key, serial, vendor, model, capacity, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (key) DO UPDATE SET
                 serial = excluded.serial, vendor = excluded.vendor, model = excluded.model,
                 capacity = excluded.capacity, last_seen = excluded.last_seen
             RETURNING id",
        )
        .bind(device.key())
        .bind(non_blank(&device.serial))
        .bind(non_blank(&device.vendor))
        .bind(non_blank(&device.model))
        .bind(to_i64("device capacity", device.capacity.bytes())?)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        let id = DeviceId(id);
        self.queue_device(now, id).await?;
        Ok(id)
    }

    async fn start_attempt(
        &mut self,
        run: RunId,
        device: DeviceId,
        port_label: &str,
        port_path: &str,
    ) -> Result<AttemptId, StoreError> {
        let now = self.clock.now_ms();
        check_run_open(&mut self.tx, run).await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO attempts (station_id, run_id, device_id, port_label, port_path, started_at,
                                   capacity, bytes_written_bound)
             SELECT ?, ?, id, ?, ?, ?, capacity, 'lower_bound' FROM devices WHERE id = ?
             RETURNING id",
        )
        .bind(self.station.as_str())
        .bind(run.0)
        .bind(port_label)
        .bind(port_path)
        .bind(now)
        .bind(device.0)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(on_insert("an attempt"))?;
        let attempt = AttemptId(id.ok_or_else(|| StoreError::NotFound {
            what: "device",
            id: device.to_string(),
        })?);
        self.queue_attempt(now, attempt).await?;
        let event = EventRow {
            kind: EventKind::AttemptStarted,
            port_label: Some(port_label.to_string()),
            device_id: Some(device),
            run_id: Some(run),
            attempt_id: Some(attempt),
            detail: json!({ "port_path": port_path }),
        };
        self.log(now, &event).await?;
        Ok(attempt)
    }

    async fn attempt_stage(&mut self, attempt: AttemptId, stage: Stage) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let running = running_attempt(&mut self.tx, attempt).await?;
        sqlx::query("UPDATE attempts SET stage = ? WHERE id = ?")
            .bind(stage.as_str())
            .bind(attempt.0)
            .execute(&mut *self.tx)
            .await?;
        self.queue_attempt(now, attempt).await?;
        let event = EventRow {
            kind: EventKind::StageChanged,
            port_label: Some(running.port_label),
            device_id: Some(running.device),
            run_id: Some(running.run),
            attempt_id: Some(attempt),
            detail: json!({ "stage": stage }),
        };
        self.log(now, &event).await?;
        Ok(())
    }

    async fn finish_attempt(
        &mut self,
        attempt: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let running = running_attempt(&mut self.tx, attempt).await?;
        let (state, stage) = match verdict {
            Verdict::Pass => (AttemptState::Passed, running.stage),
            // Interrupted, or the station's own error: not the stick's failure.
            Verdict::Fail(failure) if failure.reason.is_station_side() => {
                (AttemptState::Interrupted, failure.stage)
            }
            Verdict::Fail(failure) => (AttemptState::Failed, failure.stage),
        };
        let failure = verdict.failure();
        let capacity = figures.capacity.bytes();
        let bytes_written = to_i64("bytes written", figures.bytes_written)?;
        let sample = figures.sample.as_ref();
        // Counts never go down: a heartbeat may have recorded more than a verdict
        // given without the attempt's thread knows, and then that is a lower bound.
        sqlx::query(
            "UPDATE attempts SET
                finished_at = ?1, state = ?2, stage = ?3,
                reason_code = ?4, reason_detail = ?5, fail_offset = ?6, failure = ?7,
                capacity = CASE WHEN ?8 > 0 THEN ?8 ELSE capacity END,
                bytes_written_bound = CASE WHEN bytes_written > ?9 THEN 'lower_bound' ELSE ?10 END,
                bytes_written = MAX(bytes_written, ?9), write_secs = ?11,
                bytes_verified = MAX(bytes_verified, ?12),
                verify_secs = ?13, read_back_sha256 = ?14, verify_method = ?15,
                verified_after_reset = ?16, bytes_skipped = ?18,
                sample_percent = ?19, sample_seed = ?20, sample_chunks_checked = ?21,
                sample_chunks_total = ?22
             WHERE id = ?17",
        )
        .bind(now)
        .bind(state.as_str())
        .bind(stage.as_str())
        .bind(failure.map(|f| f.reason.code()))
        .bind(failure.map(|f| match f.reason {
            // Which stage it was stopped in (the run's stop, beside it in
            // every report, says who stopped it): a bare "interrupted"
            // said less than a crash's record does.
            FailReason::Interrupted => format!("interrupted during {}", f.stage),
            _ => f.reason.to_string(),
        }))
        .bind(
            failure
                .and_then(|f| f.reason.offset())
                .map(|o| to_i64("fail offset", o))
                .transpose()?,
        )
        .bind(failure.map(|f| json!(f).to_string()))
        .bind(to_i64("capacity", capacity)?)
        .bind(bytes_written)
        .bind(figures.bytes_written_bound.as_str())
        .bind(figures.write_secs)
        .bind(to_i64("bytes verified", figures.bytes_verified)?)
        .bind(figures.verify_secs)
        .bind(figures.read_back_sha256.map(|d| d.to_hex()))
        .bind(figures.verify_method.map(|m| m.as_str()))
        .bind(figures.verified_after_reset)
        .bind(attempt.0)
        .bind(to_i64("bytes skipped", figures.bytes_skipped)?)
        .bind(sample.map(|s| s.percent))
        .bind(sample.map(|s| s.seed.to_string()))
        .bind(
            sample
                .map(|s| to_i64("sample chunks checked", s.chunks_checked))
                .transpose()?,
        )
        .bind(
            sample
                .map(|s| to_i64("sample chunks total", s.chunks_total))
                .transpose()?,
        )
        .execute(&mut *self.tx)
        .await?;
        self.queue_attempt(now, attempt).await?;
        let event = EventRow {
            kind: EventKind::AttemptFinished,
            port_label: Some(running.port_label),
            device_id: Some(running.device),
            run_id: Some(running.run),
            attempt_id: Some(attempt),
            detail: json!(verdict),
        };
        self.log(now, &event).await?;
        Ok(())
    }

    async fn record_event(&mut self, event: &EventRow) -> Result<EventId, StoreError> {
        let now = self.clock.now_ms();
        self.log(now, event).await
    }

    async fn record_refusal(&mut self, refusal: &RefusalRow) -> Result<RefusalId, StoreError> {
        let now = self.clock.now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO refusals
                (station_id, at, run_id, device_id, port_label, port_path, capacity, code, message)
             SELECT ?, ?, ?, id, ?, ?, capacity, ?, ? FROM devices WHERE id = ?
             RETURNING id",
        )
        .bind(self.station.as_str())
        .bind(now)
        .bind(refusal.run_id.map(|id| id.0))
        .bind(&refusal.port_label)
        .bind(&refusal.port_path)
        .bind(refusal.refusal.code.as_str())
        .bind(&refusal.refusal.message)
        .bind(refusal.device_id.0)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(on_insert("a refusal"))?;
        let id = RefusalId(id.ok_or_else(|| StoreError::NotFound {
            what: "device",
            id: refusal.device_id.to_string(),
        })?);
        self.queue_refusal(now, id).await?;
        let event = EventRow {
            kind: EventKind::GuardRefused,
            port_label: Some(refusal.port_label.clone()),
            device_id: Some(refusal.device_id),
            run_id: refusal.run_id,
            attempt_id: None,
            detail: json!({
                "refusal_id": id,
                "port_path": refusal.port_path,
                "code": refusal.refusal.code,
                "message": refusal.refusal.message,
            }),
        };
        self.log(now, &event).await?;
        Ok(id)
    }

    async fn heartbeat(&mut self) -> Result<(), StoreError> {
        sqlx::query("UPDATE stations SET last_seen = ?2 WHERE id = ?1")
            .bind(self.station.as_str())
            .bind(self.clock.now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn record_progress(&mut self, running: &[RunningFigures]) -> Result<(), StoreError> {
        self.heartbeat().await?;
        let now = self.clock.now_ms();
        for figures in running {
            let done = sqlx::query(
                "UPDATE attempts SET bytes_written = MAX(bytes_written, ?1),
                        bytes_verified = MAX(bytes_verified, ?2)
                 WHERE id = ?3 AND station_id = ?4 AND state = 'running'",
            )
            .bind(to_i64("bytes written", figures.bytes_written)?)
            .bind(to_i64("bytes verified", figures.bytes_verified)?)
            .bind(figures.attempt.0)
            .bind(self.station.as_str())
            .execute(&mut *self.tx)
            .await?;
            if done.rows_affected() > 0 {
                self.queue_attempt(now, figures.attempt).await?;
            }
        }
        Ok(())
    }
}

/// Fails unless the run exists and is open.
async fn check_run_open(conn: &mut SqliteConnection, run: RunId) -> Result<(), StoreError> {
    let stopped: Option<Option<i64>> =
        sqlx::query_scalar("SELECT stopped_at FROM runs WHERE id = ?")
            .bind(run.0)
            .fetch_optional(&mut *conn)
            .await?;
    match stopped {
        None => Err(StoreError::NotFound {
            what: "run",
            id: run.to_string(),
        }),
        Some(Some(_)) => Err(StoreError::RunStopped { run }),
        Some(None) => Ok(()),
    }
}

/// What writing to a running attempt needs to know about it.
struct Running {
    run: RunId,
    device: DeviceId,
    port_label: String,
    stage: Stage,
}

/// Fails unless the attempt exists and is running.
async fn running_attempt(
    conn: &mut SqliteConnection,
    attempt: AttemptId,
) -> Result<Running, StoreError> {
    let row = sqlx::query(
        "SELECT state, stage, run_id, device_id, port_label FROM attempts WHERE id = ?",
    )
    .bind(attempt.0)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        what: "attempt",
        id: attempt.to_string(),
    })?;
    let state: AttemptState = row.try_get::<&str, _>("state")?.parse()?;
    if state != AttemptState::Running {
        return Err(StoreError::AttemptNotRunning { attempt, state });
    }
    Ok(Running {
        run: RunId(row.try_get("run_id")?),
        device: DeviceId(row.try_get("device_id")?),
        port_label: row.try_get("port_label")?,
        stage: parse_stage(row.try_get("stage")?)?,
    })
}
