//! Reports across stations, as `flashrack-report` data: a lot's report (its
//! runs at every station) and a stick's history (every station that saw
//! it). Rows are built from the shipped rows as the station's store builds
//! them from its own, so a hub's report reads as the stations' do.

use flashrack_core::GuardRefusal;
use flashrack_core::{
    AttemptFigures, AttemptId, AttemptState, Bound, ByteSize, DeviceId, FailReason, RefusalId,
    RunId, Sha256Digest, Verdict,
};
use flashrack_report::{
    rows_in_order, Counts, DeviceRecord, DeviceReport, ImageOrigin, Lot, LotReport, ReportRow,
    ReportVerdict, Run, RunFacts, RunSummary,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{enum_from, json_from, sql, HubDb, PgError};

fn digest(text: &str) -> Result<Sha256Digest, PgError> {
    Sha256Digest::parse(text).map_err(|e| PgError::Corrupt {
        what: "sha256",
        reason: e.to_string(),
    })
}

/// The columns `attempt_row` reads: an attempt joined with its run, the
/// run's image at its station and its station's device row.
const ATTEMPT_ROWS: &str = "
    SELECT a.station_id, a.id, a.run_id, a.port_label, a.port_path, a.device_key,
           d.serial, d.vendor, d.model, r.image_name, r.image_sha256,
           r.options AS run_options, r.stop_reason AS run_stop_reason,
           r.stop_detail AS run_stop_detail, si.size AS image_size,
           ts_to_ms(a.started_at) AS started_at, ts_to_ms(a.finished_at) AS finished_at,
           a.state, a.stage, a.verdict, a.reason_detail, a.figures
    FROM attempts a
    LEFT JOIN runs r ON r.station_id = a.station_id AND r.id = a.run_id
    LEFT JOIN station_images si ON si.station_id = r.station_id AND si.sha256 = r.image_sha256
    LEFT JOIN devices d ON d.station_id = a.station_id AND d.key = a.device_key";

/// The columns `refusal_row` reads.
const REFUSAL_ROWS: &str = "
    SELECT f.station_id, f.id, f.run_id, f.port_label, f.port_path, f.device_key,
           d.serial, d.vendor, d.model, r.image_name, r.image_sha256,
           r.options AS run_options, r.stop_reason AS run_stop_reason,
           r.stop_detail AS run_stop_detail, si.size AS image_size,
           ts_to_ms(f.at) AS at, f.capacity, f.refusal
    FROM refusals f
    LEFT JOIN runs r ON r.station_id = f.station_id AND r.id = f.run_id
    LEFT JOIN station_images si ON si.station_id = r.station_id AND si.sha256 = r.image_sha256
    LEFT JOIN devices d ON d.station_id = f.station_id AND d.key = f.device_key";

/// What a row's run says about it (who armed it, its lot and options, how it
/// stopped, its image's size), as a station's own rows carry it. The file the
/// image was imported from is the station's alone: the hub is not sent it.
fn run_facts(row: &PgRow) -> Result<RunFacts, PgError> {
    Ok(RunFacts {
        options: row.get::<Option<serde_json::Value>, _>("run_options"),
        stop_reason: row
            .get::<Option<String>, _>("run_stop_reason")
            .map(|text| enum_from("stop reason", text))
            .transpose()?,
        stop_detail: row.get("run_stop_detail"),
        image_size: row
            .get::<Option<i64>, _>("image_size")
            .map(|size| ByteSize(size.max(0) as u64)),
        image_source: None,
    })
}

fn attempt_row(row: &PgRow) -> Result<ReportRow, PgError> {
    let state: AttemptState = enum_from("attempt state", row.get("state"))?;
    let verdict: Option<Verdict> = row
        .get::<Option<serde_json::Value>, _>("verdict")
        .map(|v| json_from("verdict", v))
        .transpose()?;
    let failure = match &verdict {
        Some(Verdict::Fail(failure)) => Some(failure),
        _ => None,
    };
    let mut reason_code = failure.map(|f| f.reason.code().to_string());
    let report_verdict = match state {
        AttemptState::Running => ReportVerdict::Running,
        AttemptState::Passed => ReportVerdict::Pass,
        AttemptState::Interrupted => ReportVerdict::Interrupted,
        AttemptState::Failed => match failure.map(|f| &f.reason) {
            Some(FailReason::Refused { code, .. }) => {
                // Refused at the moment of opening: the guard's own code.
                if let Some(code) = code {
                    reason_code = Some(code.as_str().to_string());
                }
                ReportVerdict::Refused
            }
            _ => ReportVerdict::Fail,
        },
    };
    let image_sha256: Option<String> = row.get("image_sha256");
    Ok(ReportRow {
        attempt_id: Some(AttemptId(row.get("id"))),
        refusal_id: None,
        station_id: row.get("station_id"),
        run_id: Some(RunId(row.get("run_id"))),
        port_label: row.get("port_label"),
        port_path: row.get("port_path"),
        device_key: row.get("device_key"),
        serial: row.get("serial"),
        vendor: row.get("vendor"),
        model: row.get("model"),
        image_name: row.get("image_name"),
        image_sha256: image_sha256.as_deref().map(digest).transpose()?,
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        verdict: report_verdict,
        stage: Some(enum_from("stage", row.get("stage"))?),
        reason_code,
        reason_detail: row.get("reason_detail"),
        fail_offset: failure.and_then(|f| f.reason.offset()),
        figures: json_from::<AttemptFigures>("figures", row.get("figures"))?,
        run_facts: run_facts(row)?,
    })
}

fn refusal_row(row: &PgRow) -> Result<ReportRow, PgError> {
    let at: i64 = row.get("at");
    let refusal: GuardRefusal = json_from("refusal", row.get("refusal"))?;
    let image_sha256: Option<String> = row.get("image_sha256");
    Ok(ReportRow {
        attempt_id: None,
        refusal_id: Some(RefusalId(row.get("id"))),
        station_id: row.get("station_id"),
        run_id: row.get::<Option<i64>, _>("run_id").map(RunId),
        port_label: row.get("port_label"),
        port_path: row.get("port_path"),
        device_key: row.get("device_key"),
        serial: row.get("serial"),
        vendor: row.get("vendor"),
        model: row.get("model"),
        image_name: row.get("image_name"),
        image_sha256: image_sha256.as_deref().map(digest).transpose()?,
        started_at: at,
        finished_at: Some(at),
        verdict: ReportVerdict::Refused,
        stage: None,
        reason_code: Some(refusal.code.as_str().to_string()),
        reason_detail: Some(refusal.message),
        fail_offset: None,
        // Nothing was written: that is exact.
        figures: AttemptFigures {
            capacity: ByteSize(row.get::<i64, _>("capacity").max(0) as u64),
            bytes_written_bound: Bound::Exact,
            ..AttemptFigures::default()
        },
        run_facts: run_facts(row)?,
    })
}

/// Attempts and refusals in the order they were made, station by station.
fn by_station(attempts: Vec<ReportRow>, refusals: Vec<ReportRow>) -> Vec<ReportRow> {
    let mut stations: Vec<String> = attempts
        .iter()
        .chain(&refusals)
        .map(|r| r.station_id.clone())
        .collect();
    stations.sort();
    stations.dedup();
    let mut rows = Vec::with_capacity(attempts.len() + refusals.len());
    for station in stations {
        let mine = |rows: &[ReportRow]| {
            rows.iter()
                .filter(|r| r.station_id == station)
                .cloned()
                .collect::<Vec<_>>()
        };
        rows.extend(rows_in_order(mine(&attempts), mine(&refusals)));
    }
    rows
}

impl HubDb {
    /// The report rows one query selects (`sql_text` takes one parameter, `$1`),
    /// each built by `row_of`.
    async fn report_rows<'q, T>(
        &self,
        what: &'static str,
        sql_text: &'q str,
        param: T,
        row_of: fn(&PgRow) -> Result<ReportRow, PgError>,
    ) -> Result<Vec<ReportRow>, PgError>
    where
        T: 'q + Send + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query(sql_text)
            .bind(param)
            .fetch_all(&self.pool)
            .await
            .map_err(sql(what))?
            .iter()
            .map(row_of)
            .collect()
    }

    /// A lot's report: the lot, its runs at every station (the runs armed
    /// under its orders), and their records. `None` when there is no lot.
    pub async fn lot_report(&self, lot: i64) -> Result<Option<LotReport>, PgError> {
        let what = "reading a lot's report";
        let Some(row) = sqlx::query(
            "SELECT id, name, image_sha256, image_name, options, stations,
                    ts_to_ms(created_at) AS created_at, ts_to_ms(stopped_at) AS stopped_at
             FROM lots WHERE id = $1",
        )
        .bind(lot)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql(what))?
        else {
            return Ok(None);
        };
        let lot_value = Lot {
            id: row.get("id"),
            name: row.get("name"),
            image_sha256: digest(&row.get::<String, _>("image_sha256"))?,
            image_name: row.get("image_name"),
            options: row.get("options"),
            stations: row.get("stations"),
            created_at: row.get("created_at"),
            stopped_at: row.get("stopped_at"),
        };
        // The records of the runs armed under the lot's orders.
        let in_lot = |t: &str| {
            format!(
                "({t}.station_id, {t}.run_id) IN (SELECT r.station_id, r.id FROM runs r
                   JOIN orders o ON o.id = r.order_id AND o.station_id = r.station_id
                   WHERE o.lot_id = $1)"
            )
        };
        let attempts = self
            .report_rows(
                what,
                &format!(
                    "{ATTEMPT_ROWS} WHERE {} ORDER BY a.station_id, a.started_at, a.id",
                    in_lot("a")
                ),
                lot,
                attempt_row,
            )
            .await?;
        let refusals = self
            .report_rows(
                what,
                &format!(
                    "{REFUSAL_ROWS} WHERE {} ORDER BY f.station_id, f.at, f.id",
                    in_lot("f")
                ),
                lot,
                refusal_row,
            )
            .await?;
        let rows = by_station(attempts, refusals);
        let mut runs = Vec::new();
        for r in sqlx::query(
            "SELECT r.station_id, r.id, r.image_sha256, r.image_name, r.options,
                    ts_to_ms(r.started_at) AS started_at, ts_to_ms(r.stopped_at) AS stopped_at,
                    r.stop_reason, r.stop_detail
             FROM runs r JOIN orders o ON o.id = r.order_id AND o.station_id = r.station_id
             WHERE o.lot_id = $1 ORDER BY r.station_id, r.started_at, r.id",
        )
        .bind(lot)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            let run = Run {
                id: RunId(r.get("id")),
                station_id: r.get("station_id"),
                image_sha256: digest(&r.get::<String, _>("image_sha256"))?,
                image_name: r.get("image_name"),
                options: r.get("options"),
                started_at: r.get("started_at"),
                stopped_at: r.get("stopped_at"),
                stop_reason: r
                    .get::<Option<String>, _>("stop_reason")
                    .map(|t| enum_from("stop reason", t))
                    .transpose()?,
                stop_detail: r.get("stop_detail"),
                image_size: None,
                image_source: None,
                // A lot's runs write an image the hub's order named: one
                // cached on the station, never a provisional row.
                image_imported: true,
            };
            let mine: Vec<ReportRow> = rows
                .iter()
                .filter(|row| row.station_id == run.station_id && row.run_id == Some(run.id))
                .cloned()
                .collect();
            runs.push(RunSummary {
                counts: Counts::of(&mine),
                run,
            });
        }
        let image_origins = self
            .image_origins(
                what,
                runs.iter()
                    .map(|r| (r.run.station_id.clone(), r.run.image_sha256)),
            )
            .await?;
        Ok(Some(LotReport {
            lot: lot_value,
            counts: Counts::of(&rows),
            runs,
            rows,
            image_origins,
        }))
    }

    /// Every image a station keeps whose origin it recorded (downloaded,
    /// captured, built), with that station's id: by station, then oldest
    /// import first. Removed rows and images without a provenance (a file,
    /// an upload) give none.
    pub async fn image_origins_at_stations(&self) -> Result<Vec<(String, ImageOrigin)>, PgError> {
        let what = "reading the stations' image origins";
        let rows = sqlx::query(
            "SELECT station_id, sha256, name, provenance FROM station_images
             WHERE NOT removed AND provenance IS NOT NULL
             ORDER BY station_id, imported_at, sha256",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((
                row.get("station_id"),
                ImageOrigin {
                    sha256: digest(row.get::<&str, _>("sha256"))?,
                    name: row.get("name"),
                    provenance: json_from("image provenance", row.get("provenance"))?,
                },
            ));
        }
        Ok(out)
    }

    /// Where the images of `uses` (station and image, in order of use) came
    /// from, as each station recorded it (shipped with its image rows): one
    /// entry per image and provenance, by first use; images without a
    /// provenance (a file, an upload) and removed rows give none.
    async fn image_origins(
        &self,
        what: &'static str,
        uses: impl Iterator<Item = (String, Sha256Digest)>,
    ) -> Result<Vec<ImageOrigin>, PgError> {
        let mut seen = std::collections::HashSet::new();
        let mut origins: Vec<ImageOrigin> = Vec::new();
        for (station, sha256) in uses {
            if !seen.insert((station.clone(), sha256)) {
                continue;
            }
            let Some(row) = sqlx::query(
                "SELECT name, provenance FROM station_images
                 WHERE station_id = $1 AND sha256 = $2 AND NOT removed
                   AND provenance IS NOT NULL",
            )
            .bind(&station)
            .bind(sha256.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(sql(what))?
            else {
                continue;
            };
            let origin = ImageOrigin {
                sha256,
                name: row.get("name"),
                provenance: json_from("image provenance", row.get("provenance"))?,
            };
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(origins)
    }

    /// A stick's history at every station, by its key (serial, or
    /// vendor/model/size). `None` when no station has seen it. The device's
    /// `id` is 0: the hub knows a stick by its key only.
    pub async fn device_history(&self, key: &str) -> Result<Option<DeviceReport>, PgError> {
        let what = "reading a device's history";
        let Some(d) = sqlx::query(
            "SELECT key,
                    (array_agg(serial ORDER BY last_seen DESC))[1] AS serial,
                    (array_agg(vendor ORDER BY last_seen DESC))[1] AS vendor,
                    (array_agg(model ORDER BY last_seen DESC))[1] AS model,
                    (array_agg(capacity ORDER BY last_seen DESC))[1] AS capacity,
                    ts_to_ms(min(first_seen)) AS first_seen,
                    ts_to_ms(max(last_seen)) AS last_seen
             FROM devices WHERE key = $1 GROUP BY key",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql(what))?
        else {
            return Ok(None);
        };
        let attempts = self
            .report_rows(
                what,
                &format!(
                    "{ATTEMPT_ROWS} WHERE a.device_key = $1 ORDER BY a.started_at, a.station_id, a.id"
                ),
                key,
                attempt_row,
            )
            .await?;
        let refusals = self
            .report_rows(
                what,
                &format!(
                    "{REFUSAL_ROWS} WHERE f.device_key = $1 ORDER BY f.at, f.station_id, f.id"
                ),
                key,
                refusal_row,
            )
            .await?;
        // One history in time order, whichever station made each record.
        let rows = rows_in_order(attempts, refusals);
        let image_origins = self
            .image_origins(
                what,
                rows.iter()
                    .filter_map(|r| r.image_sha256.map(|sha| (r.station_id.clone(), sha))),
            )
            .await?;
        Ok(Some(DeviceReport {
            image_origins,
            device: DeviceRecord {
                id: DeviceId(0),
                key: d.get("key"),
                serial: d.get("serial"),
                vendor: d.get("vendor"),
                model: d.get("model"),
                capacity: ByteSize(d.get::<i64, _>("capacity").max(0) as u64),
                first_seen: d.get("first_seen"),
                last_seen: d.get("last_seen"),
            },
            counts: Counts::of(&rows),
            rows,
        }))
    }
}
