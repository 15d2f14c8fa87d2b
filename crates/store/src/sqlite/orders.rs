//! What this station did about its hub's orders, kept across restarts (table
//! `fleet_orders`, written by the order follower of `flashrack-app`).
//!
//! The follower decides from this memory, not from what one process saw: an
//! order armed here whose run was stopped here is never armed again, and an
//! order whose run ended with the station (a shutdown, a crash) is armed again
//! once. Nothing here is shipped to the hub.

use flashrack_core::RunId;
use sqlx::Row;

use super::writes::SqliteWrites;
use crate::{Records, Store, StoreError};

/// What the station did about one order of its hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderMemory {
    /// Armed here; `run` is the order's latest run at this station.
    Armed {
        /// The run armed under the order.
        run: RunId,
    },
    /// Its run was stopped here (by the station's operator, its target
    /// count, a failed source): the order is done with at this station.
    Stopped {
        /// How it stopped, in words.
        detail: Option<String>,
    },
    /// The order cannot be followed (a wrong image, unusable options).
    Failed {
        /// Why.
        detail: String,
    },
}

impl Store {
    /// What the station did about order `order_id`, if anything.
    pub async fn order_memory(&self, order_id: i64) -> Result<Option<OrderMemory>, StoreError> {
        let row = sqlx::query("SELECT state, run_id, detail FROM fleet_orders WHERE order_id = ?")
            .bind(order_id)
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        let detail: Option<String> = row.try_get("detail")?;
        let memory = match state.as_str() {
            "armed" => {
                let run: Option<i64> = row.try_get("run_id")?;
                OrderMemory::Armed {
                    run: RunId(run.ok_or(StoreError::BadValue {
                        column: "fleet_orders.run_id",
                        value: "NULL".into(),
                    })?),
                }
            }
            "stopped" => OrderMemory::Stopped { detail },
            "failed" => OrderMemory::Failed {
                detail: detail.unwrap_or_default(),
            },
            _ => {
                return Err(StoreError::BadValue {
                    column: "fleet_orders.state",
                    value: state,
                })
            }
        };
        Ok(Some(memory))
    }

    /// Remembers what the station did about order `order_id` (replacing what
    /// was remembered), durably before it returns.
    pub async fn remember_order(
        &self,
        order_id: i64,
        memory: OrderMemory,
    ) -> Result<(), StoreError> {
        self.write(move |batch| Box::pin(batch.remember_order(order_id, memory)))
            .await
    }
}

impl SqliteWrites {
    /// See [`Store::remember_order`].
    pub(super) async fn remember_order(
        &mut self,
        order_id: i64,
        memory: OrderMemory,
    ) -> Result<(), StoreError> {
        let (state, run, detail) = match memory {
            OrderMemory::Armed { run } => ("armed", Some(run.0), None),
            OrderMemory::Stopped { detail } => ("stopped", None, detail),
            OrderMemory::Failed { detail } => ("failed", None, Some(detail)),
        };
        sqlx::query(
            "INSERT INTO fleet_orders (order_id, state, run_id, detail, updated_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET state = excluded.state,
                 run_id = excluded.run_id, detail = excluded.detail,
                 updated_at = excluded.updated_at",
        )
        .bind(order_id)
        .bind(state)
        .bind(run)
        .bind(detail)
        .bind(self.clock.now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageRow;
    use crate::Writes;
    use flashrack_core::{ByteSize, Sha256Digest};

    #[tokio::test]
    async fn an_orders_memory_outlives_the_store_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flashrack.db");
        let store = Store::open(&path, "lab-a").await.unwrap();
        assert_eq!(store.order_memory(7).await.unwrap(), None);
        let image = ImageRow {
            sha256: Sha256Digest::of(b"image"),
            name: "image.img".into(),
            size: ByteSize(5),
            format: "raw".into(),
            imported_at: 1,
            source: None,
            inspection: None,
            provenance: None,
        };
        store
            .write(|b| Box::pin(b.record_image(&image)))
            .await
            .unwrap();
        let options = serde_json::json!({ "order_id": 7 });
        let run = store
            .write(|b| Box::pin(b.start_run(image.sha256, &image.name, &options)))
            .await
            .unwrap();
        store
            .remember_order(7, OrderMemory::Armed { run })
            .await
            .unwrap();
        store
            .remember_order(
                8,
                OrderMemory::Failed {
                    detail: "wrong bytes".into(),
                },
            )
            .await
            .unwrap();
        store.close().await;

        let store = Store::open(&path, "lab-a").await.unwrap();
        assert_eq!(
            store.order_memory(7).await.unwrap(),
            Some(OrderMemory::Armed { run })
        );
        store
            .remember_order(
                7,
                OrderMemory::Stopped {
                    detail: Some("stopped at the station (operator)".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.order_memory(7).await.unwrap(),
            Some(OrderMemory::Stopped {
                detail: Some("stopped at the station (operator)".into())
            })
        );
        assert_eq!(
            store.order_memory(8).await.unwrap(),
            Some(OrderMemory::Failed {
                detail: "wrong bytes".into()
            })
        );
        store.close().await;
    }
}
