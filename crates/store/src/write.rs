//! Everything the store writes, as named functions. Each runs inside a transaction:
//! on its own through the `Store` methods (one commit per call), or several in one
//! [`Batch`].

use flashrack_core::{AttemptFigures, FailReason, Failure, Sha256Digest, Stage, Verdict};
use serde_json::json;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, Sqlite, Transaction};

use crate::convert::{stage_str, to_i64, verify_method_str};
use crate::{
    AttemptId, AttemptState, DeviceId, DeviceRow, EventId, EventKind, EventRow, ImageRow, Recovery,
    RefusalId, RefusalRow, RunId, RunningFigures, StopReason, Store, StoreError,
};

/// Who writes and when: the same for every statement of one transaction.
pub(crate) struct Ctx<'a> {
    pub(crate) station: &'a str,
    pub(crate) now: i64,
}

/// Several writes committed together: all of them or none.
///
/// A batch holds the store's only write connection until it is committed or dropped
/// (dropping rolls it back), so other writes wait for it: keep batches short. Each
/// write is stamped with the clock's time when the write is made.
#[derive(Debug)]
pub struct Batch<'s> {
    /// The store, for its station and clock.
    store: &'s Store,
    /// The open transaction on the write connection.
    tx: Transaction<'static, Sqlite>,
}

