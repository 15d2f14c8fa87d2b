//! [`Records`] for the SQLite store: the write transaction, start-up recovery,
//! and every query, on the read-only connections.

use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, Failure, Provenance, Sha256Digest, Verdict,
    VerifySample,
};
use flashrack_report::{rows_in_order, ImageOrigin};
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row};

use super::writes::SqliteWrites;
use crate::backend::BoxFuture;
use crate::convert::{parse_bound, parse_refusal_code, parse_stage, parse_verify_method, to_u64};
use crate::{
    AttemptId, AttemptRecord, AttemptState, Batch, Counts, DeviceId, DeviceRecord, DeviceReport,
    DeviceSummary, Event, EventId, EventKind, EventRow, ImageRow, ImageSource, Records, Recovery,
    RefusalId, ReportRow, ReportVerdict, Run, RunFacts, RunId, RunReport, RunSummary, Store,
    StoreError,
};

/// The columns of a run with its counts; `FROM runs r LEFT JOIN attempts a`. An
/// attempt refused at the moment of opening counts as refused, not failed; the
/// refusals made before any attempt are counted from their own table.
const RUN_SUMMARY: &str = "SELECT r.id, r.station_id, r.image_sha256, r.image_name, r.options,
        r.started_at, r.stopped_at, r.stop_reason, r.stop_detail, i.size AS image_size,
        i.source_name, i.source_sha256, i.source_size, i.format AS image_format,
        COUNT(a.id) AS attempts,
        SUM(CASE WHEN a.state = 'passed' THEN 1 ELSE 0 END) AS passed,
        SUM(CASE WHEN a.state = 'failed' AND a.reason_code <> 'refused' THEN 1 ELSE 0 END)
            AS failed,
        SUM(CASE WHEN a.state = 'failed' AND a.reason_code = 'refused' THEN 1 ELSE 0 END)
            + (SELECT COUNT(*) FROM refusals f WHERE f.run_id = r.id) AS refused,
        SUM(CASE WHEN a.state = 'interrupted' THEN 1 ELSE 0 END) AS interrupted,
        SUM(CASE WHEN a.state = 'running' THEN 1 ELSE 0 END) AS running
    FROM runs r JOIN images i ON i.sha256 = r.image_sha256
    LEFT JOIN attempts a ON a.run_id = r.id";

/// The columns of an attempt's report row; `WHERE` and `ORDER BY` follow.
const REPORT_ROW: &str = "SELECT a.id, a.station_id, a.run_id, a.port_label, a.port_path,
        d.key, d.serial, d.vendor, d.model, r.image_name, r.image_sha256,
        a.started_at, a.finished_at, a.state, a.stage, a.reason_code, a.reason_detail,
        a.fail_offset, a.failure, a.capacity, a.bytes_written, a.bytes_written_bound,
        a.write_secs, a.bytes_verified, a.verify_secs, a.read_back_sha256, a.verify_method,
        a.verified_after_reset, a.bytes_skipped, a.sample_percent, a.sample_seed,
        a.sample_chunks_checked, a.sample_chunks_total, r.options, r.stop_reason, r.stop_detail,
        i.size AS image_size, i.source_name, i.source_sha256,
        i.source_size, i.format AS image_format
    FROM attempts a
    JOIN devices d ON d.id = a.device_id
    JOIN runs r ON r.id = a.run_id
    LEFT JOIN images i ON i.sha256 = r.image_sha256";

/// The columns of a refusal's report row; `WHERE` and `ORDER BY` follow.
const REFUSAL_ROW: &str = "SELECT f.id, f.station_id, f.run_id, f.port_label, f.port_path,
        d.key, d.serial, d.vendor, d.model, r.image_name, r.image_sha256,
        f.at, f.capacity, f.code, f.message,
        r.options, r.stop_reason, r.stop_detail, i.size AS image_size, i.source_name,
        i.source_sha256, i.source_size, i.format AS image_format
    FROM refusals f
    JOIN devices d ON d.id = f.device_id
    LEFT JOIN runs r ON r.id = f.run_id
    LEFT JOIN images i ON i.sha256 = r.image_sha256";

