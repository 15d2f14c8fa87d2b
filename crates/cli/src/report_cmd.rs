//! `flashrack report …`: the records, from the command line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use flashrack_report as report;
use flashrack_store::{Records, Store};

use crate::cli::{ReportCommand, ReportFormatArg};
use crate::records::database_path;

async fn open(data_dir: &Path, station_id: &str) -> Result<Store> {
    let path = database_path(data_dir);
    if !path.exists() {
        bail!(
            "no records in {} (nothing has been flashed with this data directory)",
            data_dir.display()
        );
    }
    // Read-only: a report never writes (no station row, no file beside the
    // database), and reads a copy on a read-only mount as well.
    Store::open_read_only(&path, station_id)
        .await
        .with_context(|| format!("cannot read the records in {}", path.display()))
}

/// Runs a `report` subcommand; the report goes to stdout.
pub async fn run(data_dir: &Path, command: ReportCommand) -> Result<ExitCode> {
    match command {
        ReportCommand::Runs { station } => {
            let store = open(data_dir, &station).await?;
            let runs = store.list_runs().await?;
            println!(
                "{:>5}  {:<20}  {:<24}  {:>6}  {:>6}  {:>7}  {:>6}  {:>11}  STATUS",
                "RUN", "STARTED", "IMAGE", "PASSED", "FAILED", "REFUSED", "INTR", "RUNNING"
            );
            for summary in runs {
                let run = &summary.run;
                let status = match (&run.stop_reason, run.stopped_at) {
                    (Some(reason), _) => format!("stopped ({reason})"),
                    (None, Some(_)) => "stopped".into(),
                    (None, None) => "armed".into(),
                };
                println!(
                    "{:>5}  {:<20}  {:<24}  {:>6}  {:>6}  {:>7}  {:>6}  {:>11}  {status}",
                    run.id.0,
                    report::format_time(run.started_at)
                        .chars()
                        .take(19)
                        .collect::<String>(),
                    run.image_name.chars().take(24).collect::<String>(),
                    summary.counts.passed,
                    summary.counts.failed,
                    summary.counts.refused,
                    summary.counts.interrupted,
                    summary.counts.running,
                );
            }
        }
        ReportCommand::Run {
            id,
            format,
            station,
        } => {
            let store = open(data_dir, &station).await?;
            let Some(run) = store.run_report(id).await? else {
                bail!("no run {id} in the records");
            };
            print!(
                "{}",
                match format {
                    ReportFormatArg::Csv => report::csv(&run.rows),
                    ReportFormatArg::Json => report::run_json(&run),
                    ReportFormatArg::Html => report::run_html(&run, store.now()),
                }
            );
        }
        ReportCommand::Device {
            serial,
            format,
            station,
        } => {
            let store = open(data_dir, &station).await?;
            let Some(device) = store.device_report(&serial).await? else {
                bail!("no device {serial:?} in the records");
            };
            print!(
                "{}",
                match format {
                    ReportFormatArg::Csv => report::csv(&device.rows),
                    ReportFormatArg::Json => report::device_json(&device),
                    ReportFormatArg::Html => report::device_html(&device, store.now()),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