impl Store {
    /// Starts a [`Batch`].
    pub async fn batch(&self) -> Result<Batch<'_>, StoreError> {
        Ok(Batch {
            store: self,
            tx: self.writer.begin().await?,
        })
    }

    /// Records an imported image, or updates its name and format if its sha256 is
    /// already recorded (the first import time is kept).
    pub async fn record_image(&self, image: &ImageRow) -> Result<(), StoreError> {
        let mut batch = self.batch().await?;
        batch.record_image(image).await?;
        batch.commit().await
    }

    /// Starts a run of a recorded image with `options` (a JSON object: verify mode,
    /// eject on pass, target count …). Fails with [`StoreError::NotFound`] if the
    /// image was never recorded.
    pub async fn start_run(
        &self,
        image_sha256: Sha256Digest,
        image_name: &str,
        options: &serde_json::Value,
    ) -> Result<RunId, StoreError> {
        let mut batch = self.batch().await?;
        let id = batch.start_run(image_sha256, image_name, options).await?;
        batch.commit().await?;
        Ok(id)
    }

    /// Stops a run; it takes no new attempts afterwards. Attempts still running carry
    /// on and are finished as usual.
    pub async fn stop_run(&self, run: RunId, reason: StopReason) -> Result<(), StoreError> {
        let mut batch = self.batch().await?;
        batch.stop_run(run, reason).await?;
        batch.commit().await
    }

    /// Records a device by its [key](DeviceRow::key): inserts it, or updates its
    /// identity fields, capacity and last-seen time.
    pub async fn upsert_device(&self, device: &DeviceRow) -> Result<DeviceId, StoreError> {
        let mut batch = self.batch().await?;
        let id = batch.upsert_device(device).await?;
        batch.commit().await?;
        Ok(id)
    }

    /// Records that an attempt starts: call it, and await it, before the first byte
    /// is written. The attempt is `running` in stage `preparing`, with the device's
    /// recorded capacity. The run must be open.
    pub async fn start_attempt(
        &self,
        run: RunId,
        device: DeviceId,
        port_label: &str,
        port_path: &str,
    ) -> Result<AttemptId, StoreError> {
        let mut batch = self.batch().await?;
        let id = batch
            .start_attempt(run, device, port_label, port_path)
            .await?;
        batch.commit().await?;
        Ok(id)
    }

    /// Records that a running attempt entered `stage`, and logs it.
    pub async fn attempt_stage(&self, attempt: AttemptId, stage: Stage) -> Result<(), StoreError> {
        let mut batch = self.batch().await?;
        batch.attempt_stage(attempt, stage).await?;
        batch.commit().await
    }

    /// Records a running attempt's verdict and figures; durable when this returns, so
    /// show the verdict only afterwards. A failure with reason
    /// [`Interrupted`](FailReason::Interrupted) or
    /// [`StationError`](FailReason::StationError) (the station's side, not the
    /// stick's) makes the attempt `interrupted`, any other failure `failed`.
    pub async fn finish_attempt(
        &self,
        attempt: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), StoreError> {
        let mut batch = self.batch().await?;
        batch.finish_attempt(attempt, verdict, figures).await?;
        batch.commit().await
    }

    /// Appends an entry to the event log (guard refusals, operator actions, ports and
    /// devices coming and going).
    pub async fn record_event(&self, event: &EventRow) -> Result<EventId, StoreError> {
        let mut batch = self.batch().await?;
        let id = batch.record_event(event).await?;
        batch.commit().await?;
        Ok(id)
    }

    /// Notes that the station is alive. Call it now and then (every minute or so)
    /// while attempts run: after a crash, their end is recorded as the last moment
    /// the station was known alive, and a heartbeat makes that moment precise.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE stations SET last_seen = ?2 WHERE id = ?1")
            .bind(self.station.as_str())
            .bind(self.now())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A [`heartbeat`](Self::heartbeat) that also records how far this station's
    /// running attempts have got: the bytes each target acknowledged, and the
    /// bytes read back. One commit for all of them; call it every few seconds,
    /// not per progress tick. Counts never go down, and attempts that are no
    /// longer running (or belong to another station) are left alone. After a
    /// crash, [`recover_interrupted`](Self::recover_interrupted) keeps the last
    /// recorded count as a lower bound.
    pub async fn record_progress(&self, running: &[RunningFigures]) -> Result<(), StoreError> {
        let now = self.now();
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE stations SET last_seen = ?2 WHERE id = ?1")
            .bind(self.station.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for figures in running {
            sqlx::query(
                "UPDATE attempts SET bytes_written = MAX(bytes_written, ?1),
                        bytes_verified = MAX(bytes_verified, ?2)
                 WHERE id = ?3 AND station_id = ?4 AND state = 'running'",
            )
            .bind(to_i64("bytes written", figures.bytes_written)?)
            .bind(to_i64("bytes verified", figures.bytes_verified)?)
            .bind(figures.attempt.0)
            .bind(self.station.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that the target guard refused a device before any attempt
    /// (nothing was written), with the device's capacity as recorded, and logs
    /// it. A refusal at the moment of opening is the attempt's verdict instead
    /// ([`finish_attempt`](Self::finish_attempt) with reason `refused`).
    pub async fn record_refusal(&self, refusal: &RefusalRow) -> Result<RefusalId, StoreError> {
        let mut batch = self.batch().await?;
        let id = batch.record_refusal(refusal).await?;
        batch.commit().await?;
        Ok(id)
    }

    /// Cleans up after a crash or power loss; call it once at start-up, after
    /// [`open`](Self::open) and before starting any attempt.
    ///
    /// Every attempt of this station left `running` by an earlier session becomes
    /// `interrupted` (a failure with reason `interrupted` in the stage it had
    /// reached), and every run of this station left open is stopped with reason
    /// [`StopReason::Interrupted`]: a station that went down unexpectedly comes back
    /// disarmed, and the operator arms it again — writing sticks on its own after a
    /// power cut is the kind of surprise auto-start must not have.
    ///
    /// The time recorded as their end is when the station was last known alive: the
    /// latest timestamp among its records and heartbeats as they were at open
    /// (never before the attempt's or run's own start). Only if there is no such
    /// time, which cannot happen for a recorded attempt, is the current time used.
    /// Records of other stations sharing the database, and records this session has
    /// made since open, are never touched.
    pub async fn recover_interrupted(&self) -> Result<Recovery, StoreError> {
        let now = self.now();
        let ctx = Ctx {
            station: self.station.as_str(),
            now,
        };
        let mut tx = self.writer.begin().await?;
        let recovery = recover(&mut tx, &ctx, self.previous).await?;
        tx.commit().await?;
        if !recovery.attempts.is_empty() || !recovery.runs.is_empty() {
            tracing::warn!(
                attempts = recovery.attempts.len(),
                runs = recovery.runs.len(),
                presumed_crash_at = recovery.presumed_crash_at,
                "recorded work left unfinished by the previous session as interrupted"
            );
        }
        Ok(recovery)
    }
}

impl<'s> Batch<'s> {
    fn ctx(&self) -> Ctx<'s> {
        let store: &'s Store = self.store;
        Ctx {
            station: store.station.as_str(),
            now: self.store.now(),
        }
    }

    /// Commits every write of the batch, durably.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// As [`Store::record_image`].
    pub async fn record_image(&mut self, image: &ImageRow) -> Result<(), StoreError> {
        let ctx = self.ctx();
        record_image(&mut self.tx, &ctx, image).await
    }

    /// As [`Store::start_run`].
    pub async fn start_run(
        &mut self,
        image_sha256: Sha256Digest,
        image_name: &str,
        options: &serde_json::Value,
    ) -> Result<RunId, StoreError> {
        let ctx = self.ctx();
        start_run(&mut self.tx, &ctx, image_sha256, image_name, options).await
    }

    /// As [`Store::stop_run`].
    pub async fn stop_run(&mut self, run: RunId, reason: StopReason) -> Result<(), StoreError> {
        let ctx = self.ctx();
        stop_run(&mut self.tx, &ctx, run, reason).await
    }

    /// As [`Store::upsert_device`].
    pub async fn upsert_device(&mut self, device: &DeviceRow) -> Result<DeviceId, StoreError> {
        let ctx = self.ctx();
        upsert_device(&mut self.tx, &ctx, device).await
    }

    /// As [`Store::start_attempt`]; durable only once the batch is committed.
    pub async fn start_attempt(
        &mut self,
        run: RunId,
        device: DeviceId,
        port_label: &str,
        port_path: &str,
    ) -> Result<AttemptId, StoreError> {
        let ctx = self.ctx();
        start_attempt(&mut self.tx, &ctx, run, device, port_label, port_path).await
    }

    /// As [`Store::attempt_stage`].
    pub async fn attempt_stage(
        &mut self,
        attempt: AttemptId,
        stage: Stage,
    ) -> Result<(), StoreError> {
        let ctx = self.ctx();
        attempt_stage(&mut self.tx, &ctx, attempt, stage).await
    }

    /// As [`Store::finish_attempt`]; durable only once the batch is committed.
    pub async fn finish_attempt(
        &mut self,
        attempt: AttemptId,
        verdict: &Verdict,
        figures: &AttemptFigures,
    ) -> Result<(), StoreError> {
        let ctx = self.ctx();
        finish_attempt(&mut self.tx, &ctx, attempt, verdict, figures).await
    }

    /// As [`Store::record_event`].
    pub async fn record_event(&mut self, event: &EventRow) -> Result<EventId, StoreError> {
        let ctx = self.ctx();
        record_event(&mut self.tx, &ctx, event).await
    }

    /// As [`Store::record_refusal`]; durable only once the batch is committed.
    pub async fn record_refusal(&mut self, refusal: &RefusalRow) -> Result<RefusalId, StoreError> {
        let ctx = self.ctx();
        record_refusal(&mut self.tx, &ctx, refusal).await
    }
}

async fn record_refusal(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    refusal: &RefusalRow,
) -> Result<RefusalId, StoreError> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO refusals
            (station_id, at, run_id, device_id, port_label, port_path, capacity, code, message)
         SELECT ?, ?, ?, id, ?, ?, capacity, ?, ? FROM devices WHERE id = ?
         RETURNING id",
    )
    .bind(ctx.station)
    .bind(ctx.now)
    .bind(refusal.run_id.map(|id| id.0))
    .bind(&refusal.port_label)
    .bind(&refusal.port_path)
    .bind(refusal.refusal.code.as_str())
    .bind(&refusal.refusal.message)
    .bind(refusal.device_id.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::on_insert("a refusal"))?;
    let id = RefusalId(id.ok_or_else(|| StoreError::NotFound {
        what: "device",
        id: refusal.device_id.to_string(),
    })?);
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
    record_event(conn, ctx, &event).await?;
    Ok(id)
}