/// The columns of an attempt record.
pub(super) const ATTEMPT: &str = "SELECT id, station_id, run_id, device_id, port_label, port_path,
        started_at, finished_at, state, stage, failure, capacity, bytes_written,
        bytes_written_bound, write_secs, bytes_verified, verify_secs, read_back_sha256,
        verify_method, verified_after_reset, bytes_skipped, sample_percent, sample_seed,
        sample_chunks_checked, sample_chunks_total
    FROM attempts";

/// The columns of an image record.
pub(super) const IMAGE: &str = "SELECT sha256, name, size, format, imported_at, source_name,
        source_sha256, source_size, inspection, provenance
    FROM images";

pub(super) const DEVICE: &str =
    "SELECT id, key, serial, vendor, model, capacity, first_seen, last_seen
    FROM devices";

pub(super) const EVENT: &str =
    "SELECT id, station_id, at, kind, port_label, device_id, run_id, attempt_id,
        detail
    FROM events";

impl Store {
    /// [`Records::recover_interrupted`] for every station id whose work the
    /// database holds unfinished, not only this store's: for a caller that
    /// holds the data directory's lock, so that no other process records in
    /// this database. A one-shot `flash` records as `station-1`, the demo as
    /// `demo`, a station as its configured id; whichever of them opens the
    /// data directory next closes what a killed one left, instead of leaving
    /// it `running` for good when that id never comes back. Each station's
    /// work ends when that station was last known alive.
    pub async fn recover_interrupted_of_every_station(&self) -> Result<Recovery, StoreError> {
        self.recover(self.previous.clone()).await
    }

