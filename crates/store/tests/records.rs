//! Writing and reading records through the store's API, each test on its own real
//! SQLite file: every function round-trips, the invariants hold, and start-up
//! recovery turns what a crash left running into `interrupted`.

mod common;

use common::{device, fail, image, pass_figures, TestStore, T0};
use flashrack_core::{
    AttemptFigures, Bound, ByteSize, FailReason, Failure, GuardRefusal, RefusalCode, Sha256Digest,
    Stage, Verdict,
};
use flashrack_store::{
    AttemptId, AttemptState, BoxFuture, Counts, DeviceRow, EventKind, EventRow, ImageRow, Records,
    RefusalRow, ReportVerdict, RunId, RunningFigures, StopReason, StoreError, Writes,
};
use serde_json::json;
use sqlx::{Connection, SqliteConnection};

#[tokio::test]
async fn images_are_recorded_once_and_renamed_on_reimport() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    assert_eq!(t.store.image(img.sha256).await.unwrap(), Some(img.clone()));

    let mut again = img.clone();
    again.name = "renamed.img".to_string();
    again.imported_at = T0 + 1;
    t.store
        .write(|b| Box::pin(b.record_image(&again)))
        .await
        .unwrap();
    let stored = t.store.image(img.sha256).await.unwrap().unwrap();
    assert_eq!(stored.name, "renamed.img");
    assert_eq!(
        stored.imported_at, img.imported_at,
        "first import time is kept"
    );
    assert_eq!(t.store.images().await.unwrap(), vec![stored]);
    assert_eq!(
        t.store.image(Sha256Digest::of(b"other")).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn an_images_source_file_is_kept_and_shown_with_its_runs() {
    let t = TestStore::new("rack-1").await;
    // Recorded before the records kept sources (or the cache forgot): none.
    let mut img = image();
    let source = img.source.take().unwrap();
    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    assert_eq!(
        t.store.image(img.sha256).await.unwrap().unwrap().source,
        None
    );
    // Recorded again with its source: kept, and a later record without one
    // does not erase it.
    let with_source = ImageRow {
        source: Some(source.clone()),
        ..img.clone()
    };
    t.store
        .write(|b| Box::pin(b.record_image(&with_source)))
        .await
        .unwrap();
    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    let stored = t.store.image(img.sha256).await.unwrap().unwrap();
    assert_eq!(stored.source.as_ref(), Some(&source));
    assert_eq!(t.store.images().await.unwrap(), vec![stored]);
    // A run of it says how big it is and where it came from, in its summary,
    // its report and every row of it.
    let (sha, name) = (img.sha256, img.name.clone());
    let run = t
        .store
        .write(|b| Box::pin(async move { b.start_run(sha, &name, &json!({})).await }))
        .await
        .unwrap();
    let stick = device("S1");
    let dev = t
        .store
        .write(|b| Box::pin(b.upsert_device(&stick)))
        .await
        .unwrap();
    t.start(run, dev, "A1").await;
    let summary = t.store.run(run).await.unwrap().unwrap();
    assert_eq!(summary.run.image_size, Some(img.size));
    assert_eq!(summary.run.image_source.as_ref(), Some(&source));
    let report = t.store.run_report(run).await.unwrap().unwrap();
    assert_eq!(report.run.run.image_source.as_ref(), Some(&source));
    assert_eq!(
        report.rows[0].run_facts.image_source.as_ref(),
        Some(&source)
    );
    assert_eq!(report.rows[0].run_facts.image_size, Some(img.size));
}

#[tokio::test]
async fn runs_start_stop_and_are_listed_with_counts() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let no_options = json!({});
    let unknown = t
        .store
        .write(|b| {
            Box::pin(async move {
                b.start_run(Sha256Digest::of(b"never imported"), "x", &json!({}))
                    .await
            })
        })
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, StoreError::NotFound { what: "image", .. }),
        "{unknown:?}"
    );

    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    let options = json!({ "verify": "hash", "eject_on_pass": true, "target_count": 4 });
    let run = t
        .store
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &options)))
        .await
        .unwrap();
    let summary = t.store.run(run).await.unwrap().unwrap();
    assert_eq!(summary.run.id, run);
    assert_eq!(summary.run.station_id, "rack-1");
    assert_eq!(summary.run.image_sha256, img.sha256);
    assert_eq!(summary.run.options, options);
    assert_eq!(summary.run.started_at, T0);
    assert_eq!(summary.run.stopped_at, None);
    assert_eq!(summary.counts, Counts::default());
    assert_eq!(t.store.active_run().await.unwrap().unwrap().run.id, run);

    t.clock.advance(1000);
    t.store
        .write(|b| Box::pin(b.stop_run(run, StopReason::Operator, None)))
        .await
        .unwrap();
    let stopped = t.store.run(run).await.unwrap().unwrap();
    assert_eq!(stopped.run.stopped_at, Some(T0 + 1000));
    assert_eq!(stopped.run.stop_reason, Some(StopReason::Operator));
    assert_eq!(t.store.active_run().await.unwrap(), None);
    assert!(matches!(
        t.store.write(|b| Box::pin(b.stop_run(run, StopReason::Shutdown, None))).await,
        Err(StoreError::RunStopped { run: r }) if r == run
    ));
    assert!(matches!(
        t.store
            .write(|b| Box::pin(b.stop_run(RunId(99), StopReason::Shutdown, None)))
            .await,
        Err(StoreError::NotFound { what: "run", .. })
    ));

    t.clock.advance(1000);
    let second = t
        .store
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    let listed: Vec<RunId> = t
        .store
        .list_runs()
        .await
        .unwrap()
        .iter()
        .map(|r| r.run.id)
        .collect();
    assert_eq!(listed, vec![second, run], "newest first");
}

