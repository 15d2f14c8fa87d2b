//! Records 100,000 attempts (10 runs of 10,000) in a fresh database and times the
//! queries a station makes of them, and the exports (`flashrack-report`) of a
//! 10,000-attempt run. The issue's target: `run_report` of a 10,000-attempt run in
//! under a second.
//!
//! ```sh
//! cargo run --release -p flashrack-store --example report_bench [-- <dir>]
//! ```
//! The database goes to a temporary directory unless a directory is given.

use std::time::Instant;

use flashrack_core::{
    AttemptFigures, ByteSize, FailReason, Failure, Sha256Digest, Stage, Verdict, VerifyMethod,
};
use flashrack_store::{DeviceRow, ImageRow, Records, RunId, Store, Writes};

const RUNS: u32 = 10;
const ATTEMPTS_PER_RUN: u32 = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let path = dir.join("report_bench.db");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, "bench-1").await?;

    let image = ImageRow {
        sha256: Sha256Digest::of(b"bench image"),
        name: "bench.img".to_string(),
        size: ByteSize(4 << 30),
        format: "raw".to_string(),
        imported_at: store.now(),
        source: None,
        inspection: None,
        provenance: None,
    };
    store.write(|b| Box::pin(b.record_image(&image))).await?;

    let options = serde_json::json!({ "verify": "hash" });
    let started = Instant::now();
    let mut runs: Vec<RunId> = Vec::new();
    for r in 0..RUNS {
        let run = store
            .write(|b| Box::pin(b.start_run(image.sha256, &image.name, &options)))
            .await?;
        runs.push(run);
        // One transaction per run: a commit per attempt would time the disk's fsync,
        // not the store.
        let sha256 = image.sha256;
        store
            .write(|batch| {
                Box::pin(async move {
                    for i in 0..ATTEMPTS_PER_RUN {
                        let device = batch
                            .upsert_device(&DeviceRow {
                                serial: Some(format!("SN{i:06}")),
                                vendor: Some("Vendor".to_string()),
                                model: Some("Model".to_string()),
                                capacity: ByteSize(16_000_000_000),
                            })
                            .await?;
                        let attempt = batch
                            .start_attempt(
                                run,
                                device,
                                &format!("P{}", i % 64),
                                "pci-0000:00:14.0-usb",
                            )
                            .await?;
                        for stage in [Stage::Writing, Stage::Flushing, Stage::Verifying] {
                            batch.attempt_stage(attempt, stage).await?;
                        }
                        let verdict = if (i + r) % 20 == 0 {
                            Verdict::Fail(Failure {
                                reason: FailReason::VerifyMismatch {
                                    offset: u64::from(i) * 4096,
                                },
                                stage: Stage::Verifying,
                            })
                        } else {
                            Verdict::Pass
                        };
                        let figures = AttemptFigures {
                            capacity: ByteSize(16_000_000_000),
                            bytes_written: 4 << 30,
                            write_secs: 180.5,
                            bytes_verified: 4 << 30,
                            verify_secs: 60.25,
                            read_back_sha256: Some(sha256),
                            verify_method: Some(VerifyMethod::Hash),
                            ..AttemptFigures::default()
                        };
                        batch.finish_attempt(attempt, &verdict, &figures).await?;
                    }
                    Ok(())
                })
            })
            .await?;
    }
    let total = RUNS * ATTEMPTS_PER_RUN;
    let recorded = started.elapsed();
    println!(
        "recorded {total} attempts (with 5 events each) in {:.2} s ({:.0} attempts/s)",
        recorded.as_secs_f64(),
        f64::from(total) / recorded.as_secs_f64()
    );

    let run = runs[RUNS as usize / 2];
    let mut best = f64::MAX;
    let mut rows = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let report = store.run_report(run).await?.expect("the run exists");
        best = best.min(t.elapsed().as_secs_f64());
        rows = report.rows.len();
    }
    println!(
        "run_report of a {rows}-attempt run: {:.1} ms (best of 5; target < 1000 ms)",
        best * 1e3
    );

    let report = store.run_report(run).await?.expect("the run exists");
    let now = store.now();
    let exports: [(&str, &dyn Fn() -> String); 3] = [
        ("csv", &|| flashrack_report::run_csv(&report)),
        ("json", &|| flashrack_report::run_json(&report)),
        ("html", &|| flashrack_report::run_html(&report, now)),
    ];
    for (format, export) in exports {
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            bytes = export().len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{format} export: {:.1} ms, {bytes} bytes (best of 5)",
            best * 1e3
        );
    }

    let t = Instant::now();
    let listed = store.list_runs().await?;
    println!(
        "list_runs over {} runs: {:.1} ms",
        listed.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut best = f64::MAX;
    let mut found = 0;
    for _ in 0..5 {
        let t = Instant::now();
        found = store.device_history("SN004242").await?.len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "device_history ({found} attempts): {:.2} ms (best of 5)",
        best * 1e3
    );
    let t = Instant::now();
    store.close().await;
    let reopened = Store::open(&path, "bench-1").await?;
    let recovery = reopened.recover_interrupted().await?;
    println!(
        "reopen + recover_interrupted: {:.1} ms ({} attempts recovered)",
        t.elapsed().as_secs_f64() * 1e3,
        recovery.attempts.len()
    );
    println!(
        "database size: {}",
        ByteSize(std::fs::metadata(&path)?.len())
    );
    reopened.close().await;
    Ok(())
}