    /// Closes the unfinished work of the stations in `previous`.
    async fn recover(
        &self,
        previous: Vec<(String, super::store::PreviousSession)>,
    ) -> Result<Recovery, StoreError> {
        let recovery = self
            .write(|batch| Box::pin(batch.recover(previous)))
            .await?;
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

impl Records for Store {
    type Writes = SqliteWrites;

    fn station_id(&self) -> &str {
        self.station.as_str()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn write<'s, T, F>(&'s self, f: F) -> Result<T, StoreError>
    where
        T: Send + 's,
        F: for<'b> FnOnce(&'b mut Batch<'s, SqliteWrites>) -> BoxFuture<'b, Result<T, StoreError>>
            + Send
            + 's,
    {
        let tx = self.writer.begin().await?;
        let mut batch = Batch::new(SqliteWrites::new(
            tx,
            self.station.clone(),
            self.clock.clone(),
            self.outbox.load(std::sync::atomic::Ordering::SeqCst),
        ));
        // On an error the batch is dropped here, and with it the transaction,
        // which rolls back.
        let value = f(&mut batch).await?;
        batch.into_writes().commit().await?;
        Ok(value)
    }

    async fn recover_interrupted(&self) -> Result<Recovery, StoreError> {
        let own = self
            .previous
            .iter()
            .filter(|(station, _)| *station == self.station.as_str())
            .cloned()
            .collect();
        self.recover(own).await
    }

    async fn list_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!("{RUN_SUMMARY} GROUP BY r.id ORDER BY r.started_at DESC, r.id DESC");
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await?;
        rows.iter().map(run_summary).collect()
    }

    async fn run(&self, run: RunId) -> Result<Option<RunSummary>, StoreError> {
        let sql = format!("{RUN_SUMMARY} WHERE r.id = ? GROUP BY r.id");
        let row = sqlx::query(&sql)
            .bind(run.0)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(run_summary).transpose()
    }

    async fn active_run(&self) -> Result<Option<RunSummary>, StoreError> {
        let sql = format!(
            "{RUN_SUMMARY} WHERE r.station_id = ? AND r.stopped_at IS NULL
             GROUP BY r.id ORDER BY r.started_at DESC, r.id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(self.station_id())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(run_summary).transpose()
    }

    async fn run_report(&self, run: RunId) -> Result<Option<RunReport>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let mut tx = conn.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT r.id, r.station_id, r.image_sha256, r.image_name, r.options, r.started_at,
                    r.stopped_at, r.stop_reason, r.stop_detail, i.size AS image_size, i.source_name,
                    i.source_sha256, i.source_size, i.format AS image_format
             FROM runs r LEFT JOIN images i ON i.sha256 = r.image_sha256 WHERE r.id = ?",
        )
        .bind(run.0)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let run_record = run_with_image(&row)?;
        let sql = format!("{REPORT_ROW} WHERE a.run_id = ? ORDER BY a.id");
        let attempts = sqlx::query(&sql)
            .bind(run.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(report_row)
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!("{REFUSAL_ROW} WHERE f.run_id = ? ORDER BY f.id");
        let refusals = sqlx::query(&sql)
            .bind(run.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(refusal_row)
            .collect::<Result<Vec<_>, _>>()?;
        let image_provenance = image_provenance(&mut tx, run_record.image_sha256).await?;
        tx.commit().await?;
        let rows = rows_in_order(attempts, refusals);
        let counts = Counts::of(&rows);
        // What the image is, when it was recorded with its inspection (an
        // inspection this build cannot read is left out of the report).
        let image: Option<String> =
            sqlx::query_scalar("SELECT inspection FROM images WHERE sha256 = ?")
                .bind(run_record.image_sha256.to_hex())
                .fetch_optional(&self.reader)
                .await?
                .flatten();
        let image = image.and_then(|text| serde_json::from_str(&text).ok());
        Ok(Some(RunReport {
            run: RunSummary {
                run: run_record,
                counts,
            },
            image_provenance,
            rows,
            image,
        }))
    }

    async fn attempt(&self, attempt: AttemptId) -> Result<Option<AttemptRecord>, StoreError> {
        let sql = format!("{ATTEMPT} WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(attempt.0)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(attempt_record).transpose()
    }

    async fn running_attempts(&self) -> Result<Vec<AttemptRecord>, StoreError> {
        let sql = format!("{ATTEMPT} WHERE station_id = ? AND state = 'running' ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(self.station_id())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(attempt_record).collect()
    }

    async fn device(&self, serial_or_key: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let sql =
            format!("{DEVICE} WHERE key = ?1 OR serial = ?1 ORDER BY key = ?1 DESC, id LIMIT 1");
        let row = sqlx::query(&sql)
            .bind(serial_or_key)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(device_record).transpose()
    }

    async fn devices(&self, limit: u32) -> Result<Vec<DeviceRecord>, StoreError> {
        let sql = format!("{DEVICE} ORDER BY last_seen DESC, id DESC LIMIT ?1");
        let rows = sqlx::query(&sql)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(device_record).collect()
    }

    async fn device_summaries(&self, limit: u32) -> Result<Vec<DeviceSummary>, StoreError> {
        // The latest attempt of each device by a correlated subquery on the
        // device index; the count likewise.
        let sql = "SELECT d.id, d.key, d.serial, d.vendor, d.model, d.capacity, d.first_seen,
                d.last_seen,
                (SELECT COUNT(*) FROM attempts c WHERE c.device_id = d.id) AS attempts,
                l.state AS last_state, l.reason_code AS last_reason_code,
                l.port_label AS last_port, l.started_at AS last_at
            FROM devices d
            LEFT JOIN attempts l ON l.id =
                (SELECT MAX(m.id) FROM attempts m WHERE m.device_id = d.id)
            ORDER BY d.last_seen DESC, d.id DESC LIMIT ?1";
        let rows = sqlx::query(sql)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let state: Option<&str> = row.try_get("last_state")?;
                let reason_code: Option<String> = row.try_get("last_reason_code")?;
                let last_verdict = state
                    .map(|state| -> Result<ReportVerdict, StoreError> {
                        Ok(verdict_of(state.parse()?, reason_code.as_deref()))
                    })
                    .transpose()?;
                Ok(DeviceSummary {
                    device: device_record(row)?,
                    attempts: to_u64("attempts", row.try_get("attempts")?)?,
                    last_verdict,
                    last_reason_code: reason_code,
                    last_port: row.try_get("last_port")?,
                    last_at: row.try_get("last_at")?,
                })
            })
            .collect()
    }

    async fn port_history(&self, per_port: u32) -> Result<Vec<ReportRow>, StoreError> {
        let sql = format!(
            "{REPORT_ROW} WHERE a.id IN (
                SELECT id FROM (
                    SELECT id, ROW_NUMBER() OVER (PARTITION BY port_label ORDER BY id DESC) AS n
                    FROM attempts WHERE station_id = ?1 AND state <> 'running'
                ) WHERE n <= ?2
            ) ORDER BY a.port_label, a.id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(self.station_id())
            .bind(i64::from(per_port))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(report_row).collect()
    }

    async fn device_report(&self, serial_or_key: &str) -> Result<Option<DeviceReport>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let mut tx = conn.begin().await?;
        let sql =
            format!("{DEVICE} WHERE key = ?1 OR serial = ?1 ORDER BY key = ?1 DESC, id LIMIT 1");
        let Some(row) = sqlx::query(&sql)
            .bind(serial_or_key)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let device = device_record(&row)?;
        let sql = format!("{REPORT_ROW} WHERE a.device_id = ? ORDER BY a.started_at, a.id");
        let attempts = sqlx::query(&sql)
            .bind(device.id.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(report_row)
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!("{REFUSAL_ROW} WHERE f.device_id = ? ORDER BY f.at, f.id");
        let refusals = sqlx::query(&sql)
            .bind(device.id.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(refusal_row)
            .collect::<Result<Vec<_>, _>>()?;
        let rows = rows_in_order(attempts, refusals);
        let mut image_origins: Vec<ImageOrigin> = Vec::new();
        for row in &rows {
            let Some(sha256) = row.image_sha256 else {
                continue;
            };
            if image_origins.iter().any(|s| s.sha256 == sha256) {
                continue;
            }
            if let Some(provenance) = image_provenance(&mut tx, sha256).await? {
                image_origins.push(ImageOrigin {
                    sha256,
                    name: row.image_name.clone().unwrap_or_default(),
                    provenance,
                });
            }
        }
        tx.commit().await?;
        let counts = Counts::of(&rows);
        Ok(Some(DeviceReport {
            device,
            counts,
            rows,
            image_origins,
        }))
    }

    async fn image(&self, sha256: Sha256Digest) -> Result<Option<ImageRow>, StoreError> {
        let row = sqlx::query(&format!("{IMAGE} WHERE sha256 = ?"))
            .bind(sha256.to_hex())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(image_row).transpose()
    }

    async fn images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query(&format!("{IMAGE} ORDER BY imported_at DESC, sha256"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(image_row).collect()
    }

    async fn recent_events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        let sql = format!(
            "SELECT * FROM ({EVENT} WHERE station_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(self.station_id())
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event).collect()
    }

    async fn attempt_events(&self, attempt: AttemptId) -> Result<Vec<Event>, StoreError> {
        let sql = format!("{EVENT} WHERE attempt_id = ? ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(attempt.0)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event).collect()
    }
}

pub(super) fn digest(column: &'static str, text: &str) -> Result<Sha256Digest, StoreError> {
    Sha256Digest::parse(text).map_err(|_| StoreError::BadValue {
        column,
        value: text.to_string(),
    })
}

pub(super) fn json(column: &'static str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::BadValue {
        column,
        value: text.to_string(),
    })
}

fn count_column(row: &SqliteRow, column: &'static str) -> Result<u64, StoreError> {
    // SUM over no rows is NULL.
    let value: Option<i64> = row.try_get(column)?;
    to_u64(column, value.unwrap_or(0))
}

pub(super) fn run_columns(row: &SqliteRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: RunId(row.try_get("id")?),
        station_id: row.try_get("station_id")?,
        image_sha256: digest("runs.image_sha256", row.try_get("image_sha256")?)?,
        image_name: row.try_get("image_name")?,
        options: json("runs.options", row.try_get("options")?)?,
        started_at: row.try_get("started_at")?,
        stopped_at: row.try_get("stopped_at")?,
        stop_reason: row
            .try_get::<Option<&str>, _>("stop_reason")?
            .map(|text| {
                text.parse().map_err(|_| StoreError::BadValue {
                    column: "runs.stop_reason",
                    value: text.to_string(),
                })
            })
            .transpose()?,
        stop_detail: row.try_get("stop_detail")?,
        // Filled by `run_with_image` from a query that joins the image.
        image_size: None,
        image_source: None,
        image_imported: true,
    })
}