#[tokio::test]
async fn devices_are_upserted_by_serial_or_by_vendor_model_and_size() {
    let t = TestStore::new("rack-1").await;
    let first = t.stick("AA01").await;
    t.clock.advance(5000);
    let mut changed = device("AA01");
    changed.model = Some("Cruzer Blade 2".to_string());
    changed.capacity = ByteSize(16_000_000_000);
    assert_eq!(
        t.store
            .write(|b| Box::pin(b.upsert_device(&changed)))
            .await
            .unwrap(),
        first
    );
    let record = t.store.device("AA01").await.unwrap().unwrap();
    assert_eq!(record.id, first);
    assert_eq!(record.key, "AA01");
    assert_eq!(record.model.as_deref(), Some("Cruzer Blade 2"));
    assert_eq!(record.capacity, ByteSize(16_000_000_000));
    assert_eq!((record.first_seen, record.last_seen), (T0, T0 + 5000));

    let no_serial = DeviceRow {
        serial: Some("  ".to_string()),
        vendor: Some("Generic".to_string()),
        model: None,
        capacity: ByteSize(8_000_000_000),
    };
    assert_eq!(no_serial.key(), "Generic/?/8000000000");
    let other = t
        .store
        .write(|b| Box::pin(b.upsert_device(&no_serial)))
        .await
        .unwrap();
    assert_ne!(other, first);
    let record = t
        .store
        .device("Generic/?/8000000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.serial, None, "a blank serial is recorded as none");
    assert_eq!(t.store.device("nope").await.unwrap(), None);
}

#[tokio::test]
async fn an_attempt_round_trips_from_start_through_stages_to_its_verdict() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;

    t.clock.advance(100);
    let attempt = t
        .store
        .write(|b| Box::pin(b.start_attempt(run, dev, "A1", "pci-0000:00:14.0-usb-0:1:1.0")))
        .await
        .unwrap();
    let started = t.store.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(started.state, AttemptState::Running);
    assert_eq!(started.stage, Stage::Preparing);
    assert_eq!(started.verdict, None);
    assert_eq!(started.started_at, T0 + 100);
    assert_eq!(started.finished_at, None);
    assert_eq!(
        started.figures.capacity,
        ByteSize(16_008_609_792),
        "the device's capacity"
    );
    assert_eq!(started.port_path, "pci-0000:00:14.0-usb-0:1:1.0");
    assert_eq!(t.store.running_attempts().await.unwrap(), vec![started]);

    for stage in [Stage::Writing, Stage::Flushing, Stage::Verifying] {
        t.clock.advance(1000);
        t.store
            .write(|b| Box::pin(b.attempt_stage(attempt, stage)))
            .await
            .unwrap();
        assert_eq!(
            t.store.attempt(attempt).await.unwrap().unwrap().stage,
            stage
        );
    }
    t.clock.advance(1000);
    t.store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(attempt, &Verdict::Pass, &pass_figures())
                    .await
            })
        })
        .await
        .unwrap();

    let done = t.store.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(done.state, AttemptState::Passed);
    assert_eq!(done.verdict, Some(Verdict::Pass));
    assert_eq!(done.figures, pass_figures(), "figures read back exactly");
    assert_eq!(done.stage, Stage::Verifying);
    assert_eq!(done.finished_at, Some(T0 + 4100));
    assert!(t.store.running_attempts().await.unwrap().is_empty());

    let kinds: Vec<EventKind> = t
        .store
        .attempt_events(attempt)
        .await
        .unwrap()
        .iter()
        .map(|e| e.row.kind)
        .collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            AttemptStarted,
            StageChanged,
            StageChanged,
            StageChanged,
            AttemptFinished
        ]
    );

    // A verdict is final.
    let again = t
        .store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(attempt, &Verdict::Pass, &pass_figures())
                    .await
            })
        })
        .await;
    assert!(
        matches!(
            again,
            Err(StoreError::AttemptNotRunning {
                state: AttemptState::Passed,
                ..
            })
        ),
        "{again:?}"
    );
    assert!(matches!(
        t.store
            .write(|b| Box::pin(b.attempt_stage(attempt, Stage::Writing)))
            .await,
        Err(StoreError::AttemptNotRunning { .. })
    ));
}

