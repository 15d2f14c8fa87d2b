//! A station's records as the hub holds them, read back as the protocol's
//! rows: what the fleet tests compare with the station's own records, and
//! what the reports are made from.

use std::collections::BTreeMap;

use flashrack_core::{AttemptId, RefusalId, RunId, Sha256Digest};
use flashrack_fleet::{
    AttemptRecord, DeviceRecord, EventRecord, FleetRecord, ImageRecord, RefusalRecord, RunRecord,
};
use sqlx::Row;

use super::{enum_from, json_from, sql, HubDb, PgError};

/// Everything the hub holds of one station, each kind in id (or key) order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StationRecords {
    /// Its images, by sha256 (those the station removed are not among them).
    pub images: Vec<ImageRecord>,
    /// The images the station recorded and removed since (a run's
    /// provisional image, replaced by the real one), by sha256: kept apart,
    /// marked, and never counted as the station's images.
    pub removed_images: Vec<Sha256Digest>,
    /// Its devices, by key.
    pub devices: Vec<DeviceRecord>,
    /// Its runs, by id.
    pub runs: Vec<RunRecord>,
    /// Its attempts, by id.
    pub attempts: Vec<AttemptRecord>,
    /// Its refusals, by id.
    pub refusals: Vec<RefusalRecord>,
    /// Its events, by id.
    pub events: Vec<EventRecord>,
}

impl StationRecords {
    /// What the hub holds once it has taken `records`, given oldest first
    /// (as a station's outbox ships them): the newest version of each row
    /// (by kind and [`FleetRecord::key`]), each kind in key order. The fleet
    /// tests and the fleet benchmark compare it with [`HubDb::station_records`].
    pub fn latest(records: impl IntoIterator<Item = FleetRecord>) -> Self {
        let mut latest: BTreeMap<(&'static str, String), FleetRecord> = BTreeMap::new();
        for record in records {
            latest.insert((record.kind(), record.key()), record);
        }
        let mut out = StationRecords::default();
        for record in latest.into_values() {
            match record {
                // A row's last version marked removed: the row is gone.
                FleetRecord::Image(r) if r.removed => out.removed_images.push(r.sha256),
                FleetRecord::Image(r) => out.images.push(r),
                FleetRecord::Device(r) => out.devices.push(r),
                FleetRecord::Run(r) => out.runs.push(r),
                FleetRecord::Attempt(r) => out.attempts.push(r),
                FleetRecord::Refusal(r) => out.refusals.push(r),
                FleetRecord::Event(r) => out.events.push(r),
            }
        }
        out
    }

    /// How many rows of each kind: images, devices, runs, attempts,
    /// refusals, events.
    pub fn counts(&self) -> [usize; 6] {
        [
            self.images.len(),
            self.devices.len(),
            self.runs.len(),
            self.attempts.len(),
            self.refusals.len(),
            self.events.len(),
        ]
    }
}

fn digest(text: String) -> Result<Sha256Digest, PgError> {
    Sha256Digest::parse(&text).map_err(|e| PgError::Corrupt {
        what: "sha256",
        reason: e.to_string(),
    })
}

fn unsigned(what: &'static str, value: i64) -> Result<u64, PgError> {
    u64::try_from(value).map_err(|_| PgError::Corrupt {
        what,
        reason: value.to_string(),
    })
}

impl HubDb {
    /// Every record the hub holds of `station`.
    pub async fn station_records(&self, station: &str) -> Result<StationRecords, PgError> {
        let mut out = StationRecords::default();
        let what = "reading a station's records";
        for row in sqlx::query(
            "SELECT sha256, name, size, format, ts_to_ms(imported_at) AS imported_at,
                    provenance, removed
             FROM station_images WHERE station_id = $1 ORDER BY sha256",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            let sha256 = digest(row.get("sha256"))?;
            if row.get::<bool, _>("removed") {
                out.removed_images.push(sha256);
                continue;
            }
            out.images.push(ImageRecord {
                sha256,
                name: row.get("name"),
                size: unsigned("image size", row.get("size"))?,
                format: row.get("format"),
                imported_at: row.get("imported_at"),
                provenance: row
                    .get::<Option<serde_json::Value>, _>("provenance")
                    .map(|p| json_from("image provenance", p).map(Box::new))
                    .transpose()?,
                removed: false,
            });
        }
        for row in sqlx::query(
            "SELECT key, serial, vendor, model, capacity, ts_to_ms(first_seen) AS first_seen,
                    ts_to_ms(last_seen) AS last_seen
             FROM devices WHERE station_id = $1 ORDER BY key",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            out.devices.push(DeviceRecord {
                key: row.get("key"),
                serial: row.get("serial"),
                vendor: row.get("vendor"),
                model: row.get("model"),
                capacity: unsigned("capacity", row.get("capacity"))?,
                first_seen: row.get("first_seen"),
                last_seen: row.get("last_seen"),
            });
        }
        for row in sqlx::query(
            "SELECT id, image_sha256, image_name, options, ts_to_ms(started_at) AS started_at,
                    ts_to_ms(stopped_at) AS stopped_at, stop_reason, stop_detail
             FROM runs WHERE station_id = $1 ORDER BY id",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            out.runs.push(RunRecord {
                id: RunId(row.get("id")),
                image_sha256: digest(row.get("image_sha256"))?,
                image_name: row.get("image_name"),
                options: row.get("options"),
                started_at: row.get("started_at"),
                stopped_at: row.get("stopped_at"),
                stop_reason: row
                    .get::<Option<String>, _>("stop_reason")
                    .map(|t| enum_from("stop reason", t))
                    .transpose()?,
                stop_detail: row.get("stop_detail"),
            });
        }
        for row in sqlx::query(
            "SELECT id, run_id, device_key, port_label, port_path,
                    ts_to_ms(started_at) AS started_at, ts_to_ms(finished_at) AS finished_at,
                    state, stage, verdict, reason_detail, figures
             FROM attempts WHERE station_id = $1 ORDER BY id",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            out.attempts.push(attempt_of(&row)?);
        }
        for row in sqlx::query(
            "SELECT id, ts_to_ms(at) AS at, run_id, device_key, port_label, port_path,
                    capacity, refusal
             FROM refusals WHERE station_id = $1 ORDER BY id",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            out.refusals.push(RefusalRecord {
                id: RefusalId(row.get("id")),
                at: row.get("at"),
                run_id: row.get::<Option<i64>, _>("run_id").map(RunId),
                device_key: row.get("device_key"),
                port_label: row.get("port_label"),
                port_path: row.get("port_path"),
                capacity: unsigned("capacity", row.get("capacity"))?,
                refusal: json_from("refusal", row.get("refusal"))?,
            });
        }
        for row in sqlx::query(
            "SELECT id, ts_to_ms(at) AS at, kind, port_label, device_key, run_id, attempt_id,
                    detail
             FROM events WHERE station_id = $1 ORDER BY id",
        )
        .bind(station)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(what))?
        {
            out.events.push(EventRecord {
                id: row.get("id"),
                at: row.get("at"),
                kind: row.get("kind"),
                port_label: row.get("port_label"),
                device_key: row.get("device_key"),
                run_id: row.get::<Option<i64>, _>("run_id").map(RunId),
                attempt_id: row.get::<Option<i64>, _>("attempt_id").map(AttemptId),
                detail: row.get("detail"),
            });
        }
        Ok(out)
    }

    /// The stations the hub has heard of, by id.
    pub async fn station_ids(&self) -> Result<Vec<String>, PgError> {
        sqlx::query_scalar("SELECT id FROM stations ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("listing stations"))
    }
}

