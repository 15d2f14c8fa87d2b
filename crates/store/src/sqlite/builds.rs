//! The station's bootable builds, kept across restarts (table
//! `bootable_builds`, written by the build service of `flashrack-app`): each
//! build's stage as it goes, its outcome when it ends, and at the next start
//! every build left `building` by a station that stopped becomes
//! `interrupted`. Nothing here is shipped to the hub.

use flashrack_core::{BuildStage, BuildState, Sha256Digest};
use sqlx::Row;

use super::writes::SqliteWrites;
use crate::{Records, Store, StoreError};

/// What a build was asked to do, as it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBuild {
    /// The ISO built from.
    pub source_sha256: Sha256Digest,
    /// Its name.
    pub source_name: String,
    /// The name the built image is kept under.
    pub name: String,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEnd {
    /// The layout is in the cache.
    Built {
        /// Its sha256.
        image: Sha256Digest,
        /// Its size in bytes.
        size: u64,
        /// Whether it was built before and taken from the cache.
        reused: bool,
        /// The files split into parts, and how many parts.
        split: Vec<(String, u32)>,
    },
    /// An error ended it.
    Failed {
        /// Why.
        detail: String,
    },
    /// The operator stopped it.
    Cancelled {
        /// What was said, in words.
        detail: String,
    },
}

/// The layout a build made (or found made before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayout {
    /// Its sha256, in the cache.
    pub image: Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it was built before and taken from the cache.
    pub reused: bool,
    /// The files split into parts, and how many parts.
    pub split: Vec<(String, u32)>,
}

/// One build as the records keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// Its id, from 1.
    pub id: i64,
    /// What it was asked to do.
    pub build: NewBuild,
    /// How it stands.
    pub state: BuildState,
    /// The stage reached (the last one, for an ended build).
    pub stage: Option<BuildStage>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds; `None` while building.
    pub finished_at: Option<i64>,
    /// For a built one: the layout.
    pub built: Option<BuiltLayout>,
    /// Why it failed, was cancelled or interrupted.
    pub detail: Option<String>,
}

/// The words an interrupted build's record carries.
pub const INTERRUPTED_DETAIL: &str =
    "the station stopped while it was building; nothing of it was cached";

impl Store {
    /// Records a build as started, durably; answers its id.
    pub async fn build_started(&self, build: NewBuild) -> Result<i64, StoreError> {
        self.write(move |batch| Box::pin(batch.build_started(build)))
            .await
    }

    /// Records that build `id` entered `stage`. A build that has ended is
    /// left as it is (answers `false`).
    pub async fn build_stage(&self, id: i64, stage: BuildStage) -> Result<bool, StoreError> {
        self.write(move |batch| Box::pin(batch.build_stage(id, stage)))
            .await
    }

    /// Records how build `id` ended. A build that has ended already is left
    /// as it is (answers `false`): an end is recorded once.
    pub async fn build_ended(&self, id: i64, end: BuildEnd) -> Result<bool, StoreError> {
        self.write(move |batch| Box::pin(batch.build_ended(id, end)))
            .await
    }

    /// Marks every build still `building` as `interrupted` (at start-up,
    /// before any build starts: those were under way when the station
    /// stopped); answers how many.
    pub async fn interrupt_builds(&self) -> Result<u64, StoreError> {
        self.write(|batch| Box::pin(batch.interrupt_builds())).await
    }

    /// Build `id`, if there is one.
    pub async fn build(&self, id: i64) -> Result<Option<BuildRecord>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| build_of(&row)).transpose()
    }

    /// Every build, newest first.
    pub async fn builds(&self) -> Result<Vec<BuildRecord>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} ORDER BY id DESC"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(build_of).collect()
    }
}

const SELECT: &str = "SELECT id, source_sha256, source_name, name, state, stage, started_at,
        finished_at, image_sha256, size, reused, split, detail FROM bootable_builds";

fn bad(column: &'static str, value: impl Into<String>) -> StoreError {
    StoreError::BadValue {
        column,
        value: value.into(),
    }
}

fn digest(column: &'static str, text: String) -> Result<Sha256Digest, StoreError> {
    Sha256Digest::parse(&text).map_err(|_| bad(column, text))
}