/// The image's size and source from a row that selected them (`image_size`,
/// `source_name`, `source_sha256`, `source_size`, `image_format`; NULL where
/// not known). The size of an image never imported is only what was known
/// when its run started (none when that was 0: not known).
fn image_facts(row: &SqliteRow) -> Result<(Option<ByteSize>, Option<ImageSource>), StoreError> {
    let size = row
        .try_get::<Option<i64>, _>("image_size")?
        .map(|s| to_u64("images.size", s).map(ByteSize))
        .transpose()?
        .filter(|size| !(image_pending(row).unwrap_or(false) && size.bytes() == 0));
    Ok((size, image_source(row)?))
}

/// Whether a row's run image is the provisional row of an import that has
/// not ended (format `pending`, see `StoreRecords::run_started_provisional`):
/// its digest is then a placeholder, the digest of no image.
fn image_pending(row: &SqliteRow) -> Result<bool, StoreError> {
    Ok(row.try_get::<Option<&str>, _>("image_format")? == Some(crate::PENDING_IMAGE_FORMAT))
}

/// A run with its image's size and source (see [`image_facts`]).
fn run_with_image(row: &SqliteRow) -> Result<Run, StoreError> {
    let (image_size, image_source) = image_facts(row)?;
    Ok(Run {
        image_size,
        image_source,
        image_imported: !image_pending(row)?,
        ..run_columns(row)?
    })
}

