//! `flashrack report …`: the records, from the command line (see
//! `flashrack_app::reports`); the report goes to stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use flashrack_app::reports::{self, format_time, ReportFormat};

use crate::cli::{ReportCommand, ReportFormatArg};

/// Runs a `report` subcommand.
pub async fn run(data_dir: &Path, command: ReportCommand) -> Result<ExitCode> {
    match command {
        ReportCommand::Runs { station } => {
            let runs = reports::runs(data_dir, &station).await?;
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
                    format_time(run.started_at)
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
            let report = reports::run_report(data_dir, &station, id, format.into()).await?;
            print!("{}", report.body);
        }
        ReportCommand::Device {
            serial,
            format,
            station,
        } => {
            let report = reports::device_report(data_dir, &station, &serial, format.into()).await?;
            print!("{}", report.body);
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl From<ReportFormatArg> for ReportFormat {
    fn from(format: ReportFormatArg) -> Self {
        match format {
            ReportFormatArg::Csv => ReportFormat::Csv,
            ReportFormatArg::Json => ReportFormat::Json,
            ReportFormatArg::Html => ReportFormat::Html,
        }
    }
}