fn build_of(row: &sqlx::sqlite::SqliteRow) -> Result<BuildRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let state =
        BuildState::parse(&state).ok_or_else(|| bad("bootable_builds.state", state.clone()))?;
    let stage: Option<String> = row.try_get("stage")?;
    let stage = match stage {
        Some(text) => Some(
            BuildStage::parse(&text).ok_or_else(|| bad("bootable_builds.stage", text.clone()))?,
        ),
        None => None,
    };
    let image: Option<String> = row.try_get("image_sha256")?;
    let built = match image {
        Some(image) => {
            let size: Option<i64> = row.try_get("size")?;
            let reused: Option<bool> = row.try_get("reused")?;
            let split: Option<String> = row.try_get("split")?;
            let split: Vec<(String, u32)> = match split {
                Some(text) => serde_json::from_str::<Vec<serde_json::Value>>(&text)
                    .map_err(|_| bad("bootable_builds.split", text.clone()))?
                    .into_iter()
                    .map(|v| {
                        Some((
                            v.get("file")?.as_str()?.to_owned(),
                            u32::try_from(v.get("parts")?.as_u64()?).ok()?,
                        ))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("bootable_builds.split", text.clone()))?,
                None => Vec::new(),
            };
            Some(BuiltLayout {
                image: digest("bootable_builds.image_sha256", image)?,
                size: u64::try_from(size.unwrap_or(-1))
                    .map_err(|_| bad("bootable_builds.size", format!("{size:?}")))?,
                reused: reused.unwrap_or(false),
                split,
            })
        }
        None => None,
    };
    Ok(BuildRecord {
        id: row.try_get("id")?,
        build: NewBuild {
            source_sha256: digest(
                "bootable_builds.source_sha256",
                row.try_get("source_sha256")?,
            )?,
            source_name: row.try_get("source_name")?,
            name: row.try_get("name")?,
        },
        state,
        stage,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        built,
        detail: row.try_get("detail")?,
    })
}

impl SqliteWrites {
    /// See [`Store::build_started`].
    pub(super) async fn build_started(&mut self, build: NewBuild) -> Result<i64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO bootable_builds (source_sha256, source_name, name, state, started_at)
             VALUES (?, ?, ?, 'building', ?)",
        )
        .bind(build.source_sha256.to_hex())
        .bind(build.source_name)
        .bind(build.name)
        .bind(self.clock.now_ms())
        .execute(&mut *self.tx)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// See [`Store::build_stage`].
    pub(super) async fn build_stage(
        &mut self,
        id: i64,
        stage: BuildStage,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE bootable_builds SET stage = ? WHERE id = ? AND state = 'building'")
                .bind(stage.as_str())
                .bind(id)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        Ok(done == 1)
    }

    /// See [`Store::build_ended`].
    pub(super) async fn build_ended(&mut self, id: i64, end: BuildEnd) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let (state, image, size, reused, split, detail) = match end {
            BuildEnd::Built {
                image,
                size,
                reused,
                split,
            } => {
                let split: Vec<serde_json::Value> = split
                    .into_iter()
                    .map(|(file, parts)| serde_json::json!({"file": file, "parts": parts}))
                    .collect();
                (
                    BuildState::Built,
                    Some(image.to_hex()),
                    Some(
                        i64::try_from(size)
                            .map_err(|_| bad("bootable_builds.size", size.to_string()))?,
                    ),
                    Some(reused),
                    Some(serde_json::Value::Array(split).to_string()),
                    None,
                )
            }
            BuildEnd::Failed { detail } => {
                (BuildState::Failed, None, None, None, None, Some(detail))
            }
            BuildEnd::Cancelled { detail } => {
                (BuildState::Cancelled, None, None, None, None, Some(detail))
            }
        };
        let done = sqlx::query(
            "UPDATE bootable_builds SET state = ?, finished_at = ?, image_sha256 = ?, size = ?,
                 reused = ?, split = ?, detail = ?
             WHERE id = ? AND state = 'building'",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(image)
        .bind(size)
        .bind(reused)
        .bind(split)
        .bind(detail)
        .bind(id)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// See [`Store::interrupt_builds`].
    pub(super) async fn interrupt_builds(&mut self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE bootable_builds SET state = 'interrupted', finished_at = ?, detail = ?
             WHERE state = 'building'",
        )
        .bind(self.clock.now_ms())
        .bind(INTERRUPTED_DETAIL)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(done)
    }
}