pub(crate) async fn record_event(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    event: &EventRow,
) -> Result<EventId, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (station_id, at, kind, port_label, device_id, run_id, attempt_id, detail)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(ctx.station)
    .bind(ctx.now)
    .bind(event.kind.as_str())
    .bind(event.port_label.as_deref())
    .bind(event.device_id.map(|id| id.0))
    .bind(event.run_id.map(|id| id.0))
    .bind(event.attempt_id.map(|id| id.0))
    .bind(event.detail.to_string())
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::on_insert("an event"))?;
    Ok(EventId(id))
}

async fn record_image(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    image: &ImageRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO images (sha256, name, size, format, imported_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (sha256) DO UPDATE SET name = excluded.name, format = excluded.format",
    )
    .bind(image.sha256.to_hex())
    .bind(&image.name)
    .bind(to_i64("image size", image.size.bytes())?)
    .bind(&image.format)
    .bind(image.imported_at)
    .execute(&mut *conn)
    .await?;
    let event = EventRow::new(
        EventKind::ImageRecorded,
        json!({ "sha256": image.sha256, "name": image.name, "size": image.size }),
    );
    record_event(conn, ctx, &event).await?;
    Ok(())
}

async fn start_run(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    image_sha256: Sha256Digest,
    image_name: &str,
    options: &serde_json::Value,
) -> Result<RunId, StoreError> {
    let sha = image_sha256.to_hex();
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM images WHERE sha256 = ?")
        .bind(&sha)
        .fetch_optional(&mut *conn)
        .await?;
    if known.is_none() {
        return Err(StoreError::NotFound {
            what: "image",
            id: sha,
        });
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (station_id, image_sha256, image_name, options, started_at)
         VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(ctx.station)
    .bind(&sha)
    .bind(image_name)
    .bind(options.to_string())
    .bind(ctx.now)
    .fetch_one(&mut *conn)
    .await?;
    let run = RunId(id);
    let mut event = EventRow::new(
        EventKind::RunStarted,
        json!({ "image_sha256": sha, "image_name": image_name, "options": options }),
    );
    event.run_id = Some(run);
    record_event(conn, ctx, &event).await?;
    Ok(run)
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

async fn stop_run(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    run: RunId,
    reason: StopReason,
) -> Result<(), StoreError> {
    check_run_open(conn, run).await?;
    sqlx::query("UPDATE runs SET stopped_at = ?, stop_reason = ? WHERE id = ?")
        .bind(ctx.now)
        .bind(reason.code())
        .bind(run.0)
        .execute(&mut *conn)
        .await?;
    let mut event = EventRow::new(EventKind::RunStopped, json!({ "reason": reason }));
    event.run_id = Some(run);
    record_event(conn, ctx, &event).await?;
    Ok(())
}

async fn upsert_device(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    device: &DeviceRow,
) -> Result<DeviceId, StoreError> {
    use crate::model::non_blank;
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
    .bind(ctx.now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(DeviceId(id))
}

async fn start_attempt(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    run: RunId,
    device: DeviceId,
    port_label: &str,
    port_path: &str,
) -> Result<AttemptId, StoreError> {
    check_run_open(conn, run).await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO attempts (station_id, run_id, device_id, port_label, port_path, started_at,
                               capacity, bytes_written_bound)
         SELECT ?, ?, id, ?, ?, ?, capacity, 'lower_bound' FROM devices WHERE id = ?
         RETURNING id",
    )
    .bind(ctx.station)
    .bind(run.0)
    .bind(port_label)
    .bind(port_path)
    .bind(ctx.now)
    .bind(device.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::on_insert("an attempt"))?;
    let attempt = AttemptId(id.ok_or_else(|| StoreError::NotFound {
        what: "device",
        id: device.to_string(),
    })?);
    let event = EventRow {
        kind: EventKind::AttemptStarted,
        port_label: Some(port_label.to_string()),
        device_id: Some(device),
        run_id: Some(run),
        attempt_id: Some(attempt),
        detail: json!({ "port_path": port_path }),
    };
    record_event(conn, ctx, &event).await?;
    Ok(attempt)
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
        stage: crate::convert::parse_stage(row.try_get("stage")?)?,
    })
}

