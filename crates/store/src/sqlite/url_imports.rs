//! The station's imports from URLs, kept across restarts (table
//! `url_imports`, written by the application's URL import service): what
//! was asked for, how far each got and how it ended. An import left running
//! by a stop or a crash is marked interrupted when the service starts
//! ([`Store::interrupt_url_imports`]); the partial download on disk is the
//! application's, not the store's.

use sqlx::Row;

use super::writes::SqliteWrites;
use crate::{Records, Store, StoreError};

/// How an import from a URL stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlImportState {
    /// Fetching and checking the checksum list and its signature.
    Checking,
    /// Downloading and importing.
    Downloading,
    /// Imported: the image is in the cache.
    Done,
    /// Failed, with the reason.
    Failed,
    /// Left running by a stop or a crash of the station: resumable.
    Interrupted,
}

impl UrlImportState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            UrlImportState::Checking => "checking",
            UrlImportState::Downloading => "downloading",
            UrlImportState::Done => "done",
            UrlImportState::Failed => "failed",
            UrlImportState::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "checking" => UrlImportState::Checking,
            "downloading" => UrlImportState::Downloading,
            "done" => UrlImportState::Done,
            "failed" => UrlImportState::Failed,
            "interrupted" => UrlImportState::Interrupted,
            _ => {
                return Err(StoreError::BadValue {
                    column: "url_imports.state",
                    value: text.to_string(),
                })
            }
        })
    }
}

/// One import from a URL as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlImportRow {
    /// Its id (the API's).
    pub id: i64,
    /// The image's URL.
    pub url: String,
    /// The request as the operator gave it (JSON text).
    pub request: String,
    /// How it stands.
    pub state: UrlImportState,
    /// Bytes held when last written.
    pub held: u64,
    /// The length the server declared, if known.
    pub total: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The image it became (sha256, hex).
    pub image_sha256: Option<String>,
    /// The run it was downloaded for (a run armed with a URL), once that
    /// run was armed.
    pub run_id: Option<i64>,
    /// When it was first asked for (ms since the epoch).
    pub started_at: i64,
    /// When it was last written (ms since the epoch).
    pub updated_at: i64,
}

impl Store {
    /// Records import `id` of `url` as asked for now (`request`: the
    /// operator's request as JSON text), `checking`; an `id` already kept is
    /// asked for again (a resume): its state is `checking` and its error
    /// cleared, its request kept.
    pub async fn url_import_started(
        &self,
        id: i64,
        url: &str,
        request: &str,
    ) -> Result<(), StoreError> {
        let (url, request) = (url.to_string(), request.to_string());
        self.write(move |batch| Box::pin(batch.url_import_started(id, url, request)))
            .await
    }

    /// Records how far import `id` has got.
    pub async fn url_import_progress(
        &self,
        id: i64,
        state: UrlImportState,
        held: u64,
        total: Option<u64>,
    ) -> Result<(), StoreError> {
        self.write(move |batch| Box::pin(batch.url_import_progress(id, state, held, total)))
            .await
    }

