//! A sampled attempt's share, seed and chunks (schema 10) round-trip through
//! the store, each test on its own real SQLite file, and reach the reports.

mod common;

use common::{pass_figures, TestStore};
use flashrack_core::{AttemptFigures, Verdict, VerifyMethod, VerifySample};
use flashrack_store::{AttemptId, Records, StoreError, Writes};
use sqlx::{Connection, SqliteConnection};

/// A sampled pass of 5 %: 24 of 480 chunks, a seed above `i64::MAX` (it does
/// not fit SQLite's INTEGER, so the column is text).
fn sampled_figures() -> AttemptFigures {
    AttemptFigures {
        read_back_sha256: None,
        verify_method: Some(VerifyMethod::Sampled),
        sample: Some(VerifySample {
            percent: 5.0,
            seed: u64::MAX - 58,
            chunks_checked: 24,
            chunks_total: 480,
        }),
        ..pass_figures()
    }
}

async fn finish(t: &TestStore, attempt: AttemptId, figures: &AttemptFigures) {
    let figures = figures.clone();
    t.store
        .write(|b| {
            Box::pin(async move { b.finish_attempt(attempt, &Verdict::Pass, &figures).await })
        })
        .await
        .unwrap();
}

async fn connection(t: &TestStore) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", t.path().display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sampled_attempt_reads_back_with_its_share_and_seed() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&common::image()).await;
    let sampled = t.start(run, t.stick("SER1").await, "A1").await;
    finish(&t, sampled, &sampled_figures()).await;
    let full = t.start(run, t.stick("SER2").await, "A2").await;
    finish(&t, full, &pass_figures()).await;

    let record = t.store.attempt(sampled).await.unwrap().unwrap();
    assert_eq!(
        record.figures,
        sampled_figures(),
        "figures read back exactly"
    );
    assert_eq!(record.figures.pass_words(), "sampled (5 %)");
    let record = t.store.attempt(full).await.unwrap().unwrap();
    assert_eq!(record.figures.sample, None);
    assert_eq!(record.figures.pass_words(), "pass");

    // What the columns hold: the share, the seed in decimal, the chunks; NULL
    // for a full attempt.
    let mut db = connection(&t).await;
    let (percent, seed, checked, total): (f64, String, i64, i64) = sqlx::query_as(
        "SELECT sample_percent, sample_seed, sample_chunks_checked, sample_chunks_total
         FROM attempts WHERE id = ?",
    )
    .bind(sampled.0)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        (percent, seed.as_str(), checked, total),
        (5.0, "18446744073709551557", 24, 480)
    );
    let none: Option<f64> = sqlx::query_scalar("SELECT sample_percent FROM attempts WHERE id = ?")
        .bind(full.0)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(none, None);

    // The run's report: the row carries the sample, the exports say it.
    let report = t.store.run_report(run).await.unwrap().unwrap();
    let row = report
        .rows
        .iter()
        .find(|r| r.attempt_id == Some(sampled))
        .unwrap();
    assert_eq!(row.figures.sample, sampled_figures().sample);
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::run_json(&report)).unwrap();
    let a1 = json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port_label"] == "A1")
        .unwrap();
    assert_eq!(a1["verdict_words"], "sampled (5 %)");
    assert_eq!(a1["sample_percent"], 5.0);
    assert_eq!(a1["sample_seed"], "18446744073709551557");
    let csv = flashrack_report::run_csv(&report);
    assert!(csv.contains(",pass,sampled (5 %),"), "{csv}");
    let html = flashrack_report::run_html(&report, common::T0);
    assert!(
        html.contains("<td class=\"verdict\">sampled (5 %)</td>"),
        "{html}"
    );
}

#[tokio::test]
async fn a_sampled_attempt_recorded_without_its_share_says_sampled() {
    // As one recorded before schema 10: verify_method `sampled`, no columns.
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&common::image()).await;
    let attempt = t.start(run, t.stick("SER1").await, "A1").await;
    finish(&t, attempt, &sampled_figures()).await;
    let mut db = connection(&t).await;
    sqlx::query(
        "UPDATE attempts SET sample_percent = NULL, sample_seed = NULL,
            sample_chunks_checked = NULL, sample_chunks_total = NULL WHERE id = ?",
    )
    .bind(attempt.0)
    .execute(&mut db)
    .await
    .unwrap();

    let record = t.store.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.figures.verify_method, Some(VerifyMethod::Sampled));
    assert_eq!(record.figures.sample, None);
    assert_eq!(record.figures.pass_words(), "sampled", "never a plain pass");
}

#[tokio::test]
async fn a_seed_that_is_not_a_number_is_a_bad_value() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&common::image()).await;
    let attempt = t.start(run, t.stick("SER1").await, "A1").await;
    finish(&t, attempt, &sampled_figures()).await;
    let mut db = connection(&t).await;
    sqlx::query("UPDATE attempts SET sample_seed = 'twelve' WHERE id = ?")
        .bind(attempt.0)
        .execute(&mut db)
        .await
        .unwrap();

    match t.store.attempt(attempt).await {
        Err(StoreError::BadValue { column, value }) => {
            assert_eq!((column, value.as_str()), ("attempts.sample_seed", "twelve"));
        }
        other => panic!("expected a bad value, got {other:?}"),
    }
}

#[tokio::test]
async fn a_share_out_of_range_is_refused_by_the_schema() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&common::image()).await;
    let attempt = t.start(run, t.stick("SER1").await, "A1").await;
    let mut db = connection(&t).await;
    for share in [0.0, 100.0, -5.0] {
        let result = sqlx::query("UPDATE attempts SET sample_percent = ? WHERE id = ?")
            .bind(share)
            .bind(attempt.0)
            .execute(&mut db)
            .await;
        assert!(result.is_err(), "{share} % must be refused");
    }
}