#[tokio::test]
async fn failures_keep_their_reason_stage_and_offset() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;

    let cases = [
        (
            fail(
                FailReason::VerifyMismatch { offset: 4_194_304 },
                Stage::Verifying,
            ),
            AttemptState::Failed,
        ),
        (
            fail(
                FailReason::WriteError {
                    offset: 1 << 20,
                    detail: "Input/output error (os error 5)".into(),
                },
                Stage::Writing,
            ),
            AttemptState::Failed,
        ),
        (
            fail(
                FailReason::Removed {
                    during: Stage::Flushing,
                },
                Stage::Flushing,
            ),
            AttemptState::Failed,
        ),
        (
            fail(FailReason::Interrupted, Stage::Writing),
            AttemptState::Interrupted,
        ),
        // The station ran out of descriptors: not the stick's failure.
        (
            fail(
                FailReason::StationError {
                    detail: "Too many open files (os error 24)".into(),
                },
                Stage::Preparing,
            ),
            AttemptState::Interrupted,
        ),
    ];
    for (verdict, state) in cases {
        let attempt = t
            .store
            .write(|b| Box::pin(b.start_attempt(run, dev, "B2", "path")))
            .await
            .unwrap();
        let figures = AttemptFigures {
            capacity: ByteSize(0), // not measured: the device's capacity stays
            bytes_written: 1 << 20,
            write_secs: 0.5,
            read_back_sha256: Some(Sha256Digest::of(b"what came back")),
            ..AttemptFigures::default()
        };
        t.store
            .write(|b| Box::pin(b.finish_attempt(attempt, &verdict, &figures)))
            .await
            .unwrap();
        let record = t.store.attempt(attempt).await.unwrap().unwrap();
        assert_eq!(record.verdict.as_ref(), Some(&verdict));
        assert_eq!(record.state, state);
        assert_eq!(record.stage, verdict.failure().unwrap().stage);
        assert_eq!(record.figures.capacity, ByteSize(16_008_609_792));
        assert_eq!(record.figures.read_back_sha256, figures.read_back_sha256);

        let row = t
            .store
            .run_report(run)
            .await
            .unwrap()
            .unwrap()
            .rows
            .pop()
            .unwrap();
        let failure = verdict.failure().unwrap();
        let reason = &failure.reason;
        assert_eq!(row.reason_code.as_deref(), Some(reason.code()));
        // An interrupted attempt says in which stage (a bare "interrupted"
        // said less than a crash's record).
        let detail = match reason {
            FailReason::Interrupted => format!("interrupted during {}", failure.stage),
            _ => reason.to_string(),
        };
        assert_eq!(row.reason_detail, Some(detail));
        assert_eq!(row.fail_offset, reason.offset());
    }
    let counts = t.store.run(run).await.unwrap().unwrap().counts;
    assert_eq!(
        counts,
        Counts {
            attempts: 5,
            passed: 0,
            failed: 3,
            refused: 0,
            interrupted: 2,
            running: 0
        }
    );
}

#[tokio::test]
async fn attempts_need_an_open_run_and_a_known_device() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;

    let no_device = t
        .store
        .write(|b| Box::pin(b.start_attempt(run, flashrack_store::DeviceId(42), "A1", "p")))
        .await;
    assert!(
        matches!(no_device, Err(StoreError::NotFound { what: "device", .. })),
        "{no_device:?}"
    );
    let no_run = t
        .store
        .write(|b| Box::pin(b.start_attempt(RunId(42), dev, "A1", "p")))
        .await;
    assert!(
        matches!(no_run, Err(StoreError::NotFound { what: "run", .. })),
        "{no_run:?}"
    );
    t.store
        .write(|b| {
            Box::pin(b.stop_run(
                run,
                StopReason::Completed,
                Some("the target count was reached"),
            ))
        })
        .await
        .unwrap();
    // The stop's words are kept with the run, for its reports.
    let report = t.store.run_report(run).await.unwrap().unwrap();
    assert_eq!(
        report.run.run.stop_detail.as_deref(),
        Some("the target count was reached")
    );
    let stopped = t
        .store
        .write(|b| Box::pin(b.start_attempt(run, dev, "A1", "p")))
        .await;
    assert!(
        matches!(stopped, Err(StoreError::RunStopped { .. })),
        "{stopped:?}"
    );
    assert!(t
        .store
        .run_report(run)
        .await
        .unwrap()
        .unwrap()
        .rows
        .is_empty());
}

#[tokio::test]
async fn events_are_appended_with_their_references() {
    let t = TestStore::new("rack-1").await;
    let dev = t.stick("AA01").await;
    t.clock.advance(10);
    let mut refusal = EventRow::new(
        EventKind::GuardRefused,
        json!({ "reason": "sdb1 is mounted at /media/usb" }),
    );
    refusal.port_label = Some("C3".to_string());
    refusal.device_id = Some(dev);
    let id = t
        .store
        .write(|b| Box::pin(b.record_event(&refusal)))
        .await
        .unwrap();
    t.clock.advance(10);
    let action = EventRow::new(EventKind::OperatorAction, json!({ "action": "arm" }));
    t.store
        .write(|b| Box::pin(b.record_event(&action)))
        .await
        .unwrap();

    let events = t.store.recent_events(2).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, id);
    assert_eq!(events[0].at, T0 + 10);
    assert_eq!(events[0].station_id, "rack-1");
    assert_eq!(events[0].row, refusal);
    assert_eq!(events[1].row, action);

    let mut dangling = EventRow::new(EventKind::PortChanged, json!({}));
    dangling.run_id = Some(RunId(77));
    let err = t
        .store
        .write(|b| Box::pin(b.record_event(&dangling)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DanglingReference { .. }),
        "{err:?}"
    );

    for kind in EventKind::ALL {
        assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), *kind);
    }
}

/// Records an attempt from start to verdict through any backend, in one batch,
/// from the caller's own (borrowed) values: what code written against the seam
/// (a journal, a hub) does. It returns a boxed future, `Send` for any backend,
/// as `async_trait` does: see [`Records::write`] on spawning generic code.
fn record_a_pass<'a, R: Records>(
    records: &'a R,
    image: &'a ImageRow,
    stick: &'a DeviceRow,
    port: &'a str,
) -> BoxFuture<'a, Result<AttemptId, StoreError>> {
    Box::pin(async move {
        let options = json!({ "verify": "hash" });
        records
            .write(|batch| {
                Box::pin(async move {
                    batch.record_image(image).await?;
                    let run = batch.start_run(image.sha256, &image.name, &options).await?;
                    let device = batch.upsert_device(stick).await?;
                    let attempt = batch.start_attempt(run, device, port, "p").await?;
                    batch
                        .finish_attempt(attempt, &Verdict::Pass, &pass_figures())
                        .await?;
                    Ok(attempt)
                })
            })
            .await
    })
}

