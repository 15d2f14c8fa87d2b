//! Orders: lots armed by operators, a station's desired state, and what the
//! stations report doing about it.

use flashrack_core::Sha256Digest;
use flashrack_fleet::{OrderProgress, Orders, RunOrder};
use serde::Serialize;
use sqlx::Row;

use super::ingest::notify;
use super::{json_from, sql, HubDb, PgError};

/// What an operator asks for: an image armed on stations.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLot {
    /// The lot's name (unique); the hub makes one up when `None`.
    pub name: Option<String>,
    /// The image, which the hub's cache holds.
    pub image_sha256: Sha256Digest,
    /// Its name.
    pub image_name: String,
    /// Its raw size.
    pub image_size: u64,
    /// The run's options (verify mode, eject on pass, target count).
    pub options: serde_json::Value,
    /// The stations, in the order given.
    pub stations: Vec<String>,
    /// The operator.
    pub created_by: String,
}

/// A lot and how each of its stations stands: desired (the order) against
/// actual (the station's report and its run under the order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LotView {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// The image.
    pub image_sha256: String,
    /// The image's name.
    pub image_name: String,
    /// The run's options.
    pub options: serde_json::Value,
    /// When it was armed (unix ms).
    pub created_at: i64,
    /// Who armed it.
    pub created_by: String,
    /// When it was stopped, if it was.
    pub stopped_at: Option<i64>,
    /// Per station.
    pub orders: Vec<OrderView>,
}

/// One station's order of a lot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    /// The order's id.
    pub order_id: i64,
    /// The station.
    pub station_id: String,
    /// Desired: whether the hub wants the run armed.
    pub armed: bool,
    /// Actual: what the station last reported about this order (`None`:
    /// nothing yet, or it reports another order now).
    pub progress: Option<OrderProgress>,
    /// Actual: the station's run under this order, once shipped.
    pub run_id: Option<i64>,
    /// Whether that run has stopped.
    pub run_stopped: bool,
    /// Its attempts that passed.
    pub passed: u64,
    /// Its attempts that failed.
    pub failed: u64,
}

/// The hub's words for a lot name in use (by lot `held`, when known).
fn name_taken(name: &str, held: Option<i64>) -> String {
    let which = held.map_or_else(String::new, |id| format!(" (lot {id})"));
    format!("a lot named {name:?} exists already{which}: give this one another name")
}

/// The hub's words for stations that have no station token.
fn no_token(stations: &[String]) -> String {
    let names = stations
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (whose, make) = match stations {
        [one] => (
            format!("station {names} has no station token"),
            format!("`flashrack hub token add {one}`"),
        ),
        _ => (
            format!("stations {names} have no station token"),
            "`flashrack hub token add <station>` for each".to_string(),
        ),
    };
    format!(
        "{whose} (never joined this hub, or its token was revoked), so an order would wait \
         for it forever: make one with {make}, put it in the station's token_file and restart \
         the station, or arm the lot without it"
    )
}

