//! Records survive a crash: the station (the demo, on the simulated rack) is
//! killed with SIGKILL in the middle of writing, restarted, and stopped cleanly;
//! every attempt must then be accounted for — passed, failed or interrupted —
//! none lost, none duplicated, the database intact.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use flashrack_core::{Bound, Stage};
use flashrack_store::{AttemptId, AttemptState, Records, ReportVerdict, StopReason, Store};

mod common;

struct Demo {
    child: Child,
    address: String,
}

impl Demo {
    fn start(data_dir: &std::path::Path) -> Self {
        let (child, base) =
            common::start_demo(data_dir, &["--image-size", "32MiB", "--ports", "8"]);
        let address = base
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http address: {base}"))
            .to_string();
        Demo { child, address }
    }

    fn station(&self) -> serde_json::Value {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET /api/v1/station HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("bad answer {e}: {text}"))
    }

    /// Whether the station has armed its run.
    fn armed(&self) -> bool {
        self.station()["run"]["armed"].as_bool() == Some(true)
    }

    /// Attempt ids the ports show, and how many are busy writing or verifying.
    fn attempts(&self) -> (BTreeSet<i64>, usize) {
        let (ids, busy, _) = self.poll();
        (ids, busy)
    }

    /// As [`attempts`](Self::attempts), with the ids of the attempts writing now.
    fn poll(&self) -> (BTreeSet<i64>, usize, BTreeSet<i64>) {
        let station = self.station();
        let ports = station["ports"].as_array().unwrap();
        let ids = ports
            .iter()
            .filter_map(|p| p["attempt_id"].as_i64())
            .collect();
        let busy = ports
            .iter()
            .filter(|p| matches!(p["state"].as_str(), Some("writing" | "verifying")))
            .count();
        let writing = ports
            .iter()
            .filter(|p| p["state"] == "writing")
            .filter_map(|p| p["attempt_id"].as_i64())
            .collect();
        (ids, busy, writing)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_station_killed_mid_write_loses_and_duplicates_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");

    // First life: wait until several sticks are being written, and the
    // records hold how far one of them has got (the station's heartbeat
    // records each running attempt's progress every 2 s: read back from the
    // database, not assumed from the time); then SIGKILL.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = data_dir.join("flashrack.db");
    let recorded_bytes = |id: i64| {
        runtime.block_on(async {
            // Read-only, beside the running station: it sees what the
            // station has committed.
            let Ok(store) = Store::open_read_only(&database, "demo").await else {
                return 0;
            };
            let written = store
                .attempt(AttemptId(id))
                .await
                .ok()
                .flatten()
                .map_or(0, |record| record.figures.bytes_written);
            store.close().await;
            written
        })
    };
    let demo = Demo::start(&data_dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    let long_writer = loop {
        let (ids, busy, writing) = demo.poll();
        seen.extend(ids);
        if busy >= 3 {
            if let Some(id) = writing.into_iter().find(|&id| recorded_bytes(id) > 0) {
                break id;
            }
        }
        assert!(Instant::now() < deadline, "no sticks were being written");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut demo = demo;
    demo.child.kill().unwrap(); // SIGKILL: no chance to record anything more
    demo.child.wait().unwrap();
    drop(demo);

    // Second life: recovery runs at start-up; once its run is armed, a clean
    // stop (SIGTERM).
    let demo = Demo::start(&data_dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !demo.armed() {
        assert!(
            Instant::now() < deadline,
            "the second life never armed its run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after_restart, _) = demo.attempts();
    let pid = rustix::process::Pid::from_raw(demo.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let mut demo = demo;
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "a clean stop exits 0: {status}");
    drop(demo);

    runtime.block_on(async {
        let store = Store::open(&data_dir.join("flashrack.db"), "demo")
            .await
            .unwrap();
        let health = store.health().await.unwrap();
        assert_eq!(health.integrity, "ok", "{health:?}");
        let runs = store.list_runs().await.unwrap();
        assert_eq!(runs.len(), 2, "one run per life");
        let mut all = BTreeSet::new();
        let mut interrupted = 0;
        for summary in &runs {
            assert_eq!(
                summary.counts.running, 0,
                "nothing is left running: {summary:?}"
            );
            let report = store.run_report(summary.run.id).await.unwrap().unwrap();
            for row in &report.rows {
                let Some(attempt) = row.attempt_id else {
                    continue; // a refusal before any attempt
                };
                assert!(all.insert(attempt.0), "attempt {attempt} twice");
                if row.verdict == ReportVerdict::Interrupted {
                    interrupted += 1;
                }
            }
            let counts = summary.counts;
            assert_eq!(
                counts.passed + counts.failed + counts.refused + counts.interrupted,
                report.rows.len() as u64,
                "every record has its verdict: {counts:?}"
            );
        }
        for id in seen.iter().chain(&after_restart) {
            let record = store.attempt(AttemptId(*id)).await.unwrap();
            let record =
                record.unwrap_or_else(|| panic!("attempt {id} was shown but not recorded"));
            assert!(
                matches!(
                    record.state,
                    AttemptState::Passed | AttemptState::Failed | AttemptState::Interrupted
                ),
                "attempt {id}: {:?}",
                record.state
            );
        }
        assert!(
            interrupted >= 3,
            "the sticks being written at the kill are interrupted ({interrupted})"
        );
        // What reached the stick that was being written is recorded: the bytes
        // the last heartbeat saw acknowledged, as a lower bound.
        let record = store
            .attempt(AttemptId(long_writer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.state, AttemptState::Interrupted, "{record:?}");
        assert!(record.figures.bytes_written > 0, "{record:?}");
        assert_eq!(record.figures.bytes_written_bound, Bound::LowerBound);
        // Every attempt the kill interrupted after it had reached the write
        // pass says what is known: a lower bound, or that nothing was recorded.
        // (The clean stop's interruptions, at a safe point, are exact.)
        let killed = runs
            .iter()
            .filter(|r| r.run.stop_reason == Some(StopReason::Interrupted));
        for summary in killed {
            let report = store.run_report(summary.run.id).await.unwrap().unwrap();
            for row in report.rows.iter().filter(|r| {
                r.verdict == ReportVerdict::Interrupted && r.stage != Some(Stage::Preparing)
            }) {
                assert_ne!(row.figures.bytes_written_bound, Bound::Exact, "{row:?}");
            }
        }
        // The first run was closed by the recovery, the second by the clean stop.
        assert!(runs.iter().all(|r| r.run.stopped_at.is_some()));
    });
}