/// A report row's image digest: none without a run, or when the run's image
/// was never imported (see [`image_pending`]).
fn row_image_digest(row: &SqliteRow) -> Result<Option<Sha256Digest>, StoreError> {
    if image_pending(row)? {
        return Ok(None);
    }
    row.try_get::<Option<&str>, _>("image_sha256")?
        .map(|text| digest("runs.image_sha256", text))
        .transpose()
}

/// What a report row's run says about it, from a row that selected the run's
/// `options` and `stop_reason` and its image's facts (all NULL without a run).
fn run_facts(row: &SqliteRow) -> Result<RunFacts, StoreError> {
    let (image_size, image_source) = image_facts(row)?;
    Ok(RunFacts {
        options: row
            .try_get::<Option<&str>, _>("options")?
            .map(|text| json("runs.options", text))
            .transpose()?,
        stop_reason: row
            .try_get::<Option<&str>, _>("stop_reason")?
            .map(|text| {
                text.parse().map_err(|_| StoreError::BadValue {
                    column: "runs.stop_reason",
                    value: text.to_string(),
                })
            })
            .transpose()?,
        stop_detail: row.try_get("stop_detail")?,
        image_size,
        image_source,
    })
}

fn run_summary(row: &SqliteRow) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        run: run_with_image(row)?,
        counts: Counts {
            attempts: count_column(row, "attempts")?,
            passed: count_column(row, "passed")?,
            failed: count_column(row, "failed")?,
            refused: count_column(row, "refused")?,
            interrupted: count_column(row, "interrupted")?,
            running: count_column(row, "running")?,
        },
    })
}