/// Reads an attempt's verdict back through any backend.
async fn verdict_of<R: Records>(records: &R, attempt: AttemptId) -> Option<Verdict> {
    records.attempt(attempt).await.unwrap()?.verdict
}

#[tokio::test]
async fn code_generic_over_the_records_writes_and_reads_them_from_any_task() {
    let t = TestStore::new("rack-1").await;
    let store = t.store.clone();
    // `tokio::spawn` needs a future that may move between threads: the seam's
    // futures say so, for any backend.
    let attempt = tokio::spawn(async move {
        let stick = device("AA01");
        let attempt = record_a_pass(&store, &image(), &stick, "A1").await?;
        Ok::<_, StoreError>((attempt, verdict_of(&store, attempt).await))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(attempt.1, Some(Verdict::Pass));
    assert_eq!(
        t.store.device_history("AA01").await.unwrap()[0].attempt_id,
        Some(attempt.0)
    );
}

#[tokio::test]
async fn a_finished_attempt_is_visible_to_another_connection_when_the_call_returns() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    let attempt = t.start(run, dev, "A1").await;

    let mut other = SqliteConnection::connect(&format!("sqlite://{}", t.path().display()))
        .await
        .unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM attempts WHERE id = ?")
        .bind(attempt.0)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(
        state, "running",
        "the start is committed before the first byte"
    );
    t.store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(attempt, &Verdict::Pass, &pass_figures())
                    .await
            })
        })
        .await
        .unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM attempts WHERE id = ?")
        .bind(attempt.0)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(state, "passed");
}

#[tokio::test]
async fn recovery_interrupts_what_the_last_session_left_running_and_nothing_else() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let no_options = json!({});
    t.store
        .write(|b| Box::pin(b.record_image(&img)))
        .await
        .unwrap();
    let old_run = t
        .store
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    let dev_a = t.stick("AA01").await;
    let dev_b = t.stick("BB02").await;
    let finished = t
        .store
        .write(|b| Box::pin(b.start_attempt(old_run, dev_a, "A1", "p1")))
        .await
        .unwrap();
    t.store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(finished, &Verdict::Pass, &pass_figures())
                    .await
            })
        })
        .await
        .unwrap();
    t.clock.advance(1000);
    let left_running = t
        .store
        .write(|b| Box::pin(b.start_attempt(old_run, dev_b, "A2", "p2")))
        .await
        .unwrap();
    t.clock.advance(1000);
    t.store
        .write(|b| Box::pin(b.attempt_stage(left_running, Stage::Writing)))
        .await
        .unwrap();
    t.clock.advance(30_000);
    t.store.write(|b| Box::pin(b.heartbeat())).await.unwrap();
    let crash_at = t.store.now();

    // Another station shares the database; its running attempt is its own business.
    let other = t.reopen("rack-2").await;
    let other_run = other
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    let others_attempt = other
        .write(|b| Box::pin(b.start_attempt(other_run, dev_a, "Z9", "pz")))
        .await
        .unwrap();

    // Power cut: nothing is closed or finished. The station comes back later.
    drop(t.store.clone());
    t.clock.advance(3_600_000);
    let restarted = t.reopen("rack-1").await;
    // Work this session records before recovery runs is not the crash's.
    let new_run = restarted
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    let new_attempt = restarted
        .write(|b| Box::pin(b.start_attempt(new_run, dev_a, "A1", "p1")))
        .await
        .unwrap();

    let recovery = restarted.recover_interrupted().await.unwrap();
    assert_eq!(recovery.attempts, vec![left_running]);
    assert_eq!(recovery.runs, vec![old_run]);
    assert_eq!(recovery.presumed_crash_at, Some(crash_at));

    let record = restarted.attempt(left_running).await.unwrap().unwrap();
    assert_eq!(record.state, AttemptState::Interrupted);
    assert_eq!(
        record.finished_at,
        Some(crash_at),
        "ended when last known alive"
    );
    assert_eq!(
        record.verdict,
        Some(Verdict::Fail(Failure {
            reason: FailReason::Interrupted,
            stage: Stage::Writing
        }))
    );
    assert_eq!(
        restarted.attempt(finished).await.unwrap().unwrap().verdict,
        Some(Verdict::Pass)
    );
    let old = restarted.run(old_run).await.unwrap().unwrap();
    assert_eq!(old.run.stop_reason, Some(StopReason::Interrupted));
    assert_eq!(old.run.stopped_at, Some(crash_at));
    assert_eq!(old.counts.interrupted, 1);
    assert_eq!(old.counts.passed, 1);

    assert_eq!(
        restarted.attempt(new_attempt).await.unwrap().unwrap().state,
        AttemptState::Running
    );
    assert_eq!(
        restarted.active_run().await.unwrap().unwrap().run.id,
        new_run
    );
    assert_eq!(
        other.attempt(others_attempt).await.unwrap().unwrap().state,
        AttemptState::Running
    );
    assert_eq!(
        other.run(other_run).await.unwrap().unwrap().run.stopped_at,
        None
    );

    let events = restarted.attempt_events(left_running).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.row.kind, EventKind::AttemptInterrupted);
    assert_eq!(last.row.detail["presumed_crash_at"], crash_at);

    // Running it again finds nothing more to do.
    let again = restarted.recover_interrupted().await.unwrap();
    assert_eq!(again, flashrack_store::Recovery::default());
    assert_eq!(restarted.health().await.unwrap().integrity, "ok");
}