/// An attempt row (columns as selected in [`HubDb::station_records`]).
pub(crate) fn attempt_of(row: &sqlx::postgres::PgRow) -> Result<AttemptRecord, PgError> {
    Ok(AttemptRecord {
        id: AttemptId(row.get("id")),
        run_id: RunId(row.get("run_id")),
        device_key: row.get("device_key"),
        port_label: row.get("port_label"),
        port_path: row.get("port_path"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        state: enum_from("attempt state", row.get("state"))?,
        stage: enum_from("stage", row.get("stage"))?,
        verdict: row
            .get::<Option<serde_json::Value>, _>("verdict")
            .map(|v| json_from("verdict", v))
            .transpose()?,
        reason_detail: row.get("reason_detail"),
        figures: json_from("figures", row.get("figures"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(key: &str, last_seen: i64) -> FleetRecord {
        FleetRecord::Device(DeviceRecord {
            key: key.into(),
            serial: None,
            vendor: None,
            model: None,
            capacity: 8 << 30,
            first_seen: 1,
            last_seen,
        })
    }

    fn event(id: i64) -> FleetRecord {
        FleetRecord::Event(EventRecord {
            id,
            at: id,
            kind: "note".into(),
            port_label: None,
            device_key: None,
            run_id: None,
            attempt_id: None,
            detail: serde_json::Value::Null,
        })
    }

    #[test]
    fn the_newest_version_of_each_row_is_kept_and_each_kind_is_in_key_order() {
        let records = StationRecords::latest([
            event(10),
            device("b", 1),
            event(9),
            device("a", 1),
            device("b", 2),
        ]);
        let devices: Vec<_> = records
            .devices
            .iter()
            .map(|d| (d.key.as_str(), d.last_seen))
            .collect();
        assert_eq!(devices, [("a", 1), ("b", 2)]);
        // Ids in number order, not text order (9 before 10).
        let events: Vec<_> = records.events.iter().map(|e| e.id).collect();
        assert_eq!(events, [9, 10]);
        assert_eq!(records.counts(), [0, 2, 0, 0, 0, 2]);
    }
}