async fn attempt_stage(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    attempt: AttemptId,
    stage: Stage,
) -> Result<(), StoreError> {
    let running = running_attempt(conn, attempt).await?;
    sqlx::query("UPDATE attempts SET stage = ? WHERE id = ?")
        .bind(stage_str(stage))
        .bind(attempt.0)
        .execute(&mut *conn)
        .await?;
    let event = EventRow {
        kind: EventKind::StageChanged,
        port_label: Some(running.port_label),
        device_id: Some(running.device),
        run_id: Some(running.run),
        attempt_id: Some(attempt),
        detail: json!({ "stage": stage }),
    };
    record_event(conn, ctx, &event).await?;
    Ok(())
}

async fn finish_attempt(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    attempt: AttemptId,
    verdict: &Verdict,
    figures: &AttemptFigures,
) -> Result<(), StoreError> {
    let running = running_attempt(conn, attempt).await?;
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
            verify_secs = ?13, read_back_sha256 = ?14, verify_method = ?15
         WHERE id = ?16",
    )
    .bind(ctx.now)
    .bind(state.as_str())
    .bind(stage_str(stage))
    .bind(failure.map(|f| f.reason.code()))
    .bind(failure.map(|f| f.reason.to_string()))
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
    .bind(figures.verify_method.map(verify_method_str))
    .bind(attempt.0)
    .execute(&mut *conn)
    .await?;
    let event = EventRow {
        kind: EventKind::AttemptFinished,
        port_label: Some(running.port_label),
        device_id: Some(running.device),
        run_id: Some(running.run),
        attempt_id: Some(attempt),
        detail: json!(verdict),
    };
    record_event(conn, ctx, &event).await?;
    Ok(())
}