/// A one-shot `flash` (station id `station-1`) killed, then a station
/// configured as `rack-1` opening the same data directory: whoever holds the
/// data directory's lock closes every station id's unfinished work, each at
/// the moment that station was last known alive, instead of leaving the
/// flash's run `running` for good.
#[tokio::test]
async fn recovery_of_every_station_closes_another_ids_work_at_its_own_last_moment() {
    let t = TestStore::new("station-1").await;
    let img = image();
    let no_options = json!({});
    let killed_run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    let killed_attempt = t.start(killed_run, dev, "loop0").await;
    t.clock.advance(5_000);
    t.store.write(|b| Box::pin(b.heartbeat())).await.unwrap();
    let flash_last_alive = t.store.now();

    // Later, rack-1 runs (and leaves work of its own) ...
    t.clock.advance(600_000);
    let rack = t.reopen("rack-1").await;
    let rack_run = rack
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    t.clock.advance(2_000);
    rack.write(|b| Box::pin(b.heartbeat())).await.unwrap();
    let rack_last_alive = rack.now();

    // ... and is started again. Its own recovery leaves station-1's alone.
    t.clock.advance(600_000);
    let restarted = t.reopen("rack-1").await;
    let own = restarted.recover_interrupted().await.unwrap();
    assert_eq!(own.runs, vec![rack_run]);
    assert!(own.attempts.is_empty());
    assert_eq!(
        restarted
            .attempt(killed_attempt)
            .await
            .unwrap()
            .unwrap()
            .state,
        AttemptState::Running
    );

    // Holding the data directory, it closes every station's.
    let again = t.reopen("rack-1").await;
    let every = again.recover_interrupted_of_every_station().await.unwrap();
    assert_eq!(every.attempts, vec![killed_attempt]);
    assert_eq!(every.runs, vec![killed_run]);
    assert_eq!(every.presumed_crash_at, Some(flash_last_alive));
    let attempt = again.attempt(killed_attempt).await.unwrap().unwrap();
    assert_eq!(attempt.state, AttemptState::Interrupted);
    assert_eq!(
        attempt.finished_at,
        Some(flash_last_alive),
        "ended when the flash was last known alive, not when rack-1 was"
    );
    let run = again.run(killed_run).await.unwrap().unwrap();
    assert_eq!(run.run.stop_reason, Some(StopReason::Interrupted));
    assert_eq!(run.run.stopped_at, Some(flash_last_alive));
    assert_eq!(
        again.run(rack_run).await.unwrap().unwrap().run.stopped_at,
        Some(rack_last_alive)
    );
    assert!(again.active_run().await.unwrap().is_none());
    assert_eq!(
        again.recover_interrupted_of_every_station().await.unwrap(),
        flashrack_store::Recovery::default(),
        "nothing left the second time"
    );
}

#[tokio::test]
async fn without_a_heartbeat_the_crash_time_is_the_last_record() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    t.clock.advance(2000);
    let attempt = t.start(run, dev, "A1").await;
    t.clock.advance(5000);
    t.store
        .write(|b| Box::pin(b.attempt_stage(attempt, Stage::Verifying)))
        .await
        .unwrap();
    let last_write = t.store.now();
    t.clock.advance(600_000);
    let restarted = t.reopen("rack-1").await;
    let recovery = restarted.recover_interrupted().await.unwrap();
    assert_eq!(recovery.presumed_crash_at, Some(last_write));
    let record = restarted.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.finished_at, Some(last_write));
    assert_eq!(record.stage, Stage::Verifying);
}

#[tokio::test]
async fn a_report_of_ten_thousand_attempts_comes_back_whole() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let no_options = json!({});
    let run = t.run_of(&img).await;
    let other_run = t
        .store
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    t.store
        .write(|batch| {
            Box::pin(async move {
                for i in 0..10_000u32 {
                    let dev = batch.upsert_device(&device(&format!("SN{i:05}"))).await?;
                    for r in [run, other_run] {
                        let a = batch
                            .start_attempt(r, dev, &format!("P{}", i % 48), "p")
                            .await?;
                        let verdict = if i % 10 == 0 {
                            fail(
                                FailReason::VerifyMismatch {
                                    offset: u64::from(i) * 4096,
                                },
                                Stage::Verifying,
                            )
                        } else {
                            Verdict::Pass
                        };
                        batch.finish_attempt(a, &verdict, &pass_figures()).await?;
                    }
                }
                Ok(())
            })
        })
        .await
        .unwrap();

    let report = t.store.run_report(run).await.unwrap().unwrap();
    assert_eq!(report.rows.len(), 10_000);
    assert!(report.rows.iter().all(|r| r.run_id == Some(run)));
    assert_eq!(
        report.run.counts,
        Counts {
            attempts: 10_000,
            passed: 9_000,
            failed: 1_000,
            refused: 0,
            interrupted: 0,
            running: 0
        }
    );
    assert!(report
        .rows
        .windows(2)
        .all(|w| w[0].attempt_id < w[1].attempt_id));
    assert_eq!(t.store.device_history("SN00010").await.unwrap().len(), 2);
    assert_eq!(t.store.health().await.unwrap().integrity, "ok");
}