impl HubDb {
    /// Arms a lot: an order per station (disarming any order the station had
    /// armed), each station's orders version raised, every hub process woken.
    /// Refused ([`PgError::Conflict`], nothing armed) when the name is
    /// another lot's or a station holds no station token.
    pub async fn arm_lot(&self, lot: &NewLot) -> Result<i64, PgError> {
        if lot.stations.is_empty() {
            return Err(PgError::Invalid("a lot needs at least one station".into()));
        }
        for (i, station) in lot.stations.iter().enumerate() {
            if !super::tokens::valid_name(station) {
                return Err(PgError::Invalid(format!("{station:?} is not a station id")));
            }
            // A station named twice would get two orders of one lot, the
            // first disarmed by the second.
            if lot.stations[..i].contains(station) {
                return Err(PgError::Invalid(format!(
                    "station {station:?} is named twice in the lot"
                )));
            }
        }
        let size = i64::try_from(lot.image_size)
            .map_err(|_| PgError::Invalid("the image size is out of range".into()))?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("opening a transaction"))?;
        // A station without a token never asks for its orders: its order
        // would wait, armed, for good, and the lot show nothing about why.
        let tokenless: Vec<String> = sqlx::query_scalar(
            "SELECT s FROM unnest($1::text[]) WITH ORDINALITY AS given (s, n)
             WHERE NOT EXISTS (SELECT 1 FROM tokens
                               WHERE role = 'station' AND name = s AND revoked_at IS NULL)
             ORDER BY n",
        )
        .bind(&lot.stations)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("reading station tokens"))?;
        if !tokenless.is_empty() {
            return Err(PgError::Conflict(no_token(&tokenless)));
        }
        if let Some(name) = &lot.name {
            let held: Option<i64> = sqlx::query_scalar("SELECT id FROM lots WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("reading lots"))?;
            if let Some(held) = held {
                return Err(PgError::Conflict(name_taken(name, Some(held))));
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO lots (name, image_sha256, image_name, image_size, options, stations,
                               created_by)
             VALUES (coalesce($1, 'unnamed-' || gen_random_uuid()), $2, $3, $4, $5, $6, $7)
             RETURNING id",
        )
        .bind(&lot.name)
        .bind(lot.image_sha256.to_hex())
        .bind(&lot.image_name)
        .bind(size)
        .bind(&lot.options)
        .bind(&lot.stations)
        .bind(&lot.created_by)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match (&e, &lot.name) {
            // Another operator's lot of that name, committed meanwhile.
            (sqlx::Error::Database(d), Some(name)) if d.is_unique_violation() => {
                PgError::Conflict(name_taken(name, None))
            }
            _ => PgError::Sql {
                what: "storing a lot",
                source: e,
            },
        })?;
        if lot.name.is_none() {
            // `lot-<id>`, or `lot-<id>-2`, `-3` … when an operator gave a
            // lot that name already (a lot named "lot-5" before lot 5 was
            // made: the plain rename failed, a 500).
            sqlx::query(
                "UPDATE lots SET name = (
                     SELECT c.name FROM generate_series(1, 1000) AS g (n),
                         LATERAL (SELECT 'lot-' || $1::bigint
                                         || CASE WHEN g.n = 1 THEN '' ELSE '-' || g.n END
                                  AS name) AS c
                     WHERE NOT EXISTS (SELECT 1 FROM lots WHERE lots.name = c.name)
                     ORDER BY g.n LIMIT 1)
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => PgError::Conflict(
                    "another lot took this lot's name meanwhile: arm it again".into(),
                ),
                _ => PgError::Sql {
                    what: "naming a lot",
                    source: e,
                },
            })?;
        }
        for station in &lot.stations {
            sqlx::query("INSERT INTO stations (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
                .bind(station)
                .execute(&mut *tx)
                .await
                .map_err(sql("adding a station"))?;
        }
        // The stations' rows locked, in one order: lots armed at once on a
        // station are armed one after the other (each disarming the one
        // before), not refused by the one-armed-order index with a 500.
        let mut locked = lot.stations.clone();
        locked.sort();
        sqlx::query("SELECT 1 FROM stations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&locked)
            .execute(&mut *tx)
            .await
            .map_err(sql("locking the lot's stations"))?;
        for station in &lot.stations {
            sqlx::query(
                "UPDATE orders SET armed = false, stopped_at = now()
                 WHERE station_id = $1 AND armed",
            )
            .bind(station)
            .execute(&mut *tx)
            .await
            .map_err(sql("disarming an order"))?;
            sqlx::query("INSERT INTO orders (lot_id, station_id) VALUES ($1, $2)")
                .bind(id)
                .bind(station)
                .execute(&mut *tx)
                .await
                .map_err(sql("storing an order"))?;
            sqlx::query("UPDATE stations SET orders_version = orders_version + 1 WHERE id = $1")
                .bind(station)
                .execute(&mut *tx)
                .await
                .map_err(sql("raising an orders version"))?;
            notify(&mut tx, "orders", station).await?;
        }
        // A lot this one replaced on its last station is armed nowhere any
        // more: stopped now (its report said "still armed").
        sqlx::query(
            "UPDATE lots l SET stopped_at = now()
             WHERE l.stopped_at IS NULL AND l.id <> $1
               AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.lot_id = l.id AND o.armed)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(sql("stopping the lots replaced"))?;
        tx.commit().await.map_err(sql("committing a lot"))?;
        Ok(id)
    }

    /// Stops a lot: its armed orders are disarmed (the stations stop the
    /// runs they armed under them). `false` when there is no such lot.
    pub async fn stop_lot(&self, lot: i64) -> Result<bool, PgError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("opening a transaction"))?;
        let found =
            sqlx::query("UPDATE lots SET stopped_at = coalesce(stopped_at, now()) WHERE id = $1")
                .bind(lot)
                .execute(&mut *tx)
                .await
                .map_err(sql("stopping a lot"))?
                .rows_affected()
                > 0;
        let stations: Vec<String> = sqlx::query_scalar(
            "UPDATE orders SET armed = false, stopped_at = now()
             WHERE lot_id = $1 AND armed RETURNING station_id",
        )
        .bind(lot)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("disarming orders"))?;
        for station in &stations {
            sqlx::query("UPDATE stations SET orders_version = orders_version + 1 WHERE id = $1")
                .bind(station)
                .execute(&mut *tx)
                .await
                .map_err(sql("raising an orders version"))?;
            notify(&mut tx, "orders", station).await?;
        }
        tx.commit().await.map_err(sql("committing a stop"))?;
        Ok(found)
    }

    /// What the hub wants `station` to do: its newest order (armed, or
    /// disarmed so that the station stops the run it armed under it).
    pub async fn orders_for(&self, station: &str) -> Result<Orders, PgError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT orders_version FROM stations WHERE id = $1")
                .bind(station)
                .fetch_optional(&self.pool)
                .await
                .map_err(sql("reading orders"))?;
        let row = sqlx::query(
            "SELECT o.id, o.armed, l.name, l.image_sha256, l.image_name, l.image_size, l.options
             FROM orders o JOIN lots l ON l.id = o.lot_id
             WHERE o.station_id = $1 ORDER BY o.id DESC LIMIT 1",
        )
        .bind(station)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("reading orders"))?;
        let run = row
            .map(|row| {
                Ok::<_, PgError>(RunOrder {
                    order_id: row.get("id"),
                    lot: row.get("name"),
                    image_sha256: Sha256Digest::parse(&row.get::<String, _>("image_sha256"))
                        .map_err(|e| PgError::Corrupt {
                            what: "sha256",
                            reason: e.to_string(),
                        })?,
                    image_name: row.get("image_name"),
                    image_size: row.get::<i64, _>("image_size").max(0) as u64,
                    options: row.get("options"),
                    armed: row.get("armed"),
                })
            })
            .transpose()?;
        Ok(Orders {
            version: version.unwrap_or(0),
            run,
        })
    }

    /// Every lot, newest first, with desired and actual state per station.
    pub async fn lots(&self) -> Result<Vec<LotView>, PgError> {
        let lots = sqlx::query(
            "SELECT id, name, image_sha256, image_name, options, ts_to_ms(created_at) AS created_at,
                    created_by, ts_to_ms(stopped_at) AS stopped_at
             FROM lots ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql("reading lots"))?;
        let orders = sqlx::query(
            "SELECT o.id, o.lot_id, o.station_id, o.armed, l.order_progress,
                    r.id AS run_id, r.stopped_at IS NOT NULL AS run_stopped,
                    (SELECT count(*) FROM attempts a WHERE a.station_id = r.station_id
                        AND a.run_id = r.id AND a.state = 'passed') AS passed,
                    (SELECT count(*) FROM attempts a WHERE a.station_id = r.station_id
                        AND a.run_id = r.id AND a.state = 'failed') AS failed
             FROM orders o
             LEFT JOIN live l ON l.station_id = o.station_id
                              AND (l.order_progress->>'order_id')::bigint = o.id
             LEFT JOIN LATERAL (SELECT station_id, id, stopped_at FROM runs
                                WHERE runs.station_id = o.station_id AND runs.order_id = o.id
                                ORDER BY id DESC LIMIT 1) r ON true
             ORDER BY o.lot_id, o.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql("reading orders"))?;
        let mut views = Vec::with_capacity(lots.len());
        for lot in lots {
            let id: i64 = lot.get("id");
            let mut mine = Vec::new();
            for o in orders.iter().filter(|o| o.get::<i64, _>("lot_id") == id) {
                mine.push(OrderView {
                    order_id: o.get("id"),
                    station_id: o.get("station_id"),
                    armed: o.get("armed"),
                    progress: o
                        .get::<Option<serde_json::Value>, _>("order_progress")
                        .map(|v| json_from("order progress", v))
                        .transpose()?,
                    run_id: o.get("run_id"),
                    run_stopped: o.get::<Option<bool>, _>("run_stopped").unwrap_or(false),
                    passed: o.get::<i64, _>("passed").max(0) as u64,
                    failed: o.get::<i64, _>("failed").max(0) as u64,
                });
            }
            views.push(LotView {
                id,
                name: lot.get("name"),
                image_sha256: lot.get("image_sha256"),
                image_name: lot.get("image_name"),
                options: lot.get("options"),
                created_at: lot.get("created_at"),
                created_by: lot.get("created_by"),
                stopped_at: lot.get("stopped_at"),
                orders: mine,
            });
        }
        Ok(views)
    }
}