pub(super) fn figures(row: &SqliteRow) -> Result<AttemptFigures, StoreError> {
    Ok(AttemptFigures {
        capacity: ByteSize(to_u64("attempts.capacity", row.try_get("capacity")?)?),
        bytes_written: to_u64("attempts.bytes_written", row.try_get("bytes_written")?)?,
        write_secs: row.try_get("write_secs")?,
        bytes_verified: to_u64("attempts.bytes_verified", row.try_get("bytes_verified")?)?,
        verify_secs: row.try_get("verify_secs")?,
        read_back_sha256: row
            .try_get::<Option<&str>, _>("read_back_sha256")?
            .map(|t| digest("attempts.read_back_sha256", t))
            .transpose()?,
        verify_method: row
            .try_get::<Option<&str>, _>("verify_method")?
            .map(parse_verify_method)
            .transpose()?,
        bytes_written_bound: parse_bound(row.try_get("bytes_written_bound")?)?,
        verified_after_reset: row.try_get("verified_after_reset")?,
        bytes_skipped: to_u64("attempts.bytes_skipped", row.try_get("bytes_skipped")?)?,
        sample: sample(row)?,
    })
}

/// A sampled attempt's share, seed and chunks (schema 10); `None` for any
/// other attempt and for a sampled one recorded before schema 10.
fn sample(row: &SqliteRow) -> Result<Option<VerifySample>, StoreError> {
    let Some(percent) = row.try_get::<Option<f64>, _>("sample_percent")? else {
        return Ok(None);
    };
    let seed_text: Option<String> = row.try_get("sample_seed")?;
    let seed = match seed_text {
        Some(text) => text.parse::<u64>().map_err(|_| StoreError::BadValue {
            column: "attempts.sample_seed",
            value: text.clone(),
        })?,
        None => {
            return Err(StoreError::BadValue {
                column: "attempts.sample_seed",
                value: "NULL with a sample_percent".to_string(),
            })
        }
    };
    let count = |column: &'static str| -> Result<u64, StoreError> {
        let value: Option<i64> = row.try_get(column)?;
        to_u64(column, value.unwrap_or(0))
    };
    Ok(Some(VerifySample {
        percent,
        seed,
        chunks_checked: count("sample_chunks_checked")?,
        chunks_total: count("sample_chunks_total")?,
    }))
}

pub(super) fn failure(row: &SqliteRow) -> Result<Option<Failure>, StoreError> {
    row.try_get::<Option<&str>, _>("failure")?
        .map(|text| {
            serde_json::from_str::<Failure>(text).map_err(|_| StoreError::BadValue {
                column: "attempts.failure",
                value: text.to_string(),
            })
        })
        .transpose()
}

/// An attempt's verdict as reports show it, from its state and reason code: an
/// attempt refused at the moment of opening counts as refused, not failed.
fn verdict_of(state: AttemptState, reason_code: Option<&str>) -> ReportVerdict {
    match state {
        AttemptState::Running => ReportVerdict::Running,
        AttemptState::Passed => ReportVerdict::Pass,
        AttemptState::Interrupted => ReportVerdict::Interrupted,
        AttemptState::Failed if reason_code == Some("refused") => ReportVerdict::Refused,
        AttemptState::Failed => ReportVerdict::Fail,
    }
}

fn report_row(row: &SqliteRow) -> Result<ReportRow, StoreError> {
    let state: AttemptState = row.try_get::<&str, _>("state")?.parse()?;
    let mut reason_code: Option<String> = row.try_get("reason_code")?;
    let verdict = verdict_of(state, reason_code.as_deref());
    if verdict == ReportVerdict::Refused {
        // Refused at the moment of opening: the guard's own code, where the
        // record has it.
        if let Some(Failure {
            reason: FailReason::Refused {
                code: Some(code), ..
            },
            ..
        }) = failure(row)?
        {
            reason_code = Some(code.as_str().to_string());
        }
    }
    Ok(ReportRow {
        attempt_id: Some(AttemptId(row.try_get("id")?)),
        refusal_id: None,
        station_id: row.try_get("station_id")?,
        run_id: Some(RunId(row.try_get("run_id")?)),
        port_label: row.try_get("port_label")?,
        port_path: row.try_get("port_path")?,
        device_key: row.try_get("key")?,
        serial: row.try_get("serial")?,
        vendor: row.try_get("vendor")?,
        model: row.try_get("model")?,
        image_name: Some(row.try_get("image_name")?),
        image_sha256: row_image_digest(row)?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        verdict,
        stage: Some(parse_stage(row.try_get("stage")?)?),
        reason_code,
        reason_detail: row.try_get("reason_detail")?,
        fail_offset: row
            .try_get::<Option<i64>, _>("fail_offset")?
            .map(|o| to_u64("attempts.fail_offset", o))
            .transpose()?,
        figures: figures(row)?,
        run_facts: run_facts(row)?,
    })
}