#[tokio::test]
async fn a_failed_or_dropped_write_records_nothing() {
    let t = TestStore::new("rack-1").await;
    // A batch whose closure fails: the device it recorded first is rolled back.
    let failed = t
        .store
        .write(|batch| {
            Box::pin(async move {
                let dev = batch.upsert_device(&device("AA01")).await?;
                batch.start_attempt(RunId(99), dev, "A1", "p").await
            })
        })
        .await
        .unwrap_err();
    assert!(
        matches!(failed, StoreError::NotFound { what: "run", .. }),
        "{failed:?}"
    );
    assert_eq!(t.store.device("AA01").await.unwrap(), None);

    // A batch dropped before it commits (its task cancelled), once its write is
    // made.
    let (made, was_made) = tokio::sync::oneshot::channel();
    let write = t.store.write(|batch| {
        Box::pin(async move {
            batch.upsert_device(&device("AA01")).await?;
            made.send(()).unwrap();
            std::future::pending::<()>().await;
            Ok(())
        })
    });
    tokio::select! {
        _ = write => unreachable!("the batch never finishes"),
        made = was_made => made.unwrap(),
    }
    assert_eq!(t.store.device("AA01").await.unwrap(), None);
    // The write connection is free again.
    t.store
        .write(|b| Box::pin(async move { b.upsert_device(&device("AA01")).await }))
        .await
        .unwrap();
    assert!(t.store.device("AA01").await.unwrap().is_some());
}

#[tokio::test]
async fn a_refusal_is_recorded_with_its_port_device_run_and_code_and_counted_apart_from_failures() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let big = DeviceRow {
        capacity: ByteSize(512_000_000_000),
        ..device("BIG1")
    };
    let dev = t
        .store
        .write(|b| Box::pin(b.upsert_device(&big)))
        .await
        .unwrap();
    let too_large = GuardRefusal {
        code: RefusalCode::TooLarge,
        message: "the device is too large: 512 GB (512000000000 bytes) is more than the maximum of 256 GB (256000000000 bytes)".into(),
    };
    // The same stick refused three times: twice under the run, once with none.
    let mut ids = Vec::new();
    for run_id in [Some(run), Some(run), None] {
        t.clock.advance(1_000);
        let refusal = RefusalRow {
            run_id,
            device_id: dev,
            port_label: "A4".into(),
            port_path: "pci-0000:00:14.0-usb-0:4:1.0".into(),
            refusal: too_large.clone(),
        };
        ids.push(
            t.store
                .write(|b| Box::pin(b.record_refusal(&refusal)))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let report = t.store.device_report("BIG1").await.unwrap().unwrap();
    assert_eq!(
        report.rows.len(),
        3,
        "every refusal is in the device's report"
    );
    assert_eq!(
        report.counts,
        Counts {
            refused: 3,
            ..Counts::default()
        }
    );
    for (row, id) in report.rows.iter().zip(&ids) {
        assert_eq!(row.refusal_id, Some(*id));
        assert_eq!(row.attempt_id, None);
        assert_eq!(row.verdict, ReportVerdict::Refused);
        assert_eq!(row.reason_code.as_deref(), Some("too_large"));
        assert_eq!(
            row.reason_detail.as_deref(),
            Some(too_large.message.as_str())
        );
        assert_eq!(row.port_label, "A4");
        assert_eq!(row.port_path, "pci-0000:00:14.0-usb-0:4:1.0");
        assert_eq!(row.station_id, "rack-1");
        assert_eq!(row.stage, None);
        assert_eq!(row.figures.capacity, ByteSize(512_000_000_000));
        assert_eq!(row.figures.bytes_written, 0);
    }
    assert_eq!(report.rows[0].run_id, Some(run));
    assert_eq!(
        report.rows[0].image_name.as_deref(),
        Some(img.name.as_str())
    );
    assert_eq!(report.rows[2].run_id, None);
    assert_eq!(report.rows[2].image_sha256, None);
    assert_eq!(report.rows[0].started_at, T0 + 1_000);

    // The run's report holds the two made under it, counted as refusals, not
    // failures.
    let run_report = t.store.run_report(run).await.unwrap().unwrap();
    assert_eq!(run_report.rows.len(), 2);
    assert_eq!(run_report.run.counts.refused, 2);
    assert_eq!(run_report.run.counts.failed, 0);
    assert_eq!(run_report.run.counts.attempts, 0);
    assert_eq!(
        t.store.run(run).await.unwrap().unwrap().counts,
        run_report.run.counts
    );

    // And the event log says so, with the code.
    let events = t.store.recent_events(3).await.unwrap();
    assert!(events.iter().all(|e| e.row.kind == EventKind::GuardRefused));
    assert_eq!(events[0].row.detail["code"], "too_large");
    assert_eq!(events[0].row.detail["refusal_id"], ids[0].0);
    assert_eq!(events[0].row.device_id, Some(dev));
    assert_eq!(events[0].row.run_id, Some(run));

    let unknown = t
        .store
        .write(|b| {
            Box::pin(async move {
                b.record_refusal(&RefusalRow {
                    run_id: None,
                    device_id: flashrack_store::DeviceId(99),
                    port_label: "A1".into(),
                    port_path: String::new(),
                    refusal: too_large,
                })
                .await
            })
        })
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, StoreError::NotFound { what: "device", .. }),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn an_attempt_refused_at_opening_counts_as_refused_with_the_guards_code() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    let attempt = t.start(run, dev, "A1").await;
    let refused = fail(
        FailReason::Refused {
            code: Some(RefusalCode::Mounted),
            detail: "sdb1 is mounted at /media/usb".into(),
        },
        Stage::Preparing,
    );
    let figures = AttemptFigures::default();
    t.store
        .write(|b| Box::pin(b.finish_attempt(attempt, &refused, &figures)))
        .await
        .unwrap();
    // The verdict reads back exactly, its code included.
    let record = t.store.attempt(attempt).await.unwrap().unwrap();
    assert_eq!(record.verdict, Some(refused));
    let report = t.store.run_report(run).await.unwrap().unwrap();
    let row = &report.rows[0];
    assert_eq!(row.attempt_id, Some(attempt));
    assert_eq!(row.verdict, ReportVerdict::Refused);
    assert_eq!(row.reason_code.as_deref(), Some("mounted"));
    assert_eq!(
        report.run.counts,
        Counts {
            attempts: 1,
            refused: 1,
            ..Counts::default()
        }
    );
    assert_eq!(
        t.store.run(run).await.unwrap().unwrap().counts,
        report.run.counts
    );
}

