//! The fleet outbox: every record a station writes is queued for its hub in the
//! same transaction, numbered in order, and marked shipped once acknowledged.

mod common;

use common::{device, fail, image, pass_figures, TestStore};
use flashrack_core::{AttemptState, FailReason, Stage, StopReason, Verdict};
use flashrack_fleet::FleetRecord;
use flashrack_store::{Records, StoreError, Writes};

/// The kinds of the unshipped entries, in order.
async fn kinds(t: &TestStore) -> Vec<&'static str> {
    t.store
        .outbox_unshipped(10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.record.kind())
        .collect()
}

#[tokio::test]
async fn a_station_outside_a_fleet_queues_nothing() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&image()).await;
    let stick = t.stick("S1").await;
    t.start(run, stick, "A1").await;
    assert!(!t.store.outbox_enabled());
    assert_eq!(t.store.outbox_backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn joining_a_fleet_queues_the_whole_history_once_and_keeps_queueing_after_a_restart() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&image()).await;
    let stick = t.stick("S1").await;
    let attempt = t.start(run, stick, "A1").await;
    let figures = pass_figures();
    t.store
        .write(|b| Box::pin(b.finish_attempt(attempt, &Verdict::Pass, &figures)))
        .await
        .unwrap();

    let queued = t.store.enable_outbox().await.unwrap();
    assert!(t.store.outbox_enabled());
    let history = kinds(&t).await;
    assert_eq!(queued, history.len() as u64);
    // Rows before the events that mention them: image, device, run, attempt.
    assert_eq!(&history[..4], ["image", "device", "run", "attempt"]);
    assert!(history[4..].iter().all(|k| *k == "event"), "{history:?}");
    let entries = t.store.outbox_unshipped(10_000).await.unwrap();
    match &entries[3].record {
        FleetRecord::Attempt(a) => {
            assert_eq!(a.id, attempt);
            assert_eq!(a.state, AttemptState::Passed);
            assert_eq!(a.device_key, "S1");
            assert_eq!(a.verdict, Some(Verdict::Pass));
        }
        other => panic!("expected the attempt, got {other:?}"),
    }
    assert_eq!(
        t.store.enable_outbox().await.unwrap(),
        0,
        "queued only once"
    );

    let reopened = t.reopen("rack-1").await;
    assert!(reopened.outbox_enabled(), "a fact of the database");
    let before = reopened.outbox_backlog().await.unwrap();
    let s3 = device("S3");
    reopened
        .write(|b| Box::pin(b.upsert_device(&s3)))
        .await
        .unwrap();
    assert_eq!(
        reopened.outbox_backlog().await.unwrap(),
        before + 1,
        "the restarted station queues its new device"
    );
}