fn refusal_row(row: &SqliteRow) -> Result<ReportRow, StoreError> {
    let at: i64 = row.try_get("at")?;
    let code = parse_refusal_code(row.try_get("code")?)?;
    Ok(ReportRow {
        attempt_id: None,
        refusal_id: Some(RefusalId(row.try_get("id")?)),
        station_id: row.try_get("station_id")?,
        run_id: row.try_get::<Option<i64>, _>("run_id")?.map(RunId),
        port_label: row.try_get("port_label")?,
        port_path: row.try_get("port_path")?,
        device_key: row.try_get("key")?,
        serial: row.try_get("serial")?,
        vendor: row.try_get("vendor")?,
        model: row.try_get("model")?,
        image_name: row.try_get("image_name")?,
        image_sha256: row_image_digest(row)?,
        started_at: at,
        finished_at: Some(at),
        verdict: ReportVerdict::Refused,
        stage: None,
        reason_code: Some(code.as_str().to_string()),
        reason_detail: Some(row.try_get("message")?),
        fail_offset: None,
        // Nothing was written: that is exact.
        figures: AttemptFigures {
            capacity: ByteSize(to_u64("refusals.capacity", row.try_get("capacity")?)?),
            bytes_written_bound: Bound::Exact,
            ..AttemptFigures::default()
        },
        run_facts: run_facts(row)?,
    })
}

pub(super) fn attempt_record(row: &SqliteRow) -> Result<AttemptRecord, StoreError> {
    let state: AttemptState = row.try_get::<&str, _>("state")?.parse()?;
    let failure = failure(row)?;
    let verdict = match (state, failure) {
        (AttemptState::Running, _) => None,
        (AttemptState::Passed, _) => Some(Verdict::Pass),
        (_, Some(failure)) => Some(Verdict::Fail(failure)),
        (_, None) => {
            return Err(StoreError::BadValue {
                column: "attempts.failure",
                value: "NULL".to_string(),
            })
        }
    };
    Ok(AttemptRecord {
        id: AttemptId(row.try_get("id")?),
        station_id: row.try_get("station_id")?,
        run_id: RunId(row.try_get("run_id")?),
        device_id: DeviceId(row.try_get("device_id")?),
        port_label: row.try_get("port_label")?,
        port_path: row.try_get("port_path")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        state,
        stage: parse_stage(row.try_get("stage")?)?,
        verdict,
        figures: figures(row)?,
    })
}

pub(super) fn device_record(row: &SqliteRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: DeviceId(row.try_get("id")?),
        key: row.try_get("key")?,
        serial: row.try_get("serial")?,
        vendor: row.try_get("vendor")?,
        model: row.try_get("model")?,
        capacity: ByteSize(to_u64("devices.capacity", row.try_get("capacity")?)?),
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
    })
}

/// The recorded provenance of an image, if it was downloaded.
async fn image_provenance(
    tx: &mut sqlx::SqliteConnection,
    sha256: Sha256Digest,
) -> Result<Option<Provenance>, StoreError> {
    let text: Option<Option<String>> =
        sqlx::query_scalar("SELECT provenance FROM images WHERE sha256 = ?")
            .bind(sha256.to_hex())
            .fetch_optional(&mut *tx)
            .await?;
    text.flatten()
        .map(|text| {
            serde_json::from_str(&text).map_err(|_| StoreError::BadValue {
                column: "images.provenance",
                value: text,
            })
        })
        .transpose()
}