#[tokio::test]
async fn progress_is_recorded_for_running_attempts_only_and_never_goes_down() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    let running = t.start(run, dev, "A1").await;
    let done = t.start(run, dev, "A2").await;
    t.store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(done, &Verdict::Pass, &pass_figures())
                    .await
            })
        })
        .await
        .unwrap();
    let so_far = |attempt, bytes_written| RunningFigures {
        attempt,
        bytes_written,
        bytes_verified: 0,
    };
    t.clock.advance(5_000);
    t.store
        .write(|b| {
            Box::pin(async move {
                b.record_progress(&[so_far(running, 16 << 20), so_far(done, 1)])
                    .await
            })
        })
        .await
        .unwrap();
    t.store
        .write(|b| Box::pin(async move { b.record_progress(&[so_far(running, 8 << 20)]).await }))
        .await
        .unwrap();
    let record = t.store.attempt(running).await.unwrap().unwrap();
    assert_eq!(record.figures.bytes_written, 16 << 20);
    assert_eq!(record.figures.bytes_written_bound, Bound::LowerBound);
    let finished = t.store.attempt(done).await.unwrap().unwrap();
    assert_eq!(
        finished.figures,
        pass_figures(),
        "a finished attempt is left alone"
    );

    // A verdict given without the attempt's thread that knows less than was
    // recorded keeps the recorded figure, as a lower bound.
    t.store
        .write(|b| {
            Box::pin(async move {
                b.finish_attempt(
                    running,
                    &fail(FailReason::Interrupted, Stage::Writing),
                    &AttemptFigures::default(),
                )
                .await
            })
        })
        .await
        .unwrap();
    let record = t.store.attempt(running).await.unwrap().unwrap();
    assert_eq!(record.figures.bytes_written, 16 << 20);
    assert_eq!(record.figures.bytes_written_bound, Bound::LowerBound);
}

#[tokio::test]
async fn recovery_keeps_the_bytes_last_recorded_as_a_lower_bound_or_says_they_are_unknown() {
    let t = TestStore::new("rack-1").await;
    let img = image();
    let run = t.run_of(&img).await;
    let dev = t.stick("AA01").await;
    let writing = t.start(run, dev, "A1").await;
    let unrecorded = t.start(run, dev, "A2").await;
    let preparing = t.start(run, dev, "A3").await;
    for a in [writing, unrecorded] {
        t.store
            .write(|b| Box::pin(b.attempt_stage(a, Stage::Writing)))
            .await
            .unwrap();
    }
    t.clock.advance(2_000);
    t.store
        .write(|b| {
            Box::pin(async move {
                b.record_progress(&[RunningFigures {
                    attempt: writing,
                    bytes_written: 20 << 20,
                    bytes_verified: 0,
                }])
                .await
            })
        })
        .await
        .unwrap();

    // kill -9; the station comes back.
    t.clock.advance(60_000);
    let restarted = t.reopen("rack-1").await;
    let recovery = restarted.recover_interrupted().await.unwrap();
    assert_eq!(recovery.attempts, vec![writing, unrecorded, preparing]);

    let record = restarted.attempt(writing).await.unwrap().unwrap();
    assert_eq!(record.state, AttemptState::Interrupted);
    assert_eq!(
        record.figures.bytes_written,
        20 << 20,
        "the last recorded figure is kept"
    );
    assert_eq!(record.figures.bytes_written_bound, Bound::LowerBound);
    let record = restarted.attempt(unrecorded).await.unwrap().unwrap();
    assert_eq!(record.figures.bytes_written_bound, Bound::Unknown);
    let record = restarted.attempt(preparing).await.unwrap().unwrap();
    assert_eq!(
        (
            record.figures.bytes_written,
            record.figures.bytes_written_bound
        ),
        (0, Bound::Exact),
        "nothing of the image is written while preparing"
    );

    // The report says so: a lower bound, and an unknown count left empty.
    let report = restarted.run_report(run).await.unwrap().unwrap();
    let csv = flashrack_report::csv(&report.rows, &[]);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[1].contains(",20971520,lower_bound,"), "{csv}");
    assert!(lines[2].contains(",,unknown,"), "{csv}");
    assert!(lines[3].contains(",0,exact,"), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&flashrack_report::run_json(&report)).unwrap();
    assert_eq!(
        json["attempts"][1]["bytes_written"],
        serde_json::Value::Null
    );
    assert_eq!(json["attempts"][1]["bytes_written_bound"], "unknown");
    let html = flashrack_report::run_html(&report, T0);
    assert!(html.contains("≥ 21 MB"), "{html}");
    assert!(html.contains(">unknown<"), "{html}");
}