#[tokio::test]
async fn every_write_queues_its_rows_as_they_are_after_it_in_order() {
    let t = TestStore::new("rack-1").await;
    t.store.enable_outbox().await.unwrap();
    let run = t.run_of(&image()).await;
    let stick = t.stick("S1").await;
    let attempt = t.start(run, stick, "A1").await;
    t.store
        .write(|b| Box::pin(b.attempt_stage(attempt, Stage::Writing)))
        .await
        .unwrap();
    let verdict = fail(
        FailReason::VerifyMismatch { offset: 4096 },
        Stage::Verifying,
    );
    let figures = pass_figures();
    t.store
        .write(|b| Box::pin(b.finish_attempt(attempt, &verdict, &figures)))
        .await
        .unwrap();
    t.store
        .write(|b| Box::pin(b.stop_run(run, StopReason::Operator, Some("end of shift"))))
        .await
        .unwrap();

    let entries = t.store.outbox_unshipped(1_000).await.unwrap();
    assert!(
        entries.windows(2).all(|w| w[0].seq < w[1].seq),
        "sequence increases"
    );
    let attempts: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.record {
            FleetRecord::Attempt(a) => Some((a.state, a.stage)),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (AttemptState::Running, Stage::Preparing),
            (AttemptState::Running, Stage::Writing),
            (AttemptState::Failed, Stage::Verifying),
        ]
    );
    let last_run = entries
        .iter()
        .rev()
        .find_map(|e| match &e.record {
            FleetRecord::Run(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_run.stop_reason, Some(StopReason::Operator));
    // The words of the stop travel with it, for the hub's reports.
    assert_eq!(last_run.stop_detail.as_deref(), Some("end of shift"));
    // The failure's words travel as recorded, so the hub's report reads as
    // the station's.
    let shipped_words = entries
        .iter()
        .rev()
        .find_map(|e| match &e.record {
            FleetRecord::Attempt(a) => Some(a.reason_detail.clone()),
            _ => None,
        })
        .unwrap();
    let report = t.store.run_report(run).await.unwrap().unwrap();
    assert_eq!(shipped_words, report.rows[0].reason_detail);
    assert!(shipped_words.is_some());
    assert!(entries.iter().any(
        |e| matches!(&e.record, FleetRecord::Event(ev) if ev.kind == "attempt_finished"
            && ev.device_key.as_deref() == Some("S1"))
    ));
}

#[tokio::test]
async fn a_write_that_fails_queues_nothing() {
    let t = TestStore::new("rack-1").await;
    t.store.enable_outbox().await.unwrap();
    let before = t.store.outbox_backlog().await.unwrap();
    let img = image();
    let result: Result<(), StoreError> = t
        .store
        .write(|b| {
            Box::pin(async move {
                b.record_image(&img).await?;
                Err(StoreError::BadValue {
                    column: "test",
                    value: "abandon the batch".into(),
                })
            })
        })
        .await;
    assert!(result.is_err());
    assert_eq!(t.store.outbox_backlog().await.unwrap(), before);
}

#[tokio::test]
async fn shipped_entries_leave_the_backlog_and_their_numbers_are_never_reused() {
    let t = TestStore::new("rack-1").await;
    t.store.enable_outbox().await.unwrap();
    // The history queued on joining (the station's start-up event) is shipped.
    let history = t.store.outbox_unshipped(100).await.unwrap();
    let shipped = history.last().unwrap().seq;
    t.store.mark_shipped(shipped).await.unwrap();
    for serial in ["S1", "S2", "S3"] {
        t.stick(serial).await;
    }
    let entries = t.store.outbox_unshipped(100).await.unwrap();
    assert_eq!(entries.len(), 3);
    let first_two = entries[1].seq;
    assert_eq!(t.store.mark_shipped(first_two).await.unwrap(), 2);
    assert_eq!(
        t.store.mark_shipped(first_two).await.unwrap(),
        0,
        "idempotent"
    );
    let left = t.store.outbox_unshipped(100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, entries[2].seq);

    // Pruned after everything is shipped, the numbers go on from where they were.
    t.store.mark_shipped(entries[2].seq).await.unwrap();
    t.clock.set(common::T0 + 60_000);
    assert_eq!(
        t.store.prune_shipped(i64::MAX).await.unwrap(),
        history.len() as u64 + 3
    );
    t.stick("S4").await;
    let next = t.store.outbox_unshipped(100).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].seq > entries[2].seq, "{} reused", next[0].seq);
}

#[tokio::test]
async fn every_entry_reads_back_after_a_sequence_number_shipped_or_not() {
    let t = TestStore::new("rack-1").await;
    t.store.enable_outbox().await.unwrap();
    for serial in ["S1", "S2", "S3"] {
        t.stick(serial).await;
    }
    let all = t.store.outbox_entries(0, 1000).await.unwrap();
    assert_eq!(all, t.store.outbox_unshipped(1000).await.unwrap());
    t.store.mark_shipped(all[1].seq).await.unwrap();
    // Shipped entries still read back, in order, until they are pruned.
    assert_eq!(t.store.outbox_entries(0, 1000).await.unwrap(), all);
    assert_eq!(
        t.store.outbox_entries(all[0].seq, 1).await.unwrap(),
        vec![all[1].clone()]
    );
    let last = all.last().unwrap().seq;
    assert!(t.store.outbox_entries(last, 10).await.unwrap().is_empty());
}
