//! `flashrack report …`: the records, from the command line (see
//! `flashrack_app::reports`); the report goes to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use flashrack_app::records::database_path;
use flashrack_app::reports::{self, format_time, ReportFormat};

use crate::cli::{ReportCommand, ReportFormatArg};

/// Where `scripts/demo` keeps its data directory: `$TMPDIR/flashrack-demo`
/// (`/tmp/flashrack-demo`).
pub fn demo_data_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
        .join("flashrack-demo")
}

/// The records to read: the data directory's; when none was named
/// (`--data-dir`, `$FLASHRACK_DATA_DIR`) and the default one holds no
/// records, those of the last `scripts/demo`, if any (said on stderr).
fn records_dir(data_dir: &Path, named: bool) -> PathBuf {
    if named || database_path(data_dir).exists() {
        return data_dir.to_path_buf();
    }
    let demo = demo_data_dir();
    if database_path(&demo).exists() {
        errln!(
            "no records in {}; reading the demo's, in {} (--data-dir DIR to choose)",
            data_dir.display(),
            demo.display()
        );
        return demo;
    }
    data_dir.to_path_buf()
}

/// Runs a `report` subcommand; `named` says whether the data directory was
/// named (flag or environment) rather than the default.
pub async fn run(data_dir: &Path, named: bool, command: ReportCommand) -> Result<ExitCode> {
    let data_dir = records_dir(data_dir, named);
    let data_dir = data_dir.as_path();
    match command {
        ReportCommand::Runs { station } => {
            let runs = reports::runs(data_dir, station.as_deref()).await?;
            // A run the records hold as armed while no flashrack holds the
            // data directory was cut short (a crash, a kill, a power cut).
            let cut_short = reports::cut_short(data_dir);
            outln!(
                "{:>5}  {:<20}  {:<24}  {:>6}  {:>6}  {:>7}  {:>6}  {:>11}  STATUS",
                "RUN",
                "STARTED",
                "IMAGE",
                "PASSED",
                "FAILED",
                "REFUSED",
                "INTR",
                "RUNNING"
            )?;
            for summary in runs {
                let run = &summary.run;
                let status = match (&run.stop_reason, run.stopped_at) {
                    (Some(reason), _) => format!("stopped ({reason})"),
                    (None, Some(_)) => "stopped".into(),
                    (None, None) if cut_short => "cut short (not closed yet)".into(),
                    (None, None) => "armed".into(),
                };
                outln!(
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
                )?;
            }
        }
        ReportCommand::Run {
            id,
            format,
            station,
        } => {
            let report =
                reports::run_report(data_dir, station.as_deref(), id, format.into()).await?;
            out!("{}", report.body)?;
        }
        ReportCommand::Device {
            serial,
            format,
            station,
        } => {
            let report =
                reports::device_report(data_dir, station.as_deref(), &serial, format.into())
                    .await?;
            out!("{}", report.body)?;
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
            ReportFormatArg::Labels => ReportFormat::Labels,
        }
    }
}