pub(super) fn image_row(row: &SqliteRow) -> Result<ImageRow, StoreError> {
    Ok(ImageRow {
        sha256: digest("images.sha256", row.try_get("sha256")?)?,
        name: row.try_get("name")?,
        size: ByteSize(to_u64("images.size", row.try_get("size")?)?),
        format: row.try_get("format")?,
        imported_at: row.try_get("imported_at")?,
        source: image_source(row)?,
        inspection: row.try_get("inspection")?,
        provenance: row
            .try_get::<Option<String>, _>("provenance")?
            .map(|text| {
                serde_json::from_str(&text).map_err(|_| StoreError::BadValue {
                    column: "images.provenance",
                    value: text,
                })
            })
            .transpose()?,
    })
}

/// The image's source from the columns `source_name`, `source_sha256` and
/// `source_size` (all NULL where not known).
fn image_source(row: &SqliteRow) -> Result<Option<ImageSource>, StoreError> {
    let name: Option<String> = row.try_get("source_name")?;
    let sha: Option<&str> = row.try_get("source_sha256")?;
    let size: Option<i64> = row.try_get("source_size")?;
    Ok(match (name, sha, size) {
        (Some(file_name), Some(sha), Some(bytes)) => Some(ImageSource {
            file_name,
            sha256: digest("images.source_sha256", sha)?,
            size: ByteSize(to_u64("images.source_size", bytes)?),
        }),
        _ => None,
    })
}

pub(super) fn event(row: &SqliteRow) -> Result<Event, StoreError> {
    let kind: EventKind = row.try_get::<&str, _>("kind")?.parse()?;
    Ok(Event {
        id: EventId(row.try_get("id")?),
        station_id: row.try_get("station_id")?,
        at: row.try_get("at")?,
        row: EventRow {
            kind,
            port_label: row.try_get("port_label")?,
            device_id: row.try_get::<Option<i64>, _>("device_id")?.map(DeviceId),
            run_id: row.try_get::<Option<i64>, _>("run_id")?.map(RunId),
            attempt_id: row.try_get::<Option<i64>, _>("attempt_id")?.map(AttemptId),
            detail: json("events.detail", row.try_get("detail")?)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, ManualClock};

    /// What SQLite plans for a query, one line per step.
    async fn plan(store: &Store, sql: &str) -> String {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .bind(1i64)
            .fetch_all(&store.reader)
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn reports_are_read_through_indexes_not_table_scans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_clock(
            &dir.path().join("plan.db"),
            "rack-1",
            Clock::Manual(ManualClock::new(0)),
        )
        .await
        .unwrap();

        let by_run = plan(
            &store,
            &format!("{REPORT_ROW} WHERE a.run_id = ? ORDER BY a.id"),
        )
        .await;
        assert!(by_run.contains("attempts_by_run"), "{by_run}");
        assert!(!by_run.contains("SCAN"), "{by_run}");
        assert!(!by_run.contains("TEMP B-TREE"), "no sort step: {by_run}");

        let by_device = plan(
            &store,
            &format!("{REPORT_ROW} WHERE a.device_id = ? ORDER BY a.started_at, a.id"),
        )
        .await;
        assert!(by_device.contains("attempts_by_device"), "{by_device}");
        assert!(!by_device.contains("SCAN"), "{by_device}");

        let run = plan(
            &store,
            &format!("{RUN_SUMMARY} WHERE r.id = ? GROUP BY r.id"),
        )
        .await;
        assert!(run.contains("attempts_by_run"), "{run}");
        assert!(run.contains("refusals_by_run"), "{run}");

        let refusals_by_run = plan(
            &store,
            &format!("{REFUSAL_ROW} WHERE f.run_id = ? ORDER BY f.id"),
        )
        .await;
        assert!(
            refusals_by_run.contains("refusals_by_run"),
            "{refusals_by_run}"
        );
        assert!(!refusals_by_run.contains("SCAN f"), "{refusals_by_run}");
        let refusals_by_device = plan(
            &store,
            &format!("{REFUSAL_ROW} WHERE f.device_id = ? ORDER BY f.at, f.id"),
        )
        .await;
        assert!(
            refusals_by_device.contains("refusals_by_device"),
            "{refusals_by_device}"
        );
    }
}