    /// Records how import `id` ended: `done` with its image, `failed` with
    /// the reason.
    pub async fn url_import_ended(
        &self,
        id: i64,
        state: UrlImportState,
        error: Option<String>,
        image_sha256: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |batch| Box::pin(batch.url_import_ended(id, state, error, image_sha256)))
            .await
    }

    /// Records that import `id` is the download of run `run_id` (armed with
    /// its URL).
    pub async fn url_import_for_run(&self, id: i64, run_id: i64) -> Result<(), StoreError> {
        self.write(move |batch| Box::pin(batch.url_import_for_run(id, run_id)))
            .await
    }

    /// Marks every import of this station left `checking` or `downloading`
    /// as `interrupted` (at start-up: nothing runs yet); returns how many.
    pub async fn interrupt_url_imports(&self) -> Result<u64, StoreError> {
        self.write(|batch| Box::pin(batch.interrupt_url_imports()))
            .await
    }

    /// Every import from a URL of this station, oldest first.
    pub async fn url_imports(&self) -> Result<Vec<UrlImportRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, request, state, held, total, error, image_sha256, run_id,
                    started_at, updated_at
             FROM url_imports WHERE station_id = ? ORDER BY id",
        )
        .bind(self.station_id())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                let held: i64 = row.try_get("held")?;
                let total: Option<i64> = row.try_get("total")?;
                Ok(UrlImportRow {
                    id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    request: row.try_get("request")?,
                    state: UrlImportState::parse(&state)?,
                    held: u64::try_from(held).unwrap_or(0),
                    total: total.and_then(|t| u64::try_from(t).ok()),
                    error: row.try_get("error")?,
                    image_sha256: row.try_get("image_sha256")?,
                    run_id: row.try_get("run_id")?,
                    started_at: row.try_get("started_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }
}

impl SqliteWrites {
    /// See [`Store::url_import_started`].
    pub(super) async fn url_import_started(
        &mut self,
        id: i64,
        url: String,
        request: String,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        sqlx::query(
            "INSERT INTO url_imports (id, station_id, url, request, state, started_at, updated_at)
             VALUES (?, ?, ?, ?, 'checking', ?, ?)
             ON CONFLICT (id) DO UPDATE SET state = 'checking', error = NULL,
                 updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(self.station.as_str())
        .bind(url)
        .bind(request)
        .bind(now)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// See [`Store::url_import_progress`].
    pub(super) async fn url_import_progress(
        &mut self,
        id: i64,
        state: UrlImportState,
        held: u64,
        total: Option<u64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE url_imports SET state = ?, held = ?, total = ?, updated_at = ? WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(i64::try_from(held).unwrap_or(i64::MAX))
        .bind(total.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
        .bind(self.clock.now_ms())
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// See [`Store::url_import_ended`].
    pub(super) async fn url_import_ended(
        &mut self,
        id: i64,
        state: UrlImportState,
        error: Option<String>,
        image_sha256: Option<String>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE url_imports SET state = ?, error = ?, image_sha256 = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(image_sha256)
        .bind(self.clock.now_ms())
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// See [`Store::url_import_for_run`].
    pub(super) async fn url_import_for_run(
        &mut self,
        id: i64,
        run_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE url_imports SET run_id = ?, updated_at = ? WHERE id = ?")
            .bind(run_id)
            .bind(self.clock.now_ms())
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// See [`Store::interrupt_url_imports`].
    pub(super) async fn interrupt_url_imports(&mut self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE url_imports SET state = 'interrupted', updated_at = ?
             WHERE station_id = ? AND state IN ('checking', 'downloading')",
        )
        .bind(self.clock.now_ms())
        .bind(self.station.as_str())
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_running_import_is_interrupted_at_the_next_start_and_a_resume_keeps_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flashrack.db");
        let store = Store::open(&path, "lab-a").await.unwrap();
        store
            .url_import_started(1, "https://x.invalid/a.img", r#"{"url":"a"}"#)
            .await
            .unwrap();
        store
            .url_import_progress(1, UrlImportState::Downloading, 4096, Some(8192))
            .await
            .unwrap();
        store
            .url_import_started(2, "https://x.invalid/b.img", r#"{"url":"b"}"#)
            .await
            .unwrap();
        store
            .url_import_ended(2, UrlImportState::Done, None, Some("ab".repeat(32)))
            .await
            .unwrap();
        store.close().await;

        let store = Store::open(&path, "lab-a").await.unwrap();
        assert_eq!(store.interrupt_url_imports().await.unwrap(), 1);
        let rows = store.url_imports().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, UrlImportState::Interrupted);
        assert_eq!((rows[0].held, rows[0].total), (4096, Some(8192)));
        assert_eq!(rows[1].state, UrlImportState::Done);
        assert_eq!(rows[1].image_sha256, Some("ab".repeat(32)));

        // A resume: the same row, checking again, its request kept.
        store
            .url_import_started(1, "https://x.invalid/a.img", r#"{"url":"other"}"#)
            .await
            .unwrap();
        let rows = store.url_imports().await.unwrap();
        assert_eq!(rows[0].state, UrlImportState::Checking);
        assert_eq!(rows[0].request, r#"{"url":"a"}"#);
        assert_eq!(rows.len(), 2);
    }
}