async fn recover(
    conn: &mut SqliteConnection,
    ctx: &Ctx<'_>,
    previous: crate::store::PreviousSession,
) -> Result<Recovery, StoreError> {
    let crash_at = previous.last_alive.unwrap_or(ctx.now);
    let mut recovery = Recovery::default();

    let rows = sqlx::query(
        "SELECT id, stage, run_id, device_id, port_label, started_at FROM attempts
         WHERE station_id = ? AND state = 'running' AND id <= ? ORDER BY id",
    )
    .bind(ctx.station)
    .bind(previous.last_attempt)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let attempt = AttemptId(row.try_get("id")?);
        let stage = crate::convert::parse_stage(row.try_get("stage")?)?;
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
        .execute(&mut *conn)
        .await?;
        let event = EventRow {
            kind: EventKind::AttemptInterrupted,
            port_label: Some(row.try_get("port_label")?),
            device_id: Some(DeviceId(row.try_get("device_id")?)),
            run_id: Some(RunId(row.try_get("run_id")?)),
            attempt_id: Some(attempt),
            detail: json!({ "stage": stage, "presumed_crash_at": finished_at }),
        };
        record_event(conn, ctx, &event).await?;
        recovery.attempts.push(attempt);
    }

    let runs = sqlx::query(
        "SELECT id, started_at FROM runs
         WHERE station_id = ? AND stopped_at IS NULL AND id <= ? ORDER BY id",
    )
    .bind(ctx.station)
    .bind(previous.last_run)
    .fetch_all(&mut *conn)
    .await?;
    for row in runs {
        let run = RunId(row.try_get("id")?);
        let stopped_at = crash_at.max(row.try_get("started_at")?);
        sqlx::query("UPDATE runs SET stopped_at = ?, stop_reason = ? WHERE id = ?")
            .bind(stopped_at)
            .bind(StopReason::Interrupted.code())
            .bind(run.0)
            .execute(&mut *conn)
            .await?;
        let mut event = EventRow::new(
            EventKind::RunStopped,
            json!({ "reason": StopReason::Interrupted, "presumed_crash_at": stopped_at }),
        );
        event.run_id = Some(run);
        record_event(conn, ctx, &event).await?;
        recovery.runs.push(run);
    }

    if !recovery.attempts.is_empty() || !recovery.runs.is_empty() {
        recovery.presumed_crash_at = Some(crash_at);
    }
    Ok(recovery)
}