/// Finishes an attempt of `device` in `port` under `run` with `verdict`.
async fn attempt_with(
    t: &TestStore,
    run: RunId,
    device: flashrack_store::DeviceId,
    port: &str,
    verdict: &Verdict,
) -> AttemptId {
    let attempt = t.start(run, device, port).await;
    t.clock.advance(1_000);
    let figures = AttemptFigures::default();
    t.store
        .write(|b| Box::pin(b.finish_attempt(attempt, verdict, &figures)))
        .await
        .unwrap();
    attempt
}

#[tokio::test]
async fn port_history_keeps_the_latest_verdicts_of_each_port_and_flags_a_port_where_different_sticks_keep_failing(
) {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&image()).await;
    let write_error = fail(
        FailReason::WriteError {
            offset: 0,
            detail: "Input/output error (os error 5)".into(),
        },
        Stage::Writing,
    );
    let sticks = [
        t.stick("S1").await,
        t.stick("S2").await,
        t.stick("S3").await,
        t.stick("S4").await,
    ];
    // A1: a pass, then three different sticks fail in a row.
    attempt_with(&t, run, sticks[0], "A1", &Verdict::Pass).await;
    for stick in &sticks[1..] {
        attempt_with(&t, run, *stick, "A1", &write_error).await;
    }
    // A2: one bad stick failing three times is the stick, not the port.
    for _ in 0..3 {
        attempt_with(&t, run, sticks[3], "A2", &write_error).await;
    }
    // A3: failures of different sticks, but a pass in between, and an
    // interruption that says nothing about either.
    attempt_with(&t, run, sticks[1], "A3", &write_error).await;
    attempt_with(&t, run, sticks[0], "A3", &Verdict::Pass).await;
    attempt_with(&t, run, sticks[2], "A3", &write_error).await;
    attempt_with(
        &t,
        run,
        sticks[3],
        "A3",
        &fail(FailReason::Interrupted, Stage::Writing),
    )
    .await;
    // Running attempts are not verdicts; another station's are not this one's.
    let running = t.start(run, sticks[0], "A3").await;
    let other = t.reopen("rack-2").await;
    let (img, no_options) = (image(), serde_json::json!({}));
    let other_run = other
        .write(|b| Box::pin(b.start_run(img.sha256, &img.name, &no_options)))
        .await
        .unwrap();
    let foreign = other
        .write(|b| Box::pin(b.start_attempt(other_run, sticks[0], "A2", "p")))
        .await
        .unwrap();
    let figures = AttemptFigures::default();
    other
        .write(|b| Box::pin(b.finish_attempt(foreign, &Verdict::Pass, &figures)))
        .await
        .unwrap();

    let rows = t.store.port_history(3).await.unwrap();
    assert!(rows.iter().all(|row| row.station_id == "rack-1"));
    assert!(rows.iter().all(|row| row.attempt_id != Some(running)));
    let history = flashrack_store::PortHistory::of(rows, 3);
    let summary: Vec<(&str, Vec<ReportVerdict>, bool)> = history
        .iter()
        .map(|port| {
            (
                port.port_label.as_str(),
                port.verdicts.iter().map(|row| row.verdict).collect(),
                port.check_port,
            )
        })
        .collect();
    use ReportVerdict::{Fail, Interrupted, Pass};
    assert_eq!(
        summary,
        vec![
            ("A1", vec![Fail, Fail, Fail], true),
            ("A2", vec![Fail, Fail, Fail], false),
            ("A3", vec![Interrupted, Fail, Pass], false),
        ]
    );
    // Newest first, and only the latest of each port.
    let a1: Vec<&str> = history[0]
        .verdicts
        .iter()
        .map(|row| row.device_key.as_str())
        .collect();
    assert_eq!(a1, ["S4", "S3", "S2"]);
}

#[tokio::test]
async fn device_summaries_count_attempts_and_give_the_latest_verdict() {
    let t = TestStore::new("rack-1").await;
    let run = t.run_of(&image()).await;
    let (a, b) = (t.stick("S1").await, t.stick("S2").await);
    t.stick("S3").await; // seen, never written
    let mismatch = fail(
        FailReason::VerifyMismatch { offset: 4096 },
        Stage::Verifying,
    );
    attempt_with(&t, run, a, "A1", &mismatch).await;
    attempt_with(&t, run, a, "A2", &Verdict::Pass).await;
    attempt_with(&t, run, b, "A1", &Verdict::Pass).await;
    attempt_with(&t, run, b, "B1", &mismatch).await;
    let summaries = t.store.device_summaries(10).await.unwrap();
    let by_key = |key: &str| {
        summaries
            .iter()
            .find(|s| s.device.key == key)
            .unwrap_or_else(|| panic!("{key} is listed"))
    };
    assert_eq!(
        (
            by_key("S1").attempts,
            by_key("S1").last_verdict,
            by_key("S1").last_port.as_deref()
        ),
        (2, Some(ReportVerdict::Pass), Some("A2"))
    );
    let s2 = by_key("S2");
    assert_eq!(
        (
            s2.attempts,
            s2.last_verdict,
            s2.last_reason_code.as_deref(),
            s2.last_port.as_deref()
        ),
        (
            2,
            Some(ReportVerdict::Fail),
            Some("verify_mismatch"),
            Some("B1")
        )
    );
    assert_eq!(
        (by_key("S3").attempts, by_key("S3").last_verdict),
        (0, None)
    );
    // As JSON, the device's own fields stay at the top level.
    let json = serde_json::to_value(by_key("S2")).unwrap();
    assert_eq!(json["key"], "S2");
    assert_eq!(json["attempts"], 2);
    assert_eq!(json["last_verdict"], "fail");
}
